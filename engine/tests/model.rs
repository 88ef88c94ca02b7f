//! The model test: thousands of seeded random transactions applied to the
//! engine with 1, 2 and 8 shards and to a tiny, obviously sequential model
//! (`common/model.rs`: `BTreeMap`s, one transaction at a time). Outcomes, balances, versions and
//! every detail must be identical; the engines must also agree with each
//! other on timestamps and the state digest.
// Amounts are written as yuan_fen (100_00 is 100.00 yuan).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping,
    clippy::type_complexity,
    clippy::explicit_counter_loop
)]

mod common;

use common::model::*;
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use tally_engine::*;

const BANK: u64 = 1;
const CUSTOMERS: std::ops::RangeInclusive<u64> = 10..=19;
const CALLS: usize = 500;

// ------------------------------------------------------------ the generator

struct Gen {
    rng: ChaCha8Rng,
    next_id: u128,
    history: Vec<Transaction>,
    pendings: Vec<(u128, Vec<(u64, Side, i64)>)>,
}

impl Gen {
    fn account(&mut self) -> u64 {
        if self.rng.gen_ratio(1, 10) {
            BANK
        } else {
            self.rng.gen_range(CUSTOMERS)
        }
    }

    fn amount(&mut self) -> i64 {
        self.rng.gen_range(1..=60_00)
    }

    fn id(&mut self) -> TxnId {
        self.next_id += 1;
        TxnId(self.next_id)
    }

    fn leg(&self, account: u64, side: Side, amount: i64) -> Leg {
        Leg {
            account: AccountId(account),
            side,
            amount: dec(amount),
            currency: CNY,
            bucket: Bucket::Available,
            expected_version: None,
        }
    }

    /// One call's worth of transactions. Pending transactions are only
    /// referenced from later calls, and each at most once per call.
    fn call(&mut self, model: &Model) -> Vec<Transaction> {
        let n = self.rng.gen_range(1..=12);
        let mut txns: Vec<Transaction> = Vec::new();
        let mut referenced = HashSet::new();
        let pendings_before = self.pendings.len();
        for _ in 0..n {
            let mut t = self.txn(model, pendings_before, &mut referenced);
            t.linked = self.rng.gen_ratio(1, 8);
            txns.push(t);
        }
        if let Some(last) = txns.last_mut() {
            last.linked = self.rng.gen_ratio(1, 100);
        }
        for t in &txns {
            if let TxnKind::Pending { .. } = t.kind {
                let legs = t
                    .legs
                    .iter()
                    .map(|l| (l.account.0, l.side, cents(l.amount)))
                    .collect();
                self.pendings.push((t.id.0, legs));
            }
        }
        self.history.extend(txns.iter().cloned());
        txns
    }

    fn txn(
        &mut self,
        model: &Model,
        pendings_before: usize,
        referenced: &mut HashSet<u128>,
    ) -> Transaction {
        let roll = self.rng.gen_range(0..100);
        let (a, b, amount) = (self.account(), self.account(), self.amount());
        let code = TxnCode(self.rng.gen_range(1..5));
        let simple = |g: &mut Gen| {
            Transaction::posted(
                g.id(),
                code,
                vec![
                    g.leg(a, Side::Debit, amount),
                    g.leg(b, Side::Credit, amount),
                ],
            )
        };
        match roll {
            0..=44 => simple(self),
            45..=52 => {
                let c = self.account();
                let part = self.rng.gen_range(0..amount.max(1)).max(1).min(amount);
                let mut legs = vec![
                    self.leg(a, Side::Debit, amount),
                    self.leg(b, Side::Credit, part),
                ];
                if amount > part {
                    legs.push(self.leg(c, Side::Credit, amount - part));
                }
                Transaction::posted(self.id(), code, legs)
            }
            53..=57 => {
                // Freeze or unfreeze part of a balance.
                let (from, to) = if self.rng.gen_bool(0.5) {
                    (Bucket::Available, Bucket::Frozen)
                } else {
                    (Bucket::Frozen, Bucket::Available)
                };
                let legs = vec![
                    self.leg(a, Side::Debit, amount).bucket(from),
                    self.leg(a, Side::Credit, amount).bucket(to),
                ];
                Transaction::posted(self.id(), code, legs)
            }
            58..=61 => {
                let legs = vec![
                    self.leg(BANK, Side::Debit, amount),
                    self.leg(a, Side::Credit, amount)
                        .bucket(Bucket::NonWithdrawable),
                ];
                Transaction::posted(self.id(), code, legs)
            }
            62..=65 => {
                let legs = vec![
                    self.leg(a, Side::Debit, amount)
                        .bucket(Bucket::Withdrawable),
                    self.leg(BANK, Side::Credit, amount),
                ];
                Transaction::posted(self.id(), code, legs)
            }
            66..=74 => {
                let timeout_ms = self.rng.gen_range(1..=4_000);
                Transaction {
                    kind: TxnKind::Pending { timeout_ms },
                    ..simple(self)
                }
            }
            75..=84 if pendings_before > 0 => {
                let (pid, legs) = self.pendings[self.rng.gen_range(0..pendings_before)].clone();
                if !referenced.insert(pid) {
                    return simple(self);
                }
                let id = self.id();
                if self.rng.gen_ratio(1, 3) {
                    return Transaction {
                        kind: TxnKind::VoidPending {
                            pending_id: TxnId(pid),
                        },
                        ..Transaction::posted(id, code, vec![])
                    };
                }
                let legs = if self.rng.gen_bool(0.5) {
                    vec![]
                } else {
                    let cut = self.rng.gen_range(0..=legs[0].2 / 2);
                    legs.iter()
                        .map(|&(acc, side, amt)| self.leg(acc, side, amt - cut))
                        .collect()
                };
                Transaction {
                    kind: TxnKind::PostPending {
                        pending_id: TxnId(pid),
                    },
                    ..Transaction::posted(id, code, legs)
                }
            }
            85..=89 if !self.history.is_empty() => {
                let old = self.history[self.rng.gen_range(0..self.history.len())].clone();
                if self.rng.gen_ratio(1, 4) {
                    Transaction {
                        code: TxnCode(old.code.0 + 100),
                        ..old
                    }
                } else {
                    old
                }
            }
            90..=94 => {
                let version = model.accounts.get(&a).map_or(0, |acc| acc.version);
                let version = if self.rng.gen_bool(0.7) {
                    version
                } else {
                    version + 1
                };
                let legs = vec![
                    self.leg(a, Side::Debit, amount)
                        .expect_version(Version(version)),
                    self.leg(b, Side::Credit, amount),
                ];
                Transaction::posted(self.id(), code, legs)
            }
            95..=96 => Transaction::posted(
                self.id(),
                code,
                vec![
                    self.leg(a, Side::Debit, amount),
                    self.leg(b, Side::Credit, amount + 1),
                ],
            ),
            97 => Transaction::posted(
                self.id(),
                code,
                vec![self.leg(a, Side::Debit, 0), self.leg(b, Side::Credit, 0)],
            ),
            _ => simple(self),
        }
    }
}

