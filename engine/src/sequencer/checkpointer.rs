//! Checkpoints from the sequencer's side: when to take one, the parts the
//! shards and the sequencer hand over, the checkpoint thread that writes
//! them (see `checkpoint::write`), what a durable one releases (log
//! segments, cold chunks), and restoring one at open.

use super::*;

/// Where the last checkpoint left off.
#[derive(Debug, Default)]
pub(super) struct CheckpointState {
    /// The newest manifest known durable.
    pub(super) manifest: Manifest,
    /// The generation the next checkpoint's blobs are named by: one past
    /// every generation tried, so a failed try's blobs are never reused
    /// (its manifest may still reach the disk).
    pub(super) next_generation: u64,
    /// The first batch still in the log.
    pub(super) log_from: u64,
    pub(super) batches_since: u64,
    pub(super) commands_since: u64,
    /// The next checkpoint must write every account (a try failed).
    pub(super) needs_full: bool,
    /// A merge of index runs being written on a thread of its own.
    pub(super) compacting: Option<Receiver<Result<checkpoint::Compacted, String>>>,
    /// A merge written, for the next checkpoint to name.
    pub(super) compacted: Option<checkpoint::Compacted>,
    /// Runs merged away, deleted once no reader (an audit's check) holds
    /// them.
    pub(super) retired: Vec<(checkpoint::RunRef, Arc<crate::runs::Run>)>,
}

/// The checkpoint thread: encodes, writes and flushes each checkpoint it is
/// handed, one at a time; answers with its manifest and index runs once
/// durable, or with the reason.
pub(super) type CheckpointWriter = (
    Sender<checkpoint::Job>,
    Receiver<checkpoint::Written>,
    std::thread::JoinHandle<()>,
);

