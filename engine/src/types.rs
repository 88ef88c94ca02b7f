//! Identities and quantities as types. No bare integers cross the crate
//! boundary: an `AccountId` cannot be passed where a `TxnId` is expected.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An account's identity, chosen by the caller when it opens the account.
///
/// In human-readable formats (JSON) it reads from a number or from a string
/// of digits, like [`TxnId`], and is written as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AccountId(pub u64);

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AccountId, D::Error> {
        if !d.is_human_readable() {
            return u64::deserialize(d).map(AccountId);
        }
        d.deserialize_any(FlexibleId::<u64>::new("an account id"))
            .map(AccountId)
    }
}

/// At most this many bytes of a caller's bad input are repeated in an
/// error message.
pub const ECHO_MAX: usize = 64;

/// `text` for an error message: at most `ECHO_MAX` bytes of it (cut at a
/// character boundary, `…` marking the cut), quoted.
pub fn echo(text: &str) -> String {
    if text.len() <= ECHO_MAX {
        return format!("{text:?}");
    }
    let mut end = ECHO_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &text[..end], text.len())
}

/// Reads an id from an unsigned JSON number or a string of ASCII digits
/// (no sign, no spaces, no fraction); anything else is an error that
/// repeats at most `ECHO_MAX` bytes of it.
struct FlexibleId<T> {
    what: &'static str,
    ty: std::marker::PhantomData<T>,
}

impl<T> FlexibleId<T> {
    fn new(what: &'static str) -> FlexibleId<T> {
        FlexibleId {
            what,
            ty: std::marker::PhantomData,
        }
    }
}

impl<T> serde::de::Visitor<'_> for FlexibleId<T>
where
    T: TryFrom<u64> + TryFrom<u128> + std::str::FromStr,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: an unsigned integer or a string of digits",
            self.what
        )
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{} {v} is out of range", self.what)))
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{} {v} is out of range", self.what)))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!("{} {v} is negative", self.what))),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<T, E> {
        // The number is not repeated: JSON readers hand over numbers that
        // are not integers of at most 64 bits rounded to a float.
        Err(E::custom(format!(
            "{} must be an integer below 2^64, or a string of digits (write ids above 2^64 as strings)",
            self.what
        )))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::custom(format!(
                "{} {} is not a string of digits",
                self.what,
                echo(v)
            )));
        }
        v.parse()
            .map_err(|_| E::custom(format!("{} {} is out of range", self.what, echo(v))))
    }
}

/// A transaction's identity, chosen by the caller: it is the idempotency key.
///
/// In human-readable formats (JSON) it reads from a number or from a string
/// of digits (JSON tools often cannot carry integers above 2^64), and is
/// written as a number up to 2^64 − 1 and as a string of digits above (a
/// JSON number that large would be rounded by most readers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId(pub u128);

impl Serialize for TxnId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_u128(self.0);
        }
        match u64::try_from(self.0) {
            Ok(small) => s.serialize_u64(small),
            Err(_) => s.collect_str(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for TxnId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TxnId, D::Error> {
        if !d.is_human_readable() {
            return u128::deserialize(d).map(TxnId);
        }
        d.deserialize_any(FlexibleId::<u128>::new("a transaction id"))
            .map(TxnId)
    }
}

/// A shard's number, `0..shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u16);

/// An account's version: starts at 0 when opened and increases by one with
/// every change (every detail written, every status change).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version(pub u64);

/// Engine time: nanoseconds since the Unix epoch, assigned by the sequencer,
/// strictly increasing across all transactions, and recorded in the log so
/// that replay reproduces it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

/// The accounting date a posting belongs to: days since 1970-01-01 in the
/// engine's accounting time zone.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct AccountingDate(pub i32);

impl AccountingDate {
    /// The date of instant `at` in a time zone `utc_offset_s` seconds east
    /// of UTC (what dates a posting before a store's first close).
    pub fn of(at: Timestamp, utc_offset_s: i64) -> AccountingDate {
        crate::shard::accounting_date(at, utc_offset_s)
    }

    /// The instant this date starts at, in a time zone `utc_offset_s`
    /// seconds east of UTC (0 before the epoch).
    pub fn start(self, utc_offset_s: i64) -> Timestamp {
        let secs = i64::from(self.0) * 86_400 - utc_offset_s;
        Timestamp(
            u64::try_from(secs)
                .unwrap_or(0)
                .saturating_mul(1_000_000_000),
        )
    }

    /// The day after (saturating at the end of the range).
    pub fn next(self) -> AccountingDate {
        AccountingDate(self.0.saturating_add(1))
    }

    /// The day before (saturating at the start of the range).
    pub fn prev(self) -> AccountingDate {
        AccountingDate(self.0.saturating_sub(1))
    }

    /// The civil date `(year, month, day)` (proleptic Gregorian; Howard
    /// Hinnant's `civil_from_days`), for reports and file names.
    pub fn ymd(self) -> (i32, u32, u32) {
        let z = i64::from(self.0) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        (year, month, day)
    }
}

impl AccountingDate {
    /// The date of a civil `(year, month, day)`; `None` if there is no
    /// such day or it is out of range (Howard Hinnant's
    /// `days_from_civil`).
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<AccountingDate> {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days_in = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        let last = *days_in.get(month.checked_sub(1)? as usize)?;
        if day == 0 || day > last || !(-200_000..=200_000).contains(&year) {
            return None;
        }
        let y = i64::from(year) - i64::from(month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (i64::from(month) + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        i32::try_from(era * 146_097 + doe - 719_468)
            .ok()
            .map(AccountingDate)
    }

    /// `YYYY-MM-DD`, as [`AccountingDate`]'s `Display` writes it.
    pub fn parse(text: &str) -> Option<AccountingDate> {
        let mut parts = text.trim().splitn(3, '-');
        let year = parts.next()?.parse().ok()?;
        let month = parts.next()?.parse().ok()?;
        let day = parts.next()?.parse().ok()?;
        AccountingDate::from_ymd(year, month, day)
    }
}

impl std::fmt::Display for AccountingDate {
    /// `YYYY-MM-DD`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// The engine's accounting calendar: the date open for postings, and the
/// date closed last. `open` is `None` until the first `close_day`: until
/// then a posting's date is its timestamp's date (`Config::utc_offset_s`);
/// from the first close on, only a close moves the date, whatever the
/// clock says (the platform may close late, or early).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calendar {
    pub open: Option<AccountingDate>,
    pub last_closed: Option<AccountingDate>,
}

/// A transaction code (交易码): what kind of business event a transaction is.
/// The core does not interpret it; it is recorded on every detail.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct TxnCode(pub u32);

/// A chart-of-accounts code (会计科目). The core does not interpret it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SubjectCode(pub u32);

/// An ISO-4217-style three-letter currency code. Its number of decimal places
/// comes from the engine's currency table ([`crate::Config::currencies`]).
/// Serialized as its code, `"CNY"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency(pub [u8; 3]);

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Currency, D::Error> {
        let code = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Currency::parse(&code).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{} is not a three-letter upper-case currency code",
                echo(&code)
            ))
        })
    }
}

