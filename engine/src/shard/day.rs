//! A shard's part of a day's close and of statements: each account's walk
//! back along its chain to the closed date, checking every link it passes.
//! Reads only; runs between batches, a bounded slice of accounts at a time.

use super::{ColdResult, Shard};
use crate::account::{AccountState, NO_DETAIL};
use crate::day::{
    decimal, weight, AccountDay, CloseFailure, DayLeg, DayPart, DayScan, Statement,
    SCAN_ACCOUNTS_MAX, SCAN_DETAILS_MAX,
};
use crate::detail::{Detail, DetailKind, DETAIL_PAGE_MAX};
use crate::types::{AccountId, AccountingDate, Side, Version};

/// What one account's walk back to a date found.
struct Walk {
    day: AccountDay,
    legs: Vec<DayLeg>,
    failures: Vec<CloseFailure>,
    /// The date's oldest `keep` details seen so far, newest first (kept
    /// only for statements; the newer ones are dropped as older come).
    kept: std::collections::VecDeque<Detail>,
    keep: usize,
    dropped: bool,
    /// The oldest detail visited so far (the newer neighbour of the next).
    newer: Option<Detail>,
    closing: Option<i64>,
    opening: Option<i64>,
    visited: usize,
    normal: Side,
    /// The stored balance was checked against the newest detail.
    newest_checked: bool,
    /// The legs check's key (`None`: a statement, no legs check).
    key: Option<[u64; 2]>,
    send_legs: bool,
    weighted: u128,
    transactions: u64,
}

impl Walk {
    fn new(a: &AccountState, keep: usize) -> Walk {
        Walk {
            day: AccountDay {
                account: a.id,
                subject: a.subject,
                currency: a.currency,
                scale: a.scale,
                opening: 0,
                closing: 0,
                debits: 0,
                credits: 0,
                details: 0,
                net: 0,
            },
            legs: Vec::new(),
            failures: Vec::new(),
            kept: std::collections::VecDeque::new(),
            keep,
            dropped: false,
            newer: None,
            closing: None,
            opening: None,
            visited: 0,
            normal: a.normal_side,
            newest_checked: false,
            key: None,
            send_legs: false,
            weighted: 0,
            transactions: 0,
        }
    }

    fn dec(&self, units: i64) -> rust_decimal::Decimal {
        decimal(i128::from(units), self.day.scale)
    }

    /// Visits one detail, newest first; false once past the date.
    fn visit(&mut self, a: &AccountState, d: &Detail, date: AccountingDate) -> bool {
        self.visited += 1;
        self.check_link(a, d);
        // A link that does not go back in versions (a damaged `prev`) would
        // walk for ever: reported above, and the walk ends here.
        if self.newer.is_some_and(|n| d.version >= n.version) || self.visited as u64 > a.version {
            return false;
        }
        self.check_amount(a, d);
        if d.date < date {
            self.opening = Some(d.balance_post);
            return false;
        }
        if d.date == date {
            self.closing.get_or_insert(d.balance_post);
            self.count(d);
        }
        self.newer = Some(*d);
        true
    }

    fn count(&mut self, d: &Detail) {
        self.day.details += 1;
        let amount = i128::from(d.amount);
        let signed = match d.side {
            Side::Debit => amount,
            Side::Credit => -amount,
        };
        if let Some(key) = self.key {
            let w = weight(key, d.txn);
            self.weighted = self.weighted.wrapping_add((signed as u128).wrapping_mul(w));
            self.transactions += u64::from(d.leg == 0);
            if self.send_legs {
                self.legs.push(DayLeg {
                    txn: d.txn,
                    currency: self.day.currency,
                    signed,
                });
            }
        }
        if matches!(d.kind, DetailKind::Posted | DetailKind::Captured) {
            match d.side {
                Side::Debit => self.day.debits += amount,
                Side::Credit => self.day.credits += amount,
            }
            self.day.net += if d.side == self.normal {
                amount
            } else {
                -amount
            };
        }
        if self.keep > 0 {
            self.kept.push_back(*d);
            if self.kept.len() > self.keep {
                self.kept.pop_front();
                self.dropped = true;
            }
        }
    }

