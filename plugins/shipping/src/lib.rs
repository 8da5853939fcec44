//! The shipping adapter for the shipped lead-to-cash rules.
//!
//! Booking a shipment creates a `book_carrier` job (`{ shipment, order_number, customer,
//! lines }`); [`register`] answers it in-process with a [`Carrier`], and the answer
//! (`{ carrier, tracking }`) becomes the shipment's `carrier_booked` command in the same
//! commit. A carrier's tracking events come back through [`tracking_event`]: a delivery becomes
//! the shipment's `deliver` command, sent as `system` with a request id made from the event, so
//! a carrier that sends the same event twice changes nothing the second time.
//!
//! The job id is the booking's idempotency key at the carrier: a [`Carrier`] must answer a
//! booking it has seen before with the same result. [`MemoryCarrier`] is the reference
//! implementation (tracking numbers in sequence, failures on demand); an ERP implements
//! [`Carrier`] over its carrier integration.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use serde_json::json;
use switchyard_core::{
    ActivatedJob, Actor, CommandError, CommandOutcome, CommandRequest, Engine, InstanceId,
};

/// The job type the shipped `shipment` definition creates.
pub const BOOK_CARRIER: &str = "book_carrier";

/// A booked shipment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Booking {
    /// One of the carriers the `shipment` definition knows: `dhl`, `ups`, `fedex`.
    pub carrier: String,
    /// The carrier's tracking number (at most 64 characters).
    pub tracking: String,
}

/// A carrier integration. Errors are messages: the job fails with it and is retried after its
/// backoff, then raised as an incident.
pub trait Carrier: Send + Sync + 'static {
    /// Books a pick-up for the shipment described by `job` (its payload). Called again with
    /// the same `key`, returns the first booking.
    fn book(&self, key: &str, shipment: &serde_json::Value) -> Result<Booking, String>;
}

/// Answers the shipped `book_carrier` jobs of `engine` with `carrier`, in-process.
pub fn register(engine: &Engine, carrier: Arc<dyn Carrier>) {
    engine.register_job_handler(BOOK_CARRIER, move |job: ActivatedJob| {
        let carrier = carrier.clone();
        async move { answer(&*carrier, &job.id.to_string(), &job.payload) }
    });
}

/// The answer to the `book_carrier` job `key` with `payload`: what `register` completes it
/// with, and what a worker in another process sends back with `CompleteJob`.
pub fn answer(
    carrier: &dyn Carrier,
    key: &str,
    payload: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let booking = carrier.book(key, payload)?;
    Ok(json!({ "carrier": booking.carrier, "tracking": booking.tracking }))
}

/// What a carrier reports about a shipment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackingEvent {
    /// Delivered to the customer on that day.
    Delivered {
        /// The carrier's id of the event (makes a repeated event harmless).
        event_id: String,
        /// The day of delivery.
        on: NaiveDate,
    },
}

/// Applies a carrier's tracking event to a shipment: a delivery sends the shipment `deliver`
/// as `system` (which reports the delivery to its order in the same commit). The request id is
/// `tracking:<shipment>:<event id>`, so the same event sent twice returns the first outcome.
pub async fn tracking_event(
    engine: &Engine,
    shipment: InstanceId,
    event: TrackingEvent,
) -> Result<CommandOutcome, CommandError> {
    match event {
        TrackingEvent::Delivered { event_id, on } => {
            let request = CommandRequest::new(
                shipment,
                "deliver",
                Actor::new("system:carrier-tracking", &[switchyard_core::roles::SYSTEM]),
                format!(
                    "tracking:{shipment}:{}",
                    switchyard_core::clip(&event_id, 64)
                ),
            )
            .payload(json!({ "delivered_on": on.to_string() }));
            engine.send(request).await
        }
    }
}

#[derive(Default)]
struct Book {
    bookings: BTreeMap<String, Booking>,
    failures_left: u32,
    failure: String,
}

/// The reference carrier: books everything with one carrier, tracking numbers in sequence
/// (`<PREFIX>000001`, …), failures on demand.
pub struct MemoryCarrier {
    carrier: String,
    prefix: String,
    book: Mutex<Book>,
}

impl MemoryCarrier {
    /// A carrier named `carrier` (`dhl`, `ups` or `fedex`) whose tracking numbers start with
    /// `prefix`.
    pub fn new(carrier: &str, prefix: &str) -> Self {
        MemoryCarrier {
            carrier: carrier.to_string(),
            prefix: prefix.to_string(),
            book: Mutex::default(),
        }
    }

    /// The next `times` bookings fail with `message`.
    pub fn fail_next(&self, times: u32, message: &str) {
        let mut book = self.lock();
        book.failures_left = times;
        book.failure = message.to_string();
    }

    /// How many shipments it has booked.
    pub fn booked(&self) -> usize {
        self.lock().bookings.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Carrier for MemoryCarrier {
    fn book(&self, key: &str, _shipment: &serde_json::Value) -> Result<Booking, String> {
        let mut book = self.lock();
        if book.failures_left > 0 {
            book.failures_left -= 1;
            return Err(book.failure.clone());
        }
        if let Some(done) = book.bookings.get(key) {
            return Ok(done.clone());
        }
        let booking = Booking {
            carrier: self.carrier.clone(),
            tracking: format!("{}{:06}", self.prefix, book.bookings.len() + 1),
        };
        book.bookings.insert(key.to_string(), booking.clone());
        Ok(booking)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookings_are_numbered_once_per_key_and_fail_on_demand() {
        let carrier = MemoryCarrier::new("dhl", "JD");
        let one = carrier.book("job-1", &json!({})).unwrap();
        assert_eq!(
            one,
            Booking {
                carrier: "dhl".into(),
                tracking: "JD000001".into()
            }
        );
        assert_eq!(
            carrier.book("job-1", &json!({})).unwrap(),
            one,
            "a retried job books once"
        );
        carrier.fail_next(1, "carrier API down");
        assert_eq!(
            carrier.book("job-2", &json!({})).unwrap_err(),
            "carrier API down"
        );
        assert_eq!(
            carrier.book("job-2", &json!({})).unwrap().tracking,
            "JD000002"
        );
        assert_eq!(carrier.booked(), 2);
    }
}
