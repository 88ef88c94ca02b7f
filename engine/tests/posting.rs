//! Posting behaviour end to end through the public API: bad input, two-phase
//! transactions, idempotency, linked chains, optimistic versions, buckets,
//! reads and restart.
// Amounts are written as yuan_fen (100_00 is 100.00 yuan).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping,
    clippy::type_complexity,
    clippy::explicit_counter_loop
)]

mod common;

use common::*;
use std::sync::Arc;
use tally_engine::*;

const BANK: u64 = 1;
const A: u64 = 10;
const B: u64 = 11;
const C: u64 = 12;

fn setup(shards: u16) -> (Engine, Arc<ManualClock>) {
    let clock = manual_clock();
    let engine = engine(shards, clock.clone());
    open_funded(&engine, BANK, &[A, B, C], 100_00);
    (engine, clock)
}

fn leg(account: u64, side: Side, cents: i64) -> Leg {
    Leg {
        account: AccountId(account),
        side,
        amount: yuan(cents),
        currency: CNY,
        bucket: Bucket::Available,
        expected_version: None,
    }
}

fn posted(id: u128, legs: Vec<Leg>) -> Transaction {
    Transaction::posted(TxnId(id), TxnCode(7), legs)
}

#[test]
fn bad_input_is_refused_with_a_typed_reason_and_changes_nothing() {
    let (engine, _clock) = setup(2);
    let before = engine.audit_blocking().expect("audit");
    let usd_account = 99;
    engine
        .open_accounts_blocking(vec![NewAccount::customer(
            AccountId(usd_account),
            Currency::USD,
        )])
        .expect("open usd");
    let mut too_many = Vec::new();
    for _ in 0..(LEGS_MAX / 2 + 1) {
        too_many.push(leg(A, Side::Debit, 1));
        too_many.push(leg(B, Side::Credit, 1));
    }
    let frozen_reserve = Transaction {
        kind: TxnKind::Pending { timeout_ms: 1_000 },
        ..posted(
            113,
            vec![
                leg(A, Side::Debit, 1).bucket(Bucket::Frozen),
                leg(B, Side::Credit, 1),
            ],
        )
    };
    let cases: Vec<(Transaction, fn(&Reject) -> bool)> = vec![
        (posted(100, vec![]), |r| matches!(r, Reject::NoLegs)),
        (posted(101, too_many), |r| {
            matches!(r, Reject::TooManyLegs { .. })
        }),
        (
            posted(102, vec![leg(A, Side::Debit, 0), leg(B, Side::Credit, 0)]),
            |r| matches!(r, Reject::AmountNotPositive { leg: 0, .. }),
        ),
        (
            posted(103, vec![leg(A, Side::Debit, -5), leg(B, Side::Credit, -5)]),
            |r| matches!(r, Reject::AmountNotPositive { .. }),
        ),
        (
            posted(
                104,
                vec![
                    Leg {
                        amount: rust_decimal::Decimal::new(1, 3),
                        ..leg(A, Side::Debit, 0)
                    },
                    Leg {
                        amount: rust_decimal::Decimal::new(1, 3),
                        ..leg(B, Side::Credit, 0)
                    },
                ],
            ),
            |r| matches!(r, Reject::TooManyDecimals { .. }),
        ),
        (
            posted(105, vec![leg(A, Side::Debit, 5), leg(B, Side::Credit, 4)]),
            |r| matches!(r, Reject::Unbalanced { .. }),
        ),
        (
            posted(
                106,
                vec![
                    Leg {
                        currency: Currency(*b"XXX"),
                        ..leg(A, Side::Debit, 5)
                    },
                    Leg {
                        currency: Currency(*b"XXX"),
                        ..leg(B, Side::Credit, 5)
                    },
                ],
            ),
            |r| matches!(r, Reject::UnknownCurrency { .. }),
        ),
        (
            posted(
                107,
                vec![
                    Leg {
                        amount: rust_decimal::Decimal::MAX,
                        ..leg(A, Side::Debit, 0)
                    },
                    Leg {
                        amount: rust_decimal::Decimal::MAX,
                        ..leg(B, Side::Credit, 0)
                    },
                ],
            ),
            |r| matches!(r, Reject::AmountOverflow { .. }),
        ),
        (transfer(108, A, 12345, 5), |r| {
            matches!(r, Reject::AccountNotFound { leg: 1, .. })
        }),
        (transfer(109, A, usd_account, 5), |r| {
            matches!(r, Reject::CurrencyMismatch { .. })
        }),
        (transfer(110, A, B, 100_01), |r| {
            matches!(r, Reject::InsufficientFunds { leg: 0, .. })
        }),
        (
            posted(
                111,
                vec![
                    leg(A, Side::Debit, 5).expect_version(Version(99)),
                    leg(B, Side::Credit, 5),
                ],
            ),
            |r| matches!(r, Reject::VersionMismatch { leg: 0, .. }),
        ),
        (
            Transaction {
                kind: TxnKind::VoidPending {
                    pending_id: TxnId(1),
                },
                ..transfer(112, A, B, 1)
            },
            |r| matches!(r, Reject::VoidWithLegs),
        ),
        (frozen_reserve, |r| {
            matches!(r, Reject::BucketNotAllowed { leg: 0 })
        }),
        (
            Transaction {
                kind: TxnKind::PostPending {
                    pending_id: TxnId(424242),
                },
                ..posted(114, vec![])
            },
            |r| matches!(r, Reject::PendingNotFound),
        ),
        (
            Transaction {
                kind: TxnKind::VoidPending {
                    pending_id: TxnId(115),
                },
                ..posted(115, vec![])
            },
            |r| matches!(r, Reject::PendingIsSelf),
        ),
        (transfer(116, A, B, 1).linked(), |r| {
            matches!(r, Reject::LinkedChainOpen)
        }),
    ];
    for (txn, expected) in cases {
        let id = txn.id;
        let outcome = submit_one(&engine, txn);
        let reject = outcome.result.expect_err("must be refused");
        assert!(expected(&reject), "{id:?}: unexpected reason {reject:?}");
    }
    let after = engine.audit_blocking().expect("audit");
    assert_eq!(balance(&engine, A), yuan(100_00));
    assert_eq!(balance(&engine, B), yuan(100_00));
    assert_eq!(after.details, before.details, "refusals wrote details");
    assert!(after.ok());
}

