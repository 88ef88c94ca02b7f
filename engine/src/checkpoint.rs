//! Checkpoints: the engine's state written as derived data, so that
//! reopening loads it and replays only the log after it.
//!
//! Everything but the manifest is a blob (`tally_storage::BlobStore`; on
//! sled, files in the store's `details/` directory), written and flushed
//! first; then the manifest that points at the new generation goes into the
//! store, in one atomic write with the deletion of the log records it now
//! covers; only then the previous generation's blobs are deleted. A crash
//! anywhere leaves either the old manifest with everything it names, or the
//! new one with everything it names. See [`write`].
//!
//! Layout:
//! - store, keyspace `KEYSPACE_CHECKPOINT`: `manifest` → [`Manifest`]: the
//!   generation, the first batch not covered, each shard's full chunks.
//! - blob `a<generation>-<shard>` → [`ShardState`]: accounts, the details of
//!   the unfinished chunk, the last timestamp of every full chunk.
//! - blob `q<generation>` → [`SequencerState`]: clock, counters, pending
//!   transfers, records.
//! - blobs `r<generation>-<level>` and `h<generation>-<level>` → a run of
//!   the idempotency index (`runs.rs`): its pages, and its header (filter
//!   and fences, what a reopen loads). Together the runs the manifest names
//!   hold every id sequenced before it, refusals included, and the final
//!   status of every pending transfer resolved before it; eight runs of a
//!   level merge into one of the next (see [`RunRef`]).
//! - blob `d<generation>-<shard>` → [`ShardDelta`]: the accounts changed
//!   since the previous checkpoint ([`Manifest::states`]).
//! - blob `s<shard>-c<chunk>` ([`chunk_name`]) → a full chunk of details,
//!   written once. In-memory and custom stores keep blobs in keyspace
//!   `KEYSPACE_DETAILS` of the store itself.
//!
//! Every value is `crc32 (LE) ‖ postcard`: compact, and a flipped bit is
//! caught rather than loaded.

use crate::account::AccountState;
use crate::detail::Detail;
use crate::runs::{pages_of, write_run, HeaderCache, Keys, Merge, Page, Pages, Run, RunHeader};
use crate::state::{AccountsPart, PendingInfo, SequencerAudit};
use crate::tier::{ColdRef, ColdStore};
use crate::types::{Timestamp, TxnId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tally_storage::{BlobStore, Keyspace, Store, WriteBatch};

pub(crate) const KEYSPACE_CHECKPOINT: Keyspace = Keyspace(2);
pub(crate) const KEYSPACE_DETAILS: Keyspace = Keyspace(3);

const MANIFEST_KEY: &[u8] = b"manifest";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// This checkpoint's states are the blobs of `generation - 1`.
    /// Generations only grow, and one whose write failed is never reused
    /// (its manifest may still have reached the disk).
    pub generation: u64,
    /// The first log batch the checkpoint does not cover.
    pub next_batch: u64,
    /// Full detail chunks written, per shard.
    pub chunks: Vec<u32>,
    /// The index runs that together make the index, oldest first.
    pub runs: Vec<RunRef>,
    /// The generations whose shard states make the accounts: a full state,
    /// then the deltas written after it, in order.
    pub states: Vec<u64>,
    /// The head of the log's hash chain at `next_batch`: the BLAKE3 of
    /// batch `next_batch - 1`'s record. Replay after the checkpoint must
    /// chain to it.
    pub log_head: [u8; 32],
    /// Size and BLAKE3 of every blob a reopen loads (states, deltas,
    /// sequencer state, index run headers): a blob of the right name but
    /// other content — another generation's, say — is refused. (A run's
    /// pages are checked against the fences in its header.)
    pub sums: Vec<BlobSum>,
    /// Per shard, where its cold chunks are (chunks `0..n`, oldest first)
    /// in its segment of the cold store (`tier.rs`): offset, size and
    /// BLAKE3 of each frame. Their online blobs are gone once this
    /// manifest is durable.
    pub cold: Vec<Vec<ColdRef>>,
}

/// Blobs sealed with their identity: each is stored as
/// `BLAKE3(store id ‖ name ‖ bytes) ‖ bytes`, so a blob copied from
/// another store, another generation or another shard (whose name differs)
/// fails its check when read under this name.
pub(crate) struct SealedBlobs {
    inner: Arc<dyn BlobStore>,
    store: [u8; 16],
}

impl SealedBlobs {
    pub fn new(inner: Arc<dyn BlobStore>, store: [u8; 16]) -> SealedBlobs {
        SealedBlobs { inner, store }
    }

    fn seal(&self, name: &str, bytes: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&self.store);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(bytes);
        *h.finalize().as_bytes()
    }
}

impl BlobStore for SealedBlobs {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), tally_storage::StorageError> {
        let mut sealed = self.seal(name, bytes).to_vec();
        sealed.extend_from_slice(bytes);
        self.inner.put(name, &sealed)
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, tally_storage::StorageError> {
        let Some(mut sealed) = self.inner.get(name)? else {
            return Ok(None);
        };
        if sealed.len() < 32 || sealed[..32] != self.seal(name, &sealed[32..]) {
            return Err(tally_storage::StorageError::Read(format!(
                "blob {name}: checksum mismatch (its BLAKE3 seal of store id, name and content: damaged, or not this store's {name})"
            )));
        }
        sealed.drain(..32);
        Ok(Some(sealed))
    }

