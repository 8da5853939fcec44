//! Payment-provider events (webhooks) into commands. A provider event is recorded as an
//! instance of the rule set's `provider_event` definition whose id is derived from
//! `<provider>:<event id>`, so however often the provider delivers it, it is recorded once;
//! the rule set's mapping then routes it, and the engine sends the commands it decides. Each
//! step is a command with its own request id, so a delivery interrupted by a crash (the
//! provider redelivers until it is acknowledged) finishes the work without doing any step
//! twice. The signature is the receiver's business (`switchyard_payments::webhooks`); this
//! takes events already verified.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{CommandRequest, Engine, StartRequest};
use crate::error::{clip, CommandError};
use crate::model::{roles, Actor, Instance, InstanceId, InstanceStatus};
use crate::store::ListQuery;

/// The definition a provider event is recorded as (`rules/definitions/provider_event.toml`).
pub const PROVIDER_EVENT_DEFINITION: &str = "provider_event";

/// Namespace of the ids of provider-event instances (UUIDv5 of `<provider>:<event id>`).
const NAMESPACE: Uuid = Uuid::from_u128(0x5b1c_7d0e_2f44_4a8e_9c3d_6e0f_1a2b_3c4d);

const PROVIDER_CHARS_MAX: usize = 40;
const EVENT_ID_CHARS_MAX: usize = 160;
const EVENT_TYPE_CHARS_MAX: usize = 100;
/// Most lookups a mapping may ask for, and fields it may copy from each instance found.
const LOOKUPS_MAX: usize = 4;
const LOOKUP_FIELDS_MAX: usize = 8;
/// Most commands one provider event may cause.
const ACTIONS_MAX: usize = 8;
/// Steps from `received` to a final state: route, map, dispatch (and a spare for a reject).
const STEPS_MAX: usize = 4;

/// A payment provider's event, its signature already verified by whoever received it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderEvent {
    /// The provider's name as the rule set's mapping knows it (`stripe`, `adyen`).
    pub provider: String,
    /// The provider's id of the event (Stripe's `evt_…`; Adyen's `<pspReference>:<eventCode>`):
    /// the same id is applied once.
    pub event_id: String,
    /// The provider's type of the event (`charge.dispute.created`, `CHARGEBACK`).
    pub event_type: String,
    /// The event as the provider sent it.
    pub event: Value,
}

/// What became of a provider event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Its `provider_event` instance (history, data and feed events tell the whole story).
    pub instance: InstanceId,
    /// It had been recorded and finished before: nothing changed.
    pub duplicate: bool,
    /// Its final state: `applied`, `ignored`, `unmatched` or `refused`.
    pub state: String,
    /// Why, as its last step recorded it.
    pub reason: String,
}

impl Engine {
    /// Records a verified provider event and applies the commands the rule set's mapping
    /// decides, once per `<provider>:<event id>`. Acknowledge the provider only after this
    /// returns `Ok`: an error means nothing or only part of the work is done, and the same
    /// event delivered again finishes it. An event the mapping does not know, or whose
    /// commands are refused, is recorded and answered `Ok` (state `ignored`, `unmatched` or
    /// `refused`), so a provider does not retry it forever.
    pub async fn ingest_provider_event(
        &self,
        actor: &Actor,
        event: ProviderEvent,
    ) -> Result<IngestOutcome, CommandError> {
        super::require_role(actor, &[roles::SYSTEM.to_string()], || {
            "ingest a provider event".into()
        })?;
        check_event(&event)?;
        let key = format!("{}:{}", event.provider, event.event_id);
        let id = Self::provider_event_id(&event.provider, &event.event_id);
        let request_id = format!("provider-event:{key}");
        let existing = self.inner.store.instance(id)?;
        let duplicate = existing
            .as_ref()
            .is_some_and(|i| i.status != InstanceStatus::Active);
        let mut instance = match existing {
            Some(instance) => instance,
            None => {
                self.record_event(actor, event, key, id, &request_id)
                    .await?
            }
        };
        let run = Run {
            actor,
            request_id: &request_id,
        };
        for _ in 0..STEPS_MAX {
            if instance.status != InstanceStatus::Active {
                break;
            }
            instance = self.next_step(&run, instance).await?;
        }
        let reason = self
            .inner
            .store
            .history(id, instance.version.saturating_sub(1), 1)?
            .into_iter()
            .next()
            .map(|e| e.reason)
            .unwrap_or_default();
        Ok(IngestOutcome {
            instance: id,
            duplicate,
            state: instance.state,
            reason,
        })
    }

    /// The id of the `provider_event` instance that records `provider`'s event `event_id`.
    pub fn provider_event_id(provider: &str, event_id: &str) -> InstanceId {
        InstanceId(Uuid::new_v5(
            &NAMESPACE,
            format!("{provider}:{event_id}").as_bytes(),
        ))
    }

