//! The member lifecycle: freeze, unfreeze, close, level change, and one
//! account's status (active, frozen, receive-only 只收不付, pay-only
//! 只付不收) — each with who did it and why, kept as metadata records
//! `memberlog/<number>/<seq>` in the engine's log, so a member's status
//! and history survive restarts.
//!
//! A frozen member cannot take part in any request (as payer, payee,
//! merchant, claimant, sender); a closed one neither, ever again, and its
//! template accounts are closed in the engine, so nothing can post to them
//! even from outside the ledger. Closing needs the accounts empty and no
//! red packet of the member's still open (its return would meet closed
//! accounts). An account's status is the engine's: it refuses the
//! postings the status forbids.

use super::account_no::AccountNo;
use super::error::LedgerError;
use super::ledger::{all_records, Ledger};
use super::member::Member;
use super::person::{MemberAction, MemberChange, MemberEvent, MemberStatus};
use super::template;
use tally_engine::{AccountError, AccountStatus};

const LOG_PREFIX: &[u8] = b"memberlog/";

/// Characters of `by` and `reason`, at most.
pub const MEMBER_NOTE_MAX: usize = 256;

fn log_key(number: AccountNo, seq: u64) -> Vec<u8> {
    let mut key = LOG_PREFIX.to_vec();
    key.extend_from_slice(format!("{number}/{seq:016x}").as_bytes());
    key
}

impl Ledger {
    /// The members opened under one identity (ID card number or credit
    /// code, as checked at opening).
    pub fn members_of_person(&self, identity: &str) -> Vec<AccountNo> {
        self.persons.siblings(identity)
    }

    /// A member's status (active, frozen, closed).
    pub fn member_status(&self, number: AccountNo) -> MemberStatus {
        self.persons.status(number)
    }

