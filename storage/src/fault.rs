//! `FaultStore`: wraps another store and injects the failures the engine
//! must survive: a failed write, a failed flush, a torn write (only a prefix
//! of the batch applied), and a full disk. For tests only; with no fault
//! pending it is a transparent pass-through.
//!
//! Guarantees, per [`Fault`]:
//! - `FailNextWrite`: the next `write` returns `StorageError::Write` and
//!   applies nothing. One-shot.
//! - `FailNextFlush`: the next `flush` returns `StorageError::Flush` without
//!   flushing the inner store. One-shot.
//! - `TearNextWrite { ops_applied: n }`: the next `write` applies its first
//!   `n` ops (as one batch on the inner store) and returns
//!   `StorageError::Torn { applied, total }`, `applied = min(n, total)`. With
//!   `n >= total` the whole batch lands but the caller still sees the error:
//!   the "written but not acknowledged" case. One-shot.
//! - `DiskFull`: every `write` and `flush` fails with `StorageError::NoSpace`
//!   and applies nothing, until [`FaultStore::clear`]. It takes precedence
//!   over pending one-shots, which stay pending.
//!
//! When several one-shots are pending, a write checks `FailNextWrite` before
//! `TearNextWrite`, so each fires on its own write. Injecting a one-shot
//! that is already pending does not queue a second one. Reads (`get`,
//! `scan`, `size_on_disk`) always go straight to the inner store.

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

#[derive(Debug, Default)]
struct Pending {
    fail_write: bool,
    fail_flush: bool,
    tear: Option<usize>,
    disk_full: bool,
}

/// A [`Store`] that injects [`Fault`]s into another. See the module docs.
pub struct FaultStore {
    inner: Arc<dyn Store>,
    pending: Mutex<Pending>,
}

