//! Payment-provider webhooks over HTTP/1.1, on their own listener (`webhooks.listen`), served
//! by [`crate::http`] with its connection limit and deadlines. Each endpoint verifies the
//! provider's signature over the raw body before anything is parsed or written
//! (`switchyard_payments::webhooks`), then hands each event to
//! [`Engine::ingest_provider_event`] as actor `webhook:<provider>` with the `system` role.
//!
//! Answers: 200 once every event of the request is recorded and applied (Adyen's endpoint
//! answers `[accepted]`, as Adyen requires); 401 for a missing or bad signature or a stale
//! timestamp, 400 for a body that is not the provider's shape, 413 for one over
//! `webhooks.body_bytes_max` — nothing is written for any of these; 503 when the engine
//! cannot take the event now (the provider retries, and the retry finishes the work).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{json, Value};
use switchyard_core::{clip, roles, Actor, CommandError, Engine, IngestOutcome, ProviderEvent};
use switchyard_payments::webhooks::{verify_adyen_item, verify_stripe, WebhookError};

use crate::config::WebhooksConfig;

/// Most notification items one Adyen request may carry (Adyen batches a handful).
const ADYEN_ITEMS_MAX: usize = 100;
/// Longest error text echoed to a caller.
const ECHO_CHARS_MAX: usize = 300;

/// The configured endpoints, their secrets resolved.
pub struct Endpoints {
    stripe: Option<Stripe>,
    adyen: Option<Adyen>,
    body_bytes_max: usize,
}

struct Stripe {
    path: String,
    secrets: Vec<String>,
    tolerance_seconds: i64,
}

struct Adyen {
    path: String,
    keys: Vec<String>,
}

impl Endpoints {
    /// Resolves `config`'s secrets (from the file, and from the environment variables it
    /// names, comma-separated); a configured endpoint without a secret is an error.
    pub fn new(
        config: &WebhooksConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Endpoints, String> {
        let secrets = |key: &str, listed: &[String], var: &Option<String>| {
            let mut all: Vec<String> = listed.iter().filter(|s| !s.is_empty()).cloned().collect();
            if let Some(var) = var {
                let value = env(var).ok_or_else(|| {
                    format!("`{key}_env`: the environment variable {var} is not set")
                })?;
                all.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                );
            }
            if all.is_empty() {
                return Err(format!("`{key}`: no secret; set `{key}_env` or `{key}`"));
            }
            Ok(all)
        };
        let stripe = match &config.stripe {
            Some(s) => Some(Stripe {
                path: s.path.clone(),
                secrets: secrets("webhooks.stripe.secrets", &s.secrets, &s.secrets_env)?,
                tolerance_seconds: s.tolerance_seconds,
            }),
            None => None,
        };
        let adyen = match &config.adyen {
            Some(a) => {
                let keys = secrets("webhooks.adyen.hmac_keys", &a.hmac_keys, &a.hmac_keys_env)?;
                if let Some(bad) = keys
                    .iter()
                    .position(|k| k.len() % 2 != 0 || !k.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return Err(format!(
                        "`webhooks.adyen.hmac_keys`: key {} is not hex (Adyen shows HMAC keys in hex)",
                        bad + 1
                    ));
                }
                Some(Adyen {
                    path: a.path.clone(),
                    keys,
                })
            }
            None => None,
        };
        Ok(Endpoints {
            stripe,
            adyen,
            body_bytes_max: config.body_bytes_max,
        })
    }

    /// The endpoints, for the log: `stripe /webhooks/stripe, adyen /webhooks/adyen`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.stripe {
            parts.push(format!("stripe {}", s.path));
        }
        if let Some(a) = &self.adyen {
            parts.push(format!("adyen {}", a.path));
        }
        parts.join(", ")
    }
}

struct Hooks {
    engine: Engine,
    endpoints: Endpoints,
}

/// The webhook router: `POST` on each configured path; anything else is 404 or 405.
pub fn router(engine: Engine, endpoints: Endpoints) -> axum::Router {
    let limit = endpoints.body_bytes_max;
    let mut router = axum::Router::new();
    if let Some(s) = &endpoints.stripe {
        router = router.route(&s.path, post(stripe));
    }
    if let Some(a) = &endpoints.adyen {
        router = router.route(&a.path, post(adyen));
    }
    router
        .fallback(|| async { (StatusCode::NOT_FOUND, "no webhook endpoint here\n") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Arc::new(Hooks { engine, endpoints }))
}

/// A request not (fully) applied: its status, and a bounded message as `{"error": …}`.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let text = clip(&self.1, ECHO_CHARS_MAX);
        (self.0, json!({ "error": text }).to_string()).into_response()
    }
}

fn answer(status: StatusCode, message: &str) -> Refusal {
    Refusal(status, message.to_string())
}

fn refused(provider: &str, at: &str, e: &WebhookError) -> Refusal {
    match e {
        WebhookError::NoSecret => answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        _ => {
            tracing::warn!(provider, error = %e, "webhook refused: signature");
            answer(StatusCode::UNAUTHORIZED, &format!("{at}{e}"))
        }
    }
}

