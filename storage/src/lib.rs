//! tally-storage: the byte store under the tally engine.
//!
//! What it is: ordered key/value keyspaces with atomic write batches and an
//! explicit `flush` that makes everything written before it durable. Backends:
//! [`SledStore`] (the embedded default, a directory on disk), [`MemoryStore`]
//! (tests, benchmarks) and [`FaultStore`] (wraps another store and injects
//! failed writes, failed flushes, torn writes and a full disk). Beside it,
//! [`BlobStore`]: large immutable values by name, as files ([`FileBlobs`])
//! or inside a store ([`StoreBlobs`]).
//!
//! What it depends on: sled, parking_lot. Nothing else of tally.
//!
//! What it must never do: know what an account, an amount or a transaction is.
//! Keys and values are opaque bytes; the engine owns every encoding.

use std::ops::Bound;
use std::path::PathBuf;

mod adapt;
mod blobs;
pub mod disk;
mod fault;
mod memory;
mod sled_store;
pub mod wal;

pub use adapt::{DiskStore, StoreDisk};
pub use blobs::{BlobStore, FileBlobs, StoreBlobs};
pub use disk::{CrashMode, Disk, OsDisk, SimDisk};
pub use fault::{Fault, FaultStore};
pub use memory::MemoryStore;
pub use sled_store::SledStore;
pub use wal::{SyncJob, Wal, WalError, WalReport};

/// A keyspace: an independent ordered key range inside one store. The engine
/// names its keyspaces (log, checkpoint, meta, …); the store only keeps them
/// apart. Backends may implement a keyspace as a key prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Keyspace(pub u8);

/// One write inside a [`WriteBatch`]: `Some(value)` inserts or replaces,
/// `None` removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOp {
    pub keyspace: Keyspace,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A set of writes applied all-or-nothing by [`Store::write`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, keyspace: Keyspace, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp {
            keyspace,
            key,
            value: Some(value),
        });
    }

    pub fn delete(&mut self, keyspace: Keyspace, key: Vec<u8>) {
        self.ops.push(WriteOp {
            keyspace,
            key,
            value: None,
        });
    }

    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<WriteOp> {
        self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values: what the batch costs the log.
    pub fn size_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| 1 + op.key.len() + op.value.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

/// A key range scan request. Bounds are on the key inside the keyspace.
#[derive(Clone, Debug)]
pub struct Scan<'a> {
    pub keyspace: Keyspace,
    pub start: Bound<&'a [u8]>,
    pub end: Bound<&'a [u8]>,
    /// Newest-first (descending keys) when true.
    pub reverse: bool,
    /// At most this many pairs are returned.
    pub limit: usize,
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Errors of every backend. `#[non_exhaustive]`: match the ones you act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The directory is held by another open store: in another process
    /// (sled's file lock) or in this one (a process-wide registry).
    #[error("store at {path} is in use (open in another process, or already open in this one)")]
    InUse { path: PathBuf },
    #[error("cannot open store at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("write failed: {0}")]
    Write(String),
    #[error("flush failed: {0}")]
    Flush(String),
    #[error("read failed: {0}")]
    Read(String),
    #[error("no space left on device")]
    NoSpace,
    #[error("torn write: {applied} of {total} operations applied before the failure")]
    Torn { applied: usize, total: usize },
}

/// The storage contract the engine is written against.
///
/// Guarantees every backend gives:
/// - `write` applies a batch atomically: after a crash, either all of its ops
///   are visible or none are (the fault-injecting wrapper breaks this on
///   purpose, to test the engine's own defences).
/// - `flush` returns only when every batch written before it is durable.
/// - Reads see every completed `write`, flushed or not.
pub trait Store: Send + Sync + 'static {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError>;
    fn flush(&self) -> Result<(), StorageError>;
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    fn scan(&self, scan: Scan<'_>) -> Result<Vec<KeyValue>, StorageError>;
    /// Bytes the store occupies on disk (0 for memory backends).
    fn size_on_disk(&self) -> Result<u64, StorageError>;
}

/// A shared store is a store: lets `Arc<SledStore>`, `Arc<dyn Store>` and
/// friends go wherever a `S: Store` is expected.
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        (**self).write(batch)
    }

    fn flush(&self) -> Result<(), StorageError> {
        (**self).flush()
    }

    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).get(keyspace, key)
    }

    fn scan(&self, scan: Scan<'_>) -> Result<Vec<KeyValue>, StorageError> {
        (**self).scan(scan)
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        (**self).size_on_disk()
    }
}
