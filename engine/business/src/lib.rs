//! The account system above the posting core: members and their real-name
//! records, account numbers and templates, the chart of accounts, internal
//! accounts, posting rules loaded from TOML, and the [`Ledger`] service that
//! turns typed business requests into engine transactions.
//!
//! ```
//! use rust_decimal::Decimal;
//! use tally_business::{Ledger, MemberKind, MemberLevel, OpenMember, PostRequest};
//! use tally_engine::{Config, TxnId};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let ledger = Ledger::open_default(Config::memory()).await.expect("open");
//! let person = |serial, id_number: &str| OpenMember {
//!     serial,
//!     kind: MemberKind::PersonalUser,
//!     name: "Alice".into(),
//!     id_number: id_number.into(),
//!     legal: false,
//!     level: MemberLevel("verified".into()),
//!     verified: true,
//! };
//! let alice = ledger.open_member(person(1, "11010519491231002X")).await.expect("member").number;
//! let bob = ledger.open_member(person(2, "110101199003074514")).await.expect("member").number;
//! let top_up = PostRequest::new(TxnId(1), "top_up")
//!     .member("member", alice)
//!     .channel("channel", "icbc")
//!     .amount("amount", Decimal::new(100_00, 2));
//! ledger.post(top_up).await.expect("top-up");
//! let transfer = PostRequest::new(TxnId(2), "transfer")
//!     .member("payer", alice)
//!     .member("payee", bob)
//!     .amount("amount", Decimal::new(30_00, 2));
//! ledger.post(transfer).await.expect("transfer");
//! ledger.reverse(TxnId(2)).await.expect("reversal");
//! assert!(ledger.reverse(TxnId(2)).await.is_err(), "once only");
//! # });
//! ```
//!
//! What it depends on: the engine's public API only ([`tally_engine::Engine`]): it is its own crate, so the compiler enforces it, and an embedder of the core alone does not compile it.
//! What it must never do: post anything for a request it refuses, or let
//! the core learn a business word (the core sees accounts, legs and codes).

pub mod account_no;
mod close;
mod compiled;
mod coupon;
mod coupon_book;
mod error;
mod ids;
pub mod internal;
mod ledger;
mod lifecycle;
pub mod member;
mod open;
mod person;
mod posted;
mod reconcile;
mod red_packet;
mod red_packet_book;
pub mod rules;
pub mod subject;
mod suspense;
pub mod template;

pub use account_no::{AccountClass, AccountNo, AccountNoError};
pub use close::{subject_ledger, DayClose, SubjectLine};
pub use coupon::{IssueCoupons, PayWithCoupon, Redeem, COUPONS_PER_BATCH_MAX, COUPON_USES_MAX};
pub use coupon_book::{CouponBatch, CouponFunding, LedgerEvent, OnRefund, Redeemed};
pub use error::{LedgerError, StatementError};
pub use ids::{coupon_use_id, derived_id, CouponId};
pub use internal::{Channel, ChannelAccount, Internal, PlatformAccount};
pub use ledger::{
    Finish, Ledger, OpenMember, PostRequest, Refund, REFUNDS_PER_TXN_MAX, REVERSAL_ATTEMPTS_MAX,
};
pub use lifecycle::MEMBER_NOTE_MAX;
pub use member::{CreditCode, IdCardNo, IdError, Member, MemberKind, MemberLevel, Party};
pub use person::{identity, MemberAction, MemberChange, MemberEvent, MemberStatus};
pub use posted::Posted;
pub use reconcile::{
    parse_statement, reconcile_items, ChannelLine, Mismatch, OurItem, Reconciliation,
    REFERENCE_MAX, STATEMENT_LINES_MAX,
};
pub use red_packet::{split_red_packet, RedPacketAudit, RedPacketView, SendRedPacket};
pub use red_packet_book::{red_packet_account, Claimed, RedPacket, RED_PACKET_SLOTS};
pub use rules::{
    AccountRef, AmountExpr, BuildError, FieldType, LegRule, Limits, PersonRules, RedPacketRules,
    RuleError, RuleKind, RuleSet, Timing, TxnRule, DEFAULT_RULES, RED_PACKETS_MAX,
};
pub use subject::{Chart, ChartError, Subject, SubjectClass};
pub use suspense::{HeldPayout, HeldRefund, PayOutHeld, PayoutTo, HELD_PAYOUT_ATTEMPTS_MAX};
pub use template::AccountType;
