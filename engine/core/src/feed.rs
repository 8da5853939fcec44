//! The event feed: one event per committed change, numbered by a gap-free offset in commit
//! order, written in the same atomic commit as the change itself.
//!
//! A [`Subscription`] replays from the store and then follows the feed live. It only ever
//! delivers events whose commit has been flushed (the committer publishes the durable
//! offset after each flush), and it reads from the store in bounded pages (at most 512 events
//! and about 1 MiB, whatever the events' size) rather than from an in-memory queue, so a slow
//! subscriber holds no more than one page, no buffer the committer would have to fill, and
//! cannot slow commits down. Delivery is at-least-once across reconnects: a subscriber
//! resumes after the last offset it processed and drops repeats by event id.
//!
//! # Event types
//!
//! [`EventType`] is the catalog: one variant per type, named as below on the wire and on
//! disk (a test keeps this table and the enum in step).
//!
//! | type | subject | when | `data` |
//! |---|---|---|---|
//! | `switchyard.instance.started` | instance id | an instance was started (by a caller or a linked transition) | instance fields (below) |
//! | `switchyard.instance.transitioned` | instance id | a command was applied (the state may be unchanged) | instance fields |
//! | `switchyard.instance.cancelled` | instance id | an instance was cancelled | instance fields |
//! | `switchyard.instance.updated` | instance id | a linked instance's transition changed its data | instance fields |
//! | `switchyard.timer.fired` | instance id | a timer fell due; committed with the command it sent (whose `transitioned` event precedes it) | `instance`, `definition`, `timer`, `command`, `due`, `state` (when set) |
//! | `switchyard.job.created` | instance id | a transition created a job | job fields (below) |
//! | `switchyard.job.completed` | instance id | a worker completed a job; committed with its completion command | job fields + `result` |
//! | `switchyard.job.failed` | instance id | a worker reported a failure | job fields + `error`, `will_retry`, `next_attempt_at` |
//! | `switchyard.job.cancelled` | instance id | the job's instance was cancelled | job fields |
//! | `switchyard.incident.raised` | instance id | a job's retries ran out, or a timer's command failed | a job: job fields + `error`; a timer: instance fields with `incident` = `kind` (`timer`), `timer`, `command`, `due`, `error` |
//! | `switchyard.incident.resolved` | instance id | an operator retried or cancelled it | a job: job fields + `action`, `actor`; a timer: instance fields with `incident` = `kind`, `timer`, `action` |
//! | `switchyard.notification.queued` | instance id | a change routed a message (`crate::notification`); committed with the change | job fields (the payload is the message) + `available_at` |
//! | `switchyard.notification.sent` | instance id | a channel delivered it | job fields |
//! | `switchyard.notification.failed` | instance id | an attempt failed | job fields + `error`, `will_retry`, `next_attempt_at` |
//! | `switchyard.notification.undelivered` | instance id | the last attempt failed; `incident.raised` follows | job fields + `error` |
//! | `switchyard.notification.suppressed` | instance id | its de-duplication key was used within its window | `instance`, `channel`, `to`, `category`, `dedup_key`, `minutes`, `source` |
//! | `switchyard.notification.routing_failed` | instance id | the `notify` script failed for a change, which committed without messages | `instance`, `source`, `error` |
//!
//! Job fields: `job` (id), `job_type`, `instance`, `status`, `failures`, `retries`, `payload`.
//!
//! Instance fields: `instance`, `definition` (`name`, `version`), `business_key`, `owner` (the
//! user it belongs to, or null), `parent` (the instance that started it, or null), `version`,
//! `from_state` (null for a start), `to_state`, `status`, `command` (null for a start, cancel
//! or linked update), `actor` (`id`, `roles`), `request_id`, `reason`, `changes` (the merge
//! patch applied), `data` (the instance data after the change) and `incident` (null but for
//! timer incidents).

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::error::CommandError;
use crate::model::{ChangeKind, HistoryEntry, Instance};
use crate::store::Store;

