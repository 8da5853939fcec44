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
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use super::kv::{kv_store_reads, Entry, KvRead, KvStats, KvWrite, Writes};
use super::{Durability, Store, StoreError};

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
    counters: KvStats,
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
            counters: KvStats::default(),
        })
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

impl KvWrite for SledStore {
    fn writer(&self) -> &Mutex<()> {
        &self.writer
    }

    fn counters(&self) -> &KvStats {
        &self.counters
    }

    fn write(&self, writes: Writes) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.db.apply_batch(batch).map_err(io)
    }
}

impl Store for SledStore {
    kv_store_reads!();

    fn flush(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        self.db.flush().map_err(io)?;
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        if self.durability == Durability::Fsync {
            self.log.sync_data().map_err(io)?;
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        let micros = started.elapsed().as_micros() as u64;
        self.counters
            .flush_micros
            .fetch_add(micros, Ordering::Relaxed);
        Ok(())
    }
}
