//! Two-phase state: pending transfers by id with their status, and the
//! open ones ordered by deadline. Owned by the sequencer thread; changed
//! only when a batch settles (or is restored from a checkpoint), so every
//! decision taken from it is in the log's order.

use crate::account::LegOp;
use crate::command::{Legs, SeqKind, SeqLeg, SeqTxn};
use crate::state::{PendingInfo, PendingStatus};
use crate::txn::{Reject, TxnKind};
use crate::types::{Currency, Minor, Timestamp, TxnId};
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;
use std::ops::Bound;

/// Pending transfers resolved, with their final status.
pub(crate) type Resolutions = Vec<(TxnId, PendingStatus)>;

/// Open pending transfers stay here until resolved; a resolved one stays
/// until a durable checkpoint holds its final status (in the idempotency
/// index's runs, `runs::Item::Resolved`), then leaves memory. With
/// checkpoints off (in memory) every one stays.
#[derive(Default)]
pub(crate) struct TwoPhase {
    pendings: FxHashMap<TxnId, PendingInfo>,
    deadlines: BTreeSet<(Timestamp, TxnId)>,
    /// Resolved ones leave memory once checkpointed.
    evicting: bool,
    /// Resolved since the last checkpoint taken.
    resolved: Vec<(TxnId, PendingStatus)>,
    /// Handed to the checkpoint being written.
    handed: Vec<TxnId>,
}

impl TwoPhase {
    pub fn evicting(evicting: bool) -> TwoPhase {
        TwoPhase {
            evicting,
            ..TwoPhase::default()
        }
    }

    pub fn get(&self, id: &TxnId) -> Option<&PendingInfo> {
        self.pendings.get(id)
    }

    /// The open pending transfer `pending_id`, as a post or void by `id`
    /// at `at` may use it, or why not. `PendingNotFound` from here may
    /// still be one that left memory: see `Idempotency::resolution`.
    pub fn open(
        &self,
        id: TxnId,
        pending_id: TxnId,
        at: Timestamp,
    ) -> Result<&PendingInfo, Reject> {
        if id == pending_id {
            return Err(Reject::PendingIsSelf);
        }
        let p = self
            .pendings
            .get(&pending_id)
            .ok_or(Reject::PendingNotFound)?;
        match p.status {
            PendingStatus::Open if p.deadline <= at => Err(Reject::PendingExpired),
            PendingStatus::Open => Ok(p),
            PendingStatus::Posted => Err(Reject::PendingAlreadyPosted),
            PendingStatus::Voided => Err(Reject::PendingAlreadyVoided),
            PendingStatus::Expired => Err(Reject::PendingExpired),
        }
    }

    /// The first open deadline after `cursor` (from the start without one).
    pub fn next_deadline(&self, cursor: Option<(Timestamp, TxnId)>) -> Option<(Timestamp, TxnId)> {
        match cursor {
            Some(key) => self
                .deadlines
                .range((Bound::Excluded(key), Bound::Unbounded))
                .next()
                .copied(),
            None => self.deadlines.iter().next().copied(),
        }
    }

    pub fn open_count(&self) -> u64 {
        self.deadlines.len() as u64
    }

    /// Applies a committed transaction's effect on two-phase state.
    pub fn settle(&mut self, t: &SeqTxn) {
        let (pending, status) = match t.kind {
            SeqKind::Posted => return,
            SeqKind::Pending { deadline } => {
                let info = PendingInfo {
                    code: t.code,
                    deadline,
                    legs: t.legs.clone(),
                    status: PendingStatus::Open,
                };
                self.pendings.insert(t.id, info);
                self.deadlines.insert((deadline, t.id));
                return;
            }
            SeqKind::Post { pending } => (pending, PendingStatus::Posted),
            SeqKind::Void { pending } => (pending, PendingStatus::Voided),
            SeqKind::Expire { pending } => (pending, PendingStatus::Expired),
        };
        if let Some(p) = self.pendings.get_mut(&pending) {
            p.status = status;
            self.deadlines.remove(&(p.deadline, pending));
            if self.evicting {
                self.resolved.push((pending, status));
            }
        }
    }

