//! The age tier of details: a persisted chunk whose newest detail is older
//! than the online window (`Config::online_window_days`, measured against
//! the newest batch timestamp: log time) leaves the online store (its blob
//! in `details/`) for the cold store: one append-only segment file per
//! shard, `cold/shard-<n>.seg`, on the same [`Disk`] abstraction.
//!
//! A segment is a sequence of frames, one per chunk:
//!
//! ```text
//! magic "TCF1" ‖ store id (16) ‖ shard u16 ‖ chunk u32 ‖ codec u8
//!   ‖ raw length u32 ‖ payload length u32 ‖ payload ‖ BLAKE3(all before)
//! ```
//!
//! (little-endian). The payload is the chunk's record (`codec::encode`:
//! CRC32 ‖ postcard), LZ4-compressed when that is smaller (codec 1) or as
//! is (codec 0). The manifest names every cold chunk by (offset, size,
//! BLAKE3) (`Manifest::cold`), so a frame of another store, shard or
//! chunk, a damaged one, or a segment cut short is refused by name, never
//! read as a shorter history.
//!
//! Moves are made by the checkpoint thread inside `checkpoint::write`:
//! frames appended and the segment synced (and its directory, when the
//! segment is new) before the manifest naming them is written; the online
//! blobs are deleted only once that manifest is durable and the shards can
//! find the chunks here ([`ColdStore::publish`]). Bytes a crash left past
//! what the manifest names are cut off at the next writable open.

use crate::detail::Detail;
use crate::grow::CHUNK_LEN;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use tally_storage::{Disk, Keyspace};

/// The cold store's keyspace in a custom store (a `StoreDisk`).
pub(crate) const KEYSPACE_COLD: Keyspace = Keyspace(4);

/// The cold store's directory inside a store's directory.
pub const COLD_DIR: &str = "cold";

const FRAME_MAGIC: [u8; 4] = *b"TCF1";
/// magic, store id, shard, chunk, codec, raw length, payload length.
const HEADER_LEN: usize = 4 + 16 + 2 + 4 + 1 + 4 + 4;
const SUM_LEN: usize = 32;

const CODEC_RAW: u8 = 0;
const CODEC_LZ4: u8 = 1;

/// Where a cold chunk lives in its shard's segment: what the manifest
/// names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ColdRef {
    pub offset: u64,
    pub size: u32,
    /// The frame's BLAKE3 (its last 32 bytes).
    pub sum: [u8; 32],
}

impl ColdRef {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.size)
    }
}

/// A shard's segment file.
pub(crate) fn segment_name(shard: u16) -> String {
    format!("shard-{shard}.seg")
}

/// The cold store: the segments and, per shard, where each cold chunk is
/// (chunks `0..n` of a shard: details age in order, so the cold ones are
/// always a prefix). Shared by the shards (reads), the checkpoint thread
/// (moves) and the engine (sizes).
pub(crate) struct ColdStore {
    /// `None`: no cold store here (in memory; a read-only open of a store
    /// that never had one).
    disk: Option<Arc<dyn Disk>>,
    store_id: [u8; 16],
    /// A writable open cuts off what a crash left past the named end.
    writable: bool,
    located: RwLock<Vec<Vec<ColdRef>>>,
}

/// A cold read's failure, naming the segment and the chunk.
type TierResult<T> = Result<T, String>;

impl ColdStore {
    pub fn new(
        disk: Option<Arc<dyn Disk>>,
        store_id: [u8; 16],
        shards: u16,
        writable: bool,
    ) -> ColdStore {
        ColdStore {
            disk,
            store_id,
            writable,
            located: RwLock::new(vec![Vec::new(); usize::from(shards)]),
        }
    }

    fn located(&self) -> std::sync::RwLockReadGuard<'_, Vec<Vec<ColdRef>>> {
        self.located
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where chunk `chunk` of `shard` is, if it is cold.
    pub fn locate(&self, shard: u16, chunk: u32) -> Option<ColdRef> {
        self.located()
            .get(usize::from(shard))?
            .get(chunk as usize)
            .copied()
    }

