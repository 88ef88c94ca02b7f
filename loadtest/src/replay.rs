//! `replay`: feed JSON-lines operations to an engine and print one JSON line
//! per operation.
//!
//! Input, one object per line (blank lines are skipped):
//! ```text
//! {"op":"open_account","id":1,"currency":"CNY","kind":"customer"}   kind: customer (default) | internal
//! {"op":"transfer","id":"123","from":1,"to":2,"amount":"10.00","currency":"CNY","code":1}   code defaults to 1
//! {"op":"submit","txn":{"id":9,"code":2,"kind":{"Pending":{"timeout_ms":60000}},"legs":[{"account":1,"side":"Debit","amount":"5.00","currency":"CNY"},{"account":2,"side":"Credit","amount":"5.00","currency":"CNY"}]}}
//! {"op":"balance","account":1}
//! ```
//! `submit` takes any transaction in the engine's own JSON form (`kind`:
//! `"Posted"` (default), `{"Pending":{"timeout_ms":…}}`,
//! `{"PostPending":{"pending_id":…}}`, `{"VoidPending":{"pending_id":…}}`;
//! a leg's `bucket` defaults to `"Available"`, `expected_version` to none;
//! `linked` to false). Its ids are JSON numbers up to 2^64.
//! Ids and account numbers may be JSON numbers or strings of digits (use
//! strings for transaction ids above 2^64); amounts are decimal strings (or
//! JSON numbers).
//!
//! Output, one line per input line, in input order:
//! ```text
//! {"line":1,"op":"open_account","id":1,"result":{"Ok":null}}
//! {"line":2,"op":"transfer","outcome":{"id":123,"timestamp":…,"result":{"Ok":null},"duplicate":false}}
//! {"line":3,"op":"balance","account":1,"view":{…AccountView…}}      view is null for an unknown account
//! {"line":4,"error":"…"}                                             a malformed line
//! ```
//! `outcome`, `result` and `view` are the engine's own `Outcome`,
//! `Result<(), AccountError>` and `AccountView`, serialized as they are.
//! Consecutive transfers are submitted together (up to the engine's limit,
//! never two with the same id in one call), which gives the same outcomes as
//! one call each.
//!
//! A malformed line prints an error line and replay goes on; with
//! `--stop-on-error` it stops there with exit code 2.

use crate::run::StoreKind;
use crate::verify::open_existing;
use anyhow::{anyhow, bail, Context, Result};
use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fmt;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use tally_engine::{
    AccountId, Config, Currency, Engine, NewAccount, Transaction, TxnCode, TxnId,
    SUBMIT_TRANSACTIONS_MAX,
};

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// JSON-lines file of operations ("-" reads stdin).
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long, value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,
    /// The sled store directory (required with --store sled; an existing
    /// store is opened and appended to).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Shard count [default: the store's own, or one per core for a new store].
    #[arg(long)]
    pub shards: Option<u16>,
    /// Stop at the first malformed line (exit code 2).
    #[arg(long)]
    pub stop_on_error: bool,
}

/// One input line.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    OpenAccount(OpenAccountOp),
    Transfer(TransferOp),
    Submit(SubmitOp),
    Balance(BalanceOp),
}

