//! The end-to-end submit path by batch size (the engine's detail and log
//! encodings are private, so their cost is measured here, inside a submit,
//! and their size as the bytes the engine hands its store per transfer):
//! - `memory`: 2 shards on a memory store behind a byte-counting wrapper;
//! - `sled_durable`: 2 shards on sled in a temporary directory, one flush
//!   per group before the answer (the default, durable configuration).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;
use std::time::Duration;
use tally_bench::{custom_config, funded_engine, CountingStore, Pairs, Transfers};
use tally_engine::{Config, Engine};
use tally_storage::MemoryStore;

const ACCOUNTS: u64 = 10_000;
const SHARDS: u16 = 2;
const SIZES: [usize; 3] = [1, 100, 1_000];

fn bench_sizes(c: &mut Criterion, group_name: &str, engine: &Engine) {
    let mut transfers = Transfers::new(ACCOUNTS, SHARDS, Pairs::Uniform, 42);
    let mut group = c.benchmark_group(group_name);
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("submit", n), &n, |b, &n| {
            b.iter_batched(
                || transfers.batch(n),
                |batch| engine.submit_blocking(batch).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn memory(c: &mut Criterion) {
    let store = Arc::new(CountingStore::new(Arc::new(MemoryStore::new())));
    let engine = funded_engine(custom_config(store.clone(), SHARDS), ACCOUNTS).expect("setup");
    // What one group of 1,000 transfers costs the store, outside the timing.
    let mut transfers = Transfers::new(ACCOUNTS, SHARDS, Pairs::Uniform, 7);
    let before = store.counts();
    let outcomes = engine.submit_blocking(transfers.batch(1_000)).unwrap();
    assert!(outcomes.iter().all(|o| o.is_committed()));
    let after = store.counts();
    eprintln!(
        "submit_path: one call of 1000 transfers wrote {} bytes in {} ops over {} store writes: {:.1} bytes per transfer",
        after.bytes - before.bytes,
        after.ops - before.ops,
        after.writes - before.writes,
        (after.bytes - before.bytes) as f64 / 1_000.0
    );
    bench_sizes(c, "submit_path_memory", &engine);
    engine.shutdown_blocking().unwrap();
}

fn sled_durable(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config: Config = Config::sled(dir.path()).with_shards(SHARDS);
    let engine = funded_engine(config, ACCOUNTS).expect("setup");
    bench_sizes(c, "submit_path_sled_durable", &engine);
    engine.shutdown_blocking().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = memory, sled_durable
}
criterion_main!(benches);
