//! The outbound HTTP/1.1 client the webhook and SMS channels share: http and https (rustls,
//! Mozilla roots), a deadline per request, and a bounded read of the answer.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use switchyard_core::notification::SendError;

/// The longest `Retry-After` honoured; a receiver asking for more is tried again after this.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// How long one request may take, connection included.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Most bytes of an answer read (only to quote it in an error).
const ANSWER_BYTES_MAX: usize = 4096;
/// Most characters of an answer quoted in an error.
const QUOTED_CHARS_MAX: usize = 200;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pooled client for http and https URLs.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
}

impl HttpClient {
    pub(crate) fn new() -> HttpClient {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        HttpClient {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(4)
                .build(connector),
        }
    }

    /// POSTs `body` with `headers`; `Ok` for a 2xx answer, else an error naming `what`, the
    /// status and the start of the answer: 410 Gone gives up; 429, 502, 503 and 504 are
    /// retried after their `Retry-After` (seconds or an HTTP date, at most a day) when they
    /// give one; anything else after the backoff.
    pub(crate) async fn post(
        &self,
        what: &str,
        uri: &hyper::Uri,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(), SendError> {
        let mut request = hyper::Request::post(uri.clone())
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("switchyard/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("{what}: the request cannot be built: {e}"))?;
        let exchange = async {
            let answer = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{what}: {}", describe(&e)))?;
            let status = answer.status();
            let retry_after = answer
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, chrono::Utc::now()));
            let body = Limited::new(answer.into_body(), ANSWER_BYTES_MAX)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, retry_after, body))
        };
        let (status, retry_after, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
            format!("{what}: no answer within {} s", REQUEST_TIMEOUT.as_secs())
        })??;
        if status.is_success() {
            return Ok(());
        }
        let quoted: String = String::from_utf8_lossy(&body)
            .chars()
            .take(QUOTED_CHARS_MAX)
            .collect();
        let error = format!("{what} answered {status}: {}", quoted.trim());
        Err(match (status.as_u16(), retry_after) {
            (410, _) => SendError::give_up(error),
            (429 | 502 | 503 | 504, Some(delay)) => SendError::retry_after(error, delay),
            _ => SendError::from(error),
        })
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date (RFC 9110), as a delay from `now`
/// (none in the past), at most [`RETRY_AFTER_MAX`]; `None` when it is neither.
pub(crate) fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        (at.to_utc() - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(delay.min(RETRY_AFTER_MAX))
}

/// A connection error with its causes (hyper's own message is only "client error").
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Parses an endpoint URL: http or https, with a host.
pub(crate) fn endpoint_uri(field: &str, url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| format!("{field}: `{url}` is not a URL"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!(
            "{field}: `{url}` must be an http:// or https:// URL with a host"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::retry_after;
    use std::time::Duration;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date_and_is_bounded() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-04-01T09:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 01 Apr 2026 09:05:00 GMT", now),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            retry_after("Wed, 01 Apr 2026 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after("99999999", now),
            Some(Duration::from_secs(24 * 3600))
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("", now), None);
    }
}
