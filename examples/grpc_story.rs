//! The lead-to-cash story driven over gRPC from a Rust service, with the client crate only
//! (`switchyard-client`: the generated contract, no server). An admin token makes one token
//! per person of the story (`AccessService/CreateToken`); each command goes out with its
//! person's token, so the server checks every role and records every actor; a job worker
//! (the same one as `job_worker`, in a task here) answers the stock and carrier jobs. A lead is
//! qualified, its quote approved in two steps and accepted, the order released from its credit
//! hold, reserved, shipped, delivered, invoiced, paid and closed; then the order's history is
//! printed with each change's actor and the rule's reason, and the story's tokens are revoked.
//!
//! Run, beside `cargo run -p switchyard -- serve` (its shipped rules):
//!
//! ```sh
//! SWITCHYARD_TOKEN=<a token with the admin role> \
//!   cargo run -p switchyard-examples --example grpc_story -- [ADDR]
//! ```
//!
//! ADDR defaults to `http://127.0.0.1:50051`. Every run uses new business keys and request
//! ids, so it can be run again against the same server. Stop any other `job_worker` first: it
//! would answer the stock job from its own stock.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use switchyard_client::pb;
use switchyard_client::pb::access_service_client::AccessServiceClient;
use switchyard_client::pb::instance_service_client::InstanceServiceClient;
use tonic::transport::Channel;

#[path = "remote_worker.rs"]
mod remote_worker;
use remote_worker::{adapters, authed, work};

/// The people of the story: (actor, role). `wms` is the job worker.
const CAST: [(&str, &str); 6] = [
    ("ana", "sales_rep"),
    ("mia", "sales_manager"),
    ("fin", "finance"),
    ("cleo", "credit_controller"),
    ("lou", "logistics"),
    ("wms", "system"),
];

/// One change as the server records it: (actor, command, state, reason).
type Change = (String, String, String, String);

struct Story {
    instances: InstanceServiceClient<Channel>,
    /// Each person's token, in `CAST` order.
    tokens: Vec<String>,
    /// Makes this run's business keys and request ids new.
    run: String,
    sent: u32,
}

impl Story {
    fn token(&self, actor: &str) -> &str {
        let at = CAST.iter().position(|(a, _)| *a == actor).unwrap_or(0);
        &self.tokens[at]
    }

    fn request_id(&mut self) -> String {
        self.sent += 1;
        format!("story-{}-{}", self.run, self.sent)
    }

    async fn start(
        &mut self,
        who: &str,
        definition: &str,
        key: &str,
        data: Value,
    ) -> Result<String> {
        let request = pb::StartInstanceRequest {
            request_id: self.request_id(),
            definition: definition.into(),
            business_key: format!("{key}-{}", self.run),
            data_json: data.to_string(),
            ..Default::default()
        };
        let result = self
            .instances
            .start_instance(authed(self.token(who), request))
            .await
            .with_context(|| format!("{who} starting a {definition}"))?
            .into_inner()
            .result
            .context("StartInstance answered no result")?;
        println!(
            "{who:>4} starts a {definition} {}: {}",
            result.instance_id, result.reason
        );
        Ok(result.instance_id)
    }

    /// Sends a command as `who` and checks the state it leads to.
    async fn step(
        &mut self,
        id: &str,
        who: &str,
        command: &str,
        payload: Value,
        state: &str,
    ) -> Result<pb::CommandResult> {
        let request = pb::SendCommandRequest {
            request_id: self.request_id(),
            instance_id: id.into(),
            command: command.into(),
            payload_json: payload.to_string(),
            expected_version: None,
        };
        let result = self
            .instances
            .send_command(authed(self.token(who), request))
            .await
            .with_context(|| format!("{who} {command} on {id}"))?
            .into_inner()
            .result
            .context("SendCommand answered no result")?;
        println!("{who:>4} {command} → {}: {}", result.state, result.reason);
        if result.state != state {
            bail!("{who} {command} led to {}, not {state}", result.state);
        }
        Ok(result)
    }

    async fn get(&mut self, id: &str) -> Result<pb::Instance> {
        let token = self.token("ana").to_string();
        let request = pb::GetInstanceRequest {
            instance_id: id.into(),
        };
        self.instances
            .get_instance(authed(&token, request))
            .await
            .with_context(|| format!("reading {id}"))?
            .into_inner()
            .instance
            .context("GetInstance answered no instance")
    }

