//! `switchyard.analytics.v1alpha1.AnalyticsService`: the figures of `switchyard-analytics`
//! over gRPC, scoped by role (a sales rep reads only their own), and a live summary stream
//! that pushes a changed summary at most four times a second.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, NaiveDate};
use rust_decimal::Decimal;
use switchyard_analytics::{self as a, Analytics, AnalyticsError, Dimension, Period, Scope};
use switchyard_client::analytics as pb;
use switchyard_client::google_type::Date;
use switchyard_core::{roles, Actor, CommandError, Engine};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::actor_of;
use crate::convert::timestamp;
use crate::status::{bad_request, to_status, Wire};

type Answer<T> = Result<Response<T>, Status>;

/// Opens the projection (unless `[analytics] enabled = false`) and follows `engine`'s feed
/// into it until the engine shuts down (the task that does is returned, to be awaited).
pub(crate) fn open(
    config: &crate::config::ServerConfig,
    engine: &Engine,
) -> Result<(Option<Analytics>, Option<tokio::task::JoinHandle<()>>), crate::server::ServeError> {
    if !config.analytics.enabled {
        return Ok((None, None));
    }
    let dir = config.analytics_dir();
    let time_zone = config.analytics.time_zone.parse().map_err(|_| {
        crate::server::ServeError::Config("`analytics.time_zone`: not an IANA time zone".into())
    })?;
    let analytics = Analytics::open(&dir, a::AnalyticsConfig { time_zone }).map_err(|e| {
        crate::server::ServeError::Config(format!(
            "`analytics.data_dir`: cannot open the projection in {}: {e}",
            dir.display()
        ))
    })?;
    tracing::info!(dir = %dir.display(), offset = analytics.offset(), "analytics follows the feed");
    if let Ok((earliest, _)) = engine.feed_bounds() {
        if earliest > 1 {
            tracing::warn!(
                earliest,
                retention = %config.engine.feed_retention,
                "the feed no longer starts at offset 1: analytics cannot be rebuilt from it (after an upgrade that changes its figures, or if its directory is lost); keep the feed (engine.feed_retention) as long as the figures must be rebuildable"
            );
        }
    }
    let (following, engine) = (analytics.clone(), engine.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = following.follow(&engine).await {
            tracing::error!(error = %e, "analytics stopped following the feed; its figures are stale (delete its directory to rebuild)");
        }
    });
    Ok((Some(analytics), Some(task)))
}
type WatchAnswer = Result<pb::WatchSummaryResponse, Status>;

/// The least time between two pushes of a watched summary.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Roles that read every figure.
const READ_ALL: [&str; 4] = ["sales_manager", "finance", roles::ANALYST, roles::ADMIN];
/// The role that reads its own figures.
const SALES_REP: &str = "sales_rep";

/// The analytics service: the projection (none when turned off), the engine (for its clock),
/// the shutdown flag and the permits shared with the feed's streams (`grpc.feed_streams_max`).
#[derive(Clone)]
pub(crate) struct AnalyticsService {
    pub(crate) analytics: Option<Analytics>,
    pub(crate) engine: Engine,
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) streams: Arc<Semaphore>,
    pub(crate) streams_max: usize,
}

impl AnalyticsService {
    #[allow(clippy::result_large_err)]
    fn projection(&self) -> Result<&Analytics, Status> {
        let analytics = self
            .analytics
            .as_ref()
            .ok_or_else(|| Status::unavailable("analytics is turned off ([analytics] enabled)"))?;
        match analytics.stalled() {
            None => Ok(analytics),
            Some(why) => Err(Status::unavailable(switchyard_core::clip(
                &format!("analytics stopped following the feed: {why}"),
                1024,
            ))),
        }
    }

    /// Today in the projection's time zone.
    fn today(&self, analytics: &Analytics) -> NaiveDate {
        self.engine
            .now()
            .with_timezone(&analytics.time_zone())
            .date_naive()
    }
}

