//! The outbound HTTP/1.1 client the webhook and SMS channels share: http and https (rustls,
//! Mozilla roots), a deadline per request, and a bounded read of the answer.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

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
    /// status and the start of the answer.
    pub(crate) async fn post(
        &self,
        what: &str,
        uri: &hyper::Uri,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(), String> {
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
            let body = Limited::new(answer.into_body(), ANSWER_BYTES_MAX)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{what}: no answer within {} s", REQUEST_TIMEOUT.as_secs()))??;
        if status.is_success() {
            return Ok(());
        }
        let quoted: String = String::from_utf8_lossy(&body)
            .chars()
            .take(QUOTED_CHARS_MAX)
            .collect();
        Err(format!("{what} answered {status}: {}", quoted.trim()))
    }
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
