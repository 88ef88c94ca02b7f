//! The `tally-loadtest` binary end to end: small runs on both stores with
//! their reports, verify against a run's store, replay, and bad input. No
//! assertion depends on timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally-loadtest"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("start tally-loadtest")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Exit code 2, nothing on stdout, one `error: …` line on stderr.
fn assert_bad_input(args: &[&str]) -> String {
    let out = run(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{args:?}: stdout {}",
        text(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    stderr
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The checks every small run's report must pass.
fn assert_report(report: &Value, store: &str, committed: u64) {
    assert_eq!(report["invariants_ok"], Value::Bool(true), "{report:#}");
    assert_eq!(report["committed"].as_u64(), Some(committed));
    assert_eq!(report["rejected"].as_u64(), Some(0));
    assert_eq!(report["parameters"]["store"], store);
    let inv = &report["invariants"];
    assert_eq!(
        inv["committed"].as_u64(),
        Some(committed + inv["funding_committed"].as_u64().unwrap())
    );
    assert_eq!(inv["below_floor"].as_array().map(Vec::len), Some(0));
    assert_eq!(inv["broken_chains"].as_array().map(Vec::len), Some(0));
    assert_eq!(inv["state_digest"].as_str().map(str::len), Some(16));
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_us"][key].is_u64(), "latency {key}");
    }
    assert!(report["latency_us"]["p50"].as_u64() <= report["latency_us"]["max"].as_u64());
    assert!(!report["throughput_per_s"].as_array().unwrap().is_empty());
    assert!(report["duration_s"].as_f64().unwrap() > 0.0);
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    // The commit the binary was built from: what git says of this tree,
    // or null only where git cannot tell.
    let head = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| text(&out.stdout).trim().to_string());
    match head {
        Some(head) => assert_eq!(report["git_commit"], head.as_str(), "{report:#}"),
        None => assert!(report["git_commit"].is_null(), "{report:#}"),
    }
}

#[test]
fn memory_run_writes_every_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let md = dir.path().join("report.md");
    let svg = dir.path().join("charts");
    let out = run(&[
        "run",
        "--store",
        "memory",
        "--accounts",
        "100",
        "--transactions",
        "20000",
        "--clients",
        "2",
        "--no-progress",
        "--report-json",
        path(&json),
        "--report-md",
        path(&md),
        "--report-svg-dir",
        path(&svg),
    ]);
    assert_ok(&out);
    let report = read_json(&json);
    assert_report(&report, "memory", 20_000);
    assert_eq!(report["workload"], "uniform");
    let p = &report["parameters"];
    assert_eq!(p["accounts"].as_u64(), Some(100));
    assert_eq!(p["transactions"].as_u64(), Some(20_000));
    assert_eq!(p["clients"].as_u64(), Some(2));
    assert_eq!(p["batch_max"].as_u64(), Some(1000));
    assert_eq!(p["seed"].as_u64(), Some(42));
    assert_eq!(p["sync"], Value::Bool(false));
    assert!(report["bytes_on_disk"].is_null());
    assert_eq!(report["invariants"]["accounts"].as_u64(), Some(101));
    let stdout = text(&out.stdout);
    assert!(has_row(&stdout, "committed", "20000"), "{stdout}");
    assert!(has_row(&stdout, "invariants", "OK"), "{stdout}");
    let digest = report["invariants"]["state_digest"].as_str().unwrap();
    assert!(stdout.contains(digest), "{stdout}");
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("| committed | 20000 |"), "{md}");
    assert!(md.contains("| invariants | OK |"), "{md}");
    for name in ["throughput.svg", "memory.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(svg.join(name)).unwrap();
        assert!(svg.contains("<svg"), "{name}");
    }
}

/// Every file under `dir` with its length and a hash of its content.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, (usize, u64)> {
    use std::hash::{Hash, Hasher};
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                files.insert(path.clone(), (bytes.len(), h.finish()));
            }
        }
    }
    files
}

