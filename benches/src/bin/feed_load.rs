//! Feed load generator: (1) replay throughput — events/s delivered to one subscriber reading a
//! sled store's feed from offset 0; (2) a live subscriber at the maximum commit rate — 64
//! submitters commit as fast as they can while one subscriber follows the feed, and the lag
//! (durable head − subscriber offset) is sampled.
//!
//! `cargo run --release -p switchyard-benches --bin feed-load -- [EVENTS [SECONDS]]`
//!
//! Everything shares the machine's 2 cores: the load generator, the engine and the subscriber.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::json;
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

/// Writes `events` feed events shaped like the engine's instance events, 1,000 per batch.
fn fill(store: &SledStore, events: u64) -> Result<()> {
    let now = chrono::Utc::now();
    let instance = InstanceId::new();
    let mut written = 0;
    while written < events {
        let batch: Vec<Commit> = (0..1000.min(events - written))
            .map(|i| Commit {
                at: now,
                request: None,
                writes: vec![],
                history: vec![],
                counters: vec![],
                counter_checks: vec![],
                balances: vec![],
                balance_checks: vec![],
                jobs: vec![],
                events: vec![EventDraft {
                    source: "switchyard".into(),
                    kind: switchyard_core::EventType::InstanceTransitioned,
                    subject: instance.to_string(),
                    time: now,
                    data: json!({
                        "instance": instance,
                        "definition": { "name": "quote", "version": 1 },
                        "business_key": "Q-1",
                        "version": written + i + 2,
                        "from_state": "draft",
                        "to_state": "draft",
                        "status": "active",
                        "command": "note",
                        "actor": { "id": "bench", "roles": ["sales_rep"] },
                        "request_id": format!("r-{}", written + i),
                        "reason": "note → draft",
                        "changes": { "net": "1234.56" },
                        "data": { "net": "1234.56", "customer": "ACME GmbH", "currency": "EUR" },
                    }),
                }],
            })
            .collect();
        written += batch.len() as u64;
        store.commit(&batch)?;
    }
    Ok(())
}

async fn replay(events: u64, cache_mib: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = SledConfig::new(dir.path());
    config.durability = Durability::Flush;
    config.cache_bytes = cache_mib * 1024 * 1024;
    let store = SledStore::open(&config)?;
    let started = Instant::now();
    fill(&store, events)?;
    println!(
        "filled {events} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let d = DeciderRegistry::new();
    let defs = DefinitionSet::from_sources(&[("quote.toml".into(), DEFINITION.into())], &d)
        .map_err(|e| anyhow!("{e}"))?;
    let engine = Engine::with_store(Arc::new(store), EngineConfig::in_memory(), defs, d)?;
    let mut sub = engine.subscribe(0)?;
    let started = Instant::now();
    let mut last = 0;
    while last < events {
        let event = sub.next().await?;
        assert_eq!(event.offset, last + 1, "gap-free");
        last = event.offset;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "| replay | {events} events, sled cache {cache_mib} MiB | {secs:.2} s | {:.0} events/s |",
        events as f64 / secs
    );
    engine.shutdown().await;
    Ok(())
}

async fn live(seconds: f64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = SledConfig::new(dir.path());
    config.durability = Durability::Flush;
    let d = DeciderRegistry::new();
    let defs = DefinitionSet::from_sources(&[("quote.toml".into(), DEFINITION.into())], &d)
        .map_err(|e| anyhow!("{e}"))?;
    let engine = Engine::open(EngineConfig::new(StoreConfig::Sled(config)), defs, d).await?;
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
    let (_, start_offset) = engine.store().feed_bounds()?;
    let seen = Arc::new(AtomicU64::new(start_offset));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let mut sub = engine.subscribe(start_offset)?;
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(event) = sub.next().await {
                seen.store(event.offset, Ordering::Relaxed);
            }
        })
    };
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
        let engine = engine.clone();
        let seen = seen.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut max_lag = 0;
            let mut samples = 0u64;
            let mut total = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let (_, head) = engine.store().feed_bounds().expect("bounds");
                let lag = head.saturating_sub(seen.load(Ordering::Relaxed));
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
    while seen.load(Ordering::Relaxed) < head {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "| live, 64 submitters | {commits} commits in {elapsed:.1} s = {:.0}/s | lag mean {mean_lag}, max {max_lag} events (sampled every 10 ms) | caught up {:.1} ms after the last commit |",
        commits as f64 / elapsed,
        caught_up.elapsed().as_secs_f64() * 1000.0
    );
    engine.shutdown().await;
    reader.abort();
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let events: u64 = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(500_000);
    let seconds: f64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "feed-load: {} cores, tokio with 2 workers; load generator in-process",
        std::thread::available_parallelism()?.get()
    );
    for cache_mib in [256, 1024] {
        rt.block_on(replay(events, cache_mib))?;
    }
    rt.block_on(live(seconds))?;
    Ok(())
}
