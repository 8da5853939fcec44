//! Analytics load generator: (1) projection throughput — a sled store is filled with a
//! generated lead-to-cash feed (per deal: a lead, its quote submitted and approved, the order
//! started, confirmed with two lines, invoiced and paid — eight events shaped like the
//! engine's), then a projection follows it from offset 0 until it reaches the head
//! (`Analytics::follow`: feed pages read from the store, folded, written in atomic batches);
//! (2) the live projection at the maximum commit rate — 64 submitters commit as fast as they
//! can while the projection follows, and its lag (durable head − projection offset) is
//! sampled.
//!
//! `cargo run --release -p switchyard-benches --bin analytics-load -- [DEALS [SECONDS]]`
//!
//! Everything shares the machine's 2 cores: the load generator, the engine and the projection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use switchyard_analytics::{Analytics, AnalyticsConfig, Scope};
use switchyard_core::feed::EventDraft;
use switchyard_core::store::{Commit, SledStore, Store};
use switchyard_core::*;

const DEFINITION: &str = r#"
name = "quote"
version = 1
initial = "draft"
[start]
roles = ["sales_rep"]
[states]
draft = {}
won = { terminal = true }
[commands.note]
from = ["draft"]
to = ["draft"]
roles = ["sales_rep"]
decider = "builtin.merge_payload"
payload = { net = { type = "money" } }
[commands.win]
from = ["draft"]
to = ["won"]
roles = ["sales_rep"]
"#;

/// An instance event as the engine writes it.
fn event(
    kind: EventType,
    id: InstanceId,
    definition: &str,
    parent: Option<InstanceId>,
    to_state: &str,
    command: Option<&str>,
    data: Value,
) -> EventDraft {
    EventDraft {
        source: "switchyard".into(),
        kind,
        subject: id.to_string(),
        time: chrono::Utc::now(),
        data: json!({
            "instance": id, "definition": { "name": definition, "version": 1 },
            "business_key": format!("{definition}-{id}"), "owner": "ana", "parent": parent,
            "version": 1, "from_state": null, "to_state": to_state, "status": "active",
            "command": command, "actor": { "id": "ana", "roles": ["sales_rep"] },
            "request_id": format!("r-{id}-{to_state}"), "reason": "generated", "changes": {},
            "data": data, "incident": null,
        }),
    }
}

/// The eight events of one deal.
fn deal(n: u64) -> Vec<EventDraft> {
    let (lead, quote, order) = (InstanceId::new(), InstanceId::new(), InstanceId::new());
    let started = EventType::InstanceStarted;
    let moved = EventType::InstanceTransitioned;
    let customer = format!("C-{}", n % 500);
    let pricing = json!({ "currency": "EUR", "net": "1500.00", "tax": "123.75", "total": "1623.75",
        "lines": [{ "sku": format!("SKU-{:03}", n % 40), "quantity": "10", "net": "1000.00", "tax": "82.50" },
                  { "sku": "SEAL-KIT", "quantity": "25", "net": "500.00", "tax": "41.25" }] });
    let lines = json!([{ "sku": format!("SKU-{:03}", n % 40), "backordered": "0" }, { "sku": "SEAL-KIT", "backordered": "0" }]);
    let invoice = json!([{ "currency": "EUR", "total": "1623.75" }]);
    vec![
        event(started, lead, "lead", None, "new", None, json!({})),
        event(
            started,
            quote,
            "quote",
            Some(lead),
            "draft",
            None,
            json!({ "customer": customer }),
        ),
        event(
            moved,
            quote,
            "quote",
            Some(lead),
            "pending_approval",
            Some("submit"),
            json!({ "approval": { "route": [["finance"]] }, "sla_escalate_at": "2099-01-01T00:00:00Z" }),
        ),
        event(
            moved,
            quote,
            "quote",
            Some(lead),
            "approved",
            Some("approve"),
            json!({}),
        ),
        event(
            started,
            order,
            "sales_order",
            Some(quote),
            "created",
            None,
            json!({ "customer": customer }),
        ),
        event(
            moved,
            order,
            "sales_order",
            Some(quote),
            "confirmed",
            Some("confirm"),
            json!({ "customer": customer, "number": format!("SO-{n}"), "pricing": pricing, "lines": lines }),
        ),
        event(
            moved,
            order,
            "sales_order",
            Some(quote),
            "invoiced",
            Some("invoice"),
            json!({ "customer": customer, "number": format!("SO-{n}"), "pricing": pricing, "lines": lines, "invoices": invoice }),
        ),
        event(
            moved,
            order,
            "sales_order",
            Some(quote),
            "paid",
            Some("record_payment"),
            json!({ "customer": customer, "number": format!("SO-{n}"), "pricing": pricing, "lines": lines, "invoices": invoice,
                    "payments": [{ "amount": "1623.75" }] }),
        ),
    ]
}

