//! The business surface: `tally_business::Ledger` with the shipped rules,
//! on one in-memory world of members (verified, unverified, frozen, closed,
//! a person at its member limit), merchants with and without marketing
//! money, a payment, a reversed transfer, a reservation, red packets
//! (open, fully claimed, expired) and coupon batches (valid, expired, not
//! yet valid, another merchant's, unfunded).
//!
//! Each case states the exact `LedgerError` (compared by its `Debug` form,
//! every field included). The runner checks that nothing changed — the
//! engine's audit (balances, details, committed count, state digest), every
//! member account (balance, parts, version), every
//! metadata record (members, red packets, coupons), every red packet and
//! coupon batch as the ledger shows it — that the same request again gets
//! the same refusal, and, for a request carrying its own transaction id,
//! that the id is unused unless the engine recorded the refusal
//! (`LedgerError::Rejected`: the id then keeps that answer).

use crate::Failures;
use rust_decimal::Decimal;
use std::str::FromStr;
use std::sync::Arc;
use tally_business::*;
use tally_engine::*;

const START: Timestamp = Timestamp(1_767_225_600_000_000_000); // 2026-01-01T00:00:00Z
const DAY_NS: u64 = 86_400_000_000_000;

fn yuan(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// An 18-digit ID card number with a valid check digit.
fn id_card(seq: u32) -> String {
    let body = format!("110105199001{:02}{:03}", 1 + seq / 1000 % 28, seq % 1000);
    format!("{body}{}", check_digit(&body))
}

fn check_digit(body: &str) -> char {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .chars()
        .zip(W)
        .map(|(c, w)| c.to_digit(10).unwrap_or(0) * w)
        .sum();
    b"10X98765432"[(sum % 11) as usize] as char
}

// Ids the world uses.
const PAY: u128 = 10;
const REFUSED: u128 = 11;
const REVERSED: u128 = 12;
const HOLD: u128 = 13;
const TOP_UP_P0: u128 = 1;
const RP_OPEN: u128 = 100;
const RP_DONE: u128 = 101;
const RP_EXPIRED: u128 = 102;
const RP_REFUSED: u128 = 103;
const BATCH: u128 = 200;
const BATCH_EXPIRED: u128 = 201;
const BATCH_FUTURE: u128 = 202;
const BATCH_OTHER: u128 = 203;
const BATCH_UNFUNDED: u128 = 204;

/// The business world the cases run against.
pub struct World {
    ledger: Ledger,
    rt: tokio::runtime::Runtime,
    /// Verified personal members; `people[0]` sends red packets.
    people: Vec<AccountNo>,
    unverified: AccountNo,
    /// A member at the "basic" level (per transaction 2,000.00).
    basic: AccountNo,
    frozen: AccountNo,
    closed: AccountNo,
    /// Has money: cannot be closed.
    shop: AccountNo,
    other_shop: AccountNo,
    /// A merchant with nothing in its marketing account.
    poor_shop: AccountNo,
    /// The coupon `people[1]` redeemed with `PAY`'s sibling payment.
    redeemed: CouponId,
    /// The person (ID card) at its member limit, and the next serial.
    crowded_id: String,
}

fn must<T, E: std::fmt::Debug>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("world: {what}: {e:?}"))
}

fn person(serial: u64, seq: u32, level: &str, verified: bool) -> OpenMember {
    OpenMember {
        serial,
        kind: MemberKind::PersonalUser,
        name: format!("person {serial}"),
        id_number: id_card(seq),
        legal: false,
        level: MemberLevel(level.into()),
        verified,
    }
}

fn merchant(serial: u64, seq: u32) -> OpenMember {
    OpenMember {
        kind: MemberKind::MerchantMicro,
        name: format!("shop {serial}"),
        level: MemberLevel("merchant".into()),
        ..person(serial, seq, "merchant", true)
    }
}

fn batch(id: u128, merchant: AccountNo, from: Timestamp, until: Timestamp) -> IssueCoupons {
    IssueCoupons {
        id: TxnId(id),
        merchant: merchant.to_string(),
        face_value: yuan(1_00),
        count: 10,
        valid_from: from,
        valid_until: until,
        per_member: Some(1),
        funding: CouponFunding::Merchant,
        on_refund: OnRefund::Restore,
    }
}

fn change(number: AccountNo, action: MemberAction) -> MemberChange {
    MemberChange {
        number,
        action,
        by: "operator 7".into(),
        reason: "bad-input corpus".into(),
    }
}

fn top_up(id: u128, who: AccountNo, cents: i64) -> PostRequest {
    PostRequest::new(TxnId(id), "top_up")
        .member("member", who)
        .channel("channel", "icbc")
        .amount("amount", yuan(cents))
}

fn transfer(id: u128, payer: AccountNo, payee: AccountNo, amount: Decimal) -> PostRequest {
    PostRequest::new(TxnId(id), "transfer")
        .member("payer", payer)
        .member("payee", payee)
        .amount("amount", amount)
}

fn pay(id: u128, payer: AccountNo, shop: AccountNo, amount: Decimal, fee: Decimal) -> PostRequest {
    PostRequest::new(TxnId(id), "pay")
        .member("payer", payer)
        .member("merchant", shop)
        .amount("amount", amount)
        .amount("fee", fee)
}

