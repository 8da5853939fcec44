//! The command path: start, send, cancel. Each request is checked, decided (outside any
//! storage transaction), built into one [`Commit`] and handed to the group committer; the
//! caller is answered after the flush. A version conflict without `expected_version`
//! re-runs the whole evaluation, at most `conflict_retries_max` times.
//!
//! Order of work for a command: idempotency replay → load instance → definition, command,
//! status, role, state, payload and expected-version checks → decider → decision checks
//! (`effects`) → commit → acknowledgement after the flush.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::{oneshot, MutexGuard};

use super::checks::{
    check_business_key, check_expected, check_reason, check_request_id, check_violations, digest,
    require_active, require_owner, require_role,
};
use super::effects::{CommandContext, CommitBuilder};
use super::requests::{CancelRequest, CommandRequest, StartRequest};
use super::{timers, Active, Applied, Engine, Origin, Prepared};
use crate::committer::Work;
use crate::decider::{Balances, Counters, DecideError, Decision, DecisionContext};
use crate::definition::{CommandDef, Definition};
use crate::error::CommandError;
use crate::feed::{self, EventType};
use crate::model::{ChangeKind, CommandOutcome, HistoryEntry, Instance, InstanceId, RequestTarget};
use crate::store::{Commit, CommitApplied, CommitRefusal, InstanceWrite, JobWrite, RequestRecord};

impl Engine {
    /// Starts an instance of `request.definition`: the version in the active rule set (or,
    /// for an engine opened with fixed definitions, the latest loaded).
    pub async fn start(&self, request: StartRequest) -> Result<CommandOutcome, CommandError> {
        self.start_or_replay(request)
            .await
            .map(|(outcome, _)| outcome)
    }

    /// [`Engine::start`], also telling whether the answer is a replay: `true` when the request
    /// id had already been applied (the original outcome, nothing written now) — for bulk
    /// imports that count what a re-run found already there.
    pub async fn start_or_replay(
        &self,
        request: StartRequest,
    ) -> Result<(CommandOutcome, bool), CommandError> {
        check_request_id(&request.request_id)?;
        check_business_key("business_key", &request.business_key)?;
        self.check_payload_size(&request.data)?;
        let digest = match request.instance_id {
            None => digest(&request.data),
            // A retry naming another instance id is another request.
            Some(id) => {
                digest(&serde_json::json!({ "instance_id": id.to_string(), "data": request.data }))
            }
        };
        if request
            .instance_id
            .is_some_and(|id| id.0.is_nil() || id.0.is_max())
        {
            return Err(CommandError::InvalidInput {
                field: "instance_id".into(),
                message: "the nil and max UUIDs are not instance ids".into(),
            });
        }
        let target = RequestTarget::Start {
            definition: request.definition.clone(),
        };
        let prepare = || std::future::ready(self.prepare_start(&request, &digest));
        let result = self
            .run(&request.request_id, &target, &digest, None, prepare)
            .await
            .map(|applied| match applied {
                Applied::Now(outcome) => (outcome, false),
                Applied::Replayed(outcome) => (outcome, true),
            });
        self.count(Some(&request.definition), &target, &result);
        result
    }

