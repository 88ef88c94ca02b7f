//! Engine configuration, the clock, and the errors of opening and calling an
//! engine.

use crate::routing::SHARDS_MAX;
use crate::types::{Currency, Timestamp};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tally_storage::{Disk, StorageError, Store, WalError};

/// Where the engine keeps its log.
#[derive(Clone)]
pub enum StoreChoice {
    /// A fresh in-memory store: nothing survives the process.
    Memory,
    /// The embedded sled store in this directory (created if missing).
    Sled(PathBuf),
    /// A store the caller built (tests: reopen on the same memory store, or
    /// a fault-injecting wrapper). The log and cold details are kept in
    /// keyspaces of it, so they are as durable as its `flush`.
    Custom(Arc<dyn Store>),
    /// Everything on one [`Disk`]: the meta record and manifest in a small
    /// store file (`store/`), the log's segments (`wal/`), the cold details
    /// (`details/`). The power-loss tests run engines on a [`SimDisk`]
    /// this way; an [`OsDisk`] gives a store without sled.
    ///
    /// [`SimDisk`]: tally_storage::SimDisk
    /// [`OsDisk`]: tally_storage::OsDisk
    Disk(Arc<dyn Disk>),
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Memory => write!(f, "Memory"),
            StoreChoice::Sled(path) => write!(f, "Sled({})", path.display()),
            StoreChoice::Custom(_) => write!(f, "Custom"),
            StoreChoice::Disk(_) => write!(f, "Disk"),
        }
    }
}

/// Where engine time comes from. The sequencer never goes backwards: each
/// transaction gets `max(previous + 1, clock.now())`.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// Wall-clock time.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told: for tests of deadlines and dates.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock(AtomicU64::new(start.0))
    }
    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0, Ordering::SeqCst);
    }
    pub fn advance_ms(&self, ms: u64) {
        self.0
            .fetch_add(ms.saturating_mul(1_000_000), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// A clock that moves by itself, one step per reading, from a start derived
/// from a seed: with one caller and no ticker (`Config::expiry_tick_ms` 0),
/// every timestamp is a function of the seed and the input, so two runs of
/// the same input give the same state digest whatever the shard count
/// (deterministic simulation; `tally-loadtest run --clock simulated`).
#[derive(Debug)]
pub struct SimulatedClock {
    next: AtomicU64,
    step_ns: u64,
}

impl SimulatedClock {
    /// Starts at 2026-01-01 00:00 UTC plus `seed mod 10^6` seconds; moves
    /// 1 ms per reading.
    pub fn new(seed: u64) -> SimulatedClock {
        const START_2026: u64 = 1_767_225_600_000_000_000;
        SimulatedClock {
            next: AtomicU64::new(START_2026 + (seed % 1_000_000) * 1_000_000_000),
            step_ns: 1_000_000,
        }
    }
}

impl SimulatedClock {
    /// Moves the clock on to `at` if it is behind (days pass at once: a
    /// run over simulated days jumps to each day's start between days,
    /// with no call in flight, so timestamps stay a function of the input).
    pub fn advance_to(&self, at: Timestamp) {
        self.next.fetch_max(at.0, Ordering::SeqCst);
    }
}

impl Clock for SimulatedClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.next.fetch_add(self.step_ns, Ordering::SeqCst))
    }
}

