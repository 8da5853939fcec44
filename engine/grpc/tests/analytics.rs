//! `switchyard.analytics.v1alpha1.AnalyticsService`: the server follows its feed into the
//! projection; figures by role (a sales rep reads only their own), bad input named, a live
//! summary pushed after a commit, and UNAVAILABLE when turned off.

mod harness;

use std::time::Duration;

use harness::*;
use switchyard_client::analytics as pb;
use switchyard_client::analytics::analytics_service_client::AnalyticsServiceClient;
use switchyard_client::google_type::Date;
use tonic::transport::Channel;
use tonic::Code;

fn day(year: i32, month: i32, day: i32) -> Option<Date> {
    Some(Date { year, month, day })
}

fn client(server: &TestServer) -> AnalyticsServiceClient<Channel> {
    AnalyticsServiceClient::new(server.channel.clone())
}

fn april_first(rep: &str) -> pb::GetSummaryRequest {
    pb::GetSummaryRequest {
        from: day(2026, 4, 1),
        to: day(2026, 4, 1),
        rep: rep.into(),
    }
}

async fn summary(server: &TestServer, role: &str, rep: &str) -> Result<pb::Summary, tonic::Status> {
    client(server)
        .get_summary(as_role(role, april_first(rep)))
        .await
        .map(|r| r.into_inner().summary.unwrap())
}

