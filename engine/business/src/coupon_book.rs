//! What the ledger keeps about coupons (see `coupon.rs` for what it does
//! with it): batches, each coupon's uses, the per-batch queues of
//! redemptions with their rounds in flight and the marketing budget,
//! merchants' alert thresholds, and the types a redemption answers with.

use super::account_no::AccountNo;
use super::error::LedgerError;
use super::ids::CouponId;
use super::posted::Posted;
use dashmap::DashMap;
use rust_decimal::Decimal;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use tally_engine::{Timestamp, TxnId, Version};

/// Redemptions decided and submitted together, at most (one engine call).
pub(super) const ROUND_MAX: usize = 4_096;

/// Events buffered for a slow subscriber (older ones are dropped for it).
pub const EVENTS_BUFFER: usize = 1_024;

/// Who pays a coupon's discount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CouponFunding {
    /// The merchant's marketing account.
    Merchant,
    /// The platform's marketing pool.
    Platform,
    /// The platform pays this percentage (rounded down), the merchant the
    /// rest.
    Split { platform_percent: u8 },
}

/// What a refund of the payment does to its coupon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnRefund {
    /// The coupon may be used again.
    Restore,
    /// The coupon stays used.
    Void,
}

/// A batch as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponBatch {
    pub id: TxnId,
    pub merchant: AccountNo,
    pub face_value: Decimal,
    pub count: u64,
    pub valid_from: Timestamp,
    pub valid_until: Timestamp,
    pub per_member: Option<u32>,
    pub funding: CouponFunding,
    pub on_refund: OnRefund,
}

/// A redemption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redeemed {
    /// The payment's transaction (keep its id to refund it).
    pub posted: Posted,
    pub discount: Decimal,
    pub merchant_part: Decimal,
    pub platform_part: Decimal,
}

/// What the ledger tells the embedding application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerEvent {
    /// A merchant's marketing account went below its alert threshold.
    MarketingLow {
        merchant: AccountNo,
        balance: Decimal,
        threshold: Decimal,
    },
}

/// A merchant's alert: its threshold, and whether the last balance seen
/// (at `version`) was below it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Alert {
    pub(super) threshold: Decimal,
    pub(super) below: bool,
    pub(super) version: Version,
}

/// The coupon side of the ledger's memory.
#[derive(Default)]
pub(super) struct Coupons {
    pub(super) batches: DashMap<TxnId, Arc<CouponBatch>, FxBuildHasher>,
    /// Per batch, per coupon serial: its next use and whether it is used
    /// (a hint: the engine's idempotency decides). One lock per batch, so
    /// a round reads and writes its coupons' uses under one lock.
    pub(super) uses: DashMap<TxnId, Arc<UseMap>, FxBuildHasher>,
    /// Per batch and member: coupons redeemed (changed under the batch's
    /// turn only).
    pub(super) member_uses: DashMap<(TxnId, AccountNo), u32, FxBuildHasher>,
    /// Batches issued by this ledger since it opened: every use of their
    /// coupons went through it, so a coupon it does not know is unused.
    pub(super) issued_here: DashMap<TxnId, ()>,
    /// Per batch: redemptions waiting, and the turn to decide them.
    pub(super) queues: DashMap<TxnId, Arc<CouponQueue>, FxBuildHasher>,
    pub(super) alerts: parking_lot::Mutex<HashMap<AccountNo, Alert>>,
}

/// What the ledger knows of one coupon's uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Use {
    /// The use number the next redemption takes (or, if `used`, the
    /// committed one's).
    pub(super) next: u64,
    pub(super) used: bool,
    /// The committed use's payer, amount and fee, hashed (0: not known, as
    /// after a read back): another payment with this coupon is refused
    /// here; the same one is submitted again and answered as a duplicate.
    pub(super) content: u64,
    /// Use `next` went to the engine and its answer was lost (the call
    /// failed, or its caller dropped it): it may have committed. The next
    /// redemption tries use `next` again (the same payment is then answered
    /// as the first), and the coupon's uses are read back before it is
    /// refused as short.
    pub(super) unsure: bool,
}

impl Use {
    pub(super) fn unused(next: u64) -> Use {
        Use {
            next,
            used: false,
            content: 0,
            unsure: false,
        }
    }

    pub(super) fn unsure(next: u64) -> Use {
        Use {
            unsure: true,
            ..Use::unused(next)
        }
    }
}

