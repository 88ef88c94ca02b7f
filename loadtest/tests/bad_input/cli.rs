//! The CLI surface: bad flags and arguments to `tally-loadtest`. Each must
//! exit with code 2, print nothing on stdout and exactly one line on
//! stderr — the case's text, with `{store}`, `{missing}` and `{input}`
//! standing for the paths the runner makes — and leave an existing store
//! as it was: its log, details and blobs byte for byte, and what `verify`
//! reads from it (every count, the state digest, the log's head). sled's
//! own files (`db`, `conf`, `snap.*`) are left out: sled rewrites them on
//! every open, a refused one included.

use crate::Failures;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tally_engine::SHARDS_MAX;

pub struct Case {
    args: Vec<String>,
    stderr: String,
}

fn case(args: &[&str], stderr: &str) -> Case {
    Case {
        args: args.iter().map(|a| a.to_string()).collect(),
        stderr: stderr.to_string(),
    }
}

pub fn cases() -> Vec<Case> {
    let shards = |command: &str| {
        case(
            &[command, "--shards", "99999"],
            &format!(
                "error: invalid value '99999' for '--shards <SHARDS>': 99999 is not in 1..={SHARDS_MAX}"
            ),
        )
    };
    let mut cases: Vec<Case> = ["run", "verify", "replay", "compare", "crash"]
        .into_iter()
        .map(shards)
        .collect();
    cases.extend([
        case(&["run", "--shards", "-1"], "error: unexpected argument '-1' found"),
        case(&["run", "--accounts", "1"], "error: --accounts must be at least 2 (a transfer needs a payer and a payee), got 1"),
        case(&["run", "--accounts", "ten"], "error: invalid value 'ten' for '--accounts <ACCOUNTS>': invalid digit found in string"),
        case(&["run", "--accounts", "18446744073709551616"], "error: invalid value '18446744073709551616' for '--accounts <ACCOUNTS>': number too large to fit in target type"),
        case(&["run", "--transactions", "0"], "error: --transactions must be at least 1"),
        case(&["run", "--clients", "0"], "error: --clients must be at least 1"),
        case(&["run", "--batch-max", "9000"], "error: --batch-max must be 1..=8190, got 9000"),
        case(&["run", "--hot-fraction", "2"], "error: --hot-fraction must be between 0 and 1, got 2"),
        case(&["run", "--hot-fraction", "NaN"], "error: --hot-fraction must be between 0 and 1, got NaN"),
        case(&["run", "--zipf-s=-1"], "error: --zipf-s must be a finite number >= 0, got -1"),
        case(&["run", "--duration", "0"], "error: --duration must be a positive number of seconds, got 0"),
        case(&["run", "--duration", "inf"], "error: --duration must be a positive number of seconds, got inf"),
        case(&["run", "--seed", "-1"], "error: unexpected argument '-1' found"),
        case(&["run", "--workload", "foo"], "error: invalid value 'foo' for '--workload <WORKLOAD>' [possible values: uniform, zipf, hot, business, redpacket, coupon, storm]"),
        case(&["run", "--store", "disk"], "error: invalid value 'disk' for '--store <STORE>' [possible values: memory, sled]"),
        case(&["run", "--clock", "wall"], "error: invalid value 'wall' for '--clock <CLOCK>' [possible values: system, simulated]"),
        case(&["run", "--bogus"], "error: unexpected argument '--bogus' found"),
        case(&["run", "--rate", "0"], "error: --rate must be at least 1 transfer per second"),
        case(&["verify"], "error: the following required arguments were not provided: --data-dir <DATA_DIR>"),
        case(&["verify", "--data-dir", "{missing}"], "error: {missing} is not a directory"),
        case(&["verify", "--data-dir", "{store}", "--shards", "3"], "error: cannot open the engine: {store}: store was created with 2 shards, configured 3"),
        case(&["replay", "--input", "{missing}"], "error: cannot open {missing}: No such file or directory (os error 2)"),
        case(&["replay", "--input", "{input}", "--store", "sled"], "error: --store sled needs --data-dir"),
        case(&["replay", "--input", "{input}", "--data-dir", "{store}"], "error: --data-dir only applies to --store sled"),
        case(
            &[
                "replay",
                "--input",
                "{input}",
                "--store",
                "sled",
                "--data-dir",
                "{store}",
                "--shards",
                "3",
            ],
            "error: cannot open the engine: {store}: store was created with 2 shards, configured 3",
        ),
        case(&["crash", "--cycles", "0", "--data-dir", "{missing}"], "error: invalid value '0' for '--cycles <CYCLES>': 0 is not in 1..=18446744073709551615"),
        case(&["crash", "--cycles", "1", "--data-dir", "{store}"], "error: --data-dir {store} is not an empty directory; the crash loop needs a fresh store"),
        case(&["frobnicate"], "error: unrecognized subcommand 'frobnicate'"),
        case(&[], "error: 'tally-loadtest' requires a subcommand but one was not provided [subcommands: run, verify, replay, compare, crash, crash-child, help]"),
    ]);
    cases
}

