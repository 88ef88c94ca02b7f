//! `crash`: the crash loop. A child process (this binary again, with the
//! hidden `crash-child` subcommand) runs a load on one sled store —
//! transfers, pending transfers with their posts and voids (some expiring),
//! linked chains, and refusals of each kind, and beside them the business
//! workloads through a `tally_business::Ledger` on the same store (red
//! packets sent and claimed, coupons redeemed; see `crash/business.rs`) —
//! and prints every call before it submits it and every answer it was
//! given. The parent kills it with SIGKILL at a seeded moment (after a
//! seeded number of engine and business answers, plus a seeded delay in
//! half the cycles, or at a seeded instant after it started), reads what
//! is still in the pipe, reopens the store (with the ledger on it) and
//! checks:
//!
//! - every answer the child printed is in the store as answered: same
//!   timestamp, same result, and whole (one detail per leg; none for a
//!   refusal); one that is missing is **lost**;
//! - every answered call sent again with the same content is answered with
//!   `duplicate: true` and the first timestamp and result;
//! - every linked chain, answered or in flight at the kill, is all there or
//!   not at all;
//! - the engine's audit holds (money conserved per currency, no account
//!   below its floor, every detail chain linked);
//! - every acknowledged send, claim and redemption is stored with its
//!   original timestamp and result, none was accepted twice, asked again
//!   each is refused as done already (a send: answered with its red
//!   packet), and the red-packet audit holds.
//!
//! Then the next cycle runs on the same store. Each cycle checks its own
//! answers and a seeded sample of the earlier cycles'; the end checks every
//! answer of the run once more. Any mismatch other than a loss is a
//! **violation**. Exit code 1 when anything was lost or violated.

mod business;

use crate::report::print_stdout;
use crate::verify::is_empty_dir;
use anyhow::{anyhow, bail, Context, Result};
use business::BizAck;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tally_business::Ledger;
use tally_engine::{
    AccountId, Config, Currency, Engine, Leg, NewAccount, Outcome, Reject, Transaction, TxnCode,
    TxnId, TxnKind, TxnView, DETAILS_DIR,
};

/// The bank: internal, may go negative; funds every customer once.
const BANK: AccountId = AccountId(1);
/// Customer accounts `FIRST_CUSTOMER..FIRST_CUSTOMER + CUSTOMERS`.
const FIRST_CUSTOMER: u64 = 100;
const CUSTOMERS: u64 = 32;
/// An account no cycle ever opens: legs on it are refused.
const NO_SUCH_ACCOUNT: AccountId = AccountId(99);
/// Each customer's funding, in fen (1,000.00 CNY), so that transfers of up
/// to 50.00 run some accounts short now and then.
const FUNDING_FEN: i64 = 1_000 * 100;
/// Each cycle's top-up of every customer, in fen (100.00 CNY).
const TOP_UP_FEN: i64 = 100 * 100;
/// More than all the money there is: always refused (and with it its chain).
const TOO_MUCH_FEN: i64 = 1_000_000_000 * 100;
const CURRENCY: Currency = Currency::CNY;
/// Client threads in the child: their calls share batches.
const CLIENTS: u64 = 3;
/// Earlier calls checked again after each cycle, at most.
const SAMPLE_CALLS: usize = 64;
/// The kill waits for a seeded number of business answers up to this.
const BIZ_ANSWERS_MAX: u64 = 24;
/// Violation messages printed (all are counted).
const MESSAGES_MAX: usize = 20;

#[derive(clap::Args, Debug)]
pub struct CrashArgs {
    /// Kill-and-reopen cycles. (An inclusive range, so that a bad value's
    /// error names the real range, `1..=u64::MAX`.)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=u64::MAX))]
    pub cycles: u64,
    /// The sled store directory: missing or empty (the loop creates the
    /// store and keeps it).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Seed of the kill moments, the checkpoint intervals and the load.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Shards of the store.
    #[arg(long, default_value_t = 2, value_parser = crate::shards_arg())]
    pub shards: u16,
    /// The kill comes after a seeded number of answers up to this.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..))]
    pub answers_max: u64,
    /// Write the counts as JSON to this file.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
}

