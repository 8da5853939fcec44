//! Walks one sales order through Switchyard's core, end to end, on a real sled store, and
//! prints what happened: a credit hold (DOMAIN scenario 3), a refused release by the wrong
//! role, a 48-hour escalation timer firing, the release by a credit controller, a gap-free
//! order number, a linked shipment whose carrier booking is an external job completed by a
//! worker, delivery reported back to the order, an idempotent retry, the full history and the
//! event feed.
//!
//! Run: `cargo run -p switchyard-examples --example order_walkthrough [-- DATA_DIR]`
//! (without DATA_DIR a temporary directory is used and removed afterwards).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use switchyard_core::*;

fn money(data: &Value, field: &str) -> Result<Decimal, DecideError> {
    data[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| DecideError::new(format!("data.{field} is not a decimal string")))
}

/// Confirming draws the next order number of the year and starts the shipment.
fn confirm(ctx: &DecisionContext<'_>, reason: String) -> Decision {
    let year = ctx.now.format("%Y").to_string();
    Decision::goto("confirmed", reason)
        .with_effect(Effect::DrawCounter {
            counter: "order_number".into(),
            key: year.clone(),
            limit: None,
            assign: Some(CounterAssign { field: "number".into(), prefix: format!("SO-{year}-"), width: 6 }),
        })
        .with_effect(Effect::StartLinked {
            definition: "shipment".into(),
            business_key: ctx.instance.business_key.clone(),
            // The number is assigned in the same commit; the shipment refers to the order key.
            data: json!({ "order_number": ctx.instance.business_key, "lines": ctx.instance.data["lines"] }),
        })
}

fn deciders() -> DeciderRegistry {
    let mut r = DeciderRegistry::new();
    r.register("sales_order.credit_check", |ctx: &DecisionContext<'_>| {
        let data = &ctx.instance.data;
        let mut total = Decimal::ZERO;
        for line in data["lines"].as_array().into_iter().flatten() {
            let quantity = match &line["quantity"] {
                Value::String(s) => s.parse().map_err(|_| DecideError::new("bad quantity"))?,
                v => Decimal::from(v.as_i64().ok_or_else(|| DecideError::new("bad quantity"))?),
            };
            total += quantity * money(line, "unit_price")?;
        }
        let exposure = money(data, "open_balance")? + money(data, "uninvoiced")? + total;
        let limit = money(data, "credit_limit")?;
        if exposure > limit {
            return Ok(Decision::goto(
                "credit_hold",
                format!("exposure {exposure} (open + uninvoiced + order {total}) > limit {limit} → credit hold"),
            )
            .with_changes(json!({ "order_total": total.to_string(), "exposure": exposure.to_string() })));
        }
        Ok(confirm(ctx, format!("exposure {exposure} ≤ limit {limit} → confirmed"))
            .with_changes(json!({ "order_total": total.to_string(), "exposure": exposure.to_string() })))
    });
    r.register("sales_order.release", |ctx: &DecisionContext<'_>| {
        Ok(confirm(
            ctx,
            format!(
                "released by {}: {}",
                ctx.actor.id,
                ctx.payload["note"].as_str().unwrap_or("")
            ),
        ))
    });
    r.register("sales_order.escalate", |_: &DecisionContext<'_>| {
        Ok(Decision::goto(
            "credit_hold",
            "credit hold untouched for 48h → finance director",
        )
        .with_changes(json!({ "escalated_to": "finance_director" })))
    });
    r.register("shipment.book", |ctx: &DecisionContext<'_>| {
        Ok(
            Decision::goto("booking", "carrier booking requested").with_effect(Effect::CreateJob {
                job_type: "book_carrier".into(),
                payload: json!({ "order_number": ctx.instance.data["order_number"], "lines": ctx.instance.data["lines"] }),
            }),
        )
    });
    r.register("shipment.deliver", |ctx: &DecisionContext<'_>| {
        let order = ctx
            .parent
            .ok_or_else(|| DecideError::new("a shipment needs its sales order"))?;
        Ok(Decision::goto("delivered", "carrier confirmed delivery")
            .with_changes(ctx.payload.clone())
            .with_effect(Effect::UpdateLinked {
                instance: order.id,
                expected_version: Some(order.version),
                changes: json!({ "delivered_on": ctx.payload["delivered_on"] }),
                reason: "shipment delivered".into(),
            }))
    });
    r
}