/// Any transaction, in the engine's own JSON form (`Transaction`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitOp {
    txn: Transaction,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAccountOp {
    #[serde(deserialize_with = "flexible_u64")]
    id: u64,
    #[serde(deserialize_with = "currency")]
    currency: Currency,
    #[serde(default)]
    kind: Kind,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    #[default]
    Customer,
    Internal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferOp {
    #[serde(deserialize_with = "flexible_u128")]
    id: u128,
    #[serde(deserialize_with = "flexible_u64")]
    from: u64,
    #[serde(deserialize_with = "flexible_u64")]
    to: u64,
    #[serde(deserialize_with = "amount")]
    amount: Decimal,
    #[serde(deserialize_with = "currency")]
    currency: Currency,
    #[serde(default = "default_code")]
    code: u32,
}

fn default_code() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BalanceOp {
    #[serde(deserialize_with = "flexible_u64")]
    account: u64,
}

pub fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let input: Box<dyn BufRead> = if args.input.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("cannot open {}", args.input.display()))?;
        Box::new(BufReader::new(file))
    };
    let engine = match (args.store, &args.data_dir) {
        (StoreKind::Memory, Some(_)) => bail!("--data-dir only applies to --store sled"),
        (StoreKind::Memory, None) => {
            let shards = args.shards.unwrap_or_else(tally_engine::default_shards);
            Engine::open(Config::memory().with_shards(shards))
                .map_err(|e| anyhow!("cannot open the engine: {e}"))?
        }
        (StoreKind::Sled, None) => bail!("--store sled needs --data-dir"),
        (StoreKind::Sled, Some(dir)) => open_existing(|| Config::sled(dir), args.shards)?.0,
    };
    let stdout = std::io::stdout();
    let mut out = Replayer {
        engine: &engine,
        out: BufWriter::new(stdout.lock()),
        pending: Vec::new(),
        pending_ids: HashSet::new(),
    };
    let result = out.feed(input, args.stop_on_error);
    let flushed = out
        .flush_pending()
        .and_then(|()| out.out.flush().context("cannot write to stdout"));
    let shutdown = engine
        .shutdown_blocking()
        .map_err(|e| anyhow!("shutdown: {e}"));
    drop(engine);
    result?;
    flushed?;
    shutdown?;
    Ok(ExitCode::SUCCESS)
}

struct Replayer<'a, W: Write> {
    engine: &'a Engine,
    out: W,
    /// Consecutive transfers not yet submitted, with their line numbers.
    pending: Vec<(usize, &'static str, Transaction)>,
    pending_ids: HashSet<TxnId>,
}