/// Redemptions of one batch waiting to be decided, the turn to decide
/// them, and what is in flight.
///
/// A round is decided under the turn (use numbers, limits, funding) and
/// submitted after the turn is let go, so the next round is decided while
/// the engine applies this one. A coupon in flight waits in the queue for
/// its answer; what the marketing account can still fund is kept in
/// `book.budget` and read from the engine only when unknown or short.
#[derive(Default)]
pub(super) struct CouponQueue {
    pub(super) waiting: parking_lot::Mutex<Vec<Redemption>>,
    pub(super) turn: tokio::sync::Mutex<()>,
    pub(super) book: parking_lot::Mutex<Book>,
    /// Told whenever a round lands.
    pub(super) landed: tokio::sync::Notify,
}

/// A queue's rounds in flight.
#[derive(Default)]
pub(super) struct Book {
    pub(super) flying: rustc_hash::FxHashSet<CouponId>,
    pub(super) flights: u32,
    /// The merchant's marketing account's available money as last read,
    /// less what rounds took since (in flight or committed) and plus what
    /// the engine refused of it; `None`: read it. It can only be too low
    /// by what reached the account since the read (funding, refunds: a
    /// short redemption reads it again before it is refused) or too high
    /// by what left it by another path (the engine then refuses the
    /// redemption: nothing is taken either way).
    pub(super) budget: Option<Decimal>,
}

/// A batch's coupons' uses, by serial.
pub(super) type UseMap = parking_lot::Mutex<rustc_hash::FxHashMap<u64, Use>>;

impl Coupons {
    /// The uses of a batch's coupons (created empty).
    pub(super) fn uses_of(&self, batch: TxnId) -> Arc<UseMap> {
        Arc::clone(self.uses.entry(batch).or_default().value())
    }

    pub(super) fn use_of(&self, coupon: CouponId) -> Option<Use> {
        let map = self.uses.get(&coupon.batch)?;
        let found = map.lock().get(&coupon.serial).copied();
        found
    }

    pub(super) fn set_use(&self, coupon: CouponId, u: Use) {
        self.uses_of(coupon.batch).lock().insert(coupon.serial, u);
    }

    pub(super) fn forget_use(&self, coupon: CouponId) {
        if let Some(map) = self.uses.get(&coupon.batch) {
            map.lock().remove(&coupon.serial);
        }
    }

    pub(super) fn queue(&self, batch: TxnId) -> Arc<CouponQueue> {
        Arc::clone(self.queues.entry(batch).or_default().value())
    }
}

impl CouponQueue {
    /// The next round: waiting redemptions whose coupon is not in flight,
    /// each coupon once, at most `ROUND_MAX`; the rest keep waiting.
    pub(super) fn take_round(&self) -> Vec<Redemption> {
        let mut waiting = self.waiting.lock();
        if waiting.is_empty() {
            return Vec::new();
        }
        let book = self.book.lock();
        let mut seen = rustc_hash::FxHashSet::default();
        let mut round = Vec::new();
        let mut rest = Vec::new();
        for w in waiting.drain(..) {
            if round.len() < ROUND_MAX && !book.flying.contains(&w.coupon) && seen.insert(w.coupon)
            {
                round.push(w);
            } else {
                rest.push(w);
            }
        }
        *waiting = rest;
        round
    }
}

/// A round on its way to the engine. Dropped — landed or not (a caller
/// cancelled meanwhile) — it takes its coupons out of flight and wakes
/// the queue's waiters; not landed, the budget is read again.
pub(super) struct Flight {
    pub(super) queue: Arc<CouponQueue>,
    /// The round's coupons and the use each was submitted as.
    pub(super) coupons: Vec<(CouponId, u64)>,
    /// The batch's uses (not landed: each coupon's use becomes unsure).
    pub(super) uses: Arc<UseMap>,
    pub(super) landed: bool,
}

impl Drop for Flight {
    fn drop(&mut self) {
        if !self.landed {
            let mut uses = self.uses.lock();
            for &(c, n) in &self.coupons {
                uses.insert(c.serial, Use::unsure(n));
            }
        }
        {
            let mut book = self.queue.book.lock();
            book.flights = book.flights.saturating_sub(1);
            for (c, _) in &self.coupons {
                book.flying.remove(c);
            }
            if !self.landed {
                book.budget = None;
            }
        }
        self.queue.landed.notify_waiters();
    }
}

/// A redemption checked and waiting, and where its answer goes.
pub(super) struct Redemption {
    pub(super) coupon: CouponId,
    pub(super) payer: AccountNo,
    pub(super) amount: Decimal,
    pub(super) fee: Decimal,
    pub(super) discount: Decimal,
    pub(super) merchant_part: Decimal,
    pub(super) platform_part: Decimal,
    /// Payer, amount and fee, hashed (see [`Use::content`]).
    pub(super) content: u64,
    /// Decided again after its coupon's uses were read back.
    pub(super) read_back: bool,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<Redeemed, LedgerError>>,
}
