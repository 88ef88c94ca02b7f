//! The embedding API: a cheap cloneable [`Engine`] handle over the sequencer
//! and shard threads.

use crate::account::{AccountError, AccountStatus, AccountView, NewAccount};
use crate::check::Checker;
use crate::command::decode_batch;
use crate::config::{Config, OpenError, StoreChoice, SubmitError};
use crate::detail::{DetailPage, DetailQuery, DetailView};
use crate::sequencer::{AccountOp, Request, Sequencer, TxnRecord, KEYSPACE_LOG, KEYSPACE_META};
use crate::shard::{Read, Shard, ShardAudit};
use crate::txn::{Outcome, Transaction, SUBMIT_TRANSACTIONS_MAX};
use crate::types::{AccountId, Currency, Timestamp, TxnId};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tally_storage::wal::{Expect, StoreId};
use tally_storage::{
    BlobStore, Disk, DiskStore, FileBlobs, MemoryStore, OsDisk, SledStore, StorageError, Store,
    StoreBlobs, StoreDisk, Wal, WalError, WriteBatch,
};
use tokio::sync::{mpsc, oneshot};

/// The store format this build writes and reads.
/// 7: the manifest names the cold store's chunks (the age tier).
pub const STORE_FORMAT: u16 = 7;
pub(crate) const META_KEY: &[u8] = b"format";
pub(crate) const META_MAGIC: &[u8; 5] = b"TALLY";
/// Messages queued per shard, at most.
const SHARD_QUEUE_MAX: usize = 64;

/// An embedded posting engine. Clone it freely: every clone talks to the
/// same sequencer. The threads stop when the last clone is dropped (after
/// finishing queued work and flushing) or on [`Engine::shutdown`].
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order matters: the sender is dropped first, which stops the
    // sequencer, then the joiner waits for the threads.
    tx: mpsc::Sender<Request>,
    checker: Checker,
    _joiner: Joiner,
    store: Arc<dyn Store>,
    /// Where cold detail chunks live: on sled, files in the store's
    /// `details/` directory; otherwise a keyspace of the store itself.
    cold: Arc<dyn BlobStore>,
    /// The cold store: chunks past the online window (`tier.rs`).
    tier: Arc<crate::tier::ColdStore>,
    recovery: Recovery,
    /// Last: removed after the store closed.
    _copy: Option<ReadOnlyCopy>,
}

/// The directory of the cold detail chunks inside a sled store's directory.
pub const DETAILS_DIR: &str = "details";

struct Joiner(Vec<JoinHandle<()>>);

impl Drop for Joiner {
    fn drop(&mut self) {
        for handle in self.0.drain(..) {
            // A panicked engine thread has nothing left to clean up.
            let _ = handle.join();
        }
    }
}

/// A transaction as the engine recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnView {
    pub id: TxnId,
    pub code: crate::TxnCode,
    pub timestamp: Timestamp,
    pub result: Result<(), crate::Reject>,
    /// The details it wrote, in leg order (empty if it was refused).
    pub details: Vec<DetailView>,
}

/// Money per currency, across all accounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyTotal {
    pub currency: Currency,
    /// Σ credit-normal balances − Σ debit-normal balances: zero when money
    /// was neither created nor lost.
    pub net: Decimal,
    /// The same over pending amounts (incoming − reserved): zero too.
    pub pending_net: Decimal,
}

/// The engine-wide invariant check. Two audits are equal when they
/// describe the same books: `memory` (what happens to be in RAM, which a
/// checkpoint or a restart changes) is not compared.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Audit {
    pub accounts: u64,
    pub details: u64,
    pub committed: u64,
    pub rejected: u64,
    pub pending_open: u64,
    pub batches: u64,
    pub currencies: Vec<CurrencyTotal>,
    pub below_floor: Vec<AccountId>,
    pub broken_chains: Vec<AccountId>,
    /// A hash of every account's balances and details chain: identical for
    /// identical histories, whatever the shard count.
    pub state_digest: u64,
    /// Why cold details could not be read back from the store (the audit
    /// is then incomplete and not ok).
    pub unreadable: Option<String>,
    /// What the idempotency index and the two-phase table hold in RAM.
    #[serde(default)]
    pub memory: IndexMemory,
}

pub use crate::state::IndexMemory;

impl PartialEq for Audit {
    fn eq(&self, other: &Audit) -> bool {
        let books = |a: &Audit| {
            (
                a.accounts,
                a.details,
                a.committed,
                a.rejected,
                a.pending_open,
                a.batches,
                a.currencies.clone(),
                a.below_floor.clone(),
                a.broken_chains.clone(),
                a.state_digest,
                a.unreadable.clone(),
            )
        };
        books(self) == books(other)
    }
}

impl Eq for Audit {}

impl Audit {
    /// Money conserved, no account below its floor, every chain linked.
    pub fn ok(&self) -> bool {
        self.currencies
            .iter()
            .all(|c| c.net.is_zero() && c.pending_net.is_zero())
            && self.below_floor.is_empty()
            && self.broken_chains.is_empty()
            && self.unreadable.is_none()
    }
}

