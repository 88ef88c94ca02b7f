//! `SledStore`: the embedded default, one sled 0.34 database in a directory.
//!
//! Layout: keyspaces are a one-byte key prefix in sled's default tree, so a
//! `WriteBatch` across keyspaces is one atomic `apply_batch`.
//!
//! Guarantees:
//! - `write` is atomic (sled batch); reads see it at once.
//! - `flush` returns after sled has written and fsynced everything before
//!   it. Sled's own periodic flusher is off (`flush_every_ms(None)`): the
//!   engine alone decides when data becomes durable. A clean drop also
//!   flushes (sled does that in its destructor).
//! - `open` refuses, untouched, a non-empty directory that holds no sled
//!   database, and gives `InUse` for a directory another store holds: in
//!   another process through sled's exclusive `flock` on the `db` file (Linux,
//!   macOS, Windows), in this process through a registry of open directories.
//! - No panics: every sled error becomes a [`StorageError`].

use crate::memory::bounds_empty;
use crate::{KeyValue, Keyspace, Scan, StorageError, Store, WriteBatch};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Files sled 0.34 always creates in its directory; both present means "this
/// is a sled database" (it also creates a `blobs` directory and `snap.*`).
const SLED_FILES: [&str; 2] = ["conf", "db"];

/// Directories opened by a `SledStore` in this process, by canonical path:
/// `true` while open, `false` once closed. sled's `flock` also catches a
/// second open in the same process on Linux, but this registry makes it
/// immediate and platform-independent, and remembers which directories this
/// process closed (see [`open_sled`]).
static OPEN_DIRS: Mutex<BTreeMap<PathBuf, bool>> = Mutex::new(BTreeMap::new());

/// Longest single wait when retrying the lock of a directory this process
/// itself just closed (total wait stays under a quarter second).
const MAX_LOCK_BACKOFF: Duration = Duration::from_millis(128);

/// `fsync`s sled's files in `dir` (not the engine's own subdirectories,
/// which sync themselves), `blobs/` and the directories.
fn sync_tree(dir: &Path) -> Result<(), StorageError> {
    let fail = |path: &Path, e: std::io::Error| match e.raw_os_error() {
        Some(28) => StorageError::NoSpace,
        _ => StorageError::Flush(format!("{}: {e}", path.display())),
    };
    let sync = |path: &Path| std::fs::File::open(path).and_then(|f| f.sync_all());
    for sub in [dir.to_path_buf(), dir.join("blobs")] {
        let entries = match std::fs::read_dir(&sub) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail(&sub, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| fail(&sub, e))?;
            let path = entry.path();
            if entry.file_type().map_err(|e| fail(&path, e))?.is_file() {
                match sync(&path) {
                    Ok(()) => {}
                    // Removed by sled meanwhile (an old snapshot).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(fail(&path, e)),
                }
            }
        }
        sync(&sub).map_err(|e| fail(&sub, e))?;
    }
    Ok(())
}