/// Whose figures `actor` may read, asking for `rep`'s (empty: all, or their own).
#[allow(clippy::result_large_err)]
pub(crate) fn scope(actor: &Actor, rep: &str) -> Result<Scope, Status> {
    if rep.len() > 200 {
        return Err(bad_request("rep", "is longer than 200 bytes"));
    }
    let holds = |role: &str| actor.roles.iter().any(|r| r == role);
    if READ_ALL.iter().any(|r| holds(r)) {
        return Ok(if rep.is_empty() {
            Scope::All
        } else {
            Scope::Rep(rep.to_string())
        });
    }
    if holds(SALES_REP) && (rep.is_empty() || rep == actor.id) {
        return Ok(Scope::Rep(actor.id.clone()));
    }
    let required = if holds(SALES_REP) {
        "sales_manager, finance, analyst or admin (a sales_rep reads only their own figures)"
    } else {
        "sales_rep, sales_manager, finance, analyst or admin"
    };
    Err(to_status(
        &CommandError::RoleNotAllowed {
            actor: actor.id.clone(),
            action: "read analytics".into(),
            held: if actor.roles.is_empty() {
                "none".into()
            } else {
                actor.roles.join(", ")
            },
            required: required.into(),
        },
        Wire::NONE,
    ))
}

#[allow(clippy::result_large_err)]
fn date(field: &'static str, date: Option<Date>) -> Result<NaiveDate, Status> {
    let d = date.ok_or_else(|| bad_request(field, "is required"))?;
    u32::try_from(d.month)
        .ok()
        .zip(u32::try_from(d.day).ok())
        .and_then(|(m, day)| NaiveDate::from_ymd_opt(d.year, m, day))
        .filter(|_| (1..=9999).contains(&d.year))
        .ok_or_else(|| {
            bad_request(
                field,
                format!("{}-{}-{} is not a calendar date", d.year, d.month, d.day),
            )
        })
}

#[allow(clippy::result_large_err)]
fn range(from: Option<Date>, to: Option<Date>) -> Result<(NaiveDate, NaiveDate), Status> {
    Ok((date("from", from)?, date("to", to)?))
}

fn wire_date(d: NaiveDate) -> Option<Date> {
    Some(Date {
        year: d.year(),
        month: d.month() as i32,
        day: d.day() as i32,
    })
}

fn refused(e: AnalyticsError) -> Status {
    match e {
        AnalyticsError::Invalid { field, message } => bad_request(field, message),
        other => {
            tracing::warn!(error = %other, "analytics could not answer");
            Status::unavailable(format!("analytics could not answer: {other}"))
        }
    }
}

fn money(currency: &str, amount: Decimal) -> Option<pb::Money> {
    Some(pb::Money {
        currency_code: currency.to_string(),
        amount: amount.to_string(),
    })
}

fn revenue(map: &std::collections::BTreeMap<String, a::Revenue>) -> Vec<pb::Revenue> {
    map.iter()
        .map(|(c, r)| pb::Revenue {
            currency_code: c.clone(),
            ordered: money(c, r.ordered),
            invoiced: money(c, r.invoiced),
            paid: money(c, r.paid),
            refunded: money(c, r.refunded),
            chargebacks_lost: money(c, r.chargebacks_lost),
            withdrawn: money(c, r.withdrawn),
            reinstated: money(c, r.reinstated),
            net: money(c, r.net()),
        })
        .collect()
}

fn counts(c: &a::Counts) -> Option<pb::Counts> {
    Some(pb::Counts {
        leads: c.leads,
        quotes: c.quotes,
        orders: c.orders,
        returns: c.returns,
        refunds: c.refunds,
        chargebacks: c.chargebacks,
    })
}

fn funnel(f: &a::Funnel) -> Option<pb::Funnel> {
    let pct = |p: Option<Decimal>| p.map(|p| format!("{p:.2}")).unwrap_or_default();
    Some(pb::Funnel {
        leads: f.leads,
        leads_quoted: f.leads_quoted,
        leads_ordered: f.leads_ordered,
        quotes: f.quotes,
        quotes_ordered: f.quotes_ordered,
        lead_to_quote_percent: pct(f.lead_to_quote_pct),
        lead_to_order_percent: pct(f.lead_to_order_pct),
        quote_to_order_percent: pct(f.quote_to_order_pct),
    })
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    })
}

