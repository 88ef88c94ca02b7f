//! `tally-loadtest compare --against postgres` through the binary.
//!
//! The tests that need a server run when `TALLY_PG_URL` names a server that
//! accepts a connection (start one with `eval "$(bash scripts/postgres.sh)"`).
//! Otherwise each of them writes `SKIPPED <test>: <why>` straight to the
//! process's stderr (past the test harness's capture, so `cargo test` shows
//! it) and passes, unless `TALLY_REQUIRE_PG` is set (to anything but empty
//! or `0`): then it fails with that reason. The bad-input cases need no
//! server and always run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output};
use std::str::FromStr;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tally-loadtest");

fn compare(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("compare")
        .args(args)
        .output()
        .expect("run tally-loadtest")
}

/// Is a server required (`TALLY_REQUIRE_PG` set, not empty, not `0`)?
fn pg_required() -> bool {
    std::env::var("TALLY_REQUIRE_PG").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The server's URL if one is reachable. Otherwise the test is skipped,
/// visibly, or fails when a server is required.
fn pg_url(test: &str) -> Option<String> {
    let why = match std::env::var("TALLY_PG_URL") {
        Ok(url) if !url.is_empty() => match reachable(&url) {
            Ok(()) => return Some(url),
            Err(e) => format!("no PostgreSQL reachable at TALLY_PG_URL: {e}"),
        },
        _ => "TALLY_PG_URL not set".to_string(),
    };
    assert!(!pg_required(), "{test}: TALLY_REQUIRE_PG is set, but {why}");
    // Straight to the process's stderr: the harness captures `eprintln!`
    // of a passing test, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: {why} (set TALLY_REQUIRE_PG=1 to make this a failure)"
    );
    None
}

