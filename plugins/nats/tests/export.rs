//! Feed export against a real NATS server with JetStream: the machine's (127.0.0.1:4222, or
//! `SWITCHYARD_NATS_URL`) for a killed-and-restarted exporter, and a private `nats-server`
//! (`SWITCHYARD_NATS_SERVER`, default `/usr/sbin/nats-server`) that the test stops and
//! starts for the broker-down case. Each run uses streams and subjects of its own. The stream
//! is compared with the feed event by event: same offsets in the same order, each once, with
//! the event id as the message id and the event as the body.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use switchyard_core::*;
use switchyard_nats::{run, subject, ExportConfig, Progress};
use tokio::sync::watch;

async fn engine() -> Engine {
    let rules_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let rules = RuleSet::load(&rules_dir, DeciderRegistry::new(), RuleLimits::default())
        .expect("the shipped rules load");
    let mut config = EngineConfig::new(StoreConfig::Memory);
    config.background_tasks = false;
    Engine::open(config, rules.definitions, rules.deciders)
        .await
        .unwrap()
}

/// Starts `count` leads (one feed event each).
async fn leads(engine: &Engine, from: usize, count: usize) {
    for n in from..from + count {
        engine
            .start(
                StartRequest::new(
                    "lead",
                    Actor::new("ana", &["sales_rep"]),
                    format!("lead-{n}"),
                )
                .business_key(format!("L-{n}"))
                .data(json!({ "company": format!("Company {n}") })),
            )
            .await
            .unwrap();
    }
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

fn config(url: &str, dir: &Path, tag: &str) -> ExportConfig {
    let mut config = ExportConfig::new(url, format!("SYTEST_{tag}"), dir.join("nats.offset"));
    config.subject_prefix = format!("sytest{tag}");
    config.in_flight = 32;
    config
}

struct Exporter {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), switchyard_nats::ExportError>>,
    progress: Progress,
}

fn spawn(engine: &Engine, config: &ExportConfig) -> Exporter {
    let (stop, stopped) = watch::channel(false);
    let progress = Progress::default();
    let task = tokio::spawn(run(
        engine.clone(),
        config.clone(),
        progress.clone(),
        stopped,
    ));
    Exporter {
        stop,
        task,
        progress,
    }
}

async fn exported(exporter: &Exporter, offset: u64) {
    for _ in 0..600 {
        if exporter.progress.exported() >= offset {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the exporter reached only offset {} of {offset}",
        exporter.progress.exported()
    );
}

/// Reads the whole stream and compares it with the feed, one by one.
async fn stream_equals_feed(url: &str, config: &ExportConfig, engine: &Engine) {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let mut stream = js.get_stream(&config.stream).await.unwrap();
    let (_, head) = engine.feed_bounds().unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(
        info.state.messages, head,
        "one message per event, no duplicate"
    );
    let mut feed = engine.subscribe(0).unwrap();
    for sequence in 1..=info.state.last_sequence {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let event = feed.next().await.unwrap();
        assert_eq!(
            message.headers.get("Switchyard-Offset").unwrap().as_str(),
            event.offset.to_string(),
            "message {sequence} out of order"
        );
        let id = message.headers.get(async_nats::header::NATS_MESSAGE_ID);
        assert_eq!(id.unwrap().as_str(), event.id);
        assert_eq!(
            message.subject.as_str(),
            subject(&config.subject_prefix, &event)
        );
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body, serde_json::to_value(&event).unwrap());
    }
    assert_eq!(feed.offset(), head);
    js.delete_stream(&config.stream).await.unwrap();
}