fn actor(id: &str, role: &str) -> Actor {
    Actor::new(id, &[role])
}

fn send(
    instance: InstanceId,
    command: &str,
    payload: Value,
    actor: Actor,
    request_id: &str,
) -> CommandRequest {
    CommandRequest::new(instance, command, actor, request_id).payload(payload)
}

fn show(step: &str, outcome: &CommandOutcome) {
    println!(
        "  {step}: → {} (v{}) — {}",
        outcome.state, outcome.version, outcome.reason
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| temp.path().join("store"));
    let definitions_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("definitions");
    let deciders = deciders();
    let definitions =
        DefinitionSet::load_dir(&definitions_dir, &deciders).map_err(|e| anyhow!("{e}"))?;
    let mut store = SledConfig::new(&data_dir);
    store.durability = Durability::Fsync;
    // A clock the walkthrough can move forward, so a 48-hour timer fires in a moment.
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let mut config = EngineConfig::new(StoreConfig::Sled(store));
    config.clock = clock.clone();
    // The engine polls for due timers every second; the walkthrough fires them itself.
    config.timer_poll_interval = std::time::Duration::from_secs(3600);
    let engine = Engine::open(config, definitions, deciders)
        .await
        .context("opening the engine")?;
    println!(
        "Switchyard core walkthrough — store at {}",
        data_dir.display()
    );
    let run = format!("{}", InstanceId::new()); // request ids unique per run, so DATA_DIR can be reused

    println!("\n1. A sales rep enters an order of 6,000.00 for a customer with limit 50,000.00, open balance 38,000.00 and 7,000.00 uninvoiced");
    let rep = actor("rep-ana", "sales_rep");
    let started = engine
        .start(
            StartRequest::new("sales_order", rep.clone(), format!("{run}-start"))
                .business_key("ACME-PO-4711")
                .data(json!({
                    "customer": "ACME GmbH",
                    "open_balance": "38000.00",
                    "uninvoiced": "7000.00",
                    "credit_limit": "50000.00",
                    "lines": [
                        { "sku": "PUMP-200", "quantity": 4, "unit_price": "1250.00" },
                        { "sku": "SEAL-KIT", "quantity": "10", "unit_price": "100.00" }
                    ]
                })),
        )
        .await?;
    let order = started.instance;
    show("started", &started);
    let submitted = engine
        .send(send(
            order,
            "submit",
            json!({}),
            rep.clone(),
            &format!("{run}-submit"),
        ))
        .await?;
    show("submit", &submitted);

    println!("\n2. The sales rep tries to release the hold; the engine refuses and writes nothing");
    let refused = engine
        .send(send(
            order,
            "release",
            json!({"note": "customer is good for it"}),
            rep.clone(),
            &format!("{run}-release-rep"),
        ))
        .await
        .expect_err("a sales rep may not release a credit hold");
    println!("  refused [{}]: {refused}", refused.code());
    let bad = engine
        .start(StartRequest::new("sales_order", rep.clone(), format!("{run}-bad")).business_key("BAD").data(json!({ "customer": "X", "open_balance": 0.1, "uninvoiced": "0", "credit_limit": "0", "lines": [] })))
        .await
        .expect_err("money as a JSON number is refused");
    println!("  refused [{}]: {bad}", bad.code());

    println!(
        "\n   Two days pass without a decision: the hold's 48h timer fires, as the system actor"
    );
    clock.advance(chrono::Duration::hours(48));
    let fired = engine.fire_due_timers().await?;
    let escalation = engine.history(order, 2, 1).await?.remove(0);
    println!(
        "  {fired} timer fired: `{}` by {} — {}",
        escalation.command.as_deref().unwrap_or("?"),
        escalation.actor.id,
        escalation.reason
    );

    println!("\n3. A credit controller releases it: the order is numbered and a shipment starts, in one commit");
    let controller = actor("cc-ben", "credit_controller");
    let release = send(
        order,
        "release",
        json!({"note": "payment plan agreed"}),
        controller,
        &format!("{run}-release"),
    );
    let released = engine.send(release.clone()).await?;
    show("release", &released);
    let retried = engine.send(release).await?;
    println!(
        "  the same request retried returns the same result: {}",
        retried == released
    );
    let number = engine.get(order).await?.data["number"].clone();
    let drawn = &released.counters[0];
    println!(
        "  order number {number}, drawn gap-free: counter `{}` key {} → {}",
        drawn.counter, drawn.key, drawn.value
    );
    let shipment = released.started[0];
    let parent = engine
        .get(shipment)
        .await?
        .parent
        .map(|p| p.to_string())
        .unwrap_or_default();
    println!("  linked shipment {shipment}, whose parent is {parent}");

    println!("\n4. Logistics books a carrier: an external job, done by an integration worker");
    let logistics = actor("wh-cem", "logistics");
    let booking = engine
        .send(send(
            shipment,
            "book",
            json!({}),
            logistics.clone(),
            &format!("{run}-book"),
        ))
        .await?;
    show("book", &booking);
    let job = engine
        .activate_jobs(ActivateJobs::new(
            "book_carrier",
            "carrier-gateway",
            1,
            std::time::Duration::from_secs(60),
        ))
        .await?
        .pop()
        .context("the booking job should be available")?;
    println!(
        "  worker `carrier-gateway` activated job {} (its idempotency key at the carrier), lease until {}",
        job.id,
        job.lease_expires_at.format("%H:%M:%S")
    );
    let shipped = engine
        .complete_job(
            job.id,
            job.lease,
            json!({"carrier": "dhl", "tracking": "JD0146"}),
        )
        .await?;
    show("job completed → carrier_booked", &shipped);

    println!("\n5. Logistics confirms delivery; delivery updates the order through the link");
    let delivered = engine
        .send(send(
            shipment,
            "deliver",
            json!({"delivered_on": "2026-04-01"}),
            logistics,
            &format!("{run}-deliver"),
        ))
        .await?;
    show("deliver", &delivered);
    let closed = engine
        .send(send(
            order,
            "mark_delivered",
            json!({}),
            actor("edi", "system"),
            &format!("{run}-order-delivered"),
        ))
        .await?;
    show("order mark_delivered", &closed);

    println!("\n6. The order's history: every change with its actor, command and reason");
    for h in engine.history(order, 0, 0).await? {
        println!(
            "  v{} {} {:<14} {:>12} → {:<12} by {:<13} {}",
            h.version,
            h.at.format("%m-%d %H:%M:%S"),
            h.command.as_deref().unwrap_or(match h.kind {
                ChangeKind::Started { .. } => "(start)",
                ChangeKind::LinkedUpdate { .. } => "(linked)",
                ChangeKind::Cancelled => "(cancel)",
                _ => "?",
            }),
            h.from_state.as_deref().unwrap_or("-"),
            h.to_state,
            h.actor.id,
            h.reason
        );
    }
    let final_order = engine.get(order).await?;
    println!(
        "\nFinal order: state {} ({}), version {}, data {}",
        final_order.state, final_order.status, final_order.version, final_order.data
    );
    println!(
        "\n7. The event feed, replayed from offset 0 (only flushed commits are ever delivered)"
    );
    let mut feed = engine.subscribe(0)?;
    let (_, head) = engine.feed_bounds()?;
    while feed.offset() < head {
        let event = feed.next().await?;
        println!(
            "  #{:<3} {:<34} {}",
            event.offset, event.kind, event.subject
        );
    }
    println!("\nStore: {:?}", engine.store_stats());
    engine.shutdown().await;
    Ok(())
}
