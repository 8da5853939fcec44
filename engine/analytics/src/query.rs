//! Reading the projection: a date range's summary, daily or weekly series, the funnel,
//! approval waits, top performers, product demand with a forecast, and open alerts.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use crate::figures::{Amounts, Counts, DayFigures, Performance, Revenue, Workflow};
use crate::tx::{day_key, decode, rep_day_key};
use crate::{Alert, AlertKind, AlertSeverity, Analytics, AnalyticsError, RatedAlert};

/// The longest date range a query covers, in days (ten years).
pub const DAYS_MAX: i64 = 3660;

/// Weeks of history a demand forecast looks at, at most.
const DEMAND_WEEKS_MAX: usize = 520;

/// A date range's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// First day (inclusive).
    pub from: NaiveDate,
    /// Last day (inclusive).
    pub to: NaiveDate,
    /// The IANA time zone the days were cut in.
    pub time_zone: String,
    /// The feed offset the figures reflect.
    pub offset: u64,
    /// Documents.
    pub counts: Counts,
    /// Money per currency.
    pub revenue: BTreeMap<String, Revenue>,
    /// The funnel of the range's leads and quotes.
    pub funnel: Funnel,
    /// Approval waits per role, of the decisions made in the range.
    pub approvals: BTreeMap<String, CycleTimes>,
    /// Instances per workflow definition.
    pub workflows: BTreeMap<String, Workflow>,
}

/// The lead → quote → order funnel of the leads and quotes created in a range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Funnel {
    /// Leads created.
    pub leads: u64,
    /// Of those, with a quote.
    pub leads_quoted: u64,
    /// Of those, with a confirmed order.
    pub leads_ordered: u64,
    /// Quotes created.
    pub quotes: u64,
    /// Of those, with a confirmed order.
    pub quotes_ordered: u64,
    /// `leads_quoted / leads` in percent (two places, half away from zero); none without leads.
    pub lead_to_quote_pct: Option<Decimal>,
    /// `leads_ordered / leads` in percent.
    pub lead_to_order_pct: Option<Decimal>,
    /// `quotes_ordered / quotes` in percent.
    pub quote_to_order_pct: Option<Decimal>,
}

impl Funnel {
    fn of(figures: &DayFigures) -> Funnel {
        let c = &figures.cohort;
        let n = &figures.counts;
        Funnel {
            leads: n.leads,
            leads_quoted: c.leads_quoted,
            leads_ordered: c.leads_ordered,
            quotes: n.quotes,
            quotes_ordered: c.quotes_ordered,
            lead_to_quote_pct: percent(c.leads_quoted, n.leads),
            lead_to_order_pct: percent(c.leads_ordered, n.leads),
            quote_to_order_pct: percent(c.quotes_ordered, n.quotes),
        }
    }
}

fn percent(part: u64, whole: u64) -> Option<Decimal> {
    (whole > 0).then(|| {
        (Decimal::from(part) * Decimal::ONE_HUNDRED / Decimal::from(whole))
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
    })
}

/// How long approvers took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CycleTimes {
    /// Decisions counted.
    pub decisions: u64,
    /// The median wait (nearest rank: the lower middle of an even count).
    pub median: Duration,
    /// The 90th percentile (nearest rank).
    pub p90: Duration,
}

impl CycleTimes {
    fn of(waits: &[u64]) -> Option<CycleTimes> {
        let mut sorted = waits.to_vec();
        sorted.sort_unstable();
        let rank = |pct: usize| {
            let n = sorted.len();
            let index = (pct * n).div_ceil(100).max(1) - 1;
            Duration::from_millis(sorted[index.min(n - 1)])
        };
        (!sorted.is_empty()).then(|| CycleTimes {
            decisions: sorted.len() as u64,
            median: rank(50),
            p90: rank(90),
        })
    }
}

/// A series' period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// Calendar days.
    Day,
    /// ISO weeks (Monday to Sunday).
    Week,
}

