//! The log's syncer: a thread that runs the `fdatasync` of the batch just
//! logged while the sequencer settles and answers the batch before it, so
//! an answer waits for its own batch's sync, not for the next one's too
//! (see ARCHITECTURE.md, "Pipelining"). At most one sync is outstanding: the
//! sequencer waits for it before it launches the batch on the shards or
//! appends another.

use crossbeam_channel::{bounded, Receiver, Sender};
use std::thread::JoinHandle;
use tally_storage::{StorageError, SyncJob};

type Done = Result<(), StorageError>;

/// The thread and the one sync it may be running.
#[derive(Default)]
pub(super) struct Syncer {
    thread: Option<(Sender<SyncJob>, Receiver<Done>, JoinHandle<()>)>,
    /// A sync begun and not yet waited for.
    outstanding: bool,
    /// The result of a sync run on the caller's thread (no syncer thread).
    inline: Option<Done>,
}

impl Syncer {
    /// Starts `job`. Without a thread (it could not be spawned, or died) it
    /// runs here and now; its result waits for [`Syncer::wait`].
    pub(super) fn begin(&mut self, job: SyncJob) {
        debug_assert!(!self.outstanding, "one sync at a time");
        if self.thread.is_none() {
            self.thread = spawn();
        }
        self.outstanding = true;
        let job = match &self.thread {
            Some((jobs, _, _)) => match jobs.send(job) {
                Ok(()) => return,
                Err(e) => e.into_inner(),
            },
            None => job,
        };
        self.thread = None;
        self.inline = Some(job.run());
    }

    /// The result of the sync begun, if one was.
    pub(super) fn wait(&mut self) -> Option<Done> {
        if !std::mem::take(&mut self.outstanding) {
            return None;
        }
        if let Some(done) = self.inline.take() {
            return Some(done);
        }
        let done = self.thread.as_ref().map(|(_, done, _)| done.recv());
        Some(match done {
            Some(Ok(done)) => done,
            // The thread is gone with the job: its outcome is unknown.
            _ => {
                self.thread = None;
                Err(StorageError::Flush("the log's sync thread died".into()))
            }
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        if let Some((jobs, done, handle)) = self.thread.take() {
            drop((jobs, done));
            let _ = handle.join();
        }
    }
}

fn spawn() -> Option<(Sender<SyncJob>, Receiver<Done>, JoinHandle<()>)> {
    let (jobs, rx) = bounded::<SyncJob>(1);
    let (tx, done) = bounded::<Done>(1);
    let handle = std::thread::Builder::new()
        .name("tally-log-sync".into())
        .spawn(move || {
            for job in rx {
                if tx.send(job.run()).is_err() {
                    return;
                }
            }
        })
        .ok()?;
    Some((jobs, done, handle))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tally_storage::{Disk, SimDisk, Wal};

    #[test]
    fn a_sync_that_fails_on_the_thread_is_reported_and_fails_the_log() {
        let disk = SimDisk::new();
        let arc: Arc<dyn Disk> = Arc::new(disk.clone());
        let mut wal = Wal::create(arc, [1; 16]).unwrap();
        let mut syncer = Syncer::default();
        assert!(
            syncer.wait().is_none(),
            "nothing begun, nothing to wait for"
        );
        let (_, job) = wal.append_deferred(b"first").unwrap();
        syncer.begin(job.unwrap());
        wal.synced(syncer.wait().unwrap()).unwrap();
        disk.fail_at(disk.steps() + 1); // the append's write passes, its sync fails
        let (_, job) = wal.append_deferred(b"second").unwrap();
        syncer.begin(job.unwrap());
        let done = syncer.wait().unwrap();
        assert!(done.is_err(), "the injected failure is reported");
        assert!(wal.synced(done).is_err());
        assert!(wal.failed().is_some(), "the log takes no more writes");
        assert!(wal.append_deferred(b"third").is_err());
    }
}
