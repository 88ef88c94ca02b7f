//! Many tokio tasks submitting at once, across shards, with overdrafts,
//! pending transactions and resubmissions mixed in: money is conserved, no
//! account goes below its limit, every detail chain links, and what the
//! callers saw committed is exactly what the engine holds.
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
use std::collections::HashSet;
use tally_engine::*;

const BANK: u64 = 1;
const TASKS: u64 = 16;
const CALLS_PER_TASK: u64 = 40;

fn customers() -> Vec<u64> {
    (100..140).collect()
}

async fn client(engine: Engine, task: u64) -> (HashSet<u128>, u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(task);
    let mut committed = HashSet::new();
    let mut duplicates = 0;
    let accounts = customers();
    let mut sent: Vec<Transaction> = Vec::new();
    for call in 0..CALLS_PER_TASK {
        let mut txns = Vec::new();
        for i in 0..rng.gen_range(1..30u64) {
            let id = u128::from(task) << 64 | u128::from(call * 1_000 + i);
            let from = accounts[rng.gen_range(0..accounts.len())];
            let to = accounts[rng.gen_range(0..accounts.len())];
            // Amounts large enough that overdrafts are common.
            let mut txn = transfer(id, from, to, rng.gen_range(1..40_00));
            if rng.gen_ratio(1, 10) {
                txn.kind = TxnKind::Pending { timeout_ms: 1 };
            }
            if rng.gen_ratio(1, 10) {
                txn.linked = true;
            }
            txns.push(txn);
        }
        if let Some(last) = txns.last_mut() {
            last.linked = false;
        }
        if !sent.is_empty() && rng.gen_ratio(1, 4) {
            txns.push(sent[rng.gen_range(0..sent.len())].clone());
        }
        sent.extend(txns.iter().cloned());
        let outcomes = engine.submit(txns).await.expect("submit");
        for o in outcomes {
            if o.duplicate {
                duplicates += 1;
            } else if o.is_committed() {
                assert!(committed.insert(o.id.0), "committed twice: {:?}", o.id);
            }
        }
    }
    (committed, duplicates)
}

#[test]
fn concurrent_submitters_conserve_money() {
    for shards in [1u16, 2, 8] {
        let engine = Engine::open(Config::memory().with_shards(shards)).expect("open");
        open_funded(&engine, BANK, &customers(), 100_00);
        let before = engine.audit_blocking().expect("audit");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime");
        let results = rt.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| tokio::spawn(client(engine.clone(), t)))
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.push(t.await.expect("task"));
            }
            all
        });
        let committed: usize = results.iter().map(|(c, _)| c.len()).sum();
        let duplicates: u64 = results.iter().map(|(_, d)| d).sum();
        let audit = assert_audit_ok(&engine);
        assert_eq!(
            audit.committed - before.committed,
            committed as u64,
            "{shards} shards: the engine holds exactly what callers saw committed"
        );
        assert!(
            committed > 1_000,
            "too few commits to mean anything: {committed}"
        );
        assert!(
            audit.rejected > 100,
            "overdrafts were expected: {}",
            audit.rejected
        );
        assert!(duplicates > 0, "resubmissions were expected");
        let total: rust_decimal::Decimal = customers().iter().map(|&c| balance(&engine, c)).sum();
        assert_eq!(
            total,
            yuan(100_00) * rust_decimal::Decimal::from(customers().len()),
            "{shards} shards: customers only paid each other"
        );
        for c in customers() {
            let a = engine
                .account_blocking(AccountId(c))
                .expect("read")
                .expect("exists");
            assert!(a.balance >= a.reserved, "{c}: reserved more than it has");
        }
        engine.shutdown_blocking().expect("shutdown");
    }
}

