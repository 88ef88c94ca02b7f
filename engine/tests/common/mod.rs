//! Helpers shared by the engine's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod model;

use rust_decimal::Decimal;
use std::sync::Arc;
use tally_engine::*;

pub const CNY: Currency = Currency::CNY;
pub const START: Timestamp = Timestamp(1_767_225_600_000_000_000); // 2026-01-01T00:00:00Z

pub fn yuan(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(START))
}

/// An in-memory engine with `shards` shards on a manual clock.
pub fn engine(shards: u16, clock: Arc<ManualClock>) -> Engine {
    Engine::open(Config::memory().with_shards(shards).with_clock(clock)).expect("open engine")
}

/// Opens `bank` (internal, may go negative) and customers, funding each
/// customer with `funding` cents from the bank.
pub fn open_funded(engine: &Engine, bank: u64, customers: &[u64], funding: i64) {
    let mut accounts = vec![NewAccount::internal(AccountId(bank), CNY)];
    accounts.extend(
        customers
            .iter()
            .map(|&c| NewAccount::customer(AccountId(c), CNY)),
    );
    let opened = engine
        .open_accounts_blocking(accounts)
        .expect("open accounts");
    assert!(opened.iter().all(Result::is_ok), "{opened:?}");
    if funding > 0 {
        let txns = customers
            .iter()
            .map(|&c| {
                Transaction::transfer(
                    TxnId(u128::from(c) << 64),
                    TxnCode(1),
                    AccountId(bank),
                    AccountId(c),
                    yuan(funding),
                    CNY,
                )
            })
            .collect();
        let outcomes = engine.submit_blocking(txns).expect("fund");
        assert!(outcomes.iter().all(Outcome::is_committed), "{outcomes:?}");
    }
}

pub fn balance(engine: &Engine, account: u64) -> Decimal {
    engine
        .account_blocking(AccountId(account))
        .expect("read")
        .expect("account exists")
        .balance
}

pub fn submit_one(engine: &Engine, txn: Transaction) -> Outcome {
    let mut outcomes = engine.submit_blocking(vec![txn]).expect("submit");
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

pub fn transfer(id: u128, from: u64, to: u64, cents: i64) -> Transaction {
    Transaction::transfer(
        TxnId(id),
        TxnCode(2001),
        AccountId(from),
        AccountId(to),
        yuan(cents),
        CNY,
    )
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Every detail `query` selects, following the cursor page by page.
pub fn page_through(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    mut query: DetailQuery,
) -> Vec<DetailView> {
    let mut all = Vec::new();
    loop {
        let page = rt
            .block_on(engine.details(query))
            .expect("details")
            .expect("account exists");
        all.extend(page.details);
        match page.next {
            Some(cursor) => query.after = Some(cursor),
            None => return all,
        }
    }
}

pub fn assert_audit_ok(engine: &Engine) -> Audit {
    let audit = engine.audit_blocking().expect("audit");
    assert!(audit.ok(), "audit failed: {audit:?}");
    audit
}

/// Opens `bank` (internal) and `customers`, funding each with `funding`
/// cents from the bank under the customer's own id — without panicking, for
/// runs where the storage may fail under it.
pub fn try_open_funded(
    engine: &Engine,
    bank: u64,
    customers: &[u64],
    funding: i64,
) -> Result<(), SubmitError> {
    let mut accounts = vec![NewAccount::internal(AccountId(bank), Currency::CNY)];
    accounts.extend(
        customers
            .iter()
            .map(|&c| NewAccount::customer(AccountId(c), Currency::CNY)),
    );
    engine.open_accounts_blocking(accounts)?;
    let fund = customers
        .iter()
        .map(|&c| transfer(u128::from(c), bank, c, funding))
        .collect();
    engine.submit_blocking(fund)?;
    Ok(())
}
