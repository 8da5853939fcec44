//! The embedded default store on sled 0.34. The only module that knows sled.
//!
//! One sled tree holds every key space (`store::records`). Writes are serialized by a
//! writer lock: a batch is checked and staged in memory (`store::kv`) and applied with one
//! atomic `apply_batch`; flushing is separate and may overlap the next batch's apply. In [`Durability::Fsync`] mode the
//! log file is also `fdatasync`ed, because sled's flush only asks the kernel to write the
//! pages (`sync_file_range`) and does not flush the device cache or file metadata.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::backup::WriteTap;
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
    /// Free space kept on the store's disk: a batch that would leave less is refused before
    /// anything is written (`StoreError::Full`), because sled cannot recover from a full disk
    /// in-process. Writes resume once there is room. Keep it above the largest batch
    /// (`batch_max` × the largest command) plus sled's segment allocations.
    pub reserve_bytes: u64,
}

impl SledConfig {
    /// Defaults for `path`: fsync durability, 256 MiB cache, 128 MiB kept free.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SledConfig {
            path: path.into(),
            durability: Durability::Fsync,
            cache_bytes: 256 * 1024 * 1024,
            reserve_bytes: 128 * 1024 * 1024,
        }
    }
}

/// Stores this process closed, by path, with when. After the last handle to a sled database
/// is dropped, sled's background I/O threads can keep its file — and with it the file's
/// lock — open a little longer; on a loaded machine that was long enough for an immediate
/// reopen to fail now and then (`could not acquire lock`). An open of a path closed here
/// shortly before therefore waits for the lock; any other lock conflict (another process) is
/// reported at once.
static CLOSED: Mutex<BTreeMap<PathBuf, Instant>> = Mutex::new(BTreeMap::new());
/// How long after a close a reopen waits for sled's threads to let go.
const REOPEN_WAIT: Duration = Duration::from_secs(15);

fn lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// The sled-backed store.
pub struct SledStore {
    /// Where it lives (canonical), for [`CLOSED`].
    path: PathBuf,
    db: sled::Db,
    durability: Durability,
    /// Held while a batch is checked and applied: the store's single writer.
    writer: Mutex<()>,
    /// sled's log file, `fdatasync`ed in [`Durability::Fsync`] mode.
    log: File,
    counters: KvStats,
    tap: WriteTap,
    /// The store's directory and the free space to keep there.
    dir: PathBuf,
    reserve_bytes: u64,
    /// Blob files already synced (fsync mode): see [`SledStore::sync_new_blobs`].
    synced_blobs: Mutex<HashSet<OsString>>,
}

/// Bytes sled may write for every byte of a batch (its log, then the pages it rewrites).
const WRITE_AMPLIFICATION: u64 = 3;

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store at `config.path`.
    pub fn open(config: &SledConfig) -> Result<Self, StoreError> {
        let path = std::fs::canonicalize(&config.path).unwrap_or_else(|_| config.path.clone());
        let closed_at = CLOSED.lock().expect("lock poisoned").get(&path).copied();
        let wait_until = closed_at.map(|at| at + REOPEN_WAIT);
        let db = loop {
            let opened = sled::Config::new()
                .path(&config.path)
                .cache_capacity(config.cache_bytes)
                .mode(sled::Mode::HighThroughput)
                // The engine flushes after every batch; sled's own periodic flusher would only
                // add untracked fsyncs.
                .flush_every_ms(None)
                .open();
            match opened {
                Ok(db) => break db,
                Err(e) if lock_conflict(&e) => {
                    if wait_until.is_some_and(|until| Instant::now() < until) {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    return Err(StoreError::Io(format!(
                        "cannot open store at {}: it is already open (sled allows one open store per directory: is another process, e.g. a running server, using it?): {e}",
                        config.path.display()
                    )));
                }
                Err(e) => {
                    return Err(StoreError::Io(format!(
                        "cannot open store at {}: {e}",
                        config.path.display()
                    )))
                }
            }
        };
        if db
            .get(super::backup::IMPORT_MARKER_KEY)
            .map_err(io)?
            .is_some()
        {
            return Err(StoreError::Io(format!(
                "the store at {} holds an import that did not finish; delete the directory and import the backup again",
                config.path.display()
            )));
        }
        let path = std::fs::canonicalize(&config.path).unwrap_or(path);
        let log = File::open(config.path.join("db"))
            .map_err(|e| StoreError::Io(format!("cannot open the store's log file: {e}")))?;
        if config.durability == Durability::Fsync {
            sync_metadata(&config.path)?;
        }
        tracing::debug!(path = %config.path.display(), durability = ?config.durability, "opened sled store");
        let store = SledStore {
            path,
            db,
            durability: config.durability,
            writer: Mutex::new(()),
            log,
            counters: KvStats::default(),
            tap: WriteTap::default(),
            dir: config.path.clone(),
            reserve_bytes: config.reserve_bytes,
            synced_blobs: Mutex::default(),
        };
        if store.durability == Durability::Fsync {
            store.sync_new_blobs()?;
        }
        Ok(store)
    }
}

