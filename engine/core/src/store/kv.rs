//! Commit and query logic for stores built on an ordered key-value map (sled, memory).
//!
//! A store supplies reads ([`KvRead`]) and a way to apply a set of writes atomically; this
//! module does the rest: version checks, request-id uniqueness, counters, index upkeep,
//! listing and purging. A batch is staged in memory (later commits see earlier ones) and
//! handed back as one write set. A SQL store would implement [`super::Store`] directly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::keys::{self, prefix};
use super::records::{self, decode, encode, CounterRecord};
use super::{
    Commit, CommitApplied, CommitRefusal, ListQuery, Page, RequestRecord, StoreError, StoreStats,
};
use crate::feed::FeedEvent;
use crate::job::{Job, JobId};
use crate::model::{CounterValue, HistoryEntry, Instance, InstanceId};

/// A key and its value.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// Ordered reads of a key-value map.
pub(crate) trait KvRead {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` entries whose key starts with `prefix` and is greater than `after`
    /// (or all under `prefix` when `after` is `None`), in key order.
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.scan_bounded(prefix, after, limit, usize::MAX)
    }
    /// As [`KvRead::scan`], but it also stops once the values read add up to `max_bytes`
    /// (the entry that reaches it is included, so a page always holds at least one).
    fn scan_bounded(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError>;
    /// Up to `limit` entries whose key starts with `prefix`, in reverse key order (the
    /// greatest first).
    fn scan_back(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;
}

/// The least key greater than every key starting with `prefix` (`None`: there is none).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Most rule-set versions (and activations) a store reads in one call; deploying beyond
/// this many versions is refused (see `add_rule_set`).
pub(crate) const RULE_SETS_MAX: usize = 10_000;

/// Staged writes: `None` deletes.
pub(crate) type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A key-value map the shared commit logic can write to.
pub(crate) trait KvWrite: KvRead {
    /// Held while a batch is checked and applied: the store's single writer.
    fn writer(&self) -> &Mutex<()>;
    /// The store's counters.
    fn counters(&self) -> &KvStats;
    /// Catches writes for a running export.
    fn tap(&self) -> &super::backup::WriteTap;
    /// Applies `writes` atomically (all visible at once, all or nothing after a crash).
    /// Called only through [`KvWrite::write`].
    fn write_raw(&self, writes: Writes) -> Result<(), StoreError>;
    /// Applies `writes` atomically, under the writer lock; a running export sees them.
    fn write(&self, writes: Writes) -> Result<(), StoreError> {
        self.tap().record(&writes);
        let written = self.write_raw(writes);
        if let Err(e) = &written {
            self.tap().write_failed(e);
        }
        written
    }
}

/// What a key-value store counts, for [`super::Store::stats`].
#[derive(Default)]
pub(crate) struct KvStats {
    pub batches: AtomicU64,
    pub commits: AtomicU64,
    pub flushes: AtomicU64,
    pub fsyncs: AtomicU64,
    pub apply_micros: AtomicU64,
    pub flush_micros: AtomicU64,
}

impl KvStats {
    pub fn snapshot(&self) -> StoreStats {
        StoreStats {
            batches: self.batches.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            apply_micros: self.apply_micros.load(Ordering::Relaxed),
            flush_micros: self.flush_micros.load(Ordering::Relaxed),
        }
    }
}

/// [`super::Store::apply`] for a key-value store.
pub(crate) fn apply(
    kv: &dyn KvWrite,
    batch: &[Commit],
) -> Result<Vec<Result<CommitApplied, CommitRefusal>>, StoreError> {
    let _writer = kv.writer().lock().expect("store writer lock poisoned");
    let started = Instant::now();
    let mut staged = Staged::new(kv);
    let results = batch
        .iter()
        .map(|c| staged.apply(c))
        .collect::<Result<Vec<_>, _>>()?;
    let writes = staged.writes;
    if !writes.is_empty() {
        kv.write(writes)?;
    }
    let counters = kv.counters();
    counters.batches.fetch_add(1, Ordering::Relaxed);
    let applied = results.iter().filter(|r| r.is_ok()).count() as u64;
    counters.commits.fetch_add(applied, Ordering::Relaxed);
    let micros = started.elapsed().as_micros() as u64;
    counters.apply_micros.fetch_add(micros, Ordering::Relaxed);
    Ok(results)
}

/// [`super::Store::purge_requests`] for a key-value store.
pub(crate) fn purge_requests(
    kv: &dyn KvWrite,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<usize, StoreError> {
    let _writer = kv.writer().lock().expect("store writer lock poisoned");
    let mut staged = Staged::new(kv);
    let purged = staged.purge_requests(now, limit)?;
    let writes = staged.writes;
    if !writes.is_empty() {
        kv.write(writes)?;
    }
    Ok(purged)
}

/// The read methods of [`super::Store`], delegated to this module; used inside
/// `impl Store for …` of each key-value store.
macro_rules! kv_store_reads {
    () => {
        fn instance(
            &self,
            id: $crate::model::InstanceId,
        ) -> Result<Option<$crate::model::Instance>, $crate::store::StoreError> {
            $crate::store::kv::instance(self, id)
        }

        fn request(
            &self,
            request_id: &str,
        ) -> Result<Option<$crate::store::RequestRecord>, $crate::store::StoreError> {
            $crate::store::kv::request(self, request_id)
        }

        fn list(
            &self,
            query: &$crate::store::ListQuery,
        ) -> Result<$crate::store::Page<$crate::model::Instance>, $crate::store::StoreError> {
            $crate::store::kv::list(self, query)
        }

        fn history(
            &self,
            id: $crate::model::InstanceId,
            after_version: u64,
            limit: usize,
        ) -> Result<Vec<$crate::model::HistoryEntry>, $crate::store::StoreError> {
            $crate::store::kv::history(self, id, after_version, limit)
        }

        fn children(
            &self,
            parent: $crate::model::InstanceId,
            after: Option<$crate::model::InstanceId>,
            limit: usize,
        ) -> Result<Vec<$crate::model::InstanceId>, $crate::store::StoreError> {
            $crate::store::kv::children(self, parent, after, limit)
        }

        fn counter(&self, counter: &str, key: &str) -> Result<u64, $crate::store::StoreError> {
            $crate::store::kv::counter(self, counter, key)
        }

        fn balance(
            &self,
            balance: &str,
            key: &str,
        ) -> Result<rust_decimal::Decimal, $crate::store::StoreError> {
            $crate::store::kv::balance(self, balance, key)
        }

        fn rule_sets(
            &self,
        ) -> Result<Vec<$crate::store::RuleSetRecord>, $crate::store::StoreError> {
            $crate::store::kv::rule_sets(self)
        }

        fn add_rule_set(
            &self,
            record: &$crate::store::RuleSetRecord,
        ) -> Result<(), $crate::store::StoreError> {
            $crate::store::kv::add_rule_set(self, record)?;
            $crate::store::Store::flush(self)
        }

        fn active_rule_set(&self) -> Result<Option<u32>, $crate::store::StoreError> {
            $crate::store::kv::active_rule_set(self)
        }

        fn set_active_rule_set(
            &self,
            number: u32,
            at: chrono::DateTime<chrono::Utc>,
            by: &str,
        ) -> Result<$crate::store::RuleSetActivation, $crate::store::StoreError> {
            let activation = $crate::store::kv::set_active_rule_set(self, number, at, by)?;
            $crate::store::Store::flush(self)?;
            Ok(activation)
        }

        fn rule_set_activations(
            &self,
        ) -> Result<Vec<$crate::store::RuleSetActivation>, $crate::store::StoreError> {
            $crate::store::kv::rule_set_activations(self)
        }

        fn rule_set(
            &self,
            number: u32,
        ) -> Result<Option<$crate::store::RuleSetRecord>, $crate::store::StoreError> {
            $crate::store::kv::rule_set(self, number)
        }

        fn rule_set_request(
            &self,
            request_id: &str,
        ) -> Result<Option<$crate::store::RuleSetRequestRecord>, $crate::store::StoreError> {
            $crate::store::kv::rule_set_request(self, request_id)
        }

        fn put_rule_set_request(
            &self,
            record: &$crate::store::RuleSetRequestRecord,
        ) -> Result<(), $crate::store::StoreError> {
            $crate::store::kv::put_rule_set_request(self, record)?;
            $crate::store::Store::flush(self)
        }

        fn job(
            &self,
            id: $crate::job::JobId,
        ) -> Result<Option<$crate::job::Job>, $crate::store::StoreError> {
            $crate::store::kv::job(self, id)
        }

        fn activatable_jobs(
            &self,
            job_type: &str,
            now: chrono::DateTime<chrono::Utc>,
            limit: usize,
        ) -> Result<Vec<$crate::job::Job>, $crate::store::StoreError> {
            $crate::store::kv::activatable_jobs(self, job_type, now, limit)
        }

        fn job_backlog(&self, limit: usize) -> Result<usize, $crate::store::StoreError> {
            $crate::store::kv::job_backlog(self, limit)
        }

        fn jobs_of(
            &self,
            instance: $crate::model::InstanceId,
            after: Option<$crate::job::JobId>,
            limit: usize,
        ) -> Result<Vec<$crate::job::Job>, $crate::store::StoreError> {
            $crate::store::kv::jobs_of(self, instance, after, limit)
        }

        fn jobs_after(
            &self,
            after: Option<$crate::job::JobId>,
            limit: usize,
        ) -> Result<Vec<$crate::job::Job>, $crate::store::StoreError> {
            $crate::store::kv::jobs_after(self, after, limit)
        }

        fn due_timers(
            &self,
            now: chrono::DateTime<chrono::Utc>,
            limit: usize,
        ) -> Result<Vec<$crate::model::DueTimer>, $crate::store::StoreError> {
            $crate::store::kv::due_timers(self, now, limit)
        }

        fn feed(
            &self,
            after: u64,
            limit: usize,
            max_bytes: usize,
        ) -> Result<Vec<$crate::feed::FeedEvent>, $crate::store::StoreError> {
            $crate::store::kv::feed(self, after, limit, max_bytes)
        }

        fn feed_bounds(&self) -> Result<(u64, u64), $crate::store::StoreError> {
            $crate::store::kv::feed_bounds(self)
        }

        fn purge_feed(
            &self,
            before: chrono::DateTime<chrono::Utc>,
            limit: usize,
        ) -> Result<usize, $crate::store::StoreError> {
            $crate::store::kv::purge_feed(self, before, limit)
        }

        fn apply(
            &self,
            batch: &[$crate::store::Commit],
        ) -> Result<
            Vec<Result<$crate::store::CommitApplied, $crate::store::CommitRefusal>>,
            $crate::store::StoreError,
        > {
            $crate::store::kv::apply(self, batch)
        }

        fn purge_requests(
            &self,
            now: chrono::DateTime<chrono::Utc>,
            limit: usize,
        ) -> Result<usize, $crate::store::StoreError> {
            $crate::store::kv::purge_requests(self, now, limit)
        }

        fn stats(&self) -> $crate::store::StoreStats {
            $crate::store::kv::KvWrite::counters(self).snapshot()
        }

        fn export(
            &self,
            out: &mut dyn std::io::Write,
            now: chrono::DateTime<chrono::Utc>,
        ) -> Result<$crate::store::BackupSummary, $crate::store::StoreError> {
            $crate::store::backup::export(self, out, now)
        }

        fn import(
            &self,
            input: &mut dyn std::io::BufRead,
        ) -> Result<$crate::store::BackupSummary, $crate::store::StoreError> {
            let summary = $crate::store::backup::import(self, input)?;
            $crate::store::Store::flush(self)?;
            Ok(summary)
        }

        fn credential(
            &self,
            token_sha256: &[u8; 32],
        ) -> Result<Option<$crate::credential::Credential>, $crate::store::StoreError> {
            $crate::store::kv::credential(self, token_sha256)
        }

        fn credential_by_id(
            &self,
            id: &str,
        ) -> Result<Option<$crate::credential::Credential>, $crate::store::StoreError> {
            $crate::store::kv::credential_by_id(self, id)
        }

        fn credentials(
            &self,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<$crate::credential::Credential>, $crate::store::StoreError> {
            $crate::store::kv::credentials(self, after, limit)
        }

        fn put_credentials(
            &self,
            credentials: &[$crate::credential::Credential],
        ) -> Result<(), $crate::store::StoreError> {
            $crate::store::kv::put_credentials(self, credentials)?;
            $crate::store::Store::flush(self)
        }
    };
}
pub(crate) use kv_store_reads;

/// What the checks of one commit found: what it replaces and the counter values it draws.
struct Checked {
    expired_request: Option<RequestRecord>,
    previous: Vec<Option<records::InstanceHead>>,
    previous_jobs: Vec<Option<Job>>,
    drawn: Vec<CounterValue>,
}

/// The commit's instances and history with its counter assignments written in: the drawn
/// value goes into the first instance's data and the first history entry's changes.
fn assigned(commit: &Commit, drawn: &[CounterValue]) -> (Vec<Instance>, Vec<HistoryEntry>) {
    let mut writes: Vec<Instance> = commit.writes.iter().map(|w| w.instance.clone()).collect();
    let mut history: Vec<HistoryEntry> = commit.history.clone();
    for (draw, value) in commit.counters.iter().zip(drawn) {
        let Some(assign) = &draw.assign else { continue };
        let Some(first) = writes.first_mut() else {
            continue;
        };
        assign.write(&mut first.data, value.value);
        // The history records the whole top-level value the path is in (a merge patch).
        let top = assign.top();
        let written = first.data.get(top).cloned().unwrap_or_default();
        if let Some(entry) = history.first_mut() {
            if !entry.changes.is_object() {
                entry.changes = serde_json::json!({});
            }
            if let Some(obj) = entry.changes.as_object_mut() {
                obj.insert(top.to_string(), written);
            }
        }
    }
    (writes, history)
}

/// Writes staged over a base map. `None` deletes.
pub(crate) struct Staged<'a> {
    base: &'a dyn KvRead,
    pub writes: Writes,
    /// The feed head as staged so far in this batch.
    feed_head: Option<u64>,
}

impl<'a> Staged<'a> {
    pub fn new(base: &'a dyn KvRead) -> Self {
        Staged {
            base,
            writes: BTreeMap::new(),
            feed_head: None,
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => self.base.get(key),
        }
    }

    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Checks `commit` against the staged view and, if it passes, stages its writes.
    pub fn apply(
        &mut self,
        commit: &Commit,
    ) -> Result<Result<CommitApplied, CommitRefusal>, StoreError> {
        // Checks first: nothing is staged unless every check passes.
        let checked = match self.check(commit)? {
            Ok(checked) => checked,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let (writes, history) = assigned(commit, &checked.drawn);
        for (draw, value) in commit.counters.iter().zip(&checked.drawn) {
            self.put(
                keys::counter_key(&draw.counter, &draw.key),
                encode(&CounterRecord { value: value.value }),
            );
        }
        for change in &commit.balances {
            let value = self.balance(&change.balance, &change.key)? + change.amount;
            self.put(
                keys::balance_key(&change.balance, &change.key),
                encode(&records::BalanceRecord { value }),
            );
        }
        for (instance, old) in writes.iter().zip(&checked.previous) {
            self.stage_instance(instance, old.as_ref());
        }
        for (write, old) in commit.jobs.iter().zip(&checked.previous_jobs) {
            self.stage_job(&write.job, old.as_ref());
        }
        for entry in &history {
            self.put(
                keys::history_key(entry.instance, entry.version),
                encode(entry),
            );
        }
        if let Some(request) = &commit.request {
            if let Some(old) = &checked.expired_request {
                self.delete(keys::request_expiry_key(old));
            }
            let mut request = request.clone();
            request.outcome.counters = checked.drawn.clone();
            self.put(keys::request_expiry_key(&request), Vec::new());
            self.put(keys::request_key(&request.request_id), encode(&request));
        }
        let last_offset = self.stage_events(commit, &checked.drawn)?;
        Ok(Ok(CommitApplied {
            counters: checked.drawn,
            last_offset,
        }))
    }

    /// Every check of `commit` against the staged view: its request id, the versions of the
    /// instances and jobs it writes, and its counter draws.
    fn check(&self, commit: &Commit) -> Result<Result<Checked, CommitRefusal>, StoreError> {
        let mut expired_request = None;
        if let Some(request) = &commit.request {
            let key = keys::request_key(&request.request_id);
            if let Some(bytes) = self.get(&key)? {
                let existing: RequestRecord = decode(&key, &bytes)?;
                if existing.expires_at > commit.at {
                    return Ok(Err(CommitRefusal::DuplicateRequest(Box::new(existing))));
                }
                expired_request = Some(existing);
            }
        }
        let mut previous = Vec::with_capacity(commit.writes.len());
        for write in &commit.writes {
            let key = keys::instance_key(write.instance.id);
            let current = match self.get(&key)? {
                Some(bytes) => Some(records::decode_head(&key, &bytes)?),
                None => None,
            };
            let current_version = current.as_ref().map(|i| i.version);
            if current_version != write.expected_version {
                return Ok(Err(CommitRefusal::VersionConflict {
                    instance: write.instance.id,
                    expected: write.expected_version,
                    current: current_version,
                }));
            }
            previous.push(current);
        }
        let previous_jobs = match self.check_jobs(commit)? {
            Ok(jobs) => jobs,
            Err(refusal) => return Ok(Err(refusal)),
        };
        for check in &commit.counter_checks {
            let current = self.counter(&check.counter, &check.key)?;
            if current != check.value {
                return Ok(Err(CommitRefusal::CounterChanged {
                    counter: check.counter.clone(),
                    key: check.key.clone(),
                    read: check.value,
                    current,
                }));
            }
        }
        for check in &commit.balance_checks {
            let current = self.balance(&check.balance, &check.key)?;
            if current != check.value {
                return Ok(Err(CommitRefusal::BalanceChanged {
                    balance: check.balance.clone(),
                    key: check.key.clone(),
                    read: check.value,
                    current,
                }));
            }
        }
        let drawn = match self.draw(commit)? {
            Ok(drawn) => drawn,
            Err(refusal) => return Ok(Err(refusal)),
        };
        Ok(Ok(Checked {
            expired_request,
            previous,
            previous_jobs,
            drawn,
        }))
    }

    /// The jobs `commit` writes as they are now, if each has the version it expects.
    fn check_jobs(
        &self,
        commit: &Commit,
    ) -> Result<Result<Vec<Option<Job>>, CommitRefusal>, StoreError> {
        let mut previous_jobs = Vec::with_capacity(commit.jobs.len());
        for write in &commit.jobs {
            let key = keys::job_key(write.job.id);
            let current: Option<Job> = match self.get(&key)? {
                Some(bytes) => Some(decode(&key, &bytes)?),
                None => None,
            };
            let current_version = current.as_ref().map(|j| j.version);
            if current_version != write.expected_version {
                return Ok(Err(CommitRefusal::JobConflict {
                    job: write.job.id,
                    expected: write.expected_version,
                    current: current_version,
                }));
            }
            previous_jobs.push(current);
        }
        Ok(Ok(previous_jobs))
    }

    /// The values `commit`'s counter draws take, unless one would pass its limit. Counter
    /// rules live here, in the store's atomic write, so two concurrent draws cannot share a
    /// value.
    fn draw(
        &self,
        commit: &Commit,
    ) -> Result<Result<Vec<CounterValue>, CommitRefusal>, StoreError> {
        let mut drawn: Vec<CounterValue> = Vec::with_capacity(commit.counters.len());
        for draw in &commit.counters {
            let base = match drawn
                .iter()
                .rev()
                .find(|d| d.counter == draw.counter && d.key == draw.key)
            {
                Some(d) => d.value,
                None => self.counter(&draw.counter, &draw.key)?,
            };
            if draw.give_back {
                drawn.push(CounterValue {
                    counter: draw.counter.clone(),
                    key: draw.key.clone(),
                    value: base.saturating_sub(1),
                });
                continue;
            }
            let value = base + 1;
            if let Some(limit) = draw.limit {
                if value > limit {
                    return Ok(Err(CommitRefusal::CounterLimit {
                        counter: draw.counter.clone(),
                        key: draw.key.clone(),
                        limit,
                    }));
                }
            }
            drawn.push(CounterValue {
                counter: draw.counter.clone(),
                key: draw.key.clone(),
                value,
            });
        }
        Ok(Ok(drawn))
    }

    /// Stages an instance with its index entries and due timers; only the keys that change
    /// are written (most commands keep the definition and business key, a self-loop keeps
    /// the state too).
    pub(crate) fn stage_instance(
        &mut self,
        instance: &Instance,
        old: Option<&records::InstanceHead>,
    ) {
        let new_keys = keys::index_keys(&records::InstanceHead::of(instance));
        let old_keys = match old {
            Some(old) => keys::index_keys(old),
            None => {
                if let Some(parent) = instance.parent {
                    self.put(keys::child_key(parent, instance.id), Vec::new());
                }
                Vec::new()
            }
        };
        for k in &old_keys {
            if !new_keys.contains(k) {
                self.delete(k.clone());
            }
        }
        for k in &new_keys {
            if !old_keys.contains(k) {
                self.put(k.clone(), Vec::new());
            }
        }
        let old_timers = old.map(|o| o.timers.as_slice()).unwrap_or(&[]);
        for t in old_timers {
            if !instance.timers.contains(t) {
                self.delete(keys::timer_key(instance.id, t));
            }
        }
        for t in &instance.timers {
            if !old_timers.contains(t) {
                let due = crate::model::DueTimer {
                    instance: instance.id,
                    timer: t.clone(),
                };
                self.put(keys::timer_key(instance.id, t), encode(&due));
            }
        }
        self.put(keys::instance_key(instance.id), encode(instance));
    }

    /// Stages a job with its activation-index entry.
    pub(crate) fn stage_job(&mut self, job: &Job, old: Option<&Job>) {
        let old_key = old.and_then(keys::activatable_key);
        let new_key = keys::activatable_key(job);
        if old_key != new_key {
            if let Some(k) = old_key {
                self.delete(k);
            }
            if let Some(k) = new_key {
                self.put(k, job.id.0.as_bytes().to_vec());
            }
        }
        if old.is_none() {
            let mut k = keys::jobs_of_prefix(job.instance);
            k.extend_from_slice(job.id.0.as_bytes());
            self.put(k, Vec::new());
        }
        self.put(keys::job_key(job.id), encode(job));
    }

    /// Numbers and stages `commit`'s events after the feed head; returns the last offset (0
    /// when it has none). Counter assignments reach the first event's post-change data too.
    fn stage_events(&mut self, commit: &Commit, drawn: &[CounterValue]) -> Result<u64, StoreError> {
        if commit.events.is_empty() {
            return Ok(0);
        }
        let mut head = match self.feed_head {
            Some(h) => h,
            None => meta(self.base, keys::FEED_HEAD_KEY)?.unwrap_or(0),
        };
        let assigned: Vec<_> = commit
            .counters
            .iter()
            .zip(drawn)
            .filter_map(|(d, v)| d.assign.as_ref().map(|a| (a, v.value)))
            .collect();
        for (i, draft) in commit.events.iter().enumerate() {
            head += 1;
            let event = if i == 0 && !assigned.is_empty() {
                let mut draft = draft.clone();
                if let Some(data) = draft.data.get_mut("data") {
                    for (assign, value) in &assigned {
                        assign.write(data, *value);
                    }
                }
                draft.at_offset(head)
            } else {
                draft.at_offset(head)
            };
            self.put(keys::feed_key(head), encode(&event));
        }
        self.feed_head = Some(head);
        self.put(
            keys::FEED_HEAD_KEY.to_vec(),
            encode(&CounterRecord { value: head }),
        );
        Ok(head)
    }

    fn counter(&self, counter: &str, key: &str) -> Result<u64, StoreError> {
        let k = keys::counter_key(counter, key);
        Ok(u64_record(&k, self.get(&k)?)?.unwrap_or(0))
    }

    fn balance(&self, balance: &str, key: &str) -> Result<rust_decimal::Decimal, StoreError> {
        let k = keys::balance_key(balance, key);
        balance_record(&k, self.get(&k)?)
    }

    /// Stages the deletion of up to `limit` request records expired at `now`.
    pub fn purge_requests(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let now_millis = now.timestamp_millis().max(0) as u64;
        let mut purged = 0;
        for (key, _) in self.base.scan(&[prefix::REQUEST_EXPIRY], None, limit)? {
            let Some(millis) = key
                .get(1..9)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
            else {
                return Err(StoreError::Corrupt {
                    key: keys::printable(&key),
                    message: "expiry key too short".into(),
                });
            };
            if millis > now_millis {
                break;
            }
            let request_id = String::from_utf8_lossy(&key[9..]).into_owned();
            let rkey = keys::request_key(&request_id);
            if let Some(bytes) = self.get(&rkey)? {
                let record: RequestRecord = decode(&rkey, &bytes)?;
                if record.expires_at <= now {
                    self.delete(rkey);
                    purged += 1;
                }
            }
            self.delete(key);
        }
        Ok(purged)
    }
}

/// A meta value (a `u64` kept as a counter record).
/// The value of a `u64` record (a counter or a meta value) read at `key`.
fn u64_record(key: &[u8], bytes: Option<Vec<u8>>) -> Result<Option<u64>, StoreError> {
    bytes
        .map(|b| decode::<CounterRecord>(key, &b).map(|c| c.value))
        .transpose()
}

fn meta(kv: &dyn KvRead, key: &[u8]) -> Result<Option<u64>, StoreError> {
    u64_record(key, kv.get(key)?)
}

pub(crate) fn feed(
    kv: &dyn KvRead,
    after: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<FeedEvent>, StoreError> {
    let start = keys::feed_key(after);
    kv.scan_bounded(&[prefix::FEED], Some(&start), limit, max_bytes)?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

pub(crate) fn feed_bounds(kv: &dyn KvRead) -> Result<(u64, u64), StoreError> {
    let head = meta(kv, keys::FEED_HEAD_KEY)?.unwrap_or(0);
    let tail = meta(kv, keys::FEED_TAIL_KEY)?.unwrap_or(1);
    Ok((tail, head))
}

/// [`super::Store::purge_feed`] for a key-value store.
pub(crate) fn purge_feed(
    kv: &dyn KvWrite,
    before: DateTime<Utc>,
    limit: usize,
) -> Result<usize, StoreError> {
    let _writer = kv.writer().lock().expect("store writer lock poisoned");
    let (tail, _) = feed_bounds(kv)?;
    let mut writes = Writes::new();
    let mut next_tail = tail;
    for event in feed(kv, tail.saturating_sub(1), limit, usize::MAX)? {
        if event.time >= before {
            break;
        }
        writes.insert(keys::feed_key(event.offset), None);
        next_tail = event.offset + 1;
    }
    let purged = writes.len();
    if purged > 0 {
        writes.insert(
            keys::FEED_TAIL_KEY.to_vec(),
            Some(encode(&CounterRecord { value: next_tail })),
        );
        kv.write(writes)?;
    }
    Ok(purged)
}

pub(crate) fn rule_sets(kv: &dyn KvRead) -> Result<Vec<super::RuleSetRecord>, StoreError> {
    kv.scan(&[prefix::RULE_SET], None, RULE_SETS_MAX)?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

pub(crate) fn add_rule_set(
    kv: &dyn KvWrite,
    record: &super::RuleSetRecord,
) -> Result<(), StoreError> {
    let _writer = kv.writer().lock().expect("store writer lock poisoned");
    let key = keys::rule_set_key(record.number);
    if kv.get(&key)?.is_some() {
        return Err(StoreError::Io(format!(
            "rule set #{} already exists",
            record.number
        )));
    }
    if record.number as usize > RULE_SETS_MAX {
        return Err(StoreError::Io(format!(
            "a store keeps at most {RULE_SETS_MAX} rule-set versions"
        )));
    }
    kv.write(Writes::from([(key, Some(encode(record)))]))
}

pub(crate) fn active_rule_set(kv: &dyn KvRead) -> Result<Option<u32>, StoreError> {
    Ok(meta(kv, keys::ACTIVE_RULE_SET_KEY)?.map(|n| n as u32))
}

pub(crate) fn set_active_rule_set(
    kv: &dyn KvWrite,
    number: u32,
    at: DateTime<Utc>,
    by: &str,
) -> Result<super::RuleSetActivation, StoreError> {
    let _writer = kv.writer().lock().expect("store writer lock poisoned");
    let last = kv
        .scan_back(&[prefix::ACTIVATION], 1)?
        .pop()
        .map(|(k, v)| decode::<super::RuleSetActivation>(&k, &v))
        .transpose()?;
    let activation = super::RuleSetActivation {
        seq: last.map_or(1, |a| a.seq + 1),
        number,
        at,
        by: by.to_string(),
    };
    kv.write(Writes::from([
        (
            keys::ACTIVE_RULE_SET_KEY.to_vec(),
            Some(encode(&CounterRecord {
                value: u64::from(number),
            })),
        ),
        (
            keys::activation_key(activation.seq),
            Some(encode(&activation)),
        ),
    ]))?;
    Ok(activation)
}

/// The latest `RULE_SETS_MAX` activations, oldest first.
pub(crate) fn rule_set_activations(
    kv: &dyn KvRead,
) -> Result<Vec<super::RuleSetActivation>, StoreError> {
    kv.scan_back(&[prefix::ACTIVATION], RULE_SETS_MAX)?
        .into_iter()
        .rev()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

pub(crate) fn rule_set(
    kv: &dyn KvRead,
    number: u32,
) -> Result<Option<super::RuleSetRecord>, StoreError> {
    let key = keys::rule_set_key(number);
    kv.get(&key)?.map(|b| decode(&key, &b)).transpose()
}

pub(crate) fn rule_set_request(
    kv: &dyn KvRead,
    request_id: &str,
) -> Result<Option<super::RuleSetRequestRecord>, StoreError> {
    let key = keys::rule_set_request_key(request_id);
    kv.get(&key)?.map(|b| decode(&key, &b)).transpose()
}

pub(crate) fn put_rule_set_request(
    kv: &dyn KvWrite,
    record: &super::RuleSetRequestRecord,
) -> Result<(), StoreError> {
    let _writer = kv.writer().lock().expect("store writer lock poisoned");
    kv.write(Writes::from([(
        keys::rule_set_request_key(&record.request_id),
        Some(encode(record)),
    )]))
}

pub(crate) fn job(kv: &dyn KvRead, id: JobId) -> Result<Option<Job>, StoreError> {
    let key = keys::job_key(id);
    kv.get(&key)?.map(|b| decode(&key, &b)).transpose()
}

pub(crate) fn job_backlog(kv: &dyn KvRead, limit: usize) -> Result<usize, StoreError> {
    Ok(kv
        .scan(&keys::activation_index_prefix(), None, limit)?
        .len())
}

pub(crate) fn activatable_jobs(
    kv: &dyn KvRead,
    job_type: &str,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    let prefix = keys::activatable_prefix(job_type);
    let now_millis = now.timestamp_millis().max(0) as u64;
    let mut out = Vec::new();
    for (k, _) in kv.scan(&prefix, None, limit)? {
        let at = k
            .get(prefix.len()..prefix.len() + 8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| StoreError::Corrupt {
                key: keys::printable(&k),
                message: "activation key too short".into(),
            })?;
        if at > now_millis {
            break;
        }
        let id = JobId(keys::id_suffix(&k)?.0);
        match job(kv, id)? {
            Some(j) if j.can_lease(now) => out.push(j),
            // Leased or finished by a commit between the index scan and this read: the
            // index entry was already stale; not a candidate.
            Some(_) => {}
            None => {
                return Err(StoreError::Corrupt {
                    key: keys::printable(&k),
                    message: format!("activation index names job {id}, which does not exist"),
                })
            }
        }
    }
    Ok(out)
}

pub(crate) fn jobs_of(
    kv: &dyn KvRead,
    instance: InstanceId,
    after: Option<JobId>,
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    let prefix = keys::jobs_of_prefix(instance);
    let after = after.map(|id| {
        let mut k = prefix.clone();
        k.extend_from_slice(id.0.as_bytes());
        k
    });
    let mut out = Vec::new();
    for (k, _) in kv.scan(&prefix, after.as_deref(), limit)? {
        let id = JobId(keys::id_suffix(&k)?.0);
        if let Some(j) = job(kv, id)? {
            out.push(j);
        }
    }
    Ok(out)
}

pub(crate) fn jobs_after(
    kv: &dyn KvRead,
    after: Option<JobId>,
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    let after = after.map(keys::job_key);
    kv.scan(&[keys::prefix::JOB], after.as_deref(), limit)?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

pub(crate) fn due_timers(
    kv: &dyn KvRead,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<crate::model::DueTimer>, StoreError> {
    let mut out = Vec::new();
    for (k, v) in kv.scan(&[prefix::TIMER], None, limit)? {
        let due: crate::model::DueTimer = decode(&k, &v)?;
        if due.timer.due > now {
            break;
        }
        out.push(due);
    }
    Ok(out)
}

/// Read-side queries shared by the key-value stores.
pub(crate) fn instance(kv: &dyn KvRead, id: InstanceId) -> Result<Option<Instance>, StoreError> {
    let key = keys::instance_key(id);
    kv.get(&key)?.map(|b| decode(&key, &b)).transpose()
}

pub(crate) fn request(
    kv: &dyn KvRead,
    request_id: &str,
) -> Result<Option<RequestRecord>, StoreError> {
    let key = keys::request_key(request_id);
    kv.get(&key)?.map(|b| decode(&key, &b)).transpose()
}

pub(crate) fn counter(kv: &dyn KvRead, counter: &str, key: &str) -> Result<u64, StoreError> {
    Ok(meta(kv, &keys::counter_key(counter, key))?.unwrap_or(0))
}

pub(crate) fn balance(
    kv: &dyn KvRead,
    balance: &str,
    key: &str,
) -> Result<rust_decimal::Decimal, StoreError> {
    let k = keys::balance_key(balance, key);
    balance_record(&k, kv.get(&k)?)
}

/// The value of a balance record read at `key` (0 when there is none).
fn balance_record(key: &[u8], bytes: Option<Vec<u8>>) -> Result<rust_decimal::Decimal, StoreError> {
    Ok(bytes
        .map(|b| decode::<records::BalanceRecord>(key, &b))
        .transpose()?
        .map(|r| r.value)
        .unwrap_or_default())
}

pub(crate) fn list(kv: &dyn KvRead, query: &ListQuery) -> Result<Page<Instance>, StoreError> {
    let limit = query.page_size.max(1);
    let mut items = Vec::with_capacity(limit.min(1024));
    let mut more = false;
    match &query.definition {
        None => {
            let after = query.after.map(keys::instance_key);
            let rows = kv.scan(&[prefix::INSTANCE], after.as_deref(), limit + 1)?;
            more = rows.len() > limit;
            for (key, value) in rows.into_iter().take(limit) {
                items.push(decode::<Instance>(&key, &value)?);
            }
        }
        Some(definition) => {
            let prefix = keys::index_prefix(
                definition,
                query.state.as_deref(),
                query.business_key.as_deref(),
            );
            let mut after = query.after.map(|id| {
                let mut k = prefix.clone();
                k.extend_from_slice(id.0.as_bytes());
                k
            });
            // With both a business key and a state the business-key index is scanned and the
            // state filtered here; business keys match few instances.
            'scan: loop {
                let rows = kv.scan(&prefix, after.as_deref(), limit + 1)?;
                let exhausted = rows.len() <= limit;
                for (key, _) in &rows {
                    let id = keys::id_suffix(key)?;
                    after = Some(key.clone());
                    let Some(found) = instance(kv, id)? else {
                        return Err(StoreError::Corrupt {
                            key: keys::printable(key),
                            message: format!("index names instance {id}, which does not exist"),
                        });
                    };
                    // Stores written before cancelled instances left the state index may still
                    // list them there.
                    if query.state.as_ref().is_some_and(|s| {
                        *s != found.state || found.status == crate::model::InstanceStatus::Cancelled
                    }) {
                        continue;
                    }
                    if items.len() == limit {
                        more = true;
                        break 'scan;
                    }
                    items.push(found);
                }
                if exhausted {
                    break;
                }
            }
        }
    }
    let next_page_token = if more {
        items.last().map(|i| i.id.to_string())
    } else {
        None
    };
    Ok(Page {
        items,
        next_page_token,
    })
}

pub(crate) fn history(
    kv: &dyn KvRead,
    id: InstanceId,
    after_version: u64,
    limit: usize,
) -> Result<Vec<HistoryEntry>, StoreError> {
    let after = keys::history_key(id, after_version);
    kv.scan(&keys::history_prefix(id), Some(&after), limit)?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

pub(crate) fn children(
    kv: &dyn KvRead,
    parent: InstanceId,
    after: Option<InstanceId>,
    limit: usize,
) -> Result<Vec<InstanceId>, StoreError> {
    let after = after.map(|a| keys::child_key(parent, a));
    kv.scan(&keys::children_prefix(parent), after.as_deref(), limit)?
        .iter()
        .map(|(k, _)| keys::id_suffix(k))
        .collect()
}

pub(crate) fn credential(
    kv: &dyn KvRead,
    token_sha256: &[u8; 32],
) -> Result<Option<crate::credential::Credential>, StoreError> {
    let key = keys::credential_key(token_sha256);
    kv.get(&key)?.map(|b| decode(&key, &b)).transpose()
}

pub(crate) fn credential_by_id(
    kv: &dyn KvRead,
    id: &str,
) -> Result<Option<crate::credential::Credential>, StoreError> {
    let Some(prefix) = keys::credential_id_prefix(id) else {
        return Ok(None);
    };
    kv.scan(&prefix, None, 1)?
        .into_iter()
        .next()
        .map(|(k, v)| decode(&k, &v))
        .transpose()
}

pub(crate) fn credentials(
    kv: &dyn KvRead,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<crate::credential::Credential>, StoreError> {
    let after = match after.and_then(keys::credential_id_prefix) {
        Some(mut k) => {
            k.extend_from_slice(&[0xff; 24]);
            Some(k)
        }
        None => None,
    };
    kv.scan(&[prefix::CREDENTIAL], after.as_deref(), limit)?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

pub(crate) fn put_credentials(
    kv: &dyn KvWrite,
    credentials: &[crate::credential::Credential],
) -> Result<(), StoreError> {
    let _writer = kv.writer().lock().expect("store writer lock poisoned");
    let mut writes = Writes::new();
    for c in credentials {
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(c.token_sha256.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
                .map_err(|_| StoreError::Io(format!("credential {} has a malformed hash", c.id)))?;
        }
        writes.insert(keys::credential_key(&hash), Some(encode(c)));
    }
    kv.write(writes)
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_least_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"w"), Some(b"x".to_vec()));
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[0x61, 0xff]), Some(vec![0x62]));
        assert_eq!(prefix_end(&[0x61, 0xfe]), Some(vec![0x61, 0xff]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
