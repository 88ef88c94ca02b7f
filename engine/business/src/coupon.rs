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
use super::compiled::CompiledRule;
use super::coupon_book::{
    Alert, CouponBatch, CouponFunding, CouponQueue, Flight, LedgerEvent, OnRefund, Redeemed,
    Redemption, Use,
};
use super::error::LedgerError;
use super::ids::{coupon_use_id, derived_id, CouponId, TAG_REFUND};
use super::internal::{Internal, PlatformAccount};
use super::ledger::{build_error, check_call_len, Charge, Ledger};
use super::posted::Posted;
use super::template::AccountType;
use futures_util::future::join_all;
use rust_decimal::{Decimal, RoundingStrategy};
use std::collections::BTreeMap;
use std::sync::Arc;
use tally_engine::DetailKind;
use tally_engine::SubmitError;
use tally_engine::{AccountId, Bucket, Side, Timestamp, TxnId, Version};
use tally_engine::{Leg, Reject, Transaction, TxnCode};

const PREFIX: &[u8] = b"coupon/";
const USER_PREFIX: &[u8] = b"couponuser/";
const ALERT_PREFIX: &[u8] = b"alert/";
/// Uses of one coupon (redemptions refused, or refunded and restored), at
/// most.
pub const COUPON_USES_MAX: u64 = 64;
/// Coupons in one batch, at most.
pub const COUPONS_PER_BATCH_MAX: u64 = 1 << 40;

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

/// A payment with a coupon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayWithCoupon {
    pub payer: String,
    pub merchant: String,
    pub amount: Decimal,
    pub fee: Decimal,
    pub coupon: CouponId,
}

/// A payment with a coupon, typed: the fast path's request
/// ([`Ledger::redeem_coupons`]), the members' numbers already parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redeem {
    pub payer: AccountNo,
    pub merchant: AccountNo,
    pub amount: Decimal,
    pub fee: Decimal,
    pub coupon: CouponId,
}

/// A redemption decided for a round: its use number, whether that use is
/// the coupon's committed one (submitted again: a retry), whether the use
/// is a guess (the coupon unknown to the ledger), whether it was counted
/// against the member's per-batch limit, its daily-limit charge, and the
/// part taken from the budget.
struct Plan {
    w: Redemption,
    n: u64,
    used: bool,
    guessed: bool,
    counted: bool,
    charge: Option<Charge>,
    budgeted: Decimal,
}

enum Answer {
    Now(Result<Redeemed, LedgerError>),
    Waiting(tokio::sync::oneshot::Receiver<Result<Redeemed, LedgerError>>),
}

impl Answer {
    /// Takes the answer if it has come.
    fn settle(&mut self) -> bool {
        match self {
            Answer::Now(_) => true,
            Answer::Waiting(rx) => match rx.try_recv() {
                Ok(result) => {
                    *self = Answer::Now(result);
                    true
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => false,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    *self = Answer::Now(Err(LedgerError::Engine(SubmitError::ShutDown)));
                    true
                }
            },
        }
    }
}

fn content(payer: AccountNo, amount: Decimal, fee: Decimal) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    (payer, amount, fee).hash(&mut h);
    h.finish() | 1
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