    fn prepare_start(
        &self,
        request: &StartRequest,
        digest: &str,
    ) -> Result<Prepared, CommandError> {
        let rules = self.rules();
        let definition = &*self.start_definition(&rules, &request.definition)?;
        require_role(&request.actor, &definition.start.roles, || {
            format!("start {} v{}", definition.name, definition.version)
        })?;
        check_violations(definition.start.payload.validate(&request.data))?;
        let now = self.inner.config.clock.now();
        let mut instance = Instance::new_started(
            definition,
            &request.business_key,
            request.data.clone(),
            &request.actor,
            now,
        );
        if let Some(id) = request.instance_id {
            // Checked again by the commit (a start expects no instance under its id): two
            // concurrent starts with one id make one instance, and the other is refused here
            // when it is decided again.
            if self.inner.store.instance(id)?.is_some() {
                return Err(CommandError::InstanceExists { instance: id });
            }
            instance.id = id;
        }
        instance.timers = timers::timers_for(definition, &definition.initial, &request.data, now)?;
        instance.rule_set = rules.rule_set.as_ref().map(|r| r.number);
        let outcome = CommandOutcome::of(&instance, "started".into());
        let history = HistoryEntry::started(
            &instance,
            &request.actor,
            Some(&request.request_id),
            &request.data,
            "started".into(),
            None,
        );
        let mut commit = Commit::new(now);
        commit.request = Some(self.request_record(
            &request.request_id,
            RequestTarget::Start {
                definition: request.definition.clone(),
            },
            digest,
            &outcome,
            now,
        ));
        commit.writes.push(InstanceWrite {
            instance,
            expected_version: None,
        });
        commit.history.push(history);
        Ok(Prepared { commit, outcome })
    }

    /// Counts a request for the metrics: `definition` is `None` when the request ended before
    /// its instance was read (or was answered from its request record).
    fn count<T>(
        &self,
        definition: Option<&str>,
        target: &RequestTarget,
        result: &Result<T, CommandError>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        self.inner.metrics.count_command(
            definition.unwrap_or("(unknown)"),
            target.metric_label(),
            outcome,
        );
    }

    /// Sends a command to an instance.
    pub async fn send(&self, request: CommandRequest) -> Result<CommandOutcome, CommandError> {
        self.send_inner(request, Origin::Caller)
            .await
            .map(Applied::into_outcome)
    }

    pub(super) async fn send_inner(
        &self,
        request: CommandRequest,
        origin: Origin<'_>,
    ) -> Result<Applied, CommandError> {
        check_request_id(&request.request_id)?;
        self.check_payload_size(&request.payload)?;
        let digest = digest(&request.payload);
        let target = RequestTarget::Command {
            instance: request.instance,
            command: request.command.clone(),
        };
        let _guards = self.lock_for_command(&request).await;
        let seen = OnceLock::new();
        let prepare = || self.prepare_command(&request, &digest, origin, &seen);
        let result = self
            .run(
                &request.request_id,
                &target,
                &digest,
                request.expected_version,
                prepare,
            )
            .await;
        self.count(seen.get().map(String::as_str), &target, &result);
        result
    }