#[test]
fn a_batch_over_the_limit_is_refused_whole() {
    let (engine, _clock) = setup(1);
    let txns = (0..=SUBMIT_TRANSACTIONS_MAX as u128)
        .map(|i| transfer(1_000 + i, A, B, 1))
        .collect();
    let err = engine.submit_blocking(txns).expect_err("too large");
    assert!(matches!(err, SubmitError::BatchTooLarge { .. }), "{err:?}");
    assert_eq!(balance(&engine, A), yuan(100_00));
}

#[test]
fn one_bad_transaction_does_not_fail_the_others() {
    let (engine, _clock) = setup(2);
    let outcomes = engine
        .submit_blocking(vec![
            transfer(1, A, B, 10_00),
            transfer(2, A, B, 1_000_00),
            transfer(3, B, C, 5_00),
        ])
        .expect("submit");
    let ok: Vec<bool> = outcomes.iter().map(Outcome::is_committed).collect();
    assert_eq!(ok, [true, false, true]);
    assert!(matches!(
        outcomes[1].result,
        Err(Reject::InsufficientFunds { leg: 0, .. })
    ));
    assert_eq!(balance(&engine, A), yuan(90_00));
    assert_eq!(balance(&engine, B), yuan(105_00));
    assert_eq!(balance(&engine, C), yuan(105_00));
}

#[test]
fn resubmitting_returns_the_original_outcome_and_applies_nothing() {
    let (engine, _clock) = setup(2);
    let first = submit_one(&engine, transfer(7, A, B, 30_00));
    assert!(first.is_committed() && !first.duplicate);
    let again = submit_one(&engine, transfer(7, A, B, 30_00));
    assert!(again.duplicate);
    assert_eq!(again.result, first.result);
    assert_eq!(again.timestamp, first.timestamp);
    assert_eq!(balance(&engine, A), yuan(70_00));
    // The same id with other content is a conflict.
    let conflict = submit_one(&engine, transfer(7, A, B, 31_00));
    assert_eq!(conflict.result, Err(Reject::IdConflict));
    // A refused transaction's refusal is remembered too.
    let refused = submit_one(&engine, transfer(8, A, B, 1_000_00));
    assert!(matches!(
        refused.result,
        Err(Reject::InsufficientFunds { .. })
    ));
    assert_eq!(
        submit_one(&engine, transfer(9, BANK, A, 2_000_00)).result,
        Ok(())
    );
    let refused_again = submit_one(&engine, transfer(8, A, B, 1_000_00));
    assert!(refused_again.duplicate);
    assert_eq!(refused_again.result, refused.result);
    assert_eq!(balance(&engine, B), yuan(130_00));
}

