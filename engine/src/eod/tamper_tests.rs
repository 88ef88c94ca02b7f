//! Tampering behind the engine's back: a stored balance, a stored opening
//! balance and a detail are changed in a checkpoint's files, re-sealed and
//! re-summed as someone who knows the format would do it, so the reopen
//! takes them; the close must name each.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

use crate::checkpoint::{self, BlobSum, Manifest, SealedBlobs, ShardState, KEYSPACE_CHECKPOINT};
use crate::engine::{DETAILS_DIR, META_KEY};
use crate::sequencer::KEYSPACE_META;
use crate::*;
use rust_decimal::Decimal;
use std::path::Path;
use std::sync::Arc;
use tally_storage::{BlobStore, FileBlobs, SledStore, Store, WriteBatch};

const BANK: AccountId = AccountId(1);
const ALICE: AccountId = AccountId(2);
const BOB: AccountId = AccountId(3);

fn config(dir: &Path) -> Config {
    // One shard, and no checkpoint but the one at shutdown: it holds
    // every account and every detail, in one full shard state.
    Config {
        expiry_tick_ms: 0,
        ..Config::sled(dir)
    }
    .with_shards(1)
    .with_checkpoint_every(1_000_000)
    .with_clock(Arc::new(ManualClock::new(Timestamp(
        1_767_225_600_000_000_000,
    ))))
}

fn transfer(id: u128, from: AccountId, to: AccountId, cents: i64) -> Transaction {
    Transaction::transfer(
        TxnId(id),
        TxnCode(1),
        from,
        to,
        Decimal::new(cents, 2),
        Currency::CNY,
    )
}

/// A store with one closed date (2026-01-01) and a clean shutdown.
fn closed_store(dir: &Path) -> AccountingDate {
    let engine = Engine::open(config(dir)).unwrap();
    let accounts = vec![
        NewAccount::internal(BANK, Currency::CNY),
        NewAccount::customer(ALICE, Currency::CNY),
        NewAccount::customer(BOB, Currency::CNY),
    ];
    assert!(engine
        .open_accounts_blocking(accounts)
        .unwrap()
        .iter()
        .all(Result::is_ok));
    let txns = vec![
        transfer(1, BANK, ALICE, 100_00),
        transfer(2, ALICE, BOB, 30_00),
        transfer(3, BOB, ALICE, 5_00),
    ];
    assert!(engine
        .submit_blocking(txns)
        .unwrap()
        .iter()
        .all(Outcome::is_committed));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let date = AccountingDate(20_454); // 2026-01-01
    let report = rt.block_on(engine.close_day(date)).unwrap();
    assert!(report.ok, "{report:#?}");
    engine.shutdown_blocking().unwrap();
    date
}

/// Rewrites shard 0's state in the newest checkpoint: decoded, edited,
/// encoded, sealed, and its size and BLAKE3 put in the manifest.
fn forge(dir: &Path, edit: impl FnOnce(&mut ShardState)) {
    let store = SledStore::open(dir).unwrap();
    let meta = store.get(KEYSPACE_META, META_KEY).unwrap().unwrap();
    let store_id: [u8; 16] = meta[17..33].try_into().unwrap();
    let files: Arc<dyn BlobStore> = Arc::new(FileBlobs::open(&dir.join(DETAILS_DIR)).unwrap());
    let blobs = SealedBlobs::new(files, store_id);
    let key = checkpoint::manifest_key();
    let raw = store.get(KEYSPACE_CHECKPOINT, &key).unwrap().unwrap();
    let mut manifest: Manifest = checkpoint::decode(&raw).unwrap();
    assert_eq!(manifest.states.len(), 1, "one full state, no deltas");
    let name = checkpoint::state_name(manifest.states[0], 0);
    let mut state: ShardState = checkpoint::decode(&blobs.get(&name).unwrap().unwrap()).unwrap();
    edit(&mut state);
    let bytes = checkpoint::encode(&state).unwrap();
    blobs.put(&name, &bytes).unwrap();
    let sum = manifest.sums.iter_mut().find(|s| s.name == name).unwrap();
    *sum = BlobSum {
        name: name.clone(),
        len: bytes.len() as u64,
        hash: *blake3::hash(&bytes).as_bytes(),
    };
    let mut batch = WriteBatch::new();
    batch.put(
        KEYSPACE_CHECKPOINT,
        key,
        checkpoint::encode(&manifest).unwrap(),
    );
    store.write(batch).unwrap();
    store.flush().unwrap();
}

