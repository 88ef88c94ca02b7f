//! The replay surface: lines fed to `tally-loadtest replay` (the binary,
//! on the simulated clock so that timestamps are a function of the input).
//!
//! Each case is a few input lines placed after the same setup (a bank, two
//! customers, a funding transfer) and before the same checks (every
//! balance and version, then the funding resubmitted: a duplicate with its
//! first timestamp). Each case line must print exactly the expected line —
//! the exact error text of a malformed line, or the exact outcome of a
//! refused transaction (refusals replay makes itself, and malformed
//! transactions, are never sequenced: no timestamp) — and the checks must
//! print what they print after the setup alone.

use crate::Failures;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use tally_engine::{Outcome, Reject, TxnId, SUBMIT_TRANSACTIONS_MAX};

const SETUP: [&str; 4] = [
    r#"{"op":"open_account","id":0,"currency":"CNY","kind":"internal"}"#,
    r#"{"op":"open_account","id":1,"currency":"CNY"}"#,
    r#"{"op":"open_account","id":2,"currency":"CNY"}"#,
    r#"{"op":"transfer","id":1,"from":0,"to":1,"amount":"100.00","currency":"CNY"}"#,
];

/// After the case: balances first (a line that is not a transaction, so
/// that a chain a case leaves open is cut here, not joined by the
/// resubmitted funding), then the funding again.
const CHECKS: [&str; 4] = [
    r#"{"op":"balance","account":0}"#,
    r#"{"op":"balance","account":1}"#,
    r#"{"op":"balance","account":2}"#,
    r#"{"op":"transfer","id":1,"from":0,"to":1,"amount":"100.00","currency":"CNY"}"#,
];

pub struct Case {
    name: String,
    lines: Vec<Vec<u8>>,
    expected: Vec<Value>,
}

fn case(name: &str, lines: &[&str], expected: Vec<Value>) -> Case {
    Case {
        name: name.to_string(),
        lines: lines.iter().map(|l| l.as_bytes().to_vec()).collect(),
        expected,
    }
}

/// One malformed line and its exact error.
fn bad(name: &str, line: &str, error: &str) -> Case {
    case(name, &[line], vec![json!({ "error": error })])
}

fn bad_bytes(name: &str, line: Vec<u8>, error: &str) -> Case {
    Case {
        name: name.to_string(),
        lines: vec![line],
        expected: vec![json!({ "error": error })],
    }
}

/// The printed line of a transaction refused before sequencing.
fn refused(op: &str, id: u128, reject: Reject) -> Value {
    let outcome = Outcome {
        id: TxnId(id),
        timestamp: None,
        result: Err(reject),
        duplicate: false,
    };
    json!({ "op": op, "outcome": serde_json::to_value(outcome).unwrap_or(Value::Null) })
}

