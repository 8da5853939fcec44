//! External jobs: leases, completion as a command, stale leases, retries with backoff,
//! incidents, in-process handlers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use switchyard_core::*;

const ORDER: &str = r#"
name = "order"
version = 1
initial = "created"

[start]
roles = ["sales_rep"]

[cancel]
roles = ["admin"]

[states]
created = {}
reserving = {}
reserved = { terminal = true }

[commands.submit]
from = ["created"]
to = ["reserving"]
roles = ["sales_rep"]
decider = "order.submit"
effects = { jobs = ["reserve_stock"] }

[commands.stock_reserved]
from = ["reserving"]
to = ["reserved"]
roles = ["system"]
decider = "builtin.merge_payload"
payload = { warehouse = { type = "string" } }

[jobs.reserve_stock]
complete = "stock_reserved"
retries = 2
backoff = "10s"
"#;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 8, 0, 0).unwrap()
}

async fn engine(clock: Arc<ManualClock>) -> Engine {
    let mut config = EngineConfig::in_memory();
    config.clock = clock;
    engine_with(config).await
}

async fn engine_with(config: EngineConfig) -> Engine {
    let mut d = DeciderRegistry::new();
    d.register("order.submit", |ctx: &DecisionContext<'_>| {
        Ok(Decision::goto("reserving", "reserve stock").with_effect(Effect::CreateJob {
            job_type: "reserve_stock".into(),
            payload: json!({ "order": ctx.instance.business_key, "sku": "PUMP-200", "quantity": 4 }),
        }))
    });
    let defs = DefinitionSet::from_sources(&[("order.toml".into(), ORDER.into())], &d).unwrap();
    Engine::open(config, defs, d).await.unwrap()
}

async fn submitted(engine: &Engine, key: &str) -> InstanceId {
    let id = engine
        .start(
            StartRequest::new(
                "order",
                Actor::new("rep", &["sales_rep"]),
                format!("start-{key}"),
            )
            .business_key(key),
        )
        .await
        .unwrap()
        .instance;
    engine
        .send(CommandRequest::new(
            id,
            "submit",
            Actor::new("rep", &["sales_rep"]),
            format!("submit-{key}"),
        ))
        .await
        .unwrap();
    id
}

fn activate(lease_secs: u64) -> ActivateJobs {
    ActivateJobs::new(
        "reserve_stock",
        "wms-1",
        10,
        StdDuration::from_secs(lease_secs),
    )
}

fn fail(job: &ActivatedJob, error: &str) -> FailJob {
    FailJob::new(job.id, job.lease, error)
}

#[tokio::test]
async fn a_completed_job_becomes_its_completion_command_in_the_same_commit() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock.clone()).await;
    let id = submitted(&engine, "O-1").await;
    let jobs = engine.jobs(id).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, JobStatus::Activatable);
    assert_eq!(
        jobs[0].payload,
        json!({ "order": "O-1", "sku": "PUMP-200", "quantity": 4 })
    );

    let activated = engine.activate_jobs(activate(30)).await.unwrap();
    assert_eq!(activated.len(), 1);
    let job = &activated[0];
    assert_eq!((job.id, job.attempt, job.instance), (jobs[0].id, 1, id));
    assert!(
        engine.activate_jobs(activate(30)).await.unwrap().is_empty(),
        "leased jobs are not handed out twice"
    );

    let out = engine
        .complete_job(job.id, job.lease, json!({ "warehouse": "W1" }))
        .await
        .unwrap();
    assert_eq!(out.state, "reserved");
    assert_eq!(engine.get(id).await.unwrap().data["warehouse"], "W1");
    assert_eq!(
        engine.job(job.id).await.unwrap().status,
        JobStatus::Completed
    );
    let again = engine
        .complete_job(job.id, job.lease, json!({ "warehouse": "W1" }))
        .await
        .unwrap();
    assert_eq!(again, out, "a retried completion returns the same outcome");
    let history = engine.history(id, 2, 0).await.unwrap();
    assert_eq!(
        history[0].actor,
        Actor::new("job-worker:wms-1", &["system"])
    );

    let mut sub = engine.subscribe(0).unwrap();
    let mut kinds = Vec::new();
    for _ in 0..5 {
        kinds.push(sub.next().await.unwrap().kind.to_string());
    }
    assert_eq!(
        kinds,
        [
            "switchyard.instance.started",
            "switchyard.instance.transitioned",
            "switchyard.job.created",
            "switchyard.instance.transitioned",
            "switchyard.job.completed",
        ]
    );
}