/// Waits until the projection counts `quotes` quotes on 1 April.
async fn quotes_counted(server: &TestServer, quotes: u64) -> pb::Summary {
    for _ in 0..200 {
        let s = summary(server, "admin", "").await.unwrap();
        if s.counts.as_ref().unwrap().quotes == quotes {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the projection never counted {quotes} quotes");
}

fn manual_config(dir: &std::path::Path) -> switchyard_grpc::config::ServerConfig {
    let mut config = config(dir);
    config.engine.clock = "manual".into();
    config.engine.clock_start = Some("2026-04-01T07:00:00Z".into());
    config.analytics.time_zone = "Europe/Berlin".into();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_follow_the_feed_and_a_sales_rep_reads_only_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = manual_config(dir.path());
    let server = TestServer::start_with(dir, config).await;
    // A live summary of today, before anything happened.
    let mut live = client(&server)
        .watch_summary(as_role("sales_manager", pb::WatchSummaryRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let first = live.message().await.unwrap().unwrap().summary.unwrap();
    assert_eq!(first.from, day(2026, 4, 1));
    assert_eq!(first.time_zone, "Europe/Berlin");
    assert_eq!(first.counts.unwrap().quotes, 0);

    start_quote(&server, "a-1", "FIXED-5000").await;
    let pushed = tokio::time::timeout(Duration::from_secs(10), live.message())
        .await
        .expect("a summary is pushed after the commit")
        .unwrap()
        .unwrap()
        .summary
        .unwrap();
    assert_eq!(pushed.counts.as_ref().unwrap().quotes, 1);
    assert!(pushed.offset > first.offset);

    let all = quotes_counted(&server, 1).await;
    let started = &all.workflows[0];
    assert_eq!((started.definition.as_str(), started.started), ("quote", 1));
    // The rep who started it sees it; asking for another rep's figures is refused.
    let own = summary(&server, "sales_rep", "").await.unwrap();
    assert_eq!(own.counts.unwrap().quotes, 1);
    let status = summary(&server, "sales_rep", "u-sales_manager")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = summary(&server, "logistics", "").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // A manager may look at one rep.
    let other = summary(&server, "sales_manager", "u-nobody").await.unwrap();
    assert_eq!(other.counts.unwrap().quotes, 0);
    let rep = summary(&server, "finance", "u-sales_rep").await.unwrap();
    assert_eq!(rep.counts.unwrap().quotes, 1);

    // Series, top performers, alerts.
    let series = client(&server)
        .list_series(as_role(
            "analyst",
            pb::ListSeriesRequest {
                from: day(2026, 3, 31),
                to: day(2026, 4, 2),
                period: pb::Period::Day as i32,
                rep: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let quotes: Vec<u64> = series
        .points
        .iter()
        .map(|p| p.counts.as_ref().unwrap().quotes)
        .collect();
    assert_eq!(quotes, [0, 1, 0]);
    assert_eq!(series.points[1].label, "2026-04-01");
    let top = client(&server)
        .list_top_performers(as_role(
            "analyst",
            pb::ListTopPerformersRequest {
                from: day(2026, 4, 1),
                to: day(2026, 4, 1),
                dimension: pb::Dimension::Workflow as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.performers[0].rank, 1);
    assert_eq!(top.performers[0].name, "quote");
    // Pages: one workflow per page, ranked on; the token is bound to its filters.
    let ask = |page_token: String, dimension: pb::Dimension| pb::ListTopPerformersRequest {
        from: day(2026, 4, 1),
        to: day(2026, 4, 1),
        dimension: dimension as i32,
        page_size: 1,
        page_token,
        rep: String::new(),
    };
    start_quote(&server, "a-2", "FIXED-5000").await;
    quotes_counted(&server, 2).await;
    server
        .instances()
        .start_instance(as_role(
            "sales_rep",
            switchyard_client::pb::StartInstanceRequest {
                request_id: "a-lead".into(),
                definition: "lead".into(),
                data_json: r#"{"company": "ACME GmbH"}"#.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    for _ in 0..200 {
        let s = summary(&server, "admin", "").await.unwrap();
        if s.counts.unwrap().leads == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let first = client(&server)
        .list_top_performers(as_role(
            "analyst",
            ask(String::new(), pb::Dimension::Workflow),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            first.performers[0].rank,
            first.performers[0].name.as_str(),
            first.performers[0].count
        ),
        (1, "quote", 2)
    );
    assert!(!first.next_page_token.is_empty());
    let second = client(&server)
        .list_top_performers(as_role(
            "analyst",
            ask(first.next_page_token.clone(), pb::Dimension::Workflow),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            second.performers[0].rank,
            second.performers[0].name.as_str()
        ),
        (2, "lead")
    );
    assert!(second.next_page_token.is_empty());
    let status = client(&server)
        .list_top_performers(as_role(
            "analyst",
            ask(first.next_page_token, pb::Dimension::Customer),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["page_token"]);
    let demand = client(&server)
        .get_demand_forecast(as_role(
            "analyst",
            pb::GetDemandForecastRequest {
                sku: "FIXED-5000".into(),
                from: day(2026, 3, 23),
                to: day(2026, 4, 5),
                horizon_weeks: 1,
                rep: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // Quotes are no demand: only confirmed orders count.
    let weeks: Vec<(&str, &str)> = demand
        .weeks
        .iter()
        .map(|w| (w.week.as_str(), w.quantity.as_str()))
        .collect();
    assert_eq!(weeks, [("2026-W13", "0"), ("2026-W14", "0")]);
    assert_eq!(demand.forecast[0].week, "2026-W15");
    assert_eq!(demand.mean_absolute_error, "0");
    assert_eq!(demand.time_zone, "Europe/Berlin");
    let alerts = client(&server)
        .list_alerts(as_role("admin", pb::ListAlertsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alerts.total_size, 0);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_is_named_and_analytics_turned_off_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let config = manual_config(dir.path());
    let server = TestServer::start_with(dir, config).await;
    let ask = |from, to| pb::GetSummaryRequest {
        from,
        to,
        rep: String::new(),
    };
    for (request, field) in [
        (ask(None, day(2026, 4, 1)), "from"),
        (ask(day(2026, 13, 1), day(2026, 4, 1)), "from"),
        (ask(day(2026, 4, 1), day(2026, 2, 30)), "to"),
        (ask(day(2026, 4, 2), day(2026, 4, 1)), "to"),
        (ask(day(1990, 1, 1), day(2026, 4, 1)), "to"),
    ] {
        let status = client(&server)
            .get_summary(as_role("admin", request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_fields(&status), [field], "{status:?}");
    }
    let status = client(&server)
        .list_series(as_role(
            "admin",
            pb::ListSeriesRequest {
                from: day(2026, 4, 1),
                to: day(2026, 4, 1),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["period"]);
    let status = client(&server)
        .get_demand_forecast(as_role(
            "admin",
            pb::GetDemandForecastRequest {
                sku: "SEAL-KIT".into(),
                from: day(2026, 4, 1),
                to: day(2026, 4, 1),
                horizon_weeks: 53,
                rep: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["horizon_weeks"]);
    // A page token is bound to the list and filters it came with.
    let status = client(&server)
        .list_alerts(as_role(
            "admin",
            pb::ListAlertsRequest {
                page_token: "00".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["page_token"]);
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = manual_config(dir.path());
    config.analytics.enabled = false;
    let server = TestServer::start_with(dir, config).await;
    let status = summary(&server, "admin", "").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    server.stop().await;
}