/// An engine error for a caller that retries on 5xx.
fn engine_error(provider: &str, e: &CommandError) -> Refusal {
    let status = match e {
        CommandError::InvalidInput { .. }
        | CommandError::InvalidPayload { .. }
        | CommandError::PayloadTooLarge { .. } => StatusCode::BAD_REQUEST,
        CommandError::ShuttingDown
        | CommandError::Overloaded { .. }
        | CommandError::Store(_)
        | CommandError::Conflict { .. }
        | CommandError::CounterConflict { .. }
        | CommandError::BalanceConflict { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::warn!(provider, code = e.code(), error = %e, "webhook not applied");
    answer(status, &format!("{}: {e}", e.code()))
}

fn actor(provider: &str) -> Actor {
    Actor::new(format!("webhook:{provider}"), &[roles::SYSTEM])
}

fn text<'a>(value: &'a Value, field: &str, at: &str) -> Result<&'a str, Refusal> {
    value
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| answer(StatusCode::BAD_REQUEST, &format!("{at}{field}: missing")))
}

async fn stripe(State(hooks): State<Arc<Hooks>>, headers: HeaderMap, body: Bytes) -> Response {
    match stripe_event(&hooks, &headers, &body).await {
        Ok(o) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json!({
                "received": true,
                "instance": o.instance.to_string(),
                "state": o.state,
                "duplicate": o.duplicate,
            })
            .to_string(),
        )
            .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn stripe_event(
    hooks: &Hooks,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<IngestOutcome, Refusal> {
    let config = hooks
        .endpoints
        .stripe
        .as_ref()
        .ok_or_else(|| answer(StatusCode::NOT_FOUND, "no Stripe endpoint"))?;
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    // The signature's freshness is real time, whatever clock the engine runs on.
    let now = chrono::Utc::now().timestamp();
    verify_stripe(
        signature,
        body,
        &config.secrets,
        now,
        config.tolerance_seconds,
    )
    .map_err(|e| refused("stripe", "", &e))?;
    let event: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Err(answer(StatusCode::BAD_REQUEST, "body: not a JSON object")),
    };
    let event = ProviderEvent {
        provider: "stripe".into(),
        event_id: text(&event, "id", "")?.to_string(),
        event_type: text(&event, "type", "")?.to_string(),
        event,
    };
    hooks
        .engine
        .ingest_provider_event(&actor("stripe"), event)
        .await
        .map_err(|e| engine_error("stripe", &e))
}

/// Every item verified before any is ingested: a batch with one bad signature writes nothing.
fn adyen_events(body: &[u8], keys: &[String]) -> Result<Vec<ProviderEvent>, Refusal> {
    let batch: Value = serde_json::from_slice(body)
        .map_err(|_| answer(StatusCode::BAD_REQUEST, "body: not JSON"))?;
    let items = batch
        .get("notificationItems")
        .and_then(Value::as_array)
        .ok_or_else(|| answer(StatusCode::BAD_REQUEST, "notificationItems: missing"))?;
    if items.is_empty() || items.len() > ADYEN_ITEMS_MAX {
        return Err(answer(
            StatusCode::BAD_REQUEST,
            &format!("notificationItems: 1 to {ADYEN_ITEMS_MAX} items"),
        ));
    }
    let mut events = Vec::with_capacity(items.len());
    for (i, wrapper) in items.iter().enumerate() {
        let at = format!("notificationItems[{i}].NotificationRequestItem");
        let item = match wrapper.get("NotificationRequestItem") {
            Some(item @ Value::Object(_)) => item,
            _ => return Err(answer(StatusCode::BAD_REQUEST, &format!("{at}: missing"))),
        };
        verify_adyen_item(item, keys).map_err(|e| refused("adyen", &format!("{at}: "), &e))?;
        let at = format!("{at}.");
        let psp = text(item, "pspReference", &at)?;
        let code = text(item, "eventCode", &at)?;
        let success = item.get("success").and_then(Value::as_str).unwrap_or("");
        events.push(ProviderEvent {
            provider: "adyen".into(),
            // Adyen may send an event code for one reference twice, with success false and
            // then true: each is its own event.
            event_id: format!("{psp}:{code}:{success}"),
            event_type: code.to_string(),
            event: item.clone(),
        });
    }
    Ok(events)
}

async fn adyen(State(hooks): State<Arc<Hooks>>, body: Bytes) -> Response {
    let Some(config) = &hooks.endpoints.adyen else {
        return answer(StatusCode::NOT_FOUND, "no Adyen endpoint").into_response();
    };
    let events = match adyen_events(&body, &config.keys) {
        Ok(events) => events,
        Err(refusal) => return refusal.into_response(),
    };
    for event in events {
        // Adyen redelivers the whole batch on an error: items done before are duplicates then.
        if let Err(e) = hooks
            .engine
            .ingest_provider_event(&actor("adyen"), event)
            .await
        {
            return engine_error("adyen", &e).into_response();
        }
    }
    (StatusCode::OK, "[accepted]").into_response()
}
