//! The server's configuration: a TOML file (every key optional) plus environment overrides.
//! Every key, its default and its environment variable are listed in [`ENV_KEYS`] and in
//! `switchyard.example.toml`; an unknown key, a wrong type or a bad value is an error naming
//! the file and line, or the variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Directory of the sled store (created if missing).
    pub data_dir: PathBuf,
    /// The rules directory deployed on the first start (an empty store).
    pub rules_dir: PathBuf,
    /// The gRPC listener.
    pub grpc: GrpcConfig,
    /// The Prometheus metrics listener.
    pub metrics: MetricsConfig,
    /// Storage settings.
    pub store: StoreSettings,
    /// Engine limits.
    pub engine: EngineSettings,
    /// TLS; off unless both files are set.
    pub tls: TlsConfig,
    /// Credentials.
    pub auth: AuthConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Payment-provider webhooks over HTTP; off unless `webhooks.listen` is set.
    pub webhooks: WebhooksConfig,
    /// Notification delivery: which channel delivers the messages the rules route.
    pub notifications: NotificationsConfig,
    /// Sales-operations analytics computed from the feed.
    pub analytics: AnalyticsSettings,
    /// The sales-operations dashboard in the browser.
    pub dashboard: DashboardConfig,
    /// Feed export to NATS JetStream.
    pub nats_export: NatsExportConfig,
}

/// Feed export to NATS JetStream (`switchyard-nats`): every feed event, in order, once, to a
/// stream of its own; resumes after a restart without a gap or a duplicate.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsExportConfig {
    /// Export the feed (default false).
    pub enabled: bool,
    /// The NATS server (default `nats://127.0.0.1:4222`).
    pub url: String,
    /// The JetStream stream, created when missing (default `SWITCHYARD`).
    pub stream: String,
    /// The subjects' first token (default `switchyard`): `<prefix>.<definition>.<type>`.
    pub subject_prefix: String,
    /// The file keeping the last exported offset (default `nats-export.offset` in `data_dir`).
    pub offset_file: Option<PathBuf>,
    /// Publishes awaiting the broker's acknowledgement at once, at most (default 256).
    pub in_flight: usize,
}

impl Default for NatsExportConfig {
    fn default() -> Self {
        NatsExportConfig {
            enabled: false,
            url: "nats://127.0.0.1:4222".into(),
            stream: "SWITCHYARD".into(),
            subject_prefix: "switchyard".into(),
            offset_file: None,
            in_flight: 256,
        }
    }
}

/// The dashboard (`src/dashboard`): a page with live figures and instances on its own HTTP
/// port, behind the same credentials as the API (a login form sets a session cookie). It
/// speaks TLS when `[tls]` is configured, like the gRPC port.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Serve the dashboard (default true).
    pub enabled: bool,
    /// Address (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// How long a login lasts, e.g. `8h` (default; a JWT's own expiry ends it sooner).
    pub session_lifetime: String,
    /// The file holding the key that signs session cookies (made on first start, mode 0600;
    /// default `dashboard-session.key` in `data_dir`). Deleting it ends every session.
    pub session_key_file: Option<PathBuf>,
    /// Most live update streams open at once (default 64).
    pub streams_max: usize,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            session_lifetime: "8h".into(),
            session_key_file: None,
            streams_max: 64,
        }
    }
}

/// Sales-operations analytics (`switchyard_analytics`): the server follows its own feed into
/// a projection in a directory of its own, served by `switchyard.analytics.v1alpha1`. The
/// projection can always be rebuilt from the feed (delete its directory), as long as
/// `engine.feed_retention` kept every event.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsSettings {
    /// Follow the feed and serve the figures (default true).
    pub enabled: bool,
    /// The IANA time zone days and ISO weeks are cut in (default `UTC`); changing it rebuilds
    /// the projection.
    pub time_zone: String,
    /// The projection's sled directory (default: `data_dir` with `-analytics` appended).
    pub data_dir: Option<PathBuf>,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        AnalyticsSettings {
            enabled: true,
            time_zone: "UTC".into(),
            data_dir: None,
        }
    }
}

impl ServerConfig {
    /// The NATS export's settings, with its offset file resolved.
    pub fn nats_export(&self) -> switchyard_nats::ExportConfig {
        let n = &self.nats_export;
        let mut export = switchyard_nats::ExportConfig::new(
            n.url.clone(),
            n.stream.clone(),
            n.offset_file
                .clone()
                .unwrap_or_else(|| self.data_dir.join("nats-export.offset")),
        );
        export.subject_prefix = n.subject_prefix.clone();
        export.in_flight = n.in_flight;
        export
    }

