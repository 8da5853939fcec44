//! Definitions: named, versioned state machines loaded from TOML files.
//!
//! A definition declares its states, the commands that move between them (with the roles
//! allowed to send each, its payload schema, its decider and the effects that decider may
//! choose) and who may start and cancel instances. Loading checks everything and reports
//! each problem as `file:line:col: message`. The file format is documented in
//! `ARCHITECTURE.md`. This module knows nothing of storage or of how deciders are written.

pub mod schema;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::decider::DeciderRegistry;
use schema::{compile_schema, is_identifier, FieldSpec, Schema, SchemaProblem};

/// A checked definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Definition {
    /// Name, e.g. `sales_order`.
    pub name: String,
    /// Version, starting at 1.
    pub version: u32,
    /// Free text for humans.
    pub description: String,
    /// The state a new instance starts in.
    pub initial: String,
    /// States by name.
    pub states: BTreeMap<String, StateDef>,
    /// Commands by name.
    pub commands: BTreeMap<String, CommandDef>,
    /// Who may start an instance and with what data.
    pub start: StartDef,
    /// Roles allowed to cancel an instance (default: `admin`).
    pub cancel_roles: Vec<String>,
    /// Roles that may send `owner_only` commands to any instance, as if they owned it
    /// (default: `admin`).
    pub owner_roles: Vec<String>,
    /// Roles allowed to read its instances — data, history, jobs, decision provenance
    /// (default: every role that may start, command or cancel them, plus `admin`).
    pub read_roles: Vec<String>,
    /// Job types its transitions may create.
    pub jobs: BTreeMap<String, JobDef>,
    /// Whose scripts decide for its instances: the active rule set's (the default) or the
    /// one's they started under.
    pub decisions: DecisionBinding,
    /// The file it was loaded from.
    pub source: String,
}

/// One state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDef {
    /// No command leaves a terminal state; an instance there is completed.
    pub terminal: bool,
    /// Free text for humans.
    pub description: String,
    /// Timers set when an instance enters the state, cancelled when it leaves it.
    pub timers: Vec<TimerDef>,
}

/// A timer declared on a state: when it falls due, the engine sends `command` to the
/// instance as the `system` actor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerDef {
    /// Name, unique within the state.
    pub name: String,
    /// When it falls due.
    pub due: TimerDue,
    /// The command sent; accepted in the state, allowed to `system`, no required payload.
    pub command: String,
}

/// When a timer falls due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimerDue {
    /// This long after the instance entered the state.
    After(chrono::Duration),
    /// At the time in this top-level data field: an RFC 3339 time, or a date
    /// (`YYYY-MM-DD`), meaning the end of that day (UTC).
    At(String),
}

/// Parses a duration such as `48h`, `7d`, `90m`, `30s` or `1d12h`.
pub fn parse_duration(text: &str) -> Option<chrono::Duration> {
    let mut total = chrono::Duration::zero();
    let mut digits = String::new();
    let mut any = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        let part = match c {
            'd' => chrono::Duration::try_days(n)?,
            'h' => chrono::Duration::try_hours(n)?,
            'm' => chrono::Duration::try_minutes(n)?,
            's' => chrono::Duration::try_seconds(n)?,
            _ => return None,
        };
        total = total.checked_add(&part)?;
        any = true;
    }
    (any && digits.is_empty() && total > chrono::Duration::zero()).then_some(total)
}

/// How instances start.
#[derive(Clone, Debug, PartialEq)]
pub struct StartDef {
    /// Roles allowed to start one.
    pub roles: Vec<String>,
    /// Schema of the initial data.
    pub payload: Schema,
    /// States besides `initial` a linked start may begin in (`[start] states`), e.g. a
    /// dispute opened as an inquiry or as a chargeback; declared and not terminal.
    pub states: Vec<String>,
}

/// One command (a transition, possibly with several outcomes).
#[derive(Clone, Debug, PartialEq)]
pub struct CommandDef {
    /// Command name, e.g. `submit`.
    pub name: String,
    /// States it may be sent in.
    pub from: Vec<String>,
    /// States it may lead to; the decider picks one (or the only one when there is no decider).
    pub to: Vec<String>,
    /// Roles allowed to send it.
    pub roles: Vec<String>,
    /// Only the instance's owner may send it, or an actor holding one of the definition's
    /// `owner_roles` (and the engine itself, acting as `system`).
    pub owner_only: bool,
    /// The decider that decides its outcome; `None` means "go to the only `to` state".
    pub decider: Option<String>,
    /// Schema of its payload.
    pub payload: Schema,
    /// Effects its decider may choose.
    pub effects: EffectsDef,
    /// Free text for humans.
    pub description: String,
}

