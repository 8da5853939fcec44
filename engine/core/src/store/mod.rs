//! The store: where instances, history, idempotency records and counters live.
//!
//! [`Store`] is the contract the engine relies on. It is deliberately free of sled-isms: a
//! commit is a plain value, and version checks, request-id uniqueness and counter limits are
//! enforced *inside the store's own atomic write*, so that a shared SQL database could
//! implement the same trait for several engine processes. Two implementations ship:
//! [`SledStore`] (embedded, durable; nothing outside `store::sled_store` knows sled) and
//! [`MemoryStore`] (for tests and ephemeral embedding). Both share the key layout and record
//! codec in `store::records` and the commit and query logic in `store::kv`; a SQL store would use
//! neither.

// Functions here fit on a screen (clippy.toml sets the threshold).
#![warn(clippy::too_many_lines)]

mod backup;
#[cfg(feature = "testing")]
mod faults;
pub(crate) mod keys;
mod kv;
mod memory;
pub(crate) mod records;
mod sled_store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credential::Credential;
use crate::decider::CounterAssign;
use crate::feed::{EventDraft, FeedEvent};
use crate::job::{Job, JobId};
use crate::model::{CommandOutcome, DueTimer, HistoryEntry, Instance, InstanceId, RequestTarget};

pub use backup::{export_stopped, import_into, BackupSummary, BACKUP_FORMAT};
#[cfg(feature = "testing")]
pub use faults::FaultyStore;
pub use memory::MemoryStore;
pub use sled_store::{SledConfig, SledStore};

/// How far a flushed commit survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Written to the operating system before acknowledging: survives a process crash
    /// (`kill -9`), not a power loss.
    Flush,
    /// Flushed and then `fdatasync`ed: survives a power loss. Slower.
    Fsync,
}

/// A deployed rule-set version, as kept in the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleSetRecord {
    /// Deployment number: 1, 2, 3… in deployment order.
    pub number: u32,
    /// Content version: the digest of its files.
    pub version: String,
    /// Its files (relative path → text).
    pub files: std::collections::BTreeMap<String, String>,
    /// When it was deployed.
    pub deployed_at: DateTime<Utc>,
    /// Who deployed it.
    pub deployed_by: String,
}

/// One activation of a rule-set version (a deployment activates too), as kept in the store:
/// who changed which version is in force, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSetActivation {
    /// 1, 2, 3… in activation order.
    pub seq: u64,
    /// The version made active.
    pub number: u32,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub by: String,
}

/// The idempotency record of an administrative request — a rule-set deploy or activate, a
/// credential create, rotate or revoke — kept apart from instance request records because it
/// answers with a rule-set version or a credential, not an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSetRequestRecord {
    /// The caller's request id.
    pub request_id: String,
    /// `deploy`, `activate`, `create_token`, `rotate_token` or `revoke_token`.
    pub operation: String,
    /// SHA-256 of what was asked (the files, or the version number), hex.
    pub digest: String,
    /// The rule-set version it resulted in (0 for a credential operation).
    pub number: u32,
    /// The credential it acted on or made (empty for a rule-set operation).
    #[serde(default)]
    pub subject: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// After this the request id may be used again.
    pub expires_at: DateTime<Utc>,
}

/// One instance written by a commit.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceWrite {
    /// The instance as it must be after the commit.
    pub instance: Instance,
    /// The version it must have in the store before the commit; `None` means it must not
    /// exist yet (a start).
    pub expected_version: Option<u64>,
}

/// One job written by a commit.
#[derive(Clone, Debug, PartialEq)]
pub struct JobWrite {
    /// The job as it must be after the commit.
    pub job: Job,
    /// The version it must have before (`None`: must not exist).
    pub expected_version: Option<u64>,
}

/// One draw from a named counter.
#[derive(Clone, Debug, PartialEq)]
pub struct CounterDraw {
    /// Counter name.
    pub counter: String,
    /// Key within the counter.
    pub key: String,
    /// Refuse the commit if the new value would exceed this.
    pub limit: Option<u64>,
    /// Write the drawn value into the first instance of the commit (and its history changes).
    pub assign: Option<CounterAssign>,
    /// Give a value back instead: the counter goes down by one (not below zero); `limit` and
    /// `assign` do not apply.
    pub give_back: bool,
}

/// A move of a named balance at a key, by an exact amount (negative: down).
#[derive(Clone, Debug, PartialEq)]
pub struct BalanceChange {
    /// Balance name.
    pub balance: String,
    /// Key within the balance.
    pub key: String,
    /// By how much.
    pub amount: rust_decimal::Decimal,
}

