//! # switchyard-core
//!
//! The embeddable core of Switchyard, a durable workflow engine for lead-to-cash.
//!
//! - [`definition`]: named, versioned state machines loaded from TOML files, checked at load.
//! - [`decider`]: the boundary where business logic decides a command's outcome.
//! - [`Engine`]: starts instances, sends commands, cancels, lists and reads history; every
//!   change is one atomic, group-committed, flushed write.
//! - [`store`]: the storage contract, with sled (durable) and in-memory implementations.
//!
//! This crate depends on no gRPC, HTTP or e-mail crate and never installs a tracing
//! subscriber. It runs inside the host's tokio runtime (plus one committer thread).
//!
//! ```
//! use switchyard_core::*;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let source = r#"
//! name = "ticket"
//! version = 1
//! initial = "open"
//! [start]
//! roles = ["agent"]
//! [states]
//! open = {}
//! closed = { terminal = true }
//! [commands.close]
//! from = ["open"]
//! to = ["closed"]
//! roles = ["agent"]
//! "#;
//! let deciders = DeciderRegistry::new();
//! let definitions =
//!     DefinitionSet::from_sources(&[("ticket.toml".into(), source.into())], &deciders).unwrap();
//! let engine = Engine::open(EngineConfig::in_memory(), definitions, deciders).await.unwrap();
//! let agent = Actor::new("u-1", &["agent"]);
//! let started = engine
//!     .start(StartRequest::new("ticket", agent.clone(), "r-1").business_key("T-1"))
//!     .await
//!     .unwrap();
//! let closed = engine
//!     .send(CommandRequest::new(started.instance, "close", agent, "r-2").payload(json!({})))
//!     .await
//!     .unwrap();
//! assert_eq!(closed.state, "closed");
//! assert_eq!(closed.status, InstanceStatus::Completed);
//! engine.shutdown().await;
//! # }
//! ```

#![warn(missing_docs)]

pub mod clock;
mod committer;
pub mod credential;
pub mod decider;
pub mod definition;
mod engine;
mod error;
pub mod feed;
#[cfg(feature = "testing")]
pub mod fuzz;
pub mod job;
pub mod json;
pub mod metrics;
pub mod model;
pub mod notification;
pub mod patch;
pub mod rules;
#[cfg(feature = "testing")]
pub mod store;
#[cfg(not(feature = "testing"))]
mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use credential::Credential;
pub use decider::{
    BalanceRead, Balances, CounterAssign, CounterRead, Counters, DecideError, Decider,
    DeciderRegistry, Decision, DecisionContext, Effect, Ledger, LedgerValue, LinkedTarget,
    SourceLocation,
};
pub use definition::{Definition, DefinitionError, DefinitionErrors, DefinitionSet};
pub use engine::{
    ActivateJobs, CancelRequest, CommandRequest, DryRun, DryRunInput, Engine, EngineConfig,
    FailJob, FeedReader, FeedRequest, IngestOutcome, JobFailure, ListRequest, NewToken,
    ProviderEvent, RuleSetInfo, RulesWatch, RulesWatchStatus, StartRequest, StoreConfig,
    FEED_FILTER_ITEMS_MAX, PROVIDER_EVENT_DEFINITION,
};
pub use error::{clip, CommandError, OpenError, RuleSetProblem};
pub use feed::{EventType, FeedEvent, Subscription};
pub use job::{ActivatedJob, IncidentAction, Job, JobId, JobStatus};
pub use model::{
    roles, Actor, ChangeKind, CommandOutcome, CounterValue, DefinitionRef, DueTimer, HistoryEntry,
    Instance, InstanceId, InstanceStatus, OpenTimer, Provenance, ProvenanceInputs, RequestTarget,
};
pub use rules::backtest::{BacktestReport, ChangedDecision};
pub use rules::{RuleLimits, RuleSet};
pub use store::{
    export_stopped, import_into, BackupSummary, Durability, Page, SledConfig, StoreError,
    StoreHealth, StoreStats, BACKUP_FORMAT,
};
