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

use crate::account::{AccountError, AccountStatus, NewAccount, RECORD_KEY_MAX, RECORD_VALUE_MAX};
use crate::check::{Checked, Prepared};
use crate::checkpoint::{self, Loaded, Manifest, SequencerState};
use crate::state::{IndexEntry, PendingStatus, SequencerAudit};

mod checkpointer;
mod index;
mod pipeline;
mod syncer;
mod two_phase;

use crate::command::{encode_batch, Command, Legs, OpenSpec, SeqKind, SeqTxn};
use crate::config::{Config, SubmitError};
use crate::routing::shard_of;
use crate::shard::{Batch, CmdError, Read, Refusal, ShardAudit, ShardMsg, Vote};
use crate::txn::{Outcome, Reject, TxnKind};
use crate::types::{AccountId, Currency, Minor, Timestamp, TxnCode, TxnId};
use checkpointer::{CheckpointState, CheckpointWriter};
use crossbeam_channel::{Receiver, Sender};
use index::Idempotency;
use pipeline::{Builder, InFlight};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use syncer::Syncer;
use tally_storage::{BlobStore, Keyspace, Store, Wal, WriteBatch};
use tokio::sync::{mpsc, oneshot};
use two_phase::{capture_legs, pending_of, release, TwoPhase};

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
    /// Ends accounting day `date` (see [`crate::Engine::close_day`]).
    CloseDay {
        date: crate::AccountingDate,
    },
}

