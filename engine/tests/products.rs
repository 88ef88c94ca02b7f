//! Product accounts end to end on the sled store: red packets (send, claim,
//! expiry, audit, restart) and their bad input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

use rust_decimal::Decimal;
use std::sync::Arc;
use tally_engine::business::*;
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
    // Every member claims twice at once.
    for &who in w.people[1..].iter().chain(&w.people[1..]) {
        let ledger = Arc::clone(&ledger);
        tasks.push(tokio::spawn(async move {
            ledger.claim_red_packet(TxnId(7), &who.to_string()).await
        }));
    }
    let (mut paid, mut total, mut refused) = (0, Decimal::ZERO, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(claimed) => {
                paid += 1;
                total += claimed.amount;
            }
            Err(LedgerError::AllClaimed(_) | LedgerError::AlreadyClaimed { .. }) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((paid, refused, total), (20, 60, yuan(88_88)));
    let audit = ledger.audit_red_packets().await.unwrap();
    assert!(audit.ok(), "{audit:?}");
    assert_eq!((audit.claims, audit.open), (20, yuan(0)));
    assert!(ledger.engine().audit().await.unwrap().ok());
}
