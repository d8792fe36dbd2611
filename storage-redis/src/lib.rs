//! Redis store for tickwheel.
//!
//! Not built yet: this crate is a placeholder in the workspace so the layout
//! of the project is fixed from the start. `RedisStore` arrives with its own
//! issue (Redis store); until then nothing here is public.
