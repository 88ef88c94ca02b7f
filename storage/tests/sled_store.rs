//! `SledStore` on real directories: reopening, refusing directories that are
//! not ours (untouched), `InUse` in this process and across processes, and
//! atomicity and durability across a `kill -9`.
//!
//! The cross-process tests re-execute this test binary as a child, selecting
//! the same test with `--exact`; the environment variable `CHILD_ENV` tells
//! the child which role to play and where the store is. The parent and the
//! child synchronise on lines the child prints, never on time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{get, put, scan_all};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use tally_storage::{Keyspace, SledStore, StorageError, Store, WriteBatch};

const CHILD_ENV: &str = "TALLY_STORAGE_TEST_CHILD";
const MARK: &str = "TALLY_CHILD ";

/// `Some((role, dir))` when this process is a child started by `spawn_child`.
fn child_role() -> Option<(String, PathBuf)> {
    let spec = std::env::var(CHILD_ENV).ok()?;
    let (role, dir) = spec.split_once(':')?;
    Some((role.to_string(), PathBuf::from(dir)))
}

fn spawn_child(test: &str, role: &str, dir: &Path) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{role}:{}", dir.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

/// The next line the child marked, or `None` at end of output.
fn next_mark(lines: &mut std::io::Lines<BufReader<ChildStdout>>) -> Option<String> {
    for line in lines.by_ref() {
        let line = line.expect("read child stdout");
        // libtest prints "test <name> ... " without a newline first, so the
        // child's first line does not start at the beginning of a line.
        if let Some(at) = line.find(MARK) {
            return Some(line[at + MARK.len()..].to_string());
        }
    }
    None
}

fn child_stderr(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    err
}

/// Every file and directory under `dir`, with file contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, Some(std::fs::read(&path).expect("read")));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

// ------------------------------------------------------------ lifecycle

#[test]
fn reopen_after_drop_sees_flushed_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = SledStore::open(dir.path()).expect("open");
        assert_eq!(store.path(), dir.path());
        for ks in [0u8, 1, 255] {
            put(&store, ks, b"k", &[ks; 3]);
            put(&store, ks, &[0xff; 8], b"edge");
        }
        let mut batch = WriteBatch::new();
        batch.delete(Keyspace(1), b"k".to_vec());
        store.write(batch).expect("delete");
        store.flush().expect("flush");
        assert!(store.size_on_disk().expect("size") > 0);
    }
    let store = SledStore::open(dir.path()).expect("reopen");
    assert_eq!(get(&store, 0, b"k"), Some(vec![0; 3]));
    assert_eq!(get(&store, 1, b"k"), None, "the delete was flushed too");
    assert_eq!(get(&store, 255, b"k"), Some(vec![255; 3]));
    assert_eq!(
        scan_all(&store, 255, true),
        vec![
            (vec![0xff; 8], b"edge".to_vec()),
            (b"k".to_vec(), vec![255; 3])
        ]
    );
    assert_eq!(
        scan_all(&store, 1, false),
        vec![(vec![0xff; 8], b"edge".to_vec())]
    );
}

#[test]
fn a_clean_drop_flushes_what_was_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = SledStore::open(dir.path()).expect("open");
        put(&store, 3, b"unflushed", b"but dropped cleanly");
    }
    let store = SledStore::open(dir.path()).expect("reopen");
    assert_eq!(
        get(&store, 3, b"unflushed"),
        Some(b"but dropped cleanly".to_vec())
    );
}

#[test]
fn missing_and_empty_directories_get_a_new_database() {
    let root = tempfile::tempdir().expect("tempdir");
    let nested = root.path().join("a").join("b").join("store");
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    for dir in [&nested, &empty] {
        let store = SledStore::open(dir).expect("open");
        put(&store, 1, b"k", b"v");
        store.flush().expect("flush");
        // The files the "is this a sled database" check looks for.
        assert!(dir.join("conf").is_file(), "{}", dir.display());
        assert!(dir.join("db").is_file(), "{}", dir.display());
        drop(store);
        let store = SledStore::open(dir).expect("reopen");
        assert_eq!(get(&store, 1, b"k"), Some(b"v".to_vec()));
    }
}

