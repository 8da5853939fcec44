//! Notifications end to end on the shipped rule set: routed by `rules/scripts/notify.rhai`,
//! written in the commit of the change that caused them (the outbox), delivered by a channel
//! through job leases, retried, given up as an incident, held for a send window, de-duplicated,
//! and never written for a refused command.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};
use switchyard_core::notification::{Channel, DeliveryStatus, Notification, SendError, SendFuture};
use switchyard_core::{
    ActivateJobs, Actor, CancelRequest, CommandRequest, DeciderRegistry, Engine, EngineConfig,
    InstanceId, ManualClock, RuleLimits, StartRequest, StoreConfig,
};

use common::rules_copy;

/// Wednesday 2026-04-01 09:00 in Berlin: within everyone's office hours there.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 7, 0, 0).unwrap()
}

struct World {
    engine: Engine,
    clock: Arc<ManualClock>,
    _rules: tempfile::TempDir,
}

async fn world(edits: &[(&str, &str, &str)], at: DateTime<Utc>, retries: u32) -> World {
    let rules = rules_copy(edits);
    let clock = Arc::new(ManualClock::new(at));
    let mut config = EngineConfig::new(StoreConfig::Memory);
    config.clock = clock.clone();
    config.background_tasks = false;
    config.job_poll_interval = StdDuration::from_millis(10);
    config.notification_retries = retries;
    let engine = Engine::open_with_rules(
        config,
        rules.path(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .await
    .unwrap();
    World {
        engine,
        clock,
        _rules: rules,
    }
}

fn who(spec: &str) -> Actor {
    let (id, role) = spec.split_once(':').unwrap();
    Actor::new(id, &[role])
}

impl World {
    /// A quote that needs the sales manager and then finance (18% off, 12,000 net).
    async fn quote(&self, key: &str) -> InstanceId {
        let data = json!({ "customer": "BETA", "currency": "EUR", "discount_pct": "18", "valid_until": "2026-05-15",
            "lines": [{ "sku": "CONSULT-PKG", "quantity": 1 }] });
        self.engine
            .start(
                StartRequest::new("quote", who("ana:sales_rep"), format!("start-{key}"))
                    .business_key(key)
                    .data(data),
            )
            .await
            .unwrap()
            .instance
    }

    async fn send(&self, id: InstanceId, actor: &str, command: &str, payload: Value) -> bool {
        let version = self.engine.get(id).await.unwrap().version;
        self.engine
            .send(
                CommandRequest::new(id, command, who(actor), format!("{id}-{command}-{version}"))
                    .payload(payload),
            )
            .await
            .is_ok()
    }

    /// Every feed event so far: (type, data).
    async fn feed(&self) -> Vec<(String, Value)> {
        let (_, head) = self.engine.feed_bounds().unwrap();
        let mut sub = self.engine.subscribe(0).unwrap();
        let mut out = Vec::new();
        while out.len() < head as usize {
            let e = sub.next().await.unwrap();
            out.push((
                e.kind.to_string(),
                serde_json::from_str(e.data_json.get()).unwrap(),
            ));
        }
        out
    }

    /// Waits (advancing the engine clock a minute per round, so retries fall due) until
    /// `done` holds for the instance's messages.
    async fn until(
        &self,
        id: InstanceId,
        done: impl Fn(&[switchyard_core::notification::Delivery]) -> bool,
    ) {
        for _ in 0..500 {
            let deliveries = self.engine.notifications(id).await.unwrap();
            if done(&deliveries) {
                return;
            }
            self.clock.advance(Duration::minutes(1));
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
        panic!(
            "not reached; deliveries: {:#?}",
            self.engine.notifications(id).await.unwrap()
        );
    }
}

/// A channel that records every attempt and fails the first `failures` of them (asking to be
/// retried after `retry_after`, or giving up, when set).
#[derive(Default)]
struct Recorder {
    failures: usize,
    retry_after: Option<StdDuration>,
    give_up: bool,
    attempts: Mutex<Vec<Notification>>,
}

impl Channel for Recorder {
    fn send<'a>(&'a self, notification: &'a Notification) -> SendFuture<'a> {
        Box::pin(async move {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(notification.clone());
            if attempts.len() <= self.failures {
                let error = format!("smtp: 451 try again (attempt {})", attempts.len());
                Err(match (self.retry_after, self.give_up) {
                    (_, true) => SendError::give_up("webhook answered 410 Gone"),
                    (Some(delay), _) => SendError::retry_after(error, delay),
                    (None, false) => error.into(),
                })
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test]
async fn an_approval_request_commits_with_its_message_which_a_failing_channel_delivers_on_the_third_try(
) {
    let w = world(&[], t0(), 10).await;
    let id = w.quote("Q-1").await;
    assert!(w.send(id, "ana:sales_rep", "submit", json!({})).await);

    // The message is in the outbox, routed to the sales manager by e-mail, due now.
    let queued = w.engine.notifications(id).await.unwrap();
    assert_eq!(queued.len(), 1, "{queued:#?}");
    let m = &queued[0];
    assert_eq!(m.status, DeliveryStatus::Queued);
    assert_eq!(
        (
            m.message.channel.as_str(),
            m.message.to.as_str(),
            m.message.category.as_str()
        ),
        ("email", "mia@example.com", "approval")
    );
    assert_eq!(m.message.subject, "Quote Q-1 waits for your approval");
    assert_eq!(m.message.source["to_state"], "pending_approval");
    assert_eq!(m.next_attempt_at, Some(t0()));

    // ... written in the same commit as the transition: its event directly follows.
    let feed = w.feed().await;
    let at = feed
        .iter()
        .position(|(kind, _)| kind == "switchyard.notification.queued")
        .unwrap();
    assert_eq!(feed[at - 1].0, "switchyard.instance.transitioned");
    assert_eq!(feed[at - 1].1["to_state"], "pending_approval");
    assert_eq!(feed[at].1["payload"]["to"], "mia@example.com");

    // A refused command writes no message.
    assert!(!w.send(id, "fin:finance", "approve", json!({})).await);
    assert_eq!(w.engine.notifications(id).await.unwrap().len(), 1);

    // The channel fails twice, then takes it: three attempts with one message id.
    let channel = Arc::new(Recorder {
        failures: 2,
        ..Recorder::default()
    });
    w.engine.register_channel("email", channel.clone());
    w.until(id, |d| d[0].status == DeliveryStatus::Sent).await;
    let sent = &w.engine.notifications(id).await.unwrap()[0];
    assert_eq!(sent.failures, 2);
    let attempts = channel.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a.id == sent.id));
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(attempts[0].message, sent.message);
    let kinds: Vec<String> = w
        .feed()
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("switchyard.notification."))
        .collect();
    assert_eq!(
        kinds,
        [
            "switchyard.notification.queued",
            "switchyard.notification.failed",
            "switchyard.notification.failed",
            "switchyard.notification.sent",
        ]
    );
}

#[tokio::test]
async fn a_message_that_keeps_failing_becomes_an_incident_and_a_feed_event() {
    let w = world(&[], t0(), 1).await;
    let id = w.quote("Q-2").await;
    assert!(w.send(id, "ana:sales_rep", "submit", json!({})).await);
    w.engine.register_channel(
        "email",
        Arc::new(Recorder {
            failures: usize::MAX,
            ..Recorder::default()
        }),
    );
    w.until(id, |d| d[0].status == DeliveryStatus::Undelivered)
        .await;
    let undelivered = &w.engine.notifications(id).await.unwrap()[0];
    assert_eq!(undelivered.failures, 2);
    assert!(undelivered
        .last_error
        .as_deref()
        .unwrap()
        .contains("451 try again"));
    let incidents = w
        .engine
        .incidents_page(&who("root:admin"), 10, None)
        .await
        .unwrap();
    assert_eq!(incidents.items.len(), 1);
    assert_eq!(incidents.items[0].id, undelivered.id);
    let feed = w.feed().await;
    let kinds: Vec<&str> = feed.iter().map(|(k, _)| k.as_str()).collect();
    let at = kinds
        .iter()
        .position(|k| *k == "switchyard.notification.undelivered")
        .expect("an undelivered event");
    assert_eq!(kinds[at + 1], "switchyard.incident.raised");
}

/// A receiver that asks to wait (HTTP `Retry-After`) is tried again exactly then, without the
/// backoff's jitter; one that is gone (HTTP 410) gets no further attempt: the message is
/// undelivered and an incident at once, with retries left.
#[tokio::test]
async fn a_channel_may_ask_for_a_later_retry_or_give_up_at_once() {
    let w = world(&[], t0(), 10).await;
    let later = w.quote("Q-later").await;
    assert!(w.send(later, "ana:sales_rep", "submit", json!({})).await);
    let asked = StdDuration::from_secs(90 * 60);
    w.engine.register_channel(
        "email",
        Arc::new(Recorder {
            failures: 1,
            retry_after: Some(asked),
            ..Recorder::default()
        }),
    );
    let mut waiting = None;
    for _ in 0..500 {
        let d = w.engine.notifications(later).await.unwrap().remove(0);
        if d.failures == 1 {
            waiting = Some(d);
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    let waiting = waiting.expect("one failed attempt");
    assert_eq!(waiting.status, DeliveryStatus::Retrying);
    assert_eq!(
        waiting.next_attempt_at,
        Some(switchyard_core::Clock::now(w.clock.as_ref()) + Duration::minutes(90)),
        "exactly as asked"
    );
    w.until(later, |d| d[0].status == DeliveryStatus::Sent)
        .await;

    let w = world(&[], t0(), 10).await;
    let gone = w.quote("Q-gone").await;
    assert!(w.send(gone, "ana:sales_rep", "submit", json!({})).await);
    let channel = Arc::new(Recorder {
        failures: usize::MAX,
        give_up: true,
        ..Recorder::default()
    });
    w.engine.register_channel("email", channel.clone());
    w.until(gone, |d| d[0].status == DeliveryStatus::Undelivered)
        .await;
    let undelivered = &w.engine.notifications(gone).await.unwrap()[0];
    assert_eq!((undelivered.failures, undelivered.retries), (1, 10));
    assert_eq!(channel.attempts.lock().unwrap().len(), 1);
    let incidents = w
        .engine
        .incidents_page(&who("root:admin"), 10, None)
        .await
        .unwrap();
    assert_eq!(incidents.items.len(), 1);
}

#[tokio::test]
async fn a_routine_message_waits_for_the_recipients_hours_in_her_time_zone() {
    // Friday 2026-04-03 22:00 in Berlin: after Mia's hours (07:00–21:00; Saturday 09:00–13:00).
    let w = world(&[], Utc.with_ymd_and_hms(2026, 4, 3, 20, 0, 0).unwrap(), 10).await;
    let id = w.quote("Q-3").await;
    assert!(w.send(id, "ana:sales_rep", "submit", json!({})).await);
    let opens = Utc.with_ymd_and_hms(2026, 4, 4, 7, 0, 0).unwrap();
    let queued = &w.engine.notifications(id).await.unwrap()[0];
    assert_eq!(queued.message.not_before, Some(opens));
    assert_eq!(queued.next_attempt_at, Some(opens));
    let activate = || ActivateJobs::new("notify.email", "mailer", 10, StdDuration::from_secs(60));
    assert!(w.engine.activate_jobs(activate()).await.unwrap().is_empty());
    w.clock.set(opens - Duration::seconds(1));
    assert!(w.engine.activate_jobs(activate()).await.unwrap().is_empty());
    w.clock.set(opens);
    let due = w.engine.activate_jobs(activate()).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, queued.id);
}

#[tokio::test]
async fn a_repeated_approval_request_within_the_hour_is_suppressed_and_after_it_sent_again() {
    let w = world(&[], t0(), 10).await;
    let id = w.quote("Q-4").await;
    let approvals = |d: &[switchyard_core::notification::Delivery]| {
        d.iter()
            .filter(|m| m.message.category == "approval")
            .count()
    };
    assert!(w.send(id, "ana:sales_rep", "submit", json!({})).await);
    assert!(
        w.send(
            id,
            "mia:sales_manager",
            "reject",
            json!({ "reason": "not yet" })
        )
        .await
    );
    w.clock.advance(Duration::minutes(30));
    assert!(w.send(id, "ana:sales_rep", "submit", json!({})).await);
    let d = w.engine.notifications(id).await.unwrap();
    assert_eq!(approvals(&d), 1, "{d:#?}");
    // The rejection told the owner, Ana.
    assert!(d
        .iter()
        .any(|m| m.message.category == "quote" && m.message.to == "ana@example.com"));
    let feed = w.feed().await;
    let suppressed: Vec<&Value> = feed
        .iter()
        .filter(|(k, _)| k == "switchyard.notification.suppressed")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0]["dedup_key"], "approval_pending:Q-4:mia:email");

    w.clock.advance(Duration::minutes(31));
    assert!(
        w.send(
            id,
            "mia:sales_manager",
            "reject",
            json!({ "reason": "still not" })
        )
        .await
    );
    assert!(w.send(id, "ana:sales_rep", "submit", json!({})).await);
    assert_eq!(approvals(&w.engine.notifications(id).await.unwrap()), 2);
}

#[tokio::test]
async fn a_cancelled_instance_keeps_its_messages_and_a_failing_router_does_not_stop_the_change() {
    let w = world(&[], t0(), 10).await;
    let id = w.quote("Q-5").await;
    assert!(w.send(id, "ana:sales_rep", "submit", json!({})).await);
    w.engine
        .cancel(CancelRequest::new(
            id,
            who("mia:sales_manager"),
            "cancel-Q-5",
        ))
        .await
        .unwrap();
    let d = w.engine.notifications(id).await.unwrap();
    assert_eq!(d[0].status, DeliveryStatus::Queued);

    let broken = world(
        &[(
            "scripts/notify.rhai",
            "fn route(event) {",
            "fn route(event) {\n    if event.business_key == \"Q-6\" { throw \"no route today\"; }",
        )],
        t0(),
        10,
    )
    .await;
    let id = broken.quote("Q-6").await;
    assert!(broken.send(id, "ana:sales_rep", "submit", json!({})).await);
    assert_eq!(
        broken.engine.get(id).await.unwrap().state,
        "pending_approval"
    );
    assert!(broken.engine.notifications(id).await.unwrap().is_empty());
    let feed = broken.feed().await;
    let failed = feed
        .iter()
        .find(|(k, _)| k == "switchyard.notification.routing_failed")
        .expect("a routing_failed event");
    assert!(
        failed.1["error"]
            .as_str()
            .unwrap()
            .contains("no route today"),
        "{failed:?}"
    );
    assert_eq!(failed.1["source"]["business_key"], "Q-6");
}
