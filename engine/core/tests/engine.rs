//! Engine behaviour: starts, commands, roles, schemas, idempotency, concurrency, links,
//! counters, cancel, listing. Every refusal also checks that nothing was written.

mod common;

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use common::*;
use serde_json::json;
use switchyard_core::*;

async fn started(engine: &Engine, key: &str, total: &str) -> InstanceId {
    engine
        .start(start_order(key, total, &format!("start-{key}")))
        .await
        .unwrap()
        .instance
}

/// Asserts the instance is unchanged and has exactly `versions` history entries.
async fn assert_untouched(engine: &Engine, before: &Instance) {
    let now = engine.get(before.id).await.unwrap();
    assert_eq!(&now, before, "a refused request changed the instance");
    let history = engine.history(before.id, 0, 0).await.unwrap();
    assert_eq!(
        history.len() as u64,
        before.version,
        "a refused request wrote history"
    );
}

#[tokio::test]
async fn a_command_moves_the_instance_and_records_history() {
    let engine = memory_engine().await;
    let id = started(&engine, "O-1", "120.00").await;
    let out = engine
        .send(command(
            id,
            "confirm",
            json!({"note": "rush"}),
            rep(),
            "c-1",
        ))
        .await
        .unwrap();
    assert_eq!(out.state, "confirmed");
    assert_eq!(out.version, 2);
    assert_eq!(out.reason, "total 120.00 ≤ 10000 → confirmed");
    assert_eq!(
        out.counters,
        vec![CounterValue {
            counter: "order_number".into(),
            key: "2026".into(),
            value: 1
        }]
    );

    let instance = engine.get(id).await.unwrap();
    assert_eq!(instance.data["number"], "SO-2026-000001");
    assert_eq!(
        instance.data["total"], "120.00",
        "money stays a decimal string"
    );
    let history = engine.history(id, 0, 0).await.unwrap();
    assert_eq!(history.len(), 2);
    let h = &history[1];
    assert_eq!(h.actor, rep());
    assert_eq!(h.command.as_deref(), Some("confirm"));
    assert_eq!(h.from_state.as_deref(), Some("created"));
    assert_eq!(h.to_state, "confirmed");
    assert_eq!(h.payload, json!({"note": "rush"}));
    assert_eq!(h.decider.as_deref(), Some("order.confirm"));
    assert_eq!(h.reason, "total 120.00 ≤ 10000 → confirmed");
    assert_eq!(h.changes, json!({"number": "SO-2026-000001"}));
    assert_eq!(h.request_id.as_deref(), Some("c-1"));
    assert!(matches!(history[0].kind, ChangeKind::Started { by: None }));
    engine.shutdown().await;
}

#[tokio::test]
async fn a_transition_starts_a_linked_instance_queryable_both_ways() {
    let engine = memory_engine().await;
    let order = started(&engine, "O-2", "50.00").await;
    let out = engine
        .send(command(order, "confirm", json!({}), rep(), "c-2"))
        .await
        .unwrap();
    assert_eq!(out.started.len(), 1);
    let shipment = engine.get(out.started[0]).await.unwrap();
    assert_eq!(shipment.parent, Some(order));
    assert_eq!(shipment.definition.name, "shipment");
    assert_eq!(shipment.state, "pending");
    assert_eq!(shipment.data, json!({"order_total": "50.00"}));
    let children = engine.children(order, 0, None).await.unwrap();
    assert_eq!(children.items, vec![shipment.id]);
    let child_history = engine.history(shipment.id, 0, 0).await.unwrap();
    assert_eq!(
        child_history[0].kind,
        ChangeKind::Started { by: Some(order) }
    );

    // The shipment's transition updates its parent, version-checked, in the same commit.
    let logistics = Actor::new("wh-1", &["logistics"]);
    engine
        .send(command(shipment.id, "deliver", json!({}), logistics, "d-1"))
        .await
        .unwrap();
    let order_now = engine.get(order).await.unwrap();
    assert_eq!(order_now.data["delivered"], true);
    assert_eq!(order_now.version, 3);
    let last = engine.history(order, 2, 0).await.unwrap();
    assert_eq!(last[0].kind, ChangeKind::LinkedUpdate { by: shipment.id });
    assert_eq!(last[0].reason, "shipment delivered");
}

