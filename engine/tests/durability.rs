//! Durability on the embedded sled store, with real files on disk: restart,
//! refusing bad directories, and kill -9 at arbitrary points.
//!
//! The crash test re-executes this test binary as a child (as sled's own
//! tests do): the child submits calls of transfers, pending transfers with
//! their posts and voids, and linked chains, and prints every call and
//! every answer it was given (refusals too). The parent kills it with
//! SIGKILL after a seeded number of answers, reads what is still in the
//! pipe, reopens the store and checks every answer against it: same
//! timestamp and result, whole, chains all or nothing, audit ok; then it
//! sends every answered call again and requires the first answers back as
//! duplicates.
// Amounts are written as yuan_fen (100_00 is 100.00 yuan).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use tally_engine::*;

const BANK: u64 = 1;
const CUSTOMERS: std::ops::Range<u64> = 10..30;
const CHILD_DIR: &str = "TALLY_CRASH_CHILD_DIR";
const CHILD_ROUND: &str = "TALLY_CRASH_CHILD_ROUND";

fn sled(dir: &Path) -> Config {
    Config::sled(dir).with_shards(2)
}

#[test]
fn restart_on_disk_gives_the_same_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(sled(dir.path())).expect("open");
    open_funded(&engine, BANK, &CUSTOMERS.collect::<Vec<_>>(), 100_00);
    let nth = |i: u128| {
        let from = CUSTOMERS.start + (i as u64 % 20);
        let to = CUSTOMERS.start + ((i as u64 * 7 + 1) % 20);
        transfer(1_000 + i, from, to, 3_00)
    };
    let first = submit_one(&engine, nth(0));
    assert!(first.is_committed(), "{first:?}");
    for i in 1..200u128 {
        submit_one(&engine, nth(i));
    }
    let before = engine.audit_blocking().expect("audit");
    let account = engine
        .account_blocking(AccountId(CUSTOMERS.start))
        .expect("read");
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);

    let engine = Engine::open(sled(dir.path())).expect("reopen");
    assert_eq!(engine.audit_blocking().expect("audit"), before);
    assert_eq!(
        engine
            .account_blocking(AccountId(CUSTOMERS.start))
            .expect("read"),
        account
    );
    let again = submit_one(&engine, nth(0));
    assert!(again.duplicate, "idempotency survives a restart: {again:?}");
    assert_eq!(
        (again.timestamp, &again.result),
        (first.timestamp, &first.result)
    );
}

#[test]
fn dropping_without_shutdown_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(sled(dir.path())).expect("open");
    open_funded(&engine, BANK, &[10, 11], 100_00);
    assert!(submit_one(&engine, transfer(5, 10, 11, 7_00)).is_committed());
    drop(engine);
    let engine = Engine::open(sled(dir.path())).expect("reopen");
    assert_eq!(balance(&engine, 11), yuan(107_00));
}

#[test]
fn bad_directories_are_refused_and_left_untouched() {
    // Not a tally store: a directory with someone else's files.
    let foreign = tempfile::tempdir().expect("tempdir");
    std::fs::write(foreign.path().join("notes.txt"), b"mine").expect("write");
    let err = Engine::open(sled(foreign.path())).err().expect("refused");
    assert!(err.to_string().contains("not a tally store"), "{err}");
    assert_eq!(
        std::fs::read(foreign.path().join("notes.txt")).expect("read"),
        b"mine"
    );
    assert_eq!(std::fs::read_dir(foreign.path()).expect("list").count(), 1);

    // In use: a second engine on the same directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Engine::open(sled(dir.path())).expect("open");
    let second = Engine::open(sled(dir.path())).err().expect("in use");
    assert!(
        matches!(
            second,
            OpenError::Storage(tally_storage::StorageError::InUse { .. })
        ),
        "{second}"
    );
    drop(first);

    // Another shard count.
    let err = Engine::open(sled(dir.path()).with_shards(3))
        .err()
        .expect("mismatch");
    assert!(
        matches!(
            err,
            OpenError::ShardCountMismatch {
                stored: 2,
                configured: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "names the path: {err}"
    );
}

/// The only log segment of a store that checkpoints never (so every record
/// stays), and the byte offsets of its records.
fn log_segment(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let wal = dir.join(LOG_DIR);
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .collect();
    segments.sort();
    let path = segments.pop().expect("a segment");
    let bytes = std::fs::read(&path).expect("read segment");
    (path, bytes)
}

/// Offsets of the records in a segment (header: magic, u32 length, ...).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + 64 <= bytes.len() {
        offsets.push(at);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4")) as usize;
        at += 64 + len + 32;
    }
    offsets
}

