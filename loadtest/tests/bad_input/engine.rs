//! The engine API surface: `Engine::submit_blocking` and
//! `Engine::account_ops` against one in-memory world of accounts in every
//! status, pending transfers in every state and an account at the top of
//! its range.
//!
//! What a refusal guarantees, as the engine documents it (`Outcome`,
//! `Reject`): a refusal decided before sequencing (malformed input, an id
//! conflict) has no timestamp and leaves the id as it was — unused, or with
//! its earlier answer; a refusal the sequencer or a shard decides is
//! recorded: the id keeps that answer for ever (`engine.transaction` shows
//! it, a resubmission is a duplicate with the same timestamp) and
//! `Audit::rejected` counts it. Either way no balance, version or detail
//! moves.

use crate::Failures;
use rust_decimal::Decimal;
use std::str::FromStr;
use std::sync::Arc;
use tally_engine::*;

const BANK: u64 = 1;
/// Funds `FULL` with the largest amount: its own balance is at the top too.
const BANK_BIG: u64 = 2;
const USD_BANK: u64 = 3;
const YEN_BANK: u64 = 4;
/// 95.00 (100.00 less the 5.00 `PENDING_POSTED` captured), 10.00 of it
/// reserved by `PENDING_OPEN`: 85.00 available.
const A: u64 = 10;
/// 105.00, 10.00 incoming.
const B: u64 = 11;
/// 0.00 at version 2 (0.01 in, 0.01 out).
const EMPTY: u64 = 12;
/// 50.00, status frozen.
const FROZEN: u64 = 13;
/// Closed.
const CLOSED: u64 = 14;
/// 50.00, receive-only.
const RECEIVE_ONLY: u64 = 15;
/// 50.00, pay-only.
const PAY_ONLY: u64 = 16;
/// The largest balance a CNY account holds: i64::MAX fen.
const FULL: u64 = 17;
/// 10.00 USD.
const USD_ACCOUNT: u64 = 20;
/// 100 JPY (no decimal places).
const YEN: u64 = 21;
const NOBODY: u64 = 999;

const ACCOUNTS: [u64; 14] = [
    BANK,
    BANK_BIG,
    USD_BANK,
    YEN_BANK,
    A,
    B,
    EMPTY,
    FROZEN,
    CLOSED,
    RECEIVE_ONLY,
    PAY_ONLY,
    FULL,
    USD_ACCOUNT,
    YEN,
];

/// A → B 10.00, reserved for an hour.
const PENDING_OPEN: u128 = 500;
/// A → B 5.00, captured by 601.
const PENDING_POSTED: u128 = 501;
/// A → B 5.00, voided by 602.
const PENDING_VOIDED: u128 = 502;
/// A → B 1.00 for 1 ms, expired.
const PENDING_EXPIRED: u128 = 503;
/// A committed transfer BANK → A (the first funding).
const FUNDED: u128 = 100;
/// A transfer refused for want of funds while the world was built.
const REFUSED: u128 = 700;

/// The ids the world itself used: their answers must never change.
const KNOWN: [u128; 9] = [
    FUNDED,
    101,
    PENDING_OPEN,
    PENDING_POSTED,
    PENDING_VOIDED,
    PENDING_EXPIRED,
    601,
    602,
    REFUSED,
];

const LARGEST_FEN: i64 = i64::MAX;

