//! Notifications: messages the rule set's `notify` script routes for committed changes, kept
//! in a durable outbox and delivered by channels.
//!
//! A notification is a job of the reserved type `notify.<channel>` (e.g. `notify.email`),
//! written in the same commit as the change that caused it: nothing is sent for a command that
//! did not commit, and nothing committed is forgotten. Channels ([`Channel`], registered with
//! `Engine::register_channel`) take the jobs through the ordinary lease mechanism, so leases,
//! retries with backoff, incidents and their resolution are the jobs' own. The job id is the
//! message id: it never changes across retries, so a receiver drops a repeat (a crash between
//! sending and recording the delivery is the only way one is sent twice).
//!
//! Routing (`scripts/notify.rhai`, `fn route(event)`) returns, for each change, the messages
//! to send; each names its channel, address, category, severity, rendered subject and bodies,
//! and optionally `not_before` (a send window) and `dedup` (`key`, `minutes`): a message whose
//! key was queued less than `minutes` ago is suppressed. See `rules/README.md`.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::{Job, JobId, JobStatus};
use crate::model::InstanceId;

/// The prefix of every notification job type: `notify.<channel>`.
pub const JOB_TYPE_PREFIX: &str = "notify.";

/// The balance that keeps, per de-duplication key, the Unix second of the last message queued
/// with it (reserved: no definition may declare it).
pub const DEDUP_BALANCE: &str = "notify.dedup";

/// Most messages one change may route.
pub const MESSAGES_PER_CHANGE_MAX: usize = 32;

const CHANNEL_CHARS_MAX: usize = 32;
const ADDRESS_CHARS_MAX: usize = 512;
const NAME_CHARS_MAX: usize = 128;
const SUBJECT_CHARS_MAX: usize = 512;
const TEXT_CHARS_MAX: usize = 16 * 1024;
const HTML_CHARS_MAX: usize = 64 * 1024;
const DEDUP_KEY_CHARS_MAX: usize = 512;
const DEDUP_MINUTES_MAX: i64 = 31 * 24 * 60;

/// How urgent a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Waits for the recipient's send window.
    Routine,
    /// Important, still within the window unless the script says otherwise.
    High,
    /// Sent at once, whatever the window.
    Critical,
}

/// One message, as routed: what a channel sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The channel (`email`, `sms`, `webhook`, `dashboard`, `log`, …).
    pub channel: String,
    /// The channel's address: an e-mail address, a phone number, a webhook endpoint's name.
    pub to: String,
    /// Who it is for (a person's id, a role), for the record.
    #[serde(default)]
    pub recipient: String,
    /// Its category (`approval`, `backorder`, `dispute`, …): what preferences opt out of.
    pub category: String,
    /// How urgent.
    pub severity: Severity,
    /// Subject line (may be empty, e.g. for SMS).
    #[serde(default)]
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Not sent before this time (the recipient's send window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// The de-duplication key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    /// What caused it: `definition`, `business_key`, `command`, `from_state`, `to_state`,
    /// `reason`, `version`.
    #[serde(default)]
    pub source: Value,
}

/// A routed message with a de-duplication window, before the engine applies it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Routed {
    pub message: Message,
    pub dedup_minutes: Option<i64>,
}

/// A message with its id and instance: what a channel is handed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The message id (its job's id): stable across retries, the receiver's idempotency key.
    pub id: JobId,
    /// The instance whose change routed it.
    pub instance: InstanceId,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The message.
    pub message: Message,
}

/// Where a message's delivery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its channel (or its send window).
    Queued,
    /// A channel holds it and is sending.
    Sending,
    /// An attempt failed; another follows.
    Retrying,
    /// The channel accepted it.
    Sent,
    /// Every attempt failed: an incident waits for an operator.
    Undelivered,
    /// An operator gave it up.
    Cancelled,
}

/// A message and its delivery, as the engine API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The message id.
    pub id: JobId,
    /// The instance.
    pub instance: InstanceId,
    /// The message.
    pub message: Message,
    /// Where its delivery is.
    pub status: DeliveryStatus,
    /// Failed attempts so far.
    pub failures: u32,
    /// Failures allowed before it is undelivered.
    pub retries: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When the next attempt may start (queued or retrying).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl Delivery {
    /// The delivery a notification job records; `None` for other jobs.
    pub fn of(job: &Job) -> Option<Delivery> {
        if !is_notification(&job.job_type) {
            return None;
        }
        let message: Message = serde_json::from_value(job.payload.clone()).ok()?;
        let status = match job.status {
            JobStatus::Activatable if job.failures == 0 => DeliveryStatus::Queued,
            JobStatus::Activatable => DeliveryStatus::Retrying,
            JobStatus::Leased => DeliveryStatus::Sending,
            JobStatus::Completed => DeliveryStatus::Sent,
            JobStatus::Incident => DeliveryStatus::Undelivered,
            JobStatus::Cancelled => DeliveryStatus::Cancelled,
        };
        Some(Delivery {
            id: job.id,
            instance: job.instance,
            message,
            status,
            failures: job.failures,
            retries: job.retries,
            last_error: job.last_error.clone(),
            next_attempt_at: (job.status == JobStatus::Activatable).then_some(job.available_at),
            created_at: job.created_at,
            updated_at: job.updated_at,
        })
    }
}