/// The idempotency record of a request: what it targeted and what it returned.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    /// The caller's request id (global).
    pub request_id: String,
    /// What it acted on.
    pub target: RequestTarget,
    /// SHA-256 of the canonical JSON payload, hex.
    pub payload_digest: String,
    /// What the request returned; a retry returns it again. The store fills in `counters`.
    pub outcome: CommandOutcome,
    /// When the record was written.
    pub recorded_at: DateTime<Utc>,
    /// After this the request id may be used again.
    pub expires_at: DateTime<Utc>,
}

/// Everything one command changes, applied atomically or not at all.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    /// Commit time (engine clock); also decides whether an old request record has expired.
    pub at: DateTime<Utc>,
    /// The idempotency record to write; refused if a live record with its id exists.
    pub request: Option<RequestRecord>,
    /// Instances written, each version-checked. The first is the one the command acted on.
    pub writes: Vec<InstanceWrite>,
    /// History entries; entry `i` records how `writes[i]` came to be.
    pub history: Vec<HistoryEntry>,
    /// Counter draws.
    pub counters: Vec<CounterDraw>,
    /// Counter values the decision read: each must still hold when the commit is written
    /// (checked before the draws), else `CounterChanged`.
    pub counter_checks: Vec<crate::model::CounterValue>,
    /// Balance moves, applied in order.
    pub balances: Vec<BalanceChange>,
    /// Balance values the decision read: each must still hold when the commit is written,
    /// else `BalanceChanged`.
    pub balance_checks: Vec<crate::decider::BalanceRead>,
    /// Jobs written, each version-checked (`None`: must not exist yet).
    pub jobs: Vec<JobWrite>,
    /// Feed events, numbered by the store in order. Counter assignments are applied to the
    /// first write, the first history entry and the first event's `data.data` alike.
    pub events: Vec<EventDraft>,
}

impl Commit {
    /// An empty commit at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Commit {
            at,
            request: None,
            writes: Vec::new(),
            history: Vec::new(),
            counters: Vec::new(),
            counter_checks: Vec::new(),
            balances: Vec::new(),
            balance_checks: Vec::new(),
            jobs: Vec::new(),
            events: Vec::new(),
        }
    }

    /// A commit that changes one job and nothing else.
    pub fn job_change(at: DateTime<Utc>, write: JobWrite, events: Vec<EventDraft>) -> Self {
        Commit {
            at,
            request: None,
            writes: Vec::new(),
            history: Vec::new(),
            counters: Vec::new(),
            counter_checks: Vec::new(),
            balances: Vec::new(),
            balance_checks: Vec::new(),
            jobs: vec![write],
            events,
        }
    }
}

/// What an applied commit produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitApplied {
    /// Values drawn from counters, in draw order.
    pub counters: Vec<crate::model::CounterValue>,
    /// The feed offset of the commit's last event (0 if it had none).
    pub last_offset: u64,
}

/// Why the store refused a commit; nothing of it was written.
#[derive(Clone, Debug, PartialEq)]
pub enum CommitRefusal {
    /// An instance did not have the expected version (or existed / did not exist).
    VersionConflict {
        /// The instance.
        instance: InstanceId,
        /// The version the commit expected (`None`: expected absent).
        expected: Option<u64>,
        /// The version found (`None`: absent).
        current: Option<u64>,
    },
    /// A job did not have the expected version.
    JobConflict {
        /// The job.
        job: JobId,
        /// Expected version.
        expected: Option<u64>,
        /// Found version.
        current: Option<u64>,
    },
    /// A live record for the request id exists.
    DuplicateRequest(Box<RequestRecord>),
    /// A counter value the decision read has changed since.
    CounterChanged {
        /// Counter name.
        counter: String,
        /// Key.
        key: String,
        /// The value the decision read.
        read: u64,
        /// The value now.
        current: u64,
    },
    /// A balance value the decision read has changed since.
    BalanceChanged {
        /// Balance name.
        balance: String,
        /// Key.
        key: String,
        /// The value the decision read.
        read: rust_decimal::Decimal,
        /// The value now.
        current: rust_decimal::Decimal,
    },
    /// A counter draw would pass its limit.
    CounterLimit {
        /// Counter name.
        counter: String,
        /// Key.
        key: String,
        /// The limit.
        limit: u64,
    },
}

