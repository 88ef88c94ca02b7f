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
//! funders pay the discount; if the marketing account is short the engine
//! refuses the whole of it ([`LedgerError::MarketingShort`]), so nothing of
//! the payment is taken. Its id is derived from the coupon and the use
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
use super::ledger::{derived_id, Ledger, Posted};
use super::template::AccountType;
use crate::detail::DetailKind;
use crate::txn::{Reject, Transaction};
use crate::types::{AccountId, Bucket, Side, Timestamp, TxnId, Version};
use dashmap::DashMap;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub(super) const TAG_COUPON: u8 = 6;
const PREFIX: &[u8] = b"coupon/";
const USER_PREFIX: &[u8] = b"couponuser/";
const ALERT_PREFIX: &[u8] = b"alert/";
/// Uses of one coupon (redemptions refused, or refunded and restored), at
/// most.
pub const COUPON_USES_MAX: u64 = 64;
/// Coupons in one batch, at most.
pub const COUPONS_PER_BATCH_MAX: u64 = 1 << 40;
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
    /// Per coupon: the next use number, and whether it is used.
    uses: DashMap<CouponId, (u64, bool)>,
    /// Redemptions of one member of one batch run one at a time.
    members: DashMap<(TxnId, AccountNo), Arc<tokio::sync::Mutex<Option<u32>>>>,
    pub(super) alerts: parking_lot::Mutex<HashMap<AccountNo, Alert>>,
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
    pub async fn pay_with_coupon(&self, request: PayWithCoupon) -> Result<Redeemed, LedgerError> {
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
        let merchant_part = discount - platform_part;
        // One member's redemptions of this batch, one at a time.
        let lock = Arc::clone(
            self.coupons
                .members
                .entry((coupon.batch, payer))
                .or_default()
                .value(),
        );
        let mut used_by_member = lock.lock().await;
        let (n, used) = self.coupon_use(&batch, coupon).await?;
        // A used coupon is submitted again under the same id: the same
        // payment retried gets its first answer, any other is refused by
        // the engine as another transaction under a taken id.
        let count_member = batch.per_member.filter(|_| !used);
        if let Some(limit) = count_member {
            let used_now = match *used_by_member {
                Some(used_now) => used_now,
                None => self.member_uses(coupon.batch, payer).await?,
            };
            *used_by_member = Some(used_now);
            if used_now >= limit {
                return Err(LedgerError::CouponLimit {
                    coupon,
                    member: payer,
                    limit,
                });
            }
            // Counted before the payment: a crash in between over-counts
            // one, never under-counts.
            self.put_member_uses(coupon.batch, payer, used_now + 1)
                .await?;
            *used_by_member = Some(used_now + 1);
        }
        let id = coupon_use_id(coupon, n);
        let post = super::ledger::PostRequest::new(id, &rule.name)
            .member("payer", payer)
            .member("merchant", merchant)
            .amount("amount", request.amount)
            .amount("fee", request.fee)
            .amount("merchant_discount", merchant_part)
            .amount("platform_discount", platform_part);
        let result = self.post(post).await;
        let uncount = count_member.is_some() && !matches!(&result, Ok(p) if !p.duplicate);
        if uncount {
            let back = used_by_member.unwrap_or(1).saturating_sub(1);
            self.put_member_uses(coupon.batch, payer, back).await?;
            *used_by_member = Some(back);
        }
        let posted = match result {
            Ok(posted) => posted,
            Err(e) => return Err(self.coupon_refusal(coupon, &batch, n, e).await),
        };
        self.coupons
            .uses
            .entry(coupon)
            .and_modify(|u| *u = (*u).max((n, true)))
            .or_insert((n, true));
        if merchant_part > Decimal::ZERO {
            self.check_marketing(merchant).await?;
        }
        Ok(Redeemed {
            posted,
            discount,
            merchant_part,
            platform_part,
        })
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

    async fn put_member_uses(
        &self,
        batch: TxnId,
        member: AccountNo,
        used: u32,
    ) -> Result<(), LedgerError> {
        let record = (member_key(batch, member), used.to_le_bytes().to_vec());
        for result in self.engine().put_records(vec![record]).await? {
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
                crate::sequencer::RECORDS_PAGE_MAX,
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
