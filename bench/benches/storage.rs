//! Storage group commit: one write of a batch of K records of 100 bytes,
//! then a flush, on sled in a temporary directory (what a durable group
//! costs the log), against the same records as one value, and the memory
//! store's write. Keys grow like a log's and wrap inside a window, so the
//! store stays bounded however long criterion iterates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tally_bench::record_batch;
use tally_storage::{Keyspace, MemoryStore, SledStore, Store, WriteBatch};

const RECORD_BYTES: usize = 100;
const KEY_WINDOW: u64 = 1 << 20;
const LOG: Keyspace = Keyspace(1);

/// Batches of `records` records with keys moving through the window.
fn batches(records: usize) -> impl FnMut() -> WriteBatch {
    let mut next = 0u64;
    move || {
        let batch = record_batch(LOG, next, records, RECORD_BYTES);
        next = (next + records as u64) % KEY_WINDOW;
        batch
    }
}

fn sled_group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut group = c.benchmark_group("storage_sled_write_flush");
    for k in [1usize, 100, 1_000, 10_000] {
        group.throughput(Throughput::Elements(k as u64));
        group.bench_with_input(BenchmarkId::new("records_100B", k), &k, |b, &k| {
            b.iter_batched(
                batches(k),
                |batch| {
                    store.write(batch).unwrap();
                    store.flush().unwrap();
                },
                BatchSize::PerIteration,
            )
        });
    }
    // The same bytes as 1,000 records, written as one value.
    let k = 1_000usize;
    group.throughput(Throughput::Elements(k as u64));
    group.bench_function(BenchmarkId::new("one_value_of_records_100B", k), |b| {
        let mut next = 0u64;
        b.iter_batched(
            || {
                let mut batch = WriteBatch::new();
                batch.put(
                    LOG,
                    next.to_be_bytes().to_vec(),
                    vec![7u8; k * RECORD_BYTES],
                );
                next = (next + 1) % KEY_WINDOW;
                batch
            },
            |batch| {
                store.write(batch).unwrap();
                store.flush().unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn memory_write(c: &mut Criterion) {
    let store = MemoryStore::new();
    let mut group = c.benchmark_group("storage_memory_write");
    for k in [100usize, 1_000, 10_000] {
        group.throughput(Throughput::Elements(k as u64));
        group.bench_with_input(BenchmarkId::new("records_100B", k), &k, |b, &k| {
            b.iter_batched(
                batches(k),
                |batch| store.write(batch).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = sled_group_commit, memory_write
}
criterion_main!(benches);
