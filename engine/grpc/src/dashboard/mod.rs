//! The sales-operations dashboard over HTTP/1.1 (`dashboard.listen`), served by
//! [`crate::http`] with its connection limit and deadlines.
//!
//! - `GET /login`, `POST /login` (a form with the same bearer token or JWT the API takes),
//!   `POST /logout`: a session is an HttpOnly, SameSite=Strict cookie with an expiry
//!   ([`session`]); login and logout are refused from another origin (`Origin`,
//!   `Sec-Fetch-Site`), and the credential is never logged or stored.
//! - `GET /` the page, `GET /assets/…` its script, style and the vendored Chart.js — all
//!   embedded in the binary (no CDN; the page works offline).
//! - `GET /api/…` JSON for the page, behind the session (401 without one), scoped by role as
//!   the gRPC analytics and instance reads are: `me`, `summary`, `series`, `top`, `alerts`,
//!   `workflows`, `instances` (recently changed, filtered, or found by business key) and
//!   `instances/{id}` (the instance and its history with actors, reasons and the rule that
//!   decided).
//! - `GET /api/live`: server-sent events — `summary` (today's figures, when they change, at
//!   most twice a second) and `instances` (instances the caller may read that changed); the
//!   stream ends after [`STREAM_SECONDS`] and the browser reconnects by itself, also after a
//!   server restart (sessions survive it).
//!
//! Money stays a decimal string in every answer, as the projection keeps it.

mod recent;
pub(crate) mod session;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Form;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchyard_analytics::{Analytics, Dimension, Period, Scope};
use switchyard_core::{clip, roles, Actor, CommandError, Engine, InstanceId, ListRequest};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

pub(crate) use recent::Recent;
use session::{cookie_value, Refused, Sessions, COOKIE};

use crate::auth::Authenticator;

/// How long one live stream lasts before the browser reconnects (a server restart or a
/// revoked token is noticed within this time at the latest).
pub(crate) const STREAM_SECONDS: u64 = 300;
/// Least time between two pushes to one page.
const PUSH_INTERVAL: Duration = Duration::from_millis(500);
/// A comment line sent on an idle stream, so proxies and the browser keep it open.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Most instances one panel request or push lists.
const ROWS_PER_ANSWER: usize = 200;
/// Longest error text echoed to a caller.
const ECHO_CHARS_MAX: usize = 300;
/// Longest business key searched for.
const SEARCH_BYTES_MAX: usize = 200;

const INDEX_HTML: &str = include_str!("../../dashboard/index.html");
const LOGIN_HTML: &str = include_str!("../../dashboard/login.html");
const APP_JS: &str = include_str!("../../dashboard/app.js");
const APP_CSS: &str = include_str!("../../dashboard/app.css");
const CHART_JS: &str = include_str!("../../dashboard/vendor/chart.umd.min.js");

/// Only what the page itself serves: no inline script, no other origin.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the dashboard's handlers share.
pub(crate) struct Dashboard {
    pub(crate) engine: Engine,
    pub(crate) analytics: Option<Analytics>,
    pub(crate) auth: Authenticator,
    pub(crate) sessions: Sessions,
    pub(crate) recent: Recent,
    /// Whether the listener speaks TLS (the cookie is then `Secure`).
    pub(crate) secure: bool,
    /// Live streams open at once, at most.
    pub(crate) streams: Arc<Semaphore>,
    /// Raised when the server shuts down: live streams end.
    pub(crate) stopping: watch::Receiver<bool>,
}

/// The dashboard's routes.
pub(crate) fn router(dashboard: Arc<Dashboard>) -> axum::Router {
    axum::Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/{file}", get(asset))
        .route("/api/me", get(me))
        .route("/api/summary", get(summary))
        .route("/api/series", get(series))
        .route("/api/top", get(top))
        .route("/api/alerts", get(alerts))
        .route("/api/workflows", get(workflows))
        .route("/api/instances", get(instances))
        .route("/api/instances/{id}", get(instance))
        .route("/api/live", get(live))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(DefaultBodyLimit::max(8 * 1024))
        .with_state(dashboard)
}

/// An answer that is not the one asked for: a status and a bounded message.
struct Problem(StatusCode, String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({ "error": clip(&self.1, ECHO_CHARS_MAX) }).to_string();
        let mut response = (self.0, body).into_response();
        set_json_headers(response.headers_mut());
        response
    }
}

