//! Accounts: what a caller opens, what a read returns, and the balance rules
//! a shard applies to one account, one leg at a time.

use crate::txn::Reject;
use crate::types::{
    AccountId, AccountingDate, Bucket, Currency, Minor, Side, SubjectCode, Version,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The three kinds of account of the seed's account model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountKind {
    /// A customer's balance: personal, merchant, pending settlement, …
    Customer,
    /// The platform's own: channel receivable/payable, fees, in transit, …
    Internal,
    /// A product sub-ledger: red packets, coupons, …
    Product,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountStatus {
    Active,
    /// Risk control: nothing may be debited; credits still arrive.
    Frozen,
    /// 只收不付, receive-only: money may come in, none may go out (a
    /// business status, e.g. a dormant or disputed wallet; distinct from a
    /// risk-control freeze).
    ReceiveOnly,
    /// 只付不收, pay-only: money may go out, none may come in (e.g. an
    /// account being wound down).
    PayOnly,
    /// Nothing may be posted. Only an account with nothing reserved or
    /// incoming can be closed.
    Closed,
}

/// A request to open an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAccount {
    pub id: AccountId,
    pub currency: Currency,
    pub subject: SubjectCode,
    pub kind: AccountKind,
    /// The side on which the balance grows: `Credit` for customer balances
    /// (the platform's liabilities), `Debit` for asset-like internal accounts.
    pub normal_side: Side,
    /// May the balance go below zero without limit?
    pub allow_negative: bool,
    /// How far below zero the balance may go when `allow_negative` is false.
    pub credit_limit: Decimal,
}

impl NewAccount {
    /// A credit-normal customer account that may not go below zero.
    pub fn customer(id: AccountId, currency: Currency) -> NewAccount {
        NewAccount {
            id,
            currency,
            subject: SubjectCode(2201),
            kind: AccountKind::Customer,
            normal_side: Side::Credit,
            allow_negative: false,
            credit_limit: Decimal::ZERO,
        }
    }

    /// A debit-normal internal account that may go negative (a funding
    /// channel's receivable, say): where money enters and leaves the books.
    pub fn internal(id: AccountId, currency: Currency) -> NewAccount {
        NewAccount {
            subject: SubjectCode(1122),
            kind: AccountKind::Internal,
            normal_side: Side::Debit,
            allow_negative: true,
            ..NewAccount::customer(id, currency)
        }
    }
}

/// Why an account could not be opened or changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AccountError {
    #[error("account {0:?} already exists with different attributes")]
    ExistsWithDifferentAttributes(AccountId),
    #[error("unknown currency {0}")]
    UnknownCurrency(Currency),
    #[error("credit limit {0} must be zero or positive and fit the currency")]
    InvalidCreditLimit(Decimal),
    #[error("account {0:?} not found")]
    NotFound(AccountId),
    #[error("account {0:?} is closed")]
    Closed(AccountId),
    #[error("account {account:?} still has {reserved} reserved and {incoming} incoming")]
    HasPending {
        account: AccountId,
        reserved: Decimal,
        incoming: Decimal,
    },
    #[error("account {account:?} still has a balance of {balance}")]
    HasBalance {
        account: AccountId,
        balance: Decimal,
    },
    #[error("record of {key_len}-byte key and {value_len}-byte value: at most {RECORD_KEY_MAX} and {RECORD_VALUE_MAX}, key not empty")]
    RecordSize { key_len: usize, value_len: usize },
    #[error("metadata records are full: {max} bytes")]
    RecordsFull { max: usize },
    #[error("account {0:?} has reached the last version number")]
    VersionOverflow(AccountId),
    /// `close_day(date)` of a date that is not the one open (nor the one
    /// closed last, which answers as done). Before any close, the date open
    /// is the clock's, and closing yesterday is allowed (a late close).
    #[error("accounting date {date} is not open (open: {open:?})")]
    DayNotOpen {
        date: AccountingDate,
        open: Option<AccountingDate>,
    },
}

/// Default bound of the total bytes (keys and values) of all metadata
/// records: `Config::records_bytes_max`.
pub const RECORDS_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Longest key of a metadata record, in bytes.
pub const RECORD_KEY_MAX: usize = 256;
/// Longest value of a metadata record, in bytes.
pub const RECORD_VALUE_MAX: usize = 64 * 1024;

