//! Versioned rule sets: deploy (compile, validate, run the example tests, keep, activate),
//! activate an earlier version (rollback), and restart on the last active one.
//!
//! Every deployed version is kept in the store. The definitions in force are the union of all
//! versions' definitions — an instance stays on the definition version it started on, whatever
//! is active — while decisions use the deciders (scripts) of the active version. A version that
//! changes a deployed definition without bumping its version is refused, and so is one that
//! lacks a decider a live instance's pinned definition names (the refusal lists them).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{Active, Engine, EngineConfig};
use crate::decider::{Decider, DeciderRegistry, Decision};
use crate::definition::{Definition, DefinitionErrors, DefinitionSet};
use crate::error::{CommandError, OpenError, RuleSetProblem};
use crate::model::{roles, Actor, Instance, InstanceId, InstanceStatus};
use crate::rules::{testing, DecisionInput, RuleLimits, RuleSet};
use crate::store::{ListQuery, RuleSetActivation, RuleSetRecord, RuleSetRequestRecord};

/// A deployed rule-set version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleSetInfo {
    /// Deployment number (1, 2, 3…).
    pub number: u32,
    /// Content version: the digest of its files.
    pub version: String,
    /// When it was deployed.
    pub deployed_at: chrono::DateTime<chrono::Utc>,
    /// Who deployed it.
    pub deployed_by: String,
    /// Whether it is the active version.
    pub active: bool,
    /// When it was last made active (deployed or activated), if ever.
    pub activated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who last made it active.
    pub activated_by: Option<String>,
}

/// What a dry run of a decider answered; nothing was written.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DryRun {
    /// The rule-set version that decided.
    pub rule_set: u32,
    /// The decision.
    pub decision: Decision,
    /// Everything the function returned.
    pub outputs: serde_json::Value,
}

/// What a dry run evaluates: a decider on sample data, or on a live instance.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum DryRunInput {
    /// An instance map as a decider receives it (`id`, `definition`, `state`, `data`, …).
    Sample(serde_json::Value),
    /// A live instance (and its parent), read now.
    Instance(InstanceId),
}

/// Where a rule set to compile comes from.
enum Source {
    /// A rules directory.
    Dir(std::path::PathBuf),
    /// Files received (relative path → text).
    Files(BTreeMap<String, String>),
    /// A deployed version's files.
    Stored(BTreeMap<String, String>),
}

/// A rule-set request made idempotent by its id.
struct Request<'a> {
    id: &'a str,
    /// `deploy` or `activate`.
    operation: &'static str,
    /// What was asked: the rule set's content version, or the version number.
    digest: String,
}

const LIVE_INSTANCES_LISTED_MAX: usize = 10;

/// The deciders a decision uses: the active version's, or those of the version a pinned
/// instance started under.
pub(super) enum Deciders {
    Active(Arc<DeciderRegistry>),
    Version(Arc<RuleSet>),
}

impl Deciders {
    pub(super) fn get(&self, name: &str) -> Option<&Arc<dyn Decider>> {
        match self {
            Deciders::Active(r) => r.get(name),
            Deciders::Version(set) => set.deciders.get(name),
        }
    }
}

/// `activations`: the store's activation log (or just the relevant entry).
fn info(
    record: &RuleSetRecord,
    active: Option<u32>,
    activations: &[RuleSetActivation],
) -> RuleSetInfo {
    let last = activations.iter().rev().find(|a| a.number == record.number);
    RuleSetInfo {
        number: record.number,
        version: record.version.clone(),
        deployed_at: record.deployed_at,
        deployed_by: record.deployed_by.clone(),
        active: active == Some(record.number),
        activated_at: last.map(|a| a.at),
        activated_by: last.map(|a| a.by.clone()),
    }
}

fn refused(problems: Vec<RuleSetProblem>) -> CommandError {
    CommandError::RuleSetRefused { problems }
}

/// Every problem of a rule set that did not load, with its place.
fn load_problems(errors: DefinitionErrors) -> CommandError {
    refused(errors.0.into_iter().map(RuleSetProblem::from).collect())
}

