//! `compare --against postgres`: the same seeded workload on tally and on a
//! real PostgreSQL server built the way the seed design builds it, and one
//! side-by-side table of the results.
//!
//! Both sides see the same transfers (the generators of `workload.rs`, one
//! stream per client) from the same number of client threads, each client
//! making one call after another:
//! - **tally, batched**: each call submits up to `--batch-max` transfers.
//! - **tally, 1 per call**: each call submits one transfer, as a PostgreSQL
//!   client does; the engine groups concurrent calls itself.
//! - **postgres locking**: one database transaction per transfer: insert the
//!   transaction id (idempotency), `SELECT … FOR UPDATE` both accounts in id
//!   order, check funds, update both balances with `version + 1`, insert two
//!   detail rows with pre/post balance, commit (`synchronous_commit = on`).
//! - **postgres optimistic**: read both balances and versions without locks,
//!   then in one transaction `UPDATE … WHERE version = $v` (id order); when
//!   a row's version moved, roll back and retry, at most `--retries-max`
//!   times, then give up.
//!
//! PostgreSQL's tables live in their own schema (`--pg-schema`, dropped and
//! recreated each run) of the database named in the URL (created when
//! missing). After each run the same invariants are checked on both sides:
//! money conserved, no customer below zero, every account's detail chain
//! linked (first pre = opening balance, each pre = previous post, last post
//! = balance, versions 1..=n), and the committed count equal to what the
//! clients saw acknowledged.
//!
//! Timing covers the transfers only: setup (tables, accounts, funding,
//! generation, connections) is not measured. Latency is per call, counted
//! once per transfer in the call.

use crate::report::{self, Latency, Machine};
use crate::run::{setup_accounts, FUNDING_FEN};
use crate::setup::StoreKind;
use crate::workload::{client_share, Generator, WorkloadKind, WorkloadSpec};
use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};
use rust_decimal::Decimal;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tally_engine::{Config, Engine, StoreChoice, Transaction, SUBMIT_TRANSACTIONS_MAX};
use tally_storage::{MemoryStore, Store};

/// Concurrent clients, at most: PostgreSQL's default `max_connections` is
/// 100, and each client holds one connection.
pub const CLIENTS_MAX: u32 = 64;
/// Optimistic retries per transfer, at most.
pub const RETRIES_MAX: u32 = 1_000;
/// Transfers per compare run, at most (every transfer is generated up front).
pub const TRANSACTIONS_MAX: u64 = 10_000_000;
/// How long to wait for the server to answer a connection attempt, unless
/// the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Latency histogram range: 1 µs to 1 hour, 3 significant digits.
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Accounts listed by name in a failed check, at most.
const LISTED_MAX: i64 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Against {
    Postgres,
}

/// The workloads both sides can run (plain two-party transfers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompareWorkload {
    Uniform,
    Zipf,
    Hot,
}

