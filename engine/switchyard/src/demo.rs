//! `switchyard serve --demo`: the server on a fresh store with traffic a newcomer can watch on
//! the dashboard. Journeys run concurrently through the shipped rule set as the people of the
//! README would: a lead assigned and qualified, a quote priced, approved by whoever the
//! approval rule names, sent and accepted (or declined), the order released from a credit hold,
//! stock reserved (some of it backordered and arriving later), shipped, delivered by the
//! carrier's tracking event, invoiced, paid (sometimes in two parts), closed — and some of them
//! returned and refunded, or disputed by the cardholder. The reference adapters in `plugins/`
//! answer the jobs in-process (inventory, carrier, payments). Every decision is still the rule
//! set's: the demo only sends commands, each as a person with a role.
//!
//! A journey that a command refuses ends (logged at debug) and a new one starts: the traffic
//! never stops on one bad step.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use switchyard_core::{
    roles, Actor, CommandOutcome, CommandRequest, Engine, InstanceId, StartRequest,
};
use switchyard_inventory::MemoryInventory;
use tokio::task::JoinSet;

/// Customers and the currency they buy in (`rules/data/customers.json` has the first three;
/// the others get its defaults).
const CUSTOMERS: &[(&str, &str)] = &[
    ("ACME", "EUR"),
    ("BETA", "EUR"),
    ("GOVT-AGENCY", "USD"),
    ("NORDWIND", "EUR"),
    ("KESTREL", "USD"),
    ("ORBIT", "EUR"),
];
/// The sales reps (each journey's owner).
const REPS: &[&str] = &["ana", "ben", "chloe", "dev", "emma", "farid"];
/// Products sold; SEAL-KIT and PUMP-200 run short now and then (backorders).
const SKUS: &[&str] = &[
    "SKU-001", "SKU-004", "SKU-007", "SKU-012", "SKU-018", "SKU-023", "SKU-031", "SKU-040",
    "SEAL-KIT", "PUMP-200",
];
/// Longest one journey waits for an adapter's answer before it gives up.
const ADAPTER_WAIT: Duration = Duration::from_secs(60);

/// A number below `n`, from the operating system's randomness (through a v4 UUID).
fn below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n.max(1))) as u64
}

fn chance(pct: u64) -> bool {
    below(100) < pct
}

fn pick<'a>(from: &[&'a str]) -> &'a str {
    from[below(from.len() as u64) as usize]
}

/// A decimal the rules wrote as a string or a number; zero when absent.
fn dec(value: &Value) -> Decimal {
    match value {
        Value::String(s) => s.parse().unwrap_or_default(),
        Value::Number(n) => n.to_string().parse().unwrap_or_default(),
        _ => Decimal::ZERO,
    }
}

