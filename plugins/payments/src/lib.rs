//! The payments adapter for the shipped lead-to-cash rules.
//!
//! Finance's `capture_payment` on a sales order creates a `capture_payment` job
//! (`{ order, capture, amount, currency, card }`); `refund_credit` a `refund_payment` job
//! (`{ order, amount, currency, reference }`). [`register`] answers both in-process with a
//! [`PaymentProvider`]: a capture's answer (`{ capture, outcome: "captured", reference }` or
//! `{ capture, outcome: "declined", reason }`) becomes the order's `payment_captured` — a
//! declined card is an answer, not a failure, so it is recorded at once and not retried — and
//! a refund's (`{ reference }`) its `credit_refunded` (or a return's `refund_completed`).
//!
//! [`webhooks`] checks the providers' webhook signatures (Stripe-style and Adyen-style).
//!
//! The job id is the idempotency key handed to the provider (as payment providers take one):
//! a retried job must not charge or refund twice. [`MemoryPaymentProvider`] is the reference
//! implementation (cards that decline, failures on demand); an ERP implements
//! [`PaymentProvider`] over its payment service provider.

pub mod webhooks;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rust_decimal::Decimal;
use serde_json::{json, Value};
use switchyard_core::{ActivatedJob, Engine};

/// The job types the shipped `sales_order` definition creates.
pub const CAPTURE_PAYMENT: &str = "capture_payment";
/// See [`CAPTURE_PAYMENT`].
pub const REFUND_PAYMENT: &str = "refund_payment";

/// What a capture came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Charged; the provider's reference.
    Captured(String),
    /// The card was declined, and why.
    Declined(String),
}

/// A payment service provider. Errors are messages for what went wrong on the way (the
/// provider unreachable): the job fails with it and is retried, then raised as an incident.
pub trait PaymentProvider: Send + Sync + 'static {
    /// Charges `amount` in `currency` to `card`. Called again with the same `key`, returns
    /// the first answer and charges nothing more.
    fn capture(
        &self,
        key: &str,
        amount: Decimal,
        currency: &str,
        card: &str,
    ) -> Result<Capture, String>;
    /// Pays `amount` back against the payment `reference`; returns the refund's reference.
    /// Called again with the same `key`, returns the first answer and pays nothing more.
    fn refund(
        &self,
        key: &str,
        amount: Decimal,
        currency: &str,
        reference: &str,
    ) -> Result<String, String>;
}

/// Answers the shipped `capture_payment` and `refund_payment` jobs of `engine` with
/// `provider`, in-process.
pub fn register(engine: &Engine, provider: Arc<dyn PaymentProvider>) {
    for job_type in [CAPTURE_PAYMENT, REFUND_PAYMENT] {
        let provider = provider.clone();
        engine.register_job_handler(job_type, move |job: ActivatedJob| {
            let provider = provider.clone();
            async move { answer(&*provider, &job.job_type, &job.id.to_string(), &job.payload) }
        });
    }
}

/// The answer to one job of `job_type` (`capture_payment` or `refund_payment`) with id `key`
/// and `payload`: what `register` completes it with, and what a worker in another process
/// sends back with `CompleteJob`. `Err` fails the job (a declined card is an answer).
pub fn answer(
    provider: &dyn PaymentProvider,
    job_type: &str,
    key: &str,
    p: &Value,
) -> Result<Value, String> {
    match job_type {
        CAPTURE_PAYMENT => {
            let capture = text(p, "capture")?;
            let answer =
                provider.capture(key, amount(p)?, &text(p, "currency")?, &text(p, "card")?)?;
            Ok(match answer {
                Capture::Captured(reference) => {
                    json!({ "capture": capture, "outcome": "captured", "reference": reference })
                }
                Capture::Declined(reason) => {
                    json!({ "capture": capture, "outcome": "declined", "reason": reason })
                }
            })
        }
        REFUND_PAYMENT => {
            let reference = provider.refund(
                key,
                amount(p)?,
                &text(p, "currency")?,
                &text(p, "reference")?,
            )?;
            Ok(json!({ "reference": reference }))
        }
        other => Err(format!("the payments adapter does not answer {other} jobs")),
    }
}

