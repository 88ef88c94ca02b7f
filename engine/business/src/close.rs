//! The business day's close (日终): the daily summaries of the
//! daily-summarised internal accounts, posted while the date is still
//! open (so they belong to it), then the engine's cut and its checks.
//! Above the ledger: it only calls the ledger's summary and the engine.

use super::error::LedgerError;
use super::ledger::Ledger;
use super::posted::Posted;
use tally_engine::{AccountingDate, CloseError, CloseReport};

/// What a close did: the summary postings (one per daily account with
/// something in its slots; none when the date was closed before) and the
/// engine's report.
#[derive(Clone, Debug)]
pub struct DayClose {
    pub summaries: Vec<Posted>,
    pub report: CloseReport,
}

impl Ledger {
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
        Ok(DayClose { summaries, report })
    }
}
