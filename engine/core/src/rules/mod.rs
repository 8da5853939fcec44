//! Rule sets: the definitions, Rhai scripts and reference data of a rules directory, compiled
//! once and checked together, and the Rhai deciders they provide.
//!
//! Layout of a rules directory:
//!
//! | path | what |
//! |---|---|
//! | `definitions/*.toml` | workflow definitions (see `ARCHITECTURE.md`) |
//! | `scripts/*.rhai` | decider scripts: every function `f(instance, payload, actor)` in `scripts/NAME.rhai` is the decider `NAME::f` |
//! | `scripts/lib/*.rhai` | helper functions, available in every decider script |
//! | `data/*.json` | reference data, read-only in scripts as `data("NAME")` |
//! | `tests/*.toml` | example-based tests of the deciders (see [`testing`]) |
//!
//! A decider function receives `instance` (`id`, `definition`, `version`, `state`,
//! `business_key`, `data`, `parent`), `payload` and `actor` (`id`, `roles`) and returns a map:
//! `state` (next state, required), `reason` (required), `changes` (a merge patch), `effects` (a
//! list of `#{ start, business_key, data }`, `#{ update, changes, reason }`,
//! `#{ counter, key, limit, assign: #{ field, prefix, width } }`, `#{ job, payload }`).
//! Money arrives as decimal strings; `decimal(x)` makes an exact `Decimal`, and a `Decimal` in
//! the result is written back as a decimal string. Nothing passes through floating point.

pub mod backtest;
mod convert;
mod sandbox;
pub mod testing;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rhai::{CallFnOptions, Dynamic, EvalAltResult, Map, Scope, AST};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::decider::{
    Balances, CounterAssign, Counters, DecideError, Decider, DeciderRegistry, Decision,
    DecisionContext, Effect, LinkedTarget, SourceLocation,
};
use crate::definition::{line_col, DefinitionError, DefinitionErrors, DefinitionSet};
use crate::model::{Instance, InstanceId, Provenance, ProvenanceInputs};
pub use convert::{to_dynamic, to_json};
pub use sandbox::RuleLimits;

/// A loaded, checked rule set.
pub struct RuleSet {
    /// Content version: a digest of every file in the rule set.
    pub version: String,
    /// Its definitions.
    pub definitions: DefinitionSet,
    /// Its deciders (the Rhai ones plus any Rust deciders given at load).
    pub deciders: DeciderRegistry,
    /// Its example tests.
    pub tests: Vec<testing::RuleTest>,
    /// Its files (relative path → text), as loaded: what a deployment keeps in the store.
    pub files: BTreeMap<String, String>,
    compiled: Arc<Compiled>,
}

/// The subdirectories and extensions a rule set is read from.
const RULE_FILES: [(&str, &str); 5] = [
    ("definitions", "toml"),
    ("scripts", "rhai"),
    ("scripts/lib", "rhai"),
    ("data", "json"),
    ("tests", "toml"),
];

/// The script that routes notifications, and its function (`fn route(event)`).
pub const NOTIFY_SCRIPT: &str = "notify";
/// See [`NOTIFY_SCRIPT`].
pub const NOTIFY_FUNCTION: &str = "route";

/// Most example tests a rule set may hold.
pub const TESTS_MAX: usize = 1000;

/// The least wall-clock deadline a rule test's evaluation gets (see `RuleSet::evaluate_test`).
pub const TEST_DEADLINE_MIN: std::time::Duration = std::time::Duration::from_secs(2);

/// What a rule-set file may be, for messages.
pub const RULE_FILE_KINDS: &str =
    "definitions/*.toml, scripts/*.rhai, scripts/lib/*.rhai, data/*.json, tests/*.toml";

/// Whether `path` (relative to a rule set's root) is a file a rule set reads.
pub fn is_rule_file_path(path: &str) -> bool {
    RULE_FILES.iter().any(|(sub, ext)| {
        path.strip_prefix(sub)
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|name| name.strip_suffix(&format!(".{ext}")))
            .is_some_and(|stem| {
                !stem.is_empty()
                    && !stem.contains('/')
                    && !stem.contains("..")
                    && !stem.starts_with('.')
            })
    })
}

