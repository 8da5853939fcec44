//! The reference adapters answering the shipped rules' jobs in-process, end to end: stock
//! reserved and backordered (DOMAIN scenario 4), a carrier booked, a tracking event delivered
//! once, reservations released on cancel, and a warehouse that stays down raising an incident.

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use switchyard_core::*;
use switchyard_inventory::MemoryInventory;
use switchyard_shipping::{MemoryCarrier, TrackingEvent};

struct World {
    engine: Engine,
    clock: Arc<ManualClock>,
    inventory: Arc<MemoryInventory>,
    carrier: Arc<MemoryCarrier>,
}

async fn world(stock: &[(&str, u32)]) -> World {
    let rules_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let rules = RuleSet::load(&rules_dir, DeciderRegistry::new(), RuleLimits::default()).unwrap();
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
    World {
        engine,
        clock,
        inventory,
        carrier,
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
    let mut status = JobStatus::Activatable;
    for _ in 0..500 {
        let jobs = w.engine.jobs(order).await.unwrap();
        status = jobs[0].status;
        if status == JobStatus::Incident {
            break;
        }
        w.clock.advance(chrono::Duration::seconds(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, JobStatus::Incident);
    let job = &w.engine.jobs(order).await.unwrap()[0];
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