    /// The file of the key that signs dashboard sessions.
    pub fn dashboard_key_file(&self) -> PathBuf {
        self.dashboard
            .session_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("dashboard-session.key"))
    }

    /// The analytics projection's directory.
    pub fn analytics_dir(&self) -> PathBuf {
        self.analytics.data_dir.clone().unwrap_or_else(|| {
            let mut name = self.data_dir.clone().into_os_string();
            name.push("-analytics");
            PathBuf::from(name)
        })
    }
}

/// Notification delivery (`switchyard_notify`). Each entry of `channels` delivers the messages
/// the rules route to that channel name (`email`, `sms`, `webhook`, …); messages of a name with
/// no entry stay queued (visible as such) until one is configured. Secrets come only from
/// environment variables, named here.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    /// Failed attempts a message may have before it is undelivered, an incident (default 10).
    pub retries: u32,
    /// The delay before the first retry, doubling after each (default `10s`).
    pub backoff: String,
    /// Channel name → how its messages are delivered.
    pub channels: std::collections::BTreeMap<String, ChannelConfig>,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            retries: 10,
            backoff: "10s".into(),
            channels: Default::default(),
        }
    }
}

/// How one channel's messages are delivered (`kind`).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelConfig {
    /// Logged at info (development, demos): counted as sent.
    Log,
    /// Appended as JSON lines to `path`, synced.
    File {
        /// The file (created when missing).
        path: PathBuf,
    },
    /// E-mailed over SMTP (text, and HTML as the alternative).
    Smtp {
        /// The SMTP server's host.
        host: String,
        /// Its port (default 587).
        #[serde(default = "default_smtp_port")]
        port: u16,
        /// `starttls` (default), `tls` (implicit, port 465) or `none` (a local relay only).
        #[serde(default = "default_smtp_tls")]
        tls: String,
        /// A user name, when the server wants one.
        #[serde(default)]
        username: Option<String>,
        /// An environment variable holding the password.
        #[serde(default)]
        password_env: Option<String>,
        /// The sender, e.g. `Switchyard <noreply@example.com>`.
        from: String,
    },
    /// POSTed to an HTTP SMS gateway.
    SmsGateway {
        /// The gateway's URL.
        url: String,
        /// An environment variable holding its bearer token, if it needs one.
        #[serde(default)]
        token_env: Option<String>,
        /// The sender shown (default `Switchyard`).
        #[serde(default = "default_sms_from")]
        from: String,
    },
    /// Standard Webhooks to named endpoints (the message's address names the endpoint).
    Webhook {
        /// Endpoint name → its URL and secrets.
        endpoints: std::collections::BTreeMap<String, WebhookEndpointConfig>,
    },
}

/// One outbound webhook endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointConfig {
    /// Its http:// or https:// URL.
    pub url: String,
    /// An environment variable holding its `whsec_…` secrets, comma-separated (the first signs;
    /// all sign while one rotates).
    pub secrets_env: String,
}

fn default_smtp_port() -> u16 {
    587
}
fn default_smtp_tls() -> String {
    "starttls".into()
}
fn default_sms_from() -> String {
    "Switchyard".into()
}

/// The payment-provider webhook listener (`crate::webhooks`): off unless `listen` is set, and
/// then at least one provider must be configured with a secret.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Address of the HTTP listener, e.g. `127.0.0.1:8088` (default: none, off). Providers
    /// reach it through the host's TLS-terminating proxy.
    pub listen: Option<SocketAddr>,
    /// Largest request body accepted (default 256 KiB); larger ones get 413.
    pub body_bytes_max: usize,
    /// A Stripe-style endpoint.
    pub stripe: Option<StripeWebhookConfig>,
    /// An Adyen-style endpoint.
    pub adyen: Option<AdyenWebhookConfig>,
}

/// A Stripe-style endpoint: `Stripe-Signature` over the raw body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeWebhookConfig {
    /// Path (default `/webhooks/stripe`).
    #[serde(default = "default_stripe_path")]
    pub path: String,
    /// Endpoint signing secrets (`whsec_…`); several while one is rolled. Prefer `secrets_env`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// An environment variable holding the secrets, comma-separated.
    #[serde(default)]
    pub secrets_env: Option<String>,
    /// Largest distance between the signed timestamp and now, seconds (default 300).
    #[serde(default = "default_tolerance")]
    pub tolerance_seconds: i64,
}