fn fen(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn id(n: u64) -> AccountId {
    AccountId(n)
}

fn debit(account: u64, amount: Decimal) -> Leg {
    Leg::debit(id(account), amount, Currency::CNY)
}

fn credit(account: u64, amount: Decimal) -> Leg {
    Leg::credit(id(account), amount, Currency::CNY)
}

fn posted(txn: u128, legs: Vec<Leg>) -> Transaction {
    Transaction::posted(TxnId(txn), TxnCode(2001), legs)
}

fn transfer(txn: u128, from: u64, to: u64, amount: Decimal) -> Transaction {
    posted(txn, vec![debit(from, amount), credit(to, amount)])
}

fn pending(txn: u128, from: u64, to: u64, amount: Decimal, timeout_ms: u64) -> Transaction {
    Transaction {
        kind: TxnKind::Pending { timeout_ms },
        ..transfer(txn, from, to, amount)
    }
}

fn post(txn: u128, of: u128, legs: Vec<Leg>) -> Transaction {
    Transaction {
        kind: TxnKind::PostPending {
            pending_id: TxnId(of),
        },
        ..posted(txn, legs)
    }
}

fn void(txn: u128, of: u128) -> Transaction {
    Transaction {
        kind: TxnKind::VoidPending {
            pending_id: TxnId(of),
        },
        ..posted(txn, Vec::new())
    }
}

fn with_version(mut txn: Transaction, leg: usize, version: u64) -> Transaction {
    txn.legs[leg].expected_version = Some(Version(version));
    txn
}

fn with_bucket(mut txn: Transaction, leg: usize, bucket: Bucket) -> Transaction {
    txn.legs[leg].bucket = bucket;
    txn
}

/// What one transaction of a case must get.
#[derive(Clone, Debug)]
enum Answer {
    /// Refused before sequencing: no timestamp, the id left as it was.
    Unsequenced(Reject),
    /// Refused by the sequencer or a shard: recorded as the id's answer.
    Recorded(Reject),
}

enum Input {
    Submit(Vec<Transaction>),
    Ops(Vec<AccountOp>),
}

enum Expect {
    Answers(Vec<Answer>),
    /// The call as a whole is refused.
    CallRefused(SubmitError),
    Ops(Vec<Result<(), AccountError>>),
}

pub struct Case {
    name: String,
    input: Input,
    expect: Expect,
}

fn case(name: &str, input: Input, expect: Expect) -> Case {
    Case {
        name: name.to_string(),
        input,
        expect,
    }
}

fn one(name: &str, txn: Transaction, answer: Answer) -> Case {
    case(
        name,
        Input::Submit(vec![txn]),
        Expect::Answers(vec![answer]),
    )
}

fn chain(name: &str, txns: Vec<Transaction>, answers: Vec<Answer>) -> Case {
    case(name, Input::Submit(txns), Expect::Answers(answers))
}

fn ops(name: &str, ops: Vec<AccountOp>, results: Vec<Result<(), AccountError>>) -> Case {
    case(name, Input::Ops(ops), Expect::Ops(results))
}

fn linked(txn: Transaction) -> Transaction {
    txn.linked()
}

use Answer::{Recorded, Unsequenced};

/// New ids for the cases start here (each case uses its own).
const CASE_IDS: u128 = 10_000;

pub fn cases() -> Vec<Case> {
    let mut n = CASE_IDS;
    let mut next = || {
        n += 1;
        n
    };
    let largest = Minor(LARGEST_FEN).to_decimal(2);
    let too_large = largest + fen(1);
    let mut cases = vec![
        // ---- the shape of a transaction ---------------------------------
        one(
            "no legs",
            posted(next(), vec![]),
            Unsequenced(Reject::NoLegs),
        ),
        one(
            "a pending transfer without legs",
            Transaction {
                kind: TxnKind::Pending { timeout_ms: 1_000 },
                ..posted(next(), vec![])
            },
            Unsequenced(Reject::NoLegs),
        ),
        {
            let mut legs = Vec::new();
            for _ in 0..33 {
                legs.push(debit(A, fen(1)));
                legs.push(credit(B, fen(1)));
            }
            one(
                "66 legs",
                posted(next(), legs),
                Unsequenced(Reject::TooManyLegs {
                    count: 66,
                    max: LEGS_MAX,
                }),
            )
        },
        one(
            "zero amount",
            transfer(next(), A, B, Decimal::ZERO),
            Unsequenced(Reject::AmountNotPositive {
                leg: 0,
                amount: Decimal::ZERO,
            }),
        ),
        one(
            "zero written with places (0.00)",
            transfer(next(), A, B, fen(0)),
            Unsequenced(Reject::AmountNotPositive {
                leg: 0,
                amount: fen(0),
            }),
        ),
        one(
            "negative amount",
            transfer(next(), A, B, fen(-1_00)),
            Unsequenced(Reject::AmountNotPositive {
                leg: 0,
                amount: fen(-1_00),
            }),
        ),
        one(
            "negative zero",
            transfer(next(), A, B, dec("-0.00")),
            Unsequenced(Reject::AmountNotPositive {
                leg: 0,
                amount: dec("-0.00"),
            }),
        ),
        one(
            "a negative second leg",
            posted(next(), vec![debit(A, fen(1_00)), credit(B, fen(-1_00))]),
            Unsequenced(Reject::AmountNotPositive {
                leg: 1,
                amount: fen(-1_00),
            }),
        ),
        one(
            "a debit of -x balancing a debit of x",
            posted(next(), vec![debit(A, fen(1_00)), debit(B, fen(-1_00))]),
            Unsequenced(Reject::AmountNotPositive {
                leg: 1,
                amount: fen(-1_00),
            }),
        ),
        one(
            "three decimal places in CNY",
            transfer(next(), A, B, dec("0.001")),
            Unsequenced(Reject::TooManyDecimals {
                leg: 0,
                amount: dec("0.001"),
                currency: Currency::CNY,
                scale: 2,
            }),
        ),
        one(
            "28 decimal places in CNY",
            transfer(next(), A, B, dec("0.0000000000000000000000000001")),
            Unsequenced(Reject::TooManyDecimals {
                leg: 0,
                amount: dec("0.0000000000000000000000000001"),
                currency: Currency::CNY,
                scale: 2,
            }),
        ),
        one(
            "a fraction of a yen",
            posted(
                next(),
                vec![
                    Leg::debit(id(YEN), dec("1.5"), Currency::JPY),
                    Leg::credit(id(YEN_BANK), dec("1.5"), Currency::JPY),
                ],
            ),
            Unsequenced(Reject::TooManyDecimals {
                leg: 0,
                amount: dec("1.5"),
                currency: Currency::JPY,
                scale: 0,
            }),
        ),
        one(
            "unknown currency",
            posted(
                next(),
                vec![
                    Leg::debit(id(A), fen(1_00), Currency(*b"XXX")),
                    Leg::credit(id(B), fen(1_00), Currency(*b"XXX")),
                ],
            ),
            Unsequenced(Reject::UnknownCurrency {
                leg: 0,
                currency: Currency(*b"XXX"),
            }),
        ),
        one(
            "an amount one fen above i64::MAX fen",
            transfer(next(), A, B, too_large),
            Unsequenced(Reject::AmountOverflow {
                leg: 0,
                amount: too_large,
            }),
        ),
        one(
            "Decimal::MAX",
            transfer(next(), A, B, Decimal::MAX),
            Unsequenced(Reject::AmountOverflow {
                leg: 0,
                amount: Decimal::MAX,
            }),
        ),
        one(
            "2^63 yen",
            posted(
                next(),
                vec![
                    Leg::debit(
                        id(YEN),
                        Decimal::from(i64::MAX) + Decimal::ONE,
                        Currency::JPY,
                    ),
                    Leg::credit(
                        id(YEN_BANK),
                        Decimal::from(i64::MAX) + Decimal::ONE,
                        Currency::JPY,
                    ),
                ],
            ),
            Unsequenced(Reject::AmountOverflow {
                leg: 0,
                amount: Decimal::from(i64::MAX) + Decimal::ONE,
            }),
        ),
        one(
            "debits above credits",
            posted(next(), vec![debit(A, fen(1_00)), credit(B, fen(99))]),
            Unsequenced(Reject::Unbalanced {
                currency: Currency::CNY,
                debits: fen(1_00),
                credits: fen(99),
            }),
        ),
        one(
            "a debit alone",
            posted(next(), vec![debit(A, fen(1_00))]),
            Unsequenced(Reject::Unbalanced {
                currency: Currency::CNY,
                debits: fen(1_00),
                credits: fen(0),
            }),
        ),
        one(
            "a credit alone (money from nowhere)",
            posted(next(), vec![credit(A, fen(1_00))]),
            Unsequenced(Reject::Unbalanced {
                currency: Currency::CNY,
                debits: fen(0),
                credits: fen(1_00),
            }),
        ),
        one(
            "balanced across currencies but not within each",
            posted(
                next(),
                vec![
                    debit(A, fen(1_00)),
                    Leg::credit(id(USD_ACCOUNT), fen(1_00), Currency::USD),
                ],
            ),
            Unsequenced(Reject::Unbalanced {
                currency: Currency::CNY,
                debits: fen(1_00),
                credits: fen(0),
            }),
        ),
        one(
            "two largest debits against one largest credit (no wrap in the sum)",
            posted(
                next(),
                vec![debit(A, largest), debit(B, largest), credit(EMPTY, largest)],
            ),
            Unsequenced(Reject::Unbalanced {
                currency: Currency::CNY,
                debits: Minor(LARGEST_FEN).to_decimal(2) * Decimal::TWO,
                credits: largest,
            }),
        ),
        one(
            "a void with legs",
            Transaction {
                legs: vec![debit(A, fen(1_00)), credit(B, fen(1_00))],
                ..void(next(), PENDING_OPEN)
            },
            Unsequenced(Reject::VoidWithLegs),
        ),
        one(
            "a reservation from the frozen bucket",
            with_bucket(pending(next(), A, B, fen(1_00), 1_000), 0, Bucket::Frozen),
            Unsequenced(Reject::BucketNotAllowed { leg: 0 }),
        ),
        {
            let id = next();
            chain(
                "one id twice in a call",
                vec![
                    posted(id, vec![debit(A, fen(1_00))]),
                    transfer(id, A, B, fen(1_00)),
                ],
                vec![
                    Unsequenced(Reject::Unbalanced {
                        currency: Currency::CNY,
                        debits: fen(1_00),
                        credits: fen(0),
                    }),
                    Unsequenced(Reject::DuplicateIdInBatch),
                ],
            )
        },
        // ---- linked chains refused before sequencing ---------------------
        chain(
            "a chain left open at the end of the call",
            vec![
                linked(transfer(next(), A, B, fen(1_00))),
                linked(transfer(next(), B, A, fen(1_00))),
            ],
            vec![
                Unsequenced(Reject::LinkedChainOpen),
                Unsequenced(Reject::LinkedChainOpen),
            ],
        ),
        chain(
            "a lone linked transaction",
            vec![linked(transfer(next(), A, B, fen(1_00)))],
            vec![Unsequenced(Reject::LinkedChainOpen)],
        ),
        chain(
            "a chain whose last member is malformed",
            vec![
                linked(transfer(next(), A, B, fen(1_00))),
                transfer(next(), B, A, fen(0)),
            ],
            vec![
                Unsequenced(Reject::LinkedTxnFailed),
                Unsequenced(Reject::AmountNotPositive {
                    leg: 0,
                    amount: fen(0),
                }),
            ],
        ),
        chain(
            "a chain whose middle member is malformed",
            vec![
                linked(transfer(next(), A, B, fen(1_00))),
                linked(posted(next(), vec![])),
                transfer(next(), B, A, fen(1_00)),
            ],
            vec![
                Unsequenced(Reject::LinkedTxnFailed),
                Unsequenced(Reject::NoLegs),
                Unsequenced(Reject::LinkedTxnFailed),
            ],
        ),
        chain(
            "a chain with two malformed members names the first",
            vec![
                linked(transfer(next(), A, B, fen(-1))),
                transfer(next(), B, A, dec("0.001")),
            ],
            vec![
                Unsequenced(Reject::AmountNotPositive {
                    leg: 0,
                    amount: fen(-1),
                }),
                Unsequenced(Reject::LinkedTxnFailed),
            ],
        ),
        {
            let id = next();
            chain(
                "one id twice in a chain",
                vec![
                    linked(transfer(id, A, B, fen(1_00))),
                    transfer(id, B, A, fen(1_00)),
                ],
                vec![
                    Unsequenced(Reject::LinkedTxnFailed),
                    Unsequenced(Reject::DuplicateIdInBatch),
                ],
            )
        },
        // ---- ids already used ----------------------------------------------
        one(
            "a used id with another amount",
            transfer(FUNDED, BANK, A, fen(100_01)),
            Unsequenced(Reject::IdConflict),
        ),
        one(
            "a used id with another code",
            Transaction {
                code: TxnCode(7),
                ..transfer(FUNDED, BANK, A, fen(100_00))
            },
            Unsequenced(Reject::IdConflict),
        ),
        one(
            "a used id with an expected version added",
            with_version(transfer(FUNDED, BANK, A, fen(100_00)), 0, u64::MAX),
            Unsequenced(Reject::IdConflict),
        ),
        one(
            "a used id, linked this time",
            Transaction {
                linked: true,
                ..transfer(FUNDED, BANK, A, fen(100_00))
            },
            Unsequenced(Reject::LinkedChainOpen),
        ),
        one(
            "a used pending id as a posted transfer",
            transfer(PENDING_OPEN, A, B, fen(10_00)),
            Unsequenced(Reject::IdConflict),
        ),
        one(
            "an id refused for funds, with other content",
            transfer(REFUSED, EMPTY, A, fen(2_00)),
            Unsequenced(Reject::IdConflict),
        ),
        // ---- two-phase references the sequencer refuses ---------------------
        one(
            "capture of a pending id never used",
            post(next(), 9_999_999, vec![]),
            Recorded(Reject::PendingNotFound),
        ),
        one(
            "void of a pending id never used",
            void(next(), 9_999_999),
            Recorded(Reject::PendingNotFound),
        ),
        one(
            "capture of a posted (not pending) transfer",
            post(next(), FUNDED, vec![]),
            Recorded(Reject::PendingNotFound),
        ),
        one(
            "capture of a captured reservation",
            post(next(), PENDING_POSTED, vec![]),
            Recorded(Reject::PendingAlreadyPosted),
        ),
        one(
            "void of a captured reservation",
            void(next(), PENDING_POSTED),
            Recorded(Reject::PendingAlreadyPosted),
        ),
        one(
            "capture of a voided reservation",
            post(next(), PENDING_VOIDED, vec![]),
            Recorded(Reject::PendingAlreadyVoided),
        ),
        one(
            "void of a voided reservation",
            void(next(), PENDING_VOIDED),
            Recorded(Reject::PendingAlreadyVoided),
        ),
        one(
            "capture of an expired reservation",
            post(next(), PENDING_EXPIRED, vec![]),
            Recorded(Reject::PendingExpired),
        ),
        one(
            "void of an expired reservation",
            void(next(), PENDING_EXPIRED),
            Recorded(Reject::PendingExpired),
        ),
        {
            let id = next();
            one(
                "a capture naming itself",
                post(id, id, vec![]),
                Recorded(Reject::PendingIsSelf),
            )
        },
        {
            let id = next();
            one(
                "a void naming itself",
                void(id, id),
                Recorded(Reject::PendingIsSelf),
            )
        },
        one(
            "a capture restating one of two legs",
            post(next(), PENDING_OPEN, vec![debit(A, fen(5_00))]),
            Unsequenced(Reject::Unbalanced {
                currency: Currency::CNY,
                debits: fen(5_00),
                credits: fen(0),
            }),
        ),
        one(
            "a capture with three legs for two",
            post(
                next(),
                PENDING_OPEN,
                vec![
                    debit(A, fen(5_00)),
                    credit(B, fen(2_00)),
                    credit(B, fen(3_00)),
                ],
            ),
            Recorded(Reject::PostLegCount {
                expected: 2,
                got: 3,
            }),
        ),
        one(
            "a capture with its legs swapped",
            post(
                next(),
                PENDING_OPEN,
                vec![credit(B, fen(5_00)), debit(A, fen(5_00))],
            ),
            Recorded(Reject::PostLegMismatch { leg: 0 }),
        ),
        one(
            "a capture to another account",
            post(
                next(),
                PENDING_OPEN,
                vec![debit(A, fen(5_00)), credit(EMPTY, fen(5_00))],
            ),
            Recorded(Reject::PostLegMismatch { leg: 1 }),
        ),
        one(
            "a capture in another bucket",
            with_bucket(
                post(
                    next(),
                    PENDING_OPEN,
                    vec![debit(A, fen(5_00)), credit(B, fen(5_00))],
                ),
                1,
                Bucket::NonWithdrawable,
            ),
            Recorded(Reject::PostLegMismatch { leg: 1 }),
        ),
        one(
            "a capture above the reservation",
            post(
                next(),
                PENDING_OPEN,
                vec![debit(A, fen(10_01)), credit(B, fen(10_01))],
            ),
            Recorded(Reject::PostExceedsPending {
                leg: 0,
                reserved: fen(10_00),
                requested: fen(10_01),
            }),
        ),
        one(
            "a capture of the largest amount",
            post(
                next(),
                PENDING_OPEN,
                vec![debit(A, largest), credit(B, largest)],
            ),
            Recorded(Reject::PostExceedsPending {
                leg: 0,
                reserved: fen(10_00),
                requested: largest,
            }),
        ),
        // ---- account rules the shards refuse --------------------------------
        one(
            "debit of an account never opened",
            transfer(next(), NOBODY, A, fen(1_00)),
            Recorded(Reject::AccountNotFound {
                leg: 0,
                account: id(NOBODY),
            }),
        ),
        one(
            "credit to an account never opened",
            transfer(next(), A, NOBODY, fen(1_00)),
            Recorded(Reject::AccountNotFound {
                leg: 1,
                account: id(NOBODY),
            }),
        ),
        one(
            "account id u64::MAX",
            transfer(next(), A, u64::MAX, fen(1_00)),
            Recorded(Reject::AccountNotFound {
                leg: 1,
                account: id(u64::MAX),
            }),
        ),
        one(
            "debit of a closed account",
            transfer(next(), CLOSED, A, fen(1)),
            Recorded(Reject::AccountClosed {
                leg: 0,
                account: id(CLOSED),
            }),
        ),
        one(
            "credit to a closed account",
            transfer(next(), A, CLOSED, fen(1)),
            Recorded(Reject::AccountClosed {
                leg: 1,
                account: id(CLOSED),
            }),
        ),
        one(
            "debit of a frozen account",
            transfer(next(), FROZEN, A, fen(1)),
            Recorded(Reject::AccountFrozen {
                leg: 0,
                account: id(FROZEN),
            }),
        ),
        one(
            "a reservation on a frozen account",
            pending(next(), FROZEN, A, fen(1), 1_000),
            Recorded(Reject::AccountFrozen {
                leg: 0,
                account: id(FROZEN),
            }),
        ),
        one(
            "debit of a receive-only account",
            transfer(next(), RECEIVE_ONLY, A, fen(1)),
            Recorded(Reject::AccountReceiveOnly {
                leg: 0,
                account: id(RECEIVE_ONLY),
            }),
        ),
        one(
            "credit to a pay-only account",
            transfer(next(), A, PAY_ONLY, fen(1)),
            Recorded(Reject::AccountPayOnly {
                leg: 1,
                account: id(PAY_ONLY),
            }),
        ),
        one(
            "a CNY leg on a USD account",
            transfer(next(), USD_ACCOUNT, A, fen(1_00)),
            Recorded(Reject::CurrencyMismatch {
                leg: 0,
                account: id(USD_ACCOUNT),
                account_currency: Currency::USD,
                leg_currency: Currency::CNY,
            }),
        ),
        one(
            "more than available (the reserved part counts)",
            transfer(next(), A, B, fen(85_01)),
            Recorded(Reject::InsufficientFunds {
                leg: 0,
                account: id(A),
                available: fen(85_00),
                requested: fen(85_01),
            }),
        ),
        one(
            "anything from an empty account",
            transfer(next(), EMPTY, A, fen(1)),
            Recorded(Reject::InsufficientFunds {
                leg: 0,
                account: id(EMPTY),
                available: fen(0),
                requested: fen(1),
            }),
        ),
        one(
            "the largest amount from a customer",
            transfer(next(), B, A, largest),
            Recorded(Reject::InsufficientFunds {
                leg: 0,
                account: id(B),
                available: fen(105_00),
                requested: largest,
            }),
        ),
        one(
            "a reservation above available",
            pending(next(), B, A, fen(105_01), 1_000),
            Recorded(Reject::InsufficientFunds {
                leg: 0,
                account: id(B),
                available: fen(105_00),
                requested: fen(105_01),
            }),
        ),
        one(
            "the same account debited twice beyond its funds",
            posted(
                next(),
                vec![
                    debit(B, fen(60_00)),
                    debit(B, fen(60_00)),
                    credit(A, fen(120_00)),
                ],
            ),
            Recorded(Reject::InsufficientFunds {
                leg: 1,
                account: id(B),
                available: fen(45_00),
                requested: fen(60_00),
            }),
        ),
        one(
            "a debit of the frozen part of an account with none",
            with_bucket(transfer(next(), B, A, fen(1)), 0, Bucket::Frozen),
            Recorded(Reject::InsufficientFrozen {
                leg: 0,
                account: id(B),
                frozen: fen(0),
                requested: fen(1),
            }),
        ),
        one(
            "a stale expected version",
            with_version(transfer(next(), BANK, EMPTY, fen(1)), 1, 0),
            Recorded(Reject::VersionMismatch {
                leg: 1,
                account: id(EMPTY),
                expected: Version(0),
                actual: Version(2),
            }),
        ),
        one(
            "an expected version from the future",
            with_version(transfer(next(), BANK, EMPTY, fen(1)), 1, u64::MAX),
            Recorded(Reject::VersionMismatch {
                leg: 1,
                account: id(EMPTY),
                expected: Version(u64::MAX),
                actual: Version(2),
            }),
        ),
        one(
            "one fen onto the largest balance",
            transfer(next(), BANK, FULL, fen(1)),
            Recorded(Reject::BalanceOverflow {
                leg: 1,
                account: id(FULL),
            }),
        ),
        one(
            "a debit that grows a debit-normal balance past the top",
            transfer(next(), BANK_BIG, BANK, fen(1)),
            Recorded(Reject::BalanceOverflow {
                leg: 0,
                account: id(BANK_BIG),
            }),
        ),
        // ---- chains refused by the shards: every member recorded -------------
        chain(
            "a good transfer linked to one without funds",
            vec![
                linked(transfer(next(), A, B, fen(1_00))),
                transfer(next(), EMPTY, A, fen(1_00)),
            ],
            vec![
                Recorded(Reject::LinkedTxnFailed),
                Recorded(Reject::InsufficientFunds {
                    leg: 0,
                    account: id(EMPTY),
                    available: fen(0),
                    requested: fen(1_00),
                }),
            ],
        ),
        chain(
            "a chain whose second member spends what the first moved away",
            vec![
                linked(transfer(next(), B, A, fen(105_00))),
                transfer(next(), B, A, fen(1)),
            ],
            vec![
                Recorded(Reject::LinkedTxnFailed),
                Recorded(Reject::InsufficientFunds {
                    leg: 0,
                    account: id(B),
                    available: fen(0),
                    requested: fen(1),
                }),
            ],
        ),
        chain(
            "a chain with a capture of an unknown reservation",
            vec![
                linked(transfer(next(), A, B, fen(1_00))),
                post(next(), 9_999_998, vec![]),
            ],
            vec![
                Recorded(Reject::LinkedTxnFailed),
                Recorded(Reject::PendingNotFound),
            ],
        ),
        case(
            "one transaction more than a call holds",
            Input::Submit(
                (0..=SUBMIT_TRANSACTIONS_MAX as u128)
                    .map(|i| transfer(20_000_000 + i, A, B, fen(1)))
                    .collect(),
            ),
            Expect::CallRefused(SubmitError::BatchTooLarge {
                len: SUBMIT_TRANSACTIONS_MAX + 1,
                max: SUBMIT_TRANSACTIONS_MAX,
            }),
        ),
    ];
    cases.extend(account_cases());
    cases
}

fn open(new: NewAccount) -> AccountOp {
    AccountOp::Open(new)
}

fn status(account: u64, status: AccountStatus) -> AccountOp {
    AccountOp::SetStatus {
        account: id(account),
        status,
    }
}

fn record(key: Vec<u8>, value: Vec<u8>) -> AccountOp {
    AccountOp::PutRecord { key, value }
}

fn account_cases() -> Vec<Case> {
    let limit = |credit_limit: Decimal| NewAccount {
        credit_limit,
        ..NewAccount::customer(id(30), Currency::CNY)
    };
    vec![
        ops(
            "reopen an account as another kind",
            vec![open(NewAccount::internal(id(A), Currency::CNY))],
            vec![Err(AccountError::ExistsWithDifferentAttributes(id(A)))],
        ),
        ops(
            "reopen an account in another currency",
            vec![open(NewAccount::customer(id(A), Currency::USD))],
            vec![Err(AccountError::ExistsWithDifferentAttributes(id(A)))],
        ),
        ops(
            "reopen an account with a credit limit",
            vec![open(NewAccount {
                credit_limit: fen(1_00),
                ..NewAccount::customer(id(B), Currency::CNY)
            })],
            vec![Err(AccountError::ExistsWithDifferentAttributes(id(B)))],
        ),
        ops(
            "open in an unknown currency",
            vec![open(NewAccount::customer(id(31), Currency(*b"XYZ")))],
            vec![Err(AccountError::UnknownCurrency(Currency(*b"XYZ")))],
        ),
        ops(
            "a negative credit limit",
            vec![open(limit(fen(-1)))],
            vec![Err(AccountError::InvalidCreditLimit(fen(-1)))],
        ),
        ops(
            "a credit limit with too many places",
            vec![open(limit(dec("0.001")))],
            vec![Err(AccountError::InvalidCreditLimit(dec("0.001")))],
        ),
        ops(
            "a credit limit beyond the range",
            vec![open(limit(Decimal::MAX))],
            vec![Err(AccountError::InvalidCreditLimit(Decimal::MAX))],
        ),
        ops(
            "status of an account never opened",
            vec![status(NOBODY, AccountStatus::Frozen)],
            vec![Err(AccountError::NotFound(id(NOBODY)))],
        ),
        ops(
            "reactivate a closed account",
            vec![status(CLOSED, AccountStatus::Active)],
            vec![Err(AccountError::Closed(id(CLOSED)))],
        ),
        ops(
            "freeze a closed account",
            vec![status(CLOSED, AccountStatus::Frozen)],
            vec![Err(AccountError::Closed(id(CLOSED)))],
        ),
        ops(
            "close an account with a balance",
            vec![status(B, AccountStatus::Closed)],
            vec![Err(AccountError::HasPending {
                account: id(B),
                reserved: fen(0),
                incoming: fen(10_00),
            })],
        ),
        ops(
            "close an account with money reserved",
            vec![status(A, AccountStatus::Closed)],
            vec![Err(AccountError::HasPending {
                account: id(A),
                reserved: fen(10_00),
                incoming: fen(0),
            })],
        ),
        ops(
            "close a funded account with nothing pending",
            vec![status(FROZEN, AccountStatus::Closed)],
            vec![Err(AccountError::HasBalance {
                account: id(FROZEN),
                balance: fen(50_00),
            })],
        ),
        ops(
            "a record with an empty key",
            vec![record(Vec::new(), b"v".to_vec())],
            vec![Err(AccountError::RecordSize {
                key_len: 0,
                value_len: 1,
            })],
        ),
        ops(
            "a record key one byte too long",
            vec![record(vec![b'k'; RECORD_KEY_MAX + 1], Vec::new())],
            vec![Err(AccountError::RecordSize {
                key_len: RECORD_KEY_MAX + 1,
                value_len: 0,
            })],
        ),
        ops(
            "a record value one byte too long",
            vec![record(b"k".to_vec(), vec![0; RECORD_VALUE_MAX + 1])],
            vec![Err(AccountError::RecordSize {
                key_len: 1,
                value_len: RECORD_VALUE_MAX + 1,
            })],
        ),
        ops(
            "every bad operation of one call, each answered",
            vec![
                status(NOBODY, AccountStatus::Active),
                open(limit(fen(-5))),
                status(CLOSED, AccountStatus::PayOnly),
            ],
            vec![
                Err(AccountError::NotFound(id(NOBODY))),
                Err(AccountError::InvalidCreditLimit(fen(-5))),
                Err(AccountError::Closed(id(CLOSED))),
            ],
        ),
        case(
            "one operation more than a call holds",
            Input::Ops(
                (0..=SUBMIT_TRANSACTIONS_MAX as u64)
                    .map(|i| status(NOBODY + 1 + i, AccountStatus::Frozen))
                    .collect(),
            ),
            Expect::CallRefused(SubmitError::BatchTooLarge {
                len: SUBMIT_TRANSACTIONS_MAX + 1,
                max: SUBMIT_TRANSACTIONS_MAX,
            }),
        ),
    ]
}

/// The engine world the cases run against.
pub struct World {
    engine: Engine,
    rt: tokio::runtime::Runtime,
}

fn must<T, E: std::fmt::Debug>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("world: {what}: {e:?}"))
}

