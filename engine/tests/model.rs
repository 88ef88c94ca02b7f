//! The model test: thousands of seeded random transactions applied to the
//! engine with 1, 2 and 8 shards and to a tiny, obviously sequential model
//! (`BTreeMap`s, one transaction at a time). Outcomes, balances, versions and
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

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, HashSet};
use tally_engine::*;

const BANK: u64 = 1;
const CUSTOMERS: std::ops::RangeInclusive<u64> = 10..=19;
const CALLS: usize = 500;

// ---------------------------------------------------------------- the model

#[derive(Clone, Debug, PartialEq, Eq)]
struct MDetail {
    txn: u128,
    leg: u16,
    kind: DetailKind,
    amount: i64,
    pre: i64,
    post: i64,
    version: u64,
    timestamp: u64,
}

#[derive(Clone, Debug)]
struct MAccount {
    normal: Side,
    allow_negative: bool,
    limit: i64,
    status: AccountStatus,
    balance: i64,
    reserved: i64,
    incoming: i64,
    frozen: i64,
    non_withdrawable: i64,
    version: u64,
    details: Vec<MDetail>,
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
    legs: Vec<(u64, Side, Bucket, i64)>,
    deadline: u64,
    status: PStatus,
}

#[derive(Clone, Default)]
struct Model {
    accounts: BTreeMap<u64, MAccount>,
    pendings: BTreeMap<u128, MPending>,
    index: HashMap<u128, (Transaction, Outcome)>,
    last_ts: u64,
}

fn cents(d: rust_decimal::Decimal) -> i64 {
    Minor::from_decimal(d, 2).expect("test amounts fit").0
}

fn dec(v: i64) -> rust_decimal::Decimal {
    Minor(v).to_decimal(2)
}

#[derive(Clone, Copy)]
enum Op {
    Post,
    Reserve,
    Capture(i64),
    Release(i64),
}

impl Model {
    fn open(&mut self, id: u64, normal: Side, allow_negative: bool, limit: i64) {
        self.accounts.insert(
            id,
            MAccount {
                normal,
                allow_negative,
                limit,
                status: AccountStatus::Active,
                balance: 0,
                reserved: 0,
                incoming: 0,
                frozen: 0,
                non_withdrawable: 0,
                version: 0,
                details: Vec::new(),
            },
        );
    }

