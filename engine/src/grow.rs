//! Containers that grow without stalling.
//!
//! A `Vec` that doubles copies everything it holds, and a hash map that
//! grows rehashes everything: with millions of details or ids that is one
//! pause of tens or hundreds of milliseconds, felt by every caller of the
//! batch in flight (seen as the p99 of the load test). These containers grow
//! in small steps instead:
//! - [`ChunkedVec`] appends into fixed-size chunks: growing allocates one new
//!   chunk and copies nothing.
//! - [`SplitMap`] is `PARTS` hash maps picked by the key's hash: each grows
//!   on its own, so one rehash moves 1/`PARTS` of the entries.

use rustc_hash::FxHashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// Elements per chunk of a [`ChunkedVec`] (a power of two).
pub(crate) const CHUNK_LEN: usize = 1 << 14;

/// An append-mostly vector stored in fixed-size chunks. A chunk that fills
/// up is frozen behind an `Arc`: a checkpoint takes it by reference (no
/// copy) and encodes it on another thread. Full chunks only change again if
/// a truncation reaches back into them, which only happens to the batch in
/// flight, before anything could have shared them.
#[derive(Debug)]
pub(crate) struct ChunkedVec<T> {
    /// Full chunks; `None` once cold (dropped from memory: their owner
    /// keeps them elsewhere, and `get` finds nothing in them).
    full: Vec<Option<Arc<Vec<T>>>>,
    /// The chunk being filled: always shorter than `CHUNK_LEN`.
    tail: Vec<T>,
    /// Full chunks before this one are cold.
    first_hot: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        ChunkedVec {
            full: Vec::new(),
            tail: Vec::new(),
            first_hot: 0,
        }
    }
}

impl<T: Clone> ChunkedVec<T> {
    pub fn len(&self) -> usize {
        self.full.len() * CHUNK_LEN + self.tail.len()
    }

    pub fn push(&mut self, value: T) {
        if self.tail.capacity() == 0 {
            self.tail.reserve_exact(CHUNK_LEN);
        }
        self.tail.push(value);
        if self.tail.len() == CHUNK_LEN {
            let filled = std::mem::take(&mut self.tail);
            self.full.push(Some(Arc::new(filled)));
        }
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        let (chunk, at) = (index / CHUNK_LEN, index % CHUNK_LEN);
        match self.full.get(chunk) {
            Some(full) => full.as_ref()?.get(at),
            None if chunk == self.full.len() => self.tail.get(at),
            None => None,
        }
    }

    /// Chunks that are full.
    pub fn full_chunks(&self) -> usize {
        self.full.len()
    }

    /// The elements of chunk `index` (empty if cold or past the end).
    pub fn chunk(&self, index: usize) -> &[T] {
        match self.full.get(index) {
            Some(full) => full.as_ref().map_or(&[], |c| c.as_slice()),
            None if index == self.full.len() => &self.tail,
            None => &[],
        }
    }

    /// A full, hot chunk by reference.
    pub fn shared_chunk(&self, index: usize) -> Option<Arc<Vec<T>>> {
        self.full.get(index)?.clone()
    }

    /// Appends a whole chunk (a restore rebuilds the layout exactly as it
    /// was): only full chunks may precede it, and it holds at most a chunk.
    pub fn push_chunk(&mut self, chunk: Vec<T>) -> Result<(), &'static str> {
        if !self.tail.is_empty() || chunk.len() > CHUNK_LEN {
            return Err("a chunk only follows full chunks, and holds at most CHUNK_LEN");
        }
        if chunk.len() == CHUNK_LEN {
            self.full.push(Some(Arc::new(chunk)));
        } else {
            self.tail = chunk;
        }
        Ok(())
    }

    /// The first full chunk still in memory.
    pub fn first_hot(&self) -> usize {
        self.first_hot
    }

    /// Drops the full chunks before `chunk` from memory.
    pub fn evict_before(&mut self, chunk: usize) {
        let chunk = chunk.min(self.full.len());
        for c in self.full.iter_mut().take(chunk).skip(self.first_hot) {
            *c = None;
        }
        self.first_hot = self.first_hot.max(chunk);
    }

    /// Appends a full chunk that stays cold (a restore of an evicted one):
    /// only cold chunks may precede it.
    pub fn push_cold_chunk(&mut self) -> Result<(), &'static str> {
        if !self.tail.is_empty() || self.first_hot != self.full.len() {
            return Err("a cold chunk only follows cold chunks");
        }
        self.full.push(None);
        self.first_hot += 1;
        Ok(())
    }

    /// Keeps the first `len` elements (never reaching into cold chunks).
    pub fn truncate(&mut self, len: usize) {
        while len < self.full.len() * CHUNK_LEN && self.full.len() > self.first_hot {
            let Some(Some(chunk)) = self.full.pop() else {
                break;
            };
            // Nobody shares a chunk of the batch in flight: no copy.
            self.tail = Arc::try_unwrap(chunk).unwrap_or_else(|shared| (*shared).clone());
        }
        self.tail
            .truncate(len.saturating_sub(self.full.len() * CHUNK_LEN));
    }

    /// Elements from `start` on, in order.
    #[cfg(test)]
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> {
        (start..self.len()).filter_map(|i| self.get(i))
    }

    /// The index of the first element for which `pred` is false, given that
    /// the elements are partitioned by it (as `slice::partition_point`).
    /// Cold chunks are skipped: the answer is at least their length.
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        let hot = self.full.get(self.first_hot..).unwrap_or(&[]);
        let passed =
            hot.partition_point(|c| c.as_ref().and_then(|c| c.last()).is_some_and(&mut pred));
        let chunk = self.first_hot + passed;
        (chunk * CHUNK_LEN + self.chunk(chunk).partition_point(pred)).min(self.len())
    }
}

