//! A shard: an actor that owns its accounts and details outright.
//!
//! The coordinator sends it whole batches (one message per batch, never one
//! per leg). The shard applies its own legs of every group (a transaction or
//! a linked chain) in batch order, speculatively assuming every earlier group
//! commits, and answers with its refusals. If another shard refuses a group
//! this shard accepted, the coordinator asks for a repair: roll back to just
//! before that group, exclude it, and re-run the rest. `Commit` makes the
//! batch final. Reads are only sent between batches, so they never see
//! speculative state.
//!
//! Invariants: a shard only ever touches accounts that route to it; after
//! each group every detail chain still links (pre of each = post of the
//! previous); no shard reads another shard's table.

mod day;

use crate::account::{next_version, AccountError, AccountState, AccountStatus, NO_DETAIL};
use crate::checkpoint::{self, chunk_name, ShardState};
use crate::command::{Command, OpenSpec, SeqTxn};
use crate::detail::{Detail, DetailCursor, DetailKind, DetailPage, DetailQuery, DETAIL_PAGE_MAX};
use crate::grow::{ChunkedVec, PagedVec, CHUNK_LEN};
use crate::routing::shard_of;
use crate::state::{AccountsPart, ShardSnapshot};
use crate::txn::Reject;
use crate::types::{AccountId, AccountingDate, Currency, Minor, Side, Timestamp, Version};
use crossbeam_channel::{Receiver, Sender};
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use tally_storage::BlobStore;
use tokio::sync::oneshot;

/// A run of commands that commit together: one transaction, or a chain of
/// linked ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    pub start: u32,
    pub end: u32,
    /// Shards with at least one leg in the group.
    pub mask: u64,
}

/// A batch as the shards see it: commands in order, split into groups.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub commands: Vec<Command>,
    pub groups: Vec<Group>,
    /// The accounting date of the commands before the first cut (`None`:
    /// no day was ever closed, the date follows the timestamp).
    pub date: Option<AccountingDate>,
    /// Each effective `CloseDay` of the batch: its position and the date
    /// open after it, in order.
    pub cuts: Vec<(u32, AccountingDate)>,
}

impl Batch {
    /// `open` is the accounting date open before the batch. A `CloseDay`
    /// cuts only the date that is open (another is a no-op, decided the
    /// same way at replay), so two closes of one day in a batch cut once.
    pub fn new(commands: Vec<Command>, open: Option<AccountingDate>) -> Batch {
        let mut groups = Vec::new();
        let mut cuts = Vec::new();
        let mut now_open = open;
        let mut start = 0usize;
        let mut mask = 0u64;
        for (i, command) in commands.iter().enumerate() {
            if let Command::CloseDay { date } = command {
                if now_open.is_none_or(|d| d == *date) {
                    now_open = Some(date.next());
                    cuts.push((i as u32, date.next()));
                }
            }
            mask |= command.shard_mask();
            if !command.linked() || i + 1 == commands.len() {
                groups.push(Group {
                    start: start as u32,
                    end: i as u32 + 1,
                    mask,
                });
                start = i + 1;
                mask = 0;
            }
        }
        Batch {
            commands,
            groups,
            date: open,
            cuts,
        }
    }

    /// The accounting date open at command `index` (`None`: by timestamp).
    pub fn date_of(&self, index: u32) -> Option<AccountingDate> {
        let before = self.cuts.partition_point(|&(at, _)| at < index);
        match before {
            0 => self.date,
            n => self.cuts.get(n - 1).map(|&(_, date)| date),
        }
    }

    pub fn mask(&self) -> u64 {
        self.groups.iter().fold(0, |m, g| m | g.mask)
    }
}

/// Why a shard refused a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CmdError {
    Txn(Reject),
    Account(AccountError),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub group: u32,
    pub command: u32,
    pub error: CmdError,
}

/// A shard's answer to `Execute` or `Repair`: its refusals, in group order.
#[derive(Debug)]
pub(crate) struct Vote {
    pub shard: u16,
    pub refusals: Vec<Refusal>,
}

/// A read that may reach cold details fails with the store's reason.
pub(crate) type ColdResult<T> = Result<T, String>;

pub(crate) enum Read {
    /// A slice of a closed date's scan, from an account slot.
    Day(crate::day::DayScan, oneshot::Sender<crate::day::DayPart>),
    Statement(
        AccountId,
        crate::AccountingDate,
        oneshot::Sender<ColdResult<Option<crate::day::Statement>>>,
    ),
    Account(AccountId, oneshot::Sender<Option<crate::AccountView>>),
    Details(DetailQuery, oneshot::Sender<ColdResult<Option<DetailPage>>>),
    BalanceAt(
        AccountId,
        Timestamp,
        oneshot::Sender<ColdResult<Option<Decimal>>>,
    ),
    /// The details of each transaction stamped at these timestamps, in order.
    TxnDetails(
        Vec<Timestamp>,
        oneshot::Sender<ColdResult<Vec<Vec<crate::DetailView>>>>,
    ),
    Audit(oneshot::Sender<ShardAudit>),
    /// How many accounts the shard holds.
    AccountCount(oneshot::Sender<u64>),
}