/// One period of a series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// `2026-04-01` for a day, `2026-W14` for an ISO week.
    pub label: String,
    /// The period's first day within the range asked.
    pub from: NaiveDate,
    /// Its last day within the range.
    pub to: NaiveDate,
    /// Documents.
    pub counts: Counts,
    /// Money per currency.
    pub revenue: BTreeMap<String, Revenue>,
    /// The funnel of the period's leads and quotes.
    pub funnel: Funnel,
}

/// What top performers are ranked by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    /// The order's owner.
    Rep,
    /// The order's customer.
    Customer,
    /// Products (SKU), by confirmed orders with them.
    Product,
    /// Workflow definitions, by instances started.
    Workflow,
}

/// One ranked performer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Performer {
    /// The rep, customer, SKU or definition name.
    pub name: String,
    /// Confirmed orders (instances started, for workflows): the ranking key.
    pub count: u64,
    /// Their totals per currency (products: line totals; workflows: none).
    pub amounts: Amounts,
    /// Quantity ordered (products only).
    pub quantity: Option<Decimal>,
}

/// Weekly demand for one product and the forecast of the coming weeks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DemandForecast {
    /// The SKU.
    pub sku: String,
    /// The method, in words.
    pub method: String,
    /// Past weeks, oldest first (the range's ISO weeks).
    pub weeks: Vec<WeekDemand>,
    /// The coming weeks' forecast.
    pub forecast: Vec<WeekDemand>,
    /// Mean absolute error of the one-week-ahead forecasts over the past weeks (none with
    /// fewer than two weeks).
    pub mean_absolute_error: Option<Decimal>,
}

/// A week's quantity.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeekDemand {
    /// `2026-W14`.
    pub week: String,
    /// Its Monday.
    pub monday: NaiveDate,
    /// Quantity (ordered, or forecast).
    pub quantity: Decimal,
}

/// Whose figures a query reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The whole business.
    All,
    /// One sales rep's: the leads and quotes they own, and the orders, returns and chargebacks
    /// of their quotes.
    Rep(String),
}

impl Scope {
    fn key(&self, day: NaiveDate) -> String {
        match self {
            Scope::All => day_key(day),
            Scope::Rep(rep) => rep_day_key(rep, day),
        }
    }
}

/// The smoothing factor of the demand forecast.
const ALPHA: Decimal = Decimal::from_parts(5, 0, 0, false, 1);

impl Analytics {
    /// The figures of each day in `from..=to` that has any, read as of one batch.
    fn days(
        &self,
        scope: &Scope,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<(Vec<(NaiveDate, DayFigures)>, u64), AnalyticsError> {
        check_range(from, to)?;
        let _reader = self.inner.lock.read().unwrap_or_else(|e| e.into_inner());
        let offset = self.offset();
        let mut days = Vec::new();
        let range = scope.key(from).into_bytes()..=scope.key(to).into_bytes();
        for item in self.inner.tree.range(range) {
            let (key, bytes) = item?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let date = key.get(key.len().saturating_sub(10)..).unwrap_or_default();
            let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|e| {
                AnalyticsError::Corrupt {
                    key: key.clone(),
                    error: e.to_string(),
                }
            })?;
            days.push((day, decode(&key, &bytes)?));
        }
        Ok((days, offset))
    }

