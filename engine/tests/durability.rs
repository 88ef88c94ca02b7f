//! Durability on the embedded sled store, with real files on disk: restart,
//! refusing bad directories, and kill -9 at arbitrary points.
//!
//! The crash test re-executes this test binary as a child (as sled's own
//! tests do): the child posts transfers and prints each acknowledged id; the
//! parent kills it with SIGKILL after a seeded number of acknowledgements,
//! reopens the store and checks that every acknowledged transaction is
//! there, committed, and that the invariants hold.
// Amounts are written as yuan_fen (100_00 is 100.00 yuan).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use tally_engine::*;

const BANK: u64 = 1;
const CUSTOMERS: std::ops::Range<u64> = 10..30;
const CHILD_DIR: &str = "TALLY_CRASH_CHILD_DIR";
const CHILD_ROUND: &str = "TALLY_CRASH_CHILD_ROUND";

fn sled(dir: &Path) -> Config {
    Config::sled(dir).with_shards(2)
}

#[test]
fn restart_on_disk_gives_the_same_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(sled(dir.path())).expect("open");
    open_funded(&engine, BANK, &CUSTOMERS.collect::<Vec<_>>(), 100_00);
    let nth = |i: u128| {
        let from = CUSTOMERS.start + (i as u64 % 20);
        let to = CUSTOMERS.start + ((i as u64 * 7 + 1) % 20);
        transfer(1_000 + i, from, to, 3_00)
    };
    let first = submit_one(&engine, nth(0));
    assert!(first.is_committed(), "{first:?}");
    for i in 1..200u128 {
        submit_one(&engine, nth(i));
    }
    let before = engine.audit_blocking().expect("audit");
    let account = engine
        .account_blocking(AccountId(CUSTOMERS.start))
        .expect("read");
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);

    let engine = Engine::open(sled(dir.path())).expect("reopen");
    assert_eq!(engine.audit_blocking().expect("audit"), before);
    assert_eq!(
        engine
            .account_blocking(AccountId(CUSTOMERS.start))
            .expect("read"),
        account
    );
    let again = submit_one(&engine, nth(0));
    assert!(again.duplicate, "idempotency survives a restart: {again:?}");
    assert_eq!(
        (again.timestamp, &again.result),
        (first.timestamp, &first.result)
    );
}

#[test]
fn dropping_without_shutdown_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(sled(dir.path())).expect("open");
    open_funded(&engine, BANK, &[10, 11], 100_00);
    assert!(submit_one(&engine, transfer(5, 10, 11, 7_00)).is_committed());
    drop(engine);
    let engine = Engine::open(sled(dir.path())).expect("reopen");
    assert_eq!(balance(&engine, 11), yuan(107_00));
}

#[test]
fn bad_directories_are_refused_and_left_untouched() {
    // Not a tally store: a directory with someone else's files.
    let foreign = tempfile::tempdir().expect("tempdir");
    std::fs::write(foreign.path().join("notes.txt"), b"mine").expect("write");
    let err = Engine::open(sled(foreign.path())).err().expect("refused");
    assert!(err.to_string().contains("not a tally store"), "{err}");
    assert_eq!(
        std::fs::read(foreign.path().join("notes.txt")).expect("read"),
        b"mine"
    );
    assert_eq!(std::fs::read_dir(foreign.path()).expect("list").count(), 1);

    // In use: a second engine on the same directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Engine::open(sled(dir.path())).expect("open");
    let second = Engine::open(sled(dir.path())).err().expect("in use");
    assert!(
        matches!(
            second,
            OpenError::Storage(tally_storage::StorageError::InUse { .. })
        ),
        "{second}"
    );
    drop(first);

    // Another shard count.
    let err = Engine::open(sled(dir.path()).with_shards(3))
        .err()
        .expect("mismatch");
    assert!(
        matches!(
            err,
            OpenError::ShardCountMismatch {
                stored: 2,
                configured: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "names the path: {err}"
    );
}

/// The only log segment of a store that checkpoints never (so every record
/// stays), and the byte offsets of its records.
fn log_segment(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let wal = dir.join(LOG_DIR);
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .collect();
    segments.sort();
    let path = segments.pop().expect("a segment");
    let bytes = std::fs::read(&path).expect("read segment");
    (path, bytes)
}

/// Offsets of the records in a segment (header: magic, u32 length, ...).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + 64 <= bytes.len() {
        offsets.push(at);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4")) as usize;
        at += 64 + len + 32;
    }
    offsets
}

