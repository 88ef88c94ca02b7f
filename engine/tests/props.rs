//! Property tests (proptest): random operations on an in-memory engine with
//! 1–3 shards and on a small sequential model written here, compared call
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

use common::*;
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet};
use tally_engine::*;

const BANK: u64 = 1;
const CUSTOMERS: [u64; 4] = [10, 11, 12, 13];
/// Never opened: legs on it are refused.
const NOWHERE: u64 = 99;

// ---------------------------------------------------------------- the model

#[derive(Clone, Debug)]
struct MAccount {
    normal: Side,
    allow_negative: bool,
    balance: i64,
    reserved: i64,
    incoming: i64,
    version: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PStatus {
    Open,
    Posted,
    Voided,
    Expired,
}

#[derive(Clone, Debug)]
struct MPending {
    legs: Vec<(u64, Side, i64)>,
    deadline: u64,
    status: PStatus,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Post,
    Reserve,
    Capture(i64),
    Release(i64),
}

/// A chain member ready to run: its index in the call, its timestamp and
/// the legs it applies (account, side, amount, what it does).
type Plan = (usize, u64, Vec<(u64, Side, i64, Op)>);

#[derive(Clone, Default)]
struct Model {
    accounts: BTreeMap<u64, MAccount>,
    pendings: BTreeMap<u128, MPending>,
    index: HashMap<u128, (Transaction, Outcome)>,
    last_ts: u64,
}

fn dec(v: i64) -> Decimal {
    Minor(v).to_decimal(2)
}

fn unsequenced(id: TxnId, r: Reject) -> Outcome {
    Outcome {
        id,
        timestamp: None,
        result: Err(r),
        duplicate: false,
    }
}

impl Model {
    fn open(&mut self, id: u64, normal: Side, allow_negative: bool) {
        self.accounts.insert(
            id,
            MAccount {
                normal,
                allow_negative,
                balance: 0,
                reserved: 0,
                incoming: 0,
                version: 0,
            },
        );
    }

    /// The next timestamp, expiring due pending transactions first (each
    /// expiry takes a timestamp of its own).
    fn stamp(&mut self, now: u64, expire: bool) -> u64 {
        loop {
            let ts = (self.last_ts + 1).max(now);
            self.last_ts = ts;
            if !expire {
                return ts;
            }
            let due = self
                .pendings
                .iter()
                .filter(|(_, p)| p.status == PStatus::Open && p.deadline <= ts)
                .min_by_key(|(id, p)| (p.deadline, **id))
                .map(|(id, _)| *id);
            let Some(id) = due else { return ts };
            let p = self.pendings.get_mut(&id).expect("due");
            p.status = PStatus::Expired;
            for (account, side, amount) in p.legs.clone() {
                self.apply(account, side, amount, Op::Release(amount))
                    .expect("a release always fits");
            }
        }
    }

    /// The engine's rules of one leg (`AccountState::check`): unknown
    /// account; for a post or reserve, room for an increase (the pending
    /// incoming counts for a reserve) or funds for a decrease.
    fn check(&self, leg: u16, account: u64, side: Side, amount: i64, op: Op) -> Result<(), Reject> {
        let id = AccountId(account);
        let a = self
            .accounts
            .get(&account)
            .ok_or(Reject::AccountNotFound { leg, account: id })?;
        if !matches!(op, Op::Post | Op::Reserve) {
            return Ok(());
        }
        let overflow = Reject::BalanceOverflow { leg, account: id };
        if side == a.normal {
            let pending = if matches!(op, Op::Reserve) {
                a.incoming
            } else {
                0
            };
            let room = i64::MAX - a.balance.max(0);
            if i128::from(amount) + i128::from(pending) > i128::from(room) {
                return Err(overflow);
            }
            return Ok(());
        }
        if a.balance.checked_sub(amount).is_none() {
            return Err(overflow);
        }
        if a.allow_negative {
            return Ok(());
        }
        let room = i128::from(a.balance) - i128::from(a.reserved);
        if room < i128::from(amount) {
            return Err(Reject::InsufficientFunds {
                leg,
                account: id,
                available: dec(i64::try_from(room.max(0)).expect("fits")),
                requested: dec(amount),
            });
        }
        Ok(())
    }

