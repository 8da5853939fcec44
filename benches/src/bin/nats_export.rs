//! Feed export throughput to NATS JetStream: an engine (memory store) is filled with EVENTS
//! started leads of the shipped rules (one feed event each, shaped as the engine writes them),
//! then `switchyard_nats::run` exports the feed from offset 0 to a fresh stream on the local
//! NATS server until the broker acknowledged the head; events/s and the stream's size are
//! printed. The stream is deleted afterwards.
//!
//! `cargo run --release -p switchyard-benches --bin nats-export -- [EVENTS [IN_FLIGHT]]`
//! (`SWITCHYARD_NATS_URL`, default `nats://127.0.0.1:4222`).
//!
//! Everything shares the machine's 2 cores: the engine, the exporter and nats-server.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::json;
use switchyard_core::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let in_flight: usize = args.next().map_or(Ok(256), |a| a.parse())?;
    let url =
        std::env::var("SWITCHYARD_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let rules_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let rules = RuleSet::load(&rules_dir, DeciderRegistry::new(), RuleLimits::default())
        .map_err(|e| anyhow!("{e}"))?;
    let mut config = EngineConfig::new(StoreConfig::Memory);
    config.background_tasks = false;
    let engine = Engine::open(config, rules.definitions, rules.deciders).await?;
    let filling = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..64u64 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = lane;
            while n < events {
                engine
                    .start(
                        StartRequest::new(
                            "lead",
                            Actor::new("ana", &["sales_rep"]),
                            format!("l-{n}"),
                        )
                        .business_key(format!("L-{n}"))
                        .data(json!({ "company": format!("Company {n}") })),
                    )
                    .await?;
                n += 64;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (_, head) = engine.feed_bounds()?;
    println!(
        "filled {head} events in {:.1} s",
        filling.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let mut export = switchyard_nats::ExportConfig::new(
        url.clone(),
        format!("SYBENCH_{tag}"),
        dir.path().join("offset"),
    );
    export.subject_prefix = format!("sybench{tag}");
    export.in_flight = in_flight;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let progress = switchyard_nats::Progress::default();
    let started = Instant::now();
    let task = tokio::spawn(switchyard_nats::run(
        engine.clone(),
        export.clone(),
        progress.clone(),
        stopped,
    ));
    while progress.exported() < head {
        if task.is_finished() {
            return Err(anyhow!("the exporter stopped: {:?}", task.await?));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.send(true)?;
    task.await??;
    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
    let mut stream = js.get_stream(&export.stream).await?;
    let info = stream.info().await?.clone();
    println!(
        "| export to JetStream, in_flight {in_flight} | {head} events | {elapsed:.2} s | {:.0} events/s | stream {} messages, {:.1} MB |",
        head as f64 / elapsed,
        info.state.messages,
        info.state.bytes as f64 / 1e6
    );
    js.delete_stream(&export.stream).await?;
    engine.shutdown().await;
    Ok(())
}
