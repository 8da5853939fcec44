//! Notifications in the engine: routing each change of a commit through the rule set's
//! `notify` script into notification jobs of that same commit (the outbox), de-duplication,
//! channels, completing a delivery, and reading deliveries. The types are in
//! [`crate::notification`].

use std::sync::Arc;

use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::Engine;
use crate::decider::BalanceRead;
use crate::error::CommandError;
use crate::feed::{EventDraft, EventType};
use crate::job::{Job, JobId, JobStatus};
use crate::model::InstanceId;
use crate::notification::{
    dedup_balance_key, job_type, parse_routed, Channel, Delivery, Notification, Routed, SendError,
    DEDUP_BALANCE,
};
use crate::store::{BalanceChange, Commit, JobWrite};

/// Most characters of a routing error kept in its feed event.
const ROUTING_ERROR_CHARS_MAX: usize = 2000;

impl Engine {
    /// Routes every instance change of `commit` through the active rule set's `notify` script
    /// and adds the messages to the commit as notification jobs, each with a
    /// `notification.queued` event (or `notification.suppressed`, for a de-duplicated one).
    /// A script that fails or returns something invalid does not stop the change: the commit
    /// carries a `notification.routing_failed` event instead, and the failure is logged.
    /// Expects the commit's instance events first, one per write (as `commit_prepared` makes
    /// them).
    pub(super) async fn route_notifications(
        &self,
        commit: &mut Commit,
    ) -> Result<(), CommandError> {
        let Some(set) = self.rules().active_set.clone() else {
            return Ok(());
        };
        if !set.routes_notifications() || commit.writes.is_empty() {
            return Ok(());
        }
        let changes = routed_changes(commit);
        let now = commit.at;
        let events: Vec<Value> = changes.iter().map(|c| c.0.clone()).collect();
        let results = self
            .inner
            .rule_pool
            .run("notification routing", move || {
                events
                    .iter()
                    .map(|e| set.route_notifications(e, now, std::time::Duration::ZERO))
                    .collect::<Vec<_>>()
            })
            .await?;
        let results = match results {
            Ok(results) => results,
            Err(panic) => changes
                .iter()
                .map(|_| {
                    Some(Err(crate::decider::DecideError::new(format!(
                        "the notification router panicked: {}",
                        crate::error::clip(&panic, 200)
                    ))))
                })
                .collect(),
        };
        let mut queued_keys = Vec::new();
        for ((_, source, instance), result) in changes.iter().zip(results) {
            let routed = match result {
                None => continue,
                Some(Ok(value)) => parse_routed(&value, source),
                Some(Err(e)) => Err(e.to_string()),
            };
            match routed {
                Ok(messages) => {
                    for routed in messages {
                        self.queue_message(commit, *instance, routed, &mut queued_keys)?;
                    }
                }
                Err(error) => {
                    tracing::warn!(%instance, %error, "routing notifications failed; the change commits without them");
                    commit.events.push(self.notification_event(
                        EventType::NotificationRoutingFailed,
                        *instance,
                        json!({
                            "instance": instance,
                            "source": source,
                            "error": crate::error::clip(&error, ROUTING_ERROR_CHARS_MAX),
                        }),
                        now,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Adds one routed message to `commit`: a job and its `queued` event, unless its
    /// de-duplication key was used within its window (here, or by a commit before) — then a
    /// `suppressed` event. The key's last use is read now and checked again in the atomic
    /// write, so two concurrent commits cannot both send.
    fn queue_message(
        &self,
        commit: &mut Commit,
        instance: InstanceId,
        routed: Routed,
        queued_keys: &mut Vec<String>,
    ) -> Result<(), CommandError> {
        let now = commit.at;
        let message = routed.message;
        if let (Some(dedup_key), Some(minutes)) = (&message.dedup_key, routed.dedup_minutes) {
            let key = &dedup_balance_key(dedup_key);
            let last = self.inner.store.balance(DEDUP_BALANCE, key)?;
            let at = Decimal::from(now.timestamp());
            let window = Decimal::from(minutes * 60);
            let recent = queued_keys.contains(key) || (last > Decimal::ZERO && at - last < window);
            if recent {
                commit.events.push(self.notification_event(
                    EventType::NotificationSuppressed,
                    instance,
                    json!({
                        "instance": instance,
                        "channel": message.channel,
                        "to": message.to,
                        "category": message.category,
                        "dedup_key": dedup_key,
                        "minutes": minutes,
                        "source": message.source,
                    }),
                    now,
                ));
                return Ok(());
            }
            queued_keys.push(key.clone());
            commit.balance_checks.push(BalanceRead {
                balance: DEDUP_BALANCE.to_string(),
                key: key.clone(),
                value: last,
            });
            commit.balances.push(BalanceChange {
                balance: DEDUP_BALANCE.to_string(),
                key: key.clone(),
                amount: at - last,
            });
        }
        let config = &self.inner.config;
        let job = Job::notification(
            job_type(&message.channel),
            instance,
            serde_json::to_value(&message).expect("a message serializes"),
            (config.notification_retries, config.notification_backoff),
            message.not_before.unwrap_or(now),
            now,
        );
        let event = self.job_event(
            EventType::JobCreated,
            &job,
            json!({ "available_at": job.available_at }),
        );
        commit.events.push(event);
        commit.jobs.push(JobWrite {
            job,
            expected_version: None,
        });
        Ok(())
    }

    fn notification_event(
        &self,
        kind: EventType,
        instance: InstanceId,
        data: Value,
        time: chrono::DateTime<chrono::Utc>,
    ) -> EventDraft {
        EventDraft {
            source: self.inner.config.feed_source.clone(),
            kind,
            subject: instance.to_string(),
            time,
            data,
        }
    }

    /// Delivers every message of channel `name` (jobs of type `notify.<name>`) through
    /// `channel`, in-process, with the jobs' leases, retries and incidents
    /// ([`Engine::register_job_handler`]).
    pub fn register_channel(&self, name: &str, channel: Arc<dyn Channel>) {
        self.register_detailed_handler(&job_type(name), move |job| {
            let channel = channel.clone();
            async move {
                let message = serde_json::from_value(job.payload)
                    .map_err(|e| SendError::give_up(format!("the message cannot be read: {e}")))?;
                let notification = Notification {
                    id: job.id,
                    instance: job.instance,
                    attempt: job.attempt,
                    message,
                };
                channel.send(&notification).await.map(|()| json!({}))
            }
        });
    }

    /// One message and its delivery.
    pub async fn notification(&self, id: JobId) -> Result<Delivery, CommandError> {
        let job = self.job(id).await?;
        Delivery::of(&job).ok_or(CommandError::UnknownJob(id))
    }

    /// The messages `instance`'s changes routed, oldest first, with their deliveries (among
    /// its first `page_size_max` jobs; [`Engine::jobs_page`] pages through more).
    pub async fn notifications(&self, instance: InstanceId) -> Result<Vec<Delivery>, CommandError> {
        Ok(self
            .jobs(instance)
            .await?
            .iter()
            .filter_map(Delivery::of)
            .collect())
    }

    /// [`Engine::notifications`], for `actor`, who must be allowed to read the instance.
    pub async fn notifications_as(
        &self,
        actor: &crate::model::Actor,
        instance: InstanceId,
    ) -> Result<Vec<Delivery>, CommandError> {
        self.get_as(actor, instance).await?;
        self.notifications(instance).await
    }

    /// Marks a leased notification sent. A message already sent stays sent: completing it
    /// again (a worker retrying after a lost reply, or one whose lease had lapsed while another
    /// sent it too) is answered with the job as it is.
    pub(super) async fn complete_notification(
        &self,
        job: Job,
        lease: uuid::Uuid,
    ) -> Result<Job, CommandError> {
        if job.status == JobStatus::Completed {
            return Ok(job);
        }
        self.change_job(job.id, |engine, job, now| {
            let current = engine.current_lease(job.id, lease, job.instance)?;
            let mut sent = current.clone();
            sent.complete(now);
            let event = engine.job_event(EventType::JobCompleted, &sent, json!({}));
            Ok((current.version, sent, vec![event]))
        })
        .await
    }
}

/// Each instance change of `commit` as the router sees it (its feed event's data plus `type`),
/// with the `source` its messages record and its instance.
fn routed_changes(commit: &Commit) -> Vec<(Value, Value, InstanceId)> {
    commit
        .writes
        .iter()
        .zip(&commit.events)
        .map(|(write, event)| {
            let instance = &write.instance;
            let mut routed = event.data.clone();
            if let Some(map) = routed.as_object_mut() {
                map.insert("type".into(), json!(event.kind.as_str()));
            }
            let source = json!({
                "definition": instance.definition.name,
                "business_key": instance.business_key,
                "version": instance.version,
                "command": event.data.get("command"),
                "from_state": event.data.get("from_state"),
                "to_state": instance.state,
                "reason": event.data.get("reason"),
            });
            (routed, source, instance.id)
        })
        .collect()
}
