//! How one feed event changes the projection. Every function here is total: a field that is
//! missing or of another shape counts as absent, so an event of an unexpected shape changes
//! nothing rather than stopping the projection.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_core::{EventType, FeedEvent};

use crate::figures::{DayFigures, Performance};
use crate::tx::Tx;
use crate::{Alert, AlertKind, AlertSeverity, AnalyticsError};

/// The workflow definitions the projection reads, as the shipped rule set names them.
pub const LEAD: &str = "lead";
/// Quotes.
pub const QUOTE: &str = "quote";
/// Sales orders.
pub const SALES_ORDER: &str = "sales_order";
/// Returns.
pub const RETURN: &str = "return";
/// Chargebacks.
pub const CHARGEBACK: &str = "chargeback";

/// Longest alert detail kept, in characters.
const DETAIL_CHARS: usize = 200;

/// What the projection remembers of one instance between its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Track {
    definition: String,
    business_key: String,
    /// The sales rep it counts for: an order, return or chargeback counts for its parent's rep,
    /// a lead or quote for its owner.
    rep: String,
    /// The day it started: its cohort.
    day: Option<NaiveDate>,
    parent: Option<String>,
    status: String,
    /// A lead with a quote.
    quoted: bool,
    /// A lead or quote with a confirmed order.
    ordered: bool,
    /// An order that was confirmed.
    confirmed: bool,
    /// Invoices, payments and fund movements already counted.
    invoices: usize,
    payments: usize,
    movements: usize,
    refunded: bool,
    lost: bool,
    /// Approver roles a quote waits for, and since when.
    waiting: BTreeMap<String, DateTime<Utc>>,
}

/// Applies one event.
pub(crate) fn apply(tx: &mut Tx, event: &FeedEvent, tz: Tz) -> Result<(), AnalyticsError> {
    let Ok(data) = serde_json::from_str::<Value>(event.data_json.get()) else {
        return Ok(());
    };
    let at = At {
        day: event.time.with_timezone(&tz).date_naive(),
        time: event.time,
    };
    match event.kind {
        EventType::InstanceStarted
        | EventType::InstanceTransitioned
        | EventType::InstanceUpdated
        | EventType::InstanceCancelled => instance_change(tx, &at, event.kind, &data),
        EventType::IncidentRaised => incident_raised(tx, &at, &data),
        EventType::IncidentResolved => incident_resolved(tx, &data),
        EventType::NotificationUndelivered => undelivered(tx, &at, &data),
        EventType::NotificationSent => notice(tx, &at, &data),
        _ => Ok(()),
    }
}

/// When an event happened: its commit time and that time's calendar day.
struct At {
    day: NaiveDate,
    time: DateTime<Utc>,
}

fn instance_change(
    tx: &mut Tx,
    at: &At,
    kind: EventType,
    event: &Value,
) -> Result<(), AnalyticsError> {
    let Some(id) = event["instance"].as_str() else {
        return Ok(());
    };
    let definition = event["definition"]["name"].as_str().unwrap_or_default();
    let mut track = tx.track(id)?.unwrap_or_default();
    if track.definition.is_empty() {
        track.parent = event["parent"].as_str().map(str::to_string);
        track.rep = rep_of(tx, event, &track)?;
        if kind == EventType::InstanceStarted {
            started(tx, at, definition, &mut track)?;
        }
    }
    track.definition = definition.to_string();
    track.business_key = text(&event["business_key"]).to_string();
    let status = event["status"].as_str().unwrap_or("active");
    if status != track.status {
        tx.update(at.day, &track.rep, |day| {
            let workflow = day.workflows.entry(definition.to_string()).or_default();
            match status {
                "completed" => workflow.completed += 1,
                "cancelled" => workflow.cancelled += 1,
                _ => {}
            }
        })?;
        track.status = status.to_string();
        if status != "active" {
            // An ended instance's notices are over.
            for key in tx.alert_keys(&format!("a/{id}/{}/", AlertKind::Notice.as_str()))? {
                tx.set_alert(&key, None)?;
            }
        }
    }
    match definition {
        SALES_ORDER => order(tx, at, event, id, &mut track)?,
        QUOTE => quote(tx, at, event, id, &mut track)?,
        RETURN => return_change(tx, at, event, id, &mut track)?,
        CHARGEBACK => chargeback(tx, at, event, id, &mut track)?,
        _ => {}
    }
    tx.set_track(id, track);
    Ok(())
}

