//! Commit load generator: durable commits/s and commit latency of the engine at 1, 16 and 64
//! concurrent submitters, in both durability modes, side by side with the raw storage limit
//! (sled writing the same records per command, same batch size, one flush per batch).
//!
//! `cargo run --release -p switchyard-benches --bin commit-load -- [SECONDS [flush|fsync|all [SUBMITTERS]]]`
//!
//! The load generator runs in the same process and shares the machine's cores with the
//! engine. Each command is an approval-threshold decision (a Rust decider comparing the
//! quote's net amount and discount with limits; the Rhai decider replaces it with the rules
//! issue), committed with its history entry, idempotency record and index upkeep.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rust_decimal::Decimal;
use serde_json::json;
use switchyard_core::*;

fn deciders() -> DeciderRegistry {
    let mut r = DeciderRegistry::new();
    r.register("quote.approval", |ctx: &DecisionContext<'_>| {
        let dec = |f: &str| -> Result<Decimal, DecideError> {
            ctx.payload[f]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| DecideError::new(format!("{f} is not a decimal")))
        };
        let (net, discount) = (dec("net")?, dec("discount_pct")?);
        let (state, reason) = if net < Decimal::from(5000) && discount <= Decimal::from(10) {
            (
                "approved",
                format!("net {net} < 5000 and discount {discount}% ≤ 10% → auto-approved"),
            )
        } else {
            (
                "pending_approval",
                format!("net {net} ≥ 5000 or discount {discount}% > 10% → manager"),
            )
        };
        Ok(Decision::goto(state, reason)
            .with_changes(json!({ "net": net.to_string(), "discount_pct": discount.to_string() })))
    });
    r
}

struct Measured {
    commits: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    batch_avg: f64,
    fsyncs: u64,
    apply_us_per_batch: f64,
    flush_us_per_batch: f64,
}

async fn run_engine(
    dir: &Path,
    durability: Durability,
    submitters: usize,
    seconds: f64,
) -> Result<Measured> {
    let d = deciders();
    let definitions = DefinitionSet::from_sources(
        &[(
            "quote.toml".into(),
            switchyard_benches::review_definition("quote.approval"),
        )],
        &d,
    )
    .map_err(|e| anyhow!("{e}"))?;
    let mut store = SledConfig::new(dir);
    store.durability = durability;
    let engine = Engine::open(EngineConfig::new(StoreConfig::Sled(store)), definitions, d).await?;
    let rep = Actor::new("bench", &["sales_rep"]);
    // One instance per submitter: commands on one instance are serialized by design.
    let mut instances = Vec::new();
    for s in 0..submitters {
        let out = engine
            .start(
                StartRequest::new("quote", rep.clone(), format!("start-{s}"))
                    .business_key(format!("Q-{s}"))
                    .data(json!({ "net": "100.00", "discount_pct": "0" })),
            )
            .await?;
        instances.push(out.instance);
    }
    let before = engine.store().stats();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (s, instance) in instances.into_iter().enumerate() {
        let engine = engine.clone();
        let rep = rep.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let net = format!("{}.{:02}", 1000 + (n * 37 + s as u64 * 11) % 9000, n % 100);
                let t = Instant::now();
                engine
                    .send(
                        CommandRequest::new(instance, "review", rep.clone(), format!("s{s}-n{n}"))
                            .payload(json!({ "net": net, "discount_pct": format!("{}", n % 20) })),
                    )
                    .await
                    .expect("command");
                latencies.push(t.elapsed());
                n += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = engine.store().stats();
    engine.shutdown().await;
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1000.0
    };
    let batches = (after.batches - before.batches).max(1);
    Ok(Measured {
        commits: latencies.len() as u64,
        seconds: elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        batch_avg: (after.commits - before.commits) as f64 / batches as f64,
        fsyncs: after.fsyncs - before.fsyncs,
        apply_us_per_batch: (after.apply_micros - before.apply_micros) as f64 / batches as f64,
        flush_us_per_batch: (after.flush_micros - before.flush_micros) as f64 / batches as f64,
    })
}