/// Paths in a directory: `Some(contents)` for a file, `None` for a directory.
type Layout<'a> = &'a [(&'a str, Option<&'a [u8]>)];

#[test]
fn foreign_directories_are_refused_and_left_untouched() {
    // Layouts of a non-empty directory that is not a sled database.
    let layouts: [Layout<'_>; 5] = [
        &[("notes.txt", Some(b"mine"))],
        &[("sub", None), ("sub/inner.bin", Some(&[0, 1, 2]))],
        &[("db", Some(b"a db file, but no conf"))],
        &[("conf", Some(b"a conf file, but no db"))],
        &[("db", None), ("conf", None)], // right names, but directories
    ];
    for layout in layouts {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, contents) in layout {
            let path = dir.path().join(name);
            match contents {
                Some(bytes) => std::fs::write(&path, bytes).expect("write"),
                None => std::fs::create_dir(&path).expect("mkdir"),
            }
        }
        let before = snapshot(dir.path());
        let err = SledStore::open(dir.path()).expect_err("refused");
        match &err {
            StorageError::Open { path, reason } => {
                assert_eq!(path, dir.path());
                assert!(reason.contains("not a tally store"), "{reason}");
                assert!(reason.contains("refusing to touch it"), "{reason}");
            }
            other => panic!("{layout:?}: expected Open, got {other:?}"),
        }
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
        assert_eq!(snapshot(dir.path()), before, "{layout:?}: nothing touched");
    }
}

#[test]
fn a_file_where_the_directory_should_be_is_refused_and_left_untouched() {
    let root = tempfile::tempdir().expect("tempdir");
    let file = root.path().join("store");
    std::fs::write(&file, b"not a directory").expect("write");
    let err = SledStore::open(&file).expect_err("refused");
    assert!(
        matches!(&err, StorageError::Open { path, reason } if path == &file && reason.contains("not a directory")),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&file).expect("read"), b"not a directory");
    assert_eq!(std::fs::read_dir(root.path()).expect("list").count(), 1);
}

// ------------------------------------------------------------ in use

#[test]
fn a_second_open_in_this_process_is_in_use_until_the_first_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    let first = SledStore::open(dir.path()).expect("first open");
    put(&first, 1, b"k", b"v");

    let mut spellings = vec![dir.path().to_path_buf(), dir.path().join(".")];
    #[cfg(unix)]
    {
        let link = other.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
        spellings.push(link);
    }
    for spelling in &spellings {
        let err = SledStore::open(spelling).expect_err("in use");
        assert!(
            matches!(&err, StorageError::InUse { path } if path == spelling),
            "{}: {err:?}",
            spelling.display()
        );
        assert!(err.to_string().contains("in use"), "{err}");
    }

    // A different directory is not affected, and the first store still works.
    let elsewhere = SledStore::open(&other.path().join("store")).expect("another directory");
    put(&elsewhere, 1, b"k", b"elsewhere");
    put(&first, 1, b"k2", b"v2");
    assert_eq!(get(&first, 1, b"k"), Some(b"v".to_vec()));
    assert_eq!(get(&first, 1, b"k2"), Some(b"v2".to_vec()));

    drop(first);
    let again = SledStore::open(dir.path()).expect("open after the first dropped");
    assert_eq!(get(&again, 1, b"k2"), Some(b"v2".to_vec()));
    assert_eq!(get(&elsewhere, 1, b"k"), Some(b"elsewhere".to_vec()));
}

#[test]
fn reopening_in_a_tight_loop_never_reports_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..50u32 {
        let store = SledStore::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(
            get(&store, 1, b"round"),
            round.checked_sub(1).map(|r| r.to_be_bytes().to_vec())
        );
        put(&store, 1, b"round", &round.to_be_bytes());
        if round % 2 == 0 {
            store.flush().expect("flush");
        }
    }
}