pub(crate) enum ShardMsg {
    Execute(Arc<Batch>),
    Repair {
        from_group: u32,
    },
    Commit,
    Read(Read),
    /// Between batches: the shard's part of a checkpoint, with the full
    /// detail chunks from `from_chunk` on; every account if `full`, else
    /// the accounts changed since the last one.
    Checkpoint {
        from_chunk: u32,
        full: bool,
        reply: Sender<Result<ShardSnapshot, String>>,
    },
    /// At open, before any batch: take the state a checkpoint recorded.
    Restore(Box<RestoreState>, Sender<Result<(), String>>),
    /// A checkpoint holding the first `persisted` full chunks is durable:
    /// all but the newest `hot` of them may leave memory.
    Evict {
        persisted: u32,
    },
    /// Fault injection: the shard thread panics (see
    /// `Engine::crash_shard_for_tests`).
    Crash,
}

/// A checkpoint's shard state, the number of full chunks left cold in the
/// store, and the hot chunks after them.
pub(crate) type RestoreState = (ShardState, u32, Vec<Vec<Detail>>);

/// The slots changed since the last checkpoint, each once.
#[derive(Default)]
struct ChangedSlots {
    bits: Vec<u64>,
    slots: Vec<u32>,
}

impl ChangedSlots {
    fn mark(&mut self, slot: u32) {
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & bit == 0 {
            self.bits[word] |= bit;
            self.slots.push(slot);
        }
    }

    /// The slots marked, ascending; starts over.
    fn take(&mut self) -> Vec<u32> {
        let mut slots = std::mem::take(&mut self.slots);
        for &slot in &slots {
            self.bits[slot as usize / 64] = 0;
        }
        slots.sort_unstable();
        slots
    }
}

/// What a shard reports for the engine-wide audit.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShardAudit {
    /// Per currency: Σ credit-normal balances − Σ debit-normal balances, and
    /// the same for pending (incoming − reserved, signed alike).
    pub net: Vec<(Currency, u8, i128, i128)>,
    pub accounts: u64,
    pub details: u64,
    pub below_floor: Vec<AccountId>,
    pub broken_chains: Vec<AccountId>,
    pub digest: u64,
    /// Why cold details could not be read, if they could not.
    pub unreadable: Option<String>,
}

/// Cold detail chunks, read back from the store on demand, the last few
/// kept decoded.
struct Cold {
    store: Option<Arc<dyn BlobStore>>,
    /// Chunks past the online window, and where they are (`tier.rs`).
    tier: Option<Arc<crate::tier::ColdStore>>,
    shard: u16,
    cache: RefCell<VecDeque<(u32, Arc<Vec<Detail>>)>>,
}

/// An account's versions between two skip entries (see `Shard::skips`).
pub(crate) const SKIP_EVERY: u64 = 256;

/// Decoded cold chunks kept per shard (16K details, 1.5 MB each).
const COLD_CACHE_CHUNKS: usize = 8;

impl Cold {
    /// A chunk from wherever it lives: the cold store if it names it,
    /// else its online blob. A chunk moved between the two look-ups (the
    /// checkpoint thread publishes its new place, then deletes the blob)
    /// is looked up in the cold store again.
    fn load(&self, chunk: u32) -> ColdResult<Arc<Vec<Detail>>> {
        let from_tier = |tier: &Option<Arc<crate::tier::ColdStore>>| {
            tier.as_ref()
                .and_then(|t| t.read(self.shard, chunk))
                .map(|read| read.map(Arc::new))
        };
        if let Some(read) = from_tier(&self.tier) {
            return read;
        }
        let name = || format!("shard {} detail chunk {chunk}", self.shard);
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| format!("{}: no store to read it from", name()))?;
        let found = store
            .get(&chunk_name(self.shard, chunk))
            .map_err(|e| format!("{}: {e}", name()))?;
        let bytes = match found {
            Some(bytes) => bytes,
            None => match from_tier(&self.tier) {
                Some(read) => return read,
                None => return Err(format!("{}: missing from the store", name())),
            },
        };
        let details: Vec<Detail> =
            checkpoint::decode(&bytes).map_err(|e| format!("{}: {e}", name()))?;
        if details.len() != CHUNK_LEN {
            return Err(format!(
                "{}: {} details, not {CHUNK_LEN}",
                name(),
                details.len()
            ));
        }
        Ok(Arc::new(details))
    }

    /// A cold chunk, from the cache or the store.
    fn chunk(&self, chunk: u32) -> ColdResult<Arc<Vec<Detail>>> {
        let mut cache = self.cache.borrow_mut();
        if let Some(at) = cache.iter().position(|(c, _)| *c == chunk) {
            let hit = cache.remove(at).ok_or("cache position vanished")?;
            let details = hit.1.clone();
            cache.push_back(hit);
            return Ok(details);
        }
        let details = self.load(chunk)?;
        if cache.len() >= COLD_CACHE_CHUNKS {
            cache.pop_front();
        }
        cache.push_back((chunk, details.clone()));
        Ok(details)
    }
}

