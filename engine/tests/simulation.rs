//! Deterministic simulation: one seed makes one workload (transfers,
//! refusals, pending transfers posted, voided and expired, linked chains,
//! resubmissions, clock moves, closes of the accounting date — each close's
//! checks must pass), one storage fault (the power goes at a
//! seeded I/O step) and one crash (unsynced writes dropped, or kept whole or
//! torn at a sector). The engine runs single-caller on a `SimDisk` with a
//! manual clock and checkpoints it waits for, so a seed reproduces its run
//! exactly. After the crash the store must reopen with every acknowledged
//! answer, hold each transaction of the call the fault cut as the faultless
//! run answered it or not at all (chains whole), and, once the rest of the
//! calls are submitted again, end in the state of the run without a fault.
//!
//! `TALLY_SIM_SEEDS=N` runs seeds 0..N (CI: 300), from `TALLY_SIM_FROM`
//! if set (a long run split in parts); `TALLY_SIM_SEED=S` runs
//! one. A failure names its seed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use tally_engine::*;
use tally_storage::{CrashMode, Disk, SimDisk};

const BANK: u64 = 1;
const CUSTOMERS: [u64; 6] = [10, 11, 12, 13, 14, 15];

/// What a call does: submit transactions, or close an accounting date.
#[derive(Clone, Debug)]
enum Step {
    Submit(Vec<Transaction>),
    Close(AccountingDate),
}

/// A call, and how far the clock moves before it (ms).
type Call = (u64, Step);

/// The first date closed: the clock's date at `START` (UTC+8, the default
/// offset), then the next one each time.
fn first_close() -> AccountingDate {
    AccountingDate::from_ymd(2026, 1, 1).expect("date")
}

fn workload(seed: u64) -> Vec<Call> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut calls = Vec::new();
    let mut sent: Vec<Transaction> = Vec::new();
    let mut next_id = 1_000u128;
    let mut next_close = first_close();
    for _ in 0..rng.gen_range(6..16) {
        if rng.gen_bool(0.15) {
            calls.push((rng.gen_range(0..3_000), Step::Close(next_close)));
            next_close = next_close.next();
            continue;
        }
        let mut call = Vec::new();
        for _ in 0..rng.gen_range(1..6) {
            let from = CUSTOMERS[rng.gen_range(0..CUSTOMERS.len())];
            let to = CUSTOMERS[rng.gen_range(0..CUSTOMERS.len())];
            let amount = if rng.gen_bool(0.1) {
                900_00 // refused: more than anyone holds
            } else {
                rng.gen_range(1..30_00)
            };
            next_id += 1;
            let mut t = transfer(next_id, from, to, amount);
            match rng.gen_range(0..10) {
                0 | 1 => {
                    t.kind = TxnKind::Pending {
                        timeout_ms: rng.gen_range(1..5_000),
                    }
                }
                2 | 3 => {
                    // Post or void one sent before (or one never sent).
                    let pending = sent
                        .iter()
                        .filter(|s| matches!(s.kind, TxnKind::Pending { .. }))
                        .map(|s| s.id)
                        .nth(rng.gen_range(0..4))
                        .unwrap_or(TxnId(7));
                    t.legs.clear();
                    t.kind = if rng.gen_bool(0.5) {
                        TxnKind::PostPending {
                            pending_id: pending,
                        }
                    } else {
                        TxnKind::VoidPending {
                            pending_id: pending,
                        }
                    };
                }
                4 if !sent.is_empty() => {
                    // A resubmission: the same request, or other content.
                    let old = sent[rng.gen_range(0..sent.len())].clone();
                    t = if rng.gen_bool(0.7) {
                        old
                    } else {
                        transfer(old.id.0, from, to, amount + 1)
                    };
                }
                5 => t.linked = true,
                _ => {}
            }
            if call.iter().any(|c: &Transaction| c.id == t.id) {
                continue;
            }
            call.push(t);
        }
        // Close an open chain.
        if let Some(last) = call.last_mut() {
            last.linked = false;
        }
        sent.extend(call.iter().cloned());
        calls.push((rng.gen_range(0..3_000), Step::Submit(call)));
    }
    calls
}