    /// Ranged reads and streamed writes pass through unsealed: their
    /// readers check what they read piece by piece (an index run's pages
    /// against the fences in its sealed header).
    fn get_range(
        &self,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, tally_storage::StorageError> {
        self.inner.get_range(name, offset, len)
    }

    fn put_stream(
        &self,
        name: &str,
        next: &mut dyn FnMut() -> Option<Result<Vec<u8>, tally_storage::StorageError>>,
    ) -> Result<(), tally_storage::StorageError> {
        self.inner.put_stream(name, next)
    }

    fn delete(&self, name: &str) -> Result<(), tally_storage::StorageError> {
        self.inner.delete(name)
    }

    fn flush(&self) -> Result<(), tally_storage::StorageError> {
        self.inner.flush()
    }

    fn size_on_disk(&self) -> Result<u64, tally_storage::StorageError> {
        self.inner.size_on_disk()
    }

    fn list(&self) -> Result<Vec<String>, tally_storage::StorageError> {
        self.inner.list()
    }
}

/// Deletes the checkpoint blobs no durable manifest names: those a crash
/// left between a checkpoint's blob writes and its manifest, or between
/// its manifest and the deletion of what it replaced (`write` deletes after
/// the manifest, so a kill there leaves them). Detail chunks past the
/// manifest's counts are written again by the shards. Run at a writable
/// open, before anything else writes. Returns how many were deleted.
pub(crate) fn delete_orphans(
    cold: &dyn BlobStore,
    manifest: Option<&Manifest>,
) -> Result<usize, tally_storage::StorageError> {
    let mut named = std::collections::BTreeSet::new();
    if let Some(m) = manifest {
        for run in &m.runs {
            named.insert(run.data_name());
            named.insert(run.header_name());
        }
        if let Some(previous) = m.generation.checked_sub(1) {
            named.insert(sequencer_name(previous));
        }
        if let Some((&first, deltas)) = m.states.split_first() {
            for shard in 0..m.chunks.len() as u16 {
                named.insert(state_name(first, shard));
                named.extend(deltas.iter().map(|&d| delta_name(d, shard)));
            }
        }
        for (shard, &count) in (0u16..).zip(&m.chunks) {
            // Chunks in the cold store have no online blob any more.
            let cold = m.cold.get(usize::from(shard)).map_or(0, |c| c.len() as u32);
            named.extend((cold..count).map(|c| chunk_name(shard, c)));
        }
    }
    let mut deleted = 0;
    for name in cold.list()? {
        if !named.contains(&name) {
            cold.delete(&name)?;
            deleted += 1;
        }
    }
    if deleted > 0 {
        cold.flush()?;
    }
    Ok(deleted)
}

/// Deltas after a full shard state before the next checkpoint is full
/// again: reopening applies at most this many.
pub(crate) const DELTAS_MAX: usize = 15;

/// The accounts changed since the previous checkpoint (see
/// [`Manifest::states`]), and the shard's detail tail and chunk bounds now.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ShardDelta {
    /// (slot, account), ascending slots; a slot at the end is a new account.
    pub changed: Vec<(u32, AccountState)>,
    /// Accounts in the shard after the delta.
    pub len: u32,
    pub tail: Vec<Detail>,
    pub full_last_ts: Vec<Timestamp>,
    /// All of the shard's skip entries now (they are few).
    pub skips: Vec<SkipEntry>,
}

impl ShardDelta {
    /// Applies the delta to a full state.
    fn apply(self, state: &mut ShardState) -> Result<(), String> {
        for (slot, account) in self.changed {
            match (slot as usize).cmp(&state.accounts.len()) {
                std::cmp::Ordering::Less => state.accounts[slot as usize] = account,
                std::cmp::Ordering::Equal => state.accounts.push(account),
                std::cmp::Ordering::Greater => {
                    return Err(format!(
                        "delta skips from account {} to {slot}",
                        state.accounts.len()
                    ))
                }
            }
        }
        if state.accounts.len() != self.len as usize {
            return Err(format!(
                "delta leaves {} accounts, says {}",
                state.accounts.len(),
                self.len
            ));
        }
        state.tail = self.tail;
        state.full_last_ts = self.full_last_ts;
        state.skips = self.skips;
        Ok(())
    }
}

/// An index run: written by checkpoint `generation`, holding `MERGE_FAN ^
/// level` checkpoints' ids (fewer when checkpoints had none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunRef {
    pub generation: u64,
    pub level: u8,
}

impl RunRef {
    /// The blob of its pages.
    pub fn data_name(&self) -> String {
        format!("r{:016x}-{:02x}", self.generation, self.level)
    }

    /// The blob of its header (filter and fences).
    pub fn header_name(&self) -> String {
        format!("h{:016x}-{:02x}", self.generation, self.level)
    }
}

/// Index runs merged into one: once a level holds this many, they merge
/// into one of the next level (beside the checkpoints: [`compact`]), so
/// the count of runs grows with the log of the checkpoints, and each entry
/// is rewritten once per level.
pub(crate) const MERGE_FAN: usize = 8;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ShardState {
    pub accounts: Vec<AccountState>,
    /// The details after the last full chunk.
    pub tail: Vec<Detail>,
    /// The last timestamp of each full chunk (all of them persisted).
    pub full_last_ts: Vec<Timestamp>,
    /// The shard's skip entries: (slot, timestamp, detail position).
    pub skips: Vec<SkipEntry>,
}

pub(crate) use crate::state::SkipEntry;

/// [`ShardState`] as written: the same encoding, with the accounts read
/// straight from a snapshot's pages.
#[derive(Serialize)]
struct ShardStateOut<'a> {
    accounts: FlatPages<'a>,
    tail: &'a [Detail],
    full_last_ts: &'a [Timestamp],
    skips: &'a [SkipEntry],
}

