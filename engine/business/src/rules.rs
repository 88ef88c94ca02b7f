//! Posting rules (清分规则) as configuration: a TOML file maps each
//! transaction code to its legs — which account (a member account named by a
//! request field, a channel account of the channel a request field names, or
//! a platform account), which amount (`amount`, `fee`, `amount - fee`, …),
//! which side and bucket, and when (real time, or summarised daily on
//! internal accounts). The file is checked whole when loaded; a bad file is
//! refused with an error naming its line, and the ledger does not start.
//! The format is documented in `docs/posting-rules.md`.

use super::internal::{Channel, ChannelAccount, Internal, PlatformAccount, CHANNEL_NUMBER_MAX};
use super::member::MemberLevel;
use super::template::AccountType;
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use tally_engine::{AccountId, Bucket, Currency, Side, TxnCode};
use tally_engine::{Leg, LEGS_MAX};
use toml::Spanned;

/// The rule file shipped with the engine: the whole transaction catalogue.
pub const DEFAULT_RULES: &str = include_str!("../rules/default.toml");
/// Summary slots per daily-summarised internal account, at most.
pub const SUMMARY_SLOTS_MAX: u8 = 64;
/// Transaction rules per file, at most.
pub const TXN_RULES_MAX: usize = 1_000;

/// Why a rule file was refused. `line` is 1-based.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("line {line}: {txn}: unknown field {field:?} (declare it under `fields`)")]
    UnknownField {
        line: usize,
        txn: String,
        field: String,
    },
    #[error(
        "line {line}: {txn}: field {field:?} has unknown type {ty:?} (member, channel or amount)"
    )]
    UnknownFieldType {
        line: usize,
        txn: String,
        field: String,
        ty: String,
    },
    #[error("line {line}: {txn}: field {field:?} is a {found}, used as a {expected}")]
    FieldType {
        line: usize,
        txn: String,
        field: String,
        found: FieldType,
        expected: FieldType,
    },
    #[error("line {line}: {txn}: unknown account role {role:?}")]
    UnknownRole {
        line: usize,
        txn: String,
        role: String,
    },
    #[error("line {line}: {txn}: debits ({debits}) and credits ({credits}) cannot balance")]
    Unbalanced {
        line: usize,
        txn: String,
        debits: String,
        credits: String,
    },
    #[error("line {line}: {txn}: {message}")]
    Invalid {
        line: usize,
        txn: String,
        message: String,
    },
    #[error("line {line}: {what} is defined twice")]
    Duplicate { line: usize, what: String },
}

/// The type of a request field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// A member's main account number.
    Member,
    /// A funding channel's name.
    Channel,
    /// An amount of money, zero or more.
    Amount,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldType::Member => "member",
            FieldType::Channel => "channel",
            FieldType::Amount => "amount",
        })
    }
}

/// Which account a leg posts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountRef {
    /// `<member field>.<account type>`
    Member { field: String, account: AccountType },
    /// `<channel field>.<channel account>`
    Channel {
        field: String,
        account: ChannelAccount,
    },
    /// `platform.<account>`
    Platform(PlatformAccount),
}

/// When a leg posts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// On the account itself, now.
    Realtime,
    /// Now on one of the internal account's summary slots; onto the account
    /// itself by the daily summary.
    Daily,
}

/// A linear combination of amount fields: `amount - fee` is
/// `[(1, "amount"), (-1, "fee")]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmountExpr {
    pub terms: Vec<(i64, String)>,
}

impl AmountExpr {
    fn parse(text: &str) -> Option<AmountExpr> {
        let mut terms = Vec::new();
        let mut sign = 1i64;
        let mut expect_name = true;
        for token in text.split_whitespace() {
            match (expect_name, token) {
                (false, "+") => sign = 1,
                (false, "-") => sign = -1,
                (true, name) if is_identifier(name) => terms.push((sign, name.to_string())),
                _ => return None,
            }
            expect_name = !expect_name;
        }
        (!terms.is_empty() && !expect_name).then_some(AmountExpr { terms })
    }

    /// Is this exactly the one field `name`?
    pub fn is_field(&self, name: &str) -> bool {
        matches!(self.terms.as_slice(), [(1, n)] if n == name)
    }

