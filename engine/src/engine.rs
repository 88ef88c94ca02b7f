//! The embedding API: a cheap cloneable [`Engine`] handle over the sequencer
//! and shard threads.

use crate::account::{AccountError, AccountStatus, AccountView, NewAccount};
use crate::check::Checker;
use crate::command::decode_batch;
use crate::config::{Config, OpenError, StoreChoice, SubmitError};
use crate::detail::{DetailPage, DetailQuery, DetailView};
use crate::sequencer::{AccountOp, Request, Sequencer, TxnRecord, KEYSPACE_LOG, KEYSPACE_META};
use crate::shard::{Read, Shard, ShardAudit};
use crate::txn::{Outcome, Transaction, SUBMIT_TRANSACTIONS_MAX};
use crate::types::{AccountId, Currency, Timestamp, TxnId};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::ops::Bound;
use std::sync::Arc;
use std::thread::JoinHandle;
use tally_storage::{
    BlobStore, FileBlobs, MemoryStore, Scan, SledStore, Store, StoreBlobs, WriteBatch,
};
use tokio::sync::{mpsc, oneshot};

/// The store format this build writes and reads.
pub const STORE_FORMAT: u16 = 3;
const META_KEY: &[u8] = b"format";
const META_MAGIC: &[u8; 5] = b"TALLY";
/// Messages queued per shard, at most.
const SHARD_QUEUE_MAX: usize = 64;
/// Log records read per scan during recovery.
const REPLAY_CHUNK: usize = 256;

/// An embedded posting engine. Clone it freely: every clone talks to the
/// same sequencer. The threads stop when the last clone is dropped (after
/// finishing queued work and flushing) or on [`Engine::shutdown`].
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order matters: the sender is dropped first, which stops the
    // sequencer, then the joiner waits for the threads.
    tx: mpsc::Sender<Request>,
    checker: Checker,
    _joiner: Joiner,
    store: Arc<dyn Store>,
    /// Where cold detail chunks live: on sled, files in the store's
    /// `details/` directory; otherwise a keyspace of the store itself.
    cold: Arc<dyn BlobStore>,
}

/// The directory of the cold detail chunks inside a sled store's directory.
pub const DETAILS_DIR: &str = "details";

struct Joiner(Vec<JoinHandle<()>>);

impl Drop for Joiner {
    fn drop(&mut self) {
        for handle in self.0.drain(..) {
            // A panicked engine thread has nothing left to clean up.
            let _ = handle.join();
        }
    }
}

/// A transaction as the engine recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnView {
    pub id: TxnId,
    pub code: crate::TxnCode,
    pub timestamp: Timestamp,
    pub result: Result<(), crate::Reject>,
    /// The details it wrote, in leg order (empty if it was refused).
    pub details: Vec<DetailView>,
}

/// Money per currency, across all accounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyTotal {
    pub currency: Currency,
    /// Σ credit-normal balances − Σ debit-normal balances: zero when money
    /// was neither created nor lost.
    pub net: Decimal,
    /// The same over pending amounts (incoming − reserved): zero too.
    pub pending_net: Decimal,
}

/// The engine-wide invariant check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub accounts: u64,
    pub details: u64,
    pub committed: u64,
    pub rejected: u64,
    pub pending_open: u64,
    pub batches: u64,
    pub currencies: Vec<CurrencyTotal>,
    pub below_floor: Vec<AccountId>,
    pub broken_chains: Vec<AccountId>,
    /// A hash of every account's balances and details chain: identical for
    /// identical histories, whatever the shard count.
    pub state_digest: u64,
    /// Why cold details could not be read back from the store (the audit
    /// is then incomplete and not ok).
    pub unreadable: Option<String>,
}

impl Audit {
    /// Money conserved, no account below its floor, every chain linked.
    pub fn ok(&self) -> bool {
        self.currencies
            .iter()
            .all(|c| c.net.is_zero() && c.pending_net.is_zero())
            && self.below_floor.is_empty()
            && self.broken_chains.is_empty()
            && self.unreadable.is_none()
    }
}