impl World {
    pub fn build() -> World {
        let rt = must(
            "runtime",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        );
        let clock = Arc::new(ManualClock::new(START));
        let config = Config::memory().with_shards(2).with_clock(clock.clone());
        let ledger = must("open", rt.block_on(Ledger::open_default(config)));
        let open = |m: OpenMember| must("member", rt.block_on(ledger.open_member(m))).number;
        let people: Vec<AccountNo> = (0..4)
            .map(|i| open(person(100 + i, i as u32, "verified", true)))
            .collect();
        let unverified = open(person(110, 10, "verified", false));
        let basic = open(person(111, 11, "basic", true));
        let frozen = open(person(112, 12, "verified", true));
        let closed = open(person(113, 13, "verified", true));
        let shop = open(merchant(120, 20));
        let other_shop = open(merchant(121, 21));
        let poor_shop = open(merchant(122, 22));
        let crowded_id = id_card(30);
        for serial in 130..135 {
            let mut m = person(serial, 30, "verified", true);
            m.id_number = crowded_id.clone();
            open(m);
        }
        let post = |r: PostRequest| {
            let posted = must("post", rt.block_on(ledger.post(r)));
            assert!(posted.timestamp.is_some(), "world: {posted:?}");
        };
        post(top_up(TOP_UP_P0, people[0], 1_000_00));
        post(top_up(2, people[1], 100_00));
        post(top_up(3, people[2], 100_00));
        post(top_up(4, people[3], 100_00));
        post(top_up(5, shop, 200_00));
        post(top_up(6, basic, 3_000_00));
        post(top_up(7, frozen, 10_00));
        post(
            PostRequest::new(TxnId(8), "marketing_fund")
                .member("merchant", shop)
                .amount("amount", yuan(100_00)),
        );
        post(pay(PAY, people[1], shop, yuan(10_00), yuan(10)));
        let refused =
            rt.block_on(ledger.post(transfer(REFUSED, people[2], people[3], yuan(1_000_00))));
        assert!(
            matches!(
                refused,
                Err(LedgerError::Rejected(Reject::InsufficientFunds { .. }))
            ),
            "world: {refused:?}"
        );
        post(transfer(REVERSED, people[3], people[2], yuan(1_00)));
        must("reverse", rt.block_on(ledger.reverse(TxnId(REVERSED))));
        post(
            PostRequest::new(TxnId(HOLD), "hold")
                .member("payer", people[1])
                .member("merchant", shop)
                .amount("amount", yuan(5_00)),
        );
        let send = |id: u128, cents: i64, count: u32, expiry_ms: Option<u64>| SendRedPacket {
            id: TxnId(id),
            sender: people[0].to_string(),
            total: yuan(cents),
            count,
            lucky: false,
            expiry_ms,
        };
        for request in [
            send(RP_OPEN, 3_00, 3, None),
            send(RP_DONE, 1_00, 1, None),
            send(RP_EXPIRED, 1_00, 2, Some(1)),
        ] {
            must("send", rt.block_on(ledger.send_red_packet(request)));
        }
        let refused = rt.block_on(ledger.send_red_packet(send(RP_REFUSED, 5_000_00, 5, None)));
        assert!(
            matches!(
                refused,
                Err(LedgerError::Rejected(Reject::InsufficientFunds { .. }))
            ),
            "world: {refused:?}"
        );
        for packet in [RP_OPEN, RP_DONE] {
            let who = people[1].to_string();
            must(
                "claim",
                rt.block_on(ledger.claim_red_packet(TxnId(packet), &who)),
            );
        }
        let far = Timestamp(START.0 + 1_000 * DAY_NS);
        for request in [
            batch(BATCH, shop, START, far),
            batch(
                BATCH_EXPIRED,
                shop,
                Timestamp(START.0 - 2 * DAY_NS),
                Timestamp(START.0 - DAY_NS),
            ),
            batch(BATCH_FUTURE, shop, far, Timestamp(far.0 + DAY_NS)),
            batch(BATCH_OTHER, other_shop, START, far),
            batch(BATCH_UNFUNDED, poor_shop, START, far),
        ] {
            must("issue", rt.block_on(ledger.issue_coupons(request)));
        }
        let redeemed = CouponId {
            batch: TxnId(BATCH),
            serial: 0,
        };
        must(
            "redeem",
            rt.block_on(ledger.pay_with_coupon(PayWithCoupon {
                payer: people[1].to_string(),
                merchant: shop.to_string(),
                amount: yuan(10_00),
                fee: yuan(10),
                coupon: redeemed,
            })),
        );
        must(
            "freeze",
            rt.block_on(ledger.change_member(change(frozen, MemberAction::Freeze))),
        );
        must(
            "close",
            rt.block_on(ledger.change_member(change(closed, MemberAction::Close))),
        );
        // Past the expired red packet's deadline.
        clock.advance_ms(10);
        World {
            ledger,
            rt,
            people,
            unverified,
            basic,
            frozen,
            closed,
            shop,
            other_shop,
            poor_shop,
            redeemed,
            crowded_id,
        }
    }
}

/// One business operation.
#[derive(Clone, Debug)]
pub enum Op {
    Post(PostRequest),
    OpenMember(OpenMember),
    Verify(AccountNo),
    AddSub(AccountNo, AccountType),
    SetStatus(AccountNo, AccountType, AccountStatus),
    Change(MemberChange),
    Capture(TxnId, TxnId, Option<Decimal>),
    Release(TxnId, TxnId),
    Refund(TxnId, u32, Decimal),
    Reverse(TxnId),
    Send(SendRedPacket),
    Claim(TxnId, String),
    Issue(IssueCoupons),
    PayCoupon(PayWithCoupon),
    RefundCoupon(TxnId, CouponId),
    Alert(String, Decimal),
}

impl Op {
    /// The engine transaction id the request carries itself, if any.
    fn own_id(&self) -> Option<TxnId> {
        match self {
            Op::Post(r) => Some(r.id),
            Op::Capture(id, ..) | Op::Release(id, _) => Some(*id),
            Op::Send(s) => Some(s.id),
            _ => None,
        }
    }
}

pub struct Case {
    name: String,
    op: Op,
    expected: LedgerError,
    /// A red packet's send refused by the engine leaves its record (the
    /// id's answer: "its send was refused"); nothing else may.
    leaves_record: bool,
    /// The engine recorded the refusal as the answer of the request's own
    /// id (a refusal the sequencer or a shard decided).
    recorded: bool,
}

/// A case whose refusal the engine records under the request's own id.
fn recorded(mut c: Case) -> Case {
    c.recorded = true;
    c
}

