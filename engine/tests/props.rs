//! Property tests (proptest): random operations on an in-memory engine with
//! 1–3 shards and on the shared sequential model (`common/model.rs`), compared call
//! by call (every outcome, timestamps included) and at the end (every
//! account's balance, reserved, incoming and version; the audit).
//!
//! The operations: posted transfers, pending transfers with short deadlines
//! (so some expire), posts (full, partial, over the reservation) and voids
//! of them, linked chains (open ones too), the same id sent again with the
//! same or other content, transfers to an account that does not exist, and
//! amounts of every size up to and past the largest an account can hold
//! (`i64::MAX` minor units), so that `BalanceOverflow` and `AmountOverflow`
//! are reached. Bounded: 256 cases of at most 60 operations (a few seconds).
// Amounts are written as yuan_fen (100_00 is 100.00 yuan).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod common;

use common::model::*;
use common::*;
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use tally_engine::*;

const BANK: u64 = 1;
const CUSTOMERS: [u64; 4] = [10, 11, 12, 13];
/// Never opened: legs on it are refused.
const NOWHERE: u64 = 99;

// ------------------------------------------------------------ the generator

/// An amount: small, near the largest an account holds, half of it (two
/// credits overflow), or past what minor units can carry.
#[derive(Clone, Debug)]
enum Amount {
    Small(i64),
    NearMax(i64),
    Half,
    TooLarge(i64),
}

impl Amount {
    fn decimal(&self) -> Decimal {
        match *self {
            Amount::Small(v) => dec(v),
            Amount::NearMax(k) => dec(i64::MAX - k),
            Amount::Half => dec(i64::MAX / 2 + 1),
            Amount::TooLarge(k) => {
                Decimal::from_i128_with_scale(i128::from(i64::MAX) + 1 + i128::from(k), 2)
            }
        }
    }
}

/// One generated operation; `Cut` ends the call (and moves the clock).
#[derive(Clone, Debug)]
enum Gen {
    Transfer {
        from: usize,
        to: usize,
        amount: Amount,
        linked: bool,
    },
    Pending {
        from: usize,
        to: usize,
        amount: Amount,
        timeout_ms: u64,
        linked: bool,
    },
    /// Capture pending number `pick` (modulo those generated), in full or
    /// `part` percent of it (over 100: more than reserved).
    Post {
        pick: usize,
        part: Option<i64>,
        linked: bool,
    },
    Void {
        pick: usize,
        linked: bool,
    },
    /// Send an earlier transaction again, the same or with another code.
    Again {
        pick: usize,
        other: bool,
    },
    Cut {
        advance_ms: u64,
    },
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        5 => (1i64..50_00).prop_map(Amount::Small),
        2 => (0i64..3).prop_map(Amount::NearMax),
        2 => Just(Amount::Half),
        1 => (0i64..3).prop_map(Amount::TooLarge),
    ]
}

/// Account slots: 0 the bank, 1..=4 customers, 5 an account never opened.
fn account_slot() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0usize), 8 => 1usize..=4, 1 => Just(5usize)]
}

fn gen_op() -> impl Strategy<Value = Gen> {
    let linked = proptest::bool::weighted(0.2);
    prop_oneof![
        8 => (account_slot(), account_slot(), amount(), linked)
            .prop_map(|(from, to, amount, linked)| Gen::Transfer { from, to, amount, linked }),
        4 => (account_slot(), account_slot(), amount(), 1u64..30, linked)
            .prop_map(|(from, to, amount, timeout_ms, linked)| Gen::Pending { from, to, amount, timeout_ms, linked }),
        3 => (any::<usize>(), proptest::option::of(1i64..=120), linked)
            .prop_map(|(pick, part, linked)| Gen::Post { pick, part, linked }),
        2 => (any::<usize>(), linked).prop_map(|(pick, linked)| Gen::Void { pick, linked }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, other)| Gen::Again { pick, other }),
        3 => (0u64..20).prop_map(|advance_ms| Gen::Cut { advance_ms }),
    ]
}

