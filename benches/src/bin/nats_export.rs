//! Feed export throughput to NATS JetStream: an engine (memory store) is filled with EVENTS
//! started leads of the shipped rules (one feed event each, shaped as the engine writes them),
//! then `switchyard_nats::run` exports the feed from offset 0 to a fresh stream on the local
//! NATS server until the broker acknowledged the head; events/s and the stream's size are
//! printed. The stream is deleted afterwards.
//!
//! Then, live: 64 submitters start leads as fast as they can for SECONDS while the exporter
//! follows; the lag (feed head − acknowledged offset) is sampled every 10 ms, and the time it
//! takes to catch up after the last commit is printed.
//!
//! `cargo run --release -p switchyard-benches --bin nats-export -- [EVENTS [IN_FLIGHT [SECONDS]]]`
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
    let seconds: f64 = args.next().map_or(Ok(5.0), |a| a.parse())?;
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

    // Live: commits as fast as 64 submitters go, the exporter following.
    let load_ends = Instant::now() + Duration::from_secs_f64(seconds);
    let mut load = Vec::new();
    for lane in 0..64u64 {
        let engine = engine.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < load_ends {
                engine
                    .start(
                        StartRequest::new(
                            "lead",
                            Actor::new("ana", &["sales_rep"]),
                            format!("live-{lane}-{n}"),
                        )
                        .business_key(format!("LIVE-{lane}-{n}"))
                        .data(json!({ "company": "Live" })),
                    )
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let (mut samples, mut total_lag, mut max_lag) = (0u64, 0u64, 0u64);
    while Instant::now() < load_ends {
        let (_, now_head) = engine.feed_bounds()?;
        let lag = now_head.saturating_sub(progress.exported());
        samples += 1;
        total_lag += lag;
        max_lag = max_lag.max(lag);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut commits = 0;
    for t in load {
        commits += t.await??;
    }
    let load_done = Instant::now();
    let (_, final_head) = engine.feed_bounds()?;
    while progress.exported() < final_head {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "| live, 64 submitters | {commits} commits in {seconds:.1} s = {:.0}/s | lag mean {}, max {max_lag} events (sampled every 10 ms) | caught up {:.1} ms after the last commit |",
        commits as f64 / seconds,
        total_lag / samples.max(1),
        load_done.elapsed().as_secs_f64() * 1000.0
    );
    stop.send(true)?;
    task.await??;
    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
    let mut stream = js.get_stream(&export.stream).await?;
    let info = stream.info().await?.clone();
    println!(
        "| export to JetStream, in_flight {in_flight} | {head} events | {elapsed:.2} s | {:.0} events/s | stream {} messages, {:.1} MB at the end |",
        head as f64 / elapsed,
        info.state.messages,
        info.state.bytes as f64 / 1e6
    );
    js.delete_stream(&export.stream).await?;
    engine.shutdown().await;
    Ok(())
}