#[tokio::test]
async fn an_expired_lease_makes_the_job_available_again_and_stale_completions_are_refused() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock.clone()).await;
    let id = submitted(&engine, "O-2").await;
    let first = engine.activate_jobs(activate(30)).await.unwrap().remove(0);
    clock.advance(Duration::seconds(31));
    let err = engine
        .complete_job(first.id, first.lease, json!({ "warehouse": "W1" }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "STALE_LEASE");
    assert!(
        err.to_string()
            .contains("the lease expired at 2026-06-01 08:00:30 UTC"),
        "{err}"
    );

    let second = engine.activate_jobs(activate(30)).await.unwrap().remove(0);
    assert_eq!(
        second.id, first.id,
        "the same job: the same idempotency key for the side effect"
    );
    assert_ne!(second.lease, first.lease);
    assert_eq!(second.attempt, 1, "a lapsed lease is not a failure");
    let err = engine
        .complete_job(first.id, first.lease, json!({ "warehouse": "W1" }))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), format!("job {}: the lease is stale (the job was activated again since); activate the job again", first.id));
    assert_eq!(
        engine.get(id).await.unwrap().state,
        "reserving",
        "the refused completion wrote nothing"
    );
    engine
        .complete_job(second.id, second.lease, json!({ "warehouse": "W2" }))
        .await
        .unwrap();
    assert_eq!(engine.get(id).await.unwrap().data["warehouse"], "W2");
}

#[tokio::test]
async fn failures_retry_with_backoff_then_raise_an_incident_an_operator_resolves() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock.clone()).await;
    let id = submitted(&engine, "O-3").await;

    let a1 = engine.activate_jobs(activate(30)).await.unwrap().remove(0);
    let job = engine.fail_job(fail(&a1, "WMS timeout")).await.unwrap();
    assert_eq!((job.status, job.failures), (JobStatus::Activatable, 1));
    assert_eq!(job.available_at, t0() + Duration::seconds(10));
    assert!(
        engine.activate_jobs(activate(30)).await.unwrap().is_empty(),
        "backing off"
    );
    clock.advance(Duration::seconds(10));
    let a2 = engine.activate_jobs(activate(30)).await.unwrap().remove(0);
    assert_eq!(a2.attempt, 2);
    let job = engine.fail_job(fail(&a2, "WMS timeout")).await.unwrap();
    assert_eq!(
        job.available_at,
        t0() + Duration::seconds(10 + 20),
        "the backoff doubles"
    );
    let err = engine.fail_job(fail(&a2, "again")).await.unwrap_err();
    assert_eq!(
        err.code(),
        "STALE_LEASE",
        "a failure needs the current lease too"
    );

    clock.advance(Duration::seconds(20));
    let a3 = engine.activate_jobs(activate(30)).await.unwrap().remove(0);
    let job = engine
        .fail_job(fail(&a3, "SKU unknown in WMS"))
        .await
        .unwrap();
    assert_eq!((job.status, job.failures), (JobStatus::Incident, 3));
    assert_eq!(job.last_error.as_deref(), Some("SKU unknown in WMS"));
    clock.advance(Duration::days(1));
    assert!(
        engine.activate_jobs(activate(30)).await.unwrap().is_empty(),
        "an incident waits for an operator"
    );
    let incidents: Vec<_> = engine
        .jobs(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.status == JobStatus::Incident)
        .collect();
    assert_eq!(incidents.len(), 1, "the instance shows its incident");

    let err = engine
        .resolve_incident(
            job.id,
            IncidentAction::Retry { retries: 1 },
            &Actor::new("rep", &["sales_rep"]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ROLE_NOT_ALLOWED");
    let ops = Actor::new("ops-1", &["admin"]);
    let job = engine
        .resolve_incident(job.id, IncidentAction::Retry { retries: 1 }, &ops)
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Activatable);
    let err = engine
        .resolve_incident(job.id, IncidentAction::Cancel, &ops)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "NOT_AN_INCIDENT");
    let a4 = engine.activate_jobs(activate(30)).await.unwrap().remove(0);
    assert_eq!(a4.attempt, 4);
    engine
        .complete_job(a4.id, a4.lease, json!({ "warehouse": "W3" }))
        .await
        .unwrap();
    assert_eq!(engine.get(id).await.unwrap().state, "reserved");

    let mut sub = engine.subscribe(0).unwrap();
    let mut kinds = Vec::new();
    for _ in 0..10 {
        kinds.push(sub.next().await.unwrap().kind.to_string());
    }
    assert!(
        kinds.contains(&"switchyard.incident.raised".to_string()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"switchyard.incident.resolved".to_string()),
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k.as_str() == "switchyard.job.failed")
            .count(),
        3
    );
}

