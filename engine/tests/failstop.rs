//! What the engine does when it cannot trust itself any more, and what it
//! refuses to open: a dead shard stops it, pending transfers expire without
//! traffic, a store is refused when a setting that decides outcomes
//! differs, when its format record or log is missing, when a blob is not
//! the one its manifest names, and a flipped byte in sled's files never
//! opens as a shorter history.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;
use tally_engine::*;

const BANK: u64 = 1;
const A: u64 = 10;
const B: u64 = 11;

fn sled(dir: &Path) -> Config {
    Config::sled(dir).with_shards(2)
}

#[test]
fn a_dead_shard_stops_the_engine_and_a_reopen_decides_from_the_log() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(sled(dir.path())).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    assert!(submit_one(&engine, transfer(1, A, B, 1_00)).is_committed());
    let shard_of_a = (0..2u16)
        .find(|&s| tally_engine::shard_of(AccountId(A), 2).0 == s)
        .expect("a shard");
    engine.crash_shard_for_tests(shard_of_a);
    // A read that needs the dead shard fails instead of waiting for ever
    // (the ticker's next look finds the death).
    eventually("the audit fails on the dead shard", || {
        engine.audit_blocking().is_err()
    });
    // From then on the engine takes nothing: no group is half applied.
    for id in [2, 3] {
        let err = engine
            .submit_blocking(vec![transfer(id, B, A, 1_00)])
            .expect_err("stopped");
        assert!(matches!(err, SubmitError::Stopped { .. }), "{err:?}");
    }
    assert!(matches!(
        engine.shutdown_blocking(),
        Err(SubmitError::Stopped { .. })
    ));
    drop(engine);
    let engine = Engine::open(sled(dir.path())).expect("reopen");
    assert_audit_ok(&engine);
    // What was acknowledged is there; what was refused never happened.
    assert!(submit_one(&engine, transfer(1, A, B, 1_00)).duplicate);
    assert!(!submit_one(&engine, transfer(2, B, A, 1_00)).duplicate);
    assert_eq!(balance(&engine, A), yuan(100_00));
}

/// Polls until `done` holds (a liveness check with a generous bound, not
/// a timing assertion).
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..3_000 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("never happened: {what}");
}

#[test]
fn a_pending_transfer_expires_at_its_deadline_without_other_traffic() {
    let dir = tempfile::tempdir().expect("dir");
    let clock = manual_clock();
    let engine = Engine::open(sled(dir.path()).with_clock(clock.clone())).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    let pending = Transaction {
        kind: TxnKind::Pending { timeout_ms: 1 },
        ..transfer(7, A, B, 40_00)
    };
    assert!(submit_one(&engine, pending).is_committed());
    let reserved = |e: &Engine| e.account_blocking(AccountId(A)).unwrap().unwrap().reserved;
    assert_eq!(reserved(&engine), yuan(40_00));
    clock.advance_ms(2);
    // No call but reads from here on.
    eventually("the reservation is released", || {
        reserved(&engine) == yuan(0)
    });
    assert_eq!(engine.audit_blocking().expect("audit").pending_open, 0);
    drop(engine);
    // The expiry was a logged event: after a reopen it holds, and the
    // pending transfer cannot be captured.
    let engine = Engine::open(sled(dir.path()).with_clock(clock.clone())).expect("reopen");
    assert_eq!(reserved(&engine), yuan(0));
    let post = Transaction {
        kind: TxnKind::PostPending {
            pending_id: TxnId(7),
        },
        legs: Vec::new(),
        ..transfer(8, A, B, 40_00)
    };
    assert_eq!(
        submit_one(&engine, post).result,
        Err(Reject::PendingExpired)
    );
}

#[test]
fn a_store_reopened_with_another_utc_offset_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(sled(dir.path())).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    drop(engine);
    let other = Config {
        utc_offset_s: 0,
        ..sled(dir.path())
    };
    let err = Engine::open(other).err().expect("refused");
    assert!(
        matches!(
            &err,
            OpenError::SettingMismatch {
                setting: "utc_offset_s",
                ..
            }
        ),
        "{err}"
    );
    // The same setting opens it.
    let engine = Engine::open(sled(dir.path())).expect("reopen");
    assert_eq!(balance(&engine, A), yuan(100_00));
}

#[test]
fn a_store_without_its_format_record_or_its_log_is_refused_not_opened_empty() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(sled(dir.path())).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    drop(engine);
    // The log's directory gone.
    let wal = dir.path().join(LOG_DIR);
    let moved = dir.path().join("moved-away");
    std::fs::rename(&wal, &moved).expect("move");
    let err = Engine::open(sled(dir.path())).err().expect("refused");
    assert!(matches!(err, OpenError::Log { .. }), "{err}");
    std::fs::remove_dir_all(&wal).expect("the failed open's empty dir");
    std::fs::rename(&moved, &wal).expect("move back");
    // The format record gone.
    {
        use tally_storage::{Keyspace, Store, WriteBatch};
        let store = tally_storage::SledStore::open(dir.path()).expect("store");
        let mut batch = WriteBatch::new();
        batch.delete(Keyspace(0), b"format".to_vec());
        store.write(batch).expect("delete");
        store.flush().expect("flush");
    }
    let err = Engine::open(sled(dir.path())).err().expect("refused");
    assert!(matches!(err, OpenError::NotATallyStore { .. }), "{err}");
    let err = Engine::open(sled(dir.path()).read_only())
        .err()
        .expect("refused");
    assert!(matches!(err, OpenError::NotATallyStore { .. }), "{err}");
}