    /// The open pending transfers, for a checkpoint's sequencer state, and
    /// those resolved since the last one, for its index run. The resolved
    /// ones leave memory when [`TwoPhase::checkpointed`] says it is durable.
    pub fn snapshot(&mut self) -> (Vec<(TxnId, PendingInfo)>, Resolutions) {
        let open = self
            .deadlines
            .iter()
            .filter_map(|(_, id)| self.pendings.get(id).map(|p| (*id, p.clone())))
            .collect();
        let resolved = std::mem::take(&mut self.resolved);
        self.handed = resolved.iter().map(|(id, _)| *id).collect();
        (open, resolved)
    }

    /// The checkpoint of the last snapshot is durable: the pending
    /// transfers it resolved leave memory.
    pub fn checkpointed(&mut self) {
        for id in std::mem::take(&mut self.handed) {
            self.pendings.remove(&id);
        }
    }

    /// Pending transfers in memory (open, or resolved and not yet
    /// checkpointed).
    pub fn len(&self) -> usize {
        self.pendings.len()
    }

    /// Takes back what a checkpoint recorded.
    pub fn restore(&mut self, pendings: Vec<(TxnId, PendingInfo)>) {
        for (id, pending) in pendings {
            if pending.status == PendingStatus::Open {
                self.deadlines.insert((pending.deadline, id));
            }
            self.pendings.insert(id, pending);
        }
    }
}

/// The pending transfer a post or void names.
pub(crate) fn pending_of(kind: &TxnKind) -> Option<TxnId> {
    match *kind {
        TxnKind::PostPending { pending_id } | TxnKind::VoidPending { pending_id } => {
            Some(pending_id)
        }
        _ => None,
    }
}

/// A pending leg released (void or expiry).
pub(crate) fn release(leg: &SeqLeg) -> SeqLeg {
    SeqLeg {
        op: LegOp::Release {
            reserved: Minor(leg.amount),
        },
        ..*leg
    }
}