/// Which rule-set version's deciders decide for an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionBinding {
    /// The version active when the decision is made.
    #[default]
    Latest,
    /// The version active when the instance started.
    Pinned,
}

/// A job type: what completes it and how failures are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobDef {
    /// Job type name.
    pub name: String,
    /// Command sent to the instance when the job completes (payload: the worker's result).
    pub complete: String,
    /// Failures allowed before an incident (default 3).
    pub retries: u32,
    /// Delay before the first retry (default 10 s); doubles with each failure.
    pub backoff: chrono::Duration,
}

/// The effects a command's decider may choose; anything else is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EffectsDef {
    /// Definitions it may start as linked child instances.
    pub start: Vec<String>,
    /// Definitions of linked instances (parent or children) it may update.
    pub update: Vec<String>,
    /// Named counters it may draw from.
    pub counters: Vec<String>,
    /// Named balances it may read and move.
    pub balances: Vec<String>,
    /// Job types it may create.
    pub jobs: Vec<String>,
    /// Commands it may send to linked instances, as `<definition>.<command>`.
    pub send: Vec<String>,
}

impl Definition {
    /// The command `name`, if declared.
    pub fn command(&self, name: &str) -> Option<&CommandDef> {
        self.commands.get(name)
    }

    /// Whether `state` is terminal (unknown states count as not terminal).
    pub fn is_terminal(&self, state: &str) -> bool {
        self.states.get(state).is_some_and(|s| s.terminal)
    }
}

/// Where a problem is, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionError {
    /// File path as given to the loader.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every problem found while loading a set of definitions.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// All loaded definitions, every version of each.
#[derive(Clone, Debug, Default)]
pub struct DefinitionSet {
    by_name: BTreeMap<String, BTreeMap<u32, Arc<Definition>>>,
}

