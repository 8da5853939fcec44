//! Prometheus metrics over plain HTTP/1.1 on their own (loopback by default) port: one
//! `GET /metrics` route, rendered from [`Engine::metrics`] and the server's own counters.
//! Kept to a tiny hand-written responder so the server pulls in no HTTP framework for it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use switchyard_core::metrics::HistogramSnapshot;
use switchyard_core::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Largest request head read from a scraper.
const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, engine: Engine, refusals: Arc<AtomicU64>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let engine = engine.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_BYTES_MAX {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if line.starts_with("GET ") && path == "/metrics" {
                match render(&engine, &refusals).await {
                    Ok(text) => ("200 OK", text),
                    Err(e) => ("503 Service Unavailable", format!("{e}\n")),
                }
            } else {
                (
                    "404 Not Found",
                    "only GET /metrics is served here\n".to_string(),
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot, scale: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, count) in &h.buckets {
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {count}",
            *bound as f64 / scale
        );
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum as f64 / scale);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// The exposition text.
pub async fn render(
    engine: &Engine,
    refusals: &AtomicU64,
) -> Result<String, switchyard_core::CommandError> {
    let m = engine.metrics().await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP switchyard_commands_total Requests (starts, commands, cancels) by definition, command and outcome (ok or the error reason).\n# TYPE switchyard_commands_total counter"
    );
    for c in &m.commands {
        let _ = writeln!(
            out,
            "switchyard_commands_total{{definition=\"{}\",command=\"{}\",outcome=\"{}\"}} {}",
            escape(&c.definition),
            escape(&c.command),
            c.outcome,
            c.count
        );
    }
    histogram(
        &mut out,
        "switchyard_commit_latency_seconds",
        "Time from submitting a commit to its durable acknowledgement.",
        &m.commit_latency_micros,
        1e6,
    );
    histogram(
        &mut out,
        "switchyard_group_commit_batch_size",
        "Commits written per group commit (one flush each).",
        &m.batch_size,
        1.0,
    );
    histogram(
        &mut out,
        "switchyard_rule_evaluation_seconds",
        "Time of one decider (rule script) call.",
        &m.rule_evaluation_micros,
        1e6,
    );
    gauge(
        &mut out,
        "switchyard_feed_head_offset",
        "Last feed offset assigned.",
        m.feed_head,
    );
    gauge(
        &mut out,
        "switchyard_feed_durable_offset",
        "Last feed offset made durable.",
        m.feed_durable,
    );
    gauge(
        &mut out,
        "switchyard_feed_subscribers",
        "Open feed subscriptions.",
        m.feed_subscribers as u64,
    );
    gauge(
        &mut out,
        "switchyard_feed_lag_events",
        "Durable feed offset minus the slowest open subscription's position.",
        m.feed_lag,
    );
    gauge(
        &mut out,
        "switchyard_job_backlog",
        "Jobs waiting for a worker or leased (counted up to 100000).",
        m.job_backlog,
    );
    gauge(
        &mut out,
        "switchyard_commit_queue_depth",
        "Commits waiting for the committer.",
        m.commit_queue as u64,
    );
    let _ = writeln!(
        out,
        "# HELP switchyard_grpc_unauthenticated_total RPCs refused for a missing or unknown credential.\n# TYPE switchyard_grpc_unauthenticated_total counter\nswitchyard_grpc_unauthenticated_total {}",
        refusals.load(Ordering::Relaxed)
    );
    Ok(out)
}
