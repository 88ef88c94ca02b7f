//! The engine's state records that outlive a thread: what the sequencer
//! and the shards hand to a checkpoint, and what a reopen gives back. Plain
//! data, no behaviour beyond their own encoding: the sequencer, the shards
//! and the checkpoint writer all depend on this module, and it on none of
//! them (so none of them depends on another through its records).

use crate::account::AccountState;
use crate::command::Legs;
use crate::detail::Detail;
use crate::types::{Timestamp, TxnCode};
use std::sync::Arc;

/// (account slot, timestamp, detail position) — see `Shard::skips`.
pub(crate) type SkipEntry = (u32, Timestamp, u32);

/// The idempotency index's entry: 24 bytes, one per transaction ever
/// sequenced, because the index is the sequencer's costliest structure
/// (every new id is a look-up miss and an insert). A refusal's reason and
/// code live in a side table; a committed transaction's code and shards are
/// found from its details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub fingerprint: crate::command::Fingerprint,
    /// The timestamp, with `COMMITTED` set when the transaction committed.
    stamp: u64,
}

// The index's entry is its costliest structure: its size is fixed here, at
// compile time, so that a change shows in review (see ARCHITECTURE.md's
// memory budget).
const _: () = assert!(std::mem::size_of::<IndexEntry>() == 24);

impl IndexEntry {
    /// Timestamps are nanoseconds since 1970: the top bit is free until 2262.
    const COMMITTED: u64 = 1 << 63;

    pub(crate) fn new(
        fingerprint: crate::command::Fingerprint,
        timestamp: Timestamp,
        committed: bool,
    ) -> IndexEntry {
        let flag = if committed { Self::COMMITTED } else { 0 };
        IndexEntry {
            fingerprint,
            stamp: (timestamp.0 & !Self::COMMITTED) | flag,
        }
    }

    /// On disk (the index's runs, one entry per id ever sequenced): 24
    /// fixed bytes, the fingerprint and the stamp little-endian.
    pub fn to_bytes(self) -> [u8; 24] {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&self.fingerprint[0].to_le_bytes());
        bytes[8..16].copy_from_slice(&self.fingerprint[1].to_le_bytes());
        bytes[16..].copy_from_slice(&self.stamp.to_le_bytes());
        bytes
    }

    pub fn from_bytes(bytes: &[u8; 24]) -> IndexEntry {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        IndexEntry {
            fingerprint: [word(0), word(8)],
            stamp: word(16),
        }
    }

    pub fn timestamp(&self) -> Timestamp {
        Timestamp(self.stamp & !Self::COMMITTED)
    }

    pub fn committed(&self) -> bool {
        self.stamp & Self::COMMITTED != 0
    }
}

/// The sequencer's part of an audit.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct SequencerAudit {
    pub committed: u64,
    pub rejected: u64,
    pub pending_open: u64,
    pub batches: u64,
    /// Not persisted: what the sequencer holds in RAM now.
    #[serde(skip)]
    pub memory: IndexMemory,
}

/// What the sequencer's bounded structures hold in RAM (see
/// ARCHITECTURE.md, "Memory budget"): ids since the last durable
/// checkpoint, the runs' headers (filters and fences) in the header cache
/// and how many runs they are of, pending transfers open or resolved since
/// the last durable checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexMemory {
    pub ids_in_ram: u64,
    pub runs: u64,
    #[serde(default)]
    pub run_headers_in_ram: u64,
    pub run_bytes_in_ram: u64,
    pub pendings_in_ram: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum PendingStatus {
    Open,
    Posted,
    Voided,
    Expired,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct PendingInfo {
    pub code: TxnCode,
    pub deadline: Timestamp,
    pub legs: Legs,
    pub status: PendingStatus,
}

/// A shard's part of a checkpoint: its accounts, the full chunks not
/// written before by reference, a copy of its unfinished chunk (the
/// checkpoint thread encodes them; see `checkpoint::write`).
pub(crate) struct ShardSnapshot {
    pub accounts: AccountsPart,
    pub tail: Vec<Detail>,
    pub full_last_ts: Vec<Timestamp>,
    pub skips: Vec<SkipEntry>,
    /// (chunk number, chunk).
    pub chunks: Vec<(u32, Arc<Vec<Detail>>)>,
    pub full_chunks: u32,
}

/// The accounts a checkpoint takes from a shard.
pub(crate) enum AccountsPart {
    /// Every account, by reference to the copy-on-write pages.
    Full(Vec<Arc<Vec<AccountState>>>),
    /// The accounts changed since the previous checkpoint, by slot, in
    /// slot order, and how many accounts there are now.
    Delta {
        changed: Vec<(u32, AccountState)>,
        len: u32,
    },
}

/// The clean-close record: the next batch at close, CRC32.
pub(crate) const CLOSED_KEY: &[u8] = b"closed";

/// The clean-close record's value for `next_batch`.
pub(crate) fn closed_record(next_batch: u64) -> Vec<u8> {
    let mut v = next_batch.to_le_bytes().to_vec();
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}
