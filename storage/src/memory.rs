//! `MemoryStore`: one ordered in-memory map per keyspace, for tests and
//! benchmarks.
//!
//! Guarantees: a `write` is applied under one write lock, so readers see all
//! of a batch or none of it; ops inside a batch apply in order (the last op
//! on a key wins). `flush` is a no-op: nothing survives the process, and
//! `size_on_disk` is always 0.

use crate::{KeyValue, Keyspace, Scan, StorageError, Store, WriteBatch};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::ops::Bound;

/// An in-memory [`Store`]. Cheap to create; not durable.
type Space = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default)]
pub struct MemoryStore {
    spaces: RwLock<BTreeMap<Keyspace, Space>>,
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
            match op.value {
                Some(value) => {
                    spaces.entry(op.keyspace).or_default().insert(op.key, value);
                }
                None => {
                    if let Some(space) = spaces.get_mut(&op.keyspace) {
                        space.remove(&op.key);
                    }
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
        if scan.limit == 0 || bounds_empty(&scan) {
            return Ok(Vec::new());
        }
        let spaces = self.spaces.read();
        let Some(space) = spaces.get(&scan.keyspace) else {
            return Ok(Vec::new());
        };
        let range = space.range::<[u8], _>((scan.start, scan.end));
        let clone = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if scan.reverse {
            range.rev().take(scan.limit).map(clone).collect()
        } else {
            range.take(scan.limit).map(clone).collect()
        })
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(0)
    }
}

/// True when the scan's bounds admit no key. `BTreeMap::range` panics on
/// start > end and on equal excluded bounds; for the store such a range is
/// simply empty.
pub(crate) fn bounds_empty(scan: &Scan<'_>) -> bool {
    use Bound::{Excluded, Included};
    match (scan.start, scan.end) {
        (Included(s), Included(e)) => s > e,
        (Included(s), Excluded(e)) | (Excluded(s), Included(e)) | (Excluded(s), Excluded(e)) => {
            s >= e
        }
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use Bound::{Excluded, Included, Unbounded};

    const KS: Keyspace = Keyspace(3);

    fn scan<'a>(
        start: Bound<&'a [u8]>,
        end: Bound<&'a [u8]>,
        reverse: bool,
        limit: usize,
    ) -> Scan<'a> {
        Scan {
            keyspace: KS,
            start,
            end,
            reverse,
            limit,
        }
    }

    #[test]
    fn bounds_empty_matches_the_ranges_that_admit_no_key() {
        let (a, b): (&[u8], &[u8]) = (b"a", b"b");
        type Case<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>, bool);
        let cases: [Case<'_>; 13] = [
            (Unbounded, Unbounded, false),
            (Included(a), Unbounded, false),
            (Unbounded, Excluded(a), false),
            (Included(a), Included(a), false),
            (Included(a), Excluded(a), true),
            (Excluded(a), Included(a), true),
            (Excluded(a), Excluded(a), true),
            (Included(a), Included(b), false),
            (Included(a), Excluded(b), false),
            (Excluded(a), Excluded(b), false),
            (Included(b), Included(a), true),
            (Excluded(b), Included(a), true),
            (Included(b), Excluded(a), true),
        ];
        for (start, end, empty) in cases {
            assert_eq!(
                bounds_empty(&scan(start, end, false, 1)),
                empty,
                "{start:?}..{end:?}"
            );
        }
    }

    type Keys<'a> = &'a [&'a [u8]];

    #[test]
    fn scan_honours_bounds_direction_and_limit() {
        let store = MemoryStore::new();
        let mut batch = WriteBatch::new();
        for k in [b"a", b"b", b"c", b"d"] {
            batch.put(KS, k.to_vec(), k.to_ascii_uppercase());
        }
        batch.put(Keyspace(2), b"b".to_vec(), b"other".to_vec());
        batch.put(Keyspace(4), b"b".to_vec(), b"other".to_vec());
        store.write(batch).expect("write");

        let (b, c): (&[u8], &[u8]) = (b"b", b"c");
        let cases: [(Scan<'_>, Keys<'_>); 8] = [
            (
                scan(Unbounded, Unbounded, false, 10),
                &[b"a", b"b", b"c", b"d"],
            ),
            (
                scan(Unbounded, Unbounded, true, 10),
                &[b"d", b"c", b"b", b"a"],
            ),
            (scan(Unbounded, Unbounded, true, 2), &[b"d", b"c"]),
            (scan(Unbounded, Unbounded, false, 0), &[]),
            (scan(Included(b), Excluded(c), false, 10), &[b"b"]),
            (scan(Excluded(b), Included(c), true, 10), &[b"c"]),
            (scan(Included(b), Unbounded, false, 10), &[b"b", b"c", b"d"]),
            (scan(Included(c), Excluded(b), false, 10), &[]),
        ];
        for (request, expected) in cases {
            let got = store.scan(request.clone()).expect("scan");
            let keys: Vec<&[u8]> = got.iter().map(|(k, _)| k.as_slice()).collect();
            assert_eq!(keys, expected, "{request:?}");
            for (k, v) in &got {
                assert_eq!(*v, k.to_ascii_uppercase(), "value of {k:?}");
            }
        }
    }

    #[test]
    fn deleting_in_an_unused_keyspace_creates_nothing() {
        let store = MemoryStore::new();
        let mut batch = WriteBatch::new();
        batch.delete(Keyspace(9), b"k".to_vec());
        store.write(batch).expect("write");
        assert!(store.spaces.read().is_empty());
        assert_eq!(store.size_on_disk().expect("size"), 0);
        store.flush().expect("flush");
    }
}
