//! The account system end to end, on the embedded sled store: every item of
//! the transaction catalogue, then bad input (a typed error and no balance
//! changed), limits, and "once only" across a restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

use rust_decimal::Decimal;
use std::sync::Arc;
use tally_business::*;
use tally_engine::*;

const START: Timestamp = Timestamp(1_767_225_600_000_000_000); // 2026-01-01T00:00:00Z

fn yuan(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

struct World {
    ledger: Ledger,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
    alice: AccountNo,
    bob: AccountNo,
    shop: AccountNo,
    carol: AccountNo,
}

fn member(
    serial: u64,
    kind: MemberKind,
    name: &str,
    id: &str,
    level: &str,
    verified: bool,
) -> OpenMember {
    OpenMember {
        serial,
        kind,
        name: name.into(),
        id_number: id.into(),
        legal: !matches!(kind, MemberKind::PersonalUser | MemberKind::MerchantMicro),
        level: MemberLevel(level.into()),
        verified,
    }
}

const ALICE_ID: &str = "11010519491231002X";
const BOB_ID: &str = "110101199003074514";
const SHOP_CODE: &str = "91350100M000100Y43";

async fn open_members(ledger: &Ledger) -> (AccountNo, AccountNo, AccountNo, AccountNo) {
    let alice = ledger
        .open_member(member(
            1,
            MemberKind::PersonalUser,
            "Alice",
            ALICE_ID,
            "verified",
            true,
        ))
        .await
        .unwrap()
        .number;
    let bob = ledger
        .open_member(member(
            2,
            MemberKind::PersonalUser,
            "Bob",
            BOB_ID,
            "basic",
            true,
        ))
        .await
        .unwrap()
        .number;
    let shop = ledger
        .open_member(member(
            3,
            MemberKind::MerchantCompany,
            "Shop Ltd",
            SHOP_CODE,
            "merchant",
            true,
        ))
        .await
        .unwrap()
        .number;
    let carol = ledger
        .open_member(member(
            4,
            MemberKind::PersonalUser,
            "Carol",
            "440308199901011234",
            "basic",
            false,
        ))
        .await
        .unwrap()
        .number;
    (alice, bob, shop, carol)
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let config = Config::sled(dir.path())
        .with_shards(2)
        .with_clock(clock.clone());
    let ledger = Ledger::open_default(config).await.unwrap();
    let (alice, bob, shop, carol) = open_members(&ledger).await;
    World {
        ledger,
        clock,
        _dir: dir,
        alice,
        bob,
        shop,
        carol,
    }
}

impl World {
    async fn view(&self, no: AccountNo, t: AccountType) -> AccountView {
        self.ledger.account(no, t).await.unwrap().unwrap()
    }

    async fn balance(&self, no: AccountNo) -> Decimal {
        self.view(no, AccountType::Balance).await.balance
    }

    async fn top_up(&self, id: u128, who: AccountNo, cents: i64) -> Posted {
        let request = PostRequest::new(TxnId(id), "top_up")
            .member("member", who)
            .channel("channel", "icbc")
            .amount("amount", yuan(cents));
        self.ledger.post(request).await.unwrap()
    }

    async fn pay(&self, id: u128, cents: i64, fee: i64) -> Result<Posted, LedgerError> {
        let request = PostRequest::new(TxnId(id), "pay")
            .member("payer", self.alice)
            .member("merchant", self.shop)
            .amount("amount", yuan(cents))
            .amount("fee", yuan(fee));
        self.ledger.post(request).await
    }

    async fn simple(
        &self,
        id: u128,
        txn: &str,
        who: AccountNo,
        cents: i64,
    ) -> Result<Posted, LedgerError> {
        let field = if matches!(txn, "settle" | "payout") {
            "merchant"
        } else {
            "member"
        };
        let mut request = PostRequest::new(TxnId(id), txn)
            .member(field, who)
            .amount("amount", yuan(cents));
        if matches!(txn, "withdraw" | "payout" | "card_refund") {
            request = request.channel("channel", "icbc");
        }
        self.ledger.post(request).await
    }

    /// Sets one of `who`'s balance account's status, with who and why.
    async fn account_status(
        &self,
        who: AccountNo,
        status: AccountStatus,
    ) -> Result<MemberEvent, LedgerError> {
        self.ledger
            .change_member(MemberChange {
                number: who,
                action: MemberAction::AccountStatus {
                    account: AccountType::Balance,
                    status,
                },
                by: "risk-desk".into(),
                reason: format!("case 17: {status:?}"),
            })
            .await
    }

    async fn internal(&self, internal: Internal) -> Decimal {
        self.ledger.internal_balance(internal).await.unwrap()
    }

    async fn audit_ok(&self) -> Audit {
        let audit = self.ledger.engine().audit().await.unwrap();
        assert!(audit.ok(), "{audit:?}");
        audit
    }
}

fn icbc(account: ChannelAccount) -> Internal {
    Internal::Channel { number: 1, account }
}

const FEE_INCOME: Internal = Internal::Platform(PlatformAccount::FeeIncome);

#[tokio::test]
async fn top_up_through_a_channel_and_the_daily_summary() {
    let w = world().await;
    w.top_up(1, w.alice, 1_000_00).await;
    w.top_up(2, w.bob, 300_00).await;
    assert_eq!(w.balance(w.alice).await, yuan(1_000_00));
    let receivable = icbc(ChannelAccount::Receivable);
    assert_eq!(w.internal(receivable).await, yuan(1_300_00));
    // Real-time legs went to summary slots; the account itself is untouched.
    let own = receivable.account_no().account_id(0);
    let view = w.ledger.engine().account(own).await.unwrap().unwrap();
    assert_eq!(view.balance, yuan(0));
    assert_eq!(view.normal_side, Side::Debit);
    // The daily summary moves the day onto the account in one detail.
    let posted = w.ledger.summarize_day().await.unwrap();
    assert_eq!(posted.len(), 1, "{posted:?}");
    let view = w.ledger.engine().account(own).await.unwrap().unwrap();
    assert_eq!(view.balance, yuan(1_300_00));
    let page = w
        .ledger
        .engine()
        .details(DetailQuery::all(own, 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.details.len(), 1);
    assert_eq!(w.internal(receivable).await, yuan(1_300_00));
    // A second run the same day posts nothing new.
    let again = w.ledger.summarize_day().await.unwrap();
    assert!(again.iter().all(|p| p.duplicate), "{again:?}");
    assert_eq!(w.internal(receivable).await, yuan(1_300_00));
    // The member's detail: pre and post balance, the transaction code.
    let alice_id = w.alice.account_id(AccountType::Balance.code());
    let page = w
        .ledger
        .engine()
        .details(DetailQuery::all(alice_id, 10))
        .await
        .unwrap()
        .unwrap();
    let d = &page.details[0];
    assert_eq!(
        (d.code, d.balance_pre, d.balance_post),
        (TxnCode(1001), yuan(0), yuan(1_000_00))
    );
    w.audit_ok().await;
}

#[tokio::test]
async fn withdrawal_is_two_phase_and_cannot_take_non_withdrawable_money() {
    let w = world().await;
    w.top_up(1, w.alice, 1_000_00).await;
    w.simple(2, "card_refund", w.alice, 200_00).await.unwrap();
    let a = w.view(w.alice, AccountType::Balance).await;
    assert_eq!(
        (a.balance, a.withdrawable),
        (yuan(1_200_00), yuan(1_000_00))
    );
    // More than the withdrawable part is refused.
    let err = w
        .simple(3, "withdraw", w.alice, 1_000_01)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        "{err:?}"
    );
    // Reserve, then the bank confirms: posted.
    w.simple(4, "withdraw", w.alice, 800_00).await.unwrap();
    let a = w.view(w.alice, AccountType::Balance).await;
    assert_eq!(
        (a.balance, a.reserved, a.withdrawable),
        (yuan(1_200_00), yuan(800_00), yuan(200_00))
    );
    w.ledger.capture(TxnId(5), TxnId(4), None).await.unwrap();
    assert_eq!(w.balance(w.alice).await, yuan(400_00));
    assert_eq!(
        w.internal(icbc(ChannelAccount::Payable)).await,
        yuan(800_00)
    );
    // Reserve, then the bank fails: voided, nothing moves.
    w.simple(6, "withdraw", w.alice, 100_00).await.unwrap();
    w.ledger.release(TxnId(7), TxnId(6)).await.unwrap();
    let a = w.view(w.alice, AccountType::Balance).await;
    assert_eq!((a.balance, a.reserved), (yuan(400_00), yuan(0)));
    // A second answer for the same reservation is refused.
    let err = w
        .ledger
        .capture(TxnId(8), TxnId(6), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::PendingAlreadyVoided)),
        "{err:?}"
    );
    w.audit_ok().await;
}

#[tokio::test]
async fn wallet_transfer_touches_customer_accounts_only() {
    let w = world().await;
    w.top_up(1, w.alice, 100_00).await;
    let request = PostRequest::new(TxnId(2), "transfer")
        .member("payer", w.alice)
        .member("payee", w.bob)
        .amount("amount", yuan(40_00));
    let posted = w.ledger.post(request).await.unwrap();
    assert_eq!(posted.legs.len(), 2);
    for leg in &posted.legs {
        let (no, _) = AccountNo::of_account_id(leg.account).unwrap();
        assert_ne!(no.class(), AccountClass::Internal);
    }
    assert_eq!(w.balance(w.alice).await, yuan(60_00));
    assert_eq!(w.balance(w.bob).await, yuan(40_00));
    w.audit_ok().await;
}

#[tokio::test]
async fn payment_with_fee_settlement_and_payout() {
    let w = world().await;
    w.top_up(1, w.alice, 500_00).await;
    let posted = w.pay(2, 100_00, 60).await.unwrap();
    assert_eq!(posted.code, TxnCode(3001));
    assert_eq!(w.balance(w.alice).await, yuan(400_00));
    assert_eq!(
        w.view(w.shop, AccountType::PendingSettlement).await.balance,
        yuan(99_40)
    );
    assert_eq!(w.internal(FEE_INCOME).await, yuan(60));
    let view = w
        .ledger
        .engine()
        .transaction(TxnId(2))
        .await
        .unwrap()
        .unwrap();
    let details: Vec<(u16, Side, Decimal, Decimal, Decimal)> = view
        .details
        .iter()
        .map(|d| (d.leg, d.side, d.amount, d.balance_pre, d.balance_post))
        .collect();
    assert_eq!(
        details,
        [
            (0, Side::Debit, yuan(100_00), yuan(500_00), yuan(400_00)),
            (1, Side::Credit, yuan(99_40), yuan(0), yuan(99_40)),
            (2, Side::Credit, yuan(60), yuan(0), yuan(60)),
        ]
    );
    // Without a fee there is no fee leg.
    assert_eq!(w.pay(3, 10_00, 0).await.unwrap().legs.len(), 2);
    // Settlement: pending settlement to balance.
    let settle = w.simple(4, "settle", w.shop, 109_40).await.unwrap();
    assert_eq!(settle.legs.len(), 2);
    assert_eq!(
        w.view(w.shop, AccountType::PendingSettlement).await.balance,
        yuan(0)
    );
    assert_eq!(w.balance(w.shop).await, yuan(109_40));
    // Payout through the payout plan; the bank rejects; the reverse entry.
    w.simple(5, "payout", w.shop, 100_00).await.unwrap();
    assert_eq!(w.balance(w.shop).await, yuan(9_40));
    assert_eq!(
        w.internal(icbc(ChannelAccount::PayoutPlan)).await,
        yuan(100_00)
    );
    w.ledger.reverse(TxnId(5)).await.unwrap();
    assert_eq!(w.balance(w.shop).await, yuan(109_40));
    assert_eq!(w.internal(icbc(ChannelAccount::PayoutPlan)).await, yuan(0));
    // Payout again; this time the bank pays.
    w.simple(6, "payout", w.shop, 100_00).await.unwrap();
    let done = PostRequest::new(TxnId(7), "payout_done")
        .channel("channel", "icbc")
        .amount("amount", yuan(100_00));
    w.ledger.post(done).await.unwrap();
    assert_eq!(w.internal(icbc(ChannelAccount::PayoutPlan)).await, yuan(0));
    assert_eq!(
        w.internal(icbc(ChannelAccount::Payable)).await,
        yuan(100_00)
    );
    w.audit_ok().await;
}

