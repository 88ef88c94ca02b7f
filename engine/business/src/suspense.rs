//! Refunds to a closed member (the rule a production ledger uses): the
//! merchant's refund still goes through, but what would have credited the
//! closed member's account credits the platform's suspense account
//! (`platform.suspense`, subject 2241 待处理款项) instead, and a record
//! `held/<refund id>` says whose money it is, from which original, how
//! much. An operator pays it out from there (to the original card, say);
//! [`Ledger::held_refunds`] lists what is held. Nothing is lost and the
//! closed member's accounts stay closed and empty.
//!
//! A held refund still counts as refunded: "never more than the
//! original" reads the suspense credit where the member's was.
//!
//! Only a member closed for good is redirected: a frozen account still
//! receives (credits arrive), and a pay-only (只付不收) one refuses the
//! refund with the engine's typed refusal.

use super::account_no::{AccountClass, AccountNo};
use super::error::LedgerError;
use super::ledger::{all_records, suspense_account, Ledger};
use super::person::MemberStatus;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_engine::{Bucket, Leg, Side, TxnId};

const PREFIX: &[u8] = b"held/";

/// A refund held in suspense for a closed member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRefund {
    /// The refund's transaction (committed).
    pub refund: TxnId,
    /// The payment it refunds.
    pub original: TxnId,
    /// The closed member it belongs to.
    pub member: AccountNo,
    pub amount: Decimal,
}

fn key(refund: TxnId) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(format!("{:032x}", refund.0).as_bytes());
    key
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
            leg.bucket = Bucket::Available;
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

    /// Every refund held in suspense for a closed member, oldest record
    /// key first (records whose refund did not commit are left out).
    pub async fn held_refunds(&self) -> Result<Vec<HeldRefund>, LedgerError> {
        let records: Vec<(Vec<u8>, Vec<HeldRefund>)> = all_records(self.engine(), PREFIX).await?;
        let mut out = Vec::new();
        for (_, held) in records {
            let Some(first) = held.first() else { continue };
            let committed = self
                .engine()
                .transaction(first.refund)
                .await?
                .is_some_and(|t| t.result.is_ok());
            if committed {
                out.extend(held);
            }
        }
        Ok(out)
    }
}
