//! Feed export to NATS JetStream (`switchyard-nats`): every event of the engine's feed is
//! published, in feed order, to a JetStream stream the exporter owns.
//!
//! - **Subjects**: `<prefix>.<definition>.<type>`, the type without its `switchyard.` prefix —
//!   `switchyard.quote.instance.transitioned`, `switchyard.sales_order.job.created`; an event
//!   that names no definition (a job's, a notification's) goes to `<prefix>._.<type>`. The
//!   stream is created on first start with the subjects `<prefix>.>` (a stream that exists is
//!   used as it is).
//! - **Messages**: the event's JSON as the feed serves it (CloudEvents-shaped: `id`, `source`,
//!   `type`, `subject`, `time`, `data`, plus `offset`); headers `Nats-Msg-Id` = the event id (so
//!   JetStream drops a repeat within the stream's duplicate window) and `Switchyard-Offset`.
//! - **No gap, no duplicate across restarts**: the exporter resumes after the higher of the
//!   offset it last recorded durably (`offset_file`, written with fsync and an atomic rename
//!   after acknowledged publishes) and the offset of the stream's last message — so a crash
//!   between the broker's acknowledgement and the file write resends nothing, even after the
//!   duplicate window. A stream whose last message is past the feed's head (the store was
//!   restored from an older backup, or another engine writes to the stream) stops the exporter
//!   with an error rather than skipping events.
//! - **Back-pressure**: the exporter pulls from the durable feed, so the engine commits at full
//!   speed whatever the broker does; while the broker is down the exporter retries (1 s,
//!   doubling to 30 s) and then catches up. At most [`ExportConfig::in_flight`] publishes wait
//!   for their acknowledgement at once.
//! - **Feed retention**: events older than `engine.feed_retention` are gone; an exporter that
//!   fell that far behind stops with [`ExportError::Horizon`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use bytes::Bytes;
use switchyard_core::{CommandError, Engine, FeedEvent};
use tokio::sync::watch;

/// Where and how the feed is exported.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The JetStream stream (created when missing, with the subjects `<subject_prefix>.>`).
    pub stream: String,
    /// The first subject token (default `switchyard`).
    pub subject_prefix: String,
    /// The file keeping the last exported offset (written with fsync, replaced atomically).
    pub offset_file: PathBuf,
    /// Publishes awaiting their acknowledgement at once, at most (default 256).
    pub in_flight: usize,
}

impl ExportConfig {
    /// The defaults for `url`, `stream` and `offset_file`.
    pub fn new(url: impl Into<String>, stream: impl Into<String>, offset_file: PathBuf) -> Self {
        ExportConfig {
            url: url.into(),
            stream: stream.into(),
            subject_prefix: "switchyard".into(),
            offset_file,
            in_flight: 256,
        }
    }

    /// Names a field whose value NATS would refuse.
    pub fn check(&self) -> Result<(), String> {
        if self.stream.is_empty()
            || self
                .stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(format!(
                "`stream`: `{}` is not a JetStream stream name (no spaces, `.`, `*`, `>`, `/`)",
                self.stream
            ));
        }
        if self.subject_prefix.is_empty()
            || self
                .subject_prefix
                .split('.')
                .any(|t| t.is_empty() || !t.chars().all(subject_char))
        {
            return Err(format!(
                "`subject_prefix`: `{}` is not a subject (dot-separated tokens of letters, digits, `_` and `-`)",
                self.subject_prefix
            ));
        }
        if self.in_flight == 0 || self.in_flight > 10_000 {
            return Err("`in_flight`: between 1 and 10000".into());
        }
        Ok(())
    }
}

fn subject_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Why the exporter stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The configuration is not usable.
    #[error("NATS export: {0}")]
    Config(String),
    /// The stream already holds events past the feed's head.
    #[error("NATS export: stream `{stream}` already holds offset {stream_offset}, past the feed's head {head}: was the store restored from an older backup, or does another engine publish there? Refusing to skip events")]
    Ahead {
        /// The stream.
        stream: String,
        /// The offset of its last message.
        stream_offset: u64,
        /// The feed's head.
        head: u64,
    },
    /// The events after the exported offset are no longer retained.
    #[error("NATS export: the feed no longer holds the events after offset {after} (it starts at {earliest}; see engine.feed_retention)")]
    Horizon {
        /// The last exported offset.
        after: u64,
        /// The feed's earliest retained offset.
        earliest: u64,
    },
    /// The engine's store failed in a way retrying does not mend.
    #[error("NATS export: {0}")]
    Engine(CommandError),
    /// The offset file cannot be read or written.
    #[error("NATS export: offset file {path}: {error}")]
    OffsetFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: String,
    },
}

