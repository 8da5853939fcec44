//! Timer planning: which timers an instance has after a change. Pure functions of the
//! definition, the instance before and after, and the engine clock's now — no store, no
//! engine — so the rules are tested as a table below. Firing due timers lives in
//! `engine::background`.
//!
//! Leaving a state cancels its timers and entering one sets its own; staying keeps them, less
//! the one that just fired, except that a timer `at` a data field follows the field when the
//! decision changes it (an approval's next step, a new deadline). An instance that is no
//! longer active has none.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::definition::{Definition, TimerDue};
use crate::error::CommandError;
use crate::model::{Instance, InstanceStatus, OpenTimer};

/// The timers an instance gets on entering `state`.
pub(crate) fn timers_for(
    definition: &Definition,
    state: &str,
    data: &Value,
    now: DateTime<Utc>,
) -> Result<Vec<OpenTimer>, CommandError> {
    let Some(state_def) = definition.states.get(state) else {
        return Ok(Vec::new());
    };
    state_def
        .timers
        .iter()
        .map(|t| {
            let due = match &t.due {
                TimerDue::After(after) => now.checked_add_signed(*after).ok_or_else(|| {
                    CommandError::InvalidInput {
                        field: format!("timers.{}", t.name),
                        message: "falls due beyond the last representable time".into(),
                    }
                })?,
                TimerDue::At(field) => due_from_data(data, field).ok_or_else(|| {
                    CommandError::InvalidInput {
                        field: format!("data.{field}"),
                        message: format!(
                            "timer `{}` of state `{state}` needs a date (\"2026-05-01\") or an RFC 3339 time here",
                            t.name
                        ),
                    }
                })?,
            };
            Ok(OpenTimer {
                name: t.name.clone(),
                command: t.command.clone(),
                due,
            })
        })
        .collect()
}

/// Plans the open timers of `after`, which a command (or the timer `fired`) made out of
/// `before`.
pub(crate) fn plan(
    definition: &Definition,
    before: &Instance,
    after: &mut Instance,
    fired: Option<&OpenTimer>,
    now: DateTime<Utc>,
) -> Result<(), CommandError> {
    if after.status != InstanceStatus::Active {
        after.timers.clear();
    } else if after.state != before.state {
        after.timers = timers_for(definition, &after.state, &after.data, now)?;
    } else {
        if let Some(timer) = fired {
            after.timers.retain(|t| t != timer);
        }
        follow_data_timers(definition, &before.data, after, now)?;
    }
    Ok(())
}

/// Re-plans the timers of `after`'s state declared `at` a data field whose value moved.
fn follow_data_timers(
    definition: &Definition,
    before: &Value,
    after: &mut Instance,
    now: DateTime<Utc>,
) -> Result<(), CommandError> {
    let state = after.state.clone();
    let Some(state_def) = definition.states.get(&state) else {
        return Ok(());
    };
    for t in &state_def.timers {
        let TimerDue::At(field) = &t.due else {
            continue;
        };
        if before.get(field) == after.data.get(field) {
            continue;
        }
        after.timers.retain(|open| open.name != t.name);
        if after.data.get(field).is_some_and(|v| !v.is_null()) {
            let planned = timers_for(definition, &state, &after.data, now)?;
            after
                .timers
                .extend(planned.into_iter().filter(|p| p.name == t.name));
        }
    }
    Ok(())
}

