//! Red packets (红包) on the [`Ledger`]: a product sub-ledger.
//!
//! **Send**: one engine transaction (the red packet's own id) debits the
//! sender's balance and credits a red-packet product account (one of
//! [`RED_PACKET_SLOTS`], picked by the id, so storms on different red
//! packets are not one hot row). The red packet itself — sender, total,
//! packets, kind, deadline — is a metadata record (`redpacket/<id>`),
//! written before the transaction; a red packet whose transaction is not
//! committed is not claimable, and sending again with the same content
//! finishes it.
//!
//! **Split**: equal, or random ("lucky"); computed from the red packet's id
//! alone ([`split_red_packet`]), so a replay or a restart gives the same
//! parts. Every part is at least one smallest unit; the parts sum to the
//! total exactly.
//!
//! **Claim**: claims of one red packet queue up and are checked in order,
//! a batch at a time, under the red packet's lock; the accepted ones go to
//! the engine in one call. Claim attempt `n` pays part `n` (product account
//! to claimant) under an id derived from the red packet's and `n`; "one
//! per member" and "at most N" are rebuilt from those transactions after a
//! restart, so they hold across restarts. (A refused attempt's part stays
//! unpaid and goes back at the deadline.) The non-withdrawable part the
//! send took (or everything, if the rule says `claims_non_withdrawable`)
//! is paid out non-withdrawable first.
//!
//! **Expiry**: the engine has no timer of its own, so the embedder calls
//! [`Ledger::expire_red_packets`] (every few seconds, say): each red packet
//! past its deadline (by the engine's clock) gets what is left back to the
//! sender in one posting, with an id derived from the red packet's. A claim
//! at or after the deadline is refused whether or not the sweep ran.
//!
//! **Audit**: [`Ledger::audit_red_packets`] checks, from the engine's
//! transactions alone, that for every red packet sent = claimed + returned
//! + open, that every claim paid its part, and that the product accounts
//!   hold exactly what is open.

use super::account_no::AccountNo;
use super::error::LedgerError;
use super::ids::{derived_id, TAG_CLAIM, TAG_RETURN};
use super::ledger::{all_records, Charge, Ledger};
use super::posted::Posted;
use super::red_packet_book::{
    red_packet_account, red_packet_slot, splitmix64, Claimed, PacketState, RedPacket, Waiting,
    RED_PACKET_SLOTS,
};
use super::rules::RedPacketRules;
use super::template::AccountType;
use futures_util::future::join_all;
use rust_decimal::Decimal;
use std::collections::HashSet;
use std::sync::Arc;
use tally_engine::DetailKind;
use tally_engine::TxnView;
use tally_engine::{Bucket, Minor, Side, Timestamp, TxnId};
use tally_engine::{Leg, Outcome, Transaction, TxnCode, SUBMIT_TRANSACTIONS_MAX};

/// Return attempts of one red packet, at most.
const RETURN_ATTEMPTS_MAX: u64 = 16;

const PREFIX: &[u8] = b"redpacket/";

/// A request to send a red packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendRedPacket {
    /// The caller's idempotency key: the red packet's id and its send
    /// transaction's.
    pub id: TxnId,
    /// The sender's main account number.
    pub sender: String,
    pub total: Decimal,
    /// Packets: `1..=max_packets`.
    pub count: u32,
    /// Random parts ("lucky"), or equal ones.
    pub lucky: bool,
    /// The deadline after sending, instead of the rule's.
    pub expiry_ms: Option<u64>,
}

/// Where a red packet stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedPacketView {
    pub packet: RedPacket,
    /// Its send transaction committed.
    pub funded: bool,
    pub claimed: u32,
    pub claimed_amount: Decimal,
    /// What went back to the sender.
    pub returned: Option<Decimal>,
    /// Still claimable: total − claimed, until returned.
    pub open: Decimal,
}

/// [`Ledger::audit_red_packets`]: sent = claimed + returned + open for
/// every red packet, every claim its part, the product accounts holding
/// what is open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedPacketAudit {
    pub packets: u64,
    pub sent: Decimal,
    pub claimed: Decimal,
    pub claims: u64,
    pub returned: Decimal,
    pub open: Decimal,
    /// Σ of the red-packet product accounts' balances.
    pub product_balance: Decimal,
    /// What does not add up, per red packet.
    pub problems: Vec<(TxnId, String)>,
}

impl RedPacketAudit {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
            && self.sent == self.claimed + self.returned + self.open
            && self.product_balance == self.open
    }
}

/// A claim accepted in memory: claimant, part number, amount, its
/// non-withdrawable part, legs.
type PlannedClaim = (Waiting, u32, Decimal, Decimal, Vec<Leg>);

/// A red packet's accepted claims and their transactions.
pub(super) struct ClaimPlan {
    planned: Vec<PlannedClaim>,
    txns: Vec<Transaction>,
    code: TxnCode,
}

