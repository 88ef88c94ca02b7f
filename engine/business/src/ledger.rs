//! The [`Ledger`]: the account system's service. It owns an [`Engine`], the
//! rules and the member registry; it checks every request (fields, account
//! numbers, members, limits, refund totals) before anything is submitted,
//! and turns it into one engine transaction.
//!
//! "Once only" and "never more than the original" are enforced through the
//! engine's idempotency, so they hold across restarts and concurrent
//! callers: a reversal's id is derived from the original's, so a second
//! reversal is the same transaction again; the n-th refund of an original
//! has an id derived from both, and refund n is accepted only when refunds
//! `0..n` have been sequenced and their committed total leaves room.

use super::account_no::{AccountClass, AccountNo};
use super::compiled::{summary_slot, CompiledRule};
use super::coupon_book::{Coupons, LedgerEvent, EVENTS_BUFFER};
use super::error::LedgerError;
use super::ids::{derived_id, TAG_REFUND, TAG_REVERSAL, TAG_SUMMARY};
use super::internal::Internal;
use super::member::{Member, MemberKind, MemberLevel, Party};
use super::person::{identity, identity_str, MemberStatus, Persons};
use super::posted::Posted;
use super::red_packet_book::RedPackets;
use super::rules::{AccountRef, BuildError, FieldType, RuleKind, RuleSet, Timing, TxnRule};
use super::subject::Chart;
use super::template::{self, AccountType};
use dashmap::DashMap;
use futures_util::future::join_all;
use parking_lot::{Mutex, RwLock};
use rust_decimal::{Decimal, RoundingStrategy};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tally_engine::RECORDS_PAGE_MAX;
use tally_engine::{AccountId, AccountingDate, Bucket, Side, Timestamp, TxnCode, TxnId};
use tally_engine::{AccountKind, AccountView, NewAccount};
use tally_engine::{Clock, SubmitError};
use tally_engine::{DetailKind, DetailQuery, DetailView, DETAIL_PAGE_MAX};
use tally_engine::{Engine, TxnView};
use tally_engine::{Leg, Outcome, Transaction, TxnKind, SUBMIT_TRANSACTIONS_MAX};

/// Refunds of one original, at most.
pub const REFUNDS_PER_TXN_MAX: u32 = 64;
/// Reversal attempts of one original (a refused attempt is final for its
/// id, so a retry after, say, a top-up uses the next), at most.
pub const REVERSAL_ATTEMPTS_MAX: u64 = 16;
/// Pages of details read to rebuild a member's daily usage, at most.
const USAGE_PAGES_MAX: usize = 1_000;
/// Members held in the registry, at most.
pub const MEMBERS_MAX: usize = 50_000_000;

/// Daily summaries of one internal account on one day, at most.
pub const SUMMARY_RUNS_MAX: u64 = 1_024;
const NS_PER_S: i64 = 1_000_000_000;

/// A request to post a transaction of the rule file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostRequest {
    /// The caller's idempotency key: the engine transaction's id.
    pub id: TxnId,
    /// The rule's name (`"pay"`).
    pub txn: String,
    /// Member fields: main account numbers as typed by the user.
    pub members: BTreeMap<String, String>,
    pub channels: BTreeMap<String, String>,
    pub amounts: BTreeMap<String, Decimal>,
    /// A pending rule's deadline, instead of the rule's.
    pub timeout_ms: Option<u64>,
}

impl PostRequest {
    pub fn new(id: TxnId, txn: &str) -> PostRequest {
        PostRequest {
            id,
            txn: txn.to_string(),
            members: BTreeMap::new(),
            channels: BTreeMap::new(),
            amounts: BTreeMap::new(),
            timeout_ms: None,
        }
    }

    pub fn member(mut self, field: &str, number: impl ToString) -> PostRequest {
        self.members.insert(field.to_string(), number.to_string());
        self
    }

    pub fn channel(mut self, field: &str, name: &str) -> PostRequest {
        self.channels.insert(field.to_string(), name.to_string());
        self
    }

    pub fn amount(mut self, field: &str, value: Decimal) -> PostRequest {
        self.amounts.insert(field.to_string(), value);
        self
    }

    pub fn timeout_ms(mut self, ms: u64) -> PostRequest {
        self.timeout_ms = Some(ms);
        self
    }
}

/// A request to open a member; the real-name number is checked here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenMember {
    /// The member's serial (from the customer system); fixes its number.
    pub serial: u64,
    pub kind: MemberKind,
    pub name: String,
    /// ID card number (natural person) or credit code (legal person).
    pub id_number: String,
    pub legal: bool,
    pub level: MemberLevel,
    pub verified: bool,
}

/// What a refund of one transaction needs.
struct RefundPlan<'a> {
    rule: &'a TxnRule,
    /// The original's `amount`: the most all its refunds may add up to.
    amount: Decimal,
    /// The original's fee, if its rule refunds it (pro rata); else zero.
    fee: Decimal,
    members: BTreeMap<String, AccountNo>,
    /// What the original took from each member account's non-withdrawable
    /// part: its refunds give that much back non-withdrawable first.
    non_withdrawable: BTreeMap<AccountId, Decimal>,
}

/// What the committed refunds before one have given back.
#[derive(Default)]
struct Refunded {
    amount: Decimal,
    non_withdrawable: BTreeMap<AccountId, Decimal>,
}

/// A call of more than `SUBMIT_TRANSACTIONS_MAX` requests: refused whole.
pub(super) fn check_call_len(len: usize) -> Result<(), LedgerError> {
    if len > SUBMIT_TRANSACTIONS_MAX {
        return Err(LedgerError::Engine(SubmitError::BatchTooLarge {
            len,
            max: SUBMIT_TRANSACTIONS_MAX,
        }));
    }
    Ok(())
}

/// The requests of a call in rounds: each key at most once a round, a
/// key's requests in the order given (the second request for one original
/// sees the first one's outcome, as one call after another would).
fn rounds(keys: &[TxnId]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: FxHashMap<TxnId, usize> = FxHashMap::default();
    for (i, key) in keys.iter().enumerate() {
        let round = seen.entry(*key).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(i);
        *round += 1;
    }
    rounds
}

/// The engine's error behind a failed read ahead.
fn engine_error(e: LedgerError) -> SubmitError {
    match e {
        LedgerError::Engine(e) => e,
        _ => SubmitError::ShutDown,
    }
}

/// What a transaction is posted as, from its engine outcome.
fn posted(
    id: TxnId,
    code: TxnCode,
    legs: Vec<Leg>,
    outcome: Outcome,
) -> Result<Posted, LedgerError> {
    outcome.result.map_err(LedgerError::Rejected)?;
    Ok(Posted {
        id,
        code,
        timestamp: outcome.timestamp,
        duplicate: outcome.duplicate,
        legs,
    })
}

/// Transactions read ahead for a call ([`Ledger::read_ahead`]); a read of
/// one not among them goes to the engine.
#[derive(Default)]
pub(super) struct Reads(HashMap<TxnId, Option<TxnView>>);

/// A refund request of [`Ledger::refund_many`]: refund number `seq` of
/// `original`, for `amount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refund {
    pub original: TxnId,
    pub seq: u32,
    pub amount: Decimal,
}

/// The end of a pending transaction, for [`Ledger::finish_many`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Captures `pending` (all of it, or `amount` of a two-leg
    /// reservation) as transaction `id`.
    Capture {
        id: TxnId,
        pending: TxnId,
        amount: Option<Decimal>,
    },
    /// Releases `pending` as transaction `id`.
    Release { id: TxnId, pending: TxnId },
}

impl Finish {
    /// The pending transaction it ends.
    pub fn pending(&self) -> TxnId {
        match *self {
            Finish::Capture { pending, .. } | Finish::Release { pending, .. } => pending,
        }
    }
}

/// An amount counted against a member's daily limit on a date.
pub(super) type Charge = (AccountNo, AccountingDate, Decimal);

/// A limited reservation's charge, and when the engine lets it lapse (the
/// engine expires it at its first batch after then, and refuses to capture
/// it from then on); unknown for one read back after a restart.
#[derive(Clone, Copy)]
struct Hold {
    charge: Charge,
    deadline: Option<Timestamp>,
}

/// A day's usage of a member's daily limit.
type Usage = FxHashMap<AccountNo, (AccountingDate, Decimal)>;

/// The account system. Cheap to share behind an `Arc`; every method takes
/// `&self`.
pub struct Ledger {
    engine: Engine,
    rules: Arc<RuleSet>,
    chart: Chart,
    members: RwLock<FxHashMap<AccountNo, Member>>,
    usage: Mutex<Usage>,
    clock: Arc<dyn Clock>,
    utc_offset_s: i64,
    /// Refunds and reversals of one original run one at a time: each checks
    /// what the other committed before it submits.
    pub(super) originals: OriginalLocks,
    /// Limited reservations charged today and not yet seen captured,
    /// released or expired: what their end gives back to the daily limit.
    holds: Mutex<HashMap<TxnId, Hold>>,
    /// One daily summary at a time (each reads the slots, then posts).
    summary: tokio::sync::Mutex<()>,
    /// Decimal places of the rules' currency.
    pub(super) scale: u32,
    pub(super) red_packets: RedPackets,
    pub(super) coupons: Coupons,
    pub(super) events: tokio::sync::broadcast::Sender<LedgerEvent>,
    /// Wallets known to hold no non-withdrawable money.
    nw_hints: NwHints,
    /// The persons behind members, and members' statuses.
    pub(super) persons: Persons,
    /// `coupon_pay` compiled for the typed redemption path (`None`: no
    /// coupon rules, or a form the fast path cannot build).
    pub(super) coupon_pay: Option<CompiledRule>,
}

/// Wallets known to hold no non-withdrawable money, so that a payment's
/// bucket split needs no engine read for them. A wallet's non-withdrawable
/// part only grows through a leg in that bucket (or the capture of one),
/// and every transaction the ledger submits passes [`Ledger::submit_txns`],
/// which drops the hint of every account such a leg touches (every hint,
/// for a capture) before the transaction is sequenced and again after it
/// is answered; a read's "none" is noted only if no hint was dropped since
/// the read was sent (`epoch`). So a hint never says "none" of a wallet
/// that may hold some — as long as the ledger is the only one submitting
/// to member accounts, which its daily limits assume too. Empty at open.
#[derive(Default)]
pub(super) struct NwHints(Mutex<(u64, rustc_hash::FxHashSet<AccountId>)>);

