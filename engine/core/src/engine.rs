//! The engine: validates requests against definitions, asks deciders, builds commits and
//! hands them to the group committer.
//!
//! Order of work for a command: idempotency replay → load instance → definition, command,
//! status, role, state, payload and expected-version checks → decider (outside any storage
//! transaction) → decision checks → commit (version-checked in the store's atomic write) →
//! acknowledgement after the flush. A version conflict without `expected_version` re-runs
//! the whole evaluation, at most `conflict_retries_max` times.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration as StdDuration;

use chrono::Duration;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::{Clock, SystemClock};
use crate::committer::{self, Work};
use crate::decider::{DecideError, DeciderRegistry, Decision, DecisionContext, Effect};
use crate::definition::schema::is_identifier;
use crate::definition::{CommandDef, Definition, DefinitionSet, TimerDue};
use crate::error::{CommandError, OpenError};
use crate::feed::{self, Subscription};
use crate::job::{Job, JobId, JobStatus};
use crate::metrics::{EngineMetrics, MetricsSnapshot, JOB_BACKLOG_COUNT_MAX};
use crate::model::{
    Actor, ChangeKind, CommandOutcome, DefinitionRef, HistoryEntry, Instance, InstanceId,
    InstanceStatus, OpenTimer,
};
use crate::patch::apply_merge_patch;

mod jobs;
mod rulesets;

use crate::store::{
    Commit, CommitApplied, CommitRefusal, CounterDraw, InstanceWrite, JobWrite, ListQuery,
    MemoryStore, Page, RequestRecord, SledConfig, SledStore, Store,
};
pub use jobs::{ActivateJobs, FailJob};

/// Which store the engine opens.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// The embedded sled store.
    Sled(SledConfig),
    /// An in-memory store; nothing survives the process.
    Memory,
}

/// Engine settings. Every limit has a default; see the field docs.
#[derive(Clone)]
pub struct EngineConfig {
    /// The store to open (ignored by [`Engine::with_store`]).
    pub store: StoreConfig,
    /// Most commits in one group commit (default 512).
    pub batch_max: usize,
    /// Most commits waiting for the committer; submitters wait beyond it (default 8192).
    pub queue_max: usize,
    /// Largest accepted payload, as JSON bytes (default 64 KiB).
    pub payload_bytes_max: usize,
    /// Largest accepted page size for lists and history (default 1000).
    pub page_size_max: usize,
    /// Re-evaluations of a command after a version conflict, when the caller gave no
    /// `expected_version` (default 8).
    pub conflict_retries_max: u32,
    /// How long a request id is remembered (default 7 days).
    pub request_retention: Duration,
    /// How often expired request records and feed events are purged (default 60 s).
    pub purge_interval: StdDuration,
    /// How often in-process job handlers look for jobs when not woken (default 500 ms).
    pub job_poll_interval: StdDuration,
    /// The lease in-process job handlers take (default 60 s).
    pub job_handler_lease: StdDuration,
    /// How often due timers are looked for (default 1 s).
    pub timer_poll_interval: StdDuration,
    /// The `source` of feed events (default `switchyard`).
    pub feed_source: String,
    /// How long feed events are kept (default 30 days).
    pub feed_retention: Duration,
    /// The clock (default: the system clock).
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("store", &self.store)
            .field("batch_max", &self.batch_max)
            .field("queue_max", &self.queue_max)
            .field("payload_bytes_max", &self.payload_bytes_max)
            .field("page_size_max", &self.page_size_max)
            .field("conflict_retries_max", &self.conflict_retries_max)
            .field("request_retention", &self.request_retention)
            .field("purge_interval", &self.purge_interval)
            .field("timer_poll_interval", &self.timer_poll_interval)
            .field("job_poll_interval", &self.job_poll_interval)
            .field("job_handler_lease", &self.job_handler_lease)
            .field("feed_source", &self.feed_source)
            .field("feed_retention", &self.feed_retention)
            .finish_non_exhaustive()
    }
}

impl EngineConfig {
    /// Defaults with the given store.
    pub fn new(store: StoreConfig) -> Self {
        EngineConfig {
            store,
            batch_max: 512,
            queue_max: 8192,
            payload_bytes_max: 64 * 1024,
            page_size_max: 1000,
            conflict_retries_max: 8,
            request_retention: Duration::days(7),
            purge_interval: StdDuration::from_secs(60),
            timer_poll_interval: StdDuration::from_secs(1),
            job_poll_interval: StdDuration::from_millis(500),
            job_handler_lease: StdDuration::from_secs(60),
            feed_source: "switchyard".into(),
            feed_retention: Duration::days(30),
            clock: Arc::new(SystemClock),
        }
    }

    /// Defaults with an in-memory store.
    pub fn in_memory() -> Self {
        Self::new(StoreConfig::Memory)
    }

    fn check(&self) -> Result<(), OpenError> {
        let bad = |field: &str, message: &str| {
            Err(OpenError::Config {
                field: field.into(),
                message: message.into(),
            })
        };
        if self.batch_max == 0 {
            return bad("batch_max", "must be at least 1");
        }
        if self.queue_max == 0 {
            return bad("queue_max", "must be at least 1");
        }
        if self.page_size_max == 0 {
            return bad("page_size_max", "must be at least 1");
        }
        if self.request_retention <= Duration::zero() {
            return bad("request_retention", "must be positive");
        }
        if self.feed_retention <= Duration::zero() {
            return bad("feed_retention", "must be positive");
        }
        if self.feed_source.is_empty() {
            return bad("feed_source", "must not be empty");
        }
        Ok(())
    }
}

/// Start a new instance.
#[derive(Clone, Debug)]
pub struct StartRequest {
    /// Definition name; the latest loaded version is used and pinned.
    pub definition: String,
    /// The host's key for the instance.
    pub business_key: String,
    /// Initial data, checked against the definition's `[start.payload]`.
    pub data: Value,
    /// Who starts it.
    pub actor: Actor,
    /// Idempotency key (global).
    pub request_id: String,
}

/// Send a command to an instance.
#[derive(Clone, Debug)]
pub struct CommandRequest {
    /// The instance.
    pub instance: InstanceId,
    /// Command name.
    pub command: String,
    /// Payload, checked against the command's schema.
    pub payload: Value,
    /// Who sends it.
    pub actor: Actor,
    /// Idempotency key (global).
    pub request_id: String,
    /// Refuse unless the instance is at exactly this version.
    pub expected_version: Option<u64>,
}

/// Cancel an instance.
#[derive(Clone, Debug)]
pub struct CancelRequest {
    /// The instance.
    pub instance: InstanceId,
    /// Why; recorded in history.
    pub reason: String,
    /// Who cancels it; needs one of the definition's cancel roles.
    pub actor: Actor,
    /// Idempotency key (global).
    pub request_id: String,
    /// Refuse unless the instance is at exactly this version.
    pub expected_version: Option<u64>,
}

