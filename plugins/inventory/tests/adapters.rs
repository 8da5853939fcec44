//! The reference adapters answering the shipped rules' jobs in-process, end to end: stock
//! reserved and backordered (DOMAIN scenario 4), a carrier booked, a tracking event delivered
//! once, reservations released on cancel, a warehouse that stays down raising an incident, the
//! credit system's account deciding the credit rule, card captures (one declined) and a
//! refund of an overpayment.

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use switchyard_core::*;
use switchyard_credit::{Account, MemoryCreditSystem};
use switchyard_inventory::MemoryInventory;
use switchyard_payments::MemoryPaymentProvider;
use switchyard_shipping::{MemoryCarrier, TrackingEvent};

struct World {
    engine: Engine,
    clock: Arc<ManualClock>,
    inventory: Arc<MemoryInventory>,
    carrier: Arc<MemoryCarrier>,
    credit: Arc<MemoryCreditSystem>,
    payments: Arc<MemoryPaymentProvider>,
    _rules: tempfile::TempDir,
}

/// The shipped rules, with `(file, from, to)` edits to their data.
fn rules_with(edits: &[(&str, &str, &str)]) -> tempfile::TempDir {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules"),
        dir.path(),
    );
    for (file, from, to) in edits {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
    dir
}

async fn world(stock: &[(&str, u32)]) -> World {
    world_with(stock, &[]).await
}

async fn world_with(stock: &[(&str, u32)], edits: &[(&str, &str, &str)]) -> World {
    let rules_dir = rules_with(edits);
    let rules = RuleSet::load(
        rules_dir.path(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .unwrap();
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap(),
    ));
    let mut config = EngineConfig::new(StoreConfig::Memory);
    config.clock = clock.clone();
    config.background_tasks = false;
    config.job_poll_interval = Duration::from_millis(20);
    let engine = Engine::open(config, rules.definitions, rules.deciders)
        .await
        .unwrap();
    let inventory = Arc::new(MemoryInventory::with_stock(stock.iter().copied()));
    let carrier = Arc::new(MemoryCarrier::new("dhl", "JD"));
    switchyard_inventory::register(&engine, inventory.clone());
    switchyard_shipping::register(&engine, carrier.clone());
    let credit = Arc::new(MemoryCreditSystem::default());
    switchyard_credit::register(&engine, credit.clone());
    let payments = Arc::new(MemoryPaymentProvider::default());
    switchyard_payments::register(&engine, payments.clone());
    World {
        engine,
        clock,
        inventory,
        carrier,
        credit,
        payments,
        _rules: rules_dir,
    }
}

fn who(spec: &str) -> Actor {
    let (id, role) = spec.split_once(':').unwrap();
    Actor::new(id, &[role])
}

impl World {
    async fn send(
        &self,
        id: InstanceId,
        actor: &str,
        command: &str,
        payload: Value,
    ) -> CommandOutcome {
        let version = self.engine.get(id).await.unwrap().version;
        self.engine
            .send(
                CommandRequest::new(id, command, who(actor), format!("{id}-{command}-{version}"))
                    .payload(payload),
            )
            .await
            .unwrap_or_else(|e| panic!("{actor} {command}: {e}"))
    }

    async fn order(&self, customer: &str, lines: Value) -> InstanceId {
        let order = self
            .engine
            .start(
                StartRequest::new(
                    "sales_order",
                    who("ana:sales_rep"),
                    format!("start-{}", InstanceId::new()),
                )
                .data(json!({ "customer": customer, "currency": "EUR", "lines": lines })),
            )
            .await
            .unwrap()
            .instance;
        self.send(order, "ana:sales_rep", "submit", json!({})).await;
        order
    }