#[tokio::test]
async fn cancelling_the_instance_cancels_its_open_jobs() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock.clone()).await;
    let id = submitted(&engine, "O-4").await;
    let leased = engine.activate_jobs(activate(30)).await.unwrap().remove(0);
    engine
        .cancel(
            CancelRequest::new(id, Actor::new("ops", &["admin"]), "x-4")
                .reason("customer withdrew"),
        )
        .await
        .unwrap();
    assert_eq!(
        engine.job(leased.id).await.unwrap().status,
        JobStatus::Cancelled
    );
    let err = engine
        .complete_job(leased.id, leased.lease, json!({ "warehouse": "W1" }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "STALE_LEASE");
    clock.advance(Duration::minutes(5));
    assert!(engine.activate_jobs(activate(30)).await.unwrap().is_empty());
}

#[tokio::test]
async fn activation_requests_are_checked() {
    let engine = engine(Arc::new(ManualClock::new(t0()))).await;
    let err = engine
        .activate_jobs({
            let mut a = activate(30);
            a.max_jobs = 0;
            a
        })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "field `max_jobs`: 0 is outside 1..=1000");
    let err = engine.activate_jobs(activate(0)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `lease`: must be between 1 second and 24 hours"
    );
}

#[tokio::test]
async fn in_process_handlers_run_jobs_through_the_same_leases() {
    let engine = engine(Arc::new(ManualClock::new(t0()))).await;
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    engine.register_job_handler("reserve_stock", move |job: ActivatedJob| {
        let seen = seen.clone();
        async move {
            assert_eq!(job.payload["sku"], "PUMP-200");
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(json!({ "warehouse": "W-inproc" }))
        }
    });
    let id = submitted(&engine, "O-5").await;
    let mut sub = engine.subscribe(0).unwrap();
    loop {
        let event = tokio::time::timeout(StdDuration::from_secs(10), sub.next())
            .await
            .expect("the handler ran")
            .unwrap();
        if event.kind == "switchyard.job.completed" {
            break;
        }
    }
    assert_eq!(engine.get(id).await.unwrap().data["warehouse"], "W-inproc");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn metrics_report_the_job_backlog_and_the_slowest_subscriber() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock.clone()).await;
    let before = engine.metrics().await.unwrap();
    assert_eq!((before.job_backlog, before.feed_head), (0, 0));
    let mut sub = engine.subscribe(0).unwrap();
    let id = submitted(&engine, "O-1").await;
    let m = engine.metrics().await.unwrap();
    assert_eq!(m.job_backlog, 1, "the reserve_stock job waits for a worker");
    assert_eq!(m.feed_subscribers, 1);
    assert_eq!(m.feed_head, m.feed_durable);
    assert_eq!(
        m.feed_lag, m.feed_durable,
        "the subscriber has read nothing yet"
    );
    assert!(m.commit_latency_micros.count >= 2);
    assert!(m.batch_size.count >= 1);
    let submits: Vec<_> = m
        .commands
        .iter()
        .filter(|c| c.command == "submit")
        .collect();
    assert_eq!(submits.len(), 1);
    assert_eq!(
        (
            submits[0].definition.as_str(),
            submits[0].outcome,
            submits[0].count
        ),
        ("order", "ok", 1)
    );
    while sub.offset() < m.feed_durable {
        sub.next().await.unwrap();
    }
    assert_eq!(engine.metrics().await.unwrap().feed_lag, 0);

    let job = engine.activate_jobs(activate(30)).await.unwrap().remove(0);
    assert_eq!(
        engine.metrics().await.unwrap().job_backlog,
        1,
        "leased still counts"
    );
    engine
        .complete_job(job.id, job.lease, json!({ "warehouse": "W1" }))
        .await
        .unwrap();
    let m = engine.metrics().await.unwrap();
    assert_eq!(m.job_backlog, 0);
    assert!(m.feed_lag > 0, "the completion's events are unread");
    drop(sub);
    assert_eq!(engine.metrics().await.unwrap().feed_subscribers, 0);
    assert_eq!(engine.get(id).await.unwrap().state, "reserved");
}