/// Connects once (5 s at most) and says why not if it cannot.
fn reachable(url: &str) -> Result<(), String> {
    let mut config = postgres::Config::from_str(url).map_err(|e| e.to_string())?;
    config.connect_timeout(Duration::from_secs(5));
    config
        .connect(postgres::NoTls)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// This test binary, running only `test` with `env`: its exit status and
/// its stdout and stderr together.
fn run_this_test(test: &str, env: &[(&str, Option<&str>)]) -> (bool, String) {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command.args(["--exact", test, "--test-threads", "1"]);
    for (key, value) in env {
        match value {
            Some(v) => command.env(key, v),
            None => command.env_remove(key),
        };
    }
    let out = command.output().expect("run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Without a server the server tests fail when one is required and are
/// skipped visibly otherwise; never a silent pass.
#[test]
fn server_tests_fail_when_required_and_say_skipped_otherwise() {
    let nowhere = "postgres://tally:tally@127.0.0.1:1/tally";
    for test in [
        "both_modes_run_and_the_invariants_hold_on_both_sides",
        "hot_payee_with_optimistic_retries_keeps_the_invariants",
    ] {
        for url in [None, Some(nowhere)] {
            let (passed, output) = run_this_test(
                test,
                &[("TALLY_PG_URL", url), ("TALLY_REQUIRE_PG", Some("1"))],
            );
            assert!(
                !passed,
                "{test} with {url:?} passed although required:\n{output}"
            );
            assert!(output.contains("TALLY_REQUIRE_PG is set"), "{output}");
            let (passed, output) =
                run_this_test(test, &[("TALLY_PG_URL", url), ("TALLY_REQUIRE_PG", None)]);
            assert!(passed, "{test} with {url:?}:\n{output}");
            assert!(
                output.contains(&format!("SKIPPED {test}: ")),
                "no visible skip:\n{output}"
            );
        }
    }
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let slash = base.rfind('/').expect("a URL with a path");
    let mut out = format!("{}/{db}", &base[..slash]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout expected");
}

#[test]
fn unreachable_database_is_a_one_line_error_with_exit_code_2() {
    // Port 1 on loopback: nothing listens there, the connection is refused.
    let out = compare(&[
        "--against",
        "postgres",
        "--pg-url",
        "postgres://tally:tally@127.0.0.1:1/tally",
        "--transactions",
        "10",
        "--no-progress",
    ]);
    assert_one_line_error(&out, "cannot connect to PostgreSQL at 127.0.0.1:1/tally");
    // The password is never echoed.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("tally:tally"));
}

#[test]
fn missing_or_bad_url_is_a_one_line_error_with_exit_code_2() {
    let out = Command::new(BIN)
        .args(["compare", "--against", "postgres", "--no-progress"])
        .env_remove("TALLY_PG_URL")
        .output()
        .expect("run tally-loadtest");
    assert_one_line_error(&out, "TALLY_PG_URL");
    let out = compare(&["--against", "postgres", "--pg-url", "mysql:/nope"]);
    assert_one_line_error(&out, "--pg-url");
}

#[test]
fn bad_arguments_are_refused_before_connecting() {
    let url = "postgres://tally:tally@127.0.0.1:1/tally";
    for (args, needle) in [
        (vec!["--accounts", "1"], "--accounts"),
        (vec!["--transactions", "0"], "--transactions"),
        (vec!["--clients", "0"], "--clients"),
        (vec!["--clients", "1000"], "--clients"),
        (vec!["--pg-schema", "x;drop"], "--pg-schema"),
        (vec!["--workload", "business"], "--workload"),
        (vec!["--mode", "dirty"], "--mode"),
    ] {
        let mut all = vec!["--against", "postgres", "--pg-url", url];
        all.extend(&args);
        let out = compare(&all);
        assert_one_line_error(&out, needle);
    }
}

/// Runs a comparison with a server; returns the JSON report and stdout.
fn run_with_server(url: &str, schema: &str, extra: &[&str]) -> (Value, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("compare.json");
    let md = dir.path().join("compare.md");
    let mut args = vec![
        "--against",
        "postgres",
        "--pg-url",
        url,
        "--pg-schema",
        schema,
        "--no-progress",
        "--report-json",
        json.to_str().unwrap(),
        "--report-md",
        md.to_str().unwrap(),
    ];
    args.extend(extra);
    let out = compare(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let markdown = std::fs::read_to_string(&md).unwrap();
    (report, stdout, markdown)
}

fn row<'a>(report: &'a Value, system: &str, mode: &str) -> &'a Value {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["system"] == system && r["mode"] == mode)
        .unwrap_or_else(|| panic!("no {system} {mode} row in {report}"))
}

#[test]
fn both_modes_run_and_the_invariants_hold_on_both_sides() {
    let Some(url) = pg_url("both_modes_run_and_the_invariants_hold_on_both_sides") else {
        return;
    };
    // A database of its own, which the harness creates when missing.
    let url = with_database(&url, "tally_compare_test");
    let (report, stdout, markdown) = run_with_server(
        &url,
        "tally_test_uniform",
        &[
            "--workload",
            "uniform",
            "--accounts",
            "50",
            "--transactions",
            "300",
            "--clients",
            "4",
            "--batch-max",
            "100",
            "--mode",
            "both",
        ],
    );
    assert_eq!(report["invariants_ok"], true, "{report}");
    assert_eq!(report["against"], "postgres");
    assert_eq!(report["results"].as_array().unwrap().len(), 4);
    for (system, mode) in [
        ("tally", "batch 100"),
        ("tally", "1 per call"),
        ("postgres", "locking"),
        ("postgres", "optimistic"),
    ] {
        let r = row(&report, system, mode);
        assert_eq!(r["invariants_ok"], true, "{r}");
        assert!(r["failures"].as_array().unwrap().is_empty(), "{r}");
        let committed = r["committed"].as_u64().unwrap();
        let gave_up = r["gave_up"].as_u64().unwrap();
        let rejected = r["rejected"].as_u64().unwrap();
        // Funding is ample: nothing is refused, every transfer is answered.
        assert_eq!(rejected, 0, "{r}");
        assert_eq!(committed + gave_up, 300, "{r}");
        assert!(r["tx_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["tally_batched_ratio"].as_f64().unwrap() > 0.0, "{r}");
        assert!(stdout.contains(&format!("{system} {mode}")), "{stdout}");
        assert!(markdown.contains(&format!("{system} {mode}")), "{markdown}");
    }
    // Locking never gives up nor retries without conflicts to retry on.
    let locking = row(&report, "postgres", "locking");
    assert_eq!(locking["committed"], 300);
    assert_eq!(locking["gave_up"], 0);
    for system_mode in [("tally", "batch 100"), ("tally", "1 per call")] {
        assert_eq!(row(&report, system_mode.0, system_mode.1)["committed"], 300);
    }
    assert!(stdout.contains("invariants"), "{stdout}");
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn hot_payee_with_optimistic_retries_keeps_the_invariants() {
    let Some(url) = pg_url("hot_payee_with_optimistic_retries_keeps_the_invariants") else {
        return;
    };
    let (report, _, _) = run_with_server(
        &url,
        "tally_test_hot",
        &[
            "--workload",
            "hot",
            "--hot-fraction",
            "0.9",
            "--accounts",
            "20",
            "--transactions",
            "400",
            "--clients",
            "8",
            "--store",
            "memory",
            "--mode",
            "optimistic",
            "--retries-max",
            "3",
        ],
    );
    assert_eq!(report["invariants_ok"], true, "{report}");
    assert_eq!(report["results"].as_array().unwrap().len(), 3);
    let optimistic = row(&report, "postgres", "optimistic");
    assert_eq!(optimistic["invariants_ok"], true, "{optimistic}");
    let committed = optimistic["committed"].as_u64().unwrap();
    let gave_up = optimistic["gave_up"].as_u64().unwrap();
    let retries = optimistic["retries"].as_u64().unwrap();
    assert_eq!(committed + gave_up, 400, "{optimistic}");
    // A transfer gives up only after its three retries.
    assert!(retries >= gave_up * 3, "{optimistic}");
    assert_eq!(row(&report, "tally", "1 per call")["store"], "memory");
    assert_eq!(row(&report, "tally", "1 per call")["committed"], 400);
}
