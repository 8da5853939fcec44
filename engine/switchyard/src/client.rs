//! Commands that talk to a running server over gRPC. The server address comes from `--addr`,
//! else `SWITCHYARD_ADDR`, else `http://127.0.0.1:50051`; the bearer token from `--token`,
//! else `SWITCHYARD_TOKEN`. Exit codes: 0 done; 1 refused by the server (a role, a state, a
//! rule); 2 bad input (the server named a field, or the command line was wrong); 3 the server
//! could not be reached or is unavailable.

use anyhow::Result;
use clap::{Args, Subcommand};
use switchyard_grpc::pb;
use tonic::transport::Channel;
use tonic::Code;

/// Where the server is, and who calls it.
#[derive(Args)]
pub struct Connection {
    /// The server's gRPC address (default: SWITCHYARD_ADDR, else http://127.0.0.1:50051).
    #[arg(long, global = true)]
    addr: Option<String>,
    /// The bearer token (default: SWITCHYARD_TOKEN).
    #[arg(long, global = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
pub enum ClockCommand {
    /// Print the engine's time, and whether it is the manual test clock.
    Show,
    /// Move a test server's manual clock forward (e.g. `48h`, `7d`, `90m`) and fire every
    /// timer due meanwhile. Needs an admin token.
    Advance {
        /// How far: a duration such as 48h, 7d, 90m, 30s (combinations like 1d12h too).
        by: String,
    },
}

/// A failure as the exit code it maps to, after printing it.
fn exit_code(status: &tonic::Status) -> i32 {
    let reason = tonic_types::StatusExt::get_details_error_info(status)
        .map(|i| i.reason)
        .unwrap_or_default();
    eprintln!(
        "refused ({:?}{}): {}",
        status.code(),
        if reason.is_empty() {
            String::new()
        } else {
            format!(", {reason}")
        },
        status.message()
    );
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => 2,
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown => 3,
        _ => 1,
    }
}

impl Connection {
    async fn channel(&self) -> Result<Channel, i32> {
        let addr = self
            .addr
            .clone()
            .or_else(|| std::env::var("SWITCHYARD_ADDR").ok())
            .unwrap_or_else(|| "http://127.0.0.1:50051".into());
        let endpoint = Channel::from_shared(addr.clone()).map_err(|e| {
            eprintln!("--addr {addr}: {e}");
            2
        })?;
        endpoint
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| {
                eprintln!("cannot reach the server at {addr}: {e}");
                3
            })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("SWITCHYARD_TOKEN").ok());
        if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

fn time(t: Option<prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// Runs a `clock` command; returns the exit code.
pub fn clock(connection: Connection, what: ClockCommand) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = match connection.channel().await {
            Ok(c) => c,
            Err(code) => return Ok(code),
        };
        let mut client = pb::clock_service_client::ClockServiceClient::new(channel);
        match what {
            ClockCommand::Show => match client
                .get_clock(connection.request(pb::GetClockRequest {}))
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    println!(
                        "{} ({})",
                        time(r.now),
                        if r.manual {
                            "manual test clock"
                        } else {
                            "system clock"
                        }
                    );
                    Ok(0)
                }
                Err(status) => Ok(exit_code(&status)),
            },
            ClockCommand::Advance { by } => {
                let Some(step) = switchyard_core::definition::parse_duration(&by)
                    .filter(|d| *d > chrono::Duration::zero())
                else {
                    eprintln!("`{by}` is not a duration such as 48h, 7d, 90m or 30s");
                    return Ok(2);
                };
                let request = pb::AdvanceClockRequest {
                    by: Some(prost_types::Duration {
                        seconds: step.num_seconds(),
                        nanos: 0,
                    }),
                };
                match client.advance_clock(connection.request(request)).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        println!("{} ({} timer(s) fired)", time(r.now), r.timers_fired);
                        Ok(0)
                    }
                    Err(status) => Ok(exit_code(&status)),
                }
            }
        }
    })
}
