//! The request and answer types of posting: transactions, legs, outcomes and
//! the typed reasons a transaction is refused.

use crate::types::{AccountId, Bucket, Currency, Side, Timestamp, TxnCode, TxnId, Version};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Legs per transaction, at most.
pub const LEGS_MAX: usize = 64;
/// Transactions per `submit` call, at most.
pub const SUBMIT_TRANSACTIONS_MAX: usize = 8_190;

/// One entry of a transaction: `amount` of `currency` on one side of one
/// account, touching one bucket of its balance.
///
/// Read strictly: an unknown or repeated field is an error, and so is an
/// amount that is not a plain decimal string (see [`crate::parse_amount`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leg {
    pub account: AccountId,
    pub side: Side,
    #[serde(deserialize_with = "crate::types::deserialize_amount")]
    pub amount: Decimal,
    pub currency: Currency,
    /// `Available` when left out of a serialized leg.
    #[serde(default)]
    pub bucket: Bucket,
    /// Optimistic check: the account's version just before this leg applies
    /// must equal this, or the transaction is refused with `VersionMismatch`.
    #[serde(default)]
    pub expected_version: Option<Version>,
}

impl Leg {
    pub fn debit(account: AccountId, amount: Decimal, currency: Currency) -> Leg {
        Leg {
            account,
            side: Side::Debit,
            amount,
            currency,
            bucket: Bucket::Available,
            expected_version: None,
        }
    }

    pub fn credit(account: AccountId, amount: Decimal, currency: Currency) -> Leg {
        Leg {
            side: Side::Credit,
            ..Leg::debit(account, amount, currency)
        }
    }

    pub fn bucket(self, bucket: Bucket) -> Leg {
        Leg { bucket, ..self }
    }

    pub fn expect_version(self, version: Version) -> Leg {
        Leg {
            expected_version: Some(version),
            ..self
        }
    }
}

/// What a transaction does with its legs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum TxnKind {
    /// Post the legs now.
    #[default]
    Posted,
    /// Reserve the legs' amounts (debited accounts' `reserved` grows, credited
    /// accounts' `incoming` grows; balances do not move) until posted, voided,
    /// or voided automatically when `timeout_ms` has passed.
    Pending { timeout_ms: u64 },
    /// Capture a pending transaction. Empty `legs` posts the full amounts;
    /// otherwise `legs` restates each pending leg (same account, side,
    /// currency, bucket) with an amount no larger than reserved, balanced.
    PostPending { pending_id: TxnId },
    /// Release a pending transaction. `legs` must be empty.
    VoidPending { pending_id: TxnId },
}

/// A transaction: the only way balances change.
///
/// Read strictly: an unknown or repeated field is an error (a misspelt
/// `linkd` must not post an unlinked transaction).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transaction {
    pub id: TxnId,
    pub code: TxnCode,
    /// `Posted` when left out of a serialized transaction.
    #[serde(default)]
    pub kind: TxnKind,
    #[serde(default)]
    pub legs: Vec<Leg>,
    /// Linked with the next transaction of the same `submit` call: the chain
    /// (up to the first transaction without this flag) commits all or none.
    #[serde(default)]
    pub linked: bool,
}

impl Transaction {
    /// A posted transaction.
    pub fn posted(id: TxnId, code: TxnCode, legs: Vec<Leg>) -> Transaction {
        Transaction {
            id,
            code,
            kind: TxnKind::Posted,
            legs,
            linked: false,
        }
    }

    /// A two-leg posted transfer of `amount` from `from` to `to`.
    pub fn transfer(
        id: TxnId,
        code: TxnCode,
        from: AccountId,
        to: AccountId,
        amount: Decimal,
        currency: Currency,
    ) -> Transaction {
        Transaction::posted(
            id,
            code,
            vec![
                Leg::debit(from, amount, currency),
                Leg::credit(to, amount, currency),
            ],
        )
    }

    pub fn linked(self) -> Transaction {
        Transaction {
            linked: true,
            ..self
        }
    }
}

