//! `switchyard serve` as a process: it starts with a file plus environment overrides, prints
//! its address, serves under load, and on SIGTERM stops accepting, drains in-flight calls and
//! flushes — every acknowledged command is in the store afterwards.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_grpc::auth::token_hash;
use switchyard_grpc::pb;
use switchyard_grpc::pb::instance_service_client::InstanceServiceClient;

mod common;
use common::{listening, spawn_serve, stop};

const TOKEN: &str = "load-test-token";

fn rules_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules")
}

#[test]
fn sigterm_under_load_loses_no_acknowledged_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\ndurability = \"fsync\"\n\n[[auth.tokens]]\nsha256 = \"{}\"\nactor = \"loader\"\nroles = [\"sales_rep\"]\n",
            token_hash(TOKEN)
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--rules")
        .arg(rules_dir())
        .arg("--data-dir")
        .arg(&data)
        // Environment overrides beat the file: flush mode keeps the test fast.
        .env("SWITCHYARD_GRPC_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_METRICS_ENABLED", "false")
        .env("SWITCHYARD_DASHBOARD_ENABLED", "false")
        .env("SWITCHYARD_STORE_DURABILITY", "flush")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("switchyard listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    assert!(addr.starts_with("http://127.0.0.1:"), "{addr}");

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pid = child.id();
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut workers = Vec::new();
        for worker in 0..16 {
            let acked = acked.clone();
            let channel = channel.clone();
            workers.push(tokio::spawn(async move {
                let mut client = InstanceServiceClient::new(channel);
                for n in 0.. {
                    let request_id = format!("w{worker}-{n}");
                    let mut request = tonic::Request::new(pb::StartInstanceRequest {
                        request_id: request_id.clone(),
                        definition: "lead".into(),
                        business_key: request_id.clone(),
                        data_json: format!("{{\"company\": \"{request_id}\"}}"),
                        ..Default::default()
                    });
                    request
                        .metadata_mut()
                        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
                    match client.start_instance(request).await {
                        Ok(answer) => {
                            let result = answer.into_inner().result.unwrap();
                            acked.lock().unwrap().push((request_id, result.instance_id));
                        }
                        // Refused or cut off while shutting down: not acknowledged.
                        Err(_) => return,
                    }
                }
            }));
        }
        // Let the load build up, then ask the server to stop while calls are in flight.
        let started = Instant::now();
        while acked.lock().unwrap().len() < 200 && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for w in workers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("every worker ends once the server stops")
                .unwrap();
        }
    });
    let exit = child.wait().unwrap();
    assert!(exit.success(), "the server exits cleanly: {exit:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.contains("switchyard stopped"), "{rest}");

    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} starts acknowledged before the server stopped",
        acked.len()
    );
    assert!(
        acked.len() >= 200,
        "only {} commands were acknowledged",
        acked.len()
    );
    // Reopen the store: every acknowledged start is there, with its data.
    runtime.block_on(async {
        let mut config = switchyard_core::EngineConfig::new(switchyard_core::StoreConfig::Sled(
            switchyard_core::SledConfig::new(&data),
        ));
        config.purge_interval = Duration::from_secs(3600);
        let engine = switchyard_core::Engine::open_with_rules(
            config,
            &rules_dir(),
            switchyard_core::DeciderRegistry::new(),
            switchyard_core::RuleLimits::default(),
        )
        .await
        .unwrap();
        for (request_id, id) in &acked {
            let instance = engine
                .get(id.parse().unwrap())
                .await
                .unwrap_or_else(|e| panic!("acknowledged {request_id} is lost: {e}"));
            assert_eq!(&instance.business_key, request_id);
            assert_eq!(instance.data["company"], request_id.as_str());
        }
        engine.shutdown().await;
    });
}

