//! Commands that talk to a running server over gRPC: the engine clock, instances (start,
//! send, show, list), rule sets (validate, deploy, activate, list), the event feed (tail) and
//! backups (export). The server address comes from `--addr`, else `SWITCHYARD_ADDR`, else
//! the profile's `addr`, else `http://127.0.0.1:50051`; the bearer token from `--token`, else
//! `SWITCHYARD_TOKEN`, else the profile's `token` or `token_file` (see [`Connection`]).
//! Exit codes: 0 done; 1 refused by the server (a role, a state, a rule); 2 bad input (the
//! server named a field, or the command line was wrong); 3 the server could not be reached or
//! is unavailable.

use anyhow::Result;
use clap::{Args, Subcommand};
use switchyard_grpc::pb;
use tonic::transport::Channel;
use tonic::Code;

/// Where the server is, and who calls it.
#[derive(Args)]
pub struct Connection {
    /// The server's gRPC address (default: SWITCHYARD_ADDR, else the profile's `addr`, else
    /// http://127.0.0.1:50051).
    #[arg(long, global = true)]
    addr: Option<String>,
    /// The bearer token (default: SWITCHYARD_TOKEN, else the profile's `token` or
    /// `token_file`).
    #[arg(long, global = true)]
    token: Option<String>,
    /// A profile of the profile file (SWITCHYARD_PROFILES, else
    /// ~/.config/switchyard/profiles.toml) to take the address and token from (default:
    /// SWITCHYARD_PROFILE, else `default` if the file has it).
    #[arg(long, global = true)]
    profile: Option<String>,
    /// The address and token, once worked out.
    #[arg(skip)]
    resolved: std::sync::OnceLock<Result<Resolved, String>>,
}

/// A connection's address and token after flags, environment and profile.
#[derive(Clone, Debug, PartialEq)]
struct Resolved {
    addr: String,
    token: Option<String>,
}

/// One profile of the profile file.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Profile {
    addr: Option<String>,
    token: Option<String>,
    token_file: Option<std::path::PathBuf>,
}

