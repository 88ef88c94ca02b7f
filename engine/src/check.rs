//! Stateless checks, run on the caller's thread before a request reaches the
//! sequencer: amounts converted to minor units, scales and balance checked,
//! legs routed, fingerprints taken, linked chains formed. None of it needs
//! engine state, so it scales with the callers instead of loading the one
//! sequencer thread.

use crate::account::LegOp;
use crate::command::{Legs, SeqLeg};
use crate::routing::shard_of;
use crate::txn::{Outcome, Reject, Transaction, TxnKind, LEGS_MAX};
use crate::types::{AccountId, Currency, Minor, MinorError, Side, TxnCode, TxnId};
use rustc_hash::{FxHashMap, FxHashSet};

/// A chain member being checked: its index in the request, and either its
/// checked form or why it was refused.
type ChainMember = (usize, Result<Checked, (TxnId, Reject)>);

/// What the stateless checks need: the currency table and the shard count.
#[derive(Clone, Debug)]
pub(crate) struct Checker {
    pub scales: FxHashMap<Currency, u32>,
    pub shards: u16,
}

/// A call's transactions after the stateless checks: answers for the ones
/// already refused, and the chains that go on to the sequencer.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    pub outcomes: Vec<Option<Outcome>>,
    /// Checked transactions with their position in the call.
    pub txns: Vec<(usize, Checked)>,
    /// Each chain as a range of `txns`.
    pub chains: Vec<(u32, u32)>,
}

/// A transaction that passed the stateless checks.
#[derive(Debug)]
pub(crate) struct Checked {
    pub id: TxnId,
    pub code: TxnCode,
    pub kind: TxnKind,
    pub linked: bool,
    pub legs: Legs,
    pub fingerprint: u64,
}

impl Checker {
    pub fn route(&self, account: AccountId) -> u16 {
        shard_of(account, self.shards).0
    }

    /// Stateless checks of one call's transactions, chain by chain.
    pub fn check_request(&self, txns: Vec<Transaction>) -> Prepared {
        let count = txns.len();
        let mut prepared = Prepared {
            outcomes: vec![None; count],
            txns: Vec::with_capacity(count),
            chains: Vec::new(),
        };
        let mut seen: FxHashSet<TxnId> =
            FxHashSet::with_capacity_and_hasher(count, Default::default());
        let mut chain: Vec<ChainMember> = Vec::new();
        for (index, txn) in txns.into_iter().enumerate() {
            let linked = txn.linked;
            let checked = if seen.insert(txn.id) {
                self.check(txn)
            } else {
                Err((txn.id, Reject::DuplicateIdInBatch))
            };
            chain.push((index, checked));
            if linked && index + 1 < count {
                continue;
            }
            let start = prepared.txns.len() as u32;
            match split_chain(&mut chain, linked, &mut prepared.txns) {
                Ok(()) => prepared.chains.push((start, prepared.txns.len() as u32)),
                Err(failed) => {
                    for (i, o) in failed {
                        prepared.outcomes[i] = Some(o);
                    }
                }
            }
        }
        prepared
    }

    fn check(&self, txn: Transaction) -> Result<Checked, (TxnId, Reject)> {
        let id = txn.id;
        self.check_legs(&txn)
            .map_err(|r| (id, r))
            .map(|legs| Checked {
                id,
                code: txn.code,
                fingerprint: fingerprint(&txn, &legs),
                kind: txn.kind,
                linked: txn.linked,
                legs,
            })
    }

