//! The crash loop's business part: beside the engine clients, the child
//! runs the product workloads through a `tally_business::Ledger` on the
//! same store — red packets sent and claimed (the sender's own claims and
//! second claims refused), coupons of one merchant's batch redeemed (some
//! twice, some from an earlier cycle, some while the marketing account is
//! short) — and prints every answer it was given (`BIZ <json>`).
//!
//! After each reopen the parent checks every acknowledged send, claim and
//! redemption: present with its original timestamp and result, whole
//! (details written); none twice among the answers; asked again, each is
//! refused (claimed already, redeemed already) or, for a send, answered
//! with the same red packet; the red-packet audit holds (sent = claimed +
//! returned + open, each claim its part) beside the engine's audit (money
//! conserved, no account below its floor, marketing included).

use super::{write_out, CrashReport};
use anyhow::{anyhow, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use tally_business::{
    AccountNo, CouponFunding, CouponId, IssueCoupons, Ledger, LedgerError, MemberKind, MemberLevel,
    OnRefund, OpenMember, PayWithCoupon, PostRequest, SendRedPacket,
};
use tally_engine::{Timestamp, TxnId};

/// Two persons (valid ID card numbers), four members each: the rules allow
/// five per person.
const PERSONS: [&str; 2] = ["11010519491231002X", "110101199003074514"];
/// Members `MEMBER_SERIAL..+7` are people; the eighth is the merchant.
const MEMBER_SERIAL: u64 = 9_100_000;
const PEOPLE: u64 = 7;
/// Each cycle's top-up of every member, and the merchant's marketing
/// funding, in fen: small, so that the marketing account runs short and
/// the daily limits hold for thousands of cycles.
const TOP_UP_FEN: i64 = 20_00;
const MARKETING_FEN: i64 = 2_00;
/// The one coupon batch (issued once; issuing it again changes nothing).
const COUPON_BATCH: TxnId = TxnId(0xC0 << 120);
const COUPON_FEN: i64 = 50;
const PAYMENT_FEN: i64 = 2_00;
/// Coupon serials of cycle `c`: `c * SERIALS_PER_CYCLE + 0..SERIALS_USED`.
const SERIALS_PER_CYCLE: u64 = 1_000;
const SERIALS_USED: u64 = 300;
/// Id tags (bits 56..64 of the low word; the engine clients use 0..3).
const TAG_TOP_UP: u128 = 0xF0;
const TAG_SEND: u128 = 0xF1;

/// One answer the child was given, as it prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) enum BizAck {
    Send {
        request: SendRequest,
        answer: Result<Acked, String>,
    },
    Claim {
        packet: TxnId,
        member: String,
        answer: Result<Acked, String>,
    },
    Redeem {
        serial: u64,
        payer: String,
        answer: Result<Acked, String>,
    },
}

/// A send, as asked (to ask it again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct SendRequest {
    packet: TxnId,
    sender: String,
    total: Decimal,
    count: u32,
    lucky: bool,
}

/// An accepted answer: its engine transaction, when it was sequenced, the
/// money (sent, claimed, or the coupon's discount), and whether it was the
/// first answer given again (the same payment asked twice).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Acked {
    txn: TxnId,
    timestamp: Option<Timestamp>,
    amount: Decimal,
    #[serde(default)]
    duplicate: bool,
}

impl BizAck {
    fn answer(&self) -> &Result<Acked, String> {
        match self {
            BizAck::Send { answer, .. }
            | BizAck::Claim { answer, .. }
            | BizAck::Redeem { answer, .. } => answer,
        }
    }
}

fn yuan(fen: i64) -> Decimal {
    Decimal::new(fen, 2)
}

fn biz_id(cycle: u64, tag: u128, n: u64) -> TxnId {
    TxnId(u128::from(cycle + 1) << 64 | tag << 56 | u128::from(n))
}

fn coupon(serial: u64) -> CouponId {
    CouponId {
        batch: COUPON_BATCH,
        serial,
    }
}

/// The variant of a refusal (`AlreadyClaimed`), as printed.
fn refusal(e: &LedgerError) -> String {
    let text = format!("{e:?}");
    text.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_string()
}

/// A refusal is an answer; an engine failure ends the child (the parent
/// then reports that it ended by itself).
fn answered<T>(r: Result<T, LedgerError>) -> Result<Result<T, String>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e @ (LedgerError::Engine(_) | LedgerError::Open(_) | LedgerError::MemberRecord(_))) => {
            Err(anyhow!("business: {e}"))
        }
        Err(e) => Ok(Err(refusal(&e))),
    }
}

// ------------------------------------------------------------- the child

