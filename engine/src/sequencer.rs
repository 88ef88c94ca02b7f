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

use crate::account::{AccountError, AccountStatus, LegOp, NewAccount};
use crate::command::{encode_batch, Command, OpenSpec, SeqKind, SeqLeg, SeqTxn};
use crate::config::{Config, SubmitError};
use crate::routing::shard_of;
use crate::shard::{Batch, CmdError, Read, Refusal, ShardAudit, ShardMsg, Vote};
use crate::txn::{Outcome, Reject, Transaction, TxnKind, LEGS_MAX};
use crate::types::{AccountId, Currency, Minor, Side, Timestamp, TxnCode, TxnId};
use crossbeam_channel::{Receiver, Sender};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;
use tally_storage::{Keyspace, Store, WriteBatch};
use tokio::sync::{mpsc, oneshot};

/// Commands per batch, at most (a batch is one log record).
pub const BATCH_COMMANDS_MAX: usize = 16_384;

/// Room kept in a batch for the chain being placed; expiries stop there.
const EXPIRY_HEADROOM: usize = crate::txn::LEGS_MAX * 2;

pub(crate) const KEYSPACE_META: Keyspace = Keyspace(0);
pub(crate) const KEYSPACE_LOG: Keyspace = Keyspace(1);

/// An operation on accounts, sequenced like a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountOp {
    Open(NewAccount),
    SetStatus {
        account: AccountId,
        status: AccountStatus,
    },
}

pub(crate) type TxnReply = oneshot::Sender<Result<Vec<Outcome>, SubmitError>>;
pub(crate) type AccountReply = oneshot::Sender<Result<Vec<Result<(), AccountError>>, SubmitError>>;

/// What the sequencer knows of a transaction it sequenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    pub id: TxnId,
    pub code: TxnCode,
    pub timestamp: Timestamp,
    pub result: Result<(), Reject>,
    pub(crate) fingerprint: u64,
    pub(crate) mask: u64,
}

pub(crate) enum Request {
    Submit(Vec<Transaction>, TxnReply),
    Accounts(Vec<AccountOp>, AccountReply),
    Read(u16, Read),
    Txn(
        TxnId,
        oneshot::Sender<(
            Option<TxnRecord>,
            Vec<oneshot::Receiver<Vec<crate::DetailView>>>,
        )>,
    ),
    Audit(oneshot::Sender<(SequencerAudit, Vec<oneshot::Receiver<ShardAudit>>)>),
    Shutdown(oneshot::Sender<Result<(), SubmitError>>),
}

/// The sequencer's part of an audit.
#[derive(Clone, Debug, Default)]
pub(crate) struct SequencerAudit {
    pub committed: u64,
    pub rejected: u64,
    pub pending_open: u64,
    pub batches: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingStatus {
    Open,
    Posted,
    Voided,
    Expired,
}

struct PendingInfo {
    code: TxnCode,
    deadline: Timestamp,
    legs: Vec<SeqLeg>,
    status: PendingStatus,
}

/// A transaction that passed the stateless checks.
struct Checked {
    txn: Transaction,
    legs: Vec<SeqLeg>,
    fingerprint: u64,
}

/// Where a command's answer goes.
#[derive(Clone, Copy)]
enum Slot {
    Txn { request: usize, index: usize },
    Account { request: usize, index: usize },
    Internal,
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
    fn push(&mut self, command: Command, slot: Slot) {
        self.commands.push(command);
        self.slots.push(slot);
    }
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

pub(crate) struct Sequencer {
    shards: u16,
    scales: FxHashMap<Currency, u32>,
    config: Config,
    store: Arc<dyn Store>,
    shard_tx: Vec<Sender<ShardMsg>>,
    votes: Receiver<Vote>,
    last_ts: Timestamp,
    next_batch: u64,
    index: FxHashMap<TxnId, TxnRecord>,
    pendings: FxHashMap<TxnId, PendingInfo>,
    deadlines: BTreeSet<(Timestamp, TxnId)>,
    stats: SequencerAudit,
}

impl Sequencer {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        shard_tx: Vec<Sender<ShardMsg>>,
        votes: Receiver<Vote>,
    ) -> Sequencer {
        Sequencer {
            shards: config.shards,
            scales: config.currencies.iter().copied().collect(),
            config,
            store,
            shard_tx,
            votes,
            last_ts: Timestamp(0),
            next_batch: 0,
            index: FxHashMap::default(),
            pendings: FxHashMap::default(),
            deadlines: BTreeSet::new(),
            stats: SequencerAudit::default(),
        }
    }

