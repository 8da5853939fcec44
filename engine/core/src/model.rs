//! Domain types shared by the whole engine: ids, actors, instances, history entries and the
//! outcome of a command. These are what embedders see; storage records (`store::records`) and
//! wire types (the gRPC crate) convert to and from them explicitly.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Identifies one workflow instance. Version-7 UUIDs, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(pub Uuid);

impl InstanceId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        InstanceId(Uuid::now_v7())
    }
}

impl Default for InstanceId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for InstanceId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(InstanceId)
    }
}

/// The role names the engine itself gives meaning to; every other role is the definitions'.
pub mod roles {
    /// Timers, job completions and integrations act as `system`.
    pub const SYSTEM: &str = "system";
    /// Resolves incidents and deploys rule sets.
    pub const ADMIN: &str = "admin";
    /// Deploys, activates, validates and dry-runs rule sets.
    pub const ANALYST: &str = "analyst";
}

/// Who sends a command. Authentication happens outside the core (the gRPC layer maps
/// credentials to an actor); the core only checks the roles against the definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Stable id of the user or system (e.g. `"u-4711"`, `"system:timers"`).
    pub id: String,
    /// Roles held by the actor (e.g. `sales_rep`, `finance`).
    pub roles: Vec<String>,
}

impl Actor {
    /// An actor with the given id and roles.
    pub fn new(id: impl Into<String>, roles: &[&str]) -> Self {
        Actor {
            id: id.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// Whether the actor holds at least one of `allowed`.
    pub fn has_any_role(&self, allowed: &[String]) -> bool {
        self.roles.iter().any(|r| allowed.contains(r))
    }
}

/// A definition name and the version an instance is pinned to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DefinitionRef {
    /// Definition name, e.g. `sales_order`.
    pub name: String,
    /// Definition version, starting at 1.
    pub version: u32,
}

impl fmt::Display for DefinitionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}", self.name, self.version)
    }
}

/// Lifecycle of an instance, independent of the definition's own state names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InstanceStatus {
    /// In a non-terminal state: commands may move it on.
    Active,
    /// Reached a terminal state of its definition.
    Completed,
    /// Cancelled by an operator through [`crate::Engine::cancel`].
    Cancelled,
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstanceStatus::Active => "active",
            InstanceStatus::Completed => "completed",
            InstanceStatus::Cancelled => "cancelled",
        })
    }
}

/// One running (or finished) workflow: a quote, an order, a return…
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Its id.
    pub id: InstanceId,
    /// The definition and version it is pinned to for its whole life.
    pub definition: DefinitionRef,
    /// The host's key for it (quote number, order reference…); not unique.
    pub business_key: String,
    /// Current state name of its definition.
    pub state: String,
    /// Active, completed or cancelled.
    pub status: InstanceStatus,
    /// Business data, always a JSON object. Money is kept as decimal strings.
    pub data: Value,
    /// Starts at 1 and grows by one with every committed change.
    pub version: u64,
    /// The instance whose transition started this one, if any.
    pub parent: Option<InstanceId>,
    /// The id of the actor who started it (for one started by another instance's command,
    /// that command's actor). Commands marked `owner_only` are for the owner alone, and for
    /// the definition's `owner_roles`. Instances written before owners existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Timers set by its current state, not yet fired.
    #[serde(default)]
    pub timers: Vec<OpenTimer>,
    /// The rule-set version active when it started (engines running on rule sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_set: Option<u32>,
    /// Timers whose command failed, taken out of `timers` until an admin retries or cancels
    /// them ([`crate::Engine::resolve_timer_incident`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incidents: Vec<TimerIncident>,
    /// When it was started.
    pub created_at: DateTime<Utc>,
    /// When its last change was committed.
    pub updated_at: DateTime<Utc>,
}

