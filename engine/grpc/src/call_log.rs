//! One tower layer logs every call's outcome, for every service: the RPC (the `rpc` span the
//! server opens per call, with its path), who called (recorded into that span by the
//! authenticator), the time taken, and for a refusal its code and stable reason — at `debug`
//! for answers and refusals, at `warn` for failures that are the server's (UNAVAILABLE,
//! DATA_LOSS, INTERNAL). Handlers do not log their outcome themselves.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;
use tower::{Layer, Service};

/// The layer (see the module docs).
#[derive(Clone, Copy, Default)]
pub(crate) struct CallLogLayer;

impl<S> Layer<S> for CallLogLayer {
    type Service = CallLog<S>;
    fn layer(&self, inner: S) -> CallLog<S> {
        CallLog { inner }
    }
}

/// A service whose calls are logged.
#[derive(Clone)]
pub(crate) struct CallLog<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CallLog<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            match &response {
                // A refusal answers in the headers (gRPC's trailers-only response); an answer
                // (or a stream) carries its status in the trailers, after the body.
                Ok(r) => match tonic::Status::from_header_map(r.headers()) {
                    Some(status) if status.code() != Code::Ok => {
                        let reason = tonic_types::StatusExt::get_details_error_info(&status)
                            .map(|i| i.reason)
                            .unwrap_or_default();
                        match status.code() {
                            Code::Unavailable | Code::DataLoss | Code::Internal => {
                                tracing::warn!(micros, code = ?status.code(), %reason, message = status.message(), "failed")
                            }
                            code => tracing::debug!(micros, ?code, %reason, "refused"),
                        }
                    }
                    _ => tracing::debug!(micros, "answered"),
                },
                Err(_) => tracing::warn!(micros, "the call failed before it was answered"),
            }
            response
        })
    }
}
