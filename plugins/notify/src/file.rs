//! Channels that keep messages locally: a JSON-lines file, and the log.

use std::path::PathBuf;

use serde_json::json;
use switchyard_core::notification::{Channel, Notification, SendError, SendFuture};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// Appends each message as one JSON line (`id`, `instance`, `attempt`, `at`, and the message)
/// to a file, synced to disk before it counts as sent. A message retried after a crash may
/// appear twice, with the same `id`.
pub struct FileChannel {
    path: PathBuf,
    /// One writer at a time, so lines never interleave.
    lock: Mutex<()>,
}

impl FileChannel {
    /// A channel writing to `path` (created when missing).
    pub fn new(path: impl Into<PathBuf>) -> FileChannel {
        FileChannel {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }
}

impl Channel for FileChannel {
    fn send<'a>(&'a self, notification: &'a Notification) -> SendFuture<'a> {
        Box::pin(async move { self.write(notification).await.map_err(SendError::from) })
    }
}

impl FileChannel {
    async fn write(&self, notification: &Notification) -> Result<(), String> {
        {
            let mut line = serde_json::to_vec(&json!({
                "id": notification.id,
                "instance": notification.instance,
                "attempt": notification.attempt,
                "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "message": notification.message,
            }))
            .map_err(|e| format!("the message cannot be written as JSON: {e}"))?;
            line.push(b'\n');
            let _one = self.lock.lock().await;
            let failed = |e: std::io::Error| format!("{}: {e}", self.path.display());
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(failed)?;
            file.write_all(&line).await.map_err(failed)?;
            file.sync_data().await.map_err(failed)
        }
    }
}

/// Logs each message at info (`tracing`): its id, channel, address, category, severity and
/// subject — not its body. For development and demos.
#[derive(Debug, Default)]
pub struct LogChannel;

impl Channel for LogChannel {
    fn send<'a>(&'a self, notification: &'a Notification) -> SendFuture<'a> {
        Box::pin(async move {
            let m = &notification.message;
            tracing::info!(
                id = %notification.id,
                instance = %notification.instance,
                channel = %m.channel,
                to = %m.to,
                category = %m.category,
                severity = ?m.severity,
                subject = %m.subject,
                "notification"
            );
            Ok(())
        })
    }
}
