//! Workload generators: seeded, reproducible streams of transfers between the
//! customer accounts `AccountId(1..=N)`.
//!
//! Every client of a run gets its own [`Generator`], seeded from the run's
//! seed and the client's index (a separate ChaCha8 stream per client), so the
//! same seed always produces the same transactions per client. Transaction ids
//! are unique across clients: `1 << 64 | client << 40 | sequence`.
//!
//! Shapes:
//! - `uniform`: payer and payee uniform over the accounts.
//! - `zipf`: payer and payee drawn from a Zipf distribution over account
//!   ranks (rank 1 = `AccountId(1)`, the hottest), exponent `--zipf-s`.
//! - `hot`: with probability `--hot-fraction` the payee is the merchant
//!   `AccountId(1)`, otherwise uniform; the payer is uniform.
//!
//! - `business`: the account system's catalogue, built from the shipped
//!   posting rules (`tally_business`): top-ups, wallet transfers,
//!   payments with a fee to merchants `AccountId(1..=M)` (M = accounts/100,
//!   1..=100), partial refunds of earlier payments (never more than the
//!   payment), and two-phase withdrawals (reserved, later posted or, one in
//!   ten, voided). Every member account of a rule maps to the member's one
//!   customer account, every internal account to the bank `AccountId(0)`.
//!
//! In every shape the payer differs from the payee and the amount is uniform
//! in 0.01..=10.00 CNY.

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use tally_business::{AccountRef, RuleSet, TxnRule};
use tally_engine::{AccountId, Currency, Transaction, TxnCode, TxnId, TxnKind};

/// The hot merchant of the `hot` workload (and rank 1 of `zipf`).
pub const MERCHANT: AccountId = AccountId(1);
/// The transaction code of every measured transfer.
pub const TRANSFER_CODE: TxnCode = TxnCode(1);
/// The currency of every account and transfer.
pub const CURRENCY: Currency = Currency::CNY;
/// Smallest and largest transfer, in fen (CNY minor units).
pub const AMOUNT_MIN_FEN: i64 = 1;
pub const AMOUNT_MAX_FEN: i64 = 10_00;
/// Most customer accounts a run accepts (the bank's funding must fit an i64
/// of fen, and the accounts must fit in memory).
pub const ACCOUNTS_MAX: u64 = 50_000_000;
/// Zipf draws of a payee that equals the payer before falling back to a
/// uniform pick (only reached with extreme exponents).
const ZIPF_RETRIES: u32 = 64;

/// Which shape of traffic to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    Uniform,
    Zipf,
    Hot,
    Business,
    /// Red packets through the `Ledger` (`products.rs`, no generator).
    Redpacket,
    /// Coupon redemptions through the `Ledger` (`products.rs`, no generator).
    Coupon,
    /// Uniform transfers alone, then beside a coupon storm (`products.rs`).
    Storm,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Uniform => "uniform",
            WorkloadKind::Zipf => "zipf",
            WorkloadKind::Hot => "hot",
            WorkloadKind::Business => "business",
            WorkloadKind::Redpacket => "redpacket",
            WorkloadKind::Coupon => "coupon",
            WorkloadKind::Storm => "storm",
        }
    }
}

/// Everything that decides the generated transfers, apart from seed and
/// client index.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadSpec {
    pub kind: WorkloadKind,
    /// Customer accounts `AccountId(1..=accounts)`.
    pub accounts: u64,
    pub zipf_s: f64,
    pub hot_fraction: f64,
}

