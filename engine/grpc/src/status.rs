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
pub const ERROR_DOMAIN: &str = "switchyard";

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
    let message = message.into();
    let mut details = ErrorDetails::new();
    details
        .set_error_info(
            "INVALID_INPUT",
            ERROR_DOMAIN,
            [("field".to_string(), field.to_string())],
        )
        .add_bad_request_violation(field, message.clone());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("field `{field}`: {message}"),
        details,
    )
}

/// A NOT_FOUND status with a reason and metadata, for refusals the engine does not make.
pub(crate) fn not_found(reason: &str, message: String, metadata: &[(&str, String)]) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, meta(metadata));
    Status::with_error_details(Code::NotFound, message, details)
}

fn meta(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Splits a rule-set problem `file:line:col: message` into its place and message.
pub(crate) fn split_problem(problem: &str) -> (Option<(String, u32, u32)>, String) {
    let first_line = problem.lines().next().unwrap_or_default();
    let mut parts = first_line.splitn(4, ':');
    if let (Some(file), Some(line), Some(col), Some(rest)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    {
        if let (Ok(line), Ok(col)) = (line.trim().parse(), col.trim().parse()) {
            let rest_of_problem = problem[first_line.len()..].to_string();
            return (
                Some((file.to_string(), line, col)),
                format!("{}{}", rest.trim_start(), rest_of_problem),
            );
        }
    }
    (None, problem.to_string())
}

/// Longest status message: gRPC carries it in a header (percent-encoded), and HTTP/2 peers
/// refuse header blocks beyond 16 KiB by default.
const MESSAGE_BYTES_MAX: usize = 1024;
/// Most violations listed in one status's details; the rest are counted in one more entry.
const VIOLATIONS_MAX: usize = 20;
/// Longest text of one violation.
const DESCRIPTION_BYTES_MAX: usize = 400;

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The status for an engine error.
pub(crate) fn to_status(error: &CommandError, wire: Wire) -> Status {
    use CommandError as E;
    let reason = error.code();
    let message = match error {
        E::RuleSetRefused { problems } => format!(
            "the rule set was not activated: {} problem(s), listed in the PreconditionFailure details; the first: {}",
            problems.len(),
            problems.first().map(String::as_str).unwrap_or_default()
        ),
        _ => error.to_string(),
    };
    let message = clip(&message, MESSAGE_BYTES_MAX);
    let mut details = ErrorDetails::new();
    let mut metadata: Vec<(&str, String)> = Vec::new();
    let code = match error {
        E::UnknownDefinition { name, .. } => {
            details.add_bad_request_violation("definition", message.clone());
            metadata.push(("definition", name.clone()));
            Code::NotFound
        }
        E::DefinitionNotLoaded {
            instance,
            definition,
        } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("definition", definition.to_string()));
            Code::FailedPrecondition
        }
        E::UnknownInstance(id) => {
            metadata.push(("instance_id", id.to_string()));
            Code::NotFound
        }
        E::UnknownCommand { command, .. } => {
            details.add_bad_request_violation("command", message.clone());
            metadata.push(("command", command.clone()));
            Code::InvalidArgument
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
            Code::FailedPrecondition
        }
        E::NotActive {
            instance,
            status,
            state,
        } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("status", status.to_string()));
            metadata.push(("state", state.clone()));
            Code::FailedPrecondition
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
            Code::PermissionDenied
        }
        E::InvalidPayload { violations } => {
            for v in violations.iter().take(VIOLATIONS_MAX) {
                details.add_bad_request_violation(
                    wire.payload_field(&v.field),
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
            Code::InvalidArgument
        }
        E::InvalidInput { field, message: m } => {
            details.add_bad_request_violation(field.clone(), clip(m, DESCRIPTION_BYTES_MAX));
            metadata.push(("field", field.clone()));
            Code::InvalidArgument
        }
        E::PayloadTooLarge { size, max } => {
            details.add_bad_request_violation(wire.payload, message.clone());
            metadata.push(("size", size.to_string()));
            metadata.push(("max", max.to_string()));
            Code::InvalidArgument
        }
        E::VersionMismatch {
            instance,
            expected,
            current,
        } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("expected_version", expected.to_string()));
            metadata.push(("current_version", current.to_string()));
            Code::Aborted
        }
        E::Conflict {
            instance,
            current,
            attempts,
        } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("current_version", current.to_string()));
            metadata.push(("attempts", attempts.to_string()));
            Code::Aborted
        }
        E::RequestIdReused {
            request_id,
            original,
        } => {
            details.add_bad_request_violation("request_id", message.clone());
            metadata.push(("request_id", request_id.clone()));
            metadata.push(("original", original.clone()));
            Code::AlreadyExists
        }
        E::CounterLimit {
            counter,
            key,
            limit,
        } => {
            metadata.push(("counter", counter.clone()));
            metadata.push(("key", key.clone()));
            metadata.push(("limit", limit.to_string()));
            Code::FailedPrecondition
        }
        E::DecisionFailed {
            decider, command, ..
        }
        | E::DecisionInvalid {
            decider, command, ..
        } => {
            metadata.push(("decider", decider.clone()));
            metadata.push(("command", command.clone()));
            if let (Some((file, line, col)), _) = split_problem(error_message_body(error)) {
                metadata.push(("location", format!("{file}:{line}:{col}")));
            }
            Code::FailedPrecondition
        }
        E::FeedHorizon { after, earliest } => {
            details.add_bad_request_violation("after_offset", message.clone());
            metadata.push(("after_offset", after.to_string()));
            metadata.push(("earliest_offset", earliest.to_string()));
            Code::OutOfRange
        }
        E::FeedBeyondHead { after, head } => {
            details.add_bad_request_violation("after_offset", message.clone());
            metadata.push(("after_offset", after.to_string()));
            metadata.push(("head_offset", head.to_string()));
            Code::OutOfRange
        }
        E::TimerNotOpen { instance, timer } => {
            metadata.push(("instance_id", instance.to_string()));
            metadata.push(("timer", timer.clone()));
            Code::FailedPrecondition
        }
        E::UnknownJob(job) => {
            metadata.push(("job_id", job.to_string()));
            Code::NotFound
        }
        E::StaleLease { job, .. } | E::NotAnIncident { job, .. } => {
            metadata.push(("job_id", job.to_string()));
            Code::FailedPrecondition
        }
        E::RuleSetRefused { problems } => {
            for p in problems.iter().take(VIOLATIONS_MAX) {
                let (place, text) = split_problem(p);
                let subject = place
                    .map(|(file, line, col)| format!("{file}:{line}:{col}"))
                    .unwrap_or_default();
                details.add_precondition_failure_violation(
                    "RULE_SET",
                    subject,
                    clip(&text, DESCRIPTION_BYTES_MAX),
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
            Code::FailedPrecondition
        }
        E::UnknownRuleSet(number) => {
            details.add_bad_request_violation("number", message.clone());
            metadata.push(("number", number.to_string()));
            Code::NotFound
        }
        E::NoRuleSets => Code::FailedPrecondition,
        E::ShuttingDown => Code::Unavailable,
        E::Store(switchyard_core::store::StoreError::Corrupt { .. }) => Code::DataLoss,
        // No catch-all arm: a new refusal must be given its code here (the match is
        // exhaustive), so a caller's mistake never turns into a bare INTERNAL.
        E::Store(_) => Code::Unavailable,
    };
    details.set_error_info(reason, ERROR_DOMAIN, meta(&metadata));
    Status::with_error_details(code, message, details)
}

/// The part of a decision error that may start with `file:line:col`.
fn error_message_body(error: &CommandError) -> &str {
    match error {
        CommandError::DecisionFailed { message, .. }
        | CommandError::DecisionInvalid { message, .. } => message,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_refusals_stay_small_enough_for_a_header() {
        let problems: Vec<String> = (0..100)
            .map(|i| format!("scripts/s.rhai:{i}:1: {}", "x".repeat(2000)))
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

    #[test]
    fn problems_split_into_place_and_message() {
        assert_eq!(
            split_problem("scripts/quote.rhai:12:5: unknown variable `x`"),
            (
                Some(("scripts/quote.rhai".into(), 12, 5)),
                "unknown variable `x`".into()
            )
        );
        assert_eq!(
            split_problem("test failed: auto-approve"),
            (None, "test failed: auto-approve".into())
        );
    }
}
