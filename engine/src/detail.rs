//! Details (账户明细): one per applied leg, with the balance before and after.
//! A shard keeps its details in one append-only table in timestamp order;
//! each detail links to the previous detail of the same account, so an
//! account's history is a chain whose every `balance_pre` equals the previous
//! `balance_post`.

use crate::account::LegOp;
use crate::types::{
    AccountId, AccountingDate, Bucket, Minor, Side, Timestamp, TxnCode, TxnId, Version,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// What a detail records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DetailKind {
    /// The balance moved by `amount`.
    Posted,
    /// `amount` was reserved (debit) or promised (credit); balance unchanged.
    Reserved,
    /// A reservation was captured: the balance moved by `amount`.
    Captured,
    /// A reservation of `amount` was released; balance unchanged.
    Released,
}

impl DetailKind {
    pub(crate) fn of(op: LegOp) -> DetailKind {
        match op {
            LegOp::Post => DetailKind::Posted,
            LegOp::Reserve => DetailKind::Reserved,
            LegOp::Capture { .. } => DetailKind::Captured,
            LegOp::Release { .. } => DetailKind::Released,
        }
    }
}

// A detail's size is fixed at compile time: chunks hold 16,384 of them
// and the memory budget counts on 96 bytes each (ARCHITECTURE.md).
const _: () = assert!(std::mem::size_of::<Detail>() == 96);

/// A shard's stored detail, integer minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Detail {
    pub txn: TxnId,
    pub account: AccountId,
    pub timestamp: Timestamp,
    pub amount: i64,
    pub balance_pre: i64,
    pub balance_post: i64,
    pub version: u64,
    /// Index of the same account's previous detail, or `NO_DETAIL`.
    pub prev: u32,
    pub code: TxnCode,
    pub date: AccountingDate,
    /// Position of the leg in its transaction: the clearing sequence (清算场次).
    pub leg: u16,
    pub side: Side,
    pub bucket: Bucket,
    pub kind: DetailKind,
    pub scale: u8,
}

impl Detail {
    pub fn view(&self) -> DetailView {
        let dec = |v: i64| Minor(v).to_decimal(u32::from(self.scale));
        DetailView {
            account: self.account,
            txn: self.txn,
            code: self.code,
            leg: self.leg,
            side: self.side,
            bucket: self.bucket,
            kind: self.kind,
            amount: dec(self.amount),
            balance_pre: dec(self.balance_pre),
            balance_post: dec(self.balance_post),
            version: Version(self.version),
            timestamp: self.timestamp,
            date: self.date,
        }
    }
}

/// A read of one detail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailView {
    pub account: AccountId,
    pub txn: TxnId,
    pub code: TxnCode,
    /// Clearing sequence: the leg's position in its transaction.
    pub leg: u16,
    pub side: Side,
    pub bucket: Bucket,
    pub kind: DetailKind,
    pub amount: Decimal,
    pub balance_pre: Decimal,
    pub balance_post: Decimal,
    /// The account's version after this detail.
    pub version: Version,
    pub timestamp: Timestamp,
    pub date: AccountingDate,
}

/// A page of details, oldest first. `next` is the cursor for the following
/// page (pass it as `after`), `None` on the last page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailPage {
    pub details: Vec<DetailView>,
    pub next: Option<DetailCursor>,
}

/// Where a page ended: the last detail returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DetailCursor {
    pub timestamp: Timestamp,
    pub leg: u16,
}

/// Details per page, at most.
pub const DETAIL_PAGE_MAX: usize = 1_000;

/// A details query: `[from, to)` by accounting time, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailQuery {
    pub account: AccountId,
    pub from: Timestamp,
    pub to: Timestamp,
    pub limit: usize,
    pub after: Option<DetailCursor>,
}

impl DetailQuery {
    /// Every detail of `account`, first page of up to `limit`.
    pub fn all(account: AccountId, limit: usize) -> DetailQuery {
        DetailQuery {
            account,
            from: Timestamp(0),
            to: Timestamp(u64::MAX),
            limit,
            after: None,
        }
    }
}