impl WorkloadSpec {
    /// Refuses parameters no generator can honour.
    pub fn validate(&self) -> Result<()> {
        if self.accounts < 2 {
            bail!(
                "--accounts must be at least 2 (a transfer needs a payer and a payee), got {}",
                self.accounts
            );
        }
        if self.accounts > ACCOUNTS_MAX {
            bail!(
                "--accounts must be at most {ACCOUNTS_MAX}, got {}",
                self.accounts
            );
        }
        if !self.zipf_s.is_finite() || self.zipf_s < 0.0 {
            bail!("--zipf-s must be a finite number >= 0, got {}", self.zipf_s);
        }
        if !(0.0..=1.0).contains(&self.hot_fraction) {
            bail!(
                "--hot-fraction must be between 0 and 1, got {}",
                self.hot_fraction
            );
        }
        Ok(())
    }
}

enum Picker {
    Uniform,
    Zipf(Zipf<f64>),
    Hot(f64),
}

/// Bits of an id that name its client (below the sequence number).
const CLIENT_BITS: u32 = 24;
const CLIENTS_MAX: u128 = 1 << CLIENT_BITS;

/// One client's reproducible stream of transfers.
pub struct Generator {
    rng: ChaCha8Rng,
    picker: Picker,
    accounts: u64,
    id_base: u128,
    next_seq: u64,
    /// The business workload's state; `None` for the transfer shapes.
    business: Option<Box<BusinessMix>>,
}

impl Generator {
    /// The generator of client `client` of a run seeded with `seed`.
    pub fn new(spec: &WorkloadSpec, seed: u64, client: u32) -> Result<Generator> {
        spec.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(u64::from(client));
        let picker = match spec.kind {
            WorkloadKind::Uniform => Picker::Uniform,
            WorkloadKind::Zipf => Picker::Zipf(
                Zipf::new(spec.accounts, spec.zipf_s)
                    .with_context(|| format!("bad Zipf parameters (s = {})", spec.zipf_s))?,
            ),
            WorkloadKind::Hot => Picker::Hot(spec.hot_fraction),
            WorkloadKind::Business => Picker::Uniform,
            WorkloadKind::Redpacket | WorkloadKind::Coupon | WorkloadKind::Storm => {
                bail!(
                    "the {} workload runs through the ledger, not a generator",
                    spec.kind.name()
                )
            }
        };
        let business = match spec.kind {
            WorkloadKind::Business => Some(Box::new(BusinessMix::new(spec.accounts)?)),
            _ => None,
        };
        if u128::from(client) >= CLIENTS_MAX {
            bail!("client {client}: at most {CLIENTS_MAX} clients");
        }
        Ok(Generator {
            rng,
            picker,
            accounts: spec.accounts,
            id_base: (1u128 << 64) | u128::from(client),
            next_seq: 0,
            business,
        })
    }

    /// The next transfer's payer, payee and amount in fen, without building
    /// a transaction.
    pub fn next_shape(&mut self) -> (AccountId, AccountId, i64) {
        let n = self.accounts;
        let (from, to) = match &self.picker {
            Picker::Uniform => {
                let from = self.rng.gen_range(1..=n);
                (from, uniform_other(&mut self.rng, n, from))
            }
            Picker::Zipf(zipf) => {
                let from = rank(zipf.sample(&mut self.rng), n);
                let mut to = from;
                for _ in 0..ZIPF_RETRIES {
                    to = rank(zipf.sample(&mut self.rng), n);
                    if to != from {
                        break;
                    }
                }
                if to == from {
                    to = uniform_other(&mut self.rng, n, from);
                }
                (from, to)
            }
            Picker::Hot(fraction) => {
                let to = if self.rng.gen_bool(*fraction) {
                    MERCHANT.0
                } else {
                    self.rng.gen_range(1..=n)
                };
                (uniform_other(&mut self.rng, n, to), to)
            }
        };
        let fen = self.rng.gen_range(AMOUNT_MIN_FEN..=AMOUNT_MAX_FEN);
        (AccountId(from), AccountId(to), fen)
    }

    /// The next transfer, with a fresh id.
    pub fn next_transfer(&mut self) -> Transaction {
        let (from, to, fen) = self.next_shape();
        let id = self.next_id();
        Transaction::transfer(id, TRANSFER_CODE, from, to, Decimal::new(fen, 2), CURRENCY)
    }

