//! Internal accounts (内部账户): the platform's own books, preset per business
//! line ("platform" accounts) and per funding channel, opened from the rule
//! file's configuration when the ledger starts.
//!
//! Numbers: class `90`; a channel's accounts have serial `channel × 100 +
//! code`, the platform's `code`. An internal account posted "daily" has
//! summary slots under the same number (sub-account codes `1..=slots`) that
//! take its real-time legs; the daily summary moves them onto the account
//! (sub-account code 0) in one posting.

use super::account_no::{AccountClass, AccountNo};
use super::subject::{codes, Chart};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;
use tally_engine::{AccountKind, NewAccount};
use tally_engine::{Currency, Side, SubjectCode};

/// Largest channel number.
pub const CHANNEL_NUMBER_MAX: u16 = 9_999;

/// An account every funding channel has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChannelAccount {
    /// 应收: what the channel owes the platform (top-ups arrive here).
    Receivable,
    /// 应付: what the platform owes out through the channel (withdrawals).
    Payable,
    /// 在途: money on its way through the channel.
    InTransit,
    /// 付款计划: merchant payouts planned but not yet confirmed by the bank.
    PayoutPlan,
}

impl ChannelAccount {
    pub const ALL: [ChannelAccount; 4] = [
        ChannelAccount::Receivable,
        ChannelAccount::Payable,
        ChannelAccount::InTransit,
        ChannelAccount::PayoutPlan,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ChannelAccount::Receivable => "receivable",
            ChannelAccount::Payable => "payable",
            ChannelAccount::InTransit => "in_transit",
            ChannelAccount::PayoutPlan => "payout_plan",
        }
    }

    pub fn parse(name: &str) -> Option<ChannelAccount> {
        ChannelAccount::ALL.into_iter().find(|a| a.name() == name)
    }

    fn code(self) -> u64 {
        match self {
            ChannelAccount::Receivable => 1,
            ChannelAccount::Payable => 2,
            ChannelAccount::InTransit => 3,
            ChannelAccount::PayoutPlan => 4,
        }
    }

    pub fn subject(self) -> SubjectCode {
        match self {
            ChannelAccount::Receivable => codes::CHANNEL_RECEIVABLE,
            ChannelAccount::Payable => codes::CHANNEL_PAYABLE,
            ChannelAccount::InTransit => codes::IN_TRANSIT,
            ChannelAccount::PayoutPlan => codes::PAYOUT_PLAN,
        }
    }
}

/// An account of the platform's business line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PlatformAccount {
    FeeIncome,
    /// The platform's marketing funds: red packets and subsidies.
    MarketingPool,
    InTransit,
    /// Refunds the ledger could not credit (the member was closed), held
    /// with a record of whom they belong to.
    Suspense,
}

impl PlatformAccount {
    pub const ALL: [PlatformAccount; 4] = [
        PlatformAccount::FeeIncome,
        PlatformAccount::MarketingPool,
        PlatformAccount::InTransit,
        PlatformAccount::Suspense,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlatformAccount::FeeIncome => "fee_income",
            PlatformAccount::MarketingPool => "marketing_pool",
            PlatformAccount::InTransit => "in_transit",
            PlatformAccount::Suspense => "suspense",
        }
    }

    pub fn parse(name: &str) -> Option<PlatformAccount> {
        PlatformAccount::ALL.into_iter().find(|a| a.name() == name)
    }

    fn code(self) -> u64 {
        match self {
            PlatformAccount::FeeIncome => 11,
            PlatformAccount::MarketingPool => 12,
            PlatformAccount::InTransit => 13,
            PlatformAccount::Suspense => 14,
        }
    }

    pub fn subject(self) -> SubjectCode {
        match self {
            PlatformAccount::FeeIncome => codes::FEE_INCOME,
            PlatformAccount::MarketingPool => codes::MARKETING_EXPENSE,
            PlatformAccount::InTransit => codes::IN_TRANSIT,
            PlatformAccount::Suspense => codes::SUSPENSE,
        }
    }
}

/// A funding channel (a bank, a card scheme, …) from the rule file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub name: String,
    /// `1..=CHANNEL_NUMBER_MAX`; fixes the channel's account numbers, so it
    /// must never change once postings exist.
    pub number: u16,
}

/// One internal account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Internal {
    Channel {
        number: u16,
        account: ChannelAccount,
    },
    Platform(PlatformAccount),
}

impl Internal {
    pub fn account_no(self) -> AccountNo {
        let serial = match self {
            Internal::Channel { number, account } => u64::from(number) * 100 + account.code(),
            Internal::Platform(account) => account.code(),
        };
        // Serials here are below 10^6, far under the limit.
        AccountNo::new(AccountClass::Internal, serial).unwrap_or(AccountNo::MIN_INTERNAL)
    }

    pub fn subject(self) -> SubjectCode {
        match self {
            Internal::Channel { account, .. } => account.subject(),
            Internal::Platform(account) => account.subject(),
        }
    }

    /// The engine account of this internal account (`sub` 0) or of one of
    /// its summary slots (`sub` 1..).
    pub fn new_account(self, chart: &Chart, currency: Currency, sub: u8) -> NewAccount {
        let subject = self.subject();
        NewAccount {
            id: self.account_no().account_id(sub),
            currency,
            subject,
            kind: AccountKind::Internal,
            normal_side: chart.normal_side(subject).unwrap_or(Side::Debit),
            // The platform's own books may go negative: a receivable that
            // the bank has not yet confirmed, fees refunded, ….
            allow_negative: true,
            credit_limit: Decimal::ZERO,
        }
    }
}

impl fmt::Display for Internal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Internal::Channel { number, account } => {
                write!(f, "channel {number} {}", account.name())
            }
            Internal::Platform(account) => write!(f, "platform {}", account.name()),
        }
    }
}

impl AccountNo {
    /// The smallest internal number (a fallback that is never reached).
    pub const MIN_INTERNAL: AccountNo = AccountNo::internal_zero();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_numbers_are_distinct_and_of_the_internal_class() {
        let mut seen = std::collections::HashSet::new();
        for number in [1u16, 2, CHANNEL_NUMBER_MAX] {
            for account in ChannelAccount::ALL {
                let no = Internal::Channel { number, account }.account_no();
                assert_eq!(no.class(), AccountClass::Internal);
                assert!(seen.insert(no));
            }
        }
        for account in PlatformAccount::ALL {
            assert!(seen.insert(Internal::Platform(account).account_no()));
        }
    }

    #[test]
    fn normal_sides_come_from_the_chart() {
        let chart = Chart::standard();
        let receivable = Internal::Channel {
            number: 1,
            account: ChannelAccount::Receivable,
        };
        assert_eq!(
            receivable.new_account(&chart, Currency::CNY, 0).normal_side,
            Side::Debit
        );
        let payable = Internal::Channel {
            number: 1,
            account: ChannelAccount::Payable,
        };
        assert_eq!(
            payable.new_account(&chart, Currency::CNY, 0).normal_side,
            Side::Credit
        );
        let fee = Internal::Platform(PlatformAccount::FeeIncome);
        assert_eq!(
            fee.new_account(&chart, Currency::CNY, 0).normal_side,
            Side::Credit
        );
    }
}