impl NwHints {
    fn holds_none(&self, account: AccountId) -> bool {
        self.0.lock().1.contains(&account)
    }

    fn epoch(&self) -> u64 {
        self.0.lock().0
    }

    fn note_none(&self, account: AccountId, epoch: u64) {
        let mut hints = self.0.lock();
        if hints.0 == epoch {
            hints.1.insert(account);
        }
    }

    /// `None`: every account.
    fn forget(&self, accounts: Option<&[AccountId]>) {
        match accounts {
            Some([]) => {}
            Some(accounts) => {
                let mut hints = self.0.lock();
                hints.0 += 1;
                for a in accounts {
                    hints.1.remove(a);
                }
            }
            None => {
                let mut hints = self.0.lock();
                hints.0 += 1;
                hints.1.clear();
            }
        }
    }
}

/// The accounts these transactions may add non-withdrawable money to;
/// `None` if they capture a reservation (whose legs are not all here).
fn nw_touched(txns: &[Transaction]) -> Option<Vec<AccountId>> {
    let mut out = Vec::new();
    for txn in txns {
        if matches!(txn.kind, TxnKind::PostPending { .. }) {
            return None;
        }
        for leg in &txn.legs {
            if leg.bucket == Bucket::NonWithdrawable && !out.contains(&leg.account) {
                out.push(leg.account);
            }
        }
    }
    Some(out)
}

/// Per-transaction async locks, created on demand and dropped when unused.
#[derive(Default)]
pub(super) struct OriginalLocks(DashMap<TxnId, Arc<tokio::sync::Mutex<()>>>);

/// Holds the lock of one original; releases it and forgets it when last.
pub(super) struct OriginalGuard<'a> {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    locks: &'a OriginalLocks,
    id: TxnId,
}

impl OriginalLocks {
    pub(super) async fn lock(&self, id: TxnId) -> OriginalGuard<'_> {
        // Cloned under the map's shard lock, so `Drop` below sees every
        // holder and waiter in the count.
        let mutex = Arc::clone(self.0.entry(id).or_default().value());
        OriginalGuard {
            guard: Some(mutex.lock_owned().await),
            locks: self,
            id,
        }
    }
}

impl Drop for OriginalGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.locks
            .0
            .remove_if(&self.id, |_, mutex| Arc::strong_count(mutex) == 1);
    }
}

