//! The command log (`tally_storage::wal`): `Wal::open`, read only, over a
//! `SimDisk` whose single segment holds the input, each record's payload
//! handed to the engine's batch decoder.
//!
//! The first byte picks a mode: bit 0 rewrites every record's BLAKE3 so
//! that it matches (the fuzzer cannot forge hashes), bit 1 also rewrites
//! each record's `prev` to chain to the record before; the rest is the
//! segment. Bit 2 names the segment after the first record's batch
//! (bytes 8..16) and replays from there, as after a checkpoint released the
//! older segments; otherwise it is segment 0, replayed from batch 0. The
//! store id is taken from the first record (bytes 16..32).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use tally_storage::wal::{genesis, Expect, HASH_BYTES, HEADER_BYTES};
use tally_storage::{Disk, SimDisk, Wal};

/// Makes every record-shaped run of bytes whole: hash (and chain) right.
fn fix(segment: &mut [u8], store: &[u8; 16], chain: bool, from_zero: bool) {
    let mut prev = genesis(store);
    if !from_zero {
        if let Some(first) = segment.get(32..64) {
            prev.copy_from_slice(first);
        }
    }
    let mut at = 0usize;
    while at + HEADER_BYTES + HASH_BYTES <= segment.len() {
        if &segment[at..at + 4] != b"TWAL" {
            break;
        }
        let len = u32::from_le_bytes([
            segment[at + 4],
            segment[at + 5],
            segment[at + 6],
            segment[at + 7],
        ]) as usize;
        let end = at + HEADER_BYTES + len;
        if end + HASH_BYTES > segment.len() {
            break;
        }
        if chain {
            segment[at + 32..at + 64].copy_from_slice(&prev);
        }
        let hash = *blake3::hash(&segment[at..end]).as_bytes();
        segment[end..end + HASH_BYTES].copy_from_slice(&hash);
        prev = hash;
        at = end + HASH_BYTES;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut segment = rest.to_vec();
    let mut store = [0u8; 16];
    if let Some(id) = segment.get(16..32) {
        store.copy_from_slice(id);
    }
    let mut from = 0u64;
    if mode & 4 != 0 {
        if let Some(batch) = segment.get(8..16) {
            let mut b = [0u8; 8];
            b.copy_from_slice(batch);
            from = u64::from_le_bytes(b);
        }
    }
    if mode & 1 != 0 {
        fix(&mut segment, &store, mode & 2 != 0, from == 0);
    }
    let disk = SimDisk::new();
    let name = format!("wal-{from:020}");
    if disk.create(&name).is_err() || disk.append(&name, &segment).is_err() {
        return;
    }
    let disk: Arc<dyn Disk> = Arc::new(disk);
    let expect = Expect {
        from,
        head_at_from: None,
        acknowledged_below: 0,
        read_only: true,
    };
    let _ = Wal::open(disk, store, expect, |_batch, payload| {
        tally_engine::fuzzing::decode_batch(payload).map(drop)
    });
});