#[tokio::test]
async fn partial_refunds_never_exceed_the_original() {
    let w = world().await;
    w.top_up(1, w.alice, 500_00).await;
    w.pay(2, 100_00, 60).await.unwrap();
    let first = w.ledger.refund(TxnId(2), 0, yuan(30_00)).await.unwrap();
    assert_eq!(first.code, TxnCode(3002));
    assert_eq!(w.balance(w.alice).await, yuan(430_00));
    // The same refund again: the first answer, nothing more.
    let again = w.ledger.refund(TxnId(2), 0, yuan(30_00)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(w.balance(w.alice).await, yuan(430_00));
    // Refund 1 may take what is left of the original 100, no more.
    let err = w.ledger.refund(TxnId(2), 1, yuan(70_01)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::RefundExceedsOriginal { amount, refunded, .. } if amount == yuan(100_00) && refunded == yuan(30_00)),
        "{err:?}"
    );
    // The merchant had 99.40 pending: 69.40 left, so 70.00 is short there.
    let err = w.ledger.refund(TxnId(2), 1, yuan(70_00)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        "{err:?}"
    );
    // That refused refund keeps its number; the next one fits.
    w.ledger.refund(TxnId(2), 2, yuan(69_40)).await.unwrap();
    let err = w.ledger.refund(TxnId(2), 3, yuan(1)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        "{err:?}"
    );
    w.top_up(3, w.alice, 10_00).await;
    w.pay(4, 5_00, 0).await.unwrap(); // merchant pending now 5.00
    let err = w.ledger.refund(TxnId(2), 4, yuan(61)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::RefundExceedsOriginal { .. }),
        "{err:?}"
    );
    w.ledger.refund(TxnId(2), 4, yuan(60)).await.unwrap();
    // Numbers may not skip.
    let err = w.ledger.refund(TxnId(2), 9, yuan(1)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::RefundSeqGap { next: 5, .. }),
        "{err:?}"
    );
    // A refunded payment is not reversed.
    let err = w.ledger.reverse(TxnId(2)).await.unwrap_err();
    assert!(matches!(err, LedgerError::NotReversible { .. }), "{err:?}");
    // A transfer has no refund rule.
    let t = PostRequest::new(TxnId(5), "transfer")
        .member("payer", w.alice)
        .member("payee", w.bob)
        .amount("amount", yuan(1_00));
    w.ledger.post(t).await.unwrap();
    let err = w.ledger.refund(TxnId(5), 0, yuan(1_00)).await.unwrap_err();
    assert!(matches!(err, LedgerError::NotRefundable { .. }), "{err:?}");
    // A payment that was all fee left the merchant nothing to refund from.
    w.pay(6, 1_00, 1_00).await.unwrap();
    let err = w.ledger.refund(TxnId(6), 0, yuan(1_00)).await.unwrap_err();
    assert!(matches!(err, LedgerError::NotRefundable { .. }), "{err:?}");
    w.audit_ok().await;
}

async fn balance_of(ledger: &Ledger, no: AccountNo, t: AccountType) -> Decimal {
    ledger.account(no, t).await.unwrap().unwrap().balance
}

#[tokio::test]
async fn reversal_is_the_exact_opposite_once_only_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let config = Config::sled(dir.path())
        .with_shards(2)
        .with_clock(clock.clone());
    let ledger = Ledger::open_default(config.clone()).await.unwrap();
    let (alice, _bob, shop, _carol) = open_members(&ledger).await;
    let top_up = PostRequest::new(TxnId(1), "top_up")
        .member("member", alice)
        .channel("channel", "icbc")
        .amount("amount", yuan(200_00));
    ledger.post(top_up).await.unwrap();
    let pay = PostRequest::new(TxnId(2), "pay")
        .member("payer", alice)
        .member("merchant", shop)
        .amount("amount", yuan(50_00))
        .amount("fee", yuan(30));
    ledger.post(pay).await.unwrap();
    let before: Vec<DetailView> = ledger
        .engine()
        .transaction(TxnId(2))
        .await
        .unwrap()
        .unwrap()
        .details;
    let reversal = ledger.reverse(TxnId(2)).await.unwrap();
    assert_eq!(reversal.code, TxnCode(9001));
    let after = ledger
        .engine()
        .transaction(reversal.id)
        .await
        .unwrap()
        .unwrap()
        .details;
    assert_eq!(after.len(), before.len());
    for (o, r) in before.iter().zip(&after) {
        assert_eq!(
            (r.account, r.side, r.amount),
            (o.account, o.side.opposite(), o.amount)
        );
    }
    assert_eq!(
        balance_of(&ledger, alice, AccountType::Balance).await,
        yuan(200_00)
    );
    assert_eq!(
        balance_of(&ledger, shop, AccountType::PendingSettlement).await,
        yuan(0)
    );
    assert_eq!(ledger.internal_balance(FEE_INCOME).await.unwrap(), yuan(0));
    let err = ledger.reverse(TxnId(2)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::AlreadyReversed(TxnId(2))),
        "{err:?}"
    );
    // A reversed payment is not refunded; a reversal is not reversed.
    let err = ledger.refund(TxnId(2), 0, yuan(1_00)).await.unwrap_err();
    assert!(matches!(err, LedgerError::NotRefundable { .. }), "{err:?}");
    let err = ledger.reverse(reversal.id).await.unwrap_err();
    assert!(matches!(err, LedgerError::NotReversible { .. }), "{err:?}");
    ledger.engine().shutdown().await.unwrap();
    drop(ledger);

    // After a restart (members registered again) it is still once only.
    let ledger = Ledger::open_default(config).await.unwrap();
    let (alice, ..) = open_members(&ledger).await;
    let err = ledger.reverse(TxnId(2)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::AlreadyReversed(TxnId(2))),
        "{err:?}"
    );
    assert_eq!(
        balance_of(&ledger, alice, AccountType::Balance).await,
        yuan(200_00)
    );
    let audit = ledger.engine().audit().await.unwrap();
    assert!(audit.ok(), "{audit:?}");
}

#[tokio::test]
async fn a_refused_reversal_can_be_retried() {
    let w = world().await;
    w.top_up(1, w.alice, 100_00).await;
    let t = PostRequest::new(TxnId(2), "transfer")
        .member("payer", w.alice)
        .member("payee", w.bob)
        .amount("amount", yuan(100_00));
    w.ledger.post(t).await.unwrap();
    let t = PostRequest::new(TxnId(3), "transfer")
        .member("payer", w.bob)
        .member("payee", w.alice)
        .amount("amount", yuan(60_00));
    w.ledger.post(t).await.unwrap();
    // Bob has 40 of the 100: the reversal is refused.
    let err = w.ledger.reverse(TxnId(2)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        "{err:?}"
    );
    w.top_up(4, w.bob, 60_00).await;
    w.ledger.reverse(TxnId(2)).await.unwrap();
    assert_eq!(w.balance(w.bob).await, yuan(0));
    let err = w.ledger.reverse(TxnId(2)).await.unwrap_err();
    assert!(matches!(err, LedgerError::AlreadyReversed(_)), "{err:?}");
    w.audit_ok().await;
}

#[tokio::test]
async fn freeze_an_amount_and_a_whole_account() {
    let w = world().await;
    w.top_up(1, w.alice, 100_00).await;
    w.simple(2, "freeze", w.alice, 70_00).await.unwrap();
    let a = w.view(w.alice, AccountType::Balance).await;
    assert_eq!(
        (a.balance, a.frozen, a.available),
        (yuan(100_00), yuan(70_00), yuan(30_00))
    );
    // Frozen money can be neither spent nor withdrawn.
    let err = w.pay(3, 30_01, 0).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        "{err:?}"
    );
    let err = w.simple(4, "withdraw", w.alice, 30_01).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        "{err:?}"
    );
    w.simple(5, "unfreeze", w.alice, 70_00).await.unwrap();
    w.pay(6, 30_01, 0).await.unwrap();
    // The whole account frozen: no debits, credits still arrive.
    w.account_status(w.alice, AccountStatus::Frozen)
        .await
        .unwrap();
    let err = w.pay(7, 1_00, 0).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::AccountFrozen { .. })),
        "{err:?}"
    );
    w.top_up(8, w.alice, 1_00).await;
    assert_eq!(w.balance(w.alice).await, yuan(70_99));
    w.account_status(w.alice, AccountStatus::Active)
        .await
        .unwrap();
    w.pay(9, 1_00, 0).await.unwrap();
    w.audit_ok().await;
}

#[tokio::test]
async fn red_packets_are_spendable_but_not_withdrawable() {
    let w = world().await;
    w.simple(1, "red_packet", w.bob, 8_88).await.unwrap();
    let b = w.view(w.bob, AccountType::Balance).await;
    assert_eq!(
        (b.balance, b.non_withdrawable, b.withdrawable),
        (yuan(8_88), yuan(8_88), yuan(0))
    );
    let err = w.simple(2, "withdraw", w.bob, 1).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        "{err:?}"
    );
    let t = PostRequest::new(TxnId(3), "transfer")
        .member("payer", w.bob)
        .member("payee", w.alice)
        .amount("amount", yuan(8_88));
    w.ledger.post(t).await.unwrap();
    assert_eq!(w.balance(w.alice).await, yuan(8_88));
    // The marketing pool is an expense: debit-normal, it grew by the packet.
    assert_eq!(
        w.internal(Internal::Platform(PlatformAccount::MarketingPool))
            .await,
        yuan(8_88)
    );
    w.audit_ok().await;
}

#[tokio::test]
async fn reservations_are_captured_released_or_expire_at_the_deadline() {
    let w = world().await;
    w.top_up(1, w.alice, 100_00).await;
    let hold = |id: u128, cents: i64| {
        PostRequest::new(TxnId(id), "hold")
            .member("payer", w.alice)
            .member("merchant", w.shop)
            .amount("amount", yuan(cents))
    };
    // Held for an order, then paid (a part of it: the rest is released).
    w.ledger.post(hold(2, 50_00)).await.unwrap();
    assert_eq!(
        w.view(w.alice, AccountType::Balance).await.available,
        yuan(50_00)
    );
    w.ledger
        .capture(TxnId(3), TxnId(2), Some(yuan(45_00)))
        .await
        .unwrap();
    let a = w.view(w.alice, AccountType::Balance).await;
    assert_eq!((a.balance, a.reserved), (yuan(55_00), yuan(0)));
    assert_eq!(
        w.view(w.shop, AccountType::PendingSettlement).await.balance,
        yuan(45_00)
    );
    // Held, then cancelled.
    w.ledger.post(hold(4, 20_00)).await.unwrap();
    w.ledger.release(TxnId(5), TxnId(4)).await.unwrap();
    assert_eq!(
        w.view(w.alice, AccountType::Balance).await.reserved,
        yuan(0)
    );
    // Held and never paid: 24 hours later the order closes by itself.
    w.ledger.post(hold(6, 30_00)).await.unwrap();
    w.ledger
        .post(hold(7, 10_00).timeout_ms(3_600_000))
        .await
        .unwrap();
    assert_eq!(
        w.view(w.alice, AccountType::Balance).await.reserved,
        yuan(40_00)
    );
    w.clock.advance_ms(3_600_001);
    w.top_up(8, w.bob, 1).await; // time moves for the engine with a posting
    assert_eq!(
        w.view(w.alice, AccountType::Balance).await.reserved,
        yuan(30_00)
    );
    w.clock.advance_ms(24 * 3_600_000);
    w.top_up(9, w.bob, 1).await;
    let a = w.view(w.alice, AccountType::Balance).await;
    assert_eq!(
        (a.balance, a.reserved, a.available),
        (yuan(55_00), yuan(0), yuan(55_00))
    );
    let err = w
        .ledger
        .capture(TxnId(10), TxnId(6), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::PendingExpired)),
        "{err:?}"
    );
    let audit = w.audit_ok().await;
    assert_eq!(audit.pending_open, 0);
}