fn transfer(id: u64, amount: &str) -> String {
    format!(r#"{{"op":"transfer","id":{id},"from":0,"to":1,"amount":"{amount}","currency":"CNY"}}"#)
}

/// A `submit` line moving 1.00 from the bank to customer 1.
fn submit(id: u64, linked: bool) -> String {
    format!(
        r#"{{"op":"submit","txn":{{"id":{id},"code":1,"linked":{linked},"legs":[{{"account":0,"side":"Debit","amount":"1.00","currency":"CNY"}},{{"account":1,"side":"Credit","amount":"1.00","currency":"CNY"}}]}}}}"#
    )
}

/// A `submit` line whose transaction is `txn` (its `legs` given).
fn submit_txn(txn: &str) -> String {
    format!(r#"{{"op":"submit","txn":{txn}}}"#)
}

const LEGS: &str = r#"[{"account":0,"side":"Debit","amount":"1.00","currency":"CNY"},{"account":1,"side":"Credit","amount":"1.00","currency":"CNY"}]"#;

pub fn cases() -> Vec<Case> {
    let mut cases = field_cases();
    cases.extend(amount_cases());
    cases.extend(id_cases());
    cases.extend(byte_cases());
    cases.extend(chain_cases());
    cases
}

fn field_cases() -> Vec<Case> {
    vec![
        bad(
            "a misspelt amount field",
            r#"{"op":"transfer","id":100,"from":0,"to":1,"amout":"1.00","currency":"CNY"}"#,
            "unknown field `amout`, expected one of `id`, `from`, `to`, `amount`, `currency`, `code`",
        ),
        bad(
            "a transfer with an extra field",
            r#"{"op":"transfer","id":100,"from":0,"to":1,"amount":"1.00","currency":"CNY","memo":"x"}"#,
            "unknown field `memo`, expected one of `id`, `from`, `to`, `amount`, `currency`, `code`",
        ),
        bad(
            "a transfer without its payer",
            r#"{"op":"transfer","id":100,"to":1,"amount":"1.00","currency":"CNY"}"#,
            "missing field `from`",
        ),
        bad(
            "linked misspelt linkd",
            &submit_txn(&format!(r#"{{"id":100,"code":1,"linkd":true,"legs":{LEGS}}}"#)),
            "unknown field `linkd`, expected one of `id`, `code`, `kind`, `legs`, `linked`",
        ),
        bad(
            "kind misspelt knd",
            &submit_txn(&format!(
                r#"{{"id":100,"code":1,"knd":{{"Pending":{{"timeout_ms":1}}}},"legs":{LEGS}}}"#
            )),
            "unknown field `knd`, expected one of `id`, `code`, `kind`, `legs`, `linked`",
        ),
        bad(
            "a leg's bucket misspelt buckt",
            &submit_txn(r#"{"id":100,"code":1,"legs":[{"account":0,"side":"Debit","amount":"1.00","currency":"CNY","buckt":"Frozen"},{"account":1,"side":"Credit","amount":"1.00","currency":"CNY"}]}"#),
            "unknown field `buckt`, expected one of `account`, `side`, `amount`, `currency`, `bucket`, `expected_version`",
        ),
        bad(
            "a leg's expected_version misspelt",
            &submit_txn(r#"{"id":100,"code":1,"legs":[{"account":0,"side":"Debit","amount":"1.00","currency":"CNY","expected_verison":0},{"account":1,"side":"Credit","amount":"1.00","currency":"CNY"}]}"#),
            "unknown field `expected_verison`, expected one of `account`, `side`, `amount`, `currency`, `bucket`, `expected_version`",
        ),
        bad(
            "a submit line with a field beside txn",
            &format!(r#"{{"op":"submit","txn":{{"id":100,"code":1,"legs":{LEGS}}},"x":1}}"#),
            "unknown field `x`, expected `txn`",
        ),
        bad(
            "a balance line with an extra field",
            r#"{"op":"balance","account":1,"at":5}"#,
            "unknown field `at`, expected `account`",
        ),
        bad(
            "an open_account line with an extra field",
            r#"{"op":"open_account","id":5,"currency":"CNY","limit":"5"}"#,
            "unknown field `limit`, expected one of `id`, `currency`, `kind`",
        ),
        bad("an unknown op", r#"{"op":"frobnicate"}"#, "unknown variant `frobnicate`, expected one of `open_account`, `transfer`, `submit`, `balance` at line 1 column 18"),
        bad("no op", r#"{"id":1}"#, "missing field `op`"),
        bad("an op that is a number", r#"{"op":5}"#, "field `op` must be a string"),
        bad("an array", "[1,2]", "expected a JSON object"),
        bad("a bare string", r#""transfer""#, "expected a JSON object"),
        bad("not JSON", "hello", "expected value at line 1 column 1"),
        bad("a cut line", r#"{"op":"transfer","id":100"#, "EOF while parsing an object at line 1 column 25"),
        bad("an empty object", "{}", "missing field `op`"),
        bad(
            "trailing characters",
            &format!("{} x", transfer(100, "1.00")),
            "trailing characters at line 1 column 77",
        ),
        bad(
            "an amount given twice",
            r#"{"op":"transfer","id":100,"from":0,"to":1,"amount":"1.00","amount":"2.00","currency":"CNY"}"#,
            "duplicate field `amount`",
        ),
        bad(
            "op given twice",
            r#"{"op":"balance","op":"transfer","account":1}"#,
            "duplicate field `op` at line 1 column 20",
        ),
        bad(
            "a leg's account given twice",
            &submit_txn(r#"{"id":100,"code":1,"legs":[{"account":0,"account":1,"side":"Debit","amount":"1.00","currency":"CNY"},{"account":1,"side":"Credit","amount":"1.00","currency":"CNY"}]}"#),
            "duplicate field `account`",
        ),
        bad(
            "linked given twice",
            &submit_txn(&format!(
                r#"{{"id":100,"code":1,"linked":false,"linked":true,"legs":{LEGS}}}"#
            )),
            "duplicate field `linked`",
        ),
        bad(
            "a lower-case side",
            &submit_txn(r#"{"id":100,"code":1,"legs":[{"account":0,"side":"debit","amount":"1.00","currency":"CNY"},{"account":1,"side":"Credit","amount":"1.00","currency":"CNY"}]}"#),
            "unknown variant `debit`, expected `Debit` or `Credit`",
        ),
        bad(
            "an unknown bucket",
            &submit_txn(r#"{"id":100,"code":1,"legs":[{"account":0,"side":"Debit","amount":"1.00","currency":"CNY","bucket":"Pocket"},{"account":1,"side":"Credit","amount":"1.00","currency":"CNY"}]}"#),
            "unknown variant `Pocket`, expected one of `Available`, `Withdrawable`, `NonWithdrawable`, `Frozen`",
        ),
        bad(
            "an unknown kind",
            &submit_txn(&format!(
                r#"{{"id":100,"code":1,"kind":"Frobnicate","legs":{LEGS}}}"#
            )),
            "unknown variant `Frobnicate`, expected one of `Posted`, `Pending`, `PostPending`, `VoidPending`",
        ),
        bad(
            "a pending kind without its timeout",
            &submit_txn(&format!(
                r#"{{"id":100,"code":1,"kind":"Pending","legs":{LEGS}}}"#
            )),
            "invalid type: unit variant, expected struct variant",
        ),
        bad(
            "a negative timeout",
            &submit_txn(&format!(
                r#"{{"id":100,"code":1,"kind":{{"Pending":{{"timeout_ms":-1}}}},"legs":{LEGS}}}"#
            )),
            "invalid value: integer `-1`, expected u64",
        ),
        bad(
            "a code above u32",
            &submit_txn(&format!(r#"{{"id":100,"code":4294967296,"legs":{LEGS}}}"#)),
            "invalid value: integer `4294967296`, expected u32",
        ),
        bad(
            "an expected version as a string",
            &submit_txn(r#"{"id":100,"code":1,"legs":[{"account":0,"side":"Debit","amount":"1.00","currency":"CNY","expected_version":"3"},{"account":1,"side":"Credit","amount":"1.00","currency":"CNY"}]}"#),
            "invalid type: string \"3\", expected u64",
        ),
        bad(
            "a lower-case currency",
            r#"{"op":"transfer","id":100,"from":0,"to":1,"amount":"1.00","currency":"cny"}"#,
            "\"cny\" is not a currency (three upper-case letters)",
        ),
        bad(
            "a four-letter currency",
            r#"{"op":"open_account","id":5,"currency":"CNYY"}"#,
            "\"CNYY\" is not a currency (three upper-case letters)",
        ),
        bad(
            "an account kind that does not exist",
            r#"{"op":"open_account","id":5,"currency":"CNY","kind":"product"}"#,
            "unknown variant `product`, expected `customer` or `internal`",
        ),
        case(
            "an unknown currency (well formed)",
            &[r#"{"op":"transfer","id":100,"from":0,"to":1,"amount":"1.00","currency":"XXX"}"#],
            vec![refused(
                "transfer",
                100,
                Reject::UnknownCurrency {
                    leg: 0,
                    currency: tally_engine::Currency(*b"XXX"),
                },
            )],
        ),
        case(
            "a void with legs",
            &[&submit_txn(&format!(
                r#"{{"id":100,"code":1,"kind":{{"VoidPending":{{"pending_id":1}}}},"legs":{LEGS}}}"#
            ))],
            vec![refused("submit", 100, Reject::VoidWithLegs)],
        ),
        bad(
            "JSON nested 100,000 deep",
            &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            "invalid type: sequence, expected variant identifier at line 1 column 1",
        ),
        bad(
            "a lone surrogate escape",
            r#"{"op":"balance","account":1,"x":"\ud800"}"#,
            "unexpected end of hex escape at line 1 column 40",
        ),
    ]
}

fn amount_cases() -> Vec<Case> {
    let digits = "9".repeat(1_000_000);
    vec![
        bad(
            "29 decimal places",
            &transfer(100, "0.00000000000000000000000000001"),
            "amount \"0.00000000000000000000000000001\" has 29 decimal places, at most 28 are allowed",
        ),
        bad(
            "28 decimal places of a 30-digit number",
            &transfer(100, "12.3456789012345678901234567890"),
            "amount \"12.3456789012345678901234567890\" is too large or has too many digits to be held exactly",
        ),
        bad("exponent form 1e3", &transfer(100, "1e3"), "amount \"1e3\" is in exponent form: write it out as a plain decimal"),
        bad("exponent form 1E+3", &transfer(100, "1E+3"), "amount \"1E+3\" is in exponent form: write it out as a plain decimal"),
        bad("exponent form 1.5e-2", &transfer(100, "1.5e-2"), "amount \"1.5e-2\" is in exponent form: write it out as a plain decimal"),
        bad(
            "a JSON number with a fraction",
            r#"{"op":"transfer","id":100,"from":0,"to":1,"amount":10.5,"currency":"CNY"}"#,
            "amount is a JSON number with a fraction or an exponent: write it as a decimal string, such as \"10.50\"",
        ),
        bad(
            "a JSON number in exponent form",
            r#"{"op":"transfer","id":100,"from":0,"to":1,"amount":1e3,"currency":"CNY"}"#,
            "amount is a JSON number with a fraction or an exponent: write it as a decimal string, such as \"10.50\"",
        ),
        bad("an empty amount", &transfer(100, ""), "amount \"\" is not a decimal: digits, at most one `.` with digits after it, an optional leading `-`"),
        bad("a word for an amount", &transfer(100, "ten"), "amount \"ten\" is not a decimal: digits, at most one `.` with digits after it, an optional leading `-`"),
        bad("a plus sign", &transfer(100, "+5"), "amount \"+5\" is not a decimal: digits, at most one `.` with digits after it, an optional leading `-`"),
        bad("a leading space", &transfer(100, " 5"), "amount \" 5\" is not a decimal: digits, at most one `.` with digits after it, an optional leading `-`"),
        bad("a thousands separator", &transfer(100, "1,000.00"), "amount \"1,000.00\" is not a decimal: digits, at most one `.` with digits after it, an optional leading `-`"),
        bad("a trailing dot", &transfer(100, "5."), "amount \"5.\" is not a decimal: digits, at most one `.` with digits after it, an optional leading `-`"),
        bad("a leading dot", &transfer(100, ".5"), "amount \".5\" is not a decimal: digits, at most one `.` with digits after it, an optional leading `-`"),
        bad("two minus signs", &transfer(100, "--5"), "amount \"--5\" is not a decimal: digits, at most one `.` with digits after it, an optional leading `-`"),
        bad("NaN", &transfer(100, "NaN"), "amount \"NaN\" is not a decimal: digits, at most one `.` with digits after it, an optional leading `-`"),
        bad(
            "a null amount",
            r#"{"op":"transfer","id":100,"from":0,"to":1,"amount":null,"currency":"CNY"}"#,
            "amount must be a decimal string, got null",
        ),
        bad(
            "an amount that is an object",
            r#"{"op":"transfer","id":100,"from":0,"to":1,"amount":{"v":1},"currency":"CNY"}"#,
            "amount must be a decimal string, got an object",
        ),
        bad(
            "Decimal::MAX + 1",
            &transfer(100, "79228162514264337593543950336"),
            "amount \"79228162514264337593543950336\" is too large or has too many digits to be held exactly",
        ),
        bad("a million digits", &transfer(100, &digits), "amount \"9999999999999999999999999999999999999999999999999999999999999999\"… (1000000 bytes) is too large or has too many digits to be held exactly"),
        bad(
            "a million-digit fraction",
            &transfer(100, &format!("0.{digits}")),
            "amount \"0.99999999999999999999999999999999999999999999999999999999999999\"… (1000002 bytes) has 1000000 decimal places, at most 28 are allowed",
        ),
        bad(
            "a leg amount in exponent form",
            &submit_txn(r#"{"id":100,"code":1,"legs":[{"account":0,"side":"Debit","amount":"1e2","currency":"CNY"},{"account":1,"side":"Credit","amount":"1e2","currency":"CNY"}]}"#),
            "amount \"1e2\" is in exponent form: write it out as a plain decimal",
        ),
        bad(
            "a leg amount as a JSON number",
            &submit_txn(r#"{"id":100,"code":1,"legs":[{"account":0,"side":"Debit","amount":1,"currency":"CNY"},{"account":1,"side":"Credit","amount":1,"currency":"CNY"}]}"#),
            "invalid type: integer `1`, expected a string",
        ),
        case(
            "a negative amount (well formed)",
            &[&transfer(100, "-1.00")],
            vec![refused(
                "transfer",
                100,
                Reject::AmountNotPositive {
                    leg: 0,
                    amount: rust_decimal::Decimal::new(-100, 2),
                },
            )],
        ),
        case(
            "three places in CNY (well formed)",
            &[&transfer(100, "0.001")],
            vec![refused(
                "transfer",
                100,
                Reject::TooManyDecimals {
                    leg: 0,
                    amount: rust_decimal::Decimal::new(1, 3),
                    currency: tally_engine::Currency::CNY,
                    scale: 2,
                },
            )],
        ),
        case(
            "the largest decimal (well formed, too large for CNY)",
            &[&transfer(100, "79228162514264337593543950335")],
            vec![refused(
                "transfer",
                100,
                Reject::AmountOverflow {
                    leg: 0,
                    amount: rust_decimal::Decimal::MAX,
                },
            )],
        ),
    ]
}

fn id_cases() -> Vec<Case> {
    vec![
        bad(
            "a transaction id of 2^64 as a number",
            r#"{"op":"transfer","id":18446744073709551616,"from":0,"to":1,"amount":"1.00","currency":"CNY"}"#,
            "the number 18446744073709551616 does not fit 64 bits: write ids above 2^64 as strings of digits",
        ),
        bad(
            "a transaction id of 2^128 as a string",
            r#"{"op":"transfer","id":"340282366920938463463374607431768211456","from":0,"to":1,"amount":"1.00","currency":"CNY"}"#,
            "a transaction id \"340282366920938463463374607431768211456\" is out of range",
        ),
        bad(
            "a transaction id of 2^64 as a float",
            r#"{"op":"transfer","id":1.8446744073709552e19,"from":0,"to":1,"amount":"1.00","currency":"CNY"}"#,
            "a transaction id must be an integer below 2^64, or a string of digits (write ids above 2^64 as strings)",
        ),
        bad(
            "a negative transaction id",
            r#"{"op":"transfer","id":-1,"from":0,"to":1,"amount":"1.00","currency":"CNY"}"#,
            "a transaction id -1 is negative",
        ),
        bad(
            "a transaction id string with a sign",
            r#"{"op":"transfer","id":"+7","from":0,"to":1,"amount":"1.00","currency":"CNY"}"#,
            "a transaction id \"+7\" is not a string of digits",
        ),
        bad(
            "an empty transaction id string",
            r#"{"op":"transfer","id":"","from":0,"to":1,"amount":"1.00","currency":"CNY"}"#,
            "a transaction id \"\" is not a string of digits",
        ),
        bad(
            "a transaction id of true",
            r#"{"op":"transfer","id":true,"from":0,"to":1,"amount":"1.00","currency":"CNY"}"#,
            "invalid type: boolean `true`, expected a transaction id: an unsigned integer or a string of digits",
        ),
        bad(
            "an account id of 2^64 as a string",
            r#"{"op":"balance","account":"18446744073709551616"}"#,
            "an account id \"18446744073709551616\" is out of range",
        ),
        bad(
            "an account id of 2^64 as a number in a leg",
            &submit_txn(r#"{"id":100,"code":1,"legs":[{"account":18446744073709551616,"side":"Debit","amount":"1.00","currency":"CNY"},{"account":1,"side":"Credit","amount":"1.00","currency":"CNY"}]}"#),
            "the number 18446744073709551616 does not fit 64 bits: write ids above 2^64 as strings of digits",
        ),
        bad(
            "a pending id of 2^128",
            &submit_txn(r#"{"id":100,"code":1,"kind":{"VoidPending":{"pending_id":"340282366920938463463374607431768211456"}}}"#),
            "a transaction id \"340282366920938463463374607431768211456\" is out of range",
        ),
        bad(
            "an account id with 70 digits",
            &format!(r#"{{"op":"balance","account":"{}"}}"#, "1".repeat(70)),
            "an account id \"1111111111111111111111111111111111111111111111111111111111111111\"… (70 bytes) is out of range",
        ),
        case(
            "a transaction id above 2^64 (as a string) on a refused transfer",
            &[r#"{"op":"transfer","id":"18446744073709551616","from":0,"to":1,"amount":"0","currency":"CNY"}"#],
            vec![refused(
                "transfer",
                1u128 << 64,
                Reject::AmountNotPositive {
                    leg: 0,
                    amount: rust_decimal::Decimal::ZERO,
                },
            )],
        ),
    ]
}

fn byte_cases() -> Vec<Case> {
    let mut bom_later = b"\xEF\xBB\xBF".to_vec();
    bom_later.extend_from_slice(transfer(100, "1.00").as_bytes());
    let mut nul = transfer(100, "1.00").into_bytes();
    nul.insert(10, 0);
    vec![
        bad_bytes(
            "a 0xFF byte",
            b"\xff".to_vec(),
            "the line is not valid UTF-8 (bad byte at offset 0)",
        ),
        bad_bytes(
            "invalid UTF-8 inside a string",
            b"{\"op\":\"balance\",\"account\":1,\"x\":\"\xc3\x28\"}".to_vec(),
            "the line is not valid UTF-8 (bad byte at offset 33)",
        ),
        bad_bytes(
            "an overlong encoding of '/'",
            b"{\"op\":\"balance\",\"account\":1,\"x\":\"\xc0\xaf\"}".to_vec(),
            "the line is not valid UTF-8 (bad byte at offset 33)",
        ),
        bad_bytes(
            "a byte-order mark after line 1",
            bom_later,
            "expected value at line 1 column 1",
        ),
        bad_bytes(
            "a NUL byte",
            nul,
            "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 11",
        ),
    ]
}

fn chain_cases() -> Vec<Case> {
    let interrupted = |op: &str, id: u128| refused(op, id, Reject::LinkedChainInterrupted);
    let too_long = SUBMIT_TRANSACTIONS_MAX + 1;
    let long_lines: Vec<String> = (0..too_long as u64)
        .map(|i| submit(1_000 + i, i + 1 < too_long as u64))
        .collect();
    let long_refs: Vec<&str> = long_lines.iter().map(String::as_str).collect();
    vec![
        case(
            "a chain cut by a balance line",
            &[
                &submit(100, true),
                r#"{"op":"balance","account":99}"#,
                &submit(101, false),
            ],
            vec![
                interrupted("submit", 100),
                json!({"op": "balance", "account": 99, "view": null}),
                interrupted("submit", 101),
            ],
        ),
        case(
            "a chain cut by a malformed line",
            &[
                &submit(100, true),
                "not json",
                &submit(101, true),
                &submit(102, false),
            ],
            vec![
                interrupted("submit", 100),
                json!({"error": "expected ident at line 1 column 2"}),
                interrupted("submit", 101),
                interrupted("submit", 102),
            ],
        ),
        case(
            "a chain cut by an account opened again",
            &[
                &submit(100, true),
                r#"{"op":"open_account","id":2,"currency":"CNY"}"#,
                &submit(101, false),
            ],
            vec![
                interrupted("submit", 100),
                json!({"op": "open_account", "id": 2, "result": {"Ok": null}}),
                interrupted("submit", 101),
            ],
        ),
        Case {
            name: "a chain cut by a line of invalid UTF-8".into(),
            lines: vec![
                submit(100, true).into_bytes(),
                b"\xfe\xfe".to_vec(),
                submit(101, false).into_bytes(),
            ],
            expected: vec![
                interrupted("submit", 100),
                json!({"error": "the line is not valid UTF-8 (bad byte at offset 0)"}),
                interrupted("submit", 101),
            ],
        },
        // Documented: the members after the cutting line, up to the first
        // unlinked transaction, are the chain's rest and refused with it.
        case(
            "a chain of two cut by a balance line takes the next transaction as its last",
            &[
                &submit(100, true),
                &submit(101, true),
                r#"{"op":"balance","account":99}"#,
                &transfer(102, "1.00"),
            ],
            vec![
                interrupted("submit", 100),
                interrupted("submit", 101),
                json!({"op": "balance", "account": 99, "view": null}),
                interrupted("transfer", 102),
            ],
        ),
        case(
            "a chain one longer than a call",
            &long_refs,
            (0..too_long as u128)
                .map(|i| {
                    refused(
                        "submit",
                        1_000 + i,
                        Reject::LinkedChainTooLong {
                            max: SUBMIT_TRANSACTIONS_MAX,
                        },
                    )
                })
                .collect(),
        ),
    ]
}

fn replay(bin: &str, lines: &[Vec<u8>]) -> Result<Vec<Value>, String> {
    let mut input = Vec::new();
    for line in lines {
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    let mut child = Command::new(bin)
        .args(["replay", "--input", "-", "--shards", "2"])
        .args(["--clock", "simulated", "--seed", "7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start replay: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("replay: {e}"))?;
    writer
        .join()
        .map_err(|_| "the writer panicked".to_string())?
        .map_err(|e| format!("cannot write the input: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(0) || !stderr.is_empty() {
        return Err(format!("exit {:?}, stderr {stderr}", out.status.code()));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
        .collect()
}

/// The printed line without its line number, which must be `number`.
fn numbered(line: &Value, number: usize) -> Result<Value, String> {
    let mut line = line.clone();
    let got = line
        .as_object_mut()
        .and_then(|o| o.remove("line"))
        .and_then(|n| n.as_u64());
    if got != Some(number as u64) {
        return Err(format!("line {got:?} printed where {number} was expected"));
    }
    Ok(line)
}

pub fn run(bin: &str, cases: &[Case], failures: &mut Failures) {
    let around = |middle: &[Vec<u8>]| -> Vec<Vec<u8>> {
        SETUP
            .iter()
            .map(|l| l.as_bytes().to_vec())
            .chain(middle.iter().cloned())
            .chain(CHECKS.iter().map(|l| l.as_bytes().to_vec()))
            .collect()
    };
    let baseline = match replay(bin, &around(&[])) {
        Ok(lines) => lines,
        Err(e) => return failures.push(format!("replay: the baseline failed: {e}")),
    };
    let first_check = SETUP.len();
    assert_eq!(baseline.len(), SETUP.len() + CHECKS.len(), "{baseline:?}");
    let funding = &baseline[SETUP.len() - 1]["outcome"];
    let again = &baseline[first_check + CHECKS.len() - 1]["outcome"];
    assert!(
        funding["result"] == json!({"Ok": null})
            && again["duplicate"] == json!(true)
            && again["timestamp"] == funding["timestamp"]
            && funding["timestamp"].is_u64(),
        "the baseline's checks: {baseline:?}"
    );
    for c in cases {
        let mut check = |what: String| failures.push(format!("replay / {}: {what}", c.name));
        let printed = match replay(bin, &around(&c.lines)) {
            Ok(lines) => lines,
            Err(e) => {
                check(e);
                continue;
            }
        };
        let n = c.lines.len();
        if printed.len() != SETUP.len() + n + CHECKS.len() {
            check(format!("{} lines printed: {printed:?}", printed.len()));
            continue;
        }
        for (i, (got, want)) in printed.iter().zip(baseline.iter()).enumerate() {
            // Setup lines print as in the baseline; so do the checks,
            // after the case's lines.
            let (got, number) = if i < SETUP.len() {
                (got, i + 1)
            } else {
                (&printed[i + n], i + n + 1)
            };
            match numbered(got, number) {
                Ok(got) if got == numbered(want, i + 1).unwrap_or_default() => {}
                Ok(got) => check(format!(
                    "changed: line {number} printed {got} instead of {want}"
                )),
                Err(e) => check(e),
            }
        }
        for (k, want) in c.expected.iter().enumerate() {
            let number = SETUP.len() + k + 1;
            match numbered(&printed[SETUP.len() + k], number) {
                Ok(got) if got == *want => {}
                Ok(got) => check(format!("line {number}: expected {want}, got {got}")),
                Err(e) => check(e),
            }
        }
        if c.expected.len() != n {
            check(format!("{n} lines, {} expected answers", c.expected.len()));
        }
    }
}