    /// Applies a checked leg with checked arithmetic: `None` when any part
    /// would not fit (the account is then unchanged).
    fn apply(&mut self, account: u64, side: Side, amount: i64, op: Op) -> Option<()> {
        let a = self.accounts.get_mut(&account).expect("checked");
        let mut next = a.clone();
        let up = side == next.normal;
        let post = |n: &mut MAccount| {
            n.balance = if up {
                n.balance.checked_add(amount)?
            } else {
                n.balance.checked_sub(amount)?
            };
            Some(())
        };
        let release = |n: &mut MAccount, r: i64| {
            if up {
                n.incoming = n.incoming.checked_sub(r)?;
            } else {
                n.reserved = n.reserved.checked_sub(r)?;
            }
            Some(())
        };
        match op {
            Op::Post => post(&mut next)?,
            Op::Reserve if up => next.incoming = next.incoming.checked_add(amount)?,
            Op::Reserve => next.reserved = next.reserved.checked_add(amount)?,
            Op::Capture(r) => {
                release(&mut next, r)?;
                post(&mut next)?;
            }
            Op::Release(r) => release(&mut next, r)?,
        }
        next.version = next.version.checked_add(1)?;
        *a = next;
        Some(())
    }

    /// One call, transaction by transaction, chain by chain.
    fn submit(&mut self, txns: &[Transaction], now: u64) -> Vec<Outcome> {
        let mut out: Vec<Option<Outcome>> = vec![None; txns.len()];
        let mut seen = HashSet::new();
        let mut chains: Vec<Vec<usize>> = Vec::new();
        let mut current = Vec::new();
        for (i, t) in txns.iter().enumerate() {
            current.push(i);
            if !t.linked || i + 1 == txns.len() {
                chains.push(std::mem::take(&mut current));
            }
        }
        for chain in chains {
            let open = txns[*chain.last().expect("non-empty")].linked;
            let errors: Vec<Option<Reject>> = chain
                .iter()
                .map(|&i| {
                    if seen.insert(txns[i].id) {
                        stateless(&txns[i]).err()
                    } else {
                        Some(Reject::DuplicateIdInBatch)
                    }
                })
                .collect();
            if open || errors.iter().any(Option::is_some) {
                let first_bad = errors.iter().position(Option::is_some);
                for (k, &i) in chain.iter().enumerate() {
                    let r = if open {
                        Reject::LinkedChainOpen
                    } else if Some(k) == first_bad {
                        errors[k].clone().expect("bad")
                    } else {
                        Reject::LinkedTxnFailed
                    };
                    out[i] = Some(unsequenced(txns[i].id, r));
                }
                continue;
            }
            self.run_chain(txns, &chain, now, &mut out);
        }
        out.into_iter().map(|o| o.expect("answered")).collect()
    }

