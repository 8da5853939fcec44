//! Backups taken while the store is written: the copy is the store at one feed offset, never a
//! mix of earlier and later writes (engine/core/src/store/backup.rs).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchyard_core::store::{ListQuery, MemoryStore, Store};
use switchyard_core::*;

mod common;
use common::{command, deciders, definitions, rep, start_order};

/// A sink that writes slowly, so commits keep landing while the export runs.
struct Slow(Vec<u8>, usize);

impl Write for Slow {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1 += 1;
        if self.1 % 64 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_under_eight_writers_restores_the_store_at_one_offset() {
    let original = Arc::new(MemoryStore::new());
    let d = deciders();
    let engine = Engine::with_store(
        original.clone(),
        EngineConfig::in_memory(),
        definitions(&d),
        d,
    )
    .unwrap();
    let mut orders = Vec::new();
    for n in 0..200 {
        let out = engine
            .start(start_order(
                &format!("O-{n}"),
                "100.00",
                &format!("start-{n}"),
            ))
            .await
            .unwrap();
        orders.push(out.instance);
    }
    let orders = Arc::new(orders);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8usize {
        let (engine, orders, stop) = (engine.clone(), orders.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let id = orders[(w * 31 + sent * 7) % orders.len()];
                let request = command(
                    id,
                    "note",
                    json!({ "text": "n" }),
                    rep(),
                    &format!("w{w}-{sent}"),
                );
                match engine.send(request).await {
                    Ok(_) | Err(CommandError::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
                sent += 1;
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let head_before = original.feed_bounds().unwrap().1;
    let exporter = engine.clone();
    let (summary, backup) = tokio::task::spawn_blocking(move || {
        let mut out = Slow(Vec::new(), 0);
        let summary = exporter.export(&mut out).unwrap();
        (summary, out.0)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        assert!(w.await.unwrap() > 0);
    }
    let head_after = original.feed_bounds().unwrap().1;
    assert!(
        head_before < summary.feed_head && summary.feed_head < head_after,
        "commits landed during the export: {head_before} < {} < {head_after}",
        summary.feed_head
    );

    let restored = MemoryStore::new();
    restored.import(&mut backup.as_slice()).unwrap();
    assert_eq!(restored.feed_bounds().unwrap(), (1, summary.feed_head));
    // The copy is one moment: each order's version, its history and its feed events agree, and
    // the feed is whole up to the head.
    let feed = restored.feed(0, 1_000_000, usize::MAX).unwrap();
    assert_eq!(feed.len() as u64, summary.feed_head);
    assert!(feed
        .iter()
        .enumerate()
        .all(|(i, e)| e.offset == i as u64 + 1));
    let mut events: HashMap<String, u64> = HashMap::new();
    for e in &feed {
        *events.entry(e.subject.clone()).or_default() += 1;
    }
    let page = restored
        .list(&ListQuery {
            definition: Some("order".into()),
            page_size: 1000,
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(page.items.len(), 200);
    let mut changed = 0;
    for order in &page.items {
        let history = restored.history(order.id, 0, 100_000).unwrap();
        assert_eq!(history.len() as u64, order.version, "{}", order.id);
        assert_eq!(events[&order.id.to_string()], order.version, "{}", order.id);
        assert_eq!(order.data["notes"].as_u64().unwrap_or(0) + 1, order.version);
        let latest = original.instance(order.id).unwrap().unwrap();
        assert!(latest.version >= order.version);
        changed += usize::from(latest.version > order.version);
    }
    assert!(changed > 0, "some orders changed after the backup's moment");

    // The same backup cut short, into a sled store: refused at its end, after the first
    // batches were written — and the store it leaves refuses to open until deleted.
    let text = String::from_utf8(backup).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 1024);
    let cut = lines[..lines.len() - 1].join("\n") + "\n";
    let dir = tempfile::tempdir().unwrap();
    let config = SledConfig::new(dir.path().join("store"));
    let e = import_into(&config, &mut cut.as_bytes()).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "backup line {}: the backup ends without its end line",
            lines.len()
        )),
        "{e}"
    );
    let e = import_into(&config, &mut text.as_bytes()).unwrap_err();
    assert!(
        e.to_string()
            .contains("holds an import that did not finish"),
        "{e}"
    );
}

#[tokio::test]
async fn two_exports_at_once_are_refused_and_a_refusal_leaves_the_next_one_working() {
    let store = Arc::new(MemoryStore::new());
    let d = deciders();
    let engine =
        Engine::with_store(store.clone(), EngineConfig::in_memory(), definitions(&d), d).unwrap();
    engine
        .start(start_order("O-1", "10.00", "start-1"))
        .await
        .unwrap();
    /// Runs a nested export from inside the first one's output.
    struct Nested(Engine, Option<String>);
    impl Write for Nested {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.1.is_none() && buf.starts_with(b"{\"kind\"") {
                let e = self.0.export(&mut Vec::new()).unwrap_err();
                self.1 = Some(e.to_string());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut nested = Nested(engine.clone(), None);
    engine.export(&mut nested).unwrap();
    assert_eq!(
        nested.1.as_deref(),
        Some("storage I/O failed: another export of this store is running; try again when it ends")
    );
    let mut out = Vec::new();
    assert_eq!(engine.export(&mut out).unwrap().feed_head, 1);
}
