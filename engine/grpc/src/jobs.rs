//! `switchyard.v1.JobService`: jobs for workers in other processes — a long-poll activation,
//! completion and failure with the lease token (both answered as the first time when sent
//! again), and incidents for admins. A long poll ends early, with what it has (nothing), when
//! the server starts to shut down, so it never holds up the drain.

use std::time::Duration;

use std::sync::Arc;
use switchyard_core::{
    roles, CommandError, Engine, FailJob, IncidentAction, Job, JobId, JobStatus,
};

use tokio::sync::{watch, Semaphore};
use tonic::{Request, Response, Status};

use crate::auth::{actor_of, require_role};
use crate::convert::{self, timestamp};
use crate::pb;
use crate::status::{bad_request, to_status, Wire};

type Answer<T> = Result<Response<T>, Status>;

/// The job service: the engine, the flag the server raises when it starts to stop, the
/// permits for long polls waiting at once (`grpc.job_polls_max`), and the longest wait (just
/// under `grpc.request_timeout`, so a poll answers before its call is cut off).
#[derive(Clone)]
pub(crate) struct JobService {
    pub(crate) engine: Engine,
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) polls: Arc<Semaphore>,
    pub(crate) polls_max: usize,
    pub(crate) wait_max: Duration,
}

#[allow(clippy::result_large_err)]
fn duration(field: &str, d: Option<prost_types::Duration>) -> Result<Option<Duration>, Status> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(bad_request(field, "is negative")),
        Some(d) => Ok(Some(
            Duration::from_secs(d.seconds as u64) + Duration::from_nanos(d.nanos as u64),
        )),
    }
}

#[allow(clippy::result_large_err)]
fn job_id(value: &str) -> Result<JobId, Status> {
    value
        .parse()
        .map_err(|_| bad_request("job_id", "is not a job id (a UUID)"))
}

#[allow(clippy::result_large_err)]
fn lease(value: &str) -> Result<uuid::Uuid, Status> {
    value
        .parse()
        .map_err(|_| bad_request("lease_token", "is not a lease token this server handed out"))
}

fn status(s: JobStatus) -> i32 {
    (match s {
        JobStatus::Activatable => pb::JobStatus::Activatable,
        JobStatus::Leased => pb::JobStatus::Leased,
        JobStatus::Incident => pb::JobStatus::Incident,
        JobStatus::Completed => pb::JobStatus::Completed,
        JobStatus::Cancelled => pb::JobStatus::Cancelled,
    }) as i32
}

/// A job on the wire: never its lease token.
fn job(j: &Job) -> pb::Job {
    pb::Job {
        job_id: j.id.to_string(),
        job_type: j.job_type.clone(),
        instance_id: j.instance.to_string(),
        payload_json: j.payload.to_string(),
        status: status(j.status),
        failures: j.failures,
        retries: j.retries,
        available_at: timestamp(j.available_at),
        last_error: j.last_error.clone().unwrap_or_default(),
        worker: j
            .lease
            .as_ref()
            .map(|l| l.worker.clone())
            .unwrap_or_default(),
        created_at: timestamp(j.created_at),
        updated_at: timestamp(j.updated_at),
    }
}

