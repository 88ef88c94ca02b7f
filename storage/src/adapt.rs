//! Adapters between the two storage shapes: [`StoreDisk`] is a [`Disk`]
//! kept in one keyspace of a [`Store`] (so an engine on a caller's store,
//! fault-injecting ones included, keeps its log and blobs there), and
//! [`DiskStore`] is a [`Store`] kept on a [`Disk`] (so a whole engine can run
//! on a simulated disk, its meta record and manifest included).

use crate::disk::Disk;
use crate::memory::MemoryStore;
use crate::{KeyValue, Keyspace, Scan, StorageError, Store, WriteBatch};
use parking_lot::Mutex;
use std::ops::Bound;
use std::sync::Arc;

/// A [`Disk`] in a keyspace of a store: a file is the keys `name 0x00 seq`
/// (one per append). `sync` and `sync_dir` flush the store, so durability
/// is the store's.
pub struct StoreDisk {
    store: Arc<dyn Store>,
    keyspace: Keyspace,
    /// Directory part of every name (`""` at the top).
    dir: String,
    /// Serialises read-modify-write operations on the keyspace.
    lock: Mutex<()>,
}

impl StoreDisk {
    pub fn new(store: Arc<dyn Store>, keyspace: Keyspace) -> StoreDisk {
        StoreDisk {
            store,
            keyspace,
            dir: String::new(),
            lock: Mutex::new(()),
        }
    }

    fn prefix(&self, name: &str) -> Vec<u8> {
        let mut key = format!("{}{name}", self.dir).into_bytes();
        key.push(0);
        key
    }

    fn parts(&self, name: &str) -> Result<Vec<KeyValue>, StorageError> {
        let start = self.prefix(name);
        let mut end = format!("{}{name}", self.dir).into_bytes();
        end.push(1);
        self.store.scan(Scan {
            keyspace: self.keyspace,
            start: Bound::Included(&start),
            end: Bound::Excluded(&end),
            reverse: false,
            limit: usize::MAX,
        })
    }

    fn key(&self, name: &str, seq: u64) -> Vec<u8> {
        let mut key = self.prefix(name);
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }

    /// Replaces file `name` by `content` (and removes `also`) in one write.
    fn rewrite(
        &self,
        name: &str,
        content: Option<Vec<u8>>,
        also: Option<&str>,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        for old in [Some(name), also].into_iter().flatten() {
            for (key, _) in self.parts(old)? {
                batch.delete(self.keyspace, key);
            }
        }
        if let Some(content) = content {
            batch.put(self.keyspace, self.key(name, 0), content);
        }
        self.store.write(batch)
    }
}

impl Disk for StoreDisk {
    fn list(&self) -> Result<Vec<String>, StorageError> {
        let all = self.store.scan(Scan {
            keyspace: self.keyspace,
            start: Bound::Unbounded,
            end: Bound::Unbounded,
            reverse: false,
            limit: usize::MAX,
        })?;
        let mut names: Vec<String> = all
            .iter()
            .filter_map(|(k, _)| k.iter().position(|&b| b == 0).map(|p| &k[..p]))
            .filter_map(|n| std::str::from_utf8(n).ok())
            .map(str::to_string)
            .collect();
        names.dedup();
        Ok(names)
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        crate::disk::check_name(name).map_err(|e| StorageError::Read(e.to_string()))?;
        let parts = self.parts(name)?;
        if parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(parts.into_iter().flat_map(|(_, v)| v).collect()))
    }

    fn create(&self, name: &str) -> Result<(), StorageError> {
        crate::disk::check_name(name)?;
        let _guard = self.lock.lock();
        self.rewrite(name, Some(Vec::new()), None)
    }

    fn append(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        crate::disk::check_name(name)?;
        let _guard = self.lock.lock();
        let parts = self.parts(name)?;
        let Some((last, _)) = parts.last() else {
            return Err(StorageError::Write(format!("{name}: no such file")));
        };
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&last[last.len() - 8..]);
        let mut batch = WriteBatch::new();
        batch.put(
            self.keyspace,
            self.key(name, u64::from_be_bytes(seq) + 1),
            bytes.to_vec(),
        );
        self.store.write(batch)
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), StorageError> {
        crate::disk::check_name(name)?;
        let _guard = self.lock.lock();
        let Some(mut content) = self.read(name)? else {
            return Err(StorageError::Write(format!("{name}: no such file")));
        };
        content.truncate(len as usize);
        self.rewrite(name, Some(content), None)
    }

    fn sync(&self, _name: &str) -> Result<(), StorageError> {
        self.store.flush()
    }

    fn remove(&self, name: &str) -> Result<(), StorageError> {
        crate::disk::check_name(name)?;
        let _guard = self.lock.lock();
        self.rewrite(name, None, None)
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        crate::disk::check_name(from)?;
        crate::disk::check_name(to)?;
        let _guard = self.lock.lock();
        let Some(content) = self.read(from)? else {
            return Err(StorageError::Write(format!("{from}: no such file")));
        };
        self.rewrite(to, Some(content), Some(from))
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        self.store.flush()
    }

    fn size(&self) -> Result<u64, StorageError> {
        Ok(0)
    }

    fn subdir(&self, name: &str) -> Result<Arc<dyn Disk>, StorageError> {
        crate::disk::check_name(name)?;
        Ok(Arc::new(StoreDisk {
            store: self.store.clone(),
            keyspace: self.keyspace,
            dir: format!("{}{name}/", self.dir),
            lock: Mutex::new(()),
        }))
    }
}