impl Currency {
    pub const CNY: Currency = Currency(*b"CNY");
    pub const USD: Currency = Currency(*b"USD");
    pub const EUR: Currency = Currency(*b"EUR");
    pub const HKD: Currency = Currency(*b"HKD");
    pub const JPY: Currency = Currency(*b"JPY");

    /// Parses a three-letter upper-case code.
    pub fn parse(code: &str) -> Option<Currency> {
        let bytes: [u8; 3] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_uppercase)
            .then_some(Currency(bytes))
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            write!(f, "{}", b as char)?;
        }
        Ok(())
    }
}

/// Which side of the books an entry is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    Debit,
    Credit,
}

impl Side {
    pub fn opposite(self) -> Side {
        match self {
            Side::Debit => Side::Credit,
            Side::Credit => Side::Debit,
        }
    }
}

/// Which part of an account's balance a leg touches.
///
/// The account's `balance` is the whole posted balance; `frozen` and
/// `non_withdrawable` are parts of it. Credits add to the balance (and to the
/// named part); debits take from it under the bucket's rule:
/// - `Available`: spendable money (balance − frozen − reserved + credit
///   limit); spends the non-withdrawable part first.
/// - `Withdrawable`: like `Available` but may not touch the non-withdrawable
///   part (withdrawals to a bank card use it).
/// - `NonWithdrawable`: on credit, money that may be spent but not withdrawn
///   (card refunds, platform red packets); on debit, the same as `Available`.
/// - `Frozen`: on credit, money that arrives frozen; on debit, takes from the
///   frozen part only. Freezing an amount is a debit `Available` plus a credit
///   `Frozen` on the same account; unfreezing is the reverse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Bucket {
    #[default]
    Available,
    Withdrawable,
    NonWithdrawable,
    Frozen,
}

/// Why a text is not an amount (see [`parse_amount`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmountError {
    #[error("amount {0} is not a decimal: digits, at most one `.` with digits after it, an optional leading `-`")]
    NotADecimal(String),
    #[error("amount {0} is in exponent form: write it out as a plain decimal")]
    ExponentForm(String),
    #[error("amount {text} has {places} decimal places, at most {max} are allowed")]
    TooManyDecimalPlaces {
        text: String,
        places: usize,
        max: u32,
    },
    #[error("amount {0} is too large or has too many digits to be held exactly")]
    TooLarge(String),
}

