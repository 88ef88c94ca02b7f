//! Posting rules compiled for a fixed order of request fields, for the
//! typed fast paths (coupon redemptions): a transaction's legs are built
//! from member numbers and amounts by position, with no text key to look
//! up and no map to fill per request. The rule stays configuration: the
//! compiled form is made from the rule file at open and builds exactly
//! the legs [`crate::rules::TxnRule::build_legs`] builds.
//!
//! Depends on the rules, account numbers and internal accounts only.

use super::account_no::AccountNo;
use super::internal::Internal;
use super::rules::{AccountRef, BuildError, RuleSet, Timing, TxnRule};
use rust_decimal::Decimal;
use tally_engine::{AccountId, Bucket, Currency, Leg, Side, TxnCode, TxnId};

/// Where a compiled leg posts.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The member in field `index`, sub-account `sub`.
    Member { index: usize, sub: u8 },
    /// A fixed internal account; `daily`: its summary slot by the id.
    Fixed { no: AccountNo, daily: bool },
}

#[derive(Clone, Debug)]
struct CompiledLeg {
    /// (sign, index into the amounts).
    terms: Vec<(i64, usize)>,
    target: Target,
    side: Side,
    bucket: Bucket,
}

/// One rule, compiled for `members` and `amounts` given in a fixed order.
#[derive(Clone, Debug)]
pub(super) struct CompiledRule {
    pub(super) code: TxnCode,
    pub(super) name: String,
    legs: Vec<CompiledLeg>,
    currency: Currency,
    summary_slots: u8,
}

impl CompiledRule {
    /// `None` if the rule names a field outside these, or a channel
    /// account (a typed path has no channel field).
    pub(super) fn compile(
        rules: &RuleSet,
        rule: &TxnRule,
        members: &[&str],
        amounts: &[&str],
    ) -> Option<CompiledRule> {
        let mut legs = Vec::with_capacity(rule.legs.len());
        for leg in &rule.legs {
            let mut terms = Vec::with_capacity(leg.amount.terms.len());
            for (sign, name) in &leg.amount.terms {
                terms.push((*sign, amounts.iter().position(|a| a == name)?));
            }
            let target = match &leg.account {
                AccountRef::Member { field, account } => Target::Member {
                    index: members.iter().position(|m| m == field)?,
                    sub: account.code(),
                },
                AccountRef::Platform(account) => Target::Fixed {
                    no: Internal::Platform(*account).account_no(),
                    daily: leg.timing == Timing::Daily,
                },
                AccountRef::Channel { .. } => return None,
            };
            legs.push(CompiledLeg {
                terms,
                target,
                side: leg.side,
                bucket: leg.bucket,
            });
        }
        Some(CompiledRule {
            code: rule.code,
            name: rule.name.clone(),
            legs,
            currency: rules.currency,
            summary_slots: rules.summary_slots,
        })
    }

    /// The legs of transaction `id`: as the rule's own `build_legs` makes
    /// them (zero legs left out, a negative one refused).
    pub(super) fn legs(
        &self,
        id: TxnId,
        members: &[AccountNo],
        amounts: &[Decimal],
    ) -> Result<Vec<Leg>, BuildError> {
        let mut out = Vec::with_capacity(self.legs.len() + 1);
        for (i, leg) in self.legs.iter().enumerate() {
            let mut value = Decimal::ZERO;
            for &(sign, at) in &leg.terms {
                let term = amounts
                    .get(at)
                    .and_then(|a| Decimal::from(sign).checked_mul(*a))
                    .and_then(|t| value.checked_add(t));
                value = term.ok_or_else(|| BuildError::MissingAmount(format!("leg {i}")))?;
            }
            if value.is_sign_negative() && !value.is_zero() {
                return Err(BuildError::Negative { leg: i, value });
            }
            if value.is_zero() {
                continue;
            }
            let account = match leg.target {
                Target::Member { index, sub } => members
                    .get(index)
                    .map_or(AccountId(0), |no| no.account_id(sub)),
                Target::Fixed { no, daily: false } => no.account_id(0),
                Target::Fixed { no, daily: true } => {
                    no.account_id(summary_slot(id, self.summary_slots))
                }
            };
            out.push(Leg {
                account,
                side: leg.side,
                amount: value,
                currency: self.currency,
                bucket: leg.bucket,
                expected_version: None,
            });
        }
        Ok(out)
    }
}

/// The summary slot (1..=slots) a transaction's daily legs go to.
pub(super) fn summary_slot(id: TxnId, slots: u8) -> u8 {
    let h = fnv1a(&id.0.to_le_bytes());
    1 + (h % u128::from(slots.max(1))) as u8
}

/// 128-bit FNV-1a.
pub(super) fn fnv1a(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::account_no::AccountClass;
    use std::collections::BTreeMap;

    /// The compiled rule builds exactly what the rule's own `build_legs`
    /// builds, zero legs left out and negative ones refused alike.
    #[test]
    fn compiled_coupon_pay_builds_what_the_rule_builds() {
        let rules = RuleSet::default_rules().unwrap();
        let rule = rules.txn("coupon_pay").unwrap();
        let fields = ["amount", "fee", "merchant_discount", "platform_discount"];
        let compiled =
            CompiledRule::compile(&rules, rule, &["payer", "merchant"], &fields).unwrap();
        let payer = AccountNo::new(AccountClass::Personal, 7).unwrap();
        let merchant = AccountNo::new(AccountClass::Merchant, 9).unwrap();
        let cases: [[i64; 4]; 5] = [
            [10_00, 6, 1_00, 0],
            [10_00, 0, 0, 50],
            [1_00, 1_00, 60, 40],
            [10_00, 11_00, 1_00, 0], // fee above the amount: a negative leg
            [5, 0, 5, 0],            // the coupon pays it all
        ];
        for (i, case) in cases.iter().enumerate() {
            let id = TxnId(1_000 + i as u128);
            let amounts: Vec<Decimal> = case.iter().map(|&c| Decimal::new(c, 2)).collect();
            let named: BTreeMap<String, Decimal> = fields
                .iter()
                .map(|f| f.to_string())
                .zip(amounts.iter().copied())
                .collect();
            let expected = rule.build_legs(&named, rules.currency, |leg| match &leg.account {
                AccountRef::Member { field, account } => {
                    let no = if field == "payer" { payer } else { merchant };
                    no.account_id(account.code())
                }
                AccountRef::Platform(account) => {
                    let sub = if leg.timing == Timing::Daily {
                        summary_slot(id, rules.summary_slots)
                    } else {
                        0
                    };
                    Internal::Platform(*account).account_no().account_id(sub)
                }
                AccountRef::Channel { .. } => AccountId(0),
            });
            let got = compiled.legs(id, &[payer, merchant], &amounts);
            assert_eq!(format!("{got:?}"), format!("{expected:?}"), "case {i}");
        }
        // A rule naming a field the fast path does not give is not compiled.
        assert!(CompiledRule::compile(&rules, rule, &["payer"], &fields).is_none());
    }
}
