//! One batch of feed events applied to the projection's records: reads go through what the
//! batch already changed, and everything it changed is written in one atomic sled batch with
//! the offset it reaches.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::figures::DayFigures;
use crate::fold::Track;
use crate::{Alert, AnalyticsError};

/// The key of the feed offset the records reflect (u64, big-endian).
pub(crate) const OFFSET_KEY: &[u8] = b"m/offset";
/// The key of the projection's definition (version and time zone), as JSON.
pub(crate) const DEFINITION_KEY: &[u8] = b"m/projection";

/// The key of a day's figures: `d/2026-04-01`, so a date range is a key range.
pub(crate) fn day_key(day: NaiveDate) -> String {
    format!("d/{}", day.format("%Y-%m-%d"))
}

/// The key of a sales rep's figures of a day: `r/<rep>/2026-04-01`, with `%` and `/` in the
/// name escaped, so a rep's days are one key range too.
pub(crate) fn rep_day_key(rep: &str, day: NaiveDate) -> String {
    format!("{}{}", rep_prefix(rep), day.format("%Y-%m-%d"))
}

/// The prefix of a rep's day keys.
pub(crate) fn rep_prefix(rep: &str) -> String {
    format!("r/{}/", rep.replace('%', "%25").replace('/', "%2F"))
}

/// The key of an instance's tracking record.
fn track_key(instance: &str) -> String {
    format!("i/{instance}")
}

/// Reads a JSON record, naming its key when it does not decode.
pub(crate) fn read<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &str,
) -> Result<Option<T>, AnalyticsError> {
    match tree.get(key.as_bytes())? {
        None => Ok(None),
        Some(bytes) => decode(key, &bytes).map(Some),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, AnalyticsError> {
    serde_json::from_slice(bytes).map_err(|e| AnalyticsError::Corrupt {
        key: key.to_string(),
        error: e.to_string(),
    })
}

/// The records one batch reads and changes, cached by kind.
pub(crate) struct Tx<'a> {
    tree: &'a sled::Tree,
    /// Day figures by key: the whole business's (`d/…`) and each rep's (`r/…`).
    days: BTreeMap<String, DayFigures>,
    tracks: HashMap<String, Option<Track>>,
    alerts: BTreeMap<String, Option<Alert>>,
    /// Keys whose records this batch changed (each written once).
    dirty_tracks: std::collections::HashSet<String>,
    dirty_alerts: std::collections::BTreeSet<String>,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(tree: &'a sled::Tree) -> Self {
        Tx {
            tree,
            days: BTreeMap::new(),
            tracks: HashMap::new(),
            alerts: BTreeMap::new(),
            dirty_tracks: Default::default(),
            dirty_alerts: Default::default(),
        }
    }

    /// Applies `change` to the figures of `day`, and to the figures of `rep` (a sales rep, when
    /// not empty) of that day.
    pub(crate) fn update(
        &mut self,
        day: NaiveDate,
        rep: &str,
        change: impl Fn(&mut DayFigures),
    ) -> Result<(), AnalyticsError> {
        change(self.figures(day_key(day))?);
        if !rep.is_empty() {
            change(self.figures(rep_day_key(rep, day))?);
        }
        Ok(())
    }

    fn figures(&mut self, key: String) -> Result<&mut DayFigures, AnalyticsError> {
        if !self.days.contains_key(&key) {
            let stored = read(self.tree, &key)?.unwrap_or_default();
            self.days.insert(key.clone(), stored);
        }
        Ok(self.days.get_mut(&key).expect("just inserted"))
    }

    /// An instance's tracking record, if the projection has seen the instance.
    pub(crate) fn track(&mut self, instance: &str) -> Result<Option<Track>, AnalyticsError> {
        if let Some(cached) = self.tracks.get(instance) {
            return Ok(cached.clone());
        }
        let stored: Option<Track> = read(self.tree, &track_key(instance))?;
        self.tracks.insert(instance.to_string(), stored.clone());
        Ok(stored)
    }

    pub(crate) fn set_track(&mut self, instance: &str, track: Track) {
        self.tracks.insert(instance.to_string(), Some(track));
        self.dirty_tracks.insert(instance.to_string());
    }

    /// The alert stored under `key` (`a/<instance>/<kind>[/<what>]`).
    pub(crate) fn alert(&mut self, key: &str) -> Result<Option<Alert>, AnalyticsError> {
        if let Some(cached) = self.alerts.get(key) {
            return Ok(cached.clone());
        }
        let stored: Option<Alert> = read(self.tree, key)?;
        self.alerts.insert(key.to_string(), stored.clone());
        Ok(stored)
    }

    /// The keys of the alerts under `prefix`, as this batch leaves them.
    pub(crate) fn alert_keys(&mut self, prefix: &str) -> Result<Vec<String>, AnalyticsError> {
        let mut keys = std::collections::BTreeSet::new();
        for item in self.tree.scan_prefix(prefix.as_bytes()) {
            let (key, _) = item?;
            keys.insert(String::from_utf8_lossy(&key).into_owned());
        }
        for (key, alert) in self.alerts.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if alert.is_some() {
                keys.insert(key.clone());
            } else {
                keys.remove(key);
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Stores (or, with `None`, removes) an alert, writing only a change.
    pub(crate) fn set_alert(
        &mut self,
        key: &str,
        alert: Option<Alert>,
    ) -> Result<(), AnalyticsError> {
        if self.alert(key)? != alert {
            self.alerts.insert(key.to_string(), alert);
            self.dirty_alerts.insert(key.to_string());
        }
        Ok(())
    }

    /// Everything the batch changed, with the offset it reaches, as one sled batch.
    pub(crate) fn into_batch(self, offset: u64) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, figures) in &self.days {
            batch.insert(key.as_bytes(), json(figures));
        }
        for instance in &self.dirty_tracks {
            if let Some(Some(track)) = self.tracks.get(instance) {
                batch.insert(track_key(instance).as_bytes(), json(track));
            }
        }
        for key in &self.dirty_alerts {
            match self.alerts.get(key) {
                Some(Some(alert)) => batch.insert(key.as_bytes(), json(alert)),
                _ => batch.remove(key.as_bytes()),
            }
        }
        batch.insert(OFFSET_KEY, &offset.to_be_bytes());
        batch
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("projection records serialize")
}