#[tokio::test]
async fn roles_are_enforced_and_refusals_write_nothing() {
    let engine = memory_engine().await;
    let id = started(&engine, "O-3", "20000.00").await;
    let out = engine
        .send(command(id, "confirm", json!({}), rep(), "c-3"))
        .await
        .unwrap();
    assert_eq!(out.state, "credit_hold");
    let before = engine.get(id).await.unwrap();

    let err = engine
        .send(command(id, "release", json!({}), rep(), "c-4"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ROLE_NOT_ALLOWED");
    assert_eq!(
        err.to_string(),
        "actor `rep-1` (roles: sales_rep) may not send `release` to order v1; it needs one of the roles: credit_controller"
    );
    assert_untouched(&engine, &before).await;

    let controller = Actor::new("cc-1", &["credit_controller"]);
    let out = engine
        .send(command(id, "release", json!({}), controller, "c-4"))
        .await
        .unwrap();
    assert_eq!(
        out.state, "confirmed",
        "a refused request id was not recorded, so it can be reused"
    );

    let nobody = Actor::new("x", &[]);
    let err = engine
        .start({
            let mut r = start_order("O-x", "1.00", "s-x");
            r.actor = nobody;
            r
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ROLE_NOT_ALLOWED");
    assert!(err.to_string().contains("may not start order v1"), "{err}");
    let err = engine
        .cancel(CancelRequest::new(id, rep(), "x-1").reason("no"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ROLE_NOT_ALLOWED");
}

#[tokio::test]
async fn wrong_state_unknown_command_and_unknown_instance_are_refused() {
    let engine = memory_engine().await;
    let id = started(&engine, "O-4", "10.00").await;
    let before = engine.get(id).await.unwrap();
    let logistics = Actor::new("wh", &["logistics"]);
    let err = engine
        .send(command(
            id,
            "ship",
            json!({"carrier": "dhl", "packages": 1}),
            logistics,
            "s-1",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("command `ship` cannot be sent to instance {id} in state `created`; it is accepted in: confirmed")
    );
    let err = engine
        .send(command(id, "teleport", json!({}), rep(), "s-2"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "definition order v1 has no command `teleport`; its commands: close, confirm, note, release, ship"
    );
    assert_untouched(&engine, &before).await;
    let ghost = InstanceId::new();
    let err = engine
        .send(command(ghost, "confirm", json!({}), rep(), "s-3"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), format!("instance {ghost} does not exist"));
    let err = engine
        .start({
            let mut r = start_order("I", "1.00", "s-4");
            r.definition = "invoice".into();
            r
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown definition `invoice`; loaded definitions: order, shipment"
    );
}

#[tokio::test]
async fn payloads_are_checked_field_by_field() {
    let engine = memory_engine().await;
    let check = |data: serde_json::Value, expected: &'static str| {
        let engine = engine.clone();
        async move {
            let err = engine
                .start({
                    let mut r = start_order("O", "1.00", "bad-start");
                    r.data = data;
                    r
                })
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), expected);
            assert_eq!(
                engine
                    .list(ListRequest::default())
                    .await
                    .unwrap()
                    .items
                    .len(),
                0,
                "nothing written"
            );
        }
    };
    check(json!({"customer": "A", "total": 12.5}),
        "invalid payload: field `total`: money must be a decimal string such as \"12.50\"; a JSON number is refused because it may have lost precision").await;
    check(json!({"customer": "A", "total": "12.5.0"}),
        "invalid payload: field `total`: \"12.5.0\" is not a decimal; write digits with an optional `-` and `.`, e.g. \"12.50\"").await;
    check(json!({"customer": "A", "total": "1e3"}),
        "invalid payload: field `total`: \"1e3\" is not a decimal; write digits with an optional `-` and `.`, e.g. \"12.50\"").await;
    check(
        json!({"customer": "A", "total": "-1.00"}),
        "invalid payload: field `total`: -1.00 is below the minimum 0",
    )
    .await;
    check(
        json!({"customer": "A", "total": "1.005"}),
        "invalid payload: field `total`: 1.005 has more than 2 decimal places",
    )
    .await;
    check(
        json!({"customer": "A", "total": "1.00", "quantity": -3}),
        "invalid payload: field `quantity`: must not be negative, got -3",
    )
    .await;
    check(json!({"customer": "A", "total": "1.00", "quantity": 1.5}),
        "invalid payload: field `quantity`: must be a whole JSON number or a decimal string such as \"1.5\"; a fractional JSON number is refused because it may have lost precision").await;
    check(
        json!({"total": "1.00"}),
        "invalid payload: field `customer`: is required (string)",
    )
    .await;
    check(json!({"customer": "A", "total": "1.00", "colour": "red"}),
        "invalid payload: field `colour`: is not accepted; accepted fields: customer, quantity, total").await;
    check(
        json!(["not", "an", "object"]),
        "invalid payload: field `payload`: must be a JSON object, got a list",
    )
    .await;
    check(
        json!({"customer": "A".repeat(65), "total": "1.00"}),
        "invalid payload: field `customer`: is longer than 64 characters",
    )
    .await;

    let id = started(&engine, "O-5", "10.00").await;
    engine
        .send(command(id, "confirm", json!({}), rep(), "c-5"))
        .await
        .unwrap();
    let logistics = Actor::new("wh", &["logistics"]);
    let err = engine
        .send(command(
            id,
            "ship",
            json!({"carrier": "fedex", "packages": 0}),
            logistics,
            "s-5",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid payload: field `carrier`: \"fedex\" is not one of: dhl, ups; field `packages`: 0 is below the minimum 1"
    );
    let CommandError::InvalidPayload { violations } = err else {
        panic!()
    };
    assert_eq!(
        violations
            .iter()
            .map(|v| v.field.as_str())
            .collect::<Vec<_>>(),
        ["carrier", "packages"]
    );
}

#[tokio::test]
async fn oversized_payloads_and_bad_request_fields_are_refused() {
    let engine = memory_engine().await;
    let id = started(&engine, "O-6", "10.00").await;
    let before = engine.get(id).await.unwrap();
    let err = engine
        .send(command(
            id,
            "note",
            json!({"text": "x".repeat(70_000)}),
            rep(),
            "n-1",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "PAYLOAD_TOO_LARGE");
    assert_eq!(
        err.to_string(),
        "field `payload`: 70011 bytes is too large; at most 65536 bytes are accepted"
    );
    let err = engine
        .send(command(id, "note", json!({"text": "x"}), rep(), ""))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("field `request_id`: is required"),
        "{err}"
    );
    let err = engine
        .start(start_order("bad\u{0}key", "1.00", "s-6"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `business_key`: must not contain control characters"
    );
    assert_untouched(&engine, &before).await;
}

#[tokio::test]
async fn a_retried_request_is_applied_once_and_returns_the_original_result() {
    let engine = memory_engine().await;
    let id = started(&engine, "O-7", "10.00").await;
    let first = engine
        .send(command(
            id,
            "confirm",
            json!({"note": "a"}),
            rep(),
            "confirm-7",
        ))
        .await
        .unwrap();
    let again = engine
        .send(command(
            id,
            "confirm",
            json!({"note": "a"}),
            rep(),
            "confirm-7",
        ))
        .await
        .unwrap();
    assert_eq!(first, again, "the same response twice");
    assert_eq!(engine.get(id).await.unwrap().version, 2, "one transition");
    assert_eq!(
        engine.children(id, 0, None).await.unwrap().items.len(),
        1,
        "one linked start"
    );
    assert_eq!(
        engine.store().counter("order_number", "2026").unwrap(),
        1,
        "one number drawn"
    );

    let err = engine
        .send(command(
            id,
            "confirm",
            json!({"note": "b"}),
            rep(),
            "confirm-7",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "REQUEST_ID_REUSED");
    assert_eq!(
        err.to_string(),
        format!("request id `confirm-7` was already used for `confirm` on instance:{id} with another payload; a different request needs a new request id")
    );
    // Request ids are global: the same id on another instance is refused too.
    let other = started(&engine, "O-8", "10.00").await;
    let err = engine
        .send(command(
            other,
            "confirm",
            json!({"note": "a"}),
            rep(),
            "confirm-7",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "REQUEST_ID_REUSED");
    // A retried start returns the same instance.
    let a = engine
        .start(start_order("O-9", "1.00", "start-9"))
        .await
        .unwrap();
    let b = engine
        .start(start_order("O-9", "1.00", "start-9"))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(
        engine
            .list(ListRequest::new().definition("order").business_key("O-9"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn concurrent_retries_of_one_request_apply_once() {
    let engine = memory_engine().await;
    let id = started(&engine, "O-10", "10.00").await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .send(command(
                    id,
                    "note",
                    json!({"text": "same"}),
                    rep(),
                    "note-10",
                ))
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(engine.get(id).await.unwrap().data["notes"], 1);
}

#[tokio::test]
async fn request_ids_expire_after_the_retention() {
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    let engine = engine_with_clock(clock.clone()).await;
    let id = started(&engine, "O-11", "10.00").await;
    engine
        .send(command(id, "note", json!({"text": "a"}), rep(), "n-11"))
        .await
        .unwrap();
    clock.advance(Duration::days(7) - Duration::seconds(1));
    engine
        .send(command(id, "note", json!({"text": "a"}), rep(), "n-11"))
        .await
        .unwrap();
    assert_eq!(
        engine.get(id).await.unwrap().data["notes"],
        1,
        "still remembered just before 7 days"
    );
    clock.advance(Duration::seconds(1));
    assert!(engine.purge_expired_requests().await.unwrap() >= 1);
    assert!(engine.store().request("n-11").unwrap().is_none(), "purged");
    engine
        .send(command(id, "note", json!({"text": "a"}), rep(), "n-11"))
        .await
        .unwrap();
    assert_eq!(
        engine.get(id).await.unwrap().data["notes"],
        2,
        "after 7 days the id is new again"
    );
}

#[tokio::test]
async fn two_writers_on_one_instance_cannot_both_win() {
    let engine = memory_engine().await;
    let id = started(&engine, "O-12", "10.00").await;
    // Both read version 1 and pin it; exactly one commits.
    let a = command(id, "note", json!({"text": "a"}), rep(), "w-a");
    let b = command(id, "note", json!({"text": "b"}), rep(), "w-b");
    let (ra, rb) = tokio::join!(
        engine.send(a.expected_version(Some(1))),
        engine.send(b.expected_version(Some(1)))
    );
    let (won, lost) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("exactly one must win: {other:?}"),
    };
    assert_eq!(won.version, 2);
    assert_eq!(lost.code(), "VERSION_MISMATCH");
    assert_eq!(
        lost.to_string(),
        format!("instance {id} is at version 2, not the expected version 1")
    );
    assert_eq!(engine.get(id).await.unwrap().data["notes"], 1);

    // Without expected_version, concurrent commands are re-evaluated and all apply.
    let mut tasks = Vec::new();
    for i in 0..32 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .send(command(
                    id,
                    "note",
                    json!({"text": i.to_string()}),
                    rep(),
                    &format!("many-{i}"),
                ))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let now = engine.get(id).await.unwrap();
    assert_eq!(now.data["notes"], 33, "no lost update");
    assert_eq!(now.version, 34);
}

#[tokio::test]
async fn a_linked_update_on_a_changed_parent_is_re_evaluated_not_lost() {
    let engine = memory_engine().await;
    let order = started(&engine, "O-13", "10.00").await;
    let out = engine
        .send(command(order, "confirm", json!({}), rep(), "c-13"))
        .await
        .unwrap();
    let shipment = out.started[0];
    // Race many notes on the order against the delivery that updates it.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .send(command(
                    order,
                    "note",
                    json!({"text": "n"}),
                    rep(),
                    &format!("race-{i}"),
                ))
                .await
                .unwrap();
        }));
    }
    let logistics = Actor::new("wh", &["logistics"]);
    engine
        .send(command(shipment, "deliver", json!({}), logistics, "d-13"))
        .await
        .unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let now = engine.get(order).await.unwrap();
    assert_eq!(now.data["delivered"], true);
    assert_eq!(now.data["notes"], 16);
    assert_eq!(now.version, 2 + 16 + 1);
}

#[tokio::test]
async fn counters_are_gap_free_and_respect_limits() {
    let engine = memory_engine().await;
    let mut numbers = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let id = engine
                .start(start_order(&format!("C-{i}"), "5.00", &format!("cs-{i}")))
                .await
                .unwrap()
                .instance;
            engine
                .send(command(id, "confirm", json!({}), rep(), &format!("cc-{i}")))
                .await
                .unwrap();
            engine.get(id).await.unwrap().data["number"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    for t in tasks {
        numbers.push(t.await.unwrap());
    }
    numbers.sort();
    let expected: Vec<String> = (1..=20).map(|n| format!("SO-2026-{n:06}")).collect();
    assert_eq!(numbers, expected);

    // A limit refuses the draw and the whole command.
    let mut d = deciders();
    d.register("order.confirm", |_: &DecisionContext<'_>| {
        Ok(
            Decision::goto("confirmed", "limited").with_effect(Effect::DrawCounter {
                counter: "order_number".into(),
                key: "coupon-X".into(),
                limit: Some(1),
                assign: None,
            }),
        )
    });
    let limited = Engine::open(EngineConfig::in_memory(), definitions(&d), d)
        .await
        .unwrap();
    let a = limited
        .start(start_order("L-1", "1.00", "l-1"))
        .await
        .unwrap()
        .instance;
    let b = limited
        .start(start_order("L-2", "1.00", "l-2"))
        .await
        .unwrap()
        .instance;
    limited
        .send(command(a, "confirm", json!({}), rep(), "lc-1"))
        .await
        .unwrap();
    let before = limited.get(b).await.unwrap();
    let err = limited
        .send(command(b, "confirm", json!({}), rep(), "lc-2"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "counter `order_number` key `coupon-X` has reached its limit of 1"
    );
    assert_eq!(limited.get(b).await.unwrap(), before);
    assert!(
        limited.store().request("lc-2").unwrap().is_none(),
        "refusals are not recorded"
    );
}

#[tokio::test]
async fn a_counter_use_may_be_given_back_only_by_a_command_declaring_the_counter() {
    let mut d = deciders();
    for name in ["order.note", "order.confirm"] {
        d.register(name, |ctx: &DecisionContext<'_>| {
            let to = if ctx.command.name == "confirm" {
                "confirmed"
            } else {
                "created"
            };
            Ok(
                Decision::goto(to, "given back").with_effect(Effect::ReturnCounter {
                    counter: "order_number".into(),
                    key: "coupon-X".into(),
                }),
            )
        });
    }
    let engine = Engine::open(EngineConfig::in_memory(), definitions(&d), d)
        .await
        .unwrap();
    let id = started(&engine, "O-GB", "1.00").await;
    let err = engine
        .send(command(id, "note", json!({"text": "x"}), rep(), "gb-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "DECISION_INVALID");
    assert!(
        err.to_string().contains(
            "it gives back to counter `order_number`, but command `note` may only use: (nothing)"
        ),
        "{err}"
    );
    let out = engine
        .send(command(id, "confirm", json!({}), rep(), "gb-2"))
        .await
        .unwrap();
    assert_eq!(out.counters[0].value, 0, "never below zero");
}

#[tokio::test]
async fn a_decider_reads_only_the_counters_its_command_declares() {
    let mut d = deciders();
    d.register("order.note", |ctx: &DecisionContext<'_>| {
        let value = ctx
            .counters
            .read("order_number", "2026")
            .map_err(DecideError::new)?;
        Ok(Decision::goto(
            ctx.instance.state.clone(),
            format!("read {value}"),
        ))
    });
    d.register("order.confirm", |ctx: &DecisionContext<'_>| {
        let value = ctx
            .counters
            .read("order_number", "2026")
            .map_err(DecideError::new)?;
        Ok(Decision::goto("confirmed", format!("read {value}")))
    });
    let engine = Engine::open(EngineConfig::in_memory(), definitions(&d), d)
        .await
        .unwrap();
    let id = started(&engine, "O-RD", "1.00").await;
    let err = engine
        .send(command(id, "note", json!({"text": "x"}), rep(), "rd-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "DECISION_FAILED");
    assert!(
        err.to_string().contains(
            "counter `order_number` may not be read here; the command declares: (nothing)"
        ),
        "{err}"
    );
    let out = engine
        .send(command(id, "confirm", json!({}), rep(), "rd-2"))
        .await
        .unwrap();
    assert_eq!(out.reason, "read 0");
}

#[tokio::test]
async fn invalid_decisions_are_refused_naming_the_decider() {
    let mut d = deciders();
    d.register("order.note", |_: &DecisionContext<'_>| {
        Ok(Decision::goto("closed", "jump"))
    });
    d.register("order.confirm", |_: &DecisionContext<'_>| {
        Ok(
            Decision::goto("confirmed", "x").with_effect(Effect::StartLinked {
                definition: "order".into(),
                business_key: "k".into(),
                data: json!({}),
                state: None,
            }),
        )
    });
    let engine = Engine::open(EngineConfig::in_memory(), definitions(&d), d)
        .await
        .unwrap();
    let id = started(&engine, "O-14", "1.00").await;
    let before = engine.get(id).await.unwrap();
    let err = engine
        .send(command(id, "note", json!({"text": "x"}), rep(), "i-1"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "decider `order.note` returned an invalid decision for command `note`: it chose state `closed`, but command `note` may only lead to: created, credit_hold, confirmed, shipped"
    );
    let err = engine
        .send(command(id, "confirm", json!({}), rep(), "i-2"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "decider `order.confirm` returned an invalid decision for command `confirm`: it starts a `order`, but command `confirm` may only start: shipment"
    );
    assert_untouched(&engine, &before).await;

    let mut d = deciders();
    d.register("order.note", |_: &DecisionContext<'_>| {
        Err(DecideError::new("pricing.rhai:3:7: division by zero"))
    });
    let engine = Engine::open(EngineConfig::in_memory(), definitions(&d), d)
        .await
        .unwrap();
    let id = started(&engine, "O-15", "1.00").await;
    let err = engine
        .send(command(id, "note", json!({"text": "x"}), rep(), "i-3"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "decider `order.note` failed on command `note`: pricing.rhai:3:7: division by zero"
    );
}

#[tokio::test]
async fn cancel_and_completion_end_an_instance() {
    let engine = memory_engine().await;
    let id = started(&engine, "O-16", "1.00").await;
    let admin = Actor::new("ops", &["admin"]);
    let cancel = CancelRequest::new(id, admin.clone(), "x-16").reason("duplicate order");
    let out = engine.cancel(cancel.clone()).await.unwrap();
    assert_eq!(out.status, InstanceStatus::Cancelled);
    assert_eq!(out.state, "created");
    assert_eq!(engine.cancel(cancel).await.unwrap(), out, "idempotent");
    let err = engine
        .send(command(id, "note", json!({"text": "x"}), rep(), "x-17"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("instance {id} is cancelled (state `created`); it accepts no more commands")
    );
    let h = engine.history(id, 1, 0).await.unwrap();
    assert_eq!(h[0].kind, ChangeKind::Cancelled);
    assert_eq!(h[0].actor, admin);
    assert_eq!(h[0].reason, "duplicate order");

    let id = started(&engine, "O-17", "1.00").await;
    engine
        .send(command(id, "confirm", json!({}), rep(), "c-17"))
        .await
        .unwrap();
    engine
        .send(command(
            id,
            "ship",
            json!({"carrier": "ups", "packages": 2}),
            Actor::new("wh", &["logistics"]),
            "s-17",
        ))
        .await
        .unwrap();
    let out = engine
        .send(command(
            id,
            "close",
            json!({}),
            Actor::new("fin", &["finance"]),
            "f-17",
        ))
        .await
        .unwrap();
    assert_eq!(out.status, InstanceStatus::Completed);
    let data = engine.get(id).await.unwrap().data;
    assert_eq!(data["carrier"], "ups", "merge_payload merged the payload");
}

#[tokio::test]
async fn lists_filter_by_definition_state_and_business_key_with_pages() {
    let engine = memory_engine().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(started(&engine, if i % 2 == 0 { "EVEN" } else { "ODD" }, "1.00").await);
        // business keys repeat; distinct request ids
    }
    // `started` derives the request id from the key, so the retried starts above replayed:
    // only one EVEN and one ODD exist. Start distinct ones.
    ids.dedup();
    let mut all = Vec::new();
    for i in 0..7 {
        let key = if i % 2 == 0 { "EVEN" } else { "ODD" };
        all.push(
            engine
                .start(start_order(key, "1.00", &format!("ls-{i}")))
                .await
                .unwrap()
                .instance,
        );
    }
    engine
        .send(command(all[0], "confirm", json!({}), rep(), "lc-0"))
        .await
        .unwrap();

    let page = |state: Option<&str>, key: Option<&str>, size: usize, token: Option<String>| {
        let mut r = ListRequest::new().definition("order").page_size(size);
        r.state = state.map(Into::into);
        r.business_key = key.map(Into::into);
        r.page_token = token;
        r
    };
    let first = engine.list(page(None, None, 4, None)).await.unwrap();
    assert_eq!(first.items.len(), 4);
    let second = engine
        .list(page(None, None, 4, first.next_page_token.clone()))
        .await
        .unwrap();
    let third = engine
        .list(page(None, None, 4, second.next_page_token.clone()))
        .await
        .unwrap();
    let listed: Vec<InstanceId> = first
        .items
        .iter()
        .chain(&second.items)
        .chain(&third.items)
        .map(|i| i.id)
        .collect();
    assert_eq!(listed.len(), 9, "2 from the first loop + 7");
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "ordered by id, no repeats"
    );
    assert!(
        third.next_page_token.is_none()
            || engine
                .list(page(None, None, 4, third.next_page_token))
                .await
                .unwrap()
                .items
                .is_empty()
    );

    let confirmed = engine
        .list(page(Some("confirmed"), None, 0, None))
        .await
        .unwrap();
    assert_eq!(
        confirmed.items.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![all[0]]
    );
    let even = engine
        .list(page(None, Some("EVEN"), 0, None))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 5);
    let even_created = engine
        .list(page(Some("created"), Some("EVEN"), 2, None))
        .await
        .unwrap();
    assert_eq!(even_created.items.len(), 2);
    let rest = engine
        .list(page(
            Some("created"),
            Some("EVEN"),
            2,
            even_created.next_page_token,
        ))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 2);
    assert!(rest
        .items
        .iter()
        .all(|i| i.state == "created" && i.business_key == "EVEN"));
    let shipments = engine
        .list(ListRequest::new().definition("shipment"))
        .await
        .unwrap();
    assert_eq!(shipments.items.len(), 1);

    // Above the maximum (1,000) a page size is lowered to it, not refused (AIP-158).
    let all = engine.list(page(None, None, 5000, None)).await.unwrap();
    assert_eq!(
        all.items.len(),
        9,
        "every instance (eight orders, a shipment), on one page"
    );
    assert!(all.next_page_token.is_none());
    let err = engine
        .list(page(None, None, 1, Some("nope".into())))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `page_token`: `nope` is not a page token returned by a previous page"
    );
    let err = engine
        .list(ListRequest::new().state("created"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `state`: filtering by state or business key needs `definition` too"
    );
}

#[tokio::test]
async fn instances_stay_pinned_to_their_definition_version() {
    let d = deciders();
    let v2 = common::ORDER.replace("version = 1", "version = 2").replace(
        "[commands.close]",
        "[commands.archive]\nfrom = [\"shipped\"]\nto = [\"closed\"]\nroles = [\"finance\"]\n\n[commands.close]",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut store = SledConfig::new(dir.path());
    store.durability = Durability::Flush;
    let engine = Engine::open(
        EngineConfig::new(StoreConfig::Sled(store.clone())),
        definitions(&d),
        d.clone(),
    )
    .await
    .unwrap();
    let old = started(&engine, "P-1", "1.00").await;
    engine.shutdown().await;
    drop(engine);

    let both = DefinitionSet::from_sources(
        &[
            ("order.toml".into(), common::ORDER.into()),
            ("order-v2.toml".into(), v2),
            ("shipment.toml".into(), common::SHIPMENT.into()),
        ],
        &d,
    )
    .unwrap();
    let engine = Engine::open(EngineConfig::new(StoreConfig::Sled(store)), both, d)
        .await
        .unwrap();
    let new = started(&engine, "P-2", "1.00").await;
    assert_eq!(
        engine.get(old).await.unwrap().definition,
        DefinitionRef {
            name: "order".into(),
            version: 1
        }
    );
    assert_eq!(
        engine.get(new).await.unwrap().definition,
        DefinitionRef {
            name: "order".into(),
            version: 2
        }
    );
    let err = engine
        .send(command(old, "archive", json!({}), rep(), "a-1"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        "UNKNOWN_COMMAND",
        "v1 instances keep v1's commands"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn shutdown_refuses_new_writes() {
    let engine = memory_engine().await;
    let id = started(&engine, "O-18", "1.00").await;
    engine.shutdown().await;
    let err = engine
        .send(command(id, "note", json!({"text": "late"}), rep(), "late"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "SHUTTING_DOWN");
    assert_eq!(engine.get(id).await.unwrap().version, 1);
}

#[tokio::test]
async fn two_engines_on_one_store_re_evaluate_on_conflict() {
    // Two engines sharing a store stand in for two processes on a shared database: their
    // in-process locks do not see each other, so only the store's version check and the
    // engine's re-evaluation keep updates from being lost.
    let store: Arc<dyn switchyard_core::store::Store> =
        Arc::new(switchyard_core::store::MemoryStore::new());
    let d = deciders();
    // Generous retries: on a loaded 2-core machine one engine can lose many rounds in a row;
    // what is tested is that losing means re-evaluating, not losing an update.
    let config = || {
        let mut c = EngineConfig::in_memory();
        c.conflict_retries_max = 64;
        c
    };
    let a = Engine::with_store(store.clone(), config(), definitions(&d), d.clone()).unwrap();
    let b = Engine::with_store(store.clone(), config(), definitions(&d), d).unwrap();
    let id = a
        .start(start_order("S-1", "1.00", "shared-start"))
        .await
        .unwrap()
        .instance;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let engine = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            engine
                .send(command(
                    id,
                    "note",
                    json!({"text": "x"}),
                    rep(),
                    &format!("shared-{i}"),
                ))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let now = a.get(id).await.unwrap();
    assert_eq!(now.data["notes"], 24, "no lost update across engines");
    assert_eq!(now.version, 25);
}

#[test]
fn the_public_api_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Engine>();
    check::<EngineConfig>();
    check::<DefinitionSet>();
    check::<DeciderRegistry>();
    check::<CommandError>();
    check::<OpenError>();
    check::<Instance>();
    check::<switchyard_core::store::SledStore>();
    check::<switchyard_core::store::MemoryStore>();
    check::<Arc<dyn switchyard_core::store::Store>>();
    check::<Arc<dyn Decider>>();
}

#[tokio::test]
async fn an_fsync_engine_syncs_every_batch_it_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let engine = sled_engine(dir.path(), Durability::Fsync).await;
    let id = started(&engine, "F-1", "1.00").await;
    for i in 0..5 {
        engine
            .send(command(
                id,
                "note",
                json!({"text": "x"}),
                rep(),
                &format!("fs-{i}"),
            ))
            .await
            .unwrap();
    }
    let stats = engine.store().stats();
    assert_eq!(stats.commits, 6);
    assert!(
        stats.fsyncs >= stats.batches && stats.batches >= 1,
        "{stats:?}"
    );
    engine.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let engine = sled_engine(dir.path(), Durability::Flush).await;
    started(&engine, "F-2", "1.00").await;
    assert_eq!(engine.store().stats().fsyncs, 0);
    assert!(engine.store().stats().flushes >= 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_shut_down_engine_releases_its_store_at_once() {
    // Background pollers running flat out must not keep the sled store open after shutdown.
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let d = deciders();
        let mut store = SledConfig::new(dir.path());
        store.durability = Durability::Flush;
        let mut config = EngineConfig::new(StoreConfig::Sled(store));
        config.timer_poll_interval = std::time::Duration::from_millis(1);
        config.purge_interval = std::time::Duration::from_millis(1);
        let engine = Engine::open(config, definitions(&d), d)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        started(&engine, &format!("R-{round}"), "1.00").await;
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        engine.shutdown().await;
    }
}

#[tokio::test]
async fn listing_without_a_filter_pages_through_every_instance_in_creation_order() {
    let engine = memory_engine().await;
    let mut all = Vec::new();
    for i in 0..7 {
        all.push(started(&engine, &format!("U-{i}"), "1.00").await);
    }
    let mut listed = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let mut request = ListRequest::new().page_size(3);
        request.page_token = token.take();
        let page = engine.list(request).await.unwrap();
        assert!(page.items.len() <= 3);
        listed.extend(page.items.iter().map(|i| i.id));
        pages += 1;
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(listed, all);
    assert_eq!(pages, 3);
    // A page that holds exactly what is left is the last one, filtered or not.
    for request in [
        ListRequest::new().page_size(7),
        ListRequest::new().definition("order").page_size(7),
        ListRequest::new()
            .definition("order")
            .state("created")
            .page_size(7),
    ] {
        let page = engine.list(request).await.unwrap();
        assert_eq!(page.items.len(), 7);
        assert!(page.next_page_token.is_none(), "no empty page after it");
    }
    engine.shutdown().await;
}

/// The common deciders, with `shipment.deliver` updating whichever instance `target` holds.
fn deciders_updating(target: Arc<std::sync::Mutex<Option<InstanceId>>>) -> DeciderRegistry {
    let mut d = deciders();
    d.register("shipment.deliver", move |_: &DecisionContext<'_>| {
        let instance = target.lock().unwrap().expect("a target is set");
        Ok(
            Decision::goto("delivered", "delivered").with_effect(Effect::UpdateLinked {
                instance,
                expected_version: None,
                changes: json!({ "delivered": true }),
                reason: "shipment delivered".into(),
            }),
        )
    });
    d
}

#[tokio::test]
async fn a_decider_may_update_only_its_parent_or_children_not_an_unrelated_instance() {
    let target = Arc::new(std::sync::Mutex::new(None));
    let d = deciders_updating(target.clone());
    let engine = Engine::open(EngineConfig::in_memory(), definitions(&d), d)
        .await
        .unwrap();
    let mine = started(&engine, "M-1", "10.00").await;
    let other = started(&engine, "M-2", "10.00").await;
    let shipment = engine
        .send(command(mine, "confirm", json!({}), rep(), "c-m1"))
        .await
        .unwrap()
        .started[0];
    let logistics = Actor::new("wh", &["logistics"]);
    let (other_before, shipment_before) = (
        engine.get(other).await.unwrap(),
        engine.get(shipment).await.unwrap(),
    );
    *target.lock().unwrap() = Some(other);
    let refused = engine
        .send(command(
            shipment,
            "deliver",
            json!({}),
            logistics.clone(),
            "d-1",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "DECISION_INVALID", "{refused}");
    assert!(
        refused
            .to_string()
            .contains("which is neither the parent nor a child"),
        "{refused}"
    );
    assert_untouched(&engine, &other_before).await;
    assert_untouched(&engine, &shipment_before).await;

    *target.lock().unwrap() = Some(mine);
    engine
        .send(command(shipment, "deliver", json!({}), logistics, "d-2"))
        .await
        .unwrap();
    assert_eq!(engine.get(mine).await.unwrap().data["delivered"], true);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_history_entry_keeps_the_deciders_changes_and_the_counter_it_assigned() {
    let mut d = deciders();
    d.register("order.confirm", |_: &DecisionContext<'_>| {
        Ok(Decision::goto("confirmed", "confirmed")
            .with_changes(json!({ "priority": "high" }))
            .with_effect(Effect::DrawCounter {
                counter: "order_number".into(),
                key: "2026".into(),
                limit: None,
                assign: Some(CounterAssign {
                    field: "number".into(),
                    prefix: "SO-".into(),
                    width: 3,
                }),
            }))
    });
    let engine = Engine::open(EngineConfig::in_memory(), definitions(&d), d)
        .await
        .unwrap();
    let id = started(&engine, "H-1", "10.00").await;
    engine
        .send(command(id, "confirm", json!({}), rep(), "c-h1"))
        .await
        .unwrap();
    let expected = json!({ "priority": "high", "number": "SO-001" });
    let history = engine.history(id, 0, 0).await.unwrap();
    assert_eq!(history[1].changes, expected);
    let data = engine.get(id).await.unwrap().data;
    assert_eq!(
        (&data["priority"], &data["number"]),
        (&expected["priority"], &expected["number"])
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn counter_assignments_need_an_identifier_field_and_a_width_of_at_most_32() {
    let with_assign = |field: &'static str, width: usize| {
        let mut d = deciders();
        d.register("order.confirm", move |_: &DecisionContext<'_>| {
            Ok(
                Decision::goto("confirmed", "numbered").with_effect(Effect::DrawCounter {
                    counter: "order_number".into(),
                    key: "2026".into(),
                    limit: None,
                    assign: Some(CounterAssign {
                        field: field.into(),
                        prefix: "SO-".into(),
                        width,
                    }),
                }),
            )
        });
        d
    };
    for (field, width, refused) in [
        ("number", 33, true),
        ("Not-An-Identifier", 6, true),
        ("number", 32, false),
    ] {
        let d = with_assign(field, width);
        let engine = Engine::open(EngineConfig::in_memory(), definitions(&d), d)
            .await
            .unwrap();
        let id = started(&engine, "O-W", "1.00").await;
        let before = engine.get(id).await.unwrap();
        let out = engine
            .send(command(id, "confirm", json!({}), rep(), "w-1"))
            .await;
        if refused {
            let err = out.unwrap_err();
            assert_eq!(err.code(), "DECISION_INVALID", "{field} {width}: {err}");
            assert!(err.to_string().contains("a width of at most 32"), "{err}");
            assert_untouched(&engine, &before).await;
        } else {
            out.unwrap();
            let number = engine.get(id).await.unwrap().data["number"].clone();
            assert_eq!(number, format!("SO-{:032}", 1), "width 32 is allowed");
        }
    }
}

/// A decider that updates its parent without naming the version it saw is held to the
/// parent it was shown: when the parent changes while it decides (possible only from another
/// engine on the same store — one engine locks the parent for the command), the command is
/// decided again on the new parent, not committed over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_update_without_a_version_is_checked_against_the_parent_the_decider_saw() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;
    let entered = Arc::new(Barrier::new(2));
    let go = Arc::new(Barrier::new(2));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut d = deciders();
    {
        let (entered, go, calls) = (entered.clone(), go.clone(), calls.clone());
        d.register("shipment.deliver", move |ctx: &DecisionContext<'_>| {
            let parent = ctx.parent.expect("an order");
            let notes = parent.data["notes"].as_u64().unwrap_or(0);
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                // The first time: hold the decision while the test changes the order.
                entered.wait();
                go.wait();
            }
            Ok(
                Decision::goto("delivered", "delivered").with_effect(Effect::UpdateLinked {
                    instance: parent.id,
                    expected_version: None,
                    changes: json!({ "notes_at_delivery": notes }),
                    reason: "shipment delivered".into(),
                }),
            )
        });
    }
    let store: Arc<dyn switchyard_core::store::Store> =
        Arc::new(switchyard_core::store::MemoryStore::new());
    let engine = Engine::with_store(
        store.clone(),
        EngineConfig::in_memory(),
        definitions(&d),
        d.clone(),
    )
    .unwrap();
    let other = Engine::with_store(store, EngineConfig::in_memory(), definitions(&d), d).unwrap();
    let order = started(&engine, "O-V", "10.00").await;
    let shipment = engine
        .send(command(order, "confirm", json!({}), rep(), "v-1"))
        .await
        .unwrap()
        .started[0];
    let delivery = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let logistics = Actor::new("wh", &["logistics"]);
            engine
                .send(command(shipment, "deliver", json!({}), logistics, "v-2"))
                .await
        })
    };
    let wait = |b: Arc<Barrier>| tokio::task::spawn_blocking(move || b.wait());
    tokio::time::timeout(std::time::Duration::from_secs(10), wait(entered))
        .await
        .expect("the decider runs")
        .unwrap();
    other
        .send(command(order, "note", json!({"text": "n"}), rep(), "v-3"))
        .await
        .unwrap();
    wait(go).await.unwrap();
    delivery.await.unwrap().unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "decided again on the new order"
    );
    let now = engine.get(order).await.unwrap();
    assert_eq!(now.data["notes"], 1);
    assert_eq!(now.data["notes_at_delivery"], 1, "not the stale 0");
}

#[tokio::test]
async fn a_cancelled_instance_is_not_listed_by_its_business_key_and_state() {
    let engine = memory_engine().await;
    let gone = engine
        .start(start_order("BK-1", "1.00", "bk-1"))
        .await
        .unwrap()
        .instance;
    let kept = engine
        .start(start_order("BK-1", "1.00", "bk-2"))
        .await
        .unwrap()
        .instance;
    let admin = Actor::new("ops", &["admin"]);
    engine
        .cancel(CancelRequest::new(gone, admin, "bk-3"))
        .await
        .unwrap();
    let page = engine
        .list(
            ListRequest::new()
                .definition("order")
                .business_key("BK-1")
                .state("created"),
        )
        .await
        .unwrap();
    let ids: Vec<InstanceId> = page.items.iter().map(|i| i.id).collect();
    assert_eq!(
        ids,
        [kept],
        "the cancelled one keeps its state name but is not listed"
    );
}

#[tokio::test]
async fn business_data_keeps_its_numbers_text_and_key_order_through_commands_the_store_and_the_feed(
) {
    const NOTE: &str = r#"
name = "memo"
version = 1
initial = "open"
[start]
roles = ["sales_rep"]
[start.payload]
extra = { type = "json" }
[states]
open = {}
[commands.amend]
from = ["open"]
to = ["open"]
roles = ["sales_rep"]
decider = "builtin.merge_payload"
payload = { more = { type = "json" } }
"#;
    let dir = tempfile::tempdir().unwrap();
    let open = || async {
        let d = DeciderRegistry::new();
        let defs = DefinitionSet::from_sources(&[("memo.toml".into(), NOTE.into())], &d).unwrap();
        Engine::open(EngineConfig::sled(dir.path()), defs, d)
            .await
            .unwrap()
    };
    let engine = open().await;
    let data = json::from_str(
        r#"{"extra":{"z":1.10,"a":12345678901234567890123,"k":[2.50,{"y":0.1,"b":"x"}]}}"#,
    )
    .unwrap();
    let id = engine
        .start(StartRequest::new("memo", rep(), "memo-1").data(data))
        .await
        .unwrap()
        .instance;
    let payload = json::from_str(r#"{"more":{"q":3.000,"c":1}}"#).unwrap();
    engine
        .send(command(id, "amend", payload, rep(), "memo-2"))
        .await
        .unwrap();
    engine.shutdown().await;
    drop(engine);
    let engine = open().await;
    let expected = r#"{"extra":{"z":1.10,"a":12345678901234567890123,"k":[2.50,{"y":0.1,"b":"x"}]},"more":{"q":3.000,"c":1}}"#;
    let instance = engine.get(id).await.unwrap();
    assert_eq!(serde_json::to_string(&instance.data).unwrap(), expected);
    let events = engine.store().feed(0, 10, usize::MAX).unwrap();
    assert_eq!(
        serde_json::to_string(&events[1].data()["data"]).unwrap(),
        expected
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_start_with_a_chosen_instance_id_makes_that_instance_once() {
    let engine = memory_engine().await;
    let id = InstanceId(uuid::Uuid::from_u128(
        0x0193_0000_0000_7000_8000_0000_0000_0042,
    ));
    let out = engine
        .start(start_order("O-1", "10.00", "import-1").instance_id(id))
        .await
        .unwrap();
    assert_eq!(out.instance, id);
    assert_eq!(engine.get(id).await.unwrap().business_key, "O-1");
    // The same request again: the original answer.
    let again = engine
        .start(start_order("O-1", "10.00", "import-1").instance_id(id))
        .await
        .unwrap();
    assert_eq!(again, out);
    // Another request id (e.g. after the first expired): refused, nothing written.
    let e = engine
        .start(start_order("O-1", "10.00", "import-1b").instance_id(id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "INSTANCE_EXISTS", "{e}");
    // The same request id naming another instance id is another request.
    let other = InstanceId(uuid::Uuid::from_u128(
        0x0193_0000_0000_7000_8000_0000_0000_0043,
    ));
    let e = engine
        .start(start_order("O-1", "10.00", "import-1").instance_id(other))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "REQUEST_ID_REUSED", "{e}");
    let e = engine
        .start(start_order("O-2", "10.00", "nil").instance_id(InstanceId(uuid::Uuid::nil())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "INVALID_INPUT", "{e}");
    // Eight concurrent starts of one new id: one instance, the others refused.
    let shared = InstanceId(uuid::Uuid::from_u128(
        0x0193_0000_0000_7000_8000_0000_0000_0099,
    ));
    let mut tasks = Vec::new();
    for n in 0..8 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .start(start_order("O-9", "10.00", &format!("race-{n}")).instance_id(shared))
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), "INSTANCE_EXISTS", "{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(engine.history(shared, 0, 0).await.unwrap().len(), 1);
}