/// Something that ends one connection's run; the exporter reconnects after it.
#[derive(Debug)]
struct Transient(String);

/// The subject of `event`: `<prefix>.<definition>.<type without "switchyard.">`.
pub fn subject(prefix: &str, event: &FeedEvent) -> String {
    let data = event.data();
    let definition = match &data["definition"] {
        serde_json::Value::String(name) => name.as_str(),
        value => value["name"].as_str().unwrap_or("_"),
    };
    let definition = if !definition.is_empty() && definition.chars().all(subject_char) {
        definition
    } else {
        "_"
    };
    let kind = event.kind.as_str();
    format!(
        "{prefix}.{definition}.{}",
        kind.strip_prefix("switchyard.").unwrap_or(kind)
    )
}

/// Reads the recorded offset (0 when the file does not exist yet).
pub fn recorded_offset(path: &Path) -> Result<u64, ExportError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| ExportError::OffsetFile {
            path: path.into(),
            error: format!("`{}` is not an offset", text.trim()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(ExportError::OffsetFile {
            path: path.into(),
            error: e.to_string(),
        }),
    }
}

/// Writes `offset` durably: a synced temporary file renamed over the old one.
fn record_offset(path: &Path, offset: u64) -> Result<(), ExportError> {
    let failed = |e: std::io::Error| ExportError::OffsetFile {
        path: path.into(),
        error: e.to_string(),
    };
    let temporary = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary).map_err(failed)?;
        writeln!(file, "{offset}").map_err(failed)?;
        file.sync_all().map_err(failed)?;
    }
    std::fs::rename(&temporary, path).map_err(failed)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

/// A running exporter's progress, for health checks and tests.
#[derive(Clone, Default)]
pub struct Progress {
    exported: Arc<AtomicU64>,
    connected: Arc<std::sync::atomic::AtomicBool>,
}

impl Progress {
    /// The last offset the broker acknowledged.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Acquire)
    }

    /// Whether the exporter is connected to the broker now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// Exports the feed of `engine` until `stop` turns true (then it records its offset and
