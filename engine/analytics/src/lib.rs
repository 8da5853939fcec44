//! Sales-operations analytics computed from Switchyard's event feed.
//!
//! [`Analytics`] follows the feed of an [`Engine`] (or takes events handed to it) and keeps
//! figures per calendar day in a configured IANA time zone — documents, money per currency,
//! the lead → quote → order funnel, approval waits, performers, product demand — plus a list of
//! open alerts. Everything comes from the feed: nothing is counted on the side, so the figures
//! reconcile with what the engine stored, and a rebuild from the first event gives the same
//! records as the live projection.
//!
//! # Exactly once
//!
//! A batch of events and the feed offset it reaches are written in one atomic sled batch, so a
//! restart resumes after the last batch written — never counting an event twice or skipping
//! one. Events at or below the stored offset are ignored; a gap is refused. The projection's
//! definition ([`PROJECTION_VERSION`] and the time zone) is stored with it: opening it with
//! another one clears the records, and following the feed rebuilds them from offset 1.
//!
//! # What is counted
//!
//! The projection reads the shipped rule set's workflows (`rules/`) by their definition names:
//!
//! | figure | counted when | from |
//! |---|---|---|
//! | leads, quotes, returns, chargebacks | the instance starts | `instance.started` |
//! | orders | a `sales_order` gets its number (confirmation) | `data.number` |
//! | ordered (money) | the same | `data.pricing.total` in `data.pricing.currency`; per rep (the order's `owner`), customer (`data.customer`) and product (`pricing.lines[].sku`, `quantity`, `net + tax`) |
//! | invoiced | an invoice appears in `data.invoices` | its `total` in its `currency` |
//! | paid | a payment appears in `data.payments` | its `amount` in the order's currency |
//! | refunds, refunded | a `return` reaches `refunded` | `data.refund.total` in `data.currency` |
//! | withdrawn, reinstated | a chargeback's `data.movements` grows | each movement's `amount` |
//! | chargebacks lost | a `chargeback` reaches `lost` | withdrawn less reinstated |
//! | funnel (cohort) | a quote starts under a lead; an order from a quote is confirmed | the instance's `parent`; counted on the day the lead or quote started |
//! | approval waits | a person approves or rejects for a role of a quote's current step | from when the role's step became current; per role |
//!
//! Money is tax included and never converted between currencies. A payment above what was
//! open (kept as the customer's credit) counts as paid in full; a credit paid back is not
//! netted yet. Net revenue is paid less refunded less chargebacks lost.
//!
//! Open alerts: orders with backordered quantity, disputes awaiting evidence (with their due
//! time), refunds owed on returns, quotes whose approval is past its escalation time,
//! undelivered notifications and job or timer incidents until an operator resolves them, and
//! the messages the rules route to the `dashboard` channel ([`DashboardChannel`]).

mod figures;
mod fold;
mod query;
mod tx;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use switchyard_core::{CommandError, Engine, FeedEvent};
use tokio::sync::watch;

pub use figures::{Amounts, Cohort, Counts, DayFigures, Demand, Performance, Revenue, Workflow};
pub use fold::{CHARGEBACK, LEAD, QUOTE, RETURN, SALES_ORDER};
pub use query::{
    CycleTimes, DemandForecast, Dimension, Funnel, Performer, Period, Scope, SeriesPoint, Summary,
    WeekDemand, DAYS_MAX,
};

/// How long a dashboard notice stays listed, in days.
pub const NOTICE_DAYS: i64 = 7;

/// The `dashboard` notification channel: a message routed to it is delivered by being shown —
/// its `switchyard.notification.sent` event becomes a [`AlertKind::Notice`] in the alerts of
/// every [`Analytics`] following the feed, for the person it names (`recipient`). Register it
/// under the channel name the rules use: `engine.register_channel("dashboard", …)`; the server
/// does when analytics is on.
#[derive(Clone, Copy, Debug, Default)]
pub struct DashboardChannel;

impl switchyard_core::notification::Channel for DashboardChannel {
    fn send<'a>(
        &'a self,
        _notification: &'a switchyard_core::notification::Notification,
    ) -> switchyard_core::notification::SendFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

/// The version of the projection's rules. Raised whenever what is counted, or how, changes:
/// stored figures of another version are rebuilt from the feed.
pub const PROJECTION_VERSION: u32 = 1;

/// The projection store's page cache.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Most events applied in one atomic batch while catching up.
const BATCH_MAX: usize = 2048;

/// How the projection cuts days.
#[derive(Clone, Debug)]
pub struct AnalyticsConfig {
    /// The IANA time zone days and ISO weeks are cut in.
    pub time_zone: Tz,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig { time_zone: Tz::UTC }
    }
}