/// The same transaction submitted by many callers at once, while big
/// requests fill batches around it: whichever batch of a drain it lands in,
/// it applies once; every other answer is that first outcome, marked
/// duplicate. The race must really happen: over the rounds, the copy that
/// applied must at least once come from a caller with a full request in
/// front of it and at least once from a caller sending it alone (the
/// callers are started in a different order each round).
#[test]
fn one_id_from_many_callers_at_once_applies_once() {
    const ROUNDS_MIN: u128 = 20;
    const ROUNDS_MAX: u128 = 400;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = Engine::open(Config::memory().with_shards(2)).expect("open");
    open_funded(&engine, BANK, &[1_000, 1_001], 100_000_00);
    open_funded(&engine, 2, &[10, 11], 100_00);
    // Enough for every round to move 1.00 from 10 to 11.
    let top_up = transfer(1 << 101, 2, 10, ROUNDS_MAX as i64 * 1_00);
    assert_eq!(submit_one(&engine, top_up).result, Ok(()));
    // Rounds won by a caller with a full request / alone.
    let (mut won_full, mut won_alone) = (0u32, 0u32);
    let mut round = 0u128;
    while round < ROUNDS_MIN || (won_full == 0 || won_alone == 0) && round < ROUNDS_MAX {
        let hot = transfer(1 << 100 | round, 10, 11, 1_00);
        let outcomes = rt.block_on(async {
            let mut tasks = Vec::new();
            // Every fourth caller sends a full request in front of the hot
            // transaction, so that batches fill up and are cut between the
            // copies. Odd rounds favour the lone callers (started first,
            // while the others build their requests), even rounds the full
            // ones (requests built before they start, started first, the
            // lone callers yielding a few times before they send).
            let favour_full = round.is_multiple_of(2);
            let mut order: Vec<u128> = (0..24).collect();
            order.sort_by_key(|task| (task % 4 == 0) != favour_full);
            for task in order {
                let engine = engine.clone();
                let hot = hot.clone();
                let filler = move || -> Vec<Transaction> {
                    (0..SUBMIT_TRANSACTIONS_MAX as u128 - 1)
                        .map(|i| transfer(round << 64 | task << 32 | i, 1_000, 1_001, 1))
                        .collect()
                };
                let built = (favour_full && task % 4 == 0).then(filler);
                tasks.push(tokio::spawn(async move {
                    let mut txns: Vec<Transaction> = Vec::new();
                    if task % 4 == 0 {
                        txns = built.unwrap_or_else(filler);
                    } else if favour_full {
                        for _ in 0..3 {
                            tokio::task::yield_now().await;
                        }
                    }
                    txns.push(hot);
                    let outcome = engine
                        .submit(txns)
                        .await
                        .expect("submit")
                        .pop()
                        .expect("outcome");
                    (task, outcome)
                }));
            }
            let mut outcomes = Vec::new();
            for t in tasks {
                outcomes.push(t.await.expect("task"));
            }
            outcomes
        });
        let first: Vec<&(u128, Outcome)> = outcomes.iter().filter(|(_, o)| !o.duplicate).collect();
        assert_eq!(first.len(), 1, "round {round}: {outcomes:?}");
        let (winner, first) = first[0];
        assert_eq!(first.result, Ok(()), "round {round}");
        if winner % 4 == 0 {
            won_full += 1;
        } else {
            won_alone += 1;
        }
        for (_, o) in &outcomes {
            assert_eq!((o.timestamp, &o.result), (first.timestamp, &first.result));
        }
        assert_eq!(
            balance(&engine, 11),
            yuan(100_00 + 1_00 * (round as i64 + 1))
        );
        round += 1;
    }
    assert!(
        won_full > 0 && won_alone > 0,
        "the race never happened both ways in {round} rounds: {won_full} won by a full request, {won_alone} by a lone copy"
    );
    assert_audit_ok(&engine);
}

