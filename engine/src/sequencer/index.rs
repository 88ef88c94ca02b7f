//! The idempotency index: every id ever sequenced, with its fingerprint,
//! timestamp and whether it committed; the reason and code of each refusal
//! in a side table (refusals are rare). Owned by the sequencer thread.
//!
//! What it guarantees: an id recorded here keeps its answer — the same
//! content gets the original timestamp and result back as a duplicate,
//! other content gets `IdConflict`.

use super::TxnRecord;
use crate::check::{unsequenced, Checked};
use crate::grow::SplitMap;
use crate::runs::{HeaderCache, Item, Keys, Page, Run, KIND_ENTRY, KIND_RESOLVED};
use crate::shard::ShardAudit;
use crate::state::{IndexEntry, PendingStatus};
use crate::txn::{Outcome, Reject};
use crate::types::{TxnCode, TxnId};
use rustc_hash::FxHashMap;
use std::sync::Arc;
use tally_storage::BlobStore;

/// What the index knows of an id: its entry, and why it was refused.
pub(crate) type Known = (IndexEntry, Option<(Reject, TxnCode)>);

/// The ids sequenced since a checkpoint, in RAM.
#[derive(Default)]
pub(crate) struct Hot {
    index: SplitMap<TxnId, IndexEntry>,
    refusals: FxHashMap<TxnId, (Reject, TxnCode)>,
}

impl Hot {
    fn get(&self, id: &TxnId) -> Option<Known> {
        let entry = *self.index.get(id)?;
        Some((entry, self.refusals.get(id).cloned()))
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Every entry, with the given resolutions, as one sorted page: what a
    /// checkpoint writes as a run.
    pub fn items(&self, resolved: &[(TxnId, PendingStatus)]) -> Page {
        let mut items: Page = self
            .index
            .iter()
            .map(|(id, entry)| {
                let refusal = self.refusals.get(id).map(|r| Box::new(r.clone()));
                (id.0, Item::Entry(*entry, refusal))
            })
            .chain(resolved.iter().map(|(id, s)| (id.0, Item::Resolved(*s))))
            .collect();
        items.sort_unstable_by_key(|(id, item)| (*id, item.kind()));
        items
    }
}

/// The index: the ids since the last checkpoint taken (`active`), those a
/// checkpoint being written holds (`frozen`, until it is durable), and the
/// runs on disk (`runs.rs`) that hold every id before.
pub(crate) struct Idempotency {
    active: Hot,
    frozen: Option<Arc<Hot>>,
    runs: Vec<Arc<Run>>,
    blobs: Option<Arc<dyn BlobStore>>,
    keys: Keys,
    /// The runs' headers in RAM (`run_cache.rs`).
    cache: Arc<HeaderCache>,
}

impl Default for Idempotency {
    fn default() -> Idempotency {
        Idempotency {
            active: Hot::default(),
            frozen: None,
            runs: Vec::new(),
            blobs: None,
            keys: Keys::default(),
            cache: HeaderCache::new(crate::config::INDEX_CACHE_BYTES),
        }
    }
}

impl Idempotency {
    /// Where the runs are read from, their keys, and the budget of their
    /// headers in RAM (at open).
    pub fn set_store(&mut self, blobs: Arc<dyn BlobStore>, keys: Keys, cache_bytes: usize) {
        self.blobs = Some(blobs);
        self.keys = keys;
        self.cache = HeaderCache::new(cache_bytes);
    }

    /// The runs' header cache (every run of this engine shares it).
    pub fn cache(&self) -> Arc<HeaderCache> {
        Arc::clone(&self.cache)
    }

    pub fn keys(&self) -> Keys {
        self.keys
    }

    /// Looks `key` up in the runs whose span holds it, newest first.
    fn on_disk(&self, id: TxnId, kind: u8) -> Result<Option<Item>, String> {
        let Some(blobs) = self.blobs.as_deref() else {
            return Ok(None);
        };
        let key = (id.0, kind);
        if !self.runs.iter().any(|run| run.spans(key)) {
            // Ids that grow with time land here: above every run.
            return Ok(None);
        }
        let probe = self.keys.probe(key);
        let mut spanning = Vec::new();
        for run in self.runs.iter().rev().filter(|run| run.spans(key)) {
            spanning.push((run, run.header(blobs)?));
        }
        // Every such run's filter block is loaded first, by independent
        // reads the CPU overlaps: one cache miss after another would cost
        // the sequencer ~100 ns each.
        let touched = spanning
            .iter()
            .fold(0u8, |acc, (_, header)| acc ^ header.filter.touch(probe));
        std::hint::black_box(touched);
        for (run, header) in &spanning {
            if let Some(item) = run.get(blobs, &self.keys, header, key, probe)? {
                return Ok(Some(item));
            }
        }
        Ok(None)
    }

