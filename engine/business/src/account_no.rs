//! Main account numbers (户口号): a class prefix, a serial and a Luhn check
//! digit, 16 digits in all. A member's accounts (balance, pending settlement,
//! …) all hang under its one number; each is told apart by its account type,
//! and the engine's `AccountId` is derived from both, so no lookup table is
//! needed and none can go out of step.

use serde::{Deserialize, Serialize};
use std::fmt;
use tally_engine::AccountId;

/// Digits of a main account number: class (2) + serial (13) + check (1).
pub const ACCOUNT_NO_LEN: usize = 16;
/// Largest serial a number can carry.
pub const SERIAL_MAX: u64 = 9_999_999_999_999;
/// Account types (sub-account codes) under one number: `0..SUB_CODES`.
pub const SUB_CODES: u64 = 100;

/// The account class a number's two-digit prefix encodes. At scale, tables
/// split by this prefix (the seed's "table by account class").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AccountClass {
    Personal,
    Business,
    Merchant,
    Internal,
}

impl AccountClass {
    pub fn prefix(self) -> u64 {
        match self {
            AccountClass::Personal => 10,
            AccountClass::Business => 20,
            AccountClass::Merchant => 30,
            AccountClass::Internal => 90,
        }
    }

    fn of_prefix(prefix: u64) -> Option<AccountClass> {
        match prefix {
            10 => Some(AccountClass::Personal),
            20 => Some(AccountClass::Business),
            30 => Some(AccountClass::Merchant),
            90 => Some(AccountClass::Internal),
            _ => None,
        }
    }
}

/// Why an account number was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountNoError {
    #[error("account number must be {ACCOUNT_NO_LEN} digits, got {0:?}")]
    Format(String),
    #[error("account number {0}: unknown class prefix")]
    UnknownClass(String),
    #[error("account number {0}: check digit does not match (a typo?)")]
    CheckDigit(String),
    #[error("serial {0} is larger than {SERIAL_MAX}")]
    SerialTooLarge(u64),
}

/// A main account number (户口号).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountNo {
    class: AccountClass,
    serial: u64,
}

impl AccountNo {
    pub fn new(class: AccountClass, serial: u64) -> Result<AccountNo, AccountNoError> {
        if serial > SERIAL_MAX {
            return Err(AccountNoError::SerialTooLarge(serial));
        }
        Ok(AccountNo { class, serial })
    }

    /// Parses 16 digits and checks prefix and check digit.
    pub fn parse(text: &str) -> Result<AccountNo, AccountNoError> {
        let text = text.trim();
        if text.len() != ACCOUNT_NO_LEN || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AccountNoError::Format(text.to_string()));
        }
        let body = &text[..ACCOUNT_NO_LEN - 1];
        let check = text.as_bytes()[ACCOUNT_NO_LEN - 1] - b'0';
        if luhn_check_digit(body) != check {
            return Err(AccountNoError::CheckDigit(text.to_string()));
        }
        let number: u64 = body
            .parse()
            .map_err(|_| AccountNoError::Format(text.to_string()))?;
        let class = AccountClass::of_prefix(number / (SERIAL_MAX + 1))
            .ok_or_else(|| AccountNoError::UnknownClass(text.to_string()))?;
        Ok(AccountNo {
            class,
            serial: number % (SERIAL_MAX + 1),
        })
    }

    pub(crate) const fn internal_zero() -> AccountNo {
        AccountNo {
            class: AccountClass::Internal,
            serial: 0,
        }
    }

    pub fn class(self) -> AccountClass {
        self.class
    }

    pub fn serial(self) -> u64 {
        self.serial
    }

    /// Class and serial as one number (the digits before the check digit).
    fn body(self) -> u64 {
        self.class.prefix() * (SERIAL_MAX + 1) + self.serial
    }

    /// The engine account of sub-account code `sub` (`0..SUB_CODES`) under
    /// this number. At most 9.1e16 < 2^63.
    pub fn account_id(self, sub: u8) -> AccountId {
        AccountId(self.body() * SUB_CODES + u64::from(sub) % SUB_CODES)
    }

    /// The number and sub-account code an engine account id was derived from.
    pub fn of_account_id(id: AccountId) -> Option<(AccountNo, u8)> {
        let body = id.0 / SUB_CODES;
        let sub = u8::try_from(id.0 % SUB_CODES).ok()?;
        let class = AccountClass::of_prefix(body / (SERIAL_MAX + 1))?;
        Some((
            AccountNo {
                class,
                serial: body % (SERIAL_MAX + 1),
            },
            sub,
        ))
    }
}

