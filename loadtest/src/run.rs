//! `run`: drive the engine in-process with generated transfers, measure
//! throughput and latency, then reopen the store and check the invariants.
//!
//! Phases:
//! 1. Setup (not measured): open the bank `AccountId(0)` (internal, may go
//!    negative) and customers `AccountId(1..=N)`, fund every customer from
//!    the bank, and generate every client's batches up front.
//! 2. Measured: all clients start together on a 2-worker tokio runtime and
//!    submit their batches one call after another; each call's latency is
//!    recorded once per transaction in it. A sampler task records committed
//!    counts every 100 ms for the throughput series and drives the progress
//!    bar. With `--duration`, clients generate batches as they go (that cost
//!    is in the throughput but not in the latency) until time is up.
//!    With `--days N` (and `--clock simulated`), phase 2 runs once per
//!    simulated day with that day's share of the transfers (generated
//!    before the day, not measured); between days the clock jumps to the
//!    next day's start and the day is closed and checked
//!    (`Engine::close_day`; its wall time is `close_s`), so the tiers
//!    apply as the clock moves.
//! 3. Check: shut the engine down, measure the store, reopen it (the same
//!    directory for sled, the same store object for memory), audit, and
//!    compare the engine's committed count with what the harness saw; the
//!    tier figures are the reopened store's.

use crate::chart;
use crate::report::{
    self, CloseTimes, DaysFigures, Invariants, Latency, Machine, Parameters, Report, TierFigures,
};
use crate::setup::{resident_bytes, ClockKind, RunArgs, StoreKind, StoreSetup};
use crate::workload::{client_share, Generator, WorkloadKind, WorkloadSpec, CURRENCY};
use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rust_decimal::Decimal;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_engine::{
    AccountId, AccountingDate, Clock, Config, Engine, NewAccount, SimulatedClock, StoreChoice,
    Transaction, TxnCode, TxnId, SUBMIT_TRANSACTIONS_MAX,
};
use tally_storage::Store;
use tokio::sync::Barrier;

/// The bank: the internal account every customer is funded from.
pub const BANK: AccountId = AccountId(0);
/// What every customer starts with: 100,000,000.00 CNY, so that transfers of
/// at most 10.00 never run short, even on skewed workloads.
pub const FUNDING_FEN: i64 = 100_000_000 * 100;
const FUNDING_CODE: TxnCode = TxnCode(100);
/// Progress and throughput sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Latency histogram range: 1 µs to 1 hour, 3 significant digits.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Where the measured transfers come from.
enum Source {
    /// Generated before the clock started.
    Batches(Vec<Vec<Transaction>>),
    /// Generated between calls until the deadline, or until the count
    /// (transfers left) reaches 0.
    Live(Box<Generator>, Option<u64>),
}

/// What one client saw.
struct ClientResult {
    committed: u64,
    rejected: u64,
}

/// Latencies shared by every client: each buffers [`LATENCY_BUFFER`] of
/// them and records them under one lock. (A histogram per client cost the
/// one-transfer-per-call runs, 1,024 clients, a tenth of their CPU in
/// cache and page misses on 1,024 histograms of ~190 KB.)
type SharedLatency = Arc<std::sync::Mutex<Histogram<u64>>>;
const LATENCY_BUFFER: usize = 256;

/// A client's latencies not yet recorded: (microseconds, transfers).
struct LatencyBuffer {
    shared: SharedLatency,
    pending: Vec<(u64, u64)>,
}

impl LatencyBuffer {
    fn new(shared: SharedLatency) -> LatencyBuffer {
        LatencyBuffer {
            shared,
            pending: Vec::with_capacity(LATENCY_BUFFER),
        }
    }

