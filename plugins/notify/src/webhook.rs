//! Webhooks as the Standard Webhooks specification (v1) has them: a POST of a JSON body with
//! `webhook-id` (the message id, the same on every retry: the receiver's idempotency key),
//! `webhook-timestamp` (Unix seconds, new on each attempt) and `webhook-signature`: `v1,` and
//! the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the endpoint's secret, one per
//! secret, space-separated, so a secret rotates without downtime. A secret is written
//! `whsec_` + base64 of 24 to 64 random bytes.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use switchyard_core::notification::{Channel, Notification, SendError, SendFuture};

use crate::http::{endpoint_uri, HttpClient};

/// The `type` of every webhook body.
pub const WEBHOOK_TYPE: &str = "switchyard.notification";

/// One endpoint as configured: where, and the secrets to sign with (the first is current;
/// more while one rotates).
#[derive(Clone)]
pub struct WebhookEndpoint {
    /// An http:// or https:// URL.
    pub url: String,
    /// `whsec_…` secrets.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("url", &self.url)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .finish()
    }
}

struct Endpoint {
    uri: hyper::Uri,
    keys: Vec<Vec<u8>>,
}

/// Delivers messages whose address (`to`) names a configured endpoint. An endpoint that
/// answers 410 Gone is disabled (as the specification has it): its messages fail at once, as
/// undelivered incidents, until the server restarts with it configured again. 429, 502, 503
/// and 504 answers are retried after their `Retry-After` when they give one.
pub struct WebhookChannel {
    endpoints: BTreeMap<String, Endpoint>,
    client: HttpClient,
    /// Endpoints that answered 410, and when.
    gone: std::sync::Mutex<BTreeMap<String, String>>,
}

impl WebhookChannel {
    /// A channel for `endpoints` (name → endpoint). Errors name the endpoint and field: a URL
    /// that is not http(s), a secret that is not `whsec_` + base64 of 24–64 bytes, no secret.
    pub fn new(endpoints: BTreeMap<String, WebhookEndpoint>) -> Result<WebhookChannel, String> {
        let mut checked = BTreeMap::new();
        for (name, endpoint) in endpoints {
            let field = format!("webhook endpoint `{name}`");
            let uri = endpoint_uri(&format!("{field}: url"), &endpoint.url)?;
            if endpoint.secrets.is_empty() {
                return Err(format!("{field}: secrets: at least one `whsec_…` secret"));
            }
            let keys = endpoint
                .secrets
                .iter()
                .enumerate()
                .map(|(i, s)| secret_key(s).map_err(|m| format!("{field}: secrets[{i}]: {m}")))
                .collect::<Result<_, _>>()?;
            checked.insert(name, Endpoint { uri, keys });
        }
        Ok(WebhookChannel {
            endpoints: checked,
            client: HttpClient::new(),
            gone: Default::default(),
        })
    }

    /// The endpoints' names.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.endpoints.keys().map(String::as_str)
    }
}

/// The key a `whsec_` secret holds.
fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or("a secret starts with `whsec_`")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "what follows `whsec_` is not base64".to_string())?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "a secret holds 24 to 64 bytes; this one holds {}",
            key.len()
        ));
    }
    Ok(key)
}

/// The `webhook-signature` value for `body` sent as message `id` at `timestamp`: `v1,<base64>`
/// per key, space-separated.
pub fn sign(keys: &[Vec<u8>], id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            let tag = mac.finalize().into_bytes();
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(tag)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Channel for WebhookChannel {
    fn send<'a>(&'a self, notification: &'a Notification) -> SendFuture<'a> {
        Box::pin(async move {
            let m = &notification.message;
            let endpoint = self.endpoints.get(&m.to).ok_or_else(|| {
                SendError::from(format!(
                    "no webhook endpoint is named `{}` (configured: {})",
                    switchyard_core::clip(&m.to, 64),
                    self.endpoints
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            if let Some(when) = self
                .gone
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&m.to)
            {
                return Err(SendError::give_up(format!(
                    "webhook endpoint `{}` is disabled: it answered 410 Gone at {when}",
                    m.to
                )));
            }
            let id = notification.id.to_string();
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let body = serde_json::to_vec(&json!({
                "type": WEBHOOK_TYPE,
                "timestamp": chrono::DateTime::from_timestamp(timestamp as i64, 0)
                    .unwrap_or_default()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "data": {
                    "message_id": id,
                    "instance": notification.instance,
                    "attempt": notification.attempt,
                    "recipient": m.recipient,
                    "category": m.category,
                    "severity": m.severity,
                    "subject": m.subject,
                    "text": m.text,
                    "source": m.source,
                },
            }))
            .map_err(|e| SendError::from(format!("the webhook body cannot be written: {e}")))?;
            let signature = sign(&endpoint.keys, &id, timestamp, &body);
            let sent = self
                .client
                .post(
                    &format!("webhook endpoint `{}`", m.to),
                    &endpoint.uri,
                    &[
                        ("webhook-id", id.clone()),
                        ("webhook-timestamp", timestamp.to_string()),
                        ("webhook-signature", signature),
                    ],
                    body,
                )
                .await;
            if let Err(e) = &sent {
                if e.give_up {
                    tracing::warn!(endpoint = %m.to, "webhook endpoint answered 410 Gone: disabled");
                    self.gone
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(m.to.clone(), chrono::Utc::now().to_rfc3339());
                }
            }
            sent
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked_naming_the_endpoint() {
        let one = |url: &str, secret: &str| {
            WebhookChannel::new(BTreeMap::from([(
                "erp".to_string(),
                WebhookEndpoint {
                    url: url.into(),
                    secrets: vec![secret.into()],
                },
            )]))
            .map(|_| ())
            .unwrap_err()
        };
        let good = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        );
        assert!(one("ftp://x", &good).contains("webhook endpoint `erp`: url"));
        assert!(one("http://x", "secret").contains("secrets[0]: a secret starts with `whsec_`"));
        assert!(one("http://x", "whsec_!!").contains("not base64"));
        assert!(one("http://x", "whsec_AAAA").contains("holds 3"));
        let debug = format!(
            "{:?}",
            WebhookEndpoint {
                url: "http://x".into(),
                secrets: vec![good.clone()]
            }
        );
        assert!(!debug.contains(&good[6..]), "{debug}");
    }
}