/// The raw limit: sled alone writing what the engine writes per command (instance, history
/// entry, idempotency record and its expiry key, feed event; the benchmark's command keeps its
/// state, so no index key changes) plus the feed head once per batch, `batch` commands per
/// `apply_batch`, one flush (plus fdatasync in fsync mode) per batch, no engine at all.
fn run_raw(dir: &Path, durability: Durability, batch: usize, seconds: f64) -> Result<f64> {
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()?;
    let log = std::fs::File::open(dir.join("db"))?;
    let rep = Actor::new("bench", &["sales_rep"]);
    let now = chrono::Utc::now();
    let id = InstanceId::new();
    let mut instance = Instance {
        id,
        definition: DefinitionRef {
            name: "quote".into(),
            version: 1,
        },
        business_key: "Q-1".into(),
        state: "approved".into(),
        status: InstanceStatus::Active,
        data: json!({ "net": "1234.56", "discount_pct": "5" }),
        version: 1,
        parent: None,
        owner: Some("rep-1".into()),
        timers: vec![],
        rule_set: None,
        incidents: vec![],
        created_at: now,
        updated_at: now,
    };
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut commits = 0u64;
    let with_header = |tag: u8, body: Vec<u8>| {
        let mut v = vec![tag, 1];
        v.extend(body);
        v
    };
    while Instant::now() < deadline {
        let mut b = sled::Batch::default();
        for _ in 0..batch {
            commits += 1;
            instance.version += 1;
            let request_id = format!("raw-{commits}");
            let history = HistoryEntry {
                instance: id,
                version: instance.version,
                at: now,
                actor: rep.clone(),
                request_id: Some(request_id.clone()),
                kind: ChangeKind::Command,
                command: Some("review".into()),
                payload: json!({ "net": "1234.56", "discount_pct": "5" }),
                from_state: Some("approved".into()),
                to_state: "approved".into(),
                decider: Some("quote.approval".into()),
                reason: "net 1234.56 < 5000 and discount 5% ≤ 10% → auto-approved".into(),
                changes: json!({ "net": "1234.56", "discount_pct": "5" }),
                provenance: None,
            };
            // The request record as the engine stores it (format 1).
            let record = json!({
                "request_id": request_id,
                "target": format!("instance:{id}"),
                "command": "review",
                "payload_digest": "0".repeat(64),
                "outcome": {
                    "instance": id,
                    "version": instance.version,
                    "state": "approved",
                    "status": "active",
                    "reason": history.reason,
                    "started": [],
                    "counters": [],
                },
                "recorded_at": now,
                "expires_at": now,
            });
            let key = |p: u8, rest: &[u8]| {
                let mut k = vec![p];
                k.extend_from_slice(rest);
                k
            };
            let mut hkey = key(b'h', id.0.as_bytes());
            hkey.extend_from_slice(&instance.version.to_be_bytes());
            b.insert(
                key(b'i', id.0.as_bytes()),
                with_header(b'I', serde_json::to_vec(&instance)?),
            );
            b.insert(hkey, with_header(b'H', serde_json::to_vec(&history)?));
            b.insert(key(b'x', request_id.as_bytes()), vec![]);
            b.insert(
                key(b'r', request_id.as_bytes()),
                with_header(b'R', serde_json::to_vec(&record)?),
            );
            // The feed event, shaped like the engine's `instance.transitioned`.
            let event = switchyard_core::feed::EventDraft {
                source: "switchyard".into(),
                kind: switchyard_core::EventType::InstanceTransitioned,
                subject: id.to_string(),
                time: now,
                data: json!({
                    "instance": id, "definition": instance.definition, "business_key": instance.business_key,
                    "version": instance.version, "from_state": "approved", "to_state": "approved",
                    "status": "active", "command": "review", "actor": rep, "request_id": request_id,
                    "reason": history.reason, "changes": history.changes, "data": instance.data,
                }),
            }
            .at_offset(commits);
            b.insert(
                key(b'f', &commits.to_be_bytes()),
                with_header(b'F', serde_json::to_vec(&event)?),
            );
        }
        // The feed head, once per batch as the engine's staging leaves it.
        b.insert(
            b"mfeed_head".to_vec(),
            with_header(b'C', serde_json::to_vec(&json!({ "value": commits }))?),
        );
        db.apply_batch(b)?;
        db.flush()?;
        if durability == Durability::Fsync {
            log.sync_data()?;
        }
    }
    Ok(commits as f64 / started.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: f64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let durabilities = match args.get(1).map(String::as_str) {
        None | Some("all") => vec![Durability::Flush, Durability::Fsync],
        Some("flush") => vec![Durability::Flush],
        Some("fsync") => vec![Durability::Fsync],
        Some(other) => {
            return Err(anyhow!(
                "durability `{other}`: expected flush, fsync or all"
            ))
        }
    };
    let submitter_counts: Vec<usize> = match args.get(2) {
        Some(n) => vec![n.parse()?],
        None => vec![1, 16, 64],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "commit-load: {seconds} s per run, {} cores, tokio with 2 workers; load generator in-process",
        std::thread::available_parallelism()?.get()
    );
    println!();
    println!("| durability | submitters | engine commits/s | p50 ms | p99 ms | avg batch | apply µs/batch | flush µs/batch | fsyncs | raw sled commits/s (same batch) | engine / raw |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &durability in &durabilities {
        for &submitters in &submitter_counts {
            let dir = tempfile::tempdir()?;
            let m = rt.block_on(run_engine(dir.path(), durability, submitters, seconds))?;
            let engine_rate = m.commits as f64 / m.seconds;
            let raw_dir = tempfile::tempdir()?;
            let batch = m.batch_avg.round().max(1.0) as usize;
            let raw = run_raw(raw_dir.path(), durability, batch, seconds)?;
            println!(
                "| {:?} | {submitters} | {engine_rate:.0} | {:.2} | {:.2} | {:.1} | {:.0} | {:.0} | {} | {raw:.0} | {:.0}% |",
                durability,
                m.p50_ms,
                m.p99_ms,
                m.batch_avg,
                m.apply_us_per_batch,
                m.flush_us_per_batch,
                m.fsyncs,
                100.0 * engine_rate / raw
            );
        }
    }
    Ok(())
}
