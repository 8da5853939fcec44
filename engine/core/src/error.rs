//! Errors a caller can see. Each says what was wrong, where (field, instance, state, role)
//! and what would be accepted, and has a stable [`CommandError::code`] for wire mappings.

use crate::definition::schema::FieldViolation;
use crate::definition::DefinitionErrors;
use crate::model::{DefinitionRef, InstanceId, InstanceStatus};
use crate::store::StoreError;

/// `text` cut to at most `max` bytes on a character boundary, marked with `…` when cut: every
/// value a refusal echoes back goes through this, so a refusal stays small whatever was sent.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// One reason a rule set was refused, with its place when it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleSetProblem {
    /// The rule-set file, relative to the rule set's root (empty when the problem has no
    /// file).
    pub file: String,
    /// 1-based line (0 when the problem has no place in the file).
    pub line: usize,
    /// 1-based column (0 when the problem has no place in the file).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl RuleSetProblem {
    /// A problem at `file:line:column`.
    pub fn at(file: &str, line: usize, column: usize, message: String) -> Self {
        RuleSetProblem {
            file: file.to_string(),
            line,
            column,
            message,
        }
    }

    /// A problem about a whole file.
    pub fn in_file(file: &str, message: String) -> Self {
        RuleSetProblem {
            file: file.to_string(),
            line: 0,
            column: 0,
            message,
        }
    }
}

impl std::fmt::Display for RuleSetProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.file.as_str(), self.line) {
            ("", _) => write!(f, "{}", self.message),
            (file, 0) => write!(f, "{file}: {}", self.message),
            (file, line) => write!(f, "{file}:{line}:{}: {}", self.column, self.message),
        }
    }
}

impl From<crate::definition::DefinitionError> for RuleSetProblem {
    fn from(e: crate::definition::DefinitionError) -> Self {
        RuleSetProblem {
            file: e.file,
            line: e.line,
            column: e.column,
            message: e.message,
        }
    }
}