#[test]
fn the_same_id_twice_in_one_call_is_refused() {
    let (engine, _clock) = setup(1);
    let outcomes = engine
        .submit_blocking(vec![transfer(5, A, B, 1_00), transfer(5, A, B, 1_00)])
        .expect("submit");
    assert!(outcomes[0].is_committed());
    assert_eq!(outcomes[1].result, Err(Reject::DuplicateIdInBatch));
    assert_eq!(balance(&engine, B), yuan(101_00));
}

#[test]
fn linked_chains_commit_all_or_none() {
    for shards in [1, 2, 8] {
        let (engine, _clock) = setup(shards);
        // A pays B 60, then B pays C 200 (fails): nothing moves.
        let outcomes = engine
            .submit_blocking(vec![
                transfer(1, A, B, 60_00).linked(),
                transfer(2, B, C, 200_00),
                transfer(3, C, A, 1_00),
            ])
            .expect("submit");
        assert_eq!(outcomes[0].result, Err(Reject::LinkedTxnFailed));
        assert!(matches!(
            outcomes[1].result,
            Err(Reject::InsufficientFunds { .. })
        ));
        assert!(
            outcomes[2].is_committed(),
            "unlinked follower is independent"
        );
        assert_eq!(balance(&engine, A), yuan(101_00), "{shards} shards");
        assert_eq!(balance(&engine, B), yuan(100_00));
        // A chain whose second member relies on the first succeeds.
        let outcomes = engine
            .submit_blocking(vec![
                transfer(4, A, B, 60_00).linked(),
                transfer(5, B, C, 160_00),
            ])
            .expect("submit");
        assert!(outcomes.iter().all(Outcome::is_committed), "{outcomes:?}");
        assert_eq!(balance(&engine, C), yuan(259_00));
        assert_audit_ok(&engine);
    }
}

#[test]
fn cross_shard_refusal_is_repaired_deterministically() {
    // B is credited by a transfer that fails on A's side; a later transfer
    // out of B must not have seen that credit.
    for shards in [1, 2, 8] {
        let (engine, _clock) = setup(shards);
        let outcomes = engine
            .submit_blocking(vec![
                transfer(1, A, B, 150_00), // fails: A has 100
                transfer(2, B, C, 150_00), // must fail: B never got the 150
                transfer(3, B, C, 100_00), // fine
            ])
            .expect("submit");
        let ok: Vec<bool> = outcomes.iter().map(Outcome::is_committed).collect();
        assert_eq!(ok, [false, false, true], "{shards} shards: {outcomes:?}");
        assert_eq!(balance(&engine, B), yuan(0));
        assert_eq!(balance(&engine, C), yuan(200_00));
        assert_audit_ok(&engine);
    }
}

#[test]
fn optimistic_version_check() {
    let (engine, _clock) = setup(2);
    let v = engine
        .account_blocking(AccountId(A))
        .expect("read")
        .expect("exists")
        .version;
    let with_version = |id, version| {
        posted(
            id,
            vec![
                leg(A, Side::Debit, 1_00).expect_version(version),
                leg(B, Side::Credit, 1_00),
            ],
        )
    };
    assert!(submit_one(&engine, with_version(1, v)).is_committed());
    let stale = submit_one(&engine, with_version(2, v));
    assert_eq!(
        stale.result,
        Err(Reject::VersionMismatch {
            leg: 0,
            account: AccountId(A),
            expected: v,
            actual: Version(v.0 + 1)
        })
    );
    assert_eq!(balance(&engine, A), yuan(99_00));
}