impl Instance {
    /// A new instance of `definition` in its initial state, version 1, owned by `owner`,
    /// without timers, parent or rule set (the caller adds those it has).
    pub(crate) fn new_started(
        definition: &crate::definition::Definition,
        business_key: &str,
        data: Value,
        owner: &Actor,
        now: DateTime<Utc>,
    ) -> Instance {
        Instance {
            id: InstanceId::new(),
            definition: DefinitionRef {
                name: definition.name.clone(),
                version: definition.version,
            },
            business_key: business_key.to_string(),
            state: definition.initial.clone(),
            status: InstanceStatus::Active,
            data: if data.is_null() {
                Value::Object(Default::default())
            } else {
                data
            },
            version: 1,
            parent: None,
            owner: Some(owner.id.clone()),
            timers: Vec::new(),
            rule_set: None,
            incidents: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// Moves an active instance to `state` (completed if `terminal`), as version + 1.
    pub(crate) fn transition(&mut self, state: &str, terminal: bool, now: DateTime<Utc>) {
        assert_eq!(
            self.status,
            InstanceStatus::Active,
            "instance {} moved while {}",
            self.id,
            self.status
        );
        self.state = state.to_string();
        if terminal {
            self.status = InstanceStatus::Completed;
        }
        self.version += 1;
        self.updated_at = now;
    }

    /// Cancels an active instance, keeping its state; its timers go.
    pub(crate) fn cancel(&mut self, now: DateTime<Utc>) {
        assert_eq!(
            self.status,
            InstanceStatus::Active,
            "instance {} cancelled while {}",
            self.id,
            self.status
        );
        self.status = InstanceStatus::Cancelled;
        self.timers.clear();
        self.version += 1;
        self.updated_at = now;
    }

    /// Merges `changes` into the data of a linked instance last seen at version `seen`; its
    /// state does not change.
    pub(crate) fn update_data(&mut self, changes: &Value, seen: u64, now: DateTime<Utc>) {
        crate::patch::apply_merge_patch(&mut self.data, changes);
        self.version = seen + 1;
        self.updated_at = now;
    }
}

/// A timer waiting to fire on an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTimer {
    /// The timer's name in its state's declaration.
    pub name: String,
    /// The command it sends.
    pub command: String,
    /// When it falls due.
    pub due: DateTime<Utc>,
}

/// A timer whose command failed when it fell due: it no longer fires until resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerIncident {
    /// The timer as it was open.
    pub timer: OpenTimer,
    /// Why its command failed (with the rule's file:line:col when a rule failed).
    pub error: String,
    /// When the incident was raised.
    pub raised_at: DateTime<Utc>,
}

/// A timer that is due, as found in the store's due index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueTimer {
    /// The instance it belongs to.
    pub instance: InstanceId,
    /// The timer.
    pub timer: OpenTimer,
}

/// What kind of change a history entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
#[non_exhaustive]
pub enum ChangeKind {
    /// The instance was started (by a caller, or by a linked instance's transition).
    Started {
        /// The instance whose transition started it, if any.
        by: Option<InstanceId>,
    },
    /// A command was applied.
    Command,
    /// The instance was cancelled.
    Cancelled,
    /// A linked instance's transition updated this instance's data.
    LinkedUpdate {
        /// The instance whose transition made the change.
        by: InstanceId,
    },
    /// A linked instance's transition sent this instance a command (`effects.send`).
    LinkedCommand {
        /// The instance whose transition sent it.
        by: InstanceId,
    },
    /// A timer's command failed; the timer became an incident on the instance.
    TimerIncidentRaised {
        /// The timer's name.
        timer: String,
    },
    /// An admin retried or cancelled a timer incident.
    TimerIncidentResolved {
        /// The timer's name.
        timer: String,
    },
}

/// One committed change of one instance. Entry `n` records how version `n` came to be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The instance changed.
    pub instance: InstanceId,
    /// The version this change produced.
    pub version: u64,
    /// Commit time (engine clock).
    pub at: DateTime<Utc>,
    /// Who caused it.
    pub actor: Actor,
    /// The caller's request id, when the change came from a request.
    pub request_id: Option<String>,
    /// What kind of change.
    pub kind: ChangeKind,
    /// Command name (`None` for a start, a cancel or a linked update).
    pub command: Option<String>,
    /// The payload as sent.
    pub payload: Value,
    /// State before (`None` for a start).
    pub from_state: Option<String>,
    /// State after.
    pub to_state: String,
    /// The decider that decided, if any.
    pub decider: Option<String>,
    /// The human reason given by the decider (or the engine).
    pub reason: String,
    /// The data changes applied, as a JSON merge patch (RFC 7386).
    pub changes: Value,
    /// Which rule decided and from what: rule-set version, script, function, reference-data
    /// version, the full inputs and the outputs (`None` for Rust deciders and fixed moves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