/// The type of a feed event. Serialized as its dotted name (`switchyard.instance.started`);
/// new types are added as variants, never renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EventType {
    /// `switchyard.instance.started`: an instance was started.
    #[serde(rename = "switchyard.instance.started")]
    InstanceStarted,
    /// `switchyard.instance.transitioned`: a command was applied.
    #[serde(rename = "switchyard.instance.transitioned")]
    InstanceTransitioned,
    /// `switchyard.instance.cancelled`: an instance was cancelled.
    #[serde(rename = "switchyard.instance.cancelled")]
    InstanceCancelled,
    /// `switchyard.instance.updated`: a linked instance's transition changed its data.
    #[serde(rename = "switchyard.instance.updated")]
    InstanceUpdated,
    /// `switchyard.timer.fired`: a timer fell due.
    #[serde(rename = "switchyard.timer.fired")]
    TimerFired,
    /// `switchyard.job.created`: a transition created a job.
    #[serde(rename = "switchyard.job.created")]
    JobCreated,
    /// `switchyard.job.completed`: a worker completed a job.
    #[serde(rename = "switchyard.job.completed")]
    JobCompleted,
    /// `switchyard.job.failed`: a worker reported a failure.
    #[serde(rename = "switchyard.job.failed")]
    JobFailed,
    /// `switchyard.job.cancelled`: the job's instance was cancelled.
    #[serde(rename = "switchyard.job.cancelled")]
    JobCancelled,
    /// `switchyard.incident.raised`: a job's retries ran out.
    #[serde(rename = "switchyard.incident.raised")]
    IncidentRaised,
    /// `switchyard.incident.resolved`: an operator retried or cancelled an incident.
    #[serde(rename = "switchyard.incident.resolved")]
    IncidentResolved,
    /// `switchyard.notification.queued`: a change routed a message into the outbox.
    #[serde(rename = "switchyard.notification.queued")]
    NotificationQueued,
    /// `switchyard.notification.sent`: a channel delivered a message.
    #[serde(rename = "switchyard.notification.sent")]
    NotificationSent,
    /// `switchyard.notification.failed`: a delivery attempt failed.
    #[serde(rename = "switchyard.notification.failed")]
    NotificationFailed,
    /// `switchyard.notification.undelivered`: every attempt failed; an incident follows.
    #[serde(rename = "switchyard.notification.undelivered")]
    NotificationUndelivered,
    /// `switchyard.notification.suppressed`: a message's de-duplication key was used within
    /// its window.
    #[serde(rename = "switchyard.notification.suppressed")]
    NotificationSuppressed,
    /// `switchyard.notification.routing_failed`: the `notify` script failed for a change,
    /// which committed without its messages.
    #[serde(rename = "switchyard.notification.routing_failed")]
    NotificationRoutingFailed,
}

impl EventType {
    /// Every type, in catalog order.
    pub const ALL: &'static [EventType] = &[
        EventType::InstanceStarted,
        EventType::InstanceTransitioned,
        EventType::InstanceCancelled,
        EventType::InstanceUpdated,
        EventType::TimerFired,
        EventType::JobCreated,
        EventType::JobCompleted,
        EventType::JobFailed,
        EventType::JobCancelled,
        EventType::IncidentRaised,
        EventType::IncidentResolved,
        EventType::NotificationQueued,
        EventType::NotificationSent,
        EventType::NotificationFailed,
        EventType::NotificationUndelivered,
        EventType::NotificationSuppressed,
        EventType::NotificationRoutingFailed,
    ];

    /// The dotted name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::InstanceStarted => "switchyard.instance.started",
            EventType::InstanceTransitioned => "switchyard.instance.transitioned",
            EventType::InstanceCancelled => "switchyard.instance.cancelled",
            EventType::InstanceUpdated => "switchyard.instance.updated",
            EventType::TimerFired => "switchyard.timer.fired",
            EventType::JobCreated => "switchyard.job.created",
            EventType::JobCompleted => "switchyard.job.completed",
            EventType::JobFailed => "switchyard.job.failed",
            EventType::JobCancelled => "switchyard.job.cancelled",
            EventType::IncidentRaised => "switchyard.incident.raised",
            EventType::IncidentResolved => "switchyard.incident.resolved",
            EventType::NotificationQueued => "switchyard.notification.queued",
            EventType::NotificationSent => "switchyard.notification.sent",
            EventType::NotificationFailed => "switchyard.notification.failed",
            EventType::NotificationUndelivered => "switchyard.notification.undelivered",
            EventType::NotificationSuppressed => "switchyard.notification.suppressed",
            EventType::NotificationRoutingFailed => "switchyard.notification.routing_failed",
        }
    }

    /// The type named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.iter().copied().find(|t| t.as_str() == name)
    }
}

impl PartialEq<str> for EventType {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EventType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A committed event, CloudEvents-style.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeedEvent {
    /// Position in the feed: starts at 1, gap-free, increasing in commit order.
    pub offset: u64,
    /// Stable event id (`<source>/<offset>`): the same event always has the same id, so a
    /// consumer can drop repeats after a reconnect.
    pub id: String,
    /// The engine that produced it (`EngineConfig::feed_source`).
    pub source: String,
    /// Event type, e.g. `switchyard.instance.transitioned`; see the module docs.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// What it is about: an instance id.
    pub subject: String,
    /// Commit time.
    pub time: DateTime<Utc>,
    /// The payload as JSON text; see the module docs. Kept unparsed so replaying the feed
    /// does not build and drop a JSON tree per event; [`FeedEvent::data`] parses it.
    #[serde(rename = "data")]
    pub data_json: Box<RawValue>,
}

impl PartialEq for FeedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
            && self.id == other.id
            && self.source == other.source
            && self.kind == other.kind
            && self.subject == other.subject
            && self.time == other.time
            && self.data_json.get() == other.data_json.get()
    }
}

impl FeedEvent {
    /// The payload, parsed.
    pub fn data(&self) -> Value {
        serde_json::from_str(self.data_json.get()).expect("feed event data is JSON")
    }
}

/// An event before the store numbers it.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDraft {
    /// Source.
    pub source: String,
    /// Event type.
    pub kind: EventType,
    /// Subject.
    pub subject: String,
    /// Time.
    pub time: DateTime<Utc>,
    /// Payload.
    pub data: Value,
}