#[test]
fn two_phase_post_less_than_reserved_releases_the_rest() {
    let (engine, _clock) = setup(2);
    let hold = Transaction {
        kind: TxnKind::Pending { timeout_ms: 60_000 },
        ..transfer(1, A, B, 80_00)
    };
    assert!(submit_one(&engine, hold).is_committed());
    let a = engine
        .account_blocking(AccountId(A))
        .expect("read")
        .expect("exists");
    assert_eq!(
        (a.balance, a.reserved, a.available),
        (yuan(100_00), yuan(80_00), yuan(20_00))
    );
    let b = engine
        .account_blocking(AccountId(B))
        .expect("read")
        .expect("exists");
    assert_eq!((b.balance, b.incoming), (yuan(100_00), yuan(80_00)));
    // Reserved money cannot be spent twice.
    assert!(matches!(
        submit_one(&engine, transfer(2, A, C, 20_01)).result,
        Err(Reject::InsufficientFunds { leg: 0, .. })
    ));
    let capture = Transaction {
        kind: TxnKind::PostPending {
            pending_id: TxnId(1),
        },
        ..transfer(3, A, B, 50_00)
    };
    assert!(submit_one(&engine, capture).is_committed());
    let a = engine
        .account_blocking(AccountId(A))
        .expect("read")
        .expect("exists");
    assert_eq!(
        (a.balance, a.reserved, a.available),
        (yuan(50_00), yuan(0), yuan(50_00))
    );
    assert_eq!(balance(&engine, B), yuan(150_00));
    // A second post or a void of the same pending is refused.
    let again = Transaction {
        kind: TxnKind::PostPending {
            pending_id: TxnId(1),
        },
        ..posted(4, vec![])
    };
    assert_eq!(
        submit_one(&engine, again).result,
        Err(Reject::PendingAlreadyPosted)
    );
    let void = Transaction {
        kind: TxnKind::VoidPending {
            pending_id: TxnId(1),
        },
        ..posted(5, vec![])
    };
    assert_eq!(
        submit_one(&engine, void).result,
        Err(Reject::PendingAlreadyPosted)
    );
    // Capturing more than reserved is refused.
    let hold = Transaction {
        kind: TxnKind::Pending { timeout_ms: 60_000 },
        ..transfer(6, A, B, 10_00)
    };
    assert!(submit_one(&engine, hold).is_committed());
    let greedy = Transaction {
        kind: TxnKind::PostPending {
            pending_id: TxnId(6),
        },
        ..transfer(7, A, B, 10_01)
    };
    assert!(matches!(
        submit_one(&engine, greedy).result,
        Err(Reject::PostExceedsPending { .. })
    ));
    assert_audit_ok(&engine);
}

#[test]
fn void_and_deadline_release_reservations() {
    let (engine, clock) = setup(2);
    let hold = |id, ms| Transaction {
        kind: TxnKind::Pending { timeout_ms: ms },
        ..transfer(id, A, B, 30_00)
    };
    assert!(submit_one(&engine, hold(1, 60_000)).is_committed());
    assert!(submit_one(&engine, hold(2, 24 * 3_600_000)).is_committed());
    let void = Transaction {
        kind: TxnKind::VoidPending {
            pending_id: TxnId(1),
        },
        ..posted(3, vec![])
    };
    assert!(submit_one(&engine, void).is_committed());
    let a = engine
        .account_blocking(AccountId(A))
        .expect("read")
        .expect("exists");
    assert_eq!(a.reserved, yuan(30_00));
    // 24 hours later the unpaid order closes by itself.
    clock.advance_ms(24 * 3_600_000 + 1);
    assert_eq!(
        submit_one(&engine, transfer(4, C, BANK, 1_00)).result,
        Ok(())
    );
    let a = engine
        .account_blocking(AccountId(A))
        .expect("read")
        .expect("exists");
    assert_eq!((a.balance, a.reserved), (yuan(100_00), yuan(0)));
    let b = engine
        .account_blocking(AccountId(B))
        .expect("read")
        .expect("exists");
    assert_eq!(b.incoming, yuan(0));
    let late = Transaction {
        kind: TxnKind::PostPending {
            pending_id: TxnId(2),
        },
        ..posted(5, vec![])
    };
    assert_eq!(
        submit_one(&engine, late).result,
        Err(Reject::PendingExpired)
    );
    let audit = assert_audit_ok(&engine);
    assert_eq!(audit.pending_open, 0);
}