fn case(name: &str, op: Op, expected: LedgerError) -> Case {
    Case {
        name: name.to_string(),
        op,
        expected,
        leaves_record: false,
        recorded: false,
    }
}

fn not_positive(txn: &str, field: &str, value: Decimal) -> LedgerError {
    LedgerError::AmountNotPositive {
        txn: txn.into(),
        field: field.into(),
        value,
    }
}

fn balance_id(number: AccountNo) -> AccountId {
    number.account_id(AccountType::Balance.code())
}

pub fn cases(w: &World) -> Vec<Case> {
    let mut cases = post_cases(w);
    cases.extend(member_cases(w));
    cases.extend(reverse_cases());
    cases.extend(red_packet_cases(w));
    cases.extend(coupon_cases(w));
    cases
}

/// A fresh id for each case's own request.
fn ids() -> impl FnMut() -> u128 {
    let mut n = 50_000u128;
    move || {
        n += 1;
        n
    }
}

fn post_cases(w: &World) -> Vec<Case> {
    let mut next = ids();
    let [p0, p1, p2, p3] = [w.people[0], w.people[1], w.people[2], w.people[3]];
    let unknown = must("number", AccountNo::new(AccountClass::Personal, 999_999));
    vec![
        case(
            "an unknown transaction code",
            Op::Post(PostRequest::new(TxnId(next()), "teleport").amount("amount", yuan(1))),
            LedgerError::UnknownTxnCode("teleport".into()),
        ),
        case(
            "a missing amount",
            Op::Post(
                PostRequest::new(TxnId(next()), "top_up")
                    .member("member", p1)
                    .channel("channel", "icbc"),
            ),
            LedgerError::MissingField {
                txn: "top_up".into(),
                field: "amount".into(),
            },
        ),
        case(
            "a missing member",
            Op::Post(
                PostRequest::new(TxnId(next()), "transfer")
                    .member("payer", p1)
                    .amount("amount", yuan(1)),
            ),
            LedgerError::MissingField {
                txn: "transfer".into(),
                field: "payee".into(),
            },
        ),
        case(
            "a field the rule does not have",
            Op::Post(top_up(next(), p1, 1_00).amount("tip", yuan(1))),
            LedgerError::UnexpectedField {
                txn: "top_up".into(),
                field: "tip".into(),
            },
        ),
        case(
            "a channel field given a member",
            Op::Post(
                PostRequest::new(TxnId(next()), "top_up")
                    .member("member", p1)
                    .member("channel", p2)
                    .amount("amount", yuan(1)),
            ),
            LedgerError::FieldType {
                txn: "top_up".into(),
                field: "channel".into(),
                expected: FieldType::Channel,
            },
        ),
        case(
            "zero amount",
            Op::Post(transfer(next(), p1, p2, Decimal::ZERO)),
            not_positive("transfer", "amount", Decimal::ZERO),
        ),
        case(
            "negative amount",
            Op::Post(transfer(next(), p1, p2, yuan(-1_00))),
            not_positive("transfer", "amount", yuan(-1_00)),
        ),
        case(
            "a negative fee",
            Op::Post(pay(next(), p1, w.shop, yuan(1_00), yuan(-1))),
            not_positive("pay", "fee", yuan(-1)),
        ),
        case(
            "three decimal places",
            Op::Post(transfer(next(), p1, p2, dec("0.001"))),
            LedgerError::Rejected(Reject::TooManyDecimals {
                leg: 0,
                amount: dec("0.001"),
                currency: Currency::CNY,
                scale: 2,
            }),
        ),
        case(
            "an amount beyond the range",
            Op::Post(top_up(next(), p1, 0).amount("amount", Decimal::MAX)),
            LedgerError::Rejected(Reject::AmountOverflow {
                leg: 0,
                amount: Decimal::MAX,
            }),
        ),
        case(
            "a fee above the amount",
            Op::Post(pay(next(), p1, w.shop, yuan(1_00), yuan(2_00))),
            LedgerError::NegativeLeg {
                txn: "pay".into(),
                leg: 1,
                value: yuan(-1_00),
            },
        ),
        case(
            "a member never opened",
            Op::Post(transfer(next(), p1, unknown, yuan(1))),
            LedgerError::UnknownMember(unknown),
        ),
        case(
            "an account number that is not one",
            Op::Post(transfer(next(), p1, p2, yuan(1)).member("payee", "abc")),
            LedgerError::InvalidAccountNo(
                AccountNo::parse("abc")
                    .err()
                    .unwrap_or_else(|| panic!("abc parsed")),
            ),
        ),
        case(
            "an unverified payer",
            Op::Post(transfer(next(), w.unverified, p1, yuan(1))),
            LedgerError::MemberNotVerified(w.unverified),
        ),
        case(
            "a frozen payer",
            Op::Post(transfer(next(), w.frozen, p1, yuan(1))),
            LedgerError::MemberFrozen(w.frozen),
        ),
        case(
            "a closed payee",
            Op::Post(transfer(next(), p1, w.closed, yuan(1))),
            LedgerError::MemberClosed(w.closed),
        ),
        case(
            "an unknown channel",
            Op::Post(
                PostRequest::new(TxnId(next()), "top_up")
                    .member("member", p1)
                    .channel("channel", "hsbc")
                    .amount("amount", yuan(1)),
            ),
            LedgerError::UnknownChannel("hsbc".into()),
        ),
        case(
            "above the level's per-transaction limit",
            Op::Post(transfer(next(), w.basic, p1, yuan(2_000_01))),
            LedgerError::PerTxnLimitExceeded {
                member: w.basic,
                limit: dec("2000.00"),
                requested: yuan(2_000_01),
            },
        ),
        recorded(case(
            "more than the payer has",
            Op::Post(transfer(next(), p2, p3, yuan(100_01))),
            LedgerError::Rejected(Reject::InsufficientFunds {
                leg: 0,
                account: balance_id(p2),
                available: yuan(100_00),
                requested: yuan(100_01),
            }),
        )),
        case(
            "a used id with other content",
            Op::Post(transfer(REVERSED, p3, p2, yuan(2_00))),
            LedgerError::Rejected(Reject::IdConflict),
        ),
        case(
            "a sender's own transfer to an unknown member number",
            Op::Post(transfer(next(), p0, unknown, yuan(1))),
            LedgerError::UnknownMember(unknown),
        ),
    ]
}