    fn record(&mut self, micros: u64, count: u64) {
        self.pending.push((micros.max(1), count));
        if self.pending.len() == LATENCY_BUFFER {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut h = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (micros, count) in self.pending.drain(..) {
            h.saturating_record_n(micros, count);
        }
    }
}

/// The measured phase, merged over clients.
struct Measured {
    latency: Histogram<u64>,
    committed: u64,
    rejected: u64,
    duration: Duration,
    /// `(seconds since start, committed so far)`, every ~100 ms, the first
    /// at 0 and the last at the end.
    samples: Vec<(f64, u64)>,
    /// (seconds since start, resident bytes), every ~100 ms.
    memory: Vec<(f64, u64)>,
}

/// Counters shared by the clients and the sampler.
#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    answered: AtomicU64,
    finished: AtomicBool,
    /// Wakes the sampler once `finished` is set (a phase does not wait
    /// out the sampler's tick: `--days` runs one phase a day).
    done: tokio::sync::Notify,
}

/// Checked arguments.
struct Plan {
    spec: WorkloadSpec,
    transactions: Option<u64>,
    duration: Option<Duration>,
    clients: u32,
    shards: u16,
    batch_max: usize,
    /// Time between two batches of one client, when the load is paced.
    pace: Option<Duration>,
    sync: bool,
    checkpoint_every: Option<u64>,
    live_generation: bool,
    /// The simulated clock (`--clock simulated`), shared by the engine and
    /// the days' loop, which moves it on between days.
    simulated_clock: Option<Arc<SimulatedClock>>,
    /// `--days`: simulated days to spread the transfers over.
    days: Option<u32>,
    online_window_days: Option<u32>,
}

fn plan(args: &RunArgs) -> Result<Plan> {
    let spec = WorkloadSpec {
        kind: args.workload,
        accounts: args.accounts,
        zipf_s: args.zipf_s,
        hot_fraction: args.hot_fraction,
    };
    spec.validate()?;
    let duration = match args.duration {
        None => None,
        Some(secs) => {
            let d = Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero() && secs.is_finite() && secs <= 1e7)
                .ok_or_else(|| {
                    anyhow!("--duration must be a positive number of seconds, got {secs}")
                })?;
            Some(d)
        }
    };
    if duration.is_none() && args.transactions == 0 {
        bail!("--transactions must be at least 1");
    }
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.batch_max == 0 || args.batch_max > SUBMIT_TRANSACTIONS_MAX {
        bail!(
            "--batch-max must be 1..={SUBMIT_TRANSACTIONS_MAX}, got {}",
            args.batch_max
        );
    }
    let shards = args.shards.unwrap_or_else(tally_engine::default_shards);
    if shards == 0 || shards > tally_engine::SHARDS_MAX {
        bail!(
            "--shards must be 1..={}, got {shards}",
            tally_engine::SHARDS_MAX
        );
    }
    if args.store == StoreKind::Memory {
        for (given, flag) in [
            (args.data_dir.is_some(), "--data-dir"),
            (args.keep, "--keep"),
            (args.no_sync, "--no-sync"),
        ] {
            if given {
                bail!("{flag} only applies to --store sled");
            }
        }
    }
    for path in [&args.report_json, &args.report_md].into_iter().flatten() {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent.filter(|p| !p.is_dir()) {
            bail!(
                "cannot write {}: {} is not a directory",
                path.display(),
                parent.display()
            );
        }
    }
    if let Some(days) = args.days {
        if args.clock != ClockKind::Simulated {
            bail!(
                "--days needs --clock simulated: days pass on the simulated clock \
                 (on the system clock, {days} days would take {days} days)"
            );
        }
        if days == 0 {
            bail!("--days must be at least 1");
        }
        if duration.is_some() {
            bail!("--days spreads --transactions over the days; it does not go with --duration");
        }
        if args.live_generation {
            bail!("--days generates each day's transfers before the day; --live-generation does not apply");
        }
        if !matches!(
            args.workload,
            WorkloadKind::Uniform | WorkloadKind::Zipf | WorkloadKind::Hot
        ) {
            bail!(
                "--days drives the transfer workloads (uniform, zipf, hot), not {}",
                args.workload.name()
            );
        }
    }
    let pace = match args.rate {
        None => None,
        Some(0) => bail!("--rate must be at least 1 transfer per second"),
        Some(rate) => Some(Duration::from_secs_f64(
            args.batch_max as f64 * f64::from(args.clients) / rate as f64,
        )),
    };
    Ok(Plan {
        pace,
        spec,
        transactions: duration.is_none().then_some(args.transactions),
        duration,
        clients: args.clients,
        shards,
        batch_max: args.batch_max,
        sync: args.store == StoreKind::Sled && !args.no_sync,
        checkpoint_every: args.checkpoint_every,
        live_generation: args.live_generation,
        simulated_clock: (args.clock == ClockKind::Simulated)
            .then(|| Arc::new(SimulatedClock::new(args.seed))),
        days: args.days,
        online_window_days: args.online_window_days,
    })
}