impl DefinitionSet {
    /// Loads every `*.toml` file directly inside `dir` (sorted by name).
    pub fn load_dir(dir: &Path, deciders: &DeciderRegistry) -> Result<Self, DefinitionErrors> {
        let io_error = |message: String| {
            DefinitionErrors(vec![DefinitionError {
                file: dir.display().to_string(),
                line: 1,
                column: 1,
                message,
            }])
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| io_error(format!("cannot read the definitions directory: {e}")))?;
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| io_error(format!("cannot read the definitions directory: {e}")))?
                .path();
            if path.extension().is_some_and(|x| x == "toml") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut sources = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                DefinitionErrors(vec![DefinitionError {
                    file: path.display().to_string(),
                    line: 1,
                    column: 1,
                    message: format!("cannot read the file: {e}"),
                }])
            })?;
            sources.push((path.display().to_string(), text));
        }
        Self::from_sources(&sources, deciders)
    }

    /// Loads definitions from `(file name, TOML text)` pairs; the file name is used in errors.
    pub fn from_sources(
        sources: &[(String, String)],
        deciders: &DeciderRegistry,
    ) -> Result<Self, DefinitionErrors> {
        Self::load_sources(sources, Some(deciders))
    }

    /// Loads definitions that passed every check when their rule set was deployed, without
    /// the deciders that checked them (which need the scripts compiled): only to compare and
    /// index deployed versions, never to decide with.
    pub(crate) fn from_deployed_sources(
        sources: &[(String, String)],
    ) -> Result<Self, DefinitionErrors> {
        Self::load_sources(sources, None)
    }

    fn load_sources(
        sources: &[(String, String)],
        deciders: Option<&DeciderRegistry>,
    ) -> Result<Self, DefinitionErrors> {
        let mut errors = Vec::new();
        let mut parsed = Vec::new();
        for (file, text) in sources {
            let at = |span: std::ops::Range<usize>, message: String| {
                let (line, column) = line_col(text, span.start);
                DefinitionError {
                    file: file.clone(),
                    line,
                    column,
                    message,
                }
            };
            match toml::from_str::<DefinitionFile>(text) {
                Ok(f) => parsed.push((file.clone(), text.clone(), f)),
                Err(e) => errors.push(at(
                    e.span().unwrap_or(0..0),
                    e.message().trim().replace('\n', "; "),
                )),
            }
        }
        let mut set = DefinitionSet::default();
        let mut origin: BTreeMap<(String, u32), String> = BTreeMap::new();
        let mut pending = Vec::new();
        for (file, text, f) in &parsed {
            let mut problems = Vec::new();
            let def = check_file(file, f, deciders, &mut problems);
            let key = (def.name.clone(), def.version);
            if let Some(first) = origin.get(&key) {
                problems.push(SchemaProblem {
                    span: f.name.span(),
                    message: format!(
                        "definition `{}` version {} is defined twice (first in {first})",
                        def.name, def.version
                    ),
                });
            } else {
                origin.insert(key, file.clone());
            }
            pending.push((file, text, f, def, problems));
        }
        let names: BTreeSet<String> = pending.iter().map(|p| p.3.name.clone()).collect();
        let mut commands_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for p in &pending {
            let known = commands_of.entry(p.3.name.as_str()).or_default();
            known.extend(p.3.commands.keys().map(String::as_str));
        }
        let mut send_problems = Vec::new();
        for (_, _, f, _, _) in &pending {
            send_problems.push(check_sends(f, &commands_of));
        }
        for ((file, text, f, def, mut problems), sends) in pending.into_iter().zip(send_problems) {
            problems.extend(sends);
            for (cmd_name, cmd) in &f.commands {
                let Some(effects) = &cmd.get_ref().effects else {
                    continue;
                };
                for target in effects
                    .get_ref()
                    .start
                    .iter()
                    .chain(&effects.get_ref().update)
                {
                    if !names.contains(target) {
                        problems.push(SchemaProblem {
                            span: effects.span(),
                            message: format!(
                                "command `{cmd_name}`: effect names definition `{target}`, which is not loaded; loaded: {}",
                                names.iter().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        });
                    }
                }
            }
            if problems.is_empty() {
                set.by_name
                    .entry(def.name.clone())
                    .or_default()
                    .insert(def.version, Arc::new(def));
            }
            for p in problems {
                let (line, column) = line_col(text, p.span.start);
                errors.push(DefinitionError {
                    file: file.clone(),
                    line,
                    column,
                    message: p.message,
                });
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(DefinitionErrors(errors))
        }
    }

    /// Adds `definition` unless its name and version are already present; returns the one
    /// kept under that name and version.
    pub fn insert(&mut self, definition: Arc<Definition>) -> Arc<Definition> {
        self.by_name
            .entry(definition.name.clone())
            .or_default()
            .entry(definition.version)
            .or_insert(definition)
            .clone()
    }

    /// The highest version of `name`; new instances start on it.
    pub fn latest(&self, name: &str) -> Option<&Arc<Definition>> {
        self.by_name.get(name)?.values().next_back()
    }

    /// Version `version` of `name`.
    pub fn get(&self, name: &str, version: u32) -> Option<&Arc<Definition>> {
        self.by_name.get(name)?.get(&version)
    }

    /// Every definition, all versions, ordered by name then version.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.by_name.values().flat_map(|v| v.values())
    }

    /// Names of the loaded definitions.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionFile {
    name: Spanned<String>,
    version: Spanned<i64>,
    #[serde(default)]
    description: String,
    initial: Spanned<String>,
    start: Spanned<StartSpec>,
    #[serde(default)]
    cancel: Option<Spanned<CancelSpec>>,
    #[serde(default)]
    read: Option<Spanned<CancelSpec>>,
    #[serde(default)]
    owner: Option<Spanned<CancelSpec>>,
    states: BTreeMap<String, Spanned<StateSpec>>,
    #[serde(default)]
    commands: BTreeMap<String, Spanned<CommandSpec>>,
    #[serde(default)]
    jobs: BTreeMap<String, Spanned<JobSpec>>,
    #[serde(default)]
    decisions: DecisionBinding,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSpec {
    complete: String,
    retries: Option<u32>,
    backoff: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartSpec {
    roles: Spanned<Vec<String>>,
    #[serde(default)]
    payload: BTreeMap<String, Spanned<FieldSpec>>,
    #[serde(default)]
    states: Option<Spanned<Vec<String>>>,
}

/// `[cancel]`, `[read]` and `[owner]`: who may.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelSpec {
    roles: Spanned<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateSpec {
    #[serde(default)]
    terminal: bool,
    #[serde(default)]
    description: String,
    #[serde(default)]
    timers: Vec<Spanned<TimerSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimerSpec {
    name: String,
    after: Option<String>,
    at: Option<String>,
    command: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandSpec {
    from: Spanned<Vec<String>>,
    to: Spanned<Vec<String>>,
    roles: Spanned<Vec<String>>,
    #[serde(default)]
    owner_only: bool,
    decider: Option<Spanned<String>>,
    #[serde(default)]
    payload: BTreeMap<String, Spanned<FieldSpec>>,
    effects: Option<Spanned<EffectsSpec>>,
    #[serde(default)]
    description: String,
}

/// Each `effects.send` entry must be `<definition>.<command>` naming a loaded definition and a
/// command one of its versions declares.
fn check_sends(
    f: &DefinitionFile,
    commands_of: &BTreeMap<&str, BTreeSet<&str>>,
) -> Vec<SchemaProblem> {
    let mut problems = Vec::new();
    for (cmd_name, cmd) in &f.commands {
        let Some(effects) = &cmd.get_ref().effects else {
            continue;
        };
        for entry in &effects.get_ref().send {
            let message = match entry.split_once('.') {
                Some((def, command)) if is_identifier(def) && is_identifier(command) => {
                    match commands_of.get(def) {
                        None => Some(format!(
                            "command `{cmd_name}`: effects.send names definition `{def}`, which is not loaded; loaded: {}",
                            commands_of.keys().copied().collect::<Vec<_>>().join(", ")
                        )),
                        Some(known) if !known.contains(command) => Some(format!(
                            "command `{cmd_name}`: effects.send names `{entry}`, but `{def}` has no command `{command}`; it has: {}",
                            known.iter().copied().collect::<Vec<_>>().join(", ")
                        )),
                        Some(_) => None,
                    }
                }
                _ => Some(format!(
                    "command `{cmd_name}`: effects.send entry `{}` must be `<definition>.<command>`",
                    crate::error::clip(entry, 128)
                )),
            };
            if let Some(message) = message {
                problems.push(SchemaProblem {
                    span: effects.span(),
                    message,
                });
            }
        }
    }
    problems
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EffectsSpec {
    #[serde(default)]
    start: Vec<String>,
    #[serde(default)]
    update: Vec<String>,
    #[serde(default)]
    counters: Vec<String>,
    #[serde(default)]
    balances: Vec<String>,
    #[serde(default)]
    jobs: Vec<String>,
    #[serde(default)]
    send: Vec<String>,
}

fn check_roles(
    what: &str,
    roles: &Spanned<Vec<String>>,
    problems: &mut Vec<SchemaProblem>,
) -> Vec<String> {
    if roles.get_ref().is_empty() {
        problems.push(SchemaProblem {
            span: roles.span(),
            message: format!("{what}: `roles` is empty; name at least one role, e.g. [\"admin\"]"),
        });
    }
    let mut seen = BTreeSet::new();
    for role in roles.get_ref() {
        if !is_identifier(role) {
            problems.push(SchemaProblem {
                span: roles.span(),
                message: format!(
                    "{what}: role `{role}` is not an identifier (lower-case letters, digits, `_`)"
                ),
            });
        }
        if !seen.insert(role) {
            problems.push(SchemaProblem {
                span: roles.span(),
                message: format!("{what}: role `{role}` is listed twice"),
            });
        }
    }
    roles.get_ref().clone()
}

fn check_file(
    file: &str,
    f: &DefinitionFile,
    deciders: Option<&DeciderRegistry>,
    problems: &mut Vec<SchemaProblem>,
) -> Definition {
    let mut problem = |span: std::ops::Range<usize>, message: String| {
        problems.push(SchemaProblem { span, message })
    };
    let name = f.name.get_ref().clone();
    if !is_identifier(&name) {
        problem(
            f.name.span(),
            format!("definition name `{name}` is not an identifier; use lower-case letters, digits and `_`, starting with a letter"),
        );
    }
    let version = match u32::try_from(*f.version.get_ref()) {
        Ok(v) if v >= 1 => v,
        _ => {
            problem(
                f.version.span(),
                format!(
                    "version must be a whole number from 1 up, got {}",
                    f.version.get_ref()
                ),
            );
            1
        }
    };
    if f.states.is_empty() {
        problem(
            f.name.span(),
            "`states` is empty; declare at least the initial state".into(),
        );
    }
    for (state, spec) in &f.states {
        if !is_identifier(state) {
            problem(
                spec.span(),
                format!(
                    "state name `{state}` is not an identifier (lower-case letters, digits, `_`)"
                ),
            );
        }
    }
    let initial = f.initial.get_ref().clone();
    match f.states.get(&initial) {
        None => problem(
            f.initial.span(),
            format!(
                "initial state `{initial}` is not declared in [states]; declared: {}",
                list(f.states.keys())
            ),
        ),
        Some(s) if s.get_ref().terminal => problem(
            f.initial.span(),
            format!("initial state `{initial}` is terminal; an instance could never move"),
        ),
        Some(_) => {}
    }

    let mut start_states = Vec::new();
    if let Some(states) = &f.start.get_ref().states {
        for name in states.get_ref() {
            match f.states.get(name) {
                None => problem(
                    states.span(),
                    format!(
                        "[start] states: `{name}` is not declared in [states]; declared: {}",
                        list(f.states.keys())
                    ),
                ),
                Some(s) if s.get_ref().terminal => problem(
                    states.span(),
                    format!("[start] states: `{name}` is terminal; an instance could never move"),
                ),
                Some(_) if *name != initial && !start_states.contains(name) => {
                    start_states.push(name.clone())
                }
                Some(_) => {}
            }
        }
    }
    let start_roles = check_roles("[start]", &f.start.get_ref().roles, problems);
    let mut schema_problems = Vec::new();
    let start_payload = compile_schema(&f.start.get_ref().payload, &mut schema_problems);
    let cancel_roles = match &f.cancel {
        Some(c) => check_roles("[cancel]", &c.get_ref().roles, problems),
        None => vec!["admin".to_string()],
    };
    let owner_roles = match &f.owner {
        Some(o) => check_roles("[owner]", &o.get_ref().roles, problems),
        None => vec![crate::model::roles::ADMIN.to_string()],
    };

    let mut commands = BTreeMap::new();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut problem = |span: std::ops::Range<usize>, message: String| {
        problems.push(SchemaProblem { span, message })
    };
    for (cmd_name, spanned) in &f.commands {
        let cmd = spanned.get_ref();
        let what = format!("command `{cmd_name}`");
        if !is_identifier(cmd_name) {
            problem(
                spanned.span(),
                format!("{what}: the name is not an identifier (lower-case letters, digits, `_`)"),
            );
        }
        if cmd.from.get_ref().is_empty() {
            problem(
                cmd.from.span(),
                format!("{what}: `from` is empty; name the states it may be sent in"),
            );
        }
        for s in cmd.from.get_ref() {
            match f.states.get(s) {
                None => problem(
                    cmd.from.span(),
                    format!("{what}: `from` names unknown state `{s}`; declared: {}", list(f.states.keys())),
                ),
                Some(st) if st.get_ref().terminal => problem(
                    cmd.from.span(),
                    format!("{what}: `from` names terminal state `{s}`; no command may leave a terminal state"),
                ),
                Some(_) => {}
            }
        }
        if cmd.to.get_ref().is_empty() {
            problem(
                cmd.to.span(),
                format!("{what}: `to` is empty; name the states it may lead to"),
            );
        }
        for s in cmd.to.get_ref() {
            if !f.states.contains_key(s) {
                problem(
                    cmd.to.span(),
                    format!(
                        "{what}: `to` names unknown state `{s}`; declared: {}",
                        list(f.states.keys())
                    ),
                );
            }
        }
        for s in cmd.from.get_ref() {
            edges
                .entry(s.as_str())
                .or_default()
                .extend(cmd.to.get_ref().iter().map(String::as_str));
        }
        match &cmd.decider {
            Some(d) => match deciders {
                Some(r) if r.rejection(d.get_ref()).is_some() => problem(
                    d.span(),
                    format!(
                        "{what}: decider `{}`: {}",
                        d.get_ref(),
                        r.rejection(d.get_ref()).unwrap_or_default()
                    ),
                ),
                Some(r) if !r.contains(d.get_ref()) => problem(
                    d.span(),
                    format!(
                        "{what}: decider `{}` is not registered; registered deciders: {}",
                        d.get_ref(),
                        list(r.names())
                    ),
                ),
                _ => {}
            },
            None if cmd.to.get_ref().len() != 1 => problem(
                cmd.to.span(),
                format!(
                    "{what}: without a `decider`, `to` must name exactly one state (it names {})",
                    cmd.to.get_ref().len()
                ),
            ),
            _ => {}
        }
        let effects = match &cmd.effects {
            Some(e) => {
                let named = [
                    ("counter", &e.get_ref().counters),
                    ("balance", &e.get_ref().balances),
                ];
                for (kind, names) in named {
                    for c in names {
                        if !is_identifier(c) {
                            problem(
                                e.span(),
                                format!("{what}: {kind} name `{c}` is not an identifier"),
                            );
                        }
                    }
                }
                for j in &e.get_ref().jobs {
                    if !f.jobs.contains_key(j) {
                        problem(
                            e.span(),
                            format!(
                                "{what}: job type `{j}` is not declared in [jobs]; declared: {}",
                                list(f.jobs.keys())
                            ),
                        );
                    }
                }
                EffectsDef {
                    start: e.get_ref().start.clone(),
                    update: e.get_ref().update.clone(),
                    counters: e.get_ref().counters.clone(),
                    balances: e.get_ref().balances.clone(),
                    jobs: e.get_ref().jobs.clone(),
                    send: e.get_ref().send.clone(),
                }
            }
            None => EffectsDef::default(),
        };
        let roles = {
            let mut role_problems = Vec::new();
            let r = check_roles(&what, &cmd.roles, &mut role_problems);
            for p in role_problems {
                problem(p.span, p.message);
            }
            r
        };
        let payload = compile_schema(&cmd.payload, &mut schema_problems);
        commands.insert(
            cmd_name.clone(),
            CommandDef {
                name: cmd_name.clone(),
                from: cmd.from.get_ref().clone(),
                to: cmd.to.get_ref().clone(),
                roles,
                owner_only: cmd.owner_only,
                decider: cmd.decider.as_ref().map(|d| d.get_ref().clone()),
                payload,
                effects,
                description: cmd.description.clone(),
            },
        );
    }

    // Jobs: a completion command the system may send.
    let mut jobs = BTreeMap::new();
    for (name, spec) in &f.jobs {
        let span = spec.span();
        let job = spec.get_ref();
        let what = format!("job `{name}`");
        if !is_identifier(name) {
            problem(
                span.clone(),
                format!("{what}: the name is not an identifier (lower-case letters, digits, `_`)"),
            );
        }
        match f.commands.get(&job.complete) {
            None => problem(span.clone(), format!("{what}: completion command `{}` is not declared", job.complete)),
            Some(cmd) if !cmd.get_ref().roles.get_ref().iter().any(|r| r == "system") => problem(
                span.clone(),
                format!("{what}: completion command `{}` must allow the role `system`, which completed jobs act as", job.complete),
            ),
            Some(_) => {}
        }
        let backoff = match &job.backoff {
            None => chrono::Duration::seconds(10),
            Some(text) => parse_duration(text).unwrap_or_else(|| {
                problem(span.clone(), format!("{what}: `backoff` = \"{text}\" is not a duration; write e.g. \"10s\", \"5m\""));
                chrono::Duration::seconds(10)
            }),
        };
        jobs.insert(
            name.clone(),
            JobDef {
                name: name.clone(),
                complete: job.complete.clone(),
                retries: job.retries.unwrap_or(3),
                backoff,
            },
        );
    }

    // Timers: a known command, accepted in the state, allowed to `system`, no required payload.
    let mut timers: BTreeMap<&str, Vec<TimerDef>> = BTreeMap::new();
    for (state, spec) in &f.states {
        let mut names = BTreeSet::new();
        for t in &spec.get_ref().timers {
            let span = t.span();
            let timer = t.get_ref();
            let what = format!("state `{state}`: timer `{}`", timer.name);
            if !names.insert(timer.name.as_str()) {
                problem(span.clone(), format!("{what} is declared twice"));
            }
            let due = match (&timer.after, &timer.at) {
                (Some(after), None) => match parse_duration(after) {
                    Some(d) => Some(TimerDue::After(d)),
                    None => {
                        problem(span.clone(), format!("{what}: `after` = \"{after}\" is not a duration; write e.g. \"48h\", \"7d\", \"1d12h\", \"90m\""));
                        None
                    }
                },
                (None, Some(at)) if is_identifier(at) => Some(TimerDue::At(at.clone())),
                (None, Some(at)) => {
                    problem(
                        span.clone(),
                        format!("{what}: `at` = \"{at}\" must name a top-level data field"),
                    );
                    None
                }
                _ => {
                    problem(span.clone(), format!("{what}: give exactly one of `after` (a duration) or `at` (a data field holding a date or time)"));
                    None
                }
            };
            match f.commands.get(&timer.command) {
                None => problem(
                    span.clone(),
                    format!("{what}: command `{}` is not declared", timer.command),
                ),
                Some(cmd) => {
                    let cmd = cmd.get_ref();
                    if !cmd.from.get_ref().contains(state) {
                        problem(span.clone(), format!("{what}: command `{}` is not accepted in state `{state}` (its `from` is: {})", timer.command, cmd.from.get_ref().join(", ")));
                    }
                    if !cmd.roles.get_ref().iter().any(|r| r == "system") {
                        problem(span.clone(), format!("{what}: command `{}` must allow the role `system`, which timers act as", timer.command));
                    }
                    if cmd
                        .payload
                        .values()
                        .any(|f| f.get_ref().required.unwrap_or(true))
                    {
                        problem(span.clone(), format!("{what}: command `{}` has required payload fields, but a timer sends an empty payload", timer.command));
                    }
                }
            }
            if let Some(due) = due {
                timers.entry(state.as_str()).or_default().push(TimerDef {
                    name: timer.name.clone(),
                    due,
                    command: timer.command.clone(),
                });
            }
        }
    }

    // Reachability from the initial state, and dead ends.
    let mut reached: BTreeSet<&str> = BTreeSet::new();
    let mut queue = VecDeque::from([initial.as_str()]);
    queue.extend(start_states.iter().map(String::as_str));
    while let Some(s) = queue.pop_front() {
        if reached.insert(s) {
            queue.extend(edges.get(s).into_iter().flatten().copied());
        }
    }
    for (state, spec) in &f.states {
        if f.states.contains_key(&initial) && !reached.contains(state.as_str()) {
            problem(
                spec.span(),
                format!("state `{state}` is unreachable: no chain of commands leads to it from the initial state `{initial}`"),
            );
        } else if !spec.get_ref().terminal && !edges.contains_key(state.as_str()) {
            problem(
                spec.span(),
                format!("state `{state}` is not terminal but no command leaves it; add a command from it or mark it `terminal = true`"),
            );
        }
    }
    problems.extend(schema_problems);
    let command_roles: Vec<String> = commands
        .values()
        .flat_map(|c: &CommandDef| c.roles.iter().cloned())
        .collect();
    let read_roles = match &f.read {
        Some(r) => check_roles("[read]", &r.get_ref().roles, problems),
        None => default_read_roles(&start_roles, &cancel_roles, &command_roles),
    };

    Definition {
        name,
        version,
        description: f.description.clone(),
        initial,
        states: f
            .states
            .iter()
            .map(|(k, v)| {
                let v = v.get_ref();
                (
                    k.clone(),
                    StateDef {
                        terminal: v.terminal,
                        description: v.description.clone(),
                        timers: timers.remove(k.as_str()).unwrap_or_default(),
                    },
                )
            })
            .collect(),
        commands,
        start: StartDef {
            roles: start_roles,
            payload: start_payload,
            states: start_states,
        },
        read_roles,
        cancel_roles,
        owner_roles,
        jobs,
        decisions: f.decisions,
        source: file.to_string(),
    }
}

/// Who may read instances when a definition does not say: whoever may act on them, and
/// `admin`.
fn default_read_roles(start: &[String], cancel: &[String], commands: &[String]) -> Vec<String> {
    let mut roles: Vec<String> = start
        .iter()
        .chain(cancel)
        .chain(commands)
        .cloned()
        .chain(std::iter::once(crate::model::roles::ADMIN.to_string()))
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

fn list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&str> = items.into_iter().map(String::as_str).collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}