/// Whether `job_type` is a notification's (`notify.<channel>`).
pub fn is_notification(job_type: &str) -> bool {
    job_type.starts_with(JOB_TYPE_PREFIX)
}

/// The job type of `channel`'s messages.
pub fn job_type(channel: &str) -> String {
    format!("{JOB_TYPE_PREFIX}{channel}")
}

/// What a channel's send returns.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

/// Why a channel could not deliver a message. A plain message (`"…".into()`) is retried after
/// the backoff, then an incident; [`SendError::retry_after`] waits as long as the receiver
/// asked (e.g. HTTP `Retry-After`); [`SendError::give_up`] makes it undelivered and an
/// incident at once (the receiver is gone).
pub type SendError = crate::engine::JobFailure;

impl crate::engine::JobFailure {
    /// Try again after `delay`, as the receiver asked.
    pub fn retry_after(message: impl Into<String>, delay: std::time::Duration) -> Self {
        crate::engine::JobFailure {
            message: message.into(),
            retry_in: Some(delay),
            give_up: false,
        }
    }

    /// Do not try again.
    pub fn give_up(message: impl Into<String>) -> Self {
        crate::engine::JobFailure {
            message: message.into(),
            retry_in: None,
            give_up: true,
        }
    }
}

/// A way to deliver messages: e-mail, SMS, a webhook, a log. `send` returns once the receiving
/// side accepted the message (`Ok`), or with why it did not (`Err`, a [`SendError`]: retried
/// after a backoff or when the receiver asked, then an incident; or an incident at once). It must be safe to call again with the same message: a receiver
/// de-duplicates by `notification.id`.
pub trait Channel: Send + Sync + 'static {
    /// Sends one message.
    fn send<'a>(&'a self, notification: &'a Notification) -> SendFuture<'a>;
}

