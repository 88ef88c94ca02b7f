//! The same contract suite (tests/common) against every backend: memory,
//! sled in a temporary directory, a `FaultStore` with no fault armed over
//! each, and an `Arc<MemoryStore>` through the blanket `Arc` impl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Fixture;

macro_rules! contract_tests {
    ($($backend:ident => $make:expr;)*) => {$(
        mod $backend {
            use super::*;
            contract_tests!(@checks $make;
                put_get_delete,
                batch_applies_whole_and_in_order,
                scan_ranges,
                scan_matches_model,
                keyspaces_are_isolated,
                concurrent_writers_all_land,
                flush_and_size_answer,
            );
        }
    )*};
    (@checks $make:expr; $($check:ident,)*) => {$(
        #[test]
        fn $check() {
            let fixture: Fixture = $make;
            common::$check(fixture.store.as_ref());
        }
    )*};
}

contract_tests! {
    memory => common::memory();
    sled => common::sled();
    fault_over_memory => common::fault_over(common::memory());
    fault_over_sled => common::fault_over(common::sled());
    arc_of_memory => common::arc_of_memory();
}

#[test]
fn memory_occupies_no_disk_and_sled_some() {
    let memory = common::memory();
    let sled = common::sled();
    for fixture in [&memory, &sled] {
        common::put(fixture.store.as_ref(), 1, b"k", &[1; 10_000]);
        fixture.store.flush().expect("flush");
    }
    assert_eq!(memory.store.size_on_disk().expect("size"), 0);
    assert!(sled.store.size_on_disk().expect("size") >= 10_000);
}