fn nats_url() -> String {
    std::env::var("SWITCHYARD_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_exporter_resumes_with_no_gap_and_no_duplicate() {
    let url = nats_url();
    let dir = tempfile::tempdir().unwrap();
    let tag = unique();
    let config = config(&url, dir.path(), &tag);
    // A stream with a duplicate window too short to hide a resend: only the exporter's own
    // resume point keeps a restart from publishing an event twice.
    let js = jetstream::new(
        async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("NATS at {url}: {e} (.ci/run starts it)")),
    );
    js.create_stream(jetstream::stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        duplicate_window: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    let engine = engine().await;
    leads(&engine, 0, 150).await;
    let first = spawn(&engine, &config);
    exported(&first, 60).await;
    // Killed mid-stream: no orderly stop, the offset file may lag what the broker has.
    first.task.abort();
    let _ = first.task.await;
    // The engine kept committing; the lost file must not cause resends either.
    leads(&engine, 150, 50).await;
    std::fs::remove_file(dir.path().join("nats.offset")).ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = spawn(&engine, &config);
    let (_, head) = engine.feed_bounds().unwrap();
    exported(&second, head).await;
    second.stop.send(true).unwrap();
    second.task.await.unwrap().unwrap();
    assert_eq!(
        switchyard_nats::recorded_offset(&dir.path().join("nats.offset")).unwrap(),
        head,
        "the orderly stop recorded the last acknowledged offset"
    );
    stream_equals_feed(&url, &config, &engine).await;
}

/// A private nats-server on `port` with its JetStream store in `dir`.
fn nats_server(port: u16, dir: &Path) -> Child {
    let binary =
        std::env::var("SWITCHYARD_NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
    Command::new(&binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_commits_while_the_broker_is_down_and_the_exporter_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut broker = nats_server(port, &dir.path().join("js"));
    let config = config(&url, dir.path(), &unique());
    let engine = engine().await;
    let exporter = spawn(&engine, &config);
    leads(&engine, 0, 40).await;
    exported(&exporter, 40).await;
    assert!(exporter.progress.connected());

    broker.kill().unwrap();
    broker.wait().unwrap();
    // Commits do not wait for the broker.
    let started = std::time::Instant::now();
    leads(&engine, 40, 60).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    for _ in 0..200 {
        if !exporter.progress.connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!exporter.progress.connected(), "the exporter noticed");
    assert!(exporter.progress.exported() < 100);

    let broker = nats_server(port, &dir.path().join("js"));
    let _broker = KillOnDrop(broker);
    exported(&exporter, 100).await;
    exporter.stop.send(true).unwrap();
    exporter.task.await.unwrap().unwrap();
    stream_equals_feed(&url, &config, &engine).await;
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_emptied_by_its_own_limits_resumes_from_the_offset_file() {
    let url = nats_url();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&url, dir.path(), &unique());
    let engine = engine().await;
    leads(&engine, 0, 30).await;
    let first = spawn(&engine, &config);
    exported(&first, 30).await;
    first.stop.send(true).unwrap();
    first.task.await.unwrap().unwrap();
    // The operator's retention removed every message; the sequence numbers stay.
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    js.get_stream(&config.stream)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    leads(&engine, 30, 10).await;
    let second = spawn(&engine, &config);
    exported(&second, 40).await;
    second.stop.send(true).unwrap();
    second.task.await.unwrap().unwrap();
    let mut stream = js.get_stream(&config.stream).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(
        info.state.messages, 10,
        "only the events after the recorded offset"
    );
    let first_left = stream
        .get_raw_message(info.state.first_sequence)
        .await
        .unwrap();
    assert_eq!(
        first_left
            .headers
            .get("Switchyard-Offset")
            .unwrap()
            .as_str(),
        "31"
    );
    js.delete_stream(&config.stream).await.unwrap();
}

#[test]
fn subjects_and_names_are_checked() {
    let mut config = ExportConfig::new("nats://x", "BAD.NAME", "o".into());
    assert!(config.check().unwrap_err().contains("`stream`"));
    config.stream = "GOOD".into();
    config.subject_prefix = "a..b".into();
    assert!(config.check().unwrap_err().contains("`subject_prefix`"));
    config.subject_prefix = "a.b".into();
    config.in_flight = 0;
    assert!(config.check().unwrap_err().contains("`in_flight`"));
}