#[test]
fn damage_in_the_middle_of_the_log_is_refused_not_replayed_as_a_shorter_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No checkpoint, so that the records stay in the log.
    let engine = Engine::open(sled(dir.path()).with_checkpoint_every(0)).expect("open");
    open_funded(&engine, BANK, &[10, 11], 100_00);
    for id in 1..=5 {
        assert!(submit_one(&engine, transfer(id, 10, 11, 1_00)).is_committed());
    }
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    let (path, bytes) = log_segment(dir.path());
    let offsets = record_offsets(&bytes);
    assert!(offsets.len() >= 6, "one record per call: {offsets:?}");
    let mut damaged = bytes.clone();
    damaged[offsets[2] + 70] ^= 0x01;
    std::fs::write(&path, &damaged).expect("damage");
    let err = Engine::open(sled(dir.path())).err().expect("refused");
    assert!(
        matches!(
            &err,
            OpenError::Log {
                error: tally_storage::WalError::Damaged { batch: 2, .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("checksum"), "{err}");
    // A record cut out of the middle breaks the hash chain.
    let mut cut = bytes[..offsets[2]].to_vec();
    cut.extend_from_slice(&bytes[offsets[3]..]);
    std::fs::write(&path, &cut).expect("cut");
    let err = Engine::open(sled(dir.path())).err().expect("refused");
    assert!(err.to_string().contains("batch 3, expected 2"), "{err}");
    // The last record of a cleanly closed store was acknowledged: damaged,
    // it is not taken for a torn tail.
    let mut last = bytes.clone();
    let end = *offsets.last().expect("last");
    last[end + 70] ^= 0x01;
    std::fs::write(&path, &last).expect("damage last");
    let err = Engine::open(sled(dir.path())).err().expect("refused");
    assert!(
        matches!(
            &err,
            OpenError::Log {
                error: tally_storage::WalError::Missing { .. },
                ..
            }
        ),
        "{err}"
    );
    // Put back whole, the store opens with everything.
    std::fs::write(&path, &bytes).expect("restore");
    let engine = Engine::open(sled(dir.path())).expect("reopen");
    assert_eq!(balance(&engine, 11), yuan(105_00));
}

#[test]
fn an_existing_store_can_be_opened_with_its_own_shard_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(sled(dir.path())).expect("open");
    open_funded(&engine, BANK, &[10, 11], 100_00);
    assert!(submit_one(&engine, transfer(5, 10, 11, 7_00)).is_committed());
    let digest = engine.audit_blocking().expect("audit").state_digest;
    let size = engine.size_on_disk().expect("size");
    assert!(size > 0, "a sled store with data occupies disk: {size}");
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);

    // Configured with 5 shards, but told to use the store's own count (2).
    let engine =
        Engine::open(sled(dir.path()).with_shards(5).with_stored_shards()).expect("reopen");
    assert_eq!(engine.shards(), 2);
    assert_eq!(engine.audit_blocking().expect("audit").state_digest, digest);
    assert_eq!(balance(&engine, 11), yuan(107_00));
    drop(engine);

    // A new store takes the configured count.
    let fresh = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(sled(fresh.path()).with_shards(3).with_stored_shards()).expect("new");
    assert_eq!(engine.shards(), 3);
    assert_eq!(
        Engine::open(Config::memory())
            .expect("memory")
            .size_on_disk()
            .expect("size"),
        0
    );
}

/// The child's side: post until killed, printing every acknowledged id.
fn child(dir: &str, round: u64) -> ! {
    // Frequent checkpoints, so that kills land before, during and after
    // them, and reopening loads one and replays the log after it.
    let config = sled(Path::new(dir))
        .with_checkpoint_every(3 + round % 5)
        .with_hot_detail_chunks(0);
    let engine = Engine::open(config).expect("child open");
    let customers: Vec<u64> = CUSTOMERS.collect();
    open_funded(&engine, BANK, &customers, 0);
    let fund: Vec<Transaction> = customers
        .iter()
        .map(|&c| transfer(u128::from(c), BANK, c, 1_000_00))
        .collect();
    engine.submit_blocking(fund).expect("fund");
    let mut rng = ChaCha8Rng::seed_from_u64(round);
    let mut out = std::io::stdout().lock();
    for call in 0..100_000u128 {
        let txns: Vec<Transaction> = (0..rng.gen_range(1..40u128))
            .map(|i| {
                let id = u128::from(round + 1) << 64 | call << 16 | i;
                let from = customers[rng.gen_range(0..customers.len())];
                let to = customers[rng.gen_range(0..customers.len())];
                transfer(id, from, to, rng.gen_range(1..50_00))
            })
            .collect();
        for o in engine.submit_blocking(txns).expect("submit") {
            if o.is_committed() {
                writeln!(out, "ACK {}", o.id.0).expect("stdout");
            }
        }
        out.flush().expect("flush");
    }
    std::process::exit(0)
}

