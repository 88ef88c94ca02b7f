//! Coupons (优惠券) and the merchant's marketing account, on the [`Ledger`].
//!
//! A merchant **issues** a batch ([`Ledger::issue_coupons`]): face value,
//! how many, a validity window, a per-member limit, who funds the discount
//! (the merchant's marketing account, the platform's marketing pool, or a
//! split) and what a refund does to the coupon. The batch is a metadata
//! record (`coupon/<id>`); issuing funds nothing: the merchant funds its
//! marketing account separately (`marketing_fund`), typically far less
//! than the batch's face value.
//!
//! A coupon is `(batch, serial)`, `serial < count`. **Redeeming** it
//! ([`Ledger::pay_with_coupon`]) is one engine transaction of the
//! `coupon_pay` rule: the payer pays the amount less the discount, the
//! funders pay the discount; if the marketing account is short the whole
//! of it is refused ([`LedgerError::MarketingShort`]), so nothing of the
//! payment is taken: by the ledger, from the account's balance read once
//! for each group of redemptions it decides together, or by the engine.
//! Redemptions of one batch are decided in groups
//! ([`Ledger::pay_with_coupons`]) and submitted in one engine call. Its id is derived from the coupon and the use
//! number, so a coupon is redeemed at most once — across concurrent callers
//! and restarts — by the core's idempotency: a second redemption is the
//! same id with other content, refused. A refused redemption leaves the
//! coupon unused (the next try takes the next use number).
//!
//! A **refund** ([`Ledger::refund_coupon_payment`], whole payments only)
//! gives the payer back what it paid and the funders the discount; the
//! coupon is then usable again or void, as the batch says.
//!
//! **Low-balance alert**: [`Ledger::set_marketing_alert`] sets a merchant's
//! threshold; when its marketing account goes from at or above it to below
//! it, one [`LedgerEvent::MarketingLow`] goes out on the channel of
//! [`Ledger::subscribe`] — once per crossing (funding it back above the
//! threshold re-arms it), whatever the number of redemptions.

use super::account_no::AccountNo;
use super::error::LedgerError;
use super::internal::{Internal, PlatformAccount};
use super::ledger::{derived_id, Ledger, PostRequest, Posted};
use super::template::AccountType;
use dashmap::DashMap;
use futures_util::future::join_all;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tally_engine::DetailKind;
use tally_engine::SubmitError;
use tally_engine::{AccountId, Bucket, Side, Timestamp, TxnId, Version};
use tally_engine::{Reject, Transaction, SUBMIT_TRANSACTIONS_MAX};

pub(super) const TAG_COUPON: u8 = 6;
const PREFIX: &[u8] = b"coupon/";
const USER_PREFIX: &[u8] = b"couponuser/";
const ALERT_PREFIX: &[u8] = b"alert/";
/// Uses of one coupon (redemptions refused, or refunded and restored), at
/// most.
pub const COUPON_USES_MAX: u64 = 64;
/// Coupons in one batch, at most.
pub const COUPONS_PER_BATCH_MAX: u64 = 1 << 40;
/// Redemptions decided and submitted together, at most (one engine call).
const ROUND_MAX: usize = 4_096;
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

/// A request to issue a batch of coupons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueCoupons {
    /// The batch's id (the caller's idempotency key).
    pub id: TxnId,
    pub merchant: String,
    pub face_value: Decimal,
    pub count: u64,
    /// Redeemable from `valid_from` up to, not including, `valid_until`.
    pub valid_from: Timestamp,
    pub valid_until: Timestamp,
    /// Coupons of this batch one member may redeem, at most.
    pub per_member: Option<u32>,
    pub funding: CouponFunding,
    pub on_refund: OnRefund,
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

/// One coupon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CouponId {
    pub batch: TxnId,
    pub serial: u64,
}

/// A payment with a coupon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayWithCoupon {
    pub payer: String,
    pub merchant: String,
    pub amount: Decimal,
    pub fee: Decimal,
    pub coupon: CouponId,
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
    threshold: Decimal,
    below: bool,
    version: Version,
}

