//! The storage contract, as checks any backend must pass. Each check takes a
//! fresh, empty store; `tests/contract.rs` runs every check on every backend.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ops::Bound::{self, Excluded, Included, Unbounded};
use std::sync::Arc;
use tally_storage::{
    FaultStore, KeyValue, Keyspace, MemoryStore, Scan, SledStore, Store, WriteBatch,
};

/// A store under test and whatever must outlive it (its directory).
/// Field order: the store drops before its directory is deleted.
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub dir: Option<tempfile::TempDir>,
}

pub fn memory() -> Fixture {
    Fixture {
        store: Arc::new(MemoryStore::new()),
        dir: None,
    }
}

pub fn sled() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open sled");
    Fixture {
        store: Arc::new(store),
        dir: Some(dir),
    }
}

/// A `FaultStore` with no fault armed, over `inner`.
pub fn fault_over(inner: Fixture) -> Fixture {
    Fixture {
        store: Arc::new(FaultStore::new(inner.store)),
        dir: inner.dir,
    }
}

/// `Arc<MemoryStore>` used as a `Store` through the blanket `Arc` impl.
pub fn arc_of_memory() -> Fixture {
    let shared: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    Fixture {
        store: Arc::new(shared),
        dir: None,
    }
}

pub fn put(store: &dyn Store, ks: u8, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(Keyspace(ks), key.to_vec(), value.to_vec());
    store.write(batch).expect("write");
}

pub fn scan_all(store: &dyn Store, ks: u8, reverse: bool) -> Vec<KeyValue> {
    store
        .scan(Scan {
            keyspace: Keyspace(ks),
            start: Unbounded,
            end: Unbounded,
            reverse,
            limit: usize::MAX,
        })
        .expect("scan")
}

pub fn get(store: &dyn Store, ks: u8, key: &[u8]) -> Option<Vec<u8>> {
    store.get(Keyspace(ks), key).expect("get")
}

fn kv(k: &[u8], v: &[u8]) -> KeyValue {
    (k.to_vec(), v.to_vec())
}

// ---------------------------------------------------------------- checks

pub fn put_get_delete(store: &dyn Store) {
    assert_eq!(get(store, 1, b"k"), None, "missing key");
    put(store, 1, b"k", b"v1");
    assert_eq!(
        get(store, 1, b"k"),
        Some(b"v1".to_vec()),
        "reads see an unflushed write"
    );
    put(store, 1, b"k", b"v2");
    assert_eq!(get(store, 1, b"k"), Some(b"v2".to_vec()), "overwrite");
    store.flush().expect("flush");
    assert_eq!(
        get(store, 1, b"k"),
        Some(b"v2".to_vec()),
        "still there after flush"
    );

    let mut batch = WriteBatch::new();
    batch.delete(Keyspace(1), b"k".to_vec());
    batch.delete(Keyspace(1), b"never-written".to_vec());
    store.write(batch).expect("delete");
    assert_eq!(get(store, 1, b"k"), None, "deleted");
    assert_eq!(get(store, 1, b"never-written"), None);

    // Empty keys and empty values are ordinary keys and values.
    put(store, 1, b"", b"empty key");
    put(store, 1, b"empty value", b"");
    assert_eq!(get(store, 1, b""), Some(b"empty key".to_vec()));
    assert_eq!(get(store, 1, b"empty value"), Some(Vec::new()));
    // Big values survive intact.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    put(store, 1, b"big", &big);
    store.flush().expect("flush");
    assert_eq!(get(store, 1, b"big"), Some(big));
}

pub fn batch_applies_whole_and_in_order(store: &dyn Store) {
    put(store, 2, b"old", b"gone soon");
    let mut batch = WriteBatch::new();
    batch.put(Keyspace(2), b"a".to_vec(), b"1".to_vec());
    batch.put(Keyspace(2), b"a".to_vec(), b"2".to_vec()); // the last op on a key wins
    batch.put(Keyspace(2), b"b".to_vec(), b"1".to_vec());
    batch.delete(Keyspace(2), b"b".to_vec()); // put then delete: gone
    batch.delete(Keyspace(2), b"old".to_vec());
    batch.put(Keyspace(3), b"a".to_vec(), b"other keyspace".to_vec());
    batch.delete(Keyspace(4), b"c".to_vec());
    batch.put(Keyspace(4), b"c".to_vec(), b"delete then put".to_vec());
    assert_eq!(batch.len(), 8);
    store.write(batch).expect("write");

    assert_eq!(scan_all(store, 2, false), vec![kv(b"a", b"2")]);
    assert_eq!(scan_all(store, 3, false), vec![kv(b"a", b"other keyspace")]);
    assert_eq!(
        scan_all(store, 4, false),
        vec![kv(b"c", b"delete then put")]
    );

    // An empty batch is a no-op that succeeds.
    store.write(WriteBatch::new()).expect("empty batch");
    assert_eq!(scan_all(store, 2, false), vec![kv(b"a", b"2")]);
    store.flush().expect("flush");
}