/// Where the profile file is: SWITCHYARD_PROFILES, else the user's configuration directory.
fn profile_file() -> Option<std::path::PathBuf> {
    if let Ok(path) = std::env::var("SWITCHYARD_PROFILES") {
        return Some(path.into());
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config")))?;
    Some(config.join("switchyard/profiles.toml"))
}

/// Works out the address and token: a flag, else its environment variable, else the profile.
/// A profile asked for by name (flag or SWITCHYARD_PROFILE) must exist.
fn resolve(
    addr: Option<String>,
    token: Option<String>,
    profile: Option<String>,
    file: Option<std::path::PathBuf>,
) -> Result<Resolved, String> {
    let asked = profile.is_some();
    let name = profile.unwrap_or_else(|| "default".into());
    let text = match &file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !asked => None,
            Err(e) => return Err(format!("profile file {}: {e}", path.display())),
        },
        None if asked => return Err("no profile file: set SWITCHYARD_PROFILES or HOME".into()),
        None => None,
    };
    let chosen = match (text, &file) {
        (Some(text), Some(path)) => {
            let mut profiles: std::collections::BTreeMap<String, Profile> =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            match profiles.remove(&name) {
                Some(p) => p,
                None if asked => {
                    let known: Vec<_> = profiles.keys().cloned().collect();
                    return Err(format!(
                        "{}: no profile `{name}` (it has: {})",
                        path.display(),
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
                None => Profile::default(),
            }
        }
        _ => Profile::default(),
    };
    let from_file = match &chosen.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("profile `{name}` token_file {}: {e}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    Ok(Resolved {
        addr: addr
            .or(chosen.addr)
            .unwrap_or_else(|| "http://127.0.0.1:50051".into()),
        token: token.or(chosen.token).or(from_file),
    })
}

#[derive(Subcommand)]
pub enum ClockCommand {
    /// Print the engine's time, and whether it is the manual test clock.
    Show,
    /// Move a test server's manual clock forward (e.g. `48h`, `7d`, `90m`) and fire every
    /// timer due meanwhile. Needs an admin token.
    Advance {
        /// How far: a duration such as 48h, 7d, 90m, 30s (combinations like 1d12h too).
        by: String,
    },
}

#[derive(Subcommand)]
pub enum InstanceCommand {
    /// Start an instance of DEFINITION with initial data (inline JSON, or @file).
    Start {
        /// The definition, e.g. lead.
        definition: String,
        /// The initial data: a JSON object, or @path to a file holding one.
        #[arg(long, default_value = "{}")]
        data: String,
        /// The business key (e.g. L-2026-017).
        #[arg(long, default_value = "")]
        key: String,
        /// The idempotency key; a fresh one when absent (retrying then starts another).
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Send COMMAND to the instance ID with a payload (inline JSON, or @file).
    Send {
        /// The instance id.
        id: String,
        /// The command, e.g. submit.
        command: String,
        /// The payload: a JSON object, or @path to a file holding one.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// The idempotency key; a fresh one when absent.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show an instance with its history: every change's actor, command and reason.
    Show {
        /// The instance id.
        id: String,
    },
    /// Start one instance per line of a JSON-lines or CSV file (CSV when FILE ends in .csv),
    /// each line on its own: a bad line never blocks the good ones, and a re-run applies
    /// nothing twice (ids derived from each line). See the README for the line format.
    Import {
        /// The file.
        file: std::path::PathBuf,
        /// The definition of lines that do not name one.
        #[arg(long, default_value = "")]
        definition: String,
        /// Start at this line of the file (to resume where an import stopped).
        #[arg(long, default_value_t = 1)]
        from_line: u64,
    },
    /// List instances (oldest first), optionally of one definition, state or business key.
    List {
        /// Only this definition.
        #[arg(long, default_value = "")]
        definition: String,
        /// Only this state (needs --definition).
        #[arg(long, default_value = "")]
        state: String,
        /// Only this business key (needs --definition).
        #[arg(long, default_value = "")]
        key: String,
        /// Most instances to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Subcommand)]
pub enum RuleSetCommand {
    /// Check the rules folder DIR on the server (compile, cross-check, tests) without
    /// deploying; prints every problem as file:line:col. Exit 1 when it is not valid.
    Validate {
        /// The rules folder, as the server starts with it.
        dir: std::path::PathBuf,
    },
    /// Deploy the rules folder DIR as a new version and activate it — only if it loads, passes
    /// its tests, keeps deployed definitions unchanged and serves every live instance.
    Deploy {
        /// The rules folder, as the server starts with it.
        dir: std::path::PathBuf,
        /// The idempotency key; a fresh one when absent.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Make deployed version NUMBER the active one (a rollback, or forward again).
    Activate {
        /// The version number, as `list` shows it.
        number: u32,
        /// The idempotency key; a fresh one when absent.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// List the deployed versions.
    List,
}

/// How results print.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON object per line, for scripts.
    Json,
}

/// A failure as the exit code it maps to, after printing it.
pub(crate) fn exit_code(status: &tonic::Status) -> i32 {
    let reason = tonic_types::StatusExt::get_details_error_info(status)
        .map(|i| i.reason)
        .unwrap_or_default();
    eprintln!(
        "refused ({:?}{}): {}",
        status.code(),
        if reason.is_empty() {
            String::new()
        } else {
            format!(", {reason}")
        },
        status.message()
    );
    if let Some(bad) = tonic_types::StatusExt::get_details_bad_request(status) {
        for v in bad.field_violations {
            eprintln!("  {}: {}", v.field, v.description);
        }
    }
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => 2,
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown => 3,
        _ => 1,
    }
}

impl Connection {
    fn resolved(&self) -> &Result<Resolved, String> {
        self.resolved.get_or_init(|| {
            let env = |name: &str| std::env::var(name).ok();
            resolve(
                self.addr.clone().or_else(|| env("SWITCHYARD_ADDR")),
                self.token.clone().or_else(|| env("SWITCHYARD_TOKEN")),
                self.profile.clone().or_else(|| env("SWITCHYARD_PROFILE")),
                profile_file(),
            )
        })
    }

    async fn channel(&self) -> Result<Channel, i32> {
        let addr = match self.resolved() {
            Ok(r) => r.addr.clone(),
            Err(e) => {
                eprintln!("{e}");
                return Err(2);
            }
        };
        let endpoint = Channel::from_shared(addr.clone()).map_err(|e| {
            eprintln!("--addr {addr}: {e}");
            2
        })?;
        endpoint
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| {
                eprintln!("cannot reach the server at {addr}: {e}");
                3
            })
    }

    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let token = self.resolved().as_ref().ok().and_then(|r| r.token.clone());
        if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

fn time(t: Option<prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// Connects to the server and runs `run` on the channel; an unreachable server is exit 3.
pub(crate) fn on_server<F, Fut>(connection: &Connection, run: F) -> Result<i32>
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<i32>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match connection.channel().await {
            Ok(channel) => run(channel).await,
            Err(code) => Ok(code),
        }
    })
}

/// Inline JSON, or the contents of `@path`.
fn json_arg(name: &str, value: &str) -> Result<String, i32> {
    let text = match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            eprintln!("--{name} {value}: cannot read {path}: {e}");
            2
        })?,
        None => value.to_string(),
    };
    match switchyard_core::json::from_str(&text) {
        Ok(v) if v.is_object() => Ok(text),
        Ok(_) => {
            eprintln!("--{name}: must be a JSON object");
            Err(2)
        }
        Err(e) => {
            eprintln!("--{name}: not JSON: {e}");
            Err(2)
        }
    }
}