/// The members (people, then the merchant), opened again each cycle
/// (opening a member again with the same data changes nothing).
async fn open_members(ledger: &Ledger) -> Result<Vec<AccountNo>> {
    let mut numbers = Vec::new();
    for k in 0..=PEOPLE {
        let merchant = k == PEOPLE;
        let request = OpenMember {
            serial: MEMBER_SERIAL + k,
            kind: if merchant {
                MemberKind::MerchantMicro
            } else {
                MemberKind::PersonalUser
            },
            name: format!("crash member {k}"),
            id_number: PERSONS[(k % 2) as usize].to_string(),
            legal: false,
            level: MemberLevel(if merchant { "merchant" } else { "verified" }.into()),
            verified: true,
        };
        let member = ledger
            .open_member(request)
            .await
            .map_err(|e| anyhow!("open member {k}: {e}"))?;
        numbers.push(member.number);
    }
    Ok(numbers)
}

/// Each cycle: money for every member, marketing money for the merchant,
/// and the coupon batch.
async fn fund(ledger: &Ledger, cycle: u64, members: &[AccountNo]) -> Result<()> {
    let merchant = members[PEOPLE as usize];
    for (i, &m) in members.iter().enumerate() {
        let top_up = PostRequest::new(biz_id(cycle, TAG_TOP_UP, i as u64), "top_up")
            .member("member", m)
            .channel("channel", "icbc")
            .amount("amount", yuan(TOP_UP_FEN));
        ledger
            .post(top_up)
            .await
            .map_err(|e| anyhow!("top-up: {e}"))?;
    }
    let marketing = PostRequest::new(biz_id(cycle, TAG_TOP_UP, 1_000), "marketing_fund")
        .member("merchant", merchant)
        .amount("amount", yuan(MARKETING_FEN));
    ledger
        .post(marketing)
        .await
        .map_err(|e| anyhow!("marketing: {e}"))?;
    ledger
        .issue_coupons(IssueCoupons {
            id: COUPON_BATCH,
            merchant: merchant.to_string(),
            face_value: yuan(COUPON_FEN),
            count: 1 << 30,
            valid_from: Timestamp(0),
            valid_until: Timestamp(u64::MAX),
            per_member: None,
            funding: CouponFunding::Merchant,
            on_refund: OnRefund::Void,
        })
        .await
        .map_err(|e| anyhow!("issue coupons: {e}"))?;
    Ok(())
}

/// The child's business members, opened and funded for this cycle.
pub(super) async fn child_setup(ledger: &Ledger, cycle: u64) -> Result<Vec<AccountNo>> {
    let members = open_members(ledger).await?;
    fund(ledger, cycle, &members).await?;
    Ok(members)
}

/// The child's business client: answers until killed (or 2^24 of them).
pub(super) async fn child_loop(
    ledger: &Ledger,
    members: Vec<AccountNo>,
    cycle: u64,
    seed: u64,
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sent: Vec<TxnId> = Vec::new();
    let merchant = members[PEOPLE as usize].to_string();
    for n in 0..1u64 << 24 {
        let who = members[rng.gen_range(0..PEOPLE) as usize].to_string();
        let ack = match rng.gen_range(0..10) {
            0..=1 => send(ledger, cycle, n, who, &mut rng, &mut sent).await?,
            2..=5 if !sent.is_empty() => {
                let packet = sent[rng.gen_range(0..sent.len())];
                let answer = answered(ledger.claim_red_packet(packet, &who).await)?;
                BizAck::Claim {
                    packet,
                    member: who,
                    answer: answer.map(|c| Acked {
                        txn: c.posted.id,
                        timestamp: c.posted.timestamp,
                        amount: c.amount,
                        duplicate: c.posted.duplicate,
                    }),
                }
            }
            _ => {
                // Mostly this cycle's serials (some twice); now and then
                // one of the cycle before (used there, maybe).
                let from = if cycle > 0 && rng.gen_ratio(1, 10) {
                    cycle - 1
                } else {
                    cycle
                };
                let serial = from * SERIALS_PER_CYCLE + rng.gen_range(0..SERIALS_USED);
                let request = PayWithCoupon {
                    payer: who.clone(),
                    merchant: merchant.clone(),
                    amount: yuan(PAYMENT_FEN),
                    fee: yuan(1),
                    coupon: coupon(serial),
                };
                let answer = answered(ledger.pay_with_coupon(request).await)?;
                BizAck::Redeem {
                    serial,
                    payer: who,
                    answer: answer.map(|r| Acked {
                        txn: r.posted.id,
                        timestamp: r.posted.timestamp,
                        amount: r.discount,
                        duplicate: r.posted.duplicate,
                    }),
                }
            }
        };
        write_out(&format!("BIZ {}\n", serde_json::to_string(&ack)?))?;
    }
    Ok(())
}