/// What an untouched store must keep: the bytes of tally's own files, and
/// `verify`'s report but for its timing.
fn state(bin: &str, store: &Path) -> (BTreeMap<PathBuf, Vec<u8>>, String) {
    let files = ["wal", "details", "blobs"]
        .iter()
        .flat_map(|d| tree(&store.join(d)))
        .collect();
    let report = match Command::new(bin)
        .arg("verify")
        .arg("--data-dir")
        .arg(store)
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("open (s)"))
            .collect::<Vec<_>>()
            .join("\n"),
        other => format!("verify failed: {other:?}"),
    };
    (files, report)
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    out
}

pub fn run(bin: &str, cases: &[Case], failures: &mut Failures) {
    let Ok(dir) = tempfile::tempdir() else {
        return failures.push("cli: no temporary directory".into());
    };
    let store = dir.path().join("store");
    let input = dir.path().join("ops.jsonl");
    let missing = dir.path().join("missing");
    let lines = concat!(
        r#"{"op":"open_account","id":0,"currency":"CNY","kind":"internal"}"#,
        "\n",
        r#"{"op":"open_account","id":1,"currency":"CNY"}"#,
        "\n",
        r#"{"op":"transfer","id":1,"from":0,"to":1,"amount":"5.00","currency":"CNY"}"#,
        "\n",
    );
    if let Err(e) = std::fs::write(&input, lines) {
        return failures.push(format!("cli: {e}"));
    }
    let made = Command::new(bin)
        .args(["replay", "--store", "sled", "--shards", "2", "--data-dir"])
        .arg(&store)
        .arg("--input")
        .arg(&input)
        .output();
    match made {
        Ok(out) if out.status.success() => {}
        other => return failures.push(format!("cli: the store was not made: {other:?}")),
    }
    let before = state(bin, &store);
    if before.0.is_empty() || !before.1.contains("invariants     OK") {
        return failures.push(format!(
            "cli: the store is not what it should be: {before:?}"
        ));
    }
    let place = |arg: &str| {
        arg.replace("{store}", &store.display().to_string())
            .replace("{missing}", &missing.display().to_string())
            .replace("{input}", &input.display().to_string())
    };
    for c in cases {
        let args: Vec<String> = c.args.iter().map(|a| place(a)).collect();
        let expected = place(&c.stderr);
        let mut check = |what: String| failures.push(format!("cli / {args:?}: {what}"));
        let out = match Command::new(bin).args(&args).output() {
            Ok(out) => out,
            Err(e) => {
                check(format!("cannot start: {e}"));
                continue;
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2) {
            check(format!("exit code {:?}", out.status.code()));
        }
        if !out.stdout.is_empty() {
            check(format!("stdout {}", String::from_utf8_lossy(&out.stdout)));
        }
        if stderr != format!("{expected}\n") {
            check(format!("expected {expected:?}, got {stderr:?}"));
        }
        if state(bin, &store) != before {
            check("the store changed".into());
        }
        if missing.exists() {
            check("created the missing directory".into());
        }
    }
}