    /// The value for the request's amounts; `None` if a field is missing.
    pub fn eval(&self, amounts: &BTreeMap<String, Decimal>) -> Option<Decimal> {
        let mut total = Decimal::ZERO;
        for (sign, name) in &self.terms {
            let value = *amounts.get(name)?;
            total = total.checked_add(Decimal::from(*sign).checked_mul(value)?)?;
        }
        Some(total)
    }
}

impl fmt::Display for AmountExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (sign, name)) in self.terms.iter().enumerate() {
            match (i, *sign < 0) {
                (0, false) => write!(f, "{name}")?,
                (0, true) => write!(f, "-{name}")?,
                (_, false) => write!(f, " + {name}")?,
                (_, true) => write!(f, " - {name}")?,
            }
        }
        Ok(())
    }
}

fn is_identifier(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// One leg of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegRule {
    pub account: AccountRef,
    pub side: Side,
    pub bucket: Bucket,
    pub amount: AmountExpr,
    pub timing: Timing,
    /// Where it is in the rule file.
    pub line: usize,
}

/// What kind of engine transaction a rule makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    Posted,
    /// Reserved until captured or released; released by the engine after
    /// `timeout_ms` (a request may ask for another deadline).
    Pending {
        timeout_ms: u64,
    },
}

/// The rules of one transaction code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRule {
    pub name: String,
    pub code: TxnCode,
    pub kind: RuleKind,
    pub fields: BTreeMap<String, FieldType>,
    /// The member field whose limits the `amount` field counts against.
    pub limit: Option<String>,
    /// The transaction that refunds this one.
    pub refund: Option<String>,
    /// Does a refund give back the fee, pro rata (`refund_fee = true`)? By
    /// default the fee is never refunded.
    pub refund_fee: bool,
    pub legs: Vec<LegRule>,
    pub line: usize,
}

/// Limits of one member level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_txn_max: Decimal,
    pub daily_max: Decimal,
}

/// Red packets (红包), from the file's `[red_packet]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedPacketRules {
    /// The sender's debit into the red-packet product account.
    pub send_code: TxnCode,
    /// One claim: product account to the claimant.
    pub claim_code: TxnCode,
    /// What is left at the deadline, back to the sender.
    pub return_code: TxnCode,
    /// Packets per red packet, at most.
    pub max_packets: u32,
    /// How long a red packet may be claimed, unless the sender says.
    pub expiry_ms: u64,
    /// Claims credit the claimant non-withdrawable whatever the sender
    /// paid with (otherwise only the non-withdrawable part the send took).
    pub claims_non_withdrawable: bool,
    /// May a sender claim a packet of their own red packet?
    pub own_claim: bool,
    /// Does sending count against the sender's daily limit?
    pub limited: bool,
}

/// Limits per person (one real-name identity) across its members, from
/// the file's `[person]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonRules {
    /// Members one identity may open, at most.
    pub members_max: Option<u32>,
    /// What all of one person's members may pay in a day together (each
    /// member's level limits apply as well).
    pub daily_max: Option<Decimal>,
}

/// Red packets per red packet, at most, whatever a file says.
pub const RED_PACKETS_MAX: u32 = 10_000;

