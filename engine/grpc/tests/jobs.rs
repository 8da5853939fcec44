//! `JobService` over a real socket: two workers never share a job, a long poll wakes when a
//! job is created, a lapsed lease re-delivers, a stale completion is refused without learning
//! the current lease, completion and failure are answered as the first time when sent again,
//! and incidents are listed and resolved by an admin.

mod harness;

use std::time::Duration;

use harness::*;
use serde_json::json;
use switchyard_grpc::pb;
use tonic::Code;

fn jobs(
    server: &TestServer,
) -> pb::job_service_client::JobServiceClient<tonic::transport::Channel> {
    pb::job_service_client::JobServiceClient::new(server.channel.clone())
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

fn activate(
    worker: &str,
    max: i32,
    lease: i64,
    wait_ms: i32,
) -> tonic::Request<pb::ActivateJobsRequest> {
    as_role(
        "system",
        pb::ActivateJobsRequest {
            job_types: vec!["reserve_stock".into()],
            worker: worker.into(),
            max_jobs: max,
            lease: secs(lease),
            wait: Some(prost_types::Duration {
                seconds: i64::from(wait_ms / 1000),
                nanos: (wait_ms % 1000) * 1_000_000,
            }),
        },
    )
}

/// A BETA order submitted: it waits in checking_stock for its reserve_stock job.
async fn order_waiting_for_stock(server: &TestServer, key: &str) -> String {
    let mut client = server.instances();
    let order = client
        .start_instance(as_role(
            "sales_rep",
            pb::StartInstanceRequest {
                request_id: format!("start-{key}"),
                definition: "sales_order".into(),
                business_key: key.into(),
                data_json: json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "SEAL-KIT", "quantity": 2 }] }).to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap()
        .instance_id;
    let submitted = client
        .send_command(as_role(
            "sales_rep",
            pb::SendCommandRequest {
                request_id: format!("submit-{key}"),
                instance_id: order.clone(),
                command: "submit".into(),
                payload_json: String::new(),
                expected_version: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(submitted.state, "checking_stock");
    order
}

fn reserved(n: u32) -> String {
    json!({ "lines": [{ "sku": "SEAL-KIT", "reserved": n }] }).to_string()
}

/// A worker's completion of `job` (its id and lease token), reserving 2.
fn completion(job: &pb::ActivatedJob) -> tonic::Request<pb::CompleteJobRequest> {
    as_role(
        "system",
        pb::CompleteJobRequest {
            job_id: job.job_id.clone(),
            lease_token: job.lease_token.clone(),
            result_json: reserved(2),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_share_a_job_and_completion_commits_the_command() {
    let server = TestServer::start().await;
    for n in 0..6 {
        order_waiting_for_stock(&server, &format!("O-{n}")).await;
    }
    // Two workers take jobs at the same time until none is left.
    let worker = |name: &'static str| {
        let mut client = jobs(&server);
        async move {
            let mut got = Vec::new();
            loop {
                let batch = client
                    .activate_jobs(activate(name, 2, 60, 0))
                    .await
                    .unwrap()
                    .into_inner()
                    .jobs;
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch);
            }
        }
    };
    let (a, b) = tokio::join!(worker("wms-a"), worker("wms-b"));
    assert_eq!(a.len() + b.len(), 6, "every job to one worker");
    let mut ids: Vec<_> = a.iter().chain(&b).map(|j| j.job_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "no job to both");
    let job = a.iter().chain(&b).next().unwrap();
    let done = jobs(&server)
        .complete_job(completion(job))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(done.state, "confirmed");
    assert_eq!(done.instance_id, job.instance_id);
    let again = jobs(&server)
        .complete_job(completion(job))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(
        again, done,
        "a completion sent again is answered as the first"
    );
    // A sales rep is no worker.
    let refused = pb::job_service_client::JobServiceClient::new(server.channel.clone())
        .activate_jobs(as_role(
            "sales_rep",
            pb::ActivateJobsRequest {
                job_types: vec!["reserve_stock".into()],
                worker: "x".into(),
                max_jobs: 1,
                lease: secs(60),
                wait: None,
            },
        ))
        .await;
    expect_refusal(refused, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_for_a_new_job_and_a_lapsed_lease_is_offered_again() {
    let server = TestServer::start().await;
    let started = std::time::Instant::now();
    let empty = jobs(&server)
        .activate_jobs(activate("wms-a", 1, 1, 300))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(empty.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    let poll = {
        let mut client = jobs(&server);
        tokio::spawn(async move {
            client
                .activate_jobs(activate("wms-a", 1, 1, 20_000))
                .await
                .unwrap()
                .into_inner()
                .jobs
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let woke = std::time::Instant::now();
    order_waiting_for_stock(&server, "O-P").await;
    let first = poll.await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        woke.elapsed() < Duration::from_secs(10),
        "woken by the job, not the end of the wait"
    );
    // Its one-second lease lapses: another worker gets it; the first one's completion is
    // stale, and never tells the new lease.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = jobs(&server)
        .activate_jobs(activate("wms-b", 1, 60, 2_000))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].job_id, first[0].job_id);
    assert_eq!(second[0].attempt, 1, "a lapsed lease is not a failure");
    let stale = jobs(&server).complete_job(completion(&first[0])).await;
    let status = expect_refusal(stale, Code::FailedPrecondition, "STALE_LEASE");
    assert!(
        !format!("{status:?}").contains(&second[0].lease_token),
        "{status:?}"
    );
    jobs(&server)
        .complete_job(completion(&second[0]))
        .await
        .unwrap();
    server.stop().await;
}

/// A worker whose outside system refused for good gives up: an incident at once, retries left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_may_give_up_on_a_job_at_once() {
    let server = TestServer::start().await;
    order_waiting_for_stock(&server, "O-G").await;
    let job = jobs(&server)
        .activate_jobs(activate("wms-a", 1, 60, 5_000))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    let fail = |retry_in| {
        as_role(
            "system",
            pb::FailJobRequest {
                job_id: job.job_id.clone(),
                lease_token: job.lease_token.clone(),
                error: "no such warehouse".into(),
                retry_in,
                give_up: true,
            },
        )
    };
    let refused = jobs(&server).fail_job(fail(secs(5))).await;
    let status = expect_refusal(refused, Code::InvalidArgument, "INVALID_INPUT");
    assert_eq!(bad_fields(&status), vec!["give_up"]);
    let failed = jobs(&server)
        .fail_job(fail(None))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        (failed.status, failed.failures),
        (pb::JobStatus::Incident as i32, 1)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_then_raise_an_incident_that_an_admin_resolves() {
    let server = TestServer::start().await;
    let order = order_waiting_for_stock(&server, "O-X").await;
    // reserve_stock allows 3 retries: four failures make an incident. retry_in 0 s keeps the
    // test quick; the same failure sent twice counts once.
    for attempt in 1..=4 {
        let job = jobs(&server)
            .activate_jobs(activate("wms-a", 1, 60, 5_000))
            .await
            .unwrap()
            .into_inner()
            .jobs
            .remove(0);
        assert_eq!(job.attempt, attempt);
        let fail = || {
            as_role(
                "system",
                pb::FailJobRequest {
                    job_id: job.job_id.clone(),
                    lease_token: job.lease_token.clone(),
                    error: "warehouse down".into(),
                    retry_in: secs(0),
                    give_up: false,
                },
            )
        };
        let first = jobs(&server)
            .fail_job(fail())
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        let again = jobs(&server)
            .fail_job(fail())
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(first.failures, attempt);
        assert_eq!(again.failures, attempt, "counted once");
    }
    let refused = jobs(&server)
        .list_job_incidents(as_role("system", pb::ListJobIncidentsRequest::default()))
        .await;
    expect_refusal(refused, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let incidents = jobs(&server)
        .list_job_incidents(as_role("admin", pb::ListJobIncidentsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(incidents.jobs.len(), 1);
    let incident = &incidents.jobs[0];
    assert_eq!(
        (incident.instance_id.as_str(), incident.status),
        (order.as_str(), pb::JobStatus::Incident as i32)
    );
    assert_eq!(incident.last_error, "warehouse down");
    let resolved = jobs(&server)
        .resolve_job_incident(as_role(
            "admin",
            pb::ResolveJobIncidentRequest {
                job_id: incident.job_id.clone(),
                action: pb::IncidentAction::Retry as i32,
                retries: 1,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(resolved.status, pb::JobStatus::Activatable as i32);
    let job = jobs(&server)
        .activate_jobs(activate("wms-a", 1, 60, 5_000))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    // A result that does not fit the completion command names the field; nothing changes.
    let mut wrong = completion(&job);
    wrong.get_mut().result_json = json!({ "lines": "all of them" }).to_string();
    let refused = jobs(&server).complete_job(wrong).await;
    let status = expect_refusal(refused, Code::InvalidArgument, "INVALID_PAYLOAD");
    assert_eq!(bad_fields(&status), vec!["result_json.lines"]);
    let done = jobs(&server)
        .complete_job(completion(&job))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(done.state, "confirmed");
    // Bad input names the field.
    let bad = jobs(&server)
        .activate_jobs(activate("wms-a", 0, 60, 0))
        .await;
    assert_eq!(
        bad_fields(&expect_refusal(bad, Code::InvalidArgument, "INVALID_INPUT")),
        vec!["max_jobs"]
    );
    let bad = jobs(&server)
        .complete_job(as_role(
            "system",
            pb::CompleteJobRequest {
                job_id: "nope".into(),
                lease_token: "x".into(),
                result_json: "{}".into(),
            },
        ))
        .await;
    assert_eq!(
        bad_fields(&expect_refusal(bad, Code::InvalidArgument, "INVALID_INPUT")),
        vec!["job_id"]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_bounded_and_answer_before_the_call_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.grpc.job_polls_max = 1;
    config.grpc.request_timeout = "3s".into();
    let server = TestServer::start_with(dir, config).await;
    let first = {
        let mut client = jobs(&server);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let answer = client.activate_jobs(activate("wms-a", 1, 60, 30_000)).await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The one place is taken: a second waiting poll is refused; one that does not wait is not.
    let second = jobs(&server)
        .activate_jobs(activate("wms-b", 1, 60, 30_000))
        .await;
    expect_refusal(second, Code::ResourceExhausted, "OVERLOADED");
    let at_once = jobs(&server)
        .activate_jobs(activate("wms-b", 1, 60, 0))
        .await;
    assert!(at_once.unwrap().into_inner().jobs.is_empty());
    // Asked to wait 30 s on a server whose calls end at 3 s: it answers, empty, in time.
    let (answer, took) = first.await.unwrap();
    assert!(answer.unwrap().into_inner().jobs.is_empty());
    assert!(took < Duration::from_secs(3), "{took:?}");
    server.stop().await;
}
