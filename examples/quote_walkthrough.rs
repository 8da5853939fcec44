//! The shipped lead-to-cash rules (`rules/`) in action: a lead becomes an opportunity, a quote
//! is priced by `scripts/lib/pricing.rhai` and routed by `scripts/lib/approval.rhai`, an
//! approval SLA timer fires, the approvals come in, and every decision records which rule
//! decided and why. Change `rules/data/*.json` or the scripts and run it again: no Rust
//! change is needed.
//!
//! Run: `cargo run -p switchyard-examples --example quote_walkthrough`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use serde_json::json;
use switchyard_core::*;

#[path = "walk.rs"]
mod walk;
use walk::Walk;

fn actor(spec: &str) -> Actor {
    let (id, role) = spec.split_once(':').expect("id:role");
    Actor::new(id, &[role])
}

#[tokio::main]
async fn main() -> Result<()> {
    let rules_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let rules_dir = rules_dir.canonicalize().unwrap_or(rules_dir);
    let rules = RuleSet::load(&rules_dir, DeciderRegistry::new(), RuleLimits::default())
        .map_err(|e| anyhow!("the rule set in {} is invalid:\n{e}", rules_dir.display()))?;
    println!("Rule set {} from {}", rules.version, rules_dir.display());
    let temp = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let mut config = EngineConfig::new(StoreConfig::Sled(SledConfig::new(
        temp.path().join("store"),
    )));
    config.clock = clock.clone();
    config.timer_poll_interval = std::time::Duration::from_secs(3600); // fired by hand below
    let engine = Engine::open(config, rules.definitions, rules.deciders)
        .await
        .context("opening the engine")?;
    let mut walk = Walk::new(engine.clone());

    println!("\n1. A lead comes in from an event, is assigned and qualified");
    let lead = engine
        .start(
            StartRequest::new(
                "lead",
                actor("ana:sales_rep"),
                format!("lead-{}", InstanceId::new()),
            )
            .business_key("L-2026-017")
            .data(json!({ "company": "Beta Industries", "source": "event" })),
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

    println!("\n2. Two quotes for it: a small one, and one of 12,000.00 net after an 18% discount");
    let valid_until = (clock.now() + chrono::Duration::days(30))
        .date_naive()
        .to_string();
    let small = walk
        .send(lead, "ana:sales_rep", "create_quote", json!({ "customer": "BETA", "currency": "EUR", "valid_until": valid_until, "lines": [{ "sku": "FIXED-4999", "quantity": 1 }] }))
        .await?
        .started[0];
    let big = walk
        .send(lead, "ana:sales_rep", "create_quote", json!({ "customer": "BETA", "currency": "EUR", "discount_pct": "18", "valid_until": valid_until, "lines": [{ "sku": "CONSULT-PKG", "quantity": 1 }] }))
        .await?
        .started[0];
    walk.send(small, "ana:sales_rep", "submit", json!({}))
        .await?;
    walk.send(big, "ana:sales_rep", "submit", json!({})).await?;
    let pricing = &engine.get(big).await?.data["pricing"];
    println!(
        "  priced: gross {} net {} tax {} total {} {} (discount {}%)",
        pricing["gross"],
        pricing["net"],
        pricing["tax"],
        pricing["total"],
        pricing["currency"],
        pricing["discount_pct"]
    );

    println!("\n3. Finance cannot approve before the sales manager; the manager approves");
    if let Err(e) = walk.send(big, "fin:finance", "approve", json!({})).await {
        println!("  refused: {e}");
    }
    walk.send(big, "mia:sales_manager", "approve", json!({}))
        .await?;

    println!("\n4. Finance lets 48 hours pass: the step's SLA timer escalates");
    clock.advance(chrono::Duration::hours(48));
    engine.fire_due_timers().await?;
    let escalation = engine.history(big, 3, 1).await?.remove(0);
    println!(
        "  {:<22} {:<13} → {:<17} {}",
        escalation.actor.id,
        escalation.command.unwrap_or_default(),
        escalation.to_state,
        escalation.reason
    );

    println!("\n5. Finance approves; the quote is sent and accepted");
    walk.send(big, "fin:finance", "approve", json!({})).await?;
    walk.send(big, "ana:sales_rep", "send", json!({})).await?;
    walk.send(big, "ana:sales_rep", "accept", json!({})).await?;

    println!(
        "\n6. Why? Every rule decision records the rule set, script, function, inputs and outputs"
    );
    for h in engine.history(big, 0, 0).await? {
        if let Some(p) = &h.provenance {
            println!(
                "  v{} {:<9} {} {} → {}",
                h.version,
                h.command.as_deref().unwrap_or(""),
                p.rule_set,
                p.decider(),
                h.reason
            );
        }
    }
    println!("\nEdit rules/data/approval.json (e.g. auto_approve_net_below) or rules/data/prices.json and run again.");
    engine.shutdown().await;
    Ok(())
}