impl Ledger {
    /// The ledger over an opened engine, its memory empty but for the
    /// members ([`Ledger::open`] loads the rest).
    pub(super) fn assemble(
        engine: Engine,
        rules: RuleSet,
        chart: Chart,
        members: FxHashMap<AccountNo, Member>,
        clock: Arc<dyn Clock>,
        utc_offset_s: i64,
        scale: u32,
    ) -> Ledger {
        let persons = Persons::from_members(members.values());
        // Coupons need both rules (`coupon_rules`).
        let refundable = rules.txn("coupon_refund").is_some();
        let coupon_pay = rules
            .txn("coupon_pay")
            .filter(|_| refundable)
            .and_then(|rule| {
                CompiledRule::compile(
                    &rules,
                    rule,
                    &["payer", "merchant"],
                    &["amount", "fee", "merchant_discount", "platform_discount"],
                )
            });
        Ledger {
            engine,
            rules: Arc::new(rules),
            chart,
            members: RwLock::new(members),
            usage: Mutex::new(FxHashMap::default()),
            clock,
            utc_offset_s,
            originals: OriginalLocks::default(),
            holds: Mutex::new(HashMap::new()),
            summary: tokio::sync::Mutex::new(()),
            scale,
            red_packets: RedPackets::default(),
            coupons: Coupons::default(),
            events: tokio::sync::broadcast::channel(EVENTS_BUFFER).0,
            nw_hints: NwHints::default(),
            persons,
            coupon_pay,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    pub fn chart(&self) -> &Chart {
        &self.chart
    }

    // ---- members -------------------------------------------------------------

    /// Opens a member and its template accounts, and records the member in
    /// the engine's store (it survives restarts). Opening the same member
    /// again changes nothing; a different one under the same number is a
    /// conflict.
    pub async fn open_member(&self, request: OpenMember) -> Result<Member, LedgerError> {
        let party = if request.legal {
            Party::legal(&request.name, &request.id_number)?
        } else {
            Party::natural(&request.name, &request.id_number)?
        };
        if !request.kind.accepts(&party) {
            return Err(LedgerError::PartyMismatch { kind: request.kind });
        }
        if !self.rules.levels.contains_key(&request.level) {
            return Err(LedgerError::UnknownLevel(request.level));
        }
        let class = match request.kind {
            MemberKind::PersonalUser => AccountClass::Personal,
            MemberKind::BusinessUser => AccountClass::Business,
            _ => AccountClass::Merchant,
        };
        let member = Member {
            number: AccountNo::new(class, request.serial)?,
            kind: request.kind,
            party,
            level: request.level,
            verified: request.verified,
        };
        if let Some(known) = self.members.read().get(&member.number) {
            if *known != member {
                return Err(LedgerError::MemberConflict(member.number));
            }
        }
        let accounts = template::template(member.kind)
            .iter()
            .map(|&t| self.member_account(&member, t))
            .collect();
        {
            let members = self.members.read();
            if members.len() >= MEMBERS_MAX && !members.contains_key(&member.number) {
                return Err(LedgerError::TooManyMembers { max: MEMBERS_MAX });
            }
        }
        let who = identity(&member.party);
        let known = self.members.read().contains_key(&member.number);
        let max = self.rules.person.as_ref().and_then(|p| p.members_max);
        if !known && !self.persons.reserve(&who, member.number, max) {
            return Err(LedgerError::TooManyMembersForPerson {
                max: max.unwrap_or(0),
            });
        }
        let opened = async {
            for result in self.engine.open_accounts(accounts).await? {
                result?;
            }
            self.store_member(&member).await
        }
        .await;
        if let Err(e) = opened {
            if !known {
                self.persons.release(&who, member.number);
            }
            return Err(e);
        }
        self.members.write().insert(member.number, member.clone());
        Ok(member)
    }

    /// Writes a member's record (key `member/<number>`, postcard).
    async fn store_member(&self, member: &Member) -> Result<(), LedgerError> {
        for result in self
            .engine
            .put_records(vec![self.member_record(member)?])
            .await?
        {
            result?;
        }
        Ok(())
    }

    /// A member's record: key and value.
    pub(super) fn member_record(&self, member: &Member) -> Result<(Vec<u8>, Vec<u8>), LedgerError> {
        let value =
            postcard::to_allocvec(member).map_err(|e| LedgerError::MemberRecord(e.to_string()))?;
        Ok((member_key(member.number), value))
    }

    /// Replaces a member in the registry (after its record is written).
    pub(super) fn replace_member(&self, member: Member) {
        self.members.write().insert(member.number, member);
    }

    fn member_account(&self, member: &Member, account: AccountType) -> NewAccount {
        let subject = template::subject(member.kind, account);
        NewAccount {
            id: member.number.account_id(account.code()),
            currency: self.rules.currency,
            subject,
            kind: AccountKind::Customer,
            normal_side: self.chart.normal_side(subject).unwrap_or(Side::Credit),
            allow_negative: false,
            credit_limit: Decimal::ZERO,
        }
    }

    /// Marks a member's real name as verified, durably.
    pub async fn verify_member(&self, number: AccountNo) -> Result<(), LedgerError> {
        let mut member = self
            .member(number)
            .ok_or(LedgerError::UnknownMember(number))?;
        member.verified = true;
        self.store_member(&member).await?;
        self.members.write().insert(number, member);
        Ok(())
    }

    pub fn member(&self, number: AccountNo) -> Option<Member> {
        self.members.read().get(&number).cloned()
    }

    /// A member number as typed: checked, known and verified.
    pub(super) fn verified_member(&self, text: &str) -> Result<AccountNo, LedgerError> {
        let number = AccountNo::parse(text)?;
        self.check_verified(number)?;
        Ok(number)
    }

    /// A member known and verified (read under the registry's lock, no copy).
    pub(super) fn check_verified(&self, number: AccountNo) -> Result<(), LedgerError> {
        let members = self.members.read();
        verified_in(&members, self.persons.status(number), number)
    }

    /// [`Ledger::check_verified`] of many members, the registry locked
    /// once (a storm's call asks for thousands: one lock each was a
    /// measured cost). Answers in order.
    pub(super) fn check_verified_many(
        &self,
        numbers: impl Iterator<Item = AccountNo>,
    ) -> Vec<Result<(), LedgerError>> {
        let members = self.members.read();
        let statuses = self.persons.statuses.read();
        numbers
            .map(|number| {
                let status = statuses.get(&number).map_or(MemberStatus::Active, |s| s.0);
                verified_in(&members, status, number)
            })
            .collect()
    }

    /// The engine's clock.
    pub(super) fn clock_now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Adds a sub-account (wealth, coupon, …) under a member's number.
    pub async fn add_sub_account(
        &self,
        number: AccountNo,
        account: AccountType,
    ) -> Result<AccountId, LedgerError> {
        let member = self
            .member(number)
            .ok_or(LedgerError::UnknownMember(number))?;
        if !template::may_add(member.kind, account) {
            return Err(LedgerError::SubAccountNotAllowed {
                kind: member.kind,
                account: account.name().into(),
            });
        }
        let new = self.member_account(&member, account);
        let id = new.id;
        for result in self.engine.open_accounts(vec![new]).await? {
            result?;
        }
        Ok(id)
    }

    /// A member account's balances.
    pub async fn account(
        &self,
        number: AccountNo,
        account: AccountType,
    ) -> Result<Option<AccountView>, LedgerError> {
        Ok(self
            .engine
            .account(number.account_id(account.code()))
            .await?)
    }

    /// An internal account's balance including what its summary slots hold.
    pub async fn internal_balance(&self, internal: Internal) -> Result<Decimal, LedgerError> {
        let no = internal.account_no();
        let mut total = Decimal::ZERO;
        for sub in 0..=self.rules.summary_slots {
            if let Some(view) = self.engine.account(no.account_id(sub)).await? {
                total += view.balance;
            }
        }
        Ok(total)
    }

    // ---- posting -------------------------------------------------------------

    /// Checks a request and turns it into an engine transaction, without
    /// submitting it and without touching limits.
    pub fn prepare(&self, request: &PostRequest) -> Result<Transaction, LedgerError> {
        let rule = self
            .rules
            .txn(&request.txn)
            .ok_or_else(|| LedgerError::UnknownTxnCode(request.txn.clone()))?;
        check_fields(rule, request)?;
        let mut members = BTreeMap::new();
        for (field, text) in &request.members {
            let number = AccountNo::parse(text)?;
            self.check_verified(number)?;
            members.insert(field.clone(), number);
        }
        let mut channels = BTreeMap::new();
        for (field, name) in &request.channels {
            let channel = self
                .rules
                .channel(name)
                .ok_or_else(|| LedgerError::UnknownChannel(name.clone()))?;
            channels.insert(field.clone(), channel.number);
        }
        let legs = self.legs(rule, request.id, &members, &channels, &request.amounts)?;
        let kind = match rule.kind {
            RuleKind::Posted => TxnKind::Posted,
            RuleKind::Pending { timeout_ms } => TxnKind::Pending {
                timeout_ms: request.timeout_ms.unwrap_or(timeout_ms),
            },
        };
        Ok(Transaction {
            id: request.id,
            code: rule.code,
            kind,
            legs,
            linked: false,
        })
    }

    pub(super) fn legs(
        &self,
        rule: &TxnRule,
        id: TxnId,
        members: &BTreeMap<String, AccountNo>,
        channels: &BTreeMap<String, u16>,
        amounts: &BTreeMap<String, Decimal>,
    ) -> Result<Vec<Leg>, LedgerError> {
        let slot = summary_slot(id, self.rules.summary_slots);
        let resolve = |leg: &super::rules::LegRule| {
            let sub = if leg.timing == Timing::Daily { slot } else { 0 };
            match &leg.account {
                AccountRef::Member { field, account } => members
                    .get(field)
                    .map_or(AccountId(0), |no| no.account_id(account.code())),
                AccountRef::Channel { field, account } => {
                    let number = channels.get(field).copied().unwrap_or(0);
                    let internal = Internal::Channel {
                        number,
                        account: *account,
                    };
                    internal.account_no().account_id(sub)
                }
                AccountRef::Platform(account) => {
                    Internal::Platform(*account).account_no().account_id(sub)
                }
            }
        };
        rule.build_legs(amounts, self.rules.currency, resolve)
            .map_err(|e| build_error(&rule.name, e))
    }

    /// Posts a request: checked, limited, submitted. Refused → nothing posted.
    pub async fn post(&self, request: PostRequest) -> Result<Posted, LedgerError> {
        let mut results = self.post_many(vec![request]).await?;
        results
            .pop()
            .unwrap_or(Err(LedgerError::Engine(SubmitError::ShutDown)))
    }

    /// Posts many requests with one engine call (at most
    /// `SUBMIT_TRANSACTIONS_MAX`): one result per request, in order. Each
    /// is checked and limited on its own; the refused ones are not
    /// submitted, and one refusal does not fail the others. `Err` means the
    /// call as a whole failed and nothing of it was posted by this call.
    pub async fn post_many(
        &self,
        requests: Vec<PostRequest>,
    ) -> Result<Vec<Result<Posted, LedgerError>>, LedgerError> {
        Ok(self
            .post_many_marked(requests)
            .await?
            .into_iter()
            .map(|(result, _)| result)
            .collect())
    }

    /// [`Ledger::post_many`], each answer with whether the engine answered
    /// it as a duplicate (a refusal too: the id's stored refusal). The
    /// engine reads it needs (a member's usage of the day the first time,
    /// the payers' non-withdrawable parts) are sent together, so a call of
    /// many requests costs a few engine round trips, not a few per request.
    pub(super) async fn post_many_marked(
        &self,
        requests: Vec<PostRequest>,
    ) -> Result<Vec<(Result<Posted, LedgerError>, bool)>, LedgerError> {
        if requests.len() > SUBMIT_TRANSACTIONS_MAX {
            return Err(LedgerError::Engine(SubmitError::BatchTooLarge {
                len: requests.len(),
                max: SUBMIT_TRANSACTIONS_MAX,
            }));
        }
        // Today's usage of every limited member, read together (an error
        // comes back from `admit`, which reads it again).
        let mut limited = Vec::new();
        for request in &requests {
            let field = self.rules.txn(&request.txn).and_then(|r| r.limit.as_ref());
            let number = field
                .and_then(|f| request.members.get(f))
                .and_then(|text| AccountNo::parse(text).ok());
            if let Some(number) = number {
                if !limited.contains(&number) && !self.usage_known(number) {
                    limited.push(number);
                }
            }
        }
        let _ = join_all(limited.into_iter().map(|m| self.load_usage(m))).await;
        let mut checked = Vec::with_capacity(requests.len());
        for request in &requests {
            checked.push(self.admit(request).await);
        }
        let splits = join_all(checked.iter().map(|c| async move {
            match c {
                Ok((txn, _)) => Some(self.split_buckets(txn.legs.clone()).await),
                Err(_) => None,
            }
        }))
        .await;
        let mut results: Vec<Option<(Result<Posted, LedgerError>, bool)>> = Vec::new();
        let mut admitted = Vec::new();
        let mut txns = Vec::new();
        for (i, (admitted_txn, split)) in checked.into_iter().zip(splits).enumerate() {
            let admitted_txn = match (admitted_txn, split) {
                (Ok((mut txn, charge)), Some(Ok(legs))) => {
                    txn.legs = legs;
                    Ok((txn, charge))
                }
                (Ok((_, charge)), Some(Err(e))) => {
                    if let Some(c) = charge {
                        self.refund_limit(c);
                    }
                    Err(e)
                }
                (Ok((_, charge)), None) => {
                    if let Some(c) = charge {
                        self.refund_limit(c);
                    }
                    Err(LedgerError::Engine(SubmitError::ShutDown))
                }
                (Err(e), _) => Err(e),
            };
            match admitted_txn {
                Ok((txn, charge)) => {
                    let pending = match txn.kind {
                        TxnKind::Pending { timeout_ms } => Some(timeout_ms),
                        _ => None,
                    };
                    admitted.push((i, charge, txn.legs.clone(), pending));
                    txns.push(txn);
                    results.push(None);
                }
                Err(e) => results.push(Some((Err(e), false))),
            }
        }
        if !txns.is_empty() {
            let outcomes = match self.submit_txns(txns).await {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    admitted
                        .iter()
                        .filter_map(|a| a.1)
                        .for_each(|c| self.refund_limit(c));
                    return Err(e.into());
                }
            };
            for ((i, charge, legs, pending), mut outcome) in admitted.into_iter().zip(outcomes) {
                if outcome.result == Err(tally_engine::Reject::IdConflict) {
                    let code = self.rules.txn(&requests[i].txn).map(|r| r.code);
                    outcome = self
                        .retried(outcome, code, pending.is_some(), &legs)
                        .await?;
                }
                let code = self
                    .rules
                    .txn(&requests[i].txn)
                    .map_or(TxnCode(0), |r| r.code);
                let result = outcome
                    .result
                    .map_err(LedgerError::Rejected)
                    .map(|()| Posted {
                        id: outcome.id,
                        code,
                        timestamp: outcome.timestamp,
                        duplicate: outcome.duplicate,
                        legs,
                    });
                // A refusal or a duplicate spent no new limit.
                let fresh = matches!(&result, Ok(p) if !p.duplicate);
                match charge {
                    Some(charge) if !fresh => self.refund_limit(charge),
                    // A reservation's charge comes back if it is released.
                    Some(charge) if pending.is_some() => {
                        let deadline = outcome.timestamp.map(|t| {
                            let ms = pending.unwrap_or_default();
                            Timestamp(t.0.saturating_add(ms.saturating_mul(1_000_000)))
                        });
                        self.holds
                            .lock()
                            .insert(outcome.id, Hold { charge, deadline });
                    }
                    _ => {}
                }
                results[i] = Some((result, outcome.duplicate));
            }
        }
        self.check_marketing_of(results.iter().flatten().map(|(r, _)| r))
            .await?;
        let missing = || (Err(LedgerError::Engine(SubmitError::ShutDown)), false);
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(missing))
            .collect())
    }

    /// Checks a request and charges its limit: the transaction to submit.
    async fn admit(
        &self,
        request: &PostRequest,
    ) -> Result<(Transaction, Option<Charge>), LedgerError> {
        let txn = self.prepare(request)?;
        let rule = self
            .rules
            .txn(&request.txn)
            .ok_or_else(|| LedgerError::UnknownTxnCode(request.txn.clone()))?;
        let Some(field) = &rule.limit else {
            return Ok((txn, None));
        };
        let number = AccountNo::parse(request.members.get(field).map_or("", String::as_str))?;
        let amount = request.amounts.get("amount").copied().unwrap_or_default();
        self.load_usage(number).await?;
        let charge = match self.charge_limit(number, amount) {
            Err(LedgerError::DailyLimitExceeded { .. }) if self.sweep_holds(number).await? => {
                self.charge_limit(number, amount)?
            }
            other => other?,
        };
        Ok((txn, Some(charge)))
    }

    /// Does this leg need the payer's non-withdrawable money read before
    /// it is split ([`Ledger::split_buckets`])?
    pub(super) fn needs_split(&self, leg: &Leg) -> bool {
        leg.side == Side::Debit
            && leg.bucket == Bucket::Available
            && is_wallet(leg.account)
            && !self.nw_hints.holds_none(leg.account)
    }

    /// [`Ledger::split_buckets`] without a read, for legs whose debited
    /// wallets are all known to hold no non-withdrawable money: each such
    /// debit is taken from withdrawable money, nothing is carried. Legs
    /// that need a read come back as they are.
    pub(super) fn split_hinted(&self, mut legs: Vec<Leg>) -> Vec<Leg> {
        if legs.iter().any(|l| self.needs_split(l)) {
            return legs;
        }
        for leg in &mut legs {
            if leg.side == Side::Debit && leg.bucket == Bucket::Available && is_wallet(leg.account)
            {
                leg.bucket = Bucket::Withdrawable;
            }
        }
        legs
    }

    /// Splits every debit of a member's balance into the part taken from
    /// its non-withdrawable money (bucket `NonWithdrawable`) and the rest
    /// (bucket `Withdrawable`, which cannot touch it), so the transaction's
    /// details say what it took from each and its refunds and reversals
    /// give back into the same buckets. The non-withdrawable part so taken
    /// follows the money to the member balances the transaction credits
    /// (a wallet transfer): money that came in non-withdrawable never
    /// becomes withdrawable by moving. A payment to a merchant spends it.
    ///
    /// The split is read before the transaction is sequenced; if another
    /// transaction spends the non-withdrawable part in between, the engine
    /// takes the difference from withdrawable money and the split
    /// overstates what was non-withdrawable — its refund then gives back
    /// more non-withdrawable money than was taken, never less.
    pub(super) async fn split_buckets(&self, legs: Vec<Leg>) -> Result<Vec<Leg>, LedgerError> {
        let mut out = Vec::with_capacity(legs.len() + 2);
        let mut carried = Decimal::ZERO;
        for leg in &legs {
            if leg.side == Side::Debit && leg.bucket == Bucket::Available && is_wallet(leg.account)
            {
                let nw = if self.nw_hints.holds_none(leg.account) {
                    Decimal::ZERO
                } else {
                    let epoch = self.nw_hints.epoch();
                    match self.engine.account(leg.account).await? {
                        Some(view) => {
                            if view.non_withdrawable <= Decimal::ZERO {
                                self.nw_hints.note_none(leg.account, epoch);
                            }
                            view.non_withdrawable.min(leg.amount).max(Decimal::ZERO)
                        }
                        None => Decimal::ZERO,
                    }
                };
                push_split(
                    &mut out,
                    leg,
                    nw,
                    Bucket::NonWithdrawable,
                    Bucket::Withdrawable,
                );
                carried += nw;
            }
        }
        for leg in legs {
            if leg.side == Side::Debit && leg.bucket == Bucket::Available && is_wallet(leg.account)
            {
                continue;
            }
            if leg.side == Side::Credit
                && leg.bucket == Bucket::Available
                && is_wallet(leg.account)
                && carried > Decimal::ZERO
            {
                let nw = carried.min(leg.amount);
                carried -= nw;
                push_split(
                    &mut out,
                    &leg,
                    nw,
                    Bucket::NonWithdrawable,
                    Bucket::Available,
                );
                continue;
            }
            out.push(leg);
        }
        Ok(out)
    }

    /// Checks the low-balance alert of every merchant whose marketing
    /// account these postings touched (funding re-arms it, spending may
    /// cross it).
    async fn check_marketing_of<'a>(
        &self,
        results: impl Iterator<Item = &'a Result<Posted, LedgerError>>,
    ) -> Result<(), LedgerError> {
        if self.coupons.alerts.lock().is_empty() {
            return Ok(());
        }
        let mut merchants = Vec::new();
        for posted in results.flatten().filter(|p| !p.duplicate) {
            for leg in &posted.legs {
                if let Some((no, sub)) = AccountNo::of_account_id(leg.account) {
                    if sub == AccountType::Marketing.code() && !merchants.contains(&no) {
                        merchants.push(no);
                    }
                }
            }
        }
        for merchant in merchants {
            self.check_marketing(merchant).await?;
        }
        Ok(())
    }

    /// A request retried after its first submission may split its debits
    /// differently (the payer's non-withdrawable money changed since), so
    /// the engine sees other content under the same id. If the committed
    /// transaction moved the same amounts between the same accounts, this
    /// is the same request: the answer is the first one's, as a duplicate.
    pub(super) async fn retried(
        &self,
        outcome: Outcome,
        code: Option<TxnCode>,
        pending: bool,
        legs: &[Leg],
    ) -> Result<Outcome, LedgerError> {
        let Some(view) = self.engine.transaction(outcome.id).await? else {
            return Ok(outcome);
        };
        let kind = if pending {
            DetailKind::Reserved
        } else {
            DetailKind::Posted
        };
        if Some(view.code) != code || view.details.iter().any(|d| d.kind != kind) {
            return Ok(outcome);
        }
        let mut ours: BTreeMap<(AccountId, bool), Decimal> = BTreeMap::new();
        for leg in legs {
            *ours
                .entry((leg.account, leg.side == Side::Debit))
                .or_default() += leg.amount;
        }
        let mut theirs: BTreeMap<(AccountId, bool), Decimal> = BTreeMap::new();
        for d in &view.details {
            *theirs
                .entry((d.account, d.side == Side::Debit))
                .or_default() += d.amount;
        }
        if view.result.is_ok() && ours == theirs {
            return Ok(Outcome {
                result: Ok(()),
                duplicate: true,
                timestamp: Some(view.timestamp),
                ..outcome
            });
        }
        Ok(outcome)
    }

    /// Forgets the member's reservations whose deadline has passed (the
    /// engine expires them; none can be captured any more) and gives their
    /// amounts back to today's limit; true if any was given back.
    pub(super) async fn sweep_holds(&self, member: AccountNo) -> Result<bool, LedgerError> {
        let today = self.today();
        let now = self.clock.now();
        let mut freed = Vec::new();
        {
            let mut holds = self.holds.lock();
            holds.retain(|_, h| {
                let lapsed = h.charge.0 == member && h.deadline.is_some_and(|d| d <= now);
                if lapsed {
                    freed.push(h.charge);
                }
                h.charge.1 == today && !lapsed
            });
        }
        for charge in &freed {
            self.refund_limit(*charge);
        }
        Ok(!freed.is_empty())
    }

    pub(super) async fn submit(&self, txn: Transaction) -> Result<Posted, LedgerError> {
        let (id, code, legs) = (txn.id, txn.code, txn.legs.clone());
        let outcome = self.submit_one(txn).await?;
        posted(id, code, legs, outcome)
    }

    /// Submits transactions in one engine call: one answer each, in order
    /// (a failed call is every one's error).
    async fn submit_all(&self, txns: Vec<Transaction>) -> Vec<Result<Posted, LedgerError>> {
        if txns.is_empty() {
            return Vec::new();
        }
        let heads: Vec<(TxnId, TxnCode, Vec<Leg>)> = txns
            .iter()
            .map(|t| (t.id, t.code, t.legs.clone()))
            .collect();
        match self.submit_txns(txns).await {
            Ok(outcomes) if outcomes.len() == heads.len() => heads
                .into_iter()
                .zip(outcomes)
                .map(|((id, code, legs), outcome)| posted(id, code, legs, outcome))
                .collect(),
            Ok(_) => heads
                .iter()
                .map(|_| Err(LedgerError::Engine(SubmitError::ShutDown)))
                .collect(),
            Err(e) => heads
                .iter()
                .map(|_| Err(LedgerError::Engine(e.clone())))
                .collect(),
        }
    }

    pub(super) async fn submit_one(&self, txn: Transaction) -> Result<Outcome, LedgerError> {
        let id = txn.id;
        let mut outcomes = self.submit_txns(vec![txn]).await?;
        outcomes.pop().ok_or(LedgerError::OriginalNotFound(id))
    }

    /// Every engine submission of the ledger goes through here: the
    /// accounts a transaction may give non-withdrawable money to lose
    /// their "holds none" hint before it is sequenced and again after it
    /// is answered (see [`NwHints`]).
    pub(super) async fn submit_txns(
        &self,
        txns: Vec<Transaction>,
    ) -> Result<Vec<Outcome>, SubmitError> {
        let touched = nw_touched(&txns);
        self.nw_hints.forget(touched.as_deref());
        let result = self.engine.submit(txns).await;
        self.nw_hints.forget(touched.as_deref());
        result
    }

    fn today(&self) -> AccountingDate {
        let now = i64::try_from(self.clock.now().0).unwrap_or(i64::MAX);
        let local_s = now / NS_PER_S + self.utc_offset_s;
        AccountingDate(i32::try_from(local_s.div_euclid(86_400)).unwrap_or(i32::MAX))
    }

    /// Makes sure today's usage of a member's daily limit is known. The
    /// first time a member posts on a day it is read back from the engine —
    /// the debits of limited transactions on the member's balance account
    /// since the day began — so a restart does not reset it. Posted and
    /// captured debits count; today's reservations count while open: those
    /// the engine expired (released under their own id) not at all, and
    /// together never more than the account holds reserved now (a released
    /// or captured one is no longer in it; a reservation of an earlier day
    /// still open may make this count more than is used, never less).
    pub(super) async fn load_usage(&self, member: AccountNo) -> Result<(), LedgerError> {
        self.load_usage_one(member).await?;
        if self
            .rules
            .person
            .as_ref()
            .is_some_and(|p| p.daily_max.is_some())
        {
            // The person's limit counts every member of the person.
            for sibling in self.siblings(member) {
                self.load_usage_one(sibling).await?;
            }
        }
        Ok(())
    }

    /// The members of `member`'s person (itself included).
    fn siblings(&self, member: AccountNo) -> Vec<AccountNo> {
        let members = self.members.read();
        match members.get(&member) {
            Some(m) => self.persons.siblings(identity_str(&m.party)),
            None => Vec::new(),
        }
    }

    async fn load_usage_one(&self, member: AccountNo) -> Result<(), LedgerError> {
        if self.usage_known(member) {
            return Ok(());
        }
        let today = self.today();
        let limited: Vec<TxnCode> = self
            .rules
            .txns()
            .filter(|r| r.limit.is_some())
            .map(|r| r.code)
            .chain(
                self.rules
                    .red_packet
                    .as_ref()
                    .filter(|r| r.limited)
                    .map(|r| r.send_code),
            )
            .collect();
        let day_start_s = i64::from(today.0) * 86_400 - self.utc_offset_s;
        let from_ns = u64::try_from(day_start_s.max(0))
            .unwrap_or(0)
            .saturating_mul(NS_PER_S.unsigned_abs());
        let mut query = DetailQuery {
            from: Timestamp(from_ns),
            ..DetailQuery::all(
                member.account_id(AccountType::Balance.code()),
                DETAIL_PAGE_MAX,
            )
        };
        let mut used = Decimal::ZERO;
        let mut reserved: BTreeMap<TxnId, Decimal> = BTreeMap::new();
        let mut expired = Vec::new();
        for _ in 0..USAGE_PAGES_MAX {
            let Some(page) = self.engine.details(query).await? else {
                break;
            };
            for d in &page.details {
                if d.side != Side::Debit || !limited.contains(&d.code) {
                    continue;
                }
                match d.kind {
                    DetailKind::Posted | DetailKind::Captured => used += d.amount,
                    DetailKind::Reserved => *reserved.entry(d.txn).or_default() += d.amount,
                    DetailKind::Released => expired.push(d.txn),
                }
            }
            match page.next {
                Some(cursor) => query.after = Some(cursor),
                None => break,
            }
        }
        for id in expired {
            reserved.remove(&id);
        }
        let now_reserved = self
            .engine
            .account(member.account_id(AccountType::Balance.code()))
            .await?
            .map_or(Decimal::ZERO, |v| v.reserved);
        used += reserved.values().sum::<Decimal>().min(now_reserved);
        {
            let mut holds = self.holds.lock();
            for (id, amount) in reserved {
                holds.entry(id).or_insert(Hold {
                    charge: (member, today, amount),
                    deadline: None,
                });
            }
        }
        let mut usage = self.usage.lock();
        let entry = usage.entry(member).or_insert((today, used));
        if entry.0 != today {
            *entry = (today, used);
        }
        Ok(())
    }

    /// Today's usage of the member's limit is known.
    pub(super) fn usage_known(&self, member: AccountNo) -> bool {
        let today = self.today();
        self.usage.lock().get(&member).is_some_and(|e| e.0 == today)
    }

    /// The members whose usage of today is not known yet, each once (the
    /// usage locked once, today read once).
    pub(super) fn usage_unknown(
        &self,
        members: impl Iterator<Item = AccountNo>,
    ) -> FxHashSet<AccountNo> {
        let today = self.today();
        let usage = self.usage.lock();
        members
            .filter(|m| usage.get(m).is_none_or(|e| e.0 != today))
            .collect()
    }

    /// Checks the member's limits and counts `amount` against today's.
    pub(super) fn charge_limit(
        &self,
        member: AccountNo,
        amount: Decimal,
    ) -> Result<Charge, LedgerError> {
        let mut answers = self.charge_limits(&[(member, amount)]);
        answers
            .pop()
            .unwrap_or(Err(LedgerError::UnknownMember(member)))
    }

    /// [`Ledger::charge_limit`] of many (member, amount) in order, each
    /// counted against the ones before it: the registry and the usage
    /// locked once and today read once for all of them (per redemption,
    /// the locks and the clock were a measured cost of a storm).
    pub(super) fn charge_limits(
        &self,
        items: &[(AccountNo, Decimal)],
    ) -> Vec<Result<Charge, LedgerError>> {
        let today = self.today();
        let person_max = self.rules.person.as_ref().and_then(|p| p.daily_max);
        let members = self.members.read();
        let persons = self.persons.members.read();
        let mut usage = self.usage.lock();
        let locked = Locked {
            members: &members,
            persons: &persons,
            shared: self.persons.shared.load(Ordering::Relaxed),
        };
        items
            .iter()
            .map(|&(member, amount)| {
                self.charge_locked(&locked, &mut usage, (today, person_max), member, amount)
            })
            .collect()
    }

    fn charge_locked(
        &self,
        &Locked {
            members,
            persons,
            shared,
        }: &Locked<'_>,
        usage: &mut Usage,
        (today, person_max): (AccountingDate, Option<Decimal>),
        member: AccountNo,
        amount: Decimal,
    ) -> Result<Charge, LedgerError> {
        let limits = {
            let level = &members
                .get(&member)
                .ok_or(LedgerError::UnknownMember(member))?
                .level;
            *self
                .rules
                .levels
                .get(level)
                .ok_or_else(|| LedgerError::UnknownLevel(level.clone()))?
        };
        if amount > limits.per_txn_max {
            return Err(LedgerError::PerTxnLimitExceeded {
                member,
                limit: limits.per_txn_max,
                requested: amount,
            });
        }
        if let Some(max) = person_max {
            let today_of = |s: AccountNo| {
                usage
                    .get(&s)
                    .filter(|e| e.0 == today)
                    .map_or(Decimal::ZERO, |e| e.1)
            };
            let mut used = Decimal::ZERO;
            let mut any = false;
            let person = || {
                members
                    .get(&member)
                    .and_then(|m| persons.get(identity_str(&m.party)))
            };
            if let Some(list) = shared.then(person).flatten() {
                for &s in list {
                    any = true;
                    used += today_of(s);
                }
            }
            // A person of one member: its own usage (counted below as well).
            if !any {
                used = today_of(member);
            }
            if used + amount > max {
                return Err(LedgerError::PersonDailyLimitExceeded {
                    member,
                    limit: max,
                    used,
                    requested: amount,
                });
            }
        }
        let entry = usage.entry(member).or_insert((today, Decimal::ZERO));
        if entry.0 != today {
            *entry = (today, Decimal::ZERO);
        }
        if entry.1 + amount > limits.daily_max {
            return Err(LedgerError::DailyLimitExceeded {
                member,
                limit: limits.daily_max,
                used: entry.1,
                requested: amount,
            });
        }
        entry.1 += amount;
        Ok((member, today, amount))
    }

    pub(super) fn refund_limit(&self, (member, date, amount): Charge) {
        if let Some(entry) = self.usage.lock().get_mut(&member) {
            if entry.0 == date {
                entry.1 -= amount;
            }
        }
    }

    // ---- two-phase -------------------------------------------------------------

    /// Captures a pending transaction (the bank confirmed a withdrawal, the
    /// order was paid): all of it, or `amount` of a two-leg reservation.
    pub async fn capture(
        &self,
        id: TxnId,
        pending: TxnId,
        amount: Option<Decimal>,
    ) -> Result<Posted, LedgerError> {
        let mut answers = self
            .finish_many(vec![Finish::Capture {
                id,
                pending,
                amount,
            }])
            .await?;
        answers
            .pop()
            .unwrap_or(Err(LedgerError::Engine(SubmitError::ShutDown)))
    }

    /// Captures and releases many pending transactions: the pending ones
    /// read in one engine call, the completions submitted in one. One
    /// answer per request, in order; one refusal does not fail the others.
    /// `Err` only for a call above `SUBMIT_TRANSACTIONS_MAX` requests
    /// (nothing is done).
    pub async fn finish_many(
        &self,
        requests: Vec<Finish>,
    ) -> Result<Vec<Result<Posted, LedgerError>>, LedgerError> {
        check_call_len(requests.len())?;
        let mut answers: Vec<Option<Result<Posted, LedgerError>>> =
            requests.iter().map(|_| None).collect();
        let pendings: Vec<TxnId> = requests.iter().map(Finish::pending).collect();
        for round in rounds(&pendings) {
            let reads = match self
                .read_ahead(round.iter().map(|&i| pendings[i]).collect())
                .await
            {
                Ok(reads) => reads,
                Err(e) => {
                    let e = engine_error(e);
                    for slot in answers.iter_mut().filter(|a| a.is_none()) {
                        *slot = Some(Err(LedgerError::Engine(e.clone())));
                    }
                    break;
                }
            };
            let mut txns = Vec::with_capacity(round.len());
            let mut sent = Vec::with_capacity(round.len());
            for i in round {
                match self.finish_txn(&reads, &requests[i]).await {
                    Ok(txn) => {
                        txns.push(txn);
                        sent.push(i);
                    }
                    Err(e) => answers[i] = Some(Err(e)),
                }
            }
            for (i, answer) in sent.into_iter().zip(self.submit_all(txns).await) {
                if answer.as_ref().is_ok_and(|p| !p.duplicate) {
                    self.finished(&requests[i]);
                }
                answers[i] = Some(answer);
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Err(LedgerError::Engine(SubmitError::ShutDown))))
            .collect())
    }

    /// A capture's or release's transaction, from its pending one.
    async fn finish_txn(
        &self,
        reads: &Reads,
        request: &Finish,
    ) -> Result<Transaction, LedgerError> {
        let view = self.committed_in(reads, request.pending()).await?;
        let (id, legs, kind) = match *request {
            Finish::Capture {
                id,
                pending,
                amount,
            } => {
                let legs = match amount {
                    None => Vec::new(),
                    Some(amount) => self.partial_capture(&view, amount)?,
                };
                (
                    id,
                    legs,
                    TxnKind::PostPending {
                        pending_id: pending,
                    },
                )
            }
            Finish::Release { id, pending } => (
                id,
                Vec::new(),
                TxnKind::VoidPending {
                    pending_id: pending,
                },
            ),
        };
        Ok(Transaction {
            id,
            code: view.code,
            kind,
            legs,
            linked: false,
        })
    }

    /// A capture or release committed: what its hold charged the daily
    /// limit and was not kept comes back.
    fn finished(&self, request: &Finish) {
        let hold = self.holds.lock().remove(&request.pending());
        let Some(Hold {
            charge: (member, date, reserved),
            ..
        }) = hold
        else {
            return;
        };
        let kept = match *request {
            Finish::Capture { amount, .. } => amount.unwrap_or(reserved).min(reserved),
            Finish::Release { .. } => Decimal::ZERO,
        };
        self.refund_limit((member, date, reserved - kept));
    }

    /// The restated legs of a partial capture of `amount`: a reservation of
    /// one debit and one credit of the same amount, the debit possibly split
    /// by bucket (non-withdrawable part first).
    fn partial_capture(&self, view: &TxnView, amount: Decimal) -> Result<Vec<Leg>, LedgerError> {
        let unsupported = || LedgerError::PartialCaptureUnsupported(view.id);
        let reserved: Vec<&DetailView> = view
            .details
            .iter()
            .filter(|d| d.kind == DetailKind::Reserved)
            .collect();
        let debits: Decimal = reserved
            .iter()
            .filter(|d| d.side == Side::Debit)
            .map(|d| d.amount)
            .sum();
        let credits: Vec<&&DetailView> =
            reserved.iter().filter(|d| d.side == Side::Credit).collect();
        let split_debit = reserved.len() == 3
            && reserved[0].side == Side::Debit
            && reserved[1].side == Side::Debit
            && reserved[0].account == reserved[1].account;
        if credits.len() != 1
            || credits[0].amount != debits
            || !(reserved.len() == 2 || split_debit)
        {
            return Err(unsupported());
        }
        if amount > debits {
            // More than was reserved: the engine's own reason, with the
            // amounts, rather than the unbalanced legs a clamp would build.
            return Err(LedgerError::Rejected(
                tally_engine::Reject::PostExceedsPending {
                    leg: 0,
                    reserved: debits,
                    requested: amount,
                },
            ));
        }
        let mut left = amount;
        let mut legs = Vec::with_capacity(reserved.len());
        for d in &reserved {
            let part = if d.side == Side::Credit {
                amount
            } else {
                let part = left.min(d.amount);
                left -= part;
                part
            };
            legs.push(Leg {
                account: d.account,
                side: d.side,
                amount: part,
                currency: self.rules.currency,
                bucket: d.bucket,
                expected_version: None,
            });
        }
        if split_debit && legs[1].amount.is_zero() {
            // Each restated leg must move something: take one smallest unit
            // of the capture from the withdrawable part instead (the
            // non-withdrawable part is then understated, never overstated).
            let unit = Decimal::new(1, legs[0].amount.scale());
            if legs[0].amount <= unit {
                return Err(unsupported());
            }
            legs[0].amount -= unit;
            legs[1].amount = unit;
        }
        Ok(legs)
    }

    /// Releases a pending transaction (the bank failed, the order was
    /// cancelled).
    pub async fn release(&self, id: TxnId, pending: TxnId) -> Result<Posted, LedgerError> {
        let mut answers = self
            .finish_many(vec![Finish::Release { id, pending }])
            .await?;
        answers
            .pop()
            .unwrap_or(Err(LedgerError::Engine(SubmitError::ShutDown)))
    }

    pub(super) async fn committed(&self, id: TxnId) -> Result<TxnView, LedgerError> {
        self.committed_in(&Reads::default(), id).await
    }

    /// Transactions read in one engine call (at most
    /// `SUBMIT_TRANSACTIONS_MAX` a call), for the reads of a call to find.
    pub(super) async fn read_ahead(&self, mut ids: Vec<TxnId>) -> Result<Reads, LedgerError> {
        ids.sort_unstable();
        ids.dedup();
        let mut reads = Reads::default();
        for part in ids.chunks(SUBMIT_TRANSACTIONS_MAX) {
            let views = self.engine.transactions(part.to_vec()).await?;
            reads.0.extend(part.iter().copied().zip(views));
        }
        Ok(reads)
    }

    /// A transaction, as read ahead or else from the engine.
    pub(super) async fn read(
        &self,
        reads: &Reads,
        id: TxnId,
    ) -> Result<Option<TxnView>, LedgerError> {
        match reads.0.get(&id) {
            Some(view) => Ok(view.clone()),
            None => Ok(self.engine.transaction(id).await?),
        }
    }

    pub(super) async fn committed_in(
        &self,
        reads: &Reads,
        id: TxnId,
    ) -> Result<TxnView, LedgerError> {
        let view = self
            .read(reads, id)
            .await?
            .ok_or(LedgerError::OriginalNotFound(id))?;
        if view.result.is_err() {
            return Err(LedgerError::OriginalNotCommitted(id));
        }
        Ok(view)
    }

    // ---- reverse transactions ---------------------------------------------------

    /// Refund number `seq` (0, 1, …) of `original`, for `amount`: the
    /// original's refund rule with the original's member accounts.
    /// Resubmitting the same refund answers with the first outcome.
    pub async fn refund(
        &self,
        original: TxnId,
        seq: u32,
        amount: Decimal,
    ) -> Result<Posted, LedgerError> {
        let mut answers = self
            .refund_many(vec![Refund {
                original,
                seq,
                amount,
            }])
            .await?;
        answers
            .pop()
            .unwrap_or(Err(LedgerError::Engine(SubmitError::ShutDown)))
    }

    /// Many refunds, each as [`Ledger::refund`]: what they read (the
    /// originals, their reversals, the refunds before each) is read in one
    /// engine call and they are submitted in one. Refunds of one original
    /// go one per round, in the order given (each sees the one before
    /// committed). One answer per request, in order; `Err` only for a call
    /// above `SUBMIT_TRANSACTIONS_MAX` requests (nothing is done).
    pub async fn refund_many(
        &self,
        requests: Vec<Refund>,
    ) -> Result<Vec<Result<Posted, LedgerError>>, LedgerError> {
        check_call_len(requests.len())?;
        // Each original locked once, in id order: two calls never wait on
        // each other in a circle.
        let mut originals: Vec<TxnId> = requests.iter().map(|r| r.original).collect();
        originals.sort_unstable();
        originals.dedup();
        let mut guards = Vec::with_capacity(originals.len());
        for &original in &originals {
            guards.push(self.originals.lock(original).await);
        }
        let mut answers: Vec<Option<Result<Posted, LedgerError>>> =
            requests.iter().map(|_| None).collect();
        let keys: Vec<TxnId> = requests.iter().map(|r| r.original).collect();
        for round in rounds(&keys) {
            let mut ids = Vec::new();
            for &i in &round {
                let r = &requests[i];
                ids.push(r.original);
                ids.push(derived_id(TAG_REVERSAL, r.original, 0));
                for n in 0..r.seq.min(REFUNDS_PER_TXN_MAX) {
                    ids.push(derived_id(TAG_REFUND, r.original, u64::from(n)));
                }
            }
            let reads = match self.read_ahead(ids).await {
                Ok(reads) => reads,
                Err(e) => {
                    let e = engine_error(e);
                    for slot in answers.iter_mut().filter(|a| a.is_none()) {
                        *slot = Some(Err(LedgerError::Engine(e.clone())));
                    }
                    break;
                }
            };
            let mut txns = Vec::with_capacity(round.len());
            let mut sent = Vec::with_capacity(round.len());
            for i in round {
                let r = &requests[i];
                match self.refund_txn(&reads, r.original, r.seq, r.amount).await {
                    Ok(txn) => {
                        txns.push(txn);
                        sent.push(i);
                    }
                    Err(e) => answers[i] = Some(Err(e)),
                }
            }
            for (i, answer) in sent.into_iter().zip(self.submit_all(txns).await) {
                answers[i] = Some(answer);
            }
        }
        drop(guards);
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Err(LedgerError::Engine(SubmitError::ShutDown))))
            .collect())
    }

    /// A refund's transaction (its original locked by the caller).
    async fn refund_txn(
        &self,
        reads: &Reads,
        original: TxnId,
        seq: u32,
        amount: Decimal,
    ) -> Result<Transaction, LedgerError> {
        let view = self.committed_in(reads, original).await?;
        let plan = self.refund_plan(&view)?;
        if amount <= Decimal::ZERO {
            return Err(LedgerError::AmountNotPositive {
                txn: plan.rule.name.clone(),
                field: "amount".into(),
                value: amount,
            });
        }
        if seq >= REFUNDS_PER_TXN_MAX {
            let next = REFUNDS_PER_TXN_MAX;
            return Err(LedgerError::RefundSeqGap {
                original,
                seq,
                next,
            });
        }
        if self.reversal_committed_in(reads, original).await? {
            return Err(LedgerError::NotRefundable {
                original,
                reason: "it was reversed".into(),
            });
        }
        let before = self
            .refunded_before(reads, original, seq, plan.rule)
            .await?;
        let refunded = before.amount;
        if refunded + amount > plan.amount {
            return Err(LedgerError::RefundExceedsOriginal {
                original,
                amount: plan.amount,
                refunded,
                requested: amount,
            });
        }
        let id = derived_id(TAG_REFUND, original, u64::from(seq));
        let mut amounts = BTreeMap::from([("amount".to_string(), amount)]);
        if plan.rule.fields.contains_key("fee") {
            // Pro rata, rounded down at each refund's running total, so
            // refunds of the whole amount give back exactly the whole fee.
            let fee_through = |total: Decimal| {
                (plan.fee * total / plan.amount)
                    .round_dp_with_strategy(plan.fee.scale(), RoundingStrategy::ToZero)
            };
            let fee = fee_through(refunded + amount) - fee_through(refunded);
            amounts.insert("fee".to_string(), fee);
        }
        let legs = self.legs(plan.rule, id, &plan.members, &BTreeMap::new(), &amounts)?;
        // Non-withdrawable money taken by the original comes back
        // non-withdrawable, before anything else.
        let mut out = Vec::with_capacity(legs.len() + 1);
        for leg in legs {
            let owed = plan
                .non_withdrawable
                .get(&leg.account)
                .copied()
                .unwrap_or_default()
                - before
                    .non_withdrawable
                    .get(&leg.account)
                    .copied()
                    .unwrap_or_default();
            if leg.side == Side::Credit && leg.bucket == Bucket::Available && owed > Decimal::ZERO {
                let nw = owed.min(leg.amount);
                push_split(
                    &mut out,
                    &leg,
                    nw,
                    Bucket::NonWithdrawable,
                    Bucket::Available,
                );
            } else {
                out.push(leg);
            }
        }
        self.hold_for_closed(id, original, &mut out).await?;
        Ok(Transaction::posted(id, plan.rule.code, out))
    }

    /// The refund rule of a committed transaction, its refundable amount and
    /// the member accounts the refund goes between.
    fn refund_plan(&self, view: &TxnView) -> Result<RefundPlan<'_>, LedgerError> {
        let not = |reason: &str| LedgerError::NotRefundable {
            original: view.id,
            reason: reason.into(),
        };
        if view
            .details
            .iter()
            .any(|d| !matches!(d.kind, DetailKind::Posted | DetailKind::Captured))
        {
            return Err(not("it is a reservation: refund its capture"));
        }
        let rule = self
            .rules
            .txn_by_code(view.code)
            .ok_or_else(|| not("its code has no rule"))?;
        let refund_rule = rule
            .refund
            .as_ref()
            .and_then(|name| self.rules.txn(name))
            .ok_or_else(|| not("its rule has no refund"))?;
        let aligned =
            align(rule, &view.details).ok_or_else(|| not("its details do not match its rule"))?;
        let field_amount = |name: &str| {
            aligned
                .iter()
                .find(|a| rule.legs[a.leg].amount.is_field(name))
                .map(Aligned::amount)
        };
        let amount =
            field_amount("amount").ok_or_else(|| not("it has no leg of exactly `amount`"))?;
        let fee = if rule.refund_fee {
            field_amount("fee").unwrap_or_default()
        } else {
            Decimal::ZERO
        };
        let mut members = BTreeMap::new();
        let mut non_withdrawable = BTreeMap::new();
        for a in &aligned {
            if let AccountRef::Member { field, .. } = &rule.legs[a.leg].account {
                if let Some((no, _)) = AccountNo::of_account_id(a.account()) {
                    members.entry(field.clone()).or_insert(no);
                }
                let nw = a.non_withdrawable();
                if rule.legs[a.leg].side == Side::Debit && !nw.is_zero() {
                    *non_withdrawable.entry(a.account()).or_default() += nw;
                }
            }
        }
        if let Some(field) = refund_rule
            .fields
            .iter()
            .find(|(f, ty)| **ty == FieldType::Member && !members.contains_key(*f))
            .map(|(f, _)| f)
        {
            return Err(not(&format!("it posted nothing to its {field:?}")));
        }
        Ok(RefundPlan {
            rule: refund_rule,
            amount,
            fee,
            members,
            non_withdrawable,
        })
    }

    /// What the committed refunds `0..seq` of `original` gave back; refused
    /// ones count nothing, a missing one is a gap.
    async fn refunded_before(
        &self,
        reads: &Reads,
        original: TxnId,
        seq: u32,
        refund_rule: &TxnRule,
    ) -> Result<Refunded, LedgerError> {
        let mut refunded = Refunded::default();
        for n in 0..seq {
            let id = derived_id(TAG_REFUND, original, u64::from(n));
            match self.read(reads, id).await? {
                None => {
                    return Err(LedgerError::RefundSeqGap {
                        original,
                        seq,
                        next: n,
                    })
                }
                Some(v) if v.result.is_ok() => {
                    if let Some((amount, back)) = refund_parts(refund_rule, &v.details) {
                        refunded.amount += amount;
                        for (account, nw) in back {
                            *refunded.non_withdrawable.entry(account).or_default() += nw;
                        }
                    }
                }
                Some(_) => {}
            }
        }
        Ok(refunded)
    }

    /// Has any refund of `original` committed?
    async fn any_refund_committed(&self, original: TxnId) -> Result<bool, LedgerError> {
        for n in 0..u64::from(REFUNDS_PER_TXN_MAX) {
            match self
                .engine
                .transaction(derived_id(TAG_REFUND, original, n))
                .await?
            {
                // Refund numbers do not skip: none after a missing one.
                None => return Ok(false),
                Some(v) if v.result.is_ok() => return Ok(true),
                Some(_) => {}
            }
        }
        Ok(false)
    }

    /// Reverses (冲正) a posted transaction: the exact opposite entries, once.
    pub async fn reverse(&self, original: TxnId) -> Result<Posted, LedgerError> {
        let _exclusive = self.originals.lock(original).await;
        let view = self.committed(original).await?;
        let not = |reason: &str| LedgerError::NotReversible {
            original,
            reason: reason.into(),
        };
        if view.code == self.rules.reversal_code || view.code == self.rules.summary_code {
            return Err(not("reversals and summaries are not reversed"));
        }
        if let Some(rp) = &self.rules.red_packet {
            if [rp.send_code, rp.claim_code, rp.return_code].contains(&view.code) {
                // Its money shares a product account with other red
                // packets: undoing one posting would let claims spend theirs.
                return Err(not("red-packet postings are not reversed"));
            }
        }
        if view
            .details
            .iter()
            .any(|d| !matches!(d.kind, DetailKind::Posted | DetailKind::Captured))
        {
            return Err(not("it is a reservation: release it instead"));
        }
        // Any committed refund, not only the first: refund #0 may have been
        // refused and #1 committed. (Asked of every transaction: coupon
        // payments are refunded outside the rules' `refund`.)
        if self.any_refund_committed(original).await? {
            return Err(not("it was refunded"));
        }
        let opposite: Vec<Leg> = view.details.iter().map(|d| self.opposite(d)).collect();
        for attempt in 0..REVERSAL_ATTEMPTS_MAX {
            let id = derived_id(TAG_REVERSAL, original, attempt);
            match self.engine.transaction(id).await? {
                Some(v) if v.result.is_ok() => return Err(LedgerError::AlreadyReversed(original)),
                Some(_) => continue,
                None => {}
            }
            // What would credit a closed member is held in suspense, as a
            // refund's is (see `suspense`).
            let mut legs = opposite.clone();
            self.hold_for_closed(id, original, &mut legs).await?;
            let txn = Transaction::posted(id, self.rules.reversal_code, legs.clone());
            let outcome = self.submit_one(txn).await?;
            match (outcome.result, outcome.duplicate) {
                (Ok(()), false) => {
                    return Ok(Posted {
                        id,
                        code: self.rules.reversal_code,
                        timestamp: outcome.timestamp,
                        duplicate: false,
                        legs,
                    })
                }
                (Ok(()), true) => return Err(LedgerError::AlreadyReversed(original)),
                (Err(_), true) => continue,
                (Err(reject), false) => return Err(LedgerError::Rejected(reject)),
            }
        }
        Err(not("too many refused reversal attempts"))
    }

    pub(super) async fn reversal_committed(&self, original: TxnId) -> Result<bool, LedgerError> {
        self.reversal_committed_in(&Reads::default(), original)
            .await
    }

    async fn reversal_committed_in(
        &self,
        reads: &Reads,
        original: TxnId,
    ) -> Result<bool, LedgerError> {
        for attempt in 0..REVERSAL_ATTEMPTS_MAX {
            match self
                .read(reads, derived_id(TAG_REVERSAL, original, attempt))
                .await?
            {
                None => return Ok(false),
                Some(v) if v.result.is_ok() => return Ok(true),
                Some(_) => {}
            }
        }
        Ok(false)
    }

    /// The leg that undoes a detail: same account and amount, other side;
    /// frozen money goes back to the frozen part, non-withdrawable money
    /// comes back non-withdrawable, and what came in non-withdrawable goes
    /// back out of that part while what came in withdrawable goes back out
    /// of withdrawable money (not out of the account's other
    /// non-withdrawable money, which an `Available` debit would spend first).
    fn opposite(&self, d: &DetailView) -> Leg {
        let bucket = match (d.side, d.bucket) {
            (_, Bucket::Frozen) => Bucket::Frozen,
            (_, Bucket::NonWithdrawable) => Bucket::NonWithdrawable,
            (Side::Credit, _) => Bucket::Withdrawable,
            (Side::Debit, _) => Bucket::Available,
        };
        Leg {
            account: d.account,
            side: d.side.opposite(),
            amount: d.amount,
            currency: self.rules.currency,
            bucket,
            expected_version: None,
        }
    }

    // ---- end of day -------------------------------------------------------------

    /// Moves what each daily-summarised internal account's slots collected
    /// onto the account itself: one transaction (one detail on the account)
    /// per account per run. Running it again posts only what arrived since
    /// (nothing if nothing did); run `n` of a day has an id derived from
    /// the account, the date and `n`, so a run repeated after a crash is
    /// the same transaction again.
    ///
    /// The date is the engine's accounting date open (the clock's before
    /// the first close): see [`Ledger::close_day`], which runs it as part
    /// of the close.
    pub async fn summarize_day(&self) -> Result<Vec<Posted>, LedgerError> {
        let date = self
            .engine
            .calendar()
            .await?
            .open
            .unwrap_or_else(|| self.today());
        self.summarize(date).await
    }

    /// [`Ledger::summarize_day`] with run ids of `date`, which must be the
    /// date open (the postings land on it).
    pub(super) async fn summarize(&self, date: AccountingDate) -> Result<Vec<Posted>, LedgerError> {
        let _one_at_a_time = self.summary.lock().await;
        let mut posted = Vec::new();
        for (internal, daily) in self.rules.internal_accounts() {
            if !daily {
                continue;
            }
            let no = internal.account_no();
            let mut legs = Vec::new();
            let mut net = Decimal::ZERO;
            for sub in 1..=self.rules.summary_slots {
                let Some(view) = self.engine.account(no.account_id(sub)).await? else {
                    continue;
                };
                if view.balance.is_zero() {
                    continue;
                }
                net += view.balance;
                let (side, amount) = if view.balance > Decimal::ZERO {
                    (view.normal_side.opposite(), view.balance)
                } else {
                    (view.normal_side, -view.balance)
                };
                legs.push(self.leg(no.account_id(sub), side, amount));
            }
            if legs.is_empty() {
                continue;
            }
            // The account itself takes the net of the slots' legs.
            let normal = self
                .chart
                .normal_side(internal.subject())
                .unwrap_or(Side::Debit);
            if net > Decimal::ZERO {
                legs.push(self.leg(no.account_id(0), normal, net));
            } else if net < Decimal::ZERO {
                legs.push(self.leg(no.account_id(0), normal.opposite(), -net));
            }
            let day = TxnId((u128::from(no.account_id(0).0) << 32) | u128::from(date.0 as u32));
            let mut done = false;
            for run in 0..SUMMARY_RUNS_MAX {
                let id = derived_id(TAG_SUMMARY, day, run);
                if self.engine.transaction(id).await?.is_some() {
                    continue;
                }
                let txn = Transaction::posted(id, self.rules.summary_code, legs.clone());
                let outcome = self.submit_one(txn).await?;
                match outcome.result {
                    Ok(()) => posted.push(Posted {
                        id,
                        code: self.rules.summary_code,
                        timestamp: outcome.timestamp,
                        duplicate: outcome.duplicate,
                        legs,
                    }),
                    // Taken meanwhile by another ledger on this store: the
                    // slots it read are not these; try the next run.
                    Err(tally_engine::Reject::IdConflict) => continue,
                    Err(reject) => return Err(LedgerError::Rejected(reject)),
                }
                done = true;
                break;
            }
            if !done {
                return Err(LedgerError::SummaryAlreadyPosted);
            }
        }
        Ok(posted)
    }

    pub(super) fn leg(&self, account: AccountId, side: Side, amount: Decimal) -> Leg {
        Leg {
            account,
            side,
            amount,
            currency: self.rules.currency,
            bucket: Bucket::Available,
            expected_version: None,
        }
    }
}

