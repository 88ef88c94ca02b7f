//! Routing: `shard_of` over many account ids, for several shard counts.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tally_engine::{shard_of, AccountId};

const IDS: u64 = 10_000;

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(IDS));
    for shards in [2u16, 8, 64] {
        group.bench_with_input(
            BenchmarkId::new("shard_of_10k_ids", shards),
            &shards,
            |b, &shards| {
                b.iter(|| {
                    let mut owned = [0u32; 64];
                    for id in 0..IDS {
                        let shard = shard_of(AccountId(black_box(id)), shards);
                        owned[usize::from(shard.0)] += 1;
                    }
                    owned
                })
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = routing
}
criterion_main!(benches);