fn member_cases(w: &World) -> Vec<Case> {
    let p1 = w.people[1];
    let mut bad_check = id_card(40);
    let last = bad_check.pop().unwrap_or('0');
    bad_check.push(if last == '1' { '2' } else { '1' });
    let mut other_name = person(101, 1, "verified", true);
    other_name.name = "someone else".into();
    let mut crowded = person(135, 30, "verified", true);
    crowded.id_number = w.crowded_id.clone();
    let with_id = |serial: u64, id: &str| OpenMember {
        id_number: id.into(),
        ..person(serial, 0, "verified", true)
    };
    vec![
        case(
            "an ID card number of 5 characters",
            Op::OpenMember(with_id(140, "12345")),
            LedgerError::InvalidId(IdError::IdCardLength(5)),
        ),
        case(
            "an ID card number with a letter inside",
            Op::OpenMember(with_id(141, "11010519900101A011")),
            LedgerError::InvalidId(IdError::IdCardNotDigit { position: 14 }),
        ),
        case(
            "an ID card number with a bad check character",
            Op::OpenMember(with_id(142, &bad_check)),
            LedgerError::InvalidId(IdError::IdCardCheck {
                found: bad_check.chars().last().unwrap_or('?'),
                expected: last,
            }),
        ),
        case(
            "an ID card number born on 30 February",
            Op::OpenMember(with_id(143, &{
                let body = "11010519900230001";
                format!("{body}{}", check_digit(body))
            })),
            LedgerError::InvalidId(IdError::IdCardBirthDate("19900230".into())),
        ),
        case(
            "a credit code of 3 characters",
            Op::OpenMember(OpenMember {
                kind: MemberKind::MerchantCompany,
                legal: true,
                ..with_id(144, "abc")
            }),
            LedgerError::InvalidId(IdError::CreditCodeLength(3)),
        ),
        case(
            "a company merchant with an ID card",
            Op::OpenMember(OpenMember {
                kind: MemberKind::MerchantCompany,
                ..person(145, 45, "merchant", true)
            }),
            LedgerError::PartyMismatch {
                kind: MemberKind::MerchantCompany,
            },
        ),
        case(
            "an unknown level",
            Op::OpenMember(person(146, 46, "platinum", true)),
            LedgerError::UnknownLevel(MemberLevel("platinum".into())),
        ),
        case(
            "a used serial with another name",
            Op::OpenMember(other_name),
            LedgerError::MemberConflict(p1),
        ),
        case(
            "a sixth member of one person",
            Op::OpenMember(crowded),
            LedgerError::TooManyMembersForPerson { max: 5 },
        ),
        case(
            "verify a member never opened",
            Op::Verify(must(
                "number",
                AccountNo::new(AccountClass::Personal, 888_888),
            )),
            LedgerError::UnknownMember(must(
                "number",
                AccountNo::new(AccountClass::Personal, 888_888),
            )),
        ),
        case(
            "a marketing account for a person",
            Op::AddSub(p1, AccountType::Marketing),
            LedgerError::SubAccountNotAllowed {
                kind: MemberKind::PersonalUser,
                account: "marketing".into(),
            },
        ),
        case(
            "a sub-account of a member never opened",
            Op::AddSub(
                must("number", AccountNo::new(AccountClass::Personal, 777_777)),
                AccountType::Wealth,
            ),
            LedgerError::UnknownMember(must(
                "number",
                AccountNo::new(AccountClass::Personal, 777_777),
            )),
        ),
        case(
            "a status of a member never opened",
            Op::SetStatus(
                must("number", AccountNo::new(AccountClass::Personal, 666_666)),
                AccountType::Balance,
                AccountStatus::Frozen,
            ),
            LedgerError::UnknownMember(must(
                "number",
                AccountNo::new(AccountClass::Personal, 666_666),
            )),
        ),
        case(
            "close a member's account that holds money",
            // One account is never closed alone: a member is closed whole.
            Op::SetStatus(w.people[3], AccountType::Balance, AccountStatus::Closed),
            LedgerError::AccountStatusNotAllowed(AccountStatus::Closed),
        ),
        case(
            "close a member's account with money reserved",
            Op::SetStatus(p1, AccountType::Balance, AccountStatus::Closed),
            LedgerError::AccountStatusNotAllowed(AccountStatus::Closed),
        ),
        case(
            "a member change by nobody",
            Op::Change(MemberChange {
                by: "  ".into(),
                ..change(p1, MemberAction::Freeze)
            }),
            LedgerError::MemberChangeNote {
                field: "by".into(),
                max: MEMBER_NOTE_MAX,
            },
        ),
        case(
            "a member change with a reason too long",
            Op::Change(MemberChange {
                reason: "x".repeat(MEMBER_NOTE_MAX + 1),
                ..change(p1, MemberAction::Freeze)
            }),
            LedgerError::MemberChangeNote {
                field: "reason".into(),
                max: MEMBER_NOTE_MAX,
            },
        ),
        case(
            "unfreeze an active member",
            Op::Change(change(p1, MemberAction::Unfreeze)),
            LedgerError::MemberUnchanged {
                member: p1,
                action: "Unfreeze".into(),
            },
        ),
        case(
            "freeze a frozen member",
            Op::Change(change(w.frozen, MemberAction::Freeze)),
            LedgerError::MemberUnchanged {
                member: w.frozen,
                action: "Freeze".into(),
            },
        ),
        case(
            "close a member that holds money",
            Op::Change(change(p1, MemberAction::Close)),
            LedgerError::MemberHasMoney(p1),
        ),
        case(
            "reopen a closed member",
            Op::Change(change(w.closed, MemberAction::Unfreeze)),
            LedgerError::MemberClosed(w.closed),
        ),
        case(
            "a level that does not exist",
            Op::Change(change(p1, MemberAction::Level(MemberLevel("gold".into())))),
            LedgerError::UnknownLevel(MemberLevel("gold".into())),
        ),
    ]
}