/// Writes `deals` deals' events, 1,000 commits (one event each) per batch.
fn fill(store: &SledStore, deals: u64) -> Result<u64> {
    let mut events = Vec::new();
    let mut written = 0;
    for n in 0..deals {
        events.extend(deal(n));
        if events.len() >= 1000 || n + 1 == deals {
            let batch: Vec<Commit> = events
                .drain(..)
                .map(|e| Commit {
                    at: e.time,
                    request: None,
                    writes: vec![],
                    history: vec![],
                    counters: vec![],
                    counter_checks: vec![],
                    balances: vec![],
                    balance_checks: vec![],
                    jobs: vec![],
                    events: vec![e],
                })
                .collect();
            written += batch.len() as u64;
            store.commit(&batch)?;
        }
    }
    Ok(written)
}

fn definitions() -> Result<(DefinitionSet, DeciderRegistry)> {
    let d = DeciderRegistry::new();
    let defs = DefinitionSet::from_sources(&[("quote.toml".into(), DEFINITION.into())], &d)
        .map_err(|e| anyhow!("{e}"))?;
    Ok((defs, d))
}

async fn replay(deals: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = SledConfig::new(dir.path().join("store"));
    config.durability = Durability::Flush;
    config.cache_bytes = 1024 * 1024 * 1024;
    let store = SledStore::open(&config)?;
    let started = Instant::now();
    let events = fill(&store, deals)?;
    println!(
        "filled {events} events ({deals} deals) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (defs, d) = definitions()?;
    let engine = Engine::with_store(Arc::new(store), EngineConfig::in_memory(), defs, d)?;
    let analytics = Analytics::open(&dir.path().join("analytics"), AnalyticsConfig::default())?;
    let following = {
        let (a, e) = (analytics.clone(), engine.clone());
        tokio::spawn(async move { a.follow(&e).await })
    };
    let started = Instant::now();
    while analytics.offset() < events {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let today = chrono::Utc::now().date_naive();
    let summary = analytics.summary(&Scope::All, today, today)?;
    assert_eq!(summary.counts.orders, deals, "every order counted once");
    println!(
        "| replay into the projection | {events} events ({deals} deals) | {secs:.2} s | {:.0} events/s |",
        events as f64 / secs
    );
    engine.shutdown().await;
    following.await??;
    Ok(())
}

async fn live(seconds: f64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = SledConfig::new(dir.path().join("store"));
    config.durability = Durability::Flush;
    let (defs, d) = definitions()?;
    let engine = Engine::open(EngineConfig::new(StoreConfig::Sled(config)), defs, d).await?;
    let analytics = Analytics::open(&dir.path().join("analytics"), AnalyticsConfig::default())?;
    let following = {
        let (a, e) = (analytics.clone(), engine.clone());
        tokio::spawn(async move { a.follow(&e).await })
    };
    let rep = Actor::new("bench", &["sales_rep"]);
    let mut instances = Vec::new();
    for s in 0..64 {
        let out = engine
            .start(
                StartRequest::new("quote", rep.clone(), format!("start-{s}"))
                    .business_key(format!("Q-{s}")),
            )
            .await?;
        instances.push(out.instance);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (s, instance) in instances.into_iter().enumerate() {
        let engine = engine.clone();
        let rep = rep.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                engine
                    .send(
                        CommandRequest::new(instance, "note", rep.clone(), format!("s{s}-n{n}"))
                            .payload(json!({ "net": format!("{n}.00") })),
                    )
                    .await
                    .expect("command");
                n += 1;
            }
            n
        }));
    }
    let sampler = {
        let (engine, analytics, stop) = (engine.clone(), analytics.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut max_lag, mut samples, mut total) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let (_, head) = engine.store().feed_bounds().expect("bounds");
                let lag = head.saturating_sub(analytics.offset());
                max_lag = max_lag.max(lag);
                total += lag;
                samples += 1;
            }
            (max_lag, total / samples.max(1))
        })
    };
    let mut commits = 0;
    for t in tasks {
        commits += t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (max_lag, mean_lag) = sampler.await?;
    let (_, head) = engine.store().feed_bounds()?;
    let caught_up = Instant::now();
    while analytics.offset() < head {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "| live projection, 64 submitters | {commits} commits in {elapsed:.1} s = {:.0}/s | lag mean {mean_lag}, max {max_lag} events (sampled every 10 ms) | caught up {:.1} ms after the last commit |",
        commits as f64 / elapsed,
        caught_up.elapsed().as_secs_f64() * 1000.0
    );
    engine.shutdown().await;
    following.await??;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let deals: u64 = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50_000);
    let seconds: f64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "analytics-load: {} cores, tokio with 2 workers; load generator in-process",
        std::thread::available_parallelism()?.get()
    );
    rt.block_on(replay(deals))?;
    rt.block_on(live(seconds))?;
    Ok(())
}