async fn send(
    ledger: &Ledger,
    cycle: u64,
    n: u64,
    sender: String,
    rng: &mut ChaCha8Rng,
    sent: &mut Vec<TxnId>,
) -> Result<BizAck> {
    let count = rng.gen_range(2..=6u32);
    let request = SendRequest {
        packet: biz_id(cycle, TAG_SEND, n),
        sender,
        total: yuan(i64::from(count) * rng.gen_range(1..=10)),
        count,
        lucky: rng.gen_bool(0.5),
    };
    let answer = match answered(ledger.send_red_packet(send_request(&request)).await)? {
        Ok(_) => {
            let view = ledger
                .engine()
                .transaction(request.packet)
                .await
                .map_err(|e| anyhow!("read the send: {e}"))?;
            sent.push(request.packet);
            Ok(Acked {
                txn: request.packet,
                timestamp: view.map(|v| v.timestamp),
                amount: request.total,
                duplicate: false,
            })
        }
        Err(e) => Err(e),
    };
    Ok(BizAck::Send { request, answer })
}

fn send_request(r: &SendRequest) -> SendRedPacket {
    SendRedPacket {
        id: r.packet,
        sender: r.sender.clone(),
        total: r.total,
        count: r.count,
        lucky: r.lucky,
        expiry_ms: None,
    }
}

// ------------------------------------------------------------ the parent

/// Checks the business answers `which` (indexes into `acks`, each with its
/// cycle) on the reopened store; see the module doc.
pub(super) async fn check(
    ledger: &Ledger,
    acks: &[(u64, BizAck)],
    which: &[usize],
    report: &mut CrashReport,
) -> Result<()> {
    let audit = ledger
        .audit_red_packets()
        .await
        .map_err(|e| anyhow!("red-packet audit: {e}"))?;
    if !audit.ok() {
        report.violation(format!("the red-packet audit fails: {audit:?}"));
    }
    let mut claimed: HashMap<TxnId, u32> = HashMap::new();
    for (_, ack) in acks {
        if let BizAck::Claim {
            packet,
            answer: Ok(_),
            ..
        } = ack
        {
            *claimed.entry(*packet).or_default() += 1;
        }
    }
    for &i in which {
        let Some((cycle, ack)) = acks.get(i) else {
            continue;
        };
        let Ok(acked) = ack.answer() else { continue };
        if let BizAck::Send { request, .. } = ack {
            let view = ledger
                .red_packet(request.packet)
                .await
                .map_err(|e| anyhow!("red packet {:?}: {e}", request.packet))?;
            let at_least = claimed.get(&request.packet).copied().unwrap_or(0);
            if !view
                .as_ref()
                .is_some_and(|v| v.funded && v.claimed >= at_least)
            {
                report.violation(format!(
                    "cycle {cycle}: {:?}: {at_least} claims answered, the red packet is {view:?}",
                    request.packet
                ));
            }
        }
        let view = ledger
            .engine()
            .transaction(acked.txn)
            .await
            .map_err(|e| anyhow!("read {:?}: {e}", acked.txn))?;
        let Some(view) = view else {
            report.lose(format!("cycle {cycle}: {ack:?} answered, lost"));
            continue;
        };
        let same_time = acked.timestamp.is_none_or(|t| t == view.timestamp);
        if view.result.is_err() || !same_time || view.details.is_empty() {
            report.violation(format!(
                "cycle {cycle}: {ack:?} answered, stored {:?} at {:?} with {} details",
                view.result,
                view.timestamp,
                view.details.len()
            ));
        }
        ask_again(ledger, *cycle, ack, acked, report).await?;
    }
    Ok(())
}

