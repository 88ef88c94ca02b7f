//! The replay line decoder: one line of `tally-loadtest replay` input read
//! strictly into an [`Op`] (see the `replay` command's docs for the
//! format). A library module so that the fuzz target `replay_line`
//! (`engine/fuzz/`) reaches the very decoder the command uses.

use rust_decimal::Decimal;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;
use tally_engine::{echo, parse_amount, AccountId, Currency, Transaction, TxnId, ECHO_MAX};

/// One input line. Every object is read strictly: an unknown or repeated
/// field is an error.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    OpenAccount(OpenAccountOp),
    Transfer(TransferOp),
    Submit(SubmitOp),
    Balance(BalanceOp),
}

/// Any transaction, in the engine's own JSON form (`Transaction`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitOp {
    pub txn: Transaction,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAccountOp {
    pub id: AccountId,
    #[serde(deserialize_with = "currency")]
    pub currency: Currency,
    #[serde(default)]
    pub kind: Kind,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Customer,
    Internal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferOp {
    pub id: TxnId,
    pub from: AccountId,
    pub to: AccountId,
    #[serde(deserialize_with = "amount")]
    pub amount: Decimal,
    #[serde(deserialize_with = "currency")]
    pub currency: Currency,
    #[serde(default = "default_code")]
    pub code: u32,
}

fn default_code() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceOp {
    pub account: AccountId,
}

/// An operation from one line of text, or why it is not one, in words a
/// person can act on that repeat at most a bounded piece of the line.
pub fn decode_line(line: &str) -> std::result::Result<Op, String> {
    if let Some(number) = integer_beyond_64_bits(line) {
        return Err(format!(
            "the number {} does not fit 64 bits: write ids above 2^64 as strings of digits",
            clip_number(number)
        ));
    }
    // Straight from the text, not through `serde_json::Value`: a `Value`
    // keeps only the last of repeated keys.
    serde_json::from_str::<Op>(line).map_err(|e| {
        let reason = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => match object.get("op") {
                None => "missing field `op`".to_string(),
                Some(Value::String(_)) => e.to_string(),
                Some(_) => "field `op` must be a string".to_string(),
            },
            Ok(_) => "expected a JSON object".to_string(),
            Err(_) => e.to_string(),
        };
        clip_quotes(&reason)
    })
}

/// The first integer in the JSON text (outside strings) that fits neither
/// `u64` nor `i64`. A JSON reader turns such a number into a rounded float,
/// so it is refused here, where its exact digits are still known.
pub fn integer_beyond_64_bits(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let token = text.get(start..i)?;
                let integer = token.trim_start_matches('-');
                let is_integer = !integer.is_empty() && integer.bytes().all(|b| b.is_ascii_digit());
                if is_integer && token.parse::<u64>().is_err() && token.parse::<i64>().is_err() {
                    return Some(token);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// A number for an error message: exact, or its first digits if very long.
fn clip_number(number: &str) -> String {
    match number.get(..ECHO_MAX) {
        Some(head) if number.len() > ECHO_MAX => format!("{head}… ({} digits)", number.len()),
        _ => number.to_string(),
    }
}

/// An error message from a JSON reader with every quoted piece of input in
/// it (between backticks or double quotes) cut to `ECHO_MAX` bytes.
pub fn clip_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(512));
    let mut chars = message.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        out.push(c);
        if c != '`' && c != '"' {
            continue;
        }
        // The quoted piece runs to the matching quote (a `\"` inside a
        // double-quoted piece does not end it).
        let mut end = message.len();
        let mut escaped = false;
        for (i, d) in message[at + 1..].char_indices() {
            if d == c && !escaped {
                end = at + 1 + i;
                break;
            }
            escaped = c == '"' && d == '\\' && !escaped;
        }
        let piece = &message[at + 1..end];
        if piece.len() > ECHO_MAX {
            let mut cut = ECHO_MAX;
            while !piece.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&piece[..cut]);
            out.push_str(&format!("… ({} bytes)", piece.len()));
        } else {
            out.push_str(piece);
        }
        if end < message.len() {
            out.push(c);
        }
        while chars.peek().is_some_and(|&(i, _)| i <= end) {
            chars.next();
        }
    }
    out
}

fn currency<'de, D: Deserializer<'de>>(d: D) -> Result<Currency, D::Error> {
    let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
    Currency::parse(&text).ok_or_else(|| {
        de::Error::custom(format!(
            "{} is not a currency (three upper-case letters)",
            echo(&text)
        ))
    })
}

/// A transfer's amount: a plain decimal string read exactly, or a JSON
/// integer; a JSON number with a fraction or an exponent reaches here
/// already rounded to a float, so it is refused.
fn amount<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => parse_amount(&s).map_err(de::Error::custom),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Ok(Decimal::from(u)),
            (_, Some(i)) => Ok(Decimal::from(i)),
            _ => Err(de::Error::custom(
                "amount is a JSON number with a fraction or an exponent: write it as a decimal string, such as \"10.50\"",
            )),
        },
        other => {
            let kind = match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Array(_) => "an array",
                _ => "an object",
            };
            Err(de::Error::custom(format!(
                "amount must be a decimal string, got {kind}"
            )))
        }
    }
}