/// The coupon side of the ledger's memory.
#[derive(Default)]
pub(super) struct Coupons {
    batches: DashMap<TxnId, Arc<CouponBatch>>,
    /// Per coupon: the next use number, and whether it is used (a hint:
    /// the engine's idempotency decides).
    uses: DashMap<CouponId, (u64, bool)>,
    /// Per batch and member: coupons redeemed (changed under the batch's
    /// turn only).
    member_uses: DashMap<(TxnId, AccountNo), u32>,
    /// Batches issued by this ledger since it opened: every use of their
    /// coupons went through it, so a coupon it does not know is unused.
    issued_here: DashMap<TxnId, ()>,
    /// Per batch: redemptions waiting, and the turn to decide them.
    queues: DashMap<TxnId, Arc<CouponQueue>>,
    pub(super) alerts: parking_lot::Mutex<HashMap<AccountNo, Alert>>,
}

/// Redemptions of one batch waiting to be decided, and the turn to do it.
#[derive(Default)]
pub(super) struct CouponQueue {
    waiting: parking_lot::Mutex<Vec<Redemption>>,
    turn: tokio::sync::Mutex<()>,
}

impl Coupons {
    fn queue(&self, batch: TxnId) -> Arc<CouponQueue> {
        Arc::clone(self.queues.entry(batch).or_default().value())
    }
}

/// A redemption checked and waiting, and where its answer goes.
pub(super) struct Redemption {
    coupon: CouponId,
    payer: AccountNo,
    amount: Decimal,
    fee: Decimal,
    discount: Decimal,
    merchant_part: Decimal,
    platform_part: Decimal,
    /// Decided again after its coupon's uses were read back.
    read_back: bool,
    reply: tokio::sync::oneshot::Sender<Result<Redeemed, LedgerError>>,
}

enum Answer {
    Now(Result<Redeemed, LedgerError>),
    Waiting(tokio::sync::oneshot::Receiver<Result<Redeemed, LedgerError>>),
}

/// Answers every redemption with `e` (the first) or what of it can be
/// shared (an engine error), else "try again".
fn answer_all(waiting: impl Iterator<Item = Redemption>, e: LedgerError) {
    let shared = match &e {
        LedgerError::Engine(se) => Some(LedgerError::Engine(se.clone())),
        _ => None,
    };
    let mut first = Some(e);
    for w in waiting {
        let e = first.take().unwrap_or_else(|| match &shared {
            Some(LedgerError::Engine(se)) => LedgerError::Engine(se.clone()),
            _ => LedgerError::CouponBusy(w.coupon),
        });
        let _ = w.reply.send(Err(e));
    }
}

fn key(prefix: &[u8], tail: &str) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(tail.as_bytes());
    key
}

fn batch_key(id: TxnId) -> Vec<u8> {
    key(PREFIX, &format!("{:032x}", id.0))
}

fn member_key(batch: TxnId, member: AccountNo) -> Vec<u8> {
    key(USER_PREFIX, &format!("{:032x}/{member}", batch.0))
}

/// The transaction id of a coupon's `n`-th use.
pub fn coupon_use_id(coupon: CouponId, n: u64) -> TxnId {
    let key = TxnId(coupon.batch.0 ^ (u128::from(coupon.serial) << 64 | u128::from(coupon.serial)));
    derived_id(TAG_COUPON, key, (n << 48) ^ coupon.serial)
}

impl Ledger {
    /// Issues a batch of coupons (records it; debits nothing). Issuing the
    /// same batch again changes nothing; another under the same id is a
    /// conflict.
    pub async fn issue_coupons(&self, request: IssueCoupons) -> Result<CouponBatch, LedgerError> {
        self.coupon_rules()?;
        if request.face_value <= Decimal::ZERO {
            return Err(LedgerError::AmountNotPositive {
                txn: "coupon".into(),
                field: "face_value".into(),
                value: request.face_value,
            });
        }
        let face_value = self.money(self.units(request.face_value)?);
        if request.count == 0 || request.count > COUPONS_PER_BATCH_MAX {
            return Err(LedgerError::CouponCount {
                count: request.count,
                max: COUPONS_PER_BATCH_MAX,
            });
        }
        if request.valid_until <= request.valid_from {
            return Err(LedgerError::CouponWindow);
        }
        if matches!(request.funding, CouponFunding::Split { platform_percent } if platform_percent > 100)
        {
            return Err(LedgerError::CouponFundingSplit);
        }
        let merchant = self.verified_member(&request.merchant)?;
        if !self.member(merchant).is_some_and(|m| m.kind.is_merchant()) {
            return Err(LedgerError::NotAMerchant(merchant));
        }
        let batch = CouponBatch {
            id: request.id,
            merchant,
            face_value,
            count: request.count,
            valid_from: request.valid_from,
            valid_until: request.valid_until,
            per_member: request.per_member,
            funding: request.funding,
            on_refund: request.on_refund,
        };
        if let Some(known) = self.coupon_batch(request.id).await? {
            return if *known == batch {
                Ok(batch)
            } else {
                Err(LedgerError::CouponBatchConflict(request.id))
            };
        }
        let value =
            postcard::to_allocvec(&batch).map_err(|e| LedgerError::MemberRecord(e.to_string()))?;
        for result in self
            .engine()
            .put_records(vec![(batch_key(batch.id), value)])
            .await?
        {
            result?;
        }
        self.coupons
            .batches
            .insert(batch.id, Arc::new(batch.clone()));
        self.coupons.issued_here.insert(batch.id, ());
        Ok(batch)
    }

