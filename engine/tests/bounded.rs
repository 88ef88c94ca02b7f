//! Bounded memory: ids and resolved pending transfers leave RAM once a
//! checkpoint holds them in the index's runs on disk, and keep their
//! answers there — live, after a reopen, and against damage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;
use tally_engine::*;

const BANK: u64 = 1;
const A: u64 = 10;
const B: u64 = 11;

fn config(dir: &Path, clock: Arc<ManualClock>) -> Config {
    Config {
        expiry_tick_ms: 0,
        // Each checkpoint is durable before the next batch: what is in RAM
        // at a given point does not depend on the checkpoint thread's pace.
        checkpoint_wait: true,
        ..Config::sled(dir)
    }
    .with_shards(2)
    .with_checkpoint_every(1)
    .with_clock(clock)
}

fn pending(id: u128) -> Transaction {
    Transaction {
        kind: TxnKind::Pending { timeout_ms: 1_000 },
        ..transfer(id, A, B, 1_00)
    }
}

fn settle(id: u128, pending_id: u128, post: bool) -> Transaction {
    let kind = if post {
        TxnKind::PostPending {
            pending_id: TxnId(pending_id),
        }
    } else {
        TxnKind::VoidPending {
            pending_id: TxnId(pending_id),
        }
    };
    Transaction {
        kind,
        legs: Vec::new(),
        ..transfer(id, A, B, 1_00)
    }
}

/// Ids 1..=n committed transfers, every tenth refused (more than A holds).
fn traffic(engine: &Engine, n: u128) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let txns: Vec<Transaction> = (1..=n).map(original).collect();
    for call in txns.chunks(500) {
        outcomes.extend(engine.submit_blocking(call.to_vec()).expect("submit"));
    }
    outcomes
}

/// The transactions of `traffic`, by id.
fn original(id: u128) -> Transaction {
    let cents = if id.is_multiple_of(10) {
        100_000_000
    } else {
        1
    };
    transfer(id, A, B, cents)
}

/// Every transaction resubmitted comes back as a duplicate with its
/// original timestamp and result; other content under the same id
/// conflicts.
fn answers_hold(engine: &Engine, txns: &[Transaction], outcomes: &[Outcome]) {
    for (call, originals) in txns.chunks(500).zip(outcomes.chunks(500)) {
        let again = engine.submit_blocking(call.to_vec()).expect("resubmit");
        for (o, a) in originals.iter().zip(&again) {
            assert!(a.duplicate, "{:?} answered anew: {a:?}", o.id);
            assert_eq!((a.timestamp, &a.result), (o.timestamp, &o.result));
        }
    }
    let other = engine
        .submit_blocking(vec![transfer(outcomes[0].id.0, A, B, 7)])
        .expect("conflict");
    assert_eq!(other[0].result, Err(Reject::IdConflict));
}

#[test]
fn ids_and_resolved_pending_transfers_leave_memory_and_keep_their_answers() {
    let dir = tempfile::tempdir().expect("dir");
    let clock = manual_clock();
    let engine = Engine::open(config(dir.path(), clock.clone())).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_000);
    let outcomes = traffic(&engine, 20_000);
    assert!(outcomes.iter().any(|o| o.result.is_err()));
    // Pending transfers: one posted, one voided, one left to expire, one
    // left open.
    for id in 100_001..=100_004 {
        assert!(submit_one(&engine, pending(id)).is_committed());
    }
    assert!(submit_one(&engine, settle(100_011, 100_001, true)).is_committed());
    assert!(submit_one(&engine, settle(100_012, 100_002, false)).is_committed());
    clock.advance_ms(500);
    assert!(submit_one(&engine, pending(100_005)).is_committed());
    clock.advance_ms(600);
    // Expires 100_001..=100_004's survivors (100_003, 100_004); 100_005 stays.
    traffic(&engine, 0);
    assert!(submit_one(&engine, transfer(100_020, A, B, 1)).is_committed());
    assert!(submit_one(&engine, transfer(100_021, A, B, 1)).is_committed());
    let memory = engine.audit_blocking().expect("audit").memory;
    assert!(memory.runs > 0, "{memory:?}");
    assert_eq!(memory.ids_in_ram, 0, "ids checkpointed stay in RAM");
    assert_eq!(memory.pendings_in_ram, 1, "only the open one stays");
    // ~1.4 bytes per id on disk, not ~48.
    assert!(memory.run_bytes_in_ram < 20_000 * 4, "{memory:?}");
    let late = vec![
        settle(100_031, 100_001, false),
        settle(100_032, 100_002, true),
        settle(100_033, 100_003, true),
        settle(100_034, 100_999, true),
    ];
    let check_resolved = |engine: &Engine| {
        let answers: Vec<Outcome> = late.iter().map(|t| submit_one(engine, t.clone())).collect();
        let results: Vec<_> = answers.iter().map(|o| o.result.clone()).collect();
        assert_eq!(
            results,
            vec![
                Err(Reject::PendingAlreadyPosted),
                Err(Reject::PendingAlreadyVoided),
                Err(Reject::PendingExpired),
                Err(Reject::PendingNotFound),
            ]
        );
        answers
    };
    let refusals = check_resolved(&engine);
    let txns: Vec<Transaction> = outcomes.iter().map(|o| original(o.id.0)).collect();
    answers_hold(&engine, &txns, &outcomes);
    let audit = assert_audit_ok(&engine);
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    // Reopened: the same answers, from runs whose pages a reopen does not
    // load.
    let engine = Engine::open(config(dir.path(), clock.clone())).expect("reopen");
    assert_eq!(assert_audit_ok(&engine), audit);
    assert_eq!(engine.audit_blocking().expect("audit").memory.ids_in_ram, 0);
    answers_hold(&engine, &txns, &outcomes);
    answers_hold(&engine, &late, &refusals);
    // The one still open can be posted, once.
    assert!(submit_one(&engine, settle(100_040, 100_005, true)).is_committed());
    let again = submit_one(&engine, settle(100_041, 100_005, true));
    assert_eq!(again.result, Err(Reject::PendingAlreadyPosted));
}

