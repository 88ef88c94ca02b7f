//! tally-bench: shared setup of the criterion benchmarks in `benches/`.
//!
//! What it is: helpers that open engines with funded accounts, generate
//! seeded transfers (same-shard or cross-shard pairs) with fresh ids, make
//! storage records, and count the bytes the engine hands its store.
//!
//! What it depends on: only the public APIs of tally-engine and
//! tally-storage, like any embedding application.
//!
//! What it must never do: reach into engine or storage internals, or assert
//! anything about speed (the numbers are criterion's to report).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tally_engine::{
    shard_of, AccountId, Config, Currency, Engine, NewAccount, StoreChoice, Transaction, TxnCode,
    TxnId, SUBMIT_TRANSACTIONS_MAX,
};
use tally_storage::{KeyValue, Keyspace, Scan, StorageError, Store, WriteBatch};

/// The internal account every customer is funded from.
pub const BANK: AccountId = AccountId(0);
/// Every customer starts with 1,000,000,000.00 CNY: benchmark transfers (at
/// most 10.00) never run short however long criterion iterates.
const FUNDING_FEN: i64 = 1_000_000_000 * 100;
const FUNDING_CODE: TxnCode = TxnCode(100);
const TRANSFER_CODE: TxnCode = TxnCode(1);
pub const CURRENCY: Currency = Currency::CNY;

/// A setup step failed; the benchmark cannot run.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

fn setup_error(what: &str, e: impl std::fmt::Display) -> SetupError {
    SetupError(format!("{what}: {e}"))
}

/// Opens an engine on `config` with the bank and customers
/// `AccountId(1..=accounts)`, every customer funded.
pub fn funded_engine(config: Config, accounts: u64) -> Result<Engine, SetupError> {
    let engine = Engine::open(config).map_err(|e| setup_error("open", e))?;
    let chunk = SUBMIT_TRANSACTIONS_MAX as u64;
    let mut first = 0u64;
    while first <= accounts {
        let last = (first + chunk - 1).min(accounts);
        let batch = (first..=last)
            .map(|i| {
                if AccountId(i) == BANK {
                    NewAccount::internal(BANK, CURRENCY)
                } else {
                    NewAccount::customer(AccountId(i), CURRENCY)
                }
            })
            .collect();
        let results = engine
            .open_accounts_blocking(batch)
            .map_err(|e| setup_error("open accounts", e))?;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(setup_error("open accounts", e));
        }
        first = last + 1;
    }
    let mut first = 1u64;
    while first <= accounts {
        let last = (first + chunk - 1).min(accounts);
        let batch = (first..=last)
            .map(|i| {
                Transaction::transfer(
                    TxnId(u128::from(i)),
                    FUNDING_CODE,
                    BANK,
                    AccountId(i),
                    Decimal::new(FUNDING_FEN, 2),
                    CURRENCY,
                )
            })
            .collect();
        let outcomes = engine
            .submit_blocking(batch)
            .map_err(|e| setup_error("funding", e))?;
        if let Some(o) = outcomes.iter().find(|o| !o.is_committed()) {
            return Err(SetupError(format!("funding refused: {:?}", o.result)));
        }
        first = last + 1;
    }
    Ok(engine)
}

/// An in-memory engine with `shards` shards.
pub fn memory_config(shards: u16) -> Config {
    Config::memory().with_shards(shards)
}

/// An engine config on a caller-built store (e.g. a [`CountingStore`]).
pub fn custom_config(store: Arc<dyn Store>, shards: u16) -> Config {
    Config {
        store: StoreChoice::Custom(store),
        ..Config::memory()
    }
    .with_shards(shards)
}

/// Which account pairs a generator draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairs {
    /// Payer and payee uniform over the accounts.
    Uniform,
    /// Payer and payee owned by the same shard.
    SameShard,
    /// Payer and payee owned by different shards.
    CrossShard,
}

/// A seeded stream of two-party transfers with never-repeating ids (a
/// repeated id would be answered from the idempotency index, not applied).
pub struct Transfers {
    rng: ChaCha8Rng,
    /// Customer ids grouped by owning shard.
    by_shard: Vec<Vec<u64>>,
    accounts: u64,
    pairs: Pairs,
}

/// Transfer ids, unique across every generator of the process (above the
/// funding ids), so that generators can share an engine.
static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 40);

impl Transfers {
    pub fn new(accounts: u64, shards: u16, pairs: Pairs, seed: u64) -> Transfers {
        let mut by_shard = vec![Vec::new(); usize::from(shards.max(1))];
        for id in 1..=accounts {
            by_shard[usize::from(shard_of(AccountId(id), shards.max(1)).0)].push(id);
        }
        Transfers {
            rng: ChaCha8Rng::seed_from_u64(seed),
            by_shard,
            accounts: accounts.max(2),
            pairs,
        }
    }

