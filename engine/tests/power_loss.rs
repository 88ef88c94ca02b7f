//! Power loss on a simulated disk that keeps only what was synced: an
//! engine with everything on one `SimDisk` (log, blobs, meta record and
//! manifest) runs a seeded workload with frequent checkpoints; the power
//! goes at every mutating I/O step of that run in turn (the failing step
//! and everything after it fail, as after a cut), and the disk is then
//! crashed: unsynced writes dropped, or kept whole or torn at a sector by
//! a seed. After each crash the store must open, every acknowledged
//! transaction must be there with its original timestamp and result, the
//! audit must hold, and the state must be that of the acknowledged prefix
//! of calls (or of one call more: the call in flight may have reached the
//! disk, and its caller was told the outcome is unknown).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod common;

use common::*;
use std::sync::Arc;
use tally_engine::*;
use tally_storage::{CrashMode, Disk, SimDisk};

const BANK: u64 = 1;
const CUSTOMERS: [u64; 4] = [10, 11, 12, 13];

fn config(disk: &SimDisk) -> Config {
    let disk: Arc<dyn Disk> = Arc::new(disk.clone());
    Config {
        expiry_tick_ms: 0,
        log_segment_bytes: 2048,
        // Every checkpoint is written before the next batch: the I/O steps
        // of a run are the same every time, so "every step" is every step.
        checkpoint_wait: true,
        ..Config::on_disk(disk)
    }
    .with_shards(2)
    .with_checkpoint_every(2)
    .with_hot_detail_chunks(0)
    .with_clock(manual_clock())
}

/// The calls of the workload, each one group: transfers, pending transfers
/// posted and voided, a linked chain, a refusal.
fn calls() -> Vec<Vec<Transaction>> {
    let mut calls = Vec::new();
    for round in 0..7u128 {
        let base = 1_000 + round * 100;
        let mut call = vec![
            transfer(base, 10, 11, 3_00),
            transfer(base + 1, 11, 12, 2_00),
            // Refused: more than 13 will ever hold.
            transfer(base + 2, 13, 10, 900_00),
        ];
        let mut pending = transfer(base + 3, 12, 13, 1_00);
        pending.kind = TxnKind::Pending {
            timeout_ms: 3_600_000,
        };
        call.push(pending);
        let mut chained = transfer(base + 4, 10, 13, 1_00);
        chained.linked = true;
        call.push(chained);
        call.push(transfer(base + 5, 13, 12, 50));
        calls.push(call);
        let settle = if round % 2 == 0 {
            TxnKind::PostPending {
                pending_id: TxnId(base + 3),
            }
        } else {
            TxnKind::VoidPending {
                pending_id: TxnId(base + 3),
            }
        };
        let post = Transaction {
            kind: settle,
            legs: Vec::new(),
            ..transfer(base + 6, 12, 13, 1_00)
        };
        calls.push(vec![post, transfer(base + 7, 11, 10, 1_00)]);
    }
    calls
}

fn setup(engine: &Engine) -> Result<(), SubmitError> {
    try_open_funded(engine, BANK, &CUSTOMERS, 100_00)
}

/// Digests of the state after the setup and after each call, on a disk
/// that never fails.
fn reference() -> (Vec<u64>, u64) {
    let disk = SimDisk::new();
    let engine = Engine::open(config(&disk)).expect("open");
    setup(&engine).expect("setup");
    let mut digests = vec![engine.audit_blocking().expect("audit").state_digest];
    for call in calls() {
        engine.submit_blocking(call).expect("submit");
        digests.push(engine.audit_blocking().expect("audit").state_digest);
    }
    engine.shutdown_blocking().expect("shutdown");
    // The run merges index runs (eight level-0 runs into a level-1 one), so
    // every I/O step of a merge is among the steps cut below.
    let details = disk.subdir(DETAILS_DIR).expect("details");
    let names = details.list().expect("list");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with('h') && n.ends_with("-01")),
        "no merged index run: {names:?}"
    );
    (digests, disk.steps())
}

#[test]
fn power_loss_at_every_io_step_loses_nothing_acknowledged() {
    let (digests, steps) = reference();
    assert!(steps > 100, "checkpoints write many steps: {steps}");
    let mut torn_tails = 0;
    let mut unknown_applied = 0;
    let mut crashes = 0;
    for fail_at in 0..steps + 5 {
        let disk = SimDisk::new();
        disk.fail_at(fail_at);
        // Until the power goes: what was acknowledged, call by call.
        let mut acknowledged: Vec<Outcome> = Vec::new();
        let mut calls_done = 0usize;
        let mut setup_done = false;
        if let Ok(engine) = Engine::open(config(&disk)) {
            if setup(&engine).is_ok() {
                setup_done = true;
                for call in calls() {
                    match engine.submit_blocking(call) {
                        Ok(outcomes) => {
                            acknowledged.extend(outcomes);
                            calls_done += 1;
                        }
                        Err(SubmitError::OutcomeUnknown { .. } | SubmitError::Stopped { .. }) => {
                            break
                        }
                        Err(e) => panic!("step {fail_at}: {e:?}"),
                    }
                }
            }
            let _ = engine.shutdown_blocking();
        }
        // Several tearing seeds per step: a record is torn only when it
        // spans sectors and its seed cuts inside it, so a few seeds per
        // step make sure some crash tears the log's last record.
        let tears = (0..6u64).map(|k| CrashMode::Tear {
            seed: fail_at ^ (k << 32) ^ 0x5eed,
        });
        for mode in std::iter::once(CrashMode::DropUnsynced).chain(tears) {
            crashes += 1;
            let crashed = disk.crash(mode);
            let engine = match Engine::open(config(&crashed)) {
                Ok(engine) => engine,
                Err(OpenError::NotATallyStore { .. } | OpenError::Log { .. }) if !setup_done => {
                    // Cut while the store was being created: nothing was
                    // ever acknowledged, and it is refused, not opened empty.
                    continue;
                }
                Err(e) => panic!("step {fail_at} {mode:?}: reopen failed: {e}"),
            };
            if engine.recovery().torn_tail.is_some() {
                torn_tails += 1;
            }
            let audit = assert_audit_ok(&engine);
            if setup_done {
                // The state of the acknowledged prefix, or of one call more.
                let at = digests[calls_done];
                let next = digests.get(calls_done + 1).copied();
                assert!(
                    audit.state_digest == at || Some(audit.state_digest) == next,
                    "step {fail_at} {mode:?}: state is neither {calls_done} nor {} calls",
                    calls_done + 1
                );
                if Some(audit.state_digest) == next && next != Some(at) {
                    unknown_applied += 1;
                }
            }
            let rt = runtime();
            for o in &acknowledged {
                let found = rt
                    .block_on(engine.transaction(o.id))
                    .expect("read")
                    .unwrap_or_else(|| {
                        panic!("step {fail_at} {mode:?}: acknowledged {:?} lost", o.id)
                    });
                assert_eq!(
                    Some(found.timestamp),
                    o.timestamp,
                    "step {fail_at} {mode:?}"
                );
                assert_eq!(found.result, o.result, "step {fail_at} {mode:?}");
            }
            drop(engine);
        }
    }
    eprintln!(
        "{steps} steps, {crashes} crashes, {torn_tails} torn tails, {unknown_applied} unacknowledged calls survived"
    );
    // The run must have exercised what it claims to.
    assert!(crashes > 300, "{crashes}");
    assert!(torn_tails > 0, "no crash tore the log's tail");
    assert!(unknown_applied > 0, "no unacknowledged call ever survived");
}
