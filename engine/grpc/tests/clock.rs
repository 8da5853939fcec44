//! A test server with a manual clock: advancing it fires the timers due in the skipped
//! interval, in due order, over the API; a server on the system clock refuses to be advanced.

mod harness;

use harness::*;
use switchyard_grpc::pb;
use tonic::Code;

fn clock(
    server: &TestServer,
) -> pb::clock_service_client::ClockServiceClient<tonic::transport::Channel> {
    pb::clock_service_client::ClockServiceClient::new(server.channel.clone())
}

fn by(seconds: i64) -> pb::AdvanceClockRequest {
    pb::AdvanceClockRequest {
        by: Some(prost_types::Duration { seconds, nanos: 0 }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advancing_a_manual_clock_fires_the_sla_timers_in_due_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.engine.clock = "manual".into();
    config.engine.clock_start = Some("2026-04-01T09:00:00Z".into());
    let server = TestServer::start_with(dir, config).await;
    let now = clock(&server)
        .get_clock(as_role("sales_rep", pb::GetClockRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(now.manual);
    assert_eq!(
        now.now.unwrap().seconds,
        1_775_034_000,
        "2026-04-01T09:00:00Z"
    );

    // A quote of 5,000.00 waits for the manager: escalation after 48 h, denial after 168 h.
    let quote = start_quote(&server, "r-clock", "FIXED-5000").await;
    let submitted = server
        .instances()
        .send_command(as_role(
            "sales_rep",
            pb::SendCommandRequest {
                request_id: "r-clock-submit".into(),
                instance_id: quote.instance_id.clone(),
                command: "submit".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(submitted.state, "pending_approval");
    let refused = clock(&server)
        .advance_clock(as_role("sales_manager", by(3600)))
        .await;
    expect_refusal(refused, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let bad = clock(&server).advance_clock(as_role("admin", by(0))).await;
    assert_eq!(
        bad_fields(&expect_refusal(bad, Code::InvalidArgument, "INVALID_INPUT")),
        vec!["by"]
    );

    // Eight days at once: both timers were due in the interval; they fire in due order.
    let advanced = clock(&server)
        .advance_clock(as_role("admin", by(8 * 86_400)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(advanced.timers_fired, 2);
    assert_eq!(advanced.now.unwrap().seconds, 1_775_034_000 + 8 * 86_400);
    let history = server
        .instances()
        .list_instance_history(as_role(
            "admin",
            pb::ListInstanceHistoryRequest {
                instance_id: quote.instance_id.clone(),
                page_size: 100,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let fired: Vec<(&str, &str)> = history
        .iter()
        .skip(2)
        .map(|e| (e.command.as_str(), e.to_state.as_str()))
        .collect();
    assert_eq!(
        fired,
        vec![("escalate", "pending_approval"), ("auto_deny", "draft")]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_the_system_clock_cannot_be_advanced() {
    let server = TestServer::start().await;
    let now = clock(&server)
        .get_clock(as_role("sales_rep", pb::GetClockRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(!now.manual);
    let refused = clock(&server).advance_clock(as_role("admin", by(60))).await;
    expect_refusal(refused, Code::FailedPrecondition, "CLOCK_NOT_MANUAL");
    server.stop().await;
}