/// Starts the demo on `engine`: registers the reference adapters, makes an admin token for
/// the dashboard (returned, shown once) and runs `journeys` concurrent journeys, each step
/// about `pace` after the previous, until the returned task is aborted.
pub async fn start(
    engine: &Engine,
    journeys: usize,
    pace: Duration,
) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let inventory = Arc::new(MemoryInventory::with_stock(SKUS.iter().map(|sku| {
        let short = matches!(*sku, "SEAL-KIT" | "PUMP-200");
        (*sku, if short { 60 } else { 100_000 })
    })));
    switchyard_inventory::register(engine, inventory.clone());
    switchyard_shipping::register(
        engine,
        Arc::new(switchyard_shipping::MemoryCarrier::new("dhl", "JD")),
    );
    switchyard_payments::register(
        engine,
        Arc::new(switchyard_payments::MemoryPaymentProvider::default()),
    );
    let made = engine
        .create_credential(
            &Actor::new("system:demo", &[roles::ADMIN]),
            &format!("demo-{}", uuid::Uuid::new_v4()),
            "demo",
            &[roles::ADMIN.to_string()],
            None,
        )
        .await
        .context("making the demo's dashboard token")?;
    let engine = engine.clone();
    let task = tokio::spawn(async move {
        let mut set = JoinSet::new();
        for lane in 0..journeys {
            let mut bot = Bot {
                engine: engine.clone(),
                inventory: inventory.clone(),
                pace,
                lane,
                sent: 0,
            };
            set.spawn(async move {
                // Staggered, so the journeys do not move in step.
                tokio::time::sleep(pace.mul_f64(below(1000) as f64 / 250.0)).await;
                for journey in 1u64.. {
                    if let Err(e) = bot.journey(journey).await {
                        tracing::debug!(lane, journey, error = %e, "demo journey ended early");
                        bot.pause().await;
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
    });
    Ok((made.token, task))
}

/// One lane of traffic: journeys one after another.
struct Bot {
    engine: Engine,
    inventory: Arc<MemoryInventory>,
    pace: Duration,
    lane: usize,
    sent: u64,
}

impl Bot {
    /// Waits about one pace (half to one and a half).
    async fn pause(&self) {
        let factor = 0.5 + below(1000) as f64 / 1000.0;
        tokio::time::sleep(self.pace.mul_f64(factor)).await;
    }

    fn request_id(&mut self) -> String {
        self.sent += 1;
        format!("demo-{}-{}-{}", std::process::id(), self.lane, self.sent)
    }

    /// Sends `command` to `id` as `who` ("ana:sales_rep"), after a pause.
    async fn send(
        &mut self,
        id: InstanceId,
        who: &str,
        command: &str,
        payload: Value,
    ) -> Result<CommandOutcome> {
        self.pause().await;
        let (name, role) = who.split_once(':').context("who is id:role")?;
        let request =
            CommandRequest::new(id, command, Actor::new(name, &[role]), self.request_id())
                .payload(payload);
        self.engine
            .send(request)
            .await
            .with_context(|| format!("{command} as {who}"))
    }

    async fn read(&self, id: InstanceId) -> Result<(String, Value)> {
        let instance = self.engine.get(id).await?;
        Ok((instance.state, instance.data))
    }

    /// Waits until `id` is no longer in `state` (an adapter answered its job).
    async fn wait_leaves(&self, id: InstanceId, state: &str) -> Result<String> {
        let deadline = tokio::time::Instant::now() + ADAPTER_WAIT;
        loop {
            let (now, _) = self.read(id).await?;
            if now != state {
                return Ok(now);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{id} stayed {state} for {ADAPTER_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A lead to a closed order (or as far as the rules let it go), then perhaps a return or a
    /// dispute.
    async fn journey(&mut self, n: u64) -> Result<()> {
        let rep = pick(REPS);
        let seller = format!("{rep}:sales_rep");
        let (customer, currency) = CUSTOMERS[below(CUSTOMERS.len() as u64) as usize];
        self.pause().await;
        let request_id = self.request_id();
        let lead = self
            .engine
            .start(
                StartRequest::new("lead", Actor::new(rep, &["sales_rep"]), request_id)
                    .business_key(format!(
                        "L-{}-{:02}-{n:05}",
                        Utc::now().format("%y%m"),
                        self.lane
                    ))
                    .data(json!({ "company": customer })),
            )
            .await?
            .instance;
        self.send(lead, "mia:sales_manager", "assign", json!({ "owner": rep }))
            .await?;
        if chance(8) {
            self.send(
                lead,
                &seller,
                "disqualify",
                json!({ "disqualified_reason": "no budget this year" }),
            )
            .await?;
            return Ok(());
        }
        self.send(lead, &seller, "qualify", json!({})).await?;
        if chance(6) {
            self.send(
                lead,
                &seller,
                "lose",
                json!({ "lost_reason": "competitor" }),
            )
            .await?;
            return Ok(());
        }
        let mut lines = Vec::new();
        for _ in 0..=below(2) {
            let sku = pick(SKUS);
            if lines.iter().any(|l: &Value| l["sku"] == sku) {
                continue;
            }
            let quantity = match sku {
                "PUMP-200" => 1 + below(6),
                "SEAL-KIT" => 10 + below(50),
                _ => 1 + below(40),
            };
            lines.push(json!({ "sku": sku, "quantity": quantity }));
        }
        let valid_until = (Utc::now() + chrono::Duration::days(30)).date_naive();
        let quote = *self
            .send(
                lead,
                &seller,
                "create_quote",
                json!({ "customer": customer, "currency": currency,
                        "valid_until": valid_until.to_string(), "lines": lines }),
            )
            .await?
            .started
            .first()
            .context("create_quote starts a quote")?;
        let mut state = self.send(quote, &seller, "submit", json!({})).await?.state;
        // Whoever the approval rule asks for next approves (sequential: manager, then finance).
        for _ in 0..4 {
            if state != "pending_approval" {
                break;
            }
            state = match self
                .send(quote, "mia:sales_manager", "approve", json!({}))
                .await
            {
                Ok(out) => out.state,
                Err(_) => {
                    self.send(quote, "fin:finance", "approve", json!({}))
                        .await?
                        .state
                }
            };
        }
        if state != "approved" {
            bail!("quote {quote} is {state}, not approved");
        }
        self.send(quote, &seller, "send", json!({})).await?;
        if chance(12) {
            self.send(quote, &seller, "decline", json!({})).await?;
            return Ok(());
        }
        let order = *self
            .send(quote, &seller, "accept", json!({}))
            .await?
            .started
            .first()
            .context("accept starts an order")?;
        self.send(order, &seller, "submit", json!({})).await?;
        if !self.fulfil(order).await? {
            return Ok(());
        }
        if chance(14) {
            self.return_some(order).await?;
        } else if chance(7) {
            self.dispute(order).await?;
        }
        Ok(())
    }

    /// Takes a submitted order to `closed`; false when it was cancelled on the way.
    async fn fulfil(&mut self, order: InstanceId) -> Result<bool> {
        for _ in 0..60 {
            let (state, data) = self.read(order).await?;
            let lines = data["lines"].as_array().cloned().unwrap_or_default();
            match state.as_str() {
                "closed" => return Ok(true),
                "cancelled" => return Ok(false),
                "checking_credit" | "checking_stock" | "cancelling" => {
                    self.wait_leaves(order, &state).await?;
                }
                "credit_hold" => {
                    self.send(
                        order,
                        "cleo:credit_controller",
                        "release",
                        json!({ "note": "payment history checked" }),
                    )
                    .await?;
                }
                "pending_approval" => {
                    self.send(order, "mia:sales_manager", "approve", json!({}))
                        .await?;
                }
                "confirmed" | "fulfilling" => {
                    if lines.iter().any(|l| dec(&l["reserved"]) > Decimal::ZERO) {
                        self.ship(order).await?;
                    } else if lines.iter().any(|l| dec(&l["backordered"]) > Decimal::ZERO) {
                        let arrived: Vec<Value> = lines
                            .iter()
                            .filter(|l| dec(&l["backordered"]) > Decimal::ZERO)
                            .map(|l| json!({ "sku": l["sku"], "quantity": dec(&l["backordered"]).to_string() }))
                            .collect();
                        for l in &arrived {
                            let sku = l["sku"].as_str().unwrap_or_default();
                            self.inventory.restock(sku, dec(&l["quantity"]));
                        }
                        self.send(
                            order,
                            "lou:logistics",
                            "stock_arrived",
                            json!({ "lines": arrived }),
                        )
                        .await?;
                    } else if state == "confirmed" {
                        self.send(order, "fin:finance", "invoice", json!({}))
                            .await?;
                    } else {
                        self.pause().await;
                    }
                }
                "shipped" => self.pause().await,
                "delivered" => {
                    self.send(order, "fin:finance", "invoice", json!({}))
                        .await?;
                }
                "invoiced" | "partially_paid" => {
                    let due: Decimal = data["invoices"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|i| dec(&i["total"]) - dec(&i["paid"]))
                        .sum();
                    if due <= Decimal::ZERO {
                        self.pause().await;
                        continue;
                    }
                    let amount = if state == "invoiced" && chance(25) {
                        (due / Decimal::TWO).round_dp(2)
                    } else {
                        due
                    };
                    let method = if chance(50) { "bank_transfer" } else { "card" };
                    let reference =
                        format!("PAY-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
                    self.send(order, "fin:finance", "record_payment",
                        json!({ "amount": amount.to_string(), "method": method, "reference": reference }))
                        .await?;
                }
                "paid" => {
                    self.send(order, "fin:finance", "close", json!({})).await?;
                }
                other => bail!("order {order} is {other}: the demo does not know what to do"),
            }
        }
        bail!("order {order} did not close within 60 steps")
    }

    /// Ships what is reserved: the carrier adapter books it, its tracking event delivers it.
    async fn ship(&mut self, order: InstanceId) -> Result<()> {
        let shipment = *self
            .send(order, "lou:logistics", "ship", json!({}))
            .await?
            .started
            .first()
            .context("ship starts a shipment")?;
        self.send(shipment, "lou:logistics", "book", json!({}))
            .await?;
        self.wait_leaves(shipment, "booking").await?;
        self.pause().await;
        switchyard_shipping::tracking_event(
            &self.engine,
            shipment,
            switchyard_shipping::TrackingEvent::Delivered {
                event_id: uuid::Uuid::new_v4().to_string(),
                on: Utc::now().date_naive(),
            },
        )
        .await
        .context("the carrier's delivery event")?;
        Ok(())
    }

    /// The customer sends part of one line back: reviewed by the returns rule, received,
    /// inspected, restocked and refunded by the adapters.
    async fn return_some(&mut self, order: InstanceId) -> Result<()> {
        let (_, data) = self.read(order).await?;
        let line = data["lines"]
            .as_array()
            .and_then(|lines| lines.iter().find(|l| dec(&l["delivered"]) > Decimal::ZERO))
            .cloned()
            .context("nothing delivered to return")?;
        let quantity = dec(&line["delivered"]).min(Decimal::from(1 + below(3)));
        let reason = pick(&["not_wanted", "defective", "wrong_item"]);
        let today = Utc::now().date_naive().to_string();
        let ret = *self
            .send(
                order,
                "eva:customer_service",
                "request_return",
                json!({ "reason_code": reason, "requested_on": today,
                        "lines": [{ "sku": line["sku"], "quantity": quantity.to_string() }] }),
            )
            .await?
            .started
            .first()
            .context("request_return starts a return")?;
        let state = self
            .send(ret, "eva:customer_service", "review", json!({}))
            .await?
            .state;
        if state != "approved" {
            return Ok(());
        }
        self.send(
            ret,
            "lou:logistics",
            "receive",
            json!({ "received_on": today }),
        )
        .await?;
        let scrap = if reason == "defective" {
            Decimal::ONE
        } else {
            Decimal::ZERO
        };
        let mut state = self
            .send(ret, "lou:logistics", "inspect",
                json!({ "lines": [{ "sku": line["sku"], "restock": (quantity - scrap).to_string(), "scrap": scrap.to_string() }] }))
            .await?
            .state;
        while state == "inspected" || state == "refund_pending" {
            state = self.wait_leaves(ret, &state).await?;
        }
        if state == "refunded" {
            self.send(ret, "eva:customer_service", "close", json!({}))
                .await?;
        }
        Ok(())
    }

    /// The cardholder disputes part of the payment; finance answers with evidence and the
    /// provider decides.
    async fn dispute(&mut self, order: InstanceId) -> Result<()> {
        let (_, data) = self.read(order).await?;
        let paid: Decimal = data["invoices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| dec(&i["paid"]))
            .sum();
        let amount = paid.min(Decimal::from(50 + below(400)));
        let due = Utc::now() + chrono::Duration::hours(12 + below(24 * 8) as i64);
        let chargeback = *self
            .send(order, "fin:finance", "open_dispute",
                json!({ "provider": "stripe", "dispute_id": format!("dp_demo_{}", uuid::Uuid::new_v4().simple()),
                        "kind": "chargeback", "reason_code": pick(&["product_not_received", "fraudulent", "duplicate"]),
                        "amount": amount.round_dp(2).to_string(), "evidence_due_by": due.to_rfc3339() }))
            .await?
            .started
            .first()
            .context("open_dispute starts a chargeback")?;
        if chance(30) {
            // Left open: it shows among the disputes due.
            return Ok(());
        }
        self.send(
            chargeback,
            "fin:finance",
            "submit_evidence",
            json!({ "evidence": "signed proof of delivery and the carrier's tracking history" }),
        )
        .await?;
        let outcome = if chance(60) { "won" } else { "lost" };
        self.send(
            chargeback,
            "fin:finance",
            "decided",
            json!({ "outcome": outcome }),
        )
        .await?;
        Ok(())
    }
}
