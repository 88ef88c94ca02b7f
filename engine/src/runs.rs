//! The idempotency index on disk: sorted runs of fixed-size pages, each run
//! with a blocked Bloom filter and one fence per page held in RAM.
//!
//! Why: the index holds every id ever sequenced (refusals included), so
//! kept whole in RAM it grows ~48 bytes per id for ever and a reopen loads
//! all of it. Here an id costs ~1.4 bytes resident (10 filter bits and a
//! 1/256 share of its page's fence) and a reopen reads the filters and
//! fences, not the entries.
//!
//! Layout of a run (written by the checkpoint thread, never changed):
//! - data blob `r<generation>-<level>`: pages of up to [`PAGE_ITEMS`]
//!   items in ascending `(id, kind)` order, each page: the count (u16 LE),
//!   one fixed 41-byte record per item (id 16 bytes big-endian, so that
//!   byte order is key order; kind; 24 bytes: the index entry, or the
//!   pending transfer's status), then the page's refusals (postcard:
//!   record number, reason, code). A look-up searches the records in
//!   place; a merge copies them without a general decoder;
//! - header blob `h<generation>-<level>` ([`RunHeader`]): the item count,
//!   one [`Fence`] per page (first key, offset, length, and a BLAKE3 of the
//!   store id, the run's name, the page number and the page's bytes), and
//!   the filter. The header is sealed and summed by the manifest like every
//!   blob a reopen loads; a page is checked against its fence each time it
//!   is read, so a damaged, swapped or truncated page is refused by name.
//!
//! The filter is keyed (SipHash-1-3 with a key derived from the store's
//! secret fingerprint key), so ids cannot be chosen to make every look-up
//! read a page. One hash per look-up serves every run; a run's filter
//! answers from one 64-byte block (one cache line).
//!
//! Runs only grow by merging: `checkpoint::write` merges the newest runs of
//! a level into one of the next, streaming pages (the merge holds one page
//! per input, never a run).

use crate::codec::BlobSum;
use crate::run_cache;
use crate::state::{IndexEntry, PendingStatus};
use crate::txn::Reject;
use crate::types::TxnCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;
use std::sync::Arc;
use tally_storage::{BlobStore, StorageError};

/// Items per page: a page is ~5 KiB, one read (and one check) when a
/// filter's false positive sends a look-up to disk.
pub(crate) const PAGE_ITEMS: usize = 128;
/// Filter bits per item: ~0.05% false positives with [`PROBES`] bits in a
/// 512-bit block. Every new id is looked up in every run, and a false
/// positive costs a page read, check and decode (~10 µs): at 10 bits per
/// item (~1.5% per run) that was the sequencer's largest cost.
const FILTER_BITS_PER_ITEM: u64 = 16;
const BLOCK_BYTES: usize = 64;
const PROBES: u32 = 10;

/// What the index knows of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// A sequenced id: its entry, and its reason and code when refused
    /// (boxed: refusals are rare, and a small item sorts and merges fast).
    Entry(IndexEntry, Option<Box<(Reject, TxnCode)>>),
    /// A pending transfer's final status (posted, voided or expired).
    Resolved(PendingStatus),
}

/// Kind of key: an id's entry, or a pending transfer's resolution.
pub(crate) const KIND_ENTRY: u8 = 0;
pub(crate) const KIND_RESOLVED: u8 = 1;

impl Item {
    pub fn kind(&self) -> u8 {
        match self {
            Item::Entry(..) => KIND_ENTRY,
            Item::Resolved(_) => KIND_RESOLVED,
        }
    }
}

/// A run's sort key: (transaction id, kind).
pub(crate) type Key = (u128, u8);

/// The secrets a store's runs are written and read with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Keys {
    /// The store's id: part of every page's hash.
    pub store: [u8; 16],
    /// The filter's SipHash key.
    pub filter: [u8; 16],
}

impl Keys {
    /// Keys of the store `store`, whose secret fingerprint key is `secret`.
    pub fn new(store: [u8; 16], secret: &[u8; 32]) -> Keys {
        let derived = blake3::derive_key("tally idempotency index filter v1", secret);
        let mut filter = [0u8; 16];
        filter.copy_from_slice(&derived[..16]);
        Keys { store, filter }
    }

    pub fn probe(&self, key: Key) -> Probe {
        let mut h = SipHasher13::new_with_key(&self.filter);
        h.write(&key.0.to_le_bytes());
        h.write_u8(key.1);
        Probe(h.finish128().as_u128())
    }