type Answer = Result<Response, Problem>;

fn problem(status: StatusCode, message: impl Into<String>) -> Problem {
    Problem(status, message.into())
}

fn from_status(status: &tonic::Status) -> Problem {
    use tonic::Code;
    let code = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    problem(code, status.message())
}

fn from_command(e: &CommandError) -> Problem {
    from_status(&crate::status::to_status(e, crate::status::Wire::NONE))
}

fn set_json_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

fn json_answer(value: &impl Serialize) -> Answer {
    let body = serde_json::to_string(value)
        .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut response = (StatusCode::OK, body).into_response();
    set_json_headers(response.headers_mut());
    Ok(response)
}

fn page(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it a browser sends `Origin: null` on the page's own form posts,
    // and the same-origin check could not tell them from another site's.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Sessions expire by real time, not by a test server's manual clock.
fn now_seconds() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The caller's actor, from the session cookie.
fn session(d: &Dashboard, headers: &HeaderMap) -> Result<Actor, Problem> {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| cookie_value(h, COOKIE))
        .ok_or_else(|| problem(StatusCode::UNAUTHORIZED, "not logged in"))?;
    match d.sessions.check(cookie, &d.auth, now_seconds()) {
        Ok((actor, _)) => Ok(actor),
        Err(Refused::Unauthenticated(why)) => Err(problem(StatusCode::UNAUTHORIZED, why)),
        Err(Refused::Unavailable(why)) => Err(problem(StatusCode::SERVICE_UNAVAILABLE, why)),
    }
}

/// Refuses a form post from another site (login CSRF, forced logout).
fn same_origin(headers: &HeaderMap) -> Result<(), Problem> {
    let refused = || {
        problem(
            StatusCode::FORBIDDEN,
            "refused: the form was not posted from this dashboard",
        )
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin" | "none")) {
            return Err(refused());
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| refused())?;
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(refused)?;
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .ok_or_else(refused)?;
        if bare != host {
            return Err(refused());
        }
    }
    Ok(())
}

async fn index(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    match session(&d, &headers) {
        Ok(_) => page(StatusCode::OK, INDEX_HTML.to_string()),
        Err(_) => Redirect::to("/login").into_response(),
    }
}

fn login_form(status: StatusCode, error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape_html(e)))
        .unwrap_or_default();
    page(status, LOGIN_HTML.replace("<!--error-->", &error))
}

async fn login_page() -> Response {
    login_form(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Err(p) = same_origin(&headers) {
        return p.into_response();
    }
    let Ok(Form(form)) = form else {
        return login_form(StatusCode::BAD_REQUEST, Some("`token`: missing"));
    };
    let token = form.token.trim();
    if token.is_empty() || token.len() > 4096 {
        return login_form(
            StatusCode::BAD_REQUEST,
            Some("`token`: paste the bearer token or JWT you call the API with"),
        );
    }
    let (actor, proof) = match d.auth.verify(token) {
        Ok(verified) => verified,
        Err(status) => {
            let code = if status.code() == tonic::Code::Unavailable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNAUTHORIZED
            };
            return login_form(code, Some(status.message()));
        }
    };
    if actor.roles.is_empty() {
        return login_form(
            StatusCode::FORBIDDEN,
            Some("this credential holds no role, so it may read nothing here"),
        );
    }
    let (value, lifetime) = d.sessions.issue(&actor, proof, now_seconds());
    if lifetime <= 0 {
        return login_form(StatusCode::UNAUTHORIZED, Some("the JWT has expired"));
    }
    tracing::info!(actor = %actor.id, "dashboard: logged in");
    let mut response = Redirect::to("/").into_response();
    let cookie = format!(
        "{COOKIE}={value}; Path=/; Max-Age={lifetime}; HttpOnly; SameSite=Strict{}",
        if d.secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Err(p) = same_origin(&headers) {
        return p.into_response();
    }
    if let Some(cookie) = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| cookie_value(h, COOKIE))
    {
        d.sessions.log_out(cookie, now_seconds());
    }
    let mut response = Redirect::to("/login").into_response();
    let clear = format!(
        "{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if d.secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "chart.umd.min.js" => (CHART_JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn projection(d: &Dashboard) -> Result<&Analytics, Problem> {
    let analytics = d.analytics.as_ref().ok_or_else(|| {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "analytics is turned off ([analytics] enabled)",
        )
    })?;
    match analytics.stalled() {
        None => Ok(analytics),
        Some(why) => Err(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("analytics stopped following the feed: {why}"),
        )),
    }
}