/// A validated rule file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub currency: Currency,
    pub reversal_code: TxnCode,
    pub summary_code: TxnCode,
    /// Pays out money held in suspense (a refund or reversal to a closed
    /// member) by an operator: `held_payout_code`, 9003 unless set.
    pub held_payout_code: TxnCode,
    pub summary_slots: u8,
    pub levels: BTreeMap<MemberLevel, Limits>,
    pub channels: Vec<Channel>,
    /// Red packets, if the file configures them.
    pub red_packet: Option<RedPacketRules>,
    /// Limits per person, if the file sets them.
    pub person: Option<PersonRules>,
    txns: BTreeMap<String, TxnRule>,
}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    settings: SettingsSpec,
    #[serde(default)]
    level: Vec<Spanned<LevelSpec>>,
    #[serde(default)]
    channel: Vec<Spanned<ChannelSpec>>,
    #[serde(default)]
    txn: Vec<Spanned<TxnSpec>>,
    #[serde(default)]
    red_packet: Option<Spanned<RedPacketSpec>>,
    #[serde(default)]
    person: Option<Spanned<PersonSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonSpec {
    members_max: Option<u32>,
    #[serde(default)]
    daily_max: Option<Decimal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedPacketSpec {
    send_code: u32,
    claim_code: u32,
    return_code: u32,
    max_packets: u32,
    expiry_ms: u64,
    #[serde(default)]
    claims_non_withdrawable: bool,
    #[serde(default)]
    own_claim: bool,
    #[serde(default = "yes")]
    limited: bool,
}

fn yes() -> bool {
    true
}

fn held_payout_code() -> u32 {
    9003
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsSpec {
    currency: Spanned<String>,
    reversal_code: u32,
    summary_code: u32,
    #[serde(default = "held_payout_code")]
    held_payout_code: u32,
    summary_slots: Spanned<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelSpec {
    name: String,
    per_txn_max: Decimal,
    daily_max: Decimal,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelSpec {
    name: String,
    number: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnSpec {
    name: String,
    code: u32,
    /// For people reading the file; the ledger ignores it.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default = "posted")]
    kind: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    fields: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    limit: Option<Spanned<String>>,
    #[serde(default)]
    refund: Option<Spanned<String>>,
    #[serde(default)]
    refund_fee: Option<Spanned<bool>>,
    #[serde(default)]
    legs: Vec<Spanned<LegSpec>>,
}

fn posted() -> String {
    "posted".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegSpec {
    account: String,
    side: String,
    amount: String,
    #[serde(default)]
    bucket: Option<String>,
    #[serde(default)]
    timing: Option<String>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl RuleSet {
    /// The shipped catalogue.
    pub fn default_rules() -> Result<RuleSet, RuleError> {
        RuleSet::parse(DEFAULT_RULES)
    }

    /// Parses and checks a rule file.
    pub fn parse(text: &str) -> Result<RuleSet, RuleError> {
        let file: FileSpec = toml::from_str(text).map_err(|e| RuleError::Syntax {
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let line = |start: usize| line_of(text, start);
        let settings = &file.settings;
        let currency =
            Currency::parse(settings.currency.get_ref()).ok_or_else(|| RuleError::Invalid {
                line: line(settings.currency.span().start),
                txn: "settings".into(),
                message: format!(
                    "currency {:?} is not a three-letter code",
                    settings.currency.get_ref()
                ),
            })?;
        let slots = *settings.summary_slots.get_ref();
        if slots == 0 || slots > SUMMARY_SLOTS_MAX {
            return Err(RuleError::Invalid {
                line: line(settings.summary_slots.span().start),
                txn: "settings".into(),
                message: format!("summary_slots must be 1..={SUMMARY_SLOTS_MAX}, got {slots}"),
            });
        }
        let levels = levels(&file.level, &line)?;
        let channels = channels(&file.channel, &line)?;
        let mut rules = RuleSet {
            currency,
            reversal_code: TxnCode(settings.reversal_code),
            summary_code: TxnCode(settings.summary_code),
            held_payout_code: TxnCode(settings.held_payout_code),
            summary_slots: slots,
            levels,
            channels,
            red_packet: None,
            person: None,
            txns: BTreeMap::new(),
        };
        if file.txn.len() > TXN_RULES_MAX {
            return Err(RuleError::Invalid {
                line: 1,
                txn: "file".into(),
                message: format!("{} transactions, at most {TXN_RULES_MAX}", file.txn.len()),
            });
        }
        let mut codes = BTreeSet::from([rules.reversal_code, rules.summary_code]);
        if !codes.insert(rules.held_payout_code) {
            let what = format!("transaction code {}", rules.held_payout_code.0);
            return Err(RuleError::Duplicate { line: 1, what });
        }
        for spec in &file.txn {
            let rule = txn_rule(spec, &line)?;
            if !codes.insert(rule.code) {
                let what = format!("transaction code {}", rule.code.0);
                return Err(RuleError::Duplicate {
                    line: rule.line,
                    what,
                });
            }
            if rules.txns.contains_key(&rule.name) {
                let what = format!("transaction {:?}", rule.name);
                return Err(RuleError::Duplicate {
                    line: rule.line,
                    what,
                });
            }
            rules.txns.insert(rule.name.clone(), rule);
        }
        for spec in &file.txn {
            check_refund(&rules, spec, &line)?;
        }
        if let Some(spec) = &file.red_packet {
            let at = line(spec.span().start);
            let s = spec.get_ref();
            let invalid = |message: String| RuleError::Invalid {
                line: at,
                txn: "red_packet".into(),
                message,
            };
            if s.max_packets == 0 || s.max_packets > RED_PACKETS_MAX {
                return Err(invalid(format!(
                    "max_packets must be 1..={RED_PACKETS_MAX}"
                )));
            }
            if s.expiry_ms == 0 {
                return Err(invalid("expiry_ms must be positive".into()));
            }
            for code in [s.send_code, s.claim_code, s.return_code] {
                if !codes.insert(TxnCode(code)) {
                    let what = format!("transaction code {code}");
                    return Err(RuleError::Duplicate { line: at, what });
                }
            }
            rules.red_packet = Some(RedPacketRules {
                send_code: TxnCode(s.send_code),
                claim_code: TxnCode(s.claim_code),
                return_code: TxnCode(s.return_code),
                max_packets: s.max_packets,
                expiry_ms: s.expiry_ms,
                claims_non_withdrawable: s.claims_non_withdrawable,
                own_claim: s.own_claim,
                limited: s.limited,
            });
        }
        if let Some(spec) = &file.person {
            let s = spec.get_ref();
            let invalid = |message: &str| RuleError::Invalid {
                line: line(spec.span().start),
                txn: "person".into(),
                message: message.into(),
            };
            if s.members_max == Some(0) {
                return Err(invalid("members_max must be at least 1"));
            }
            if s.daily_max.is_some_and(|d| d <= Decimal::ZERO) {
                return Err(invalid("daily_max must be positive"));
            }
            rules.person = Some(PersonRules {
                members_max: s.members_max,
                daily_max: s.daily_max,
            });
        }
        Ok(rules)
    }

    pub fn txn(&self, name: &str) -> Option<&TxnRule> {
        self.txns.get(name)
    }

    pub fn txn_by_code(&self, code: TxnCode) -> Option<&TxnRule> {
        self.txns.values().find(|t| t.code == code)
    }

    pub fn txns(&self) -> impl Iterator<Item = &TxnRule> {
        self.txns.values()
    }

    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// Every internal account the rules can touch, with whether any rule
    /// posts to it daily (it then has summary slots).
    pub fn internal_accounts(&self) -> BTreeMap<Internal, bool> {
        let mut out = BTreeMap::new();
        for account in PlatformAccount::ALL {
            out.insert(Internal::Platform(account), false);
        }
        for channel in &self.channels {
            for account in ChannelAccount::ALL {
                let internal = Internal::Channel {
                    number: channel.number,
                    account,
                };
                out.insert(internal, false);
            }
        }
        for rule in self.txns.values() {
            for leg in rule.legs.iter().filter(|l| l.timing == Timing::Daily) {
                match &leg.account {
                    AccountRef::Platform(account) => {
                        out.insert(Internal::Platform(*account), true);
                    }
                    AccountRef::Channel { account, .. } => {
                        for channel in &self.channels {
                            let number = channel.number;
                            out.insert(
                                Internal::Channel {
                                    number,
                                    account: *account,
                                },
                                true,
                            );
                        }
                    }
                    AccountRef::Member { .. } => {}
                }
            }
        }
        out
    }
}

fn levels(
    specs: &[Spanned<LevelSpec>],
    line: &impl Fn(usize) -> usize,
) -> Result<BTreeMap<MemberLevel, Limits>, RuleError> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let at = line(spec.span().start);
        let s = spec.get_ref();
        if s.per_txn_max <= Decimal::ZERO || s.daily_max < s.per_txn_max {
            return Err(RuleError::Invalid {
                line: at,
                txn: format!("level {}", s.name),
                message: "limits must be positive and per_txn_max <= daily_max".into(),
            });
        }
        let limits = Limits {
            per_txn_max: s.per_txn_max,
            daily_max: s.daily_max,
        };
        if out.insert(MemberLevel(s.name.clone()), limits).is_some() {
            let what = format!("level {:?}", s.name);
            return Err(RuleError::Duplicate { line: at, what });
        }
    }
    Ok(out)
}

fn channels(
    specs: &[Spanned<ChannelSpec>],
    line: &impl Fn(usize) -> usize,
) -> Result<Vec<Channel>, RuleError> {
    let mut out: Vec<Channel> = Vec::new();
    for spec in specs {
        let at = line(spec.span().start);
        let s = spec.get_ref();
        if s.number == 0 || s.number > CHANNEL_NUMBER_MAX {
            return Err(RuleError::Invalid {
                line: at,
                txn: format!("channel {}", s.name),
                message: format!("number must be 1..={CHANNEL_NUMBER_MAX}"),
            });
        }
        if out.iter().any(|c| c.name == s.name || c.number == s.number) {
            let what = format!("channel {:?} / number {}", s.name, s.number);
            return Err(RuleError::Duplicate { line: at, what });
        }
        out.push(Channel {
            name: s.name.clone(),
            number: s.number,
        });
    }
    Ok(out)
}

fn txn_rule(spec: &Spanned<TxnSpec>, line: &impl Fn(usize) -> usize) -> Result<TxnRule, RuleError> {
    let at = line(spec.span().start);
    let s = spec.get_ref();
    let invalid = |line: usize, message: String| RuleError::Invalid {
        line,
        txn: s.name.clone(),
        message,
    };
    let kind = match (s.kind.as_str(), s.timeout_ms) {
        ("posted", None) => RuleKind::Posted,
        ("pending", Some(timeout_ms)) if timeout_ms > 0 => RuleKind::Pending { timeout_ms },
        ("posted", Some(_)) => {
            return Err(invalid(at, "timeout_ms applies to pending only".into()))
        }
        ("pending", _) => return Err(invalid(at, "pending needs a positive timeout_ms".into())),
        (other, _) => {
            return Err(invalid(
                at,
                format!("kind {other:?} is not posted or pending"),
            ))
        }
    };
    let mut fields = BTreeMap::new();
    for (name, ty) in &s.fields {
        let field_type = match ty.get_ref().as_str() {
            "member" => FieldType::Member,
            "channel" => FieldType::Channel,
            "amount" => FieldType::Amount,
            other => {
                return Err(RuleError::UnknownFieldType {
                    line: line(ty.span().start),
                    txn: s.name.clone(),
                    field: name.clone(),
                    ty: other.into(),
                })
            }
        };
        fields.insert(name.clone(), field_type);
    }
    let mut rule = TxnRule {
        name: s.name.clone(),
        code: TxnCode(s.code),
        kind,
        fields,
        limit: None,
        refund: s.refund.as_ref().map(|r| r.get_ref().clone()),
        refund_fee: s.refund_fee.as_ref().is_some_and(|f| *f.get_ref()),
        legs: Vec::new(),
        line: at,
    };
    if let Some(limit) = &s.limit {
        expect_field(
            &rule,
            limit.get_ref(),
            FieldType::Member,
            line(limit.span().start),
        )?;
        if rule.fields.get("amount") != Some(&FieldType::Amount) {
            return Err(invalid(
                at,
                "a limit counts the `amount` field: declare it".into(),
            ));
        }
        rule.limit = Some(limit.get_ref().clone());
    }
    if s.legs.is_empty() || s.legs.len() > LEGS_MAX {
        return Err(invalid(at, format!("needs 1..={LEGS_MAX} legs")));
    }
    for leg in &s.legs {
        let parsed = leg_rule(&rule, leg, line)?;
        rule.legs.push(parsed);
    }
    check_balance(&rule)?;
    Ok(rule)
}

fn expect_field(
    rule: &TxnRule,
    field: &str,
    expected: FieldType,
    line: usize,
) -> Result<(), RuleError> {
    match rule.fields.get(field) {
        None => Err(RuleError::UnknownField {
            line,
            txn: rule.name.clone(),
            field: field.into(),
        }),
        Some(&found) if found != expected => Err(RuleError::FieldType {
            line,
            txn: rule.name.clone(),
            field: field.into(),
            found,
            expected,
        }),
        Some(_) => Ok(()),
    }
}

fn leg_rule(
    rule: &TxnRule,
    spec: &Spanned<LegSpec>,
    line: &impl Fn(usize) -> usize,
) -> Result<LegRule, RuleError> {
    let at = line(spec.span().start);
    let s = spec.get_ref();
    let invalid = |message: String| RuleError::Invalid {
        line: at,
        txn: rule.name.clone(),
        message,
    };
    let account = account_ref(rule, &s.account, at)?;
    let side = match s.side.as_str() {
        "debit" => Side::Debit,
        "credit" => Side::Credit,
        other => return Err(invalid(format!("side {other:?} is not debit or credit"))),
    };
    let bucket = match s.bucket.as_deref().unwrap_or("available") {
        "available" => Bucket::Available,
        "withdrawable" => Bucket::Withdrawable,
        "non_withdrawable" => Bucket::NonWithdrawable,
        "frozen" => Bucket::Frozen,
        other => return Err(invalid(format!("unknown bucket {other:?}"))),
    };
    let timing = match s.timing.as_deref().unwrap_or("realtime") {
        "realtime" => Timing::Realtime,
        "daily" => Timing::Daily,
        other => {
            return Err(invalid(format!(
                "timing {other:?} is not realtime or daily"
            )))
        }
    };
    if timing == Timing::Daily && matches!(account, AccountRef::Member { .. }) {
        return Err(invalid(
            "only internal accounts can be summarised daily".into(),
        ));
    }
    if timing == Timing::Daily && matches!(rule.kind, RuleKind::Pending { .. }) {
        return Err(invalid(
            "a pending transaction posts in real time only".into(),
        ));
    }
    if bucket == Bucket::Frozen
        && matches!(rule.kind, RuleKind::Pending { .. })
        && side == Side::Debit
    {
        return Err(invalid(
            "a pending transaction cannot reserve frozen money".into(),
        ));
    }
    let amount = AmountExpr::parse(&s.amount)
        .ok_or_else(|| invalid(format!("amount {:?} is not like `amount - fee`", s.amount)))?;
    for (_, name) in &amount.terms {
        expect_field(rule, name, FieldType::Amount, at)?;
    }
    Ok(LegRule {
        account,
        side,
        bucket,
        amount,
        timing,
        line: at,
    })
}

fn account_ref(rule: &TxnRule, text: &str, line: usize) -> Result<AccountRef, RuleError> {
    let unknown = || RuleError::UnknownRole {
        line,
        txn: rule.name.clone(),
        role: text.into(),
    };
    let (owner, account) = text.split_once('.').ok_or_else(unknown)?;
    if owner == "platform" {
        return PlatformAccount::parse(account)
            .map(AccountRef::Platform)
            .ok_or_else(unknown);
    }
    match rule.fields.get(owner) {
        Some(FieldType::Member) => AccountType::parse(account)
            .map(|account| AccountRef::Member {
                field: owner.into(),
                account,
            })
            .ok_or_else(unknown),
        Some(FieldType::Channel) => ChannelAccount::parse(account)
            .map(|account| AccountRef::Channel {
                field: owner.into(),
                account,
            })
            .ok_or_else(unknown),
        Some(&found) => Err(RuleError::FieldType {
            line,
            txn: rule.name.clone(),
            field: owner.into(),
            found,
            expected: FieldType::Member,
        }),
        None => Err(unknown()),
    }
}

/// Debits and credits must be equal for every value of the amount fields:
/// the coefficients of each field must cancel.
fn check_balance(rule: &TxnRule) -> Result<(), RuleError> {
    let mut net: BTreeMap<&str, i64> = BTreeMap::new();
    for leg in &rule.legs {
        let sign = if leg.side == Side::Debit { 1 } else { -1 };
        for (coefficient, name) in &leg.amount.terms {
            *net.entry(name).or_default() += sign * coefficient;
        }
    }
    if net.values().all(|&c| c == 0) {
        return Ok(());
    }
    let side = |side: Side| {
        rule.legs
            .iter()
            .filter(|l| l.side == side)
            .map(|l| l.amount.to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    Err(RuleError::Unbalanced {
        line: rule.line,
        txn: rule.name.clone(),
        debits: side(Side::Debit),
        credits: side(Side::Credit),
    })
}

/// A refund transaction takes its member accounts from the original's legs
/// and its amount from the request: its fields must be the original's member
/// fields plus `amount`, and the original must have a leg of exactly `amount`.
fn check_refund(
    rules: &RuleSet,
    spec: &Spanned<TxnSpec>,
    line: &impl Fn(usize) -> usize,
) -> Result<(), RuleError> {
    let Some(refund) = &spec.get_ref().refund else {
        if let Some(fee) = &spec.get_ref().refund_fee {
            return Err(RuleError::Invalid {
                line: line(fee.span().start),
                txn: spec.get_ref().name.clone(),
                message: "refund_fee needs a refund".into(),
            });
        }
        return Ok(());
    };
    let at = line(refund.span().start);
    let name = &spec.get_ref().name;
    let invalid = |message: String| RuleError::Invalid {
        line: at,
        txn: name.clone(),
        message,
    };
    let original = rules
        .txn(name)
        .ok_or_else(|| invalid("not loaded".into()))?;
    let target = rules.txn(refund.get_ref()).ok_or_else(|| {
        invalid(format!(
            "refund {:?} is not a transaction of this file",
            refund.get_ref()
        ))
    })?;
    // A pending original is refunded through its capture.
    if target.kind != RuleKind::Posted {
        return Err(invalid("a refund is a posted transaction".into()));
    }
    if original.refund_fee
        && (original.fields.get("fee") != Some(&FieldType::Amount)
            || target.fields.get("fee") != Some(&FieldType::Amount))
    {
        return Err(invalid(
            "refund_fee needs a `fee` amount field in the transaction and in its refund".into(),
        ));
    }
    if !original.legs.iter().any(|l| l.amount.is_field("amount")) {
        return Err(invalid(
            "a refundable transaction needs a leg of exactly `amount`".into(),
        ));
    }
    for (field, ty) in &target.fields {
        let ok = match ty {
            // `fee`: the part of the original's fee a refund gives back
            // (zero unless the original's rule says `refund_fee`).
            FieldType::Amount => field == "amount" || field == "fee",
            FieldType::Member => original
                .legs
                .iter()
                .any(|l| matches!(&l.account, AccountRef::Member { field: f, .. } if f == field)),
            FieldType::Channel => false,
        };
        if !ok {
            return Err(invalid(format!(
                "refund field {field:?} cannot be taken from the original (member accounts it posts to, and `amount`)"
            )));
        }
    }
    Ok(())
}

/// Why a rule could not be turned into legs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("amount field {0:?} is missing")]
    MissingAmount(String),
    #[error("leg {leg} would post a negative amount {value}")]
    Negative { leg: usize, value: Decimal },
}

impl TxnRule {
    /// The legs for a request: `resolve` gives each leg's engine account
    /// (it sees the leg's timing, to pick a summary slot); legs whose amount
    /// is zero are left out (a payment without fee has no fee leg).
    pub fn build_legs(
        &self,
        amounts: &BTreeMap<String, Decimal>,
        currency: Currency,
        mut resolve: impl FnMut(&LegRule) -> AccountId,
    ) -> Result<Vec<Leg>, BuildError> {
        let mut legs = Vec::with_capacity(self.legs.len());
        for (i, rule) in self.legs.iter().enumerate() {
            let value = rule.amount.eval(amounts).ok_or_else(|| {
                let missing = rule
                    .amount
                    .terms
                    .iter()
                    .find(|(_, n)| !amounts.contains_key(n))
                    .map_or_else(String::new, |(_, n)| n.clone());
                BuildError::MissingAmount(missing)
            })?;
            if value.is_sign_negative() && !value.is_zero() {
                return Err(BuildError::Negative { leg: i, value });
            }
            if value.is_zero() {
                continue;
            }
            let account = resolve(rule);
            legs.push(Leg {
                account,
                side: rule.side,
                amount: value,
                currency,
                bucket: rule.bucket,
                expected_version: None,
            });
        }
        Ok(legs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