/// List instances.
#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    /// Only this definition.
    pub definition: Option<String>,
    /// Only this state (needs `definition`).
    pub state: Option<String>,
    /// Only this business key (needs `definition`).
    pub business_key: Option<String>,
    /// Page size; 0 means 100. At most the configured `page_size_max`.
    pub page_size: usize,
    /// A previous page's `next_page_token`.
    pub page_token: Option<String>,
}

const PAGE_SIZE_DEFAULT: usize = 100;
const REQUEST_ID_BYTES_MAX: usize = 256;
const BUSINESS_KEY_CHARS_MAX: usize = 256;
const REASON_CHARS_MAX: usize = 4096;

/// The workflow engine. Cheap to clone; all clones share one store and committer.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    /// The definitions and deciders in force; a rule-set activation swaps the whole value, so
    /// every decision uses exactly one version.
    rules: RwLock<Arc<Active>>,
    /// What rule sets are built with (`None`: opened with fixed definitions).
    rule_inputs: std::sync::OnceLock<(DeciderRegistry, crate::rules::RuleLimits)>,
    /// Serializes deployments and activations.
    rules_admin: tokio::sync::Mutex<()>,
    /// The periodic background tasks, stopped by `shutdown`.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Store calls running on blocking threads (see `Engine::store_call`).
    store_calls: Arc<std::sync::atomic::AtomicUsize>,
    store: Arc<dyn Store>,
    queue: RwLock<Option<mpsc::Sender<Work>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    /// The feed offset up to which events are durable (published by the committer).
    durable_offset: watch::Receiver<u64>,
    /// Woken when a commit makes jobs available, so in-process handlers need not poll.
    jobs_available: Arc<tokio::sync::Notify>,
    /// Striped per-instance locks: commands on one instance in this process take turns
    /// instead of failing each other's version checks (one winner per group commit would
    /// otherwise exhaust the retries on a hot instance). Version checks in the store still
    /// guard against every other writer.
    instance_locks: Box<[tokio::sync::Mutex<()>]>,
    /// What the engine measures about itself (shared with the committer thread).
    metrics: Arc<EngineMetrics>,
    /// Positions of the open subscriptions, for the feed-lag metric.
    subscribers: Mutex<Vec<std::sync::Weak<std::sync::atomic::AtomicU64>>>,
}

const INSTANCE_LOCK_STRIPES: usize = 4096;

/// What a command comes from; timers and jobs add their own bookkeeping to its commit.
#[derive(Clone, Copy)]
enum Origin<'a> {
    /// A caller's request.
    Caller,
    /// A timer that fell due.
    Timer(&'a OpenTimer),
    /// A job completed under this lease.
    Job { job: JobId, lease: uuid::Uuid },
}

/// How a request was answered: committed now, or replayed from its request record.
enum Applied {
    Now(CommandOutcome),
    Replayed(CommandOutcome),
}

impl Applied {
    fn into_outcome(self) -> CommandOutcome {
        match self {
            Applied::Now(o) | Applied::Replayed(o) => o,
        }
    }
}

/// The definitions and deciders in force, with the rule-set version they came from.
pub(crate) struct Active {
    pub(crate) definitions: DefinitionSet,
    pub(crate) deciders: DeciderRegistry,
    pub(crate) rule_set: Option<RuleSetInfo>,
    /// Every deployed version's deciders, for definitions whose decisions stay pinned.
    pub(crate) deciders_by_version: BTreeMap<u32, DeciderRegistry>,
    /// Every deployed version, for dry runs.
    pub(crate) rule_sets: BTreeMap<u32, Arc<crate::rules::RuleSet>>,
}

/// A deployed rule-set version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSetInfo {
    /// Deployment number (1, 2, 3…).
    pub number: u32,
    /// Content version: the digest of its files.
    pub version: String,
    /// When it was deployed.
    pub deployed_at: chrono::DateTime<chrono::Utc>,
    /// Who deployed it.
    pub deployed_by: String,
    /// Whether it is the active version.
    pub active: bool,
    /// When it was last made active (deployed or activated), if ever.
    pub activated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who last made it active.
    pub activated_by: Option<String>,
}

