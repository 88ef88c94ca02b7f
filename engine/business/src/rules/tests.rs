//! Rule-file validation: the shipped file loads, and every kind of mistake
//! is refused with the line it is on.

#![allow(clippy::inconsistent_digit_grouping, clippy::type_complexity)]

use super::*;

#[test]
fn the_default_file_loads_and_covers_the_catalogue() {
    let rules = RuleSet::default_rules().unwrap();
    for name in [
        "top_up",
        "withdraw",
        "card_refund",
        "red_packet",
        "transfer",
        "pay",
        "refund",
        "hold",
        "settle",
        "payout",
        "payout_done",
        "freeze",
        "unfreeze",
    ] {
        assert!(rules.txn(name).is_some(), "{name}");
    }
    assert_eq!(rules.currency, Currency::CNY);
    let pay = rules.txn("pay").unwrap();
    assert_eq!(pay.legs[1].amount.to_string(), "amount - fee");
    assert_eq!(pay.legs[2].timing, Timing::Daily);
    assert_eq!(
        rules.txn_by_code(TxnCode(3001)).map(|t| t.name.as_str()),
        Some("pay")
    );
    let internal = rules.internal_accounts();
    assert_eq!(
        internal.get(&Internal::Platform(PlatformAccount::FeeIncome)),
        Some(&true)
    );
    assert_eq!(
        internal.get(&Internal::Platform(PlatformAccount::MarketingPool)),
        Some(&false)
    );
    assert_eq!(internal.len(), 4 + 2 * 4);
}

const HEAD: &str = r#"[settings]
currency = "CNY"
reversal_code = 9001
summary_code = 9002
summary_slots = 2
"#;

/// A file of HEAD and one transaction (`txn` starts on line 6).
fn with_txn(txn: &str) -> Result<RuleSet, RuleError> {
    RuleSet::parse(&format!("{HEAD}{txn}"))
}

const GOOD: &str = r#"[[txn]]
name = "pay"
code = 1
fields = { payer = "member", merchant = "member", amount = "amount", fee = "amount" }
legs = [
  { account = "payer.balance", side = "debit", amount = "amount" },
  { account = "merchant.balance", side = "credit", amount = "amount - fee" },
  { account = "platform.fee_income", side = "credit", amount = "fee" },
]
"#;

#[test]
fn a_good_file_loads() {
    let rules = with_txn(GOOD).unwrap();
    assert_eq!(rules.txn("pay").unwrap().line, 6);
    assert_eq!(rules.txn("pay").unwrap().legs[2].line, 13);
}

#[test]
fn mistakes_are_refused_with_their_line() {
    let cases: Vec<(String, fn(&RuleError) -> bool)> = vec![
        // An account role naming no field.
        (
            GOOD.replace("\"payer.balance\"", "\"buyer.balance\""),
            |e| matches!(e, RuleError::UnknownRole { line: 11, role, .. } if role == "buyer.balance"),
        ),
        // An account type that does not exist.
        (GOOD.replace("merchant.balance", "merchant.savings"), |e| {
            matches!(e, RuleError::UnknownRole { line: 12, .. })
        }),
        // A platform account that does not exist.
        (GOOD.replace("platform.fee_income", "platform.bonus"), |e| {
            matches!(e, RuleError::UnknownRole { line: 13, .. })
        }),
        // An amount naming an undeclared field.
        (
            GOOD.replace("amount - fee", "amount - tip"),
            |e| matches!(e, RuleError::UnknownField { line: 12, field, .. } if field == "tip"),
        ),
        // An account taken from an amount field.
        (GOOD.replace("payer.balance", "fee.balance"), |e| {
            matches!(
                e,
                RuleError::FieldType {
                    line: 11,
                    found: FieldType::Amount,
                    ..
                }
            )
        }),
        // Legs that cannot balance: the fee is credited twice.
        (GOOD.replace("amount - fee", "amount"), |e| {
            matches!(e, RuleError::Unbalanced { line: 6, debits, credits, .. }
                if debits == "amount" && credits == "amount + fee")
        }),
        // A field of an unknown type.
        (GOOD.replace("fee = \"amount\"", "fee = \"money\""), |e| {
            matches!(e, RuleError::UnknownFieldType { line: 9, .. })
        }),
        // Daily summary on a member account.
        (
            GOOD.replace(
                "side = \"debit\", amount = \"amount\"",
                "side = \"debit\", amount = \"amount\", timing = \"daily\"",
            ),
            |e| matches!(e, RuleError::Invalid { line: 11, .. }),
        ),
        // A misspelt key.
        (
            GOOD.replace(
                "side = \"credit\", amount = \"fee\"",
                "sides = \"credit\", amount = \"fee\"",
            ),
            |e| matches!(e, RuleError::Syntax { line: 13, .. }),
        ),
        // A bad bucket, side and amount expression.
        (
            GOOD.replace("amount = \"fee\"", "amount = \"fee\", bucket = \"pocket\""),
            |e| matches!(e, RuleError::Invalid { line: 13, .. }),
        ),
        (GOOD.replace("side = \"debit\"", "side = \"left\""), |e| {
            matches!(e, RuleError::Invalid { line: 11, .. })
        }),
        (GOOD.replace("amount - fee", "amount * fee"), |e| {
            matches!(e, RuleError::Invalid { line: 12, .. })
        }),
        // A limit on a field that is not a member.
        (
            GOOD.replace("code = 1\n", "code = 1\nlimit = \"fee\"\n"),
            |e| matches!(e, RuleError::FieldType { line: 9, .. }),
        ),
        // Pending without a timeout.
        (
            GOOD.replace("code = 1\n", "code = 1\nkind = \"pending\"\n"),
            |e| matches!(e, RuleError::Invalid { line: 6, .. }),
        ),
        // A refund that names no transaction.
        (
            GOOD.replace("code = 1\n", "code = 1\nrefund = \"undo\"\n"),
            |e| matches!(e, RuleError::Invalid { line: 9, .. }),
        ),
        // No legs.
        ("[[txn]]\nname = \"x\"\ncode = 5\n".into(), |e| {
            matches!(e, RuleError::Invalid { line: 6, .. })
        }),
        // Broken TOML.
        ("[[txn]\n".into(), |e| {
            matches!(e, RuleError::Syntax { line: 6, .. })
        }),
        // The same code twice (9001 is the reversal code).
        (GOOD.replace("code = 1\n", "code = 9001\n"), |e| {
            matches!(e, RuleError::Duplicate { line: 6, .. })
        }),
    ];
    for (text, expected) in cases {
        let err = with_txn(&text).expect_err(&text);
        assert!(expected(&err), "{text}\n→ {err:?}");
        assert!(err.to_string().starts_with("line "), "{err}");
    }
}