    /// The account's stored balance is its newest detail's post-balance.
    fn check_newest(&mut self, a: &AccountState, newest: Option<&Detail>) {
        self.newest_checked = true;
        let chain = newest.map_or(0, |d| d.balance_post);
        if chain != a.balance {
            self.failures.push(CloseFailure::StoredBalance {
                account: a.id,
                stored: self.dec(a.balance),
                chain: self.dec(chain),
            });
        }
    }

    /// The newest detail against the account; every other against its
    /// newer neighbour.
    fn check_link(&mut self, a: &AccountState, d: &Detail) {
        match self.newer {
            None if self.visited == 1 && !self.newest_checked => self.check_newest(a, Some(d)),
            // Versions only grow along a chain: a status change takes one
            // and leaves no detail.
            Some(n) if n.balance_pre != d.balance_post || n.version <= d.version => {
                self.failures.push(CloseFailure::ChainBroken {
                    account: a.id,
                    txn: n.txn,
                    version: Version(n.version),
                    balance_pre: self.dec(n.balance_pre),
                    previous_post: self.dec(d.balance_post),
                });
            }
            _ => {}
        }
    }

    /// A balance moves by the amount of a posting or capture, on the
    /// account's normal side up; a reservation or release leaves it.
    fn check_amount(&mut self, a: &AccountState, d: &Detail) {
        let moved = i128::from(d.balance_post) - i128::from(d.balance_pre);
        let expected = match (d.kind, d.side == a.normal_side) {
            (DetailKind::Posted | DetailKind::Captured, true) => i128::from(d.amount),
            (DetailKind::Posted | DetailKind::Captured, false) => -i128::from(d.amount),
            (DetailKind::Reserved | DetailKind::Released, _) => 0,
        };
        if moved != expected {
            self.failures.push(CloseFailure::DetailAmount {
                account: a.id,
                txn: d.txn,
                version: Version(d.version),
                amount: self.dec(d.amount),
                balance_pre: self.dec(d.balance_pre),
                balance_post: self.dec(d.balance_post),
            });
        }
    }

    /// After the walk: the date's opening and closing, and the checks at
    /// its ends (the chain's start, the account's stored opening balance).
    fn finish(&mut self, a: &AccountState, date: AccountingDate) {
        if self.opening.is_none() {
            // The walk reached the account's first detail, or there is none.
            if let Some(first) = self.newer.filter(|f| f.balance_pre != 0) {
                self.failures.push(CloseFailure::ChainStart {
                    account: a.id,
                    version: Version(first.version),
                    balance_pre: self.dec(first.balance_pre),
                });
            }
        }
        let opening = self.opening.unwrap_or(0);
        // No detail on the date: the balance at the cut is the one before
        // the next detail after it, or the opening.
        let after = self.newer.filter(|n| n.date > date).map(|n| n.balance_pre);
        let closing = self.closing.or(after).unwrap_or(opening);
        self.day.opening = opening;
        self.day.closing = closing;
        let stored = match a.opening_date {
            d if d == date => Some(opening),
            d if d == date.next() => Some(closing),
            _ => None,
        };
        if let Some(chain) = stored.filter(|&chain| chain != a.opening_balance) {
            self.failures.push(CloseFailure::StoredOpening {
                account: a.id,
                date: a.opening_date,
                stored: self.dec(a.opening_balance),
                chain: self.dec(chain),
            });
        }
    }
}

