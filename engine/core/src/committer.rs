//! The group committer: one thread that takes every commit waiting at that moment (up to
//! `batch_max`) from a bounded queue, applies them as one batch ([`Store::apply`]), makes the
//! batch durable with one [`Store::flush`], and only then answers each submitter. Group
//! commit is why many concurrent commands cost few flushes; the bounded queue is the
//! engine's back-pressure.
//!
//! Applying the next batch while the previous one flushes (a two-thread pipeline) was
//! measured on the 2-core reference machine and lost 10–15% throughput to CPU contention, so
//! the committer applies and flushes in turn (see BENCHMARKS.md).
//!
//! If a flush fails, what was applied may not be on disk, yet later batches would be checked
//! against it: the committer then refuses every further commit until the engine is reopened.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::EngineMetrics;
use crate::store::{Commit, CommitApplied, CommitRefusal, Store, StoreError};

/// The answer for one commit: applied, refused, or the store failed. The store's error keeps
/// its kind across the thread boundary (a corrupt record stays `Corrupt`).
pub(crate) type Reply = Result<Result<CommitApplied, CommitRefusal>, StoreError>;

// Nearly all work is a commit: boxing it would add an allocation per command for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Work {
    /// Apply this commit and answer after it is durable.
    Commit {
        commit: Commit,
        reply: oneshot::Sender<Reply>,
    },
    /// Answer once everything applied before this job is durable.
    Barrier {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

const FAILED: &str =
    "an earlier flush failed, so later commits cannot be made durable; reopen the engine";

/// Starts the committer thread; it ends when every sender is dropped and the queue is
/// drained.
pub(crate) fn start(
    store: Arc<dyn Store>,
    queue_max: usize,
    batch_max: usize,
    durable_offset: watch::Sender<u64>,
    metrics: Arc<EngineMetrics>,
) -> std::io::Result<(mpsc::Sender<Work>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(queue_max);
    let handle = std::thread::Builder::new()
        .name("switchyard-committer".into())
        .spawn(move || run(&*store, rx, batch_max, &durable_offset, &metrics))?;
    Ok((tx, handle))
}

/// Publishes, after each flush, the feed offset up to which events are durable.
fn run(
    store: &dyn Store,
    mut rx: mpsc::Receiver<Work>,
    batch_max: usize,
    durable_offset: &watch::Sender<u64>,
    metrics: &EngineMetrics,
) {
    let mut jobs = Vec::with_capacity(batch_max);
    let mut failed = false;
    while let Some(job) = rx.blocking_recv() {
        jobs.push(job);
        while jobs.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut commits = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut barriers = Vec::new();
        for job in jobs.drain(..) {
            match job {
                Work::Commit { commit, reply } => {
                    commits.push(commit);
                    replies.push(reply);
                }
                Work::Barrier { reply } => barriers.push(reply),
            }
        }
        let results = if failed {
            Err(StoreError::Io(FAILED.to_string()))
        } else if commits.is_empty() {
            Ok(Vec::new())
        } else {
            metrics.batch_size.observe(commits.len() as u64);
            store.apply(&commits).inspect_err(|e| {
                tracing::error!(error = %e, batch = commits.len(), "store apply failed");
            })
        };
        let flushed = if failed {
            Err(StoreError::Io(FAILED.to_string()))
        } else {
            store.flush().inspect_err(|e| {
                tracing::error!(error = %e, "store flush failed; refusing further commits");
                failed = true;
            })
        };
        // A submitter that stopped waiting still had its commit applied; its request id lets
        // it find the outcome on retry.
        match results.and_then(|r| flushed.clone().map(|()| r)) {
            Ok(results) => {
                let last = results
                    .iter()
                    .flatten()
                    .map(|a| a.last_offset)
                    .max()
                    .unwrap_or(0);
                if last > 0 {
                    durable_offset.send_if_modified(|d| {
                        let advanced = last > *d;
                        *d = (*d).max(last);
                        advanced
                    });
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        for reply in barriers {
            let _ = reply.send(flushed.clone());
        }
    }
    if !failed {
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }
    tracing::debug!("committer stopped");
}
