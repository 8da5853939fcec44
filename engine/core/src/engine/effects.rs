//! Building a command's commit: the transition of its instance, then one function per effect
//! kind. A new effect is a new [`Effect`] variant and one new function here; nothing else in
//! the command path changes.
//!
//! Every function checks the effect against the command's declaration (`effects.start`,
//! `effects.update`, `effects.jobs`, `effects.counters`) and refuses an undeclared one with
//! `DECISION_INVALID`, so a decider can only do what the definition says it may.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::checks::{check_business_key, check_decision, decision_invalid, display_list};
use super::command::DecisionInputs;
use super::requests::CommandRequest;
use super::{timers, Active, Engine, Prepared};
use crate::decider::{BalanceRead, CounterAssign, CounterRead, Decision, Effect, LinkedTarget};
use crate::definition::{CommandDef, Definition};
use crate::error::{clip, CommandError};
use crate::feed::{EventDraft, EventType};
use crate::job::Job;
use crate::model::{
    roles, Actor, ChangeKind, CommandOutcome, CounterValue, HistoryEntry, Instance, InstanceId,
    OpenTimer, RequestTarget,
};
use crate::patch::apply_merge_patch;
use crate::store::{BalanceChange, Commit, CounterDraw, InstanceWrite, JobWrite};

/// The longest chain of parents `LinkedTarget::Root` walks.
const ROOT_DEPTH_MAX: usize = 32;

/// What a command's commit is built from: the request, the instance as read, and the
/// definition it is pinned to, under one snapshot of the rules.
pub(super) struct CommandContext<'a> {
    pub rules: &'a Active,
    pub request: &'a CommandRequest,
    pub digest: &'a str,
    pub definition: &'a Definition,
    pub command: &'a CommandDef,
    pub instance: &'a Instance,
    pub parent: Option<&'a Instance>,
    pub now: DateTime<Utc>,
    /// The timer whose firing sent the command, if one did.
    pub fired: Option<&'a OpenTimer>,
    /// For a command another instance's decision sent (`effects.send`): that instance.
    pub sent_by: Option<InstanceId>,
}

/// A commit under construction.
pub(super) struct CommitBuilder<'a> {
    engine: &'a Engine,
    cx: &'a CommandContext<'a>,
    commit: Commit,
    started: Vec<InstanceId>,
    reason: String,
}

impl<'a> CommitBuilder<'a> {
    /// The command's own transition: the decision checked against the command, its changes
    /// applied, the timers planned, and its history entry.
    pub fn transition(
        engine: &'a Engine,
        cx: &'a CommandContext<'a>,
        decision: &Decision,
    ) -> Result<Self, CommandError> {
        check_decision(cx.command, decision)?;
        let mut after = cx.instance.clone();
        if decision.changes.is_object() {
            apply_merge_patch(&mut after.data, &decision.changes);
        }
        after.transition(
            &decision.next_state,
            cx.definition.is_terminal(&decision.next_state),
            cx.now,
        );
        timers::plan(cx.definition, cx.instance, &mut after, cx.fired, cx.now)?;
        let changes = if decision.changes.is_null() {
            json!({})
        } else {
            decision.changes.clone()
        };
        let history = HistoryEntry {
            instance: after.id,
            version: after.version,
            at: cx.now,
            actor: cx.request.actor.clone(),
            request_id: Some(cx.request.request_id.clone()),
            kind: match cx.sent_by {
                Some(by) => ChangeKind::LinkedCommand { by },
                None => ChangeKind::Command,
            },
            command: Some(cx.command.name.clone()),
            payload: cx.request.payload.clone(),
            from_state: Some(cx.instance.state.clone()),
            to_state: after.state.clone(),
            decider: cx.command.decider.clone(),
            reason: decision.reason.clone(),
            changes,
            provenance: decision.provenance.clone(),
        };
        let mut commit = Commit::new(cx.now);
        commit.writes.push(InstanceWrite {
            instance: after,
            expected_version: Some(cx.instance.version),
        });
        commit.history.push(history);
        Ok(CommitBuilder {
            engine,
            cx,
            commit,
            started: Vec::new(),
            reason: decision.reason.clone(),
        })
    }

