//! The job side of the engine: activation with leases, completion (a command on the
//! instance, in the same commit), failure with backoff, incidents, and in-process handlers.
//! Job state changes go through `Job`'s methods, which assert that each move is legal.

use std::future::Future;
use std::time::Duration as StdDuration;

use chrono::Duration;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::requests::CommandRequest;

/// Most job types one long poll may name.
const JOB_TYPES_MAX: usize = 16;
/// The longest a long poll may wait.
const WAIT_MAX: StdDuration = StdDuration::from_secs(300);
/// Most jobs one page of incidents looks at.
const INCIDENT_SCAN_MAX: usize = 4096;
use super::{Applied, Engine, Origin};
use crate::committer::Reply;
use crate::error::CommandError;
use crate::feed::{EventDraft, EventType};
use crate::job::{ActivatedJob, IncidentAction, Job, JobId, JobStatus};
use crate::model::{roles, Actor, CommandOutcome, InstanceId};
use crate::store::{Commit, CommitApplied, CommitRefusal, JobWrite};

/// Ask for jobs of one type.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ActivateJobs {
    /// The job type.
    pub job_type: String,
    /// Who takes them (recorded on the lease).
    pub worker: String,
    /// Most jobs to return (1 up to the engine's `page_size_max`).
    pub max_jobs: usize,
    /// How long the worker has before the job becomes available again (1 s to 24 h).
    pub lease: StdDuration,
}

impl ActivateJobs {
    /// Up to `max_jobs` jobs of `job_type` for `worker`, each leased for `lease`.
    pub fn new(
        job_type: impl Into<String>,
        worker: impl Into<String>,
        max_jobs: usize,
        lease: StdDuration,
    ) -> Self {
        ActivateJobs {
            job_type: job_type.into(),
            worker: worker.into(),
            max_jobs,
            lease,
        }
    }
}

/// Report that a leased job failed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FailJob {
    /// The job.
    pub job: JobId,
    /// The lease it was activated with.
    pub lease: uuid::Uuid,
    /// What went wrong (kept on the job and in the feed).
    pub error: String,
    /// Retry after this long instead of the job type's backoff.
    pub retry_in: Option<StdDuration>,
    /// No further attempt can succeed (e.g. the receiver is gone): an incident now, whatever
    /// retries are left.
    pub give_up: bool,
}

/// Why an in-process handler's attempt failed, and what to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    /// What went wrong (kept on the job and in the feed; clipped to the report's limit).
    pub message: String,
    /// Try again after this long instead of the job type's backoff (e.g. a receiver's
    /// `Retry-After`).
    pub retry_in: Option<StdDuration>,
    /// No attempt can succeed: an incident now.
    pub give_up: bool,
}

impl std::fmt::Display for JobFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for JobFailure {
    fn from(message: String) -> Self {
        JobFailure {
            message,
            retry_in: None,
            give_up: false,
        }
    }
}

impl From<&str> for JobFailure {
    fn from(message: &str) -> Self {
        JobFailure::from(message.to_string())
    }
}

impl FailJob {
    /// `job`, leased as `lease`, failed with `error`; retried after the job type's backoff.
    pub fn new(job: JobId, lease: uuid::Uuid, error: impl Into<String>) -> Self {
        FailJob {
            job,
            lease,
            error: error.into(),
            retry_in: None,
            give_up: false,
        }
    }

    /// An incident now: no retry could succeed.
    pub fn give_up(mut self) -> Self {
        self.give_up = true;
        self
    }

    /// Retried after `delay` instead.
    pub fn retry_in(mut self, delay: StdDuration) -> Self {
        self.retry_in = Some(delay);
        self
    }
}

const LEASE_MAX: StdDuration = StdDuration::from_secs(24 * 3600);
const ERROR_CHARS_MAX: usize = 4096;