/// A store call in progress on a blocking thread; see `Engine::store_call`. It owns the only
/// store handle the call uses and releases it before the call counts as finished, so once the
/// count is zero no blocking call holds the store.
pub(crate) struct StoreCall {
    store: Option<Arc<dyn Store>>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl StoreCall {
    /// Runs `f` on the store, then marks the call finished.
    pub(crate) fn run<T>(mut self, f: impl FnOnce(&dyn Store) -> T) -> T {
        let store = self.store.take().expect("a store call runs once");
        f(&*store)
    }
}

impl Drop for StoreCall {
    fn drop(&mut self) {
        self.store = None;
        self.calls.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A commit ready to submit, with the outcome it will acknowledge.
struct Prepared {
    commit: Commit,
    outcome: CommandOutcome,
}

impl Engine {
    /// Opens the store named by `config` and starts the engine. Must be called inside a
    /// tokio runtime (it spawns the request-purge task on it).
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
        let (tx, handle) = committer::start(
            store.clone(),
            config.queue_max,
            config.batch_max,
            durable_tx,
            metrics.clone(),
        )
        .map_err(OpenError::Thread)?;
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                rules: RwLock::new(Arc::new(Active {
                    definitions,
                    deciders,
                    rule_set: None,
                    deciders_by_version: BTreeMap::new(),
                    rule_sets: BTreeMap::new(),
                })),
                rule_inputs: std::sync::OnceLock::new(),
                rules_admin: tokio::sync::Mutex::new(()),
                tasks: Mutex::new(Vec::new()),
                store_calls: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
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
            }),
        };
        engine.spawn_purge_task();
        engine.spawn_timer_task();
        Ok(engine)
    }

    /// Runs `work` every `every` on the host runtime while the engine is alive and open. The
    /// task holds only a weak reference between runs, so dropping the engine stops it.
    fn spawn_periodic<F, Fut>(&self, every: StdDuration, skip_first: bool, work: F)
    where
        F: Fn(Engine) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let weak = Arc::downgrade(&self.inner);
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

    fn spawn_timer_task(&self) {
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
        let due =
            tokio::task::spawn_blocking(move || call.run(|store| store.due_timers(now, 1000)))
                .await
                .expect("timer scan task panicked")?;
        let mut fired = 0;
        for due in due {
            let request = CommandRequest {
                instance: due.instance,
                command: due.timer.command.clone(),
                payload: json!({}),
                actor: Actor::new("system:timer", &["system"]),
                request_id: format!(
                    "timer:{}:{}:{}",
                    due.instance,
                    due.timer.name,
                    due.timer.due.timestamp_millis()
                ),
                expected_version: None,
            };
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

    fn spawn_purge_task(&self) {
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

    /// The store (for statistics and read access).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Deletes request records past their retention; returns how many. Runs periodically on
    /// its own; exposed for operators and tests.
    pub async fn purge_expired_requests(&self) -> Result<usize, CommandError> {
        let now = self.inner.config.clock.now();
        let mut total = 0;
        loop {
            let call = self.store_call();
            let n = tokio::task::spawn_blocking(move || {
                call.run(|store| store.purge_requests(now, 1000))
            })
            .await
            .expect("purge task panicked")?;
            total += n;
            if n < 1000 {
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
                call.run(|store| store.purge_feed(before, 1000))
            })
            .await
            .expect("purge task panicked")?;
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
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
        let position = Arc::new(std::sync::atomic::AtomicU64::new(after_offset));
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
            .map(|p| p.load(std::sync::atomic::Ordering::Relaxed))
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
        // Stop the periodic tasks, then wait for any blocking store call they started to
        // return, so that a sled store can be reopened as soon as the engine is dropped.
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
            if self
                .inner
                .store_calls
                .load(std::sync::atomic::Ordering::Acquire)
                == 0
            {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
    }

    /// Counts a store call made on a blocking thread until it returns, so `shutdown` can wait
    /// for it: an aborted task cannot stop a blocking call it started.
    pub(crate) fn store_call(&self) -> StoreCall {
        self.inner
            .store_calls
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        StoreCall {
            store: Some(self.inner.store.clone()),
            calls: self.inner.store_calls.clone(),
        }
    }

    /// The instance `id`.
    pub async fn get(&self, id: InstanceId) -> Result<Instance, CommandError> {
        self.inner
            .store
            .instance(id)?
            .ok_or(CommandError::UnknownInstance(id))
    }

    /// A page of instances, ordered by start time.
    pub async fn list(&self, request: ListRequest) -> Result<Page<Instance>, CommandError> {
        let page_size = self.page_size(request.page_size)?;
        if request.definition.is_none()
            && (request.state.is_some() || request.business_key.is_some())
        {
            return Err(CommandError::InvalidInput {
                field: if request.state.is_some() {
                    "state"
                } else {
                    "business_key"
                }
                .into(),
                message: "filtering by state or business key needs `definition` too".into(),
            });
        }
        let after = parse_page_token(request.page_token.as_deref())?;
        Ok(self.inner.store.list(&ListQuery {
            definition: request.definition,
            state: request.state,
            business_key: request.business_key,
            page_size,
            after,
        })?)
    }

    /// History of `id` after `after_version` (0 for all), at most `page_size` entries
    /// (0 means 100).
    pub async fn history(
        &self,
        id: InstanceId,
        after_version: u64,
        page_size: usize,
    ) -> Result<Vec<HistoryEntry>, CommandError> {
        let page_size = self.page_size(page_size)?;
        self.get(id).await?;
        Ok(self.inner.store.history(id, after_version, page_size)?)
    }

    /// A page of `id`'s history, oldest first; `page_token` is a previous page's
    /// `next_page_token`.
    pub async fn history_page(
        &self,
        id: InstanceId,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page<HistoryEntry>, CommandError> {
        let page_size = self.page_size(page_size)?;
        let after = match page_token {
            None | Some("") => 0,
            Some(token) => token
                .parse::<u64>()
                .map_err(|_| CommandError::InvalidInput {
                    field: "page_token".into(),
                    message: "is not a token this list returned".into(),
                })?,
        };
        self.get(id).await?;
        let mut items = self.inner.store.history(id, after, page_size + 1)?;
        let more = items.len() > page_size;
        items.truncate(page_size);
        Ok(Page {
            next_page_token: if more {
                items.last().map(|e| e.version.to_string())
            } else {
                None
            },
            items,
        })
    }

    /// Instances started by `parent`'s transitions (the other direction is
    /// [`Instance::parent`]).
    pub async fn children(
        &self,
        parent: InstanceId,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page<InstanceId>, CommandError> {
        let page_size = self.page_size(page_size)?;
        let after = parse_page_token(page_token)?;
        let mut items = self.inner.store.children(parent, after, page_size + 1)?;
        let more = items.len() > page_size;
        items.truncate(page_size);
        Ok(Page {
            next_page_token: if more {
                items.last().map(|i| i.to_string())
            } else {
                None
            },
            items,
        })
    }

    /// The page size a list uses for `requested`: 0 means the default (100), above the
    /// configured `page_size_max` is refused. Every list of the engine (and of a server on top
    /// of it) applies this one rule.
    pub fn page_size(&self, requested: usize) -> Result<usize, CommandError> {
        let max = self.inner.config.page_size_max;
        match requested {
            0 => Ok(PAGE_SIZE_DEFAULT.min(max)),
            n if n > max => Err(CommandError::InvalidInput {
                field: "page_size".into(),
                message: format!("{n} is above the maximum page size {max}"),
            }),
            n => Ok(n),
        }
    }

    /// Starts an instance of the latest version of `request.definition`.
    pub async fn start(&self, request: StartRequest) -> Result<CommandOutcome, CommandError> {
        check_request_id(&request.request_id)?;
        check_business_key("business_key", &request.business_key)?;
        self.check_payload_size(&request.data)?;
        let digest = digest(&request.data);
        let target = format!("start:{}", request.definition);
        let prepare = || -> Result<Prepared, CommandError> {
            let rules = self.rules();
            let definition = self.latest_definition(&rules, &request.definition)?;
            let definition = &*definition;
            require_role(&request.actor, &definition.start.roles, || {
                format!("start {} v{}", definition.name, definition.version)
            })?;
            check_violations(definition.start.payload.validate(&request.data))?;
            let now = self.inner.config.clock.now();
            let timers = timers_for(definition, &definition.initial, &request.data, now)?;
            let mut instance = new_instance(
                definition,
                &request.business_key,
                request.data.clone(),
                None,
                timers,
                now,
            );
            instance.rule_set = rules.rule_set.as_ref().map(|r| r.number);
            let outcome = CommandOutcome {
                instance: instance.id,
                version: 1,
                state: instance.state.clone(),
                status: instance.status,
                reason: "started".into(),
                started: Vec::new(),
                counters: Vec::new(),
            };
            let history = started_entry(
                &instance,
                &request.actor,
                Some(&request.request_id),
                &request.data,
                "started".into(),
                None,
            );
            Ok(Prepared {
                commit: Commit {
                    at: now,
                    request: Some(self.request_record(
                        &request.request_id,
                        &target,
                        "$start",
                        &digest,
                        &outcome,
                        now,
                    )),
                    writes: vec![InstanceWrite {
                        instance,
                        expected_version: None,
                    }],
                    history: vec![history],
                    counters: Vec::new(),
                    jobs: Vec::new(),
                    events: Vec::new(),
                },
                outcome,
            })
        };
        let result = self
            .run(
                &request.request_id,
                &target,
                "$start",
                &digest,
                None,
                prepare,
            )
            .await
            .map(Applied::into_outcome);
        self.count(Some(&request.definition), "$start", &result);
        result
    }

    /// Counts a request for the metrics: `definition` is `None` when the request ended before
    /// its instance was read (or was answered from its request record).
    fn count<T>(&self, definition: Option<&str>, command: &str, result: &Result<T, CommandError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        self.inner
            .metrics
            .count_command(definition.unwrap_or("(unknown)"), command, outcome);
    }

    /// Sends a command to an instance.
    pub async fn send(&self, request: CommandRequest) -> Result<CommandOutcome, CommandError> {
        self.send_inner(request, Origin::Caller)
            .await
            .map(Applied::into_outcome)
    }

    async fn send_inner(
        &self,
        request: CommandRequest,
        origin: Origin<'_>,
    ) -> Result<Applied, CommandError> {
        check_request_id(&request.request_id)?;
        self.check_payload_size(&request.payload)?;
        let digest = digest(&request.payload);
        let target = format!("instance:{}", request.instance);
        // The parent is locked too when the command may update linked instances: deliveries
        // updating their order should queue behind the order's own commands, not race them.
        let mut lock_ids = vec![request.instance];
        // Reading the instance to find its parent costs a store read on the hot path: only
        // pay it when some definition's command of this name may update a linked instance.
        let rules = self.rules();
        let may_update_linked = rules.definitions.iter().any(|d| {
            d.command(&request.command)
                .is_some_and(|c| !c.effects.update.is_empty())
        });
        if may_update_linked {
            if let Ok((instance, definition)) = self.load(&rules, request.instance) {
                let updates_linked = definition
                    .command(&request.command)
                    .is_some_and(|c| !c.effects.update.is_empty());
                if let (true, Some(parent)) = (updates_linked, instance.parent) {
                    lock_ids.push(parent);
                }
            }
        }
        let _guards = self.lock_instances(&lock_ids).await;
        let seen = std::sync::OnceLock::new();
        let prepare = || self.prepare_command(&request, &target, &digest, origin, &seen);
        let result = self
            .run(
                &request.request_id,
                &target,
                &request.command,
                &digest,
                request.expected_version,
                prepare,
            )
            .await;
        self.count(seen.get().map(String::as_str), &request.command, &result);
        result
    }

    /// Cancels an active instance (status `cancelled`; its state is kept).
    pub async fn cancel(&self, request: CancelRequest) -> Result<CommandOutcome, CommandError> {
        check_request_id(&request.request_id)?;
        if request.reason.chars().count() > REASON_CHARS_MAX {
            return Err(CommandError::InvalidInput {
                field: "reason".into(),
                message: format!("is longer than {REASON_CHARS_MAX} characters"),
            });
        }
        let payload = json!({ "reason": request.reason });
        let digest = digest(&payload);
        let target = format!("instance:{}", request.instance);
        let _guards = self.lock_instances(&[request.instance]).await;
        let seen = std::sync::OnceLock::new();
        let prepare = || -> Result<Prepared, CommandError> {
            let rules = self.rules();
            let (instance, definition) = self.load(&rules, request.instance)?;
            let _ = seen.set(definition.name.clone());
            require_role(&request.actor, &definition.cancel_roles, || {
                format!("cancel {} v{}", definition.name, definition.version)
            })?;
            require_active(&instance)?;
            check_expected(&instance, request.expected_version)?;
            let now = self.inner.config.clock.now();
            let mut after = instance.clone();
            after.status = InstanceStatus::Cancelled;
            after.timers.clear();
            after.version += 1;
            after.updated_at = now;
            let reason = if request.reason.is_empty() {
                "cancelled".to_string()
            } else {
                request.reason.clone()
            };
            let outcome = outcome_of(&after, reason.clone());
            let history = HistoryEntry {
                instance: after.id,
                version: after.version,
                at: now,
                actor: request.actor.clone(),
                request_id: Some(request.request_id.clone()),
                kind: ChangeKind::Cancelled,
                command: None,
                payload: payload.clone(),
                from_state: Some(instance.state.clone()),
                to_state: after.state.clone(),
                decider: None,
                reason,
                changes: json!({}),
                provenance: None,
            };
            // Its open jobs and incidents go with it.
            let mut jobs = Vec::new();
            let mut events = Vec::new();
            for job in self.inner.store.jobs_of(instance.id)? {
                if matches!(
                    job.status,
                    JobStatus::Activatable | JobStatus::Leased | JobStatus::Incident
                ) {
                    let mut cancelled = job.clone();
                    cancelled.status = JobStatus::Cancelled;
                    cancelled.lease = None;
                    cancelled.version += 1;
                    cancelled.updated_at = now;
                    events.push(self.job_event("switchyard.job.cancelled", &cancelled, json!({})));
                    jobs.push(JobWrite {
                        job: cancelled,
                        expected_version: Some(job.version),
                    });
                }
            }
            Ok(Prepared {
                commit: Commit {
                    at: now,
                    request: Some(self.request_record(
                        &request.request_id,
                        &target,
                        "$cancel",
                        &digest,
                        &outcome,
                        now,
                    )),
                    writes: vec![InstanceWrite {
                        instance: after,
                        expected_version: Some(instance.version),
                    }],
                    history: vec![history],
                    counters: Vec::new(),
                    jobs,
                    events,
                },
                outcome,
            })
        };
        let result = self
            .run(
                &request.request_id,
                &target,
                "$cancel",
                &digest,
                request.expected_version,
                prepare,
            )
            .await
            .map(Applied::into_outcome);
        self.count(seen.get().map(String::as_str), "$cancel", &result);
        result
    }

    /// Takes the stripe locks of `ids` in ascending stripe order (so two commands never wait
    /// on each other crosswise).
    async fn lock_instances(&self, ids: &[InstanceId]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let stripes = self.inner.instance_locks.len();
        let mut indexes: Vec<usize> = ids
            .iter()
            .map(|id| (id.0.as_u64_pair().1 % stripes as u64) as usize)
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut guards = Vec::with_capacity(indexes.len());
        for i in indexes {
            guards.push(self.inner.instance_locks[i].lock().await);
        }
        guards
    }

    /// The common loop: replay a known request, otherwise prepare, submit, and re-prepare on
    /// a version conflict (unless the caller pinned a version).
    async fn run(
        &self,
        request_id: &str,
        target: &str,
        command: &str,
        digest: &str,
        expected_version: Option<u64>,
        mut prepare: impl FnMut() -> Result<Prepared, CommandError>,
    ) -> Result<Applied, CommandError> {
        let attempts_max = self.inner.config.conflict_retries_max + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(record) = self.inner.store.request(request_id)? {
                if record.expires_at > self.inner.config.clock.now() {
                    // The record may belong to a commit applied but not yet flushed: wait for
                    // the flush, so a retry is never acknowledged before the original is.
                    self.barrier().await?;
                    return replay(&record, target, command, digest).map(Applied::Replayed);
                }
            }
            // Request ids are global: one a rule-set deployment or activation used is taken.
            if attempt == 1 {
                if let Some(other) = self.inner.store.rule_set_request(request_id)? {
                    if other.expires_at > self.inner.config.clock.now() {
                        return Err(CommandError::RequestIdReused {
                            request_id: request_id.to_string(),
                            original: format!(
                                "`{}` of rule set #{}",
                                other.operation, other.number
                            ),
                        });
                    }
                }
            }
            let mut prepared = prepare()?;
            let makes_jobs_available = prepared.makes_jobs_available();
            let source = &self.inner.config.feed_source;
            let commit = &mut prepared.commit;
            let instance_events: Vec<_> = commit
                .writes
                .iter()
                .zip(&commit.history)
                .map(|(w, h)| feed::instance_event(source, h, &w.instance))
                .collect();
            commit.events.splice(0..0, instance_events);
            match self.submit(prepared.commit).await? {
                Ok(applied) => {
                    let mut outcome = prepared.outcome;
                    outcome.counters = applied.counters;
                    if makes_jobs_available {
                        self.inner.jobs_available.notify_waiters();
                    }
                    return Ok(Applied::Now(outcome));
                }
                Err(CommitRefusal::DuplicateRequest(record)) => {
                    return replay(&record, target, command, digest).map(Applied::Replayed);
                }
                Err(CommitRefusal::CounterLimit {
                    counter,
                    key,
                    limit,
                }) => {
                    return Err(CommandError::CounterLimit {
                        counter,
                        key,
                        limit,
                    });
                }
                Err(CommitRefusal::JobConflict { job, current, .. }) => {
                    if attempt >= attempts_max {
                        return Err(CommandError::StaleLease {
                            job,
                            reason: format!(
                                "the job kept changing (now at version {})",
                                current.unwrap_or(0)
                            ),
                        });
                    }
                }
                Err(CommitRefusal::VersionConflict {
                    instance,
                    expected,
                    current,
                }) => {
                    let current = current.unwrap_or(0);
                    if let Some(expected) = expected_version {
                        return Err(CommandError::VersionMismatch {
                            instance,
                            expected,
                            current,
                        });
                    }
                    if attempt >= attempts_max {
                        return Err(CommandError::Conflict {
                            instance,
                            current,
                            attempts: attempt,
                        });
                    }
                    tracing::debug!(%instance, ?expected, current, attempt, "version conflict; re-evaluating");
                }
            }
        }
    }

    fn queue(&self) -> Result<mpsc::Sender<Work>, CommandError> {
        self.inner
            .queue
            .read()
            .expect("queue lock poisoned")
            .clone()
            .ok_or(CommandError::ShuttingDown)
    }

    /// Waits until everything applied so far is durable.
    async fn barrier(&self) -> Result<(), CommandError> {
        let (reply, answer) = oneshot::channel();
        self.queue()?
            .send(Work::Barrier { reply })
            .await
            .map_err(|_| CommandError::ShuttingDown)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(CommandError::Store(crate::store::StoreError::Io(message))),
            Err(_) => Err(CommandError::ShuttingDown),
        }
    }

    async fn submit(
        &self,
        commit: Commit,
    ) -> Result<Result<CommitApplied, CommitRefusal>, CommandError> {
        let (reply, answer) = oneshot::channel();
        let submitted = std::time::Instant::now();
        self.queue()?
            .send(Work::Commit { commit, reply })
            .await
            .map_err(|_| CommandError::ShuttingDown)?;
        let answer = answer.await;
        self.inner
            .metrics
            .commit_latency
            .observe_duration(submitted.elapsed());
        match answer {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(message)) => Err(CommandError::Store(crate::store::StoreError::Io(message))),
            Err(_) => Err(CommandError::ShuttingDown),
        }
    }

    fn prepare_command(
        &self,
        request: &CommandRequest,
        target: &str,
        digest: &str,
        origin: Origin<'_>,
        seen_definition: &std::sync::OnceLock<String>,
    ) -> Result<Prepared, CommandError> {
        // One snapshot of the rules for the whole decision, even if a rule set is activated
        // meanwhile.
        let rules = self.rules();
        let (instance, definition) = self.load(&rules, request.instance)?;
        let definition = &*definition;
        let _ = seen_definition.set(definition.name.clone());
        let fired = match origin {
            Origin::Timer(timer) => Some(timer),
            _ => None,
        };
        let completing = match origin {
            Origin::Job { job, lease } => Some(self.current_lease(job, lease, instance.id)?),
            _ => None,
        };
        if let Some(timer) = fired {
            if !instance.timers.contains(timer) {
                return Err(CommandError::TimerNotOpen {
                    instance: instance.id,
                    timer: timer.name.clone(),
                });
            }
        }
        let command =
            definition
                .command(&request.command)
                .ok_or_else(|| CommandError::UnknownCommand {
                    definition: instance.definition.clone(),
                    command: request.command.clone(),
                    accepted: definition
                        .commands
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
        require_role(&request.actor, &command.roles, || {
            format!(
                "send `{}` to {} v{}",
                command.name, definition.name, definition.version
            )
        })?;
        require_active(&instance)?;
        if !command.from.contains(&instance.state) {
            return Err(CommandError::WrongState {
                instance: instance.id,
                command: command.name.clone(),
                state: instance.state.clone(),
                allowed: command.from.join(", "),
            });
        }
        check_violations(command.payload.validate(&request.payload))?;
        check_expected(&instance, request.expected_version)?;
        let parent = match instance.parent {
            Some(p) => self.inner.store.instance(p)?,
            None => None,
        };
        let now = self.inner.config.clock.now();
        let decision = self.decide(
            &rules,
            &DecisionContext {
                definition,
                command,
                instance: &instance,
                payload: &request.payload,
                actor: &request.actor,
                parent: parent.as_ref(),
                now,
            },
        )?;
        let mut prepared = self.build_commit(
            &rules,
            request,
            target,
            digest,
            definition,
            command,
            &instance,
            parent.as_ref(),
            decision,
            now,
            fired,
        )?;
        if let Some(job) = completing {
            let mut done = job.clone();
            done.status = JobStatus::Completed;
            done.lease = None;
            done.version += 1;
            done.updated_at = now;
            let commit = &mut prepared.commit;
            commit.events.push(self.job_event(
                "switchyard.job.completed",
                &done,
                json!({ "result": request.payload }),
            ));
            commit.jobs.push(JobWrite {
                job: done,
                expected_version: Some(job.version),
            });
        }
        Ok(prepared)
    }

    fn decide(&self, rules: &Active, ctx: &DecisionContext<'_>) -> Result<Decision, CommandError> {
        let Some(name) = &ctx.command.decider else {
            let to = &ctx.command.to[0];
            return Ok(Decision::goto(
                to.clone(),
                format!("{} → {to}", ctx.command.name),
            ));
        };
        // A definition whose decisions stay pinned is decided by the version its instance
        // started under.
        let deciders = match (ctx.definition.decisions, ctx.instance.rule_set) {
            (crate::definition::DecisionBinding::Pinned, Some(n)) => {
                rules.deciders_by_version.get(&n).unwrap_or(&rules.deciders)
            }
            _ => &rules.deciders,
        };
        let decider = deciders
            .get(name)
            .ok_or_else(|| CommandError::DecisionFailed {
                decider: name.clone(),
                command: ctx.command.name.clone(),
                message: "the decider is not registered in this engine".into(),
            })?;
        let started = std::time::Instant::now();
        let decided = decider.decide(ctx);
        self.inner
            .metrics
            .rule_evaluation
            .observe_duration(started.elapsed());
        decided.map_err(|DecideError { message }| CommandError::DecisionFailed {
            decider: name.clone(),
            command: ctx.command.name.clone(),
            message,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn build_commit(
        &self,
        rules: &Active,
        request: &CommandRequest,
        target: &str,
        digest: &str,
        definition: &Definition,
        command: &CommandDef,
        instance: &Instance,
        parent: Option<&Instance>,
        decision: Decision,
        now: chrono::DateTime<chrono::Utc>,
        fired: Option<&OpenTimer>,
    ) -> Result<Prepared, CommandError> {
        let invalid = |message: String| CommandError::DecisionInvalid {
            decider: command.decider.clone().unwrap_or_else(|| "(none)".into()),
            command: command.name.clone(),
            message,
        };
        if !command.to.contains(&decision.next_state) {
            return Err(invalid(format!(
                "it chose state `{}`, but command `{}` may only lead to: {}",
                decision.next_state,
                command.name,
                command.to.join(", ")
            )));
        }
        if !(decision.changes.is_null() || decision.changes.is_object()) {
            return Err(invalid(
                "its data changes must be a JSON object (a merge patch) or null".into(),
            ));
        }
        if decision.reason.chars().count() > REASON_CHARS_MAX {
            return Err(invalid(format!(
                "its reason is longer than {REASON_CHARS_MAX} characters"
            )));
        }
        let mut after = instance.clone();
        if decision.changes.is_object() {
            apply_merge_patch(&mut after.data, &decision.changes);
        }
        after.state = decision.next_state.clone();
        after.version += 1;
        after.updated_at = now;
        if definition.is_terminal(&after.state) {
            after.status = InstanceStatus::Completed;
        }
        // Leaving a state cancels its timers and entering one sets its own; staying keeps
        // them, less the one that just fired, except that a timer `at` a data field follows
        // the field when the decision changes it (an approval's next step, a new deadline).
        if after.status != InstanceStatus::Active {
            after.timers.clear();
        } else if after.state != instance.state {
            after.timers = timers_for(definition, &after.state, &after.data, now)?;
        } else {
            if let Some(timer) = fired {
                after.timers.retain(|t| t != timer);
            }
            follow_data_timers(definition, &instance.data, &mut after, now)?;
        }
        let changes = if decision.changes.is_null() {
            json!({})
        } else {
            decision.changes.clone()
        };
        let primary_history = HistoryEntry {
            instance: after.id,
            version: after.version,
            at: now,
            actor: request.actor.clone(),
            request_id: Some(request.request_id.clone()),
            kind: ChangeKind::Command,
            command: Some(command.name.clone()),
            payload: request.payload.clone(),
            from_state: Some(instance.state.clone()),
            to_state: after.state.clone(),
            decider: command.decider.clone(),
            reason: decision.reason.clone(),
            changes,
            provenance: decision.provenance.clone(),
        };
        let mut writes = vec![InstanceWrite {
            instance: after.clone(),
            expected_version: Some(instance.version),
        }];
        let mut history = vec![primary_history];
        let mut counters = Vec::new();
        let mut started = Vec::new();
        let mut jobs = Vec::new();
        let mut job_events = Vec::new();
        for effect in decision.effects {
            match effect {
                Effect::StartLinked {
                    definition: child_name,
                    business_key,
                    data,
                } => {
                    if !command.effects.start.contains(&child_name) {
                        return Err(invalid(format!(
                            "it starts a `{child_name}`, but command `{}` may only start: {}",
                            command.name,
                            display_list(&command.effects.start)
                        )));
                    }
                    let child_def = &*self.latest_definition(rules, &child_name)?;
                    check_business_key("effects.start.business_key", &business_key)
                        .map_err(|e| invalid(e.to_string()))?;
                    let violations = child_def.start.payload.validate(&data);
                    if !violations.is_empty() {
                        return Err(invalid(format!(
                            "the data for the new `{child_name}` is invalid: {}",
                            violations
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; ")
                        )));
                    }
                    let timers = timers_for(child_def, &child_def.initial, &data, now)
                        .map_err(|e| invalid(format!("the new `{child_name}`: {e}")))?;
                    let mut child = new_instance(
                        child_def,
                        &business_key,
                        data.clone(),
                        Some(instance.id),
                        timers,
                        now,
                    );
                    child.rule_set = rules.rule_set.as_ref().map(|r| r.number);
                    let reason = format!(
                        "started by `{}` on {} {}",
                        command.name, definition.name, instance.id
                    );
                    history.push(started_entry(
                        &child,
                        &request.actor,
                        Some(&request.request_id),
                        &data,
                        reason,
                        Some(instance.id),
                    ));
                    started.push(child.id);
                    writes.push(InstanceWrite {
                        instance: child,
                        expected_version: None,
                    });
                }
                Effect::UpdateLinked {
                    instance: linked_id,
                    expected_version,
                    changes,
                    reason,
                } => {
                    if !changes.is_object() {
                        return Err(invalid(format!(
                            "its changes for linked instance {linked_id} must be a JSON object"
                        )));
                    }
                    let linked = match parent {
                        Some(p) if p.id == linked_id => Some(p.clone()),
                        _ => self.inner.store.instance(linked_id)?,
                    };
                    let Some(mut linked) = linked else {
                        return Err(invalid(format!(
                            "it updates instance {linked_id}, which does not exist"
                        )));
                    };
                    if linked.parent != Some(instance.id) && instance.parent != Some(linked.id) {
                        return Err(invalid(format!(
                            "it updates instance {linked_id}, which is neither the parent nor a child of {}",
                            instance.id
                        )));
                    }
                    if !command.effects.update.contains(&linked.definition.name) {
                        return Err(invalid(format!(
                            "it updates a `{}`, but command `{}` may only update: {}",
                            linked.definition.name,
                            command.name,
                            display_list(&command.effects.update)
                        )));
                    }
                    if writes.iter().any(|w| w.instance.id == linked_id) {
                        return Err(invalid(format!("it updates instance {linked_id} twice")));
                    }
                    let seen = expected_version.unwrap_or(linked.version);
                    let before = linked.clone();
                    apply_merge_patch(&mut linked.data, &changes);
                    linked.version = seen + 1;
                    linked.updated_at = now;
                    history.push(HistoryEntry {
                        instance: linked.id,
                        version: linked.version,
                        at: now,
                        actor: request.actor.clone(),
                        request_id: Some(request.request_id.clone()),
                        kind: ChangeKind::LinkedUpdate { by: instance.id },
                        command: Some(command.name.clone()),
                        payload: request.payload.clone(),
                        from_state: Some(before.state.clone()),
                        to_state: before.state.clone(),
                        decider: command.decider.clone(),
                        reason,
                        changes,
                        provenance: None,
                    });
                    writes.push(InstanceWrite {
                        instance: linked,
                        expected_version: Some(seen),
                    });
                }
                Effect::CreateJob { job_type, payload } => {
                    if !command.effects.jobs.contains(&job_type) {
                        return Err(invalid(format!(
                            "it creates a `{job_type}` job, but command `{}` may only create: {}",
                            command.name,
                            display_list(&command.effects.jobs)
                        )));
                    }
                    let spec = &definition.jobs[&job_type];
                    let job = Job {
                        id: JobId(uuid::Uuid::now_v7()),
                        job_type: job_type.clone(),
                        instance: instance.id,
                        payload,
                        status: JobStatus::Activatable,
                        failures: 0,
                        retries: spec.retries,
                        backoff_ms: spec.backoff.num_milliseconds().max(0) as u64,
                        available_at: now,
                        lease: None,
                        last_error: None,
                        complete_command: spec.complete.clone(),
                        version: 1,
                        created_at: now,
                        updated_at: now,
                    };
                    job_events.push(self.job_event("switchyard.job.created", &job, json!({})));
                    jobs.push(JobWrite {
                        job,
                        expected_version: None,
                    });
                }
                Effect::DrawCounter {
                    counter,
                    key,
                    limit,
                    assign,
                } => {
                    if !command.effects.counters.contains(&counter) {
                        return Err(invalid(format!(
                            "it draws from counter `{counter}`, but command `{}` may only draw from: {}",
                            command.name,
                            display_list(&command.effects.counters)
                        )));
                    }
                    check_business_key("effects.counters.key", &key)
                        .map_err(|e| invalid(e.to_string()))?;
                    if let Some(a) = &assign {
                        if !is_identifier(&a.field) || a.width > 32 {
                            return Err(invalid(format!(
                                "counter assignment to `{}` needs an identifier field and a width of at most 32",
                                a.field
                            )));
                        }
                    }
                    counters.push(CounterDraw {
                        counter,
                        key,
                        limit,
                        assign,
                    });
                }
            }
        }
        let mut outcome = outcome_of(&after, decision.reason);
        outcome.started = started;
        Ok(Prepared {
            commit: Commit {
                at: now,
                request: Some(self.request_record(
                    &request.request_id,
                    target,
                    &command.name,
                    digest,
                    &outcome,
                    now,
                )),
                writes,
                history,
                counters,
                jobs,
                events: job_events
                    .into_iter()
                    .chain(fired.map(|timer| feed::EventDraft {
                        source: self.inner.config.feed_source.clone(),
                        kind: "switchyard.timer.fired".into(),
                        subject: instance.id.to_string(),
                        time: now,
                        data: json!({
                            "instance": instance.id,
                            "definition": instance.definition,
                            "timer": timer.name,
                            "command": timer.command,
                            "due": timer.due,
                            "state": instance.state,
                        }),
                    }))
                    .collect(),
            },
            outcome,
        })
    }

    fn request_record(
        &self,
        request_id: &str,
        target: &str,
        command: &str,
        digest: &str,
        outcome: &CommandOutcome,
        now: chrono::DateTime<chrono::Utc>,
    ) -> RequestRecord {
        RequestRecord {
            request_id: request_id.to_string(),
            target: target.to_string(),
            command: command.to_string(),
            payload_digest: digest.to_string(),
            outcome: outcome.clone(),
            recorded_at: now,
            expires_at: now + self.inner.config.request_retention,
        }
    }

    fn load(
        &self,
        rules: &Active,
        id: InstanceId,
    ) -> Result<(Instance, Arc<Definition>), CommandError> {
        let instance = self
            .inner
            .store
            .instance(id)?
            .ok_or(CommandError::UnknownInstance(id))?;
        let definition = rules
            .definitions
            .get(&instance.definition.name, instance.definition.version)
            .cloned()
            .ok_or_else(|| CommandError::DefinitionNotLoaded {
                instance: id,
                definition: instance.definition.clone(),
            })?;
        Ok((instance, definition))
    }

    fn latest_definition(
        &self,
        rules: &Active,
        name: &str,
    ) -> Result<Arc<Definition>, CommandError> {
        rules
            .definitions
            .latest(name)
            .cloned()
            .ok_or_else(|| CommandError::UnknownDefinition {
                name: name.to_string(),
                loaded: rules.definitions.names().join(", "),
            })
    }

    fn check_payload_size(&self, payload: &Value) -> Result<(), CommandError> {
        let size = serde_json::to_vec(payload)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        let max = self.inner.config.payload_bytes_max;
        if size > max {
            return Err(CommandError::PayloadTooLarge { size, max });
        }
        Ok(())
    }
}

fn replay(
    record: &RequestRecord,
    target: &str,
    command: &str,
    digest: &str,
) -> Result<CommandOutcome, CommandError> {
    if record.target == target && record.command == command && record.payload_digest == digest {
        Ok(record.outcome.clone())
    } else {
        Err(CommandError::RequestIdReused {
            request_id: record.request_id.clone(),
            original: format!(
                "`{}` on {} with another payload",
                record.command, record.target
            ),
        })
    }
}

/// The timers an instance gets on entering `state`.
fn timers_for(
    definition: &Definition,
    state: &str,
    data: &Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<OpenTimer>, CommandError> {
    let Some(state_def) = definition.states.get(state) else {
        return Ok(Vec::new());
    };
    state_def
        .timers
        .iter()
        .map(|t| {
            let due = match &t.due {
                TimerDue::After(after) => now + *after,
                TimerDue::At(field) => due_from_data(data, field).ok_or_else(|| {
                    CommandError::InvalidInput {
                        field: format!("data.{field}"),
                        message: format!(
                            "timer `{}` of state `{state}` needs a date (\"2026-05-01\") or an RFC 3339 time here",
                            t.name
                        ),
                    }
                })?,
            };
            Ok(OpenTimer {
                name: t.name.clone(),
                command: t.command.clone(),
                due,
            })
        })
        .collect()
}

/// Re-plans the timers of `state` declared `at` a data field whose value the change moved.
fn follow_data_timers(
    definition: &Definition,
    before: &Value,
    after: &mut Instance,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), CommandError> {
    let state = after.state.clone();
    let Some(state_def) = definition.states.get(&state) else {
        return Ok(());
    };
    for t in &state_def.timers {
        let TimerDue::At(field) = &t.due else {
            continue;
        };
        if before.get(field) == after.data.get(field) {
            continue;
        }
        after.timers.retain(|open| open.name != t.name);
        if after.data.get(field).is_some_and(|v| !v.is_null()) {
            let planned = timers_for(definition, &state, &after.data, now)?;
            after
                .timers
                .extend(planned.into_iter().filter(|p| p.name == t.name));
        }
    }
    Ok(())
}

/// A due time from a data field: an RFC 3339 time, or a date meaning the end of that day (UTC).
fn due_from_data(data: &Value, field: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = data.get(field)?.as_str()?;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(day.succ_opt()?.and_hms_opt(0, 0, 0)?.and_utc())
}

fn new_instance(
    definition: &Definition,
    business_key: &str,
    data: Value,
    parent: Option<InstanceId>,
    timers: Vec<OpenTimer>,
    now: chrono::DateTime<chrono::Utc>,
) -> Instance {
    Instance {
        id: InstanceId::new(),
        definition: DefinitionRef {
            name: definition.name.clone(),
            version: definition.version,
        },
        business_key: business_key.to_string(),
        state: definition.initial.clone(),
        status: InstanceStatus::Active,
        data: if data.is_null() { json!({}) } else { data },
        version: 1,
        parent,
        timers,
        rule_set: None,
        created_at: now,
        updated_at: now,
    }
}

fn started_entry(
    instance: &Instance,
    actor: &Actor,
    request_id: Option<&str>,
    data: &Value,
    reason: String,
    by: Option<InstanceId>,
) -> HistoryEntry {
    HistoryEntry {
        instance: instance.id,
        version: 1,
        at: instance.created_at,
        actor: actor.clone(),
        request_id: request_id.map(str::to_string),
        kind: ChangeKind::Started { by },
        command: None,
        payload: data.clone(),
        from_state: None,
        to_state: instance.state.clone(),
        decider: None,
        reason,
        changes: instance.data.clone(),
        provenance: None,
    }
}

fn outcome_of(after: &Instance, reason: String) -> CommandOutcome {
    CommandOutcome {
        instance: after.id,
        version: after.version,
        state: after.state.clone(),
        status: after.status,
        reason,
        started: Vec::new(),
        counters: Vec::new(),
    }
}

fn require_role(
    actor: &Actor,
    allowed: &[String],
    action: impl FnOnce() -> String,
) -> Result<(), CommandError> {
    if actor.has_any_role(allowed) {
        return Ok(());
    }
    Err(CommandError::RoleNotAllowed {
        actor: actor.id.clone(),
        action: action(),
        held: if actor.roles.is_empty() {
            "none".into()
        } else {
            actor.roles.join(", ")
        },
        required: allowed.join(", "),
    })
}

fn require_active(instance: &Instance) -> Result<(), CommandError> {
    if instance.status == InstanceStatus::Active {
        return Ok(());
    }
    Err(CommandError::NotActive {
        instance: instance.id,
        status: instance.status,
        state: instance.state.clone(),
    })
}

fn check_expected(instance: &Instance, expected: Option<u64>) -> Result<(), CommandError> {
    match expected {
        Some(e) if e != instance.version => Err(CommandError::VersionMismatch {
            instance: instance.id,
            expected: e,
            current: instance.version,
        }),
        _ => Ok(()),
    }
}

fn check_violations(
    violations: Vec<crate::definition::schema::FieldViolation>,
) -> Result<(), CommandError> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(CommandError::InvalidPayload { violations })
    }
}

pub(crate) fn check_request_id(request_id: &str) -> Result<(), CommandError> {
    let bad = |message: &str| {
        Err(CommandError::InvalidInput {
            field: "request_id".into(),
            message: message.into(),
        })
    };
    if request_id.is_empty() {
        return bad("is required: a unique id per logical request, reused only when retrying it");
    }
    if request_id.len() > REQUEST_ID_BYTES_MAX {
        return bad("is longer than 256 bytes");
    }
    if request_id.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    Ok(())
}

fn check_business_key(field: &str, key: &str) -> Result<(), CommandError> {
    let bad = |message: String| {
        Err(CommandError::InvalidInput {
            field: field.into(),
            message,
        })
    };
    if key.chars().count() > BUSINESS_KEY_CHARS_MAX {
        return bad(format!(
            "is longer than {BUSINESS_KEY_CHARS_MAX} characters"
        ));
    }
    if key.chars().any(char::is_control) {
        return bad("must not contain control characters".into());
    }
    Ok(())
}

fn parse_page_token(token: Option<&str>) -> Result<Option<InstanceId>, CommandError> {
    match token {
        None | Some("") => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| CommandError::InvalidInput {
            field: "page_token".into(),
            message: format!("`{t}` is not a page token returned by a previous page"),
        }),
    }
}

fn display_list(items: &[String]) -> String {
    if items.is_empty() {
        "(nothing)".into()
    } else {
        items.join(", ")
    }
}

/// SHA-256 of the canonical JSON form (object keys sorted), hex.
fn digest(payload: &Value) -> String {
    let bytes = serde_json::to_vec(payload).expect("JSON values serialize");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_canonical_over_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"a": {"x": 3, "y": 2}, "b": 2})));
    }
}