// ------------------------------------------------------------- the test

struct Run {
    outcomes: Vec<Vec<Outcome>>,
    digest: u64,
    accounts: Vec<AccountView>,
    details: Vec<Vec<DetailView>>,
}

fn all_accounts() -> Vec<u64> {
    std::iter::once(BANK).chain(CUSTOMERS).collect()
}

fn setup_accounts() -> Vec<NewAccount> {
    let mut accounts = vec![NewAccount::internal(AccountId(BANK), CNY)];
    for c in CUSTOMERS {
        let mut a = NewAccount::customer(AccountId(c), CNY);
        if c % 4 == 0 {
            a.credit_limit = dec(20_00);
        }
        accounts.push(a);
    }
    accounts
}

fn run_engine(shards: u16, calls: &[(u64, Vec<Transaction>)]) -> Run {
    let clock = manual_clock();
    let engine = engine(shards, clock.clone());
    let opened = engine
        .open_accounts_blocking(setup_accounts())
        .expect("open");
    assert!(opened.iter().all(Result::is_ok));
    let mut outcomes = Vec::new();
    for (now, txns) in calls {
        clock.set(Timestamp(*now));
        outcomes.push(engine.submit_blocking(txns.clone()).expect("submit"));
    }
    let rt = runtime();
    let audit = assert_audit_ok(&engine);
    let mut accounts = Vec::new();
    let mut details = Vec::new();
    for id in all_accounts() {
        accounts.push(
            engine
                .account_blocking(AccountId(id))
                .expect("read")
                .expect("exists"),
        );
        let all = DetailQuery::all(AccountId(id), DETAIL_PAGE_MAX);
        details.push(page_through(&rt, &engine, all));
    }
    Run {
        outcomes,
        digest: audit.state_digest,
        accounts,
        details,
    }
}

#[test]
fn engine_matches_the_model_for_1_2_and_8_shards() {
    for seed in [1u64, 2, 3] {
        check_seed(seed);
    }
}

fn check_seed(seed: u64) {
    let mut gen = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed),
        next_id: 0,
        history: Vec::new(),
        pendings: Vec::new(),
    };
    let mut model = Model::default();
    for a in setup_accounts() {
        model.open(
            a.id.0,
            a.normal_side,
            a.allow_negative,
            cents(a.credit_limit),
        );
    }
    let mut now = START.0;
    let mut calls = Vec::new();
    let mut expected = Vec::new();
    for _ in 0..CALLS {
        now += gen.rng.gen_range(0..1_500) * 1_000_000;
        let txns = gen.call(&model);
        expected.push(model.submit(&txns, now));
        calls.push((now, txns));
    }
    let committed = expected
        .iter()
        .flatten()
        .filter(|o| o.is_committed() && !o.duplicate)
        .count();
    let refused = expected
        .iter()
        .flatten()
        .filter(|o| !o.is_committed())
        .count();
    assert!(
        committed > 1_000 && refused > 200,
        "seed {seed}: weak workload {committed}/{refused}"
    );

    let runs: Vec<(u16, Run)> = [1u16, 2, 8]
        .into_iter()
        .map(|s| (s, run_engine(s, &calls)))
        .collect();
    for (shards, run) in &runs {
        for (call, (got, want)) in run.outcomes.iter().zip(&expected).enumerate() {
            assert_eq!(
                got, want,
                "seed {seed}, {shards} shards, call {call}: {:?}",
                calls[call].1
            );
        }
        for (view, id) in run.accounts.iter().zip(all_accounts()) {
            let m = &model.accounts[&id];
            let got = (
                view.balance,
                view.reserved,
                view.incoming,
                view.frozen,
                view.non_withdrawable,
                view.version.0,
            );
            let want = (
                dec(m.balance),
                dec(m.reserved),
                dec(m.incoming),
                dec(m.frozen),
                dec(m.non_withdrawable),
                m.version,
            );
            assert_eq!(got, want, "seed {seed}, {shards} shards, account {id}");
        }
        for (details, id) in run.details.iter().zip(all_accounts()) {
            let got: Vec<MDetail> = details.iter().map(MDetail::of).collect();
            assert_eq!(
                got, model.accounts[&id].details,
                "seed {seed}, {shards} shards, details of {id}"
            );
        }
    }
    let digests: Vec<u64> = runs.iter().map(|(_, r)| r.digest).collect();
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "seed {seed}: digests differ {digests:?}"
    );
}