fn slot_account(slot: usize) -> u64 {
    match slot {
        0 => BANK,
        1..=4 => CUSTOMERS[slot - 1],
        _ => NOWHERE,
    }
}

/// The calls an operation list makes: (clock, transactions) each.
fn calls(ops: &[Gen]) -> Vec<(u64, Vec<Transaction>)> {
    let mut calls = Vec::new();
    let mut now = START.0;
    let mut call: Vec<Transaction> = Vec::new();
    let mut pendings: Vec<Transaction> = Vec::new();
    let mut history: Vec<Transaction> = Vec::new();
    let mut next_id = 0u128;
    let mut id = || {
        next_id += 1;
        TxnId(next_id)
    };
    let legs = |from: usize, to: usize, amount: &Amount| {
        let a = amount.decimal();
        vec![
            Leg::debit(AccountId(slot_account(from)), a, CNY),
            Leg::credit(AccountId(slot_account(to)), a, CNY),
        ]
    };
    for op in ops {
        let t = match op {
            Gen::Cut { advance_ms } => {
                if !call.is_empty() {
                    calls.push((now, std::mem::take(&mut call)));
                }
                now += advance_ms * 1_000_000;
                continue;
            }
            Gen::Transfer {
                from,
                to,
                amount,
                linked,
            } => Transaction {
                linked: *linked,
                ..Transaction::posted(id(), TxnCode(1), legs(*from, *to, amount))
            },
            Gen::Pending {
                from,
                to,
                amount,
                timeout_ms,
                linked,
            } => {
                let t = Transaction {
                    kind: TxnKind::Pending {
                        timeout_ms: *timeout_ms,
                    },
                    linked: *linked,
                    ..Transaction::posted(id(), TxnCode(2), legs(*from, *to, amount))
                };
                pendings.push(t.clone());
                t
            }
            Gen::Post { pick, part, linked } => {
                let pending = pendings.get(pick % pendings.len().max(1));
                let pending_id = pending.map_or(TxnId(u128::MAX), |p| p.id);
                let legs = match (pending, part) {
                    (Some(p), Some(percent)) => p
                        .legs
                        .iter()
                        .map(|l| {
                            let units = Minor::from_decimal(l.amount, 2).map_or(1, |m| m.0);
                            let part = i128::from(units) * i128::from(*percent) / 100;
                            let part = i64::try_from(part.max(1)).unwrap_or(i64::MAX);
                            Leg {
                                amount: dec(part),
                                ..l.clone()
                            }
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                Transaction {
                    kind: TxnKind::PostPending { pending_id },
                    linked: *linked,
                    ..Transaction::posted(id(), TxnCode(3), legs)
                }
            }
            Gen::Void { pick, linked } => {
                let pending_id = pendings
                    .get(pick % pendings.len().max(1))
                    .map_or(TxnId(u128::MAX), |p| p.id);
                Transaction {
                    kind: TxnKind::VoidPending { pending_id },
                    linked: *linked,
                    ..Transaction::posted(id(), TxnCode(4), Vec::new())
                }
            }
            Gen::Again { pick, other } => {
                let Some(first) = history.get(pick % history.len().max(1)) else {
                    continue;
                };
                let mut t = first.clone();
                if *other {
                    t.code = TxnCode(t.code.0 + 100);
                }
                t
            }
        };
        history.push(t.clone());
        call.push(t);
    }
    if !call.is_empty() {
        calls.push((now, call));
    }
    calls
}

// ------------------------------------------------------------- the property

/// What happened, for the check that every kind was reached.
#[derive(Default)]
struct Seen {
    kinds: BTreeMap<&'static str, u64>,
}

impl Seen {
    fn note(&mut self, t: &Transaction, o: &Outcome) {
        let kind = match (&t.kind, &o.result) {
            (_, Err(Reject::BalanceOverflow { .. })) => "balance overflow",
            (_, Err(Reject::AmountOverflow { .. })) => "amount overflow",
            (_, Err(Reject::InsufficientFunds { .. })) => "insufficient funds",
            (_, Err(Reject::LinkedTxnFailed)) => "chain refused",
            (_, Err(Reject::PendingExpired)) => "expired",
            (_, Err(Reject::PostExceedsPending { .. })) => "over-capture",
            (_, Err(Reject::IdConflict)) => "id conflict",
            (_, Ok(())) if o.duplicate => "duplicate",
            (TxnKind::PostPending { .. }, Ok(())) if !t.legs.is_empty() => "partial post",
            (TxnKind::PostPending { .. }, Ok(())) => "post",
            (TxnKind::VoidPending { .. }, Ok(())) => "void",
            (TxnKind::Pending { .. }, Ok(())) => "pending",
            (_, Ok(())) if t.linked => "chain committed",
            _ => return,
        };
        *self.kinds.entry(kind).or_default() += 1;
    }
}

fn run_case(shards: u16, ops: &[Gen], seen: &mut Seen) -> Result<(), TestCaseError> {
    let clock = manual_clock();
    let engine = engine(shards, clock.clone());
    let mut accounts = vec![NewAccount::internal(AccountId(BANK), CNY)];
    accounts.extend(
        CUSTOMERS
            .iter()
            .map(|&c| NewAccount::customer(AccountId(c), CNY)),
    );
    let opened = engine.open_accounts_blocking(accounts).expect("open");
    prop_assert!(opened.iter().all(Result::is_ok));
    let mut model = Model::default();
    model.open(BANK, Side::Debit, true, 0);
    for c in CUSTOMERS {
        model.open(c, Side::Credit, false, 0);
    }
    // Each customer starts with 1,000.00 from the bank.
    let funding: Vec<Transaction> = CUSTOMERS
        .iter()
        .map(|&c| transfer(u128::from(c) << 64, BANK, c, 1_000_00))
        .collect();
    for (now, txns) in std::iter::once((START.0, funding)).chain(calls(ops)) {
        clock.set(Timestamp(now));
        let got = engine.submit_blocking(txns.clone()).expect("submit");
        let want = model.submit(&txns, now);
        prop_assert_eq!(&got, &want, "call {:?}", txns);
        for (t, o) in txns.iter().zip(&got) {
            seen.note(t, o);
        }
    }
    for (&id, m) in &model.accounts {
        let view = engine
            .account_blocking(AccountId(id))
            .expect("read")
            .expect("opened");
        prop_assert_eq!(
            (view.balance, view.reserved, view.incoming, view.version),
            (
                dec(m.balance),
                dec(m.reserved),
                dec(m.incoming),
                Version(m.version)
            ),
            "account {}",
            id
        );
    }
    let audit = engine.audit_blocking().expect("audit");
    prop_assert!(audit.ok(), "{:?}", audit);
    Ok(())
}

#[test]
fn engine_matches_the_model_on_random_operations() {
    let config = ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let seen = std::cell::RefCell::new(Seen::default());
    proptest!(config, |(shards in 1u16..=3, ops in proptest::collection::vec(gen_op(), 1..60))| {
        run_case(shards, &ops, &mut seen.borrow_mut())?;
    });
    let seen = seen.into_inner();
    eprintln!("reached: {:?}", seen.kinds);
    // The operations reached every kind of answer they are meant to.
    let want = [
        "balance overflow",
        "amount overflow",
        "insufficient funds",
        "chain refused",
        "expired",
        "over-capture",
        "id conflict",
        "duplicate",
        "partial post",
        "post",
        "void",
        "pending",
        "chain committed",
    ];
    let missing: Vec<_> = want
        .iter()
        .filter(|k| !seen.kinds.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "never reached: {missing:?}; seen {:?}",
        seen.kinds
    );
}
