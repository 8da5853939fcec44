//! Opening and shutting down an engine, the feed subscription, and what it measures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration as StdDuration;

use tokio::sync::watch;

use super::{Active, Engine, EngineConfig, Inner, StoreCall, StoreConfig, INSTANCE_LOCK_STRIPES};
use crate::committer;
use crate::decider::DeciderRegistry;
use crate::definition::DefinitionSet;
use crate::error::{CommandError, OpenError};
use crate::feed::Subscription;
use crate::metrics::{EngineMetrics, MetricsSnapshot, JOB_BACKLOG_COUNT_MAX};
use crate::store::{MemoryStore, SledStore, Store, StoreHealth, StoreStats};

impl Engine {
    /// Opens the store named by `config` and starts the engine. Must be called inside a
    /// tokio runtime (it spawns the engine's periodic tasks on it).
    pub async fn open(
        config: EngineConfig,
        definitions: DefinitionSet,
        deciders: DeciderRegistry,
    ) -> Result<Engine, OpenError> {
        config.check()?;
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Sled(sled) => {
                let sled = sled.clone();
                Arc::new(
                    tokio::task::spawn_blocking(move || SledStore::open(&sled))
                        .await
                        .expect("store open task panicked")?,
                )
            }
            StoreConfig::Memory => Arc::new(MemoryStore::new()),
        };
        Self::with_store(store, config, definitions, deciders)
    }

    /// Starts the engine on a store the caller opened. Must be called inside a tokio runtime.
    pub fn with_store(
        store: Arc<dyn Store>,
        config: EngineConfig,
        definitions: DefinitionSet,
        deciders: DeciderRegistry,
    ) -> Result<Engine, OpenError> {
        config.check()?;
        let (_, head) = store.feed_bounds()?;
        let (durable_tx, durable_offset) = watch::channel(head);
        let metrics = Arc::new(EngineMetrics::default());
        let shared = committer::Shared {
            health: Arc::new(watch::channel(StoreHealth::Writable).0),
            stalled: Arc::new(AtomicBool::new(false)),
            durable_offset: Arc::new(durable_tx),
            metrics: metrics.clone(),
        };
        let (tx, handle) = committer::start(
            store.clone(),
            config.queue_max,
            config.batch_max,
            config.flush_timeout,
            shared.clone(),
        )
        .map_err(OpenError::Thread)?;
        let rule_pool = super::pool::RulePool::start(config.rule_threads, config.rule_queue_max)
            .map_err(OpenError::Thread)?;
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                rules: RwLock::new(Arc::new(Active::fixed(definitions, deciders))),
                rule_inputs: std::sync::OnceLock::new(),
                rule_set_cache: Mutex::new(BTreeMap::new()),
                rule_set_ticks: AtomicU64::new(0),
                rule_pool,
                rules_admin: tokio::sync::Mutex::new(()),
                tasks: Mutex::new(Vec::new()),
                store_calls: Arc::new(AtomicUsize::new(0)),
                background: Arc::new(AtomicUsize::new(0)),
                store,
                queue: RwLock::new(Some(tx)),
                committer: Mutex::new(Some(handle)),
                durable_offset,
                jobs_available: Arc::new(tokio::sync::Notify::new()),
                instance_locks: (0..INSTANCE_LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                metrics,
                subscribers: Mutex::new(Vec::new()),
                health: shared.health,
                stalled: shared.stalled,
            }),
        };
        if engine.inner.config.background_tasks {
            engine.spawn_purge_task();
            engine.spawn_timer_task();
            engine.spawn_health_task();
        }
        Ok(engine)
    }

    /// The definitions in force (every version instances may be pinned to).
    pub fn definitions(&self) -> DefinitionSet {
        self.rules().definitions.clone()
    }

    /// The definitions and deciders in force right now.
    pub(crate) fn rules(&self) -> Arc<Active> {
        self.inner
            .rules
            .read()
            .expect("rules lock poisoned")
            .clone()
    }

    /// The store, for tests and benchmarks that look beneath the engine (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Whether the store takes writes now, and why not; changes are announced to the receiver
    /// (the gRPC server turns health NOT_SERVING while writes are refused).
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.inner.health.subscribe()
    }

    /// Writes a backup of the whole store to `out` (`docs/backup.md`): the store exactly as it
    /// was at one feed offset, while commits go on (they never wait for it). Blocks; one export
    /// at a time. Restore it with [`crate::import_into`].
    pub fn export(
        &self,
        out: &mut dyn std::io::Write,
    ) -> Result<crate::BackupSummary, crate::StoreError> {
        self.inner.store.export(out, self.now())
    }

    /// What the store has done so far (batches, commits, flushes, fsyncs, time spent).
    pub fn store_stats(&self) -> StoreStats {
        self.inner.store.stats()
    }

    /// Subscribes to the feed: the returned subscription yields every event with an offset
    /// greater than `after_offset` (0 for the whole retained feed), replayed from the store and
    /// then followed live; only events of flushed commits are delivered.
    pub fn subscribe(&self, after_offset: u64) -> Result<Subscription, CommandError> {
        let (earliest, head) = self.inner.store.feed_bounds()?;
        if after_offset.saturating_add(1) < earliest {
            return Err(CommandError::FeedHorizon {
                after: after_offset,
                earliest,
            });
        }
        if after_offset > head {
            return Err(CommandError::FeedBeyondHead {
                after: after_offset,
                head,
            });
        }
        let position = Arc::new(AtomicU64::new(after_offset));
        {
            let mut subscribers = self.inner.subscribers.lock().expect("lock poisoned");
            subscribers.retain(|s| s.strong_count() > 0);
            subscribers.push(Arc::downgrade(&position));
        }
        Ok(Subscription::new(
            self.inner.store.clone(),
            self.inner.durable_offset.clone(),
            after_offset,
            position,
        ))
    }

    /// `(earliest retained offset, last assigned offset)` of the feed; `(1, 0)` when empty.
    pub fn feed_bounds(&self) -> Result<(u64, u64), CommandError> {
        Ok(self.inner.store.feed_bounds()?)
    }

    /// What the engine has measured so far, plus the feed, job and queue gauges read now.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, CommandError> {
        let (commands, [commit_latency, batch_size, rule_evaluation]) =
            self.inner.metrics.snapshot();
        let job_backlog = self.inner.store.job_backlog(JOB_BACKLOG_COUNT_MAX)?;
        let (_, feed_head) = self.inner.store.feed_bounds()?;
        let feed_durable = *self.inner.durable_offset.borrow();
        let positions: Vec<u64> = self
            .inner
            .subscribers
            .lock()
            .expect("lock poisoned")
            .iter()
            .filter_map(|s| s.upgrade())
            .map(|p| p.load(Ordering::Relaxed))
            .collect();
        let slowest = positions.iter().min().copied().unwrap_or(feed_durable);
        let commit_queue = self
            .inner
            .queue
            .read()
            .expect("lock poisoned")
            .as_ref()
            .map_or(0, |q| q.max_capacity() - q.capacity());
        Ok(MetricsSnapshot {
            commands,
            commit_latency_micros: commit_latency,
            batch_size,
            rule_evaluation_micros: rule_evaluation,
            feed_head,
            feed_durable,
            feed_subscribers: positions.len(),
            feed_lag: feed_durable.saturating_sub(slowest),
            job_backlog: job_backlog as u64,
            commit_queue,
            rule_pool_pending: self.inner.rule_pool.pending(),
        })
    }

    /// Stops taking writes, waits for every queued commit to be applied and flushed, and
    /// stops the committer. Later writes fail with [`CommandError::ShuttingDown`].
    pub async fn shutdown(&self) {
        self.inner
            .queue
            .write()
            .expect("queue lock poisoned")
            .take();
        self.inner.rule_pool.stop();
        let handle = self
            .inner
            .committer
            .lock()
            .expect("committer lock poisoned")
            .take();
        if let Some(handle) = handle {
            let joined = tokio::task::spawn_blocking(move || {
                if handle.join().is_err() {
                    tracing::error!("committer thread panicked");
                }
            })
            .await;
            // Cancelled only when the runtime itself is shutting down: the committer still
            // drains its queue and flushes on its own thread.
            if let Err(e) = joined {
                tracing::warn!(error = %e, "stopped waiting for the committer");
            }
        }
        self.stop_tasks().await;
    }

    /// Stops the periodic tasks, then waits (up to 5 s) for any blocking store call they
    /// started to return and any background work to let go of the engine, so that a sled
    /// store can be reopened as soon as the caller drops its engine.
    async fn stop_tasks(&self) {
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .expect("tasks lock poisoned")
            .drain(..)
            .collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        for _ in 0..500 {
            if self.inner.store_calls.load(Ordering::Acquire) == 0
                && self.inner.background.load(Ordering::Acquire) == 0
            {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
    }

    /// Counts background work holding the engine until it lets go (see `BackgroundHold`).
    pub(crate) fn background_hold(&self) -> super::BackgroundHold {
        super::BackgroundHold::new(&self.inner.background)
    }

    /// Counts a store call made on a blocking thread until it returns, so `shutdown` can wait
    /// for it: an aborted task cannot stop a blocking call it started.
    pub(crate) fn store_call(&self) -> StoreCall {
        self.inner.store_calls.fetch_add(1, Ordering::AcqRel);
        StoreCall {
            store: Some(self.inner.store.clone()),
            calls: self.inner.store_calls.clone(),
        }
    }
}
