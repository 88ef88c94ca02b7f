//! An accounting day as the shards see it: what a scan of one closed date
//! finds on each account (opening, movements, closing, problems), and the
//! failures a close reports. Plain data: the shards produce it, `eod`
//! combines it; this module depends on neither.

use crate::types::{AccountId, AccountingDate, Currency, SubjectCode, TxnId, Version};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Accounts a shard scans per message, at most: a scan runs between
/// batches, so one message is a pause of the shard, bounded here.
pub(crate) const SCAN_ACCOUNTS_MAX: usize = 4_096;
/// Details a shard reads per scan message, at most (an account's walk is
/// not split, so one very busy account may pass it once).
pub(crate) const SCAN_DETAILS_MAX: usize = 16_384;

/// One account on one closed date, in minor units of its currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AccountDay {
    pub account: AccountId,
    pub subject: SubjectCode,
    pub currency: Currency,
    pub scale: u8,
    /// The balance at the start of the date: the post-balance of the last
    /// detail before it (zero if none).
    pub opening: i64,
    /// The balance at the cut: the post-balance of the date's last detail.
    pub closing: i64,
    /// Sums of the date's balance-moving details, by side.
    pub debits: i128,
    pub credits: i128,
    /// The date's balance-moving details, on the account's normal side up:
    /// what the subject ledger adds to its balance for this account.
    pub net: i128,
    /// The date's details (every kind).
    pub details: u32,
}

/// One leg of a transaction on the date: debit positive, credit negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DayLeg {
    pub txn: TxnId,
    pub currency: Currency,
    pub signed: i128,
}

/// What a scan message asks: a date, from an account slot, the key of
/// the legs check's weights, and whether to send each leg (the second
/// pass, only when the weighted sums say some transaction is off).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DayScan {
    pub date: AccountingDate,
    pub from: u32,
    pub key: [u64; 2],
    pub legs: bool,
}

/// A transaction's weight in the legs check: a keyed hash of its id, odd
/// (so a nonzero net times it is nonzero modulo 2^128).
pub(crate) fn weight(key: [u64; 2], txn: TxnId) -> u128 {
    use siphasher::sip128::{Hasher128, SipHasher13};
    use std::hash::Hasher;
    let mut h = SipHasher13::new_with_keys(key[0], key[1]);
    h.write(&txn.0.to_le_bytes());
    h.finish128().as_u128() | 1
}

/// A shard's answer to one scan message.
#[derive(Debug, Default)]
pub(crate) struct DayPart {
    pub accounts: Vec<AccountDay>,
    /// Per currency, Σ signed leg × weight(txn), wrapping: zero when every
    /// transaction's legs net to zero (and, with a random key, nonzero
    /// with probability 1 − 2⁻¹²⁸ when one does not). Each transaction
    /// counts once whatever its number of legs, so this costs no memory
    /// per transaction; only a failing day is scanned again with `legs`.
    pub weighted: Vec<(Currency, u128)>,
    /// The date's transactions seen here (their leg 0).
    pub transactions: u64,
    /// Every leg of the date, only when asked (`DayScan::legs`).
    pub legs: Vec<DayLeg>,
    pub failures: Vec<CloseFailure>,
    /// Where the next message starts (`None`: the shard is done).
    pub next_slot: Option<u32>,
}

/// A check of the close that failed, naming what it found wrong. A close
/// never passes with one of these in its report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CloseFailure {
    /// The subject ledger (its balance the day before, plus the day's
    /// movements from the details) differs from the sum of its accounts.
    SubjectMismatch {
        subject: SubjectCode,
        currency: Currency,
        ledger: Decimal,
        accounts: Decimal,
    },
    /// A trial-balance line stored at an earlier run of this close differs
    /// from what the details give now.
    StoredLineChanged {
        subject: SubjectCode,
        currency: Currency,
        stored: Decimal,
        computed: Decimal,
    },
    /// A stored trial-balance line cannot be read.
    StoredLineUnreadable { key: String },
    /// The day's debits and credits differ in a currency.
    DayUnbalanced {
        currency: Currency,
        debits: Decimal,
        credits: Decimal,
    },
    /// A transaction's legs on the date do not balance in a currency.
    TxnUnbalanced {
        txn: TxnId,
        currency: Currency,
        net_debit: Decimal,
    },
    /// Two neighbouring details of an account do not chain: the newer's
    /// pre-balance is not the older's post-balance, or its version is not
    /// higher.
    ChainBroken {
        account: AccountId,
        txn: TxnId,
        version: Version,
        balance_pre: Decimal,
        previous_post: Decimal,
    },
    /// A detail's balance moved by other than its amount.
    DetailAmount {
        account: AccountId,
        txn: TxnId,
        version: Version,
        amount: Decimal,
        balance_pre: Decimal,
        balance_post: Decimal,
    },
    /// The account's oldest detail does not start from an empty account.
    ChainStart {
        account: AccountId,
        version: Version,
        balance_pre: Decimal,
    },
    /// The account's stored balance is not its newest detail's
    /// post-balance.
    StoredBalance {
        account: AccountId,
        stored: Decimal,
        chain: Decimal,
    },
    /// The account's stored opening balance of a date is not what its
    /// details give.
    StoredOpening {
        account: AccountId,
        date: AccountingDate,
        stored: Decimal,
        chain: Decimal,
    },
    /// An account's details could not be read (a cold chunk).
    DetailsUnreadable { account: AccountId, reason: String },
}

/// A decimal of `units` minor units at `scale`, saturating at the
/// decimal's range (sums of many balances are `i128`).
pub(crate) fn decimal(units: i128, scale: u8) -> Decimal {
    let bound = i128::from(i64::MAX) * i128::from(u32::MAX);
    Decimal::try_from_i128_with_scale(units.clamp(-bound, bound), u32::from(scale))
        .unwrap_or(Decimal::MAX)
}

/// An account's statement of one accounting date (对账单): the balance at
/// the start, the date's details oldest first, the balance at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub account: AccountId,
    pub currency: Currency,
    pub date: AccountingDate,
    pub opening: Decimal,
    /// Sums of the balance-moving details, by side.
    pub debits: Decimal,
    pub credits: Decimal,
    pub closing: Decimal,
    /// At most `DETAIL_PAGE_MAX`, the date's first ones; `complete` says
    /// whether that is all of them (the sums and balances always are).
    pub details: Vec<crate::DetailView>,
    pub complete: bool,
}
