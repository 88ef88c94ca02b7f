//! `MemoryStore`: an ordered in-memory map per keyspace. Writes are atomic
//! under one lock; `flush` does nothing (there is nothing to make durable).

use crate::{KeyValue, Keyspace, Scan, StorageError, Store, WriteBatch};
use parking_lot::RwLock;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct MemoryStore {
    spaces: RwLock<BTreeMap<Keyspace, BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut spaces = self.spaces.write();
        for op in batch.into_ops() {
            let space = spaces.entry(op.keyspace).or_default();
            match op.value {
                Some(value) => {
                    space.insert(op.key, value);
                }
                None => {
                    space.remove(&op.key);
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .spaces
            .read()
            .get(&keyspace)
            .and_then(|s| s.get(key).cloned()))
    }

    fn scan(&self, scan: Scan<'_>) -> Result<Vec<KeyValue>, StorageError> {
        let spaces = self.spaces.read();
        let Some(space) = spaces.get(&scan.keyspace) else {
            return Ok(Vec::new());
        };
        if bounds_empty(&scan) {
            return Ok(Vec::new());
        }
        let range = space.range::<[u8], _>((scan.start, scan.end));
        let pairs: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = if scan.reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        Ok(pairs
            .take(scan.limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(0)
    }
}

/// BTreeMap::range panics on start > end or equal excluded bounds; such a
/// range is simply empty.
pub(crate) fn bounds_empty(scan: &Scan<'_>) -> bool {
    use std::ops::Bound::{Excluded, Included};
    match (scan.start, scan.end) {
        (Included(s), Included(e)) => s > e,
        (Included(s), Excluded(e)) | (Excluded(s), Included(e)) => s >= e,
        (Excluded(s), Excluded(e)) => s >= e,
        _ => false,
    }
}