/// Every declared field given, with the right type; nothing else given.
fn check_fields(rule: &TxnRule, request: &PostRequest) -> Result<(), LedgerError> {
    let given = request
        .members
        .keys()
        .map(|k| (k, FieldType::Member))
        .chain(request.channels.keys().map(|k| (k, FieldType::Channel)))
        .chain(request.amounts.keys().map(|k| (k, FieldType::Amount)));
    for (field, ty) in given {
        match rule.fields.get(field) {
            None => {
                return Err(LedgerError::UnexpectedField {
                    txn: rule.name.clone(),
                    field: field.clone(),
                })
            }
            Some(&expected) if expected != ty => {
                return Err(LedgerError::FieldType {
                    txn: rule.name.clone(),
                    field: field.clone(),
                    expected,
                })
            }
            Some(_) => {}
        }
    }
    for (field, ty) in &rule.fields {
        let present = match ty {
            FieldType::Member => request.members.contains_key(field),
            FieldType::Channel => request.channels.contains_key(field),
            FieldType::Amount => request.amounts.contains_key(field),
        };
        if !present {
            return Err(LedgerError::MissingField {
                txn: rule.name.clone(),
                field: field.clone(),
            });
        }
    }
    for (field, value) in &request.amounts {
        let must_be_positive = field == "amount";
        if value.is_sign_negative() && !value.is_zero() || must_be_positive && value.is_zero() {
            return Err(LedgerError::AmountNotPositive {
                txn: rule.name.clone(),
                field: field.clone(),
                value: *value,
            });
        }
    }
    Ok(())
}