/// The legs of a capture: the pending legs in full, or the restated amounts.
pub(crate) fn capture_legs(
    p: &PendingInfo,
    restated: &[SeqLeg],
    scale: impl Fn(Currency) -> u32,
) -> Result<Legs, Reject> {
    if restated.is_empty() {
        return Ok(p
            .legs
            .iter()
            .map(|l| SeqLeg {
                op: LegOp::Capture {
                    reserved: Minor(l.amount),
                },
                ..*l
            })
            .collect());
    }
    if restated.len() != p.legs.len() {
        return Err(Reject::PostLegCount {
            expected: p.legs.len(),
            got: restated.len(),
        });
    }
    let mut legs = Legs::with_capacity(restated.len());
    for (i, (new, old)) in restated.iter().zip(&p.legs).enumerate() {
        let n = i as u16;
        let same = new.account == old.account
            && new.side == old.side
            && new.currency == old.currency
            && new.bucket == old.bucket;
        if !same {
            return Err(Reject::PostLegMismatch { leg: n });
        }
        if new.amount > old.amount {
            return Err(Reject::PostExceedsPending {
                leg: n,
                reserved: Minor(old.amount).to_decimal(scale(old.currency)),
                requested: Minor(new.amount).to_decimal(scale(new.currency)),
            });
        }
        legs.push(SeqLeg {
            op: LegOp::Capture {
                reserved: Minor(old.amount),
            },
            ..*new
        });
    }
    Ok(legs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::types::{AccountId, Bucket, Side, TxnCode};

    fn leg(account: u64, side: Side, amount: i64) -> SeqLeg {
        SeqLeg {
            account: AccountId(account),
            amount,
            expected_version: None,
            currency: Currency::CNY,
            side,
            bucket: Bucket::Available,
            op: LegOp::Reserve,
            shard: 0,
        }
    }

    fn txn(id: u128, kind: SeqKind) -> SeqTxn {
        SeqTxn {
            id: TxnId(id),
            code: TxnCode(1),
            timestamp: Timestamp(1),
            fingerprint: [0, 0],
            kind,
            linked: false,
            legs: [leg(1, Side::Debit, 500), leg(2, Side::Credit, 500)]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_pending_transfer_is_resolved_once_and_its_deadline_leaves() {
        let mut tp = TwoPhase::default();
        tp.settle(&txn(
            1,
            SeqKind::Pending {
                deadline: Timestamp(100),
            },
        ));
        tp.settle(&txn(
            2,
            SeqKind::Pending {
                deadline: Timestamp(50),
            },
        ));
        assert_eq!(tp.open_count(), 2);
        assert_eq!(tp.next_deadline(None), Some((Timestamp(50), TxnId(2))));
        assert_eq!(
            tp.next_deadline(Some((Timestamp(50), TxnId(2)))),
            Some((Timestamp(100), TxnId(1)))
        );
        assert!(tp.open(TxnId(9), TxnId(1), Timestamp(99)).is_ok());
        assert_eq!(
            tp.open(TxnId(9), TxnId(1), Timestamp(100)).err(),
            Some(Reject::PendingExpired)
        );
        assert_eq!(
            tp.open(TxnId(1), TxnId(1), Timestamp(1)).err(),
            Some(Reject::PendingIsSelf)
        );
        assert_eq!(
            tp.open(TxnId(9), TxnId(7), Timestamp(1)).err(),
            Some(Reject::PendingNotFound)
        );
        tp.settle(&txn(3, SeqKind::Post { pending: TxnId(1) }));
        tp.settle(&txn(4, SeqKind::Void { pending: TxnId(2) }));
        assert_eq!(tp.open_count(), 0);
        assert_eq!(tp.next_deadline(None), None);
        assert_eq!(
            tp.open(TxnId(9), TxnId(1), Timestamp(1)).err(),
            Some(Reject::PendingAlreadyPosted)
        );
        assert_eq!(
            tp.open(TxnId(9), TxnId(2), Timestamp(1)).err(),
            Some(Reject::PendingAlreadyVoided)
        );
    }

    /// Resolved pending transfers leave memory once a checkpoint holding
    /// their status is durable; open ones stay and are what a checkpoint
    /// restores.
    #[test]
    fn resolved_pending_transfers_leave_memory_after_a_checkpoint() {
        let mut tp = TwoPhase::evicting(true);
        for id in 1..=3 {
            tp.settle(&txn(
                id,
                SeqKind::Pending {
                    deadline: Timestamp(100 + id as u64),
                },
            ));
        }
        tp.settle(&txn(4, SeqKind::Post { pending: TxnId(1) }));
        tp.settle(&txn(5, SeqKind::Expire { pending: TxnId(2) }));
        let (open, resolved) = tp.snapshot();
        assert_eq!(
            open.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![TxnId(3)]
        );
        assert_eq!(
            resolved,
            vec![
                (TxnId(1), PendingStatus::Posted),
                (TxnId(2), PendingStatus::Expired)
            ]
        );
        // Until the checkpoint is durable they still answer from memory.
        assert_eq!(
            tp.open(TxnId(9), TxnId(1), Timestamp(1)).err(),
            Some(Reject::PendingAlreadyPosted)
        );
        tp.settle(&txn(6, SeqKind::Void { pending: TxnId(3) }));
        tp.checkpointed();
        assert_eq!(tp.len(), 1, "only the one resolved after the snapshot");
        assert_eq!(
            tp.open(TxnId(9), TxnId(1), Timestamp(1)).err(),
            Some(Reject::PendingNotFound)
        );
        let mut restored = TwoPhase::default();
        restored.restore(open);
        assert_eq!(restored.open_count(), 1);
        assert!(restored.open(TxnId(9), TxnId(3), Timestamp(1)).is_ok());
    }

    #[test]
    fn a_capture_restates_every_leg_and_never_more_than_reserved() {
        let mut tp = TwoPhase::default();
        tp.settle(&txn(
            1,
            SeqKind::Pending {
                deadline: Timestamp(100),
            },
        ));
        let p = tp.get(&TxnId(1)).unwrap();
        let full = capture_legs(p, &[], |_| 2).unwrap();
        assert_eq!(full.len(), 2);
        assert!(full.iter().all(|l| l.amount == 500));
        let less = [leg(1, Side::Debit, 300), leg(2, Side::Credit, 300)];
        assert_eq!(capture_legs(p, &less, |_| 2).unwrap()[0].amount, 300);
        let more = [leg(1, Side::Debit, 501), leg(2, Side::Credit, 501)];
        assert!(matches!(
            capture_legs(p, &more, |_| 2),
            Err(Reject::PostExceedsPending { leg: 0, .. })
        ));
        let other = [leg(3, Side::Debit, 300), leg(2, Side::Credit, 300)];
        assert_eq!(
            capture_legs(p, &other, |_| 2).err(),
            Some(Reject::PostLegMismatch { leg: 0 })
        );
        assert_eq!(
            capture_legs(p, &less[..1], |_| 2).err(),
            Some(Reject::PostLegCount {
                expected: 2,
                got: 1
            })
        );
    }
}
