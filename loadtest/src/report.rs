//! The result of a `run`: one [`Report`] value, rendered as the stdout
//! summary table, as JSON (stable snake_case fields, for scripts and CI) and
//! as a Markdown table (for pasting into docs).
//!
//! JSON field names are a contract: add fields, never rename or remove them.

use crate::workload::WorkloadKind;
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Everything a run measured and checked.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub workload: WorkloadKind,
    pub parameters: Parameters,
    /// Measured transfers the engine acknowledged as committed.
    pub committed: u64,
    /// Measured transfers the engine refused (insufficient funds, …).
    pub rejected: u64,
    /// Wall time of the measured phase, from the start signal until the
    /// last client's last answer.
    pub duration_s: f64,
    /// `committed / duration_s`.
    pub tx_per_s: f64,
    /// Latency of a submit call, counted once per transaction in the call.
    pub latency_us: Latency,
    /// Committed transactions per second over consecutive one-second windows
    /// of the measured phase. The last window may be shorter than a second;
    /// its count is scaled to a per-second rate.
    pub throughput_per_s: Vec<u64>,
    /// The process's peak resident memory (MB) in each one-second window of
    /// the measured phase: flat after warm-up is what a soak run checks.
    pub rss_mb_per_s: Vec<f64>,
    /// Size of the store directory after shutdown (`null` for memory).
    pub bytes_on_disk: Option<u64>,
    /// `bytes_on_disk` over every committed transfer in the store (the
    /// funding transfers included).
    pub bytes_per_transfer: Option<f64>,
    /// Time to reopen the engine on the store (log replay included).
    pub reopen_s: f64,
    pub invariants_ok: bool,
    pub invariants: Invariants,
    pub machine: Machine,
    /// `git rev-parse HEAD` of the source tree this binary was built from.
    pub git_commit: Option<String>,
    /// The `redpacket` and `coupon` workloads' own counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub products: Option<ProductCounts>,
    /// The simulated days' closes (`--days`).
    #[serde(flatten)]
    pub days: DaysFigures,
    /// Accounts and bytes per tier, of the reopened store.
    #[serde(flatten)]
    pub tiers: TierFigures,
}

/// What `run --days N` closed: `days_closed`, `close_checks_ok` (true only
/// if every close passed; true when none ran) and `close_s` (wall time of
/// one day's close, p50 and max; `null` when none ran).
#[derive(Clone, Debug, Serialize)]
pub struct DaysFigures {
    pub days_closed: u32,
    pub close_checks_ok: bool,
    pub close_s: Option<CloseTimes>,
}

