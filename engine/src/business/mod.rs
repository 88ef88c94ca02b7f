//! The account system above the posting core: members and their real-name
//! records, account numbers and templates, the chart of accounts, internal
//! accounts, posting rules loaded from TOML, and the [`Ledger`] service that
//! turns typed business requests into engine transactions.
//!
//! What it depends on: the engine's public API only ([`crate::Engine`]).
//! What it must never do: post anything for a request it refuses, or let
//! the core learn a business word (the core sees accounts, legs and codes).

pub mod account_no;
mod error;
pub mod internal;
mod ledger;
pub mod member;
pub mod rules;
pub mod subject;
pub mod template;

pub use account_no::{AccountClass, AccountNo, AccountNoError};
pub use error::LedgerError;
pub use internal::{Channel, ChannelAccount, Internal, PlatformAccount};
pub use ledger::{
    derived_id, Ledger, OpenMember, PostRequest, Posted, REFUNDS_PER_TXN_MAX, REVERSAL_ATTEMPTS_MAX,
};
pub use member::{CreditCode, IdCardNo, IdError, Member, MemberKind, MemberLevel, Party};
pub use rules::{
    AccountRef, AmountExpr, BuildError, FieldType, LegRule, Limits, RuleError, RuleKind, RuleSet,
    Timing, TxnRule, DEFAULT_RULES,
};
pub use subject::{Chart, ChartError, Subject, SubjectClass};
pub use template::AccountType;
