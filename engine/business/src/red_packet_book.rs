//! What the ledger keeps about red packets (see `red_packet.rs` for what
//! it does with it): each red packet's state behind its own lock, the
//! claims waiting for it, and the product accounts the money waits in.

use super::account_no::{AccountClass, AccountNo};
use super::error::LedgerError;
use super::posted::Posted;
use super::subject::codes;
use dashmap::DashMap;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use tally_engine::{AccountId, AccountKind, Currency, NewAccount, Side, Timestamp, TxnId};

/// Red-packet product accounts (sub-accounts of one product number).
pub const RED_PACKET_SLOTS: u8 = 16;

/// The product number's serial (class internal, above every channel's).
pub(super) const RED_PACKET_SERIAL: u64 = 91_000_001;

/// A red packet as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedPacket {
    pub id: TxnId,
    pub sender: AccountNo,
    pub total: Decimal,
    pub count: u32,
    pub lucky: bool,
    /// Claims at or after this instant are refused; the sweep returns the
    /// rest then.
    pub deadline: Timestamp,
}

/// One claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub posted: Posted,
    /// Which packet (0-based, in claim order).
    pub index: u32,
    pub amount: Decimal,
}

/// What the ledger knows of a red packet; rebuilt from the engine when it
/// may be stale.
#[derive(Debug)]
pub(super) struct PacketState {
    pub(super) packet: RedPacket,
    /// Known from the engine (false after an error, until read again).
    pub(super) fresh: bool,
    pub(super) funded: bool,
    /// What the send took from the sender's non-withdrawable money.
    pub(super) nw_sent: Decimal,
    pub(super) claimants: HashSet<AccountNo>,
    pub(super) claimed: u32,
    pub(super) claimed_amount: Decimal,
    pub(super) claimed_nw: Decimal,
    /// Claim attempt ids used (committed or refused).
    pub(super) attempts: u64,
    pub(super) returned: Option<Decimal>,
    pub(super) return_attempts: u64,
    /// The red packet's parts (its split), once computed; empty before.
    pub(super) parts: Vec<i64>,
    /// Calls of claims planned and not yet applied, and their claimants.
    pub(super) flights: u32,
    pub(super) flying: HashSet<AccountNo>,
}

/// Every red packet the ledger knows, each behind its own lock (claims of
/// one red packet run one at a time; of different ones, side by side).
#[derive(Default)]
pub(super) struct RedPackets {
    pub(super) states: DashMap<TxnId, Arc<tokio::sync::Mutex<PacketState>>>,
    /// Claims waiting for the red packet's lock.
    pub(super) queues: DashMap<TxnId, Arc<parking_lot::Mutex<Vec<Waiting>>>>,
}

/// A queued claim and where its answer goes.
pub(super) struct Waiting {
    pub(super) claimant: AccountNo,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<Claimed, LedgerError>>,
}

impl PacketState {
    /// A red packet this ledger records now: nothing sent, claimed or
    /// returned yet.
    pub(super) fn new(packet: RedPacket) -> PacketState {
        PacketState {
            packet,
            fresh: true,
            funded: false,
            nw_sent: Decimal::ZERO,
            claimants: HashSet::new(),
            claimed: 0,
            claimed_amount: Decimal::ZERO,
            claimed_nw: Decimal::ZERO,
            attempts: 0,
            returned: None,
            return_attempts: 0,
            flights: 0,
            flying: HashSet::new(),
            parts: Vec::new(),
        }
    }
}

impl RedPackets {
    pub(super) fn get(&self, id: TxnId) -> Option<Arc<tokio::sync::Mutex<PacketState>>> {
        self.states.get(&id).map(|e| Arc::clone(e.value()))
    }

    pub(super) fn forget(&self, id: TxnId) {
        self.states.remove(&id);
        self.queues.remove_if(&id, |_, q| q.lock().is_empty());
    }
}

/// The product account a red packet's money waits in.
pub fn red_packet_account(id: TxnId) -> AccountId {
    let slot = (splitmix64(id.0 as u64 ^ (id.0 >> 64) as u64) % u64::from(RED_PACKET_SLOTS)) as u8;
    red_packet_slot(slot)
}

pub(super) fn red_packet_slot(slot: u8) -> AccountId {
    AccountNo::new(AccountClass::Internal, RED_PACKET_SERIAL)
        .unwrap_or(AccountNo::MIN_INTERNAL)
        .account_id(slot)
}

/// The red-packet product accounts.
pub(super) fn red_packet_accounts(currency: Currency) -> Vec<NewAccount> {
    (0..RED_PACKET_SLOTS)
        .map(|slot| NewAccount {
            id: red_packet_slot(slot),
            currency,
            subject: codes::RED_PACKETS,
            kind: AccountKind::Product,
            normal_side: Side::Credit,
            // Never pays out more than was sent into it.
            allow_negative: false,
            credit_limit: Decimal::ZERO,
        })
        .collect()
}

pub(super) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