    /// A batch, if issued.
    pub async fn coupon_batch(&self, id: TxnId) -> Result<Option<Arc<CouponBatch>>, LedgerError> {
        if let Some(batch) = self.coupons.batches.get(&id) {
            return Ok(Some(Arc::clone(batch.value())));
        }
        let page = self.engine().records(batch_key(id), None, 1).await?;
        let Some((k, value)) = page.into_iter().next().filter(|(k, _)| *k == batch_key(id)) else {
            return Ok(None);
        };
        let batch: CouponBatch = postcard::from_bytes(&value).map_err(|e| {
            LedgerError::MemberRecord(format!("{}: {e}", String::from_utf8_lossy(&k)))
        })?;
        let batch = Arc::new(batch);
        self.coupons.batches.insert(id, Arc::clone(&batch));
        Ok(Some(batch))
    }

    /// Pays with a coupon: one engine transaction, refused whole if the
    /// funder is short. Retrying the same payment answers with the first.
    /// Concurrent redemptions of one batch are decided together and go to
    /// the engine in one call (see [`Ledger::pay_with_coupons`]).
    pub async fn pay_with_coupon(&self, request: PayWithCoupon) -> Result<Redeemed, LedgerError> {
        let mut answers = self.pay_with_coupons(vec![request]).await?;
        answers
            .pop()
            .unwrap_or(Err(LedgerError::Engine(SubmitError::ShutDown)))
    }