/// returns `Ok`), or until an error retrying cannot mend. Connection failures are retried.
pub async fn run(
    engine: Engine,
    config: ExportConfig,
    progress: Progress,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ExportError> {
    config.check().map_err(ExportError::Config)?;
    let mut recorded = recorded_offset(&config.offset_file)?;
    progress.exported.store(recorded, Ordering::Release);
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let outcome = tokio::select! {
            outcome = connected_run(&engine, &config, &progress, &mut recorded) => outcome,
            _ = stop.changed() => Ok(()),
        };
        progress.connected.store(false, Ordering::Release);
        // What the broker acknowledged is kept, whatever ended the run.
        let acked = progress.exported();
        if acked > recorded {
            record_offset(&config.offset_file, acked)?;
            recorded = acked;
        }
        match outcome {
            Ok(()) => return Ok(()),
            Err(Ok(Transient(why))) => {
                tracing::warn!(error = %why, retry_in = ?backoff, exported = acked, "NATS export interrupted; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(Err(fatal)) => {
                tracing::error!(error = %fatal, exported = acked, "NATS export stopped");
                return Err(fatal);
            }
        }
    }
}

type RunError = Result<Transient, ExportError>;

fn transient(what: &str, e: impl std::fmt::Display) -> RunError {
    Ok(Transient(format!("{what}: {e}")))
}

/// One connection's run: connect, find where to resume, publish until something fails.
async fn connected_run(
    engine: &Engine,
    config: &ExportConfig,
    progress: &Progress,
    recorded: &mut u64,
) -> Result<(), RunError> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        // This run reconnects itself, with backoff, from the offset the broker acknowledged.
        .max_reconnects(Some(0))
        .connect(config.url.as_str())
        .await
        .map_err(|e| transient("connecting", e))?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            ..Default::default()
        })
        .await
        .map_err(|e| transient("opening the stream", e))?;
    let state = stream
        .info()
        .await
        .map_err(|e| transient("reading the stream", e))?
        .state
        .clone();
    let last = state.last_sequence;
    // An empty stream (new, or every message aged out by the stream's own limits) says
    // nothing about where the export stands: the offset file does.
    let in_stream = if state.messages == 0 {
        0
    } else {
        let message = stream
            .get_raw_message(last)
            .await
            .map_err(|e| transient("reading the stream's last message", e))?;
        message
            .headers
            .get("Switchyard-Offset")
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .ok_or_else(|| {
                Err(ExportError::Config(format!(
                    "stream `{}` holds a message without a Switchyard-Offset header: give the export a stream of its own",
                    config.stream
                )))
            })?
    };
    let (earliest, head) = engine
        .feed_bounds()
        .map_err(|e| Err(ExportError::Engine(e)))?;
    if in_stream > head {
        return Err(Err(ExportError::Ahead {
            stream: config.stream.clone(),
            stream_offset: in_stream,
            head,
        }));
    }
    let start = (*recorded).max(in_stream);
    if start > *recorded {
        record_offset(&config.offset_file, start).map_err(Err)?;
        *recorded = start;
    }
    progress.exported.store(start, Ordering::Release);
    progress.connected.store(true, Ordering::Release);
    tracing::info!(stream = %config.stream, after = start, head, "NATS export connected");
    let mut feed = engine.subscribe(start).map_err(|e| match e {
        CommandError::FeedHorizon { .. } => Err(ExportError::Horizon {
            after: start,
            earliest,
        }),
        e => transient("subscribing to the feed", e),
    })?;
    // Publishes awaiting their acknowledgement, oldest first, with their offsets.
    let mut pending: VecDeque<(u64, PublishAckFuture)> = VecDeque::new();
    let mut last_recorded_at = tokio::time::Instant::now();
    loop {
        // Take the next event, unless the window is full; with nothing to read, settle the
        // acknowledgements so the offset moves on an idle feed too.
        let next = if pending.len() < config.in_flight {
            if pending.is_empty() {
                Some(feed.next().await)
            } else {
                tokio::select! {
                    biased;
                    event = feed.next() => Some(event),
                    _ = tokio::time::sleep(Duration::from_millis(5)) => None,
                }
            }
        } else {
            None
        };
        match next {
            Some(Ok(event)) => {
                let body = serde_json::to_vec(&event).map_err(|e| transient("encoding", e))?;
                let publish = jetstream::message::PublishMessage::build()
                    .payload(Bytes::from(body))
                    .message_id(&event.id)
                    .header("Switchyard-Offset", event.offset.to_string().as_str());
                let ack = js
                    .send_publish(subject(&config.subject_prefix, &event), publish)
                    .await
                    .map_err(|e| transient("publishing", e))?;
                pending.push_back((event.offset, ack));
            }
            Some(Err(CommandError::ShuttingDown)) => {
                settle(&mut pending, progress, usize::MAX).await?;
                return Ok(());
            }
            Some(Err(e)) => return Err(transient("reading the feed", e)),
            None => settle(&mut pending, progress, config.in_flight / 2).await?,
        }
        if last_recorded_at.elapsed() >= Duration::from_millis(200) {
            let acked = progress.exported();
            if acked > *recorded {
                record_offset(&config.offset_file, acked).map_err(Err)?;
                *recorded = acked;
            }
            last_recorded_at = tokio::time::Instant::now();
        }
    }
}

/// Awaits up to `count` of the oldest acknowledgements, in order.
async fn settle(
    pending: &mut VecDeque<(u64, PublishAckFuture)>,
    progress: &Progress,
    count: usize,
) -> Result<(), RunError> {
    for _ in 0..count.max(1) {
        let Some((offset, ack)) = pending.pop_front() else {
            return Ok(());
        };
        ack.await
            .map_err(|e| transient("waiting for the broker's acknowledgement", e))?;
        progress.exported.store(offset, Ordering::Release);
    }
    Ok(())
}