fn reverse_cases() -> Vec<Case> {
    let mut next = ids();
    for _ in 0..100 {
        next();
    }
    vec![
        case(
            "reverse a transaction never posted",
            Op::Reverse(TxnId(9_999)),
            LedgerError::OriginalNotFound(TxnId(9_999)),
        ),
        case(
            "reverse a refused transaction",
            Op::Reverse(TxnId(REFUSED)),
            LedgerError::OriginalNotCommitted(TxnId(REFUSED)),
        ),
        case(
            "reverse twice",
            Op::Reverse(TxnId(REVERSED)),
            LedgerError::AlreadyReversed(TxnId(REVERSED)),
        ),
        case(
            "refund a transaction never posted",
            Op::Refund(TxnId(9_998), 0, yuan(1)),
            LedgerError::OriginalNotFound(TxnId(9_998)),
        ),
        case(
            "refund a refused transaction",
            Op::Refund(TxnId(REFUSED), 0, yuan(1)),
            LedgerError::OriginalNotCommitted(TxnId(REFUSED)),
        ),
        case(
            "refund a top-up (its rule has no refund)",
            Op::Refund(TxnId(TOP_UP_P0), 0, yuan(1)),
            LedgerError::NotRefundable {
                original: TxnId(TOP_UP_P0),
                reason: "its rule has no refund".into(),
            },
        ),
        case(
            "refund nothing",
            Op::Refund(TxnId(PAY), 0, Decimal::ZERO),
            not_positive("refund", "amount", Decimal::ZERO),
        ),
        case(
            "refund a negative amount",
            Op::Refund(TxnId(PAY), 0, yuan(-1)),
            not_positive("refund", "amount", yuan(-1)),
        ),
        case(
            "refund more than was paid",
            Op::Refund(TxnId(PAY), 0, yuan(10_01)),
            LedgerError::RefundExceedsOriginal {
                original: TxnId(PAY),
                amount: yuan(10_00),
                refunded: Decimal::ZERO,
                requested: yuan(10_01),
            },
        ),
        case(
            "refund number 3 before number 0",
            Op::Refund(TxnId(PAY), 3, yuan(1)),
            LedgerError::RefundSeqGap {
                original: TxnId(PAY),
                seq: 3,
                next: 0,
            },
        ),
        case(
            "capture a reservation never made",
            Op::Capture(TxnId(next()), TxnId(9_997), None),
            LedgerError::OriginalNotFound(TxnId(9_997)),
        ),
        case(
            "release a reservation never made",
            Op::Release(TxnId(next()), TxnId(9_996)),
            LedgerError::OriginalNotFound(TxnId(9_996)),
        ),
        {
            let id = next();
            // Refused with the engine's own reason and the amounts (it was
            // `Unbalanced`: the restated debit was clamped, the credit not).
            case(
                "capture more than reserved",
                Op::Capture(TxnId(id), TxnId(HOLD), Some(yuan(5_01))),
                LedgerError::Rejected(Reject::PostExceedsPending {
                    leg: 0,
                    reserved: yuan(5_00),
                    requested: yuan(5_01),
                }),
            )
        },
        {
            let id = next();
            case(
                "capture nothing",
                Op::Capture(TxnId(id), TxnId(HOLD), Some(Decimal::ZERO)),
                LedgerError::Rejected(Reject::AmountNotPositive {
                    leg: 0,
                    amount: Decimal::ZERO,
                }),
            )
        },
        recorded(case(
            "capture a posted payment",
            Op::Capture(TxnId(next()), TxnId(PAY), None),
            LedgerError::Rejected(Reject::PendingNotFound),
        )),
    ]
}