#[tokio::test]
async fn limits_per_transaction_and_per_day() {
    let w = world().await;
    // Bob is "basic": 2,000.00 per transaction, 5,000.00 a day.
    w.top_up(1, w.bob, 10_000_00).await;
    let send = |id: u128, cents: i64| {
        PostRequest::new(TxnId(id), "transfer")
            .member("payer", w.bob)
            .member("payee", w.alice)
            .amount("amount", yuan(cents))
    };
    let err = w.ledger.post(send(2, 2_000_01)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::PerTxnLimitExceeded { .. }),
        "{err:?}"
    );
    for i in 0..2 {
        w.ledger.post(send(3 + i, 2_000_00)).await.unwrap();
    }
    // A refused transfer does not use the limit up.
    let err = w
        .ledger
        .post(send(5, 2_000_00).member("payee", w.carol))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::MemberNotVerified(_)), "{err:?}");
    let err = w.ledger.post(send(6, 1_000_01)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::DailyLimitExceeded { .. }),
        "{err:?}"
    );
    w.ledger.post(send(7, 1_000_00)).await.unwrap();
    assert_eq!(w.balance(w.bob).await, yuan(5_000_00));
    // A new day, a new allowance.
    w.clock.advance_ms(24 * 3_600_000);
    w.ledger.post(send(8, 2_000_00)).await.unwrap();
    assert_eq!(w.balance(w.bob).await, yuan(3_000_00));
}

#[tokio::test]
async fn daily_limits_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let config = Config::sled(dir.path())
        .with_shards(2)
        .with_clock(clock.clone());
    let send = |id: u128, payer: AccountNo, payee: AccountNo, cents: i64| {
        PostRequest::new(TxnId(id), "transfer")
            .member("payer", payer)
            .member("payee", payee)
            .amount("amount", yuan(cents))
    };
    let ledger = Ledger::open_default(config.clone()).await.unwrap();
    let (alice, bob, ..) = open_members(&ledger).await;
    let top_up = PostRequest::new(TxnId(1), "top_up")
        .member("member", bob)
        .channel("channel", "icbc")
        .amount("amount", yuan(10_000_00));
    ledger.post(top_up).await.unwrap();
    ledger.post(send(2, bob, alice, 2_000_00)).await.unwrap();
    ledger.post(send(3, bob, alice, 2_000_00)).await.unwrap();
    ledger.engine().shutdown().await.unwrap();
    drop(ledger);

    let ledger = Ledger::open_default(config).await.unwrap();
    let (alice, bob, ..) = open_members(&ledger).await;
    let err = ledger
        .post(send(4, bob, alice, 1_000_01))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::DailyLimitExceeded { used, .. } if used == yuan(4_000_00)),
        "{err:?}"
    );
    ledger.post(send(5, bob, alice, 1_000_00)).await.unwrap();
    assert_eq!(
        balance_of(&ledger, bob, AccountType::Balance).await,
        yuan(5_000_00)
    );
}

#[tokio::test]
async fn bad_input_is_a_typed_error_and_posts_nothing() {
    let w = world().await;
    w.top_up(1, w.alice, 100_00).await;
    w.pay(2, 50_00, 10).await.unwrap();
    w.ledger.refund(TxnId(2), 0, yuan(40_00)).await.unwrap();
    // Refused (Alice spent part of it): a refused reversal changes nothing.
    assert!(w.ledger.reverse(TxnId(1)).await.is_err());
    let t = PostRequest::new(TxnId(3), "transfer")
        .member("payer", w.alice)
        .member("payee", w.bob)
        .amount("amount", yuan(1_00));
    w.ledger.post(t).await.unwrap();
    w.ledger.reverse(TxnId(3)).await.unwrap();

    let snapshot = || async {
        let mut views = Vec::new();
        for no in [w.alice, w.bob, w.shop, w.carol] {
            for t in [AccountType::Balance, AccountType::PendingSettlement] {
                views.push(w.ledger.account(no, t).await.unwrap());
            }
        }
        let audit = w.ledger.engine().audit().await.unwrap();
        (views, audit.details, audit.committed)
    };
    let before = snapshot().await;
    let transfer = |id: u128| {
        PostRequest::new(TxnId(id), "transfer")
            .member("payer", w.alice)
            .member("payee", w.bob)
            .amount("amount", yuan(1_00))
    };
    let typo = {
        let mut s = w.bob.to_string().into_bytes();
        s[5] = if s[5] == b'9' { b'0' } else { s[5] + 1 };
        String::from_utf8(s).unwrap()
    };
    let unknown_member = AccountNo::new(AccountClass::Personal, 999).unwrap();
    type Check = fn(&LedgerError) -> bool;
    let posts: Vec<(&str, PostRequest, Check)> = vec![
        ("unknown code", PostRequest::new(TxnId(100), "lend"), |e| {
            matches!(e, LedgerError::UnknownTxnCode(_))
        }),
        (
            "missing field",
            PostRequest::new(TxnId(101), "transfer")
                .member("payer", w.alice)
                .amount("amount", yuan(1_00)),
            |e| matches!(e, LedgerError::MissingField { field, .. } if field == "payee"),
        ),
        ("extra field", transfer(102).amount("tip", yuan(1)), |e| {
            matches!(e, LedgerError::UnexpectedField { .. })
        }),
        (
            "field of the wrong type",
            PostRequest::new(TxnId(103), "transfer")
                .member("payer", w.alice)
                .channel("payee", "icbc")
                .amount("amount", yuan(1_00)),
            |e| matches!(e, LedgerError::FieldType { .. }),
        ),
        (
            "account number typo",
            transfer(104).member("payee", &typo),
            |e| {
                matches!(
                    e,
                    LedgerError::InvalidAccountNo(AccountNoError::CheckDigit(_))
                )
            },
        ),
        (
            "account number malformed",
            transfer(105).member("payee", "12345"),
            |e| matches!(e, LedgerError::InvalidAccountNo(AccountNoError::Format(_))),
        ),
        (
            "unknown member",
            transfer(106).member("payee", unknown_member),
            |e| matches!(e, LedgerError::UnknownMember(_)),
        ),
        (
            "member not verified",
            transfer(107).member("payer", w.carol),
            |e| matches!(e, LedgerError::MemberNotVerified(_)),
        ),
        (
            "unknown channel",
            PostRequest::new(TxnId(108), "top_up")
                .member("member", w.alice)
                .channel("channel", "nobank")
                .amount("amount", yuan(1_00)),
            |e| matches!(e, LedgerError::UnknownChannel(_)),
        ),
        (
            "zero amount",
            transfer(109).amount("amount", yuan(0)),
            |e| matches!(e, LedgerError::AmountNotPositive { .. }),
        ),
        (
            "negative amount",
            transfer(110).amount("amount", yuan(-1_00)),
            |e| matches!(e, LedgerError::AmountNotPositive { .. }),
        ),
        (
            "fee above amount",
            PostRequest::new(TxnId(111), "pay")
                .member("payer", w.alice)
                .member("merchant", w.shop)
                .amount("amount", yuan(1_00))
                .amount("fee", yuan(2_00)),
            |e| matches!(e, LedgerError::NegativeLeg { .. }),
        ),
        (
            "limit exceeded",
            PostRequest::new(TxnId(112), "transfer")
                .member("payer", w.bob)
                .member("payee", w.alice)
                .amount("amount", yuan(2_000_01)),
            |e| matches!(e, LedgerError::PerTxnLimitExceeded { .. }),
        ),
        (
            "insufficient funds",
            transfer(113).amount("amount", yuan(1_000_00)),
            |e| matches!(e, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        ),
        (
            "too many decimals",
            transfer(114).amount("amount", Decimal::new(1, 3)),
            |e| matches!(e, LedgerError::Rejected(Reject::TooManyDecimals { .. })),
        ),
        (
            "merchant account on a person",
            PostRequest::new(TxnId(115), "settle")
                .member("merchant", w.bob)
                .amount("amount", yuan(1)),
            |e| matches!(e, LedgerError::Rejected(Reject::AccountNotFound { .. })),
        ),
    ];
    for (what, request, check) in posts {
        let err = w.ledger.post(request).await.expect_err(what);
        assert!(check(&err), "{what}: {err:?}");
        assert_eq!(snapshot().await, before, "{what} changed something");
    }
    let others: Vec<(&str, Result<Posted, LedgerError>, Check)> = vec![
        (
            "refund above the original",
            w.ledger.refund(TxnId(2), 1, yuan(10_01)).await,
            |e| matches!(e, LedgerError::RefundExceedsOriginal { .. }),
        ),
        (
            "refund of nothing",
            w.ledger.refund(TxnId(999), 0, yuan(1)).await,
            |e| matches!(e, LedgerError::OriginalNotFound(_)),
        ),
        (
            "refund of a refused transaction",
            w.ledger.refund(TxnId(113), 0, yuan(1)).await,
            |e| matches!(e, LedgerError::OriginalNotCommitted(_)),
        ),
        (
            "zero refund",
            w.ledger.refund(TxnId(2), 1, yuan(0)).await,
            |e| matches!(e, LedgerError::AmountNotPositive { .. }),
        ),
        ("second reversal", w.ledger.reverse(TxnId(3)).await, |e| {
            matches!(e, LedgerError::AlreadyReversed(_))
        }),
        (
            "reversal of nothing",
            w.ledger.reverse(TxnId(998)).await,
            |e| matches!(e, LedgerError::OriginalNotFound(_)),
        ),
        (
            "capture of nothing",
            w.ledger.capture(TxnId(120), TxnId(997), None).await,
            |e| matches!(e, LedgerError::OriginalNotFound(_)),
        ),
        (
            "capture of a posted transaction",
            w.ledger.capture(TxnId(121), TxnId(3), None).await,
            |e| matches!(e, LedgerError::Rejected(Reject::PendingNotFound)),
        ),
    ];
    for (what, result, check) in others {
        let err = result.expect_err(what);
        assert!(check(&err), "{what}: {err:?}");
        assert_eq!(snapshot().await, before, "{what} changed something");
    }
    // Members: bad real-name numbers and mismatched records open nothing.
    let bad_members: Vec<(&str, OpenMember, Check)> = vec![
        (
            "ID card check digit",
            member(
                50,
                MemberKind::PersonalUser,
                "X",
                "110105194912310021",
                "basic",
                true,
            ),
            |e| matches!(e, LedgerError::InvalidId(IdError::IdCardCheck { .. })),
        ),
        (
            "credit code check",
            member(
                51,
                MemberKind::MerchantCompany,
                "X",
                "91350100M000100Y44",
                "merchant",
                true,
            ),
            |e| matches!(e, LedgerError::InvalidId(IdError::CreditCodeCheck { .. })),
        ),
        (
            "unknown level",
            member(52, MemberKind::PersonalUser, "X", ALICE_ID, "gold", true),
            |e| matches!(e, LedgerError::UnknownLevel(_)),
        ),
        (
            "company with an ID card",
            OpenMember {
                legal: false,
                ..member(
                    53,
                    MemberKind::MerchantCompany,
                    "X",
                    ALICE_ID,
                    "merchant",
                    true,
                )
            },
            |e| matches!(e, LedgerError::PartyMismatch { .. }),
        ),
        (
            "same number, other person",
            member(
                1,
                MemberKind::PersonalUser,
                "Mallory",
                BOB_ID,
                "basic",
                true,
            ),
            |e| matches!(e, LedgerError::MemberConflict(_)),
        ),
    ];
    for (what, request, check) in bad_members {
        let serial = request.serial;
        let err = w.ledger.open_member(request).await.expect_err(what);
        assert!(check(&err), "{what}: {err:?}");
        if serial != 1 {
            let no = AccountNo::new(AccountClass::Personal, serial).unwrap();
            assert!(w.ledger.member(no).is_none(), "{what}");
            assert!(
                w.ledger
                    .account(no, AccountType::Balance)
                    .await
                    .unwrap()
                    .is_none(),
                "{what}"
            );
        }
    }
    assert_eq!(snapshot().await, before);

    // Member changes: typed errors, nothing changed or recorded.
    let change = |number, action, by: &str, reason: &str| MemberChange {
        number,
        action,
        by: by.into(),
        reason: reason.into(),
    };
    let long = "x".repeat(MEMBER_NOTE_MAX + 1);
    let bad_changes: Vec<(&str, MemberChange, Check)> = vec![
        (
            "no one said who",
            change(w.alice, MemberAction::Freeze, " ", "fraud"),
            |e| matches!(e, LedgerError::MemberChangeNote { field, .. } if field == "by"),
        ),
        (
            "no reason",
            change(w.alice, MemberAction::Freeze, "ops", ""),
            |e| matches!(e, LedgerError::MemberChangeNote { field, .. } if field == "reason"),
        ),
        (
            "a reason too long",
            change(w.alice, MemberAction::Freeze, "ops", &long),
            |e| matches!(e, LedgerError::MemberChangeNote { .. }),
        ),
        (
            "unknown member",
            change(unknown_member, MemberAction::Freeze, "ops", "x"),
            |e| matches!(e, LedgerError::UnknownMember(_)),
        ),
        (
            "unfreezing an active member",
            change(w.alice, MemberAction::Unfreeze, "ops", "x"),
            |e| matches!(e, LedgerError::MemberUnchanged { .. }),
        ),
        (
            "an unknown level",
            change(
                w.alice,
                MemberAction::Level(MemberLevel("gold".into())),
                "ops",
                "x",
            ),
            |e| matches!(e, LedgerError::UnknownLevel(_)),
        ),
        (
            "the level it has",
            change(
                w.alice,
                MemberAction::Level(MemberLevel("verified".into())),
                "ops",
                "x",
            ),
            |e| matches!(e, LedgerError::MemberUnchanged { .. }),
        ),
        (
            "closing a member with money",
            change(w.alice, MemberAction::Close, "ops", "x"),
            |e| matches!(e, LedgerError::MemberHasMoney(_)),
        ),
    ];
    for (what, request, check) in bad_changes {
        let err = w.ledger.change_member(request).await.expect_err(what);
        assert!(check(&err), "{what}: {err:?}");
    }
    assert!(w.ledger.member_history(w.alice).await.unwrap().is_empty());
    assert_eq!(w.ledger.member_status(w.alice), MemberStatus::Active);
    assert_eq!(snapshot().await, before);
    w.audit_ok().await;
}

#[tokio::test]
async fn members_templates_and_sub_accounts() {
    let w = world().await;
    assert!(w
        .ledger
        .account(w.alice, AccountType::PendingSettlement)
        .await
        .unwrap()
        .is_none());
    use tally_business::subject::codes;
    let expected = [
        (AccountType::Balance, codes::MERCHANT_BALANCE),
        (
            AccountType::PendingSettlement,
            codes::MERCHANT_PENDING_SETTLEMENT,
        ),
        (AccountType::Marketing, codes::MERCHANT_MARKETING),
    ];
    assert_eq!(
        w.view(w.alice, AccountType::Balance).await.subject,
        codes::PERSONAL_BALANCE
    );
    for (t, subject) in expected {
        let view = w.view(w.shop, t).await;
        assert_eq!(view.subject, subject);
        assert_eq!(view.normal_side, Side::Credit);
        assert_eq!(view.kind, AccountKind::Customer);
    }
    // A sub-account added later under the same number.
    let id = w
        .ledger
        .add_sub_account(w.alice, AccountType::Wealth)
        .await
        .unwrap();
    assert_eq!(
        AccountNo::of_account_id(id),
        Some((w.alice, AccountType::Wealth.code()))
    );
    assert!(w
        .ledger
        .account(w.alice, AccountType::Wealth)
        .await
        .unwrap()
        .is_some());
    let err = w
        .ledger
        .add_sub_account(w.alice, AccountType::PendingSettlement)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::SubAccountNotAllowed { .. }),
        "{err:?}"
    );
    // Verifying Carol lets her post.
    w.ledger.verify_member(w.carol).await.unwrap();
    w.top_up(1, w.carol, 5_00).await;
    assert_eq!(w.balance(w.carol).await, yuan(5_00));
    // Opening a member again changes nothing.
    let again = w
        .ledger
        .open_member(member(
            1,
            MemberKind::PersonalUser,
            "Alice",
            ALICE_ID,
            "verified",
            true,
        ))
        .await
        .unwrap();
    assert_eq!(again.number, w.alice);
    assert_eq!(w.alice.to_string().len(), 16);
}

