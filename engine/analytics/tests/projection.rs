//! The projection on the shipped rule set (`rules/`), through a real engine: the figures
//! reconcile with what the engine stored; a restart in the middle, repeated events and a
//! rebuild give the same records; a changed definition rebuilds by itself.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use switchyard_analytics::*;
use switchyard_core::*;

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../rules")
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::from_str(s).unwrap()
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("a decimal string: {v}")),
    )
    .unwrap()
}

async fn open(dir: &Path, clock: Arc<ManualClock>) -> Engine {
    let mut config = EngineConfig::new(StoreConfig::Sled(SledConfig::new(dir)));
    config.clock = clock;
    config.background_tasks = false;
    Engine::open_with_rules(
        config,
        &rules_dir(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .await
    .unwrap()
}

struct Story {
    engine: Engine,
    clock: Arc<ManualClock>,
    n: u32,
}

impl Story {
    async fn send(
        &mut self,
        id: InstanceId,
        who: &str,
        command: &str,
        payload: Value,
    ) -> CommandOutcome {
        self.n += 1;
        let (name, role) = who.split_once(':').unwrap();
        let request = CommandRequest::new(
            id,
            command,
            Actor::new(name, &[role]),
            format!("r{}", self.n),
        )
        .payload(payload);
        self.engine
            .send(request)
            .await
            .unwrap_or_else(|e| panic!("{command} as {who}: {e}"))
    }

    async fn job(&self, job_type: &str, result: Value) {
        let job = self
            .engine
            .activate_jobs(ActivateJobs::new(
                job_type,
                "test",
                1,
                Duration::from_secs(60),
            ))
            .await
            .unwrap()
            .pop()
            .unwrap_or_else(|| panic!("a {job_type} job waits"));
        self.engine
            .complete_job(job.id, job.lease, result)
            .await
            .unwrap();
    }

    async fn lead(&mut self, key: &str, rep: &str) -> InstanceId {
        self.n += 1;
        let start = StartRequest::new(
            "lead",
            Actor::new(rep, &["sales_rep"]),
            format!("r{}", self.n),
        )
        .business_key(key)
        .data(json!({ "company": format!("{key} Ltd") }));
        let lead = self.engine.start(start).await.unwrap().instance;
        self.send(lead, "mia:sales_manager", "assign", json!({ "owner": rep }))
            .await;
        self.send(lead, &format!("{rep}:sales_rep"), "qualify", json!({}))
            .await;
        lead
    }
}

/// Two leads on 1 April; one quoted, approved by finance after three hours, accepted; its order
/// held for credit, released, 60 of 100 seal kits reserved (a backorder), shipped, the rest
/// arriving on 3 April, invoiced and paid in two parts; on 20 April a return refunded and a
/// chargeback lost.
async fn story(
    engine: Engine,
    clock: Arc<ManualClock>,
) -> (Story, InstanceId, InstanceId, InstanceId) {
    let mut s = Story {
        engine,
        clock,
        n: 0,
    };
    let lead = s.lead("L-1", "ana").await;
    s.lead("L-2", "raj").await;
    let quote = s
        .send(lead, "ana:sales_rep", "create_quote", json!({ "customer": "ACME", "currency": "EUR", "valid_until": "2026-05-15",
            "lines": [{ "sku": "SEAL-KIT", "quantity": 100 }, { "sku": "PUMP-200", "quantity": 10 }] }))
        .await
        .started[0];
    s.send(quote, "ana:sales_rep", "submit", json!({})).await;
    s.clock.advance(chrono::Duration::hours(3));
    s.send(quote, "fin:finance", "approve", json!({})).await;
    s.send(quote, "ana:sales_rep", "send", json!({})).await;
    let order = s
        .send(quote, "ana:sales_rep", "accept", json!({}))
        .await
        .started[0];
    s.send(order, "ana:sales_rep", "submit", json!({})).await;
    s.send(
        order,
        "cleo:credit_controller",
        "release",
        json!({ "note": "prepaid" }),
    )
    .await;
    s.job("reserve_stock", json!({ "lines": [{ "sku": "SEAL-KIT", "reserved": 60 }, { "sku": "PUMP-200", "reserved": 10 }] })).await;
    (s, lead, quote, order)
}

async fn finish(s: &mut Story, order: InstanceId) -> (InstanceId, InstanceId) {
    let first = s
        .send(order, "wh:logistics", "ship", json!({}))
        .await
        .started[0];
    s.send(first, "wh:logistics", "book", json!({})).await;
    s.job(
        "book_carrier",
        json!({ "carrier": "dhl", "tracking": "JD1" }),
    )
    .await;
    s.send(
        first,
        "wh:logistics",
        "deliver",
        json!({ "delivered_on": "2026-04-02" }),
    )
    .await;
    s.clock.set(at("2026-04-03T10:00:00Z"));
    s.send(
        order,
        "wh:logistics",
        "stock_arrived",
        json!({ "lines": [{ "sku": "SEAL-KIT", "quantity": 40 }] }),
    )
    .await;
    let second = s
        .send(order, "wh:logistics", "ship", json!({}))
        .await
        .started[0];
    s.send(second, "wh:logistics", "book", json!({})).await;
    s.job(
        "book_carrier",
        json!({ "carrier": "ups", "tracking": "1Z1" }),
    )
    .await;
    s.send(
        second,
        "wh:logistics",
        "deliver",
        json!({ "delivered_on": "2026-04-04" }),
    )
    .await;
    s.send(order, "fin:finance", "invoice", json!({})).await;
    let total = dec(&s.engine.get(order).await.unwrap().data["invoices"][0]["total"]);
    let part = Decimal::new(500_000, 2);
    for (amount, reference) in [(part, "BT-1"), (total - part, "CH-2")] {
        s.send(order, "fin:finance", "record_payment",
            json!({ "amount": amount.to_string(), "method": "bank_transfer", "reference": reference })).await;
    }
    s.clock.set(at("2026-04-20T09:00:00Z"));
    let ret = s
        .send(
            order,
            "eva:customer_service",
            "request_return",
            json!({ "reason_code": "not_wanted", "requested_on": "2026-04-20",
            "lines": [{ "sku": "SEAL-KIT", "quantity": 3 }] }),
        )
        .await
        .started[0];
    s.send(ret, "eva:customer_service", "review", json!({}))
        .await;
    s.send(
        ret,
        "wh:logistics",
        "receive",
        json!({ "received_on": "2026-04-21" }),
    )
    .await;
    s.send(
        ret,
        "wh:logistics",
        "inspect",
        json!({ "lines": [{ "sku": "SEAL-KIT", "restock": 2, "scrap": 1 }] }),
    )
    .await;
    s.job("restock_returned", json!({})).await;
    s.job("refund_payment", json!({ "reference": "re_1" }))
        .await;
    let dispute = s
        .send(order, "fin:finance", "open_dispute", json!({ "provider": "stripe", "dispute_id": "dp_1", "kind": "chargeback",
            "reason_code": "product_not_received", "amount": "120.00", "evidence_due_by": "2026-04-21T05:00:00Z" }))
        .await
        .started[0];
    (ret, dispute)
}

/// Waits until `analytics` reflects everything the engine committed.
async fn caught_up(engine: &Engine, analytics: &Analytics) {
    let (_, head) = engine.feed_bounds().unwrap();
    for _ in 0..500 {
        if analytics.offset() >= head {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("analytics stuck at {} of {head}", analytics.offset());
}

/// Every event of the feed, in offset order.
async fn feed(engine: &Engine) -> Vec<FeedEvent> {
    let (_, head) = engine.feed_bounds().unwrap();
    let mut subscription = engine.subscribe(0).unwrap();
    let mut events = Vec::new();
    while subscription.offset() < head {
        events.push(subscription.next().await.unwrap());
    }
    events
}

fn config(zone: &str) -> AnalyticsConfig {
    AnalyticsConfig {
        time_zone: zone.parse().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_figures_reconcile_with_what_the_engine_stored() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(at("2026-04-01T09:00:00Z")));
    let engine = open(&dir.path().join("store"), clock.clone()).await;
    let analytics = Analytics::temporary(config("Europe/Berlin")).unwrap();
    let follower = {
        let (a, e) = (analytics.clone(), engine.clone());
        tokio::spawn(async move { a.follow(&e).await })
    };
    let (mut s, _lead, _quote, order) = story(engine.clone(), clock.clone()).await;
    caught_up(&engine, &analytics).await;

    // 1 April, after the reservation: one order confirmed with a backorder.
    let day = analytics
        .summary(&Scope::All, date("2026-04-01"), date("2026-04-01"))
        .unwrap();
    let stored = engine.get(order).await.unwrap().data;
    assert_eq!(
        (day.counts.leads, day.counts.quotes, day.counts.orders),
        (2, 1, 1)
    );
    assert_eq!(day.revenue["EUR"].ordered, dec(&stored["pricing"]["total"]));
    assert_eq!(day.funnel.lead_to_quote_pct, Some(Decimal::new(5000, 2)));
    assert_eq!(day.funnel.quote_to_order_pct, Some(Decimal::new(10000, 2)));
    assert_eq!(day.approvals["finance"].decisions, 1);
    assert_eq!(
        day.approvals["finance"].median,
        Duration::from_secs(3 * 3600)
    );
    assert_eq!(analytics.backorders_open(&Scope::All).unwrap(), 1);
    let (alerts, total) = analytics.alerts(&Scope::All, clock.now(), 10).unwrap();
    assert_eq!(total, 1);
    assert_eq!(alerts[0].alert.kind, AlertKind::Backorder);
    assert_eq!(alerts[0].alert.instance, order.to_string());
    assert!(
        alerts[0].alert.detail.contains("SEAL-KIT"),
        "{}",
        alerts[0].alert.detail
    );

    let (ret, dispute) = finish(&mut s, order).await;
    caught_up(&engine, &analytics).await;
    assert_eq!(
        analytics.backorders_open(&Scope::All).unwrap(),
        0,
        "the backorder arrived"
    );
    let april = analytics
        .summary(&Scope::All, date("2026-04-01"), date("2026-04-30"))
        .unwrap();
    let stored = engine.get(order).await.unwrap().data;
    let invoiced: Decimal = stored["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| dec(&i["total"]))
        .sum();
    let paid: Decimal = stored["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| dec(&p["amount"]))
        .sum();
    let refund = dec(&engine.get(ret).await.unwrap().data["refund"]["total"]);
    let eur = &april.revenue["EUR"];
    assert_eq!(eur.invoiced, invoiced);
    assert_eq!(eur.paid, paid);
    assert_eq!(eur.refunded, refund);
    assert_eq!(eur.withdrawn, Decimal::new(12000, 2));
    assert_eq!(
        (
            april.counts.returns,
            april.counts.refunds,
            april.counts.chargebacks
        ),
        (1, 1, 1)
    );
    // Evidence due within a day: the dispute is the most urgent alert.
    let (alerts, _) = analytics.alerts(&Scope::All, clock.now(), 10).unwrap();
    assert_eq!(alerts[0].alert.kind, AlertKind::DisputeDue);
    assert_eq!(alerts[0].severity, AlertSeverity::Critical);
    assert_eq!(alerts[0].alert.instance, dispute.to_string());

    s.send(
        dispute,
        "fin:finance",
        "accept",
        json!({ "note": "no evidence" }),
    )
    .await;
    caught_up(&engine, &analytics).await;
    let april = analytics
        .summary(&Scope::All, date("2026-04-01"), date("2026-04-30"))
        .unwrap();
    let eur = &april.revenue["EUR"];
    assert_eq!(eur.chargebacks_lost, Decimal::new(12000, 2));
    assert_eq!(eur.net(), paid - refund - Decimal::new(12000, 2));
    assert!(
        analytics.alerts(&Scope::All, clock.now(), 10).unwrap().1 == 0,
        "nothing open"
    );

    // Daily and weekly series add up to the range; the top performers.
    let days = analytics
        .series(
            &Scope::All,
            date("2026-04-01"),
            date("2026-04-30"),
            Period::Day,
        )
        .unwrap();
    assert_eq!(days.len(), 30);
    let paid_by_day: Decimal = days
        .iter()
        .filter_map(|d| d.revenue.get("EUR"))
        .map(|r| r.paid)
        .sum();
    assert_eq!(paid_by_day, paid);
    let weeks = analytics
        .series(
            &Scope::All,
            date("2026-04-01"),
            date("2026-04-30"),
            Period::Week,
        )
        .unwrap();
    assert_eq!(weeks.first().unwrap().label, "2026-W14");
    assert_eq!(weeks.first().unwrap().from, date("2026-04-01"));
    assert_eq!(weeks.iter().map(|w| w.counts.leads).sum::<u64>(), 2);
    let reps = analytics
        .top(
            &Scope::All,
            date("2026-04-01"),
            date("2026-04-30"),
            Dimension::Rep,
            5,
        )
        .unwrap();
    assert_eq!(reps[0].name, "ana");
    assert_eq!(reps[0].amounts["EUR"], dec(&stored["pricing"]["total"]));
    let products = analytics
        .top(
            &Scope::All,
            date("2026-04-01"),
            date("2026-04-30"),
            Dimension::Product,
            1,
        )
        .unwrap();
    assert_eq!((products.len(), products[0].name.as_str()), (1, "SEAL-KIT"));
    assert_eq!(products[0].quantity, Some(Decimal::from(100)));
    let demand = analytics
        .demand(
            &Scope::All,
            "SEAL-KIT",
            date("2026-03-23"),
            date("2026-04-12"),
            2,
        )
        .unwrap();
    let weekly: Vec<Decimal> = demand.weeks.iter().map(|w| w.quantity).collect();
    assert_eq!(weekly, [Decimal::ZERO, Decimal::from(100), Decimal::ZERO]);
    assert_eq!(demand.forecast.len(), 2);
    assert_eq!(demand.forecast[0].week, "2026-W16");
    // Levels 0 → 50 → 25; one-week-ahead errors |100 − 0| and |0 − 50|.
    assert_eq!(demand.forecast[0].quantity, Decimal::from(25));
    assert_eq!(demand.mean_absolute_error, Some(Decimal::from(75)));

    engine.shutdown().await;
    follower.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_repeats_and_a_rebuild_give_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(at("2026-04-01T09:00:00Z")));
    let engine = open(&dir.path().join("store"), clock.clone()).await;
    let (mut s, _, _, order) = story(engine.clone(), clock.clone()).await;
    finish(&mut s, order).await;
    let events = feed(&engine).await;
    assert!(events.len() > 60, "{} events", events.len());

    // Live: applied in uneven overlapping batches, with a restart in the middle.
    let path = dir.path().join("analytics");
    let live = Analytics::open(&path, config("America/New_York")).unwrap();
    let half = events.len() / 2;
    for chunk in events[..half].chunks(7) {
        live.apply(chunk).unwrap();
    }
    live.apply(&events[half - 10..half]).unwrap(); // already applied: skipped
    drop(live);
    let live = Analytics::open(&path, config("America/New_York")).unwrap();
    assert_eq!(live.offset(), events[half - 1].offset);
    // A gap is refused, and nothing of its batch is written.
    let gap = live.apply(&[events[half].clone(), events[half + 2].clone()]);
    assert!(matches!(gap, Err(AnalyticsError::Gap { .. })), "{gap:?}");
    assert_eq!(live.offset(), events[half - 1].offset);
    let follower = {
        let (a, e) = (live.clone(), engine.clone());
        tokio::spawn(async move { a.follow(&e).await })
    };
    caught_up(&engine, &live).await;

    // Rebuilt: everything at once.
    let rebuilt = Analytics::temporary(config("America/New_York")).unwrap();
    rebuilt.apply(&events).unwrap();
    let april = |a: &Analytics| {
        a.summary(&Scope::All, date("2026-03-31"), date("2026-04-30"))
            .unwrap()
    };
    assert_eq!(april(&live), april(&rebuilt));
    assert_eq!(live.dump().unwrap(), rebuilt.dump().unwrap());
    assert_eq!(april(&live).counts.orders, 1);

    // The same store opened in another time zone is rebuilt by following the feed again.
    engine.shutdown().await;
    follower.await.unwrap().unwrap();
    drop((live, s, engine));
    let engine = open(&dir.path().join("store"), clock.clone()).await;
    let other = Analytics::open(&path, config("Asia/Tokyo")).unwrap();
    assert_eq!(other.offset(), 0, "cleared for the rebuild");
    let follower = {
        let (a, e) = (other.clone(), engine.clone());
        tokio::spawn(async move { a.follow(&e).await })
    };
    caught_up(&engine, &other).await;
    let fresh = Analytics::temporary(config("Asia/Tokyo")).unwrap();
    fresh.apply(&events).unwrap();
    assert_eq!(other.dump().unwrap(), fresh.dump().unwrap());
    engine.shutdown().await;
    follower.await.unwrap().unwrap();
}

#[test]
fn queries_refuse_a_range_backwards_or_too_long() {
    let analytics = Analytics::temporary(AnalyticsConfig::default()).unwrap();
    let err = analytics
        .summary(&Scope::All, date("2026-04-02"), date("2026-04-01"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "to: 2026-04-01 is before from (2026-04-02)"
    );
    let err = analytics
        .summary(&Scope::All, date("2000-01-01"), date("2026-01-01"))
        .unwrap_err();
    assert!(
        err.to_string().starts_with("to: a range spans at most"),
        "{err}"
    );
    let err = analytics
        .demand(&Scope::All, "X", date("2026-01-01"), date("2026-02-01"), 60)
        .unwrap_err();
    assert!(err.to_string().starts_with("horizon:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_the_feed_no_longer_holds_the_events_for_says_so_instead_of_counting_part() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(at("2026-04-01T09:00:00Z")));
    let engine = open(&dir.path().join("store"), clock.clone()).await;
    let mut s = Story {
        engine: engine.clone(),
        clock: clock.clone(),
        n: 0,
    };
    s.lead("L-1", "ana").await;
    // Past the feed's 30-day retention: the first events are purged.
    clock.advance(chrono::Duration::days(31));
    s.lead("L-2", "raj").await;
    assert!(engine.purge_feed().await.unwrap() > 0);
    let analytics = Analytics::temporary(AnalyticsConfig::default()).unwrap();
    let result = analytics.follow(&engine).await;
    assert!(
        matches!(
            result,
            Err(AnalyticsError::Feed(CommandError::FeedHorizon { .. }))
        ),
        "{result:?}"
    );
    let why = analytics.stalled().expect("stalled");
    assert!(why.contains("engine.feed_retention"), "{why}");
    assert_eq!(analytics.offset(), 0, "nothing of the rest was counted");
    engine.shutdown().await;
}