#[test]
fn a_blob_of_another_generation_under_the_right_name_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    // A checkpoint after every batch, each durable before the next batch:
    // one index run per batch, whatever the checkpoint thread's pace.
    let config = || Config {
        checkpoint_wait: true,
        ..sled(dir.path()).with_checkpoint_every(1)
    };
    let engine = Engine::open(config()).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    for id in 1..=4 {
        assert!(submit_one(&engine, transfer(id, A, B, 1_00)).is_committed());
    }
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    let details = dir.path().join(DETAILS_DIR);
    // An index run is two blobs: its header (`h…`, loaded at open) and its
    // pages (`r…`, checked against the header's fences when read).
    for prefix in ['h', 'r'] {
        let mut runs: Vec<_> = std::fs::read_dir(&details)
            .expect("details")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        runs.sort();
        assert!(
            runs.len() >= 2,
            "index runs of several generations: {runs:?}"
        );
        let (older, newer) = (&runs[0], &runs[runs.len() - 1]);
        let original = std::fs::read(newer).expect("newer");
        std::fs::copy(older, newer).expect("swap in the older run");
        let err = Engine::open(config()).err().expect("refused");
        assert!(matches!(err, OpenError::CorruptCheckpoint { .. }), "{err}");
        assert!(
            err.to_string().contains("index run") && err.to_string().contains("checksum"),
            "{err}"
        );
        std::fs::write(newer, original).expect("put back");
    }
    let engine = Engine::open(config()).expect("reopen");
    // Every id still answers once.
    for id in 1..=4 {
        assert!(submit_one(&engine, transfer(id, A, B, 1_00)).duplicate);
    }
}

#[test]
fn a_flipped_byte_in_sleds_files_never_opens_a_shorter_history() {
    let dir = tempfile::tempdir().expect("dir");
    let config = |d: &Path| sled(d).with_checkpoint_every(2);
    let engine = Engine::open(config(dir.path())).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    let mut acknowledged = Vec::new();
    for id in 1..=30 {
        let o = submit_one(&engine, transfer(id, A, B, 1_00));
        assert!(o.is_committed());
        acknowledged.push(o);
    }
    // Left as a crash leaves it: no shutdown, no clean-close record.
    drop(engine);
    let db = std::fs::read(dir.path().join("db")).expect("sled db");
    let (mut refused, mut opened) = (0, 0);
    for k in 0..20usize {
        let copy = tempfile::tempdir().expect("copy");
        copy_dir(dir.path(), copy.path());
        let offset = (k * 7919 + 13) % db.len();
        let mut damaged = db.clone();
        damaged[offset] ^= 0x20;
        std::fs::write(copy.path().join("db"), &damaged).expect("damage");
        let opening = std::panic::catch_unwind(|| Engine::open(config(copy.path()).read_only()));
        let Ok(result) = opening else {
            panic!("offset {offset}: opening panicked");
        };
        match result {
            Err(_) => refused += 1,
            Ok(engine) => {
                opened += 1;
                let audit = assert_audit_ok(&engine);
                assert!(audit.committed >= 32, "offset {offset}: {audit:?}");
                let rt = runtime();
                for o in &acknowledged {
                    let found = rt.block_on(engine.transaction(o.id)).expect("read");
                    let found = found.unwrap_or_else(|| panic!("offset {offset}: {:?} lost", o.id));
                    assert_eq!(Some(found.timestamp), o.timestamp);
                }
            }
        }
    }
    eprintln!("{opened} opened whole, {refused} refused");
    assert_eq!(opened + refused, 20);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[test]
fn an_engine_on_its_own_disk_without_sled_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    let disk: Arc<dyn tally_storage::Disk> =
        Arc::new(tally_storage::OsDisk::open(dir.path()).expect("disk"));
    let engine = Engine::open(Config::on_disk(disk.clone()).with_shards(2)).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    assert!(submit_one(&engine, transfer(1, A, B, 1_00)).is_committed());
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    let engine = Engine::open(Config::on_disk(disk).with_shards(2)).expect("reopen");
    assert_eq!(balance(&engine, B), yuan(101_00));
}

#[test]
fn checkpoint_blobs_no_manifest_names_are_deleted_at_open_and_nothing_named_is() {
    let dir = tempfile::tempdir().expect("dir");
    let config = || {
        sled(dir.path())
            .with_checkpoint_every(1)
            .with_hot_detail_chunks(0)
    };
    let engine = Engine::open(config()).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);
    for id in 1..=6 {
        assert!(submit_one(&engine, transfer(id, A, B, 1_00)).is_committed());
    }
    let live = engine.audit_blocking().expect("audit");
    drop(engine);
    let details = dir.path().join(DETAILS_DIR);
    let names = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(&details)
            .expect("details")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect()
    };
    let before = names();
    // What a kill between a checkpoint's blob writes and its manifest, or
    // before the old generation's deletion, leaves behind.
    let orphans = [
        "q00000000000000ff",
        "a00000000000000ff-0000",
        "i00000000000000ff-00",
        "s0001-c0000ffff",
    ];
    for orphan in orphans {
        std::fs::write(details.join(orphan), b"left by a crash").expect("orphan");
    }
    let engine = Engine::open(config()).expect("reopen");
    assert_eq!(
        names(),
        before,
        "the orphans are gone, everything named is kept"
    );
    assert_eq!(engine.audit_blocking().expect("audit"), live);
    for id in 1..=6 {
        assert!(submit_one(&engine, transfer(id, A, B, 1_00)).duplicate);
    }
}
