//! Stateless checks, run on the caller's thread before a request reaches the
//! sequencer: amounts converted to minor units, scales and balance checked,
//! legs routed, fingerprints taken, linked chains formed. None of it needs
//! engine state, so it scales with the callers instead of loading the one
//! sequencer thread.

use crate::account::LegOp;
use crate::command::{Fingerprint, Legs, SeqLeg};
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
    /// The store's secret fingerprint key (random, kept in its format
    /// record): nobody without it can craft two contents with one
    /// fingerprint.
    pub key: [u8; 32],
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
    pub fingerprint: Fingerprint,
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
                fingerprint: fingerprint(&self.key, &txn, &legs),
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

/// What the caller sent, as idempotency compares it: a keyed BLAKE3 (the
/// store's secret key) over every field, each in a fixed-width encoding
/// (amounts in minor units, so 1.5 and 1.50 are the same request; an
/// absent expected version is told apart from every present one),
/// truncated to 128 bits. Persisted in the log and the index: its value
/// must never change for the same key and request (golden test below).
pub(crate) fn fingerprint(key: &[u8; 32], t: &Transaction, legs: &[SeqLeg]) -> Fingerprint {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&t.code.0.to_le_bytes());
    h.update(&[u8::from(t.linked)]);
    match t.kind {
        TxnKind::Posted => {
            h.update(&[0]);
        }
        TxnKind::Pending { timeout_ms } => {
            h.update(&[1]);
            h.update(&timeout_ms.to_le_bytes());
        }
        TxnKind::PostPending { pending_id } => {
            h.update(&[2]);
            h.update(&pending_id.0.to_le_bytes());
        }
        TxnKind::VoidPending { pending_id } => {
            h.update(&[3]);
            h.update(&pending_id.0.to_le_bytes());
        }
    }
    h.update(&(legs.len() as u64).to_le_bytes());
    for leg in legs {
        h.update(&leg.account.0.to_le_bytes());
        h.update(&leg.amount.to_le_bytes());
        h.update(&leg.currency.0);
        h.update(&[leg.side as u8, leg.bucket as u8]);
        match leg.expected_version {
            None => h.update(&[0; 9]),
            Some(v) => {
                h.update(&[1]);
                h.update(&v.to_le_bytes())
            }
        };
    }
    let out = h.finalize();
    let bytes = out.as_bytes();
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    [word(0), word(1)]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::txn::Leg;
    use crate::types::{AccountId, TxnCode};
    use rust_decimal::Decimal;

    fn checker(key: u8) -> Checker {
        Checker {
            scales: [(Currency::CNY, 2)].into_iter().collect(),
            shards: 2,
            key: [key; 32],
        }
    }

    fn fp(c: &Checker, t: Transaction) -> Fingerprint {
        let mut prepared = c.check_request(vec![t]);
        assert_eq!(prepared.txns.len(), 1, "{:?}", prepared.outcomes);
        prepared.txns.remove(0).1.fingerprint
    }

    fn transfer(cents: i64) -> Transaction {
        Transaction::transfer(
            TxnId(7),
            TxnCode(2001),
            AccountId(10),
            AccountId(11),
            Decimal::new(cents, 2),
            Currency::CNY,
        )
    }

    /// The value is persisted (log, index): a dependency bump or a change
    /// of encoding must not move it. Computed independently with Python's
    /// `blake3` package from the encoding `fingerprint` documents: key
    /// 32 × 0x01; code u32, linked, kind 0, leg count u64, then per leg
    /// account u64, amount i64 (minor units), "CNY", side, bucket, 9 zero
    /// bytes (no expected version); all little-endian.
    #[test]
    fn fingerprints_keep_their_golden_value() {
        let got = fp(&checker(1), transfer(12_345));
        assert_eq!(
            got,
            [0x2cba_addb_59f2_b2f8, 0x1683_4f4b_3382_8ca3],
            "{got:x?}"
        );
    }

    #[test]
    fn every_field_and_the_key_change_the_fingerprint() {
        let c = checker(1);
        let base = fp(&c, transfer(100));
        // 1.0 and 1.00 are the same request.
        let mut same = transfer(100);
        same.legs[0].amount = Decimal::new(1, 0);
        same.legs[1].amount = Decimal::new(100, 2);
        assert_eq!(fp(&c, same), base);
        let mut variants = vec![transfer(101)];
        let mut t = transfer(100);
        t.code = TxnCode(2002);
        variants.push(t);
        let mut t = transfer(100);
        t.legs[0].expected_version = Some(crate::types::Version(u64::MAX));
        variants.push(t);
        let mut t = transfer(100);
        t.legs[0].expected_version = Some(crate::types::Version(0));
        variants.push(t);
        let mut t = transfer(100);
        t.legs[1].bucket = crate::types::Bucket::NonWithdrawable;
        variants.push(t);
        let mut t = transfer(100);
        t.kind = TxnKind::Pending { timeout_ms: 5 };
        variants.push(t);
        let mut t = transfer(100);
        t.kind = TxnKind::Pending { timeout_ms: 6 };
        variants.push(t);
        let t = Transaction::posted(
            TxnId(7),
            TxnCode(2001),
            vec![
                Leg::debit(AccountId(11), Decimal::new(100, 2), Currency::CNY),
                Leg::credit(AccountId(10), Decimal::new(100, 2), Currency::CNY),
            ],
        );
        variants.push(t);
        let mut seen = vec![base];
        for v in variants {
            let f = fp(&c, v.clone());
            assert!(!seen.contains(&f), "{v:?} collides");
            seen.push(f);
        }
        assert_ne!(fp(&checker(2), transfer(100)), base, "the key matters");
    }
}
