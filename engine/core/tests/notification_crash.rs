//! Notifications across a crash (SIGKILL of a child process running the engine): a message
//! committed but not yet delivered is delivered once after the restart, with its message id;
//! a message sent but not yet recorded as sent is sent again after the restart — the only way
//! one goes out twice — with the same message id, so the receiver can drop the repeat.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use switchyard_core::notification::{Channel, DeliveryStatus, Notification, SendFuture};
use switchyard_core::*;

const CHILD_DIR: &str = "SWITCHYARD_NOTIFY_CRASH_DIR";
const CHILD_MODE: &str = "SWITCHYARD_NOTIFY_CRASH_MODE";

/// Wednesday 2026-04-01 09:00 in Berlin: the sales manager's hours are open.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 7, 0, 0).unwrap()
}

fn rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules")
}

async fn open(dir: &Path, clock: Arc<ManualClock>) -> Engine {
    let mut sled = SledConfig::new(dir);
    sled.durability = Durability::Flush;
    let mut config = EngineConfig::new(StoreConfig::Sled(sled));
    config.clock = clock;
    config.background_tasks = false;
    config.job_poll_interval = StdDuration::from_millis(10);
    config.job_handler_lease = StdDuration::from_secs(3);
    config.job_handler_timeout = StdDuration::from_secs(2);
    Engine::open_with_rules(
        config,
        &rules(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .await
    .unwrap()
}

/// Writes each message's id to `sent.txt` (synced) and says so; with `hang`, never answers.
struct Writer {
    file: PathBuf,
    hang: bool,
    seen: Mutex<Vec<Notification>>,
}

impl Channel for Writer {
    fn send<'a>(&'a self, n: &'a Notification) -> SendFuture<'a> {
        Box::pin(async move {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.file)
                .unwrap();
            writeln!(f, "{}", n.id).unwrap();
            f.sync_all().unwrap();
            self.seen.lock().unwrap().push(n.clone());
            println!("SENT {}", n.id);
            if self.hang {
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    }
}

/// The child: submits a quote that needs approval (one message for the sales manager), says
/// `QUEUED <instance>`, then in mode `send` delivers through a channel that records the message
/// and hangs before answering. Does nothing unless started by the tests below.
#[test]
fn notification_crash_child() {
    let (Ok(dir), Ok(mode)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_MODE)) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = PathBuf::from(dir);
        let engine = open(&dir.join("data"), Arc::new(ManualClock::new(t0()))).await;
        let id = engine
            .start(
                StartRequest::new("quote", Actor::new("ana", &["sales_rep"]), "start-Q-1")
                    .business_key("Q-1")
                    .data(
                        json!({ "customer": "BETA", "currency": "EUR", "valid_until": "2026-05-15",
                        "lines": [{ "sku": "FIXED-5000", "quantity": 1 }] }),
                    ),
            )
            .await
            .unwrap()
            .instance;
        engine
            .send(CommandRequest::new(
                id,
                "submit",
                Actor::new("ana", &["sales_rep"]),
                "submit-Q-1",
            ))
            .await
            .unwrap();
        println!("QUEUED {id}");
        std::io::stdout().flush().unwrap();
        if mode == "send" {
            engine.register_channel(
                "email",
                Arc::new(Writer {
                    file: dir.join("sent.txt"),
                    hang: true,
                    seen: Mutex::default(),
                }),
            );
        }
        std::future::pending::<()>().await;
    });
}

/// Runs the child in `mode` on `dir` until it prints `until`, then kills it (SIGKILL);
/// returns what follows `until` on that line.
fn run_child_until(dir: &Path, mode: &str, until: &str) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "notification_crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // libtest may print `test notification_crash_child ... ` before the child's first line.
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split_once(until).map(|(_, rest)| rest.trim().to_string()))
        .unwrap_or_else(|| panic!("the child never printed {until}"));
    child.kill().unwrap();
    child.wait().unwrap();
    line
}

async fn until_sent(
    engine: &Engine,
    clock: &ManualClock,
    id: InstanceId,
) -> Vec<notification::Delivery> {
    for _ in 0..500 {
        let d = engine.notifications(id).await.unwrap();
        if d.iter().all(|m| m.status == DeliveryStatus::Sent) {
            return d;
        }
        clock.advance(Duration::seconds(1));
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    panic!("not sent: {:#?}", engine.notifications(id).await.unwrap());
}

#[tokio::test]
async fn a_message_committed_before_a_crash_is_delivered_once_after_the_restart() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let id: InstanceId = run_child_until(dir.path(), "commit", "QUEUED ")
        .parse()
        .unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(&dir.path().join("data"), clock.clone()).await;
    let queued = engine.notifications(id).await.unwrap();
    assert_eq!(queued.len(), 1, "{queued:#?}");
    assert_eq!(queued[0].status, DeliveryStatus::Queued);
    let channel = Arc::new(Writer {
        file: dir.path().join("sent.txt"),
        hang: false,
        seen: Mutex::default(),
    });
    engine.register_channel("email", channel.clone());
    let sent = until_sent(&engine, &clock, id).await;
    let seen = channel.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "delivered once");
    assert_eq!(
        seen[0].id, queued[0].id,
        "with the id it was committed with"
    );
    assert_eq!(sent[0].id, queued[0].id);
    assert_eq!(seen[0].message.to, "mia@example.com");
}

#[tokio::test]
async fn a_message_sent_but_not_recorded_before_a_crash_is_sent_again_with_the_same_id() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let first = run_child_until(dir.path(), "send", "SENT ");
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(&dir.path().join("data"), clock.clone()).await;
    let id = engine
        .notification(first.parse().unwrap())
        .await
        .unwrap()
        .instance;
    let channel = Arc::new(Writer {
        file: dir.path().join("sent.txt"),
        hang: false,
        seen: Mutex::default(),
    });
    engine.register_channel("email", channel.clone());
    // The child's lease (3 s on the engine clock) lapses; the message goes out again.
    until_sent(&engine, &clock, id).await;
    let lines: Vec<String> = std::fs::read_to_string(dir.path().join("sent.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines, [first.clone(), first], "twice, with one message id");
}
