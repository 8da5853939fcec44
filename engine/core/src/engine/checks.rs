//! The checks a request and a decision pass before anything is committed. Each returns the
//! error a caller sees, naming the field, role, state or limit that refused it.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Engine;
use crate::decider::Decision;
use crate::definition::schema::FieldViolation;
use crate::definition::{CommandDef, Definition};
use crate::error::CommandError;
use crate::model::{roles, Actor, Instance, InstanceId, InstanceStatus};

pub(super) const REQUEST_ID_BYTES_MAX: usize = 256;
pub(super) const BUSINESS_KEY_CHARS_MAX: usize = 256;
pub(super) const REASON_CHARS_MAX: usize = 4096;

pub(crate) fn require_role(
    actor: &Actor,
    allowed: &[String],
    action: impl FnOnce() -> String,
) -> Result<(), CommandError> {
    if actor.has_any_role(allowed) {
        return Ok(());
    }
    Err(CommandError::RoleNotAllowed {
        actor: actor.id.clone(),
        action: action(),
        held: if actor.roles.is_empty() {
            "none".into()
        } else {
            actor.roles.join(", ")
        },
        required: allowed.join(", "),
    })
}

/// An `owner_only` command: the instance's owner may send it, and so may an actor holding one
/// of the definition's `owner_roles`, or the engine itself (`system`: timers, job completions).
pub(super) fn require_owner(
    actor: &Actor,
    instance: &Instance,
    definition: &Definition,
    command: &CommandDef,
) -> Result<(), CommandError> {
    if instance.owner.as_deref() == Some(actor.id.as_str())
        || actor.has_any_role(&definition.owner_roles)
        || actor.roles.iter().any(|r| r == roles::SYSTEM)
    {
        return Ok(());
    }
    Err(CommandError::NotOwner {
        instance: instance.id,
        command: command.name.clone(),
        owner: instance.owner.clone().unwrap_or_else(|| "(none)".into()),
        actor: actor.id.clone(),
        owner_roles: definition.owner_roles.join(", "),
    })
}

pub(super) fn require_active(instance: &Instance) -> Result<(), CommandError> {
    if instance.status == InstanceStatus::Active {
        return Ok(());
    }
    Err(CommandError::NotActive {
        instance: instance.id,
        status: instance.status,
        state: instance.state.clone(),
    })
}

pub(super) fn check_expected(
    instance: &Instance,
    expected: Option<u64>,
) -> Result<(), CommandError> {
    match expected {
        Some(e) if e != instance.version => Err(CommandError::VersionMismatch {
            instance: instance.id,
            expected: e,
            current: instance.version,
        }),
        _ => Ok(()),
    }
}

pub(super) fn check_violations(violations: Vec<FieldViolation>) -> Result<(), CommandError> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(CommandError::InvalidPayload { violations })
    }
}

pub(crate) fn check_request_id(request_id: &str) -> Result<(), CommandError> {
    let bad = |message: &str| {
        Err(CommandError::InvalidInput {
            field: "request_id".into(),
            message: message.into(),
        })
    };
    if request_id.is_empty() {
        return bad("is required: a unique id per logical request, reused only when retrying it");
    }
    if request_id.len() > REQUEST_ID_BYTES_MAX {
        return bad("is longer than 256 bytes");
    }
    if request_id.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    Ok(())
}

pub(super) fn check_business_key(field: &str, key: &str) -> Result<(), CommandError> {
    let bad = |message: String| {
        Err(CommandError::InvalidInput {
            field: field.into(),
            message,
        })
    };
    if key.chars().count() > BUSINESS_KEY_CHARS_MAX {
        return bad(format!(
            "is longer than {BUSINESS_KEY_CHARS_MAX} characters"
        ));
    }
    if key.chars().any(char::is_control) {
        return bad("must not contain control characters".into());
    }
    Ok(())
}

pub(super) fn check_reason(reason: &str) -> Result<(), CommandError> {
    if reason.chars().count() > REASON_CHARS_MAX {
        return Err(CommandError::InvalidInput {
            field: "reason".into(),
            message: format!("is longer than {REASON_CHARS_MAX} characters"),
        });
    }
    Ok(())
}