/// One rule leg as a transaction posted it: possibly several details on
/// the same account and side (a debit split by bucket).
struct Aligned<'a> {
    leg: usize,
    details: Vec<&'a DetailView>,
}

impl Aligned<'_> {
    fn account(&self) -> AccountId {
        self.details.first().map_or(AccountId(0), |d| d.account)
    }

    fn amount(&self) -> Decimal {
        self.details.iter().map(|d| d.amount).sum()
    }

    fn non_withdrawable(&self) -> Decimal {
        self.details
            .iter()
            .filter(|d| d.bucket == Bucket::NonWithdrawable)
            .map(|d| d.amount)
            .sum()
    }
}

/// Pairs a transaction's details with the rule legs that made them. Legs of
/// zero amount were left out when it was posted, so a rule leg is matched
/// only by a detail on its side and of its kind of account, in order; the
/// details right after it on the same account and side are its too.
fn align<'a>(rule: &TxnRule, details: &'a [DetailView]) -> Option<Vec<Aligned<'a>>> {
    let mut out: Vec<Aligned<'a>> = Vec::with_capacity(details.len());
    let mut next = details.iter().peekable();
    for (i, leg) in rule.legs.iter().enumerate() {
        let Some(d) = next.peek() else { break };
        let fits = d.side == leg.side
            && match (&leg.account, AccountNo::of_account_id(d.account)) {
                (AccountRef::Member { account, .. }, Some((no, sub))) => {
                    no.class() != AccountClass::Internal && sub == account.code()
                        // A refund held for a closed member (see `suspense`).
                        || leg.side == Side::Credit && d.account == suspense_account()
                }
                (_, Some((no, _))) => no.class() == AccountClass::Internal,
                (_, None) => false,
            };
        if fits {
            let first = *d;
            let mut group = Aligned {
                leg: i,
                details: vec![first],
            };
            next.next();
            while let Some(more) =
                next.next_if(|m| m.account == first.account && m.side == first.side)
            {
                group.details.push(more);
            }
            out.push(group);
        }
    }
    (next.peek().is_none()).then_some(out)
}