#[test]
fn damage_in_the_middle_of_the_log_is_refused_not_replayed_as_a_shorter_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No checkpoint, so that the records stay in the log.
    let engine = Engine::open(sled(dir.path()).with_checkpoint_every(0)).expect("open");
    open_funded(&engine, BANK, &[10, 11], 100_00);
    for id in 1..=5 {
        assert!(submit_one(&engine, transfer(id, 10, 11, 1_00)).is_committed());
    }
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    let (path, bytes) = log_segment(dir.path());
    let offsets = record_offsets(&bytes);
    assert!(offsets.len() >= 6, "one record per call: {offsets:?}");
    let mut damaged = bytes.clone();
    damaged[offsets[2] + 70] ^= 0x01;
    std::fs::write(&path, &damaged).expect("damage");
    let err = Engine::open(sled(dir.path())).err().expect("refused");
    assert!(
        matches!(
            &err,
            OpenError::Log {
                error: tally_storage::WalError::Damaged { batch: 2, .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("checksum"), "{err}");
    // A record cut out of the middle breaks the hash chain.
    let mut cut = bytes[..offsets[2]].to_vec();
    cut.extend_from_slice(&bytes[offsets[3]..]);
    std::fs::write(&path, &cut).expect("cut");
    let err = Engine::open(sled(dir.path())).err().expect("refused");
    assert!(err.to_string().contains("batch 3, expected 2"), "{err}");
    // The last record of a cleanly closed store was acknowledged: damaged,
    // it is not taken for a torn tail.
    let mut last = bytes.clone();
    let end = *offsets.last().expect("last");
    last[end + 70] ^= 0x01;
    std::fs::write(&path, &last).expect("damage last");
    let err = Engine::open(sled(dir.path())).err().expect("refused");
    assert!(
        matches!(
            &err,
            OpenError::Log {
                error: tally_storage::WalError::Missing { .. },
                ..
            }
        ),
        "{err}"
    );
    // Put back whole, the store opens with everything.
    std::fs::write(&path, &bytes).expect("restore");
    let engine = Engine::open(sled(dir.path())).expect("reopen");
    assert_eq!(balance(&engine, 11), yuan(105_00));
}

#[test]
fn an_existing_store_can_be_opened_with_its_own_shard_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(sled(dir.path())).expect("open");
    open_funded(&engine, BANK, &[10, 11], 100_00);
    assert!(submit_one(&engine, transfer(5, 10, 11, 7_00)).is_committed());
    let digest = engine.audit_blocking().expect("audit").state_digest;
    let size = engine.size_on_disk().expect("size");
    assert!(size > 0, "a sled store with data occupies disk: {size}");
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);

    // Configured with 5 shards, but told to use the store's own count (2).
    let engine =
        Engine::open(sled(dir.path()).with_shards(5).with_stored_shards()).expect("reopen");
    assert_eq!(engine.shards(), 2);
    assert_eq!(engine.audit_blocking().expect("audit").state_digest, digest);
    assert_eq!(balance(&engine, 11), yuan(107_00));
    drop(engine);

    // A new store takes the configured count.
    let fresh = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(sled(fresh.path()).with_shards(3).with_stored_shards()).expect("new");
    assert_eq!(engine.shards(), 3);
    assert_eq!(
        Engine::open(Config::memory())
            .expect("memory")
            .size_on_disk()
            .expect("size"),
        0
    );
}

/// Ids of the crash test's customers, as a list.
fn crash_customers() -> Vec<u64> {
    CUSTOMERS.collect()
}

/// An amount no customer can ever pay (more than all the money there is):
/// its transfer, and any chain holding it, is refused.
const TOO_MUCH: i64 = 1_000_000_00;