/// [`ShardDelta`] as written, borrowing from the snapshot.
#[derive(Serialize)]
struct ShardDeltaOut<'a> {
    changed: &'a [(u32, AccountState)],
    len: u32,
    tail: &'a [Detail],
    full_last_ts: &'a [Timestamp],
    skips: &'a [SkipEntry],
}

/// Pages serialized as one sequence.
struct FlatPages<'a>(&'a [Arc<Vec<AccountState>>]);

impl Serialize for FlatPages<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let len = self.0.iter().map(|page| page.len()).sum();
        let mut seq = serializer.serialize_seq(Some(len))?;
        for account in self.0.iter().flat_map(|page| page.iter()) {
            seq.serialize_element(account)?;
        }
        seq.end()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SequencerState {
    pub last_ts: Timestamp,
    pub stats: SequencerAudit,
    pub pendings: Vec<(TxnId, PendingInfo)>,
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// The accounting date open and the one closed last.
    pub calendar: crate::types::Calendar,
}

pub(crate) fn manifest_key() -> Vec<u8> {
    MANIFEST_KEY.to_vec()
}

/// The blob of a shard's state in a generation.
pub(crate) fn state_name(generation: u64, shard: u16) -> String {
    format!("a{generation:016x}-{shard:04x}")
}

/// The blob of a shard's delta (see [`ShardDelta`]) in a generation.
pub(crate) fn delta_name(generation: u64, shard: u16) -> String {
    format!("d{generation:016x}-{shard:04x}")
}

/// The blob of the sequencer's state in a generation.
pub(crate) fn sequencer_name(generation: u64) -> String {
    format!("q{generation:016x}")
}

/// The blob name of a detail chunk: sorts by shard, then chunk.
pub(crate) fn chunk_name(shard: u16, chunk: u32) -> String {
    format!("s{shard:04x}-c{chunk:08x}")
}

pub(crate) use crate::codec::{decode, encode, BlobSum};

/// What a checkpoint restores: the engine as of `manifest.next_batch`.
/// A checkpoint to write: everything taken between two batches.
pub(crate) struct Job {
    /// Blobs are named by this generation; the manifest names the next.
    pub generation: u64,
    /// The newest manifest known durable: its blocks carry over, and its
    /// states are deleted once this one is durable.
    pub previous: Manifest,
    pub shards: Vec<crate::state::ShardSnapshot>,
    /// The index's items since the last checkpoint (ids, refusals, pending
    /// transfers resolved), sorted by the checkpoint thread.
    pub items: Box<dyn FnOnce() -> Page + Send>,
    /// The runs `previous` names, as the sequencer reads them.
    pub runs: Vec<Arc<Run>>,
    /// A merge of runs finished since (`compact`), for this manifest to name
    /// in place of its inputs.
    pub compacted: Option<Compacted>,
    pub keys: Keys,
    /// Where the new run's header goes.
    pub cache: Arc<HeaderCache>,
    pub sequencer: SequencerState,
    /// The first batch the checkpoint does not cover.
    pub next_batch: u64,
    /// The log's head at `next_batch`.
    pub log_head: [u8; 32],
    /// Persisted chunks whose newest detail is older than this many
    /// nanoseconds before the newest batch timestamp move to the cold
    /// store (`None`: the age tier is off).
    pub online_window_ns: Option<u64>,
}

/// What a durable checkpoint hands back to the sequencer.
pub(crate) struct Durable {
    pub manifest: Manifest,
    /// The runs `manifest` names, to look ids up in.
    pub runs: Vec<Arc<Run>>,
    /// Runs merged away: the sequencer deletes them once it reads the new
    /// ones (it may be reading them until then).
    pub retired: Vec<RunRef>,
}

/// The checkpoint made durable, or why not.
pub(crate) type Written = Result<Durable, String>;

