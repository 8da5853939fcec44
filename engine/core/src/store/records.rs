//! Storage records: what the key-value stores write, kept apart from the domain types.
//!
//! Every value is `[kind tag][format version]` followed by JSON of the record's *stored*
//! shape — a private twin of the domain type, converted explicitly — so renaming a field of
//! a public type (`Instance`, `HistoryEntry`, `Job`, `FeedEvent`, …) can never change the
//! on-disk format silently: the twin would have to change too, and the golden fixtures in
//! `tests/fixtures/records` (decoded by the tests below) would fail.
//!
//! Each kind has its own format version. When a stored shape must change, add the new twin,
//! bump that kind's `FORMAT`, and teach its `decode_older` to read the previous one; never
//! edit a shape in place.
//!
//! A record is checked right before it is written (a failed check is a bug: assertion) and
//! right after it is read (a failed check is corruption: an error naming the key).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::keys::printable;
use super::{RequestRecord, RuleSetActivation, RuleSetRecord, RuleSetRequestRecord, StoreError};
use crate::feed::{EventType, FeedEvent};
use crate::job::{Job, JobId, JobStatus, Lease};
use crate::model::{
    Actor, ChangeKind, CommandOutcome, CounterValue, DefinitionRef, DueTimer, HistoryEntry,
    Instance, InstanceId, InstanceStatus, OpenTimer, Provenance, ProvenanceInputs, RequestTarget,
    TimerIncident,
};

/// A domain value the stores keep, with its stored twin.
pub(crate) trait Record: Sized {
    /// Tells the kinds apart on disk.
    const TAG: u8;
    /// The format this build writes.
    const FORMAT: u8 = 1;
    /// The shape written in `FORMAT`.
    type Stored: Serialize + DeserializeOwned;
    /// The stored twin of this value.
    fn to_stored(&self) -> Self::Stored;
    /// The value back from its stored twin; `Err` says what does not fit.
    fn from_stored(stored: Self::Stored) -> Result<Self, String>;
    /// Checks the value's invariants; `Err` says which one fails.
    fn check(&self) -> Result<(), String>;
    /// Reads a body written in an older format of this kind (`None`: unknown format).
    fn decode_older(_format: u8, _body: &[u8]) -> Option<Result<Self, String>> {
        None
    }
}

pub(crate) fn encode<R: Record>(record: &R) -> Vec<u8> {
    if let Err(e) = record.check() {
        panic!("refusing to write an invalid record: {e}");
    }
    let mut out = vec![R::TAG, R::FORMAT];
    serde_json::to_writer(&mut out, &record.to_stored()).expect("records serialize to JSON");
    out
}

pub(crate) fn decode<R: Record>(key: &[u8], bytes: &[u8]) -> Result<R, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: printable(key),
        message,
    };
    let record = match bytes {
        [tag, format, body @ ..] if *tag == R::TAG && *format == R::FORMAT => {
            let stored: R::Stored =
                serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
            R::from_stored(stored).map_err(corrupt)?
        }
        [tag, format, body @ ..] if *tag == R::TAG => match R::decode_older(*format, body) {
            Some(decoded) => decoded.map_err(corrupt)?,
            None => {
                return Err(corrupt(format!(
                    "record tag {} in format {format}, which this build cannot read (it reads up to {})",
                    *tag as char,
                    R::FORMAT
                )))
            }
        },
        [tag, format, ..] => {
            return Err(corrupt(format!(
                "expected record tag {} format {}, found tag {} format {format}",
                R::TAG as char,
                R::FORMAT,
                *tag as char
            )))
        }
        _ => return Err(corrupt("record shorter than its header".into())),
    };
    record.check().map_err(corrupt)?;
    Ok(record)
}

// ---- shared pieces -------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
pub(crate) struct ActorV1 {
    id: String,
    roles: Vec<String>,
}

