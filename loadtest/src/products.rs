//! `run --workload redpacket|coupon|storm`: storms on the product
//! accounts, through the business layer's `Ledger` (not raw transfers).
//!
//! - `redpacket`: `--accounts` members; `--transactions / --accounts` red
//!   packets of 200 lucky packets (200.00 each), sent by rotating senders
//!   from `--clients` tasks side by side, `--batch-max` a
//!   `send_red_packets` call; then every member tries to claim every red packet,
//!   all red packets at once, spread over `--clients` tasks.
//!   `--transactions` is the number of claim attempts (at least one red
//!   packet). Counted: sends, claims paid, claims refused (all claimed or
//!   claimed already).
//! - `coupon`: one merchant issues 1,000,000 coupons of 1.00 and funds its
//!   marketing account for half of the `--transactions` redemptions, so it
//!   runs dry mid-run; every 20th attempt reuses the previous coupon with
//!   another payer (a double redemption). An alert fires below 10% of the
//!   funding. Counted: redemptions, refused for short funding, refused as
//!   redeemed already, alerts.
//! - `storm`: `--transactions` plain uniform transfers between accounts of
//!   their own in `STORM_WINDOWS` windows, alone and beside a coupon storm
//!   on the one marketing account by turns (every coupon funded, so every
//!   redemption posts; `--rate` offers the storm at that many redemptions
//!   a second); the storm must commit redemptions inside each beside
//!   window. Reported: the medians alone and beside, each window, the
//!   storm's rate beside, the slowdown.
//!
//! Each client sends `--batch-max` operations per `Ledger` call
//! (`send_red_packets`, `claim_red_packets`, the typed `redeem_coupons`); every operation's latency is
//! its call's. Members are one person each (distinct ID card numbers).
//! After the run the ledger is shut down and reopened on the store; the engine's audit, the red-packet audit (sent =
//! claimed + returned + open, each claim its part, the product accounts
//! holding what is open) and, for coupons, "each coupon paid once, the
//! marketing account paid exactly what it was funded minus what is left,
//! never below zero" must all hold.

use crate::business::{business_client, BusinessParties};
use crate::report::{self, Invariants, Latency, Machine, Parameters, ProductCounts, Report};
use crate::setup::{resident_bytes, ClockKind, RunArgs, StoreSetup};
use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tally_business::{
    AccountNo, AccountType, CouponFunding, CouponId, IssueCoupons, Ledger, LedgerError, MemberKind,
    MemberLevel, OnRefund, OpenMember, PostRequest, Redeem, SendRedPacket,
};
use tally_engine::{
    AccountId, Config, NewAccount, Timestamp, Transaction, TxnCode, TxnId, SUBMIT_TRANSACTIONS_MAX,
};

/// What each member of `business` is topped up with at setup: 1,000.00.
const BUSINESS_FUNDING_FEN: i64 = 100_000;
/// Merchants of `business`, at most (one per 100 members).
const BUSINESS_MERCHANTS_MAX: u64 = 100;

/// A valid ID card number (GB 11643) for the merchant.
const ID_CARD: &str = "11010519491231002X";

/// A distinct valid ID card number (GB 11643) per member: one person per
/// member (the rules cap members per person).
fn id_card(seq: u64) -> String {
    let body = format!(
        "11010519{:02}{:02}{:02}{:03}",
        60 + seq / 336_000 % 40,
        1 + seq / 28_000 % 12,
        1 + seq / 1_000 % 28,
        seq % 1_000
    );
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .chars()
        .zip(W)
        .map(|(c, w)| c.to_digit(10).unwrap_or(0) * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}
const PACKETS: u32 = 200;
const PACKET_FEN: i64 = 20_000; // 200.00
const COUPON_FEN: i64 = 100; // 1.00
const PAYMENT_FEN: i64 = 1_000; // 10.00
const FEE_FEN: i64 = 6;
const COUPON_BATCH: TxnId = TxnId(7_000_000);
const MEMBERS_AT_ONCE: usize = 256;

fn yuan(fen: i64) -> Decimal {
    Decimal::new(fen, 2)
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    committed: u64,
    refused: u64,
    counts: ProductCounts,
    /// Coupon serial → merchant part paid, for every redemption.
    redeemed: BTreeMap<u64, Decimal>,
    twice: u64,
    /// When the last call that committed a redemption was answered.
    last_commit: Option<Instant>,
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| anyhow!("cannot create a latency histogram: {e:?}"))
}

