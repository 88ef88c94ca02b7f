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

/// Elements per chunk of a [`ChunkedVec`] (a power of two).
pub(crate) const CHUNK_LEN: usize = 1 << 14;

/// An append-mostly vector stored in fixed-size chunks.
#[derive(Debug)]
pub(crate) struct ChunkedVec<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
    /// Chunks before this one are cold: dropped from memory (their owner
    /// keeps them elsewhere). `get` finds nothing in them.
    first_hot: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        ChunkedVec {
            chunks: Vec::new(),
            len: 0,
            first_hot: 0,
        }
    }
}

impl<T> ChunkedVec<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, value: T) {
        if self.len.is_multiple_of(CHUNK_LEN) && self.chunks.len() == self.len / CHUNK_LEN {
            self.chunks.push(Vec::with_capacity(CHUNK_LEN));
        }
        self.chunks[self.len / CHUNK_LEN].push(value);
        self.len += 1;
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        if index >= self.len {
            return None;
        }
        self.chunks[index / CHUNK_LEN].get(index % CHUNK_LEN)
    }

    /// Chunks that are full: their contents never change again (short of a
    /// truncation, which only happens to the batch in flight).
    pub fn full_chunks(&self) -> usize {
        self.len / CHUNK_LEN
    }

    /// The elements of chunk `index`.
    pub fn chunk(&self, index: usize) -> &[T] {
        self.chunks.get(index).map_or(&[], |c| c.as_slice())
    }

    /// Appends a whole chunk; the vector must end on a chunk boundary and
    /// `chunk` must not be longer than a chunk (a restore rebuilds the
    /// layout exactly as it was).
    pub fn push_chunk(&mut self, mut chunk: Vec<T>) -> Result<(), &'static str> {
        if self.chunks.len() * CHUNK_LEN != self.len || chunk.len() > CHUNK_LEN {
            return Err("a chunk only follows full chunks, and holds at most CHUNK_LEN");
        }
        if chunk.is_empty() {
            return Ok(());
        }
        chunk.reserve_exact(CHUNK_LEN - chunk.len());
        self.len += chunk.len();
        self.chunks.push(chunk);
        Ok(())
    }

    /// The first chunk still in memory.
    pub fn first_hot(&self) -> usize {
        self.first_hot
    }

    /// Drops the full chunks before `chunk` from memory.
    pub fn evict_before(&mut self, chunk: usize) {
        let chunk = chunk.min(self.full_chunks());
        for c in self.chunks.iter_mut().take(chunk).skip(self.first_hot) {
            *c = Vec::new();
        }
        self.first_hot = self.first_hot.max(chunk);
    }

    /// Appends a full chunk that stays cold (a restore of an evicted one):
    /// only cold chunks may precede it.
    pub fn push_cold_chunk(&mut self) -> Result<(), &'static str> {
        if self.chunks.len() * CHUNK_LEN != self.len || self.first_hot != self.chunks.len() {
            return Err("a cold chunk only follows cold chunks");
        }
        self.chunks.push(Vec::new());
        self.len += CHUNK_LEN;
        self.first_hot += 1;
        Ok(())
    }

    /// Keeps the first `len` elements. Emptied chunks keep their memory (a
    /// rollback is usually followed by new pushes).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for (i, chunk) in self.chunks.iter_mut().enumerate().skip(len / CHUNK_LEN) {
            chunk.truncate(len.saturating_sub(i * CHUNK_LEN));
        }
        self.len = len;
    }

    /// Elements from `start` on, in order.
    #[cfg(test)]
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> {
        let skip = start % CHUNK_LEN;
        self.chunks
            .iter()
            .skip(start / CHUNK_LEN)
            .flatten()
            .skip(skip)
    }

    /// The index of the first element for which `pred` is false, given that
    /// the elements are partitioned by it (as `slice::partition_point`).
    /// Cold chunks are skipped: the answer is at least their length.
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        let hot = self.chunks.get(self.first_hot..).unwrap_or(&[]);
        let full = self.first_hot + hot.partition_point(|c| c.last().is_some_and(&mut pred));
        match self.chunks.get(full) {
            // Chunks left empty by a truncation sort as "false" but hold
            // nothing: the answer never passes `len`.
            Some(chunk) => (full * CHUNK_LEN + chunk.partition_point(pred)).min(self.len),
            None => self.len,
        }
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

    pub fn contains_key(&self, key: &K) -> bool {
        self.parts[self.part(key)].contains_key(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let part = self.part(&key);
        self.parts[part].insert(key, value)
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
    fn split_map_finds_what_it_holds() {
        let mut map = SplitMap::default();
        for k in 0..10_000u128 {
            assert_eq!(map.insert(k << 64 | k, k), None);
        }
        assert_eq!(map.insert(5 << 64 | 5, 0), Some(5));
        assert_eq!(map.parts.iter().map(|p| p.len()).sum::<usize>(), 10_000);
        assert_eq!(map.get(&(5 << 64 | 5)), Some(&0));
        assert_eq!(map.get(&(7 << 64 | 7)), Some(&7));
        assert!(!map.contains_key(&(10_000 << 64)));
        // The keys spread over the parts rather than piling into one.
        assert!(map.parts.iter().all(|p| p.len() > 10_000 / PARTS / 4));
    }
}