    fn page_hash(&self, run: &str, page: usize, bytes: &[u8]) -> [u8; 16] {
        let mut h = blake3::Hasher::new();
        h.update(&self.store);
        h.update(&(run.len() as u64).to_le_bytes());
        h.update(run.as_bytes());
        h.update(&(page as u64).to_le_bytes());
        h.update(bytes);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }
}

/// A key's filter hash: computed once per look-up, tried on every run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probe(u128);

/// A blocked Bloom filter: each key sets [`PROBES`] bits in one 64-byte
/// block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Filter {
    bytes: Vec<u8>,
}

impl Filter {
    pub fn with_capacity(items: u64) -> Filter {
        let blocks = (items.saturating_mul(FILTER_BITS_PER_ITEM) / 512).max(1) + 1;
        Filter {
            bytes: vec![0; usize::try_from(blocks).unwrap_or(usize::MAX / 2) * BLOCK_BYTES],
        }
    }

    /// The byte where `probe`'s block starts: from the low 64 bits.
    pub fn block_of(&self, probe: Probe) -> usize {
        let blocks = (self.bytes.len() / BLOCK_BYTES) as u128;
        let low = probe.0 as u64;
        ((u128::from(low) * blocks) >> 64) as usize * BLOCK_BYTES
    }

    /// Reads a byte of `probe`'s block and nothing else: see
    /// `Idempotency::on_disk`, which touches every run's block before
    /// testing any, so that the cache misses overlap.
    pub fn touch(&self, probe: Probe) -> u8 {
        self.bytes.get(self.block_of(probe)).copied().unwrap_or(0)
    }

    /// The bits in the block by double hashing with the high 64 bits.
    fn bits(&self, probe: Probe) -> impl Iterator<Item = usize> {
        let block = self.block_of(probe);
        let h1 = (probe.0 >> 64) as u32;
        let h2 = ((probe.0 >> 96) as u32) | 1;
        (0..PROBES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & 511;
            block * 8 + bit as usize
        })
    }

    pub fn insert(&mut self, probe: Probe) {
        for bit in self.bits(probe) {
            self.bytes[bit / 8] |= 1 << (bit % 8);
        }
    }

    pub fn may_contain(&self, probe: Probe) -> bool {
        if self.bytes.len() < BLOCK_BYTES {
            // A filter that does not parse as one (damaged header): every
            // key may be there, and the page read decides.
            return true;
        }
        self.bits(probe)
            .all(|bit| self.bytes[bit / 8] & (1 << (bit % 8)) != 0)
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// Where a page is and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Fence {
    /// The page's first key.
    pub first: Key,
    pub offset: u64,
    pub len: u32,
    /// BLAKE3 of (store id, run name, page number, bytes), first 16 bytes.
    pub hash: [u8; 16],
}

/// What a reopen loads of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunHeader {
    pub items: u64,
    pub fences: Vec<Fence>,
    pub filter: Filter,
}

impl RunHeader {
    /// Bytes it keeps in RAM.
    pub fn resident_bytes(&self) -> usize {
        self.filter.len_bytes() + self.fences.len() * std::mem::size_of::<Fence>()
    }
}

/// The headers of an engine's runs in RAM (`run_cache.rs`).
pub(crate) type HeaderCache = run_cache::HeaderCache<RunHeader>;

/// A page: `(id, item)` in ascending `(id, kind)` order.
pub(crate) type Page = Vec<(u128, Item)>;

fn key_of(pair: &(u128, Item)) -> Key {
    (pair.0, pair.1.kind())
}

const KEY_BYTES: usize = 17;
const RECORD_BYTES: usize = KEY_BYTES + 24;

fn key_bytes(key: Key) -> [u8; KEY_BYTES] {
    let mut bytes = [0u8; KEY_BYTES];
    bytes[..16].copy_from_slice(&key.0.to_be_bytes());
    bytes[16] = key.1;
    bytes
}

fn status_byte(status: PendingStatus) -> u8 {
    match status {
        PendingStatus::Open => 0,
        PendingStatus::Posted => 1,
        PendingStatus::Voided => 2,
        PendingStatus::Expired => 3,
    }
}

