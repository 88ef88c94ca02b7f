//! The person behind members (rule 6 of issue 12): one real-name identity
//! (ID card number or credit code) may open several members; the ledger
//! knows which, caps how many (`[person] members_max`) and limits what
//! they pay together in a day (`[person] daily_max`, on top of each
//! member's level limits). This module holds the persons and members'
//! statuses and the lifecycle's types; `lifecycle.rs` makes the changes.

use super::account_no::AccountNo;
use super::member::{Member, MemberLevel, Party};
use super::template::AccountType;
use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use tally_engine::AccountStatus;
use tally_engine::Timestamp;

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
    pub(super) members: RwLock<FxHashMap<String, Vec<AccountNo>>>,
    /// Members not active, and each member's next event number.
    pub(super) statuses: RwLock<FxHashMap<AccountNo, (MemberStatus, u64)>>,
    /// One change at a time.
    pub(super) changing: tokio::sync::Mutex<()>,
    /// Some person has (or had) more than one member; until then a
    /// member's person-wide usage is its own, and charging a limit skips
    /// the person look-up (a measured cost of a storm). Set under the
    /// `members` write lock, read under its read lock; never cleared.
    pub(super) shared: std::sync::atomic::AtomicBool,
}

impl Persons {
    pub(super) fn from_members<'a>(members: impl Iterator<Item = &'a Member>) -> Persons {
        let persons = Persons::default();
        {
            let mut index = persons.members.write();
            for m in members {
                let list = index.entry(identity(&m.party)).or_default();
                list.push(m.number);
                if list.len() > 1 {
                    persons.shared.store(true, Ordering::Relaxed);
                }
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
        if list.len() > 1 {
            self.shared.store(true, Ordering::Relaxed);
        }
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

    pub(super) fn status(&self, number: AccountNo) -> MemberStatus {
        self.statuses
            .read()
            .get(&number)
            .map_or(MemberStatus::Active, |s| s.0)
    }
}
