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
//! - blob `i<generation>-<level>` → a list of encoded [`Block`]s:
//!   idempotency entries and refusals (together, the blocks the manifest
//!   names are the whole index); eight blobs of a level merge into one of
//!   the next by concatenating their lists (see [`BlockRef`]).
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
use crate::state::{AccountsPart, IndexEntry, PendingInfo, SequencerAudit};
use crate::txn::Reject;
use crate::types::{Timestamp, TxnCode, TxnId};
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
    /// The index blocks that together make the index, oldest first.
    pub blocks: Vec<BlockRef>,
    /// The generations whose shard states make the accounts: a full state,
    /// then the deltas written after it, in order.
    pub states: Vec<u64>,
    /// The head of the log's hash chain at `next_batch`: the BLAKE3 of
    /// batch `next_batch - 1`'s record. Replay after the checkpoint must
    /// chain to it.
    pub log_head: [u8; 32],
    /// Size and BLAKE3 of every blob a reopen loads (states, deltas,
    /// sequencer state, index blocks): a blob of the right name but other
    /// content — another generation's, say — is refused.
    pub sums: Vec<BlobSum>,
}

/// A blob's name, size and BLAKE3.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlobSum {
    pub name: String,
    pub len: u64,
    pub hash: [u8; 32],
}

impl BlobSum {
    fn of(name: &str, bytes: &[u8]) -> BlobSum {
        BlobSum {
            name: name.to_string(),
            len: bytes.len() as u64,
            hash: *blake3::hash(bytes).as_bytes(),
        }
    }
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
        named.extend(m.blocks.iter().map(BlockRef::name));
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
            named.extend((0..count).map(|c| chunk_name(shard, c)));
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

/// An index block: written by checkpoint `generation`, holding `MERGE_FAN ^
/// level` checkpoints' entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlockRef {
    pub generation: u64,
    pub level: u8,
}

impl BlockRef {
    pub fn name(&self) -> String {
        block_name(self.generation, self.level)
    }
}

/// Index blocks merged into one: a manifest names at most `MERGE_FAN - 1`
/// blocks per level, so the count grows with the log of the checkpoints,
/// and each entry is rewritten once per level.
const MERGE_FAN: usize = 8;

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
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Block {
    pub index: Vec<(TxnId, IndexEntry)>,
    pub refusals: Vec<(TxnId, (Reject, TxnCode))>,
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

/// The blob of an index block (see [`BlockRef`]).
pub(crate) fn block_name(generation: u64, level: u8) -> String {
    format!("i{generation:016x}-{level:02x}")
}

/// The blob name of a detail chunk: sorts by shard, then chunk.
pub(crate) fn chunk_name(shard: u16, chunk: u32) -> String {
    format!("s{shard:04x}-c{chunk:08x}")
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let body = postcard::to_allocvec(value).map_err(|e| e.to_string())?;
    let mut out = crc32fast::hash(&body).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (crc, body) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| "record shorter than its checksum".to_string())?;
    if u32::from_le_bytes(*crc) != crc32fast::hash(body) {
        return Err("checksum mismatch".into());
    }
    postcard::from_bytes(body).map_err(|e| format!("undecodable: {e}"))
}

/// What a checkpoint restores: the engine as of `manifest.next_batch`.
/// A checkpoint to write: everything taken between two batches.
pub(crate) struct Job {
    /// Blobs are named by this generation; the manifest names the next.
    pub generation: u64,
    /// The newest manifest known durable: its blocks carry over, and its
    /// states are deleted once this one is durable.
    pub previous: Manifest,
    pub shards: Vec<crate::state::ShardSnapshot>,
    /// Index entries and refusals since the last written checkpoint.
    pub block: Block,
    pub sequencer: SequencerState,
    /// The first batch the checkpoint does not cover.
    pub next_batch: u64,
    /// The log's head at `next_batch`.
    pub log_head: [u8; 32],
}

/// The manifest made durable, or why not and the job's index block (to be
/// written with the next one).
pub(crate) type Written = Result<Manifest, (String, Option<Block>)>;