/// Encodes and writes a checkpoint. Everything but the manifest is a blob,
/// written and flushed first: the detail chunks (content that never
/// changes), the generation's shard and sequencer states, its index run.
/// A blob no manifest names yet is harmless. Then one atomic write into
/// `store`: the manifest, with the deletion of the log records it covers,
/// flushed. Only then the previous generation's states go. So a crash never
/// leaves a manifest without its blobs, nor a log gap a manifest does not
/// cover. Large values stay off the store: its log is what every group
/// commit flushes, and sled pushes every value through it.
pub(crate) fn write(
    store: &dyn Store,
    cold: &dyn BlobStore,
    tier: &ColdStore,
    job: Job,
) -> Written {
    let Job {
        generation,
        previous,
        shards,
        items,
        runs,
        compacted,
        keys,
        cache,
        sequencer,
        next_batch,
        log_head,
        online_window_ns,
    } = job;
    // Chunks moved to the cold store by this checkpoint: (shard, first,
    // end), their online blobs deleted once the manifest is durable.
    let mut moved: Vec<(u16, u32, u32)> = Vec::new();
    // Sums of the blobs a reopen loads; chunks are checked by their seal.
    let sums = std::cell::RefCell::new(Vec::new());
    let put = |name: &str, bytes: Vec<u8>| {
        if !name.starts_with('s') {
            sums.borrow_mut().push(BlobSum::of(name, &bytes));
        }
        cold.put(name, &bytes).map_err(|e| e.to_string())
    };
    let written = (|| -> Result<Durable, String> {
        let mut chunks = Vec::with_capacity(shards.len());
        for (shard, snapshot) in (0u16..).zip(&shards) {
            for (c, chunk) in &snapshot.chunks {
                put(&chunk_name(shard, *c), encode(chunk.as_slice())?)?;
            }
            match &snapshot.accounts {
                AccountsPart::Full(pages) => {
                    let state = ShardStateOut {
                        accounts: FlatPages(pages),
                        tail: &snapshot.tail,
                        full_last_ts: &snapshot.full_last_ts,
                        skips: &snapshot.skips,
                    };
                    put(&state_name(generation, shard), encode(&state)?)?;
                }
                AccountsPart::Delta { changed, len } => {
                    let delta = ShardDeltaOut {
                        changed,
                        len: *len,
                        tail: &snapshot.tail,
                        full_last_ts: &snapshot.full_last_ts,
                        skips: &snapshot.skips,
                    };
                    put(&delta_name(generation, shard), encode(&delta)?)?;
                }
            }
            chunks.push(snapshot.full_chunks);
        }
        let full = shards
            .iter()
            .all(|s| matches!(s.accounts, AccountsPart::Full(_)));
        let states = if full {
            vec![generation]
        } else if !previous.states.is_empty()
            && shards
                .iter()
                .all(|s| matches!(s.accounts, AccountsPart::Delta { .. }))
        {
            let mut states = previous.states.clone();
            states.push(generation);
            states
        } else {
            return Err("a checkpoint is all full states or all deltas after a full one".into());
        };
        if let Some(c) = &compacted {
            sums.borrow_mut().push(c.sum.clone());
        }
        let (run_refs, runs, merged) = add_run(
            RunStore {
                cold,
                put: &put,
                keys: &keys,
                cache: &cache,
            },
            &previous.runs,
            runs,
            compacted,
            generation,
            items(),
        )?;
        put(&sequencer_name(generation), encode(&sequencer)?)?;
        cold.flush().map_err(|e| e.to_string())?;
        // The age tier: persisted chunks past the online window are
        // appended to the cold store and synced before the manifest names
        // them; their online blobs stay until it is durable.
        let mut cold_refs = previous.cold.clone();
        cold_refs.resize(shards.len(), Vec::new());
        if let Some(window) = online_window_ns {
            let cutoff = Timestamp(sequencer.last_ts.0.saturating_sub(window));
            for ((shard, snapshot), refs) in (0u16..).zip(&shards).zip(&mut cold_refs) {
                let from = refs.len() as u32;
                let aged = snapshot.full_last_ts.partition_point(|&t| t < cutoff);
                let end = (aged as u32).min(snapshot.full_chunks);
                if end <= from {
                    continue;
                }
                let records = (from..end)
                    .map(|c| Ok((c, chunk_record(cold, snapshot, shard, c)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                let placed = tier.append(shard, refs, &records)?;
                refs.extend(placed);
                moved.push((shard, from, end));
            }
        }
        // Sums of the blobs this manifest names: the new ones, and the
        // older ones it keeps naming.
        let mut names: Vec<String> = run_refs.iter().map(RunRef::header_name).collect();
        names.push(sequencer_name(generation));
        if let Some((&first, deltas)) = states.split_first() {
            for shard in 0..shards.len() as u16 {
                names.push(state_name(first, shard));
                names.extend(deltas.iter().map(|&d| delta_name(d, shard)));
            }
        }
        let fresh = sums.borrow().clone();
        let mut manifest_sums = Vec::with_capacity(names.len());
        for name in names {
            let sum = fresh
                .iter()
                .chain(&previous.sums)
                .find(|s| s.name == name)
                .cloned()
                .ok_or_else(|| format!("no checksum for blob {name}"))?;
            manifest_sums.push(sum);
        }
        let manifest = Manifest {
            generation: generation + 1,
            next_batch,
            chunks,
            runs: run_refs,
            states,
            log_head,
            sums: manifest_sums,
            cold: cold_refs,
        };
        let mut batch = WriteBatch::new();
        batch.put(KEYSPACE_CHECKPOINT, manifest_key(), encode(&manifest)?);
        store.write(batch).map_err(|e| e.to_string())?;
        store.flush().map_err(|e| e.to_string())?;
        Ok(Durable {
            manifest,
            runs,
            retired: merged,
        })
    })();
    match written {
        Ok(durable) => {
            let manifest = &durable.manifest;
            // Readers find moved chunks in the cold store from now on;
            // only then their online blobs go (one left behind by a crash
            // is an orphan, deleted at the next open).
            if !moved.is_empty() {
                tier.publish(&manifest.cold);
                for &(shard, from, end) in &moved {
                    for c in from..end {
                        let _ = cold.delete(&chunk_name(shard, c));
                    }
                }
            }
            // Unneeded now; one left behind by a failure is only space.
            if manifest.states.len() == 1 {
                if let Some((&first, deltas)) = previous.states.split_first() {
                    for shard in 0..shards.len() as u16 {
                        let _ = cold.delete(&state_name(first, shard));
                        for &delta in deltas {
                            let _ = cold.delete(&delta_name(delta, shard));
                        }
                    }
                }
            }
            if let Some(previous) = previous.generation.checked_sub(1) {
                let _ = cold.delete(&sequencer_name(previous));
            }
            Ok(durable)
        }
        Err(reason) => Err(reason),
    }
}

/// The encoded record of a persisted full chunk, to move to the cold
/// store: from the snapshot when it took the chunk now, else its online
/// blob (checked by its seal).
fn chunk_record(
    cold: &dyn BlobStore,
    snapshot: &crate::state::ShardSnapshot,
    shard: u16,
    chunk: u32,
) -> Result<Vec<u8>, String> {
    if let Some((_, details)) = snapshot.chunks.iter().find(|(c, _)| *c == chunk) {
        return encode(details.as_slice());
    }
    let name = chunk_name(shard, chunk);
    cold.get(&name)
        .map_err(|e| format!("moving shard {shard} detail chunk {chunk}: {e}"))?
        .ok_or_else(|| format!("moving shard {shard} detail chunk {chunk}: {name} is missing"))
}

/// Writes a blob (and notes its checksum).
type Put<'a> = dyn Fn(&str, Vec<u8>) -> Result<(), String> + 'a;

/// The runs after a checkpoint: the manifest's references, the readers,
/// and the runs merged away.
type RunsAfter = (Vec<RunRef>, Vec<Arc<Run>>, Vec<RunRef>);

/// The runs after a checkpoint: `previous` with a finished merge in place
/// of its inputs, then `items`, the index's items since the previous
/// checkpoint, as a new level-0 run (none when there are none). Merging is
/// not done here (see [`compact`]): a checkpoint's work stays proportional
/// to what happened since the last one.
fn add_run(
    to: RunStore<'_>,
    previous: &[RunRef],
    mut runs: Vec<Arc<Run>>,
    compacted: Option<Compacted>,
    generation: u64,
    items: Page,
) -> Result<RunsAfter, String> {
    let mut refs = previous.to_vec();
    if runs.len() != refs.len() {
        return Err(format!(
            "the sequencer reads {} index runs, the manifest names {}",
            runs.len(),
            refs.len()
        ));
    }
    let mut merged = Vec::new();
    if let Some(c) = compacted {
        let at = refs
            .windows(c.inputs.len())
            .position(|w| w == c.inputs.as_slice())
            .ok_or_else(|| format!("merged runs {:?} are not the manifest's", c.inputs))?;
        let end = at + c.inputs.len();
        refs.splice(at..end, [c.output]);
        runs.splice(at..end, [c.run]);
        merged = c.inputs;
    }
    if items.is_empty() {
        return Ok((refs, runs, merged));
    }
    let newest = RunRef {
        generation,
        level: 0,
    };
    let expected = items.len() as u64;
    let source = items.into_iter().map(Ok);
    let header = write_run(to.cold, to.keys, &newest.data_name(), expected, source)?;
    let bytes = encode(&header)?;
    let source = BlobSum::of(&newest.header_name(), &bytes);
    (to.put)(&newest.header_name(), bytes)?;
    let cache = Arc::clone(to.cache);
    let run = Run::open(to.cold, to.keys, newest.data_name(), header, source, cache)?;
    refs.push(newest);
    runs.push(Arc::new(run));
    Ok((refs, runs, merged))
}

/// Where a checkpoint writes its index run, and what it needs to.
struct RunStore<'a> {
    cold: &'a dyn BlobStore,
    put: &'a Put<'a>,
    keys: &'a Keys,
    cache: &'a Arc<HeaderCache>,
}

/// A merge of index runs, written and flushed, that no manifest names yet.
#[derive(Debug)]
pub(crate) struct Compacted {
    /// The runs merged, consecutive in the manifest's list.
    pub inputs: Vec<RunRef>,
    pub output: RunRef,
    pub run: Arc<Run>,
    /// Its header's size and BLAKE3, for the manifest.
    pub sum: BlobSum,
}

/// The runs to merge next: the oldest `MERGE_FAN` of the lowest level that
/// has that many (a level's runs are consecutive in the list), as (first
/// index, level).
pub(crate) fn due_merge(refs: &[RunRef]) -> Option<(usize, u8)> {
    let mut levels: Vec<u8> = refs.iter().map(|r| r.level).collect();
    levels.sort_unstable();
    levels.dedup();
    levels.into_iter().find_map(|level| {
        let at = refs.iter().position(|r| r.level == level)?;
        let run = refs[at..].iter().take_while(|r| r.level == level).count();
        (run >= MERGE_FAN).then_some((at, level))
    })
}

/// Merges `inputs` into the run `output` in one streaming pass (one page
/// per input in memory), writes its header and flushes both: on a thread
/// of its own, beside the checkpoints, so that a large merge never holds
/// up the next checkpoint (which would keep ids and details in memory for
/// as long). The next checkpoint's manifest names the result.
pub(crate) fn compact(
    cold: &dyn BlobStore,
    keys: &Keys,
    inputs: Vec<(RunRef, Arc<Run>)>,
    output: RunRef,
    cache: Arc<HeaderCache>,
) -> Result<Compacted, String> {
    let expected = inputs.iter().map(|(_, r)| r.items).sum::<u64>();
    let sources: Vec<Pages<'_>> = inputs
        .iter()
        .map(|(_, r)| pages_of(r, cold, keys))
        .collect();
    let header = write_run(
        cold,
        keys,
        &output.data_name(),
        expected,
        Merge::new(sources),
    )?;
    if header.items != expected {
        return Err(format!(
            "merged run {} holds {} items of {expected}",
            output.data_name(),
            header.items
        ));
    }
    let bytes = encode(&header)?;
    let sum = BlobSum::of(&output.header_name(), &bytes);
    cold.put(&output.header_name(), &bytes)
        .map_err(|e| e.to_string())?;
    cold.flush().map_err(|e| e.to_string())?;
    let source = sum.clone();
    let run = Run::open(cold, keys, output.data_name(), header, source, cache)?;
    Ok(Compacted {
        inputs: inputs.iter().map(|(r, _)| *r).collect(),
        output,
        run: Arc::new(run),
        sum,
    })
}

pub(crate) struct Loaded {
    pub manifest: Manifest,
    pub sequencer: SequencerState,
    /// The index's runs, their filters and fences loaded.
    pub runs: Vec<Arc<Run>>,
    /// Per shard: its state and its full chunks, in order.
    /// Per shard: its state, the full chunks left cold, the hot ones.
    pub shards: Vec<(ShardState, u32, Vec<Vec<Detail>>)>,
}

/// Why a checkpoint could not be loaded: the record and the reason.
#[derive(Debug)]
pub(crate) struct LoadError {
    pub record: String,
    pub reason: String,
}

/// Decodes what a store or blob read found, failing by record name.
fn decode_found<T: DeserializeOwned>(
    found: Result<Option<Vec<u8>>, tally_storage::StorageError>,
    record: &str,
) -> Result<T, LoadError> {
    let fail = |reason: String| LoadError {
        record: record.to_string(),
        reason,
    };
    let bytes = found
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("missing".into()))?;
    decode(&bytes).map_err(fail)
}

fn get<T: DeserializeOwned>(
    store: &dyn Store,
    keyspace: Keyspace,
    key: &[u8],
    name: &str,
) -> Result<T, LoadError> {
    decode_found(store.get(keyspace, key), name)
}

/// Reads a blob the manifest names, checks it against the manifest's size
/// and BLAKE3 when it has them (chunks are checked by their seal), and
/// decodes it.
fn blob<T: DeserializeOwned>(
    cold: &dyn BlobStore,
    name: &str,
    record: &str,
) -> Result<T, LoadError> {
    decode_found(cold.get(name), record)
}

fn summed_blob<T: DeserializeOwned>(
    cold: &dyn BlobStore,
    manifest: &Manifest,
    name: &str,
    record: &str,
) -> Result<T, LoadError> {
    manifest_sum(manifest, name, record)?
        .read(cold)
        .map_err(|reason| LoadError {
            record: record.to_string(),
            reason,
        })
}

/// The manifest's sum of blob `name`.
fn manifest_sum<'m>(
    manifest: &'m Manifest,
    name: &str,
    record: &str,
) -> Result<&'m BlobSum, LoadError> {
    manifest
        .sums
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| LoadError {
            record: record.to_string(),
            reason: "the manifest holds no checksum for it".into(),
        })
}