impl World {
    pub fn build() -> World {
        let clock = Arc::new(ManualClock::new(Timestamp(1_767_225_600_000_000_000)));
        let engine = must(
            "open",
            Engine::open(Config::memory().with_shards(3).with_clock(clock.clone())),
        );
        let rt = must(
            "runtime",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        );
        let world = World { engine, rt };
        let mut accounts = vec![
            NewAccount::internal(id(BANK), Currency::CNY),
            NewAccount::internal(id(BANK_BIG), Currency::CNY),
            NewAccount::internal(id(USD_BANK), Currency::USD),
            NewAccount::internal(id(YEN_BANK), Currency::JPY),
            NewAccount::customer(id(USD_ACCOUNT), Currency::USD),
            NewAccount::customer(id(YEN), Currency::JPY),
        ];
        for c in [A, B, EMPTY, FROZEN, CLOSED, RECEIVE_ONLY, PAY_ONLY, FULL] {
            accounts.push(NewAccount::customer(id(c), Currency::CNY));
        }
        let opened = must(
            "open accounts",
            world.engine.open_accounts_blocking(accounts),
        );
        assert!(opened.iter().all(Result::is_ok), "world: {opened:?}");
        world.commit(vec![
            transfer(FUNDED, BANK, A, fen(100_00)),
            transfer(101, BANK, B, fen(100_00)),
            transfer(102, BANK, FROZEN, fen(50_00)),
            transfer(103, BANK, RECEIVE_ONLY, fen(50_00)),
            transfer(104, BANK, PAY_ONLY, fen(50_00)),
            transfer(105, BANK_BIG, FULL, Minor(LARGEST_FEN).to_decimal(2)),
            posted(
                106,
                vec![
                    Leg::debit(id(USD_BANK), fen(10_00), Currency::USD),
                    Leg::credit(id(USD_ACCOUNT), fen(10_00), Currency::USD),
                ],
            ),
            posted(
                107,
                vec![
                    Leg::debit(id(YEN_BANK), Decimal::from(100), Currency::JPY),
                    Leg::credit(id(YEN), Decimal::from(100), Currency::JPY),
                ],
            ),
        ]);
        world.commit(vec![
            pending(PENDING_OPEN, A, B, fen(10_00), 3_600_000),
            pending(PENDING_POSTED, A, B, fen(5_00), 3_600_000),
            pending(PENDING_VOIDED, A, B, fen(5_00), 3_600_000),
            pending(PENDING_EXPIRED, A, B, fen(1_00), 1),
        ]);
        world.commit(vec![
            post(601, PENDING_POSTED, vec![]),
            void(602, PENDING_VOIDED),
        ]);
        clock.advance_ms(10);
        world.commit(vec![transfer(108, BANK, EMPTY, fen(1))]);
        world.commit(vec![transfer(109, EMPTY, BANK, fen(1))]);
        let refused = must(
            "refused",
            world
                .engine
                .submit_blocking(vec![transfer(REFUSED, EMPTY, A, fen(1_00))]),
        );
        assert!(
            matches!(refused[0].result, Err(Reject::InsufficientFunds { .. })),
            "world: {refused:?}"
        );
        let statuses = world.account_ops(vec![
            status(FROZEN, AccountStatus::Frozen),
            status(CLOSED, AccountStatus::Closed),
            status(RECEIVE_ONLY, AccountStatus::ReceiveOnly),
            status(PAY_ONLY, AccountStatus::PayOnly),
        ]);
        assert!(
            statuses.iter().all(|r| matches!(r, Ok(Ok(())))),
            "world: {statuses:?}"
        );
        world
    }