fn red_packet_cases(w: &World) -> Vec<Case> {
    let mut next = ids();
    for _ in 0..200 {
        next();
    }
    let sender = w.people[0];
    let send = |id: u128, total: Decimal, count: u32| SendRedPacket {
        id: TxnId(id),
        sender: sender.to_string(),
        total,
        count,
        lucky: true,
        expiry_ms: None,
    };
    let claim = |packet: u128, who: &str| Op::Claim(TxnId(packet), who.to_string());
    let p1 = w.people[1].to_string();
    let p2 = w.people[2].to_string();
    let unknown = must("number", AccountNo::new(AccountClass::Personal, 555_555));
    let mut refused = case(
        "a red packet above the sender's balance",
        Op::Send(send(next(), yuan(2_000_00), 10)),
        LedgerError::Rejected(Reject::InsufficientFunds {
            leg: 0,
            account: balance_id(sender),
            available: yuan(995_00),
            requested: yuan(2_000_00),
        }),
    );
    refused.leaves_record = true;
    refused.recorded = true;
    vec![
        case(
            "a red packet of no packets",
            Op::Send(send(next(), yuan(1_00), 0)),
            LedgerError::RedPacketCount { count: 0, max: 200 },
        ),
        case(
            "a red packet of 201 packets",
            Op::Send(send(next(), yuan(100_00), 201)),
            LedgerError::RedPacketCount {
                count: 201,
                max: 200,
            },
        ),
        case(
            "a red packet of u32::MAX packets",
            Op::Send(send(next(), yuan(100_00), u32::MAX)),
            LedgerError::RedPacketCount {
                count: u32::MAX,
                max: 200,
            },
        ),
        case(
            "a red packet of nothing",
            Op::Send(send(next(), Decimal::ZERO, 1)),
            not_positive("red_packet", "total", Decimal::ZERO),
        ),
        case(
            "a red packet of a negative total",
            Op::Send(send(next(), yuan(-5_00), 5)),
            not_positive("red_packet", "total", yuan(-5_00)),
        ),
        case(
            "a total below one fen per packet",
            Op::Send(send(next(), yuan(9), 10)),
            LedgerError::RedPacketTooSmall {
                total: yuan(9),
                count: 10,
                smallest: yuan(1),
            },
        ),
        case(
            "a total of a tenth of a fen",
            Op::Send(send(next(), dec("0.001"), 1)),
            LedgerError::InvalidAmount(dec("0.001")),
        ),
        case(
            "a red packet that expires at once",
            Op::Send(SendRedPacket {
                expiry_ms: Some(0),
                ..send(next(), yuan(1_00), 1)
            }),
            not_positive("red_packet", "expiry_ms", Decimal::ZERO),
        ),
        case(
            "a red packet from an unverified member",
            Op::Send(SendRedPacket {
                sender: w.unverified.to_string(),
                ..send(next(), yuan(1_00), 1)
            }),
            LedgerError::MemberNotVerified(w.unverified),
        ),
        case(
            "a red packet from a number that is not one",
            Op::Send(SendRedPacket {
                sender: "42".into(),
                ..send(next(), yuan(1_00), 1)
            }),
            LedgerError::InvalidAccountNo(
                AccountNo::parse("42")
                    .err()
                    .unwrap_or_else(|| panic!("42 parsed")),
            ),
        ),
        case(
            "a used red packet id with another total",
            Op::Send(SendRedPacket {
                lucky: false,
                ..send(RP_OPEN, yuan(4_00), 3)
            }),
            LedgerError::RedPacketConflict(TxnId(RP_OPEN)),
        ),
        refused,
        case(
            "claim a red packet never sent",
            claim(9_999, &p2),
            LedgerError::UnknownRedPacket(TxnId(9_999)),
        ),
        case(
            "claim a red packet whose send was refused",
            claim(RP_REFUSED, &p2),
            LedgerError::UnknownRedPacket(TxnId(RP_REFUSED)),
        ),
        case(
            "claim one's own red packet",
            claim(RP_OPEN, &sender.to_string()),
            LedgerError::OwnRedPacket(TxnId(RP_OPEN)),
        ),
        case(
            "claim twice",
            claim(RP_OPEN, &p1),
            LedgerError::AlreadyClaimed {
                packet: TxnId(RP_OPEN),
                member: w.people[1],
            },
        ),
        case(
            "claim when every packet is claimed",
            claim(RP_DONE, &p2),
            LedgerError::AllClaimed(TxnId(RP_DONE)),
        ),
        case(
            "claim after the deadline",
            claim(RP_EXPIRED, &p2),
            LedgerError::RedPacketExpired(TxnId(RP_EXPIRED)),
        ),
        case(
            "claim by an unverified member",
            claim(RP_OPEN, &w.unverified.to_string()),
            LedgerError::MemberNotVerified(w.unverified),
        ),
        case(
            "claim by a member never opened",
            claim(RP_OPEN, &unknown.to_string()),
            LedgerError::UnknownMember(unknown),
        ),
        case(
            "claim by a frozen member",
            claim(RP_OPEN, &w.frozen.to_string()),
            LedgerError::MemberFrozen(w.frozen),
        ),
        case(
            "claim by a number that is not one",
            claim(RP_OPEN, "1e3"),
            LedgerError::InvalidAccountNo(
                AccountNo::parse("1e3")
                    .err()
                    .unwrap_or_else(|| panic!("1e3 parsed")),
            ),
        ),
    ]
}