    fn run_chain(
        &mut self,
        txns: &[Transaction],
        chain: &[usize],
        now: u64,
        out: &mut [Option<Outcome>],
    ) {
        if chain
            .iter()
            .any(|&i| self.index.contains_key(&txns[i].id.0))
        {
            for &i in chain {
                let t = &txns[i];
                out[i] = Some(match self.index.get(&t.id.0) {
                    Some((first, o)) if first == t => Outcome {
                        duplicate: true,
                        ..o.clone()
                    },
                    Some(_) => unsequenced(t.id, Reject::IdConflict),
                    None => unsequenced(t.id, Reject::LinkedTxnFailed),
                });
            }
            return;
        }
        let mut plans: Vec<Plan> = Vec::new();
        for (k, &i) in chain.iter().enumerate() {
            let ts = self.stamp(now, k == 0);
            match self.resolve(&txns[i], ts, &plans, txns) {
                Ok(legs) => plans.push((i, ts, legs)),
                Err(r) => {
                    // Refused by the sequencer: every member is recorded
                    // with the timestamp it took (one id, one answer).
                    let first_ts = plans.first().map_or(ts, |p| p.1);
                    self.last_ts = first_ts - 1;
                    for &j in chain {
                        let reason = if j == i {
                            r.clone()
                        } else {
                            Reject::LinkedTxnFailed
                        };
                        let ts = self.stamp(now, false);
                        let outcome = Outcome {
                            id: txns[j].id,
                            timestamp: Some(Timestamp(ts)),
                            result: Err(reason),
                            duplicate: false,
                        };
                        self.index
                            .insert(txns[j].id.0, (txns[j].clone(), outcome.clone()));
                        out[j] = Some(outcome);
                    }
                    return;
                }
            }
        }
        let saved = (self.accounts.clone(), self.pendings.clone());
        let mut failure = None;
        'members: for (i, ts, legs) in &plans {
            for (n, &(account, side, amount, op)) in legs.iter().enumerate() {
                let n = n as u16;
                let applied = self.check(n, account, side, amount, op).and_then(|()| {
                    self.apply(account, side, amount, op)
                        .ok_or(Reject::BalanceOverflow {
                            leg: n,
                            account: AccountId(account),
                        })
                });
                if let Err(r) = applied {
                    failure = Some((*i, r));
                    break 'members;
                }
            }
            self.settle(&txns[*i], *ts);
        }
        if failure.is_some() {
            (self.accounts, self.pendings) = saved;
        }
        for (i, ts, _) in &plans {
            let result = match &failure {
                None => Ok(()),
                Some((f, r)) if f == i => Err(r.clone()),
                Some(_) => Err(Reject::LinkedTxnFailed),
            };
            let outcome = Outcome {
                id: txns[*i].id,
                timestamp: Some(Timestamp(*ts)),
                result,
                duplicate: false,
            };
            self.index
                .insert(txns[*i].id.0, (txns[*i].clone(), outcome.clone()));
            out[*i] = Some(outcome);
        }
    }

    /// The legs a member applies, or its two-phase refusal. A pending
    /// transaction referenced twice in one chain: the second reference is
    /// refused as already posted or voided by the first.
    fn resolve(
        &self,
        t: &Transaction,
        ts: u64,
        earlier: &[Plan],
        txns: &[Transaction],
    ) -> Result<Vec<(u64, Side, i64, Op)>, Reject> {
        let amount = |l: &Leg| Minor::from_decimal(l.amount, 2).expect("checked").0;
        let plain = |op| {
            t.legs
                .iter()
                .map(|l| (l.account.0, l.side, amount(l), op))
                .collect()
        };
        let pending_id = match t.kind {
            TxnKind::Posted => return Ok(plain(Op::Post)),
            TxnKind::Pending { .. } => return Ok(plain(Op::Reserve)),
            TxnKind::PostPending { pending_id } | TxnKind::VoidPending { pending_id } => pending_id,
        };
        if pending_id == t.id {
            return Err(Reject::PendingIsSelf);
        }
        for (i, _, _) in earlier {
            match txns[*i].kind {
                TxnKind::PostPending { pending_id: p } if p == pending_id => {
                    return Err(Reject::PendingAlreadyPosted)
                }
                TxnKind::VoidPending { pending_id: p } if p == pending_id => {
                    return Err(Reject::PendingAlreadyVoided)
                }
                _ => {}
            }
        }
        let p = self
            .pendings
            .get(&pending_id.0)
            .ok_or(Reject::PendingNotFound)?;
        match p.status {
            PStatus::Open if p.deadline <= ts => return Err(Reject::PendingExpired),
            PStatus::Open => {}
            PStatus::Posted => return Err(Reject::PendingAlreadyPosted),
            PStatus::Voided => return Err(Reject::PendingAlreadyVoided),
            PStatus::Expired => return Err(Reject::PendingExpired),
        }
        if let TxnKind::VoidPending { .. } = t.kind {
            return Ok(p
                .legs
                .iter()
                .map(|&(a, s, r)| (a, s, r, Op::Release(r)))
                .collect());
        }
        if t.legs.is_empty() {
            return Ok(p
                .legs
                .iter()
                .map(|&(a, s, r)| (a, s, r, Op::Capture(r)))
                .collect());
        }
        if t.legs.len() != p.legs.len() {
            return Err(Reject::PostLegCount {
                expected: p.legs.len(),
                got: t.legs.len(),
            });
        }
        let mut legs = Vec::new();
        for (n, (new, &(a, s, r))) in t.legs.iter().zip(&p.legs).enumerate() {
            if new.account.0 != a || new.side != s || new.bucket != Bucket::Available {
                return Err(Reject::PostLegMismatch { leg: n as u16 });
            }
            let amount = amount(new);
            if amount > r {
                return Err(Reject::PostExceedsPending {
                    leg: n as u16,
                    reserved: dec(r),
                    requested: dec(amount),
                });
            }
            legs.push((a, s, amount, Op::Capture(r)));
        }
        Ok(legs)
    }

