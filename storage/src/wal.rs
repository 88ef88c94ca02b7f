//! `Wal`: the engine's write-ahead command log. One record per batch,
//! appended to segment files on a [`Disk`] and synced (`fdatasync`) before
//! the batch is acknowledged: group commit, one sync per batch.
//!
//! Record layout (little-endian), [`HEADER_BYTES`] + payload + 32:
//!
//! ```text
//!  0  magic        "TWAL"
//!  4  payload len  u32
//!  8  batch        u64   (consecutive from 0, one per record)
//! 16  store id     [u8; 16]  (the store this log belongs to)
//! 32  prev         [u8; 32]  (BLAKE3 of the record before: the chain)
//! 64  payload
//!  …  hash         [u8; 32]  BLAKE3 of everything above
//! ```
//!
//! The hash is both the checksum and the link of a hash chain: a record
//! altered, removed, reordered or copied from another store breaks the
//! chain. The hash of the newest record is the log's *head*; checkpoints
//! record it, `verify` prints it.
//!
//! Recovery ([`Wal::open`]) reads every segment in order and checks each
//! record. The one thing a crash can legitimately leave is a torn *last*
//! record (written, not synced, hence never acknowledged): when the first
//! bad record of the last segment has nothing valid after it, it is cut
//! off and reported ([`TornTail`]). Anything else — a bad record with a
//! valid one after it, a bad record in an earlier segment, a gap in the
//! batch numbers, a broken chain, a foreign store id, a log that ends
//! before a batch the caller knows was acknowledged — is refused with
//! [`WalError`], never opened as a shorter history.
//!
//! Fail-stop: after a failed append or sync the log takes no more writes;
//! the outcome of that record is unknown until the next open.

use crate::disk::Disk;
use crate::StorageError;
use std::sync::Arc;

pub const HEADER_BYTES: usize = 64;
pub const HASH_BYTES: usize = 32;
const MAGIC: &[u8; 4] = b"TWAL";
/// Largest payload a record may carry (a batch is far smaller).
pub const PAYLOAD_MAX: usize = 256 << 20;
/// A segment is closed once it holds this many bytes (default).
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

pub type Hash = [u8; HASH_BYTES];
pub type StoreId = [u8; 16];

/// The `prev` of batch 0: derived from the store id, so even the first
/// record is bound to its store.
pub fn genesis(store: &StoreId) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"tally-wal-genesis");
    h.update(store);
    *h.finalize().as_bytes()
}

fn segment_name(first_batch: u64) -> String {
    format!("wal-{first_batch:020}")
}

fn segment_first(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?.parse().ok()
}

/// Why a log could not be opened. Every variant names where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalError {
    #[error("log segment {segment} at byte {offset} (batch {batch}): {reason}")]
    Damaged {
        segment: String,
        offset: u64,
        batch: u64,
        reason: String,
    },
    #[error("the log is missing batches {from}..{to}: {reason}")]
    Missing { from: u64, to: u64, reason: String },
    #[error("log storage: {0}")]
    Storage(String),
    #[error("replay of batch {batch} failed: {reason}")]
    Replay { batch: u64, reason: String },
}

/// A torn last record that open cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: String,
    pub offset: u64,
    /// The batch number the torn record would have had.
    pub batch: u64,
    pub bytes: u64,
}

/// What open found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalReport {
    pub segments: usize,
    /// Records handed to the caller (batches at or after `from`).
    pub replayed: u64,
    pub torn_tail: Option<TornTail>,
}

/// What the caller knows about the log before opening it.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// Replay starts here (the checkpoint's next batch, or 0).
    pub from: u64,
    /// The chain head at `from` (hash of batch `from - 1`), when `from > 0`.
    pub head_at_from: Option<Hash>,
    /// Batches below this were acknowledged: the log must reach it.
    pub acknowledged_below: u64,
    /// Report a torn tail but do not cut it off.
    pub read_only: bool,
}

struct Segment {
    name: String,
    first: u64,
    len: u64,
}

/// The sync of a deferred append: `fdatasync` of the segment it went to.
/// Runs on any thread (the sequencer's syncer overlaps it with settling
/// the batch before).
#[derive(Clone)]
pub struct SyncJob {
    disk: Arc<dyn Disk>,
    name: String,
}