fn today(d: &Dashboard, analytics: &Analytics) -> NaiveDate {
    d.engine
        .now()
        .with_timezone(&analytics.time_zone())
        .date_naive()
}

async fn me(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Answer {
    let actor = session(&d, &headers)?;
    let (time_zone, today) = match &d.analytics {
        Some(a) => (a.time_zone().name().to_string(), Some(today(&d, a))),
        None => (String::new(), None),
    };
    let scope = crate::analytics::scope(&actor, "").ok();
    json_answer(&json!({
        "actor": actor.id,
        "roles": actor.roles,
        "time_zone": time_zone,
        "today": today,
        "now": d.engine.now(),
        "reads": match scope {
            Some(Scope::All) => "all",
            Some(Scope::Rep(_)) => "own",
            None => "none",
        },
    }))
}

/// A range and whose figures (`?from=2026-04-01&to=2026-04-30&rep=ann`; default today).
#[derive(Deserialize)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    #[serde(default)]
    rep: String,
    period: Option<String>,
    dimension: Option<String>,
    limit: Option<usize>,
}

fn date(field: &str, text: &Option<String>, default: NaiveDate) -> Result<NaiveDate, Problem> {
    match text.as_deref() {
        None | Some("") => Ok(default),
        Some(t) => NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|_| {
            problem(
                StatusCode::BAD_REQUEST,
                format!("`{field}`: not a date such as 2026-04-01"),
            )
        }),
    }
}

fn range(
    d: &Dashboard,
    actor: &Actor,
    q: &RangeQuery,
) -> Result<(Scope, NaiveDate, NaiveDate), Problem> {
    let analytics = projection(d)?;
    let scope = crate::analytics::scope(actor, &q.rep).map_err(|s| from_status(&s))?;
    let today = today(d, analytics);
    let to = date("to", &q.to, today)?;
    let from = date("from", &q.from, to)?;
    if from > to {
        return Err(problem(StatusCode::BAD_REQUEST, "`from`: after `to`"));
    }
    if (to - from).num_days() >= switchyard_analytics::DAYS_MAX {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            format!(
                "`from`: the range is longer than {} days",
                switchyard_analytics::DAYS_MAX
            ),
        ));
    }
    Ok((scope, from, to))
}

fn analytics_error(e: impl std::fmt::Display) -> Problem {
    problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn summary(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Answer {
    let actor = session(&d, &headers)?;
    let (scope, from, to) = range(&d, &actor, &q)?;
    let analytics = projection(&d)?;
    let summary = analytics
        .summary(&scope, from, to)
        .map_err(analytics_error)?;
    let backorders = analytics.backorders_open(&scope).map_err(analytics_error)?;
    json_answer(&summary_json(&summary, backorders))
}

fn summary_json(summary: &switchyard_analytics::Summary, backorders: usize) -> Value {
    let mut value = serde_json::to_value(summary).unwrap_or(Value::Null);
    // What the business keeps per currency, as the API reports it.
    let net: BTreeMap<&String, String> = summary
        .revenue
        .iter()
        .map(|(currency, r)| (currency, r.net().to_string()))
        .collect();
    value["net"] = json!(net);
    value["backorders_open"] = json!(backorders);
    value
}

async fn series(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Answer {
    let actor = session(&d, &headers)?;
    let (scope, from, to) = range(&d, &actor, &q)?;
    let period = match q.period.as_deref() {
        None | Some("" | "day") => Period::Day,
        Some("week") => Period::Week,
        Some(_) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "`period`: `day` or `week`",
            ))
        }
    };
    let points = projection(&d)?
        .series(&scope, from, to, period)
        .map_err(analytics_error)?;
    json_answer(&points)
}