#[test]
fn a_bad_rule_file_stops_the_ledger_from_starting() {
    let bad = DEFAULT_RULES.replace(
        "\"merchant.pending_settlement\", side = \"credit\", amount = \"amount - fee\"",
        "\"merchant.pending_settlement\", side = \"credit\", amount = \"amount\"",
    );
    assert_ne!(bad, DEFAULT_RULES);
    let err = RuleSet::parse(&bad).unwrap_err();
    assert!(
        matches!(err, RuleError::Unbalanced { ref txn, .. } if txn == "pay"),
        "{err:?}"
    );
    let line = DEFAULT_RULES
        .lines()
        .position(|l| l == "name = \"pay\"")
        .unwrap(); // 0-based: the [[txn]] header is the line above
    assert!(
        err.to_string().starts_with(&format!("line {line}:")),
        "{err}"
    );
}

/// Concurrent callers racing to refund and to reverse the same payments:
/// the refunds never add up to more than the payment, and exactly one
/// reversal commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_refunds_and_reversals_stay_within_the_original() {
    let w = Arc::new(world().await);
    w.top_up(1, w.alice, 1_000_00).await;
    w.pay(2, 100_00, 0).await.unwrap();
    w.pay(3, 50_00, 0).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let w = Arc::clone(&w);
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u32;
            loop {
                match w.ledger.refund(TxnId(2), seq, yuan(7_00)).await {
                    Ok(_) => seq += 1,
                    Err(LedgerError::RefundSeqGap { next, .. }) => seq = seq.min(next),
                    Err(LedgerError::Rejected(Reject::IdConflict)) => seq += 1,
                    Err(LedgerError::RefundExceedsOriginal { .. }) => return,
                    Err(e) => panic!("{e:?}"),
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut reversals = Vec::new();
    for _ in 0..8 {
        let w = Arc::clone(&w);
        reversals.push(tokio::spawn(
            async move { w.ledger.reverse(TxnId(3)).await },
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut committed = 0;
    for r in reversals {
        match r.await.unwrap() {
            Ok(p) => {
                assert!(!p.duplicate);
                committed += 1;
            }
            Err(LedgerError::AlreadyReversed(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(committed, 1);
    // 14 refunds of 7.00 fit in 100.00; the 15th does not.
    assert_eq!(
        w.view(w.shop, AccountType::PendingSettlement).await.balance,
        yuan(2_00)
    );
    assert_eq!(w.balance(w.alice).await, yuan(998_00));
    w.audit_ok().await;
}

/// Many requests in one engine call: each is checked and limited on its
/// own, refused ones are not submitted, and the rest commit.
#[tokio::test]
async fn post_many_answers_each_request() {
    let w = world().await;
    w.top_up(1, w.bob, 10_000_00).await;
    let send = |id: u128, cents: i64| {
        PostRequest::new(TxnId(id), "transfer")
            .member("payer", w.bob)
            .member("payee", w.alice)
            .amount("amount", yuan(cents))
    };
    let top_up = |id: u128| {
        PostRequest::new(TxnId(id), "top_up")
            .member("member", w.alice)
            .channel("channel", "icbc")
            .amount("amount", yuan(1_00))
    };
    let results = w
        .ledger
        .post_many(vec![
            send(2, 2_000_00),
            PostRequest::new(TxnId(3), "lend"),
            send(4, 2_000_00),
            send(5, 2_000_00), // Bob's "basic" day ends at 5,000.00
            send(6, 1_000_00),
            top_up(7),
            top_up(7), // the same id twice in one call
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 7);
    assert!(results[0].as_ref().is_ok_and(|p| !p.duplicate));
    assert!(matches!(results[1], Err(LedgerError::UnknownTxnCode(_))));
    assert!(results[2].is_ok());
    assert!(matches!(
        results[3],
        Err(LedgerError::DailyLimitExceeded { .. })
    ));
    assert!(results[4].is_ok());
    assert!(results[5].is_ok());
    assert!(matches!(
        results[6],
        Err(LedgerError::Rejected(Reject::DuplicateIdInBatch))
    ));
    assert_eq!(w.balance(w.bob).await, yuan(5_000_00));
    assert_eq!(w.balance(w.alice).await, yuan(5_001_00));
    w.audit_ok().await;
}

/// A refund and a reversal of the same payment racing each other: exactly
/// one of them commits, so the payer never gets the money back twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_and_a_reversal_of_one_payment_never_both_commit() {
    let w = Arc::new(world().await);
    w.top_up(1, w.alice, 10_000_00).await;
    let payments: Vec<u128> = (100..140).collect();
    for &id in &payments {
        w.pay(id, 10_00, 0).await.unwrap();
    }
    let after_payments = w.balance(w.alice).await;
    let mut tasks = Vec::new();
    for &id in &payments {
        let (a, b) = (Arc::clone(&w), Arc::clone(&w));
        tasks.push(tokio::spawn(async move {
            match a.ledger.refund(TxnId(id), 0, yuan(10_00)).await {
                Ok(_) => true,
                Err(LedgerError::NotRefundable { .. }) => false,
                Err(e) => panic!("refund of {id}: {e:?}"),
            }
        }));
        tasks.push(tokio::spawn(async move {
            match b.ledger.reverse(TxnId(id)).await {
                Ok(_) => true,
                Err(LedgerError::NotReversible { .. }) => false,
                Err(e) => panic!("reversal of {id}: {e:?}"),
            }
        }));
    }
    let mut committed = Vec::new();
    for t in tasks {
        committed.push(t.await.unwrap());
    }
    for (id, pair) in payments.iter().zip(committed.chunks(2)) {
        assert!(
            pair[0] != pair[1],
            "payment {id}: refund committed {}, reversal committed {}",
            pair[0],
            pair[1]
        );
    }
    assert_eq!(
        w.balance(w.alice).await,
        after_payments + yuan(10_00) * Decimal::from(payments.len())
    );
    w.audit_ok().await;
}

/// Members are recorded in the engine's store: after a restart they are
/// known without being opened again, verification included, and a
/// different member under a known number is still a conflict.
#[tokio::test]
async fn members_survive_a_restart_without_being_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::sled(dir.path())
        .with_shards(2)
        .with_clock(Arc::new(ManualClock::new(START)));
    let ledger = Ledger::open_default(config.clone()).await.unwrap();
    let (alice, bob, shop, carol) = open_members(&ledger).await;
    assert!(!ledger.member(carol).unwrap().verified);
    ledger.verify_member(carol).await.unwrap();
    let before: Vec<Member> = [alice, bob, shop, carol]
        .iter()
        .map(|&n| ledger.member(n).unwrap())
        .collect();
    ledger.engine().shutdown().await.unwrap();
    drop(ledger);

    let ledger = Ledger::open_default(config).await.unwrap();
    let after: Vec<Member> = [alice, bob, shop, carol]
        .iter()
        .map(|&n| ledger.member(n).expect("known after the restart"))
        .collect();
    assert_eq!(after, before);
    assert!(after[3].verified, "verification is durable");
    // Carol, verified before the restart, may post now.
    let top_up = PostRequest::new(TxnId(1), "top_up")
        .member("member", carol)
        .channel("channel", "icbc")
        .amount("amount", yuan(10_00));
    ledger.post(top_up).await.unwrap();
    let impostor = member(
        1,
        MemberKind::PersonalUser,
        "Mallory",
        ALICE_ID,
        "verified",
        true,
    );
    let err = ledger.open_member(impostor).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::MemberConflict(n) if n == alice),
        "{err:?}"
    );
}

// ---- issue 12: business rules made airtight -----------------------------------

#[tokio::test]
async fn a_payment_refunded_by_a_later_refund_is_not_reversed() {
    let w = world().await;
    w.top_up(1, w.alice, 500_00).await;
    w.pay(2, 100_00, 60).await.unwrap();
    // The merchant's pending settlement is settled away: refund #0 is short.
    w.simple(3, "settle", w.shop, 99_40).await.unwrap();
    let err = w.ledger.refund(TxnId(2), 0, yuan(50_00)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        "{err:?}"
    );
    // Another payment refills it; refund #1 commits.
    w.pay(4, 200_00, 0).await.unwrap();
    w.ledger.refund(TxnId(2), 1, yuan(50_00)).await.unwrap();
    assert_eq!(w.balance(w.alice).await, yuan(250_00));
    // A reversal now would pay back 100.00 more, 150.00 in all for 100.00.
    let err = w.ledger.reverse(TxnId(2)).await.unwrap_err();
    assert!(matches!(err, LedgerError::NotReversible { .. }), "{err:?}");
    assert_eq!(w.balance(w.alice).await, yuan(250_00));
    w.audit_ok().await;
}

async fn assert_withdrawable(w: &World, who: AccountNo, balance: i64, non_withdrawable: i64) {
    let v = w.view(who, AccountType::Balance).await;
    assert_eq!(
        (v.balance, v.non_withdrawable, v.withdrawable),
        (
            yuan(balance),
            yuan(non_withdrawable),
            yuan(balance - non_withdrawable)
        ),
        "{v:?}"
    );
}

#[tokio::test]
async fn non_withdrawable_money_stays_non_withdrawable_whatever_path_it_takes() {
    let w = world().await;
    w.simple(1, "red_packet", w.bob, 10_00).await.unwrap();
    w.top_up(2, w.bob, 5_00).await;
    assert_withdrawable(&w, w.bob, 15_00, 10_00).await;
    // A transfer carries the non-withdrawable part to the payee.
    let t = PostRequest::new(TxnId(3), "transfer")
        .member("payer", w.bob)
        .member("payee", w.alice)
        .amount("amount", yuan(12_00));
    w.ledger.post(t).await.unwrap();
    assert_withdrawable(&w, w.bob, 3_00, 0).await;
    assert_withdrawable(&w, w.alice, 12_00, 10_00).await;
    let err = w.simple(4, "withdraw", w.alice, 2_01).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        "{err:?}"
    );
    // A payment remembers its buckets; its refund gives them back.
    w.pay(5, 12_00, 0).await.unwrap();
    assert_withdrawable(&w, w.alice, 0, 0).await;
    w.ledger.refund(TxnId(5), 0, yuan(11_00)).await.unwrap();
    assert_withdrawable(&w, w.alice, 11_00, 10_00).await;
    w.ledger.refund(TxnId(5), 1, yuan(1_00)).await.unwrap();
    assert_withdrawable(&w, w.alice, 12_00, 10_00).await;
    // A reversal too.
    w.pay(6, 12_00, 0).await.unwrap();
    w.ledger.reverse(TxnId(6)).await.unwrap();
    assert_withdrawable(&w, w.alice, 12_00, 10_00).await;
    // Reversing the transfer takes the same buckets back from the payee,
    // and does not eat the payee's own non-withdrawable money.
    w.simple(7, "red_packet", w.alice, 1_00).await.unwrap();
    w.ledger.reverse(TxnId(3)).await.unwrap();
    assert_withdrawable(&w, w.alice, 1_00, 1_00).await;
    assert_withdrawable(&w, w.bob, 15_00, 10_00).await;
    let err = w.simple(8, "withdraw", w.bob, 5_01).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        "{err:?}"
    );
    w.simple(9, "withdraw", w.bob, 5_00).await.unwrap();
    w.audit_ok().await;
}

#[tokio::test]
async fn a_released_or_expired_reservation_no_longer_counts_against_the_daily_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let config = Config::sled(dir.path())
        .with_shards(2)
        .with_clock(clock.clone());
    let ledger = Ledger::open_default(config.clone()).await.unwrap();
    let (alice, bob, shop, _) = open_members(&ledger).await;
    let hold = |id: u128, cents: i64| {
        PostRequest::new(TxnId(id), "hold")
            .member("payer", bob)
            .member("merchant", shop)
            .amount("amount", yuan(cents))
    };
    let send = |id: u128, cents: i64| {
        PostRequest::new(TxnId(id), "transfer")
            .member("payer", bob)
            .member("payee", alice)
            .amount("amount", yuan(cents))
    };
    let top_up = |id: u128, who: AccountNo| {
        PostRequest::new(TxnId(id), "top_up")
            .member("member", who)
            .channel("channel", "icbc")
            .amount("amount", yuan(10_000_00))
    };
    // Bob is "basic": 2,000.00 per transaction, 5,000.00 a day.
    ledger.post(top_up(1, bob)).await.unwrap();
    ledger.post(hold(2, 2_000_00)).await.unwrap();
    ledger.post(hold(3, 2_000_00)).await.unwrap();
    ledger.release(TxnId(4), TxnId(2)).await.unwrap();
    ledger
        .post(hold(5, 2_000_00).timeout_ms(3_600_000))
        .await
        .unwrap();
    clock.advance_ms(3_600_001);
    ledger.post(top_up(6, alice)).await.unwrap(); // the engine expires hold 5
                                                  // Open: hold 3 (2,000.00); released and expired holds count nothing.
    ledger.post(send(7, 2_000_00)).await.unwrap();
    // A partial capture counts what was captured.
    ledger
        .capture(TxnId(8), TxnId(3), Some(yuan(1_000_00)))
        .await
        .unwrap();
    ledger.post(send(9, 2_000_00)).await.unwrap();
    let err = ledger.post(send(10, 1)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::DailyLimitExceeded { used, .. } if used == yuan(5_000_00)),
        "{err:?}"
    );
    ledger.engine().shutdown().await.unwrap();
    drop(ledger);
    // Read back from the details after a restart: the same usage.
    let ledger = Ledger::open_default(config).await.unwrap();
    let err = ledger.post(send(11, 1)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::DailyLimitExceeded { used, .. } if used == yuan(5_000_00)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_captured_hold_is_refundable_and_the_fee_is_refunded_only_if_the_rule_says() {
    let w = world().await;
    w.top_up(1, w.alice, 1_000_00).await;
    let hold = PostRequest::new(TxnId(2), "hold")
        .member("payer", w.alice)
        .member("merchant", w.shop)
        .amount("amount", yuan(100_00));
    w.ledger.post(hold).await.unwrap();
    // The reservation itself is not a payment: nothing to refund yet.
    let err = w.ledger.refund(TxnId(2), 0, yuan(1_00)).await.unwrap_err();
    assert!(matches!(err, LedgerError::NotRefundable { .. }), "{err:?}");
    w.ledger
        .capture(TxnId(3), TxnId(2), Some(yuan(80_00)))
        .await
        .unwrap();
    w.ledger.refund(TxnId(3), 0, yuan(30_00)).await.unwrap();
    assert_eq!(w.balance(w.alice).await, yuan(950_00));
    let err = w.ledger.refund(TxnId(3), 1, yuan(50_01)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::RefundExceedsOriginal { amount, .. } if amount == yuan(80_00)),
        "{err:?}"
    );
    // By default the fee stays with the platform.
    w.pay(4, 100_00, 60).await.unwrap();
    w.ledger.refund(TxnId(4), 0, yuan(100_00)).await.unwrap();
    assert_eq!(w.internal(FEE_INCOME).await, yuan(60));
    assert_eq!(w.balance(w.alice).await, yuan(950_00));
    w.audit_ok().await;

    // A rule file that refunds the fee: pro rata, exactly all of it in the end.
    let text = DEFAULT_RULES.replacen(
        "limit = \"payer\"\nrefund = \"refund\"\n",
        "limit = \"payer\"\nrefund = \"refund\"\nrefund_fee = true\n",
        1,
    );
    assert_ne!(text, DEFAULT_RULES);
    let rules = RuleSet::parse(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::sled(dir.path())
        .with_shards(2)
        .with_clock(Arc::new(ManualClock::new(START)));
    let ledger = Ledger::open(config, rules).await.unwrap();
    let (alice, _, shop, _) = open_members(&ledger).await;
    let top_up = PostRequest::new(TxnId(1), "top_up")
        .member("member", alice)
        .channel("channel", "icbc")
        .amount("amount", yuan(1_000_00));
    ledger.post(top_up).await.unwrap();
    let pay = PostRequest::new(TxnId(2), "pay")
        .member("payer", alice)
        .member("merchant", shop)
        .amount("amount", yuan(100_00))
        .amount("fee", yuan(1_00));
    ledger.post(pay).await.unwrap();
    ledger.refund(TxnId(2), 0, yuan(33_33)).await.unwrap();
    assert_eq!(ledger.internal_balance(FEE_INCOME).await.unwrap(), yuan(67));
    ledger.refund(TxnId(2), 1, yuan(33_33)).await.unwrap();
    ledger.refund(TxnId(2), 2, yuan(33_34)).await.unwrap();
    assert_eq!(ledger.internal_balance(FEE_INCOME).await.unwrap(), yuan(0));
    assert_eq!(
        balance_of(&ledger, alice, AccountType::Balance).await,
        yuan(1_000_00)
    );
    assert_eq!(
        balance_of(&ledger, shop, AccountType::PendingSettlement).await,
        yuan(0)
    );
    assert!(ledger.engine().audit().await.unwrap().ok());
}

#[tokio::test]
async fn the_daily_summary_runs_again_after_new_activity_for_every_account() {
    let w = world().await;
    w.top_up(1, w.alice, 1_000_00).await;
    let first = w.ledger.summarize_day().await.unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    // New activity on the receivable and on the fee income, same day.
    w.top_up(2, w.bob, 300_00).await;
    w.pay(3, 100_00, 60).await.unwrap();
    let second = w.ledger.summarize_day().await.unwrap();
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(second.iter().all(|p| !p.duplicate), "{second:?}");
    let own = |internal: Internal| internal.account_no().account_id(0);
    let receivable = icbc(ChannelAccount::Receivable);
    for (internal, total) in [(receivable, 1_300_00), (FEE_INCOME, 60)] {
        let view = w
            .ledger
            .engine()
            .account(own(internal))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.balance, yuan(total), "{internal}");
        assert_eq!(w.internal(internal).await, yuan(total), "{internal}");
    }
    // Nothing new: nothing posted.
    assert!(w.ledger.summarize_day().await.unwrap().is_empty());
    w.audit_ok().await;
}

#[tokio::test]
async fn a_retried_payment_is_a_duplicate_even_if_its_bucket_split_changed() {
    let w = world().await;
    w.simple(1, "red_packet", w.alice, 10_00).await.unwrap();
    w.top_up(2, w.alice, 100_00).await;
    let first = w.pay(3, 15_00, 0).await.unwrap();
    assert!(!first.duplicate);
    // More non-withdrawable money: the same request would split otherwise.
    w.simple(4, "red_packet", w.alice, 5_00).await.unwrap();
    let again = w.pay(3, 15_00, 0).await.unwrap();
    assert!(again.duplicate, "{again:?}");
    assert_eq!(w.balance(w.alice).await, yuan(100_00));
    // Other content under the same id is still refused.
    let err = w.pay(3, 16_00, 0).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::IdConflict)),
        "{err:?}"
    );
    w.audit_ok().await;
}

