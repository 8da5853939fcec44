//! Plain HTTP/1.1 listeners (the metrics endpoint) on a maintained stack — hyper, with an
//! axum router — with the limits every listener of the server has: a connection limit
//! (connections beyond it are closed at once, counted, and logged at most once a minute), a
//! deadline for reading a request's headers, a deadline for the whole exchange, and no
//! keep-alive (each scrape is one request). A listener may speak TLS (the dashboard, when
//! `[tls]` is configured): the handshake counts against the connection's deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The limits of an HTTP listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Most connections served at once.
    pub connections_max: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long one connection may last, from accept to the end of its response.
    pub connection_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connections_max: 64,
            header_read_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` under `limits` until the task is dropped; `refused` counts
/// the connections turned away at the limit.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    refused: Arc<AtomicU64>,
    name: &'static str,
) {
    serve_with(listener, router, limits, refused, name, None).await
}

/// [`serve`], over TLS when `tls` is given.
pub async fn serve_with(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    refused: Arc<AtomicU64>,
    name: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let mut last_warning: Option<Instant> = None;
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!(listener = name, error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.fetch_add(1, Ordering::Relaxed);
            if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                last_warning = Some(Instant::now());
                tracing::warn!(
                    listener = name,
                    limit = limits.connections_max,
                    "connection limit reached; refusing connections (logged once a minute)"
                );
            }
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .keep_alive(false);
                b
            };
            let exchange = async {
                match tls {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(socket), service)
                            .await;
                    }
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            limits.header_read_timeout,
                            acceptor.accept(socket),
                        );
                        if let Ok(Ok(stream)) = handshake.await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(limits.connection_timeout, exchange).await;
            drop(slot);
        });
    }
}
