//! gRPC end-to-end load generator: commands/s and latency through the real server — HTTP/2,
//! bearer-token authentication, wire conversion, a Rhai approval-threshold decision, group
//! commit and flush — with 64 concurrent clients, each on its own connection and instance.
//!
//! `cargo run --release -p switchyard-benches --bin grpc-load -- [SECONDS [flush|fsync|all [CLIENTS]]]`
//!
//! The server and the clients run in one process on the same cores (2 on the reference
//! machine), so the clients' own HTTP/2 and protobuf work is counted against the server's
//! throughput.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use switchyard_grpc::auth::token_hash;
use switchyard_grpc::config::{ServerConfig, TokenConfig};
use switchyard_grpc::pb;
use switchyard_grpc::pb::instance_service_client::InstanceServiceClient;

/// The same allocator as the `switchyard` server binary, so this measures what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-token";

/// The approval-threshold decision: strict `<` on the net, `≤` on the discount.
const SCRIPT: &str = r#"
fn review(instance, payload, actor) {
    let net = decimal(payload.net);
    let discount = decimal(payload.discount_pct);
    if net < 5000 && discount <= 10 {
        #{ state: "approved", reason: `net ${net} < 5000 and discount ${discount}% ≤ 10% → approved`,
           changes: #{ net: payload.net, discount_pct: payload.discount_pct } }
    } else {
        #{ state: "pending_approval", reason: `net ${net} ≥ 5000 or discount ${discount}% > 10% → manager`,
           changes: #{ net: payload.net, discount_pct: payload.discount_pct } }
    }
}
"#;

fn write_rules(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("definitions"))?;
    std::fs::create_dir_all(dir.join("scripts"))?;
    std::fs::write(
        dir.join("definitions/quote.toml"),
        switchyard_benches::review_definition("approval::review"),
    )?;
    std::fs::write(dir.join("scripts/approval.rhai"), SCRIPT)?;
    Ok(())
}

struct Measured {
    commands: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("ascii"),
    );
    request
}

async fn run(durability: &str, clients: usize, seconds: f64) -> Result<Measured> {
    let dir = tempfile::tempdir()?;
    write_rules(&dir.path().join("rules"))?;
    let mut config = ServerConfig {
        data_dir: dir.path().join("data"),
        rules_dir: dir.path().join("rules"),
        ..Default::default()
    };
    config.grpc.listen = "127.0.0.1:0".parse()?;
    config.metrics.enabled = false;
    config.dashboard.enabled = false;
    config.store.durability = durability.into();
    config.auth.tokens = vec![TokenConfig {
        sha256: token_hash(TOKEN),
        actor: "bench".into(),
        roles: vec!["sales_rep".into()],
    }];
    let running = switchyard_grpc::server::start(config, |_| None).await?;
    let url = format!("http://{}", running.grpc_addr);

    let mut setups = Vec::new();
    for c in 0..clients {
        let channel = tonic::transport::Channel::from_shared(url.clone())?
            .connect()
            .await?;
        let mut client = InstanceServiceClient::new(channel);
        let started = client
            .start_instance(authed(pb::StartInstanceRequest {
                request_id: format!("start-{c}"),
                definition: "quote".into(),
                business_key: format!("Q-{c}"),
                data_json: r#"{"net": "100.00", "discount_pct": "0"}"#.into(),
                ..Default::default()
            }))
            .await?
            .into_inner()
            .result
            .expect("a result");
        setups.push((client, started.instance_id));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let began = Instant::now();
    let mut tasks = Vec::new();
    for (c, (mut client, instance_id)) in setups.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let net = format!("{}.{:02}", 1000 + (n * 37 + c as u64 * 11) % 9000, n % 100);
                let t = Instant::now();
                let answer = client
                    .send_command(authed(pb::SendCommandRequest {
                        request_id: format!("c{c}-n{n}"),
                        instance_id: instance_id.clone(),
                        command: "review".into(),
                        payload_json: format!(
                            r#"{{"net": "{net}", "discount_pct": "{}"}}"#,
                            n % 20
                        ),
                        expected_version: None,
                    }))
                    .await;
                match answer {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                n += 1;
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = began.elapsed().as_secs_f64();
    running.shutdown().await?;
    latencies.sort();
    Ok(Measured {
        commands: latencies.len(),
        seconds: elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        errors,
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = args.get(1).map_or(Ok(5.0), |s| s.parse())?;
    let modes: Vec<&str> = match args.get(2).map(String::as_str) {
        None | Some("all") => vec!["flush", "fsync"],
        Some(m @ ("flush" | "fsync")) => vec![m],
        Some(other) => anyhow::bail!("unknown mode `{other}`: flush, fsync or all"),
    };
    let clients: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "gRPC end to end, {clients} clients (one connection and instance each), {seconds} s per mode, clients and server on the same {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| durability | commands/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|");
    for mode in modes {
        let m = runtime.block_on(run(mode, clients, seconds))?;
        println!(
            "| {mode} | {:.0} | {:.2} | {:.2} | {} |",
            m.commands as f64 / m.seconds,
            m.p50_ms,
            m.p99_ms,
            m.errors
        );
    }
    Ok(())
}