/// The parts of a red packet of `total` smallest units in `count` packets:
/// each at least 1, summing to `total`, the same for the same id. Equal
/// parts differ by at most one unit (the first ones get the remainder);
/// lucky parts are 1 + a random share of the rest. `None` if `count` is 0
/// or above `total`.
pub fn split_red_packet(id: TxnId, total: i64, count: u32, lucky: bool) -> Option<Vec<i64>> {
    let n = i64::from(count);
    if n == 0 || total < n {
        return None;
    }
    let spare = total - n;
    if !lucky {
        let (each, rest) = (spare / n, spare % n);
        return Some((0..n).map(|i| 1 + each + i64::from(i < rest)).collect());
    }
    let mut seed = id.0 as u64 ^ (id.0 >> 64) as u64 ^ 0x5EED_0F4E_DBA6;
    let weights: Vec<u128> = (0..count)
        .map(|_| {
            seed = splitmix64(seed);
            // 1..=2^20: no part's weight is zero, none dominates absurdly.
            u128::from(seed % (1 << 20)) + 1
        })
        .collect();
    let sum: u128 = weights.iter().sum();
    let spare_u = u128::try_from(spare).ok()?;
    let mut parts: Vec<i64> = weights
        .iter()
        .map(|w| 1 + i64::try_from(spare_u * w / sum).unwrap_or(0))
        .collect();
    // Rounding down left a few units: one each to the first packets.
    let mut left = total - parts.iter().sum::<i64>();
    for part in parts.iter_mut() {
        if left <= 0 {
            break;
        }
        *part += 1;
        left -= 1;
    }
    Some(parts)
}

fn key(id: TxnId) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(format!("{:032x}", id.0).as_bytes());
    key
}

impl Ledger {
    fn red_packet_rules(&self) -> Result<&RedPacketRules, LedgerError> {
        self.rules()
            .red_packet
            .as_ref()
            .ok_or(LedgerError::RedPacketsNotConfigured)
    }

    pub(super) fn units(&self, amount: Decimal) -> Result<i64, LedgerError> {
        Minor::from_decimal(amount, self.scale)
            .map(|m| m.0)
            .ok_or(LedgerError::InvalidAmount(amount))
    }

    pub(super) fn money(&self, units: i64) -> Decimal {
        Minor(units).to_decimal(self.scale)
    }

    /// Sends one red packet: [`Ledger::send_red_packets`] of one.
    pub async fn send_red_packet(
        &self,
        request: SendRedPacket,
    ) -> Result<RedPacketView, LedgerError> {
        let id = request.id;
        let mut answers = self.send_red_packets(vec![request]).await?;
        answers.pop().unwrap_or(Err(LedgerError::RedPacketBusy(id)))
    }

    /// Sends many red packets in one call: one answer per request, in
    /// order; one refusal does not fail the others. Each is checked as
    /// alone (amount, count, sender, limits); the new ones' records are
    /// written in one call, then their sends submitted together (one
    /// engine call per `SUBMIT_TRANSACTIONS_MAX`), each red packet locked
    /// meanwhile, so a sender's storm costs a few engine round trips, not
    /// several per red packet. Sending an id again with the same content
    /// answers with the red packet (and finishes one whose send did not
    /// commit); with other content: `RedPacketConflict`. The same id twice
    /// in one call: the second is the first again. `Err` only for a call
    /// above `SUBMIT_TRANSACTIONS_MAX` requests or without red packets
    /// configured.
    pub async fn send_red_packets(
        &self,
        requests: Vec<SendRedPacket>,
    ) -> Result<Vec<Result<RedPacketView, LedgerError>>, LedgerError> {
        if requests.len() > SUBMIT_TRANSACTIONS_MAX {
            return Err(LedgerError::Engine(
                tally_engine::SubmitError::BatchTooLarge {
                    len: requests.len(),
                    max: SUBMIT_TRANSACTIONS_MAX,
                },
            ));
        }
        let rules = self.red_packet_rules()?.clone();
        let mut answers: Vec<Option<Result<RedPacketView, LedgerError>>> =
            (0..requests.len()).map(|_| None).collect();
        // Waves of distinct ids: the n-th request of an id goes in wave n,
        // after the one before it has its answer.
        let mut seen: rustc_hash::FxHashMap<TxnId, usize> = Default::default();
        let mut waves: Vec<Vec<(usize, RedPacket)>> = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            match self.check_send(request, &rules) {
                Ok(packet) => {
                    let wave = seen.entry(request.id).or_default();
                    if waves.len() <= *wave {
                        waves.push(Vec::new());
                    }
                    waves[*wave].push((i, packet));
                    *wave += 1;
                }
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        for mut wave in waves {
            wave.sort_by_key(|(_, p)| p.id);
            for (i, answer) in self.send_wave(&rules, wave).await {
                answers[i] = Some(answer);
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Err(LedgerError::RedPacketBusy(TxnId(0)))))
            .collect())
    }

    /// The checks a send needs no state for; the red packet it would be.
    fn check_send(
        &self,
        request: &SendRedPacket,
        rules: &RedPacketRules,
    ) -> Result<RedPacket, LedgerError> {
        if request.total <= Decimal::ZERO {
            return Err(LedgerError::AmountNotPositive {
                txn: "red_packet".into(),
                field: "total".into(),
                value: request.total,
            });
        }
        if request.count == 0 || request.count > rules.max_packets {
            return Err(LedgerError::RedPacketCount {
                count: request.count,
                max: rules.max_packets,
            });
        }
        let units = self.units(request.total)?;
        if units < i64::from(request.count) {
            return Err(LedgerError::RedPacketTooSmall {
                total: request.total,
                count: request.count,
                smallest: self.money(1),
            });
        }
        if request.expiry_ms == Some(0) {
            return Err(LedgerError::AmountNotPositive {
                txn: "red_packet".into(),
                field: "expiry_ms".into(),
                value: Decimal::ZERO,
            });
        }
        let sender = self.verified_member(&request.sender)?;
        let expiry_ns = request
            .expiry_ms
            .unwrap_or(rules.expiry_ms)
            .saturating_mul(1_000_000);
        Ok(RedPacket {
            id: request.id,
            sender,
            total: self.money(units),
            count: request.count,
            lucky: request.lucky,
            deadline: Timestamp(self.clock_now().0.saturating_add(expiry_ns)),
        })
    }