    /// Adds one effect of the decision.
    pub async fn effect(&mut self, effect: Effect) -> Result<(), CommandError> {
        match effect {
            Effect::StartLinked {
                definition,
                business_key,
                data,
                state,
            } => self.start_linked(&definition, &business_key, data, state),
            Effect::UpdateLinked {
                instance,
                expected_version,
                changes,
                reason,
            } => self.update_linked(instance, expected_version, changes, reason),
            Effect::CreateJob { job_type, payload } => self.create_job(&job_type, payload),
            Effect::DrawCounter {
                counter,
                key,
                limit,
                assign,
            } => self.draw_counter(counter, key, limit, assign),
            Effect::ReturnCounter { counter, key } => self.return_counter(counter, key),
            Effect::AdjustBalance {
                balance,
                key,
                amount,
            } => self.adjust_balance(balance, key, amount),
            Effect::SendLinked {
                to,
                command,
                payload,
            } => self.send_linked(to, command, payload).await,
        }
    }

    fn invalid(&self, message: String) -> CommandError {
        decision_invalid(self.cx.command, message)
    }

    fn start_linked(
        &mut self,
        child_name: &str,
        business_key: &str,
        data: Value,
        state: Option<String>,
    ) -> Result<(), CommandError> {
        let cx = self.cx;
        if !cx.command.effects.start.iter().any(|s| s == child_name) {
            return Err(self.invalid(format!(
                "it starts a `{child_name}`, but command `{}` may only start: {}",
                cx.command.name,
                display_list(&cx.command.effects.start)
            )));
        }
        let child_def = &*self.engine.start_definition(cx.rules, child_name)?;
        check_business_key("effects.start.business_key", business_key)
            .map_err(|e| self.invalid(e.to_string()))?;
        let violations = child_def.start.payload.validate(&data);
        if !violations.is_empty() {
            return Err(self.invalid(format!(
                "the data for the new `{child_name}` is invalid: {}",
                violations
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        let state = match state {
            None => child_def.initial.clone(),
            Some(s) if s == child_def.initial || child_def.start.states.contains(&s) => s,
            Some(s) => {
                let mut allowed = vec![child_def.initial.clone()];
                allowed.extend(child_def.start.states.iter().cloned());
                return Err(self.invalid(format!(
                    "a new `{child_name}` cannot begin in `{}`; it begins in: {}",
                    clip(&s, 64),
                    display_list(&allowed)
                )));
            }
        };
        let timers = timers::timers_for(child_def, &state, &data, cx.now)
            .map_err(|e| self.invalid(format!("the new `{child_name}`: {e}")))?;
        let mut child = Instance::new_started(
            child_def,
            business_key,
            data.clone(),
            &cx.request.actor,
            cx.now,
        );
        child.parent = Some(cx.instance.id);
        child.state = state;
        child.timers = timers;
        child.rule_set = cx.rules.rule_set.as_ref().map(|r| r.number);
        let reason = format!(
            "started by `{}` on {} {}",
            cx.command.name, cx.definition.name, cx.instance.id
        );
        self.commit.history.push(HistoryEntry::started(
            &child,
            &cx.request.actor,
            Some(&cx.request.request_id),
            &data,
            reason,
            Some(cx.instance.id),
        ));
        self.started.push(child.id);
        self.commit.writes.push(InstanceWrite {
            instance: child,
            expected_version: None,
        });
        Ok(())
    }

    fn update_linked(
        &mut self,
        linked_id: InstanceId,
        expected_version: Option<u64>,
        changes: Value,
        reason: String,
    ) -> Result<(), CommandError> {
        let cx = self.cx;
        if !changes.is_object() {
            return Err(self.invalid(format!(
                "its changes for linked instance {linked_id} must be a JSON object"
            )));
        }
        let linked = match cx.parent {
            Some(p) if p.id == linked_id => Some(p.clone()),
            _ => self.engine.inner.store.instance(linked_id)?,
        };
        let Some(mut linked) = linked else {
            return Err(self.invalid(format!(
                "it updates instance {linked_id}, which does not exist"
            )));
        };
        if linked.parent != Some(cx.instance.id) && cx.instance.parent != Some(linked.id) {
            return Err(self.invalid(format!(
                "it updates instance {linked_id}, which is neither the parent nor a child of {}",
                cx.instance.id
            )));
        }
        if !cx.command.effects.update.contains(&linked.definition.name) {
            return Err(self.invalid(format!(
                "it updates a `{}`, but command `{}` may only update: {}",
                linked.definition.name,
                cx.command.name,
                display_list(&cx.command.effects.update)
            )));
        }
        if self
            .commit
            .writes
            .iter()
            .any(|w| w.instance.id == linked_id)
        {
            return Err(self.invalid(format!("it updates instance {linked_id} twice")));
        }
        let seen = expected_version.unwrap_or(linked.version);
        let state = linked.state.clone();
        linked.update_data(&changes, seen, cx.now);
        self.commit.history.push(HistoryEntry {
            instance: linked.id,
            version: linked.version,
            at: cx.now,
            actor: cx.request.actor.clone(),
            request_id: Some(cx.request.request_id.clone()),
            kind: ChangeKind::LinkedUpdate { by: cx.instance.id },
            command: Some(cx.command.name.clone()),
            payload: cx.request.payload.clone(),
            from_state: Some(state.clone()),
            to_state: state,
            decider: cx.command.decider.clone(),
            reason,
            changes,
            provenance: None,
        });
        self.commit.writes.push(InstanceWrite {
            instance: linked,
            expected_version: Some(seen),
        });
        Ok(())
    }

    fn create_job(&mut self, job_type: &str, payload: Value) -> Result<(), CommandError> {
        let cx = self.cx;
        if !cx.command.effects.jobs.iter().any(|j| j == job_type) {
            return Err(self.invalid(format!(
                "it creates a `{job_type}` job, but command `{}` may only create: {}",
                cx.command.name,
                display_list(&cx.command.effects.jobs)
            )));
        }
        let spec = &cx.definition.jobs[job_type];
        let job = Job::new(spec, cx.instance.id, payload, cx.now);
        let event = self
            .engine
            .job_event(EventType::JobCreated, &job, json!({}));
        self.commit.events.push(event);
        self.commit.jobs.push(JobWrite {
            job,
            expected_version: None,
        });
        Ok(())
    }

    fn draw_counter(
        &mut self,
        counter: String,
        key: String,
        limit: Option<u64>,
        assign: Option<CounterAssign>,
    ) -> Result<(), CommandError> {
        let cx = self.cx;
        self.check_counter(&counter, &key, "draws from", "may only draw from")?;
        if assign.is_some() && cx.sent_by.is_some() {
            return Err(self.invalid(format!(
                "a command sent by a linked instance cannot assign counter `{counter}` to a field"
            )));
        }
        if let Some(a) = &assign {
            if !a.path_is_valid() || a.width > 32 {
                return Err(self.invalid(format!(
                    "counter assignment to `{}` needs a field (an identifier, or a dotted path of identifiers and list indices) and a width of at most 32",
                    a.field
                )));
            }
            let reaches = a.field == a.top()
                || self
                    .commit
                    .writes
                    .first()
                    .is_some_and(|w| a.write(&mut w.instance.data.clone(), 0));
            if !reaches {
                return Err(self.invalid(format!(
                    "counter assignment to `{}`: the decision's data has no such place (create the entry first, e.g. with an empty `number`)",
                    a.field
                )));
            }
        }
        self.commit.counters.push(CounterDraw {
            counter,
            key,
            limit,
            assign,
            give_back: false,
        });
        Ok(())
    }

    /// The counter is declared in the command's `effects.counters` and the key is valid.
    fn check_counter(
        &self,
        counter: &str,
        key: &str,
        doing: &str,
        allowed: &str,
    ) -> Result<(), CommandError> {
        let command = self.cx.command;
        if !command.effects.counters.iter().any(|c| c == counter) {
            return Err(self.invalid(format!(
                "it {doing} counter `{counter}`, but command `{}` {allowed}: {}",
                command.name,
                display_list(&command.effects.counters)
            )));
        }
        check_business_key("effects.counters.key", key).map_err(|e| self.invalid(e.to_string()))
    }

    fn return_counter(&mut self, counter: String, key: String) -> Result<(), CommandError> {
        self.check_counter(&counter, &key, "gives back to", "may only use")?;
        self.commit.counters.push(CounterDraw {
            counter,
            key,
            limit: None,
            assign: None,
            give_back: true,
        });
        Ok(())
    }

    /// A command for a linked instance, sent as `system`: checked like any command, decided
    /// by its own decider, and its transition (with its effects) added to this commit. A
    /// command so sent may not send further commands.
    async fn send_linked(
        &mut self,
        to: LinkedTarget,
        command: String,
        payload: Value,
    ) -> Result<(), CommandError> {
        let cx = self.cx;
        if cx.sent_by.is_some() {
            return Err(self.invalid(format!(
                "it sends `{command}` to its {to}, but a command sent by a linked instance may not send further commands"
            )));
        }
        let (request, instance, definition) = self.linked_request(to, &command, payload)?;
        let target = instance.id;
        let refused = |cause: CommandError| match cause {
            CommandError::Store(_)
            | CommandError::ShuttingDown
            | CommandError::Overloaded { .. } => cause,
            cause => CommandError::LinkedCommandRefused {
                instance: target,
                definition: definition.name.clone(),
                command: command.clone(),
                cause: Box::new(cause),
            },
        };
        let linked_command = self
            .engine
            .check_command(&definition, &instance, &request)
            .map_err(refused)?;
        // Its parent as this commit leaves it, when the sender is that parent.
        let parent = match instance.parent {
            Some(p) => match self.commit.writes.iter().find(|w| w.instance.id == p) {
                Some(w) => Some(w.instance.clone()),
                None => self.engine.inner.store.instance(p)?,
            },
            None => None,
        };
        let root = self.engine.root_above(parent.as_ref())?;
        let inputs = DecisionInputs {
            definition: definition.clone(),
            command: command.clone(),
            instance,
            parent,
            root,
            payload: request.payload.clone(),
            actor: request.actor.clone(),
            now: cx.now,
            counters: self.engine.counters_for(linked_command),
            balances: self.engine.balances_for(linked_command),
        };
        let (decision, inputs) = self
            .engine
            .decide(cx.rules, linked_command, inputs)
            .await
            .map_err(refused)?;
        let lcx = CommandContext {
            rules: cx.rules,
            request: &request,
            digest: cx.digest,
            definition: &definition,
            command: linked_command,
            instance: &inputs.instance,
            parent: inputs.parent.as_ref(),
            now: cx.now,
            fired: None,
            sent_by: Some(cx.instance.id),
        };
        let mut linked =
            CommitBuilder::transition(self.engine, &lcx, &decision).map_err(refused)?;
        linked.counters_read(inputs.counters.reads());
        linked.balances_read(inputs.balances.reads());
        for effect in decision.effects {
            Box::pin(linked.effect(effect)).await.map_err(refused)?;
        }
        self.absorb(linked.commit, linked.started)
    }

    /// The request a sent command makes, with its target as read and that target's definition,
    /// if the command declares it and the target is linked and not yet changed in this commit.
    fn linked_request(
        &self,
        to: LinkedTarget,
        command: &str,
        payload: Value,
    ) -> Result<(CommandRequest, Instance, Arc<Definition>), CommandError> {
        let cx = self.cx;
        let target = self.linked_target(to)?;
        let (instance, definition) = self.engine.load(cx.rules, target)?;
        let declared = format!("{}.{command}", definition.name);
        if !cx.command.effects.send.contains(&declared) {
            return Err(self.invalid(format!(
                "it sends `{}`, but command `{}` may only send: {}",
                crate::error::clip(&declared, 128),
                cx.command.name,
                display_list(&cx.command.effects.send)
            )));
        }
        if self.commit.writes.iter().any(|w| w.instance.id == target) {
            return Err(self.invalid(format!(
                "it changes instance {target} twice (a command sent to it and another change)"
            )));
        }
        let request = CommandRequest::new(
            target,
            command,
            Actor::new(format!("system:{}", cx.definition.name), &[roles::SYSTEM]),
            cx.request.request_id.clone(),
        )
        .payload(payload);
        Ok((request, instance, definition))
    }

    /// The instance `to` names, which must be linked to this one.
    fn linked_target(&self, to: LinkedTarget) -> Result<InstanceId, CommandError> {
        let cx = self.cx;
        let no_parent = || {
            self.invalid(format!(
                "it sends a command to its {to}, but {} has no parent",
                cx.instance.id
            ))
        };
        match to {
            LinkedTarget::Parent => cx.instance.parent.ok_or_else(no_parent),
            LinkedTarget::Root => {
                let mut id = cx.instance.parent.ok_or_else(no_parent)?;
                // A chain of parents is short; the bound only guards against a corrupt loop.
                for _ in 0..ROOT_DEPTH_MAX {
                    let Some(up) = self.engine.inner.store.instance(id)? else {
                        return Err(self.invalid(format!("its ancestor {id} does not exist")));
                    };
                    match up.parent {
                        Some(p) => id = p,
                        None => return Ok(id),
                    }
                }
                Err(self.invalid(format!(
                    "its chain of parents is longer than {ROOT_DEPTH_MAX}"
                )))
            }
            LinkedTarget::Instance(id) => {
                let linked = cx.instance.parent == Some(id)
                    || self
                        .engine
                        .inner
                        .store
                        .instance(id)?
                        .is_some_and(|i| i.parent == Some(cx.instance.id));
                if linked || self.linked_target(LinkedTarget::Root).ok() == Some(id) {
                    Ok(id)
                } else {
                    Err(self.invalid(format!(
                        "it sends a command to instance {id}, which is not its parent, root or child"
                    )))
                }
            }
        }
    }

    /// Takes a linked command's commit into this one.
    fn absorb(&mut self, linked: Commit, started: Vec<InstanceId>) -> Result<(), CommandError> {
        for write in &linked.writes {
            if self
                .commit
                .writes
                .iter()
                .any(|w| w.instance.id == write.instance.id)
            {
                return Err(self.invalid(format!(
                    "instance {} would be changed twice in one commit",
                    write.instance.id
                )));
            }
        }
        self.commit.writes.extend(linked.writes);
        self.commit.history.extend(linked.history);
        self.commit.events.extend(linked.events);
        self.commit.jobs.extend(linked.jobs);
        self.commit.counters.extend(linked.counters);
        self.commit.counter_checks.extend(linked.counter_checks);
        self.commit.balances.extend(linked.balances);
        self.commit.balance_checks.extend(linked.balance_checks);
        self.started.extend(started);
        Ok(())
    }

    /// Checks, when the commit is written, that the counter values the decision read still
    /// hold.
    pub fn counters_read(&mut self, reads: Vec<CounterRead>) {
        self.commit
            .counter_checks
            .extend(reads.into_iter().map(|r| CounterValue {
                counter: r.counter,
                key: r.key,
                value: r.value,
            }));
    }

    /// Checks, when the commit is written, that the balance values the decision read still
    /// hold.
    pub fn balances_read(&mut self, reads: Vec<BalanceRead>) {
        self.commit.balance_checks.extend(reads);
    }

    /// Moves a balance the command declares in `effects.balances`.
    fn adjust_balance(
        &mut self,
        balance: String,
        key: String,
        amount: rust_decimal::Decimal,
    ) -> Result<(), CommandError> {
        let command = self.cx.command;
        if !command.effects.balances.contains(&balance) {
            return Err(self.invalid(format!(
                "it moves balance `{}`, but the command may only move: {}",
                crate::error::clip(&balance, 64),
                if command.effects.balances.is_empty() {
                    "(nothing)".to_string()
                } else {
                    command.effects.balances.join(", ")
                }
            )));
        }
        if balance == crate::notification::DEDUP_BALANCE {
            return Err(self.invalid(format!(
                "balance `{balance}` is the engine's own (notification de-duplication)"
            )));
        }
        if key.is_empty() || key.len() > 128 {
            return Err(self.invalid(format!("balance `{balance}` needs a key of 1 to 128 bytes")));
        }
        self.commit.balances.push(BalanceChange {
            balance,
            key,
            amount,
        });
        Ok(())
    }

    /// Records that the timer `timer` fell due and sent this command.
    pub fn timer_fired(&mut self, timer: &OpenTimer) {
        let instance = self.cx.instance;
        self.commit.events.push(EventDraft {
            source: self.engine.inner.config.feed_source.clone(),
            kind: EventType::TimerFired,
            subject: instance.id.to_string(),
            time: self.cx.now,
            data: json!({
                "instance": instance.id,
                "definition": instance.definition,
                "timer": timer.name,
                "command": timer.command,
                "due": timer.due,
                "state": instance.state,
            }),
        });
    }

    /// Marks `job`, whose completion sent this command, completed in the same commit.
    pub fn job_completed(&mut self, job: &Job) {
        let mut done = job.clone();
        done.complete(self.cx.now);
        self.commit.events.push(self.engine.job_event(
            EventType::JobCompleted,
            &done,
            json!({ "result": self.cx.request.payload }),
        ));
        self.commit.jobs.push(JobWrite {
            job: done,
            expected_version: Some(job.version),
        });
    }

    /// The finished commit with its idempotency record and the outcome it acknowledges.
    pub fn finish(self) -> Prepared {
        let cx = self.cx;
        let mut outcome = CommandOutcome::of(&self.commit.writes[0].instance, self.reason);
        outcome.started = self.started;
        let mut commit = self.commit;
        commit.request = Some(self.engine.request_record(
            &cx.request.request_id,
            RequestTarget::Command {
                instance: cx.instance.id,
                command: cx.command.name.clone(),
            },
            cx.digest,
            &outcome,
            cx.now,
        ));
        Prepared { commit, outcome }
    }
}
