//! The instances that changed most recently, followed from the feed: what the dashboard's live
//! workflow panel lists (newest change first) and pushes to open pages. Bounded: at most
//! [`ROWS_MAX`] instances, the one changed longest ago forgotten first; on start it reads the
//! last [`BACKFILL_EVENTS`] events of the feed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use switchyard_core::{clip, CommandError, Engine, EventType, FeedEvent};
use tokio::sync::watch;

/// Most instances kept.
pub(crate) const ROWS_MAX: usize = 2000;
/// How many of the feed's last events are read at start.
const BACKFILL_EVENTS: u64 = 5000;

/// One instance as of its latest change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) definition: String,
    pub(crate) business_key: String,
    /// The document number the rules gave it (an order's `SO-2026-000123`), if any.
    pub(crate) number: String,
    pub(crate) state: String,
    pub(crate) status: String,
    pub(crate) owner: Option<String>,
    /// What the change did (its command, or `started`, `cancelled`, `updated`).
    pub(crate) change: String,
    pub(crate) reason: String,
    pub(crate) at: DateTime<Utc>,
    /// The feed offset of the change.
    pub(crate) offset: u64,
}

/// The recent instances; cheap to clone.
#[derive(Clone)]
pub(crate) struct Recent {
    inner: Arc<Mutex<Rows>>,
    offset: Arc<watch::Sender<u64>>,
}

#[derive(Default)]
struct Rows {
    by_id: HashMap<String, Row>,
    /// Offset of each instance's latest change → its id.
    by_offset: BTreeMap<u64, String>,
}

impl Recent {
    pub(crate) fn new() -> Recent {
        Recent {
            inner: Arc::default(),
            offset: Arc::new(watch::channel(0).0),
        }
    }

    /// Follows `engine`'s feed until it shuts down; a feed error is logged and retried.
    pub(crate) async fn follow(self, engine: Engine) {
        loop {
            let start = match engine.feed_bounds() {
                Ok((earliest, head)) => head
                    .saturating_sub(BACKFILL_EVENTS)
                    .max(earliest.saturating_sub(1))
                    .max(*self.offset.borrow()),
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard: cannot read the feed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut subscription = match engine.subscribe(start) {
                Ok(s) => s,
                Err(CommandError::ShuttingDown) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard: cannot follow the feed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                match subscription.next().await {
                    Ok(event) => self.apply(&event),
                    Err(CommandError::ShuttingDown) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "dashboard: the feed failed; resubscribing");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }

    /// Takes in one feed event (instance events change a row; others only move the offset).
    pub(crate) fn apply(&self, event: &FeedEvent) {
        if let Some(row) = row_of(event) {
            let mut rows = self.lock();
            if let Some(old) = rows.by_id.remove(&row.id) {
                rows.by_offset.remove(&old.offset);
            }
            rows.by_offset.insert(row.offset, row.id.clone());
            rows.by_id.insert(row.id.clone(), row);
            while rows.by_id.len() > ROWS_MAX {
                let Some((_, id)) = rows.by_offset.pop_first() else {
                    break;
                };
                rows.by_id.remove(&id);
            }
        }
        self.offset.send_replace(event.offset);
    }

    /// The feed offset taken in so far.
    pub(crate) fn offset(&self) -> u64 {
        *self.offset.borrow()
    }

    /// Told each time the offset moves.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.offset.subscribe()
    }

    /// The rows that pass `keep`, newest change first, at most `limit`.
    pub(crate) fn newest(&self, limit: usize, keep: impl Fn(&Row) -> bool) -> Vec<Row> {
        let rows = self.lock();
        rows.by_offset
            .values()
            .rev()
            .filter_map(|id| rows.by_id.get(id))
            .filter(|r| keep(r))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The rows changed after `offset` that pass `keep`, oldest first, at most `limit` (the
    /// newest of them).
    pub(crate) fn since(&self, offset: u64, limit: usize, keep: impl Fn(&Row) -> bool) -> Vec<Row> {
        let rows = self.lock();
        let mut changed: Vec<Row> = rows
            .by_offset
            .range(offset.saturating_add(1)..)
            .rev()
            .filter_map(|(_, id)| rows.by_id.get(id))
            .filter(|r| keep(r))
            .take(limit)
            .cloned()
            .collect();
        changed.reverse();
        changed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The row an instance event describes (none for other events or an unreadable one).
fn row_of(event: &FeedEvent) -> Option<Row> {
    let change = match event.kind {
        EventType::InstanceStarted => "started",
        EventType::InstanceTransitioned => "",
        EventType::InstanceCancelled => "cancelled",
        EventType::InstanceUpdated => "updated",
        _ => return None,
    };
    let data: Value = event.data();
    let text = |v: &Value| v.as_str().map(|s| clip(s, 200)).unwrap_or_default();
    Some(Row {
        id: event.subject.clone(),
        definition: text(&data["definition"]["name"]),
        business_key: text(&data["business_key"]),
        number: text(&data["data"]["number"]),
        state: text(&data["to_state"]),
        status: text(&data["status"]),
        owner: data["owner"].as_str().map(|s| clip(s, 200)),
        change: if change.is_empty() {
            text(&data["command"])
        } else {
            change.to_string()
        },
        reason: text(&data["reason"]),
        at: event.time,
        offset: event.offset,
    })
}
