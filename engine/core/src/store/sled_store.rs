//! The embedded default store on sled 0.34. The only module that knows sled.
//!
//! One sled tree holds every key space (`store::records`). Writes are serialized by a
//! writer lock: a batch is checked and staged in memory (`store::kv`) and applied with one
//! atomic `apply_batch`; flushing is separate and may overlap the next batch's apply. In [`Durability::Fsync`] mode the
//! log file is also `fdatasync`ed, because sled's flush only asks the kernel to write the
//! pages (`sync_file_range`) and does not flush the device cache or file metadata.

use std::fs::File;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::kv::{self, Entry, KvRead, Staged};
use super::{
    Commit, CommitApplied, CommitRefusal, Durability, ListQuery, Page, RequestRecord, Store,
    StoreError, StoreStats,
};
use crate::model::{HistoryEntry, Instance, InstanceId};

/// How to open a [`SledStore`].
#[derive(Clone, Debug)]
pub struct SledConfig {
    /// Directory of the store (created if missing). One process at a time.
    pub path: PathBuf,
    /// What an acknowledged commit survives.
    pub durability: Durability,
    /// sled's page cache size in bytes.
    pub cache_bytes: u64,
}

impl SledConfig {
    /// Defaults for `path`: fsync durability, 256 MiB cache.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SledConfig {
            path: path.into(),
            durability: Durability::Fsync,
            cache_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    durability: Durability,
    /// Held while a batch is checked and applied: the store's single writer.
    writer: Mutex<()>,
    /// sled's log file, `fdatasync`ed in [`Durability::Fsync`] mode.
    log: File,
    batches: AtomicU64,
    commits: AtomicU64,
    flushes: AtomicU64,
    fsyncs: AtomicU64,
    apply_micros: AtomicU64,
    flush_micros: AtomicU64,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store at `config.path`.
    pub fn open(config: &SledConfig) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // The engine flushes after every batch; sled's own periodic flusher would only add
            // untracked fsyncs.
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                StoreError::Io(format!(
                    "cannot open store at {}: {e}",
                    config.path.display()
                ))
            })?;
        let log = File::open(config.path.join("db"))
            .map_err(|e| StoreError::Io(format!("cannot open the store's log file: {e}")))?;
        tracing::debug!(path = %config.path.display(), durability = ?config.durability, "opened sled store");
        Ok(SledStore {
            db,
            durability: config.durability,
            writer: Mutex::new(()),
            log,
            batches: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            apply_micros: AtomicU64::new(0),
            flush_micros: AtomicU64::new(0),
        })
    }

    /// Applies `writes` atomically; `started` is when checking the batch began.
    fn write(
        &self,
        writes: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        started: Instant,
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.db.apply_batch(batch).map_err(io)?;
        self.apply_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl KvRead for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let mut out = Vec::new();
        for row in self.db.range::<Vec<u8>, _>((lower, Bound::Unbounded)) {
            let (k, v) = row.map_err(io)?;
            if !k.starts_with(prefix) || out.len() == limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

impl Store for SledStore {
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
        let _writer = self.writer.lock().expect("store writer lock poisoned");
        let started = Instant::now();
        let mut staged = Staged::new(self);
        let results = batch
            .iter()
            .map(|c| staged.apply(c))
            .collect::<Result<Vec<_>, _>>()?;
        let writes = staged.writes;
        self.write(writes, started)?;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.commits.fetch_add(
            results.iter().filter(|r| r.is_ok()).count() as u64,
            Ordering::Relaxed,
        );
        Ok(results)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        self.db.flush().map_err(io)?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if self.durability == Durability::Fsync {
            self.log.sync_data().map_err(io)?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.flush_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn purge_requests(&self, now: DateTime<Utc>, limit: usize) -> Result<usize, StoreError> {
        let _writer = self.writer.lock().expect("store writer lock poisoned");
        let mut staged = Staged::new(self);
        let purged = staged.purge_requests(now, limit)?;
        let writes = staged.writes;
        self.write(writes, Instant::now())?;
        Ok(purged)
    }

    fn stats(&self) -> StoreStats {
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
