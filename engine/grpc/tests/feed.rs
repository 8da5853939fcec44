//! `FeedService.Subscribe` over a real socket: replay then live with no gap, resume after a
//! dropped stream, filters and read roles, heartbeats, bad requests, a consumer that does not
//! read holding up no commit, and streams ending at shutdown.

mod harness;

use std::time::Duration;

use harness::*;
use switchyard_grpc::pb;
use switchyard_grpc::pb::subscribe_response::Item;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

/// The next message of a stream, within 10 s.
async fn next(stream: &mut Streaming<pb::SubscribeResponse>) -> Item {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message in time")
        .expect("the stream is fine")
        .expect("the stream is open")
        .item
        .expect("an item")
}

/// The next event, skipping heartbeats and the caught-up marker.
async fn next_event(stream: &mut Streaming<pb::SubscribeResponse>) -> pb::FeedEvent {
    loop {
        if let Item::Event(e) = next(stream).await {
            return e;
        }
    }
}

async fn subscribe(
    server: &TestServer,
    role: &str,
    request: pb::SubscribeRequest,
) -> Result<Streaming<pb::SubscribeResponse>, tonic::Status> {
    server
        .feed()
        .subscribe(as_role(role, request))
        .await
        .map(|r| r.into_inner())
}

async fn start_lead(server: &TestServer, key: &str) {
    server
        .instances()
        .start_instance(as_role(
            "sales_rep",
            pb::StartInstanceRequest {
                request_id: format!("lead-{key}"),
                definition: "lead".into(),
                business_key: key.into(),
                data_json: r#"{"company":"ACME GmbH"}"#.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_consumer_replays_then_follows_live_and_resumes_after_a_dropped_stream_without_a_gap() {
    let server = TestServer::start().await;
    for n in 0..3 {
        start_quote(&server, &format!("q-{n}"), "FIXED-4999").await;
    }
    let mut stream = subscribe(&server, "analyst", pb::SubscribeRequest::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut stream).await);
    }
    let offsets: Vec<u64> = seen
        .iter()
        .map(|i| match i {
            Item::Event(e) => e.offset,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(offsets, vec![1, 2, 3]);
    let Item::Event(first) = &seen[0] else {
        unreachable!()
    };
    assert_eq!(first.r#type, "switchyard.instance.started");
    let data: serde_json::Value = serde_json::from_str(&first.data_json).unwrap();
    assert_eq!(data["definition"]["name"], "quote");
    assert_eq!(data["business_key"], "Q-q-0");
    match next(&mut stream).await {
        Item::CaughtUp(c) => assert_eq!((c.position, c.head_offset), (3, 3)),
        other => panic!("expected caught-up, got {other:?}"),
    }

    // Live: the next commit arrives on the open stream.
    start_quote(&server, "q-live", "FIXED-4999").await;
    let live = next_event(&mut stream).await;
    assert_eq!(live.offset, 4);
    drop(stream);

    // Reconnecting after offset 2 sees 3 and 4 again, with the same ids.
    let mut again = subscribe(
        &server,
        "analyst",
        pb::SubscribeRequest {
            after_offset: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (three, four) = (next_event(&mut again).await, next_event(&mut again).await);
    assert_eq!((three.offset, four.offset), (3, 4));
    assert_eq!(four.id, live.id);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_carries_only_what_the_caller_may_read_and_asked_for() {
    let server = TestServer::start().await;
    start_lead(&server, "L-1").await;
    let quote = start_quote(&server, "q-1", "FIXED-4999").await;
    server
        .instances()
        .send_command(as_role(
            "sales_rep",
            pb::SendCommandRequest {
                request_id: "submit-1".into(),
                instance_id: quote.instance_id.clone(),
                command: "submit".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    // Finance may read quotes but not leads: the lead's event is left out, silently.
    let mut finance = subscribe(&server, "finance", pb::SubscribeRequest::default())
        .await
        .unwrap();
    let (a, b) = (
        next_event(&mut finance).await,
        next_event(&mut finance).await,
    );
    assert_eq!((a.offset, b.offset), (2, 3));
    assert_eq!(a.subject, quote.instance_id);
    match next(&mut finance).await {
        Item::CaughtUp(c) => assert_eq!(c.position, 3),
        other => panic!("{other:?}"),
    }

    // Only transitions of quotes.
    let mut transitions = subscribe(
        &server,
        "analyst",
        pb::SubscribeRequest {
            definitions: vec!["quote".into()],
            event_types: vec!["switchyard.instance.transitioned".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let only = next_event(&mut transitions).await;
    assert_eq!(
        (only.offset, only.r#type.as_str()),
        (3, "switchyard.instance.transitioned")
    );

    // A definition the caller may not read is refused, not silently empty.
    let refused = subscribe(
        &server,
        "finance",
        pb::SubscribeRequest {
            definitions: vec!["lead".into()],
            ..Default::default()
        },
    )
    .await;
    expect_refusal(refused, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    server.stop().await;
}

#[tokio::test]
async fn bad_subscriptions_name_the_field() {
    let server = TestServer::start().await;
    start_quote(&server, "q-1", "FIXED-4999").await;
    let cases = [
        (
            pb::SubscribeRequest {
                event_types: vec!["switchyard.instance.started".into(), "order.shipped".into()],
                ..Default::default()
            },
            "event_types[1]",
        ),
        (
            pb::SubscribeRequest {
                definitions: vec!["nope".into()],
                ..Default::default()
            },
            "definitions[0]",
        ),
        (
            pb::SubscribeRequest {
                heartbeat_seconds: 301,
                ..Default::default()
            },
            "heartbeat_seconds",
        ),
        (
            pb::SubscribeRequest {
                definitions: vec!["quote".into(); 33],
                ..Default::default()
            },
            "definitions",
        ),
    ];
    for (request, field) in cases {
        let status = subscribe(&server, "analyst", request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(bad_fields(&status), vec![field.to_string()], "{status:?}");
    }
    let beyond = subscribe(
        &server,
        "analyst",
        pb::SubscribeRequest {
            after_offset: 99,
            ..Default::default()
        },
    )
    .await;
    let status = expect_refusal(beyond, Code::OutOfRange, "FEED_BEYOND_HEAD");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["head_offset"], "1");
    server.stop().await;
}

#[tokio::test]
async fn an_idle_stream_beats_with_the_head_and_its_position_past_what_it_filtered_out() {
    let server = TestServer::start().await;
    for n in 0..2 {
        start_quote(&server, &format!("q-{n}"), "FIXED-4999").await;
    }
    let mut stream = subscribe(
        &server,
        "analyst",
        pb::SubscribeRequest {
            event_types: vec!["switchyard.timer.fired".into()],
            heartbeat_seconds: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Nothing matches: the stream still says how far it has looked.
    let mut beat = None;
    for _ in 0..3 {
        match next(&mut stream).await {
            Item::Heartbeat(h) => {
                beat = Some(h);
                break;
            }
            Item::CaughtUp(c) => assert_eq!(c.head_offset, 2),
            Item::Event(e) => panic!("filtered out, yet delivered: {e:?}"),
        }
    }
    let beat = beat.expect("a heartbeat within three messages");
    assert_eq!((beat.head_offset, beat.position), (2, 2));
    assert!(beat.time.is_some());
    server.stop().await;
}

#[tokio::test]
async fn a_consumer_that_stops_reading_holds_up_no_commit() {
    let server = TestServer::start().await;
    let mut stalled = subscribe(&server, "analyst", pb::SubscribeRequest::default())
        .await
        .unwrap();
    // 64 writers, far more events than the stream's buffer and one page of the store: every
    // start is acknowledged while the consumer reads nothing.
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let channel = server.channel.clone();
            tokio::spawn(async move {
                let mut client = pb::instance_service_client::InstanceServiceClient::new(channel);
                for n in 0..15 {
                    client
                        .start_instance(as_role(
                            "sales_rep",
                            pb::StartInstanceRequest {
                                request_id: format!("w{w}-{n}"),
                                definition: "quote".into(),
                                business_key: format!("Q-{w}-{n}"),
                                data_json: quote_data("FIXED-4999"),
                                ..Default::default()
                            },
                        ))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let all = async {
        for w in writers {
            w.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("960 commits while a consumer reads nothing");
    // Read late, the stream still has every event, in order, with no gap.
    for offset in 1..=960 {
        assert_eq!(next_event(&mut stalled).await.offset, offset);
    }
    server.stop().await;
}

#[tokio::test]
async fn streams_end_with_unavailable_when_the_server_shuts_down_not_at_the_drain_timeout() {
    let server = TestServer::start().await;
    start_quote(&server, "q-1", "FIXED-4999").await;
    let mut stream = subscribe(&server, "analyst", pb::SubscribeRequest::default())
        .await
        .unwrap();
    next_event(&mut stream).await;
    let started = std::time::Instant::now();
    let stop = tokio::spawn(server.stop());
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(other) => break other,
            Err(_) => panic!("the stream did not end within 10 s"),
        }
    };
    match ended {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(None) => {}
        Ok(Some(_)) => unreachable!(),
    }
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("shutdown is not held up by the stream")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "well before the 30 s drain"
    );
}

#[tokio::test]
async fn open_streams_are_bounded_and_a_closed_one_frees_its_place_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = harness::config(dir.path());
    config.grpc.feed_streams_max = 2;
    let server = TestServer::start_with(dir, config).await;
    let first = subscribe(&server, "analyst", pb::SubscribeRequest::default())
        .await
        .unwrap();
    let _second = subscribe(&server, "analyst", pb::SubscribeRequest::default())
        .await
        .unwrap();
    let refused = subscribe(&server, "analyst", pb::SubscribeRequest::default()).await;
    let status = expect_refusal(refused, Code::ResourceExhausted, "OVERLOADED");
    assert!(status.message().contains("feed_streams_max"), "{status:?}");
    // Dropping a stream frees its place well before the 15 s heartbeat would notice.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(s) = subscribe(&server, "analyst", pb::SubscribeRequest::default()).await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a place was freed within 5 s");
    server.stop().await;
}

/// `[nats_export]`: the server exports its feed to the machine's NATS JetStream
/// (`SWITCHYARD_NATS_URL`, default 127.0.0.1:4222), into a stream of this run's own, and records
/// the exported offset when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_exports_its_feed_to_nats_jetstream() {
    let url =
        std::env::var("SWITCHYARD_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut config = harness::config(dir.path());
    config.nats_export.enabled = true;
    config.nats_export.url = url.clone();
    config.nats_export.stream = format!("SYSERVER_{tag}");
    config.nats_export.subject_prefix = format!("syserver{tag}");
    // Outside the server's directory, which the test server removes when it stops.
    let kept = tempfile::tempdir().unwrap();
    let offset_file = kept.path().join("nats-export.offset");
    config.nats_export.offset_file = Some(offset_file.clone());
    let server = TestServer::start_with(dir, config.clone()).await;
    for n in 0..5 {
        start_quote(&server, &format!("nats-{n}"), "FIXED-4999").await;
    }
    let (_, head) = server.running().engine.feed_bounds().unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut exported = 0;
    for _ in 0..200 {
        if let Ok(mut stream) = js.get_stream(&config.nats_export.stream).await {
            exported = stream.info().await.unwrap().state.messages;
            if exported == head {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(exported, head, "every feed event is in the stream");
    let stream = js.get_stream(&config.nats_export.stream).await.unwrap();
    let last = stream.get_raw_message(head).await.unwrap();
    assert!(last
        .subject
        .as_str()
        .starts_with(&format!("syserver{tag}.quote.instance.")));
    server.stop().await;
    assert_eq!(
        switchyard_nats::recorded_offset(&offset_file).unwrap(),
        head,
        "the stop recorded the exported offset"
    );
    js.delete_stream(&config.nats_export.stream).await.unwrap();
}