    async fn record_event(
        &self,
        actor: &Actor,
        event: ProviderEvent,
        key: String,
        id: InstanceId,
        request_id: &str,
    ) -> Result<Instance, CommandError> {
        let start = StartRequest {
            definition: PROVIDER_EVENT_DEFINITION.to_string(),
            business_key: key,
            data: json!({
                "provider": event.provider,
                "event_id": event.event_id,
                "event_type": event.event_type,
                "event": event.event,
            }),
            actor: actor.clone(),
            request_id: request_id.to_string(),
            instance_id: Some(id),
        };
        match self.start(start).await {
            // A concurrent delivery of the same event recorded it first.
            Ok(_) | Err(CommandError::InstanceExists { .. }) => self.get(id).await,
            Err(e) => Err(e),
        }
    }

    /// One step of an active provider event: route, map or dispatch; a step the mapping or a
    /// command refuses records the event as `refused`.
    async fn next_step(&self, run: &Run<'_>, instance: Instance) -> Result<Instance, CommandError> {
        let id = instance.id;
        let state = instance.state.clone();
        let (command, payload) = match state.as_str() {
            "received" => ("route", json!({})),
            "routed" => match self.look_up(&instance) {
                Ok(found) => ("map", json!({ "found": found })),
                Err(e) => return self.reject_or_fail(run, id, &state, e, Vec::new()).await,
            },
            "dispatching" => {
                let results = match self.dispatch(run, &instance).await {
                    Ok(results) => results,
                    Err((e, results)) => {
                        return self.reject_or_fail(run, id, &state, e, results).await
                    }
                };
                ("applied", json!({ "results": results }))
            }
            other => {
                return Err(CommandError::InvalidInput {
                    field: "provider_event".into(),
                    message: format!(
                        "instance {id} is in state `{}`, which the engine does not drive; the rule set's provider_event definition does not match this engine",
                        clip(other, 64)
                    ),
                })
            }
        };
        let request = CommandRequest::new(
            id,
            command,
            run.actor.clone(),
            format!("{}:{command}", run.request_id),
        )
        .payload(payload);
        match self.send(request).await {
            Ok(_) => self.get(id).await,
            Err(e) => self.reject_or_fail(run, id, &state, e, Vec::new()).await,
        }
    }

    /// After a step failed with `error`: another delivery of the event may have done it (go
    /// on from there); a transient error or the caller's own is returned (the provider
    /// retries); anything else is the event's fault and is recorded as `refused`.
    async fn reject_or_fail(
        &self,
        run: &Run<'_>,
        id: InstanceId,
        state: &str,
        error: CommandError,
        results: Vec<Value>,
    ) -> Result<Instance, CommandError> {
        let now = self.get(id).await?;
        if now.state != state || now.status != InstanceStatus::Active {
            return Ok(now);
        }
        if !recorded_as_refused(&error) {
            return Err(error);
        }
        let request = CommandRequest::new(
            id,
            "reject",
            run.actor.clone(),
            format!("{}:reject", run.request_id),
        )
        .payload(json!({
            "code": error.code(),
            "error": clip(&error.to_string(), 1000),
            "results": results,
        }));
        self.send(request).await?;
        self.get(id).await
    }

    /// The instances the mapping's `lookups` name: for each, the one instance of that
    /// definition with that business key (with the `fields` asked for), or `{}` when none.
    fn look_up(&self, instance: &Instance) -> Result<Vec<Value>, CommandError> {
        let lookups = list_field(&instance.data, "lookups", LOOKUPS_MAX)?;
        let mut found = Vec::with_capacity(lookups.len());
        for (i, lookup) in lookups.iter().enumerate() {
            let definition = text_field(lookup, "definition", &format!("lookups[{i}]"))?;
            let key = text_field(lookup, "key", &format!("lookups[{i}]"))?;
            let Some(target) = self.by_key(definition, key)? else {
                found.push(json!({}));
                continue;
            };
            let fields = match lookup.get("fields") {
                None => &[][..],
                Some(_) => &list_field(lookup, "fields", LOOKUP_FIELDS_MAX)?[..],
            };
            let mut copied = Map::new();
            for field in fields.iter().filter_map(Value::as_str) {
                copied.insert(
                    field.to_string(),
                    target.data.get(field).cloned().unwrap_or(Value::Null),
                );
            }
            found.push(json!({
                "definition": definition,
                "key": key,
                "id": target.id.to_string(),
                "state": target.state,
                "version": target.version,
                "fields": copied,
            }));
        }
        Ok(found)
    }

