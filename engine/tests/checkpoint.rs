//! Checkpoints on the embedded sled store: reopening from a checkpoint plus
//! the log after it gives exactly the state a full replay gives; the log
//! shrinks behind checkpoints; a damaged checkpoint is refused by name;
//! details older than the hot window are served from the store (the cold
//! tier), live and after a reopen.
// Amounts are written as yuan_fen (100_00 is 100.00 yuan).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Bound;
use std::path::Path;
use tally_engine::*;
use tally_storage::{Keyspace, Scan, SledStore, Store, WriteBatch};

const BANK: u64 = 1;
const CUSTOMERS: std::ops::Range<u64> = 10..60;
/// The log's keyspace (engine/src/sequencer.rs) and the checkpoint's
/// (engine/src/checkpoint.rs), as the store sees them.
const CHECKPOINT: Keyspace = Keyspace(2);

/// With checkpoints, no full detail chunk stays in memory once persisted:
/// every read of an older detail goes to the store.
fn config(dir: &Path, every: u64) -> Config {
    Config {
        // Twin engines are compared batch for batch: no expiry batches
        // from the ticker in between (tested in durability.rs).
        expiry_tick_ms: 0,
        // Small segments, so that checkpoints release some.
        log_segment_bytes: 4096,
        ..Config::sled(dir)
    }
    .with_shards(2)
    .with_checkpoint_every(every)
    .with_hot_detail_chunks(0)
    .with_clock(manual_clock())
}

/// Seeded traffic: transfers (some refused for lack of funds), and pending
/// transfers, some posted, some voided, some left open.
fn traffic(engine: &Engine, seed: u64, calls: u32) -> Vec<Outcome> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let customers: Vec<u64> = CUSTOMERS.collect();
    let mut outcomes = Vec::new();
    let mut pendings = Vec::new();
    for call in 0..calls {
        let mut txns = Vec::new();
        for i in 0..rng.gen_range(1..60u128) {
            let id = u128::from(seed) << 96 | u128::from(call) << 32 | i;
            let from = customers[rng.gen_range(0..customers.len())];
            let to = customers[rng.gen_range(0..customers.len())];
            let mut txn = transfer(id, from, to, rng.gen_range(1..20_00));
            match rng.gen_range(0..10) {
                0 => {
                    txn.kind = TxnKind::Pending {
                        timeout_ms: 3_600_000,
                    };
                    pendings.push(txn.id);
                }
                1 if !pendings.is_empty() => {
                    let pending_id = pendings.swap_remove(rng.gen_range(0..pendings.len()));
                    txn.legs.clear();
                    txn.kind = if rng.gen_bool(0.5) {
                        TxnKind::PostPending { pending_id }
                    } else {
                        TxnKind::VoidPending { pending_id }
                    };
                }
                _ => {}
            }
            txns.push(txn);
        }
        outcomes.extend(engine.submit_blocking(txns).expect("submit"));
    }
    outcomes
}

/// Everything a reader can see of an engine.
#[derive(Debug, PartialEq)]
struct Seen {
    audit: Audit,
    accounts: Vec<Option<AccountView>>,
    details: Vec<Vec<DetailView>>,
    txns: Vec<Option<TxnView>>,
}

fn seen(engine: &Engine, ids: &[TxnId]) -> Seen {
    let rt = runtime();
    let mut accounts = Vec::new();
    let mut details = Vec::new();
    for id in std::iter::once(BANK).chain(CUSTOMERS) {
        accounts.push(engine.account_blocking(AccountId(id)).expect("account"));
        let all = DetailQuery::all(AccountId(id), DETAIL_PAGE_MAX);
        details.push(page_through(&rt, engine, all));
    }
    let txns = ids
        .iter()
        .map(|&id| rt.block_on(engine.transaction(id)).expect("txn"))
        .collect();
    Seen {
        audit: engine.audit_blocking().expect("audit"),
        accounts,
        details,
        txns,
    }
}

