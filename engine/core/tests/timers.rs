//! Durable timers: set on entering a state, cancelled on leaving it, fired by the engine as
//! the `system` actor once per due time — also when they fell due while the engine was down.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use switchyard_core::*;

const APPROVAL: &str = r#"
name = "approval"
version = 1
initial = "pending"

[start]
roles = ["sales_rep"]
payload = { valid_until = { type = "date", required = false } }

[states.pending]
description = "Waiting for a manager"
timers = [
    { name = "remind", after = "48h", command = "escalate" },
    { name = "deny", after = "7d", command = "auto_deny" },
]

[states.approved]
timers = [{ name = "expire", at = "valid_until", command = "expire" }]

[states.denied]
terminal = true

[states.expired]
terminal = true

[commands.escalate]
from = ["pending"]
to = ["pending"]
roles = ["system"]
decider = "approval.escalate"

[commands.auto_deny]
from = ["pending"]
to = ["denied"]
roles = ["system"]

[commands.approve]
from = ["pending"]
to = ["approved"]
roles = ["sales_manager"]

[commands.expire]
from = ["approved"]
to = ["expired"]
roles = ["system"]
"#;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap()
}

fn deciders() -> DeciderRegistry {
    let mut d = DeciderRegistry::new();
    d.register("approval.escalate", |ctx: &DecisionContext<'_>| {
        Ok(Decision::goto(
            "pending",
            "SLA of 48h passed → escalated to the sales director",
        )
        .with_changes(json!({ "escalated": true, "escalated_at": ctx.now })))
    });
    d
}

async fn engine(clock: Arc<ManualClock>, store: StoreConfig) -> Engine {
    let d = deciders();
    let defs =
        DefinitionSet::from_sources(&[("approval.toml".into(), APPROVAL.into())], &d).unwrap();
    let mut config = EngineConfig::new(store);
    config.clock = clock;
    // Tests drive timers by hand; keep the background poller out of the way.
    config.background_tasks = false;
    Engine::open(config, defs, d).await.unwrap()
}

async fn start(
    engine: &Engine,
    data: serde_json::Value,
    rid: &str,
) -> Result<CommandOutcome, CommandError> {
    engine
        .start(
            StartRequest::new("approval", Actor::new("rep", &["sales_rep"]), rid)
                .business_key(rid)
                .data(data),
        )
        .await
}

#[tokio::test]
async fn an_untouched_approval_escalates_after_its_sla_and_is_denied_after_the_longer_limit() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock.clone(), StoreConfig::Memory).await;
    let id = start(&engine, json!({}), "a-1").await.unwrap().instance;
    let timers = engine.get(id).await.unwrap().timers;
    assert_eq!(
        timers
            .iter()
            .map(|t| (t.name.as_str(), t.due))
            .collect::<Vec<_>>(),
        vec![
            ("remind", t0() + Duration::hours(48)),
            ("deny", t0() + Duration::days(7))
        ]
    );

    clock.advance(Duration::hours(48) - Duration::seconds(1));
    assert_eq!(engine.fire_due_timers().await.unwrap(), 0, "not yet due");
    clock.advance(Duration::seconds(1));
    assert_eq!(engine.fire_due_timers().await.unwrap(), 1);
    let now = engine.get(id).await.unwrap();
    assert_eq!(now.state, "pending");
    assert_eq!(now.data["escalated"], true);
    assert_eq!(
        now.timers
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        vec!["deny"],
        "the fired timer is gone, the other stays"
    );
    let h = engine.history(id, 1, 0).await.unwrap();
    assert_eq!(h[0].actor, Actor::new("system:timer", &["system"]));
    assert_eq!(h[0].command.as_deref(), Some("escalate"));
    assert_eq!(engine.fire_due_timers().await.unwrap(), 0, "fired once");

    clock.set(t0() + Duration::days(7));
    assert_eq!(engine.fire_due_timers().await.unwrap(), 1);
    let now = engine.get(id).await.unwrap();
    assert_eq!(
        (now.state.as_str(), now.status),
        ("denied", InstanceStatus::Completed)
    );
    assert!(now.timers.is_empty());

    // The feed shows the firings.
    let mut sub = engine.subscribe(0).unwrap();
    let mut kinds = Vec::new();
    for _ in 0..5 {
        kinds.push(sub.next().await.unwrap().kind);
    }
    assert_eq!(
        kinds,
        [
            "switchyard.instance.started",
            "switchyard.instance.transitioned",
            "switchyard.timer.fired",
            "switchyard.instance.transitioned",
            "switchyard.timer.fired"
        ]
    );
}

