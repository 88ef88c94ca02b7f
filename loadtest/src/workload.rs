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
//! `business`, `redpacket`, `coupon` and `storm` run through the
//! `tally_business::Ledger` (`business.rs`, `products.rs`), not a
//! generator.
//!
//! In every shape the payer differs from the payee and the amount is uniform
//! in 0.01..=10.00 CNY.

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use rust_decimal::Decimal;
use serde::Serialize;
use tally_engine::{AccountId, Currency, Transaction, TxnCode, TxnId};

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
            WorkloadKind::Business
            | WorkloadKind::Redpacket
            | WorkloadKind::Coupon
            | WorkloadKind::Storm => {
                bail!(
                    "the {} workload runs through the ledger, not a generator",
                    spec.kind.name()
                )
            }
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

    /// The next `len` transfers.
    pub fn batch(&mut self, len: usize) -> Vec<Transaction> {
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
