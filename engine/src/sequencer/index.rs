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
use crate::state::IndexEntry;
use crate::txn::{Outcome, Reject};
use crate::types::{TxnCode, TxnId};
use rustc_hash::FxHashMap;

#[derive(Default)]
pub(crate) struct Idempotency {
    index: SplitMap<TxnId, IndexEntry>,
    refusals: FxHashMap<TxnId, (Reject, TxnCode)>,
}

impl Idempotency {
    pub fn contains(&self, id: &TxnId) -> bool {
        self.index.contains_key(id)
    }

    /// Records a settled transaction (and its refusal, if it was refused).
    pub fn insert(&mut self, id: TxnId, entry: IndexEntry, refusal: Option<(Reject, TxnCode)>) {
        if let Some(refusal) = refusal {
            self.refusals.insert(id, refusal);
        }
        self.index.insert(id, entry);
    }

    /// Takes back what a checkpoint's index blocks hold.
    pub fn restore(
        &mut self,
        entries: Vec<(TxnId, IndexEntry)>,
        refusals: Vec<(TxnId, (Reject, TxnCode))>,
    ) {
        for (id, entry) in entries {
            self.index.insert(id, entry);
        }
        self.refusals.extend(refusals);
    }

    fn result_of(&self, id: TxnId, entry: &IndexEntry) -> Result<(), Reject> {
        if entry.committed() {
            return Ok(());
        }
        Err(self
            .refusals
            .get(&id)
            .map_or(Reject::LinkedTxnFailed, |(reject, _)| reject.clone()))
    }

    /// What the index knows of `id`.
    pub fn record(&self, id: TxnId) -> Option<TxnRecord> {
        self.index.get(&id).map(|entry| TxnRecord {
            id,
            code: self.refusals.get(&id).map(|(_, code)| *code),
            timestamp: entry.timestamp(),
            result: self.result_of(id, entry),
        })
    }

    /// Answers a chain some of whose ids are known: a known id with the
    /// same fingerprint gets its original answer as a duplicate, other
    /// content a conflict, an unknown member `LinkedTxnFailed`.
    pub fn answer_duplicates(&self, members: &[(usize, Checked)]) -> Vec<(usize, Outcome)> {
        members
            .iter()
            .map(|(index, c)| {
                let outcome = match self.index.get(&c.id) {
                    Some(r) if r.fingerprint == c.fingerprint => Outcome {
                        id: c.id,
                        timestamp: Some(r.timestamp()),
                        result: self.result_of(c.id, r),
                        duplicate: true,
                    },
                    Some(_) => unsequenced(c.id, Reject::IdConflict),
                    None => unsequenced(c.id, Reject::LinkedTxnFailed),
                };
                (*index, outcome)
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

    #[test]
    fn a_known_id_keeps_its_answer_and_other_content_conflicts() {
        let mut ids = Idempotency::default();
        ids.insert(TxnId(1), IndexEntry::new([5, 0], Timestamp(10), true), None);
        ids.insert(
            TxnId(2),
            IndexEntry::new([6, 0], Timestamp(11), false),
            Some((Reject::PendingNotFound, TxnCode(9))),
        );
        let answers = ids.answer_duplicates(&[member(1, 5), member(2, 6), member(1, 7)]);
        assert_eq!(answers[0].1.result, Ok(()));
        assert!(answers[0].1.duplicate);
        assert_eq!(answers[0].1.timestamp, Some(Timestamp(10)));
        assert_eq!(answers[1].1.result, Err(Reject::PendingNotFound));
        assert_eq!(answers[1].1.timestamp, Some(Timestamp(11)));
        assert_eq!(answers[2].1.result, Err(Reject::IdConflict));
        assert!(!answers[2].1.duplicate);
        let unknown = ids.answer_duplicates(&[member(3, 5)]);
        assert_eq!(unknown[0].1.result, Err(Reject::LinkedTxnFailed));
        let record = ids.record(TxnId(2)).unwrap();
        assert_eq!(record.code, Some(TxnCode(9)));
        assert_eq!(ids.record(TxnId(1)).unwrap().code, None);
        assert!(ids.record(TxnId(3)).is_none());
    }

    #[test]
    fn a_restored_index_answers_like_the_one_it_was_taken_from() {
        let mut ids = Idempotency::default();
        ids.restore(
            vec![
                (TxnId(1), IndexEntry::new([5, 0], Timestamp(10), true)),
                (TxnId(2), IndexEntry::new([6, 0], Timestamp(11), false)),
            ],
            vec![(TxnId(2), (Reject::PendingExpired, TxnCode(3)))],
        );
        assert!(ids.contains(&TxnId(1)) && ids.contains(&TxnId(2)));
        assert_eq!(
            ids.record(TxnId(2)).unwrap().result,
            Err(Reject::PendingExpired)
        );
    }
}
