//! The age tier: details older than the online window leave the online
//! store (`details/` blobs) for the cold store (`cold/shard-<n>.seg`).
//! Only where bytes live changes: every read — detail pages, past
//! balances, statements, transactions found by time, the audit's forward
//! pass, the close's scans — equals a twin engine with the tier off, live
//! and after a reopen; damage in a cold segment is refused by name; a
//! power cut at every I/O step of a run that moves chunks reopens to
//! everything acknowledged.
// Amounts are written as yuan_fen (100_00 is 100.00 yuan).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;
use tally_engine::*;
use tally_storage::{CrashMode, Disk, SimDisk};

const BANK: u64 = 1;
const CUSTOMERS: std::ops::Range<u64> = 10..40;
const DAY_MS: u64 = 86_400_000;
/// A round a month: 26 months, well past a window of a year.
const MONTHS: u64 = 26;
/// Transfers a month: ~4 full chunks of 16,384 details per shard in all.
const PER_MONTH: u64 = 2_600;

fn config(dir: &Path, window_days: u32, clock: Arc<ManualClock>) -> Config {
    Config {
        expiry_tick_ms: 0,
        log_segment_bytes: 1 << 16,
        ..Config::sled(dir)
    }
    .with_shards(2)
    .with_checkpoint_every(1)
    // No persisted chunk stays in memory: every older read goes to the
    // store, the online one or the cold one.
    .with_hot_detail_chunks(0)
    .with_online_window_days(window_days)
    .with_clock(clock)
}

fn month_call(month: u64) -> Vec<Transaction> {
    let n = CUSTOMERS.end - CUSTOMERS.start;
    (0..PER_MONTH)
        .map(|i| {
            let from = CUSTOMERS.start + (i * 7 + month) % n;
            let to = CUSTOMERS.start + (from - CUSTOMERS.start + 1 + i % (n - 1)) % n;
            let id = u128::from(month) << 32 | u128::from(i);
            transfer(id, from, to, 1_00 + (i % 50) as i64)
        })
        .collect()
}

fn date_of(at: Timestamp) -> AccountingDate {
    AccountingDate(((at.0 / 1_000_000_000 + 8 * 3600) / 86_400) as i32)
}

/// The months: each a call of transfers and the close of the date open.
/// Returns the close reports and the instant each month ended.
fn run_months(engine: &Engine, clock: &ManualClock) -> (Vec<CloseReport>, Vec<Timestamp>) {
    let rt = runtime();
    let mut reports = Vec::new();
    let mut instants = Vec::new();
    for month in 0..MONTHS {
        let outcomes = engine.submit_blocking(month_call(month)).expect("submit");
        assert!(outcomes.iter().all(|o| o.is_committed()), "month {month}");
        let open = rt.block_on(engine.calendar()).expect("calendar").open;
        let date = open.unwrap_or(date_of(clock.now()));
        let report = rt.block_on(engine.close_day(date)).expect("close");
        assert!(report.ok, "month {month}: {report:#?}");
        reports.push(report);
        instants.push(clock.now());
        clock.advance_ms(30 * DAY_MS);
    }
    (reports, instants)
}

/// Everything a reader sees of an engine (the audit's memory figures
/// aside: they say what is in RAM, not what the store holds).
#[derive(Debug, PartialEq)]
struct Seen {
    audit: Audit,
    details: Vec<Vec<DetailView>>,
    balances_at: Vec<Option<rust_decimal::Decimal>>,
    statements: Vec<Option<Statement>>,
    txns: Vec<Option<TxnView>>,
    day_reports: Vec<CloseReport>,
}

fn seen(engine: &Engine, instants: &[Timestamp], dates: &[AccountingDate]) -> Seen {
    let rt = runtime();
    let mut audit = engine.audit_blocking().expect("audit");
    assert!(audit.ok(), "{audit:?}");
    audit.memory = IndexMemory::default();
    let mut details = Vec::new();
    let mut balances_at = Vec::new();
    let mut statements = Vec::new();
    for id in std::iter::once(BANK).chain(CUSTOMERS) {
        let all = DetailQuery::all(AccountId(id), DETAIL_PAGE_MAX);
        details.push(page_through(&rt, engine, all));
        for &at in instants.iter().step_by(5) {
            balances_at.push(
                rt.block_on(engine.balance_at(AccountId(id), at))
                    .expect("balance_at"),
            );
        }
        for &date in dates.iter().step_by(6) {
            statements.push(
                rt.block_on(engine.statement(AccountId(id), date))
                    .expect("statement"),
            );
        }
    }
    let txns = (0..MONTHS)
        .step_by(3)
        .flat_map(|m| {
            [0, PER_MONTH / 2, PER_MONTH - 1].map(|i| TxnId(u128::from(m) << 32 | u128::from(i)))
        })
        .map(|id| rt.block_on(engine.transaction(id)).expect("txn"))
        .collect();
    let day_reports = dates
        .iter()
        .step_by(8)
        .map(|&d| rt.block_on(engine.day_report(d)).expect("day report"))
        .collect();
    Seen {
        audit,
        details,
        balances_at,
        statements,
        txns,
        day_reports,
    }
}

