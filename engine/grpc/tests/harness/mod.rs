//! A real server on a loopback socket, with tokens for every role, and a client helper.

#![allow(dead_code)] // each test binary uses part of the harness

use std::path::{Path, PathBuf};

use switchyard_grpc::auth::token_hash;
use switchyard_grpc::config::{JwtConfig, ServerConfig, TokenConfig};
use switchyard_grpc::pb;
use switchyard_grpc::server::{self, Running};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

pub const JWT_SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";
pub const JWT_ISSUER: &str = "https://id.example.test";
pub const JWT_AUDIENCE: &str = "switchyard";

/// The token of each test actor: actor id = `u-<role>`, roles = [role].
pub fn token(role: &str) -> String {
    format!("test-token-for-{role}")
}

/// A JWT with `claims`, signed with the test server's HS256 secret.
pub fn jwt(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

pub const ROLES: &[&str] = &[
    "sales_rep",
    "sales_manager",
    "finance",
    "credit_controller",
    "logistics",
    "analyst",
    "admin",
    "system",
];

pub fn repo_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules")
}

/// Copies the shipped rules into `to`.
pub fn copy_rules(to: &Path) {
    for entry in walk(&repo_rules()) {
        let relative = entry.strip_prefix(repo_rules()).unwrap();
        let target = to.join(relative);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The rule set's files as the wire carries them.
pub fn rule_files(dir: &Path) -> Vec<pb::RuleFile> {
    let mut files: Vec<pb::RuleFile> = walk(dir)
        .into_iter()
        .filter(|p| switchyard_core::rules::is_rule_file_path(&rel(dir, p)))
        .map(|p| pb::RuleFile {
            path: rel(dir, &p),
            content: std::fs::read_to_string(&p).unwrap(),
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

fn rel(dir: &Path, p: &Path) -> String {
    p.strip_prefix(dir)
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

pub struct TestServer {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub channel: Channel,
}

pub fn config(dir: &Path) -> ServerConfig {
    let mut config = ServerConfig {
        data_dir: dir.join("data"),
        rules_dir: repo_rules(),
        ..Default::default()
    };
    config.grpc.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    config.dashboard.listen = "127.0.0.1:0".parse().unwrap();
    config.store.durability = "flush".into();
    config.store.cache_bytes = 16 * 1024 * 1024;
    config.auth.tokens = ROLES
        .iter()
        .map(|role| TokenConfig {
            sha256: token_hash(&token(role)),
            actor: format!("u-{role}"),
            roles: vec![role.to_string()],
        })
        .collect();
    config.auth.jwt = Some(JwtConfig {
        algorithm: "HS256".into(),
        secret: Some(JWT_SECRET.into()),
        secret_env: None,
        public_key_file: None,
        issuer: JWT_ISSUER.into(),
        audience: JWT_AUDIENCE.into(),
        roles_claim: "roles".into(),
        actor_claim: "sub".into(),
        leeway_seconds: 0,
    });
    config
}

/// The test configuration with TLS on: a fresh self-signed certificate for `localhost`,
/// written to `dir`; the certificate is returned for the client to trust.
pub fn tls_config(dir: &Path) -> (ServerConfig, rcgen::CertifiedKey) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, certified.cert.pem()).unwrap();
    std::fs::write(&key_file, certified.key_pair.serialize_pem()).unwrap();
    let mut config = config(dir);
    config.tls.cert_file = Some(cert_file);
    config.tls.key_file = Some(key_file);
    (config, certified)
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        Self::start_with(dir, config).await
    }

    pub async fn start_with(dir: tempfile::TempDir, config: ServerConfig) -> TestServer {
        let running = server::start(config, |_| None)
            .await
            .expect("server starts");
        let channel = Channel::from_shared(format!("http://{}", running.grpc_addr))
            .unwrap()
            .connect()
            .await
            .expect("connects");
        TestServer {
            running: Some(running),
            dir,
            channel,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn instances(&self) -> pb::instance_service_client::InstanceServiceClient<Channel> {
        pb::instance_service_client::InstanceServiceClient::new(self.channel.clone())
    }

    pub fn definitions(&self) -> pb::definition_service_client::DefinitionServiceClient<Channel> {
        pb::definition_service_client::DefinitionServiceClient::new(self.channel.clone())
    }

    pub fn rule_sets(&self) -> pb::rule_set_service_client::RuleSetServiceClient<Channel> {
        pb::rule_set_service_client::RuleSetServiceClient::new(self.channel.clone())
    }

    pub fn access(&self) -> pb::access_service_client::AccessServiceClient<Channel> {
        pb::access_service_client::AccessServiceClient::new(self.channel.clone())
    }

    pub fn feed(&self) -> pb::feed_service_client::FeedServiceClient<Channel> {
        pb::feed_service_client::FeedServiceClient::new(self.channel.clone())
    }

    pub async fn stop(mut self) {
        self.running.take().unwrap().shutdown().await.unwrap();
    }
}

/// A request carrying `authorization: Bearer <bearer>`.
pub fn authed<T>(bearer: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    request
}

/// A request as the test actor holding `role`.
pub fn as_role<T>(role: &str, message: T) -> Request<T> {
    authed(&token(role), message)
}

/// Asserts the code and the ErrorInfo reason; returns the status for more checks.
#[track_caller]
pub fn expect_refusal<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: &str,
) -> Status {
    let status = result.expect_err("the call should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "switchyard");
    status
}

/// The BadRequest field names of a status.
pub fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

pub fn quote_data(sku: &str) -> String {
    serde_json::json!({
        "customer": "BETA",
        "currency": "EUR",
        "valid_until": "2099-05-01",
        "lines": [{ "sku": sku, "quantity": 1 }]
    })
    .to_string()
}

pub async fn start_quote(server: &TestServer, request_id: &str, sku: &str) -> pb::CommandResult {
    server
        .instances()
        .start_instance(as_role(
            "sales_rep",
            pb::StartInstanceRequest {
                request_id: request_id.into(),
                definition: "quote".into(),
                business_key: format!("Q-{request_id}"),
                data_json: quote_data(sku),
                ..Default::default()
            },
        ))
        .await
        .expect("the quote starts")
        .into_inner()
        .result
        .unwrap()
}

pub async fn instance_count(server: &TestServer) -> usize {
    server
        .instances()
        .list_instances(as_role(
            "admin",
            pb::ListInstancesRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .instances
        .len()
}

/// One call to each `switchyard.v1` service with `bearer` (or none); the refusals.
pub async fn one_call_per_service(server: &TestServer, bearer: Option<&str>) -> Vec<tonic::Status> {
    let request = |msg| match bearer {
        Some(b) => authed(b, msg),
        None => tonic::Request::new(msg),
    };
    let mut out = Vec::new();
    out.push(
        server
            .instances()
            .list_instances(request(pb::ListInstancesRequest::default()))
            .await
            .map(|_| ())
            .unwrap_err(),
    );
    out.push(
        server
            .definitions()
            .list_definitions(match bearer {
                Some(b) => authed(b, pb::ListDefinitionsRequest::default()),
                None => tonic::Request::new(pb::ListDefinitionsRequest::default()),
            })
            .await
            .map(|_| ())
            .unwrap_err(),
    );
    out.push(
        server
            .rule_sets()
            .list_rule_sets(match bearer {
                Some(b) => authed(b, pb::ListRuleSetsRequest::default()),
                None => tonic::Request::new(pb::ListRuleSetsRequest::default()),
            })
            .await
            .map(|_| ())
            .unwrap_err(),
    );
    out.push(
        server
            .feed()
            .subscribe(match bearer {
                Some(b) => authed(b, pb::SubscribeRequest::default()),
                None => tonic::Request::new(pb::SubscribeRequest::default()),
            })
            .await
            .map(|_| ())
            .unwrap_err(),
    );
    out
}

/// The body of a plain HTTP/1.1 GET (empty unless 200).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    socket.read_to_string(&mut text).await.unwrap();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => body.to_string(),
        _ => String::new(),
    }
}