fn text(payload: &Value, field: &str) -> Result<String, String> {
    payload[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("payload.{field}: expected a string"))
}

fn amount(payload: &Value) -> Result<Decimal, String> {
    text(payload, "amount")?
        .parse()
        .map_err(|_| "payload.amount: expected a decimal string".to_string())
}

#[derive(Default)]
struct Ledger {
    captures: BTreeMap<String, Capture>,
    refunds: BTreeMap<String, String>,
    declining: Vec<String>,
    failures_left: u32,
    failure: String,
    charged: Decimal,
    refunded: Decimal,
}

/// The reference provider: charges every card except those told to decline; references in
/// sequence (`ch_000001`, `re_000001`).
#[derive(Default)]
pub struct MemoryPaymentProvider {
    ledger: Mutex<Ledger>,
}

impl MemoryPaymentProvider {
    /// Captures on `card` are declined with "card declined".
    pub fn decline(&self, card: &str) {
        self.lock().declining.push(card.to_string());
    }

    /// The next `times` calls fail with `message` (the provider unreachable).
    pub fn fail_next(&self, times: u32, message: &str) {
        let mut ledger = self.lock();
        ledger.failures_left = times;
        ledger.failure = message.to_string();
    }

    /// (charged, refunded) so far.
    pub fn totals(&self) -> (Decimal, Decimal) {
        let ledger = self.lock();
        (ledger.charged, ledger.refunded)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ledger {
    fn failing(&mut self) -> Result<(), String> {
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(self.failure.clone());
        }
        Ok(())
    }
}

impl PaymentProvider for MemoryPaymentProvider {
    fn capture(
        &self,
        key: &str,
        amount: Decimal,
        _currency: &str,
        card: &str,
    ) -> Result<Capture, String> {
        let mut ledger = self.lock();
        ledger.failing()?;
        if let Some(done) = ledger.captures.get(key) {
            return Ok(done.clone());
        }
        let answer = if ledger.declining.iter().any(|c| c == card) {
            Capture::Declined("card declined".into())
        } else {
            ledger.charged += amount;
            Capture::Captured(format!("ch_{:06}", ledger.captures.len() + 1))
        };
        ledger.captures.insert(key.to_string(), answer.clone());
        Ok(answer)
    }

    fn refund(
        &self,
        key: &str,
        amount: Decimal,
        _currency: &str,
        _reference: &str,
    ) -> Result<String, String> {
        let mut ledger = self.lock();
        ledger.failing()?;
        if let Some(done) = ledger.refunds.get(key) {
            return Ok(done.clone());
        }
        ledger.refunded += amount;
        let reference = format!("re_{:06}", ledger.refunds.len() + 1);
        ledger.refunds.insert(key.to_string(), reference.clone());
        Ok(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_and_refunds_once_per_key_and_declines_on_demand() {
        let provider = MemoryPaymentProvider::default();
        let ten = Decimal::from(10);
        assert_eq!(
            provider.capture("j1", ten, "EUR", "tok").unwrap(),
            Capture::Captured("ch_000001".into())
        );
        assert_eq!(
            provider.capture("j1", ten, "EUR", "tok").unwrap(),
            Capture::Captured("ch_000001".into())
        );
        provider.decline("tok_bad");
        assert_eq!(
            provider.capture("j2", ten, "EUR", "tok_bad").unwrap(),
            Capture::Declined("card declined".into())
        );
        assert_eq!(
            provider
                .refund("j3", Decimal::ONE, "EUR", "ch_000001")
                .unwrap(),
            "re_000001"
        );
        assert_eq!(
            provider
                .refund("j3", Decimal::ONE, "EUR", "ch_000001")
                .unwrap(),
            "re_000001"
        );
        provider.fail_next(1, "provider unreachable");
        assert_eq!(
            provider.refund("j4", Decimal::ONE, "EUR", "x").unwrap_err(),
            "provider unreachable"
        );
        assert_eq!(
            provider.totals(),
            (ten, Decimal::ONE),
            "charged and refunded once each"
        );
    }
}
