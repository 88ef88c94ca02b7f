//! `--clock simulated`: with one client, timestamps and the state digest
//! are a function of the seed and the input, whatever the shard count —
//! through `run` (checked by `verify` on the kept stores) and `replay`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn tally(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-loadtest"))
        .args(args)
        .output()
        .expect("run tally-loadtest")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn digest_of_run(dir: &Path, shards: &str, seed: &str) -> String {
    let store = dir.join(format!("store-{shards}-{seed}"));
    let store = store.to_str().unwrap();
    ok(tally(&[
        "run",
        "--clock",
        "simulated",
        "--seed",
        seed,
        "--clients",
        "1",
        "--shards",
        shards,
        "--accounts",
        "100",
        "--transactions",
        "3000",
        "--workload",
        "business",
        "--store",
        "sled",
        "--data-dir",
        store,
        "--no-progress",
    ]));
    let verify = ok(tally(&["verify", "--data-dir", store]));
    verify
        .lines()
        .find(|l| l.starts_with("state digest"))
        .expect("verify prints the digest")
        .to_string()
}

#[test]
fn the_same_seed_gives_the_same_digest_whatever_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    let one = digest_of_run(dir.path(), "1", "7");
    let three = digest_of_run(dir.path(), "3", "7");
    assert_eq!(one, three);
    // Another seed starts the clock elsewhere: other timestamps, other digest.
    let other = digest_of_run(dir.path(), "1", "8");
    assert_ne!(one, other);
}

#[test]
fn replay_with_the_simulated_clock_answers_alike_on_any_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ops.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"op":"open_account","id":1,"currency":"CNY","kind":"internal"}"#, "\n",
            r#"{"op":"open_account","id":2,"currency":"CNY"}"#, "\n",
            r#"{"op":"open_account","id":3,"currency":"CNY"}"#, "\n",
            r#"{"op":"transfer","id":10,"from":1,"to":2,"amount":"100.00","currency":"CNY","code":1}"#, "\n",
            r#"{"op":"transfer","id":11,"from":2,"to":3,"amount":"30.00","currency":"CNY","code":1}"#, "\n",
            r#"{"op":"transfer","id":12,"from":3,"to":2,"amount":"99.00","currency":"CNY","code":1}"#, "\n",
        ),
    )
    .unwrap();
    let input = input.to_str().unwrap();
    let replay = |shards: &str| {
        ok(tally(&[
            "replay",
            "--input",
            input,
            "--clock",
            "simulated",
            "--seed",
            "3",
            "--shards",
            shards,
        ]))
    };
    let one = replay("1");
    assert!(one.contains("\"timestamp\""), "{one}");
    assert_eq!(one, replay("2"));
}