impl CompareWorkload {
    fn kind(self) -> WorkloadKind {
        match self {
            CompareWorkload::Uniform => WorkloadKind::Uniform,
            CompareWorkload::Zipf => WorkloadKind::Zipf,
            CompareWorkload::Hot => WorkloadKind::Hot,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PgMode {
    Locking,
    Optimistic,
    Both,
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The system to compare tally with.
    #[arg(long, value_enum)]
    pub against: Against,
    /// PostgreSQL URL, e.g. postgres://tally:tally@127.0.0.1:5432/tally
    /// [default: $TALLY_PG_URL]. The database is created if missing.
    #[arg(long)]
    pub pg_url: Option<String>,
    /// Schema of the harness's tables (dropped and recreated each run).
    #[arg(long, default_value = "tally_compare")]
    pub pg_schema: String,
    /// PostgreSQL variants to run.
    #[arg(long, value_enum, default_value_t = PgMode::Both)]
    pub mode: PgMode,
    /// Optimistic mode: retries of a transfer whose versions moved before it
    /// gives up.
    #[arg(long, default_value_t = 10)]
    pub retries_max: u32,
    #[arg(long, value_enum, default_value_t = CompareWorkload::Uniform)]
    pub workload: CompareWorkload,
    /// Zipf exponent of the zipf workload.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub zipf_s: f64,
    /// Fraction of transfers of the hot workload that credit AccountId(1).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub hot_fraction: f64,
    /// Customer accounts AccountId(1..=N).
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u64,
    /// Transfers per system and mode.
    #[arg(long, default_value_t = 20_000)]
    pub transactions: u64,
    /// Concurrent clients (threads; one connection each on PostgreSQL).
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// tally's store.
    #[arg(long, value_enum, default_value_t = StoreKind::Sled)]
    pub store: StoreKind,
    /// tally's shard actors [default: one per core, at most 8].
    #[arg(long, value_parser = crate::shards_arg())]
    pub shards: Option<u16>,
    /// Transfers per call of the batched tally row.
    #[arg(long, default_value_t = 1000)]
    pub batch_max: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the comparison as JSON.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Write the comparison as a Markdown table.
    #[arg(long)]
    pub report_md: Option<PathBuf>,
    /// No status lines on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

/// Checked arguments.
struct Plan {
    spec: WorkloadSpec,
    transactions: u64,
    clients: u32,
    shards: u16,
    batch_max: usize,
    retries_max: u32,
    modes: Vec<PgVariant>,
    pg: postgres::Config,
    /// `host:port/database`, for messages (no password).
    pg_target: String,
    schema: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PgVariant {
    Locking,
    Optimistic,
}

impl PgVariant {
    fn name(self) -> &'static str {
        match self {
            PgVariant::Locking => "locking",
            PgVariant::Optimistic => "optimistic",
        }
    }
}

fn plan(args: &CompareArgs) -> Result<Plan> {
    let spec = WorkloadSpec {
        kind: args.workload.kind(),
        accounts: args.accounts,
        zipf_s: args.zipf_s,
        hot_fraction: args.hot_fraction,
    };
    spec.validate()?;
    if args.transactions == 0 || args.transactions > TRANSACTIONS_MAX {
        bail!(
            "--transactions must be 1..={TRANSACTIONS_MAX}, got {}",
            args.transactions
        );
    }
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        bail!("--clients must be 1..={CLIENTS_MAX}, got {}", args.clients);
    }
    if args.retries_max > RETRIES_MAX {
        bail!(
            "--retries-max must be 0..={RETRIES_MAX}, got {}",
            args.retries_max
        );
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
    if !is_identifier(&args.pg_schema) {
        bail!(
            "--pg-schema must be a lower-case identifier ([a-z_][a-z0-9_]*, at most 63), got {:?}",
            args.pg_schema
        );
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
    let url = match &args.pg_url {
        Some(url) => url.clone(),
        None => std::env::var("TALLY_PG_URL").map_err(|_| {
            anyhow!(
                "no PostgreSQL URL: pass --pg-url or set TALLY_PG_URL (see scripts/postgres.sh)"
            )
        })?,
    };
    let mut pg = postgres::Config::from_str(&url)
        .map_err(|e| anyhow!("--pg-url is not a PostgreSQL URL: {e}"))?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if pg.get_dbname().is_none() {
        bail!("--pg-url must name a database, e.g. postgres://tally:tally@127.0.0.1:5432/tally");
    }
    let modes = match args.mode {
        PgMode::Locking => vec![PgVariant::Locking],
        PgMode::Optimistic => vec![PgVariant::Optimistic],
        PgMode::Both => vec![PgVariant::Locking, PgVariant::Optimistic],
    };
    Ok(Plan {
        spec,
        transactions: args.transactions,
        clients: args.clients,
        shards,
        batch_max: args.batch_max,
        retries_max: args.retries_max,
        modes,
        pg_target: target(&pg),
        pg,
        schema: args.pg_schema.clone(),
    })
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

/// `host:port/database` of a config, without credentials.
fn target(pg: &postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", pg.get_dbname().unwrap_or(""))
}

/// One row of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct SystemResult {
    /// `tally` or `postgres`.
    pub system: &'static str,
    /// `batch N`, `1 per call`, `locking` or `optimistic`.
    pub mode: String,
    /// tally's store (`sled`, `memory`) or `postgres`.
    pub store: String,
    pub committed: u64,
    /// Refused for a business reason (insufficient funds).
    pub rejected: u64,
    /// Optimistic attempts that found a version moved and started again.
    pub retries: u64,
    /// Optimistic transfers abandoned after `retries_max` retries.
    pub gave_up: u64,
    pub duration_s: f64,
    /// `committed / duration_s`.
    pub tx_per_s: f64,
    pub latency_us: Latency,
    pub invariants_ok: bool,
    /// What failed, in words (empty when `invariants_ok`).
    pub failures: Vec<String>,
    /// The batched tally row's `tx_per_s` over this row's.
    pub tally_batched_ratio: Option<f64>,
    /// The 1-per-call tally row's `tx_per_s` over this row's.
    pub tally_per_call_ratio: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareParameters {
    pub accounts: u64,
    pub transactions: u64,
    pub clients: u32,
    pub shards: u16,
    pub batch_max: usize,
    pub retries_max: u32,
    pub seed: u64,
    pub zipf_s: f64,
    pub hot_fraction: f64,
    /// `host:port/database` (no credentials).
    pub pg_target: String,
    pub pg_schema: String,
}

/// The whole comparison. JSON field names are a contract: add, never rename.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    pub workload: WorkloadKind,
    pub against: &'static str,
    pub parameters: CompareParameters,
    pub postgres_version: String,
    pub results: Vec<SystemResult>,
    pub invariants_ok: bool,
    pub machine: Machine,
    pub git_commit: Option<String>,
}

pub fn compare(args: CompareArgs) -> Result<ExitCode> {
    let plan = plan(&args)?;
    let say = |text: String| {
        if !args.no_progress {
            eprintln!("{text}");
        }
    };
    // The server first: an unreachable one fails fast, before tally runs.
    let mut admin = connect_creating_db(&plan)?;
    let postgres_version = server_version(&mut admin)?;
    drop(admin);
    say(format!(
        "compare: {} workload, {} transfers, {} clients; PostgreSQL {postgres_version} at {}",
        args.workload.kind().name(),
        plan.transactions,
        plan.clients,
        plan.pg_target
    ));

    let mut results = Vec::new();
    // The batched row, then one transfer per call as a database client
    // sends them (just that one when --batch-max is 1).
    let sizes = if plan.batch_max == 1 {
        vec![1]
    } else {
        vec![plan.batch_max, 1]
    };
    for batch_max in sizes {
        let result = run_tally(&plan, args.store, batch_max, args.seed)?;
        say(row_line(&result));
        results.push(result);
    }
    for &variant in &plan.modes {
        let result = run_postgres(&plan, variant, args.seed)?;
        say(row_line(&result));
        results.push(result);
    }
    set_ratios(&mut results);

    let invariants_ok = results.iter().all(|r| r.invariants_ok);
    let report = CompareReport {
        workload: args.workload.kind(),
        against: "postgres",
        parameters: CompareParameters {
            accounts: plan.spec.accounts,
            transactions: plan.transactions,
            clients: plan.clients,
            shards: plan.shards,
            batch_max: plan.batch_max,
            retries_max: plan.retries_max,
            seed: args.seed,
            zipf_s: plan.spec.zipf_s,
            hot_fraction: plan.spec.hot_fraction,
            pg_target: plan.pg_target.clone(),
            pg_schema: plan.schema.clone(),
        },
        postgres_version,
        results,
        invariants_ok,
        machine: Machine::this(),
        git_commit: report::git_commit(),
    };
    report::print_stdout(&table(&report))?;
    if let Some(path) = &args.report_json {
        let mut text = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.report_md {
        write_markdown(&report, path)?;
    }
    if !invariants_ok {
        let failed: Vec<String> = report
            .results
            .iter()
            .filter(|r| !r.invariants_ok)
            .map(|r| format!("{} {}: {}", r.system, r.mode, r.failures.join("; ")))
            .collect();
        eprintln!("error: invariants FAILED: {}", failed.join(" | "));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn set_ratios(results: &mut [SystemResult]) {
    let rate = |mode_is_batched: bool| {
        results
            .iter()
            .find(|r| r.system == "tally" && (r.mode != "1 per call") == mode_is_batched)
            .map(|r| r.tx_per_s)
    };
    let (batched, per_call) = (rate(true), rate(false));
    for r in results.iter_mut() {
        let ratio = |tally: Option<f64>| tally.filter(|_| r.tx_per_s > 0.0).map(|t| t / r.tx_per_s);
        r.tally_batched_ratio = ratio(batched);
        r.tally_per_call_ratio = ratio(per_call);
    }
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
        .map_err(|e| anyhow!("cannot create a latency histogram: {e:?}"))
}

fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Every client's transfers, in the order it submits them.
fn transfers(plan: &Plan, seed: u64) -> Result<Vec<Vec<Transaction>>> {
    (0..plan.clients)
        .map(|client| {
            let mut generator = Generator::new(&plan.spec, seed, client)?;
            let len = client_share(plan.transactions, plan.clients, client);
            let len = usize::try_from(len).context("too many transfers")?;
            Ok(generator.batch(len))
        })
        .collect()
}

/// What one client thread saw.
#[derive(Default)]
struct ClientTally {
    latency: Option<Histogram<u64>>,
    committed: u64,
    rejected: u64,
    retries: u64,
    gave_up: u64,
}

/// Measured counts merged over the clients.
struct Merged {
    latency: Histogram<u64>,
    committed: u64,
    rejected: u64,
    retries: u64,
    gave_up: u64,
    duration: Duration,
}

/// Runs `work` on one thread per client, all starting together; the clock
/// runs from the common start until the last one finishes.
fn on_threads<T, F>(inputs: Vec<T>, work: F) -> Result<Merged>
where
    T: Send,
    F: Fn(T) -> Result<ClientTally> + Sync,
{
    let barrier = Barrier::new(inputs.len() + 1);
    let (outcomes, duration) = std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .into_iter()
            .map(|input| {
                let (barrier, work) = (&barrier, &work);
                scope.spawn(move || {
                    barrier.wait();
                    work(input)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let outcomes: Vec<Result<ClientTally>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a client thread panicked")))
            })
            .collect();
        (outcomes, start.elapsed())
    });
    let mut merged = Merged {
        latency: new_histogram()?,
        committed: 0,
        rejected: 0,
        retries: 0,
        gave_up: 0,
        duration,
    };
    for outcome in outcomes {
        let c = outcome?;
        if let Some(h) = &c.latency {
            merged
                .latency
                .add(h)
                .map_err(|e| anyhow!("merging latencies: {e:?}"))?;
        }
        merged.committed += c.committed;
        merged.rejected += c.rejected;
        merged.retries += c.retries;
        merged.gave_up += c.gave_up;
    }
    Ok(merged)
}

fn result_row(
    system: &'static str,
    mode: String,
    store: String,
    m: &Merged,
    failures: Vec<String>,
) -> SystemResult {
    let duration_s = m.duration.as_secs_f64();
    SystemResult {
        system,
        mode,
        store,
        committed: m.committed,
        rejected: m.rejected,
        retries: m.retries,
        gave_up: m.gave_up,
        duration_s,
        tx_per_s: if duration_s > 0.0 {
            m.committed as f64 / duration_s
        } else {
            0.0
        },
        latency_us: Latency::from_histogram(&m.latency),
        invariants_ok: failures.is_empty(),
        failures,
        tally_batched_ratio: None,
        tally_per_call_ratio: None,
    }
}

// ---------------------------------------------------------------- tally --

fn tally_config(store: &TallyStore, plan: &Plan) -> Config {
    let config = match store {
        TallyStore::Memory(store) => Config {
            store: StoreChoice::Custom(Arc::clone(store) as Arc<dyn Store>),
            ..Config::memory()
        },
        TallyStore::Sled(dir) => Config::sled(dir.path()),
    };
    config.with_shards(plan.shards)
}

enum TallyStore {
    Memory(Arc<MemoryStore>),
    Sled(tempfile::TempDir),
}

/// One tally row on a fresh store: `batch_max` transfers per call.
fn run_tally(plan: &Plan, kind: StoreKind, batch_max: usize, seed: u64) -> Result<SystemResult> {
    let store = match kind {
        StoreKind::Memory => TallyStore::Memory(Arc::new(MemoryStore::new())),
        StoreKind::Sled => TallyStore::Sled(
            tempfile::Builder::new()
                .prefix("tally-compare-")
                .tempdir()
                .context("cannot create a temporary directory")?,
        ),
    };
    let engine = Engine::open(tally_config(&store, plan))
        .map_err(|e| anyhow!("cannot open the engine: {e}"))?;
    let funding = setup_accounts(&engine, plan.spec.accounts)?;
    let inputs: Vec<Vec<Vec<Transaction>>> = transfers(plan, seed)?
        .into_iter()
        .map(|all| all.chunks(batch_max).map(<[Transaction]>::to_vec).collect())
        .collect();
    let measured = on_threads(inputs, |batches| tally_client(&engine, batches))?;
    engine
        .shutdown_blocking()
        .map_err(|e| anyhow!("shutdown: {e}"))?;
    drop(engine);

    let engine = Engine::open(tally_config(&store, plan))
        .map_err(|e| anyhow!("cannot reopen the engine: {e}"))?;
    let audit = engine.audit_blocking().map_err(|e| anyhow!("audit: {e}"))?;
    engine
        .shutdown_blocking()
        .map_err(|e| anyhow!("shutdown after audit: {e}"))?;
    drop(engine);

    let mut failures = Vec::new();
    if !audit
        .currencies
        .iter()
        .all(|c| c.net.is_zero() && c.pending_net.is_zero())
    {
        failures.push("money not conserved".to_string());
    }
    if !audit.below_floor.is_empty() {
        failures.push(format!("{} accounts below floor", audit.below_floor.len()));
    }
    if !audit.broken_chains.is_empty() {
        failures.push(format!("{} broken chains", audit.broken_chains.len()));
    }
    let expected = funding + measured.committed;
    if audit.committed != expected {
        failures.push(format!(
            "engine committed {} transactions, clients saw {expected}",
            audit.committed
        ));
    }
    let mode = if batch_max == 1 {
        "1 per call".to_string()
    } else {
        format!("batch {batch_max}")
    };
    let store_name = match kind {
        StoreKind::Memory => "memory",
        StoreKind::Sled => "sled",
    };
    Ok(result_row(
        "tally",
        mode,
        store_name.to_string(),
        &measured,
        failures,
    ))
}

fn tally_client(engine: &Engine, batches: Vec<Vec<Transaction>>) -> Result<ClientTally> {
    let mut latency = new_histogram()?;
    let mut seen = ClientTally::default();
    for batch in batches {
        let len = batch.len() as u64;
        let sent = Instant::now();
        let outcomes = engine
            .submit_blocking(batch)
            .map_err(|e| anyhow!("submit failed: {e}"))?;
        latency.saturating_record_n(micros_since(sent), len);
        if outcomes.len() as u64 != len {
            bail!("the engine answered {} of {len} transfers", outcomes.len());
        }
        let committed = outcomes.iter().filter(|o| o.is_committed()).count() as u64;
        seen.committed += committed;
        seen.rejected += len - committed;
    }
    seen.latency = Some(latency);
    Ok(seen)
}

// ------------------------------------------------------------- postgres --

/// Connects to the URL's database, creating it (through the `postgres`
/// maintenance database) when it does not exist.
fn connect_creating_db(plan: &Plan) -> Result<Client> {
    match plan.pg.connect(NoTls) {
        Ok(client) => Ok(client),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            let db = plan.pg.get_dbname().unwrap_or_default().to_string();
            let mut maintenance = plan.pg.clone();
            maintenance.dbname("postgres");
            let mut admin = maintenance.connect(NoTls).map_err(|e| {
                anyhow!("database {db} does not exist and the postgres database cannot be reached to create it: {}",
                    describe(&e))
            })?;
            let sql = format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\""));
            match admin.batch_execute(&sql) {
                Ok(()) => {}
                // Created meanwhile by another run.
                Err(e)
                    if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                        || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => bail!("cannot create database {db}: {}", describe(&e)),
            }
            plan.pg.connect(NoTls).map_err(|e| {
                anyhow!(
                    "cannot connect to PostgreSQL at {}: {}",
                    plan.pg_target,
                    describe(&e)
                )
            })
        }
        Err(e) => Err(anyhow!(
            "cannot connect to PostgreSQL at {}: {}",
            plan.pg_target,
            describe(&e)
        )),
    }
}

/// A PostgreSQL error with its causes ("error connecting to server:
/// Connection refused (os error 111)"), on one line.
fn describe(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

fn server_version(client: &mut Client) -> Result<String> {
    let row = client
        .query_one("SHOW server_version", &[])
        .context("SHOW server_version")?;
    row.try_get::<_, String>(0).context("server_version")
}

/// Drops and recreates the harness's tables and opens and funds the
/// accounts: the bank (id 0, may go negative) holds minus what the
/// customers hold, so the balances sum to zero.
fn pg_setup(client: &mut Client, schema: &str, accounts: u64) -> Result<()> {
    let sql = format!(
        "SET client_min_messages = warning;
         CREATE SCHEMA IF NOT EXISTS {schema};
         DROP TABLE IF EXISTS {schema}.details, {schema}.transactions, {schema}.accounts;
         CREATE TABLE {schema}.accounts (
             id bigint PRIMARY KEY,
             kind text NOT NULL,
             currency char(3) NOT NULL,
             balance numeric(20, 2) NOT NULL,
             opening_balance numeric(20, 2) NOT NULL,
             may_go_negative boolean NOT NULL,
             version bigint NOT NULL,
             updated_at timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE {schema}.transactions (
             id numeric(39, 0) PRIMARY KEY,
             code bigint NOT NULL,
             payer bigint NOT NULL,
             payee bigint NOT NULL,
             amount numeric(20, 2) NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE {schema}.details (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             account_id bigint NOT NULL,
             txn_id numeric(39, 0) NOT NULL,
             amount numeric(20, 2) NOT NULL,
             pre_balance numeric(20, 2) NOT NULL,
             post_balance numeric(20, 2) NOT NULL,
             version bigint NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now(),
             UNIQUE (account_id, version)
         );"
    );
    client
        .batch_execute(&sql)
        .with_context(|| format!("cannot create the tables in schema {schema}"))?;
    let customers = i64::try_from(accounts).context("too many accounts")?;
    let funding = Decimal::new(FUNDING_FEN, 2);
    let bank = -(funding * Decimal::from(customers));
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.accounts (id, kind, currency, balance, opening_balance, may_go_negative, version)
                 VALUES (0, 'internal', 'CNY', $1, $1, true, 0)"
            ),
            &[&bank],
        )
        .context("cannot open the bank account")?;
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.accounts (id, kind, currency, balance, opening_balance, may_go_negative, version)
                 SELECT g, 'customer', 'CNY', $1, $1, false, 0 FROM generate_series(1::bigint, $2) AS g"
            ),
            &[&funding, &customers],
        )
        .context("cannot open the customer accounts")?;
    client
        .batch_execute(&format!("ANALYZE {schema}.accounts"))
        .context("ANALYZE")?;
    Ok(())
}

/// A transfer as PostgreSQL sees it.
struct PgTransfer {
    id: Decimal,
    code: i64,
    from: i64,
    to: i64,
    amount: Decimal,
}

fn pg_transfer(t: &Transaction) -> Result<PgTransfer> {
    let [debit, credit] = t.legs.as_slice() else {
        bail!("transfer {:?} does not have two legs", t.id);
    };
    let id = i128::try_from(t.id.0).context("transaction id out of range")?;
    Ok(PgTransfer {
        id: Decimal::try_from_i128_with_scale(id, 0)
            .map_err(|e| anyhow!("transaction id {id}: {e}"))?,
        code: i64::from(t.code.0),
        from: i64::try_from(debit.account.0).context("account id out of range")?,
        to: i64::try_from(credit.account.0).context("account id out of range")?,
        amount: debit.amount,
    })
}

/// The prepared statements of one connection.
struct Statements {
    insert_txn: Statement,
    lock_accounts: Statement,
    read_accounts: Statement,
    update_locked: Statement,
    update_if_version: Statement,
    insert_details: Statement,
}

impl Statements {
    fn prepare(client: &mut Client, s: &str) -> Result<Statements> {
        let mut prepare = |sql: String| {
            client
                .prepare(&sql)
                .with_context(|| format!("cannot prepare: {sql}"))
        };
        Ok(Statements {
            insert_txn: prepare(format!(
                "INSERT INTO {s}.transactions (id, code, payer, payee, amount) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO NOTHING"
            ))?,
            lock_accounts: prepare(format!(
                "SELECT id, balance, version, may_go_negative FROM {s}.accounts
                 WHERE id IN ($1, $2) ORDER BY id FOR UPDATE"
            ))?,
            read_accounts: prepare(format!(
                "SELECT id, balance, version, may_go_negative FROM {s}.accounts
                 WHERE id IN ($1, $2) ORDER BY id"
            ))?,
            update_locked: prepare(format!(
                "UPDATE {s}.accounts SET balance = $2, version = $3, updated_at = now() WHERE id = $1"
            ))?,
            update_if_version: prepare(format!(
                "UPDATE {s}.accounts SET balance = $2, version = $3, updated_at = now()
                 WHERE id = $1 AND version = $4"
            ))?,
            insert_details: prepare(format!(
                "INSERT INTO {s}.details (account_id, txn_id, amount, pre_balance, post_balance, version)
                 VALUES ($1, $2, $3, $4, $5, $6), ($7, $2, $8, $9, $10, $11)"
            ))?,
        })
    }
}

/// An account row as read at the start of a transfer.
#[derive(Clone, Copy)]
struct AccountRow {
    id: i64,
    balance: Decimal,
    version: i64,
    may_go_negative: bool,
}

/// What became of one attempt at a transfer.
enum Attempt {
    Committed,
    /// Insufficient funds (or a missing account): nothing changed.
    Rejected,
    /// Already recorded under this id: nothing changed.
    Duplicate,
    /// A version moved, or the server broke a deadlock or a serialization
    /// conflict: nothing changed, try again.
    Conflict,
}

/// The payer's and the payee's rows, and their new balances, or `None`
/// when the transfer must be refused.
fn plan_transfer(t: &PgTransfer, rows: &[AccountRow]) -> Option<[(AccountRow, Decimal); 2]> {
    let payer = rows.iter().find(|r| r.id == t.from).copied()?;
    let payee = rows.iter().find(|r| r.id == t.to).copied()?;
    let payer_post = payer.balance - t.amount;
    if payer_post < Decimal::ZERO && !payer.may_go_negative {
        return None;
    }
    Some([(payer, payer_post), (payee, payee.balance + t.amount)])
}

fn is_conflict(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Runs one attempt; a serialization failure or deadlock becomes a conflict.
fn attempt(
    client: &mut Client,
    st: &Statements,
    t: &PgTransfer,
    variant: PgVariant,
) -> Result<Attempt> {
    let result = match variant {
        PgVariant::Locking => attempt_locking(client, st, t),
        PgVariant::Optimistic => attempt_optimistic(client, st, t),
    };
    match result {
        Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
        Err(e) => Err(anyhow!("transfer {}: {}", t.id, describe(&e))),
        Ok(a) => Ok(a),
    }
}

/// The seed's pessimistic variant: row locks in id order for the whole
/// database transaction.
fn attempt_locking(
    client: &mut Client,
    st: &Statements,
    t: &PgTransfer,
) -> Result<Attempt, postgres::Error> {
    let mut tx = client.transaction()?;
    if tx.execute(&st.insert_txn, &[&t.id, &t.code, &t.from, &t.to, &t.amount])? == 0 {
        return Ok(Attempt::Duplicate);
    }
    let rows = tx.query(&st.lock_accounts, &[&t.from, &t.to])?;
    let rows = account_rows(&rows)?;
    let Some(legs) = plan_transfer(t, &rows) else {
        return Ok(Attempt::Rejected);
    };
    for (row, post) in &legs {
        tx.execute(&st.update_locked, &[&row.id, post, &(row.version + 1)])?;
    }
    insert_details(&mut tx, st, t, &legs)?;
    tx.commit()?;
    Ok(Attempt::Committed)
}

/// The seed's optimistic variant: read without locks, then update only if
/// the versions are still the ones read.
fn attempt_optimistic(
    client: &mut Client,
    st: &Statements,
    t: &PgTransfer,
) -> Result<Attempt, postgres::Error> {
    let rows = client.query(&st.read_accounts, &[&t.from, &t.to])?;
    let rows = account_rows(&rows)?;
    let Some(mut legs) = plan_transfer(t, &rows) else {
        return Ok(Attempt::Rejected);
    };
    // Updates in id order, like the locks of the other variant, so that two
    // transfers never wait on each other in a cycle.
    legs.sort_by_key(|(row, _)| row.id);
    let mut tx = client.transaction()?;
    if tx.execute(&st.insert_txn, &[&t.id, &t.code, &t.from, &t.to, &t.amount])? == 0 {
        return Ok(Attempt::Duplicate);
    }
    for (row, post) in &legs {
        let updated = tx.execute(
            &st.update_if_version,
            &[&row.id, post, &(row.version + 1), &row.version],
        )?;
        if updated == 0 {
            return Ok(Attempt::Conflict); // dropping `tx` rolls back
        }
    }
    insert_details(&mut tx, st, t, &legs)?;
    tx.commit()?;
    Ok(Attempt::Committed)
}

fn account_rows(rows: &[postgres::Row]) -> Result<Vec<AccountRow>, postgres::Error> {
    rows.iter()
        .map(|r| {
            Ok(AccountRow {
                id: r.try_get(0)?,
                balance: r.try_get(1)?,
                version: r.try_get(2)?,
                may_go_negative: r.try_get(3)?,
            })
        })
        .collect()
}

fn insert_details(
    tx: &mut postgres::Transaction<'_>,
    st: &Statements,
    t: &PgTransfer,
    legs: &[(AccountRow, Decimal); 2],
) -> Result<(), postgres::Error> {
    let [(a, a_post), (b, b_post)] = legs;
    let signed = |row: &AccountRow| {
        if row.id == t.from {
            -t.amount
        } else {
            t.amount
        }
    };
    let (a_amount, b_amount) = (signed(a), signed(b));
    let (a_version, b_version) = (a.version + 1, b.version + 1);
    tx.execute(
        &st.insert_details,
        &[
            &a.id, &t.id, &a_amount, &a.balance, a_post, &a_version, &b.id, &b_amount, &b.balance,
            b_post, &b_version,
        ],
    )?;
    Ok(())
}

/// One PostgreSQL row on freshly created tables.
fn run_postgres(plan: &Plan, variant: PgVariant, seed: u64) -> Result<SystemResult> {
    let mut admin = connect_creating_db(plan)?;
    pg_setup(&mut admin, &plan.schema, plan.spec.accounts)?;
    let mut inputs = Vec::new();
    for client_transfers in transfers(plan, seed)? {
        let transfers = client_transfers
            .iter()
            .map(pg_transfer)
            .collect::<Result<Vec<_>>>()?;
        let mut client = plan.pg.connect(NoTls).map_err(|e| {
            anyhow!(
                "cannot connect to PostgreSQL at {}: {}",
                plan.pg_target,
                describe(&e)
            )
        })?;
        // Durable commits, whatever the server's default.
        client
            .batch_execute("SET synchronous_commit = on")
            .context("SET synchronous_commit")?;
        let statements = Statements::prepare(&mut client, &plan.schema)?;
        inputs.push((client, statements, transfers));
    }
    let retries_max = plan.retries_max;
    let measured = on_threads(inputs, |(mut client, st, transfers)| {
        pg_client(&mut client, &st, &transfers, variant, retries_max)
    })?;
    let failures = pg_check(&mut admin, &plan.schema, measured.committed)?;
    Ok(result_row(
        "postgres",
        variant.name().to_string(),
        "postgres".to_string(),
        &measured,
        failures,
    ))
}

fn pg_client(
    client: &mut Client,
    st: &Statements,
    transfers: &[PgTransfer],
    variant: PgVariant,
    retries_max: u32,
) -> Result<ClientTally> {
    let mut latency = new_histogram()?;
    let mut seen = ClientTally::default();
    for t in transfers {
        let sent = Instant::now();
        let mut retries = 0u32;
        loop {
            match attempt(client, st, t, variant)? {
                Attempt::Committed => seen.committed += 1,
                Attempt::Rejected | Attempt::Duplicate => seen.rejected += 1,
                Attempt::Conflict if retries < retries_max => {
                    retries += 1;
                    seen.retries += 1;
                    continue;
                }
                Attempt::Conflict => seen.gave_up += 1,
            }
            break;
        }
        latency.saturating_record(micros_since(sent));
    }
    seen.latency = Some(latency);
    Ok(seen)
}

/// The invariants on PostgreSQL's tables; what failed, in words.
fn pg_check(client: &mut Client, s: &str, committed: u64) -> Result<Vec<String>> {
    let count = |client: &mut Client, sql: String| -> Result<i64> {
        let row = client
            .query_one(&sql, &[])
            .with_context(|| format!("check failed: {sql}"))?;
        row.try_get::<_, i64>(0)
            .with_context(|| format!("check failed: {sql}"))
    };
    let mut failures = Vec::new();
    let unbalanced = count(
        client,
        format!(
            "SELECT count(*) FROM (SELECT 1 FROM {s}.accounts
             HAVING sum(balance) <> sum(opening_balance)) AS x"
        ),
    )?;
    if unbalanced != 0 {
        failures.push("money not conserved".to_string());
    }
    let negative = count(
        client,
        format!("SELECT count(*) FROM {s}.accounts WHERE balance < 0 AND NOT may_go_negative"),
    )?;
    if negative != 0 {
        failures.push(format!("{negative} accounts below zero"));
    }
    let broken = broken_chains(client, s)?;
    if !broken.is_empty() {
        failures.push(format!("{} broken chains (e.g. {broken:?})", broken.len()));
    }
    let odd_txns = count(
        client,
        format!(
            "SELECT count(*) FROM (SELECT t.id FROM {s}.transactions t
             LEFT JOIN {s}.details d ON d.txn_id = t.id GROUP BY t.id
             HAVING count(d.id) <> 2 OR coalesce(sum(d.amount), 1) <> 0) AS x"
        ),
    )?;
    if odd_txns != 0 {
        failures.push(format!(
            "{odd_txns} transactions without two balancing details"
        ));
    }
    let stored = count(client, format!("SELECT count(*) FROM {s}.transactions"))?;
    if u64::try_from(stored).ok() != Some(committed) {
        failures.push(format!(
            "database holds {stored} transactions, clients saw {committed} committed"
        ));
    }
    Ok(failures)
}

/// Accounts whose detail chain does not link from the opening balance to
/// the balance (at most `LISTED_MAX` of them).
fn broken_chains(client: &mut Client, s: &str) -> Result<Vec<i64>> {
    let sql = format!(
        "WITH d AS (
             SELECT account_id, version, amount, pre_balance, post_balance,
                    lag(post_balance) OVER w AS prev_post, lag(version) OVER w AS prev_version
             FROM {s}.details WINDOW w AS (PARTITION BY account_id ORDER BY version)
         ), last AS (
             SELECT DISTINCT ON (account_id) account_id, post_balance, version
             FROM {s}.details ORDER BY account_id, version DESC
         )
         SELECT d.account_id FROM d JOIN {s}.accounts a ON a.id = d.account_id
         WHERE d.post_balance <> d.pre_balance + d.amount
            OR (d.prev_version IS NULL AND (d.pre_balance <> a.opening_balance OR d.version <> 1))
            OR (d.prev_version IS NOT NULL
                AND (d.pre_balance <> d.prev_post OR d.version <> d.prev_version + 1))
         UNION
         SELECT a.id FROM {s}.accounts a LEFT JOIN last l ON l.account_id = a.id
         WHERE coalesce(l.post_balance, a.opening_balance) <> a.balance
            OR coalesce(l.version, 0) <> a.version
         ORDER BY 1 LIMIT {LISTED_MAX}"
    );
    let rows = client
        .query(&sql, &[])
        .context("checking the detail chains")?;
    rows.iter()
        .map(|r| r.try_get::<_, i64>(0).context("checking the detail chains"))
        .collect()
}

// -------------------------------------------------------------- reports --

const HEADERS: [&str; 11] = [
    "system / mode",
    "transfers/s",
    "p50 (µs)",
    "p99 (µs)",
    "committed",
    "rejects",
    "retries",
    "gave up",
    "invariants",
    "tally batched ÷",
    "tally 1/call ÷",
];

fn cells(r: &SystemResult) -> [String; 11] {
    let ratio = |x: Option<f64>| x.map_or_else(|| "n/a".to_string(), ratio_text);
    let name = match r.system {
        "tally" => format!("tally {} ({})", r.mode, r.store),
        _ => format!("{} {}", r.system, r.mode),
    };
    [
        name,
        format!("{:.0}", r.tx_per_s),
        r.latency_us.p50.to_string(),
        r.latency_us.p99.to_string(),
        r.committed.to_string(),
        r.rejected.to_string(),
        r.retries.to_string(),
        r.gave_up.to_string(),
        if r.invariants_ok {
            "OK".to_string()
        } else {
            format!("FAILED ({})", r.failures.join("; "))
        },
        ratio(r.tally_batched_ratio),
        ratio(r.tally_per_call_ratio),
    ]
}

/// A ratio with as many decimals as its size needs: `312×`, `5.4×`, `0.021×`.
fn ratio_text(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}×")
    } else if x >= 0.1 {
        format!("{x:.1}×")
    } else {
        format!("{x:.3}×")
    }
}

