//! `FaultStore` over real backends (memory and sled): each `Fault` does what
//! it says, touches the inner store exactly as stated, and the store works
//! normally again afterwards (or after `clear`, for `DiskFull`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{get, put, scan_all, Fixture};
use std::sync::Arc;
use tally_storage::{Fault, FaultStore, Keyspace, StorageError, Store, WriteBatch};

const KS: u8 = 7;

/// A batch of `n` ops on keys `[0]..[n]`: puts, except op 2 deletes the
/// key `b"doomed"` (written beforehand by `setup`).
fn mixed_batch(n: u8) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for i in 0..n {
        if i == 2 {
            batch.delete(Keyspace(KS), b"doomed".to_vec());
        } else {
            batch.put(Keyspace(KS), vec![i], vec![i; 3]);
        }
    }
    batch
}

/// Runs `check` on a fresh `FaultStore` over each backend; the fixture keeps
/// sled's directory alive.
fn for_each_backend(check: impl Fn(&FaultStore, &str)) {
    type Make = fn() -> Fixture;
    let backends: [(&str, Make); 2] = [("memory", common::memory), ("sled", common::sled)];
    for (name, make) in backends {
        let fixture = make();
        let faulty = FaultStore::new(Arc::clone(&fixture.store));
        put(&faulty, KS, b"doomed", b"here");
        check(&faulty, name);
    }
}

#[test]
fn fail_next_write_fails_once_and_applies_nothing() {
    for_each_backend(|store, backend| {
        store.inject(Fault::FailNextWrite);
        let err = store.write(mixed_batch(5)).err();
        assert!(
            matches!(&err, Some(StorageError::Write(m)) if m.contains("injected")),
            "{backend}: {err:?}"
        );
        assert_eq!(
            scan_all(store.inner().as_ref(), KS, false).len(),
            1,
            "{backend}: nothing applied"
        );
        assert_eq!(
            get(store, KS, b"doomed"),
            Some(b"here".to_vec()),
            "{backend}"
        );
        // Flushes are not affected; the next write goes through whole.
        store.flush().expect("flush");
        store.write(mixed_batch(5)).expect("next write");
        assert_eq!(get(store, KS, b"doomed"), None, "{backend}");
        assert_eq!(scan_all(store, KS, false).len(), 4, "{backend}");
    });
}

#[test]
fn fail_next_flush_fails_once() {
    for_each_backend(|store, backend| {
        store.inject(Fault::FailNextFlush);
        // Writes are not affected while the flush fault is armed.
        store.write(mixed_batch(1)).expect("write");
        let err = store.flush().err();
        assert!(
            matches!(&err, Some(StorageError::Flush(m)) if m.contains("injected")),
            "{backend}: {err:?}"
        );
        assert!(store.pending().is_empty(), "{backend}");
        store.flush().expect("the next flush succeeds");
        assert_eq!(get(store, KS, &[0]), Some(vec![0; 3]), "{backend}");
    });
}

#[test]
fn tear_next_write_applies_exactly_the_first_ops() {
    // (ops_applied, reported applied, keys left afterwards)
    let cases: [(usize, usize, &[&[u8]]); 6] = [
        (0, 0, &[b"doomed"]),
        (1, 1, &[&[0], b"doomed"]),
        (2, 2, &[&[0], &[1], b"doomed"]),
        (3, 3, &[&[0], &[1]]),
        (5, 5, &[&[0], &[1], &[3], &[4]]),
        (50, 5, &[&[0], &[1], &[3], &[4]]),
    ];
    for (ops_applied, applied, keys) in cases {
        for_each_backend(|store, backend| {
            store.inject(Fault::TearNextWrite { ops_applied });
            let err = store.write(mixed_batch(5)).err();
            assert!(
                matches!(err, Some(StorageError::Torn { applied: a, total: 5 }) if a == applied),
                "{backend} tear {ops_applied}: {err:?}"
            );
            let got: Vec<Vec<u8>> = scan_all(store.inner().as_ref(), KS, false)
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            let want: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
            assert_eq!(got, want, "{backend} tear {ops_applied}");
            // One-shot: the next write is whole.
            store.write(mixed_batch(5)).expect("next write");
            assert_eq!(
                scan_all(store, KS, false).len(),
                4,
                "{backend} tear {ops_applied}"
            );
        });
    }
}

#[test]
fn disk_full_fails_everything_until_clear() {
    for_each_backend(|store, backend| {
        store.inject(Fault::DiskFull);
        for attempt in 0..3 {
            let write = store.write(mixed_batch(3)).err();
            assert!(
                matches!(write, Some(StorageError::NoSpace)),
                "{backend} #{attempt}: {write:?}"
            );
            let flush = store.flush().err();
            assert!(
                matches!(flush, Some(StorageError::NoSpace)),
                "{backend} #{attempt}: {flush:?}"
            );
        }
        // Nothing was applied, and reads keep working.
        assert_eq!(
            get(store, KS, b"doomed"),
            Some(b"here".to_vec()),
            "{backend}"
        );
        assert_eq!(scan_all(store, KS, false).len(), 1, "{backend}");
        assert!(store.size_on_disk().is_ok(), "{backend}");
        assert_eq!(store.pending(), [Fault::DiskFull], "{backend}");

        store.clear();
        store.write(mixed_batch(3)).expect("write after clear");
        store.flush().expect("flush after clear");
        assert_eq!(get(store, KS, b"doomed"), None, "{backend}");
        assert_eq!(scan_all(store, KS, false).len(), 2, "{backend}");
    });
}

#[test]
fn clear_disarms_every_pending_fault() {
    for_each_backend(|store, backend| {
        for fault in [
            Fault::FailNextWrite,
            Fault::FailNextFlush,
            Fault::TearNextWrite { ops_applied: 1 },
            Fault::DiskFull,
        ] {
            store.inject(fault);
        }
        assert_eq!(store.pending().len(), 4, "{backend}");
        store.clear();
        assert!(store.pending().is_empty(), "{backend}");
        store.write(mixed_batch(4)).expect("write");
        store.flush().expect("flush");
        assert_eq!(scan_all(store, KS, false).len(), 3, "{backend}");
    });
}

#[test]
fn reads_and_the_inner_store_pass_through() {
    let fixture = common::sled();
    let faulty = FaultStore::new(Arc::clone(&fixture.store));
    assert!(Arc::ptr_eq(faulty.inner(), &fixture.store));
    put(fixture.store.as_ref(), KS, b"behind", b"the wrapper");
    fixture.store.flush().expect("flush");
    faulty.inject(Fault::DiskFull);
    assert_eq!(get(&faulty, KS, b"behind"), Some(b"the wrapper".to_vec()));
    assert_eq!(
        scan_all(&faulty, KS, true),
        scan_all(fixture.store.as_ref(), KS, true)
    );
    assert_eq!(
        faulty.size_on_disk().expect("size"),
        fixture.store.size_on_disk().expect("size")
    );
    assert!(faulty.size_on_disk().expect("size") > 0);
}