    fn check_legs(&self, txn: &Transaction) -> Result<Legs, Reject> {
        let (op, may_be_empty) = match txn.kind {
            TxnKind::Posted => (LegOp::Post, false),
            TxnKind::Pending { .. } => (LegOp::Reserve, false),
            TxnKind::PostPending { .. } => (LegOp::Post, true),
            TxnKind::VoidPending { .. } => {
                return if txn.legs.is_empty() {
                    Ok(Legs::new())
                } else {
                    Err(Reject::VoidWithLegs)
                };
            }
        };
        if txn.legs.is_empty() && !may_be_empty {
            return Err(Reject::NoLegs);
        }
        if txn.legs.len() > LEGS_MAX {
            return Err(Reject::TooManyLegs {
                count: txn.legs.len(),
                max: LEGS_MAX,
            });
        }
        let mut legs = Legs::with_capacity(txn.legs.len());
        let mut sums: Vec<(Currency, i128, i128)> = Vec::new();
        for (i, leg) in txn.legs.iter().enumerate() {
            let n = i as u16;
            let scale = *self
                .scales
                .get(&leg.currency)
                .ok_or(Reject::UnknownCurrency {
                    leg: n,
                    currency: leg.currency,
                })?;
            if leg.amount <= rust_decimal::Decimal::ZERO {
                return Err(Reject::AmountNotPositive {
                    leg: n,
                    amount: leg.amount,
                });
            }
            let amount = Minor::convert(leg.amount, scale).map_err(|e| match e {
                MinorError::TooManyDecimals => Reject::TooManyDecimals {
                    leg: n,
                    amount: leg.amount,
                    currency: leg.currency,
                    scale,
                },
                MinorError::Overflow => Reject::AmountOverflow {
                    leg: n,
                    amount: leg.amount,
                },
            })?;
            if op == LegOp::Reserve && leg.bucket == crate::Bucket::Frozen {
                return Err(Reject::BucketNotAllowed { leg: n });
            }
            let at = match sums.iter().position(|s| s.0 == leg.currency) {
                Some(at) => at,
                None => {
                    sums.push((leg.currency, 0, 0));
                    sums.len() - 1
                }
            };
            match leg.side {
                Side::Debit => sums[at].1 += i128::from(amount.0),
                Side::Credit => sums[at].2 += i128::from(amount.0),
            }
            legs.push(SeqLeg {
                account: leg.account,
                amount: amount.0,
                expected_version: leg.expected_version.map(|v| v.0),
                currency: leg.currency,
                side: leg.side,
                bucket: leg.bucket,
                op,
                shard: self.route(leg.account),
            });
        }
        if let Some(&(currency, d, c)) = sums.iter().find(|s| s.1 != s.2) {
            let scale = self.scales.get(&currency).copied().unwrap_or(0);
            let dec = |v: i128| rust_decimal::Decimal::from_i128_with_scale(v, scale);
            return Err(Reject::Unbalanced {
                currency,
                debits: dec(d),
                credits: dec(c),
            });
        }
        Ok(legs)
    }
}

pub(crate) fn unsequenced(id: TxnId, reject: Reject) -> Outcome {
    Outcome {
        id,
        timestamp: None,
        result: Err(reject),
        duplicate: false,
    }
}

/// Every member of a chain refused: `failed` with `reject`, the others with
/// `LinkedTxnFailed`.
pub(crate) fn chain_failed(
    members: &[(usize, Checked)],
    failed: usize,
    reject: Reject,
) -> Vec<(usize, Outcome)> {
    members
        .iter()
        .map(|(i, c)| {
            let r = if *i == failed {
                reject.clone()
            } else {
                Reject::LinkedTxnFailed
            };
            (*i, unsequenced(c.id, r))
        })
        .collect()
}

/// A chain goes on (moved into `out`) only if every member passed; else
/// all its members are answered. Empties `members` either way.
#[allow(clippy::type_complexity)]
pub(crate) fn split_chain(
    members: &mut Vec<(usize, Result<Checked, (TxnId, Reject)>)>,
    open: bool,
    out: &mut Vec<(usize, Checked)>,
) -> Result<(), Vec<(usize, Outcome)>> {
    if !open && members.iter().all(|(_, c)| c.is_ok()) {
        out.extend(
            members
                .drain(..)
                .filter_map(|(i, c)| c.ok().map(|c| (i, c))),
        );
        return Ok(());
    }
    let first_bad = members.iter().find(|(_, c)| c.is_err()).map(|(i, _)| *i);
    Err(members
        .drain(..)
        .map(|(i, c)| {
            let id = match &c {
                Ok(c) => c.id,
                Err((id, _)) => *id,
            };
            let reject = match c {
                _ if open => Reject::LinkedChainOpen,
                Err((_, r)) if Some(i) == first_bad => r,
                _ => Reject::LinkedTxnFailed,
            };
            (i, unsequenced(id, reject))
        })
        .collect())
}

/// A stable hash of what the caller sent (amounts in minor units, so 1.5
/// and 1.50 are the same request), to tell a retry from a conflict. A word
/// at a time, multiply-rotate (FxHash's step): written here so it never
/// changes under us, as the log keeps fingerprints.
fn fingerprint(t: &Transaction, legs: &[SeqLeg]) -> u64 {
    let mut h = WordHash::default();
    h.word(u64::from(t.code.0) | u64::from(t.linked) << 32);
    match t.kind {
        TxnKind::Posted => h.word(0),
        TxnKind::Pending { timeout_ms } => {
            h.word(1);
            h.word(timeout_ms);
        }
        TxnKind::PostPending { pending_id } | TxnKind::VoidPending { pending_id } => {
            h.word(if matches!(t.kind, TxnKind::PostPending { .. }) {
                2
            } else {
                3
            });
            h.word(pending_id.0 as u64);
            h.word((pending_id.0 >> 64) as u64);
        }
    }
    for leg in legs {
        h.word(leg.account.0);
        h.word(leg.amount as u64);
        let currency = u64::from(u32::from_le_bytes([
            leg.currency.0[0],
            leg.currency.0[1],
            leg.currency.0[2],
            0,
        ]));
        h.word(currency | (leg.side as u64) << 32 | (leg.bucket as u64) << 40);
        h.word(leg.expected_version.unwrap_or(u64::MAX));
    }
    h.0
}

#[derive(Default)]
struct WordHash(u64);

impl WordHash {
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}
