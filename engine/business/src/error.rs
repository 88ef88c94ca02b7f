//! The typed reasons the ledger refuses a request. A refused request posted
//! nothing.

use super::account_no::{AccountNo, AccountNoError};
use super::ids::CouponId;
use super::member::{IdError, MemberKind, MemberLevel};
use super::rules::{FieldType, RuleError};
use rust_decimal::Decimal;
use tally_engine::AccountError;
use tally_engine::Reject;
use tally_engine::{CloseError, OpenError, SubmitError};
use tally_engine::{Currency, TxnId};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    // ---- the request -------------------------------------------------------
    #[error("unknown transaction code {0:?}")]
    UnknownTxnCode(String),
    #[error("{txn}: missing request field {field:?}")]
    MissingField { txn: String, field: String },
    #[error("{txn}: request field {field:?} is not one of this transaction's fields")]
    UnexpectedField { txn: String, field: String },
    #[error("{txn}: field {field:?} must be a {expected}")]
    FieldType {
        txn: String,
        field: String,
        expected: FieldType,
    },
    #[error("{txn}: field {field:?} must be positive, got {value}")]
    AmountNotPositive {
        txn: String,
        field: String,
        value: Decimal,
    },
    #[error("{txn}: leg {leg} would post a negative amount {value} (a fee above the amount?)")]
    NegativeLeg {
        txn: String,
        leg: usize,
        value: Decimal,
    },
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
    #[error(transparent)]
    InvalidAccountNo(#[from] AccountNoError),
    #[error(transparent)]
    InvalidId(#[from] IdError),

    // ---- members -----------------------------------------------------------
    #[error("no member with account number {0}")]
    UnknownMember(AccountNo),
    #[error("member {0} has not passed real-name verification")]
    MemberNotVerified(AccountNo),
    #[error("member {0} exists with other data")]
    MemberConflict(AccountNo),
    #[error("the registry holds {max} members, the most it may")]
    TooManyMembers { max: usize },
    #[error("a {kind:?} member cannot have this kind of real-name record")]
    PartyMismatch { kind: MemberKind },
    #[error("unknown member level {0}")]
    UnknownLevel(MemberLevel),
    #[error("a {kind:?} member cannot have a {account} account")]
    SubAccountNotAllowed { kind: MemberKind, account: String },

    // ---- limits --------------------------------------------------------------
    #[error("member {member}: {requested} is above the per-transaction limit {limit}")]
    PerTxnLimitExceeded {
        member: AccountNo,
        limit: Decimal,
        requested: Decimal,
    },
    #[error(
        "member {member}: {used} used today, {requested} more is above the daily limit {limit}"
    )]
    DailyLimitExceeded {
        member: AccountNo,
        limit: Decimal,
        used: Decimal,
        requested: Decimal,
    },

    // ---- reverse transactions -------------------------------------------------
    #[error("transaction {0:?} not found")]
    OriginalNotFound(TxnId),
    #[error("transaction {0:?} was refused; there is nothing to undo")]
    OriginalNotCommitted(TxnId),
    #[error("transaction {original:?} cannot be refunded: {reason}")]
    NotRefundable { original: TxnId, reason: String },
    #[error("refund of {original:?}: {refunded} refunded already, {requested} more is above the original {amount}")]
    RefundExceedsOriginal {
        original: TxnId,
        amount: Decimal,
        refunded: Decimal,
        requested: Decimal,
    },
    #[error("refund of {original:?}: refund number {seq} requested, the next is {next}")]
    RefundSeqGap {
        original: TxnId,
        seq: u32,
        next: u32,
    },
    #[error("transaction {0:?} was reversed already")]
    AlreadyReversed(TxnId),
    #[error("transaction {original:?} cannot be reversed: {reason}")]
    NotReversible { original: TxnId, reason: String },
    #[error("pending {0:?}: a partial capture needs a two-leg reservation")]
    PartialCaptureUnsupported(TxnId),
    #[error("the daily summary of an account ran the most times a day it may")]
    SummaryAlreadyPosted,

    // ---- red packets -----------------------------------------------------------
    #[error("the rules configure no red packets")]
    RedPacketsNotConfigured,
    #[error("amount {0} does not fit the currency (too many decimal places or too large)")]
    InvalidAmount(Decimal),
    #[error("a red packet has 1..={max} packets, not {count}")]
    RedPacketCount { count: u32, max: u32 },
    #[error("{total} cannot make {count} packets of at least {smallest}")]
    RedPacketTooSmall {
        total: Decimal,
        count: u32,
        smallest: Decimal,
    },
    #[error("red packet {0:?} exists with other content")]
    RedPacketConflict(TxnId),
    #[error("no red packet {0:?} (never sent, or its send was refused)")]
    UnknownRedPacket(TxnId),
    #[error("member {member} claimed red packet {packet:?} already")]
    AlreadyClaimed { packet: TxnId, member: AccountNo },
    #[error("every packet of red packet {0:?} is claimed")]
    AllClaimed(TxnId),
    #[error("red packet {0:?} has expired")]
    RedPacketExpired(TxnId),
    #[error("the sender may not claim red packet {0:?}")]
    OwnRedPacket(TxnId),
    #[error("red packet {0:?} changed under this claim (another ledger on the store?): try again")]
    RedPacketBusy(TxnId),

    // ---- coupons -----------------------------------------------------------------
    #[error("the rules have no coupon_pay and coupon_refund")]
    CouponsNotConfigured,
    #[error("a coupon batch has 1..={max} coupons, not {count}")]
    CouponCount { count: u64, max: u64 },
    #[error("a coupon batch's validity must end after it starts")]
    CouponWindow,
    #[error("the platform's share of a coupon is 0..=100 percent")]
    CouponFundingSplit,
    #[error("member {0} is not a merchant")]
    NotAMerchant(AccountNo),
    #[error("coupon batch {0:?} exists with other content")]
    CouponBatchConflict(TxnId),
    #[error("no coupon {0:?}")]
    UnknownCoupon(CouponId),
    #[error("coupon {0:?} is another merchant's")]
    CouponOfAnotherMerchant(CouponId),
    #[error("coupon {0:?} is not valid now")]
    CouponExpired(CouponId),
    #[error(
        "member {member} has redeemed {limit} coupons of the batch of {coupon:?}, the most it may"
    )]
    CouponLimit {
        coupon: CouponId,
        member: AccountNo,
        limit: u32,
    },
    #[error(
        "coupon {0:?}: its redemption could not be decided (an error in its group): try again"
    )]
    CouponBusy(CouponId),
    #[error("coupon {0:?} was redeemed already")]
    CouponAlreadyRedeemed(CouponId),
    #[error("merchant {merchant}'s marketing account cannot fund coupon {coupon:?}")]
    MarketingShort {
        merchant: AccountNo,
        coupon: CouponId,
    },

    // ---- persons and the member lifecycle --------------------------------------
    #[error("this person has the most members the rules allow ({max})")]
    TooManyMembersForPerson { max: u32 },
    #[error("member {member}'s person would pay {requested} today after {used}, above its limit {limit}")]
    PersonDailyLimitExceeded {
        member: AccountNo,
        limit: Decimal,
        used: Decimal,
        requested: Decimal,
    },
    #[error("member {0} is frozen")]
    MemberFrozen(AccountNo),
    #[error("member {0} is closed")]
    MemberClosed(AccountNo),
    #[error("member {0}'s accounts hold or await money: it cannot be closed")]
    MemberHasMoney(AccountNo),
    #[error("member {member}: {action} changes nothing")]
    MemberUnchanged { member: AccountNo, action: String },
    #[error("a member's account cannot be set {0:?} on its own: close the member")]
    AccountStatusNotAllowed(tally_engine::AccountStatus),
    #[error("a member change needs `{field}`: 1..={max} characters, not blank")]
    MemberChangeNote { field: String, max: usize },

    // ---- money held in suspense ------------------------------------------------
    #[error("nothing is held in suspense for member {member} by transaction {held:?}")]
    HeldNotFound { held: TxnId, member: AccountNo },
    #[error("what {held:?} holds for member {member} was paid out already by {payout:?}")]
    HeldPaidOut {
        held: TxnId,
        member: AccountNo,
        payout: TxnId,
    },
    #[error("member {0} is closed: a held amount is paid to an open member or a channel")]
    PayoutToClosed(AccountNo),
    #[error("a payout of held money needs `{field}`: 1..={max} characters, not blank")]
    PayoutNote { field: String, max: usize },
    #[error("{non_withdrawable} of what {held:?} holds for member {member} is non-withdrawable: pay it to a member, not out through a channel")]
    HeldNonWithdrawable {
        held: TxnId,
        member: AccountNo,
        non_withdrawable: Decimal,
    },
    #[error("too many refused payouts of what {held:?} holds for member {member}")]
    PayoutAttempts { held: TxnId, member: AccountNo },

    // ---- the engine ----------------------------------------------------------
    #[error("refused by the engine: {0}")]
    Rejected(Reject),
    #[error(transparent)]
    Engine(#[from] SubmitError),
    /// The day's close could not be made (a failed check is not this: it
    /// is in the close's report).
    #[error("close: {0}")]
    Close(CloseError),
    /// A channel's statement file that cannot be read (nothing compared).
    #[error("statement file: {0}")]
    Statement(StatementError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error("the rules' currency {0} is not configured in the engine")]
    CurrencyNotConfigured(Currency),
    #[error("member record cannot be written or read: {0}")]
    MemberRecord(String),
}

/// Why a statement file was refused (nothing is compared).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatementError {
    #[error("the header must be `reference,amount,date`")]
    Header,
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("more than {max} lines")]
    TooLong { max: usize },
}