    /// Bytes of the cold store: the frames the manifest names.
    pub fn bytes(&self) -> u64 {
        self.located()
            .iter()
            .filter_map(|refs| refs.last().map(ColdRef::end))
            .sum()
    }

    /// Takes the locations a manifest names (at open, and once a
    /// checkpoint that moved chunks is durable, before their online blobs
    /// are deleted).
    pub fn publish(&self, cold: &[Vec<ColdRef>]) {
        let mut located = self
            .located
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (shard, refs) in cold.iter().enumerate() {
            if let Some(slot) = located.get_mut(shard) {
                slot.clone_from(refs);
            }
        }
    }

    /// At open: every segment the manifest names must hold at least what
    /// it names (a segment missing or cut short is refused by name). A
    /// writable open then cuts off what a crash left past the named end
    /// (frames of a move whose manifest never became durable) and removes
    /// segments nothing names, so the next move appends where the manifest
    /// ends.
    pub fn check_at_open(&self, cold: &[Vec<ColdRef>]) -> Result<(), (String, String)> {
        let named: u64 = cold
            .iter()
            .filter_map(|refs| refs.last().map(ColdRef::end))
            .sum();
        let Some(disk) = &self.disk else {
            if named > 0 {
                return Err((
                    format!("{COLD_DIR}/"),
                    "the manifest names cold chunks but the cold store is missing".into(),
                ));
            }
            return Ok(());
        };
        let storage =
            |name: &str, e: tally_storage::StorageError| (name.to_string(), e.to_string());
        for (shard, refs) in (0u16..).zip(cold) {
            let Some(end) = refs.last().map(ColdRef::end) else {
                continue;
            };
            let name = segment_name(shard);
            let record = format!("{COLD_DIR}/{name}");
            match disk.read_at(&name, end - 1, 1) {
                Ok(Some(_)) => {}
                Ok(None) => return Err((record, "missing".into())),
                Err(_) => {
                    return Err((
                        record,
                        format!("shorter than the {end} bytes the manifest names"),
                    ))
                }
            }
        }
        if !self.writable {
            return Ok(());
        }
        let on_disk = disk.size().map_err(|e| storage(COLD_DIR, e))?;
        if on_disk == named {
            return Ok(());
        }
        let mut changed = false;
        for name in disk.list().map_err(|e| storage(COLD_DIR, e))? {
            let shard = name
                .strip_prefix("shard-")
                .and_then(|s| s.strip_suffix(".seg"))
                .and_then(|s| s.parse::<u16>().ok());
            let end = shard
                .and_then(|s| cold.get(usize::from(s)))
                .and_then(|refs| refs.last().map(ColdRef::end));
            match end {
                Some(end) => {
                    disk.truncate(&name, end)
                        .map_err(|e| storage(&format!("{COLD_DIR}/{name}"), e))?;
                    disk.sync(&name)
                        .map_err(|e| storage(&format!("{COLD_DIR}/{name}"), e))?;
                }
                None => disk
                    .remove(&name)
                    .map_err(|e| storage(&format!("{COLD_DIR}/{name}"), e))?,
            }
            changed = true;
        }
        if changed {
            disk.sync_dir().map_err(|e| storage(COLD_DIR, e))?;
        }
        Ok(())
    }

