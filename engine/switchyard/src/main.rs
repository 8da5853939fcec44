//! `switchyard`: the command-line tool (and, with the gRPC issue, the server).
//!
//! Today it offers offline inspection of a stopped store: sled allows one process per
//! store, so operators read a store with this tool only while no engine has it open.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use switchyard_core::store::{ListQuery, SledConfig, SledStore, Store};
use switchyard_core::InstanceId;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Switchyard workflow engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        Command::Inspect { store, what } => inspect(&store, what),
    }
}

fn inspect(path: &std::path::Path, what: Inspect) -> Result<()> {
    if !path.join("db").exists() {
        anyhow::bail!(
            "{}: no Switchyard store here (no `db` file)",
            path.display()
        );
    }
    let store = SledStore::open(&SledConfig::new(path)).with_context(|| {
        format!(
            "opening the store at {} (is an engine still running on it?)",
            path.display()
        )
    })?;
    match what {
        Inspect::List {
            definition,
            state,
            business_key,
            limit,
        } => {
            let mut after = None;
            let mut printed = 0;
            while printed < limit {
                let page = store.list(&ListQuery {
                    definition: definition.clone(),
                    state: state.clone(),
                    business_key: business_key.clone(),
                    page_size: (limit - printed).min(1000),
                    after,
                })?;
                for instance in &page.items {
                    println!("{}", serde_json::to_string(instance)?);
                }
                printed += page.items.len();
                match (page.items.last(), page.next_page_token) {
                    (Some(last), Some(_)) => after = Some(last.id),
                    _ => break,
                }
            }
        }
        Inspect::Get { id } => {
            let instance = store
                .instance(id)?
                .with_context(|| format!("instance {id} does not exist"))?;
            println!("{}", serde_json::to_string_pretty(&instance)?);
        }
        Inspect::History { id } => {
            store
                .instance(id)?
                .with_context(|| format!("instance {id} does not exist"))?;
            let mut after = 0;
            loop {
                let entries = store.history(id, after, 1000)?;
                for e in &entries {
                    println!("{}", serde_json::to_string(e)?);
                }
                match entries.last() {
                    Some(last) => after = last.version,
                    None => break,
                }
            }
        }
    }
    Ok(())
}