pub(super) fn spawn_checkpoint_writer(
    store: Arc<dyn Store>,
    cold: Arc<dyn BlobStore>,
    tier: Arc<crate::tier::ColdStore>,
) -> Result<CheckpointWriter, String> {
    let (jobs_tx, jobs) = crossbeam_channel::bounded::<checkpoint::Job>(1);
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let handle = std::thread::Builder::new()
        .name("tally-checkpoint".into())
        .spawn(move || {
            for job in jobs {
                let written = checkpoint::write(store.as_ref(), cold.as_ref(), tier.as_ref(), job);
                if done_tx.send(written).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok((jobs_tx, done, handle))
}

impl Sequencer {
    /// Checkpoints are taken (and so the index entries since the last one
    /// are kept for the next): on a store that can be reopened, unless
    /// read-only. Also while replaying, before the log is set.
    pub(super) fn checkpoints_on(&self) -> bool {
        self.config.checkpoint_every_batches > 0
            && !self.config.read_only
            && !matches!(self.config.store, crate::config::StoreChoice::Memory)
    }

    pub(super) fn maybe_checkpoint(&mut self) {
        self.poll_checkpoint(false);
        self.poll_compaction(false);
        if !self.ckpt.retired.is_empty() {
            self.bury_runs();
        }
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
    pub(super) fn checkpoint(&mut self) -> Result<(), String> {
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
        self.poll_compaction(false);
        let (pendings, resolved) = self.two_phase.snapshot();
        let hot = self.ids.freeze();
        let sequencer = SequencerState {
            last_ts: self.last_ts,
            stats: self.stats.clone(),
            pendings,
            records: self
                .records
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            calendar: self.calendar,
        };
        let job = checkpoint::Job {
            generation,
            previous: self.ckpt.manifest.clone(),
            shards: snapshots,
            items: Box::new(move || hot.items(&resolved)),
            runs: self.ids.runs(),
            compacted: self.ckpt.compacted.take(),
            keys: self.ids.keys(),
            cache: self.ids.cache(),
            sequencer,
            next_batch: self.next_batch,
            log_head,
            online_window_ns: (self.config.online_window_days > 0)
                .then(|| u64::from(self.config.online_window_days) * 86_400 * 1_000_000_000),
        };
        if self.ckpt_writer.is_none() {
            self.ckpt_writer = Some(spawn_checkpoint_writer(
                self.store.clone(),
                self.cold.clone(),
                self.tier.clone(),
            )?);
        }
        let Some((jobs, _, _)) = &self.ckpt_writer else {
            return Err("no checkpoint thread".into());
        };
        if jobs.send(job).is_err() {
            // The frozen ids stay readable; the engine stops (fail-stop).
            return Err("the checkpoint thread stopped".into());
        }
        self.ckpt_job = true;
        self.ckpt.batches_since = 0;
        self.ckpt.commands_since = 0;
        if self.config.checkpoint_wait {
            // Deterministic I/O order (simulation): no batch is logged while
            // the checkpoint is written.
            self.poll_checkpoint(true);
        }
        Ok(())
    }

    /// Takes the checkpoint thread's answer, waiting for it if `wait`.
    pub(super) fn poll_checkpoint(&mut self, wait: bool) {
        let Some((_, done, _)) = &self.ckpt_writer else {
            return;
        };
        if !self.ckpt_job {
            return;
        }
        let stopped = || Err("the checkpoint thread died".to_string());
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
            Ok(durable) => {
                let checkpoint::Durable {
                    manifest,
                    runs,
                    retired,
                } = durable;
                // The ids and resolutions it holds leave memory, and the
                // runs it merged away (read here until now) leave the disk
                // once no reader holds them (an audit's check may); a run
                // left behind by a crash is deleted at the next open.
                let before = self.ids.runs();
                self.ids.install(runs);
                self.two_phase.checkpointed();
                for r in retired {
                    if let Some(run) = before.iter().find(|run| run.name == r.data_name()) {
                        self.ckpt.retired.push((r, run.clone()));
                    }
                }
                drop(before);
                self.bury_runs();
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
                self.maybe_compact();
            }
            Err(reason) => {
                // Fail-stop: a failed write or sync is not retried (its
                // pages may be gone), and a dead thread is not restarted.
                // Nothing is lost: the log still holds every batch since the
                // last durable checkpoint, and the frozen ids stay readable
                // until the engine closes.
                self.stop_writes(format!("checkpoint failed: {reason}"));
                self.ckpt.needs_full = true;
            }
        }
    }

    /// Deletes the merged-away runs no one reads any more.
    pub(super) fn bury_runs(&mut self) {
        let cold = self.cold.clone();
        self.ckpt.retired.retain(|(r, run)| {
            if Arc::strong_count(run) > 1 {
                return true;
            }
            let _ = cold.delete(&r.data_name());
            let _ = cold.delete(&r.header_name());
            false
        });
    }

    /// Starts merging index runs when a level holds `MERGE_FAN` of them and
    /// no merge is under way (see `checkpoint::compact`). Under
    /// `checkpoint_wait` it is waited for at once: the I/O order stays the
    /// same from run to run.
    fn maybe_compact(&mut self) {
        if self.ckpt.compacting.is_some()
            || self.ckpt.compacted.is_some()
            || self.stopped.is_some()
            || !self.checkpoints_on()
        {
            return;
        }
        let Some((at, level)) = checkpoint::due_merge(&self.ckpt.manifest.runs) else {
            return;
        };
        let end = at + checkpoint::MERGE_FAN;
        let runs = self.ids.runs();
        let (Some(refs), Some(readers)) = (self.ckpt.manifest.runs.get(at..end), runs.get(at..end))
        else {
            return;
        };
        let inputs: Vec<_> = refs.iter().copied().zip(readers.iter().cloned()).collect();
        // A generation of its own: never reused, like a checkpoint's.
        let generation = self.ckpt.next_generation.max(self.ckpt.manifest.generation);
        self.ckpt.next_generation = generation + 1;
        let output = checkpoint::RunRef {
            generation,
            level: level + 1,
        };
        let (cold, keys, cache) = (self.cold.clone(), self.ids.keys(), self.ids.cache());
        let (tx, rx) = crossbeam_channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("tally-compact".into())
            .spawn(move || {
                let merged = checkpoint::compact(cold.as_ref(), &keys, inputs, output, cache);
                let _ = tx.send(merged);
            });
        if let Err(e) = spawned {
            self.stop_writes(format!("index merge could not start: {e}"));
            return;
        }
        self.ckpt.compacting = Some(rx);
        if self.config.checkpoint_wait {
            self.poll_compaction(true);
        }
    }

    /// Takes a finished merge for the next checkpoint, waiting if `wait`.
    /// A failed one stops the engine like a failed checkpoint.
    pub(super) fn poll_compaction(&mut self, wait: bool) {
        let Some(rx) = &self.ckpt.compacting else {
            return;
        };
        let result = if wait {
            rx.recv().map_err(|_| ())
        } else {
            match rx.try_recv() {
                Ok(result) => Ok(result),
                Err(crossbeam_channel::TryRecvError::Empty) => return,
                Err(crossbeam_channel::TryRecvError::Disconnected) => Err(()),
            }
        };
        self.ckpt.compacting = None;
        match result {
            Ok(Ok(compacted)) => self.ckpt.compacted = Some(compacted),
            Ok(Err(reason)) => self.stop_writes(format!("index merge failed: {reason}")),
            Err(()) => self.stop_writes("the index merge thread died".into()),
        }
    }

    /// Takes the state a checkpoint recorded (at open, before replay).
    pub(crate) fn restore(&mut self, loaded: Loaded) -> Result<(), String> {
        let mut receivers = Vec::with_capacity(loaded.shards.len());
        for (shard, state) in (0u16..).zip(loaded.shards) {
            let (reply, rx) = crossbeam_channel::bounded(1);
            self.send(shard, ShardMsg::Restore(Box::new(state), reply));
            receivers.push(rx);
        }
        for rx in receivers {
            self.wait_shard(&rx)??;
        }
        self.ids.install(loaded.runs);
        let state = loaded.sequencer;
        self.last_ts = state.last_ts;
        self.stats = state.stats;
        self.calendar = state.calendar;
        for (key, value) in state.records {
            self.put_record(key, value);
        }
        self.two_phase.restore(state.pendings);
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
            compacting: None,
            compacted: None,
            retired: Vec::new(),
        };
        Ok(())
    }
}
