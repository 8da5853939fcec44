//! `switchyard`: the server (`serve`) and the command-line tool.
//!
//! `serve` runs the gRPC server (see `switchyard_grpc`). The other commands work offline:
//! sled allows one process per store, so `inspect` and `rules deploy|activate|versions|
//! backtest` read or change a store only while no server has it open.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use switchyard_core::rules::{testing, DecisionInput};
use switchyard_core::{
    roles, Actor, CommandError, DeciderRegistry, DefinitionSet, Durability, Engine, EngineConfig,
    InstanceId, ListRequest, RuleLimits, RuleSet, SledConfig, StoreConfig,
};

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Switchyard workflow engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

mod bulk;
mod client;
mod demo;
mod serve;
mod worker;

/// See Cargo.toml: measured faster than the system allocator for the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server until SIGTERM or SIGINT (graceful: drains in-flight calls and
    /// flushes the store before exiting).
    Serve(serve::ServeArgs),
    /// Make bearer tokens: entries for the server's configuration (`new`, `hash`), or tokens
    /// kept in a stopped store (`create`, `list`, `rotate`, `revoke`).
    Token {
        #[command(subcommand)]
        what: serve::Token,
    },
    /// Work on a rule set (definitions, Rhai scripts, reference data, tests).
    Rules {
        #[command(subcommand)]
        what: Rules,
    },
    /// The engine clock of a running server; `advance` moves a test server's manual clock
    /// (`serve --clock manual`) forward and fires the timers due meanwhile.
    Clock {
        #[command(flatten)]
        connection: client::Connection,
        #[command(subcommand)]
        what: client::ClockCommand,
    },
    /// Start, drive and look at instances on a running server.
    Instance {
        #[command(flatten)]
        connection: client::Connection,
        /// text for people, json for scripts (one object per line).
        #[arg(long, value_enum, default_value = "text", global = true)]
        output: client::Output,
        #[command(subcommand)]
        what: client::InstanceCommand,
    },
    /// Validate, deploy, activate and list rule-set versions on a running server (the offline
    /// `rules deploy|activate|versions --store` work on a stopped store).
    RuleSet {
        #[command(flatten)]
        connection: client::Connection,
        /// text for people, json for scripts (one object per line).
        #[arg(long, value_enum, default_value = "text", global = true)]
        output: client::Output,
        #[command(subcommand)]
        what: client::RuleSetCommand,
    },
    /// Tail a running server's event feed after an offset: stored events, then live ones.
    Feed {
        #[command(flatten)]
        connection: client::Connection,
        #[arg(long, value_enum, default_value = "text")]
        output: client::Output,
        /// Deliver events after this offset (0: from the start).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Stop once the stored events are printed, instead of following live ones.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Answer a running server's jobs from an answer file (JSON keyed by job type: a result
    /// template filled from the job's payload, or a failure) — a worker for trying workflows;
    /// see `switchyard worker --help` and the README. Needs a token with the `system` role.
    Worker {
        #[command(flatten)]
        connection: client::Connection,
        #[arg(long, value_enum, default_value = "text")]
        output: client::Output,
        /// The answer file.
        #[arg(long)]
        answers: PathBuf,
        /// The worker's name, shown on the jobs it leases.
        #[arg(long, default_value = "cli-worker")]
        name: String,
        /// Stop once no job is waiting, instead of polling until interrupted.
        #[arg(long)]
        once: bool,
    },
    /// Back a whole store up to a file (docs/backup.md): from a running server over gRPC (an
    /// admin token; commits go on meanwhile), or with --store from a stopped store on disk.
    Export {
        #[command(flatten)]
        connection: client::Connection,
        /// The backup file to write; refused if it exists. Written beside it as
        /// `<file>.partial` and renamed only once complete.
        #[arg(long)]
        out: PathBuf,
        /// Export this stopped store (a server's --data-dir) instead of asking a server.
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Restore a backup file into a new, empty store directory; then `serve --data-dir` it.
    Import {
        /// The backup file (from `switchyard export`).
        #[arg(long = "in")]
        input: PathBuf,
        /// The store directory to create (refused unless it is new or empty).
        #[arg(long)]
        store: PathBuf,
    },
    /// Read a stopped store: list instances, show one, print its history.
    Inspect {
        /// The store directory.
        #[arg(long)]
        store: PathBuf,
        #[command(subcommand)]
        what: Inspect,
    },
}

#[derive(Subcommand)]
enum Rules {
    /// Compile every script, load definitions against them, parse tests; print every
    /// problem as file:line:col: message. Exits 1 on any problem.
    Check {
        /// The rules directory.
        dir: PathBuf,
    },
    /// Run the example-based tests shipped in DIR/tests. Exits 1 on any failure.
    Test {
        /// The rules directory.
        dir: PathBuf,
    },
    /// Deploy DIR into a stopped store as a new rule-set version and activate it — only if it
    /// compiles, validates, passes its tests and serves every live instance. On a store without
    /// versions, DIR becomes version 1.
    Deploy {
        /// The rules directory.
        dir: PathBuf,
        /// The store directory (stopped: sled allows one process per store).
        #[arg(long)]
        store: PathBuf,
        /// Who deploys (recorded with the version).
        #[arg(long = "as", default_value = "analyst")]
        actor: String,
    },
    /// Activate an already deployed version of a stopped store (a rollback, or forward again).
    Activate {
        /// The version number, as `versions` lists it.
        number: u32,
        /// The store directory.
        #[arg(long)]
        store: PathBuf,
        /// Who activates it.
        #[arg(long = "as", default_value = "analyst")]
        actor: String,
    },
    /// List the rule-set versions deployed in a stopped store.
    Versions {
        /// The store directory.
        #[arg(long)]
        store: PathBuf,
    },
    /// Replay the rule decisions recorded in a stopped store against the rule set in DIR and
    /// report which would now come out differently, and how. Exits 0 either way (2 on error).
    Backtest {
        /// The candidate rules directory.
        dir: PathBuf,
        /// The store directory (stopped: sled allows one process per store).
        #[arg(long)]
        store: PathBuf,
        /// Only decisions recorded at or after this time (RFC 3339, or a date meaning its
        /// start in UTC); all when absent.
        #[arg(long, value_parser = parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Dry-run one decider on an input file: {"instance": {...}, "payload": {...},
    /// "actor": {...}, "now": "RFC 3339"}; prints the decision, its reason and the time taken.
    Eval {
        /// The rules directory.
        dir: PathBuf,
        /// The decider, script::function.
        function: String,
        /// The input JSON file.
        #[arg(long)]
        input: PathBuf,
    },
}

#[derive(Subcommand)]
enum Inspect {
    /// List instances, oldest first, as JSON lines.
    List {
        /// Only this definition.
        #[arg(long)]
        definition: Option<String>,
        /// Only this state (needs --definition).
        #[arg(long, requires = "definition")]
        state: Option<String>,
        /// Only this business key (needs --definition).
        #[arg(long, requires = "definition")]
        business_key: Option<String>,
        /// Most instances to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print one instance as JSON.
    Get {
        /// Instance id.
        id: InstanceId,
    },
    /// Print an instance's history as JSON lines.
    History {
        /// Instance id.
        id: InstanceId,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Token { what } => serve::token(what),
        Command::Inspect { store, what } => inspect(&store, what),
        Command::Instance {
            connection,
            output,
            what,
        } => {
            let code = client::instance(connection, output, what)?;
            std::process::exit(code);
        }
        Command::RuleSet {
            connection,
            output,
            what,
        } => {
            let code = client::rule_set(connection, output, what)?;
            std::process::exit(code);
        }
        Command::Feed {
            connection,
            output,
            after,
            until_caught_up,
        } => {
            let code = client::feed_tail(connection, output, after, until_caught_up)?;
            std::process::exit(code);
        }
        Command::Clock { connection, what } => {
            let code = client::clock(connection, what)?;
            std::process::exit(code);
        }
        Command::Rules { what } => {
            let code = rules(what)?;
            std::process::exit(code);
        }
        Command::Export {
            connection,
            out,
            store,
        } => {
            let code = client::export(&connection, store.as_deref(), &out)?;
            std::process::exit(code);
        }
        Command::Worker {
            connection,
            output,
            answers,
            name,
            once,
        } => {
            let code = worker::run(connection, output, &answers, name, once)?;
            std::process::exit(code);
        }
        Command::Import { input, store } => {
            let code = import(&input, &store);
            std::process::exit(code);
        }
    }
}

/// `switchyard import`: restores `input` into a new store at `store`; returns the exit code.
fn import(input: &Path, store: &Path) -> i32 {
    let file = match std::fs::File::open(input) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("--in {}: {e}", input.display());
            return 2;
        }
    };
    // A directory holding other files is not a store: never write sled's files among them.
    if !store.join("db").exists()
        && std::fs::read_dir(store).is_ok_and(|mut entries| entries.next().is_some())
    {
        eprintln!(
            "--store {}: the directory is not empty and holds no store; a backup is restored only into a new, empty store",
            store.display()
        );
        return 1;
    }
    let mut reader = std::io::BufReader::new(file);
    match switchyard_core::import_into(&SledConfig::new(store), &mut reader) {
        Ok(summary) => {
            println!(
                "restored {} records into {} (feed head {})",
                summary.lines,
                store.display(),
                summary.feed_head
            );
            0
        }
        Err(e @ switchyard_core::StoreError::BadBackup { .. }) => {
            eprintln!("{}: {e}", input.display());
            2
        }
        Err(e) => {
            eprintln!("import into {}: {e}", store.display());
            1
        }
    }
}

fn load_rules(dir: &std::path::Path) -> Result<RuleSet, i32> {
    RuleSet::load(dir, DeciderRegistry::new(), RuleLimits::default()).map_err(|errors| {
        // Problems name files relative to the rule set; on a terminal, the directory in front
        // makes them clickable.
        for e in &errors.0 {
            if e.file.is_empty() || Path::new(&e.file).starts_with(dir) {
                eprintln!("{e}");
            } else {
                eprintln!("{}/{e}", dir.display());
            }
        }
        eprintln!("{} problem(s) in {}", errors.0.len(), dir.display());
        1
    })
}

/// Runs a `rules` subcommand; returns the exit code.
fn rules(what: Rules) -> Result<i32> {
    match what {
        Rules::Check { dir } => Ok(match load_rules(&dir) {
            Ok(rules) => {
                println!(
                    "{}: rule set {} is valid: {} definition(s), {} decider(s), {} test(s)",
                    dir.display(),
                    rules.version,
                    rules.definitions.iter().count(),
                    rules.deciders.names().count(),
                    rules.tests.len()
                );
                0
            }
            Err(code) => code,
        }),
        Rules::Test { dir } => {
            let rules = match load_rules(&dir) {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            let outcomes = testing::run(&rules);
            let failed = outcomes.iter().filter(|o| !o.passed).count();
            for o in &outcomes {
                if o.passed {
                    println!("ok   {}", o.title);
                } else {
                    println!("FAIL {}\n{}", o.title, o.report);
                }
            }
            println!("{} passed, {} failed", outcomes.len() - failed, failed);
            Ok(if failed == 0 { 0 } else { 1 })
        }
        Rules::Deploy { dir, store, actor } => {
            let target = dir.clone();
            let actor = Actor::new(actor, &[roles::ANALYST]);
            versioned(&store, &dir, &actor.clone(), |engine| async move {
                let info = engine.deploy_rules(&target, &actor).await?;
                println!("rule set #{} ({}) is active", info.number, info.version);
                Ok(())
            })
        }
        Rules::Activate {
            number,
            store,
            actor,
        } => versioned(
            &store,
            Path::new("."),
            &system_first_start(),
            |engine| async move {
                let info = engine
                    .activate_rules(number, &Actor::new(actor, &[roles::ANALYST]))
                    .await?;
                println!("rule set #{} ({}) is active", info.number, info.version);
                Ok(())
            },
        ),
        Rules::Versions { store } => offline(&store, |engine| async move {
            for r in engine.rule_sets()? {
                println!(
                    "#{:<4} {} deployed {} by {}{}{}",
                    r.number,
                    r.version,
                    r.deployed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    r.deployed_by,
                    match (r.activated_at, &r.activated_by) {
                        (Some(at), Some(by)) => format!(
                            "; last activated {} by {by}",
                            at.format("%Y-%m-%d %H:%M:%S UTC")
                        ),
                        _ => String::new(),
                    },
                    if r.active { "  (active)" } else { "" }
                );
            }
            Ok(0)
        }),
        Rules::Backtest { dir, store, since } => {
            let rules = match load_rules(&dir) {
                Ok(r) => r,
                Err(_) => return Ok(2),
            };
            offline(&store, |engine| async move {
                let report = engine.backtest(&rules, since)?;
                print_backtest(&report, &rules.version);
                Ok(0)
            })
        }
        Rules::Eval {
            dir,
            function,
            input,
        } => {
            let rules = match load_rules(&dir) {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("reading {}", input.display()))?;
            let json: serde_json::Value = switchyard_core::json::from_str(&text)
                .with_context(|| format!("{}: not JSON", input.display()))?;
            let field =
                |name: &str, default: serde_json::Value| json.get(name).cloned().unwrap_or(default);
            let now = match json.get("now").and_then(|v| v.as_str()) {
                Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                    .with_context(|| {
                        format!("{}: field `now`: not an RFC 3339 time", input.display())
                    })?
                    .with_timezone(&chrono::Utc),
                None => chrono::Utc::now(),
            };
            let counters = serde_json::from_value(field("counters", serde_json::json!({})))
                .with_context(|| {
                    format!(
                        "{}: field `counters`: expected {{ \"counter\": {{ \"key\": value }} }}",
                        input.display()
                    )
                })?;
            let balances: std::collections::BTreeMap<
                String,
                std::collections::BTreeMap<String, rust_decimal::Decimal>,
            > = serde_json::from_value(field("balances", serde_json::json!({})))
                .with_context(|| {
                    format!(
                        "{}: field `balances`: expected {{ \"balance\": {{ \"key\": \"decimal string\" }} }}",
                        input.display()
                    )
                })?;
            let input = DecisionInput {
                instance: field("instance", serde_json::json!({})),
                payload: field("payload", serde_json::json!({})),
                actor: field("actor", serde_json::json!({ "id": "eval", "roles": [] })),
                now,
                counters: switchyard_core::Counters::given(counters),
                balances: switchyard_core::Balances::given(balances),
            };
            let started = std::time::Instant::now();
            let result = rules.evaluate(&function, &input);
            let took = started.elapsed();
            match result {
                Ok((decision, outputs)) => {
                    println!("{}", serde_json::to_string_pretty(&outputs)?);
                    println!("state:  {}", decision.next_state);
                    println!("reason: {}", decision.reason);
                    println!("time:   {took:?}");
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{}", e.message());
                    eprintln!("time:   {took:?}");
                    Ok(1)
                }
            }
        }
    }
}

fn system_first_start() -> Actor {
    Actor::new("system:first-start", &[roles::ADMIN])
}

/// Opens an engine on the stopped store at `store` with versioned rule sets (deploying
/// `first` as `first_actor` if the store has none), runs `work`, and shuts down. Returns the
/// exit code.
fn versioned<F, Fut>(store: &Path, first: &Path, first_actor: &Actor, work: F) -> Result<i32>
where
    F: FnOnce(Engine) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), CommandError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut config = SledConfig::new(store);
        config.durability = Durability::Fsync;
        let mut config = EngineConfig::new(StoreConfig::Sled(config));
        // Offline: deploy or activate, nothing else (no timer fires, nothing is purged).
        config.background_tasks = false;
        let engine = Engine::open_with_rules_as(
            config,
            first,
            DeciderRegistry::new(),
            RuleLimits::default(),
            first_actor,
        )
        .await
        .with_context(|| {
            format!(
                "opening the store at {} (is an engine still running on it?)",
                store.display()
            )
        })?;
        let result = work(engine.clone()).await;
        engine.shutdown().await;
        match result {
            Ok(()) => Ok(0),
            Err(e) => {
                eprintln!("{e}");
                Ok(1)
            }
        }
    })
}