#[test]
fn bad_product_and_refund_settings_stop_the_rule_file() {
    let bad = |from: &str, to: &str| {
        assert!(DEFAULT_RULES.contains(from), "{from}");
        RuleSet::parse(&DEFAULT_RULES.replacen(from, to, 1)).unwrap_err()
    };
    let err = bad("max_packets = 200", "max_packets = 0");
    assert!(matches!(err, RuleError::Invalid { .. }), "{err:?}");
    let err = bad("max_packets = 200", "max_packets = 10001");
    assert!(matches!(err, RuleError::Invalid { .. }), "{err:?}");
    let err = bad("expiry_ms = 86400000 ", "expiry_ms = 0 ");
    assert!(matches!(err, RuleError::Invalid { .. }), "{err:?}");
    let err = bad("send_code = 6001", "send_code = 3001");
    assert!(matches!(err, RuleError::Duplicate { .. }), "{err:?}");
    let err = bad(
        "name = \"transfer\"\ncode = 2001\n",
        "name = \"transfer\"\ncode = 2001\nrefund_fee = true\n",
    );
    assert!(matches!(err, RuleError::Invalid { .. }), "{err:?}");
    // The hold has no fee to refund.
    let err = bad(
        "refund = \"refund\"   # refunds a capture",
        "refund_fee = true\nrefund = \"refund\"   # refunds a capture",
    );
    assert!(matches!(err, RuleError::Invalid { .. }), "{err:?}");
    // Persons: at least one member each, a positive daily limit.
    let err = bad("members_max = 5", "members_max = 0");
    assert!(matches!(err, RuleError::Invalid { .. }), "{err:?}");
    let err = bad(
        "daily_max = \"200000.00\"\n\n# Red",
        "daily_max = \"0\"\n\n# Red",
    );
    assert!(matches!(err, RuleError::Invalid { .. }), "{err:?}");
    let err = bad("members_max = 5", "members_max = 5\nmembrs = 1");
    assert!(matches!(err, RuleError::Syntax { .. }), "{err:?}");
}

