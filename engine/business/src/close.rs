//! The business day's close (日终): the daily summaries of the
//! daily-summarised internal accounts, posted while the date is still
//! open (so they belong to it), then the engine's cut and its checks.
//! Above the ledger: it only calls the ledger's summary and the engine.

use super::account_no::AccountNo;
use super::error::LedgerError;
use super::ledger::Ledger;
use super::posted::Posted;
use super::subject::Chart;
use super::template::AccountType;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tally_engine::{AccountingDate, CloseError, CloseReport, Currency, Statement, SubjectCode};

/// What a close did: the summary postings (one per daily account with
/// something in its slots; none when the date was closed before), the
/// engine's report, and the subject ledger of the date.
#[derive(Clone, Debug)]
pub struct DayClose {
    pub summaries: Vec<Posted>,
    pub report: CloseReport,
    pub subjects: Vec<SubjectLine>,
}

/// A subject of the chart in a currency on a closed date (科目账): its own
/// accounts and every subject below it, balances on its normal side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectLine {
    pub code: SubjectCode,
    /// The chart's name; empty for a code the chart does not know.
    pub name: String,
    pub parent: Option<SubjectCode>,
    pub currency: Currency,
    pub opening: Decimal,
    pub debits: Decimal,
    pub credits: Decimal,
    pub closing: Decimal,
}

/// The trial balance's lines rolled up the chart: each line counts for its
/// subject and every ancestor. Children share their parent's class (the
/// chart refuses otherwise), so the sums are on one side.
pub fn subject_ledger(chart: &Chart, report: &CloseReport) -> Vec<SubjectLine> {
    let mut lines: BTreeMap<(SubjectCode, Currency), SubjectLine> = BTreeMap::new();
    for t in &report.trial_balance {
        let mut at = Some(t.subject);
        // The depth is bounded by the chart's size (and one unknown code).
        for _ in 0..=chart.subjects().count() {
            let Some(code) = at else { break };
            let subject = chart.get(code);
            let line = lines
                .entry((code, t.currency))
                .or_insert_with(|| SubjectLine {
                    code,
                    name: subject.map(|s| s.name.clone()).unwrap_or_default(),
                    parent: subject.and_then(|s| s.parent),
                    currency: t.currency,
                    opening: Decimal::ZERO,
                    debits: Decimal::ZERO,
                    credits: Decimal::ZERO,
                    closing: Decimal::ZERO,
                });
            let add = |a: Decimal, b: Decimal| a.checked_add(b).unwrap_or(Decimal::MAX);
            line.opening = add(line.opening, t.opening);
            line.debits = add(line.debits, t.debits);
            line.credits = add(line.credits, t.credits);
            line.closing = add(line.closing, t.closing);
            at = line.parent;
        }
    }
    lines.into_values().collect()
}

impl DayClose {
    /// The subject ledger as CSV with a header.
    pub fn subjects_csv(&self) -> String {
        let mut out =
            String::from("date,subject,name,parent,currency,opening,debits,credits,closing\n");
        for l in &self.subjects {
            let parent = l.parent.map(|p| p.0.to_string()).unwrap_or_default();
            let _ = writeln!(
                out,
                "{},{},\"{}\",{parent},{},{},{},{},{}",
                self.report.date,
                l.code.0,
                l.name.replace('"', "\"\""),
                l.currency,
                l.opening,
                l.debits,
                l.credits,
                l.closing
            );
        }
        out
    }

    /// The engine's report files (see [`CloseReport::write_files`]) and
    /// `subject-ledger-<date>.csv`, into `dir`.
    pub fn write_files(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut paths = self.report.write_files(dir)?;
        let path = dir.join(format!("subject-ledger-{}.csv", self.report.date));
        std::fs::write(&path, self.subjects_csv())?;
        paths.push(path);
        Ok(paths)
    }
}

impl Ledger {
    /// A member account's statement of an accounting date (对账单): the
    /// balance at its start, its details, the balance at its end; for any
    /// date, open or past. `None` if the account does not exist.
    pub async fn statement(
        &self,
        number: AccountNo,
        account: AccountType,
        date: AccountingDate,
    ) -> Result<Option<Statement>, LedgerError> {
        let id = number.account_id(account.code());
        Ok(self.engine().statement(id, date).await?)
    }

    /// Closes accounting date `date`: posts each daily account's summary,
    /// cuts the date, checks it. Postings go on meanwhile; what reaches a
    /// slot between the summary and the cut stays in the slot (its
    /// subject's balance counts it) and is summarised the next day. Run
    /// again for the date closed last (after a crash in a close, say), it
    /// posts nothing and checks the date again.
    pub async fn close_day(&self, date: AccountingDate) -> Result<DayClose, LedgerError> {
        let calendar = self.engine().calendar().await?;
        let closed_before = calendar.last_closed == Some(date);
        if !closed_before && calendar.open.is_some_and(|open| open != date) {
            return Err(LedgerError::Close(CloseError::NotOpen {
                date,
                open: calendar.open,
            }));
        }
        let summaries = if closed_before {
            Vec::new()
        } else {
            self.summarize(date).await?
        };
        let report = self
            .engine()
            .close_day(date)
            .await
            .map_err(LedgerError::Close)?;
        let subjects = subject_ledger(self.chart(), &report);
        Ok(DayClose {
            summaries,
            report,
            subjects,
        })
    }
}
