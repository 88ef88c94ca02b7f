//! Refunds and reversals to a closed member (the rule a production ledger
//! uses): the merchant's refund, or the reversal, still goes through, but
//! what would have credited the closed member's account credits the
//! platform's suspense account (`platform.suspense`, subject 2241 待处理款项)
//! instead, and a record `held/<txn id>` says whose money it is, from
//! which original, how much. [`Ledger::held_refunds`] lists what is held
//! and not yet paid out. Nothing is lost and the closed member's accounts
//! stay closed and empty.
//!
//! A held refund still counts as refunded: "never more than the
//! original" reads the suspense credit where the member's was; a held
//! reversal still makes its original reversed.
//!
//! An operator pays a held amount out with [`Ledger::pay_out_held`]: to
//! an open member (the person's new wallet, say — a closed member is
//! closed for good) or out through a channel (the original card), once
//! only, with who and why recorded first (`heldpaid/<payout id>`).
//! Non-withdrawable money stays so: the suspense credit keeps the part
//! that came back non-withdrawable, a payout to a member gives it back
//! non-withdrawable, and a payout through a channel is refused while
//! the held amount has any (it would leave the platform).
//!
//! Only a member closed for good is redirected: a frozen account still
//! receives (credits arrive), and a pay-only (只付不收) one refuses the
//! refund with the engine's typed refusal.

use super::account_no::{AccountClass, AccountNo};
use super::error::LedgerError;
use super::ids::{derived_id, TAG_HELD_PAYOUT};
use super::internal::{ChannelAccount, Internal};
use super::ledger::{all_records, suspense_account, Ledger};
use super::lifecycle::MEMBER_NOTE_MAX;
use super::person::MemberStatus;
use super::template::AccountType;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use tally_engine::{AccountId, Bucket, Leg, Side, Timestamp, Transaction, TxnId};

const PREFIX: &[u8] = b"held/";
const PAID_PREFIX: &[u8] = b"heldpaid/";
/// Payout attempts of one held amount (a refused attempt is final for its
/// id, so a retry after, say, the destination is unfrozen uses the next).
pub const HELD_PAYOUT_ATTEMPTS_MAX: u64 = 16;
/// Members one held transaction may hold money for, as payout ids count them.
const HELD_MEMBERS_MAX: u64 = 1 << 16;

/// A refund or reversal held in suspense for a closed member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRefund {
    /// The refund's or reversal's transaction (committed).
    pub refund: TxnId,
    /// The payment it refunds.
    pub original: TxnId,
    /// The closed member it belongs to.
    pub member: AccountNo,
    pub amount: Decimal,
}

/// Where an operator pays a held amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayoutTo {
    /// An open member's balance account.
    Member(AccountNo),
    /// Out through a channel (to the original card): the channel's
    /// payable account, as a withdrawal does.
    Channel(String),
}

/// An operator's request to pay out what one transaction holds for one
/// closed member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayOutHeld {
    /// The refund or reversal that held it ([`HeldRefund::refund`]).
    pub held: TxnId,
    /// The closed member it is held for.
    pub member: AccountNo,
    pub to: PayoutTo,
    /// Who pays it out, and why: 1..=[`MEMBER_NOTE_MAX`] characters each.
    pub by: String,
    pub reason: String,
}

/// A committed payout of held money, with who and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPayout {
    /// The payout's transaction.
    pub payout: TxnId,
    pub held: TxnId,
    pub member: AccountNo,
    pub amount: Decimal,
    /// Of `amount`, what was non-withdrawable (and stays so).
    pub non_withdrawable: Decimal,
    pub to: PayoutTo,
    pub by: String,
    pub reason: String,
    pub at: Timestamp,
}

fn key(refund: TxnId) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(format!("{:032x}", refund.0).as_bytes());
    key
}

fn paid_key(payout: TxnId) -> Vec<u8> {
    let mut key = PAID_PREFIX.to_vec();
    key.extend_from_slice(format!("{:032x}", payout.0).as_bytes());
    key
}

/// The id of attempt `attempt` to pay out what `held` holds for its
/// `index`-th member.
fn payout_id(held: TxnId, index: u64, attempt: u64) -> TxnId {
    derived_id(
        TAG_HELD_PAYOUT,
        held,
        index * HELD_PAYOUT_ATTEMPTS_MAX + attempt,
    )
}