#[tokio::test]
async fn a_hold_paid_partly_from_non_withdrawable_money_is_captured_and_refunded_by_bucket() {
    let w = world().await;
    w.simple(1, "red_packet", w.alice, 10_00).await.unwrap();
    w.top_up(2, w.alice, 100_00).await;
    let hold = |id: u128, cents: i64| {
        PostRequest::new(TxnId(id), "hold")
            .member("payer", w.alice)
            .member("merchant", w.shop)
            .amount("amount", yuan(cents))
    };
    // Reserved as 10.00 non-withdrawable + 40.00 withdrawable; 30.00 captured.
    w.ledger.post(hold(3, 50_00)).await.unwrap();
    w.ledger
        .capture(TxnId(4), TxnId(3), Some(yuan(30_00)))
        .await
        .unwrap();
    assert_withdrawable(&w, w.alice, 80_00, 0).await;
    w.ledger.refund(TxnId(4), 0, yuan(30_00)).await.unwrap();
    assert_withdrawable(&w, w.alice, 110_00, 10_00).await;
    // A capture smaller than the non-withdrawable part.
    w.ledger.post(hold(5, 50_00)).await.unwrap();
    w.ledger
        .capture(TxnId(6), TxnId(5), Some(yuan(5_00)))
        .await
        .unwrap();
    let a = w.view(w.alice, AccountType::Balance).await;
    assert_eq!((a.balance, a.reserved), (yuan(105_00), yuan(0)));
    w.ledger.refund(TxnId(6), 0, yuan(5_00)).await.unwrap();
    assert_withdrawable(&w, w.alice, 110_00, 10_00).await;
    w.audit_ok().await;
}

#[tokio::test]
async fn a_wallet_noted_to_hold_no_non_withdrawable_money_is_split_again_once_it_receives_some() {
    let w = world().await;
    w.top_up(1, w.alice, 100_00).await;
    // Alice holds none: the ledger notes it and splits her next payments
    // without reading the engine.
    let first = w.pay(2, 10_00, 0).await.unwrap();
    assert!(first
        .legs
        .iter()
        .all(|l| l.bucket != Bucket::NonWithdrawable));
    // Non-withdrawable money arrives (a platform red packet, then a claim
    // of a member's red packet sent from non-withdrawable money).
    w.simple(3, "red_packet", w.alice, 30_00).await.unwrap();
    let nw_paid = |p: &Posted| -> Decimal {
        p.legs
            .iter()
            .filter(|l| l.side == Side::Debit && l.bucket == Bucket::NonWithdrawable)
            .map(|l| l.amount)
            .sum()
    };
    let second = w.pay(4, 50_00, 0).await.unwrap();
    assert_eq!(nw_paid(&second), yuan(30_00), "{second:?}");
    assert_withdrawable(&w, w.alice, 70_00, 0).await;
    w.ledger.refund(TxnId(4), 0, yuan(50_00)).await.unwrap();
    assert_withdrawable(&w, w.alice, 120_00, 30_00).await;
    w.pay(5, 120_00, 0).await.unwrap();
    assert_withdrawable(&w, w.alice, 0, 0).await;
    w.simple(6, "red_packet", w.bob, 8_00).await.unwrap();
    w.ledger
        .send_red_packet(SendRedPacket {
            id: TxnId(7),
            sender: w.bob.to_string(),
            total: yuan(8_00),
            count: 1,
            lucky: false,
            expiry_ms: None,
        })
        .await
        .unwrap();
    w.ledger
        .claim_red_packet(TxnId(7), &w.alice.to_string())
        .await
        .unwrap();
    assert_withdrawable(&w, w.alice, 8_00, 8_00).await;
    let third = w.pay(8, 8_00, 0).await.unwrap();
    assert_eq!(nw_paid(&third), yuan(8_00), "{third:?}");
    w.audit_ok().await;
}

#[tokio::test]
async fn one_person_many_members_limits_per_person_and_a_lifecycle_with_who_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let config = Config::sled(dir.path())
        .with_shards(2)
        .with_clock(clock.clone());
    let ledger = Ledger::open_default(config.clone()).await.unwrap();
    let (alice, _bob, shop, _carol) = open_members(&ledger).await;
    // Alice's ID card opens four more members: five in all, the rules' most.
    let mut mine = vec![alice];
    for serial in 11..15 {
        let m = member(
            serial,
            MemberKind::PersonalUser,
            "Alice",
            ALICE_ID,
            "verified",
            true,
        );
        mine.push(ledger.open_member(m).await.unwrap().number);
    }
    let sixth = member(
        15,
        MemberKind::PersonalUser,
        "Alice",
        ALICE_ID,
        "verified",
        true,
    );
    let err = ledger.open_member(sixth.clone()).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::TooManyMembersForPerson { max: 5 }),
        "{err:?}"
    );
    let sixth_no = AccountNo::new(AccountClass::Personal, 15).unwrap();
    assert!(ledger.member(sixth_no).is_none());
    assert!(ledger
        .account(sixth_no, AccountType::Balance)
        .await
        .unwrap()
        .is_none());
    let mut listed = ledger.members_of_person(ALICE_ID);
    listed.sort();
    assert_eq!(listed, mine);
    // Opening one of them again is not a new member.
    let again = member(
        11,
        MemberKind::PersonalUser,
        "Alice",
        ALICE_ID,
        "verified",
        true,
    );
    ledger.open_member(again).await.unwrap();

    let pay = |id: u128, payer: AccountNo, cents: i64| {
        PostRequest::new(TxnId(id), "pay")
            .member("payer", payer)
            .member("merchant", shop)
            .amount("amount", yuan(cents))
            .amount("fee", yuan(0))
    };
    for (i, &m) in mine.iter().enumerate() {
        let top_up = PostRequest::new(TxnId(100 + i as u128), "top_up")
            .member("member", m)
            .channel("channel", "icbc")
            .amount("amount", yuan(60_000_00));
        ledger.post(top_up).await.unwrap();
    }
    // Each member may pay 200,000.00 a day; the person too, across all five.
    for (i, &m) in mine.iter().take(4).enumerate() {
        ledger
            .post(pay(200 + i as u128, m, 50_000_00))
            .await
            .unwrap();
    }
    let err = ledger.post(pay(210, mine[4], 1_00)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::PersonDailyLimitExceeded { member, .. } if member == mine[4]),
        "{err:?}"
    );
    // Another person is not limited by Alice's spending.
    // A restart keeps the day's usage per person.
    ledger.engine().shutdown().await.unwrap();
    drop(ledger);
    let ledger = Ledger::open_default(config.clone()).await.unwrap();
    let err = ledger.post(pay(211, mine[4], 1_00)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::PersonDailyLimitExceeded { .. }),
        "{err:?}"
    );
    let err = ledger.open_member(sixth.clone()).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::TooManyMembersForPerson { .. }),
        "{err:?}"
    );
    clock.advance_ms(24 * 3_600_000);
    ledger.post(pay(212, mine[4], 1_00)).await.unwrap();

    // The lifecycle: freeze, unfreeze, level change, close — who and why.
    let change = |number, action, by: &str, reason: &str| MemberChange {
        number,
        action,
        by: by.into(),
        reason: reason.into(),
    };
    let frozen = ledger
        .change_member(change(
            mine[1],
            MemberAction::Freeze,
            "ops:li",
            "court order 17",
        ))
        .await
        .unwrap();
    assert_eq!((frozen.seq, frozen.by.as_str()), (0, "ops:li"));
    assert_eq!(ledger.member_status(mine[1]), MemberStatus::Frozen);
    let err = ledger.post(pay(220, mine[1], 1_00)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::MemberFrozen(m) if m == mine[1]),
        "{err:?}"
    );
    let to_frozen = PostRequest::new(TxnId(221), "transfer")
        .member("payer", mine[0])
        .member("payee", mine[1])
        .amount("amount", yuan(1_00));
    let err = ledger.post(to_frozen).await.unwrap_err();
    assert!(matches!(err, LedgerError::MemberFrozen(_)), "{err:?}");
    clock.advance_ms(60_000);
    ledger
        .change_member(change(
            mine[1],
            MemberAction::Unfreeze,
            "ops:wang",
            "order lifted",
        ))
        .await
        .unwrap();
    ledger.post(pay(222, mine[1], 1_00)).await.unwrap();
    ledger
        .change_member(change(
            mine[2],
            MemberAction::Level(MemberLevel("basic".into())),
            "risk:rule-9",
            "card unbound",
        ))
        .await
        .unwrap();
    let err = ledger.post(pay(223, mine[2], 2_000_01)).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::PerTxnLimitExceeded { .. }),
        "{err:?}"
    );
    // Closing needs the accounts empty, and no red packet of its own that
    // may still return money to it.
    let err = ledger
        .change_member(change(mine[3], MemberAction::Close, "ops:li", "asked to"))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::MemberHasMoney(_)), "{err:?}");
    ledger
        .send_red_packet(SendRedPacket {
            id: TxnId(230),
            sender: mine[3].to_string(),
            total: yuan(5_00),
            count: 2,
            lucky: false,
            expiry_ms: Some(60_000),
        })
        .await
        .unwrap();
    let rest = ledger
        .account(mine[3], AccountType::Balance)
        .await
        .unwrap()
        .unwrap()
        .balance;
    let out = PostRequest::new(TxnId(224), "transfer")
        .member("payer", mine[3])
        .member("payee", mine[0])
        .amount("amount", rest);
    ledger.post(out).await.unwrap();
    let err = ledger
        .change_member(change(mine[3], MemberAction::Close, "ops:li", "asked to"))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::MemberHasMoney(_)), "{err:?}");
    clock.advance_ms(60_000);
    let returned = ledger.expire_red_packets().await.unwrap();
    assert_eq!(returned.len(), 1);
    let rest = ledger
        .account(mine[3], AccountType::Balance)
        .await
        .unwrap()
        .unwrap()
        .balance;
    let out = PostRequest::new(TxnId(231), "transfer")
        .member("payer", mine[3])
        .member("payee", mine[0])
        .amount("amount", rest);
    ledger.post(out).await.unwrap();
    ledger
        .change_member(change(mine[3], MemberAction::Close, "ops:li", "asked to"))
        .await
        .unwrap();
    let closed = ledger
        .account(mine[3], AccountType::Balance)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.status, AccountStatus::Closed);
    let back = PostRequest::new(TxnId(225), "transfer")
        .member("payer", mine[0])
        .member("payee", mine[3])
        .amount("amount", yuan(1_00));
    let err = ledger.post(back).await.unwrap_err();
    assert!(matches!(err, LedgerError::MemberClosed(_)), "{err:?}");
    let err = ledger
        .change_member(change(mine[3], MemberAction::Unfreeze, "ops:li", "oops"))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::MemberClosed(_)), "{err:?}");

    // All of it survives a restart.
    ledger.engine().shutdown().await.unwrap();
    drop(ledger);
    let ledger = Ledger::open_default(config).await.unwrap();
    assert_eq!(ledger.member_status(mine[1]), MemberStatus::Active);
    assert_eq!(ledger.member_status(mine[3]), MemberStatus::Closed);
    assert_eq!(
        ledger.member(mine[2]).unwrap().level,
        MemberLevel("basic".into())
    );
    let history = ledger.member_history(mine[1]).await.unwrap();
    let said: Vec<_> = history
        .iter()
        .map(|e| (e.seq, e.action.clone(), e.by.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(
        said,
        vec![
            (0, MemberAction::Freeze, "ops:li", "court order 17"),
            (1, MemberAction::Unfreeze, "ops:wang", "order lifted"),
        ]
    );
    assert!(history[0].at < history[1].at);
    let levels = ledger.member_history(mine[2]).await.unwrap();
    assert_eq!(levels[0].level_before, MemberLevel("verified".into()));
    let err = ledger.post(pay(226, mine[3], 1_00)).await.unwrap_err();
    assert!(matches!(err, LedgerError::MemberClosed(_)), "{err:?}");
    let err = ledger.open_member(sixth).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::TooManyMembersForPerson { .. }),
        "{err:?}"
    );
    assert!(ledger.engine().audit().await.unwrap().ok());
}

