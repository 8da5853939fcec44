//! Payment-provider webhook signatures, checked before anything is written: a Stripe-style
//! `Stripe-Signature` header and Adyen-style HMAC-signed notification items.
//!
//! Stripe (stripe-node `Webhooks.js`, stripe-ruby `Stripe::Webhook::Signature`): the header is
//! `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`; the signed payload is `"{t}.{raw body}"`, signed
//! with HMAC-SHA256 under the endpoint secret and hex-encoded. Any `v1` matching any of the
//! endpoint's secrets is accepted (Stripe signs with each live secret while one is rolled);
//! `t` must lie within the tolerance of now (300 s by default), both ways. The raw body is
//! verified, never a re-serialised one.
//!
//! Adyen (adyen-node-api-library `HmacValidator.getDataToSign` for a `NotificationRequestItem`):
//! each item carries `additionalData.hmacSignature`, the base64 HMAC-SHA256 — under the
//! hex-decoded key — of `pspReference:originalReference:merchantAccountCode:merchantReference:
//! value:currency:eventCode:success`, a missing field as the empty string. The item's own
//! field values are joined as they are: the escaping of `\` and `:` applies to Adyen's
//! key-value (hosted payment page) signatures, not to notification items.
//!
//! Comparisons are constant-time (`hmac`'s `verify_slice`). Errors say what is wrong without
//! echoing a signature or a secret.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Stripe's default tolerance between a signature's timestamp and now, in seconds.
pub const STRIPE_TOLERANCE_SECONDS: i64 = 300;

/// Most `v1` signatures a Stripe header may carry (one per live secret; a few at most).
const STRIPE_SIGNATURES_MAX: usize = 8;

/// Why a webhook was refused. Nothing is written for a refused webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookError {
    /// No signature where one is required.
    MissingSignature(&'static str),
    /// The signature header or field is not in the provider's format.
    MalformedSignature(String),
    /// No signature matches any of the endpoint's secrets.
    BadSignature,
    /// The signed timestamp is further from now than the tolerance.
    StaleTimestamp {
        /// Seconds between the signed timestamp and now.
        off_by_seconds: i64,
        /// The tolerance, in seconds.
        tolerance_seconds: i64,
    },
    /// The endpoint has no secret configured (a configuration mistake, refused not accepted).
    NoSecret,
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebhookError::MissingSignature(what) => write!(f, "missing signature: {what}"),
            WebhookError::MalformedSignature(why) => write!(f, "malformed signature: {why}"),
            WebhookError::BadSignature => {
                write!(f, "bad signature: it matches none of the endpoint's secrets")
            }
            WebhookError::StaleTimestamp {
                off_by_seconds,
                tolerance_seconds,
            } => write!(
                f,
                "stale timestamp: {off_by_seconds} s from now, outside the {tolerance_seconds} s tolerance"
            ),
            WebhookError::NoSecret => write!(f, "the endpoint has no signing secret configured"),
        }
    }
}

impl std::error::Error for WebhookError {}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Verifies a Stripe-style `Stripe-Signature` header over the raw `body`, against each of
/// `secrets` (several during a rotation), at `now` (Unix seconds) with `tolerance_seconds`.
pub fn verify_stripe(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(), WebhookError> {
    if secrets.iter().all(|s| s.is_empty()) {
        return Err(WebhookError::NoSecret);
    }
    let header = header.ok_or(WebhookError::MissingSignature("Stripe-Signature header"))?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            return Err(WebhookError::MalformedSignature(
                "Stripe-Signature: expected key=value pairs".into(),
            ));
        };
        match key {
            "t" => {
                timestamp = Some(value.parse::<i64>().map_err(|_| {
                    WebhookError::MalformedSignature(
                        "Stripe-Signature: t is not Unix seconds".into(),
                    )
                })?)
            }
            "v1" if signatures.len() < STRIPE_SIGNATURES_MAX => {
                if let Some(bytes) = hex_decode(value) {
                    signatures.push(bytes);
                }
            }
            // Other schemes (v0 is a test-mode scheme) and extra v1 values are ignored.
            _ => {}
        }
    }
    let t = timestamp.ok_or_else(|| {
        WebhookError::MalformedSignature("Stripe-Signature: no timestamp t".into())
    })?;
    if signatures.is_empty() {
        return Err(WebhookError::MissingSignature(
            "Stripe-Signature has no v1 signature",
        ));
    }
    let matches = secrets.iter().filter(|s| !s.is_empty()).any(|secret| {
        signatures.iter().any(|signature| {
            let mut m = mac(secret.as_bytes());
            m.update(t.to_string().as_bytes());
            m.update(b".");
            m.update(body);
            m.verify_slice(signature).is_ok()
        })
    });
    if !matches {
        return Err(WebhookError::BadSignature);
    }
    // Checked after the signature, so an attacker learns nothing about the clock.
    let off_by_seconds = now.saturating_sub(t);
    if off_by_seconds.saturating_abs() > tolerance_seconds {
        return Err(WebhookError::StaleTimestamp {
            off_by_seconds,
            tolerance_seconds,
        });
    }
    Ok(())
}

/// The string an Adyen notification item's HMAC is computed over.
pub fn adyen_signing_string(item: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let field = |name: &str| text(&item[name]);
    [
        field("pspReference"),
        field("originalReference"),
        field("merchantAccountCode"),
        field("merchantReference"),
        text(&item["amount"]["value"]),
        text(&item["amount"]["currency"]),
        field("eventCode"),
        field("success"),
    ]
    .join(":")
}

/// Verifies one Adyen `NotificationRequestItem` (the object inside the wrapper) against the
/// hex HMAC key `key_hex` (or any of several during a rotation).
pub fn verify_adyen_item(item: &Value, keys_hex: &[String]) -> Result<(), WebhookError> {
    if keys_hex.iter().all(|k| k.is_empty()) {
        return Err(WebhookError::NoSecret);
    }
    let signature =
        item["additionalData"]["hmacSignature"]
            .as_str()
            .ok_or(WebhookError::MissingSignature(
                "additionalData.hmacSignature",
            ))?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| {
            WebhookError::MalformedSignature("additionalData.hmacSignature is not base64".into())
        })?;
    let signed = adyen_signing_string(item);
    let mut any_key = false;
    for key_hex in keys_hex.iter().filter(|k| !k.is_empty()) {
        let Some(key) = hex_decode(key_hex) else {
            continue;
        };
        any_key = true;
        let mut m = mac(&key);
        m.update(signed.as_bytes());
        if m.verify_slice(&signature).is_ok() {
            return Ok(());
        }
    }
    if !any_key {
        return Err(WebhookError::NoSecret);
    }
    Err(WebhookError::BadSignature)
}