    /// Appends the frames of `chunks` (number, encoded record) to `shard`'s
    /// segment, after the chunks `named` already names, and makes them
    /// durable: the file synced, and its directory when the file is new.
    /// Returns where each went.
    pub fn append(
        &self,
        shard: u16,
        named: &[ColdRef],
        chunks: &[(u32, Vec<u8>)],
    ) -> TierResult<Vec<ColdRef>> {
        let name = segment_name(shard);
        let disk = self
            .disk
            .as_ref()
            .ok_or_else(|| format!("{COLD_DIR}/{name}: no cold store here"))?;
        let fail = |e: tally_storage::StorageError| format!("{COLD_DIR}/{name}: {e}");
        let mut offset = named.last().map_or(0, ColdRef::end);
        let created = offset == 0;
        if created {
            disk.create(&name).map_err(fail)?;
        }
        let mut refs = Vec::with_capacity(chunks.len());
        for (chunk, record) in chunks {
            let frame = self.frame(shard, *chunk, record)?;
            let size = u32::try_from(frame.len())
                .map_err(|_| format!("{COLD_DIR}/{name}: chunk {chunk}: frame too large"))?;
            let mut sum = [0u8; 32];
            sum.copy_from_slice(&frame[frame.len() - SUM_LEN..]);
            disk.append(&name, &frame).map_err(fail)?;
            refs.push(ColdRef { offset, size, sum });
            offset += u64::from(size);
        }
        disk.sync(&name).map_err(fail)?;
        if created {
            disk.sync_dir().map_err(fail)?;
        }
        Ok(refs)
    }