/// sled writes its `conf` file (segment size, format version) on creation without syncing it;
/// after a power cut it can come back empty (sled then warns and rewrites its defaults). In
/// fsync mode the engine syncs it, and the directory holding it, before it acknowledges
/// anything (found by the power-loss test, `engine/switchyard/tests/power_loss.rs`).
fn sync_metadata(dir: &Path) -> Result<(), StoreError> {
    let sync = |path: &Path| {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::Io(format!("cannot sync {}: {e}", path.display())))
    };
    sync(&dir.join("conf"))?;
    sync(dir)
}

impl Drop for SledStore {
    fn drop(&mut self) {
        let mut closed = CLOSED.lock().expect("lock poisoned");
        let now = Instant::now();
        // Keep the map small: entries older than the wait no longer matter.
        closed.retain(|_, at| now.duration_since(*at) < REOPEN_WAIT);
        closed.insert(self.path.clone(), now);
    }
}

impl KvRead for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan_bounded(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        for row in self.db.range::<Vec<u8>, _>((lower, Bound::Unbounded)) {
            let (k, v) = row.map_err(io)?;
            if !k.starts_with(prefix) || out.len() == limit || bytes >= max_bytes {
                break;
            }
            bytes = bytes.saturating_add(v.len());
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn scan_back(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for row in self.db.scan_prefix(prefix).rev().take(limit) {
            let (k, v) = row.map_err(io)?;
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

    fn tap(&self) -> &WriteTap {
        &self.tap
    }

    fn write_raw(&self, writes: Writes) -> Result<(), StoreError> {
        let bytes: u64 = writes
            .iter()
            .map(|(k, v)| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64)
            .sum();
        self.room_for(bytes.saturating_mul(WRITE_AMPLIFICATION))?;
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

impl SledStore {
    /// sled 0.34 writes a log item larger than a quarter of its segment (a value over about
    /// 128 KiB, or a leaf of up to 16 items consolidated past that) to its own file under
    /// `blobs/`, and never syncs it: after a power cut the log could point at a blob whose
    /// data is gone, and sled panics opening the store. In fsync mode every blob file not yet
    /// synced is synced, with the directory, before the log is (found by the power-loss test,
    /// `engine/switchyard/tests/power_loss.rs`, once the shipped rule set passed 128 KiB).
    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let dir = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(format!("cannot list {}: {e}", dir.display()))),
        };
        let mut synced = self.synced_blobs.lock().expect("blob set lock poisoned");
        let mut present = HashSet::new();
        let mut any = false;
        for entry in entries {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                File::open(entry.path())
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io(format!("cannot sync {}: {e}", entry.path().display())))?;
                any = true;
            }
            present.insert(name);
        }
        if any {
            File::open(&dir)
                .and_then(|f| f.sync_all())
                .map_err(|e| io(format!("cannot sync {}: {e}", dir.display())))?;
        }
        // Blobs sled has collected are gone from the set too, so it stays as small as the
        // directory.
        *synced = present;
        Ok(())
    }

    /// Refuses unless the disk has `bytes` plus the reserve free.
    fn room_for(&self, bytes: u64) -> Result<(), StoreError> {
        let available = fs2::available_space(&self.dir).map_err(io)?;
        let needed = self.reserve_bytes.saturating_add(bytes);
        if available < needed {
            return Err(StoreError::Full { available, needed });
        }
        Ok(())
    }
}

impl Store for SledStore {
    kv_store_reads!();

    fn writable(&self) -> Result<(), StoreError> {
        self.room_for(0)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        // In fsync mode no batch is applied while the log is made durable: a batch applied
        // meanwhile could write a blob (below) that the log's fdatasync would then point at
        // before the blob's own data is synced.
        let _writer = (self.durability == Durability::Fsync)
            .then(|| self.writer.lock().expect("store writer lock poisoned"));
        self.db.flush().map_err(io)?;
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        if self.durability == Durability::Fsync {
            self.sync_new_blobs()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_in_use_is_refused_at_once_and_a_closed_one_reopens_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SledConfig::new(dir.path());
        config.durability = Durability::Flush;
        config.cache_bytes = 1024 * 1024;
        let open = SledStore::open(&config).unwrap();
        let started = Instant::now();
        let Err(e) = SledStore::open(&config) else {
            panic!("opened twice")
        };
        assert!(e.to_string().contains("it is already open"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused without waiting for a close"
        );
        drop(open);
        for _ in 0..20 {
            drop(SledStore::open(&config).unwrap());
        }
    }
}