#[test]
fn freeze_unfreeze_and_frozen_accounts() {
    let (engine, _clock) = setup(2);
    // Risk control freezes 70 of A's 100.
    let freeze = posted(
        1,
        vec![
            leg(A, Side::Debit, 70_00),
            leg(A, Side::Credit, 70_00).bucket(Bucket::Frozen),
        ],
    );
    assert!(submit_one(&engine, freeze).is_committed());
    let a = engine
        .account_blocking(AccountId(A))
        .expect("read")
        .expect("exists");
    assert_eq!(
        (a.balance, a.frozen, a.available),
        (yuan(100_00), yuan(70_00), yuan(30_00))
    );
    assert!(matches!(
        submit_one(&engine, transfer(2, A, B, 30_01)).result,
        Err(Reject::InsufficientFunds { leg: 0, .. })
    ));
    let unfreeze = posted(
        3,
        vec![
            leg(A, Side::Debit, 70_00).bucket(Bucket::Frozen),
            leg(A, Side::Credit, 70_00),
        ],
    );
    assert!(submit_one(&engine, unfreeze).is_committed());
    assert!(submit_one(&engine, transfer(4, A, B, 30_01)).is_committed());
    // A whole account frozen: no debits, credits still arrive.
    let rt = runtime();
    let status = rt
        .block_on(engine.set_status(AccountId(B), AccountStatus::Frozen))
        .expect("call");
    assert_eq!(status, Ok(()));
    assert!(matches!(
        submit_one(&engine, transfer(5, B, C, 1_00)).result,
        Err(Reject::AccountFrozen { .. })
    ));
    assert!(submit_one(&engine, transfer(6, C, B, 1_00)).is_committed());
    // Closing needs a zero balance.
    let close = rt
        .block_on(engine.set_status(AccountId(C), AccountStatus::Closed))
        .expect("call");
    assert!(matches!(close, Err(AccountError::HasBalance { .. })));
    assert_audit_ok(&engine);
}

#[test]
fn non_withdrawable_money_is_spendable_but_not_withdrawable() {
    let (engine, _clock) = setup(1);
    let refund = posted(
        1,
        vec![
            leg(BANK, Side::Debit, 50_00),
            leg(A, Side::Credit, 50_00).bucket(Bucket::NonWithdrawable),
        ],
    );
    assert!(submit_one(&engine, refund).is_committed());
    let a = engine
        .account_blocking(AccountId(A))
        .expect("read")
        .expect("exists");
    assert_eq!((a.balance, a.withdrawable), (yuan(150_00), yuan(100_00)));
    let withdraw = |id, cents| {
        posted(
            id,
            vec![
                leg(A, Side::Debit, cents).bucket(Bucket::Withdrawable),
                leg(BANK, Side::Credit, cents),
            ],
        )
    };
    assert!(matches!(
        submit_one(&engine, withdraw(2, 100_01)).result,
        Err(Reject::InsufficientFunds { .. })
    ));
    assert!(submit_one(&engine, withdraw(3, 100_00)).is_committed());
    assert!(
        submit_one(&engine, transfer(4, A, B, 50_00)).is_committed(),
        "spending it is fine"
    );
}

#[test]
fn details_history_balance_at_and_lookup() {
    let (engine, clock) = setup(2);
    let rt = runtime();
    let mut stamps = Vec::new();
    for i in 0..5u128 {
        clock.advance_ms(1_000);
        let outcome = submit_one(&engine, transfer(100 + i, A, B, 10_00));
        stamps.push(outcome.timestamp.expect("sequenced"));
    }
    // An account touched twice in one transaction gets two details.
    let twice = posted(
        200,
        vec![
            leg(A, Side::Debit, 1_00),
            leg(A, Side::Debit, 2_00),
            leg(B, Side::Credit, 3_00),
        ],
    );
    let twice_at = submit_one(&engine, twice).timestamp.expect("sequenced");
    let view = rt
        .block_on(engine.transaction(TxnId(200)))
        .expect("call")
        .expect("found");
    let legs: Vec<u16> = view.details.iter().map(|d| d.leg).collect();
    assert_eq!(legs, [0, 1, 2]);
    assert_eq!(view.details[0].balance_post, view.details[1].balance_pre);

    // Paging through A's history, two at a time, oldest first.
    let seen = page_through(&rt, &engine, DetailQuery::all(AccountId(A), 2));
    assert_eq!(seen.len(), 1 + 5 + 2, "funding, five transfers, two legs");
    for pair in seen.windows(2) {
        assert_eq!(pair[0].balance_post, pair[1].balance_pre);
        assert!(pair[0].version < pair[1].version);
    }
    assert_eq!(seen.last().map(|d| d.timestamp), Some(twice_at));

    // A time range.
    let range = DetailQuery {
        from: stamps[1],
        to: stamps[3],
        ..DetailQuery::all(AccountId(A), 100)
    };
    let page = rt
        .block_on(engine.details(range))
        .expect("call")
        .expect("exists");
    let got: Vec<Timestamp> = page.details.iter().map(|d| d.timestamp).collect();
    assert_eq!(got, [stamps[1], stamps[2]]);

    // Balance at past instants.
    let at = |ts| {
        rt.block_on(engine.balance_at(AccountId(A), ts))
            .expect("call")
            .expect("exists")
    };
    assert_eq!(at(Timestamp(0)), yuan(0));
    assert_eq!(at(stamps[0]), yuan(90_00));
    assert_eq!(at(Timestamp(stamps[2].0 + 1)), yuan(70_00));
    assert_eq!(at(Timestamp(u64::MAX)), yuan(47_00));
    assert!(rt
        .block_on(engine.transaction(TxnId(999_999)))
        .expect("call")
        .is_none());
}

