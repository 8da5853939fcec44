//! Shared fixtures: a small order/shipment pair of definitions and their Rust deciders.
#![allow(dead_code)] // each test file uses a different part of the fixtures

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use switchyard_core::*;

pub const ORDER: &str = r#"
name = "order"
version = 1
description = "A test order"
initial = "created"

[start]
roles = ["sales_rep", "system"]
[start.payload]
customer = { type = "string", max_length = 64 }
total = { type = "money", scale = 2, min = "0" }
quantity = { type = "quantity", required = false }

[cancel]
roles = ["admin", "sales_manager"]

[states]
created = {}
credit_hold = {}
confirmed = {}
shipped = {}
closed = { terminal = true }

[commands.confirm]
from = ["created"]
to = ["confirmed", "credit_hold"]
roles = ["sales_rep"]
decider = "order.confirm"
payload = { note = { type = "string", required = false } }
effects = { counters = ["order_number"], start = ["shipment"] }

[commands.release]
from = ["credit_hold"]
to = ["confirmed"]
roles = ["credit_controller"]

[commands.note]
description = "Adds a note; stays in the same state"
from = ["created", "credit_hold", "confirmed", "shipped"]
to = ["created", "credit_hold", "confirmed", "shipped"]
roles = ["sales_rep", "system"]
decider = "order.note"
payload = { text = { type = "string" } }

[commands.ship]
from = ["confirmed"]
to = ["shipped"]
roles = ["logistics"]
decider = "builtin.merge_payload"
payload = { carrier = { type = "string", values = ["dhl", "ups"] }, packages = { type = "integer", min = 1 } }

[commands.close]
from = ["shipped"]
to = ["closed"]
roles = ["finance"]
"#;

pub const SHIPMENT: &str = r#"
name = "shipment"
version = 1
initial = "pending"

[start]
roles = ["system"]
[start.payload]
order_total = { type = "money" }

[states]
pending = {}
delivered = { terminal = true }

[commands.deliver]
from = ["pending"]
to = ["delivered"]
roles = ["logistics"]
decider = "shipment.deliver"
effects = { update = ["order"] }
"#;

pub fn deciders() -> DeciderRegistry {
    let mut r = DeciderRegistry::new();
    r.register("order.confirm", |ctx: &DecisionContext<'_>| {
        let total: Decimal = ctx.instance.data["total"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| DecideError::new("data.total is not a decimal string"))?;
        if total > Decimal::from(10_000) {
            return Ok(Decision::goto(
                "credit_hold",
                format!("total {total} > 10000 → credit hold"),
            ));
        }
        Ok(
            Decision::goto("confirmed", format!("total {total} ≤ 10000 → confirmed"))
                .with_effect(Effect::DrawCounter {
                    counter: "order_number".into(),
                    key: "2026".into(),
                    limit: None,
                    assign: Some(CounterAssign {
                        field: "number".into(),
                        prefix: "SO-2026-".into(),
                        width: 6,
                    }),
                })
                .with_effect(Effect::StartLinked {
                    definition: "shipment".into(),
                    business_key: ctx.instance.business_key.clone(),
                    data: json!({ "order_total": total.to_string() }),
                    state: None,
                }),
        )
    });
    r.register("order.note", |ctx: &DecisionContext<'_>| {
        let notes = ctx.instance.data["notes"].as_u64().unwrap_or(0) + 1;
        Ok(
            Decision::goto(ctx.instance.state.clone(), format!("note {notes}"))
                .with_changes(json!({ "notes": notes, "last_note": ctx.payload["text"] })),
        )
    });
    r.register("shipment.deliver", |ctx: &DecisionContext<'_>| {
        let parent = ctx
            .parent
            .ok_or_else(|| DecideError::new("a shipment needs its order"))?;
        Ok(
            Decision::goto("delivered", "delivered").with_effect(Effect::UpdateLinked {
                instance: parent.id,
                expected_version: Some(parent.version),
                changes: json!({ "delivered": true }),
                reason: "shipment delivered".into(),
            }),
        )
    });
    r
}

pub fn definitions(deciders: &DeciderRegistry) -> DefinitionSet {
    DefinitionSet::from_sources(
        &[
            ("order.toml".into(), ORDER.into()),
            ("shipment.toml".into(), SHIPMENT.into()),
        ],
        deciders,
    )
    .expect("fixture definitions are valid")
}

pub async fn memory_engine() -> Engine {
    let d = deciders();
    Engine::open(EngineConfig::in_memory(), definitions(&d), d)
        .await
        .unwrap()
}

pub async fn sled_engine(path: &std::path::Path, durability: Durability) -> Engine {
    let d = deciders();
    let mut store = SledConfig::new(path);
    store.durability = durability;
    Engine::open(
        EngineConfig::new(StoreConfig::Sled(store)),
        definitions(&d),
        d,
    )
    .await
    .unwrap()
}

pub async fn engine_with_clock(clock: Arc<ManualClock>) -> Engine {
    let d = deciders();
    let mut config = EngineConfig::in_memory();
    config.clock = clock;
    Engine::open(config, definitions(&d), d).await.unwrap()
}

pub fn rep() -> Actor {
    Actor::new("rep-1", &["sales_rep"])
}

pub fn start_order(business_key: &str, total: &str, request_id: &str) -> StartRequest {
    StartRequest::new("order", rep(), request_id)
        .business_key(business_key)
        .data(json!({ "customer": "ACME", "total": total }))
}

pub fn command(
    instance: InstanceId,
    command: &str,
    payload: Value,
    actor: Actor,
    request_id: &str,
) -> CommandRequest {
    CommandRequest::new(instance, command, actor, request_id).payload(payload)
}

/// A private copy of the shipped rule set, with `edits` applied to its files
/// (`(relative path, from, to)`), so a test can change behaviour the way an analyst would.
pub fn rules_copy(edits: &[(&str, &str, &str)]) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let dir = tempfile::tempdir().unwrap();
    copy(&shipped, dir.path());
    for (file, from, to) in edits {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} does not contain {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
    dir
}
