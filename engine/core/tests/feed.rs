//! The event feed: gap-free, ordered, resumable, durable-only, retention-bounded.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{Duration, TimeZone, Utc};
use common::*;
use serde_json::json;
use switchyard_core::store::*;
use switchyard_core::*;

async fn read(sub: &mut Subscription, n: usize) -> Vec<FeedEvent> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            tokio::time::timeout(StdDuration::from_secs(10), sub.next())
                .await
                .expect("event in time")
                .unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn the_feed_is_gap_free_and_in_commit_order_under_concurrent_commits() {
    let engine = memory_engine().await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let id = engine
                .start(start_order(&format!("W{w}"), "10.00", &format!("w{w}")))
                .await
                .unwrap()
                .instance;
            for n in 0..25 {
                engine
                    .send(command(
                        id,
                        "note",
                        json!({"text": n.to_string()}),
                        rep(),
                        &format!("w{w}-{n}"),
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut sub = engine.subscribe(0).unwrap();
    let events = read(&mut sub, 8 * 26).await;
    assert_eq!(
        events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (1..=208).collect::<Vec<u64>>()
    );
    let mut last_version: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        let v = e.data()["version"].as_u64().unwrap();
        let prev = last_version.insert(e.subject.clone(), v).unwrap_or(0);
        assert_eq!(
            v,
            prev + 1,
            "an instance's events follow its versions in order"
        );
    }
    assert_eq!(engine.store().feed_bounds().unwrap(), (1, 208));
}

#[tokio::test]
async fn events_carry_a_cloudevents_envelope_and_the_change() {
    let engine = memory_engine().await;
    let id = engine
        .start(start_order("E-1", "10.00", "e-1"))
        .await
        .unwrap()
        .instance;
    let out = engine
        .send(command(id, "confirm", json!({"note": "go"}), rep(), "e-2"))
        .await
        .unwrap();
    let mut sub = engine.subscribe(0).unwrap();
    let events = read(&mut sub, 3).await;
    assert_eq!(events[0].kind, "switchyard.instance.started");
    assert_eq!(events[1].kind, "switchyard.instance.transitioned");
    assert_eq!(
        events[2].kind, "switchyard.instance.started",
        "the linked shipment"
    );
    assert_eq!(events[2].subject, out.started[0].to_string());
    let e = &events[1];
    assert_eq!(e.id, "switchyard/2");
    assert_eq!(e.source, "switchyard");
    assert_eq!(e.subject, id.to_string());
    assert_eq!(
        e.data()["definition"],
        json!({"name": "order", "version": 1})
    );
    assert_eq!(e.data()["from_state"], "created");
    assert_eq!(e.data()["to_state"], "confirmed");
    assert_eq!(e.data()["command"], "confirm");
    assert_eq!(
        e.data()["actor"],
        json!({"id": "rep-1", "roles": ["sales_rep"]})
    );
    assert_eq!(e.data()["request_id"], "e-2");
    assert_eq!(
        e.data()["data"]["number"],
        "SO-2026-000001",
        "post-transition data, with the drawn number"
    );
    assert_eq!(e.data()["data"]["total"], "10.00");
    assert_eq!(
        events[2].data()["data"],
        json!({ "order_total": "10.00" }),
        "the order's number is the order's: the shipment's start event does not get it"
    );
}

#[tokio::test]
async fn a_subscriber_resumes_after_any_offset_and_then_follows_live() {
    let engine = memory_engine().await;
    let id = engine
        .start(start_order("R-1", "10.00", "r-0"))
        .await
        .unwrap()
        .instance;
    for n in 1..10 {
        engine
            .send(command(
                id,
                "note",
                json!({"text": "x"}),
                rep(),
                &format!("r-{n}"),
            ))
            .await
            .unwrap();
    }
    let all = read(&mut engine.subscribe(0).unwrap(), 10).await;
    for after in [0, 1, 5, 9] {
        let mut sub = engine.subscribe(after).unwrap();
        let rest = read(&mut sub, 10 - after as usize).await;
        assert_eq!(rest, all[after as usize..], "resuming after {after}");
        assert_eq!(sub.offset(), 10);
    }
    // Live: a waiting subscriber gets the next commit.
    let mut sub = engine.subscribe(10).unwrap();
    let waiter = tokio::spawn(async move { sub.next().await.unwrap() });
    tokio::time::sleep(StdDuration::from_millis(20)).await;
    engine
        .send(command(
            id,
            "note",
            json!({"text": "live"}),
            rep(),
            "r-live",
        ))
        .await
        .unwrap();
    let live = tokio::time::timeout(StdDuration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.offset, 11);
    assert_eq!(live.data()["request_id"], "r-live");
    let err = engine.subscribe(12).err().unwrap();
    assert_eq!(
        err.to_string(),
        "field `after_offset`: 12 is beyond the feed's last offset 11"
    );
}

#[tokio::test]
async fn a_slow_subscriber_does_not_hold_commits_and_catches_up_from_the_store() {
    let engine = memory_engine().await;
    let id = engine
        .start(start_order("S-1", "10.00", "s-0"))
        .await
        .unwrap()
        .instance;
    let mut idle = engine.subscribe(0).unwrap();
    // The subscriber reads nothing while 2,000 commits go through.
    for n in 1..=2000 {
        engine
            .send(command(
                id,
                "note",
                json!({"text": "x"}),
                rep(),
                &format!("s-{n}"),
            ))
            .await
            .unwrap();
    }
    let events = read(&mut idle, 2001).await;
    assert_eq!(events.last().unwrap().offset, 2001);
    assert!(events.windows(2).all(|w| w[1].offset == w[0].offset + 1));
}

#[tokio::test]
async fn subscribing_before_the_retained_horizon_names_the_earliest_offset() {
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    let engine = engine_with_clock(clock.clone()).await;
    let id = engine
        .start(start_order("H-1", "10.00", "h-0"))
        .await
        .unwrap()
        .instance;
    engine
        .send(command(id, "note", json!({"text": "old"}), rep(), "h-1"))
        .await
        .unwrap();
    clock.advance(Duration::days(31));
    engine
        .send(command(id, "note", json!({"text": "new"}), rep(), "h-2"))
        .await
        .unwrap();
    assert_eq!(engine.purge_feed().await.unwrap(), 2);
    let err = engine.subscribe(0).err().unwrap();
    assert_eq!(err.code(), "FEED_HORIZON");
    assert_eq!(
        err.to_string(),
        "field `after_offset`: events after offset 0 are no longer retained; the earliest retained offset is 3, so subscribe with after_offset ≥ 2"
    );
    let events = read(&mut engine.subscribe(2).unwrap(), 1).await;
    assert_eq!(events[0].offset, 3);
}

#[tokio::test]
async fn only_flushed_events_are_delivered() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    store.hold_flushes();
    let d = deciders();
    let engine =
        Engine::with_store(store.clone(), EngineConfig::in_memory(), definitions(&d), d).unwrap();
    let mut sub = engine.subscribe(0).unwrap();
    let starter = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .start(start_order("G-1", "1.00", "g-1"))
                .await
                .unwrap()
        })
    };
    // The commit is applied (visible to reads) but its flush is held.
    for _ in 0..100 {
        if store.feed_bounds().unwrap().1 == 1 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    assert_eq!(store.feed_bounds().unwrap().1, 1, "applied");
    assert!(
        tokio::time::timeout(StdDuration::from_millis(200), sub.next())
            .await
            .is_err(),
        "an event was delivered before its commit was flushed"
    );
    assert!(
        !starter.is_finished(),
        "a command was acknowledged before its flush"
    );
    store.release_flushes();
    starter.await.unwrap();
    let event = read(&mut sub, 1).await;
    assert_eq!(event[0].offset, 1);
}
