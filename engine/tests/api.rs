//! Public API that no other test reaches: `Engine::account_ops` with mixed
//! operations, closing an account and every refusal after it, the account
//! errors (`Closed`, `HasPending`, `NotFound`, `InvalidCreditLimit`),
//! `BalanceOverflow` on either side of zero end to end, and account status
//! across a restart (log replay and checkpoint).
// Amounts are written as yuan_fen (100_00 is 100.00 yuan).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod common;

use common::*;
use rust_decimal::Decimal;
use std::sync::Arc;
use tally_engine::*;

const BANK: u64 = 1;
const A: u64 = 10;
const B: u64 = 11;

fn view(engine: &Engine, account: u64) -> AccountView {
    engine
        .account_blocking(AccountId(account))
        .expect("read")
        .expect("exists")
}

fn ops(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    ops: Vec<AccountOp>,
) -> Vec<Result<(), AccountError>> {
    rt.block_on(engine.account_ops(ops)).expect("call")
}

fn set_status(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    account: u64,
    status: AccountStatus,
) -> Result<(), AccountError> {
    rt.block_on(engine.set_status(AccountId(account), status))
        .expect("call")
}

#[test]
fn account_ops_mix_opens_status_changes_and_records_in_order() {
    let rt = runtime();
    let engine = engine(2, manual_clock());
    let negative_limit = NewAccount {
        credit_limit: Decimal::new(-1, 2),
        ..NewAccount::customer(AccountId(21), CNY)
    };
    let fractional_limit = NewAccount {
        credit_limit: Decimal::new(1, 3),
        ..NewAccount::customer(AccountId(22), CNY)
    };
    let got = ops(
        &rt,
        &engine,
        vec![
            AccountOp::Open(NewAccount::customer(AccountId(20), CNY)),
            // Acts on the account opened just before, in the same call.
            AccountOp::SetStatus {
                account: AccountId(20),
                status: AccountStatus::Frozen,
            },
            AccountOp::Open(negative_limit),
            AccountOp::Open(fractional_limit),
            AccountOp::PutRecord {
                key: b"member/1".to_vec(),
                value: b"alice".to_vec(),
            },
            AccountOp::SetStatus {
                account: AccountId(404),
                status: AccountStatus::Frozen,
            },
            AccountOp::PutRecord {
                key: Vec::new(),
                value: b"x".to_vec(),
            },
            AccountOp::Open(NewAccount::internal(AccountId(20), CNY)),
            AccountOp::Open(NewAccount::customer(AccountId(20), CNY)),
        ],
    );
    assert_eq!(
        got,
        vec![
            Ok(()),
            Ok(()),
            Err(AccountError::InvalidCreditLimit(Decimal::new(-1, 2))),
            Err(AccountError::InvalidCreditLimit(Decimal::new(1, 3))),
            Ok(()),
            Err(AccountError::NotFound(AccountId(404))),
            Err(AccountError::RecordSize {
                key_len: 0,
                value_len: 1
            }),
            Err(AccountError::ExistsWithDifferentAttributes(AccountId(20))),
            Ok(()),
        ]
    );
    let opened = view(&engine, 20);
    assert_eq!(
        (opened.status, opened.version),
        (AccountStatus::Frozen, Version(1))
    );
    for refused in [21, 22] {
        assert_eq!(
            engine.account_blocking(AccountId(refused)).expect("read"),
            None,
            "a refused open opened {refused}"
        );
    }
    let records = rt
        .block_on(engine.records(b"member/".to_vec(), None, 10))
        .expect("records");
    assert_eq!(records, vec![(b"member/1".to_vec(), b"alice".to_vec())]);
    let audit = assert_audit_ok(&engine);
    assert_eq!(audit.accounts, 1);
}