#[test]
fn sled_run_then_verify_gives_the_same_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let json = dir.path().join("report.json");
    // Three shards: verify must find the count in the store on its own.
    let out = run(&[
        "run",
        "--store",
        "sled",
        "--data-dir",
        path(&store),
        "--accounts",
        "100",
        "--transactions",
        "20000",
        "--clients",
        "2",
        "--shards",
        "3",
        "--workload",
        "zipf",
        "--no-progress",
        "--report-json",
        path(&json),
    ]);
    assert_ok(&out);
    let report = read_json(&json);
    assert_report(&report, "sled", 20_000);
    assert_eq!(report["parameters"]["sync"], Value::Bool(true));
    assert_eq!(report["parameters"]["shards"].as_u64(), Some(3));
    assert!(report["bytes_on_disk"].as_u64().unwrap() > 0);
    assert!(report["bytes_per_transfer"].as_f64().unwrap() > 0.0);
    let digest = report["invariants"]["state_digest"].as_str().unwrap();

    let before = tree(&store);
    let out = run(&["verify", "--data-dir", path(&store)]);
    assert_ok(&out);
    // verify reads only: every file of the store is as it was.
    assert_eq!(tree(&store), before, "verify changed the store");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("state digest   {digest}")),
        "{stdout}"
    );
    assert!(stdout.contains("log head"), "{stdout}");
    assert!(has_row(&stdout, "invariants", "OK"), "{stdout}");
    assert!(has_row(&stdout, "shards", "3"), "{stdout}");

    // An explicit, wrong shard count is refused, not retried.
    let err = assert_bad_input(&["verify", "--data-dir", path(&store), "--shards", "2"]);
    assert!(err.contains("3 shards"), "{err}");

    // A run never reuses a store.
    let err = assert_bad_input(&[
        "run",
        "--store",
        "sled",
        "--data-dir",
        path(&store),
        "--accounts",
        "10",
        "--transactions",
        "10",
    ]);
    assert!(err.contains("not an empty directory"), "{err}");

    // A store held by another process is in use.
    let held = tally_storage::SledStore::open(&store).unwrap();
    let err = assert_bad_input(&["verify", "--data-dir", path(&store)]);
    assert!(err.contains("in use"), "{err}");
    drop(held);
}

#[test]
fn temporary_store_is_deleted_unless_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let small = [
        "run",
        "--store",
        "sled",
        "--accounts",
        "10",
        "--transactions",
        "500",
        "--batch-max",
        "50",
        "--no-sync",
        "--no-progress",
    ];
    let out = bin()
        .args(small)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    let out = bin()
        .args(small)
        .arg("--keep")
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert_ok(&out);
    let stderr = text(&out.stderr);
    let kept = stderr
        .lines()
        .find_map(|l| l.strip_prefix("store kept in "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(Path::new(kept).starts_with(tmp.path()), "{kept}");
    assert_ok(&run(&["verify", "--data-dir", kept]));
}

#[test]
fn hot_workload_bounded_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = run(&[
        "run",
        "--store",
        "memory",
        "--workload",
        "hot",
        "--hot-fraction",
        "0.9",
        "--accounts",
        "50",
        "--duration",
        "0.3",
        "--clients",
        "3",
        "--batch-max",
        "100",
        "--no-progress",
        "--report-json",
        path(&json),
    ]);
    assert_ok(&out);
    let report = read_json(&json);
    let committed = report["committed"].as_u64().unwrap();
    assert!(committed > 0);
    assert_report(&report, "memory", committed);
    assert_eq!(report["workload"], "hot");
    assert!(report["parameters"]["transactions"].is_null());
    assert_eq!(report["parameters"]["duration_limit_s"].as_f64(), Some(0.3));
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let not_empty = dir.path().join("full");
    std::fs::create_dir(&not_empty).unwrap();
    std::fs::write(not_empty.join("file"), "x").unwrap();
    let missing = dir.path().join("missing");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--workload", "foo"], "foo"),
        (vec!["run", "--accounts", "1"], "--accounts"),
        (vec!["run", "--accounts", "ten"], "ten"),
        (vec!["run", "--transactions", "0"], "--transactions"),
        (vec!["run", "--clients", "0"], "--clients"),
        (vec!["run", "--batch-max", "0"], "--batch-max"),
        (vec!["run", "--batch-max", "9000"], "--batch-max"),
        (vec!["run", "--shards", "0"], "--shards"),
        (vec!["run", "--hot-fraction", "2"], "--hot-fraction"),
        (vec!["run", "--zipf-s=-1"], "--zipf-s"),
        (vec!["run", "--duration", "0"], "--duration"),
        (vec!["run", "--duration", "-5"], "--duration"),
        (
            vec!["run", "--duration", "1", "--transactions", "5"],
            "cannot be used with",
        ),
        (vec!["run", "--store", "memory", "--keep"], "--keep"),
        (vec!["run", "--store", "memory", "--no-sync"], "--no-sync"),
        (
            vec!["run", "--store", "sled", "--data-dir", path(&not_empty)],
            "not an empty directory",
        ),
        (
            vec!["run", "--report-json", "/nonexistent/dir/r.json"],
            "not a directory",
        ),
        (vec!["run", "--bogus"], "--bogus"),
        (vec!["verify"], "--data-dir"),
        (
            vec!["verify", "--data-dir", path(&missing)],
            "not a directory",
        ),
        (
            vec!["verify", "--data-dir", path(&not_empty)],
            "not a tally store",
        ),
        (vec!["replay", "--input", path(&missing)], "cannot open"),
        (
            vec!["replay", "--input", "-", "--store", "sled"],
            "--data-dir",
        ),
        (vec![], "subcommand"),
        (vec!["frobnicate"], "frobnicate"),
        (vec!["crash", "--cycles", "1"], "--data-dir"),
        (
            vec!["crash", "--cycles", "0", "--data-dir", path(&missing)],
            "--cycles",
        ),
        (
            vec!["crash", "--cycles", "1", "--data-dir", path(&not_empty)],
            "not an empty directory",
        ),
        (
            vec![
                "crash",
                "--cycles",
                "1",
                "--data-dir",
                path(&missing),
                "--report-json",
                "/nonexistent/dir/r.json",
            ],
            "not a directory",
        ),
    ];
    for (args, expected) in cases {
        let err = assert_bad_input(&args);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    // Nothing was created in the non-empty directory.
    assert_eq!(std::fs::read_dir(&not_empty).unwrap().count(), 1);
}