/// Whether the store can take writes now.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreHealth {
    /// Writes are taken.
    Writable,
    /// Writes are refused for now (`permanent`: until the engine is reopened).
    Unavailable {
        /// Why, for operators.
        reason: String,
        /// Whether only a restart brings writes back.
        permanent: bool,
    },
}

/// A store failure (I/O, corruption). The outcome of an affected commit is unknown to the
/// caller; retrying with the same request id is safe.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store's disk is (nearly) full: the write was refused before anything was written,
    /// and writes resume by themselves once there is room.
    #[error("the disk holding the store has {available} bytes free; writes resume once it has at least {needed}")]
    Full {
        /// Bytes free now.
        available: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// The storage backend failed.
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// A backup line cannot be restored (nothing after it was written: see
    /// [`Store::import`]).
    #[error("backup line {line}: {message}")]
    BadBackup {
        /// 1-based line of the backup file.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The store must be empty for this (a backup is restored only into an empty store).
    #[error("{0}")]
    NotEmpty(String),
    /// A record could not be decoded or failed its checks.
    #[error("corrupt record at key {key}: {message}")]
    Corrupt {
        /// The key, printable.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Which instances to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only instances of this definition (any version); `None` lists every instance.
    pub definition: Option<String>,
    /// Only instances in this state (needs `definition`).
    pub state: Option<String>,
    /// Only instances with this business key (needs `definition`).
    pub business_key: Option<String>,
    /// Most instances to return.
    pub page_size: usize,
    /// Continue after this instance (from a previous page's `next_page_token`).
    pub after: Option<InstanceId>,
}

/// A page of results.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass this to get the next page; `None` when there is no more.
    pub next_page_token: Option<String>,
}

/// Counts of what the store did; for metrics and for tests that check durability work is done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Batches committed.
    pub batches: u64,
    /// Commits applied.
    pub commits: u64,
    /// Flushes to the operating system.
    pub flushes: u64,
    /// `fdatasync` calls on the store's files.
    pub fsyncs: u64,
    /// Microseconds spent checking, staging and applying batches.
    pub apply_micros: u64,
    /// Microseconds spent flushing and syncing.
    pub flush_micros: u64,
}

