//! Members (会员) and their real-name data: a natural person (自然人, ID card
//! number) or a legal person (法人, unified social credit code). Both numbers
//! are checked here, so a mistyped one is refused before anything is opened.

use super::account_no::AccountNo;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a real-name number was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("ID card number must be 18 characters, got {0}")]
    IdCardLength(usize),
    #[error("ID card number: character {position} must be a digit")]
    IdCardNotDigit { position: usize },
    #[error("ID card number: birth date {0} is not a date")]
    IdCardBirthDate(String),
    #[error("ID card number: check character is {found}, expected {expected}")]
    IdCardCheck { found: char, expected: char },
    #[error("credit code must be 18 characters, got {0}")]
    CreditCodeLength(usize),
    #[error("credit code: character {position} ({found}) is not allowed")]
    CreditCodeCharacter { position: usize, found: char },
    #[error("credit code: check character is {found}, expected {expected}")]
    CreditCodeCheck { found: char, expected: char },
}

/// GB 11643-1999 weights of the first 17 digits.
const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
/// GB 11643-1999 check characters, indexed by the weighted sum mod 11.
const ID_CHECKS: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];

/// A resident ID card number (居民身份证号码), 18 characters, GB 11643-1999.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdCardNo(String);

impl IdCardNo {
    /// Checks length, digits, the birth date and the mod-11 check character
    /// (a lower-case `x` is accepted and stored upper-case).
    pub fn parse(text: &str) -> Result<IdCardNo, IdError> {
        let chars: Vec<char> = text.trim().chars().collect();
        if chars.len() != 18 {
            return Err(IdError::IdCardLength(chars.len()));
        }
        let mut sum = 0u32;
        for (position, (c, weight)) in chars.iter().zip(ID_WEIGHTS).enumerate() {
            let digit = c.to_digit(10).ok_or(IdError::IdCardNotDigit { position })?;
            sum += digit * weight;
        }
        let expected = ID_CHECKS[(sum % 11) as usize];
        let found = chars[17].to_ascii_uppercase();
        if found != expected {
            return Err(IdError::IdCardCheck { found, expected });
        }
        let birth: String = chars[6..14].iter().collect();
        if !is_date(&birth) {
            return Err(IdError::IdCardBirthDate(birth));
        }
        let mut number: String = chars[..17].iter().collect();
        number.push(found);
        Ok(IdCardNo(number))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `YYYYMMDD`, a real calendar date from 1900 on.
fn is_date(text: &str) -> bool {
    let Ok(n) = text.parse::<u32>() else {
        return false;
    };
    let (year, month, day) = (n / 10_000, n / 100 % 100, n % 100);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    year >= 1900 && (1..=days).contains(&day)
}

/// GB 32100-2015 alphabet: digits and upper-case letters without I, O, S, V, Z.
const USCC_ALPHABET: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// A unified social credit code (统一社会信用代码), 18 characters, GB 32100-2015.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CreditCode(String);

impl CreditCode {
    /// Checks length, alphabet and the mod-31 check character.
    pub fn parse(text: &str) -> Result<CreditCode, IdError> {
        let chars: Vec<char> = text
            .trim()
            .chars()
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if chars.len() != 18 {
            return Err(IdError::CreditCodeLength(chars.len()));
        }
        let mut values = Vec::with_capacity(18);
        for (position, &found) in chars.iter().enumerate() {
            let value = USCC_ALPHABET
                .find(found)
                .ok_or(IdError::CreditCodeCharacter { position, found })?;
            values.push(value as u32);
        }
        let sum: u32 = values.iter().zip(USCC_WEIGHTS).map(|(v, w)| v * w).sum();
        let check = (31 - sum % 31) % 31;
        let expected = USCC_ALPHABET.chars().nth(check as usize).unwrap_or('0');
        if chars[17] != expected {
            return Err(IdError::CreditCodeCheck {
                found: chars[17],
                expected,
            });
        }
        Ok(CreditCode(chars.into_iter().collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who a member is, by the platform's customer segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberKind {
    PersonalUser,
    BusinessUser,
    /// A company merchant (企业商户).
    MerchantCompany,
    /// A sole trader (个体工商户): a natural or a legal person.
    MerchantSoleTrader,
    /// A micro merchant (小微商户): a natural person.
    MerchantMicro,
}

impl MemberKind {
    pub fn is_merchant(self) -> bool {
        matches!(
            self,
            MemberKind::MerchantCompany
                | MemberKind::MerchantSoleTrader
                | MemberKind::MerchantMicro
        )
    }

    /// Does this kind of member accept this kind of real-name record?
    pub fn accepts(self, party: &Party) -> bool {
        matches!(
            (self, party),
            (MemberKind::MerchantSoleTrader, _)
                | (
                    MemberKind::PersonalUser | MemberKind::MerchantMicro,
                    Party::Natural(_)
                )
                | (
                    MemberKind::BusinessUser | MemberKind::MerchantCompany,
                    Party::Legal(_)
                )
        )
    }
}

/// A natural person's real-name record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NaturalPerson {
    pub name: String,
    pub id_card: IdCardNo,
}

/// A legal person's real-name record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalPerson {
    pub name: String,
    pub credit_code: CreditCode,
}

/// A member's real-name record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Party {
    Natural(NaturalPerson),
    Legal(LegalPerson),
}

impl Party {
    /// A natural person, the ID card number checked.
    pub fn natural(name: &str, id_card: &str) -> Result<Party, IdError> {
        Ok(Party::Natural(NaturalPerson {
            name: name.to_string(),
            id_card: IdCardNo::parse(id_card)?,
        }))
    }

    /// A legal person, the credit code checked.
    pub fn legal(name: &str, credit_code: &str) -> Result<Party, IdError> {
        Ok(Party::Legal(LegalPerson {
            name: name.to_string(),
            credit_code: CreditCode::parse(credit_code)?,
        }))
    }
}

/// A member level: names a row of the rule file's limit table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberLevel(pub String);

impl fmt::Display for MemberLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A member as the ledger knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The main account number (户口号) all its accounts hang under.
    pub number: AccountNo,
    pub kind: MemberKind,
    pub party: Party,
    pub level: MemberLevel,
    /// Real-name verification passed; unverified members cannot post.
    pub verified: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The GB 11643 check character of 17 digits, computed independently of
    /// `parse` (the standard's formula: (12 − Σ aᵢ·2^(18−i) mod 11) mod 11).
    fn id_check(first17: &str) -> char {
        let sum: u64 = first17
            .chars()
            .enumerate()
            .map(|(i, c)| u64::from(c.to_digit(10).unwrap()) * (1u64 << (17 - i)) % 11)
            .sum();
        match (12 - sum % 11) % 11 {
            10 => 'X',
            v => char::from_digit(v as u32, 10).unwrap(),
        }
    }

    #[test]
    fn id_card_numbers() {
        // The standard's published example, and two computed ones.
        assert_eq!(id_check("11010519491231002"), 'X');
        assert_eq!(id_check("11010119900307451"), '4');
        let valid = [
            "11010519491231002X",
            "11010519491231002x",
            "110101199003074514",
        ];
        for text in valid {
            let id = IdCardNo::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(id.as_str(), text.to_ascii_uppercase());
        }
        let first17 = "44030819990101123";
        let good = format!("{first17}{}", id_check(first17));
        assert!(IdCardNo::parse(&good).is_ok());
        let cases: &[(&str, IdError)] = &[
            (
                "110105194912310021",
                IdError::IdCardCheck {
                    found: '1',
                    expected: 'X',
                },
            ),
            (
                "110101199003074515",
                IdError::IdCardCheck {
                    found: '5',
                    expected: '4',
                },
            ),
            ("11010519491231002", IdError::IdCardLength(17)),
            ("11010519491231002XX", IdError::IdCardLength(19)),
            (
                "1101051949123100AX",
                IdError::IdCardNotDigit { position: 16 },
            ),
            ("", IdError::IdCardLength(0)),
        ];
        for (text, expected) in cases {
            assert_eq!(IdCardNo::parse(text).as_ref(), Err(expected), "{text}");
        }
        // A correct check digit over an impossible birth date (Feb 30).
        let first17 = "11010519490230002";
        let bad_date = format!("{first17}{}", id_check(first17));
        assert_eq!(
            IdCardNo::parse(&bad_date),
            Err(IdError::IdCardBirthDate("19490230".into()))
        );
    }

    #[test]
    fn credit_codes() {
        // Published examples; their check characters match GB 32100's formula.
        for text in [
            "91350100M000100Y43",
            "91110000600037341L",
            "91110000600037341l",
        ] {
            assert!(CreditCode::parse(text).is_ok(), "{text}");
        }
        let cases: &[(&str, IdError)] = &[
            (
                "91350100M000100Y44",
                IdError::CreditCodeCheck {
                    found: '4',
                    expected: '3',
                },
            ),
            (
                "91110000600037341M",
                IdError::CreditCodeCheck {
                    found: 'M',
                    expected: 'L',
                },
            ),
            ("91350100M000100Y4", IdError::CreditCodeLength(17)),
            (
                "91350100I000100Y43",
                IdError::CreditCodeCharacter {
                    position: 8,
                    found: 'I',
                },
            ),
            (
                "91350100M000100Z43",
                IdError::CreditCodeCharacter {
                    position: 15,
                    found: 'Z',
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(CreditCode::parse(text).as_ref(), Err(expected), "{text}");
        }
    }

    #[test]
    fn member_kinds_and_parties() {
        let natural = Party::natural("张三", "11010519491231002X").unwrap();
        let legal = Party::legal("某某有限公司", "91350100M000100Y43").unwrap();
        assert!(MemberKind::PersonalUser.accepts(&natural));
        assert!(!MemberKind::PersonalUser.accepts(&legal));
        assert!(MemberKind::MerchantCompany.accepts(&legal));
        assert!(!MemberKind::MerchantCompany.accepts(&natural));
        assert!(MemberKind::MerchantSoleTrader.accepts(&natural));
        assert!(MemberKind::MerchantSoleTrader.accepts(&legal));
        assert!(MemberKind::MerchantMicro.accepts(&natural));
        assert!(!MemberKind::BusinessUser.accepts(&natural));
    }
}