    fn pair(&mut self) -> (u64, u64) {
        let shards = self.by_shard.len();
        let rng = &mut self.rng;
        let pick = |rng: &mut ChaCha8Rng, ids: &[u64]| ids[rng.gen_range(0..ids.len())];
        match self.pairs {
            Pairs::SameShard if self.by_shard.iter().all(|s| s.len() >= 2) => {
                let ids = &self.by_shard[rng.gen_range(0..shards)];
                loop {
                    let (a, b) = (pick(rng, ids), pick(rng, ids));
                    if a != b {
                        return (a, b);
                    }
                }
            }
            Pairs::CrossShard if shards >= 2 && self.by_shard.iter().all(|s| !s.is_empty()) => {
                let from_shard = rng.gen_range(0..shards);
                let to_shard = (from_shard + rng.gen_range(1..shards)) % shards;
                (
                    pick(rng, &self.by_shard[from_shard]),
                    pick(rng, &self.by_shard[to_shard]),
                )
            }
            _ => {
                let from = rng.gen_range(1..=self.accounts);
                let mut to = rng.gen_range(1..self.accounts);
                if to >= from {
                    to += 1;
                }
                (from, to)
            }
        }
    }

    /// The next `len` transfers of 0.01..=10.00.
    pub fn batch(&mut self, len: usize) -> Vec<Transaction> {
        (0..len)
            .map(|_| {
                let (from, to) = self.pair();
                let fen = self.rng.gen_range(1..=10_00);
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                Transaction::transfer(
                    TxnId(u128::from(id)),
                    TRANSFER_CODE,
                    AccountId(from),
                    AccountId(to),
                    Decimal::new(fen, 2),
                    CURRENCY,
                )
            })
            .collect()
    }
}

/// A batch of `records` log-like records of `value_bytes` each, keyed by a
/// growing big-endian sequence starting at `first_key`.
pub fn record_batch(
    keyspace: Keyspace,
    first_key: u64,
    records: usize,
    value_bytes: usize,
) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for i in 0..records as u64 {
        let key = (first_key + i).to_be_bytes().to_vec();
        let value: Vec<u8> = (0..value_bytes).map(|j| (j as u8) ^ (i as u8)).collect();
        batch.put(keyspace, key, value);
    }
    batch
}

/// A store that passes everything to another and counts what it is asked
/// to write: how many bytes of log and records each transfer costs.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    writes: AtomicU64,
    ops: AtomicU64,
    bytes: AtomicU64,
    flushes: AtomicU64,
}

/// What a [`CountingStore`] has seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub writes: u64,
    pub ops: u64,
    pub bytes: u64,
    pub flushes: u64,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>) -> CountingStore {
        CountingStore {
            inner,
            writes: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            writes: self.writes.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
        }
    }
}

impl Store for CountingStore {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.bytes
            .fetch_add(batch.size_bytes() as u64, Ordering::Relaxed);
        self.inner.write(batch)
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner.flush()
    }

    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(keyspace, key)
    }

    fn scan(&self, scan: Scan<'_>) -> Result<Vec<KeyValue>, StorageError> {
        self.inner.scan(scan)
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.inner.size_on_disk()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use tally_storage::MemoryStore;

    #[test]
    fn pairs_land_where_asked() {
        for shards in [2u16, 4] {
            for pairs in [Pairs::SameShard, Pairs::CrossShard] {
                let mut g = Transfers::new(1000, shards, pairs, 7);
                for t in g.batch(500) {
                    let (a, b) = (t.legs[0].account, t.legs[1].account);
                    assert_ne!(a, b);
                    let same = shard_of(a, shards) == shard_of(b, shards);
                    assert_eq!(same, pairs == Pairs::SameShard, "{pairs:?} {shards}");
                }
            }
        }
    }

    #[test]
    fn ids_never_repeat() {
        let mut g = Transfers::new(100, 1, Pairs::Uniform, 1);
        let ids: HashSet<_> = g
            .batch(300)
            .into_iter()
            .chain(g.batch(300))
            .map(|t| t.id)
            .collect();
        assert_eq!(ids.len(), 600);
    }

    #[test]
    fn funded_engine_commits_transfers_and_the_store_is_counted() {
        let store = Arc::new(CountingStore::new(Arc::new(MemoryStore::new())));
        let engine = funded_engine(custom_config(store.clone(), 2), 50).unwrap();
        let before = store.counts();
        let mut g = Transfers::new(50, 2, Pairs::CrossShard, 3);
        let outcomes = engine.submit_blocking(g.batch(100)).unwrap();
        assert!(outcomes.iter().all(|o| o.is_committed()));
        let after = store.counts();
        assert!(after.bytes > before.bytes && after.writes > before.writes);
        engine.shutdown_blocking().unwrap();
    }

    #[test]
    fn record_batches_have_the_asked_shape() {
        let b = record_batch(Keyspace(1), 10, 3, 100);
        assert_eq!(b.len(), 3);
        assert_eq!(b.size_bytes(), 3 * (1 + 8 + 100));
        assert_eq!(b.ops()[2].key, 12u64.to_be_bytes().to_vec());
    }
}