    /// Waits (up to 30 s) for the job worker to move `id` into `state`.
    async fn reaches(&mut self, id: &str, state: &str) -> Result<pb::Instance> {
        for _ in 0..300 {
            let instance = self.get(id).await?;
            if instance.state == state {
                return Ok(instance);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{id} did not reach {state} in 30 s: is the job worker running?")
    }

    async fn history(&mut self, id: &str) -> Result<Vec<Change>> {
        let token = self.token("fin").to_string();
        let (mut changes, mut page_token) = (Vec::new(), String::new());
        loop {
            let request = pb::ListInstanceHistoryRequest {
                instance_id: id.into(),
                page_size: 100,
                page_token,
            };
            let page = self
                .instances
                .list_instance_history(authed(&token, request))
                .await
                .with_context(|| format!("reading {id}'s history"))?
                .into_inner();
            changes.extend(page.entries.into_iter().map(|e| {
                let actor = e.actor.map(|a| a.id).unwrap_or_default();
                (actor, e.command, e.to_state, e.reason)
            }));
            if page.next_page_token.is_empty() {
                return Ok(changes);
            }
            page_token = page.next_page_token;
        }
    }
}

/// Drives one lead to a closed order; returns the order's history.
async fn story(channel: Channel, admin_token: &str) -> Result<Vec<Change>> {
    let run = format!("{:x}", chrono::Utc::now().timestamp_micros());
    // One token per person, made by the admin for this run (and revoked at its end).
    let mut access = AccessServiceClient::new(channel.clone());
    let (mut tokens, mut credentials) = (Vec::new(), Vec::new());
    for (actor, role) in CAST {
        let request = pb::CreateTokenRequest {
            request_id: format!("story-{run}-token-{actor}"),
            actor: actor.into(),
            roles: vec![role.into()],
            expires_at: None,
        };
        let made = access
            .create_token(authed(admin_token, request))
            .await
            .with_context(|| format!("making {actor}'s token (is SWITCHYARD_TOKEN an admin's?)"))?
            .into_inner();
        tokens.push(made.token);
        credentials.push(made.credential.map(|c| c.id).unwrap_or_default());
    }
    // The stock and carrier adapters, answering jobs over gRPC with the worker's token.
    let worker_token = tokens[5].clone();
    let worker_channel = channel.clone();
    let worker = tokio::spawn(async move {
        let adapters = adapters(&[("PUMP-200".into(), 12)]);
        work(worker_channel, &worker_token, &adapters, None).await
    });
    let mut s = Story {
        instances: InstanceServiceClient::new(channel),
        tokens,
        run: run.clone(),
        sent: 0,
    };
    let told = tell(&mut s).await;
    worker.abort();
    for id in credentials {
        let request = pb::RevokeTokenRequest {
            request_id: format!("story-{run}-revoke-{id}"),
            id,
        };
        access
            .revoke_token(authed(admin_token, request))
            .await
            .context("revoking the story's tokens")?;
    }
    told
}

async fn tell(s: &mut Story) -> Result<Vec<Change>> {
    let today = chrono::Utc::now().date_naive();
    let lead = s
        .start("ana", "lead", "L", json!({ "company": "ACME GmbH" }))
        .await?;
    s.step(
        &lead,
        "mia",
        "assign",
        json!({ "owner": "ana" }),
        "assigned",
    )
    .await?;
    s.step(&lead, "ana", "qualify", json!({}), "qualified")
        .await?;
    let quote_data = json!({
        "customer": "ACME",
        "currency": "EUR",
        "discount_pct": "12",
        "valid_until": (today + chrono::Duration::days(30)).to_string(),
        "lines": [{ "sku": "PUMP-200", "quantity": 12 }],
    });
    let quote = s
        .step(&lead, "ana", "create_quote", quote_data, "qualified")
        .await?
        .started_instance_ids
        .first()
        .cloned()
        .context("create_quote started no quote")?;
    // 12% off: the sales manager approves the discount, finance the net amount.
    s.step(&quote, "ana", "submit", json!({}), "pending_approval")
        .await?;
    s.step(&quote, "mia", "approve", json!({}), "pending_approval")
        .await?;
    s.step(&quote, "fin", "approve", json!({}), "approved")
        .await?;
    s.step(&quote, "ana", "send", json!({}), "sent").await?;
    let order = s
        .step(&quote, "ana", "accept", json!({}), "accepted")
        .await?
        .started_instance_ids
        .first()
        .cloned()
        .context("accept started no order")?;

    // ACME's open balance puts the order over its credit limit: a credit controller releases it.
    s.step(&order, "ana", "submit", json!({}), "credit_hold")
        .await?;
    let release = json!({ "note": "prepayment received" });
    s.step(&order, "cleo", "release", release, "checking_stock")
        .await?;
    s.reaches(&order, "confirmed").await?;

    // One shipment; the carrier adapter books it; delivered.
    let shipment = s
        .step(&order, "lou", "ship", json!({}), "fulfilling")
        .await?
        .started_instance_ids
        .first()
        .cloned()
        .context("ship started no shipment")?;
    s.step(&shipment, "lou", "book", json!({}), "booking")
        .await?;
    s.reaches(&shipment, "in_transit").await?;
    let delivered = json!({ "delivered_on": today.to_string() });
    s.step(&shipment, "lou", "deliver", delivered, "delivered")
        .await?;
    s.reaches(&order, "delivered").await?;

    // Invoiced, paid in full (the amount read back from the invoice), closed.
    s.step(&order, "fin", "invoice", json!({}), "invoiced")
        .await?;
    let data: Value = serde_json::from_str(&s.get(&order).await?.data_json)?;
    let invoice = &data["invoices"][0];
    let total = invoice["total"]
        .as_str()
        .context("the invoice has no total")?;
    let payment = json!({ "amount": total, "method": "bank_transfer", "reference": "BT-1" });
    s.step(&order, "fin", "record_payment", payment, "paid")
        .await?;
    s.step(&order, "fin", "close", json!({}), "closed").await?;

    let history = s.history(&order).await?;
    println!("\n{} {}:", data["number"].as_str().unwrap_or(&order), order);
    for (actor, command, state, reason) in &history {
        let command = if command.is_empty() { "start" } else { command };
        println!("  {actor:<36} {command:<20} {state:<16} {reason}");
    }
    Ok(history)
}

#[tokio::main]
async fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let token = std::env::var("SWITCHYARD_TOKEN")
        .context("SWITCHYARD_TOKEN: a token with the admin role")?;
    let channel = Channel::from_shared(addr.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    story(channel, &token).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_story_runs_from_a_lead_to_a_closed_order_over_grpc() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = [("t-admin", "root", "admin")];
        let (running, channel) = remote_worker::test_server(dir.path(), &tokens).await;
        let history = story(channel.clone(), "t-admin").await.unwrap();
        let steps: Vec<(&str, &str, &str)> = history
            .iter()
            .map(|(a, c, s, _)| (a.as_str(), c.as_str(), s.as_str()))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("ana", "", "created"),
                ("ana", "submit", "credit_hold"),
                ("cleo", "release", "checking_stock"),
                ("job-worker:example-worker", "stock_reserved", "confirmed"),
                ("lou", "ship", "fulfilling"),
                ("system:shipment", "shipment_shipped", "shipped"),
                ("system:shipment", "shipment_delivered", "delivered"),
                ("fin", "invoice", "invoiced"),
                ("fin", "record_payment", "paid"),
                ("fin", "close", "closed"),
            ]
        );
        assert_eq!(
            history[3].3,
            "all in stock; net 11938.08 ≤ 25000 → confirmed; its lead is won"
        );
        // The story's tokens are revoked: a second run makes its own.
        let mut access = AccessServiceClient::new(channel.clone());
        let listed = access
            .list_tokens(authed(
                "t-admin",
                pb::ListTokensRequest {
                    page_size: 100,
                    page_token: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .credentials;
        assert_eq!(listed.len(), CAST.len());
        assert!(listed.iter().all(|c| c.revoked_at.is_some()));
        story(channel, "t-admin").await.unwrap();
        running.shutdown().await.unwrap();
    }
}
