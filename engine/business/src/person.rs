//! The person behind members (rule 6 of issue 12): one real-name identity
//! (ID card number or credit code) may open several members; the ledger
//! knows which, caps how many (`[person] members_max`) and limits what
//! they pay together in a day (`[person] daily_max`, on top of each
//! member's level limits). And the member lifecycle: freeze, unfreeze,
//! close, level change — each with who did it and why, kept as metadata
//! records `memberlog/<number>/<seq>` in the engine's log, so a member's
//! status and history survive restarts.
//!
//! One account's status changes the same way, with its who and why
//! ([`MemberAction::AccountStatus`]): active, frozen, receive-only
//! (只收不付: money may come in, none go out) or pay-only (只付不收: the
//! reverse); the engine refuses the postings the status forbids.
//!
//! A frozen member cannot take part in any request (as payer, payee,
//! merchant, claimant, sender); a closed one neither, ever again, and its
//! template accounts are closed in the engine, so nothing can post to them
//! even from outside the ledger. Closing needs the accounts empty and no
//! red packet of the member's still open (its return would meet closed
//! accounts).

use super::account_no::AccountNo;
use super::error::LedgerError;
use super::ledger::Ledger;
use super::member::{Member, MemberLevel, Party};
use super::template::{self, AccountType};
use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tally_engine::Timestamp;
use tally_engine::RECORDS_PAGE_MAX;
use tally_engine::{AccountError, AccountStatus};

const LOG_PREFIX: &[u8] = b"memberlog/";
/// Characters of `by` and `reason`, at most.
pub const MEMBER_NOTE_MAX: usize = 256;

/// Where a member stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberStatus {
    #[default]
    Active,
    Frozen,
    Closed,
}

/// A lifecycle change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberAction {
    Freeze,
    Unfreeze,
    /// For good; its accounts must be empty.
    Close,
    /// To another level of the rules (its limits apply from then on).
    Level(MemberLevel),
    /// One of the member's accounts to a status: active, frozen (risk
    /// control: no debit), receive-only (只收不付) or pay-only (只付不收).
    /// Closing one account this way is refused: a member is closed whole.
    AccountStatus {
        account: AccountType,
        status: AccountStatus,
    },
}

/// A request to change a member: what, by whom, why (both required).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChange {
    pub number: AccountNo,
    pub action: MemberAction,
    /// Who decided it (an operator, a risk rule's name, …).
    pub by: String,
    pub reason: String,
}

/// A change as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEvent {
    /// 0, 1, … per member.
    pub seq: u64,
    /// The engine clock when it was recorded.
    pub at: Timestamp,
    pub action: MemberAction,
    /// The level before the change.
    pub level_before: MemberLevel,
    pub by: String,
    pub reason: String,
}

/// The identity behind a member: its ID card number or credit code.
pub fn identity(party: &Party) -> String {
    identity_str(party).to_string()
}

pub(super) fn identity_str(party: &Party) -> &str {
    match party {
        Party::Natural(p) => p.id_card.as_str(),
        Party::Legal(p) => p.credit_code.as_str(),
    }
}

/// The ledger's memory of persons and statuses.
#[derive(Default)]
pub(super) struct Persons {
    /// Identity → its members.
    members: RwLock<FxHashMap<String, Vec<AccountNo>>>,
    /// Members not active, and each member's next event number.
    statuses: RwLock<FxHashMap<AccountNo, (MemberStatus, u64)>>,
    /// One change at a time.
    changing: tokio::sync::Mutex<()>,
}

impl Persons {
    pub(super) fn from_members<'a>(members: impl Iterator<Item = &'a Member>) -> Persons {
        let persons = Persons::default();
        {
            let mut index = persons.members.write();
            for m in members {
                index.entry(identity(&m.party)).or_default().push(m.number);
            }
        }
        persons
    }

    /// Adds `number` to its person's members unless that would exceed
    /// `max`; true if it is (now) there.
    pub(super) fn reserve(&self, who: &str, number: AccountNo, max: Option<u32>) -> bool {
        let mut index = self.members.write();
        let list = index.entry(who.to_string()).or_default();
        if list.contains(&number) {
            return true;
        }
        if max.is_some_and(|max| list.len() >= max as usize) {
            return false;
        }
        list.push(number);
        true
    }

    pub(super) fn release(&self, who: &str, number: AccountNo) {
        if let Some(list) = self.members.write().get_mut(who) {
            list.retain(|n| *n != number);
        }
    }

    /// The members of `member`'s person (itself included).
    pub(super) fn siblings(&self, who: &str) -> Vec<AccountNo> {
        self.members.read().get(who).cloned().unwrap_or_default()
    }

    /// Calls `f` with each member of the person (no copy of the list).
    pub(super) fn for_each_sibling(&self, who: &str, f: impl FnMut(AccountNo)) {
        if let Some(list) = self.members.read().get(who) {
            list.iter().copied().for_each(f);
        }
    }

    pub(super) fn status(&self, number: AccountNo) -> MemberStatus {
        self.statuses
            .read()
            .get(&number)
            .map_or(MemberStatus::Active, |s| s.0)
    }
}

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
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .engine()
                .records(prefix.clone(), after.take(), RECORDS_PAGE_MAX)
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(out);
            };
            after = Some(last.clone());
            for (key, value) in page {
                if !key.starts_with(&prefix) {
                    return Ok(out);
                }
                out.push(postcard::from_bytes(&value).map_err(|e| {
                    LedgerError::MemberRecord(format!("{}: {e}", String::from_utf8_lossy(&key)))
                })?);
            }
        }
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
    let mut after = None;
    loop {
        let page = ledger
            .engine()
            .records(LOG_PREFIX.to_vec(), after.take(), RECORDS_PAGE_MAX)
            .await?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        for (key, value) in page {
            let bad = |e: String| {
                LedgerError::MemberRecord(format!("{}: {e}", String::from_utf8_lossy(&key)))
            };
            let event: MemberEvent =
                postcard::from_bytes(&value).map_err(|e| bad(e.to_string()))?;
            let number = std::str::from_utf8(&key[LOG_PREFIX.len()..])
                .ok()
                .and_then(|rest| rest.split('/').next())
                .and_then(|n| AccountNo::parse(n).ok())
                .ok_or_else(|| bad("not a member number".into()))?;
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
    }
}
