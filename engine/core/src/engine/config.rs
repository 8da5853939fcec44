//! What an engine is opened with: the store to use and every limit, each with a default.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::OpenError;
use crate::store::SledConfig;

/// Which store the engine opens.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum StoreConfig {
    /// The embedded sled store.
    Sled(SledConfig),
    /// An in-memory store; nothing survives the process.
    Memory,
}

/// Engine settings. Every limit has a default; see the field docs. Build one with
/// [`EngineConfig::new`] or [`EngineConfig::in_memory`] and change the fields you need.
#[derive(Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// The store to open (ignored by `Engine::with_store`).
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
    /// How long an in-process job handler may run before its attempt counts as failed
    /// (default 30 s; must be shorter than `job_handler_lease`).
    pub job_handler_timeout: StdDuration,
    /// How often due timers are looked for (default 1 s).
    pub timer_poll_interval: StdDuration,
    /// Failed attempts a notification may have before it is undelivered, an incident
    /// (default 10).
    pub notification_retries: u32,
    /// The delay before a notification's first retry; it doubles with each failure, with
    /// ±20% jitter (default 10 s: ten retries span about 3 hours).
    pub notification_backoff: StdDuration,
    /// The `source` of feed events (default `switchyard`).
    pub feed_source: String,
    /// How long feed events are kept (default 30 days).
    pub feed_retention: Duration,
    /// Most compiled rule-set versions kept besides the active one, for instances whose
    /// decisions stay pinned to the version they started under and for dry runs (default 8).
    /// Others are compiled again from the store when needed.
    pub rule_set_cache: usize,
    /// Threads that evaluate rules (decisions, dry runs, rule-set tests), apart from the
    /// host's async workers (default: the number of CPUs).
    pub rule_threads: usize,
    /// Most rule evaluations waiting for a rule thread; beyond it new ones are refused with
    /// `OVERLOADED` (default 1024).
    pub rule_queue_max: usize,
    /// Longest time all of a rule set's example tests may take when it is validated or
    /// deployed; tests past it count as failed (default 10 s).
    pub rule_tests_deadline: StdDuration,
    /// How long a flush may take before the store counts as stalled: every later write is
    /// refused until the engine is reopened, instead of queueing behind it (default 30 s).
    pub flush_timeout: StdDuration,
    /// Whether the engine runs its periodic work — firing due timers, purging expired request
    /// records and feed events (default true). Offline tools that only read or deploy turn it
    /// off.
    pub background_tasks: bool,
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
            .field("job_handler_timeout", &self.job_handler_timeout)
            .field("notification_retries", &self.notification_retries)
            .field("notification_backoff", &self.notification_backoff)
            .field("feed_source", &self.feed_source)
            .field("feed_retention", &self.feed_retention)
            .field("rule_set_cache", &self.rule_set_cache)
            .field("rule_threads", &self.rule_threads)
            .field("rule_queue_max", &self.rule_queue_max)
            .field("rule_tests_deadline", &self.rule_tests_deadline)
            .field("flush_timeout", &self.flush_timeout)
            .field("background_tasks", &self.background_tasks)
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
            job_handler_timeout: StdDuration::from_secs(30),
            notification_retries: 10,
            notification_backoff: StdDuration::from_secs(10),
            feed_source: "switchyard".into(),
            feed_retention: Duration::days(30),
            rule_set_cache: 8,
            rule_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            rule_queue_max: 1024,
            rule_tests_deadline: StdDuration::from_secs(10),
            flush_timeout: StdDuration::from_secs(30),
            background_tasks: true,
            clock: Arc::new(SystemClock),
        }
    }

    /// Defaults with an in-memory store.
    pub fn in_memory() -> Self {
        Self::new(StoreConfig::Memory)
    }

    /// Defaults with a sled store at `path` (fsync durability, 256 MiB cache).
    pub fn sled(path: impl Into<std::path::PathBuf>) -> Self {
        Self::new(StoreConfig::Sled(SledConfig::new(path)))
    }

    pub(super) fn check(&self) -> Result<(), OpenError> {
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
        if self.rule_threads == 0 || self.rule_queue_max == 0 {
            return bad(
                "rule_threads",
                "rule_threads and rule_queue_max must be at least 1",
            );
        }
        if self.request_retention > Duration::days(3650)
            || self.feed_retention > Duration::days(3650)
        {
            return bad("request_retention", "retentions must be at most 10 years");
        }
        if self.job_handler_timeout.is_zero() || self.job_handler_timeout >= self.job_handler_lease
        {
            return bad(
                "job_handler_timeout",
                "must be positive and shorter than job_handler_lease",
            );
        }
        Ok(())
    }
}
