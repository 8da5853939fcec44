//! When the store is slow or cannot write. Commands arriving during a flush wait for the next
//! one and share it (group commit). A full disk refuses writes before anything is written and
//! writes resume by themselves once there is room; a failed or hanging flush refuses every
//! later write at once (instead of leaving callers queued behind it) until a restart. Health
//! follows, so a server can report NOT_SERVING.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::store::{FaultyStore, MemoryStore};
use switchyard_core::*;

mod common;
use common::*;

async fn engine_on(store: Arc<FaultyStore<MemoryStore>>, flush_timeout: Duration) -> Engine {
    let d = deciders();
    let mut config = EngineConfig::in_memory();
    config.flush_timeout = flush_timeout;
    Engine::with_store(store, config, definitions(&d), d).unwrap()
}

async fn wait_for(engine: &Engine, want: impl Fn(&StoreHealth) -> bool) {
    let mut health = engine.health();
    tokio::time::timeout(Duration::from_secs(10), health.wait_for(want))
        .await
        .expect("health changed in time")
        .unwrap();
}

#[tokio::test]
async fn a_full_disk_refuses_writes_then_they_resume_with_nothing_lost_or_doubled() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let engine = engine_on(store.clone(), Duration::from_secs(30)).await;
    engine
        .start(start_order("O-1", "1.00", "s-1"))
        .await
        .unwrap();
    store.fail_applies(Some(StoreError::Full {
        available: 1,
        needed: 2,
    }));
    let refused = engine
        .start(start_order("O-2", "1.00", "s-2"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "STORE");
    assert!(refused.is_transient());
    wait_for(&engine, |h| {
        matches!(
            h,
            StoreHealth::Unavailable {
                permanent: false,
                ..
            }
        )
    })
    .await;
    // Room again: the same request is retried and applied once.
    store.fail_applies(None);
    let again = engine
        .start(start_order("O-2", "1.00", "s-2"))
        .await
        .unwrap();
    let replayed = engine
        .start(start_order("O-2", "1.00", "s-2"))
        .await
        .unwrap();
    assert_eq!(again, replayed);
    wait_for(&engine, |h| *h == StoreHealth::Writable).await;
    let all = engine
        .list(ListRequest::new().definition("order"))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_failed_flush_refuses_every_later_write_until_a_restart() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let engine = engine_on(store.clone(), Duration::from_secs(30)).await;
    store.fail_flushes(Some(StoreError::Io("disk gone".into())));
    let failed = engine
        .start(start_order("O-1", "1.00", "s-1"))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), "STORE");
    store.fail_flushes(None);
    // What was applied may not be durable, yet later batches would build on it: refused.
    let refused = engine
        .start(start_order("O-2", "1.00", "s-2"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("restart the engine"),
        "{refused}"
    );
    assert!(matches!(
        *engine.health().borrow(),
        StoreHealth::Unavailable {
            permanent: true,
            ..
        }
    ));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_flush_makes_later_writes_fail_at_once_instead_of_queueing() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let engine = engine_on(store.clone(), Duration::from_millis(500)).await;
    store.hold_flushes();
    let stuck = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.start(start_order("O-1", "1.00", "s-1")).await })
    };
    wait_for(&engine, |h| {
        matches!(
            h,
            StoreHealth::Unavailable {
                permanent: true,
                ..
            }
        )
    })
    .await;
    let started = std::time::Instant::now();
    let refused = engine
        .start(start_order("O-2", "1.00", "s-2"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "refused at once"
    );
    assert!(
        refused.to_string().contains("has not returned"),
        "{refused}"
    );
    assert!(!stuck.is_finished());
    store.release_flushes();
    let _ = stuck.await;
    // The flush came back, but a stalled store stays refused (and unhealthy) until a restart.
    assert!(matches!(
        *engine.health().borrow(),
        StoreHealth::Unavailable {
            permanent: true,
            ..
        }
    ));
    assert!(engine
        .start(start_order("O-3", "1.00", "s-3"))
        .await
        .is_err());
    engine.shutdown().await;
}