/// Elements per page of a [`PagedVec`] (a power of two).
pub(crate) const PAGE_LEN: usize = 1 << 12;

/// A vector in pages behind `Arc`s, copy-on-write: a snapshot takes the
/// pages by reference (no copy while the owner waits), and a page still
/// shared with a snapshot is copied at its first change after it, so the
/// copying is spread over the next batches instead of stalling one.
#[derive(Debug)]
pub(crate) struct PagedVec<T> {
    pages: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Default for PagedVec<T> {
    fn default() -> Self {
        PagedVec {
            pages: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone> PagedVec<T> {
    pub fn from_vec(values: Vec<T>) -> PagedVec<T> {
        let mut paged = PagedVec::default();
        for value in values {
            paged.push(value);
        }
        paged
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.pages.get(index / PAGE_LEN)?.get(index % PAGE_LEN)
    }

    /// Copies the page first if a snapshot still shares it.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        let page = self.pages.get_mut(index / PAGE_LEN)?;
        Arc::make_mut(page).get_mut(index % PAGE_LEN)
    }

    pub fn push(&mut self, value: T) {
        if self.len.is_multiple_of(PAGE_LEN) {
            self.pages.push(Arc::new(Vec::with_capacity(PAGE_LEN)));
        }
        if let Some(page) = self.pages.last_mut() {
            Arc::make_mut(page).push(value);
            self.len += 1;
        }
    }

    pub fn pop(&mut self) -> Option<T> {
        let page = self.pages.last_mut()?;
        let value = Arc::make_mut(page).pop();
        if page.is_empty() {
            self.pages.pop();
        }
        if value.is_some() {
            self.len -= 1;
        }
        value
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.pages.iter().flat_map(|page| page.iter())
    }

    /// The pages by reference: what a snapshot takes.
    pub fn pages(&self) -> Vec<Arc<Vec<T>>> {
        self.pages.clone()
    }
}

/// Hash maps per part: power of two.
const PARTS: usize = 64;

/// A hash map split into `PARTS` maps by the key's hash, so that no single
/// growth step rehashes more than 1/`PARTS` of the entries.
#[derive(Debug)]
pub(crate) struct SplitMap<K, V> {
    parts: Vec<FxHashMap<K, V>>,
}

impl<K: Hash + Eq, V> Default for SplitMap<K, V> {
    fn default() -> Self {
        SplitMap {
            parts: (0..PARTS).map(|_| FxHashMap::default()).collect(),
        }
    }
}

impl<K: Hash + Eq, V> SplitMap<K, V> {
    fn part(&self, key: &K) -> usize {
        // Middle bits: hashbrown picks the slot with the low bits and keeps
        // the top 7 as a tag; taking either for the part would make the
        // keys of a part collide in slot or tag (measured: 40% slower).
        let hash = rustc_hash::FxBuildHasher.hash_one(key);
        (hash >> 32) as usize % PARTS
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.parts[self.part(key)].get(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let part = self.part(&key);
        self.parts[part].insert(key, value)
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.parts.iter().flat_map(|p| p.iter())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn chunked_vec_behaves_like_a_vec() {
        let mut chunked = ChunkedVec::default();
        let mut plain = Vec::new();
        // Cross several chunk boundaries, truncate into the middle of a
        // chunk and onto a boundary, and grow again.
        let steps: [(usize, usize); 4] = [
            (CHUNK_LEN * 2 + 5, CHUNK_LEN + 3),
            (CHUNK_LEN, CHUNK_LEN),
            (CHUNK_LEN * 2, 0),
            (7, 7),
        ];
        let mut next = 0u64;
        for (pushes, keep) in steps {
            for _ in 0..pushes {
                chunked.push(next);
                plain.push(next);
                next += 1;
            }
            assert_eq!(chunked.len(), plain.len());
            chunked.truncate(keep.min(chunked.len()));
            plain.truncate(keep.min(plain.len()));
            assert_eq!(chunked.len(), plain.len());
            assert!(chunked.iter_from(0).eq(plain.iter()));
            for probe in [0, 1, CHUNK_LEN - 1, CHUNK_LEN, plain.len()] {
                assert_eq!(chunked.get(probe), plain.get(probe), "get({probe})");
                let from = probe.min(plain.len());
                assert!(
                    chunked.iter_from(from).eq(plain[from..].iter()),
                    "from {from}"
                );
            }
            for bound in [0, 3, next / 2, next] {
                assert_eq!(
                    chunked.partition_point(|&v| v < bound),
                    plain.partition_point(|&v| v < bound),
                    "partition at {bound}"
                );
            }
        }
    }

    #[test]
    fn chunks_round_trip_through_push_chunk() {
        let mut original = ChunkedVec::default();
        for v in 0..(CHUNK_LEN * 2 + 9) as u32 {
            original.push(v);
        }
        assert_eq!(original.full_chunks(), 2);
        let mut restored = ChunkedVec::default();
        for i in 0..=original.full_chunks() {
            restored
                .push_chunk(original.chunk(i).to_vec())
                .expect("fits");
        }
        assert!(restored.iter_from(0).eq(original.iter_from(0)));
        // The partial tail keeps growing in place; no chunk may follow it.
        assert!(restored.push_chunk(vec![1]).is_err());
        restored.push(7);
        assert_eq!(restored.get(CHUNK_LEN * 2 + 9), Some(&7));
        assert!(ChunkedVec::default()
            .push_chunk(vec![0u8; CHUNK_LEN + 1])
            .is_err());
    }

    #[test]
    fn cold_chunks_leave_memory_and_keep_their_places() {
        let mut v = ChunkedVec::default();
        for x in 0..(CHUNK_LEN * 3 + 2) as u64 {
            v.push(x);
        }
        v.evict_before(2);
        assert_eq!((v.first_hot(), v.len()), (2, CHUNK_LEN * 3 + 2));
        assert_eq!(v.get(CHUNK_LEN * 2 - 1), None, "cold");
        assert_eq!(v.get(CHUNK_LEN * 2), Some(&(CHUNK_LEN as u64 * 2)));
        assert_eq!(
            v.partition_point(|&x| x < 5),
            CHUNK_LEN * 2,
            "cold chunks are skipped"
        );
        assert_eq!(
            v.partition_point(|&x| x < CHUNK_LEN as u64 * 3),
            CHUNK_LEN * 3
        );
        // Never past the full chunks: the tail stays.
        v.evict_before(10);
        assert_eq!(v.first_hot(), 3);
        assert_eq!(v.get(CHUNK_LEN * 3 + 1), Some(&(CHUNK_LEN as u64 * 3 + 1)));
        let mut restored: ChunkedVec<u64> = ChunkedVec::default();
        restored.push_cold_chunk().expect("first");
        restored.push_chunk(vec![7; 3]).expect("hot after cold");
        assert!(restored.push_cold_chunk().is_err());
        assert_eq!(
            (restored.len(), restored.get(CHUNK_LEN)),
            (CHUNK_LEN + 3, Some(&7))
        );
    }

    #[test]
    fn paged_vec_behaves_like_a_vec_and_snapshots_stay_put() {
        let mut paged = PagedVec::default();
        let mut plain = Vec::new();
        for v in 0..(PAGE_LEN * 2 + 3) as u64 {
            paged.push(v);
            plain.push(v);
        }
        let snapshot = paged.pages();
        // Changes after the snapshot: an element in page 0, a pop and a
        // push across the last page's start.
        *paged.get_mut(5).expect("in range") = 500;
        plain[5] = 500;
        for _ in 0..4 {
            assert_eq!(paged.pop(), plain.pop());
        }
        paged.push(9);
        plain.push(9);
        assert_eq!(paged.len(), plain.len());
        assert!(paged.iter().eq(plain.iter()));
        assert_eq!(paged.get(plain.len()), None);
        assert_eq!(paged.get_mut(plain.len()), None);
        // The snapshot still holds what it took.
        let taken: Vec<u64> = snapshot.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(taken, (0..(PAGE_LEN * 2 + 3) as u64).collect::<Vec<_>>());
        assert!(PagedVec::from_vec(plain.clone()).iter().eq(plain.iter()));
        let mut empty: PagedVec<u8> = PagedVec::default();
        assert_eq!(empty.pop(), None);
        assert!(empty.is_empty());
    }

    #[test]
    fn split_map_finds_what_it_holds() {
        let mut map = SplitMap::default();
        for k in 0..10_000u128 {
            assert_eq!(map.insert(k << 64 | k, k), None);
        }
        assert_eq!(map.insert(5 << 64 | 5, 0), Some(5));
        assert_eq!(map.parts.iter().map(|p| p.len()).sum::<usize>(), 10_000);
        assert_eq!(map.get(&(5 << 64 | 5)), Some(&0));
        assert_eq!(map.get(&(7 << 64 | 7)), Some(&7));
        assert!(map.get(&(10_000 << 64)).is_none());
        // The keys spread over the parts rather than piling into one.
        assert!(map.parts.iter().all(|p| p.len() > 10_000 / PARTS / 4));
    }
}