/// A page's bytes (see the module docs).
pub(crate) fn encode_page(page: &[(u128, Item)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + page.len() * RECORD_BYTES + 8);
    out.extend_from_slice(&(page.len() as u16).to_le_bytes());
    let mut refusals: Vec<(u16, &(Reject, TxnCode))> = Vec::new();
    for (i, (id, item)) in page.iter().enumerate() {
        out.extend_from_slice(&key_bytes((*id, item.kind())));
        match item {
            Item::Entry(entry, refusal) => {
                out.extend_from_slice(&entry.to_bytes());
                if let Some(refusal) = refusal {
                    refusals.push((i as u16, refusal));
                }
            }
            Item::Resolved(status) => {
                let mut value = [0u8; 24];
                value[0] = status_byte(*status);
                out.extend_from_slice(&value);
            }
        }
    }
    // Infallible for these types; an empty list is one byte.
    postcard::to_extend(&refusals, out).unwrap_or_default()
}

/// The page's record count and where its refusals start, checked.
fn page_layout(bytes: &[u8]) -> Result<(usize, usize), String> {
    let count = bytes
        .first_chunk::<2>()
        .map(|c| usize::from(u16::from_le_bytes(*c)))
        .ok_or("shorter than its count")?;
    let records_end = 2 + count * RECORD_BYTES;
    if count == 0 || count > PAGE_ITEMS || bytes.len() <= records_end {
        return Err(format!("{count} records in {} bytes", bytes.len()));
    }
    Ok((count, records_end))
}

fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} bytes after the refusals", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Record `i` of a page whose layout was checked.
fn record(bytes: &[u8], i: usize) -> Result<(u128, Item), String> {
    let at = 2 + i * RECORD_BYTES;
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[at..at + 16]);
    let mut value = [0u8; 24];
    value.copy_from_slice(&bytes[at + KEY_BYTES..at + RECORD_BYTES]);
    let item = match bytes[at + 16] {
        KIND_ENTRY => Item::Entry(IndexEntry::from_bytes(&value), None),
        KIND_RESOLVED => Item::Resolved(match value[0] {
            1 => PendingStatus::Posted,
            2 => PendingStatus::Voided,
            3 => PendingStatus::Expired,
            other => return Err(format!("record {i}: pending status {other}")),
        }),
        other => return Err(format!("record {i}: kind {other}")),
    };
    Ok((u128::from_be_bytes(id), item))
}

/// The refusals of a page: (record number, reason, code), ascending.
type Refusals = Vec<(u16, (Reject, TxnCode))>;

/// Gives each refused entry of `page` its refusal, checking that every
/// refusal names a distinct entry that did not commit.
fn attach(page: &mut [(u128, Item)], refusals: Refusals) -> Result<(), String> {
    let mut last = None;
    for (i, refusal) in refusals {
        if last.is_some_and(|l| l >= i) {
            return Err(format!("refusal of record {i} out of order"));
        }
        last = Some(i);
        match page.get_mut(usize::from(i)) {
            Some((_, Item::Entry(entry, slot))) if !entry.committed() => {
                *slot = Some(Box::new(refusal));
            }
            _ => return Err(format!("refusal of record {i}, not a refused entry")),
        }
    }
    Ok(())
}

/// Decodes a whole page (merges, checks).
pub(crate) fn decode_page(bytes: &[u8]) -> Result<Page, String> {
    let (count, records_end) = page_layout(bytes)?;
    let mut page = (0..count)
        .map(|i| record(bytes, i))
        .collect::<Result<Page, String>>()?;
    attach(&mut page, decode_exact(&bytes[records_end..])?)?;
    Ok(page)
}

/// The item of `key` in a page, found in place (binary search over the
/// records; only a refused entry's refusal is decoded).
fn find_in_page(bytes: &[u8], key: Key) -> Result<Option<Item>, String> {
    let (count, records_end) = page_layout(bytes)?;
    let wanted = key_bytes(key);
    let (mut low, mut high) = (0usize, count);
    while low < high {
        let mid = (low + high) / 2;
        let at = 2 + mid * RECORD_BYTES;
        match bytes[at..at + KEY_BYTES].cmp(&wanted[..]) {
            std::cmp::Ordering::Less => low = mid + 1,
            std::cmp::Ordering::Greater => high = mid,
            std::cmp::Ordering::Equal => {
                let (_, item) = record(bytes, mid)?;
                let Item::Entry(entry, None) = item else {
                    return Ok(Some(item));
                };
                if entry.committed() {
                    return Ok(Some(Item::Entry(entry, None)));
                }
                let refusals: Refusals = decode_exact(&bytes[records_end..])?;
                let refusal = refusals
                    .into_iter()
                    .find(|(i, _)| usize::from(*i) == mid)
                    .map(|(_, r)| Box::new(r));
                return Ok(Some(Item::Entry(entry, refusal)));
            }
        }
    }
    Ok(None)
}

