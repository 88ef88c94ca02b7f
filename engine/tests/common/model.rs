//! A tiny, obviously sequential model of the engine (`BTreeMap`s, one
//! transaction at a time), shared by the model test (`model.rs`, seeded
//! generator) and the property tests (`props.rs`, proptest): both compare
//! the engine against it call by call.
//!
//! It follows the engine's documented rules, not its code: the stateless
//! checks the generators can trigger, linked chains all or nothing,
//! idempotency (one id, one answer), two-phase references resolved by the
//! sequencer (a pending transaction referenced twice in one chain is
//! refused the second time), expiry at the deadline, each account's rules
//! (status, buckets, credit limit, funds) and checked arithmetic
//! (`BalanceOverflow` where a part would not fit), with a detail per leg.
//! Amounts are minor units of CNY (two decimal places).

use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet};
use tally_engine::*;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MDetail {
    pub txn: u128,
    pub leg: u16,
    pub kind: DetailKind,
    pub amount: i64,
    pub pre: i64,
    pub post: i64,
    pub version: u64,
    pub timestamp: u64,
}

impl MDetail {
    /// The model's form of an engine detail.
    pub fn of(d: &DetailView) -> MDetail {
        MDetail {
            txn: d.txn.0,
            leg: d.leg,
            kind: d.kind,
            amount: cents(d.amount),
            pre: cents(d.balance_pre),
            post: cents(d.balance_post),
            version: d.version.0,
            timestamp: d.timestamp.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct MAccount {
    pub normal: Side,
    pub allow_negative: bool,
    pub limit: i64,
    pub status: AccountStatus,
    pub balance: i64,
    pub reserved: i64,
    pub incoming: i64,
    pub frozen: i64,
    pub non_withdrawable: i64,
    pub version: u64,
    pub details: Vec<MDetail>,
}

impl MAccount {
    /// Spendable now (`AccountState::spendable`): i128, so that a huge
    /// credit limit cannot overflow.
    fn spendable(&self) -> i128 {
        if self.allow_negative {
            return i128::MAX;
        }
        i128::from(self.balance) - i128::from(self.frozen) - i128::from(self.reserved)
            + i128::from(self.limit)
    }

    /// Posts `amount` (up: toward the normal side) in `bucket`; `None` if
    /// a part would not fit. Spending takes the non-withdrawable part first.
    fn post(&mut self, up: bool, bucket: Bucket, amount: i64) -> Option<()> {
        if up {
            self.balance = self.balance.checked_add(amount)?;
            match bucket {
                Bucket::Frozen => self.frozen = self.frozen.checked_add(amount)?,
                Bucket::NonWithdrawable => {
                    self.non_withdrawable = self.non_withdrawable.checked_add(amount)?
                }
                Bucket::Available | Bucket::Withdrawable => {}
            }
            return Some(());
        }
        self.balance = self.balance.checked_sub(amount)?;
        match bucket {
            Bucket::Frozen => self.frozen = self.frozen.checked_sub(amount)?,
            Bucket::Withdrawable => {}
            Bucket::Available | Bucket::NonWithdrawable => {
                self.non_withdrawable -= self.non_withdrawable.min(amount)
            }
        }
        Some(())
    }

    fn release(&mut self, up: bool, reserved: i64) -> Option<()> {
        if up {
            self.incoming = self.incoming.checked_sub(reserved)?;
        } else {
            self.reserved = self.reserved.checked_sub(reserved)?;
        }
        Some(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PStatus {
    Open,
    Posted,
    Voided,
    Expired,
}

#[derive(Clone, Debug)]
pub struct MPending {
    pub legs: Vec<(u64, Side, Bucket, i64)>,
    pub deadline: u64,
    pub status: PStatus,
}

/// What a leg does to its account.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Post,
    Reserve,
    Capture(i64),
    Release(i64),
}

/// A chain member ready to run: its index in the call, its timestamp and
/// the legs it applies with their amounts and what each does.
type Plan = (usize, u64, Vec<(Leg, i64, Op)>);

#[derive(Clone, Default)]
pub struct Model {
    pub accounts: BTreeMap<u64, MAccount>,
    pub pendings: BTreeMap<u128, MPending>,
    pub index: HashMap<u128, (Transaction, Outcome)>,
    pub last_ts: u64,
}

/// Minor units of a CNY amount the engine accepted.
pub fn cents(d: Decimal) -> i64 {
    Minor::from_decimal(d, 2)
        .expect("amounts the engine accepted fit")
        .0
}

pub fn dec(v: i64) -> Decimal {
    Minor(v).to_decimal(2)
}

pub fn unsequenced(id: TxnId, r: Reject) -> Outcome {
    Outcome {
        id,
        timestamp: None,
        result: Err(r),
        duplicate: false,
    }
}

impl Model {
    pub fn open(&mut self, id: u64, normal: Side, allow_negative: bool, limit: i64) {
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
            let p = self.pendings.get_mut(&id).expect("due pending");
            p.status = PStatus::Expired;
            let legs = p.legs.clone();
            for (i, reserved) in legs.iter().enumerate() {
                let amount = reserved.3;
                self.apply(
                    id,
                    i as u16,
                    ts,
                    &as_leg(reserved),
                    amount,
                    Op::Release(amount),
                )
                .expect("a release always fits");
            }
        }
    }

    /// The engine's rules of one leg (`AccountState::check`), in its order.
    fn check(&self, leg_no: u16, leg: &Leg, amount: i64, op: Op) -> Result<(), Reject> {
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
        let overflow = Reject::BalanceOverflow {
            leg: leg_no,
            account,
        };
        if leg.side == a.normal {
            if a.status == AccountStatus::PayOnly {
                return Err(Reject::AccountPayOnly {
                    leg: leg_no,
                    account,
                });
            }
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
        match a.status {
            AccountStatus::ReceiveOnly => {
                return Err(Reject::AccountReceiveOnly {
                    leg: leg_no,
                    account,
                })
            }
            AccountStatus::Frozen => {
                return Err(Reject::AccountFrozen {
                    leg: leg_no,
                    account,
                })
            }
            _ => {}
        }
        if a.balance.checked_sub(amount).is_none() {
            return Err(overflow);
        }
        let room = match leg.bucket {
            Bucket::Frozen => {
                if a.frozen < amount {
                    return Err(Reject::InsufficientFrozen {
                        leg: leg_no,
                        account,
                        frozen: dec(a.frozen),
                        requested: dec(amount),
                    });
                }
                return Ok(());
            }
            Bucket::Withdrawable => a.spendable() - i128::from(a.non_withdrawable),
            Bucket::Available | Bucket::NonWithdrawable => a.spendable(),
        };
        if room < i128::from(amount) {
            let shown = i64::try_from(room.max(0)).unwrap_or(i64::MAX);
            return Err(Reject::InsufficientFunds {
                leg: leg_no,
                account,
                available: dec(shown),
                requested: dec(amount),
            });
        }
        Ok(())
    }

    /// Applies a checked leg with checked arithmetic and writes its
    /// detail; `None` when a part would not fit (the account unchanged).
    fn apply(
        &mut self,
        txn: u128,
        leg_no: u16,
        ts: u64,
        leg: &Leg,
        amount: i64,
        op: Op,
    ) -> Option<()> {
        let a = self.accounts.get_mut(&leg.account.0).expect("checked");
        let mut next = a.clone();
        let up = leg.side == next.normal;
        let (kind, detail_amount) = match op {
            Op::Post => {
                next.post(up, leg.bucket, amount)?;
                (DetailKind::Posted, amount)
            }
            Op::Reserve => {
                if up {
                    next.incoming = next.incoming.checked_add(amount)?;
                } else {
                    next.reserved = next.reserved.checked_add(amount)?;
                }
                (DetailKind::Reserved, amount)
            }
            Op::Capture(reserved) => {
                next.release(up, reserved)?;
                next.post(up, leg.bucket, amount)?;
                (DetailKind::Captured, amount)
            }
            Op::Release(reserved) => {
                next.release(up, reserved)?;
                (DetailKind::Released, reserved)
            }
        };
        next.version = next.version.checked_add(1)?;
        next.details.push(MDetail {
            txn,
            leg: leg_no,
            kind,
            amount: detail_amount,
            pre: a.balance,
            post: next.balance,
            version: next.version,
            timestamp: ts,
        });
        *a = next;
        Some(())
    }

    /// One call, transaction by transaction, chain by chain.
    pub fn submit(&mut self, txns: &[Transaction], now: u64) -> Vec<Outcome> {
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
                Err(r) => return self.refuse_chain(txns, chain, i, r, &plans, ts, now, out),
            }
        }
        let saved = (self.accounts.clone(), self.pendings.clone());
        let mut failure = None;
        'members: for (i, ts, legs) in &plans {
            for (n, (leg, amount, op)) in legs.iter().enumerate() {
                let n = n as u16;
                let applied = self.check(n, leg, *amount, *op).and_then(|()| {
                    self.apply(txns[*i].id.0, n, *ts, leg, *amount, *op).ok_or(
                        Reject::BalanceOverflow {
                            leg: n,
                            account: leg.account,
                        },
                    )
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
            self.record(&txns[*i], Some(*ts), result, out, *i);
        }
    }

    /// A chain the sequencer refused (member `bad` for `r`): every member
    /// is recorded with the timestamp it took (one id, one answer).
    #[allow(clippy::too_many_arguments)]
    fn refuse_chain(
        &mut self,
        txns: &[Transaction],
        chain: &[usize],
        bad: usize,
        r: Reject,
        plans: &[Plan],
        ts: u64,
        now: u64,
        out: &mut [Option<Outcome>],
    ) {
        let first_ts = plans.first().map_or(ts, |p| p.1);
        self.last_ts = first_ts - 1;
        for &j in chain {
            let reason = if j == bad {
                r.clone()
            } else {
                Reject::LinkedTxnFailed
            };
            let ts = self.stamp(now, false);
            self.record(&txns[j], Some(ts), Err(reason), out, j);
        }
    }

    fn record(
        &mut self,
        t: &Transaction,
        ts: Option<u64>,
        result: Result<(), Reject>,
        out: &mut [Option<Outcome>],
        at: usize,
    ) {
        let outcome = Outcome {
            id: t.id,
            timestamp: ts.map(Timestamp),
            result,
            duplicate: false,
        };
        self.index.insert(t.id.0, (t.clone(), outcome.clone()));
        out[at] = Some(outcome);
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
    ) -> Result<Vec<(Leg, i64, Op)>, Reject> {
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

    fn settle(&mut self, t: &Transaction, ts: u64) {
        let status = match t.kind {
            TxnKind::Posted => return,
            TxnKind::Pending { timeout_ms } => {
                let legs = t
                    .legs
                    .iter()
                    .map(|l| (l.account.0, l.side, l.bucket, cents(l.amount)))
                    .collect();
                let pending = MPending {
                    legs,
                    deadline: ts + timeout_ms * 1_000_000,
                    status: PStatus::Open,
                };
                self.pendings.insert(t.id.0, pending);
                return;
            }
            TxnKind::PostPending { pending_id } => (pending_id, PStatus::Posted),
            TxnKind::VoidPending { pending_id } => (pending_id, PStatus::Voided),
        };
        self.pendings
            .get_mut(&status.0 .0)
            .expect("resolved")
            .status = status.1;
    }
}

/// A reserved leg as the leg that captures or releases it.
fn as_leg(&(account, side, bucket, amount): &(u64, Side, Bucket, i64)) -> Leg {
    Leg {
        account: AccountId(account),
        side,
        amount: dec(amount),
        currency: Currency::CNY,
        bucket,
        expected_version: None,
    }
}

/// The stateless refusals the generators can produce, in the checker's
/// order: a void with legs; per leg, a non-positive amount, then one too
/// large for minor units; then balance.
pub fn stateless(t: &Transaction) -> Result<(), Reject> {
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
            currency: Currency::CNY,
            debits: Decimal::from_i128_with_scale(debits, 2),
            credits: Decimal::from_i128_with_scale(credits, 2),
        });
    }
    Ok(())
}
