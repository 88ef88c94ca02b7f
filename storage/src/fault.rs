//! `FaultStore`: wraps another store and injects the failures the engine
//! must survive: a failed write, a failed flush, a torn write (only a prefix
//! of the batch applied), and a full disk.

use crate::{KeyValue, Keyspace, Scan, StorageError, Store, WriteBatch};
use parking_lot::Mutex;
use std::sync::Arc;

/// A failure to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next write fails and applies nothing.
    FailNextWrite,
    /// The next flush fails.
    FailNextFlush,
    /// The next write applies only its first `ops_applied` operations, then
    /// fails.
    TearNextWrite { ops_applied: usize },
    /// Every write and flush fails with `NoSpace` until `clear`.
    DiskFull,
}

#[derive(Default)]
struct Faults {
    fail_write: bool,
    fail_flush: bool,
    tear: Option<usize>,
    disk_full: bool,
}

pub struct FaultStore {
    inner: Arc<dyn Store>,
    faults: Mutex<Faults>,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn Store>) -> FaultStore {
        FaultStore {
            inner,
            faults: Mutex::new(Faults::default()),
        }
    }

    pub fn inject(&self, fault: Fault) {
        let mut f = self.faults.lock();
        match fault {
            Fault::FailNextWrite => f.fail_write = true,
            Fault::FailNextFlush => f.fail_flush = true,
            Fault::TearNextWrite { ops_applied } => f.tear = Some(ops_applied),
            Fault::DiskFull => f.disk_full = true,
        }
    }

    /// Removes every pending fault.
    pub fn clear(&self) {
        *self.faults.lock() = Faults::default();
    }

    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

impl Store for FaultStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut f = self.faults.lock();
        if f.disk_full {
            return Err(StorageError::NoSpace);
        }
        if std::mem::take(&mut f.fail_write) {
            return Err(StorageError::Write("injected write failure".into()));
        }
        if let Some(applied) = f.tear.take() {
            let total = batch.len();
            let mut prefix = WriteBatch::new();
            for op in batch.into_ops().into_iter().take(applied) {
                match op.value {
                    Some(v) => prefix.put(op.keyspace, op.key, v),
                    None => prefix.delete(op.keyspace, op.key),
                }
            }
            let applied = prefix.len();
            self.inner.write(prefix)?;
            return Err(StorageError::Torn { applied, total });
        }
        drop(f);
        self.inner.write(batch)
    }

    fn flush(&self) -> Result<(), StorageError> {
        let mut f = self.faults.lock();
        if f.disk_full {
            return Err(StorageError::NoSpace);
        }
        if std::mem::take(&mut f.fail_flush) {
            return Err(StorageError::Flush("injected flush failure".into()));
        }
        drop(f);
        self.inner.flush()
    }

    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(keyspace, key)
    }

    fn scan(&self, scan: Scan<'_>) -> Result<Vec<KeyValue>, StorageError> {
        self.inner.scan(scan)
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.inner.size_on_disk()
    }
}
