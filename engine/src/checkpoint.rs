//! Checkpoints: the engine's state written to the store as derived data, so
//! that reopening loads it and replays only the log after it.
//!
//! A checkpoint is one atomic `WriteBatch`, ordered so that even a torn
//! prefix of it is harmless: new detail chunks and the new generation's
//! records first, the manifest that points at that generation next, and
//! only then the deletions of the previous generation and of the log
//! records the manifest now covers.
//!
//! Layout (keyspace `KEYSPACE_CHECKPOINT`):
//! - `manifest` → [`Manifest`]: the generation, the first batch not covered.
//! - `a` + generation + shard → [`ShardState`]: accounts and the details of
//!   the shard's unfinished chunk.
//! - `s` + generation → [`SequencerState`]: clock, counters, pending transfers.
//! - `i` + n → [`Block`]: idempotency entries added by checkpoint n (kept:
//!   together they are the whole index).
//!
//! Keyspace `KEYSPACE_DETAILS`: shard + chunk number → a full chunk of
//! details, written once.
//!
//! Every value is `crc32 (LE) ‖ postcard`: compact, and a flipped bit is
//! caught rather than loaded.

use crate::account::AccountState;
use crate::detail::Detail;
use crate::sequencer::KEYSPACE_LOG;
use crate::sequencer::{IndexEntry, PendingInfo, SequencerAudit};
use crate::txn::Reject;
use crate::types::{Timestamp, TxnCode, TxnId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tally_storage::{Keyspace, Store, WriteBatch};

pub(crate) const KEYSPACE_CHECKPOINT: Keyspace = Keyspace(2);
pub(crate) const KEYSPACE_DETAILS: Keyspace = Keyspace(3);

const MANIFEST_KEY: &[u8] = b"manifest";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// Checkpoints taken so far; this one's records carry `generation - 1`.
    pub generation: u64,
    /// The first log batch the checkpoint does not cover.
    pub next_batch: u64,
    /// Full detail chunks written, per shard.
    pub chunks: Vec<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ShardState {
    pub accounts: Vec<AccountState>,
    /// The details after the last full chunk.
    pub tail: Vec<Detail>,
    /// The last timestamp of each full chunk (all of them persisted).
    pub full_last_ts: Vec<Timestamp>,
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

pub(crate) fn shard_key(generation: u64, shard: u16) -> Vec<u8> {
    let mut key = vec![b'a'];
    key.extend_from_slice(&generation.to_be_bytes());
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

pub(crate) fn sequencer_key(generation: u64) -> Vec<u8> {
    let mut key = vec![b's'];
    key.extend_from_slice(&generation.to_be_bytes());
    key
}

pub(crate) fn block_key(n: u64) -> Vec<u8> {
    let mut key = vec![b'i'];
    key.extend_from_slice(&n.to_be_bytes());
    key
}

pub(crate) fn chunk_key(shard: u16, chunk: u32) -> Vec<u8> {
    let mut key = shard.to_be_bytes().to_vec();
    key.extend_from_slice(&chunk.to_be_bytes());
    key
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
    /// Records are keyed by this generation; the manifest names the next.
    pub generation: u64,
    pub shards: Vec<crate::shard::ShardSnapshot>,
    /// Index entries and refusals since the last written checkpoint.
    pub block: Block,
    pub sequencer: SequencerState,
    /// The log records the checkpoint covers (and deletes).
    pub log: std::ops::Range<u64>,
}

/// The manifest made durable, or why not and the job's index block (to be
/// written with the next one).
pub(crate) type Written = Result<Manifest, (String, Option<Block>)>;

/// Encodes and writes a checkpoint as one atomic batch, then flushes:
/// detail chunks first, then the generation's records and the manifest, and
/// only after the manifest the deletion of the previous generation and of
/// the log it covers, so a torn write never leaves a manifest without its
/// records nor drops a record a manifest on disk still needs.
pub(crate) fn write(store: &dyn Store, job: Job) -> Written {
    let Job {
        generation,
        shards,
        block,
        sequencer,
        log,
    } = job;
    let mut batch = WriteBatch::new();
    let encoded = (|| -> Result<Manifest, String> {
        let mut chunks = Vec::with_capacity(shards.len());
        for (shard, snapshot) in (0u16..).zip(&shards) {
            for (c, details) in &snapshot.chunks {
                batch.put(
                    KEYSPACE_DETAILS,
                    chunk_key(shard, *c),
                    encode(details.as_slice())?,
                );
            }
            batch.put(
                KEYSPACE_CHECKPOINT,
                shard_key(generation, shard),
                encode(&snapshot.state)?,
            );
            chunks.push(snapshot.full_chunks);
        }
        batch.put(KEYSPACE_CHECKPOINT, block_key(generation), encode(&block)?);
        batch.put(
            KEYSPACE_CHECKPOINT,
            sequencer_key(generation),
            encode(&sequencer)?,
        );
        let manifest = Manifest {
            generation: generation + 1,
            next_batch: log.end,
            chunks,
        };
        batch.put(KEYSPACE_CHECKPOINT, manifest_key(), encode(&manifest)?);
        if let Some(previous) = generation.checked_sub(1) {
            for shard in 0..shards.len() as u16 {
                batch.delete(KEYSPACE_CHECKPOINT, shard_key(previous, shard));
            }
            batch.delete(KEYSPACE_CHECKPOINT, sequencer_key(previous));
        }
        for n in log {
            batch.delete(KEYSPACE_LOG, n.to_be_bytes().to_vec());
        }
        Ok(manifest)
    })();
    let written = encoded.and_then(|manifest| {
        store
            .write(batch)
            .and_then(|()| store.flush())
            .map(|()| manifest)
            .map_err(|e| e.to_string())
    });
    written.map_err(|reason| (reason, Some(block)))
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

fn get<T: DeserializeOwned>(
    store: &dyn Store,
    keyspace: Keyspace,
    key: &[u8],
    name: &str,
) -> Result<T, LoadError> {
    let fail = |reason: String| LoadError {
        record: name.to_string(),
        reason,
    };
    let bytes = store
        .get(keyspace, key)
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("missing".into()))?;
    decode(&bytes).map_err(fail)
}

/// Loads the newest checkpoint, if the store has one.
/// Loads the newest checkpoint; of each shard's full detail chunks only the
/// newest `hot_chunks` are read, the rest stay cold in the store.
pub(crate) fn load(
    store: &dyn Store,
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
    let sequencer = get(
        store,
        KEYSPACE_CHECKPOINT,
        &sequencer_key(generation),
        &format!("sequencer state {generation}"),
    )?;
    let blocks = (0..manifest.generation)
        .map(|n| {
            get(
                store,
                KEYSPACE_CHECKPOINT,
                &block_key(n),
                &format!("index block {n}"),
            )
        })
        .collect::<Result<Vec<Block>, _>>()?;
    let mut loaded_shards = Vec::with_capacity(usize::from(shards));
    for shard in 0..shards {
        let state = get(
            store,
            KEYSPACE_CHECKPOINT,
            &shard_key(generation, shard),
            &format!("shard {shard} state {generation}"),
        )?;
        let full = manifest.chunks[usize::from(shard)];
        let cold = full.saturating_sub(hot_chunks);
        let chunks = (cold..full)
            .map(|c| {
                get(
                    store,
                    KEYSPACE_DETAILS,
                    &chunk_key(shard, c),
                    &format!("shard {shard} detail chunk {c}"),
                )
            })
            .collect::<Result<Vec<Vec<Detail>>, _>>()?;
        loaded_shards.push((state, cold, chunks));
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

    #[test]
    fn keys_sort_by_generation_then_shard() {
        assert!(shard_key(1, 9) < shard_key(2, 0));
        assert!(block_key(255) < block_key(256));
        assert!(chunk_key(0, u32::MAX) < chunk_key(1, 0));
    }
}
