//! Account templates: the standard set of accounts a member of each kind
//! gets when it is opened, and the sub-accounts that may be added later
//! under the same main account number.

use super::member::MemberKind;
use super::subject::codes;
use serde::{Deserialize, Serialize};
use std::fmt;
use tally_engine::SubjectCode;

/// A member account's type: its sub-account code under the main number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AccountType {
    Balance,
    PendingSettlement,
    Marketing,
    Wealth,
    Coupon,
}

impl AccountType {
    pub const ALL: [AccountType; 5] = [
        AccountType::Balance,
        AccountType::PendingSettlement,
        AccountType::Marketing,
        AccountType::Wealth,
        AccountType::Coupon,
    ];

    /// The sub-account code (the last two digits of the engine account id).
    pub fn code(self) -> u8 {
        match self {
            AccountType::Balance => 1,
            AccountType::PendingSettlement => 2,
            AccountType::Marketing => 3,
            AccountType::Wealth => 10,
            AccountType::Coupon => 11,
        }
    }

    pub fn of_code(code: u8) -> Option<AccountType> {
        AccountType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The name rule files use.
    pub fn name(self) -> &'static str {
        match self {
            AccountType::Balance => "balance",
            AccountType::PendingSettlement => "pending_settlement",
            AccountType::Marketing => "marketing",
            AccountType::Wealth => "wealth",
            AccountType::Coupon => "coupon",
        }
    }

    pub fn parse(name: &str) -> Option<AccountType> {
        AccountType::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for AccountType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The accounts opened with a member of `kind`.
pub fn template(kind: MemberKind) -> &'static [AccountType] {
    if kind.is_merchant() {
        &[
            AccountType::Balance,
            AccountType::PendingSettlement,
            AccountType::Marketing,
        ]
    } else {
        &[AccountType::Balance]
    }
}

/// Sub-accounts that may be added after opening.
pub fn may_add(kind: MemberKind, account: AccountType) -> bool {
    matches!(account, AccountType::Wealth | AccountType::Coupon)
        || template(kind).contains(&account)
}

/// The subject of a member account.
pub fn subject(kind: MemberKind, account: AccountType) -> SubjectCode {
    match (kind, account) {
        (MemberKind::PersonalUser, AccountType::Balance) => codes::PERSONAL_BALANCE,
        (MemberKind::BusinessUser, AccountType::Balance) => codes::BUSINESS_BALANCE,
        (_, AccountType::Balance) => codes::MERCHANT_BALANCE,
        (_, AccountType::PendingSettlement) => codes::MERCHANT_PENDING_SETTLEMENT,
        (_, AccountType::Marketing) => codes::MERCHANT_MARKETING,
        (_, AccountType::Wealth) => codes::WEALTH,
        (_, AccountType::Coupon) => codes::COUPON,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::Chart;
    use tally_engine::Side;

    #[test]
    fn templates_per_kind() {
        assert_eq!(template(MemberKind::PersonalUser), [AccountType::Balance]);
        assert_eq!(template(MemberKind::MerchantMicro).len(), 3);
        assert!(may_add(MemberKind::PersonalUser, AccountType::Wealth));
        assert!(!may_add(
            MemberKind::PersonalUser,
            AccountType::PendingSettlement
        ));
    }

    #[test]
    fn every_member_account_is_a_credit_normal_customer_subject() {
        let chart = Chart::standard();
        let kinds = [
            MemberKind::PersonalUser,
            MemberKind::BusinessUser,
            MemberKind::MerchantCompany,
            MemberKind::MerchantSoleTrader,
            MemberKind::MerchantMicro,
        ];
        for kind in kinds {
            for account in AccountType::ALL {
                let code = subject(kind, account);
                assert!(
                    chart.is_under(code, codes::CUSTOMER_DEPOSITS),
                    "{kind:?} {account}"
                );
                assert_eq!(chart.normal_side(code), Some(Side::Credit));
            }
        }
        for t in AccountType::ALL {
            assert_eq!(AccountType::of_code(t.code()), Some(t));
            assert_eq!(AccountType::parse(t.name()), Some(t));
        }
    }
}