#[tokio::test]
async fn leaving_the_state_cancels_its_timers() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock.clone(), StoreConfig::Memory).await;
    let id = start(&engine, json!({"valid_until": "2026-04-30"}), "c-1")
        .await
        .unwrap()
        .instance;
    engine
        .send(CommandRequest::new(
            id,
            "approve",
            Actor::new("mgr", &["sales_manager"]),
            "c-2",
        ))
        .await
        .unwrap();
    let now = engine.get(id).await.unwrap();
    assert_eq!(now.timers.len(), 1, "the approved state's own timer");
    assert_eq!(now.timers[0].name, "expire");
    assert_eq!(
        now.timers[0].due,
        Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap(),
        "a date means the end of that day"
    );
    clock.advance(Duration::days(8));
    assert!(
        engine
            .store()
            .due_timers(t0() + Duration::days(8), 10)
            .unwrap()
            .is_empty(),
        "`remind` and `deny` were cancelled"
    );
    assert_eq!(engine.fire_due_timers().await.unwrap(), 0);
    clock.set(Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap());
    assert_eq!(
        engine.fire_due_timers().await.unwrap(),
        1,
        "`expire` at the end of valid_until"
    );
    assert_eq!(engine.get(id).await.unwrap().state, "expired");
    assert!(engine
        .store()
        .due_timers(t0() + Duration::days(365), 10)
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_timer_due_while_the_engine_was_down_fires_once_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SledConfig::new(dir.path());
    store.durability = Durability::Flush;
    let clock = Arc::new(ManualClock::new(t0()));
    let first = engine(clock.clone(), StoreConfig::Sled(store.clone())).await;
    let id = start(&first, json!({}), "r-1").await.unwrap().instance;
    first.shutdown().await;
    drop(first);

    clock.advance(Duration::days(3)); // `remind` fell due while nothing ran
    let second = engine(clock.clone(), StoreConfig::Sled(store.clone())).await;
    let (a, b) = tokio::join!(second.fire_due_timers(), second.fire_due_timers());
    assert_eq!(
        a.unwrap() + b.unwrap(),
        1,
        "two pollers racing fire it once"
    );
    assert_eq!(second.fire_due_timers().await.unwrap(), 0);
    let history = second.history(id, 0, 0).await.unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|h| h.command.as_deref() == Some("escalate"))
            .count(),
        1
    );
    second.shutdown().await;
    drop(second);

    clock.advance(Duration::days(5)); // and `deny` too, across another restart
    let third = engine(clock.clone(), StoreConfig::Sled(store)).await;
    assert_eq!(third.fire_due_timers().await.unwrap(), 1);
    assert_eq!(third.get(id).await.unwrap().state, "denied");
    third.shutdown().await;
}