impl fmt::Display for AccountNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = format!("{:015}", self.body());
        write!(f, "{body}{}", luhn_check_digit(&body))
    }
}

/// The Luhn check digit to append to `digits` (ASCII digits only).
pub fn luhn_check_digit(digits: &str) -> u8 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b.saturating_sub(b'0'));
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_values() {
        // The textbook example 7992739871-3, and a Visa test card number.
        assert_eq!(luhn_check_digit("7992739871"), 3);
        assert_eq!(luhn_check_digit("411111111111111"), 1);
        assert_eq!(luhn_check_digit("0"), 0);
    }

    #[test]
    fn numbers_round_trip_and_typos_are_caught() {
        let no = AccountNo::new(AccountClass::Merchant, 42).unwrap();
        let text = no.to_string();
        assert_eq!(text.len(), ACCOUNT_NO_LEN);
        assert!(text.starts_with("30"));
        assert_eq!(AccountNo::parse(&text), Ok(no));
        // Every single-digit change and every adjacent swap of distinct
        // digits is caught.
        let bytes = text.as_bytes();
        for i in 0..ACCOUNT_NO_LEN {
            for d in b'0'..=b'9' {
                if d == bytes[i] {
                    continue;
                }
                let mut typo = bytes.to_vec();
                typo[i] = d;
                let typo = String::from_utf8(typo).unwrap();
                assert!(AccountNo::parse(&typo).is_err(), "{typo}");
            }
            if i + 1 < ACCOUNT_NO_LEN && bytes[i] != bytes[i + 1] {
                let mut swapped = bytes.to_vec();
                swapped.swap(i, i + 1);
                let swapped = String::from_utf8(swapped).unwrap();
                // Luhn misses only the 09 <-> 90 swap.
                let nine_zero = matches!((bytes[i], bytes[i + 1]), (b'0', b'9') | (b'9', b'0'));
                if !nine_zero {
                    assert!(AccountNo::parse(&swapped).is_err(), "{swapped}");
                }
            }
        }
    }

    #[test]
    fn bad_numbers() {
        let cases: &[(&str, fn(&AccountNoError) -> bool)] = &[
            ("", |e| matches!(e, AccountNoError::Format(_))),
            ("300000000000004", |e| {
                matches!(e, AccountNoError::Format(_))
            }),
            ("30000000000000A2", |e| {
                matches!(e, AccountNoError::Format(_))
            }),
            ("3000000000000421", |e| {
                matches!(e, AccountNoError::CheckDigit(_))
            }),
        ];
        for (text, ok) in cases {
            let err = AccountNo::parse(text).unwrap_err();
            assert!(ok(&err), "{text}: {err:?}");
        }
        // A valid check digit over an unknown class prefix (55).
        let body = "550000000000001";
        let text = format!("{body}{}", luhn_check_digit(body));
        assert_eq!(
            AccountNo::parse(&text),
            Err(AccountNoError::UnknownClass(text.clone()))
        );
        assert!(AccountNo::new(AccountClass::Personal, SERIAL_MAX + 1).is_err());
    }

    #[test]
    fn account_ids_are_distinct_and_invertible() {
        let a = AccountNo::new(AccountClass::Personal, 1).unwrap();
        let b = AccountNo::new(AccountClass::Merchant, 1).unwrap();
        let max = AccountNo::new(AccountClass::Internal, SERIAL_MAX).unwrap();
        assert_ne!(a.account_id(1), b.account_id(1));
        assert_ne!(a.account_id(1), a.account_id(2));
        for (no, sub) in [(a, 1), (b, 2), (max, 99)] {
            assert_eq!(
                AccountNo::of_account_id(no.account_id(sub)),
                Some((no, sub))
            );
        }
        assert!(max.account_id(99).0 < i64::MAX as u64);
        assert_eq!(AccountNo::of_account_id(AccountId(7)), None);
    }
}