/// The compiled scripts, shared by the rule set's deciders.
struct Compiled {
    engine: rhai::Engine,
    /// Built on the first limit error; see `sandbox::build_locator`.
    locator: std::sync::OnceLock<rhai::Engine>,
    limits: RuleLimits,
    version: String,
    data_version: String,
    /// Script name → compiled script (its own functions merged over the helpers).
    scripts: BTreeMap<String, Script>,
    /// Reference data by file stem, shared so evaluations do not copy it.
    data: Dynamic,
    /// Helper function name → the `scripts/lib` file defining it.
    lib_files: BTreeMap<String, String>,
}

struct Script {
    file: String,
    ast: AST,
    /// The functions the script defines itself (they win over helpers of the same name).
    own: std::collections::BTreeSet<String>,
}

/// What a decider function is given, as JSON.
#[derive(Clone, Debug)]
pub struct DecisionInput {
    /// The instance map (`id`, `definition`, `version`, `state`, `business_key`, `data`,
    /// `parent`).
    pub instance: Value,
    /// The payload.
    pub payload: Value,
    /// The actor (`id`, `roles`).
    pub actor: Value,
    /// The engine clock's time.
    pub now: DateTime<Utc>,
    /// The counters the decider may read (`counter_value`); what it reads is remembered.
    pub counters: Counters,
    /// The balances the decider may read (`balance_value`); what it reads is remembered.
    pub balances: Balances,
}

fn problem(file: &Path, line: usize, column: usize, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        file: file.display().to_string(),
        line,
        column,
        message: message.into(),
    }
}