/// A [`Store`] on a [`Disk`]: held in memory, and written whole to the file
/// `store` at each `flush` (a temporary file, synced, renamed over it, the
/// directory synced), with a BLAKE3 checksum. For small stores: the engine
/// keeps only its meta record and checkpoint manifest there when it runs on
/// a disk of its own (the simulated disk of the power-loss tests).
pub struct DiskStore {
    disk: Arc<dyn Disk>,
    map: MemoryStore,
    lock: Mutex<()>,
}

const SNAPSHOT: &str = "store";
const SNAPSHOT_TMP: &str = "store.tmp";

impl DiskStore {
    /// Opens the store kept on `disk`; a damaged file is refused.
    pub fn open(disk: Arc<dyn Disk>) -> Result<DiskStore, StorageError> {
        let map = MemoryStore::new();
        if let Some(bytes) = disk.read(SNAPSHOT)? {
            let damaged = |why: &str| StorageError::Open {
                path: SNAPSHOT.into(),
                reason: format!("damaged store file: {why}"),
            };
            if bytes.len() < 32 {
                return Err(damaged("too short"));
            }
            let (body, sum) = bytes.split_at(bytes.len() - 32);
            if blake3::hash(body).as_bytes()[..] != *sum {
                return Err(damaged("checksum mismatch"));
            }
            let mut batch = WriteBatch::new();
            let mut at = 0usize;
            let take = |at: &mut usize, n: usize| -> Result<Vec<u8>, StorageError> {
                let part = body
                    .get(*at..*at + n)
                    .ok_or_else(|| damaged("truncated entry"))?;
                *at += n;
                Ok(part.to_vec())
            };
            let len = |at: &mut usize| -> Result<usize, StorageError> {
                let b = take(at, 4)?;
                Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            };
            while at < body.len() {
                let space = take(&mut at, 1)?[0];
                let klen = len(&mut at)?;
                let key = take(&mut at, klen)?;
                let vlen = len(&mut at)?;
                let value = take(&mut at, vlen)?;
                batch.put(Keyspace(space), key, value);
            }
            map.write(batch)?;
        }
        Ok(DiskStore {
            disk,
            map,
            lock: Mutex::new(()),
        })
    }
}

impl Store for DiskStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.map.write(batch)
    }

    fn flush(&self) -> Result<(), StorageError> {
        let _guard = self.lock.lock();
        let mut body = Vec::new();
        for space in 0..=u8::MAX {
            let pairs = self.map.scan(Scan {
                keyspace: Keyspace(space),
                start: Bound::Unbounded,
                end: Bound::Unbounded,
                reverse: false,
                limit: usize::MAX,
            })?;
            for (key, value) in pairs {
                body.push(space);
                body.extend_from_slice(&(key.len() as u32).to_le_bytes());
                body.extend_from_slice(&key);
                body.extend_from_slice(&(value.len() as u32).to_le_bytes());
                body.extend_from_slice(&value);
            }
        }
        let sum = *blake3::hash(&body).as_bytes();
        body.extend_from_slice(&sum);
        self.disk.create(SNAPSHOT_TMP)?;
        self.disk.append(SNAPSHOT_TMP, &body)?;
        self.disk.sync(SNAPSHOT_TMP)?;
        self.disk.rename(SNAPSHOT_TMP, SNAPSHOT)?;
        self.disk.sync_dir()
    }

    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.map.get(keyspace, key)
    }

    fn scan(&self, scan: Scan<'_>) -> Result<Vec<KeyValue>, StorageError> {
        self.map.scan(scan)
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.disk.size()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::disk::{CrashMode, SimDisk};

    #[test]
    fn a_store_disk_keeps_files_apart_and_in_order() {
        let disk = StoreDisk::new(Arc::new(MemoryStore::new()), Keyspace(9));
        disk.create("a").unwrap();
        disk.create("ab").unwrap();
        disk.append("a", b"12").unwrap();
        disk.append("ab", b"x").unwrap();
        disk.append("a", b"34").unwrap();
        assert_eq!(disk.read("a").unwrap().unwrap(), b"1234");
        assert_eq!(
            disk.list().unwrap(),
            vec!["a".to_string(), "ab".to_string()]
        );
        disk.truncate("a", 3).unwrap();
        disk.append("a", b"5").unwrap();
        assert_eq!(disk.read("a").unwrap().unwrap(), b"1235");
        disk.rename("a", "c").unwrap();
        assert_eq!(disk.read("a").unwrap(), None);
        assert_eq!(disk.read("c").unwrap().unwrap(), b"1235");
        disk.remove("c").unwrap();
        assert_eq!(disk.list().unwrap(), vec!["ab".to_string()]);
    }

    #[test]
    fn a_disk_store_survives_a_crash_after_flush_only() {
        let sim = SimDisk::new();
        let store = DiskStore::open(Arc::new(sim.clone())).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Keyspace(1), b"k".to_vec(), b"v1".to_vec());
        store.write(batch).unwrap();
        store.flush().unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Keyspace(1), b"k".to_vec(), b"v2".to_vec());
        store.write(batch).unwrap();
        for seed in 0..8 {
            let crashed = sim.crash(CrashMode::Tear { seed });
            let reopened = DiskStore::open(Arc::new(crashed)).unwrap();
            assert_eq!(reopened.get(Keyspace(1), b"k").unwrap().unwrap(), b"v1");
        }
        let damaged = sim.crash(CrashMode::DropUnsynced);
        assert!(damaged.flip_bit("store", 3, 1));
        assert!(DiskStore::open(Arc::new(damaged)).is_err());
    }
}