    /// The figures of `from..=to`, added up.
    pub fn figures(
        &self,
        scope: &Scope,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<DayFigures, AnalyticsError> {
        let mut total = DayFigures::default();
        for (_, day) in self.days(scope, from, to)?.0 {
            total.merge(&day);
        }
        Ok(total)
    }

    /// The summary of `from..=to`.
    pub fn summary(
        &self,
        scope: &Scope,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Summary, AnalyticsError> {
        let (days, offset) = self.days(scope, from, to)?;
        let mut total = DayFigures::default();
        for (_, day) in &days {
            total.merge(day);
        }
        Ok(Summary {
            from,
            to,
            time_zone: self.time_zone().name().to_string(),
            offset,
            funnel: Funnel::of(&total),
            approvals: total
                .approvals
                .iter()
                .filter_map(|(role, waits)| Some((role.clone(), CycleTimes::of(waits)?)))
                .collect(),
            counts: total.counts,
            revenue: total.revenue,
            workflows: total.workflows,
        })
    }

    /// `from..=to` per day or per ISO week (every period, with or without figures).
    pub fn series(
        &self,
        scope: &Scope,
        from: NaiveDate,
        to: NaiveDate,
        period: Period,
    ) -> Result<Vec<SeriesPoint>, AnalyticsError> {
        let (days, _) = self.days(scope, from, to)?;
        let mut by_day: BTreeMap<NaiveDate, DayFigures> = days.into_iter().collect();
        let mut points: Vec<(String, NaiveDate, NaiveDate, DayFigures)> = Vec::new();
        let mut day = from;
        while day <= to {
            let label = match period {
                Period::Day => day.format("%Y-%m-%d").to_string(),
                Period::Week => week_label(day),
            };
            let figures = by_day.remove(&day).unwrap_or_default();
            match points.last_mut() {
                Some(last) if last.0 == label => {
                    last.2 = day;
                    last.3.merge(&figures);
                }
                _ => points.push((label, day, day, figures)),
            }
            day = day.succ_opt().expect("dates within range");
        }
        Ok(points
            .into_iter()
            .map(|(label, from, to, figures)| SeriesPoint {
                label,
                from,
                to,
                funnel: Funnel::of(&figures),
                counts: figures.counts,
                revenue: figures.revenue,
            })
            .collect())
    }

    /// The top `limit` performers of `from..=to` by `dimension`: most confirmed orders first
    /// (instances started, for workflows), then the larger quantity (products), then by name. Amounts in different currencies are
    /// never added up, so they do not rank.
    pub fn top(
        &self,
        scope: &Scope,
        from: NaiveDate,
        to: NaiveDate,
        dimension: Dimension,
        limit: usize,
    ) -> Result<Vec<Performer>, AnalyticsError> {
        let total = self.figures(scope, from, to)?;
        let performance = |map: BTreeMap<String, Performance>| {
            map.into_iter()
                .map(|(name, p)| Performer {
                    name,
                    count: p.orders,
                    amounts: p.ordered,
                    quantity: None,
                })
                .collect::<Vec<_>>()
        };
        let mut ranked = match dimension {
            Dimension::Rep => performance(total.reps),
            Dimension::Customer => performance(total.customers),
            Dimension::Product => total
                .products
                .into_iter()
                .map(|(name, d)| Performer {
                    name,
                    count: d.orders,
                    amounts: d.ordered,
                    quantity: Some(d.quantity),
                })
                .collect(),
            Dimension::Workflow => total
                .workflows
                .into_iter()
                .map(|(name, w)| Performer {
                    name,
                    count: w.started,
                    amounts: Amounts::new(),
                    quantity: None,
                })
                .collect(),
        };
        ranked.sort_by(|a, b| {
            (b.count, b.quantity)
                .cmp(&(a.count, a.quantity))
                .then_with(|| a.name.cmp(&b.name))
        });
        ranked.truncate(limit);
        Ok(ranked)
    }

    /// Weekly demand for `sku` in the ISO weeks of `from..=to` and a forecast of the next
    /// `horizon` weeks by simple exponential smoothing (α = 0.5, the level rounded to four
    /// places each week, starting from the first week's quantity): each coming week is
    /// forecast at the last level.
    pub fn demand(
        &self,
        scope: &Scope,
        sku: &str,
        from: NaiveDate,
        to: NaiveDate,
        horizon: usize,
    ) -> Result<DemandForecast, AnalyticsError> {
        let weeks: Vec<WeekDemand> = self.series_of(scope, from, to, |day| {
            day.products.get(sku).map_or(Decimal::ZERO, |d| d.quantity)
        })?;
        if weeks.len() > DEMAND_WEEKS_MAX {
            return Err(AnalyticsError::Invalid {
                field: "to",
                message: format!(
                    "a forecast looks back at most {DEMAND_WEEKS_MAX} weeks ({} asked)",
                    weeks.len()
                ),
            });
        }
        if horizon > 52 {
            return Err(AnalyticsError::Invalid {
                field: "horizon",
                message: format!("forecasts at most 52 weeks ahead ({horizon} asked)"),
            });
        }
        let mut level: Option<Decimal> = None;
        let mut errors = Vec::new();
        for week in &weeks {
            level = Some(match level {
                None => week.quantity,
                Some(forecast) => {
                    errors.push((week.quantity - forecast).abs());
                    (ALPHA * week.quantity + (Decimal::ONE - ALPHA) * forecast).round_dp(4)
                }
            });
        }
        let last_monday = weeks.last().map_or(from, |w| w.monday);
        let forecast = (1..=horizon)
            .map(|ahead| {
                let monday = last_monday + chrono::Duration::weeks(ahead as i64);
                WeekDemand {
                    week: week_label(monday),
                    monday,
                    quantity: level.unwrap_or_default(),
                }
            })
            .collect();
        let mean_absolute_error = (!errors.is_empty())
            .then(|| (errors.iter().sum::<Decimal>() / Decimal::from(errors.len())).round_dp(4));
        Ok(DemandForecast {
            sku: sku.to_string(),
            method: "simple exponential smoothing, alpha 0.5, from the first week".into(),
            weeks,
            forecast,
            mean_absolute_error,
        })
    }

    /// A value per ISO week of `from..=to` (whole weeks: from the Monday of `from`'s week to
    /// the Sunday of `to`'s).
    fn series_of(
        &self,
        scope: &Scope,
        from: NaiveDate,
        to: NaiveDate,
        value: impl Fn(&DayFigures) -> Decimal,
    ) -> Result<Vec<WeekDemand>, AnalyticsError> {
        let monday = from - chrono::Duration::days(from.weekday().num_days_from_monday() as i64);
        let sunday = to + chrono::Duration::days(6 - to.weekday().num_days_from_monday() as i64);
        let (days, _) = self.days(scope, monday, sunday)?;
        let mut weeks: Vec<WeekDemand> = Vec::new();
        let mut week = monday;
        while week <= sunday {
            weeks.push(WeekDemand {
                week: week_label(week),
                monday: week,
                quantity: Decimal::ZERO,
            });
            week += chrono::Duration::weeks(1);
        }
        for (day, figures) in days {
            let index = ((day - monday).num_days() / 7) as usize;
            if let Some(w) = weeks.get_mut(index) {
                w.quantity += value(&figures);
            }
        }
        Ok(weeks)
    }

    /// Open alerts as of `now`, most urgent first (then by due time, then oldest), at most
    /// `limit`, with how many there are in all. An approval shows only once past its
    /// escalation time; a dispute is critical within 24 hours of its evidence deadline; a
    /// notice has its message's severity and shows for [`crate::NOTICE_DAYS`] days.
    pub fn alerts(
        &self,
        scope: &Scope,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<(Vec<RatedAlert>, usize), AnalyticsError> {
        let stored: Vec<Alert> = {
            let _reader = self.inner.lock.read().unwrap_or_else(|e| e.into_inner());
            let mut stored = Vec::new();
            for item in self.inner.tree.scan_prefix(b"a/") {
                let (key, bytes) = item?;
                stored.push(decode(&String::from_utf8_lossy(&key), &bytes)?);
            }
            stored
        };
        let mut rated: Vec<RatedAlert> = stored
            .into_iter()
            .filter(|alert| match scope {
                Scope::All => true,
                Scope::Rep(rep) => &alert.rep == rep,
            })
            .filter_map(|alert| {
                Some(RatedAlert {
                    severity: severity(&alert, now)?,
                    alert,
                })
            })
            .collect();
        rated.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| match (a.alert.due, b.alert.due) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                })
                .then_with(|| a.alert.since.cmp(&b.alert.since))
                .then_with(|| a.alert.instance.cmp(&b.alert.instance))
        });
        let total = rated.len();
        rated.truncate(limit);
        Ok((rated, total))
    }

    /// Orders with backordered quantity now.
    pub fn backorders_open(&self, scope: &Scope) -> Result<usize, AnalyticsError> {
        let _reader = self.inner.lock.read().unwrap_or_else(|e| e.into_inner());
        let suffix = format!("/{}", AlertKind::Backorder.as_str());
        let mut open = 0;
        for item in self.inner.tree.scan_prefix(b"a/") {
            let (key, bytes) = item?;
            if key.ends_with(suffix.as_bytes()) {
                let alert: Alert = decode(&String::from_utf8_lossy(&key), &bytes)?;
                open += usize::from(match scope {
                    Scope::All => true,
                    Scope::Rep(rep) => &alert.rep == rep,
                });
            }
        }
        Ok(open)
    }
}

