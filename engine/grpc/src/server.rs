//! Runs Switchyard as a gRPC server: opens the sled store (deploying the rules directory on
//! the first start), registers the three `switchyard.v1` services behind the authenticator,
//! `grpc.health.v1` and reflection (both open), optionally TLS, and serves metrics on their
//! own port.
//!
//! Shutdown order, which is what makes it lose no acknowledged command: health turns
//! NOT_SERVING; the listener stops accepting; in-flight calls finish (each one answers only
//! after its commit is flushed), up to the drain timeout; then the engine drains its commit
//! queue and flushes, and the store is closed.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::{
    DeciderRegistry, Durability, Engine, EngineConfig, RuleLimits, SledConfig, StoreConfig,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::pb;
use crate::services::Services;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A configuration value is unusable.
    #[error("configuration {0}")]
    Config(String),
    /// The engine could not open its store or deploy the rules.
    #[error("cannot open the engine")]
    Open(#[from] switchyard_core::OpenError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The transport failed.
    #[error("the gRPC transport failed")]
    Transport(#[from] tonic::transport::Error),
}

/// The names health reports on (besides the whole server, "").
pub const SERVICE_NAMES: [&str; 9] = [
    "switchyard.v1.InstanceService",
    "switchyard.v1.DefinitionService",
    "switchyard.v1.RuleSetService",
    "switchyard.v1.AccessService",
    "switchyard.v1.FeedService",
    "switchyard.v1.JobService",
    "switchyard.v1.ClockService",
    "switchyard.v1.BackupService",
    "switchyard.analytics.v1alpha1.AnalyticsService",
];

/// A running server.
pub struct Running {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` is served, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Where payment-provider webhooks are received, if enabled, and the endpoints there.
    pub webhooks_addr: Option<(SocketAddr, String)>,
    /// Where the dashboard is served, if enabled.
    pub dashboard_addr: Option<SocketAddr>,
    /// Whether the gRPC listener (and the dashboard's) speaks TLS.
    pub tls: bool,
    /// The engine, for in-process inspection (tests, embedding).
    pub engine: Engine,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Stops gracefully (see the module docs) and waits until the store is closed.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ServeError::Config(format!("the server task failed: {e}"))),
        }
    }
}

/// The engine settings a server configuration asks for.
pub fn engine_config(config: &ServerConfig) -> EngineConfig {
    let mut sled = SledConfig::new(&config.data_dir);
    sled.durability = if config.store.durability == "flush" {
        Durability::Flush
    } else {
        Durability::Fsync
    };
    sled.cache_bytes = config.store.cache_bytes;
    sled.reserve_bytes = config.store.reserve_bytes;
    let mut engine = EngineConfig::new(StoreConfig::Sled(sled));
    engine.payload_bytes_max = config.engine.payload_bytes_max;
    engine.page_size_max = config.engine.page_size_max;
    engine.batch_max = config.engine.batch_max;
    engine.queue_max = config.engine.queue_max;
    engine.request_retention = ServerConfig::duration(&config.engine.request_retention);
    engine.feed_retention = ServerConfig::duration(&config.engine.feed_retention);
    if config.engine.rule_threads > 0 {
        engine.rule_threads = config.engine.rule_threads;
    }
    engine.rule_queue_max = config.engine.rule_queue_max;
    engine.notification_retries = config.notifications.retries;
    engine.notification_backoff = ServerConfig::duration(&config.notifications.backoff)
        .to_std()
        .unwrap_or(Duration::from_secs(10));
    engine.rule_tests_deadline = ServerConfig::duration(&config.engine.rule_tests_deadline)
        .to_std()
        .unwrap_or(Duration::from_secs(10));
    engine
}

/// Opens the engine and starts serving; returns once both listeners are bound.
pub async fn start(
    config: ServerConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Running, ServeError> {
    let auth =
        Authenticator::new(&config.auth, &env).map_err(|e| ServeError::Config(e.to_string()))?;
    if !auth.accepts_anything() {
        tracing::warn!("no credentials are configured: only tokens kept in the store are accepted (add [[auth.tokens]] or [auth.jwt]; see `switchyard token new`, or `switchyard token create` on a stopped store)");
    }
    let pem = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => {
            let read = |path: &std::path::Path, key: &str| {
                std::fs::read(path).map_err(|e| {
                    ServeError::Config(format!("`tls.{key}`: cannot read {}: {e}", path.display()))
                })
            };
            Some((read(cert, "cert_file")?, read(key, "key_file")?))
        }
        _ => None,
    };
    let tls = pem
        .as_ref()
        .map(|(cert, key)| ServerTlsConfig::new().identity(Identity::from_pem(cert, key)));
    // Everything that can fail without the store comes first: a busy port or a bad
    // certificate must not leave a store opened.
    let drain = ServerConfig::duration(&config.shutdown.drain_timeout)
        .to_std()
        .unwrap_or(Duration::from_secs(30));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(crate::GOOGLE_RPC_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(crate::ANALYTICS_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Config(format!("reflection: {e}")))?;

    let seconds = |value: &str| {
        ServerConfig::duration(value)
            .to_std()
            .unwrap_or(Duration::from_secs(1))
    };
    let mut builder = tonic::transport::Server::builder()
        .trace_fn(|request| {
            // The path only: headers carry credentials and are never logged.
            tracing::info_span!(
                "rpc",
                path = %request.uri().path(),
                actor = tracing::field::Empty
            )
        })
        .layer(crate::call_log::CallLogLayer)
        // A call that has not answered in time (a stuck body, a slow client) is ended.
        .timeout(seconds(&config.grpc.request_timeout))
        // Idle connections are pinged; one that does not answer is closed.
        .http2_keepalive_interval(Some(seconds(&config.grpc.keepalive_interval)))
        .http2_keepalive_timeout(Some(seconds(&config.grpc.keepalive_timeout)));
    let limits = crate::connections::ConnectionLimits {
        connections_max: config.grpc.connections_max,
        handshake_timeout: seconds(&config.grpc.handshake_timeout),
        idle_timeout: seconds(&config.grpc.idle_timeout),
    };
    if let Some(tls) = tls.clone() {
        builder = builder.tls_config(tls)?;
    }
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|error| ServeError::Bind { addr, error })
    };
    let listener = bind(config.grpc.listen).await?;
    let grpc_addr = listener.local_addr().map_err(|error| ServeError::Bind {
        addr: config.grpc.listen,
        error,
    })?;
    let metrics_listener = if config.metrics.enabled {
        Some(bind(config.metrics.listen).await?)
    } else {
        None
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let webhooks = match config.webhooks.listen {
        Some(addr) => {
            let endpoints = crate::webhooks::Endpoints::new(&config.webhooks, &env)
                .map_err(ServeError::Config)?;
            Some((bind(addr).await?, endpoints))
        }
        None => None,
    };
    let dashboard = if config.dashboard.enabled {
        let listener = bind(config.dashboard.listen).await?;
        let tls = pem
            .as_ref()
            .map(|(cert, key)| dashboard_tls(cert, key))
            .transpose()?;
        let lifetime = ServerConfig::duration(&config.dashboard.session_lifetime).num_seconds();
        let sessions =
            crate::dashboard::session::Sessions::open(&config.dashboard_key_file(), lifetime)
                .map_err(|e| ServeError::Config(format!("`dashboard.session_key_file`: {e}")))?;
        Some((listener, tls, sessions))
    } else {
        None
    };
    let dashboard_addr = dashboard.as_ref().and_then(|(l, _, _)| l.local_addr().ok());
    let channels =
        crate::notify::channels(&config.notifications, &env).map_err(ServeError::Config)?;
    let webhooks_addr = webhooks
        .as_ref()
        .and_then(|(l, e)| Some((l.local_addr().ok()?, e.describe())));
    // A new store starts on the rules directory: a directory that does not load must not
    // leave an empty store behind.
    if !config.data_dir.join("db").exists() {
        let rules_dir = config.rules_dir.clone();
        tokio::task::spawn_blocking(move || {
            switchyard_core::RuleSet::load(
                &rules_dir,
                DeciderRegistry::new(),
                RuleLimits::default(),
            )
        })
        .await
        .map_err(|e| ServeError::Config(format!("loading the rules: {e}")))?
        .map_err(|e| {
            ServeError::Config(format!(
                "`rules_dir` ({}) does not load as a rule set:\n{e}",
                config.rules_dir.display()
            ))
        })?;
    }
    // A test server's clock (`--clock manual`): it moves only when an admin advances it.
    let manual = match config.engine.clock.as_str() {
        "manual" => {
            let start = config
                .engine
                .clock_start
                .as_deref()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or_else(chrono::Utc::now);
            tracing::warn!(%start, "the engine runs on a MANUAL clock (a test server): time moves only when an admin advances it");
            Some(Arc::new(switchyard_core::ManualClock::new(start)))
        }
        _ => None,
    };
    let mut engine_settings = engine_config(&config);
    if let Some(clock) = &manual {
        engine_settings.clock = clock.clone();
    }
    let engine = Engine::open_with_rules(
        engine_settings,
        &config.rules_dir,
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .await?;
    let (analytics, following) = crate::analytics::open(&config, &engine)?;
    let mut channels = channels;
    if analytics.is_some() {
        // The dashboard shows what the rules route to it, unless configured otherwise.
        channels
            .entry("dashboard".to_string())
            .or_insert_with(|| Arc::new(switchyard_analytics::DashboardChannel));
    }
    crate::notify::register(&engine, channels);
    match engine.active_rule_set() {
        Some(r) => tracing::info!(number = r.number, version = %r.version, "rule set active"),
        None => tracing::warn!("no rule set is active"),
    }
    let connections_refused = Arc::new(AtomicU64::new(0));
    let metrics_task = metrics_listener.map(|listener| {
        let router = crate::metrics_http::router(crate::metrics_http::MetricsState {
            engine: engine.clone(),
            manual_clock: manual.is_some(),
            unauthenticated: auth.refusals(),
            connections_refused: connections_refused.clone(),
        });
        tokio::spawn(crate::http::serve(
            listener,
            router,
            crate::http::HttpLimits::default(),
            connections_refused.clone(),
            "metrics",
        ))
    });

    let webhooks_task = webhooks.map(|(listener, endpoints)| {
        tokio::spawn(crate::http::serve(
            listener,
            crate::webhooks::router(engine.clone(), endpoints),
            crate::http::HttpLimits::default(),
            connections_refused.clone(),
            "webhooks",
        ))
    });

    auth.use_engine(engine.clone());
    let services = Services {
        engine: engine.clone(),
    };
    let size = config.grpc.message_bytes_max;
    let instances = InterceptedService::new(
        pb::instance_service_server::InstanceServiceServer::new(services.clone())
            .max_decoding_message_size(size)
            .max_encoding_message_size(size),
        auth.clone(),
    );
    let definitions = InterceptedService::new(
        pb::definition_service_server::DefinitionServiceServer::new(services.clone())
            .max_decoding_message_size(size)
            .max_encoding_message_size(size),
        auth.clone(),
    );
    let access = InterceptedService::new(
        pb::access_service_server::AccessServiceServer::new(services.clone())
            .max_decoding_message_size(size)
            .max_encoding_message_size(size),
        auth.clone(),
    );
    let rule_sets = InterceptedService::new(
        pb::rule_set_service_server::RuleSetServiceServer::new(services)
            .max_decoding_message_size(size)
            .max_encoding_message_size(size),
        auth.clone(),
    );
    // Raised when shutdown begins: feed streams end then, instead of holding the drain.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let clock = InterceptedService::new(
        pb::clock_service_server::ClockServiceServer::new(crate::clock::ClockService {
            engine: engine.clone(),
            manual: manual.clone(),
        })
        .max_decoding_message_size(size)
        .max_encoding_message_size(size),
        auth.clone(),
    );
    let backup = InterceptedService::new(
        pb::backup_service_server::BackupServiceServer::new(crate::backup::BackupService {
            engine: engine.clone(),
        })
        .max_decoding_message_size(size)
        .max_encoding_message_size(size),
        auth.clone(),
    );
    let jobs = InterceptedService::new(
        pb::job_service_server::JobServiceServer::new(crate::jobs::JobService {
            engine: engine.clone(),
            stopping: stopping.clone(),
            polls: Arc::new(tokio::sync::Semaphore::new(config.grpc.job_polls_max)),
            polls_max: config.grpc.job_polls_max,
            // A long poll answers (empty) before the call's own deadline ends it.
            wait_max: seconds(&config.grpc.request_timeout).saturating_sub(Duration::from_secs(1)),
        })
        .max_decoding_message_size(size)
        .max_encoding_message_size(size),
        auth.clone(),
    );
    // The feed exported to NATS JetStream: it follows the feed until the engine stops.
    let (export_stop, export_stopped) = tokio::sync::watch::channel(false);
    let export_task = config.nats_export.enabled.then(|| {
        tokio::spawn(switchyard_nats::run(
            engine.clone(),
            config.nats_export(),
            switchyard_nats::Progress::default(),
            export_stopped,
        ))
    });
    let (dashboard_task, recent_task) = match dashboard {
        Some((listener, tls, sessions)) => {
            let recent = crate::dashboard::Recent::new();
            let recent_task = tokio::spawn(recent.clone().follow(engine.clone()));
            let state = Arc::new(crate::dashboard::Dashboard {
                engine: engine.clone(),
                analytics: analytics.clone(),
                auth: auth.clone(),
                sessions,
                recent,
                secure: tls.is_some(),
                streams: Arc::new(tokio::sync::Semaphore::new(config.dashboard.streams_max)),
                stopping: stopping.clone(),
            });
            let limits = crate::http::HttpLimits {
                // A live stream lasts its time, then the browser reconnects.
                connection_timeout: Duration::from_secs(crate::dashboard::STREAM_SECONDS + 10),
                ..crate::http::HttpLimits::default()
            };
            let task = tokio::spawn(crate::http::serve_with(
                listener,
                crate::dashboard::router(state),
                limits,
                connections_refused.clone(),
                "dashboard",
                tls,
            ));
            (Some(task), Some(recent_task))
        }
        None => (None, None),
    };
    // Feed and summary streams share one bound.
    let streams = Arc::new(tokio::sync::Semaphore::new(config.grpc.feed_streams_max));
    let analytics = InterceptedService::new(
        switchyard_client::analytics::analytics_service_server::AnalyticsServiceServer::new(
            crate::analytics::AnalyticsService {
                analytics,
                engine: engine.clone(),
                stopping: stopping.clone(),
                streams: streams.clone(),
                streams_max: config.grpc.feed_streams_max,
            },
        )
        .max_decoding_message_size(size)
        .max_encoding_message_size(size),
        auth.clone(),
    );
    let feed = InterceptedService::new(
        pb::feed_service_server::FeedServiceServer::new(crate::feed::FeedService {
            engine: engine.clone(),
            stopping,
            streams,
            streams_max: config.grpc.feed_streams_max,
        })
        .max_decoding_message_size(size)
        .max_encoding_message_size(size),
        auth.clone(),
    );
    let (health, health_service) = crate::health::service();
    health.set("", ServingStatus::Serving);
    for name in SERVICE_NAMES {
        health.set(name, ServingStatus::Serving);
    }
    // NOT_SERVING while the store refuses writes (a full disk, a failed flush).
    let health_task = {
        let mut store_health = engine.health();
        let reporter = health.clone();
        tokio::spawn(async move {
            loop {
                let writable = matches!(
                    *store_health.borrow_and_update(),
                    switchyard_core::StoreHealth::Writable
                );
                reporter.set_all(if writable {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                });
                if store_health.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(instances)
        .add_service(definitions)
        .add_service(rule_sets)
        .add_service(access)
        .add_service(feed)
        .add_service(jobs)
        .add_service(clock)
        .add_service(backup)
        .add_service(analytics);

    let (stop, stopped) = oneshot::channel::<()>();
    let (draining_tx, draining_rx) = oneshot::channel::<()>();
    let serve_engine = engine.clone();
    let task = tokio::spawn(async move {
        let signal = async move {
            let _ = stopped.await;
            tracing::info!("shutting down: no new connections; draining in-flight calls");
            // NOT_SERVING everywhere, and every health watch ends after telling its watcher.
            health.close();
            let _ = stopping_tx.send(true);
            let _ = draining_tx.send(());
        };
        // Bounded: a connection limit, handshake and idle deadlines (and no Nagle delay).
        let incoming =
            crate::connections::Incoming::new(listener, limits, connections_refused.clone());
        let serve = router.serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(serve);
        let served = tokio::select! {
            result = &mut serve => result.map_err(ServeError::from),
            () = async {
                let _ = draining_rx.await;
                tokio::time::sleep(drain).await;
            } => {
                tracing::warn!(timeout = ?drain, "in-flight calls did not finish within the drain timeout; closing them");
                Ok(())
            }
        };
        for t in [metrics_task, webhooks_task, dashboard_task, recent_task]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
        health_task.abort();
        // Every call has answered (or was cut off unanswered): now drain the engine's commit
        // queue and flush, so nothing acknowledged or queued is lost.
        serve_engine.shutdown().await;
        // The exporter publishes what the engine flushed last, then ends with the engine
        // (told to stop if the broker is away); what it did not record it finds in the stream.
        if let Some(mut export) = export_task {
            if tokio::time::timeout(Duration::from_secs(5), &mut export)
                .await
                .is_err()
            {
                let _ = export_stop.send(true);
                if tokio::time::timeout(Duration::from_secs(2), &mut export)
                    .await
                    .is_err()
                {
                    export.abort();
                }
            }
        }
        // The analytics follower ends with the engine; it holds the store until it has.
        if let Some(mut following) = following {
            if tokio::time::timeout(Duration::from_secs(5), &mut following)
                .await
                .is_err()
            {
                following.abort();
                let _ = following.await;
            }
        }
        tracing::info!("stopped; the store is flushed and closed");
        served
    });
    Ok(Running {
        grpc_addr,
        metrics_addr,
        webhooks_addr,
        dashboard_addr,
        tls: tls.is_some(),
        engine,
        stop,
        task,
    })
}

/// The dashboard's TLS acceptor, from the PEM files the gRPC port uses.
fn dashboard_tls(cert: &[u8], key: &[u8]) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let bad = |key: &str, e: &dyn std::fmt::Display| {
        ServeError::Config(format!("`tls.{key}` (for the dashboard): {e}"))
    };
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("cert_file", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("key_file", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("cert_file", &e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad("key_file", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
