//! Timer incidents: a due timer whose command fails is taken out of its instance's open
//! timers and recorded on the instance as an incident — in the same commit, with a history
//! entry and a `switchyard.incident.raised` event — so it stops firing (and stops failing)
//! until an admin retries or cancels it. Other timers keep firing. Job incidents live with the
//! jobs (`engine::jobs`).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::checks::require_role;
use super::{Engine, Prepared};
use crate::error::CommandError;
use crate::job::IncidentAction;
use crate::model::{
    roles, Actor, ChangeKind, CommandOutcome, DueTimer, HistoryEntry, Instance, InstanceId,
    InstanceStatus, TimerIncident,
};
use crate::store::{Commit, CommitRefusal, InstanceWrite};

/// Longest error text kept on an incident.
const ERROR_CHARS_MAX: usize = 2048;

impl CommandError {
    /// Whether trying again later may succeed without anything changing: the store was
    /// unavailable, the engine is stopping, or concurrent commands kept winning. A timer
    /// whose command fails for any other reason becomes an incident.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CommandError::Store(_)
                | CommandError::ShuttingDown
                | CommandError::Conflict { .. }
                | CommandError::Overloaded { .. }
        )
    }
}

impl Engine {
    /// Raises an incident for `due`, whose command failed with `error`. Returns `false` when
    /// the timer was no longer open (the instance moved on meanwhile).
    pub(super) async fn raise_timer_incident(
        &self,
        due: &DueTimer,
        error: &str,
    ) -> Result<bool, CommandError> {
        let error = crate::error::clip(error, ERROR_CHARS_MAX);
        for _ in 0..=self.inner.config.conflict_retries_max {
            let instance = self.get(due.instance).await?;
            if !instance.timers.contains(&due.timer) {
                return Ok(false);
            }
            let now = self.inner.config.clock.now();
            let mut after = instance.clone();
            after.timers.retain(|t| t != &due.timer);
            after.incidents.push(TimerIncident {
                timer: due.timer.clone(),
                error: error.clone(),
                raised_at: now,
            });
            let details = json!({
                "kind": "timer",
                "timer": due.timer.name,
                "command": due.timer.command,
                "due": due.timer.due,
                "error": error,
            });
            let reason = format!("timer `{}` failed: {error}", due.timer.name);
            let kind = ChangeKind::TimerIncidentRaised {
                timer: due.timer.name.clone(),
            };
            let actor = Actor::new("system:timer", &[roles::SYSTEM]);
            let prepared = incident_commit(&instance, after, kind, details, reason, &actor, now);
            match self.commit_prepared(prepared).await? {
                Ok(_) => return Ok(true),
                Err(CommitRefusal::VersionConflict { .. }) => continue,
                Err(other) => {
                    tracing::error!(?other, "unexpected refusal of a timer incident");
                    return Ok(false);
                }
            }
        }
        Err(CommandError::Conflict {
            instance: due.instance,
            current: 0,
            attempts: self.inner.config.conflict_retries_max + 1,
        })
    }

    /// Resolves the incident of timer `timer` on `instance`: `Retry` puts the timer back,
    /// due now (it fires on the next poll); `Cancel` drops it. Needs the `admin` role; a
    /// retry needs the instance to be active.
    pub async fn resolve_timer_incident(
        &self,
        instance: InstanceId,
        timer: &str,
        action: IncidentAction,
        actor: &Actor,
    ) -> Result<CommandOutcome, CommandError> {
        require_role(actor, &[roles::ADMIN.to_string()], || {
            format!("resolve the incident of timer `{timer}` on instance {instance}")
        })?;
        for _ in 0..=self.inner.config.conflict_retries_max {
            let current = self.get(instance).await?;
            let Some(index) = current.incidents.iter().position(|i| i.timer.name == timer) else {
                return Err(CommandError::NoSuchIncident {
                    instance,
                    timer: crate::error::clip(timer, 128),
                });
            };
            let now = self.inner.config.clock.now();
            let mut after = current.clone();
            let incident = after.incidents.remove(index);
            let retry = matches!(action, IncidentAction::Retry { .. });
            if retry {
                if current.status != InstanceStatus::Active {
                    return Err(CommandError::NotActive {
                        instance,
                        status: current.status,
                        state: current.state.clone(),
                    });
                }
                let mut again = incident.timer.clone();
                again.due = now;
                after.timers.push(again);
            }
            let action_name = if retry { "retry" } else { "cancel" };
            let details = json!({ "kind": "timer", "timer": timer, "action": action_name });
            let reason = format!("timer `{timer}` incident resolved: {action_name}");
            let kind = ChangeKind::TimerIncidentResolved {
                timer: timer.to_string(),
            };
            let prepared = incident_commit(&current, after, kind, details, reason, actor, now);
            match self.commit_prepared(prepared).await? {
                Ok(outcome) => return Ok(outcome),
                Err(CommitRefusal::VersionConflict { .. }) => continue,
                Err(other) => {
                    return Err(CommandError::Store(crate::store::StoreError::Io(format!(
                        "unexpected refusal: {other:?}"
                    ))))
                }
            }
        }
        Err(CommandError::Conflict {
            instance,
            current: 0,
            attempts: self.inner.config.conflict_retries_max + 1,
        })
    }
}

/// The commit of an incident change: `after` (made from `before`) with its history entry.
fn incident_commit(
    before: &Instance,
    mut after: Instance,
    kind: ChangeKind,
    details: Value,
    reason: String,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Prepared {
    after.version += 1;
    after.updated_at = now;
    let mut commit = Commit::new(now);
    commit.history.push(HistoryEntry {
        instance: after.id,
        version: after.version,
        at: now,
        actor: actor.clone(),
        request_id: None,
        kind,
        command: None,
        payload: details,
        from_state: Some(before.state.clone()),
        to_state: after.state.clone(),
        decider: None,
        reason: reason.clone(),
        changes: json!({}),
        provenance: None,
    });
    let outcome = CommandOutcome::of(&after, reason);
    commit.writes.push(InstanceWrite {
        instance: after,
        expected_version: Some(before.version),
    });
    Prepared { commit, outcome }
}