#[test]
fn restart_replays_to_the_same_state() {
    let store: Arc<dyn tally_storage::Store> = Arc::new(tally_storage::MemoryStore::new());
    let clock = manual_clock();
    let config = Config {
        store: StoreChoice::Custom(store.clone()),
        ..Config::memory()
    }
    .with_shards(2)
    .with_clock(clock.clone());
    let engine = Engine::open(config.clone()).expect("open");
    open_funded(&engine, BANK, &[A, B, C], 100_00);
    let hold = Transaction {
        kind: TxnKind::Pending { timeout_ms: 5_000 },
        ..transfer(50, A, C, 10_00)
    };
    assert_eq!(submit_one(&engine, hold).result, Ok(()));
    for i in 0..20u128 {
        let outcome = submit_one(&engine, transfer(i + 1, A + (i as u64 % 2), C, 1_00));
        assert_eq!(outcome.result, Ok(()));
    }
    let before = engine.audit_blocking().expect("audit");
    let a_before = engine.account_blocking(AccountId(A)).expect("read");
    engine.shutdown_blocking().expect("shutdown");
    assert!(matches!(
        engine.submit_blocking(vec![transfer(900, A, B, 1)]),
        Err(SubmitError::ShutDown)
    ));
    drop(engine);

    let engine = Engine::open(config.clone()).expect("reopen");
    let after = engine.audit_blocking().expect("audit");
    assert_eq!(after, before);
    assert_eq!(
        engine.account_blocking(AccountId(A)).expect("read"),
        a_before
    );
    // Idempotency answers survive the restart, and so does the pending.
    let again = submit_one(&engine, transfer(3, A, C, 1_00));
    assert!(again.duplicate && again.is_committed());
    clock.advance_ms(5_001);
    assert_eq!(
        submit_one(&engine, transfer(901, B, A, 1_00)).result,
        Ok(())
    );
    assert_eq!(
        engine
            .account_blocking(AccountId(A))
            .expect("read")
            .expect("exists")
            .reserved,
        yuan(0)
    );
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);

    // Opening with another shard count is refused.
    let wrong = Engine::open(config.with_shards(3));
    assert!(matches!(
        wrong,
        Err(OpenError::ShardCountMismatch {
            stored: 2,
            configured: 3,
            ..
        })
    ));
}

#[test]
fn opening_an_account_twice() {
    let (engine, _clock) = setup(1);
    let again = engine
        .open_accounts_blocking(vec![NewAccount::customer(AccountId(A), CNY)])
        .expect("call");
    assert_eq!(again, vec![Ok(())]);
    let different = engine
        .open_accounts_blocking(vec![NewAccount::internal(AccountId(A), CNY)])
        .expect("call");
    assert_eq!(
        different,
        vec![Err(AccountError::ExistsWithDifferentAttributes(AccountId(
            A
        )))]
    );
    let bad = engine
        .open_accounts_blocking(vec![NewAccount::customer(
            AccountId(500),
            Currency(*b"ZZZ"),
        )])
        .expect("call");
    assert_eq!(
        bad,
        vec![Err(AccountError::UnknownCurrency(Currency(*b"ZZZ")))]
    );
    assert_eq!(balance(&engine, A), yuan(100_00));
}

/// The largest amount a CNY leg can carry: i64::MAX fen.
fn max_cny() -> rust_decimal::Decimal {
    rust_decimal::Decimal::new(i64::MAX, 2)
}

fn view(engine: &Engine, account: u64) -> AccountView {
    engine
        .account_blocking(AccountId(account))
        .expect("read")
        .expect("exists")
}