#[test]
fn credentials_never_reach_the_logs_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nsha256 = \"{}\"\nactor = \"loader\"\nroles = [\"sales_rep\"]\n",
            token_hash(TOKEN)
        ),
    )
    .unwrap();
    let log = dir.path().join("log.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--rules")
        .arg(rules_dir())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("SWITCHYARD_GRPC_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_METRICS_ENABLED", "false")
        .env("SWITCHYARD_DASHBOARD_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_STORE_DURABILITY", "flush")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("switchyard listening on ")
        .unwrap()
        .to_string();
    let mut dashboard = String::new();
    while !dashboard.starts_with("dashboard on ") {
        dashboard.clear();
        assert!(stdout.read_line(&mut dashboard).unwrap() > 0);
    }
    let dashboard = dashboard
        .trim()
        .strip_prefix("dashboard on http://")
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let unknown = "an-unknown-secret-token-value";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(addr)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = InstanceServiceClient::new(channel);
        for (n, bearer) in [TOKEN, unknown, "e30.e30.c2ln"].iter().enumerate() {
            let mut request = tonic::Request::new(pb::StartInstanceRequest {
                request_id: format!("r-{n}"),
                definition: "lead".into(),
                business_key: "L".into(),
                data_json: "{\"company\": \"Acme\"}".into(),
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
            let _ = client.start_instance(request).await;
        }
    });
    // The dashboard's login form, with a good and an unknown token, and a call with the
    // session cookie: neither the tokens nor the cookie are logged.
    let http = |request: String| {
        use std::io::{Read, Write};
        let mut socket = std::net::TcpStream::connect(&dashboard).unwrap();
        socket.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).unwrap();
        answer
    };
    let login = |token: &str| {
        let body = format!("token={token}");
        http(format!(
            "POST /login HTTP/1.1\r\nHost: {dashboard}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    };
    assert!(login(unknown).starts_with("HTTP/1.1 401"));
    let answer = login(TOKEN);
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("{answer}"))
        .to_string();
    let me = http(format!(
        "GET /api/me HTTP/1.1\r\nHost: {dashboard}\r\nCookie: {cookie}\r\n\r\n"
    ));
    assert!(me.contains("\"actor\":\"loader\""), "{me}");
    // Close the client's connection: an open but silent one would hold the drain until its
    // timeout.
    drop(runtime);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("refused an unknown credential"),
        "the refusal is logged"
    );
    assert!(text.contains("dashboard: logged in"), "the login is logged");
    let session = cookie.split_once('=').unwrap().1;
    for secret in [TOKEN, unknown, "e30.e30.c2ln", session] {
        assert!(!text.contains(secret), "`{secret}` appears in the log");
    }
    // One layer logs every call: the RPC, who called, and the outcome with its reason.
    let start = "rpc{path=/switchyard.v1.InstanceService/StartInstance";
    assert!(
        text.lines()
            .any(|l| l.contains(start) && l.contains("actor=loader") && l.contains("answered")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains(start)
            && l.contains("refused")
            && l.contains("Unauthenticated")
            && l.contains("reason=UNKNOWN_CREDENTIALS")),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no colour escape codes in a log file"
    );
}

#[test]
fn serve_raises_its_soft_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_dir();
    let mut child = spawn_serve(
        dir.path(),
        &["--rules", rules.to_str().unwrap(), "--data-dir", "data"],
        Some(256),
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("switchyard listening on "), "{line}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(open_files[0], open_files[1], "soft = hard: {open_files:?}");
    assert_ne!(open_files[0], "256");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn serve_without_a_rules_directory_fails_and_leaves_no_store_behind() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_serve(dir.path(), &[], None);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rules"), "{err}");
    assert!(
        !dir.path().join("switchyard-data").exists(),
        "no empty store is left behind"
    );
}

/// A running `switchyard serve` for client commands: a token `t-<role>` for each of `roles`,
/// the shipped rules, and `extra` arguments; returns the child and the address it printed.
fn serve_for_clients(dir: &Path, roles: &[&str], extra: &[&str]) -> (std::process::Child, String) {
    let mut tokens = String::new();
    for role in roles {
        tokens += &format!(
            "[[auth.tokens]]\nsha256 = \"{}\"\nactor = \"u-{role}\"\nroles = [\"{role}\"]\n\n",
            token_hash(&format!("t-{role}"))
        );
    }
    let config = dir.join("switchyard.toml");
    std::fs::write(&config, tokens).unwrap();
    let rules = rules_dir();
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--data-dir",
        "data",
    ];
    args.extend_from_slice(extra);
    let mut child = spawn_serve(dir, &args, None);
    let addr = listening(&mut child);
    (child, addr)
}