/// The storage contract. Methods block; the engine calls writes from its committer thread.
pub trait Store: Send + Sync + 'static {
    /// The instance `id`.
    fn instance(&self, id: InstanceId) -> Result<Option<Instance>, StoreError>;
    /// The idempotency record for `request_id`, live or expired-but-not-purged.
    fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError>;
    /// A page of instances matching `query`, ordered by id (i.e. by start time).
    fn list(&self, query: &ListQuery) -> Result<Page<Instance>, StoreError>;
    /// History entries of `id` with version > `after_version`, at most `limit`.
    fn history(
        &self,
        id: InstanceId,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError>;
    /// Ids of the instances started by `parent`'s transitions, after `after`, at most `limit`.
    fn children(
        &self,
        parent: InstanceId,
        after: Option<InstanceId>,
        limit: usize,
    ) -> Result<Vec<InstanceId>, StoreError>;
    /// The current value of a counter key (0 if never drawn).
    fn counter(&self, counter: &str, key: &str) -> Result<u64, StoreError>;
    /// The current value of a balance key (0 if never moved).
    fn balance(&self, balance: &str, key: &str) -> Result<rust_decimal::Decimal, StoreError>;
    /// The job `id`.
    fn job(&self, id: JobId) -> Result<Option<Job>, StoreError>;
    /// Jobs of `job_type` that may be activated at `now` (activatable, or leased with an
    /// expired lease), longest waiting first, at most `limit`.
    fn activatable_jobs(
        &self,
        job_type: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;
    /// Jobs waiting for a worker or leased (neither finished nor incidents), counted up to
    /// `limit`.
    fn job_backlog(&self, limit: usize) -> Result<usize, StoreError>;
    /// Jobs of an instance after `after` (from the first when `None`), oldest first, at most
    /// `limit`.
    fn jobs_of(
        &self,
        instance: InstanceId,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;
    /// Every job after `after` (from the first when `None`), in id (creation) order, at most
    /// `limit`.
    fn jobs_after(&self, after: Option<JobId>, limit: usize) -> Result<Vec<Job>, StoreError>;
    /// Every deployed rule-set version, by number (at most 10,000 are kept).
    fn rule_sets(&self) -> Result<Vec<RuleSetRecord>, StoreError>;
    /// The deployed rule-set version `number`.
    fn rule_set(&self, number: u32) -> Result<Option<RuleSetRecord>, StoreError>;
    /// Keeps a newly deployed rule-set version (durably); refused if its number exists.
    fn add_rule_set(&self, record: &RuleSetRecord) -> Result<(), StoreError>;
    /// The number of the active rule-set version, if any was activated.
    fn active_rule_set(&self) -> Result<Option<u32>, StoreError>;
    /// Makes rule-set version `number` the active one and records who did it, in one write
    /// (durably); returns the activation record.
    fn set_active_rule_set(
        &self,
        number: u32,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<RuleSetActivation, StoreError>;
    /// The latest activations (up to 10,000), oldest first.
    fn rule_set_activations(&self) -> Result<Vec<RuleSetActivation>, StoreError>;
    /// The record of the rule-set request `request_id`, live or expired.
    fn rule_set_request(
        &self,
        request_id: &str,
    ) -> Result<Option<RuleSetRequestRecord>, StoreError>;
    /// Keeps (durably) the record of a rule-set request, replacing an expired one.
    fn put_rule_set_request(&self, record: &RuleSetRequestRecord) -> Result<(), StoreError>;
    /// Timers due at or before `now`, earliest first, at most `limit`.
    fn due_timers(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueTimer>, StoreError>;
    /// Feed events with offset > `after`, in offset order: at most `limit`, and no more once
    /// their stored size reaches `max_bytes` (at least one event when there is one).
    fn feed(
        &self,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<FeedEvent>, StoreError>;
    /// `(earliest retained offset, last assigned offset)`; `(1, 0)` for an empty feed.
    fn feed_bounds(&self) -> Result<(u64, u64), StoreError>;
    /// Deletes up to `limit` of the oldest events committed before `before`; returns how many.
    fn purge_feed(&self, before: DateTime<Utc>, limit: usize) -> Result<usize, StoreError>;
    /// Applies each commit atomically and independently, in order (a later commit sees the
    /// earlier ones). The whole batch becomes visible at once; it is durable only after the
    /// next [`Store::flush`] (stores whose writes are durable on return flush as a no-op).
    fn apply(
        &self,
        batch: &[Commit],
    ) -> Result<Vec<Result<CommitApplied, CommitRefusal>>, StoreError>;
    /// Makes everything applied before the call durable (to the store's durability setting).
    /// May run concurrently with [`Store::apply`].
    fn flush(&self) -> Result<(), StoreError>;
    /// [`Store::apply`] then [`Store::flush`].
    fn commit(
        &self,
        batch: &[Commit],
    ) -> Result<Vec<Result<CommitApplied, CommitRefusal>>, StoreError> {
        let results = self.apply(batch)?;
        self.flush()?;
        Ok(results)
    }
    /// Deletes up to `limit` request records that expired at or before `now`; returns how
    /// many. (Not flushed: a purge lost in a crash only leaves expired records, which count as
    /// absent anyway.)
    fn purge_requests(&self, now: DateTime<Utc>, limit: usize) -> Result<usize, StoreError>;
    /// What the store has done so far.
    fn stats(&self) -> StoreStats;
    /// Writes a copy of the whole store to `out` in the backup format (`docs/backup.md`),
    /// exactly as the store was at one moment (the returned feed head), while commits go on.
    /// One export at a time.
    fn export(
        &self,
        out: &mut dyn std::io::Write,
        now: DateTime<Utc>,
    ) -> Result<BackupSummary, StoreError>;
    /// Restores a backup written by [`Store::export`] into this store, which must be empty
    /// (`StoreError::NotEmpty` otherwise, nothing written), and flushes it. A bad line is
    /// refused naming it (`StoreError::BadBackup`); the lines before it are then written
    /// and the store is marked as a partial import, which the sled store refuses to open.
    fn import(&self, input: &mut dyn std::io::BufRead) -> Result<BackupSummary, StoreError>;
    /// The credential whose token has this SHA-256.
    fn credential(&self, token_sha256: &[u8; 32]) -> Result<Option<Credential>, StoreError>;
    /// The credential with this id (the hash's first 8 bytes, hex).
    fn credential_by_id(&self, id: &str) -> Result<Option<Credential>, StoreError>;
    /// Credentials after the one with id `after` (from the first when `None`), at most
    /// `limit`, in id order.
    fn credentials(&self, after: Option<&str>, limit: usize)
        -> Result<Vec<Credential>, StoreError>;
    /// Writes `credentials` atomically and durably (new ones, or changed ones).
    fn put_credentials(&self, credentials: &[Credential]) -> Result<(), StoreError>;
    /// Whether a write could be taken now (e.g. the disk has room), without writing.
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
