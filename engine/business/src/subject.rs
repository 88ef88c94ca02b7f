//! The chart of accounts (会计科目): a tree of subjects, each with a class
//! that fixes its normal balance side. Every account the ledger opens names
//! a leaf-or-branch subject of this chart and takes its normal side from it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tally_engine::{Side, SubjectCode};

/// The five classes of a chart of accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SubjectClass {
    Asset,
    Liability,
    Equity,
    Income,
    Expense,
}

impl SubjectClass {
    /// The side on which a balance of this class grows.
    pub fn normal_side(self) -> Side {
        match self {
            SubjectClass::Asset | SubjectClass::Expense => Side::Debit,
            SubjectClass::Liability | SubjectClass::Equity | SubjectClass::Income => Side::Credit,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub code: SubjectCode,
    pub name: String,
    pub class: SubjectClass,
    pub parent: Option<SubjectCode>,
}

/// Why a chart is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChartError {
    #[error("subject {0:?} appears twice")]
    Duplicate(SubjectCode),
    #[error("subject {child:?}: parent {parent:?} does not exist")]
    MissingParent {
        child: SubjectCode,
        parent: SubjectCode,
    },
    #[error("subject {child:?}: code does not extend its parent's {parent:?}")]
    CodeNotUnderParent {
        child: SubjectCode,
        parent: SubjectCode,
    },
    #[error("subject {child:?} is {child_class:?}, its parent {parent:?} is {parent_class:?}")]
    ClassMismatch {
        child: SubjectCode,
        parent: SubjectCode,
        child_class: SubjectClass,
        parent_class: SubjectClass,
    },
}

/// A validated chart of accounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chart {
    subjects: BTreeMap<SubjectCode, Subject>,
}

/// The platform's standard subjects, by code.
pub mod codes {
    use tally_engine::SubjectCode;
    pub const ASSETS: SubjectCode = SubjectCode(1);
    pub const CHANNEL_RECEIVABLE: SubjectCode = SubjectCode(1122);
    pub const IN_TRANSIT: SubjectCode = SubjectCode(1131);
    pub const LIABILITIES: SubjectCode = SubjectCode(2);
    pub const CUSTOMER_DEPOSITS: SubjectCode = SubjectCode(2201);
    pub const PERSONAL_BALANCE: SubjectCode = SubjectCode(220101);
    pub const BUSINESS_BALANCE: SubjectCode = SubjectCode(220102);
    pub const MERCHANT_BALANCE: SubjectCode = SubjectCode(220103);
    pub const MERCHANT_PENDING_SETTLEMENT: SubjectCode = SubjectCode(220104);
    pub const MERCHANT_MARKETING: SubjectCode = SubjectCode(220105);
    pub const WEALTH: SubjectCode = SubjectCode(220106);
    pub const COUPON: SubjectCode = SubjectCode(220107);
    pub const CHANNEL_PAYABLE: SubjectCode = SubjectCode(2202);
    pub const PAYOUT_PLAN: SubjectCode = SubjectCode(2203);
    /// Product accounts: red packets sent and not yet claimed or returned.
    pub const RED_PACKETS: SubjectCode = SubjectCode(2204);
    /// Money owed to someone the ledger cannot credit now (a refund to a
    /// closed member), held until an operator pays it out.
    pub const SUSPENSE: SubjectCode = SubjectCode(2241);
    pub const EQUITY: SubjectCode = SubjectCode(4);
    pub const INCOME: SubjectCode = SubjectCode(6);
    pub const FEE_INCOME: SubjectCode = SubjectCode(6021);
    pub const EXPENSES: SubjectCode = SubjectCode(7);
    pub const MARKETING_EXPENSE: SubjectCode = SubjectCode(7601);
}

impl Chart {
    /// Builds a chart, checking that every parent exists, every child's code
    /// extends its parent's (2201 → 220101) and shares its class.
    pub fn new(subjects: Vec<Subject>) -> Result<Chart, ChartError> {
        let mut map = BTreeMap::new();
        for s in subjects {
            let code = s.code;
            if map.insert(code, s).is_some() {
                return Err(ChartError::Duplicate(code));
            }
        }
        for s in map.values() {
            let Some(parent) = s.parent else { continue };
            let p = map.get(&parent).ok_or(ChartError::MissingParent {
                child: s.code,
                parent,
            })?;
            if !extends(s.code, parent) {
                return Err(ChartError::CodeNotUnderParent {
                    child: s.code,
                    parent,
                });
            }
            if p.class != s.class {
                return Err(ChartError::ClassMismatch {
                    child: s.code,
                    parent,
                    child_class: s.class,
                    parent_class: p.class,
                });
            }
        }
        Ok(Chart { subjects: map })
    }