/// An acknowledged answer asked for again: a claim is refused as claimed
/// already; a redemption, sent again as it was, gets its first answer (a
/// duplicate) and, by another payer, is refused as redeemed already
/// (never paid twice); a send answers with the same red packet.
async fn ask_again(
    ledger: &Ledger,
    cycle: u64,
    ack: &BizAck,
    acked: &Acked,
    report: &mut CrashReport,
) -> Result<()> {
    let again = match ack {
        BizAck::Claim { packet, member, .. } => {
            match ledger.claim_red_packet(*packet, member).await {
                Err(LedgerError::AlreadyClaimed { .. }) => return Ok(()),
                other => format!("{other:?}"),
            }
        }
        BizAck::Redeem { serial, payer, .. } => {
            let merchant = merchant_number()?.to_string();
            let pay = |payer: String| PayWithCoupon {
                payer,
                merchant: merchant.clone(),
                amount: yuan(PAYMENT_FEN),
                fee: yuan(1),
                coupon: coupon(*serial),
            };
            // The same request: its first answer, as a duplicate.
            match ledger.pay_with_coupon(pay(payer.clone())).await {
                Ok(r)
                    if r.posted.duplicate
                        && r.posted.id == acked.txn
                        && (r.posted.timestamp, r.discount) == (acked.timestamp, acked.amount) => {}
                other => {
                    report.violation(format!(
                        "cycle {cycle}: {ack:?} asked again, answered {other:?}"
                    ));
                    return Ok(());
                }
            }
            // Another payer: the coupon is used.
            let other = people()?
                .into_iter()
                .map(|m| m.to_string())
                .find(|m| m != payer)
                .unwrap_or_default();
            match ledger.pay_with_coupon(pay(other)).await {
                Err(LedgerError::CouponAlreadyRedeemed(_)) => return Ok(()),
                other => format!("{other:?} to another payer"),
            }
        }
        BizAck::Send { request, .. } => match ledger.send_red_packet(send_request(request)).await {
            Ok(view) if view.funded && view.packet.total == acked.amount => return Ok(()),
            other => format!("{other:?}"),
        },
    };
    report.violation(format!(
        "cycle {cycle}: {ack:?} asked again, answered {again}"
    ));
    Ok(())
}

fn people() -> Result<Vec<AccountNo>> {
    (0..PEOPLE)
        .map(|k| {
            AccountNo::new(tally_business::AccountClass::Personal, MEMBER_SERIAL + k)
                .map_err(|e| anyhow!("a member's number: {e}"))
        })
        .collect()
}

fn merchant_number() -> Result<AccountNo> {
    AccountNo::new(
        tally_business::AccountClass::Merchant,
        MEMBER_SERIAL + PEOPLE,
    )
    .map_err(|e| anyhow!("the merchant's number: {e}"))
}

/// No claim of one member on one red packet, and no coupon, accepted
/// twice among all the answers; then the counts. The same payment asked
/// twice (same payer, amount and fee) is answered the first answer again,
/// marked a duplicate: that is one acceptance, and it must be the first
/// one exactly (transaction, timestamp, discount); any other second
/// acceptance of a coupon is a coupon paid twice.
pub(super) fn check_once_and_count(acks: &[(u64, BizAck)], report: &mut CrashReport) {
    let mut claims = HashSet::new();
    let mut redeemed: HashMap<u64, &Acked> = HashMap::new();
    let mut per_packet: HashMap<TxnId, u32> = HashMap::new();
    for (cycle, ack) in acks {
        let ok = ack.answer().is_ok();
        report.committed += u64::from(ok);
        report.refused += u64::from(!ok);
        let twice = match ack {
            BizAck::Send { .. } => {
                report.red_packets_sent += u64::from(ok);
                false
            }
            BizAck::Claim { packet, member, .. } => {
                report.claims += u64::from(ok);
                report.claims_refused += u64::from(!ok);
                *per_packet.entry(*packet).or_default() += u32::from(ok);
                ok && !claims.insert((*packet, member.clone()))
            }
            BizAck::Redeem { serial, answer, .. } => {
                report.redemptions_refused += u64::from(!ok);
                match answer {
                    Ok(acked) => match redeemed.get(serial) {
                        Some(first) => {
                            report.redemptions_repeated += 1;
                            !same_acceptance(first, acked)
                        }
                        None => {
                            report.redemptions += 1;
                            redeemed.insert(*serial, acked);
                            false
                        }
                    },
                    Err(_) => false,
                }
            }
        };
        if twice {
            report.violation(format!("cycle {cycle}: accepted twice: {ack:?}"));
        }
    }
    let sends: HashMap<TxnId, u32> = acks
        .iter()
        .filter_map(|(_, a)| match a {
            BizAck::Send { request, .. } => Some((request.packet, request.count)),
            _ => None,
        })
        .collect();
    for (packet, claimed) in per_packet {
        if sends.get(&packet).is_some_and(|&count| claimed > count) {
            report.violation(format!("{packet:?}: {claimed} claims accepted"));
        }
    }
}

/// `again` repeats the acceptance `first`: marked a duplicate, the same
/// transaction at the same time for the same money.
fn same_acceptance(first: &Acked, again: &Acked) -> bool {
    again.duplicate
        && (first.txn, first.timestamp, first.amount) == (again.txn, again.timestamp, again.amount)
}

/// Parses a `BIZ` line's JSON.
pub(super) fn parse(json: &str) -> Option<BizAck> {
    serde_json::from_str(json).ok()
}