/// An Adyen-style endpoint: a batch of notification items, each HMAC-signed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdyenWebhookConfig {
    /// Path (default `/webhooks/adyen`).
    #[serde(default = "default_adyen_path")]
    pub path: String,
    /// HMAC keys, hex; several while one is rolled. Prefer `hmac_keys_env`.
    #[serde(default)]
    pub hmac_keys: Vec<String>,
    /// An environment variable holding the keys, comma-separated.
    #[serde(default)]
    pub hmac_keys_env: Option<String>,
}

fn default_stripe_path() -> String {
    "/webhooks/stripe".into()
}
fn default_adyen_path() -> String {
    "/webhooks/adyen".into()
}
fn default_tolerance() -> i64 {
    300
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            listen: None,
            body_bytes_max: 256 * 1024,
            stripe: None,
            adyen: None,
        }
    }
}

/// gRPC listener settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Address to listen on (default `127.0.0.1:50051`; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Largest request or response message, in bytes (default 4 MiB).
    pub message_bytes_max: usize,
    /// Most connections at once; more are closed at once (default 1024).
    pub connections_max: usize,
    /// Most feed streams open at once, over all connections; more are refused with
    /// RESOURCE_EXHAUSTED (default 256).
    pub feed_streams_max: usize,
    /// Most job long polls (JobService.ActivateJobs with a wait) at once, over all
    /// connections; more are refused with RESOURCE_EXHAUSTED (default 256).
    pub job_polls_max: usize,
    /// How long a new connection may take for the HTTP/2 handshake (default `10s`).
    pub handshake_timeout: String,
    /// How long a connection may send nothing, not even ping answers (default `5m`).
    pub idle_timeout: String,
    /// How often an idle connection is pinged (default `30s`).
    pub keepalive_interval: String,
    /// How long a ping may go unanswered before the connection is closed (default `20s`).
    pub keepalive_timeout: String,
    /// Longest time for one call, from its headers to its answer (default `60s`).
    pub request_timeout: String,
}

/// Metrics listener settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` (default true).
    pub enabled: bool,
    /// Address (default `127.0.0.1:9464`); keep it on loopback or a private network.
    pub listen: SocketAddr,
}

/// Storage settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `fsync` (default: survives a power loss) or `flush` (survives a process crash).
    pub durability: String,
    /// sled's page cache, in bytes (default 256 MiB).
    pub cache_bytes: u64,
    /// Free space kept on the store's disk; writes that would leave less are refused (and
    /// health is NOT_SERVING) until there is room again (default 128 MiB).
    pub reserve_bytes: u64,
}

/// Engine limits (see `switchyard_core::EngineConfig`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Largest payload or data document, JSON bytes (default 65536).
    pub payload_bytes_max: usize,
    /// Largest page size of any list (default 1000).
    pub page_size_max: usize,
    /// Most commits per group commit (default 512).
    pub batch_max: usize,
    /// Most commits waiting for the committer (default 8192).
    pub queue_max: usize,
    /// How long request ids are remembered, e.g. `7d` (default).
    pub request_retention: String,
    /// How long feed events are kept, e.g. `30d` (default).
    pub feed_retention: String,
    /// Threads evaluating rules; 0 means one per CPU (default).
    pub rule_threads: usize,
    /// Most rule evaluations waiting for a thread; beyond it RESOURCE_EXHAUSTED (default 1024).
    pub rule_queue_max: usize,
    /// Longest time a rule set's tests may take in all when it is validated or deployed,
    /// e.g. `10s` (default).
    pub rule_tests_deadline: String,
    /// `system` (default), or `manual`: a test server whose clock moves only when an admin
    /// advances it (`ClockService.AdvanceClock`, `switchyard clock advance`).
    pub clock: String,
    /// Where a manual clock starts (RFC 3339); default: the real time at start.
    pub clock_start: Option<String>,
}

/// TLS settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    pub key_file: Option<PathBuf>,
}

/// Credentials.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Opaque bearer tokens, stored as SHA-256 hashes.
    pub tokens: Vec<TokenConfig>,
    /// JWT bearer tokens.
    pub jwt: Option<JwtConfig>,
}

/// One opaque bearer token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Hex SHA-256 of the token (`switchyard token hash` prints it).
    pub sha256: String,
    /// The actor id recorded on its changes.
    pub actor: String,
    /// Its roles.
    pub roles: Vec<String>,
}