/// `--since`: an RFC 3339 time, or a date meaning its start (UTC).
fn parse_since(text: &str) -> std::result::Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        .map_err(|_| format!("`{text}` is neither an RFC 3339 time nor a date (2026-03-01)"))
}

fn print_backtest(report: &switchyard_core::BacktestReport, version: &str) {
    for c in &report.changed {
        println!(
            "{} {} v{} {} (at {}){}:",
            c.instance,
            c.business_key,
            c.version,
            c.decider,
            c.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            if c.outcome_changed {
                ""
            } else {
                ", reason only"
            }
        );
        for d in &c.differences {
            println!("    {d}");
        }
    }
    for s in &report.skipped {
        println!("skipped: {s}");
    }
    match report.covered {
        Some((from, to)) => println!(
            "covered: every decision recorded from {} to {} in the history of {} instance(s)",
            from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            report.instances
        ),
        None => println!(
            "covered: no decision in the history of {} instance(s)",
            report.instances
        ),
    }
    let decided = report.changed.iter().filter(|c| c.outcome_changed).count();
    println!(
        "{} decision(s) replayed against rule set {}: {} would decide differently, {} only explain differently, {} unchanged, {} skipped",
        report.replayed,
        version,
        decided,
        report.changed.len() - decided,
        report.replayed - report.changed.len(),
        report.skipped.len()
    );
}