fn tier_stats(engine: &Engine) -> TierStats {
    engine.tier_stats_blocking().expect("tier stats")
}

#[test]
fn chunks_past_the_window_move_cold_and_every_read_equals_a_twin_without_the_tier() {
    let (tiered, flat) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut runs = Vec::new();
    for (dir, window) in [(tiered.path(), 365), (flat.path(), 0)] {
        let clock = manual_clock();
        let engine = Engine::open(config(dir, window, clock.clone())).expect("open");
        open_funded(&engine, BANK, &CUSTOMERS.collect::<Vec<_>>(), 1_000_000_00);
        let (reports, instants) = run_months(&engine, &clock);
        let dates: Vec<AccountingDate> = reports.iter().map(|r| r.date).collect();
        let seen = seen(&engine, &instants, &dates);
        let stats = tier_stats(&engine);
        runs.push((engine, clock, reports, instants, dates, seen, stats));
    }
    let (on, off) = (&runs[0], &runs[1]);
    assert_eq!(on.2, off.2, "every close reports the same");
    assert!(
        on.5.audit.details > 4 * 16_384 * 2,
        "several chunks per shard: {}",
        on.5.audit.details
    );
    assert_eq!(on.5, off.5, "every read equals the twin's");
    // Where the bytes are is what differs.
    let (s_on, s_off) = (on.6, off.6);
    eprintln!("tier on: {s_on:?}; tier off: {s_off:?}");
    assert!(s_on.bytes_cold > 0, "{s_on:?}");
    assert_eq!(s_off.bytes_cold, 0, "{s_off:?}");
    // (bytes_hot holds sled's files too, whose size varies from run to
    // run: the detail files are compared below.)
    assert_eq!(s_on.accounts_online, 1 + CUSTOMERS.count() as u64);
    assert_eq!(s_on.accounts_offline, 0);
    let online = std::fs::read_dir(tiered.path().join(DETAILS_DIR))
        .expect("details/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect::<Vec<_>>();
    assert!(
        !online
            .iter()
            .any(|n| n == "s0000-c00000000" || n == "s0001-c00000000"),
        "the oldest chunks left the online store: {online:?}"
    );
    for shard in 0..2 {
        let segment = tiered
            .path()
            .join(COLD_DIR)
            .join(format!("shard-{shard}.seg"));
        assert!(segment.is_file(), "{}", segment.display());
    }
    // The encoded chunks moved, and what they take in the cold store.
    let moved: u64 = std::fs::read_dir(flat.path().join(DETAILS_DIR))
        .expect("details/")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().into_string().unwrap_or_default();
            name.starts_with('s') && !online.contains(&name)
        })
        .map(|e| e.metadata().expect("stat").len())
        .sum();
    assert!(moved > 0, "chunk files left details/");
    eprintln!(
        "moved chunks: {moved} bytes online, {} in the cold store ({:.2})",
        s_on.bytes_cold,
        s_on.bytes_cold as f64 / moved as f64
    );

    // Reopened, both read the same again, and the tiered one as before.
    let (instants, dates, before) = (on.3.clone(), on.4.clone(), on.5.clone_seen());
    for (engine, ..) in runs.drain(..) {
        engine.shutdown_blocking().expect("shutdown");
    }
    let reopen =
        |dir: &Path, window| Engine::open(config(dir, window, manual_clock())).expect("reopen");
    let (on, off) = (reopen(tiered.path(), 365), reopen(flat.path(), 0));
    let seen_on = seen(&on, &instants, &dates);
    assert_eq!(seen_on, seen(&off, &instants, &dates));
    assert_eq!(seen_on, before);
    // Checkpoints are written while batches go on, so the shutdown's may
    // move chunks a checkpoint still in flight had not: never fewer.
    let cold_reopened = tier_stats(&on).bytes_cold;
    assert!(cold_reopened >= s_on.bytes_cold, "{cold_reopened} {s_on:?}");
    // The tier off on a store with cold chunks: they stay where they are
    // and are read from there.
    on.shutdown_blocking().expect("shutdown");
    drop(on);
    let no_tier = reopen(tiered.path(), 0);
    assert_eq!(seen(&no_tier, &instants, &dates), before);
    assert_eq!(tier_stats(&no_tier).bytes_cold, cold_reopened);
    no_tier.shutdown_blocking().expect("shutdown");
    drop(no_tier);

    // Damage in a cold segment: a flipped byte is refused by name when
    // read (the audit reads every chunk), never answered as a shorter
    // history; a segment cut short or missing is refused at open.
    let segment = tiered.path().join(COLD_DIR).join("shard-0.seg");
    let good = std::fs::read(&segment).expect("segment");
    let mut bad = good.clone();
    bad[100] ^= 0x10;
    std::fs::write(&segment, &bad).expect("damage");
    let damaged = reopen(tiered.path(), 365);
    let audit = damaged.audit_blocking().expect("audit");
    let reason = audit
        .unreadable
        .clone()
        .expect("the audit names the damage");
    assert!(reason.contains("cold/shard-0.seg"), "{reason}");
    assert!(!audit.ok());
    let rt = runtime();
    let account = CUSTOMERS
        .clone()
        .find(|&a| shard_of(AccountId(a), 2).0 == 0)
        .expect("an account on shard 0");
    let mut query = DetailQuery::all(AccountId(account), DETAIL_PAGE_MAX);
    let read = loop {
        match rt.block_on(damaged.details(query)) {
            Ok(Some(page)) => match page.next {
                Some(next) => query.after = Some(next),
                None => break Ok(()),
            },
            Ok(None) => panic!("account vanished"),
            Err(e) => break Err(e),
        }
    };
    match read {
        Err(SubmitError::Storage { reason }) => {
            assert!(reason.contains("cold/shard-0.seg"), "{reason}")
        }
        other => panic!("a damaged cold chunk read as {other:?}"),
    }
    damaged.shutdown_blocking().expect("shutdown");
    drop(damaged);
    std::fs::write(&segment, &good[..good.len() - 1]).expect("cut");
    match Engine::open(config(tiered.path(), 365, manual_clock())) {
        Err(OpenError::CorruptCheckpoint { record, .. }) => {
            assert_eq!(record, "cold/shard-0.seg")
        }
        Err(e) => panic!("wrong refusal: {e}"),
        Ok(_) => panic!("a cold segment cut short was opened"),
    }
    std::fs::remove_file(&segment).expect("remove");
    match Engine::open(config(tiered.path(), 365, manual_clock())) {
        Err(OpenError::CorruptCheckpoint { record, .. }) => {
            assert_eq!(record, "cold/shard-0.seg")
        }
        Err(e) => panic!("wrong refusal: {e}"),
        Ok(_) => panic!("a missing cold segment was opened"),
    }
    std::fs::write(&segment, &good).expect("restore");
    let healed = reopen(tiered.path(), 365);
    assert_eq!(seen(&healed, &instants, &dates), before);
}

