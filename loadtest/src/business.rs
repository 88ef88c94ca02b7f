//! `run --workload business`: the account system's catalogue through the
//! `Ledger` itself (not transactions built beside it), so that its figure
//! is what the business layer costs: each client's calls carry
//! `--batch-max` operations — top-ups (15 %), wallet transfers (30 %),
//! payments with a 0.6 % fee to merchants (30 %) and withdrawal
//! reservations (15 %) in one `post_many`, and beside it partial refunds
//! of the client's earlier payments (10 %, one `Ledger::refund_many`) and
//! the completion of its earlier withdrawals (half of the withdrawal share
//! once some are reserved: captured, or one in ten released; one
//! `Ledger::finish_many`), the three calls awaited together.
//! Members are funded at setup, so a refusal is unexpected and counted.

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tally_business::{AccountNo, Finish, Ledger, LedgerError, PostRequest, Posted, Refund};
use tally_engine::TxnId;

/// Payments a client keeps for refunds, and withdrawals it keeps open, at
/// most.
const KEPT_MAX: usize = 1_024;
/// Amounts: 0.01..=10.00.
const AMOUNT_MAX_FEN: i64 = 1_000;
const FEE_PER_MILLE: i64 = 6;

/// What one business client saw.
#[derive(Default)]
pub(crate) struct BusinessSeen {
    pub(crate) operations: u64,
    pub(crate) committed: u64,
    pub(crate) refused: u64,
    /// The first refusal's reason, for the report.
    pub(crate) first_refusal: Option<String>,
}

/// Who a business client draws from.
pub(crate) struct BusinessParties {
    pub(crate) people: Arc<Vec<AccountNo>>,
    pub(crate) merchants: Arc<Vec<AccountNo>>,
    /// The run's `--seed`: each client draws its own stream of it.
    pub(crate) seed: u64,
    /// Calls one after another in a fixed order (`--clock simulated`:
    /// the same seed must give the same state on any shard count), not
    /// side by side.
    pub(crate) ordered: bool,
}

fn yuan(fen: i64) -> Decimal {
    Decimal::new(fen, 2)
}

/// One operation of a call besides the `post_many`.
/// One business client: operations `first, first + step, …` below `end`,
/// `per_call` a call; `committed` counts its committed operations.
pub(crate) async fn business_client(
    ledger: Arc<Ledger>,
    parties: BusinessParties,
    (first, step, end): (u64, u64, u64),
    per_call: usize,
    committed: Arc<AtomicU64>,
    latency: &mut Histogram<u64>,
) -> Result<BusinessSeen> {
    let mut rng = ChaCha8Rng::seed_from_u64(parties.seed);
    rng.set_stream(first);
    let mut seen = BusinessSeen::default();
    let mut payments: VecDeque<(TxnId, i64)> = VecDeque::new();
    let mut withdrawals: VecDeque<TxnId> = VecDeque::new();
    let mut serial = 0u64;
    let mut next_id = || {
        serial += 1;
        TxnId((1u128 << 96) + (u128::from(first) << 64) + u128::from(serial))
    };
    let (people, merchants) = (&parties.people, &parties.merchants);
    let mut i = first;
    while i < end {
        let mut posts = Vec::with_capacity(per_call);
        // Each post's rule and amount, to keep its payment or withdrawal.
        let mut kinds: Vec<(&str, i64)> = Vec::with_capacity(per_call);
        let mut refunds = Vec::new();
        let mut finishes = Vec::new();
        while i < end && posts.len() + refunds.len() + finishes.len() < per_call {
            i += step;
            let fen = rng.gen_range(1..=AMOUNT_MAX_FEN);
            let who = rng.gen_range(0..people.len());
            let member = people[who];
            let roll = rng.gen_range(0..100u32);
            let id = next_id();
            match roll {
                0..=14 => {
                    kinds.push(("top_up", fen));
                    posts.push(
                        PostRequest::new(id, "top_up")
                            .member("member", member)
                            .channel("channel", "icbc")
                            .amount("amount", yuan(fen)),
                    );
                }
                45..=74 => {
                    kinds.push(("pay", fen));
                    let merchant = merchants[rng.gen_range(0..merchants.len())];
                    posts.push(
                        PostRequest::new(id, "pay")
                            .member("payer", member)
                            .member("merchant", merchant)
                            .amount("amount", yuan(fen))
                            .amount("fee", yuan(fen * FEE_PER_MILLE / 1_000)),
                    );
                }
                75..=84 if !payments.is_empty() => {
                    let pick = rng.gen_range(0..payments.len());
                    if let Some((payment, paid)) = payments.remove(pick) {
                        let fen = rng.gen_range(1..=paid);
                        refunds.push(Refund {
                            original: payment,
                            seq: 0,
                            amount: yuan(fen),
                        });
                    }
                }
                85..=92 if !withdrawals.is_empty() => {
                    if let Some(pending) = withdrawals.pop_front() {
                        finishes.push(if rng.gen_ratio(1, 10) {
                            Finish::Release { id, pending }
                        } else {
                            Finish::Capture {
                                id,
                                pending,
                                amount: None,
                            }
                        });
                    }
                }
                85..=99 => {
                    kinds.push(("withdraw", fen));
                    posts.push(
                        PostRequest::new(id, "withdraw")
                            .member("member", member)
                            .channel("channel", "icbc")
                            .amount("amount", yuan(fen)),
                    );
                }
                _ => {
                    // Anyone but the payer.
                    let other = rng.gen_range(1..people.len().max(2));
                    let payee = people[(who + other) % people.len()];
                    kinds.push(("transfer", fen));
                    posts.push(
                        PostRequest::new(id, "transfer")
                            .member("payer", member)
                            .member("payee", payee)
                            .amount("amount", yuan(fen)),
                    );
                }
            }
        }
        let ids: Vec<TxnId> = posts.iter().map(|p| p.id).collect();
        let sent = Instant::now();
        let ledger = &ledger;
        let (posted, refunded, finished) = if parties.ordered {
            (
                ledger.post_many(posts).await,
                ledger.refund_many(refunds).await,
                ledger.finish_many(finishes).await,
            )
        } else {
            tokio::join!(
                ledger.post_many(posts),
                ledger.refund_many(refunds),
                ledger.finish_many(finishes)
            )
        };
        let took = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        let failed = |e: LedgerError| anyhow!("a business call failed: {e}");
        let posted = posted.map_err(failed)?;
        let singled = refunded
            .map_err(failed)?
            .into_iter()
            .chain(finished.map_err(failed)?);
        for (((kind, fen), id), result) in kinds.iter().zip(ids).zip(&posted) {
            if result.is_ok() {
                match *kind {
                    "pay" => keep(&mut payments, (id, *fen)),
                    "withdraw" => keep(&mut withdrawals, id),
                    _ => {}
                }
            }
        }
        let results = posted.into_iter().chain(singled);
        for result in results {
            latency.saturating_record(took);
            count(&mut seen, result, &committed);
        }
    }
    Ok(seen)
}

/// Keeps at most `KEPT_MAX`, the oldest dropped.
fn keep<T>(kept: &mut VecDeque<T>, item: T) {
    if kept.len() == KEPT_MAX {
        kept.pop_front();
    }
    kept.push_back(item);
}

fn count(seen: &mut BusinessSeen, result: Result<Posted, LedgerError>, committed: &AtomicU64) {
    seen.operations += 1;
    match result {
        Ok(_) => {
            seen.committed += 1;
            committed.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            seen.refused += 1;
            seen.first_refusal.get_or_insert_with(|| e.to_string());
        }
    }
}