fn require_rules_role(actor: &Actor, action: &str) -> Result<(), CommandError> {
    super::require_role(actor, &[roles::ANALYST.into(), roles::ADMIN.into()], || {
        action.to_string()
    })
}

/// Refuses a file a rule set would not read, so nothing sent is silently ignored.
fn check_rule_paths(files: &BTreeMap<String, String>) -> Result<(), CommandError> {
    for path in files.keys() {
        if !crate::rules::is_rule_file_path(path) {
            return Err(CommandError::InvalidInput {
                field: format!("files[{}]", crate::error::clip(path, 256)),
                message: format!(
                    "`{}` is not a rule-set file; accepted: {}",
                    crate::error::clip(path, 256),
                    crate::rules::RULE_FILE_KINDS
                ),
            });
        }
    }
    Ok(())
}

/// Equal but for the file each was read from.
fn same(a: &Definition, b: &Definition) -> bool {
    let mut a = a.clone();
    a.source = b.source.clone();
    &a == b
}

/// The definitions of a deployed version, without compiling its scripts.
fn deployed_definitions(record: &RuleSetRecord) -> Result<DefinitionSet, CommandError> {
    let sources: Vec<(String, String)> = record
        .files
        .iter()
        .filter(|(path, _)| path.starts_with("definitions/"))
        .map(|(path, text)| (path.clone(), text.clone()))
        .collect();
    DefinitionSet::from_deployed_sources(&sources).map_err(load_problems)
}

