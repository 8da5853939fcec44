//! Domain types to wire types and back. The only place that knows both: the core never
//! sees a generated type, and handlers never build wire messages by hand.

use prost_types::Timestamp;
use serde_json::Value;
use switchyard_core::definition::TimerDue;
use switchyard_core::{
    ChangeKind, CommandOutcome, Definition, HistoryEntry, Instance, InstanceId, InstanceStatus,
    RuleSetInfo,
};
use tonic::Status;

use crate::pb;
use crate::status::bad_request;

pub(crate) fn timestamp(at: chrono::DateTime<chrono::Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

#[allow(clippy::result_large_err)]
pub(crate) fn from_timestamp(
    field: &str,
    at: &Timestamp,
) -> Result<chrono::DateTime<chrono::Utc>, Status> {
    u32::try_from(at.nanos)
        .ok()
        .and_then(|nanos| chrono::DateTime::from_timestamp(at.seconds, nanos))
        .ok_or_else(|| bad_request(field, "is not a valid timestamp"))
}

fn status(s: InstanceStatus) -> i32 {
    match s {
        InstanceStatus::Active => pb::InstanceStatus::Active,
        InstanceStatus::Completed => pb::InstanceStatus::Completed,
        InstanceStatus::Cancelled => pb::InstanceStatus::Cancelled,
        _ => pb::InstanceStatus::Unspecified,
    }
    .into()
}

fn json_text(value: &Value) -> String {
    serde_json::to_string(value).expect("JSON values serialize")
}

pub(crate) fn instance(i: &Instance) -> pb::Instance {
    pb::Instance {
        id: i.id.to_string(),
        definition: i.definition.name.clone(),
        definition_version: i.definition.version,
        business_key: i.business_key.clone(),
        state: i.state.clone(),
        status: status(i.status),
        data_json: json_text(&i.data),
        version: i.version,
        parent_id: i.parent.map(|p| p.to_string()).unwrap_or_default(),
        timers: i.timers.iter().map(timer).collect(),
        rule_set: i.rule_set.unwrap_or(0),
        created_at: timestamp(i.created_at),
        updated_at: timestamp(i.updated_at),
        incidents: i
            .incidents
            .iter()
            .map(|incident| pb::TimerIncident {
                timer: Some(timer(&incident.timer)),
                error: incident.error.clone(),
                raised_at: timestamp(incident.raised_at),
            })
            .collect(),
        owner: i.owner.clone().unwrap_or_default(),
    }
}

fn timer(t: &switchyard_core::OpenTimer) -> pb::Timer {
    pb::Timer {
        name: t.name.clone(),
        command: t.command.clone(),
        due: timestamp(t.due),
    }
}

pub(crate) fn result(o: &CommandOutcome) -> pb::CommandResult {
    pb::CommandResult {
        instance_id: o.instance.to_string(),
        version: o.version,
        state: o.state.clone(),
        status: status(o.status),
        reason: o.reason.clone(),
        started_instance_ids: o.started.iter().map(ToString::to_string).collect(),
        counters: o
            .counters
            .iter()
            .map(|c| pb::CounterValue {
                counter: c.counter.clone(),
                key: c.key.clone(),
                value: c.value,
            })
            .collect(),
    }
}

pub(crate) fn history_entry(e: &HistoryEntry) -> pb::HistoryEntry {
    let (kind, by) = match &e.kind {
        ChangeKind::Started { by } => (pb::ChangeKind::Started, *by),
        ChangeKind::Command => (pb::ChangeKind::Command, None),
        ChangeKind::Cancelled => (pb::ChangeKind::Cancelled, None),
        ChangeKind::LinkedUpdate { by } => (pb::ChangeKind::LinkedUpdate, Some(*by)),
        ChangeKind::LinkedCommand { by } => (pb::ChangeKind::LinkedCommand, Some(*by)),
        ChangeKind::TimerIncidentRaised { .. } => (pb::ChangeKind::TimerIncidentRaised, None),
        ChangeKind::TimerIncidentResolved { .. } => (pb::ChangeKind::TimerIncidentResolved, None),
        _ => (pb::ChangeKind::Unspecified, None),
    };
    pb::HistoryEntry {
        version: e.version,
        at: timestamp(e.at),
        actor: Some(pb::Actor {
            id: e.actor.id.clone(),
            roles: e.actor.roles.clone(),
        }),
        request_id: e.request_id.clone().unwrap_or_default(),
        kind: kind.into(),
        by_instance_id: by.map(|b| b.to_string()).unwrap_or_default(),
        command: e.command.clone().unwrap_or_default(),
        payload_json: json_text(&e.payload),
        from_state: e.from_state.clone().unwrap_or_default(),
        to_state: e.to_state.clone(),
        decider: e.decider.clone().unwrap_or_default(),
        reason: e.reason.clone(),
        changes_json: json_text(&e.changes),
        provenance_json: e
            .provenance
            .as_ref()
            .map(|p| serde_json::to_string(p).expect("provenance serializes"))
            .unwrap_or_default(),
    }
}

pub(crate) fn definition(d: &Definition) -> pb::Definition {
    pb::Definition {
        name: d.name.clone(),
        version: d.version,
        description: d.description.clone(),
        initial_state: d.initial.clone(),
        states: d
            .states
            .iter()
            .map(|(name, s)| pb::State {
                name: name.clone(),
                terminal: s.terminal,
                description: s.description.clone(),
                timers: s
                    .timers
                    .iter()
                    .map(|t| pb::StateTimer {
                        name: t.name.clone(),
                        command: t.command.clone(),
                        due: match &t.due {
                            TimerDue::After(d) => format!("after {}s", d.num_seconds()),
                            TimerDue::At(field) => format!("at {field}"),
                        },
                    })
                    .collect(),
            })
            .collect(),
        commands: d
            .commands
            .values()
            .map(|c| pb::Command {
                name: c.name.clone(),
                from_states: c.from.clone(),
                to_states: c.to.clone(),
                roles: c.roles.clone(),
                decider: c.decider.clone().unwrap_or_default(),
                description: c.description.clone(),
                owner_only: c.owner_only,
            })
            .collect(),
        start_roles: d.start.roles.clone(),
        cancel_roles: d.cancel_roles.clone(),
        job_types: d.jobs.keys().cloned().collect(),
        source: d.source.clone(),
        owner_roles: d.owner_roles.clone(),
    }
}

pub(crate) fn rule_set(r: &RuleSetInfo) -> pb::RuleSet {
    pb::RuleSet {
        number: r.number,
        version: r.version.clone(),
        deployed_at: timestamp(r.deployed_at),
        deployed_by: r.deployed_by.clone(),
        active: r.active,
        activated_at: r.activated_at.and_then(timestamp),
        activated_by: r.activated_by.clone().unwrap_or_default(),
    }
}

#[allow(clippy::result_large_err)]
pub(crate) fn instance_id(field: &str, text: &str) -> Result<InstanceId, Status> {
    if text.is_empty() {
        return Err(bad_request(field, "is required: an instance id (a UUID)"));
    }
    text.parse()
        .map_err(|_| bad_request(field, format!("`{text}` is not an instance id (a UUID)")))
}

/// A JSON object from a `*_json` field; empty text means `{}`.
#[allow(clippy::result_large_err)]
pub(crate) fn json_object(field: &str, text: &str) -> Result<Value, Status> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    let value: Value = switchyard_core::json::from_str(text).map_err(|e| {
        bad_request(
            field,
            format!(
                "is not JSON: {} at line {} column {}",
                e,
                e.line(),
                e.column()
            ),
        )
    })?;
    if !value.is_object() {
        return Err(bad_request(field, "must be a JSON object"));
    }
    Ok(value)
}