async fn top(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Answer {
    let actor = session(&d, &headers)?;
    let (scope, from, to) = range(&d, &actor, &q)?;
    let dimension = match q.dimension.as_deref() {
        None | Some("" | "rep") => Dimension::Rep,
        Some("customer") => Dimension::Customer,
        Some("product") => Dimension::Product,
        Some("workflow") => Dimension::Workflow,
        Some(_) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "`dimension`: `rep`, `customer`, `product` or `workflow`",
            ))
        }
    };
    let limit = q.limit.unwrap_or(5).clamp(1, 100);
    let performers = projection(&d)?
        .top(&scope, from, to, dimension, limit)
        .map_err(analytics_error)?;
    json_answer(&performers)
}

async fn alerts(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Answer {
    let actor = session(&d, &headers)?;
    let scope = crate::analytics::scope(&actor, &q.rep).map_err(|s| from_status(&s))?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let (alerts, total) = projection(&d)?
        .alerts(&scope, d.engine.now(), limit)
        .map_err(analytics_error)?;
    json_answer(&json!({ "alerts": alerts, "total": total }))
}

/// Whether `actor` may read instances of the definition `name`.
fn may_read(engine: &Engine, actor: &Actor, name: &str) -> bool {
    match engine.definitions().latest(name) {
        Some(definition) => actor.has_any_role(&definition.read_roles),
        None => actor.roles.iter().any(|r| r == roles::ADMIN),
    }
}

async fn workflows(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Answer {
    let actor = session(&d, &headers)?;
    let definitions = d.engine.definitions();
    let mut names: Vec<&str> = definitions.names();
    names.sort_unstable();
    names.dedup();
    let list: Vec<Value> = names
        .into_iter()
        .filter_map(|name| definitions.latest(name))
        .filter(|def| actor.has_any_role(&def.read_roles))
        .map(|def| {
            let states: Vec<Value> = def
                .states
                .keys()
                .map(|s| json!({ "name": s, "terminal": def.is_terminal(s) }))
                .collect();
            json!({ "name": def.name, "description": def.description, "states": states })
        })
        .collect();
    json_answer(&list)
}

#[derive(Deserialize)]
struct InstancesQuery {
    #[serde(default)]
    workflow: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    q: String,
    limit: Option<usize>,
}

async fn instances(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(q): Query<InstancesQuery>,
) -> Answer {
    let actor = session(&d, &headers)?;
    let limit = q.limit.unwrap_or(100).clamp(1, ROWS_PER_ANSWER);
    let search = q.q.trim();
    if search.len() > SEARCH_BYTES_MAX {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            format!("`q`: longer than {SEARCH_BYTES_MAX} bytes"),
        ));
    }
    let needle = search.to_lowercase();
    let keep = |r: &recent::Row| {
        (q.workflow.is_empty() || r.definition == q.workflow)
            && (q.state.is_empty() || r.state == q.state)
            && (needle.is_empty()
                || r.business_key.to_lowercase().contains(&needle)
                || r.number.to_lowercase().contains(&needle))
            && may_read(&d.engine, &actor, &r.definition)
    };
    let mut rows: Vec<Value> = d
        .recent
        .newest(limit, keep)
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect();
    // A business key is also looked up in the store: the instance may not have changed
    // recently.
    if !search.is_empty() && rows.len() < limit {
        let definitions = d.engine.definitions();
        let names: Vec<String> = if q.workflow.is_empty() {
            definitions.names().into_iter().map(String::from).collect()
        } else {
            vec![q.workflow.clone()]
        };
        for name in names {
            if !may_read(&d.engine, &actor, &name) {
                continue;
            }
            let mut request = ListRequest::default()
                .definition(name)
                .business_key(search.to_string());
            request.page_size = 20;
            let page = d
                .engine
                .list_as(&actor, request)
                .await
                .map_err(|e| from_command(&e))?;
            for i in page.items {
                let id = i.id.to_string();
                if rows.iter().any(|r| r["id"] == id) {
                    continue;
                }
                if !q.state.is_empty() && i.state != q.state {
                    continue;
                }
                rows.push(json!({
                    "id": id,
                    "definition": i.definition.name,
                    "business_key": i.business_key,
                    "number": i.data["number"].as_str().map(|n| clip(n, 200)).unwrap_or_default(),
                    "state": i.state,
                    "status": i.status,
                    "owner": i.owner,
                    "change": "",
                    "reason": "",
                    "at": null,
                    "offset": null,
                }));
            }
        }
        rows.truncate(limit);
    }
    json_answer(&json!({ "instances": rows, "offset": d.recent.offset() }))
}