/// One call of the crash test's child: posted transfers (a few too large,
/// refused), pending transfers, posts and voids of earlier pending ones
/// (some of them already settled or unknown, refused), and linked chains of
/// 2–4 transfers (a quarter of them holding a member that must fail, so the
/// whole chain is refused).
fn crash_call(
    rng: &mut ChaCha8Rng,
    round: u64,
    call: u128,
    open_pendings: &mut Vec<Transaction>,
    settled: &[u128],
) -> Vec<Transaction> {
    let customers = crash_customers();
    let target = rng.gen_range(1..40usize);
    let mut txns: Vec<Transaction> = Vec::new();
    let mut next = 0u128;
    let id = |next: &mut u128| {
        *next += 1;
        TxnId(u128::from(round + 1) << 64 | call << 16 | *next)
    };
    let pick = |rng: &mut ChaCha8Rng| customers[rng.gen_range(0..customers.len())];
    while txns.len() < target {
        let (from, to) = (pick(rng), pick(rng));
        let amount = if rng.gen_ratio(1, 30) {
            TOO_MUCH
        } else {
            rng.gen_range(1..50_00)
        };
        let roll = rng.gen_range(0..100);
        match roll {
            0..=49 => txns.push(transfer(id(&mut next).0, from, to, amount)),
            50..=64 => txns.push(Transaction {
                kind: TxnKind::Pending {
                    timeout_ms: 600_000,
                },
                ..transfer(id(&mut next).0, from, to, amount)
            }),
            65..=79 if !open_pendings.is_empty() => {
                // Each open pending transfer is referenced once per call.
                let pending = open_pendings.swap_remove(rng.gen_range(0..open_pendings.len()));
                let kind = if rng.gen_bool(0.6) {
                    TxnKind::PostPending {
                        pending_id: pending.id,
                    }
                } else {
                    TxnKind::VoidPending {
                        pending_id: pending.id,
                    }
                };
                // Half the posts capture less than was reserved.
                let legs = match kind {
                    TxnKind::PostPending { .. } if rng.gen_bool(0.5) => {
                        let full = pending.legs[0].amount;
                        let part = (full / rust_decimal::Decimal::TWO).round_dp(2);
                        let part = part.max(yuan(1));
                        pending
                            .legs
                            .iter()
                            .map(|l| Leg {
                                amount: part,
                                ..l.clone()
                            })
                            .collect()
                    }
                    _ => Vec::new(),
                };
                txns.push(Transaction {
                    kind,
                    ..Transaction::posted(id(&mut next), TxnCode(2002), legs)
                });
            }
            80..=84 => {
                // A post or void of a pending transfer already settled,
                // or never created: refused.
                let pending_id = match settled.get(rng.gen_range(0..settled.len().max(1))) {
                    Some(&settled) if rng.gen_bool(0.7) => TxnId(settled),
                    _ => TxnId(u128::from(round + 1) << 64 | 0xffff_ffff),
                };
                let kind = if rng.gen_bool(0.5) {
                    TxnKind::PostPending { pending_id }
                } else {
                    TxnKind::VoidPending { pending_id }
                };
                txns.push(Transaction {
                    kind,
                    ..Transaction::posted(id(&mut next), TxnCode(2002), Vec::new())
                });
            }
            _ => {
                let len = rng.gen_range(2..=4);
                let doomed = rng.gen_ratio(1, 4).then(|| rng.gen_range(0..len));
                for member in 0..len {
                    let (from, to) = (pick(rng), pick(rng));
                    let amount = if doomed == Some(member) {
                        TOO_MUCH
                    } else {
                        rng.gen_range(1..20_00)
                    };
                    let mut t = transfer(id(&mut next).0, from, to, amount);
                    t.linked = member + 1 < len;
                    txns.push(t);
                }
            }
        }
    }
    txns
}

