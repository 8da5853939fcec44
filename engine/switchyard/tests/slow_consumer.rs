//! A feed consumer that falls behind, against `switchyard serve` as a process: the server's
//! memory and its commit rate are measured while 64 writers commit. Its own test binary, so
//! that no other test shares the machine while it measures.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_grpc::auth::token_hash;
use switchyard_grpc::pb;
use switchyard_grpc::pb::instance_service_client::InstanceServiceClient;

mod common;
use common::{listening, spawn_serve, stop};

const TOKEN: &str = "feed-test-token";

/// `message` with the test's bearer token.
fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

/// The server's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A consumer reading the feed slowly, and one reading nothing, while 64 writers commit
/// events of 32 KiB each (a workflow made for it, with a 16 MiB store cache): the server's
/// memory does not grow with what the consumers have not read — they read from the store at
/// their own pace — and the writers commit at the rate they reach with no consumer.
#[test]
fn slow_consumers_hold_neither_the_servers_memory_nor_its_commit_rate() {
    const WRITERS: usize = 64;
    const TEXT: usize = 32 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("definitions")).unwrap();
    std::fs::write(
        rules.join("definitions/note.toml"),
        r#"name = "note"
version = 1
initial = "open"

[start]
roles = ["sales_rep"]

[start.payload]
text = { type = "string", max_length = 65536 }

[read]
roles = ["sales_rep"]

[states]
open = {}
done = { terminal = true }

[commands.close]
from = ["open"]
to = ["done"]
roles = ["sales_rep"]
decider = "builtin.merge_payload"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("switchyard.toml"),
        format!(
            "[store]\ncache_bytes = {}\n\n[[auth.tokens]]\nsha256 = \"{}\"\nactor = \"u-rep\"\nroles = [\"sales_rep\"]\n",
            16 << 20,
            token_hash(TOKEN)
        ),
    )
    .unwrap();
    let mut child = spawn_serve(
        dir.path(),
        &[
            "--config",
            "switchyard.toml",
            "--rules",
            "rules",
            "--data-dir",
            "data",
        ],
        None,
    );
    let addr = listening(&mut child);
    let pid = child.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let channel = runtime.block_on(async {
        tonic::transport::Channel::from_shared(addr)
            .unwrap()
            .connect()
            .await
            .unwrap()
    });
    // `per_writer` starts by each of 64 writers; their rate, per second.
    let phase = |name: &str, per_writer: usize| -> f64 {
        let started = Instant::now();
        runtime.block_on(async {
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let mut client = InstanceServiceClient::new(channel.clone());
                    let name = name.to_string();
                    tokio::spawn(async move {
                        for n in 0..per_writer {
                            let data = serde_json::json!({ "text": "x".repeat(TEXT) });
                            let request = authed(pb::StartInstanceRequest {
                                request_id: format!("{name}-{w}-{n}"),
                                definition: "note".into(),
                                data_json: data.to_string(),
                                ..Default::default()
                            });
                            client.start_instance(request).await.unwrap();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.await.unwrap();
            }
        });
        (WRITERS * per_writer) as f64 / started.elapsed().as_secs_f64()
    };
    // The peak resident memory while `work` runs, above what it was before.
    let growth = |work: &mut dyn FnMut() -> f64| -> (f64, u64) {
        let before = rss_bytes(pid);
        let peak = Arc::new(Mutex::new(before));
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let (peak, sampling) = (peak.clone(), sampling.clone());
            std::thread::spawn(move || {
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    let rss = rss_bytes(pid);
                    let mut peak = peak.lock().unwrap();
                    *peak = (*peak).max(rss);
                    drop(peak);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let rate = work();
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap();
        let peak = *peak.lock().unwrap();
        (rate, peak.saturating_sub(before))
    };
    const PER_WRITER: usize = 24;
    phase("warm", 8);
    let (alone, grew_alone) = growth(&mut || phase("alone", PER_WRITER));

    // One consumer reads an event every 10 ms, another reads nothing; both from offset 0.
    let mut feeds = Vec::new();
    let slow_read = Arc::new(Mutex::new(0u64));
    for reads in [true, false] {
        let mut feed = pb::feed_service_client::FeedServiceClient::new(channel.clone());
        let stream = runtime
            .block_on(feed.subscribe(authed(pb::SubscribeRequest::default())))
            .unwrap()
            .into_inner();
        let slow_read = slow_read.clone();
        feeds.push(runtime.spawn(async move {
            let mut stream = stream;
            if !reads {
                // Holds the stream open, reading nothing, until the test ends.
                std::future::pending::<()>().await;
            }
            loop {
                match stream.message().await {
                    Ok(Some(pb::SubscribeResponse {
                        item: Some(pb::subscribe_response::Item::Event(e)),
                    })) => *slow_read.lock().unwrap() = e.offset,
                    Ok(Some(_)) => {}
                    _ => return stream,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let (behind, grew_behind) = growth(&mut || phase("behind", PER_WRITER));
    let read = *slow_read.lock().unwrap();
    let unread_mib = (WRITERS * (8 + 2 * PER_WRITER) * TEXT) >> 20;
    eprintln!(
        "64 writers alone: {alone:.0}/s, the server grew {} MiB; with consumers behind: \
         {behind:.0}/s, grew {} MiB; the slow consumer read {read} events, the stalled one \
         none of {unread_mib} MiB",
        grew_alone >> 20,
        grew_behind >> 20
    );
    assert!(read > 0, "the slow consumer read something");
    // Were the unread events held for the consumers, the server would grow by far more.
    assert!(unread_mib >= 96);
    assert!(
        grew_behind < grew_alone + (32 << 20),
        "the server grew {} MiB with consumers behind, {} MiB without",
        grew_behind >> 20,
        grew_alone >> 20
    );
    assert!(
        behind >= alone * 0.6,
        "commits slowed from {alone:.0}/s to {behind:.0}/s with consumers behind"
    );
    for feed in feeds {
        feed.abort();
    }
    drop(runtime);
    stop(child);
}