fn result_line(output: Output, r: &pb::CommandResult) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "instance_id": r.instance_id, "version": r.version, "state": r.state,
                "reason": r.reason, "started_instance_ids": r.started_instance_ids,
            })
        ),
        Output::Text => {
            println!("{} v{} {}: {}", r.instance_id, r.version, r.state, r.reason);
            for started in &r.started_instance_ids {
                println!("  started {started}");
            }
        }
    }
}

fn instance_json(i: &pb::Instance) -> serde_json::Value {
    serde_json::json!({
        "id": i.id, "definition": i.definition, "version": i.version, "state": i.state,
        "business_key": i.business_key, "parent_id": i.parent_id,
        "data": serde_json::from_str::<serde_json::Value>(&i.data_json).unwrap_or_default(),
    })
}

/// Runs an `instance` command; returns the exit code.
pub fn instance(connection: Connection, output: Output, what: InstanceCommand) -> Result<i32> {
    if let InstanceCommand::Import {
        file,
        definition,
        from_line,
    } = &what
    {
        return crate::bulk::run(&connection, output, file, definition, *from_line);
    }
    let connection = &connection;
    on_server(connection, |channel| async move {
        let mut client = pb::instance_service_client::InstanceServiceClient::new(channel);
        let fresh = || uuid::Uuid::new_v4().to_string();
        let code = match what {
            InstanceCommand::Start {
                definition,
                data,
                key,
                request_id,
            } => {
                let data_json = match json_arg("data", &data) {
                    Ok(t) => t,
                    Err(code) => return Ok(code),
                };
                let request = pb::StartInstanceRequest {
                    request_id: request_id.unwrap_or_else(fresh),
                    definition,
                    business_key: key,
                    data_json,
                    ..Default::default()
                };
                match client.start_instance(connection.request(request)).await {
                    Ok(r) => {
                        result_line(output, &r.into_inner().result.unwrap_or_default());
                        0
                    }
                    Err(status) => exit_code(&status),
                }
            }
            InstanceCommand::Send {
                id,
                command,
                payload,
                request_id,
            } => {
                let payload_json = match json_arg("payload", &payload) {
                    Ok(t) => t,
                    Err(code) => return Ok(code),
                };
                let request = pb::SendCommandRequest {
                    request_id: request_id.unwrap_or_else(fresh),
                    instance_id: id,
                    command,
                    payload_json,
                    expected_version: None,
                };
                match client.send_command(connection.request(request)).await {
                    Ok(r) => {
                        result_line(output, &r.into_inner().result.unwrap_or_default());
                        0
                    }
                    Err(status) => exit_code(&status),
                }
            }
            InstanceCommand::Show { id } => {
                let got = client
                    .get_instance(connection.request(pb::GetInstanceRequest {
                        instance_id: id.clone(),
                    }))
                    .await;
                let instance = match got {
                    Ok(r) => r.into_inner().instance.unwrap_or_default(),
                    Err(status) => return Ok(exit_code(&status)),
                };
                let mut entries = Vec::new();
                let mut token = String::new();
                loop {
                    let page = client
                        .list_instance_history(connection.request(pb::ListInstanceHistoryRequest {
                            instance_id: id.clone(),
                            page_size: 1000,
                            page_token: token.clone(),
                        }))
                        .await;
                    let page = match page {
                        Ok(p) => p.into_inner(),
                        Err(status) => return Ok(exit_code(&status)),
                    };
                    entries.extend(page.entries);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    token = page.next_page_token;
                }
                match output {
                    Output::Json => {
                        let history: Vec<serde_json::Value> = entries
                            .iter()
                            .map(|e| serde_json::json!({
                                "version": e.version, "at": time(e.at), "actor": e.actor.as_ref().map(|a| a.id.clone()),
                                "command": e.command, "from": e.from_state, "to": e.to_state, "reason": e.reason,
                            }))
                            .collect();
                        let mut shown = instance_json(&instance);
                        shown["history"] = history.into();
                        println!("{shown}");
                    }
                    Output::Text => {
                        println!(
                            "{} {} v{} {} ({})",
                            instance.definition,
                            instance.id,
                            instance.version,
                            instance.state,
                            instance.business_key
                        );
                        println!("data: {}", instance.data_json);
                        for e in &entries {
                            let actor = e.actor.as_ref().map(|a| a.id.as_str()).unwrap_or("");
                            let command = if e.command.is_empty() {
                                "(start)"
                            } else {
                                e.command.as_str()
                            };
                            println!(
                                "  v{:<3} {} {:<20} {:<18} → {:<16} {}",
                                e.version,
                                time(e.at),
                                actor,
                                command,
                                e.to_state,
                                e.reason
                            );
                        }
                    }
                }
                0
            }
            InstanceCommand::Import { .. } => {
                unreachable!("`instance import` runs before connecting")
            }
            InstanceCommand::List {
                definition,
                state,
                key,
                limit,
            } => {
                let mut printed = 0;
                let mut token = String::new();
                if output == Output::Text {
                    println!(
                        "{:<36}  {:<14} {:<18} {:>4}  business key",
                        "id", "definition", "state", "v"
                    );
                }
                while printed < limit {
                    let page = client
                        .list_instances(connection.request(pb::ListInstancesRequest {
                            definition: definition.clone(),
                            state: state.clone(),
                            business_key: key.clone(),
                            page_size: i32::try_from((limit - printed).min(1000)).unwrap_or(1000),
                            page_token: token.clone(),
                        }))
                        .await;
                    let page = match page {
                        Ok(p) => p.into_inner(),
                        Err(status) => return Ok(exit_code(&status)),
                    };
                    for i in &page.instances {
                        match output {
                            Output::Json => println!("{}", instance_json(i)),
                            Output::Text => println!(
                                "{:<36}  {:<14} {:<18} {:>4}  {}",
                                i.id, i.definition, i.state, i.version, i.business_key
                            ),
                        }
                        printed += 1;
                    }
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    token = page.next_page_token;
                }
                0
            }
        };
        Ok(code)
    })
}