/// A call of more requests than one engine call takes is refused whole.
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
    /// the engine in one call (see [`Ledger::redeem_coupons`]).
    pub async fn pay_with_coupon(&self, request: PayWithCoupon) -> Result<Redeemed, LedgerError> {
        let mut answers = self.pay_with_coupons(vec![request]).await?;
        answers
            .pop()
            .unwrap_or(Err(LedgerError::Engine(SubmitError::ShutDown)))
    }

    /// Pays with many coupons, the members' numbers as text: each is
    /// parsed (a bad one is that request's typed error) and the rest go on
    /// as [`Ledger::redeem_coupons`]. One answer per request, in order.
    pub async fn pay_with_coupons(
        &self,
        requests: Vec<PayWithCoupon>,
    ) -> Result<Vec<Result<Redeemed, LedgerError>>, LedgerError> {
        check_call_len(requests.len())?;
        let mut typed = Vec::with_capacity(requests.len());
        let mut refused: Vec<Option<LedgerError>> = Vec::with_capacity(requests.len());
        for r in requests {
            match (AccountNo::parse(&r.payer), AccountNo::parse(&r.merchant)) {
                (Ok(payer), Ok(merchant)) => {
                    typed.push(Redeem {
                        payer,
                        merchant,
                        amount: r.amount,
                        fee: r.fee,
                        coupon: r.coupon,
                    });
                    refused.push(None);
                }
                (Err(e), _) | (_, Err(e)) => refused.push(Some(e.into())),
            }
        }
        let mut answers = self.redeem_coupons(typed).await?.into_iter();
        Ok(refused
            .into_iter()
            .map(|r| match r {
                Some(e) => Err(e),
                None => answers
                    .next()
                    .unwrap_or(Err(LedgerError::Engine(SubmitError::ShutDown))),
            })
            .collect())
    }

    /// The typed fast path: pays with many coupons, one answer per
    /// request, in order; one refusal does not fail the others. `Err` only
    /// for a call above `SUBMIT_TRANSACTIONS_MAX` requests (nothing is
    /// done).
    ///
    /// Each redemption is checked (coupon, members, merchant, window,
    /// amounts), then queues with its batch; whoever holds the batch's
    /// turn takes a round of queued ones (this call's and other callers'),
    /// decides them in memory — use number, per-member count, daily limit,
    /// the marketing account's budget — builds each one's transaction from
    /// the compiled `coupon_pay` rule, lets the turn go and submits the
    /// round in one engine call: one transaction per redemption, no other
    /// engine round trip on the way once the payers and the marketing
    /// account are known. "At most once" is the engine's: use `n` of a
    /// coupon has an id derived from the coupon and `n`, so a coupon the
    /// ledger does not know (used before a restart, say) is tried as use
    /// 0, and if the engine has seen that id the coupon's uses are read
    /// back and the redemption decided again.
    pub async fn redeem_coupons(
        &self,
        requests: Vec<Redeem>,
    ) -> Result<Vec<Result<Redeemed, LedgerError>>, LedgerError> {
        check_call_len(requests.len())?;
        // Today's usage of the payers' daily limits, read together the
        // first time (an error comes back when the round charges it).
        let unknown = self.usage_unknown(requests.iter().map(|r| r.payer));
        let _ = join_all(unknown.into_iter().map(|m| self.load_usage(m))).await;
        let now = self.clock_now();
        // Payers and merchants checked together, the registry locked once.
        let mut verified = self
            .check_verified_many(requests.iter().flat_map(|r| [r.payer, r.merchant]))
            .into_iter();
        let mut answers = Vec::with_capacity(requests.len());
        let mut queued: Vec<(Arc<CouponBatch>, Vec<Redemption>)> = Vec::new();
        for request in &requests {
            let parties = (
                verified.next().unwrap_or(Ok(())),
                verified.next().unwrap_or(Ok(())),
            );
            match self.check_redeem(request, parties, now, &mut queued).await {
                Ok(w) => {
                    let (reply, rx) = tokio::sync::oneshot::channel();
                    if let Some((_, list)) = queued.iter_mut().find(|(b, _)| b.id == w.0) {
                        list.push(Redemption { reply, ..w.1 });
                    }
                    answers.push(Answer::Waiting(rx));
                }
                Err(e) => answers.push(Answer::Now(Err(e))),
            }
        }
        for (batch, list) in &mut queued {
            let queue = self.coupons.queue(batch.id);
            queue.waiting.lock().append(list);
        }
        for (batch, _) in &queued {
            self.drain(batch, &mut answers).await;
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(match answer {
                Answer::Now(result) => result,
                // Answered by this call or by another caller's round.
                Answer::Waiting(rx) => rx
                    .await
                    .unwrap_or(Err(LedgerError::Engine(SubmitError::ShutDown))),
            });
        }
        Ok(out)
    }

    /// The checks a redemption needs no state for; `batches` caches the
    /// call's batches (and collects what it queues).
    async fn check_redeem(
        &self,
        request: &Redeem,
        (payer_ok, merchant_ok): (Result<(), LedgerError>, Result<(), LedgerError>),
        now: Timestamp,
        batches: &mut Vec<(Arc<CouponBatch>, Vec<Redemption>)>,
    ) -> Result<(TxnId, Redemption), LedgerError> {
        let rule = self
            .coupon_pay
            .as_ref()
            .ok_or(LedgerError::CouponsNotConfigured)?;
        let coupon = request.coupon;
        let batch = match batches.iter().find(|(b, _)| b.id == coupon.batch) {
            Some((b, _)) => Arc::clone(b),
            None => {
                let b = self
                    .coupon_batch(coupon.batch)
                    .await?
                    .ok_or(LedgerError::UnknownCoupon(coupon))?;
                batches.push((Arc::clone(&b), Vec::new()));
                b
            }
        };
        if coupon.serial >= batch.count {
            return Err(LedgerError::UnknownCoupon(coupon));
        }
        payer_ok?;
        merchant_ok?;
        if request.merchant != batch.merchant {
            return Err(LedgerError::CouponOfAnotherMerchant(coupon));
        }
        if now < batch.valid_from || now >= batch.valid_until {
            return Err(LedgerError::CouponExpired(coupon));
        }
        for (field, value, positive) in [
            ("amount", request.amount, true),
            ("fee", request.fee, false),
        ] {
            if value.is_sign_negative() && !value.is_zero() || positive && value.is_zero() {
                return Err(LedgerError::AmountNotPositive {
                    txn: rule.name.clone(),
                    field: field.into(),
                    value,
                });
            }
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
            batch.id,
            Redemption {
                coupon,
                payer: request.payer,
                amount: request.amount,
                fee: request.fee,
                discount,
                merchant_part: discount - platform_part,
                platform_part,
                content: content(request.payer, request.amount, request.fee),
                read_back: false,
                reply,
            },
        ))
    }

    /// Decides and submits rounds of a batch's queue until every answer of
    /// this call has come or nothing is left to decide; a round waiting
    /// only for coupons in flight waits for a round to land.
    async fn drain(&self, batch: &CouponBatch, answers: &mut [Answer]) {
        let queue = self.coupons.queue(batch.id);
        loop {
            if answers.iter_mut().all(Answer::settle) {
                return;
            }
            let landed = queue.landed.notified();
            tokio::pin!(landed);
            landed.as_mut().enable();
            let turn = queue.turn.lock().await;
            let round = queue.take_round();
            if round.is_empty() {
                drop(turn);
                let idle = queue.waiting.lock().is_empty() || queue.book.lock().flights == 0;
                if idle {
                    return;
                }
                landed.await;
                continue;
            }
            let (flight, deferred) = self.decide(batch, &queue, round).await;
            drop(turn);
            match flight {
                Some((flight, plans, txns)) => {
                    let again = self.land(batch, flight, plans, txns).await;
                    if !again.is_empty() {
                        queue.waiting.lock().extend(again);
                    }
                }
                // Deferred behind a round in flight: wait for it to land.
                None if deferred => landed.await,
                None => {}
            }
        }
    }

    /// Decides a round under the batch's turn: the refused redemptions are
    /// answered, the deferred ones go back to the queue, the rest become
    /// transactions, their coupons marked in flight.
    async fn decide(
        &self,
        batch: &CouponBatch,
        queue: &Arc<CouponQueue>,
        round: Vec<Redemption>,
    ) -> (Option<(Flight, Vec<Plan>, Vec<Transaction>)>, bool) {
        let Some(rule) = self.coupon_pay.as_ref() else {
            answer_all(round.into_iter(), LedgerError::CouponsNotConfigured);
            return (None, false);
        };
        let mut plans: Vec<Plan> = Vec::with_capacity(round.len());
        {
            let uses = self.coupons.uses_of(batch.id);
            let uses = uses.lock();
            for w in round {
                let known = uses.get(&w.coupon.serial).copied();
                let u = known.unwrap_or(Use::unused(0));
                if u.used && u.content != 0 && u.content != w.content {
                    let _ = w
                        .reply
                        .send(Err(LedgerError::CouponAlreadyRedeemed(w.coupon)));
                    continue;
                }
                plans.push(Plan {
                    w,
                    n: u.next,
                    used: u.used,
                    guessed: known.is_none() || u.unsure,
                    counted: false,
                    charge: None,
                    budgeted: Decimal::ZERO,
                });
            }
        }
        let mut counted = Vec::new();
        if let Some(limit) = batch.per_member {
            plans = match self.count_members(batch, limit, plans, &mut counted).await {
                Ok(plans) => plans,
                Err(()) => return (None, false),
            };
        }
        let (plans, deferred) = self.fund(batch, queue, plans).await;
        let charges = self.charge_payers(&plans).await;
        let mut kept = Vec::with_capacity(plans.len());
        let mut txns = Vec::with_capacity(plans.len());
        for (mut plan, charge) in plans.into_iter().zip(charges) {
            let id = coupon_use_id(plan.w.coupon, plan.n);
            let built = match charge {
                Ok(charge) => {
                    plan.charge = charge;
                    self.coupon_legs(rule, id, batch, &plan.w)
                }
                Err(e) => Err(e),
            };
            match built {
                Ok(legs) => {
                    txns.push(Transaction::posted(id, rule.code, legs));
                    kept.push(plan);
                }
                Err(e) => {
                    self.undo(batch, queue, &plan, &mut counted);
                    let _ = plan.w.reply.send(Err(e));
                }
            }
        }
        // Counted before the payments, in one record write: a crash in
        // between over-counts, never under-counts.
        if let Err(e) = self.put_member_uses(batch.id, &counted).await {
            for plan in &kept {
                self.undo(batch, queue, plan, &mut Vec::new());
            }
            let _ = self.put_member_uses(batch.id, &counted).await;
            answer_all(kept.into_iter().map(|p| p.w), e);
            return (None, deferred);
        }
        if kept.is_empty() {
            return (None, deferred);
        }
        let coupons: Vec<(CouponId, u64)> = kept.iter().map(|p| (p.w.coupon, p.n)).collect();
        {
            let mut book = queue.book.lock();
            book.flights += 1;
            book.flying.extend(coupons.iter().map(|c| c.0));
        }
        let flight = Flight {
            queue: Arc::clone(queue),
            coupons,
            uses: self.coupons.uses_of(batch.id),
            landed: false,
        };
        (Some((flight, kept, txns)), deferred)
    }

    /// The per-member limit of a batch: plans over it are refused; the
    /// counted members are added to `counted`. `Err` if the counts could
    /// not be read (every plan answered).
    async fn count_members(
        &self,
        batch: &CouponBatch,
        limit: u32,
        plans: Vec<Plan>,
        counted: &mut Vec<AccountNo>,
    ) -> Result<Vec<Plan>, ()> {
        let mut unknown = Vec::new();
        for p in &plans {
            let key = (batch.id, p.w.payer);
            if !p.used
                && !unknown.contains(&p.w.payer)
                && !self.coupons.member_uses.contains_key(&key)
            {
                unknown.push(p.w.payer);
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
            answer_all(plans.into_iter().map(|p| p.w), e);
            return Err(());
        }
        let mut kept = Vec::with_capacity(plans.len());
        for mut plan in plans {
            // A used coupon is submitted again under its id: the same
            // payment retried gets its first answer; it is not counted.
            if !plan.used {
                let key = (batch.id, plan.w.payer);
                let used_now = self.coupons.member_uses.get(&key).map_or(0, |u| *u);
                if used_now >= limit {
                    let _ = plan.w.reply.send(Err(LedgerError::CouponLimit {
                        coupon: plan.w.coupon,
                        member: plan.w.payer,
                        limit,
                    }));
                    continue;
                }
                self.coupons.member_uses.insert(key, used_now + 1);
                plan.counted = true;
                if !counted.contains(&plan.w.payer) {
                    counted.push(plan.w.payer);
                }
            }
            kept.push(plan);
        }
        Ok(kept)
    }

    /// Takes each plan's merchant part from the queue's budget. A part the
    /// budget cannot cover waits for the rounds in flight (deferred to the
    /// queue); with none in flight the account is read (once a round) and
    /// the redemption refused only if it is short then.
    async fn fund(
        &self,
        batch: &CouponBatch,
        queue: &Arc<CouponQueue>,
        plans: Vec<Plan>,
    ) -> (Vec<Plan>, bool) {
        let marketing = batch.merchant.account_id(AccountType::Marketing.code());
        let fresh = self.coupons.issued_here.contains_key(&batch.id);
        let mut kept = Vec::with_capacity(plans.len());
        let mut deferred = Vec::new();
        let mut in_round = Decimal::ZERO;
        let mut read = false;
        let mut plans = plans.into_iter();
        let mut next = plans.next();
        while let Some(mut plan) = next.take() {
            let part = plan.w.merchant_part;
            if plan.used || part.is_zero() {
                kept.push(plan);
                next = plans.next();
                continue;
            }
            let (fits, flights) = {
                let mut book = queue.book.lock();
                match book.budget {
                    Some(left) if part <= left => {
                        book.budget = Some(left - part);
                        (true, book.flights)
                    }
                    _ => (false, book.flights),
                }
            };
            if fits {
                plan.budgeted = part;
                in_round += part;
                kept.push(plan);
                next = plans.next();
                continue;
            }
            if flights > 0 {
                self.undo(batch, queue, &plan, &mut Vec::new());
                deferred.push(plan.w);
                next = plans.next();
                continue;
            }
            if !read {
                // Nothing in flight: the account's available money less
                // what this round took already is exact.
                read = true;
                match self.engine().account(marketing).await {
                    Ok(Some(view)) => {
                        queue.book.lock().budget = Some(view.available - in_round);
                        next = Some(plan);
                    }
                    // No such account: the engine refuses it.
                    Ok(None) => {
                        kept.push(plan);
                        next = plans.next();
                    }
                    Err(e) => {
                        self.undo(batch, queue, &plan, &mut Vec::new());
                        let _ = plan.w.reply.send(Err(e.into()));
                        next = plans.next();
                    }
                }
                continue;
            }
            next = plans.next();
            let unsure = self.coupons.use_of(plan.w.coupon).is_some_and(|u| u.unsure);
            if plan.guessed && (!fresh || unsure) {
                // A coupon of a batch issued before this ledger opened,
                // not seen since: it may be used, so its uses are read
                // before it is refused.
                match self.coupon_use(batch, plan.w.coupon).await {
                    Ok(u) if u.used => {
                        (plan.n, plan.used, plan.guessed) = (u.next, true, false);
                        kept.push(plan);
                        continue;
                    }
                    Ok(u) => plan.n = u.next,
                    Err(e) => {
                        self.undo(batch, queue, &plan, &mut Vec::new());
                        let _ = plan.w.reply.send(Err(e));
                        continue;
                    }
                }
            }
            self.undo(batch, queue, &plan, &mut Vec::new());
            let _ = plan.w.reply.send(Err(LedgerError::MarketingShort {
                merchant: batch.merchant,
                coupon: plan.w.coupon,
            }));
        }
        let any = !deferred.is_empty();
        if any {
            queue.waiting.lock().extend(deferred);
        }
        (kept, any)
    }

    /// [`Ledger::charge_payer`] of a round's plans, in order: the
    /// unknown usages read together, then every charge under one lock; a
    /// charge over the daily limit (or whose usage could not be read) is
    /// tried again alone, after a sweep of the payer's expired holds.
    async fn charge_payers(&self, plans: &[Plan]) -> Vec<Result<Option<Charge>, LedgerError>> {
        let new = || plans.iter().filter(|p| !p.used);
        let unknown = self.usage_unknown(new().map(|p| p.w.payer));
        let unread = if unknown.is_empty() {
            unknown
        } else {
            let _ = join_all(unknown.into_iter().map(|m| self.load_usage(m))).await;
            // A usage that could not be read is not charged from zero:
            // that plan goes alone, and gets the read's error.
            self.usage_unknown(new().map(|p| p.w.payer))
        };
        let batched = |p: &Plan| !p.used && !unread.contains(&p.w.payer);
        let items: Vec<(AccountNo, Decimal)> = plans
            .iter()
            .filter(|p| batched(p))
            .map(|p| (p.w.payer, p.w.amount))
            .collect();
        let mut charged = self.charge_limits(&items).into_iter();
        let mut out = Vec::with_capacity(plans.len());
        for plan in plans {
            if plan.used {
                out.push(Ok(None));
                continue;
            }
            let charge = if batched(plan) { charged.next() } else { None };
            out.push(match charge {
                Some(Ok(charge)) => Ok(Some(charge)),
                Some(Err(LedgerError::DailyLimitExceeded { .. })) | None => {
                    self.charge_payer(plan).await
                }
                Some(Err(e)) => Err(e),
            });
        }
        out
    }

    /// Charges a new redemption's amount to the payer's daily limit (a
    /// retry of a used coupon charges nothing).
    async fn charge_payer(&self, plan: &Plan) -> Result<Option<Charge>, LedgerError> {
        if plan.used {
            return Ok(None);
        }
        let payer = plan.w.payer;
        if !self.usage_known(payer) {
            self.load_usage(payer).await?;
        }
        let charge = match self.charge_limit(payer, plan.w.amount) {
            Err(LedgerError::DailyLimitExceeded { .. }) if self.sweep_holds(payer).await? => {
                self.charge_limit(payer, plan.w.amount)?
            }
            other => other?,
        };
        Ok(Some(charge))
    }

    /// A redemption's legs from the compiled rule, its payer's debit split
    /// by bucket when the payer is known to hold no non-withdrawable money
    /// (else split in [`Ledger::land`], after a read).
    fn coupon_legs(
        &self,
        rule: &CompiledRule,
        id: TxnId,
        batch: &CouponBatch,
        w: &Redemption,
    ) -> Result<Vec<Leg>, LedgerError> {
        let legs = rule
            .legs(
                id,
                &[w.payer, batch.merchant],
                &[w.amount, w.fee, w.merchant_part, w.platform_part],
            )
            .map_err(|e| build_error(&rule.name, e))?;
        Ok(self.split_hinted(legs))
    }

    /// Gives back what a refused plan took: its daily-limit charge, its
    /// per-member count, its budget.
    fn undo(
        &self,
        batch: &CouponBatch,
        queue: &CouponQueue,
        plan: &Plan,
        uncounted: &mut Vec<AccountNo>,
    ) {
        if let Some(charge) = plan.charge {
            self.refund_limit(charge);
        }
        if plan.counted {
            self.uncount(batch.id, plan.w.payer);
            if !uncounted.contains(&plan.w.payer) {
                uncounted.push(plan.w.payer);
            }
        }
        if plan.budgeted > Decimal::ZERO {
            let mut book = queue.book.lock();
            if let Some(b) = book.budget.as_mut() {
                *b += plan.budgeted;
            }
        }
    }

    /// Submits a decided round and answers every redemption. Returns the
    /// redemptions to decide again with the coupon's uses read back.
    async fn land(
        &self,
        batch: &CouponBatch,
        mut flight: Flight,
        plans: Vec<Plan>,
        mut txns: Vec<Transaction>,
    ) -> Vec<Redemption> {
        let queue = Arc::clone(&flight.queue);
        // Payers not known to hold no non-withdrawable money: read.
        let unsplit: Vec<usize> = (0..txns.len())
            .filter(|&i| txns[i].legs.iter().any(|l| self.needs_split(l)))
            .collect();
        let splits = join_all(
            unsplit
                .iter()
                .map(|&i| self.split_buckets(txns[i].legs.clone())),
        )
        .await;
        let mut failed = None;
        for (&i, split) in unsplit.iter().zip(splits) {
            match split {
                Ok(legs) => txns[i].legs = legs,
                Err(e) => failed = Some(e),
            }
        }
        let legs: Vec<Vec<Leg>> = txns.iter().map(|t| t.legs.clone()).collect();
        let outcomes = match failed {
            Some(e) => Err(e),
            None => match self.submit_txns(txns).await {
                Ok(o) if o.len() == plans.len() => Ok(o),
                Ok(_) => Err(LedgerError::Engine(SubmitError::ShutDown)),
                Err(e) => Err(e.into()),
            },
        };
        let mut outcomes = match outcomes {
            Ok(o) => o,
            Err(e) => {
                let mut uncounted = Vec::new();
                for plan in &plans {
                    // Unknown whether it was sequenced: try the same use
                    // next time, and read it back before refusing it.
                    self.coupons.set_use(plan.w.coupon, Use::unsure(plan.n));
                    self.undo(batch, &queue, plan, &mut uncounted);
                }
                let _ = self.put_member_uses(batch.id, &uncounted).await;
                answer_all(plans.into_iter().map(|p| p.w), e);
                return Vec::new();
            }
        };
        // Another payment under a used id, or the same one split otherwise:
        // the committed transaction decides which.
        let conflicts: Vec<usize> = (0..outcomes.len())
            .filter(|&i| outcomes[i].result == Err(Reject::IdConflict))
            .collect();
        let code = self.coupon_pay.as_ref().map(|r| r.code);
        let retried = join_all(
            conflicts
                .iter()
                .map(|&i| self.retried(outcomes[i].clone(), code, false, &legs[i])),
        )
        .await;
        for (&i, r) in conflicts.iter().zip(retried) {
            if let Ok(outcome) = r {
                outcomes[i] = outcome;
            }
        }
        let mut again = Vec::new();
        let mut uncounted = Vec::new();
        let mut committed = Vec::with_capacity(plans.len());
        for ((plan, outcome), legs) in plans.into_iter().zip(outcomes).zip(legs) {
            let fresh = outcome.result.is_ok() && !outcome.duplicate;
            if !fresh {
                // A refusal or a duplicate took nothing new.
                self.undo(batch, &queue, &plan, &mut uncounted);
            }
            let (w, n) = (plan.w, plan.n);
            let answer = match outcome.result {
                Ok(()) => {
                    let content = if outcome.duplicate && !plan.used {
                        0
                    } else {
                        w.content
                    };
                    committed.push((
                        w.coupon.serial,
                        Use {
                            used: true,
                            content,
                            ..Use::unused(n)
                        },
                    ));
                    Ok(Redeemed {
                        posted: Posted {
                            id: outcome.id,
                            code: code.unwrap_or(TxnCode(0)),
                            timestamp: outcome.timestamp,
                            duplicate: outcome.duplicate,
                            legs,
                        },
                        discount: w.discount,
                        merchant_part: w.merchant_part,
                        platform_part: w.platform_part,
                    })
                }
                // The ledger guessed use `n` and the engine has seen that
                // id (refused before, or used by another payment): read
                // the coupon's uses and decide it again, once.
                Err(reject)
                    if plan.guessed
                        && !w.read_back
                        && (outcome.duplicate || reject == Reject::IdConflict) =>
                {
                    self.coupons.forget_use(w.coupon);
                    match self.coupon_use(batch, w.coupon).await {
                        Ok(u) if !u.used && u.next != n => {
                            again.push(Redemption {
                                read_back: true,
                                ..w
                            });
                            continue;
                        }
                        Ok(_) => Err(self.coupon_refusal(
                            w.coupon,
                            batch,
                            n,
                            LedgerError::Rejected(reject),
                        )),
                        Err(e) => Err(e),
                    }
                }
                Err(reject) => {
                    Err(self.coupon_refusal(w.coupon, batch, n, LedgerError::Rejected(reject)))
                }
            };
            let _ = w.reply.send(answer);
        }
        // The committed uses, under one lock, before the coupons leave
        // flight (a redemption of one of them waits till then).
        if !committed.is_empty() {
            let uses = self.coupons.uses_of(batch.id);
            uses.lock().extend(committed);
        }
        if !uncounted.is_empty() {
            let _ = self.put_member_uses(batch.id, &uncounted).await;
        }
        flight.landed = true;
        drop(flight);
        // The alert: read the account only when the budget says it may
        // have crossed (spending by other paths checks it there).
        let budget = queue.book.lock().budget;
        let armed = self
            .coupons
            .alerts
            .lock()
            .get(&batch.merchant)
            .is_some_and(|a| !a.below && budget.is_none_or(|b| b < a.threshold));
        if armed {
            let _ = self.check_marketing(batch.merchant).await;
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
    fn coupon_refusal(
        &self,
        coupon: CouponId,
        batch: &CouponBatch,
        n: u64,
        e: LedgerError,
    ) -> LedgerError {
        match e {
            LedgerError::Rejected(Reject::IdConflict) => {
                self.coupons.forget_use(coupon);
                LedgerError::CouponAlreadyRedeemed(coupon)
            }
            LedgerError::Rejected(reject) => {
                let uses = self.coupons.uses_of(coupon.batch);
                let mut uses = uses.lock();
                let u = uses.entry(coupon.serial).or_insert(Use::unused(n + 1));
                if u.next < n + 1 {
                    *u = Use::unused(n + 1);
                }
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
                // Unknown whether it was sequenced: the same use next time,
                // read back before it is refused.
                self.coupons.set_use(coupon, Use::unsure(n));
                other
            }
        }
    }

    /// A coupon's next use number and whether it is used: known, or read
    /// from the engine (its uses in order; a use refunded with the batch's
    /// `Restore` frees it again).
    async fn coupon_use(&self, batch: &CouponBatch, coupon: CouponId) -> Result<Use, LedgerError> {
        if let Some(known) = self.coupons.use_of(coupon).filter(|u| !u.unsure) {
            return Ok(known);
        }
        let mut state = Use::unused(0);
        for n in 0..COUPON_USES_MAX {
            let id = coupon_use_id(coupon, n);
            let Some(view) = self.engine().transaction(id).await? else {
                break;
            };
            state = Use::unused(n + 1);
            if view.result.is_ok() {
                let refunded = self
                    .engine()
                    .transaction(derived_id(TAG_REFUND, id, 0))
                    .await?
                    .is_some_and(|r| r.result.is_ok());
                if !(refunded && batch.on_refund == OnRefund::Restore) {
                    state = Use {
                        used: true,
                        ..Use::unused(n)
                    };
                    break;
                }
            }
        }
        if state.next >= COUPON_USES_MAX {
            state.used = true;
        }
        self.coupons.set_use(coupon, state);
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
        let id = derived_id(TAG_REFUND, original, 0);
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
        self.hold_for_closed(id, original, &mut out).await?;
        let posted = self
            .submit(Transaction::posted(id, refund_rule.code, out))
            .await?;
        if batch.on_refund == OnRefund::Restore {
            let queue = self.coupons.queue(coupon.batch);
            let _turn = queue.turn.lock().await;
            self.coupons.forget_use(coupon);
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