    /// Sends red packets of distinct ids (in id order: they are locked in
    /// that order, so two callers never wait for each other).
    async fn send_wave(
        &self,
        rules: &RedPacketRules,
        wave: Vec<(usize, RedPacket)>,
    ) -> Vec<(usize, Result<RedPacketView, LedgerError>)> {
        let mut out = Vec::with_capacity(wave.len());
        let known = join_all(wave.iter().map(|(_, p)| self.packet_state(p.id))).await;
        // The new ones' records, in one write.
        let mut fresh = Vec::new();
        let mut records = Vec::new();
        let mut pending = Vec::new();
        for ((i, packet), state) in wave.into_iter().zip(known) {
            match state {
                Err(e) => out.push((i, Err(e))),
                Ok(Some(state)) => pending.push((i, packet, Some(state))),
                Ok(None) => match postcard::to_allocvec(&packet) {
                    Ok(value) => {
                        records.push((key(packet.id), value));
                        fresh.push((i, packet));
                    }
                    Err(e) => out.push((i, Err(LedgerError::MemberRecord(e.to_string())))),
                },
            }
        }
        if !records.is_empty() {
            match self.engine().put_records(records).await {
                Ok(results) => {
                    for ((i, packet), result) in fresh.into_iter().zip(results) {
                        match result {
                            Ok(()) => pending.push((i, packet, None)),
                            Err(e) => out.push((i, Err(e.into()))),
                        }
                    }
                }
                Err(e) => {
                    for (i, _) in fresh {
                        out.push((i, Err(LedgerError::Engine(e.clone()))));
                    }
                }
            }
        }
        pending.sort_by_key(|(_, p, _)| p.id);
        let mut locked = Vec::with_capacity(pending.len());
        for (i, packet, state) in pending {
            let state = match state {
                Some(state) => state,
                None => {
                    let arc = Arc::new(tokio::sync::Mutex::new(PacketState::new(packet.clone())));
                    Arc::clone(
                        self.red_packets
                            .states
                            .entry(packet.id)
                            .or_insert(arc)
                            .value(),
                    )
                }
            };
            let guard = state.lock_owned().await;
            let known = &guard.packet;
            let same = known.sender == packet.sender
                && known.total == packet.total
                && known.count == packet.count
                && known.lucky == packet.lucky;
            if !same {
                out.push((i, Err(LedgerError::RedPacketConflict(packet.id))));
            } else if guard.funded {
                out.push((i, Ok(view(&guard))));
            } else {
                locked.push((i, guard));
            }
        }
        out.extend(self.fund_packets(rules, locked).await);
        out
    }

    /// The senders' daily-limit charges of locked sends, in order: the
    /// unknown usages read together, then every charge under one lock.
    async fn charge_senders(
        &self,
        locked: &[(usize, tokio::sync::OwnedMutexGuard<PacketState>)],
    ) -> Vec<Result<Option<Charge>, LedgerError>> {
        let senders = || locked.iter().map(|(_, g)| g.packet.sender);
        let unknown = self.usage_unknown(senders());
        let _ = join_all(unknown.into_iter().map(|m| self.load_usage(m))).await;
        let unread = self.usage_unknown(senders());
        // A usage that could not be read is not charged from zero
        // (that would also mark it read): that send goes alone, and
        // gets the read's error.
        let items: Vec<(AccountNo, Decimal)> = locked
            .iter()
            .filter(|(_, g)| !unread.contains(&g.packet.sender))
            .map(|(_, g)| (g.packet.sender, g.packet.total))
            .collect();
        let mut charged = self.charge_limits(&items).into_iter();
        let mut charges = Vec::with_capacity(locked.len());
        for (_, g) in locked {
            let (sender, total) = (g.packet.sender, g.packet.total);
            let charge = if unread.contains(&sender) {
                None
            } else {
                charged.next()
            };
            charges.push(match charge {
                Some(Ok(c)) => Ok(Some(c)),
                Some(Err(LedgerError::DailyLimitExceeded { .. })) | None => {
                    self.charge_sender(sender, total).await.map(Some)
                }
                Some(Err(e)) => Err(e),
            });
        }
        charges
    }

    /// Charges one send to its sender's daily limit: today's usage read
    /// if it is not known, expired holds swept if the limit is reached.
    async fn charge_sender(
        &self,
        sender: AccountNo,
        total: Decimal,
    ) -> Result<Charge, LedgerError> {
        self.load_usage(sender).await?;
        match self.charge_limit(sender, total) {
            Err(LedgerError::DailyLimitExceeded { .. }) if self.sweep_holds(sender).await? => {
                self.charge_limit(sender, total)
            }
            other => other,
        }
    }