#[tokio::test]
async fn receive_only_and_pay_only_members_through_the_ledger_with_who_and_why() {
    let w = world().await;
    w.ledger.verify_member(w.carol).await.unwrap();
    w.top_up(1, w.alice, 100_00).await;
    w.top_up(2, w.bob, 100_00).await;
    let transfer = |id: u128, from: AccountNo, to: AccountNo| {
        PostRequest::new(TxnId(id), "transfer")
            .member("payer", from)
            .member("payee", to)
            .amount("amount", yuan(1_00))
    };
    // Alice receive-only (只收不付): she cannot pay, she can receive.
    let event = w
        .account_status(w.alice, AccountStatus::ReceiveOnly)
        .await
        .unwrap();
    assert_eq!(event.by, "risk-desk");
    let err = w
        .ledger
        .post(transfer(3, w.alice, w.bob))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::Rejected(Reject::AccountReceiveOnly { .. })
        ),
        "{err:?}"
    );
    let err = w.pay(4, 1_00, 0).await.unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::Rejected(Reject::AccountReceiveOnly { .. })
        ),
        "{err:?}"
    );
    w.ledger.post(transfer(5, w.bob, w.alice)).await.unwrap();
    assert_eq!(w.balance(w.alice).await, yuan(101_00));
    // Bob pay-only (只付不收): he cannot receive, he can pay.
    w.account_status(w.bob, AccountStatus::PayOnly)
        .await
        .unwrap();
    w.top_up(60, w.carol, 10_00).await;
    let err = w
        .ledger
        .post(transfer(6, w.carol, w.bob))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::AccountPayOnly { .. })),
        "{err:?}"
    );
    let top_up = PostRequest::new(TxnId(7), "top_up")
        .member("member", w.bob)
        .channel("channel", "icbc")
        .amount("amount", yuan(1_00));
    let err = w.ledger.post(top_up).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::AccountPayOnly { .. })),
        "{err:?}"
    );
    // Paying out while pay-only goes through; receive-only Alice receives it.
    w.ledger.post(transfer(8, w.bob, w.alice)).await.unwrap();
    assert_eq!(
        (w.balance(w.alice).await, w.balance(w.bob).await),
        (yuan(102_00), yuan(98_00))
    );
    // Bad changes: typed errors, nothing changed and nothing recorded.
    let before = w.ledger.member_history(w.bob).await.unwrap().len();
    let err = w
        .account_status(w.bob, AccountStatus::PayOnly)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::MemberUnchanged { .. }),
        "{err:?}"
    );
    let err = w
        .account_status(w.bob, AccountStatus::Closed)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::AccountStatusNotAllowed(AccountStatus::Closed)
        ),
        "{err:?}"
    );
    let blank = MemberChange {
        number: w.bob,
        action: MemberAction::AccountStatus {
            account: AccountType::Balance,
            status: AccountStatus::Active,
        },
        by: " ".into(),
        reason: "no one said".into(),
    };
    let err = w.ledger.change_member(blank).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::MemberChangeNote { .. }),
        "{err:?}"
    );
    let none = MemberChange {
        number: w.bob,
        action: MemberAction::AccountStatus {
            account: AccountType::Wealth,
            status: AccountStatus::ReceiveOnly,
        },
        by: "risk-desk".into(),
        reason: "an account it does not have".into(),
    };
    let err = w.ledger.change_member(none).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Account(AccountError::NotFound(_))),
        "{err:?}"
    );
    assert_eq!(
        w.view(w.bob, AccountType::Balance).await.status,
        AccountStatus::PayOnly
    );
    assert_eq!(w.ledger.member_history(w.bob).await.unwrap().len(), before);
    // Back to active: Bob receives again. Every change is in the history,
    // with who and why, across a restart.
    w.account_status(w.bob, AccountStatus::Active)
        .await
        .unwrap();
    w.ledger.post(transfer(9, w.carol, w.bob)).await.unwrap();
    let World {
        ledger,
        clock,
        _dir,
        alice,
        bob,
        ..
    } = w;
    ledger.engine().shutdown().await.unwrap();
    drop(ledger);
    let config = Config::sled(_dir.path()).with_shards(2).with_clock(clock);
    let ledger = Ledger::open_default(config).await.unwrap();
    let history = ledger.member_history(bob).await.unwrap();
    let statuses: Vec<_> = history
        .iter()
        .map(|e| {
            (
                e.action.clone(),
                e.by.as_str(),
                e.reason.starts_with("case 17"),
            )
        })
        .collect();
    let set = |status| MemberAction::AccountStatus {
        account: AccountType::Balance,
        status,
    };
    assert_eq!(
        statuses,
        vec![
            (set(AccountStatus::PayOnly), "risk-desk", true),
            (set(AccountStatus::Active), "risk-desk", true),
        ]
    );
    let alice_view = ledger
        .account(alice, AccountType::Balance)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice_view.status, AccountStatus::ReceiveOnly);
    assert!(ledger.engine().audit().await.unwrap().ok());
}

#[tokio::test]
async fn a_refund_to_a_closed_member_is_held_in_suspense_with_its_record() {
    let w = world().await;
    w.ledger.verify_member(w.carol).await.unwrap();
    w.top_up(1, w.alice, 50_00).await;
    let payment = w.pay(2, 30_00, 6).await.unwrap();
    // Alice empties her wallet and is closed for good.
    let out = PostRequest::new(TxnId(3), "transfer")
        .member("payer", w.alice)
        .member("payee", w.bob)
        .amount("amount", yuan(20_00));
    w.ledger.post(out).await.unwrap();
    w.ledger
        .change_member(MemberChange {
            number: w.alice,
            action: MemberAction::Close,
            by: "ops:li".into(),
            reason: "account closed at the customer's request".into(),
        })
        .await
        .unwrap();
    let suspense = Internal::Platform(PlatformAccount::Suspense);
    let pending_before = w.view(w.shop, AccountType::PendingSettlement).await.balance;
    // The merchant refunds part, then the rest: both go through, neither
    // reaches the closed wallet; both are held for Alice, with the record.
    let first = w.ledger.refund(payment.id, 0, yuan(10_00)).await.unwrap();
    let second = w.ledger.refund(payment.id, 1, yuan(19_00)).await.unwrap();
    let alice = w.view(w.alice, AccountType::Balance).await;
    assert_eq!(
        (alice.balance, alice.status),
        (yuan(0), AccountStatus::Closed)
    );
    assert_eq!(w.internal(suspense).await, yuan(29_00));
    assert_eq!(
        w.view(w.shop, AccountType::PendingSettlement).await.balance,
        pending_before - yuan(29_00)
    );
    let held = w.ledger.held_refunds().await.unwrap();
    let mut got: Vec<_> = held
        .iter()
        .map(|h| (h.refund, h.member, h.amount))
        .collect();
    got.sort();
    let mut want = vec![
        (first.id, w.alice, yuan(10_00)),
        (second.id, w.alice, yuan(19_00)),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(held.iter().all(|h| h.original == payment.id));
    // Retried: the same refund, nothing more held; over the original: refused.
    let again = w.ledger.refund(payment.id, 0, yuan(10_00)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(w.internal(suspense).await, yuan(29_00));
    assert_eq!(w.ledger.held_refunds().await.unwrap().len(), 2);
    let err = w
        .ledger
        .refund(payment.id, 2, yuan(1_01))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::RefundExceedsOriginal { .. }),
        "{err:?}"
    );
    // A refund to a member still open is credited as before.
    w.top_up(4, w.carol, 10_00).await;
    let to_carol = PostRequest::new(TxnId(5), "pay")
        .member("payer", w.carol)
        .member("merchant", w.shop)
        .amount("amount", yuan(5_00))
        .amount("fee", yuan(0));
    let paid = w.ledger.post(to_carol).await.unwrap();
    w.ledger.refund(paid.id, 0, yuan(5_00)).await.unwrap();
    assert_eq!(w.balance(w.carol).await, yuan(10_00));
    assert_eq!(w.ledger.held_refunds().await.unwrap().len(), 2);
    w.audit_ok().await;
}

/// Alice (with 10.00 non-withdrawable) pays the shop 20.00, sends Bob the
/// rest, and is closed for good.
async fn closed_after_a_payment_and_a_transfer(w: &World) -> (Posted, Posted) {
    w.top_up(1, w.alice, 40_00).await;
    w.simple(2, "card_refund", w.alice, 10_00).await.unwrap();
    let payment = w.pay(3, 20_00, 0).await.unwrap();
    let transfer = PostRequest::new(TxnId(4), "transfer")
        .member("payer", w.alice)
        .member("payee", w.bob)
        .amount("amount", yuan(30_00));
    let transfer = w.ledger.post(transfer).await.unwrap();
    assert_withdrawable(w, w.alice, 0, 0).await;
    w.ledger
        .change_member(MemberChange {
            number: w.alice,
            action: MemberAction::Close,
            by: "ops:li".into(),
            reason: "closed at the customer's request".into(),
        })
        .await
        .unwrap();
    (payment, transfer)
}

#[tokio::test]
async fn a_reversal_to_a_closed_member_is_held_in_suspense_with_its_record() {
    let w = world().await;
    let (_, transfer) = closed_after_a_payment_and_a_transfer(&w).await;
    let suspense = Internal::Platform(PlatformAccount::Suspense);
    let bob_before = w.balance(w.bob).await;
    // The reversal goes through; what would credit the closed wallet is
    // held for Alice, as a refund's is.
    let reversal = w.ledger.reverse(transfer.id).await.unwrap();
    assert_eq!(w.balance(w.bob).await, bob_before - yuan(30_00));
    let alice = w.view(w.alice, AccountType::Balance).await;
    assert_eq!(
        (alice.balance, alice.status),
        (yuan(0), AccountStatus::Closed)
    );
    assert_eq!(w.internal(suspense).await, yuan(30_00));
    let held = w.ledger.held_refunds().await.unwrap();
    let got: Vec<_> = held
        .iter()
        .map(|h| (h.refund, h.original, h.member, h.amount))
        .collect();
    assert_eq!(got, vec![(reversal.id, transfer.id, w.alice, yuan(30_00))]);
    // Once only: no second reversal, nothing more held.
    let err = w.ledger.reverse(transfer.id).await.unwrap_err();
    assert!(matches!(err, LedgerError::AlreadyReversed(_)), "{err:?}");
    assert_eq!(w.internal(suspense).await, yuan(30_00));
    assert_eq!(w.ledger.held_refunds().await.unwrap().len(), 1);
    w.audit_ok().await;
}