impl Seen {
    fn clone_seen(&self) -> Seen {
        Seen {
            audit: self.audit.clone(),
            details: self.details.clone(),
            balances_at: self.balances_at.clone(),
            statements: self.statements.clone(),
            txns: self.txns.clone(),
            day_reports: self.day_reports.clone(),
        }
    }
}

// ---------------------------------------------------------------------
// Power loss while chunks move.

const PL_CUSTOMERS: [u64; 4] = [10, 11, 12, 13];
/// A day past the window after the prefix.
const PL_JUMP_DAYS: u64 = 400;

fn pl_config(disk: &SimDisk, clock: Arc<ManualClock>) -> Config {
    let disk: Arc<dyn Disk> = Arc::new(disk.clone());
    Config {
        expiry_tick_ms: 0,
        log_segment_bytes: 1 << 20,
        checkpoint_wait: true,
        ..Config::on_disk(disk)
    }
    .with_shards(1)
    .with_checkpoint_every(1)
    .with_hot_detail_chunks(0)
    .with_online_window_days(365)
    .with_clock(clock)
}

fn pl_call(call: u128, len: u128) -> Vec<Transaction> {
    (0..len)
        .map(|i| {
            let from = PL_CUSTOMERS[(i % 4) as usize];
            let to = PL_CUSTOMERS[((i + 1 + i / 4 % 3) % 4) as usize];
            transfer((call + 1) << 32 | i, from, to, 1 + (i % 7) as i64)
        })
        .collect()
}