fn config(disk: &SimDisk, clock: Arc<ManualClock>) -> Config {
    let disk: Arc<dyn Disk> = Arc::new(disk.clone());
    Config {
        expiry_tick_ms: 0,
        log_segment_bytes: 4096,
        checkpoint_wait: true,
        ..Config::on_disk(disk)
    }
    .with_shards(2)
    .with_checkpoint_every(3)
    .with_hot_detail_chunks(0)
    .with_clock(clock)
}

fn setup(engine: &Engine) -> Result<(), SubmitError> {
    try_open_funded(engine, BANK, &CUSTOMERS, 200_00)
}

const START: u64 = 1_767_225_600_000_000_000;

/// The digests after the setup and after each call, the I/O steps of the
/// whole run, and the outcomes, on a disk that never fails.
fn reference(calls: &[Call]) -> (Vec<u64>, u64, Vec<Vec<Outcome>>) {
    let disk = SimDisk::new();
    let clock = Arc::new(ManualClock::new(Timestamp(START)));
    let engine = Engine::open(config(&disk, clock.clone())).expect("open");
    setup(&engine).expect("setup");
    let mut digests = vec![engine.audit_blocking().expect("audit").state_digest];
    let mut outcomes = Vec::new();
    let rt = runtime();
    for (advance, step) in calls {
        clock.advance_ms(*advance);
        outcomes.push(match step {
            Step::Submit(call) => engine.submit_blocking(call.clone()).expect("submit"),
            Step::Close(date) => {
                let report = rt.block_on(engine.close_day(*date)).expect("close");
                assert!(report.ok, "close of {date}: {:?}", report.failures);
                Vec::new()
            }
        });
        digests.push(engine.audit_blocking().expect("audit").state_digest);
    }
    engine.shutdown_blocking().expect("shutdown");
    (digests, disk.steps(), outcomes)
}

