//! `switchyard.v1.FeedService`: the event feed as a server stream. One task per stream reads
//! the engine's [`FeedReader`] (a page of events from the store at a time) and hands messages
//! to tonic through a small bounded channel, so a slow consumer holds at most that page (about
//! 1 MiB) and that channel in memory and never holds up a commit. Streams end when the server
//! begins to shut down, with UNAVAILABLE: the consumer reconnects after its last position.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::{CommandError, Engine, FeedReader, FeedRequest};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::actor_of;
use crate::convert::timestamp;
use crate::pb;
use crate::pb::subscribe_response::Item;
use crate::status::{bad_request, to_status, Wire};

/// Messages a stream may have waiting for its consumer.
const STREAM_BUFFER: usize = 16;
/// Seconds without an event before a heartbeat, unless the request says otherwise.
const HEARTBEAT_DEFAULT_SECONDS: u32 = 15;
/// The longest heartbeat interval a request may ask for.
const HEARTBEAT_MAX_SECONDS: u32 = 300;

/// The feed service: the engine, a flag the server raises when it starts to stop, and the
/// permits for open streams (`grpc.feed_streams_max`).
#[derive(Clone)]
pub(crate) struct FeedService {
    pub(crate) engine: Engine,
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) streams: Arc<Semaphore>,
    pub(crate) streams_max: usize,
}

type Answer = Result<pb::SubscribeResponse, Status>;

#[tonic::async_trait]
impl pb::feed_service_server::FeedService for FeedService {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Answer> + Send + 'static>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let heartbeat = match r.heartbeat_seconds {
            0 => HEARTBEAT_DEFAULT_SECONDS,
            n if n <= HEARTBEAT_MAX_SECONDS => n,
            n => {
                return Err(bad_request(
                    "heartbeat_seconds",
                    format!("{n} is above the maximum of {HEARTBEAT_MAX_SECONDS}"),
                ))
            }
        };
        let mut feed = FeedRequest::after(r.after_offset);
        feed.definitions = r.definitions;
        feed.event_types = r.event_types;
        let reader = self
            .engine
            .feed_as(&actor, feed)
            .map_err(|e| to_status(&e, Wire::NONE))?;
        // Each open stream holds a page of events: their number is bounded, not just per
        // connection.
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            let overloaded = CommandError::Overloaded {
                resource: "open feed streams (grpc.feed_streams_max)".into(),
                limit: self.streams_max,
            };
            to_status(&overloaded, Wire::NONE)
        })?;
        tracing::debug!(actor = %actor.id, after = r.after_offset, "feed stream opened");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(pump(
            reader,
            tx,
            Duration::from_secs(u64::from(heartbeat)),
            self.stopping.clone(),
            permit,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Moves events (and heartbeats, and the caught-up marker) from `reader` to the consumer until
/// it goes away, the feed fails, or the server stops; the stream's permit is held until then.
async fn pump(
    mut reader: FeedReader,
    tx: mpsc::Sender<Answer>,
    heartbeat: Duration,
    mut stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let mut caught_up = false;
    loop {
        if !caught_up && reader.position() >= reader.head() {
            caught_up = true;
            let marker = Item::CaughtUp(pb::FeedCaughtUp {
                position: reader.position(),
                head_offset: reader.head(),
            });
            if !send(&tx, Ok(marker)).await {
                return;
            }
        }
        let item = tokio::select! {
            // Cancel-safe: an event is returned as soon as it is taken from the page.
            next = tokio::time::timeout(heartbeat, reader.next()) => match next {
                Ok(Ok(event)) => Ok(Item::Event(event_message(&event))),
                Ok(Err(e)) => Err(to_status(&e, Wire::NONE)),
                Err(_) => Ok(Item::Heartbeat(pb::FeedHeartbeat {
                    head_offset: reader.head(),
                    position: reader.position(),
                    time: timestamp(chrono::Utc::now()),
                })),
            },
            _ = stopping.wait_for(|s| *s) => {
                Err(Status::unavailable("the server is shutting down; resume after your last position"))
            }
            // The consumer went away: free its permit now, not at the next heartbeat.
            () = tx.closed() => return,
        };
        let last = item.is_err();
        if !send(&tx, item).await || last {
            return;
        }
    }
}

/// Hands one message to the consumer; false when it has gone away.
async fn send(tx: &mpsc::Sender<Answer>, item: Result<Item, Status>) -> bool {
    let message = item.map(|item| pb::SubscribeResponse { item: Some(item) });
    tx.send(message).await.is_ok()
}

fn event_message(event: &switchyard_core::FeedEvent) -> pb::FeedEvent {
    pb::FeedEvent {
        offset: event.offset,
        id: event.id.clone(),
        source: event.source.clone(),
        r#type: event.kind.as_str().to_string(),
        subject: event.subject.clone(),
        time: timestamp(event.time),
        data_json: event.data_json.get().to_string(),
    }
}
