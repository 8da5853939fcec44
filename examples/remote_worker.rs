//! The job worker the examples share: long-polls a server over gRPC for the shipped
//! configuration's jobs and answers each with the reference adapters of `plugins/`
//! (in-memory stock, a carrier, a credit system and a payment provider). `job_worker` runs it
//! on its own; `grpc_story` runs it beside the story it drives.

use anyhow::{Context, Result};
use switchyard_client::pb;
use switchyard_client::pb::job_service_client::JobServiceClient;
use switchyard_credit::{Account, MemoryCreditSystem};
use switchyard_inventory::MemoryInventory;
use switchyard_payments::MemoryPaymentProvider;
use switchyard_shipping::MemoryCarrier;
use tonic::transport::Channel;

/// The job types of the shipped configuration.
pub const JOB_TYPES: [&str; 7] = [
    "reserve_stock",
    "release_stock",
    "restock_returned",
    "book_carrier",
    "check_credit",
    "capture_payment",
    "refund_payment",
];

/// The reference adapters a worker answers with.
pub struct Adapters {
    inventory: MemoryInventory,
    carrier: MemoryCarrier,
    credit: MemoryCreditSystem,
    payments: MemoryPaymentProvider,
}

impl Adapters {
    pub fn answer(&self, job: &pb::ActivatedJob) -> Result<serde_json::Value, String> {
        let payload: serde_json::Value = serde_json::from_str(&job.payload_json)
            .map_err(|e| format!("payload_json is not JSON: {e}"))?;
        let key = &job.job_id;
        match job.job_type.as_str() {
            "reserve_stock" | "release_stock" | "restock_returned" => {
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

pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Long-polls for jobs and answers them; returns after `rounds` polls (`None`: forever).
/// Returns how many jobs it completed and how many it failed.
pub async fn work(
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
                                give_up: false,
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

pub fn adapters(stock: &[(String, u32)]) -> Adapters {
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

/// For the examples' tests: a server on the shipped rules in `dir`, accepting each
/// `(token, actor, role)`, and a channel connected to it.
#[cfg(test)]
pub async fn test_server(
    dir: &std::path::Path,
    tokens: &[(&str, &str, &str)],
) -> (switchyard_grpc::server::Running, Channel) {
    use switchyard_grpc::auth::token_hash;
    use switchyard_grpc::config::{ServerConfig, TokenConfig};
    let mut config = ServerConfig {
        data_dir: dir.join("data"),
        rules_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules"),
        ..Default::default()
    };
    config.grpc.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.enabled = false;
    config.dashboard.enabled = false;
    config.store.durability = "flush".into();
    config.auth.tokens = tokens
        .iter()
        .map(|(token, actor, role)| TokenConfig {
            sha256: token_hash(token),
            actor: actor.to_string(),
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
    (running, channel)
}
