//! Notifications through the server: channels from `[notifications]` (secrets only from the
//! environment), delivery states over gRPC.

mod harness;

use std::time::Duration;

use harness::*;
use switchyard_client::pb;
use switchyard_grpc::config::{ChannelConfig, WebhookEndpointConfig};
use switchyard_grpc::server;

#[tokio::test]
async fn a_quote_waiting_for_approval_is_delivered_by_the_configured_channel_and_reported_over_grpc(
) {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("email.jsonl");
    let mut config = config(dir.path());
    // Wednesday 09:00 in Berlin: within the sales manager's hours.
    config.engine.clock = "manual".into();
    config.engine.clock_start = Some("2026-04-01T07:00:00Z".into());
    config.notifications.channels.insert(
        "email".into(),
        ChannelConfig::File {
            path: outbox.clone(),
        },
    );
    let server = TestServer::start_with(dir, config).await;
    let started = start_quote(&server, "n-1", "FIXED-5000").await;
    server
        .instances()
        .send_command(as_role(
            "sales_rep",
            pb::SendCommandRequest {
                request_id: "n-1-submit".into(),
                instance_id: started.instance_id.clone(),
                command: "submit".into(),
                payload_json: "{}".into(),
                expected_version: None,
            },
        ))
        .await
        .unwrap();
    let jobs = pb::job_service_client::JobServiceClient::new(server.channel.clone());
    let mut delivered = None;
    for _ in 0..200 {
        let list = jobs
            .clone()
            .list_notifications(as_role(
                "sales_manager",
                pb::ListNotificationsRequest {
                    instance_id: started.instance_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .notifications;
        assert_eq!(list.len(), 1, "{list:?}");
        if list[0].status == pb::NotificationStatus::Sent as i32 {
            delivered = Some(list[0].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = delivered.expect("the message is sent");
    assert_eq!(
        (n.channel.as_str(), n.to.as_str()),
        ("email", "mia@example.com")
    );
    assert_eq!(n.category, "approval");
    assert_eq!(n.severity, "routine");
    assert!(n.subject.starts_with("Quote Q-n-1 waits"), "{}", n.subject);
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&outbox)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["id"], n.message_id);
    assert_eq!(line["message"]["to"], "mia@example.com");

    // A bad instance id names the field.
    let status = jobs
        .clone()
        .list_notifications(as_role(
            "sales_manager",
            pb::ListNotificationsRequest {
                instance_id: "nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["instance_id"]);
    server.stop().await;
}

#[tokio::test]
async fn a_webhook_endpoint_without_its_secret_in_the_environment_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.notifications.channels.insert(
        "webhook".into(),
        ChannelConfig::Webhook {
            endpoints: [(
                "erp".to_string(),
                WebhookEndpointConfig {
                    url: "http://127.0.0.1:9/hooks".into(),
                    secrets_env: "ERP_WEBHOOK_SECRETS".into(),
                },
            )]
            .into(),
        },
    );
    let error = server::start(config.clone(), |_| None)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("notifications.channels.webhook.endpoints.erp.secrets_env")
            && error.contains("ERP_WEBHOOK_SECRETS"),
        "{error}"
    );
    let error = server::start(config, |_| Some("not-a-secret".into()))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("secrets[0]: a secret starts with `whsec_`"),
        "{error}"
    );
    assert!(!error.contains("not-a-secret"), "{error}");
}