/// One outcome per transaction of the call, in order, every slot filled;
/// flattened by the caller, off the sequencer's thread.
pub(crate) type TxnReply = oneshot::Sender<Result<Vec<Option<Outcome>>, SubmitError>>;
/// A look-up of transactions: the sequencer's record of each, and one
/// receiver per shard holding, per committed record in order, its details
/// on that shard.
pub(crate) type TxnReadReply = oneshot::Sender<(
    Vec<Option<TxnRecord>>,
    Vec<oneshot::Receiver<crate::shard::ColdResult<Vec<Vec<crate::DetailView>>>>>,
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

pub(crate) enum Request {
    Submit(Prepared, TxnReply),
    Accounts(Vec<AccountOp>, AccountReply),
    Read(u16, Read),
    Txns(Vec<TxnId>, TxnReadReply),
    Audit(oneshot::Sender<(SequencerAudit, Vec<oneshot::Receiver<ShardAudit>>)>),
    /// Records whose key starts with `prefix`, after `after`, at most `limit`.
    Records {
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
        reply: oneshot::Sender<Vec<(Vec<u8>, Vec<u8>)>>,
    },
    Shutdown(oneshot::Sender<Result<(), SubmitError>>),
    /// The accounting date open and the one closed last.
    Calendar(oneshot::Sender<crate::types::Calendar>),
    /// From the ticker: expire pending transfers past their deadline.
    Tick,
    /// Fault injection: make a shard thread panic.
    CrashShard(u16),
}

/// Where a command's answer goes.
#[derive(Clone, Copy)]
enum Slot {
    Txn { request: usize, index: usize },
    Account { request: usize, index: usize },
    Internal,
}

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

/// Why a transaction was not sequenced: refused (the refusal is logged and
/// answered), or the index could not be read (nothing is logged and the
/// engine stops: see `Sequencer::index_unreadable`).
enum NotSequenced {
    Refused(Reject),
    Unreadable(String),
}

pub(crate) struct Sequencer {
    shards: u16,
    scales: FxHashMap<Currency, u32>,
    config: Config,
    store: Arc<dyn Store>,
    /// Where checkpoints put detail chunks (see `Engine::open`).
    cold: Arc<dyn BlobStore>,
    /// Where checkpoints move chunks past the online window (`tier.rs`).
    tier: Arc<crate::tier::ColdStore>,
    shard_tx: Vec<Sender<ShardMsg>>,
    votes: Receiver<Vote>,
    /// Shards that panicked: any makes the engine stop.
    deaths: Receiver<u16>,
    /// The command log (`None` in memory: nothing to replay it from).
    log: Option<Wal>,
    /// Runs the sync of the batch just logged (`syncer.rs`).
    syncer: Syncer,
    /// Commands of the batch logged whose sync is still running.
    unsynced: Option<usize>,
    /// Why the engine stopped taking writes (a failed log write or sync, a
    /// dead thread, a failed checkpoint). Sticky: only a reopen clears it.
    stopped: Option<String>,
    last_ts: Timestamp,
    /// The newest timestamp logged: every logged one is strictly newer.
    last_logged_ts: Timestamp,
    next_batch: u64,
    /// Every id ever sequenced (`index.rs`).
    ids: Idempotency,
    /// The clock, read once per drained set of requests.
    now: Timestamp,
    /// Pending transfers and their deadlines (`two_phase.rs`).
    two_phase: TwoPhase,
    stats: SequencerAudit,
    builder: Builder,
    inflight: Option<InFlight>,
    /// Metadata records (`AccountOp::PutRecord`).
    records: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Bytes of keys and values in `records` (bounded by `RECORDS_BYTES_MAX`).
    records_bytes: usize,
    ckpt: CheckpointState,
    /// The checkpoint thread: writes and flushes a checkpoint while batches
    /// go on, and answers with the manifest it made durable.
    ckpt_writer: Option<CheckpointWriter>,
    /// A checkpoint is being written.
    ckpt_job: bool,
    /// The accounting date open, as of the last batch launched (a close
    /// is in the log, so replay moves it the same way).
    calendar: crate::types::Calendar,
}

impl Sequencer {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        cold: Arc<dyn BlobStore>,
        tier: Arc<crate::tier::ColdStore>,
        shard_tx: Vec<Sender<ShardMsg>>,
        votes: Receiver<Vote>,
        deaths: Receiver<u16>,
    ) -> Sequencer {
        let mut sequencer = Sequencer {
            shards: config.shards,
            scales: config.currencies.iter().copied().collect(),
            config,
            store,
            cold,
            tier,
            shard_tx,
            votes,
            deaths,
            log: None,
            syncer: Syncer::default(),
            unsynced: None,
            stopped: None,
            last_ts: Timestamp(0),
            last_logged_ts: Timestamp(0),
            next_batch: 0,
            ids: Idempotency::default(),
            now: Timestamp(0),
            two_phase: TwoPhase::default(),
            stats: SequencerAudit::default(),
            builder: Builder::default(),
            inflight: None,
            records: BTreeMap::new(),
            records_bytes: 0,
            ckpt: CheckpointState::default(),
            ckpt_writer: None,
            ckpt_job: false,
            calendar: crate::types::Calendar::default(),
        };
        sequencer.two_phase = TwoPhase::evicting(sequencer.checkpoints_on());
        sequencer
    }

    /// The keys of this store's index runs (at open, before a restore).
    pub fn set_index_keys(&mut self, keys: crate::runs::Keys) {
        let budget = self.config.index_cache_bytes;
        self.ids.set_store(self.cold.clone(), keys, budget);
    }

    /// The cache of the index runs' headers (for the runs a restore loads).
    pub fn index_cache(&self) -> Arc<crate::runs::HeaderCache> {
        self.ids.cache()
    }

    pub fn route(&self, account: AccountId) -> u16 {
        shard_of(account, self.shards).0
    }

    /// The log batches go to from now on (after recovery).
    pub fn set_log(&mut self, log: Wal) {
        self.log = Some(log);
        self.last_logged_ts = self.last_ts;
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
        // A merge under way is finished and named by a last checkpoint
        // (else its files are only space, deleted at the next open); naming
        // one may start the next level's, so a few rounds, bounded.
        self.poll_compaction(true);
        for _ in 0..8 {
            let due = self.ckpt.batches_since > 0 || self.ckpt.compacted.is_some();
            if !due || self.stopped.is_some() || !self.checkpoints_on() {
                break;
            }
            let _ = self.checkpoint();
            self.poll_checkpoint(true);
            self.poll_compaction(true);
        }
        self.bury_runs();
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
            crate::state::CLOSED_KEY.to_vec(),
            crate::state::closed_record(self.next_batch),
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
        // Reads see settled state only, and a shard must not be asked
        // while it holds a batch not yet committed — except a close's scan
        // of a closed date, which goes on between batches in flight (so a
        // close does not stall the pipeline hundreds of times): it reads
        // only details dated on or before the cut, which no batch after
        // the cut changes, and each account's newest detail against its
        // balance, which every applied or rolled-back group keeps equal.
        let settle = reads
            .iter()
            .any(|r| !matches!(r, Request::Read(_, crate::shard::Read::Day(..))));
        if settle {
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
            Request::Calendar(reply) => {
                let _ = reply.send(self.calendar);
            }
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
            Request::Txns(ids, reply) => {
                let mut records = Vec::with_capacity(ids.len());
                for id in ids {
                    match self.ids.record(id) {
                        Ok(record) => records.push(record),
                        Err(reason) => {
                            // Not known is not what the index said: stop, and
                            // answer as if the engine were gone.
                            self.stop_writes(format!("idempotency index unreadable: {reason}"));
                            return;
                        }
                    }
                }
                let committed: Vec<Timestamp> = records
                    .iter()
                    .flatten()
                    .filter(|r| r.result.is_ok())
                    .map(|r| r.timestamp)
                    .collect();
                let mut receivers = Vec::new();
                if !committed.is_empty() {
                    // Shards answer by timestamp from a sorted table: asking
                    // all of them costs a binary search each.
                    for shard in 0..self.shards {
                        let (tx, rx) = oneshot::channel();
                        self.send(
                            shard,
                            ShardMsg::Read(Read::TxnDetails(committed.clone(), tx)),
                        );
                        receivers.push(rx);
                    }
                }
                let _ = reply.send((records, receivers));
            }
            Request::Audit(reply) => {
                let mut receivers = Vec::new();
                for shard in 0..self.shards {
                    let (tx, rx) = oneshot::channel();
                    self.send(shard, ShardMsg::Read(Read::Audit(tx)));
                    receivers.push(rx);
                }
                // The index's runs are checked too, off this thread: their
                // part is an empty shard audit that may say unreadable.
                receivers.push(self.ids.verify_in_background());
                let mut stats = self.stats.clone();
                stats.pending_open = self.two_phase.open_count();
                let (ids, headers, run_bytes) = self.ids.resident();
                stats.memory = crate::state::IndexMemory {
                    ids_in_ram: ids as u64,
                    runs: self.ids.runs().len() as u64,
                    run_headers_in_ram: headers as u64,
                    run_bytes_in_ram: run_bytes as u64,
                    pendings_in_ram: self.two_phase.len() as u64,
                };
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
            .two_phase
            .next_deadline(None)
            .is_some_and(|(deadline, _)| deadline < self.now);
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
        let known = members.iter().try_fold(false, |any, (_, c)| {
            Ok::<bool, String>(any || self.ids.contains(c.id)?)
        });
        let answered = match known {
            Ok(true) => self.ids.answer_duplicates(members).map(Some),
            Ok(false) => Ok(None),
            Err(reason) => Err(reason),
        };
        match answered {
            Ok(Some(outcomes)) => {
                answers[request].fill_txns(outcomes);
                return Fit::Answered;
            }
            Ok(None) => {}
            Err(reason) => {
                self.index_unreadable(request, reason, answers);
                return Fit::Answered;
            }
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
                Some(earlier) => Err(NotSequenced::Refused(earlier.clone())),
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
                Err(not) => {
                    failure = Some((*index, not));
                    break;
                }
            }
        }
        let first_member = first_member.unwrap_or(b.commands.len());
        if let Some((index, not)) = failure {
            b.commands.truncate(first_member);
            b.slots.truncate(first_member);
            // The refusals take the timestamps the members took (after the
            // expiries stamped before the first member).
            self.last_ts = match b.commands.get(commands_before..).and_then(<[_]>::last) {
                Some(Command::Txn(expiry)) => expiry.timestamp,
                _ => last_ts_before,
            };
            match not {
                NotSequenced::Refused(reject) => {
                    self.refuse_chain(request, members, index, reject, b);
                    return Fit::Added;
                }
                NotSequenced::Unreadable(reason) => {
                    self.index_unreadable(request, reason, answers);
                    return Fit::Answered;
                }
            }
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

    /// The index could not answer for a member of this request (a run's
    /// page unreadable or damaged): its outcome cannot be decided, so the
    /// engine stops taking writes and the call fails with nothing of it
    /// logged.
    fn index_unreadable(&mut self, request: usize, reason: String, answers: &mut [Pending]) {
        let reason = format!("idempotency index unreadable: {reason}");
        self.stop_writes(reason.clone());
        if let Some(answer) = answers.get_mut(request) {
            answer.failed = Some(SubmitError::Stopped { reason });
        }
    }

    /// The pending transfer a post or void names, open, or why not; one
    /// that left memory is answered from the index's runs.
    fn open_pending(
        &self,
        id: TxnId,
        pending_id: TxnId,
        at: Timestamp,
    ) -> Result<&crate::state::PendingInfo, NotSequenced> {
        match self.two_phase.open(id, pending_id, at) {
            Err(Reject::PendingNotFound) => {
                let status = self
                    .ids
                    .resolution(pending_id)
                    .map_err(NotSequenced::Unreadable)?;
                Err(NotSequenced::Refused(match status {
                    Some(PendingStatus::Posted) => Reject::PendingAlreadyPosted,
                    Some(PendingStatus::Voided) => Reject::PendingAlreadyVoided,
                    Some(PendingStatus::Expired) => Reject::PendingExpired,
                    Some(PendingStatus::Open) | None => Reject::PendingNotFound,
                }))
            }
            other => other.map_err(NotSequenced::Refused),
        }
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
            let next = self.two_phase.next_deadline(b.expired_through);
            let due = next.filter(|(deadline, _)| *deadline <= ts);
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
            let Some(p) = self.two_phase.get(&id) else {
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
    ) -> Result<SeqTxn, NotSequenced> {
        if let Some(p) = pending_of(&c.kind) {
            // Touched in this batch although no earlier chain conflicted:
            // `stamp` just expired it.
            if b.pendings_touched.contains(&p) {
                return Err(NotSequenced::Refused(Reject::PendingExpired));
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
                    capture_legs(p, &c.legs, scale).map_err(NotSequenced::Refused)?,
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
            AccountOp::CloseDay { date } => self.check_close(date),
        }
    }

    /// A close of the date open, or of the one closed last (answered as
    /// done: the command is a no-op in its batch). Before any close the
    /// date open is the clock's: today's or yesterday's may be closed.
    fn check_close(&self, date: crate::AccountingDate) -> Result<Command, AccountError> {
        let ok = match self.calendar.open {
            Some(open) => date == open || Some(date) == self.calendar.last_closed,
            None => {
                let today = crate::shard::accounting_date(
                    self.config.clock.now(),
                    self.config.utc_offset_s,
                );
                date == today || date == today.prev()
            }
        };
        if !ok {
            return Err(AccountError::DayNotOpen {
                date,
                open: self.calendar.open,
            });
        }
        Ok(Command::CloseDay { date })
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
        // Every slot is filled before an answer, or the engine stops loudly
        // (TigerBeetle style): a missing outcome must never be answered as a
        // shorter list.
        if self.failed.is_none() {
            let filled = match &self.answer {
                Answer::Txns(slots, _) => slots.iter().all(Option::is_some),
                Answer::Accounts(slots, _) => slots.iter().all(Option::is_some),
            };
            assert!(
                filled,
                "invariant broken: a call answered with an outcome missing"
            );
        }
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

fn bits(mask: u64) -> impl Iterator<Item = u16> {
    (0..64u16).filter(move |s| mask & (1u64 << s) != 0)
}
