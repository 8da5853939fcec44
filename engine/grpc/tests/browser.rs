//! The dashboard in a real browser: Debian's Chromium, headless, driven over WebDriver by
//! chromedriver (`.ci/run` installs both when missing; `SWITCHYARD_CHROMIUM` and
//! `SWITCHYARD_CHROMEDRIVER` point elsewhere). The page is refused without a session; a
//! sales manager logs in through the form; the figures shown equal what the analytics API
//! reports; an order committed over gRPC appears without a reload; the workflow panel filters
//! and searches; a row drills down into its history; after a server restart the page
//! reconnects by itself and keeps updating; the chart switches to weeks and to a date range;
//! every piece of text has a contrast of at least 4.5:1; the phone layout fits 390×844 without
//! sideways scrolling; logout ends it. Screenshots go to `target/dashboard-screenshots/`.

mod harness;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use harness::*;
use serde_json::{json, Value};
use switchyard_client::analytics as apb;
use switchyard_client::analytics::analytics_service_client::AnalyticsServiceClient;
use switchyard_grpc::pb;
use switchyard_inventory::MemoryInventory;

fn program(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_string())
}

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let binary = program("SWITCHYARD_CHROMEDRIVER", "chromedriver");
    let child = Command::new(&binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{binary}: {e} (install Debian's chromium and chromium-driver, as .ci/run does)")
        });
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not listen on port {port}");
}

