//! The engine's own periodic work on the host runtime: firing due timers and purging expired
//! request records and feed events. Each task holds only a weak reference to the engine
//! between runs, so dropping the engine stops it.

use std::time::Duration as StdDuration;

use super::requests::CommandRequest;
use super::{Applied, Engine, Origin};
use crate::error::CommandError;
use crate::model::{roles, Actor};

/// Most timers, request records or feed events one pass of a task handles.
const PASS_ITEMS_MAX: usize = 1000;

impl Engine {
    /// Runs `work` every `every` on the host runtime while the engine is alive and open.
    pub(super) fn spawn_periodic<F, Fut>(&self, every: StdDuration, skip_first: bool, work: F)
    where
        F: Fn(Engine) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let weak = std::sync::Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            if skip_first {
                ticker.tick().await;
            }
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.queue.read().expect("queue lock poisoned").is_none() {
                    return;
                }
                work(Engine { inner }).await;
            }
        });
        self.inner
            .tasks
            .lock()
            .expect("tasks lock poisoned")
            .push(task);
    }

    pub(super) fn spawn_timer_task(&self) {
        self.spawn_periodic(
            self.inner.config.timer_poll_interval,
            false,
            |engine| async move {
                if let Err(e) = engine.fire_due_timers().await {
                    tracing::warn!(error = %e, "firing due timers failed");
                }
            },
        );
    }

    /// Sends the command of every timer due by the engine clock's now, as the `system` actor;
    /// returns how many fired. Each firing is idempotent (its request id names the instance,
    /// the timer and its due time), so a timer never fires twice for one due time, also across
    /// restarts. Runs every `timer_poll_interval` on its own; exposed for operators and tests.
    pub async fn fire_due_timers(&self) -> Result<usize, CommandError> {
        let now = self.inner.config.clock.now();
        let call = self.store_call();
        let due = tokio::task::spawn_blocking(move || {
            call.run(|store| store.due_timers(now, PASS_ITEMS_MAX))
        })
        .await
        .expect("timer scan task panicked")?;
        let mut fired = 0;
        for due in due {
            let request = CommandRequest::new(
                due.instance,
                due.timer.command.clone(),
                Actor::new("system:timer", &[roles::SYSTEM]),
                format!(
                    "timer:{}:{}:{}",
                    due.instance,
                    due.timer.name,
                    due.timer.due.timestamp_millis()
                ),
            );
            match self.send_inner(request, Origin::Timer(&due.timer)).await {
                Ok(Applied::Now(_)) => fired += 1,
                Ok(Applied::Replayed(_)) => {}
                Err(CommandError::TimerNotOpen { .. }) => {}
                Err(e) => {
                    tracing::warn!(instance = %due.instance, timer = %due.timer.name, error = %e, "timer command failed; will retry")
                }
            }
        }
        Ok(fired)
    }

    pub(super) fn spawn_purge_task(&self) {
        self.spawn_periodic(
            self.inner.config.purge_interval,
            true,
            |engine| async move {
                if let Err(e) = engine.purge_expired_requests().await {
                    tracing::warn!(error = %e, "purging expired request records failed");
                }
                if let Err(e) = engine.purge_feed().await {
                    tracing::warn!(error = %e, "purging feed events past retention failed");
                }
            },
        );
    }

    /// Deletes request records past their retention; returns how many. Runs periodically on
    /// its own; exposed for operators and tests.
    pub async fn purge_expired_requests(&self) -> Result<usize, CommandError> {
        let now = self.inner.config.clock.now();
        let mut total = 0;
        loop {
            let call = self.store_call();
            let n = tokio::task::spawn_blocking(move || {
                call.run(|store| store.purge_requests(now, PASS_ITEMS_MAX))
            })
            .await
            .expect("purge task panicked")?;
            total += n;
            if n < PASS_ITEMS_MAX {
                return Ok(total);
            }
        }
    }

    /// Deletes feed events older than the feed retention; returns how many. Runs periodically
    /// on its own; exposed for operators and tests.
    pub async fn purge_feed(&self) -> Result<usize, CommandError> {
        let before = self.inner.config.clock.now() - self.inner.config.feed_retention;
        let mut total = 0;
        loop {
            let call = self.store_call();
            let n = tokio::task::spawn_blocking(move || {
                call.run(|store| store.purge_feed(before, PASS_ITEMS_MAX))
            })
            .await
            .expect("purge task panicked")?;
            total += n;
            if n < PASS_ITEMS_MAX {
                return Ok(total);
            }
        }
    }
}
