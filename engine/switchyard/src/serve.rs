//! `switchyard serve` and `switchyard token`: run the gRPC server until SIGTERM or SIGINT,
//! and make bearer tokens for its configuration.

use std::path::PathBuf;

use anyhow::{Context, Result};
use switchyard_grpc::config::ServerConfig;

/// `switchyard serve`'s flags; each overrides the configuration file and the environment.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The configuration file (TOML); without it the embedded defaults apply. Environment
    /// variables (SWITCHYARD_GRPC_LISTEN, …) override it; see switchyard.example.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The rules directory deployed on the first start (default ./rules).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// The store directory (default ./switchyard-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The gRPC address (default 127.0.0.1:50051).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The metrics address (default 127.0.0.1:9464).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Receive payment-provider webhooks on this address (off by default; the endpoints and
    /// their secrets are the configuration's [webhooks.stripe] and [webhooks.adyen]).
    #[arg(long)]
    webhooks_listen: Option<std::net::SocketAddr>,
    /// The dashboard's address (default 127.0.0.1:8080; `[dashboard] enabled = false` turns
    /// it off).
    #[arg(long)]
    dashboard_listen: Option<std::net::SocketAddr>,
    /// `manual` runs a test server whose clock moves only when an admin advances it
    /// (`switchyard clock advance`); never the default.
    #[arg(long, value_parser = ["system", "manual"])]
    clock: Option<String>,
    /// Where a manual clock starts (RFC 3339; default: now).
    #[arg(long)]
    clock_start: Option<String>,
    /// Demo mode: a fresh store in a temporary directory (unless --data-dir), traffic through
    /// the shipped rules with the reference adapters answering jobs, notifications logged,
    /// and an admin token for the dashboard printed at start.
    #[arg(long)]
    demo: bool,
    /// Demo mode: how many journeys run at once.
    #[arg(long, default_value_t = 24, requires = "demo", value_parser = clap::value_parser!(u16).range(1..=500))]
    demo_journeys: u16,
    /// Demo mode: the mean pause between two steps of one journey, in milliseconds.
    #[arg(long, default_value_t = 800, requires = "demo", value_parser = clap::value_parser!(u64).range(10..=60_000))]
    demo_pace_ms: u64,
}

/// Installs the log subscriber: `RUST_LOG` filters (default `info`);
/// `SWITCHYARD_LOG_FORMAT=json` writes one JSON object per event.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: escape codes do not belong in log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var("SWITCHYARD_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Raises the soft limit on open files to the hard limit: each connection takes a file
/// descriptor, and the common soft default (1,024) is below `grpc.connections_max` plus the
/// store's and listeners' own.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let before = limit.rlim_cur;
        if before >= limit.rlim_max {
            return;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::info!(
                from = before,
                to = limit.rlim_cur,
                "raised the open-file limit"
            );
        }
    }
}

