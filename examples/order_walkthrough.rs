//! A sales order from lead to cash on the shipped rules (`rules/`), through the embedded
//! engine on a real sled store: a quote accepted starts the order; the credit rule holds it
//! (DOMAIN scenario 3) and a sales rep's release is refused; the hold's SLA timer fires; a
//! credit controller releases it; the inventory adapter (a job worker here) reserves 60 of 100
//! and 40 go on backorder with an alert (scenario 4); confirmation draws `SO-2026-000001` and
//! wins the lead in the same commit; a shipment's carrier booking is a job; delivery, the
//! backorder, one invoice, a partial and a full payment, and `closed`; a return refunded less
//! its restocking fee, and a chargeback due within a day. Then the order's history and the
//! event feed. No Rust decides anything here: every decision is a Rhai rule.
//!
//! Every notification the rule set's `notify` script routes (the approvers, the finance team,
//! the ERP webhook…) is printed as it is delivered, by a console channel standing in for
//! e-mail, SMS, webhooks and the dashboard — in colour on a terminal (unless `NO_COLOR` is set).
//!
//! Run: `cargo run -p switchyard-examples --example order_walkthrough [-- DATA_DIR]`
//! (without DATA_DIR a temporary directory is used and removed afterwards).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use switchyard_core::*;

#[path = "walk.rs"]
mod walk;
use walk::Walk;

/// The inventory, shipping or carrier adapter's side: lease the waiting job and complete it.
async fn job(
    engine: &Engine,
    job_type: &str,
    worker: &str,
    result: Value,
) -> Result<CommandOutcome> {
    let job = engine
        .activate_jobs(ActivateJobs::new(
            job_type,
            worker,
            1,
            std::time::Duration::from_secs(60),
        ))
        .await?
        .pop()
        .with_context(|| format!("a {job_type} job should be waiting"))?;
    println!(
        "  worker {worker:<15} job {job_type} {} ({})",
        job.id, job.payload
    );
    let out = engine.complete_job(job.id, job.lease, result).await?;
    println!(
        "  {:<22} {:<15} → {:<15} {}",
        "", "(completed)", out.state, out.reason
    );
    Ok(out)
}

/// Prints each message as it is delivered: the console stands in for e-mail, SMS and webhooks.
struct Console {
    colour: bool,
}

impl notification::Channel for Console {
    fn send<'a>(&'a self, n: &'a notification::Notification) -> notification::SendFuture<'a> {
        Box::pin(async move {
            let m = &n.message;
            let (on, off) = match (self.colour, m.severity) {
                (false, _) => ("", ""),
                (true, notification::Severity::Critical) => ("\x1b[1;31m", "\x1b[0m"),
                (true, notification::Severity::High) => ("\x1b[33m", "\x1b[0m"),
                (true, notification::Severity::Routine) => ("\x1b[36m", "\x1b[0m"),
            };
            println!(
                "  {on}✉ {:<7} to {:<24} {:<8} {}{off}",
                m.channel,
                m.to,
                format!("{:?}", m.severity).to_lowercase(),
                if m.subject.is_empty() {
                    &m.text
                } else {
                    &m.subject
                }
            );
            Ok(())
        })
    }
}