/// A run on disk, as the sequencer looks it up. What it keeps in RAM is
/// a few dozen bytes; its header (filter and fences) is in the cache
/// (`run_cache.rs`) while look-ups use it, else read again when needed.
#[derive(Debug)]
pub(crate) struct Run {
    /// The data blob's name.
    pub name: String,
    pub items: u64,
    pages: usize,
    /// The smallest and the largest key it holds (`None`: empty): a key
    /// outside is not looked for.
    span: Option<(Key, Key)>,
    /// Its header blob and the manifest's sum of it: a header the cache
    /// dropped is read again from there and checked.
    source: BlobSum,
    cache: Arc<HeaderCache>,
    serial: u64,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.cache.forget(self.serial);
    }
}

impl Run {
    /// A run whose header was read (and checked against `source`'s sum):
    /// its first and last pages are read and checked now, so a missing or
    /// cut data blob is found at open, not at the first look-up that
    /// reaches it; they give its key span. The header goes to the cache.
    pub fn open(
        blobs: &dyn BlobStore,
        keys: &Keys,
        name: String,
        header: RunHeader,
        source: BlobSum,
        cache: Arc<HeaderCache>,
    ) -> Result<Run, String> {
        let pages = header.fences.len();
        if (header.items == 0) != (pages == 0)
            || header.items > (pages as u64).saturating_mul(PAGE_ITEMS as u64)
        {
            return Err(format!(
                "index run {name}: {} items in {pages} pages",
                header.items
            ));
        }
        let header = Arc::new(header);
        let mut run = Run {
            name,
            items: header.items,
            pages,
            span: None,
            source,
            cache,
            serial: run_cache::next_serial(),
        };
        if pages > 0 {
            let first = run.checked_page(blobs, keys, &header, 0)?;
            let last = run.checked_page(blobs, keys, &header, pages - 1)?;
            run.span = first.first().map(key_of).zip(last.last().map(key_of));
        }
        let bytes = header.resident_bytes();
        run.cache.put(run.serial, header, bytes);
        Ok(run)
    }

    /// Whether `key` is inside the run's span (it may hold it).
    pub fn spans(&self, key: Key) -> bool {
        self.span
            .is_some_and(|(first, last)| first <= key && key <= last)
    }

    /// The run's header: from the cache, or read from its blob and checked
    /// against its sum (then cached).
    pub fn header(&self, blobs: &dyn BlobStore) -> Result<Arc<RunHeader>, String> {
        if let Some(header) = self.cache.get(self.serial) {
            return Ok(header);
        }
        let header: RunHeader = self
            .source
            .read(blobs)
            .map_err(|reason| format!("index run {} header: {reason}", self.name))?;
        if header.items != self.items || header.fences.len() != self.pages {
            return Err(format!(
                "index run {} header: not the header the run was opened with",
                self.name
            ));
        }
        let header = Arc::new(header);
        let bytes = header.resident_bytes();
        self.cache.put(self.serial, Arc::clone(&header), bytes);
        Ok(header)
    }

    /// Reads and checks page `n`.
    pub fn page(&self, blobs: &dyn BlobStore, keys: &Keys, n: usize) -> Result<Page, String> {
        let header = self.header(blobs)?;
        self.checked_page(blobs, keys, &header, n)
    }

    fn checked_page(
        &self,
        blobs: &dyn BlobStore,
        keys: &Keys,
        header: &RunHeader,
        n: usize,
    ) -> Result<Page, String> {
        let fail = |reason: String| format!("index run {} page {n}: {reason}", self.name);
        let bytes = self.page_bytes(blobs, keys, header, n)?;
        let page = decode_page(&bytes).map_err(fail)?;
        let first = header.fences.get(n).map(|f| f.first);
        if page.first().map(key_of) != first
            || page.windows(2).any(|w| key_of(&w[0]) >= key_of(&w[1]))
        {
            return Err(fail("keys out of order or not the fence's".into()));
        }
        Ok(page)
    }

