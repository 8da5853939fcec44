//! The dashboard over plain HTTP (the browser's view is `browser.rs`): nothing without a
//! session, a login that sets a strict cookie only for a good credential and only from the
//! dashboard's own origin, logout and revocation end the session, the figures equal the
//! analytics API's, a sales rep sees only their own, the live stream pushes a commit, and with
//! TLS configured it speaks HTTPS with a `Secure` cookie.

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::*;
use serde_json::Value;
use switchyard_client::analytics as apb;
use switchyard_client::analytics::analytics_service_client::AnalyticsServiceClient;
use switchyard_grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/1.1 answer: status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The session cookie's `name=value` from `Set-Cookie`.
    fn session(&self) -> String {
        let set = self.header("set-cookie").expect("a Set-Cookie header");
        set.split(';').next().unwrap().to_string()
    }
}

/// One request on its own connection (the dashboard closes each after its answer).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(socket, addr, method, path, headers, body).await
}

/// Writes one request on `socket` and reads the answer to the end.
async fn exchange(
    mut socket: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    // A TLS peer may close without close_notify after `Connection: close`: what was read counts.
    let _ = socket.read_to_end(&mut bytes).await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn dashboard(server: &TestServer) -> SocketAddr {
    server
        .running()
        .dashboard_addr
        .expect("the dashboard is on")
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// Logs in with `token` as a same-origin form post; the session cookie.
async fn log_in(addr: SocketAddr, token: &str) -> String {
    let origin = format!("http://{addr}");
    let answer = request(
        addr,
        "POST",
        "/login",
        &[FORM, ("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
        &format!("token={token}"),
    )
    .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    answer.session()
}

async fn get(addr: SocketAddr, path: &str, cookie: &str) -> Answer {
    request(addr, "GET", path, &[("Cookie", cookie)], "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_served_without_a_session_and_login_sets_a_strict_cookie() {
    let server = TestServer::start().await;
    let addr = dashboard(&server);
    // No cookie: the page sends to the login form, the API refuses, the login form is open.
    let page = request(addr, "GET", "/", &[], "").await;
    assert_eq!(
        (page.status, page.header("location")),
        (303, Some("/login"))
    );
    for path in ["/api/me", "/api/summary", "/api/instances", "/api/live"] {
        let answer = request(addr, "GET", path, &[], "").await;
        assert_eq!(answer.status, 401, "{path}: {}", answer.body);
        assert!(!answer.body.contains("instances\":["), "{path}");
    }
    let form = request(addr, "GET", "/login", &[], "").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains(r#"name="token""#));
    assert!(form
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'self'"));
    // A forged or tampered cookie is no session.
    let forged = get(addr, "/api/me", "switchyard_session=eyJzaWQiOiJ4In0.AAAA").await;
    assert_eq!(forged.status, 401);

    // A wrong token: the form again, with the reason, and no cookie; the token is not echoed.
    let origin = format!("http://{addr}");
    let wrong = request(
        addr,
        "POST",
        "/login",
        &[FORM, ("Origin", &origin)],
        "token=not-a-token-anyone-has",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(!wrong.body.contains("not-a-token-anyone-has"));
    // A form posted from another site is refused, even with a good token (login CSRF).
    let good = format!("token={}", token("analyst"));
    for headers in [
        [FORM, ("Origin", "http://evil.example")],
        [FORM, ("Sec-Fetch-Site", "cross-site")],
    ] {
        let refused = request(addr, "POST", "/login", &headers, &good).await;
        assert_eq!(refused.status, 403, "{headers:?}");
        assert!(refused.header("set-cookie").is_none());
    }

    // A good token: a session cookie the script cannot read, sent only to this site, expiring.
    let ok = request(addr, "POST", "/login", &[FORM, ("Origin", &origin)], &good).await;
    assert_eq!((ok.status, ok.header("location")), (303, Some("/")));
    let set = ok.header("set-cookie").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    assert!(!set.contains("Secure"), "no TLS here: {set}");
    assert!(
        !set.contains(&token("analyst")),
        "the cookie never holds the token"
    );
    let cookie = ok.session();
    let me = get(addr, "/api/me", &cookie).await.json();
    assert_eq!(me["actor"], "u-analyst");
    assert_eq!(me["reads"], "all");
    assert_eq!(get(addr, "/", &cookie).await.status, 200);

    // A JWT logs in too, as its subject.
    let jo = log_in(
        addr,
        &jwt(serde_json::json!({
            "sub": "jo", "roles": ["sales_manager"], "iss": JWT_ISSUER, "aud": JWT_AUDIENCE,
            "exp": chrono::Utc::now().timestamp() + 3600,
        })),
    )
    .await;
    assert_eq!(get(addr, "/api/me", &jo).await.json()["actor"], "jo");

    // Logout from another site is refused; from the page it ends the session for good.
    let forced = request(
        addr,
        "POST",
        "/logout",
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(forced.status, 403);
    assert_eq!(get(addr, "/api/me", &cookie).await.status, 200);
    let out = request(
        addr,
        "POST",
        "/logout",
        &[("Cookie", &cookie), ("Origin", &origin)],
        "",
    )
    .await;
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(get(addr, "/api/me", &cookie).await.status, 401);
    assert_eq!(
        get(addr, "/api/me", &jo).await.status,
        200,
        "other sessions stay"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_ends_its_sessions() {
    let server = TestServer::start().await;
    let addr = dashboard(&server);
    let made = server
        .access()
        .create_token(as_role(
            "admin",
            pb::CreateTokenRequest {
                request_id: "t-1".into(),
                actor: "ana".into(),
                roles: vec!["sales_rep".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let cookie = log_in(addr, &made.token).await;
    let me = get(addr, "/api/me", &cookie).await.json();
    assert_eq!(
        (me["actor"].as_str(), me["reads"].as_str()),
        (Some("ana"), Some("own"))
    );
    server
        .access()
        .revoke_token(as_role(
            "admin",
            pb::RevokeTokenRequest {
                request_id: "t-2".into(),
                id: made.credential.unwrap().id,
            },
        ))
        .await
        .unwrap();
    let after = get(addr, "/api/me", &cookie).await;
    assert_eq!(after.status, 401, "{}", after.body);
    server.stop().await;
}

/// Waits until the dashboard's summary counts `quotes` quotes today.
async fn summary_with(addr: SocketAddr, cookie: &str, quotes: u64) -> Value {
    for _ in 0..200 {
        let answer = get(addr, "/api/summary", cookie).await;
        if answer.status == 200 && answer.json()["counts"]["quotes"] == quotes {
            return answer.json();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the summary never counted {quotes} quotes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_equal_the_analytics_api_and_a_rep_sees_only_their_own() {
    let server = TestServer::start().await;
    let addr = dashboard(&server);
    for n in 0..3 {
        start_quote(&server, &format!("q-{n}"), "FIXED-4999").await;
    }
    let manager = log_in(addr, &token("sales_manager")).await;
    let shown = summary_with(addr, &manager, 3).await;
    let today = shown["from"].as_str().unwrap().to_string();
    let (y, m, d) = (
        today[0..4].parse().unwrap(),
        today[5..7].parse().unwrap(),
        today[8..10].parse().unwrap(),
    );
    let day = Some(switchyard_client::google_type::Date {
        year: y,
        month: m,
        day: d,
    });
    let api = AnalyticsServiceClient::new(server.channel.clone())
        .get_summary(as_role(
            "sales_manager",
            apb::GetSummaryRequest {
                from: day,
                to: day,
                rep: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .summary
        .unwrap();
    let counts = api.counts.unwrap();
    assert_eq!(shown["counts"]["quotes"], counts.quotes);
    assert_eq!(shown["counts"]["leads"], counts.leads);
    assert_eq!(shown["counts"]["orders"], counts.orders);
    // Another rep's session sees none of u-sales_rep's quotes, in figures or in the panel.
    let made = server
        .access()
        .create_token(as_role(
            "admin",
            pb::CreateTokenRequest {
                request_id: "t-bo".into(),
                actor: "bo".into(),
                roles: vec!["sales_rep".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let bo = log_in(addr, &made.token).await;
    assert_eq!(
        get(addr, "/api/summary", &bo).await.json()["counts"]["quotes"],
        0
    );
    let rep = log_in(addr, &token("sales_rep")).await;
    assert_eq!(summary_with(addr, &rep, 3).await["counts"]["quotes"], 3);
    // Asking for somebody else's figures is refused for a rep.
    let other = get(addr, "/api/summary?rep=u-sales_rep", &bo).await;
    assert_eq!(other.status, 403, "{}", other.body);
    // The panel lists the quotes for the manager; the drill-down has the history with actors.
    let rows = get(addr, "/api/instances?workflow=quote", &manager)
        .await
        .json();
    let rows = rows["instances"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let id = rows[0]["id"].as_str().unwrap();
    let drill = get(addr, &format!("/api/instances/{id}"), &manager)
        .await
        .json();
    assert_eq!(drill["history"][0]["actor"]["id"], "u-sales_rep");
    // A business key is found; bad input is named.
    let found = get(addr, "/api/instances?q=Q-q-1", &manager).await.json();
    assert_eq!(found["instances"][0]["business_key"], "Q-q-1");
    let bad = get(addr, "/api/summary?from=2026-13-01", &manager).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("`from`"));
    let bad = get(addr, "/api/instances/not-a-uuid", &manager).await;
    assert_eq!(bad.status, 400);
    server.stop().await;
}

/// A connection that asked for the live stream with `cookie`; the answer is left to read.
async fn open_live(addr: SocketAddr, cookie: &str) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(
            format!("GET /api/live HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    socket
}

/// Reads the stream into `seen` until it holds `needle` (20 s at most).
async fn read_until(socket: &mut tokio::net::TcpStream, seen: &mut String, needle: &str) {
    let mut buffer = vec![0u8; 16 * 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        while !seen.contains(needle) {
            let n = socket.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle} on the stream: {seen}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_pushes_a_commit_without_asking() {
    let server = TestServer::start().await;
    let addr = dashboard(&server);
    let cookie = log_in(addr, &token("sales_manager")).await;
    let mut socket = open_live(addr, &cookie).await;
    let mut seen = String::new();
    // The stream opens with the reconnect delay and today's (empty) figures.
    read_until(&mut socket, &mut seen, "retry: 2000").await;
    assert!(seen.contains("text/event-stream"));
    let started = start_quote(&server, "live-1", "FIXED-4999").await;
    read_until(&mut socket, &mut seen, &started.instance_id).await;
    read_until(&mut socket, &mut seen, "\"quotes\":1").await;
    assert!(seen.contains("event: instances"));
    assert!(seen.contains("event: summary"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_configured_the_dashboard_speaks_https_and_its_cookie_is_secure() {
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let (config, certified) = tls_config(dir.path());
    let running = switchyard_grpc::server::start(config, |_| None)
        .await
        .unwrap();
    let addr = running.dashboard_addr.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tls = || async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .expect("a TLS handshake with the configured certificate")
    };
    let origin = format!("https://{addr}");
    let login = exchange(
        tls().await,
        addr,
        "POST",
        "/login",
        &[FORM, ("Origin", &origin)],
        &format!("token={}", token("analyst")),
    )
    .await;
    assert_eq!(login.status, 303, "{}", login.body);
    let set = login.header("set-cookie").unwrap();
    assert!(set.contains("; Secure"), "{set}");
    let me = exchange(
        tls().await,
        addr,
        "GET",
        "/api/me",
        &[("Cookie", &login.session())],
        "",
    )
    .await;
    assert_eq!(me.json()["actor"], "u-analyst");
    // Plain HTTP on the TLS port gets no page.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_are_bounded_and_a_refusal_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = harness::config(dir.path());
    config.dashboard.streams_max = 1;
    let server = TestServer::start_with(dir, config).await;
    let addr = dashboard(&server);
    let cookie = log_in(addr, &token("analyst")).await;
    let mut first = open_live(addr, &cookie).await;
    let mut seen = String::new();
    read_until(&mut first, &mut seen, "retry: 2000").await;
    let second = get(addr, "/api/live", &cookie).await;
    assert_eq!(second.status, 503, "{}", second.body);
    assert!(second.json()["error"]
        .as_str()
        .unwrap()
        .contains("too many live streams"));
    // The first one ending frees its place.
    drop(first);
    let mut freed = false;
    for _ in 0..100 {
        let mut again = open_live(addr, &cookie).await;
        let mut head = vec![0u8; 64];
        let n = again.read(&mut head).await.unwrap();
        if String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200") {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the closed stream's place was never freed");
    server.stop().await;
}