/// Builds what is in force with `candidate` active, on top of the `stored` versions.
fn compose(
    stored: &[(RuleSetRecord, DefinitionSet)],
    candidate: &DefinitionSet,
    candidate_label: &str,
) -> Result<DefinitionSet, Vec<RuleSetProblem>> {
    let mut union = DefinitionSet::default();
    let mut first_in: BTreeMap<(String, u32), String> = BTreeMap::new();
    let mut problems = Vec::new();
    let labelled = stored
        .iter()
        .map(|(r, s)| (format!("rule set #{}", r.number), s))
        .chain(std::iter::once((candidate_label.to_string(), candidate)));
    for (label, set) in labelled {
        for def in set.iter() {
            let kept = union.insert(def.clone());
            let key = (def.name.clone(), def.version);
            let first = first_in.entry(key).or_insert_with(|| label.clone()).clone();
            if !same(&kept, def) {
                problems.push(RuleSetProblem::in_file(
                    &def.source,
                    format!(
                        "definition `{}` version {} differs from the one deployed in {first}; give the changed definition a new version",
                        def.name, def.version
                    ),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(union)
    } else {
        Err(problems)
    }
}

/// What new instances start on with `set` active: each of its definitions by name (the
/// highest version it holds).
fn startable(set: &RuleSet) -> BTreeMap<String, Arc<Definition>> {
    set.definitions
        .names()
        .into_iter()
        .filter_map(|name| {
            set.definitions
                .latest(name)
                .map(|d| (name.to_string(), d.clone()))
        })
        .collect()
}

impl Engine {
    /// Opens the engine with versioned rule sets. On the first start (no version in the store)
    /// it deploys `rules_dir` as version 1, which must pass its own tests; later it restarts on
    /// the last active version kept in the store and `rules_dir` is not read. `rust_deciders`
    /// and `limits` apply to every version.
    pub async fn open_with_rules(
        config: EngineConfig,
        rules_dir: &Path,
        rust_deciders: DeciderRegistry,
        limits: RuleLimits,
    ) -> Result<Engine, OpenError> {
        let first_start = Actor::new("system:first-start", &[roles::ADMIN]);
        Self::open_with_rules_as(config, rules_dir, rust_deciders, limits, &first_start).await
    }

    /// [`Engine::open_with_rules`], recording `first_start` as the deployer of version 1 when
    /// the store has none (e.g. an analyst deploying into a new store).
    pub async fn open_with_rules_as(
        config: EngineConfig,
        rules_dir: &Path,
        rust_deciders: DeciderRegistry,
        limits: RuleLimits,
        first_start: &Actor,
    ) -> Result<Engine, OpenError> {
        let engine = Engine::open(config, DefinitionSet::default(), DeciderRegistry::new()).await?;
        if engine
            .inner
            .rule_inputs
            .set((rust_deciders, limits))
            .is_err()
        {
            unreachable!("a new engine has no rule inputs yet");
        }
        let store = engine.inner.store.clone();
        let deployed = store.rule_sets()?;
        let active = store.active_rule_set()?;
        let restart = Actor::new("system:restart", &[roles::ADMIN]);
        let result = match (deployed.last(), active) {
            (None, _) => engine.deploy_rules(rules_dir, first_start).await,
            (Some(_), Some(number)) => engine.activate_rules(number, &restart).await,
            (Some(last), None) => engine.activate_rules(last.number, &restart).await,
        };
        if let Err(e) = result {
            engine.shutdown().await;
            return Err(OpenError::Rules(e));
        }
        Ok(engine)
    }

    /// Every deployed rule-set version, oldest first.
    pub fn rule_sets(&self) -> Result<Vec<RuleSetInfo>, CommandError> {
        let active = self.inner.store.active_rule_set()?;
        let activations = self.inner.store.rule_set_activations()?;
        Ok(self
            .inner
            .store
            .rule_sets()?
            .iter()
            .map(|r| info(r, active, &activations))
            .collect())
    }

    /// The active rule-set version, if the engine runs on rule sets.
    pub fn active_rule_set(&self) -> Option<RuleSetInfo> {
        self.rules().rule_set.clone()
    }

    /// Deploys the rules directory `dir` as a new version and activates it, atomically and
    /// only if it compiles, validates, passes its own example tests, keeps every deployed
    /// definition version unchanged and serves every live instance. Needs `analyst` or `admin`.
    pub async fn deploy_rules(
        &self,
        dir: &Path,
        actor: &Actor,
    ) -> Result<RuleSetInfo, CommandError> {
        self.rule_inputs()?;
        require_rules_role(actor, "deploy a rule set")?;
        let candidate = self.compile(Source::Dir(dir.to_path_buf())).await?;
        self.deploy_candidate_once(candidate, &dir.display().to_string(), actor, None)
            .await
    }

    /// [`Engine::deploy_rules`] for a rule set given as its files (path relative to the rule
    /// set's root → text), e.g. received over the network. Problems name files by these
    /// relative paths.
    ///
    /// `request_id` makes it idempotent like an instance command: a retry with the same id and
    /// the same files answers with the version the first call produced; the same id with other
    /// files, or one already used by another request, is refused (`REQUEST_ID_REUSED`).
    pub async fn deploy_rule_files(
        &self,
        files: BTreeMap<String, String>,
        actor: &Actor,
        request_id: &str,
    ) -> Result<RuleSetInfo, CommandError> {
        self.rule_inputs()?;
        require_rules_role(actor, "deploy a rule set")?;
        super::check_request_id(request_id)?;
        check_rule_paths(&files)?;
        let candidate = self.compile(Source::Files(files)).await?;
        // Every file sent is part of the content version (unknown paths were refused).
        let digest = candidate.version.clone();
        self.deploy_candidate_once(
            candidate,
            &format!("files from {}", actor.id),
            actor,
            Some(Request {
                id: request_id,
                operation: "deploy",
                digest,
            }),
        )
        .await
    }

    /// Runs every check [`Engine::deploy_rule_files`] would (compile, validate, example tests,
    /// definition versions, live instances) without deploying; returns the content version the
    /// rule set would get. Needs `analyst` or `admin`.
    pub async fn validate_rule_files(
        &self,
        files: BTreeMap<String, String>,
        actor: &Actor,
    ) -> Result<String, CommandError> {
        self.rule_inputs()?;
        require_rules_role(actor, "validate a rule set")?;
        check_rule_paths(&files)?;
        let candidate = self.compile(Source::Files(files)).await?;
        self.test(&candidate).await?;
        let _admin = self.inner.rules_admin.lock().await;
        let stored = self.stored_definitions()?;
        self.check(&stored, &candidate, "the candidate rule set")?;
        Ok(candidate.version.clone())
    }

    /// Evaluates the decider `decider` (`script::function`) of rule-set version `number` (the
    /// active one when `None`) on `input`, as a dry run: nothing is written. Returns the
    /// version used, the decision and everything the function returned.
    pub async fn evaluate_rule(
        &self,
        number: Option<u32>,
        decider: &str,
        input: &DecisionInput,
    ) -> Result<DryRun, CommandError> {
        self.rule_inputs()?;
        let active = self.rules();
        let (number, set) = match number {
            None => {
                let info = active.rule_set.as_ref().ok_or(CommandError::NoRuleSets)?;
                let set = active.active_set.clone().ok_or(CommandError::NoRuleSets)?;
                (info.number, set)
            }
            Some(n) => (n, self.compiled(&active, n).await?),
        };
        if !set.deciders.contains(decider) {
            return Err(CommandError::InvalidInput {
                field: "decider".into(),
                message: format!(
                    "`{}` is not a decider of rule set #{number}; its deciders: {}",
                    crate::error::clip(decider, 128),
                    set.deciders
                        .names()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let (name, input) = (decider.to_string(), input.clone());
        let evaluated = self
            .inner
            .rule_pool
            .run("dry run", move || set.evaluate(&name, &input))
            .await?
            .map_err(|panic| CommandError::DecisionFailed {
                decider: decider.to_string(),
                command: "(dry run)".into(),
                message: format!(
                    "the evaluation panicked: {}",
                    crate::error::clip(&panic, 200)
                ),
                location: None,
            })?;
        let (decision, outputs) =
            evaluated.map_err(|e| super::command::decide_error(e, decider, "(dry run)"))?;
        Ok(DryRun {
            rule_set: number,
            decision,
            outputs,
        })
    }

    /// A dry run of `decider` on `input` with `payload`, as `actor` would send it now (the
    /// engine clock's now unless `now` is given): nothing is written. Needs `analyst` or
    /// `admin`; reading a live instance also needs a role that may read it.
    pub async fn dry_run(
        &self,
        number: Option<u32>,
        decider: &str,
        input: DryRunInput,
        payload: serde_json::Value,
        actor: &Actor,
        now: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<DryRun, CommandError> {
        require_rules_role(actor, "evaluate a rule")?;
        let instance = match input {
            DryRunInput::Sample(value) => value,
            DryRunInput::Instance(id) => {
                let live = self.get_as(actor, id).await?;
                let parent = match live.parent {
                    Some(p) => Some(self.get(p).await?),
                    None => None,
                };
                let root = self.root_above(parent.as_ref())?;
                crate::rules::instance_value(&live, parent.as_ref(), root.as_ref())
            }
        };
        let input = DecisionInput {
            instance,
            payload,
            actor: serde_json::json!({ "id": actor.id, "roles": actor.roles }),
            now: now.unwrap_or_else(|| self.inner.config.clock.now()),
            // The store's counter values, any counter (a dry run names no command).
            counters: self.counters_reading(None),
            balances: self.balances_reading(None),
        };
        self.evaluate_rule(number, decider, &input).await
    }

    /// Replays every rule decision recorded at or after `since` (all when `None`) against
    /// `candidate` and reports what it would decide differently; reads only. Walks every
    /// instance's history, so it takes time proportional to the store: meant for a stopped
    /// store or an idle moment.
    pub fn backtest(
        &self,
        candidate: &RuleSet,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<crate::rules::backtest::BacktestReport, CommandError> {
        Ok(crate::rules::backtest::backtest(
            &*self.inner.store,
            candidate,
            since,
        )?)
    }

    async fn deploy_candidate_once(
        &self,
        candidate: Arc<RuleSet>,
        source: &str,
        actor: &Actor,
        request: Option<Request<'_>>,
    ) -> Result<RuleSetInfo, CommandError> {
        self.test(&candidate).await?;
        let _admin = self.inner.rules_admin.lock().await;
        if let Some(request) = &request {
            if let Some(info) = self.replay(request)? {
                return Ok(info);
            }
        }
        let info = self.deploy_candidate(candidate, source, actor)?;
        if let Some(request) = &request {
            self.remember(request, info.number)?;
        }
        Ok(info)
    }

    /// Deploys under the `rules_admin` lock, which the caller holds.
    fn deploy_candidate(
        &self,
        candidate: Arc<RuleSet>,
        source: &str,
        actor: &Actor,
    ) -> Result<RuleSetInfo, CommandError> {
        if let Some(active) = self.active_rule_set() {
            if active.version == candidate.version {
                return Ok(active); // already active: deploying it again changes nothing
            }
        }
        let stored = self.stored_definitions()?;
        let number = stored.last().map_or(1, |(r, _)| r.number + 1);
        let label = format!("rule set #{number} ({source})");
        let definitions = self.check(&stored, &candidate, &label)?;
        let record = RuleSetRecord {
            number,
            version: candidate.version.clone(),
            files: candidate.files.clone(),
            deployed_at: self.inner.config.clock.now(),
            deployed_by: actor.id.clone(),
        };
        self.inner.store.add_rule_set(&record)?;
        let activation =
            self.inner
                .store
                .set_active_rule_set(number, record.deployed_at, &actor.id)?;
        let info = info(&record, Some(number), &[activation]);
        self.install(definitions, candidate, info.clone());
        tracing::info!(number, version = %info.version, by = %actor.id, "rule set deployed and activated");
        Ok(info)
    }

    /// Activates the deployed version `number` (a rollback, or a roll forward again), under the
    /// same checks as a deployment. Needs `analyst` or `admin`.
    pub async fn activate_rules(
        &self,
        number: u32,
        actor: &Actor,
    ) -> Result<RuleSetInfo, CommandError> {
        self.rule_inputs()?;
        require_rules_role(actor, "activate a rule set")?;
        let _admin = self.inner.rules_admin.lock().await;
        self.activate(number, actor).await
    }

    /// [`Engine::activate_rules`], idempotent by `request_id` as
    /// [`Engine::deploy_rule_files`] is.
    pub async fn activate_rules_once(
        &self,
        number: u32,
        actor: &Actor,
        request_id: &str,
    ) -> Result<RuleSetInfo, CommandError> {
        self.rule_inputs()?;
        require_rules_role(actor, "activate a rule set")?;
        super::check_request_id(request_id)?;
        let request = Request {
            id: request_id,
            operation: "activate",
            digest: number.to_string(),
        };
        let _admin = self.inner.rules_admin.lock().await;
        if let Some(info) = self.replay(&request)? {
            return Ok(info);
        }
        let info = self.activate(number, actor).await?;
        self.remember(&request, info.number)?;
        Ok(info)
    }

    /// The answer to a rule-set request already made with this id, if it asked the same;
    /// refused if the id was used for anything else. The caller holds `rules_admin`.
    fn replay(&self, request: &Request<'_>) -> Result<Option<RuleSetInfo>, CommandError> {
        let now = self.inner.config.clock.now();
        if let Some(other) = self.inner.store.request(request.id)? {
            if other.expires_at > now {
                return Err(CommandError::RequestIdReused {
                    request_id: crate::error::clip(request.id, 256),
                    original: other.target.to_string(),
                });
            }
        }
        let Some(record) = self.inner.store.rule_set_request(request.id)? else {
            return Ok(None);
        };
        if record.expires_at <= now {
            return Ok(None);
        }
        if record.operation != request.operation || record.digest != request.digest {
            return Err(CommandError::RequestIdReused {
                request_id: crate::error::clip(request.id, 256),
                original: format!(
                    "`{}` of rule set #{} with other content",
                    record.operation, record.number
                ),
            });
        }
        self.rule_sets()?
            .into_iter()
            .find(|r| r.number == record.number)
            .map(Some)
            .ok_or(CommandError::UnknownRuleSet(record.number))
    }

    fn remember(&self, request: &Request<'_>, number: u32) -> Result<(), CommandError> {
        let now = self.inner.config.clock.now();
        self.inner
            .store
            .put_rule_set_request(&RuleSetRequestRecord {
                request_id: request.id.to_string(),
                operation: request.operation.to_string(),
                digest: request.digest.clone(),
                number,
                subject: String::new(),
                recorded_at: now,
                expires_at: now + self.inner.config.request_retention,
            })?;
        Ok(())
    }

    /// Activates under the `rules_admin` lock, which the caller holds.
    async fn activate(&self, number: u32, actor: &Actor) -> Result<RuleSetInfo, CommandError> {
        let mut stored = self.stored_definitions()?;
        let index = stored
            .iter()
            .position(|(r, _)| r.number == number)
            .ok_or(CommandError::UnknownRuleSet(number))?;
        let (record, _) = stored.remove(index);
        let candidate = self.compiled(&self.rules(), number).await?;
        self.test(&candidate).await?;
        let definitions = self.check(&stored, &candidate, &format!("rule set #{number}"))?;
        // Activating the version already active (as on every restart) changes nothing, so it
        // records nothing.
        let activations = if self.inner.store.active_rule_set()? == Some(number) {
            self.inner.store.rule_set_activations()?
        } else {
            vec![self.inner.store.set_active_rule_set(
                number,
                self.inner.config.clock.now(),
                &actor.id,
            )?]
        };
        let info = info(&record, Some(number), &activations);
        self.install(definitions, candidate, info.clone());
        tracing::info!(number, version = %info.version, by = %actor.id, "rule set activated");
        Ok(info)
    }

    /// Watches `dir` and deploys it once its files have changed and then stayed the same for
    /// one `every` (so a half-saved edit is not deployed), under the same checks as
    /// [`Engine::deploy_rules`] (as the `system` actor with the `analyst` role). A refused
    /// version is logged and not retried until the files change again. Stops with the engine;
    /// the returned handle tells what the watcher has done so far.
    pub fn watch_rules(&self, dir: std::path::PathBuf, every: std::time::Duration) -> RulesWatch {
        let watch = RulesWatch::default();
        let status = watch.status.clone();
        // (digest deployed or refused last, digest seen on the previous tick)
        let seen: Arc<std::sync::Mutex<(Option<String>, Option<String>)>> = Arc::default();
        self.spawn_periodic(every, false, move |engine| {
            let dir = dir.clone();
            let seen = seen.clone();
            let status = status.clone();
            async move {
                let digest = crate::rules::files_digest(&dir);
                {
                    let mut seen = seen.lock().expect("watch lock poisoned");
                    let (handled, previous) = &mut *seen;
                    let settled = previous.as_deref() == Some(digest.as_str());
                    *previous = Some(digest.clone());
                    let first = handled.is_none();
                    let skip =
                        handled.as_deref() == Some(digest.as_str()) || !(settled || first);
                    if !skip {
                        *handled = Some(digest);
                    }
                    status.lock().expect("watch lock poisoned").checks += 1;
                    if skip {
                        return;
                    }
                }
                let watcher = Actor::new("system:rules-watcher", &[roles::ANALYST]);
                let outcome = engine.deploy_rules(&dir, &watcher).await;
                let mut status = status.lock().expect("watch lock poisoned");
                match outcome {
                    Ok(info) => {
                        status.deployed += 1;
                        tracing::info!(number = info.number, version = %info.version, "rules directory deployed");
                    }
                    Err(e) => {
                        status.refused += 1;
                        status.last_refusal = Some(crate::error::clip(&e.to_string(), 2000));
                        tracing::warn!(dir = %dir.display(), error = %e, "rules directory changed but was not activated");
                    }
                }
            }
        });
        watch
    }

    /// The Rust deciders and limits every version is built with.
    fn rule_inputs(&self) -> Result<(DeciderRegistry, RuleLimits), CommandError> {
        self.inner
            .rule_inputs
            .get()
            .cloned()
            .ok_or(CommandError::NoRuleSets)
    }

    /// Every deployed version's record and definitions (scripts not compiled).
    fn stored_definitions(&self) -> Result<Vec<(RuleSetRecord, DefinitionSet)>, CommandError> {
        self.inner
            .store
            .rule_sets()?
            .into_iter()
            .map(|record| {
                let definitions = deployed_definitions(&record)?;
                Ok((record, definitions))
            })
            .collect()
    }

    /// Rule-set version `number`, compiled: the active one, a cached one, or compiled now
    /// from the store (and cached; the least recently used beyond `rule_set_cache` is dropped).
    pub(super) async fn compiled(
        &self,
        active: &Active,
        number: u32,
    ) -> Result<Arc<RuleSet>, CommandError> {
        if let (Some(info), Some(set)) = (&active.rule_set, &active.active_set) {
            if info.number == number {
                return Ok(set.clone());
            }
        }
        let tick = self
            .inner
            .rule_set_ticks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some((used, set)) = self
            .inner
            .rule_set_cache
            .lock()
            .expect("cache lock poisoned")
            .get_mut(&number)
        {
            *used = tick;
            return Ok(set.clone());
        }
        let record = self
            .inner
            .store
            .rule_set(number)?
            .ok_or(CommandError::UnknownRuleSet(number))?;
        let set = self.compile(Source::Stored(record.files)).await?;
        self.cache(number, set.clone(), tick);
        Ok(set)
    }

    /// Compiles a rule set on the rule pool (compiling scripts is rule work too).
    async fn compile(&self, source: Source) -> Result<Arc<RuleSet>, CommandError> {
        let (rust, limits) = self.rule_inputs()?;
        let compiled = self
            .inner
            .rule_pool
            .run("compiling a rule set", move || match source {
                Source::Dir(dir) => RuleSet::load(&dir, rust, limits),
                Source::Files(files) | Source::Stored(files) => {
                    RuleSet::from_files(files, rust, limits)
                }
            })
            .await?
            .map_err(|panic| {
                refused(vec![RuleSetProblem::in_file(
                    "",
                    format!(
                        "compiling the rule set failed inside the engine: {}",
                        crate::error::clip(&panic, 200)
                    ),
                )])
            })?;
        compiled.map(Arc::new).map_err(load_problems)
    }

    /// Runs `candidate`'s example tests on the rule pool, within `rule_tests_deadline` in all;
    /// any failure refuses it.
    async fn test(&self, candidate: &Arc<RuleSet>) -> Result<(), CommandError> {
        let set = candidate.clone();
        let deadline = self.inner.config.rule_tests_deadline;
        let outcomes = self
            .inner
            .rule_pool
            .run("rule-set tests", move || {
                testing::run_within(&set, deadline)
            })
            .await?
            .map_err(|panic| {
                refused(vec![RuleSetProblem::in_file(
                    "",
                    format!(
                        "running the tests failed inside the engine: {}",
                        crate::error::clip(&panic, 200)
                    ),
                )])
            })?;
        let failed: Vec<RuleSetProblem> = outcomes
            .into_iter()
            .filter(|o| !o.passed)
            .map(|o| RuleSetProblem {
                file: o.file.clone(),
                line: o.line,
                column: 1,
                message: format!("test failed: {}\n{}", o.title, o.report.trim_end()),
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(refused(failed))
        }
    }

    fn cache(&self, number: u32, set: Arc<RuleSet>, tick: u64) {
        let mut cache = self
            .inner
            .rule_set_cache
            .lock()
            .expect("cache lock poisoned");
        cache.insert(number, (tick, set));
        while cache.len() > self.inner.config.rule_set_cache {
            let oldest = cache
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(n, _)| *n)
                .expect("not empty");
            cache.remove(&oldest);
        }
    }

    /// The rule-set versions compiled in the cache besides the active one, by number (for
    /// tests of the cache's bound).
    #[cfg(feature = "testing")]
    pub fn cached_rule_sets(&self) -> Vec<u32> {
        self.inner
            .rule_set_cache
            .lock()
            .expect("cache lock poisoned")
            .keys()
            .copied()
            .collect()
    }

    /// The deciders that decide for `instance`: the active version's, or — for a definition
    /// whose decisions stay pinned — those of the version it started under.
    pub(super) async fn deciders_for(
        &self,
        rules: &Active,
        definition: &Definition,
        instance: &Instance,
    ) -> Result<Deciders, CommandError> {
        match (definition.decisions, instance.rule_set) {
            (crate::definition::DecisionBinding::Pinned, Some(n))
                if rules.rule_set.as_ref().is_some_and(|r| r.number != n) =>
            {
                Ok(Deciders::Version(self.compiled(rules, n).await?))
            }
            _ => Ok(Deciders::Active(rules.deciders.clone())),
        }
    }

    /// The candidate's definition compatibility and live instances (its tests run before, in
    /// `test`); returns the definitions in force with the candidate active.
    fn check(
        &self,
        stored: &[(RuleSetRecord, DefinitionSet)],
        candidate: &RuleSet,
        label: &str,
    ) -> Result<DefinitionSet, CommandError> {
        let definitions = compose(stored, &candidate.definitions, label).map_err(refused)?;
        let mut problems = Vec::new();
        for def in definitions.iter() {
            if def.decisions == crate::definition::DecisionBinding::Pinned {
                continue; // decided by the version each instance started under
            }
            let missing: Vec<&str> = def
                .commands
                .values()
                .filter_map(|c| c.decider.as_deref())
                .filter(|d| !candidate.deciders.contains(d))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let live = self.live_instances(def)?;
            if !live.is_empty() {
                problems.push(RuleSetProblem::in_file(
                    &def.source,
                    format!(
                        "{} v{} names decider(s) {} that {label} lacks, and {} live instance(s) are pinned to it: {}",
                        def.name,
                        def.version,
                        missing.join(", "),
                        live.len(),
                        live.join(", ")
                    ),
                ));
            }
        }
        if problems.is_empty() {
            Ok(definitions)
        } else {
            Err(refused(problems))
        }
    }

    /// Active instances pinned to `def` (ids, at most a few, then "…").
    fn live_instances(&self, def: &Definition) -> Result<Vec<String>, CommandError> {
        let mut live = Vec::new();
        let mut after = None;
        loop {
            let page = self.inner.store.list(&ListQuery {
                definition: Some(def.name.clone()),
                state: None,
                business_key: None,
                page_size: 1000,
                after,
            })?;
            for i in &page.items {
                if i.definition.version == def.version && i.status == InstanceStatus::Active {
                    if live.len() == LIVE_INSTANCES_LISTED_MAX {
                        live.push("…".to_string());
                        return Ok(live);
                    }
                    live.push(i.id.to_string());
                }
            }
            match (page.items.last(), page.next_page_token) {
                (Some(last), Some(_)) => after = Some(last.id),
                _ => return Ok(live),
            }
        }
    }

    /// Makes `set` the active version; the one it replaces stays compiled in the cache.
    fn install(&self, definitions: DefinitionSet, set: Arc<RuleSet>, info: RuleSetInfo) {
        let mut rules = self.inner.rules.write().expect("rules lock poisoned");
        if let (Some(old), Some(old_set)) = (&rules.rule_set, &rules.active_set) {
            if old.number != info.number {
                let tick = self
                    .inner
                    .rule_set_ticks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.cache(old.number, old_set.clone(), tick);
            }
        }
        self.inner
            .rule_set_cache
            .lock()
            .expect("cache lock poisoned")
            .remove(&info.number);
        *rules = Arc::new(Active {
            definitions,
            startable: Some(startable(&set)),
            deciders: Arc::new(set.deciders.clone()),
            rule_set: Some(info),
            active_set: Some(set),
        });
    }
}

/// A rules-directory watcher ([`Engine::watch_rules`]): what it has done so far.
#[derive(Clone, Debug, Default)]
pub struct RulesWatch {
    status: Arc<std::sync::Mutex<RulesWatchStatus>>,
}

/// Counters of a rules-directory watcher.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RulesWatchStatus {
    /// Times it looked at the directory.
    pub checks: u64,
    /// Deploys it made (a deploy of an unchanged rule set included).
    pub deployed: u64,
    /// Changed directories it did not activate.
    pub refused: u64,
    /// Why the last one was refused.
    pub last_refusal: Option<String>,
}

impl RulesWatch {
    /// Its counters now.
    pub fn status(&self) -> RulesWatchStatus {
        self.status.lock().expect("watch lock poisoned").clone()
    }
}
