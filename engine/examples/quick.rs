#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use std::time::Instant;
use tally_engine::*;

fn main() {
    let shards: u16 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let hot: bool = std::env::args().nth(2).is_some_and(|s| s == "hot");
    let n_accounts: u64 = std::env::var("ACCOUNTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let engine = Engine::open(Config::memory().with_shards(shards)).unwrap();
    let mut accs = vec![NewAccount::internal(AccountId(0), Currency::CNY)];
    accs.extend((1..=n_accounts).map(|i| NewAccount::customer(AccountId(i), Currency::CNY)));
    for chunk in accs.chunks(8000) {
        engine.open_accounts_blocking(chunk.to_vec()).unwrap();
    }
    drop(accs);
    if std::env::var("ONLY_OPEN").is_ok() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        for line in status
            .lines()
            .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        {
            println!("after opening {n_accounts} accounts: {line}");
        }
        return;
    }
    let fund: Vec<Transaction> = (1..=n_accounts)
        .map(|i| {
            Transaction::transfer(
                TxnId(i as u128),
                TxnCode(1),
                AccountId(0),
                AccountId(i),
                Decimal::new(1_000_000_00, 2),
                Currency::CNY,
            )
        })
        .collect();
    for chunk in fund.chunks(8000) {
        engine.submit_blocking(chunk.to_vec()).unwrap();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let total: u64 = std::env::var("TXNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let batch = 1000usize;
    let clients: usize = std::env::var("CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut batches: Vec<Vec<Transaction>> = Vec::new();
    let mut id = 1u128 << 64;
    for _ in 0..(total as usize / batch) {
        let mut b = Vec::with_capacity(batch);
        for _ in 0..batch {
            id += 1;
            let from = rng.gen_range(1..=n_accounts);
            let to = if hot && rng.gen_bool(0.5) {
                1
            } else {
                rng.gen_range(1..=n_accounts)
            };
            b.push(Transaction::transfer(
                TxnId(id),
                TxnCode(2),
                AccountId(from),
                AccountId(to),
                Decimal::new(rng.gen_range(1..1000), 2),
                Currency::CNY,
            ));
        }
        batches.push(b);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cpu_before = process_cpu_seconds();
    let start = Instant::now();
    let mut per_client: Vec<Vec<Vec<Transaction>>> = (0..clients).map(|_| Vec::new()).collect();
    for (i, b) in batches.into_iter().enumerate() {
        per_client[i % clients].push(b);
    }
    let committed: u64 = rt.block_on(async {
        let mut handles = Vec::new();
        for mine in per_client {
            let e = engine.clone();
            handles.push(tokio::spawn(async move {
                let mut ok = 0u64;
                for b in mine {
                    ok += e
                        .submit(b)
                        .await
                        .unwrap()
                        .iter()
                        .filter(|o| o.is_committed())
                        .count() as u64;
                }
                ok
            }));
        }
        let mut sum = 0;
        for h in handles {
            sum += h.await.unwrap();
        }
        sum
    });
    let el = start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    println!(
        "shards {shards} hot {hot}: {committed} committed in {el:.3}s = {:.0}/s",
        committed as f64 / el
    );
    // Both cores busy would be 2.0: below that, threads wait on each other.
    println!(
        "cpu {cpu:.2}s over {el:.3}s wall: {:.2} cores busy",
        cpu / el
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status
            .lines()
            .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        {
            println!("{line}");
        }
    }
    if std::env::var("THREADS").is_ok() {
        print_thread_cpu();
    }
    if std::env::var("NOAUDIT").is_ok() {
        return;
    }
    let audit = engine.audit_blocking().unwrap();
    println!(
        "audit ok {} details {} batches {} ({:.0} transactions per batch)",
        audit.ok(),
        audit.details,
        audit.batches,
        audit.committed as f64 / audit.batches.max(1) as f64
    );
}

/// User + system CPU time of the whole process, from /proc (Linux only; 0
/// elsewhere).
fn process_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat").map_or(0.0, |stat| cpu_seconds(&stat))
}

/// User + system CPU seconds from a /proc `stat` line. Clock ticks are
/// 1/100 s on Linux.
fn cpu_seconds(stat: &str) -> f64 {
    // Fields after the command name, which is in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds per thread since it started (Linux only), for THREADS=1.
fn print_thread_cpu() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map_or("?", |(n, _)| n);
        println!("thread {name:<16} {:.2}s", cpu_seconds(&stat));
    }
}
