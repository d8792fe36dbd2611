//! The store conformance suite against a real Redis server and a real
//! 3-master Redis Cluster, each test with its own key prefix and a
//! retention of 5 (as the memory store runs it).

#[allow(dead_code)]
mod common;

mod single {
    tickwheel::conformance_tests!({
        let prefix = crate::common::unique_prefix("conf");
        let Some(store) = crate::common::single_store(&prefix, 5).await else {
            return;
        };
        std::future::ready(store)
    });
}

mod cluster {
    tickwheel::conformance_tests!({
        let prefix = crate::common::unique_prefix("conf");
        let Some(store) = crate::common::cluster_store(&prefix, 5).await else {
            return;
        };
        std::future::ready(store)
    });
}