/// The hidden child: load until killed.
#[derive(clap::Args, Debug)]
pub struct ChildArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub cycle: u64,
    #[arg(long)]
    pub seed: u64,
    #[arg(long, value_parser = crate::shards_arg())]
    pub shards: u16,
    /// Checkpoint every this many batches (small, so kills land in them).
    #[arg(long)]
    pub checkpoint_every: u64,
}

/// What the loop found: `--report-json` writes this.
#[derive(Debug, Default, Serialize)]
pub struct CrashReport {
    pub cycles: u64,
    /// Answers the child was given and printed (committed and refused),
    /// the business answers included.
    pub acknowledged: u64,
    /// Answered transactions missing after a reopen.
    pub lost: u64,
    /// Anything else that did not hold.
    pub violations: u64,
    pub committed: u64,
    pub refused: u64,
    pub posts: u64,
    pub voids: u64,
    pub expired: u64,
    pub chains_committed: u64,
    pub chains_refused: u64,
    /// Business answers (counted in `acknowledged`, `committed` and
    /// `refused` too): red packets sent, claims and redemptions accepted
    /// and refused.
    pub red_packets_sent: u64,
    pub claims: u64,
    pub claims_refused: u64,
    pub redemptions: u64,
    pub redemptions_refused: u64,
    /// The same payment asked again and answered its first acceptance.
    pub redemptions_repeated: u64,
    /// Cycles whose kill left a half-written checkpoint file behind.
    pub killed_writing_checkpoint: u64,
    /// Cycles whose reopen cut off a torn log record.
    pub torn_tails: u64,
    /// Cycles whose kill left an unfinished sled snapshot
    /// (`snap.*.generating`), which the reopen had to get past.
    pub unfinished_sled_snapshots: u64,
    /// Answers read from the pipe after the kill.
    pub read_after_kill: u64,
    /// Files and bytes in the store's `details/` directory (checkpoint
    /// blobs) at the end.
    pub details_files: u64,
    pub details_bytes: u64,
    pub seed: u64,
    pub shards: u16,
    pub duration_s: f64,
    /// The first violations, in words.
    pub messages: Vec<String>,
}

impl CrashReport {
    fn violation(&mut self, message: String) {
        self.violations += 1;
        if self.messages.len() < MESSAGES_MAX {
            self.messages.push(message);
        }
    }

    fn lose(&mut self, message: String) {
        self.lost += 1;
        if self.messages.len() < MESSAGES_MAX {
            self.messages.push(message);
        }
    }
}

/// A call of the child, with the answers the parent read for it (fewer
/// than its transactions when the kill came first).
struct SeenCall {
    cycle: u64,
    txns: Vec<Transaction>,
    outcomes: Vec<Outcome>,
}