impl Engine {
    /// A job's event; a notification's job has the notification types instead of `created`,
    /// `completed` and `failed` (`queued`, `sent`, `failed`).
    pub(super) fn job_event(&self, kind: EventType, job: &Job, extra: Value) -> EventDraft {
        let kind = match kind {
            _ if !crate::notification::is_notification(&job.job_type) => kind,
            EventType::JobCreated => EventType::NotificationQueued,
            EventType::JobCompleted => EventType::NotificationSent,
            EventType::JobFailed => EventType::NotificationFailed,
            other => other,
        };
        let mut data = json!({
            "job": job.id,
            "job_type": job.job_type,
            "instance": job.instance,
            "status": job.status,
            "failures": job.failures,
            "retries": job.retries,
            "payload": job.payload,
        });
        if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
            data.extend(extra);
        }
        EventDraft {
            source: self.inner.config.feed_source.clone(),
            kind,
            subject: job.instance.to_string(),
            time: job.updated_at,
            data,
        }
    }

    /// The job, if `lease` is its current, unexpired lease (and it belongs to `instance`).
    pub(super) fn current_lease(
        &self,
        id: JobId,
        lease: uuid::Uuid,
        instance: InstanceId,
    ) -> Result<Job, CommandError> {
        let job = self
            .inner
            .store
            .job(id)?
            .ok_or(CommandError::UnknownJob(id))?;
        let stale = |reason: String| Err(CommandError::StaleLease { job: id, reason });
        if job.instance != instance {
            return stale(format!("it belongs to instance {}", job.instance));
        }
        match &job.lease {
            _ if job.status != JobStatus::Leased => stale(format!("the job is {:?}", job.status)),
            Some(l) if l.id != lease => stale("the job was activated again since".into()),
            Some(l) if l.expires_at <= self.inner.config.clock.now() => {
                stale(format!("the lease expired at {}", l.expires_at))
            }
            _ => Ok(job),
        }
    }

    /// The job `id`.
    pub async fn job(&self, id: JobId) -> Result<Job, CommandError> {
        self.inner
            .store
            .job(id)?
            .ok_or(CommandError::UnknownJob(id))
    }

    /// The first jobs of an instance (at most the configured `page_size_max`), oldest first;
    /// incidents are the ones with status [`JobStatus::Incident`]. [`Engine::jobs_page`]
    /// pages through more.
    pub async fn jobs(&self, instance: InstanceId) -> Result<Vec<Job>, CommandError> {
        let max = self.inner.config.page_size_max;
        Ok(self.jobs_page(instance, max, None).await?.items)
    }

    /// A page of an instance's jobs, oldest first; `page_token` is a previous page's
    /// `next_page_token`.
    pub async fn jobs_page(
        &self,
        instance: InstanceId,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<crate::store::Page<Job>, CommandError> {
        let page_size = self.page_size(page_size)?;
        let after = match page_token {
            None | Some("") => None,
            Some(t) => Some(t.parse::<JobId>().map_err(|_| CommandError::InvalidInput {
                field: "page_token".into(),
                message: "is not a token this list returned".into(),
            })?),
        };
        self.get(instance).await?;
        let mut items = self.inner.store.jobs_of(instance, after, page_size + 1)?;
        let more = items.len() > page_size;
        items.truncate(page_size);
        Ok(crate::store::Page {
            next_page_token: if more {
                items.last().map(|j| j.id.to_string())
            } else {
                None
            },
            items,
        })
    }

    /// Leases up to `max_jobs` available jobs of a type (new, due for a retry, or whose lease
    /// expired) to `worker`.
    pub async fn activate_jobs(
        &self,
        request: ActivateJobs,
    ) -> Result<Vec<ActivatedJob>, CommandError> {
        self.check_activation(&request)?;
        let now = self.inner.config.clock.now();
        let lease = Duration::from_std(request.lease).expect("bounded above");
        let job_type = request.job_type.clone();
        let max = request.max_jobs;
        let call = self.store_call();
        let candidates = tokio::task::spawn_blocking(move || {
            call.run(|store| store.activatable_jobs(&job_type, now, max))
        })
        .await
        .expect("activation scan task panicked")?;
        let mut pending = Vec::with_capacity(candidates.len());
        for job in candidates {
            let mut leased = job.clone();
            leased.lease_to(&request.worker, now + lease, now);
            let commit = Commit::job_change(
                now,
                JobWrite {
                    job: leased.clone(),
                    expected_version: Some(job.version),
                },
                Vec::new(),
            );
            // Enqueue every lease first so they share one group commit.
            pending.push((leased, self.enqueue(commit).await?));
        }
        let mut activated = Vec::with_capacity(pending.len());
        for (job, answer) in pending {
            match self.answer(answer).await? {
                Ok(_) => {
                    let lease = job.lease.expect("just leased");
                    activated.push(ActivatedJob {
                        id: job.id,
                        lease: lease.id,
                        lease_expires_at: lease.expires_at,
                        job_type: job.job_type,
                        instance: job.instance,
                        payload: job.payload,
                        attempt: job.failures + 1,
                    });
                }
                // Another worker took it first: not ours.
                Err(CommitRefusal::JobConflict { .. }) => {}
                Err(other) => {
                    tracing::error!(?other, "unexpected refusal of a job lease");
                }
            }
        }
        Ok(activated)
    }

    /// Leases up to `max_jobs` available jobs of any of `job_types` (in that order) to
    /// `worker`, waiting up to `wait` for one when none is available (a long poll: it wakes
    /// when a transition creates a job or a failure makes one available, and looks again every
    /// `job_poll_interval` for retries falling due). At most 16 types; `wait` at most 5
    /// minutes.
    pub async fn activate_jobs_waiting(
        &self,
        job_types: &[String],
        worker: &str,
        max_jobs: usize,
        lease: StdDuration,
        wait: StdDuration,
    ) -> Result<Vec<ActivatedJob>, CommandError> {
        let invalid = |field: &str, message: &str| CommandError::InvalidInput {
            field: field.into(),
            message: message.into(),
        };
        if job_types.is_empty() || job_types.len() > JOB_TYPES_MAX {
            return Err(invalid("job_types", "name 1 to 16 job types"));
        }
        if wait > WAIT_MAX {
            return Err(invalid("wait", "is longer than 5 minutes"));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a job created meanwhile still wakes us.
            let wake = self.inner.jobs_available.clone();
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut activated = Vec::new();
            for job_type in job_types {
                let left = max_jobs.saturating_sub(activated.len());
                if left == 0 {
                    break;
                }
                let request = ActivateJobs::new(job_type.clone(), worker, left.max(1), lease);
                activated.extend(self.activate_jobs(request).await?);
            }
            let now = tokio::time::Instant::now();
            if !activated.is_empty() || now >= deadline {
                return Ok(activated);
            }
            let poll = self.inner.config.job_poll_interval;
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(poll.min(deadline - now)) => {}
            }
        }
    }

    /// A page of the jobs that are incidents (their retries ran out), oldest first, for an
    /// admin. Each call looks at a bounded number of jobs, so a page may hold fewer than
    /// `page_size` (even none) and still have a `next_page_token`.
    pub async fn incidents_page(
        &self,
        actor: &Actor,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<crate::store::Page<Job>, CommandError> {
        super::require_role(actor, &[roles::ADMIN.to_string()], || {
            "list job incidents".to_string()
        })?;
        let page_size = self.page_size(page_size)?;
        let mut after = match page_token {
            None | Some("") => None,
            Some(t) => Some(t.parse::<JobId>().map_err(|_| CommandError::InvalidInput {
                field: "page_token".into(),
                message: "is not a token this list returned".into(),
            })?),
        };
        const BATCH: usize = 256;
        let mut items = Vec::new();
        let mut looked = 0;
        while looked < INCIDENT_SCAN_MAX && items.len() < page_size {
            let jobs = self.inner.store.jobs_after(after, BATCH)?;
            let end = jobs.len() < BATCH;
            for job in jobs {
                looked += 1;
                after = Some(job.id);
                if job.status == JobStatus::Incident {
                    items.push(job);
                    if items.len() == page_size {
                        break;
                    }
                }
            }
            if end && items.len() < page_size {
                return Ok(crate::store::Page {
                    items,
                    next_page_token: None,
                });
            }
        }
        Ok(crate::store::Page {
            next_page_token: after.map(|id| id.to_string()),
            items,
        })
    }

    fn check_activation(&self, request: &ActivateJobs) -> Result<(), CommandError> {
        let invalid = |field: &str, message: String| {
            Err(CommandError::InvalidInput {
                field: field.into(),
                message,
            })
        };
        let max = self.inner.config.page_size_max;
        if request.max_jobs == 0 || request.max_jobs > max {
            return invalid(
                "max_jobs",
                format!("{} is outside 1..={max}", request.max_jobs),
            );
        }
        if request.lease < StdDuration::from_secs(1) || request.lease > LEASE_MAX {
            return invalid("lease", "must be between 1 second and 24 hours".into());
        }
        if request.worker.is_empty()
            || request.worker.len() > 256
            || request.worker.chars().any(char::is_control)
        {
            return invalid(
                "worker",
                "must be a name of 1 to 256 bytes without control characters".into(),
            );
        }
        Ok(())
    }

    /// Completes a leased job: its type's completion command is sent to the instance with
    /// `result` as payload, and the job is marked completed in the same commit. Retrying with
    /// the same lease and result returns the same outcome; a stale lease is refused. A
    /// notification's job has no completion command: it is marked sent, and the outcome is
    /// its instance as it is.
    pub async fn complete_job(
        &self,
        id: JobId,
        lease: uuid::Uuid,
        result: Value,
    ) -> Result<CommandOutcome, CommandError> {
        let job = self.job(id).await?;
        if crate::notification::is_notification(&job.job_type) {
            let sent = self.complete_notification(job, lease).await?;
            let instance = self
                .inner
                .store
                .instance(sent.instance)?
                .ok_or(CommandError::UnknownInstance(sent.instance))?;
            return Ok(CommandOutcome::of(&instance, "notification sent".into()));
        }
        let worker = job
            .lease
            .as_ref()
            .map(|l| l.worker.clone())
            .unwrap_or_default();
        let request = CommandRequest::new(
            job.instance,
            job.complete_command.clone(),
            Actor::new(format!("job-worker:{worker}"), &[roles::SYSTEM]),
            format!("job:{id}:{lease}:complete"),
        )
        .payload(result);
        self.send_inner(request, Origin::Job { job: id, lease })
            .await
            .map(Applied::into_outcome)
    }

    /// Reports a failure: the job is retried after its backoff (doubling per failure), or
    /// becomes an incident when its retries are used up.
    pub async fn fail_job(&self, request: FailJob) -> Result<Job, CommandError> {
        if request.error.chars().count() > ERROR_CHARS_MAX {
            return Err(CommandError::InvalidInput {
                field: "error".into(),
                message: format!("is longer than {ERROR_CHARS_MAX} characters"),
            });
        }
        let retry_in = request
            .retry_in
            .map(|d| Duration::from_std(d).unwrap_or(Duration::days(1)));
        // The same report again (its reply was lost): answered as the first one was.
        let job = self.job(request.job).await?;
        if job.failed_lease == Some(request.lease)
            && job.last_error.as_deref() == Some(request.error.as_str())
        {
            return Ok(job);
        }
        self.change_job(request.job, |engine, job, now| {
            let job = engine.current_lease(job.id, request.lease, job.instance)?;
            let mut failed = job.clone();
            let incident = failed.fail(&request.error, retry_in, request.give_up, now);
            let mut events = Vec::new();
            if incident {
                events.push(engine.job_event(
                    EventType::JobFailed,
                    &failed,
                    json!({ "error": request.error, "will_retry": false }),
                ));
                if crate::notification::is_notification(&failed.job_type) {
                    events.push(engine.job_event(
                        EventType::NotificationUndelivered,
                        &failed,
                        json!({ "error": request.error }),
                    ));
                }
                events.push(engine.job_event(
                    EventType::IncidentRaised,
                    &failed,
                    json!({ "error": request.error }),
                ));
            } else {
                events.push(engine.job_event(
                    EventType::JobFailed,
                    &failed,
                    json!({ "error": request.error, "will_retry": true, "next_attempt_at": failed.available_at }),
                ));
            }
            Ok((job.version, failed, events))
        })
        .await
    }

    /// Resolves an incident: retry (with more allowed failures) or cancel. Needs the `admin`
    /// role.
    pub async fn resolve_incident(
        &self,
        id: JobId,
        action: IncidentAction,
        actor: &Actor,
    ) -> Result<Job, CommandError> {
        super::require_role(actor, &[roles::ADMIN.to_string()], || {
            format!("resolve the incident of job {id}")
        })?;
        self.change_job(id, |engine, job, now| {
            if job.status != JobStatus::Incident {
                return Err(CommandError::NotAnIncident {
                    job: id,
                    status: job.status,
                });
            }
            let mut resolved = job.clone();
            resolved.resolve(action, now);
            let event = engine.job_event(
                EventType::IncidentResolved,
                &resolved,
                json!({ "action": action, "actor": actor }),
            );
            Ok((job.version, resolved, vec![event]))
        })
        .await
    }

    /// Commits a change to one job, re-reading it if a concurrent change won.
    pub(super) async fn change_job(
        &self,
        id: JobId,
        change: impl Fn(
            &Engine,
            &Job,
            chrono::DateTime<chrono::Utc>,
        ) -> Result<(u64, Job, Vec<EventDraft>), CommandError>,
    ) -> Result<Job, CommandError> {
        for _ in 0..=self.inner.config.conflict_retries_max {
            let job = self.job(id).await?;
            let now = self.inner.config.clock.now();
            let (expected, changed, events) = change(self, &job, now)?;
            let commit = Commit::job_change(
                now,
                JobWrite {
                    job: changed.clone(),
                    expected_version: Some(expected),
                },
                events,
            );
            let answer = self.enqueue(commit).await?;
            match self.answer(answer).await? {
                Ok(_) => {
                    if changed.status == JobStatus::Activatable {
                        self.inner.jobs_available.notify_waiters();
                    }
                    return Ok(changed);
                }
                Err(CommitRefusal::JobConflict { .. }) => continue,
                Err(other) => {
                    return Err(CommandError::StaleLease {
                        job: id,
                        reason: format!("unexpected refusal: {other:?}"),
                    })
                }
            }
        }
        Err(CommandError::StaleLease {
            job: id,
            reason: "the job kept changing concurrently".into(),
        })
    }

    pub(super) async fn answer(
        &self,
        answer: oneshot::Receiver<Reply>,
    ) -> Result<Result<CommitApplied, CommitRefusal>, CommandError> {
        match answer.await {
            Ok(result) => result.map_err(CommandError::Store),
            Err(_) => Err(CommandError::ShuttingDown),
        }
    }

    /// Runs `handler` in-process for every job of `job_type`, through the same lease
    /// mechanism as external workers: `Ok(result)` completes the job, `Err(message)` fails it.
    /// A handler that runs longer than `job_handler_timeout`, or panics, fails its attempt
    /// (retried, then an incident) and the other jobs carry on. The handler task stops when
    /// the engine shuts down.
    pub fn register_job_handler<F, Fut>(&self, job_type: &str, handler: F)
    where
        F: Fn(ActivatedJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, String>> + Send + 'static,
    {
        self.register_detailed_handler(job_type, move |job| {
            let answer = handler(job);
            async move { answer.await.map_err(JobFailure::from) }
        });
    }

    /// [`Engine::register_job_handler`] for a handler that says more of a failure: when to try
    /// again, or that no attempt can succeed ([`JobFailure`]).
    pub fn register_detailed_handler<F, Fut>(&self, job_type: &str, handler: F)
    where
        F: Fn(ActivatedJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, JobFailure>> + Send + 'static,
    {
        let weak = std::sync::Arc::downgrade(&self.inner);
        let job_type = job_type.to_string();
        let handler = std::sync::Arc::new(handler);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let held = super::BackgroundHold::new(&inner.background);
                let engine = Engine { inner };
                let poll = engine.inner.config.job_poll_interval;
                // Registered before looking, so a job created meanwhile still wakes us; the
                // wait holds only the notifier, never the engine, so dropping it stops us.
                let wake = engine.inner.jobs_available.clone();
                let notified = wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let Some(jobs) = engine.activate_for_handler(&job_type).await else {
                    return;
                };
                let idle = jobs.is_empty();
                for job in jobs {
                    engine.run_handler(&job_type, handler.clone(), job).await;
                }
                drop(engine);
                drop(held);
                if idle {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
            }
        });
    }

    /// Jobs for an in-process handler; `None` once the engine shuts down.
    async fn activate_for_handler(&self, job_type: &str) -> Option<Vec<ActivatedJob>> {
        let request = ActivateJobs::new(
            job_type,
            format!("in-process:{job_type}"),
            32.min(self.inner.config.page_size_max),
            self.inner.config.job_handler_lease,
        );
        match self.activate_jobs(request).await {
            Ok(jobs) => Some(jobs),
            Err(CommandError::ShuttingDown) => None,
            Err(e) => {
                tracing::warn!(%job_type, error = %e, "activating jobs failed");
                Some(Vec::new())
            }
        }
    }

    /// Runs one job through `handler` on its own task, bounded by `job_handler_timeout`, and
    /// reports the result.
    async fn run_handler<F, Fut>(
        &self,
        job_type: &str,
        handler: std::sync::Arc<F>,
        job: ActivatedJob,
    ) where
        F: Fn(ActivatedJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, JobFailure>> + Send + 'static,
    {
        let (id, lease) = (job.id, job.lease);
        let timeout = self.inner.config.job_handler_timeout;
        let task = tokio::spawn(async move { handler(job).await });
        let abort = task.abort_handle();
        let result = match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) if e.is_panic() => Err("the in-process handler panicked".into()),
            Ok(Err(_)) => Err("the in-process handler was cancelled".into()),
            Err(_) => {
                abort.abort();
                Err(JobFailure::from(format!(
                    "the in-process handler did not answer within {} ms",
                    timeout.as_millis()
                )))
            }
        };
        let outcome = match result {
            Ok(result) => self.complete_job(id, lease, result).await.map(|_| ()),
            // A handler's message is kept whatever its length (a failure report refuses one
            // over ERROR_CHARS_MAX, which would leave the job to its lease and no incident).
            Err(failure) => {
                let mut report = FailJob::new(
                    id,
                    lease,
                    crate::error::clip(&failure.message, ERROR_CHARS_MAX),
                );
                report.retry_in = failure.retry_in;
                report.give_up = failure.give_up;
                self.fail_job(report).await.map(|_| ())
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(%job_type, job = %id, error = %e, "reporting a job result failed");
        }
    }
}