    /// The next `len` transfers (business transactions for `business`).
    pub fn batch(&mut self, len: usize) -> Vec<Transaction> {
        if let Some(mut mix) = self.business.take() {
            let batch = (0..len).map(|_| mix.next(self)).collect();
            mix.batches += 1;
            self.business = Some(mix);
            return batch;
        }
        (0..len).map(|_| self.next_transfer()).collect()
    }

    /// Ids grow with time, as TigerBeetle advises (a ULID's time first):
    /// the sequence number above the client's number, so that the ids of
    /// all clients rise together and a look-up of a new id reads none of
    /// the index's runs on disk (ARCHITECTURE.md, "Memory budget").
    fn next_id(&mut self) -> TxnId {
        let id = TxnId(self.id_base | u128::from(self.next_seq) << CLIENT_BITS);
        self.next_seq += 1;
        id
    }
}

/// Recent payments a client may refund, at most.
const PAYMENTS_KEPT_MAX: usize = 1_024;
/// Open withdrawals a client keeps before completing the oldest, at most.
const WITHDRAWALS_OPEN_MAX: usize = 1_024;
/// Merchants of the business workload, at most.
const MERCHANTS_MAX: u64 = 100;
/// The fee of a payment: 0.6 %, rounded down to the fen.
const FEE_PER_MILLE: i64 = 6;

/// A payment that may still be refunded.
struct Payment {
    payer: AccountId,
    merchant: AccountId,
    fen: i64,
    refunded_fen: i64,
}

/// A reserved withdrawal and the batch it was generated in (it is completed
/// only from a later batch, so that it is sequenced first).
struct Withdrawal {
    id: TxnId,
    batch: u64,
}

/// The business workload's rules and per-client state.
struct BusinessMix {
    rules: RuleSet,
    merchants: u64,
    payments: VecDeque<Payment>,
    withdrawals: VecDeque<Withdrawal>,
    batches: u64,
}

impl BusinessMix {
    fn new(accounts: u64) -> Result<BusinessMix> {
        let rules = RuleSet::default_rules().context("the shipped posting rules")?;
        for name in ["top_up", "transfer", "pay", "refund", "withdraw"] {
            if rules.txn(name).is_none() {
                bail!("the shipped posting rules have no {name:?}");
            }
        }
        Ok(BusinessMix {
            rules,
            merchants: (accounts / 100).clamp(1, MERCHANTS_MAX).min(accounts - 1),
            payments: VecDeque::new(),
            withdrawals: VecDeque::new(),
            batches: 0,
        })
    }

    /// The next transaction: 15 % top-up, 30 % transfer, 30 % payment,
    /// 10 % refund (a transfer when nothing is left to refund), 15 %
    /// withdrawal (half of them complete an earlier one when there is one).
    fn next(&mut self, g: &mut Generator) -> Transaction {
        let roll = g.rng.gen_range(0..100u32);
        let fen = g.rng.gen_range(AMOUNT_MIN_FEN..=AMOUNT_MAX_FEN);
        let n = g.accounts;
        match roll {
            0..=14 => {
                let member = AccountId(g.rng.gen_range(1..=n));
                self.build(g, "top_up", &[("member", member)], &[("amount", fen)])
            }
            15..=44 => self.transfer(g, fen),
            45..=74 => {
                let merchant = AccountId(g.rng.gen_range(1..=self.merchants));
                let payer = AccountId(uniform_other(&mut g.rng, n, merchant.0));
                let fee = fen * FEE_PER_MILLE / 1_000;
                if self.payments.len() == PAYMENTS_KEPT_MAX {
                    self.payments.pop_front();
                }
                self.payments.push_back(Payment {
                    payer,
                    merchant,
                    fen,
                    refunded_fen: 0,
                });
                let members = [("payer", payer), ("merchant", merchant)];
                self.build(g, "pay", &members, &[("amount", fen), ("fee", fee)])
            }
            75..=84 => self.refund(g, fen),
            _ => self.withdrawal(g, fen),
        }
    }