#[derive(Deserialize)]
struct HistoryQuery {
    page_token: Option<String>,
}

async fn instance(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Answer {
    let actor = session(&d, &headers)?;
    let id: InstanceId = id
        .parse()
        .map_err(|_| problem(StatusCode::BAD_REQUEST, "`id`: not an instance id (a UUID)"))?;
    let instance = d
        .engine
        .get_as(&actor, id)
        .await
        .map_err(|e| from_command(&e))?;
    let history = d
        .engine
        .history_page_as(&actor, id, 100, q.page_token.as_deref())
        .await
        .map_err(|e| from_command(&e))?;
    // Which rule decided, not everything it read and wrote (the gRPC history has that): a
    // decision's inputs hold the instance, its parent and root, and would make the page heavy.
    let mut items = serde_json::to_value(&history.items).unwrap_or(Value::Null);
    for item in items.as_array_mut().into_iter().flatten() {
        if let Some(p) = item.get_mut("provenance").and_then(Value::as_object_mut) {
            p.remove("inputs");
            p.remove("outputs");
        }
    }
    json_answer(&json!({
        "instance": instance,
        "history": items,
        "next_page_token": history.next_page_token,
    }))
}

async fn live(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Answer {
    let actor = session(&d, &headers)?;
    let scope = crate::analytics::scope(&actor, "").ok();
    let permit = d.streams.clone().try_acquire_owned().map_err(|_| {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live streams are open; try again later",
        )
    })?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(4);
    tokio::spawn(async move {
        let _permit = permit;
        push(d, actor, scope, tx).await;
    });
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Feeds one page's live stream until it ends, the page goes away or the server stops.
async fn push(
    d: Arc<Dashboard>,
    actor: Actor,
    scope: Option<Scope>,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    let send = |bytes: Bytes| {
        let tx = tx.clone();
        async move { tx.send(Ok(bytes)).await.is_ok() }
    };
    if !send(Bytes::from_static(b"retry: 2000\n\n")).await {
        return;
    }
    let ends = tokio::time::Instant::now() + Duration::from_secs(STREAM_SECONDS);
    let mut stopping = d.stopping.clone();
    let mut projection = d.analytics.as_ref().map(Analytics::changes);
    let mut instances = d.recent.changes();
    let mut seen = d.recent.offset();
    let mut last_summary = Value::Null;
    loop {
        if *stopping.borrow() {
            return;
        }
        // Today's figures, when they changed.
        if let (Some(analytics), Some(scope)) = (&d.analytics, &scope) {
            if analytics.stalled().is_none() {
                let today = today(&d, analytics);
                if let Ok(summary) = analytics.summary(scope, today, today) {
                    let backorders = analytics.backorders_open(scope).unwrap_or(0);
                    let mut value = summary_json(&summary, backorders);
                    // The offset alone changes with every event: compare without it.
                    let offset = value["offset"].take();
                    if value != last_summary {
                        last_summary = value.clone();
                        value["offset"] = offset;
                        if !send(event("summary", &value)).await {
                            return;
                        }
                    }
                }
            }
        }
        // Instances the caller may read that changed since the last push.
        let now_at = d.recent.offset();
        if now_at > seen {
            let rows = d.recent.since(seen, ROWS_PER_ANSWER, |r| {
                may_read(&d.engine, &actor, &r.definition)
            });
            seen = now_at;
            if !rows.is_empty()
                && !send(event(
                    "instances",
                    &json!({ "instances": rows, "offset": now_at }),
                ))
                .await
            {
                return;
            }
        }
        // Wait for a change (or a ping, the end, shutdown), then let changes gather.
        tokio::select! {
            _ = async {
                match &mut projection {
                    Some(p) => { let _ = p.changed().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
            _ = instances.changed() => {}
            _ = stopping.changed() => return,
            // The page went away: free its place now, not at the next ping.
            _ = tx.closed() => return,
            _ = tokio::time::sleep(PING_INTERVAL) => {
                if !send(Bytes::from_static(b": ping\n\n")).await {
                    return;
                }
            }
            _ = tokio::time::sleep_until(ends) => return,
        }
        tokio::time::sleep(PUSH_INTERVAL).await;
        if let Some(p) = &mut projection {
            p.borrow_and_update();
        }
        instances.borrow_and_update();
    }
}