/// The child's side: submit calls until killed. Before each call it prints
/// `CALL <transactions as JSON>`, after it one `OUT <outcome as JSON>` per
/// transaction, in order — every answer it was given, refusals included.
fn child(dir: &str, round: u64) -> ! {
    // Frequent checkpoints, so that kills land before, during and after
    // them, and reopening loads one and replays the log after it.
    let config = sled(Path::new(dir))
        .with_checkpoint_every(3 + round % 5)
        .with_hot_detail_chunks(0);
    let engine = Engine::open(config).expect("child open");
    let customers = crash_customers();
    open_funded(&engine, BANK, &customers, 0);
    // Funded once: the same ids in every round are duplicates after the first.
    let fund: Vec<Transaction> = customers
        .iter()
        .map(|&c| transfer(u128::from(c), BANK, c, 1_000_00))
        .collect();
    let funded = engine.submit_blocking(fund).expect("fund");
    assert!(funded.iter().all(Outcome::is_committed), "{funded:?}");
    let mut rng = ChaCha8Rng::seed_from_u64(round);
    let mut out = std::io::stdout().lock();
    let mut open_pendings: Vec<Transaction> = Vec::new();
    let mut settled: Vec<u128> = Vec::new();
    for call in 0..100_000u128 {
        let txns = crash_call(&mut rng, round, call, &mut open_pendings, &settled);
        let mut text = format!("CALL {}\n", serde_json::to_string(&txns).expect("json"));
        out.write_all(text.as_bytes()).expect("stdout");
        out.flush().expect("flush");
        let outcomes = engine.submit_blocking(txns.clone()).expect("submit");
        text.clear();
        for (t, o) in txns.iter().zip(&outcomes) {
            text.push_str(&format!(
                "OUT {}\n",
                serde_json::to_string(o).expect("json")
            ));
            match (&t.kind, o.is_committed()) {
                (TxnKind::Pending { .. }, true) => open_pendings.push(t.clone()),
                (
                    TxnKind::PostPending { pending_id } | TxnKind::VoidPending { pending_id },
                    true,
                ) => settled.push(pending_id.0),
                _ => {}
            }
        }
        out.write_all(text.as_bytes()).expect("stdout");
        out.flush().expect("flush");
    }
    std::process::exit(0)
}

/// A call the child made, with the answers the parent read for it (fewer
/// than its transactions when the child was killed before printing them
/// all, or before the engine answered).
struct SeenCall {
    txns: Vec<Transaction>,
    outcomes: Vec<Outcome>,
}

/// Reads the child's output to its end: every call and every answer.
/// Kills the child with SIGKILL once `kill_after` answers were read, and
/// goes on reading what is still in the pipe.
fn read_child(child: &mut std::process::Child, kill_after: usize) -> Vec<SeenCall> {
    let stdout = child.stdout.take().expect("stdout");
    let mut calls: Vec<SeenCall> = Vec::new();
    let mut answers = 0usize;
    let mut killed = false;
    let mut torn: Option<String> = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        // Only the last line can be cut short by the kill.
        assert!(torn.is_none(), "a torn line before the end: {torn:?}");
        // The first call follows the harness's "test … " on its line.
        let call = line.find("CALL ").map(|at| &line[at + "CALL ".len()..]);
        if let Some(json) = call {
            match serde_json::from_str(json) {
                Ok(txns) => calls.push(SeenCall {
                    txns,
                    outcomes: Vec::new(),
                }),
                Err(_) => torn = Some(line),
            }
        } else if let Some(json) = line.strip_prefix("OUT ") {
            match serde_json::from_str::<Outcome>(json) {
                Ok(outcome) => {
                    let call = calls.last_mut().expect("an answer follows its call");
                    let txn = &call.txns[call.outcomes.len()];
                    assert_eq!(outcome.id, txn.id, "answers come in order");
                    call.outcomes.push(outcome);
                    answers += 1;
                }
                Err(_) => torn = Some(line),
            }
        }
        // Other lines are the test harness's own ("running 1 test").
        if answers >= kill_after && !killed {
            child.kill().expect("SIGKILL");
            killed = true;
        }
    }
    if !killed {
        child.kill().expect("SIGKILL");
    }
    child.wait().expect("reap");
    calls
}

/// The chains of a call: index ranges of linked runs (a run ends with the
/// first member not linked, or at the end of the call).
fn chains(txns: &[Transaction]) -> Vec<std::ops::Range<usize>> {
    let mut chains = Vec::new();
    let mut start = 0;
    for (i, t) in txns.iter().enumerate() {
        if !t.linked || i + 1 == txns.len() {
            if i > start {
                chains.push(start..i + 1);
            }
            start = i + 1;
        }
    }
    chains
}

