//! Applying a batch on one shard: an in-memory engine with one shard
//! actor, one `submit` of N uniform transfers among 10,000 funded accounts
//! (check, sequence, log to the memory store, apply, answer).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tally_bench::{funded_engine, memory_config, Pairs, Transfers};

const ACCOUNTS: u64 = 10_000;

fn apply_one_shard(c: &mut Criterion) {
    let engine = funded_engine(memory_config(1), ACCOUNTS).expect("setup");
    let mut transfers = Transfers::new(ACCOUNTS, 1, Pairs::Uniform, 42);
    let outcomes = engine.submit_blocking(transfers.batch(1000)).unwrap();
    assert!(outcomes.iter().all(|o| o.is_committed()));

    let mut group = c.benchmark_group("apply_one_shard");
    for n in [100usize, 1_000, 8_190] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("submit_transfers", n), &n, |b, &n| {
            b.iter_batched(
                || transfers.batch(n),
                |batch| engine.submit_blocking(batch).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
    engine.shutdown_blocking().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = apply_one_shard
}
criterion_main!(benches);