    /// Reads page `n`'s bytes and checks them against its fence.
    fn page_bytes(
        &self,
        blobs: &dyn BlobStore,
        keys: &Keys,
        header: &RunHeader,
        n: usize,
    ) -> Result<Vec<u8>, String> {
        let fail = |reason: String| format!("index run {} page {n}: {reason}", self.name);
        let fence = header
            .fences
            .get(n)
            .ok_or_else(|| fail("no such page".into()))?;
        let bytes = blobs
            .get_range(&self.name, fence.offset, fence.len as usize)
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail("the run's data blob is missing".into()))?;
        if keys.page_hash(&self.name, n, &bytes) != fence.hash {
            return Err(fail(
                "checksum mismatch (damaged, or not this store's page)".into(),
            ));
        }
        Ok(bytes)
    }

    /// The item of `key`, if this run (whose header is `header`) holds it.
    pub fn get(
        &self,
        blobs: &dyn BlobStore,
        keys: &Keys,
        header: &RunHeader,
        key: Key,
        probe: Probe,
    ) -> Result<Option<Item>, String> {
        if !header.filter.may_contain(probe) {
            return Ok(None);
        }
        let n = header.fences.partition_point(|f| f.first <= key);
        let Some(n) = n.checked_sub(1) else {
            return Ok(None);
        };
        let bytes = self.page_bytes(blobs, keys, header, n)?;
        find_in_page(&bytes, key)
            .map_err(|reason| format!("index run {} page {n}: {reason}", self.name))
    }
}

/// Reads every page of `run` and checks it (hash, order, the header's item
/// count, and that the filter and the span hold every key: a key either
/// missed would be answered "never sequenced"). For the audit and `verify`.
pub(crate) fn verify(run: &Run, blobs: &dyn BlobStore, keys: &Keys) -> Result<u64, String> {
    let header = run.header(blobs)?;
    let mut items = 0u64;
    let (mut first, mut last): (Option<Key>, Option<Key>) = (None, None);
    for page in pages_of(run, blobs, keys) {
        for pair in page? {
            let key = key_of(&pair);
            if last.is_some_and(|l| l >= key) {
                return Err(format!("index run {}: key {key:?} out of order", run.name));
            }
            if !header.filter.may_contain(keys.probe(key)) {
                return Err(format!(
                    "index run {}: its filter misses key {key:?}",
                    run.name
                ));
            }
            first.get_or_insert(key);
            last = Some(key);
            items += 1;
        }
    }
    // The span decides which look-ups read the run: a key outside it
    // would be answered "never sequenced".
    if items != header.items || first.zip(last) != run.span {
        return Err(format!(
            "index run {}: {items} items from {first:?} to {last:?}, its header says {}, \
             its span {:?}",
            run.name, header.items, run.span
        ));
    }
    Ok(items)
}

/// Pages of a source, in order.
pub(crate) type Pages<'a> = Box<dyn Iterator<Item = Result<Page, String>> + 'a>;

/// A run's pages, read one at a time.
pub(crate) fn pages_of<'a>(run: &'a Run, blobs: &'a dyn BlobStore, keys: &'a Keys) -> Pages<'a> {
    Box::new((0..run.pages).map(move |n| run.page(blobs, keys, n)))
}

type PageCursor = std::iter::Peekable<std::vec::IntoIter<(u128, Item)>>;

/// Sources merged into one ascending stream of items; a key in two sources
/// is an error (an id is sequenced once, a pending transfer resolved once).
pub(crate) struct Merge<'a> {
    /// Each source, and the rest of its current page.
    inputs: Vec<(Pages<'a>, PageCursor)>,
    last: Option<Key>,
    failed: bool,
}