/// Pending transfers posted and voided by racing callers while the engine
/// pipelines (one batch executing while the next is built), some in the
/// same call that creates them, some with deadlines short enough to expire
/// mid-race. Each pending settles at most once; the balances are exactly
/// what the committed posts moved, whatever expired or was voided. The race
/// must really happen: posts and voids commit, some in the call that
/// created their pending and some on another caller's pending, and some
/// resolutions are refused because a racing one settled the pending first.
#[test]
fn pending_transfers_resolved_by_racing_callers_settle_once() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    const CUSTOMERS: std::ops::Range<u64> = 200..230;
    for shards in [1u16, 2, 8] {
        let engine = Engine::open(Config::memory().with_shards(shards)).expect("open");
        let customers: Vec<u64> = CUSTOMERS.collect();
        open_funded(&engine, BANK, &customers, 1_000_00);
        let created: Arc<Mutex<Created>> = Arc::default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime");
        // Every committed post or void: (pending id, posted), and what
        // each racing caller saw, by kind.
        let (mut resolutions, kinds): (Vec<(u128, bool)>, Kinds) = rt.block_on(async {
            let mut tasks = Vec::new();
            for task in 0..12u128 {
                let engine = engine.clone();
                let created = created.clone();
                tasks.push(tokio::spawn(async move {
                    let mut rng = ChaCha8Rng::seed_from_u64(task as u64 ^ u64::from(shards) << 32);
                    let mut seen = Vec::new();
                    let mut kinds = Kinds::default();
                    for call in 0..60u128 {
                        let mut txns = Vec::new();
                        // New pendings; a few resolved in the same call.
                        for i in 0..rng.gen_range(1..8u128) {
                            let id = 7 << 120 | task << 64 | call << 16 | i;
                            let (from, to) = (rng.gen_range(CUSTOMERS), rng.gen_range(CUSTOMERS));
                            let cents = rng.gen_range(1..50_00);
                            let mut t = transfer(id, from, to, cents);
                            t.kind = TxnKind::Pending {
                                timeout_ms: if rng.gen_ratio(1, 5) { 1 } else { 60_000 },
                            };
                            created.lock().expect("lock").insert(id, (from, to, cents));
                            txns.push(t);
                            if rng.gen_ratio(1, 6) {
                                txns.push(resolve(id, &mut rng, task << 12 | call));
                            }
                        }
                        // Resolutions of pendings from any task, racing.
                        let known: Vec<u128> =
                            created.lock().expect("lock").keys().copied().collect();
                        for _ in 0..rng.gen_range(0..6) {
                            let pending = known[rng.gen_range(0..known.len())];
                            txns.push(resolve(pending, &mut rng, task << 12 | call));
                        }
                        let outcomes = engine.submit(txns.clone()).await.expect("submit");
                        let created_here: Vec<TxnId> = txns
                            .iter()
                            .filter(|t| matches!(t.kind, TxnKind::Pending { .. }))
                            .map(|t| t.id)
                            .collect();
                        for (t, o) in txns.iter().zip(outcomes) {
                            let Some((pending, posted)) = resolution(t) else {
                                continue;
                            };
                            if o.duplicate {
                                continue;
                            }
                            match &o.result {
                                Ok(()) => {
                                    seen.push((pending, posted));
                                    kinds.count(if posted { "post" } else { "void" });
                                    if created_here.contains(&TxnId(pending)) {
                                        kinds.count("resolved in the call that created it");
                                    } else if (pending >> 64) & 0xff != task {
                                        kinds.count("resolved another caller's pending");
                                    }
                                }
                                Err(
                                    Reject::PendingAlreadyPosted | Reject::PendingAlreadyVoided,
                                ) => kinds.count("already settled by a racing resolution"),
                                Err(Reject::PendingExpired) => kinds.count("expired"),
                                Err(other) => kinds.count(&format!("{other:?}")),
                            }
                        }
                    }
                    (seen, kinds)
                }));
            }
            let mut all = Vec::new();
            let mut kinds = Kinds::default();
            for t in tasks {
                let (seen, task_kinds) = t.await.expect("task");
                all.extend(seen);
                kinds.add(task_kinds);
            }
            (all, kinds)
        });
        for kind in [
            "post",
            "void",
            "resolved in the call that created it",
            "resolved another caller's pending",
            "already settled by a racing resolution",
        ] {
            assert!(
                kinds.0.get(kind).is_some_and(|&n| n > 0),
                "{shards} shards: the race never gave `{kind}`: {kinds:?}"
            );
        }
        // Void whatever is still open, so every reservation is released.
        let created = created.lock().expect("lock").clone();
        let voids: Vec<Transaction> = created
            .keys()
            .map(|&p| void_of(p, 9 << 120 | p & ((1 << 120) - 1)))
            .collect();
        for chunk in voids.chunks(1_000) {
            let outcomes = engine
                .submit_blocking(chunk.to_vec())
                .expect("void the rest");
            for (t, o) in chunk.iter().zip(outcomes) {
                if o.is_committed() {
                    resolutions.extend(resolution(t));
                }
            }
        }
        let mut settled: HashMap<u128, u32> = HashMap::new();
        let mut expected: HashMap<u64, i64> = customers.iter().map(|&c| (c, 1_000_00)).collect();
        for &(pending, posted) in &resolutions {
            *settled.entry(pending).or_default() += 1;
            if posted {
                let (from, to, cents) = created[&pending];
                *expected.get_mut(&from).expect("customer") -= cents;
                *expected.get_mut(&to).expect("customer") += cents;
            }
        }
        assert!(
            settled.values().all(|&n| n == 1),
            "{shards} shards: a pending was settled twice"
        );
        let posts = resolutions.iter().filter(|r| r.1).count();
        assert!(
            posts > 100,
            "{shards} shards: too few posts to mean anything: {posts}"
        );
        for &c in &customers {
            let a = engine
                .account_blocking(AccountId(c))
                .expect("read")
                .expect("exists");
            assert_eq!(
                a.balance,
                yuan(expected[&c]),
                "{shards} shards: customer {c}"
            );
            assert_eq!(
                (a.reserved, a.incoming),
                (yuan(0), yuan(0)),
                "{shards} shards: {c}"
            );
        }
        assert_audit_ok(&engine);
        engine.shutdown_blocking().expect("shutdown");
    }
}

