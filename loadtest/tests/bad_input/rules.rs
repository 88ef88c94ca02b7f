//! The posting-rules surface: rule files `RuleSet::parse` must refuse with
//! the exact `RuleError` (variant, line, wording), and a ledger that must
//! not open on rules its engine cannot serve. A refused file changes
//! nothing: parsing is pure, and a ledger refused at open leaves its store
//! directory as it was (empty).

use crate::Failures;
use tally_business::rules::TXN_RULES_MAX;
use tally_business::{Ledger, LedgerError, RuleError, RuleSet};
use tally_engine::{Config, Currency};

const HEAD: &str = r#"[settings]
currency = "CNY"
reversal_code = 9001
summary_code = 9002
summary_slots = 2
"#;

/// A good transaction, starting on line 6 after `HEAD`.
const TXN: &str = r#"[[txn]]
name = "pay"
code = 1
fields = { payer = "member", merchant = "member", amount = "amount" }
legs = [
  { account = "payer.balance", side = "debit", amount = "amount" },
  { account = "merchant.balance", side = "credit", amount = "amount" },
]
"#;

const RED_PACKET: &str = r#"[red_packet]
send_code = 6001
claim_code = 6002
return_code = 6003
max_packets = 200
expiry_ms = 1000
"#;

pub struct Case {
    name: String,
    text: String,
    expected: RuleError,
}

fn case(name: &str, text: String, expected: RuleError) -> Case {
    Case {
        name: name.to_string(),
        text,
        expected,
    }
}

fn syntax(line: usize, message: &str) -> RuleError {
    RuleError::Syntax {
        line,
        message: message.into(),
    }
}

fn invalid(line: usize, txn: &str, message: &str) -> RuleError {
    RuleError::Invalid {
        line,
        txn: txn.into(),
        message: message.into(),
    }
}

fn duplicate(line: usize, what: &str) -> RuleError {
    RuleError::Duplicate {
        line,
        what: what.into(),
    }
}

/// `HEAD` then `TXN` with `from` replaced by `to`.
fn txn_with(from: &str, to: &str) -> String {
    assert!(TXN.contains(from), "{from}");
    format!("{HEAD}{}", TXN.replacen(from, to, 1))
}

fn head_with(from: &str, to: &str) -> String {
    assert!(HEAD.contains(from), "{from}");
    HEAD.replacen(from, to, 1)
}

