//! The blob contract, for files on disk and for blobs inside a store: a put
//! replaces a blob whole, reads see it at once, flushed blobs survive a
//! reopen, a put cut short leaves nothing behind, bad names are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use tally_storage::{BlobStore, FileBlobs, Keyspace, MemoryStore, StorageError, StoreBlobs};

fn contract(blobs: &dyn BlobStore) {
    assert_eq!(blobs.get("s0000-c00000000").expect("get"), None);
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7) as u8).collect();
    blobs.put("s0000-c00000000", &big).expect("put");
    blobs.put("s0001-c00000000", b"small").expect("put");
    assert_eq!(
        blobs.get("s0000-c00000000").expect("get").as_deref(),
        Some(&big[..])
    );
    blobs.put("s0001-c00000000", b"replaced").expect("put");
    assert_eq!(
        blobs.get("s0001-c00000000").expect("get").as_deref(),
        Some(&b"replaced"[..])
    );
    blobs.put("gone", b"soon").expect("put");
    blobs.delete("gone").expect("delete");
    blobs.delete("never-there").expect("deleting nothing");
    assert_eq!(blobs.get("gone").expect("get"), None);
    blobs.flush().expect("flush");
    for bad in ["", "../x", "a/b", "a.tmp", &"x".repeat(129)] {
        assert!(
            matches!(blobs.put(bad, b"no"), Err(StorageError::Write(_))),
            "{bad:?}"
        );
        assert!(blobs.get(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn file_blobs_keep_the_contract_and_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("details");
    {
        let blobs = FileBlobs::open(&path).expect("open");
        contract(&blobs);
        assert!(blobs.size_on_disk().expect("size") >= 1_500_000);
    }
    // A put cut short by a crash leaves a .tmp file: gone on reopen, and
    // the blobs themselves intact.
    std::fs::write(path.join("s0002-c00000000.tmp"), b"half").expect("tmp");
    let blobs = FileBlobs::open(&path).expect("reopen");
    assert!(!path.join("s0002-c00000000.tmp").exists());
    assert_eq!(blobs.get("s0002-c00000000").expect("get"), None);
    assert_eq!(
        blobs.get("s0001-c00000000").expect("get").as_deref(),
        Some(&b"replaced"[..])
    );
    assert_eq!(
        blobs.get("s0000-c00000000").expect("get").map(|b| b.len()),
        Some(1_500_000)
    );
}

#[test]
fn file_blobs_refuse_a_path_that_is_a_file() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("taken");
    std::fs::write(&file, b"x").expect("file");
    assert!(matches!(
        FileBlobs::open(&file),
        Err(StorageError::Open { .. })
    ));
}

#[test]
fn store_blobs_keep_the_contract() {
    let store = Arc::new(MemoryStore::new());
    contract(&StoreBlobs::new(store, Keyspace(9)));
}