#[test]
fn kill_9_anywhere_loses_nothing_acknowledged() {
    if let (Ok(dir), Ok(round)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_ROUND)) {
        child(&dir, round.parse().expect("round"));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // CI runs 6 rounds of one seed; a soak run sets more of another.
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(env("TALLY_CRASH_SEED", 0x7a11));
    let mut acknowledged: Vec<u128> = Vec::new();
    for round in 0..env("TALLY_CRASH_ROUNDS", 6) {
        let kill_after = rng.gen_range(1..3_000usize);
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "kill_9_anywhere_loses_nothing_acknowledged",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let mut seen = 0usize;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("ACK ") {
                acknowledged.push(id.parse().expect("id"));
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        assert!(seen > 0, "round {round}: the child acknowledged nothing");

        let engine = Engine::open(sled(dir.path())).expect("reopen after kill");
        let audit = assert_audit_ok(&engine);
        let rt = runtime();
        for &id in &acknowledged {
            let txn = rt.block_on(engine.transaction(TxnId(id))).expect("read");
            let txn = txn.unwrap_or_else(|| panic!("round {round}: acknowledged {id} lost"));
            assert_eq!(txn.result, Ok(()), "round {round}: {id}");
            assert_eq!(txn.details.len(), 2, "round {round}: {id} is partial");
        }
        assert!(audit.committed as usize >= acknowledged.len());
        engine.shutdown_blocking().expect("shutdown");
    }
}

#[test]
fn metadata_records_survive_restarts_by_replay_and_by_checkpoint() {
    let rt = runtime();
    for every in [0u64, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = || sled(dir.path()).with_checkpoint_every(every);
        let engine = Engine::open(config()).expect("open");
        let put = |engine: &Engine, records: Vec<(Vec<u8>, Vec<u8>)>| {
            rt.block_on(engine.put_records(records)).expect("put")
        };
        let results = put(
            &engine,
            vec![
                (b"member/2".to_vec(), b"bob".to_vec()),
                (b"member/1".to_vec(), b"alice".to_vec()),
                (b"other/1".to_vec(), b"x".to_vec()),
                (Vec::new(), b"no key".to_vec()),
                (vec![b'k'; RECORD_KEY_MAX + 1], Vec::new()),
                (b"big".to_vec(), vec![0; RECORD_VALUE_MAX + 1]),
            ],
        );
        assert!(results[..3].iter().all(Result::is_ok), "{results:?}");
        for bad in &results[3..] {
            assert!(
                matches!(bad, Err(AccountError::RecordSize { .. })),
                "{bad:?}"
            );
        }
        // A later write of a key replaces it.
        assert!(put(&engine, vec![(b"member/2".to_vec(), b"bob v2".to_vec())])[0].is_ok());
        for _ in 0..3 {
            // Batches, so that a checkpoint (every 2) falls in between.
            open_funded(&engine, BANK, &[10, 11], 0);
        }
        drop(engine);

        let engine = Engine::open(config()).expect("reopen");
        let members = rt
            .block_on(engine.records(b"member/".to_vec(), None, 10))
            .expect("records");
        assert_eq!(
            members,
            vec![
                (b"member/1".to_vec(), b"alice".to_vec()),
                (b"member/2".to_vec(), b"bob v2".to_vec()),
            ],
            "checkpoint every {every}"
        );
        let after_first = rt
            .block_on(engine.records(b"member/".to_vec(), Some(b"member/1".to_vec()), 10))
            .expect("records");
        assert_eq!(after_first, members[1..]);
        let none = rt
            .block_on(engine.records(b"big".to_vec(), None, 10))
            .expect("records");
        assert!(none.is_empty(), "a refused record was not kept");
    }
}

#[test]
fn metadata_records_are_bounded_in_total_bytes() {
    let rt = runtime();
    let config = Config {
        records_bytes_max: 100,
        ..Config::memory()
    };
    let engine = Engine::open(config).expect("open");
    let put = |key: &[u8], len: usize| {
        rt.block_on(engine.put_records(vec![(key.to_vec(), vec![7; len])]))
            .expect("put")
            .remove(0)
    };
    assert_eq!(put(b"a", 59), Ok(())); // 60 bytes
    assert_eq!(put(b"b", 40), Err(AccountError::RecordsFull { max: 100 })); // 101
    assert_eq!(put(b"b", 39), Ok(())); // 100: at the bound
                                       // Replacing a record counts its new size, not both.
    assert_eq!(put(b"a", 10), Ok(())); // 11 + 40 = 51
    assert_eq!(put(b"c", 48), Ok(())); // 100
    assert_eq!(put(b"d", 0), Err(AccountError::RecordsFull { max: 100 }));
    let all = rt
        .block_on(engine.records(Vec::new(), None, 10))
        .expect("records");
    let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, [b"a".as_slice(), b"b", b"c"]);
}