fn summary(s: &a::Summary, backorders_open: usize) -> pb::Summary {
    pb::Summary {
        from: wire_date(s.from),
        to: wire_date(s.to),
        time_zone: s.time_zone.clone(),
        offset: s.offset,
        counts: counts(&s.counts),
        revenue: revenue(&s.revenue),
        funnel: funnel(&s.funnel),
        approvals: s
            .approvals
            .iter()
            .map(|(role, t)| pb::ApprovalTimes {
                role: role.clone(),
                decisions: t.decisions,
                median: duration(t.median),
                p90: duration(t.p90),
            })
            .collect(),
        workflows: s
            .workflows
            .iter()
            .map(|(name, w)| pb::WorkflowCounts {
                definition: name.clone(),
                started: w.started,
                completed: w.completed,
                cancelled: w.cancelled,
            })
            .collect(),
        backorders_open: backorders_open as u64,
    }
}

/// The summary of `from..=to` for `scope`, blocking (sled reads).
fn read_summary(
    analytics: &Analytics,
    scope: &Scope,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<pb::Summary, AnalyticsError> {
    let s = analytics.summary(scope, from, to)?;
    Ok(summary(&s, analytics.backorders_open(scope)?))
}

/// Runs a blocking read of the projection off the async threads.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, AnalyticsError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| Status::internal(format!("an analytics read panicked: {e}")))?
        .map_err(refused)
}

#[allow(clippy::result_large_err)]
fn page(size: i32, default: usize, max: usize) -> Result<usize, Status> {
    match crate::convert::page_size(size)? {
        0 => Ok(default),
        n if n <= max => Ok(n),
        n => Err(bad_request("page_size", format!("{n} is above {max}"))),
    }
}

fn alert(r: &a::RatedAlert) -> pb::Alert {
    let kind = match r.alert.kind {
        a::AlertKind::DisputeDue => pb::AlertKind::DisputeDue,
        a::AlertKind::Incident => pb::AlertKind::Incident,
        a::AlertKind::NotificationUndelivered => pb::AlertKind::NotificationUndelivered,
        a::AlertKind::ApprovalOverdue => pb::AlertKind::ApprovalOverdue,
        a::AlertKind::RefundDue => pb::AlertKind::RefundDue,
        a::AlertKind::Backorder => pb::AlertKind::Backorder,
        a::AlertKind::Notice => pb::AlertKind::Notice,
    };
    let severity = match r.severity {
        a::AlertSeverity::Routine => pb::AlertSeverity::Routine,
        a::AlertSeverity::High => pb::AlertSeverity::High,
        a::AlertSeverity::Critical => pb::AlertSeverity::Critical,
    };
    pb::Alert {
        kind: kind as i32,
        severity: severity as i32,
        instance_id: r.alert.instance.clone(),
        definition: r.alert.definition.clone(),
        business_key: r.alert.business_key.clone(),
        rep: r.alert.rep.clone(),
        since: timestamp(r.alert.since),
        due: r.alert.due.and_then(timestamp),
        detail: r.alert.detail.clone(),
    }
}

#[tonic::async_trait]
impl pb::analytics_service_server::AnalyticsService for AnalyticsService {
    type WatchSummaryStream = Pin<Box<dyn Stream<Item = WatchAnswer> + Send + 'static>>;