#[tokio::test]
async fn a_timer_from_a_data_field_needs_the_field() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = engine(clock, StoreConfig::Memory).await;
    let id = start(&engine, json!({}), "d-1").await.unwrap().instance;
    let err = engine
        .send(CommandRequest::new(
            id,
            "approve",
            Actor::new("mgr", &["sales_manager"]),
            "d-2",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `data.valid_until`: timer `expire` of state `approved` needs a date (\"2026-05-01\") or an RFC 3339 time here"
    );
    assert_eq!(engine.get(id).await.unwrap().version, 1, "nothing written");
}

#[tokio::test]
async fn the_background_poller_fires_timers_on_the_system_clock() {
    let d = deciders();
    let fast = APPROVAL.replace("after = \"48h\"", "after = \"1s\"");
    let defs = DefinitionSet::from_sources(&[("approval.toml".into(), fast)], &d).unwrap();
    let mut config = EngineConfig::in_memory();
    config.timer_poll_interval = StdDuration::from_millis(50);
    let engine = Engine::open(config, defs, d).await.unwrap();
    let id = start(&engine, json!({}), "p-1").await.unwrap().instance;
    let mut sub = engine.subscribe(1).unwrap();
    let event = tokio::time::timeout(StdDuration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.data()["command"], "escalate");
    assert_eq!(engine.get(id).await.unwrap().data["escalated"], true);
    engine.shutdown().await;
}

/// Deciders whose escalation fails for instance `BAD` (a rule error) and panics for `PANIC`.
fn failing_deciders() -> DeciderRegistry {
    let mut d = DeciderRegistry::new();
    d.register("approval.escalate", |ctx: &DecisionContext<'_>| {
        match ctx.instance.business_key.as_str() {
            "BAD" => Err(DecideError::new(
                "scripts/approval.rhai:7:3: function `escalate`: add_days(\"2026-04-03\", 9223372036854775807): out of range",
            )),
            "PANIC" => panic!("a decider bug"),
            _ => Ok(Decision::goto("pending", "escalated")),
        }
    });
    d
}

async fn failing_engine(clock: Arc<ManualClock>, poll: StdDuration) -> Engine {
    let d = failing_deciders();
    let defs =
        DefinitionSet::from_sources(&[("approval.toml".into(), APPROVAL.into())], &d).unwrap();
    let mut config = EngineConfig::in_memory();
    config.clock = clock;
    config.timer_poll_interval = poll;
    // Driven by hand unless the test polls fast.
    config.background_tasks = poll < StdDuration::from_secs(60);
    Engine::open(config, defs, d).await.unwrap()
}