impl std::fmt::Debug for SyncJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncJob").field("name", &self.name).finish()
    }
}

impl SyncJob {
    /// Makes the segment's content durable.
    pub fn run(&self) -> Result<(), StorageError> {
        self.disk.sync(&self.name)
    }
}

/// The command log. See the module docs.
pub struct Wal {
    disk: Arc<dyn Disk>,
    store: StoreId,
    segments: Vec<Segment>,
    head: Hash,
    next_batch: u64,
    segment_bytes: u64,
    sync: bool,
    failed: Option<String>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("next_batch", &self.next_batch)
            .field("segments", &self.segments.len())
            .finish_non_exhaustive()
    }
}

fn storage(e: StorageError) -> WalError {
    WalError::Storage(e.to_string())
}

/// Why bytes are not a record: `torn` when a torn write could explain it
/// (bad or partial content), not when the record is whole but wrong (a
/// valid record of another store).
struct Bad {
    reason: String,
    torn: bool,
}

impl From<String> for Bad {
    fn from(reason: String) -> Bad {
        Bad { reason, torn: true }
    }
}

impl From<&str> for Bad {
    fn from(reason: &str) -> Bad {
        Bad::from(reason.to_string())
    }
}

/// Parses one record at `at`: `Ok(None)` at the end of the bytes,
/// `Ok(Some((batch, prev, hash, record length)))`, or why not.
#[allow(clippy::type_complexity)]
fn parse(
    bytes: &[u8],
    at: usize,
    store: &StoreId,
) -> Result<Option<(u64, Hash, Hash, usize)>, Bad> {
    let rest = &bytes[at..];
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < HEADER_BYTES + HASH_BYTES {
        return Err(format!("{} bytes, shorter than a record", rest.len()).into());
    }
    if &rest[0..4] != MAGIC {
        return Err("no record magic".into());
    }
    let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
    if len > PAYLOAD_MAX || HEADER_BYTES + len + HASH_BYTES > rest.len() {
        return Err(format!("length {len} runs past the segment").into());
    }
    let mut batch = [0u8; 8];
    batch.copy_from_slice(&rest[8..16]);
    let batch = u64::from_le_bytes(batch);
    let end = HEADER_BYTES + len;
    let hash = blake3::hash(&rest[..end]);
    if hash.as_bytes()[..] != rest[end..end + HASH_BYTES] {
        return Err("checksum (BLAKE3) mismatch".into());
    }
    if &rest[16..32] != store {
        return Err(Bad {
            reason: "a whole record of another store".into(),
            torn: false,
        });
    }
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&rest[32..64]);
    Ok(Some((batch, prev, *hash.as_bytes(), end + HASH_BYTES)))
}

/// Is there a whole record (of any store) anywhere in `bytes[from..]`?
fn any_valid_after(bytes: &[u8], from: usize, store: &StoreId) -> bool {
    let mut at = from;
    while at + HEADER_BYTES + HASH_BYTES <= bytes.len() {
        match bytes[at..].windows(4).position(|w| w == MAGIC) {
            None => return false,
            Some(p) => {
                match parse(bytes, at + p, store) {
                    Ok(Some(_)) | Err(Bad { torn: false, .. }) => return true,
                    _ => {}
                }
                at += p + 1;
            }
        }
    }
    false
}

impl Wal {
    /// Creates the log of a new store: its first segment, durable.
    pub fn create(disk: Arc<dyn Disk>, store: StoreId) -> Result<Wal, WalError> {
        if !disk.list().map_err(storage)?.is_empty() {
            return Err(WalError::Storage(
                "a new log must start in an empty directory".into(),
            ));
        }
        let name = segment_name(0);
        disk.create(&name).map_err(storage)?;
        disk.sync(&name).map_err(storage)?;
        disk.sync_dir().map_err(storage)?;
        Ok(Wal {
            disk,
            store,
            segments: vec![Segment {
                name,
                first: 0,
                len: 0,
            }],
            head: genesis(&store),
            next_batch: 0,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            sync: true,
            failed: None,
            buf: Vec::new(),
        })
    }

