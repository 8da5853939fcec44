//! The rule pool: every rule-script decision, dry run, rule-set compilation and test runs here,
//! on a fixed number of threads fed by a bounded queue — never on the host's async workers.
//! (Compiled Rust deciders run inline: see `Decider::on_rule_pool`.) A looping or slow rule
//! (bounded itself by its limits) can then only occupy pool threads: health checks, reads and
//! other callers keep being answered, and when the queue is full new rule work is refused at
//! once (`OVERLOADED`) instead of piling up.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::CommandError;

type Job = Box<dyn FnOnce() + Send>;

/// The pool. Dropping it (with the engine) lets its threads finish the queue and end.
pub(crate) struct RulePool {
    queue: Mutex<Option<SyncSender<Job>>>,
    /// Jobs queued or running.
    pending: Arc<AtomicUsize>,
    queue_max: usize,
}

impl RulePool {
    /// Starts `threads` threads behind a queue of `queue_max` jobs.
    pub(crate) fn start(threads: usize, queue_max: usize) -> std::io::Result<RulePool> {
        let (tx, rx) = sync_channel::<Job>(queue_max);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("switchyard-rules-{n}"))
                .spawn(move || work(&rx))?;
        }
        Ok(RulePool {
            queue: Mutex::new(Some(tx)),
            pending: Arc::new(AtomicUsize::new(0)),
            queue_max,
        })
    }

    /// Runs `f` on a pool thread and waits for it. Refused with `OVERLOADED` when the queue is
    /// full, `SHUTTING_DOWN` once the pool is stopped. A panic in `f` is returned as its
    /// message.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Result<T, String>, CommandError> {
        let (reply, answer) = oneshot::channel();
        let pending = self.pending.clone();
        let job: Job = Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(f))
                .map_err(|panic| crate::error::panic_message(&*panic));
            pending.fetch_sub(1, Ordering::AcqRel);
            let _ = reply.send(result);
        });
        let sender = self
            .queue
            .lock()
            .expect("rule pool lock poisoned")
            .clone()
            .ok_or(CommandError::ShuttingDown)?;
        self.pending.fetch_add(1, Ordering::AcqRel);
        match sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                return Err(CommandError::Overloaded {
                    resource: format!("rule evaluation ({what})"),
                    limit: self.queue_max,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                return Err(CommandError::ShuttingDown);
            }
        }
        answer.await.map_err(|_| CommandError::ShuttingDown)
    }

    /// Jobs queued or running now.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes no more work; the threads finish what is queued and end.
    pub(crate) fn stop(&self) {
        self.queue.lock().expect("rule pool lock poisoned").take();
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = match queue.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_panic_is_returned() {
        let pool = RulePool::start(1, 2).unwrap();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new(hold));
        let mut waiting = Vec::new();
        let pool = Arc::new(pool);
        // One running, two queued: the pool is full.
        for _ in 0..3 {
            let hold = hold.clone();
            let pool = pool.clone();
            waiting.push(tokio::spawn(async move {
                pool.run("test", move || {
                    let _ = hold.lock().unwrap().recv_timeout(Duration::from_secs(10));
                })
                .await
            }));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let refused = pool.run("test", || ()).await.unwrap_err();
        assert_eq!(refused.code(), "OVERLOADED");
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        for w in waiting {
            w.await.unwrap().unwrap().unwrap();
        }
        assert_eq!(pool.pending(), 0);
        let panicked = pool.run("test", || panic!("boom")).await.unwrap();
        assert_eq!(panicked.unwrap_err(), "boom");
        pool.stop();
        assert_eq!(
            pool.run("test", || ()).await.unwrap_err().code(),
            "SHUTTING_DOWN"
        );
    }
}