pub fn crash(args: CrashArgs) -> Result<ExitCode> {
    let dir = &args.data_dir;
    if dir.exists() && !(dir.is_dir() && is_empty_dir(dir)?) {
        bail!(
            "--data-dir {} is not an empty directory; the crash loop needs a fresh store",
            dir.display()
        );
    }
    if let Some(path) = &args.report_json {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent.filter(|p| !p.is_dir()) {
            bail!(
                "cannot write {}: {} is not a directory",
                path.display(),
                parent.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let exe = std::env::current_exe().context("cannot find this program to run the child")?;
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut report = CrashReport {
        seed: args.seed,
        shards: args.shards,
        ..CrashReport::default()
    };
    let mut calls: Vec<SeenCall> = Vec::new();
    let progress = std::io::stderr().is_terminal();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    // The child's stderr, outside the store (which holds the store only).
    let scratch = tempfile::Builder::new()
        .prefix("tally-crash-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let stderr_path = scratch.path().join("child.stderr");
    let mut biz: Vec<(u64, BizAck)> = Vec::new();
    for cycle in 0..args.cycles {
        let read = match run_child(&exe, &args, cycle, &mut rng, &stderr_path, &mut report)? {
            Some(read) => read,
            None => break,
        };
        report.cycles += 1;
        if std::fs::read_dir(dir.join(DETAILS_DIR))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
            .unwrap_or(false)
        {
            report.killed_writing_checkpoint += 1;
        }
        if std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".generating"))
            })
            .unwrap_or(false)
        {
            report.unfinished_sled_snapshots += 1;
        }
        let ledger = match reopen(&rt, dir, args.shards) {
            Ok(ledger) => ledger,
            Err(e) => {
                report.violation(format!("cycle {cycle}: the store does not reopen: {e}"));
                break;
            }
        };
        let engine = ledger.engine();
        if engine.recovery().torn_tail.is_some() {
            report.torn_tails += 1;
        }
        let first_new = calls.len();
        calls.extend(read.calls);
        let pendings = pending_legs(&calls);
        // This cycle's calls, and a sample of the earlier ones.
        let mut check = (first_new..calls.len()).collect();
        sample(&mut rng, &mut check, first_new);
        check_store(&rt, engine, &calls, &check, &pendings, &mut report)?;
        let first_new = biz.len();
        biz.extend(read.biz.into_iter().map(|a| (cycle, a)));
        let mut check = (first_new..biz.len()).collect();
        sample(&mut rng, &mut check, first_new);
        rt.block_on(business::check(&ledger, &biz, &check, &mut report))?;
        engine
            .shutdown_blocking()
            .map_err(|e| anyhow!("cycle {cycle}: shutdown: {e}"))?;
        drop(ledger);
        if progress && (cycle + 1) % 10 == 0 {
            eprint!(
                "\rcycle {}/{}: acknowledged {}, lost {}, violations {}",
                cycle + 1,
                args.cycles,
                report.acknowledged,
                report.lost,
                report.violations
            );
        }
    }
    if progress {
        eprintln!();
    }
    // Everything once more, on the store as the loop left it.
    if report.cycles > 0 {
        match reopen(&rt, dir, args.shards) {
            Ok(ledger) => {
                let pendings = pending_legs(&calls);
                let all: Vec<usize> = (0..calls.len()).collect();
                check_store(&rt, ledger.engine(), &calls, &all, &pendings, &mut report)?;
                let all: Vec<usize> = (0..biz.len()).collect();
                rt.block_on(business::check(&ledger, &biz, &all, &mut report))?;
                ledger
                    .engine()
                    .shutdown_blocking()
                    .map_err(|e| anyhow!("final shutdown: {e}"))?;
            }
            Err(e) => report.violation(format!("the store does not reopen at the end: {e}")),
        }
    }
    count_kinds(&calls, &mut report);
    business::check_once_and_count(&biz, &mut report);
    if let Ok(entries) = std::fs::read_dir(dir.join(DETAILS_DIR)) {
        for entry in entries.flatten() {
            report.details_files += 1;
            report.details_bytes += entry.metadata().map_or(0, |m| m.len());
        }
    }
    report.duration_s = started.elapsed().as_secs_f64();
    print_stdout(&summary(&report, dir))?;
    if let Some(path) = &args.report_json {
        let json = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if report.lost == 0 && report.violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The store reopened with the ledger on it (the business checks need
/// it; the engine checks use its engine).
fn reopen(rt: &tokio::runtime::Runtime, dir: &Path, shards: u16) -> Result<Ledger> {
    rt.block_on(Ledger::open_default(Config::sled(dir).with_shards(shards)))
        .map_err(|e| anyhow!("{e}"))
}

/// Adds to `check` a seeded sample of the indexes below `earlier`.
fn sample(rng: &mut ChaCha8Rng, check: &mut Vec<usize>, earlier: usize) {
    for _ in 0..SAMPLE_CALLS.min(earlier) {
        check.push(rng.gen_range(0..earlier));
    }
}

/// An answer the reader saw, for the kill's count.
enum Answer {
    Engine,
    Business,
}

/// What the reader thread saw: the calls, the business answers, and
/// whether the output ended with a line cut short by the kill.
struct ReadOut {
    calls: Vec<SeenCall>,
    biz: Vec<BizAck>,
    garbled: Option<String>,
}

/// Runs one child to its kill. `None` when the child ended by itself (a
/// violation: it is only ever stopped by the kill).
fn run_child(
    exe: &Path,
    args: &CrashArgs,
    cycle: u64,
    rng: &mut ChaCha8Rng,
    stderr_path: &Path,
    report: &mut CrashReport,
) -> Result<Option<ReadOut>> {
    let checkpoint_every = rng.gen_range(1..=4u64);
    // When to kill: after a number of answers (and then, half the time,
    // a little later), or at an instant after the start (during the open
    // and replay, or early in the load).
    let by_answers = rng.gen_ratio(9, 10);
    let kill_after = rng.gen_range(1..=args.answers_max);
    // And after a seeded number of business answers (slower to come: one
    // engine call each), so that every such cycle checks some.
    let biz_after = rng.gen_range(0..=BIZ_ANSWERS_MAX);
    let extra = rng
        .gen_bool(0.5)
        .then(|| Duration::from_micros(rng.gen_range(0..3_000)));
    let at_instant = Duration::from_micros(rng.gen_range(0..60_000));
    let child_seed = rng.gen::<u64>();
    let stderr = std::fs::File::create(stderr_path)
        .with_context(|| format!("cannot create {}", stderr_path.display()))?;
    let mut child = Command::new(exe)
        .arg("crash-child")
        .arg("--data-dir")
        .arg(&args.data_dir)
        .args(["--cycle", &cycle.to_string()])
        .args(["--seed", &child_seed.to_string()])
        .args(["--shards", &args.shards.to_string()])
        .args(["--checkpoint-every", &checkpoint_every.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("cannot start the child")?;
    let spawned = Instant::now();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("the child has no stdout"))?;
    let (tx, rx) = mpsc::channel::<Answer>();
    let reader = std::thread::spawn(move || read_child(stdout, cycle, &tx));
    let mut answers = 0u64;
    let mut biz_answers = 0u64;
    let mut ended = false;
    loop {
        let next = if by_answers {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            let left = at_instant.saturating_sub(spawned.elapsed());
            rx.recv_timeout(left)
        };
        match next {
            Ok(kind) => {
                match kind {
                    Answer::Engine => answers += 1,
                    Answer::Business => biz_answers += 1,
                }
                if by_answers && answers >= kill_after && biz_answers >= biz_after {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                ended = true;
                break;
            }
        }
    }
    if by_answers && !ended {
        if let Some(extra) = extra {
            std::thread::sleep(extra);
        }
    }
    let kill = child.kill();
    let status = child.wait().context("cannot wait for the child")?;
    let read = reader
        .join()
        .map_err(|_| anyhow!("the reader thread panicked"))?;
    let killed = kill.is_ok() && was_killed(&status);
    if !killed {
        let text = std::fs::read_to_string(stderr_path).unwrap_or_default();
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        report.violation(format!(
            "cycle {cycle}: the child ended by itself ({status}): {last}"
        ));
        return Ok(None);
    }
    let read_total: u64 = read
        .calls
        .iter()
        .map(|c| c.outcomes.len() as u64)
        .sum::<u64>()
        + read.biz.len() as u64;
    report.read_after_kill += read_total.saturating_sub(answers + biz_answers);
    report.acknowledged += read_total;
    if let Some(line) = &read.garbled {
        report.violation(format!(
            "cycle {cycle}: the child's output is garbled: {line}"
        ));
    }
    Ok(Some(read))
}

#[cfg(unix)]
fn was_killed(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(9)
}

#[cfg(not(unix))]
fn was_killed(status: &std::process::ExitStatus) -> bool {
    !status.success()
}

/// Reads the child's output to its end, telling `progress` of each answer.
/// Only the last line may be cut short (by the kill); any other line that
/// does not parse, or an answer out of place, is garbled output.
fn read_child(
    stdout: std::process::ChildStdout,
    cycle: u64,
    progress: &mpsc::Sender<Answer>,
) -> ReadOut {
    let mut out = ReadOut {
        calls: Vec::new(),
        biz: Vec::new(),
        garbled: None,
    };
    // (client, call number) → index in `out.calls`.
    let mut open: HashMap<(u64, u64), usize> = HashMap::new();
    let mut torn: Option<String> = None;
    for line in BufReader::new(stdout).split(b'\n') {
        let Ok(line) = line else { break };
        if let Some(t) = torn.take() {
            out.garbled.get_or_insert(t);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        match parse_line(&line) {
            Some(Line::Call(client, n, txns)) => {
                open.insert((client, n), out.calls.len());
                out.calls.push(SeenCall {
                    cycle,
                    txns,
                    outcomes: Vec::new(),
                });
            }
            Some(Line::Out(client, n, outcome)) => {
                let call = open.get(&(client, n)).and_then(|&i| out.calls.get_mut(i));
                match call {
                    Some(call)
                        if call.txns.get(call.outcomes.len()).map(|t| t.id) == Some(outcome.id) =>
                    {
                        call.outcomes.push(outcome);
                        // The parent may have stopped listening: fine.
                        let _ = progress.send(Answer::Engine);
                    }
                    _ => {
                        out.garbled
                            .get_or_insert(format!("answer out of place: {line}"));
                    }
                }
            }
            Some(Line::Biz(ack)) => {
                out.biz.push(ack);
                let _ = progress.send(Answer::Business);
            }
            None => torn = Some(line.chars().take(120).collect()),
        }
    }
    out
}

enum Line {
    Call(u64, u64, Vec<Transaction>),
    Out(u64, u64, Outcome),
    Biz(BizAck),
}

/// `CALL <client> <n> <transactions>`, `OUT <client> <n> <outcome>` or
/// `BIZ <business answer>`.
fn parse_line(line: &str) -> Option<Line> {
    if let Some(json) = line.strip_prefix("BIZ ") {
        return business::parse(json).map(Line::Biz);
    }
    let mut parts = line.splitn(4, ' ');
    let (tag, client, n, json) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let (client, n) = (client.parse().ok()?, n.parse().ok()?);
    match tag {
        "CALL" => serde_json::from_str(json)
            .ok()
            .map(|t| Line::Call(client, n, t)),
        "OUT" => serde_json::from_str(json)
            .ok()
            .map(|o| Line::Out(client, n, o)),
        _ => None,
    }
}

/// Legs of every pending transfer the child was told committed.
fn pending_legs(calls: &[SeenCall]) -> HashMap<TxnId, usize> {
    calls
        .iter()
        .flat_map(|c| c.txns.iter().zip(&c.outcomes))
        .filter(|(t, o)| matches!(t.kind, TxnKind::Pending { .. }) && o.is_committed())
        .map(|(t, _)| (t.id, t.legs.len()))
        .collect()
}

/// The chains of a call: index ranges of its linked runs.
fn chains(txns: &[Transaction]) -> Vec<std::ops::Range<usize>> {
    let mut chains = Vec::new();
    let mut start = 0;
    for (i, t) in txns.iter().enumerate() {
        if !t.linked || i + 1 == txns.len() {
            if i > start {
                chains.push(start..i + 1);
            }
            start = i + 1;
        }
    }
    chains
}

/// Checks the calls `which` against the reopened store: every answer
/// stored as given and whole, chains whole, the audit, then every answered
/// call sent again and answered as a duplicate.
fn check_store(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    calls: &[SeenCall],
    which: &[usize],
    pendings: &HashMap<TxnId, usize>,
    report: &mut CrashReport,
) -> Result<()> {
    let audit = engine.audit_blocking().map_err(|e| anyhow!("audit: {e}"))?;
    if !audit.ok() {
        report.violation(format!("the audit fails: {audit:?}"));
    }
    for &i in which {
        let Some(call) = calls.get(i) else { continue };
        let c = call.cycle;
        let mut views: Vec<Option<TxnView>> = Vec::with_capacity(call.txns.len());
        for t in &call.txns {
            views.push(
                rt.block_on(engine.transaction(t.id))
                    .map_err(|e| anyhow!("read {:?}: {e}", t.id))?,
            );
        }
        let mut lost_here = false;
        for ((t, o), view) in call.txns.iter().zip(&call.outcomes).zip(&views) {
            let id = t.id.0;
            if o.timestamp.is_none() {
                // Refused before sequencing: never logged, never stored.
                if o.result.is_ok() || view.is_some() {
                    report.violation(format!(
                        "cycle {c}: {id}: unsequenced {o:?}, stored {view:?}"
                    ));
                }
                continue;
            }
            let Some(view) = view else {
                report.lose(format!(
                    "cycle {c}: {id} answered {:?} at {:?}, lost",
                    o.result, o.timestamp
                ));
                lost_here = true;
                continue;
            };
            if (Some(view.timestamp), &view.result) != (o.timestamp, &o.result) {
                report.violation(format!(
                    "cycle {c}: {id} answered {:?} at {:?}, stored {:?} at {:?}",
                    o.result, o.timestamp, view.result, view.timestamp
                ));
            }
            let legs = match &t.kind {
                _ if o.result.is_err() => Some(0),
                TxnKind::Posted | TxnKind::Pending { .. } => Some(t.legs.len()),
                TxnKind::PostPending { pending_id } | TxnKind::VoidPending { pending_id } => {
                    pendings.get(pending_id).copied()
                }
            };
            let whole = match legs {
                Some(n) => view.details.len() == n,
                None => !view.details.is_empty(),
            };
            if !whole {
                report.violation(format!(
                    "cycle {c}: {id} ({:?}) has {} details, expected {legs:?}",
                    t.kind,
                    view.details.len()
                ));
            }
        }
        for chain in chains(&call.txns) {
            let members = views.get(chain.clone()).unwrap_or_default();
            let present = members.iter().filter(|v| v.is_some()).count();
            let applied = members
                .iter()
                .filter(|v| v.as_ref().is_some_and(|v| v.result.is_ok()))
                .count();
            if !(present == 0 || present == members.len())
                || !(applied == 0 || applied == members.len())
            {
                report.violation(format!(
                    "cycle {c}: chain {:?}: {present} of {} stored, {applied} applied",
                    call.txns.get(chain.start).map(|t| t.id),
                    members.len()
                ));
            }
        }
        // A call with an answer printed was answered whole (the child
        // prints after the engine answered): send all of it again. Not
        // after a loss, which would apply it now.
        if call.outcomes.is_empty() || lost_here {
            continue;
        }
        let again = engine
            .submit_blocking(call.txns.clone())
            .map_err(|e| anyhow!("resubmit: {e}"))?;
        for (k, again) in again.iter().enumerate() {
            let unsequenced = again.timestamp.is_none() && again.result.is_err();
            let ok = match call.outcomes.get(k) {
                // Answered to the child, not printed before the kill.
                None => again.duplicate || unsequenced,
                Some(first) if first.timestamp.is_none() => {
                    !again.duplicate && again.result == first.result
                }
                Some(first) => {
                    again.duplicate
                        && (again.timestamp, &again.result) == (first.timestamp, &first.result)
                }
            };
            if !ok {
                report.violation(format!(
                    "cycle {c}: sent again, {again:?}; first answer {:?}",
                    call.outcomes.get(k)
                ));
            }
        }
    }
    Ok(())
}

fn count_kinds(calls: &[SeenCall], report: &mut CrashReport) {
    for call in calls {
        for (t, o) in call.txns.iter().zip(&call.outcomes) {
            match (&t.kind, &o.result) {
                (TxnKind::PostPending { .. }, Ok(())) => report.posts += 1,
                (TxnKind::VoidPending { .. }, Ok(())) => report.voids += 1,
                (_, Err(Reject::PendingExpired)) => report.expired += 1,
                _ => {}
            }
            if o.is_committed() {
                report.committed += 1;
            } else {
                report.refused += 1;
            }
        }
        for chain in chains(&call.txns) {
            let Some(answers) = call.outcomes.get(chain) else {
                continue;
            };
            if answers.iter().all(Outcome::is_committed) {
                report.chains_committed += 1;
            } else {
                report.chains_refused += 1;
            }
        }
    }
}

fn summary(r: &CrashReport, dir: &Path) -> String {
    let rows: Vec<(&str, String)> = vec![
        ("store", dir.display().to_string()),
        ("seed", r.seed.to_string()),
        ("cycles", r.cycles.to_string()),
        ("acknowledged", r.acknowledged.to_string()),
        ("lost", r.lost.to_string()),
        ("violations", r.violations.to_string()),
        ("committed", r.committed.to_string()),
        ("refused", r.refused.to_string()),
        ("posts / voids", format!("{} / {}", r.posts, r.voids)),
        ("expired", r.expired.to_string()),
        (
            "chains",
            format!(
                "{} committed, {} refused",
                r.chains_committed, r.chains_refused
            ),
        ),
        (
            "red packets",
            format!(
                "{} sent, {} claims ({} refused)",
                r.red_packets_sent, r.claims, r.claims_refused
            ),
        ),
        (
            "coupons",
            format!(
                "{} redeemed ({} asked again, {} refused)",
                r.redemptions, r.redemptions_repeated, r.redemptions_refused
            ),
        ),
        ("read after kill", r.read_after_kill.to_string()),
        ("torn tails", r.torn_tails.to_string()),
        ("unfinished snap", r.unfinished_sled_snapshots.to_string()),
        ("mid checkpoint", r.killed_writing_checkpoint.to_string()),
        (
            "details/",
            format!("{} files, {} bytes", r.details_files, r.details_bytes),
        ),
        ("duration (s)", format!("{:.1}", r.duration_s)),
    ];
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut text: String = rows
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect();
    for m in &r.messages {
        text.push_str(&format!("violation: {m}\n"));
    }
    text
}

// ------------------------------------------------------------- the child

pub fn child(args: ChildArgs) -> Result<ExitCode> {
    let config = Config::sled(&args.data_dir)
        .with_shards(args.shards)
        .with_checkpoint_every(args.checkpoint_every)
        .with_hot_detail_chunks(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("child runtime")?;
    // The ledger opens the engine (and its own accounts); the engine
    // clients use that engine beside the business client.
    let ledger = rt
        .block_on(Ledger::open_default(config))
        .map_err(|e| anyhow!("child open: {e}"))?;
    let engine = ledger.engine().clone();
    let customers: Vec<AccountId> = (FIRST_CUSTOMER..FIRST_CUSTOMER + CUSTOMERS)
        .map(AccountId)
        .collect();
    // The same accounts and funding ids in every cycle: opened and funded
    // once, duplicates after.
    let mut accounts = vec![NewAccount::internal(BANK, CURRENCY)];
    accounts.extend(customers.iter().map(|&c| NewAccount::customer(c, CURRENCY)));
    let opened = engine
        .open_accounts_blocking(accounts)
        .map_err(|e| anyhow!("open accounts: {e}"))?;
    if let Some(Err(e)) = opened.into_iter().find(Result::is_err) {
        bail!("open accounts: {e}");
    }
    let fund: Vec<Transaction> = customers
        .iter()
        .map(|&c| transfer(TxnId(u128::from(c.0)), BANK, c, FUNDING_FEN))
        .collect();
    let funded = engine
        .submit_blocking(fund)
        .map_err(|e| anyhow!("fund: {e}"))?;
    if let Some(o) = funded.iter().find(|o| !o.is_committed()) {
        bail!("fund: {o:?}");
    }
    // The business members and money first, so that the kill (counted in
    // answers, which the engine clients give fastest) finds the business
    // client answering too.
    let members = rt.block_on(business::child_setup(&ledger, args.cycle))?;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let engine = engine.clone();
            let customers = customers.clone();
            let seed = args.seed ^ client.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let cycle = args.cycle;
            std::thread::spawn(move || client_loop(&engine, &customers, cycle, client, seed))
        })
        .collect();
    let seed = args.seed ^ CLIENTS.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    rt.block_on(business::child_loop(&ledger, members, args.cycle, seed))?;
    for t in threads {
        t.join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
    }
    Ok(ExitCode::SUCCESS)
}

fn transfer(id: TxnId, from: AccountId, to: AccountId, fen: i64) -> Transaction {
    Transaction::transfer(id, TxnCode(2001), from, to, Decimal::new(fen, 2), CURRENCY)
}

/// One client of the child: calls until killed (or 2^24 calls).
fn client_loop(
    engine: &Engine,
    customers: &[AccountId],
    cycle: u64,
    client: u64,
    seed: u64,
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut open_pendings: Vec<Transaction> = Vec::new();
    let mut settled: Vec<TxnId> = Vec::new();
    let base = u128::from(cycle + 1) << 64 | u128::from(client) << 56;
    for n in 0..1u64 << 24 {
        let mut next = 0u128;
        let mut id = || {
            next += 1;
            TxnId(base | u128::from(n) << 16 | next)
        };
        let txns = if client == 0 && n == 0 {
            // Each cycle tops every customer up from the bank.
            customers
                .iter()
                .map(|&c| transfer(id(), BANK, c, TOP_UP_FEN))
                .collect()
        } else {
            load_call(&mut rng, customers, &mut id, &mut open_pendings, &settled)
        };
        let line = format!("CALL {client} {n} {}\n", serde_json::to_string(&txns)?);
        write_out(&line)?;
        let outcomes = engine
            .submit_blocking(txns.clone())
            .map_err(|e| anyhow!("submit: {e}"))?;
        let mut text = String::new();
        for (t, o) in txns.iter().zip(&outcomes) {
            text.push_str(&format!("OUT {client} {n} {}\n", serde_json::to_string(o)?));
            match (&t.kind, o.is_committed()) {
                (TxnKind::Pending { .. }, true) => open_pendings.push(t.clone()),
                (
                    TxnKind::PostPending { pending_id } | TxnKind::VoidPending { pending_id },
                    true,
                ) => settled.push(*pending_id),
                _ => {}
            }
        }
        write_out(&text)?;
    }
    Ok(())
}

/// One write of whole lines to stdout, flushed.
fn write_out(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("stdout")
}

/// One call: posted transfers (some too large or to an account that does
/// not exist: refused), pending transfers (a fifth of them expiring within
/// milliseconds), posts (half of them capturing part) and voids of this
/// client's open pending transfers, posts and voids of settled or unknown
/// ones (refused), and linked chains of 2–4 transfers, a quarter of them
/// holding a member that must fail, so that the whole chain is refused.
fn load_call(
    rng: &mut ChaCha8Rng,
    customers: &[AccountId],
    id: &mut impl FnMut() -> TxnId,
    open_pendings: &mut Vec<Transaction>,
    settled: &[TxnId],
) -> Vec<Transaction> {
    let target = rng.gen_range(1..24usize);
    let pick = |rng: &mut ChaCha8Rng| customers[rng.gen_range(0..customers.len())];
    let mut txns = Vec::new();
    while txns.len() < target {
        let (from, to) = (pick(rng), pick(rng));
        let fen = if rng.gen_ratio(1, 40) {
            TOO_MUCH_FEN
        } else {
            rng.gen_range(1..50_00)
        };
        match rng.gen_range(0..100) {
            0..=44 => txns.push(transfer(id(), from, to, fen)),
            45..=46 => txns.push(transfer(id(), from, NO_SUCH_ACCOUNT, fen)),
            47..=61 => {
                // Short deadlines expire within the cycle; the others
                // within seconds, so that reservations a killed child left
                // open do not hold the customers' money for long.
                let timeout_ms = if rng.gen_ratio(1, 5) {
                    rng.gen_range(1..20)
                } else {
                    rng.gen_range(1_000..5_000)
                };
                txns.push(Transaction {
                    kind: TxnKind::Pending { timeout_ms },
                    ..transfer(id(), from, to, fen)
                });
            }
            62..=76 if !open_pendings.is_empty() => {
                // Each open pending transfer is referenced once.
                let pending = open_pendings.swap_remove(rng.gen_range(0..open_pendings.len()));
                let pending_id = pending.id;
                let (kind, legs) = if rng.gen_bool(0.6) {
                    let legs = if rng.gen_bool(0.5) {
                        pending
                            .legs
                            .iter()
                            .map(|l| Leg {
                                amount: (l.amount / Decimal::TWO)
                                    .round_dp(2)
                                    .max(Decimal::new(1, 2)),
                                ..l.clone()
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    (TxnKind::PostPending { pending_id }, legs)
                } else {
                    (TxnKind::VoidPending { pending_id }, Vec::new())
                };
                txns.push(Transaction {
                    kind,
                    ..Transaction::posted(id(), TxnCode(2002), legs)
                });
            }
            77..=80 => {
                let pending_id = match settled.get(rng.gen_range(0..settled.len().max(1))) {
                    Some(&done) if rng.gen_bool(0.7) => done,
                    _ => TxnId(u128::from(rng.gen::<u64>())),
                };
                let kind = if rng.gen_bool(0.5) {
                    TxnKind::PostPending { pending_id }
                } else {
                    TxnKind::VoidPending { pending_id }
                };
                txns.push(Transaction {
                    kind,
                    ..Transaction::posted(id(), TxnCode(2002), Vec::new())
                });
            }
            _ => {
                let len = rng.gen_range(2..=4);
                let doomed = rng.gen_ratio(1, 4).then(|| rng.gen_range(0..len));
                for member in 0..len {
                    let (from, to) = (pick(rng), pick(rng));
                    let fen = if doomed == Some(member) {
                        TOO_MUCH_FEN
                    } else {
                        rng.gen_range(1..20_00)
                    };
                    let mut t = transfer(id(), from, to, fen);
                    t.linked = member + 1 < len;
                    txns.push(t);
                }
            }
        }
    }
    txns
}