#[test]
fn a_closed_account_refuses_everything_after() {
    let rt = runtime();
    let engine = engine(2, manual_clock());
    open_funded(&engine, BANK, &[A, B], 0);
    // Money promised to B: it cannot be closed yet.
    let hold = Transaction {
        kind: TxnKind::Pending { timeout_ms: 60_000 },
        ..transfer(1, BANK, B, 5_00)
    };
    assert_eq!(submit_one(&engine, hold).result, Ok(()));
    assert_eq!(
        set_status(&rt, &engine, B, AccountStatus::Closed),
        Err(AccountError::HasPending {
            account: AccountId(B),
            reserved: yuan(0),
            incoming: yuan(5_00),
        })
    );
    let void = Transaction {
        kind: TxnKind::VoidPending {
            pending_id: TxnId(1),
        },
        ..Transaction::posted(TxnId(2), TxnCode(1), vec![])
    };
    assert_eq!(submit_one(&engine, void).result, Ok(()));
    assert_eq!(set_status(&rt, &engine, B, AccountStatus::Closed), Ok(()));
    let closed = view(&engine, B);
    assert_eq!(closed.status, AccountStatus::Closed);
    let details_before = engine.audit_blocking().expect("audit").details;

    // Nothing may be posted to it or from it, pending or not.
    let cases = [
        (transfer(3, BANK, B, 1_00), 1),
        (transfer(4, B, A, 1_00), 0),
        (
            Transaction {
                kind: TxnKind::Pending { timeout_ms: 60_000 },
                ..transfer(5, BANK, B, 1_00)
            },
            1,
        ),
    ];
    for (txn, leg) in cases {
        let id = txn.id;
        assert_eq!(
            submit_one(&engine, txn).result,
            Err(Reject::AccountClosed {
                leg,
                account: AccountId(B)
            }),
            "{id:?}"
        );
    }
    // And it stays closed.
    for status in [
        AccountStatus::Active,
        AccountStatus::Frozen,
        AccountStatus::Closed,
    ] {
        assert_eq!(
            set_status(&rt, &engine, B, status),
            Err(AccountError::Closed(AccountId(B))),
            "{status:?}"
        );
    }
    assert_eq!(view(&engine, B), closed);
    let audit = assert_audit_ok(&engine);
    assert_eq!(audit.details, details_before, "refusals wrote details");
    // Other accounts are untouched by all this.
    assert_eq!(
        set_status(&rt, &engine, 404, AccountStatus::Closed),
        Err(AccountError::NotFound(AccountId(404)))
    );
    assert_eq!(view(&engine, A).status, AccountStatus::Active);
}

#[test]
fn balance_overflow_is_refused_on_either_side_of_zero() {
    let engine = engine(2, manual_clock());
    // Three debit-normal accounts that may go negative without limit.
    let (i1, i2, i3) = (31, 32, 33);
    let opened = engine
        .open_accounts_blocking(
            [i1, i2, i3]
                .map(|id| NewAccount::internal(AccountId(id), CNY))
                .to_vec(),
        )
        .expect("open");
    assert_eq!(opened, vec![Ok(()), Ok(()), Ok(())]);
    let max = Decimal::new(i64::MAX, 2);
    let big = |id, from, to| {
        Transaction::transfer(
            TxnId(id),
            TxnCode(1),
            AccountId(from),
            AccountId(to),
            max,
            CNY,
        )
    };
    // i1 goes to the top, i2 to the bottom.
    assert_eq!(submit_one(&engine, big(1, i1, i2)).result, Ok(()));
    let before: Vec<AccountView> = [i1, i2, i3].iter().map(|&id| view(&engine, id)).collect();
    let details_before = engine.audit_blocking().expect("audit").details;
    // Above the top: i1 debited again.
    assert_eq!(
        submit_one(&engine, big(2, i1, i3)).result,
        Err(Reject::BalanceOverflow {
            leg: 0,
            account: AccountId(i1)
        })
    );
    // Below the bottom: i2 credited again.
    assert_eq!(
        submit_one(&engine, big(3, i3, i2)).result,
        Err(Reject::BalanceOverflow {
            leg: 1,
            account: AccountId(i2)
        })
    );
    // A smallest step is enough to be refused.
    let one_fen = Transaction::transfer(
        TxnId(4),
        TxnCode(1),
        AccountId(i1),
        AccountId(i3),
        yuan(1),
        CNY,
    );
    assert!(matches!(
        submit_one(&engine, one_fen).result,
        Err(Reject::BalanceOverflow { leg: 0, .. })
    ));
    let after: Vec<AccountView> = [i1, i2, i3].iter().map(|&id| view(&engine, id)).collect();
    assert_eq!(after, before);
    assert_eq!(view(&engine, i1).balance, max);
    assert_eq!(view(&engine, i2).balance, -max);
    let audit = assert_audit_ok(&engine);
    assert_eq!(audit.details, details_before);
}

