//! The pipeline: a built batch is logged (one record, one sync), launched
//! on its shards, and settled — votes collected, mixed groups repaired,
//! committed, the index and two-phase state updated, callers answered —
//! while the next batch is built (see ARCHITECTURE.md, "Pipelining").

use super::*;

/// The batch the shards are executing while the next one is built
/// (pipelining). Until it settles, the next batch may not touch what it
/// claimed: its ids and pending transfers, nor pass the earliest deadline of
/// a pending transfer it creates (that transfer would have to expire first).
pub(super) struct InFlight {
    pub(super) batch: Arc<Batch>,
    pub(super) slots: Vec<Slot>,
    pub(super) ids: FxHashSet<TxnId>,
    pub(super) pendings_touched: FxHashSet<TxnId>,
    pub(super) new_pending_deadline_min: Option<Timestamp>,
    /// The answers of the drain that launched it, once that drain has
    /// ended; `None` while the drain that launched it is still placing.
    pub(super) answers: Option<Vec<Pending>>,
}

/// The batch being built, and what it has claimed so far.
#[derive(Default)]
pub(super) struct Builder {
    pub(super) commands: Vec<Command>,
    pub(super) slots: Vec<Slot>,
    pub(super) ids: FxHashSet<TxnId>,
    /// Pending ids created, posted, voided or expired in this batch.
    pub(super) pendings_touched: FxHashSet<TxnId>,
    pub(super) new_pending_deadline_min: Option<Timestamp>,
    /// The deadline-set key of the last pending expired in this batch.
    pub(super) expired_through: Option<(Timestamp, TxnId)>,
}

impl Builder {
    /// Empties the builder, keeping its allocations.
    pub(super) fn clear(&mut self) {
        self.commands.clear();
        self.slots.clear();
        self.ids.clear();
        self.pendings_touched.clear();
        self.new_pending_deadline_min = None;
        self.expired_through = None;
    }

    pub(super) fn push(&mut self, command: Command, slot: Slot) {
        self.commands.push(command);
        self.slots.push(slot);
    }