fn keys(store: &SledStore, keyspace: Keyspace) -> Vec<Vec<u8>> {
    store
        .scan(Scan {
            keyspace,
            start: Bound::Unbounded,
            end: Bound::Unbounded,
            reverse: false,
            limit: usize::MAX,
        })
        .expect("scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn reopening_from_checkpoints_equals_replaying_the_whole_log() {
    // Enough traffic for several full detail chunks per shard.
    let (with, without) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut ids = Vec::new();
    for (dir, every) in [(with.path(), 7), (without.path(), 0)] {
        let engine = Engine::open(config(dir, every)).expect("open");
        open_funded(&engine, BANK, &CUSTOMERS.collect::<Vec<_>>(), 500_00);
        ids = traffic(&engine, 1, 1_500).iter().map(|o| o.id).collect();
        // Closed with a checkpoint (every > 0) or with the whole log.
        // Reopening from a checkpoint with a log tail after it is what the
        // kill -9 test in durability.rs does.
        engine.shutdown_blocking().expect("shutdown");
    }
    let (clock_with, clock_without) = (manual_clock(), manual_clock());
    let reopened_with =
        Engine::open(config(with.path(), 7).with_clock(clock_with.clone())).expect("reopen");
    let reopened_without =
        Engine::open(config(without.path(), 0).with_clock(clock_without.clone())).expect("reopen");
    let (a, b) = (seen(&reopened_with, &ids), seen(&reopened_without, &ids));
    assert!(a.audit.ok(), "{:?}", a.audit);
    assert!(
        a.audit.details > 2 * 16_384 * 2,
        "several chunks per shard: {}",
        a.audit.details
    );
    assert!(
        a.audit.pending_open > 0,
        "open pending transfers survive too"
    );
    assert_eq!(a, b);

    // Both go on identically: idempotency answers and new work.
    let more_a = traffic(&reopened_with, 1, 20);
    let more_b = traffic(&reopened_without, 1, 20);
    assert!(
        more_a.iter().all(|o| o.duplicate),
        "same ids again are duplicates"
    );
    assert_eq!(more_a, more_b);
    let next_a = traffic(&reopened_with, 2, 50);
    assert_eq!(next_a, traffic(&reopened_without, 2, 50));
    // Past the deadline, the pending transfers the checkpoint carried
    // expire on both alike.
    let open_before = reopened_with.audit_blocking().expect("audit").pending_open;
    for clock in [&clock_with, &clock_without] {
        clock.advance_ms(2 * 3_600_000);
    }
    assert_eq!(
        traffic(&reopened_with, 5, 5),
        traffic(&reopened_without, 5, 5)
    );
    let open_after = reopened_with.audit_blocking().expect("audit").pending_open;
    assert!(
        open_after < open_before,
        "expired: {open_before} -> {open_after}"
    );
    assert_eq!(
        reopened_with.audit_blocking().expect("audit"),
        reopened_without.audit_blocking().expect("audit")
    );
}

#[test]
fn a_checkpoint_drops_the_log_it_covers() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(config(dir.path(), 5)).expect("open");
    open_funded(&engine, BANK, &CUSTOMERS.collect::<Vec<_>>(), 500_00);
    traffic(&engine, 3, 40);
    let before = engine.audit_blocking().expect("audit");
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    {
        let segments = std::fs::read_dir(dir.path().join(LOG_DIR))
            .expect("log dir")
            .count();
        // 40 calls log far more than 4 KB: without release there would be
        // dozens of segments.
        assert!(
            segments <= 2,
            "the checkpoints released the segments they cover: {segments} left"
        );
        let store = SledStore::open(dir.path()).expect("store");
        assert!(!keys(&store, CHECKPOINT).is_empty());
    }
    let engine = Engine::open(config(dir.path(), 5)).expect("reopen");
    assert_eq!(engine.audit_blocking().expect("audit"), before);
}

#[test]
fn a_damaged_checkpoint_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(config(dir.path(), 3)).expect("open");
    open_funded(&engine, BANK, &CUSTOMERS.collect::<Vec<_>>(), 500_00);
    traffic(&engine, 4, 10);
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    let flip = |value: &mut Vec<u8>| {
        let middle = value.len() / 2;
        value[middle] ^= 0x10;
    };
    let check_refused = || {
        let err = Engine::open(config(dir.path(), 3)).err().expect("refused");
        assert!(matches!(err, OpenError::CorruptCheckpoint { .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    };
    // The manifest, in the store: damaged, then repaired.
    let flip_manifest = || {
        let store = SledStore::open(dir.path()).expect("store");
        let mut value = store
            .get(CHECKPOINT, b"manifest")
            .expect("get")
            .expect("present");
        flip(&mut value);
        let mut batch = WriteBatch::new();
        batch.put(CHECKPOINT, b"manifest".to_vec(), value);
        store.write(batch).expect("write");
        store.flush().expect("flush");
    };
    flip_manifest();
    check_refused();
    flip_manifest();
    assert_audit_ok(&Engine::open(config(dir.path(), 3)).expect("repaired"));
    // Every blob a reopen loads: the shard and sequencer states, the index
    // runs' headers and their first and last pages,
    // the hot detail chunks (none here: no hot chunks are kept).
    let details = dir.path().join(DETAILS_DIR);
    let mut loaded: Vec<_> = std::fs::read_dir(&details)
        .expect("details")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            ['a', 'q', 'h', 'r'].iter().any(|&c| name.starts_with(c))
        })
        .collect();
    loaded.sort();
    assert!(loaded.len() >= 4, "{loaded:?}");
    for path in loaded {
        let original = std::fs::read(&path).expect("blob");
        let mut damaged = original.clone();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('r') {
            // A run's first page, which every open checks (a page in the
            // middle is checked when read: `bounded.rs`).
            damaged[10] ^= 0x10;
        } else {
            flip(&mut damaged);
        }
        std::fs::write(&path, &damaged).expect("damage");
        check_refused();
        std::fs::write(&path, &original).expect("repair");
        assert_audit_ok(&Engine::open(config(dir.path(), 3)).expect("repaired"));
    }
}