/// Encodes and writes a checkpoint. Everything but the manifest is a blob,
/// written and flushed first: the detail chunks (content that never
/// changes), the generation's shard and sequencer states, its index block.
/// A blob no manifest names yet is harmless. Then one atomic write into
/// `store`: the manifest, with the deletion of the log records it covers,
/// flushed. Only then the previous generation's states go. So a crash never
/// leaves a manifest without its blobs, nor a log gap a manifest does not
/// cover. Large values stay off the store: its log is what every group
/// commit flushes, and sled pushes every value through it.
pub(crate) fn write(store: &dyn Store, cold: &dyn BlobStore, job: Job) -> Written {
    let Job {
        generation,
        previous,
        shards,
        block,
        sequencer,
        next_batch,
        log_head,
    } = job;
    // Sums of the blobs a reopen loads; chunks are checked by their seal.
    let sums = std::cell::RefCell::new(Vec::new());
    let put = |name: &str, bytes: Vec<u8>| {
        if !name.starts_with('s') {
            sums.borrow_mut().push(BlobSum::of(name, &bytes));
        }
        cold.put(name, &bytes).map_err(|e| e.to_string())
    };
    let mut merged_away = Vec::new();
    let written = (|| -> Result<Manifest, String> {
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
        let (blocks, merged) = add_block(cold, &put, &previous.blocks, generation, &block)?;
        merged_away = merged;
        put(&sequencer_name(generation), encode(&sequencer)?)?;
        cold.flush().map_err(|e| e.to_string())?;
        // Sums of the blobs this manifest names: the new ones, and the
        // older ones it keeps naming.
        let mut names: Vec<String> = blocks.iter().map(BlockRef::name).collect();
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
            blocks,
            states,
            log_head,
            sums: manifest_sums,
        };
        let mut batch = WriteBatch::new();
        batch.put(KEYSPACE_CHECKPOINT, manifest_key(), encode(&manifest)?);
        store.write(batch).map_err(|e| e.to_string())?;
        store.flush().map_err(|e| e.to_string())?;
        Ok(manifest)
    })();
    match written {
        Ok(manifest) => {
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
            for block in merged_away {
                let _ = cold.delete(&block.name());
            }
            Ok(manifest)
        }
        Err(reason) => Err((reason, Some(block))),
    }
}

/// Writes a blob (and notes its checksum).
type Put<'a> = dyn Fn(&str, Vec<u8>) -> Result<(), String> + 'a;

/// Writes `block`, the entries of checkpoint `generation`, after the
/// `previous` blocks: merged with the newest of them while `MERGE_FAN`
/// blocks of one level are at hand (level 0 first, then up). Returns the
/// new list of blocks and the ones merged away (to delete once a manifest
/// without them is durable).
fn add_block(
    cold: &dyn BlobStore,
    put: &Put<'_>,
    previous: &[BlockRef],
    generation: u64,
    block: &Block,
) -> Result<(Vec<BlockRef>, Vec<BlockRef>), String> {
    let mut blocks = previous.to_vec();
    let mut merged_away = Vec::new();
    // A block blob is a list of encoded checkpoint blocks: merging
    // concatenates the lists, bytes only, with no entry decoded again.
    let mut parts: Vec<Vec<u8>> = vec![encode(block)?];
    let mut level = 0u8;
    let siblings = MERGE_FAN - 1;
    while blocks.len() >= siblings
        && blocks[blocks.len() - siblings..]
            .iter()
            .all(|b| b.level == level)
    {
        let mut older_parts = Vec::new();
        for older in blocks.split_off(blocks.len() - siblings) {
            let bytes = cold
                .get(&older.name())
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("index block {} missing", older.name()))?;
            older_parts.extend(decode::<Vec<Vec<u8>>>(&bytes)?);
            merged_away.push(older);
        }
        older_parts.append(&mut parts);
        parts = older_parts;
        level += 1;
    }
    let newest = BlockRef { generation, level };
    put(&newest.name(), encode(&parts)?)?;
    blocks.push(newest);
    Ok((blocks, merged_away))
}

pub(crate) struct Loaded {
    pub manifest: Manifest,
    pub sequencer: SequencerState,
    pub blocks: Vec<Block>,
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
    let fail = |reason: String| LoadError {
        record: record.to_string(),
        reason,
    };
    let sum = manifest
        .sums
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| fail("the manifest holds no checksum for it".into()))?;
    let bytes = cold
        .get(name)
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("missing".into()))?;
    if bytes.len() as u64 != sum.len || *blake3::hash(&bytes).as_bytes() != sum.hash {
        return Err(fail(format!(
            "{} bytes that do not match the manifest's size ({}) and BLAKE3",
            bytes.len(),
            sum.len
        )));
    }
    decode(&bytes).map_err(fail)
}