/// Tails the event feed after `after` (0: from the start): stored events, then live ones,
/// until interrupted — or, with `until_caught_up`, until the replay reaches the head.
pub fn feed_tail(
    connection: Connection,
    output: Output,
    after: u64,
    until_caught_up: bool,
) -> Result<i32> {
    let connection = &connection;
    on_server(connection, |channel| async move {
        let mut client = pb::feed_service_client::FeedServiceClient::new(channel);
        let request = pb::SubscribeRequest {
            after_offset: after,
            ..Default::default()
        };
        let mut stream = match client.subscribe(connection.request(request)).await {
            Ok(s) => s.into_inner(),
            Err(status) => return Ok(exit_code(&status)),
        };
        loop {
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(0),
                Err(status) => return Ok(exit_code(&status)),
            };
            match message.item {
                Some(pb::subscribe_response::Item::Event(e)) => match output {
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({
                            "offset": e.offset, "id": e.id, "type": e.r#type, "subject": e.subject, "time": time(e.time),
                            "data": serde_json::from_str::<serde_json::Value>(&e.data_json).unwrap_or_default(),
                        })
                    ),
                    Output::Text => println!(
                        "#{:<6} {} {:<34} {}",
                        e.offset,
                        time(e.time),
                        e.r#type,
                        e.subject
                    ),
                },
                Some(pb::subscribe_response::Item::CaughtUp(_)) if until_caught_up => return Ok(0),
                _ => {}
            }
        }
    })
}