/// Why a start, command, cancel or query was refused or failed. A refused request wrote
/// nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No definition with that name is loaded.
    #[error("unknown definition `{name}`; loaded definitions: {loaded}")]
    UnknownDefinition {
        /// The name asked for.
        name: String,
        /// The loaded names.
        loaded: String,
    },
    /// The instance's pinned definition version is not loaded.
    #[error("instance {instance} is pinned to definition {definition}, which is not loaded")]
    DefinitionNotLoaded {
        /// The instance.
        instance: InstanceId,
        /// Its definition.
        definition: DefinitionRef,
    },
    /// No such instance.
    #[error("instance {0} does not exist")]
    UnknownInstance(InstanceId),
    /// The definition has no such command.
    #[error("definition {definition} has no command `{command}`; its commands: {accepted}")]
    UnknownCommand {
        /// The instance's definition.
        definition: DefinitionRef,
        /// The command asked for.
        command: String,
        /// The declared commands.
        accepted: String,
    },
    /// The command is not accepted in the instance's current state.
    #[error("command `{command}` cannot be sent to instance {instance} in state `{state}`; it is accepted in: {allowed}")]
    WrongState {
        /// The instance.
        instance: InstanceId,
        /// The command.
        command: String,
        /// The current state.
        state: String,
        /// States the command is accepted in.
        allowed: String,
    },
    /// The instance is completed or cancelled.
    #[error("instance {instance} is {status} (state `{state}`); it accepts no more commands")]
    NotActive {
        /// The instance.
        instance: InstanceId,
        /// Its status.
        status: InstanceStatus,
        /// Its state.
        state: String,
    },
    /// The actor holds none of the roles the action needs.
    #[error(
        "actor `{actor}` (roles: {held}) may not {action}; it needs one of the roles: {required}"
    )]
    RoleNotAllowed {
        /// The actor id.
        actor: String,
        /// What it tried, e.g. "send `approve` to sales_order v1".
        action: String,
        /// The roles it holds.
        held: String,
        /// The roles that would be accepted.
        required: String,
    },
    /// The command is for the instance's owner alone, and the actor neither owns it nor holds
    /// a role that acts for owners.
    #[error("command `{command}` on {instance} is for its owner (`{owner}`) only; actor `{actor}` does not own it and holds none of the roles that act for owners: {owner_roles}")]
    NotOwner {
        /// The instance.
        instance: InstanceId,
        /// The command.
        command: String,
        /// Its owner (`(none)` for instances started before owners existed).
        owner: String,
        /// The actor id.
        actor: String,
        /// The roles that may act for owners.
        owner_roles: String,
    },
    /// The payload does not match the schema.
    #[error("invalid payload: {}", violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidPayload {
        /// Every violation, each naming its field.
        violations: Vec<FieldViolation>,
    },
    /// A request field other than the payload is malformed.
    #[error("field `{field}`: {message}")]
    InvalidInput {
        /// The request field.
        field: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// The payload is larger than the configured limit.
    #[error("field `payload`: {size} bytes is too large; at most {max} bytes are accepted")]
    PayloadTooLarge {
        /// Its size in bytes (as JSON).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// `expected_version` did not match.
    #[error("instance {instance} is at version {current}, not the expected version {expected}")]
    VersionMismatch {
        /// The instance.
        instance: InstanceId,
        /// What the caller expected.
        expected: u64,
        /// What it is.
        current: u64,
    },
    /// Concurrent commands kept winning; the bounded retries ran out.
    #[error("instance {instance} kept changing under concurrent commands; gave up after {attempts} attempts (now at version {current})")]
    Conflict {
        /// The instance.
        instance: InstanceId,
        /// Its version when the engine gave up.
        current: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// A counter value the decision read kept changing under concurrent commands; the bounded
    /// retries ran out.
    #[error("counter `{counter}` key `{key}` kept changing under concurrent commands; gave up after {attempts} attempts")]
    CounterConflict {
        /// Counter name.
        counter: String,
        /// Key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A balance value the decision read kept changing under concurrent commands; the bounded
    /// retries ran out.
    #[error("balance `{balance}` key `{key}` kept changing under concurrent commands; gave up after {attempts} attempts")]
    BalanceConflict {
        /// Balance name.
        balance: String,
        /// Key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A start named an instance id that an instance already has.
    #[error("instance {instance} already exists; a start with a chosen instance id makes a new instance only once")]
    InstanceExists {
        /// The id.
        instance: InstanceId,
    },
    /// The request id was used before for a different request.
    #[error("request id `{request_id}` was already used for {original}; a different request needs a new request id")]
    RequestIdReused {
        /// The request id.
        request_id: String,
        /// What it was used for.
        original: String,
    },
    /// A counter draw would pass the counter's limit.
    #[error("counter `{counter}` key `{key}` has reached its limit of {limit}")]
    CounterLimit {
        /// Counter.
        counter: String,
        /// Key.
        key: String,
        /// Limit.
        limit: u64,
    },
    /// The rule refused the command for a business reason (a credit limit reached, a
    /// coupon used up): not a fault of the rule or the caller's input.
    #[error("decider `{decider}` refused command `{command}` ({code}): {message}")]
    DecisionRefused {
        /// The decider.
        decider: String,
        /// The command.
        command: String,
        /// The rule's reason code, e.g. `CREDIT_LIMIT`.
        code: String,
        /// Its explanation.
        message: String,
    },
    /// The decider failed (a script error, a limit hit): a fault of the rule, not a decision.
    #[error("decider `{decider}` failed on command `{command}`: {message}")]
    DecisionFailed {
        /// The decider.
        decider: String,
        /// The command.
        command: String,
        /// Its error.
        message: String,
        /// Where in the rule set it failed, when known.
        location: Option<crate::decider::SourceLocation>,
    },
    /// The decider returned a decision the definition does not allow.
    #[error("decider `{decider}` returned an invalid decision for command `{command}`: {message}")]
    DecisionInvalid {
        /// The decider.
        decider: String,
        /// The command.
        command: String,
        /// What is wrong with it.
        message: String,
    },
    /// A command a decision sent to a linked instance (`effects.send`) was refused there, so
    /// the whole command is refused and nothing is written.
    #[error("command `{command}` sent to {definition} {instance} was refused: {cause}")]
    LinkedCommandRefused {
        /// The linked instance.
        instance: InstanceId,
        /// Its definition's name.
        definition: String,
        /// The command sent to it.
        command: String,
        /// Why it was refused there.
        cause: Box<CommandError>,
    },
    /// A subscription asked for events that retention has already removed.
    #[error("field `after_offset`: events after offset {after} are no longer retained; the earliest retained offset is {earliest}, so subscribe with after_offset ≥ {}", earliest.saturating_sub(1))]
    FeedHorizon {
        /// The offset asked for.
        after: u64,
        /// The earliest retained offset.
        earliest: u64,
    },
    /// A subscription asked to start after an offset the feed has not reached.
    #[error("field `after_offset`: {after} is beyond the feed's last offset {head}")]
    FeedBeyondHead {
        /// The offset asked for.
        after: u64,
        /// The last offset.
        head: u64,
    },
    /// A timer fired after its instance had already left the state that set it.
    #[error("timer `{timer}` of instance {instance} is no longer open")]
    TimerNotOpen {
        /// The instance.
        instance: InstanceId,
        /// The timer.
        timer: String,
    },
    /// No such job.
    #[error("job {0} does not exist")]
    UnknownJob(crate::job::JobId),
    /// A completion or failure carried a lease that is no longer the job's current one.
    #[error("job {job}: the lease is stale ({reason}); activate the job again")]
    StaleLease {
        /// The job.
        job: crate::job::JobId,
        /// Why: re-leased, expired, or the job already finished.
        reason: String,
    },
    /// An incident action on a job that is not an incident.
    #[error("job {job} is {status:?}, not an incident")]
    NotAnIncident {
        /// The job.
        job: crate::job::JobId,
        /// Its status.
        status: crate::job::JobStatus,
    },
    /// The instance has no incident for that timer.
    #[error("instance {instance} has no incident for timer `{timer}`")]
    NoSuchIncident {
        /// The instance.
        instance: InstanceId,
        /// The timer asked for.
        timer: String,
    },
    /// No credential has that id.
    #[error("there is no credential {0}")]
    UnknownCredential(String),
    /// A credential request was retried: its token was shown once and is kept nowhere.
    #[error("this request already made {credential}; its token is shown only once — revoke it and create another if the token was lost")]
    SecretShownOnce {
        /// The credential the first request made.
        credential: String,
    },
    /// A rule set was not deployed or activated; nothing changed.
    #[error("the rule set was not activated:\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    RuleSetRefused {
        /// Every reason, with its place where it has one.
        problems: Vec<RuleSetProblem>,
    },
    /// No such rule-set version.
    #[error("there is no rule set #{0}")]
    UnknownRuleSet(u32),
    /// The engine was opened without rule sets (`Engine::open`), so none can be deployed.
    #[error("this engine was opened with fixed definitions; open it with Engine::open_with_rules to deploy rule sets")]
    NoRuleSets,
    /// Too much work is waiting for a bounded resource (the rule pool's queue); retry later.
    #[error("{resource} is at its limit of {limit} waiting requests; retry later")]
    Overloaded {
        /// What is full.
        resource: String,
        /// Its limit.
        limit: usize,
    },
    /// The engine is shutting down and takes no more writes.
    #[error("the engine is shutting down and accepts no more commands")]
    ShuttingDown,
    /// The store failed; whether the request was applied is unknown. Retrying with the same
    /// request id is safe.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CommandError {
    /// Every code [`CommandError::code`] returns, for wire mappings to check themselves
    /// against (a test here keeps the list and the variants in step).
    pub const CODES: &'static [&'static str] = &[
        "UNKNOWN_DEFINITION",
        "DEFINITION_NOT_LOADED",
        "UNKNOWN_INSTANCE",
        "UNKNOWN_COMMAND",
        "WRONG_STATE",
        "NOT_ACTIVE",
        "ROLE_NOT_ALLOWED",
        "NOT_OWNER",
        "INVALID_PAYLOAD",
        "INVALID_INPUT",
        "PAYLOAD_TOO_LARGE",
        "VERSION_MISMATCH",
        "CONFLICT",
        "COUNTER_CONFLICT",
        "BALANCE_CONFLICT",
        "REQUEST_ID_REUSED",
        "INSTANCE_EXISTS",
        "COUNTER_LIMIT",
        "DECISION_REFUSED",
        "DECISION_FAILED",
        "DECISION_INVALID",
        "LINKED_COMMAND_REFUSED",
        "FEED_HORIZON",
        "FEED_BEYOND_HEAD",
        "TIMER_NOT_OPEN",
        "UNKNOWN_JOB",
        "STALE_LEASE",
        "NOT_AN_INCIDENT",
        "NO_SUCH_INCIDENT",
        "UNKNOWN_CREDENTIAL",
        "SECRET_SHOWN_ONCE",
        "RULE_SET_REFUSED",
        "UNKNOWN_RULE_SET",
        "NO_RULE_SETS",
        "OVERLOADED",
        "SHUTTING_DOWN",
        "STORE",
    ];

    /// A stable, machine-readable code (used as the gRPC `ErrorInfo` reason).
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::UnknownDefinition { .. } => "UNKNOWN_DEFINITION",
            CommandError::DefinitionNotLoaded { .. } => "DEFINITION_NOT_LOADED",
            CommandError::UnknownInstance(_) => "UNKNOWN_INSTANCE",
            CommandError::UnknownCommand { .. } => "UNKNOWN_COMMAND",
            CommandError::WrongState { .. } => "WRONG_STATE",
            CommandError::NotActive { .. } => "NOT_ACTIVE",
            CommandError::RoleNotAllowed { .. } => "ROLE_NOT_ALLOWED",
            CommandError::NotOwner { .. } => "NOT_OWNER",
            CommandError::InvalidPayload { .. } => "INVALID_PAYLOAD",
            CommandError::InvalidInput { .. } => "INVALID_INPUT",
            CommandError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            CommandError::VersionMismatch { .. } => "VERSION_MISMATCH",
            CommandError::Conflict { .. } => "CONFLICT",
            CommandError::CounterConflict { .. } => "COUNTER_CONFLICT",
            CommandError::BalanceConflict { .. } => "BALANCE_CONFLICT",
            CommandError::RequestIdReused { .. } => "REQUEST_ID_REUSED",
            CommandError::InstanceExists { .. } => "INSTANCE_EXISTS",
            CommandError::CounterLimit { .. } => "COUNTER_LIMIT",
            CommandError::DecisionRefused { .. } => "DECISION_REFUSED",
            CommandError::DecisionFailed { .. } => "DECISION_FAILED",
            CommandError::DecisionInvalid { .. } => "DECISION_INVALID",
            CommandError::LinkedCommandRefused { .. } => "LINKED_COMMAND_REFUSED",
            CommandError::FeedHorizon { .. } => "FEED_HORIZON",
            CommandError::FeedBeyondHead { .. } => "FEED_BEYOND_HEAD",
            CommandError::TimerNotOpen { .. } => "TIMER_NOT_OPEN",
            CommandError::UnknownJob(_) => "UNKNOWN_JOB",
            CommandError::StaleLease { .. } => "STALE_LEASE",
            CommandError::NotAnIncident { .. } => "NOT_AN_INCIDENT",
            CommandError::NoSuchIncident { .. } => "NO_SUCH_INCIDENT",
            CommandError::UnknownCredential(_) => "UNKNOWN_CREDENTIAL",
            CommandError::SecretShownOnce { .. } => "SECRET_SHOWN_ONCE",
            CommandError::RuleSetRefused { .. } => "RULE_SET_REFUSED",
            CommandError::UnknownRuleSet(_) => "UNKNOWN_RULE_SET",
            CommandError::NoRuleSets => "NO_RULE_SETS",
            CommandError::Overloaded { .. } => "OVERLOADED",
            CommandError::ShuttingDown => "SHUTTING_DOWN",
            CommandError::Store(_) => "STORE",
        }
    }
}