/// Everything `Engine::open` needs.
#[derive(Clone)]
pub struct Config {
    pub store: StoreChoice,
    /// Shard actors. Fixed when a store is created and recorded in it.
    pub shards: u16,
    /// Open an existing store with the shard count it records, whatever
    /// `shards` says (which then only applies to a new store).
    pub shards_from_store: bool,
    /// Flush the store after each group before acknowledging (the default
    /// for on-disk stores). Off trades durability for speed.
    pub sync: bool,
    /// Currencies and their decimal places.
    pub currencies: Vec<(Currency, u32)>,
    /// The accounting time zone, seconds east of UTC (default +08:00).
    pub utc_offset_s: i64,
    /// Bound of the request queue between callers and the sequencer.
    pub queue_requests_max: usize,
    pub clock: Arc<dyn Clock>,
    /// Write a checkpoint every this many batches, and at shutdown; 0 (the
    /// default) never does, and reopening replays the whole log. On-disk
    /// stores only.
    ///
    /// Checkpoints are taken between batches (the shards hand over their
    /// full chunks by reference), written by a checkpoint thread, mostly as
    /// blobs beside the store, and with them older details leave memory
    /// (see `hot_detail_chunks`). `Config::sled` checkpoints every
    /// [`DEFAULT_CHECKPOINT_EVERY_BATCHES`]; in memory there is nothing to
    /// write to.
    pub checkpoint_every_batches: u64,
    /// ... and only once this many commands were logged since the last one
    /// (small batches, such as one transfer per call from one caller, would
    /// otherwise copy every account every few milliseconds).
    pub checkpoint_min_commands: u64,
    /// Full detail chunks (16,384 details each) a shard keeps in memory once
    /// a checkpoint has persisted them; older ones are cold, read back from
    /// the store when a query reaches them. Only with checkpoints.
    pub hot_detail_chunks: u32,
    /// Bound of the total bytes of metadata records (`AccountOp::PutRecord`).
    pub records_bytes_max: usize,
    /// Open without changing anything on disk: every write is refused, no
    /// checkpoint is taken, a torn log tail is reported but not cut off,
    /// and a sled store is read from a copy of its files (sled 0.34 has no
    /// read-only mode). For `verify`.
    pub read_only: bool,
    /// How often the sequencer looks for pending transfers past their
    /// deadline when no traffic arrives (milliseconds): a pending transfer
    /// expires within this much of its deadline, plus one batch.
    pub expiry_tick_ms: u64,
    /// A log segment is closed at about this many bytes; segments wholly
    /// behind a durable checkpoint are deleted.
    pub log_segment_bytes: u64,
    /// Wait for each checkpoint to be written before the next batch, so
    /// that the order of every I/O step is a function of the input alone
    /// (deterministic simulation). Off by default: checkpoints are written
    /// while batches go on.
    pub checkpoint_wait: bool,
    /// Bytes of the idempotency index's run headers (filters and fences)
    /// kept in RAM at most (see ARCHITECTURE.md, "Memory budget"): beyond
    /// it, look-ups read headers from disk.
    pub index_cache_bytes: usize,
    /// Details stay in the online store this many days (log time: against
    /// the newest batch timestamp); a persisted chunk whose newest detail
    /// is older moves to the cold store (`cold/`, see ARCHITECTURE.md,
    /// "Hot and cold details"). 0: never. Only where bytes live changes,
    /// never what a read answers. On-disk stores with checkpoints only.
    pub online_window_days: u32,
}

/// One year online by default.
pub const DEFAULT_ONLINE_WINDOW_DAYS: u32 = 365;

/// The default budget of the index runs' headers in RAM: 256 MiB, the
/// headers of ~100M ids (~2.5 bytes each).
pub(crate) const INDEX_CACHE_BYTES: usize = 256 << 20;

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("store", &self.store)
            .field("shards", &self.shards)
            .field("sync", &self.sync)
            .field("currencies", &self.currencies)
            .field("utc_offset_s", &self.utc_offset_s)
            .finish_non_exhaustive()
    }
}

/// Batches between checkpoints on sled. Measured at an offered 300k/s (2
/// cores): every 128 batches, p99 9.6 ms; every 1,024, 23 ms (each
/// checkpoint carries more).
pub const DEFAULT_CHECKPOINT_EVERY_BATCHES: u64 = 128;

/// Commands logged between checkpoints on sled, at least.
pub const DEFAULT_CHECKPOINT_MIN_COMMANDS: u64 = 65_536;

/// Pending transfers expire within this many milliseconds of their
/// deadline when no other traffic arrives.
pub const DEFAULT_EXPIRY_TICK_MS: u64 = 10;

/// 64 chunks: ~1M details, ~100 MB per shard.
pub const DEFAULT_HOT_DETAIL_CHUNKS: u32 = 64;

/// The default shard count: one per core, at most 8.
pub fn default_shards() -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    u16::try_from(cores.clamp(1, 8)).unwrap_or(1)
}

impl Config {
    /// An in-memory engine with the default shard count.
    pub fn memory() -> Config {
        Config {
            store: StoreChoice::Memory,
            shards: default_shards(),
            shards_from_store: false,
            sync: false,
            currencies: vec![
                (Currency::CNY, 2),
                (Currency::USD, 2),
                (Currency::EUR, 2),
                (Currency::HKD, 2),
                (Currency::JPY, 0),
            ],
            utc_offset_s: 8 * 3600,
            queue_requests_max: 1_024,
            clock: Arc::new(SystemClock),
            checkpoint_every_batches: 0,
            checkpoint_min_commands: 0,
            hot_detail_chunks: DEFAULT_HOT_DETAIL_CHUNKS,
            records_bytes_max: crate::account::RECORDS_BYTES_MAX,
            read_only: false,
            expiry_tick_ms: DEFAULT_EXPIRY_TICK_MS,
            log_segment_bytes: tally_storage::wal::SEGMENT_BYTES_DEFAULT,
            checkpoint_wait: false,
            index_cache_bytes: INDEX_CACHE_BYTES,
            online_window_days: DEFAULT_ONLINE_WINDOW_DAYS,
        }
    }

    /// An engine on the embedded sled store in `dir`, flushing every group.
    pub fn sled(dir: impl Into<PathBuf>) -> Config {
        Config {
            store: StoreChoice::Sled(dir.into()),
            sync: true,
            checkpoint_every_batches: DEFAULT_CHECKPOINT_EVERY_BATCHES,
            checkpoint_min_commands: DEFAULT_CHECKPOINT_MIN_COMMANDS,
            ..Config::memory()
        }
    }