/// The rule-set files of `dir` as the wire carries them — what the server itself reads from a
/// rules folder; anything else there (a README, editor files) is left out and named.
fn rule_files(dir: &std::path::Path) -> Result<Vec<pb::RuleFile>, i32> {
    fn walk(at: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(at)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    if let Err(e) = walk(dir, &mut paths) {
        eprintln!("{}: cannot read: {e}", dir.display());
        return Err(2);
    }
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let relative = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        if !switchyard_core::rules::is_rule_file_path(&relative) {
            eprintln!("not a rule-set file, left out: {relative}");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(content) => files.push(pb::RuleFile {
                path: relative,
                content,
            }),
            Err(e) => {
                eprintln!("{}: cannot read: {e}", path.display());
                return Err(2);
            }
        }
    }
    Ok(files)
}

fn rule_set_line(output: Output, r: &pb::RuleSet) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "number": r.number, "version": r.version, "active": r.active,
                "deployed_at": time(r.deployed_at), "deployed_by": r.deployed_by,
            })
        ),
        Output::Text => println!(
            "{:>4} {} {} by {}{}",
            r.number,
            r.version,
            time(r.deployed_at),
            r.deployed_by,
            if r.active { "  (active)" } else { "" }
        ),
    }
}

/// Runs a `rule-set` command; returns the exit code.
pub fn rule_set(connection: Connection, output: Output, what: RuleSetCommand) -> Result<i32> {
    let connection = &connection;
    on_server(connection, |channel| async move {
        let mut client = pb::rule_set_service_client::RuleSetServiceClient::new(channel);
        let fresh = || uuid::Uuid::new_v4().to_string();
        let code = match what {
            RuleSetCommand::Validate { dir } => {
                let files = match rule_files(&dir) {
                    Ok(f) => f,
                    Err(code) => return Ok(code),
                };
                let request = pb::ValidateRuleSetRequest { files };
                match client.validate_rule_set(connection.request(request)).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        for p in &r.problems {
                            eprintln!("{}:{}:{}: {}", p.file, p.line, p.column, p.message);
                        }
                        if r.valid {
                            println!("valid: rule set {}", r.version);
                            0
                        } else {
                            eprintln!("{} problem(s)", r.problems.len());
                            1
                        }
                    }
                    Err(status) => exit_code(&status),
                }
            }
            RuleSetCommand::Deploy { dir, request_id } => {
                let files = match rule_files(&dir) {
                    Ok(f) => f,
                    Err(code) => return Ok(code),
                };
                let request = pb::DeployRuleSetRequest {
                    request_id: request_id.unwrap_or_else(fresh),
                    files,
                };
                match client.deploy_rule_set(connection.request(request)).await {
                    Ok(r) => {
                        rule_set_line(output, &r.into_inner().rule_set.unwrap_or_default());
                        0
                    }
                    Err(status) => exit_code(&status),
                }
            }
            RuleSetCommand::Activate { number, request_id } => {
                let request = pb::ActivateRuleSetRequest {
                    request_id: request_id.unwrap_or_else(fresh),
                    number,
                };
                match client.activate_rule_set(connection.request(request)).await {
                    Ok(r) => {
                        rule_set_line(output, &r.into_inner().rule_set.unwrap_or_default());
                        0
                    }
                    Err(status) => exit_code(&status),
                }
            }
            RuleSetCommand::List => {
                let mut token = String::new();
                loop {
                    let request = pb::ListRuleSetsRequest {
                        page_size: 1000,
                        page_token: token.clone(),
                    };
                    let page = match client.list_rule_sets(connection.request(request)).await {
                        Ok(p) => p.into_inner(),
                        Err(status) => return Ok(exit_code(&status)),
                    };
                    for r in &page.rule_sets {
                        rule_set_line(output, r);
                    }
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    token = page.next_page_token;
                }
                0
            }
        };
        Ok(code)
    })
}

