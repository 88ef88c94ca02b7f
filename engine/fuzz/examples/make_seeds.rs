//! Writes the seed corpus of every fuzz target from what the code itself
//! produces: a real engine run on a `SimDisk` (log segments, their batch
//! payloads, checkpoint blobs, the store file), a format record, the
//! shipped posting rules and replay lines.
//!
//! `cargo +nightly fuzz run make-seeds` is not how to run it: use
//! `cargo +nightly run --manifest-path engine/fuzz/Cargo.toml --example make-seeds -- engine/fuzz/corpus`.

use rust_decimal::Decimal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tally_engine::*;
use tally_storage::wal::{HASH_BYTES, HEADER_BYTES};
use tally_storage::{Disk, SimDisk};

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn transfer(id: u128, from: u64, to: u64, cents: i64) -> Transaction {
    Transaction::transfer(
        TxnId(id),
        TxnCode(1),
        AccountId(from),
        AccountId(to),
        Decimal::new(cents, 2),
        Currency::CNY,
    )
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let disk = SimDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let config = Config {
        expiry_tick_ms: 0,
        log_segment_bytes: 4096,
        ..Config::on_disk(shared.clone())
    }
    .with_shards(2)
    .with_checkpoint_every(2)
    .with_hot_detail_chunks(0)
    .with_clock(Arc::new(ManualClock::new(Timestamp(
        1_767_225_600_000_000_000,
    ))));
    let engine = Engine::open(config).expect("open engine");
    engine
        .open_accounts_blocking(vec![
            NewAccount::internal(AccountId(1), Currency::CNY),
            NewAccount::customer(AccountId(10), Currency::CNY),
            NewAccount::customer(AccountId(11), Currency::CNY),
        ])
        .expect("open accounts");
    for round in 0..6u128 {
        let base = 1_000 + round * 10;
        let mut pending = transfer(base + 3, 10, 11, 1_00);
        pending.kind = TxnKind::Pending {
            timeout_ms: 3_600_000,
        };
        let mut chained = transfer(base + 4, 1, 11, 1_00);
        chained.linked = true;
        let mut post = transfer(base + 6, 10, 11, 1_00);
        post.kind = TxnKind::PostPending {
            pending_id: TxnId(base + 3),
        };
        post.legs.clear();
        engine
            .submit_blocking(vec![
                transfer(base, 1, 10, 50_00),
                transfer(base + 1, 10, 11, 2_00),
                transfer(base + 2, 11, 10, 900_00),
                pending,
                chained,
                transfer(base + 5, 1, 10, 1_00),
            ])
            .expect("submit");
        engine.submit_blocking(vec![post]).expect("submit");
    }
    engine.shutdown_blocking().expect("shutdown");

    let mut n = 0;
    for dir in ["store", LOG_DIR, DETAILS_DIR] {
        let sub = shared.subdir(dir).expect("subdir");
        for name in sub.list().expect("list") {
            let bytes = sub.read(&name).expect("read").expect("file");
            n += 1;
            if dir == LOG_DIR {
                for mode in [0u8, 1, 3, 4, 5, 7] {
                    let mut seed = vec![mode];
                    seed.extend_from_slice(&bytes);
                    put(&out, "log_record", &format!("{name}-m{mode}"), &seed);
                }
                let mut at = 0;
                while at + HEADER_BYTES + HASH_BYTES <= bytes.len() {
                    let len = u32::from_le_bytes([
                        bytes[at + 4],
                        bytes[at + 5],
                        bytes[at + 6],
                        bytes[at + 7],
                    ]) as usize;
                    let payload = &bytes[at + HEADER_BYTES..at + HEADER_BYTES + len];
                    put(&out, "batch_decoder", &format!("{name}-{at}"), payload);
                    at += HEADER_BYTES + len + HASH_BYTES;
                }
            } else if dir == "store" {
                put(&out, "checkpoint_records", &format!("store-{name}"), &bytes);
            } else if bytes.len() > 32 {
                // Sealed blobs: BLAKE3(store ‖ name ‖ bytes) ‖ bytes.
                put(
                    &out,
                    "checkpoint_records",
                    &format!("blob-{name}"),
                    &bytes[32..],
                );
            }
        }
    }
    put(
        &out,
        "batch_decoder",
        "empty",
        &tally_engine::fuzzing::encode_empty_batch(),
    );
    put(
        &out,
        "checkpoint_records",
        "format",
        &tally_engine::fuzzing::format_record_seed(),
    );
    put(
        &out,
        "posting_rules",
        "default.toml",
        tally_business::DEFAULT_RULES.as_bytes(),
    );
    let lines = [
        r#"{"op":"open_account","id":1,"currency":"CNY","kind":"customer"}"#,
        r#"{"op":"open_account","id":2,"currency":"CNY","kind":"internal"}"#,
        r#"{"op":"transfer","id":"123","from":1,"to":2,"amount":"10.00","currency":"CNY","code":1}"#,
        r#"{"op":"transfer","id":124,"from":1,"to":2,"amount":7,"currency":"CNY"}"#,
        r#"{"op":"submit","txn":{"id":9,"code":2,"kind":{"Pending":{"timeout_ms":60000}},"legs":[{"account":1,"side":"Debit","amount":"5.00","currency":"CNY"},{"account":2,"side":"Credit","amount":"5.00","currency":"CNY"}]}}"#,
        r#"{"op":"submit","txn":{"id":"10","code":2,"kind":{"PostPending":{"pending_id":"9"}},"linked":true,"legs":[]}}"#,
        r#"{"op":"submit","txn":{"id":11,"code":2,"kind":{"VoidPending":{"pending_id":9}},"legs":[]}}"#,
        r#"{"op":"balance","account":1}"#,
    ];
    for (i, line) in lines.iter().enumerate() {
        put(&out, "replay_line", &format!("line-{i}"), line.as_bytes());
    }
    println!("{n} files read; seeds written under {}", out.display());
}