#[test]
fn kill_9_anywhere_loses_nothing_acknowledged() {
    if let (Ok(dir), Ok(round)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_ROUND)) {
        child(&dir, round.parse().expect("round"));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // CI runs 6 rounds of one seed; a soak run sets more of another.
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(env("TALLY_CRASH_SEED", 0x7a11));
    let rt = runtime();
    let mut calls: Vec<SeenCall> = Vec::new();
    // How often each kind of answer was seen, over all rounds.
    let (mut committed, mut refused, mut chains_whole, mut chains_refused) = (0, 0, 0, 0);
    let (mut posts, mut voids) = (0, 0);
    for round in 0..env("TALLY_CRASH_ROUNDS", 6) {
        let kill_after = rng.gen_range(1..3_000usize);
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "kill_9_anywhere_loses_nothing_acknowledged",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let seen = read_child(&mut child, kill_after);
        let answers: usize = seen.iter().map(|c| c.outcomes.len()).sum();
        assert!(
            answers >= kill_after,
            "round {round}: the child answered {answers} of {kill_after} before it died"
        );

        let engine = Engine::open(sled(dir.path())).expect("reopen after kill");
        assert_audit_ok(&engine);
        // What the store says of every transaction the child was answered
        // for, in every round so far, and of the chains of calls whose
        // answers were never printed.
        for (c, call) in calls.iter().chain(&seen).enumerate() {
            let views: Vec<Option<TxnView>> = call
                .txns
                .iter()
                .map(|t| rt.block_on(engine.transaction(t.id)).expect("read"))
                .collect();
            for ((t, o), view) in call.txns.iter().zip(&call.outcomes).zip(&views) {
                let id = t.id.0;
                if o.timestamp.is_none() {
                    // Refused before it was sequenced (a two-phase reference
                    // the sequencer refuses at once): never logged.
                    assert!(o.result.is_err(), "round {round}: {o:?}");
                    assert_eq!(view, &None, "round {round}: unsequenced {id} stored");
                    continue;
                }
                let Some(view) = view else {
                    panic!("round {round}: answered {o:?}, lost");
                };
                assert_eq!(
                    (Some(view.timestamp), &view.result),
                    (o.timestamp, &o.result),
                    "round {round}: {id} stored otherwise than answered"
                );
                if o.is_committed() {
                    let legs = match t.kind {
                        TxnKind::Posted | TxnKind::Pending { .. } => t.legs.len(),
                        _ => 2,
                    };
                    assert_eq!(view.details.len(), legs, "round {round}: {id} is partial");
                } else {
                    assert!(view.details.is_empty(), "round {round}: refused {id} wrote");
                }
            }
            for chain in chains(&call.txns) {
                let members = &views[chain.clone()];
                let applied = members
                    .iter()
                    .filter(|v| v.as_ref().is_some_and(|v| v.result.is_ok()))
                    .count();
                assert!(
                    applied == 0 || applied == members.len(),
                    "round {round}, call {c}: chain {chain:?} applied {applied} of {}",
                    members.len()
                );
            }
        }
        calls.extend(seen);
        // Every answered transaction, sent again with the same content in
        // the same calls, is a duplicate with its first answer. A call with
        // any answer printed was answered whole (the child prints after the
        // engine answered), so all of it is sent again.
        for call in calls.iter().filter(|c| !c.outcomes.is_empty()) {
            let again = engine.submit_blocking(call.txns.clone()).expect("resubmit");
            assert_eq!(again.len(), call.txns.len());
            for (k, again) in again.iter().enumerate() {
                let Some(first) = call.outcomes.get(k) else {
                    // Answered to the child, but not printed before the kill:
                    // sequenced, so a duplicate now, or refused unsequenced.
                    assert!(
                        again.duplicate || (again.timestamp.is_none() && again.result.is_err()),
                        "round {round}: {again:?} was applied again"
                    );
                    continue;
                };
                // A refusal that was never sequenced is refused again the
                // same way; everything sequenced is a duplicate.
                assert_eq!(
                    again.duplicate,
                    first.timestamp.is_some(),
                    "round {round}: {again:?} after {first:?}"
                );
                assert_eq!(
                    (again.timestamp, &again.result),
                    (first.timestamp, &first.result),
                    "round {round}: {:?} answered otherwise the second time",
                    first.id
                );
            }
        }
        engine.shutdown_blocking().expect("shutdown");
    }
    // Every kind of answer occurred.
    for call in &calls {
        for (t, o) in call.txns.iter().zip(&call.outcomes) {
            if o.is_committed() {
                committed += 1;
                match t.kind {
                    TxnKind::PostPending { .. } => posts += 1,
                    TxnKind::VoidPending { .. } => voids += 1,
                    _ => {}
                }
            } else {
                refused += 1;
            }
        }
        for chain in chains(&call.txns) {
            let answers = &call.outcomes
                [chain.start.min(call.outcomes.len())..chain.end.min(call.outcomes.len())];
            if answers.len() == chain.len() {
                if answers.iter().all(Outcome::is_committed) {
                    chains_whole += 1;
                } else {
                    chains_refused += 1;
                }
            }
        }
    }
    let counts = [
        committed,
        refused,
        posts,
        voids,
        chains_whole,
        chains_refused,
    ];
    eprintln!(
        "kill -9: committed {committed}, refused {refused}, posts {posts}, voids {voids}, \
         chains committed {chains_whole}, chains refused {chains_refused}"
    );
    assert!(
        counts.iter().all(|&n| n > 0),
        "committed, refused, posts, voids, chains committed, chains refused: {counts:?}"
    );
}