/// What opening found in the log (see [`Engine::recovery`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// The checkpoint loaded: the first batch it does not cover.
    pub checkpoint_next_batch: Option<u64>,
    /// Log records replayed after it.
    pub replayed_batches: u64,
    /// Log segments found.
    pub segments: usize,
    /// A torn last record (written but never synced, so never
    /// acknowledged) that open cut off — or, read-only, found.
    pub torn_tail: Option<TornTailView>,
    /// BLAKE3 of the newest log record (hex): the head of the log's hash
    /// chain, which commits to every record before it.
    pub log_head: String,
    /// The next batch number.
    pub next_batch: u64,
}

/// Accounts and bytes per tier (see [`Engine::tier_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierStats {
    pub accounts_online: u64,
    pub accounts_offline: u64,
    /// The online store: its records and its `details/` blobs.
    pub bytes_hot: u64,
    /// The cold store's segments (`cold/`).
    pub bytes_cold: u64,
}

/// A torn log tail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TornTailView {
    pub segment: String,
    pub offset: u64,
    pub batch: u64,
    pub bytes: u64,
}

/// The parts of a store an engine runs on.
struct Parts {
    store: Arc<dyn Store>,
    cold: Arc<dyn BlobStore>,
    /// Where the log's segments live (`None`: in memory, no log).
    log: Option<Arc<dyn Disk>>,
    /// The cold store's segments (`None`: in memory, or a read-only open
    /// of a store that has none).
    tier: Option<Arc<dyn Disk>>,
    name: String,
    /// Set when a new store may be created here: no file of a store.
    empty: bool,
    copy: Option<ReadOnlyCopy>,
}

/// A copy of a sled database's files for a read-only open, and a shared
/// lock on the original's `db` (a writer holds it exclusively); the copy is
/// removed on drop.
struct ReadOnlyCopy(PathBuf, #[allow(dead_code)] Option<std::fs::File>);

impl Drop for ReadOnlyCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The directory of the log's segments inside a store's directory.
pub const LOG_DIR: &str = "wal";

fn open_parts(config: &Config) -> Result<Parts, OpenError> {
    let read_only = config.read_only;
    Ok(match &config.store {
        StoreChoice::Memory => {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let cold = Arc::new(StoreBlobs::new(
                store.clone(),
                crate::checkpoint::KEYSPACE_DETAILS,
            ));
            Parts {
                store,
                cold,
                log: None,
                tier: None,
                name: "memory".into(),
                empty: true,
                copy: None,
            }
        }
        StoreChoice::Sled(dir) => {
            let name = dir.display().to_string();
            let empty = !dir.exists()
                || std::fs::read_dir(dir)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
            if read_only {
                if empty {
                    let reason = "no store here (read-only open creates nothing)".into();
                    return Err(OpenError::NotATallyStore { path: name, reason });
                }
                for sub in [LOG_DIR, DETAILS_DIR] {
                    if !dir.join(sub).is_dir() {
                        let reason = format!("its {sub}/ directory is missing");
                        return Err(OpenError::NotATallyStore { path: name, reason });
                    }
                }
                let copy = copy_sled(dir).map_err(|reason| {
                    if reason.ends_with("in use by a writer") {
                        OpenError::Storage(StorageError::InUse { path: dir.clone() })
                    } else {
                        OpenError::NotATallyStore {
                            path: name.clone(),
                            reason,
                        }
                    }
                })?;
                let store: Arc<dyn Store> = Arc::new(SledStore::open(&copy.0)?);
                let cold = Arc::new(FileBlobs::on(Arc::new(ReadOnlyDisk(Arc::new(
                    OsDisk::open(&dir.join(DETAILS_DIR))?,
                ))))?);
                let log: Arc<dyn Disk> =
                    Arc::new(ReadOnlyDisk(Arc::new(OsDisk::open(&dir.join(LOG_DIR))?)));
                // A store that never moved a chunk may have no cold/.
                let tier_dir = dir.join(crate::tier::COLD_DIR);
                let tier = if tier_dir.is_dir() {
                    let disk: Arc<dyn Disk> =
                        Arc::new(ReadOnlyDisk(Arc::new(OsDisk::open(&tier_dir)?)));
                    Some(disk)
                } else {
                    None
                };
                Parts {
                    store,
                    cold,
                    log: Some(log),
                    tier,
                    name,
                    empty: false,
                    copy: Some(copy),
                }
            } else {
                let store: Arc<dyn Store> = Arc::new(SledStore::open(dir)?);
                let cold = Arc::new(FileBlobs::open(&dir.join(DETAILS_DIR))?);
                let log: Arc<dyn Disk> = Arc::new(OsDisk::open(&dir.join(LOG_DIR))?);
                let tier: Arc<dyn Disk> = Arc::new(OsDisk::open(&dir.join(crate::tier::COLD_DIR))?);
                if empty {
                    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                        std::fs::File::open(parent)
                            .and_then(|f| f.sync_all())
                            .map_err(|e| {
                                StorageError::Flush(format!("{}: {e}", parent.display()))
                            })?;
                    }
                }
                Parts {
                    store,
                    cold,
                    log: Some(log),
                    tier: Some(tier),
                    name,
                    empty,
                    copy: None,
                }
            }
        }
        StoreChoice::Custom(store) => {
            let cold = Arc::new(StoreBlobs::new(
                store.clone(),
                crate::checkpoint::KEYSPACE_DETAILS,
            ));
            let mut log: Arc<dyn Disk> = Arc::new(StoreDisk::new(store.clone(), KEYSPACE_LOG));
            if read_only {
                log = Arc::new(ReadOnlyDisk(log));
            }
            let mut tier: Arc<dyn Disk> =
                Arc::new(StoreDisk::new(store.clone(), crate::tier::KEYSPACE_COLD));
            if read_only {
                tier = Arc::new(ReadOnlyDisk(tier));
            }
            let empty = log.list()?.is_empty()
                && store
                    .get(crate::checkpoint::KEYSPACE_CHECKPOINT, b"manifest")?
                    .is_none();
            Parts {
                store: store.clone(),
                cold,
                log: Some(log),
                tier: Some(tier),
                name: "custom store".into(),
                empty,
                copy: None,
            }
        }
        StoreChoice::Disk(disk) => {
            let wrap = |d: Arc<dyn Disk>| -> Arc<dyn Disk> {
                if read_only {
                    Arc::new(ReadOnlyDisk(d))
                } else {
                    d
                }
            };
            let store_disk = wrap(disk.subdir("store")?);
            let log = wrap(disk.subdir(LOG_DIR)?);
            let details = wrap(disk.subdir(DETAILS_DIR)?);
            let tier = wrap(disk.subdir(crate::tier::COLD_DIR)?);
            let empty = store_disk.list()?.is_empty()
                && log.list()?.is_empty()
                && details.list()?.is_empty()
                && tier.list()?.is_empty();
            let store: Arc<dyn Store> = Arc::new(DiskStore::open(store_disk)?);
            let cold = Arc::new(FileBlobs::on(details)?);
            Parts {
                store,
                cold,
                log: Some(log),
                tier: Some(tier),
                name: "disk".into(),
                empty,
                copy: None,
            }
        }
    })
}

