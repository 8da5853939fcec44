//! A job worker in its own process: it long-polls a running server over gRPC for the shipped
//! configuration's jobs (`reserve_stock`, `release_stock`, `book_carrier`, `check_credit`,
//! `capture_payment`, `refund_payment`) and answers each with the reference adapters of
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
use switchyard_client::pb;
use switchyard_client::pb::job_service_client::JobServiceClient;
use switchyard_credit::{Account, MemoryCreditSystem};
use switchyard_inventory::MemoryInventory;
use switchyard_payments::MemoryPaymentProvider;
use switchyard_shipping::MemoryCarrier;
use tonic::transport::Channel;

/// The job types of the shipped configuration.
const JOB_TYPES: [&str; 6] = [
    "reserve_stock",
    "release_stock",
    "book_carrier",
    "check_credit",
    "capture_payment",
    "refund_payment",
];

/// The reference adapters a worker answers with.
struct Adapters {
    inventory: MemoryInventory,
    carrier: MemoryCarrier,
    credit: MemoryCreditSystem,
    payments: MemoryPaymentProvider,
}

impl Adapters {
    fn answer(&self, job: &pb::ActivatedJob) -> Result<serde_json::Value, String> {
        let payload: serde_json::Value = serde_json::from_str(&job.payload_json)
            .map_err(|e| format!("payload_json is not JSON: {e}"))?;
        let key = &job.job_id;
        match job.job_type.as_str() {
            "reserve_stock" | "release_stock" => {
                switchyard_inventory::answer(&self.inventory, &job.job_type, key, &payload)
            }
            "book_carrier" => switchyard_shipping::answer(&self.carrier, key, &payload),
            "check_credit" => switchyard_credit::answer(&self.credit, &payload),
            "capture_payment" | "refund_payment" => {
                switchyard_payments::answer(&self.payments, &job.job_type, key, &payload)
            }
            other => Err(format!("this worker does not answer {other} jobs")),
        }
    }
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Long-polls for jobs and answers them; returns after `rounds` polls (`None`: forever).
/// Returns how many jobs it completed and how many it failed.
async fn work(
    channel: Channel,
    token: &str,
    adapters: &Adapters,
    rounds: Option<usize>,
) -> Result<(usize, usize)> {
    let mut client = JobServiceClient::new(channel);
    let (mut completed, mut failed) = (0, 0);
    let mut round = 0;
    while rounds.is_none_or(|r| round < r) {
        round += 1;
        let jobs = client
            .activate_jobs(authed(
                token,
                pb::ActivateJobsRequest {
                    job_types: JOB_TYPES.iter().map(|t| t.to_string()).collect(),
                    worker: "example-worker".into(),
                    max_jobs: 16,
                    lease: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                    wait: Some(prost_types::Duration {
                        seconds: 20,
                        nanos: 0,
                    }),
                },
            ))
            .await
            .context("activating jobs")?
            .into_inner()
            .jobs;
        for job in jobs {
            match adapters.answer(&job) {
                Ok(result) => {
                    let done = client
                        .complete_job(authed(
                            token,
                            pb::CompleteJobRequest {
                                job_id: job.job_id.clone(),
                                lease_token: job.lease_token.clone(),
                                result_json: result.to_string(),
                            },
                        ))
                        .await;
                    match done {
                        Ok(answer) => {
                            let r = answer.into_inner().result.unwrap_or_default();
                            println!(
                                "{} {} → {} {}: {}",
                                job.job_type, job.job_id, r.instance_id, r.state, r.reason
                            );
                            completed += 1;
                        }
                        // Refused (a stale lease, the instance moved on): the job is offered
                        // again or resolved elsewhere; nothing to undo here.
                        Err(status) => eprintln!(
                            "{} {}: completion refused: {}",
                            job.job_type,
                            job.job_id,
                            status.message()
                        ),
                    }
                }
                Err(error) => {
                    eprintln!("{} {} failed: {error}", job.job_type, job.job_id);
                    let _ = client
                        .fail_job(authed(
                            token,
                            pb::FailJobRequest {
                                job_id: job.job_id.clone(),
                                lease_token: job.lease_token.clone(),
                                error,
                                retry_in: None,
                            },
                        ))
                        .await;
                    failed += 1;
                }
            }
        }
    }
    Ok((completed, failed))
}

fn adapters(stock: &[(String, u32)]) -> Adapters {
    let credit = MemoryCreditSystem::default();
    for customer in ["ACME", "BETA", "GOVT-AGENCY"] {
        credit.set(
            customer,
            Account {
                credit_limit: 50_000.into(),
                opening_balance: 0.into(),
            },
        );
    }
    Adapters {
        inventory: MemoryInventory::with_stock(stock.iter().map(|(s, q)| (s.as_str(), *q))),
        carrier: MemoryCarrier::new("dhl", "JD"),
        credit,
        payments: MemoryPaymentProvider::default(),
    }
}

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
    use switchyard_grpc::auth::token_hash;
    use switchyard_grpc::config::{ServerConfig, TokenConfig};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_answers_an_orders_stock_job_over_grpc() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig {
            data_dir: dir.path().join("data"),
            rules_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules"),
            ..Default::default()
        };
        config.grpc.listen = "127.0.0.1:0".parse().unwrap();
        config.metrics.enabled = false;
        config.store.durability = "flush".into();
        config.auth.tokens = ["system", "sales_rep"]
            .iter()
            .map(|role| TokenConfig {
                sha256: token_hash(&format!("t-{role}")),
                actor: format!("u-{role}"),
                roles: vec![role.to_string()],
            })
            .collect();
        let running = switchyard_grpc::server::start(config, |_| None)
            .await
            .unwrap();
        let channel = Channel::from_shared(format!("http://{}", running.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
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