#[test]
fn metadata_records_survive_restarts_by_replay_and_by_checkpoint() {
    let rt = runtime();
    for every in [0u64, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = || sled(dir.path()).with_checkpoint_every(every);
        let engine = Engine::open(config()).expect("open");
        let put = |engine: &Engine, records: Vec<(Vec<u8>, Vec<u8>)>| {
            rt.block_on(engine.put_records(records)).expect("put")
        };
        let results = put(
            &engine,
            vec![
                (b"member/2".to_vec(), b"bob".to_vec()),
                (b"member/1".to_vec(), b"alice".to_vec()),
                (b"other/1".to_vec(), b"x".to_vec()),
                (Vec::new(), b"no key".to_vec()),
                (vec![b'k'; RECORD_KEY_MAX + 1], Vec::new()),
                (b"big".to_vec(), vec![0; RECORD_VALUE_MAX + 1]),
            ],
        );
        assert!(results[..3].iter().all(Result::is_ok), "{results:?}");
        for bad in &results[3..] {
            assert!(
                matches!(bad, Err(AccountError::RecordSize { .. })),
                "{bad:?}"
            );
        }
        // A later write of a key replaces it.
        assert!(put(&engine, vec![(b"member/2".to_vec(), b"bob v2".to_vec())])[0].is_ok());
        for _ in 0..3 {
            // Batches, so that a checkpoint (every 2) falls in between.
            open_funded(&engine, BANK, &[10, 11], 0);
        }
        drop(engine);

        let engine = Engine::open(config()).expect("reopen");
        let members = rt
            .block_on(engine.records(b"member/".to_vec(), None, 10))
            .expect("records");
        assert_eq!(
            members,
            vec![
                (b"member/1".to_vec(), b"alice".to_vec()),
                (b"member/2".to_vec(), b"bob v2".to_vec()),
            ],
            "checkpoint every {every}"
        );
        let after_first = rt
            .block_on(engine.records(b"member/".to_vec(), Some(b"member/1".to_vec()), 10))
            .expect("records");
        assert_eq!(after_first, members[1..]);
        let none = rt
            .block_on(engine.records(b"big".to_vec(), None, 10))
            .expect("records");
        assert!(none.is_empty(), "a refused record was not kept");
    }
}

#[test]
fn metadata_records_are_bounded_in_total_bytes() {
    let rt = runtime();
    let config = Config {
        records_bytes_max: 100,
        ..Config::memory()
    };
    let engine = Engine::open(config).expect("open");
    let put = |key: &[u8], len: usize| {
        rt.block_on(engine.put_records(vec![(key.to_vec(), vec![7; len])]))
            .expect("put")
            .remove(0)
    };
    assert_eq!(put(b"a", 59), Ok(())); // 60 bytes
    assert_eq!(put(b"b", 40), Err(AccountError::RecordsFull { max: 100 })); // 101
    assert_eq!(put(b"b", 39), Ok(())); // 100: at the bound
                                       // Replacing a record counts its new size, not both.
    assert_eq!(put(b"a", 10), Ok(())); // 11 + 40 = 51
    assert_eq!(put(b"c", 48), Ok(())); // 100
    assert_eq!(put(b"d", 0), Err(AccountError::RecordsFull { max: 100 }));
    let all = rt
        .block_on(engine.records(Vec::new(), None, 10))
        .expect("records");
    let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, [b"a".as_slice(), b"b", b"c"]);
}