/// How often each kind of answer to a post or void came back.
#[derive(Debug, Default)]
struct Kinds(std::collections::BTreeMap<String, u64>);

impl Kinds {
    fn count(&mut self, kind: &str) {
        *self.0.entry(kind.to_string()).or_default() += 1;
    }

    fn add(&mut self, other: Kinds) {
        for (kind, n) in other.0 {
            *self.0.entry(kind).or_default() += n;
        }
    }
}

/// Every pending created: id -> (from, to, cents).
type Created = std::collections::HashMap<u128, (u64, u64, i64)>;

/// The pending id a post or void settles, and whether it posts.
fn resolution(t: &Transaction) -> Option<(u128, bool)> {
    match t.kind {
        TxnKind::PostPending { pending_id } => Some((pending_id.0, true)),
        TxnKind::VoidPending { pending_id } => Some((pending_id.0, false)),
        _ => None,
    }
}

/// A post (full amount) or a void of `pending`, with an id made of the
/// pending's and the caller's `tag` (< 2^20).
fn resolve(pending: u128, rng: &mut ChaCha8Rng, tag: u128) -> Transaction {
    let id = 8 << 120 | (pending & ((1 << 68) - 1)) << 20 | tag;
    if rng.gen_bool(0.5) {
        Transaction {
            id: TxnId(id),
            code: TxnCode(2002),
            kind: TxnKind::PostPending {
                pending_id: TxnId(pending),
            },
            legs: Vec::new(),
            linked: false,
        }
    } else {
        void_of(pending, id)
    }
}

fn void_of(pending: u128, id: u128) -> Transaction {
    Transaction {
        id: TxnId(id),
        code: TxnCode(2003),
        kind: TxnKind::VoidPending {
            pending_id: TxnId(pending),
        },
        legs: Vec::new(),
        linked: false,
    }
}