    /// The platform's standard chart.
    pub fn standard() -> Chart {
        use codes::*;
        use SubjectClass::*;
        let rows: [(SubjectCode, &str, SubjectClass, Option<SubjectCode>); 21] = [
            (ASSETS, "assets", Asset, None),
            (
                CHANNEL_RECEIVABLE,
                "channel receivable 应收",
                Asset,
                Some(ASSETS),
            ),
            (IN_TRANSIT, "in transit 在途", Asset, Some(ASSETS)),
            (LIABILITIES, "liabilities", Liability, None),
            (
                CUSTOMER_DEPOSITS,
                "customer deposits 客户存款",
                Liability,
                Some(LIABILITIES),
            ),
            (
                PERSONAL_BALANCE,
                "personal balance",
                Liability,
                Some(CUSTOMER_DEPOSITS),
            ),
            (
                BUSINESS_BALANCE,
                "business balance",
                Liability,
                Some(CUSTOMER_DEPOSITS),
            ),
            (
                MERCHANT_BALANCE,
                "merchant balance",
                Liability,
                Some(CUSTOMER_DEPOSITS),
            ),
            (
                MERCHANT_PENDING_SETTLEMENT,
                "merchant pending settlement 待结算",
                Liability,
                Some(CUSTOMER_DEPOSITS),
            ),
            (
                MERCHANT_MARKETING,
                "merchant marketing funds",
                Liability,
                Some(CUSTOMER_DEPOSITS),
            ),
            (
                WEALTH,
                "wealth products",
                Liability,
                Some(CUSTOMER_DEPOSITS),
            ),
            (COUPON, "coupons", Liability, Some(CUSTOMER_DEPOSITS)),
            (
                CHANNEL_PAYABLE,
                "channel payable 应付",
                Liability,
                Some(LIABILITIES),
            ),
            (
                PAYOUT_PLAN,
                "payout plan 付款计划",
                Liability,
                Some(LIABILITIES),
            ),
            (
                RED_PACKETS,
                "red packets in flight 红包",
                Liability,
                Some(LIABILITIES),
            ),
            (
                SUSPENSE,
                "suspense 待处理款项 (refunds held for closed members)",
                Liability,
                Some(LIABILITIES),
            ),
            (EQUITY, "equity", Equity, None),
            (INCOME, "income", Income, None),
            (FEE_INCOME, "fee income 手续费收入", Income, Some(INCOME)),
            (EXPENSES, "expenses", Expense, None),
            (
                MARKETING_EXPENSE,
                "marketing pool 营销",
                Expense,
                Some(EXPENSES),
            ),
        ];
        let subjects = rows
            .into_iter()
            .map(|(code, name, class, parent)| Subject {
                code,
                name: name.to_string(),
                class,
                parent,
            })
            .collect();
        // The rows above satisfy every rule `new` checks (tested below); an
        // empty chart is the fallback no caller ever sees.
        Chart::new(subjects).unwrap_or(Chart {
            subjects: BTreeMap::new(),
        })
    }

    pub fn get(&self, code: SubjectCode) -> Option<&Subject> {
        self.subjects.get(&code)
    }

    pub fn normal_side(&self, code: SubjectCode) -> Option<Side> {
        self.get(code).map(|s| s.class.normal_side())
    }

    /// Direct children of a subject, by code.
    pub fn children(&self, code: SubjectCode) -> Vec<&Subject> {
        self.subjects
            .values()
            .filter(|s| s.parent == Some(code))
            .collect()
    }

    /// Is `code` `ancestor` or below it?
    pub fn is_under(&self, code: SubjectCode, ancestor: SubjectCode) -> bool {
        let mut at = Some(code);
        // The depth is bounded by the number of subjects.
        for _ in 0..=self.subjects.len() {
            match at {
                Some(c) if c == ancestor => return true,
                Some(c) => at = self.get(c).and_then(|s| s.parent),
                None => return false,
            }
        }
        false
    }

    pub fn subjects(&self) -> impl Iterator<Item = &Subject> {
        self.subjects.values()
    }
}

/// Does `child`'s decimal code start with `parent`'s digits and is longer?
fn extends(child: SubjectCode, parent: SubjectCode) -> bool {
    let (c, p) = (child.0.to_string(), parent.0.to_string());
    c.len() > p.len() && c.starts_with(&p)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::codes::*;
    use super::*;

    #[test]
    fn standard_chart_is_a_valid_tree() {
        let chart = Chart::standard();
        assert_eq!(chart.subjects().count(), 21);
        assert_eq!(chart.normal_side(SUSPENSE), Some(Side::Credit));
        assert_eq!(chart.normal_side(RED_PACKETS), Some(Side::Credit));
        assert_eq!(chart.normal_side(CHANNEL_RECEIVABLE), Some(Side::Debit));
        assert_eq!(chart.normal_side(PERSONAL_BALANCE), Some(Side::Credit));
        assert_eq!(chart.normal_side(FEE_INCOME), Some(Side::Credit));
        assert_eq!(chart.normal_side(MARKETING_EXPENSE), Some(Side::Debit));
        assert!(chart.is_under(MERCHANT_PENDING_SETTLEMENT, LIABILITIES));
        assert!(!chart.is_under(MERCHANT_PENDING_SETTLEMENT, ASSETS));
        assert_eq!(chart.children(CUSTOMER_DEPOSITS).len(), 7);
    }

    #[test]
    fn malformed_charts_are_refused() {
        let s = |code: u32, class: SubjectClass, parent: Option<u32>| Subject {
            code: SubjectCode(code),
            name: String::new(),
            class,
            parent: parent.map(SubjectCode),
        };
        use SubjectClass::*;
        let cases = [
            (
                vec![s(1, Asset, None), s(1, Asset, None)],
                ChartError::Duplicate(SubjectCode(1)),
            ),
            (
                vec![s(1122, Asset, Some(1))],
                ChartError::MissingParent {
                    child: SubjectCode(1122),
                    parent: SubjectCode(1),
                },
            ),
            (
                vec![s(1, Asset, None), s(2122, Asset, Some(1))],
                ChartError::CodeNotUnderParent {
                    child: SubjectCode(2122),
                    parent: SubjectCode(1),
                },
            ),
            (
                vec![s(1, Asset, None), s(1122, Liability, Some(1))],
                ChartError::ClassMismatch {
                    child: SubjectCode(1122),
                    parent: SubjectCode(1),
                    child_class: Liability,
                    parent_class: Asset,
                },
            ),
        ];
        for (subjects, expected) in cases {
            assert_eq!(Chart::new(subjects), Err(expected));
        }
    }
}
