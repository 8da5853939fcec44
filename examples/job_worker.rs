//! A job worker in its own process: it long-polls a running server over gRPC for the shipped
//! configuration's jobs (`reserve_stock`, `release_stock`, `restock_returned`, `book_carrier`,
//! `check_credit`, `capture_payment`, `refund_payment`) and answers each with the reference
//! adapters of
//! `plugins/` — in-memory stock, a carrier, a credit system and a payment provider — through
//! the same `answer` functions the in-process handlers use. A failed answer fails the job
//! (retried after its backoff, then an incident). Replace the adapters with your ERP's.
//!
//! Run, beside `cargo run -p switchyard -- serve`:
//!
//! ```sh
//! SWITCHYARD_TOKEN=<a token with the system role> \
//!   cargo run -p switchyard-examples --example job_worker -- [ADDR] [SKU=QTY ...]
//! ```
//!
//! ADDR defaults to `http://127.0.0.1:50051`. The stock is what the SKU=QTY arguments give; a
//! SKU not given has none (its lines are backordered or cancelled by the rules' policy). The
//! credit system gives every shipped customer a 50,000 limit and no opening balance.

use anyhow::{Context, Result};
use tonic::transport::Channel;

#[path = "remote_worker.rs"]
mod remote_worker;
use remote_worker::{adapters, work, JOB_TYPES};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let mut stock = Vec::new();
    for arg in args {
        let (sku, qty) = arg.split_once('=').context("stock is given as SKU=QTY")?;
        stock.push((
            sku.to_string(),
            qty.parse().context("a quantity is a whole number")?,
        ));
    }
    let token = std::env::var("SWITCHYARD_TOKEN")
        .context("SWITCHYARD_TOKEN: a token with the system role")?;
    let channel = Channel::from_shared(addr.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    println!("worker polling {addr} for {}", JOB_TYPES.join(", "));
    work(channel, &token, &adapters(&stock), None).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use remote_worker::authed;
    use switchyard_client::pb;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_answers_an_orders_stock_job_over_grpc() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = [
            ("t-system", "u-system", "system"),
            ("t-sales_rep", "u-sales_rep", "sales_rep"),
        ];
        let (running, channel) = remote_worker::test_server(dir.path(), &tokens).await;
        let mut instances =
            pb::instance_service_client::InstanceServiceClient::new(channel.clone());
        let order = instances
            .start_instance(authed("t-sales_rep", pb::StartInstanceRequest {
                request_id: "o-1".into(),
                definition: "sales_order".into(),
                business_key: "O-1".into(),
                data_json: r#"{"customer": "BETA", "currency": "EUR", "lines": [{"sku": "SEAL-KIT", "quantity": 5}]}"#.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap()
            .instance_id;
        instances
            .send_command(authed(
                "t-sales_rep",
                pb::SendCommandRequest {
                    request_id: "o-1-submit".into(),
                    instance_id: order.clone(),
                    command: "submit".into(),
                    payload_json: String::new(),
                    expected_version: None,
                },
            ))
            .await
            .unwrap();
        let adapters = adapters(&[("SEAL-KIT".into(), 3)]);
        let (completed, failed) = work(channel.clone(), "t-system", &adapters, Some(1))
            .await
            .unwrap();
        assert_eq!((completed, failed), (1, 0));
        let got = instances
            .get_instance(authed(
                "t-sales_rep",
                pb::GetInstanceRequest { instance_id: order },
            ))
            .await
            .unwrap()
            .into_inner()
            .instance
            .unwrap();
        assert_eq!(got.state, "confirmed");
        let data: serde_json::Value = serde_json::from_str(&got.data_json).unwrap();
        // BETA takes no backorders: 3 of 5 reserved, 2 cancelled.
        assert_eq!(
            (
                data["lines"][0]["reserved"].clone(),
                data["lines"][0]["cancelled"].clone()
            ),
            (serde_json::json!("3"), serde_json::json!("2"))
        );
        running.shutdown().await.unwrap();
    }
}
