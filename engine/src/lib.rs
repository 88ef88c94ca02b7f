//! tally-engine: an embeddable, sharded, deterministic posting engine.
//!
//! What it is: the bookkeeping core of a payment platform's account system.
//! Every change of a balance is a [`Transaction`] of balanced legs, submitted
//! through an [`Engine`] handle. A sequencer thread groups concurrent
//! submissions into batches, timestamps and logs each batch (one write, one
//! flush), and shard actors — each owning the accounts hashed to it — apply
//! the batch serially, settling cross-shard transactions by exchanging one
//! vote message per shard per batch. Outcomes depend only on the logged
//! order, never on thread timing, and are the same for any shard count.
//!
//! What it depends on: `tally-storage` for bytes on disk, tokio's channels
//! for async callers, crossbeam for the shard actors.
//!
//! What it must never do: change a balance outside a transaction, apply half
//! a transaction, acknowledge what is not durable, let one shard read
//! another's table, or panic on caller input.
//!
//! ```
//! use rust_decimal::Decimal;
//! use tally_engine::{AccountId, Config, Currency, Engine, NewAccount, Transaction, TxnCode, TxnId};
//!
//! let engine = Engine::open(Config::memory()).expect("open");
//! let bank = AccountId(1);
//! let alice = AccountId(2);
//! engine
//!     .open_accounts_blocking(vec![
//!         NewAccount::internal(bank, Currency::CNY),
//!         NewAccount::customer(alice, Currency::CNY),
//!     ])
//!     .expect("open accounts");
//! let top_up = Transaction::transfer(TxnId(1), TxnCode(1001), bank, alice, Decimal::new(100_00, 2), Currency::CNY);
//! let outcomes = engine.submit_blocking(vec![top_up]).expect("submit");
//! assert!(outcomes[0].is_committed());
//! let alice_now = engine.account_blocking(alice).expect("read").expect("exists");
//! assert_eq!(alice_now.balance, Decimal::new(100_00, 2));
//! engine.shutdown_blocking().expect("shutdown");
//! ```

mod account;
mod check;
mod checkpoint;
mod codec;
mod command;
mod config;
mod day;
mod detail;
mod engine;
mod eod;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod grow;
mod routing;
mod run_cache;
mod runs;
mod sequencer;
mod shard;
mod state;
mod tier;
mod txn;
mod types;

pub use account::{
    AccountError, AccountKind, AccountStatus, AccountView, NewAccount, RECORDS_BYTES_MAX,
    RECORD_KEY_MAX, RECORD_VALUE_MAX,
};
pub use config::{
    default_shards, Clock, Config, ManualClock, OpenError, SimulatedClock, StoreChoice,
    SubmitError, SystemClock, DEFAULT_CHECKPOINT_EVERY_BATCHES, DEFAULT_CHECKPOINT_MIN_COMMANDS,
    DEFAULT_HOT_DETAIL_CHUNKS, DEFAULT_ONLINE_WINDOW_DAYS,
};
pub use day::{CloseFailure, Statement};
pub use detail::{DetailCursor, DetailKind, DetailPage, DetailQuery, DetailView, DETAIL_PAGE_MAX};
pub use engine::{
    Audit, CurrencyTotal, Engine, IndexMemory, Recovery, TierStats, TornTailView, TxnView,
    DETAILS_DIR, LOG_DIR, STORE_FORMAT,
};
pub use eod::{
    CloseError, CloseReport, CurrencyDay, LedgerOpening, TrialLine, TRIAL_BALANCE_PREFIX,
};
pub use routing::{shard_of, SHARDS_MAX};
pub use sequencer::{AccountOp, BATCH_COMMANDS_MAX, RECORDS_PAGE_MAX};
pub use tier::COLD_DIR;
pub use txn::{Leg, Outcome, Reject, Transaction, TxnKind, LEGS_MAX, SUBMIT_TRANSACTIONS_MAX};
pub use types::{
    echo, parse_amount, AccountId, AccountingDate, AmountError, Bucket, Calendar, Currency, Minor,
    ShardId, Side, SubjectCode, Timestamp, TxnCode, TxnId, Version, ECHO_MAX,
};
