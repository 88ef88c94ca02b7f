//! End of day (日终): cutting the accounting date, checking the closed day,
//! the subject ledger (科目账) and its trial balance, statements.
//!
//! The cut is a logged command (`Command::CloseDay`), so replay cuts in the
//! same place. The checks run after it, while postings go on: each shard
//! is asked for a bounded slice of its accounts at a time, between batches,
//! and walks each account back to the closed date (`shard/day.rs`); the
//! closed date's details never change, so what later batches add does not
//! move the result. The subject ledger is kept daily: one stored
//! trial-balance line per subject and currency and date (metadata records
//! under [`TRIAL_BALANCE_PREFIX`], sequenced and logged like everything
//! else); each close checks that the day before's line plus the day's
//! movements is the sum of the subject's accounts.
//!
//! Depends on the shards' scan records (`day`), the engine handle's calls;
//! never writes anything but the trial-balance records of a date it checked.

mod checks;
mod report;
#[cfg(test)]
mod tamper_tests;

pub use report::{CloseReport, CurrencyDay, LedgerOpening, TrialLine};

use crate::account::AccountError;
use crate::config::SubmitError;
use crate::day::{DayPart, DayScan, Statement};
use crate::engine::Engine;
use crate::sequencer::{AccountOp, Request, RECORDS_PAGE_MAX};
use crate::shard::Read;
use crate::types::{AccountId, AccountingDate, Calendar};

/// Where a date's trial-balance lines are stored (the subject ledger):
/// `eod/tb/{date}/{subject}/{currency}`.
pub const TRIAL_BALANCE_PREFIX: &str = "eod/tb/";

/// Why a close or a day's report could not be made (a failed check is not
/// an error: it is in the report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    #[error(transparent)]
    Engine(#[from] SubmitError),
    #[error("accounting date {date} is not open (open: {open:?})")]
    NotOpen {
        date: AccountingDate,
        open: Option<AccountingDate>,
    },
    #[error("accounting date {date} is not closed (last closed: {last_closed:?})")]
    NotClosed {
        date: AccountingDate,
        last_closed: Option<AccountingDate>,
    },
    #[error("the trial balance of {date} could not be stored: {reason}")]
    Store {
        date: AccountingDate,
        reason: AccountError,
    },
}

/// A fresh key for the legs check's weights, so that nobody can choose
/// unbalanced transactions whose weighted sums cancel. (If the system's
/// randomness fails, a fixed key: the check still catches every honest
/// error.)
fn random_key() -> [u64; 2] {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    let (a, b) = bytes.split_at(8);
    let word = |w: &[u8]| w.try_into().map_or(0, u64::from_le_bytes);
    [word(a) ^ 0x7461_6c6c_795f_656f, word(b)]
}

/// The key prefix of a date's trial-balance lines.
pub(crate) fn date_prefix(date: AccountingDate) -> String {
    format!("{TRIAL_BALANCE_PREFIX}{date}/")
}

impl Engine {
    /// The accounting date open and the one closed last.
    pub async fn calendar(&self) -> Result<Calendar, SubmitError> {
        self.call(Request::Calendar).await
    }

    /// Closes accounting date `date` and checks it: every posting
    /// sequenced after the cut belongs to the next date. `date` must be
    /// the date open (before any close: today's or yesterday's by the
    /// clock); closing the date closed last again cuts nothing and checks
    /// it again (after a crash in a close, run it again). Postings go on
    /// meanwhile.
    pub async fn close_day(&self, date: AccountingDate) -> Result<CloseReport, CloseError> {
        let mut results = self.account_ops(vec![AccountOp::CloseDay { date }]).await?;
        match results.pop() {
            Some(Ok(())) => {}
            Some(Err(AccountError::DayNotOpen { date, open })) => {
                return Err(CloseError::NotOpen { date, open })
            }
            Some(Err(reason)) => return Err(CloseError::Store { date, reason }),
            None => return Err(CloseError::Engine(SubmitError::ShutDown)),
        }
        self.day_report(date).await
    }

    /// Checks a closed date and reports it; stores its trial balance the
    /// first time it passes, and compares with the stored one after.
    pub async fn day_report(&self, date: AccountingDate) -> Result<CloseReport, CloseError> {
        let calendar = self.calendar().await?;
        if calendar.last_closed.is_none_or(|closed| closed < date) {
            return Err(CloseError::NotClosed {
                date,
                last_closed: calendar.last_closed,
            });
        }
        let key = random_key();
        let mut parts = self.scan_day(date, key, false).await?;
        if checks::legs_off(&parts) {
            // Some transaction's legs do not net to zero: scan again,
            // with every leg, to name it.
            parts = self.scan_day(date, key, true).await?;
        }
        let previous = self.stored_lines(date.prev()).await?;
        let stored = self.stored_lines(date).await?;
        let report = checks::combine(date, parts, &previous, &stored);
        if report.ok && stored.is_empty() {
            self.store_lines(date, &report.trial_balance).await?;
        }
        Ok(report)
    }

    /// An account's statement of a date (open or past): `None` if the
    /// account does not exist.
    pub async fn statement(
        &self,
        account: AccountId,
        date: AccountingDate,
    ) -> Result<Option<Statement>, SubmitError> {
        let shard = self.shard(account);
        self.call(|reply| Request::Read(shard, Read::Statement(account, date, reply)))
            .await?
            .map_err(|reason| SubmitError::Storage { reason })
    }

    /// Every shard's scan of `date`, a bounded slice per message.
    async fn scan_day(
        &self,
        date: AccountingDate,
        key: [u64; 2],
        legs: bool,
    ) -> Result<Vec<DayPart>, SubmitError> {
        let mut parts = Vec::new();
        for shard in 0..self.shards() {
            let mut from = Some(0u32);
            while let Some(slot) = from {
                let scan = DayScan {
                    date,
                    from: slot,
                    key,
                    legs,
                };
                let part = self
                    .call(|reply| Request::Read(shard, Read::Day(scan, reply)))
                    .await?;
                from = part.next_slot;
                parts.push(part);
            }
        }
        Ok(parts)
    }

    /// A date's stored trial-balance lines, as (key, value).
    async fn stored_lines(
        &self,
        date: AccountingDate,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, SubmitError> {
        let prefix = date_prefix(date).into_bytes();
        let mut lines = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .records(prefix.clone(), after, RECORDS_PAGE_MAX)
                .await?;
            let full = page.len() == RECORDS_PAGE_MAX;
            after = page.last().map(|(k, _)| k.clone());
            lines.extend(page);
            if !full {
                return Ok(lines);
            }
        }
    }

    async fn store_lines(
        &self,
        date: AccountingDate,
        lines: &[TrialLine],
    ) -> Result<(), CloseError> {
        let records: Vec<(Vec<u8>, Vec<u8>)> = lines.iter().map(|l| l.record(date)).collect();
        for chunk in records.chunks(crate::txn::SUBMIT_TRANSACTIONS_MAX) {
            for result in self.put_records(chunk.to_vec()).await? {
                result.map_err(|reason| CloseError::Store { date, reason })?;
            }
        }
        Ok(())
    }
}