/// The `amount` of a committed refund, and what it gave back to each
/// member account as non-withdrawable money.
fn refund_parts(
    rule: &TxnRule,
    details: &[DetailView],
) -> Option<(Decimal, Vec<(AccountId, Decimal)>)> {
    let aligned = align(rule, details)?;
    let amount = aligned
        .iter()
        .find(|a| rule.legs[a.leg].amount.is_field("amount"))
        .map(Aligned::amount)?;
    let back = aligned
        .iter()
        .filter(|a| a.details.iter().any(|d| d.side == Side::Credit))
        .map(|a| (a.account(), a.non_withdrawable()))
        .filter(|(_, nw)| !nw.is_zero())
        .collect();
    Some((amount, back))
}

/// The registries a batch of limit charges reads, locked once.
struct Locked<'a> {
    members: &'a FxHashMap<AccountNo, Member>,
    persons: &'a FxHashMap<String, Vec<AccountNo>>,
    /// [`Persons::shared`], read under the `persons` lock.
    shared: bool,
}

/// A member known and verified, given its status.
fn verified_in(
    members: &FxHashMap<AccountNo, Member>,
    status: MemberStatus,
    number: AccountNo,
) -> Result<(), LedgerError> {
    match members.get(&number) {
        None => return Err(LedgerError::UnknownMember(number)),
        Some(member) if !member.verified => return Err(LedgerError::MemberNotVerified(number)),
        Some(_) => {}
    }
    match status {
        MemberStatus::Active => Ok(()),
        MemberStatus::Frozen => Err(LedgerError::MemberFrozen(number)),
        MemberStatus::Closed => Err(LedgerError::MemberClosed(number)),
    }
}

