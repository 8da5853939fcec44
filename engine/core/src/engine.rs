//! The engine: validates requests against definitions, asks deciders, builds commits and
//! hands them to the group committer. One module per concern:
//!
//! | module | what |
//! |---|---|
//! | `config` | [`EngineConfig`], [`StoreConfig`] |
//! | `requests` | [`StartRequest`], [`CommandRequest`], [`CancelRequest`], [`ListRequest`] |
//! | `lifecycle` | open, shutdown, subscribe, metrics |
//! | `reads` | get, list, history, children |
//! | `command` | start, send, cancel: the command path and its retry loop |
//! | `checks` | request and decision checks |
//! | `effects` | building a commit: the transition, then one function per effect kind |
//! | `timers` | timer planning (pure functions) |
//! | `background` | periodic work: firing timers, purges |
//! | `credentials` | bearer tokens managed at runtime (admin) and their lookup |
//! | `incidents` | timer incidents: raised when a timer's command fails, resolved by an admin |
//! | `jobs` | activation, completion, failure, incidents, in-process handlers |
//! | `rulesets` | deploy, activate, dry runs, the compiled rule-set cache |
//! | `pool` | the bounded pool every rule evaluation runs on |
// Functions here fit on a screen (clippy.toml sets the threshold).
#![warn(clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

use crate::committer::Work;
use crate::decider::DeciderRegistry;
use crate::definition::{Definition, DefinitionSet};
use crate::job::{JobId, JobStatus};
use crate::metrics::EngineMetrics;
use crate::model::{CommandOutcome, OpenTimer};
use crate::rules::{RuleLimits, RuleSet};
use crate::store::{Commit, Store};

mod background;
mod checks;
mod command;
mod config;
mod credentials;
mod effects;
mod feed_as;
mod incidents;
mod jobs;
mod lifecycle;
mod notifications;
mod pool;
mod provider_events;
mod reads;
pub(crate) mod requests;
mod rulesets;
mod timers;

pub(crate) use checks::{check_request_id, require_role};
pub use config::{EngineConfig, StoreConfig};
pub use credentials::NewToken;
pub use feed_as::{FeedReader, FeedRequest, FEED_FILTER_ITEMS_MAX};
pub use jobs::{ActivateJobs, FailJob, JobFailure};
pub use provider_events::{IngestOutcome, ProviderEvent, PROVIDER_EVENT_DEFINITION};
pub use requests::{CancelRequest, CommandRequest, ListRequest, StartRequest};
pub use rulesets::{DryRun, DryRunInput, RuleSetInfo, RulesWatch, RulesWatchStatus};

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
    rule_inputs: std::sync::OnceLock<(DeciderRegistry, RuleLimits)>,
    /// Compiled rule-set versions other than the active one, by number, with when each was
    /// last used (at most `config.rule_set_cache`; see `rulesets`).
    rule_set_cache: Mutex<BTreeMap<u32, (u64, Arc<RuleSet>)>>,
    /// A clock for the cache's least-recently-used order.
    rule_set_ticks: AtomicU64,
    /// Where rules are evaluated (see `pool`).
    rule_pool: pool::RulePool,
    /// Serializes deployments and activations.
    rules_admin: tokio::sync::Mutex<()>,
    /// The periodic background tasks, stopped by `shutdown`.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Store calls running on blocking threads (see `Engine::store_call`).
    store_calls: Arc<AtomicUsize>,
    /// Background work holding the engine (see `BackgroundHold`).
    background: Arc<AtomicUsize>,
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
    subscribers: Mutex<Vec<Weak<AtomicU64>>>,
    /// Whether the store takes writes (kept by the committer and the health probe).
    health: Arc<watch::Sender<crate::store::StoreHealth>>,
    /// Set when a flush hangs: every submitter is refused at once.
    stalled: Arc<std::sync::atomic::AtomicBool>,
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
    /// Every definition version instances may be pinned to.
    pub(crate) definitions: DefinitionSet,
    /// What new instances start on, by name: the active rule set's definitions (`None`:
    /// opened with fixed definitions, which start on the latest version).
    pub(crate) startable: Option<BTreeMap<String, Arc<Definition>>>,
    /// The active version's deciders.
    pub(crate) deciders: Arc<DeciderRegistry>,
    /// The active rule-set version.
    pub(crate) rule_set: Option<RuleSetInfo>,
    /// The active rule set, compiled.
    pub(crate) active_set: Option<Arc<RuleSet>>,
}

impl Active {
    /// Fixed definitions and deciders, no rule sets.
    fn fixed(definitions: DefinitionSet, deciders: DeciderRegistry) -> Self {
        Active {
            definitions,
            startable: None,
            deciders: Arc::new(deciders),
            rule_set: None,
            active_set: None,
        }
    }
}

/// A store call in progress on a blocking thread; see `Engine::store_call`. It owns the only
/// store handle the call uses and releases it before the call counts as finished, so once the
/// count is zero no blocking call holds the store.
pub(crate) struct StoreCall {
    store: Option<Arc<dyn Store>>,
    calls: Arc<AtomicUsize>,
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
        self.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a piece of background work — a periodic pass, a timer's command, an in-process job
/// handler's round — while it holds the engine, so `shutdown` can wait for it to let go: an
/// aborted task cannot be made to drop what it holds at once, and the engine (with a sled
/// store's lock) is released only when its last holder drops. Declare it before the engine
/// handle it guards, so the handle drops first.
pub(crate) struct BackgroundHold(Arc<AtomicUsize>);

impl BackgroundHold {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        BackgroundHold(count.clone())
    }
}

impl Drop for BackgroundHold {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Aborts a task when dropped: a pass aborted with the task that awaits it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A commit ready to submit, with the outcome it will acknowledge.
struct Prepared {
    commit: Commit,
    outcome: CommandOutcome,
}

impl Prepared {
    /// Whether committing this creates or re-opens jobs a worker could take.
    fn makes_jobs_available(&self) -> bool {
        self.commit
            .jobs
            .iter()
            .any(|w| w.job.status == JobStatus::Activatable)
    }
}