    /// Submits the sends of locked, unfunded red packets: the senders'
    /// limits charged together, their debits split by bucket, every send
    /// in as few engine calls as fit.
    async fn fund_packets(
        &self,
        rules: &RedPacketRules,
        locked: Vec<(usize, tokio::sync::OwnedMutexGuard<PacketState>)>,
    ) -> Vec<(usize, Result<RedPacketView, LedgerError>)> {
        let mut out = Vec::with_capacity(locked.len());
        let charges = if rules.limited {
            self.charge_senders(&locked).await
        } else {
            locked.iter().map(|_| Ok(None)).collect()
        };
        let splits = join_all(locked.iter().zip(&charges).map(|((_, g), charge)| {
            let legs = vec![
                self.leg(
                    g.packet.sender.account_id(AccountType::Balance.code()),
                    Side::Debit,
                    g.packet.total,
                ),
                self.leg(
                    red_packet_account(g.packet.id),
                    Side::Credit,
                    g.packet.total,
                ),
            ];
            let go = charge.is_ok();
            async move {
                if go {
                    Some(self.split_buckets(legs).await)
                } else {
                    None
                }
            }
        }))
        .await;
        let mut sending = Vec::new();
        let mut txns = Vec::new();
        for (((i, guard), charge), split) in locked.into_iter().zip(charges).zip(splits) {
            let charge = match charge {
                Ok(c) => c,
                Err(e) => {
                    out.push((i, Err(e)));
                    continue;
                }
            };
            let legs = match split {
                Some(Ok(legs)) => legs,
                Some(Err(e)) => {
                    if let Some(c) = charge {
                        self.refund_limit(c);
                    }
                    out.push((i, Err(e)));
                    continue;
                }
                None => {
                    out.push((i, Err(LedgerError::RedPacketBusy(guard.packet.id))));
                    continue;
                }
            };
            let nw_sent: Decimal = legs
                .iter()
                .filter(|l| l.side == Side::Debit && l.bucket == Bucket::NonWithdrawable)
                .map(|l| l.amount)
                .sum();
            txns.push(Transaction::posted(guard.packet.id, rules.send_code, legs));
            sending.push((i, guard, charge, nw_sent));
        }
        let mut outcomes = Vec::with_capacity(txns.len());
        let mut failed = None;
        let mut txns = txns.into_iter().peekable();
        while txns.peek().is_some() {
            let chunk: Vec<Transaction> = txns.by_ref().take(SUBMIT_TRANSACTIONS_MAX).collect();
            match self.submit_txns(chunk).await {
                Ok(o) => outcomes.extend(o.into_iter().map(Some)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        outcomes.resize_with(sending.len(), || None);
        for ((i, mut guard, charge, nw_sent), outcome) in sending.into_iter().zip(outcomes) {
            let Some(outcome) = outcome else {
                // Unknown whether it was sequenced: read back next time.
                guard.fresh = false;
                let e = failed
                    .clone()
                    .unwrap_or(tally_engine::SubmitError::ShutDown);
                out.push((i, Err(LedgerError::Engine(e))));
                continue;
            };
            if outcome.duplicate || outcome.result.is_err() {
                if let Some(c) = charge {
                    self.refund_limit(c);
                }
            }
            let answer = match outcome.result {
                Ok(()) if outcome.duplicate => {
                    // Sent before this ledger knew: read it back.
                    guard.fresh = false;
                    self.refresh(&mut guard).await.map(|()| view(&guard))
                }
                Ok(()) => {
                    guard.funded = true;
                    guard.nw_sent = nw_sent;
                    Ok(view(&guard))
                }
                Err(reject) => Err(LedgerError::Rejected(reject)),
            };
            out.push((i, answer));
        }
        out
    }

    /// Claims the next packet of a red packet for `claimant`.
    ///
    /// Claims of one red packet queue up; whoever holds the red packet's
    /// lock takes every queued claim, checks them in order, and submits
    /// the accepted ones in one engine call (claim attempt `n` pays part
    /// `n`, with an id derived from the red packet and `n`), so a storm of
    /// claims costs a few engine round trips, not one per claim.
    pub async fn claim_red_packet(
        &self,
        id: TxnId,
        claimant: &str,
    ) -> Result<Claimed, LedgerError> {
        let mut answers = self
            .claim_red_packets(vec![(id, claimant.to_string())])
            .await?;
        answers.pop().unwrap_or(Err(LedgerError::RedPacketBusy(id)))
    }

    /// Many claims (red packet, claimant) in one call: one answer per
    /// claim, in order; one refusal does not fail the others. They join
    /// the queues of their red packets, and each red packet's queue is
    /// decided and submitted as [`Ledger::claim_red_packet`] does. `Err`
    /// only for a call above `SUBMIT_TRANSACTIONS_MAX` claims.
    pub async fn claim_red_packets(
        &self,
        claims: Vec<(TxnId, String)>,
    ) -> Result<Vec<Result<Claimed, LedgerError>>, LedgerError> {
        if claims.len() > tally_engine::SUBMIT_TRANSACTIONS_MAX {
            return Err(LedgerError::Engine(
                tally_engine::SubmitError::BatchTooLarge {
                    len: claims.len(),
                    max: tally_engine::SUBMIT_TRANSACTIONS_MAX,
                },
            ));
        }
        enum Answer {
            Now(Result<Claimed, LedgerError>),
            Waiting(
                TxnId,
                tokio::sync::oneshot::Receiver<Result<Claimed, LedgerError>>,
            ),
        }
        let mut answers = Vec::with_capacity(claims.len());
        type State = Arc<tokio::sync::Mutex<PacketState>>;
        type Queue = Arc<parking_lot::Mutex<Vec<Waiting>>>;
        let mut touched: rustc_hash::FxHashMap<TxnId, (State, Queue)> = Default::default();
        // Claimants parsed, then checked together with the registry locked
        // once (not once per claim).
        let parsed: Vec<Result<AccountNo, LedgerError>> = claims
            .iter()
            .map(|(_, text)| match self.red_packet_rules() {
                Ok(_) => AccountNo::parse(text).map_err(LedgerError::from),
                Err(e) => Err(e),
            })
            .collect();
        let mut verified = self
            .check_verified_many(parsed.iter().filter_map(|p| p.as_ref().ok().copied()))
            .into_iter();
        for ((id, _), parsed) in claims.into_iter().zip(parsed) {
            let checked =
                parsed.and_then(|claimant| verified.next().unwrap_or(Ok(())).map(|()| claimant));
            let claimant = match checked {
                Ok(claimant) => claimant,
                Err(e) => {
                    answers.push(Answer::Now(Err(e)));
                    continue;
                }
            };
            let queue = match touched.get(&id) {
                Some((_, queue)) => Arc::clone(queue),
                None => match self.packet_state(id).await {
                    Ok(Some(state)) => {
                        let queue =
                            Arc::clone(self.red_packets.queues.entry(id).or_default().value());
                        touched.insert(id, (state, Arc::clone(&queue)));
                        queue
                    }
                    Ok(None) => {
                        answers.push(Answer::Now(Err(LedgerError::UnknownRedPacket(id))));
                        continue;
                    }
                    Err(e) => {
                        answers.push(Answer::Now(Err(e)));
                        continue;
                    }
                },
            };
            let (reply, answer) = tokio::sync::oneshot::channel();
            queue.lock().push(Waiting { claimant, reply });
            answers.push(Answer::Waiting(id, answer));
        }
        // Every red packet this call touched, locked in id order (no two
        // callers wait for each other), its queue planned in memory and
        // the lock let go, its claims marked in flight; then all of their
        // accepted claims submitted together (one engine call per
        // `SUBMIT_TRANSACTIONS_MAX` claims, not one per red packet), while
        // other callers plan the next claims of the same red packets; then
        // each red packet locked again to apply its answers.
        let mut touched: Vec<(TxnId, (State, Queue))> = touched.into_iter().collect();
        touched.sort_by_key(|(id, _)| *id);
        let mut plans = Vec::with_capacity(touched.len());
        for (_, (state, queue)) in touched {
            let mut guard = Arc::clone(&state).lock_owned().await;
            let waiting = std::mem::take(&mut *queue.lock());
            let plan = if waiting.is_empty() {
                None
            } else {
                self.plan_claims(&mut guard, waiting).await
            };
            drop(guard);
            if let Some(plan) = plan {
                let flight = ClaimFlight {
                    claimants: plan.planned.iter().map(|p| p.0.claimant).collect(),
                    state,
                    landed: false,
                };
                plans.push((flight, plan));
            }
        }
        let mut plans = plans.into_iter().peekable();
        while plans.peek().is_some() {
            let mut group = Vec::new();
            let mut txns = Vec::new();
            while let Some((_, plan)) = plans.peek() {
                let fits = txns.len() + plan.txns.len() <= SUBMIT_TRANSACTIONS_MAX;
                if !group.is_empty() && !fits {
                    break;
                }
                let Some((flight, mut plan)) = plans.next() else {
                    break;
                };
                let n = plan.txns.len();
                txns.append(&mut plan.txns);
                group.push((flight, plan, n));
            }
            let mut outcomes = self.submit_txns(txns).await.ok().map(Vec::into_iter);
            for (mut flight, plan, n) in group {
                let mine = outcomes.as_mut().map(|o| o.by_ref().take(n).collect());
                let mut guard = Arc::clone(&flight.state).lock_owned().await;
                flight.land(&mut guard);
                self.apply_claims(&mut guard, plan.planned, plan.code, mine);
            }
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(match answer {
                Answer::Now(result) => result,
                // Answered by this call or by the one that held the lock.
                Answer::Waiting(id, rx) => rx.await.unwrap_or(Err(LedgerError::RedPacketBusy(id))),
            });
        }
        Ok(out)
    }

    /// Checks queued claims in order, answers the refused ones, and
    /// returns the accepted ones' transactions (`None` if there are none).
    async fn plan_claims(&self, s: &mut PacketState, waiting: Vec<Waiting>) -> Option<ClaimPlan> {
        let id = s.packet.id;
        let ready = match self.refresh(s).await {
            // The split once per red packet the ledger holds, not per call.
            Ok(()) if s.parts.is_empty() => self.parts(&s.packet).map(|parts| s.parts = parts),
            other => other,
        }
        .and_then(|()| Ok((self.red_packet_rules()?, std::mem::take(&mut s.parts))));
        let (rules, parts) = match ready {
            Ok(ready) => ready,
            Err(e) => {
                // The first gets the reason; the others are told to retry.
                let mut first = Some(e);
                for w in waiting {
                    let e = first.take().unwrap_or(LedgerError::RedPacketBusy(id));
                    let _ = w.reply.send(Err(e));
                }
                return None;
            }
        };
        let now = self.clock_now();
        let mut planned: Vec<(Waiting, u32, Decimal, Decimal, Vec<Leg>)> = Vec::new();
        let mut txns = Vec::new();
        let mut in_batch = HashSet::new();
        let mut nw_left = s.nw_sent - s.claimed_nw;
        for w in waiting {
            let index = s.attempts + planned.len() as u64;
            let refusal = if !s.funded {
                Some(LedgerError::UnknownRedPacket(id))
            } else if s.claimants.contains(&w.claimant)
                || s.flying.contains(&w.claimant)
                || in_batch.contains(&w.claimant)
            {
                Some(LedgerError::AlreadyClaimed {
                    packet: id,
                    member: w.claimant,
                })
            } else if index >= u64::from(s.packet.count) {
                Some(LedgerError::AllClaimed(id))
            } else if s.returned.is_some() || now >= s.packet.deadline {
                Some(LedgerError::RedPacketExpired(id))
            } else if !rules.own_claim && w.claimant == s.packet.sender {
                Some(LedgerError::OwnRedPacket(id))
            } else {
                None
            };
            if let Some(e) = refusal {
                let _ = w.reply.send(Err(e));
                continue;
            }
            let amount = self.money(parts.get(index as usize).copied().unwrap_or(0));
            let nw = if rules.claims_non_withdrawable {
                amount
            } else {
                nw_left.clamp(Decimal::ZERO, amount)
            };
            nw_left -= nw;
            let to = w.claimant.account_id(AccountType::Balance.code());
            let mut legs = vec![self.leg(red_packet_account(id), Side::Debit, amount)];
            if nw > Decimal::ZERO {
                legs.push(Leg {
                    bucket: Bucket::NonWithdrawable,
                    ..self.leg(to, Side::Credit, nw)
                });
            }
            if amount > nw {
                legs.push(self.leg(to, Side::Credit, amount - nw));
            }
            in_batch.insert(w.claimant);
            txns.push(Transaction::posted(
                derived_id(TAG_CLAIM, id, index),
                rules.claim_code,
                legs.clone(),
            ));
            planned.push((w, index as u32, amount, nw, legs));
        }
        s.parts = parts;
        if txns.is_empty() {
            return None;
        }
        // In flight until the answers are applied: their attempt numbers
        // are taken, their claimants may not claim again meanwhile (if this
        // task is dropped while it waits, `ClaimFlight` marks the red
        // packet stale, to be read back once nothing is in flight).
        s.attempts += planned.len() as u64;
        s.flights += 1;
        s.flying.extend(planned.iter().map(|p| p.0.claimant));
        Some(ClaimPlan {
            planned,
            txns,
            code: rules.claim_code,
        })
    }

    /// Applies the engine's answers to a red packet's planned claims
    /// (`None`: the call failed, unknown what was sequenced) and answers
    /// every claimant.
    fn apply_claims(
        &self,
        s: &mut PacketState,
        planned: Vec<PlannedClaim>,
        code: TxnCode,
        outcomes: Option<Vec<Outcome>>,
    ) {
        let id = s.packet.id;
        let Some(outcomes) = outcomes.filter(|o| o.len() == planned.len()) else {
            // Unknown what was sequenced: read it back next time.
            s.fresh = false;
            for (w, ..) in planned {
                let _ = w.reply.send(Err(LedgerError::RedPacketBusy(id)));
            }
            return;
        };
        let mut stale = false;
        for ((w, index, amount, nw, legs), outcome) in planned.into_iter().zip(outcomes) {
            s.attempts = s.attempts.max(u64::from(index) + 1);
            let answer = if outcome.duplicate {
                // Another ledger on this store claimed meanwhile.
                stale = true;
                Err(LedgerError::RedPacketBusy(id))
            } else {
                match outcome.result {
                    Ok(()) => {
                        s.claimed += 1;
                        s.claimed_amount += amount;
                        s.claimed_nw += nw;
                        s.claimants.insert(w.claimant);
                        Ok(Claimed {
                            posted: Posted {
                                id: outcome.id,
                                code,
                                timestamp: outcome.timestamp,
                                duplicate: false,
                                legs,
                            },
                            index,
                            amount,
                        })
                    }
                    // Its part stays unpaid: returned at the deadline.
                    Err(reject) => Err(LedgerError::Rejected(reject)),
                }
            };
            let _ = w.reply.send(answer);
        }
        if stale {
            s.fresh = false;
        }
    }

    /// Returns what is left of every red packet past its deadline (by the
    /// engine's clock) to its sender, one posting each. The engine has no
    /// timer: the embedder calls this periodically. Returns the postings.
    pub async fn expire_red_packets(&self) -> Result<Vec<Posted>, LedgerError> {
        let rules = self.red_packet_rules()?.clone();
        let now = self.clock_now();
        let due: Vec<Arc<tokio::sync::Mutex<PacketState>>> = self
            .red_packets
            .states
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect();
        let mut posted = Vec::new();
        for state in due {
            let mut guard = state.lock_owned().await;
            // Claims in flight: their answers first (the next sweep).
            if guard.packet.deadline > now || guard.flights > 0 {
                continue;
            }
            self.refresh(&mut guard).await?;
            let s = &mut *guard;
            let rest = s.packet.total - s.claimed_amount;
            if !s.funded || s.returned.is_some() || rest.is_zero() {
                // Done with: the sweep forgets it (a later read finds its
                // record and its transactions again).
                self.red_packets.forget(s.packet.id);
                continue;
            }
            let nw = (s.nw_sent - s.claimed_nw).clamp(Decimal::ZERO, rest);
            let to = s.packet.sender.account_id(AccountType::Balance.code());
            let mut legs = vec![self.leg(red_packet_account(s.packet.id), Side::Debit, rest)];
            if nw > Decimal::ZERO {
                legs.push(Leg {
                    bucket: Bucket::NonWithdrawable,
                    ..self.leg(to, Side::Credit, nw)
                });
            }
            if rest > nw {
                legs.push(self.leg(to, Side::Credit, rest - nw));
            }
            if s.return_attempts >= RETURN_ATTEMPTS_MAX {
                continue;
            }
            let id = derived_id(TAG_RETURN, s.packet.id, s.return_attempts);
            let outcome = match self
                .submit_one(Transaction::posted(id, rules.return_code, legs.clone()))
                .await
            {
                Ok(outcome) => outcome,
                Err(e) => {
                    s.fresh = false;
                    return Err(e);
                }
            };
            s.return_attempts += 1;
            if outcome.result.is_ok() {
                s.returned = Some(rest);
                self.red_packets.forget(s.packet.id);
                posted.push(Posted {
                    id,
                    code: rules.return_code,
                    timestamp: outcome.timestamp,
                    duplicate: outcome.duplicate,
                    legs,
                });
            }
        }
        Ok(posted)
    }

    /// `member` sent a red packet whose rest has not gone back yet (the
    /// ledger knows every such red packet: those of before it opened are
    /// loaded at open).
    pub(super) async fn sends_open_red_packet(&self, member: AccountNo) -> bool {
        let states: Vec<_> = self
            .red_packets
            .states
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect();
        for state in states {
            let s = state.lock().await;
            if s.packet.sender == member
                && (s.funded || !s.fresh)
                && s.returned.is_none()
                && s.claimed_amount < s.packet.total
            {
                return true;
            }
        }
        false
    }

    /// Where a red packet stands, `None` if it was never sent.
    pub async fn red_packet(&self, id: TxnId) -> Result<Option<RedPacketView>, LedgerError> {
        let Some(state) = self.packet_state(id).await? else {
            return Ok(None);
        };
        let mut guard = state.lock_owned().await;
        self.refresh(&mut guard).await?;
        Ok(Some(view(&guard)))
    }

    /// Checks every red packet against the engine's transactions (not the
    /// ledger's memory): sent = claimed + returned + open, each claim paid
    /// its part, each member claimed at most once, no more claims than
    /// packets, and the product accounts hold exactly what is open.
    pub async fn audit_red_packets(&self) -> Result<RedPacketAudit, LedgerError> {
        let mut audit = RedPacketAudit::default();
        for packet in load_packets(self).await? {
            let s = self.read_packet(packet).await?;
            let id = s.packet.id;
            audit.packets += 1;
            if !s.funded {
                continue;
            }
            let parts = self.parts(&s.packet)?;
            let claims = self.claims_of(&s.packet).await?;
            for &(i, _, amount) in &claims {
                let part = parts.get(i).map(|&u| self.money(u));
                if part != Some(amount) {
                    audit
                        .problems
                        .push((id, format!("claim {i} paid {amount}, its part is {part:?}")));
                }
            }
            if s.claimants.len() != claims.len() {
                audit
                    .problems
                    .push((id, "a member claimed twice".to_string()));
            }
            let returned = self.returned_of(id).await?;
            let open = if returned.is_some() {
                Decimal::ZERO
            } else {
                s.packet.total - s.claimed_amount
            };
            let returned = returned.unwrap_or_default();
            if s.packet.total != s.claimed_amount + returned + open || open < Decimal::ZERO {
                audit.problems.push((
                    id,
                    format!(
                        "sent {} != claimed {} + returned {returned} + open {open}",
                        s.packet.total, s.claimed_amount
                    ),
                ));
            }
            audit.sent += s.packet.total;
            audit.claimed += s.claimed_amount;
            audit.claims += u64::from(s.claimed);
            audit.returned += returned;
            audit.open += open;
        }
        for slot in 0..RED_PACKET_SLOTS {
            if let Some(view) = self.engine().account(red_packet_slot(slot)).await? {
                audit.product_balance += view.balance;
            }
        }
        Ok(audit)
    }

    // ---- state ---------------------------------------------------------------

    fn parts(&self, packet: &RedPacket) -> Result<Vec<i64>, LedgerError> {
        split_red_packet(
            packet.id,
            self.units(packet.total)?,
            packet.count,
            packet.lucky,
        )
        .ok_or(LedgerError::InvalidAmount(packet.total))
    }

    /// The red packet's state: known, or read from its record.
    async fn packet_state(
        &self,
        id: TxnId,
    ) -> Result<Option<Arc<tokio::sync::Mutex<PacketState>>>, LedgerError> {
        if let Some(state) = self.red_packets.get(id) {
            return Ok(Some(state));
        }
        let page = self.engine().records(key(id), None, 1).await?;
        let Some((k, value)) = page.into_iter().next() else {
            return Ok(None);
        };
        if k != key(id) {
            return Ok(None);
        }
        let packet: RedPacket = postcard::from_bytes(&value)
            .map_err(|e| LedgerError::MemberRecord(format!("red packet {id:?}: {e}")))?;
        let state = self.read_packet(packet).await?;
        let arc = Arc::new(tokio::sync::Mutex::new(state));
        Ok(Some(Arc::clone(
            self.red_packets.states.entry(id).or_insert(arc).value(),
        )))
    }

    /// Reads a red packet's state again if it may be stale.
    async fn refresh(&self, state: &mut PacketState) -> Result<(), LedgerError> {
        if !state.fresh && state.flights > 0 {
            // Not read back while claims are in flight: try again.
            return Err(LedgerError::RedPacketBusy(state.packet.id));
        }
        if !state.fresh {
            *state = self.read_packet(state.packet.clone()).await?;
        }
        Ok(())
    }

    /// A red packet's state from the engine's transactions.
    async fn read_packet(&self, packet: RedPacket) -> Result<PacketState, LedgerError> {
        let send = self.engine().transaction(packet.id).await?;
        let funded = send.as_ref().is_some_and(|v| v.result.is_ok());
        let nw_sent = send
            .as_ref()
            .map(|v| {
                v.details
                    .iter()
                    .filter(|d| d.side == Side::Debit && d.bucket == Bucket::NonWithdrawable)
                    .map(|d| d.amount)
                    .sum()
            })
            .unwrap_or_default();
        let mut state = PacketState {
            funded,
            nw_sent,
            ..PacketState::new(packet)
        };
        for n in 0..u64::from(state.packet.count) {
            let Some(v) = self
                .engine()
                .transaction(derived_id(TAG_CLAIM, state.packet.id, n))
                .await?
            else {
                break;
            };
            state.attempts = n + 1;
            if let Some((who, amount, nw)) = claim_of(&v) {
                state.claimants.insert(who);
                state.claimed += 1;
                state.claimed_amount += amount;
                state.claimed_nw += nw;
            }
        }
        for n in 0..RETURN_ATTEMPTS_MAX {
            let Some(v) = self
                .engine()
                .transaction(derived_id(TAG_RETURN, state.packet.id, n))
                .await?
            else {
                break;
            };
            state.return_attempts = n + 1;
            if v.result.is_ok() {
                state.returned = Some(credits(&v));
            }
        }
        Ok(state)
    }

    /// The committed claims of a red packet: attempt (= part) number,
    /// claimant, amount.
    async fn claims_of(
        &self,
        packet: &RedPacket,
    ) -> Result<Vec<(usize, AccountNo, Decimal)>, LedgerError> {
        let mut out = Vec::new();
        for n in 0..u64::from(packet.count) {
            let Some(v) = self
                .engine()
                .transaction(derived_id(TAG_CLAIM, packet.id, n))
                .await?
            else {
                break;
            };
            if let Some((who, amount, _)) = claim_of(&v) {
                out.push((n as usize, who, amount));
            }
        }
        Ok(out)
    }

    async fn returned_of(&self, id: TxnId) -> Result<Option<Decimal>, LedgerError> {
        for n in 0..RETURN_ATTEMPTS_MAX {
            match self
                .engine()
                .transaction(derived_id(TAG_RETURN, id, n))
                .await?
            {
                None => return Ok(None),
                Some(v) if v.result.is_ok() => return Ok(Some(credits(&v))),
                Some(_) => {}
            }
        }
        Ok(None)
    }
}

/// A committed claim's claimant, amount and non-withdrawable part.
fn claim_of(v: &TxnView) -> Option<(AccountNo, Decimal, Decimal)> {
    if v.result.is_err() {
        return None;
    }
    let credits: Vec<_> = v
        .details
        .iter()
        .filter(|d| d.side == Side::Credit && d.kind == DetailKind::Posted)
        .collect();
    let (who, _) = AccountNo::of_account_id(credits.first()?.account)?;
    let amount = credits.iter().map(|d| d.amount).sum();
    let nw = credits
        .iter()
        .filter(|d| d.bucket == Bucket::NonWithdrawable)
        .map(|d| d.amount)
        .sum();
    Some((who, amount, nw))
}

fn credits(v: &TxnView) -> Decimal {
    v.details
        .iter()
        .filter(|d| d.side == Side::Credit)
        .map(|d| d.amount)
        .sum()
}

fn view(s: &PacketState) -> RedPacketView {
    let open = if s.returned.is_some() || !s.funded {
        Decimal::ZERO
    } else {
        s.packet.total - s.claimed_amount
    };
    RedPacketView {
        packet: s.packet.clone(),
        funded: s.funded,
        claimed: s.claimed,
        claimed_amount: s.claimed_amount,
        returned: s.returned,
        open,
    }
}

/// Every red packet recorded in the engine's store.
async fn load_packets(ledger: &Ledger) -> Result<Vec<RedPacket>, LedgerError> {
    let packets: Vec<(Vec<u8>, RedPacket)> = all_records(ledger.engine(), PREFIX).await?;
    Ok(packets.into_iter().map(|(_, p)| p).collect())
}

/// Loads every red packet not yet finished into the ledger at open, so the
/// sweep sees red packets sent before a restart.
pub(super) async fn load_open_packets(ledger: &Ledger) -> Result<(), LedgerError> {
    if ledger.rules().red_packet.is_none() {
        return Ok(());
    }
    for packet in load_packets(ledger).await? {
        let id = packet.id;
        let state = ledger.read_packet(packet).await?;
        // Finished, fully claimed, or never funded (not claimable; sending
        // it again reads its record back): nothing for the sweep.
        let finished =
            !state.funded || state.returned.is_some() || state.claimed_amount == state.packet.total;
        if !finished {
            ledger
                .red_packets
                .states
                .insert(id, Arc::new(tokio::sync::Mutex::new(state)));
        }
    }
    Ok(())
}

/// A red packet's planned claims on their way to the engine: landed, it
/// takes them out of flight; dropped before (its caller cancelled), it
/// does so from a task of its own and marks the red packet stale.
struct ClaimFlight {
    state: Arc<tokio::sync::Mutex<PacketState>>,
    claimants: Vec<AccountNo>,
    landed: bool,
}

impl ClaimFlight {
    fn land(&mut self, s: &mut PacketState) {
        s.flights = s.flights.saturating_sub(1);
        for c in &self.claimants {
            s.flying.remove(c);
        }
        self.landed = true;
    }
}

impl Drop for ClaimFlight {
    fn drop(&mut self) {
        if self.landed {
            return;
        }
        let state = Arc::clone(&self.state);
        let claimants = std::mem::take(&mut self.claimants);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut s = state.lock().await;
                s.flights = s.flights.saturating_sub(1);
                for c in &claimants {
                    s.flying.remove(c);
                }
                s.fresh = false;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_exact_at_least_one_unit_and_reproducible() {
        for id in 0..200u128 {
            for &(total, count) in &[(1, 1), (200, 200), (201, 200), (10_000, 7), (88_888, 200)] {
                for lucky in [false, true] {
                    let parts =
                        split_red_packet(TxnId(id), total, count, lucky).unwrap_or_default();
                    assert_eq!(parts.len(), count as usize);
                    assert_eq!(parts.iter().sum::<i64>(), total);
                    assert!(parts.iter().all(|&p| p >= 1));
                    assert_eq!(
                        Some(parts),
                        split_red_packet(TxnId(id), total, count, lucky)
                    );
                }
            }
        }
        assert_eq!(split_red_packet(TxnId(1), 5, 0, false), None);
        assert_eq!(split_red_packet(TxnId(1), 5, 6, true), None);
        assert_eq!(
            split_red_packet(TxnId(1), 10, 3, false),
            Some(vec![4, 3, 3])
        );
        let a = split_red_packet(TxnId(1), 10_000, 10, true);
        let b = split_red_packet(TxnId(2), 10_000, 10, true);
        assert_ne!(a, b, "lucky splits differ by id");
    }
}