fn per_second(n: u64, since: Instant) -> f64 {
    let secs = since.elapsed().as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

pub fn run_products(
    args: &RunArgs,
    config: Config,
    store: &StoreSetup,
    shards: u16,
) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(products(args, config, store, shards))
}

async fn products(args: &RunArgs, config: Config, store: &StoreSetup, shards: u16) -> Result<bool> {
    let say = |text: String| {
        if !args.no_progress {
            eprintln!("{text}");
        }
    };
    let storm = args.workload == crate::workload::WorkloadKind::Storm;
    let business = args.workload == crate::workload::WorkloadKind::Business;
    let coupon = args.workload == crate::workload::WorkloadKind::Coupon || storm;
    let members = args.accounts;
    if members < 2 {
        bail!("--accounts must be at least 2");
    }
    let attempts = args.transactions.max(1);
    let ledger = Arc::new(
        Ledger::open_default(config.clone())
            .await
            .map_err(|e| anyhow!("cannot open the ledger: {e}"))?,
    );
    let started = Instant::now();
    // `--clock simulated`: one thing at a time, in a fixed order, so that
    // the same seed gives the same state whatever the shard count.
    let ordered = args.clock == ClockKind::Simulated;
    let people = open_members(&ledger, members, ordered).await?;
    let merchant = ledger
        .open_member(OpenMember {
            serial: 1,
            kind: MemberKind::MerchantMicro,
            name: "merchant".into(),
            id_number: ID_CARD.into(),
            legal: false,
            level: MemberLevel("merchant".into()),
            verified: true,
        })
        .await
        .map_err(|e| anyhow!("opening the merchant: {e}"))?
        .number;
    let mut setup_committed = 0u64;
    let mut next_id = 1u128 << 100;
    let mut top_up = |who: AccountNo, fen: i64| {
        next_id += 1;
        PostRequest::new(TxnId(next_id), "top_up")
            .member("member", who)
            .channel("channel", "icbc")
            .amount("amount", yuan(fen))
    };
    let packets = (attempts / members).max(1);
    let coupons_max = 1_000_000.max(attempts);
    // `coupon` funds half its attempts, so the account runs dry mid-run;
    // `storm` funds every coupon, so every redemption of the storm posts
    // to the one marketing account (a storm of refusals decided in memory
    // would spare the engine and flatter the figure).
    let (funded_coupons, paid_per_payer) = if storm {
        (coupons_max, coupons_max / members + 2)
    } else {
        (attempts / 2, attempts / members + 2)
    };
    let funding_fen = i64::try_from(funded_coupons)
        .unwrap_or(i64::MAX / 2)
        .saturating_mul(COUPON_FEN);
    let mut requests = Vec::new();
    let mut merchants = vec![merchant];
    if business {
        merchants.extend(open_merchants(&ledger, members).await?);
        for &p in &people {
            requests.push(top_up(p, BUSINESS_FUNDING_FEN));
        }
    } else if coupon {
        let per_payer = i64::try_from(paid_per_payer).unwrap_or(i64::MAX / PAYMENT_FEN);
        for &p in &people {
            requests.push(top_up(p, per_payer * PAYMENT_FEN));
        }
        requests.push(top_up(merchant, funding_fen));
    } else {
        for p in 0..packets {
            let sender = people[(p % members) as usize];
            requests.push(top_up(sender, PACKET_FEN));
        }
    }
    for chunk in requests.chunks(1_000) {
        for result in ledger
            .post_many(chunk.to_vec())
            .await
            .map_err(|e| anyhow!("funding: {e}"))?
        {
            result.map_err(|e| anyhow!("funding: {e}"))?;
            setup_committed += 1;
        }
    }
    let mut alerts = ledger.subscribe();
    if coupon {
        next_id += 1;
        let fund = PostRequest::new(TxnId(next_id), "marketing_fund")
            .member("merchant", merchant)
            .amount("amount", yuan(funding_fen));
        ledger
            .post(fund)
            .await
            .map_err(|e| anyhow!("funding the marketing account: {e}"))?;
        setup_committed += 1;
        let threshold = yuan(funding_fen / 10);
        ledger
            .set_marketing_alert(&merchant.to_string(), threshold)
            .await
            .map_err(|e| anyhow!("alert: {e}"))?;
        let now = Timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        );
        ledger
            .issue_coupons(IssueCoupons {
                id: COUPON_BATCH,
                merchant: merchant.to_string(),
                face_value: yuan(COUPON_FEN),
                count: coupons_max,
                valid_from: Timestamp(now.0.saturating_sub(3_600_000_000_000)),
                valid_until: Timestamp(now.0.saturating_add(30 * 86_400_000_000_000)),
                per_member: None,
                funding: CouponFunding::Merchant,
                on_refund: OnRefund::Restore,
            })
            .await
            .map_err(|e| anyhow!("issuing coupons: {e}"))?;
    }
    say(format!(
        "setup: {members} members opened and funded in {:.2} s",
        started.elapsed().as_secs_f64()
    ));

    let clients = args.clients.max(1) as usize;
    let people = Arc::new(people);
    let mut latency = histogram()?;
    let mut seen = Seen::default();
    let committed = Arc::new(AtomicU64::new(0));
    let per_call = args.batch_max.max(1);
    let start = Instant::now();
    if storm {
        setup_committed += open_transfer_accounts(&ledger, members).await?;
        let run = Storm {
            ledger: Arc::clone(&ledger),
            people: Arc::clone(&people),
            merchant,
            members,
            clients,
            per_call,
            coupons: coupons_max,
            rate: args.rate,
        };
        storm_windows(&run, attempts, &mut latency, &mut seen, &say).await?;
    } else if business {
        let merchants = Arc::new(merchants);
        let mut tasks = Vec::new();
        for c in 0..clients as u64 {
            let ledger = Arc::clone(&ledger);
            let parties = BusinessParties {
                people: Arc::clone(&people),
                merchants: Arc::clone(&merchants),
                seed: args.seed,
                ordered,
            };
            let counter = Arc::clone(&committed);
            tasks.push(tokio::spawn(async move {
                let mut h = histogram()?;
                let range = (c, clients as u64, attempts);
                let s = business_client(ledger, parties, range, per_call, counter, &mut h).await?;
                Ok::<_, anyhow::Error>((h, s))
            }));
        }
        for task in tasks {
            let (h, s) = task.await.map_err(|e| anyhow!("a client failed: {e}"))??;
            latency
                .add(&h)
                .map_err(|e| anyhow!("merging latencies: {e:?}"))?;
            seen.committed += s.committed;
            seen.refused += s.refused;
            seen.counts.operations += s.operations;
            if let Some(reason) = s.first_refusal {
                say(format!("business: refused, for one: {reason}"));
            }
        }
    } else if coupon {
        let mut tasks = Vec::new();
        for c in 0..clients as u64 {
            let (ledger, people) = (Arc::clone(&ledger), Arc::clone(&people));
            let counter = Arc::clone(&committed);
            tasks.push(tokio::spawn(async move {
                let range = (c, clients as u64, attempts);
                let how = (None, None);
                coupon_client(ledger, people, merchant, range, per_call, how, counter).await
            }));
        }
        for task in tasks {
            let (h, s) = task.await.map_err(|e| anyhow!("a client failed: {e}"))??;
            merge(&mut latency, &h, &mut seen, s)?;
        }
    } else {
        // The red packets, sent by `--clients` tasks side by side.
        let sending = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients as u64 {
            let (ledger, people) = (Arc::clone(&ledger), Arc::clone(&people));
            tasks.push(tokio::spawn(async move {
                let mut h = histogram()?;
                let mut p = c;
                while p < packets {
                    let mut call = Vec::with_capacity(per_call);
                    while p < packets && call.len() < per_call {
                        call.push(SendRedPacket {
                            id: TxnId((1u128 << 90) + u128::from(p)),
                            sender: people[(p % members) as usize].to_string(),
                            total: yuan(PACKET_FEN),
                            count: PACKETS,
                            lucky: true,
                            expiry_ms: None,
                        });
                        p += clients as u64;
                    }
                    let sent = Instant::now();
                    let answers = ledger
                        .send_red_packets(call)
                        .await
                        .map_err(|e| anyhow!("sending red packets: {e}"))?;
                    let took = micros(sent);
                    for answer in answers {
                        answer.map_err(|e| anyhow!("sending a red packet: {e}"))?;
                        h.saturating_record(took);
                    }
                }
                Ok::<_, anyhow::Error>(h)
            }));
        }
        for task in tasks {
            let h = task.await.map_err(|e| anyhow!("a client failed: {e}"))??;
            latency
                .add(&h)
                .map_err(|e| anyhow!("merging latencies: {e:?}"))?;
        }
        let ids: Vec<TxnId> = (0..packets)
            .map(|p| TxnId((1u128 << 90) + u128::from(p)))
            .collect();
        seen.counts.sends_per_s = per_second(packets, sending);
        seen.committed += packets;
        seen.counts.operations += packets;
        seen.counts.red_packets_sent += packets;
        seen.counts.funded += yuan(PACKET_FEN) * Decimal::from(packets);
        // Every red packet is stormed at once: attempt k claims red packet
        // k mod packets for member k / packets.
        let ids = Arc::new(ids);
        let claiming = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (ledger, people, ids) =
                (Arc::clone(&ledger), Arc::clone(&people), Arc::clone(&ids));
            let committed = Arc::clone(&committed);
            tasks.push(tokio::spawn(async move {
                let mut h = histogram()?;
                let mut seen = Seen::default();
                let mut k = c as u64;
                while k < attempts {
                    let mut call = Vec::with_capacity(per_call);
                    while k < attempts && call.len() < per_call {
                        let id = ids[(k % packets) as usize];
                        let who = people[((k / packets) % members) as usize];
                        call.push((id, who.to_string()));
                        k += clients as u64;
                    }
                    let sent = Instant::now();
                    let results = ledger
                        .claim_red_packets(call)
                        .await
                        .map_err(|e| anyhow!("claims: {e}"))?;
                    let took = micros(sent);
                    for result in results {
                        h.saturating_record(took);
                        seen.counts.operations += 1;
                        match result {
                            Ok(claimed) => {
                                seen.committed += 1;
                                committed.fetch_add(1, Ordering::Relaxed);
                                seen.counts.claims += 1;
                                seen.counts.paid_out += claimed.amount;
                            }
                            Err(
                                LedgerError::AllClaimed(_)
                                | LedgerError::AlreadyClaimed { .. }
                                | LedgerError::OwnRedPacket(_),
                            ) => {
                                seen.refused += 1;
                                seen.counts.claims_refused += 1;
                            }
                            Err(e) => return Err(anyhow!("claim: {e}")),
                        }
                    }
                }
                Ok::<_, anyhow::Error>((h, seen))
            }));
        }
        for task in tasks {
            let (h, s) = task.await.map_err(|e| anyhow!("a client failed: {e}"))??;
            merge(&mut latency, &h, &mut seen, s)?;
        }
        seen.counts.claims_per_s = per_second(seen.counts.claims, claiming);
    }
    let duration = start.elapsed();
    while alerts.try_recv().is_ok() {
        seen.counts.alerts += 1;
    }
    if coupon && !storm {
        let paying_s = seen
            .last_commit
            .map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
        if paying_s > 0.0 {
            seen.counts.redemptions_per_s = seen.counts.redemptions as f64 / paying_s;
        }
    }
    if coupon {
        seen.counts.funded = yuan(funding_fen);
        seen.counts.paid_out = seen.redeemed.values().copied().sum();
    }

    ledger
        .engine()
        .shutdown()
        .await
        .map_err(|e| anyhow!("shutdown: {e}"))?;
    drop(ledger);
    let bytes_on_disk = store.bytes_on_disk()?;
    let reopened = Instant::now();
    let ledger = Ledger::open_default(config)
        .await
        .map_err(|e| anyhow!("cannot reopen the ledger: {e}"))?;
    let reopen = reopened.elapsed();
    let audit = ledger
        .engine()
        .audit()
        .await
        .map_err(|e| anyhow!("audit: {e}"))?;
    let products_ok = if business {
        // The engine's audit and the committed count decide.
        true
    } else if coupon {
        let left = ledger
            .account(merchant, AccountType::Marketing)
            .await
            .map_err(|e| anyhow!("{e}"))?
            .map_or(Decimal::MIN, |v| v.balance);
        seen.twice == 0
            && left >= Decimal::ZERO
            && seen.counts.paid_out + left == seen.counts.funded
    } else {
        let rp = ledger
            .audit_red_packets()
            .await
            .map_err(|e| anyhow!("red-packet audit: {e}"))?;
        rp.ok()
            && rp.claims == seen.counts.claims
            && rp.claimed == seen.counts.paid_out
            && rp.sent == seen.counts.funded
    };
    seen.counts.products_ok = products_ok;
    ledger
        .engine()
        .shutdown()
        .await
        .map_err(|e| anyhow!("shutdown after audit: {e}"))?;

    let duration_s = duration.as_secs_f64();
    seen.counts.ops_per_s = if duration_s > 0.0 {
        seen.counts.operations as f64 / duration_s
    } else {
        0.0
    };
    // Committed engine transactions: setup (top-ups, funding), the measured
    // ones; members and records are not transactions.
    let expected_committed = setup_committed + seen.committed;
    let invariants = Invariants {
        accounts: audit.accounts,
        details: audit.details,
        committed: audit.committed,
        rejected: audit.rejected,
        batches: audit.batches,
        funding_committed: setup_committed,
        expected_committed,
        money_conserved: audit
            .currencies
            .iter()
            .all(|c| c.net.is_zero() && c.pending_net.is_zero()),
        below_floor: audit.below_floor.iter().map(|a| a.0).collect(),
        broken_chains: audit.broken_chains.iter().map(|a| a.0).collect(),
        state_digest: report::digest_hex(audit.state_digest),
    };
    let invariants_ok = audit.ok() && audit.committed == expected_committed && products_ok;
    let total = seen.committed;
    let per_s = if duration_s > 0.0 {
        total as f64 / duration_s
    } else {
        0.0
    };
    let report = Report {
        workload: args.workload,
        parameters: Parameters {
            accounts: members,
            transactions: Some(attempts),
            duration_limit_s: None,
            clients: args.clients,
            shards,
            batch_max: args.batch_max,
            rate: if storm { args.rate } else { None },
            store: store.name().to_string(),
            sync: config_sync(store, args),
            checkpoint_every_batches: args
                .checkpoint_every
                .unwrap_or(tally_engine::DEFAULT_CHECKPOINT_EVERY_BATCHES),
            seed: args.seed,
            zipf_s: args.zipf_s,
            hot_fraction: args.hot_fraction,
            live_generation: false,
        },
        committed: total,
        rejected: seen.refused,
        duration_s,
        tx_per_s: per_s,
        latency_us: Latency::from_histogram(&latency),
        throughput_per_s: vec![per_s.round() as u64],
        // Not sampled over time here: the resident memory at the end.
        rss_mb_per_s: vec![resident_bytes() as f64 / 1e6],
        bytes_on_disk,
        bytes_per_transfer: bytes_on_disk
            .filter(|_| audit.committed > 0)
            .map(|b| b as f64 / audit.committed as f64),
        reopen_s: reopen.as_secs_f64(),
        invariants_ok,
        invariants,
        machine: Machine::this(),
        git_commit: report::git_commit(),
        products: Some(seen.counts.clone()),
        days: crate::report::DaysFigures::default(),
        tiers: crate::report::TierFigures::default(),
    };
    report::print_stdout(&report::summary(&report))?;
    if let Some(path) = &args.report_json {
        report::write_json(&report, path)?;
    }
    if let Some(path) = &args.report_md {
        report::write_markdown(&report, path)?;
    }
    if !invariants_ok {
        eprintln!(
            "error: invariants FAILED: {}{}",
            report::failures(&report.invariants).join("; "),
            if products_ok {
                ""
            } else {
                "; the product check failed"
            }
        );
    }
    Ok(invariants_ok)
}

