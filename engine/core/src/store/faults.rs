//! Failpoints for tests (feature `testing`): a store that wraps another and, on demand, fails
//! or holds its writes — so tests can prove what the engine does when a flush or an apply
//! fails, or before a flush completes. Never used outside tests.

use std::sync::{Condvar, Mutex};

use chrono::{DateTime, Utc};

use super::{
    Commit, CommitApplied, CommitRefusal, ListQuery, Page, RequestRecord, RuleSetActivation,
    RuleSetRecord, RuleSetRequestRecord, Store, StoreError, StoreStats,
};
use crate::feed::FeedEvent;
use crate::job::{Job, JobId};
use crate::model::{DueTimer, HistoryEntry, Instance, InstanceId};

/// What the wrapped store is told to do wrong.
#[derive(Default)]
struct Faults {
    /// Fail every apply with this error while set.
    apply: Option<StoreError>,
    /// Fail every flush with this error while set.
    flush: Option<StoreError>,
    /// Hold every flush until released.
    hold_flushes: bool,
    /// Applies and flushes seen (attempted, failed or not).
    applies: u64,
    flushes: u64,
    /// The most commits one apply was given.
    largest_apply: usize,
}

/// A store that delegates to `inner` unless told to fail. See the module docs.
pub struct FaultyStore<S> {
    inner: S,
    faults: Mutex<Faults>,
    released: Condvar,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`, failing nothing yet.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            faults: Mutex::new(Faults::default()),
            released: Condvar::new(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().expect("faults lock poisoned")
    }

    /// Every apply fails with `error` from now on (`None`: applies work again).
    pub fn fail_applies(&self, error: Option<StoreError>) {
        self.faults().apply = error;
    }

    /// Every flush fails with `error` from now on (`None`: flushes work again).
    pub fn fail_flushes(&self, error: Option<StoreError>) {
        self.faults().flush = error;
    }

    /// Holds every flush (the caller blocks) until [`FaultyStore::release_flushes`].
    pub fn hold_flushes(&self) {
        self.faults().hold_flushes = true;
    }

    /// Lets held and later flushes through.
    pub fn release_flushes(&self) {
        self.faults().hold_flushes = false;
        self.released.notify_all();
    }

    /// Applies attempted so far.
    pub fn applies(&self) -> u64 {
        self.faults().applies
    }

    /// Flushes attempted so far.
    pub fn flushes(&self) -> u64 {
        self.faults().flushes
    }

    /// The most commits one apply was given so far.
    pub fn largest_apply(&self) -> usize {
        self.faults().largest_apply
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn instance(&self, id: InstanceId) -> Result<Option<Instance>, StoreError> {
        self.inner.instance(id)
    }
    fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        self.inner.request(request_id)
    }
    fn list(&self, query: &ListQuery) -> Result<Page<Instance>, StoreError> {
        self.inner.list(query)
    }
    fn history(
        &self,
        id: InstanceId,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        self.inner.history(id, after_version, limit)
    }
    fn children(
        &self,
        parent: InstanceId,
        after: Option<InstanceId>,
        limit: usize,
    ) -> Result<Vec<InstanceId>, StoreError> {
        self.inner.children(parent, after, limit)
    }
    fn counter(&self, counter: &str, key: &str) -> Result<u64, StoreError> {
        self.inner.counter(counter, key)
    }
    fn balance(&self, balance: &str, key: &str) -> Result<rust_decimal::Decimal, StoreError> {
        self.inner.balance(balance, key)
    }
    fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.inner.job(id)
    }
    fn activatable_jobs(
        &self,
        job_type: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.inner.activatable_jobs(job_type, now, limit)
    }
    fn job_backlog(&self, limit: usize) -> Result<usize, StoreError> {
        self.inner.job_backlog(limit)
    }
    fn jobs_of(
        &self,
        instance: InstanceId,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.inner.jobs_of(instance, after, limit)
    }
    fn jobs_after(&self, after: Option<JobId>, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.inner.jobs_after(after, limit)
    }
    fn rule_sets(&self) -> Result<Vec<RuleSetRecord>, StoreError> {
        self.inner.rule_sets()
    }
    fn rule_set(&self, number: u32) -> Result<Option<RuleSetRecord>, StoreError> {
        self.inner.rule_set(number)
    }
    fn add_rule_set(&self, record: &RuleSetRecord) -> Result<(), StoreError> {
        self.inner.add_rule_set(record)
    }
    fn active_rule_set(&self) -> Result<Option<u32>, StoreError> {
        self.inner.active_rule_set()
    }
    fn set_active_rule_set(
        &self,
        number: u32,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<RuleSetActivation, StoreError> {
        self.inner.set_active_rule_set(number, at, by)
    }
    fn rule_set_activations(&self) -> Result<Vec<RuleSetActivation>, StoreError> {
        self.inner.rule_set_activations()
    }
    fn rule_set_request(
        &self,
        request_id: &str,
    ) -> Result<Option<RuleSetRequestRecord>, StoreError> {
        self.inner.rule_set_request(request_id)
    }
    fn put_rule_set_request(&self, record: &RuleSetRequestRecord) -> Result<(), StoreError> {
        self.inner.put_rule_set_request(record)
    }
    fn due_timers(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueTimer>, StoreError> {
        self.inner.due_timers(now, limit)
    }
    fn feed(
        &self,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        self.inner.feed(after, limit, max_bytes)
    }
    fn feed_bounds(&self) -> Result<(u64, u64), StoreError> {
        self.inner.feed_bounds()
    }
    fn purge_feed(&self, before: DateTime<Utc>, limit: usize) -> Result<usize, StoreError> {
        self.inner.purge_feed(before, limit)
    }
    fn apply(
        &self,
        batch: &[Commit],
    ) -> Result<Vec<Result<CommitApplied, CommitRefusal>>, StoreError> {
        let fault = {
            let mut faults = self.faults();
            faults.applies += 1;
            faults.largest_apply = faults.largest_apply.max(batch.len());
            faults.apply.clone()
        };
        match fault {
            Some(error) => Err(error),
            None => self.inner.apply(batch),
        }
    }
    fn flush(&self) -> Result<(), StoreError> {
        let mut faults = self.faults();
        faults.flushes += 1;
        while faults.hold_flushes {
            faults = self.released.wait(faults).expect("faults lock poisoned");
        }
        if let Some(error) = faults.flush.clone() {
            return Err(error);
        }
        drop(faults);
        self.inner.flush()
    }
    fn purge_requests(&self, now: DateTime<Utc>, limit: usize) -> Result<usize, StoreError> {
        self.inner.purge_requests(now, limit)
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
    fn export(
        &self,
        out: &mut dyn std::io::Write,
        now: DateTime<Utc>,
    ) -> Result<super::BackupSummary, StoreError> {
        self.inner.export(out, now)
    }
    fn import(&self, input: &mut dyn std::io::BufRead) -> Result<super::BackupSummary, StoreError> {
        self.inner.import(input)
    }
    fn credential(
        &self,
        token_sha256: &[u8; 32],
    ) -> Result<Option<crate::credential::Credential>, StoreError> {
        self.inner.credential(token_sha256)
    }
    fn credential_by_id(
        &self,
        id: &str,
    ) -> Result<Option<crate::credential::Credential>, StoreError> {
        self.inner.credential_by_id(id)
    }
    fn credentials(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::credential::Credential>, StoreError> {
        self.inner.credentials(after, limit)
    }
    fn put_credentials(
        &self,
        credentials: &[crate::credential::Credential],
    ) -> Result<(), StoreError> {
        self.inner.put_credentials(credentials)
    }
    fn writable(&self) -> Result<(), StoreError> {
        match self.faults().apply.clone() {
            Some(error) => Err(error),
            None => self.inner.writable(),
        }
    }
}
