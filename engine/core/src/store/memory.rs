//! An in-memory store: same contract as the sled store, nothing survives the process. For
//! tests and for embedders who keep state elsewhere.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use chrono::{DateTime, Utc};

use super::kv::{self, Entry, KvRead, Staged};
use super::{
    Commit, CommitApplied, CommitRefusal, ListQuery, Page, RequestRecord, Store, StoreError,
    StoreStats,
};
use crate::model::{HistoryEntry, Instance, InstanceId};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    map: RwLock<Map>,
    writer: Mutex<()>,
    batches: AtomicU64,
    commits: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
        let mut map = self.map.write().expect("memory store lock poisoned");
        for (k, v) in writes {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
    }
}

impl KvRead for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .map
            .read()
            .expect("memory store lock poisoned")
            .get(key)
            .cloned())
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let map = self.map.read().expect("memory store lock poisoned");
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        Ok(map
            .range::<Vec<u8>, _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl Store for MemoryStore {
    fn instance(&self, id: InstanceId) -> Result<Option<Instance>, StoreError> {
        kv::instance(self, id)
    }

    fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        kv::request(self, request_id)
    }

    fn list(&self, query: &ListQuery) -> Result<Page<Instance>, StoreError> {
        kv::list(self, query)
    }

    fn history(
        &self,
        id: InstanceId,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        kv::history(self, id, after_version, limit)
    }

    fn children(
        &self,
        parent: InstanceId,
        after: Option<InstanceId>,
        limit: usize,
    ) -> Result<Vec<InstanceId>, StoreError> {
        kv::children(self, parent, after, limit)
    }

    fn counter(&self, counter: &str, key: &str) -> Result<u64, StoreError> {
        kv::counter(self, counter, key)
    }

    fn apply(
        &self,
        batch: &[Commit],
    ) -> Result<Vec<Result<CommitApplied, CommitRefusal>>, StoreError> {
        let _writer = self
            .writer
            .lock()
            .expect("memory store writer lock poisoned");
        let mut staged = Staged::new(self);
        let results = batch
            .iter()
            .map(|c| staged.apply(c))
            .collect::<Result<Vec<_>, _>>()?;
        let writes = staged.writes;
        self.write(writes);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.commits.fetch_add(
            results.iter().filter(|r| r.is_ok()).count() as u64,
            Ordering::Relaxed,
        );
        Ok(results)
    }

    fn purge_requests(&self, now: DateTime<Utc>, limit: usize) -> Result<usize, StoreError> {
        let _writer = self
            .writer
            .lock()
            .expect("memory store writer lock poisoned");
        let mut staged = Staged::new(self);
        let purged = staged.purge_requests(now, limit)?;
        let writes = staged.writes;
        self.write(writes);
        Ok(purged)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            batches: self.batches.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            flushes: 0,
            fsyncs: 0,
            apply_micros: 0,
            flush_micros: 0,
        }
    }
}