fn config_sync(store: &StoreSetup, args: &RunArgs) -> bool {
    store.name() == "sled" && !args.no_sync
}

fn merge(latency: &mut Histogram<u64>, h: &Histogram<u64>, seen: &mut Seen, s: Seen) -> Result<()> {
    latency
        .add(h)
        .map_err(|e| anyhow!("merging latencies: {e:?}"))?;
    seen.committed += s.committed;
    seen.refused += s.refused;
    let (a, b) = (&mut seen.counts, s.counts);
    a.operations += b.operations;
    a.claims += b.claims;
    a.claims_refused += b.claims_refused;
    a.redemptions += b.redemptions;
    a.refused_short_funding += b.refused_short_funding;
    a.refused_redeemed_already += b.refused_redeemed_already;
    a.paid_out += b.paid_out;
    for (serial, part) in s.redeemed {
        if seen.redeemed.insert(serial, part).is_some() {
            seen.twice += 1;
        }
    }
    seen.twice += s.twice;
    seen.last_commit = seen.last_commit.max(s.last_commit);
    Ok(())
}

/// Opens `n` personal members, many at a time (one at a time `ordered`).
async fn open_members(ledger: &Arc<Ledger>, n: u64, ordered: bool) -> Result<Vec<AccountNo>> {
    let mut people = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let at_once = if ordered { 1 } else { MEMBERS_AT_ONCE as u64 };
    let mut serial = 1u64;
    while serial <= n {
        let mut tasks = Vec::new();
        let last = (serial + at_once - 1).min(n);
        for s in serial..=last {
            let ledger = Arc::clone(ledger);
            tasks.push(tokio::spawn(async move {
                ledger
                    .open_member(OpenMember {
                        serial: s,
                        kind: MemberKind::PersonalUser,
                        name: format!("member {s}"),
                        id_number: id_card(s),
                        legal: false,
                        level: MemberLevel("verified".into()),
                        verified: true,
                    })
                    .await
            }));
        }
        serial = last + 1;
        for task in tasks {
            let member = task
                .await
                .map_err(|e| anyhow!("a task failed: {e}"))?
                .map_err(|e| anyhow!("opening a member: {e}"))?;
            people.push(member.number);
        }
    }
    Ok(people)
}