    /// Waits (up to 10 s) until `id`'s data passes `ready` (the adapters answer in the
    /// background); returns that data.
    async fn data_when(&self, id: InstanceId, ready: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..500 {
            let data = self.engine.get(id).await.unwrap().data;
            if ready(&data) {
                return data;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{id}'s data never got there: {}",
            self.engine.get(id).await.unwrap().data
        );
    }

    /// Moves the clock on until `id`'s (only) job has used up its retries.
    async fn until_incident(&self, id: InstanceId) -> Job {
        for _ in 0..500 {
            let job = self.engine.jobs(id).await.unwrap().remove(0);
            if job.status == JobStatus::Incident {
                return job;
            }
            self.clock.advance(chrono::Duration::seconds(30));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{id}'s job never became an incident");
    }

    /// Waits (up to 10 s) until `id` is in `state`: the adapters answer in the background.
    async fn reaches(&self, id: InstanceId, state: &str) -> Instance {
        for _ in 0..500 {
            let instance = self.engine.get(id).await.unwrap();
            if instance.state == state {
                return instance;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{id} never reached {state}: {:?}",
            self.engine.get(id).await.unwrap().state
        );
    }
}

fn units(n: u32) -> Decimal {
    Decimal::from(n)
}

#[tokio::test]
async fn the_adapters_reserve_backorder_book_deliver_and_release() {
    let w = world(&[("SEAL-KIT", 60)]).await;
    // 100 ordered, 60 in stock, ACME takes backorders: 60 reserved, 40 backordered.
    let order = w
        .order("ACME", json!([{ "sku": "SEAL-KIT", "quantity": 100 }]))
        .await;
    let confirmed = w.reaches(order, "confirmed").await;
    let line = &confirmed.data["lines"][0];
    assert_eq!(
        (line["reserved"].clone(), line["backordered"].clone()),
        (json!("60"), json!("40"))
    );
    assert_eq!(confirmed.data["alerts"][0]["quantity"], "40");
    assert_eq!(w.inventory.stock("SEAL-KIT").reserved, units(60));

    // A shipment booked by the carrier adapter; its delivery comes as a tracking event, twice.
    let shipment = w
        .send(order, "wh:logistics", "ship", json!({}))
        .await
        .started[0];
    w.send(shipment, "wh:logistics", "book", json!({})).await;
    let booked = w.reaches(shipment, "in_transit").await;
    assert_eq!(booked.data["tracking"], "JD000001");
    let delivered = TrackingEvent::Delivered {
        event_id: "evt-9".into(),
        on: NaiveDate::from_ymd_opt(2026, 4, 3).unwrap(),
    };
    let first = switchyard_shipping::tracking_event(&w.engine, shipment, delivered.clone())
        .await
        .unwrap();
    let again = switchyard_shipping::tracking_event(&w.engine, shipment, delivered)
        .await
        .unwrap();
    assert_eq!(first, again, "the same event twice is one delivery");
    let order_now = w.engine.get(order).await.unwrap();
    assert_eq!(order_now.data["lines"][0]["delivered"], "60");
    assert_eq!(w.carrier.booked(), 1);

    // A second order is cancelled after its reservation: the stock goes back.
    w.inventory.restock("PUMP-200", units(3));
    let other = w
        .order("BETA", json!([{ "sku": "PUMP-200", "quantity": 2 }]))
        .await;
    w.reaches(other, "confirmed").await;
    assert_eq!(w.inventory.stock("PUMP-200").available, units(1));
    w.send(
        other,
        "ana:sales_rep",
        "cancel_order",
        json!({ "reason": "customer withdrew" }),
    )
    .await;
    w.reaches(other, "cancelled").await;
    assert_eq!(w.inventory.stock("PUMP-200").available, units(3));
    assert_eq!(w.inventory.stock("PUMP-200").reserved, units(0));
    w.engine.shutdown().await;
}

#[tokio::test]
async fn a_warehouse_that_stays_down_raises_an_incident_and_the_order_does_not_confirm() {
    let w = world(&[("SEAL-KIT", 10)]).await;
    w.inventory.fail_next(1000, "warehouse system down");
    let order = w
        .order("BETA", json!([{ "sku": "SEAL-KIT", "quantity": 1 }]))
        .await;
    // reserve_stock: 3 retries, backoff 10 s doubling; the clock moves past each.
    let job = w.until_incident(order).await;
    assert_eq!(job.last_error.as_deref(), Some("warehouse system down"));
    let stuck = w.engine.get(order).await.unwrap();
    assert_eq!(stuck.state, "checking_stock");
    assert!(stuck.data.get("number").is_none());
    assert_eq!(
        w.inventory.stock("SEAL-KIT").available,
        units(10),
        "nothing reserved"
    );
    w.engine.shutdown().await;
}

#[tokio::test]
async fn with_credit_source_adapter_the_credit_systems_account_decides() {
    let w = world_with(
        &[("SEAL-KIT", 100)],
        &[(
            "data/orders.json",
            "\"credit_source\": \"reference_data\"",
            "\"credit_source\": \"adapter\"",
        )],
    )
    .await;
    // BETA's reference data would pass (limit 20,000, nothing open); its credit system says
    // 2,000 limit and 1,500 open.
    w.credit.set(
        "BETA",
        Account {
            credit_limit: units(2000),
            opening_balance: units(1500),
        },
    );
    let order = w
        .order("BETA", json!([{ "sku": "SEAL-KIT", "quantity": 30 }]))
        .await;
    let held = w.reaches(order, "credit_hold").await;
    assert_eq!(held.data["credit"]["limit"], "2000");
    let history = w.engine.history(order, 0, 0).await.unwrap();
    assert_eq!(history[1].to_state, "checking_credit");
    assert!(
        history[2].reason.starts_with("credit: exposure "),
        "{}",
        history[2].reason
    );
    assert!(
        history[2]
            .reason
            .contains("(open 1500 + uninvoiced 0 + this order "),
        "{}",
        history[2].reason
    );
    // An unknown customer is the job's failure, retried, then an incident.
    let unknown = w
        .order("GOVT-AGENCY", json!([{ "sku": "SEAL-KIT", "quantity": 1 }]))
        .await;
    w.until_incident(unknown).await;
    assert_eq!(
        w.engine.get(unknown).await.unwrap().state,
        "checking_credit"
    );
    w.engine.shutdown().await;
}

#[tokio::test]
async fn card_captures_declines_and_a_refunded_overpayment() {
    let w = world_with(
        &[("SEAL-KIT", 10)],
        &[(
            "data/orders.json",
            "\"overpayment\": \"refuse\"",
            "\"overpayment\": \"credit\"",
        )],
    )
    .await;
    // BETA is invoiced on order: invoiced as soon as it is confirmed.
    let order = w
        .order("BETA", json!([{ "sku": "SEAL-KIT", "quantity": 3 }]))
        .await;
    w.reaches(order, "confirmed").await;
    w.send(order, "fin:finance", "invoice", json!({})).await;
    let total = w.engine.get(order).await.unwrap().data["invoices"][0]["total"]
        .as_str()
        .unwrap()
        .to_string();
    // A declined card pays nothing; the pending amount is free again afterwards.
    w.payments.decline("tok_bad");
    w.send(
        order,
        "fin:finance",
        "capture_payment",
        json!({ "amount": total, "card": "tok_bad" }),
    )
    .await;
    let data = w
        .data_when(order, |d| d.get("declined_captures").is_some())
        .await;
    assert_eq!(data["declined_captures"][0]["reason"], "card declined");
    assert_eq!(data["pending_captures"], json!([]));
    // A good card pays the invoice in full.
    w.send(
        order,
        "fin:finance",
        "capture_payment",
        json!({ "amount": total, "card": "tok_visa" }),
    )
    .await;
    let data = w
        .data_when(order, |d| d["invoices"][0]["paid"] == json!(total))
        .await;
    assert_eq!(data["payments"][0]["method"], "card");
    assert_eq!(data["payments"][0]["reference"], "ch_000002");
    assert_eq!(w.payments.totals().0.to_string(), total);
    // A bank transfer paid twice: the second is kept as the customer's credit, and refunded.
    w.send(
        order,
        "fin:finance",
        "record_payment",
        json!({ "amount": "12.50", "method": "bank_transfer", "reference": "BT-2" }),
    )
    .await;
    assert_eq!(
        w.engine.get(order).await.unwrap().data["customer_credit"],
        "12.50"
    );
    w.send(
        order,
        "fin:finance",
        "refund_credit",
        json!({ "reference": "BT-2" }),
    )
    .await;
    let data = w.data_when(order, |d| d.get("refunds").is_some()).await;
    assert_eq!(data["refunds"][0]["amount"], "12.50");
    assert_eq!(data["refunds"][0]["reference"], "re_000001");
    assert!(data.get("refund_pending").is_none());
    assert_eq!(w.payments.totals().1, "12.50".parse::<Decimal>().unwrap());
    w.engine.shutdown().await;
}