/// ACME's exposure in EUR as the engine keeps it (the credit rule reads these balances).
async fn exposure(engine: &Engine) -> Result<()> {
    println!(
        "  ACME's exposure kept by the engine: uninvoiced {} EUR, receivable {} EUR",
        engine.balance("uninvoiced", "ACME/EUR").await?,
        engine.balance("receivable", "ACME/EUR").await?
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let rules_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let rules = RuleSet::load(&rules_dir, DeciderRegistry::new(), RuleLimits::default())
        .map_err(|e| anyhow!("the rule set in {} is invalid:\n{e}", rules_dir.display()))?;
    let temp = tempfile::tempdir()?;
    let data_dir: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| temp.path().join("store"));
    let clock = Arc::new(ManualClock::new(
        chrono::DateTime::parse_from_rfc3339("2026-04-01T09:00:00Z")?.to_utc(),
    ));
    let mut config = EngineConfig::new(StoreConfig::Sled(SledConfig::new(&data_dir)));
    config.clock = clock.clone();
    config.background_tasks = false; // timers are fired by hand below, after moving the clock
    let version = rules.version.clone();
    drop(rules);
    let engine = Engine::open_with_rules(
        config,
        &rules_dir,
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .await
    .context("opening the engine")?;
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    let console = Arc::new(Console { colour });
    for channel in ["email", "sms", "webhook", "dashboard"] {
        engine.register_channel(channel, console.clone());
    }
    println!(
        "Rule set {} from {}; store in {}",
        version,
        rules_dir.display(),
        data_dir.display()
    );
    let mut walk = Walk::new(engine.clone());

    println!("\n1. A qualified lead's quote: 100 seal kits and 10 pumps for ACME, approved, sent and accepted");
    let lead = engine
        .start(
            StartRequest::new(
                "lead",
                Actor::new("ana", &["sales_rep"]),
                format!("{}-lead", walk.run),
            )
            .business_key("L-2026-042")
            .data(json!({ "company": "ACME GmbH" })),
        )
        .await?
        .instance;
    walk.send(
        lead,
        "mia:sales_manager",
        "assign",
        json!({ "owner": "ana" }),
    )
    .await?;
    walk.send(lead, "ana:sales_rep", "qualify", json!({}))
        .await?;
    let quote = walk
        .send(lead, "ana:sales_rep", "create_quote", json!({ "customer": "ACME", "currency": "EUR", "valid_until": "2026-05-15", "lines": [{ "sku": "SEAL-KIT", "quantity": 100 }, { "sku": "PUMP-200", "quantity": 10 }] }))
        .await?
        .started[0];
    walk.send(quote, "ana:sales_rep", "submit", json!({}))
        .await?;
    walk.send(quote, "fin:finance", "approve", json!({}))
        .await?;
    walk.send(quote, "ana:sales_rep", "send", json!({})).await?;
    let order = walk
        .send(quote, "ana:sales_rep", "accept", json!({}))
        .await?
        .started[0];

    println!(
        "\n2. The order is submitted: the credit rule holds it; a sales rep may not release it"
    );
    walk.send(order, "ana:sales_rep", "submit", json!({}))
        .await?;
    if let Err(e) = walk
        .send(
            order,
            "ana:sales_rep",
            "release",
            json!({ "note": "urgent" }),
        )
        .await
    {
        println!("  refused: {e}");
    }
    clock.advance(chrono::Duration::hours(48));
    engine.fire_due_timers().await?;
    let escalation = engine.history(order, 2, 1).await?.remove(0);
    println!(
        "  {:<22} {:<15} → {:<15} {}",
        escalation.actor.id,
        escalation.command.unwrap_or_default(),
        escalation.to_state,
        escalation.reason
    );
    walk.send(
        order,
        "cleo:credit_controller",
        "release",
        json!({ "note": "prepayment of 5,000 received" }),
    )
    .await?;

    println!("\n3. The inventory adapter reserves 60 of 100 seal kits: 40 backordered, the order confirmed");
    job(&engine, "reserve_stock", "inventory", json!({ "lines": [{ "sku": "SEAL-KIT", "reserved": 60 }, { "sku": "PUMP-200", "reserved": 10 }] })).await?;
    let data = engine.get(order).await?.data;
    println!(
        "  order number {}, alerts {}; the lead is {}",
        data["number"],
        data["alerts"],
        engine.get(lead).await?.state
    );
    exposure(&engine).await?;

    println!(
        "\n4. A shipment of what is reserved; the carrier booking is a job; delivery reports back"
    );
    let first = walk
        .send(order, "wh:logistics", "ship", json!({}))
        .await?
        .started[0];
    walk.send(first, "wh:logistics", "book", json!({})).await?;
    job(
        &engine,
        "book_carrier",
        "carrier-gateway",
        json!({ "carrier": "dhl", "tracking": "JD0146" }),
    )
    .await?;
    walk.send(
        first,
        "wh:logistics",
        "deliver",
        json!({ "delivered_on": "2026-04-04" }),
    )
    .await?;

    println!("\n5. The backorder arrives and ships");
    walk.send(
        order,
        "wh:logistics",
        "stock_arrived",
        json!({ "lines": [{ "sku": "SEAL-KIT", "quantity": 40 }] }),
    )
    .await?;
    let second = walk
        .send(order, "wh:logistics", "ship", json!({}))
        .await?
        .started[0];
    walk.send(second, "wh:logistics", "book", json!({})).await?;
    job(
        &engine,
        "book_carrier",
        "carrier-gateway",
        json!({ "carrier": "ups", "tracking": "1Z9001" }),
    )
    .await?;
    walk.send(
        second,
        "wh:logistics",
        "deliver",
        json!({ "delivered_on": "2026-04-10" }),
    )
    .await?;

    println!("\n6. Invoiced (numbered in the same commit), paid in two parts, closed");
    walk.send(order, "fin:finance", "invoice", json!({}))
        .await?;
    let invoice = engine.get(order).await?.data["invoices"][0].clone();
    println!(
        "  invoice {} of {} {} due {}",
        invoice["number"], invoice["total"], invoice["currency"], invoice["due"]
    );
    let total: rust_decimal::Decimal = invoice["total"].as_str().context("total")?.parse()?;
    let part = rust_decimal::Decimal::new(500_000, 2);
    walk.send(
        order,
        "fin:finance",
        "record_payment",
        json!({ "amount": part.to_string(), "method": "bank_transfer", "reference": "BT-881" }),
    )
    .await?;
    if let Err(e) = walk
        .send(
            order,
            "fin:finance",
            "record_payment",
            json!({ "amount": total.to_string(), "method": "card", "reference": "CH-1" }),
        )
        .await
    {
        println!("  refused: {e}");
    }
    walk.send(
        order,
        "fin:finance",
        "record_payment",
        json!({ "amount": (total - part).to_string(), "method": "card", "reference": "CH-2" }),
    )
    .await?;
    walk.send(order, "fin:finance", "close", json!({})).await?;
    exposure(&engine).await?;

    println!("\n7. A return of 3 seal kits (not wanted): approved within the window, received, 2 restocked and 1 scrapped, refunded");
    clock.set(chrono::DateTime::parse_from_rfc3339("2026-04-20T09:00:00Z")?.to_utc());
    let ret = walk
        .send(
            order,
            "eva:customer_service",
            "request_return",
            json!({ "reason_code": "not_wanted", "requested_on": "2026-04-20", "lines": [{ "sku": "SEAL-KIT", "quantity": 3 }] }),
        )
        .await?
        .started[0];
    walk.send(ret, "eva:customer_service", "review", json!({}))
        .await?;
    walk.send(
        ret,
        "wh:logistics",
        "receive",
        json!({ "received_on": "2026-04-21" }),
    )
    .await?;
    walk.send(
        ret,
        "wh:logistics",
        "inspect",
        json!({ "lines": [{ "sku": "SEAL-KIT", "restock": 2, "scrap": 1 }] }),
    )
    .await?;
    job(&engine, "restock_returned", "inventory", json!({})).await?;
    job(
        &engine,
        "refund_payment",
        "payments",
        json!({ "reference": "re_1" }),
    )
    .await?;

    println!("\n8. The cardholder disputes the payment, evidence due within a day: finance hears at once, by e-mail and SMS");
    walk.send(
        order,
        "fin:finance",
        "open_dispute",
        json!({ "provider": "stripe", "dispute_id": "dp_1", "kind": "chargeback", "reason_code": "product_not_received",
                "amount": "120.00", "evidence_due_by": "2026-04-21T05:00:00Z" }),
    )
    .await?;

    println!("\n9. The order's history: every change with its actor, command and reason");
    for h in engine.history(order, 0, 0).await? {
        println!(
            "  v{:<2} {:<19} {:<15} → {:<15} {}",
            h.version,
            h.actor.id,
            h.command.as_deref().unwrap_or("(start)"),
            h.to_state,
            h.reason
        );
    }
    let line = &engine.get(order).await?.data["lines"][0];
    println!(
        "  line 0: ordered {} shipped {} delivered {} invoiced {} ({} / {})",
        line["quantity"],
        line["shipped"],
        line["delivered"],
        line["invoiced"],
        line["delivery_status"],
        line["billing_status"]
    );

    println!(
        "\n10. The event feed, replayed from offset 0 (only flushed commits are ever delivered)"
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
    engine.shutdown().await;
    Ok(())
}