    /// What the index knows of `id`; an error when a run's page could not
    /// be read or failed its check (the answer is then unknown, never "not
    /// sequenced").
    pub fn lookup(&self, id: TxnId) -> Result<Option<Known>, String> {
        if let Some(known) = self.active.get(&id) {
            return Ok(Some(known));
        }
        if let Some(known) = self.frozen.as_ref().and_then(|f| f.get(&id)) {
            return Ok(Some(known));
        }
        match self.on_disk(id, KIND_ENTRY)? {
            Some(Item::Entry(entry, refusal)) => Ok(Some((entry, refusal.map(|r| *r)))),
            _ => Ok(None),
        }
    }

    pub fn contains(&self, id: TxnId) -> Result<bool, String> {
        Ok(self.lookup(id)?.is_some())
    }

    /// The final status of a pending transfer that left memory (see
    /// `TwoPhase::checkpointed`).
    pub fn resolution(&self, pending: TxnId) -> Result<Option<PendingStatus>, String> {
        match self.on_disk(pending, KIND_RESOLVED)? {
            Some(Item::Resolved(status)) => Ok(Some(status)),
            _ => Ok(None),
        }
    }

    /// Records a settled transaction (and its refusal, if it was refused).
    pub fn insert(&mut self, id: TxnId, entry: IndexEntry, refusal: Option<(Reject, TxnCode)>) {
        if let Some(refusal) = refusal {
            self.active.refusals.insert(id, refusal);
        }
        self.active.index.insert(id, entry);
    }

    /// Hands the ids since the last checkpoint to the next one; they stay
    /// readable here until [`Idempotency::install`].
    pub fn freeze(&mut self) -> Arc<Hot> {
        let hot = Arc::new(std::mem::take(&mut self.active));
        self.frozen = Some(hot.clone());
        hot
    }

    /// The runs a durable checkpoint names: the frozen ids are in them.
    pub fn install(&mut self, runs: Vec<Arc<Run>>) {
        self.frozen = None;
        self.runs = runs;
        self.cache.sweep();
    }

    pub fn runs(&self) -> Vec<Arc<Run>> {
        self.runs.clone()
    }

    /// Checks every page of every run, on a thread of its own (a run is
    /// read whole, which may take a while): the audit's part for the index,
    /// an empty shard audit that says what is unreadable, if anything.
    pub fn verify_in_background(&self) -> tokio::sync::oneshot::Receiver<ShardAudit> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (runs, blobs, keys) = (self.runs.clone(), self.blobs.clone(), self.keys);
        let check = move || {
            let blobs = blobs?;
            runs.iter()
                .try_for_each(|run| crate::runs::verify(run, blobs.as_ref(), &keys).map(drop))
                .err()
        };
        let report = |unreadable| ShardAudit {
            unreadable,
            ..ShardAudit::default()
        };
        let spawned = std::thread::Builder::new()
            .name("tally-index-check".into())
            .spawn(move || {
                let _ = tx.send(report(check()));
            });
        if let Err(e) = spawned {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(report(Some(format!(
                "could not start the index check: {e}"
            ))));
            return rx;
        }
        rx
    }

    /// Ids in RAM, and the runs' headers in RAM (filters and fences in
    /// the cache): how many, and their bytes.
    pub fn resident(&self) -> (usize, usize, usize) {
        let hot = self.active.len() + self.frozen.as_ref().map_or(0, |f| f.len());
        (hot, self.cache.len(), self.cache.resident())
    }

    fn result_of(known: &Known) -> Result<(), Reject> {
        if known.0.committed() {
            return Ok(());
        }
        Err(known
            .1
            .as_ref()
            .map_or(Reject::LinkedTxnFailed, |(reject, _)| reject.clone()))
    }

    /// What the index knows of `id`.
    pub fn record(&self, id: TxnId) -> Result<Option<TxnRecord>, String> {
        Ok(self.lookup(id)?.map(|known| TxnRecord {
            id,
            code: known.1.as_ref().map(|(_, code)| *code),
            timestamp: known.0.timestamp(),
            result: Self::result_of(&known),
        }))
    }