/// Copies sled's files (not the engine's `wal/` and `details/`) to a new
/// temporary directory.
fn copy_sled(dir: &Path) -> Result<ReadOnlyCopy, String> {
    static COPIES: AtomicU64 = AtomicU64::new(0);
    let target = std::env::temp_dir().join(format!(
        "tally-verify-{}-{}",
        std::process::id(),
        COPIES.fetch_add(1, Ordering::Relaxed)
    ));
    let fail = |e: std::io::Error| format!("cannot copy the store for a read-only open: {e}");
    let db = std::fs::File::open(dir.join("db")).map_err(fail)?;
    if let Err(std::fs::TryLockError::WouldBlock) = db.try_lock_shared() {
        return Err(format!("{} is in use by a writer", dir.display()));
    }
    let copy = ReadOnlyCopy(target.clone(), Some(db));
    std::fs::create_dir_all(&target).map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name();
        if name == LOG_DIR || name == DETAILS_DIR {
            continue;
        }
        let from = entry.path();
        if entry.file_type().map_err(fail)?.is_dir() {
            std::fs::create_dir_all(target.join(&name)).map_err(fail)?;
            for inner in std::fs::read_dir(&from).map_err(fail)? {
                let inner = inner.map_err(fail)?;
                std::fs::copy(inner.path(), target.join(&name).join(inner.file_name()))
                    .map_err(fail)?;
            }
        } else {
            std::fs::copy(&from, target.join(&name)).map_err(fail)?;
        }
    }
    Ok(copy)
}

/// A disk that refuses every change (read-only opens).
struct ReadOnlyDisk(Arc<dyn Disk>);

impl Disk for ReadOnlyDisk {
    fn list(&self) -> Result<Vec<String>, StorageError> {
        self.0.list()
    }
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.0.read(name)
    }
    fn read_at(
        &self,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.0.read_at(name, offset, len)
    }
    fn create(&self, name: &str) -> Result<(), StorageError> {
        Err(StorageError::Write(format!("{name}: read-only")))
    }
    fn append(&self, name: &str, _: &[u8]) -> Result<(), StorageError> {
        Err(StorageError::Write(format!("{name}: read-only")))
    }
    fn truncate(&self, name: &str, _: u64) -> Result<(), StorageError> {
        Err(StorageError::Write(format!("{name}: read-only")))
    }
    fn sync(&self, name: &str) -> Result<(), StorageError> {
        Err(StorageError::Write(format!("{name}: read-only")))
    }
    fn remove(&self, name: &str) -> Result<(), StorageError> {
        Err(StorageError::Write(format!("{name}: read-only")))
    }
    fn rename(&self, from: &str, _: &str) -> Result<(), StorageError> {
        Err(StorageError::Write(format!("{from}: read-only")))
    }
    fn sync_dir(&self) -> Result<(), StorageError> {
        Err(StorageError::Write("read-only".into()))
    }
    fn size(&self) -> Result<u64, StorageError> {
        self.0.size()
    }
    fn subdir(&self, name: &str) -> Result<Arc<dyn Disk>, StorageError> {
        Ok(Arc::new(ReadOnlyDisk(self.0.subdir(name)?)))
    }
}