/// The rep an instance counts for: its parent's, unless the parent is a lead (or unknown).
fn rep_of(tx: &mut Tx, event: &Value, track: &Track) -> Result<String, AnalyticsError> {
    if let Some(parent) = &track.parent {
        if let Some(p) = tx.track(parent)? {
            if p.definition != LEAD && !p.rep.is_empty() {
                return Ok(p.rep);
            }
        }
    }
    Ok(text(&event["owner"]).to_string())
}

fn started(
    tx: &mut Tx,
    at: &At,
    definition: &str,
    track: &mut Track,
) -> Result<(), AnalyticsError> {
    track.day = Some(at.day);
    tx.update(at.day, &track.rep, |day| {
        day.workflows
            .entry(definition.to_string())
            .or_default()
            .started += 1;
        match definition {
            LEAD => day.counts.leads += 1,
            QUOTE => day.counts.quotes += 1,
            RETURN => day.counts.returns += 1,
            CHARGEBACK => day.counts.chargebacks += 1,
            _ => {}
        }
    })?;
    if definition == QUOTE {
        if let Some(lead) = &track.parent {
            if let Some(mut parent) = tx.track(lead)? {
                if parent.definition == LEAD && !parent.quoted {
                    parent.quoted = true;
                    if let Some(cohort) = parent.day {
                        tx.update(cohort, &parent.rep, |day| day.cohort.leads_quoted += 1)?;
                    }
                    tx.set_track(lead, parent);
                }
            }
        }
    }
    Ok(())
}

fn order(
    tx: &mut Tx,
    at: &At,
    event: &Value,
    id: &str,
    track: &mut Track,
) -> Result<(), AnalyticsError> {
    let data = &event["data"];
    let pricing = &data["pricing"];
    let currency = Some(text(&pricing["currency"]))
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| text(&data["currency"]))
        .to_string();
    if !track.confirmed && !text(&data["number"]).is_empty() {
        track.confirmed = true;
        let rep = track.rep.clone();
        tx.update(at.day, &rep, |day| confirmed(day, event, &currency, &rep))?;
        if let Some(quote) = track.parent.clone() {
            order_from_quote(tx, &quote)?;
        }
    }
    let invoices = list(&data["invoices"]);
    for invoice in invoices.iter().skip(track.invoices) {
        let in_currency = Some(text(&invoice["currency"]))
            .filter(|c| !c.is_empty())
            .unwrap_or(&currency);
        let total = amount(&invoice["total"]);
        tx.update(at.day, &track.rep, |day| {
            let revenue = day.revenue.entry(in_currency.to_string()).or_default();
            revenue.invoiced += total;
        })?;
    }
    track.invoices = invoices.len();
    let payments = list(&data["payments"]);
    for payment in payments.iter().skip(track.payments) {
        let paid = amount(&payment["amount"]);
        tx.update(at.day, &track.rep, |day| {
            day.revenue.entry(currency.clone()).or_default().paid += paid;
        })?;
    }
    track.payments = payments.len();
    let backordered = list(&data["lines"])
        .iter()
        .any(|line| amount(&line["backordered"]) > Decimal::ZERO);
    let alert = (backordered && active(event)).then(|| {
        let skus: Vec<&str> = list(&data["lines"])
            .iter()
            .filter(|line| amount(&line["backordered"]) > Decimal::ZERO)
            .map(|line| text(&line["sku"]))
            .collect();
        (None, format!("backordered: {}", skus.join(", ")))
    });
    keep_alert(tx, id, AlertKind::Backorder, track, at, alert)
}

/// Counts a confirmed order: its total, rep, customer and products.
fn confirmed(day: &mut DayFigures, event: &Value, currency: &str, rep: &str) {
    let data = &event["data"];
    let pricing = &data["pricing"];
    let total = amount(&pricing["total"]);
    day.counts.orders += 1;
    day.revenue.entry(currency.to_string()).or_default().ordered += total;
    let rep = Some(rep).filter(|o| !o.is_empty()).unwrap_or("(none)");
    let customer = Some(text(&data["customer"]))
        .filter(|c| !c.is_empty())
        .unwrap_or("(none)");
    for who in [
        day.reps.entry(rep.to_string()).or_default(),
        day.customers.entry(customer.to_string()).or_default(),
    ] {
        count_order(who, currency, total);
    }
    let mut seen = BTreeSet::new();
    for line in list(&pricing["lines"]) {
        let sku = text(&line["sku"]);
        if sku.is_empty() {
            continue;
        }
        let product = day.products.entry(sku.to_string()).or_default();
        if seen.insert(sku) {
            product.orders += 1;
        }
        product.quantity += amount(&line["quantity"]);
        *product.ordered.entry(currency.to_string()).or_default() +=
            amount(&line["net"]) + amount(&line["tax"]);
    }
}