#[tokio::test]
async fn an_in_process_handler_that_panics_or_hangs_fails_its_attempt_and_the_others_go_on() {
    let mut config = EngineConfig::in_memory();
    config.clock = Arc::new(ManualClock::new(t0()));
    config.job_handler_timeout = StdDuration::from_millis(300);
    let engine = engine_with(config).await;
    engine.register_job_handler("reserve_stock", |job: ActivatedJob| async move {
        match job.payload["order"].as_str() {
            Some("O-PANIC") => panic!("the warehouse client panicked"),
            Some("O-HANG") => std::future::pending().await,
            Some("O-LONG") => Err("x".repeat(10_000)),
            _ => Ok(json!({ "warehouse": "W-1" })),
        }
    });
    let mut sub = engine.subscribe(0).unwrap();
    let panics = submitted(&engine, "O-PANIC").await;
    let hangs = submitted(&engine, "O-HANG").await;
    let fine = submitted(&engine, "O-FINE").await;
    let long = submitted(&engine, "O-LONG").await;
    let mut failures = std::collections::BTreeMap::new();
    let mut completed = 0;
    while failures.len() < 3 || completed < 1 {
        let event = tokio::time::timeout(StdDuration::from_secs(10), sub.next())
            .await
            .expect("every job was answered")
            .unwrap();
        let data = event.data();
        if event.kind == "switchyard.job.failed" {
            failures.insert(
                data["payload"]["order"].as_str().unwrap().to_string(),
                data["error"].as_str().unwrap().to_string(),
            );
        } else if event.kind == "switchyard.job.completed" {
            completed += 1;
        }
    }
    assert_eq!(failures["O-PANIC"], "the in-process handler panicked");
    assert_eq!(
        failures["O-HANG"],
        "the in-process handler did not answer within 300 ms"
    );
    // A message longer than a failure report may hold is cut, not lost with the report.
    assert!(failures["O-LONG"].starts_with("xxx") && failures["O-LONG"].chars().count() <= 4096);
    assert!(engine.jobs(long).await.unwrap()[0].last_error.is_some());
    assert_eq!(engine.get(fine).await.unwrap().state, "reserved");
    for id in [panics, hangs] {
        let job = engine.jobs(id).await.unwrap().remove(0);
        assert_eq!(
            job.status,
            JobStatus::Activatable,
            "retried later, not lost"
        );
        assert_eq!(job.failures, 1);
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn a_job_event_reaches_the_feed_readers_of_its_instances_definition_only() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock).await;
    let id = submitted(&engine, "O-FEED").await;
    let head = engine.feed_bounds().unwrap().1;
    let rep = Actor::new("rep", &["sales_rep"]);
    let mut request = FeedRequest::after(0);
    request.definitions = vec!["order".into()];
    request.event_types = vec!["switchyard.job.created".into()];
    let mut reader = engine.feed_as(&rep, request).unwrap();
    let event = tokio::time::timeout(StdDuration::from_secs(10), reader.next())
        .await
        .expect("the job's event is delivered to a reader of orders")
        .unwrap();
    assert_eq!(event.kind, EventType::JobCreated);
    assert_eq!(event.subject, id.to_string());

    // Finance may not read orders: it is shown nothing, yet its position moves past it all.
    let finance = Actor::new("fin", &["finance"]);
    let mut reader = engine.feed_as(&finance, FeedRequest::after(0)).unwrap();
    let nothing = tokio::time::timeout(StdDuration::from_millis(300), reader.next()).await;
    assert!(nothing.is_err(), "{nothing:?}");
    assert_eq!(reader.position(), head);
    assert_eq!(reader.head(), head);

    let refused = engine
        .feed_as(&Actor::new("nobody", &[]), FeedRequest::after(0))
        .err()
        .unwrap();
    assert_eq!(refused.code(), "ROLE_NOT_ALLOWED");
}