/// Refuses a decision the command's declaration does not allow (the effects are checked one
/// by one where they are built).
pub(super) fn check_decision(
    command: &CommandDef,
    decision: &Decision,
) -> Result<(), CommandError> {
    if !command.to.contains(&decision.next_state) {
        return Err(decision_invalid(
            command,
            format!(
                "it chose state `{}`, but command `{}` may only lead to: {}",
                decision.next_state,
                command.name,
                command.to.join(", ")
            ),
        ));
    }
    if !(decision.changes.is_null() || decision.changes.is_object()) {
        return Err(decision_invalid(
            command,
            "its data changes must be a JSON object (a merge patch) or null".into(),
        ));
    }
    if decision.reason.chars().count() > REASON_CHARS_MAX {
        return Err(decision_invalid(
            command,
            format!("its reason is longer than {REASON_CHARS_MAX} characters"),
        ));
    }
    Ok(())
}

/// The error for a decision `command`'s decider returned that the definition does not allow.
pub(super) fn decision_invalid(command: &CommandDef, message: String) -> CommandError {
    CommandError::DecisionInvalid {
        decider: command.decider.clone().unwrap_or_else(|| "(none)".into()),
        command: command.name.clone(),
        message,
    }
}

pub(super) fn parse_page_token(token: Option<&str>) -> Result<Option<InstanceId>, CommandError> {
    match token {
        None | Some("") => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| CommandError::InvalidInput {
            field: "page_token".into(),
            message: format!(
                "`{}` is not a page token returned by a previous page",
                crate::error::clip(t, 64)
            ),
        }),
    }
}

pub(super) fn display_list(items: &[String]) -> String {
    if items.is_empty() {
        "(nothing)".into()
    } else {
        items.join(", ")
    }
}

/// SHA-256 of the canonical JSON form (object keys sorted at every level, numbers as
/// written), hex. Objects keep their key order in data (serde_json's `preserve_order`), so
/// the digest sorts them itself: a retry whose keys come in another order is the same request.
pub(super) fn digest(payload: &Value) -> String {
    fn canonical(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, k).expect("strings serialize");
                    out.push(b':');
                    canonical(v, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    canonical(v, out);
                }
                out.push(b']');
            }
            scalar => serde_json::to_writer(&mut *out, scalar).expect("JSON values serialize"),
        }
    }
    let mut bytes = Vec::new();
    canonical(payload, &mut bytes);
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Engine {
    pub(super) fn check_payload_size(&self, payload: &Value) -> Result<(), CommandError> {
        let size = serde_json::to_vec(payload)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        let max = self.inner.config.payload_bytes_max;
        if size > max {
            return Err(CommandError::PayloadTooLarge { size, max });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn digest_is_canonical_over_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"a": {"x": 3, "y": 2}, "b": 2})));
    }

    #[test]
    fn owner_only_commands_are_for_the_owner_the_owner_roles_and_the_system() {
        use crate::decider::DeciderRegistry;
        use crate::definition::DefinitionSet;
        let text = "name = \"q\"\nversion = 1\ninitial = \"a\"\n[start]\nroles = [\"rep\"]\n\
            [owner]\nroles = [\"manager\"]\n[states]\na = {}\nb = { terminal = true }\n\
            [commands.go]\nfrom = [\"a\"]\nto = [\"b\"]\nroles = [\"rep\", \"manager\", \"system\"]\nowner_only = true\n";
        let set =
            DefinitionSet::from_sources(&[("q.toml".into(), text.into())], &DeciderRegistry::new())
                .unwrap();
        let def = set.get("q", 1).unwrap();
        let command = &def.commands["go"];
        let ana = Actor::new("ana", &["rep"]);
        let instance = Instance::new_started(def, "Q-1", json!({}), &ana, chrono::Utc::now());
        let ok = |actor: Actor, instance: &Instance| {
            require_owner(&actor, instance, def, command).map_err(|e| e.code())
        };
        assert_eq!(ok(ana.clone(), &instance), Ok(()));
        assert_eq!(ok(Actor::new("mia", &["manager"]), &instance), Ok(()));
        assert_eq!(ok(Actor::new("timer", &["system"]), &instance), Ok(()));
        assert_eq!(ok(Actor::new("bob", &["rep"]), &instance), Err("NOT_OWNER"));
        let mut ownerless = instance.clone();
        ownerless.owner = None;
        assert_eq!(
            ok(ana, &ownerless),
            Err("NOT_OWNER"),
            "no owner: owner roles only"
        );
        assert_eq!(ok(Actor::new("mia", &["manager"]), &ownerless), Ok(()));
        let err = require_owner(&Actor::new("bob", &["rep"]), &ownerless, def, command)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(`(none)`)") && err.contains("manager"),
            "{err}"
        );
    }
}