pub fn serve(args: ServeArgs) -> Result<()> {
    init_logs();
    raise_open_file_limit();
    let mut config = ServerConfig::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(rules) = args.rules {
        config.rules_dir = rules;
    }
    // The demo's store is thrown away at exit unless the caller names one.
    let demo_dir = match (&args.data_dir, args.demo) {
        (None, true) => {
            let dir =
                std::env::temp_dir().join(format!("switchyard-demo-{}", uuid::Uuid::new_v4()));
            config.data_dir = dir.join("data");
            Some(dir)
        }
        _ => None,
    };
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if args.demo {
        // Messages the rules route to a channel nobody configured are logged, not queued.
        for channel in ["email", "sms", "webhook"] {
            config
                .notifications
                .channels
                .entry(channel.to_string())
                .or_insert(switchyard_grpc::config::ChannelConfig::Log);
        }
    }
    if let Some(listen) = args.listen {
        config.grpc.listen = listen;
    }
    if let Some(listen) = args.metrics_listen {
        config.metrics.listen = listen;
    }
    if let Some(listen) = args.dashboard_listen {
        config.dashboard.listen = listen;
    }
    if let Some(listen) = args.webhooks_listen {
        config.webhooks.listen = Some(listen);
    }
    if let Some(clock) = args.clock {
        config.engine.clock = clock;
    }
    if let Some(start) = args.clock_start {
        if chrono::DateTime::parse_from_rfc3339(&start).is_err() {
            anyhow::bail!(
                "--clock-start: `{start}` is not an RFC 3339 time such as 2026-04-01T09:00:00Z"
            );
        }
        config.engine.clock_start = Some(start);
    }
    if config.engine.clock_start.is_some() && config.engine.clock != "manual" {
        anyhow::bail!("--clock-start needs --clock manual");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let running = switchyard_grpc::server::start(config.clone(), |k| std::env::var(k).ok())
            .await
            .with_context(|| {
                format!("starting the server (store {})", config.data_dir.display())
            })?;
        // Scripts and tests wait for these lines: keep their shape.
        println!(
            "switchyard listening on {}://{}",
            if running.tls { "https" } else { "http" },
            running.grpc_addr
        );
        if let Some(addr) = running.metrics_addr {
            println!("metrics on http://{addr}/metrics");
        }
        if let Some((addr, endpoints)) = &running.webhooks_addr {
            println!("webhooks on http://{addr} ({endpoints})");
        }
        if let Some(addr) = running.dashboard_addr {
            println!(
                "dashboard on {}://{addr}/",
                if running.tls { "https" } else { "http" }
            );
        }
        if let Some(r) = running.engine.active_rule_set() {
            println!("rule set #{} active ({})", r.number, r.version);
        }
        let demo = if args.demo {
            let (token, task) = crate::demo::start(
                &running.engine,
                usize::from(args.demo_journeys),
                std::time::Duration::from_millis(args.demo_pace_ms),
            )
            .await?;
            println!(
                "demo: {} journeys through the shipped rules; store in {}",
                args.demo_journeys,
                config.data_dir.display()
            );
            println!("demo: log in to the dashboard with the token {token}");
            Some(task)
        } else {
            None
        };
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        if let Some(task) = demo {
            task.abort();
        }
        running.shutdown().await?;
        if let Some(dir) = &demo_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        println!("switchyard stopped");
        Ok(())
    })
}

