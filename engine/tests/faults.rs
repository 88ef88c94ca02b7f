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

/// A store with three committed transfers, and the fault-injecting handle.
fn with_history() -> (Arc<dyn Store>, Arc<FaultStore>, Engine) {
    let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let faulty = Arc::new(FaultStore::new(inner.clone()));
    let engine = Engine::open(config(faulty.clone())).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    for id in 1..=3 {
        assert!(submit_one(&engine, transfer(id, A, B, 1_00)).is_committed());
    }
    (inner, faulty, engine)
}

#[test]
fn a_failed_log_write_or_sync_stops_the_engine_and_the_log_decides() {
    let faults = [
        Fault::FailNextWrite,
        Fault::FailNextFlush,
        Fault::TearNextWrite { ops_applied: 0 },
        Fault::DiskFull,
    ];
    for fault in faults {
        let (inner, faulty, engine) = with_history();
        let before = engine.audit_blocking().expect("audit");
        faulty.inject(fault);
        let err = engine
            .submit_blocking(vec![transfer(10, A, B, 1_00)])
            .expect_err("must fail");
        assert!(
            matches!(err, SubmitError::OutcomeUnknown { .. }),
            "{fault:?}: {err:?}"
        );
        // Fail-stop: no retry, no later write, even once the fault is gone.
        faulty.clear();
        let err = engine
            .submit_blocking(vec![transfer(11, A, B, 1_00)])
            .expect_err("stopped");
        assert!(
            matches!(err, SubmitError::Stopped { .. }),
            "{fault:?}: {err:?}"
        );
        let err = engine
            .open_accounts_blocking(vec![NewAccount::customer(AccountId(99), Currency::CNY)])
            .expect_err("stopped");
        assert!(
            matches!(err, SubmitError::Stopped { .. }),
            "{fault:?}: {err:?}"
        );
        // Reads still answer, from what was applied.
        assert_eq!(engine.audit_blocking().expect("audit"), before, "{fault:?}");
        assert_eq!(balance(&engine, A), yuan(97_00), "{fault:?}");
        assert!(matches!(
            engine.shutdown_blocking(),
            Err(SubmitError::Stopped { .. })
        ));
        drop(engine);

        // The next open decides from the log alone.
        let reopened = Engine::open(config(inner)).expect("reopen");
        assert_audit_ok(&reopened);
        let unknown = submit_one(&reopened, transfer(10, A, B, 1_00));
        let in_log = fault == Fault::FailNextFlush;
        assert_eq!(unknown.duplicate, in_log, "{fault:?}: {unknown:?}");
        assert!(unknown.is_committed(), "{fault:?}: {unknown:?}");
        // The call told "stopped" was never applied: its id is new.
        let refused = submit_one(&reopened, transfer(11, A, B, 1_00));
        assert!(!refused.duplicate && refused.is_committed(), "{refused:?}");
        assert_eq!(balance(&reopened, A), yuan(95_00), "{fault:?}");
        for id in 1..=3 {
            assert!(submit_one(&reopened, transfer(id, A, B, 1_00)).duplicate);
        }
    }
}

#[test]
fn a_failed_checkpoint_stops_the_engine_and_loses_nothing_acknowledged() {
    let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let faulty = Arc::new(FaultStore::new(inner.clone()));
    let engine = Engine::open(config(faulty.clone()).with_checkpoint_every(2)).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    let mut acknowledged = Vec::new();
    let mut stopped = false;
    for id in 1..=40u128 {
        if id == 5 {
            // The checkpoint thread's next write fails (the log's appends
            // come first in each batch; some of them fail instead).
            faulty.inject(Fault::FailNextWrite);
        }
        match engine.submit_blocking(vec![transfer(id, A, B, 1_00)]) {
            Ok(outcomes) => acknowledged.push(outcomes[0].clone()),
            Err(SubmitError::Stopped { .. } | SubmitError::OutcomeUnknown { .. }) => {
                stopped = true;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(stopped, "the failed write stopped the engine");
    assert!(acknowledged.len() < 40);
    drop(engine);
    let reopened = Engine::open(config(inner)).expect("reopen");
    assert_audit_ok(&reopened);
    for o in &acknowledged {
        let again = submit_one(&reopened, transfer(o.id.0, A, B, 1_00));
        assert!(again.duplicate, "{o:?} lost");
        assert_eq!(again.timestamp, o.timestamp);
    }
}