/// Opens an engine on the stopped store at `path` for reading — no rules, no background work
/// (no timer fires, nothing is purged) — runs `work`, and shuts down. Returns the exit code.
fn offline<F, Fut>(path: &Path, work: F) -> Result<i32>
where
    F: FnOnce(Engine) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<i32, CommandError>>,
{
    if !path.join("db").exists() {
        anyhow::bail!(
            "{}: no Switchyard store here (no `db` file)",
            path.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut config = EngineConfig::new(StoreConfig::Sled(SledConfig::new(path)));
        config.background_tasks = false;
        let engine = Engine::open(config, DefinitionSet::default(), DeciderRegistry::new())
            .await
            .with_context(|| {
                format!(
                    "opening the store at {} (is an engine still running on it?)",
                    path.display()
                )
            })?;
        let result = work(engine.clone()).await;
        engine.shutdown().await;
        Ok(result?)
    })
}

fn inspect(path: &std::path::Path, what: Inspect) -> Result<()> {
    offline(path, |engine| async move {
        match what {
            Inspect::List {
                definition,
                state,
                business_key,
                limit,
            } => {
                let mut token: Option<String> = None;
                let mut printed = 0;
                while printed < limit {
                    let mut request = ListRequest::new().page_size((limit - printed).min(1000));
                    request.definition = definition.clone();
                    request.state = state.clone();
                    request.business_key = business_key.clone();
                    request.page_token = token.take();
                    let page = engine.list(request).await?;
                    for instance in &page.items {
                        println!("{}", json_line(instance));
                    }
                    printed += page.items.len();
                    match page.next_page_token {
                        Some(next) if !page.items.is_empty() => token = Some(next),
                        _ => break,
                    }
                }
            }
            Inspect::Get { id } => {
                let instance = engine.get(id).await?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&instance).expect("instances serialize")
                );
            }
            Inspect::History { id } => {
                let mut token: Option<String> = None;
                loop {
                    let page = engine.history_page(id, 1000, token.as_deref()).await?;
                    for e in &page.items {
                        println!("{}", json_line(e));
                    }
                    match page.next_page_token {
                        Some(next) => token = Some(next),
                        None => break,
                    }
                }
            }
        }
        Ok(0)
    })
    .map(|_| ())
}

fn json_line(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("domain values serialize")
}