impl Engine {
    /// Opens (or creates) an engine on the configured store and recovers its
    /// state by replaying the log.
    pub fn open(mut config: Config) -> Result<Engine, OpenError> {
        config.validate()?;
        let (store, name): (Arc<dyn Store>, String) = match &config.store {
            StoreChoice::Memory => (Arc::new(MemoryStore::new()), "memory".into()),
            StoreChoice::Sled(dir) => (Arc::new(SledStore::open(dir)?), dir.display().to_string()),
            StoreChoice::Custom(store) => (store.clone(), "custom store".into()),
        };
        check_meta(store.as_ref(), &mut config, &name)?;
        // Cold chunks get a database of their own, so that writing them
        // never delays a flush of the log (sled flushes one log per
        // database).
        let cold: Arc<dyn BlobStore> = match &config.store {
            StoreChoice::Sled(dir) => Arc::new(FileBlobs::open(&dir.join(DETAILS_DIR))?),
            _ => Arc::new(StoreBlobs::new(
                store.clone(),
                crate::checkpoint::KEYSPACE_DETAILS,
            )),
        };
        let (votes_tx, votes_rx) = crossbeam_channel::bounded(usize::from(config.shards) * 2);
        let mut threads = Vec::new();
        let mut shard_tx = Vec::new();
        for id in 0..config.shards {
            let (tx, rx) = crossbeam_channel::bounded(SHARD_QUEUE_MAX);
            let cold_store = match config.store {
                StoreChoice::Memory => None,
                _ => Some(cold.clone()),
            };
            let shard = Shard::new(
                id,
                config.shards,
                config.utc_offset_s,
                cold_store,
                config.hot_detail_chunks,
            );
            let votes = votes_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tally-shard-{id}"))
                .spawn(move || shard.run(rx, votes))
                .map_err(|e| OpenError::Thread(e.to_string()))?;
            threads.push(handle);
            shard_tx.push(tx);
        }
        let checker = Checker {
            scales: config.currencies.iter().copied().collect(),
            shards: config.shards,
        };
        let queue = config.queue_requests_max;
        // Declared before the sequencer so that, on an early return, the
        // sequencer (holding the shards' senders) drops first and the shard
        // threads have stopped by the time the joiner waits for them.
        let joiner = Joiner(threads);
        let config_shards = config.shards;
        let mut sequencer = Sequencer::new(config, store.clone(), cold.clone(), shard_tx, votes_rx);
        let hot_chunks = sequencer.hot_detail_chunks();
        let loaded =
            crate::checkpoint::load(store.as_ref(), cold.as_ref(), config_shards, hot_chunks)
                .map_err(|e| OpenError::CorruptCheckpoint {
                    path: name.clone(),
                    record: e.record,
                    reason: e.reason,
                })?;
        if let Some(loaded) = loaded {
            sequencer
                .restore(loaded)
                .map_err(|reason| OpenError::CorruptCheckpoint {
                    path: name.clone(),
                    record: "shard state".into(),
                    reason,
                })?;
        }
        replay(&mut sequencer, store.as_ref(), &name)?;
        let (tx, rx) = mpsc::channel(queue);
        let handle = std::thread::Builder::new()
            .name("tally-sequencer".into())
            .spawn(move || sequencer.run(rx))
            .map_err(|e| OpenError::Thread(e.to_string()))?;
        let mut joiner = joiner;
        joiner.0.insert(0, handle);
        Ok(Engine {
            inner: Arc::new(Inner {
                tx,
                checker,
                _joiner: joiner,
                store,
                cold,
            }),
        })
    }

    /// Bytes the store occupies on disk, cold details included (0 in
    /// memory).
    pub fn size_on_disk(&self) -> Result<u64, SubmitError> {
        let size = |store: &Arc<dyn Store>| {
            store.size_on_disk().map_err(|e| SubmitError::Storage {
                reason: e.to_string(),
            })
        };
        let cold = self
            .inner
            .cold
            .size_on_disk()
            .map_err(|e| SubmitError::Storage {
                reason: e.to_string(),
            })?;
        Ok(size(&self.inner.store)? + cold)
    }