/// Why analytics could not open, apply or answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyticsError {
    /// The projection's store failed.
    #[error("analytics store: {0}")]
    Store(#[from] sled::Error),
    /// A stored record does not decode.
    #[error("analytics record {key} is unreadable: {error}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        error: String,
    },
    /// An event does not follow the last one applied.
    #[error(
        "feed event {got} does not follow offset {have}: events are applied in order, without gaps"
    )]
    Gap {
        /// The offset the projection reflects.
        have: u64,
        /// The event's offset.
        got: u64,
    },
    /// The feed could not be read (e.g. retention removed events a rebuild needs).
    #[error("feed: {0}")]
    Feed(#[from] CommandError),
    /// A query's argument is out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The argument.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The kind of an open alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A dispute awaits evidence.
    DisputeDue,
    /// A job or timer incident awaits an operator.
    Incident,
    /// A notification's last attempt failed.
    NotificationUndelivered,
    /// A quote's approval step is past its escalation time.
    ApprovalOverdue,
    /// A return's refund is owed.
    RefundDue,
    /// An order has backordered quantity.
    Backorder,
    /// A message the rules routed to the `dashboard` channel ([`DashboardChannel`]), listed
    /// for [`NOTICE_DAYS`] days or until its instance ends, at the message's severity.
    Notice,
}

impl AlertKind {
    /// The name used in keys and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::DisputeDue => "dispute_due",
            AlertKind::Incident => "incident",
            AlertKind::NotificationUndelivered => "notification_undelivered",
            AlertKind::ApprovalOverdue => "approval_overdue",
            AlertKind::RefundDue => "refund_due",
            AlertKind::Backorder => "backorder",
            AlertKind::Notice => "notice",
        }
    }
}

/// How urgent an alert is at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    /// Worth a look today.
    Routine,
    /// Needs someone soon.
    High,
    /// Due within a day, or overdue.
    Critical,
}

/// An open alert, linked to its instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// What it is.
    pub kind: AlertKind,
    /// The instance it is about.
    pub instance: String,
    /// Its workflow definition.
    pub definition: String,
    /// Its business key.
    pub business_key: String,
    /// The sales rep the instance counts for (empty when none).
    pub rep: String,
    /// Since when it is open.
    pub since: DateTime<Utc>,
    /// When it falls due, if it does.
    pub due: Option<DateTime<Utc>>,
    /// What is wrong (at most 200 characters).
    pub detail: String,
    /// The severity it was raised with, for those that carry their own (notices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<AlertSeverity>,
}

/// An alert with its severity at the time asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RatedAlert {
    /// How urgent.
    pub severity: AlertSeverity,
    /// The alert.
    #[serde(flatten)]
    pub alert: Alert,
}

/// The projection: figures per day and open alerts, with the feed offset they reflect.
/// Cheap to clone; clones share one store.
#[derive(Clone)]
pub struct Analytics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Held by the owner of the sled database, so it is flushed on drop.
    _db: sled::Db,
    tree: sled::Tree,
    time_zone: Tz,
    /// Writers hold it while they apply a batch; readers while they read several records, so
    /// a query never sees half a batch.
    lock: RwLock<()>,
    offset: watch::Sender<u64>,
    /// Why [`Analytics::follow`] stopped for good, if it did: the figures are then stale.
    stalled: std::sync::Mutex<Option<String>>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct StoredDefinition {
    version: u32,
    time_zone: String,
}

