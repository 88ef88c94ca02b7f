//! `run --days N --clock simulated`: the transfers spread over simulated
//! days, each day closed and checked, the tiers applying as the clock
//! moves; the report's day and tier fields, and `verify`'s tier figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn tally(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-loadtest"))
        .args(args)
        .output()
        .expect("run tally-loadtest")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A days run on a kept sled store; its JSON report and `verify`'s output.
fn days_run(dir: &Path, extra: &[&str]) -> (Value, String) {
    let store = dir.join("store");
    let json = dir.join("run.json");
    let mut args = vec![
        "run",
        "--clock",
        "simulated",
        "--store",
        "sled",
        "--no-sync",
        "--data-dir",
        store.to_str().unwrap(),
        "--report-json",
        json.to_str().unwrap(),
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    ok(&tally(&args));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let verify = ok(&tally(&["verify", "--data-dir", store.to_str().unwrap()]));
    (report, verify)
}

/// The number on `verify`'s line `key`.
fn figure(verify: &str, key: &str) -> u64 {
    verify
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("verify prints no {key}: {verify}"))
}

#[test]
fn three_simulated_days_are_closed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (report, verify) = days_run(
        dir.path(),
        &[
            "--days",
            "3",
            "--transactions",
            "3000",
            "--accounts",
            "100",
            "--clients",
            "2",
            "--batch-max",
            "100",
        ],
    );
    assert_eq!(report["invariants_ok"], Value::Bool(true), "{report:#}");
    assert_eq!(report["committed"].as_u64(), Some(3000));
    assert_eq!(report["days_closed"].as_u64(), Some(3));
    assert_eq!(report["close_checks_ok"], Value::Bool(true));
    let (p50, max) = (
        report["close_s"]["p50"].as_f64().unwrap(),
        report["close_s"]["max"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= max, "{p50} {max}");
    // The bank and the customers; none offline in this build.
    assert_eq!(report["accounts_online"].as_u64(), Some(101));
    assert_eq!(report["accounts_offline"].as_u64(), Some(0));
    assert!(report["bytes_hot"].as_u64().unwrap() > 0);
    // Three days: nothing is past a year.
    assert_eq!(report["bytes_cold"].as_u64(), Some(0));
    assert!(
        verify
            .lines()
            .any(|l| l.starts_with("invariants") && l.ends_with("OK")),
        "{verify}"
    );
    assert_eq!(figure(&verify, "accounts online"), 101);
    assert_eq!(figure(&verify, "accounts offline"), 0);
    assert_eq!(figure(&verify, "bytes cold"), 0);
}

#[test]
fn two_simulated_years_move_old_details_to_the_cold_store() {
    let dir = tempfile::tempdir().unwrap();
    // 40,000 transfers on 2 shards: ~2.4 chunks of 16,384 details per
    // shard, the first full within the first year, so past the window
    // (365 days) before the end.
    let (report, verify) = days_run(
        dir.path(),
        &[
            "--days",
            "730",
            "--transactions",
            "40000",
            "--accounts",
            "100",
            "--clients",
            "1",
            "--shards",
            "2",
            "--checkpoint-every",
            "32",
        ],
    );
    assert_eq!(report["invariants_ok"], Value::Bool(true), "{report:#}");
    assert_eq!(report["days_closed"].as_u64(), Some(730));
    assert_eq!(report["close_checks_ok"], Value::Bool(true));
    let cold = report["bytes_cold"].as_u64().unwrap();
    assert!(cold > 0, "{report:#}");
    assert!(report["bytes_hot"].as_u64().unwrap() > 0);
    // verify (read-only, the audit's forward pass through the cold
    // chunks) agrees.
    assert_eq!(figure(&verify, "bytes cold"), cold, "{verify}");
    assert!(
        verify
            .lines()
            .any(|l| l.starts_with("invariants") && l.ends_with("OK")),
        "{verify}"
    );
    assert!(dir.path().join("store/cold/shard-0.seg").is_file());
}

#[test]
fn days_need_the_simulated_clock() {
    for args in [
        &[
            "run",
            "--days",
            "3",
            "--store",
            "memory",
            "--transactions",
            "10",
        ][..],
        &[
            "run",
            "--days",
            "0",
            "--clock",
            "simulated",
            "--store",
            "memory",
            "--transactions",
            "10",
        ],
    ] {
        let out = tally(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: --days"), "{stderr}");
    }
}