impl Engine {
    /// Opens (or creates) an engine on the configured store and recovers its
    /// state: the newest checkpoint, then the log after it.
    pub fn open(mut config: Config) -> Result<Engine, OpenError> {
        config.validate()?;
        let parts = open_parts(&config)?;
        let Parts {
            store,
            cold,
            log,
            tier,
            name,
            empty,
            copy,
        } = parts;
        let meta = check_meta(store.as_ref(), log.as_ref(), &mut config, &name, empty)?;
        // Every blob is sealed with its name and this store's id.
        let cold: Arc<dyn BlobStore> =
            Arc::new(crate::checkpoint::SealedBlobs::new(cold, meta.store_id));
        let tier = Arc::new(crate::tier::ColdStore::new(
            tier,
            meta.store_id,
            config.shards,
            !config.read_only,
        ));
        let (votes_tx, votes_rx) = crossbeam_channel::bounded(usize::from(config.shards) * 2);
        let (deaths_tx, deaths_rx) = crossbeam_channel::unbounded();
        let mut threads = Vec::new();
        let mut shard_tx = Vec::new();
        for id in 0..config.shards {
            let (tx, rx) = crossbeam_channel::bounded(SHARD_QUEUE_MAX);
            let cold_store = match config.store {
                StoreChoice::Memory => None,
                _ => Some(cold.clone()),
            };
            let shard = Shard::new(
                id,
                config.shards,
                config.utc_offset_s,
                cold_store,
                Some(tier.clone()),
                config.hot_detail_chunks,
            );
            let votes = votes_tx.clone();
            let death = deaths_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tally-shard-{id}"))
                .spawn(move || {
                    // A shard that panics tells the sequencer, which stops
                    // the engine: a missing vote is never read as a yes.
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        shard.run(rx, votes)
                    }));
                    if run.is_err() {
                        let _ = death.send(id);
                    }
                })
                .map_err(|e| OpenError::Thread(e.to_string()))?;
            threads.push(handle);
            shard_tx.push(tx);
        }
        let checker = Checker {
            scales: config.currencies.iter().copied().collect(),
            shards: config.shards,
            key: meta.fingerprint_key,
        };
        let queue = config.queue_requests_max;
        let tick = config.expiry_tick_ms;
        let read_only = config.read_only;
        let sync = config.sync;
        let segment_bytes = config.log_segment_bytes;
        // Declared before the sequencer so that, on an early return, the
        // sequencer (holding the shards' senders) drops first and the shard
        // threads have stopped by the time the joiner waits for them.
        let joiner = Joiner(threads);
        let config_shards = config.shards;
        let mut sequencer = Sequencer::new(
            config,
            store.clone(),
            cold.clone(),
            tier.clone(),
            shard_tx,
            votes_rx,
            deaths_rx,
        );
        let hot_chunks = sequencer.hot_detail_chunks();
        let index_keys = crate::runs::Keys::new(meta.store_id, &meta.fingerprint_key);
        sequencer.set_index_keys(index_keys);
        let loaded = crate::checkpoint::load(
            store.as_ref(),
            cold.as_ref(),
            tier.as_ref(),
            config_shards,
            hot_chunks,
            &index_keys,
            &sequencer.index_cache(),
        )
        .map_err(|e| OpenError::CorruptCheckpoint {
            path: name.clone(),
            record: e.record,
            reason: e.reason,
        })?;
        if !read_only {
            // A crash can leave checkpoint blobs no durable manifest names.
            crate::checkpoint::delete_orphans(cold.as_ref(), loaded.as_ref().map(|l| &l.manifest))?;
        }
        let mut recovery = Recovery::default();
        let mut head_at_from = None;
        if let Some(loaded) = loaded {
            recovery.checkpoint_next_batch = Some(loaded.manifest.next_batch);
            head_at_from = Some(loaded.manifest.log_head);
            sequencer
                .restore(loaded)
                .map_err(|reason| OpenError::CorruptCheckpoint {
                    path: name.clone(),
                    record: "shard state".into(),
                    reason,
                })?;
        }
        if let Some(log) = log {
            let expect = Expect {
                from: sequencer.next_batch(),
                head_at_from,
                acknowledged_below: meta.closed_at,
                read_only,
            };
            let wal = if meta.created {
                Wal::create(log, meta.store_id).map_err(|error| OpenError::Log {
                    path: name.clone(),
                    error,
                })?
            } else {
                let (wal, report) = Wal::open(log, meta.store_id, expect, |batch, payload| {
                    let commands =
                        decode_batch(payload, |a| sequencer.route(a)).map_err(|e| e.to_string())?;
                    sequencer.replay(batch, commands)
                })
                .map_err(|error| match error {
                    WalError::Replay { batch, reason } => OpenError::Corrupt {
                        path: name.clone(),
                        batch,
                        reason,
                    },
                    error => OpenError::Log {
                        path: name.clone(),
                        error,
                    },
                })?;
                recovery.replayed_batches = report.replayed;
                recovery.segments = report.segments;
                recovery.torn_tail = report.torn_tail.map(|t| TornTailView {
                    segment: t.segment,
                    offset: t.offset,
                    batch: t.batch,
                    bytes: t.bytes,
                });
                wal
            };
            recovery.log_head = hex(&wal.head());
            recovery.next_batch = wal.next_batch();
            sequencer.set_log(wal.with_sync(sync).with_segment_bytes(segment_bytes));
        }
        let (tx, rx) = mpsc::channel(queue);
        if tick > 0 && !read_only {
            spawn_ticker(tx.downgrade(), tick)?;
        }
        let handle = std::thread::Builder::new()
            .name("tally-sequencer".into())
            .spawn(move || sequencer.run(rx))
            .map_err(|e| OpenError::Thread(e.to_string()))?;
        let mut joiner = joiner;
        joiner.0.insert(0, handle);
        Ok(Engine {
            inner: Arc::new(Inner {
                tx,
                checker,
                _joiner: joiner,
                store,
                cold,
                tier,
                recovery,
                _copy: copy,
            }),
        })
    }

    /// Fault injection for tests of fail-stop: the shard thread panics as a
    /// bug would make it. The engine stops taking writes at its next batch
    /// on that shard.
    #[doc(hidden)]
    pub fn crash_shard_for_tests(&self, shard: u16) {
        let _ = self.inner.tx.blocking_send(Request::CrashShard(shard));
    }

    /// What opening found: the checkpoint, the log replayed after it, a
    /// torn tail cut off, the head of the log's hash chain.
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// Bytes the store occupies on disk, cold details included (0 in
    /// memory).
    pub fn size_on_disk(&self) -> Result<u64, SubmitError> {
        let size = |store: &Arc<dyn Store>| {
            store.size_on_disk().map_err(|e| SubmitError::Storage {
                reason: e.to_string(),
            })
        };
        let cold = self
            .inner
            .cold
            .size_on_disk()
            .map_err(|e| SubmitError::Storage {
                reason: e.to_string(),
            })?;
        Ok(size(&self.inner.store)? + cold + self.inner.tier.bytes())
    }

    /// Where the engine's accounts and bytes are, per tier: accounts
    /// online (in the shards' tables) and offline, bytes online (the
    /// store and its `details/` blobs: checkpoint states, index runs,
    /// detail chunks inside the online window) and cold (the cold store's
    /// segments, as the manifest names them).
    pub async fn tier_stats(&self) -> Result<TierStats, SubmitError> {
        let mut accounts = 0;
        for shard in 0..self.shards() {
            accounts += self
                .call(|reply| Request::Read(shard, Read::AccountCount(reply)))
                .await?;
        }
        self.tier_bytes(accounts)
    }

    /// [`Engine::tier_stats`], blocking (not from an async context).
    pub fn tier_stats_blocking(&self) -> Result<TierStats, SubmitError> {
        let mut accounts = 0;
        for shard in 0..self.shards() {
            accounts +=
                self.call_blocking(|reply| Request::Read(shard, Read::AccountCount(reply)))?;
        }
        self.tier_bytes(accounts)
    }

    fn tier_bytes(&self, accounts_online: u64) -> Result<TierStats, SubmitError> {
        let storage = |e: tally_storage::StorageError| SubmitError::Storage {
            reason: e.to_string(),
        };
        let bytes_hot = self.inner.store.size_on_disk().map_err(storage)?
            + self.inner.cold.size_on_disk().map_err(storage)?;
        Ok(TierStats {
            accounts_online,
            // Idle accounts leaving the shards' tables are another part
            // of the tier (not in this build): none offline.
            accounts_offline: 0,
            bytes_hot,
            bytes_cold: self.inner.tier.bytes(),
        })
    }

    /// Submits transactions; answers once they are executed and durable.
    /// One outcome per transaction, in order. Refusals are in the outcomes;
    /// `Err` means the call as a whole failed.
    pub async fn submit(&self, txns: Vec<Transaction>) -> Result<Vec<Outcome>, SubmitError> {
        check_len(txns.len())?;
        let prepared = self.inner.checker.check_request(txns);
        if prepared.chains.is_empty() {
            return Ok(prepared.outcomes.into_iter().flatten().collect());
        }
        let slots = self
            .call(|reply| Request::Submit(prepared, reply))
            .await??;
        Ok(slots.into_iter().flatten().collect())
    }

    /// [`Engine::submit`] for callers outside an async runtime. Must not be
    /// called from inside a tokio runtime thread.
    pub fn submit_blocking(&self, txns: Vec<Transaction>) -> Result<Vec<Outcome>, SubmitError> {
        check_len(txns.len())?;
        let prepared = self.inner.checker.check_request(txns);
        if prepared.chains.is_empty() {
            return Ok(prepared.outcomes.into_iter().flatten().collect());
        }
        let slots = self.call_blocking(|reply| Request::Submit(prepared, reply))??;
        Ok(slots.into_iter().flatten().collect())
    }

    /// Opens accounts. Opening an existing account with the same attributes
    /// succeeds and changes nothing.
    pub async fn open_accounts(
        &self,
        accounts: Vec<NewAccount>,
    ) -> Result<Vec<Result<(), AccountError>>, SubmitError> {
        self.account_ops(accounts.into_iter().map(AccountOp::Open).collect())
            .await
    }

    pub fn open_accounts_blocking(
        &self,
        accounts: Vec<NewAccount>,
    ) -> Result<Vec<Result<(), AccountError>>, SubmitError> {
        let ops: Vec<AccountOp> = accounts.into_iter().map(AccountOp::Open).collect();
        check_len(ops.len())?;
        self.call_blocking(|reply| Request::Accounts(ops, reply))?
    }

    /// Freezes, unfreezes or closes an account.
    pub async fn set_status(
        &self,
        account: AccountId,
        status: AccountStatus,
    ) -> Result<Result<(), AccountError>, SubmitError> {
        let mut results = self
            .account_ops(vec![AccountOp::SetStatus { account, status }])
            .await?;
        results.pop().ok_or(SubmitError::ShutDown)
    }

    pub async fn account_ops(
        &self,
        ops: Vec<AccountOp>,
    ) -> Result<Vec<Result<(), AccountError>>, SubmitError> {
        check_len(ops.len())?;
        self.call(|reply| Request::Accounts(ops, reply)).await?
    }

    /// Sets metadata records (key → value), durably and in order with
    /// everything else; one result per record.
    pub async fn put_records(
        &self,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<Result<(), AccountError>>, SubmitError> {
        let ops = records
            .into_iter()
            .map(|(key, value)| AccountOp::PutRecord { key, value })
            .collect();
        self.account_ops(ops).await
    }

    /// Records whose key starts with `prefix`, in key order, after the key
    /// `after` when given; at most `limit` (and `RECORDS_PAGE_MAX`).
    pub async fn records(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, SubmitError> {
        self.call(|reply| Request::Records {
            prefix,
            after,
            limit,
            reply,
        })
        .await
    }

    pub async fn account(&self, id: AccountId) -> Result<Option<AccountView>, SubmitError> {
        let shard = self.shard(id);
        self.call(|reply| Request::Read(shard, Read::Account(id, reply)))
            .await
    }

    pub fn account_blocking(&self, id: AccountId) -> Result<Option<AccountView>, SubmitError> {
        let shard = self.shard(id);
        self.call_blocking(|reply| Request::Read(shard, Read::Account(id, reply)))
    }

    /// A page of an account's details in a time range, oldest first.
    /// `None` if the account does not exist.
    pub async fn details(&self, query: DetailQuery) -> Result<Option<DetailPage>, SubmitError> {
        let shard = self.shard(query.account);
        self.call(|reply| Request::Read(shard, Read::Details(query, reply)))
            .await?
            .map_err(storage)
    }

    /// The balance at an instant: the post-balance of the last detail at or
    /// before it (zero before the first). `None` if the account does not exist.
    pub async fn balance_at(
        &self,
        id: AccountId,
        at: Timestamp,
    ) -> Result<Option<Decimal>, SubmitError> {
        let shard = self.shard(id);
        self.call(|reply| Request::Read(shard, Read::BalanceAt(id, at, reply)))
            .await?
            .map_err(storage)
    }

    /// A sequenced transaction by id, with the details it wrote.
    pub async fn transaction(&self, id: TxnId) -> Result<Option<TxnView>, SubmitError> {
        let mut views = self.transactions(vec![id]).await?;
        Ok(views.pop().flatten())
    }

    /// Sequenced transactions by id, with the details each wrote: one
    /// answer per id, in order (`None`: never sequenced). One round trip
    /// for all of them, however many (at most
    /// [`SUBMIT_TRANSACTIONS_MAX`] a call, as for a submission:
    /// `SubmitError::BatchTooLarge` above it).
    pub async fn transactions(&self, ids: Vec<TxnId>) -> Result<Vec<Option<TxnView>>, SubmitError> {
        check_len(ids.len())?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (records, receivers) = self.call(|reply| Request::Txns(ids, reply)).await?;
        let committed = records
            .iter()
            .flatten()
            .filter(|r| r.result.is_ok())
            .count();
        let mut details: Vec<Vec<DetailView>> = vec![Vec::new(); committed];
        for rx in receivers {
            let parts = rx
                .await
                .map_err(|_| SubmitError::ShutDown)?
                .map_err(storage)?;
            for (all, part) in details.iter_mut().zip(parts) {
                all.extend(part);
            }
        }
        let mut details = details.into_iter();
        Ok(records
            .into_iter()
            .map(|record| {
                let TxnRecord {
                    id,
                    code,
                    timestamp,
                    result,
                    ..
                } = record?;
                let mut found = if result.is_ok() {
                    details.next().unwrap_or_default()
                } else {
                    Vec::new()
                };
                found.retain(|d| d.txn == id);
                found.sort_by_key(|d| d.leg);
                let code = code.or(found.first().map(|d| d.code)).unwrap_or_default();
                Some(TxnView {
                    id,
                    code,
                    timestamp,
                    result,
                    details: found,
                })
            })
            .collect())
    }

    /// Checks the invariants over the whole engine (a consistent cut: taken
    /// between batches).
    pub async fn audit(&self) -> Result<Audit, SubmitError> {
        let (stats, receivers) = self.call(Request::Audit).await?;
        let mut parts = Vec::new();
        for rx in receivers {
            parts.push(rx.await.map_err(|_| SubmitError::ShutDown)?);
        }
        Ok(merge_audit(stats, parts))
    }

    pub fn audit_blocking(&self) -> Result<Audit, SubmitError> {
        let (stats, receivers) = self.call_blocking(Request::Audit)?;
        let mut parts = Vec::new();
        for rx in receivers {
            parts.push(rx.blocking_recv().map_err(|_| SubmitError::ShutDown)?);
        }
        Ok(merge_audit(stats, parts))
    }

    /// Finishes queued work, flushes the store and stops the engine. Later
    /// calls on any clone fail with `ShutDown`.
    pub async fn shutdown(&self) -> Result<(), SubmitError> {
        self.call(Request::Shutdown).await?
    }

    pub fn shutdown_blocking(&self) -> Result<(), SubmitError> {
        self.call_blocking(Request::Shutdown)?
    }

    pub fn shards(&self) -> u16 {
        self.inner.checker.shards
    }

    pub(crate) fn shard(&self, id: AccountId) -> u16 {
        self.inner.checker.route(id)
    }

    pub(crate) async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, SubmitError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(make(tx))
            .await
            .map_err(|_| SubmitError::ShutDown)?;
        rx.await.map_err(|_| SubmitError::ShutDown)
    }

    fn call_blocking<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, SubmitError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .blocking_send(make(tx))
            .map_err(|_| SubmitError::ShutDown)?;
        rx.blocking_recv().map_err(|_| SubmitError::ShutDown)
    }
}