    /// Submits transactions; answers once they are executed and durable.
    /// One outcome per transaction, in order. Refusals are in the outcomes;
    /// `Err` means the call as a whole failed.
    pub async fn submit(&self, txns: Vec<Transaction>) -> Result<Vec<Outcome>, SubmitError> {
        check_len(txns.len())?;
        let prepared = self.inner.checker.check_request(txns);
        if prepared.chains.is_empty() {
            return Ok(prepared.outcomes.into_iter().flatten().collect());
        }
        let slots = self
            .call(|reply| Request::Submit(prepared, reply))
            .await??;
        Ok(slots.into_iter().flatten().collect())
    }

    /// [`Engine::submit`] for callers outside an async runtime. Must not be
    /// called from inside a tokio runtime thread.
    pub fn submit_blocking(&self, txns: Vec<Transaction>) -> Result<Vec<Outcome>, SubmitError> {
        check_len(txns.len())?;
        let prepared = self.inner.checker.check_request(txns);
        if prepared.chains.is_empty() {
            return Ok(prepared.outcomes.into_iter().flatten().collect());
        }
        let slots = self.call_blocking(|reply| Request::Submit(prepared, reply))??;
        Ok(slots.into_iter().flatten().collect())
    }

    /// Opens accounts. Opening an existing account with the same attributes
    /// succeeds and changes nothing.
    pub async fn open_accounts(
        &self,
        accounts: Vec<NewAccount>,
    ) -> Result<Vec<Result<(), AccountError>>, SubmitError> {
        self.account_ops(accounts.into_iter().map(AccountOp::Open).collect())
            .await
    }

    pub fn open_accounts_blocking(
        &self,
        accounts: Vec<NewAccount>,
    ) -> Result<Vec<Result<(), AccountError>>, SubmitError> {
        let ops: Vec<AccountOp> = accounts.into_iter().map(AccountOp::Open).collect();
        check_len(ops.len())?;
        self.call_blocking(|reply| Request::Accounts(ops, reply))?
    }

    /// Freezes, unfreezes or closes an account.
    pub async fn set_status(
        &self,
        account: AccountId,
        status: AccountStatus,
    ) -> Result<Result<(), AccountError>, SubmitError> {
        let mut results = self
            .account_ops(vec![AccountOp::SetStatus { account, status }])
            .await?;
        results.pop().ok_or(SubmitError::ShutDown)
    }

    pub async fn account_ops(
        &self,
        ops: Vec<AccountOp>,
    ) -> Result<Vec<Result<(), AccountError>>, SubmitError> {
        check_len(ops.len())?;
        self.call(|reply| Request::Accounts(ops, reply)).await?
    }