/// An engine on `store` with no background task (no probe or purge touches the store).
fn quiet_engine(store: Arc<FaultyStore<MemoryStore>>, config: EngineConfig) -> Engine {
    let d = deciders();
    let mut config = config;
    config.background_tasks = false;
    Engine::with_store(store, config, definitions(&d), d).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_flush_within_the_timeout_and_an_idle_engine_are_not_stalls() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let mut config = EngineConfig::in_memory();
    config.flush_timeout = Duration::from_millis(1500);
    let engine = quiet_engine(store.clone(), config);
    // Idle for longer than the timeout: no flush runs, so nothing hangs.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    engine
        .start(start_order("I-1", "1.00", "i-1"))
        .await
        .unwrap();
    // A flush held for a while, but less than the timeout, is only slow.
    store.hold_flushes();
    let slow = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.start(start_order("I-2", "1.00", "i-2")).await })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    store.release_flushes();
    slow.await.unwrap().unwrap();
    engine
        .start(start_order("I-3", "1.00", "i-3"))
        .await
        .unwrap();
    assert_eq!(*engine.health().borrow(), StoreHealth::Writable);
    engine.shutdown().await;
}

/// Holds the store's flushes, starts one order (applied alone, its flush held) and then `n`
/// more, waits until all `n` are queued behind the held flush, releases it and waits for every
/// start to be acknowledged.
async fn queue_behind_a_held_flush(
    engine: &Engine,
    store: &FaultyStore<MemoryStore>,
    tag: &str,
    n: usize,
) {
    store.hold_flushes();
    let start = |i: usize| {
        let engine = engine.clone();
        let (key, request) = (format!("{tag}-{i}"), format!("{tag}-r-{i}"));
        tokio::spawn(async move { engine.start(start_order(&key, "1.00", &request)).await })
    };
    let first = start(0);
    for _ in 0..1000 {
        if store.applies() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(store.applies(), 1, "the first start is applied alone");
    let rest: Vec<_> = (1..=n).map(start).collect();
    // Every one of them is queued behind the held flush (none can be answered before it).
    for _ in 0..1000 {
        if engine.metrics().await.unwrap().commit_queue >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(engine.metrics().await.unwrap().commit_queue, n);
    store.release_flushes();
    first.await.unwrap().unwrap();
    for r in rest {
        r.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holds_at_most_batch_max_commits() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let mut config = EngineConfig::in_memory();
    config.batch_max = 5;
    let engine = quiet_engine(store.clone(), config);
    queue_behind_a_held_flush(&engine, &store, "B", 21).await;
    assert_eq!(store.largest_apply(), 5);
    assert_eq!(
        store.applies(),
        1 + 5,
        "21 waiting commits in batches of at most 5"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_successful_batch_after_a_full_disk_makes_the_store_writable_at_once() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let engine = quiet_engine(store.clone(), EngineConfig::in_memory());
    store.fail_applies(Some(StoreError::Full {
        available: 1,
        needed: 2,
    }));
    assert!(engine
        .start(start_order("F-1", "1.00", "f-1"))
        .await
        .is_err());
    assert!(matches!(
        *engine.health().borrow(),
        StoreHealth::Unavailable {
            permanent: false,
            ..
        }
    ));
    store.fail_applies(None);
    engine
        .start(start_order("F-2", "1.00", "f-2"))
        .await
        .unwrap();
    // No probe runs in this engine: the batch itself reports the store writable again.
    assert_eq!(*engine.health().borrow(), StoreHealth::Writable);
    engine.shutdown().await;
}

#[tokio::test]
async fn shutdown_flushes_once_more_unless_a_flush_already_failed() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let engine = quiet_engine(store.clone(), EngineConfig::in_memory());
    engine
        .start(start_order("S-1", "1.00", "s-1"))
        .await
        .unwrap();
    let before = store.flushes();
    engine.shutdown().await;
    assert_eq!(store.flushes(), before + 1, "the final flush");

    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let engine = quiet_engine(store.clone(), EngineConfig::in_memory());
    store.fail_flushes(Some(StoreError::Io("disk gone".into())));
    assert!(engine
        .start(start_order("S-2", "1.00", "s-2"))
        .await
        .is_err());
    let before = store.flushes();
    engine.shutdown().await;
    assert_eq!(store.flushes(), before, "no flush after a failed one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_arriving_during_a_flush_share_the_next_one() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    // No probe or purge may add a flush of its own.
    let engine = quiet_engine(store.clone(), EngineConfig::in_memory());
    queue_behind_a_held_flush(&engine, &store, "G", 20).await;
    assert_eq!(
        (store.applies(), store.flushes()),
        (2, 2),
        "20 commands waiting behind a flush go in one batch with one flush"
    );
    engine.shutdown().await;
}