/// A read of one account: all parts of its balance, as decimals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub id: AccountId,
    pub currency: Currency,
    pub subject: SubjectCode,
    pub kind: AccountKind,
    pub status: AccountStatus,
    pub normal_side: Side,
    pub allow_negative: bool,
    pub credit_limit: Decimal,
    /// The whole posted balance, on the account's normal side.
    pub balance: Decimal,
    /// Held by pending transactions that debit it.
    pub reserved: Decimal,
    /// Promised by pending transactions that credit it.
    pub incoming: Decimal,
    /// The part of `balance` frozen by risk control.
    pub frozen: Decimal,
    /// The part of `balance` that may be spent but not withdrawn.
    pub non_withdrawable: Decimal,
    /// What may be spent now: balance − frozen − reserved (+ credit limit).
    pub available: Decimal,
    /// What may be withdrawn now: available − non-withdrawable, at least 0.
    pub withdrawable: Decimal,
    pub version: Version,
    /// The balance at the start of `opening_date`: the date of the
    /// account's last posting (rolled at its first posting of a date, never
    /// at a close). For any other date, an idle account's included, ask
    /// [`crate::Engine::statement`], which derives it from the details.
    pub opening_balance: Decimal,
    pub opening_date: AccountingDate,
}

/// What a leg does to an account, decided by the coordinator from the
/// transaction kind. Only `Post` and `Reserve` are checked against the
/// account's rules (status, funds): capture and release act on money
/// already reserved. Any of them is refused with `BalanceOverflow` when a
/// part of the account would not fit (`AccountState::apply`): a capture
/// onto a balance that other credits filled meanwhile, say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) enum LegOp {
    Post,
    Reserve,
    Capture { reserved: Minor },
    Release { reserved: Minor },
}

// An account's size is fixed at compile time (memory budget: 96 bytes of
// state per account, see ARCHITECTURE.md).
const _: () = assert!(std::mem::size_of::<AccountState>() == 96);

/// A shard's in-memory account row. Integer minor units throughout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct AccountState {
    pub id: AccountId,
    pub balance: i64,
    pub reserved: i64,
    pub incoming: i64,
    pub frozen: i64,
    pub non_withdrawable: i64,
    pub credit_limit: i64,
    pub version: u64,
    pub opening_balance: i64,
    pub opening_date: AccountingDate,
    /// Index of this account's newest detail in its shard's detail table.
    pub last_detail: u32,
    pub subject: SubjectCode,
    pub currency: Currency,
    pub scale: u8,
    pub normal_side: Side,
    pub kind: AccountKind,
    pub status: AccountStatus,
    pub allow_negative: bool,
}

pub(crate) const NO_DETAIL: u32 = u32::MAX;

/// `*part += by`, or `None` if it does not fit (the part is then unchanged).
fn plus(part: &mut i64, by: i64) -> Option<()> {
    *part = part.checked_add(by)?;
    Some(())
}

/// `*part -= by`, or `None` if it does not fit (the part is then unchanged).
fn minus(part: &mut i64, by: i64) -> Option<()> {
    *part = part.checked_sub(by)?;
    Some(())
}

/// The version after `version`, or `None` at the end of the counter.
pub(crate) fn next_version(version: u64) -> Option<u64> {
    version.checked_add(1)
}

/// Where a leg applied to an account left it: the detail's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Applied {
    pub balance_pre: i64,
    pub balance_post: i64,
}

impl AccountState {
    pub fn open(new: &NewAccount, scale: u8, credit_limit: Minor) -> AccountState {
        AccountState {
            id: new.id,
            balance: 0,
            reserved: 0,
            incoming: 0,
            frozen: 0,
            non_withdrawable: 0,
            credit_limit: credit_limit.0,
            version: 0,
            opening_balance: 0,
            opening_date: AccountingDate(i32::MIN),
            last_detail: NO_DETAIL,
            subject: new.subject,
            currency: new.currency,
            scale,
            normal_side: new.normal_side,
            kind: new.kind,
            status: AccountStatus::Active,
            allow_negative: new.allow_negative,
        }
    }

    /// Same attributes as `new` (for idempotent re-opening).
    pub fn matches(&self, new: &NewAccount, credit_limit: Minor) -> bool {
        self.currency == new.currency
            && self.subject == new.subject
            && self.kind == new.kind
            && self.normal_side == new.normal_side
            && self.allow_negative == new.allow_negative
            && self.credit_limit == credit_limit.0
    }