impl Default for DaysFigures {
    fn default() -> Self {
        DaysFigures {
            days_closed: 0,
            close_checks_ok: true,
            close_s: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CloseTimes {
    pub p50: f64,
    pub max: f64,
}

impl CloseTimes {
    /// The median and the largest of `times` (`None` when empty).
    pub fn of(times: &[f64]) -> Option<CloseTimes> {
        let mut sorted = times.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(CloseTimes {
            p50: *sorted.get(sorted.len() / 2)?,
            max: *sorted.last()?,
        })
    }
}

/// `Engine::tier_stats` of the reopened store: accounts online (in the
/// shards' tables) and offline, bytes in the online store (records and
/// `details/` blobs) and in the cold store (`cold/` segments).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TierFigures {
    pub accounts_online: u64,
    pub accounts_offline: u64,
    pub bytes_hot: u64,
    pub bytes_cold: u64,
}

impl From<tally_engine::TierStats> for TierFigures {
    fn from(t: tally_engine::TierStats) -> Self {
        TierFigures {
            accounts_online: t.accounts_online,
            accounts_offline: t.accounts_offline,
            bytes_hot: t.bytes_hot,
            bytes_cold: t.bytes_cold,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Parameters {
    pub accounts: u64,
    /// Transactions to submit (`null` when the run is bounded by time).
    pub transactions: Option<u64>,
    /// The time bound of the run (`null` when bounded by a count).
    pub duration_limit_s: Option<f64>,
    pub clients: u32,
    pub shards: u16,
    pub batch_max: usize,
    /// Offered load in transfers/s (`null`: as fast as the engine answers).
    pub rate: Option<u64>,
    /// `memory` or `sled`.
    pub store: String,
    /// Flush per group before acknowledging.
    pub sync: bool,
    /// Checkpoint interval in batches (0: none).
    pub checkpoint_every_batches: u64,
    pub seed: u64,
    pub zipf_s: f64,
    pub hot_fraction: f64,
    /// Transfers generated between calls (`--live-generation`, and every
    /// run bounded by time) rather than before the clock started; `false`
    /// for the product workloads.
    pub live_generation: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// The engine's audit after reopening, and the harness's own cross-check.
#[derive(Clone, Debug, Serialize)]
pub struct Invariants {
    pub accounts: u64,
    pub details: u64,
    /// Committed transactions the engine recovered (funding included).
    pub committed: u64,
    pub rejected: u64,
    pub batches: u64,
    /// Funding transfers committed during setup.
    pub funding_committed: u64,
    /// `funding_committed + committed` of the run: must equal `committed`.
    pub expected_committed: u64,
    /// Every currency nets to zero (balances and pending amounts).
    pub money_conserved: bool,
    /// Accounts below their floor.
    pub below_floor: Vec<u64>,
    /// Accounts whose details chain is broken.
    pub broken_chains: Vec<u64>,
    /// The engine's state digest, as 16 hex digits.
    pub state_digest: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub os: &'static str,
    pub arch: &'static str,
}

impl Machine {
    pub fn this() -> Machine {
        Machine {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
        }
    }
}

/// Writes `text` to stdout, failing (instead of panicking like `print!`)
/// when stdout is closed.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// The digest as printed everywhere (run, verify).
pub fn digest_hex(digest: u64) -> String {
    format!("{digest:016x}")
}

/// The commit of the source tree this binary was built from, if git knows.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let commit = text.trim();
    (out.status.success() && !commit.is_empty()).then(|| commit.to_string())
}

/// Committed transactions per one-second window, from cumulative samples
/// `(seconds since start, committed so far)` taken in time order, the first
/// at `(0, 0)` and the last at the end of the run. Counts between samples
/// are interpolated linearly; the last, partial window is scaled to a rate.
pub fn per_second(samples: &[(f64, u64)]) -> Vec<u64> {
    let Some(&(end, _)) = samples.last() else {
        return Vec::new();
    };
    if end <= 0.0 {
        return Vec::new();
    }
    let windows = end.ceil() as usize;
    (0..windows)
        .map(|i| {
            let from = i as f64;
            let to = (from + 1.0).min(end);
            let count = cumulative(samples, to) - cumulative(samples, from);
            let rate = count / (to - from);
            rate.round().max(0.0) as u64
        })
        .collect()
}

/// The highest value (bytes, as MB) of each one-second window of
/// `(seconds, bytes)` samples.
pub fn peak_per_second(samples: &[(f64, u64)]) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for &(t, bytes) in samples {
        let window = t.max(0.0) as usize;
        if out.len() <= window {
            out.resize(window + 1, 0.0);
        }
        let mb = bytes as f64 / 1e6;
        if mb > out[window] {
            out[window] = mb;
        }
    }
    out
}

/// The rate between consecutive samples, at the middle of each interval:
/// the fine-grained throughput curve.
pub fn fine_rates(samples: &[(f64, u64)]) -> Vec<(f64, f64)> {
    samples
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| {
            let dt = w[1].0 - w[0].0;
            let dc = w[1].1.saturating_sub(w[0].1) as f64;
            ((w[0].0 + w[1].0) / 2.0, dc / dt)
        })
        .collect()
}

fn cumulative(samples: &[(f64, u64)], t: f64) -> f64 {
    let mut previous = (0.0, 0.0);
    for &(st, sc) in samples {
        let sc = sc as f64;
        if st >= t {
            if st <= previous.0 {
                return sc;
            }
            let f = (t - previous.0) / (st - previous.0);
            return previous.1 + f * (sc - previous.1);
        }
        previous = (st, sc);
    }
    previous.1
}

/// `(label, value)` rows shared by the stdout table and the Markdown table.
fn rows(r: &Report) -> Vec<(&'static str, String)> {
    let p = &r.parameters;
    let l = &r.latency_us;
    let inv = &r.invariants;
    let none = || "n/a".to_string();
    let mut rows = vec![
        ("workload", workload_text(r)),
        ("accounts", p.accounts.to_string()),
        (
            "transactions",
            p.transactions.map_or_else(none, |t| t.to_string()),
        ),
        (
            "duration limit (s)",
            p.duration_limit_s.map_or_else(none, |d| format!("{d}")),
        ),
        ("clients", p.clients.to_string()),
        ("shards", p.shards.to_string()),
        ("batch max", p.batch_max.to_string()),
        (
            "offered rate (tx/s)",
            p.rate
                .map_or_else(|| "unpaced".to_string(), |r| r.to_string()),
        ),
        (
            "store",
            if p.store == "sled" && !p.sync {
                "sled (no sync)".to_string()
            } else {
                p.store.clone()
            },
        ),
        ("seed", p.seed.to_string()),
        ("committed", r.committed.to_string()),
        ("rejected", r.rejected.to_string()),
        ("duration (s)", format!("{:.3}", r.duration_s)),
        ("tx/s", format!("{:.0}", r.tx_per_s)),
        ("latency p50 (µs)", l.p50.to_string()),
        ("latency p90 (µs)", l.p90.to_string()),
        ("latency p99 (µs)", l.p99.to_string()),
        ("latency p99.9 (µs)", l.p999.to_string()),
        ("latency max (µs)", l.max.to_string()),
        (
            "bytes on disk",
            r.bytes_on_disk.map_or_else(none, |b| b.to_string()),
        ),
        (
            "bytes per transfer",
            r.bytes_per_transfer
                .map_or_else(none, |b| format!("{b:.1}")),
        ),
        ("reopen (s)", format!("{:.3}", r.reopen_s)),
        (
            "accounts online/offline",
            format!("{} / {}", r.tiers.accounts_online, r.tiers.accounts_offline),
        ),
        (
            "bytes hot/cold",
            format!("{} / {}", r.tiers.bytes_hot, r.tiers.bytes_cold),
        ),
        (
            "audit",
            format!(
                "{} accounts, {} details, {} committed ({} expected), {} rejected",
                inv.accounts, inv.details, inv.committed, inv.expected_committed, inv.rejected
            ),
        ),
        (
            "invariants",
            if r.invariants_ok {
                "OK".to_string()
            } else {
                format!("FAILED ({})", failures(inv).join("; "))
            },
        ),
        ("state digest", inv.state_digest.clone()),
        ("cores", r.machine.cores.to_string()),
        ("git commit", r.git_commit.clone().unwrap_or_else(none)),
    ];
    if r.days.days_closed > 0 {
        let d = &r.days;
        rows.push(("days closed", d.days_closed.to_string()));
        rows.push((
            "closes",
            if d.close_checks_ok {
                "all passed"
            } else {
                "FAILED"
            }
            .to_string(),
        ));
        if let Some(t) = d.close_s {
            rows.push(("close p50/max (s)", format!("{:.3} / {:.3}", t.p50, t.max)));
        }
    }
    if let Some(c) = &r.products {
        rows.extend([
            ("operations", c.operations.to_string()),
            ("operations/s", format!("{:.0}", c.ops_per_s)),
            ("red packets sent", c.red_packets_sent.to_string()),
            (
                "claims (refused)",
                format!("{} ({})", c.claims, c.claims_refused),
            ),
            ("redemptions", c.redemptions.to_string()),
            (
                "refused: short funding / redeemed already",
                format!(
                    "{} / {}",
                    c.refused_short_funding, c.refused_redeemed_already
                ),
            ),
            ("alerts", c.alerts.to_string()),
            (
                "funded / paid out",
                format!("{} / {}", c.funded, c.paid_out),
            ),
            (
                "product check",
                (if c.products_ok { "ok" } else { "FAILED" }).to_string(),
            ),
        ]);
    }
    rows
}

fn workload_text(r: &Report) -> String {
    let p = &r.parameters;
    match r.workload {
        WorkloadKind::Uniform => "uniform".into(),
        WorkloadKind::Zipf => format!("zipf (s = {})", p.zipf_s),
        WorkloadKind::Hot => format!("hot (fraction {})", p.hot_fraction),
        WorkloadKind::Business => {
            "business (top-ups, transfers, payments with fee, refunds, withdrawals, through the Ledger)".into()
        }
        WorkloadKind::Redpacket => {
            "redpacket (storms of claims on 200-packet red packets, through the Ledger)".into()
        }
        WorkloadKind::Coupon => {
            "coupon (one merchant's redemptions, its marketing account running dry)".into()
        }
        WorkloadKind::Storm => {
            "storm (uniform transfers alone, then beside a coupon storm on one marketing account)"
                .into()
        }
    }
}

/// What failed, in words.
pub fn failures(inv: &Invariants) -> Vec<String> {
    let mut out = Vec::new();
    if !inv.money_conserved {
        out.push("money not conserved".into());
    }
    if !inv.below_floor.is_empty() {
        out.push(format!("{} accounts below floor", inv.below_floor.len()));
    }
    if !inv.broken_chains.is_empty() {
        out.push(format!("{} broken chains", inv.broken_chains.len()));
    }
    if inv.committed != inv.expected_committed {
        out.push(format!(
            "engine committed {} transactions, harness saw {}",
            inv.committed, inv.expected_committed
        ));
    }
    out
}

/// The stdout summary: one aligned `label  value` row per line.
pub fn summary(r: &Report) -> String {
    let rows = rows(r);
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let pad = width - k.chars().count();
        let _ = writeln!(out, "{k}{}  {v}", " ".repeat(pad));
    }
    out
}

/// The same rows as a Markdown table.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## tally-loadtest: {} workload, {} store\n",
        r.workload.name(),
        r.parameters.store
    );
    out.push_str("| metric | value |\n|---|---|\n");
    for (k, v) in rows(r) {
        let _ = writeln!(out, "| {k} | {} |", v.replace('|', "\\|"));
    }
    out
}