    /// Takes the instance's stripe lock — and its parent's (and root's) when the command may
    /// update or send commands to linked instances: deliveries updating their order should
    /// queue behind the order's own commands, not race them. (The locks only spare
    /// re-evaluations; version checks at commit keep linked changes correct either way.)
    async fn lock_for_command(&self, request: &CommandRequest) -> Vec<MutexGuard<'_, ()>> {
        let mut lock_ids = vec![request.instance];
        let reaches_linked =
            |c: &CommandDef| !c.effects.update.is_empty() || !c.effects.send.is_empty();
        // Reading the instance to find its parent costs a store read on the hot path: only
        // pay it when some definition's command of this name may reach a linked instance.
        let rules = self.rules();
        let may_reach_linked = rules
            .definitions
            .iter()
            .any(|d| d.command(&request.command).is_some_and(reaches_linked));
        if may_reach_linked {
            if let Ok((instance, definition)) = self.load(&rules, request.instance) {
                let command = definition.command(&request.command);
                if let (true, Some(parent)) = (command.is_some_and(reaches_linked), instance.parent)
                {
                    lock_ids.push(parent);
                }
                if command.is_some_and(|c| !c.effects.send.is_empty()) {
                    lock_ids.extend(self.ancestors(instance.parent));
                }
            }
        }
        self.lock_instances(&lock_ids).await
    }

    /// The parents above `first` (inclusive), up to a bound; stops at one it cannot read.
    fn ancestors(&self, first: Option<InstanceId>) -> Vec<InstanceId> {
        let mut found = Vec::new();
        let mut next = first;
        while let Some(id) = next {
            if found.len() >= 32 {
                break;
            }
            found.push(id);
            next = self
                .inner
                .store
                .instance(id)
                .ok()
                .flatten()
                .and_then(|i| i.parent);
        }
        found
    }

    /// The top of the chain of parents above `parent`, when there is one above it (read
    /// through at most 32 links; a link that is gone ends the chain).
    pub(super) fn root_above(
        &self,
        parent: Option<&Instance>,
    ) -> Result<Option<Instance>, crate::store::StoreError> {
        let mut top: Option<Instance> = None;
        let mut next = parent.and_then(|p| p.parent);
        for _ in 0..32 {
            let Some(id) = next else { break };
            match self.inner.store.instance(id)? {
                Some(found) => {
                    next = found.parent;
                    top = Some(found);
                }
                None => break,
            }
        }
        Ok(top)
    }

    /// Cancels an active instance (status `cancelled`; its state is kept). The reason is
    /// optional.
    pub async fn cancel(&self, request: CancelRequest) -> Result<CommandOutcome, CommandError> {
        check_request_id(&request.request_id)?;
        check_reason(&request.reason)?;
        let payload = json!({ "reason": request.reason });
        let digest = digest(&payload);
        let target = RequestTarget::Cancel {
            instance: request.instance,
        };
        let _guards = self.lock_instances(&[request.instance]).await;
        let seen = OnceLock::new();
        let prepare =
            || std::future::ready(self.prepare_cancel(&request, &payload, &digest, &seen));
        let result = self
            .run(
                &request.request_id,
                &target,
                &digest,
                request.expected_version,
                prepare,
            )
            .await
            .map(Applied::into_outcome);
        self.count(seen.get().map(String::as_str), &target, &result);
        result
    }

    fn prepare_cancel(
        &self,
        request: &CancelRequest,
        payload: &Value,
        digest: &str,
        seen: &OnceLock<String>,
    ) -> Result<Prepared, CommandError> {
        let rules = self.rules();
        let (instance, definition) = self.load(&rules, request.instance)?;
        let _ = seen.set(definition.name.clone());
        require_role(&request.actor, &definition.cancel_roles, || {
            format!("cancel {} v{}", definition.name, definition.version)
        })?;
        require_active(&instance)?;
        check_expected(&instance, request.expected_version)?;
        let now = self.inner.config.clock.now();
        let mut after = instance.clone();
        after.cancel(now);
        let reason = if request.reason.is_empty() {
            "cancelled".to_string()
        } else {
            request.reason.clone()
        };
        let outcome = CommandOutcome::of(&after, reason.clone());
        let mut commit = Commit::new(now);
        commit.history.push(HistoryEntry {
            instance: after.id,
            version: after.version,
            at: now,
            actor: request.actor.clone(),
            request_id: Some(request.request_id.clone()),
            kind: ChangeKind::Cancelled,
            command: None,
            payload: payload.clone(),
            from_state: Some(instance.state.clone()),
            to_state: after.state.clone(),
            decider: None,
            reason,
            changes: json!({}),
            provenance: None,
        });
        commit.writes.push(InstanceWrite {
            instance: after,
            expected_version: Some(instance.version),
        });
        // Its open jobs and incidents go with it.
        for job in self.open_jobs(instance.id)? {
            {
                let mut cancelled = job.clone();
                cancelled.cancel(now);
                commit
                    .events
                    .push(self.job_event(EventType::JobCancelled, &cancelled, json!({})));
                commit.jobs.push(JobWrite {
                    job: cancelled,
                    expected_version: Some(job.version),
                });
            }
        }
        commit.request = Some(self.request_record(
            &request.request_id,
            RequestTarget::Cancel {
                instance: request.instance,
            },
            digest,
            &outcome,
            now,
        ));
        Ok(Prepared { commit, outcome })
    }

    /// Every open job of `instance` (waiting, leased or an incident), read page by page.
    fn open_jobs(&self, instance: InstanceId) -> Result<Vec<crate::job::Job>, CommandError> {
        const PAGE: usize = 500;
        let mut open = Vec::new();
        let mut after = None;
        loop {
            let page = self.inner.store.jobs_of(instance, after, PAGE)?;
            after = page.last().map(|j| j.id);
            let done = page.len() < PAGE;
            // A notification tells of something that happened; it is delivered even after
            // its instance is cancelled.
            open.extend(
                page.into_iter()
                    .filter(|j| j.is_open() && !crate::notification::is_notification(&j.job_type)),
            );
            if done {
                return Ok(open);
            }
        }
    }

    /// Takes the stripe locks of `ids` in ascending stripe order (so two commands never wait
    /// on each other crosswise).
    pub(super) async fn lock_instances(&self, ids: &[InstanceId]) -> Vec<MutexGuard<'_, ()>> {
        let stripes = self.inner.instance_locks.len();
        let mut indexes: Vec<usize> = ids
            .iter()
            .map(|id| (id.0.as_u64_pair().1 % stripes as u64) as usize)
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut guards = Vec::with_capacity(indexes.len());
        for i in indexes {
            guards.push(self.inner.instance_locks[i].lock().await);
        }
        guards
    }

    /// The common loop: replay a known request, otherwise prepare, submit, and re-prepare on
    /// a version conflict (unless the caller pinned a version).
    async fn run<F, Fut>(
        &self,
        request_id: &str,
        target: &RequestTarget,
        digest: &str,
        expected_version: Option<u64>,
        mut prepare: F,
    ) -> Result<Applied, CommandError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Prepared, CommandError>>,
    {
        let attempts_max = self.inner.config.conflict_retries_max + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(outcome) = self
                .known_request(request_id, target, digest, attempt)
                .await?
            {
                return Ok(Applied::Replayed(outcome));
            }
            let prepared = prepare().await?;
            let refusal = match self.commit_prepared(prepared).await? {
                Ok(outcome) => return Ok(Applied::Now(outcome)),
                Err(refusal) => refusal,
            };
            let retry = Retry {
                target,
                digest,
                expected_version,
                last: attempt >= attempts_max,
                attempt,
            };
            if let Some(applied) = retry.after(refusal)? {
                return Ok(applied);
            }
        }
    }

    /// The outcome of a live request record with this id, if there is one (refused if it
    /// recorded another request); on the first attempt also refuses an id a rule-set request
    /// took (request ids are global).
    async fn known_request(
        &self,
        request_id: &str,
        target: &RequestTarget,
        digest: &str,
        attempt: u32,
    ) -> Result<Option<CommandOutcome>, CommandError> {
        let now = self.inner.config.clock.now();
        if let Some(record) = self.inner.store.request(request_id)? {
            if record.expires_at > now {
                // The record may belong to a commit applied but not yet flushed: wait for
                // the flush, so a retry is never acknowledged before the original is.
                self.barrier().await?;
                return replay(&record, target, digest).map(Some);
            }
        }
        if attempt == 1 {
            if let Some(other) = self.inner.store.rule_set_request(request_id)? {
                if other.expires_at > now {
                    return Err(CommandError::RequestIdReused {
                        request_id: request_id.to_string(),
                        original: if other.subject.is_empty() {
                            format!("`{}` of rule set #{}", other.operation, other.number)
                        } else {
                            format!("`{}` of credential {}", other.operation, other.subject)
                        },
                    });
                }
            }
        }
        Ok(None)
    }

    /// Adds the instance events and submits; the outcome, or the store's refusal.
    pub(super) async fn commit_prepared(
        &self,
        mut prepared: Prepared,
    ) -> Result<Result<CommandOutcome, CommitRefusal>, CommandError> {
        let source = &self.inner.config.feed_source;
        let commit = &mut prepared.commit;
        let instance_events: Vec<_> = commit
            .writes
            .iter()
            .zip(&commit.history)
            .map(|(w, h)| feed::instance_event(source, h, &w.instance))
            .collect();
        commit.events.splice(0..0, instance_events);
        self.route_notifications(commit).await?;
        let makes_jobs_available = prepared.makes_jobs_available();
        Ok(match self.submit(prepared.commit).await? {
            Ok(applied) => {
                let mut outcome = prepared.outcome;
                outcome.counters = applied.counters;
                if makes_jobs_available {
                    self.inner.jobs_available.notify_waiters();
                }
                Ok(outcome)
            }
            Err(refusal) => Err(refusal),
        })
    }

    fn queue(&self) -> Result<tokio::sync::mpsc::Sender<Work>, CommandError> {
        self.inner
            .queue
            .read()
            .expect("queue lock poisoned")
            .clone()
            .ok_or(CommandError::ShuttingDown)
    }

    /// Waits until everything applied so far is durable.
    pub(super) async fn barrier(&self) -> Result<(), CommandError> {
        let (reply, answer) = oneshot::channel();
        self.queue()?
            .send(Work::Barrier { reply })
            .await
            .map_err(|_| CommandError::ShuttingDown)?;
        match answer.await {
            Ok(result) => result.map_err(CommandError::Store),
            Err(_) => Err(CommandError::ShuttingDown),
        }
    }

    /// Hands `commit` to the committer; answers once it is applied and flushed (or refused).
    pub(super) async fn submit(
        &self,
        commit: Commit,
    ) -> Result<Result<CommitApplied, CommitRefusal>, CommandError> {
        let submitted = std::time::Instant::now();
        let answer = self.enqueue(commit).await?;
        let answer = answer.await;
        self.inner
            .metrics
            .commit_latency
            .observe_duration(submitted.elapsed());
        match answer {
            Ok(result) => result.map_err(CommandError::Store),
            Err(_) => Err(CommandError::ShuttingDown),
        }
    }

    /// Queues `commit` for the committer; the receiver gets its answer after the flush.
    pub(super) async fn enqueue(
        &self,
        commit: Commit,
    ) -> Result<oneshot::Receiver<crate::committer::Reply>, CommandError> {
        if self
            .inner
            .stalled
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(CommandError::Store(crate::store::StoreError::Io(
                "a flush of the store has not returned for too long; restart the engine".into(),
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.queue()?
            .send(Work::Commit { commit, reply })
            .await
            .map_err(|_| CommandError::ShuttingDown)?;
        Ok(answer)
    }

    async fn prepare_command(
        &self,
        request: &CommandRequest,
        digest: &str,
        origin: Origin<'_>,
        seen_definition: &OnceLock<String>,
    ) -> Result<Prepared, CommandError> {
        // One snapshot of the rules for the whole decision, even if a rule set is activated
        // meanwhile.
        let rules = self.rules();
        let (instance, definition) = self.load(&rules, request.instance)?;
        let _ = seen_definition.set(definition.name.clone());
        let fired = match origin {
            Origin::Timer(timer) => Some(timer),
            _ => None,
        };
        let completing = match origin {
            Origin::Job { job, lease } => Some(self.current_lease(job, lease, instance.id)?),
            _ => None,
        };
        if let Some(timer) = fired {
            if !instance.timers.contains(timer) {
                return Err(CommandError::TimerNotOpen {
                    instance: instance.id,
                    timer: timer.name.clone(),
                });
            }
        }
        let command = self.check_command(&definition, &instance, request)?;
        let parent = match instance.parent {
            Some(p) => self.inner.store.instance(p)?,
            None => None,
        };
        let root = self.root_above(parent.as_ref())?;
        let inputs = DecisionInputs {
            definition: definition.clone(),
            command: command.name.clone(),
            instance,
            parent,
            root,
            payload: request.payload.clone(),
            actor: request.actor.clone(),
            now: self.inner.config.clock.now(),
            counters: self.counters_for(command),
            balances: self.balances_for(command),
        };
        let (decision, inputs) = self.decide(&rules, command, inputs).await?;
        let cx = CommandContext {
            rules: &rules,
            request,
            digest,
            definition: &definition,
            command,
            instance: &inputs.instance,
            parent: inputs.parent.as_ref(),
            now: inputs.now,
            fired,
            sent_by: None,
        };
        let mut builder = CommitBuilder::transition(self, &cx, &decision)?;
        builder.counters_read(inputs.counters.reads());
        builder.balances_read(inputs.balances.reads());
        for effect in decision.effects {
            builder.effect(effect).await?;
        }
        if let Some(timer) = fired {
            builder.timer_fired(timer);
        }
        if let Some(job) = &completing {
            builder.job_completed(job);
        }
        Ok(builder.finish())
    }

    /// The command as declared, if the request may send it to `instance` now: it exists, the
    /// actor holds a role, the instance is active and in a `from` state, the payload fits and
    /// the expected version (if any) matches.
    pub(super) fn check_command<'d>(
        &self,
        definition: &'d Definition,
        instance: &Instance,
        request: &CommandRequest,
    ) -> Result<&'d CommandDef, CommandError> {
        let command =
            definition
                .command(&request.command)
                .ok_or_else(|| CommandError::UnknownCommand {
                    definition: instance.definition.clone(),
                    command: crate::error::clip(&request.command, 128),
                    accepted: definition
                        .commands
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
        require_role(&request.actor, &command.roles, || {
            format!(
                "send `{}` to {} v{}",
                command.name, definition.name, definition.version
            )
        })?;
        if command.owner_only {
            require_owner(&request.actor, instance, definition, command)?;
        }
        require_active(instance)?;
        if !command.from.contains(&instance.state) {
            return Err(CommandError::WrongState {
                instance: instance.id,
                command: command.name.clone(),
                state: instance.state.clone(),
                allowed: command.from.join(", "),
            });
        }
        check_violations(command.payload.validate(&request.payload))?;
        check_expected(instance, request.expected_version)?;
        Ok(command)
    }

    /// Asks the command's decider (a fixed move when it has none), on the rule pool; hands the
    /// inputs back for the commit.
    pub(super) async fn decide(
        &self,
        rules: &Active,
        command: &CommandDef,
        inputs: DecisionInputs,
    ) -> Result<(Decision, DecisionInputs), CommandError> {
        let Some(name) = &command.decider else {
            let to = &command.to[0];
            let decision = Decision::goto(to.clone(), format!("{} → {to}", command.name));
            return Ok((decision, inputs));
        };
        // A definition whose decisions stay pinned is decided by the version its instance
        // started under.
        let deciders = self
            .deciders_for(rules, &inputs.definition, &inputs.instance)
            .await?;
        let decider = deciders
            .get(name)
            .cloned()
            .ok_or_else(|| CommandError::DecisionFailed {
                decider: name.clone(),
                command: command.name.clone(),
                message: "the decider is not registered in this engine".into(),
                location: None,
            })?;
        let on_pool = decider.on_rule_pool();
        let evaluate = move || {
            let started = std::time::Instant::now();
            let decided = decider.decide(&inputs.context());
            (decided, started.elapsed(), inputs)
        };
        let ran = if on_pool {
            self.inner.rule_pool.run("decision", evaluate).await?
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(evaluate))
                .map_err(|panic| crate::error::panic_message(&*panic))
        };
        match ran {
            Ok((decided, took, inputs)) => {
                self.inner.metrics.rule_evaluation.observe_duration(took);
                if let Some(failure) = inputs.counters.store_failure() {
                    return Err(CommandError::Store(failure));
                }
                let decision = decided.map_err(|e| decide_error(e, name, &command.name))?;
                Ok((decision, inputs))
            }
            Err(panic) => Err(CommandError::DecisionFailed {
                decider: name.clone(),
                command: command.name.clone(),
                message: format!("the decider panicked: {}", crate::error::clip(&panic, 200)),
                location: None,
            }),
        }
    }

    /// The counters a decider of `command` may read: those it declares, read from the store.
    pub(super) fn counters_for(&self, command: &CommandDef) -> Counters {
        self.counters_reading(Some(command.effects.counters.clone()))
    }

    /// Counter values read from the store: of the `allowed` counters, or (`None`) any.
    pub(super) fn counters_reading(&self, allowed: Option<Vec<String>>) -> Counters {
        let store = self.inner.store.clone();
        Counters::live(
            Arc::new(move |counter: &str, key: &str| store.counter(counter, key)),
            allowed,
        )
    }

    /// The balances a decider of `command` may read: those it declares, read from the store.
    pub(super) fn balances_for(&self, command: &CommandDef) -> Balances {
        self.balances_reading(Some(command.effects.balances.clone()))
    }

    /// Balance values read from the store: of the `allowed` balances, or (`None`) any.
    pub(super) fn balances_reading(&self, allowed: Option<Vec<String>>) -> Balances {
        let store = self.inner.store.clone();
        Balances::live(
            Arc::new(move |balance: &str, key: &str| store.balance(balance, key)),
            allowed,
        )
    }

    pub(super) fn request_record(
        &self,
        request_id: &str,
        target: RequestTarget,
        digest: &str,
        outcome: &CommandOutcome,
        now: DateTime<Utc>,
    ) -> RequestRecord {
        RequestRecord {
            request_id: request_id.to_string(),
            target,
            payload_digest: digest.to_string(),
            outcome: outcome.clone(),
            recorded_at: now,
            expires_at: now + self.inner.config.request_retention,
        }
    }

    /// The instance `id` and the definition version it is pinned to.
    pub(super) fn load(
        &self,
        rules: &Active,
        id: InstanceId,
    ) -> Result<(Instance, Arc<Definition>), CommandError> {
        let instance = self
            .inner
            .store
            .instance(id)?
            .ok_or(CommandError::UnknownInstance(id))?;
        let definition = rules
            .definitions
            .get(&instance.definition.name, instance.definition.version)
            .cloned()
            .ok_or_else(|| CommandError::DefinitionNotLoaded {
                instance: id,
                definition: instance.definition.clone(),
            })?;
        Ok((instance, definition))
    }

    /// The definition a new instance of `name` starts on: the version in the active rule set
    /// — so a rollback also rolls back what new instances start on — or, for an engine opened
    /// with fixed definitions, the latest loaded.
    pub(super) fn start_definition(
        &self,
        rules: &Active,
        name: &str,
    ) -> Result<Arc<Definition>, CommandError> {
        let found = match &rules.startable {
            Some(startable) => startable.get(name),
            None => rules.definitions.latest(name),
        };
        found
            .cloned()
            .ok_or_else(|| CommandError::UnknownDefinition {
                name: crate::error::clip(name, 128),
                loaded: match &rules.startable {
                    Some(startable) => startable.keys().cloned().collect::<Vec<_>>().join(", "),
                    None => rules.definitions.names().join(", "),
                },
            })
    }
}

/// What a decider is given, owned, so that it can run on the rule pool's threads.
pub(super) struct DecisionInputs {
    pub definition: Arc<Definition>,
    pub command: String,
    pub instance: Instance,
    pub parent: Option<Instance>,
    pub root: Option<Instance>,
    pub payload: Value,
    pub actor: crate::model::Actor,
    pub now: DateTime<Utc>,
    pub counters: Counters,
    pub balances: Balances,
}

impl DecisionInputs {
    fn context(&self) -> DecisionContext<'_> {
        DecisionContext {
            definition: &self.definition,
            command: self
                .definition
                .command(&self.command)
                .expect("the command was checked against this definition"),
            instance: &self.instance,
            payload: &self.payload,
            actor: &self.actor,
            parent: self.parent.as_ref(),
            root: self.root.as_ref(),
            now: self.now,
            counters: &self.counters,
            balances: &self.balances,
        }
    }
}

