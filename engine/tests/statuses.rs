//! The statuses payment platforms use besides frozen and closed:
//! receive-only (只收不付) and pay-only (只付不收). Each refuses one
//! direction with a typed error and changes nothing; both survive a restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod common;

use common::*;
use tally_engine::*;

const BANK: u64 = 1;
const A: u64 = 10;
const B: u64 = 11;

fn set(engine: &Engine, account: u64, status: AccountStatus) {
    let rt = runtime();
    rt.block_on(engine.set_status(AccountId(account), status))
        .expect("call")
        .expect("status set");
}

fn view(engine: &Engine, account: u64) -> AccountView {
    engine
        .account_blocking(AccountId(account))
        .unwrap()
        .unwrap()
}

#[test]
fn receive_only_and_pay_only_refuse_one_direction_each_and_change_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let config = || Config::sled(dir.path()).with_shards(2);
    let engine = Engine::open(config()).expect("open");
    open_funded(&engine, BANK, &[A, B], 100_00);

    set(&engine, A, AccountStatus::ReceiveOnly);
    let before = view(&engine, A);
    let out = submit_one(&engine, transfer(1, A, B, 1_00));
    assert_eq!(
        out.result,
        Err(Reject::AccountReceiveOnly {
            leg: 0,
            account: AccountId(A)
        })
    );
    let reserve = Transaction {
        kind: TxnKind::Pending { timeout_ms: 60_000 },
        ..transfer(2, A, B, 1_00)
    };
    assert!(matches!(
        submit_one(&engine, reserve).result,
        Err(Reject::AccountReceiveOnly { .. })
    ));
    assert_eq!(view(&engine, A), before, "a refusal changes nothing");
    // Money still comes in.
    assert!(submit_one(&engine, transfer(3, B, A, 2_00)).is_committed());
    assert_eq!(balance(&engine, A), yuan(102_00));

    set(&engine, B, AccountStatus::PayOnly);
    let before = view(&engine, B);
    assert_eq!(
        submit_one(&engine, transfer(4, BANK, B, 1_00)).result,
        Err(Reject::AccountPayOnly {
            leg: 1,
            account: AccountId(B)
        })
    );
    assert_eq!(view(&engine, B), before);
    // Money still goes out (to A, which receives).
    assert!(submit_one(&engine, transfer(5, B, A, 1_00)).is_committed());
    assert_audit_ok(&engine);
    drop(engine);

    // Both statuses survive a restart (from the log), then lift.
    let engine = Engine::open(config()).expect("reopen");
    assert_eq!(view(&engine, A).status, AccountStatus::ReceiveOnly);
    assert_eq!(view(&engine, B).status, AccountStatus::PayOnly);
    assert!(matches!(
        submit_one(&engine, transfer(6, A, B, 1_00)).result,
        Err(Reject::AccountReceiveOnly { .. })
    ));
    set(&engine, A, AccountStatus::Active);
    set(&engine, B, AccountStatus::Active);
    assert!(submit_one(&engine, transfer(7, A, B, 1_00)).is_committed());
    assert_audit_ok(&engine);
}