/// Why the engine could not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The rule set to start on could not be deployed or activated.
    #[error("rules: {0}")]
    Rules(#[source] CommandError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Definitions failed to load.
    #[error("definitions are invalid:\n{0}")]
    Definitions(#[from] DefinitionErrors),
    /// A configuration value is out of range.
    #[error("configuration `{field}`: {message}")]
    Config {
        /// The key.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The committer thread could not start.
    #[error("cannot start the committer thread: {0}")]
    Thread(std::io::Error),
}

/// The message a panic carried (`"a panic"` when it carried none).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceId;

    /// One of each variant. `code` is an exhaustive match, so a new variant needs a code; add
    /// its sample here and its code to `CODES`, or this test fails.
    fn samples() -> Vec<CommandError> {
        let id = InstanceId::new();
        let job = crate::job::JobId(id.0);
        let s = String::new;
        vec![
            CommandError::UnknownDefinition {
                name: s(),
                loaded: s(),
            },
            CommandError::DefinitionNotLoaded {
                instance: id,
                definition: crate::model::DefinitionRef {
                    name: s(),
                    version: 1,
                },
            },
            CommandError::UnknownInstance(id),
            CommandError::UnknownCommand {
                definition: crate::model::DefinitionRef {
                    name: s(),
                    version: 1,
                },
                command: s(),
                accepted: s(),
            },
            CommandError::WrongState {
                instance: id,
                command: s(),
                state: s(),
                allowed: s(),
            },
            CommandError::NotActive {
                instance: id,
                status: crate::model::InstanceStatus::Completed,
                state: s(),
            },
            CommandError::RoleNotAllowed {
                actor: s(),
                action: s(),
                held: s(),
                required: s(),
            },
            CommandError::NotOwner {
                instance: id,
                command: s(),
                owner: s(),
                actor: s(),
                owner_roles: s(),
            },
            CommandError::InvalidPayload { violations: vec![] },
            CommandError::InvalidInput {
                field: s(),
                message: s(),
            },
            CommandError::PayloadTooLarge { size: 2, max: 1 },
            CommandError::VersionMismatch {
                instance: id,
                expected: 1,
                current: 2,
            },
            CommandError::Conflict {
                instance: id,
                current: 2,
                attempts: 9,
            },
            CommandError::CounterConflict {
                counter: s(),
                key: s(),
                attempts: 9,
            },
            CommandError::BalanceConflict {
                balance: s(),
                key: s(),
                attempts: 9,
            },
            CommandError::RequestIdReused {
                request_id: s(),
                original: s(),
            },
            CommandError::InstanceExists { instance: id },
            CommandError::CounterLimit {
                counter: s(),
                key: s(),
                limit: 1,
            },
            CommandError::DecisionRefused {
                decider: s(),
                command: s(),
                code: s(),
                message: s(),
            },
            CommandError::DecisionFailed {
                decider: s(),
                command: s(),
                message: s(),
                location: None,
            },
            CommandError::DecisionInvalid {
                decider: s(),
                command: s(),
                message: s(),
            },
            CommandError::LinkedCommandRefused {
                instance: id,
                definition: s(),
                command: s(),
                cause: Box::new(CommandError::UnknownInstance(id)),
            },
            CommandError::FeedHorizon {
                after: 0,
                earliest: 2,
            },
            CommandError::FeedBeyondHead { after: 2, head: 1 },
            CommandError::TimerNotOpen {
                instance: id,
                timer: s(),
            },
            CommandError::UnknownJob(job),
            CommandError::StaleLease { job, reason: s() },
            CommandError::NotAnIncident {
                job,
                status: crate::job::JobStatus::Completed,
            },
            CommandError::NoSuchIncident {
                instance: id,
                timer: s(),
            },
            CommandError::UnknownCredential(s()),
            CommandError::SecretShownOnce { credential: s() },
            CommandError::RuleSetRefused { problems: vec![] },
            CommandError::UnknownRuleSet(1),
            CommandError::NoRuleSets,
            CommandError::Overloaded {
                resource: s(),
                limit: 1,
            },
            CommandError::ShuttingDown,
            CommandError::Store(StoreError::Io(s())),
        ]
    }

    #[test]
    fn codes_lists_every_variants_code_once() {
        let codes: Vec<&str> = samples().iter().map(CommandError::code).collect();
        assert_eq!(codes, CommandError::CODES);
    }
}