impl EventDraft {
    /// Numbers the draft.
    pub fn at_offset(&self, offset: u64) -> FeedEvent {
        FeedEvent {
            offset,
            id: format!("{}/{offset}", self.source),
            source: self.source.clone(),
            kind: self.kind,
            subject: self.subject.clone(),
            time: self.time,
            data_json: serde_json::value::to_raw_value(&self.data).expect("JSON values serialize"),
        }
    }
}

/// The event for one history entry and the instance as it is after it.
pub(crate) fn instance_event(source: &str, entry: &HistoryEntry, after: &Instance) -> EventDraft {
    let kind = match entry.kind {
        ChangeKind::Started { .. } => EventType::InstanceStarted,
        ChangeKind::Command | ChangeKind::LinkedCommand { .. } => EventType::InstanceTransitioned,
        ChangeKind::Cancelled => EventType::InstanceCancelled,
        ChangeKind::LinkedUpdate { .. } => EventType::InstanceUpdated,
        ChangeKind::TimerIncidentRaised { .. } => EventType::IncidentRaised,
        ChangeKind::TimerIncidentResolved { .. } => EventType::IncidentResolved,
    };
    EventDraft {
        source: source.to_string(),
        kind,
        subject: after.id.to_string(),
        time: entry.at,
        data: json!({
            "instance": after.id,
            "definition": after.definition,
            "business_key": after.business_key,
            "owner": after.owner,
            "parent": after.parent,
            "version": after.version,
            "from_state": entry.from_state,
            "to_state": entry.to_state,
            "status": after.status,
            "command": entry.command,
            "actor": entry.actor,
            "request_id": entry.request_id,
            "reason": entry.reason,
            "changes": entry.changes,
            "data": after.data,
            // For a timer incident: what failed or how it was resolved.
            "incident": match entry.kind {
                ChangeKind::TimerIncidentRaised { .. } | ChangeKind::TimerIncidentResolved { .. } => {
                    entry.payload.clone()
                }
                _ => Value::Null,
            },
        }),
    }
}

/// Most events read from the store per page.
const PAGE: usize = 512;
/// Most bytes (as stored) read per page, whatever the events' size: what a subscription holds
/// for a consumer that reads slowly is at most this page.
const PAGE_BYTES: usize = 1 << 20;

/// A live subscription to the feed. See the module docs.
pub struct Subscription {
    store: std::sync::Arc<dyn Store>,
    durable: watch::Receiver<u64>,
    cursor: u64,
    page: VecDeque<FeedEvent>,
    /// The cursor, shared with the engine's metrics (feed lag).
    position: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Subscription {
    pub(crate) fn new(
        store: std::sync::Arc<dyn Store>,
        durable: watch::Receiver<u64>,
        after: u64,
        position: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        position.store(after, std::sync::atomic::Ordering::Relaxed);
        Subscription {
            store,
            durable,
            cursor: after,
            page: VecDeque::new(),
            position,
        }
    }

    /// The offset of the last event returned (or the starting offset).
    pub fn offset(&self) -> u64 {
        self.cursor
    }

    /// The latest durable offset: events up to it can be delivered now.
    pub fn durable_head(&self) -> u64 {
        *self.durable.borrow()
    }

    /// The next event, waiting for one to be committed and flushed if needed. Fails with
    /// [`CommandError::ShuttingDown`] when the engine stops, and with
    /// [`CommandError::FeedHorizon`] if retention removed events this subscription had not
    /// read yet.
    pub async fn next(&mut self) -> Result<FeedEvent, CommandError> {
        loop {
            if let Some(event) = self.page.pop_front() {
                self.cursor = event.offset;
                self.position
                    .store(event.offset, std::sync::atomic::Ordering::Relaxed);
                return Ok(event);
            }
            let durable = *self.durable.borrow_and_update();
            if self.cursor < durable {
                let want = usize::try_from(durable - self.cursor)
                    .unwrap_or(PAGE)
                    .min(PAGE);
                let store = self.store.clone();
                let after = self.cursor;
                let events =
                    tokio::task::spawn_blocking(move || store.feed(after, want, PAGE_BYTES))
                        .await
                        .expect("feed read task panicked")?;
                match events.first() {
                    Some(first) if first.offset == self.cursor + 1 => {}
                    _ => {
                        let (earliest, _) = self.store.feed_bounds()?;
                        return Err(CommandError::FeedHorizon {
                            after: self.cursor,
                            earliest,
                        });
                    }
                }
                self.page
                    .extend(events.into_iter().take_while(|e| e.offset <= durable));
                continue;
            }
            if self.durable.changed().await.is_err() {
                return Err(CommandError::ShuttingDown);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EventType;

    #[test]
    fn the_catalog_in_the_docs_lists_every_event_type_and_nothing_else() {
        let source = include_str!("feed.rs");
        let documented: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let catalog: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(documented, catalog);
        for t in EventType::ALL {
            let json = serde_json::to_string(t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(EventType::from_name(t.as_str()), Some(*t));
        }
    }
}