/// Fixed cases with spelled-out answers.
pub fn scan_ranges(store: &dyn Store) {
    let mut batch = WriteBatch::new();
    for k in [&b"a"[..], b"b", b"ba", b"c", b"d"] {
        batch.put(Keyspace(9), k.to_vec(), k.to_ascii_uppercase());
    }
    // Neighbours that must never leak in.
    batch.put(Keyspace(8), b"b".to_vec(), b"x".to_vec());
    batch.put(Keyspace(10), b"b".to_vec(), b"x".to_vec());
    store.write(batch).expect("write");

    let (a, b, c, z): (&[u8], &[u8], &[u8], &[u8]) = (b"a", b"b", b"c", b"z");
    type Case<'a> = (
        Bound<&'a [u8]>,
        Bound<&'a [u8]>,
        bool,
        usize,
        &'a [&'a [u8]],
    );
    let cases: Vec<Case<'_>> = vec![
        (
            Unbounded,
            Unbounded,
            false,
            100,
            &[b"a", b"b", b"ba", b"c", b"d"],
        ),
        (
            Unbounded,
            Unbounded,
            true,
            100,
            &[b"d", b"c", b"ba", b"b", b"a"],
        ),
        (Unbounded, Unbounded, false, 2, &[b"a", b"b"]),
        (Unbounded, Unbounded, true, 2, &[b"d", b"c"]),
        (Unbounded, Unbounded, false, 0, &[]),
        (
            Included(b),
            Unbounded,
            false,
            100,
            &[b"b", b"ba", b"c", b"d"],
        ),
        (Excluded(b), Unbounded, false, 100, &[b"ba", b"c", b"d"]),
        (Unbounded, Included(b), false, 100, &[b"a", b"b"]),
        (Unbounded, Excluded(b), true, 100, &[b"a"]),
        (Included(b), Included(c), false, 100, &[b"b", b"ba", b"c"]),
        (Included(b), Excluded(c), true, 100, &[b"ba", b"b"]),
        (Excluded(b), Excluded(c), false, 100, &[b"ba"]),
        (Excluded(a), Included(c), true, 1, &[b"c"]),
        (Included(b), Included(b), false, 100, &[b"b"]),
        (Included(b), Excluded(b), false, 100, &[]),
        (Excluded(b), Excluded(b), true, 100, &[]),
        (Included(c), Included(a), false, 100, &[]),
        (Included(z), Unbounded, false, 100, &[]),
        (Unbounded, Excluded(a), false, 100, &[]),
    ];
    for (start, end, reverse, limit, expected) in cases {
        let got = store
            .scan(Scan {
                keyspace: Keyspace(9),
                start,
                end,
                reverse,
                limit,
            })
            .expect("scan");
        let want: Vec<KeyValue> = expected
            .iter()
            .map(|k| kv(k, &k.to_ascii_uppercase()))
            .collect();
        assert_eq!(
            got, want,
            "{start:?}..{end:?} reverse={reverse} limit={limit}"
        );
    }
}

