//! The group committer: one thread that takes commits from a bounded queue, hands every
//! commit waiting at that moment (up to `batch_max`) to the store as one batch — applied and
//! made durable with a single flush — and only then answers each submitter. Group commit is
//! why many concurrent commands cost few flushes; the bound on the queue is the engine's
//! back-pressure.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Commit, CommitApplied, CommitRefusal, Store};

/// The answer for one commit: applied, refused, or the store failed (message).
pub(crate) type Reply = Result<Result<CommitApplied, CommitRefusal>, String>;

pub(crate) struct Job {
    pub commit: Commit,
    pub reply: oneshot::Sender<Reply>,
}

/// Starts the committer thread; it ends when every sender is dropped and the queue is drained,
/// after a final flush.
pub(crate) fn start(
    store: Arc<dyn Store>,
    queue_max: usize,
    batch_max: usize,
) -> std::io::Result<(mpsc::Sender<Job>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(queue_max);
    let handle = std::thread::Builder::new()
        .name("switchyard-committer".into())
        .spawn(move || run(store, rx, batch_max))?;
    Ok((tx, handle))
}

fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>, batch_max: usize) {
    let mut commits = Vec::with_capacity(batch_max);
    let mut replies = Vec::with_capacity(batch_max);
    while let Some(job) = rx.blocking_recv() {
        commits.push(job.commit);
        replies.push(job.reply);
        while commits.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => {
                    commits.push(job.commit);
                    replies.push(job.reply);
                }
                Err(_) => break,
            }
        }
        match store.commit(&commits) {
            Ok(results) => {
                for (reply, result) in replies.drain(..).zip(results) {
                    // A submitter that stopped waiting still had its commit applied; the
                    // request id lets it find the outcome on retry.
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = commits.len(), "store commit failed");
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        commits.clear();
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
    tracing::debug!("committer stopped");
}