/// An account's running state in the audit's forward scan.
struct Running {
    post: i64,
    version: u64,
    last: u32,
    /// Skip entries met so far (see `Shard::skips`).
    skips: usize,
    hash: Fnv,
    broken: bool,
}

enum Undo {
    Changed { slot: u32, old: AccountState },
    Created { slot: u32 },
}

/// Where the shard stood when it started a group, to roll back to.
#[derive(Clone, Copy)]
struct Mark {
    group: u32,
    undo: usize,
    details: usize,
}

pub(crate) struct Shard {
    id: u16,
    /// The engine's shard count (to check that restored accounts route here).
    shards: u16,
    utc_offset_s: i64,
    /// Copy-on-write pages: a checkpoint takes them by reference.
    accounts: PagedVec<AccountState>,
    /// Accounts changed since the last checkpoint took its part.
    changed: ChangedSlots,
    /// Per busy account (by slot): every `SKIP_EVERY`-th version's detail,
    /// (timestamp, position), oldest first, so that a read of an old time
    /// range starts its walk near the range instead of at the newest detail.
    skips: FxHashMap<u32, Vec<(Timestamp, u32)>>,
    index: FxHashMap<AccountId, u32>,
    details: ChunkedVec<Detail>,
    /// The last timestamp of each full chunk a checkpoint has taken (cold
    /// chunks are found by time without loading them).
    full_last_ts: Vec<Timestamp>,
    cold: Cold,
    /// Full chunks kept in memory once persisted.
    hot_chunks: u32,
    batch: Option<Arc<Batch>>,
    undo: Vec<Undo>,
    marks: Vec<Mark>,
    excluded: Vec<u32>,
}

const NANOS_PER_S: i64 = 1_000_000_000;

pub(crate) fn accounting_date(ts: Timestamp, utc_offset_s: i64) -> AccountingDate {
    let secs = i64::try_from(ts.0 / NANOS_PER_S as u64).unwrap_or(i64::MAX) + utc_offset_s;
    AccountingDate(i32::try_from(secs.div_euclid(86_400)).unwrap_or(i32::MAX))
}

impl Shard {
    /// `store` holds the cold chunks (`None`: details never leave memory).
    pub fn new(
        id: u16,
        shards: u16,
        utc_offset_s: i64,
        store: Option<Arc<dyn BlobStore>>,
        tier: Option<Arc<crate::tier::ColdStore>>,
        hot_chunks: u32,
    ) -> Shard {
        Shard {
            id,
            shards,
            utc_offset_s,
            accounts: PagedVec::default(),
            changed: ChangedSlots::default(),
            skips: FxHashMap::default(),
            index: FxHashMap::default(),
            details: ChunkedVec::default(),
            full_last_ts: Vec::new(),
            cold: Cold {
                store,
                tier,
                shard: id,
                cache: RefCell::new(VecDeque::new()),
            },
            hot_chunks,
            batch: None,
            undo: Vec::new(),
            marks: Vec::new(),
            excluded: Vec::new(),
        }
    }

