//! The gRPC listener's connections, bounded: at most `connections_max` at once (a connection
//! beyond it is closed at once, counted, and logged at most once a minute), a deadline for the
//! HTTP/2 handshake (a silent or half-sent preface is closed), and an idle deadline (a
//! connection that sends nothing — not even the answer to the server's keep-alive pings — is
//! closed). Stuck requests on a live connection are bounded by the request timeout and the
//! keep-alive pings, set on the tonic server.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::Stream;

/// The HTTP/2 connection preface (24 bytes) and the SETTINGS frame header that must follow it.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// How connections are bounded.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections at once.
    pub connections_max: usize,
    /// How long a new connection may take to send the HTTP/2 preface and settings.
    pub handshake_timeout: Duration,
    /// How long an established connection may send nothing at all.
    pub idle_timeout: Duration,
}

/// Accepted connections, within `limits`.
pub struct Incoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    refused: Arc<AtomicU64>,
    last_warning: Option<Instant>,
}

impl Incoming {
    /// Accepts from `listener`; `refused` counts the connections turned away at the limit.
    pub fn new(listener: TcpListener, limits: ConnectionLimits, refused: Arc<AtomicU64>) -> Self {
        Incoming {
            listener,
            slots: Arc::new(Semaphore::new(limits.connections_max)),
            limits,
            refused,
            last_warning: None,
        }
    }

    fn refuse(&mut self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            self.last_warning = Some(Instant::now());
            tracing::warn!(
                limit = self.limits.connections_max,
                "gRPC connection limit reached; refusing connections (logged once a minute)"
            );
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<Bounded>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let (socket, _) = match self.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => {
                    // Out of file descriptors, typically: report it and keep serving.
                    tracing::warn!(error = %e, "accepting a gRPC connection failed");
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                self.refuse();
                drop(socket);
                continue;
            };
            let _ = socket.set_nodelay(true);
            let limits = self.limits;
            return Poll::Ready(Some(Ok(Bounded {
                socket,
                _slot: slot,
                handshake_left: HANDSHAKE_BYTES,
                last_read: Instant::now(),
                deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
                idle: limits.idle_timeout,
            })));
        }
    }
}

/// One accepted connection; holds its slot until dropped.
pub struct Bounded {
    socket: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Handshake bytes still to come; the handshake deadline applies until they have.
    handshake_left: usize,
    last_read: Instant,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
}

impl Bounded {
    /// Whether the current deadline has passed (moving the idle deadline on when the
    /// connection was active since it was set).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.handshake_left > 0 {
                return true;
            }
            let next = self.last_read + self.idle;
            if next <= Instant::now() {
                return true;
            }
            self.deadline
                .as_mut()
                .reset(tokio::time::Instant::from_std(next));
        }
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.socket).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    self.last_read = Instant::now();
                    if self.handshake_left > 0 {
                        self.handshake_left = self.handshake_left.saturating_sub(read);
                        if self.handshake_left == 0 {
                            let idle_until = tokio::time::Instant::now() + self.idle;
                            self.deadline.as_mut().reset(idle_until);
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                if self.handshake_left > 0 {
                    "the client did not complete the HTTP/2 handshake in time"
                } else {
                    "the connection was idle for too long"
                },
            ))),
            other => other,
        }
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Bounded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.socket.connect_info()
    }
}