fn coupon_cases(w: &World) -> Vec<Case> {
    let far = Timestamp(START.0 + 1_000 * DAY_NS);
    let issue = |id: u128| batch(id, w.shop, START, far);
    let coupon = |batch: u128, serial: u64| CouponId {
        batch: TxnId(batch),
        serial,
    };
    let pay = |payer: AccountNo, shop: AccountNo, coupon: CouponId| {
        Op::PayCoupon(PayWithCoupon {
            payer: payer.to_string(),
            merchant: shop.to_string(),
            amount: yuan(10_00),
            fee: yuan(10),
            coupon,
        })
    };
    let [p2, p3] = [w.people[2], w.people[3]];
    let unknown_shop = must("number", AccountNo::new(AccountClass::Merchant, 999_998));
    vec![
        case(
            "coupons of no value",
            Op::Issue(IssueCoupons {
                face_value: Decimal::ZERO,
                ..issue(300)
            }),
            not_positive("coupon", "face_value", Decimal::ZERO),
        ),
        case(
            "coupons of a tenth of a fen",
            Op::Issue(IssueCoupons {
                face_value: dec("0.001"),
                ..issue(301)
            }),
            LedgerError::InvalidAmount(dec("0.001")),
        ),
        case(
            "a batch of no coupons",
            Op::Issue(IssueCoupons {
                count: 0,
                ..issue(302)
            }),
            LedgerError::CouponCount {
                count: 0,
                max: COUPONS_PER_BATCH_MAX,
            },
        ),
        case(
            "a batch of one coupon too many",
            Op::Issue(IssueCoupons {
                count: COUPONS_PER_BATCH_MAX + 1,
                ..issue(303)
            }),
            LedgerError::CouponCount {
                count: COUPONS_PER_BATCH_MAX + 1,
                max: COUPONS_PER_BATCH_MAX,
            },
        ),
        case(
            "a validity that ends when it starts",
            Op::Issue(IssueCoupons {
                valid_until: START,
                ..issue(304)
            }),
            LedgerError::CouponWindow,
        ),
        case(
            "a platform share of 101 percent",
            Op::Issue(IssueCoupons {
                funding: CouponFunding::Split {
                    platform_percent: 101,
                },
                ..issue(305)
            }),
            LedgerError::CouponFundingSplit,
        ),
        case(
            "coupons issued by a person",
            Op::Issue(IssueCoupons {
                merchant: p2.to_string(),
                ..issue(306)
            }),
            LedgerError::NotAMerchant(p2),
        ),
        case(
            "a used batch id with another count",
            Op::Issue(IssueCoupons {
                count: 11,
                ..issue(BATCH)
            }),
            LedgerError::CouponBatchConflict(TxnId(BATCH)),
        ),
        case(
            "a coupon of a batch never issued",
            pay(p2, w.shop, coupon(9_999, 0)),
            LedgerError::UnknownCoupon(coupon(9_999, 0)),
        ),
        case(
            "a coupon past the batch's count",
            pay(p2, w.shop, coupon(BATCH, 10)),
            LedgerError::UnknownCoupon(coupon(BATCH, 10)),
        ),
        case(
            "a coupon of serial u64::MAX",
            pay(p2, w.shop, coupon(BATCH, u64::MAX)),
            LedgerError::UnknownCoupon(coupon(BATCH, u64::MAX)),
        ),
        case(
            "another merchant's coupon",
            pay(p2, w.shop, coupon(BATCH_OTHER, 0)),
            LedgerError::CouponOfAnotherMerchant(coupon(BATCH_OTHER, 0)),
        ),
        case(
            "an expired coupon",
            pay(p2, w.shop, coupon(BATCH_EXPIRED, 0)),
            LedgerError::CouponExpired(coupon(BATCH_EXPIRED, 0)),
        ),
        case(
            "a coupon not valid yet",
            pay(p2, w.shop, coupon(BATCH_FUTURE, 0)),
            LedgerError::CouponExpired(coupon(BATCH_FUTURE, 0)),
        ),
        case(
            "a coupon redeemed already",
            pay(p2, w.shop, w.redeemed),
            LedgerError::CouponAlreadyRedeemed(w.redeemed),
        ),
        case(
            "a second coupon of a batch of one per member",
            pay(w.people[1], w.shop, coupon(BATCH, 1)),
            LedgerError::CouponLimit {
                coupon: coupon(BATCH, 1),
                member: w.people[1],
                limit: 1,
            },
        ),
        case(
            "a coupon of a merchant with no marketing money",
            pay(p3, w.poor_shop, coupon(BATCH_UNFUNDED, 0)),
            LedgerError::MarketingShort {
                merchant: w.poor_shop,
                coupon: coupon(BATCH_UNFUNDED, 0),
            },
        ),
        case(
            "a coupon payment of nothing",
            Op::PayCoupon(PayWithCoupon {
                payer: p2.to_string(),
                merchant: w.shop.to_string(),
                amount: Decimal::ZERO,
                fee: Decimal::ZERO,
                coupon: coupon(BATCH, 2),
            }),
            not_positive("coupon_pay", "amount", Decimal::ZERO),
        ),
        case(
            "a coupon payment by an unverified member",
            pay(w.unverified, w.shop, coupon(BATCH, 2)),
            LedgerError::MemberNotVerified(w.unverified),
        ),
        case(
            "a coupon refund of a payment without the coupon",
            Op::RefundCoupon(TxnId(PAY), coupon(BATCH, 0)),
            LedgerError::NotRefundable {
                original: TxnId(PAY),
                reason: "it is not a payment with this coupon".into(),
            },
        ),
        case(
            "a negative marketing alert",
            Op::Alert(w.shop.to_string(), yuan(-1)),
            not_positive("marketing_alert", "threshold", yuan(-1)),
        ),
        case(
            "a marketing alert for a member never opened",
            Op::Alert(unknown_shop.to_string(), yuan(1)),
            LedgerError::UnknownMember(unknown_shop),
        ),
    ]
}

impl World {
    async fn apply(&self, op: &Op) -> Result<String, LedgerError> {
        let l = &self.ledger;
        let shown = match op.clone() {
            Op::Post(r) => format!("{:?}", l.post(r).await?),
            Op::OpenMember(m) => format!("{:?}", l.open_member(m).await?),
            Op::Verify(n) => format!("{:?}", l.verify_member(n).await?),
            Op::AddSub(n, t) => format!("{:?}", l.add_sub_account(n, t).await?),
            Op::SetStatus(number, account, status) => {
                let change = MemberChange {
                    number,
                    action: MemberAction::AccountStatus { account, status },
                    by: "corpus".into(),
                    reason: "bad input".into(),
                };
                format!("{:?}", l.change_member(change).await?)
            }
            Op::Change(c) => format!("{:?}", l.change_member(c).await?),
            Op::Capture(id, of, amount) => format!("{:?}", l.capture(id, of, amount).await?),
            Op::Release(id, of) => format!("{:?}", l.release(id, of).await?),
            Op::Refund(of, seq, amount) => format!("{:?}", l.refund(of, seq, amount).await?),
            Op::Reverse(of) => format!("{:?}", l.reverse(of).await?),
            Op::Send(s) => format!("{:?}", l.send_red_packet(s).await?),
            Op::Claim(p, who) => format!("{:?}", l.claim_red_packet(p, &who).await?),
            Op::Issue(b) => format!("{:?}", l.issue_coupons(b).await?),
            Op::PayCoupon(p) => format!("{:?}", l.pay_with_coupon(p).await?),
            Op::RefundCoupon(of, c) => format!("{:?}", l.refund_coupon_payment(of, c).await?),
            Op::Alert(m, t) => format!("{:?}", l.set_marketing_alert(&m, t).await?),
        };
        Ok(shown)
    }