#[tokio::test]
async fn a_timer_whose_command_fails_becomes_an_incident_and_the_others_keep_firing() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = failing_engine(clock.clone(), StdDuration::from_secs(3600)).await;
    let bad = start(&engine, json!({}), "BAD").await.unwrap().instance;
    let panics = start(&engine, json!({}), "PANIC").await.unwrap().instance;
    let good = start(&engine, json!({}), "GOOD").await.unwrap().instance;
    let mut feed = engine.subscribe(3).unwrap();
    clock.advance(Duration::hours(48));
    assert_eq!(
        engine.fire_due_timers().await.unwrap(),
        1,
        "only GOOD escalates"
    );
    assert_eq!(
        engine.get(good).await.unwrap().data["escalated"],
        json!(null)
    );
    assert_eq!(engine.get(good).await.unwrap().version, 2);

    for (id, error) in [
        (
            bad,
            "scripts/approval.rhai:7:3: function `escalate`: add_days",
        ),
        (panics, "the decider panicked: a decider bug"),
    ] {
        let i = engine.get(id).await.unwrap();
        assert!(
            i.timers.iter().all(|t| t.name != "remind"),
            "no longer open"
        );
        assert_eq!(i.incidents.len(), 1);
        assert_eq!(i.incidents[0].timer.name, "remind");
        assert!(
            i.incidents[0].error.contains(error),
            "{}",
            i.incidents[0].error
        );
        let entry = engine.history(id, 1, 1).await.unwrap().remove(0);
        assert_eq!(
            entry.kind,
            ChangeKind::TimerIncidentRaised {
                timer: "remind".into()
            }
        );
    }
    let mut raised = 0;
    for _ in 0..3 {
        let event = feed.next().await.unwrap();
        if event.kind == EventType::IncidentRaised {
            raised += 1;
            assert_eq!(event.data()["incident"]["kind"], "timer");
        }
    }
    assert_eq!(raised, 2);
    // Nothing fires (or fails) again until someone resolves it; the deny timer still runs.
    assert_eq!(engine.fire_due_timers().await.unwrap(), 0);
    clock.advance(Duration::days(5));
    assert_eq!(
        engine.fire_due_timers().await.unwrap(),
        3,
        "every deny timer fires"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn an_admin_retries_or_cancels_a_timer_incident() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = failing_engine(clock.clone(), StdDuration::from_secs(3600)).await;
    let bad = start(&engine, json!({}), "BAD").await.unwrap().instance;
    clock.advance(Duration::hours(48));
    engine.fire_due_timers().await.unwrap();
    let rep = Actor::new("rep", &["sales_rep"]);
    let admin = Actor::new("ops", &["admin"]);
    let refused = engine
        .resolve_timer_incident(bad, "remind", IncidentAction::Cancel, &rep)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "ROLE_NOT_ALLOWED");
    let missing = engine
        .resolve_timer_incident(bad, "deny", IncidentAction::Cancel, &admin)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), "NO_SUCH_INCIDENT");
    // Retry: due now, fires on the next pass, fails again, an incident again.
    engine
        .resolve_timer_incident(bad, "remind", IncidentAction::Retry { retries: 1 }, &admin)
        .await
        .unwrap();
    let i = engine.get(bad).await.unwrap();
    assert!(i.incidents.is_empty());
    assert!(i
        .timers
        .iter()
        .any(|t| t.name == "remind" && t.due == clock.now()));
    assert_eq!(engine.fire_due_timers().await.unwrap(), 0);
    assert_eq!(engine.get(bad).await.unwrap().incidents.len(), 1);
    // Cancel: gone for good, recorded with its actor.
    let out = engine
        .resolve_timer_incident(bad, "remind", IncidentAction::Cancel, &admin)
        .await
        .unwrap();
    let i = engine.get(bad).await.unwrap();
    assert!(i.incidents.is_empty() && i.timers.iter().all(|t| t.name != "remind"));
    let entry = engine
        .history(bad, out.version - 1, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(entry.actor.id, "ops");
    assert_eq!(entry.payload["action"], "cancel");
    engine.shutdown().await;
}

#[tokio::test]
async fn the_background_timer_task_survives_a_panicking_timer() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = failing_engine(clock.clone(), StdDuration::from_millis(20)).await;
    let panics = start(&engine, json!({}), "PANIC").await.unwrap().instance;
    clock.advance(Duration::hours(48));
    for _ in 0..500 {
        if !engine.get(panics).await.unwrap().incidents.is_empty() {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    assert_eq!(engine.get(panics).await.unwrap().incidents.len(), 1);
    // The task is still there: a timer due later still fires on its own.
    let good = start(&engine, json!({}), "GOOD").await.unwrap().instance;
    clock.advance(Duration::hours(48));
    for _ in 0..500 {
        if engine.get(good).await.unwrap().version > 1 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    assert_eq!(engine.get(good).await.unwrap().version, 2, "GOOD escalated");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_compiled_decider_that_panics_fails_its_command_and_changes_nothing() {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = failing_engine(clock, StdDuration::from_secs(3600)).await;
    let panics = start(&engine, json!({}), "PANIC").await.unwrap().instance;
    let good = start(&engine, json!({}), "GOOD").await.unwrap().instance;
    let system = Actor::new("sys", &["system"]);
    let send =
        |id, rid: &str| engine.send(CommandRequest::new(id, "escalate", system.clone(), rid));
    match send(panics, "c-1").await.unwrap_err() {
        CommandError::DecisionFailed { message, .. } => {
            assert!(message.contains("a decider bug"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(engine.get(panics).await.unwrap().version, 1);
    assert_eq!(
        send(good, "c-2").await.unwrap().version,
        2,
        "the engine goes on"
    );
    engine.shutdown().await;
}