#[tokio::test]
async fn a_failure_reported_twice_is_answered_as_the_first_and_a_different_one_is_stale() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock.clone()).await;
    let id = submitted(&engine, "O-F").await;
    let job = engine.activate_jobs(activate(30)).await.unwrap().remove(0);
    let first = engine.fail_job(fail(&job, "warehouse down")).await.unwrap();
    let again = engine.fail_job(fail(&job, "warehouse down")).await.unwrap();
    assert_eq!(
        first, again,
        "a retry after a lost reply gets the original answer"
    );
    assert_eq!(first.failures, 1, "counted once");
    let other = engine
        .fail_job(fail(&job, "another error"))
        .await
        .unwrap_err();
    assert_eq!(other.code(), "STALE_LEASE");
    assert!(!other.to_string().contains(&job.lease.to_string()));
    // Leased again by another worker: the old report is still answered, never with the new
    // lease, and the new lease is untouched.
    clock.advance(Duration::seconds(11));
    let next = engine.activate_jobs(activate(30)).await.unwrap().remove(0);
    let replay = engine.fail_job(fail(&job, "warehouse down")).await.unwrap();
    assert_eq!(replay.lease.as_ref().map(|l| l.id), Some(next.lease));
    assert_eq!(replay.failures, 1);
    let stale = engine
        .complete_job(job.id, job.lease, json!({ "warehouse": "W1" }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), "STALE_LEASE");
    assert!(
        !stale.to_string().contains(&next.lease.to_string()),
        "a stale completion never learns the current lease: {stale}"
    );
    engine
        .complete_job(next.id, next.lease, json!({ "warehouse": "W2" }))
        .await
        .unwrap();
    assert_eq!(engine.get(id).await.unwrap().state, "reserved");
}