impl ActorV1 {
    fn of(a: &Actor) -> Self {
        ActorV1 {
            id: a.id.clone(),
            roles: a.roles.clone(),
        }
    }
    fn into_actor(self) -> Actor {
        Actor {
            id: self.id,
            roles: self.roles,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct DefinitionRefV1 {
    name: String,
    version: u32,
}

#[derive(Serialize, Deserialize, PartialEq)]
pub(crate) struct OpenTimerV1 {
    name: String,
    command: String,
    due: DateTime<Utc>,
}

impl OpenTimerV1 {
    fn of(t: &OpenTimer) -> Self {
        OpenTimerV1 {
            name: t.name.clone(),
            command: t.command.clone(),
            due: t.due,
        }
    }
    fn into_timer(self) -> OpenTimer {
        OpenTimer {
            name: self.name,
            command: self.command,
            due: self.due,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StatusV1 {
    Active,
    Completed,
    Cancelled,
}

impl StatusV1 {
    fn of(s: InstanceStatus) -> Self {
        match s {
            InstanceStatus::Active => StatusV1::Active,
            InstanceStatus::Completed => StatusV1::Completed,
            InstanceStatus::Cancelled => StatusV1::Cancelled,
        }
    }
    fn into_status(self) -> InstanceStatus {
        match self {
            StatusV1::Active => InstanceStatus::Active,
            StatusV1::Completed => InstanceStatus::Completed,
            StatusV1::Cancelled => InstanceStatus::Cancelled,
        }
    }
}

// ---- instances -------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
pub(crate) struct InstanceV1 {
    id: Uuid,
    definition: DefinitionRefV1,
    business_key: String,
    state: String,
    status: StatusV1,
    data: Value,
    version: u64,
    parent: Option<Uuid>,
    /// Added without a new format: records written before have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(default)]
    timers: Vec<OpenTimerV1>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rule_set: Option<u32>,
    /// Added without a new format: records written before have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    incidents: Vec<TimerIncidentV1>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct TimerIncidentV1 {
    timer: OpenTimerV1,
    error: String,
    raised_at: DateTime<Utc>,
}

impl Record for Instance {
    const TAG: u8 = b'I';
    type Stored = InstanceV1;
    fn to_stored(&self) -> InstanceV1 {
        InstanceV1 {
            id: self.id.0,
            definition: DefinitionRefV1 {
                name: self.definition.name.clone(),
                version: self.definition.version,
            },
            business_key: self.business_key.clone(),
            state: self.state.clone(),
            status: StatusV1::of(self.status),
            data: self.data.clone(),
            version: self.version,
            parent: self.parent.map(|p| p.0),
            owner: self.owner.clone(),
            timers: self.timers.iter().map(OpenTimerV1::of).collect(),
            rule_set: self.rule_set,
            incidents: self
                .incidents
                .iter()
                .map(|i| TimerIncidentV1 {
                    timer: OpenTimerV1::of(&i.timer),
                    error: i.error.clone(),
                    raised_at: i.raised_at,
                })
                .collect(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
    fn from_stored(s: InstanceV1) -> Result<Self, String> {
        Ok(Instance {
            id: InstanceId(s.id),
            definition: DefinitionRef {
                name: s.definition.name,
                version: s.definition.version,
            },
            business_key: s.business_key,
            state: s.state,
            status: s.status.into_status(),
            data: s.data,
            version: s.version,
            parent: s.parent.map(InstanceId),
            owner: s.owner,
            timers: s.timers.into_iter().map(OpenTimerV1::into_timer).collect(),
            rule_set: s.rule_set,
            incidents: s
                .incidents
                .into_iter()
                .map(|i| TimerIncident {
                    timer: i.timer.into_timer(),
                    error: i.error,
                    raised_at: i.raised_at,
                })
                .collect(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        })
    }
    fn check(&self) -> Result<(), String> {
        if self.version == 0 {
            return Err("instance version is 0".into());
        }
        if self.state.is_empty() || self.definition.name.is_empty() {
            return Err("instance has an empty state or definition name".into());
        }
        if !self.data.is_object() {
            return Err("instance data is not a JSON object".into());
        }
        if self.updated_at < self.created_at {
            return Err("instance updated before it was created".into());
        }
        if self.parent == Some(self.id) {
            return Err("instance is its own parent".into());
        }
        Ok(())
    }
}

/// The fields of a stored instance the commit path needs: decoding only these skips building
/// the instance's data.
pub(crate) struct InstanceHead {
    pub id: InstanceId,
    pub definition: DefinitionRef,
    pub business_key: String,
    pub state: String,
    pub status: InstanceStatus,
    pub version: u64,
    pub timers: Vec<OpenTimer>,
}

/// The head of [`InstanceV1`].
#[derive(Deserialize)]
struct InstanceHeadV1 {
    id: Uuid,
    definition: DefinitionRefV1,
    business_key: String,
    state: String,
    status: StatusV1,
    version: u64,
    #[serde(default)]
    timers: Vec<OpenTimerV1>,
}

impl InstanceHead {
    pub fn of(instance: &Instance) -> Self {
        InstanceHead {
            id: instance.id,
            definition: instance.definition.clone(),
            business_key: instance.business_key.clone(),
            state: instance.state.clone(),
            status: instance.status,
            version: instance.version,
            timers: instance.timers.clone(),
        }
    }
}

/// Decodes the head of an instance record (tag and format checked, data skipped).
pub(crate) fn decode_head(key: &[u8], bytes: &[u8]) -> Result<InstanceHead, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: printable(key),
        message,
    };
    match bytes {
        [tag, format, body @ ..] if *tag == Instance::TAG && *format == Instance::FORMAT => {
            let head: InstanceHeadV1 =
                serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
            if head.version == 0 {
                return Err(corrupt("instance version is 0".into()));
            }
            Ok(InstanceHead {
                id: InstanceId(head.id),
                definition: DefinitionRef {
                    name: head.definition.name,
                    version: head.definition.version,
                },
                business_key: head.business_key,
                state: head.state,
                status: head.status.into_status(),
                version: head.version,
                timers: head
                    .timers
                    .into_iter()
                    .map(OpenTimerV1::into_timer)
                    .collect(),
            })
        }
        _ => {
            let instance: Instance = decode(key, bytes)?;
            Ok(InstanceHead::of(&instance))
        }
    }
}

// ---- history ---------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub(crate) enum ChangeKindV1 {
    Started { by: Option<Uuid> },
    Command,
    Cancelled,
    LinkedUpdate { by: Uuid },
    // Added without a new format: older records have none of these.
    TimerIncidentRaised { timer: String },
    TimerIncidentResolved { timer: String },
    LinkedCommand { by: Uuid },
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ProvenanceV1 {
    rule_set: String,
    script: String,
    function: String,
    reference_data: String,
    inputs: ProvenanceInputsV1,
    outputs: Value,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ProvenanceInputsV1 {
    instance: Value,
    payload: Value,
    actor: Value,
    now: DateTime<Utc>,
    // Added without a new format: older records read none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    counters: Vec<CounterReadV1>,
    // Added without a new format: older records read none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    balances: Vec<BalanceReadV1>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct BalanceReadV1 {
    balance: String,
    key: String,
    /// A decimal string.
    value: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct CounterReadV1 {
    counter: String,
    key: String,
    value: u64,
}

impl ProvenanceV1 {
    fn of(p: &Provenance) -> Self {
        ProvenanceV1 {
            rule_set: p.rule_set.clone(),
            script: p.script.clone(),
            function: p.function.clone(),
            reference_data: p.reference_data.clone(),
            inputs: ProvenanceInputsV1 {
                instance: p.inputs.instance.clone(),
                payload: p.inputs.payload.clone(),
                actor: p.inputs.actor.clone(),
                now: p.inputs.now,
                counters: p
                    .inputs
                    .counters
                    .iter()
                    .map(|r| CounterReadV1 {
                        counter: r.counter.clone(),
                        key: r.key.clone(),
                        value: r.value,
                    })
                    .collect(),
                balances: p
                    .inputs
                    .balances
                    .iter()
                    .map(|r| BalanceReadV1 {
                        balance: r.balance.clone(),
                        key: r.key.clone(),
                        value: r.value.to_string(),
                    })
                    .collect(),
            },
            outputs: p.outputs.clone(),
        }
    }
    fn into_provenance(self) -> Result<Provenance, String> {
        let balances =
            self.inputs
                .balances
                .into_iter()
                .map(|r| {
                    Ok(crate::decider::BalanceRead {
                        value: r.value.parse().map_err(|e| {
                            format!("balance read {:?} is not a decimal: {e}", r.value)
                        })?,
                        balance: r.balance,
                        key: r.key,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
        Ok(Provenance {
            rule_set: self.rule_set,
            script: self.script,
            function: self.function,
            reference_data: self.reference_data,
            inputs: ProvenanceInputs {
                instance: self.inputs.instance,
                payload: self.inputs.payload,
                actor: self.inputs.actor,
                now: self.inputs.now,
                counters: self
                    .inputs
                    .counters
                    .into_iter()
                    .map(|r| crate::decider::CounterRead {
                        counter: r.counter,
                        key: r.key,
                        value: r.value,
                    })
                    .collect(),
                balances,
            },
            outputs: self.outputs,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct HistoryEntryV1 {
    instance: Uuid,
    version: u64,
    at: DateTime<Utc>,
    actor: ActorV1,
    request_id: Option<String>,
    kind: ChangeKindV1,
    command: Option<String>,
    payload: Value,
    from_state: Option<String>,
    to_state: String,
    decider: Option<String>,
    reason: String,
    changes: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provenance: Option<ProvenanceV1>,
}

impl Record for HistoryEntry {
    const TAG: u8 = b'H';
    type Stored = HistoryEntryV1;
    fn to_stored(&self) -> HistoryEntryV1 {
        HistoryEntryV1 {
            instance: self.instance.0,
            version: self.version,
            at: self.at,
            actor: ActorV1::of(&self.actor),
            request_id: self.request_id.clone(),
            kind: match &self.kind {
                ChangeKind::Started { by } => ChangeKindV1::Started {
                    by: by.map(|b| b.0),
                },
                ChangeKind::Command => ChangeKindV1::Command,
                ChangeKind::Cancelled => ChangeKindV1::Cancelled,
                ChangeKind::LinkedUpdate { by } => ChangeKindV1::LinkedUpdate { by: by.0 },
                ChangeKind::LinkedCommand { by } => ChangeKindV1::LinkedCommand { by: by.0 },
                ChangeKind::TimerIncidentRaised { timer } => ChangeKindV1::TimerIncidentRaised {
                    timer: timer.clone(),
                },
                ChangeKind::TimerIncidentResolved { timer } => {
                    ChangeKindV1::TimerIncidentResolved {
                        timer: timer.clone(),
                    }
                }
            },
            command: self.command.clone(),
            payload: self.payload.clone(),
            from_state: self.from_state.clone(),
            to_state: self.to_state.clone(),
            decider: self.decider.clone(),
            reason: self.reason.clone(),
            changes: self.changes.clone(),
            provenance: self.provenance.as_ref().map(ProvenanceV1::of),
        }
    }
    fn from_stored(s: HistoryEntryV1) -> Result<Self, String> {
        Ok(HistoryEntry {
            instance: InstanceId(s.instance),
            version: s.version,
            at: s.at,
            actor: s.actor.into_actor(),
            request_id: s.request_id,
            kind: match s.kind {
                ChangeKindV1::Started { by } => ChangeKind::Started {
                    by: by.map(InstanceId),
                },
                ChangeKindV1::Command => ChangeKind::Command,
                ChangeKindV1::Cancelled => ChangeKind::Cancelled,
                ChangeKindV1::LinkedUpdate { by } => {
                    ChangeKind::LinkedUpdate { by: InstanceId(by) }
                }
                ChangeKindV1::LinkedCommand { by } => {
                    ChangeKind::LinkedCommand { by: InstanceId(by) }
                }
                ChangeKindV1::TimerIncidentRaised { timer } => {
                    ChangeKind::TimerIncidentRaised { timer }
                }
                ChangeKindV1::TimerIncidentResolved { timer } => {
                    ChangeKind::TimerIncidentResolved { timer }
                }
            },
            command: s.command,
            payload: s.payload,
            from_state: s.from_state,
            to_state: s.to_state,
            decider: s.decider,
            reason: s.reason,
            changes: s.changes,
            provenance: s
                .provenance
                .map(ProvenanceV1::into_provenance)
                .transpose()?,
        })
    }
    fn check(&self) -> Result<(), String> {
        if self.version == 0 || self.to_state.is_empty() {
            return Err("history entry has version 0 or an empty state".into());
        }
        Ok(())
    }
}

// ---- request records -------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
pub(crate) struct CounterValueV1 {
    counter: String,
    key: String,
    value: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct OutcomeV1 {
    instance: Uuid,
    version: u64,
    state: String,
    status: StatusV1,
    reason: String,
    started: Vec<Uuid>,
    counters: Vec<CounterValueV1>,
}

/// Format 1 names the target as text: `start:<definition>` with command `$start`, or
/// `instance:<id>` with the command name (`$cancel` for a cancel).
#[derive(Serialize, Deserialize)]
pub(crate) struct RequestRecordV1 {
    request_id: String,
    target: String,
    command: String,
    payload_digest: String,
    outcome: OutcomeV1,
    recorded_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

fn target_text(target: &RequestTarget) -> (String, String) {
    match target {
        RequestTarget::Start { definition } => (format!("start:{definition}"), "$start".into()),
        RequestTarget::Command { instance, command } => {
            (format!("instance:{instance}"), command.clone())
        }
        RequestTarget::Cancel { instance } => (format!("instance:{instance}"), "$cancel".into()),
    }
}

fn target_of(target: &str, command: &str) -> Result<RequestTarget, String> {
    if let Some(definition) = target.strip_prefix("start:") {
        return Ok(RequestTarget::Start {
            definition: definition.to_string(),
        });
    }
    let instance = target
        .strip_prefix("instance:")
        .and_then(|id| id.parse::<InstanceId>().ok())
        .ok_or_else(|| format!("request target `{target}` is neither start: nor instance:"))?;
    Ok(match command {
        "$cancel" => RequestTarget::Cancel { instance },
        command => RequestTarget::Command {
            instance,
            command: command.to_string(),
        },
    })
}

impl Record for RequestRecord {
    const TAG: u8 = b'R';
    type Stored = RequestRecordV1;
    fn to_stored(&self) -> RequestRecordV1 {
        let (target, command) = target_text(&self.target);
        let o = &self.outcome;
        RequestRecordV1 {
            request_id: self.request_id.clone(),
            target,
            command,
            payload_digest: self.payload_digest.clone(),
            outcome: OutcomeV1 {
                instance: o.instance.0,
                version: o.version,
                state: o.state.clone(),
                status: StatusV1::of(o.status),
                reason: o.reason.clone(),
                started: o.started.iter().map(|i| i.0).collect(),
                counters: o
                    .counters
                    .iter()
                    .map(|c| CounterValueV1 {
                        counter: c.counter.clone(),
                        key: c.key.clone(),
                        value: c.value,
                    })
                    .collect(),
            },
            recorded_at: self.recorded_at,
            expires_at: self.expires_at,
        }
    }
    fn from_stored(s: RequestRecordV1) -> Result<Self, String> {
        let o = s.outcome;
        Ok(RequestRecord {
            target: target_of(&s.target, &s.command)?,
            request_id: s.request_id,
            payload_digest: s.payload_digest,
            outcome: CommandOutcome {
                instance: InstanceId(o.instance),
                version: o.version,
                state: o.state,
                status: o.status.into_status(),
                reason: o.reason,
                started: o.started.into_iter().map(InstanceId).collect(),
                counters: o
                    .counters
                    .into_iter()
                    .map(|c| CounterValue {
                        counter: c.counter,
                        key: c.key,
                        value: c.value,
                    })
                    .collect(),
            },
            recorded_at: s.recorded_at,
            expires_at: s.expires_at,
        })
    }
    fn check(&self) -> Result<(), String> {
        if self.request_id.is_empty() || self.payload_digest.len() != 64 {
            return Err("request record has an empty id or a malformed digest".into());
        }
        if self.expires_at < self.recorded_at {
            return Err("request record expires before it was recorded".into());
        }
        if self.outcome.version == 0 {
            return Err("request record outcome has version 0".into());
        }
        Ok(())
    }
}

// ---- feed ------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
pub(crate) struct FeedEventV1 {
    offset: u64,
    id: String,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    subject: String,
    time: DateTime<Utc>,
    data: Box<serde_json::value::RawValue>,
}

impl Record for FeedEvent {
    const TAG: u8 = b'F';
    type Stored = FeedEventV1;
    fn to_stored(&self) -> FeedEventV1 {
        FeedEventV1 {
            offset: self.offset,
            id: self.id.clone(),
            source: self.source.clone(),
            kind: self.kind.as_str().to_string(),
            subject: self.subject.clone(),
            time: self.time,
            data: self.data_json.clone(),
        }
    }
    fn from_stored(s: FeedEventV1) -> Result<Self, String> {
        Ok(FeedEvent {
            kind: EventType::from_name(&s.kind)
                .ok_or_else(|| format!("unknown event type `{}`", s.kind))?,
            offset: s.offset,
            id: s.id,
            source: s.source,
            subject: s.subject,
            time: s.time,
            data_json: s.data,
        })
    }
    fn check(&self) -> Result<(), String> {
        if self.offset == 0 {
            return Err("feed event has offset 0".into());
        }
        Ok(())
    }
}

// ---- timers ----------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
pub(crate) struct DueTimerV1 {
    instance: Uuid,
    timer: OpenTimerV1,
}

impl Record for DueTimer {
    const TAG: u8 = b'T';
    type Stored = DueTimerV1;
    fn to_stored(&self) -> DueTimerV1 {
        DueTimerV1 {
            instance: self.instance.0,
            timer: OpenTimerV1::of(&self.timer),
        }
    }
    fn from_stored(s: DueTimerV1) -> Result<Self, String> {
        Ok(DueTimer {
            instance: InstanceId(s.instance),
            timer: s.timer.into_timer(),
        })
    }
    fn check(&self) -> Result<(), String> {
        if self.timer.name.is_empty() || self.timer.command.is_empty() {
            return Err("timer without a name or command".into());
        }
        Ok(())
    }
}

// ---- jobs ------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobStatusV1 {
    Activatable,
    Leased,
    Incident,
    Completed,
    Cancelled,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct LeaseV1 {
    id: Uuid,
    worker: String,
    expires_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct JobV1 {
    id: Uuid,
    job_type: String,
    instance: Uuid,
    payload: Value,
    status: JobStatusV1,
    failures: u32,
    retries: u32,
    backoff_ms: u64,
    available_at: DateTime<Utc>,
    lease: Option<LeaseV1>,
    last_error: Option<String>,
    // Added without a new format: older records have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed_lease: Option<Uuid>,
    complete_command: String,
    version: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Record for Job {
    const TAG: u8 = b'J';
    type Stored = JobV1;
    fn to_stored(&self) -> JobV1 {
        JobV1 {
            id: self.id.0,
            job_type: self.job_type.clone(),
            instance: self.instance.0,
            payload: self.payload.clone(),
            status: match self.status {
                JobStatus::Activatable => JobStatusV1::Activatable,
                JobStatus::Leased => JobStatusV1::Leased,
                JobStatus::Incident => JobStatusV1::Incident,
                JobStatus::Completed => JobStatusV1::Completed,
                JobStatus::Cancelled => JobStatusV1::Cancelled,
            },
            failures: self.failures,
            retries: self.retries,
            backoff_ms: self.backoff_ms,
            available_at: self.available_at,
            lease: self.lease.as_ref().map(|l| LeaseV1 {
                id: l.id,
                worker: l.worker.clone(),
                expires_at: l.expires_at,
            }),
            last_error: self.last_error.clone(),
            failed_lease: self.failed_lease,
            complete_command: self.complete_command.clone(),
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
    fn from_stored(s: JobV1) -> Result<Self, String> {
        Ok(Job {
            id: JobId(s.id),
            job_type: s.job_type,
            instance: InstanceId(s.instance),
            payload: s.payload,
            status: match s.status {
                JobStatusV1::Activatable => JobStatus::Activatable,
                JobStatusV1::Leased => JobStatus::Leased,
                JobStatusV1::Incident => JobStatus::Incident,
                JobStatusV1::Completed => JobStatus::Completed,
                JobStatusV1::Cancelled => JobStatus::Cancelled,
            },
            failures: s.failures,
            retries: s.retries,
            backoff_ms: s.backoff_ms,
            available_at: s.available_at,
            lease: s.lease.map(|l| Lease {
                id: l.id,
                worker: l.worker,
                expires_at: l.expires_at,
            }),
            last_error: s.last_error,
            failed_lease: s.failed_lease,
            complete_command: s.complete_command,
            version: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
        })
    }
    fn check(&self) -> Result<(), String> {
        // A notification's job has no completion command; every other job has one.
        let notification = crate::notification::is_notification(&self.job_type);
        if self.version == 0
            || self.job_type.is_empty()
            || self.complete_command.is_empty() != notification
        {
            return Err(
                "job with version 0, no type, or a completion command that does not fit its type (only notifications have none)".into(),
            );
        }
        if (self.status == JobStatus::Leased) != self.lease.is_some() {
            return Err("job lease does not match its status".into());
        }
        Ok(())
    }
}

// ---- rule sets -------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
pub(crate) struct RuleSetV1 {
    number: u32,
    version: String,
    files: BTreeMap<String, String>,
    deployed_at: DateTime<Utc>,
    deployed_by: String,
}

impl Record for RuleSetRecord {
    const TAG: u8 = b'V';
    type Stored = RuleSetV1;
    fn to_stored(&self) -> RuleSetV1 {
        RuleSetV1 {
            number: self.number,
            version: self.version.clone(),
            files: self.files.clone(),
            deployed_at: self.deployed_at,
            deployed_by: self.deployed_by.clone(),
        }
    }
    fn from_stored(s: RuleSetV1) -> Result<Self, String> {
        Ok(RuleSetRecord {
            number: s.number,
            version: s.version,
            files: s.files,
            deployed_at: s.deployed_at,
            deployed_by: s.deployed_by,
        })
    }
    fn check(&self) -> Result<(), String> {
        if self.number == 0 || self.files.is_empty() {
            return Err("rule set with number 0 or no files".into());
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ActivationV1 {
    seq: u64,
    number: u32,
    at: DateTime<Utc>,
    by: String,
}

impl Record for RuleSetActivation {
    const TAG: u8 = b'W';
    type Stored = ActivationV1;
    fn to_stored(&self) -> ActivationV1 {
        ActivationV1 {
            seq: self.seq,
            number: self.number,
            at: self.at,
            by: self.by.clone(),
        }
    }
    fn from_stored(s: ActivationV1) -> Result<Self, String> {
        Ok(RuleSetActivation {
            seq: s.seq,
            number: s.number,
            at: s.at,
            by: s.by,
        })
    }
    fn check(&self) -> Result<(), String> {
        if self.seq == 0 || self.number == 0 || self.by.is_empty() {
            return Err("rule-set activation with seq or number 0, or no actor".into());
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct RuleSetRequestV1 {
    request_id: String,
    operation: String,
    digest: String,
    number: u32,
    /// Added without a new format: what a credential operation acted on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    subject: String,
    recorded_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl Record for RuleSetRequestRecord {
    const TAG: u8 = b'G';
    type Stored = RuleSetRequestV1;
    fn to_stored(&self) -> RuleSetRequestV1 {
        RuleSetRequestV1 {
            request_id: self.request_id.clone(),
            operation: self.operation.clone(),
            digest: self.digest.clone(),
            number: self.number,
            subject: self.subject.clone(),
            recorded_at: self.recorded_at,
            expires_at: self.expires_at,
        }
    }
    fn from_stored(s: RuleSetRequestV1) -> Result<Self, String> {
        Ok(RuleSetRequestRecord {
            request_id: s.request_id,
            operation: s.operation,
            digest: s.digest,
            number: s.number,
            subject: s.subject,
            recorded_at: s.recorded_at,
            expires_at: s.expires_at,
        })
    }
    fn check(&self) -> Result<(), String> {
        if self.request_id.is_empty()
            || (self.number == 0 && self.subject.is_empty())
            || self.expires_at < self.recorded_at
        {
            return Err(
                "administrative request without an id or a result, or expiring before it was recorded"
                    .into(),
            );
        }
        Ok(())
    }
}

// ---- credentials -----------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
pub(crate) struct CredentialV1 {
    id: String,
    token_sha256: String,
    actor: String,
    roles: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    created_by: String,
    revoked_at: Option<DateTime<Utc>>,
    revoked_by: Option<String>,
    replaced_by: Option<String>,
}

impl Record for crate::credential::Credential {
    const TAG: u8 = b'U';
    type Stored = CredentialV1;
    fn to_stored(&self) -> CredentialV1 {
        CredentialV1 {
            id: self.id.clone(),
            token_sha256: self.token_sha256.clone(),
            actor: self.actor.clone(),
            roles: self.roles.clone(),
            expires_at: self.expires_at,
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            revoked_at: self.revoked_at,
            revoked_by: self.revoked_by.clone(),
            replaced_by: self.replaced_by.clone(),
        }
    }
    fn from_stored(s: CredentialV1) -> Result<Self, String> {
        Ok(crate::credential::Credential {
            id: s.id,
            token_sha256: s.token_sha256,
            actor: s.actor,
            roles: s.roles,
            expires_at: s.expires_at,
            created_at: s.created_at,
            created_by: s.created_by,
            revoked_at: s.revoked_at,
            revoked_by: s.revoked_by,
            replaced_by: s.replaced_by,
        })
    }
    fn check(&self) -> Result<(), String> {
        if self.token_sha256.len() != 64 || !self.token_sha256.starts_with(&self.id) {
            return Err("credential hash and id do not match".into());
        }
        if self.actor.is_empty() || self.roles.is_empty() {
            return Err("credential without an actor or roles".into());
        }
        Ok(())
    }
}

// ---- counters and meta values ----------------------------------------------------------

/// A counter's value (also how meta values such as the feed head are kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CounterRecord {
    pub value: u64,
}

impl Record for CounterRecord {
    const TAG: u8 = b'C';
    type Stored = CounterRecord;
    fn to_stored(&self) -> CounterRecord {
        *self
    }
    fn from_stored(s: CounterRecord) -> Result<Self, String> {
        Ok(s)
    }
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A balance's value: an exact decimal, kept as its string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BalanceRecord {
    pub value: rust_decimal::Decimal,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct BalanceRecordV1 {
    value: String,
}

impl Record for BalanceRecord {
    const TAG: u8 = b'B';
    type Stored = BalanceRecordV1;
    fn to_stored(&self) -> BalanceRecordV1 {
        BalanceRecordV1 {
            value: self.value.to_string(),
        }
    }
    fn from_stored(s: BalanceRecordV1) -> Result<Self, String> {
        s.value
            .parse()
            .map(|value| BalanceRecord { value })
            .map_err(|e| format!("balance value {:?} is not a decimal: {e}", s.value))
    }
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Golden fixtures: records exactly as an earlier build wrote them (generated once, never
    //! regenerated). Each must decode, and encoding the decoded value must give the same JSON
    //! (same keys and values), so the format is unchanged in both directions.

    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/records/{name}.bin",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn round_trip<R: Record + std::fmt::Debug>(name: &str) -> R {
        let bytes = fixture(name);
        let record: R = decode(name.as_bytes(), &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = encode(&record);
        assert_eq!(again[..2], bytes[..2], "{name}: tag and format");
        let old: Value = serde_json::from_slice(&bytes[2..]).unwrap();
        let new: Value = serde_json::from_slice(&again[2..]).unwrap();
        assert_eq!(new, old, "{name}: the stored JSON changed");
        record
    }

    #[test]
    fn every_record_kind_decodes_from_its_golden_fixture_and_encodes_the_same() {
        let i: Instance = round_trip("instance");
        assert_eq!(i.business_key, "Q-1");
        assert_eq!(i.rule_set, Some(3));
        assert_eq!(i.timers.len(), 1);
        assert_eq!(i.owner, None, "written before instances had owners");
        let owned: Instance = round_trip("instance_owned");
        assert_eq!(owned.owner.as_deref(), Some("ana"));
        let done: Instance = round_trip("instance_completed");
        assert_eq!(done.status, InstanceStatus::Completed);
        let h: HistoryEntry = round_trip("history_command");
        let p = h.provenance.expect("provenance");
        assert_eq!(p.decider(), "quote::submit");
        assert_eq!(p.inputs.payload, serde_json::json!({ "note": "x" }));
        for name in [
            "history_started",
            "history_linked_update",
            "history_cancelled",
        ] {
            round_trip::<HistoryEntry>(name);
        }
        let r: RequestRecord = round_trip("request_command");
        assert!(matches!(&r.target, RequestTarget::Command { command, .. } if command == "submit"));
        let r: RequestRecord = round_trip("request_start");
        assert_eq!(
            r.target,
            RequestTarget::Start {
                definition: "quote".into()
            }
        );
        let r: RequestRecord = round_trip("request_cancel");
        assert!(matches!(r.target, RequestTarget::Cancel { .. }));
        let e: FeedEvent = round_trip("feed_event");
        assert_eq!(e.kind, EventType::InstanceTransitioned);
        round_trip::<DueTimer>("due_timer");
        let j: Job = round_trip("job_leased");
        assert_eq!(j.status, JobStatus::Leased);
        round_trip::<Job>("job_incident");
        round_trip::<RuleSetRecord>("rule_set");
        round_trip::<RuleSetActivation>("rule_set_activation");
        round_trip::<RuleSetRequestRecord>("rule_set_request");
        let r: RuleSetRequestRecord = round_trip("credential_request");
        assert_eq!(r.subject, "credential 00112233aabbccdd");
        let c: crate::credential::Credential = round_trip("credential");
        assert_eq!(c.replaced_by.as_deref(), Some("00112233aabbccdd"));
        assert!(!c.is_valid_at(c.created_at + chrono::Duration::days(2)));
        assert_eq!(round_trip::<CounterRecord>("counter").value, 7);
        assert_eq!(
            round_trip::<BalanceRecord>("balance").value.to_string(),
            "12922.97"
        );
        let h: HistoryEntry = round_trip("history_balance_reads");
        let inputs = h.provenance.expect("provenance").inputs;
        assert_eq!(inputs.counters[0].value, 2);
        assert_eq!(inputs.balances[0].key, "ACME/EUR");
        assert_eq!(inputs.balances[0].value.to_string(), "7000.00");
    }

    #[test]
    fn a_balance_that_is_not_a_decimal_is_corruption_naming_it() {
        let bad = b"B\x01{\"value\":\"12,5\"}".to_vec();
        let e = decode::<BalanceRecord>(b"bkey", &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bkey") && e.contains("\"12,5\" is not a decimal"),
            "{e}"
        );
        let mut history = fixture("history_balance_reads");
        let at = history
            .windows(9)
            .position(|w| w == b"\"7000.00\"")
            .expect("the balance read");
        history[at + 1] = b'x';
        let e = decode::<HistoryEntry>(b"hkey", &history)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("balance read \"x000.00\" is not a decimal"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_format_or_a_foreign_tag_is_corruption_naming_the_key() {
        let mut bytes = fixture("instance");
        bytes[1] = 9;
        let e = decode::<Instance>(b"ikey", &bytes).unwrap_err().to_string();
        assert!(e.contains("ikey") && e.contains("format 9"), "{e}");
        let e = decode::<Job>(b"ikey", &fixture("instance"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected record tag J"), "{e}");
    }
}