fn check_len(len: usize) -> Result<(), SubmitError> {
    if len > SUBMIT_TRANSACTIONS_MAX {
        return Err(SubmitError::BatchTooLarge {
            len,
            max: SUBMIT_TRANSACTIONS_MAX,
        });
    }
    Ok(())
}

fn merge_audit(stats: crate::state::SequencerAudit, parts: Vec<ShardAudit>) -> Audit {
    let mut totals: Vec<(Currency, u8, i128, i128)> = Vec::new();
    let mut audit = Audit {
        accounts: 0,
        details: 0,
        committed: stats.committed,
        rejected: stats.rejected,
        pending_open: stats.pending_open,
        batches: stats.batches,
        currencies: Vec::new(),
        below_floor: Vec::new(),
        broken_chains: Vec::new(),
        state_digest: 0,
        unreadable: None,
        memory: stats.memory,
    };
    for part in parts {
        audit.accounts += part.accounts;
        audit.details += part.details;
        audit.below_floor.extend(part.below_floor);
        audit.broken_chains.extend(part.broken_chains);
        audit.unreadable = audit.unreadable.or(part.unreadable);
        audit.state_digest = audit.state_digest.wrapping_add(part.digest);
        for (currency, scale, net, pending) in part.net {
            match totals.iter_mut().find(|t| t.0 == currency) {
                Some(t) => {
                    t.2 += net;
                    t.3 += pending;
                }
                None => totals.push((currency, scale, net, pending)),
            }
        }
    }
    totals.sort_by_key(|t| t.0);
    audit.currencies = totals
        .into_iter()
        .map(|(currency, scale, net, pending)| CurrencyTotal {
            currency,
            net: Decimal::from_i128_with_scale(net, u32::from(scale)),
            pending_net: Decimal::from_i128_with_scale(pending, u32::from(scale)),
        })
        .collect();
    audit.below_floor.sort();
    audit.broken_chains.sort();
    audit
}