/// The child holds the store open until its stdin closes; meanwhile this
/// process must get `InUse`, and afterwards open it and see the child's data.
#[test]
fn a_store_held_by_another_process_is_in_use() {
    const TEST: &str = "a_store_held_by_another_process_is_in_use";
    if let Some((role, dir)) = child_role() {
        assert_eq!(role, "hold");
        let store = SledStore::open(&dir).expect("child open");
        put(&store, 1, b"child", b"was here");
        store.flush().expect("child flush");
        println!("{MARK}opened");
        let mut sink = Vec::new();
        std::io::stdin().read_to_end(&mut sink).expect("stdin");
        drop(store);
        println!("{MARK}closed");
        return;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_child(TEST, "hold", dir.path());
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = next_mark(&mut lines);
    assert_eq!(
        first.as_deref(),
        Some("opened"),
        "child stderr: {}",
        child_stderr(&mut child)
    );

    let err = SledStore::open(dir.path()).expect_err("in use");
    assert!(
        matches!(&err, StorageError::InUse { path } if path == dir.path()),
        "{err:?}"
    );

    drop(child.stdin.take()); // let the child close and exit
    assert_eq!(next_mark(&mut lines).as_deref(), Some("closed"));
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "child: {status}, stderr: {}",
        child_stderr(&mut child)
    );

    let store = SledStore::open(dir.path()).expect("open once the child is gone");
    assert_eq!(get(&store, 1, b"child"), Some(b"was here".to_vec()));
}