/// A due time from a data field: an RFC 3339 time, or a date meaning the end of that day (UTC).
fn due_from_data(data: &Value, field: &str) -> Option<DateTime<Utc>> {
    let text = data.get(field)?.as_str()?;
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(day.succ_opt()?.and_hms_opt(0, 0, 0)?.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::DeciderRegistry;
    use crate::definition::DefinitionSet;
    use crate::model::{DefinitionRef, InstanceId};
    use serde_json::json;

    const SOURCE: &str = r#"
name = "approval"
version = 1
initial = "draft"
[start]
roles = ["rep"]
[states.draft]
[states.waiting]
timers = [{ name = "remind", after = "2h", command = "remind" },
          { name = "expire", at = "due", command = "expire" }]
[states.done]
terminal = true
[commands.submit]
from = ["draft"]
to = ["waiting"]
roles = ["rep"]
[commands.remind]
from = ["waiting"]
to = ["waiting"]
roles = ["system"]
[commands.expire]
from = ["waiting"]
to = ["done"]
roles = ["system"]
[commands.note]
from = ["waiting"]
to = ["waiting"]
roles = ["rep"]
"#;

    fn definition() -> std::sync::Arc<Definition> {
        let set = DefinitionSet::from_sources(
            &[("approval.toml".into(), SOURCE.into())],
            &DeciderRegistry::new(),
        )
        .unwrap();
        set.latest("approval").unwrap().clone()
    }

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn instance(state: &str, data: Value, timers: &[(&str, &str)]) -> Instance {
        let now = t("2026-03-01T10:00:00Z");
        Instance {
            id: InstanceId::new(),
            definition: DefinitionRef {
                name: "approval".into(),
                version: 1,
            },
            business_key: String::new(),
            state: state.into(),
            status: InstanceStatus::Active,
            data,
            version: 1,
            parent: None,
            owner: None,
            timers: timers
                .iter()
                .map(|(name, due)| OpenTimer {
                    name: (*name).into(),
                    command: (*name).into(),
                    due: t(due),
                })
                .collect(),
            rule_set: None,
            incidents: vec![],
            created_at: now,
            updated_at: now,
        }
    }

    fn names(i: &Instance) -> Vec<(String, String)> {
        i.timers
            .iter()
            .map(|t| (t.name.clone(), t.due.to_rfc3339()))
            .collect()
    }

    // The exception to the length limit: a table, one case per row.
    #[allow(clippy::too_many_lines)]
    #[test]
    fn timer_plans() {
        let def = definition();
        let now = t("2026-03-01T10:00:00Z");
        let waiting = [
            ("remind", "2026-03-01T12:00:00Z"),
            ("expire", "2026-03-05T00:00:00Z"),
        ];
        // (case, before, after state, after data, after status, fired, expected timers)
        type Case<'a> = (
            &'a str,
            Instance,
            &'a str,
            Value,
            InstanceStatus,
            Option<usize>,
            Vec<(&'a str, &'a str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "entering a state sets its timers; a date is the end of that day",
                instance("draft", json!({ "due": "2026-03-04" }), &[]),
                "waiting",
                json!({ "due": "2026-03-04" }),
                InstanceStatus::Active,
                None,
                waiting.to_vec(),
            ),
            (
                "an RFC 3339 time is taken as it is",
                instance("draft", json!({ "due": "2026-03-02T08:30:00+01:00" }), &[]),
                "waiting",
                json!({ "due": "2026-03-02T08:30:00+01:00" }),
                InstanceStatus::Active,
                None,
                vec![
                    ("remind", "2026-03-01T12:00:00Z"),
                    ("expire", "2026-03-02T07:30:00Z"),
                ],
            ),
            (
                "staying keeps the timers, less the one that fired",
                instance("waiting", json!({ "due": "2026-03-04" }), &waiting),
                "waiting",
                json!({ "due": "2026-03-04" }),
                InstanceStatus::Active,
                Some(0),
                vec![("expire", "2026-03-05T00:00:00Z")],
            ),
            (
                "a timer at a data field follows the field when a decision moves it",
                instance("waiting", json!({ "due": "2026-03-04" }), &waiting),
                "waiting",
                json!({ "due": "2026-03-10" }),
                InstanceStatus::Active,
                None,
                vec![
                    ("remind", "2026-03-01T12:00:00Z"),
                    ("expire", "2026-03-11T00:00:00Z"),
                ],
            ),
            (
                "clearing the field drops its timer",
                instance("waiting", json!({ "due": "2026-03-04" }), &waiting),
                "waiting",
                json!({ "due": null }),
                InstanceStatus::Active,
                None,
                vec![("remind", "2026-03-01T12:00:00Z")],
            ),
            (
                "leaving for a state without timers cancels them",
                instance("waiting", json!({ "due": "2026-03-04" }), &waiting),
                "done",
                json!({ "due": "2026-03-04" }),
                InstanceStatus::Completed,
                None,
                vec![],
            ),
            (
                "an instance no longer active has none",
                instance("waiting", json!({ "due": "2026-03-04" }), &waiting),
                "waiting",
                json!({ "due": "2026-03-04" }),
                InstanceStatus::Cancelled,
                None,
                vec![],
            ),
        ];
        for (case, before, state, data, status, fired, expected) in cases {
            let mut after = before.clone();
            after.state = state.into();
            after.data = data;
            after.status = status;
            let fired = fired.map(|i| before.timers[i].clone());
            plan(&def, &before, &mut after, fired.as_ref(), now).unwrap();
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(n, d)| (n.to_string(), t(d).to_rfc3339()))
                .collect();
            assert_eq!(names(&after), expected, "{case}");
        }
    }

    #[test]
    fn a_missing_or_malformed_due_field_is_refused_naming_it() {
        let def = definition();
        let now = t("2026-03-01T10:00:00Z");
        for data in [json!({}), json!({ "due": "soon" }), json!({ "due": 7 })] {
            let err = timers_for(&def, "waiting", &data, now).unwrap_err();
            assert!(
                matches!(&err, CommandError::InvalidInput { field, .. } if field == "data.due"),
                "{data}: {err}"
            );
        }
    }
}