/// A damaged page in the middle of a run (which a reopen does not read):
/// the audit names it, and a look-up that reaches it stops the engine
/// instead of answering "never sequenced".
#[test]
fn a_damaged_index_page_is_never_read_as_an_unknown_id() {
    let dir = tempfile::tempdir().expect("dir");
    let clock = manual_clock();
    let engine = Engine::open(config(dir.path(), clock.clone())).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_000);
    let outcomes = traffic(&engine, 5_000);
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    // The largest run's data blob, damaged in its middle page.
    let details = dir.path().join(DETAILS_DIR);
    let run = std::fs::read_dir(&details)
        .expect("details")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('r'))
        })
        .max_by_key(|p| std::fs::metadata(p).expect("size").len())
        .expect("a run");
    let mut bytes = std::fs::read(&run).expect("run");
    assert!(
        bytes.len() > 30_000,
        "a run of several pages: {}",
        bytes.len()
    );
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x08;
    std::fs::write(&run, &bytes).expect("damage");
    let engine =
        Engine::open(config(dir.path(), clock)).expect("opens: first and last pages are sound");
    let audit = engine.audit_blocking().expect("audit");
    assert!(!audit.ok());
    let reason = audit.unreadable.expect("unreadable");
    assert!(
        reason.contains("index run") && reason.contains("checksum"),
        "{reason}"
    );
    // Resubmit every id: the ones on the damaged page cannot be answered,
    // and the engine stops rather than apply them a second time.
    let mut stopped = None;
    for o in &outcomes {
        match engine.submit_blocking(vec![original(o.id.0)]) {
            Ok(again) => assert!(again[0].duplicate, "{:?} applied again", o.id),
            Err(e) => {
                stopped = Some(e);
                break;
            }
        }
    }
    match stopped {
        Some(SubmitError::Stopped { reason }) => {
            assert!(reason.contains("idempotency index unreadable"), "{reason}")
        }
        other => panic!("expected the engine to stop: {other:?}"),
    }
    let after = engine.submit_blocking(vec![transfer(999_999, A, B, 1)]);
    assert!(
        matches!(after, Err(SubmitError::Stopped { .. })),
        "{after:?}"
    );
}

/// `ids` as transfers (each tenth refused), submitted 500 per call: one
/// checkpoint, and so one index run, per call.
fn traffic_of(engine: &Engine, ids: &[u128]) -> (Vec<Transaction>, Vec<Outcome>) {
    let txns: Vec<Transaction> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| Transaction {
            id: TxnId(id),
            ..original(i as u128 + 1)
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in txns.chunks(500) {
        outcomes.extend(engine.submit_blocking(call.to_vec()).expect("submit"));
    }
    (txns, outcomes)
}

#[test]
fn run_headers_in_ram_stay_flat_with_ids_that_grow_and_within_the_budget_otherwise() {
    // Ids that grow with time: a look-up of a new id reads no run (each
    // run's span is below it), so old runs' headers leave RAM after
    // `IDLE_SWEEPS` (2) checkpoints; at most the runs written by the last
    // three checkpoints (a level-0 run and a merge each) stay.
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(config(dir.path(), manual_clock())).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_000);
    let ids: Vec<u128> = (1..=30_000u128).map(|i| 1 << 64 | i).collect();
    let (txns, outcomes) = traffic_of(&engine, &ids);
    let memory = engine.audit_blocking().expect("audit").memory;
    assert!(memory.runs > 6, "{memory:?}");
    assert!(memory.run_headers_in_ram <= 6, "{memory:?}");
    answers_hold(&engine, &txns, &outcomes);
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);

    // Ids spread over the whole key space: every run spans every id. A
    // budget below one header keeps one header in RAM (the look-up's), and
    // every answer still holds, headers read again from disk.
    let dir = tempfile::tempdir().expect("dir");
    let tiny = config(dir.path(), manual_clock()).with_index_cache_bytes(1);
    let engine = Engine::open(tiny.clone()).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_000);
    let spread: Vec<u128> = (1..=6_000u128)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) | 1 << 127)
        .collect();
    let (txns, outcomes) = traffic_of(&engine, &spread);
    answers_hold(&engine, &txns, &outcomes);
    let memory = engine.audit_blocking().expect("audit").memory;
    assert!(memory.runs > 3, "{memory:?}");
    assert!(memory.run_headers_in_ram <= 1, "{memory:?}");
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    let reopened = Engine::open(tiny).expect("reopen");
    answers_hold(&reopened, &txns, &outcomes);
}