impl<W: Write> Replayer<'_, W> {
    fn feed(&mut self, input: impl BufRead, stop_on_error: bool) -> Result<()> {
        for (index, line) in input.lines().enumerate() {
            let number = index + 1;
            let line = line.with_context(|| format!("cannot read input line {number}"))?;
            if line.trim().is_empty() {
                continue;
            }
            let op = serde_json::from_str::<Value>(&line)
                .map_err(|e| e.to_string())
                .and_then(|v| parse_op(v).map_err(|e| e.to_string()));
            match op {
                Ok(Op::Transfer(t)) => {
                    let txn = Transaction::transfer(
                        TxnId(t.id),
                        TxnCode(t.code),
                        AccountId(t.from),
                        AccountId(t.to),
                        t.amount,
                        t.currency,
                    );
                    self.queue(number, "transfer", txn)?;
                }
                Ok(Op::Submit(s)) => self.queue(number, "submit", s.txn)?,
                Ok(Op::OpenAccount(a)) => {
                    self.flush_pending()?;
                    let new = match a.kind {
                        Kind::Customer => NewAccount::customer(AccountId(a.id), a.currency),
                        Kind::Internal => NewAccount::internal(AccountId(a.id), a.currency),
                    };
                    let mut results = self
                        .engine
                        .open_accounts_blocking(vec![new])
                        .map_err(|e| anyhow!("line {number}: open_account: {e}"))?;
                    let result = results
                        .pop()
                        .ok_or_else(|| anyhow!("line {number}: the engine gave no answer"))?;
                    self.emit(&json!({
                        "line": number, "op": "open_account", "id": a.id, "result": result,
                    }))?;
                }
                Ok(Op::Balance(b)) => {
                    self.flush_pending()?;
                    let view = self
                        .engine
                        .account_blocking(AccountId(b.account))
                        .map_err(|e| anyhow!("line {number}: balance: {e}"))?;
                    self.emit(&json!({
                        "line": number, "op": "balance", "account": b.account, "view": view,
                    }))?;
                }
                Err(reason) => {
                    self.flush_pending()?;
                    self.emit(&json!({ "line": number, "error": reason }))?;
                    if stop_on_error {
                        bail!("line {number}: {reason}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Queues a transaction for the next call. Consecutive lines share a
    /// call (so `linked` chains work across lines, up to the call limit),
    /// never two of one id.
    fn queue(&mut self, number: usize, op: &'static str, txn: Transaction) -> Result<()> {
        if self.pending.len() >= SUBMIT_TRANSACTIONS_MAX || self.pending_ids.contains(&txn.id) {
            self.flush_pending()?;
        }
        self.pending_ids.insert(txn.id);
        self.pending.push((number, op, txn));
        Ok(())
    }

    /// Submits the queued transactions as one call and prints their outcomes.
    fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::with_capacity(self.pending.len());
        let mut txns = Vec::with_capacity(self.pending.len());
        for (line, op, txn) in self.pending.drain(..) {
            lines.push((line, op));
            txns.push(txn);
        }
        self.pending_ids.clear();
        let first = lines.first().map_or(0, |l| l.0);
        let outcomes = self
            .engine
            .submit_blocking(txns)
            .map_err(|e| anyhow!("line {first}: submit: {e}"))?;
        if outcomes.len() != lines.len() {
            bail!(
                "line {first}: the engine answered {} of {} transfers",
                outcomes.len(),
                lines.len()
            );
        }
        for ((line, op), outcome) in lines.into_iter().zip(outcomes) {
            self.emit(&json!({ "line": line, "op": op, "outcome": outcome }))?;
        }
        Ok(())
    }

    fn emit(&mut self, value: &Value) -> Result<()> {
        serde_json::to_writer(&mut self.out, value).context("cannot write to stdout")?;
        self.out
            .write_all(b"\n")
            .context("cannot write to stdout")?;
        Ok(())
    }
}

/// An operation from a parsed line, with a reason a person can act on.
fn parse_op(value: Value) -> std::result::Result<Op, String> {
    let Some(object) = value.as_object() else {
        return Err("expected a JSON object".into());
    };
    match object.get("op") {
        None => return Err("missing field `op`".into()),
        Some(Value::String(_)) => {}
        Some(_) => return Err("field `op` must be a string".into()),
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

struct FlexibleInt<T>(std::marker::PhantomData<T>);

impl<T> Visitor<'_> for FlexibleInt<T>
where
    T: TryFrom<u64> + TryFrom<u128> + FromStr,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer or a string of digits")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        let v = u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))?;
        self.visit_u64(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Err(E::custom(format!(
            "{v} is not an integer (write large ids as strings)"
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::custom(format!("{v:?} is not a string of digits")));
        }
        v.parse()
            .map_err(|_| E::custom(format!("{v} is out of range")))
    }
}

fn flexible_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(FlexibleInt::<u64>(std::marker::PhantomData))
}

fn flexible_u128<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
    d.deserialize_any(FlexibleInt::<u128>(std::marker::PhantomData))
}

fn currency<'de, D: Deserializer<'de>>(d: D) -> Result<Currency, D::Error> {
    let text = String::deserialize(d)?;
    Currency::parse(&text).ok_or_else(|| {
        de::Error::custom(format!(
            "{text:?} is not a currency (three upper-case letters)"
        ))
    })
}

fn amount<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let text = match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        other => {
            return Err(de::Error::custom(format!(
                "amount must be a decimal string, got {other}"
            )))
        }
    };
    Decimal::from_str(text.trim())
        .map_err(|e| de::Error::custom(format!("amount {text:?} is not a decimal: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(line: &str) -> std::result::Result<Op, String> {
        parse_op(serde_json::from_str(line).map_err(|e| e.to_string())?)
    }

    #[test]
    fn parses_every_op() {
        let Ok(Op::OpenAccount(a)) =
            parse(r#"{"op":"open_account","id":1,"currency":"CNY","kind":"internal"}"#)
        else {
            panic!("open_account");
        };
        assert_eq!(a.id, 1);
        assert!(matches!(a.kind, Kind::Internal));
        let Ok(Op::OpenAccount(a)) = parse(r#"{"op":"open_account","id":"7","currency":"USD"}"#)
        else {
            panic!("open_account default kind");
        };
        assert!(matches!(a.kind, Kind::Customer));
        assert_eq!(a.currency, Currency::USD);
        let Ok(Op::Transfer(t)) = parse(
            r#"{"op":"transfer","id":"340282366920938463463374607431768211455","from":1,"to":"2","amount":"10.50","currency":"CNY","code":9}"#,
        ) else {
            panic!("transfer");
        };
        assert_eq!(t.id, u128::MAX);
        assert_eq!((t.from, t.to, t.code), (1, 2, 9));
        assert_eq!(t.amount, Decimal::new(10_50, 2));
        let Ok(Op::Transfer(t)) =
            parse(r#"{"op":"transfer","id":5,"from":1,"to":2,"amount":3,"currency":"CNY"}"#)
        else {
            panic!("transfer defaults");
        };
        assert_eq!((t.id, t.code), (5, 1));
        assert_eq!(t.amount, Decimal::from(3));
        assert!(matches!(
            parse(r#"{"op":"balance","account":3}"#),
            Ok(Op::Balance(BalanceOp { account: 3 }))
        ));
        let Ok(Op::Submit(s)) = parse(
            r#"{"op":"submit","txn":{"id":9,"code":2,"kind":{"Pending":{"timeout_ms":60000}},"linked":true,"legs":[{"account":1,"side":"Debit","amount":"5.00","currency":"CNY","bucket":"Withdrawable"},{"account":2,"side":"Credit","amount":"5.00","currency":"CNY","expected_version":3}]}}"#,
        ) else {
            panic!("submit");
        };
        let mut expected = Transaction::posted(
            TxnId(9),
            TxnCode(2),
            vec![
                tally_engine::Leg::debit(AccountId(1), Decimal::new(5_00, 2), Currency::CNY)
                    .bucket(tally_engine::Bucket::Withdrawable),
                tally_engine::Leg::credit(AccountId(2), Decimal::new(5_00, 2), Currency::CNY)
                    .expect_version(tally_engine::Version(3)),
            ],
        );
        expected.kind = tally_engine::TxnKind::Pending { timeout_ms: 60_000 };
        expected.linked = true;
        assert_eq!(s.txn, expected);
        let Ok(Op::Submit(s)) = parse(
            r#"{"op":"submit","txn":{"id":10,"code":2,"kind":{"VoidPending":{"pending_id":9}}}}"#,
        ) else {
            panic!("submit defaults");
        };
        assert!(s.txn.legs.is_empty() && !s.txn.linked);
        assert!(parse(r#"{"op":"submit","txn":{"id":1,"code":2,"legs":[{"account":1,"side":"Debit","amount":"1","currency":"cny"}]}}"#)
            .is_err_and(|e| e.contains("currency code")));
    }

    #[test]
    fn explains_bad_lines() {
        let cases = [
            ("[1,2]", "object"),
            ("{}", "missing field `op`"),
            (r#"{"op":7}"#, "must be a string"),
            (r#"{"op":"frobnicate"}"#, "unknown variant"),
            (r#"{"op":"balance"}"#, "account"),
            (r#"{"op":"balance","account":-1}"#, "negative"),
            (r#"{"op":"balance","account":1.5}"#, "not an integer"),
            (r#"{"op":"balance","account":"x1"}"#, "digits"),
            (
                r#"{"op":"balance","account":1,"extra":true}"#,
                "unknown field",
            ),
            (
                r#"{"op":"open_account","id":1,"currency":"cny"}"#,
                "not a currency",
            ),
            (
                r#"{"op":"open_account","id":1,"currency":"CNY","kind":"alien"}"#,
                "unknown variant",
            ),
            (
                r#"{"op":"transfer","id":1,"from":1,"to":2,"amount":"ten","currency":"CNY"}"#,
                "not a decimal",
            ),
            (
                r#"{"op":"transfer","id":1,"from":1,"amount":"1","currency":"CNY"}"#,
                "missing field `to`",
            ),
        ];
        for (line, expected) in cases {
            match parse(line) {
                Ok(op) => panic!("{line} parsed as {op:?}"),
                Err(e) => assert!(e.contains(expected), "{line}: {e}"),
            }
        }
    }
}
