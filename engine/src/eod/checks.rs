//! The close's checks over the shards' scans of one date: the subject
//! ledger against its accounts, debits against credits per currency, each
//! transaction's legs, and the stored trial balance against the details.
//! Pure: the same scans give the same report, whatever the shard count.

use super::report::{CloseReport, CurrencyDay, LedgerOpening, TrialLine};
use crate::day::{decimal, CloseFailure, DayPart};
use crate::types::{AccountingDate, Currency, SubjectCode, TxnId};
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

/// A subject in a currency, summed over its accounts, in minor units.
#[derive(Default)]
struct Sums {
    scale: u8,
    opening: i128,
    debits: i128,
    credits: i128,
    closing: i128,
    net: i128,
    accounts: u64,
}

type Key = (SubjectCode, Currency);

/// Combines the scans of `date` with the trial balance stored the day
/// before (`previous`) and any stored for `date` itself (`stored`).
pub(super) fn combine(
    date: AccountingDate,
    parts: Vec<DayPart>,
    previous: &[(Vec<u8>, Vec<u8>)],
    stored: &[(Vec<u8>, Vec<u8>)],
) -> CloseReport {
    let mut failures = Vec::new();
    let mut subjects: BTreeMap<Key, Sums> = BTreeMap::new();
    let mut legs: FxHashMap<(TxnId, Currency), i128> = FxHashMap::default();
    let (mut accounts, mut details, mut transactions) = (0u64, 0u64, 0u64);
    for part in parts {
        failures.extend(part.failures);
        transactions += part.transactions;
        for leg in part.legs {
            *legs.entry((leg.txn, leg.currency)).or_default() += leg.signed;
        }
        for a in part.accounts {
            accounts += 1;
            details += u64::from(a.details);
            let s = subjects.entry((a.subject, a.currency)).or_default();
            s.scale = a.scale;
            s.opening += i128::from(a.opening);
            s.closing += i128::from(a.closing);
            s.debits += a.debits;
            s.credits += a.credits;
            s.net += a.net;
            s.accounts += 1;
        }
    }
    let scales: FxHashMap<Currency, u8> =
        subjects.iter().map(|((_, c), s)| (*c, s.scale)).collect();
    check_legs(&legs, &scales, &mut failures);
    let currencies = currency_days(&subjects, &mut failures);
    let previous = parse_lines(previous, &mut failures);
    let ledger_opening = if previous.is_empty() {
        LedgerOpening::Accounts
    } else {
        LedgerOpening::Ledger
    };
    check_ledger(&subjects, &previous, &mut failures);
    let trial_balance: Vec<TrialLine> = subjects.iter().map(|(k, s)| line(*k, s)).collect();
    check_stored(
        &trial_balance,
        &parse_lines(stored, &mut failures),
        &mut failures,
    );
    failures.sort_by_cached_key(|f| serde_json::to_string(f).unwrap_or_default());
    CloseReport {
        date,
        ok: failures.is_empty(),
        accounts,
        details,
        transactions,
        ledger_opening,
        currencies,
        trial_balance,
        failures,
    }
}

fn line((subject, currency): Key, s: &Sums) -> TrialLine {
    TrialLine {
        subject,
        currency,
        opening: decimal(s.opening, s.scale),
        debits: decimal(s.debits, s.scale),
        credits: decimal(s.credits, s.scale),
        closing: decimal(s.closing, s.scale),
        accounts: s.accounts,
    }
}

/// Do the scans' weighted sums say some transaction's legs on the date do
/// not net to zero? (Then the date is scanned again with every leg.)
pub(super) fn legs_off(parts: &[DayPart]) -> bool {
    let mut sums: BTreeMap<Currency, u128> = BTreeMap::new();
    for (currency, weighted) in parts.iter().flat_map(|p| &p.weighted) {
        let sum = sums.entry(*currency).or_default();
        *sum = sum.wrapping_add(*weighted);
    }
    sums.values().any(|&sum| sum != 0)
}

/// Every transaction's legs on the date net to zero per currency (the
/// legs are there only on the second pass, see [`legs_off`]).
fn check_legs(
    legs: &FxHashMap<(TxnId, Currency), i128>,
    scales: &FxHashMap<Currency, u8>,
    failures: &mut Vec<crate::day::CloseFailure>,
) {
    for (&(txn, currency), &net) in legs.iter().filter(|(_, &net)| net != 0) {
        let scale = scales.get(&currency).copied().unwrap_or(0);
        failures.push(CloseFailure::TxnUnbalanced {
            txn,
            currency,
            net_debit: decimal(net, scale),
        });
    }
}

