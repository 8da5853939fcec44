//! Backtest: replay the decisions recorded in a store against a candidate rule set and report
//! which would now come out differently, and how. Reads a stopped store (or an export); never
//! writes.
//!
//! Every rule decision's history entry carries its provenance — script, function and the full
//! inputs — so replaying needs nothing but the store and the candidate. Decisions are taken in
//! feed order from an offset, so a backtest can cover "everything since Monday".

use std::path::Path;

use serde_json::Value;

use super::{DecisionInput, RuleSet};
use crate::model::InstanceId;
use crate::store::{Store, StoreError};

/// One recorded decision that the candidate decides differently.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangedDecision {
    /// The feed offset of the recorded decision.
    pub offset: u64,
    /// The instance.
    pub instance: InstanceId,
    /// Its business key.
    pub business_key: String,
    /// The instance version the decision produced.
    pub version: u64,
    /// The decider, `script::function`.
    pub decider: String,
    /// What differs, one line each: `state: pending_approval → approved`.
    pub differences: Vec<String>,
    /// Whether the outcome differs (state, changes or effects), not only the reason.
    pub outcome_changed: bool,
}

/// What a backtest found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BacktestReport {
    /// Rule decisions replayed.
    pub replayed: usize,
    /// Those the candidate decides differently.
    pub changed: Vec<ChangedDecision>,
    /// Recorded decisions that could not be replayed (the candidate lacks the decider), with why.
    pub skipped: Vec<String>,
}

/// Replays every rule decision recorded after feed offset `after` against `candidate`.
pub fn backtest(
    store: &dyn Store,
    candidate: &RuleSet,
    after: u64,
) -> Result<BacktestReport, StoreError> {
    let mut report = BacktestReport::default();
    let mut cursor = after;
    loop {
        let events = store.feed(cursor, 512)?;
        let Some(last) = events.last() else { break };
        cursor = last.offset;
        for event in events {
            if event.kind != "switchyard.instance.transitioned" {
                continue;
            }
            let data = event.data();
            let (Some(instance), Some(version)) = (
                data["instance"]
                    .as_str()
                    .and_then(|s| s.parse::<InstanceId>().ok()),
                data["version"].as_u64(),
            ) else {
                continue;
            };
            let Some(entry) = store.history(instance, version - 1, 1)?.into_iter().next() else {
                continue;
            };
            let Some(provenance) = entry.provenance else {
                continue;
            };
            let script = provenance["script"].as_str().unwrap_or_default();
            let stem = Path::new(script)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let decider = format!(
                "{stem}::{}",
                provenance["function"].as_str().unwrap_or_default()
            );
            let inputs = &provenance["inputs"];
            let Some(now) = inputs["now"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            else {
                report.skipped.push(format!(
                    "offset {}: {decider}: the recorded inputs have no time",
                    event.offset
                ));
                continue;
            };
            let input = DecisionInput {
                instance: inputs["instance"].clone(),
                payload: inputs["payload"].clone(),
                actor: inputs["actor"].clone(),
                now: now.with_timezone(&chrono::Utc),
            };
            if !candidate.deciders.contains(&decider) {
                report.skipped.push(format!(
                    "offset {}: the candidate has no decider `{decider}`",
                    event.offset
                ));
                continue;
            }
            report.replayed += 1;
            let recorded = &provenance["outputs"];
            let differences = match candidate.evaluate(&decider, &input) {
                Ok((_, outputs)) => compare(recorded, &outputs),
                Err(e) => vec![format!("now fails: {}", e.message)],
            };
            let outcome_changed = differences.iter().any(|d| !d.starts_with("reason: "));
            if !differences.is_empty() {
                report.changed.push(ChangedDecision {
                    offset: event.offset,
                    instance,
                    business_key: data["business_key"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    version,
                    decider,
                    differences,
                    outcome_changed,
                });
            }
        }
    }
    Ok(report)
}

/// The differences between two decisions' outputs: state and reason whole, changes and
/// effects key by key (money and amounts show as their decimal strings).
fn compare(recorded: &Value, candidate: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["state", "reason"] {
        if recorded[key] != candidate[key] {
            out.push(format!("{key}: {} → {}", recorded[key], candidate[key]));
        }
    }
    diff_values(
        "changes",
        &recorded["changes"],
        &candidate["changes"],
        &mut out,
    );
    if recorded["effects"] != candidate["effects"] {
        out.push(format!(
            "effects: {} → {}",
            recorded["effects"], candidate["effects"]
        ));
    }
    out
}

fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                diff_values(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {a} → {b}")),
        _ => {}
    }
}
