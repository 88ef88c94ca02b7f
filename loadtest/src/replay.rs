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
//! `linked` to false).
//! Ids and account numbers, in legs too, may be JSON numbers below 2^64 or
//! strings of digits (use strings for transaction ids above 2^64; outcomes
//! print such ids as strings). Amounts are plain decimal strings, at most 28
//! decimal places, never in exponent form (a transfer's amount may also be a
//! JSON integer).
//!
//! Lines are read strictly: an unknown field (a misspelt `linkd`), a repeated
//! key, an amount that would have to be rounded, or a number that does not
//! fit 64 bits is an error line, never a default or a rounded value. A line
//! that is not UTF-8 is an error line; a byte-order mark before line 1 is
//! skipped. Error messages repeat at most 64 bytes of any piece of the line.
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
//! A linked chain (`linked: true` on every member but the last) is never
//! split between calls, so it commits all or nothing wherever the call limit
//! falls. A chain longer than one call allows (`SUBMIT_TRANSACTIONS_MAX`) is
//! refused whole with `LinkedChainTooLong`; a chain cut by a line that is not
//! a transaction (`open_account`, `balance` or a malformed line) is refused
//! whole with `LinkedChainInterrupted`, its members after that line too (up
//! to its last member). Both print as the members' outcomes, with no
//! timestamp (never sequenced). A chain still open at the end of the input
//! is refused by the engine (`LinkedChainOpen`).
//!
//! A malformed line prints an error line and replay goes on; with
//! `--stop-on-error` it stops there with exit code 2.

use crate::setup::StoreKind;
use crate::verify::open_existing;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tally_engine::{
    AccountError, AccountId, AccountView, Config, Engine, NewAccount, Outcome, Reject, Transaction,
    TxnCode, TxnId, SUBMIT_TRANSACTIONS_MAX,
};
use tally_loadtest::line::{decode_line, Kind, Op};

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
    #[arg(long, value_parser = crate::shards_arg())]
    pub shards: Option<u16>,
    /// Stop at the first malformed line (exit code 2).
    #[arg(long)]
    pub stop_on_error: bool,
    /// Engine time: the system clock, or the simulated one (1 ms per
    /// reading from a start given by --seed): the same input then gives the
    /// same timestamps and state digest, whatever --shards.
    #[arg(long, value_enum, default_value_t = crate::setup::ClockKind::System)]
    pub clock: crate::setup::ClockKind,
    /// Seed of the simulated clock.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The output lines, written with `serde_json::to_writer` (which reports
/// an error instead of panicking, unlike `json!`).
#[derive(Serialize)]
struct OutcomeLine<'a> {
    line: usize,
    op: &'a str,
    outcome: &'a Outcome,
}

#[derive(Serialize)]
struct OpenLine<'a> {
    line: usize,
    op: &'static str,
    id: AccountId,
    result: &'a Result<(), AccountError>,
}

#[derive(Serialize)]
struct BalanceLine<'a> {
    line: usize,
    op: &'static str,
    account: AccountId,
    view: &'a Option<AccountView>,
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    line: usize,
    error: &'a str,
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
            let config = crate::setup::with_clock(Config::memory(), args.clock, args.seed);
            Engine::open(config.with_shards(shards))
                .map_err(|e| anyhow!("cannot open the engine: {e}"))?
        }
        (StoreKind::Sled, None) => bail!("--store sled needs --data-dir"),
        (StoreKind::Sled, Some(dir)) => {
            let config = || crate::setup::with_clock(Config::sled(dir), args.clock, args.seed);
            open_existing(config, args.shards)?.0
        }
    };
    let stdout = std::io::stdout();
    let mut out = Replayer {
        engine: &engine,
        out: BufWriter::new(stdout.lock()),
        pending: Vec::new(),
        pending_ids: HashSet::new(),
        refusing: None,
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
    /// Set while the rest of a refused chain is read: why it was refused.
    refusing: Option<Reject>,
}

/// The UTF-8 byte-order mark some editors put at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