pub fn cases() -> Vec<Case> {
    let many: String = (0..=TXN_RULES_MAX)
        .map(|i| {
            TXN.replace("\"pay\"", &format!("\"t{i}\""))
                .replace("code = 1", &format!("code = {}", 10 + i))
        })
        .collect();
    let legs_65: String = (0..65)
        .map(|_| "  { account = \"payer.balance\", side = \"debit\", amount = \"amount\" },\n")
        .collect();
    vec![
        case("an empty file", String::new(), syntax(1, "missing field `settings`")),
        case("binary garbage", "\u{0}\u{1}\u{2}".into(), syntax(1, "key with no value, expected `=`")),
        case(
            "no currency",
            head_with("currency = \"CNY\"\n", ""),
            syntax(1, "missing field `currency`"),
        ),
        case(
            "a lower-case currency",
            head_with("\"CNY\"", "\"cny\""),
            invalid(2, "settings", "currency \"cny\" is not a three-letter code"),
        ),
        case(
            "a currency as a number",
            head_with("\"CNY\"", "156"),
            syntax(2, "invalid type: integer `156`, expected a string"),
        ),
        case(
            "65 summary slots",
            head_with("summary_slots = 2", "summary_slots = 65"),
            invalid(5, "settings", "summary_slots must be 1..=64, got 65"),
        ),
        case(
            "256 summary slots (beyond u8)",
            head_with("summary_slots = 2", "summary_slots = 256"),
            syntax(5, "invalid value: integer `256`, expected u8"),
        ),
        case(
            "a negative reversal code",
            head_with("reversal_code = 9001", "reversal_code = -1"),
            syntax(3, "invalid value: integer `-1`, expected u32"),
        ),
        case(
            "a reversal code above u32",
            head_with("reversal_code = 9001", "reversal_code = 4294967296"),
            syntax(3, "invalid value: integer `4294967296`, expected u32"),
        ),
        case(
            "a key twice",
            head_with("summary_code = 9002", "summary_code = 9002\nsummary_code = 9003"),
            syntax(5, "duplicate key"),
        ),
        case(
            "an unknown section",
            format!("{HEAD}[bonus]\nrate = 1\n"),
            syntax(6, "unknown field `bonus`, expected one of `settings`, `level`, `channel`, `txn`, `red_packet`, `person`"),
        ),
        case(
            "an unknown settings key",
            head_with("summary_slots = 2", "summary_slots = 2\ntimezone = 8"),
            syntax(6, "unknown field `timezone`, expected one of `currency`, `reversal_code`, `summary_code`, `held_payout_code`, `summary_slots`"),
        ),
        case(
            "a limit that is not a decimal",
            format!("{HEAD}[[level]]\nname = \"a\"\nper_txn_max = \"lots\"\ndaily_max = \"5\"\n"),
            syntax(8, "invalid value: string \"lots\", expected a Decimal type representing a fixed-point number"),
        ),
        case(
            "a negative limit",
            format!("{HEAD}[[level]]\nname = \"a\"\nper_txn_max = \"-1\"\ndaily_max = \"5\"\n"),
            invalid(6, "level a", "limits must be positive and per_txn_max <= daily_max"),
        ),
        case(
            "a level twice",
            format!("{HEAD}[[level]]\nname = \"a\"\nper_txn_max = \"1\"\ndaily_max = \"5\"\n[[level]]\nname = \"a\"\nper_txn_max = \"1\"\ndaily_max = \"5\"\n"),
            duplicate(10, "level \"a\""),
        ),
        case(
            "a channel number beyond u16",
            format!("{HEAD}[[channel]]\nname = \"a\"\nnumber = 70000\n"),
            syntax(8, "invalid value: integer `70000`, expected u16"),
        ),
        case(
            "a channel number twice",
            format!("{HEAD}[[channel]]\nname = \"a\"\nnumber = 1\n[[channel]]\nname = \"b\"\nnumber = 1\n"),
            duplicate(9, "channel \"b\" / number 1"),
        ),
        case(
            "a transaction name twice",
            format!("{HEAD}{TXN}{}", TXN.replace("code = 1", "code = 2")),
            duplicate(14, "transaction \"pay\""),
        ),
        case(
            "a transaction code that is the summary code",
            txn_with("code = 1\n", "code = 9002\n"),
            duplicate(6, "transaction code 9002"),
        ),
        case(
            "an unknown kind",
            txn_with("code = 1\n", "code = 1\nkind = \"later\"\n"),
            invalid(6, "pay", "kind \"later\" is not posted or pending"),
        ),
        case(
            "a pending transaction of no time",
            txn_with("code = 1\n", "code = 1\nkind = \"pending\"\ntimeout_ms = 0\n"),
            invalid(6, "pay", "pending needs a positive timeout_ms"),
        ),
        case(
            "a timeout on a posted transaction",
            txn_with("code = 1\n", "code = 1\ntimeout_ms = 5\n"),
            invalid(6, "pay", "timeout_ms applies to pending only"),
        ),
        case(
            "an empty amount expression",
            txn_with(
                "side = \"credit\", amount = \"amount\"",
                "side = \"credit\", amount = \"\"",
            ),
            invalid(12, "pay", "amount \"\" is not like `amount - fee`"),
        ),
        case(
            "an amount expression ending in an operator",
            txn_with(
                "side = \"credit\", amount = \"amount\"",
                "side = \"credit\", amount = \"amount +\"",
            ),
            invalid(12, "pay", "amount \"amount +\" is not like `amount - fee`"),
        ),
        case(
            "an unknown timing",
            txn_with(
                "side = \"credit\", amount = \"amount\"",
                "side = \"credit\", amount = \"amount\", timing = \"weekly\"",
            ),
            invalid(12, "pay", "timing \"weekly\" is not realtime or daily"),
        ),
        case(
            "65 legs",
            txn_with("legs = [\n", &format!("legs = [\n{legs_65}")),
            invalid(6, "pay", "needs 1..=64 legs"),
        ),
        case(
            "a refund fee without a refund",
            txn_with("code = 1\n", "code = 1\nrefund_fee = true\n"),
            invalid(9, "pay", "refund_fee needs a refund"),
        ),
        case(
            "a limit on an undeclared field",
            txn_with("code = 1\n", "code = 1\nlimit = \"boss\"\n"),
            RuleError::UnknownField {
                line: 9,
                txn: "pay".into(),
                field: "boss".into(),
            },
        ),
        case(
            "a leg missing its side",
            txn_with(", side = \"debit\"", ""),
            syntax(11, "missing field `side`"),
        ),
        case(
            "one transaction more than a file holds",
            format!("{HEAD}{many}"),
            invalid(1, "file", "1001 transactions, at most 1000"),
        ),
        case(
            "no packets per red packet",
            format!(
                "{HEAD}{}",
                RED_PACKET.replace("max_packets = 200", "max_packets = 0")
            ),
            invalid(6, "red_packet", "max_packets must be 1..=10000"),
        ),
        case(
            "10,001 packets per red packet",
            format!(
                "{HEAD}{}",
                RED_PACKET.replace("max_packets = 200", "max_packets = 10001")
            ),
            invalid(6, "red_packet", "max_packets must be 1..=10000"),
        ),
        case(
            "red packets that expire at once",
            format!(
                "{HEAD}{}",
                RED_PACKET.replace("expiry_ms = 1000", "expiry_ms = 0")
            ),
            invalid(6, "red_packet", "expiry_ms must be positive"),
        ),
        case(
            "a claim code that is the send code",
            format!(
                "{HEAD}{}",
                RED_PACKET.replace("claim_code = 6002", "claim_code = 6001")
            ),
            duplicate(6, "transaction code 6001"),
        ),
        case(
            "a red packet code that is a transaction's",
            format!(
                "{HEAD}{TXN}{}",
                RED_PACKET.replace("send_code = 6001", "send_code = 1")
            ),
            duplicate(14, "transaction code 1"),
        ),
        case(
            "a person of no members",
            format!("{HEAD}[person]\nmembers_max = 0\n"),
            invalid(6, "person", "members_max must be at least 1"),
        ),
        case(
            "a person's daily limit of zero",
            format!("{HEAD}[person]\nmembers_max = 1\ndaily_max = \"0\"\n"),
            invalid(6, "person", "daily_max must be positive"),
        ),
    ]
}