    /// Pays with many coupons: one answer per request, in order; one
    /// refusal does not fail the others. `Err` only for a call above
    /// `SUBMIT_TRANSACTIONS_MAX` requests (nothing is done).
    ///
    /// Redemptions of one batch queue up; whoever holds the batch's turn
    /// takes every queued one (this call's and other callers'), decides
    /// them in memory — the coupon's use number and the member's count are
    /// kept in the ledger, never read from the engine on this path — and
    /// submits them in one engine call. "At most once" is still the
    /// engine's: use `n` of a coupon has an id derived from the coupon and
    /// `n`, so a coupon the ledger does not know (sent before a restart,
    /// say) is tried as use 0, and if the engine has seen that id the
    /// coupon's uses are read back and the redemption decided again.
    pub async fn pay_with_coupons(
        &self,
        requests: Vec<PayWithCoupon>,
    ) -> Result<Vec<Result<Redeemed, LedgerError>>, LedgerError> {
        if requests.len() > SUBMIT_TRANSACTIONS_MAX {
            return Err(LedgerError::Engine(SubmitError::BatchTooLarge {
                len: requests.len(),
                max: SUBMIT_TRANSACTIONS_MAX,
            }));
        }
        let mut answers: Vec<Answer> = Vec::with_capacity(requests.len());
        let mut queued: Vec<(TxnId, Arc<CouponBatch>)> = Vec::new();
        for request in requests {
            match self.check_redemption(request).await {
                Ok((batch, w)) => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let queue = self.coupons.queue(batch.id);
                    queue.waiting.lock().push(Redemption { reply, ..w });
                    if !queued.iter().any(|(id, _)| *id == batch.id) {
                        queued.push((batch.id, batch));
                    }
                    answers.push(Answer::Waiting(answer));
                }
                Err(e) => answers.push(Answer::Now(Err(e))),
            }
        }
        for (id, batch) in queued {
            let queue = self.coupons.queue(id);
            let _turn = queue.turn.lock().await;
            let waiting = std::mem::take(&mut *queue.waiting.lock());
            if !waiting.is_empty() {
                self.redeem_queued(&batch, waiting).await;
            }
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(match answer {
                Answer::Now(result) => result,
                // Answered by this call or by the one that held the turn.
                Answer::Waiting(rx) => rx
                    .await
                    .unwrap_or(Err(LedgerError::Engine(SubmitError::ShutDown))),
            });
        }
        Ok(out)
    }

    /// The checks a redemption needs no state for.
    async fn check_redemption(
        &self,
        request: PayWithCoupon,
    ) -> Result<(Arc<CouponBatch>, Redemption), LedgerError> {
        let rule = self.coupon_rules()?.0;
        let coupon = request.coupon;
        let batch = self
            .coupon_batch(coupon.batch)
            .await?
            .ok_or(LedgerError::UnknownCoupon(coupon))?;
        if coupon.serial >= batch.count {
            return Err(LedgerError::UnknownCoupon(coupon));
        }
        let payer = self.verified_member(&request.payer)?;
        let merchant = self.verified_member(&request.merchant)?;
        if merchant != batch.merchant {
            return Err(LedgerError::CouponOfAnotherMerchant(coupon));
        }
        let now = self.clock_now();
        if now < batch.valid_from || now >= batch.valid_until {
            return Err(LedgerError::CouponExpired(coupon));
        }
        if request.amount <= Decimal::ZERO {
            return Err(LedgerError::AmountNotPositive {
                txn: rule.name.clone(),
                field: "amount".into(),
                value: request.amount,
            });
        }
        let discount = batch.face_value.min(request.amount);
        let platform_part = match batch.funding {
            CouponFunding::Merchant => Decimal::ZERO,
            CouponFunding::Platform => discount,
            CouponFunding::Split { platform_percent } => {
                (discount * Decimal::from(platform_percent) / Decimal::ONE_HUNDRED)
                    .round_dp_with_strategy(self.scale, RoundingStrategy::ToZero)
            }
        };
        let (reply, _) = tokio::sync::oneshot::channel();
        Ok((
            batch,
            Redemption {
                coupon,
                payer,
                amount: request.amount,
                fee: request.fee,
                discount,
                merchant_part: discount - platform_part,
                platform_part,
                read_back: false,
                reply,
            },
        ))
    }

    /// Decides queued redemptions of one batch and answers every one: in
    /// rounds, each coupon at most once per round (a second redemption of
    /// a coupon waits for the first's answer).
    async fn redeem_queued(&self, batch: &CouponBatch, waiting: Vec<Redemption>) {
        let mut rest = waiting;
        while !rest.is_empty() {
            let mut in_round = std::collections::HashSet::new();
            let (round, later): (Vec<_>, Vec<_>) = rest
                .into_iter()
                .partition(|w| in_round.len() < ROUND_MAX && in_round.insert(w.coupon));
            rest = later;
            let again = self.redeem_round(batch, round).await;
            rest.extend(again);
        }
    }

    /// One round: every coupon once. Returns the redemptions to decide
    /// again with the coupon's uses read back from the engine.
    async fn redeem_round(&self, batch: &CouponBatch, round: Vec<Redemption>) -> Vec<Redemption> {
        let Ok(rule) = self.coupon_rules().map(|r| r.0.name.clone()) else {
            for w in round {
                let _ = w.reply.send(Err(LedgerError::CouponsNotConfigured));
            }
            return Vec::new();
        };
        // (redemption, use number, used, guessed, counted against the member)
        let mut plans: Vec<(Redemption, u64, bool, bool, bool)> = Vec::with_capacity(round.len());
        for w in round {
            let known = self.coupons.uses.get(&w.coupon).map(|u| *u);
            let (n, used) = known.unwrap_or((0, false));
            plans.push((w, n, used, known.is_none(), false));
        }
        let mut counted = Vec::new();
        if let Some(limit) = batch.per_member {
            let mut unknown = Vec::new();
            for (w, _, used, ..) in &plans {
                let key = (batch.id, w.payer);
                if !*used
                    && !unknown.contains(&w.payer)
                    && !self.coupons.member_uses.contains_key(&key)
                {
                    unknown.push(w.payer);
                }
            }
            let read = join_all(unknown.iter().map(|&m| self.member_uses(batch.id, m))).await;
            let mut failed = None;
            for (member, used) in unknown.into_iter().zip(read) {
                match used {
                    Ok(used) => {
                        self.coupons.member_uses.insert((batch.id, member), used);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                answer_all(plans.into_iter().map(|p| p.0), e);
                return Vec::new();
            }
            let mut kept = Vec::with_capacity(plans.len());
            for mut plan in plans {
                // A used coupon is submitted again under its id: the same
                // payment retried gets its first answer; it is not counted.
                if !plan.2 {
                    let key = (batch.id, plan.0.payer);
                    let used_now = self.coupons.member_uses.get(&key).map_or(0, |u| *u);
                    if used_now >= limit {
                        let _ = plan.0.reply.send(Err(LedgerError::CouponLimit {
                            coupon: plan.0.coupon,
                            member: plan.0.payer,
                            limit,
                        }));
                        continue;
                    }
                    self.coupons.member_uses.insert(key, used_now + 1);
                    plan.4 = true;
                    if !counted.contains(&plan.0.payer) {
                        counted.push(plan.0.payer);
                    }
                }
                kept.push(plan);
            }
            plans = kept;
        }
        // What the marketing account can still fund, read once for the
        // round: a redemption it certainly cannot fund is refused here, not
        // submitted (the engine would refuse it, and a batch holding many
        // refusals costs the engine a repair round each). Funding that
        // arrives meanwhile is seen by the next round.
        if plans
            .iter()
            .any(|p| !p.2 && p.0.merchant_part > Decimal::ZERO)
        {
            let marketing = batch.merchant.account_id(AccountType::Marketing.code());
            match self.engine().account(marketing).await {
                Ok(Some(view)) => {
                    let mut left = view.available;
                    let mut kept = Vec::with_capacity(plans.len());
                    let fresh = self.coupons.issued_here.contains_key(&batch.id);
                    for mut plan in plans {
                        let part = plan.0.merchant_part;
                        if plan.2 || part.is_zero() || part <= left {
                            if !plan.2 {
                                left -= part;
                            }
                            kept.push(plan);
                            continue;
                        }
                        if plan.3 && !fresh {
                            // A coupon of a batch issued before this ledger
                            // opened, not seen since: it may be used, so
                            // its uses are read before it is refused.
                            match self.coupon_use(batch, plan.0.coupon).await {
                                Ok((n, true)) => {
                                    (plan.1, plan.2, plan.3) = (n, true, false);
                                    kept.push(plan);
                                    continue;
                                }
                                Ok((n, false)) => plan.1 = n,
                                Err(e) => {
                                    let _ = plan.0.reply.send(Err(e));
                                    continue;
                                }
                            }
                        }
                        if plan.4 {
                            self.uncount(batch.id, plan.0.payer);
                        }
                        let w = plan.0;
                        let _ = w.reply.send(Err(LedgerError::MarketingShort {
                            merchant: batch.merchant,
                            coupon: w.coupon,
                        }));
                    }
                    plans = kept;
                }
                Ok(None) => {}
                Err(e) => {
                    for (w, .., was_counted) in &plans {
                        if *was_counted {
                            self.uncount(batch.id, w.payer);
                        }
                    }
                    answer_all(plans.into_iter().map(|p| p.0), e.into());
                    return Vec::new();
                }
            }
        }
        // Counted before the payments, in one record write: a crash in
        // between over-counts, never under-counts.
        if let Err(e) = self.put_member_uses(batch.id, &counted).await {
            for (w, .., was_counted) in &plans {
                if *was_counted {
                    self.uncount(batch.id, w.payer);
                }
            }
            let _ = self.put_member_uses(batch.id, &counted).await;
            answer_all(plans.into_iter().map(|p| p.0), e);
            return Vec::new();
        }
        if plans.is_empty() {
            return Vec::new();
        }
        let requests = plans
            .iter()
            .map(|(w, n, ..)| {
                PostRequest::new(coupon_use_id(w.coupon, *n), &rule)
                    .member("payer", w.payer)
                    .member("merchant", batch.merchant)
                    .amount("amount", w.amount)
                    .amount("fee", w.fee)
                    .amount("merchant_discount", w.merchant_part)
                    .amount("platform_discount", w.platform_part)
            })
            .collect();
        let results = match self.post_many_marked(requests).await {
            Ok(results) if results.len() == plans.len() => results,
            other => {
                let e = match other {
                    Err(e) => e,
                    Ok(_) => LedgerError::Engine(SubmitError::ShutDown),
                };
                let mut uncounted = Vec::new();
                for (w, .., was_counted) in &plans {
                    // Unknown whether it was sequenced: read it again next time.
                    self.coupons.uses.remove(&w.coupon);
                    if *was_counted {
                        self.uncount(batch.id, w.payer);
                        uncounted.push(w.payer);
                    }
                }
                let _ = self.put_member_uses(batch.id, &uncounted).await;
                answer_all(plans.into_iter().map(|p| p.0), e);
                return Vec::new();
            }
        };
        let mut again = Vec::new();
        let mut uncounted = Vec::new();
        for ((w, n, _used, guessed, was_counted), (result, duplicate)) in
            plans.into_iter().zip(results)
        {
            if was_counted && !matches!(&result, Ok(p) if !p.duplicate) {
                self.uncount(batch.id, w.payer);
                uncounted.push(w.payer);
            }
            let answer = match result {
                Ok(posted) => {
                    self.coupons
                        .uses
                        .entry(w.coupon)
                        .and_modify(|u| *u = (*u).max((n, true)))
                        .or_insert((n, true));
                    Ok(Redeemed {
                        posted,
                        discount: w.discount,
                        merchant_part: w.merchant_part,
                        platform_part: w.platform_part,
                    })
                }
                // The ledger guessed use `n` and the engine has seen that
                // id (refused before, or used by another payment): read
                // the coupon's uses and decide it again, once.
                Err(LedgerError::Rejected(reject))
                    if guessed && !w.read_back && (duplicate || reject == Reject::IdConflict) =>
                {
                    self.coupons.uses.remove(&w.coupon);
                    match self.coupon_use(batch, w.coupon).await {
                        Ok((next, false)) if next != n => {
                            again.push(Redemption {
                                read_back: true,
                                ..w
                            });
                            continue;
                        }
                        Ok(_) => Err(self
                            .coupon_refusal(w.coupon, batch, n, LedgerError::Rejected(reject))
                            .await),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(self.coupon_refusal(w.coupon, batch, n, e).await),
            };
            let _ = w.reply.send(answer);
        }
        if !uncounted.is_empty() {
            let _ = self.put_member_uses(batch.id, &uncounted).await;
        }
        again
    }

    fn uncount(&self, batch: TxnId, member: AccountNo) {
        if let Some(mut used) = self.coupons.member_uses.get_mut(&(batch, member)) {
            *used = used.saturating_sub(1);
        }
    }

    /// Why a redemption failed, as the caller should see it; the coupon's
    /// use number moves past a refused attempt.
    async fn coupon_refusal(
        &self,
        coupon: CouponId,
        batch: &CouponBatch,
        n: u64,
        e: LedgerError,
    ) -> LedgerError {
        match e {
            LedgerError::Rejected(Reject::IdConflict) => {
                self.coupons.uses.remove(&coupon);
                LedgerError::CouponAlreadyRedeemed(coupon)
            }
            LedgerError::Rejected(reject) => {
                self.coupons
                    .uses
                    .entry(coupon)
                    .and_modify(|u| *u = (*u).max((n + 1, false)))
                    .or_insert((n + 1, false));
                let marketing = batch.merchant.account_id(AccountType::Marketing.code());
                match reject {
                    Reject::InsufficientFunds { account, .. } if account == marketing => {
                        LedgerError::MarketingShort {
                            merchant: batch.merchant,
                            coupon,
                        }
                    }
                    other => LedgerError::Rejected(other),
                }
            }
            other => {
                // Unknown whether it was sequenced: read it again next time.
                self.coupons.uses.remove(&coupon);
                other
            }
        }
    }

    /// A coupon's next use number and whether it is used: known, or read
    /// from the engine (its uses in order; a use refunded with the batch's
    /// `Restore` frees it again).
    async fn coupon_use(
        &self,
        batch: &CouponBatch,
        coupon: CouponId,
    ) -> Result<(u64, bool), LedgerError> {
        if let Some(known) = self.coupons.uses.get(&coupon) {
            return Ok(*known);
        }
        let mut state = (0, false);
        for n in 0..COUPON_USES_MAX {
            let id = coupon_use_id(coupon, n);
            let Some(view) = self.engine().transaction(id).await? else {
                break;
            };
            state = (n + 1, false);
            if view.result.is_ok() {
                let refunded = self
                    .engine()
                    .transaction(derived_id(super::ledger::TAG_REFUND, id, 0))
                    .await?
                    .is_some_and(|r| r.result.is_ok());
                if !(refunded && batch.on_refund == OnRefund::Restore) {
                    state = (n, true);
                    break;
                }
            }
        }
        if state.0 >= COUPON_USES_MAX {
            state.1 = true;
        }
        self.coupons.uses.insert(coupon, state);
        Ok(state)
    }

    async fn member_uses(&self, batch: TxnId, member: AccountNo) -> Result<u32, LedgerError> {
        let key = member_key(batch, member);
        let page = self.engine().records(key.clone(), None, 1).await?;
        Ok(page
            .into_iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map_or(0, u32::from_le_bytes))
    }

    /// Writes the members' counts as the ledger knows them, in one call.
    async fn put_member_uses(
        &self,
        batch: TxnId,
        members: &[AccountNo],
    ) -> Result<(), LedgerError> {
        if members.is_empty() {
            return Ok(());
        }
        let records = members
            .iter()
            .map(|&m| {
                let used = self.coupons.member_uses.get(&(batch, m)).map_or(0, |u| *u);
                (member_key(batch, m), used.to_le_bytes().to_vec())
            })
            .collect();
        for result in self.engine().put_records(records).await? {
            result?;
        }
        Ok(())
    }

    /// Refunds a coupon payment whole: the payer gets back what it paid
    /// (into the buckets it paid from), the funders the discount; the fee
    /// is not returned. Once only; not after a reversal, and a refunded
    /// payment is not reversed. The coupon is then free again or void, as
    /// its batch says.
    pub async fn refund_coupon_payment(
        &self,
        original: TxnId,
        coupon: CouponId,
    ) -> Result<Posted, LedgerError> {
        let (pay_rule, refund_rule) = self.coupon_rules()?;
        if (0..COUPON_USES_MAX).all(|n| coupon_use_id(coupon, n) != original) {
            return Err(LedgerError::NotRefundable {
                original,
                reason: "it is not a payment with this coupon".into(),
            });
        }
        let _exclusive = self.originals.lock(original).await;
        let view = self.committed(original).await?;
        let not = |reason: &str| LedgerError::NotRefundable {
            original,
            reason: reason.into(),
        };
        if view.code != pay_rule.code {
            return Err(not("it is not a coupon payment"));
        }
        if self.reversal_committed(original).await? {
            return Err(not("it was reversed"));
        }
        let batch = self
            .coupon_batch(coupon.batch)
            .await?
            .ok_or(LedgerError::UnknownCoupon(coupon))?;
        let marketing_pool = Internal::Platform(PlatformAccount::MarketingPool).account_no();
        let mut members = BTreeMap::new();
        let mut paid = Decimal::ZERO;
        let mut payer_nw = Decimal::ZERO;
        let mut merchant_part = Decimal::ZERO;
        let mut platform_part = Decimal::ZERO;
        for d in view.details.iter().filter(|d| d.kind == DetailKind::Posted) {
            let Some((no, sub)) = AccountNo::of_account_id(d.account) else {
                continue;
            };
            match (d.side, sub) {
                (Side::Debit, s) if s == AccountType::Balance.code() && no != batch.merchant => {
                    members.insert("payer".to_string(), no);
                    paid += d.amount;
                    if d.bucket == Bucket::NonWithdrawable {
                        payer_nw += d.amount;
                    }
                }
                (Side::Debit, s) if s == AccountType::Marketing.code() => merchant_part += d.amount,
                (Side::Debit, _) if no == marketing_pool => platform_part += d.amount,
                _ => {}
            }
        }
        members.insert("merchant".to_string(), batch.merchant);
        if !members.contains_key("payer") {
            // Paid entirely by the coupon: the payer is read off nothing.
            return Err(not("the coupon paid all of it; reverse it instead"));
        }
        let id = derived_id(super::ledger::TAG_REFUND, original, 0);
        let amounts = BTreeMap::from([
            ("amount".to_string(), paid),
            ("merchant_discount".to_string(), merchant_part),
            ("platform_discount".to_string(), platform_part),
        ]);
        let legs = self.legs(refund_rule, id, &members, &BTreeMap::new(), &amounts)?;
        let payer_account: AccountId = members
            .get("payer")
            .map_or(AccountId(0), |p| p.account_id(AccountType::Balance.code()));
        let mut out = Vec::with_capacity(legs.len() + 1);
        for leg in legs {
            if leg.account == payer_account && leg.side == Side::Credit && payer_nw > Decimal::ZERO
            {
                super::ledger::push_split(
                    &mut out,
                    &leg,
                    payer_nw.min(leg.amount),
                    Bucket::NonWithdrawable,
                    Bucket::Available,
                );
            } else {
                out.push(leg);
            }
        }
        let posted = self
            .submit(Transaction::posted(id, refund_rule.code, out))
            .await?;
        if batch.on_refund == OnRefund::Restore {
            let queue = self.coupons.queue(coupon.batch);
            let _turn = queue.turn.lock().await;
            self.coupons.uses.remove(&coupon);
        }
        if merchant_part > Decimal::ZERO {
            self.check_marketing(batch.merchant).await?;
        }
        Ok(posted)
    }

    // ---- alerts ----------------------------------------------------------------

    /// The ledger's events (marketing accounts running low, …). Each
    /// subscriber sees the events sent after it subscribed.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<LedgerEvent> {
        self.events.subscribe()
    }

    /// Alerts when the merchant's marketing account goes below
    /// `threshold` (once per crossing). Kept as a metadata record.
    pub async fn set_marketing_alert(
        &self,
        merchant: &str,
        threshold: Decimal,
    ) -> Result<(), LedgerError> {
        let merchant = self.verified_member(merchant)?;
        if threshold.is_sign_negative() {
            return Err(LedgerError::AmountNotPositive {
                txn: "marketing_alert".into(),
                field: "threshold".into(),
                value: threshold,
            });
        }
        let record = (
            key(ALERT_PREFIX, &merchant.to_string()),
            threshold.to_string().into_bytes(),
        );
        for result in self.engine().put_records(vec![record]).await? {
            result?;
        }
        self.coupons.alerts.lock().insert(
            merchant,
            Alert {
                threshold,
                below: false,
                version: Version(0),
            },
        );
        self.check_marketing(merchant).await
    }

    /// Reads the merchant's marketing account and sends an alert if it has
    /// just gone below its threshold. Observations are ordered by the
    /// account's version, so racing readers never send two alerts for one
    /// crossing.
    pub(super) async fn check_marketing(&self, merchant: AccountNo) -> Result<(), LedgerError> {
        if !self.coupons.alerts.lock().contains_key(&merchant) {
            return Ok(());
        }
        let Some(view) = self
            .engine()
            .account(merchant.account_id(AccountType::Marketing.code()))
            .await?
        else {
            return Ok(());
        };
        let mut alerts = self.coupons.alerts.lock();
        let Some(alert) = alerts.get_mut(&merchant) else {
            return Ok(());
        };
        if view.version < alert.version {
            return Ok(());
        }
        alert.version = view.version;
        let below = view.balance < alert.threshold;
        if below && !alert.below {
            // No subscriber is not an error.
            let _ = self.events.send(LedgerEvent::MarketingLow {
                merchant,
                balance: view.balance,
                threshold: alert.threshold,
            });
        }
        alert.below = below;
        Ok(())
    }

    fn coupon_rules(
        &self,
    ) -> Result<(&super::rules::TxnRule, &super::rules::TxnRule), LedgerError> {
        match (
            self.rules().txn("coupon_pay"),
            self.rules().txn("coupon_refund"),
        ) {
            (Some(pay), Some(refund)) => Ok((pay, refund)),
            _ => Err(LedgerError::CouponsNotConfigured),
        }
    }
}

/// Loads the merchants' alert thresholds at open.
pub(super) async fn load_alerts(ledger: &Ledger) -> Result<(), LedgerError> {
    let mut after = None;
    loop {
        let page = ledger
            .engine()
            .records(
                ALERT_PREFIX.to_vec(),
                after.take(),
                tally_engine::RECORDS_PAGE_MAX,
            )
            .await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (k, v) in page {
            let bad = || LedgerError::MemberRecord(String::from_utf8_lossy(&k).into_owned());
            let number = std::str::from_utf8(&k[ALERT_PREFIX.len()..]).map_err(|_| bad())?;
            let merchant = AccountNo::parse(number).map_err(|_| bad())?;
            let threshold: Decimal = std::str::from_utf8(&v)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(bad)?;
            ledger.coupons.alerts.lock().insert(
                merchant,
                Alert {
                    threshold,
                    below: false,
                    version: Version(0),
                },
            );
        }
    }
    let merchants: Vec<AccountNo> = ledger.coupons.alerts.lock().keys().copied().collect();
    for merchant in merchants {
        // An account already below its threshold at open was alerted
        // before: it is not a new crossing.
        if let Some(view) = ledger
            .engine()
            .account(merchant.account_id(AccountType::Marketing.code()))
            .await?
        {
            if let Some(alert) = ledger.coupons.alerts.lock().get_mut(&merchant) {
                alert.below = view.balance < alert.threshold;
                alert.version = view.version;
            }
        }
    }
    Ok(())
}