    async fn snapshot(&self) -> Snapshot {
        let engine = self.ledger.engine();
        let audit = must("audit", engine.audit().await);
        let mut records = Vec::new();
        let mut after = None;
        loop {
            let page = must(
                "records",
                engine
                    .records(Vec::new(), after.clone(), RECORDS_PAGE_MAX)
                    .await,
            );
            let done = page.len() < RECORDS_PAGE_MAX;
            after = page.last().map(|(k, _)| k.clone());
            // A member's coupon count of 0 is the same as none: a refused
            // redemption is counted before it is paid and uncounted after
            // (a crash in between over-counts, never under-counts), which
            // may leave a 0 where there was nothing.
            records.extend(page.into_iter().filter(|(k, v)| {
                !(k.starts_with(b"couponuser/") && v.as_slice() == 0u32.to_le_bytes())
            }));
            if done {
                break;
            }
        }
        let mut packets = Vec::new();
        for id in [RP_OPEN, RP_DONE, RP_EXPIRED, RP_REFUSED] {
            packets.push(format!(
                "{:?}",
                self.ledger
                    .red_packet(TxnId(id))
                    .await
                    .map_err(|e| e.to_string())
            ));
        }
        for id in [
            BATCH,
            BATCH_EXPIRED,
            BATCH_FUTURE,
            BATCH_OTHER,
            BATCH_UNFUNDED,
        ] {
            packets.push(format!(
                "{:?}",
                self.ledger
                    .coupon_batch(TxnId(id))
                    .await
                    .map_err(|e| e.to_string())
            ));
        }
        let mut members = Vec::new();
        let mut accounts = Vec::new();
        for n in self.people.iter().chain([
            &self.unverified,
            &self.basic,
            &self.frozen,
            &self.closed,
            &self.shop,
            &self.other_shop,
            &self.poor_shop,
        ]) {
            members.push((
                format!("{:?}", self.ledger.member(*n)),
                self.ledger.member_status(*n),
            ));
            // Every balance, part and version of the member's accounts.
            for t in [
                AccountType::Balance,
                AccountType::PendingSettlement,
                AccountType::Marketing,
            ] {
                accounts.push(must("account", self.ledger.account(*n, t).await));
            }
        }
        Snapshot {
            audit: Audit {
                rejected: 0,
                batches: 0,
                ..audit
            },
            records,
            accounts,
            products: packets,
            members,
        }
    }
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    /// Without the counters a recorded refusal moves.
    audit: Audit,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    accounts: Vec<Option<AccountView>>,
    products: Vec<String>,
    members: Vec<(String, MemberStatus)>,
}

impl Snapshot {
    /// The parts that differ, for a failure message.
    fn diff(&self, now: &Snapshot) -> String {
        let mut out = Vec::new();
        if self.audit != now.audit {
            out.push(format!("audit {:?} → {:?}", self.audit, now.audit));
        }
        for (a, b) in self.accounts.iter().zip(&now.accounts) {
            if a != b {
                out.push(format!("{a:?} → {b:?}"));
            }
        }
        for (k, v) in &now.records {
            if !self.records.iter().any(|(k0, v0)| k0 == k && v0 == v) {
                out.push(format!("record {} set", String::from_utf8_lossy(k)));
            }
        }
        for (k, _) in &self.records {
            if !now.records.iter().any(|(k1, _)| k1 == k) {
                out.push(format!("record {} gone", String::from_utf8_lossy(k)));
            }
        }
        for (a, b) in self.products.iter().zip(&now.products) {
            if a != b {
                out.push(format!("{a} → {b}"));
            }
        }
        if self.members != now.members {
            out.push(format!("members {:?} → {:?}", self.members, now.members));
        }
        out.join("; ")
    }
}

pub fn run(w: &World, cases: &[Case], failures: &mut Failures) {
    let mut start = w.rt.block_on(w.snapshot());
    assert!(start.audit.ok(), "world: {:?}", start.audit);
    for c in cases {
        let mut check = |what: String| failures.push(format!("business / {}: {what}", c.name));
        let before =
            c.op.own_id()
                .map(|id| must("txn", w.rt.block_on(w.ledger.engine().transaction(id))));
        let expected = format!("{:?}", c.expected);
        for attempt in ["first", "second"] {
            match w.rt.block_on(w.apply(&c.op)) {
                Err(e) if format!("{e:?}") == expected => {}
                other => check(format!("{attempt} try: expected {expected}, got {other:?}")),
            }
        }
        let now = w.rt.block_on(w.snapshot());
        if now != start {
            let added: Vec<&(Vec<u8>, Vec<u8>)> = now
                .records
                .iter()
                .filter(|r| !start.records.contains(r))
                .collect();
            let only_its_record = c.leaves_record
                && added.len() == 1
                && added[0].0.starts_with(b"redpacket/")
                && now.records.len() == start.records.len() + 1
                && now.audit == start.audit
                && now.accounts == start.accounts
                && now.products == start.products
                && now.members == start.members;
            if !only_its_record {
                check(format!("something changed: {}", start.diff(&now)));
            }
            start = w.rt.block_on(w.snapshot());
        } else if c.leaves_record {
            check("the refused send left no record".into());
        }
        let (Some(id), Some(before)) = (c.op.own_id(), before) else {
            continue;
        };
        let after = must("txn", w.rt.block_on(w.ledger.engine().transaction(id)));
        let kept = match (&c.expected, &before, &after) {
            // A recorded refusal of a new id is its answer from then on.
            (LedgerError::Rejected(r), None, Some(view)) if c.recorded => {
                view.result.as_ref() == Err(r) && view.details.is_empty()
            }
            // Any other refusal leaves the id as it was (unused, or with
            // its earlier answer).
            _ => !c.recorded && after == before,
        };
        if !kept {
            check(format!("the id {id:?} went from {before:?} to {after:?}"));
        }
    }
}

/// Known answers stay: the first top-up, posted again, is a duplicate with
/// its first timestamp.
pub fn check_known_answers(w: &World, failures: &mut Failures) {
    let view = must(
        "txn",
        w.rt.block_on(w.ledger.engine().transaction(TxnId(TOP_UP_P0))),
    );
    let again =
        w.rt.block_on(w.ledger.post(top_up(TOP_UP_P0, w.people[0], 1_000_00)));
    match (view, again) {
        (Some(view), Ok(p)) if p.duplicate && p.timestamp == Some(view.timestamp) => {}
        (view, again) => failures.push(format!(
            "business: the first top-up lost its answer: {view:?}, {again:?}"
        )),
    }
}
