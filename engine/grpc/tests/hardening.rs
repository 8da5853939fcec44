//! What an attacker or an unlucky operator tries through the public API: credentials without
//! the right role, oversized and malformed input, refusals that must stay small.

mod harness;

use harness::*;
use switchyard_grpc::auth::token_hash;
use switchyard_grpc::config::TokenConfig;
use switchyard_grpc::pb;
use tonic::Code;
use tonic_types::StatusExt;

/// A server whose tokens also include one without roles and one for `logistics` only.
async fn server() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    for (token, roles) in [
        ("no-roles-token", vec![]),
        ("logistics-token", vec!["logistics"]),
    ] {
        config.auth.tokens.push(TokenConfig {
            sha256: token_hash(token),
            actor: token.into(),
            roles: roles.into_iter().map(String::from).collect(),
        });
    }
    TestServer::start_with(dir, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_without_roles_is_refused_everything_but_health() {
    let server = server().await;
    let refused = one_call_per_service(&server, Some("no-roles-token")).await;
    assert_eq!(refused.len(), 4, "one per service");
    for status in refused {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(status.get_details_error_info().unwrap().reason, "NO_ROLES");
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, 1, "SERVING");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_a_role_the_definition_lets_read() {
    let server = server().await;
    let quote = start_quote(&server, "r-1", "FIXED-4999").await;
    let mut client = server.instances();
    let get = |bearer: &str| {
        authed(
            bearer,
            pb::GetInstanceRequest {
                instance_id: quote.instance_id.clone(),
            },
        )
    };
    let refused = client.get_instance(get("logistics-token")).await;
    expect_refusal(refused, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let history = client
        .list_instance_history(authed(
            "logistics-token",
            pb::ListInstanceHistoryRequest {
                instance_id: quote.instance_id.clone(),
                ..Default::default()
            },
        ))
        .await;
    expect_refusal(history, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let by_definition = client
        .list_instances(authed(
            "logistics-token",
            pb::ListInstancesRequest {
                definition: "quote".into(),
                ..Default::default()
            },
        ))
        .await;
    expect_refusal(by_definition, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let everything = client
        .list_instances(authed(
            "logistics-token",
            pb::ListInstancesRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(everything.instances.is_empty(), "quotes are left out");
    // Those the definition names read it.
    for role in ["sales_rep", "finance", "analyst", "admin"] {
        client.get_instance(get(&token(role))).await.unwrap();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validating_and_evaluating_rules_need_the_analyst_or_admin_role() {
    let server = server().await;
    let mut rules = server.rule_sets();
    let validate = rules
        .validate_rule_set(as_role(
            "sales_rep",
            pb::ValidateRuleSetRequest {
                files: rule_files(&repo_rules()),
            },
        ))
        .await;
    expect_refusal(validate, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let evaluate = rules
        .evaluate_rule(as_role(
            "sales_rep",
            pb::EvaluateRuleRequest {
                decider: "quote::submit".into(),
                instance_json: r#"{"state": "draft", "data": {}}"#.into(),
                ..Default::default()
            },
        ))
        .await;
    expect_refusal(evaluate, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let valid = rules
        .validate_rule_set(as_role(
            "analyst",
            pb::ValidateRuleSetRequest {
                files: rule_files(&repo_rules()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(valid.valid, "{:?}", valid.problems);
    server.stop().await;
}

/// Sends `body` as the protobuf message of `path`, as bytes.
async fn raw_call(server: &TestServer, path: &str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    grpc.ready().await.unwrap();
    let request = as_role("admin", body);
    grpc.unary::<Vec<u8>, Vec<u8>, _>(request, path.parse().unwrap(), RawCodec)
        .await
        .expect_err("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_valid_protobuf_is_invalid_argument_not_internal() {
    let server = server().await;
    let path = "/switchyard.v1.InstanceService/GetInstance";
    for (what, body) in [
        ("a string that is not UTF-8", vec![0x0a, 0x02, 0xff, 0xfe]),
        ("a wrong wire type", vec![0x0d, 0x01, 0x02, 0x03, 0x04]),
        ("a truncated field", vec![0x0a, 0x10, b'a']),
        ("a field number 0", vec![0x00, 0x01]),
    ] {
        let status = raw_call(&server, path, body).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains("not a valid protobuf message"),
            "{what}: {status:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_stay_small_whatever_was_sent() {
    let server = server().await;
    let huge = "x".repeat(1024 * 1024);
    let mut client = server.instances();
    let mut statuses = Vec::new();
    statuses.push(
        client
            .get_instance(as_role(
                "admin",
                pb::GetInstanceRequest {
                    instance_id: huge.clone(),
                },
            ))
            .await
            .unwrap_err(),
    );
    statuses.push(
        client
            .start_instance(as_role(
                "sales_rep",
                pb::StartInstanceRequest {
                    request_id: "r-huge".into(),
                    definition: huge.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
    );
    let quote = start_quote(&server, "r-q", "FIXED-4999").await;
    statuses.push(
        client
            .send_command(as_role(
                "sales_rep",
                pb::SendCommandRequest {
                    request_id: "r-cmd".into(),
                    instance_id: quote.instance_id.clone(),
                    command: huge.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
    );
    let key = "k".repeat(60 * 1024);
    statuses.push(
        client
            .send_command(as_role(
                "sales_rep",
                pb::SendCommandRequest {
                    request_id: "r-key".into(),
                    instance_id: quote.instance_id.clone(),
                    command: "submit".into(),
                    payload_json: format!(r#"{{"{key}": 1}}"#),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
    );
    statuses.push(
        client
            .list_instances(as_role(
                "admin",
                pb::ListInstancesRequest {
                    page_token: huge.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
    );
    let codes: Vec<Code> = statuses.iter().map(|s| s.code()).collect();
    assert_eq!(
        codes,
        [
            Code::InvalidArgument,
            Code::NotFound,
            Code::InvalidArgument,
            Code::InvalidArgument,
            Code::InvalidArgument
        ]
    );
    for status in &statuses {
        assert!(status.message().len() <= 1024, "{}", status.message().len());
        assert!(status.details().len() <= 2048, "{}", status.details().len());
        assert!(!status.message().contains(&huge[..2048]));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_json_keys_zero_quantities_and_empty_lines_are_refused_naming_the_field() {
    let server = server().await;
    let mut client = server.instances();
    let start = |key: &str, data: &str| {
        as_role(
            "sales_rep",
            pb::StartInstanceRequest {
                request_id: format!("r-{key}"),
                definition: "quote".into(),
                business_key: key.into(),
                data_json: data.into(),
                ..Default::default()
            },
        )
    };
    let duplicate = client
        .start_instance(start(
            "dup",
            r#"{"customer": "BETA", "currency": "EUR", "valid_until": "2099-05-01", "lines": [{"sku": "FIXED-4999", "quantity": 1, "quantity": -5}]}"#,
        ))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::InvalidArgument);
    assert!(
        duplicate.message().contains("duplicate key `quantity`"),
        "{duplicate:?}"
    );
    assert_eq!(bad_fields(&duplicate), ["data_json"]);
    let zero = client
        .start_instance(start(
            "zero",
            r#"{"customer": "BETA", "currency": "EUR", "valid_until": "2099-05-01", "lines": [{"sku": "FIXED-4999", "quantity": 0}]}"#,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&zero), ["data_json.lines[0].quantity"]);
    let empty = client
        .start_instance(start(
            "empty",
            r#"{"customer": "BETA", "currency": "EUR", "valid_until": "2099-05-01", "lines": []}"#,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&empty), ["data_json.lines"]);
    assert_eq!(instance_count(&server).await, 0, "nothing written");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_instance_is_not_listed_by_the_state_it_was_cancelled_in() {
    let server = server().await;
    let kept = start_quote(&server, "r-kept", "FIXED-4999").await;
    let cancelled = start_quote(&server, "r-gone", "FIXED-4999").await;
    let mut client = server.instances();
    client
        .cancel_instance(as_role(
            "admin",
            pb::CancelInstanceRequest {
                request_id: "r-cancel".into(),
                instance_id: cancelled.instance_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let drafts = client
        .list_instances(as_role(
            "admin",
            pb::ListInstancesRequest {
                definition: "quote".into(),
                state: "draft".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = drafts.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, [kept.instance_id.as_str()]);
    server.stop().await;
}

/// Bytes in, bytes out: lets a test send a message that is not valid protobuf.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// The shipped rules plus a script whose decider never ends, and (optionally) many tests of it.
fn spinning_rules(tests: usize) -> Vec<pb::RuleFile> {
    let mut files = rule_files(&repo_rules());
    files.push(pb::RuleFile {
        path: "scripts/spin.rhai".into(),
        content: "fn spin(instance, payload, actor) { let n = 0; loop { n += 1; } }\n".into(),
    });
    if tests > 0 {
        let mut text = String::new();
        for i in 0..tests {
            text.push_str(&format!(
                "[[test]]\nname = \"spin {i}\"\nfunction = \"spin::spin\"\ninstance = {{ state = \"draft\", data = {{}} }}\nexpect = {{ state = \"draft\" }}\n\n"
            ));
        }
        files.push(pb::RuleFile {
            path: "tests/spin.toml".into(),
            content: text,
        });
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reads_stay_fast_while_rule_work_saturates_its_pool() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.engine.rule_threads = 2;
    config.engine.rule_queue_max = 16;
    config.engine.rule_tests_deadline = "1s".into();
    let server = TestServer::start_with(dir, config).await;
    let quote = start_quote(&server, "r-1", "FIXED-4999").await;
    server
        .rule_sets()
        .deploy_rule_set(as_role(
            "analyst",
            pb::DeployRuleSetRequest {
                request_id: "d-spin".into(),
                files: spinning_rules(0),
            },
        ))
        .await
        .unwrap();

    // 64 looping evaluations (each stopped by its 100 ms deadline) and 4 validations of a rule
    // set with 100 looping tests, all at once.
    let mut load = Vec::new();
    for i in 0..64 {
        let mut rules = server.rule_sets();
        load.push(tokio::spawn(async move {
            rules
                .evaluate_rule(as_role(
                    "analyst",
                    pb::EvaluateRuleRequest {
                        decider: "spin::spin".into(),
                        instance_json: format!(r#"{{"state": "draft", "data": {{"i": {i}}}}}"#),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ())
        }));
    }
    for _ in 0..4 {
        let mut rules = server.rule_sets();
        load.push(tokio::spawn(async move {
            rules
                .validate_rule_set(as_role(
                    "analyst",
                    pb::ValidateRuleSetRequest {
                        files: spinning_rules(100),
                    },
                ))
                .await
                .map(|r| assert!(!r.into_inner().valid))
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let mut client = server.instances();
    let mut slowest = std::time::Duration::ZERO;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap();
        client
            .get_instance(as_role(
                "sales_rep",
                pb::GetInstanceRequest {
                    instance_id: quote.instance_id.clone(),
                },
            ))
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut refused = 0;
    for task in load {
        match task.await.unwrap() {
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert_eq!(
                    status.get_details_error_info().unwrap().reason,
                    "OVERLOADED"
                );
                refused += 1;
            }
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
            Ok(()) => {}
        }
    }
    eprintln!("slowest health+read: {slowest:?}; refused {refused}");
    assert!(
        refused > 0,
        "the bounded queue refused some of the rule work"
    );
    assert!(
        slowest < std::time::Duration::from_millis(500),
        "a health check and a read took {slowest:?} while rules ran"
    );
    server.stop().await;
}

/// A server whose connection limits are small enough to test.
async fn tight_server(connections_max: usize) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.grpc.connections_max = connections_max;
    config.grpc.handshake_timeout = "1s".into();
    config.grpc.request_timeout = "1s".into();
    TestServer::start_with(dir, config).await
}

/// Whether the server closes `socket` within `within` (reading gives end of file or an error).
async fn closed_within(socket: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // the server's SETTINGS, GOAWAY…
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_open_connections_are_closed_and_the_limit_holds() {
    use tokio::io::AsyncWriteExt;
    let server = tight_server(8).await;
    let addr = server.running().grpc_addr;
    // The harness's own client holds one of the 8 slots.
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // The limit is reached: one more is closed at once.
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut extra, std::time::Duration::from_millis(500)).await);
    // The silent and the half-sent ones are closed at the handshake deadline…
    assert!(closed_within(&mut half, std::time::Duration::from_secs(3)).await);
    for socket in &mut silent {
        assert!(closed_within(socket, std::time::Duration::from_secs(3)).await);
    }
    // …and a real client is served again.
    let quote = start_quote(&server, "r-after", "FIXED-4999").await;
    assert_eq!(quote.state, "draft");
    let metrics = http_get(server.running().metrics_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("switchyard_connections_refused_total 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_never_comes_is_ended_by_the_request_timeout() {
    let server = tight_server(64).await;
    let socket = tokio::net::TcpStream::connect(server.running().grpc_addr)
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/switchyard.v1.InstanceService/GetInstance",
            server.running().grpc_addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", token("admin")))
        .body(())
        .unwrap();
    // Headers, then nothing: the body never comes.
    let (response, _body) = client.send_request(request, false).unwrap();
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), response)
        .await
        .expect("answered within the request timeout")
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        status.as_deref().is_some_and(|s| s != "0"),
        "{:?}",
        response.headers()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_health_watch_does_not_hold_a_graceful_shutdown() {
    use tokio_stream::StreamExt;
    let server = TestServer::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, 1, "SERVING");
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(server.stop());
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        2,
        "NOT_SERVING is sent"
    );
    assert!(watch.next().await.is_none(), "then the watch ends");
    stopping.await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "shutdown took {:?} (the drain timeout is 30 s)",
        started.elapsed()
    );
}

/// A tmpfs of `megabytes` at a fresh directory, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(megabytes: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs(dir))
    }

    fn grow(&self, megabytes: u32) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={megabytes}m")])
            .arg(self.0.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

async fn serving(server: &TestServer) -> i32 {
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_health_not_serving_and_writes_resume_when_it_grows() {
    // Needs root to mount a tmpfs (CI runs as root).
    let Some(disk) = Tmpfs::mount(12) else {
        assert_ne!(
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .unwrap()
                .split_whitespace()
                .nth(1),
            Some("0"),
            "root could not mount a tmpfs"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.data_dir = disk.0.path().join("data");
    config.store.reserve_bytes = 4 * 1024 * 1024;
    let server = TestServer::start_with(dir, config).await;
    let lines: Vec<serde_json::Value> = (0..200)
        .map(|i| serde_json::json!({ "sku": format!("FIXED-{}", 4999), "quantity": i + 1 }))
        .collect();
    let data = serde_json::json!({ "customer": "BETA", "currency": "EUR", "valid_until": "2099-05-01", "lines": lines }).to_string();
    let start = |n: usize| {
        as_role(
            "sales_rep",
            pb::StartInstanceRequest {
                request_id: format!("r-{n}"),
                definition: "quote".into(),
                business_key: format!("Q-{n}"),
                data_json: data.clone(),
                ..Default::default()
            },
        )
    };
    let mut client = server.instances();
    let mut acknowledged = 0;
    let mut refused = Vec::new();
    for n in 0..2000 {
        match client.start_instance(start(n)).await {
            Ok(_) => acknowledged += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(status.message().contains("writes resume"), "{status:?}");
                refused.push(n);
                if refused.len() == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused.len(), 3, "the disk filled up");
    assert_eq!(
        serving(&server).await,
        2,
        "NOT_SERVING while writes are refused"
    );
    disk.grow(64);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while serving(&server).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "SERVING again in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The refused requests go through on retry, once; nothing acknowledged is missing.
    for n in &refused {
        client.start_instance(start(*n)).await.unwrap();
        client.start_instance(start(*n)).await.unwrap();
    }
    assert_eq!(instance_count(&server).await, acknowledged + refused.len());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_at_runtime_work_until_rotated_or_revoked_and_only_admins_manage_them() {
    let server = server().await;
    let mut access = server.access();
    let create = |request_id: &str| pb::CreateTokenRequest {
        request_id: request_id.into(),
        actor: "svc-bi".into(),
        roles: vec!["analyst".into()],
        expires_at: None,
    };
    let refused = access.create_token(as_role("analyst", create("t-0"))).await;
    expect_refusal(refused, Code::PermissionDenied, "ROLE_NOT_ALLOWED");

    let made = access
        .create_token(as_role("admin", create("t-1")))
        .await
        .unwrap()
        .into_inner();
    let id = made.credential.as_ref().unwrap().id.clone();
    let list_definitions = |bearer: &str| authed(bearer, pb::ListDefinitionsRequest::default());
    server
        .definitions()
        .list_definitions(list_definitions(&made.token))
        .await
        .expect("the new token works at once");

    let retried = access.create_token(as_role("admin", create("t-1"))).await;
    let status = expect_refusal(retried, Code::AlreadyExists, "SECRET_SHOWN_ONCE");
    assert!(status.message().contains(&id), "{}", status.message());

    let listed = access
        .list_tokens(as_role("admin", pb::ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.credentials.len(), 1);
    assert_eq!(listed.credentials[0].actor, "svc-bi");
    assert_eq!(listed.credentials[0].created_by, "u-admin");

    let rotated = access
        .rotate_token(as_role(
            "admin",
            pb::RotateTokenRequest {
                request_id: "t-2".into(),
                id: id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let old = server
        .definitions()
        .list_definitions(list_definitions(&made.token))
        .await;
    expect_refusal(old, Code::Unauthenticated, "UNKNOWN_CREDENTIALS");
    server
        .definitions()
        .list_definitions(list_definitions(&rotated.token))
        .await
        .expect("the rotated token works");

    let new_id = rotated.credential.unwrap().id;
    access
        .revoke_token(as_role(
            "admin",
            pb::RevokeTokenRequest {
                request_id: "t-3".into(),
                id: new_id,
            },
        ))
        .await
        .unwrap();
    let revoked = server
        .definitions()
        .list_definitions(list_definitions(&rotated.token))
        .await;
    expect_refusal(revoked, Code::Unauthenticated, "UNKNOWN_CREDENTIALS");

    let unknown = access
        .revoke_token(as_role(
            "admin",
            pb::RevokeTokenRequest {
                request_id: "t-4".into(),
                id: "0011223344556677".into(),
            },
        ))
        .await;
    expect_refusal(unknown, Code::NotFound, "UNKNOWN_CREDENTIAL");

    let past = access
        .create_token(as_role(
            "admin",
            pb::CreateTokenRequest {
                expires_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                ..create("t-5")
            },
        ))
        .await;
    let status = expect_refusal(past, Code::InvalidArgument, "INVALID_INPUT");
    assert_eq!(bad_fields(&status), ["expires_at"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_shows_its_owner_and_another_rep_is_refused_its_owner_only_commands() {
    let server = server().await;
    let quote = start_quote(&server, "own-1", "FIXED-4999").await;
    let mut instances = server.instances();
    let got = instances
        .get_instance(as_role(
            "sales_rep",
            pb::GetInstanceRequest {
                instance_id: quote.instance_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .instance
        .unwrap();
    assert_eq!(got.owner, "u-sales_rep");
    let definition = server
        .definitions()
        .get_definition(as_role(
            "sales_rep",
            pb::GetDefinitionRequest {
                name: "quote".into(),
                version: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .definition
        .unwrap();
    assert_eq!(definition.owner_roles, ["sales_manager", "admin"]);
    let submit = definition.commands.iter().find(|c| c.name == "submit");
    assert!(submit.unwrap().owner_only);
    // Another sales rep, with a token made at runtime.
    let bob = server
        .access()
        .create_token(as_role(
            "admin",
            pb::CreateTokenRequest {
                request_id: "t-bob".into(),
                actor: "bob".into(),
                roles: vec!["sales_rep".into()],
                expires_at: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let submit = |request_id: &str| pb::SendCommandRequest {
        request_id: request_id.into(),
        instance_id: quote.instance_id.clone(),
        command: "submit".into(),
        payload_json: String::new(),
        expected_version: None,
    };
    let refused = instances.send_command(authed(&bob, submit("s-bob"))).await;
    let status = expect_refusal(refused, Code::PermissionDenied, "NOT_OWNER");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["owner"], "u-sales_rep");
    assert_eq!(info.metadata["actor"], "bob");
    instances
        .send_command(as_role("sales_rep", submit("s-owner")))
        .await
        .expect("the owner submits");
    server.stop().await;
}