/// Status changes are logged like everything else: after a restart a
/// frozen account still refuses debits and a closed one everything, from
/// a replayed log and from a checkpoint alike.
#[test]
fn account_status_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let memory: Arc<dyn tally_storage::Store> = Arc::new(tally_storage::MemoryStore::new());
    let configs = [
        (
            "log replay",
            Config {
                store: StoreChoice::Custom(memory),
                ..Config::memory()
            },
        ),
        ("checkpoint", Config::sled(dir.path().join("store"))),
    ];
    for (how, config) in configs {
        let rt = runtime();
        let config = config.with_shards(2).with_clock(manual_clock());
        let engine = Engine::open(config.clone()).expect("open");
        open_funded(&engine, BANK, &[A], 100_00);
        open_funded(&engine, BANK, &[B], 0);
        assert_eq!(set_status(&rt, &engine, A, AccountStatus::Frozen), Ok(()));
        assert_eq!(set_status(&rt, &engine, B, AccountStatus::Closed), Ok(()));
        let views = (view(&engine, A), view(&engine, B));
        let audit = engine.audit_blocking().expect("audit");
        engine.shutdown_blocking().expect("shutdown");
        drop(engine);

        let engine = Engine::open(config).expect("reopen");
        assert_eq!((view(&engine, A), view(&engine, B)), views, "{how}");
        assert_eq!(engine.audit_blocking().expect("audit"), audit, "{how}");
        assert_eq!(
            submit_one(&engine, transfer(10, A, BANK, 1_00)).result,
            Err(Reject::AccountFrozen {
                leg: 0,
                account: AccountId(A)
            }),
            "{how}"
        );
        assert_eq!(
            submit_one(&engine, transfer(11, BANK, B, 1_00)).result,
            Err(Reject::AccountClosed {
                leg: 1,
                account: AccountId(B)
            }),
            "{how}"
        );
        assert_eq!(
            set_status(&rt, &engine, B, AccountStatus::Active),
            Err(AccountError::Closed(AccountId(B))),
            "{how}"
        );
        // Credits still reach a frozen account, and unfreezing works.
        assert_eq!(
            submit_one(&engine, transfer(12, BANK, A, 1_00)).result,
            Ok(()),
            "{how}"
        );
        assert_eq!(set_status(&rt, &engine, A, AccountStatus::Active), Ok(()));
        assert_eq!(
            submit_one(&engine, transfer(13, A, BANK, 1_00)).result,
            Ok(()),
            "{how}"
        );
        assert_audit_ok(&engine);
        engine.shutdown_blocking().expect("shutdown");
    }
}

#[test]
fn transactions_reads_many_ids_in_one_call_as_one_by_one() {
    let engine = engine(2, manual_clock());
    open_funded(&engine, 1, &[10, 11, 12], 100_00);
    let rt = runtime();
    let committed = submit_one(&engine, transfer(500, 10, 11, 5_00));
    assert_eq!(committed.result, Ok(()));
    let refused = submit_one(&engine, transfer(501, 12, 10, 900_00));
    assert!(matches!(
        refused.result,
        Err(Reject::InsufficientFunds { .. })
    ));
    let linked = engine
        .submit_blocking(vec![
            Transaction {
                linked: true,
                ..transfer(502, 11, 12, 1_00)
            },
            transfer(503, 12, 10, 2_00),
        ])
        .expect("submit");
    assert!(linked.iter().all(|o| o.result.is_ok()));
    // Committed, refused, never sequenced, the same id twice, in any order.
    let ids: Vec<TxnId> = [503, 7, 500, 501, 502, 500]
        .into_iter()
        .map(TxnId)
        .collect();
    let many = rt.block_on(engine.transactions(ids.clone())).expect("read");
    assert_eq!(many.len(), ids.len());
    for (id, view) in ids.iter().zip(&many) {
        let one = rt.block_on(engine.transaction(*id)).expect("read");
        assert_eq!(view, &one, "{id:?}");
    }
    assert!(many[1].is_none());
    assert_eq!(many[2].as_ref().map(|v| v.details.len()), Some(2));
    assert_eq!(many[3].as_ref().map(|v| v.details.len()), Some(0));
    assert!(matches!(
        many[3].as_ref().map(|v| &v.result),
        Some(Err(Reject::InsufficientFunds { .. }))
    ));
    assert!(rt
        .block_on(engine.transactions(Vec::new()))
        .expect("read")
        .is_empty());
    let too_many = vec![TxnId(500); SUBMIT_TRANSACTIONS_MAX + 1];
    assert!(matches!(
        rt.block_on(engine.transactions(too_many)),
        Err(SubmitError::BatchTooLarge { len, max: SUBMIT_TRANSACTIONS_MAX })
            if len == SUBMIT_TRANSACTIONS_MAX + 1
    ));
}
