//! What a `run` is given and where it runs: the command line's arguments
//! ([`RunArgs`]), the store a run opens and reopens ([`StoreSetup`]), the
//! engine clock (`--clock`), and the process's resident memory. Shared by
//! the uniform harness (`run`) and the product workloads (`products`), so
//! that neither imports the other's module for them.

use crate::verify;
use crate::workload::WorkloadKind;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tally_engine::Config;
use tally_storage::MemoryStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Memory,
    Sled,
}

impl StoreKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sled => "sled",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Shape of the traffic.
    #[arg(long, value_enum, default_value_t = WorkloadKind::Uniform)]
    pub workload: WorkloadKind,
    /// Zipf exponent of the zipf workload (0 = uniform; larger = more skewed).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub zipf_s: f64,
    /// Fraction of transfers of the hot workload that credit the merchant
    /// AccountId(1).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub hot_fraction: f64,
    /// Customer accounts AccountId(1..=N).
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u64,
    /// Transfers to submit.
    #[arg(long, default_value_t = 1_000_000)]
    pub transactions: u64,
    /// Run for this many seconds instead of a fixed number of transfers.
    #[arg(long, conflicts_with = "transactions", allow_negative_numbers = true)]
    pub duration: Option<f64>,
    /// Concurrent submitting tasks.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Shard actors [default: one per core, at most 8].
    #[arg(long, value_parser = crate::shards_arg())]
    pub shards: Option<u16>,
    /// Transfers per submit call.
    #[arg(long, default_value_t = 1000)]
    pub batch_max: usize,
    #[arg(long, value_enum, default_value_t = StoreKind::Sled)]
    pub store: StoreKind,
    /// Directory of the sled store; must be missing or empty [default: a
    /// fresh temporary directory, deleted at the end unless --keep].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the temporary sled directory (its path is printed). It is always
    /// kept when the invariants fail.
    #[arg(long)]
    pub keep: bool,
    /// Sled without a flush per group (not durable; for comparison).
    #[arg(long)]
    pub no_sync: bool,
    /// Checkpoint every N batches, however small (0: never; reopening
    /// replays the log). Default: the engine's (every 128 batches of at
    /// least 65,536 transactions in all).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where engine time comes from: the system clock, or a clock that
    /// moves 1 ms per reading from a start given by --seed (with
    /// --clients 1, timestamps and the state digest are then a function of
    /// the seed and the input, whatever --shards; pending transfers expire
    /// only as traffic moves that clock).
    #[arg(long, value_enum, default_value_t = ClockKind::System)]
    pub clock: ClockKind,
    /// Spread the transfers over this many simulated days: each day's
    /// share is submitted, the simulated clock jumps to the next day's
    /// start and the day is closed (`Engine::close_day`, checked); the
    /// tiers apply as the clock moves (details past
    /// --online-window-days move to the cold store at checkpoints). Needs
    /// --clock simulated and --transactions.
    #[arg(long)]
    pub days: Option<u32>,
    /// Days details stay in the online store (0: never move to the cold
    /// store) [default: the engine's, 365].
    #[arg(long)]
    pub online_window_days: Option<u32>,
    /// Write the report as JSON.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Write the report as a Markdown table.
    #[arg(long)]
    pub report_md: Option<PathBuf>,
    /// Write throughput.svg and latency.svg into this directory.
    #[arg(long)]
    pub report_svg_dir: Option<PathBuf>,
    /// Offered load in transfers per second, spread evenly over the
    /// clients (each sends a batch every `batch_max × clients / rate`
    /// seconds). Latency is counted from each batch's scheduled send time,
    /// so a stall is not hidden by the clients waiting. Default: as fast as
    /// the engine answers (closed loop).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Write every report into this directory (created if missing):
    /// run.json, run.md, throughput.svg and latency.svg. Same as the three
    /// flags above; each of them, when given too, wins.
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// No progress bar or status lines on stderr.
    #[arg(long)]
    pub no_progress: bool,
    /// Generate each client's transfers between its calls (as `--duration`
    /// runs do) instead of all of them before the clock starts, so that
    /// peak memory is the engine's and not that of `--transactions`
    /// pre-generated transfers. Generation then costs throughput (not
    /// latency). The same transfers are submitted either way.
    #[arg(long)]
    pub live_generation: bool,
}

/// Where engine time comes from (`--clock`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockKind {
    System,
    Simulated,
}

/// The engine configuration's clock for `--clock` and `--seed`: the
/// simulated one also turns the expiry ticker off (its readings would move
/// the clock at times of their own).
pub(crate) fn with_clock(config: Config, clock: ClockKind, seed: u64) -> Config {
    match clock {
        ClockKind::System => config,
        ClockKind::Simulated => Config {
            expiry_tick_ms: 0,
            ..config.with_clock(Arc::new(tally_engine::SimulatedClock::new(seed)))
        },
    }
}

/// Where the store lives, and how to open (and reopen) an engine on it.
pub(crate) enum StoreSetup {
    Memory(Arc<MemoryStore>),
    Sled {
        dir: PathBuf,
        /// The temporary directory, when the user gave none.
        temp: Option<tempfile::TempDir>,
    },
}

impl StoreSetup {
    pub(crate) fn new(args: &RunArgs) -> Result<StoreSetup> {
        match args.store {
            StoreKind::Memory => Ok(StoreSetup::Memory(Arc::new(MemoryStore::new()))),
            StoreKind::Sled => match &args.data_dir {
                Some(dir) => {
                    if dir.exists() && !(dir.is_dir() && verify::is_empty_dir(dir)?) {
                        bail!(
                            "--data-dir {} is not an empty directory; a run needs a fresh store \
                             (check an existing one with `verify`)",
                            dir.display()
                        );
                    }
                    Ok(StoreSetup::Sled {
                        dir: dir.clone(),
                        temp: None,
                    })
                }
                None => {
                    let temp = tempfile::Builder::new()
                        .prefix("tally-loadtest-")
                        .tempdir()
                        .context("cannot create a temporary directory")?;
                    Ok(StoreSetup::Sled {
                        dir: temp.path().to_path_buf(),
                        temp: Some(temp),
                    })
                }
            },
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            StoreSetup::Memory(_) => "memory",
            StoreSetup::Sled { .. } => "sled",
        }
    }

    /// Bytes the store occupies on disk.
    pub(crate) fn bytes_on_disk(&self) -> Result<Option<u64>> {
        match self {
            StoreSetup::Memory(_) => Ok(None),
            StoreSetup::Sled { dir, .. } => dir_size(dir).map(Some),
        }
    }
}

/// The process's resident memory in bytes (Linux: `VmRSS` of
/// `/proc/self/status`), or 0 where it cannot be read.
pub(crate) fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes the files under `dir` occupy.
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0u64;
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let meta = entry
            .metadata()
            .with_context(|| format!("cannot stat {}", entry.path().display()))?;
        if meta.is_dir() {
            total += dir_size(&entry.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}