/// This process holds the store; a child trying to open it must get
/// `InUse` (through sled's file lock: the child's own registry is empty),
/// and must not disturb this process's store.
#[test]
fn another_process_cannot_open_a_store_held_here() {
    const TEST: &str = "another_process_cannot_open_a_store_held_here";
    if let Some((role, dir)) = child_role() {
        assert_eq!(role, "probe");
        match SledStore::open(&dir) {
            Err(StorageError::InUse { .. }) => println!("{MARK}in-use"),
            Ok(_) => println!("{MARK}opened"),
            Err(e) => println!("{MARK}error {e}"),
        }
        return;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    put(&store, 1, b"mine", b"unflushed");
    let mut child = spawn_child(TEST, "probe", dir.path());
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let answer = next_mark(&mut lines);
    let status = child.wait().expect("wait");
    assert_eq!(
        answer.as_deref(),
        Some("in-use"),
        "child stderr: {}",
        child_stderr(&mut child)
    );
    assert!(status.success(), "child: {status}");

    assert_eq!(get(&store, 1, b"mine"), Some(b"unflushed".to_vec()));
    put(&store, 1, b"after", b"still writable");
    store.flush().expect("flush");
    assert_eq!(get(&store, 1, b"after"), Some(b"still writable".to_vec()));
}

// ------------------------------------------------------------ crash

const CRASH_KS: Keyspace = Keyspace(4);
const OPS_PER_BATCH: u8 = 8;
/// 8 ops of 4 KiB: a flush interval of 32 batches is 1 MiB, two of sled's
/// 512 KiB log segments, so sealed buffers reach the file between flushes
/// and the kill can catch unflushed batches half on disk.
const VALUE_LEN: usize = 4096;
const FLUSH_EVERY: u32 = 32;
/// Kill once the child reports this batch written: 300 batches into the
/// run, 12 past a flush (the 288 + 32 = 320 flush is still to come).
const KILL_AFTER: u32 = 300;

/// The value of op `j` of batch `i`.
fn crash_value(i: u32, j: u8) -> Vec<u8> {
    vec![(i as u8) ^ j; VALUE_LEN]
}

/// The child writes batches of 8 keys without pause, printing each, and
/// flushes every 32 batches, printing the last batch each flush covered;
/// this process kills it (SIGKILL on Unix) mid-interval. After reopening,
/// every batch must be whole or absent, and every batch a finished flush
/// covered must be there.
#[test]
fn after_a_kill_batches_are_whole_or_absent_and_flushed_ones_survive() {
    const TEST: &str = "after_a_kill_batches_are_whole_or_absent_and_flushed_ones_survive";
    if let Some((role, dir)) = child_role() {
        assert_eq!(role, "writer");
        let store = SledStore::open(&dir).expect("child open");
        for i in 0..200_000u32 {
            let mut batch = WriteBatch::new();
            for j in 0..OPS_PER_BATCH {
                batch.put(
                    CRASH_KS,
                    [&i.to_be_bytes()[..], &[j]].concat(),
                    crash_value(i, j),
                );
            }
            store.write(batch).expect("child write");
            println!("{MARK}wrote {i}");
            if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
                store.flush().expect("child flush");
                println!("{MARK}flushed {i}");
            }
        }
        return;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_child(TEST, "writer", dir.path());
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut flushed: Option<u32> = None;
    let mut killed = false;
    while let Some(mark) = next_mark(&mut lines) {
        let (what, n) = mark
            .split_once(' ')
            .unwrap_or_else(|| panic!("child line {mark:?}"));
        let n: u32 = n
            .parse()
            .unwrap_or_else(|e| panic!("child line {mark:?}: {e}"));
        match what {
            "flushed" => flushed = Some(n),
            "wrote" if n >= KILL_AFTER => {
                child.kill().expect("kill");
                killed = true;
                break;
            }
            "wrote" => {}
            _ => panic!("unexpected child line {mark:?}"),
        }
    }
    assert!(
        killed,
        "the child ended early: {}",
        child_stderr(&mut child)
    );
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the child was killed, not finished: {status}"
    );
    drop(lines);
    let flushed = flushed.expect("the child flushed before it was killed");
    assert!(
        flushed >= KILL_AFTER - FLUSH_EVERY,
        "flushed through {flushed}"
    );

    let store = SledStore::open(dir.path()).expect("reopen after the kill");
    let mut batches: BTreeMap<u32, Vec<(u8, Vec<u8>)>> = BTreeMap::new();
    for (key, value) in scan_all(&store, CRASH_KS.0, false) {
        assert_eq!(key.len(), 5, "{key:?}");
        let i = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
        batches.entry(i).or_default().push((key[4], value));
    }
    for (i, ops) in &batches {
        assert_eq!(ops.len(), usize::from(OPS_PER_BATCH), "batch {i} is torn");
        for (j, value) in ops {
            assert_eq!(value, &crash_value(*i, *j), "batch {i} op {j}");
        }
    }
    for i in 0..=flushed {
        assert!(
            batches.contains_key(&i),
            "batch {i} was flushed (through {flushed}) but is lost"
        );
    }
}

/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, fsyncs it and
/// renames it; its open reads the newest `snap.*` file, `.generating` ones
/// included, and refuses the store as corrupt when that is one a kill cut
/// short (empty, or without its checksum). `tally-loadtest crash` met this
/// after 465 kills. Such a file is an unfinished snapshot: the store opens
/// from the one before it and sled's log, with everything flushed.
#[test]
fn an_unfinished_sled_snapshot_left_by_a_kill_does_not_make_the_store_unopenable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    put(&store, 1, b"k", b"v");
    store.flush().expect("flush");
    drop(store);
    // Sorts after any real snapshot (hex digits of a larger lsn).
    let unfinished = dir.path().join("snap.FFFFFFFFFFFFFFFF.generating");
    for cut_short in [Vec::new(), vec![7u8; 40]] {
        std::fs::write(&unfinished, &cut_short).expect("write");
        let store = SledStore::open(dir.path()).expect("reopen past the unfinished snapshot");
        assert_eq!(get(&store, 1, b"k"), Some(b"v".to_vec()));
        drop(store);
        assert!(!unfinished.exists(), "the unfinished snapshot is cleared");
    }
}