#[test]
fn help_is_not_an_error() {
    let out = run(&["run", "--help"]);
    assert_ok(&out);
    assert!(text(&out.stdout).contains("--workload"));
}

const REPLAY_INPUT: &str = r#"{"op":"open_account","id":0,"currency":"CNY","kind":"internal"}
{"op":"open_account","id":1,"currency":"CNY","kind":"customer"}
{"op":"open_account","id":"2","currency":"CNY"}

{"op":"transfer","id":"1","from":0,"to":1,"amount":"100.00","currency":"CNY","code":1}
{"op":"transfer","id":2,"from":1,"to":2,"amount":"30.50","currency":"CNY","code":7}
{"op":"transfer","id":3,"from":2,"to":1,"amount":"1000.00","currency":"CNY"}
this is not json
{"op":"transfer","id":"2","from":1,"to":2,"amount":"30.50","currency":"CNY","code":7}
{"op":"balance","account":1}
{"op":"balance","account":2}
{"op":"balance","account":99}
{"op":"frobnicate"}
{"op":"open_account","id":1,"currency":"USD"}
"#;

fn replay_lines(stdout: &[u8]) -> Vec<Value> {
    text(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The outcome lines of REPLAY_INPUT on a fresh store.
fn assert_replay_outcomes(lines: &[Value]) {
    assert_eq!(lines.len(), 13, "{lines:#?}");
    let numbers: Vec<u64> = lines.iter().map(|l| l["line"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    for l in &lines[..3] {
        assert_eq!(l["op"], "open_account");
        assert_eq!(l["result"], serde_json::json!({"Ok": null}), "{l}");
    }
    let outcome = |i: usize| &lines[i]["outcome"];
    assert_eq!(lines[3]["op"], "transfer");
    assert_eq!(outcome(3)["id"].as_u64(), Some(1));
    assert_eq!(outcome(3)["result"], serde_json::json!({"Ok": null}));
    assert_eq!(outcome(3)["duplicate"], Value::Bool(false));
    assert!(outcome(3)["timestamp"].is_u64());
    assert_eq!(outcome(4)["result"], serde_json::json!({"Ok": null}));
    let refused = &outcome(5)["result"]["Err"]["InsufficientFunds"];
    assert_eq!(refused["account"].as_u64(), Some(2), "{}", lines[5]);
    assert_eq!(refused["requested"], "1000.00");
    assert!(lines[6]["error"].as_str().unwrap().contains("expected"));
    assert_eq!(outcome(7)["id"].as_u64(), Some(2));
    assert_eq!(outcome(7)["duplicate"], Value::Bool(true));
    assert_eq!(outcome(7)["result"], serde_json::json!({"Ok": null}));
    assert_eq!(lines[8]["op"], "balance");
    assert_eq!(lines[8]["view"]["balance"], "69.50");
    assert_eq!(lines[9]["view"]["balance"], "30.50");
    assert!(lines[10]["view"].is_null());
    assert!(lines[11]["error"].as_str().unwrap().contains("frobnicate"));
    assert!(lines[12]["result"]["Err"]["ExistsWithDifferentAttributes"].is_u64());
}

#[test]
fn replay_prints_one_outcome_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ops.jsonl");
    std::fs::write(&input, REPLAY_INPUT).unwrap();
    let out = run(&["replay", "--input", path(&input)]);
    assert_ok(&out);
    assert_replay_outcomes(&replay_lines(&out.stdout));
}

#[test]
fn replay_stops_on_error_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ops.jsonl");
    std::fs::write(&input, REPLAY_INPUT).unwrap();
    let out = run(&["replay", "--input", path(&input), "--stop-on-error"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: line 8: "), "{stderr}");
    let lines = replay_lines(&out.stdout);
    // Everything before the bad line was applied and printed, then the error.
    assert_eq!(lines.len(), 7, "{lines:#?}");
    assert_eq!(lines[6]["line"].as_u64(), Some(8));
    assert!(lines[6]["error"].is_string());
}

#[test]
fn replay_on_sled_persists() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ops.jsonl");
    let store = dir.path().join("store");
    std::fs::write(&input, REPLAY_INPUT).unwrap();
    let args = [
        "replay",
        "--input",
        path(&input),
        "--store",
        "sled",
        "--data-dir",
        path(&store),
    ];
    let out = run(&args);
    assert_ok(&out);
    assert_replay_outcomes(&replay_lines(&out.stdout));
    // Again on the same store: every transfer is now a duplicate answer and
    // the balances are unchanged.
    let out = run(&args);
    assert_ok(&out);
    let lines = replay_lines(&out.stdout);
    for i in [3, 4, 5, 7] {
        assert_eq!(
            lines[i]["outcome"]["duplicate"],
            Value::Bool(true),
            "{}",
            lines[i]
        );
    }
    assert_eq!(lines[8]["view"]["balance"], "69.50");
    assert_ok(&run(&["verify", "--data-dir", path(&store)]));
}

/// The business workload on both stores: the catalogue mix commits without
/// a refusal, the invariants hold after reopening, and the same seed writes
/// the same details on either store (the digest also covers wall-clock
/// timestamps, so it differs between runs).
#[test]
fn business_workload_on_memory_and_sled() {
    let dir = tempfile::tempdir().unwrap();
    let mut details_per_store = Vec::new();
    for store in ["memory", "sled"] {
        let json = dir.path().join(format!("{store}.json"));
        let out = run(&[
            "run",
            "--workload",
            "business",
            "--store",
            store,
            "--accounts",
            "300",
            "--transactions",
            "6000",
            "--clients",
            "1",
            "--batch-max",
            "500",
            "--no-progress",
            "--report-json",
            path(&json),
        ]);
        assert_ok(&out);
        let report = read_json(&json);
        assert_report(&report, store, 6_000);
        assert_eq!(report["workload"], "business");
        // Through the Ledger: members' accounts, merchants' three each and
        // the platform's and channels' internal accounts, not the 300
        // plain accounts and a bank of a workload built beside it.
        let accounts = report["invariants"]["accounts"].as_u64().unwrap();
        assert!(accounts > 300 + 3 + 1, "{accounts}");
        // Payments with a fee write three details and withdrawals two per
        // phase: more details than two per transaction.
        let details = report["invariants"]["details"].as_u64().unwrap();
        assert!(details > 2 * 6_000, "{details}");
        details_per_store.push(details);
    }
    assert_eq!(details_per_store[0], details_per_store[1]);
}

/// True when the summary table has the row `key  value` (any padding).
fn has_row(table: &str, key: &str, value: &str) -> bool {
    table.lines().any(|line| {
        line.strip_prefix(key)
            .is_some_and(|rest| rest.starts_with("  ") && rest.trim() == value)
    })
}

/// `submit` lines carry any transaction: a reservation, then its capture
/// for less in a linked chain with a fee transfer, then a void of a second
/// reservation; the balances show exactly those movements.
#[test]
fn replay_submits_two_phase_and_linked_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ops.jsonl");
    let leg = |account: u64, side: &str, amount: &str| {
        format!(r#"{{"account":{account},"side":"{side}","amount":"{amount}","currency":"CNY"}}"#)
    };
    let lines = [
        r#"{"op":"open_account","id":0,"currency":"CNY","kind":"internal"}"#.to_string(),
        r#"{"op":"open_account","id":1,"currency":"CNY"}"#.to_string(),
        r#"{"op":"open_account","id":2,"currency":"CNY"}"#.to_string(),
        r#"{"op":"transfer","id":1,"from":0,"to":1,"amount":"100.00","currency":"CNY"}"#
            .to_string(),
        format!(
            r#"{{"op":"submit","txn":{{"id":"2","code":7,"kind":{{"Pending":{{"timeout_ms":60000}}}},"legs":[{},{}]}}}}"#,
            leg(1, "Debit", "40.00"),
            leg(2, "Credit", "40.00")
        ),
        format!(
            r#"{{"op":"submit","txn":{{"id":3,"code":7,"kind":{{"PostPending":{{"pending_id":2}}}},"linked":true,"legs":[{},{}]}}}}"#,
            leg(1, "Debit", "30.00"),
            leg(2, "Credit", "30.00")
        ),
        format!(
            r#"{{"op":"submit","txn":{{"id":4,"code":8,"legs":[{},{}]}}}}"#,
            leg(2, "Debit", "1.00"),
            leg(0, "Credit", "1.00")
        ),
        format!(
            r#"{{"op":"submit","txn":{{"id":5,"code":7,"kind":{{"Pending":{{"timeout_ms":60000}}}},"legs":[{},{}]}}}}"#,
            leg(1, "Debit", "50.00"),
            leg(2, "Credit", "50.00")
        ),
        r#"{"op":"submit","txn":{"id":6,"code":7,"kind":{"VoidPending":{"pending_id":5}}}}"#
            .to_string(),
        r#"{"op":"balance","account":1}"#.to_string(),
        r#"{"op":"balance","account":2}"#.to_string(),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = run(&["replay", "--input", path(&input)]);
    assert_ok(&out);
    let printed = replay_lines(&out.stdout);
    assert_eq!(printed.len(), lines.len(), "{printed:#?}");
    for p in &printed[3..9] {
        assert_eq!(
            p["outcome"]["result"],
            serde_json::json!({"Ok": null}),
            "{p}"
        );
        assert_eq!(p["outcome"]["duplicate"], false, "{p}");
    }
    assert_eq!(printed[4]["op"], "submit");
    // Alice: 100 − 30 captured (the other 10 released, the 50 voided).
    assert_eq!(printed[9]["view"]["balance"], "70.00", "{}", printed[9]);
    assert_eq!(printed[9]["view"]["reserved"], "0.00", "{}", printed[9]);
    assert_eq!(printed[9]["view"]["currency"], "CNY", "{}", printed[9]);
    // Bob: 30 captured − 1 fee.
    assert_eq!(printed[10]["view"]["balance"], "29.00", "{}", printed[10]);
}

/// Bytes that are not UTF-8 spoil their own line only; a byte-order mark
/// before line 1 is not part of the line; a transaction id above 2^64
/// (given as a string) commits and is printed as a string.
#[test]
fn replay_survives_bad_bytes_a_bom_and_ids_above_2_pow_64() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ops.jsonl");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(
        br#"{"op":"open_account","id":0,"currency":"CNY","kind":"internal"}
{"op":"open_account","id":"1","currency":"CNY"}
{"op":"transfer","id":"340282366920938463463374607431768211455","from":0,"to":1,"amount":"2.00","currency":"CNY"}
{"op":"balance","account":1,"x":"#,
    );
    bytes.extend_from_slice(b"\"\xff\xfe\"}\r\n");
    bytes.extend_from_slice(
        br#"{"op":"transfer","id":7,"from":0,"to":1,"amount":"3.00","currency":"CNY"}
{"op":"balance","account":1}
"#,
    );
    std::fs::write(&input, bytes).unwrap();
    let out = run(&["replay", "--input", path(&input)]);
    assert_ok(&out);
    let lines = replay_lines(&out.stdout);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert_eq!(
        lines[0]["result"],
        serde_json::json!({"Ok": null}),
        "{}",
        lines[0]
    );
    let big = &lines[2]["outcome"];
    assert_eq!(big["id"], "340282366920938463463374607431768211455");
    assert_eq!(big["result"], serde_json::json!({"Ok": null}));
    assert_eq!(lines[3]["line"].as_u64(), Some(4));
    let error = lines[3]["error"].as_str().unwrap();
    assert!(error.contains("not valid UTF-8"), "{error}");
    assert_eq!(
        lines[4]["outcome"]["result"],
        serde_json::json!({"Ok": null})
    );
    assert_eq!(lines[5]["view"]["balance"], "5.00", "{}", lines[5]);
}

#[test]
fn shards_out_of_range_names_the_real_range() {
    let range = format!("1..={}", tally_engine::SHARDS_MAX);
    for command in ["run", "verify", "replay", "compare"] {
        for bad in ["99999", "0", "65"] {
            let err = assert_bad_input(&[command, "--shards", bad]);
            assert!(err.contains(&range), "{command} --shards {bad}: {err}");
            assert!(!err.contains("65535"), "{command}: {err}");
        }
    }
}

/// The report fields README.md documents (top-level names in backticks,
/// the plain names in the parentheses after one are its fields), read from
/// README itself.
fn readme_report_fields() -> Vec<(String, Vec<String>)> {
    readme_fields(
        "Report fields (`--report-json`, stable names):",
        "`--report-md`",
    )
}

/// The names README lists between `heading` and `end`: `name` for a field,
/// `(a, b)` after it for the keys inside it.
fn readme_fields(heading: &str, end: &str) -> Vec<(String, Vec<String>)> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme
        .find(heading)
        .expect("README documents the report fields");
    let text = &readme[start + heading.len()..];
    let text = &text[..text.find(end).unwrap()];
    let is_name = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let mut fields: Vec<(String, Vec<String>)> = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['`', '(']) {
        if rest[open..].starts_with('`') {
            let after = &rest[open + 1..];
            let close = after.find('`').unwrap();
            fields.push((after[..close].to_string(), Vec::new()));
            rest = &after[close + 1..];
        } else {
            let after = &rest[open + 1..];
            let close = after.find(')').unwrap();
            let inner: Vec<String> = after[..close]
                .split(',')
                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|s| is_name(s))
                .collect();
            fields.last_mut().expect("a field before its parentheses").1 = inner;
            rest = &after[close + 1..];
        }
    }
    fields
}