fn read_dir_sorted(dir: &Path, extension: &str) -> Result<Vec<PathBuf>, DefinitionError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| problem(dir, 1, 1, format!("cannot read the directory: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| problem(dir, 1, 1, format!("cannot read the directory: {e}")))?
            .path();
        if path.is_file() && path.extension().is_some_and(|x| x == extension) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl RuleSet {
    /// Loads and checks the rules directory `dir`: compiles every script, loads reference
    /// data, registers every 3-parameter script function as a decider next to `rust_deciders`,
    /// loads the definitions against them and parses the tests. Every problem is reported as
    /// `file:line:col: message`; nothing is returned unless all is well.
    pub fn load(
        dir: &Path,
        rust_deciders: DeciderRegistry,
        limits: RuleLimits,
    ) -> Result<RuleSet, DefinitionErrors> {
        let (files, problems) = read_files(dir);
        Self::build(files, problems, rust_deciders, limits)
    }

    /// Loads a rule set from its files (relative path → text), e.g. a version kept in the
    /// store.
    pub fn from_files(
        files: BTreeMap<String, String>,
        rust_deciders: DeciderRegistry,
        limits: RuleLimits,
    ) -> Result<RuleSet, DefinitionErrors> {
        Self::build(files, Vec::new(), rust_deciders, limits)
    }

    /// Files are named by their path relative to the rule set's root everywhere — in
    /// problems, provenance and definitions' `source` — never by where the directory lives on
    /// the machine that loaded it.
    fn build(
        files: BTreeMap<String, String>,
        mut problems: Vec<DefinitionError>,
        rust_deciders: DeciderRegistry,
        limits: RuleLimits,
    ) -> Result<RuleSet, DefinitionErrors> {
        let select = |sub: &str, ext: &str| -> Vec<(PathBuf, String)> {
            files
                .iter()
                .filter(|(rel, _)| {
                    rel.strip_prefix(sub)
                        .and_then(|r| r.strip_prefix('/'))
                        .is_some_and(|name| {
                            !name.contains('/') && name.ends_with(&format!(".{ext}"))
                        })
                })
                .map(|(rel, text)| (PathBuf::from(rel), text.clone()))
                .collect()
        };
        let mut hasher = Sha256::new();
        let mut hash_file = |path: &Path, text: &str| {
            hasher.update(path.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
        };
        let engine = sandbox::build_engine(&limits);

        // Helpers first: their functions are merged under every decider script. Which file
        // each comes from is kept, so an error inside one is reported there.
        let mut lib = AST::empty();
        let mut lib_files = BTreeMap::new();
        for (path, text) in select("scripts/lib", "rhai") {
            hash_file(&path, &text);
            match compile(&engine, &path, &text) {
                Ok(ast) => {
                    for f in ast.iter_functions() {
                        lib_files.insert(f.name.to_string(), path.display().to_string());
                    }
                    lib = lib.merge(&ast);
                }
                Err(p) => problems.push(p),
            }
        }

        let mut deciders = rust_deciders;
        let mut scripts = BTreeMap::new();
        let mut decider_names = Vec::new();
        for (path, text) in select("scripts", "rhai") {
            hash_file(&path, &text);
            let name = stem(&path);
            let ast = match compile(&engine, &path, &text) {
                Ok(ast) => ast,
                Err(p) => {
                    problems.push(p);
                    continue;
                }
            };
            for f in ast.iter_functions() {
                let full = format!("{name}::{}", f.name);
                if f.params.len() == 3 {
                    decider_names.push(full);
                } else {
                    deciders.reject(
                        full,
                        format!(
                            "function `{}` in {} takes {} parameter(s); a decider takes 3: (instance, payload, actor)",
                            f.name,
                            path.display(),
                            f.params.len()
                        ),
                    );
                }
            }
            if name == NOTIFY_SCRIPT
                && !ast
                    .iter_functions()
                    .any(|f| f.name == NOTIFY_FUNCTION && f.params.len() == 1)
            {
                problems.push(problem(
                    &path,
                    1,
                    1,
                    format!("the notification router needs `fn {NOTIFY_FUNCTION}(event)`"),
                ));
            }
            let own = ast.iter_functions().map(|f| f.name.to_string()).collect();
            scripts.insert(
                name,
                Script {
                    file: path.display().to_string(),
                    ast: lib.merge(&ast),
                    own,
                },
            );
        }

        let mut data = Map::new();
        let mut data_hasher = Sha256::new();
        for (path, text) in select("data", "json") {
            hash_file(&path, &text);
            data_hasher.update(stem(&path).as_bytes());
            data_hasher.update(text.as_bytes());
            match crate::json::from_str(&text) {
                Ok(v) => {
                    data.insert(stem(&path).into(), to_dynamic(&v).into_shared());
                }
                Err(e) => problems.push(problem(
                    &path,
                    e.line(),
                    e.column(),
                    format!("invalid JSON: {e}"),
                )),
            }
        }

        let mut definition_sources = Vec::new();
        for (path, text) in select("definitions", "toml") {
            hash_file(&path, &text);
            definition_sources.push((path.display().to_string(), text));
        }
        let mut test_sources = Vec::new();
        for (path, text) in select("tests", "toml") {
            hash_file(&path, &text);
            test_sources.push((path, text));
        }
        let version = format!("sha256:{}", hex(&hasher.finalize()[..8]));
        let compiled = Arc::new(Compiled {
            engine,
            locator: std::sync::OnceLock::new(),
            limits,
            version: version.clone(),
            data_version: format!("sha256:{}", hex(&data_hasher.finalize()[..8])),
            scripts,
            data: Dynamic::from_map(data).into_shared(),
            lib_files,
        });
        for name in decider_names {
            let (script, function) = name.split_once("::").expect("script::function");
            deciders.register(
                name.clone(),
                RhaiDecider {
                    compiled: compiled.clone(),
                    script: script.to_string(),
                    function: function.to_string(),
                },
            );
        }
        let definitions = match DefinitionSet::from_sources(&definition_sources, &deciders) {
            Ok(d) => d,
            Err(DefinitionErrors(errors)) => {
                problems.extend(errors);
                DefinitionSet::default()
            }
        };
        let mut tests = Vec::new();
        for (path, text) in &test_sources {
            match testing::parse(path, text) {
                Ok(mut t) => tests.append(&mut t),
                Err(mut p) => problems.append(&mut p),
            }
        }
        if tests.len() > TESTS_MAX {
            if let Some(extra) = tests.get(TESTS_MAX) {
                problems.push(problem(
                    Path::new(&extra.file),
                    extra.line,
                    1,
                    format!(
                        "a rule set holds at most {TESTS_MAX} tests; this one has {}",
                        tests.len()
                    ),
                ));
            }
        }
        let routes = compiled.scripts.contains_key(NOTIFY_SCRIPT);
        for test in &tests {
            let known =
                deciders.contains(&test.function) || (routes && testing::is_router(&test.function));
            if !known {
                problems.push(problem(
                    Path::new(&test.file),
                    test.line,
                    1,
                    format!(
                        "test `{}` names function `{}`, which is not a decider of this rule set",
                        test.name, test.function
                    ),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(DefinitionErrors(problems));
        }
        Ok(RuleSet {
            version,
            definitions,
            deciders,
            tests,
            files,
            compiled,
        })
    }

    /// Evaluates the decider `name` (`script::function`) on `input`, as a dry run.
    pub fn evaluate(
        &self,
        name: &str,
        input: &DecisionInput,
    ) -> Result<(Decision, Value), DecideError> {
        let (script, function) = name.split_once("::").ok_or_else(|| {
            DecideError::new(format!(
                "`{name}` is not a script function; write script::function"
            ))
        })?;
        if !self.deciders.contains(name) {
            return Err(DecideError::new(format!(
                "`{name}` is not a decider of this rule set"
            )));
        }
        self.compiled
            .call(script, function, input, self.compiled.limits.deadline)
    }

    /// [`RuleSet::evaluate`] for the rule set's own tests: the same limits, but a wall-clock
    /// deadline of at least [`TEST_DEADLINE_MIN`]. A test's outcome should not depend on how
    /// busy the machine is; a runaway script is still stopped by the operation limit.
    pub(crate) fn evaluate_test(
        &self,
        name: &str,
        input: &DecisionInput,
    ) -> Result<(Decision, Value), DecideError> {
        match name.split_once("::") {
            Some((script, function)) if self.deciders.contains(name) => {
                let deadline = self.compiled.limits.deadline.max(TEST_DEADLINE_MIN);
                self.compiled.call(script, function, input, deadline)
            }
            // Not a decider: the same error a live evaluation gives.
            _ => self.evaluate(name, input),
        }
    }

    /// Whether the rule set routes notifications (`scripts/notify.rhai` defines `route`).
    pub fn routes_notifications(&self) -> bool {
        self.compiled.scripts.contains_key(NOTIFY_SCRIPT)
    }

    /// Runs the notification router, `notify::route(event)`, on one change; its result as
    /// JSON (a list of messages; see [`crate::notification`]). `None` when the rule set has no
    /// `scripts/notify.rhai`. `deadline_min` raises the wall-clock deadline (rule tests).
    pub fn route_notifications(
        &self,
        event: &Value,
        now: DateTime<Utc>,
        deadline_min: std::time::Duration,
    ) -> Option<Result<Value, DecideError>> {
        let script = self.compiled.scripts.get(NOTIFY_SCRIPT)?;
        let nothing = Some(Vec::new());
        let counters = Counters::live(Arc::new(|_: &str, _: &str| Ok(0)), nothing.clone());
        let balances = Balances::live(
            Arc::new(|_: &str, _: &str| Ok(rust_decimal::Decimal::ZERO)),
            nothing,
        );
        let deadline = self.compiled.limits.deadline.max(deadline_min);
        Some(self.compiled.run(
            script,
            NOTIFY_FUNCTION,
            &|| vec![to_dynamic(event)],
            (now, deadline),
            (&counters, &balances),
        ))
    }

    /// The scripts' limits.
    pub fn limits(&self) -> &RuleLimits {
        &self.compiled.limits
    }
}

/// Reads a rules directory's files (relative path → text), with a problem per file or
/// directory that cannot be read.
fn read_files(dir: &Path) -> (BTreeMap<String, String>, Vec<DefinitionError>) {
    let mut problems = Vec::new();
    let mut files = BTreeMap::new();
    if !dir.exists() {
        problems.push(problem(dir, 1, 1, "the rules directory does not exist"));
    }
    for (sub, ext) in RULE_FILES {
        let found = read_dir_sorted(&dir.join(sub), ext).unwrap_or_else(|p| {
            problems.push(p);
            Vec::new()
        });
        for path in found {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let name = path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    files.insert(format!("{sub}/{name}"), text);
                }
                Err(e) => problems.push(problem(&path, 1, 1, format!("cannot read the file: {e}"))),
            }
        }
    }
    (files, problems)
}

/// A digest of a rules directory's files, cheap to compare (nothing is compiled): used to
/// notice that the directory changed.
pub fn files_digest(dir: &Path) -> String {
    let (files, problems) = read_files(dir);
    let mut hasher = Sha256::new();
    for (path, text) in &files {
        hasher.update(path.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    for p in &problems {
        hasher.update(p.to_string().as_bytes());
    }
    hex(&hasher.finalize()[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn compile(engine: &rhai::Engine, path: &Path, text: &str) -> Result<AST, DefinitionError> {
    match engine.compile(text) {
        Ok(mut ast) => {
            ast.set_source(path.display().to_string());
            Ok(ast)
        }
        Err(e) => {
            let pos = e.position();
            Err(problem(
                path,
                pos.line().unwrap_or(1),
                pos.position().unwrap_or(1),
                format!("syntax error: {}", e.err_type()),
            ))
        }
    }
}

impl Compiled {
    fn call(
        &self,
        script: &str,
        function: &str,
        input: &DecisionInput,
        deadline: std::time::Duration,
    ) -> Result<(Decision, Value), DecideError> {
        let script_def = self
            .scripts
            .get(script)
            .ok_or_else(|| DecideError::new(format!("no script `{script}` in this rule set")))?;
        let args = || {
            vec![
                to_dynamic(&input.instance),
                to_dynamic(&input.payload),
                to_dynamic(&input.actor),
            ]
        };
        let outputs = self.run(
            script_def,
            function,
            &args,
            (input.now, deadline),
            (&input.counters, &input.balances),
        )?;
        if let Some(refusal) = refusal_from(&outputs) {
            return Err(refusal.unwrap_or_else(|m| {
                DecideError::new(format!(
                    "{}: function `{function}` returned an invalid refusal: {m}",
                    script_def.file
                ))
            }));
        }
        let decision = decision_from(&outputs).map_err(|m| {
            DecideError::new(format!(
                "{}: function `{function}` returned an invalid decision: {m}",
                script_def.file
            ))
        })?;
        Ok((decision, outputs))
    }

    /// Calls `function` of `script_def` with `args` under the sandbox's limits, and returns
    /// its result as JSON; a script error is located at its `file:line:col`.
    fn run(
        &self,
        script_def: &Script,
        function: &str,
        args: &dyn Fn() -> Vec<Dynamic>,
        (now, deadline): (DateTime<Utc>, std::time::Duration),
        ledgers: (&Counters, &Balances),
    ) -> Result<Value, DecideError> {
        let run = |engine: &rhai::Engine| {
            let mut scope = Scope::new();
            sandbox::with_evaluation(now, deadline, &self.data, ledgers, || {
                engine.call_fn_with_options::<Dynamic>(
                    CallFnOptions::new().eval_ast(false).rewind_scope(true),
                    &mut scope,
                    &script_def.ast,
                    function,
                    args(),
                )
            })
        };
        // Every helper is total, so nothing here should panic; if something still does, the
        // evaluation fails like a script error (with the last position the locator stepped on)
        // instead of taking the caller's task — or a timer task — down with it.
        let guarded = |engine: &rhai::Engine| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(engine)))
        };
        let locate = || {
            let locator = self
                .locator
                .get_or_init(|| sandbox::build_locator(&self.limits));
            sandbox::take_last_position();
            let _ = guarded(locator);
            sandbox::take_last_position()
        };
        let result = match guarded(&self.engine) {
            Ok(result) => result.map_err(|e| {
                let located = if e.is_system_exception() {
                    locate()
                } else {
                    None
                };
                self.describe(&e, script_def, function, located, deadline)
            })?,
            Err(panic) => {
                let what = crate::error::panic_message(&*panic);
                let location = locate().map(|(located_function, line, column)| SourceLocation {
                    file: self.file_of(script_def, &located_function),
                    line,
                    column,
                });
                let place = location
                    .as_ref()
                    .map_or_else(|| script_def.file.clone(), ToString::to_string);
                return Err(DecideError::Failed {
                    message: format!(
                        "{place}: function `{function}`: the evaluation failed inside the engine ({}); this is a bug, please report it",
                        crate::error::clip(&what, 200)
                    ),
                    location,
                });
            }
        };
        to_json(&result, "result").map_err(|m| {
            DecideError::new(format!(
                "{}: function `{function}` returned an invalid result: {m}",
                script_def.file
            ))
        })
    }

    /// `file:line:col: function `f`: what went wrong (and which limit)`, with the place as a
    /// value too.
    fn describe(
        &self,
        error: &EvalAltResult,
        script: &Script,
        function: &str,
        located: Option<(String, usize, usize)>,
        deadline: std::time::Duration,
    ) -> DecideError {
        // Walk into the calls: each call site lies in the file of the function making it, and
        // the innermost error in the file of the function it happened in.
        let mut current = script.file.clone();
        let mut source = current.clone();
        let mut err = error;
        let mut pos = err.position();
        while let EvalAltResult::ErrorInFunctionCall(name, _, inner, p) = err {
            if !p.is_none() {
                pos = *p;
                source = current.clone();
            }
            current = self.file_of(script, name);
            err = inner;
        }
        if !err.position().is_none() {
            pos = err.position();
            source = current;
        }
        let l = &self.limits;
        let message = match err {
            EvalAltResult::ErrorTooManyOperations(_) => {
                format!("operation limit exceeded (at most {} operations per evaluation)", l.operations)
            }
            EvalAltResult::ErrorStackOverflow(_) => {
                format!("call depth limit exceeded (at most {} nested calls)", l.call_levels)
            }
            EvalAltResult::ErrorDataTooLarge(what, _) => format!(
                "size limit exceeded: {what} (strings up to {} bytes, arrays up to {} items, maps up to {} entries)",
                l.string_bytes, l.array_items, l.map_items
            ),
            EvalAltResult::ErrorTerminated(token, _) if token.to_string() == sandbox::DEADLINE_TOKEN => {
                format!("deadline exceeded (at most {} ms per evaluation)", deadline.as_millis())
            }
            EvalAltResult::ErrorFunctionNotFound(sig, _) if sig.starts_with(function) && error.position().is_none() => {
                format!("no function `{function}` with 3 parameters (instance, payload, actor)")
            }
            EvalAltResult::ErrorRuntime(token, _) => token.to_string(),
            other => strip_position(&other.to_string()),
        };
        let location = match (located, pos.line()) {
            (Some((located_function, line, column)), _) => Some(SourceLocation {
                file: self.file_of(script, &located_function),
                line,
                column,
            }),
            (None, Some(line)) => Some(SourceLocation {
                file: source.clone(),
                line,
                column: pos.position().unwrap_or(1),
            }),
            (None, None) => None,
        };
        let text = match &location {
            Some(l) => format!("{l}: function `{function}`: {message}"),
            None => format!("{source}: function `{function}`: {message}"),
        };
        DecideError::Failed {
            message: text,
            location,
        }
    }
}

impl Compiled {
    /// The file defining `function` as `script` sees it: its own, else a helper's (unknown
    /// names, or none, are the script's).
    fn file_of(&self, script: &Script, function: &str) -> String {
        if script.own.contains(function) {
            return script.file.clone();
        }
        self.lib_files
            .get(function)
            .cloned()
            .unwrap_or_else(|| script.file.clone())
    }
}

fn strip_position(text: &str) -> String {
    match text.rfind(" (line ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text.to_string(),
    }
}

fn field<'a>(map: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).filter(|v| !v.is_null())
}

fn string(map: &serde_json::Map<String, Value>, name: &str, what: &str) -> Result<String, String> {
    match field(map, name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{what}`{name}` must be a string, got {other}")),
        None => Err(format!("{what}`{name}` is missing")),
    }
}

/// A business refusal, if the decider returned one: `#{ refuse: "CODE", reason: "…" }` (the
/// code upper snake case). `Err` says what is malformed about it.
fn refusal_from(outputs: &Value) -> Option<Result<DecideError, String>> {
    let map = outputs.as_object()?;
    let code = map.get("refuse")?;
    Some((|| {
        for key in map.keys() {
            if !matches!(key.as_str(), "refuse" | "reason") {
                return Err(format!(
                    "unknown key `{key}`; a refusal has refuse and reason"
                ));
            }
        }
        let code = code
            .as_str()
            .filter(|c| {
                (1..=64).contains(&c.len())
                    && c.starts_with(|ch: char| ch.is_ascii_uppercase())
                    && c.chars()
                        .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
            })
            .ok_or_else(|| {
                format!(
                    "`refuse` must be a code such as \"CREDIT_LIMIT\" (A-Z, 0-9, _), got {code}"
                )
            })?;
        let reason = string(map, "reason", "")?;
        Ok(DecideError::refuse(code, reason))
    })())
}

/// A decision from the map a decider returned.
fn decision_from(outputs: &Value) -> Result<Decision, String> {
    let Value::Object(map) = outputs else {
        return Err(format!(
            "expected a map #{{ state, reason, changes, effects }}, got {outputs}"
        ));
    };
    for key in map.keys() {
        if !matches!(key.as_str(), "state" | "reason" | "changes" | "effects") {
            return Err(format!(
                "unknown key `{key}`; a decision has state, reason, changes, effects"
            ));
        }
    }
    let next_state = string(map, "state", "")?;
    let reason = string(map, "reason", "")?;
    let changes = match field(map, "changes") {
        None => Value::Null,
        Some(c @ Value::Object(_)) => c.clone(),
        Some(other) => return Err(format!("`changes` must be a map, got {other}")),
    };
    let mut effects = Vec::new();
    match field(map, "effects") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                effects.push(effect_from(item).map_err(|m| format!("effects[{i}]: {m}"))?);
            }
        }
        Some(other) => return Err(format!("`effects` must be a list, got {other}")),
    }
    Ok(Decision {
        next_state,
        changes,
        effects,
        reason,
        provenance: None,
    })
}

fn effect_from(item: &Value) -> Result<Effect, String> {
    let Value::Object(map) = item else {
        return Err(format!("expected a map, got {item}"));
    };
    let whole = |name: &str| -> Result<Option<u64>, String> {
        match field(map, name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("`{name}` must be a whole number ≥ 0, got {v}")),
        }
    };
    if field(map, "start").is_some() {
        return Ok(Effect::StartLinked {
            definition: string(map, "start", "")?,
            business_key: field(map, "business_key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            data: field(map, "data").cloned().unwrap_or_else(|| json!({})),
            state: match field(map, "state") {
                None => None,
                Some(v) => Some(
                    v.as_str()
                        .ok_or_else(|| format!("`state` must be a string, got {v}"))?
                        .to_string(),
                ),
            },
        });
    }
    if field(map, "update").is_some() {
        let id = string(map, "update", "")?;
        return Ok(Effect::UpdateLinked {
            instance: id
                .parse::<InstanceId>()
                .map_err(|_| format!("`update` = \"{id}\" is not an instance id"))?,
            expected_version: whole("expected_version")?,
            changes: field(map, "changes").cloned().unwrap_or_else(|| json!({})),
            reason: field(map, "reason")
                .and_then(Value::as_str)
                .unwrap_or("updated by a linked instance")
                .to_string(),
        });
    }
    if field(map, "counter").is_some() && field(map, "give_back").is_some() {
        if field(map, "give_back") != Some(&Value::Bool(true)) {
            return Err("`give_back` must be true (or left out to draw)".into());
        }
        if let Some(other) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "counter" | "key" | "give_back"))
        {
            return Err(format!(
                "`{other}` does not go with `give_back`; it takes counter and key"
            ));
        }
        return Ok(Effect::ReturnCounter {
            counter: string(map, "counter", "")?,
            key: string(map, "key", "")?,
        });
    }
    if field(map, "counter").is_some() {
        let assign = match field(map, "assign") {
            None => None,
            Some(Value::Object(a)) => Some(CounterAssign {
                field: string(a, "field", "assign.")?,
                prefix: field(a, "prefix")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                width: field(a, "width").and_then(Value::as_u64).unwrap_or(0) as usize,
            }),
            Some(other) => return Err(format!("`assign` must be a map, got {other}")),
        };
        return Ok(Effect::DrawCounter {
            counter: string(map, "counter", "")?,
            key: field(map, "key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            limit: whole("limit")?,
            assign,
        });
    }
    if field(map, "balance").is_some() {
        if let Some(other) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "balance" | "key" | "add"))
        {
            return Err(format!(
                "`{other}` does not go with `balance`; it takes balance, key and add"
            ));
        }
        let amount = match field(map, "add") {
            Some(Value::String(s)) => s.parse::<rust_decimal::Decimal>().ok(),
            Some(Value::Number(n)) => n.as_i64().map(rust_decimal::Decimal::from),
            _ => None,
        }
        .ok_or("`add` must be a decimal (the amount the balance moves by)")?;
        return Ok(Effect::AdjustBalance {
            balance: string(map, "balance", "")?,
            key: string(map, "key", "")?,
            amount,
        });
    }
    if field(map, "job").is_some() {
        return Ok(Effect::CreateJob {
            job_type: string(map, "job", "")?,
            payload: field(map, "payload").cloned().unwrap_or_else(|| json!({})),
        });
    }
    if field(map, "send").is_some() {
        let to = string(map, "to", "")?;
        return Ok(Effect::SendLinked {
            to: match to.as_str() {
                "parent" => LinkedTarget::Parent,
                "root" => LinkedTarget::Root,
                id => LinkedTarget::Instance(id.parse::<InstanceId>().map_err(|_| {
                    format!(
                        "`to` must be \"parent\", \"root\" or an instance id, got \"{}\"",
                        crate::error::clip(id, 64)
                    )
                })?),
            },
            command: string(map, "send", "")?,
            payload: field(map, "payload").cloned().unwrap_or_else(|| json!({})),
        });
    }
    Err("an effect needs one of `start`, `update`, `counter`, `balance`, `job` or `send`".into())
}