/// JWT verification.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `ES256` or `ES384`.
    pub algorithm: String,
    /// Shared secret (HS*). Prefer `secret_env`.
    #[serde(default)]
    pub secret: Option<String>,
    /// Name of an environment variable holding the shared secret (HS*).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// PEM public key file (RS*, ES*).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Claim holding the roles: an array of strings, or one space-separated string
    /// (default `roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claim holding the actor id (default `sub`).
    #[serde(default = "default_actor_claim")]
    pub actor_claim: String,
    /// Clock skew allowed on `exp`/`nbf`, seconds (default 30).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
}

fn default_roles_claim() -> String {
    "roles".into()
}
fn default_actor_claim() -> String {
    "sub".into()
}
fn default_leeway() -> u64 {
    30
}

/// Graceful shutdown settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Longest wait for in-flight calls after SIGTERM/SIGINT, e.g. `30s` (default).
    pub drain_timeout: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("switchyard-data"),
            rules_dir: PathBuf::from("rules"),
            grpc: GrpcConfig::default(),
            metrics: MetricsConfig::default(),
            store: StoreSettings::default(),
            engine: EngineSettings::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            shutdown: ShutdownConfig::default(),
            webhooks: WebhooksConfig::default(),
            notifications: NotificationsConfig::default(),
            analytics: AnalyticsSettings::default(),
            dashboard: DashboardConfig::default(),
            nats_export: NatsExportConfig::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            message_bytes_max: 4 * 1024 * 1024,
            connections_max: 1024,
            feed_streams_max: 256,
            job_polls_max: 256,
            handshake_timeout: "10s".into(),
            idle_timeout: "5m".into(),
            keepalive_interval: "30s".into(),
            keepalive_timeout: "20s".into(),
            request_timeout: "60s".into(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            durability: "fsync".into(),
            cache_bytes: 256 * 1024 * 1024,
            reserve_bytes: 128 * 1024 * 1024,
        }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            payload_bytes_max: 64 * 1024,
            page_size_max: 1000,
            batch_max: 512,
            queue_max: 8192,
            request_retention: "7d".into(),
            feed_retention: "30d".into(),
            rule_threads: 0,
            rule_queue_max: 1024,
            rule_tests_deadline: "10s".into(),
            clock: "system".into(),
            clock_start: None,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: "30s".into(),
        }
    }
}

/// What kind of value an environment variable carries.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Integer,
    Bool,
    /// Comma-separated texts.
    List,
}