#[test]
fn readme_product_fields_are_the_product_workloads_fields() {
    let fields = readme_fields(
        "Product fields (`--workload redpacket` or `coupon`, added to the above):",
        "End of product fields.",
    );
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert!(fields[0].1.len() >= 10, "{fields:?}");
    for workload in ["redpacket", "coupon"] {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("report.json");
        let out = run(&[
            "run",
            "--store",
            "memory",
            "--workload",
            workload,
            "--accounts",
            "200",
            "--transactions",
            "500",
            "--clients",
            "2",
            "--no-progress",
            "--report-json",
            path(&json),
        ]);
        assert_ok(&out);
        let report = read_json(&json);
        for (name, inner) in &fields {
            let value = report
                .get(name)
                .unwrap_or_else(|| panic!("{workload}: README's `{name}` is not in {report:#}"));
            for key in inner {
                assert!(
                    value.get(key).is_some(),
                    "{workload}: `{name}` ({key}) missing"
                );
            }
        }
    }
}

#[test]
fn the_storm_workload_measures_transfers_alone_and_beside_the_storm_and_checks_everything() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = run(&[
        "run",
        "--store",
        "memory",
        "--workload",
        "storm",
        "--accounts",
        "50",
        "--transactions",
        "3000",
        "--clients",
        "2",
        "--batch-max",
        "100",
        "--no-progress",
        "--report-json",
        path(&json),
    ]);
    assert_ok(&out);
    let report = read_json(&json);
    let products = &report["products"];
    for field in [
        "transfers_alone_per_s",
        "transfers_beside_storm_per_s",
        "storm_redemptions_per_s",
    ] {
        assert!(
            products[field].as_f64().unwrap() > 0.0,
            "{field}: {report:#}"
        );
    }
    // Seven windows interleaved: four alone, three beside the storm, each
    // beside window with redemptions committed inside it.
    let windows = |name: &str| products[name].as_array().unwrap().len();
    assert_eq!(
        (
            windows("transfers_alone_windows"),
            windows("transfers_beside_windows")
        ),
        (4, 3),
        "{report:#}"
    );
    let redemptions = products["redemptions"].as_u64().unwrap();
    assert!(redemptions > 0, "{report:#}");
    assert_eq!(report["invariants_ok"].as_bool(), Some(true));
    // Seven windows of 3,000 / 7 transfers and the redemptions, all
    // committed and found again after reopening.
    assert_eq!(
        report["committed"].as_u64(),
        Some(7 * (3000 / 7) + redemptions),
        "{report:#}"
    );
}