#[test]
fn cold_details_are_read_from_the_store() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(config(dir.path(), 5)).expect("open");
    open_funded(&engine, BANK, &CUSTOMERS.collect::<Vec<_>>(), 500_00);
    let ids: Vec<TxnId> = traffic(&engine, 6, 2_200)
        .iter()
        .filter(|o| o.is_committed())
        .map(|o| o.id)
        .collect();
    let live = seen(&engine, &ids);
    assert!(live.audit.ok(), "{:?}", live.audit);
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    // Damage shard 0's first chunk, which is cold both live and reopened.
    // Chunks are files in details/, named s<shard>-c<chunk> in hex
    // (engine/src/checkpoint.rs).
    let details = dir.path().join(DETAILS_DIR);
    let chunks = std::fs::read_dir(&details).expect("details dir").count();
    assert!(chunks >= 4, "several chunks per shard: {chunks}");
    let chunk0 = details.join("s0000-c00000000");
    let mut value = std::fs::read(&chunk0).expect("chunk 0 of shard 0");
    let middle = value.len() / 2;
    value[middle] ^= 0x10;
    std::fs::write(&chunk0, value).expect("damage");
    // Opening reads no cold chunk: it succeeds, and so do balances.
    let engine = Engine::open(config(dir.path(), 5)).expect("reopen");
    assert_eq!(
        engine.account_blocking(AccountId(BANK)).expect("read"),
        live.accounts[0]
    );
    // The audit reaches the damaged chunk and says so.
    let audit = engine.audit_blocking().expect("audit");
    assert!(!audit.ok());
    let reason = audit.unreadable.expect("unreadable");
    assert!(
        reason.contains("shard 0 detail chunk 0") && reason.contains("checksum"),
        "{reason}"
    );
    // So does the oldest history of an account on shard 0, as a storage
    // error, not a wrong answer.
    let rt = runtime();
    let on_shard_0 = std::iter::once(BANK)
        .chain(CUSTOMERS)
        .find(|&a| shard_of(AccountId(a), engine.shards()) == ShardId(0))
        .expect("an account on shard 0");
    let err = rt
        .block_on(engine.details(DetailQuery::all(AccountId(on_shard_0), 10)))
        .expect_err("the first page is in the damaged chunk");
    assert!(matches!(err, SubmitError::Storage { .. }), "{err}");
    assert!(err.to_string().contains("detail chunk 0"), "{err}");
}

/// Time-ranged history pages and balances at past instants, for busy
/// accounts whose older details are cold, equal what the whole history
/// says: the reads start near the range (skip entries) rather than at the
/// newest detail, and must not miss or add anything by doing so.
#[test]
fn time_ranges_and_past_balances_match_the_whole_history() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(config(dir.path(), 5)).expect("open");
    open_funded(&engine, BANK, &CUSTOMERS.collect::<Vec<_>>(), 500_00);
    traffic(&engine, 8, 1_500);
    engine.shutdown_blocking().expect("shutdown");
    drop(engine);
    // Reopened: the skip entries come from the checkpoint.
    let engine = Engine::open(config(dir.path(), 5)).expect("reopen");
    let rt = runtime();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut checked = 0;
    for id in CUSTOMERS.step_by(7) {
        let account = AccountId(id);
        let window = |from: Timestamp, to: Timestamp, limit: usize| {
            let query = DetailQuery {
                account,
                from,
                to,
                limit,
                after: None,
            };
            page_through(&rt, &engine, query)
        };
        let history = window(Timestamp(0), Timestamp(u64::MAX), DETAIL_PAGE_MAX);
        assert!(history.len() > 1_000, "a busy account: {}", history.len());
        for _ in 0..12 {
            let a = history[rng.gen_range(0..history.len())].timestamp;
            let b = history[rng.gen_range(0..history.len())].timestamp;
            let (from, to) = (a.min(b), Timestamp(a.max(b).0 + rng.gen_range(0..2)));
            let expected: Vec<DetailView> = history
                .iter()
                .filter(|d| d.timestamp >= from && d.timestamp < to)
                .cloned()
                .collect();
            assert_eq!(window(from, to, 97), expected, "[{from:?}, {to:?})");
            for at in [Timestamp(a.0 - 1), a, Timestamp(a.0 + 1)] {
                let expected = history
                    .iter()
                    .rev()
                    .find(|d| d.timestamp <= at)
                    .map_or(yuan(0), |d| d.balance_post);
                let found = rt.block_on(engine.balance_at(account, at)).expect("read");
                assert_eq!(found, Some(expected), "balance at {at:?}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 12);
    assert_audit_ok(&engine);
}