/// A page size from the wire: 0 means the default; negative is refused.
#[allow(clippy::result_large_err)]
pub(crate) fn page_size(size: i32) -> Result<usize, Status> {
    usize::try_from(size).map_err(|_| bad_request("page_size", format!("{size} is negative")))
}

/// Page tokens on the wire are opaque: the list's own position (an id, an offset) sealed with
/// a fingerprint of the list and of the filters it was asked with, hex-encoded. A token is
/// refused by another list, or with other filters (AIP-158: "the token is bound to the
/// request's other fields").
pub(crate) fn seal_token(list: &str, filters: &[&str], position: Option<String>) -> String {
    let Some(position) = position else {
        return String::new();
    };
    let mut bytes = b"p1".to_vec();
    bytes.extend_from_slice(&fingerprint(list, filters));
    bytes.extend_from_slice(position.as_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The position inside a token [`seal_token`] made for this list and these filters; `None`
/// for an empty token (the first page).
#[allow(clippy::result_large_err)]
pub(crate) fn open_token(
    list: &str,
    filters: &[&str],
    token: &str,
) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let not_ours = || bad_request("page_token", "is not a token this list returned");
    if token.len() % 2 != 0 || token.len() > 2048 {
        return Err(not_ours());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| not_ours())?;
    let Some(rest) = bytes.strip_prefix(b"p1") else {
        return Err(not_ours());
    };
    if rest.len() < 8 {
        return Err(not_ours());
    }
    let (print, position) = rest.split_at(8);
    if print != fingerprint(list, filters) {
        return Err(bad_request(
            "page_token",
            "was returned for another list or other filters; ask again without it",
        ));
    }
    String::from_utf8(position.to_vec())
        .map(Some)
        .map_err(|_| not_ours())
}

fn fingerprint(list: &str, filters: &[&str]) -> [u8; 8] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(list.as_bytes());
    for f in filters {
        hash.update([0]);
        hash.update(f.as_bytes());
    }
    let digest = hash.finalize();
    let mut out = [0; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// An offset-based page over an in-memory list (definitions, rule sets); `size` is already
/// checked by [`switchyard_core::Engine::page_size`].
#[allow(clippy::result_large_err)]
pub(crate) fn offset_page<T: Clone>(
    list: &str,
    items: &[T],
    size: usize,
    token: &str,
) -> Result<(Vec<T>, String), Status> {
    let (page, _, next) = offset_page_filtered(list, &[], items, size, token)?;
    Ok((page, next))
}

/// [`offset_page`] for a list asked with `filters` (the token is bound to them), also
/// returning the index of the page's first item.
#[allow(clippy::result_large_err)]
pub(crate) fn offset_page_filtered<T: Clone>(
    list: &str,
    filters: &[&str],
    items: &[T],
    size: usize,
    token: &str,
) -> Result<(Vec<T>, usize, String), Status> {
    let start = match open_token(list, filters, token)? {
        None => 0,
        Some(position) => position
            .parse::<usize>()
            .ok()
            .filter(|s| *s <= items.len())
            .ok_or_else(|| bad_request("page_token", "is not a token this list returned"))?,
    };
    let end = start.saturating_add(size).min(items.len());
    let next = seal_token(list, filters, (end < items.len()).then(|| end.to_string()));
    Ok((items[start..end].to_vec(), start, next))
}

#[cfg(test)]
mod tests {
    use super::{open_token, seal_token};

    #[test]
    fn a_page_token_opens_only_for_its_list_and_filters() {
        let token = seal_token("instances", &["quote", "", ""], Some("01ab".into()));
        assert!(!token.contains("01ab"), "opaque: {token}");
        assert_eq!(
            open_token("instances", &["quote", "", ""], &token).unwrap(),
            Some("01ab".into())
        );
        assert_eq!(open_token("instances", &[], "").unwrap(), None);
        assert_eq!(seal_token("instances", &[], None), "");
        for (list, filters, token) in [
            ("instances", vec!["lead", "", ""], token.as_str()),
            ("history", vec!["quote", "", ""], token.as_str()),
            ("instances", vec!["quote", "", ""], "zz"),
            ("instances", vec!["quote", "", ""], "abc"),
            ("instances", vec!["quote", "", ""], "01ab"),
        ] {
            assert!(
                open_token(list, &filters, token).is_err(),
                "{list} {filters:?} {token}"
            );
        }
    }
}