/// Reads an amount written as a plain decimal (`"10.50"`, `"-3"`, `"0.001"`)
/// exactly: never rounded, never from exponent form, at most
/// `Decimal::MAX_SCALE` (28) decimal places. Errors repeat at most
/// `ECHO_MAX` bytes of the text. (Whether the currency allows that many
/// places is checked when the transaction is.)
pub fn parse_amount(text: &str) -> Result<Decimal, AmountError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !fraction.is_none_or(all_digits) {
        let exponent = digits.bytes().any(|b| b == b'e' || b == b'E')
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || b"eE.+-".contains(&b));
        return Err(if exponent {
            AmountError::ExponentForm(echo(text))
        } else {
            AmountError::NotADecimal(echo(text))
        });
    }
    let places = fraction.map_or(0, str::len);
    if places > Decimal::MAX_SCALE as usize {
        return Err(AmountError::TooManyDecimalPlaces {
            text: echo(text),
            places,
            max: Decimal::MAX_SCALE,
        });
    }
    Decimal::from_str_exact(text).map_err(|_| AmountError::TooLarge(echo(text)))
}

/// `Leg::amount` in JSON: a decimal string read by [`parse_amount`];
/// in binary formats the decimal's own form.
pub(crate) fn deserialize_amount<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Decimal, D::Error> {
    if !d.is_human_readable() {
        return <Decimal as Deserialize>::deserialize(d);
    }
    let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
    parse_amount(&text).map_err(serde::de::Error::custom)
}

/// Why a decimal does not convert to minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MinorError {
    TooManyDecimals,
    Overflow,
}

/// Integer minor units of a currency (cents for CNY): the hot path's money.
/// Conversion to and from `Decimal` happens once, at the API edge, checked.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Minor(pub i64);

impl Minor {
    /// `amount` in minor units of a currency with `scale` decimal places.
    /// `None` if it has more decimal places than the scale or does not fit.
    pub fn from_decimal(amount: Decimal, scale: u32) -> Option<Minor> {
        Minor::convert(amount, scale).ok()
    }

    /// Like `from_decimal`, telling why it failed. Integer arithmetic on
    /// the decimal's mantissa: this runs once per leg.
    pub(crate) fn convert(amount: Decimal, scale: u32) -> Result<Minor, MinorError> {
        let mantissa = amount.mantissa();
        let own = amount.scale();
        if own == scale {
            // The common case: amounts written with the currency's places.
            return i64::try_from(mantissa)
                .map(Minor)
                .map_err(|_| MinorError::Overflow);
        }
        let units = if own > scale {
            let factor = 10i128
                .checked_pow(own - scale)
                .ok_or(MinorError::TooManyDecimals)?;
            if mantissa % factor != 0 {
                return Err(MinorError::TooManyDecimals);
            }
            mantissa / factor
        } else {
            let factor = 10i128
                .checked_pow(scale - own)
                .ok_or(MinorError::Overflow)?;
            mantissa.checked_mul(factor).ok_or(MinorError::Overflow)?
        };
        i64::try_from(units)
            .map(Minor)
            .map_err(|_| MinorError::Overflow)
    }

    pub fn to_decimal(self, scale: u32) -> Decimal {
        Decimal::from_i128_with_scale(i128::from(self.0), scale)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn accounting_dates_print_and_parse_as_civil_dates() {
        assert_eq!(AccountingDate(0).to_string(), "1970-01-01");
        assert_eq!(AccountingDate(20_454).to_string(), "2026-01-01");
        assert_eq!(
            AccountingDate::parse("2024-02-29"),
            Some(AccountingDate(19_782))
        );
        for day in (-700_000..2_900_000).step_by(997) {
            let date = AccountingDate(day);
            assert_eq!(
                AccountingDate::parse(&date.to_string()),
                Some(date),
                "{date}"
            );
        }
        for bad in [
            "2026-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-01-32",
            "2026-1",
            "x",
            "",
        ] {
            assert_eq!(AccountingDate::parse(bad), None, "{bad}");
        }
    }
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap_or_default()
    }

    #[test]
    fn minor_conversion_table() {
        let cases: &[(&str, u32, Option<i64>)] = &[
            ("1", 2, Some(100)),
            ("1.5", 2, Some(150)),
            ("1.50", 2, Some(150)),
            ("0.01", 2, Some(1)),
            ("0.001", 2, None),
            ("1.10000", 2, Some(110)),
            ("-2.25", 2, Some(-225)),
            ("7", 0, Some(7)),
            ("7.1", 0, None),
            ("92233720368547758.07", 2, Some(i64::MAX)),
            ("92233720368547758.08", 2, None),
        ];
        for &(text, scale, expected) in cases {
            let got = Minor::from_decimal(dec(text), scale).map(|m| m.0);
            assert_eq!(got, expected, "{text} at scale {scale}");
        }
    }

    #[test]
    fn minor_round_trips_through_decimal() {
        for units in [0i64, 1, 99, 100, 123_456_789, -5, i64::MAX] {
            let d = Minor(units).to_decimal(2);
            assert_eq!(Minor::from_decimal(d, 2), Some(Minor(units)));
        }
    }

    #[test]
    fn currency_parse() {
        assert_eq!(Currency::parse("CNY"), Some(Currency::CNY));
        assert_eq!(Currency::parse("cny"), None);
        assert_eq!(Currency::parse("CN"), None);
        assert_eq!(Currency::parse("CNYY"), None);
        assert_eq!(Currency::CNY.to_string(), "CNY");
    }
}