/// `switchyard token …`.
#[derive(clap::Subcommand)]
pub enum Token {
    /// Make a new random bearer token: prints the configuration entry that accepts it on
    /// stdout (only its SHA-256 is kept) and the token itself, once, on stderr.
    New {
        /// The actor id recorded on the token's changes.
        #[arg(long)]
        actor: String,
        /// Its roles, comma-separated (e.g. sales_rep,sales_manager).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// Print the SHA-256 of a token read from standard input (for `[[auth.tokens]] sha256`).
    Hash,
    /// Make a token kept in a stopped store (as `AccessService/CreateToken` does on a running
    /// server): prints the token, once, on stdout and its credential on stderr.
    Create {
        /// The store directory (stopped: sled allows one process per store).
        #[arg(long)]
        store: PathBuf,
        /// The actor id its calls act as.
        #[arg(long)]
        actor: String,
        /// Its roles, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// When it stops working (RFC 3339, or a date meaning its start in UTC); never when
        /// absent.
        #[arg(long, value_parser = crate::parse_since)]
        expires: Option<chrono::DateTime<chrono::Utc>>,
        /// Who makes it (recorded with it).
        #[arg(long = "as", default_value = "admin")]
        by: String,
    },
    /// List the tokens kept in a stopped store, revoked and expired ones included, as JSON
    /// lines (never the tokens themselves).
    List {
        /// The store directory.
        #[arg(long)]
        store: PathBuf,
    },
    /// Replace a stored token with a new one (same actor, roles and expiry), revoking the old;
    /// prints the new token, once, on stdout.
    Rotate {
        /// The credential id, as `list` shows it.
        id: String,
        /// The store directory.
        #[arg(long)]
        store: PathBuf,
        /// Who rotates it.
        #[arg(long = "as", default_value = "admin")]
        by: String,
    },
    /// Revoke a stored token: it is refused from its next call.
    Revoke {
        /// The credential id, as `list` shows it.
        id: String,
        /// The store directory.
        #[arg(long)]
        store: PathBuf,
        /// Who revokes it.
        #[arg(long = "as", default_value = "admin")]
        by: String,
    },
}

pub fn token(what: Token) -> Result<()> {
    match what {
        Token::New { actor, roles } => {
            let token = switchyard_core::credential::new_token();
            // The entry goes to stdout (append it to a configuration file), the token to
            // stderr (the terminal), so `token new … >> switchyard.toml` keeps it out of the file.
            eprintln!("token for {actor} (shown once; give it to the caller): {token}");
            println!("\n[[auth.tokens]]");
            println!("sha256 = \"{}\"", switchyard_grpc::auth::token_hash(&token));
            println!("actor = {}", toml_string(&actor));
            println!(
                "roles = [{}]",
                roles
                    .iter()
                    .map(|r| toml_string(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Token::Hash => {
            let mut text = String::new();
            std::io::stdin()
                .read_line(&mut text)
                .context("reading the token from standard input")?;
            let token = text.trim();
            anyhow::ensure!(!token.is_empty(), "no token on standard input");
            println!("{}", switchyard_grpc::auth::token_hash(token));
            Ok(())
        }
        stored => stored_token(stored),
    }
}

/// The `token` commands on a stopped store's credentials. Whoever can open the store holds
/// every right over it, so these act as `admin` (the `--as` name is recorded).
fn stored_token(what: Token) -> Result<()> {
    let (store, by) = match &what {
        Token::Create { store, by, .. }
        | Token::Rotate { store, by, .. }
        | Token::Revoke { store, by, .. } => (store.clone(), by.clone()),
        Token::List { store } => (store.clone(), "admin".to_string()),
        Token::New { .. } | Token::Hash => unreachable!("handled by `token`"),
    };
    let by = switchyard_core::Actor::new(&by, &[switchyard_core::roles::ADMIN]);
    let request_id = format!("cli-{}", uuid::Uuid::now_v7());
    let code = crate::offline(&store, |engine| async move {
        match what {
            Token::Create {
                actor,
                roles,
                expires,
                ..
            } => {
                let made = engine
                    .create_credential(&by, &request_id, &actor, &roles, expires)
                    .await?;
                announce(&made);
            }
            Token::Rotate { id, .. } => {
                let made = engine.rotate_credential(&by, &request_id, &id).await?;
                eprintln!("credential {id} is revoked");
                announce(&made);
            }
            Token::Revoke { id, .. } => {
                let revoked = engine.revoke_credential(&by, &request_id, &id).await?;
                println!("{}", crate::json_line(&revoked));
            }
            Token::List { .. } => {
                let mut page_token: Option<String> = None;
                loop {
                    let page = engine
                        .credentials_page(&by, 1000, page_token.as_deref())
                        .await?;
                    for credential in &page.items {
                        println!("{}", crate::json_line(credential));
                    }
                    match page.next_page_token {
                        Some(next) => page_token = Some(next),
                        None => break,
                    }
                }
            }
            Token::New { .. } | Token::Hash => unreachable!("handled by `token`"),
        }
        Ok(0)
    })?;
    std::process::exit(code)
}

/// The token on stdout (so `TOKEN=$(switchyard token create …)` captures it), what it is on
/// stderr.
fn announce(made: &switchyard_core::NewToken) {
    let c = &made.credential;
    eprintln!(
        "credential {} for {} with roles [{}]{} — the token is shown once:",
        c.id,
        c.actor,
        c.roles.join(", "),
        c.expires_at
            .map(|at| format!(", until {}", at.to_rfc3339()))
            .unwrap_or_default()
    );
    println!("{}", made.token);
}

fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}
