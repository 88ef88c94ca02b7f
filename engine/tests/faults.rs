//! Storage faults injected under the engine: a failed write, a failed flush,
//! a torn write, a full disk. The group's callers get an error, nothing of
//! the group is visible, the engine keeps working once the fault clears, and
//! a reopen replays to exactly the state the live engine had.
// Amounts are written as yuan_fen (100_00 is 100.00 yuan).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping,
    clippy::type_complexity,
    clippy::explicit_counter_loop
)]

mod common;

use common::*;
use std::sync::Arc;
use tally_engine::*;
use tally_storage::{Fault, FaultStore, MemoryStore, Store};

const BANK: u64 = 1;
const A: u64 = 10;
const B: u64 = 11;

fn config(store: Arc<dyn Store>) -> Config {
    Config {
        store: StoreChoice::Custom(store),
        sync: true,
        ..Config::memory()
    }
    .with_shards(2)
}

#[test]
fn every_fault_fails_the_group_and_changes_nothing() {
    let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let faulty = Arc::new(FaultStore::new(inner.clone()));
    let engine = Engine::open(config(faulty.clone())).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    let faults = [
        Fault::FailNextWrite,
        Fault::FailNextFlush,
        Fault::TearNextWrite { ops_applied: 0 },
        Fault::DiskFull,
    ];
    let mut next_id = 1u128;
    for fault in faults {
        let before = engine.audit_blocking().expect("audit");
        faulty.inject(fault);
        let err = engine
            .submit_blocking(vec![transfer(next_id, A, B, 1_00)])
            .expect_err("must fail");
        assert!(
            matches!(err, SubmitError::Storage { .. }),
            "{fault:?}: {err:?}"
        );
        assert_eq!(
            balance(&engine, A),
            yuan(100_00 - (next_id as i64 - 1) * 1_00),
            "{fault:?}"
        );
        assert_eq!(
            engine.audit_blocking().expect("audit"),
            before,
            "{fault:?} left a trace"
        );
        if fault == Fault::DiskFull {
            // Still full: still failing.
            let again = engine.submit_blocking(vec![transfer(next_id, A, B, 1_00)]);
            assert!(matches!(again, Err(SubmitError::Storage { .. })));
        }
        faulty.clear();
        // The same transaction goes through once the fault is gone, once.
        let ok = submit_one(&engine, transfer(next_id, A, B, 1_00));
        assert!(ok.is_committed() && !ok.duplicate, "{fault:?}: {ok:?}");
        next_id += 1;
    }
    let live = engine.audit_blocking().expect("audit");
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    let reopened = Engine::open(config(inner)).expect("reopen");
    assert_eq!(reopened.audit_blocking().expect("audit"), live);
    assert_eq!(balance(&reopened, B), yuan(104_00));
}

#[test]
fn a_failed_flush_left_in_the_log_is_replaced_by_the_next_group() {
    // The write of the failed group reached the store; only its flush
    // failed. The next group must take its place, or a replay would apply
    // a group the live engine never applied.
    let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let faulty = Arc::new(FaultStore::new(inner.clone()));
    let engine = Engine::open(config(faulty.clone())).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    faulty.inject(Fault::FailNextFlush);
    let failed = engine.submit_blocking(vec![transfer(1, A, B, 100_00)]);
    assert!(
        matches!(failed, Err(SubmitError::Storage { .. })),
        "{failed:?}"
    );
    // Relies on the 100 that the failed group would have moved away.
    assert!(submit_one(&engine, transfer(2, A, B, 60_00)).is_committed());
    let live = engine.audit_blocking().expect("audit");
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    let reopened = Engine::open(config(inner)).expect("reopen");
    assert_eq!(reopened.audit_blocking().expect("audit"), live);
    assert_eq!(balance(&reopened, A), yuan(40_00));
}