impl<W: Write> Replayer<'_, W> {
    fn feed(&mut self, mut input: impl BufRead, stop_on_error: bool) -> Result<()> {
        let mut buf = Vec::new();
        let mut number = 0;
        loop {
            buf.clear();
            let read = input
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("cannot read input line {}", number + 1))?;
            if read == 0 {
                return Ok(());
            }
            number += 1;
            let mut bytes = buf.strip_suffix(b"\n").unwrap_or(&buf);
            bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            if number == 1 {
                bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
            }
            let op = match std::str::from_utf8(bytes) {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => decode_line(line),
                Err(e) => Err(format!(
                    "the line is not valid UTF-8 (bad byte at offset {})",
                    e.valid_up_to()
                )),
            };
            match op {
                Ok(Op::Transfer(t)) => {
                    let txn = Transaction::transfer(
                        t.id,
                        TxnCode(t.code),
                        t.from,
                        t.to,
                        t.amount,
                        t.currency,
                    );
                    self.queue(number, "transfer", txn)?;
                }
                Ok(Op::Submit(s)) => self.queue(number, "submit", s.txn)?,
                Ok(Op::OpenAccount(a)) => {
                    self.before_other_line()?;
                    let new = match a.kind {
                        Kind::Customer => NewAccount::customer(a.id, a.currency),
                        Kind::Internal => NewAccount::internal(a.id, a.currency),
                    };
                    let mut results = self
                        .engine
                        .open_accounts_blocking(vec![new])
                        .map_err(|e| anyhow!("line {number}: open_account: {e}"))?;
                    let result = results
                        .pop()
                        .ok_or_else(|| anyhow!("line {number}: the engine gave no answer"))?;
                    self.emit(&OpenLine {
                        line: number,
                        op: "open_account",
                        id: a.id,
                        result: &result,
                    })?;
                }
                Ok(Op::Balance(b)) => {
                    self.before_other_line()?;
                    let view = self
                        .engine
                        .account_blocking(b.account)
                        .map_err(|e| anyhow!("line {number}: balance: {e}"))?;
                    self.emit(&BalanceLine {
                        line: number,
                        op: "balance",
                        account: b.account,
                        view: &view,
                    })?;
                }
                Err(reason) => {
                    self.before_other_line()?;
                    self.emit(&ErrorLine {
                        line: number,
                        error: &reason,
                    })?;
                    if stop_on_error {
                        bail!("line {number}: {reason}");
                    }
                }
            }
        }
    }

    /// Queues a transaction for the next call. Consecutive lines share a
    /// call, never two of one id, and a linked chain is never split
    /// between calls: when a call is full or an id repeats, only the whole
    /// groups before an unfinished chain go out; a chain that alone would
    /// pass the call limit is refused whole (`LinkedChainTooLong`), its
    /// later members too.
    fn queue(&mut self, number: usize, op: &'static str, txn: Transaction) -> Result<()> {
        if let Some(reject) = self.refusing.clone() {
            // A member of a chain already refused, up to its last one.
            if !txn.linked {
                self.refusing = None;
            }
            return self.refuse(number, op, &txn, reject);
        }
        let full = self.pending.len() >= SUBMIT_TRANSACTIONS_MAX;
        if full || self.pending_ids.contains(&txn.id) {
            match self.open_chain_start() {
                Some(0) if full => {
                    let reject = Reject::LinkedChainTooLong {
                        max: SUBMIT_TRANSACTIONS_MAX,
                    };
                    self.refuse_pending(&reject)?;
                    if txn.linked {
                        self.refusing = Some(reject.clone());
                    }
                    return self.refuse(number, op, &txn, reject);
                }
                // An id twice in one chain: the engine refuses the chain.
                Some(0) => {}
                Some(start) => self.flush_before(start)?,
                None => self.flush_pending()?,
            }
        }
        self.pending_ids.insert(txn.id);
        self.pending.push((number, op, txn));
        Ok(())
    }

    /// Before a line that is not a transaction: an unfinished chain is cut
    /// there, so all of it is refused (`LinkedChainInterrupted`), its
    /// members after this line too; everything before it is submitted.
    fn before_other_line(&mut self) -> Result<()> {
        if let Some(start) = self.open_chain_start() {
            self.flush_before(start)?;
            let reject = Reject::LinkedChainInterrupted;
            self.refuse_pending(&reject)?;
            self.refusing = Some(reject);
        }
        self.flush_pending()
    }

    /// Where the unfinished chain at the end of the queue starts, if the
    /// last queued transaction is linked.
    fn open_chain_start(&self) -> Option<usize> {
        if !self.pending.last()?.2.linked {
            return None;
        }
        let linked_before = self.pending[..self.pending.len() - 1]
            .iter()
            .rev()
            .take_while(|(_, _, t)| t.linked)
            .count();
        Some(self.pending.len() - 1 - linked_before)
    }

    /// Submits the queued transactions before `at`, keeps the rest queued.
    fn flush_before(&mut self, at: usize) -> Result<()> {
        let rest = self.pending.split_off(at);
        self.flush_pending()?;
        self.pending_ids = rest.iter().map(|(_, _, t)| t.id).collect();
        self.pending = rest;
        Ok(())
    }

    /// Prints every queued transaction as refused with `reject`, unsent.
    fn refuse_pending(&mut self, reject: &Reject) -> Result<()> {
        self.pending_ids.clear();
        for (line, op, txn) in std::mem::take(&mut self.pending) {
            self.refuse(line, op, &txn, reject.clone())?;
        }
        Ok(())
    }

    /// Prints a transaction refused before it reached the engine.
    fn refuse(&mut self, line: usize, op: &str, txn: &Transaction, reject: Reject) -> Result<()> {
        let outcome = Outcome {
            id: txn.id,
            timestamp: None,
            result: Err(reject),
            duplicate: false,
        };
        self.emit(&OutcomeLine {
            line,
            op,
            outcome: &outcome,
        })
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
            self.emit(&OutcomeLine {
                line,
                op,
                outcome: &outcome,
            })?;
        }
        Ok(())
    }

    fn emit(&mut self, value: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut self.out, value).context("cannot write an output line")?;
        self.out
            .write_all(b"\n")
            .context("cannot write to stdout")?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use serde_json::Value;
    use tally_engine::{Currency, ECHO_MAX};
    use tally_loadtest::line::{clip_quotes, integer_beyond_64_bits, BalanceOp};

    fn parse(line: &str) -> std::result::Result<Op, String> {
        decode_line(line)
    }

    #[test]
    fn parses_every_op() {
        let Ok(Op::OpenAccount(a)) =
            parse(r#"{"op":"open_account","id":1,"currency":"CNY","kind":"internal"}"#)
        else {
            panic!("open_account");
        };
        assert_eq!(a.id, AccountId(1));
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
        assert_eq!(t.id, TxnId(u128::MAX));
        assert_eq!((t.from, t.to, t.code), (AccountId(1), AccountId(2), 9));
        assert_eq!(t.amount, Decimal::new(10_50, 2));
        let Ok(Op::Transfer(t)) =
            parse(r#"{"op":"transfer","id":5,"from":1,"to":2,"amount":3,"currency":"CNY"}"#)
        else {
            panic!("transfer defaults");
        };
        assert_eq!((t.id, t.code), (TxnId(5), 1));
        assert_eq!(t.amount, Decimal::from(3));
        assert!(matches!(
            parse(r#"{"op":"balance","account":3}"#),
            Ok(Op::Balance(BalanceOp {
                account: AccountId(3)
            }))
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
            (r#"{"op":"balance","account":1.5}"#, "below 2^64"),
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

    /// The engine's JSON form of a two-leg transaction with `extra` spliced
    /// into the first leg and `top` into the transaction.
    fn submit(top: &str, extra: &str) -> String {
        format!(
            r#"{{"op":"submit","txn":{{"id":1,"code":2{top},"legs":[{{"account":1,"side":"Debit","amount":"1.00","currency":"CNY"{extra}}},{{"account":2,"side":"Credit","amount":"1.00","currency":"CNY"}}]}}}}"#
        )
    }

    #[test]
    fn misspelt_fields_are_refused_not_defaulted() {
        assert!(parse(&submit("", "")).is_ok());
        for line in [
            submit("", r#","buckt":"Frozen""#),
            submit("", r#","expected_verison":3"#),
            submit(r#","knd":{"Pending":{"timeout_ms":5}}"#, ""),
            submit(r#","linkd":true"#, ""),
            r#"{"op":"submit","txn":{"id":1,"code":2,"kind":{"VoidPending":{"pending_id":9,"pendng":1}}}}"#.into(),
            r#"{"op":"submit","txn":{"id":1,"code":2},"extra":1}"#.into(),
            r#"{"op":"transfer","id":1,"from":1,"to":2,"amount":"1","currency":"CNY","cod":3}"#.into(),
        ] {
            let err = parse(&line).expect_err(&line);
            assert!(err.contains("unknown field"), "{line}: {err}");
        }
    }

    #[test]
    fn repeated_keys_are_refused() {
        for line in [
            r#"{"op":"balance","account":1,"account":2}"#.to_string(),
            r#"{"op":"balance","op":"balance","account":1}"#.to_string(),
            r#"{"op":"transfer","id":1,"from":1,"to":2,"amount":"1","amount":"1000","currency":"CNY"}"#.to_string(),
            submit(r#","linked":false,"linked":true"#, ""),
            submit("", r#","side":"Credit""#),
        ] {
            let err = parse(&line).expect_err(&line);
            assert!(err.contains("duplicate field"), "{line}: {err}");
        }
    }

    #[test]
    fn amounts_that_would_be_rounded_are_refused() {
        let transfer = |amount: &str| {
            parse(&format!(
                r#"{{"op":"transfer","id":1,"from":1,"to":2,"amount":{amount},"currency":"CNY"}}"#
            ))
            .map(|op| match op {
                Op::Transfer(t) => t.amount,
                other => panic!("{other:?}"),
            })
        };
        let places_28 = format!("\"0.{}1\"", "0".repeat(27));
        assert_eq!(
            transfer(&places_28),
            Ok(Decimal::from_i128_with_scale(1, 28))
        );
        assert_eq!(transfer("7"), Ok(Decimal::from(7)));
        let places_29 = format!("\"0.{}1\"", "0".repeat(28));
        for (amount, expected) in [
            (places_29.as_str(), "29 decimal places"),
            (r#""1e3""#, "exponent form"),
            ("1e3", "decimal string"),
            ("10.5", "decimal string"),
            (r#"" 1""#, "not a decimal"),
            ("null", "got null"),
        ] {
            let err = transfer(amount).expect_err(amount);
            assert!(err.contains(expected), "{amount}: {err}");
        }
        // Legs of a submitted transaction read amounts the same way.
        let line = submit("", "").replacen(r#""amount":"1.00""#, r#""amount":"1e2""#, 1);
        assert!(parse(&line).is_err_and(|e| e.contains("exponent form")));
    }

    #[test]
    fn ids_in_legs_may_be_strings_of_digits() {
        let line = submit("", "").replace(r#""account":1,"#, r#""account":"1","#);
        let Ok(Op::Submit(s)) = parse(&line) else {
            panic!("{line}");
        };
        assert_eq!(s.txn.legs[0].account, AccountId(1));
        let line = r#"{"op":"submit","txn":{"id":"18446744073709551616","code":2,"kind":{"VoidPending":{"pending_id":"340282366920938463463374607431768211455"}}}}"#;
        let Ok(Op::Submit(s)) = parse(line) else {
            panic!("{line}");
        };
        assert_eq!(s.txn.id, TxnId(1 << 64));
    }

    #[test]
    fn numbers_beyond_64_bits_are_named_exactly() {
        for number in [
            "18446744073709551616",
            "-9223372036854775809",
            "340282366920938463463374607431768211456",
        ] {
            let line = format!(r#"{{"op":"balance","account":{number}}}"#);
            let err = parse(&line).expect_err(&line);
            assert!(err.contains(&format!("number {number} ")), "{err}");
        }
        // Inside a string it is text, not a number.
        let line = r#"{"op":"open_account","id":"18446744073709551616","currency":"CNY"}"#;
        assert!(parse(line).is_err_and(|e| e.contains("out of range")));
        assert_eq!(
            integer_beyond_64_bits(r#"{"a":"x\"99999999999999999999","b":18446744073709551615}"#),
            None
        );
        let long = "9".repeat(500);
        let err = parse(&format!(r#"{{"op":"balance","account":{long}}}"#)).expect_err("long");
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn errors_repeat_at_most_a_bounded_piece_of_the_line() {
        let big = "x".repeat(10 << 20);
        let digits = "9".repeat(10 << 20);
        for line in [
            format!(
                r#"{{"op":"transfer","id":1,"from":1,"to":2,"amount":"{digits}","currency":"CNY"}}"#
            ),
            format!(
                r#"{{"op":"transfer","id":1,"from":1,"to":2,"amount":"1{big}","currency":"CNY"}}"#
            ),
            format!(r#"{{"op":"balance","account":1,"{big}":1}}"#),
            format!(r#"{{"op":"{big}"}}"#),
            format!(r#"{{"op":"balance","account":"{big}"}}"#),
            format!(r#"{{"op":"open_account","id":1,"currency":"{big}"}}"#),
            format!(r#"{{"op":"open_account","id":1,"currency":"CNY","kind":"{big}"}}"#),
            format!(
                r#"{{"op":"transfer","id":1,"from":1,"to":2,"amount":"1","currency":"CNY","code":"{big}"}}"#
            ),
            format!(r#"{{"op":"balance","account":{digits}}}"#),
            format!(r#"{{"op":"balance","account":1}}{big}"#),
            submit("", &format!(r#","side":"{big}""#)),
        ] {
            let err = parse(&line).expect_err("refused");
            assert!(err.len() < 400, "{} bytes: {}", err.len(), &err[..400]);
        }
    }

    #[test]
    fn quoted_pieces_are_cut() {
        let long = "y".repeat(200);
        let message =
            format!(r#"unknown field `{long}`, expected `a` or string "{long}\"{long}" end"#);
        let cut = clip_quotes(&message);
        assert!(
            cut.starts_with(&format!(
                "unknown field `{}… (200 bytes)`",
                &long[..ECHO_MAX]
            )),
            "{cut}"
        );
        assert!(cut.contains("expected `a` or string \""), "{cut}");
        assert!(cut.ends_with("(402 bytes)\" end"), "{cut}");
        assert_eq!(clip_quotes("short `a` \"b\""), "short `a` \"b\"");
        assert_eq!(clip_quotes("open `abc"), "open `abc");
    }

    /// Replays `input` on a fresh in-memory engine with one shard; the
    /// printed lines.
    fn replay_text(input: &str) -> Vec<Value> {
        let engine = Engine::open(Config::memory().with_shards(1)).expect("engine");
        let mut replayer = Replayer {
            engine: &engine,
            out: Vec::new(),
            pending: Vec::new(),
            pending_ids: HashSet::new(),
            refusing: None,
        };
        replayer.feed(input.as_bytes(), false).expect("feed");
        replayer.flush_pending().expect("flush");
        let out = String::from_utf8(replayer.out).expect("utf-8");
        engine.shutdown_blocking().expect("shutdown");
        out.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    const ACCOUNTS: &str = r#"{"op":"open_account","id":0,"currency":"CNY","kind":"internal"}
{"op":"open_account","id":1,"currency":"CNY"}
{"op":"open_account","id":2,"currency":"CNY"}
"#;

    /// A transfer line: from the bank (always funded) or from the empty
    /// customer 2 (always refused), linked or not.
    fn transfer(id: usize, from: u64, linked: bool) -> String {
        let t = format!(
            r#"{{"id":{id},"code":1,"linked":{linked},"legs":[{{"account":{from},"side":"Debit","amount":"1.00","currency":"CNY"}},{{"account":1,"side":"Credit","amount":"1.00","currency":"CNY"}}]}}"#
        );
        format!("{{\"op\":\"submit\",\"txn\":{t}}}\n")
    }

    fn balance_line() -> &'static str {
        "{\"op\":\"balance\",\"account\":1}\n"
    }

    /// The printed lines of transactions, by id: the result.
    fn results(lines: &[Value]) -> std::collections::BTreeMap<u64, Value> {
        lines
            .iter()
            .filter_map(|l| {
                let outcome = l.get("outcome")?;
                Some((outcome["id"].as_u64()?, outcome["result"].clone()))
            })
            .collect()
    }

    fn ok() -> Value {
        serde_json::json!({"Ok": null})
    }

    fn last_balance(lines: &[Value]) -> Value {
        lines
            .iter()
            .rev()
            .find_map(|l| Some(l.get("view")?["balance"].clone()))
            .expect("a balance line")
    }

    #[test]
    fn a_chain_across_the_call_limit_is_one_call() {
        // Enough whole transactions to leave room for two members of a
        // chain of five in the first call.
        let before = SUBMIT_TRANSACTIONS_MAX - 2;
        for failing_member in [None, Some(0), Some(4)] {
            let mut input = ACCOUNTS.to_string();
            for id in 0..before {
                input += &transfer(100_000 + id, 0, false);
            }
            for m in 0..5 {
                let from = if failing_member == Some(m) { 2 } else { 0 };
                input += &transfer(m + 1, from, m < 4);
            }
            input += balance_line();
            let lines = replay_text(&input);
            assert_eq!(lines.len(), 3 + before + 5 + 1);
            let results = results(&lines);
            let chain: Vec<&Value> = (1..=5u64).map(|id| &results[&id]).collect();
            match failing_member {
                None => assert!(chain.iter().all(|r| **r == ok()), "{chain:?}"),
                Some(m) => {
                    for (i, r) in chain.iter().enumerate() {
                        if i == m {
                            assert!(r["Err"]["InsufficientFunds"].is_object(), "{r}");
                        } else {
                            assert_eq!(r["Err"], "LinkedTxnFailed", "member {i}: {r}");
                        }
                    }
                }
            }
            let committed = before + if failing_member.is_none() { 5 } else { 0 };
            assert_eq!(
                last_balance(&lines),
                format!("{committed}.00"),
                "{failing_member:?}"
            );
        }
    }

    #[test]
    fn a_chain_longer_than_a_call_is_refused_whole() {
        let mut input = ACCOUNTS.to_string();
        // Some whole transactions first, then a chain one over the limit,
        // then an independent transfer.
        input += &transfer(900_000, 0, false);
        let chain = SUBMIT_TRANSACTIONS_MAX + 1;
        for m in 0..chain {
            input += &transfer(m + 1, 0, m + 1 < chain);
        }
        input += &transfer(900_001, 0, false);
        input += balance_line();
        let lines = replay_text(&input);
        let results = results(&lines);
        assert_eq!(results.len(), chain + 2);
        let too_long =
            serde_json::json!({"Err": {"LinkedChainTooLong": {"max": SUBMIT_TRANSACTIONS_MAX}}});
        for id in 1..=chain as u64 {
            assert_eq!(results[&id], too_long, "member {id}");
        }
        assert_eq!(results[&900_000], ok());
        assert_eq!(results[&900_001], ok());
        assert_eq!(last_balance(&lines), "2.00");
        // A chain of exactly the limit, after whole transactions, commits.
        let mut input = ACCOUNTS.to_string();
        input += &transfer(900_000, 0, false);
        for m in 0..SUBMIT_TRANSACTIONS_MAX {
            input += &transfer(m + 1, 0, m + 1 < SUBMIT_TRANSACTIONS_MAX);
        }
        input += balance_line();
        let lines = replay_text(&input);
        assert!(results_all_ok(&lines), "a chain of the limit must commit");
        assert_eq!(
            last_balance(&lines),
            format!("{}.00", SUBMIT_TRANSACTIONS_MAX + 1)
        );
    }

    fn results_all_ok(lines: &[Value]) -> bool {
        results(lines).values().all(|r| *r == ok())
    }

    #[test]
    fn a_chain_cut_by_another_line_is_refused_whole() {
        for cut in [
            balance_line(),
            "not json\n",
            "{\"op\":\"open_account\",\"id\":3,\"currency\":\"CNY\"}\n",
        ] {
            let mut input = ACCOUNTS.to_string();
            input += &transfer(1, 0, false);
            input += &transfer(2, 0, true);
            input += cut;
            input += &transfer(3, 0, true);
            input += &transfer(4, 0, false);
            input += &transfer(5, 0, false);
            input += balance_line();
            let lines = replay_text(&input);
            assert_eq!(lines.len(), 3 + 6 + 1, "{lines:#?}");
            let results = results(&lines);
            assert_eq!(results[&1], ok());
            for id in [2, 3, 4] {
                assert_eq!(
                    results[&id],
                    serde_json::json!({"Err": "LinkedChainInterrupted"}),
                    "{cut}: member {id}"
                );
            }
            assert_eq!(results[&5], ok(), "after the chain");
            assert_eq!(last_balance(&lines), "2.00", "{cut}");
            // Output stays in input order.
            let numbers: Vec<u64> = lines.iter().map(|l| l["line"].as_u64().unwrap()).collect();
            assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
        }
    }
}
