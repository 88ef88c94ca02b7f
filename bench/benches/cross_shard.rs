//! Cross-shard commit: batches of 1,000 transfers on an in-memory engine
//! with 2 and 4 shards, every transfer's two legs on the same shard versus
//! on two different shards (which needs the shards' vote exchange).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tally_bench::{funded_engine, memory_config, Pairs, Transfers};

const ACCOUNTS: u64 = 10_000;
const BATCH: usize = 1_000;

fn cross_shard(c: &mut Criterion) {
    let mut group = c.benchmark_group("cross_shard");
    group.throughput(Throughput::Elements(BATCH as u64));
    for shards in [2u16, 4] {
        let engine = funded_engine(memory_config(shards), ACCOUNTS).expect("setup");
        for (name, pairs) in [
            ("same_shard", Pairs::SameShard),
            ("cross_shard", Pairs::CrossShard),
        ] {
            let mut transfers = Transfers::new(ACCOUNTS, shards, pairs, 42);
            let outcomes = engine.submit_blocking(transfers.batch(BATCH)).unwrap();
            assert!(outcomes.iter().all(|o| o.is_committed()));
            group.bench_with_input(BenchmarkId::new(name, shards), &shards, |b, _| {
                b.iter_batched(
                    || transfers.batch(BATCH),
                    |batch| engine.submit_blocking(batch).unwrap(),
                    BatchSize::PerIteration,
                )
            });
        }
        engine.shutdown_blocking().unwrap();
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = cross_shard
}
criterion_main!(benches);