    fn transfer(&mut self, g: &mut Generator, fen: i64) -> Transaction {
        let payer = g.rng.gen_range(1..=g.accounts);
        let payee = uniform_other(&mut g.rng, g.accounts, payer);
        let members = [("payer", AccountId(payer)), ("payee", AccountId(payee))];
        self.build(g, "transfer", &members, &[("amount", fen)])
    }

    /// A partial refund of a recent payment, never above what is left of it.
    fn refund(&mut self, g: &mut Generator, fen: i64) -> Transaction {
        if self.payments.is_empty() {
            return self.transfer(g, fen);
        }
        let pick = g.rng.gen_range(0..self.payments.len());
        let Some(p) = self.payments.get_mut(pick) else {
            return self.transfer(g, fen);
        };
        let left = p.fen - p.refunded_fen;
        if left <= 0 {
            return self.transfer(g, fen);
        }
        let refund = g.rng.gen_range(1..=left);
        p.refunded_fen += refund;
        let members = [("payer", p.payer), ("merchant", p.merchant)];
        self.build(g, "refund", &members, &[("amount", refund), ("fee", 0)])
    }

    /// Reserve a withdrawal, or complete the oldest reserved in an earlier
    /// batch: posted when the bank pays, voided one time in ten.
    fn withdrawal(&mut self, g: &mut Generator, fen: i64) -> Transaction {
        let due = self
            .withdrawals
            .front()
            .is_some_and(|w| w.batch < self.batches);
        let complete =
            due && (self.withdrawals.len() >= WITHDRAWALS_OPEN_MAX || g.rng.gen_bool(0.5));
        if let Some(w) = complete.then(|| self.withdrawals.pop_front()).flatten() {
            let code = self.rules.txn("withdraw").map_or(TxnCode(0), |r| r.code);
            let kind = if g.rng.gen_ratio(1, 10) {
                TxnKind::VoidPending { pending_id: w.id }
            } else {
                TxnKind::PostPending { pending_id: w.id }
            };
            return Transaction {
                id: g.next_id(),
                code,
                kind,
                legs: Vec::new(),
                linked: false,
            };
        }
        let member = AccountId(g.rng.gen_range(1..=g.accounts));
        let txn = self.build(g, "withdraw", &[("member", member)], &[("amount", fen)]);
        self.withdrawals.push_back(Withdrawal {
            id: txn.id,
            batch: self.batches,
        });
        txn
    }

    /// The engine transaction the rule `name` makes of these fields.
    fn build(
        &self,
        g: &mut Generator,
        name: &str,
        members: &[(&str, AccountId)],
        amounts: &[(&str, i64)],
    ) -> Transaction {
        let id = g.next_id();
        let Some(rule) = self.rules.txn(name) else {
            // Checked in `new`; an empty transaction would be refused.
            return Transaction::posted(id, TxnCode(0), Vec::new());
        };
        let amounts: BTreeMap<String, Decimal> = amounts
            .iter()
            .map(|(k, fen)| (k.to_string(), Decimal::new(*fen, 2)))
            .collect();
        let legs = rule
            .build_legs(&amounts, CURRENCY, |leg| match &leg.account {
                AccountRef::Member { field, .. } => members
                    .iter()
                    .find(|(f, _)| f == field)
                    .map_or(BANK_ACCOUNT, |(_, a)| *a),
                _ => BANK_ACCOUNT,
            })
            .unwrap_or_default();
        let kind = pending_kind(rule);
        Transaction {
            id,
            code: rule.code,
            kind,
            legs,
            linked: false,
        }
    }
}

/// The run's bank: every internal account of the rules maps to it.
const BANK_ACCOUNT: AccountId = AccountId(0);