/// The platform's suspense account (refunds held for closed members).
pub(super) fn suspense_account() -> AccountId {
    Internal::Platform(super::internal::PlatformAccount::Suspense)
        .account_no()
        .account_id(0)
}

/// Is this a member's balance account (a wallet)?
fn is_wallet(account: AccountId) -> bool {
    AccountNo::of_account_id(account).is_some_and(|(no, sub)| {
        no.class() != AccountClass::Internal && sub == AccountType::Balance.code()
    })
}

/// Pushes `leg` as up to two legs: `first` of `part` in bucket `a`, the
/// rest in bucket `b` (a zero part is left out).
pub(super) fn push_split(out: &mut Vec<Leg>, leg: &Leg, first: Decimal, a: Bucket, b: Bucket) {
    if first > Decimal::ZERO {
        out.push(Leg {
            amount: first,
            bucket: a,
            ..leg.clone()
        });
    }
    if leg.amount > first {
        out.push(Leg {
            amount: leg.amount - first,
            bucket: b,
            ..leg.clone()
        });
    }
}

/// A rule's build error as the ledger's.
pub(super) fn build_error(txn: &str, e: BuildError) -> LedgerError {
    match e {
        BuildError::MissingAmount(field) => LedgerError::MissingField {
            txn: txn.to_string(),
            field,
        },
        BuildError::Negative { leg, value } => LedgerError::NegativeLeg {
            txn: txn.to_string(),
            leg,
            value,
        },
    }
}