    pub fn route(&self, account: AccountId) -> u16 {
        shard_of(account, self.shards).0
    }

    /// Re-applies one logged batch (recovery).
    pub fn replay(&mut self, batch_no: u64, commands: Vec<Command>) {
        let (batch, results) = self.execute(commands);
        self.settle(&batch.commands, &results);
        self.next_batch = batch_no + 1;
        self.stats.batches += 1;
    }

    /// The actor loop: until every handle is dropped or `Shutdown` arrives.
    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut drained = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            drained.push(first);
            let mut items = 0usize;
            while items < BATCH_COMMANDS_MAX {
                match rx.try_recv() {
                    Ok(request) => {
                        items += match &request {
                            Request::Submit(t, _) => t.len(),
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
        self.shard_tx.clear();
        self.store.flush().map_err(|e| SubmitError::Storage {
            reason: e.to_string(),
        })
    }

    /// Serves drained requests: writes first (in arrival order), then reads,
    /// so a read sent after a write's answer sees the write.
    fn serve(
        &mut self,
        drained: &mut Vec<Request>,
    ) -> Option<oneshot::Sender<Result<(), SubmitError>>> {
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        let mut shutdown = None;
        for request in drained.drain(..) {
            match request {
                Request::Submit(txns, reply) => writes.push(WriteReq::Txns(txns, reply)),
                Request::Accounts(ops, reply) => writes.push(WriteReq::Accounts(ops, reply)),
                Request::Shutdown(reply) => shutdown = Some(reply),
                other => reads.push(other),
            }
        }
        self.write(writes);
        for read in reads {
            self.read(read);
        }
        shutdown
    }

    fn read(&mut self, request: Request) {
        match request {
            Request::Read(shard, read) => self.send(shard, ShardMsg::Read(read)),
            Request::Txn(id, reply) => {
                let record = self.index.get(&id).cloned();
                let mut receivers = Vec::new();
                if let Some(r) = record.as_ref().filter(|r| r.result.is_ok()) {
                    for shard in bits(r.mask) {
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

    fn send(&self, shard: u16, msg: ShardMsg) {
        // A shard only stops when the sequencer drops its sender.
        if let Some(tx) = self.shard_tx.get(usize::from(shard)) {
            let _ = tx.send(msg);
        }
    }

    fn write(&mut self, requests: Vec<WriteReq>) {
        let mut answers: Vec<Pending> = Vec::with_capacity(requests.len());
        let mut units: Vec<Unit> = Vec::new();
        for (request, req) in requests.into_iter().enumerate() {
            match req {
                WriteReq::Txns(txns, reply) => {
                    let mut outcomes = vec![None; txns.len()];
                    units.extend(self.check_request(request, txns, &mut outcomes));
                    answers.push(Pending {
                        answer: Answer::Txns(outcomes, reply),
                        failed: None,
                    });
                }
                WriteReq::Accounts(ops, reply) => {
                    let mut results = vec![None; ops.len()];
                    for (index, op) in ops.into_iter().enumerate() {
                        match self.check_account_op(op) {
                            Ok(command) => units.push(Unit::Account {
                                request,
                                index,
                                command,
                            }),
                            Err(e) => results[index] = Some(Err(e)),
                        }
                    }
                    answers.push(Pending {
                        answer: Answer::Accounts(results, reply),
                        failed: None,
                    });
                }
            }
        }
        let mut builder = Builder::default();
        for unit in units {
            self.place(unit, &mut builder, &mut answers);
        }
        self.flush_batch(&mut builder, &mut answers);
        for pending in answers {
            pending.reply();
        }
    }

    fn place(&mut self, unit: Unit, builder: &mut Builder, answers: &mut [Pending]) {
        if builder.commands.len() + unit.len() + 8 > BATCH_COMMANDS_MAX {
            self.flush_batch(builder, answers);
        }
        match unit {
            Unit::Account {
                request,
                index,
                command,
            } => {
                builder.push(command, Slot::Account { request, index });
            }
            Unit::Chain { request, members } => {
                let fit = self.fit_chain(request, &members, builder, answers);
                if let Fit::NeedsCut = fit {
                    self.flush_batch(builder, answers);
                    if let Fit::NeedsCut = self.fit_chain(request, &members, builder, answers) {
                        // Only a conflict inside the chain itself is left.
                        let first = members.first().map_or(0, |m| m.0);
                        let outcomes = chain_failed(&members, first, Reject::PendingNotFound);
                        answers[request].fill_txns(outcomes);
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
        members: &[(usize, Checked)],
        b: &mut Builder,
        answers: &mut [Pending],
    ) -> Fit {
        for (_, c) in members {
            if b.ids.contains(&c.txn.id) || self.conflicts_pending(&c.txn, b) {
                return Fit::NeedsCut;
            }
        }
        if members
            .iter()
            .any(|(_, c)| self.index.contains_key(&c.txn.id))
        {
            answers[request].fill_txns(self.answer_duplicates(members));
            return Fit::Answered;
        }
        let mut txns = Vec::with_capacity(members.len());
        let mut referenced: FxHashMap<TxnId, Reject> = FxHashMap::default();
        let (last_ts_before, commands_before) = (self.last_ts, b.commands.len());
        for (k, (index, c)) in members.iter().enumerate() {
            // A chain happens at once: pending transactions expire before
            // its first member, never between its members.
            let stamped = self.stamp(b, k == 0);
            let timestamp = match stamped {
                Some(ts) if !b.new_pending_deadline_min.is_some_and(|d| d <= ts) => ts,
                _ => {
                    // Give back the timestamps this chain took, so that the
                    // retry in the next batch gets the same ones.
                    self.last_ts = match b.commands.get(commands_before..).and_then(<[_]>::last) {
                        Some(Command::Txn(expiry)) => expiry.timestamp,
                        _ => last_ts_before,
                    };
                    return Fit::NeedsCut;
                }
            };
            let sequenced = match pending_of(&c.txn.kind).and_then(|p| referenced.get(&p)) {
                Some(earlier) => Err(earlier.clone()),
                None => self.sequence(c, timestamp, b),
            };
            match sequenced {
                Ok(t) => {
                    if let Some(p) = pending_of(&c.txn.kind) {
                        let already = match t.kind {
                            SeqKind::Post { .. } => Reject::PendingAlreadyPosted,
                            _ => Reject::PendingAlreadyVoided,
                        };
                        referenced.insert(p, already);
                    }
                    txns.push((*index, t));
                }
                Err(reject) => {
                    answers[request].fill_txns(chain_failed(members, *index, reject));
                    return Fit::Answered;
                }
            }
        }
        for (index, t) in txns {
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
            b.push(Command::Txn(t), Slot::Txn { request, index });
        }
        Fit::Added
    }

    fn conflicts_pending(&self, txn: &Transaction, b: &Builder) -> bool {
        pending_of(&txn.kind).is_some_and(|p| b.pendings_touched.contains(&p))
    }

    fn answer_duplicates(&self, members: &[(usize, Checked)]) -> Vec<(usize, Outcome)> {
        members
            .iter()
            .map(|(index, c)| {
                let outcome = match self.index.get(&c.txn.id) {
                    Some(r) if r.fingerprint == c.fingerprint => Outcome {
                        id: c.txn.id,
                        timestamp: Some(r.timestamp),
                        result: r.result.clone(),
                        duplicate: true,
                    },
                    Some(_) => unsequenced(c.txn.id, Reject::IdConflict),
                    None => unsequenced(c.txn.id, Reject::LinkedTxnFailed),
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
            let ts = Timestamp((self.last_ts.0 + 1).max(self.config.clock.now().0));
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
            if b.pendings_touched.contains(&id) {
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
                fingerprint: 0,
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
    fn sequence(&self, c: &Checked, timestamp: Timestamp, b: &Builder) -> Result<SeqTxn, Reject> {
        if let Some(p) = pending_of(&c.txn.kind) {
            // Touched in this batch although no earlier chain conflicted:
            // `stamp` just expired it.
            if b.pendings_touched.contains(&p) {
                return Err(Reject::PendingExpired);
            }
        }
        let t = &c.txn;
        let (kind, legs) = match t.kind {
            TxnKind::Posted => (SeqKind::Posted, c.legs.clone()),
            TxnKind::Pending { timeout_ms } => {
                let deadline = Timestamp(
                    timestamp
                        .0
                        .saturating_add(timeout_ms.saturating_mul(1_000_000)),
                );
                (SeqKind::Pending { deadline }, c.legs.clone())
            }
            TxnKind::PostPending { pending_id } => {
                let p = self.open_pending(t.id, pending_id, timestamp)?;
                let scale = |c: Currency| self.scales.get(&c).copied().unwrap_or(0);
                (
                    SeqKind::Post {
                        pending: pending_id,
                    },
                    capture_legs(p, &c.legs, scale)?,
                )
            }
            TxnKind::VoidPending { pending_id } => {
                let p = self.open_pending(t.id, pending_id, timestamp)?;
                (
                    SeqKind::Void {
                        pending: pending_id,
                    },
                    p.legs.iter().map(release).collect(),
                )
            }
        };
        Ok(SeqTxn {
            id: t.id,
            code: t.code,
            timestamp,
            fingerprint: c.fingerprint,
            kind,
            linked: t.linked,
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

    /// Writes the batch to the log, executes it, settles the sequencer's
    /// state and fills the answers. On a storage failure nothing is applied
    /// and every request with a command in the batch fails.
    fn flush_batch(&mut self, b: &mut Builder, answers: &mut [Pending]) {
        if b.commands.is_empty() {
            return;
        }
        let commands = std::mem::take(&mut b.commands);
        let slots = std::mem::take(&mut b.slots);
        *b = Builder::default();
        if let Err(reason) = self.log(&commands) {
            for slot in &slots {
                if let Slot::Txn { request, .. } | Slot::Account { request, .. } = *slot {
                    answers[request].failed = Some(SubmitError::Storage {
                        reason: reason.clone(),
                    });
                }
            }
            return;
        }
        let (batch, results) = self.execute(commands);
        self.settle(&batch.commands, &results);
        for ((command, slot), result) in batch.commands.iter().zip(&slots).zip(results) {
            match (*slot, command) {
                (Slot::Txn { request, index }, Command::Txn(t)) => {
                    let result = result.map_err(|e| match e {
                        CmdError::Txn(r) => r,
                        CmdError::Account(_) => Reject::LinkedTxnFailed,
                    });
                    let outcome = Outcome {
                        id: t.id,
                        timestamp: Some(t.timestamp),
                        result,
                        duplicate: false,
                    };
                    answers[request].fill_txns(vec![(index, outcome)]);
                }
                (Slot::Account { request, index }, _) => {
                    let result = result.map_err(|e| match e {
                        CmdError::Account(a) => a,
                        CmdError::Txn(_) => AccountError::NotFound(AccountId(0)),
                    });
                    answers[request].fill_account(index, result);
                }
                _ => {}
            }
        }
    }

    fn log(&mut self, commands: &[Command]) -> Result<(), String> {
        let mut batch = WriteBatch::new();
        batch.put(
            KEYSPACE_LOG,
            self.next_batch.to_be_bytes().to_vec(),
            encode_batch(commands),
        );
        self.store.write(batch).map_err(|e| e.to_string())?;
        if self.config.sync {
            self.store.flush().map_err(|e| e.to_string())?;
        }
        // The batch number is only used up once the batch is durable: a
        // failed one is overwritten by the next, so the log never holds a
        // batch the engine did not apply (unless it crashed right here,
        // unacknowledged).
        self.next_batch += 1;
        self.stats.batches += 1;
        Ok(())
    }

    /// Runs the batch on the shards until every group's votes agree.
    fn execute(&mut self, commands: Vec<Command>) -> (Arc<Batch>, Vec<Result<(), CmdError>>) {
        let batch = Arc::new(Batch::new(commands));
        let mask = batch.mask();
        for shard in bits(mask) {
            self.send(shard, ShardMsg::Execute(batch.clone()));
        }
        let mut refusals: Vec<Vec<Refusal>> = vec![Vec::new(); usize::from(self.shards)];
        let mut refused = vec![0u64; batch.groups.len()];
        self.collect(mask.count_ones(), &mut refusals, &mut refused);
        let mut cursor = 0usize;
        while let Some(g) = first_mixed(&batch, &refused, cursor) {
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
            self.collect(accepted.count_ones(), &mut refusals, &mut refused);
            cursor = g + 1;
        }
        for shard in bits(mask) {
            self.send(shard, ShardMsg::Commit);
        }
        let results = results(&batch, &refusals, &refused);
        (batch, results)
    }

    fn collect(&self, replies: u32, refusals: &mut [Vec<Refusal>], refused: &mut [u64]) {
        for _ in 0..replies {
            let Ok(vote) = self.votes.recv() else { return };
            for r in &vote.refusals {
                refused[r.group as usize] |= 1u64 << vote.shard;
            }
            refusals[usize::from(vote.shard)].extend(vote.refusals);
        }
    }

    /// Updates the idempotency index and two-phase state from a settled batch.
    fn settle(&mut self, commands: &[Command], results: &[Result<(), CmdError>]) {
        for (command, result) in commands.iter().zip(results) {
            let Command::Txn(t) = command else { continue };
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
            let result = result.clone().map_err(|e| match e {
                CmdError::Txn(r) => r,
                CmdError::Account(_) => Reject::LinkedTxnFailed,
            });
            let mask = t.legs.iter().fold(0u64, |m, l| m | 1u64 << l.shard);
            let record = TxnRecord {
                id: t.id,
                code: t.code,
                timestamp: t.timestamp,
                result,
                fingerprint: t.fingerprint,
                mask,
            };
            self.index.insert(t.id, record);
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
        }
    }

    /// Stateless checks of one call's transactions, chain by chain.
    fn check_request(
        &self,
        request: usize,
        txns: Vec<Transaction>,
        outcomes: &mut [Option<Outcome>],
    ) -> Vec<Unit> {
        let mut units = Vec::new();
        let mut seen: FxHashSet<TxnId> = FxHashSet::default();
        let mut chain: Vec<(usize, Result<Checked, (TxnId, Reject)>)> = Vec::new();
        let count = txns.len();
        for (index, txn) in txns.into_iter().enumerate() {
            let linked = txn.linked;
            let checked = if seen.insert(txn.id) {
                self.check(txn)
            } else {
                Err((txn.id, Reject::DuplicateIdInBatch))
            };
            chain.push((index, checked));
            if linked && index + 1 < count {
                continue;
            }
            let members = std::mem::take(&mut chain);
            let open = linked;
            match split_chain(members, open) {
                Ok(members) => units.push(Unit::Chain { request, members }),
                Err(failed) => {
                    for (i, o) in failed {
                        outcomes[i] = Some(o);
                    }
                }
            }
        }
        units
    }

    fn check(&self, txn: Transaction) -> Result<Checked, (TxnId, Reject)> {
        let id = txn.id;
        self.check_legs(&txn).map_err(|r| (id, r)).map(|legs| {
            let fingerprint = fingerprint(&txn);
            Checked {
                txn,
                legs,
                fingerprint,
            }
        })
    }

    fn check_legs(&self, txn: &Transaction) -> Result<Vec<SeqLeg>, Reject> {
        let (op, may_be_empty) = match txn.kind {
            TxnKind::Posted => (LegOp::Post, false),
            TxnKind::Pending { .. } => (LegOp::Reserve, false),
            TxnKind::PostPending { .. } => (LegOp::Post, true),
            TxnKind::VoidPending { .. } => {
                return if txn.legs.is_empty() {
                    Ok(Vec::new())
                } else {
                    Err(Reject::VoidWithLegs)
                };
            }
        };
        if txn.legs.is_empty() && !may_be_empty {
            return Err(Reject::NoLegs);
        }
        if txn.legs.len() > LEGS_MAX {
            return Err(Reject::TooManyLegs {
                count: txn.legs.len(),
                max: LEGS_MAX,
            });
        }
        let mut legs = Vec::with_capacity(txn.legs.len());
        let mut sums: Vec<(Currency, i128, i128)> = Vec::new();
        for (i, leg) in txn.legs.iter().enumerate() {
            let n = i as u16;
            let scale = *self
                .scales
                .get(&leg.currency)
                .ok_or(Reject::UnknownCurrency {
                    leg: n,
                    currency: leg.currency,
                })?;
            if leg.amount <= rust_decimal::Decimal::ZERO {
                return Err(Reject::AmountNotPositive {
                    leg: n,
                    amount: leg.amount,
                });
            }
            if leg.amount.normalize().scale() > scale {
                let (amount, currency) = (leg.amount, leg.currency);
                return Err(Reject::TooManyDecimals {
                    leg: n,
                    amount,
                    currency,
                    scale,
                });
            }
            let amount = Minor::from_decimal(leg.amount, scale).ok_or(Reject::AmountOverflow {
                leg: n,
                amount: leg.amount,
            })?;
            if op == LegOp::Reserve && leg.bucket == crate::Bucket::Frozen {
                return Err(Reject::BucketNotAllowed { leg: n });
            }
            let at = match sums.iter().position(|s| s.0 == leg.currency) {
                Some(at) => at,
                None => {
                    sums.push((leg.currency, 0, 0));
                    sums.len() - 1
                }
            };
            match leg.side {
                Side::Debit => sums[at].1 += i128::from(amount.0),
                Side::Credit => sums[at].2 += i128::from(amount.0),
            }
            legs.push(SeqLeg {
                account: leg.account,
                amount: amount.0,
                expected_version: leg.expected_version.map(|v| v.0),
                currency: leg.currency,
                side: leg.side,
                bucket: leg.bucket,
                op,
                shard: self.route(leg.account),
            });
        }
        if let Some(&(currency, d, c)) = sums.iter().find(|s| s.1 != s.2) {
            let scale = self.scales.get(&currency).copied().unwrap_or(0);
            let dec = |v: i128| rust_decimal::Decimal::from_i128_with_scale(v, scale);
            return Err(Reject::Unbalanced {
                currency,
                debits: dec(d),
                credits: dec(c),
            });
        }
        Ok(legs)
    }
}

enum WriteReq {
    Txns(Vec<Transaction>, TxnReply),
    Accounts(Vec<AccountOp>, AccountReply),
}

enum Unit {
    Chain {
        request: usize,
        members: Vec<(usize, Checked)>,
    },
    Account {
        request: usize,
        index: usize,
        command: Command,
    },
}

impl Unit {
    fn len(&self) -> usize {
        match self {
            Unit::Chain { members, .. } => members.len(),
            Unit::Account { .. } => 1,
        }
    }
}

impl Pending {
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
                    None => Ok(slots.into_iter().flatten().collect()),
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

fn pending_of(kind: &TxnKind) -> Option<TxnId> {
    match *kind {
        TxnKind::PostPending { pending_id } | TxnKind::VoidPending { pending_id } => {
            Some(pending_id)
        }
        _ => None,
    }
}

fn unsequenced(id: TxnId, reject: Reject) -> Outcome {
    Outcome {
        id,
        timestamp: None,
        result: Err(reject),
        duplicate: false,
    }
}

/// Every member of a chain refused: `failed` with `reject`, the others with
/// `LinkedTxnFailed`.
fn chain_failed(
    members: &[(usize, Checked)],
    failed: usize,
    reject: Reject,
) -> Vec<(usize, Outcome)> {
    members
        .iter()
        .map(|(i, c)| {
            let r = if *i == failed {
                reject.clone()
            } else {
                Reject::LinkedTxnFailed
            };
            (*i, unsequenced(c.txn.id, r))
        })
        .collect()
}

/// A chain goes on only if every member passed; else all are answered.
#[allow(clippy::type_complexity)]
fn split_chain(
    members: Vec<(usize, Result<Checked, (TxnId, Reject)>)>,
    open: bool,
) -> Result<Vec<(usize, Checked)>, Vec<(usize, Outcome)>> {
    let all_ok = !open && members.iter().all(|(_, c)| c.is_ok());
    if all_ok {
        return Ok(members
            .into_iter()
            .filter_map(|(i, c)| c.ok().map(|c| (i, c)))
            .collect());
    }
    let first_bad = members.iter().find(|(_, c)| c.is_err()).map(|(i, _)| *i);
    Err(members
        .into_iter()
        .map(|(i, c)| {
            let id = match &c {
                Ok(c) => c.txn.id,
                Err((id, _)) => *id,
            };
            let reject = match c {
                _ if open => Reject::LinkedChainOpen,
                Err((_, r)) if Some(i) == first_bad => r,
                _ => Reject::LinkedTxnFailed,
            };
            (i, unsequenced(id, reject))
        })
        .collect())
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
) -> Result<Vec<SeqLeg>, Reject> {
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
    let mut legs = Vec::with_capacity(restated.len());
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

/// A stable hash of what the caller sent, to tell a retry from a conflict.
fn fingerprint(t: &Transaction) -> u64 {
    let mut h = crate::shard::Fnv::new();
    h.u64(u64::from(t.code.0));
    match t.kind {
        TxnKind::Posted => h.u64(0),
        TxnKind::Pending { timeout_ms } => {
            h.u64(1);
            h.u64(timeout_ms);
        }
        TxnKind::PostPending { pending_id } => {
            h.u64(2);
            h.bytes(&pending_id.0.to_le_bytes());
        }
        TxnKind::VoidPending { pending_id } => {
            h.u64(3);
            h.bytes(&pending_id.0.to_le_bytes());
        }
    }
    h.u64(u64::from(t.linked));
    for leg in &t.legs {
        h.u64(leg.account.0);
        h.u64(leg.side as u64 | (leg.bucket as u64) << 8);
        h.bytes(&leg.amount.normalize().serialize());
        h.bytes(&leg.currency.0);
        h.u64(leg.expected_version.map_or(u64::MAX, |v| v.0));
    }
    h.finish()
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
