//! Hierarchical timing wheel (being written).