    /// Opens an existing log, checks it whole, hands every record from
    /// `expect.from` on to `replay` in order, and cuts off a torn tail.
    pub fn open(
        disk: Arc<dyn Disk>,
        store: StoreId,
        expect: Expect,
        mut replay: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(Wal, WalReport), WalError> {
        let mut names: Vec<(u64, String)> = Vec::new();
        for name in disk.list().map_err(storage)? {
            match segment_first(&name) {
                Some(first) => names.push((first, name)),
                None if name.ends_with(".tmp") => {}
                None => {
                    return Err(WalError::Storage(format!(
                        "unexpected file {name:?} in the log directory"
                    )))
                }
            }
        }
        names.sort();
        let Some((first, _)) = names.first() else {
            return Err(WalError::Missing {
                from: 0,
                to: expect.acknowledged_below.max(expect.from),
                reason: "no log segment at all".into(),
            });
        };
        if *first > expect.from {
            return Err(WalError::Missing {
                from: expect.from,
                to: *first,
                reason: "the oldest segment starts after the checkpoint".into(),
            });
        }
        let mut report = WalReport {
            segments: names.len(),
            ..WalReport::default()
        };
        let mut segments = Vec::with_capacity(names.len());
        let mut next = *first;
        let mut head: Option<Hash> = if *first == 0 {
            Some(genesis(&store))
        } else {
            None
        };
        let last_index = names.len() - 1;
        for (i, (seg_first, name)) in names.iter().enumerate() {
            let bytes = disk
                .read(name)
                .map_err(storage)?
                .ok_or_else(|| WalError::Storage(format!("segment {name} vanished")))?;
            if *seg_first != next {
                return Err(WalError::Missing {
                    from: next,
                    to: *seg_first,
                    reason: format!("segment {name} does not follow the one before"),
                });
            }
            let mut at = 0usize;
            loop {
                let damaged = |reason: String| WalError::Damaged {
                    segment: name.clone(),
                    offset: at as u64,
                    batch: next,
                    reason,
                };
                match parse(&bytes, at, &store) {
                    Ok(None) => break,
                    Ok(Some((batch, prev, hash, len))) => {
                        if batch != next {
                            return Err(damaged(format!("holds batch {batch}, expected {next}")));
                        }
                        if let Some(h) = head {
                            if prev != h {
                                return Err(damaged("breaks the hash chain".into()));
                            }
                        }
                        if batch == expect.from {
                            if let Some(expected) = expect.head_at_from {
                                if prev != expected {
                                    return Err(damaged(
                                        "does not chain to the checkpoint's log head".into(),
                                    ));
                                }
                            }
                        }
                        if batch >= expect.from {
                            let payload = &bytes[at + HEADER_BYTES..at + len - HASH_BYTES];
                            replay(batch, payload)
                                .map_err(|reason| WalError::Replay { batch, reason })?;
                            report.replayed += 1;
                        }
                        head = Some(hash);
                        // Never wraps: `append` writes no batch u64::MAX,
                        // so a record of it is not one of this log's.
                        next = batch.checked_add(1).ok_or_else(|| {
                            damaged(format!("holds batch {batch}, past the last a log can have"))
                        })?;
                        at += len;
                    }
                    Err(Bad { reason, torn }) => {
                        if !torn || i != last_index || any_valid_after(&bytes, at + 1, &store) {
                            return Err(damaged(reason));
                        }
                        // A torn last write: never synced, never acknowledged
                        // (checked against `acknowledged_below` below).
                        if !expect.read_only {
                            disk.truncate(name, at as u64).map_err(storage)?;
                            disk.sync(name).map_err(storage)?;
                        }
                        report.torn_tail = Some(TornTail {
                            segment: name.clone(),
                            offset: at as u64,
                            batch: next,
                            bytes: (bytes.len() - at) as u64,
                        });
                        break;
                    }
                }
            }
            segments.push(Segment {
                name: name.clone(),
                first: *seg_first,
                len: at as u64,
            });
        }
        if next < expect.from {
            return Err(WalError::Missing {
                from: next,
                to: expect.from,
                reason: "the log ends before the checkpoint".into(),
            });
        }
        if next < expect.acknowledged_below {
            return Err(WalError::Missing {
                from: next,
                to: expect.acknowledged_below,
                reason: "acknowledged batches are not in the log".into(),
            });
        }
        let head = match head {
            Some(h) => h,
            // Only released segments before: the chain starts at the
            // checkpoint's head.
            None => expect.head_at_from.ok_or_else(|| WalError::Missing {
                from: 0,
                to: *first,
                reason: "no checkpoint head to start the chain".into(),
            })?,
        };
        Ok((
            Wal {
                disk,
                store,
                segments,
                head,
                next_batch: next,
                segment_bytes: SEGMENT_BYTES_DEFAULT,
                sync: true,
                failed: None,
                buf: Vec::new(),
            },
            report,
        ))
    }

    /// Segments close at this size (tests use small ones).
    pub fn with_segment_bytes(mut self, bytes: u64) -> Wal {
        self.segment_bytes = bytes.max(1);
        self
    }

    /// Off: appends are not synced (only for runs that opt out of
    /// durability).
    pub fn with_sync(mut self, sync: bool) -> Wal {
        self.sync = sync;
        self
    }

    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    /// The hash of the newest record (the genesis hash when empty).
    pub fn head(&self) -> Hash {
        self.head
    }

    /// Why the log stopped taking writes, if it did.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Appends batch `next_batch()` and syncs it. On `Err` the record may or
    /// may not be durable, and the log takes no more writes.
    pub fn append(&mut self, payload: &[u8]) -> Result<Hash, StorageError> {
        let (hash, job) = self.append_deferred(payload)?;
        if let Some(job) = job {
            let result = job.run();
            self.synced(result)?;
        }
        Ok(hash)
    }

    /// Appends batch `next_batch()` without waiting for its sync: the
    /// returned job (when appends are synced) makes it durable, on any
    /// thread, and its result goes back through [`Wal::synced`] before the
    /// batch is acknowledged or the next one appended. The record counts as
    /// appended (head, next batch) at once; a failed sync fails the log.
    pub fn append_deferred(
        &mut self,
        payload: &[u8],
    ) -> Result<(Hash, Option<SyncJob>), StorageError> {
        if let Some(reason) = &self.failed {
            return Err(StorageError::Write(format!(
                "the log stopped after an earlier failure: {reason}"
            )));
        }
        if payload.len() > PAYLOAD_MAX {
            return Err(StorageError::Write(format!(
                "a record of {} bytes is above the limit of {PAYLOAD_MAX}",
                payload.len()
            )));
        }
        let result = self.append_inner(payload);
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        let hash = result?;
        let job = self.segments.last().filter(|_| self.sync).map(|s| SyncJob {
            disk: Arc::clone(&self.disk),
            name: s.name.clone(),
        });
        Ok((hash, job))
    }

    /// The result of a deferred append's sync: a failure fails the log (no
    /// retry: the kernel may have dropped what it could not write).
    pub fn synced(&mut self, result: Result<(), StorageError>) -> Result<(), StorageError> {
        if let Err(e) = &result {
            self.failed.get_or_insert_with(|| e.to_string());
        }
        result
    }

    fn append_inner(&mut self, payload: &[u8]) -> Result<Hash, StorageError> {
        let batch = self.next_batch;
        let next_batch = batch.checked_add(1).ok_or_else(|| {
            StorageError::Write(format!("the log is full: batch {batch} is the last"))
        })?;
        let record_len = (HEADER_BYTES + payload.len() + HASH_BYTES) as u64;
        let rotate = self
            .segments
            .last()
            .is_none_or(|s| s.len > 0 && s.len + record_len > self.segment_bytes);
        if rotate {
            let name = segment_name(batch);
            self.disk.create(&name)?;
            // The new segment's name must be durable before a record in it
            // is acknowledged.
            self.disk.sync_dir()?;
            self.segments.push(Segment {
                name,
                first: batch,
                len: 0,
            });
        }
        let buf = &mut self.buf;
        buf.clear();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&batch.to_le_bytes());
        buf.extend_from_slice(&self.store);
        buf.extend_from_slice(&self.head);
        buf.extend_from_slice(payload);
        let hash = *blake3::hash(buf).as_bytes();
        buf.extend_from_slice(&hash);
        let Some(segment) = self.segments.last_mut() else {
            return Err(StorageError::Write("no segment".into()));
        };
        self.disk.append(&segment.name, buf)?;
        segment.len += record_len;
        self.head = hash;
        self.next_batch = next_batch;
        Ok(hash)
    }