    fn frame(&self, shard: u16, chunk: u32, record: &[u8]) -> TierResult<Vec<u8>> {
        let compressed = lz4_flex::block::compress(record);
        let (codec, payload) = if compressed.len() < record.len() {
            (CODEC_LZ4, compressed.as_slice())
        } else {
            (CODEC_RAW, record)
        };
        let len = |n: usize| {
            u32::try_from(n).map_err(|_| format!("shard {shard} chunk {chunk}: record too large"))
        };
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len() + SUM_LEN);
        frame.extend_from_slice(&FRAME_MAGIC);
        frame.extend_from_slice(&self.store_id);
        frame.extend_from_slice(&shard.to_le_bytes());
        frame.extend_from_slice(&chunk.to_le_bytes());
        frame.push(codec);
        frame.extend_from_slice(&len(record.len())?.to_le_bytes());
        frame.extend_from_slice(&len(payload.len())?.to_le_bytes());
        frame.extend_from_slice(payload);
        let sum = blake3::hash(&frame);
        frame.extend_from_slice(sum.as_bytes());
        Ok(frame)
    }

    /// Chunk `chunk` of `shard` from its segment, if it is cold: checked
    /// against the manifest's size and BLAKE3 and the frame's identity,
    /// decoded. A failure names the segment, the offset and the chunk.
    pub fn read(&self, shard: u16, chunk: u32) -> Option<TierResult<Vec<Detail>>> {
        let at = self.locate(shard, chunk)?;
        Some(self.read_at(shard, chunk, at))
    }

    fn read_at(&self, shard: u16, chunk: u32, at: ColdRef) -> TierResult<Vec<Detail>> {
        let name = segment_name(shard);
        let what = || {
            format!(
                "shard {shard} cold detail chunk {chunk} ({COLD_DIR}/{name} at {})",
                at.offset
            )
        };
        let disk = self
            .disk
            .as_ref()
            .ok_or_else(|| format!("{}: no cold store here", what()))?;
        let frame = disk
            .read_at(&name, at.offset, at.size as usize)
            .map_err(|e| format!("{}: {e}", what()))?
            .ok_or_else(|| format!("{}: the segment is missing", what()))?;
        let fail = |reason: &str| format!("{}: {reason}", what());
        if frame.len() != at.size as usize || frame.len() < HEADER_LEN + SUM_LEN {
            return Err(fail("frame shorter than the manifest names"));
        }
        let (body, sum) = frame.split_at(frame.len() - SUM_LEN);
        if blake3::hash(body).as_bytes() != sum || sum != at.sum {
            return Err(fail(
                "checksum mismatch (the frame's BLAKE3 or the manifest's: damaged, or not this chunk)",
            ));
        }
        let field = |range: std::ops::Range<usize>| body.get(range).unwrap_or(&[]);
        let u32_at = |at: usize| {
            field(at..at + 4)
                .try_into()
                .map(u32::from_le_bytes)
                .unwrap_or(u32::MAX)
        };
        if field(0..4) != FRAME_MAGIC
            || field(4..20) != self.store_id
            || field(20..22) != shard.to_le_bytes()
            || u32_at(22) != chunk
        {
            return Err(fail("the frame is another store's, shard's or chunk's"));
        }
        let codec = field(26..27).first().copied().unwrap_or(u8::MAX);
        let raw_len = u32_at(27) as usize;
        let payload = field(HEADER_LEN..body.len());
        if payload.len() != u32_at(31) as usize {
            return Err(fail("payload length does not match the frame"));
        }
        let record = match codec {
            CODEC_RAW => payload.to_vec(),
            CODEC_LZ4 => lz4_flex::block::decompress(payload, raw_len)
                .map_err(|e| fail(&format!("undecompressable: {e}")))?,
            other => return Err(fail(&format!("unknown codec {other}"))),
        };
        let details: Vec<Detail> = crate::codec::decode(&record).map_err(|e| fail(&e))?;
        if details.len() != CHUNK_LEN {
            return Err(fail(&format!("{} details, not {CHUNK_LEN}", details.len())));
        }
        Ok(details)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::types::*;
    use tally_storage::SimDisk;

    /// Details shaped like a load test's: consecutive timestamps, random
    /// accounts, chained balances.
    pub(crate) fn chunk(seed: u64) -> Vec<Detail> {
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..CHUNK_LEN as u64)
            .map(|i| {
                let amount = (next() % 100_000) as i64 + 1;
                let pre = (next() % 10_000_000) as i64;
                Detail {
                    txn: TxnId(u128::from(1_000_000 + i / 2)),
                    account: AccountId(next() % 10_000 + 1),
                    timestamp: Timestamp(1_767_225_600_000_000_000 + i / 2 * 1_000),
                    amount,
                    balance_pre: pre,
                    balance_post: pre + amount,
                    version: next() % 500 + 1,
                    prev: (next() % (i + 1)) as u32,
                    code: TxnCode(1),
                    date: AccountingDate(20_454),
                    leg: (i % 2) as u16,
                    side: if i % 2 == 0 {
                        Side::Debit
                    } else {
                        Side::Credit
                    },
                    bucket: Bucket::Available,
                    kind: crate::detail::DetailKind::Posted,
                    scale: 2,
                }
            })
            .collect()
    }

    #[test]
    fn frames_round_trip_and_compression_is_measured() {
        let disk: Arc<dyn Disk> = Arc::new(SimDisk::new());
        let store = ColdStore::new(Some(disk.clone()), [7; 16], 2, true);
        let chunks: Vec<(u32, Vec<u8>)> = (0..3)
            .map(|c| (c, crate::codec::encode(&chunk(u64::from(c) + 1)).unwrap()))
            .collect();
        let refs = store.append(1, &[], &chunks).unwrap();
        let raw: usize = chunks.iter().map(|(_, r)| r.len()).sum();
        let framed: u64 = refs.iter().map(|r| u64::from(r.size)).sum();
        eprintln!(
            "{CHUNK_LEN} details: 96 B each in RAM, {:.1} B encoded, {:.1} B framed (lz4 ratio {:.3})",
            raw as f64 / (3 * CHUNK_LEN) as f64,
            framed as f64 / (3 * CHUNK_LEN) as f64,
            framed as f64 / raw as f64
        );
        store.publish(&[Vec::new(), refs.clone()]);
        for c in 0..3 {
            assert_eq!(store.read(1, c).unwrap().unwrap(), chunk(u64::from(c) + 1));
        }
        assert!(store.read(0, 0).is_none());
        assert!(store.read(1, 3).is_none());
        assert_eq!(store.bytes(), framed);
        // Another store's frame under this name is refused.
        let other = ColdStore::new(Some(disk), [8; 16], 2, true);
        other.publish(&[Vec::new(), refs]);
        let err = other.read(1, 0).unwrap().unwrap_err();
        assert!(err.contains("another store's"), "{err}");
    }
}