impl Ledger {
    /// Turns a refund's credits to closed members into credits of the
    /// suspense account, and records them (before the refund is
    /// submitted: a held refund never lacks its record; a record whose
    /// refund did not commit is not listed).
    pub(super) async fn hold_for_closed(
        &self,
        refund: TxnId,
        original: TxnId,
        legs: &mut [Leg],
    ) -> Result<(), LedgerError> {
        let suspense = suspense_account();
        let mut held: Vec<HeldRefund> = Vec::new();
        for leg in legs.iter_mut().filter(|l| l.side == Side::Credit) {
            let Some((member, _)) = AccountNo::of_account_id(leg.account) else {
                continue;
            };
            if member.class() == AccountClass::Internal
                || self.member_status(member) != MemberStatus::Closed
            {
                continue;
            }
            leg.account = suspense;
            // Non-withdrawable money stays so, in suspense too, so that a
            // payout gives it back as it came.
            if leg.bucket != Bucket::NonWithdrawable {
                leg.bucket = Bucket::Available;
            }
            match held.iter_mut().find(|h| h.member == member) {
                Some(h) => h.amount += leg.amount,
                None => held.push(HeldRefund {
                    refund,
                    original,
                    member,
                    amount: leg.amount,
                }),
            }
        }
        if held.is_empty() {
            return Ok(());
        }
        let value =
            postcard::to_allocvec(&held).map_err(|e| LedgerError::MemberRecord(e.to_string()))?;
        for result in self
            .engine()
            .put_records(vec![(key(refund), value)])
            .await?
        {
            result?;
        }
        Ok(())
    }

    /// Every refund or reversal held in suspense for a closed member and
    /// not paid out, by record key (records whose transaction did not
    /// commit are left out).
    pub async fn held_refunds(&self) -> Result<Vec<HeldRefund>, LedgerError> {
        let paid: BTreeSet<(TxnId, AccountNo)> = self
            .held_payouts()
            .await?
            .into_iter()
            .map(|p| (p.held, p.member))
            .collect();
        let records: Vec<(Vec<u8>, Vec<HeldRefund>)> = all_records(self.engine(), PREFIX).await?;
        let mut out = Vec::new();
        for (_, held) in records {
            let Some(first) = held.first() else { continue };
            if self.committed_txn(first.refund).await? {
                out.extend(
                    held.into_iter()
                        .filter(|h| !paid.contains(&(h.refund, h.member))),
                );
            }
        }
        Ok(out)
    }

    /// Every committed payout of held money, with who and why, by record key.
    pub async fn held_payouts(&self) -> Result<Vec<HeldPayout>, LedgerError> {
        let notes: Vec<(Vec<u8>, HeldPayout)> = all_records(self.engine(), PAID_PREFIX).await?;
        let mut out = Vec::new();
        for (_, note) in notes {
            if self.committed_txn(note.payout).await? {
                out.push(note);
            }
        }
        Ok(out)
    }

    /// Pays out what `request.held` holds for `request.member`: from the
    /// suspense account to an open member or out through a channel, once
    /// only (a second payout is refused with the first's id), the record
    /// of who and why written before the posting. Refused, nothing posted
    /// nor recorded: a blank or too long `by` or `reason`, nothing held
    /// by that transaction for that member, an unknown, closed or unusable
    /// destination, non-withdrawable money to a channel.
    pub async fn pay_out_held(&self, request: PayOutHeld) -> Result<HeldPayout, LedgerError> {
        for (field, text) in [("by", &request.by), ("reason", &request.reason)] {
            if text.trim().is_empty() || text.chars().count() > MEMBER_NOTE_MAX {
                return Err(LedgerError::PayoutNote {
                    field: field.into(),
                    max: MEMBER_NOTE_MAX,
                });
            }
        }
        let (held, member) = (request.held, request.member);
        let _exclusive = self.originals.lock(held).await;
        let (index, amount, non_withdrawable) = self.held_share(held, member).await?;
        let to = self.payout_account(&request.to)?;
        if matches!(request.to, PayoutTo::Channel(_)) && !non_withdrawable.is_zero() {
            return Err(LedgerError::HeldNonWithdrawable {
                held,
                member,
                non_withdrawable,
            });
        }
        let legs = self.payout_legs(to, amount, non_withdrawable);
        for attempt in 0..HELD_PAYOUT_ATTEMPTS_MAX {
            let id = payout_id(held, index, attempt);
            match self.engine().transaction(id).await? {
                Some(v) if v.result.is_ok() => {
                    return Err(LedgerError::HeldPaidOut {
                        held,
                        member,
                        payout: id,
                    })
                }
                Some(_) => continue,
                None => {}
            }
            let note = HeldPayout {
                payout: id,
                held,
                member,
                amount,
                non_withdrawable,
                to: request.to.clone(),
                by: request.by.trim().to_string(),
                reason: request.reason.trim().to_string(),
                at: self.clock_now(),
            };
            self.record_payout(&note).await?;
            let txn = Transaction::posted(id, self.rules().held_payout_code, legs.clone());
            let outcome = self.submit_one(txn).await?;
            match (outcome.result, outcome.duplicate) {
                (Ok(()), false) => return Ok(note),
                (Ok(()), true) => {
                    return Err(LedgerError::HeldPaidOut {
                        held,
                        member,
                        payout: id,
                    })
                }
                (Err(_), true) => continue,
                (Err(reject), false) => return Err(LedgerError::Rejected(reject)),
            }
        }
        Err(LedgerError::PayoutAttempts { held, member })
    }

