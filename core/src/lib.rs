//! tickwheel: in-process scheduling for Rust services.

mod wheel;