/// A [`Store`] backed by sled. See the module docs for its guarantees.
pub struct SledStore {
    // Field order matters: the database closes (and flushes) before the
    // directory is released in the registry.
    db: sled::Db,
    path: PathBuf,
    _claim: Claim,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens the sled database in `path`, creating the directory (and its
    /// parents) when missing. An empty directory gets a new database.
    ///
    /// Errors: `Open` when `path` is not a directory, cannot be created or
    /// read, or is non-empty without sled's `conf` and `db` files (nothing
    /// in it is touched); `InUse` when another `SledStore`, in this process
    /// or another, holds the directory; `Open` with sled's reason for
    /// anything else (corrupt or incompatible database, I/O).
    pub fn open(path: &Path) -> Result<SledStore, StorageError> {
        let open_err = |reason: String| StorageError::Open {
            path: path.to_path_buf(),
            reason,
        };
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_dir() => {
                return Err(open_err("it exists and is not a directory".into()));
            }
            Ok(_) => {
                let mut entries = std::fs::read_dir(path)
                    .map_err(|e| open_err(format!("cannot list the directory: {e}")))?;
                let empty = entries.next().is_none();
                let is_sled = SLED_FILES.iter().all(|f| path.join(f).is_file());
                if !empty && !is_sled {
                    return Err(open_err(
                        "the directory is not empty and is not a tally store (no sled database \
                         files); refusing to touch it"
                            .into(),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path)
                    .map_err(|e| open_err(format!("cannot create the directory: {e}")))?;
            }
            Err(e) => return Err(open_err(format!("cannot inspect the path: {e}"))),
        }
        let canonical = path
            .canonicalize()
            .map_err(|e| open_err(format!("cannot resolve the path: {e}")))?;
        let (claim, closed_here_before) = Claim::take(canonical).ok_or(StorageError::InUse {
            path: path.to_path_buf(),
        })?;
        let db = open_sled(&claim.dir, closed_here_before).map_err(|e| map_open_error(path, &e))?;
        Ok(SledStore {
            db,
            path: path.to_path_buf(),
            _claim: claim,
        })
    }

    /// The directory as given to [`SledStore::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// This process's hold on a directory in [`OPEN_DIRS`]; released on drop.
struct Claim {
    dir: PathBuf,
}

impl Claim {
    /// `None` when the directory is already open in this process; otherwise
    /// the claim and whether this process had it open before.
    fn take(dir: PathBuf) -> Option<(Claim, bool)> {
        let mut open = OPEN_DIRS.lock();
        let before = open.insert(dir.clone(), true);
        match before {
            Some(true) => None,
            Some(false) => Some((Claim { dir }, true)),
            None => Some((Claim { dir }, false)),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        OPEN_DIRS.lock().insert(self.dir.clone(), false);
    }
}

fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
}

/// Opens sled in `dir`. When this process itself closed `dir` before, a lock
/// failure is retried briefly: after a `Db` drops, one of sled's I/O worker
/// threads can hold the last reference to the locked file for a moment after
/// the final flush has been acknowledged. A directory this process never
/// opened is never retried: its lock belongs to someone else.
///
/// A store that sled refuses as corrupt while an unfinished snapshot lies
/// in it (see [`clear_unfinished_snapshots`]) is opened once more without it.
fn open_sled(dir: &Path, closed_here_before: bool) -> sled::Result<sled::Db> {
    let config = sled_config(dir);
    let mut backoff = Duration::from_millis(1);
    let mut cleared = false;
    loop {
        match config.open() {
            Err(e) if closed_here_before && is_lock_error(&e) && backoff <= MAX_LOCK_BACKOFF => {
                std::thread::sleep(backoff);
                backoff *= 2;
            }
            Err(sled::Error::Corruption { .. }) if !cleared && clear_unfinished_snapshots(dir) => {
                cleared = true;
            }
            result => return result,
        }
    }
}

/// sled 0.34 writes a snapshot (a cache of its page table; the log is the
/// data) to `snap.<lsn>.generating`, fsyncs it and only then renames it to
/// `snap.<lsn>`, deleting older ones after the rename. Its open reads the
/// newest `snap.*` file, `.generating` ones included, and a kill -9 before
/// the rename leaves one cut short: sled then refuses the whole store as
/// corrupt. The file is only ever an unfinished snapshot, so it is removed,
/// and sled opens from the snapshot before it and its log.
///
/// Called only after sled refused the store, so no process held its lock:
/// nobody is writing that snapshot. True when a file was removed.
fn clear_unfinished_snapshots(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.")
            && name.ends_with(".generating")
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed = true;
        }
    }
    removed
}

/// sled 0.34 reports a held lock as `Io(kind: Other, "could not acquire lock
/// on \"…/db\": Os { code: 11, kind: WouldBlock, … }")`.
fn is_lock_error(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

/// ENOSPC, directly or as sled's clone of a stored error (which keeps only
/// the kind). `ErrorKind::StorageFull` is compared by name: it is newer than
/// the workspace's minimum Rust.
fn is_no_space(e: &sled::Error) -> bool {
    #[cfg(unix)]
    const NO_SPACE_CODES: &[i32] = &[28]; // ENOSPC
    #[cfg(windows)]
    const NO_SPACE_CODES: &[i32] = &[39, 112]; // ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL
    #[cfg(not(any(unix, windows)))]
    const NO_SPACE_CODES: &[i32] = &[];
    match e {
        sled::Error::Io(io) => {
            io.raw_os_error()
                .is_some_and(|c| NO_SPACE_CODES.contains(&c))
                || format!("{:?}", io.kind()) == "StorageFull"
        }
        _ => false,
    }
}

/// sled's message, without the empty backtrace its corruption error prints.
fn describe(e: &sled::Error) -> String {
    match e {
        sled::Error::Corruption { at, .. } => match at {
            Some(at) => format!("corrupt data in the sled log at {at:?}"),
            None => "corrupt data in the sled log".into(),
        },
        other => other.to_string(),
    }
}

fn map_open_error(path: &Path, e: &sled::Error) -> StorageError {
    if is_lock_error(e) {
        return StorageError::InUse {
            path: path.to_path_buf(),
        };
    }
    StorageError::Open {
        path: path.to_path_buf(),
        reason: describe(e),
    }
}

fn map_write_error(e: &sled::Error) -> StorageError {
    if is_no_space(e) {
        StorageError::NoSpace
    } else {
        StorageError::Write(describe(e))
    }
}

fn map_flush_error(e: &sled::Error) -> StorageError {
    if is_no_space(e) {
        StorageError::NoSpace
    } else {
        StorageError::Flush(describe(e))
    }
}

fn map_read_error(e: &sled::Error) -> StorageError {
    StorageError::Read(describe(e))
}

fn prefixed(keyspace: Keyspace, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(keyspace.0);
    k.extend_from_slice(key);
    k
}

/// The scan's bounds on sled's prefixed keys. An unbounded start is the
/// keyspace's first possible key (the bare prefix); an unbounded end is the
/// next keyspace's prefix, excluded, except for keyspace 255, the last one,
/// which runs to the end of the tree.
fn sled_bounds(scan: &Scan<'_>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let ks = scan.keyspace;
    let start = match scan.start {
        Bound::Included(k) => Bound::Included(prefixed(ks, k)),
        Bound::Excluded(k) => Bound::Excluded(prefixed(ks, k)),
        Bound::Unbounded => Bound::Included(vec![ks.0]),
    };
    let end = match scan.end {
        Bound::Included(k) => Bound::Included(prefixed(ks, k)),
        Bound::Excluded(k) => Bound::Excluded(prefixed(ks, k)),
        Bound::Unbounded => match ks.0.checked_add(1) {
            Some(next) => Bound::Excluded(vec![next]),
            None => Bound::Unbounded,
        },
    };
    (start, end)
}

impl Store for SledStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut sled_batch = sled::Batch::default();
        for op in batch.into_ops() {
            let key = prefixed(op.keyspace, &op.key);
            match op.value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        self.db
            .apply_batch(sled_batch)
            .map_err(|e| map_write_error(&e))
    }

    /// sled's own flush ends in `sync_file_range` on Linux, which neither
    /// flushes the device cache nor the file's metadata, and sled never
    /// syncs its `conf`, its `blobs/` files or its directories. So after
    /// it, every file and directory of the database is `fsync`ed here.
    fn flush(&self) -> Result<(), StorageError> {
        self.db
            .flush()
            .map(|_bytes| ())
            .map_err(|e| map_flush_error(&e))?;
        sync_tree(&self.path)
    }

    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db
            .get(prefixed(keyspace, key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| map_read_error(&e))
    }

    fn scan(&self, scan: Scan<'_>) -> Result<Vec<KeyValue>, StorageError> {
        if scan.limit == 0 || bounds_empty(&scan) {
            return Ok(Vec::new());
        }
        let range = self.db.range::<Vec<u8>, _>(sled_bounds(&scan));
        let pairs: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if scan.reverse {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
        let mut out = Vec::new();
        for pair in pairs.take(scan.limit) {
            let (key, value) = pair.map_err(|e| map_read_error(&e))?;
            match key.split_first() {
                Some((&ks, key)) if ks == scan.keyspace.0 => {
                    out.push((key.to_vec(), value.to_vec()))
                }
                _ => {
                    return Err(StorageError::Read(format!(
                        "sled returned key {key:?} outside keyspace {}",
                        scan.keyspace.0
                    )))
                }
            }
        }
        Ok(out)
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.db.size_on_disk().map_err(|e| map_read_error(&e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use Bound::{Excluded, Included, Unbounded};

    fn scan<'a>(ks: u8, start: Bound<&'a [u8]>, end: Bound<&'a [u8]>) -> Scan<'a> {
        Scan {
            keyspace: Keyspace(ks),
            start,
            end,
            reverse: false,
            limit: usize::MAX,
        }
    }

    type SledBound = Bound<Vec<u8>>;

    #[test]
    fn bounds_are_prefixed_and_unbounded_ends_stay_inside_the_keyspace() {
        let k: &[u8] = b"k";
        let cases: [(Scan<'_>, SledBound, SledBound); 7] = [
            (
                scan(0, Unbounded, Unbounded),
                Included(vec![0]),
                Excluded(vec![1]),
            ),
            (
                scan(7, Unbounded, Unbounded),
                Included(vec![7]),
                Excluded(vec![8]),
            ),
            (
                scan(254, Unbounded, Unbounded),
                Included(vec![254]),
                Excluded(vec![255]),
            ),
            (
                scan(255, Unbounded, Unbounded),
                Included(vec![255]),
                Unbounded,
            ),
            (
                scan(255, Included(k), Excluded(k)),
                Included(vec![255, b'k']),
                Excluded(vec![255, b'k']),
            ),
            (
                scan(3, Excluded(k), Included(k)),
                Excluded(vec![3, b'k']),
                Included(vec![3, b'k']),
            ),
            (
                scan(3, Included(&[]), Unbounded),
                Included(vec![3]),
                Excluded(vec![4]),
            ),
        ];
        for (request, start, end) in cases {
            assert_eq!(sled_bounds(&request), (start, end), "{request:?}");
        }
    }

    #[test]
    fn sled_itself_refuses_a_second_open_with_a_lock_error_mapped_to_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("first open");
        // Straight to sled, past the in-process registry: what does sled say?
        let err = sled_config(dir.path()).open().expect_err("sled refuses");
        let text = err.to_string();
        assert!(
            matches!(&err, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::Other),
            "{err:?}"
        );
        assert!(text.contains("could not acquire lock"), "{text}");
        assert!(text.contains("WouldBlock"), "{text}");
        assert!(is_lock_error(&err));
        assert!(matches!(
            map_open_error(dir.path(), &err),
            StorageError::InUse { path } if path == dir.path()
        ));
        // And the refused open did not disturb the first.
        let mut batch = WriteBatch::new();
        batch.put(Keyspace(1), b"k".to_vec(), b"v".to_vec());
        store.write(batch).expect("write");
        assert_eq!(
            store.get(Keyspace(1), b"k").expect("get"),
            Some(b"v".to_vec())
        );
    }

    #[test]
    fn sled_errors_map_to_clear_storage_errors() {
        use std::io;
        let enospc = || sled::Error::Io(io::Error::from_raw_os_error(28));
        let other_io = || sled::Error::Io(io::Error::other("disk on fire"));
        let corrupt = || sled::Error::Corruption { at: None, bt: () };

        #[cfg(unix)]
        {
            assert!(matches!(map_write_error(&enospc()), StorageError::NoSpace));
            assert!(matches!(map_flush_error(&enospc()), StorageError::NoSpace));
            // sled hands out clones of a stored I/O error: only the kind survives.
            let cloned = enospc().clone();
            assert!(cloned.to_string().contains("code: 28"), "{cloned}");
            assert!(
                matches!(map_write_error(&cloned), StorageError::NoSpace),
                "{cloned:?}"
            );
        }
        assert!(
            matches!(map_write_error(&other_io()), StorageError::Write(m) if m.contains("disk on fire"))
        );
        assert!(
            matches!(map_flush_error(&other_io()), StorageError::Flush(m) if m.contains("disk on fire"))
        );
        assert!(
            matches!(map_read_error(&corrupt()), StorageError::Read(m) if m == "corrupt data in the sled log")
        );
        let path = Path::new("/x");
        assert!(matches!(
            map_open_error(path, &corrupt()),
            StorageError::Open { reason, .. } if reason.contains("corrupt") && !reason.contains("backtrace")
        ));
        assert!(matches!(
            map_open_error(path, &other_io()),
            StorageError::Open { .. }
        ));
        let unsupported = sled::Error::Unsupported("segment size changed".into());
        assert!(matches!(
            map_open_error(path, &unsupported),
            StorageError::Open { reason, .. } if reason.contains("segment size changed")
        ));
    }

    #[test]
    fn the_registry_releases_a_directory_when_its_store_drops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let canonical = dir.path().canonicalize().expect("canonical");
        let store = SledStore::open(dir.path()).expect("open");
        assert_eq!(OPEN_DIRS.lock().get(&canonical), Some(&true));
        drop(store);
        assert_eq!(OPEN_DIRS.lock().get(&canonical), Some(&false));
        let again = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(OPEN_DIRS.lock().get(&canonical), Some(&true));
        assert_eq!(again.path(), dir.path());
    }
}