/// An alert's severity at `now`, or none while it is not yet worth showing.
fn severity(alert: &Alert, now: DateTime<Utc>) -> Option<AlertSeverity> {
    let within_a_day = |due: DateTime<Utc>| due - now <= chrono::Duration::hours(24);
    Some(match alert.kind {
        AlertKind::DisputeDue => match alert.due {
            Some(due) if within_a_day(due) => AlertSeverity::Critical,
            _ => AlertSeverity::High,
        },
        AlertKind::ApprovalOverdue => match alert.due {
            Some(due) if due <= now => AlertSeverity::High,
            _ => return None,
        },
        AlertKind::Incident | AlertKind::NotificationUndelivered => AlertSeverity::High,
        AlertKind::RefundDue | AlertKind::Backorder => AlertSeverity::Routine,
        AlertKind::Notice => {
            if now - alert.since > chrono::Duration::days(crate::NOTICE_DAYS) {
                return None;
            }
            alert.severity.unwrap_or(AlertSeverity::High)
        }
    })
}

/// `2026-W14`: the ISO week of `day`.
fn week_label(day: NaiveDate) -> String {
    let week = day.iso_week();
    format!("{}-W{:02}", week.year(), week.week())
}

fn check_range(from: NaiveDate, to: NaiveDate) -> Result<(), AnalyticsError> {
    if to < from {
        return Err(AnalyticsError::Invalid {
            field: "to",
            message: format!("{to} is before from ({from})"),
        });
    }
    if (to - from).num_days() >= DAYS_MAX {
        return Err(AnalyticsError::Invalid {
            field: "to",
            message: format!("a range spans at most {DAYS_MAX} days"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let t = CycleTimes::of(&[40, 10, 30, 20]).unwrap();
        assert_eq!(t.decisions, 4);
        assert_eq!(t.median, Duration::from_millis(20));
        assert_eq!(t.p90, Duration::from_millis(40));
        let one = CycleTimes::of(&[7]).unwrap();
        assert_eq!(
            (one.median, one.p90),
            (Duration::from_millis(7), Duration::from_millis(7))
        );
        assert!(CycleTimes::of(&[]).is_none());
        let ten: Vec<u64> = (1..=10).collect();
        assert_eq!(CycleTimes::of(&ten).unwrap().p90, Duration::from_millis(9));
    }

    #[test]
    fn percentages_round_half_away_from_zero_and_need_a_whole() {
        assert_eq!(percent(1, 3), Some(Decimal::new(3333, 2)));
        assert_eq!(percent(2, 3), Some(Decimal::new(6667, 2)));
        assert_eq!(percent(1, 8), Some(Decimal::new(1250, 2)));
        assert_eq!(percent(0, 0), None);
    }

    #[test]
    fn weeks_are_iso_weeks() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(week_label(d("2026-01-01")), "2026-W01");
        assert_eq!(week_label(d("2027-01-01")), "2026-W53");
        assert_eq!(week_label(d("2024-12-30")), "2025-W01");
    }
}