    /// The actor loop: runs until the coordinator drops its sender.
    pub fn run(mut self, rx: Receiver<ShardMsg>, votes: Sender<Vote>) {
        for msg in rx {
            match msg {
                ShardMsg::Execute(batch) => {
                    let refusals = self.execute(batch);
                    if votes
                        .send(Vote {
                            shard: self.id,
                            refusals,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                ShardMsg::Repair { from_group } => {
                    let refusals = self.repair(from_group);
                    if votes
                        .send(Vote {
                            shard: self.id,
                            refusals,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                ShardMsg::Commit => self.commit(),
                ShardMsg::Crash => panic!("shard {} crashed on request (fault injection)", self.id),
                ShardMsg::Read(read) => self.read(read),
                ShardMsg::Checkpoint {
                    from_chunk,
                    full,
                    reply,
                } => {
                    let _ = reply.send(self.snapshot(from_chunk, full));
                }
                ShardMsg::Restore(state, reply) => {
                    let _ = reply.send(self.restore(*state));
                }
                ShardMsg::Evict { persisted } => self.evict(persisted),
            }
        }
    }

    pub fn execute(&mut self, batch: Arc<Batch>) -> Vec<Refusal> {
        debug_assert!(
            self.batch.is_none(),
            "a batch must be committed before the next"
        );
        self.batch = Some(batch);
        self.run_from(0)
    }

    pub fn repair(&mut self, from_group: u32) -> Vec<Refusal> {
        let at = self.marks.partition_point(|m| m.group < from_group);
        if let Some(&mark) = self.marks.get(at) {
            self.rollback(mark.undo, mark.details);
            self.marks.truncate(at);
        }
        debug_assert!(self.excluded.last().is_none_or(|&g| g < from_group));
        self.excluded.push(from_group);
        self.run_from(from_group)
    }

    fn snapshot(&mut self, from_chunk: u32, all_accounts: bool) -> Result<ShardSnapshot, String> {
        let full = self.details.full_chunks();
        // Chunks not yet persisted are never cold.
        let chunks = (from_chunk as usize..full)
            .map(|c| {
                let chunk = self.details.shared_chunk(c);
                Ok((
                    c as u32,
                    chunk.ok_or("a full chunk to take is not in memory")?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        for c in self.full_last_ts.len()..full {
            let last = self.details.chunk(c).last().map(|d| d.timestamp);
            self.full_last_ts
                .push(last.ok_or("a full chunk to take is not in memory")?);
        }
        let changed = self.changed.take();
        let accounts = if all_accounts {
            AccountsPart::Full(self.accounts.pages())
        } else {
            AccountsPart::Delta {
                changed: changed
                    .into_iter()
                    .filter_map(|slot| Some((slot, *self.accounts.get(slot as usize)?)))
                    .collect(),
                len: u32::try_from(self.accounts.len()).map_err(|_| "too many accounts")?,
            }
        };
        let mut skips: Vec<checkpoint::SkipEntry> = self
            .skips
            .iter()
            .flat_map(|(&slot, entries)| entries.iter().map(move |&(ts, at)| (slot, ts, at)))
            .collect();
        skips.sort_unstable_by_key(|&(slot, _, at)| (slot, at));
        Ok(ShardSnapshot {
            accounts,
            skips,
            tail: self.details.chunk(full).to_vec(),
            full_last_ts: self.full_last_ts.clone(),
            chunks,
            full_chunks: u32::try_from(full).map_err(|_| "too many detail chunks")?,
        })
    }

    fn restore(&mut self, (state, cold, chunks): RestoreState) -> Result<(), String> {
        if !self.accounts.is_empty() || self.details.len() > 0 {
            return Err("restore into a shard that already has state".into());
        }
        for _ in 0..cold {
            self.details.push_cold_chunk()?;
        }
        for chunk in chunks.into_iter().chain(std::iter::once(state.tail)) {
            self.details.push_chunk(chunk)?;
        }
        if state.full_last_ts.len() != self.details.full_chunks() {
            return Err("chunk bounds do not match the chunks".into());
        }
        self.full_last_ts = state.full_last_ts;
        for (slot, ts, at) in state.skips {
            if slot as usize >= state.accounts.len() || at as usize >= self.details.len() {
                return Err(format!("skip entry ({slot}, {at}) points past the state"));
            }
            self.skips.entry(slot).or_default().push((ts, at));
        }
        for (slot, account) in state.accounts.iter().enumerate() {
            if shard_of(account.id, self.shards).0 != self.id {
                return Err(format!(
                    "account {} does not belong to shard {}",
                    account.id.0, self.id
                ));
            }
            if account.last_detail != NO_DETAIL
                && account.last_detail as usize >= self.details.len()
            {
                return Err(format!("account {} points past the details", account.id.0));
            }
            self.index.insert(account.id, slot as u32);
        }
        self.accounts = PagedVec::from_vec(state.accounts);
        Ok(())
    }

    fn evict(&mut self, persisted: u32) {
        let persisted = (persisted as usize).min(self.full_last_ts.len());
        self.details
            .evict_before(persisted.saturating_sub(self.hot_chunks as usize));
    }

    pub fn commit(&mut self) {
        self.batch = None;
        self.undo.clear();
        self.marks.clear();
        self.excluded.clear();
    }

    fn run_from(&mut self, from_group: u32) -> Vec<Refusal> {
        let Some(batch) = self.batch.clone() else {
            return Vec::new();
        };
        let bit = 1u64 << self.id;
        let mut refusals = Vec::new();
        for (g, group) in batch.groups.iter().enumerate().skip(from_group as usize) {
            let g = g as u32;
            if group.mask & bit == 0 || self.excluded.binary_search(&g).is_ok() {
                continue;
            }
            let mark = Mark {
                group: g,
                undo: self.undo.len(),
                details: self.details.len(),
            };
            self.marks.push(mark);
            let commands = &batch.commands[group.start as usize..group.end as usize];
            for (i, command) in commands.iter().enumerate() {
                let date = batch.date_of(group.start + i as u32);
                if let Err(error) = self.apply(command, date) {
                    self.rollback(mark.undo, mark.details);
                    refusals.push(Refusal {
                        group: g,
                        command: group.start + i as u32,
                        error,
                    });
                    break;
                }
            }
        }
        refusals
    }

    fn rollback(&mut self, undo_len: usize, details_len: usize) {
        while self.undo.len() > undo_len {
            match self.undo.pop() {
                Some(Undo::Changed { slot, old }) => {
                    if let Some(account) = self.accounts.get_mut(slot as usize) {
                        *account = old;
                    }
                    if let Some(skips) = self.skips.get_mut(&slot) {
                        while skips
                            .last()
                            .is_some_and(|&(_, at)| at as usize >= details_len)
                        {
                            skips.pop();
                        }
                    }
                }
                Some(Undo::Created { slot }) => {
                    self.skips.remove(&slot);
                    debug_assert_eq!(slot as usize + 1, self.accounts.len());
                    if let Some(account) = self.accounts.pop() {
                        self.index.remove(&account.id);
                    }
                }
                None => break,
            }
        }
        self.details.truncate(details_len);
    }

    /// `date`: the accounting date open at this command (`None`: no day
    /// was ever closed; the date follows the timestamp, as before closes).
    fn apply(&mut self, command: &Command, date: Option<AccountingDate>) -> Result<(), CmdError> {
        match command {
            Command::Txn(t) => {
                let date = date.unwrap_or_else(|| accounting_date(t.timestamp, self.utc_offset_s));
                self.apply_txn(t, date).map_err(CmdError::Txn)
            }
            Command::Open(spec) => self.open(spec).map_err(CmdError::Account),
            // Never sent here: records and refusals touch no shard.
            Command::Record { .. } | Command::Refuse { .. } | Command::CloseDay { .. } => Ok(()),
            Command::SetStatus {
                account, status, ..
            } => self
                .set_status(*account, *status)
                .map_err(CmdError::Account),
        }
    }

    fn apply_txn(&mut self, t: &SeqTxn, date: AccountingDate) -> Result<(), Reject> {
        for (i, leg) in t.legs.iter().enumerate() {
            if leg.shard != self.id {
                continue;
            }
            let leg_no = i as u16;
            let Some(&slot) = self.index.get(&leg.account) else {
                return Err(Reject::AccountNotFound {
                    leg: leg_no,
                    account: leg.account,
                });
            };
            self.changed.mark(slot);
            let Some(account) = self.accounts.get_mut(slot as usize) else {
                return Err(Reject::AccountNotFound {
                    leg: leg_no,
                    account: leg.account,
                });
            };
            let expected = leg.expected_version.map(Version);
            account.check(
                leg_no,
                leg.side,
                leg.bucket,
                leg.amount,
                leg.op,
                leg.currency,
                expected,
            )?;
            // Checked arithmetic on a copy: an overflow refuses the leg
            // and leaves the account as it was.
            let mut next = *account;
            next.roll_date(date);
            let applied = next.apply(leg_no, leg.side, leg.bucket, leg.amount, leg.op)?;
            self.undo.push(Undo::Changed {
                slot,
                old: *account,
            });
            *account = next;
            let prev = account.last_detail;
            account.last_detail = u32::try_from(self.details.len()).unwrap_or(NO_DETAIL - 1);
            let amount = match leg.op {
                crate::account::LegOp::Release { reserved } => reserved.0,
                _ => leg.amount,
            };
            self.details.push(Detail {
                txn: t.id,
                account: leg.account,
                timestamp: t.timestamp,
                amount,
                balance_pre: applied.balance_pre,
                balance_post: applied.balance_post,
                version: account.version,
                prev,
                code: t.code,
                date,
                leg: leg_no,
                side: leg.side,
                bucket: leg.bucket,
                kind: DetailKind::of(leg.op),
                scale: account.scale,
            });
            if account.version.is_multiple_of(SKIP_EVERY) {
                let at = account.last_detail;
                self.skips.entry(slot).or_default().push((t.timestamp, at));
            }
        }
        Ok(())
    }

    fn open(&mut self, spec: &OpenSpec) -> Result<(), AccountError> {
        debug_assert_eq!(spec.shard, self.id);
        let new = crate::account::NewAccount {
            id: spec.id,
            currency: spec.currency,
            subject: spec.subject,
            kind: spec.kind,
            normal_side: spec.normal_side,
            allow_negative: spec.allow_negative,
            credit_limit: Decimal::ZERO,
        };
        if let Some(existing) = self.account(spec.id) {
            return if existing.matches(&new, spec.credit_limit) {
                Ok(())
            } else {
                Err(AccountError::ExistsWithDifferentAttributes(spec.id))
            };
        }
        let slot = u32::try_from(self.accounts.len()).unwrap_or(u32::MAX);
        self.accounts
            .push(AccountState::open(&new, spec.scale, spec.credit_limit));
        self.index.insert(spec.id, slot);
        self.changed.mark(slot);
        self.undo.push(Undo::Created { slot });
        Ok(())
    }

    fn set_status(&mut self, id: AccountId, status: AccountStatus) -> Result<(), AccountError> {
        let slot = *self.index.get(&id).ok_or(AccountError::NotFound(id))?;
        self.changed.mark(slot);
        let account = self
            .accounts
            .get_mut(slot as usize)
            .ok_or(AccountError::NotFound(id))?;
        let dec = |v: i64| Minor(v).to_decimal(u32::from(account.scale));
        if account.status == AccountStatus::Closed {
            return Err(AccountError::Closed(id));
        }
        if status == AccountStatus::Closed {
            if account.reserved != 0 || account.incoming != 0 {
                let (reserved, incoming) = (dec(account.reserved), dec(account.incoming));
                return Err(AccountError::HasPending {
                    account: id,
                    reserved,
                    incoming,
                });
            }
            if account.balance != 0 {
                return Err(AccountError::HasBalance {
                    account: id,
                    balance: dec(account.balance),
                });
            }
        }
        if account.status == status {
            return Ok(());
        }
        let version = next_version(account.version).ok_or(AccountError::VersionOverflow(id))?;
        self.undo.push(Undo::Changed {
            slot,
            old: *account,
        });
        account.status = status;
        account.version = version;
        Ok(())
    }

    fn account(&self, id: AccountId) -> Option<&AccountState> {
        self.slot_of(id).map(|(_, account)| account)
    }

    /// A detail by position, read from the store if its chunk is cold.
    fn detail(&self, at: u32) -> ColdResult<Option<Detail>> {
        if let Some(d) = self.details.get(at as usize) {
            return Ok(Some(*d));
        }
        let chunk = at as usize / CHUNK_LEN;
        if chunk >= self.details.first_hot() || at as usize >= self.details.len() {
            return Ok(None);
        }
        let details = self.cold.chunk(chunk as u32)?;
        Ok(details.get(at as usize % CHUNK_LEN).copied())
    }

    /// Where a walk back to details before a time may start: the account's
    /// oldest skip entry that is already `past` it, else its newest detail.
    /// Every detail newer than the start is past it too.
    fn walk_start(
        &self,
        slot: u32,
        account: &AccountState,
        past: impl Fn(Timestamp) -> bool,
    ) -> u32 {
        let skips = self.skip_entries(slot);
        let first_past = skips.partition_point(|&(ts, _)| !past(ts));
        skips
            .get(first_past)
            .map_or(account.last_detail, |&(_, at)| at)
    }

    /// An account's skip entries, oldest first (none if it is not busy).
    fn skip_entries(&self, slot: u32) -> &[(Timestamp, u32)] {
        self.skips.get(&slot).map_or(&[], Vec::as_slice)
    }

    /// An account and its slot.
    fn slot_of(&self, id: AccountId) -> Option<(u32, &AccountState)> {
        let &slot = self.index.get(&id)?;
        Some((slot, self.accounts.get(slot as usize)?))
    }

    /// Visits details newest first along their account's chain, from the
    /// one at `start`.
    fn walk_from(&self, start: u32, mut visit: impl FnMut(&Detail) -> bool) -> ColdResult<()> {
        let mut next = start;
        while let Some(detail) = self.detail(next)? {
            if !visit(&detail) {
                break;
            }
            next = detail.prev;
        }
        Ok(())
    }

    fn read(&self, read: Read) {
        // A caller that stopped waiting is not an error.
        match read {
            Read::Account(id, reply) => {
                let _ = reply.send(self.account(id).map(AccountState::view));
            }
            Read::Details(query, reply) => {
                let _ = reply.send(self.details_page(&query));
            }
            Read::BalanceAt(id, at, reply) => {
                let _ = reply.send(self.balance_at(id, at));
            }
            Read::TxnDetails(stamps, reply) => {
                let _ = reply.send(stamps.into_iter().map(|at| self.details_at(at)).collect());
            }
            Read::Audit(reply) => {
                let _ = reply.send(self.audit());
            }
            Read::Day(scan, reply) => {
                let _ = reply.send(self.scan_day(scan));
            }
            Read::Statement(id, date, reply) => {
                let _ = reply.send(self.statement(id, date));
            }
            Read::AccountCount(reply) => {
                let _ = reply.send(self.accounts.len() as u64);
            }
        }
    }

    fn details_page(&self, q: &DetailQuery) -> ColdResult<Option<DetailPage>> {
        let Some((slot, account)) = self.slot_of(q.account) else {
            return Ok(None);
        };
        let limit = q.limit.clamp(1, DETAIL_PAGE_MAX);
        let after = q.after.unwrap_or(DetailCursor {
            timestamp: Timestamp(0),
            leg: 0,
        });
        let in_range = |d: &Detail| {
            d.timestamp >= q.from
                && d.timestamp < q.to
                && (q.after.is_none()
                    || DetailCursor {
                        timestamp: d.timestamp,
                        leg: d.leg,
                    } > after)
        };
        // The page is the oldest `limit` details after the cursor; the
        // chain runs newest to oldest. Walk back from a skip entry just past
        // the cursor, then from ones further on (doubling the step) until a
        // walk collects more than a page, or from the last start that can
        // matter: the first skip entry past `to`, else the newest detail.
        // So a page costs about a page and a skip interval, not the range.
        let skips = self.skip_entries(slot);
        let lower = match q.after {
            Some(cursor) => cursor.timestamp.max(q.from),
            None => q.from,
        };
        let first = skips.partition_point(|&(ts, _)| ts <= lower);
        let past_to = skips.partition_point(|&(ts, _)| ts < q.to).max(first);
        let last_start = skips
            .get(past_to)
            .map_or(account.last_detail, |&(_, at)| at);
        let mut picked: Vec<Detail> = Vec::new();
        let (mut i, mut step) = (first, 1usize);
        loop {
            let (start, last) = match skips.get(i) {
                Some(&(_, at)) if i < past_to => (at, false),
                _ => (last_start, true),
            };
            picked.clear();
            self.walk_from(start, |d| {
                let older_than_wanted =
                    d.timestamp < q.from || (q.after.is_some() && d.timestamp < after.timestamp);
                if older_than_wanted {
                    return false;
                }
                if in_range(d) {
                    picked.push(*d);
                }
                true
            })?;
            if last || picked.len() > limit {
                break;
            }
            i += step;
            step *= 2;
        }
        picked.reverse();
        let more = picked.len() > limit;
        picked.truncate(limit);
        let next = if more {
            picked.last().map(|d| DetailCursor {
                timestamp: d.timestamp,
                leg: d.leg,
            })
        } else {
            None
        };
        Ok(Some(DetailPage {
            details: picked.iter().map(Detail::view).collect(),
            next,
        }))
    }

    fn balance_at(&self, id: AccountId, at: Timestamp) -> ColdResult<Option<Decimal>> {
        let Some((slot, account)) = self.slot_of(id) else {
            return Ok(None);
        };
        let mut units = 0;
        let start = self.walk_start(slot, account, |ts| ts > at);
        self.walk_from(start, |d| {
            if d.timestamp <= at {
                units = d.balance_post;
                return false;
            }
            true
        })?;
        Ok(Some(Minor(units).to_decimal(u32::from(account.scale))))
    }

    /// The details written at `at` (one transaction's, on this shard).
    fn details_at(&self, at: Timestamp) -> ColdResult<Vec<crate::DetailView>> {
        let first_hot = self.details.first_hot();
        let cold_bounds = self.full_last_ts.get(..first_hot).unwrap_or(&[]);
        let chunk = cold_bounds.partition_point(|&last| last < at);
        let mut start = if chunk < first_hot {
            let details = self.cold.chunk(chunk as u32)?;
            chunk * CHUNK_LEN + details.partition_point(|d| d.timestamp < at)
        } else {
            self.details.partition_point(|d| d.timestamp < at)
        };
        let mut found = Vec::new();
        while let Some(d) = self.detail(start as u32)? {
            if d.timestamp != at {
                break;
            }
            found.push(d.view());
            start += 1;
        }
        Ok(found)
    }

    /// Checks every account's chain in one forward pass over the details
    /// (cold chunks read once each, in order): each detail's pre-balance is
    /// the account's previous post-balance, its version is higher, its link
    /// points at the previous one, and the last one matches the account.
    fn audit(&self) -> ShardAudit {
        let mut audit = ShardAudit {
            accounts: self.accounts.len() as u64,
            details: self.details.len() as u64,
            ..ShardAudit::default()
        };
        let mut running: Vec<Running> = self
            .accounts
            .iter()
            .map(|a| {
                let mut hash = Fnv::new();
                hash.u64(a.id.0);
                Running {
                    post: 0,
                    version: 0,
                    last: NO_DETAIL,
                    skips: 0,
                    hash,
                    broken: false,
                }
            })
            .collect();
        let chunks = self.details.len().div_ceil(CHUNK_LEN);
        for c in 0..chunks {
            let cold;
            let details: &[Detail] = if c < self.details.first_hot() {
                match self.cold.load(c as u32) {
                    Ok(loaded) => {
                        cold = loaded;
                        &cold
                    }
                    Err(reason) => {
                        audit.unreadable = Some(reason);
                        return audit;
                    }
                }
            } else {
                self.details.chunk(c)
            };
            for (i, d) in details.iter().enumerate() {
                let at = (c * CHUNK_LEN + i) as u32;
                let Some(&slot) = self.index.get(&d.account) else {
                    audit.broken_chains.push(d.account);
                    continue;
                };
                let r = &mut running[slot as usize];
                if d.balance_pre != r.post || d.version <= r.version || d.prev != r.last {
                    r.broken = true;
                }
                if d.version.is_multiple_of(SKIP_EVERY) {
                    let entry = self.skips.get(&slot).and_then(|s| s.get(r.skips));
                    if entry != Some(&(d.timestamp, at)) {
                        r.broken = true;
                    }
                    r.skips += 1;
                }
                r.post = d.balance_post;
                r.version = d.version;
                r.last = at;
                hash_detail(&mut r.hash, d);
            }
        }
        for (slot, (account, r)) in self.accounts.iter().zip(running).enumerate() {
            let skips = self.skips.get(&(slot as u32)).map_or(0, Vec::len);
            let sign: i128 = if account.normal_side == Side::Credit {
                1
            } else {
                -1
            };
            let pending = i128::from(account.incoming) - i128::from(account.reserved);
            match audit.net.iter_mut().find(|n| n.0 == account.currency) {
                Some(n) => {
                    n.2 += sign * i128::from(account.balance);
                    n.3 += sign * pending;
                }
                None => audit.net.push((
                    account.currency,
                    account.scale,
                    sign * i128::from(account.balance),
                    sign * pending,
                )),
            }
            if account.floor().is_some_and(|floor| account.balance < floor) {
                audit.below_floor.push(account.id);
            }
            let ends_at_account = r.post == account.balance
                && r.last == account.last_detail
                && r.version <= account.version
                && r.skips == skips;
            if r.broken || !ends_at_account {
                audit.broken_chains.push(account.id);
            }
            let mut hash = r.hash;
            hash_account(&mut hash, account);
            audit.digest = audit.digest.wrapping_add(hash.finish());
        }
        audit.broken_chains.sort();
        audit.broken_chains.dedup();
        audit.net.sort_by_key(|n| n.0);
        audit
    }
}

/// What of an account enters the state digest, after its details.
fn hash_account(h: &mut Fnv, account: &AccountState) {
    for v in [
        account.balance,
        account.reserved,
        account.incoming,
        account.frozen,
        account.non_withdrawable,
        account.opening_balance,
    ] {
        h.u64(v as u64);
    }
    h.u64(account.version);
    h.u64(account.status as u64);
}

/// What of a detail enters the state digest, oldest first.
fn hash_detail(h: &mut Fnv, d: &Detail) {
    h.u64(d.txn.0 as u64);
    h.u64((d.txn.0 >> 64) as u64);
    h.u64(d.timestamp.0);
    h.u64(u64::from(d.leg) | (d.kind as u64) << 16 | (d.bucket as u64) << 24);
    h.u64(d.amount as u64);
    h.u64(d.balance_pre as u64);
    h.u64(d.balance_post as u64);
    h.u64(d.version);
    h.u64(u64::from(d.code.0));
}

/// FNV-1a, 64 bit: a stable hash for state digests (std's hasher is not
/// guaranteed stable across Rust releases).
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn u64(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(date: i32) -> Command {
        Command::CloseDay {
            date: AccountingDate(date),
        }
    }

    fn record() -> Command {
        Command::Record {
            key: b"k".to_vec(),
            value: Vec::new(),
        }
    }

    /// Each case: the date open before, the commands (`c` a close of the
    /// date, `r` a record), the date of each command, the cuts.
    #[test]
    fn a_batch_dates_each_command_by_the_cuts_before_it() {
        type Case = (Option<i32>, Vec<Command>, Vec<Option<i32>>, Vec<(u32, i32)>);
        let cases: Vec<Case> = vec![
            // No close: every command on the date open (or by timestamp).
            (
                Some(5),
                vec![record(), record()],
                vec![Some(5), Some(5)],
                vec![],
            ),
            (None, vec![record()], vec![None], vec![]),
            // A close of the date open cuts; what follows is the next date.
            (
                Some(5),
                vec![record(), close(5), record()],
                vec![Some(5), Some(5), Some(6)],
                vec![(1, 6)],
            ),
            // Before any close, a close cuts whatever date it names.
            (
                None,
                vec![close(9), record()],
                vec![None, Some(10)],
                vec![(0, 10)],
            ),
            // A second close of the same date is a no-op; the next one cuts.
            (
                Some(5),
                vec![close(5), close(5), record(), close(6), record()],
                vec![Some(5), Some(6), Some(6), Some(6), Some(7)],
                vec![(0, 6), (3, 7)],
            ),
            // A close of another date than the one open cuts nothing.
            (
                Some(5),
                vec![close(4), close(7), record()],
                vec![Some(5); 3],
                vec![],
            ),
        ];
        for (open, commands, dates, cuts) in cases {
            let batch = Batch::new(commands, open.map(AccountingDate));
            let got: Vec<Option<i32>> = (0..batch.commands.len() as u32)
                .map(|i| batch.date_of(i).map(|d| d.0))
                .collect();
            assert_eq!(got, dates, "open {open:?}");
            let got_cuts: Vec<(u32, i32)> = batch.cuts.iter().map(|&(i, d)| (i, d.0)).collect();
            assert_eq!(got_cuts, cuts, "open {open:?}");
        }
    }
}
