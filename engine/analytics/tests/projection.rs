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
    config.job_poll_interval = Duration::from_millis(10);
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

/// raj's second lead: a quote for BETA in USD (one seal kit at the USD list price, under the
/// auto-approval limit), accepted; the order confirmed with all of it reserved.
async fn usd_order(s: &mut Story) -> InstanceId {
    let lead = s.lead("L-3", "raj").await;
    let quote = s
        .send(
            lead,
            "raj:sales_rep",
            "create_quote",
            json!({ "customer": "BETA", "currency": "USD", "valid_until": "2026-05-15",
            "lines": [{ "sku": "SEAL-KIT", "quantity": 1 }] }),
        )
        .await
        .started[0];
    s.send(quote, "raj:sales_rep", "submit", json!({})).await;
    s.send(quote, "raj:sales_rep", "send", json!({})).await;
    let order = s
        .send(quote, "raj:sales_rep", "accept", json!({}))
        .await
        .started[0];
    s.send(order, "raj:sales_rep", "submit", json!({})).await;
    s.job(
        "reserve_stock",
        json!({ "lines": [{ "sku": "SEAL-KIT", "reserved": 1 }] }),
    )
    .await;
    order
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// Every figure of the story, against numbers worked out by hand from the shipped price list
/// (rules/data/prices.json, pricing.json, returns.json):
///
/// - EUR order for ACME: 100 SEAL-KIT at 19.99 less the 8% tier (≥ 50) = 18.3908 → net
///   1839.08, tax 8.25% 151.72 (half up of 151.7241), line 1990.80; 10 PUMP-200 at ACME's
///   1190.00 less the 5% tier (≥ 10) = 1130.50 → net 11305.00, tax 932.66 (932.6625), line
///   12237.66. Total 14228.46, invoiced once when all was delivered, paid 5000.00 + 9228.46.
/// - USD order for BETA: 1 SEAL-KIT at 21.99, tax 1.81 (1.814175): 23.80.
/// - Return of 3 seal kits, not wanted: goods net 55.17 (55.1724), tax 4.55 (4.551525), less
///   the 15% restocking fee 8.28 (8.2755) = 46.89 net, tax 4.55 × 46.89 / 55.17 = 3.87
///   (3.8671…): refund 50.76, on 20 April (ISO week 17; the order was in week 14).
/// - Chargeback of 120.00 withdrawn on 20 April, then lost: 120.00 stays withdrawn.
/// - Net EUR: 14228.46 − 50.76 − 120.00 = 14057.70.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_figure_of_a_scripted_story_matches_hand_computed_numbers_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(at("2026-04-01T09:00:00Z")));
    let engine = open(&dir.path().join("store"), clock.clone()).await;
    let analytics = Analytics::temporary(config("Europe/Berlin")).unwrap();
    let follower = {
        let (a, e) = (analytics.clone(), engine.clone());
        tokio::spawn(async move { a.follow(&e).await })
    };
    let (mut s, _lead, _quote, order) = story(engine.clone(), clock.clone()).await;
    let usd = usd_order(&mut s).await;
    caught_up(&engine, &analytics).await;
    let all = Scope::All;
    let (first, april_end) = (date("2026-04-01"), date("2026-04-30"));

    // 1 April: three leads, two quotes, two orders in two currencies, never added up.
    let day = analytics.summary(&all, first, first).unwrap();
    assert_eq!(
        (day.counts.leads, day.counts.quotes, day.counts.orders),
        (3, 2, 2)
    );
    assert_eq!(day.revenue.len(), 2);
    assert_eq!(day.revenue["EUR"].ordered, d("14228.46"));
    assert_eq!(day.revenue["USD"].ordered, d("23.80"));
    // ... which is what the engine stored.
    assert_eq!(
        dec(&engine.get(order).await.unwrap().data["pricing"]["total"]),
        d("14228.46")
    );
    assert_eq!(
        dec(&engine.get(usd).await.unwrap().data["pricing"]["total"]),
        d("23.80")
    );
    let f = &day.funnel;
    assert_eq!(
        (
            f.leads,
            f.leads_quoted,
            f.leads_ordered,
            f.quotes,
            f.quotes_ordered
        ),
        (3, 2, 2, 2, 2)
    );
    assert_eq!(f.lead_to_quote_pct, Some(d("66.67")));
    assert_eq!(f.lead_to_order_pct, Some(d("66.67")));
    assert_eq!(f.quote_to_order_pct, Some(d("100.00")));
    // Finance decided the EUR quote three hours after it was submitted; the USD one needed no one.
    assert_eq!(day.approvals.len(), 1);
    let finance = &day.approvals["finance"];
    assert_eq!(
        (finance.decisions, finance.median, finance.p90),
        (1, Duration::from_secs(10_800), Duration::from_secs(10_800))
    );
    assert_eq!(analytics.backorders_open(&all).unwrap(), 1);
    let (alerts, total) = analytics.alerts(&all, clock.now(), 10).unwrap();
    assert_eq!(total, 1);
    assert_eq!(alerts[0].alert.kind, AlertKind::Backorder);
    assert_eq!(alerts[0].alert.instance, order.to_string());
    assert_eq!(alerts[0].alert.detail, "backordered: SEAL-KIT");
    // A rep sees their own figures: ana's EUR order, raj's two leads and USD order.
    let (ana, raj) = (Scope::Rep("ana".into()), Scope::Rep("raj".into()));
    let mine = analytics.summary(&ana, first, first).unwrap();
    assert_eq!(
        (mine.counts.leads, mine.counts.quotes, mine.counts.orders),
        (1, 1, 1)
    );
    assert_eq!(mine.revenue.keys().collect::<Vec<_>>(), ["EUR"]);
    let theirs = analytics.summary(&raj, first, first).unwrap();
    assert_eq!(
        (
            theirs.counts.leads,
            theirs.counts.quotes,
            theirs.counts.orders
        ),
        (2, 1, 1)
    );
    assert_eq!(theirs.revenue["USD"].ordered, d("23.80"));
    assert_eq!(theirs.funnel.lead_to_quote_pct, Some(d("50.00")));
    assert_eq!(analytics.backorders_open(&ana).unwrap(), 1);
    assert_eq!(analytics.alerts(&raj, clock.now(), 10).unwrap().1, 0);

    let (ret, dispute) = finish(&mut s, order).await;
    caught_up(&engine, &analytics).await;
    assert_eq!(
        analytics.backorders_open(&all).unwrap(),
        0,
        "the backorder arrived"
    );
    let april = analytics.summary(&all, first, april_end).unwrap();
    let eur = &april.revenue["EUR"];
    assert_eq!(
        (eur.invoiced, eur.paid, eur.refunded),
        (d("14228.46"), d("14228.46"), d("50.76"))
    );
    assert_eq!(
        (eur.withdrawn, eur.reinstated, eur.chargebacks_lost),
        (d("120.00"), d("0"), d("0"))
    );
    assert_eq!(april.revenue["USD"].paid, d("0"));
    assert_eq!(
        (
            april.counts.returns,
            april.counts.refunds,
            april.counts.chargebacks
        ),
        (1, 1, 1)
    );
    // ... as the engine stored them.
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
    assert_eq!((invoiced, paid), (eur.invoiced, eur.paid));
    assert_eq!(
        dec(&engine.get(ret).await.unwrap().data["refund"]["total"]),
        eur.refunded
    );
    // Evidence due within a day: the dispute is the most urgent alert; the refund is paid.
    let (alerts, total) = analytics.alerts(&all, clock.now(), 10).unwrap();
    assert_eq!(total, 1);
    assert_eq!(
        (alerts[0].alert.kind, alerts[0].severity),
        (AlertKind::DisputeDue, AlertSeverity::Critical)
    );
    assert_eq!(alerts[0].alert.instance, dispute.to_string());
    assert_eq!(alerts[0].alert.due, Some(at("2026-04-21T05:00:00Z")));
    assert_eq!(
        alerts[0].alert.rep, "ana",
        "a dispute counts for its order's rep"
    );

    s.send(
        dispute,
        "fin:finance",
        "accept",
        json!({ "note": "no evidence" }),
    )
    .await;
    caught_up(&engine, &analytics).await;
    let april = analytics.summary(&all, first, april_end).unwrap();
    let eur = &april.revenue["EUR"];
    assert_eq!(eur.chargebacks_lost, d("120.00"));
    assert_eq!(eur.net(), d("14057.70"));
    assert_eq!(
        analytics.alerts(&all, clock.now(), 10).unwrap().1,
        0,
        "nothing open"
    );

    // Weeks: the order in week 14, its refund and chargeback in week 17.
    let weeks = analytics
        .series(&all, first, april_end, Period::Week)
        .unwrap();
    let labels: Vec<&str> = weeks.iter().map(|w| w.label.as_str()).collect();
    assert_eq!(
        labels,
        ["2026-W14", "2026-W15", "2026-W16", "2026-W17", "2026-W18"]
    );
    assert_eq!((weeks[0].from, weeks[0].to), (first, date("2026-04-05")));
    assert_eq!(
        (weeks[4].from, weeks[4].to),
        (date("2026-04-27"), april_end)
    );
    assert_eq!(weeks[0].revenue["EUR"].ordered, d("14228.46"));
    assert_eq!(weeks[0].revenue["EUR"].paid, d("14228.46"));
    assert_eq!(weeks[0].revenue["EUR"].refunded, d("0"));
    assert_eq!(weeks[3].revenue["EUR"].refunded, d("50.76"));
    assert_eq!(weeks[3].revenue["EUR"].chargebacks_lost, d("120.00"));
    assert_eq!((weeks[3].counts.refunds, weeks[3].counts.orders), (1, 0));
    assert!(weeks[1].revenue.is_empty() && weeks[2].revenue.is_empty());
    let days = analytics
        .series(&all, first, april_end, Period::Day)
        .unwrap();
    assert_eq!(days.len(), 30);
    let paid_on: Vec<(&str, Decimal)> = days
        .iter()
        .filter_map(|p| Some((p.label.as_str(), p.revenue.get("EUR")?.paid)))
        .filter(|(_, paid)| !paid.is_zero())
        .collect();
    assert_eq!(paid_on, [("2026-04-03", d("14228.46"))]);

    // Top performers.
    let reps = analytics
        .top(&all, first, april_end, Dimension::Rep, 5)
        .unwrap();
    let reps: Vec<String> = reps
        .iter()
        .map(|p| format!("{} {} {:?}", p.name, p.count, p.amounts))
        .collect();
    assert_eq!(
        reps,
        [r#"ana 1 {"EUR": 14228.46}"#, r#"raj 1 {"USD": 23.80}"#]
    );
    let products = analytics
        .top(&all, first, april_end, Dimension::Product, 5)
        .unwrap();
    let products: Vec<(&str, u64, Option<Decimal>)> = products
        .iter()
        .map(|p| (p.name.as_str(), p.count, p.quantity))
        .collect();
    assert_eq!(
        products,
        [
            ("SEAL-KIT", 2, Some(d("101"))),
            ("PUMP-200", 1, Some(d("10")))
        ]
    );
    let seal = &analytics
        .top(&all, first, april_end, Dimension::Product, 1)
        .unwrap()[0];
    assert_eq!(
        (seal.amounts["EUR"], seal.amounts["USD"]),
        (d("1990.80"), d("23.80"))
    );
    let customers = analytics
        .top(&all, first, april_end, Dimension::Customer, 1)
        .unwrap();
    assert_eq!(
        (customers[0].name.as_str(), customers[0].amounts["EUR"]),
        ("ACME", d("14228.46"))
    );
    let workflows = analytics
        .top(&all, first, april_end, Dimension::Workflow, 10)
        .unwrap();
    let workflows: Vec<(&str, u64)> = workflows
        .iter()
        .map(|p| (p.name.as_str(), p.count))
        .collect();
    assert_eq!(
        workflows,
        [
            ("lead", 3),
            ("quote", 2),
            ("sales_order", 2),
            ("shipment", 2),
            ("chargeback", 1),
            ("return", 1)
        ]
    );

    // Demand for seal kits in weeks 13–15 and the next two weeks.
    let demand = analytics
        .demand(&all, "SEAL-KIT", date("2026-03-23"), date("2026-04-12"), 2)
        .unwrap();
    let weekly: Vec<Decimal> = demand.weeks.iter().map(|w| w.quantity).collect();
    assert_eq!(weekly, [d("0"), d("101"), d("0")]);
    assert_eq!(
        demand
            .forecast
            .iter()
            .map(|w| w.week.as_str())
            .collect::<Vec<_>>(),
        ["2026-W16", "2026-W17"]
    );
    // Levels 0 → 50.5 → 25.25; one-week-ahead errors |101 − 0| and |0 − 50.5|.
    assert_eq!(demand.forecast[0].quantity, d("25.25"));
    assert_eq!(demand.mean_absolute_error, Some(d("75.75")));

    engine.shutdown().await;
    follower.await.unwrap().unwrap();
}

/// An event at 23:30 UTC on 1 April is on 2 April in Berlin (UTC+2 in summer) and on 1 April
/// in UTC: each projection cuts days in its own zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_are_cut_in_the_projections_time_zone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(at("2026-04-01T23:30:00Z")));
    let engine = open(&dir.path().join("store"), clock.clone()).await;
    let mut s = Story {
        engine: engine.clone(),
        clock,
        n: 0,
    };
    s.lead("L-1", "ana").await;
    let events = feed(&engine).await;
    let berlin = Analytics::temporary(config("Europe/Berlin")).unwrap();
    let utc = Analytics::temporary(config("UTC")).unwrap();
    berlin.apply(&events).unwrap();
    utc.apply(&events).unwrap();
    let leads = |a: &Analytics, day: &str| {
        a.summary(&Scope::All, date(day), date(day))
            .unwrap()
            .counts
            .leads
    };
    assert_eq!(
        (leads(&berlin, "2026-04-01"), leads(&berlin, "2026-04-02")),
        (0, 1)
    );
    assert_eq!(
        (leads(&utc, "2026-04-01"), leads(&utc, "2026-04-02")),
        (1, 0)
    );
    engine.shutdown().await;
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

const CHILD_DIR: &str = "SWITCHYARD_ANALYTICS_KILL_DIR";

/// The child of the kill test: applies `events.json` into the projection in `dir/analytics` in
/// batches of three, a moment apart, flushing every fourth, saying `APPLIED <offset>` after
/// each; then waits to be killed. Does nothing unless started by that test.
#[test]
fn projecting_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let events: Vec<FeedEvent> =
        serde_json::from_slice(&std::fs::read(dir.join("events.json")).unwrap()).unwrap();
    let analytics = Analytics::open(&dir.join("analytics"), config("Europe/Berlin")).unwrap();
    for (i, batch) in events.chunks(3).enumerate() {
        let offset = analytics.apply(batch).unwrap();
        // As sled's own flusher would, now and then: what follows may be lost to the kill.
        if i % 4 == 0 {
            analytics.flush().unwrap();
        }
        println!("APPLIED {offset}");
        // Slowly enough that the kill lands well before the end.
        std::thread::sleep(Duration::from_millis(20));
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// SIGKILL in the middle of projecting, then a restart: the projection is exactly some prefix
/// of the feed (no event counted twice, none half-counted), and catching up from there equals
/// a rebuild record for record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_in_the_middle_of_projecting_then_a_restart_counts_nothing_twice() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(at("2026-04-01T09:00:00Z")));
    let engine = open(&dir.path().join("store"), clock.clone()).await;
    let (mut s, _, _, order) = story(engine.clone(), clock.clone()).await;
    finish(&mut s, order).await;
    let events = feed(&engine).await;
    drop(s);
    engine.shutdown().await;
    std::fs::write(
        dir.path().join("events.json"),
        serde_json::to_vec(&events).unwrap(),
    )
    .unwrap();

    let half = events[events.len() / 2].offset;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "projecting_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let seen = std::io::BufRead::lines(stdout)
        .map_while(Result::ok)
        .filter_map(|l| {
            l.split_once("APPLIED ")
                .and_then(|(_, n)| n.trim().parse::<u64>().ok())
        })
        .find(|offset| *offset >= half)
        .expect("the child projects");
    child.kill().unwrap();
    child.wait().unwrap();

    let restarted =
        Analytics::open(&dir.path().join("analytics"), config("Europe/Berlin")).unwrap();
    let at_kill = restarted.offset();
    assert!(
        at_kill > 0 && at_kill < events.len() as u64,
        "{at_kill} (seen {seen})"
    );
    let prefix = Analytics::temporary(config("Europe/Berlin")).unwrap();
    prefix.apply(&events[..at_kill as usize]).unwrap();
    assert_eq!(
        restarted.dump().unwrap(),
        prefix.dump().unwrap(),
        "exactly the first {at_kill} events"
    );
    restarted.apply(&events).unwrap();
    let rebuilt = Analytics::temporary(config("Europe/Berlin")).unwrap();
    rebuilt.apply(&events).unwrap();
    assert_eq!(restarted.dump().unwrap(), rebuilt.dump().unwrap());
}

/// The credit hold routes a high-severity message to finance's dashboard: a notice for fay
/// (finance) alone, gone when the order ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_routed_to_the_dashboard_is_a_notice_for_its_recipient_until_its_instance_ends() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(at("2026-04-01T09:00:00Z")));
    let engine = open(&dir.path().join("store"), clock.clone()).await;
    engine.register_channel("dashboard", Arc::new(DashboardChannel));
    let analytics = Analytics::temporary(config("Europe/Berlin")).unwrap();
    let follower = {
        let (a, e) = (analytics.clone(), engine.clone());
        tokio::spawn(async move { a.follow(&e).await })
    };
    let (s, _, _, order) = story(engine.clone(), clock.clone()).await;
    let fay = Scope::Rep("fay".into());
    let mut notices = Vec::new();
    for _ in 0..500 {
        caught_up(&engine, &analytics).await;
        notices = analytics.alerts(&fay, clock.now(), 10).unwrap().0;
        if !notices.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(notices.len(), 1, "{notices:#?}");
    let notice = &notices[0];
    assert_eq!(
        (notice.alert.kind, notice.severity),
        (AlertKind::Notice, AlertSeverity::High)
    );
    assert_eq!(notice.alert.instance, order.to_string());
    assert_eq!(notice.alert.definition, "sales_order");
    assert!(
        notice.alert.detail.contains("credit"),
        "{}",
        notice.alert.detail
    );
    assert_eq!(
        analytics
            .alerts(&Scope::Rep("raj".into()), clock.now(), 10)
            .unwrap()
            .1,
        0
    );
    // Listed for a week.
    let later = clock.now() + chrono::Duration::days(8);
    assert!(analytics.alerts(&fay, later, 10).unwrap().0.is_empty());

    engine
        .cancel(CancelRequest::new(
            order,
            Actor::new("root", &["admin"]),
            "cancel-order",
        ))
        .await
        .unwrap();
    caught_up(&engine, &analytics).await;
    assert!(
        analytics
            .alerts(&fay, clock.now(), 10)
            .unwrap()
            .0
            .is_empty(),
        "the order ended"
    );
    drop(s);
    engine.shutdown().await;
    follower.await.unwrap().unwrap();
}