/// Every environment override: variable, key (dotted path), kind. Token lists cannot be set
/// from the environment; the JWT secret can, through `auth.jwt.secret_env`. Setting a
/// webhook provider's secrets turns its endpoint on with its default path.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("SWITCHYARD_DATA_DIR", "data_dir"),
    ("SWITCHYARD_RULES_DIR", "rules_dir"),
    ("SWITCHYARD_GRPC_LISTEN", "grpc.listen"),
    (
        "SWITCHYARD_GRPC_MESSAGE_BYTES_MAX",
        "grpc.message_bytes_max",
    ),
    ("SWITCHYARD_GRPC_CONNECTIONS_MAX", "grpc.connections_max"),
    ("SWITCHYARD_GRPC_FEED_STREAMS_MAX", "grpc.feed_streams_max"),
    ("SWITCHYARD_GRPC_JOB_POLLS_MAX", "grpc.job_polls_max"),
    (
        "SWITCHYARD_GRPC_HANDSHAKE_TIMEOUT",
        "grpc.handshake_timeout",
    ),
    ("SWITCHYARD_GRPC_IDLE_TIMEOUT", "grpc.idle_timeout"),
    (
        "SWITCHYARD_GRPC_KEEPALIVE_INTERVAL",
        "grpc.keepalive_interval",
    ),
    (
        "SWITCHYARD_GRPC_KEEPALIVE_TIMEOUT",
        "grpc.keepalive_timeout",
    ),
    ("SWITCHYARD_GRPC_REQUEST_TIMEOUT", "grpc.request_timeout"),
    ("SWITCHYARD_METRICS_ENABLED", "metrics.enabled"),
    ("SWITCHYARD_METRICS_LISTEN", "metrics.listen"),
    ("SWITCHYARD_STORE_DURABILITY", "store.durability"),
    ("SWITCHYARD_STORE_CACHE_BYTES", "store.cache_bytes"),
    ("SWITCHYARD_STORE_RESERVE_BYTES", "store.reserve_bytes"),
    (
        "SWITCHYARD_ENGINE_PAYLOAD_BYTES_MAX",
        "engine.payload_bytes_max",
    ),
    ("SWITCHYARD_ENGINE_PAGE_SIZE_MAX", "engine.page_size_max"),
    ("SWITCHYARD_ENGINE_BATCH_MAX", "engine.batch_max"),
    ("SWITCHYARD_ENGINE_QUEUE_MAX", "engine.queue_max"),
    (
        "SWITCHYARD_ENGINE_REQUEST_RETENTION",
        "engine.request_retention",
    ),
    ("SWITCHYARD_ENGINE_FEED_RETENTION", "engine.feed_retention"),
    ("SWITCHYARD_ENGINE_RULE_THREADS", "engine.rule_threads"),
    ("SWITCHYARD_ENGINE_RULE_QUEUE_MAX", "engine.rule_queue_max"),
    (
        "SWITCHYARD_ENGINE_RULE_TESTS_DEADLINE",
        "engine.rule_tests_deadline",
    ),
    ("SWITCHYARD_ENGINE_CLOCK", "engine.clock"),
    ("SWITCHYARD_ENGINE_CLOCK_START", "engine.clock_start"),
    ("SWITCHYARD_WEBHOOKS_LISTEN", "webhooks.listen"),
    (
        "SWITCHYARD_WEBHOOKS_STRIPE_SECRETS",
        "webhooks.stripe.secrets",
    ),
    (
        "SWITCHYARD_WEBHOOKS_ADYEN_HMAC_KEYS",
        "webhooks.adyen.hmac_keys",
    ),
    ("SWITCHYARD_ANALYTICS_ENABLED", "analytics.enabled"),
    ("SWITCHYARD_ANALYTICS_TIME_ZONE", "analytics.time_zone"),
    ("SWITCHYARD_ANALYTICS_DATA_DIR", "analytics.data_dir"),
    ("SWITCHYARD_DASHBOARD_ENABLED", "dashboard.enabled"),
    ("SWITCHYARD_DASHBOARD_LISTEN", "dashboard.listen"),
    (
        "SWITCHYARD_DASHBOARD_SESSION_LIFETIME",
        "dashboard.session_lifetime",
    ),
    (
        "SWITCHYARD_DASHBOARD_SESSION_KEY_FILE",
        "dashboard.session_key_file",
    ),
    ("SWITCHYARD_DASHBOARD_STREAMS_MAX", "dashboard.streams_max"),
    ("SWITCHYARD_NATS_EXPORT_ENABLED", "nats_export.enabled"),
    ("SWITCHYARD_NATS_EXPORT_URL", "nats_export.url"),
    ("SWITCHYARD_NATS_EXPORT_STREAM", "nats_export.stream"),
    (
        "SWITCHYARD_NATS_EXPORT_SUBJECT_PREFIX",
        "nats_export.subject_prefix",
    ),
    (
        "SWITCHYARD_NATS_EXPORT_OFFSET_FILE",
        "nats_export.offset_file",
    ),
    ("SWITCHYARD_NATS_EXPORT_IN_FLIGHT", "nats_export.in_flight"),
    ("SWITCHYARD_TLS_CERT_FILE", "tls.cert_file"),
    ("SWITCHYARD_TLS_KEY_FILE", "tls.key_file"),
    (
        "SWITCHYARD_SHUTDOWN_DRAIN_TIMEOUT",
        "shutdown.drain_timeout",
    ),
];

fn kind_of(key: &str) -> Kind {
    match key {
        "grpc.message_bytes_max"
        | "grpc.connections_max"
        | "grpc.feed_streams_max"
        | "grpc.job_polls_max"
        | "store.cache_bytes"
        | "store.reserve_bytes"
        | "engine.payload_bytes_max"
        | "engine.page_size_max"
        | "engine.batch_max"
        | "engine.queue_max"
        | "engine.rule_threads"
        | "engine.rule_queue_max"
        | "dashboard.streams_max"
        | "nats_export.in_flight" => Kind::Integer,
        "metrics.enabled" | "analytics.enabled" | "dashboard.enabled" | "nats_export.enabled" => {
            Kind::Bool
        }
        "webhooks.stripe.secrets" | "webhooks.adyen.hmac_keys" => Kind::List,
        _ => Kind::Text,
    }
}