/// The store before the power cuts: the funding and two calls fill chunks
/// 0 and 1 exactly (8 + 2 × 16,380 details), shut down cleanly
/// (checkpointed, both chunks persisted online).
fn pl_prefix() -> SimDisk {
    let disk = SimDisk::new();
    let engine = Engine::open(pl_config(&disk, manual_clock())).expect("open");
    try_open_funded(&engine, BANK, &PL_CUSTOMERS, 1_000_000_00).expect("fund");
    for call in 0..2 {
        let outcomes = engine
            .submit_blocking(pl_call(call, 8_190))
            .expect("submit");
        let refused = outcomes.iter().find(|o| !o.is_committed());
        assert!(refused.is_none(), "{refused:?}");
    }
    engine.shutdown_blocking().expect("shutdown");
    disk
}

/// The run the power is cut in: more than a year later, a call (its
/// checkpoint moves chunks 0 and 1 to the cold store), another, and a
/// clean shutdown.
fn pl_calls() -> Vec<Vec<Transaction>> {
    vec![pl_call(2, 10), pl_call(3, 10)]
}

fn pl_clock() -> Arc<ManualClock> {
    let clock = manual_clock();
    clock.advance_ms(PL_JUMP_DAYS * DAY_MS);
    clock
}

#[test]
fn power_loss_at_every_io_step_of_a_move_loses_nothing_acknowledged() {
    let prefix = pl_prefix();
    // The reference: digests before and after each call, on a disk that
    // never fails.
    let disk = prefix.crash(CrashMode::DropUnsynced);
    let engine = Engine::open(pl_config(&disk, pl_clock())).expect("open");
    assert_eq!(tier_stats(&engine).bytes_cold, 0);
    let mut digests = vec![engine.audit_blocking().expect("audit").state_digest];
    for call in pl_calls() {
        engine.submit_blocking(call).expect("submit");
        digests.push(engine.audit_blocking().expect("audit").state_digest);
    }
    assert!(tier_stats(&engine).bytes_cold > 0, "the run moves a chunk");
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    let steps = disk.steps();
    let (mut crashes, mut cold_after, mut online_after) = (0, 0, 0);
    for fail_at in 0..steps + 3 {
        let disk = prefix.crash(CrashMode::DropUnsynced);
        disk.fail_at(fail_at);
        let mut acknowledged: Vec<(TxnId, Outcome)> = Vec::new();
        let mut calls_done = 0usize;
        if let Ok(engine) = Engine::open(pl_config(&disk, pl_clock())) {
            for call in pl_calls() {
                match engine.submit_blocking(call) {
                    Ok(outcomes) => {
                        // The first and last of each call are checked.
                        for o in [outcomes.first(), outcomes.last()].into_iter().flatten() {
                            acknowledged.push((o.id, o.clone()));
                        }
                        calls_done += 1;
                    }
                    Err(SubmitError::OutcomeUnknown { .. } | SubmitError::Stopped { .. }) => break,
                    Err(e) => panic!("step {fail_at}: {e:?}"),
                }
            }
            let _ = engine.shutdown_blocking();
        }
        let tear = CrashMode::Tear {
            seed: fail_at ^ 0x7ea5,
        };
        for mode in [CrashMode::DropUnsynced, tear] {
            crashes += 1;
            let crashed = disk.crash(mode);
            let engine = Engine::open(pl_config(&crashed, pl_clock()))
                .unwrap_or_else(|e| panic!("step {fail_at} {mode:?}: reopen failed: {e}"));
            // The audit reads every chunk, online or cold.
            let audit = assert_audit_ok(&engine);
            let at = digests[calls_done];
            let next = digests.get(calls_done + 1).copied();
            assert!(
                audit.state_digest == at || Some(audit.state_digest) == next,
                "step {fail_at} {mode:?}: state is neither {calls_done} nor {} calls",
                calls_done + 1
            );
            let rt = runtime();
            for (id, o) in &acknowledged {
                let found = rt
                    .block_on(engine.transaction(*id))
                    .expect("read")
                    .unwrap_or_else(|| panic!("step {fail_at} {mode:?}: {id:?} lost"));
                assert_eq!(Some(found.timestamp), o.timestamp, "step {fail_at}");
                assert_eq!(found.result, o.result, "step {fail_at}");
            }
            // The oldest details (chunk 0) are readable wherever they are.
            let first = rt
                .block_on(engine.details(DetailQuery::all(AccountId(10), 3)))
                .expect("details")
                .expect("account");
            assert_eq!(first.details.len(), 3, "step {fail_at} {mode:?}");
            if tier_stats(&engine).bytes_cold > 0 {
                cold_after += 1;
            } else {
                online_after += 1;
            }
            drop(engine);
        }
    }
    eprintln!(
        "{steps} steps, {crashes} crashes: {cold_after} reopened with chunk 0 cold, {online_after} with it online"
    );
    assert!(cold_after > 0 && online_after > 0);
}