    /// Sets metadata records (key → value), durably and in order with
    /// everything else; one result per record.
    pub async fn put_records(
        &self,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<Result<(), AccountError>>, SubmitError> {
        let ops = records
            .into_iter()
            .map(|(key, value)| AccountOp::PutRecord { key, value })
            .collect();
        self.account_ops(ops).await
    }

    /// Records whose key starts with `prefix`, in key order, after the key
    /// `after` when given; at most `limit` (and `RECORDS_PAGE_MAX`).
    pub async fn records(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, SubmitError> {
        self.call(|reply| Request::Records {
            prefix,
            after,
            limit,
            reply,
        })
        .await
    }

    pub async fn account(&self, id: AccountId) -> Result<Option<AccountView>, SubmitError> {
        let shard = self.shard(id);
        self.call(|reply| Request::Read(shard, Read::Account(id, reply)))
            .await
    }

    pub fn account_blocking(&self, id: AccountId) -> Result<Option<AccountView>, SubmitError> {
        let shard = self.shard(id);
        self.call_blocking(|reply| Request::Read(shard, Read::Account(id, reply)))
    }

    /// A page of an account's details in a time range, oldest first.
    /// `None` if the account does not exist.
    pub async fn details(&self, query: DetailQuery) -> Result<Option<DetailPage>, SubmitError> {
        let shard = self.shard(query.account);
        self.call(|reply| Request::Read(shard, Read::Details(query, reply)))
            .await?
            .map_err(storage)
    }

    /// The balance at an instant: the post-balance of the last detail at or
    /// before it (zero before the first). `None` if the account does not exist.
    pub async fn balance_at(
        &self,
        id: AccountId,
        at: Timestamp,
    ) -> Result<Option<Decimal>, SubmitError> {
        let shard = self.shard(id);
        self.call(|reply| Request::Read(shard, Read::BalanceAt(id, at, reply)))
            .await?
            .map_err(storage)
    }

    /// A sequenced transaction by id, with the details it wrote.
    pub async fn transaction(&self, id: TxnId) -> Result<Option<TxnView>, SubmitError> {
        let (record, receivers) = self.call(|reply| Request::Txn(id, reply)).await?;
        let Some(TxnRecord {
            id,
            code,
            timestamp,
            result,
            ..
        }) = record
        else {
            return Ok(None);
        };
        let mut details = Vec::new();
        for rx in receivers {
            details.extend(
                rx.await
                    .map_err(|_| SubmitError::ShutDown)?
                    .map_err(storage)?,
            );
        }
        details.retain(|d| d.txn == id);
        details.sort_by_key(|d| d.leg);
        let code = code.or(details.first().map(|d| d.code)).unwrap_or_default();
        Ok(Some(TxnView {
            id,
            code,
            timestamp,
            result,
            details,
        }))
    }

    /// Checks the invariants over the whole engine (a consistent cut: taken
    /// between batches).
    pub async fn audit(&self) -> Result<Audit, SubmitError> {
        let (stats, receivers) = self.call(Request::Audit).await?;
        let mut parts = Vec::new();
        for rx in receivers {
            parts.push(rx.await.map_err(|_| SubmitError::ShutDown)?);
        }
        Ok(merge_audit(stats, parts))
    }

    pub fn audit_blocking(&self) -> Result<Audit, SubmitError> {
        let (stats, receivers) = self.call_blocking(Request::Audit)?;
        let mut parts = Vec::new();
        for rx in receivers {
            parts.push(rx.blocking_recv().map_err(|_| SubmitError::ShutDown)?);
        }
        Ok(merge_audit(stats, parts))
    }

    /// Finishes queued work, flushes the store and stops the engine. Later
    /// calls on any clone fail with `ShutDown`.
    pub async fn shutdown(&self) -> Result<(), SubmitError> {
        self.call(Request::Shutdown).await?
    }

    pub fn shutdown_blocking(&self) -> Result<(), SubmitError> {
        self.call_blocking(Request::Shutdown)?
    }

    pub fn shards(&self) -> u16 {
        self.inner.checker.shards
    }

    fn shard(&self, id: AccountId) -> u16 {
        self.inner.checker.route(id)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, SubmitError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(make(tx))
            .await
            .map_err(|_| SubmitError::ShutDown)?;
        rx.await.map_err(|_| SubmitError::ShutDown)
    }

    fn call_blocking<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, SubmitError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .blocking_send(make(tx))
            .map_err(|_| SubmitError::ShutDown)?;
        rx.blocking_recv().map_err(|_| SubmitError::ShutDown)
    }
}

fn check_len(len: usize) -> Result<(), SubmitError> {
    if len > SUBMIT_TRANSACTIONS_MAX {
        return Err(SubmitError::BatchTooLarge {
            len,
            max: SUBMIT_TRANSACTIONS_MAX,
        });
    }
    Ok(())
}

fn merge_audit(stats: crate::sequencer::SequencerAudit, parts: Vec<ShardAudit>) -> Audit {
    let mut totals: Vec<(Currency, u8, i128, i128)> = Vec::new();
    let mut audit = Audit {
        accounts: 0,
        details: 0,
        committed: stats.committed,
        rejected: stats.rejected,
        pending_open: stats.pending_open,
        batches: stats.batches,
        currencies: Vec::new(),
        below_floor: Vec::new(),
        broken_chains: Vec::new(),
        state_digest: 0,
        unreadable: None,
    };
    for part in parts {
        audit.accounts += part.accounts;
        audit.details += part.details;
        audit.below_floor.extend(part.below_floor);
        audit.broken_chains.extend(part.broken_chains);
        audit.unreadable = audit.unreadable.or(part.unreadable);
        audit.state_digest = audit.state_digest.wrapping_add(part.digest);
        for (currency, scale, net, pending) in part.net {
            match totals.iter_mut().find(|t| t.0 == currency) {
                Some(t) => {
                    t.2 += net;
                    t.3 += pending;
                }
                None => totals.push((currency, scale, net, pending)),
            }
        }
    }
    totals.sort_by_key(|t| t.0);
    audit.currencies = totals
        .into_iter()
        .map(|(currency, scale, net, pending)| CurrencyTotal {
            currency,
            net: Decimal::from_i128_with_scale(net, u32::from(scale)),
            pending_net: Decimal::from_i128_with_scale(pending, u32::from(scale)),
        })
        .collect();
    audit.below_floor.sort();
    audit.broken_chains.sort();
    audit
}

/// Reads the store's format record, or writes it into an empty store.
/// Adopts the stored shard count when the config asks for it.
fn check_meta(store: &dyn Store, config: &mut Config, name: &str) -> Result<(), OpenError> {
    let path = name.to_string();
    match store.get(KEYSPACE_META, META_KEY)? {
        Some(value) => {
            if value.len() != 9 || &value[..5] != META_MAGIC {
                let reason = "format record is damaged or foreign".into();
                return Err(OpenError::NotATallyStore { path, reason });
            }
            let found = u16::from_le_bytes([value[5], value[6]]);
            if found != STORE_FORMAT {
                return Err(OpenError::IncompatibleFormat {
                    path,
                    found,
                    expected: STORE_FORMAT,
                });
            }
            let stored = u16::from_le_bytes([value[7], value[8]]);
            if config.shards_from_store && (1..=crate::SHARDS_MAX).contains(&stored) {
                config.shards = stored;
            }
            if stored != config.shards {
                return Err(OpenError::ShardCountMismatch {
                    path,
                    stored,
                    configured: config.shards,
                });
            }
            Ok(())
        }
        None => {
            let any_log = store.scan(Scan {
                keyspace: KEYSPACE_LOG,
                start: Bound::Unbounded,
                end: Bound::Unbounded,
                reverse: false,
                limit: 1,
            })?;
            if !any_log.is_empty() {
                let reason = "it holds a log but no format record".into();
                return Err(OpenError::NotATallyStore { path, reason });
            }
            let mut value = META_MAGIC.to_vec();
            value.extend_from_slice(&STORE_FORMAT.to_le_bytes());
            value.extend_from_slice(&config.shards.to_le_bytes());
            let mut batch = WriteBatch::new();
            batch.put(KEYSPACE_META, META_KEY.to_vec(), value);
            store.write(batch)?;
            store.flush()?;
            Ok(())
        }
    }
}

/// Replays, in order, every logged batch the checkpoint does not cover.
fn replay(sequencer: &mut Sequencer, store: &dyn Store, name: &str) -> Result<(), OpenError> {
    let mut expected = sequencer.next_batch();
    loop {
        let after = (expected > 0).then(|| (expected - 1).to_be_bytes());
        let records = store.scan(Scan {
            keyspace: KEYSPACE_LOG,
            start: after
                .as_ref()
                .map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..])),
            end: Bound::Unbounded,
            reverse: false,
            limit: REPLAY_CHUNK,
        })?;
        if records.is_empty() {
            return Ok(());
        }
        for (key, value) in records {
            let corrupt = |reason: String| OpenError::Corrupt {
                path: name.to_string(),
                batch: expected,
                reason,
            };
            let number: [u8; 8] = key
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("log key is not 8 bytes".into()))?;
            let number = u64::from_be_bytes(number);
            if number != expected {
                return Err(corrupt(format!(
                    "expected batch {expected}, found {number}"
                )));
            }
            let commands =
                decode_batch(&value, |a| sequencer.route(a)).map_err(|e| corrupt(e.to_string()))?;
            sequencer.replay(number, commands);
            expected += 1;
        }
    }
}

/// A store error met while reading cold details.
fn storage(reason: String) -> SubmitError {
    SubmitError::Storage { reason }
}
