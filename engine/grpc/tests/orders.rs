//! The whole lead-to-cash story over the wire: every command a person sends goes through
//! gRPC with that person's token; the inventory and carrier adapters answer their jobs
//! in-process (as an embedding host would register them); every transition's actor and reason
//! is checked in the history the server returns.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::*;
use serde_json::{json, Value};
use switchyard_grpc::pb;
use switchyard_inventory::MemoryInventory;
use switchyard_shipping::MemoryCarrier;
use tonic::Code;

struct Story {
    server: TestServer,
    n: u32,
}

impl Story {
    async fn send(
        &mut self,
        id: &str,
        role: &str,
        command: &str,
        payload: Value,
    ) -> Result<pb::CommandResult, tonic::Status> {
        self.n += 1;
        self.server
            .instances()
            .send_command(as_role(
                role,
                pb::SendCommandRequest {
                    request_id: format!("story-{}", self.n),
                    instance_id: id.into(),
                    command: command.into(),
                    payload_json: payload.to_string(),
                    expected_version: None,
                },
            ))
            .await
            .map(|r| r.into_inner().result.unwrap())
    }

    async fn step(
        &mut self,
        id: &str,
        role: &str,
        command: &str,
        payload: Value,
        state: &str,
    ) -> pb::CommandResult {
        let result = self
            .send(id, role, command, payload)
            .await
            .unwrap_or_else(|e| panic!("{role} {command}: {e:?}"));
        assert_eq!(result.state, state, "{role} {command}: {}", result.reason);
        result
    }