    pub fn with_shards(self, shards: u16) -> Config {
        Config { shards, ..self }
    }

    /// Opens an existing store with the shard count it was created with;
    /// `shards` then only applies when the store is new.
    pub fn with_stored_shards(self) -> Config {
        Config {
            shards_from_store: true,
            ..self
        }
    }

    /// Keep `chunks` full detail chunks per shard in memory (see
    /// [`Config::hot_detail_chunks`]).
    pub fn with_hot_detail_chunks(self, chunks: u32) -> Config {
        Config {
            hot_detail_chunks: chunks,
            ..self
        }
    }

    /// Checkpoint every `batches` batches, however small (0: never, not
    /// even at shutdown).
    pub fn with_checkpoint_every(self, batches: u64) -> Config {
        Config {
            checkpoint_every_batches: batches,
            checkpoint_min_commands: 0,
            ..self
        }
    }

    /// Keep at most `bytes` of the index runs' headers in RAM.
    pub fn with_index_cache_bytes(self, bytes: usize) -> Config {
        Config {
            index_cache_bytes: bytes,
            ..self
        }
    }

    /// Keep details online `days` days (0: the age tier is off; see
    /// [`Config::online_window_days`]).
    pub fn with_online_window_days(self, days: u32) -> Config {
        Config {
            online_window_days: days,
            ..self
        }
    }

    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Config {
        Config { clock, ..self }
    }

    /// Open for reading only (see [`Config::read_only`]).
    pub fn read_only(self) -> Config {
        Config {
            read_only: true,
            ..self
        }
    }

    /// An engine with everything on `disk` (see [`StoreChoice::Disk`]),
    /// syncing every group and checkpointing like `Config::sled`.
    pub fn on_disk(disk: Arc<dyn Disk>) -> Config {
        Config {
            store: StoreChoice::Disk(disk),
            sync: true,
            checkpoint_every_batches: DEFAULT_CHECKPOINT_EVERY_BATCHES,
            checkpoint_min_commands: DEFAULT_CHECKPOINT_MIN_COMMANDS,
            ..Config::memory()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), OpenError> {
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return Err(OpenError::InvalidConfig(format!(
                "shards must be 1..={SHARDS_MAX}, got {}",
                self.shards
            )));
        }
        if let Some((c, s)) = self.currencies.iter().find(|(_, s)| *s > 18) {
            return Err(OpenError::InvalidConfig(format!(
                "{c} has {s} decimal places, at most 18"
            )));
        }
        if self.queue_requests_max == 0 {
            return Err(OpenError::InvalidConfig(
                "queue_requests_max must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Why an engine could not be opened. Nothing on disk was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{path}: not a tally store: {reason}")]
    NotATallyStore { path: String, reason: String },
    #[error("{path}: store format {found}, this build reads format {expected}")]
    IncompatibleFormat {
        path: String,
        found: u16,
        expected: u16,
    },
    #[error("{path}: store was created with {stored} shards, configured {configured}")]
    ShardCountMismatch {
        path: String,
        stored: u16,
        configured: u16,
    },
    #[error("{path}: log record {batch} is corrupt: {reason}")]
    Corrupt {
        path: String,
        batch: u64,
        reason: String,
    },
    /// The log is damaged, incomplete or not this store's (never opened
    /// as a shorter history).
    #[error("{path}: {error}")]
    Log { path: String, error: WalError },
    /// The store was created with another setting that decides outcomes.
    #[error("{path}: the store was created with {setting} = {stored}, configured {configured}")]
    SettingMismatch {
        path: String,
        setting: &'static str,
        stored: String,
        configured: String,
    },
    #[error("{path}: checkpoint record {record} is corrupt: {reason}")]
    CorruptCheckpoint {
        path: String,
        record: String,
        reason: String,
    },
    #[error("could not start engine thread: {0}")]
    Thread(String),
}

/// Why a call on an engine failed as a whole (per-transaction refusals are
/// in the `Outcome`s, not here).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    #[error("{len} items in one call, at most {max}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("the engine is shut down")]
    ShutDown,
    /// The group could not be made durable; it was not applied. Some
    /// transactions of the same call may have committed in an earlier
    /// group: resubmitting the call is safe (idempotency) and tells which.
    #[error("storage failed, nothing of this group was applied: {reason}")]
    Storage { reason: String },
    /// Writing or syncing the log failed, or an engine thread died, while
    /// this call's group was on its way: the group may or may not be
    /// durable. The engine has stopped taking writes; the next open
    /// decides from the log alone, and resubmitting the same ids there
    /// tells which (idempotency).
    #[error("outcome unknown, the engine stopped: {reason}")]
    OutcomeUnknown { reason: String },
    /// The engine stopped taking writes after a storage failure or a dead
    /// thread; nothing of this call was applied. Reopen the engine.
    #[error("the engine stopped after a failure, nothing of this call was applied: {reason}")]
    Stopped { reason: String },
    /// The engine was opened read-only.
    #[error("the engine was opened read-only")]
    ReadOnly,
}
