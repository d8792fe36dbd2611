//! PostgreSQL store for tickwheel.
//!
//! Not built yet: this crate is a placeholder in the workspace so the layout
//! of the project is fixed from the start. `PgStore` arrives with its own
//! issue (PostgreSQL store); until then nothing here is public.