impl ServerConfig {
    /// Reads `file` (if given; the defaults otherwise), then applies the overrides found by
    /// `env` (normally `std::env::var`), then checks every value.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ServerConfig, ConfigError> {
        let (label, text) = match file {
            Some(path) => (
                path.display().to_string(),
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?,
            ),
            None => ("(defaults)".to_string(), String::new()),
        };
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| ConfigError(located(&label, &text, &e)))?;
        // Type and key errors located in the file itself, before any override.
        toml::from_str::<ServerConfig>(&text)
            .map_err(|e| ConfigError(located(&label, &text, &e)))?;
        for (var, key) in ENV_KEYS {
            let Some(value) = env(var) else { continue };
            let parsed = match kind_of(key) {
                Kind::Text => toml::Value::String(value.clone()),
                Kind::Integer => toml::Value::Integer(value.trim().parse().map_err(|_| {
                    ConfigError(format!("{var}: `{value}` is not a whole number ({key})"))
                })?),
                Kind::Bool => toml::Value::Boolean(value.trim().parse().map_err(|_| {
                    ConfigError(format!("{var}: `{value}` is not true or false ({key})"))
                })?),
                Kind::List => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_string()))
                        .collect(),
                ),
            };
            set_path(&mut table, key, parsed);
        }
        let config: ServerConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    ConfigError(format!("an environment override: {}", e.message()))
                })?;
        config.check()?;
        Ok(config)
    }

    fn check_webhooks(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| Err(ConfigError(format!("`{key}`: {message}")));
        let w = &self.webhooks;
        if w.listen.is_some() && w.stripe.is_none() && w.adyen.is_none() {
            return bad(
                "webhooks",
                "a listener without a provider: add [webhooks.stripe] or [webhooks.adyen]",
            );
        }
        if w.body_bytes_max < 1024 || w.body_bytes_max > 16 * 1024 * 1024 {
            return bad("webhooks.body_bytes_max", "must be 1 KiB to 16 MiB");
        }
        let paths = [
            ("webhooks.stripe.path", w.stripe.as_ref().map(|s| &s.path)),
            ("webhooks.adyen.path", w.adyen.as_ref().map(|a| &a.path)),
        ];
        for (key, path) in paths {
            if let Some(path) = path {
                if !path.starts_with('/') || path.len() > 200 || path.contains(['?', '#', ' ']) {
                    return bad(key, "must be a path such as `/webhooks/stripe`");
                }
            }
        }
        if let (Some(s), Some(a)) = (&w.stripe, &w.adyen) {
            if s.path == a.path {
                return bad("webhooks.adyen.path", "is the Stripe endpoint's path too");
            }
        }
        if let Some(s) = &w.stripe {
            if !(1..=86_400).contains(&s.tolerance_seconds) {
                return bad("webhooks.stripe.tolerance_seconds", "must be 1 to 86400");
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| Err(ConfigError(format!("`{key}`: {message}")));
        if !matches!(self.store.durability.as_str(), "fsync" | "flush") {
            return bad("store.durability", "must be `fsync` or `flush`");
        }
        if !matches!(self.engine.clock.as_str(), "system" | "manual") {
            return bad("engine.clock", "must be `system` or `manual`");
        }
        if let Some(start) = &self.engine.clock_start {
            if chrono::DateTime::parse_from_rfc3339(start).is_err() {
                return bad(
                    "engine.clock_start",
                    "must be an RFC 3339 time such as `2026-04-01T09:00:00Z`",
                );
            }
            if self.engine.clock != "manual" {
                return bad("engine.clock_start", "needs `engine.clock = \"manual\"`");
            }
        }
        for (key, value) in [
            ("engine.request_retention", &self.engine.request_retention),
            ("engine.feed_retention", &self.engine.feed_retention),
            (
                "engine.rule_tests_deadline",
                &self.engine.rule_tests_deadline,
            ),
            ("shutdown.drain_timeout", &self.shutdown.drain_timeout),
            ("notifications.backoff", &self.notifications.backoff),
            (
                "dashboard.session_lifetime",
                &self.dashboard.session_lifetime,
            ),
        ] {
            if switchyard_core::definition::parse_duration(value).is_none() {
                return bad(
                    key,
                    "must be a duration such as `30s`, `90m`, `48h` or `7d`",
                );
            }
        }
        if self.engine.rule_queue_max == 0 {
            return bad("engine.rule_queue_max", "must be at least 1");
        }
        if self.grpc.connections_max == 0 {
            return bad("grpc.connections_max", "must be at least 1");
        }
        if self.grpc.feed_streams_max == 0 {
            return bad("grpc.feed_streams_max", "must be at least 1");
        }
        if self.dashboard.streams_max == 0 {
            return bad("dashboard.streams_max", "must be at least 1");
        }
        if self.nats_export.enabled {
            if let Err(e) = self.nats_export().check() {
                return Err(ConfigError(e.replacen('`', "`nats_export.", 1)));
            }
        }
        if Self::duration(&self.dashboard.session_lifetime) < chrono::Duration::minutes(1) {
            return bad("dashboard.session_lifetime", "must be at least a minute");
        }
        if self.grpc.job_polls_max == 0 {
            return bad("grpc.job_polls_max", "must be at least 1");
        }
        let idle = Self::duration(&self.grpc.idle_timeout);
        let ping = Self::duration(&self.grpc.keepalive_interval)
            + Self::duration(&self.grpc.keepalive_timeout);
        if idle <= ping {
            return bad(
                "grpc.idle_timeout",
                "must be longer than keepalive_interval + keepalive_timeout (healthy idle connections answer the pings in between)",
            );
        }
        if self.grpc.message_bytes_max < 1024 {
            return bad("grpc.message_bytes_max", "must be at least 1024");
        }
        self.check_webhooks()?;
        if self.analytics.time_zone.parse::<chrono_tz::Tz>().is_err() {
            return bad(
                "analytics.time_zone",
                "must be an IANA time zone such as `UTC` or `Europe/Berlin`",
            );
        }
        for name in self.notifications.channels.keys() {
            if name.is_empty()
                || !name.starts_with(|c: char| c.is_ascii_lowercase())
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return bad(
                    &format!("notifications.channels.{name}"),
                    "a channel name is lower-case letters, digits and `_`, starting with a letter",
                );
            }
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return bad("tls", "set both `cert_file` and `key_file`, or neither");
        }
        for (i, token) in self.auth.tokens.iter().enumerate() {
            if token.sha256.len() != 64 || !token.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return bad(
                    &format!("auth.tokens[{i}].sha256"),
                    "must be 64 hex digits (run `switchyard token hash`)",
                );
            }
            if token.actor.trim().is_empty() {
                return bad(&format!("auth.tokens[{i}].actor"), "must not be empty");
            }
        }
        Ok(())
    }

    /// A duration setting already checked by `load`.
    pub fn duration(value: &str) -> chrono::Duration {
        switchyard_core::definition::parse_duration(value).expect("checked when loaded")
    }
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("keys are not empty");
    let mut at = table;
    for part in parts {
        let entry = at
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        at = entry.as_table_mut().expect("made a table");
    }
    at.insert(last.to_string(), value);
}