fn count_order(who: &mut Performance, currency: &str, total: Decimal) {
    who.orders += 1;
    *who.ordered.entry(currency.to_string()).or_default() += total;
}

/// An order of `quote` was confirmed: the quote's cohort and its lead's count it once.
fn order_from_quote(tx: &mut Tx, quote: &str) -> Result<(), AnalyticsError> {
    let Some(mut q) = tx.track(quote)? else {
        return Ok(());
    };
    if q.definition != QUOTE || q.ordered {
        return Ok(());
    }
    q.ordered = true;
    if let Some(cohort) = q.day {
        tx.update(cohort, &q.rep, |day| day.cohort.quotes_ordered += 1)?;
    }
    let lead = q.parent.clone();
    tx.set_track(quote, q);
    let Some(lead) = lead else {
        return Ok(());
    };
    if let Some(mut l) = tx.track(&lead)? {
        if l.definition == LEAD && !l.ordered {
            l.ordered = true;
            if let Some(cohort) = l.day {
                tx.update(cohort, &l.rep, |day| day.cohort.leads_ordered += 1)?;
            }
            tx.set_track(&lead, l);
        }
    }
    Ok(())
}

/// Approval waits per role: a role of the current step waits from when it became current until
/// a person approves or rejects (an escalation keeps it waiting; a timeout or a revision ends
/// the wait uncounted).
fn quote(
    tx: &mut Tx,
    at: &At,
    event: &Value,
    id: &str,
    track: &mut Track,
) -> Result<(), AnalyticsError> {
    let data = &event["data"];
    let pending = text(&event["to_state"]) == "pending_approval" && active(event);
    let current: BTreeSet<String> = if pending {
        roles(&data["approval"]["route"][0])
    } else {
        BTreeSet::new()
    };
    let decided = matches!(text(&event["command"]), "approve" | "reject");
    let ended: Vec<(String, DateTime<Utc>)> = track
        .waiting
        .iter()
        .filter(|(role, _)| !current.contains(*role))
        .map(|(role, since)| (role.clone(), *since))
        .collect();
    for (role, since) in ended {
        track.waiting.remove(&role);
        if decided {
            let waited = u64::try_from((at.time - since).num_milliseconds()).unwrap_or(0);
            tx.update(at.day, &track.rep, |day| {
                day.approvals.entry(role.clone()).or_default().push(waited);
            })?;
        }
    }
    for role in current {
        track.waiting.entry(role).or_insert(at.time);
    }
    let due = timestamp(&data["sla_escalate_at"]);
    let alert = (pending && due.is_some()).then(|| {
        let roles: Vec<&str> = track.waiting.keys().map(String::as_str).collect();
        (due, format!("waiting for {}", roles.join(", ")))
    });
    keep_alert(tx, id, AlertKind::ApprovalOverdue, track, at, alert)
}

