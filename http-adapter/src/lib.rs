//! REST adapter for tickwheel: the Scheduled Tasks API as an axum `Router`.
//!
//! Not built yet: this crate is a placeholder in the workspace so the layout
//! of the project is fixed from the start. The router arrives with its own
//! issue (REST adapter); until then nothing here is public.