#[test]
fn a_capture_past_the_largest_balance_is_refused_and_changes_nothing() {
    for shards in [1, 2] {
        let (engine, _clock) = setup(shards);
        // Both accounts start at zero, so the largest amount fits once.
        const SOURCE: u64 = 39;
        const RICH: u64 = 40;
        let opened = engine
            .open_accounts_blocking(vec![
                NewAccount::internal(AccountId(SOURCE), CNY),
                NewAccount::customer(AccountId(RICH), CNY),
            ])
            .expect("open");
        assert_eq!(opened, vec![Ok(()), Ok(())]);
        let big = |id| {
            Transaction::transfer(
                TxnId(id),
                TxnCode(7),
                AccountId(SOURCE),
                AccountId(RICH),
                max_cny(),
                CNY,
            )
        };
        let hold = Transaction {
            kind: TxnKind::Pending { timeout_ms: 60_000 },
            ..big(1)
        };
        let pay = big(2);
        let outcomes = engine.submit_blocking(vec![hold, pay]).expect("submit");
        assert!(outcomes.iter().all(Outcome::is_committed), "{outcomes:?}");
        let before = engine.audit_blocking().expect("audit");
        let rich_before = view(&engine, RICH);
        let source_before = view(&engine, SOURCE);
        let capture = Transaction {
            kind: TxnKind::PostPending {
                pending_id: TxnId(1),
            },
            ..posted(3, vec![])
        };
        let got = submit_one(&engine, capture).result;
        assert!(
            matches!(got, Err(Reject::BalanceOverflow { .. })),
            "{shards} shards: {got:?}"
        );
        assert_eq!(view(&engine, RICH), rich_before);
        assert_eq!(view(&engine, SOURCE), source_before);
        let after = engine.audit_blocking().expect("audit");
        assert_eq!(after.details, before.details, "a refusal wrote details");
        assert!(after.ok(), "{after:?}");
        // The pending transfer is still open: a void releases it.
        let void = Transaction {
            kind: TxnKind::VoidPending {
                pending_id: TxnId(1),
            },
            ..posted(4, vec![])
        };
        assert_eq!(submit_one(&engine, void).result, Ok(()));
        let rich = view(&engine, RICH);
        assert_eq!((rich.balance, rich.incoming), (max_cny(), yuan(0)));
        assert_audit_ok(&engine);
    }
}

#[test]
fn two_pendings_reserving_the_largest_amount_are_refused_and_change_nothing() {
    for shards in [1, 2] {
        let (engine, _clock) = setup(shards);
        // A credit-normal account that may go negative without limit: a
        // reservation is never short of funds, only of room to count.
        // Two payees with nothing yet, so each can be promised the most.
        const FLOAT: u64 = 41;
        const P: u64 = 42;
        const Q: u64 = 43;
        let float = NewAccount {
            allow_negative: true,
            ..NewAccount::customer(AccountId(FLOAT), CNY)
        };
        let opened = engine
            .open_accounts_blocking(vec![
                float,
                NewAccount::customer(AccountId(P), CNY),
                NewAccount::customer(AccountId(Q), CNY),
            ])
            .expect("open");
        assert_eq!(opened, vec![Ok(()), Ok(()), Ok(())]);
        let hold = |id, to| Transaction {
            kind: TxnKind::Pending { timeout_ms: 60_000 },
            ..Transaction::transfer(
                TxnId(id),
                TxnCode(7),
                AccountId(FLOAT),
                AccountId(to),
                max_cny(),
                CNY,
            )
        };
        assert_eq!(submit_one(&engine, hold(1, P)).result, Ok(()));
        let before = engine.audit_blocking().expect("audit");
        let float_before = view(&engine, FLOAT);
        let q_before = view(&engine, Q);
        let got = submit_one(&engine, hold(2, Q)).result;
        assert_eq!(
            got,
            Err(Reject::BalanceOverflow {
                leg: 0,
                account: AccountId(FLOAT)
            }),
            "{shards} shards"
        );
        assert_eq!(view(&engine, FLOAT), float_before);
        assert_eq!(view(&engine, Q), q_before);
        let after = engine.audit_blocking().expect("audit");
        assert_eq!(after.details, before.details);
        assert_eq!(after.pending_open, 1);
        assert!(after.ok(), "{after:?}");
    }
}