#[tokio::test]
async fn a_long_poll_waits_for_a_job_and_returns_empty_when_none_comes() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock).await;
    let types = vec!["reserve_stock".to_string()];
    let started = std::time::Instant::now();
    let none = engine
        .activate_jobs_waiting(
            &types,
            "wms-1",
            5,
            StdDuration::from_secs(30),
            StdDuration::from_millis(200),
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(started.elapsed() >= StdDuration::from_millis(200));
    let waiting = {
        let engine = engine.clone();
        let types = types.clone();
        tokio::spawn(async move {
            engine
                .activate_jobs_waiting(
                    &types,
                    "wms-1",
                    5,
                    StdDuration::from_secs(30),
                    StdDuration::from_secs(20),
                )
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(StdDuration::from_millis(50)).await;
    let started = std::time::Instant::now();
    submitted(&engine, "O-W").await;
    let got = waiting.await.unwrap();
    assert_eq!(got.len(), 1, "woken by the new job");
    assert!(
        started.elapsed() < StdDuration::from_secs(5),
        "not at the end of the wait"
    );
    for (types, field) in [
        (vec![], "job_types"),
        (vec!["x".to_string(); 17], "job_types"),
    ] {
        let e = engine
            .activate_jobs_waiting(
                &types,
                "w",
                1,
                StdDuration::from_secs(30),
                StdDuration::ZERO,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, CommandError::InvalidInput { field: ref f, .. } if f == field),
            "{e}"
        );
    }
}

#[tokio::test]
async fn incidents_are_listed_for_admins_in_pages() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock.clone()).await;
    let mut expected = Vec::new();
    for n in 0..3 {
        let id = submitted(&engine, &format!("O-I{n}")).await;
        if n != 1 {
            expected.push(id);
        }
    }
    // Every job fails until its retries (2) run out, except O-I1's, which completes.
    for _ in 0..3 {
        clock.advance(Duration::minutes(5));
        for job in engine.activate_jobs(activate(30)).await.unwrap() {
            if engine.get(job.instance).await.unwrap().business_key == "O-I1" {
                engine
                    .complete_job(job.id, job.lease, json!({ "warehouse": "W" }))
                    .await
                    .unwrap();
            } else {
                engine.fail_job(fail(&job, "down")).await.unwrap();
            }
        }
    }
    let admin = Actor::new("ops", &["admin"]);
    let refused = engine
        .incidents_page(&Actor::new("rep", &["sales_rep"]), 10, None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "ROLE_NOT_ALLOWED");
    let first = engine.incidents_page(&admin, 1, None).await.unwrap();
    assert_eq!(first.items.len(), 1);
    let second = engine
        .incidents_page(&admin, 1, first.next_page_token.as_deref())
        .await
        .unwrap();
    assert_eq!(second.items.len(), 1);
    let mut listed: Vec<InstanceId> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|j| j.instance)
        .collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    let rest = engine
        .incidents_page(&admin, 1, second.next_page_token.as_deref())
        .await
        .unwrap();
    assert!(rest.items.is_empty() && rest.next_page_token.is_none());
}

/// Activation reads the activation index, then each job: a worker that leased a job between
/// the two reads must not make the other worker's activation fail (it once panicked on a job
/// "already leased"). Rounds of workers race over fresh jobs, all starting at once; each job
/// is leased exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_racing_for_jobs_lease_each_exactly_once_and_never_fail() {
    let engine = engine(Arc::new(ManualClock::new(t0()))).await;
    let mut all = Vec::new();
    for round in 0..12 {
        for n in 0..40 {
            submitted(&engine, &format!("O-{round}-{n}")).await;
        }
        let start = Arc::new(tokio::sync::Barrier::new(8));
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (engine, start) = (engine.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let mut leased = Vec::new();
                    loop {
                        let mut request = activate(600);
                        request.worker = format!("wms-{w}");
                        request.max_jobs = 5;
                        let batch = engine.activate_jobs(request).await.unwrap();
                        if batch.is_empty() {
                            return leased;
                        }
                        leased.extend(batch.into_iter().map(|j| j.id));
                    }
                })
            })
            .collect();
        for w in workers {
            all.extend(w.await.expect("a worker's activation never panics"));
        }
    }
    let distinct: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (480, 480));
}