/// Loads the newest checkpoint; of each shard's full detail chunks only the
/// newest `hot_chunks` are read, the rest stay cold in the store.
pub(crate) fn load(
    store: &dyn Store,
    cold: &dyn BlobStore,
    shards: u16,
    hot_chunks: u32,
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
    let generation = manifest.generation - 1;
    let sequencer = summed_blob(
        cold,
        &manifest,
        &sequencer_name(generation),
        &format!("sequencer state {generation}"),
    )?;
    let mut blocks = Vec::new();
    for b in &manifest.blocks {
        let record = format!("index block {}", b.name());
        let parts: Vec<Vec<u8>> = summed_blob(cold, &manifest, &b.name(), &record)?;
        for part in parts {
            blocks.push(decode(&part).map_err(|reason| LoadError {
                record: record.clone(),
                reason,
            })?);
        }
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
            .map(|c| {
                blob(
                    cold,
                    &chunk_name(shard, c),
                    &format!("shard {shard} detail chunk {c}"),
                )
            })
            .collect::<Result<Vec<Vec<Detail>>, _>>()?;
        loaded_shards.push((state, cold_chunks, chunks));
    }
    Ok(Some(Loaded {
        manifest,
        sequencer,
        blocks,
        shards: loaded_shards,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_caught() {
        let manifest = Manifest {
            generation: 3,
            next_batch: 77,
            chunks: vec![1, 0],
            states: vec![1, 2],
            blocks: vec![
                BlockRef {
                    generation: 0,
                    level: 1,
                },
                BlockRef::default(),
            ],
            log_head: [9; 32],
            sums: vec![BlobSum::of("q2", b"abc")],
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

    fn job(generation: u64, previous: &Manifest, last_ts: u64, log_end: u64) -> Job {
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
            block: Block::default(),
            sequencer: SequencerState {
                last_ts: Timestamp(last_ts),
                stats: SequencerAudit::default(),
                pendings: Vec::new(),
                records: Vec::new(),
            },
            next_batch: log_end,
            log_head: [log_end as u8; 32],
        }
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
        let first = write(&store, &cold, job(0, &Manifest::default(), 10, 5)).expect("first");
        store.inject(Fault::FailNextFlush);
        let stuck = write(&store, &cold, job(1, &first, 20, 9));
        assert!(stuck.is_err(), "the flush failed");
        store.inject(Fault::FailNextWrite);
        let retry = write(&store, &cold, job(2, &first, 30, 12));
        assert!(retry.is_err(), "crashed before its manifest");
        let loaded = load(&store, &cold, 1, 0).expect("load").expect("present");
        assert_eq!(
            (loaded.manifest.next_batch, loaded.sequencer.last_ts),
            (9, Timestamp(20)),
            "the stuck manifest and its own states"
        );
        let generations: Vec<u64> = loaded
            .manifest
            .blocks
            .iter()
            .map(|b| b.generation)
            .collect();
        assert_eq!(generations, vec![0, 1]);
    }

    /// 100 checkpoints leave a handful of index blocks (at most
    /// `MERGE_FAN - 1` per level) holding every entry exactly once, and the
    /// blocks merged away are gone.
    #[test]
    fn index_blocks_merge_and_keep_every_entry_once() {
        use crate::state::IndexEntry;
        use std::sync::Arc;
        use tally_storage::{MemoryStore, StoreBlobs};
        let store = MemoryStore::new();
        let cold = StoreBlobs::new(Arc::new(MemoryStore::new()), KEYSPACE_DETAILS);
        let mut manifest = Manifest::default();
        for generation in 0..100u64 {
            let mut next = job(generation, &manifest, generation, generation + 1);
            for i in 0..3u128 {
                let id = TxnId(u128::from(generation) << 8 | i);
                let entry = IndexEntry::new([7, 7], Timestamp(generation + 1), true);
                next.block.index.push((id, entry));
            }
            manifest = write(&store, &cold, next).expect("checkpoint");
            assert!(
                manifest.blocks.len() <= 2 * (MERGE_FAN - 1),
                "{:?}",
                manifest.blocks
            );
        }
        // 100 = 1·64 + 4·8 + 4·1 in base 8.
        let levels: Vec<u8> = manifest.blocks.iter().map(|b| b.level).collect();
        assert_eq!(levels, vec![2, 1, 1, 1, 1, 0, 0, 0, 0]);
        let loaded = load(&store, &cold, 1, 0).expect("load").expect("present");
        let mut ids: Vec<TxnId> = loaded
            .blocks
            .iter()
            .flat_map(|b| b.index.iter().map(|(id, _)| *id))
            .collect();
        ids.sort();
        let expected: Vec<TxnId> = (0..100u128)
            .flat_map(|g| (0..3u128).map(move |i| TxnId(g << 8 | i)))
            .collect();
        assert_eq!(ids, expected);
        // Only the blocks the manifest names are left.
        for generation in 0..100u64 {
            for level in 0..3u8 {
                let named = manifest.blocks.contains(&BlockRef { generation, level });
                let present = cold
                    .get(&block_name(generation, level))
                    .expect("get")
                    .is_some();
                assert_eq!(present, named, "block {generation}/{level}");
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
        assert!(block_name(255, 9) < block_name(256, 0));
        assert!(chunk_name(0, u32::MAX) < chunk_name(1, 0));
        assert!(chunk_name(0, 9) < chunk_name(0, 10));
    }
}