    fn commit(&self, txns: Vec<Transaction>) {
        let outcomes = must("submit", self.engine.submit_blocking(txns));
        assert!(
            outcomes.iter().all(Outcome::is_committed),
            "world: {outcomes:?}"
        );
    }

    fn account_ops(
        &self,
        ops: Vec<AccountOp>,
    ) -> Vec<Result<Result<(), AccountError>, SubmitError>> {
        match self.rt.block_on(self.engine.account_ops(ops)) {
            Ok(results) => results.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        }
    }

    fn txn(&self, id: TxnId) -> Option<TxnView> {
        must("transaction", self.rt.block_on(self.engine.transaction(id)))
    }

    /// Everything a refusal must leave as it was.
    fn snapshot(&self) -> Snapshot {
        let audit = must("audit", self.engine.audit_blocking());
        Snapshot {
            accounts: ACCOUNTS
                .iter()
                .map(|&a| must("read", self.engine.account_blocking(id(a))))
                .collect(),
            known: KNOWN.iter().map(|&t| self.txn(TxnId(t))).collect(),
            audit: Audit {
                rejected: 0,
                batches: 0,
                ..audit
            },
        }
    }

    fn rejected(&self) -> u64 {
        must("audit", self.engine.audit_blocking()).rejected
    }
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    accounts: Vec<Option<AccountView>>,
    known: Vec<Option<TxnView>>,
    /// Without the counters a recorded refusal moves (`rejected`,
    /// `batches`).
    audit: Audit,
}