impl HistoryEntry {
    /// The entry that records how `instance` (version 1) was started with `payload`.
    pub(crate) fn started(
        instance: &Instance,
        actor: &Actor,
        request_id: Option<&str>,
        payload: &Value,
        reason: String,
        by: Option<InstanceId>,
    ) -> HistoryEntry {
        HistoryEntry {
            instance: instance.id,
            version: 1,
            at: instance.created_at,
            actor: actor.clone(),
            request_id: request_id.map(str::to_string),
            kind: ChangeKind::Started { by },
            command: None,
            payload: payload.clone(),
            from_state: None,
            to_state: instance.state.clone(),
            decider: None,
            reason,
            changes: instance.data.clone(),
            provenance: None,
        }
    }
}

/// Which rule decided, and from what: enough to answer "why" and to replay the decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Provenance {
    /// The rule set's content version (a digest of every file).
    pub rule_set: String,
    /// The script file, relative to the rule set's root.
    pub script: String,
    /// The function that decided.
    pub function: String,
    /// The version of the reference data it read (a digest of the data files).
    pub reference_data: String,
    /// Everything the function was given.
    pub inputs: ProvenanceInputs,
    /// Everything it returned.
    pub outputs: Value,
}

impl Provenance {
    /// The decider's name, `script::function` (the script file's stem).
    pub fn decider(&self) -> String {
        let stem = std::path::Path::new(&self.script)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{stem}::{}", self.function)
    }
}

/// The inputs a rule function was given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProvenanceInputs {
    /// The instance map.
    pub instance: Value,
    /// The payload.
    pub payload: Value,
    /// The actor map (`id`, `roles`).
    pub actor: Value,
    /// The engine clock's time.
    pub now: DateTime<Utc>,
    /// The counter values the decision read (a backtest replays them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<crate::decider::CounterRead>,
    /// The balance values the decision read (a backtest replays them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub balances: Vec<crate::decider::BalanceRead>,
}

/// What a request acted on; kept with its request record, so that a retry is matched to the
/// request it repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestTarget {
    /// Started an instance of `definition`.
    Start {
        /// The definition name.
        definition: String,
    },
    /// Sent `command` to `instance`.
    Command {
        /// The instance.
        instance: InstanceId,
        /// The command.
        command: String,
    },
    /// Cancelled `instance`.
    Cancel {
        /// The instance.
        instance: InstanceId,
    },
}

impl RequestTarget {
    /// The name the metrics count the request under (`$start`, `$cancel` or the command).
    pub fn metric_label(&self) -> &str {
        match self {
            RequestTarget::Start { .. } => "$start",
            RequestTarget::Command { command, .. } => command,
            RequestTarget::Cancel { .. } => "$cancel",
        }
    }
}

impl fmt::Display for RequestTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestTarget::Start { definition } => write!(f, "`$start` on start:{definition}"),
            RequestTarget::Command { instance, command } => {
                write!(f, "`{command}` on instance:{instance}")
            }
            RequestTarget::Cancel { instance } => write!(f, "`$cancel` on instance:{instance}"),
        }
    }
}

/// A number drawn from a named counter in a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterValue {
    /// Counter name as declared by the definition (e.g. `order_number`).
    pub counter: String,
    /// The key within the counter (e.g. a year, a coupon code).
    pub key: String,
    /// The value after the increment.
    pub value: u64,
}

/// What a successful command (or start, or cancel) returns. A retry with the same request id
/// returns this exact value again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandOutcome {
    /// The instance the command acted on (or started).
    pub instance: InstanceId,
    /// Its version after the commit.
    pub version: u64,
    /// Its state after the commit.
    pub state: String,
    /// Its status after the commit.
    pub status: InstanceStatus,
    /// The decision's reason.
    pub reason: String,
    /// Linked instances this commit started.
    pub started: Vec<InstanceId>,
    /// Counter values drawn in this commit.
    pub counters: Vec<CounterValue>,
}

impl CommandOutcome {
    /// The outcome of a change that left the instance as `after`.
    pub fn of(after: &Instance, reason: String) -> CommandOutcome {
        CommandOutcome {
            instance: after.id,
            version: after.version,
            state: after.state.clone(),
            status: after.status,
            reason,
            started: Vec::new(),
            counters: Vec::new(),
        }
    }
}
