//! SMS through an HTTP gateway: a POST of `{ "to", "from", "text", "message_id" }` as JSON,
//! with `Authorization: Bearer <token>` when a token is configured and `Idempotency-Key:
//! <message id>` (the same on every retry), so a gateway that honours it sends one SMS however
//! often it is asked. A 2xx answer is success. The message's `text` is the SMS body (its
//! subject is not sent); gateways split long texts themselves.

use serde_json::json;
use switchyard_core::notification::{Channel, Notification, SendError, SendFuture};

use crate::http::{endpoint_uri, HttpClient};

/// Most characters of an SMS body sent; longer texts are cut, with "…".
pub const SMS_CHARS_MAX: usize = 1600;

/// An HTTP SMS gateway.
pub struct SmsGateway {
    uri: hyper::Uri,
    token: Option<String>,
    from: String,
    client: HttpClient,
}

impl std::fmt::Debug for SmsGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsGateway")
            .field("uri", &self.uri)
            .field("token", &self.token.as_ref().map(|_| "(redacted)"))
            .field("from", &self.from)
            .finish()
    }
}

impl SmsGateway {
    /// A gateway at `url` (http or https), sending as `from`, with an optional bearer `token`.
    pub fn new(url: &str, token: Option<String>, from: &str) -> Result<SmsGateway, String> {
        Ok(SmsGateway {
            uri: endpoint_uri("sms gateway: url", url)?,
            token: token.filter(|t| !t.is_empty()),
            from: from.to_string(),
            client: HttpClient::new(),
        })
    }
}

impl Channel for SmsGateway {
    fn send<'a>(&'a self, notification: &'a Notification) -> SendFuture<'a> {
        Box::pin(async move {
            let m = &notification.message;
            let mut text: String = m.text.chars().take(SMS_CHARS_MAX).collect();
            if m.text.chars().count() > SMS_CHARS_MAX {
                text.pop();
                text.push('…');
            }
            let body = serde_json::to_vec(&json!({
                "to": m.to,
                "from": self.from,
                "text": text,
                "message_id": notification.id,
            }))
            .map_err(|e| SendError::from(format!("the SMS body cannot be written: {e}")))?;
            let mut headers = vec![("idempotency-key", notification.id.to_string())];
            if let Some(token) = &self.token {
                headers.push(("authorization", format!("Bearer {token}")));
            }
            self.client
                .post("the sms gateway", &self.uri, &headers, body)
                .await
        })
    }
}