/// The ids a case submits, in order.
fn ids(input: &Input) -> Vec<TxnId> {
    match input {
        Input::Submit(txns) => txns.iter().map(|t| t.id).collect(),
        Input::Ops(_) => Vec::new(),
    }
}

pub fn run(world: &World, cases: &[Case], failures: &mut Failures) {
    let start = world.snapshot();
    assert!(start.audit.ok(), "world: {:?}", start.audit);
    for c in cases {
        let before_txns: Vec<Option<TxnView>> =
            ids(&c.input).into_iter().map(|t| world.txn(t)).collect();
        let rejected = world.rejected();
        let mut check = |what: String| failures.push(format!("engine / {}: {what}", c.name));
        match (&c.input, &c.expect) {
            (Input::Submit(txns), Expect::Answers(answers)) => {
                run_submit(world, txns, answers, &before_txns, rejected, &mut check)
            }
            (Input::Submit(txns), Expect::CallRefused(e)) => {
                match world.engine.submit_blocking(txns.clone()) {
                    Err(got) if got == *e => {}
                    other => check(format!("expected {e:?}, got {other:?}")),
                }
                let after: Vec<Option<TxnView>> = txns.iter().map(|t| world.txn(t.id)).collect();
                if after != before_txns {
                    check("a refused call used an id".into());
                }
            }
            (Input::Ops(ops), Expect::Ops(expected)) => {
                let got = world.account_ops(ops.clone());
                let want: Vec<_> = expected.iter().cloned().map(Ok).collect();
                if got != want {
                    check(format!("expected {want:?}, got {got:?}"));
                }
            }
            (Input::Ops(ops), Expect::CallRefused(e)) => {
                let got = world.account_ops(ops.clone());
                if got != vec![Err(e.clone())] {
                    check(format!("expected {e:?}, got {got:?}"));
                }
            }
            (Input::Ops(_), Expect::Answers(_)) | (Input::Submit(_), Expect::Ops(_)) => {
                check("the case's input and expectation do not match".into())
            }
        }
        let now = world.snapshot();
        if now != start {
            check(format!(
                "something changed:\nbefore {start:?}\nafter  {now:?}"
            ));
        }
    }
}

