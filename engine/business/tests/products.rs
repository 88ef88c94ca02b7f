//! Product accounts end to end on the sled store: red packets (send, claim,
//! expiry, audit, restart) and their bad input.
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
const DAY_MS: u64 = 24 * 3_600_000;

fn yuan(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

/// An 18-digit ID card number with a valid check digit.
fn id_card(seq: u32) -> String {
    let body = format!("110105199001{:02}{:03}", 1 + seq / 1000 % 28, seq % 1000);
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .chars()
        .zip(W)
        .map(|(c, w)| c.to_digit(10).unwrap() * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

struct World {
    ledger: Ledger,
    clock: Arc<ManualClock>,
    config: Config,
    dir: tempfile::TempDir,
    /// Verified personal members; `people[0]` sends.
    people: Vec<AccountNo>,
    unverified: AccountNo,
}

async fn open_people(ledger: &Ledger, n: u32) -> (Vec<AccountNo>, AccountNo) {
    let mut people = Vec::new();
    for i in 0..=n {
        let member = OpenMember {
            serial: 100 + u64::from(i),
            kind: MemberKind::PersonalUser,
            name: format!("person {i}"),
            id_number: id_card(i),
            legal: false,
            level: MemberLevel("verified".into()),
            verified: i < n,
        };
        people.push(ledger.open_member(member).await.unwrap().number);
    }
    let unverified = people.pop().unwrap();
    (people, unverified)
}

async fn world(n: u32) -> World {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let config = Config::sled(dir.path())
        .with_shards(2)
        .with_clock(clock.clone());
    let ledger = Ledger::open_default(config.clone()).await.unwrap();
    let (people, unverified) = open_people(&ledger, n).await;
    World {
        ledger,
        clock,
        config,
        dir,
        people,
        unverified,
    }
}

impl World {
    async fn top_up(&self, id: u128, who: AccountNo, cents: i64) {
        let request = PostRequest::new(TxnId(id), "top_up")
            .member("member", who)
            .channel("channel", "icbc")
            .amount("amount", yuan(cents));
        self.ledger.post(request).await.unwrap();
    }

    async fn wallet(&self, who: AccountNo) -> AccountView {
        self.ledger
            .account(who, AccountType::Balance)
            .await
            .unwrap()
            .unwrap()
    }

    fn send(&self, id: u128, cents: i64, count: u32, lucky: bool) -> SendRedPacket {
        SendRedPacket {
            id: TxnId(id),
            sender: self.people[0].to_string(),
            total: yuan(cents),
            count,
            lucky,
            expiry_ms: None,
        }
    }

    async fn claim(&self, packet: u128, who: AccountNo) -> Result<Claimed, LedgerError> {
        self.ledger
            .claim_red_packet(TxnId(packet), &who.to_string())
            .await
    }

    async fn audits_ok(&self) -> RedPacketAudit {
        let audit = self.ledger.audit_red_packets().await.unwrap();
        assert!(audit.ok(), "{audit:?}");
        assert!(self.ledger.engine().audit().await.unwrap().ok());
        audit
    }
}

#[tokio::test]
async fn red_packets_are_sent_claimed_once_each_expire_back_and_survive_a_restart() {
    let mut w = world(6).await;
    let sender = w.people[0];
    w.top_up(1, sender, 1_000_00).await;
    // A lucky red packet: 100.00 in 5 packets.
    let sent = w
        .ledger
        .send_red_packet(w.send(100, 100_00, 5, true))
        .await
        .unwrap();
    assert!(sent.funded);
    assert_eq!(sent.open, yuan(100_00));
    assert_eq!(w.wallet(sender).await.balance, yuan(900_00));
    let again = w
        .ledger
        .send_red_packet(w.send(100, 100_00, 5, true))
        .await
        .unwrap();
    assert_eq!(again.packet, sent.packet, "sending again changes nothing");
    assert_eq!(w.wallet(sender).await.balance, yuan(900_00));
    let parts: Vec<Decimal> = split_red_packet(TxnId(100), 100_00, 5, true)
        .unwrap()
        .into_iter()
        .map(yuan)
        .collect();
    // The sender may not claim; each member once; each gets the next part.
    let err = w.claim(100, sender).await.unwrap_err();
    assert!(matches!(err, LedgerError::OwnRedPacket(_)), "{err:?}");
    for i in 1..=3 {
        let claimed = w.claim(100, w.people[i]).await.unwrap();
        assert_eq!(
            (claimed.index, claimed.amount),
            (i as u32 - 1, parts[i - 1])
        );
        assert_eq!(w.wallet(w.people[i]).await.balance, parts[i - 1]);
    }
    let err = w.claim(100, w.people[1]).await.unwrap_err();
    assert!(matches!(err, LedgerError::AlreadyClaimed { .. }), "{err:?}");
    // Its money shares a product account with other red packets: a send
    // is not reversed.
    let err = w.ledger.reverse(TxnId(100)).await.unwrap_err();
    assert!(matches!(err, LedgerError::NotReversible { .. }), "{err:?}");

    // An equal red packet: 10.00 in 3, all claimed.
    w.ledger
        .send_red_packet(w.send(200, 10_00, 3, false))
        .await
        .unwrap();
    for i in 1..=3 {
        w.claim(200, w.people[i]).await.unwrap();
    }
    assert_eq!(w.wallet(w.people[1]).await.balance, parts[0] + yuan(3_34));
    let err = w.claim(200, w.people[4]).await.unwrap_err();
    assert!(matches!(err, LedgerError::AllClaimed(_)), "{err:?}");
    w.audits_ok().await;

    // Restart: what was claimed is there, a member still claims once.
    w.ledger.engine().shutdown().await.unwrap();
    drop(w.ledger);
    w.ledger = Ledger::open_default(w.config.clone()).await.unwrap();
    let err = w.claim(100, w.people[2]).await.unwrap_err();
    assert!(matches!(err, LedgerError::AlreadyClaimed { .. }), "{err:?}");
    let view = w.ledger.red_packet(TxnId(100)).await.unwrap().unwrap();
    assert_eq!(view.claimed, 3);
    assert_eq!(view.open, parts[3] + parts[4]);
    let fourth = w.claim(100, w.people[4]).await.unwrap();
    assert_eq!((fourth.index, fourth.amount), (3, parts[3]));

    // Not yet due: the sweep returns nothing.
    assert!(w.ledger.expire_red_packets().await.unwrap().is_empty());
    // At the deadline: claims are refused, the rest goes back in one posting.
    w.clock.advance_ms(DAY_MS);
    let err = w.claim(100, w.people[5]).await.unwrap_err();
    assert!(matches!(err, LedgerError::RedPacketExpired(_)), "{err:?}");
    let returned = w.ledger.expire_red_packets().await.unwrap();
    assert_eq!(returned.len(), 1, "{returned:?}");
    let back = 1_000_00 - 100_00 - 10_00;
    assert_eq!(w.wallet(sender).await.balance, yuan(back) + parts[4]);
    assert!(w.ledger.expire_red_packets().await.unwrap().is_empty());
    let audit = w.audits_ok().await;
    assert_eq!(
        (
            audit.packets,
            audit.claims,
            audit.sent,
            audit.returned,
            audit.open
        ),
        (2, 7, yuan(110_00), parts[4], yuan(0))
    );
    assert_eq!(audit.product_balance, yuan(0));
    // Still refused after the sweep and after another restart.
    w.ledger.engine().shutdown().await.unwrap();
    drop(w.ledger);
    w.ledger = Ledger::open_default(w.config.clone()).await.unwrap();
    assert!(w.ledger.expire_red_packets().await.unwrap().is_empty());
    let err = w.claim(100, w.people[5]).await.unwrap_err();
    assert!(matches!(err, LedgerError::RedPacketExpired(_)), "{err:?}");
    w.audits_ok().await;
    drop(w.dir);
}

#[tokio::test]
async fn a_red_packet_sent_from_non_withdrawable_money_is_claimed_non_withdrawable() {
    let w = world(3).await;
    let sender = w.people[0];
    let gift = PostRequest::new(TxnId(1), "red_packet")
        .member("member", sender)
        .amount("amount", yuan(6_00));
    w.ledger.post(gift).await.unwrap();
    w.top_up(2, sender, 4_00).await;
    w.ledger
        .send_red_packet(SendRedPacket {
            expiry_ms: Some(60_000),
            ..w.send(10, 10_00, 2, false)
        })
        .await
        .unwrap();
    // 5.00 each: the first claim is all of the 6.00's, the second 1.00 of it.
    w.claim(10, w.people[1]).await.unwrap();
    let first = w.wallet(w.people[1]).await;
    assert_eq!((first.balance, first.withdrawable), (yuan(5_00), yuan(0)));
    w.claim(10, w.people[2]).await.unwrap();
    let second = w.wallet(w.people[2]).await;
    assert_eq!(
        (second.balance, second.withdrawable),
        (yuan(5_00), yuan(4_00))
    );
    // Unclaimed money goes back into the buckets it came from.
    w.top_up(4, sender, 1_00).await;
    w.ledger
        .send_red_packet(SendRedPacket {
            expiry_ms: Some(60_000),
            ..w.send(11, 1_00, 1, false)
        })
        .await
        .unwrap();
    let gift = PostRequest::new(TxnId(3), "red_packet")
        .member("member", sender)
        .amount("amount", yuan(2_00));
    w.ledger.post(gift).await.unwrap();
    w.ledger
        .send_red_packet(SendRedPacket {
            expiry_ms: Some(60_000),
            ..w.send(12, 2_00, 1, false)
        })
        .await
        .unwrap();
    w.clock.advance_ms(60_000);
    assert_eq!(w.ledger.expire_red_packets().await.unwrap().len(), 2);
    let s = w.wallet(sender).await;
    assert_eq!(
        (s.balance, s.non_withdrawable, s.withdrawable),
        (yuan(3_00), yuan(2_00), yuan(1_00))
    );
    w.audits_ok().await;
}

#[tokio::test]
async fn bad_red_packets_are_typed_errors_and_post_nothing() {
    let w = world(3).await;
    let sender = w.people[0];
    w.top_up(1, sender, 100_00).await;
    let before = w.wallet(sender).await;
    type Expected = fn(&LedgerError) -> bool;
    let cases: Vec<(SendRedPacket, Expected)> = vec![
        (w.send(10, 0, 1, true), |e| {
            matches!(e, LedgerError::AmountNotPositive { .. })
        }),
        (w.send(11, -1_00, 1, true), |e| {
            matches!(e, LedgerError::AmountNotPositive { .. })
        }),
        (w.send(12, 1_00, 0, true), |e| {
            matches!(e, LedgerError::RedPacketCount { count: 0, max: 200 })
        }),
        (w.send(13, 10_00, 201, false), |e| {
            matches!(e, LedgerError::RedPacketCount { count: 201, .. })
        }),
        (w.send(14, 5, 6, true), |e| {
            matches!(e, LedgerError::RedPacketTooSmall { .. })
        }),
        (
            SendRedPacket {
                total: Decimal::new(1_001, 3),
                ..w.send(15, 0, 1, false)
            },
            |e| matches!(e, LedgerError::InvalidAmount(_)),
        ),
        (
            SendRedPacket {
                sender: w.unverified.to_string(),
                ..w.send(16, 1_00, 1, false)
            },
            |e| matches!(e, LedgerError::MemberNotVerified(_)),
        ),
        (
            SendRedPacket {
                sender: "1000000000000017".into(),
                ..w.send(17, 1_00, 1, false)
            },
            |e| matches!(e, LedgerError::InvalidAccountNo(_)),
        ),
        (
            SendRedPacket {
                expiry_ms: Some(0),
                ..w.send(18, 1_00, 1, false)
            },
            |e| matches!(e, LedgerError::AmountNotPositive { .. }),
        ),
    ];
    for (request, expected) in cases {
        let err = w.ledger.send_red_packet(request.clone()).await.unwrap_err();
        assert!(expected(&err), "{request:?}: {err:?}");
        assert!(w.ledger.red_packet(request.id).await.unwrap().is_none());
    }
    // More than the sender has: refused by the engine, nothing claimable.
    let err = w
        .ledger
        .send_red_packet(w.send(20, 100_01, 2, true))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(Reject::InsufficientFunds { .. })),
        "{err:?}"
    );
    let err = w.claim(20, w.people[1]).await.unwrap_err();
    assert!(matches!(err, LedgerError::UnknownRedPacket(_)), "{err:?}");
    assert_eq!(w.wallet(sender).await, before);
    // Unknown red packet; the same id with other content.
    let err = w.claim(99, w.people[1]).await.unwrap_err();
    assert!(matches!(err, LedgerError::UnknownRedPacket(_)), "{err:?}");
    w.ledger
        .send_red_packet(w.send(21, 1_00, 1, false))
        .await
        .unwrap();
    let err = w
        .ledger
        .send_red_packet(w.send(21, 2_00, 1, false))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::RedPacketConflict(_)), "{err:?}");
    // An unverified claimant.
    let err = w.claim(21, w.unverified).await.unwrap_err();
    assert!(matches!(err, LedgerError::MemberNotVerified(_)), "{err:?}");
    assert_eq!(w.wallet(sender).await.balance, yuan(99_00));
    w.audits_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_claims_pays_each_packet_once() {
    let w = world(41).await;
    let sender = w.people[0];
    w.top_up(1, sender, 1_000_00).await;
    w.ledger
        .send_red_packet(w.send(7, 88_88, 20, true))
        .await
        .unwrap();
    let ledger = Arc::new(w.ledger);
    let mut tasks = Vec::new();
    // Every member claims twice at once (both claims queue together, so
    // they are checked in one batch).
    for &who in &w.people[1..] {
        let ledger = Arc::clone(&ledger);
        tasks.push(tokio::spawn(async move {
            let who = who.to_string();
            let (a, b) = tokio::join!(
                ledger.claim_red_packet(TxnId(7), &who),
                ledger.claim_red_packet(TxnId(7), &who)
            );
            vec![a, b]
        }));
    }
    let (mut paid, mut total, mut refused) = (0, Decimal::ZERO, 0);
    for task in tasks {
        let answers = task.await.unwrap();
        assert!(
            answers.iter().filter(|a| a.is_ok()).count() <= 1,
            "{answers:?}"
        );
        for answer in answers {
            match answer {
                Ok(claimed) => {
                    paid += 1;
                    total += claimed.amount;
                }
                Err(LedgerError::AllClaimed(_) | LedgerError::AlreadyClaimed { .. }) => {
                    refused += 1
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    assert_eq!((paid, refused, total), (20, 60, yuan(88_88)));
    let audit = ledger.audit_red_packets().await.unwrap();
    assert!(audit.ok(), "{audit:?}");
    assert_eq!((audit.claims, audit.open), (20, yuan(0)));
    assert!(ledger.engine().audit().await.unwrap().ok());
}

// ---- coupons ------------------------------------------------------------------

async fn open_merchant(ledger: &Ledger, serial: u64, seq: u32) -> AccountNo {
    let member = OpenMember {
        serial,
        kind: MemberKind::MerchantMicro,
        name: format!("shop {serial}"),
        id_number: id_card(seq),
        legal: false,
        level: MemberLevel("merchant".into()),
        verified: true,
    };
    ledger.open_member(member).await.unwrap().number
}

async fn marketing(w: &World, shop: AccountNo) -> Decimal {
    w.ledger
        .account(shop, AccountType::Marketing)
        .await
        .unwrap()
        .unwrap()
        .balance
}

fn batch(id: u128, merchant: AccountNo, face: i64, funding: CouponFunding) -> IssueCoupons {
    IssueCoupons {
        id: TxnId(id),
        merchant: merchant.to_string(),
        face_value: yuan(face),
        count: 1_000_000,
        valid_from: START,
        valid_until: Timestamp(START.0 + DAY_MS * 1_000_000),
        per_member: Some(2),
        funding,
        on_refund: OnRefund::Restore,
    }
}

fn coupon_pay(
    payer: AccountNo,
    shop: AccountNo,
    batch: u128,
    serial: u64,
    cents: i64,
) -> PayWithCoupon {
    PayWithCoupon {
        payer: payer.to_string(),
        merchant: shop.to_string(),
        amount: yuan(cents),
        fee: yuan(30),
        coupon: CouponId {
            batch: TxnId(batch),
            serial,
        },
    }
}

#[tokio::test]
async fn coupons_are_redeemed_once_charged_to_marketing_refused_when_it_runs_dry_and_alert_once_per_crossing(
) {
    let mut w = world(6).await;
    let shop = open_merchant(&w.ledger, 900, 500).await;
    let other = open_merchant(&w.ledger, 901, 501).await;
    let mut alerts = w.ledger.subscribe();
    w.top_up(1, shop, 100_00).await;
    let fund = |id: u128, cents: i64| {
        PostRequest::new(TxnId(id), "marketing_fund")
            .member("merchant", shop)
            .amount("amount", yuan(cents))
    };
    w.ledger.post(fund(2, 30_00)).await.unwrap();
    w.ledger
        .set_marketing_alert(&shop.to_string(), yuan(15_00))
        .await
        .unwrap();
    // A million coupons of 10.00 behind 30.00 of funding.
    w.ledger
        .issue_coupons(batch(50, shop, 10_00, CouponFunding::Merchant))
        .await
        .unwrap();
    for (i, &p) in w.people.iter().enumerate() {
        w.top_up(10 + i as u128, p, 500_00).await;
    }
    let (p1, p2, p3, p4) = (w.people[1], w.people[2], w.people[3], w.people[4]);
    let first = w
        .ledger
        .pay_with_coupon(coupon_pay(p1, shop, 50, 0, 50_00))
        .await
        .unwrap();
    assert_eq!(first.discount, yuan(10_00));
    assert_eq!(w.wallet(p1).await.balance, yuan(460_00));
    assert_eq!(marketing(&w, shop).await, yuan(20_00));
    // The same payment again: its first answer. Another on the same coupon: refused.
    let again = w
        .ledger
        .pay_with_coupon(coupon_pay(p1, shop, 50, 0, 50_00))
        .await
        .unwrap();
    assert!(again.posted.duplicate);
    let err = w
        .ledger
        .pay_with_coupon(coupon_pay(p2, shop, 50, 0, 50_00))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::CouponAlreadyRedeemed(_)),
        "{err:?}"
    );
    assert_eq!(w.wallet(p2).await.balance, yuan(500_00));
    // 20.00 -> 10.00 crosses 15.00: one alert.
    w.ledger
        .pay_with_coupon(coupon_pay(p1, shop, 50, 1, 50_00))
        .await
        .unwrap();
    let err = w
        .ledger
        .pay_with_coupon(coupon_pay(p1, shop, 50, 2, 50_00))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::CouponLimit { limit: 2, .. }),
        "{err:?}"
    );
    // Still below: no second alert.
    w.ledger
        .pay_with_coupon(coupon_pay(p2, shop, 50, 2, 50_00))
        .await
        .unwrap();
    assert_eq!(marketing(&w, shop).await, yuan(0));
    // Dry: the whole payment is refused, the coupon stays unused.
    let err = w
        .ledger
        .pay_with_coupon(coupon_pay(p3, shop, 50, 3, 50_00))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::MarketingShort { .. }), "{err:?}");
    assert_eq!(w.wallet(p3).await.balance, yuan(500_00));
    // Funded above the threshold again: re-armed; the next crossing alerts.
    w.ledger.post(fund(3, 20_00)).await.unwrap();
    w.ledger
        .pay_with_coupon(coupon_pay(p3, shop, 50, 3, 50_00))
        .await
        .unwrap();
    w.ledger
        .pay_with_coupon(coupon_pay(p4, shop, 50, 4, 50_00))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(event) = alerts.try_recv() {
        seen.push(event);
    }
    assert_eq!(
        seen,
        vec![
            LedgerEvent::MarketingLow {
                merchant: shop,
                balance: yuan(10_00),
                threshold: yuan(15_00)
            },
            LedgerEvent::MarketingLow {
                merchant: shop,
                balance: yuan(10_00),
                threshold: yuan(15_00)
            },
        ]
    );
    // A full refund: the payer gets back what it paid, the marketing account
    // the discount, and the coupon is usable again (the batch says so).
    w.ledger.post(fund(4, 10_00)).await.unwrap();
    w.ledger
        .refund_coupon_payment(
            first.posted.id,
            CouponId {
                batch: TxnId(50),
                serial: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(w.wallet(p1).await.balance, yuan(460_00));
    assert_eq!(marketing(&w, shop).await, yuan(20_00));
    // Once only: again, the first answer and nothing more.
    let again = w
        .ledger
        .refund_coupon_payment(
            first.posted.id,
            CouponId {
                batch: TxnId(50),
                serial: 0,
            },
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(w.wallet(p1).await.balance, yuan(460_00));
    let err = w.ledger.reverse(first.posted.id).await.unwrap_err();
    assert!(matches!(err, LedgerError::NotReversible { .. }), "{err:?}");
    w.ledger
        .pay_with_coupon(coupon_pay(p2, shop, 50, 0, 50_00))
        .await
        .unwrap();
    // Another merchant's, unknown, and a split-funded coupon.
    let err = w
        .ledger
        .pay_with_coupon(coupon_pay(p4, other, 50, 9, 50_00))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::CouponOfAnotherMerchant(_)),
        "{err:?}"
    );
    let err = w
        .ledger
        .pay_with_coupon(coupon_pay(p4, shop, 999, 0, 50_00))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::UnknownCoupon(_)), "{err:?}");
    let err = w
        .ledger
        .pay_with_coupon(coupon_pay(p4, shop, 50, 1_000_000, 50_00))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::UnknownCoupon(_)), "{err:?}");
    w.ledger
        .issue_coupons(batch(
            51,
            shop,
            5_00,
            CouponFunding::Split {
                platform_percent: 50,
            },
        ))
        .await
        .unwrap();
    let split = w
        .ledger
        .pay_with_coupon(coupon_pay(p4, shop, 51, 0, 3_01))
        .await
        .unwrap();
    assert_eq!(
        (split.discount, split.merchant_part, split.platform_part),
        (yuan(3_01), yuan(1_51), yuan(1_50))
    );
    assert_eq!(w.wallet(p4).await.balance, yuan(460_00));
    assert!(w.ledger.engine().audit().await.unwrap().ok());

    // After a restart: used coupons stay used, member counts stay counted.
    w.ledger.engine().shutdown().await.unwrap();
    drop(w.ledger);
    w.ledger = Ledger::open_default(w.config.clone()).await.unwrap();
    let err = w
        .ledger
        .pay_with_coupon(coupon_pay(p3, shop, 50, 1, 50_00))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::CouponAlreadyRedeemed(_)),
        "{err:?}"
    );
    let err = w
        .ledger
        .pay_with_coupon(coupon_pay(p2, shop, 50, 5, 50_00))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::CouponLimit { .. }), "{err:?}");
    // Past its validity.
    w.clock.advance_ms(DAY_MS * 1_000_000);
    let err = w
        .ledger
        .pay_with_coupon(coupon_pay(p4, shop, 50, 6, 50_00))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::CouponExpired(_)), "{err:?}");
    assert!(w.ledger.engine().audit().await.unwrap().ok());
}

