//! One id, one answer, for ever: refusals the sequencer decides (a
//! two-phase reference that does not hold) are recorded like any other,
//! across restarts and checkpoints; other content under a used id is a
//! conflict, whatever field differs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod common;

use common::*;
use tally_engine::*;

const BANK: u64 = 1;
const A: u64 = 10;
const B: u64 = 11;

fn post(id: u128, pending: u128) -> Transaction {
    Transaction {
        kind: TxnKind::PostPending {
            pending_id: TxnId(pending),
        },
        legs: Vec::new(),
        ..transfer(id, A, B, 1_00)
    }
}

fn pending(id: u128) -> Transaction {
    Transaction {
        kind: TxnKind::Pending {
            timeout_ms: 3_600_000,
        },
        ..transfer(id, A, B, 5_00)
    }
}

#[test]
fn a_refusal_decided_by_the_sequencer_is_the_ids_answer_for_ever() {
    for every in [0u64, 1] {
        let dir = tempfile::tempdir().expect("dir");
        let config = || {
            Config::sled(dir.path())
                .with_shards(2)
                .with_checkpoint_every(every)
        };
        let engine = Engine::open(config()).expect("open");
        open_funded(&engine, BANK, &[A, B], 100_00);
        // Post of a pending transfer that does not exist yet: refused.
        let first = submit_one(&engine, post(20, 10));
        assert_eq!(first.result, Err(Reject::PendingNotFound));
        assert!(first.timestamp.is_some(), "a sequenced, recorded refusal");
        // A linked chain refused by the sequencer: every member recorded.
        let mut head = transfer(30, A, B, 1_00);
        head.linked = true;
        let chain = engine
            .submit_blocking(vec![head.clone(), post(31, 99)])
            .expect("submit");
        assert_eq!(chain[0].result, Err(Reject::LinkedTxnFailed));
        assert_eq!(chain[1].result, Err(Reject::PendingNotFound));
        // The pending transfer appears; the same post id is still refused.
        assert!(submit_one(&engine, pending(10)).is_committed());
        let again = submit_one(&engine, post(20, 10));
        assert!(again.duplicate, "{again:?}");
        assert_eq!(again.result, Err(Reject::PendingNotFound));
        assert_eq!(again.timestamp, first.timestamp);
        engine.shutdown_blocking().expect("shutdown");
        drop(engine);
        // After a reopen (from the log, or from a checkpoint), the same.
        let engine = Engine::open(config()).expect("reopen");
        let again = submit_one(&engine, post(20, 10));
        assert!(again.duplicate, "every {every}: {again:?}");
        assert_eq!(again.result, Err(Reject::PendingNotFound));
        assert_eq!(again.timestamp, first.timestamp);
        let again = engine
            .submit_blocking(vec![head, post(31, 99)])
            .expect("submit");
        assert!(again.iter().all(|o| o.duplicate), "{again:?}");
        assert_eq!(again[0].timestamp, chain[0].timestamp);
        assert_eq!(again[1].result, Err(Reject::PendingNotFound));
        // The reservation was never captured by the refused id.
        let a = engine.account_blocking(AccountId(A)).unwrap().unwrap();
        assert_eq!(a.reserved, yuan(5_00));
        assert_eq!(a.balance, yuan(100_00));
        let audit = assert_audit_ok(&engine);
        assert!(audit.rejected >= 3, "{audit:?}");
    }
}

#[test]
fn other_content_under_a_used_id_is_a_conflict_whatever_differs() {
    let engine = Engine::open(Config::memory().with_shards(2)).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    let mut original = transfer(5, A, B, 1_00);
    original.legs[0].expected_version = None;
    assert!(submit_one(&engine, original.clone()).is_committed());
    let mut variants = Vec::new();
    let mut t = original.clone();
    t.legs[0].expected_version = Some(Version(u64::MAX));
    variants.push(t);
    let mut t = original.clone();
    t.code = TxnCode(7);
    variants.push(t);
    variants.push(transfer(5, A, B, 1_01));
    variants.push(transfer(5, B, A, 1_00));
    variants.push(Transaction {
        kind: TxnKind::Pending { timeout_ms: 1_000 },
        ..original.clone()
    });
    for v in variants {
        let o = submit_one(&engine, v.clone());
        assert_eq!(o.result, Err(Reject::IdConflict), "{v:?}");
        assert!(!o.duplicate);
    }
    // The same content, with 1.0 written as 1.00, is the same request.
    let o = submit_one(&engine, original);
    assert!(o.duplicate && o.is_committed(), "{o:?}");
    assert_eq!(balance(&engine, B), yuan(101_00));
}