impl Analytics {
    /// Opens (or creates) the projection's own sled database in `dir`, with a 64 MiB page
    /// cache (sled's default is a gigabyte; the projection reads a few records per event).
    pub fn open(dir: &Path, config: AnalyticsConfig) -> Result<Analytics, AnalyticsError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()?;
        Analytics::with_db(db, config)
    }

    /// A projection in memory, gone when dropped (tests, dry runs).
    pub fn temporary(config: AnalyticsConfig) -> Result<Analytics, AnalyticsError> {
        Analytics::with_db(sled::Config::new().temporary(true).open()?, config)
    }

    fn with_db(db: sled::Db, config: AnalyticsConfig) -> Result<Analytics, AnalyticsError> {
        let tree = db.open_tree("analytics")?;
        let wanted = StoredDefinition {
            version: PROJECTION_VERSION,
            time_zone: config.time_zone.name().to_string(),
        };
        let stored = tx::read::<StoredDefinition>(&tree, "m/projection")
            .ok()
            .flatten();
        if stored.as_ref() != Some(&wanted) {
            if stored.is_some() {
                tracing::info!(
                    from = ?stored,
                    to = ?wanted,
                    "the analytics projection changed: rebuilding it from the feed"
                );
            }
            tree.clear()?;
            let definition = serde_json::to_vec(&wanted).expect("definitions serialize");
            tree.insert(tx::DEFINITION_KEY, definition)?;
            db.flush()?;
        }
        let offset = match tree.get(tx::OFFSET_KEY)? {
            None => 0,
            Some(bytes) => u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| {
                AnalyticsError::Corrupt {
                    key: "m/offset".into(),
                    error: format!("{} bytes, not 8", bytes.len()),
                }
            })?),
        };
        Ok(Analytics {
            inner: Arc::new(Inner {
                _db: db,
                tree,
                time_zone: config.time_zone,
                lock: RwLock::new(()),
                offset: watch::channel(offset).0,
                stalled: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The time zone days are cut in.
    pub fn time_zone(&self) -> Tz {
        self.inner.time_zone
    }

    /// The offset of the last feed event the figures reflect.
    pub fn offset(&self) -> u64 {
        *self.inner.offset.borrow()
    }

    /// Changes of [`Analytics::offset`]: a receiver wakes after each batch is applied.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.offset.subscribe()
    }

    /// Applies `events` (in offset order) in one atomic write with the offset they reach.
    /// Events already applied are skipped; an event that does not follow is refused, and then
    /// nothing of the batch is written. Returns the new offset.
    pub fn apply(&self, events: &[FeedEvent]) -> Result<u64, AnalyticsError> {
        let _writer = self.inner.lock.write().unwrap_or_else(|e| e.into_inner());
        let mut offset = self.offset();
        let mut tx = tx::Tx::new(&self.inner.tree);
        for event in events {
            if event.offset <= offset {
                continue;
            }
            if event.offset != offset + 1 {
                return Err(AnalyticsError::Gap {
                    have: offset,
                    got: event.offset,
                });
            }
            fold::apply(&mut tx, event, self.inner.time_zone)?;
            offset = event.offset;
        }
        if offset == self.offset() {
            return Ok(offset);
        }
        self.inner.tree.apply_batch(tx.into_batch(offset))?;
        self.inner.offset.send_replace(offset);
        Ok(offset)
    }

    /// Follows `engine`'s feed from the stored offset until the engine shuts down, applying
    /// what arrives in batches (all events already flushed, up to 2,048 at a time). A failing
    /// write is retried (after a second, from the stored offset); a feed that no longer holds
    /// the events the projection needs ([`CommandError::FeedHorizon`]) ends it with that error,
    /// and [`Analytics::stalled`] tells why from then on.
    pub async fn follow(&self, engine: &Engine) -> Result<(), AnalyticsError> {
        let result = self.follow_feed(engine).await;
        if let Err(e) = &result {
            let why = match e {
                AnalyticsError::Feed(CommandError::FeedHorizon { earliest, .. }) => format!(
                    "the feed starts at offset {earliest}, after the projection's {} (engine.feed_retention removed events it needs; keep the feed longer to rebuild)",
                    self.offset()
                ),
                other => other.to_string(),
            };
            *self.inner.stalled.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        }
        result
    }

    /// Why following the feed stopped for good, if it did: the figures are stale then, and
    /// incomplete if a rebuild could not start.
    pub fn stalled(&self) -> Option<String> {
        self.inner
            .stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn follow_feed(&self, engine: &Engine) -> Result<(), AnalyticsError> {
        loop {
            let mut subscription = engine.subscribe(self.offset())?;
            loop {
                let first = match subscription.next().await {
                    Ok(event) => event,
                    Err(CommandError::ShuttingDown) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX && subscription.offset() < subscription.durable_head()
                {
                    match subscription.next().await {
                        Ok(event) => batch.push(event),
                        Err(CommandError::ShuttingDown) => return Ok(()),
                        Err(e) => return Err(e.into()),
                    }
                }
                let this = self.clone();
                let applied = tokio::task::spawn_blocking(move || this.apply(&batch)).await;
                match applied {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => tracing::warn!(error = %e, "analytics: a batch failed; retrying"),
                    Err(e) => tracing::warn!(error = %e, "analytics: a batch panicked; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                break;
            }
        }
    }

    /// Every record, decoded, by key (`d/<day>` figures, `i/<instance>` what an instance's
    /// later events need, `a/<instance>/<kind>…` alerts, `m/…` the projection's definition
    /// and offset), read as of one batch: for diagnostics, and to compare a projection with a
    /// rebuild.
    pub fn dump(&self) -> Result<BTreeMap<String, serde_json::Value>, AnalyticsError> {
        let _reader = self.inner.lock.read().unwrap_or_else(|e| e.into_inner());
        let mut records = BTreeMap::new();
        for item in self.inner.tree.iter() {
            let (key, bytes) = item?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let value = if key.as_bytes() == tx::OFFSET_KEY {
                serde_json::json!(self.offset())
            } else {
                tx::decode(&key, &bytes)?
            };
            records.insert(key, value);
        }
        Ok(records)
    }

    /// Flushes the projection's store.
    pub fn flush(&self) -> Result<(), AnalyticsError> {
        self.inner.tree.flush()?;
        Ok(())
    }
}