#[tokio::test]
async fn bad_coupon_batches_are_typed_errors() {
    let w = world(2).await;
    let shop = open_merchant(&w.ledger, 900, 500).await;
    let person = w.people[0];
    let good = batch(1, shop, 10_00, CouponFunding::Merchant);
    type Expected = fn(&LedgerError) -> bool;
    let cases: Vec<(IssueCoupons, Expected)> = vec![
        (
            IssueCoupons {
                face_value: yuan(0),
                ..good.clone()
            },
            |e| matches!(e, LedgerError::AmountNotPositive { .. }),
        ),
        (
            IssueCoupons {
                face_value: yuan(-1),
                ..good.clone()
            },
            |e| matches!(e, LedgerError::AmountNotPositive { .. }),
        ),
        (
            IssueCoupons {
                face_value: Decimal::new(1, 3),
                ..good.clone()
            },
            |e| matches!(e, LedgerError::InvalidAmount(_)),
        ),
        (
            IssueCoupons {
                count: 0,
                ..good.clone()
            },
            |e| matches!(e, LedgerError::CouponCount { .. }),
        ),
        (
            IssueCoupons {
                valid_until: START,
                ..good.clone()
            },
            |e| matches!(e, LedgerError::CouponWindow),
        ),
        (
            IssueCoupons {
                funding: CouponFunding::Split {
                    platform_percent: 101,
                },
                ..good.clone()
            },
            |e| matches!(e, LedgerError::CouponFundingSplit),
        ),
        (
            IssueCoupons {
                merchant: person.to_string(),
                ..good.clone()
            },
            |e| matches!(e, LedgerError::NotAMerchant(_)),
        ),
    ];
    for (request, expected) in cases {
        let err = w.ledger.issue_coupons(request.clone()).await.unwrap_err();
        assert!(expected(&err), "{request:?}: {err:?}");
        assert!(w.ledger.coupon_batch(request.id).await.unwrap().is_none());
    }
    w.ledger.issue_coupons(good.clone()).await.unwrap();
    w.ledger.issue_coupons(good.clone()).await.unwrap();
    let err = w
        .ledger
        .issue_coupons(IssueCoupons { count: 5, ..good })
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::CouponBatchConflict(_)),
        "{err:?}"
    );
    // A payment of nothing.
    let err = w
        .ledger
        .pay_with_coupon(coupon_pay(person, shop, 1, 0, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::AmountNotPositive { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_redemptions_never_pays_a_coupon_twice_or_beyond_the_funding() {
    let w = world(20).await;
    let shop = open_merchant(&w.ledger, 900, 500).await;
    w.top_up(1, shop, 100_00).await;
    let fund = PostRequest::new(TxnId(2), "marketing_fund")
        .member("merchant", shop)
        .amount("amount", yuan(100_00));
    w.ledger.post(fund).await.unwrap();
    w.ledger
        .set_marketing_alert(&shop.to_string(), yuan(50_00))
        .await
        .unwrap();
    let mut alerts = w.ledger.subscribe();
    w.ledger
        .issue_coupons(IssueCoupons {
            per_member: None,
            ..batch(60, shop, 1_00, CouponFunding::Merchant)
        })
        .await
        .unwrap();
    for (i, &p) in w.people.iter().enumerate() {
        w.top_up(10 + i as u128, p, 1_000_00).await;
    }
    let ledger = Arc::new(w.ledger);
    let mut tasks = Vec::new();
    // 150 coupons, each tried by two payers at once.
    for serial in 0..150u64 {
        for k in 0..2 {
            let payer = w.people[(serial as usize * 2 + k) % w.people.len()];
            let ledger = Arc::clone(&ledger);
            tasks.push(tokio::spawn(async move {
                (
                    serial,
                    ledger
                        .pay_with_coupon(coupon_pay(payer, shop, 60, serial, 5_00))
                        .await,
                )
            }));
        }
    }
    let mut redeemed = std::collections::BTreeMap::new();
    let (mut short, mut twice) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (serial, Ok(r)) => *redeemed.entry(serial).or_insert(Decimal::ZERO) += r.merchant_part,
            (_, Err(LedgerError::MarketingShort { .. })) => short += 1,
            (_, Err(LedgerError::CouponAlreadyRedeemed(_))) => twice += 1,
            (_, Err(e)) => panic!("{e:?}"),
        }
    }
    // Each coupon paid at most once; exactly the funding paid out.
    assert_eq!(redeemed.len(), 100, "{redeemed:?}");
    assert!(redeemed.values().all(|&v| v == yuan(1_00)));
    assert_eq!(short + twice + redeemed.len(), 300);
    assert_eq!(
        ledger
            .account(shop, AccountType::Marketing)
            .await
            .unwrap()
            .unwrap()
            .balance,
        yuan(0)
    );
    let mut seen = 0;
    while alerts.try_recv().is_ok() {
        seen += 1;
    }
    assert_eq!(seen, 1, "one crossing, one alert");
    assert!(ledger.engine().audit().await.unwrap().ok());
}

/// A merchant with `marketing` funded, the batches issued (coupons of 1.00,
/// no per-member limit, funded by the merchant), and every person of the
/// world given 1,000.00.
async fn coupon_shop(w: &World, marketing: i64, batches: &[u128]) -> AccountNo {
    let shop = open_merchant(&w.ledger, 900, 500).await;
    w.top_up(1, shop, 100_00).await;
    let fund = PostRequest::new(TxnId(2), "marketing_fund")
        .member("merchant", shop)
        .amount("amount", yuan(marketing));
    w.ledger.post(fund).await.unwrap();
    for &id in batches {
        w.ledger
            .issue_coupons(IssueCoupons {
                per_member: None,
                ..batch(id, shop, 1_00, CouponFunding::Merchant)
            })
            .await
            .unwrap();
    }
    for (i, &p) in w.people.iter().enumerate() {
        w.top_up(10 + i as u128, p, 1_000_00).await;
    }
    shop
}

/// Two batches of one merchant, redeemed side by side through the typed
/// path: each batch's budget believes the whole marketing account is its
/// own, so together they offer more than it holds; the engine refuses the
/// excess whole. Exactly the funding is paid out, no payer pays for a
/// refused redemption, nothing goes below zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_batches_of_one_merchant_never_pay_beyond_its_marketing_account() {
    let w = world(20).await;
    let shop = coupon_shop(&w, 30_00, &[70, 71]).await;
    let ledger = Arc::new(w.ledger);
    let mut tasks = Vec::new();
    // 4 callers per batch, 10 calls of 5 redemptions each: 400 tries for 30.00.
    for (batch_id, caller) in [70u128, 71]
        .into_iter()
        .flat_map(|b| (0..4u64).map(move |c| (b, c)))
    {
        let (ledger, people) = (Arc::clone(&ledger), w.people.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for call in 0..10u64 {
                let requests: Vec<Redeem> = (0..5u64)
                    .map(|k| {
                        let serial = caller * 1_000 + call * 10 + k;
                        Redeem {
                            payer: people[(serial % people.len() as u64) as usize],
                            merchant: shop,
                            amount: yuan(5_00),
                            fee: yuan(0),
                            coupon: CouponId {
                                batch: TxnId(batch_id),
                                serial,
                            },
                        }
                    })
                    .collect();
                let answers = ledger.redeem_coupons(requests.clone()).await.unwrap();
                out.extend(requests.into_iter().zip(answers));
            }
            out
        }));
    }
    let mut paid = Decimal::ZERO;
    let mut charged: std::collections::BTreeMap<AccountNo, Decimal> = Default::default();
    let (mut ok, mut short) = (0, 0);
    for task in tasks {
        for (request, answer) in task.await.unwrap() {
            match answer {
                Ok(r) => {
                    ok += 1;
                    paid += r.merchant_part;
                    *charged.entry(request.payer).or_default() += request.amount - r.discount;
                }
                Err(LedgerError::MarketingShort { .. }) => short += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    assert_eq!((ok, short), (30, 370));
    assert_eq!(paid, yuan(30_00));
    let left = ledger
        .account(shop, AccountType::Marketing)
        .await
        .unwrap()
        .unwrap()
        .balance;
    assert_eq!(left, yuan(0));
    // Each payer paid for its accepted redemptions only.
    for (i, &p) in w.people.iter().enumerate() {
        let balance = ledger
            .account(p, AccountType::Balance)
            .await
            .unwrap()
            .unwrap()
            .balance;
        let spent = charged.get(&p).copied().unwrap_or_default();
        assert_eq!(balance, yuan(1_000_00) - spent, "payer {i}");
    }
    assert!(ledger.engine().audit().await.unwrap().ok());
}

/// A caller that gives up (its future dropped) while its round is on its
/// way to the engine leaves nothing stuck: the same redemptions made again
/// complete — answered as the first if it committed — and no coupon pays
/// twice; the red packets' claims likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_dropped_mid_flight_leaves_no_coupon_or_packet_stuck() {
    use futures_util::FutureExt;
    let w = world(20).await;
    let shop = coupon_shop(&w, 50_00, &[80]).await;
    let requests: Vec<Redeem> = (0..20u64)
        .map(|serial| Redeem {
            payer: w.people[serial as usize],
            merchant: shop,
            amount: yuan(5_00),
            fee: yuan(0),
            coupon: CouponId {
                batch: TxnId(80),
                serial,
            },
        })
        .collect();
    // Warmed up (the payers' limits, the budget, the wallets' buckets
    // known), so a call's first wait is its round's submission.
    let warm: Vec<Redeem> = requests
        .iter()
        .map(|r| Redeem {
            coupon: CouponId {
                batch: TxnId(80),
                serial: r.coupon.serial + 100,
            },
            ..*r
        })
        .collect();
    for a in w.ledger.redeem_coupons(warm).await.unwrap() {
        a.unwrap();
    }
    // Polled until it is waiting, then dropped — a few times: the first
    // with its round in flight.
    let mut dropped = 0;
    for _ in 0..5 {
        if w.ledger
            .redeem_coupons(requests.clone())
            .now_or_never()
            .is_none()
        {
            dropped += 1;
        }
    }
    assert!(dropped > 0, "no call was left waiting");
    let answers = w.ledger.redeem_coupons(requests.clone()).await.unwrap();
    for a in &answers {
        assert!(a.is_ok(), "{a:?}");
    }
    for serial in 0..20u64 {
        let coupon = CouponId {
            batch: TxnId(80),
            serial,
        };
        let mut used = 0;
        for n in 0..COUPON_USES_MAX {
            match w
                .ledger
                .engine()
                .transaction(coupon_use_id(coupon, n))
                .await
                .unwrap()
            {
                Some(v) if v.result.is_ok() => used += 1,
                Some(_) => {}
                None => break,
            }
        }
        assert_eq!(used, 1, "coupon {serial}");
    }
    assert_eq!(marketing(&w, shop).await, yuan(10_00));
    // Claims: dropped mid-way, then made again.
    let sender = w.people[0];
    w.ledger
        .send_red_packet(SendRedPacket {
            id: TxnId(90),
            sender: sender.to_string(),
            total: yuan(10_00),
            count: 5,
            lucky: true,
            expiry_ms: None,
        })
        .await
        .unwrap();
    let claims: Vec<(TxnId, String)> = w.people[1..6]
        .iter()
        .map(|p| (TxnId(90), p.to_string()))
        .collect();
    for _ in 0..5 {
        let _ = w.ledger.claim_red_packets(claims.clone()).now_or_never();
    }
    // The dropped calls' fix-ups run on the runtime: give them a turn.
    tokio::task::yield_now().await;
    let mut paid = 0;
    for attempt in 0..50 {
        let answers = w.ledger.claim_red_packets(claims.clone()).await.unwrap();
        paid = answers
            .iter()
            .filter(|a| matches!(a, Ok(_) | Err(LedgerError::AlreadyClaimed { .. })))
            .count();
        if paid == 5 {
            break;
        }
        // Busy while a dropped call's claims are read back: try again.
        assert!(
            answers.iter().all(|a| a.is_ok()
                || matches!(
                    a,
                    Err(LedgerError::AlreadyClaimed { .. } | LedgerError::RedPacketBusy(_))
                )),
            "attempt {attempt}: {answers:?}"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(paid, 5);
    let audit = w.ledger.audit_red_packets().await.unwrap();
    assert!(audit.ok(), "{audit:?}");
    assert!(w.ledger.engine().audit().await.unwrap().ok());
}

// ---- kill -9 in the middle of a storm ----------------------------------------

const CRASH_DIR: &str = "TALLY_PRODUCT_CRASH_DIR";
const CRASH_ROUND: &str = "TALLY_PRODUCT_CRASH_ROUND";
const CRASH_PEOPLE: u32 = 40;
const CRASH_COUPONS: u128 = 70;
/// Coupons tried per storm, and every 5th a second try of the one before.
const CRASH_TRIES: u64 = 50;
const CRASH_PACKETS: u32 = 30;

fn crash_serial(round: u64, iteration: u64, k: u64) -> u64 {
    let k = if k % 5 == 4 { k - 1 } else { k };
    round * 1_000_000 + iteration * 100 + k
}

fn crash_packet(round: u64, iteration: u64) -> TxnId {
    TxnId(1 << 100 | u128::from(round) << 32 | u128::from(iteration))
}

/// The child's side: storms of claims and redemptions until killed,
/// printing every acknowledged one.
fn crash_child(dir: &str, round: u64) -> ! {
    use std::io::Write;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = Config::sled(dir)
            .with_shards(2)
            .with_checkpoint_every(3 + round % 4)
            .with_clock(Arc::new(ManualClock::new(START)));
        let ledger = Arc::new(Ledger::open_default(config).await.unwrap());
        let (people, _) = open_people(&ledger, CRASH_PEOPLE).await;
        let shop = open_merchant(&ledger, 900, 500).await;
        let fund = |id: u128, who: AccountNo, cents: i64| {
            PostRequest::new(TxnId(id), "top_up")
                .member("member", who)
                .channel("channel", "icbc")
                .amount("amount", yuan(cents))
        };
        // The same ids every round: duplicates after the first.
        let mut setup = vec![fund(1, shop, 1_000_00)];
        for (i, &p) in people.iter().enumerate() {
            setup.push(fund(10 + i as u128, p, 100_000_00));
        }
        for r in ledger.post_many(setup).await.unwrap() {
            r.unwrap();
        }
        let marketing = PostRequest::new(TxnId(2), "marketing_fund")
            .member("merchant", shop)
            .amount("amount", yuan(400_00));
        ledger.post(marketing).await.unwrap();
        ledger
            .issue_coupons(IssueCoupons {
                per_member: None,
                ..batch(CRASH_COUPONS, shop, 1_00, CouponFunding::Merchant)
            })
            .await
            .unwrap();
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        for iteration in 0..10_000u64 {
            let packet = crash_packet(round, iteration);
            ledger
                .send_red_packet(SendRedPacket {
                    id: packet,
                    sender: people[(iteration % 7) as usize].to_string(),
                    total: yuan(60_00),
                    count: CRASH_PACKETS,
                    lucky: true,
                    expiry_ms: None,
                })
                .await
                .unwrap();
            let mut tasks = Vec::new();
            for (i, &who) in people.iter().enumerate() {
                let (ledger, out) = (Arc::clone(&ledger), Arc::clone(&out));
                tasks.push(tokio::spawn(async move {
                    // Claims one at a time and in calls of many.
                    let claims = if i % 2 == 0 {
                        vec![ledger.claim_red_packet(packet, &who.to_string()).await]
                    } else {
                        ledger
                            .claim_red_packets(vec![(packet, who.to_string())])
                            .await
                            .unwrap()
                    };
                    for c in claims.into_iter().flatten() {
                        writeln!(
                            out.lock().unwrap(),
                            "CLAIM {} {} {} {}",
                            packet.0,
                            who,
                            c.posted.id.0,
                            c.amount
                        )
                        .unwrap();
                    }
                }));
            }
            for k in 0..CRASH_TRIES {
                let serial = crash_serial(round, iteration, k);
                let payer = people[((iteration + k) % u64::from(CRASH_PEOPLE)) as usize];
                let (ledger, out) = (Arc::clone(&ledger), Arc::clone(&out));
                tasks.push(tokio::spawn(async move {
                    let request = coupon_pay(payer, shop, CRASH_COUPONS, serial, 10_00);
                    let answers = if k % 2 == 0 {
                        vec![ledger.pay_with_coupon(request).await]
                    } else {
                        ledger.pay_with_coupons(vec![request]).await.unwrap()
                    };
                    for answer in answers {
                        match answer {
                            Ok(r) => writeln!(
                                out.lock().unwrap(),
                                "REDEEM {serial} {} {}",
                                r.posted.id.0,
                                r.merchant_part
                            )
                            .unwrap(),
                            Err(
                                LedgerError::MarketingShort { .. }
                                | LedgerError::CouponAlreadyRedeemed(_),
                            ) => {}
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            out.lock().unwrap().flush().unwrap();
        }
    });
    std::process::exit(0)
}

#[test]
fn kill_9_during_a_storm_of_claims_and_redemptions_loses_no_acknowledged_one_and_pays_none_twice() {
    use rand::{Rng, SeedableRng};
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    if let (Ok(dir), Ok(round)) = (std::env::var(CRASH_DIR), std::env::var(CRASH_ROUND)) {
        crash_child(&dir, round.parse().unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x12ed);
    // (packet, member, claim id, amount), (serial, payment id, merchant part)
    let mut claims: Vec<(u128, String, u128, Decimal)> = Vec::new();
    let mut redeemed: Vec<(u64, u128, Decimal)> = Vec::new();
    for round in 0..4u64 {
        let kill_after = rng.gen_range(20..600usize);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_9_during_a_storm_of_claims_and_redemptions_loses_no_acknowledged_one_and_pays_none_twice",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR, dir.path())
            .env(CRASH_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut seen = 0usize;
        let mut killed = false;
        // Read to the end of the pipe: the lines still in it when the kill
        // lands are acknowledgements too — the newest, the likeliest lost.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["CLAIM", packet, who, id, amount] => {
                    claims.push((
                        packet.parse().unwrap(),
                        who.to_string(),
                        id.parse().unwrap(),
                        amount.parse().unwrap(),
                    ));
                    seen += 1;
                }
                ["REDEEM", serial, id, part] => {
                    redeemed.push((
                        serial.parse().unwrap(),
                        id.parse().unwrap(),
                        part.parse().unwrap(),
                    ));
                    seen += 1;
                }
                _ => {}
            }
            if seen >= kill_after && !killed {
                child.kill().unwrap();
                killed = true;
            }
        }
        if !killed {
            child.kill().unwrap();
        }
        child.wait().unwrap();
        assert!(seen > 0, "round {round}: the child acknowledged nothing");

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = Config::sled(dir.path())
                .with_shards(2)
                .with_clock(Arc::new(ManualClock::new(START)));
            let ledger = Ledger::open_default(config).await.unwrap();
            assert!(ledger.engine().audit().await.unwrap().ok());
            // Every acknowledged claim is there, and pays what was said.
            for (packet, who, id, amount) in &claims {
                let txn = ledger.engine().transaction(TxnId(*id)).await.unwrap();
                let txn = txn.unwrap_or_else(|| panic!("round {round}: claim {id} lost"));
                assert_eq!(txn.result, Ok(()), "round {round}: claim {id}");
                let member = AccountNo::parse(who).unwrap();
                let to = member.account_id(AccountType::Balance.code());
                let credited: Decimal = txn
                    .details
                    .iter()
                    .filter(|d| d.account == to && d.side == Side::Credit)
                    .map(|d| d.amount)
                    .sum();
                assert_eq!(credited, *amount, "round {round}: claim {id}");
                // Claiming again after the restart is refused.
                let again = ledger.claim_red_packet(TxnId(*packet), who).await;
                assert!(
                    matches!(again, Err(LedgerError::AlreadyClaimed { .. })),
                    "round {round}: {again:?}"
                );
            }
            // None twice: the red-packet audit (each member once, each
            // claim its part, sent = claimed + returned + open).
            let audit = ledger.audit_red_packets().await.unwrap();
            assert!(audit.ok(), "round {round}: {audit:?}");
            // Every acknowledged redemption is there.
            for (serial, id, _) in &redeemed {
                let txn = ledger.engine().transaction(TxnId(*id)).await.unwrap();
                let txn = txn.unwrap_or_else(|| panic!("round {round}: redemption {id} lost"));
                assert_eq!(txn.result, Ok(()), "round {round}: coupon {serial}");
            }
            // The storms the children got to (each sends its red packet
            // before its redemptions; a child runs on after the last line
            // read, until the kill lands).
            let mut iterations = Vec::new();
            for r in 0..=round {
                for i in 0.. {
                    if ledger
                        .red_packet(crash_packet(r, i))
                        .await
                        .unwrap()
                        .is_none()
                    {
                        break;
                    }
                    iterations.push((r, i));
                }
            }
            assert!(!iterations.is_empty());
            // No coupon tried in any storm paid twice, and the marketing
            // account paid exactly what the committed uses took.
            let mut paid = Decimal::ZERO;
            for &(r, i) in &iterations {
                for k in 0..CRASH_TRIES {
                    let coupon = CouponId {
                        batch: TxnId(CRASH_COUPONS),
                        serial: crash_serial(r, i, k),
                    };
                    if k % 5 == 4 {
                        continue; // the same coupon as k - 1
                    }
                    let mut used = 0;
                    for n in 0..COUPON_USES_MAX {
                        let Some(v) = ledger
                            .engine()
                            .transaction(coupon_use_id(coupon, n))
                            .await
                            .unwrap()
                        else {
                            break;
                        };
                        if v.result.is_ok() {
                            used += 1;
                            paid += yuan(1_00);
                        }
                    }
                    assert!(used <= 1, "round {round}: {coupon:?} paid {used} times");
                    let acked = redeemed.iter().filter(|x| x.0 == coupon.serial).count();
                    assert!(
                        acked <= used,
                        "round {round}: {coupon:?} acknowledged {acked}, used {used}"
                    );
                }
            }
            let shop = open_merchant(&ledger, 900, 500).await;
            let left = marketing_of(&ledger, shop).await;
            assert_eq!(left + paid, yuan(400_00), "round {round}");
            // Redeeming an acknowledged coupon again after the restart is refused.
            if let Some((serial, ..)) = redeemed.last() {
                let people = open_people(&ledger, CRASH_PEOPLE).await.0;
                let again = ledger
                    .pay_with_coupon(coupon_pay(people[0], shop, CRASH_COUPONS, *serial, 10_00))
                    .await;
                assert!(
                    matches!(again, Err(LedgerError::CouponAlreadyRedeemed(_))),
                    "round {round}: {again:?}"
                );
            }
            ledger.engine().shutdown().await.unwrap();
        });
    }
    assert!(!redeemed.is_empty() && !claims.is_empty());
}

async fn marketing_of(ledger: &Ledger, shop: AccountNo) -> Decimal {
    ledger
        .account(shop, AccountType::Marketing)
        .await
        .unwrap()
        .unwrap()
        .balance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_of_many_red_packets_in_one_call_are_answered_each_by_its_own_transaction() {
    let w = world(12).await;
    w.top_up(1, w.people[0], 1_000_00).await;
    for id in [41u128, 42, 43] {
        w.ledger
            .send_red_packet(w.send(id, 10_00, 4, true))
            .await
            .unwrap();
    }
    let mut claims = Vec::new();
    for (i, &who) in w.people.iter().enumerate().skip(1) {
        for id in [43u128, 41, 42] {
            claims.push((TxnId(id), who.to_string()));
        }
        if i == 3 {
            claims.push((TxnId(41), who.to_string())); // a second claim
            claims.push((TxnId(99), who.to_string())); // no such red packet
        }
    }
    let answers = w.ledger.claim_red_packets(claims.clone()).await.unwrap();
    assert_eq!(answers.len(), claims.len());
    let mut paid = std::collections::BTreeMap::new();
    for ((packet, who), answer) in claims.iter().zip(&answers) {
        match answer {
            Ok(c) => {
                // Its own transaction: the claimant credited its amount.
                let txn = w
                    .ledger
                    .engine()
                    .transaction(c.posted.id)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(txn.result, Ok(()));
                let to = AccountNo::parse(who)
                    .unwrap()
                    .account_id(AccountType::Balance.code());
                let credited: Decimal = txn
                    .details
                    .iter()
                    .filter(|d| d.account == to && d.side == Side::Credit)
                    .map(|d| d.amount)
                    .sum();
                assert_eq!(credited, c.amount, "{packet:?} {who}");
                *paid.entry(packet.0).or_insert(0) += 1;
            }
            Err(LedgerError::AllClaimed(_) | LedgerError::AlreadyClaimed { .. }) => {}
            Err(LedgerError::UnknownRedPacket(id)) => assert_eq!(*id, TxnId(99)),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(paid, [(41, 4), (42, 4), (43, 4)].into_iter().collect());
    w.audits_ok().await;
}

#[tokio::test]
async fn calls_of_too_many_claims_or_redemptions_are_refused_whole() {
    let w = world(2).await;
    let shop = open_merchant(&w.ledger, 900, 500).await;
    w.ledger
        .issue_coupons(batch(80, shop, 1_00, CouponFunding::Merchant))
        .await
        .unwrap();
    w.top_up(1, w.people[0], 100_00).await;
    w.ledger
        .send_red_packet(w.send(81, 10_00, 2, false))
        .await
        .unwrap();
    let before = w.ledger.engine().audit().await.unwrap();
    let too_many = SUBMIT_TRANSACTIONS_MAX + 1;
    let claims = vec![(TxnId(81), w.people[1].to_string()); too_many];
    let err = w.ledger.claim_red_packets(claims).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Engine(SubmitError::BatchTooLarge { .. })),
        "{err:?}"
    );
    let pays = (0..too_many as u64)
        .map(|serial| coupon_pay(w.people[1], shop, 80, serial, 5_00))
        .collect();
    let err = w.ledger.pay_with_coupons(pays).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Engine(SubmitError::BatchTooLarge { .. })),
        "{err:?}"
    );
    let after = w.ledger.engine().audit().await.unwrap();
    assert_eq!(
        (after.committed, after.details),
        (before.committed, before.details)
    );
    // Empty calls answer nothing.
    assert!(w
        .ledger
        .claim_red_packets(Vec::new())
        .await
        .unwrap()
        .is_empty());
    assert!(w
        .ledger
        .pay_with_coupons(Vec::new())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn many_red_packets_are_sent_in_one_call_each_answered_as_alone() {
    let w = world(4).await;
    let (rich, poor) = (w.people[0], w.people[1]);
    w.top_up(1, rich, 100_00).await;
    w.top_up(2, poor, 5_00).await;
    let from = |id: u128, who: AccountNo, cents: i64, count: u32| SendRedPacket {
        id: TxnId(id),
        sender: who.to_string(),
        total: yuan(cents),
        count,
        lucky: true,
        expiry_ms: None,
    };
    let call = vec![
        from(10, rich, 30_00, 3),
        from(11, rich, 20_00, 0), // no packets: typed error
        from(12, poor, 6_00, 2),  // more than the sender has
        from(10, rich, 30_00, 3), // the first again, in the same call
        from(13, rich, 40_00, 4),
        from(13, rich, 41_00, 4),        // another red packet under id 13
        from(14, w.unverified, 1_00, 1), // not verified
    ];
    let answers = w.ledger.send_red_packets(call).await.unwrap();
    let first = answers[0].as_ref().unwrap();
    assert!(first.funded);
    assert_eq!(answers[3].as_ref().unwrap(), first);
    assert!(answers[4].as_ref().unwrap().funded);
    let errors: Vec<_> = [1, 2, 5, 6]
        .iter()
        .map(|&i| answers[i].as_ref().unwrap_err())
        .collect();
    assert!(
        matches!(
            errors.as_slice(),
            [
                LedgerError::RedPacketCount { .. },
                LedgerError::Rejected(_),
                LedgerError::RedPacketConflict(_),
                LedgerError::MemberNotVerified(_),
            ]
        ),
        "{errors:?}"
    );
    // Debited once each: 30.00 + 40.00; the refused one took nothing.
    assert_eq!(w.wallet(rich).await.balance, yuan(30_00));
    assert_eq!(w.wallet(poor).await.balance, yuan(5_00));
    // Sent again alone: the same red packet, nothing more debited.
    let again = w.ledger.send_red_packet(from(13, rich, 40_00, 4)).await;
    assert!(again.unwrap().funded);
    assert_eq!(w.wallet(rich).await.balance, yuan(30_00));
    let claimed = w.claim(13, w.people[2]).await.unwrap();
    assert!(claimed.amount > Decimal::ZERO);
    let audit = w.audits_ok().await;
    assert_eq!(audit.sent, yuan(70_00));
    // A call above the engine's batch bound is refused whole.
    let too_many = (0..=SUBMIT_TRANSACTIONS_MAX as u128)
        .map(|i| from(1_000 + i, rich, 1_00, 1))
        .collect();
    assert!(w.ledger.send_red_packets(too_many).await.is_err());
    assert_eq!(w.wallet(rich).await.balance, yuan(30_00));
}