/// A notification on the wire.
fn notification(d: &switchyard_core::notification::Delivery) -> pb::Notification {
    use switchyard_core::notification::DeliveryStatus as S;
    let m = &d.message;
    pb::Notification {
        message_id: d.id.to_string(),
        instance_id: d.instance.to_string(),
        channel: m.channel.clone(),
        to: m.to.clone(),
        recipient: m.recipient.clone(),
        category: m.category.clone(),
        severity: serde_json::to_value(m.severity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        subject: m.subject.clone(),
        text: m.text.clone(),
        html: m.html.clone().unwrap_or_default(),
        status: (match d.status {
            S::Queued => pb::NotificationStatus::Queued,
            S::Sending => pb::NotificationStatus::Sending,
            S::Retrying => pb::NotificationStatus::Retrying,
            S::Sent => pb::NotificationStatus::Sent,
            S::Undelivered => pb::NotificationStatus::Undelivered,
            S::Cancelled => pb::NotificationStatus::Cancelled,
        }) as i32,
        failures: d.failures,
        retries: d.retries,
        last_error: d.last_error.clone().unwrap_or_default(),
        next_attempt_at: d.next_attempt_at.and_then(timestamp),
        source_json: m.source.to_string(),
        created_at: timestamp(d.created_at),
        updated_at: timestamp(d.updated_at),
    }
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for JobService {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Answer<pb::ListNotificationsResponse> {
        let actor = actor_of(&request)?;
        let id = convert::instance_id("instance_id", &request.get_ref().instance_id)?;
        let deliveries = self
            .engine
            .notifications_as(&actor, id)
            .await
            .map_err(|e| to_status(&e, Wire::NONE))?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: deliveries.iter().map(notification).collect(),
        }))
    }

    async fn activate_jobs(
        &self,
        request: Request<pb::ActivateJobsRequest>,
    ) -> Answer<pb::ActivateJobsResponse> {
        let actor = actor_of(&request)?;
        require_role(&actor, roles::SYSTEM, "activate jobs")?;
        let r = request.into_inner();
        let max_jobs = usize::try_from(r.max_jobs)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad_request("max_jobs", format!("{} is not at least 1", r.max_jobs)))?;
        let lease = duration("lease", r.lease)?
            .ok_or_else(|| bad_request("lease", "is required (1 s to 24 h)"))?;
        let wait = duration("wait", r.wait)?
            .unwrap_or_default()
            .min(self.wait_max);
        // Only a poll that waits holds a place: each one wakes on every new job.
        let _permit = if wait.is_zero() {
            None
        } else {
            Some(self.polls.clone().try_acquire_owned().map_err(|_| {
                let overloaded = CommandError::Overloaded {
                    resource: "job long polls waiting (grpc.job_polls_max)".into(),
                    limit: self.polls_max,
                };
                to_status(&overloaded, Wire::NONE)
            })?)
        };
        let mut stopping = self.stopping.clone();
        if *stopping.borrow() {
            return Err(Status::unavailable("the server is shutting down"));
        }
        let activation =
            self.engine
                .activate_jobs_waiting(&r.job_types, &r.worker, max_jobs, lease, wait);
        let jobs = tokio::select! {
            jobs = activation => jobs.map_err(|e| to_status(&e, Wire::NONE))?,
            // A job leased at this very moment lapses with its lease and is offered again.
            _ = stopping.wait_for(|s| *s) => Vec::new(),
        };
        Ok(Response::new(pb::ActivateJobsResponse {
            jobs: jobs
                .into_iter()
                .map(|j| pb::ActivatedJob {
                    job_id: j.id.to_string(),
                    job_type: j.job_type,
                    instance_id: j.instance.to_string(),
                    payload_json: j.payload.to_string(),
                    lease_token: j.lease.to_string(),
                    lease_expires_at: timestamp(j.lease_expires_at),
                    attempt: j.attempt,
                })
                .collect(),
        }))
    }

    async fn complete_job(
        &self,
        request: Request<pb::CompleteJobRequest>,
    ) -> Answer<pb::CompleteJobResponse> {
        let actor = actor_of(&request)?;
        require_role(&actor, roles::SYSTEM, "complete jobs")?;
        let r = request.into_inner();
        let id = job_id(&r.job_id)?;
        let lease = lease(&r.lease_token)?;
        let result = convert::json_object("result_json", &r.result_json)?;
        let outcome = self
            .engine
            .complete_job(id, lease, result)
            .await
            .map_err(|e| to_status(&e, Wire::RESULT))?;
        Ok(Response::new(pb::CompleteJobResponse {
            result: Some(convert::result(&outcome)),
        }))
    }

    async fn fail_job(&self, request: Request<pb::FailJobRequest>) -> Answer<pb::FailJobResponse> {
        let actor = actor_of(&request)?;
        require_role(&actor, roles::SYSTEM, "fail jobs")?;
        let r = request.into_inner();
        let mut fail = FailJob::new(job_id(&r.job_id)?, lease(&r.lease_token)?, r.error);
        if let Some(d) = duration("retry_in", r.retry_in)? {
            if d > Duration::from_secs(86_400) {
                return Err(bad_request("retry_in", "is longer than 1 day"));
            }
            fail = fail.retry_in(d);
        }
        if r.give_up {
            if fail.retry_in.is_some() {
                return Err(bad_request("give_up", "cannot go with retry_in"));
            }
            fail = fail.give_up();
        }
        let failed = self
            .engine
            .fail_job(fail)
            .await
            .map_err(|e| to_status(&e, Wire::NONE))?;
        Ok(Response::new(pb::FailJobResponse {
            job: Some(job(&failed)),
        }))
    }

    async fn list_job_incidents(
        &self,
        request: Request<pb::ListJobIncidentsRequest>,
    ) -> Answer<pb::ListJobIncidentsResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let page_size = convert::page_size(r.page_size)?;
        let position = convert::open_token("job_incidents", &[], &r.page_token)?;
        let page = self
            .engine
            .incidents_page(&actor, page_size, position.as_deref())
            .await
            .map_err(|e| to_status(&e, Wire::NONE))?;
        Ok(Response::new(pb::ListJobIncidentsResponse {
            jobs: page.items.iter().map(job).collect(),
            next_page_token: convert::seal_token("job_incidents", &[], page.next_page_token),
        }))
    }

    async fn resolve_job_incident(
        &self,
        request: Request<pb::ResolveJobIncidentRequest>,
    ) -> Answer<pb::ResolveJobIncidentResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let id = job_id(&r.job_id)?;
        let action = match pb::IncidentAction::try_from(r.action) {
            Ok(pb::IncidentAction::Retry) => IncidentAction::Retry {
                retries: r.retries.max(1),
            },
            Ok(pb::IncidentAction::Cancel) => IncidentAction::Cancel,
            _ => return Err(bad_request("action", "must be RETRY or CANCEL")),
        };
        let resolved = self
            .engine
            .resolve_incident(id, action, &actor)
            .await
            .map_err(|e| to_status(&e, Wire::NONE))?;
        Ok(Response::new(pb::ResolveJobIncidentResponse {
            job: Some(job(&resolved)),
        }))
    }
}