impl<'a> Merge<'a> {
    pub fn new(sources: Vec<Pages<'a>>) -> Merge<'a> {
        Merge {
            inputs: sources
                .into_iter()
                .map(|pages| (pages, Vec::new().into_iter().peekable()))
                .collect(),
            last: None,
            failed: false,
        }
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<(u128, Item), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut best: Option<(usize, Key)> = None;
        for (i, (pages, current)) in self.inputs.iter_mut().enumerate() {
            while current.peek().is_none() {
                match pages.next() {
                    None => break,
                    Some(Ok(page)) => *current = page.into_iter().peekable(),
                    Some(Err(e)) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            if let Some(pair) = current.peek() {
                let key = key_of(pair);
                if best.is_none_or(|(_, b)| key < b) {
                    best = Some((i, key));
                }
            }
        }
        let (i, key) = best?;
        if self.last.is_some_and(|last| last >= key) {
            self.failed = true;
            return Some(Err(format!(
                "index runs hold key {key:?} twice or out of order"
            )));
        }
        self.last = Some(key);
        self.inputs[i].1.next().map(Ok)
    }
}

/// Writes the items of `source` (ascending keys, at most `expected` of
/// them for the filter's size) as run `name` into `blobs`, page by page,
/// and returns its header (for the caller to write as the header blob).
pub(crate) fn write_run(
    blobs: &dyn BlobStore,
    keys: &Keys,
    name: &str,
    expected: u64,
    mut source: impl Iterator<Item = Result<(u128, Item), String>>,
) -> Result<RunHeader, String> {
    let mut header = RunHeader {
        items: 0,
        fences: Vec::new(),
        filter: Filter::with_capacity(expected),
    };
    let mut offset = 0u64;
    let mut last: Option<Key> = None;
    let mut failure = None;
    let mut next_page = || -> Option<Result<Vec<u8>, StorageError>> {
        let mut page: Page = Vec::with_capacity(PAGE_ITEMS);
        while page.len() < PAGE_ITEMS {
            match source.next() {
                None => break,
                Some(Err(e)) => {
                    failure = Some(e.clone());
                    return Some(Err(StorageError::Write(e)));
                }
                Some(Ok(pair)) => {
                    let key = key_of(&pair);
                    if last.is_some_and(|l| l >= key) {
                        let e = format!("run {name}: key {key:?} out of order");
                        failure = Some(e.clone());
                        return Some(Err(StorageError::Write(e)));
                    }
                    last = Some(key);
                    header.filter.insert(keys.probe(key));
                    page.push(pair);
                }
            }
        }
        let first = key_of(page.first()?);
        let bytes = encode_page(&page);
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        header.fences.push(Fence {
            first,
            offset,
            len,
            hash: keys.page_hash(name, header.fences.len(), &bytes),
        });
        header.items += page.len() as u64;
        offset += u64::from(len);
        Some(Ok(bytes))
    };
    let written = blobs.put_stream(name, &mut next_page);
    if let Some(reason) = failure {
        return Err(reason);
    }
    written.map_err(|e| e.to_string())?;
    Ok(header)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::types::Timestamp;
    use std::sync::Arc;
    use tally_storage::{FileBlobs, SimDisk};

    fn keys() -> Keys {
        Keys::new([3; 16], &[9; 32])
    }

    fn entry(id: u128) -> (u128, Item) {
        let refusal = id
            .is_multiple_of(5)
            .then(|| Box::new((Reject::PendingNotFound, TxnCode(id as u32))));
        (
            id,
            Item::Entry(
                IndexEntry::new([id as u64, 1], Timestamp(id as u64 + 1), refusal.is_none()),
                refusal,
            ),
        )
    }

    fn blobs() -> FileBlobs {
        FileBlobs::on(Arc::new(SimDisk::new())).unwrap()
    }

    fn written(blobs: &FileBlobs, name: &str, ids: &[u128]) -> Run {
        let header = write_run(
            blobs,
            &keys(),
            name,
            ids.len() as u64,
            ids.iter().map(|&id| Ok(entry(id))),
        )
        .unwrap();
        opened(blobs, name, header).unwrap()
    }

    /// Run `name` opened with `header`, which is written beside it as
    /// `h<name>` (where a header the cache dropped is read again).
    fn opened(blobs: &FileBlobs, name: &str, header: RunHeader) -> Result<Run, String> {
        opened_with(blobs, name, header, HeaderCache::new(usize::MAX))
    }

    fn opened_with(
        blobs: &FileBlobs,
        name: &str,
        header: RunHeader,
        cache: Arc<HeaderCache>,
    ) -> Result<Run, String> {
        let bytes = crate::codec::encode(&header).unwrap();
        let source = BlobSum::of(&format!("h{name}"), &bytes);
        blobs.put(&source.name, &bytes).unwrap();
        Run::open(blobs, &keys(), name.to_string(), header, source, cache)
    }

    fn get(run: &Run, blobs: &FileBlobs, key: Key) -> Option<Item> {
        let header = run.header(blobs).unwrap();
        run.get(blobs, &keys(), &header, key, keys().probe(key))
            .unwrap()
    }

    fn header_of(run: &Run, blobs: &FileBlobs) -> RunHeader {
        (*run.header(blobs).unwrap()).clone()
    }

    #[test]
    fn a_run_finds_every_item_it_holds_and_nothing_else() {
        let blobs = blobs();
        let ids: Vec<u128> = (0..2_000u128).map(|i| i * 7 + 3).collect();
        let run = written(&blobs, "r1", &ids);
        assert_eq!(run.items, 2_000);
        assert_eq!(
            header_of(&run, &blobs).fences.len(),
            2_000usize.div_ceil(PAGE_ITEMS)
        );
        // Its span is its first and last id: nothing outside is looked for.
        assert!(run.spans((3, KIND_ENTRY)) && run.spans((1_999 * 7 + 3, KIND_ENTRY)));
        assert!(!run.spans((2, KIND_RESOLVED)) && !run.spans((1_999 * 7 + 3, KIND_RESOLVED)));
        for &id in &ids {
            assert_eq!(get(&run, &blobs, (id, KIND_ENTRY)), Some(entry(id).1));
            assert_eq!(get(&run, &blobs, (id, KIND_RESOLVED)), None);
        }
        for id in [0u128, 1, 4, 5, 14_000, u128::MAX] {
            assert_eq!(get(&run, &blobs, (id, KIND_ENTRY)), None, "{id}");
        }
    }

    #[test]
    fn the_filter_rejects_most_absent_keys() {
        let mut filter = Filter::with_capacity(100_000);
        let k = keys();
        for id in 0..100_000u128 {
            filter.insert(k.probe((id, KIND_ENTRY)));
        }
        assert!((0..100_000u128).all(|id| filter.may_contain(k.probe((id, KIND_ENTRY)))));
        let false_positives = (1_000_000..1_100_000u128)
            .filter(|&id| filter.may_contain(k.probe((id, KIND_ENTRY))))
            .count();
        // ~0.05% expected at 16 bits per key; 0.3% would mean a broken
        // filter.
        assert!(false_positives < 300, "{false_positives} of 100,000");
        // Another store's key places the same ids elsewhere.
        let other = Keys::new([3; 16], &[8; 32]);
        assert_ne!(other.probe((5, 0)).0, k.probe((5, 0)).0);
    }

    #[test]
    fn runs_merge_into_one_ascending_run_and_a_repeated_key_is_refused() {
        let blobs = blobs();
        let a = written(&blobs, "ra", &(0..700).map(|i| i * 3).collect::<Vec<_>>());
        let b = written(
            &blobs,
            "rb",
            &(0..700).map(|i| i * 3 + 1).collect::<Vec<_>>(),
        );
        let hot: Page = (0..10).map(|i| entry(i * 3 + 2)).collect();
        let k = keys();
        let sources = vec![
            pages_of(&a, &blobs, &k),
            pages_of(&b, &blobs, &k),
            Box::new(std::iter::once(Ok(hot))) as Pages<'_>,
        ];
        let header = write_run(&blobs, &k, "rm", 1_410, Merge::new(sources)).unwrap();
        let merged = opened(&blobs, "rm", header).unwrap();
        assert_eq!(merged.items, 1_410);
        let all: Vec<u128> = pages_of(&merged, &blobs, &k)
            .flat_map(|p| p.unwrap())
            .map(|(id, _)| id)
            .collect();
        let mut expected: Vec<u128> = (0..700).flat_map(|i| [i * 3, i * 3 + 1]).collect();
        expected.extend((0..10).map(|i| i * 3 + 2));
        expected.sort();
        assert_eq!(all, expected);
        let twice = vec![pages_of(&a, &blobs, &k), pages_of(&a, &blobs, &k)];
        let refused = write_run(&blobs, &k, "rx", 10, Merge::new(twice));
        assert!(refused.unwrap_err().contains("twice"));
    }

    #[test]
    fn a_damaged_swapped_or_cut_page_is_refused_by_name() {
        let disk = SimDisk::new();
        let blobs = FileBlobs::on(Arc::new(disk.clone())).unwrap();
        let ids: Vec<u128> = (0..1_000u128).collect();
        let run = written(&blobs, "r7", &ids);
        blobs.flush().unwrap();
        let header = run.header(&blobs).unwrap();
        let fence = header.fences[2].clone();
        assert!(disk.flip_bit("r7", fence.offset as usize + 5, 2));
        let key = (fence.first.0 + 1, KIND_ENTRY);
        let error = run
            .get(&blobs, &keys(), &header, key, keys().probe(key))
            .unwrap_err();
        assert!(
            error.contains("r7 page 2") && error.contains("checksum"),
            "{error}"
        );
        // The same bytes under another run's name fail their hash.
        let other = written(&blobs, "r8", &ids);
        let copy = blobs.get("r8").unwrap().unwrap();
        blobs.put("r9", &copy).unwrap();
        let other_header = header_of(&other, &blobs);
        let moved = opened(&blobs, "r9", other_header.clone());
        assert!(moved.unwrap_err().contains("r9 page 0: checksum"));
        // A cut data blob is found when the run is opened.
        blobs.put("r8", &copy[..copy.len() - 10]).unwrap();
        let cut = opened(&blobs, "r8", other_header.clone());
        let last = format!("r8 page {}", other_header.fences.len() - 1);
        assert!(cut.unwrap_err().contains(&last));
        blobs.delete("r8").unwrap();
        let gone = opened(&blobs, "r8", other_header);
        assert!(gone.unwrap_err().contains("missing"));
    }

    #[test]
    fn a_header_the_cache_dropped_is_read_again_and_checked() {
        let blobs = blobs();
        let ids: Vec<u128> = (0..1_000u128).collect();
        let header = |name: &str| {
            write_run(
                &blobs,
                &keys(),
                name,
                1_000,
                ids.iter().map(|&id| Ok(entry(id))),
            )
            .unwrap()
        };
        // Room for one header: opening the second drops the first.
        let one = header("ra").resident_bytes();
        let cache = HeaderCache::new(one);
        let a = opened_with(&blobs, "ra", header("ra"), cache.clone()).unwrap();
        let b = opened_with(&blobs, "rb", header("rb"), cache.clone()).unwrap();
        assert_eq!((cache.len(), cache.resident()), (1, one));
        for &id in ids.iter().step_by(37) {
            assert_eq!(get(&a, &blobs, (id, KIND_ENTRY)), Some(entry(id).1));
            assert_eq!(get(&b, &blobs, (id, KIND_ENTRY)), Some(entry(id).1));
            assert!(cache.resident() <= one, "the budget holds");
        }
        // A header blob damaged (or swapped) while out of the cache is
        // refused by name when read again, never taken as "not there".
        let mut bytes = blobs.get("hra").unwrap().unwrap();
        bytes[9] ^= 4;
        blobs.put("hra", &bytes).unwrap();
        let _ = b.header(&blobs).unwrap(); // drops a's
        let error = a.header(&blobs).unwrap_err();
        assert!(error.contains("index run ra header"), "{error}");
        blobs
            .put("hra", &blobs.get("hrb").unwrap().unwrap())
            .unwrap();
        assert!(a.header(&blobs).unwrap_err().contains("manifest's size"));
        // A run dropped leaves the cache.
        drop(b);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_page_round_trips_is_searched_in_place_and_refuses_nonsense() {
        let mut page: Page = (0..40u128).map(|i| entry(i * 2)).collect();
        page.insert(3, (4, Item::Resolved(PendingStatus::Expired)));
        let bytes = encode_page(&page);
        assert_eq!(decode_page(&bytes), Ok(page.clone()));
        for (id, item) in &page {
            assert_eq!(
                find_in_page(&bytes, (*id, item.kind())),
                Ok(Some(item.clone()))
            );
        }
        assert_eq!(find_in_page(&bytes, (5, KIND_ENTRY)), Ok(None));
        assert_eq!(find_in_page(&bytes, (4, 9)), Ok(None));
        // A kind, a status, a refusal of a committed entry, trailing
        // bytes, a count beyond the bytes or the page size: refused.
        let record_at = |i: usize| 2 + i * RECORD_BYTES;
        let mut bad_kind = bytes.clone();
        bad_kind[record_at(1) + 16] = 7;
        assert!(decode_page(&bad_kind).unwrap_err().contains("kind 7"));
        let mut bad_status = bytes.clone();
        bad_status[record_at(3) + KEY_BYTES] = 9;
        assert!(decode_page(&bad_status).unwrap_err().contains("status 9"));
        let mut committed = page.clone();
        if let (_, Item::Entry(e, r)) = &mut committed[1] {
            assert!(e.committed());
            *r = Some(Box::new((Reject::PendingNotFound, TxnCode(1))));
        }
        assert!(decode_page(&encode_page(&committed))
            .unwrap_err()
            .contains("not a refused entry"));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_page(&trailing).is_err());
        let mut short = bytes.clone();
        short[0] = 200;
        assert!(decode_page(&short).is_err());
        let mut huge = bytes;
        huge[..2].copy_from_slice(&1000u16.to_le_bytes());
        assert!(decode_page(&huge).is_err());
        assert!(decode_page(&[]).is_err());
    }

    #[test]
    fn resolutions_and_entries_of_one_id_are_two_keys() {
        let blobs = blobs();
        let items = vec![
            entry(10),
            (10, Item::Resolved(PendingStatus::Posted)),
            entry(11),
        ];
        let header = write_run(&blobs, &keys(), "rr", 3, items.into_iter().map(Ok)).unwrap();
        let run = opened(&blobs, "rr", header).unwrap();
        assert_eq!(
            get(&run, &blobs, (10, KIND_RESOLVED)),
            Some(Item::Resolved(PendingStatus::Posted))
        );
        assert_eq!(get(&run, &blobs, (10, KIND_ENTRY)), Some(entry(10).1));
        assert_eq!(get(&run, &blobs, (11, KIND_RESOLVED)), None);
    }
}