    /// Who pays out what and why, recorded before the payout is posted
    /// (a record whose payout did not commit is not listed).
    async fn record_payout(&self, note: &HeldPayout) -> Result<(), LedgerError> {
        let value =
            postcard::to_allocvec(note).map_err(|e| LedgerError::MemberRecord(e.to_string()))?;
        for result in self
            .engine()
            .put_records(vec![(paid_key(note.payout), value)])
            .await?
        {
            result?;
        }
        Ok(())
    }

    async fn committed_txn(&self, id: TxnId) -> Result<bool, LedgerError> {
        Ok(self
            .engine()
            .transaction(id)
            .await?
            .is_some_and(|t| t.result.is_ok()))
    }

    /// The member's place in the held record, its amount and, of that,
    /// what is non-withdrawable (the transaction's non-withdrawable
    /// suspense credits, given to the record's members in its order).
    async fn held_share(
        &self,
        held: TxnId,
        member: AccountNo,
    ) -> Result<(u64, Decimal, Decimal), LedgerError> {
        let missing = || LedgerError::HeldNotFound { held, member };
        let records: Vec<(Vec<u8>, Vec<HeldRefund>)> =
            all_records(self.engine(), &key(held)).await?;
        let entries = records
            .into_iter()
            .find(|(k, _)| *k == key(held))
            .map(|(_, v)| v)
            .ok_or_else(missing)?;
        let view = self.engine().transaction(held).await?.ok_or_else(missing)?;
        if view.result.is_err() {
            return Err(missing());
        }
        let mut nw_left: Decimal = view
            .details
            .iter()
            .filter(|d| {
                d.account == suspense_account()
                    && d.side == Side::Credit
                    && d.bucket == Bucket::NonWithdrawable
            })
            .map(|d| d.amount)
            .sum();
        for (index, entry) in (0u64..HELD_MEMBERS_MAX).zip(entries) {
            let nw = nw_left.min(entry.amount);
            nw_left -= nw;
            if entry.member == member {
                return Ok((index, entry.amount, nw));
            }
        }
        Err(missing())
    }

    /// The account a payout credits, checked: an open member's balance
    /// account or a channel's payable account.
    fn payout_account(&self, to: &PayoutTo) -> Result<AccountId, LedgerError> {
        match to {
            PayoutTo::Member(number) => {
                if self.member(*number).is_none() {
                    return Err(LedgerError::UnknownMember(*number));
                }
                if self.member_status(*number) == MemberStatus::Closed {
                    return Err(LedgerError::PayoutToClosed(*number));
                }
                Ok(number.account_id(AccountType::Balance.code()))
            }
            PayoutTo::Channel(name) => {
                let channel = self
                    .rules()
                    .channels
                    .iter()
                    .find(|c| c.name == *name)
                    .ok_or_else(|| LedgerError::UnknownChannel(name.clone()))?;
                let payable = Internal::Channel {
                    number: channel.number,
                    account: ChannelAccount::Payable,
                };
                Ok(payable.account_no().account_id(0))
            }
        }
    }

    /// Suspense to `to`: the non-withdrawable part out of suspense's
    /// non-withdrawable money into the receiver's, the rest out of
    /// suspense's withdrawable money (not its other non-withdrawable).
    fn payout_legs(&self, to: AccountId, amount: Decimal, non_withdrawable: Decimal) -> Vec<Leg> {
        let leg = |account, side, amount, bucket| Leg {
            account,
            side,
            amount,
            currency: self.rules().currency,
            bucket,
            expected_version: None,
        };
        let rest = amount - non_withdrawable;
        let suspense = suspense_account();
        [
            leg(
                suspense,
                Side::Debit,
                non_withdrawable,
                Bucket::NonWithdrawable,
            ),
            leg(suspense, Side::Debit, rest, Bucket::Withdrawable),
            leg(to, Side::Credit, non_withdrawable, Bucket::NonWithdrawable),
            leg(to, Side::Credit, rest, Bucket::Available),
        ]
        .into_iter()
        .filter(|l| !l.amount.is_zero())
        .collect()
    }
}
