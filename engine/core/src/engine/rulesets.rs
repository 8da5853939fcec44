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

use super::{Active, Engine, EngineConfig, RuleSetInfo};
use crate::decider::DeciderRegistry;
use crate::decider::Decision;
use crate::definition::{Definition, DefinitionSet};
use crate::error::{CommandError, OpenError};
use crate::model::{Actor, InstanceStatus};
use crate::rules::{testing, DecisionInput, RuleLimits, RuleSet};
use crate::store::{ListQuery, RuleSetActivation, RuleSetRecord, RuleSetRequestRecord};

/// A rule-set request made idempotent by its id.
struct Request<'a> {
    id: &'a str,
    /// `deploy` or `activate`.
    operation: &'static str,
    /// What was asked: the rule set's content version, or the version number.
    digest: String,
}

const LIVE_INSTANCES_LISTED_MAX: usize = 10;

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

fn refused(problems: Vec<String>) -> CommandError {
    CommandError::RuleSetRefused { problems }
}

fn require_rules_role(actor: &Actor, action: &str) -> Result<(), CommandError> {
    super::require_role(actor, &["analyst".into(), "admin".into()], || {
        action.to_string()
    })
}

/// Refuses a file a rule set would not read, so nothing sent is silently ignored.
fn check_rule_paths(files: &BTreeMap<String, String>) -> Result<(), CommandError> {
    for path in files.keys() {
        if !crate::rules::is_rule_file_path(path) {
            return Err(CommandError::InvalidInput {
                field: format!("files[{path}]"),
                message: format!(
                    "`{path}` is not a rule-set file; accepted: {}",
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

/// Builds what is in force with `candidate` active, on top of the `stored` versions.
fn compose(
    stored: &[(RuleSetRecord, RuleSet)],
    candidate: &RuleSet,
    candidate_label: &str,
) -> Result<DefinitionSet, Vec<String>> {
    let mut union = DefinitionSet::default();
    let mut first_in: BTreeMap<(String, u32), String> = BTreeMap::new();
    let mut problems = Vec::new();
    let labelled = stored
        .iter()
        .map(|(r, s)| (format!("rule set #{}", r.number), s))
        .chain(std::iter::once((candidate_label.to_string(), candidate)));
    for (label, set) in labelled {
        for def in set.definitions.iter() {
            let kept = union.insert(def.clone());
            let key = (def.name.clone(), def.version);
            let first = first_in.entry(key).or_insert_with(|| label.clone()).clone();
            if !same(&kept, def) {
                problems.push(format!(
                    "{}: definition `{}` version {} differs from the one deployed in {first}; give the changed definition a new version",
                    def.source, def.name, def.version
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
        let first_start = Actor::new("system:first-start", &["admin"]);
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
        let result = match (deployed.is_empty(), active) {
            (true, _) => engine.deploy_rules(rules_dir, first_start).await,
            (false, Some(number)) => {
                engine
                    .activate_rules(number, &Actor::new("system:restart", &["admin"]))
                    .await
            }
            (false, None) => {
                let last = deployed.last().map(|r| r.number).unwrap_or(1);
                engine
                    .activate_rules(last, &Actor::new("system:restart", &["admin"]))
                    .await
            }
        };
        result.map_err(|e| OpenError::Config {
            field: "rules".into(),
            message: e.to_string(),
        })?;
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
        let (rust, limits) = self.rule_inputs()?;
        require_rules_role(actor, "deploy a rule set")?;
        let candidate = RuleSet::load(dir, rust, limits)
            .map_err(|e| refused(e.0.iter().map(ToString::to_string).collect()))?;
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
        let (rust, limits) = self.rule_inputs()?;
        require_rules_role(actor, "deploy a rule set")?;
        super::check_request_id(request_id)?;
        check_rule_paths(&files)?;
        let candidate = RuleSet::from_files("", files, rust, limits)
            .map_err(|e| refused(e.0.iter().map(ToString::to_string).collect()))?;
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
    /// rule set would get.
    pub async fn validate_rule_files(
        &self,
        files: BTreeMap<String, String>,
    ) -> Result<String, CommandError> {
        let (rust, limits) = self.rule_inputs()?;
        check_rule_paths(&files)?;
        let candidate = RuleSet::from_files("", files, rust, limits)
            .map_err(|e| refused(e.0.iter().map(ToString::to_string).collect()))?;
        let _admin = self.inner.rules_admin.lock().await;
        let stored = self.stored_rule_sets()?;
        self.check(&stored, &candidate, "the candidate rule set")?;
        Ok(candidate.version)
    }

    /// Evaluates the decider `decider` (`script::function`) of rule-set version `number` (the
    /// active one when `None`) on `input`, as a dry run: nothing is written. Returns the
    /// version used, the decision and everything the function returned.
    pub fn evaluate_rule(
        &self,
        number: Option<u32>,
        decider: &str,
        input: &DecisionInput,
    ) -> Result<(u32, Decision, serde_json::Value), CommandError> {
        self.rule_inputs()?;
        let active = self.rules();
        let number = match number {
            Some(n) => n,
            None => active
                .rule_set
                .as_ref()
                .map(|r| r.number)
                .ok_or(CommandError::NoRuleSets)?,
        };
        let set = active
            .rule_sets
            .get(&number)
            .ok_or(CommandError::UnknownRuleSet(number))?;
        if !set.deciders.contains(decider) {
            return Err(CommandError::InvalidInput {
                field: "decider".into(),
                message: format!(
                    "`{decider}` is not a decider of rule set #{number}; its deciders: {}",
                    set.deciders
                        .names()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let (decision, outputs) =
            set.evaluate(decider, input)
                .map_err(|e| CommandError::DecisionFailed {
                    decider: decider.to_string(),
                    command: "(dry run)".into(),
                    message: e.message,
                })?;
        Ok((number, decision, outputs))
    }

    async fn deploy_candidate_once(
        &self,
        candidate: RuleSet,
        source: &str,
        actor: &Actor,
        request: Option<Request<'_>>,
    ) -> Result<RuleSetInfo, CommandError> {
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
        candidate: RuleSet,
        source: &str,
        actor: &Actor,
    ) -> Result<RuleSetInfo, CommandError> {
        if let Some(active) = self.active_rule_set() {
            if active.version == candidate.version {
                return Ok(active); // already active: deploying it again changes nothing
            }
        }
        let stored = self.stored_rule_sets()?;
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
        let mut all = stored;
        all.push((record, candidate));
        self.install(definitions, all, number, info.clone());
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
        self.activate(number, actor)
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
        let info = self.activate(number, actor)?;
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
                    request_id: request.id.to_string(),
                    original: format!("`{}` on {}", other.command, other.target),
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
                request_id: request.id.to_string(),
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
                recorded_at: now,
                expires_at: now + self.inner.config.request_retention,
            })?;
        Ok(())
    }

    /// Activates under the `rules_admin` lock, which the caller holds.
    fn activate(&self, number: u32, actor: &Actor) -> Result<RuleSetInfo, CommandError> {
        let mut stored = self.stored_rule_sets()?;
        let index = stored
            .iter()
            .position(|(r, _)| r.number == number)
            .ok_or(CommandError::UnknownRuleSet(number))?;
        let (record, candidate) = stored.remove(index);
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
        stored.insert(index, (record, candidate));
        self.install(definitions, stored, number, info.clone());
        tracing::info!(number, version = %info.version, by = %actor.id, "rule set activated");
        Ok(info)
    }

    /// Watches `dir` and deploys it whenever its files change, every `every`, under the same
    /// checks as [`Engine::deploy_rules`] (as the `system` actor with the `analyst` role). A
    /// refused version is logged and not retried until the files change again. Stops with
    /// the engine.
    pub fn watch_rules(&self, dir: std::path::PathBuf, every: std::time::Duration) {
        let seen: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        self.spawn_periodic(every, false, move |engine| {
            let dir = dir.clone();
            let seen = seen.clone();
            async move {
                let digest = crate::rules::files_digest(&dir);
                {
                    let mut seen = seen.lock().expect("watch lock poisoned");
                    if seen.as_deref() == Some(digest.as_str()) {
                        return;
                    }
                    *seen = Some(digest);
                }
                let watcher = Actor::new("system:rules-watcher", &["analyst"]);
                match engine.deploy_rules(&dir, &watcher).await {
                    Ok(info) => tracing::info!(number = info.number, version = %info.version, "rules directory deployed"),
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "rules directory changed but was not activated"),
                }
            }
        });
    }

    /// The Rust deciders and limits every version is built with.
    fn rule_inputs(&self) -> Result<(DeciderRegistry, RuleLimits), CommandError> {
        self.inner
            .rule_inputs
            .get()
            .cloned()
            .ok_or(CommandError::NoRuleSets)
    }

    fn stored_rule_sets(&self) -> Result<Vec<(RuleSetRecord, RuleSet)>, CommandError> {
        let (rust, limits) = self.rule_inputs()?;
        self.inner
            .store
            .rule_sets()?
            .into_iter()
            .map(|record| {
                let set = RuleSet::from_files(
                    &format!("rule set #{}", record.number),
                    record.files.clone(),
                    rust.clone(),
                    limits.clone(),
                )
                .map_err(|e| refused(e.0.iter().map(ToString::to_string).collect()))?;
                Ok((record, set))
            })
            .collect()
    }

    /// The candidate's tests, definition compatibility, and live instances; returns the
    /// definitions in force with the candidate active.
    fn check(
        &self,
        stored: &[(RuleSetRecord, RuleSet)],
        candidate: &RuleSet,
        label: &str,
    ) -> Result<DefinitionSet, CommandError> {
        let failed: Vec<String> = testing::run(candidate)
            .into_iter()
            .filter(|o| !o.passed)
            .map(|o| format!("test failed: {}\n{}", o.title, o.report.trim_end()))
            .collect();
        if !failed.is_empty() {
            return Err(refused(failed));
        }
        let definitions = compose(stored, candidate, label).map_err(refused)?;
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
                problems.push(format!(
                    "{} v{} names decider(s) {} that {label} lacks, and {} live instance(s) are pinned to it: {}",
                    def.name,
                    def.version,
                    missing.join(", "),
                    live.len(),
                    live.join(", ")
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

    fn install(
        &self,
        definitions: DefinitionSet,
        all: Vec<(RuleSetRecord, RuleSet)>,
        active: u32,
        info: RuleSetInfo,
    ) {
        let rule_sets: BTreeMap<u32, Arc<RuleSet>> = all
            .into_iter()
            .map(|(r, s)| (r.number, Arc::new(s)))
            .collect();
        let deciders_by_version: BTreeMap<u32, DeciderRegistry> = rule_sets
            .iter()
            .map(|(n, s)| (*n, s.deciders.clone()))
            .collect();
        let deciders = deciders_by_version[&active].clone();
        *self.inner.rules.write().expect("rules lock poisoned") = Arc::new(Active {
            definitions,
            deciders,
            rule_set: Some(info),
            deciders_by_version,
            rule_sets,
        });
    }
}
