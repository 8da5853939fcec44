//! Backtest: replay the decisions recorded in a store against a candidate rule set and report
//! which would now come out differently, and how. Reads only; never writes.
//!
//! Every rule decision's history entry carries its provenance — script, function and the full
//! inputs — so replaying needs nothing but the store and the candidate. Decisions are read
//! from every instance's history (kept for the instance's life), not from the feed (purged
//! after its retention), so no recorded decision is skipped; `since` limits the replay to
//! decisions recorded from that time on ("everything since Monday"). The report says which
//! range it covered.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{DecisionInput, RuleSet};
use crate::model::{HistoryEntry, InstanceId};
use crate::store::{ListQuery, Store, StoreError};

/// One recorded decision that the candidate decides differently.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ChangedDecision {
    /// When the decision was recorded.
    pub at: DateTime<Utc>,
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
#[non_exhaustive]
pub struct BacktestReport {
    /// Instances whose history was read.
    pub instances: usize,
    /// Rule decisions replayed.
    pub replayed: usize,
    /// When the earliest and the latest replayed decision were recorded.
    pub covered: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Those the candidate decides differently.
    pub changed: Vec<ChangedDecision>,
    /// Recorded decisions that could not be replayed (the candidate lacks the decider), with why.
    pub skipped: Vec<String>,
}

/// Most instances or history entries read per page.
const PAGE: usize = 500;

/// Replays every rule decision recorded at or after `since` (all when `None`) against
/// `candidate`.
pub(crate) fn backtest(
    store: &dyn Store,
    candidate: &RuleSet,
    since: Option<DateTime<Utc>>,
) -> Result<BacktestReport, StoreError> {
    let mut report = BacktestReport::default();
    let mut after = None;
    loop {
        let page = store.list(&ListQuery {
            page_size: PAGE,
            after,
            ..ListQuery::default()
        })?;
        for instance in &page.items {
            report.instances += 1;
            let mut version = 0;
            loop {
                let entries = store.history(instance.id, version, PAGE)?;
                let Some(last) = entries.last() else { break };
                version = last.version;
                for entry in entries.iter().filter(|e| since.is_none_or(|s| e.at >= s)) {
                    replay(candidate, &instance.business_key, entry, &mut report);
                }
            }
        }
        match (page.items.last(), page.next_page_token) {
            (Some(last), Some(_)) => after = Some(last.id),
            _ => return Ok(report),
        }
    }
}

/// Replays one history entry's decision, if it records one.
fn replay(
    candidate: &RuleSet,
    business_key: &str,
    entry: &HistoryEntry,
    report: &mut BacktestReport,
) {
    let Some(provenance) = &entry.provenance else {
        return;
    };
    let decider = provenance.decider();
    if !candidate.deciders.contains(&decider) {
        report.skipped.push(format!(
            "{} v{}: the candidate has no decider `{decider}`",
            entry.instance, entry.version
        ));
        return;
    }
    let inputs = &provenance.inputs;
    let input = DecisionInput {
        instance: inputs.instance.clone(),
        payload: inputs.payload.clone(),
        actor: inputs.actor.clone(),
        now: inputs.now,
        // The counter values the decision read then, not today's.
        counters: crate::decider::Counters::replaying(&inputs.counters),
        balances: crate::decider::Balances::replaying(&inputs.balances),
    };
    report.replayed += 1;
    report.covered = Some(match report.covered {
        None => (entry.at, entry.at),
        Some((from, to)) => (from.min(entry.at), to.max(entry.at)),
    });
    let differences = match candidate.evaluate(&decider, &input) {
        Ok((_, outputs)) => compare(&provenance.outputs, &outputs),
        Err(e) => vec![format!("now fails: {}", e.message())],
    };
    let outcome_changed = differences.iter().any(|d| !d.starts_with("reason: "));
    if !differences.is_empty() {
        report.changed.push(ChangedDecision {
            at: entry.at,
            instance: entry.instance,
            business_key: business_key.to_string(),
            version: entry.version,
            decider,
            differences,
            outcome_changed,
        });
    }
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