/// Every bound combination over a set of probe keys, compared with a plain
/// filter over a sorted list, in the first, a middle and the last keyspace
/// (each with its neighbours filled with the same keys).
pub fn scan_matches_model(store: &dyn Store) {
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![1],
        vec![1, 0],
        vec![0x7f],
        vec![0xff],
        vec![0xff, 0],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0xff],
    ];
    let value = |ks: u8, k: &[u8]| [&[ks][..], k, b"v"].concat();
    let spaces: [u8; 6] = [0, 1, 127, 128, 254, 255];
    let mut batch = WriteBatch::new();
    for &ks in &spaces {
        for k in &keys {
            batch.put(Keyspace(ks), k.clone(), value(ks, k));
        }
    }
    store.write(batch).expect("write");

    let mut probes: Vec<Vec<u8>> = keys.clone();
    probes.extend([vec![0, 0, 0], vec![0x80], vec![0xff, 0xff, 0xff, 0xff]]);
    let mut bounds: Vec<Bound<&[u8]>> = vec![Unbounded];
    for p in &probes {
        bounds.push(Included(p));
        bounds.push(Excluded(p));
    }
    let admits = |k: &[u8], start: Bound<&[u8]>, end: Bound<&[u8]>| {
        let above = match start {
            Included(s) => k >= s,
            Excluded(s) => k > s,
            Unbounded => true,
        };
        let below = match end {
            Included(e) => k <= e,
            Excluded(e) => k < e,
            Unbounded => true,
        };
        above && below
    };
    let mut sorted = keys.clone();
    sorted.sort();
    let mut checked = 0usize;
    for ks in [0u8, 128, 255] {
        for &start in &bounds {
            for &end in &bounds {
                for reverse in [false, true] {
                    for limit in [0usize, 1, 3, usize::MAX] {
                        let mut want: Vec<KeyValue> = sorted
                            .iter()
                            .filter(|k| admits(k, start, end))
                            .map(|k| (k.clone(), value(ks, k)))
                            .collect();
                        if reverse {
                            want.reverse();
                        }
                        want.truncate(limit);
                        let got = store
                            .scan(Scan {
                                keyspace: Keyspace(ks),
                                start,
                                end,
                                reverse,
                                limit,
                            })
                            .expect("scan");
                        assert_eq!(
                            got, want,
                            "keyspace {ks} {start:?}..{end:?} reverse={reverse} limit={limit}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 3 * bounds.len() * bounds.len() * 2 * 4);
}

pub fn keyspaces_are_isolated(store: &dyn Store) {
    let spaces: [u8; 4] = [0, 1, 254, 255];
    for ks in spaces {
        put(store, ks, b"shared", &[ks]);
    }
    // Keys at the very edges of the prefix encoding.
    put(store, 0, &[0xff, 0xff, 0xff], b"top of keyspace 0");
    put(store, 1, b"", b"bottom of keyspace 1");
    put(store, 255, &[0xff; 64], b"top of keyspace 255");
    put(store, 255, b"", b"bottom of keyspace 255");

    for ks in spaces {
        assert_eq!(get(store, ks, b"shared"), Some(vec![ks]), "keyspace {ks}");
    }
    assert_eq!(get(store, 2, b"shared"), None);
    assert_eq!(get(store, 0, b""), None, "keyspace 0 has no empty key");
    assert_eq!(get(store, 254, &[0xff; 64]), None);

    let keys = |ks: u8, reverse: bool| -> Vec<Vec<u8>> {
        scan_all(store, ks, reverse)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(
        keys(0, false),
        vec![b"shared".to_vec(), vec![0xff, 0xff, 0xff]]
    );
    assert_eq!(
        keys(0, true),
        vec![vec![0xff, 0xff, 0xff], b"shared".to_vec()]
    );
    assert_eq!(keys(1, false), vec![Vec::new(), b"shared".to_vec()]);
    assert_eq!(keys(1, true), vec![b"shared".to_vec(), Vec::new()]);
    assert_eq!(keys(254, false), vec![b"shared".to_vec()]);
    assert_eq!(
        keys(255, false),
        vec![Vec::new(), b"shared".to_vec(), vec![0xff; 64]]
    );
    assert_eq!(
        keys(255, true),
        vec![vec![0xff; 64], b"shared".to_vec(), Vec::new()]
    );
    for unused in [2u8, 128, 253] {
        assert!(
            scan_all(store, unused, false).is_empty(),
            "keyspace {unused}"
        );
        assert!(
            scan_all(store, unused, true).is_empty(),
            "keyspace {unused}"
        );
    }

    // Deleting in one keyspace leaves the same key elsewhere alone.
    let mut batch = WriteBatch::new();
    batch.delete(Keyspace(254), b"shared".to_vec());
    batch.delete(Keyspace(0), b"shared".to_vec());
    store.write(batch).expect("delete");
    assert_eq!(get(store, 254, b"shared"), None);
    assert_eq!(get(store, 0, b"shared"), None);
    assert_eq!(get(store, 255, b"shared"), Some(vec![255]));
    assert_eq!(get(store, 1, b"shared"), Some(vec![1]));
    assert!(scan_all(store, 254, false).is_empty());
}

pub fn concurrent_writers_all_land(store: &dyn Store) {
    const THREADS: u8 = 4;
    const BATCHES: u8 = 25;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for b in 0..BATCHES {
                    let mut batch = WriteBatch::new();
                    for i in 0..4u8 {
                        batch.put(Keyspace(6), vec![t, b, i], vec![t ^ b ^ i]);
                    }
                    store.write(batch).expect("write");
                }
                store.flush().expect("flush");
            });
        }
    });
    let all = scan_all(store, 6, false);
    assert_eq!(all.len(), usize::from(THREADS) * usize::from(BATCHES) * 4);
    for (k, v) in &all {
        assert_eq!(v, &vec![k[0] ^ k[1] ^ k[2]], "{k:?}");
    }
}

pub fn flush_and_size_answer(store: &dyn Store) {
    store.flush().expect("flush on an empty store");
    put(store, 1, b"k", &[7; 4096]);
    store.flush().expect("flush");
    // Memory reports 0, disk backends their footprint; both answer.
    let size = store.size_on_disk().expect("size_on_disk");
    assert!(size < 1 << 40, "plausible size: {size}");
    assert_eq!(get(store, 1, b"k"), Some(vec![7; 4096]));
}