    /// Freezes, unfreezes, closes a member or changes its level, and
    /// records who and why. Refused (nothing changed, nothing recorded):
    /// an unknown member, an empty or too long `by` or `reason`, an
    /// unknown level, a change that changes nothing, any change of a
    /// closed member, closing a member whose accounts hold money.
    pub async fn change_member(&self, change: MemberChange) -> Result<MemberEvent, LedgerError> {
        for (field, text) in [("by", &change.by), ("reason", &change.reason)] {
            if text.trim().is_empty() || text.chars().count() > MEMBER_NOTE_MAX {
                return Err(LedgerError::MemberChangeNote {
                    field: field.into(),
                    max: MEMBER_NOTE_MAX,
                });
            }
        }
        let number = change.number;
        let _one = self.persons.changing.lock().await;
        let mut member = self
            .member(number)
            .ok_or(LedgerError::UnknownMember(number))?;
        let (status, seq) = self
            .persons
            .statuses
            .read()
            .get(&number)
            .copied()
            .unwrap_or((MemberStatus::Active, 0));
        let unchanged = || LedgerError::MemberUnchanged {
            member: number,
            action: format!("{:?}", change.action),
        };
        let level_before = member.level.clone();
        let next = match (&change.action, status) {
            (_, MemberStatus::Closed) => return Err(LedgerError::MemberClosed(number)),
            (MemberAction::Freeze, MemberStatus::Frozen) => return Err(unchanged()),
            (MemberAction::Freeze, _) => MemberStatus::Frozen,
            (MemberAction::Unfreeze, MemberStatus::Active) => return Err(unchanged()),
            (MemberAction::Unfreeze, _) => MemberStatus::Active,
            (MemberAction::Close, s) => {
                self.check_empty(&member).await?;
                let _ = s;
                MemberStatus::Closed
            }
            (MemberAction::AccountStatus { account, status }, s) => {
                if *status == AccountStatus::Closed {
                    return Err(LedgerError::AccountStatusNotAllowed(*status));
                }
                let id = number.account_id(account.code());
                let now = self
                    .engine()
                    .account(id)
                    .await?
                    .ok_or(LedgerError::Account(AccountError::NotFound(id)))?;
                if now.status == *status {
                    return Err(unchanged());
                }
                if now.status == AccountStatus::Closed {
                    return Err(LedgerError::Account(AccountError::Closed(id)));
                }
                s
            }
            (MemberAction::Level(level), s) => {
                if !self.rules().levels.contains_key(level) {
                    return Err(LedgerError::UnknownLevel(level.clone()));
                }
                if *level == member.level {
                    return Err(unchanged());
                }
                member.level = level.clone();
                s
            }
        };
        let event = MemberEvent {
            seq,
            at: self.clock_now(),
            action: change.action.clone(),
            level_before,
            by: change.by.trim().to_string(),
            reason: change.reason.trim().to_string(),
        };
        let value =
            postcard::to_allocvec(&event).map_err(|e| LedgerError::MemberRecord(e.to_string()))?;
        let mut records = vec![(log_key(number, seq), value)];
        if matches!(change.action, MemberAction::Level(_)) {
            records.push(self.member_record(&member)?);
        }
        if change.action == MemberAction::Close {
            // The engine's accounts first: a crash after this and before
            // the record leaves the member closed in the engine, not open
            // with its accounts closed under it — and closing again
            // finishes it.
            for &t in template::template(member.kind) {
                let id = number.account_id(t.code());
                match self.engine().set_status(id, AccountStatus::Closed).await? {
                    Ok(()) => {}
                    Err(tally_engine::AccountError::Closed(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        for result in self.engine().put_records(records).await? {
            result?;
        }
        // The record first: an account's status never changes without
        // its who and why (a crash in between leaves the record of a
        // change that the request, made again, carries out).
        if let MemberAction::AccountStatus { account, status } = &change.action {
            self.engine()
                .set_status(number.account_id(account.code()), *status)
                .await??;
        }
        self.persons
            .statuses
            .write()
            .insert(number, (next, seq + 1));
        if matches!(change.action, MemberAction::Level(_)) {
            self.replace_member(member);
        }
        Ok(event)
    }

    /// A member's recorded changes, oldest first.
    pub async fn member_history(&self, number: AccountNo) -> Result<Vec<MemberEvent>, LedgerError> {
        let mut prefix = LOG_PREFIX.to_vec();
        prefix.extend_from_slice(format!("{number}/").as_bytes());
        let events: Vec<(Vec<u8>, MemberEvent)> = all_records(self.engine(), &prefix).await?;
        Ok(events.into_iter().map(|(_, e)| e).collect())
    }

    /// Refuses to close a member whose accounts hold or await money.
    async fn check_empty(&self, member: &Member) -> Result<(), LedgerError> {
        for &t in template::template(member.kind) {
            let id = member.number.account_id(t.code());
            if let Some(v) = self.engine().account(id).await? {
                let idle = v.balance.is_zero() && v.reserved.is_zero() && v.incoming.is_zero();
                if !idle && v.status != AccountStatus::Closed {
                    return Err(LedgerError::MemberHasMoney(member.number));
                }
            }
        }
        // A red packet it sent may still give money back at its deadline.
        if self.sends_open_red_packet(member.number).await {
            return Err(LedgerError::MemberHasMoney(member.number));
        }
        Ok(())
    }
}

/// Rebuilds every member's status from its recorded changes at open.
pub(super) async fn load_statuses(ledger: &Ledger) -> Result<(), LedgerError> {
    let events: Vec<(Vec<u8>, MemberEvent)> = all_records(ledger.engine(), LOG_PREFIX).await?;
    for (key, event) in events {
        let number = std::str::from_utf8(&key[LOG_PREFIX.len()..])
            .ok()
            .and_then(|rest| rest.split('/').next())
            .and_then(|n| AccountNo::parse(n).ok())
            .ok_or_else(|| {
                LedgerError::MemberRecord(format!(
                    "{}: not a member number",
                    String::from_utf8_lossy(&key)
                ))
            })?;
        let mut statuses = ledger.persons.statuses.write();
        let entry = statuses.entry(number).or_insert((MemberStatus::Active, 0));
        entry.1 = entry.1.max(event.seq + 1);
        entry.0 = match event.action {
            MemberAction::Freeze => MemberStatus::Frozen,
            MemberAction::Unfreeze => MemberStatus::Active,
            MemberAction::Close => MemberStatus::Closed,
            MemberAction::Level(_) | MemberAction::AccountStatus { .. } => entry.0,
        };
    }
    Ok(())
}
