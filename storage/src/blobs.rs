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

use crate::disk::{Disk, OsDisk};
use crate::{Keyspace, StorageError, Store, WriteBatch};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;

/// Large immutable values by name.
pub trait BlobStore: Send + Sync + 'static {
    /// Writes `bytes` as blob `name`, replacing it whole.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError>;
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// `len` bytes of a blob from `offset` (`None`: no such blob; a blob
    /// that ends before is an error). For large blobs read by the page.
    fn get_range(
        &self,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(bytes) = self.get(name)? else {
            return Ok(None);
        };
        crate::disk::slice_at(name, &bytes, offset, len).map(Some)
    }
    /// Writes a blob from the parts `next` yields until `None`, replacing
    /// it whole like `put` (a reader sees the old blob or all of the new).
    /// For blobs too large to build in memory; a part's error stops the
    /// write and is returned.
    fn put_stream(
        &self,
        name: &str,
        next: &mut dyn FnMut() -> Option<Result<Vec<u8>, StorageError>>,
    ) -> Result<(), StorageError> {
        let mut bytes = Vec::new();
        while let Some(part) = next() {
            bytes.extend_from_slice(&part?);
        }
        self.put(name, &bytes)
    }
    /// Removes a blob (none by that name is not an error).
    fn delete(&self, name: &str) -> Result<(), StorageError>;
    /// Returns once every blob put before it is durable.
    fn flush(&self) -> Result<(), StorageError>;
    fn size_on_disk(&self) -> Result<u64, StorageError>;
    /// Names of every blob, sorted.
    fn list(&self) -> Result<Vec<String>, StorageError>;
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

/// Blobs as files on a [`Disk`]: each put writes `name.tmp` and renames it
/// over `name`; `flush` syncs the files put since the last flush, then the
/// directory. [`FileBlobs::open`] puts them in a real directory.
pub struct FileBlobs {
    disk: Arc<dyn Disk>,
    /// Blobs put since the last flush.
    unsynced: Mutex<Vec<String>>,
}

impl FileBlobs {
    /// Opens `dir`, creating it when missing. Leftover `.tmp` files (a put
    /// cut short by a crash) are removed.
    pub fn open(dir: &Path) -> Result<FileBlobs, StorageError> {
        FileBlobs::on(Arc::new(OsDisk::open(dir)?))
    }

    /// Blobs on any disk (a simulated one in tests).
    pub fn on(disk: Arc<dyn Disk>) -> Result<FileBlobs, StorageError> {
        for name in disk.list()? {
            if name.ends_with(".tmp") {
                disk.remove(&name)?;
            }
        }
        Ok(FileBlobs {
            disk,
            unsynced: Mutex::new(Vec::new()),
        })
    }
}

impl BlobStore for FileBlobs {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        check_name(name)?;
        let tmp = format!("{name}.tmp");
        self.disk.create(&tmp)?;
        self.disk.append(&tmp, bytes)?;
        self.disk.rename(&tmp, name)?;
        self.unsynced.lock().push(name.to_string());
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_name(name).map_err(|e| StorageError::Read(e.to_string()))?;
        self.disk.read(name)
    }

    fn get_range(
        &self,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        check_name(name).map_err(|e| StorageError::Read(e.to_string()))?;
        self.disk.read_at(name, offset, len)
    }

    fn put_stream(
        &self,
        name: &str,
        next: &mut dyn FnMut() -> Option<Result<Vec<u8>, StorageError>>,
    ) -> Result<(), StorageError> {
        check_name(name)?;
        let tmp = format!("{name}.tmp");
        self.disk.create(&tmp)?;
        let written = (|| {
            while let Some(part) = next() {
                self.disk.append(&tmp, &part?)?;
            }
            self.disk.rename(&tmp, name)
        })();
        if let Err(e) = written {
            let _ = self.disk.remove(&tmp);
            return Err(e);
        }
        self.unsynced.lock().push(name.to_string());
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        self.unsynced.lock().retain(|n| n != name);
        self.disk.remove(name)
    }

    fn flush(&self) -> Result<(), StorageError> {
        let names = std::mem::take(&mut *self.unsynced.lock());
        let synced = names
            .iter()
            .try_for_each(|n| self.disk.sync(n))
            .and_then(|()| self.disk.sync_dir());
        if synced.is_err() {
            // Not durable yet: the next flush tries them again.
            self.unsynced.lock().extend(names);
        }
        synced
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.disk.size()
    }

    fn list(&self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .disk
            .list()?
            .into_iter()
            .filter(|n| !n.ends_with(".tmp"))
            .collect())
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

    fn list(&self) -> Result<Vec<String>, StorageError> {
        let pairs = self.store.scan(crate::Scan {
            keyspace: self.keyspace,
            start: std::ops::Bound::Unbounded,
            end: std::ops::Bound::Unbounded,
            reverse: false,
            limit: usize::MAX,
        })?;
        Ok(pairs
            .into_iter()
            .filter_map(|(k, _)| String::from_utf8(k).ok())
            .collect())
    }
}
