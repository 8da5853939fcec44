//! `switchyard.v1.BackupService`: a backup of the running server's store, streamed. The export
//! runs on a blocking thread and hands the file to tonic in pieces through a small bounded
//! channel: a slow client slows only the export (the store's write tap spills to disk
//! meanwhile, `docs/backup.md`, up to its limit), never a commit, and holds at most that
//! channel in memory; a client that reads nothing for a minute ends its export.

use std::io::Write;
use std::pin::Pin;

use switchyard_core::{roles, CommandError, Engine};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::{actor_of, require_role};
use crate::pb;
use crate::status::{to_status, Wire};

/// Largest piece of the file in one message.
const CHUNK_BYTES: usize = 64 * 1024;
/// Pieces waiting for the client.
const STREAM_BUFFER: usize = 8;
/// How long the export waits for a client that reads nothing before it gives up, so a stalled
/// client cannot hold the one export (and the store's write tap) open.
const PIECE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The backup service.
#[derive(Clone)]
pub(crate) struct BackupService {
    pub(crate) engine: Engine,
}

type Answer = Result<pb::ExportStoreResponse, Status>;

/// Collects the export's output into pieces and sends each to the stream, waiting while the
/// client is behind; fails once the client is gone, which ends the export.
struct Pieces {
    tx: mpsc::Sender<Answer>,
    buffer: Vec<u8>,
    runtime: tokio::runtime::Handle,
}

impl Pieces {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        // Runs on a blocking thread (spawn_blocking), where waiting on the runtime is allowed.
        let sent = self.runtime.block_on(tokio::time::timeout(
            PIECE_WAIT,
            self.tx.send(Ok(pb::ExportStoreResponse { data })),
        ));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::other("the client went away")),
            Err(_) => Err(std::io::Error::other(format!(
                "the client read nothing for {} s",
                PIECE_WAIT.as_secs()
            ))),
        }
    }
}

impl Write for Pieces {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let n = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[tonic::async_trait]
impl pb::backup_service_server::BackupService for BackupService {
    type ExportStoreStream = Pin<Box<dyn Stream<Item = Answer> + Send + 'static>>;

    async fn export_store(
        &self,
        request: Request<pb::ExportStoreRequest>,
    ) -> Result<Response<Self::ExportStoreStream>, Status> {
        let actor = actor_of(&request)?;
        require_role(&actor, roles::ADMIN, "export the store")?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let engine = self.engine.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut pieces = Pieces {
                tx: tx.clone(),
                buffer: Vec::with_capacity(CHUNK_BYTES),
                runtime,
            };
            match engine.export(&mut pieces) {
                Ok(summary) => tracing::info!(
                    actor = %actor.id,
                    lines = summary.lines,
                    feed_head = summary.feed_head,
                    "store exported"
                ),
                Err(e) => {
                    tracing::warn!(actor = %actor.id, error = %e, "store export failed");
                    let status = to_status(&CommandError::Store(e), Wire::NONE);
                    let _ = pieces
                        .runtime
                        .block_on(tokio::time::timeout(PIECE_WAIT, tx.send(Err(status))));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