    async fn get(&self, id: &str) -> pb::Instance {
        self.server
            .instances()
            .get_instance(as_role(
                "admin",
                pb::GetInstanceRequest {
                    instance_id: id.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .instance
            .unwrap()
    }

    async fn data(&self, id: &str) -> Value {
        serde_json::from_str(&self.get(id).await.data_json).unwrap()
    }

    /// Waits (up to 10 s) for the adapters to move `id` into `state`.
    async fn reaches(&self, id: &str, state: &str) {
        for _ in 0..500 {
            if self.get(id).await.state == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{id} never reached {state}: still {}",
            self.get(id).await.state
        );
    }

    /// (actor, command, state, reason) of every change, as the server tells it.
    async fn history(&self, id: &str) -> Vec<(String, String, String, String)> {
        self.server
            .instances()
            .list_instance_history(as_role(
                "admin",
                pb::ListInstanceHistoryRequest {
                    instance_id: id.into(),
                    page_size: 100,
                    page_token: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .entries
            .into_iter()
            .map(|e| (e.actor.unwrap().id, e.command, e.to_state, e.reason))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_story_from_lead_to_cash_over_grpc() {
    let server = TestServer::start().await;
    let engine = server.running().engine.clone();
    let inventory = Arc::new(MemoryInventory::with_stock([("PUMP-200", 6)]));
    switchyard_inventory::register(&engine, inventory.clone());
    switchyard_shipping::register(&engine, Arc::new(MemoryCarrier::new("dhl", "JD")));
    let mut s = Story { server, n: 0 };

    let lead = s
        .server
        .instances()
        .start_instance(as_role(
            "sales_rep",
            pb::StartInstanceRequest {
                request_id: "story-lead".into(),
                definition: "lead".into(),
                business_key: "L-1".into(),
                data_json: json!({ "company": "ACME GmbH" }).to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap()
        .instance_id;
    s.step(
        &lead,
        "sales_manager",
        "assign",
        json!({ "owner": "u-sales_rep" }),
        "assigned",
    )
    .await;
    s.step(&lead, "sales_rep", "qualify", json!({}), "qualified")
        .await;
    let valid_until = (chrono::Utc::now() + chrono::Duration::days(30))
        .date_naive()
        .to_string();
    let quote = s
        .step(&lead, "sales_rep", "create_quote", json!({ "customer": "ACME", "currency": "EUR", "discount_pct": "12", "valid_until": valid_until, "lines": [{ "sku": "PUMP-200", "quantity": 12 }] }), "qualified")
        .await
        .started_instance_ids[0]
        .clone();
    // Two-step approval: manager (discount), then finance (net).
    s.step(&quote, "sales_rep", "submit", json!({}), "pending_approval")
        .await;
    s.step(
        &quote,
        "sales_manager",
        "approve",
        json!({}),
        "pending_approval",
    )
    .await;
    s.step(&quote, "finance", "approve", json!({}), "approved")
        .await;
    s.step(&quote, "sales_rep", "send", json!({}), "sent").await;
    let order = s
        .step(&quote, "sales_rep", "accept", json!({}), "accepted")
        .await
        .started_instance_ids[0]
        .clone();

    // Credit hold; a sales rep may not release it, a credit controller does.
    s.step(&order, "sales_rep", "submit", json!({}), "credit_hold")
        .await;
    let refused = s
        .send(&order, "sales_rep", "release", json!({ "note": "please" }))
        .await;
    expect_refusal(refused, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    s.step(
        &order,
        "credit_controller",
        "release",
        json!({ "note": "prepayment received" }),
        "checking_stock",
    )
    .await;
    // The inventory adapter reserves 6 of 12; 6 backordered; confirmed; the lead won.
    s.reaches(&order, "confirmed").await;
    let data = s.data(&order).await;
    let year = chrono::Utc::now().format("%Y").to_string();
    assert_eq!(data["number"], format!("SO-{year}-000001"));
    assert_eq!(
        data["alerts"],
        json!([{ "kind": "backorder", "sku": "PUMP-200", "quantity": "6" }])
    );
    assert_eq!(s.get(&lead).await.state, "won");

    // A partial shipment, booked by the carrier adapter, delivered; the backorder follows.
    let first = s
        .step(&order, "logistics", "ship", json!({}), "fulfilling")
        .await
        .started_instance_ids[0]
        .clone();
    s.step(&first, "logistics", "book", json!({}), "booking")
        .await;
    s.reaches(&first, "in_transit").await;
    s.step(
        &first,
        "logistics",
        "deliver",
        json!({ "delivered_on": "2026-04-03" }),
        "delivered",
    )
    .await;
    assert_eq!(s.get(&order).await.state, "fulfilling");
    inventory.restock("PUMP-200", 6.into());
    s.step(
        &order,
        "logistics",
        "stock_arrived",
        json!({ "lines": [{ "sku": "PUMP-200", "quantity": 6 }] }),
        "fulfilling",
    )
    .await;
    let second = s
        .step(&order, "logistics", "ship", json!({}), "fulfilling")
        .await
        .started_instance_ids[0]
        .clone();
    s.step(&second, "logistics", "book", json!({}), "booking")
        .await;
    s.reaches(&second, "in_transit").await;
    s.step(
        &second,
        "logistics",
        "deliver",
        json!({ "delivered_on": "2026-04-09" }),
        "delivered",
    )
    .await;
    assert_eq!(s.get(&order).await.state, "delivered");

    // Invoice, a partial and a full payment (an overpayment refused), closed.
    s.step(&order, "finance", "invoice", json!({}), "invoiced")
        .await;
    s.step(
        &order,
        "finance",
        "record_payment",
        json!({ "amount": "5000.00", "method": "bank_transfer", "reference": "BT-1" }),
        "partially_paid",
    )
    .await;
    let over = s
        .send(
            &order,
            "finance",
            "record_payment",
            json!({ "amount": "99999.00", "method": "card", "reference": "CH-0" }),
        )
        .await;
    let status = expect_refusal(over, Code::FailedPrecondition, "DECISION_REFUSED");
    assert!(
        status.message().contains("OVERPAYMENT")
            || status.message().contains("more than the 7922.97 EUR open"),
        "{status:?}"
    );
    s.step(
        &order,
        "finance",
        "record_payment",
        json!({ "amount": "7922.97", "method": "card", "reference": "CH-1" }),
        "paid",
    )
    .await;
    s.step(&order, "finance", "close", json!({}), "closed")
        .await;

    let story = s.history(&order).await;
    let steps: Vec<(&str, &str, &str)> = story
        .iter()
        .map(|(a, c, st, _)| (a.as_str(), c.as_str(), st.as_str()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("u-sales_rep", "", "created"),
            ("u-sales_rep", "submit", "credit_hold"),
            ("u-credit_controller", "release", "checking_stock"),
            (
                "job-worker:in-process:reserve_stock",
                "stock_reserved",
                "confirmed"
            ),
            ("u-logistics", "ship", "fulfilling"),
            ("system:shipment", "shipment_shipped", "fulfilling"),
            ("system:shipment", "shipment_delivered", "fulfilling"),
            ("u-logistics", "stock_arrived", "fulfilling"),
            ("u-logistics", "ship", "fulfilling"),
            ("system:shipment", "shipment_shipped", "shipped"),
            ("system:shipment", "shipment_delivered", "delivered"),
            ("u-finance", "invoice", "invoiced"),
            ("u-finance", "record_payment", "partially_paid"),
            ("u-finance", "record_payment", "paid"),
            ("u-finance", "close", "closed"),
        ]
    );
    let reasons: Vec<&str> = story.iter().map(|(_, _, _, r)| r.as_str()).collect();
    assert_eq!(reasons[1], "credit: exposure 50922.97 EUR (open 38000 + uninvoiced 0 + this order 12922.97) > limit 50000 → credit_hold");
    assert_eq!(
        reasons[2],
        "credit hold released by u-credit_controller: prepayment received"
    );
    assert_eq!(reasons[3], "PUMP-200: 6 of 12 in stock, 6 backordered; net 11938.08 ≤ 25000 → confirmed; its lead is won");
    assert_eq!(
        reasons[11],
        "invoiced 12922.97 EUR (net 11938.08 + tax 984.89; policy: what is delivered)"
    );
    assert_eq!(reasons[14], "closed by u-finance");
    let lead_story = s.history(&lead).await;
    assert_eq!(
        lead_story.last().unwrap().3,
        format!("order {order} confirmed")
    );
    s.server.stop().await;
}
