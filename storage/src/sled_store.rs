//! `SledStore`: the embedded default, one sled database in a directory.
//! Keyspaces are a one-byte key prefix in sled's default tree, so a
//! `WriteBatch` across keyspaces is one atomic `apply_batch`. The engine
//! decides when to flush (`flush_every_ms` is off).

use crate::memory::bounds_empty;
use crate::{KeyValue, Keyspace, Scan, StorageError, Store, WriteBatch};
use std::ops::Bound;
use std::path::{Path, PathBuf};

pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
}

impl SledStore {
    /// Opens the sled database in `path`, creating it in a missing or empty
    /// directory. A non-empty directory that holds no sled database is
    /// refused untouched; a directory another process (or another open
    /// store in this process) holds gives `InUse`.
    pub fn open(path: &Path) -> Result<SledStore, StorageError> {
        let open_err = |reason: String| StorageError::Open {
            path: path.to_path_buf(),
            reason,
        };
        if path.exists() {
            if !path.is_dir() {
                return Err(open_err("it is not a directory".into()));
            }
            let mut entries = std::fs::read_dir(path).map_err(|e| open_err(e.to_string()))?;
            let empty = entries.next().is_none();
            if !empty && !(path.join("conf").is_file() && path.join("db").is_file()) {
                return Err(open_err(
                    "not a tally store (no sled database files); refusing to touch it".into(),
                ));
            }
        }
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|e| map_open_error(path, e))?;
        Ok(SledStore {
            db,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn map_open_error(path: &Path, e: sled::Error) -> StorageError {
    if let sled::Error::Io(io) = &e {
        let text = io.to_string();
        if io.kind() == std::io::ErrorKind::WouldBlock || text.contains("lock") {
            return StorageError::InUse {
                path: path.to_path_buf(),
            };
        }
    }
    StorageError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn prefixed(keyspace: Keyspace, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(keyspace.0);
    k.extend_from_slice(key);
    k
}

impl Store for SledStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut sled_batch = sled::Batch::default();
        for op in batch.into_ops() {
            let key = prefixed(op.keyspace, &op.key);
            match op.value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        self.db
            .apply_batch(sled_batch)
            .map_err(|e| StorageError::Write(e.to_string()))
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StorageError::Flush(e.to_string()))
    }

    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db
            .get(prefixed(keyspace, key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StorageError::Read(e.to_string()))
    }

    fn scan(&self, scan: Scan<'_>) -> Result<Vec<KeyValue>, StorageError> {
        if bounds_empty(&scan) || scan.limit == 0 {
            return Ok(Vec::new());
        }
        let p = scan.keyspace;
        let start = match scan.start {
            Bound::Included(k) => Bound::Included(prefixed(p, k)),
            Bound::Excluded(k) => Bound::Excluded(prefixed(p, k)),
            Bound::Unbounded => Bound::Included(vec![p.0]),
        };
        let end = match scan.end {
            Bound::Included(k) => Bound::Included(prefixed(p, k)),
            Bound::Excluded(k) => Bound::Excluded(prefixed(p, k)),
            Bound::Unbounded if p.0 == u8::MAX => Bound::Unbounded,
            Bound::Unbounded => Bound::Excluded(vec![p.0 + 1]),
        };
        let range = self.db.range::<Vec<u8>, _>((start, end));
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if scan.reverse
        {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut out = Vec::new();
        for item in iter.take(scan.limit) {
            let (k, v) = item.map_err(|e| StorageError::Read(e.to_string()))?;
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.db
            .size_on_disk()
            .map_err(|e| StorageError::Read(e.to_string()))
    }
}
