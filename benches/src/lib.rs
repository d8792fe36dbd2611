//! Benchmarks and load harness for tickwheel.
//!
//! The criterion benches live in `benches/benches/`; figures and the commands
//! that produced them are in `benches/README.md`.
