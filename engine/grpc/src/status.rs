//! Engine errors as gRPC statuses: a canonical code, the engine's message, and `google.rpc`
//! details — `ErrorInfo` with the stable reason ([`CommandError::code`]) on every refusal,
//! `BadRequest` field violations naming the request field for bad input, and
//! `PreconditionFailure` violations (`file:line:col`) for a refused rule set.
//!
//! Only a store failure is reported as UNAVAILABLE or DATA_LOSS; no caller mistake maps to
//! INTERNAL.

use std::collections::HashMap;

use switchyard_core::CommandError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo` domain of every Switchyard error.
pub use switchyard_client::ERROR_DOMAIN;

/// How the RPC being answered names the JSON document a payload violation points into
/// (`data_json` for a start, `payload_json` for a command).
#[derive(Clone, Copy)]
pub(crate) struct Wire {
    pub(crate) payload: &'static str,
}

impl Wire {
    pub(crate) const START: Wire = Wire {
        payload: "data_json",
    };
    pub(crate) const COMMAND: Wire = Wire {
        payload: "payload_json",
    };
    pub(crate) const NONE: Wire = Wire { payload: "payload" };
    pub(crate) const RESULT: Wire = Wire {
        payload: "result_json",
    };

    fn payload_field(&self, path: &str) -> String {
        match path {
            "" | "payload" => self.payload.to_string(),
            p if p.starts_with('[') => format!("{}{p}", self.payload),
            p => format!("{}.{p}", self.payload),
        }
    }
}

/// A BadRequest status for a malformed request field, before the engine saw it.
pub(crate) fn bad_request(field: &str, message: impl Into<String>) -> Status {
    let field = clip(field, FIELD_BYTES_MAX);
    let message = clip(&message.into(), DESCRIPTION_BYTES_MAX);
    let mut details = ErrorDetails::new();
    details
        .set_error_info(
            "INVALID_INPUT",
            ERROR_DOMAIN,
            [("field".to_string(), field.clone())],
        )
        .add_bad_request_violation(field.clone(), message.clone());
    Status::with_error_details(
        Code::InvalidArgument,
        clip(&format!("field `{field}`: {message}"), MESSAGE_BYTES_MAX),
        details,
    )
}

/// A NOT_FOUND status with a reason and metadata, for refusals the engine does not make.
pub(crate) fn not_found(reason: &str, message: String, metadata: &[(&str, String)]) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, meta(metadata));
    Status::with_error_details(Code::NotFound, clip(&message, MESSAGE_BYTES_MAX), details)
}

/// ErrorInfo metadata, each value bounded.
fn meta(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), clip(v, METADATA_VALUE_BYTES_MAX)))
        .collect()
}

// A refusal travels in two headers: `grpc-message` (percent-encoded: a non-ASCII byte takes
// three) and `grpc-status-details-bin` (base64: four bytes for three). Default clients accept
// 8 KiB of metadata in all, so whatever a caller sent, these bounds keep a refusal within
// about 6 KiB: message ≤ 1 KiB (≤ 3 KiB encoded), details ≤ 2 KiB (≤ 2.7 KiB encoded).
/// Longest status message.
const MESSAGE_BYTES_MAX: usize = 1024;
/// Most violations listed in one status's details; the rest are counted in one more entry.
const VIOLATIONS_MAX: usize = 8;
/// Longest text of one violation.
const DESCRIPTION_BYTES_MAX: usize = 200;
/// Longest field name echoed in a violation or in metadata.
const FIELD_BYTES_MAX: usize = 96;
/// Longest ErrorInfo metadata value.
const METADATA_VALUE_BYTES_MAX: usize = 128;

pub(crate) use switchyard_core::clip;

/// The canonical code for each of the engine's stable reasons ([`CommandError::CODES`]); a
/// test checks that every reason has one, so no caller mistake turns into INTERNAL.
fn code_for(reason: &str) -> Option<Code> {
    Some(match reason {
        "UNKNOWN_DEFINITION" | "UNKNOWN_INSTANCE" | "UNKNOWN_JOB" | "UNKNOWN_RULE_SET"
        | "NO_SUCH_INCIDENT" | "UNKNOWN_CREDENTIAL" => Code::NotFound,
        "UNKNOWN_COMMAND" | "INVALID_PAYLOAD" | "INVALID_INPUT" | "PAYLOAD_TOO_LARGE" => {
            Code::InvalidArgument
        }
        "DEFINITION_NOT_LOADED"
        | "WRONG_STATE"
        | "NOT_ACTIVE"
        | "COUNTER_LIMIT"
        | "DECISION_REFUSED"
        | "DECISION_FAILED"
        | "DECISION_INVALID"
        | "LINKED_COMMAND_REFUSED"
        | "TIMER_NOT_OPEN"
        | "STALE_LEASE"
        | "NOT_AN_INCIDENT"
        | "RULE_SET_REFUSED"
        | "NO_RULE_SETS" => Code::FailedPrecondition,
        "ROLE_NOT_ALLOWED" | "NOT_OWNER" => Code::PermissionDenied,
        "VERSION_MISMATCH" | "CONFLICT" | "COUNTER_CONFLICT" | "BALANCE_CONFLICT" => Code::Aborted,
        "REQUEST_ID_REUSED" | "SECRET_SHOWN_ONCE" | "INSTANCE_EXISTS" => Code::AlreadyExists,
        "FEED_HORIZON" | "FEED_BEYOND_HEAD" => Code::OutOfRange,
        "SHUTTING_DOWN" | "STORE" => Code::Unavailable,
        "OVERLOADED" => Code::ResourceExhausted,
        _ => return None,
    })
}

/// The status for an engine error.
pub(crate) fn to_status(error: &CommandError, wire: Wire) -> Status {
    use CommandError as E;
    let reason = error.code();
    let message = match error {
        E::RuleSetRefused { problems } => format!(
            "the rule set was not activated: {} problem(s), listed in the PreconditionFailure details; the first: {}",
            problems.len(),
            problems.first().map(ToString::to_string).unwrap_or_default()
        ),
        _ => error.to_string(),
    };
    let message = clip(&message, MESSAGE_BYTES_MAX);
    let mut details = ErrorDetails::new();
    let mut metadata: Vec<(&str, String)> = Vec::new();
    match error {
        E::UnknownDefinition { name, .. } => {
            details.add_bad_request_violation("definition", clip(&message, DESCRIPTION_BYTES_MAX));
            metadata.push(("definition", name.clone()));
        }
        E::DefinitionNotLoaded {
            instance,
            definition,
        } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("definition", definition.to_string()));
        }
        E::UnknownInstance(id) => {
            metadata.push(("instance_id", id.to_string()));
        }
        E::UnknownCommand { command, .. } => {
            details.add_bad_request_violation("command", clip(&message, DESCRIPTION_BYTES_MAX));
            metadata.push(("command", command.clone()));
        }
        E::WrongState {
            instance,
            command,
            state,
            allowed,
        } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("command", command.clone()));
            metadata.push(("state", state.clone()));
            metadata.push(("allowed_states", allowed.clone()));
        }
        E::NotActive {
            instance,
            status,
            state,
        } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("status", status.to_string()));
            metadata.push(("state", state.clone()));
        }
        E::RoleNotAllowed {
            actor,
            held,
            required,
            ..
        } => {
            metadata.push(("actor", actor.clone()));
            metadata.push(("roles", held.clone()));
            metadata.push(("required_roles", required.clone()));
        }
        E::NotOwner {
            instance,
            owner,
            actor,
            ..
        } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("owner", owner.clone()));
            metadata.push(("actor", actor.clone()));
        }
        E::InvalidPayload { violations } => {
            for v in violations.iter().take(VIOLATIONS_MAX) {
                details.add_bad_request_violation(
                    clip(&wire.payload_field(&v.field), FIELD_BYTES_MAX),
                    clip(&v.message, DESCRIPTION_BYTES_MAX),
                );
            }
            if violations.len() > VIOLATIONS_MAX {
                details.add_bad_request_violation(
                    wire.payload,
                    format!(
                        "…and {} more violation(s)",
                        violations.len() - VIOLATIONS_MAX
                    ),
                );
            }
        }
        E::InvalidInput { field, message: m } => {
            details.add_bad_request_violation(
                clip(field, FIELD_BYTES_MAX),
                clip(m, DESCRIPTION_BYTES_MAX),
            );
            metadata.push(("field", field.clone()));
        }
        E::PayloadTooLarge { size, max } => {
            details.add_bad_request_violation(wire.payload, clip(&message, DESCRIPTION_BYTES_MAX));
            metadata.push(("size", size.to_string()));
            metadata.push(("max", max.to_string()));
        }
        E::VersionMismatch {
            instance,
            expected,
            current,
        } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("expected_version", expected.to_string()));
            metadata.push(("current_version", current.to_string()));
        }
        E::Conflict {
            instance,
            current,
            attempts,
        } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("current_version", current.to_string()));
            metadata.push(("attempts", attempts.to_string()));
        }
        E::InstanceExists { instance } => {
            details.add_bad_request_violation("instance_id", clip(&message, DESCRIPTION_BYTES_MAX));
            metadata.push(("instance_id", instance.to_string()));
        }
        E::RequestIdReused {
            request_id,
            original,
        } => {
            details.add_bad_request_violation("request_id", clip(&message, DESCRIPTION_BYTES_MAX));
            metadata.push(("request_id", request_id.clone()));
            metadata.push(("original", original.clone()));
        }
        E::BalanceConflict {
            balance,
            key,
            attempts,
        } => {
            metadata.push(("balance", balance.clone()));
            metadata.push(("key", key.clone()));
            metadata.push(("attempts", attempts.to_string()));
        }
        E::CounterLimit {
            counter,
            key,
            limit,
        } => {
            metadata.push(("counter", counter.clone()));
            metadata.push(("key", key.clone()));
            metadata.push(("limit", limit.to_string()));
        }
        E::DecisionRefused {
            decider,
            command,
            code,
            ..
        } => {
            metadata.push(("decider", decider.clone()));
            metadata.push(("command", command.clone()));
            metadata.push(("code", code.clone()));
        }
        E::DecisionFailed {
            decider,
            command,
            location,
            ..
        } => {
            metadata.push(("decider", decider.clone()));
            metadata.push(("command", command.clone()));
            if let Some(location) = location {
                metadata.push(("location", location.to_string()));
            }
        }
        E::DecisionInvalid {
            decider, command, ..
        } => {
            metadata.push(("decider", decider.clone()));
            metadata.push(("command", command.clone()));
        }
        E::LinkedCommandRefused {
            instance,
            definition,
            command,
            cause,
        } => {
            metadata.push(("linked_instance", instance.to_string()));
            metadata.push(("linked_definition", definition.clone()));
            metadata.push(("linked_command", command.clone()));
            metadata.push(("linked_code", cause.code().to_string()));
        }
        E::FeedHorizon { after, earliest } => {
            details
                .add_bad_request_violation("after_offset", clip(&message, DESCRIPTION_BYTES_MAX));
            metadata.push(("after_offset", after.to_string()));
            metadata.push(("earliest_offset", earliest.to_string()));
        }
        E::FeedBeyondHead { after, head } => {
            details
                .add_bad_request_violation("after_offset", clip(&message, DESCRIPTION_BYTES_MAX));
            metadata.push(("after_offset", after.to_string()));
            metadata.push(("head_offset", head.to_string()));
        }
        E::TimerNotOpen { instance, timer } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("timer", timer.clone()));
        }
        E::UnknownJob(job) => {
            metadata.push(("job_id", job.to_string()));
        }
        E::StaleLease { job, .. } | E::NotAnIncident { job, .. } => {
            metadata.push(("job_id", job.to_string()));
        }
        E::RuleSetRefused { problems } => {
            for p in problems.iter().take(VIOLATIONS_MAX) {
                let subject = match (p.file.as_str(), p.line) {
                    ("", _) => String::new(),
                    (file, 0) => file.to_string(),
                    (file, line) => format!("{file}:{line}:{}", p.column),
                };
                details.add_precondition_failure_violation(
                    "RULE_SET",
                    clip(&subject, DESCRIPTION_BYTES_MAX),
                    clip(&p.message, DESCRIPTION_BYTES_MAX),
                );
            }
            if problems.len() > VIOLATIONS_MAX {
                details.add_precondition_failure_violation(
                    "RULE_SET",
                    "",
                    format!(
                        "…and {} more problem(s); ValidateRuleSet lists them all",
                        problems.len() - VIOLATIONS_MAX
                    ),
                );
            }
            metadata.push(("problems", problems.len().to_string()));
        }
        E::UnknownRuleSet(number) => {
            details.add_bad_request_violation("number", clip(&message, DESCRIPTION_BYTES_MAX));
            // The same key wherever a rule-set number is meant, whatever the request field.
            metadata.push(("rule_set", number.to_string()));
        }
        E::NoRuleSets => {}
        E::ShuttingDown => {}
        // Other errors carry no details beyond their reason.
        _ => {}
    }
    let code = match error {
        E::Store(switchyard_core::StoreError::Corrupt { .. }) => Code::DataLoss,
        _ => code_for(reason).unwrap_or(Code::Internal),
    };
    details.set_error_info(reason, ERROR_DOMAIN, meta(&metadata));
    Status::with_error_details(code, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_reason_has_a_status_code() {
        for reason in CommandError::CODES {
            let code = code_for(reason);
            assert!(
                code.is_some_and(|c| c != Code::Internal),
                "{reason} has no status code"
            );
        }
    }

    #[test]
    fn long_refusals_stay_small_enough_for_a_header() {
        let problems: Vec<_> = (0..100)
            .map(|i| switchyard_core::RuleSetProblem::at("scripts/s.rhai", i, 1, "x".repeat(2000)))
            .collect();
        let status = to_status(&CommandError::RuleSetRefused { problems }, Wire::NONE);
        assert!(status.message().len() <= MESSAGE_BYTES_MAX);
        assert!(
            status.details().len() < 16 * 1024,
            "{}",
            status.details().len()
        );
        assert_eq!(clip("añb", 3), "…");
        assert_eq!(clip("abc", 3), "abc");
    }
}
