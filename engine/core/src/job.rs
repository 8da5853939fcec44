//! External jobs: steps a host performs outside the engine (reserve stock, capture a
//! payment, create a shipment), created by transitions and leased to workers.
//!
//! A worker activates jobs of a type and gets each with a lease; completing carries the lease
//! and becomes the definition's completion command on the instance, in the same commit that
//! marks the job completed. A completion on a stale lease (re-leased, expired, finished) is
//! refused. A failure schedules a retry with exponential backoff; when the retries run out
//! the job becomes an incident an operator resolves (retry or cancel). An expired lease makes
//! the job available again. The job id is the host's idempotency key for the external side
//! effect: it never changes across retries and re-deliveries.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::model::InstanceId;

/// Identifies one job; the host's idempotency key for the side effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a worker (from `available_at`).
    Activatable,
    /// Leased to a worker until the lease expires.
    Leased,
    /// Retries ran out; waits for an operator.
    Incident,
    /// Completed; its completion command was applied.
    Completed,
    /// Cancelled by an operator or with its instance.
    Cancelled,
}

/// A worker's claim on a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Changes with every activation; completions must carry the current one.
    pub id: Uuid,
    /// The worker holding it.
    pub worker: String,
    /// When it lapses and the job becomes available again.
    pub expires_at: DateTime<Utc>,
}