    async fn get_summary(
        &self,
        request: Request<pb::GetSummaryRequest>,
    ) -> Answer<pb::GetSummaryResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let scope = scope(&actor, &r.rep)?;
        let (from, to) = range(r.from, r.to)?;
        let analytics = self.projection()?.clone();
        let summary = blocking(move || read_summary(&analytics, &scope, from, to)).await?;
        Ok(Response::new(pb::GetSummaryResponse {
            summary: Some(summary),
        }))
    }

    async fn list_series(
        &self,
        request: Request<pb::ListSeriesRequest>,
    ) -> Answer<pb::ListSeriesResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let scope = scope(&actor, &r.rep)?;
        let (from, to) = range(r.from, r.to)?;
        let period = match pb::Period::try_from(r.period) {
            Ok(pb::Period::Day) => Period::Day,
            Ok(pb::Period::Week) => Period::Week,
            _ => {
                return Err(bad_request(
                    "period",
                    "is required: PERIOD_DAY or PERIOD_WEEK",
                ))
            }
        };
        let analytics = self.projection()?.clone();
        let zone = analytics.time_zone().name().to_string();
        let offset = analytics.offset();
        let points = blocking(move || analytics.series(&scope, from, to, period)).await?;
        Ok(Response::new(pb::ListSeriesResponse {
            points: points
                .iter()
                .map(|p| pb::SeriesPoint {
                    label: p.label.clone(),
                    from: wire_date(p.from),
                    to: wire_date(p.to),
                    counts: counts(&p.counts),
                    revenue: revenue(&p.revenue),
                    funnel: funnel(&p.funnel),
                })
                .collect(),
            time_zone: zone,
            offset,
        }))
    }

    async fn list_top_performers(
        &self,
        request: Request<pb::ListTopPerformersRequest>,
    ) -> Answer<pb::ListTopPerformersResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let scope = scope(&actor, &r.rep)?;
        let (from, to) = range(r.from, r.to)?;
        let dimension = match pb::Dimension::try_from(r.dimension) {
            Ok(pb::Dimension::Rep) => Dimension::Rep,
            Ok(pb::Dimension::Customer) => Dimension::Customer,
            Ok(pb::Dimension::Product) => Dimension::Product,
            Ok(pb::Dimension::Workflow) => Dimension::Workflow,
            _ => {
                return Err(bad_request(
                    "dimension",
                    "is required: DIMENSION_REP, _CUSTOMER, _PRODUCT or _WORKFLOW",
                ))
            }
        };
        let size = page(r.page_size, 10, 100)?;
        let filters = [
            from.to_string(),
            to.to_string(),
            r.dimension.to_string(),
            format!("{scope:?}"),
        ];
        let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
        let analytics = self.projection()?.clone();
        let ranked =
            blocking(move || analytics.top(&scope, from, to, dimension, usize::MAX)).await?;
        let (performers, first, next) = crate::convert::offset_page_filtered(
            "top_performers",
            &filters,
            &ranked,
            size,
            &r.page_token,
        )?;
        Ok(Response::new(pb::ListTopPerformersResponse {
            performers: performers
                .iter()
                .enumerate()
                .map(|(i, p)| pb::Performer {
                    rank: u32::try_from(first + i + 1).unwrap_or(u32::MAX),
                    name: p.name.clone(),
                    count: p.count,
                    amounts: p.amounts.iter().filter_map(|(c, v)| money(c, *v)).collect(),
                    quantity: p.quantity.map(|q| q.to_string()).unwrap_or_default(),
                })
                .collect(),
            next_page_token: next,
        }))
    }

    async fn get_demand_forecast(
        &self,
        request: Request<pb::GetDemandForecastRequest>,
    ) -> Answer<pb::GetDemandForecastResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let scope = scope(&actor, &r.rep)?;
        if r.sku.is_empty() || r.sku.len() > 200 {
            return Err(bad_request("sku", "is required (at most 200 bytes)"));
        }
        let (from, to) = range(r.from, r.to)?;
        let horizon = usize::try_from(r.horizon_weeks)
            .ok()
            .filter(|h| *h <= 52)
            .ok_or_else(|| {
                bad_request(
                    "horizon_weeks",
                    format!("{} is not 0 to 52", r.horizon_weeks),
                )
            })?;
        let analytics = self.projection()?.clone();
        let zone = analytics.time_zone().name().to_string();
        let sku = r.sku.clone();
        let demand = blocking(move || analytics.demand(&scope, &sku, from, to, horizon)).await?;
        let week = |w: &a::WeekDemand| pb::WeekDemand {
            week: w.week.clone(),
            monday: wire_date(w.monday),
            quantity: w.quantity.to_string(),
        };
        Ok(Response::new(pb::GetDemandForecastResponse {
            sku: demand.sku.clone(),
            method: demand.method.clone(),
            weeks: demand.weeks.iter().map(week).collect(),
            forecast: demand.forecast.iter().map(week).collect(),
            mean_absolute_error: demand
                .mean_absolute_error
                .map(|e| e.to_string())
                .unwrap_or_default(),
            time_zone: zone,
        }))
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Answer<pb::ListAlertsResponse> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let scope = scope(&actor, &r.rep)?;
        let size = page(r.page_size, 50, 500)?;
        let filters = [format!("{scope:?}")];
        let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
        let analytics = self.projection()?.clone();
        let now = self.engine.now();
        let (alerts, total) = blocking(move || analytics.alerts(&scope, now, usize::MAX)).await?;
        let (alerts, _, next) =
            crate::convert::offset_page_filtered("alerts", &filters, &alerts, size, &r.page_token)?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: alerts.iter().map(alert).collect(),
            next_page_token: next,
            total_size: total as u64,
        }))
    }

    async fn watch_summary(
        &self,
        request: Request<pb::WatchSummaryRequest>,
    ) -> Result<Response<Self::WatchSummaryStream>, Status> {
        let actor = actor_of(&request)?;
        let r = request.into_inner();
        let scope = scope(&actor, &r.rep)?;
        let dates = match (r.from, r.to) {
            (None, None) => None,
            (from, to) => Some(range(from, to)?),
        };
        let analytics = self.projection()?.clone();
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            let overloaded = CommandError::Overloaded {
                resource: "open feed and summary streams (grpc.feed_streams_max)".into(),
                limit: self.streams_max,
            };
            to_status(&overloaded, Wire::NONE)
        })?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(watch_pump(
            self.clone(),
            analytics,
            scope,
            dates,
            tx,
            permit,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends the summary, then a new one whenever it changed (checked after each applied batch,
/// at most every [`WATCH_INTERVAL`]), until the consumer goes away or the server stops.
async fn watch_pump(
    service: AnalyticsService,
    analytics: Analytics,
    scope: Scope,
    dates: Option<(NaiveDate, NaiveDate)>,
    tx: mpsc::Sender<WatchAnswer>,
    _permit: OwnedSemaphorePermit,
) {
    let mut changes = analytics.changes();
    let mut stopping = service.stopping.clone();
    let mut last: Option<pb::Summary> = None;
    loop {
        let (from, to) = dates.unwrap_or_else(|| {
            let today = service.today(&analytics);
            (today, today)
        });
        let (a, s) = (analytics.clone(), scope.clone());
        let read = blocking(move || read_summary(&a, &s, from, to)).await;
        let changed = match &read {
            // The offset alone moving is no change in the numbers.
            Ok(now) => {
                last.as_ref().map(|l| pb::Summary {
                    offset: now.offset,
                    ..l.clone()
                }) != Some(now.clone())
            }
            Err(_) => true,
        };
        if changed {
            let failed = read.is_err();
            last = read.as_ref().ok().cloned();
            let message = read.map(|s| pb::WatchSummaryResponse { summary: Some(s) });
            if tx.send(message).await.is_err() || failed {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            () = tx.closed() => return,
        }
        // Wait for a batch (or, following today, at most a minute: midnight moves the day).
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(60)), if dates.is_none() => {}
            _ = stopping.wait_for(|s| *s) => {}
            () = tx.closed() => return,
        }
        if *stopping.borrow() {
            let _ = tx
                .send(Err(Status::unavailable("the server is shutting down")))
                .await;
            return;
        }
    }
}