    /// Takes a settled batch's sets and slots, emptied, where they are
    /// larger than the builder's own: their memory is reused.
    pub(super) fn reuse(&mut self, (mut ids, mut touched, mut slots): BatchParts) {
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
pub(super) type BatchParts = (FxHashSet<TxnId>, FxHashSet<TxnId>, Vec<Slot>);

/// The first group, from `cursor`, that some shard refused and another
/// accepted (and so applied speculatively).
pub(super) fn first_mixed(batch: &Batch, refused: &[u64], cursor: usize) -> Option<usize> {
    (cursor..batch.groups.len())
        .find(|&g| refused[g] != 0 && batch.groups[g].mask & !refused[g] != 0)
}

/// Per command: committed, or the refusal of the first failing leg of the
/// first failing command of its group (others in the group: linked failure).
pub(super) fn results(
    batch: &Batch,
    refusals: &[Vec<Refusal>],
    refused: &[u64],
) -> Vec<Result<(), CmdError>> {
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

pub(super) fn leg_of(e: &CmdError) -> u16 {
    match e {
        CmdError::Txn(r) => r.leg(),
        CmdError::Account(_) => 0,
    }
}

/// Fails every request with a command among `slots`.
pub(super) fn fail_slots(slots: &[Slot], answers: &mut [Pending], error: SubmitError) {
    for slot in slots {
        if let Slot::Txn { request, .. } | Slot::Account { request, .. } = *slot {
            if let Some(answer) = answers.get_mut(request) {
                answer.failed = Some(error.clone());
            }
        }
    }
}

impl Sequencer {
    /// Writes the batch to the log and starts it on the shards, after the
    /// batch in flight settles. It is answered when it settles in turn: at
    /// the next cut, or when nothing else waits (pipelining: the shards
    /// execute one batch while the sequencer builds the next). On a storage
    /// failure nothing of it is applied and every request with a command in
    /// it fails.
    pub(super) fn flush_batch(&mut self, b: &mut Builder, answers: &mut [Pending]) {
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
        // Logged while the shards still execute the batch in flight (the
        // log's order is the batch order either way); its sync runs while
        // the batch in flight settles and is answered, so those answers do
        // not wait for this sync.
        let logged = self.log(&commands);
        if let Some(f) = self.inflight.take() {
            match self.complete(&f.batch) {
                Ok(results) => {
                    let parts = self.settle_and_answer(f, &results, answers);
                    b.reuse(parts);
                }
                Err(reason) => self.abandon(f, reason, answers),
            }
        }
        let logged = logged.and_then(|()| self.wait_logged());
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
    pub(super) fn finish_inflight(&mut self, answers: &mut [Pending]) {
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
    pub(super) fn abandon(&mut self, f: InFlight, reason: String, answers: &mut [Pending]) {
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
    pub(super) fn settle_and_answer(
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

    /// Appends the batch to the log and begins its sync (group commit: one
    /// `fdatasync` per batch, waited for by `wait_logged` before the batch
    /// is launched). On failure the log takes no more writes.
    pub(super) fn log(&mut self, commands: &[Command]) -> Result<(), String> {
        // Timestamps strictly increase in log order, or the engine stops
        // loudly: replay and every answer depend on it.
        for command in commands {
            if let Command::Txn(t) | Command::Refuse { txn: t, .. } = command {
                assert!(
                    t.timestamp > self.last_logged_ts,
                    "invariant broken: timestamp {:?} logged after {:?}",
                    t.timestamp,
                    self.last_logged_ts
                );
                self.last_logged_ts = t.timestamp;
            }
        }
        let Some(log) = self.log.as_mut() else {
            // A fresh in-memory store cannot be reopened: a log in it
            // could never be replayed, so it is not written.
            self.next_batch += 1;
            self.stats.batches += 1;
            return Ok(());
        };
        assert_eq!(
            log.next_batch(),
            self.next_batch,
            "invariant broken: the log and the sequencer disagree on the batch number"
        );
        let (_, job) = log
            .append_deferred(&encode_batch(commands))
            .map_err(|e| e.to_string())?;
        match job {
            Some(job) => {
                self.syncer.begin(job);
                self.unsynced = Some(commands.len());
                if self.config.checkpoint_wait {
                    // Deterministic I/O order: the sync is the next step.
                    return self.wait_logged();
                }
            }
            None => self.count_logged(commands.len()),
        }
        Ok(())
    }

    /// A batch of `commands` commands is in the log for good.
    fn count_logged(&mut self, commands: usize) {
        self.ckpt.batches_since += 1;
        self.ckpt.commands_since += commands as u64;
        self.next_batch += 1;
        self.stats.batches += 1;
    }

    /// Waits for the sync of the batch last logged, if it is still
    /// running: a batch is launched, and so can be answered, only once it
    /// is durable. A failed sync fails the log.
    pub(super) fn wait_logged(&mut self) -> Result<(), String> {
        let Some(commands) = self.unsynced.take() else {
            return Ok(());
        };
        let done = self.syncer.wait().unwrap_or(Ok(()));
        if let Some(log) = self.log.as_mut() {
            log.synced(done).map_err(|e| e.to_string())?;
        }
        self.count_logged(commands);
        Ok(())
    }

    /// Starts a batch on its shards.
    pub(super) fn launch(&mut self, commands: Vec<Command>) -> Arc<Batch> {
        let batch = Arc::new(Batch::new(commands, self.calendar.open));
        if let Some(&(_, open)) = batch.cuts.last() {
            self.calendar.open = Some(open);
            self.calendar.last_closed = Some(open.prev());
        }
        for shard in bits(batch.mask()) {
            self.send(shard, ShardMsg::Execute(batch.clone()));
        }
        batch
    }

    /// Collects a launched batch's votes, repairs until every group's votes
    /// agree, and commits it on the shards.
    pub(super) fn complete(&mut self, batch: &Batch) -> Result<Vec<Result<(), CmdError>>, String> {
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
    pub(super) fn collect(
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
    pub(super) fn settle(&mut self, commands: &[Command], results: &[Result<(), CmdError>]) {
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
                self.two_phase.settle(t);
            }
            if let SeqKind::Expire { .. } = t.kind {
                continue;
            }
            if committed {
                self.stats.committed += 1;
            } else {
                self.stats.rejected += 1;
            }
            let mut refusal = None;
            if let Err(e) = result {
                let reject = match e {
                    CmdError::Txn(r) => r.clone(),
                    CmdError::Account(_) => Reject::LinkedTxnFailed,
                };
                refusal = Some((reject, t.code));
            }
            let entry = IndexEntry::new(t.fingerprint, t.timestamp, committed);
            self.ids.insert(t.id, entry, refusal);
        }
    }
}