fn simulate(seed: u64) {
    let calls = workload(seed);
    let (digests, steps, expected) = reference(&calls);
    // A seed replays exactly: the same run gives the same answers.
    let (again, again_steps, _) = reference(&calls);
    assert_eq!(
        (&again, again_steps),
        (&digests, steps),
        "seed {seed}: not deterministic"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa17);
    let mut fail_at = rng.gen_range(0..steps + 2);
    let mut mode = if rng.gen_bool(0.5) {
        CrashMode::DropUnsynced
    } else {
        CrashMode::Tear { seed }
    };
    if let Some(at) = std::env::var("DBG_FAIL_AT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        fail_at = at;
    }
    if std::env::var("DBG_DROP").is_ok() {
        mode = CrashMode::DropUnsynced;
    }
    let disk = SimDisk::new();
    disk.fail_at(fail_at);
    let clock = Arc::new(ManualClock::new(Timestamp(START)));
    let mut acknowledged: Vec<Outcome> = Vec::new();
    let mut calls_done = 0usize;
    let mut setup_done = false;
    let rt = runtime();
    if let Ok(engine) = Engine::open(config(&disk, clock.clone())) {
        if setup(&engine).is_ok() {
            setup_done = true;
            for (advance, step) in &calls {
                clock.advance_ms(*advance);
                let call = match step {
                    Step::Submit(call) => call,
                    Step::Close(date) => match rt.block_on(engine.close_day(*date)) {
                        Ok(report) => {
                            assert!(
                                report.ok,
                                "seed {seed}: close {date}: {:?}",
                                report.failures
                            );
                            calls_done += 1;
                            continue;
                        }
                        Err(CloseError::Engine(_) | CloseError::Store { .. }) => break,
                        Err(e) => panic!("seed {seed}: close {date}: {e}"),
                    },
                };
                match engine.submit_blocking(call.clone()) {
                    Ok(outcomes) => {
                        assert_eq!(
                            outcomes, expected[calls_done],
                            "seed {seed}: answers differ before the fault"
                        );
                        acknowledged.extend(outcomes);
                        calls_done += 1;
                    }
                    Err(SubmitError::OutcomeUnknown { .. } | SubmitError::Stopped { .. }) => break,
                    Err(e) => panic!("seed {seed}: {e:?}"),
                }
            }
        }
        let _ = engine.shutdown_blocking();
    }
    let crashed = disk.crash(mode);
    let engine = match Engine::open(config(&crashed, clock.clone())) {
        Ok(engine) => engine,
        Err(OpenError::NotATallyStore { .. } | OpenError::Log { .. }) if !setup_done => return,
        Err(e) => panic!("seed {seed} (fail at {fail_at}, {mode:?}): reopen failed: {e}"),
    };
    assert_audit_ok(&engine);
    for o in &acknowledged {
        let found = rt.block_on(engine.transaction(o.id)).expect("read");
        match &o.timestamp {
            // Refused before sequencing (bad input, a conflict): not recorded.
            None => continue,
            Some(ts) => {
                let found = found.unwrap_or_else(|| {
                    panic!("seed {seed} (fail at {fail_at}, {mode:?}): {:?} lost", o.id)
                });
                if !o.duplicate {
                    assert_eq!(found.timestamp, *ts, "seed {seed}: {:?}", o.id);
                    assert_eq!(found.result, o.result, "seed {seed}: {:?}", o.id);
                }
            }
        }
    }
    if !setup_done {
        return;
    }
    // The call the fault cut: each of its transactions is there exactly as
    // the faultless run answered it, or not at all (a chain whole or not at
    // all). Expiries stamped for it may have gone ahead in a batch of their
    // own: they are the clock's, not the call's.
    if let (Some(cut), Some((_, Step::Submit(cut_call)))) =
        (expected.get(calls_done), calls.get(calls_done))
    {
        let mut chain_seen: Option<bool> = None;
        for (o, t) in cut.iter().zip(cut_call) {
            let found = rt.block_on(engine.transaction(o.id)).expect("read");
            if o.duplicate || o.timestamp.is_none() {
                continue;
            }
            let present = found
                .as_ref()
                .is_some_and(|f| Some(f.timestamp) == o.timestamp);
            if let Some(f) = &found {
                if present {
                    assert_eq!(
                        f.result, o.result,
                        "seed {seed}: {:?} of the cut call",
                        o.id
                    );
                }
            }
            // Linked members share the fate of their chain.
            if let Some(seen) = chain_seen {
                assert_eq!(
                    seen, present,
                    "seed {seed}: a chain of the cut call is partial"
                );
            }
            chain_seen = if t.linked { Some(present) } else { None };
        }
    }
    // The rest of the calls, again: the run ends where the faultless one did.
    // A close the fault cut is run again: if its cut was logged, closing
    // the date closed last checks it again; if not, it closes it now.
    for (i, (advance, step)) in calls[calls_done..].iter().enumerate() {
        // The clock moved for the call the fault cut; the later ones move
        // it as the faultless run did.
        if i > 0 {
            clock.advance_ms(*advance);
        }
        match step {
            Step::Submit(call) => {
                engine.submit_blocking(call.clone()).expect("resubmit");
            }
            Step::Close(date) => {
                let report = rt.block_on(engine.close_day(*date)).expect("close again");
                assert!(
                    report.ok,
                    "seed {seed}: close {date} again: {:?}",
                    report.failures
                );
            }
        }
    }
    let end = assert_audit_ok(&engine);
    assert_eq!(
        end.state_digest,
        *digests.last().expect("digests"),
        "seed {seed} (fail at {fail_at}, {mode:?}): the finished run differs"
    );
}

#[test]
fn seeded_runs_with_a_power_cut_keep_every_answer() {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds: Vec<u64> = match env("TALLY_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let from = env("TALLY_SIM_FROM").unwrap_or(0);
            (from..from + env("TALLY_SIM_SEEDS").unwrap_or(300)).collect()
        }
    };
    for (done, seed) in seeds.iter().enumerate() {
        simulate(*seed);
        if (done + 1) % 5_000 == 0 {
            eprintln!("simulation: {} seeds clean, through seed {seed}", done + 1);
        }
    }
}