/// A job and everything needed to run, retry and finish it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Its type, declared in the definition's `[jobs]`.
    pub job_type: String,
    /// The instance whose transition created it.
    pub instance: InstanceId,
    /// Input for the worker.
    pub payload: Value,
    /// Where it is.
    pub status: JobStatus,
    /// Failed attempts so far.
    pub failures: u32,
    /// Failures allowed before an incident.
    pub retries: u32,
    /// Delay before the first retry, in milliseconds; doubles with each failure.
    pub backoff_ms: u64,
    /// When it may be activated (also the lease expiry while leased).
    pub available_at: DateTime<Utc>,
    /// The current lease, while leased.
    pub lease: Option<Lease>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The lease the last failure was reported with: the same report again (a worker retrying
    /// after a lost reply) is answered as the first was, not refused as stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_lease: Option<uuid::Uuid>,
    /// The command sent to the instance on completion, with the result as payload.
    pub complete_command: String,
    /// Starts at 1; grows with every change (leases, failures, completion).
    pub version: u64,
    /// When the transition created it.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl Job {
    /// A new job of type `spec` for `instance`, available at once.
    pub(crate) fn new(
        spec: &crate::definition::JobDef,
        instance: InstanceId,
        payload: Value,
        now: DateTime<Utc>,
    ) -> Job {
        Job {
            id: JobId(Uuid::now_v7()),
            job_type: spec.name.clone(),
            instance,
            payload,
            status: JobStatus::Activatable,
            failures: 0,
            retries: spec.retries,
            backoff_ms: spec.backoff.num_milliseconds().max(0) as u64,
            available_at: now,
            lease: None,
            last_error: None,
            failed_lease: None,
            complete_command: spec.complete.clone(),
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// A notification's job: `message` for channel `job_type` (`notify.<channel>`), available
    /// from `available_at`, with no completion command.
    pub(crate) fn notification(
        job_type: String,
        instance: InstanceId,
        message: Value,
        (retries, backoff): (u32, std::time::Duration),
        available_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Job {
        Job {
            id: JobId(Uuid::now_v7()),
            job_type,
            instance,
            payload: message,
            status: JobStatus::Activatable,
            failures: 0,
            retries,
            backoff_ms: backoff.as_millis().min(u64::MAX as u128) as u64,
            available_at: available_at.max(now),
            lease: None,
            last_error: None,
            failed_lease: None,
            complete_command: String::new(),
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// Whether the job still waits for a worker, is leased, or is an incident: what
    /// cancelling its instance cancels.
    pub fn is_open(&self) -> bool {
        matches!(
            self.status,
            JobStatus::Activatable | JobStatus::Leased | JobStatus::Incident
        )
    }

    /// Every change: a new version, changed now.
    fn changed(&mut self, now: DateTime<Utc>) {
        self.version += 1;
        self.updated_at = now;
    }

    /// Whether the job may be leased at `now`: waiting, or leased with a lease that expired.
    pub(crate) fn can_lease(&self, now: DateTime<Utc>) -> bool {
        self.status == JobStatus::Activatable
            || (self.status == JobStatus::Leased && self.available_at <= now)
    }

    /// Leases the job to `worker` until `expires_at`. Legal for a job that is waiting, or
    /// leased with a lease that expired.
    pub(crate) fn lease_to(&mut self, worker: &str, expires_at: DateTime<Utc>, now: DateTime<Utc>) {
        assert!(
            self.can_lease(now),
            "job {} cannot be leased while {:?}",
            self.id,
            self.status
        );
        self.status = JobStatus::Leased;
        self.lease = Some(Lease {
            id: Uuid::now_v7(),
            worker: worker.to_string(),
            expires_at,
        });
        self.available_at = expires_at;
        self.changed(now);
    }

    /// Marks a leased job completed.
    pub(crate) fn complete(&mut self, now: DateTime<Utc>) {
        assert_eq!(
            self.status,
            JobStatus::Leased,
            "job {} completed while not leased",
            self.id
        );
        self.status = JobStatus::Completed;
        self.lease = None;
        self.changed(now);
    }

    /// Records a failed attempt of a leased job: available again after `retry_in` (or its
    /// backoff), or, when its retries are used up or the worker gave up on it, an incident.
    /// Returns whether it became an incident.
    pub(crate) fn fail(
        &mut self,
        error: &str,
        retry_in: Option<chrono::Duration>,
        give_up: bool,
        now: DateTime<Utc>,
    ) -> bool {
        assert_eq!(
            self.status,
            JobStatus::Leased,
            "job {} failed while not leased",
            self.id
        );
        self.failures += 1;
        self.failed_lease = self.lease.as_ref().map(|l| l.id);
        self.lease = None;
        self.last_error = Some(error.to_string());
        self.changed(now);
        if !give_up && self.failures <= self.retries {
            // Notifications retry their backoff with ±20% jitter, so a receiver that came back
            // is not hit by every waiting message at once; a delay the receiver asked for
            // (`Retry-After`) is kept as it is.
            let delay = if let Some(asked) = retry_in {
                asked
            } else if crate::notification::is_notification(&self.job_type) {
                let delay = self.backoff();
                let spread = (uuid::Uuid::new_v4().as_u128() % 401) as i128 - 200; // ‰
                let ms = delay.num_milliseconds() as i128;
                let jittered = (ms + ms * spread / 1000).clamp(0, i64::MAX as i128);
                chrono::Duration::milliseconds(jittered as i64)
            } else {
                self.backoff()
            };
            self.status = JobStatus::Activatable;
            self.available_at = now.checked_add_signed(delay).unwrap_or(now);
            false
        } else {
            self.status = JobStatus::Incident;
            self.available_at = now;
            true
        }
    }

    /// The delay before the next attempt: the backoff, doubled for each failure before the
    /// last one.
    fn backoff(&self) -> chrono::Duration {
        let doublings = self.failures.saturating_sub(1).min(20);
        let millis = self
            .backoff_ms
            .saturating_mul(1 << doublings)
            .min(i64::MAX as u64);
        chrono::Duration::milliseconds(millis as i64)
    }

    /// Resolves an incident: available again with `retries` more failures allowed, or
    /// cancelled.
    pub(crate) fn resolve(&mut self, action: IncidentAction, now: DateTime<Utc>) {
        assert_eq!(
            self.status,
            JobStatus::Incident,
            "job {} resolved while not an incident",
            self.id
        );
        match action {
            IncidentAction::Retry { retries } => {
                self.status = JobStatus::Activatable;
                self.available_at = now;
                self.retries = self.failures.saturating_add(retries.max(1));
            }
            IncidentAction::Cancel => self.status = JobStatus::Cancelled,
        }
        self.changed(now);
    }

    /// Cancels an open job (its instance was cancelled).
    pub(crate) fn cancel(&mut self, now: DateTime<Utc>) {
        assert!(
            self.is_open(),
            "job {} cancelled while {:?}",
            self.id,
            self.status
        );
        self.status = JobStatus::Cancelled;
        self.lease = None;
        self.changed(now);
    }
}

/// A job handed to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivatedJob {
    /// The job id: the idempotency key for the external side effect.
    pub id: JobId,
    /// The lease to carry when completing or failing.
    pub lease: Uuid,
    /// When the lease lapses.
    pub lease_expires_at: DateTime<Utc>,
    /// Job type.
    pub job_type: String,
    /// The instance.
    pub instance: InstanceId,
    /// Input.
    pub payload: Value,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// What an operator does with an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IncidentAction {
    /// Make the job available again, allowing this many more failures.
    Retry {
        /// Additional failures allowed.
        retries: u32,
    },
    /// Give the job up.
    Cancel,
}