/// The key under which [`DEDUP_BALANCE`] keeps a de-duplication key's last use: the key
/// itself when it fits a balance key (128 bytes), else its SHA-256.
pub(crate) fn dedup_balance_key(key: &str) -> String {
    use sha2::{Digest, Sha256};
    if key.len() <= 128 {
        key.to_string()
    } else {
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

/// Reads the `notify` script's result for one change: the messages, checked, each with its
/// `source` set. The message is `messages[i]: what is wrong`.
pub(crate) fn parse_routed(result: &Value, source: &Value) -> Result<Vec<Routed>, String> {
    let items = match result {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => {
            return Err(format!(
                "route returned {}, not a list of messages",
                crate::json::kind(other)
            ))
        }
    };
    if items.len() > MESSAGES_PER_CHANGE_MAX {
        return Err(format!(
            "route returned {} messages; one change may route at most {MESSAGES_PER_CHANGE_MAX}",
            items.len()
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_one(item, source).map_err(|m| format!("messages[{i}]: {m}")))
        .collect()
}

fn parse_one(item: &Value, source: &Value) -> Result<Routed, String> {
    let map = item
        .as_object()
        .ok_or_else(|| format!("is {}, not a map", crate::json::kind(item)))?;
    const KNOWN: [&str; 10] = [
        "channel",
        "to",
        "recipient",
        "category",
        "severity",
        "subject",
        "text",
        "html",
        "not_before",
        "dedup",
    ];
    if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{}` (known: {})",
            crate::error::clip(unknown, 64),
            KNOWN.join(", ")
        ));
    }
    let channel = text(map, "channel", CHANNEL_CHARS_MAX, true)?;
    if !channel.starts_with(|c: char| c.is_ascii_lowercase())
        || !channel
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "channel `{}` must be lower-case letters, digits and `_`, starting with a letter",
            crate::error::clip(&channel, 64)
        ));
    }
    let severity = match map.get("severity") {
        None | Some(Value::Null) => Severity::Routine,
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| "severity must be \"routine\", \"high\" or \"critical\"".to_string())?,
    };
    let not_before = match map.get("not_before") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    format!(
                        "not_before `{}` is not a timestamp",
                        crate::error::clip(s, 64)
                    )
                })?
                .with_timezone(&Utc),
        ),
        Some(other) => {
            return Err(format!(
                "not_before is {}, not a timestamp",
                crate::json::kind(other)
            ))
        }
    };
    let (dedup_key, dedup_minutes) = match map.get("dedup") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(d)) => {
            let key =
                text(d, "key", DEDUP_KEY_CHARS_MAX, true).map_err(|m| format!("dedup.{m}"))?;
            let minutes = d
                .get("minutes")
                .and_then(|m| match m {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                })
                .filter(|m| (1..=DEDUP_MINUTES_MAX).contains(m))
                .ok_or_else(|| {
                    format!("dedup.minutes must be a whole number from 1 to {DEDUP_MINUTES_MAX}")
                })?;
            (Some(key), Some(minutes))
        }
        Some(other) => {
            return Err(format!(
                "dedup is {}, not #{{ key, minutes }}",
                crate::json::kind(other)
            ))
        }
    };
    let html = match map.get("html") {
        None | Some(Value::Null) => None,
        Some(_) => Some(text(map, "html", HTML_CHARS_MAX, false)?),
    };
    Ok(Routed {
        message: Message {
            channel,
            to: text(map, "to", ADDRESS_CHARS_MAX, true)?,
            recipient: optional_text(map, "recipient", NAME_CHARS_MAX)?,
            category: text(map, "category", NAME_CHARS_MAX, true)?,
            severity,
            subject: optional_text(map, "subject", SUBJECT_CHARS_MAX)?,
            text: text(map, "text", TEXT_CHARS_MAX, true)?,
            html,
            not_before,
            dedup_key,
            source: source.clone(),
        },
        dedup_minutes,
    })
}

fn optional_text(
    map: &serde_json::Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<String, String> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(_) => text(map, field, max, false),
    }
}

fn text(
    map: &serde_json::Map<String, Value>,
    field: &str,
    max: usize,
    required: bool,
) -> Result<String, String> {
    match map.get(field) {
        Some(Value::String(s)) if required && s.trim().is_empty() => {
            Err(format!("{field} is empty"))
        }
        Some(Value::String(s)) if s.chars().count() > max => {
            Err(format!("{field} is longer than {max} characters"))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(format!("{field} is missing")),
        Some(other) => Err(format!(
            "{field} is {}, not a string",
            crate::json::kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(item: Value) -> Result<Routed, String> {
        parse_routed(&json!([item]), &json!({})).map(|mut v| v.remove(0))
    }

    #[test]
    fn a_message_needs_channel_address_category_and_text() {
        let ok = one(json!({ "channel": "email", "to": "a@example.com", "category": "approval", "text": "hi" }))
            .unwrap();
        assert_eq!(ok.message.severity, Severity::Routine);
        assert_eq!(ok.dedup_minutes, None);
        for (field, expected) in [
            ("channel", "messages[0]: channel is missing"),
            ("to", "messages[0]: to is missing"),
            ("category", "messages[0]: category is missing"),
            ("text", "messages[0]: text is missing"),
        ] {
            let mut item = json!({ "channel": "email", "to": "a@example.com", "category": "approval", "text": "hi" });
            item.as_object_mut().unwrap().remove(field);
            assert_eq!(
                parse_routed(&json!([item]), &json!({})).unwrap_err(),
                expected
            );
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let base =
            json!({ "channel": "email", "to": "a@example.com", "category": "c", "text": "t" });
        let with = |k: &str, v: Value| {
            let mut item = base.clone();
            item[k] = v;
            one(item).unwrap_err()
        };
        assert!(with("channel", json!("E-mail")).contains("lower-case"));
        assert!(with("severity", json!("urgent")).contains("severity must be"));
        assert!(with("not_before", json!("tomorrow")).contains("not_before `tomorrow`"));
        assert!(with("dedup", json!({ "key": "k", "minutes": 0 })).contains("dedup.minutes"));
        assert!(with("dedup", json!({ "key": "", "minutes": 5 })).contains("dedup.key is empty"));
        assert!(with("text", json!("x".repeat(TEXT_CHARS_MAX + 1))).contains("longer than"));
        assert!(with("colour", json!("red")).contains("unknown field `colour`"));
        assert!(parse_routed(&json!({}), &json!({}))
            .unwrap_err()
            .contains("not a list"));
        let many: Vec<Value> = (0..=MESSAGES_PER_CHANGE_MAX)
            .map(|_| base.clone())
            .collect();
        assert!(parse_routed(&Value::Array(many), &json!({}))
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn window_and_dedup_are_read() {
        let r = one(json!({ "channel": "sms", "to": "+4930", "category": "dispute", "severity": "critical", "text": "t",
            "not_before": "2026-03-01T08:00:00+01:00", "dedup": { "key": "k", "minutes": 60 } }))
        .unwrap();
        assert_eq!(r.message.severity, Severity::Critical);
        assert_eq!(
            r.message.not_before.unwrap().to_rfc3339(),
            "2026-03-01T07:00:00+00:00"
        );
        assert_eq!(r.message.dedup_key.as_deref(), Some("k"));
        assert_eq!(r.dedup_minutes, Some(60));
    }
}