    fn settle(&mut self, t: &Transaction, ts: u64) {
        match t.kind {
            TxnKind::Posted => {}
            TxnKind::Pending { timeout_ms } => {
                let legs = t
                    .legs
                    .iter()
                    .map(|l| {
                        let amount = Minor::from_decimal(l.amount, 2).expect("checked").0;
                        (l.account.0, l.side, amount)
                    })
                    .collect();
                self.pendings.insert(
                    t.id.0,
                    MPending {
                        legs,
                        deadline: ts + timeout_ms * 1_000_000,
                        status: PStatus::Open,
                    },
                );
            }
            TxnKind::PostPending { pending_id } => {
                self.pendings
                    .get_mut(&pending_id.0)
                    .expect("resolved")
                    .status = PStatus::Posted;
            }
            TxnKind::VoidPending { pending_id } => {
                self.pendings
                    .get_mut(&pending_id.0)
                    .expect("resolved")
                    .status = PStatus::Voided;
            }
        }
    }
}

/// The stateless refusals the generator can produce, in the checker's
/// order: a void with legs; per leg, a non-positive amount, then one too
/// large for minor units; then balance.
fn stateless(t: &Transaction) -> Result<(), Reject> {
    if let TxnKind::VoidPending { .. } = t.kind {
        return if t.legs.is_empty() {
            Ok(())
        } else {
            Err(Reject::VoidWithLegs)
        };
    }
    let (mut debits, mut credits) = (0i128, 0i128);
    for (n, l) in t.legs.iter().enumerate() {
        let leg = n as u16;
        if l.amount <= Decimal::ZERO {
            return Err(Reject::AmountNotPositive {
                leg,
                amount: l.amount,
            });
        }
        let Some(units) = Minor::from_decimal(l.amount, 2) else {
            return Err(Reject::AmountOverflow {
                leg,
                amount: l.amount,
            });
        };
        match l.side {
            Side::Debit => debits += i128::from(units.0),
            Side::Credit => credits += i128::from(units.0),
        }
    }
    if debits != credits {
        return Err(Reject::Unbalanced {
            currency: CNY,
            debits: Decimal::from_i128_with_scale(debits, 2),
            credits: Decimal::from_i128_with_scale(credits, 2),
        });
    }
    Ok(())
}

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
    model.open(BANK, Side::Debit, true);
    for c in CUSTOMERS {
        model.open(c, Side::Credit, false);
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