fn row_line(r: &SystemResult) -> String {
    let c = cells(r);
    format!(
        "done: {}: {} transfers/s, p50 {} µs, p99 {} µs, invariants {}",
        c[0], c[1], c[2], c[3], c[8]
    )
}

fn heading(r: &CompareReport) -> String {
    let p = &r.parameters;
    format!(
        "tally vs PostgreSQL {}: {} workload, {} accounts, {} transfers per row, {} clients, {} tally shards, seed {}",
        r.postgres_version,
        workload_text(r),
        p.accounts,
        p.transactions,
        p.clients,
        p.shards,
        p.seed
    )
}

fn workload_text(r: &CompareReport) -> String {
    match r.workload {
        WorkloadKind::Zipf => format!("zipf (s = {})", r.parameters.zipf_s),
        WorkloadKind::Hot => format!("hot (fraction {})", r.parameters.hot_fraction),
        other => other.name().to_string(),
    }
}

/// The stdout table: aligned columns, numbers right-aligned.
pub fn table(r: &CompareReport) -> String {
    let rows: Vec<[String; 11]> = r.results.iter().map(cells).collect();
    let width = |i: usize| {
        rows.iter()
            .map(|c| c[i].chars().count())
            .chain([HEADERS[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..HEADERS.len()).map(width).collect();
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if i == 0 || i == 8 {
                let _ = write!(out, "{cell}{pad}  ");
            } else {
                let _ = write!(out, "{pad}{cell}  ");
            }
        }
        out.trim_end().to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", heading(r));
    let headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(out, "{}", line(&headers));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    let _ = writeln!(
        out,
        "ratios: tally's transfers/s over the row's; latency is per call (a batched call counts once per transfer in it)"
    );
    out
}

pub fn markdown(r: &CompareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n", heading(r));
    let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(HEADERS.len() - 1));
    for row in r.results.iter().map(cells) {
        let escaped: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(out, "| {} |", escaped.join(" | "));
    }
    let _ = writeln!(
        out,
        "\n{} cores, {}/{}, git {}",
        r.machine.cores,
        r.machine.os,
        r.machine.arch,
        r.git_commit.as_deref().unwrap_or("unknown")
    );
    out
}

fn write_markdown(r: &CompareReport, path: &Path) -> Result<()> {
    std::fs::write(path, markdown(r)).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn row(system: &'static str, mode: &str, tx_per_s: f64) -> SystemResult {
        SystemResult {
            system,
            mode: mode.to_string(),
            store: "sled".to_string(),
            committed: 10,
            rejected: 0,
            retries: 0,
            gave_up: 0,
            duration_s: 1.0,
            tx_per_s,
            latency_us: Latency::default(),
            invariants_ok: true,
            failures: Vec::new(),
            tally_batched_ratio: None,
            tally_per_call_ratio: None,
        }
    }

    #[test]
    fn ratios_are_tally_over_row() {
        let mut rows = vec![
            row("tally", "batch 1000", 100_000.0),
            row("tally", "1 per call", 5_000.0),
            row("postgres", "locking", 4_000.0),
            row("postgres", "optimistic", 0.0),
        ];
        set_ratios(&mut rows);
        assert_eq!(rows[2].tally_batched_ratio, Some(25.0));
        assert_eq!(rows[2].tally_per_call_ratio, Some(1.25));
        assert_eq!(rows[0].tally_batched_ratio, Some(1.0));
        assert_eq!(rows[3].tally_batched_ratio, None);
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["tally_compare", "_x", "a1"] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in ["", "1a", "Tally", "a-b", "a;drop", "x\"y", &"a".repeat(64)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn refusal_when_payer_would_go_below_zero() {
        let t = PgTransfer {
            id: Decimal::ONE,
            code: 1,
            from: 1,
            to: 2,
            amount: Decimal::new(5_00, 2),
        };
        let acct = |id, fen, may_go_negative| AccountRow {
            id,
            balance: Decimal::new(fen, 2),
            version: 3,
            may_go_negative,
        };
        let legs = plan_transfer(&t, &[acct(1, 5_00, false), acct(2, 0, false)]).unwrap();
        assert_eq!(legs[0].1, Decimal::ZERO);
        assert_eq!(legs[1].1, Decimal::new(5_00, 2));
        assert!(plan_transfer(&t, &[acct(1, 4_99, false), acct(2, 0, false)]).is_none());
        assert!(plan_transfer(&t, &[acct(1, 4_99, true), acct(2, 0, false)]).is_some());
        // A missing account refuses too.
        assert!(plan_transfer(&t, &[acct(1, 5_00, false)]).is_none());
    }

    #[test]
    fn table_has_one_line_per_row() {
        let mut results = vec![
            row("tally", "batch 1000", 100_000.0),
            row("tally", "1 per call", 5_000.0),
            row("postgres", "locking", 4_000.0),
        ];
        set_ratios(&mut results);
        let r = CompareReport {
            workload: WorkloadKind::Hot,
            against: "postgres",
            parameters: CompareParameters {
                accounts: 100,
                transactions: 10,
                clients: 2,
                shards: 2,
                batch_max: 1000,
                retries_max: 10,
                seed: 1,
                zipf_s: 1.0,
                hot_fraction: 0.5,
                pg_target: "127.0.0.1:5432/tally".into(),
                pg_schema: "tally_compare".into(),
            },
            postgres_version: "15".into(),
            results,
            invariants_ok: true,
            machine: Machine::this(),
            git_commit: None,
        };
        let text = table(&r);
        assert_eq!(text.lines().count(), 1 + 1 + 3 + 1);
        assert!(text.contains("postgres locking"));
        assert!(text.contains(" 25×"), "{text}");
        assert!(text.contains(" 1.2×"), "{text}");
        assert!(text.contains(" 0.050×"), "{text}");
        let md = markdown(&r);
        assert_eq!(md.lines().filter(|l| l.starts_with('|')).count(), 2 + 3);
    }

    /// The PostgreSQL side's transfers and checks against a real server
    /// (only with TALLY_PG_URL): they commit, refuse and deduplicate as
    /// they should, and the checks catch tampered balances and details.
    /// Without a server: a failure if TALLY_REQUIRE_PG is set, else a skip
    /// written straight to stderr (past the harness's capture).
    #[test]
    fn postgres_transfers_and_checks_against_a_server() {
        let connected = match std::env::var("TALLY_PG_URL") {
            Ok(url) if !url.is_empty() => postgres::Config::from_str(&url)
                .and_then(|mut c| c.connect_timeout(Duration::from_secs(5)).connect(NoTls))
                .map_err(|e| format!("no PostgreSQL reachable at TALLY_PG_URL: {e}")),
            _ => Err("TALLY_PG_URL not set".to_string()),
        };
        let mut client = match connected {
            Ok(client) => client,
            Err(why) => {
                let required =
                    std::env::var("TALLY_REQUIRE_PG").is_ok_and(|v| !v.is_empty() && v != "0");
                assert!(!required, "TALLY_REQUIRE_PG is set, but {why}");
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "SKIPPED postgres_transfers_and_checks_against_a_server: {why}"
                );
                return;
            }
        };
        let s = "tally_test_checks";
        pg_setup(&mut client, s, 3).unwrap();
        let st = Statements::prepare(&mut client, s).unwrap();
        let transfer = |id: i64, from, to, fen| PgTransfer {
            id: Decimal::from(id),
            code: 1,
            from,
            to,
            amount: Decimal::new(fen, 2),
        };
        let pairs = [(1, 2), (2, 3), (3, 1), (1, 3)];
        for (i, (from, to)) in pairs.into_iter().enumerate() {
            let variant = if i % 2 == 0 {
                PgVariant::Locking
            } else {
                PgVariant::Optimistic
            };
            let t = transfer(i as i64 + 1, from, to, 1_23);
            assert!(matches!(
                attempt(&mut client, &st, &t, variant).unwrap(),
                Attempt::Committed
            ));
            // The same id again changes nothing.
            assert!(matches!(
                attempt(&mut client, &st, &t, variant).unwrap(),
                Attempt::Duplicate
            ));
        }
        // More than a customer holds is refused, in both variants.
        for variant in [PgVariant::Locking, PgVariant::Optimistic] {
            let t = transfer(99, 2, 1, FUNDING_FEN + 1);
            assert!(matches!(
                attempt(&mut client, &st, &t, variant).unwrap(),
                Attempt::Rejected
            ));
        }
        assert_eq!(pg_check(&mut client, s, 4).unwrap(), Vec::<String>::new());
        let failures = pg_check(&mut client, s, 5).unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("clients saw 5"), "{failures:?}");

        let tamper = |client: &mut Client, sql: &str| {
            client.batch_execute(&sql.replace("{s}", s)).unwrap();
        };
        tamper(
            &mut client,
            "UPDATE {s}.accounts SET balance = balance + 1 WHERE id = 2",
        );
        let failures = pg_check(&mut client, s, 4).unwrap();
        assert!(
            failures.iter().any(|f| f == "money not conserved"),
            "{failures:?}"
        );
        assert!(
            failures
                .iter()
                .any(|f| f.contains("broken chains (e.g. [2])")),
            "{failures:?}"
        );
        tamper(
            &mut client,
            "UPDATE {s}.accounts SET balance = balance - 1 WHERE id = 2",
        );
        assert!(pg_check(&mut client, s, 4).unwrap().is_empty());

        tamper(
            &mut client,
            "UPDATE {s}.details SET pre_balance = pre_balance + 1 WHERE account_id = 3 AND version = 2",
        );
        let failures = pg_check(&mut client, s, 4).unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("broken chains (e.g. [3])"),
            "{failures:?}"
        );

        tamper(&mut client, "UPDATE {s}.accounts SET balance = -1, opening_balance = -1 - (balance - opening_balance) WHERE id = 1");
        let failures = pg_check(&mut client, s, 4).unwrap();
        assert!(
            failures.iter().any(|f| f.contains("below zero")),
            "{failures:?}"
        );
        tamper(&mut client, "DROP SCHEMA {s} CASCADE");
    }
}