/// `business`: the merchants besides the first, one per 100 members (at
/// most `BUSINESS_MERCHANTS_MAX` in all), one person each.
async fn open_merchants(ledger: &Ledger, members: u64) -> Result<Vec<AccountNo>> {
    let mut out = Vec::new();
    for k in 2..=(members / 100).clamp(1, BUSINESS_MERCHANTS_MAX) {
        let merchant = ledger
            .open_member(OpenMember {
                serial: k,
                kind: MemberKind::MerchantMicro,
                name: format!("merchant {k}"),
                id_number: id_card(members + k),
                legal: false,
                level: MemberLevel("merchant".into()),
                verified: true,
            })
            .await
            .map_err(|e| anyhow!("opening merchant {k}: {e}"))?;
        out.push(merchant.number);
    }
    Ok(out)
}

/// First id of the `storm` workload's plain accounts (far below any member
/// or internal account of the ledger, which are 16 digits and more).
const PLAIN_FIRST: u64 = 1;

/// `storm`: opens `n` plain customer accounts and a bank account, and funds
/// each customer; returns the funding transactions committed.
async fn open_transfer_accounts(ledger: &Ledger, n: u64) -> Result<u64> {
    let currency = ledger.rules().currency;
    let bank = AccountId(PLAIN_FIRST + n);
    let mut accounts = vec![NewAccount::internal(bank, currency)];
    accounts.extend((0..n).map(|i| NewAccount::customer(AccountId(PLAIN_FIRST + i), currency)));
    for chunk in accounts.chunks(SUBMIT_TRANSACTIONS_MAX) {
        for r in ledger
            .engine()
            .open_accounts(chunk.to_vec())
            .await
            .map_err(|e| anyhow!("opening accounts: {e}"))?
        {
            r.map_err(|e| anyhow!("opening accounts: {e}"))?;
        }
    }
    let fund: Vec<Transaction> = (0..n)
        .map(|i| {
            Transaction::transfer(
                TxnId((1u128 << 111) + u128::from(i)),
                TxnCode(1),
                bank,
                AccountId(PLAIN_FIRST + i),
                yuan(100_000_000),
                currency,
            )
        })
        .collect();
    let mut committed = 0;
    for chunk in fund.chunks(1_000) {
        for o in ledger
            .engine()
            .submit(chunk.to_vec())
            .await
            .map_err(|e| anyhow!("funding: {e}"))?
        {
            if o.is_committed() {
                committed += 1;
            } else {
                bail!("funding refused: {:?}", o.result);
            }
        }
    }
    Ok(committed)
}