pub fn write_json(r: &Report, path: &Path) -> Result<()> {
    let mut text = serde_json::to_string_pretty(r).context("cannot encode the report")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn write_markdown(r: &Report, path: &Path) -> Result<()> {
    std::fs::write(path, markdown(r)).with_context(|| format!("cannot write {}", path.display()))
}

/// The product workloads' own counts, added to the JSON report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProductCounts {
    /// Ledger calls measured (sends, claims, redemptions, refused ones too).
    pub operations: u64,
    pub ops_per_s: f64,
    pub red_packets_sent: u64,
    pub claims: u64,
    /// Refused: every packet claimed, or claimed already by the member.
    pub claims_refused: u64,
    pub redemptions: u64,
    pub refused_short_funding: u64,
    pub refused_redeemed_already: u64,
    pub alerts: u64,
    /// Money sent into red packets, or into the marketing account.
    pub funded: Decimal,
    /// Claimed from red packets, or charged to the marketing account.
    pub paid_out: Decimal,
    /// The product check after reopening (see the module doc).
    pub products_ok: bool,
    /// `redpacket`: red packets sent per second (the send phase), and
    /// claims paid per second of the claim phase (0 for the others).
    pub sends_per_s: f64,
    pub claims_per_s: f64,
    /// `coupon`: committed redemptions per second while the marketing
    /// account could pay them: from the start to the answer of the call
    /// that committed the last one (after it, half the attempts by design,
    /// only refusals for short funding follow); 0 for the others.
    pub redemptions_per_s: f64,
    /// `storm`: plain transfers per second alone, and beside the coupon
    /// storm: the median of the windows of each, run interleaved (alone,
    /// beside, alone, …), each window's figure, the storm's committed
    /// redemptions per second in the windows beside it (median), and the
    /// slowdown `1 - beside / alone` (0 for the other workloads).
    pub transfers_alone_per_s: f64,
    pub transfers_beside_storm_per_s: f64,
    pub transfers_alone_windows: Vec<f64>,
    pub transfers_beside_windows: Vec<f64>,
    pub storm_redemptions_per_s: f64,
    pub storm_slowdown: f64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn per_second_windows() {
        // 100 per 100 ms for 2.5 s: 1000/s everywhere.
        let samples: Vec<(f64, u64)> = (0..=25u32)
            .map(|i| (f64::from(i) / 10.0, u64::from(i) * 100))
            .collect();
        assert_eq!(per_second(&samples), vec![1000, 1000, 1000]);
        // Memory: the peak of each one-second window.
        let rss = [
            (0.0, 10_000_000),
            (0.5, 30_000_000),
            (1.2, 20_000_000),
            (2.9, 25_000_000),
        ];
        assert_eq!(peak_per_second(&rss), vec![30.0, 20.0, 25.0]);
        // Short runs give one (scaled) window.
        assert_eq!(per_second(&[(0.0, 0), (0.05, 100)]), vec![2000]);
        assert!(per_second(&[(0.0, 0)]).is_empty());
        assert!(per_second(&[]).is_empty());
        // Interpolation between coarse samples.
        assert_eq!(per_second(&[(0.0, 0), (2.0, 300)]), vec![150, 150]);
    }

    #[test]
    fn fine_rates_between_samples() {
        let rates = fine_rates(&[(0.0, 0), (0.1, 100), (0.1, 100), (0.3, 300)]);
        assert_eq!(rates.len(), 2);
        assert!((rates[0].0 - 0.05).abs() < 1e-9 && (rates[0].1 - 1000.0).abs() < 1e-6);
        assert!((rates[1].1 - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn latency_of_empty_histogram_is_zero() {
        let h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).unwrap();
        assert_eq!(Latency::from_histogram(&h), Latency::default());
    }
}