#[test]
fn readme_report_fields_are_the_report_fields() {
    let fields = readme_report_fields();
    // The parse found what README lists, nested names included.
    assert!(fields.len() >= 15, "{fields:?}");
    let latency = fields
        .iter()
        .find(|(name, _)| name == "latency_us")
        .unwrap();
    assert_eq!(latency.1.len(), 5, "{latency:?}");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = run(&[
        "run",
        "--store",
        "memory",
        "--accounts",
        "100",
        "--transactions",
        "2000",
        "--clients",
        "1",
        "--no-progress",
        "--report-json",
        path(&json),
    ]);
    assert_ok(&out);
    let report = read_json(&json);
    let object = report.as_object().unwrap();
    for (name, inner) in &fields {
        let value = object
            .get(name)
            .unwrap_or_else(|| panic!("README's report field `{name}` is not in {report:#}"));
        for key in inner {
            assert!(
                value.get(key).is_some(),
                "README's `{name}` ({key}) is not in {value:#}"
            );
        }
    }
    // And README names every top-level field the report has.
    for key in object.keys() {
        assert!(
            fields.iter().any(|(name, _)| name == key),
            "report field `{key}` is not in README"
        );
    }
}

#[test]
fn crash_loop_kills_reopens_and_checks_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let json = dir.path().join("crash.json");
    let out = run(&[
        "crash",
        "--cycles",
        "4",
        "--data-dir",
        path(&store),
        "--seed",
        "11",
        "--report-json",
        path(&json),
    ]);
    assert_ok(&out);
    let report = read_json(&json);
    assert_eq!(report["cycles"].as_u64(), Some(4), "{report:#}");
    assert_eq!(report["lost"].as_u64(), Some(0), "{report:#}");
    assert_eq!(report["violations"].as_u64(), Some(0), "{report:#}");
    let acknowledged = report["acknowledged"].as_u64().unwrap();
    assert!(acknowledged > 0, "{report:#}");
    assert_eq!(
        report["committed"].as_u64().unwrap() + report["refused"].as_u64().unwrap(),
        acknowledged,
        "{report:#}"
    );
    // The business client was answered too (and checked with the rest).
    let business: u64 = [
        "red_packets_sent",
        "claims",
        "claims_refused",
        "redemptions",
        "redemptions_refused",
    ]
    .iter()
    .map(|k| {
        report[*k]
            .as_u64()
            .unwrap_or_else(|| panic!("no `{k}` in {report:#}"))
    })
    .sum();
    assert!(business > 0, "no business answer: {report:#}");
    let stdout = text(&out.stdout);
    for name in ["cycles", "acknowledged", "lost", "violations"] {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no `{name}` row in {stdout}"));
        assert_eq!(
            row.split_whitespace().last(),
            Some(report[name].to_string().as_str()),
            "{stdout}"
        );
    }
    // The store the loop left is a whole tally store.
    let out = run(&["verify", "--data-dir", path(&store)]);
    assert_ok(&out);
    assert!(text(&out.stdout).contains("OK"), "{}", text(&out.stdout));
    // A store already there is not the loop's to use.
    assert_bad_input(&["crash", "--cycles", "1", "--data-dir", path(&store)]);
}