/// The roles of an approval step: one role, or a group of them.
fn roles(step: &Value) -> BTreeSet<String> {
    match step {
        Value::String(role) => BTreeSet::from([role.clone()]),
        Value::Array(group) => group
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn return_change(
    tx: &mut Tx,
    at: &At,
    event: &Value,
    id: &str,
    track: &mut Track,
) -> Result<(), AnalyticsError> {
    let data = &event["data"];
    if !track.refunded && text(&event["to_state"]) == "refunded" {
        track.refunded = true;
        let refund = amount(&data["refund"]["total"]);
        tx.update(at.day, &track.rep, |day| {
            day.counts.refunds += 1;
            let revenue = day.revenue.entry(text(&data["currency"]).to_string());
            revenue.or_default().refunded += refund;
        })?;
    }
    let owed = text(&event["to_state"]) == "refund_pending" && active(event);
    let alert = owed.then(|| {
        let refund = format!(
            "refund of {} {} to pay",
            amount(&data["refund"]["total"]),
            text(&data["currency"])
        );
        (None, refund)
    });
    keep_alert(tx, id, AlertKind::RefundDue, track, at, alert)
}

fn chargeback(
    tx: &mut Tx,
    at: &At,
    event: &Value,
    id: &str,
    track: &mut Track,
) -> Result<(), AnalyticsError> {
    let data = &event["data"];
    let currency = text(&data["currency"]).to_string();
    let movements = list(&data["movements"]);
    for movement in movements.iter().skip(track.movements) {
        let moved = amount(&movement["amount"]);
        tx.update(at.day, &track.rep, |day| {
            let revenue = day.revenue.entry(currency.clone()).or_default();
            match text(&movement["kind"]) {
                "withdrawn" => revenue.withdrawn += moved,
                "reinstated" => revenue.reinstated += moved,
                _ => {}
            }
        })?;
    }
    track.movements = movements.len();
    if !track.lost && text(&event["to_state"]) == "lost" {
        track.lost = true;
        let kept: Decimal = movements
            .iter()
            .map(|m| match text(&m["kind"]) {
                "withdrawn" => amount(&m["amount"]),
                "reinstated" => -amount(&m["amount"]),
                _ => Decimal::ZERO,
            })
            .sum();
        tx.update(at.day, &track.rep, |day| {
            day.revenue
                .entry(currency.clone())
                .or_default()
                .chargebacks_lost += kept;
        })?;
    }
    let open = matches!(text(&event["to_state"]), "inquiry" | "needs_response") && active(event);
    let due = timestamp(&data["evidence_due_by"]);
    let alert = (open && due.is_some()).then(|| {
        let what = format!(
            "dispute of {} {} on {}: evidence due",
            amount(&data["amount"]),
            currency,
            text(&data["order_number"])
        );
        (due, what)
    });
    keep_alert(tx, id, AlertKind::DisputeDue, track, at, alert)
}

/// Keeps the alert of `kind` on instance `id` in step with `wanted` (its due time and detail):
/// created at the event's time, updated in place (its `since` kept), removed when not wanted.
fn keep_alert(
    tx: &mut Tx,
    id: &str,
    kind: AlertKind,
    track: &Track,
    at: &At,
    wanted: Option<(Option<DateTime<Utc>>, String)>,
) -> Result<(), AnalyticsError> {
    let key = alert_key(id, kind, None);
    let alert = match wanted {
        None => None,
        Some((due, detail)) => {
            let since = tx.alert(&key)?.map_or(at.time, |a| a.since);
            Some(Alert {
                kind,
                instance: id.to_string(),
                definition: track.definition.clone(),
                business_key: track.business_key.clone(),
                rep: track.rep.clone(),
                severity: None,
                since,
                due,
                detail: clip(&detail),
            })
        }
    };
    tx.set_alert(&key, alert)
}

/// `a/<instance>/<kind>[/<what>]`: the alerts of an instance are one key range.
pub(crate) fn alert_key(instance: &str, kind: AlertKind, what: Option<&str>) -> String {
    match what {
        None => format!("a/{instance}/{}", kind.as_str()),
        Some(what) => format!("a/{instance}/{}/{what}", kind.as_str()),
    }
}

/// A job's retries ran out (or a timer's command failed): an incident alert until resolved.
/// A notification's incident is already listed as undelivered.
fn incident_raised(tx: &mut Tx, at: &At, event: &Value) -> Result<(), AnalyticsError> {
    let (instance, what, detail) = if let Some(job) = event["job"].as_str() {
        let job_type = text(&event["job_type"]);
        if job_type.starts_with(switchyard_core::notification::JOB_TYPE_PREFIX) {
            return Ok(());
        }
        let detail = format!("job {job_type} failed: {}", text(&event["error"]));
        (text(&event["instance"]), job.to_string(), detail)
    } else {
        let incident = &event["incident"];
        let timer = text(&incident["timer"]);
        let detail = format!(
            "timer {timer} could not send {}: {}",
            text(&incident["command"]),
            text(&incident["error"])
        );
        (text(&event["instance"]), format!("timer:{timer}"), detail)
    };
    raise(tx, at, instance, AlertKind::Incident, &what, &detail)
}

fn undelivered(tx: &mut Tx, at: &At, event: &Value) -> Result<(), AnalyticsError> {
    let job = text(&event["job"]);
    let payload = &event["payload"];
    let detail = format!(
        "{} to {} undelivered: {}",
        text(&payload["channel"]),
        text(&payload["to"]),
        text(&event["error"])
    );
    raise(
        tx,
        at,
        text(&event["instance"]),
        AlertKind::NotificationUndelivered,
        job,
        &detail,
    )
}

fn raise(
    tx: &mut Tx,
    at: &At,
    instance: &str,
    kind: AlertKind,
    what: &str,
    detail: &str,
) -> Result<(), AnalyticsError> {
    if instance.is_empty() || what.is_empty() {
        return Ok(());
    }
    let track = tx.track(instance)?.unwrap_or_default();
    let alert = Alert {
        kind,
        instance: instance.to_string(),
        definition: track.definition,
        business_key: track.business_key,
        rep: track.rep,
        severity: None,
        since: at.time,
        due: None,
        detail: clip(detail),
    };
    tx.set_alert(&alert_key(instance, kind, Some(what)), Some(alert))
}

/// A message delivered to the dashboard: a notice for the person it names, at its severity.
fn notice(tx: &mut Tx, at: &At, event: &Value) -> Result<(), AnalyticsError> {
    let dashboard = format!(
        "{}dashboard",
        switchyard_core::notification::JOB_TYPE_PREFIX
    );
    let (instance, job) = (text(&event["instance"]), text(&event["job"]));
    if text(&event["job_type"]) != dashboard || instance.is_empty() || job.is_empty() {
        return Ok(());
    }
    let message = &event["payload"];
    let severity = match text(&message["severity"]) {
        "critical" => AlertSeverity::Critical,
        "high" => AlertSeverity::High,
        _ => AlertSeverity::Routine,
    };
    let track = tx.track(instance)?.unwrap_or_default();
    if !track.status.is_empty() && track.status != "active" {
        return Ok(());
    }
    let subject = Some(text(&message["subject"]))
        .filter(|s| !s.is_empty())
        .unwrap_or(text(&message["text"]));
    let alert = Alert {
        kind: AlertKind::Notice,
        instance: instance.to_string(),
        definition: track.definition,
        business_key: track.business_key,
        rep: text(&message["recipient"]).to_string(),
        severity: Some(severity),
        since: at.time,
        due: None,
        detail: clip(subject),
    };
    tx.set_alert(
        &alert_key(instance, AlertKind::Notice, Some(job)),
        Some(alert),
    )
}

fn incident_resolved(tx: &mut Tx, event: &Value) -> Result<(), AnalyticsError> {
    let instance = text(&event["instance"]);
    if let Some(job) = event["job"].as_str() {
        tx.set_alert(&alert_key(instance, AlertKind::Incident, Some(job)), None)?;
        let key = alert_key(instance, AlertKind::NotificationUndelivered, Some(job));
        tx.set_alert(&key, None)
    } else {
        let what = format!("timer:{}", text(&event["incident"]["timer"]));
        tx.set_alert(&alert_key(instance, AlertKind::Incident, Some(&what)), None)
    }
}

fn active(event: &Value) -> bool {
    text(&event["status"]) == "active"
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A decimal amount: the engine keeps money as a decimal string; a JSON number is read from its
/// literal text (never through `f64`); anything else is zero.
fn amount(value: &Value) -> Decimal {
    match value {
        Value::String(s) => Decimal::from_str(s).unwrap_or_default(),
        Value::Number(n) => Decimal::from_str(&n.to_string())
            .or_else(|_| Decimal::from_scientific(&n.to_string()))
            .unwrap_or_default(),
        _ => Decimal::ZERO,
    }
}

fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.to_utc())
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(DETAIL_CHARS) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts_are_exact_and_anything_else_is_zero() {
        assert_eq!(amount(&json!("12.30")), Decimal::new(1230, 2));
        assert_eq!(amount(&json!(0.1)), Decimal::new(1, 1));
        assert_eq!(amount(&json!(1e3)), Decimal::new(1000, 0));
        assert_eq!(amount(&json!("abc")), Decimal::ZERO);
        assert_eq!(amount(&json!(null)), Decimal::ZERO);
        assert_eq!(amount(&json!({"x": 1})), Decimal::ZERO);
    }

    #[test]
    fn a_step_is_one_role_or_a_group() {
        assert_eq!(roles(&json!("finance")).len(), 1);
        assert_eq!(roles(&json!(["finance", "sales_manager", 3])).len(), 2);
        assert!(roles(&json!(null)).is_empty());
    }

    #[test]
    fn details_are_clipped_on_a_character_boundary() {
        let long = "ü".repeat(500);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), DETAIL_CHARS + 1);
    }
}
