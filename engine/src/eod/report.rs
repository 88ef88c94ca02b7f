//! What a close reports, as data (serde) and as files a person reads: the
//! report in Markdown, the trial balance (the daily GL) and the failures
//! in CSV.

use super::date_prefix;
use crate::day::CloseFailure;
use crate::types::{AccountingDate, Currency, SubjectCode};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One line of a date's trial balance (试算平衡表): a subject in a
/// currency, balances on the subject's accounts' normal side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialLine {
    pub subject: SubjectCode,
    pub currency: Currency,
    pub opening: Decimal,
    pub debits: Decimal,
    pub credits: Decimal,
    pub closing: Decimal,
    /// Accounts with a balance or a detail on the date.
    pub accounts: u64,
}

impl TrialLine {
    /// The line's key under the date's prefix.
    pub(crate) fn key(date: AccountingDate, subject: SubjectCode, currency: Currency) -> Vec<u8> {
        format!("{}{:010}/{currency}", date_prefix(date), subject.0).into_bytes()
    }

    /// As a stored record: key, JSON value.
    pub(crate) fn record(&self, date: AccountingDate) -> (Vec<u8>, Vec<u8>) {
        let value = serde_json::to_vec(self).unwrap_or_default();
        (TrialLine::key(date, self.subject, self.currency), value)
    }
}

/// A currency's movements on the date.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyDay {
    pub currency: Currency,
    pub debits: Decimal,
    pub credits: Decimal,
}

/// Where the subject ledger's opening balances came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOpening {
    /// The trial balance stored at the day before's close.
    Ledger,
    /// No trial balance of the day before is stored (the first close):
    /// the sum of the accounts' opening balances, so the subject check of
    /// this date only compares the day's movements.
    Accounts,
}

/// A closed date's checks and trial balance. `ok` only if `failures` is
/// empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseReport {
    pub date: AccountingDate,
    pub ok: bool,
    pub accounts: u64,
    pub details: u64,
    pub transactions: u64,
    pub ledger_opening: LedgerOpening,
    pub currencies: Vec<CurrencyDay>,
    pub trial_balance: Vec<TrialLine>,
    pub failures: Vec<CloseFailure>,
}

impl CloseReport {
    /// The report for a person: the checks, the totals, the trial balance
    /// and every failure.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let verdict = if self.ok { "passed" } else { "FAILED" };
        let _ = writeln!(out, "# Close of {}: {verdict}\n", self.date);
        let _ = writeln!(
            out,
            "{} accounts, {} details, {} transactions; subject ledger opened from {:?}.\n",
            self.accounts, self.details, self.transactions, self.ledger_opening
        );
        let _ = writeln!(out, "| currency | debits | credits |\n|---|---:|---:|");
        for c in &self.currencies {
            let _ = writeln!(out, "| {} | {} | {} |", c.currency, c.debits, c.credits);
        }
        let _ = writeln!(out, "\n## Trial balance\n");
        let _ = writeln!(
            out,
            "| subject | currency | opening | debits | credits | closing | accounts |\n|---|---|---:|---:|---:|---:|---:|"
        );
        for l in &self.trial_balance {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                l.subject.0, l.currency, l.opening, l.debits, l.credits, l.closing, l.accounts
            );
        }
        let _ = writeln!(out, "\n## Failures ({})\n", self.failures.len());
        for f in &self.failures {
            let _ = writeln!(out, "- {}", failure_line(f));
        }
        out
    }

    /// The trial balance (the day's GL) as CSV with a header.
    pub fn trial_balance_csv(&self) -> String {
        let mut out =
            String::from("date,subject,currency,opening,debits,credits,closing,accounts\n");
        for l in &self.trial_balance {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                self.date,
                l.subject.0,
                l.currency,
                l.opening,
                l.debits,
                l.credits,
                l.closing,
                l.accounts
            );
        }
        out
    }

    /// The failures as CSV: date, kind, what it names (JSON, quoted).
    pub fn failures_csv(&self) -> String {
        let mut out = String::from("date,failure\n");
        for f in &self.failures {
            let json = serde_json::to_string(f).unwrap_or_default();
            let _ = writeln!(out, "{},\"{}\"", self.date, json.replace('"', "\"\""));
        }
        out
    }

    /// Writes `close-<date>.md`, `close-<date>.json`,
    /// `trial-balance-<date>.csv` and `close-failures-<date>.csv` into
    /// `dir`; returns their paths.
    pub fn write_files(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let files = [
            (format!("close-{}.md", self.date), self.to_markdown()),
            (format!("close-{}.json", self.date), json),
            (
                format!("trial-balance-{}.csv", self.date),
                self.trial_balance_csv(),
            ),
            (
                format!("close-failures-{}.csv", self.date),
                self.failures_csv(),
            ),
        ];
        let mut paths = Vec::with_capacity(files.len());
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            paths.push(path);
        }
        Ok(paths)
    }
}

/// One failure in a sentence that names what failed.
fn failure_line(f: &CloseFailure) -> String {
    use CloseFailure as F;
    match f {
        F::SubjectMismatch { subject, currency, ledger, accounts } => format!(
            "subject {} {currency}: ledger {ledger}, its accounts {accounts}",
            subject.0
        ),
        F::StoredLineChanged { subject, currency, stored, computed } => format!(
            "subject {} {currency}: stored closing {stored}, the details give {computed}",
            subject.0
        ),
        F::StoredLineUnreadable { key } => format!("stored line {key} unreadable"),
        F::DayUnbalanced { currency, debits, credits } => {
            format!("{currency}: debits {debits} ≠ credits {credits}")
        }
        F::TxnUnbalanced { txn, currency, net_debit } => {
            format!("transaction {:#x} {currency}: legs off by {net_debit}", txn.0)
        }
        F::ChainBroken { account, txn, version, balance_pre, previous_post } => format!(
            "account {}: detail v{} (txn {:#x}) starts at {balance_pre}, the one before ended at {previous_post}",
            account.0, version.0, txn.0
        ),
        F::DetailAmount { account, txn, version, amount, balance_pre, balance_post } => format!(
            "account {}: detail v{} (txn {:#x}) of {amount} moves {balance_pre} to {balance_post}",
            account.0, version.0, txn.0
        ),
        F::ChainStart { account, version, balance_pre } => format!(
            "account {}: first detail v{} starts at {balance_pre}",
            account.0, version.0
        ),
        F::StoredBalance { account, stored, chain } => format!(
            "account {}: stored balance {stored}, its details end at {chain}",
            account.0
        ),
        F::StoredOpening { account, date, stored, chain } => format!(
            "account {}: stored opening {stored} of {date}, its details give {chain}",
            account.0
        ),
        F::DetailsUnreadable { account, reason } => {
            format!("account {}: details unreadable: {reason}", account.0)
        }
    }
}
