//! An in-memory store: same contract as the sled store, nothing survives the process. For
//! tests and for embedders who keep state elsewhere.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, RwLock};

use super::backup::WriteTap;
use super::kv::{kv_store_reads, Entry, KvRead, KvStats, KvWrite, Writes};
use super::{Store, StoreError};

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    writer: Mutex<()>,
    counters: KvStats,
    tap: WriteTap,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl MemoryStore {
    /// Every key and value, in key order (for tests that compare whole stores).
    #[cfg(feature = "testing")]
    pub fn entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let map = self.map.read().expect("memory store lock poisoned");
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
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

    fn scan_bounded(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let map = self.map.read().expect("memory store lock poisoned");
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        for (k, v) in map.range::<Vec<u8>, _>((lower, Bound::Unbounded)) {
            if !k.starts_with(prefix) || out.len() == limit || bytes >= max_bytes {
                break;
            }
            bytes = bytes.saturating_add(v.len());
            out.push((k.clone(), v.clone()));
        }
        Ok(out)
    }

    fn scan_back(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let map = self.map.read().expect("memory store lock poisoned");
        let upper = match super::kv::prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        Ok(map
            .range::<Vec<u8>, _>((Bound::Included(prefix.to_vec()), upper))
            .rev()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl KvWrite for MemoryStore {
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
        let mut map = self.map.write().expect("memory store lock poisoned");
        for (k, v) in writes {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    kv_store_reads!();

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_stay_within_their_prefix_in_both_directions() {
        let store = MemoryStore::new();
        let key = |k: &[u8]| (k.to_vec(), Some(k.to_vec()));
        store
            .write(
                [
                    key(b"v1"),
                    key(b"w1"),
                    key(b"w2"),
                    key(b"x1"),
                    key(&[b'w', 0xff]),
                ]
                .into_iter()
                .collect(),
            )
            .unwrap();
        let keys = |entries: Vec<Entry>| entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(store.scan_back(b"w", 10).unwrap()),
            vec![vec![b'w', 0xff], b"w2".to_vec(), b"w1".to_vec()]
        );
        assert_eq!(
            keys(store.scan_back(b"w", 1).unwrap()),
            vec![vec![b'w', 0xff]]
        );
        assert_eq!(
            keys(store.scan(b"w", None, 10).unwrap()),
            vec![b"w1".to_vec(), b"w2".to_vec(), vec![b'w', 0xff]]
        );
    }
}
