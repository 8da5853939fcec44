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
//! It also keeps the store's health ([`StoreHealth`]): a refused batch (a full disk) makes the
//! store unavailable until a later batch or the engine's probe finds room again; a failed
//! flush — after which what was applied may not be on disk, yet later batches would be checked
//! against it — makes it unavailable for good, and every further commit is refused until the
//! engine is reopened. A watchdog thread does the same when a flush hangs (sled waits forever
//! on an I/O that failed underneath it), so callers are refused instead of queueing behind it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::EngineMetrics;
use crate::store::{Commit, CommitApplied, CommitRefusal, Store, StoreError, StoreHealth};

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
    "an earlier flush failed, so later commits cannot be made durable; restart the engine";
const STALLED: &str = "a flush of the store has not returned for too long; restart the engine";

/// What the committer shares with the engine: the store's health, and whether it stalled.
#[derive(Clone)]
pub(crate) struct Shared {
    pub health: Arc<watch::Sender<StoreHealth>>,
    /// Set by the watchdog when a flush hangs; submitters are refused at once.
    pub stalled: Arc<AtomicBool>,
    pub durable_offset: Arc<watch::Sender<u64>>,
    pub metrics: Arc<EngineMetrics>,
}

impl Shared {
    fn set_health(&self, health: StoreHealth) {
        self.health.send_if_modified(|h| {
            // A permanent failure stays.
            let keep = matches!(
                h,
                StoreHealth::Unavailable {
                    permanent: true,
                    ..
                }
            );
            let changed = !keep && *h != health;
            if changed {
                *h = health;
            }
            changed
        });
    }
}

/// Starts the committer thread (and its flush watchdog); it ends when every sender is
/// dropped and the queue is drained.
pub(crate) fn start(
    store: Arc<dyn Store>,
    queue_max: usize,
    batch_max: usize,
    flush_timeout: Duration,
    shared: Shared,
) -> std::io::Result<(mpsc::Sender<Work>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(queue_max);
    // When the current flush began (ms since `epoch`), 0 while none runs.
    let flushing_since = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    {
        let (shared, flushing_since, done) = (shared.clone(), flushing_since.clone(), done.clone());
        std::thread::Builder::new()
            .name("switchyard-watchdog".into())
            .spawn(move || watch_flushes(&shared, &flushing_since, &done, epoch, flush_timeout))?;
    }
    let handle = std::thread::Builder::new()
        .name("switchyard-committer".into())
        .spawn(move || {
            let mut committer = Committer {
                store: &*store,
                shared,
                failed: false,
                flushing_since,
                epoch,
            };
            committer.run(rx, batch_max);
            done.store(true, Ordering::Release);
        })?;
    Ok((tx, handle))
}

/// Marks the store stalled when a flush runs longer than `timeout`.
fn watch_flushes(
    shared: &Shared,
    flushing_since: &AtomicU64,
    done: &AtomicBool,
    epoch: Instant,
    timeout: Duration,
) {
    while !done.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(200));
        let since = flushing_since.load(Ordering::Acquire);
        if since == 0 || shared.stalled.load(Ordering::Acquire) {
            continue;
        }
        let running = epoch.elapsed().saturating_sub(Duration::from_millis(since));
        if running > timeout {
            shared.stalled.store(true, Ordering::Release);
            shared.set_health(StoreHealth::Unavailable {
                reason: STALLED.into(),
                permanent: true,
            });
            tracing::error!(
                seconds = running.as_secs(),
                "a store flush hangs; refusing every write until the engine is restarted"
            );
        }
    }
}

/// One batch's work, sorted.
struct Batch {
    commits: Vec<Commit>,
    replies: Vec<oneshot::Sender<Reply>>,
    barriers: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

struct Committer<'a> {
    store: &'a dyn Store,
    shared: Shared,
    failed: bool,
    flushing_since: Arc<AtomicU64>,
    epoch: Instant,
}

impl Committer<'_> {
    fn run(&mut self, mut rx: mpsc::Receiver<Work>, batch_max: usize) {
        let mut jobs = Vec::with_capacity(batch_max);
        while let Some(job) = rx.blocking_recv() {
            jobs.push(job);
            while jobs.len() < batch_max {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let batch = sort(jobs.drain(..));
            self.commit(batch);
        }
        if !self.failed {
            if let Err(e) = self.store.flush() {
                tracing::error!(error = %e, "final flush failed");
            }
        }
        tracing::debug!("committer stopped");
    }

    /// Applies, flushes and answers one batch.
    fn commit(&mut self, batch: Batch) {
        let results = if self.failed {
            Err(StoreError::Io(FAILED.to_string()))
        } else if batch.commits.is_empty() {
            Ok(Vec::new())
        } else {
            self.shared
                .metrics
                .batch_size
                .observe(batch.commits.len() as u64);
            self.store.apply(&batch.commits).inspect_err(|e| {
                tracing::warn!(error = %e, batch = batch.commits.len(), "store apply refused the batch");
                self.shared.set_health(StoreHealth::Unavailable {
                    reason: e.to_string(),
                    permanent: false,
                });
            })
        };
        let flushed = self.flush();
        // A submitter that stopped waiting still had its commit applied; its request id lets
        // it find the outcome on retry.
        match results.and_then(|r| flushed.clone().map(|()| r)) {
            Ok(results) => {
                if !results.is_empty() {
                    self.shared.set_health(StoreHealth::Writable);
                }
                self.publish_durable(&results);
                for (reply, result) in batch.replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                for reply in batch.replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        for reply in batch.barriers {
            let _ = reply.send(flushed.clone());
        }
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Io(FAILED.to_string()));
        }
        let since = self.epoch.elapsed().as_millis().max(1) as u64;
        self.flushing_since.store(since, Ordering::Release);
        let flushed = self.store.flush();
        self.flushing_since.store(0, Ordering::Release);
        flushed.inspect_err(|e| {
            tracing::error!(error = %e, "store flush failed; refusing further commits");
            self.failed = true;
            self.shared.set_health(StoreHealth::Unavailable {
                reason: format!("{FAILED} ({e})"),
                permanent: true,
            });
        })
    }

    /// Publishes, after a flush, the feed offset up to which events are durable.
    fn publish_durable(&self, results: &[Result<CommitApplied, CommitRefusal>]) {
        let last = results
            .iter()
            .flatten()
            .map(|a| a.last_offset)
            .max()
            .unwrap_or(0);
        if last > 0 {
            self.shared.durable_offset.send_if_modified(|d| {
                let advanced = last > *d;
                *d = (*d).max(last);
                advanced
            });
        }
    }
}

fn sort(jobs: impl Iterator<Item = Work>) -> Batch {
    let mut batch = Batch {
        commits: Vec::new(),
        replies: Vec::new(),
        barriers: Vec::new(),
    };
    for job in jobs {
        match job {
            Work::Commit { commit, reply } => {
                batch.commits.push(commit);
                batch.replies.push(reply);
            }
            Work::Barrier { reply } => batch.barriers.push(reply),
        }
    }
    batch
}
