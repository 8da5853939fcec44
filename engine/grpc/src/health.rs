//! `grpc.health.v1.Health`: `Check` answers the current status of the server ("") or of a
//! service; `Watch` streams a service's status whenever it changes. Unlike tonic-health's
//! service, every `Watch` stream ends once the server starts shutting down (after sending the
//! final NOT_SERVING), so the load balancers' open watches — which every balancer keeps — do
//! not hold a graceful shutdown for its whole drain timeout.

use std::collections::BTreeMap;
use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Statuses by service name ("" is the whole server), and whether shutdown began.
#[derive(Clone, Debug, Default, PartialEq)]
struct State {
    statuses: BTreeMap<String, ServingStatus>,
    closing: bool,
}

/// Sets the statuses the health service reports.
#[derive(Clone)]
pub struct HealthReporter {
    state: watch::Sender<State>,
}

impl HealthReporter {
    /// Sets `service`'s status.
    pub fn set(&self, service: &str, status: ServingStatus) {
        self.state.send_modify(|s| {
            s.statuses.insert(service.to_string(), status);
        });
    }

    /// Sets every service SERVING or NOT_SERVING (the store's health), unless shutdown began.
    pub fn set_all(&self, status: ServingStatus) {
        self.state.send_if_modified(|s| {
            if s.closing {
                return false;
            }
            let mut changed = false;
            for current in s.statuses.values_mut() {
                changed |= *current != status;
                *current = status;
            }
            changed
        });
    }

    /// Marks every service NOT_SERVING and ends every `Watch` stream after it has sent that.
    pub fn close(&self) {
        self.state.send_modify(|s| {
            for status in s.statuses.values_mut() {
                *status = ServingStatus::NotServing;
            }
            s.closing = true;
        });
    }
}

/// The health service and its reporter.
pub fn service() -> (HealthReporter, HealthServer<HealthService>) {
    let (state, _) = watch::channel(State::default());
    let reporter = HealthReporter {
        state: state.clone(),
    };
    (reporter, HealthServer::new(HealthService { state }))
}

/// The service behind [`service`].
pub struct HealthService {
    state: watch::Sender<State>,
}

/// Most statuses a slow watcher may have waiting.
const WATCH_BUFFER: usize = 4;

#[tonic::async_trait]
impl HealthApi for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.state.borrow().statuses.get(&service) {
            Some(status) => Ok(Response::new(HealthCheckResponse {
                status: *status as i32,
            })),
            None => Err(Status::not_found(format!(
                "unknown service `{}`",
                switchyard_core::clip(&service, 128)
            ))),
        }
    }

    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let mut state = self.state.subscribe();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let (status, closing) = {
                    let s = state.borrow_and_update();
                    let status = s
                        .statuses
                        .get(&service)
                        .copied()
                        .unwrap_or(ServingStatus::ServiceUnknown);
                    (status, s.closing)
                };
                if last != Some(status) {
                    last = Some(status);
                    let answer = HealthCheckResponse {
                        status: status as i32,
                    };
                    if tx.send(Ok(answer)).await.is_err() {
                        return; // the watcher went away
                    }
                }
                if closing || state.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