    /// The one instance of `definition` with business key `key`; more than one is an error.
    fn by_key(&self, definition: &str, key: &str) -> Result<Option<Instance>, CommandError> {
        let page = self.inner.store.list(&ListQuery {
            definition: Some(definition.to_string()),
            state: None,
            business_key: Some(key.to_string()),
            page_size: 2,
            after: None,
        })?;
        let mut items = page.items.into_iter();
        match (items.next(), items.next()) {
            (one, None) => Ok(one),
            (Some(_), Some(_)) => Err(CommandError::InvalidInput {
                field: "lookups".into(),
                message: format!(
                    "more than one {} has the business key `{}`",
                    clip(definition, 64),
                    clip(key, 128)
                ),
            }),
            (None, Some(_)) => unreachable!("an iterator yields nothing after its end"),
        }
    }

    /// Sends the mapping's `actions` in turn, each with its own request id; their results, or
    /// the first error with the results before it.
    async fn dispatch(
        &self,
        run: &Run<'_>,
        instance: &Instance,
    ) -> Result<Vec<Value>, (CommandError, Vec<Value>)> {
        let actions =
            list_field(&instance.data, "actions", ACTIONS_MAX).map_err(|e| (e, Vec::new()))?;
        let mut results = Vec::with_capacity(actions.len());
        for (i, action) in actions.iter().enumerate() {
            match self.dispatch_one(run, i, action).await {
                Ok(result) => results.push(result),
                Err(e) => return Err((e, results)),
            }
        }
        Ok(results)
    }

    async fn dispatch_one(
        &self,
        run: &Run<'_>,
        i: usize,
        action: &Value,
    ) -> Result<Value, CommandError> {
        let at = format!("actions[{i}]");
        let command = text_field(action, "command", &at)?;
        let to = action.get("to").unwrap_or(&Value::Null);
        let definition = text_field(to, "definition", &format!("{at}.to"))?;
        let key = text_field(to, "key", &format!("{at}.to"))?;
        let target = self
            .by_key(definition, key)?
            .ok_or_else(|| CommandError::InvalidInput {
                field: format!("{at}.to"),
                message: format!(
                    "no {} has the business key `{}`",
                    clip(definition, 64),
                    clip(key, 128)
                ),
            })?;
        let request = CommandRequest::new(
            target.id,
            command,
            run.actor.clone(),
            format!("{}:{i}", run.request_id),
        )
        .payload(action.get("payload").cloned().unwrap_or_else(|| json!({})));
        let outcome = self.send(request).await?;
        Ok(json!({
            "key": key,
            "instance": outcome.instance.to_string(),
            "command": command,
            "state": outcome.state,
            "reason": clip(&outcome.reason, 500),
        }))
    }
}

/// One ingest's caller and request-id stem.
struct Run<'a> {
    actor: &'a Actor,
    request_id: &'a str,
}

/// Whether `error` from a step is the event's fault (recorded as `refused`, acknowledged), as
/// opposed to a passing condition or the caller's own mistake (returned, so it is retried).
fn recorded_as_refused(error: &CommandError) -> bool {
    !matches!(
        error,
        CommandError::Store(_)
            | CommandError::ShuttingDown
            | CommandError::Overloaded { .. }
            | CommandError::Conflict { .. }
            | CommandError::CounterConflict { .. }
            | CommandError::BalanceConflict { .. }
            | CommandError::RoleNotAllowed { .. }
            | CommandError::UnknownDefinition { .. }
            | CommandError::DefinitionNotLoaded { .. }
    )
}

fn check_event(event: &ProviderEvent) -> Result<(), CommandError> {
    let bad = |field: &str, message: String| CommandError::InvalidInput {
        field: field.into(),
        message,
    };
    let p = &event.provider;
    if p.is_empty()
        || p.len() > PROVIDER_CHARS_MAX
        || !p
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(bad(
            "provider",
            format!("must be 1 to {PROVIDER_CHARS_MAX} of a-z, 0-9, _ and -"),
        ));
    }
    for (field, value, max) in [
        ("event_id", &event.event_id, EVENT_ID_CHARS_MAX),
        ("event_type", &event.event_type, EVENT_TYPE_CHARS_MAX),
    ] {
        if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
            return Err(bad(
                field,
                format!("must be 1 to {max} characters without control characters"),
            ));
        }
    }
    Ok(())
}

fn list_field<'a>(
    value: &'a Value,
    field: &str,
    max: usize,
) -> Result<&'a Vec<Value>, CommandError> {
    match value.get(field) {
        Some(Value::Array(items)) if items.len() <= max => Ok(items),
        Some(Value::Array(items)) => Err(CommandError::InvalidInput {
            field: field.into(),
            message: format!("{} items; the engine takes at most {max}", items.len()),
        }),
        _ => Err(CommandError::InvalidInput {
            field: field.into(),
            message: "the mapping must leave a list here".into(),
        }),
    }
}

fn text_field<'a>(value: &'a Value, field: &str, at: &str) -> Result<&'a str, CommandError> {
    value
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| CommandError::InvalidInput {
            field: format!("{at}.{field}"),
            message: "the mapping must give a string here".into(),
        })
}
