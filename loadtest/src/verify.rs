//! `verify`: open an existing sled store read-only (nothing on disk
//! changes: sled's own files are read from a temporary copy, the log and
//! blobs in place), replay its log, run the engine's audit and print it
//! with the head of the log's hash chain. Exit code 1 when an invariant
//! does not hold.
//!
//! Also home of [`open_existing`], the "open whatever shard count the store
//! was created with" helper that `replay` shares.

use crate::report::{digest_hex, print_stdout};
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use tally_engine::{default_shards, Audit, Config, Engine, Recovery, TierStats};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The sled store directory of an earlier run (kept with --keep or
    /// given with --data-dir).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Shard count to open with [default: the count the store records].
    #[arg(long, value_parser = crate::shards_arg())]
    pub shards: Option<u16>,
}

pub fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let dir = &args.data_dir;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if is_empty_dir(dir)? {
        bail!("{} is empty: there is no store to verify", dir.display());
    }
    let started = Instant::now();
    let (engine, shards) = open_existing(|| Config::sled(dir).read_only(), args.shards)?;
    let open_s = started.elapsed().as_secs_f64();
    let audit = engine.audit_blocking().map_err(|e| anyhow!("audit: {e}"))?;
    let tiers = engine
        .tier_stats_blocking()
        .map_err(|e| anyhow!("tier figures: {e}"))?;
    let recovery = engine.recovery().clone();
    engine
        .shutdown_blocking()
        .map_err(|e| anyhow!("shutdown: {e}"))?;
    drop(engine);
    let mut summary = audit_summary(dir, shards, open_s, &audit);
    summary.push_str(&tier_summary(&tiers));
    summary.push_str(&recovery_summary(&recovery));
    print_stdout(&summary)?;
    Ok(if audit.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Opens an engine on an existing store: with `shards` unset, with the
/// count the store records (the default count for a new store).
pub fn open_existing(config: impl Fn() -> Config, shards: Option<u16>) -> Result<(Engine, u16)> {
    let config = match shards {
        Some(n) => config().with_shards(n),
        None => config().with_shards(default_shards()).with_stored_shards(),
    };
    let engine = Engine::open(config).map_err(|e| anyhow!("cannot open the engine: {e}"))?;
    let shards = engine.shards();
    Ok((engine, shards))
}

pub fn is_empty_dir(dir: &Path) -> Result<bool> {
    let mut entries =
        std::fs::read_dir(dir).map_err(|e| anyhow!("cannot read {}: {e}", dir.display()))?;
    Ok(entries.next().is_none())
}

/// Accounts and bytes per tier.
fn tier_summary(t: &TierStats) -> String {
    let rows = [
        ("accounts online", t.accounts_online.to_string()),
        ("accounts offline", t.accounts_offline.to_string()),
        ("bytes hot", t.bytes_hot.to_string()),
        ("bytes cold", t.bytes_cold.to_string()),
    ];
    rows.iter().map(|(k, v)| format!("{k:16}  {v}\n")).collect()
}

fn recovery_summary(r: &Recovery) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("log head", r.log_head.clone()),
        ("next batch", r.next_batch.to_string()),
        (
            "checkpoint",
            r.checkpoint_next_batch
                .map_or("none".into(), |b| format!("covers batches below {b}")),
        ),
        ("replayed", format!("{} batches", r.replayed_batches)),
    ];
    rows.push((
        "torn tail",
        match &r.torn_tail {
            None => "none".into(),
            Some(t) => format!(
                "{} bytes at {}:{} (batch {}, never acknowledged; left in place)",
                t.bytes, t.segment, t.offset, t.batch
            ),
        },
    ));
    rows.iter().map(|(k, v)| format!("{k:13}  {v}\n")).collect()
}

fn audit_summary(dir: &Path, shards: u16, open_s: f64, a: &Audit) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("store", dir.display().to_string()),
        ("shards", shards.to_string()),
        ("open (s)", format!("{open_s:.3}")),
        ("accounts", a.accounts.to_string()),
        ("details", a.details.to_string()),
        ("committed", a.committed.to_string()),
        ("rejected", a.rejected.to_string()),
        ("pending open", a.pending_open.to_string()),
        ("batches", a.batches.to_string()),
    ];
    for c in &a.currencies {
        rows.push((
            "net",
            format!("{} {} (pending {})", c.currency, c.net, c.pending_net),
        ));
    }
    rows.push(("below floor", a.below_floor.len().to_string()));
    rows.push(("broken chains", a.broken_chains.len().to_string()));
    rows.push((
        "invariants",
        if a.ok() { "OK" } else { "FAILED" }.to_string(),
    ));
    rows.push(("state digest", digest_hex(a.state_digest)));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect()
}