const MEMBER_PREFIX: &[u8] = b"member/";

fn member_key(number: AccountNo) -> Vec<u8> {
    let mut key = MEMBER_PREFIX.to_vec();
    key.extend_from_slice(number.to_string().as_bytes());
    key
}

/// Every metadata record whose key starts with `prefix`, decoded with
/// postcard, in key order, with its key (a record that does not decode is
/// a `MemberRecord` error naming its key).
pub(super) async fn all_records<T: serde::de::DeserializeOwned>(
    engine: &Engine,
    prefix: &[u8],
) -> Result<Vec<(Vec<u8>, T)>, LedgerError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = engine
            .records(prefix.to_vec(), after.take(), RECORDS_PAGE_MAX)
            .await?;
        let Some((last, _)) = page.last() else {
            return Ok(out);
        };
        after = Some(last.clone());
        for (key, value) in page {
            let decoded = postcard::from_bytes(&value).map_err(|e| {
                LedgerError::MemberRecord(format!("{}: {e}", String::from_utf8_lossy(&key)))
            })?;
            out.push((key, decoded));
        }
    }
}

/// Every member recorded in the engine's store.
pub(super) async fn load_members(
    engine: &Engine,
) -> Result<FxHashMap<AccountNo, Member>, LedgerError> {
    let members: Vec<(Vec<u8>, Member)> = all_records(engine, MEMBER_PREFIX).await?;
    Ok(members.into_iter().map(|(_, m)| (m.number, m)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_differ_by_tag_original_and_number() {
        let a = derived_id(TAG_REFUND, TxnId(1), 0);
        assert_eq!(a, derived_id(TAG_REFUND, TxnId(1), 0));
        assert_ne!(a, derived_id(TAG_REFUND, TxnId(1), 1));
        assert_ne!(a, derived_id(TAG_REVERSAL, TxnId(1), 0));
        assert_ne!(a, derived_id(TAG_REFUND, TxnId(2), 0));
        for id in 0..1000u128 {
            assert!((1..=4).contains(&summary_slot(TxnId(id), 4)));
        }
    }
}