fn pending_kind(rule: &TxnRule) -> TxnKind {
    match rule.kind {
        tally_business::RuleKind::Posted => TxnKind::Posted,
        tally_business::RuleKind::Pending { timeout_ms } => TxnKind::Pending { timeout_ms },
    }
}

/// A uniform account of `1..=n` other than `not`.
fn uniform_other(rng: &mut ChaCha8Rng, n: u64, not: u64) -> u64 {
    let pick = rng.gen_range(1..n);
    if pick >= not {
        pick + 1
    } else {
        pick
    }
}

/// A Zipf sample (a float in `1..=n`) as an account number.
fn rank(sample: f64, n: u64) -> u64 {
    // `as` saturates; the clamp guards against rounding at the ends.
    (sample as u64).clamp(1, n)
}

/// How many of `total` transactions client `client` of `clients` submits:
/// an even split, the first `total % clients` clients taking one more.
pub fn client_share(total: u64, clients: u32, client: u32) -> u64 {
    let clients = u64::from(clients.max(1));
    total / clients + u64::from(u64::from(client) < total % clients)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn spec(kind: WorkloadKind, accounts: u64) -> WorkloadSpec {
        WorkloadSpec {
            kind,
            accounts,
            zipf_s: 1.0,
            hot_fraction: 0.5,
        }
    }

    const ALL: [WorkloadKind; 3] = [WorkloadKind::Uniform, WorkloadKind::Zipf, WorkloadKind::Hot];

    #[test]
    fn same_seed_same_transactions() {
        for kind in ALL {
            let s = spec(kind, 1000);
            let a = Generator::new(&s, 7, 3).unwrap().batch(5000);
            let b = Generator::new(&s, 7, 3).unwrap().batch(5000);
            assert_eq!(a, b, "{kind:?}");
        }
    }

    #[test]
    fn other_seed_or_client_other_transactions() {
        for kind in ALL {
            let s = spec(kind, 1000);
            let shapes = |seed, client| -> Vec<_> {
                let mut g = Generator::new(&s, seed, client).unwrap();
                (0..200).map(|_| g.next_shape()).collect()
            };
            assert_ne!(shapes(7, 0), shapes(8, 0), "{kind:?}");
            assert_ne!(shapes(7, 0), shapes(7, 1), "{kind:?}");
            // Seed + client is not the same as another seed.
            assert_ne!(shapes(7, 1), shapes(8, 0), "{kind:?}");
        }
    }

    #[test]
    fn transfers_are_well_formed_and_ids_unique() {
        let mut ids = HashSet::new();
        for kind in ALL {
            for client in 0..3 {
                let s = spec(kind, 50);
                let mut g = Generator::new(&s, 1, client).unwrap();
                for t in g.batch(3000) {
                    assert!(ids.insert((kind.name(), t.id)), "duplicate id {:?}", t.id);
                    assert_eq!(t.code, TRANSFER_CODE);
                    assert_eq!(t.legs.len(), 2);
                    let (from, to) = (t.legs[0].account, t.legs[1].account);
                    assert_ne!(from, to, "{kind:?}");
                    for a in [from, to] {
                        assert!((1..=50).contains(&a.0), "{kind:?} {a:?}");
                    }
                    let amount = t.legs[0].amount;
                    assert_eq!(amount, t.legs[1].amount);
                    assert!(amount >= Decimal::new(1, 2) && amount <= Decimal::new(10_00, 2));
                    assert_eq!(amount.scale(), 2);
                }
            }
        }
        // Ids of different clients never collide, within a workload.
        assert_eq!(ids.len(), 3 * 3 * 3000);
    }

    #[test]
    fn two_accounts_is_enough() {
        for kind in ALL {
            let mut g = Generator::new(&spec(kind, 2), 9, 0).unwrap();
            for _ in 0..1000 {
                let (from, to, _) = g.next_shape();
                assert_ne!(from, to);
            }
        }
    }

    #[test]
    fn hot_fraction_within_tolerance() {
        for fraction in [0.0, 0.25, 0.5, 0.9, 1.0] {
            let s = WorkloadSpec {
                hot_fraction: fraction,
                ..spec(WorkloadKind::Hot, 10_000)
            };
            let mut g = Generator::new(&s, 42, 0).unwrap();
            let n = 100_000;
            let hot = (0..n).filter(|_| g.next_shape().1 == MERCHANT).count();
            // Uniform picks hit the merchant too, with probability 1/N.
            let expected = fraction + (1.0 - fraction) / 10_000.0;
            let got = hot as f64 / f64::from(n);
            assert!(
                (got - expected).abs() < 0.01,
                "fraction {fraction}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn uniform_is_flat() {
        let mut g = Generator::new(&spec(WorkloadKind::Uniform, 10), 42, 0).unwrap();
        let mut credits = [0u32; 11];
        let mut debits = [0u32; 11];
        for _ in 0..100_000 {
            let (from, to, _) = g.next_shape();
            debits[from.0 as usize] += 1;
            credits[to.0 as usize] += 1;
        }
        for a in 1..=10 {
            for count in [credits[a], debits[a]] {
                assert!((9_000..11_000).contains(&count), "account {a}: {count}");
            }
        }
    }

    #[test]
    fn zipf_is_skewed_towards_low_ranks() {
        let mut g = Generator::new(&spec(WorkloadKind::Zipf, 1000), 42, 0).unwrap();
        let mut credits = vec![0u32; 1001];
        let n = 100_000;
        for _ in 0..n {
            credits[g.next_shape().1 .0 as usize] += 1;
        }
        // s = 1 over 1000 ranks: rank 1 draws 1/H(1000) ≈ 13 % of samples,
        // rank 10 a tenth of that; the top 10 take about 39 %.
        assert!(
            credits[1] > credits[10] * 4,
            "{} {}",
            credits[1],
            credits[10]
        );
        assert!(
            credits[10] > credits[100] * 4,
            "{} {}",
            credits[10],
            credits[100]
        );
        let top10: u32 = credits[1..=10].iter().sum();
        let share = f64::from(top10) / f64::from(n);
        assert!((0.30..0.45).contains(&share), "top-10 share {share}");
        // s = 0 is uniform.
        let flat = WorkloadSpec {
            zipf_s: 0.0,
            ..spec(WorkloadKind::Zipf, 10)
        };
        let mut g = Generator::new(&flat, 42, 0).unwrap();
        let mut credits = [0u32; 11];
        for _ in 0..100_000 {
            credits[g.next_shape().1 .0 as usize] += 1;
        }
        for (a, count) in credits.iter().enumerate().skip(1) {
            assert!((9_000..11_000).contains(count), "account {a}: {count}");
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        let good = spec(WorkloadKind::Zipf, 10);
        assert!(good.validate().is_ok());
        let bad = [
            WorkloadSpec {
                accounts: 1,
                ..good
            },
            WorkloadSpec {
                accounts: ACCOUNTS_MAX + 1,
                ..good
            },
            WorkloadSpec {
                zipf_s: -0.5,
                ..good
            },
            WorkloadSpec {
                zipf_s: f64::NAN,
                ..good
            },
            WorkloadSpec {
                hot_fraction: 1.5,
                ..good
            },
            WorkloadSpec {
                hot_fraction: f64::NAN,
                ..good
            },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
            assert!(Generator::new(&s, 1, 0).is_err(), "{s:?}");
        }
    }

    #[test]
    fn business_mix_is_reproducible_balanced_and_never_over_refunds() {
        use std::collections::HashMap;
        use tally_engine::Side;
        let s = spec(WorkloadKind::Business, 500);
        let run = |seed, client| -> Vec<Vec<Transaction>> {
            let mut g = Generator::new(&s, seed, client).unwrap();
            (0..20).map(|_| g.batch(500)).collect()
        };
        let batches = run(7, 1);
        assert_eq!(batches, run(7, 1));
        assert_ne!(batches, run(8, 1));
        let rules = RuleSet::default_rules().unwrap();
        let code = |name: &str| rules.txn(name).unwrap().code;
        let mut ids = HashSet::new();
        let mut pending_batch = HashMap::new();
        let mut completed = HashSet::new();
        let mut paid: HashMap<(AccountId, AccountId), Decimal> = HashMap::new();
        let mut refunded: HashMap<(AccountId, AccountId), Decimal> = HashMap::new();
        let mut per_code: HashMap<TxnCode, u32> = HashMap::new();
        for (b, batch) in batches.iter().enumerate() {
            for t in batch {
                assert!(ids.insert(t.id), "duplicate id {:?}", t.id);
                *per_code.entry(t.code).or_default() += 1;
                let sum = |side| -> Decimal {
                    t.legs
                        .iter()
                        .filter(|l| l.side == side)
                        .map(|l| l.amount)
                        .sum()
                };
                assert_eq!(sum(Side::Debit), sum(Side::Credit), "{t:?}");
                match &t.kind {
                    TxnKind::Pending { .. } => {
                        assert_eq!(t.code, code("withdraw"));
                        pending_batch.insert(t.id, b);
                    }
                    TxnKind::PostPending { pending_id } | TxnKind::VoidPending { pending_id } => {
                        assert!(t.legs.is_empty());
                        let from = pending_batch
                            .get(pending_id)
                            .expect("completes a known withdrawal");
                        assert!(*from < b, "completed in the batch it was reserved in");
                        assert!(completed.insert(*pending_id), "completed twice");
                    }
                    TxnKind::Posted => assert!(!t.legs.is_empty(), "{t:?}"),
                }
                if t.code == code("pay") {
                    let key = (t.legs[0].account, t.legs[1].account);
                    *paid.entry(key).or_default() += t.legs[0].amount;
                    // The fee leg goes to the bank, 0.6 % rounded down.
                    if let Some(fee) = t.legs.get(2) {
                        assert_eq!(fee.account, BANK_ACCOUNT);
                        assert_eq!(
                            fee.amount,
                            (t.legs[0].amount * Decimal::new(6, 3))
                                .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::ToZero)
                        );
                    }
                }
                if t.code == code("refund") {
                    // Debit merchant, credit payer.
                    let key = (t.legs[1].account, t.legs[0].account);
                    *refunded.entry(key).or_default() += t.legs[0].amount;
                }
            }
        }
        assert!(!refunded.is_empty() && !completed.is_empty());
        for (key, amount) in &refunded {
            assert!(
                *amount <= paid[key],
                "{key:?}: refunded {amount} of {}",
                paid[key]
            );
        }
        // The mix: 15 % top-ups, 30 % payments (of 10,000).
        let share = |name: &str| f64::from(per_code[&code(name)]) / 10_000.0;
        assert!(
            (0.13..0.17).contains(&share("top_up")),
            "{}",
            share("top_up")
        );
        assert!((0.27..0.33).contains(&share("pay")), "{}", share("pay"));
        assert!(share("refund") > 0.05, "{}", share("refund"));
    }

    #[test]
    fn client_shares_add_up() {
        for (total, clients) in [(20_000u64, 2u32), (10, 3), (2, 8), (1_000_001, 8)] {
            let shares: Vec<u64> = (0..clients)
                .map(|c| client_share(total, clients, c))
                .collect();
            assert_eq!(shares.iter().sum::<u64>(), total);
            let (min, max) = (shares.iter().min(), shares.iter().max());
            assert!(max.unwrap() - min.unwrap() <= 1);
        }
    }
}