    /// The next timestamp, expiring due pending transactions first.
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
            let p = self.pendings.get_mut(&id).expect("due pending");
            p.status = PStatus::Expired;
            let legs = p.legs.clone();
            for (i, (account, side, bucket, amount)) in legs.into_iter().enumerate() {
                self.apply_leg(
                    id,
                    i as u16,
                    ts,
                    account,
                    side,
                    bucket,
                    amount,
                    Op::Release(amount),
                );
            }
        }
    }

    fn check_leg(&self, leg_no: u16, leg: &Leg, amount: i64, op: Op) -> Result<(), Reject> {
        let account = leg.account;
        let a = self
            .accounts
            .get(&account.0)
            .ok_or(Reject::AccountNotFound {
                leg: leg_no,
                account,
            })?;
        if let Some(expected) = leg.expected_version {
            if expected.0 != a.version {
                let actual = Version(a.version);
                return Err(Reject::VersionMismatch {
                    leg: leg_no,
                    account,
                    expected,
                    actual,
                });
            }
        }
        if !matches!(op, Op::Post | Op::Reserve) {
            return Ok(());
        }
        if a.status == AccountStatus::Closed {
            return Err(Reject::AccountClosed {
                leg: leg_no,
                account,
            });
        }
        if leg.side == a.normal {
            return Ok(()); // amounts here never come near overflow
        }
        if a.status == AccountStatus::Frozen {
            return Err(Reject::AccountFrozen {
                leg: leg_no,
                account,
            });
        }
        if leg.bucket == Bucket::Frozen {
            if a.frozen < amount {
                let (frozen, requested) = (dec(a.frozen), dec(amount));
                return Err(Reject::InsufficientFrozen {
                    leg: leg_no,
                    account,
                    frozen,
                    requested,
                });
            }
            return Ok(());
        }
        if a.allow_negative {
            return Ok(());
        }
        let spendable = a.balance - a.frozen - a.reserved + a.limit;
        let room = if leg.bucket == Bucket::Withdrawable {
            spendable - a.non_withdrawable
        } else {
            spendable
        };
        if room < amount {
            let (available, requested) = (dec(room.max(0)), dec(amount));
            return Err(Reject::InsufficientFunds {
                leg: leg_no,
                account,
                available,
                requested,
            });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_leg(
        &mut self,
        txn: u128,
        leg: u16,
        ts: u64,
        account: u64,
        side: Side,
        bucket: Bucket,
        amount: i64,
        op: Op,
    ) {
        let a = self.accounts.get_mut(&account).expect("checked");
        let pre = a.balance;
        let up = side == a.normal;
        let (kind, detail_amount) = match op {
            Op::Post => {
                post(a, up, bucket, amount);
                (DetailKind::Posted, amount)
            }
            Op::Reserve => {
                if up {
                    a.incoming += amount
                } else {
                    a.reserved += amount
                }
                (DetailKind::Reserved, amount)
            }
            Op::Capture(reserved) => {
                if up {
                    a.incoming -= reserved
                } else {
                    a.reserved -= reserved
                }
                post(a, up, bucket, amount);
                (DetailKind::Captured, amount)
            }
            Op::Release(reserved) => {
                if up {
                    a.incoming -= reserved
                } else {
                    a.reserved -= reserved
                }
                (DetailKind::Released, reserved)
            }
        };
        a.version += 1;
        let version = a.version;
        let post_balance = a.balance;
        a.details.push(MDetail {
            txn,
            leg,
            kind,
            amount: detail_amount,
            pre,
            post: post_balance,
            version,
            timestamp: ts,
        });
    }

    /// Applies one call's transactions sequentially.
    fn submit(&mut self, txns: &[Transaction], now: u64) -> Vec<Outcome> {
        let mut out: Vec<Option<Outcome>> = vec![None; txns.len()];
        let unseq = |id: TxnId, r: Reject| Outcome {
            id,
            timestamp: None,
            result: Err(r),
            duplicate: false,
        };
        // Stateless checks, chain by chain.
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
                    if !seen.insert(txns[i].id) {
                        Some(Reject::DuplicateIdInBatch)
                    } else {
                        stateless(&txns[i]).err()
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
                    out[i] = Some(unseq(txns[i].id, r));
                }
                continue;
            }
            self.run_chain(txns, &chain, now, &mut out);
        }
        out.into_iter()
            .map(|o| o.expect("every transaction answered"))
            .collect()
    }

    fn run_chain(
        &mut self,
        txns: &[Transaction],
        chain: &[usize],
        now: u64,
        out: &mut [Option<Outcome>],
    ) {
        let unseq = |id: TxnId, r: Reject| Outcome {
            id,
            timestamp: None,
            result: Err(r),
            duplicate: false,
        };
        if chain
            .iter()
            .any(|&i| self.index.contains_key(&txns[i].id.0))
        {
            for &i in chain {
                let t = &txns[i];
                out[i] = Some(match self.index.get(&t.id.0) {
                    Some((orig, o)) if orig == t => Outcome {
                        duplicate: true,
                        ..o.clone()
                    },
                    Some(_) => unseq(t.id, Reject::IdConflict),
                    None => unseq(t.id, Reject::LinkedTxnFailed),
                });
            }
            return;
        }
        // Sequence: timestamps and two-phase resolution.
        let mut plans: Vec<(usize, u64, Vec<(Leg, i64, Op)>)> = Vec::new();
        for (k, &i) in chain.iter().enumerate() {
            let ts = self.stamp(now, k == 0);
            match self.resolve(&txns[i], ts) {
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
        // Execute with rollback.
        let saved = (self.accounts.clone(), self.pendings.clone());
        let mut failure = None;
        'members: for (i, ts, legs) in &plans {
            for (n, (leg, amount, op)) in legs.iter().enumerate() {
                if let Err(r) = self.check_leg(n as u16, leg, *amount, *op) {
                    failure = Some((*i, r));
                    break 'members;
                }
                self.apply_leg(
                    txns[*i].id.0,
                    n as u16,
                    *ts,
                    leg.account.0,
                    leg.side,
                    leg.bucket,
                    *amount,
                    *op,
                );
            }
            self.settle_pending(&txns[*i], *ts);
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

    fn resolve(&self, t: &Transaction, ts: u64) -> Result<Vec<(Leg, i64, Op)>, Reject> {
        let plain = |op| {
            t.legs
                .iter()
                .map(|l| (l.clone(), cents(l.amount), op))
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
        let as_leg = |&(account, side, bucket, amount): &(u64, Side, Bucket, i64)| Leg {
            account: AccountId(account),
            side,
            amount: dec(amount),
            currency: CNY,
            bucket,
            expected_version: None,
        };
        if let TxnKind::VoidPending { .. } = t.kind {
            return Ok(p
                .legs
                .iter()
                .map(|l| (as_leg(l), l.3, Op::Release(l.3)))
                .collect());
        }
        if t.legs.is_empty() {
            return Ok(p
                .legs
                .iter()
                .map(|l| (as_leg(l), l.3, Op::Capture(l.3)))
                .collect());
        }
        if t.legs.len() != p.legs.len() {
            return Err(Reject::PostLegCount {
                expected: p.legs.len(),
                got: t.legs.len(),
            });
        }
        let mut legs = Vec::new();
        for (n, (new, old)) in t.legs.iter().zip(&p.legs).enumerate() {
            if new.account.0 != old.0 || new.side != old.1 || new.bucket != old.2 {
                return Err(Reject::PostLegMismatch { leg: n as u16 });
            }
            let amount = cents(new.amount);
            if amount > old.3 {
                return Err(Reject::PostExceedsPending {
                    leg: n as u16,
                    reserved: dec(old.3),
                    requested: dec(amount),
                });
            }
            legs.push((new.clone(), amount, Op::Capture(old.3)));
        }
        Ok(legs)
    }

    fn settle_pending(&mut self, t: &Transaction, ts: u64) {
        match t.kind {
            TxnKind::Posted => {}
            TxnKind::Pending { timeout_ms } => {
                let legs = t
                    .legs
                    .iter()
                    .map(|l| (l.account.0, l.side, l.bucket, cents(l.amount)))
                    .collect();
                let deadline = ts + timeout_ms * 1_000_000;
                self.pendings.insert(
                    t.id.0,
                    MPending {
                        legs,
                        deadline,
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

fn post(a: &mut MAccount, up: bool, bucket: Bucket, amount: i64) {
    if up {
        a.balance += amount;
        match bucket {
            Bucket::Frozen => a.frozen += amount,
            Bucket::NonWithdrawable => a.non_withdrawable += amount,
            _ => {}
        }
    } else {
        a.balance -= amount;
        match bucket {
            Bucket::Frozen => a.frozen -= amount,
            Bucket::Withdrawable => {}
            _ => a.non_withdrawable -= a.non_withdrawable.min(amount),
        }
    }
}

/// The few stateless refusals the generator produces, in the engine's order.
fn stateless(t: &Transaction) -> Result<(), Reject> {
    if let TxnKind::VoidPending { .. } = t.kind {
        return if t.legs.is_empty() {
            Ok(())
        } else {
            Err(Reject::VoidWithLegs)
        };
    }
    let (mut debits, mut credits) = (0i64, 0i64);
    for (n, l) in t.legs.iter().enumerate() {
        if l.amount <= rust_decimal::Decimal::ZERO {
            return Err(Reject::AmountNotPositive {
                leg: n as u16,
                amount: l.amount,
            });
        }
        match l.side {
            Side::Debit => debits += cents(l.amount),
            Side::Credit => credits += cents(l.amount),
        }
    }
    if debits != credits {
        return Err(Reject::Unbalanced {
            currency: CNY,
            debits: dec(debits),
            credits: dec(credits),
        });
    }
    Ok(())
}

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
            let got: Vec<MDetail> = details
                .iter()
                .map(|d| MDetail {
                    txn: d.txn.0,
                    leg: d.leg,
                    kind: d.kind,
                    amount: cents(d.amount),
                    pre: cents(d.balance_pre),
                    post: cents(d.balance_post),
                    version: d.version.0,
                    timestamp: d.timestamp.0,
                })
                .collect();
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