impl Shard {
    /// One slice of a closed date's scan, from account slot `scan.from`.
    pub(super) fn scan_day(&self, scan: DayScan) -> DayPart {
        let mut part = DayPart::default();
        let mut weighted: std::collections::BTreeMap<crate::Currency, u128> = Default::default();
        let mut visited = 0usize;
        let mut slot = scan.from as usize;
        while let Some(a) = self.accounts.get(slot) {
            if slot - scan.from as usize >= SCAN_ACCOUNTS_MAX || visited >= SCAN_DETAILS_MAX {
                part.next_slot = Some(slot as u32);
                break;
            }
            let mut walk = Walk::new(a, 0);
            walk.key = Some(scan.key);
            walk.send_legs = scan.legs;
            let walk = self.walk_day(slot as u32, a, scan.date, walk);
            visited += walk.visited;
            let sum = weighted.entry(walk.day.currency).or_default();
            *sum = sum.wrapping_add(walk.weighted);
            part.transactions += walk.transactions;
            part.failures.extend(walk.failures);
            part.legs.extend(walk.legs);
            let day = walk.day;
            if day.details > 0 || day.opening != 0 || day.closing != 0 {
                part.accounts.push(day);
            }
            slot += 1;
        }
        part.weighted = weighted.into_iter().collect();
        part
    }

    fn walk_day(&self, slot: u32, a: &AccountState, date: AccountingDate, mut walk: Walk) -> Walk {
        if a.last_detail == NO_DETAIL {
            if a.balance != 0 {
                walk.failures.push(CloseFailure::StoredBalance {
                    account: a.id,
                    stored: walk.dec(a.balance),
                    chain: walk.dec(0),
                });
            }
        } else if let Err(reason) = self.walk_day_from(slot, a, date, &mut walk) {
            walk.failures.push(CloseFailure::DetailsUnreadable {
                account: a.id,
                reason,
            });
        }
        walk.finish(a, date);
        walk
    }

    /// Walks back from the newest detail, or, for a busy account, from its
    /// oldest skip entry already past `date` (so the later dates' details
    /// cost at most a skip interval); the newest detail is then checked
    /// against the account on its own.
    fn walk_day_from(
        &self,
        slot: u32,
        a: &AccountState,
        date: AccountingDate,
        walk: &mut Walk,
    ) -> ColdResult<()> {
        let start = self.day_walk_start(slot, a, date)?;
        if start != a.last_detail {
            walk.check_newest(a, self.detail(a.last_detail)?.as_ref());
        }
        self.walk_from(start, |d| walk.visit(a, d, date))
    }

    /// The oldest skip entry whose detail is dated after `date` (dates
    /// never go back along a chain: binary search), else the newest detail.
    fn day_walk_start(&self, slot: u32, a: &AccountState, date: AccountingDate) -> ColdResult<u32> {
        let skips = self.skip_entries(slot);
        let (mut low, mut high) = (0usize, skips.len());
        while low < high {
            let mid = low + (high - low) / 2;
            let after = self.detail(skips[mid].1)?.is_none_or(|d| d.date > date);
            if after {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        Ok(skips.get(low).map_or(a.last_detail, |&(_, at)| at))
    }

    /// An account's statement of `date`: `None` if it does not exist.
    pub(super) fn statement(
        &self,
        id: AccountId,
        date: AccountingDate,
    ) -> ColdResult<Option<Statement>> {
        let Some((slot, a)) = self.slot_of(id) else {
            return Ok(None);
        };
        let walk = self.walk_day(slot, a, date, Walk::new(a, DETAIL_PAGE_MAX));
        let unreadable = walk.failures.iter().find_map(|f| match f {
            CloseFailure::DetailsUnreadable { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        if let Some(reason) = unreadable {
            return Err(reason);
        }
        let complete = !walk.dropped;
        let details = walk.kept.iter().rev().map(Detail::view).collect();
        let day = &walk.day;
        Ok(Some(Statement {
            account: id,
            currency: day.currency,
            date,
            opening: walk.dec(day.opening),
            debits: decimal(day.debits, day.scale),
            credits: decimal(day.credits, day.scale),
            closing: walk.dec(day.closing),
            details,
            complete,
        }))
    }
}