pub fn run(cases: &[Case], failures: &mut Failures) {
    for c in cases {
        match RuleSet::parse(&c.text) {
            Err(e) if e == c.expected => {}
            other => failures.push(format!(
                "rules / {}: expected {:?}, got {other:?}",
                c.name, c.expected
            )),
        }
    }
}

/// The one case run by `check_open`.
pub const OPEN_CASES: usize = 1;

/// A ledger is not opened on rules in a currency its engine does not
/// have, and its store directory is left empty.
pub fn check_open(failures: &mut Failures) {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            failures.push(format!("rules: temporary directory: {e}"));
            return;
        }
    };
    let text = RuleSet::parse(&head_with("\"CNY\"", "\"GBP\""));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match (text, rt) {
        (Ok(rules), Ok(rt)) => {
            let store = dir.path().join("store");
            let got = rt.block_on(Ledger::open(Config::sled(&store), rules));
            if !matches!(got, Err(LedgerError::CurrencyNotConfigured(c)) if c == Currency(*b"GBP"))
            {
                failures.push(format!(
                    "rules / a currency the engine lacks: got {:?}",
                    got.err()
                ));
            }
            if store.exists() {
                failures.push("rules / a currency the engine lacks: a store was created".into());
            }
        }
        (text, rt) => failures.push(format!(
            "rules / a currency the engine lacks: {:?} {:?}",
            text.err(),
            rt.err()
        )),
    }
}