/// `storm`: `count` uniform transfers of 0.01 between the plain accounts,
/// `per_call` per engine call from `clients` tasks; committed and per second.
async fn transfers(
    ledger: &Arc<Ledger>,
    n: u64,
    count: u64,
    phase: u128,
    clients: usize,
    per_call: usize,
) -> Result<(u64, f64)> {
    let currency = ledger.rules().currency;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients as u64 {
        let ledger = Arc::clone(ledger);
        tasks.push(tokio::spawn(async move {
            let mut committed = 0u64;
            let mut i = c;
            while i < count {
                let mut call = Vec::with_capacity(per_call);
                while i < count && call.len() < per_call {
                    // A fixed pseudo-random pair per transfer (splitmix-like).
                    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7);
                    let from = x % n;
                    let to = (from + 1 + (x >> 32) % (n - 1).max(1)) % n;
                    call.push(Transaction::transfer(
                        TxnId((1u128 << 112) + (phase << 64) + u128::from(i)),
                        TxnCode(1),
                        AccountId(PLAIN_FIRST + from),
                        AccountId(PLAIN_FIRST + to),
                        yuan(1),
                        currency,
                    ));
                    i += clients as u64;
                }
                for o in ledger
                    .engine()
                    .submit(call)
                    .await
                    .map_err(|e| anyhow!("transfers: {e}"))?
                {
                    if o.is_committed() {
                        committed += 1;
                    }
                }
            }
            Ok::<_, anyhow::Error>(committed)
        }));
    }
    let mut committed = 0;
    for task in tasks {
        committed += task.await.map_err(|e| anyhow!("a client failed: {e}"))??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((
        committed,
        if secs > 0.0 {
            committed as f64 / secs
        } else {
            0.0
        },
    ))
}

