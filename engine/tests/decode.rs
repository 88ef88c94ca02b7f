//! Reading transactions from JSON is strict: unknown or repeated fields,
//! amounts that would be rounded or are in exponent form, and ids that are
//! not plain digits are errors, never silently defaulted or rounded; error
//! messages repeat at most a bounded piece of the bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rust_decimal::Decimal;
use std::str::FromStr;
use tally_engine::*;

const LEG_A: &str = r#"{"account":1,"side":"Debit","amount":"5.00","currency":"CNY"}"#;
const LEG_B: &str = r#"{"account":2,"side":"Credit","amount":"5.00","currency":"CNY"}"#;

fn txn(json: &str) -> Result<Transaction, String> {
    serde_json::from_str::<Transaction>(json).map_err(|e| e.to_string())
}

/// A transaction around one leg given as text (the other leg fixed).
fn with_leg(leg: &str) -> String {
    format!(r#"{{"id":1,"code":2,"legs":[{leg},{LEG_B}]}}"#)
}

#[test]
fn a_well_formed_transaction_reads_as_written() {
    let got = txn(&format!(
        r#"{{"id":"7","code":2,"kind":{{"Pending":{{"timeout_ms":5}}}},"linked":true,"legs":[{{"account":"1","side":"Debit","amount":"5.00","currency":"CNY","bucket":"Withdrawable","expected_version":3}},{LEG_B}]}}"#
    ))
    .expect("reads");
    let mut expected = Transaction::posted(
        TxnId(7),
        TxnCode(2),
        vec![
            Leg::debit(AccountId(1), Decimal::new(5_00, 2), Currency::CNY)
                .bucket(Bucket::Withdrawable)
                .expect_version(Version(3)),
            Leg::credit(AccountId(2), Decimal::new(5_00, 2), Currency::CNY),
        ],
    );
    expected.kind = TxnKind::Pending { timeout_ms: 5 };
    expected.linked = true;
    assert_eq!(got, expected);
}

#[test]
fn misspelt_and_unknown_fields_are_refused() {
    let cases = [
        with_leg(
            r#"{"account":1,"side":"Debit","amount":"5.00","currency":"CNY","buckt":"Frozen"}"#,
        ),
        with_leg(
            r#"{"account":1,"side":"Debit","amount":"5.00","currency":"CNY","expected_verison":3}"#,
        ),
        format!(
            r#"{{"id":1,"code":2,"knd":{{"Pending":{{"timeout_ms":5}}}},"legs":[{LEG_A},{LEG_B}]}}"#
        ),
        format!(r#"{{"id":1,"code":2,"linkd":true,"legs":[{LEG_A},{LEG_B}]}}"#),
        format!(
            r#"{{"id":1,"code":2,"kind":{{"Pending":{{"timeout_ms":5,"timeout":9}}}},"legs":[{LEG_A},{LEG_B}]}}"#
        ),
    ];
    for json in cases {
        let err = txn(&json).expect_err(&json);
        assert!(err.contains("unknown field"), "{json}: {err}");
    }
}

#[test]
fn repeated_fields_are_refused() {
    let cases = [
        format!(r#"{{"id":1,"id":2,"code":2,"legs":[{LEG_A},{LEG_B}]}}"#),
        format!(r#"{{"id":1,"code":2,"linked":false,"linked":true,"legs":[{LEG_A},{LEG_B}]}}"#),
        with_leg(
            r#"{"account":1,"side":"Debit","amount":"5.00","amount":"500.00","currency":"CNY"}"#,
        ),
    ];
    for json in cases {
        let err = txn(&json).expect_err(&json);
        assert!(err.contains("duplicate field"), "{json}: {err}");
    }
}

#[test]
fn amounts_are_exact_plain_decimals() {
    let places_28 = format!("0.{}1", "0".repeat(27));
    assert_eq!(
        parse_amount(&places_28),
        Ok(Decimal::from_i128_with_scale(1, 28))
    );
    assert_eq!(parse_amount("-12.50"), Ok(Decimal::new(-12_50, 2)));
    assert_eq!(parse_amount("007"), Ok(Decimal::new(7, 0)));
    let places_29 = format!("0.{}1", "0".repeat(28));
    assert!(matches!(
        parse_amount(&places_29),
        Err(AmountError::TooManyDecimalPlaces {
            places: 29,
            max: 28,
            ..
        })
    ));
    // Rounding would be needed: too many significant digits.
    assert!(matches!(
        parse_amount("10.0000000000000000000000000001"),
        Err(AmountError::TooLarge(_))
    ));
    assert!(matches!(
        parse_amount("99999999999999999999999999999999"),
        Err(AmountError::TooLarge(_))
    ));
    for text in ["1e3", "1E3", "1.5e-2", "2e+1"] {
        assert!(
            matches!(parse_amount(text), Err(AmountError::ExponentForm(_))),
            "{text}"
        );
    }
    for text in [
        "", "-", "+1", " 1", "1 ", "1.", ".5", "1.2.3", "0x10", "1_000", "1,5", "--1", "NaN",
        "inf", "١",
    ] {
        assert!(
            matches!(parse_amount(text), Err(AmountError::NotADecimal(_))),
            "{text:?}: {:?}",
            parse_amount(text)
        );
    }
    // The same rules hold for a leg read from JSON.
    for (amount, expected) in [
        (places_29.as_str(), "29 decimal places"),
        ("1e3", "exponent form"),
        ("1.", "is not a decimal"),
    ] {
        let json = with_leg(&format!(
            r#"{{"account":1,"side":"Debit","amount":"{amount}","currency":"CNY"}}"#
        ));
        let err = txn(&json).expect_err(&json);
        assert!(err.contains(expected), "{amount}: {err}");
    }
    // A number is not a decimal string (a float would already be rounded).
    let json = with_leg(r#"{"account":1,"side":"Debit","amount":5.1,"currency":"CNY"}"#);
    assert!(txn(&json).is_err_and(|e| e.contains("invalid type")));
    assert_eq!(Decimal::from_str("5.00").ok(), parse_amount("5.00").ok());
}

#[test]
fn ids_are_numbers_or_strings_of_digits() {
    let leg_account = |account: &str| {
        txn(&with_leg(&format!(
            r#"{{"account":{account},"side":"Debit","amount":"5.00","currency":"CNY"}}"#
        )))
        .map(|t| t.legs[0].account)
    };
    assert_eq!(leg_account("12"), Ok(AccountId(12)));
    assert_eq!(leg_account(r#""12""#), Ok(AccountId(12)));
    assert_eq!(
        leg_account(r#""18446744073709551615""#),
        Ok(AccountId(u64::MAX))
    );
    for bad in [
        r#""+12""#,
        r#""-1""#,
        r#""""#,
        r#"" 12""#,
        r#""1.0""#,
        "-1",
        "1.5",
        r#""18446744073709551616""#,
    ] {
        assert!(leg_account(bad).is_err(), "{bad}");
    }
    // A number beyond 2^64 reaches a JSON reader as a rounded float: the
    // error must not print the rounded value as if it were the input.
    let err = leg_account("18446744073709551616").expect_err("beyond 2^64");
    assert!(!err.contains("1.8446744073709552e19"), "{err}");
    assert!(err.contains("below 2^64"), "{err}");

    let id = |id: &str| {
        txn(&format!(
            r#"{{"id":{id},"code":2,"legs":[{LEG_A},{LEG_B}]}}"#
        ))
        .map(|t| t.id)
    };
    assert_eq!(
        id(r#""340282366920938463463374607431768211455""#),
        Ok(TxnId(u128::MAX))
    );
    assert!(id(r#""340282366920938463463374607431768211456""#).is_err());
    assert!(id(r#""+5""#).is_err());
    let pending =
        txn(r#"{"id":2,"code":2,"kind":{"VoidPending":{"pending_id":"99"}}}"#).map(|t| t.kind);
    assert_eq!(
        pending,
        Ok(TxnKind::VoidPending {
            pending_id: TxnId(99)
        })
    );
}

#[test]
fn ids_above_2_pow_64_are_written_as_strings_and_read_back() {
    let big = TxnId(u128::from(u64::MAX) + 1);
    let text = serde_json::to_string(&big).expect("writes");
    assert_eq!(text, r#""18446744073709551616""#);
    assert_eq!(serde_json::from_str::<TxnId>(&text).ok(), Some(big));
    assert_eq!(serde_json::to_string(&TxnId(5)).ok().as_deref(), Some("5"));
    // Through serde_json::Value too (which holds no integer above 2^64).
    let outcome = Outcome {
        id: TxnId(u128::MAX),
        timestamp: None,
        result: Ok(()),
        duplicate: false,
    };
    let value = serde_json::to_value(&outcome).expect("an outcome becomes a JSON value");
    assert_eq!(value["id"], "340282366920938463463374607431768211455");
    assert_eq!(serde_json::from_value::<Outcome>(value).ok(), Some(outcome));
}

#[test]
fn errors_repeat_only_a_bounded_piece_of_the_input() {
    let huge = "9".repeat(10 << 20);
    let long_field = "x".repeat(10 << 20);
    let cases = [
        with_leg(&format!(
            r#"{{"account":1,"side":"Debit","amount":"{huge}","currency":"CNY"}}"#
        )),
        with_leg(&format!(
            r#"{{"account":1,"side":"Debit","amount":"1{long_field}","currency":"CNY"}}"#
        )),
        with_leg(&format!(
            r#"{{"account":"{long_field}","side":"Debit","amount":"1","currency":"CNY"}}"#
        )),
        with_leg(&format!(
            r#"{{"account":1,"side":"Debit","amount":"1","currency":"{long_field}"}}"#
        )),
        format!(r#"{{"id":"{huge}","code":2,"legs":[{LEG_A},{LEG_B}]}}"#),
    ];
    for json in cases {
        let err = txn(&json).expect_err("refused");
        assert!(err.len() < 400, "{} bytes: {}", err.len(), &err[..400]);
    }
    assert!(echo(&huge).len() < ECHO_MAX + 40);
}