    fn dec(&self, units: i64) -> Decimal {
        Minor(units).to_decimal(u32::from(self.scale))
    }

    /// Spendable now; i128 so that a huge credit limit cannot overflow.
    fn spendable(&self) -> i128 {
        if self.allow_negative {
            return i128::MAX;
        }
        i128::from(self.balance) - i128::from(self.frozen) - i128::from(self.reserved)
            + i128::from(self.credit_limit)
    }

    fn withdrawable(&self) -> i128 {
        self.spendable() - i128::from(self.non_withdrawable)
    }

    /// Checks that a leg may apply; changes nothing.
    // The leg's fields come unpacked from the sequenced form: the hot path
    // builds no intermediate struct per leg.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        leg: u16,
        side: Side,
        bucket: Bucket,
        amount: i64,
        op: LegOp,
        currency: Currency,
        expected: Option<Version>,
    ) -> Result<(), Reject> {
        let account = self.id;
        if let Some(expected) = expected {
            if expected.0 != self.version {
                let actual = Version(self.version);
                return Err(Reject::VersionMismatch {
                    leg,
                    account,
                    expected,
                    actual,
                });
            }
        }
        if currency != self.currency {
            return Err(Reject::CurrencyMismatch {
                leg,
                account,
                account_currency: self.currency,
                leg_currency: currency,
            });
        }
        if !matches!(op, LegOp::Post | LegOp::Reserve) {
            return Ok(());
        }
        if self.status == AccountStatus::Closed {
            return Err(Reject::AccountClosed { leg, account });
        }
        if side == self.normal_side {
            if self.status == AccountStatus::PayOnly {
                return Err(Reject::AccountPayOnly { leg, account });
            }
            self.check_increase(leg, amount, op)
        } else {
            if self.status == AccountStatus::ReceiveOnly {
                return Err(Reject::AccountReceiveOnly { leg, account });
            }
            self.check_decrease(leg, bucket, amount)
        }
    }

    fn check_increase(&self, leg: u16, amount: i64, op: LegOp) -> Result<(), Reject> {
        let pending = if op == LegOp::Reserve {
            self.incoming
        } else {
            0
        };
        let room = i64::MAX - self.balance.max(0);
        if i128::from(amount) + i128::from(pending) > i128::from(room) {
            return Err(Reject::BalanceOverflow {
                leg,
                account: self.id,
            });
        }
        Ok(())
    }

    fn check_decrease(&self, leg: u16, bucket: Bucket, amount: i64) -> Result<(), Reject> {
        let account = self.id;
        if self.status == AccountStatus::Frozen {
            return Err(Reject::AccountFrozen { leg, account });
        }
        if self.balance.checked_sub(amount).is_none() {
            return Err(Reject::BalanceOverflow { leg, account });
        }
        let (room, shown) = match bucket {
            Bucket::Frozen => {
                if self.frozen < amount {
                    let frozen = self.dec(self.frozen);
                    let requested = self.dec(amount);
                    return Err(Reject::InsufficientFrozen {
                        leg,
                        account,
                        frozen,
                        requested,
                    });
                }
                return Ok(());
            }
            Bucket::Withdrawable => (self.withdrawable(), self.withdrawable()),
            Bucket::Available | Bucket::NonWithdrawable => (self.spendable(), self.spendable()),
        };
        if room < i128::from(amount) {
            let available = self.dec(i64::try_from(shown.max(0)).unwrap_or(i64::MAX));
            let requested = self.dec(amount);
            return Err(Reject::InsufficientFunds {
                leg,
                account,
                available,
                requested,
            });
        }
        Ok(())
    }

    /// Applies a leg that `check` accepted and returns the detail's
    /// balances, or refuses it with `BalanceOverflow` and changes nothing.
    ///
    /// Every change to an account's money or counters goes through
    /// `plus`/`minus`/`next_version` (checked arithmetic) on a copy that
    /// replaces the account only when every step fitted: no path (post,
    /// reserve, capture, release, freeze) can wrap, whatever `check` let by.
    pub fn apply(
        &mut self,
        leg: u16,
        side: Side,
        bucket: Bucket,
        amount: i64,
        op: LegOp,
    ) -> Result<Applied, Reject> {
        let mut next = *self;
        let fitted = next.apply_checked(side, bucket, amount, op);
        if fitted.is_none() {
            return Err(Reject::BalanceOverflow {
                leg,
                account: self.id,
            });
        }
        let applied = Applied {
            balance_pre: self.balance,
            balance_post: next.balance,
        };
        *self = next;
        Ok(applied)
    }

    /// `apply` on `self`; `None` as soon as a step does not fit (then
    /// `self` is half-changed: `apply` runs it on a copy).
    fn apply_checked(&mut self, side: Side, bucket: Bucket, amount: i64, op: LegOp) -> Option<()> {
        let increase = side == self.normal_side;
        match op {
            LegOp::Post => self.post(increase, bucket, amount)?,
            LegOp::Reserve if increase => plus(&mut self.incoming, amount)?,
            LegOp::Reserve => plus(&mut self.reserved, amount)?,
            LegOp::Capture { reserved } => {
                self.release(increase, reserved.0)?;
                self.post(increase, bucket, amount)?;
            }
            LegOp::Release { reserved } => self.release(increase, reserved.0)?,
        }
        self.version = next_version(self.version)?;
        Some(())
    }

    fn release(&mut self, increase: bool, reserved: i64) -> Option<()> {
        if increase {
            minus(&mut self.incoming, reserved)
        } else {
            minus(&mut self.reserved, reserved)
        }
    }

    fn post(&mut self, increase: bool, bucket: Bucket, amount: i64) -> Option<()> {
        if increase {
            plus(&mut self.balance, amount)?;
            return match bucket {
                Bucket::Frozen => plus(&mut self.frozen, amount),
                Bucket::NonWithdrawable => plus(&mut self.non_withdrawable, amount),
                Bucket::Available | Bucket::Withdrawable => Some(()),
            };
        }
        minus(&mut self.balance, amount)?;
        match bucket {
            Bucket::Frozen => minus(&mut self.frozen, amount),
            // Spending consumes the non-withdrawable part first: it is the
            // money the customer can do least with.
            Bucket::Available | Bucket::NonWithdrawable => {
                let spent = self.non_withdrawable.min(amount);
                minus(&mut self.non_withdrawable, spent)
            }
            Bucket::Withdrawable => Some(()),
        }
    }

    /// Starts a new accounting day for this account if `date` is newer.
    pub fn roll_date(&mut self, date: AccountingDate) {
        if date > self.opening_date {
            self.opening_date = date;
            self.opening_balance = self.balance;
        }
    }

    /// The balance may not be below this (`None`: no lower bound).
    pub fn floor(&self) -> Option<i64> {
        (!self.allow_negative).then_some(-self.credit_limit)
    }

    pub fn view(&self) -> AccountView {
        let available = self.spendable().clamp(0, i128::from(i64::MAX));
        let withdrawable = self.withdrawable().clamp(0, i128::from(i64::MAX));
        let to_dec = |v: i128| self.dec(i64::try_from(v).unwrap_or(i64::MAX));
        AccountView {
            id: self.id,
            currency: self.currency,
            subject: self.subject,
            kind: self.kind,
            status: self.status,
            normal_side: self.normal_side,
            allow_negative: self.allow_negative,
            credit_limit: self.dec(self.credit_limit),
            balance: self.dec(self.balance),
            reserved: self.dec(self.reserved),
            incoming: self.dec(self.incoming),
            frozen: self.dec(self.frozen),
            non_withdrawable: self.dec(self.non_withdrawable),
            available: if self.allow_negative {
                self.dec(self.balance)
            } else {
                to_dec(available)
            },
            withdrawable: if self.allow_negative {
                self.dec(self.balance)
            } else {
                to_dec(withdrawable)
            },
            version: Version(self.version),
            opening_balance: self.dec(self.opening_balance),
            opening_date: self.opening_date,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer() -> AccountState {
        AccountState::open(
            &NewAccount::customer(AccountId(1), Currency::CNY),
            2,
            Minor(0),
        )
    }

    /// A credit-normal account that may go negative without limit.
    fn unlimited() -> AccountState {
        let new = NewAccount {
            allow_negative: true,
            ..NewAccount::customer(AccountId(3), Currency::CNY)
        };
        AccountState::open(&new, 2, Minor(0))
    }

    /// Checks and applies one leg, as a shard does.
    fn leg(
        a: &mut AccountState,
        side: Side,
        bucket: Bucket,
        amount: i64,
        op: LegOp,
    ) -> Result<(), Reject> {
        a.check(0, side, bucket, amount, op, Currency::CNY, None)?;
        a.apply(0, side, bucket, amount, op).map(|_| ())
    }

    fn post(a: &mut AccountState, side: Side, bucket: Bucket, amount: i64) -> Result<(), Reject> {
        leg(a, side, bucket, amount, LegOp::Post)
    }

    fn insufficient(got: &Result<(), Reject>) -> bool {
        matches!(got, Err(Reject::InsufficientFunds { .. }))
    }

    fn overflow(got: &Result<(), Reject>) -> bool {
        matches!(got, Err(Reject::BalanceOverflow { leg: 0, .. }))
    }

    #[test]
    fn credit_then_debit_moves_balance_and_version() {
        let mut a = customer();
        assert_eq!(post(&mut a, Side::Credit, Bucket::Available, 500), Ok(()));
        assert_eq!(post(&mut a, Side::Debit, Bucket::Available, 200), Ok(()));
        assert_eq!((a.balance, a.version), (300, 2));
    }

    #[test]
    fn debit_beyond_available_is_refused_and_changes_nothing() {
        let mut a = customer();
        assert_eq!(post(&mut a, Side::Credit, Bucket::Available, 100), Ok(()));
        let before = a;
        let got = post(&mut a, Side::Debit, Bucket::Available, 101);
        assert!(insufficient(&got), "{got:?}");
        assert_eq!(a, before);
    }

    #[test]
    fn frozen_part_cannot_be_spent_but_can_be_unfrozen() {
        let mut a = customer();
        assert_eq!(post(&mut a, Side::Credit, Bucket::Available, 100), Ok(()));
        // Freeze 60: debit available, credit frozen.
        assert_eq!(post(&mut a, Side::Debit, Bucket::Available, 60), Ok(()));
        assert_eq!(post(&mut a, Side::Credit, Bucket::Frozen, 60), Ok(()));
        assert_eq!((a.balance, a.frozen), (100, 60));
        assert!(insufficient(&post(
            &mut a,
            Side::Debit,
            Bucket::Available,
            41
        )));
        assert!(matches!(
            post(&mut a, Side::Debit, Bucket::Frozen, 61),
            Err(Reject::InsufficientFrozen { .. })
        ));
        assert_eq!(post(&mut a, Side::Debit, Bucket::Frozen, 60), Ok(()));
        assert_eq!(post(&mut a, Side::Credit, Bucket::Available, 60), Ok(()));
        assert_eq!((a.balance, a.frozen), (100, 0));
    }

    #[test]
    fn non_withdrawable_part_is_spendable_not_withdrawable() {
        let mut a = customer();
        assert_eq!(post(&mut a, Side::Credit, Bucket::Available, 100), Ok(()));
        assert_eq!(
            post(&mut a, Side::Credit, Bucket::NonWithdrawable, 50),
            Ok(())
        );
        assert!(insufficient(&post(
            &mut a,
            Side::Debit,
            Bucket::Withdrawable,
            101
        )));
        assert_eq!(post(&mut a, Side::Debit, Bucket::Withdrawable, 100), Ok(()));
        assert_eq!(post(&mut a, Side::Debit, Bucket::Available, 30), Ok(()));
        assert_eq!((a.balance, a.non_withdrawable), (20, 20));
    }

    #[test]
    fn reserve_then_capture_less_releases_the_rest() {
        let mut a = customer();
        assert_eq!(post(&mut a, Side::Credit, Bucket::Available, 100), Ok(()));
        let reserve = leg(&mut a, Side::Debit, Bucket::Available, 80, LegOp::Reserve);
        assert_eq!(reserve, Ok(()));
        assert_eq!(a.view().available, Decimal::new(20, 2));
        assert!(insufficient(&post(
            &mut a,
            Side::Debit,
            Bucket::Available,
            21
        )));
        let capture = LegOp::Capture {
            reserved: Minor(80),
        };
        assert_eq!(
            leg(&mut a, Side::Debit, Bucket::Available, 50, capture),
            Ok(())
        );
        assert_eq!((a.balance, a.reserved), (50, 0));
    }

    #[test]
    fn frozen_account_refuses_debits_accepts_credits() {
        let mut a = customer();
        assert_eq!(post(&mut a, Side::Credit, Bucket::Available, 100), Ok(()));
        a.status = AccountStatus::Frozen;
        assert!(matches!(
            post(&mut a, Side::Debit, Bucket::Available, 1),
            Err(Reject::AccountFrozen { .. })
        ));
        assert_eq!(post(&mut a, Side::Credit, Bucket::Available, 1), Ok(()));
    }

    #[test]
    fn version_and_currency_checks() {
        let a = customer();
        let wrong_version = a.check(
            3,
            Side::Credit,
            Bucket::Available,
            1,
            LegOp::Post,
            Currency::CNY,
            Some(Version(7)),
        );
        assert!(matches!(
            wrong_version,
            Err(Reject::VersionMismatch { leg: 3, .. })
        ));
        let wrong_currency = a.check(
            0,
            Side::Credit,
            Bucket::Available,
            1,
            LegOp::Post,
            Currency::USD,
            None,
        );
        assert!(matches!(
            wrong_currency,
            Err(Reject::CurrencyMismatch { .. })
        ));
    }

    #[test]
    fn credit_limit_allows_going_below_zero_up_to_it() {
        let new = NewAccount::customer(AccountId(2), Currency::CNY);
        let mut a = AccountState::open(&new, 2, Minor(1_000));
        assert_eq!(post(&mut a, Side::Debit, Bucket::Available, 1_000), Ok(()));
        assert!(insufficient(&post(
            &mut a,
            Side::Debit,
            Bucket::Available,
            1
        )));
        assert_eq!(a.floor(), Some(-1_000));
    }

    #[test]
    fn overflow_is_refused() {
        let mut a = customer();
        assert_eq!(
            post(&mut a, Side::Credit, Bucket::Available, i64::MAX),
            Ok(())
        );
        let before = a;
        assert!(overflow(&post(&mut a, Side::Credit, Bucket::Available, 1)));
        assert_eq!(a, before);
    }

    #[test]
    fn capture_beyond_the_largest_balance_is_refused_and_changes_nothing() {
        // Promised the largest amount, then paid it: capturing the promise
        // would pass i64::MAX.
        let mut a = customer();
        let max = i64::MAX;
        assert_eq!(
            leg(&mut a, Side::Credit, Bucket::Available, max, LegOp::Reserve),
            Ok(())
        );
        assert_eq!(post(&mut a, Side::Credit, Bucket::Available, max), Ok(()));
        let before = a;
        let capture = LegOp::Capture {
            reserved: Minor(max),
        };
        let got = leg(&mut a, Side::Credit, Bucket::Available, max, capture);
        assert!(overflow(&got), "{got:?}");
        assert_eq!(a, before);
        // Releasing the promise instead still works.
        let release = LegOp::Release {
            reserved: Minor(max),
        };
        assert_eq!(
            leg(&mut a, Side::Credit, Bucket::Available, max, release),
            Ok(())
        );
        assert_eq!((a.balance, a.incoming), (max, 0));
    }

    #[test]
    fn reserving_past_the_largest_amount_is_refused_and_changes_nothing() {
        let mut a = unlimited();
        let max = i64::MAX;
        let reserve =
            |a: &mut AccountState| leg(a, Side::Debit, Bucket::Available, max, LegOp::Reserve);
        assert_eq!(reserve(&mut a), Ok(()));
        let before = a;
        let got = reserve(&mut a);
        assert!(overflow(&got), "{got:?}");
        assert_eq!(a, before);
    }

    #[test]
    fn frozen_and_non_withdrawable_parts_cannot_wrap() {
        // An account that may go negative can be credited into the frozen
        // part again and again while its balance is spent down.
        for bucket in [Bucket::Frozen, Bucket::NonWithdrawable] {
            let mut a = unlimited();
            assert_eq!(post(&mut a, Side::Credit, bucket, i64::MAX), Ok(()));
            assert_eq!(
                post(&mut a, Side::Debit, Bucket::Withdrawable, i64::MAX),
                Ok(())
            );
            let before = a;
            let got = post(&mut a, Side::Credit, bucket, 1);
            assert!(overflow(&got), "{bucket:?}: {got:?}");
            assert_eq!(a, before);
        }
    }

    #[test]
    fn the_version_cannot_wrap() {
        let mut a = customer();
        a.version = u64::MAX;
        let before = a;
        assert!(overflow(&post(&mut a, Side::Credit, Bucket::Available, 1)));
        assert_eq!(a, before);
    }
}
