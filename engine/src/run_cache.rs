//! The index runs' headers (filter and fences) in RAM: a cache with a byte
//! budget, so that the index's resident memory is bounded whatever the
//! history's length (see ARCHITECTURE.md, "Memory budget").
//!
//! A header leaves the cache when no look-up has used it for
//! [`IDLE_SWEEPS`] checkpoints, or, least recently used first, when the
//! cache is over its budget. A header not in the cache is read again from
//! its blob and checked against the size and BLAKE3 the manifest holds for
//! it (`Run::header`). With ids that grow with time (a counter, a ULID), a
//! look-up skips every run whose key span does not hold the id, so only
//! the newest runs' headers are used and the older ones leave: the index's
//! RAM stays flat. With ids spread over the whole key space every run is
//! used, and the budget caps the cache: beyond it look-ups read headers
//! from disk.

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Checkpoints a header stays without a look-up using it.
pub(crate) const IDLE_SWEEPS: u64 = 2;

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// A number no other run of this process has: the cache's key.
pub(crate) fn next_serial() -> u64 {
    NEXT_SERIAL.fetch_add(1, Ordering::Relaxed)
}

struct Entry<H> {
    header: Arc<H>,
    bytes: usize,
    /// The sweep it was last used in.
    sweep: u64,
    /// Its last use, for least-recently-used eviction.
    tick: u64,
}

struct Inner<H> {
    sweep: u64,
    tick: u64,
    resident: usize,
    entries: FxHashMap<u64, Entry<H>>,
}

/// Shared by every run of one engine (sequencer, checkpoint, merge and
/// audit threads). `H` is the header (`runs::RunHeader`); the caller says
/// how many bytes each one holds.
pub(crate) struct HeaderCache<H> {
    budget: usize,
    inner: Mutex<Inner<H>>,
}

impl<H> std::fmt::Debug for HeaderCache<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("HeaderCache")
            .field("budget", &self.budget)
            .field("resident", &inner.resident)
            .field("headers", &inner.entries.len())
            .finish()
    }
}

impl<H> HeaderCache<H> {
    pub fn new(budget: usize) -> Arc<HeaderCache<H>> {
        Arc::new(HeaderCache {
            budget,
            inner: Mutex::new(Inner {
                sweep: 0,
                tick: 0,
                resident: 0,
                entries: FxHashMap::default(),
            }),
        })
    }

    /// The header of run `serial`, if it is here (and marks it used).
    pub fn get(&self, serial: u64) -> Option<Arc<H>> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let (tick, sweep) = (inner.tick, inner.sweep);
        let entry = inner.entries.get_mut(&serial)?;
        entry.tick = tick;
        entry.sweep = sweep;
        Some(Arc::clone(&entry.header))
    }

    /// Keeps `header`, of `bytes` bytes, as run `serial`'s, then drops the
    /// least recently used others while the cache is over its budget (the
    /// one just put stays: its look-up needs it).
    pub fn put(&self, serial: u64, header: Arc<H>, bytes: usize) {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let entry = Entry {
            header,
            bytes,
            sweep: inner.sweep,
            tick: inner.tick,
        };
        if let Some(old) = inner.entries.insert(serial, entry) {
            inner.resident -= old.bytes;
        }
        inner.resident += bytes;
        while inner.resident > self.budget {
            let oldest = inner
                .entries
                .iter()
                .filter(|(&s, _)| s != serial)
                .min_by_key(|(_, e)| e.tick)
                .map(|(&s, _)| s);
            let Some(oldest) = oldest else { break };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.resident -= e.bytes;
            }
        }
    }

    /// Drops run `serial`'s header (the run is gone).
    pub fn forget(&self, serial: u64) {
        let mut inner = self.inner.lock();
        if let Some(e) = inner.entries.remove(&serial) {
            inner.resident -= e.bytes;
        }
    }

    /// A checkpoint became durable: headers no look-up used for
    /// [`IDLE_SWEEPS`] of them leave.
    pub fn sweep(&self) {
        let mut inner = self.inner.lock();
        inner.sweep += 1;
        let keep_from = inner.sweep.saturating_sub(IDLE_SWEEPS);
        let mut freed = 0;
        inner.entries.retain(|_, e| {
            let keep = e.sweep >= keep_from;
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        inner.resident -= freed;
    }

    /// Bytes of the headers held.
    pub fn resident(&self) -> usize {
        self.inner.lock().resident
    }

    /// Headers held.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A header of `bytes` bytes.
    fn header(bytes: usize) -> (Arc<Vec<u8>>, usize) {
        (Arc::new(vec![0; bytes]), bytes)
    }

    fn put(cache: &HeaderCache<Vec<u8>>, serial: u64, bytes: usize) {
        let (h, n) = header(bytes);
        cache.put(serial, h, n);
    }

    #[test]
    fn over_its_budget_the_least_recently_used_header_leaves() {
        let one = 1_000;
        let cache = HeaderCache::new(2 * one);
        put(&cache, 1, one);
        put(&cache, 2, one);
        assert!(cache.get(1).is_some(), "1 is used: 2 is now the oldest");
        put(&cache, 3, one);
        assert!(cache.get(2).is_none(), "the least recently used left");
        assert!(cache.get(1).is_some() && cache.get(3).is_some());
        assert_eq!(cache.resident(), 2 * one);
        // One header above the whole budget still stays while it is used.
        put(&cache, 4, 10 * one);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(4).is_some());
        cache.forget(4);
        assert_eq!((cache.len(), cache.resident()), (0, 0));
    }

    #[test]
    fn a_header_no_look_up_used_for_two_checkpoints_leaves() {
        let cache = HeaderCache::new(usize::MAX);
        put(&cache, 1, 100);
        put(&cache, 2, 100);
        for _ in 0..IDLE_SWEEPS {
            cache.sweep();
            assert!(cache.get(2).is_some(), "2 keeps being used");
        }
        cache.sweep();
        assert!(cache.get(1).is_none(), "1 was not used: it left");
        assert!(cache.get(2).is_some());
        assert_eq!(cache.resident(), 100);
    }
}