/// Runs a `clock` command; returns the exit code.
pub fn clock(connection: Connection, what: ClockCommand) -> Result<i32> {
    let connection = &connection;
    on_server(connection, |channel| async move {
        let mut client = pb::clock_service_client::ClockServiceClient::new(channel);
        match what {
            ClockCommand::Show => match client
                .get_clock(connection.request(pb::GetClockRequest {}))
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    println!(
                        "{} ({})",
                        time(r.now),
                        if r.manual {
                            "manual test clock"
                        } else {
                            "system clock"
                        }
                    );
                    Ok(0)
                }
                Err(status) => Ok(exit_code(&status)),
            },
            ClockCommand::Advance { by } => {
                let Some(step) = switchyard_core::definition::parse_duration(&by)
                    .filter(|d| *d > chrono::Duration::zero())
                else {
                    eprintln!("`{by}` is not a duration such as 48h, 7d, 90m or 30s");
                    return Ok(2);
                };
                let request = pb::AdvanceClockRequest {
                    by: Some(prost_types::Duration {
                        seconds: step.num_seconds(),
                        nanos: 0,
                    }),
                };
                match client.advance_clock(connection.request(request)).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        println!("{} ({} timer(s) fired)", time(r.now), r.timers_fired);
                        Ok(0)
                    }
                    Err(status) => Ok(exit_code(&status)),
                }
            }
        }
    })
}