/// Why a transaction was refused. A refused transaction changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reject {
    #[error("a transaction needs at least one leg")]
    NoLegs,
    #[error("{count} legs, at most {max} allowed")]
    TooManyLegs { count: usize, max: usize },
    #[error("leg {leg}: amount must be positive, got {amount}")]
    AmountNotPositive { leg: u16, amount: Decimal },
    #[error("leg {leg}: {amount} has more decimal places than {currency} allows ({scale})")]
    TooManyDecimals {
        leg: u16,
        amount: Decimal,
        currency: Currency,
        scale: u32,
    },
    #[error("leg {leg}: unknown currency {currency}")]
    UnknownCurrency { leg: u16, currency: Currency },
    #[error("leg {leg}: amount {amount} is too large")]
    AmountOverflow { leg: u16, amount: Decimal },
    #[error("{currency} legs do not balance: debits {debits}, credits {credits}")]
    Unbalanced {
        currency: Currency,
        debits: Decimal,
        credits: Decimal,
    },
    #[error("transaction id appears twice in the same submit call")]
    DuplicateIdInBatch,
    #[error("a transaction with this id exists with different content")]
    IdConflict,
    #[error("a void names its pending transaction only; legs must be empty")]
    VoidWithLegs,
    #[error("a post restates every pending leg: expected {expected} legs, got {got}")]
    PostLegCount { expected: usize, got: usize },
    #[error(
        "leg {leg} does not match the pending transaction's leg (account, side, currency, bucket)"
    )]
    PostLegMismatch { leg: u16 },
    #[error("leg {leg}: posts {requested}, more than the {reserved} reserved")]
    PostExceedsPending {
        leg: u16,
        reserved: Decimal,
        requested: Decimal,
    },
    #[error("leg {leg}: a pending transaction cannot reserve from the frozen bucket")]
    BucketNotAllowed { leg: u16 },
    #[error("pending transaction not found")]
    PendingNotFound,
    #[error("pending transaction was already posted")]
    PendingAlreadyPosted,
    #[error("pending transaction was already voided")]
    PendingAlreadyVoided,
    #[error("pending transaction expired and was voided")]
    PendingExpired,
    #[error("the transaction names itself as its pending transaction")]
    PendingIsSelf,
    #[error("the last transaction of the call is linked to nothing")]
    LinkedChainOpen,
    #[error("a linked transaction in the same chain failed")]
    LinkedTxnFailed,
    /// Given by callers that split a stream of transactions into calls
    /// (`tally-loadtest replay`), never by the engine: a linked chain longer
    /// than one call may hold (`SUBMIT_TRANSACTIONS_MAX`) is refused whole,
    /// before sequencing.
    #[error("a linked chain of more than {max} transactions does not fit one call: refused whole")]
    LinkedChainTooLong { max: usize },
    /// Given by callers that split a stream into calls, never by the engine:
    /// something other than the chain's next transaction came before its
    /// last one (in replay: a line of another kind or a malformed line), so
    /// the whole chain is refused, before sequencing.
    #[error("a linked chain was interrupted before its last transaction: refused whole")]
    LinkedChainInterrupted,
    #[error("leg {leg}: account {account:?} not found")]
    AccountNotFound { leg: u16, account: AccountId },
    #[error("leg {leg}: account {account:?} is closed")]
    AccountClosed { leg: u16, account: AccountId },
    #[error("leg {leg}: account {account:?} is frozen")]
    AccountFrozen { leg: u16, account: AccountId },
    #[error("leg {leg}: account {account:?} is receive-only: nothing may be paid out of it")]
    AccountReceiveOnly { leg: u16, account: AccountId },
    #[error("leg {leg}: account {account:?} is pay-only: nothing may be paid into it")]
    AccountPayOnly { leg: u16, account: AccountId },
    #[error("leg {leg}: account {account:?} holds {account_currency}, leg is {leg_currency}")]
    CurrencyMismatch {
        leg: u16,
        account: AccountId,
        account_currency: Currency,
        leg_currency: Currency,
    },
    #[error("leg {leg}: account {account:?} has {available} available, {requested} requested")]
    InsufficientFunds {
        leg: u16,
        account: AccountId,
        available: Decimal,
        requested: Decimal,
    },
    #[error("leg {leg}: account {account:?} has {frozen} frozen, {requested} requested")]
    InsufficientFrozen {
        leg: u16,
        account: AccountId,
        frozen: Decimal,
        requested: Decimal,
    },
    #[error("leg {leg}: account {account:?} is at version {actual:?}, expected {expected:?}")]
    VersionMismatch {
        leg: u16,
        account: AccountId,
        expected: Version,
        actual: Version,
    },
    #[error("leg {leg}: account {account:?} balance would overflow")]
    BalanceOverflow { leg: u16, account: AccountId },
}

impl Reject {
    /// The leg a stateful refusal points at, for ordering refusals of one
    /// transaction that come from different shards.
    pub(crate) fn leg(&self) -> u16 {
        match self {
            Reject::AccountNotFound { leg, .. }
            | Reject::AccountClosed { leg, .. }
            | Reject::AccountFrozen { leg, .. }
            | Reject::AccountReceiveOnly { leg, .. }
            | Reject::AccountPayOnly { leg, .. }
            | Reject::CurrencyMismatch { leg, .. }
            | Reject::InsufficientFunds { leg, .. }
            | Reject::InsufficientFrozen { leg, .. }
            | Reject::VersionMismatch { leg, .. }
            | Reject::BalanceOverflow { leg, .. } => *leg,
            _ => 0,
        }
    }
}

/// The answer for one transaction of a `submit` call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: TxnId,
    /// When the engine sequenced it; `None` if refused before sequencing
    /// (malformed input is checked first and never sequenced).
    pub timestamp: Option<Timestamp>,
    pub result: Result<(), Reject>,
    /// True when this is the stored answer to an earlier submission of the
    /// same transaction: nothing was applied this time.
    pub duplicate: bool,
}

impl Outcome {
    pub fn is_committed(&self) -> bool {
        self.result.is_ok()
    }
}
