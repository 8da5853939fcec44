//! The engine's own periodic work on the host runtime: firing due timers and purging expired
//! request records and feed events. Each task holds only a weak reference to the engine
//! between runs, so dropping the engine stops it.

use std::time::Duration as StdDuration;

use super::requests::CommandRequest;
use super::{Applied, Engine, Origin};
use crate::error::CommandError;
use crate::model::{roles, Actor, DueTimer};
use crate::store::StoreHealth;

/// Most timers, request records or feed events one pass of a task handles.
const PASS_ITEMS_MAX: usize = 1000;

impl Engine {
    /// Runs `work` every `every` on the host runtime while the engine is alive and open.
    pub(super) fn spawn_periodic<F, Fut>(&self, every: StdDuration, skip_first: bool, work: F)
    where
        F: Fn(Engine) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let weak = std::sync::Arc::downgrade(&self.inner);
        let work = std::sync::Arc::new(work);
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
                // Each pass on its own task: a pass that panics is logged and the next one
                // runs on schedule.
                let work = work.clone();
                let held = super::BackgroundHold::new(&inner.background);
                let pass = tokio::spawn(async move {
                    let _held = held;
                    let engine = Engine { inner };
                    work(engine).await
                });
                // Stopping the task stops its pass too.
                let _abort = super::AbortOnDrop(pass.abort_handle());
                if let Err(e) = pass.await {
                    if e.is_panic() {
                        tracing::error!("a periodic engine task panicked; it runs again next time");
                    }
                }
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
    /// restarts. A timer whose command fails for a reason other than a passing one (see
    /// [`CommandError::is_transient`]) becomes an incident on its instance and stops firing;
    /// the other timers are not held up. Runs every `timer_poll_interval` on its own; exposed
    /// for operators and tests.
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
            if self.fire(due).await {
                fired += 1;
            }
        }
        Ok(fired)
    }

    /// Fires one due timer; `true` if its command was applied now. Its command runs on a
    /// task of its own, so even a panic on its path only fails this timer.
    async fn fire(&self, due: DueTimer) -> bool {
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
        let held = self.background_hold();
        let engine = self.clone();
        let timer = due.timer.clone();
        let sent = tokio::spawn(async move {
            let _held = held;
            let engine = engine;
            engine.send_inner(request, Origin::Timer(&timer)).await
        });
        let _abort = super::AbortOnDrop(sent.abort_handle());
        let sent = sent.await;
        let failure = match sent {
            Ok(Ok(Applied::Now(_))) => return true,
            Ok(Ok(Applied::Replayed(_))) | Ok(Err(CommandError::TimerNotOpen { .. })) => {
                return false
            }
            Ok(Err(e)) if e.is_transient() => {
                tracing::debug!(instance = %due.instance, timer = %due.timer.name, error = %e, "timer command failed for now; will retry");
                return false;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) if e.is_panic() => "the timer's command panicked inside the engine".to_string(),
            Err(_) => return false,
        };
        match self.raise_timer_incident(&due, &failure).await {
            Ok(true) => {
                tracing::warn!(instance = %due.instance, timer = %due.timer.name, error = %failure, "timer command failed; the timer is now an incident on its instance")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(instance = %due.instance, timer = %due.timer.name, error = %e, "raising a timer incident failed; will retry")
            }
        }
        false
    }

    /// Every second: while writes are refused for a full disk, looks for room again (so health
    /// turns back without waiting for a write); while writable, looks for the disk filling up
    /// (so health turns NOT_SERVING before writes fail).
    pub(super) fn spawn_health_task(&self) {
        self.spawn_periodic(StdDuration::from_secs(1), false, |engine| async move {
            let current = engine.inner.health.borrow().clone();
            if matches!(
                current,
                StoreHealth::Unavailable {
                    permanent: true,
                    ..
                }
            ) {
                return;
            }
            let call = engine.store_call();
            let Ok(writable) =
                tokio::task::spawn_blocking(move || call.run(|store| store.writable())).await
            else {
                return;
            };
            let next = match writable {
                Ok(()) => StoreHealth::Writable,
                Err(e) => StoreHealth::Unavailable {
                    reason: e.to_string(),
                    permanent: false,
                },
            };
            if next != current {
                match &next {
                    StoreHealth::Writable => tracing::info!("the store takes writes again"),
                    other => tracing::warn!(health = ?other, "the store cannot take writes"),
                }
                engine.inner.health.send_if_modified(|h| {
                    let keep = matches!(
                        h,
                        StoreHealth::Unavailable {
                            permanent: true,
                            ..
                        }
                    );
                    let changed = !keep && *h != next;
                    if changed {
                        *h = next;
                    }
                    changed
                });
            }
        });
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