fn payout(held: TxnId, member: AccountNo, to: PayoutTo) -> PayOutHeld {
    PayOutHeld {
        held,
        member,
        to,
        by: "ops:wang".into(),
        reason: "ticket 88: back to the customer".into(),
    }
}

#[tokio::test]
async fn held_money_is_paid_out_once_by_an_operator_with_who_and_why() {
    let w = world().await;
    let (payment, transfer) = closed_after_a_payment_and_a_transfer(&w).await;
    let reversal = w.ledger.reverse(transfer.id).await.unwrap();
    // The payment took the 10.00 non-withdrawable first; its refund is
    // held with that part still non-withdrawable.
    let refund = w.ledger.refund(payment.id, 0, yuan(20_00)).await.unwrap();
    let suspense = Internal::Platform(PlatformAccount::Suspense);
    assert_eq!(w.internal(suspense).await, yuan(50_00));
    let new_wallet = w
        .ledger
        .open_member(member(
            5,
            MemberKind::PersonalUser,
            "Alice",
            ALICE_ID,
            "verified",
            true,
        ))
        .await
        .unwrap()
        .number;
    let payable = icbc(ChannelAccount::Payable);
    let payable_before = w.internal(payable).await;

    // Bad requests: a typed error, nothing posted, nothing recorded.
    let bad = [
        PayOutHeld {
            by: " ".into(),
            ..payout(reversal.id, w.alice, PayoutTo::Member(new_wallet))
        },
        PayOutHeld {
            reason: "x".repeat(MEMBER_NOTE_MAX + 1),
            ..payout(reversal.id, w.alice, PayoutTo::Member(new_wallet))
        },
        payout(reversal.id, w.bob, PayoutTo::Member(new_wallet)),
        payout(TxnId(4), w.alice, PayoutTo::Member(new_wallet)),
        payout(reversal.id, w.alice, PayoutTo::Member(w.alice)),
        payout(reversal.id, w.alice, PayoutTo::Channel("nobank".into())),
        // Non-withdrawable money does not leave through a channel.
        payout(refund.id, w.alice, PayoutTo::Channel("icbc".into())),
    ];
    let mut errors = Vec::new();
    for request in bad {
        errors.push(w.ledger.pay_out_held(request).await.unwrap_err());
    }
    assert!(
        matches!(
            errors.as_slice(),
            [
                LedgerError::PayoutNote { .. },
                LedgerError::PayoutNote { .. },
                LedgerError::HeldNotFound { .. },
                LedgerError::HeldNotFound { .. },
                LedgerError::PayoutToClosed(_),
                LedgerError::UnknownChannel(_),
                LedgerError::HeldNonWithdrawable { .. },
            ]
        ),
        "{errors:?}"
    );
    if let LedgerError::HeldNonWithdrawable {
        non_withdrawable, ..
    } = &errors[6]
    {
        assert_eq!(*non_withdrawable, yuan(10_00));
    }
    assert_eq!(w.internal(suspense).await, yuan(50_00));
    assert!(w.ledger.held_payouts().await.unwrap().is_empty());
    assert_eq!(w.ledger.held_refunds().await.unwrap().len(), 2);

    // The reversal's 30.00 back to the card, the refund's 20.00 to the
    // new wallet, its 10.00 still non-withdrawable.
    let to_card = w
        .ledger
        .pay_out_held(payout(
            reversal.id,
            w.alice,
            PayoutTo::Channel("icbc".into()),
        ))
        .await
        .unwrap();
    let to_wallet = w
        .ledger
        .pay_out_held(payout(refund.id, w.alice, PayoutTo::Member(new_wallet)))
        .await
        .unwrap();
    assert_eq!(
        (to_card.amount, to_card.non_withdrawable),
        (yuan(30_00), yuan(0))
    );
    assert_eq!(
        (to_wallet.amount, to_wallet.non_withdrawable),
        (yuan(20_00), yuan(10_00))
    );
    assert_eq!(w.internal(payable).await, payable_before + yuan(30_00));
    assert_withdrawable(&w, new_wallet, 20_00, 10_00).await;
    assert_eq!(w.internal(suspense).await, yuan(0));
    assert!(w.ledger.held_refunds().await.unwrap().is_empty());

    // Once only, whatever the destination the second time.
    for again in [
        payout(refund.id, w.alice, PayoutTo::Member(new_wallet)),
        payout(reversal.id, w.alice, PayoutTo::Member(w.bob)),
    ] {
        let err = w.ledger.pay_out_held(again).await.unwrap_err();
        assert!(matches!(err, LedgerError::HeldPaidOut { .. }), "{err:?}");
    }
    assert_withdrawable(&w, new_wallet, 20_00, 10_00).await;
    assert_eq!(w.balance(w.bob).await, yuan(0));
    let mut notes: Vec<_> = w
        .ledger
        .held_payouts()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.held, p.to, p.by, p.reason.starts_with("ticket 88")))
        .collect();
    notes.sort_by_key(|n| n.0);
    let mut want = vec![
        (
            reversal.id,
            PayoutTo::Channel("icbc".into()),
            "ops:wang".to_string(),
            true,
        ),
        (
            refund.id,
            PayoutTo::Member(new_wallet),
            "ops:wang".to_string(),
            true,
        ),
    ];
    want.sort_by_key(|n| n.0);
    assert_eq!(notes, want);
    w.audit_ok().await;
}

/// An answer as a comparable text: the posting (id, duplicate, legs) or
/// the error.
fn answer_text(answer: &Result<Posted, LedgerError>) -> String {
    match answer {
        Ok(p) => format!("ok {:?} dup={} {:?}", p.id, p.duplicate, p.legs),
        Err(e) => format!("err {e:?}"),
    }
}

#[tokio::test]
async fn refund_many_answers_each_refund_as_one_call_each_would() {
    let requests = vec![
        Refund {
            original: TxnId(2),
            seq: 0,
            amount: yuan(30_00),
        },
        Refund {
            original: TxnId(3),
            seq: 0,
            amount: yuan(50_00),
        },
        // The next refund of 2, in the same call: it sees refund 0.
        Refund {
            original: TxnId(2),
            seq: 1,
            amount: yuan(20_00),
        },
        // Refund 0 of 2 again: the first answer.
        Refund {
            original: TxnId(2),
            seq: 0,
            amount: yuan(30_00),
        },
        Refund {
            original: TxnId(9),
            seq: 0,
            amount: yuan(1_00),
        },
        Refund {
            original: TxnId(4),
            seq: 0,
            amount: yuan(20_01),
        },
        // 30 + 20 + 60 > 100.
        Refund {
            original: TxnId(2),
            seq: 2,
            amount: yuan(60_00),
        },
        Refund {
            original: TxnId(4),
            seq: 0,
            amount: yuan(-1),
        },
        Refund {
            original: TxnId(4),
            seq: 3,
            amount: yuan(1_00),
        },
        Refund {
            original: TxnId(4),
            seq: 0,
            amount: yuan(20_00),
        },
    ];
    let mut answers = Vec::new();
    let mut worlds = Vec::new();
    for batched in [true, false] {
        let w = world().await;
        w.top_up(1, w.alice, 500_00).await;
        w.pay(2, 100_00, 60).await.unwrap();
        w.pay(3, 50_00, 0).await.unwrap();
        w.pay(4, 20_00, 0).await.unwrap();
        let got = if batched {
            w.ledger.refund_many(requests.clone()).await.unwrap()
        } else {
            let mut got = Vec::new();
            for r in &requests {
                got.push(w.ledger.refund(r.original, r.seq, r.amount).await);
            }
            got
        };
        answers.push(got.iter().map(answer_text).collect::<Vec<_>>());
        worlds.push(w);
    }
    assert_eq!(answers[0], answers[1]);
    let kinds: Vec<&str> = answers[0]
        .iter()
        .map(|a| a.split([' ', '(', '{']).nth(1).unwrap_or(""))
        .collect();
    let (ok, refused) = ("TxnId", "RefundExceedsOriginal");
    assert_eq!(
        kinds,
        [
            ok,
            ok,
            ok,
            ok,
            "OriginalNotFound",
            refused,
            refused,
            "AmountNotPositive",
            "RefundSeqGap",
            ok
        ]
    );
    assert!(answers[0][3].contains("dup=true"), "{}", answers[0][3]);
    for w in &worlds {
        w.audit_ok().await;
    }
    for who in [worlds[0].alice, worlds[0].shop] {
        for t in [AccountType::Balance, AccountType::PendingSettlement] {
            let a = worlds[0]
                .ledger
                .account(who, t)
                .await
                .unwrap()
                .map(|v| v.balance);
            let b = worlds[1]
                .ledger
                .account(who, t)
                .await
                .unwrap()
                .map(|v| v.balance);
            assert_eq!(a, b, "{who:?} {t:?}");
        }
    }
    assert_eq!(
        worlds[0].balance(worlds[0].alice).await,
        // The fee is the merchant's: Alice paid 170 and got 120 back.
        yuan(500_00 - 100_00 - 50_00 - 20_00 + 30_00 + 50_00 + 20_00 + 20_00)
    );
    let too_many = vec![requests[0].clone(); SUBMIT_TRANSACTIONS_MAX + 1];
    assert!(matches!(
        worlds[0].ledger.refund_many(too_many).await,
        Err(LedgerError::Engine(SubmitError::BatchTooLarge { .. }))
    ));
}

#[tokio::test]
async fn finish_many_captures_and_releases_as_one_call_each_would() {
    let requests = vec![
        Finish::Capture {
            id: TxnId(10),
            pending: TxnId(2),
            amount: Some(yuan(45_00)),
        },
        Finish::Release {
            id: TxnId(11),
            pending: TxnId(3),
        },
        Finish::Capture {
            id: TxnId(12),
            pending: TxnId(4),
            amount: None,
        },
        Finish::Capture {
            id: TxnId(13),
            pending: TxnId(99),
            amount: None,
        },
        // The same release again, then a capture of what it released.
        Finish::Release {
            id: TxnId(11),
            pending: TxnId(3),
        },
        Finish::Capture {
            id: TxnId(14),
            pending: TxnId(3),
            amount: None,
        },
        Finish::Capture {
            id: TxnId(15),
            pending: TxnId(5),
            amount: Some(yuan(30_01)),
        },
        Finish::Capture {
            id: TxnId(16),
            pending: TxnId(1),
            amount: None,
        },
    ];
    let mut answers = Vec::new();
    let mut worlds = Vec::new();
    for batched in [true, false] {
        let w = world().await;
        w.top_up(1, w.alice, 200_00).await;
        for (id, cents) in [(2, 50_00), (3, 20_00), (4, 10_00), (5, 30_00)] {
            let hold = PostRequest::new(TxnId(id), "hold")
                .member("payer", w.alice)
                .member("merchant", w.shop)
                .amount("amount", yuan(cents));
            w.ledger.post(hold).await.unwrap();
        }
        let got = if batched {
            w.ledger.finish_many(requests.clone()).await.unwrap()
        } else {
            let mut got = Vec::new();
            for r in &requests {
                got.push(match *r {
                    Finish::Capture {
                        id,
                        pending,
                        amount,
                    } => w.ledger.capture(id, pending, amount).await,
                    Finish::Release { id, pending } => w.ledger.release(id, pending).await,
                });
            }
            got
        };
        answers.push(got.iter().map(answer_text).collect::<Vec<_>>());
        worlds.push(w);
    }
    assert_eq!(answers[0], answers[1]);
    let oks: Vec<bool> = answers[0].iter().map(|a| a.starts_with("ok")).collect();
    assert_eq!(oks, [true, true, true, false, true, false, false, false]);
    assert!(answers[0][4].contains("dup=true"), "{}", answers[0][4]);
    for w in &worlds {
        w.audit_ok().await;
        let a = w.view(w.alice, AccountType::Balance).await;
        // 200 − 45 − 10 captured; 30 still reserved.
        assert_eq!((a.balance, a.reserved), (yuan(145_00), yuan(30_00)));
    }
}