    /// Answers a chain some of whose ids are known: a known id with the
    /// same fingerprint gets its original answer as a duplicate, other
    /// content a conflict, an unknown member `LinkedTxnFailed`.
    pub fn answer_duplicates(
        &self,
        members: &[(usize, Checked)],
    ) -> Result<Vec<(usize, Outcome)>, String> {
        members
            .iter()
            .map(|(index, c)| {
                let outcome = match self.lookup(c.id)? {
                    Some(known) if known.0.fingerprint == c.fingerprint => Outcome {
                        id: c.id,
                        timestamp: Some(known.0.timestamp()),
                        result: Self::result_of(&known),
                        duplicate: true,
                    },
                    Some(_) => unsequenced(c.id, Reject::IdConflict),
                    None => unsequenced(c.id, Reject::LinkedTxnFailed),
                };
                Ok((*index, outcome))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::command::Legs;
    use crate::txn::TxnKind;
    use crate::types::Timestamp;

    fn member(id: u128, fingerprint: u64) -> (usize, Checked) {
        (
            0,
            Checked {
                id: TxnId(id),
                code: TxnCode(1),
                kind: TxnKind::Posted,
                linked: false,
                legs: Legs::new(),
                fingerprint: [fingerprint, 0],
            },
        )
    }

    fn filled() -> Idempotency {
        let mut ids = Idempotency::default();
        ids.insert(TxnId(1), IndexEntry::new([5, 0], Timestamp(10), true), None);
        ids.insert(
            TxnId(2),
            IndexEntry::new([6, 0], Timestamp(11), false),
            Some((Reject::PendingNotFound, TxnCode(9))),
        );
        ids
    }

    fn answers_like_it_was_filled(ids: &Idempotency) {
        let answers = ids
            .answer_duplicates(&[member(1, 5), member(2, 6), member(1, 7)])
            .unwrap();
        assert_eq!(answers[0].1.result, Ok(()));
        assert!(answers[0].1.duplicate);
        assert_eq!(answers[0].1.timestamp, Some(Timestamp(10)));
        assert_eq!(answers[1].1.result, Err(Reject::PendingNotFound));
        assert_eq!(answers[1].1.timestamp, Some(Timestamp(11)));
        assert_eq!(answers[2].1.result, Err(Reject::IdConflict));
        assert!(!answers[2].1.duplicate);
        let unknown = ids.answer_duplicates(&[member(3, 5)]).unwrap();
        assert_eq!(unknown[0].1.result, Err(Reject::LinkedTxnFailed));
        let record = ids.record(TxnId(2)).unwrap().unwrap();
        assert_eq!(record.code, Some(TxnCode(9)));
        assert_eq!(ids.record(TxnId(1)).unwrap().unwrap().code, None);
        assert!(ids.record(TxnId(3)).unwrap().is_none());
    }

    #[test]
    fn a_known_id_keeps_its_answer_and_other_content_conflicts() {
        answers_like_it_was_filled(&filled());
    }

    /// The same answers while a checkpoint holds the ids (frozen), and
    /// once they live only in a run on disk, with nothing left in RAM.
    #[test]
    fn ids_keep_their_answers_when_they_move_to_disk() {
        use tally_storage::{FileBlobs, SimDisk};
        let blobs: Arc<dyn BlobStore> = Arc::new(FileBlobs::on(Arc::new(SimDisk::new())).unwrap());
        let keys = Keys::new([1; 16], &[2; 32]);
        let mut ids = filled();
        ids.set_store(blobs.clone(), keys, usize::MAX);
        let hot = ids.freeze();
        answers_like_it_was_filled(&ids);
        let resolved = [(TxnId(1), PendingStatus::Voided)];
        let items = hot.items(&resolved);
        let header =
            crate::runs::write_run(blobs.as_ref(), &keys, "r0", 3, items.into_iter().map(Ok))
                .unwrap();
        let bytes = crate::codec::encode(&header).unwrap();
        blobs.put("h0", &bytes).unwrap();
        let source = crate::codec::BlobSum::of("h0", &bytes);
        let run = Run::open(
            blobs.as_ref(),
            &keys,
            "r0".into(),
            header,
            source,
            ids.cache(),
        );
        ids.install(vec![Arc::new(run.unwrap())]);
        assert_eq!(ids.resident().0, 0, "no id left in RAM");
        answers_like_it_was_filled(&ids);
        assert_eq!(ids.resolution(TxnId(1)), Ok(Some(PendingStatus::Voided)));
        assert_eq!(ids.resolution(TxnId(2)), Ok(None));
        // A run whose data blob is gone: the answer is an error, never
        // "not sequenced".
        blobs.delete("r0").unwrap();
        assert!(ids.lookup(TxnId(1)).unwrap_err().contains("missing"));
    }
}
