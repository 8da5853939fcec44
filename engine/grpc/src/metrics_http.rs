//! Prometheus metrics over HTTP/1.1 on their own (loopback by default) port: one
//! `GET /metrics` route, rendered from [`Engine::metrics`] and the server's own counters,
//! served by [`crate::http`] with its connection limit and timeouts.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use switchyard_core::metrics::HistogramSnapshot;
use switchyard_core::Engine;

/// What the metrics route reads.
#[derive(Clone)]
pub struct MetricsState {
    /// The engine measured.
    pub engine: Engine,
    /// Whether it runs on a manual (test) clock.
    pub manual_clock: bool,
    /// RPCs refused for a missing or unknown credential.
    pub unauthenticated: Arc<AtomicU64>,
    /// Connections refused at a listener's connection limit.
    pub connections_refused: Arc<AtomicU64>,
}

/// The metrics router: `GET /metrics`; anything else is 404.
pub fn router(state: MetricsState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only GET /metrics is served here\n") })
        .with_state(state)
}

async fn scrape(State(state): State<MetricsState>) -> axum::response::Response {
    match render(&state).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
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
pub async fn render(state: &MetricsState) -> Result<String, switchyard_core::CommandError> {
    let m = state.engine.metrics().await?;
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
    gauge(
        &mut out,
        "switchyard_rule_pool_pending",
        "Rule evaluations queued or running on the rule pool.",
        m.rule_pool_pending as u64,
    );
    gauge(
        &mut out,
        "switchyard_clock_manual",
        "1 on a test server whose clock moves only when an admin advances it (--clock manual).",
        u64::from(state.manual_clock),
    );
    let _ = writeln!(
        out,
        "# HELP switchyard_grpc_unauthenticated_total RPCs refused for a missing or unknown credential.\n# TYPE switchyard_grpc_unauthenticated_total counter\nswitchyard_grpc_unauthenticated_total {}",
        state.unauthenticated.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP switchyard_connections_refused_total Connections closed at a listener's connection limit.\n# TYPE switchyard_connections_refused_total counter\nswitchyard_connections_refused_total {}",
        state.connections_refused.load(Ordering::Relaxed)
    );
    Ok(out)
}
