//! The store conformance suite against a real PostgreSQL, each test in its
//! own schema so they run in parallel.

mod common;

tickwheel::conformance_tests!(match common::conformance_store() {
    Some(store) => store,
    None => return,
});