/// What the format record says.
pub(crate) struct Meta {
    store_id: StoreId,
    /// The secret key of idempotency fingerprints.
    fingerprint_key: [u8; 32],
    /// The store was created by this open.
    created: bool,
    /// Batches below this were acknowledged (from the clean-close record).
    closed_at: u64,
}

/// Bytes of the format record: magic, format, shards, utc offset, store
/// id, fingerprint key, CRC32 of what comes before.
const META_LEN: usize = 5 + 2 + 2 + 8 + 16 + 32 + 4;

/// Reads the store's format record, or writes it into a new store (only
/// where no file of a store exists). Adopts the stored shard count when the
/// config asks for it; refuses another utc offset.
pub(crate) fn check_meta(
    store: &dyn Store,
    log: Option<&Arc<dyn Disk>>,
    config: &mut Config,
    name: &str,
    empty: bool,
) -> Result<Meta, OpenError> {
    let path = name.to_string();
    let not_tally = |reason: &str| OpenError::NotATallyStore {
        path: name.to_string(),
        reason: reason.to_string(),
    };
    match store.get(KEYSPACE_META, META_KEY)? {
        Some(value) => {
            if value.len() < 7 || &value[..5] != META_MAGIC {
                return Err(not_tally("format record is damaged or foreign"));
            }
            let found = u16::from_le_bytes([value[5], value[6]]);
            if found != STORE_FORMAT {
                return Err(OpenError::IncompatibleFormat {
                    path,
                    found,
                    expected: STORE_FORMAT,
                });
            }
            if value.len() != META_LEN
                || crc32fast::hash(&value[..META_LEN - 4]).to_le_bytes()[..]
                    != value[META_LEN - 4..]
            {
                return Err(not_tally("format record is damaged (length or checksum)"));
            }
            let stored = u16::from_le_bytes([value[7], value[8]]);
            if config.shards_from_store && (1..=crate::SHARDS_MAX).contains(&stored) {
                config.shards = stored;
            }
            if stored != config.shards {
                return Err(OpenError::ShardCountMismatch {
                    path,
                    stored,
                    configured: config.shards,
                });
            }
            let mut offset = [0u8; 8];
            offset.copy_from_slice(&value[9..17]);
            let offset = i64::from_le_bytes(offset);
            if offset != config.utc_offset_s {
                return Err(OpenError::SettingMismatch {
                    path,
                    setting: "utc_offset_s",
                    stored: offset.to_string(),
                    configured: config.utc_offset_s.to_string(),
                });
            }
            let mut store_id = [0u8; 16];
            store_id.copy_from_slice(&value[17..33]);
            let mut fingerprint_key = [0u8; 32];
            fingerprint_key.copy_from_slice(&value[33..65]);
            let closed_at = match store.get(KEYSPACE_META, crate::state::CLOSED_KEY)? {
                None => 0,
                Some(v)
                    if v.len() == 12 && crc32fast::hash(&v[..8]).to_le_bytes()[..] == v[8..] =>
                {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&v[..8]);
                    u64::from_le_bytes(n)
                }
                Some(_) => return Err(not_tally("the clean-close record is damaged")),
            };
            Ok(Meta {
                store_id,
                fingerprint_key,
                created: false,
                closed_at,
            })
        }
        None => {
            if !empty {
                return Err(not_tally(
                    "its files exist but the format record is missing (never opened as a new store)",
                ));
            }
            if config.read_only {
                return Err(not_tally(
                    "no format record (read-only open creates nothing)",
                ));
            }
            if log.is_some_and(|l| l.list().is_ok_and(|f| !f.is_empty())) {
                return Err(not_tally("it holds a log but no format record"));
            }
            let store_id = new_store_id();
            let mut fingerprint_key = [0u8; 32];
            getrandom::fill(&mut fingerprint_key).map_err(|e| OpenError::NotATallyStore {
                path: name.to_string(),
                reason: format!("no randomness for the store's fingerprint key: {e}"),
            })?;
            let mut value = META_MAGIC.to_vec();
            value.extend_from_slice(&STORE_FORMAT.to_le_bytes());
            value.extend_from_slice(&config.shards.to_le_bytes());
            value.extend_from_slice(&config.utc_offset_s.to_le_bytes());
            value.extend_from_slice(&store_id);
            value.extend_from_slice(&fingerprint_key);
            let crc = crc32fast::hash(&value);
            value.extend_from_slice(&crc.to_le_bytes());
            let mut batch = WriteBatch::new();
            batch.put(KEYSPACE_META, META_KEY.to_vec(), value);
            store.write(batch)?;
            store.flush()?;
            Ok(Meta {
                store_id,
                fingerprint_key,
                created: true,
                closed_at: 0,
            })
        }
    }
}

/// A store's identity: unique per creation (time, process, a counter),
/// not secret.
fn new_store_id() -> StoreId {
    static CREATED: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&CREATED.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(format!("{:?}", std::thread::current().id()).as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends `Tick` to the sequencer every `ms` while an engine handle lives,
/// so pending transfers expire at their deadline without other traffic.
fn spawn_ticker(tx: mpsc::WeakSender<Request>, ms: u64) -> Result<(), OpenError> {
    std::thread::Builder::new()
        .name("tally-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            match tx.upgrade() {
                // A full queue means traffic: the sequencer looks anyway.
                Some(tx) => {
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Request::Tick) {
                        return;
                    }
                }
                None => return,
            }
        })
        .map(|_| ())
        .map_err(|e| OpenError::Thread(e.to_string()))
}

/// A store error met while reading cold details.
fn storage(reason: String) -> SubmitError {
    SubmitError::Storage { reason }
}