fn run_submit(
    world: &World,
    txns: &[Transaction],
    answers: &[Answer],
    before: &[Option<TxnView>],
    rejected: u64,
    check: &mut impl FnMut(String),
) {
    let first = match world.engine.submit_blocking(txns.to_vec()) {
        Ok(outcomes) => outcomes,
        Err(e) => return check(format!("the call failed: {e:?}")),
    };
    if first.len() != answers.len() {
        return check(format!("expected {answers:?}, got {first:?}"));
    }
    let mut recorded = 0;
    for (((txn, answer), outcome), was) in txns.iter().zip(answers).zip(&first).zip(before) {
        let now = world.txn(txn.id);
        let (reject, sequenced) = match answer {
            Unsequenced(r) => (r, false),
            Recorded(r) => (r, true),
        };
        if outcome.result.as_ref() != Err(reject) || outcome.duplicate || outcome.id != txn.id {
            check(format!("expected {answer:?}, got {outcome:?}"));
        }
        if !sequenced {
            if outcome.timestamp.is_some() {
                check(format!(
                    "an unsequenced refusal has a timestamp: {outcome:?}"
                ));
            }
            if now != *was {
                check(format!("the id changed: {was:?} → {now:?}"));
            }
            continue;
        }
        recorded += 1;
        match (&now, outcome.timestamp) {
            (Some(view), Some(at))
                if view.result.as_ref() == Err(reject)
                    && view.timestamp == at
                    && view.details.is_empty()
                    && was.is_none() => {}
            _ => check(format!(
                "a recorded refusal is not the id's answer: {was:?} → {now:?}, {outcome:?}"
            )),
        }
    }
    if world.rejected() != rejected + recorded {
        check(format!(
            "Audit::rejected moved from {rejected} to {}, {recorded} refusals recorded",
            world.rejected()
        ));
    }
    // The same call again: recorded refusals are duplicates with their
    // first answer; the others are refused again, afresh.
    let again = match world.engine.submit_blocking(txns.to_vec()) {
        Ok(outcomes) => outcomes,
        Err(e) => return check(format!("the second call failed: {e:?}")),
    };
    for ((answer, first), again) in answers.iter().zip(&first).zip(&again) {
        let expected = match answer {
            Recorded(_) => Outcome {
                duplicate: true,
                ..first.clone()
            },
            Unsequenced(_) => first.clone(),
        };
        if *again != expected {
            check(format!("resubmitted: expected {expected:?}, got {again:?}"));
        }
    }
    if world.rejected() != rejected + recorded {
        check("a resubmission was recorded again".into());
    }
}

/// Known answers stay: the first funding, resubmitted, is a duplicate with
/// its first timestamp.
pub fn check_known_answers(world: &World, failures: &mut Failures) {
    let view = world.txn(TxnId(FUNDED));
    let again = world
        .engine
        .submit_blocking(vec![transfer(FUNDED, BANK, A, fen(100_00))]);
    match (view, again.as_deref()) {
        (Some(view), Ok([o]))
            if o.duplicate && o.result.is_ok() && o.timestamp == Some(view.timestamp) => {}
        (view, again) => failures.push(format!(
            "engine: the first funding lost its answer: {view:?}, {again:?}"
        )),
    }
}