/// Runs a client command against `addr` as `t-<role>`: (exit code, stdout, stderr).
fn client(addr: &str, role: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .args(["--addr", addr])
        .env("SWITCHYARD_TOKEN", format!("t-{role}"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_test_server_on_a_manual_clock_is_advanced_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve_for_clients(
        dir.path(),
        &["admin"],
        &["--clock", "manual", "--clock-start", "2026-04-01T09:00:00Z"],
    );
    let cli = |args: &[&str]| client(&addr, "admin", args);
    let (code, out, err) = cli(&["clock", "show"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "2026-04-01T09:00:00+00:00 (manual test clock)");
    let (code, out, err) = cli(&["clock", "advance", "2d"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "2026-04-03T09:00:00+00:00 (0 timer(s) fired)");
    let (code, _, err) = cli(&["clock", "advance", "soon"]);
    assert_eq!(code, 2, "bad input: {err}");
    let (code, _, err) = cli(&["clock", "show", "--token", "wrong"]);
    assert_eq!(code, 1, "refused: {err}");
    stop(child);
    // Nobody listens any more: unavailable.
    let (code, _, err) = cli(&["clock", "show"]);
    assert_eq!(code, 3, "unavailable: {err}");
}

#[test]
fn the_client_commands_start_drive_show_list_and_tail_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_dir();
    let (child, addr) =
        serve_for_clients(dir.path(), &["sales_rep", "sales_manager", "analyst"], &[]);
    let cli = |role: &str, args: &[&str]| client(&addr, role, args);
    let data = dir.path().join("lead.json");
    std::fs::write(&data, r#"{"company": "ACME GmbH", "source": "event"}"#).unwrap();
    let (code, out, err) = cli(
        "sales_rep",
        &[
            "instance",
            "start",
            "lead",
            "--data",
            &format!("@{}", data.display()),
            "--key",
            "L-1",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let started: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let id = started["instance_id"].as_str().unwrap().to_string();
    assert_eq!(started["state"], "new");
    let (code, out, err) = cli(
        "sales_manager",
        &[
            "instance",
            "send",
            &id,
            "assign",
            "--payload",
            r#"{"owner": "u-sales_rep"}"#,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("v2 assigned: assigned to u-sales_rep by u-sales_manager"),
        "{out}"
    );
    // A rep may not assign (refused: 1); a payload that is not JSON is bad input (2).
    let (code, _, err) = cli(
        "sales_rep",
        &[
            "instance",
            "send",
            &id,
            "assign",
            "--payload",
            r#"{"owner": "x"}"#,
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ROLE_NOT_ALLOWED"), "{err}");
    let (code, _, err) = cli(
        "sales_manager",
        &["instance", "send", &id, "assign", "--payload", "{owner"],
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(
        "sales_manager",
        &[
            "instance",
            "send",
            &id,
            "assign",
            "--payload",
            r#"{"owner": 7}"#,
        ],
    );
    assert_eq!(code, 2, "the server named the field: {err}");
    let (code, out, err) = cli("sales_rep", &["instance", "show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("lead ") && out.contains(" v2 assigned (L-1)"),
        "{out}"
    );
    assert!(
        out.contains("u-sales_manager")
            && out.contains("assigned to u-sales_rep by u-sales_manager"),
        "{out}"
    );
    let (code, out, err) = cli("sales_rep", &["instance", "list", "--definition", "lead"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("assigned")),
        "{out}"
    );
    let (code, out, err) = cli(
        "sales_rep",
        &["feed", "--until-caught-up", "--output", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    assert_eq!(events[1]["offset"], 2);
    assert_eq!(events[1]["subject"], id.as_str());
    // Rule sets, from the same rules folder the server started with, as it is.
    let rules_arg = rules.to_str().unwrap();
    let (code, out, err) = cli("analyst", &["rule-set", "validate", rules_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("valid: rule set sha256:"), "{out}");
    assert!(
        err.contains("not a rule-set file, left out: README.md"),
        "{err}"
    );
    let (code, out, err) = cli("analyst", &["rule-set", "list", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (listed["number"].clone(), listed["active"].clone()),
        (serde_json::json!(1), serde_json::json!(true))
    );
    let (code, out, err) = cli("analyst", &["rule-set", "deploy", rules_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(active)"), "{out}");
    let (code, out, err) = cli("analyst", &["rule-set", "activate", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.trim_start().starts_with("1 ") && out.contains("(active)"),
        "{out}"
    );
    let (code, _, err) = cli("sales_rep", &["rule-set", "deploy", rules_arg]);
    assert_eq!(code, 1, "a sales rep may not deploy: {err}");
    stop(child);
}

/// Runs `switchyard` with `args` in `cwd`: (exit code, stdout, stderr).
fn run(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_running_servers_store_is_exported_and_restored_into_a_new_store_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve_for_clients(dir.path(), &["sales_rep", "admin"], &[]);
    let cli = |role: &str, args: &[&str]| client(&addr, role, args);
    let (code, out, err) = cli(
        "sales_rep",
        &[
            "instance",
            "start",
            "lead",
            "--data",
            r#"{"company": "ACME GmbH", "source": "event"}"#,
            "--key",
            "L-1",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    let backup = dir.path().join("backup.jsonl");
    let backup_arg = backup.to_str().unwrap();
    let (code, _, err) = cli("sales_rep", &["export", "--out", backup_arg]);
    assert_eq!(code, 1, "only an admin exports: {err}");
    assert!(!backup.exists());
    let (code, out, err) = cli("admin", &["export", "--out", backup_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("exported to"), "{out}");
    let (code, _, err) = cli("admin", &["export", "--out", backup_arg]);
    assert_eq!(code, 2, "an existing file is never overwritten: {err}");
    stop(child);
    let text = std::fs::read_to_string(&backup).unwrap();
    for kind in [
        "instance",
        "history",
        "request",
        "feed",
        "rule_set",
        "activation",
        "meta",
    ] {
        assert!(text.contains(&format!("{{\"kind\":\"{kind}\"")), "{kind}");
    }

    // Restored into a new store, which exports (offline) to the same records.
    let restored = tempfile::tempdir().unwrap();
    let (code, out, err) = run(
        restored.path(),
        &["import", "--in", backup_arg, "--store", "data"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("restored "), "{out}");
    let (code, _, err) = run(
        restored.path(),
        &["export", "--store", "data", "--out", "again.jsonl"],
    );
    assert_eq!(code, 0, "{err}");
    let again = std::fs::read_to_string(restored.path().join("again.jsonl")).unwrap();
    assert_eq!(
        again.lines().skip(1).collect::<Vec<_>>(),
        text.lines().skip(1).collect::<Vec<_>>()
    );
    // Never into a store that holds anything.
    let (code, _, err) = run(
        restored.path(),
        &["import", "--in", backup_arg, "--store", "data"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not empty"), "{err}");
    // A cut-off file is refused naming where it ends; this one is refused before its first
    // batch, so the store stays empty and takes the whole file afterwards.
    let cut: Vec<&str> = text.lines().collect();
    let cut_file = restored.path().join("cut.jsonl");
    std::fs::write(&cut_file, cut[..cut.len() - 1].join("\n") + "\n").unwrap();
    let (code, _, err) = run(
        restored.path(),
        &["import", "--in", "cut.jsonl", "--store", "other"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "backup line {}: the backup ends without its end line",
            cut.len()
        )),
        "{err}"
    );
    let (code, _, err) = run(
        restored.path(),
        &["import", "--in", backup_arg, "--store", "other"],
    );
    assert_eq!(code, 0, "{err}");

    // A server on the restored store has the lead, its history and the rule set.
    let (child, addr) = serve_for_clients(restored.path(), &["sales_rep", "admin"], &[]);
    let (code, out, err) = client(
        &addr,
        "sales_rep",
        &["instance", "show", &id, "--output", "json"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ACME GmbH"), "{out}");
    let (code, out, err) = client(&addr, "admin", &["rule-set", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("active"), "{out}");
    stop(child);
}

#[test]
fn the_command_line_worker_answers_jobs_from_an_answer_file() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve_for_clients(dir.path(), &["sales_rep", "system"], &[]);
    let cli = |role: &str, args: &[&str]| client(&addr, role, args);
    let submitted = |key: &str| {
        let (code, out, err) = cli(
            "sales_rep",
            &[
                "instance",
                "start",
                "sales_order",
                "--key",
                key,
                "--output",
                "json",
                "--data",
                r#"{"customer": "BETA", "currency": "EUR", "lines": [{"sku": "SEAL-KIT", "quantity": 2}]}"#,
            ],
        );
        assert_eq!(code, 0, "{err}");
        let id = serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["instance_id"]
            .as_str()
            .unwrap()
            .to_string();
        let (code, _, err) = cli("sales_rep", &["instance", "send", &id, "submit"]);
        assert_eq!(code, 0, "{err}");
        id
    };
    let state = |id: &str| {
        let (code, out, err) = cli("sales_rep", &["instance", "show", id, "--output", "json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(out.lines().next().unwrap()).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let answers = dir.path().join("answers.json");
    let answers_arg = answers.to_str().unwrap();

    // A failure, with its own retry time: the order keeps waiting for stock.
    let first = submitted("SO-A");
    assert_eq!(state(&first), "checking_stock");
    std::fs::write(
        &answers,
        r#"{"reserve_stock": {"fail": "warehouse offline", "retry_in": "10m"}}"#,
    )
    .unwrap();
    let (code, out, err) = cli("system", &["worker", "--answers", answers_arg, "--once"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("on {first}: failed: warehouse offline")),
        "{out}"
    );
    assert_eq!(state(&first), "checking_stock");

    // A result filled from each job's payload (the shipped example answers): the next
    // order's stock is reserved.
    let second = submitted("SO-B");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/answers.json"),
        &answers,
    )
    .unwrap();
    let (code, out, err) = cli(
        "system",
        &[
            "worker",
            "--answers",
            answers_arg,
            "--once",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (
            line["instance_id"].as_str().unwrap(),
            line["outcome"].as_str().unwrap()
        ),
        (second.as_str(), "completed")
    );
    assert_ne!(state(&second), "checking_stock");
    assert_eq!(state(&second), line["state"].as_str().unwrap());

    // Bad input: a broken file is refused naming its place (2); a rep may not work jobs (1).
    std::fs::write(&answers, "{\"reserve_stock\": {\"result\": }}").unwrap();
    let (code, _, err) = cli("system", &["worker", "--answers", answers_arg, "--once"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("answers.json:1:"), "{err}");
    std::fs::write(&answers, r#"{"reserve_stock": {"result": {}}}"#).unwrap();
    let (code, _, err) = cli("sales_rep", &["worker", "--answers", answers_arg, "--once"]);
    assert_eq!(code, 1, "{err}");
    stop(child);
}

#[test]
fn a_bulk_import_applies_good_lines_names_bad_ones_and_a_rerun_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve_for_clients(dir.path(), &["sales_rep"], &[]);
    let cli = |args: &[&str]| client(&addr, "sales_rep", args);
    let file = dir.path().join("leads.jsonl");
    let file_arg = file.to_str().unwrap();
    std::fs::write(
        &file,
        [
            r#"{"data": {"company": "ACME GmbH", "source": "event"}, "business_key": "L-1"}"#,
            r#"{"data": {"company": "BETA AG"}, "business_key": "L-2"}"#,
            r#"{"data": {"company": "Gamma", "revenue": 1}, "business_key": "L-3"}"#,
            r#"{"data": {"company": "#,
            "",
            r#"{"data": {"company": "Delta"}, "business_key": "L-6", "definition": "nope"}"#,
            r#"{"data": {"company": "Epsilon"}, "business_key": "L-7", "request_id": "r-1", "instance_id": "01930000-0000-7000-8000-000000000007"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let import = |extra: &[&str]| {
        let mut args = vec!["instance", "import", file_arg, "--definition", "lead"];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let (code, out, err) = import(&[]);
    assert_eq!(code, 2, "bad lines make it exit 2: {out} {err}");
    assert!(
        out.contains("3 started, 0 already there, 1 refused, 2 bad"),
        "{out}"
    );
    assert!(err.contains("leads.jsonl:3: bad: INVALID_PAYLOAD"), "{err}");
    assert!(err.contains("leads.jsonl:4: bad: column"), "{err}");
    assert!(
        err.contains("leads.jsonl:6: refused: UNKNOWN_DEFINITION"),
        "{err}"
    );
    // The same file again: nothing applied twice.
    let (code, out, err) = import(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        out.contains("0 started, 3 already there, 1 refused, 2 bad"),
        "{out}"
    );
    let (code, out, err) = cli(&[
        "instance",
        "list",
        "--definition",
        "lead",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    // After request ids expire, the chosen (or derived) instance id still keeps it once.
    std::fs::write(
        &file,
        r#"{"data": {"company": "Epsilon"}, "business_key": "L-7", "request_id": "r-2", "instance_id": "01930000-0000-7000-8000-000000000007"}"#,
    )
    .unwrap();
    let (code, out, err) = import(&["--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["line"].as_u64(), first["outcome"].as_str()),
        (Some(1), Some("already"))
    );
    assert!(
        out.contains("0 started, 1 already there, 0 refused, 0 bad"),
        "{out}"
    );
    // CSV, resumed from its third line.
    let csv = dir.path().join("leads.csv");
    std::fs::write(
        &csv,
        "business_key,company\nL-10,Zeta\nL-11,Eta\nL-12,Theta\n",
    )
    .unwrap();
    let (code, out, err) = cli(&[
        "instance",
        "import",
        csv.to_str().unwrap(),
        "--definition",
        "lead",
        "--from-line",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 started, 0 already there"), "{out}");
    let (_, out, _) = cli(&[
        "instance",
        "list",
        "--definition",
        "lead",
        "--key",
        "L-10",
        "--output",
        "json",
    ]);
    assert!(
        out.trim().is_empty(),
        "line 2 was before the resume point: {out}"
    );
    stop(child);
}

#[test]
fn the_demo_moves_orders_to_cash_through_the_shipped_rules_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(dir.path())
        .args([
            "serve",
            "--demo",
            "--demo-journeys",
            "6",
            "--demo-pace-ms",
            "20",
        ])
        .arg("--rules")
        .arg(rules_dir())
        .env("SWITCHYARD_GRPC_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_METRICS_ENABLED", "false")
        .env("SWITCHYARD_DASHBOARD_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_STORE_DURABILITY", "flush")
        // The demo's store goes under TMPDIR: here, so the test sees it removed.
        .env("TMPDIR", dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("log in to the dashboard with the token") {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "{printed}");
        printed += &line;
    }
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let field = |prefix: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {printed}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let addr = field("switchyard listening on ");
    let token = printed.rsplit(' ').next().unwrap().trim().to_string();
    assert!(token.starts_with("sy_"), "{printed}");
    assert!(field("dashboard on ").starts_with("http://127.0.0.1:"));
    let store = field("demo: 6 journeys through the shipped rules; store in ");
    assert!(store.starts_with(dir.path().to_str().unwrap()), "{store}");

    // The printed token is an admin's: with it, orders are seen reaching `closed` — credit
    // checked, stock reserved, shipped and delivered, invoiced and paid — by the rules, with
    // the reference adapters answering the jobs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let closed = runtime.block_on(async {
        let mut instances = InstanceServiceClient::connect(addr).await.unwrap();
        for _ in 0..600 {
            let mut request = tonic::Request::new(pb::ListInstancesRequest {
                definition: "sales_order".into(),
                state: "closed".into(),
                page_size: 100,
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let page = instances
                .list_instances(request)
                .await
                .unwrap()
                .into_inner();
            if page.instances.len() >= 3 {
                return page.instances;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no three orders closed within a minute");
    });
    for order in &closed {
        let data: serde_json::Value = serde_json::from_str(&order.data_json).unwrap();
        assert!(
            data["number"].as_str().unwrap().starts_with("SO-"),
            "{data}"
        );
        assert!(!data["invoices"].as_array().unwrap().is_empty(), "{data}");
    }
    stop(child);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with("switchyard-demo-"))
        .collect();
    assert!(
        left.is_empty(),
        "the demo's store was left behind: {left:?}"
    );
}