/// Loads the newest checkpoint; of each shard's full detail chunks only the
/// newest `hot_chunks` are read, the rest stay cold in the store.
pub(crate) fn load(
    store: &dyn Store,
    cold: &dyn BlobStore,
    tier: &ColdStore,
    shards: u16,
    hot_chunks: u32,
    keys: &Keys,
    cache: &Arc<HeaderCache>,
) -> Result<Option<Loaded>, LoadError> {
    let present = store
        .get(KEYSPACE_CHECKPOINT, MANIFEST_KEY)
        .map_err(|e| LoadError {
            record: "manifest".into(),
            reason: e.to_string(),
        })?
        .is_some();
    if !present {
        return Ok(None);
    }
    let manifest: Manifest = get(store, KEYSPACE_CHECKPOINT, MANIFEST_KEY, "manifest")?;
    if manifest.generation == 0 || manifest.chunks.len() != usize::from(shards) {
        return Err(LoadError {
            record: "manifest".into(),
            reason: format!(
                "generation {} with {} shards' chunk counts, expected {shards}",
                manifest.generation,
                manifest.chunks.len()
            ),
        });
    }
    for (shard, refs) in (0u16..).zip(&manifest.cold) {
        let full = manifest
            .chunks
            .get(usize::from(shard))
            .copied()
            .unwrap_or(0);
        if manifest.cold.len() != usize::from(shards) || refs.len() as u64 > u64::from(full) {
            return Err(LoadError {
                record: "manifest".into(),
                reason: format!(
                    "names {} cold chunks of shard {shard}, which has {full}",
                    refs.len()
                ),
            });
        }
    }
    tier.check_at_open(&manifest.cold)
        .map_err(|(record, reason)| LoadError { record, reason })?;
    tier.publish(&manifest.cold);
    let generation = manifest.generation - 1;
    let sequencer = summed_blob(
        cold,
        &manifest,
        &sequencer_name(generation),
        &format!("sequencer state {generation}"),
    )?;
    let mut runs = Vec::with_capacity(manifest.runs.len());
    for r in &manifest.runs {
        let record = format!("index run {}", r.data_name());
        let source = manifest_sum(&manifest, &r.header_name(), &record)?.clone();
        let header: RunHeader = summed_blob(cold, &manifest, &r.header_name(), &record)?;
        let run = Run::open(cold, keys, r.data_name(), header, source, Arc::clone(cache))
            .map_err(|reason| LoadError { record, reason })?;
        runs.push(Arc::new(run));
    }
    let mut loaded_shards = Vec::with_capacity(usize::from(shards));
    let Some((&first, deltas)) = manifest.states.split_first() else {
        return Err(LoadError {
            record: "manifest".into(),
            reason: "names no shard states".into(),
        });
    };
    for shard in 0..shards {
        let mut state: ShardState = summed_blob(
            cold,
            &manifest,
            &state_name(first, shard),
            &format!("shard {shard} state {first}"),
        )?;
        for &delta in deltas {
            let record = format!("shard {shard} delta {delta}");
            let changes: ShardDelta =
                summed_blob(cold, &manifest, &delta_name(delta, shard), &record)?;
            changes
                .apply(&mut state)
                .map_err(|reason| LoadError { record, reason })?;
        }
        let full = manifest.chunks[usize::from(shard)];
        let cold_chunks = full.saturating_sub(hot_chunks);
        let chunks = (cold_chunks..full)
            .map(|c| match tier.read(shard, c) {
                Some(read) => read.map_err(|reason| LoadError {
                    record: format!("shard {shard} detail chunk {c}"),
                    reason,
                }),
                None => blob(
                    cold,
                    &chunk_name(shard, c),
                    &format!("shard {shard} detail chunk {c}"),
                ),
            })
            .collect::<Result<Vec<Vec<Detail>>, _>>()?;
        loaded_shards.push((state, cold_chunks, chunks));
    }
    Ok(Some(Loaded {
        manifest,
        sequencer,
        runs,
        shards: loaded_shards,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn no_tier() -> ColdStore {
        ColdStore::new(None, [0; 16], 1, true)
    }

    #[test]
    fn records_round_trip_and_damage_is_caught() {
        let manifest = Manifest {
            generation: 3,
            next_batch: 77,
            chunks: vec![1, 0],
            states: vec![1, 2],
            runs: vec![
                RunRef {
                    generation: 0,
                    level: 1,
                },
                RunRef::default(),
            ],
            log_head: [9; 32],
            sums: vec![BlobSum::of("q2", b"abc")],
            cold: Vec::new(),
        };
        let bytes = encode(&manifest).expect("encode");
        assert_eq!(decode::<Manifest>(&bytes), Ok(manifest));
        for at in [0, 4, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(decode::<Manifest>(&damaged).is_err(), "flip at {at}");
        }
        assert!(decode::<Manifest>(&bytes[..3]).is_err());
    }

    fn job(
        generation: u64,
        previous: &Manifest,
        runs: &[Arc<Run>],
        items: Page,
        last_ts: u64,
        log_end: u64,
    ) -> Job {
        Job {
            generation,
            previous: previous.clone(),
            shards: vec![crate::state::ShardSnapshot {
                accounts: AccountsPart::Full(Vec::new()),
                tail: Vec::new(),
                full_last_ts: Vec::new(),
                skips: Vec::new(),
                chunks: Vec::new(),
                full_chunks: 0,
            }],
            items: Box::new(move || items),
            runs: runs.to_vec(),
            compacted: None,
            keys: keys(),
            cache: HeaderCache::new(usize::MAX),
            sequencer: SequencerState {
                last_ts: Timestamp(last_ts),
                stats: SequencerAudit::default(),
                pendings: Vec::new(),
                records: Vec::new(),
                calendar: Default::default(),
            },
            next_batch: log_end,
            log_head: [log_end as u8; 32],
            online_window_ns: None,
        }
    }

    fn keys() -> Keys {
        Keys::new([4; 16], &[5; 32])
    }

    /// A try whose manifest reached the store although its flush failed,
    /// then a retry that crashed before its own manifest: reopening finds
    /// the first try's manifest with exactly the states it wrote, because
    /// the retry wrote under a new generation.
    #[test]
    fn a_failed_try_whose_manifest_stuck_keeps_its_states() {
        use std::sync::Arc;
        use tally_storage::{Fault, FaultStore, MemoryStore, StoreBlobs};
        let store = FaultStore::new(Arc::new(MemoryStore::new()));
        let cold = StoreBlobs::new(Arc::new(MemoryStore::new()), KEYSPACE_DETAILS);
        let item = |id: u128| {
            let entry = crate::state::IndexEntry::new([1, 1], Timestamp(1), true);
            vec![(id, crate::runs::Item::Entry(entry, None))]
        };
        let first = write(
            &store,
            &cold,
            &no_tier(),
            job(0, &Manifest::default(), &[], item(1), 10, 5),
        )
        .expect("first");
        store.inject(Fault::FailNextFlush);
        let stuck = write(
            &store,
            &cold,
            &no_tier(),
            job(1, &first.manifest, &first.runs, item(2), 20, 9),
        );
        assert!(stuck.is_err(), "the flush failed");
        store.inject(Fault::FailNextWrite);
        let retry = write(
            &store,
            &cold,
            &no_tier(),
            job(2, &first.manifest, &first.runs, item(3), 30, 12),
        );
        assert!(retry.is_err(), "crashed before its manifest");
        let loaded = load(
            &store,
            &cold,
            &no_tier(),
            1,
            0,
            &keys(),
            &HeaderCache::new(usize::MAX),
        )
        .expect("load")
        .expect("present");
        assert_eq!(
            (loaded.manifest.next_batch, loaded.sequencer.last_ts),
            (9, Timestamp(20)),
            "the stuck manifest and its own states"
        );
        let generations: Vec<u64> = loaded.manifest.runs.iter().map(|b| b.generation).collect();
        assert_eq!(generations, vec![0, 1]);
    }

    /// 100 checkpoints, each followed by the merge that is due (as the
    /// sequencer runs them, beside the checkpoints), leave a handful of
    /// index runs holding every entry exactly once, found by look-ups after
    /// a reopen; the runs merged away are gone.
    #[test]
    fn index_runs_merge_and_keep_every_entry_once() {
        use crate::runs::{Item, KIND_ENTRY};
        use crate::state::IndexEntry;
        use tally_storage::{MemoryStore, StoreBlobs};
        let store = MemoryStore::new();
        let cold = StoreBlobs::new(Arc::new(MemoryStore::new()), KEYSPACE_DETAILS);
        let mut manifest = Manifest::default();
        let mut runs: Vec<Arc<Run>> = Vec::new();
        let mut compacted = None;
        let mut generation = 0u64;
        let entry = |g: u64| IndexEntry::new([7, 7], Timestamp(g + 1), true);
        for round in 0..100u64 {
            let items: Page = (0..3u128)
                .map(|i| {
                    let id = u128::from(round) << 8 | i;
                    (id, Item::Entry(entry(round), None))
                })
                .collect();
            let mut next = job(generation, &manifest, &runs, items, round, round + 1);
            next.compacted = compacted.take();
            generation += 1;
            let durable = write(&store, &cold, &no_tier(), next).expect("checkpoint");
            (manifest, runs) = (durable.manifest, durable.runs);
            // As the sequencer does once it reads the new runs.
            for run in durable.retired {
                cold.delete(&run.data_name()).expect("delete");
                cold.delete(&run.header_name()).expect("delete");
            }
            if let Some((at, level)) = due_merge(&manifest.runs) {
                let inputs: Vec<(RunRef, Arc<Run>)> = manifest.runs[at..at + MERGE_FAN]
                    .iter()
                    .copied()
                    .zip(runs[at..at + MERGE_FAN].iter().cloned())
                    .collect();
                let output = RunRef {
                    generation,
                    level: level + 1,
                };
                generation += 1;
                compacted = Some(
                    compact(&cold, &keys(), inputs, output, HeaderCache::new(usize::MAX))
                        .expect("merge"),
                );
            }
            assert!(manifest.runs.len() <= 3 * MERGE_FAN, "{:?}", manifest.runs);
        }
        let levels: Vec<u8> = manifest.runs.iter().map(|b| b.level).collect();
        assert!(levels.contains(&2), "{levels:?}");
        assert!(levels.windows(2).all(|w| w[0] >= w[1]), "{levels:?}");
        let loaded = load(
            &store,
            &cold,
            &no_tier(),
            1,
            0,
            &keys(),
            &HeaderCache::new(usize::MAX),
        )
        .expect("load")
        .expect("present");
        let k = keys();
        let mut ids: Vec<u128> = loaded
            .runs
            .iter()
            .flat_map(|r| pages_of(r, &cold, &k).flat_map(|p| p.expect("page")))
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        let expected: Vec<u128> = (0..100u128)
            .flat_map(|g| (0..3u128).map(move |i| g << 8 | i))
            .collect();
        assert_eq!(ids, expected);
        for &id in &expected {
            let key = (id, KIND_ENTRY);
            let found: Vec<Item> = loaded
                .runs
                .iter()
                .filter_map(|r| {
                    let header = r.header(&cold).expect("header");
                    r.get(&cold, &keys(), &header, key, keys().probe(key))
                        .expect("get")
                })
                .collect();
            assert_eq!(found, vec![Item::Entry(entry((id >> 8) as u64), None)]);
        }
        // Only the runs the manifest names are left, and the merge not yet
        // named (the next checkpoint would name it).
        let pending: Vec<RunRef> = compacted.iter().map(|c| c.output).collect();
        for generation in 0..generation {
            for level in 0..3u8 {
                let run = RunRef { generation, level };
                let named = manifest.runs.contains(&run) || pending.contains(&run);
                for name in [run.data_name(), run.header_name()] {
                    let present = cold.get(&name).expect("get").is_some();
                    assert_eq!(present, named, "run {name}");
                }
            }
        }
    }

    /// The shard state written from pages reads back as one vector.
    #[test]
    fn a_shard_state_written_from_pages_reads_back_whole() {
        use crate::account::NewAccount;
        use crate::types::{AccountId, Currency};
        let accounts: Vec<AccountState> = (0..10u64)
            .map(|i| {
                let new = NewAccount::customer(AccountId(i), Currency::CNY);
                AccountState::open(&new, 2, crate::types::Minor(0))
            })
            .collect();
        let pages = vec![
            Arc::new(accounts[..4].to_vec()),
            Arc::new(accounts[4..].to_vec()),
        ];
        let written = ShardStateOut {
            accounts: FlatPages(&pages),
            tail: &[],
            full_last_ts: &[Timestamp(3)],
            skips: &[(1, Timestamp(2), 0)],
        };
        let read: ShardState = decode(&encode(&written).expect("encode")).expect("decode");
        assert_eq!(read.accounts, accounts);
        assert_eq!(read.full_last_ts, vec![Timestamp(3)]);
        assert_eq!(read.skips, vec![(1, Timestamp(2), 0)]);
    }

    #[test]
    fn a_delta_changes_and_adds_accounts_and_refuses_gaps() {
        use crate::account::NewAccount;
        use crate::types::{AccountId, Currency, Minor};
        let account = |i: u64, version: u64| {
            let new = NewAccount::customer(AccountId(i), Currency::CNY);
            let mut a = AccountState::open(&new, 2, Minor(0));
            a.version = version;
            a
        };
        let base = || ShardState {
            accounts: (0..3).map(|i| account(i, 0)).collect(),
            tail: Vec::new(),
            full_last_ts: Vec::new(),
            skips: Vec::new(),
        };
        let delta = |changed: Vec<(u32, AccountState)>, len: u32| ShardDelta {
            changed,
            len,
            tail: Vec::new(),
            full_last_ts: vec![Timestamp(9)],
            skips: vec![(0, Timestamp(1), 0)],
        };
        let mut state = base();
        delta(vec![(1, account(1, 5)), (3, account(3, 1))], 4)
            .apply(&mut state)
            .expect("applies");
        let versions: Vec<u64> = state.accounts.iter().map(|a| a.version).collect();
        assert_eq!(versions, vec![0, 5, 0, 1]);
        assert_eq!(state.full_last_ts, vec![Timestamp(9)]);
        assert_eq!(state.skips, vec![(0, Timestamp(1), 0)]);
        assert!(
            delta(vec![(4, account(4, 1))], 5)
                .apply(&mut base())
                .is_err(),
            "gap"
        );
        assert!(
            delta(vec![(0, account(0, 1))], 4)
                .apply(&mut base())
                .is_err(),
            "length"
        );
    }

    #[test]
    fn names_sort_by_generation_then_shard() {
        assert!(state_name(1, 9) < state_name(2, 0));
        let run = |generation, level| RunRef { generation, level }.data_name();
        assert!(run(255, 9) < run(256, 0));
        assert!(chunk_name(0, u32::MAX) < chunk_name(1, 0));
        assert!(chunk_name(0, 9) < chunk_name(0, 10));
    }
}