impl std::fmt::Debug for FaultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultStore")
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl FaultStore {
    /// Wraps `inner`, with no fault pending.
    pub fn new(inner: Arc<dyn Store>) -> FaultStore {
        FaultStore {
            inner,
            pending: Mutex::new(Pending::default()),
        }
    }

    /// Arms `fault`. A second `TearNextWrite` before the first fired
    /// replaces it.
    pub fn inject(&self, fault: Fault) {
        let mut p = self.pending.lock();
        match fault {
            Fault::FailNextWrite => p.fail_write = true,
            Fault::FailNextFlush => p.fail_flush = true,
            Fault::TearNextWrite { ops_applied } => p.tear = Some(ops_applied),
            Fault::DiskFull => p.disk_full = true,
        }
    }

    /// Removes every pending fault, `DiskFull` included.
    pub fn clear(&self) {
        *self.pending.lock() = Pending::default();
    }

    /// The faults armed and not yet fired, in the order they are checked.
    pub fn pending(&self) -> Vec<Fault> {
        let p = self.pending.lock();
        let mut out = Vec::new();
        if p.disk_full {
            out.push(Fault::DiskFull);
        }
        if p.fail_write {
            out.push(Fault::FailNextWrite);
        }
        if let Some(ops_applied) = p.tear {
            out.push(Fault::TearNextWrite { ops_applied });
        }
        if p.fail_flush {
            out.push(Fault::FailNextFlush);
        }
        out
    }

    /// The wrapped store, for looking behind the faults.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

impl Store for FaultStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let tear = {
            let mut p = self.pending.lock();
            if p.disk_full {
                return Err(StorageError::NoSpace);
            }
            if std::mem::take(&mut p.fail_write) {
                return Err(StorageError::Write(
                    "injected write failure (Fault::FailNextWrite): nothing applied".into(),
                ));
            }
            p.tear.take()
        };
        let Some(ops_applied) = tear else {
            return self.inner.write(batch);
        };
        let total = batch.len();
        let applied = ops_applied.min(total);
        let mut ops = batch.into_ops();
        ops.truncate(applied);
        self.inner.write(WriteBatch { ops })?;
        Err(StorageError::Torn { applied, total })
    }

    fn flush(&self) -> Result<(), StorageError> {
        {
            let mut p = self.pending.lock();
            if p.disk_full {
                return Err(StorageError::NoSpace);
            }
            if std::mem::take(&mut p.fail_flush) {
                return Err(StorageError::Flush(
                    "injected flush failure (Fault::FailNextFlush)".into(),
                ));
            }
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use std::ops::Bound;

    const KS: Keyspace = Keyspace(5);

    /// A batch of `n` puts: key `[i]` → value `[i]`.
    fn batch_of(n: u8) -> WriteBatch {
        let mut batch = WriteBatch::new();
        for i in 0..n {
            batch.put(KS, vec![i], vec![i]);
        }
        batch
    }

    fn keys(store: &dyn Store) -> Vec<Vec<u8>> {
        let all = store
            .scan(Scan {
                keyspace: KS,
                start: Bound::Unbounded,
                end: Bound::Unbounded,
                reverse: false,
                limit: usize::MAX,
            })
            .expect("scan");
        all.into_iter().map(|(k, _)| k).collect()
    }

    fn faulty() -> FaultStore {
        FaultStore::new(Arc::new(MemoryStore::new()))
    }

    #[test]
    fn tearing_applies_exactly_the_prefix_and_reports_it() {
        // (ops_applied, expected applied) for a batch of 4.
        let cases = [(0, 0), (1, 1), (3, 3), (4, 4), (9, 4)];
        for (ops_applied, applied) in cases {
            let store = faulty();
            store.inject(Fault::TearNextWrite { ops_applied });
            let err = store.write(batch_of(4)).err();
            assert!(
                matches!(err, Some(StorageError::Torn { applied: a, total: 4 }) if a == applied),
                "tear {ops_applied}: {err:?}"
            );
            let expected: Vec<Vec<u8>> = (0..applied)
                .map(|i| vec![u8::try_from(i).expect("small")])
                .collect();
            assert_eq!(keys(store.inner().as_ref()), expected, "tear {ops_applied}");
            assert!(store.pending().is_empty(), "one-shot");
            store.write(batch_of(4)).expect("the next write is whole");
            assert_eq!(keys(&store).len(), 4);
        }
    }

    #[test]
    fn one_shots_fire_once_each_in_order() {
        let store = faulty();
        store.inject(Fault::TearNextWrite { ops_applied: 1 });
        store.inject(Fault::FailNextWrite);
        store.inject(Fault::FailNextWrite); // not queued twice
        store.inject(Fault::FailNextFlush);
        assert_eq!(
            store.pending(),
            [
                Fault::FailNextWrite,
                Fault::TearNextWrite { ops_applied: 1 },
                Fault::FailNextFlush
            ]
        );
        assert!(
            matches!(store.write(batch_of(2)), Err(StorageError::Write(m)) if m.contains("injected"))
        );
        assert!(keys(&store).is_empty());
        assert!(matches!(
            store.write(batch_of(2)),
            Err(StorageError::Torn {
                applied: 1,
                total: 2
            })
        ));
        assert_eq!(keys(&store), [vec![0]]);
        assert!(matches!(store.flush(), Err(StorageError::Flush(m)) if m.contains("injected")));
        assert!(store.pending().is_empty());
        store.write(batch_of(2)).expect("write");
        store.flush().expect("flush");
        assert_eq!(keys(&store), [vec![0], vec![1]]);
    }

    #[test]
    fn disk_full_wins_over_one_shots_and_clear_removes_everything() {
        let store = faulty();
        store.inject(Fault::FailNextWrite);
        store.inject(Fault::DiskFull);
        for _ in 0..3 {
            assert!(matches!(
                store.write(batch_of(1)),
                Err(StorageError::NoSpace)
            ));
            assert!(matches!(store.flush(), Err(StorageError::NoSpace)));
        }
        assert_eq!(store.pending(), [Fault::DiskFull, Fault::FailNextWrite]);
        assert!(keys(&store).is_empty());
        store.clear();
        assert!(store.pending().is_empty());
        store.write(batch_of(1)).expect("write after clear");
        store.flush().expect("flush after clear");
        assert_eq!(keys(&store), [vec![0]]);
        assert!(format!("{store:?}").contains("pending: []"));
    }
}
