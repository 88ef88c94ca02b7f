//! The sequencer: the one thread that orders everything.
//!
//! It drains callers' requests (group commit), checks each transaction
//! (stateless checks, idempotency, two-phase state), gives it a timestamp,
//! cuts the stream into batches, writes each batch to the log (one write and
//! one flush per batch), has the shards execute it, settles cross-shard votes
//! and answers the callers.
//!
//! Everything a decision depends on is in the ordered batch, so replaying the
//! log gives the same outcomes, balances and details for any shard count.
//!
//! It never touches a shard's table; shards never see a request before it is
//! in the log.

use crate::account::{
    AccountError, AccountStatus, LegOp, NewAccount, RECORD_KEY_MAX, RECORD_VALUE_MAX,
};
use crate::check::{unsequenced, Checked, Prepared};
use crate::checkpoint::{self, Loaded, Manifest, SequencerState};
use crate::command::{encode_batch, Command, Legs, OpenSpec, SeqKind, SeqLeg, SeqTxn};
use crate::config::{Config, SubmitError};
use crate::grow::SplitMap;
use crate::routing::shard_of;
use crate::shard::{Batch, CmdError, Read, Refusal, ShardAudit, ShardMsg, Vote};
use crate::txn::{Outcome, Reject, TxnKind};
use crate::types::{AccountId, Currency, Minor, Timestamp, TxnCode, TxnId};
use crossbeam_channel::{Receiver, Sender};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;
use tally_storage::{BlobStore, Keyspace, Store, Wal, WriteBatch};
use tokio::sync::{mpsc, oneshot};

/// Commands per batch, at most (a batch is one log record).
pub const BATCH_COMMANDS_MAX: usize = 16_384;

/// Records per `Engine::records` answer, at most.
pub const RECORDS_PAGE_MAX: usize = 10_000;

/// Room kept in a batch for the chain being placed; expiries stop there.
const EXPIRY_HEADROOM: usize = crate::txn::LEGS_MAX * 2;

pub(crate) const KEYSPACE_META: Keyspace = Keyspace(0);
pub(crate) const KEYSPACE_LOG: Keyspace = Keyspace(1);

/// An operation other than a transaction, sequenced like one: opening an
/// account, changing its status, or writing a metadata record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountOp {
    Open(NewAccount),
    SetStatus {
        account: AccountId,
        status: AccountStatus,
    },
    /// Sets a metadata record kept with the ledger: logged, replayed and
    /// checkpointed like everything else (the business layer keeps its
    /// members here). Key 1..=`RECORD_KEY_MAX` bytes, value at most
    /// `RECORD_VALUE_MAX`.
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
    },
}

/// One outcome per transaction of the call, in order, every slot filled;
/// flattened by the caller, off the sequencer's thread.
pub(crate) type TxnReply = oneshot::Sender<Result<Vec<Option<Outcome>>, SubmitError>>;
/// A transaction look-up's answer: the sequencer's record, and one receiver
/// per shard holding its details.
pub(crate) type TxnReadReply = oneshot::Sender<(
    Option<TxnRecord>,
    Vec<oneshot::Receiver<crate::shard::ColdResult<Vec<crate::DetailView>>>>,
)>;
pub(crate) type AccountReply = oneshot::Sender<Result<Vec<Result<(), AccountError>>, SubmitError>>;

/// What the sequencer knows of a transaction it sequenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    pub id: TxnId,
    /// Known here for a refused transaction; a committed one's is on its
    /// details.
    pub code: Option<TxnCode>,
    pub timestamp: Timestamp,
    pub result: Result<(), Reject>,
}

/// The idempotency index's entry: 24 bytes, one per transaction ever
/// sequenced, because the index is the sequencer's costliest structure
/// (every new id is a look-up miss and an insert). A refusal's reason and
/// code live in a side table; a committed transaction's code and shards are
/// found from its details.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct IndexEntry {
    fingerprint: crate::check::Fingerprint,
    /// The timestamp, with `COMMITTED` set when the transaction committed.
    stamp: u64,
}

impl IndexEntry {
    /// Timestamps are nanoseconds since 1970: the top bit is free until 2262.
    const COMMITTED: u64 = 1 << 63;

    pub(crate) fn new(
        fingerprint: crate::check::Fingerprint,
        timestamp: Timestamp,
        committed: bool,
    ) -> IndexEntry {
        let flag = if committed { Self::COMMITTED } else { 0 };
        IndexEntry {
            fingerprint,
            stamp: (timestamp.0 & !Self::COMMITTED) | flag,
        }
    }

    fn timestamp(&self) -> Timestamp {
        Timestamp(self.stamp & !Self::COMMITTED)
    }

    fn committed(&self) -> bool {
        self.stamp & Self::COMMITTED != 0
    }
}

pub(crate) enum Request {
    Submit(Prepared, TxnReply),
    Accounts(Vec<AccountOp>, AccountReply),
    Read(u16, Read),
    Txn(TxnId, TxnReadReply),
    Audit(oneshot::Sender<(SequencerAudit, Vec<oneshot::Receiver<ShardAudit>>)>),
    /// Records whose key starts with `prefix`, after `after`, at most `limit`.
    Records {
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
        reply: oneshot::Sender<Vec<(Vec<u8>, Vec<u8>)>>,
    },
    Shutdown(oneshot::Sender<Result<(), SubmitError>>),
    /// From the ticker: expire pending transfers past their deadline.
    Tick,
    /// Fault injection: make a shard thread panic.
    CrashShard(u16),
}

