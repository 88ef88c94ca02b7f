//! Reconciliation (对账): a channel's statement file (CSV: reference,
//! amount, date) against the channel's internal accounts on one accounting
//! date. Our side is every detail of the date on the channel's accounts
//! (slots included, the daily summaries' moves left out), summed per
//! transaction and signed debit-positive; the channel's reference of a
//! transaction is its id in decimal (the order number the platform sends).
//! Above the ledger: reads the engine, posts nothing.

use super::error::{LedgerError, StatementError};
use super::internal::{ChannelAccount, Internal};
use super::ledger::Ledger;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;
use tally_engine::{
    AccountId, AccountingDate, DetailCursor, DetailKind, DetailQuery, DetailView, Side, Timestamp,
    TxnId, DETAIL_PAGE_MAX,
};

/// Lines of a statement file, at most.
pub const STATEMENT_LINES_MAX: usize = 1_000_000;
/// Longest channel reference, in bytes.
pub const REFERENCE_MAX: usize = 64;

/// One line of a channel's statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelLine {
    pub reference: String,
    pub amount: Decimal,
    pub date: AccountingDate,
}

/// One of our transactions on the channel's accounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OurItem {
    pub reference: String,
    pub txn: TxnId,
    pub amount: Decimal,
}

/// A reference both sides have, with other amounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub ours: OurItem,
    pub theirs: ChannelLine,
}

/// What a reconciliation found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub matched: Vec<OurItem>,
    pub mismatched: Vec<Mismatch>,
    /// Ours only (长款): on our books, not on the channel's statement.
    pub long: Vec<OurItem>,
    /// Theirs only (短款): on the statement, not on our books (a second
    /// line of one reference is here too).
    pub short: Vec<ChannelLine>,
    /// Statement lines of another date: not compared.
    pub other_dates: Vec<ChannelLine>,
}

impl Reconciliation {
    /// Everything matched: nothing long, short or mismatched.
    pub fn balanced(&self) -> bool {
        self.mismatched.is_empty() && self.long.is_empty() && self.short.is_empty()
    }
}

/// Parses a statement file: a `reference,amount,date` header, then one
/// line per item (`date` as `YYYY-MM-DD`); blank lines are skipped.
pub fn parse_statement(csv: &str) -> Result<Vec<ChannelLine>, StatementError> {
    let mut lines = csv
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    match lines.next() {
        Some((_, header)) if header.trim().eq_ignore_ascii_case("reference,amount,date") => {}
        _ => return Err(StatementError::Header),
    }
    let mut out = Vec::new();
    for (at, text) in lines {
        if out.len() == STATEMENT_LINES_MAX {
            return Err(StatementError::TooLong {
                max: STATEMENT_LINES_MAX,
            });
        }
        out.push(parse_line(text).map_err(|reason| StatementError::Line {
            line: at + 1,
            reason,
        })?);
    }
    Ok(out)
}

fn parse_line(text: &str) -> Result<ChannelLine, String> {
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    let [reference, amount, date] = fields.as_slice() else {
        return Err(format!("{} fields, expected 3", fields.len()));
    };
    if reference.is_empty()
        || reference.len() > REFERENCE_MAX
        || reference.chars().any(char::is_control)
    {
        return Err(format!(
            "the reference must be 1..={REFERENCE_MAX} bytes, no control characters"
        ));
    }
    let amount =
        Decimal::from_str(amount).map_err(|_| "the amount is not a decimal".to_string())?;
    let date = AccountingDate::parse(date).ok_or("the date is not YYYY-MM-DD")?;
    Ok(ChannelLine {
        reference: (*reference).to_string(),
        amount,
        date,
    })
}

/// Matches our items and the statement's lines of `date` by reference.
pub fn reconcile_items(
    date: AccountingDate,
    ours: Vec<OurItem>,
    theirs: Vec<ChannelLine>,
) -> Reconciliation {
    let mut result = Reconciliation::default();
    let mut ours: BTreeMap<String, OurItem> =
        ours.into_iter().map(|o| (o.reference.clone(), o)).collect();
    for line in theirs {
        if line.date != date {
            result.other_dates.push(line);
            continue;
        }
        match ours.remove(&line.reference) {
            Some(item) if item.amount == line.amount => result.matched.push(item),
            Some(item) => result.mismatched.push(Mismatch {
                ours: item,
                theirs: line,
            }),
            None => result.short.push(line),
        }
    }
    result.long = ours.into_values().collect();
    result
}

impl Ledger {
    /// Reconciles channel `channel`'s statement file against its accounts
    /// on `date`. An unknown channel or a bad file is an error and nothing
    /// is compared.
    pub async fn reconcile(
        &self,
        channel: &str,
        date: AccountingDate,
        statement_csv: &str,
    ) -> Result<Reconciliation, LedgerError> {
        let number = self
            .rules()
            .channel(channel)
            .ok_or_else(|| LedgerError::UnknownChannel(channel.to_string()))?
            .number;
        let theirs = parse_statement(statement_csv).map_err(LedgerError::Statement)?;
        let mut sums: BTreeMap<TxnId, Decimal> = BTreeMap::new();
        for account in self.channel_accounts(number) {
            for d in self.details_of_date(account, date).await? {
                let moved = matches!(d.kind, DetailKind::Posted | DetailKind::Captured);
                if !moved || d.code == self.rules().summary_code {
                    continue;
                }
                let signed = if d.side == Side::Debit {
                    d.amount
                } else {
                    -d.amount
                };
                let sum = sums.entry(d.txn).or_default();
                *sum = sum.checked_add(signed).unwrap_or(Decimal::MAX);
            }
        }
        let ours = sums
            .into_iter()
            .map(|(txn, amount)| OurItem {
                reference: txn.0.to_string(),
                txn,
                amount,
            })
            .collect();
        Ok(reconcile_items(date, ours, theirs))
    }

    /// Every engine account of a channel: each of its internal accounts,
    /// with the summary slots of a daily one.
    fn channel_accounts(&self, number: u16) -> Vec<AccountId> {
        let daily = self.rules().internal_accounts();
        let slots = self.rules().summary_slots;
        let mut out = Vec::new();
        for account in ChannelAccount::ALL {
            let internal = Internal::Channel { number, account };
            let last = if daily.get(&internal).copied().unwrap_or(false) {
                slots
            } else {
                0
            };
            out.extend((0..=last).map(|sub| internal.account_no().account_id(sub)));
        }
        out
    }

    /// An account's details of `date`, oldest first: the statement's first
    /// page, then by time from its last detail on (empty if the account
    /// does not exist).
    async fn details_of_date(
        &self,
        account: AccountId,
        date: AccountingDate,
    ) -> Result<Vec<DetailView>, LedgerError> {
        let Some(statement) = self.engine().statement(account, date).await? else {
            return Ok(Vec::new());
        };
        let mut details = statement.details;
        let mut complete = statement.complete;
        while !complete {
            let Some(last) = details.last() else { break };
            let query = DetailQuery {
                account,
                from: last.timestamp,
                to: Timestamp(u64::MAX),
                limit: DETAIL_PAGE_MAX,
                after: Some(DetailCursor {
                    timestamp: last.timestamp,
                    leg: last.leg,
                }),
            };
            let Some(page) = self.engine().details(query).await? else {
                break;
            };
            let before = details.len();
            details.extend(page.details.into_iter().take_while(|d| d.date == date));
            let short_page = details.len() - before < DETAIL_PAGE_MAX;
            complete = page.next.is_none() || short_page;
        }
        Ok(details)
    }
}