#[test]
fn bad_settings_levels_and_channels() {
    let cases = [
        (HEAD.replace("\"CNY\"", "\"yuan\""), 2),
        (HEAD.replace("summary_slots = 2", "summary_slots = 0"), 5),
        (format!("{HEAD}[[level]]\nname = \"a\"\nper_txn_max = \"10\"\ndaily_max = \"5\"\n"), 6),
        (format!("{HEAD}[[channel]]\nname = \"a\"\nnumber = 1\n[[channel]]\nname = \"a\"\nnumber = 2\n"), 9),
        (format!("{HEAD}[[channel]]\nname = \"a\"\nnumber = 0\n"), 6),
    ];
    for (text, line) in cases {
        let err = RuleSet::parse(&text).expect_err(&text);
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("line {line}:")),
            "{text}\n→ {shown}"
        );
    }
}

#[test]
fn amounts_and_legs() {
    let rules = with_txn(GOOD).unwrap();
    let pay = rules.txn("pay").unwrap();
    let amounts = |a: i64, f: i64| {
        BTreeMap::from([
            ("amount".to_string(), Decimal::new(a, 2)),
            ("fee".to_string(), Decimal::new(f, 2)),
        ])
    };
    let mut next = 0u64;
    let legs = pay
        .build_legs(&amounts(100_00, 60), Currency::CNY, |_| {
            next += 1;
            AccountId(next)
        })
        .unwrap();
    let got: Vec<(u64, Side, Decimal)> = legs
        .iter()
        .map(|l| (l.account.0, l.side, l.amount))
        .collect();
    assert_eq!(
        got,
        [
            (1, Side::Debit, Decimal::new(100_00, 2)),
            (2, Side::Credit, Decimal::new(99_40, 2)),
            (3, Side::Credit, Decimal::new(60, 2)),
        ]
    );
    // No fee: no fee leg.
    let legs = pay
        .build_legs(&amounts(5_00, 0), Currency::CNY, |_| AccountId(1))
        .unwrap();
    assert_eq!(legs.len(), 2);
    // A fee above the amount would credit a negative amount.
    assert_eq!(
        pay.build_legs(&amounts(1_00, 2_00), Currency::CNY, |_| AccountId(1)),
        Err(BuildError::Negative {
            leg: 1,
            value: Decimal::new(-1_00, 2)
        })
    );
    let missing = BTreeMap::from([("amount".to_string(), Decimal::ONE)]);
    assert_eq!(
        pay.build_legs(&missing, Currency::CNY, |_| AccountId(1)),
        Err(BuildError::MissingAmount("fee".into()))
    );
}