/// `switchyard export`: the backup of a running server's store (or, with `store`, of a stopped
/// one) into `out`, written as `<out>.partial` and renamed once complete.
pub fn export(
    connection: &Connection,
    store: Option<&std::path::Path>,
    out: &std::path::Path,
) -> Result<i32> {
    if out.exists() {
        eprintln!(
            "--out {}: the file exists; choose a new name",
            out.display()
        );
        return Ok(2);
    }
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let file = match std::fs::File::create(&partial) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "--out {}: cannot create {}: {e}",
                out.display(),
                partial.display()
            );
            return Ok(2);
        }
    };
    let mut writer = std::io::BufWriter::new(file);
    let code = match store {
        Some(store) => {
            match switchyard_core::export_stopped(
                &switchyard_core::SledConfig::new(store),
                &mut writer,
                chrono::Utc::now(),
            ) {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("export of {}: {e}", store.display());
                    1
                }
            }
        }
        None => on_server(connection, |channel| async {
            let mut client = pb::backup_service_client::BackupServiceClient::new(channel)
                .max_decoding_message_size(1 << 20);
            let mut stream = match client
                .export_store(connection.request(pb::ExportStoreRequest {}))
                .await
            {
                Ok(s) => s.into_inner(),
                Err(status) => return Ok(exit_code(&status)),
            };
            loop {
                match stream.message().await {
                    Ok(Some(piece)) => std::io::Write::write_all(&mut writer, &piece.data)?,
                    Ok(None) => return Ok(0),
                    Err(status) => return Ok(exit_code(&status)),
                }
            }
        })?,
    };
    let finished = std::io::Write::flush(&mut writer)
        .and_then(|()| writer.get_ref().sync_all())
        .and_then(|()| {
            if code == 0 {
                std::fs::rename(&partial, out)
            } else {
                Ok(())
            }
        });
    if code != 0 {
        let _ = std::fs::remove_file(&partial);
        return Ok(code);
    }
    if let Err(e) = finished {
        eprintln!("--out {}: {e}", out.display());
        let _ = std::fs::remove_file(&partial);
        return Ok(1);
    }
    let summary = last_line(out)?;
    if !summary.starts_with("{\"end\":") {
        // A stream that ended without its end line is not a backup.
        eprintln!(
            "--out {}: the export ended before the backup's end line; nothing kept",
            out.display()
        );
        let _ = std::fs::remove_file(out);
        return Ok(1);
    }
    println!("exported to {} ({summary})", out.display());
    Ok(0)
}

/// The backup's end line, for the summary printed after an export.
fn last_line(path: &std::path::Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(256)))?;
    let mut tail = String::new();
    file.read_to_string(&mut tail)?;
    Ok(tail
        .trim_end()
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_environment_come_before_the_profile_and_a_named_profile_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("profiles.toml");
        let token_file = dir.path().join("staging.token");
        std::fs::write(&token_file, "t-from-file\n").unwrap();
        std::fs::write(
            &file,
            format!(
                "[default]\naddr = \"http://10.0.0.1:50051\"\ntoken = \"t-default\"\n\n[staging]\naddr = \"https://staging:50051\"\ntoken_file = \"{}\"\n",
                token_file.display()
            ),
        )
        .unwrap();
        let got = |addr: Option<&str>, token: Option<&str>, profile: Option<&str>| {
            resolve(
                addr.map(String::from),
                token.map(String::from),
                profile.map(String::from),
                Some(file.clone()),
            )
        };
        let r = |addr: &str, token: &str| {
            Ok(Resolved {
                addr: addr.into(),
                token: Some(token.into()),
            })
        };
        assert_eq!(
            got(None, None, None),
            r("http://10.0.0.1:50051", "t-default")
        );
        assert_eq!(
            got(None, None, Some("staging")),
            r("https://staging:50051", "t-from-file")
        );
        assert_eq!(
            got(Some("http://x:1"), Some("t"), Some("staging")),
            r("http://x:1", "t")
        );
        let e = got(None, None, Some("prod")).unwrap_err();
        assert!(
            e.ends_with("no profile `prod` (it has: default, staging)"),
            "{e}"
        );
        // Without a file, the defaults; unless a profile was asked for by name.
        let missing = Some(dir.path().join("none.toml"));
        assert_eq!(
            resolve(None, None, None, missing.clone()),
            Ok(Resolved {
                addr: "http://127.0.0.1:50051".into(),
                token: None
            })
        );
        assert!(resolve(None, None, Some("staging".into()), missing).is_err());
        std::fs::write(&file, "[default]\nadress = \"x\"\n").unwrap();
        let e = got(None, None, None).unwrap_err();
        assert!(e.contains("unknown field `adress`"), "{e}");
    }
}
