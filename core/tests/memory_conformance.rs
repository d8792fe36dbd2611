//! The store conformance suite on [`MemoryStore`].

use tickwheel::MemoryStore;

tickwheel::conformance_tests!(async { MemoryStore::with_retention(5) });