    /// Syncs the current segment (used when appends are not synced, before
    /// a checkpoint names the log's head).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(reason) = &self.failed {
            return Err(StorageError::Flush(reason.clone()));
        }
        let Some(segment) = self.segments.last() else {
            return Ok(());
        };
        let result = self.disk.sync(&segment.name);
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    /// Deletes the segments whose every record is before `batch` (a
    /// durable checkpoint covers them). The current segment stays.
    pub fn release_before(&mut self, batch: u64) -> Result<usize, StorageError> {
        let mut released = 0;
        while self.segments.len() > 1 && self.segments[1].first <= batch {
            let segment = self.segments.remove(0);
            self.disk.remove(&segment.name)?;
            released += 1;
        }
        Ok(released)
    }

    /// Bytes of the log's segments.
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::disk::{CrashMode, SimDisk};

    const STORE: StoreId = [7; 16];

    fn fresh() -> (SimDisk, Wal) {
        let disk = SimDisk::new();
        let wal = Wal::create(Arc::new(disk.clone()), STORE).unwrap();
        (disk, wal)
    }

    fn reopen(disk: &SimDisk, expect: Expect) -> Result<(Wal, WalReport, Vec<Vec<u8>>), WalError> {
        let mut seen = Vec::new();
        let (wal, report) = Wal::open(Arc::new(disk.clone()), STORE, expect, |_, p| {
            seen.push(p.to_vec());
            Ok(())
        })?;
        Ok((wal, report, seen))
    }

    const ALL: Expect = Expect {
        from: 0,
        head_at_from: None,
        acknowledged_below: 0,
        read_only: false,
    };

    /// One whole record of `STORE` as `append` would write it.
    fn record(batch: u64, prev: &Hash, payload: &[u8]) -> Vec<u8> {
        let mut r = MAGIC.to_vec();
        r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        r.extend_from_slice(&batch.to_le_bytes());
        r.extend_from_slice(&STORE);
        r.extend_from_slice(prev);
        r.extend_from_slice(payload);
        let hash = *blake3::hash(&r).as_bytes();
        r.extend_from_slice(&hash);
        r
    }

    /// Found by the `log_record` fuzz target: a whole record of batch
    /// u64::MAX (in a segment named after it, replayed from it, as a
    /// damaged checkpoint could ask) overflowed the batch counter.
    #[test]
    fn a_record_of_the_last_batch_number_is_refused_not_a_panic() {
        let disk = SimDisk::new();
        let name = segment_name(u64::MAX);
        disk.create(&name).unwrap();
        disk.append(&name, &record(u64::MAX, &[9; 32], b"x"))
            .unwrap();
        let expect = Expect {
            from: u64::MAX,
            head_at_from: None,
            acknowledged_below: 0,
            read_only: true,
        };
        let err = reopen(&disk, expect).unwrap_err();
        assert!(
            matches!(&err, WalError::Damaged { batch, reason, .. }
                if *batch == u64::MAX && reason.contains("past the last")),
            "{err:?}"
        );
    }

    /// The other side of the same bound: a log whose next batch would be
    /// u64::MAX takes no more records (an error, not an overflow).
    #[test]
    fn a_full_log_refuses_the_append() {
        let disk = SimDisk::new();
        let first = u64::MAX - 1;
        let name = segment_name(first);
        disk.create(&name).unwrap();
        disk.append(&name, &record(first, &[9; 32], b"x")).unwrap();
        let expect = Expect {
            from: first,
            head_at_from: None,
            acknowledged_below: 0,
            read_only: false,
        };
        let (mut wal, report, seen) = reopen(&disk, expect).unwrap();
        assert_eq!(report.replayed, 1);
        assert_eq!(seen, vec![b"x".to_vec()]);
        assert_eq!(wal.next_batch(), u64::MAX);
        let err = wal.append(b"y").unwrap_err();
        assert!(err.to_string().contains("the log is full"), "{err}");
        assert_eq!(wal.next_batch(), u64::MAX);
    }

    #[test]
    fn records_come_back_in_order_across_segments() {
        let (disk, wal) = fresh();
        let mut wal = wal.with_segment_bytes(300);
        for i in 0..10u8 {
            wal.append(&[i; 100]).unwrap();
        }
        let head = wal.head();
        let (wal2, report, seen) = reopen(&disk, ALL).unwrap();
        assert_eq!(seen, (0..10u8).map(|i| vec![i; 100]).collect::<Vec<_>>());
        assert!(report.segments > 3);
        assert_eq!(report.torn_tail, None);
        assert_eq!(wal2.head(), head);
        assert_eq!(wal2.next_batch(), 10);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_reported() {
        let (disk, mut wal) = fresh();
        wal.append(&[1; 2000]).unwrap();
        let head = wal.head();
        disk.fail_at(disk.steps() + 1); // the sync of the next append
        assert!(wal.append(&[2; 2000]).is_err());
        assert!(wal.append(&[3; 10]).is_err(), "fail-stop");
        let mut torn_seen = false;
        for seed in 0..16 {
            let crashed = disk.crash(CrashMode::Tear { seed });
            let (wal, report, seen) = reopen(&crashed, ALL).unwrap();
            assert!(seen.len() == 1 || seen.len() == 2, "{seed}");
            assert_eq!(seen[0], vec![1; 2000]);
            if seen.len() == 1 {
                assert_eq!(wal.head(), head);
                torn_seen |= report.torn_tail.is_some();
                // The cut is durable: a second open finds a clean end.
                let (_, again, _) = reopen(&crashed, ALL).unwrap();
                assert_eq!(again.torn_tail, None);
            }
        }
        assert!(torn_seen, "some seed must tear the record");
    }

    #[test]
    fn damage_before_a_valid_record_is_refused_not_truncated() {
        let (disk, mut wal) = fresh();
        for i in 0..3u8 {
            wal.append(&[i; 50]).unwrap();
        }
        let name = segment_name(0);
        let second = HEADER_BYTES + 50 + HASH_BYTES + HEADER_BYTES + 10;
        assert!(disk.flip_bit(&name, second, 3));
        let err = reopen(&disk, ALL).unwrap_err();
        assert!(
            matches!(&err, WalError::Damaged { batch: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_removed_or_reordered_record_breaks_the_chain() {
        let (disk, mut wal) = fresh();
        for i in 0..3u8 {
            wal.append(&[i; 50]).unwrap();
        }
        let name = segment_name(0);
        let bytes = disk.read(&name).unwrap().unwrap();
        let rec = HEADER_BYTES + 50 + HASH_BYTES;
        // Drop the middle record.
        let mut cut = bytes[..rec].to_vec();
        cut.extend_from_slice(&bytes[2 * rec..]);
        disk.create(&name).unwrap();
        disk.append(&name, &cut).unwrap();
        let err = reopen(&disk, ALL).unwrap_err();
        assert!(matches!(err, WalError::Damaged { batch: 1, .. }), "{err:?}");
    }

    #[test]
    fn a_log_shorter_than_what_was_acknowledged_is_refused() {
        let (disk, mut wal) = fresh();
        wal.append(b"a").unwrap();
        let err = reopen(
            &disk,
            Expect {
                acknowledged_below: 2,
                ..ALL
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, WalError::Missing { from: 1, to: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn another_stores_log_is_refused() {
        let (disk, mut wal) = fresh();
        wal.append(b"a").unwrap();
        wal.append(b"b").unwrap();
        let err = Wal::open(Arc::new(disk), [8; 16], ALL, |_, _| Ok(())).unwrap_err();
        assert!(matches!(err, WalError::Damaged { .. }), "{err:?}");
    }

    #[test]
    fn released_segments_need_the_checkpoint_head() {
        let (disk, wal) = fresh();
        let mut wal = wal.with_segment_bytes(200);
        let mut heads = Vec::new();
        for i in 0..6u8 {
            heads.push(wal.append(&[i; 100]).unwrap());
        }
        assert!(wal.release_before(4).unwrap() > 0);
        let expect = Expect {
            from: 4,
            head_at_from: Some(heads[3]),
            acknowledged_below: 6,
            read_only: false,
        };
        let (_, report, seen) = reopen(&disk, expect).unwrap();
        assert_eq!(seen, vec![vec![4; 100], vec![5; 100]]);
        assert_eq!(report.replayed, 2);
        let wrong = Expect {
            head_at_from: Some(heads[2]),
            ..expect
        };
        assert!(reopen(&disk, wrong).is_err());
    }

    #[test]
    fn no_segment_at_all_is_refused() {
        let disk = SimDisk::new();
        let err = reopen(&disk, ALL).unwrap_err();
        assert!(matches!(err, WalError::Missing { .. }), "{err:?}");
    }
}