/// A decider's error as the caller sees it: a business refusal the rule chose, or a failure.
pub(super) fn decide_error(error: DecideError, decider: &str, command: &str) -> CommandError {
    match error {
        DecideError::Refused { code, message } => CommandError::DecisionRefused {
            decider: decider.to_string(),
            command: command.to_string(),
            code,
            message,
        },
        DecideError::Failed { message, location } => CommandError::DecisionFailed {
            decider: decider.to_string(),
            command: command.to_string(),
            message,
            location,
        },
    }
}

/// What to do after the store refused an attempt.
struct Retry<'a> {
    target: &'a RequestTarget,
    digest: &'a str,
    expected_version: Option<u64>,
    /// Whether that was the last attempt allowed.
    last: bool,
    attempt: u32,
}

impl Retry<'_> {
    /// `Some` answer, an error, or `None` to try again.
    fn after(&self, refusal: CommitRefusal) -> Result<Option<Applied>, CommandError> {
        match refusal {
            CommitRefusal::DuplicateRequest(record) => replay(&record, self.target, self.digest)
                .map(Applied::Replayed)
                .map(Some),
            CommitRefusal::CounterLimit {
                counter,
                key,
                limit,
            } => Err(CommandError::CounterLimit {
                counter,
                key,
                limit,
            }),
            CommitRefusal::JobConflict { job, current, .. } if self.last => {
                Err(CommandError::StaleLease {
                    job,
                    reason: format!(
                        "the job kept changing (now at version {})",
                        current.unwrap_or(0)
                    ),
                })
            }
            CommitRefusal::JobConflict { .. } => Ok(None),
            // What the decision read changed: decide again on the new value.
            CommitRefusal::CounterChanged { counter, key, .. } if self.last => {
                Err(CommandError::CounterConflict {
                    counter,
                    key,
                    attempts: self.attempt,
                })
            }
            CommitRefusal::CounterChanged {
                counter,
                key,
                read,
                current,
            } => {
                tracing::debug!(%counter, %key, read, current, attempt = self.attempt, "a counter read changed; re-evaluating");
                Ok(None)
            }
            CommitRefusal::BalanceChanged { balance, key, .. } if self.last => {
                Err(CommandError::BalanceConflict {
                    balance,
                    key,
                    attempts: self.attempt,
                })
            }
            CommitRefusal::BalanceChanged {
                balance,
                key,
                read,
                current,
            } => {
                tracing::debug!(%balance, %key, %read, %current, attempt = self.attempt, "a balance read changed; re-evaluating");
                Ok(None)
            }
            CommitRefusal::VersionConflict {
                instance,
                expected,
                current,
            } => {
                let current = current.unwrap_or(0);
                if let Some(expected) = self.expected_version {
                    return Err(CommandError::VersionMismatch {
                        instance,
                        expected,
                        current,
                    });
                }
                if self.last {
                    return Err(CommandError::Conflict {
                        instance,
                        current,
                        attempts: self.attempt,
                    });
                }
                tracing::debug!(%instance, ?expected, current, attempt = self.attempt, "version conflict; re-evaluating");
                Ok(None)
            }
        }
    }
}

fn replay(
    record: &RequestRecord,
    target: &RequestTarget,
    digest: &str,
) -> Result<CommandOutcome, CommandError> {
    if record.target == *target && record.payload_digest == digest {
        Ok(record.outcome.clone())
    } else {
        Err(CommandError::RequestIdReused {
            request_id: crate::error::clip(&record.request_id, 256),
            original: format!("{} with another payload", record.target),
        })
    }
}
