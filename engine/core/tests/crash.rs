//! Crash test: a child process runs concurrent commands against a sled store and prints each
//! acknowledged one; the parent kills it with SIGKILL at a random moment, reopens the store
//! and checks that every acknowledged command is there exactly once.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use switchyard_core::*;

const CHILD_ENV: &str = "SWITCHYARD_CRASH_CHILD_DIR";
const ROUNDS: usize = 20;
const WRITERS: usize = 16;

/// The child's workload. Does nothing unless started by the parent test below.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let engine = sled_engine(std::path::Path::new(&dir), Durability::Flush).await;
        let round: String = std::env::var("SWITCHYARD_CRASH_ROUND").unwrap();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let engine = engine.clone();
            let round = round.clone();
            tasks.push(tokio::spawn(async move {
                let start_id = format!("r{round}-w{w}-start");
                let id = engine
                    .start(start_order(&format!("R{round}W{w}"), "10.00", &start_id))
                    .await
                    .unwrap()
                    .instance;
                println!("ACK {start_id} {id} 1");
                for n in 0.. {
                    let rid = format!("r{round}-w{w}-n{n}");
                    let out = engine
                        .send(command(id, "note", json!({"text": rid}), rep(), &rid))
                        .await
                        .unwrap();
                    println!("ACK {rid} {id} {}", out.version);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn every_acknowledged_command_survives_sigkill_exactly_once() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut total_acked = 0;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("SWITCHYARD_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with("ACK "))
                .collect::<Vec<_>>()
        });
        // xorshift: a different kill moment each round, 30..330 ms after the child starts.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(30 + seed % 300));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap();

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let engine = sled_engine(dir.path(), Durability::Flush).await;
            let mut latest: BTreeMap<InstanceId, u64> = BTreeMap::new();
            for line in &acked {
                let parts: Vec<&str> = line.split(' ').collect();
                let (rid, id, version): (&str, InstanceId, u64) = (
                    parts[1],
                    parts[2].parse().unwrap(),
                    parts[3].parse().unwrap(),
                );
                let record = engine.store().request(rid).unwrap();
                assert!(
                    record.is_some(),
                    "round {round}: acknowledged {rid} has no request record"
                );
                let v = latest.entry(id).or_default();
                *v = (*v).max(version);
                let entry = engine.history(id, version - 1, 1).await.unwrap();
                assert_eq!(
                    entry.len(),
                    1,
                    "round {round}: acknowledged {rid} (v{version}) lost"
                );
                assert_eq!(
                    entry[0].request_id.as_deref(),
                    Some(rid),
                    "round {round}: v{version} of {id}"
                );
            }
            for (id, acked_version) in latest {
                let instance = engine.get(id).await.unwrap();
                assert!(
                    instance.version >= acked_version,
                    "round {round}: {id} went back to v{}",
                    instance.version
                );
                let history = engine.history(id, 0, 1000).await.unwrap();
                assert_eq!(
                    history.len() as u64,
                    instance.version,
                    "round {round}: history of {id} has gaps"
                );
                let mut rids: Vec<_> = history
                    .iter()
                    .map(|h| h.request_id.clone().unwrap())
                    .collect();
                let n = rids.len();
                rids.sort();
                rids.dedup();
                assert_eq!(
                    rids.len(),
                    n,
                    "round {round}: a request applied twice on {id}"
                );
                assert_eq!(
                    instance.data["notes"].as_u64().unwrap_or(0),
                    instance.version - 1
                );
            }
            // The feed holds exactly the committed changes: gap-free, each acknowledged
            // request's event exactly once, and one event per history entry.
            let mut sub = engine.subscribe(0).unwrap();
            let (_, head) = engine.store().feed_bounds().unwrap();
            let mut by_request: BTreeMap<String, usize> = BTreeMap::new();
            for expected in 1..=head {
                let event = sub.next().await.unwrap();
                assert_eq!(event.offset, expected, "round {round}: feed gap");
                *by_request
                    .entry(event.data()["request_id"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
            for line in &acked {
                let rid = line.split(' ').nth(1).unwrap();
                assert_eq!(
                    by_request.get(rid),
                    Some(&1),
                    "round {round}: {rid} not in the feed exactly once"
                );
            }
            let total_versions: u64 = {
                let mut total = 0;
                let page = engine
                    .list(ListRequest::new().page_size(1000))
                    .await
                    .unwrap();
                for i in page.items {
                    total += i.version;
                }
                total
            };
            assert_eq!(
                total_versions, head,
                "round {round}: one event per committed change"
            );
            engine.shutdown().await;
        });
        total_acked += acked.len();
    }
    assert!(
        total_acked > ROUNDS * WRITERS,
        "the child acknowledged too little to test anything: {total_acked}"
    );
    eprintln!("crash test: {ROUNDS} rounds, {total_acked} acknowledged commands checked");
}
