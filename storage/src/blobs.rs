//! Blobs: large immutable values by name, for data written once and read
//! rarely (the engine's cold detail chunks, ~1 MB each).
//!
//! Why not sled: sled pushes every value through its one log, and measured
//! here it writes 1 MB values at 68–93 MB/s with flush p99 of 127–230 ms,
//! while the disk takes 434 MB/s buffered + fdatasync
//! (`../shared/MEASUREMENTS.md`). Blobs as plain files keep that traffic
//! off the log that every group commit flushes.
//!
//! Contract ([`BlobStore`]): `put` replaces a blob whole — a reader sees the
//! old content or the new, never a mix, and after a crash the same holds
//! for a blob written before the last `flush`; there is no atomicity across
//! blobs (callers name a blob in an atomic store write only after `flush`).

use crate::{Keyspace, StorageError, Store, WriteBatch};
use parking_lot::Mutex;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Large immutable values by name.
pub trait BlobStore: Send + Sync + 'static {
    /// Writes `bytes` as blob `name`, replacing it whole.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError>;
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Removes a blob (none by that name is not an error).
    fn delete(&self, name: &str) -> Result<(), StorageError>;
    /// Returns once every blob put before it is durable.
    fn flush(&self) -> Result<(), StorageError>;
    fn size_on_disk(&self) -> Result<u64, StorageError>;
}

/// Names are short, plain and cannot leave the directory.
fn check_name(name: &str) -> Result<(), StorageError> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if name.is_empty() || name.len() > 128 || !plain {
        return Err(StorageError::Write(format!(
            "blob name {name:?}: 1-128 of [A-Za-z0-9_-] expected"
        )));
    }
    Ok(())
}

/// Blobs as files in one directory: each put writes `name.tmp` and renames
/// it over `name`; `flush` syncs the files put since the last flush, then
/// the directory.
pub struct FileBlobs {
    dir: PathBuf,
    /// Blobs put since the last flush.
    unsynced: Mutex<Vec<PathBuf>>,
}

impl FileBlobs {
    /// Opens `dir`, creating it when missing. Leftover `.tmp` files (a put
    /// cut short by a crash) are removed.
    pub fn open(dir: &Path) -> Result<FileBlobs, StorageError> {
        let open_err = |reason: String| StorageError::Open {
            path: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(format!("cannot create: {e}")))?;
        let entries = std::fs::read_dir(dir).map_err(|e| open_err(format!("cannot list: {e}")))?;
        for entry in entries {
            let path = entry.map_err(|e| open_err(e.to_string()))?.path();
            if path.extension().is_some_and(|x| x == "tmp") {
                std::fs::remove_file(&path)
                    .map_err(|e| open_err(format!("cannot remove {}: {e}", path.display())))?;
            }
        }
        Ok(FileBlobs {
            dir: dir.to_path_buf(),
            unsynced: Mutex::new(Vec::new()),
        })
    }
}

impl BlobStore for FileBlobs {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        check_name(name)?;
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let write = |e: std::io::Error| match e.raw_os_error() {
            Some(28) => StorageError::NoSpace,
            _ => StorageError::Write(format!("{}: {e}", path.display())),
        };
        let mut file = File::create(&tmp).map_err(write)?;
        file.write_all(bytes).map_err(write)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(write)?;
        self.unsynced.lock().push(path);
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_name(name).map_err(|e| StorageError::Read(e.to_string()))?;
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::Read(format!("{}: {e}", path.display()))),
        }
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        let path = self.dir.join(name);
        self.unsynced.lock().retain(|p| *p != path);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::Write(format!("{}: {e}", path.display()))),
        }
    }

    fn flush(&self) -> Result<(), StorageError> {
        let paths = std::mem::take(&mut *self.unsynced.lock());
        let sync = |path: &Path| -> Result<(), StorageError> {
            match File::open(path).and_then(|f| f.sync_all()) {
                Ok(()) => Ok(()),
                // Deleted since it was put: nothing to make durable.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StorageError::Flush(format!("{}: {e}", path.display()))),
            }
        };
        let synced = paths
            .iter()
            .try_for_each(|p| sync(p))
            .and_then(|()| sync(&self.dir));
        if synced.is_err() {
            // Not durable yet: the next flush tries them again.
            self.unsynced.lock().extend(paths);
        }
        synced
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        let read = |e: std::io::Error| StorageError::Read(format!("{}: {e}", self.dir.display()));
        let mut total = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(read)? {
            total += entry.and_then(|e| e.metadata()).map_err(read)?.len();
        }
        Ok(total)
    }
}

/// Blobs kept in a keyspace of a [`Store`] (in-memory engines, and the
/// fault-injecting store in tests).
pub struct StoreBlobs {
    store: Arc<dyn Store>,
    keyspace: Keyspace,
}

impl StoreBlobs {
    pub fn new(store: Arc<dyn Store>, keyspace: Keyspace) -> StoreBlobs {
        StoreBlobs { store, keyspace }
    }
}

impl BlobStore for StoreBlobs {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        check_name(name)?;
        let mut batch = WriteBatch::new();
        batch.put(self.keyspace, name.as_bytes().to_vec(), bytes.to_vec());
        self.store.write(batch)
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_name(name).map_err(|e| StorageError::Read(e.to_string()))?;
        self.store.get(self.keyspace, name.as_bytes())
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        let mut batch = WriteBatch::new();
        batch.delete(self.keyspace, name.as_bytes().to_vec());
        self.store.write(batch)
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.store.flush()
    }

    /// Counted with the store it lives in.
    fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(0)
    }
}