/// Reopens the forged store and checks the closed date again.
fn report_after(dir: &Path, date: AccountingDate) -> CloseReport {
    let engine = Engine::open(config(dir)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let report = rt.block_on(engine.day_report(date)).unwrap();
    engine.shutdown_blocking().unwrap();
    report
}

#[test]
fn an_honest_store_reopens_and_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let date = closed_store(dir.path());
    forge(dir.path(), |_| {});
    assert!(report_after(dir.path(), date).ok);
}

#[test]
fn a_changed_stored_balance_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let date = closed_store(dir.path());
    forge(dir.path(), |state| {
        let alice = state.accounts.iter_mut().find(|a| a.id == ALICE).unwrap();
        alice.balance += 1_000_00;
    });
    let report = report_after(dir.path(), date);
    assert!(!report.ok);
    assert_eq!(
        report.failures,
        vec![CloseFailure::StoredBalance {
            account: ALICE,
            stored: Decimal::new(1_075_00, 2),
            chain: Decimal::new(75_00, 2),
        }]
    );
}

#[test]
fn a_changed_stored_opening_balance_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let date = closed_store(dir.path());
    forge(dir.path(), |state| {
        let bob = state.accounts.iter_mut().find(|a| a.id == BOB).unwrap();
        bob.opening_balance = 7;
    });
    let report = report_after(dir.path(), date);
    assert!(
        matches!(report.failures.as_slice(),
            [CloseFailure::StoredOpening { account, .. }] if *account == BOB),
        "{report:#?}"
    );
}

#[test]
fn a_changed_detail_is_named_with_its_account_and_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let date = closed_store(dir.path());
    // Alice's payment to Bob (txn 2) is made to look like 3.00, not 30.00:
    // amount and Bob's side of the chain rewritten consistently, so only
    // the neighbours and the transaction's other leg can tell.
    forge(dir.path(), |state| {
        let d = state
            .tail
            .iter_mut()
            .find(|d| d.txn == TxnId(2) && d.account == BOB)
            .unwrap();
        d.amount = 3_00;
        d.balance_post = 3_00;
    });
    let report = report_after(dir.path(), date);
    assert!(!report.ok);
    let names: Vec<String> = report
        .failures
        .iter()
        .map(|f| serde_json::to_string(f).unwrap())
        .collect();
    // The next detail of Bob no longer chains; the transaction's legs no
    // longer balance; the customers' subject no longer adds up to the day.
    assert!(
        report.failures.iter().any(|f| matches!(f,
        CloseFailure::ChainBroken { account, txn, .. } if *account == BOB && *txn == TxnId(3))),
        "{names:#?}"
    );
    assert!(
        report.failures.iter().any(|f| matches!(f,
        CloseFailure::TxnUnbalanced { txn, .. } if *txn == TxnId(2))),
        "{names:#?}"
    );
    assert!(
        report
            .failures
            .iter()
            .any(|f| matches!(f, CloseFailure::DayUnbalanced { .. })),
        "{names:#?}"
    );
}

#[test]
fn a_detail_linked_to_itself_is_named_and_the_walk_ends() {
    let dir = tempfile::tempdir().unwrap();
    let date = closed_store(dir.path());
    // Bob's newest detail (txn 3) made to name itself as the one before:
    // a walk that trusted the links would never end.
    forge(dir.path(), |state| {
        let at = state
            .tail
            .iter()
            .position(|d| d.txn == TxnId(3) && d.account == BOB)
            .unwrap();
        state.tail[at].prev = at as u32;
    });
    let report = report_after(dir.path(), date);
    assert!(
        report.failures.iter().any(|f| matches!(f,
            CloseFailure::ChainBroken { account, txn, .. } if *account == BOB && *txn == TxnId(3))),
        "{report:#?}"
    );
}