/// The day's debits and credits per currency, which must be equal.
fn currency_days(
    subjects: &BTreeMap<Key, Sums>,
    failures: &mut Vec<CloseFailure>,
) -> Vec<CurrencyDay> {
    let mut per: BTreeMap<Currency, (i128, i128, u8)> = BTreeMap::new();
    for ((_, currency), s) in subjects {
        let e = per.entry(*currency).or_default();
        e.0 += s.debits;
        e.1 += s.credits;
        e.2 = s.scale;
    }
    per.into_iter()
        .map(|(currency, (d, c, scale))| {
            let (debits, credits) = (decimal(d, scale), decimal(c, scale));
            if d != c {
                failures.push(CloseFailure::DayUnbalanced {
                    currency,
                    debits,
                    credits,
                });
            }
            CurrencyDay {
                currency,
                debits,
                credits,
            }
        })
        .collect()
}

/// The subject ledger: the day before's stored closing plus the day's
/// movements must be the sum of the subject's accounts at the cut.
fn check_ledger(
    subjects: &BTreeMap<Key, Sums>,
    previous: &BTreeMap<Key, TrialLine>,
    failures: &mut Vec<CloseFailure>,
) {
    if previous.is_empty() {
        return;
    }
    let empty = Sums::default();
    let keys: std::collections::BTreeSet<Key> =
        subjects.keys().chain(previous.keys()).copied().collect();
    for key in keys {
        let s = subjects.get(&key).unwrap_or(&empty);
        let before = previous.get(&key).map_or(Decimal::ZERO, |l| l.closing);
        let ledger = before
            .checked_add(decimal(s.net, s.scale))
            .unwrap_or(Decimal::MAX);
        let accounts = decimal(s.closing, s.scale);
        if ledger != accounts {
            failures.push(CloseFailure::SubjectMismatch {
                subject: key.0,
                currency: key.1,
                ledger,
                accounts,
            });
        }
    }
}

/// A trial balance stored at an earlier run of this date's close must be
/// what the details give now.
fn check_stored(
    computed: &[TrialLine],
    stored: &BTreeMap<Key, TrialLine>,
    failures: &mut Vec<CloseFailure>,
) {
    if stored.is_empty() {
        return;
    }
    let now: BTreeMap<Key, &TrialLine> = computed
        .iter()
        .map(|l| ((l.subject, l.currency), l))
        .collect();
    let keys: std::collections::BTreeSet<Key> = now.keys().chain(stored.keys()).copied().collect();
    for key in keys {
        let (Some(a), Some(b)) = (stored.get(&key), now.get(&key)) else {
            let pick = |l: Option<&TrialLine>| l.map_or(Decimal::ZERO, |l| l.closing);
            failures.push(CloseFailure::StoredLineChanged {
                subject: key.0,
                currency: key.1,
                stored: pick(stored.get(&key)),
                computed: pick(now.get(&key).copied()),
            });
            continue;
        };
        if a != *b {
            failures.push(CloseFailure::StoredLineChanged {
                subject: key.0,
                currency: key.1,
                stored: a.closing,
                computed: b.closing,
            });
        }
    }
}

/// Stored lines by subject and currency; one that does not parse, or is
/// stored under another key than its own, is a failure naming its key.
fn parse_lines(
    records: &[(Vec<u8>, Vec<u8>)],
    failures: &mut Vec<CloseFailure>,
) -> BTreeMap<Key, TrialLine> {
    let mut lines = BTreeMap::new();
    for (key, value) in records {
        let name = String::from_utf8_lossy(key).into_owned();
        match serde_json::from_slice::<TrialLine>(value) {
            Ok(line)
                if key
                    .ends_with(format!("{:010}/{}", line.subject.0, line.currency).as_bytes()) =>
            {
                lines.insert((line.subject, line.currency), line);
            }
            _ => failures.push(CloseFailure::StoredLineUnreadable { key: name }),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::day::weight;

    /// Parts whose weighted sums hold these (txn, signed) legs in CNY.
    fn parts(key: [u64; 2], legs: &[(u128, i128)]) -> Vec<DayPart> {
        legs.iter()
            .map(|&(txn, signed)| DayPart {
                weighted: vec![(
                    Currency::CNY,
                    (signed as u128).wrapping_mul(weight(key, TxnId(txn))),
                )],
                ..DayPart::default()
            })
            .collect()
    }

    #[test]
    fn the_weighted_legs_check_finds_any_transaction_off_and_only_then() {
        let key = [3, 5];
        let balanced = [(1, 500), (1, -500), (2, 7), (2, -3), (2, -4)];
        assert!(!legs_off(&parts(key, &balanced)));
        // One leg changed; two transactions off by opposite amounts.
        let changed = [(1, 500), (1, -499), (2, 7), (2, -3), (2, -4)];
        assert!(legs_off(&parts(key, &changed)));
        let opposite = [(1, 501), (1, -500), (2, 6), (2, -3), (2, -4)];
        assert!(legs_off(&parts(key, &opposite)));
        assert!(!legs_off(&[]));
    }
}