/// The sequencer's part of an audit.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct SequencerAudit {
    pub committed: u64,
    pub rejected: u64,
    pub pending_open: u64,
    pub batches: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum PendingStatus {
    Open,
    Posted,
    Voided,
    Expired,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct PendingInfo {
    code: TxnCode,
    deadline: Timestamp,
    legs: Legs,
    status: PendingStatus,
}

/// Where a command's answer goes.
#[derive(Clone, Copy)]
enum Slot {
    Txn { request: usize, index: usize },
    Account { request: usize, index: usize },
    Internal,
}

/// The batch the shards are executing while the next one is built
/// (pipelining). Until it settles, the next batch may not touch what it
/// claimed: its ids and pending transfers, nor pass the earliest deadline of
/// a pending transfer it creates (that transfer would have to expire first).
struct InFlight {
    batch: Arc<Batch>,
    slots: Vec<Slot>,
    ids: FxHashSet<TxnId>,
    pendings_touched: FxHashSet<TxnId>,
    new_pending_deadline_min: Option<Timestamp>,
    /// The answers of the drain that launched it, once that drain has
    /// ended; `None` while the drain that launched it is still placing.
    answers: Option<Vec<Pending>>,
}

/// The batch being built, and what it has claimed so far.
#[derive(Default)]
struct Builder {
    commands: Vec<Command>,
    slots: Vec<Slot>,
    ids: FxHashSet<TxnId>,
    /// Pending ids created, posted, voided or expired in this batch.
    pendings_touched: FxHashSet<TxnId>,
    new_pending_deadline_min: Option<Timestamp>,
    /// The deadline-set key of the last pending expired in this batch.
    expired_through: Option<(Timestamp, TxnId)>,
}

impl Builder {
    /// Empties the builder, keeping its allocations.
    fn clear(&mut self) {
        self.commands.clear();
        self.slots.clear();
        self.ids.clear();
        self.pendings_touched.clear();
        self.new_pending_deadline_min = None;
        self.expired_through = None;
    }

    fn push(&mut self, command: Command, slot: Slot) {
        self.commands.push(command);
        self.slots.push(slot);
    }

    /// Takes a settled batch's sets and slots, emptied, where they are
    /// larger than the builder's own: their memory is reused.
    fn reuse(&mut self, (mut ids, mut touched, mut slots): BatchParts) {
        if self.ids.capacity() < ids.capacity() {
            ids.clear();
            touched.clear();
            (self.ids, self.pendings_touched) = (ids, touched);
        }
        if self.slots.capacity() < slots.capacity() {
            slots.clear();
            self.slots = slots;
        }
    }
}

/// A settled batch's id set, pending set and answer slots.
type BatchParts = (FxHashSet<TxnId>, FxHashSet<TxnId>, Vec<Slot>);

enum Answer {
    Txns(Vec<Option<Outcome>>, TxnReply),
    Accounts(Vec<Option<Result<(), AccountError>>>, AccountReply),
}

/// A request's answers, filled as its batches settle.
struct Pending {
    answer: Answer,
    failed: Option<SubmitError>,
}

enum Fit {
    Added,
    Answered,
    NeedsCut,
}

pub(crate) struct Sequencer {
    shards: u16,
    scales: FxHashMap<Currency, u32>,
    config: Config,
    store: Arc<dyn Store>,
    /// Where checkpoints put detail chunks (see `Engine::open`).
    cold: Arc<dyn BlobStore>,
    shard_tx: Vec<Sender<ShardMsg>>,
    votes: Receiver<Vote>,
    /// Shards that panicked: any makes the engine stop.
    deaths: Receiver<u16>,
    /// The command log (`None` in memory: nothing to replay it from).
    log: Option<Wal>,
    /// Why the engine stopped taking writes (a failed log write or sync, a
    /// dead thread, a failed checkpoint). Sticky: only a reopen clears it.
    stopped: Option<String>,
    last_ts: Timestamp,
    next_batch: u64,
    index: SplitMap<TxnId, IndexEntry>,
    refusals: FxHashMap<TxnId, (Reject, TxnCode)>,
    /// The clock, read once per drained set of requests.
    now: Timestamp,
    pendings: FxHashMap<TxnId, PendingInfo>,
    deadlines: BTreeSet<(Timestamp, TxnId)>,
    stats: SequencerAudit,
    builder: Builder,
    inflight: Option<InFlight>,
    /// Metadata records (`AccountOp::PutRecord`).
    records: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Bytes of keys and values in `records` (bounded by `RECORDS_BYTES_MAX`).
    records_bytes: usize,
    /// Index entries and refusals added since the last checkpoint.
    since_checkpoint: checkpoint::Block,
    ckpt: CheckpointState,
    /// The checkpoint thread: writes and flushes a checkpoint while batches
    /// go on, and answers with the manifest it made durable.
    ckpt_writer: Option<CheckpointWriter>,
    /// A checkpoint is being written.
    ckpt_job: bool,
}

/// Where the last checkpoint left off.
#[derive(Debug, Default)]
struct CheckpointState {
    /// The newest manifest known durable.
    manifest: Manifest,
    /// The generation the next checkpoint's blobs are named by: one past
    /// every generation tried, so a failed try's blobs are never reused
    /// (its manifest may still reach the disk).
    next_generation: u64,
    /// The first batch still in the log.
    log_from: u64,
    batches_since: u64,
    commands_since: u64,
    /// The next checkpoint must write every account (a try failed).
    needs_full: bool,
}

impl Sequencer {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        cold: Arc<dyn BlobStore>,
        shard_tx: Vec<Sender<ShardMsg>>,
        votes: Receiver<Vote>,
        deaths: Receiver<u16>,
    ) -> Sequencer {
        Sequencer {
            shards: config.shards,
            scales: config.currencies.iter().copied().collect(),
            config,
            store,
            cold,
            shard_tx,
            votes,
            deaths,
            log: None,
            stopped: None,
            last_ts: Timestamp(0),
            next_batch: 0,
            index: SplitMap::default(),
            refusals: FxHashMap::default(),
            now: Timestamp(0),
            pendings: FxHashMap::default(),
            deadlines: BTreeSet::new(),
            stats: SequencerAudit::default(),
            builder: Builder::default(),
            inflight: None,
            records: BTreeMap::new(),
            records_bytes: 0,
            since_checkpoint: checkpoint::Block::default(),
            ckpt: CheckpointState::default(),
            ckpt_writer: None,
            ckpt_job: false,
        }
    }

    pub fn route(&self, account: AccountId) -> u16 {
        shard_of(account, self.shards).0
    }

    /// The log batches go to from now on (after recovery).
    pub fn set_log(&mut self, log: Wal) {
        self.log = Some(log);
    }

    /// Re-applies one logged batch (recovery).
    pub fn replay(&mut self, batch_no: u64, commands: Vec<Command>) -> Result<(), String> {
        let batch = self.launch(commands);
        let results = self.complete(&batch)?;
        self.settle(&batch.commands, &results);
        self.next_batch = batch_no + 1;
        self.stats.batches += 1;
        self.ckpt.batches_since += 1;
        self.ckpt.commands_since += batch.commands.len() as u64;
        Ok(())
    }

    /// Stops taking writes for good (until a reopen): after a failed log
    /// write or sync (no retry: the kernel may have dropped what it could
    /// not write), a dead thread, or a failed checkpoint.
    fn stop_writes(&mut self, reason: String) {
        if self.stopped.is_none() {
            self.stopped = Some(reason);
        }
    }

    /// The actor loop: until every handle is dropped or `Shutdown` arrives.
    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut drained = Vec::new();
        loop {
            let first = match rx.try_recv() {
                Ok(request) => request,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Nobody is waiting to be sequenced: answer the batch
                    // in flight before sleeping.
                    self.finish_inflight(&mut []);
                    match rx.blocking_recv() {
                        Some(request) => request,
                        None => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            drained.push(first);
            let mut items = 0usize;
            while items < BATCH_COMMANDS_MAX {
                match rx.try_recv() {
                    Ok(request) => {
                        items += match &request {
                            Request::Submit(p, _) => p.outcomes.len(),
                            Request::Accounts(a, _) => a.len(),
                            _ => 1,
                        };
                        drained.push(request);
                    }
                    Err(_) => break,
                }
            }
            if let Some(reply) = self.serve(&mut drained) {
                let _ = reply.send(self.stop());
                return;
            }
        }
        let _ = self.stop();
    }

    fn stop(&mut self) -> Result<(), SubmitError> {
        self.finish_inflight(&mut []);
        self.poll_checkpoint(true);
        if self.ckpt.batches_since > 0 && self.stopped.is_none() {
            let _ = self.checkpoint();
            self.poll_checkpoint(true);
        }
        // The checkpoint thread holds the store: it must be gone before the
        // engine counts as closed (a reopen would find the store in use).
        if let Some((jobs, _, handle)) = self.ckpt_writer.take() {
            drop(jobs);
            let _ = handle.join();
        }
        self.shard_tx.clear();
        if let Some(reason) = &self.stopped {
            // Nothing more is written: the next open decides from the log.
            return Err(SubmitError::Stopped {
                reason: reason.clone(),
            });
        }
        if self.config.read_only || self.log.is_none() {
            return Ok(());
        }
        // Every batch below this one was acknowledged: a later open that
        // finds a shorter log refuses it instead of opening a shorter
        // history.
        let storage = |e: tally_storage::StorageError| SubmitError::Storage {
            reason: e.to_string(),
        };
        if let Some(log) = self.log.as_mut() {
            log.sync().map_err(storage)?;
        }
        let mut batch = WriteBatch::new();
        batch.put(
            KEYSPACE_META,
            crate::engine::CLOSED_KEY.to_vec(),
            crate::engine::closed_record(self.next_batch),
        );
        self.store.write(batch).map_err(storage)?;
        self.store.flush().map_err(storage)
    }

    /// Serves drained requests: writes first (in arrival order), then reads,
    /// so a read sent after a write's answer sees the write.
    fn serve(
        &mut self,
        drained: &mut Vec<Request>,
    ) -> Option<oneshot::Sender<Result<(), SubmitError>>> {
        let mut writes = Vec::new();
        self.note_deaths();
        let mut reads = Vec::new();
        let mut shutdown = None;
        let mut tick = false;
        for request in drained.drain(..) {
            match request {
                Request::Submit(prepared, reply) => writes.push(WriteReq::Txns(prepared, reply)),
                Request::Accounts(ops, reply) => writes.push(WriteReq::Accounts(ops, reply)),
                Request::Shutdown(reply) => shutdown = Some(reply),
                Request::Tick => tick = true,
                other => reads.push(other),
            }
        }
        let no_writes = writes.is_empty();
        self.write(writes);
        if tick && no_writes {
            self.expire_due();
        }
        if !reads.is_empty() {
            // Reads see settled state only, and a shard must not be asked
            // while it holds a batch not yet committed.
            self.finish_inflight(&mut []);
        }
        for read in reads {
            self.read(read);
        }
        shutdown
    }

    fn read(&mut self, request: Request) {
        match request {
            Request::Read(shard, read) => self.send(shard, ShardMsg::Read(read)),
            Request::CrashShard(shard) => self.send(shard, ShardMsg::Crash),
            Request::Records {
                prefix,
                after,
                limit,
                reply,
            } => {
                let start = match &after {
                    Some(key) => Bound::Excluded(key.clone()),
                    None => Bound::Included(prefix.clone()),
                };
                let found = self
                    .records
                    .range((start, Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .take(limit.min(RECORDS_PAGE_MAX))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let _ = reply.send(found);
            }
            Request::Txn(id, reply) => {
                let record = self.record(id);
                let mut receivers = Vec::new();
                if let Some(r) = record.as_ref().filter(|r| r.result.is_ok()) {
                    // Shards answer by timestamp from a sorted table: asking
                    // all of them costs a binary search each.
                    for shard in 0..self.shards {
                        let (tx, rx) = oneshot::channel();
                        self.send(shard, ShardMsg::Read(Read::TxnDetails(r.timestamp, tx)));
                        receivers.push(rx);
                    }
                }
                let _ = reply.send((record, receivers));
            }
            Request::Audit(reply) => {
                let mut receivers = Vec::new();
                for shard in 0..self.shards {
                    let (tx, rx) = oneshot::channel();
                    self.send(shard, ShardMsg::Read(Read::Audit(tx)));
                    receivers.push(rx);
                }
                let mut stats = self.stats.clone();
                stats.pending_open = self
                    .pendings
                    .values()
                    .filter(|p| p.status == PendingStatus::Open)
                    .count() as u64;
                let _ = reply.send((stats, receivers));
            }
            _ => {}
        }
    }

    /// Expires every pending transfer past its deadline in a batch of its
    /// own (the ticker's call when no traffic arrives); logged and
    /// replayed like any batch.
    fn expire_due(&mut self) {
        if self.stopped.is_some() || self.config.read_only {
            return;
        }
        self.now = self.config.clock.now();
        let due = self
            .deadlines
            .iter()
            .next()
            .is_some_and(|(deadline, _)| *deadline < self.now);
        if !due {
            return;
        }
        self.finish_inflight(&mut []);
        let mut builder = std::mem::take(&mut self.builder);
        // Expires what is due; the timestamp it stamps for a transaction
        // that does not come is given back (the last one used is below it).
        if let Some(ts) = self.stamp(&mut builder, true) {
            self.last_ts = Timestamp(ts.0 - 1);
        }
        self.flush_batch(&mut builder, &mut []);
        self.finish_inflight(&mut []);
        self.builder = builder;
        self.maybe_checkpoint();
    }

    fn put_record(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let (key_len, value_len) = (key.len(), value.len());
        match self.records.insert(key, value) {
            Some(old) => self.records_bytes = self.records_bytes - old.len() + value_len,
            None => self.records_bytes += key_len + value_len,
        }
    }

    /// Checkpoints are taken (and so the index entries since the last one
    /// are kept for the next): on a store that can be reopened, unless
    /// read-only. Also while replaying, before the log is set.
    fn checkpoints_on(&self) -> bool {
        self.config.checkpoint_every_batches > 0
            && !self.config.read_only
            && !matches!(self.config.store, crate::config::StoreChoice::Memory)
    }

    fn maybe_checkpoint(&mut self) {
        self.poll_checkpoint(false);
        if self.checkpoints_on()
            && self.ckpt.batches_since >= self.config.checkpoint_every_batches
            && self.ckpt.commands_since >= self.config.checkpoint_min_commands
            && !self.ckpt_job
        {
            if let Err(reason) = self.checkpoint() {
                self.stop_writes(format!("checkpoint failed: {reason}"));
            }
        }
    }

    /// Takes a checkpoint of the state as of `next_batch` (see
    /// `checkpoint.rs` for the layout and the write order) and hands it to
    /// the checkpoint thread, which writes it, with the deletion of the log
    /// records and the previous generation it makes redundant, while
    /// batches go on. One at a time: the caller checks none is in flight.
    fn checkpoint(&mut self) -> Result<(), String> {
        if !self.checkpoints_on() || self.ckpt_job || self.stopped.is_some() {
            return Ok(());
        }
        self.finish_inflight(&mut []);
        // The manifest will name the log's head: what it covers must be
        // durable first (it is already when every group is synced).
        let log_head = match self.log.as_mut() {
            Some(log) => {
                if !self.config.sync {
                    log.sync().map_err(|e| e.to_string())?;
                }
                log.head()
            }
            None => return Ok(()),
        };
        let generation = self.ckpt.next_generation.max(self.ckpt.manifest.generation);
        self.ckpt.next_generation = generation + 1;
        // Accounts changed since the last one, unless a full state is due:
        // none yet, the chain of deltas is long, or a try failed (the
        // shards' changes since the last durable one are not all at hand).
        let full = self.ckpt.manifest.states.is_empty()
            || self.ckpt.manifest.states.len() > checkpoint::DELTAS_MAX
            || self.ckpt.needs_full;
        let mut receivers = Vec::with_capacity(usize::from(self.shards));
        for shard in 0..self.shards {
            let (reply, rx) = crossbeam_channel::bounded(1);
            let from_chunk = self.ckpt.manifest.chunks.get(usize::from(shard)).copied();
            let from_chunk = from_chunk.unwrap_or(0);
            self.send(
                shard,
                ShardMsg::Checkpoint {
                    from_chunk,
                    full,
                    reply,
                },
            );
            receivers.push(rx);
        }
        let mut snapshots = Vec::with_capacity(receivers.len());
        for rx in receivers {
            snapshots.push(self.wait_shard(&rx)??);
        }
        let sequencer = SequencerState {
            last_ts: self.last_ts,
            stats: self.stats.clone(),
            pendings: self
                .pendings
                .iter()
                .map(|(id, p)| (*id, p.clone()))
                .collect(),
            records: self
                .records
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let job = checkpoint::Job {
            generation,
            previous: self.ckpt.manifest.clone(),
            shards: snapshots,
            block: std::mem::take(&mut self.since_checkpoint),
            sequencer,
            next_batch: self.next_batch,
            log_head,
        };
        if self.ckpt_writer.is_none() {
            self.ckpt_writer = Some(spawn_checkpoint_writer(
                self.store.clone(),
                self.cold.clone(),
            )?);
        }
        let Some((jobs, _, _)) = &self.ckpt_writer else {
            return Err("no checkpoint thread".into());
        };
        if let Err(crossbeam_channel::SendError(job)) = jobs.send(job) {
            self.since_checkpoint = job.block;
            return Err("the checkpoint thread stopped".into());
        }
        self.ckpt_job = true;
        self.ckpt.batches_since = 0;
        self.ckpt.commands_since = 0;
        Ok(())
    }

    /// Takes the checkpoint thread's answer, waiting for it if `wait`.
    fn poll_checkpoint(&mut self, wait: bool) {
        let Some((_, done, _)) = &self.ckpt_writer else {
            return;
        };
        if !self.ckpt_job {
            return;
        }
        let stopped = || Err(("the checkpoint thread died".to_string(), None));
        let result = if wait {
            done.recv().unwrap_or_else(|_| stopped())
        } else {
            match done.try_recv() {
                Ok(result) => result,
                Err(crossbeam_channel::TryRecvError::Empty) => return,
                Err(crossbeam_channel::TryRecvError::Disconnected) => stopped(),
            }
        };
        self.ckpt_job = false;
        match result {
            Ok(manifest) => {
                self.ckpt.needs_full = false;
                self.ckpt.log_from = manifest.next_batch;
                // Durable: the log's segments before it can go.
                if let Some(log) = self.log.as_mut() {
                    if let Err(e) = log.release_before(manifest.next_batch) {
                        self.stop_writes(format!("releasing log segments failed: {e}"));
                    }
                }
                self.ckpt.manifest = manifest;
                // Durable now: older chunks may leave memory.
                for (shard, &persisted) in (0u16..).zip(&self.ckpt.manifest.chunks) {
                    self.send(shard, ShardMsg::Evict { persisted });
                }
            }
            Err((reason, block)) => {
                // Fail-stop: a failed write or sync is not retried (its
                // pages may be gone), and a dead thread is not restarted.
                self.stop_writes(format!("checkpoint failed: {reason}"));
                self.ckpt.needs_full = true;
                // Nothing lost: the log still holds every batch. The next
                // checkpoint, under a new generation, carries these entries
                // in its block (the block comes back unless the thread died,
                // and then no checkpoint follows: the log is replayed).
                if let Some(mut block) = block {
                    let newer = std::mem::take(&mut self.since_checkpoint);
                    block.index.extend(newer.index);
                    block.refusals.extend(newer.refusals);
                    self.since_checkpoint = block;
                }
            }
        }
    }

    /// Takes the state a checkpoint recorded (at open, before replay).
    pub fn restore(&mut self, loaded: Loaded) -> Result<(), String> {
        let mut receivers = Vec::with_capacity(loaded.shards.len());
        for (shard, state) in (0u16..).zip(loaded.shards) {
            let (reply, rx) = crossbeam_channel::bounded(1);
            self.send(shard, ShardMsg::Restore(Box::new(state), reply));
            receivers.push(rx);
        }
        for rx in receivers {
            self.wait_shard(&rx)??;
        }
        for block in loaded.blocks {
            for (id, entry) in block.index {
                self.index.insert(id, entry);
            }
            self.refusals.extend(block.refusals);
        }
        let state = loaded.sequencer;
        self.last_ts = state.last_ts;
        self.stats = state.stats;
        for (key, value) in state.records {
            self.put_record(key, value);
        }
        for (id, pending) in state.pendings {
            if pending.status == PendingStatus::Open {
                self.deadlines.insert((pending.deadline, id));
            }
            self.pendings.insert(id, pending);
        }
        self.next_batch = loaded.manifest.next_batch;
        self.ckpt = CheckpointState {
            log_from: loaded.manifest.next_batch,
            // A try after the loaded manifest that failed before a crash
            // never became durable: its generation may be used again.
            next_generation: loaded.manifest.generation,
            manifest: loaded.manifest,
            batches_since: 0,
            commands_since: 0,
            needs_full: false,
        };
        Ok(())
    }

    pub fn hot_detail_chunks(&self) -> u32 {
        self.config.hot_detail_chunks
    }

    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    fn send(&self, shard: u16, msg: ShardMsg) {
        // A shard only stops when the sequencer drops its sender, or when it
        // panicked (then its sender is replaced by a closed one: see
        // `bury`).
        if let Some(tx) = self.shard_tx.get(usize::from(shard)) {
            let _ = tx.send(msg);
        }
    }

    /// Waits for a shard's reply; a shard found dead meanwhile stops the
    /// engine and ends the wait.
    fn wait_shard<T>(&mut self, rx: &Receiver<T>) -> Result<T, String> {
        if let Some(reason) = self.dead_reason() {
            return Err(reason);
        }
        crossbeam_channel::select! {
            recv(rx) -> reply => reply.map_err(|_| "a shard stopped".to_string()),
            recv(self.deaths) -> shard => {
                let shard = shard.unwrap_or(u16::MAX);
                self.bury(shard);
                Err(format!("shard {shard} died"))
            }
        }
    }

    /// Why the engine stopped, if a shard died.
    fn dead_reason(&self) -> Option<String> {
        self.stopped.clone().filter(|r| r.starts_with("shard"))
    }

    /// Takes note of every shard that died since the last look.
    fn note_deaths(&mut self) {
        while let Ok(shard) = self.deaths.try_recv() {
            self.bury(shard);
        }
    }

    /// A shard died: the engine stops taking writes, and the shard's
    /// sender is replaced by a closed one, which frees the messages (and
    /// the reply channels of waiting readers) left in its queue.
    fn bury(&mut self, shard: u16) {
        self.stop_writes(format!("shard {shard} died"));
        if let Some(tx) = self.shard_tx.get_mut(usize::from(shard)) {
            let (closed, _) = crossbeam_channel::bounded(0);
            *tx = closed;
        }
    }

    fn write(&mut self, requests: Vec<WriteReq>) {
        if requests.is_empty() {
            return;
        }
        let refusal = match &self.stopped {
            Some(reason) => Some(SubmitError::Stopped {
                reason: reason.clone(),
            }),
            None if self.config.read_only => Some(SubmitError::ReadOnly),
            None => None,
        };
        if let Some(error) = refusal {
            for request in requests {
                match request {
                    WriteReq::Txns(_, reply) => {
                        let _ = reply.send(Err(error.clone()));
                    }
                    WriteReq::Accounts(_, reply) => {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
            return;
        }
        let puts_records = requests.iter().any(|r| {
            matches!(r, WriteReq::Accounts(ops, _)
                if ops.iter().any(|op| matches!(op, AccountOp::PutRecord { .. })))
        });
        if puts_records {
            // The records bound is checked against settled records.
            self.finish_inflight(&mut []);
        }
        let mut answers: Vec<Pending> = Vec::with_capacity(requests.len());
        // Checked transactions per request (empty for account requests).
        let mut checked: Vec<Vec<(usize, Checked)>> = Vec::with_capacity(requests.len());
        let mut units: Vec<Unit> = Vec::new();
        for (request, req) in requests.into_iter().enumerate() {
            match req {
                WriteReq::Txns(prepared, reply) => {
                    for &(start, end) in &prepared.chains {
                        units.push(Unit::Chain {
                            request,
                            start,
                            end,
                        });
                    }
                    answers.push(Pending {
                        answer: Answer::Txns(prepared.outcomes, reply),
                        failed: None,
                    });
                    checked.push(prepared.txns);
                }
                WriteReq::Accounts(ops, reply) => {
                    let mut results = vec![None; ops.len()];
                    for (index, op) in ops.into_iter().enumerate() {
                        match self.check_account_op(op) {
                            Ok(command) => units.push(Unit::Account {
                                request,
                                index,
                                command: Box::new(command),
                            }),
                            Err(e) => results[index] = Some(Err(e)),
                        }
                    }
                    answers.push(Pending {
                        answer: Answer::Accounts(results, reply),
                        failed: None,
                    });
                    checked.push(Vec::new());
                }
            }
        }
        self.now = self.config.clock.now();
        // The builder lives across drains so its sets keep their capacity.
        let mut builder = std::mem::take(&mut self.builder);
        for unit in units {
            self.place(unit, &mut checked, &mut builder, &mut answers);
        }
        self.flush_batch(&mut builder, &mut answers);
        self.builder = builder;
        match self.inflight.as_mut() {
            // The last batch is still executing: its callers are answered
            // when it settles.
            Some(inflight) if inflight.answers.is_none() => inflight.answers = Some(answers),
            _ => {
                for pending in answers {
                    pending.reply();
                }
            }
        }
        self.maybe_checkpoint();
    }

    fn place(
        &mut self,
        unit: Unit,
        checked: &mut [Vec<(usize, Checked)>],
        builder: &mut Builder,
        answers: &mut [Pending],
    ) {
        if builder.commands.len() + unit.len() + 8 > BATCH_COMMANDS_MAX {
            self.flush_batch(builder, answers);
        }
        match unit {
            Unit::Account {
                request,
                index,
                command,
            } => {
                builder.push(*command, Slot::Account { request, index });
            }
            Unit::Chain {
                request,
                start,
                end,
            } => {
                let members = &mut checked[request][start as usize..end as usize];
                if let Fit::NeedsCut = self.fit_chain(request, members, builder, answers) {
                    // The conflict may be with the batch in flight, or with
                    // the one just cut, which is in flight next: settle both.
                    self.flush_batch(builder, answers);
                    self.finish_inflight(answers);
                    if let Fit::NeedsCut = self.fit_chain(request, members, builder, answers) {
                        // Only a conflict inside the chain itself is left.
                        let first = members.first().map_or(0, |m| m.0);
                        self.refuse_chain(
                            request,
                            members,
                            first,
                            Reject::PendingNotFound,
                            builder,
                        );
                    }
                }
            }
        }
    }

    /// Tries to add a chain to the batch: answers it from the idempotency
    /// index, refuses it for a two-phase reason, asks for a cut if it
    /// conflicts with what the batch holds, or adds it.
    fn fit_chain(
        &mut self,
        request: usize,
        members: &mut [(usize, Checked)],
        b: &mut Builder,
        answers: &mut [Pending],
    ) -> Fit {
        for (_, c) in members.iter() {
            if b.ids.contains(&c.id) || self.conflicts_pending(&c.kind, b) {
                return Fit::NeedsCut;
            }
            if let Some(f) = &self.inflight {
                let pending_touched =
                    pending_of(&c.kind).is_some_and(|p| f.pendings_touched.contains(&p));
                if f.ids.contains(&c.id) || pending_touched {
                    return Fit::NeedsCut;
                }
            }
        }
        if members.iter().any(|(_, c)| self.index.contains_key(&c.id)) {
            answers[request].fill_txns(self.answer_duplicates(members));
            return Fit::Answered;
        }
        // Members go straight into the batch (no copy through a list);
        // a failure or a cut takes them out again.
        let mut first_member = None;
        let mut referenced: FxHashMap<TxnId, Reject> = FxHashMap::default();
        let (last_ts_before, commands_before) = (self.last_ts, b.commands.len());
        // A lone transaction gives its legs away; a chain may be retried
        // after a cut, so its members keep theirs.
        let take_legs = members.len() == 1;
        let mut failure = None;
        for (k, (index, c)) in members.iter_mut().enumerate() {
            // A chain happens at once: pending transactions expire before
            // its first member, never between its members.
            let stamped = self.stamp(b, k == 0);
            let inflight_deadline = self
                .inflight
                .as_ref()
                .and_then(|f| f.new_pending_deadline_min);
            let timestamp = match stamped {
                Some(ts)
                    if b.new_pending_deadline_min.is_none_or(|d| d > ts)
                        && inflight_deadline.is_none_or(|d| d > ts) =>
                {
                    ts
                }
                _ => {
                    if let Some(at) = first_member {
                        b.commands.truncate(at);
                        b.slots.truncate(at);
                    }
                    // Give back the timestamps this chain took, so that the
                    // retry in the next batch gets the same ones.
                    self.last_ts = match b.commands.get(commands_before..).and_then(<[_]>::last) {
                        Some(Command::Txn(expiry)) => expiry.timestamp,
                        _ => last_ts_before,
                    };
                    return Fit::NeedsCut;
                }
            };
            let sequenced = match pending_of(&c.kind).and_then(|p| referenced.get(&p)) {
                Some(earlier) => Err(earlier.clone()),
                None => self.sequence(c, timestamp, b, take_legs),
            };
            match sequenced {
                Ok(t) => {
                    if let Some(p) = pending_of(&c.kind) {
                        let already = match t.kind {
                            SeqKind::Post { .. } => Reject::PendingAlreadyPosted,
                            _ => Reject::PendingAlreadyVoided,
                        };
                        referenced.insert(p, already);
                    }
                    first_member.get_or_insert(b.commands.len());
                    b.push(
                        Command::Txn(t),
                        Slot::Txn {
                            request,
                            index: *index,
                        },
                    );
                }
                Err(reject) => {
                    failure = Some((*index, reject));
                    break;
                }
            }
        }
        let first_member = first_member.unwrap_or(b.commands.len());
        if let Some((index, reject)) = failure {
            b.commands.truncate(first_member);
            b.slots.truncate(first_member);
            // The refusals take the timestamps the members took (after the
            // expiries stamped before the first member).
            self.last_ts = match b.commands.get(commands_before..).and_then(<[_]>::last) {
                Some(Command::Txn(expiry)) => expiry.timestamp,
                _ => last_ts_before,
            };
            self.refuse_chain(request, members, index, reject, b);
            return Fit::Added;
        }
        for command in &b.commands[first_member..] {
            let Command::Txn(t) = command else { continue };
            b.ids.insert(t.id);
            match t.kind {
                SeqKind::Pending { deadline } => {
                    b.pendings_touched.insert(t.id);
                    b.new_pending_deadline_min = Some(
                        b.new_pending_deadline_min
                            .map_or(deadline, |d| d.min(deadline)),
                    );
                }
                SeqKind::Post { pending } | SeqKind::Void { pending } => {
                    b.pendings_touched.insert(pending);
                }
                _ => {}
            }
        }
        Fit::Added
    }

    /// Logs the refusal of a whole chain the sequencer decided (`failed`
    /// gets `reject`, the other members `LinkedTxnFailed`), each member with
    /// a timestamp of its own: its id keeps this answer for ever, as a
    /// refusal by a shard would (one id, one answer).
    fn refuse_chain(
        &mut self,
        request: usize,
        members: &[(usize, Checked)],
        failed: usize,
        reject: Reject,
        b: &mut Builder,
    ) {
        for (index, c) in members {
            let reason = if *index == failed {
                reject.clone()
            } else {
                Reject::LinkedTxnFailed
            };
            let timestamp = Timestamp((self.last_ts.0 + 1).max(self.now.0));
            self.last_ts = timestamp;
            let txn = SeqTxn {
                id: c.id,
                code: c.code,
                timestamp,
                fingerprint: c.fingerprint,
                kind: SeqKind::Posted,
                linked: false,
                legs: Legs::new(),
            };
            b.ids.insert(c.id);
            b.push(
                Command::Refuse {
                    txn,
                    reject: reason,
                },
                Slot::Txn {
                    request,
                    index: *index,
                },
            );
        }
    }

    fn conflicts_pending(&self, kind: &TxnKind, b: &Builder) -> bool {
        pending_of(kind).is_some_and(|p| b.pendings_touched.contains(&p))
    }

    fn result_of(&self, id: TxnId, entry: &IndexEntry) -> Result<(), Reject> {
        if entry.committed() {
            return Ok(());
        }
        Err(self
            .refusals
            .get(&id)
            .map_or(Reject::LinkedTxnFailed, |(reject, _)| reject.clone()))
    }

    fn record(&self, id: TxnId) -> Option<TxnRecord> {
        self.index.get(&id).map(|entry| TxnRecord {
            id,
            code: self.refusals.get(&id).map(|(_, code)| *code),
            timestamp: entry.timestamp(),
            result: self.result_of(id, entry),
        })
    }

    fn answer_duplicates(&self, members: &[(usize, Checked)]) -> Vec<(usize, Outcome)> {
        members
            .iter()
            .map(|(index, c)| {
                let outcome = match self.index.get(&c.id) {
                    Some(r) if r.fingerprint == c.fingerprint => Outcome {
                        id: c.id,
                        timestamp: Some(r.timestamp()),
                        result: self.result_of(c.id, r),
                        duplicate: true,
                    },
                    Some(_) => unsequenced(c.id, Reject::IdConflict),
                    None => unsequenced(c.id, Reject::LinkedTxnFailed),
                };
                (*index, outcome)
            })
            .collect()
    }

    /// The next timestamp; first expires every pending transaction whose
    /// deadline it reaches, each at a timestamp of its own. `None` when a
    /// due pending transaction was already touched in this batch (its fate
    /// is not settled yet): the batch must be cut first.
    fn stamp(&mut self, b: &mut Builder, expire: bool) -> Option<Timestamp> {
        loop {
            let ts = Timestamp((self.last_ts.0 + 1).max(self.now.0));
            if !expire || b.commands.len() >= BATCH_COMMANDS_MAX - EXPIRY_HEADROOM {
                // Full: the rest expire in the next batch; `open_pending`
                // still refuses to capture anything past its deadline.
                self.last_ts = ts;
                return Some(ts);
            }
            // The deadline set does not change while a batch is built, so a
            // cursor past the last expired key finds the next due one.
            let next = match b.expired_through {
                Some(key) => self
                    .deadlines
                    .range((Bound::Excluded(key), Bound::Unbounded))
                    .next(),
                None => self.deadlines.iter().next(),
            };
            let due = next.filter(|(deadline, _)| *deadline <= ts).copied();
            let Some((deadline, id)) = due else {
                self.last_ts = ts;
                return Some(ts);
            };
            let in_flight = self
                .inflight
                .as_ref()
                .is_some_and(|f| f.pendings_touched.contains(&id));
            if b.pendings_touched.contains(&id) || in_flight {
                return None;
            }
            let Some(p) = self.pendings.get(&id) else {
                self.last_ts = ts;
                return Some(ts);
            };
            self.last_ts = ts;
            let expire = SeqTxn {
                id,
                code: p.code,
                timestamp: ts,
                fingerprint: [0, 0],
                kind: SeqKind::Expire { pending: id },
                linked: false,
                legs: p.legs.iter().map(release).collect(),
            };
            b.pendings_touched.insert(id);
            b.expired_through = Some((deadline, id));
            b.push(Command::Txn(expire), Slot::Internal);
        }
    }

    /// Turns a checked transaction into a sequenced one, resolving two-phase
    /// references against the sequencer's state.
    fn sequence(
        &self,
        c: &mut Checked,
        timestamp: Timestamp,
        b: &Builder,
        take_legs: bool,
    ) -> Result<SeqTxn, Reject> {
        if let Some(p) = pending_of(&c.kind) {
            // Touched in this batch although no earlier chain conflicted:
            // `stamp` just expired it.
            if b.pendings_touched.contains(&p) {
                return Err(Reject::PendingExpired);
            }
        }
        let mut own_legs = || {
            if take_legs {
                std::mem::take(&mut c.legs)
            } else {
                c.legs.clone()
            }
        };
        let (kind, legs) = match c.kind {
            TxnKind::Posted => (SeqKind::Posted, own_legs()),
            TxnKind::Pending { timeout_ms } => {
                let timeout_ns = timeout_ms.saturating_mul(1_000_000);
                let deadline = Timestamp(timestamp.0.saturating_add(timeout_ns));
                (SeqKind::Pending { deadline }, own_legs())
            }
            TxnKind::PostPending { pending_id } => {
                let p = self.open_pending(c.id, pending_id, timestamp)?;
                let scale = |c: Currency| self.scales.get(&c).copied().unwrap_or(0);
                (
                    SeqKind::Post {
                        pending: pending_id,
                    },
                    capture_legs(p, &c.legs, scale)?,
                )
            }
            TxnKind::VoidPending { pending_id } => {
                let p = self.open_pending(c.id, pending_id, timestamp)?;
                (
                    SeqKind::Void {
                        pending: pending_id,
                    },
                    p.legs.iter().map(release).collect(),
                )
            }
        };
        Ok(SeqTxn {
            id: c.id,
            code: c.code,
            timestamp,
            fingerprint: c.fingerprint,
            kind,
            linked: c.linked,
            legs,
        })
    }

    fn open_pending(
        &self,
        id: TxnId,
        pending_id: TxnId,
        at: Timestamp,
    ) -> Result<&PendingInfo, Reject> {
        if id == pending_id {
            return Err(Reject::PendingIsSelf);
        }
        let p = self
            .pendings
            .get(&pending_id)
            .ok_or(Reject::PendingNotFound)?;
        match p.status {
            PendingStatus::Open if p.deadline <= at => Err(Reject::PendingExpired),
            PendingStatus::Open => Ok(p),
            PendingStatus::Posted => Err(Reject::PendingAlreadyPosted),
            PendingStatus::Voided => Err(Reject::PendingAlreadyVoided),
            PendingStatus::Expired => Err(Reject::PendingExpired),
        }
    }

    /// Writes the batch to the log and starts it on the shards, after the
    /// batch in flight settles. It is answered when it settles in turn: at
    /// the next cut, or when nothing else waits (pipelining: the shards
    /// execute one batch while the sequencer builds the next). On a storage
    /// failure nothing of it is applied and every request with a command in
    /// it fails.
    fn flush_batch(&mut self, b: &mut Builder, answers: &mut [Pending]) {
        if b.commands.is_empty() {
            return;
        }
        if let Some(reason) = self.stopped.clone() {
            // Stopped earlier in this drain: nothing more is logged.
            for slot in &b.slots {
                if let Slot::Txn { request, .. } | Slot::Account { request, .. } = *slot {
                    if let Some(answer) = answers.get_mut(request) {
                        answer.failed = Some(SubmitError::Stopped {
                            reason: reason.clone(),
                        });
                    }
                }
            }
            b.commands.clear();
            b.clear();
            return;
        }
        // The next batch is likely the size of this one: allocating that
        // up front spares the copies of a growing vector.
        let hint = b.commands.len();
        let commands = std::mem::replace(&mut b.commands, Vec::with_capacity(hint));
        let slots = std::mem::take(&mut b.slots);
        let (ids, pendings_touched) = (
            std::mem::take(&mut b.ids),
            std::mem::take(&mut b.pendings_touched),
        );
        let new_pending_deadline_min = b.new_pending_deadline_min;
        b.clear();
        // Logged while the shards still execute the batch in flight: the
        // log's order is the batch order either way.
        let logged = self.log(&commands);
        let previous = self.inflight.take().map(|f| {
            let results = self.complete(&f.batch);
            (f, results)
        });
        let launched = match logged {
            Ok(()) if self.stopped.is_none() => Some(self.launch(commands)),
            Ok(()) => {
                // Logged, but a shard died meanwhile: its fate is the log's.
                let reason = self.stopped.clone().unwrap_or_default();
                fail_slots(&slots, answers, SubmitError::OutcomeUnknown { reason });
                None
            }
            Err(reason) => {
                // The record may or may not have reached the disk.
                self.stop_writes(format!("log write failed: {reason}"));
                fail_slots(&slots, answers, SubmitError::OutcomeUnknown { reason });
                None
            }
        };
        // The shards run the new batch while the previous one settles here.
        if let Some((f, results)) = previous {
            match results {
                Ok(results) => {
                    let parts = self.settle_and_answer(f, &results, answers);
                    b.reuse(parts);
                }
                Err(reason) => self.abandon(f, reason, answers),
            }
        }
        if let Some(batch) = launched {
            self.inflight = Some(InFlight {
                batch,
                slots,
                ids,
                pendings_touched,
                new_pending_deadline_min,
                answers: None,
            });
        }
    }

    /// Waits for the batch in flight, settles it and answers its callers.
    /// `answers` are the current drain's, used when the batch belongs to it.
    fn finish_inflight(&mut self, answers: &mut [Pending]) {
        let Some(f) = self.inflight.take() else {
            return;
        };
        match self.complete(&f.batch) {
            Ok(results) => {
                let parts = self.settle_and_answer(f, &results, answers);
                self.builder.reuse(parts);
            }
            Err(reason) => self.abandon(f, reason, answers),
        }
    }

    /// A logged batch that could not be executed (a shard died): the engine
    /// stops, and its callers learn that the outcome is unknown (the log
    /// decides at the next open).
    fn abandon(&mut self, f: InFlight, reason: String, answers: &mut [Pending]) {
        self.stop_writes(reason.clone());
        let mut own = f.answers;
        let answers: &mut [Pending] = match own.as_mut() {
            Some(own) => own,
            None => answers,
        };
        fail_slots(&f.slots, answers, SubmitError::OutcomeUnknown { reason });
        for pending in own.into_iter().flatten() {
            pending.reply();
        }
    }

    /// Settles an executed batch and fills its answers; replies to its
    /// callers if their drain has ended. Gives back the batch's sets and
    /// slots for reuse.
    fn settle_and_answer(
        &mut self,
        f: InFlight,
        results: &[Result<(), CmdError>],
        answers: &mut [Pending],
    ) -> BatchParts {
        let InFlight {
            batch,
            slots,
            ids,
            pendings_touched,
            answers: own,
            ..
        } = f;
        self.settle(&batch.commands, results);
        let mut own = own;
        let answers: &mut [Pending] = match own.as_mut() {
            Some(own) => own,
            None => answers,
        };
        for ((command, slot), result) in batch.commands.iter().zip(&slots).zip(results) {
            match (*slot, command) {
                (
                    Slot::Txn { request, index },
                    Command::Txn(t) | Command::Refuse { txn: t, .. },
                ) => {
                    let result = result.clone().map_err(|e| match e {
                        CmdError::Txn(r) => r,
                        CmdError::Account(_) => Reject::LinkedTxnFailed,
                    });
                    let outcome = Outcome {
                        id: t.id,
                        timestamp: Some(t.timestamp),
                        result,
                        duplicate: false,
                    };
                    if let Some(answer) = answers.get_mut(request) {
                        answer.fill_txn(index, outcome);
                    }
                }
                (Slot::Account { request, index }, _) => {
                    let result = result.clone().map_err(|e| match e {
                        CmdError::Account(a) => a,
                        CmdError::Txn(_) => AccountError::NotFound(AccountId(0)),
                    });
                    if let Some(answer) = answers.get_mut(request) {
                        answer.fill_account(index, result);
                    }
                }
                _ => {}
            }
        }
        for pending in own.into_iter().flatten() {
            pending.reply();
        }
        (ids, pendings_touched, slots)
    }

    /// Appends the batch to the log and syncs it (group commit: one
    /// `fdatasync` per batch). On failure the log takes no more writes.
    fn log(&mut self, commands: &[Command]) -> Result<(), String> {
        let Some(log) = self.log.as_mut() else {
            // A fresh in-memory store cannot be reopened: a log in it
            // could never be replayed, so it is not written.
            self.next_batch += 1;
            self.stats.batches += 1;
            return Ok(());
        };
        debug_assert_eq!(log.next_batch(), self.next_batch);
        log.append(&encode_batch(commands))
            .map_err(|e| e.to_string())?;
        self.ckpt.batches_since += 1;
        self.ckpt.commands_since += commands.len() as u64;
        self.next_batch += 1;
        self.stats.batches += 1;
        Ok(())
    }

    /// Starts a batch on its shards.
    fn launch(&mut self, commands: Vec<Command>) -> Arc<Batch> {
        let batch = Arc::new(Batch::new(commands));
        for shard in bits(batch.mask()) {
            self.send(shard, ShardMsg::Execute(batch.clone()));
        }
        batch
    }

    /// Collects a launched batch's votes, repairs until every group's votes
    /// agree, and commits it on the shards.
    fn complete(&mut self, batch: &Batch) -> Result<Vec<Result<(), CmdError>>, String> {
        let mask = batch.mask();
        let mut refusals: Vec<Vec<Refusal>> = vec![Vec::new(); usize::from(self.shards)];
        let mut refused = vec![0u64; batch.groups.len()];
        self.collect(mask.count_ones(), &mut refusals, &mut refused)?;
        let mut cursor = 0usize;
        while let Some(g) = first_mixed(batch, &refused, cursor) {
            let accepted = batch.groups[g].mask & !refused[g];
            for shard in bits(accepted) {
                self.send(
                    shard,
                    ShardMsg::Repair {
                        from_group: g as u32,
                    },
                );
            }
            for shard in bits(accepted) {
                for r in refusals[usize::from(shard)]
                    .iter()
                    .filter(|r| r.group as usize > g)
                {
                    refused[r.group as usize] &= !(1u64 << shard);
                }
                refusals[usize::from(shard)].retain(|r| r.group as usize <= g);
            }
            self.collect(accepted.count_ones(), &mut refusals, &mut refused)?;
            cursor = g + 1;
        }
        for shard in bits(mask) {
            self.send(shard, ShardMsg::Commit);
        }
        Ok(results(batch, &refusals, &refused))
    }

    /// Waits for `replies` votes. A shard that died (or a vote channel
    /// gone) is an error, never a missing "no": the engine stops.
    fn collect(
        &mut self,
        replies: u32,
        refusals: &mut [Vec<Refusal>],
        refused: &mut [u64],
    ) -> Result<(), String> {
        if let Some(reason) = self.dead_reason() {
            return Err(reason);
        }
        for _ in 0..replies {
            let vote = crossbeam_channel::select! {
                recv(self.votes) -> vote => vote.ok(),
                recv(self.deaths) -> shard => {
                    self.bury(shard.unwrap_or(u16::MAX));
                    None
                }
            };
            let Some(vote) = vote else {
                let reason = self
                    .dead_reason()
                    .unwrap_or_else(|| "shards: the vote channel closed".to_string());
                self.stop_writes(reason.clone());
                return Err(reason);
            };
            for r in &vote.refusals {
                refused[r.group as usize] |= 1u64 << vote.shard;
            }
            refusals[usize::from(vote.shard)].extend(vote.refusals);
        }
        Ok(())
    }

    /// Updates the idempotency index and two-phase state from a settled batch.
    fn settle(&mut self, commands: &[Command], results: &[Result<(), CmdError>]) {
        let checkpointing = self.checkpoints_on();
        for (command, result) in commands.iter().zip(results) {
            if let (Command::Record { key, value }, Ok(())) = (command, result) {
                self.put_record(key.clone(), value.clone());
            }
            let (Command::Txn(t) | Command::Refuse { txn: t, .. }) = command else {
                continue;
            };
            self.last_ts = self.last_ts.max(t.timestamp);
            let committed = result.is_ok();
            if committed {
                self.settle_pending(t);
            }
            if let SeqKind::Expire { .. } = t.kind {
                continue;
            }
            if committed {
                self.stats.committed += 1;
            } else {
                self.stats.rejected += 1;
            }
            if let Err(e) = result {
                let reject = match e {
                    CmdError::Txn(r) => r.clone(),
                    CmdError::Account(_) => Reject::LinkedTxnFailed,
                };
                if checkpointing {
                    self.since_checkpoint
                        .refusals
                        .push((t.id, (reject.clone(), t.code)));
                }
                self.refusals.insert(t.id, (reject, t.code));
            }
            let entry = IndexEntry::new(t.fingerprint, t.timestamp, committed);
            if checkpointing {
                self.since_checkpoint.index.push((t.id, entry));
            }
            self.index.insert(t.id, entry);
        }
    }

    fn settle_pending(&mut self, t: &SeqTxn) {
        let (pending, status) = match t.kind {
            SeqKind::Posted => return,
            SeqKind::Pending { deadline } => {
                let legs = t.legs.clone();
                let info = PendingInfo {
                    code: t.code,
                    deadline,
                    legs,
                    status: PendingStatus::Open,
                };
                self.pendings.insert(t.id, info);
                self.deadlines.insert((deadline, t.id));
                return;
            }
            SeqKind::Post { pending } => (pending, PendingStatus::Posted),
            SeqKind::Void { pending } => (pending, PendingStatus::Voided),
            SeqKind::Expire { pending } => (pending, PendingStatus::Expired),
        };
        if let Some(p) = self.pendings.get_mut(&pending) {
            p.status = status;
            self.deadlines.remove(&(p.deadline, pending));
        }
    }

    fn check_account_op(&self, op: AccountOp) -> Result<Command, AccountError> {
        match op {
            AccountOp::Open(new) => {
                let scale = *self
                    .scales
                    .get(&new.currency)
                    .ok_or(AccountError::UnknownCurrency(new.currency))?;
                let limit = Minor::from_decimal(new.credit_limit, scale)
                    .filter(|m| m.0 >= 0)
                    .ok_or(AccountError::InvalidCreditLimit(new.credit_limit))?;
                Ok(Command::Open(OpenSpec {
                    id: new.id,
                    currency: new.currency,
                    scale: scale as u8,
                    subject: new.subject,
                    kind: new.kind,
                    normal_side: new.normal_side,
                    allow_negative: new.allow_negative,
                    credit_limit: limit,
                    shard: self.route(new.id),
                }))
            }
            AccountOp::SetStatus { account, status } => Ok(Command::SetStatus {
                account,
                status,
                shard: self.route(account),
            }),
            AccountOp::PutRecord { key, value } => {
                if key.is_empty() || key.len() > RECORD_KEY_MAX || value.len() > RECORD_VALUE_MAX {
                    return Err(AccountError::RecordSize {
                        key_len: key.len(),
                        value_len: value.len(),
                    });
                }
                let replaced = self.records.get(&key).map_or(0, |v| key.len() + v.len());
                // Checked when sequenced: one batch may pass the bound by at
                // most its own records.
                let max = self.config.records_bytes_max;
                if self.records_bytes - replaced + key.len() + value.len() > max {
                    return Err(AccountError::RecordsFull { max });
                }
                Ok(Command::Record { key, value })
            }
        }
    }
}

enum WriteReq {
    Txns(Prepared, TxnReply),
    Accounts(Vec<AccountOp>, AccountReply),
}

enum Unit {
    /// A chain: `checked[request][start..end]`.
    Chain {
        request: usize,
        start: u32,
        end: u32,
    },
    Account {
        request: usize,
        index: usize,
        command: Box<Command>,
    },
}

impl Unit {
    fn len(&self) -> usize {
        match self {
            Unit::Chain { start, end, .. } => (end - start) as usize,
            Unit::Account { .. } => 1,
        }
    }
}

impl Pending {
    fn fill_txn(&mut self, index: usize, outcome: Outcome) {
        if let Answer::Txns(slots, _) = &mut self.answer {
            slots[index] = Some(outcome);
        }
    }

    fn fill_txns(&mut self, outcomes: Vec<(usize, Outcome)>) {
        if let Answer::Txns(slots, _) = &mut self.answer {
            for (i, o) in outcomes {
                slots[i] = Some(o);
            }
        }
    }

    fn fill_account(&mut self, index: usize, result: Result<(), AccountError>) {
        if let Answer::Accounts(slots, _) = &mut self.answer {
            slots[index] = Some(result);
        }
    }

    fn reply(self) {
        // A caller that stopped waiting is not an error.
        match self.answer {
            Answer::Txns(slots, reply) => {
                let answer = match self.failed {
                    Some(e) => Err(e),
                    None => Ok(slots),
                };
                let _ = reply.send(answer);
            }
            Answer::Accounts(slots, reply) => {
                let answer = match self.failed {
                    Some(e) => Err(e),
                    None => Ok(slots.into_iter().flatten().collect()),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

/// Fails every request with a command among `slots`.
fn fail_slots(slots: &[Slot], answers: &mut [Pending], error: SubmitError) {
    for slot in slots {
        if let Slot::Txn { request, .. } | Slot::Account { request, .. } = *slot {
            if let Some(answer) = answers.get_mut(request) {
                answer.failed = Some(error.clone());
            }
        }
    }
}

fn pending_of(kind: &TxnKind) -> Option<TxnId> {
    match *kind {
        TxnKind::PostPending { pending_id } | TxnKind::VoidPending { pending_id } => {
            Some(pending_id)
        }
        _ => None,
    }
}

fn release(leg: &SeqLeg) -> SeqLeg {
    SeqLeg {
        op: LegOp::Release {
            reserved: Minor(leg.amount),
        },
        ..*leg
    }
}

/// The legs of a capture: the pending legs in full, or the restated amounts.
fn capture_legs(
    p: &PendingInfo,
    restated: &[SeqLeg],
    scale: impl Fn(Currency) -> u32,
) -> Result<Legs, Reject> {
    if restated.is_empty() {
        return Ok(p
            .legs
            .iter()
            .map(|l| SeqLeg {
                op: LegOp::Capture {
                    reserved: Minor(l.amount),
                },
                ..*l
            })
            .collect());
    }
    if restated.len() != p.legs.len() {
        return Err(Reject::PostLegCount {
            expected: p.legs.len(),
            got: restated.len(),
        });
    }
    let mut legs = Legs::with_capacity(restated.len());
    for (i, (new, old)) in restated.iter().zip(&p.legs).enumerate() {
        let n = i as u16;
        let same = new.account == old.account
            && new.side == old.side
            && new.currency == old.currency
            && new.bucket == old.bucket;
        if !same {
            return Err(Reject::PostLegMismatch { leg: n });
        }
        if new.amount > old.amount {
            return Err(Reject::PostExceedsPending {
                leg: n,
                reserved: Minor(old.amount).to_decimal(scale(old.currency)),
                requested: Minor(new.amount).to_decimal(scale(new.currency)),
            });
        }
        legs.push(SeqLeg {
            op: LegOp::Capture {
                reserved: Minor(old.amount),
            },
            ..*new
        });
    }
    Ok(legs)
}

/// The first group, from `cursor`, that some shard refused and another
/// accepted (and so applied speculatively).
fn first_mixed(batch: &Batch, refused: &[u64], cursor: usize) -> Option<usize> {
    (cursor..batch.groups.len())
        .find(|&g| refused[g] != 0 && batch.groups[g].mask & !refused[g] != 0)
}

/// Per command: committed, or the refusal of the first failing leg of the
/// first failing command of its group (others in the group: linked failure).
fn results(batch: &Batch, refusals: &[Vec<Refusal>], refused: &[u64]) -> Vec<Result<(), CmdError>> {
    let mut out: Vec<Result<(), CmdError>> = vec![Ok(()); batch.commands.len()];
    let mut best: FxHashMap<u32, &Refusal> = FxHashMap::default();
    for r in refusals.iter().flatten() {
        if refused[r.group as usize] == 0 {
            continue;
        }
        let key = |r: &Refusal| (r.command, leg_of(&r.error));
        best.entry(r.group)
            .and_modify(|b| {
                if key(r) < key(b) {
                    *b = r;
                }
            })
            .or_insert(r);
    }
    for (g, r) in best {
        let group = batch.groups[g as usize];
        for c in group.start..group.end {
            out[c as usize] = if c == r.command {
                Err(r.error.clone())
            } else {
                Err(CmdError::Txn(Reject::LinkedTxnFailed))
            };
        }
    }
    for (command, result) in batch.commands.iter().zip(out.iter_mut()) {
        if let Command::Refuse { reject, .. } = command {
            *result = Err(CmdError::Txn(reject.clone()));
        }
    }
    out
}

fn leg_of(e: &CmdError) -> u16 {
    match e {
        CmdError::Txn(r) => r.leg(),
        CmdError::Account(_) => 0,
    }
}

fn bits(mask: u64) -> impl Iterator<Item = u16> {
    (0..64u16).filter(move |s| mask & (1u64 << s) != 0)
}

/// The checkpoint thread: encodes, writes and flushes each checkpoint it is
/// handed, one at a time; answers with its manifest once durable, or with
/// the reason and the index block it was given.
type CheckpointWriter = (
    Sender<checkpoint::Job>,
    Receiver<checkpoint::Written>,
    std::thread::JoinHandle<()>,
);

fn spawn_checkpoint_writer(
    store: Arc<dyn Store>,
    cold: Arc<dyn BlobStore>,
) -> Result<CheckpointWriter, String> {
    let (jobs_tx, jobs) = crossbeam_channel::bounded::<checkpoint::Job>(1);
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let handle = std::thread::Builder::new()
        .name("tally-checkpoint".into())
        .spawn(move || {
            for job in jobs {
                let written = checkpoint::write(store.as_ref(), cold.as_ref(), job);
                if done_tx.send(written).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok((jobs_tx, done, handle))
}
