//! Figures of a day's close: `accounts` accounts (90% idle), `transfers`
//! transfers among the busy tenth, then the close, timed; then the next
//! day's close again while a submitter keeps posting, with the longest
//! call that submitter saw during the close and before it.
//!
//! `cargo run --release -p tally-engine --example close_figures -- 1000000 1000000`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rust_decimal::Decimal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_engine::*;

const CHUNK: usize = 8_000;

fn transfers(from_id: u128, n: usize, busy: u64) -> Vec<Transaction> {
    (0..n as u128)
        .map(|i| {
            let id = from_id + i;
            let a = 2 + (id as u64).wrapping_mul(2_654_435_761) % busy;
            let b = 2 + (id as u64).wrapping_mul(40_503) % busy;
            let to = if a == b { 2 + (a - 1) % busy } else { b };
            Transaction::transfer(
                TxnId(id),
                TxnCode(1),
                AccountId(a),
                AccountId(to),
                Decimal::new(1, 2),
                Currency::CNY,
            )
        })
        .collect()
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let accounts = args.first().copied().unwrap_or(1_000_000);
    let count = args.get(1).copied().unwrap_or(1_000_000) as usize;
    let clock = Arc::new(ManualClock::new(Timestamp(1_767_225_600_000_000_000)));
    let engine = Engine::open(Config::memory().with_clock(clock)).unwrap();
    let mut new = vec![NewAccount::internal(AccountId(1), Currency::CNY)];
    new.extend((2..accounts + 2).map(|id| NewAccount {
        allow_negative: true,
        ..NewAccount::customer(AccountId(id), Currency::CNY)
    }));
    for chunk in new.chunks(CHUNK) {
        engine.open_accounts_blocking(chunk.to_vec()).unwrap();
    }
    let busy = (accounts / 10).max(2);
    let loading = Instant::now();
    let mut next_id = 1u128;
    while (next_id as usize) <= count {
        let n = CHUNK.min(count + 1 - next_id as usize);
        engine.submit_blocking(transfers(next_id, n, busy)).unwrap();
        next_id += n as u128;
    }
    println!(
        "{accounts} accounts, {count} transfers in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let date = AccountingDate(20_454);
    let started = Instant::now();
    let report = rt.block_on(engine.close_day(date)).unwrap();
    println!(
        "close of {date}: {:.2} s, ok {}, {} accounts, {} details, {} transactions",
        started.elapsed().as_secs_f64(),
        report.ok,
        report.accounts,
        report.details,
        report.transactions
    );
    // The next day, with a submitter posting throughout.
    let stop = AtomicBool::new(false);
    let rate_during = std::sync::Mutex::new(0f64);
    let closing = AtomicBool::new(false);
    let (before, during, calls, calls_before) = std::thread::scope(|s| {
        let poster = s.spawn(|| {
            let (mut before, mut during, mut calls) = (Duration::ZERO, Duration::ZERO, 0u64);
            let mut calls_before = 0u64;
            let mut id = 1u128 << 64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                engine.submit_blocking(transfers(id, 1_000, busy)).unwrap();
                let took = t.elapsed();
                if closing.load(Ordering::Relaxed) {
                    during = during.max(took);
                    calls += 1;
                } else {
                    before = before.max(took);
                    calls_before += 1;
                }
                id += 1_000;
            }
            (before, during, calls, calls_before)
        });
        std::thread::sleep(Duration::from_secs(2));
        closing.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let report = rt.block_on(engine.close_day(date.next())).unwrap();
        let took = started.elapsed().as_secs_f64();
        println!(
            "close of {} under load: {took:.2} s, ok {}, {} details",
            date.next(),
            report.ok,
            report.details
        );
        *rate_during.lock().unwrap() = took;
        stop.store(true, Ordering::Relaxed);
        poster.join().unwrap()
    });
    let close_s = *rate_during.lock().unwrap();
    println!(
        "submitter: {:.0} transfers/s for 2 s before the close, {:.0} during it",
        calls_before as f64 * 1_000.0 / 2.0,
        calls as f64 * 1_000.0 / close_s.max(1e-9)
    );
    println!(
        "longest call of 1,000 transfers: {:.1} ms before the close, {:.1} ms during it ({calls} calls)",
        before.as_secs_f64() * 1e3,
        during.as_secs_f64() * 1e3
    );
}