/// The engine configuration of a run on `store`.
fn engine_config(store: &StoreSetup, plan: &Plan) -> Config {
    let config = match store {
        StoreSetup::Memory(store) => Config {
            store: StoreChoice::Custom(Arc::clone(store) as Arc<dyn Store>),
            ..Config::memory()
        },
        StoreSetup::Sled { dir, .. } => Config {
            sync: plan.sync,
            ..Config::sled(dir)
        },
    };
    let config = config.with_shards(plan.shards);
    // The simulated clock also turns the expiry ticker off (its readings
    // would move the clock at times of their own).
    let config = match &plan.simulated_clock {
        Some(clock) => Config {
            expiry_tick_ms: 0,
            ..config.with_clock(Arc::clone(clock) as Arc<dyn Clock>)
        },
        None => config,
    };
    let config = match plan.online_window_days {
        Some(days) => config.with_online_window_days(days),
        None => config,
    };
    match plan.checkpoint_every {
        Some(batches) => config.with_checkpoint_every(batches),
        None => config,
    }
}

pub fn run(mut args: RunArgs) -> Result<ExitCode> {
    if let Some(dir) = args.report_dir.clone() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        args.report_json.get_or_insert_with(|| dir.join("run.json"));
        args.report_md.get_or_insert_with(|| dir.join("run.md"));
        args.report_svg_dir.get_or_insert(dir);
    }
    let plan = plan(&args)?;
    if let Some(dir) = &args.report_svg_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut store = StoreSetup::new(&args)?;
    let result = measure_and_check(&args, &plan, &store);
    // A temporary store that failed its check, or broke the run, is kept
    // for a closer look.
    let failed = !matches!(result, Ok(true));
    let mut kept = None;
    if let StoreSetup::Sled { temp, .. } = &mut store {
        if let Some(temp) = temp.take() {
            if args.keep || failed {
                kept = Some(temp.keep());
            } else if let Err(e) = temp.close() {
                eprintln!("warning: cannot delete the temporary store directory: {e}");
            }
        }
    }
    let kept_note = |dir: &Path| format!("store kept in {}", dir.display());
    match result {
        Err(e) => match kept {
            Some(dir) => Err(anyhow!("{e:#} ({})", kept_note(&dir))),
            None => Err(e),
        },
        Ok(ok) => {
            if let Some(dir) = kept {
                eprintln!("{}", kept_note(&dir));
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Setup, the measured phase, the check and the reports. `Ok(false)` when
/// the invariants fail.
fn measure_and_check(args: &RunArgs, plan: &Plan, store: &StoreSetup) -> Result<bool> {
    if matches!(
        args.workload,
        WorkloadKind::Business
            | WorkloadKind::Redpacket
            | WorkloadKind::Coupon
            | WorkloadKind::Storm
    ) {
        return crate::products::run_products(args, engine_config(store, plan), store, plan.shards);
    }
    let show = !args.no_progress && std::io::stderr().is_terminal();
    let say = |text: String| {
        if !args.no_progress {
            eprintln!("{text}");
        }
    };

    let engine = Engine::open(engine_config(store, plan))
        .map_err(|e| anyhow!("cannot open the engine: {e}"))?;
    let started = Instant::now();
    let funding_committed = setup_accounts(&engine, plan.spec.accounts)?;
    say(format!(
        "setup: {} accounts opened and funded in {:.2} s",
        plan.spec.accounts,
        started.elapsed().as_secs_f64()
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let progress = progress_bar(plan, show);
    let (measured, days) = match (plan.days, &plan.simulated_clock) {
        (Some(days), Some(clock)) => {
            let utc_offset_s = engine_config(store, plan).utc_offset_s;
            let clock = Days {
                clock,
                utc_offset_s,
                days,
            };
            run_days(&engine, plan, args.seed, &clock, &runtime, &progress)?
        }
        _ => {
            let started = Instant::now();
            let sources = sources(plan, args.seed)?;
            if plan.transactions.is_some() && !plan.live_generation {
                say(format!(
                    "setup: transfers generated in {:.2} s",
                    started.elapsed().as_secs_f64()
                ));
            }
            let measured = runtime.block_on(drive(
                engine.clone(),
                sources,
                plan.duration,
                plan.batch_max,
                plan.pace,
                progress.clone(),
            ));
            (measured?, DaysFigures::default())
        }
    };
    progress.finish_and_clear();
    drop(runtime);
    if days.days_closed > 0 {
        say(format!(
            "days: {} closed, {}",
            days.days_closed,
            if days.close_checks_ok {
                "every close passed"
            } else {
                "a close FAILED"
            }
        ));
    }

    engine
        .shutdown_blocking()
        .map_err(|e| anyhow!("shutdown: {e}"))?;
    drop(engine);
    let bytes_on_disk = store.bytes_on_disk()?;

    let started = Instant::now();
    let engine = Engine::open(engine_config(store, plan))
        .map_err(|e| anyhow!("cannot reopen the engine: {e}"))?;
    let reopen = started.elapsed();
    let audit = engine.audit_blocking().map_err(|e| anyhow!("audit: {e}"))?;
    let tiers = TierFigures::from(
        engine
            .tier_stats_blocking()
            .map_err(|e| anyhow!("tier figures: {e}"))?,
    );
    engine
        .shutdown_blocking()
        .map_err(|e| anyhow!("shutdown after audit: {e}"))?;
    drop(engine);

    let expected_committed = funding_committed + measured.committed;
    let invariants = Invariants {
        accounts: audit.accounts,
        details: audit.details,
        committed: audit.committed,
        rejected: audit.rejected,
        batches: audit.batches,
        funding_committed,
        expected_committed,
        money_conserved: audit
            .currencies
            .iter()
            .all(|c| c.net.is_zero() && c.pending_net.is_zero()),
        below_floor: audit.below_floor.iter().map(|a| a.0).collect(),
        broken_chains: audit.broken_chains.iter().map(|a| a.0).collect(),
        state_digest: report::digest_hex(audit.state_digest),
    };
    let invariants_ok = audit.ok() && audit.committed == expected_committed && days.close_checks_ok;
    let duration_s = measured.duration.as_secs_f64();
    let report = Report {
        workload: args.workload,
        parameters: Parameters {
            accounts: plan.spec.accounts,
            transactions: plan.transactions,
            duration_limit_s: plan.duration.map(|d| d.as_secs_f64()),
            clients: plan.clients,
            shards: plan.shards,
            batch_max: plan.batch_max,
            rate: args.rate,
            store: args.store.name().to_string(),
            sync: plan.sync,
            checkpoint_every_batches: plan
                .checkpoint_every
                .unwrap_or(tally_engine::DEFAULT_CHECKPOINT_EVERY_BATCHES),
            seed: args.seed,
            zipf_s: plan.spec.zipf_s,
            hot_fraction: plan.spec.hot_fraction,
            live_generation: plan.live_generation || plan.duration.is_some(),
        },
        committed: measured.committed,
        rejected: measured.rejected,
        duration_s,
        tx_per_s: if duration_s > 0.0 {
            measured.committed as f64 / duration_s
        } else {
            0.0
        },
        latency_us: Latency::from_histogram(&measured.latency),
        throughput_per_s: report::per_second(&measured.samples),
        rss_mb_per_s: report::peak_per_second(&measured.memory),
        bytes_on_disk,
        bytes_per_transfer: bytes_on_disk
            .filter(|_| audit.committed > 0)
            .map(|b| b as f64 / audit.committed as f64),
        reopen_s: reopen.as_secs_f64(),
        invariants_ok,
        invariants,
        machine: Machine::this(),
        git_commit: report::git_commit(),
        products: None,
        days,
        tiers,
    };

    report::print_stdout(&report::summary(&report))?;
    if let Some(path) = &args.report_json {
        report::write_json(&report, path)?;
    }
    if let Some(path) = &args.report_md {
        report::write_markdown(&report, path)?;
    }
    if let Some(dir) = &args.report_svg_dir {
        let title = format!(
            "{} workload, {} store, {} clients, {} shards",
            args.workload.name(),
            args.store.name(),
            plan.clients,
            plan.shards
        );
        chart::write_charts(
            dir,
            &title,
            &report.throughput_per_s,
            &report::fine_rates(&measured.samples),
            duration_s,
            &report.rss_mb_per_s,
            &measured.latency,
        )?;
    }
    if !invariants_ok {
        let mut failures = report::failures(&report.invariants);
        if !report.days.close_checks_ok {
            failures.push("a day's close failed its checks".into());
        }
        eprintln!("error: invariants FAILED: {}", failures.join("; "));
    }
    Ok(invariants_ok)
}

/// The simulated days of `--days`: the clock the engine reads, and the
/// accounting time zone its dates are in.
struct Days<'a> {
    clock: &'a SimulatedClock,
    utc_offset_s: i64,
    days: u32,
}

/// Phase 2 over simulated days: each day's share of the transfers
/// (generated before the day, by the same per-client generators, so the
/// ids keep rising), then the clock jumps to the next day's start and the
/// day is closed and checked. The measured figures add up the days'
/// submitting phases; closes are timed on their own.
fn run_days(
    engine: &Engine,
    plan: &Plan,
    seed: u64,
    days: &Days<'_>,
    runtime: &tokio::runtime::Runtime,
    progress: &ProgressBar,
) -> Result<(Measured, DaysFigures)> {
    let total = plan
        .transactions
        .ok_or_else(|| anyhow!("--days needs --transactions"))?;
    let mut generators = (0..plan.clients)
        .map(|client| Generator::new(&plan.spec, seed, client))
        .collect::<Result<Vec<_>>>()?;
    let first = AccountingDate::of(days.clock.now(), days.utc_offset_s);
    let mut measured = Measured {
        latency: new_histogram()?,
        committed: 0,
        rejected: 0,
        duration: Duration::ZERO,
        samples: vec![(0.0, 0)],
        memory: Vec::new(),
    };
    let mut figures = DaysFigures::default();
    let mut close_s = Vec::with_capacity(days.days as usize);
    for day in 0..days.days {
        let today = client_share(total, days.days, day);
        if today > 0 {
            let sources = day_sources(&mut generators, today, plan.batch_max);
            let part = runtime.block_on(drive(
                engine.clone(),
                sources,
                None,
                plan.batch_max,
                plan.pace,
                progress.clone(),
            ))?;
            measured.add(part)?;
        }
        let date = AccountingDate(first.0.saturating_add_unsigned(day));
        days.clock.advance_to(date.next().start(days.utc_offset_s));
        let started = Instant::now();
        let report = runtime
            .block_on(engine.close_day(date))
            .map_err(|e| anyhow!("closing day {day} ({date:?}): {e}"))?;
        close_s.push(started.elapsed().as_secs_f64());
        figures.days_closed += 1;
        if !report.ok {
            figures.close_checks_ok = false;
            eprintln!(
                "error: the close of day {day} ({date:?}) FAILED: {:?}",
                report.failures
            );
        }
    }
    figures.close_s = CloseTimes::of(&close_s);
    Ok((measured, figures))
}

/// One day's transfers, `total` in all, spread over the clients as
/// [`sources`] does, from generators that go on from day to day.
fn day_sources(generators: &mut [Generator], total: u64, batch_max: usize) -> Vec<Source> {
    let clients = generators.len() as u32;
    (0u32..)
        .zip(generators.iter_mut())
        .map(|(client, generator)| {
            let mut left = client_share(total, clients, client);
            let mut batches = Vec::new();
            while left > 0 {
                let len = left.min(batch_max as u64);
                batches.push(generator.batch(len as usize));
                left -= len;
            }
            Source::Batches(batches)
        })
        .collect()
}

impl Measured {
    /// Adds a later phase: its latencies, counts and time, its samples
    /// shifted after this one's.
    fn add(&mut self, later: Measured) -> Result<()> {
        self.latency
            .add(&later.latency)
            .map_err(|e| anyhow!("cannot merge latency histograms: {e:?}"))?;
        let (t0, c0) = (self.duration.as_secs_f64(), self.committed);
        self.samples
            .extend(later.samples.iter().skip(1).map(|&(t, c)| (t0 + t, c0 + c)));
        self.memory
            .extend(later.memory.iter().map(|&(t, b)| (t0 + t, b)));
        self.committed += later.committed;
        self.rejected += later.rejected;
        self.duration += later.duration;
        Ok(())
    }
}

/// Opens the bank and the customers and funds every customer. Returns the
/// number of funding transfers committed.
pub fn setup_accounts(engine: &Engine, accounts: u64) -> Result<u64> {
    let chunk = SUBMIT_TRANSACTIONS_MAX as u64;
    let mut first = 0u64;
    while first <= accounts {
        let last = (first + chunk - 1).min(accounts);
        let batch: Vec<NewAccount> = (first..=last)
            .map(|i| {
                if AccountId(i) == BANK {
                    NewAccount::internal(BANK, CURRENCY)
                } else {
                    NewAccount::customer(AccountId(i), CURRENCY)
                }
            })
            .collect();
        let results = engine
            .open_accounts_blocking(batch)
            .map_err(|e| anyhow!("opening accounts: {e}"))?;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            bail!("opening accounts: {e}");
        }
        first = last + 1;
    }
    let mut committed = 0u64;
    let mut first = 1u64;
    while first <= accounts {
        let last = (first + chunk - 1).min(accounts);
        let batch: Vec<Transaction> = (first..=last)
            .map(|i| {
                Transaction::transfer(
                    TxnId(u128::from(i)),
                    FUNDING_CODE,
                    BANK,
                    AccountId(i),
                    Decimal::new(FUNDING_FEN, 2),
                    CURRENCY,
                )
            })
            .collect();
        let outcomes = engine
            .submit_blocking(batch)
            .map_err(|e| anyhow!("funding accounts: {e}"))?;
        if let Some(o) = outcomes.iter().find(|o| !o.is_committed()) {
            bail!("funding transfer {:?} was refused: {:?}", o.id, o.result);
        }
        committed += outcomes.len() as u64;
        first = last + 1;
    }
    Ok(committed)
}

/// Every client's transfers: pre-generated batches, or a live generator
/// when the run is bounded by time. Batches are generated round-robin over
/// the clients, so that batches submitted at about the same time sit close
/// together in memory, as they would if produced just in time.
fn sources(plan: &Plan, seed: u64) -> Result<Vec<Source>> {
    let mut generators = (0..plan.clients)
        .map(|client| Generator::new(&plan.spec, seed, client))
        .collect::<Result<Vec<_>>>()?;
    let total = match plan.transactions {
        Some(total) if !plan.live_generation => total,
        count => {
            return Ok((0u32..)
                .zip(generators)
                .map(|(client, g)| {
                    let share = count.map(|total| client_share(total, plan.clients, client));
                    Source::Live(Box::new(g), share)
                })
                .collect())
        }
    };
    let mut left: Vec<u64> = (0..plan.clients)
        .map(|client| client_share(total, plan.clients, client))
        .collect();
    let mut batches: Vec<Vec<Vec<Transaction>>> = left
        .iter()
        .map(|&n| Vec::with_capacity(n.div_ceil(plan.batch_max as u64) as usize))
        .collect();
    while left.iter().any(|&n| n > 0) {
        for ((generator, left), batches) in generators.iter_mut().zip(&mut left).zip(&mut batches) {
            let len = (*left).min(plan.batch_max as u64);
            if len > 0 {
                batches.push(generator.batch(len as usize));
                *left -= len;
            }
        }
    }
    Ok(batches.into_iter().map(Source::Batches).collect())
}

fn progress_bar(plan: &Plan, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let (len, template) = match (plan.transactions, plan.duration) {
        (Some(total), _) => (
            total,
            "{elapsed_precise} {wide_bar} {human_pos}/{human_len} tx  {msg}  ETA {eta}",
        ),
        (None, duration) => (
            duration.map_or(0, |d| d.as_millis() as u64),
            "{elapsed_precise} {wide_bar} {msg}",
        ),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// The measured phase.
async fn drive(
    engine: Engine,
    sources: Vec<Source>,
    duration: Option<Duration>,
    batch_max: usize,
    pace: Option<Duration>,
    progress: ProgressBar,
) -> Result<Measured> {
    let counters = Arc::new(Counters::default());
    let shared: SharedLatency = Arc::new(std::sync::Mutex::new(new_histogram()?));
    let barrier = Arc::new(Barrier::new(sources.len() + 1));
    let mut clients = Vec::with_capacity(sources.len());
    let count = sources.len() as u32;
    for (i, source) in (0u32..).zip(sources) {
        // Paced clients are spread evenly over one pace interval, so their
        // batches arrive as a steady stream, not in bursts.
        let pace = pace.map(|p| (p, p * i / count));
        clients.push(tokio::spawn(client(
            engine.clone(),
            source,
            LatencyBuffer::new(Arc::clone(&shared)),
            (Arc::clone(&counters), Arc::clone(&barrier)),
            duration,
            batch_max,
            pace,
        )));
    }
    barrier.wait().await;
    let start = Instant::now();
    let sampler = tokio::spawn(sample(
        Arc::clone(&counters),
        start,
        progress,
        duration.is_some(),
    ));
    let (mut committed, mut rejected) = (0u64, 0u64);
    let mut failure = None;
    for handle in clients {
        match handle.await {
            Ok(Ok(r)) => {
                committed += r.committed;
                rejected += r.rejected;
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(anyhow!("a client task failed: {e}"))),
        }
    }
    let elapsed = start.elapsed();
    counters.finished.store(true, Ordering::Release);
    counters.done.notify_one();
    let (mut samples, memory) = sampler
        .await
        .map_err(|e| anyhow!("the sampler task failed: {e}"))?;
    if let Some(e) = failure {
        return Err(e);
    }
    let latency = std::mem::replace(
        &mut *shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        new_histogram()?,
    );
    let end = elapsed.as_secs_f64();
    samples.retain(|s| s.0 < end);
    samples.push((end, committed));
    Ok(Measured {
        latency,
        committed,
        rejected,
        duration: elapsed,
        samples,
        memory,
    })
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
        .map_err(|e| anyhow!("cannot create a latency histogram: {e:?}"))
}

/// How late tokio's timer (millisecond ticks) may wake a paced client.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// One client: waits for the start signal, then submits its batches one
/// call after another.
async fn client(
    engine: Engine,
    mut source: Source,
    mut latency: LatencyBuffer,
    (counters, barrier): (Arc<Counters>, Arc<Barrier>),
    duration: Option<Duration>,
    batch_max: usize,
    pace: Option<(Duration, Duration)>,
) -> Result<ClientResult> {
    let mut result = ClientResult {
        committed: 0,
        rejected: 0,
    };
    let mut batches = match &mut source {
        Source::Batches(batches) => std::mem::take(batches).into_iter(),
        Source::Live(..) => Vec::new().into_iter(),
    };
    barrier.wait().await;
    let begin = Instant::now();
    let deadline = duration.map(|d| begin + d);
    let mut scheduled = begin + pace.map_or(Duration::ZERO, |p| p.1);
    loop {
        let batch = match &mut source {
            Source::Batches(_) => match batches.next() {
                Some(batch) => batch,
                None => break,
            },
            Source::Live(generator, left) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                match live_batch(generator, left, batch_max) {
                    Some(batch) => batch,
                    None => break,
                }
            }
        };
        let len = batch.len() as u64;
        let sent = match pace {
            Some((pace, _)) => {
                tokio::time::sleep_until(scheduled.into()).await;
                let (due, woke) = (scheduled, Instant::now());
                scheduled += pace;
                // A client more than the timer's slack behind schedule is
                // behind because earlier answers were slow: its batch
                // counts as sent when it was due, so latency includes the
                // backlog. Within the slack, the lateness is the timer's.
                if woke.duration_since(due) > TIMER_SLACK {
                    due
                } else {
                    woke
                }
            }
            None => Instant::now(),
        };
        let outcomes = engine
            .submit(batch)
            .await
            .map_err(|e| anyhow!("submit failed: {e}"))?;
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        latency.record(micros, len);
        if outcomes.len() as u64 != len {
            bail!("the engine answered {} of {len} transfers", outcomes.len());
        }
        let committed = outcomes.iter().filter(|o| o.is_committed()).count() as u64;
        result.committed += committed;
        result.rejected += len - committed;
        counters.committed.fetch_add(committed, Ordering::Relaxed);
        counters.answered.fetch_add(len, Ordering::Relaxed);
    }
    latency.flush();
    Ok(result)
}

/// The next batch of a live source, `None` once its count (transfers
/// left, if it has one) is used up: the same lengths as the pre-generated
/// batches of `sources`.
fn live_batch(
    generator: &mut Generator,
    left: &mut Option<u64>,
    batch_max: usize,
) -> Option<Vec<Transaction>> {
    let len = match left {
        Some(0) => return None,
        Some(n) => (*n).min(batch_max as u64) as usize,
        None => batch_max,
    };
    if let Some(n) = left {
        *n -= len as u64;
    }
    Some(generator.batch(len))
}

/// Samples the committed counter (and resident memory) every 100 ms until
/// the clients finish; moves the progress bar.
async fn sample(
    counters: Arc<Counters>,
    start: Instant,
    progress: ProgressBar,
    timed: bool,
) -> (Vec<(f64, u64)>, Vec<(f64, u64)>) {
    let mut samples = vec![(0.0, 0)];
    let mut memory = vec![(0.0, resident_bytes())];
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::from_std(start), SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = counters.done.notified() => {}
        }
        if counters.finished.load(Ordering::Acquire) {
            return (samples, memory);
        }
        let committed = counters.committed.load(Ordering::Relaxed);
        let elapsed = start.elapsed();
        samples.push((elapsed.as_secs_f64(), committed));
        memory.push((elapsed.as_secs_f64(), resident_bytes()));
        let rate = committed as f64 / elapsed.as_secs_f64().max(1e-9);
        if timed {
            progress.set_position(elapsed.as_millis() as u64);
            progress.set_message(format!("{committed} tx committed, {rate:.0} tx/s"));
        } else {
            progress.set_position(counters.answered.load(Ordering::Relaxed));
            progress.set_message(format!("{rate:.0} tx/s"));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn plan_of(args: &[&str]) -> Plan {
        let cli = Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied())).unwrap();
        plan(&cli.run).unwrap()
    }

    #[test]
    fn live_generation_submits_the_same_transfers_in_the_same_batches() {
        let args = [
            "--accounts",
            "50",
            "--transactions",
            "2003",
            "--clients",
            "3",
            "--batch-max",
            "7",
        ];
        let eager = sources(&plan_of(&args), 9).unwrap();
        let live_plan = plan_of(&[&args[..], &["--live-generation"]].concat());
        let live = sources(&live_plan, 9).unwrap();
        assert_eq!(eager.len(), 3);
        assert_eq!(live.len(), 3);
        let mut total = 0;
        for (eager, live) in eager.into_iter().zip(live) {
            let (Source::Batches(expected), Source::Live(mut generator, mut left)) = (eager, live)
            else {
                panic!("pre-generated batches, then a live source with a count");
            };
            let mut got = Vec::new();
            while let Some(batch) = live_batch(&mut generator, &mut left, live_plan.batch_max) {
                got.push(batch);
            }
            assert_eq!(left, Some(0));
            assert_eq!(got, expected);
            total += got.iter().map(Vec::len).sum::<usize>();
        }
        assert_eq!(total, 2003);
    }
}