/// Windows of the `storm` workload: alone, beside, alone, … alone.
const STORM_WINDOWS: u64 = 7;

/// What the storm's windows need.
struct Storm {
    ledger: Arc<Ledger>,
    people: Arc<Vec<AccountNo>>,
    merchant: AccountNo,
    members: u64,
    clients: usize,
    per_call: usize,
    /// Coupons in the batch.
    coupons: u64,
    /// The storm's offered redemptions per second (`--rate`); `None`: as
    /// fast as it goes.
    rate: Option<u64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `storm`: `STORM_WINDOWS` windows of `attempts / STORM_WINDOWS` plain
/// transfers each, interleaved alone and beside a coupon storm on the one
/// marketing account, so a drift of the machine during the run falls on
/// both figures alike. The storm is started before a window's transfers
/// and stopped after them, and must have committed redemptions inside the
/// window (else the run fails): the figure beside it is beside it.
async fn storm_windows(
    run: &Storm,
    attempts: u64,
    latency: &mut Histogram<u64>,
    seen: &mut Seen,
    say: &impl Fn(String),
) -> Result<()> {
    let per_window = (attempts / STORM_WINDOWS).max(1);
    let beside_windows = STORM_WINDOWS / 2;
    let span = run.coupons / beside_windows.max(1);
    let (mut alone, mut beside, mut storm_rates) = (Vec::new(), Vec::new(), Vec::new());
    let window = |phase| {
        let (members, clients, per_call) = (run.members, run.clients, run.per_call);
        transfers(&run.ledger, members, per_window, phase, clients, per_call)
    };
    for w in 0..STORM_WINDOWS {
        let phase = u128::from(w);
        if w % 2 == 0 {
            let (n, rate) = window(phase).await?;
            seen.committed += n;
            say(format!("window {w}: transfers alone {rate:.0}/s"));
            alone.push(rate);
            continue;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let redeemed = Arc::new(AtomicU64::new(0));
        let base = (w / 2) * span;
        let mut tasks = Vec::new();
        for c in 0..run.clients as u64 {
            let (ledger, people) = (Arc::clone(&run.ledger), Arc::clone(&run.people));
            let (stop, counter) = (Arc::clone(&stop), Arc::clone(&redeemed));
            let (merchant, clients) = (run.merchant, run.clients as u64);
            let pace = run.rate.map(|r| r as f64 / clients as f64);
            // Paced, calls of 50 ms of the client's share each (a call
            // under load takes tens of milliseconds: smaller ones would
            // fall behind the offered rate).
            let per_call = pace.map_or(run.per_call, |r| {
                ((r / 20.0) as usize).clamp(1, run.per_call)
            });
            tasks.push(tokio::spawn(async move {
                let range = (base + c, clients, base + span);
                let how = (Some(stop), pace);
                coupon_client(ledger, people, merchant, range, per_call, how, counter).await
            }));
        }
        // The storm in full swing first.
        let waiting = Instant::now();
        while redeemed.load(Ordering::Relaxed) == 0 && waiting.elapsed().as_secs() < 30 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let before = redeemed.load(Ordering::Relaxed);
        let started = Instant::now();
        let (n, rate) = window(phase).await?;
        let during = redeemed.load(Ordering::Relaxed) - before;
        let storm_rate = per_second(during, started);
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let (h, s) = task.await.map_err(|e| anyhow!("a client failed: {e}"))??;
            merge(latency, &h, seen, s)?;
        }
        if during == 0 {
            bail!("window {w}: the storm committed no redemption beside the transfers");
        }
        seen.committed += n;
        say(format!(
            "window {w}: transfers beside the storm {rate:.0}/s, the storm {storm_rate:.0} redemptions/s"
        ));
        beside.push(rate);
        storm_rates.push(storm_rate);
    }
    let c = &mut seen.counts;
    c.transfers_alone_per_s = median(&alone);
    c.transfers_beside_storm_per_s = median(&beside);
    c.storm_redemptions_per_s = median(&storm_rates);
    c.storm_slowdown = if c.transfers_alone_per_s > 0.0 {
        1.0 - c.transfers_beside_storm_per_s / c.transfers_alone_per_s
    } else {
        0.0
    };
    c.transfers_alone_windows = alone;
    c.transfers_beside_windows = beside;
    Ok(())
}

/// One coupon client: redeems attempts `first, first + step, …` below
/// `end`, `per_call` a call (every 20th attempt the previous coupon again,
/// with another payer: a double redemption), until done or `stop`.
/// `redeemed` counts its committed redemptions as they come.
async fn coupon_client(
    ledger: Arc<Ledger>,
    people: Arc<Vec<AccountNo>>,
    merchant: AccountNo,
    (first, step, end): (u64, u64, u64),
    per_call: usize,
    (stop, pace): (Option<Arc<std::sync::atomic::AtomicBool>>, Option<f64>),
    redeemed: Arc<AtomicU64>,
) -> Result<(Histogram<u64>, Seen)> {
    let mut h = histogram()?;
    let mut seen = Seen::default();
    let mut i = first;
    let begun = tokio::time::Instant::now();
    while i < end && !stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
        if let Some(rate) = pace {
            // Offered at `rate` redemptions a second: the next call is due
            // when the ones sent so far would have taken that long.
            let due = std::time::Duration::from_secs_f64(seen.counts.operations as f64 / rate);
            tokio::time::sleep_until(begun + due).await;
        }
        let mut call = Vec::with_capacity(per_call);
        while i < end && call.len() < per_call {
            let serial = if i % 20 == 19 { i - 1 } else { i };
            let payer = people[(i % people.len() as u64) as usize];
            call.push(Redeem {
                payer,
                merchant,
                amount: yuan(PAYMENT_FEN),
                fee: yuan(FEE_FEN),
                coupon: CouponId {
                    batch: COUPON_BATCH,
                    serial,
                },
            });
            i += step;
        }
        let sent = Instant::now();
        let results = ledger
            .redeem_coupons(call.clone())
            .await
            .map_err(|e| anyhow!("redemptions: {e}"))?;
        let took = micros(sent);
        let answered = Instant::now();
        for (request, result) in call.iter().zip(results) {
            h.saturating_record(took);
            seen.counts.operations += 1;
            let serial = request.coupon.serial;
            match result {
                Ok(r) => {
                    seen.committed += 1;
                    seen.last_commit = Some(answered);
                    redeemed.fetch_add(1, Ordering::Relaxed);
                    seen.counts.redemptions += 1;
                    if seen.redeemed.insert(serial, r.merchant_part).is_some() {
                        seen.twice += 1;
                    }
                }
                Err(LedgerError::MarketingShort { .. }) => {
                    seen.refused += 1;
                    seen.counts.refused_short_funding += 1;
                }
                Err(LedgerError::CouponAlreadyRedeemed(_)) => {
                    seen.refused += 1;
                    seen.counts.refused_redeemed_already += 1;
                }
                Err(e) => return Err(anyhow!("redemption of coupon {serial}: {e}")),
            }
        }
    }
    Ok((h, seen))
}