/// A headless Chromium: a desktop window, or a phone's viewport.
async fn browser(driver: &Driver, phone: bool) -> Client {
    let mut options = json!({
        "binary": program("SWITCHYARD_CHROMIUM", "/usr/bin/chromium"),
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-dev-shm-usage",
                 "--window-size=1280,1100"],
    });
    if phone {
        options["mobileEmulation"] = json!({
            "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 2, "touch": true },
        });
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Evaluates `expression` in the page.
async fn eval(client: &Client, expression: &str) -> Value {
    client
        .execute(&format!("return ({expression});"), vec![])
        .await
        .unwrap_or_else(|e| panic!("{expression}: {e}"))
}

/// Waits (up to 15 s) until `expression` is true in the page, without reloading it.
async fn until(client: &Client, expression: &str) {
    for _ in 0..150 {
        if eval(client, expression).await == Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never true in the page: {expression}");
}

async fn screenshot(client: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Logs in through the form with `token`; waits until the page has loaded its figures.
async fn log_in(client: &Client, addr: SocketAddr, token: &str) {
    client.goto(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/login");
    let field = client.find(Locator::Id("token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    client
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(client, "document.body.dataset.ready === 'true'").await;
    until(
        client,
        "document.querySelector('#live').dataset.state === 'live'",
    )
    .await;
}

/// Sends `command` as a role over gRPC.
async fn send(server: &TestServer, id: &str, role: &str, command: &str, n: &str) {
    server
        .instances()
        .send_command(as_role(
            role,
            pb::SendCommandRequest {
                request_id: format!("{command}-{n}"),
                instance_id: id.into(),
                command: command.into(),
                payload_json: "{}".into(),
                expected_version: None,
            },
        ))
        .await
        .unwrap();
}

/// An order entered and submitted over gRPC, confirmed once the inventory adapter reserved
/// its stock; its id.
async fn confirmed_order(server: &TestServer, n: &str) -> String {
    let started = server
        .instances()
        .start_instance(as_role(
            "sales_rep",
            pb::StartInstanceRequest {
                request_id: format!("order-{n}"),
                definition: "sales_order".into(),
                business_key: format!("WEB-{n}"),
                data_json: json!({ "customer": "GOVT-AGENCY", "currency": "EUR",
                    "lines": [{ "sku": "SKU-001", "quantity": 2 }] })
                .to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    let id = started.instance_id;
    send(server, &id, "sales_rep", "submit", n).await;
    for _ in 0..200 {
        let instance = server
            .running()
            .engine
            .get(id.parse().unwrap())
            .await
            .unwrap();
        if instance.state == "confirmed" {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("order {n} was not confirmed");
}

/// Today's summary from the analytics API (not the dashboard's).
async fn api_summary(server: &TestServer, today: &str) -> apb::Summary {
    let date = Some(switchyard_client::google_type::Date {
        year: today[0..4].parse().unwrap(),
        month: today[5..7].parse().unwrap(),
        day: today[8..10].parse().unwrap(),
    });
    AnalyticsServiceClient::new(server.channel.clone())
        .get_summary(as_role(
            "sales_manager",
            apb::GetSummaryRequest {
                from: date,
                to: date,
                rep: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .summary
        .unwrap()
}

/// The visible text elements whose contrast with their background is below 4.5:1 (WCAG's
/// relative luminance), as `tag.class: ratio`.
const CONTRAST: &str = r#"(() => {
  const channels = (c) => (c.match(/[\d.]+/g) || []).map(Number);
  const luminance = (c) => {
    const [r, g, b] = channels(c).slice(0, 3).map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      const v = channels(c);
      if (v.length === 3 || (v.length === 4 && v[3] > 0.5)) return c;
    }
    return "rgb(255, 255, 255)";
  };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!text || !el.getClientRects().length || el.closest("canvas")) continue;
    const a = luminance(getComputedStyle(el).color), b = luminance(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(`${el.tagName.toLowerCase()}.${el.className}: ${ratio.toFixed(2)}`);
  }
  return low;
})()"#;

/// Waits until the workflow panel lists exactly `count` rows, each `r` meeting `condition`.
async fn panel_shows(client: &Client, count: usize, condition: &str) {
    until(
        client,
        &format!(
            "(() => {{ const rows = [...document.querySelectorAll('#instances tbody tr')];
                      return rows.length === {count} && rows.every(r => {condition}); }})()"
        ),
    )
    .await;
}

/// What a tile shows.
async fn tile(client: &Client, figure: &str) -> String {
    eval(
        client,
        &format!("document.querySelector('[data-figure={figure}]').dataset.value"),
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let server = TestServer::start().await;
    switchyard_inventory::register(
        &server.running().engine,
        Arc::new(MemoryInventory::with_stock([("SKU-001", 1_000)])),
    );
    let addr = server.running().dashboard_addr.unwrap();
    for n in 0..3 {
        start_quote(&server, &format!("b-{n}"), "FIXED-4999").await;
    }
    confirmed_order(&server, "1").await;
    let driver = driver().await;
    let client = browser(&driver, false).await;

    // Without the session cookie the API is refused, and the page sends to the login form.
    client
        .goto(&format!("http://{addr}/api/summary"))
        .await
        .unwrap();
    let refused = eval(&client, "document.body.innerText").await;
    assert!(
        refused.as_str().unwrap().contains("not logged in"),
        "{refused}"
    );
    let status = eval(
        &client,
        "fetch('/api/instances', { credentials: 'omit' }).then(r => r.status)",
    )
    .await;
    assert_eq!(status, 401);
    client.goto(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/login");
    screenshot(&client, "login").await;
    // A wrong token: the form again, saying why.
    client
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("not-a-token")
        .await
        .unwrap();
    client
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let error = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("[role=alert]"))
        .await
        .unwrap();
    assert!(!error.text().await.unwrap().is_empty());
    // The session cookie is HttpOnly: the page's script cannot read it.
    log_in(&client, addr, &token("sales_manager")).await;
    assert_eq!(eval(&client, "document.cookie").await, "");

    // The figures shown equal the analytics API's.
    let today = eval(
        &client,
        "document.querySelector('#today').textContent.slice(0, 10)",
    )
    .await;
    let today = today.as_str().unwrap().to_string();
    let api = api_summary(&server, &today).await;
    let counts = api.counts.unwrap();
    assert_eq!(tile(&client, "quotes").await, counts.quotes.to_string());
    assert_eq!(tile(&client, "leads").await, counts.leads.to_string());
    assert_eq!(tile(&client, "orders").await, counts.orders.to_string());
    assert_eq!(counts.orders, 1);
    let eur = api
        .revenue
        .iter()
        .find(|r| r.currency_code == "EUR")
        .expect("EUR ordered");
    let shown = eval(
        &client,
        "document.querySelector('[data-currency=EUR][data-field=ordered]').dataset.value",
    )
    .await;
    assert_eq!(shown, eur.ordered.as_ref().unwrap().amount.as_str());
    let percent = api.funnel.unwrap().quote_to_order_percent;
    let shown = tile(&client, "quote_to_order").await;
    let expected = if percent.is_empty() {
        "—".to_string()
    } else {
        format!("{percent} %")
    };
    assert_eq!(shown, expected);
    // Nothing came from another origin (no CDN: the vendored Chart.js drew the chart).
    assert_eq!(
        eval(
            &client,
            "performance.getEntriesByType('resource').every(e => e.name.startsWith(location.origin))"
        )
        .await,
        true
    );
    assert_eq!(
        eval(
            &client,
            "typeof Chart === 'function' && !!Chart.getChart('chart')"
        )
        .await,
        true
    );
    screenshot(&client, "desktop").await;

    // Readable contrast: every visible piece of text against its background at least 4.5:1
    // (WCAG AA for normal text), badges and muted text included.
    let low = eval(&client, CONTRAST).await;
    assert_eq!(low, json!([]), "text below 4.5:1 contrast");
    // (The check notices pale grey on white; set through the CSSOM, as the page's CSP refuses
    // inline style attributes.)
    eval(
        &client,
        "(() => { const p = document.createElement('p'); p.id = 'pale'; p.textContent = 'pale';
                  p.style.color = '#bbb'; p.style.background = '#fff'; document.body.append(p);
                  return true; })()",
    )
    .await;
    assert_eq!(eval(&client, CONTRAST).await, json!(["p.: 1.92"]));
    eval(&client, "document.querySelector('#pale').remove()").await;

    // The chart by ISO week, then a range of one day; its table shows the same numbers.
    client
        .find(Locator::Id("period-week"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &client,
        "(() => { const rows = [...document.querySelectorAll('#series tbody tr')];
                  return rows.length === 12 && rows.every(r => r.dataset.period.includes('W')); })()",
    )
    .await;
    let week = eval(
        &client,
        "document.querySelector('#series tbody tr:last-child td').textContent",
    )
    .await;
    assert_eq!(week, json!(counts.orders.to_string()));
    client
        .find(Locator::Id("period-day"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eval(
        &client,
        &format!(
            "(() => {{ const from = document.querySelector('#from'); from.value = '{today}';
                       from.dispatchEvent(new Event('change')); return true; }})()"
        ),
    )
    .await;
    until(
        &client,
        &format!(
            "(() => {{ const rows = [...document.querySelectorAll('#series tbody tr')];
                      return rows.length === 1 && rows[0].dataset.period === '{today}'; }})()"
        ),
    )
    .await;

    // A new order appears without a reload: the tile counts it and the panel lists it.
    eval(&client, "(window.__same_page = true)").await;
    let order = confirmed_order(&server, "2").await;
    until(
        &client,
        "document.querySelector('[data-figure=orders]').dataset.value === '2'",
    )
    .await;
    until(
        &client,
        &format!("!!document.querySelector('#instances tr[data-id=\"{order}\"]')"),
    )
    .await;
    assert_eq!(eval(&client, "window.__same_page === true").await, true);
    let eur = api_summary(&server, &today).await.revenue;
    let ordered = eur.iter().find(|r| r.currency_code == "EUR").unwrap();
    until(
        &client,
        &format!(
            "document.querySelector('[data-currency=EUR][data-field=ordered]').dataset.value === '{}'",
            ordered.ordered.as_ref().unwrap().amount
        ),
    )
    .await;
    screenshot(&client, "desktop-after-order").await;

    // Filters: only quotes, then only orders in `confirmed`, then a business key.
    let workflow = client.find(Locator::Id("filter-workflow")).await.unwrap();
    workflow.select_by_value("quote").await.unwrap();
    panel_shows(&client, 3, "r.dataset.definition === 'quote'").await;
    workflow.select_by_value("sales_order").await.unwrap();
    client
        .find(Locator::Id("filter-state"))
        .await
        .unwrap()
        .select_by_value("confirmed")
        .await
        .unwrap();
    panel_shows(&client, 2, "r.dataset.state === 'confirmed'").await;
    workflow.select_by_value("").await.unwrap();
    client
        .find(Locator::Id("search"))
        .await
        .unwrap()
        .send_keys("WEB-2")
        .await
        .unwrap();
    panel_shows(&client, 1, &format!("r.dataset.id === '{order}'")).await;

    // An order is shown and found by the number its confirmation drew.
    let number = server
        .running()
        .engine
        .get(order.parse().unwrap())
        .await
        .unwrap()
        .data["number"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(number.starts_with("SO-"), "{number}");
    let search = client.find(Locator::Id("search")).await.unwrap();
    search.clear().await.unwrap();
    search.send_keys(&number).await.unwrap();
    panel_shows(
        &client,
        1,
        &format!(
            "r.dataset.id === '{order}' && r.querySelector('button').textContent === '{number}'"
        ),
    )
    .await;

    // Drill down: the whole history, with actors, reasons and the rule that decided.
    let history = server
        .running()
        .engine
        .history(order.parse().unwrap(), 0, 0)
        .await
        .unwrap();
    // From the keyboard: Enter on the row's button.
    client
        .find(Locator::Css(&format!(
            "#instances tr[data-id=\"{order}\"] button"
        )))
        .await
        .unwrap()
        .send_keys("\u{e007}")
        .await
        .unwrap();
    until(&client, "document.querySelector('#drill').open").await;
    until(
        &client,
        &format!(
            "document.querySelectorAll('#drill-history li[data-version]').length === {}",
            history.len()
        ),
    )
    .await;
    let text = eval(
        &client,
        "document.querySelector('#drill-history').innerText",
    )
    .await;
    let text = text.as_str().unwrap();
    for h in &history {
        assert!(text.contains(&h.actor.id), "{} in {text}", h.actor.id);
        assert!(text.contains(&h.reason), "{} in {text}", h.reason);
    }
    assert!(text.contains("rule "), "which rule decided: {text}");
    assert_eq!(
        eval(&client, CONTRAST).await,
        json!([]),
        "in the drill-down"
    );
    screenshot(&client, "drill-down").await;
    // The keyboard closes it (Escape), and focus stays on the page.
    client
        .find(Locator::Id("drill-close"))
        .await
        .unwrap()
        .send_keys("\u{e00c}")
        .await
        .unwrap();
    until(&client, "!document.querySelector('#drill').open").await;

    // The server restarts: the page notices, reconnects by itself (the session survives the
    // restart) and carries on updating, still without a reload.
    let TestServer { running, dir, .. } = server;
    running.unwrap().shutdown().await.unwrap();
    until(
        &client,
        "document.querySelector('#live').dataset.state !== 'live'",
    )
    .await;
    let mut config = harness::config(dir.path());
    config.dashboard.listen = addr;
    let server = TestServer::start_with(dir, config).await;
    switchyard_inventory::register(
        &server.running().engine,
        Arc::new(MemoryInventory::with_stock([("SKU-001", 1_000)])),
    );
    until(
        &client,
        "document.querySelector('#live').dataset.state === 'live'",
    )
    .await;
    confirmed_order(&server, "3").await;
    until(
        &client,
        "document.querySelector('[data-figure=orders]').dataset.value === '3'",
    )
    .await;
    assert_eq!(eval(&client, "window.__same_page === true").await, true);

    // Logout ends the session: the page is the login form and the API refuses.
    client
        .find(Locator::Css("form[action='/logout'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&client, "location.pathname === '/login'").await;
    let status = eval(&client, "fetch('/api/me').then(r => r.status)").await;
    assert_eq!(status, 401);
    client.close().await.unwrap();

    // A phone: everything fits 390 CSS pixels, nothing scrolls sideways.
    let phone = browser(&driver, true).await;
    log_in(&phone, addr, &token("sales_manager")).await;
    assert_eq!(eval(&phone, "window.innerWidth").await, 390);
    assert_eq!(
        eval(
            &phone,
            "document.documentElement.scrollWidth <= window.innerWidth"
        )
        .await,
        true,
        "the page scrolls sideways on a phone"
    );
    assert_eq!(tile(&phone, "orders").await, "3");
    // The tiles sit two or three to a row rather than one wide column.
    let tile_width = eval(
        &phone,
        "document.querySelector('[data-figure=orders]').getBoundingClientRect().width",
    )
    .await;
    assert!(tile_width.as_f64().unwrap() < 200.0, "{tile_width}");
    assert_eq!(eval(&phone, CONTRAST).await, json!([]), "on the phone");
    screenshot(&phone, "phone").await;
    phone.close().await.unwrap();
    server.stop().await;
}
