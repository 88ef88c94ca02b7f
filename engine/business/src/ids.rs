//! The ids the ledger derives and keys by: the transaction ids of a
//! refund, reversal, daily summary, red-packet claim and return, and
//! coupon use, each derived from its original's (so the engine's
//! idempotency makes "the reversal of X" one transaction), and a coupon's
//! id. Depends on nothing of the ledger.

use super::compiled::fnv1a;
use tally_engine::TxnId;

pub(super) const TAG_REFUND: u8 = 1;
pub(super) const TAG_REVERSAL: u8 = 2;
pub(super) const TAG_SUMMARY: u8 = 3;

/// A transaction id derived from an original's: deterministic, so the
/// engine's idempotency makes "the reversal of X" a single transaction.
pub fn derived_id(tag: u8, original: TxnId, n: u64) -> TxnId {
    let mut bytes = [0u8; 25];
    bytes[0] = tag;
    bytes[1..17].copy_from_slice(&original.0.to_le_bytes());
    bytes[17..].copy_from_slice(&n.to_le_bytes());
    TxnId(fnv1a(&bytes))
}

pub(super) const TAG_CLAIM: u8 = 4;

pub(super) const TAG_RETURN: u8 = 5;
pub(super) const TAG_COUPON: u8 = 6;
pub(super) const TAG_HELD_PAYOUT: u8 = 7;

/// One coupon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CouponId {
    pub batch: TxnId,
    pub serial: u64,
}

/// The transaction id of a coupon's `n`-th use.
pub fn coupon_use_id(coupon: CouponId, n: u64) -> TxnId {
    let key = TxnId(coupon.batch.0 ^ (u128::from(coupon.serial) << 64 | u128::from(coupon.serial)));
    derived_id(TAG_COUPON, key, (n << 48) ^ coupon.serial)
}