fn located(label: &str, text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let (line, col) = switchyard_core::definition::line_col(text, span.start);
            format!("{label}:{line}:{col}: {}", error.message())
        }
        None => format!("{label}: {}", error.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_need_no_file() {
        let c = ServerConfig::load(None, no_env).unwrap();
        assert_eq!(c.grpc.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.store.durability, "fsync");
        assert!(c.auth.tokens.is_empty());
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[grpc]\nlisten = \"127.0.0.1:7000\"\n").unwrap();
        let env = |k: &str| match k {
            "SWITCHYARD_GRPC_LISTEN" => Some("127.0.0.1:7001".to_string()),
            "SWITCHYARD_ENGINE_PAGE_SIZE_MAX" => Some("50".to_string()),
            _ => None,
        };
        let c = ServerConfig::load(Some(&file), env).unwrap();
        assert_eq!(c.grpc.listen.to_string(), "127.0.0.1:7001");
        assert_eq!(c.engine.page_size_max, 50);
    }

    #[test]
    fn a_bad_nats_export_setting_is_named_and_the_environment_turns_it_on() {
        let env = |k: &str| match k {
            "SWITCHYARD_NATS_EXPORT_ENABLED" => Some("true".to_string()),
            "SWITCHYARD_NATS_EXPORT_STREAM" => Some("ORDERS.EU".to_string()),
            _ => None,
        };
        let e = ServerConfig::load(None, env).unwrap_err().0;
        assert!(e.starts_with("`nats_export.stream`"), "{e}");
        let env = |k: &str| match k {
            "SWITCHYARD_NATS_EXPORT_ENABLED" => Some("true".to_string()),
            "SWITCHYARD_NATS_EXPORT_IN_FLIGHT" => Some("64".to_string()),
            _ => None,
        };
        let c = ServerConfig::load(None, env).unwrap();
        assert!(c.nats_export.enabled);
        assert_eq!(c.nats_export().in_flight, 64);
        assert_eq!(
            c.nats_export().offset_file,
            c.data_dir.join("nats-export.offset")
        );
    }

    #[test]
    fn a_notification_channel_of_an_unknown_kind_or_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        for (text, wanted) in [
            (
                "[notifications.channels.email]\nkind = \"pigeon\"\n",
                "unknown variant `pigeon`",
            ),
            (
                "[notifications.channels.email]\nkind = \"file\"\npath = \"x\"\ncolour = 1\n",
                "unknown field `colour`",
            ),
            (
                "[notifications.channels.E-mail]\nkind = \"log\"\n",
                "`notifications.channels.E-mail`",
            ),
            (
                "[notifications]\nbackoff = \"soon\"\n",
                "`notifications.backoff`",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = ServerConfig::load(Some(&file), no_env).unwrap_err().0;
            assert!(e.contains(wanted), "{text}: {e}");
        }
    }

    #[test]
    fn the_example_file_loads_and_documents_every_variable() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../switchyard.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let loaded = ServerConfig::load(Some(&path), no_env).unwrap();
        let defaults = ServerConfig::load(None, no_env).unwrap();
        assert_eq!(
            format!("{loaded:?}"),
            format!("{defaults:?}"),
            "the file shows the defaults"
        );
        for (var, _) in ENV_KEYS {
            assert!(
                text.contains(var),
                "{var} is not documented in {}",
                path.display()
            );
        }
        // The commented examples are valid too.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.starts_with('[') || r.contains(" = "))
                    .unwrap_or(l)
            })
            .map(|l| l.split("  #").next().unwrap_or(l).trim_end().to_string() + "\n")
            .collect();
        let parsed: Result<ServerConfig, _> = toml::from_str(&uncommented);
        assert!(parsed.is_ok(), "{parsed:?}\n{uncommented}");
    }

    #[test]
    fn webhook_secrets_come_from_the_environment_and_a_listener_needs_a_provider() {
        let env = |k: &str| match k {
            "SWITCHYARD_WEBHOOKS_LISTEN" => Some("127.0.0.1:8088".to_string()),
            "SWITCHYARD_WEBHOOKS_STRIPE_SECRETS" => Some("whsec_a, whsec_b".to_string()),
            _ => None,
        };
        let c = ServerConfig::load(None, env).unwrap();
        let stripe = c.webhooks.stripe.unwrap();
        assert_eq!(stripe.secrets, ["whsec_a", "whsec_b"]);
        assert_eq!(
            (stripe.path.as_str(), stripe.tolerance_seconds),
            ("/webhooks/stripe", 300)
        );
        assert!(c.webhooks.adyen.is_none());
        let e = ServerConfig::load(None, |k| {
            (k == "SWITCHYARD_WEBHOOKS_LISTEN").then(|| "127.0.0.1:8088".to_string())
        })
        .unwrap_err()
        .0;
        assert!(
            e.contains("`webhooks`: a listener without a provider"),
            "{e}"
        );
        // A configured endpoint whose secret variable is unset is refused at start.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[webhooks.adyen]\nhmac_keys_env = \"ADYEN_KEYS\"\n").unwrap();
        let c = ServerConfig::load(Some(&file), no_env).unwrap();
        let e = crate::webhooks::Endpoints::new(&c.webhooks, &no_env)
            .err()
            .unwrap();
        assert!(e.contains("ADYEN_KEYS is not set"), "{e}");
        let keys = |k: &str| (k == "ADYEN_KEYS").then(|| "not-hex".to_string());
        let e = crate::webhooks::Endpoints::new(&c.webhooks, &keys)
            .err()
            .unwrap();
        assert!(e.contains("key 1 is not hex"), "{e}");
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "data_dir = \"d\"\n[grpc]\nlisten_port = 1\n").unwrap();
        let e = ServerConfig::load(Some(&file), no_env).unwrap_err().0;
        assert!(e.contains("c.toml:3:1"), "{e}");
        assert!(e.contains("listen_port"), "{e}");
        let e = ServerConfig::load(None, |k| {
            (k == "SWITCHYARD_ENGINE_BATCH_MAX").then(|| "many".to_string())
        })
        .unwrap_err()
        .0;
        assert!(e.contains("SWITCHYARD_ENGINE_BATCH_MAX"), "{e}");
        let e = ServerConfig::load(None, |k| {
            (k == "SWITCHYARD_STORE_DURABILITY").then(|| "sometimes".to_string())
        })
        .unwrap_err()
        .0;
        assert!(e.contains("store.durability"), "{e}");
    }
}