/// The instance map a decider function receives.
pub fn instance_input(ctx: &DecisionContext<'_>) -> Value {
    instance_value(ctx.instance, ctx.parent, ctx.root)
}

/// The instance map a decider function receives for `instance`, its `parent` and the `root`
/// above that parent (`()` when the parent is the top) — also what a dry run on a live
/// instance passes.
pub fn instance_value(
    instance: &Instance,
    parent: Option<&Instance>,
    root: Option<&Instance>,
) -> Value {
    let view = |i: &Instance| {
        json!({
            "id": i.id,
            "definition": i.definition.name,
            "version": i.version,
            "state": i.state,
            "business_key": i.business_key,
            "data": i.data,
        })
    };
    let mut value = view(instance);
    value["parent"] = parent.map(view).unwrap_or(Value::Null);
    value["root"] = root.map(view).unwrap_or(Value::Null);
    value
}

/// A decider backed by a script function.
struct RhaiDecider {
    compiled: Arc<Compiled>,
    script: String,
    function: String,
}

impl Decider for RhaiDecider {
    fn on_rule_pool(&self) -> bool {
        true
    }

    fn decide(&self, ctx: &DecisionContext<'_>) -> Result<Decision, DecideError> {
        let input = DecisionInput {
            instance: instance_input(ctx),
            payload: ctx.payload.clone(),
            actor: json!({ "id": ctx.actor.id, "roles": ctx.actor.roles }),
            now: ctx.now,
            counters: ctx.counters.clone(),
            balances: ctx.balances.clone(),
        };
        let (mut decision, outputs) = self.compiled.call(
            &self.script,
            &self.function,
            &input,
            self.compiled.limits.deadline,
        )?;
        let file = &self.compiled.scripts[&self.script].file;
        decision.provenance = Some(Provenance {
            rule_set: self.compiled.version.clone(),
            script: file.clone(),
            function: self.function.clone(),
            reference_data: self.compiled.data_version.clone(),
            inputs: ProvenanceInputs {
                instance: input.instance,
                payload: input.payload,
                actor: input.actor,
                now: input.now,
                counters: input.counters.reads(),
                balances: input.balances.reads(),
            },
            outputs,
        });
        Ok(decision)
    }
}

/// `line_col` for test-file errors.
pub(crate) fn position(text: &str, offset: usize) -> (usize, usize) {
    line_col(text, offset)
}
