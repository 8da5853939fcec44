//! Every `switchyard.v1` RPC over a real loopback socket: success paths, every error class
//! with its `google.rpc` details, authentication and permission refusals for every service,
//! health, reflection and metrics.

mod harness;

use harness::*;
use switchyard_grpc::pb;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_start_send_get_list_history_cancel() {
    let server = TestServer::start().await;
    let mut client = server.instances();

    let started = start_quote(&server, "r-start", "FIXED-4999").await;
    assert_eq!(started.state, "draft");
    assert_eq!(started.version, 1);
    assert_eq!(started.status, pb::InstanceStatus::Active as i32);

    let submitted = client
        .send_command(as_role(
            "sales_rep",
            pb::SendCommandRequest {
                request_id: "r-submit".into(),
                instance_id: started.instance_id.clone(),
                command: "submit".into(),
                payload_json: String::new(),
                expected_version: Some(1),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(submitted.state, "approved");
    assert_eq!(submitted.version, 2);
    assert!(
        submitted.reason.contains("approved automatically"),
        "{}",
        submitted.reason
    );

    let instance = client
        .get_instance(as_role(
            "finance",
            pb::GetInstanceRequest {
                instance_id: started.instance_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .instance
        .unwrap();
    assert_eq!(instance.definition, "quote");
    assert_eq!(instance.definition_version, 1);
    assert_eq!(instance.state, "approved");
    assert_eq!(instance.version, 2);
    assert_eq!(instance.rule_set, 1);
    let data: serde_json::Value = serde_json::from_str(&instance.data_json).unwrap();
    // Money stays a decimal string across the wire.
    assert_eq!(data["pricing"]["net"], "4999.99");

    // Lists page with tokens.
    start_quote(&server, "r-start-2", "FIXED-5000").await;
    let first = client
        .list_instances(as_role(
            "sales_rep",
            pb::ListInstancesRequest {
                definition: "quote".into(),
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.instances.len(), 1);
    assert_eq!(first.instances[0].id, started.instance_id);
    assert!(!first.next_page_token.is_empty());
    // Tokens are opaque and bound to the filters they were returned for.
    assert!(!first.next_page_token.contains(&started.instance_id));
    let other_filters = client
        .list_instances(as_role(
            "sales_rep",
            pb::ListInstancesRequest {
                definition: "lead".into(),
                page_size: 1,
                page_token: first.next_page_token.clone(),
                ..Default::default()
            },
        ))
        .await;
    let status = expect_refusal(other_filters, Code::InvalidArgument, "INVALID_INPUT");
    assert_eq!(bad_fields(&status), vec!["page_token"]);
    let second = client
        .list_instances(as_role(
            "sales_rep",
            pb::ListInstancesRequest {
                definition: "quote".into(),
                page_size: 1,
                page_token: first.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.instances.len(), 1);
    assert_ne!(second.instances[0].id, started.instance_id);
    let by_state = client
        .list_instances(as_role(
            "sales_rep",
            pb::ListInstancesRequest {
                definition: "quote".into(),
                state: "approved".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_state.instances.len(), 1);

    // Cancel, then read the history: every change records its actor.
    let cancelled = client
        .cancel_instance(as_role(
            "sales_manager",
            pb::CancelInstanceRequest {
                request_id: "r-cancel".into(),
                instance_id: started.instance_id.clone(),
                reason: "customer went quiet".into(),
                expected_version: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(cancelled.status, pb::InstanceStatus::Cancelled as i32);
    assert_eq!(cancelled.version, 3);

    let page = client
        .list_instance_history(as_role(
            "sales_rep",
            pb::ListInstanceHistoryRequest {
                instance_id: started.instance_id.clone(),
                page_size: 2,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.entries.len(), 2);
    assert!(!page.next_page_token.is_empty());
    let rest = client
        .list_instance_history(as_role(
            "sales_rep",
            pb::ListInstanceHistoryRequest {
                instance_id: started.instance_id.clone(),
                page_size: 2,
                page_token: page.next_page_token,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.entries.len(), 1);
    assert!(rest.next_page_token.is_empty());
    let entries: Vec<_> = page.entries.into_iter().chain(rest.entries).collect();
    let kinds: Vec<i32> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            pb::ChangeKind::Started as i32,
            pb::ChangeKind::Command as i32,
            pb::ChangeKind::Cancelled as i32
        ]
    );
    let actors: Vec<&str> = entries
        .iter()
        .map(|e| e.actor.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(
        actors,
        vec!["u-sales_rep", "u-sales_rep", "u-sales_manager"]
    );
    assert_eq!(entries[1].decider, "quote::submit");
    assert!(
        entries[1].provenance_json.contains("quote::submit")
            || entries[1].provenance_json.contains("\"function\"")
    );
    assert_eq!(entries[2].request_id, "r-cancel");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_list_and_get() {
    let server = TestServer::start().await;
    let mut client = server.definitions();
    let listed = client
        .list_definitions(as_role("sales_rep", pb::ListDefinitionsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.definitions.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "chargeback",
            "lead",
            "provider_event",
            "quote",
            "return",
            "sales_order",
            "shipment"
        ]
    );
    let paged = client
        .list_definitions(as_role(
            "sales_rep",
            pb::ListDefinitionsRequest {
                page_size: 1,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paged.definitions.len(), 1);
    assert!(!paged.next_page_token.is_empty());

    let quote = client
        .get_definition(as_role(
            "sales_rep",
            pb::GetDefinitionRequest {
                name: "quote".into(),
                version: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .definition
        .unwrap();
    assert_eq!(quote.version, 1);
    assert_eq!(quote.initial_state, "draft");
    let submit = quote.commands.iter().find(|c| c.name == "submit").unwrap();
    assert_eq!(submit.decider, "quote::submit");
    assert_eq!(submit.from_states, vec!["draft"]);
    let pending = quote
        .states
        .iter()
        .find(|s| s.name == "pending_approval")
        .unwrap();
    assert_eq!(pending.timers.len(), 2);

    let unknown = client
        .get_definition(as_role(
            "sales_rep",
            pb::GetDefinitionRequest {
                name: "invoice".into(),
                version: 0,
            },
        ))
        .await;
    let status = expect_refusal(unknown, Code::NotFound, "UNKNOWN_DEFINITION");
    assert_eq!(bad_fields(&status), vec!["definition"]);
    let no_version = client
        .get_definition(as_role(
            "sales_rep",
            pb::GetDefinitionRequest {
                name: "quote".into(),
                version: 9,
            },
        ))
        .await;
    expect_refusal(no_version, Code::NotFound, "UNKNOWN_DEFINITION_VERSION");
    let bad_token = client
        .list_definitions(as_role(
            "sales_rep",
            pb::ListDefinitionsRequest {
                page_size: 1,
                page_token: "x".into(),
            },
        ))
        .await;
    let status = expect_refusal(bad_token, Code::InvalidArgument, "INVALID_INPUT");
    assert_eq!(bad_fields(&status), vec!["page_token"]);
    let too_big = client
        .list_definitions(as_role(
            "sales_rep",
            pb::ListDefinitionsRequest {
                page_size: 5000,
                page_token: String::new(),
            },
        ))
        .await;
    // Lowered to the maximum, not refused (AIP-158).
    assert_eq!(too_big.unwrap().into_inner().definitions.len(), 7);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_writes_nothing() {
    let server = TestServer::start().await;
    let mut client = server.instances();
    let start = |data_json: String, definition: &str, request_id: &str| {
        as_role(
            "sales_rep",
            pb::StartInstanceRequest {
                request_id: request_id.into(),
                definition: definition.into(),
                business_key: "Q-1".into(),
                data_json,
                ..Default::default()
            },
        )
    };
    let cases: Vec<(pb::StartInstanceRequest, Code, &str, Vec<&str>)> = vec![
        (
            start("{not json".into(), "quote", "r1").into_inner(),
            Code::InvalidArgument,
            "INVALID_INPUT",
            vec!["data_json"],
        ),
        (
            start("[1]".into(), "quote", "r2").into_inner(),
            Code::InvalidArgument,
            "INVALID_INPUT",
            vec!["data_json"],
        ),
        (
            start(
                serde_json::json!({ "currency": "EUR", "valid_until": "2099-01-01", "lines": [] })
                    .to_string(),
                "quote",
                "r3",
            )
            .into_inner(),
            Code::InvalidArgument,
            "INVALID_PAYLOAD",
            // A quote needs at least one line too.
            vec!["data_json.customer", "data_json.lines"],
        ),
        (
            // A JSON number for a decimal field is refused: money travels as strings.
            start(
                serde_json::json!({ "customer": "BETA", "currency": "EUR", "valid_until": "2099-01-01",
                    "discount_pct": 5, "lines": [{ "sku": "SKU-001", "quantity": -2 }] })
                .to_string(),
                "quote",
                "r4",
            )
            .into_inner(),
            Code::InvalidArgument,
            "INVALID_PAYLOAD",
            vec!["data_json.discount_pct", "data_json.lines[0].quantity"],
        ),
        (
            start(quote_data("SKU-001"), "invoice", "r5").into_inner(),
            Code::NotFound,
            "UNKNOWN_DEFINITION",
            vec!["definition"],
        ),
        (
            start(quote_data("SKU-001"), "quote", "").into_inner(),
            Code::InvalidArgument,
            "INVALID_INPUT",
            vec!["request_id"],
        ),
        (
            start(
                serde_json::json!({ "customer": "x".repeat(70_000) }).to_string(),
                "quote",
                "r6",
            )
            .into_inner(),
            Code::InvalidArgument,
            "PAYLOAD_TOO_LARGE",
            vec!["data_json"],
        ),
    ];
    for (request, code, reason, fields) in cases {
        let result = client.start_instance(as_role("sales_rep", request)).await;
        let status = expect_refusal(result, code, reason);
        assert_eq!(bad_fields(&status), fields, "{status:?}");
        assert!(!status.message().is_empty());
    }

    let started = start_quote(&server, "r-ok", "SKU-001").await;
    let send = |instance_id: &str, command: &str, payload_json: &str| {
        as_role(
            "sales_rep",
            pb::SendCommandRequest {
                request_id: format!("r-{command}-{instance_id}"),
                instance_id: instance_id.into(),
                command: command.into(),
                payload_json: payload_json.into(),
                expected_version: None,
            },
        )
    };
    let status = expect_refusal(
        client.send_command(send("not-a-uuid", "submit", "")).await,
        Code::InvalidArgument,
        "INVALID_INPUT",
    );
    assert_eq!(bad_fields(&status), vec!["instance_id"]);
    let status = expect_refusal(
        client
            .send_command(send(&started.instance_id, "teleport", ""))
            .await,
        Code::InvalidArgument,
        "UNKNOWN_COMMAND",
    );
    assert_eq!(bad_fields(&status), vec!["command"]);
    let status = expect_refusal(
        client
            .send_command(send(
                &started.instance_id,
                "revise",
                "{\"discount_pct\": 1.5}",
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_PAYLOAD",
    );
    assert!(
        bad_fields(&status)
            .iter()
            .all(|f| f.starts_with("payload_json")),
        "{status:?}"
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    let status = expect_refusal(
        client.send_command(send(&unknown, "submit", "")).await,
        Code::NotFound,
        "UNKNOWN_INSTANCE",
    );
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["instance_id"],
        unknown
    );
    for (page_size, field) in [(-1, "page_size")] {
        let status = expect_refusal(
            client
                .list_instances(as_role(
                    "sales_rep",
                    pb::ListInstancesRequest {
                        page_size,
                        ..Default::default()
                    },
                ))
                .await,
            Code::InvalidArgument,
            "INVALID_INPUT",
        );
        assert_eq!(bad_fields(&status), vec![field]);
    }

    // Nothing refused was written: one instance, at version 1.
    assert_eq!(instance_count(&server).await, 1);
    let instance = client
        .get_instance(as_role(
            "sales_rep",
            pb::GetInstanceRequest {
                instance_id: started.instance_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .instance
        .unwrap();
    assert_eq!(instance.version, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_refusals_carry_their_reason_and_details() {
    let server = TestServer::start().await;
    let mut client = server.instances();
    let quote = start_quote(&server, "r-q", "FIXED-5000").await;
    let send =
        |role: &str, request_id: &str, command: &str, payload: &str, expected: Option<u64>| {
            as_role(
                role,
                pb::SendCommandRequest {
                    request_id: request_id.into(),
                    instance_id: quote.instance_id.clone(),
                    command: command.into(),
                    payload_json: payload.into(),
                    expected_version: expected,
                },
            )
        };

    // Wrong state: approving a draft.
    let status = expect_refusal(
        client
            .send_command(send("sales_manager", "r-a0", "approve", "", None))
            .await,
        Code::FailedPrecondition,
        "WRONG_STATE",
    );
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["state"], "draft");
    assert_eq!(info.metadata["allowed_states"], "pending_approval");

    // Role not allowed: a finance user cannot submit.
    let status = expect_refusal(
        client
            .send_command(send("finance", "r-s0", "submit", "", None))
            .await,
        Code::PermissionDenied,
        "ROLE_NOT_ALLOWED",
    );
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["actor"], "u-finance");
    assert_eq!(info.metadata["required_roles"], "sales_rep");

    // Stale version: refused with the current version named.
    let status = expect_refusal(
        client
            .send_command(send("sales_rep", "r-s1", "submit", "", Some(7)))
            .await,
        Code::Aborted,
        "VERSION_MISMATCH",
    );
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["current_version"], "1");
    assert_eq!(info.metadata["expected_version"], "7");

    // Applied once; the retry returns the original result.
    let first = client
        .send_command(send("sales_rep", "r-s2", "submit", "", Some(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.result.as_ref().unwrap().state, "pending_approval");
    let again = client
        .send_command(send("sales_rep", "r-s2", "submit", "", Some(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);

    // The same request id with another payload is refused.
    let status = expect_refusal(
        client
            .send_command(send(
                "sales_rep",
                "r-s2",
                "submit",
                "{\"note\": 1}",
                Some(1),
            ))
            .await,
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );
    assert_eq!(bad_fields(&status), vec!["request_id"]);

    // Not active any more after a cancel.
    client
        .cancel_instance(as_role(
            "admin",
            pb::CancelInstanceRequest {
                request_id: "r-c".into(),
                instance_id: quote.instance_id.clone(),
                reason: "test".into(),
                expected_version: Some(2),
            },
        ))
        .await
        .unwrap();
    expect_refusal(
        client
            .send_command(send("sales_manager", "r-a1", "approve", "", None))
            .await,
        Code::FailedPrecondition,
        "NOT_ACTIVE",
    );

    // Exactly the three accepted changes are in the history.
    let history = client
        .list_instance_history(as_role(
            "admin",
            pb::ListInstanceHistoryRequest {
                instance_id: quote.instance_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.entries.len(), 3);
    server.stop().await;
}

/// One call per service, with the given credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_refuses_missing_and_unknown_credentials() {
    let server = TestServer::start().await;
    let expired = jwt(serde_json::json!({
        "sub": "u-jwt", "roles": ["admin"], "iss": JWT_ISSUER, "aud": JWT_AUDIENCE,
        "exp": chrono::Utc::now().timestamp() - 60,
    }));
    let wrong_audience = jwt(serde_json::json!({
        "sub": "u-jwt", "roles": ["admin"], "iss": JWT_ISSUER, "aud": "someone-else",
        "exp": chrono::Utc::now().timestamp() + 600,
    }));
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "u-jwt", "roles": ["admin"], "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE, "exp": chrono::Utc::now().timestamp() + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-that-is-32-bytes-or-more!!"),
    )
    .unwrap();
    let credentials: Vec<(Option<&str>, &str)> = vec![
        (None, "MISSING_CREDENTIALS"),
        (Some("not-a-known-token"), "UNKNOWN_CREDENTIALS"),
        (Some(""), "MALFORMED_CREDENTIALS"),
        (Some(&expired), "INVALID_JWT"),
        (Some(&wrong_audience), "INVALID_JWT"),
        (Some(&wrong_key), "INVALID_JWT"),
    ];
    for (bearer, reason) in credentials {
        for status in one_call_per_service(&server, bearer).await {
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{bearer:?}: {status:?}"
            );
            assert_eq!(
                status.get_details_error_info().unwrap().reason,
                reason,
                "{bearer:?}"
            );
            // The credential is never echoed back.
            if let Some(b) = bearer.filter(|b| !b.is_empty()) {
                assert!(!status.message().contains(b));
            }
        }
    }
    // A Basic credential is malformed, not unknown.
    let mut request = tonic::Request::new(pb::ListInstancesRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Basic dTpw".parse().unwrap());
    expect_refusal(
        server.instances().list_instances(request).await,
        Code::Unauthenticated,
        "MALFORMED_CREDENTIALS",
    );
    assert_eq!(instance_count(&server).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_callers_act_with_the_roles_in_their_claim() {
    let server = TestServer::start().await;
    let rep = jwt(serde_json::json!({
        "sub": "jwt-rep-7", "roles": ["sales_rep"], "iss": JWT_ISSUER, "aud": JWT_AUDIENCE,
        "exp": chrono::Utc::now().timestamp() + 600,
    }));
    let started = server
        .instances()
        .start_instance(authed(
            &rep,
            pb::StartInstanceRequest {
                request_id: "r-jwt".into(),
                definition: "quote".into(),
                business_key: "Q-JWT".into(),
                data_json: quote_data("SKU-001"),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    let history = server
        .instances()
        .list_instance_history(authed(
            &rep,
            pb::ListInstanceHistoryRequest {
                instance_id: started.instance_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let actor = history.entries[0].actor.clone().unwrap();
    assert_eq!(actor.id, "jwt-rep-7");
    assert_eq!(actor.roles, vec!["sales_rep"]);
    // The same caller may not deploy rules or cancel.
    expect_refusal(
        server
            .rule_sets()
            .activate_rule_set(authed(
                &rep,
                pb::ActivateRuleSetRequest {
                    request_id: "r-act".into(),
                    number: 1,
                },
            ))
            .await,
        Code::PermissionDenied,
        "ROLE_NOT_ALLOWED",
    );
    expect_refusal(
        server
            .instances()
            .cancel_instance(authed(
                &rep,
                pb::CancelInstanceRequest {
                    request_id: "r-cx".into(),
                    instance_id: started.instance_id,
                    reason: "no".into(),
                    expected_version: None,
                },
            ))
            .await,
        Code::PermissionDenied,
        "ROLE_NOT_ALLOWED",
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_sets_validate_deploy_list_activate_and_evaluate() {
    let server = TestServer::start().await;
    let mut client = server.rule_sets();
    let work = tempfile::tempdir().unwrap();
    copy_rules(work.path());

    // The shipped set validates (it is the active one).
    let valid = client
        .validate_rule_set(as_role(
            "analyst",
            pb::ValidateRuleSetRequest {
                files: rule_files(work.path()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(valid.valid, "{valid:?}");
    assert!(valid.version.starts_with("sha256:"));

    // A broken script: validation lists the problem at file:line:col; deployment refuses.
    let script = work.path().join("scripts/quote.rhai");
    let original = std::fs::read_to_string(&script).unwrap();
    std::fs::write(&script, format!("{original}\nfn broken( {{\n")).unwrap();
    let invalid = client
        .validate_rule_set(as_role(
            "analyst",
            pb::ValidateRuleSetRequest {
                files: rule_files(work.path()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!invalid.valid);
    let problem = &invalid.problems[0];
    assert_eq!(problem.file, "scripts/quote.rhai");
    assert!(
        problem.line > original.lines().count() as u32,
        "{problem:?}"
    );
    assert!(problem.column > 0);
    let status = expect_refusal(
        client
            .deploy_rule_set(as_role(
                "analyst",
                pb::DeployRuleSetRequest {
                    request_id: "r-d0".into(),
                    files: rule_files(work.path()),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "RULE_SET_REFUSED",
    );
    let violations = status
        .get_details_precondition_failure()
        .unwrap()
        .violations;
    assert!(
        violations[0].subject.starts_with("scripts/quote.rhai:"),
        "{violations:?}"
    );

    // The folder as it is: documentation and editor files are left out and named.
    let mut files = rule_files(work.path());
    for path in [
        "README.md",
        "scripts/.quote.rhai.swp",
        "data/notes.txt",
        "definitions/quote.toml~",
    ] {
        files.push(pb::RuleFile {
            path: path.into(),
            content: "not a rule".into(),
        });
    }
    let as_it_is = client
        .validate_rule_set(as_role("analyst", pb::ValidateRuleSetRequest { files }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        as_it_is.skipped_paths,
        [
            "README.md",
            "scripts/.quote.rhai.swp",
            "data/notes.txt",
            "definitions/quote.toml~"
        ]
    );
    // Only documentation is not a rule set.
    let status = expect_refusal(
        client
            .validate_rule_set(as_role(
                "analyst",
                pb::ValidateRuleSetRequest {
                    files: vec![pb::RuleFile {
                        path: "README.md".into(),
                        content: String::new(),
                    }],
                },
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_INPUT",
    );
    assert_eq!(bad_fields(&status), ["files"]);

    // Unknown paths are refused, not ignored.
    let mut files = rule_files(work.path());
    files.push(pb::RuleFile {
        path: "definitions/quote.yaml".into(),
        content: String::new(),
    });
    let status = expect_refusal(
        client
            .validate_rule_set(as_role("analyst", pb::ValidateRuleSetRequest { files }))
            .await,
        Code::InvalidArgument,
        "INVALID_INPUT",
    );
    assert!(bad_fields(&status)[0].starts_with("files["), "{status:?}");
    let mut files = rule_files(work.path());
    files.push(pb::RuleFile {
        path: "../etc/passwd".into(),
        content: String::new(),
    });
    let status = expect_refusal(
        client
            .validate_rule_set(as_role("analyst", pb::ValidateRuleSetRequest { files }))
            .await,
        Code::InvalidArgument,
        "INVALID_INPUT",
    );
    assert!(bad_fields(&status)[0].starts_with("files["), "{status:?}");

    // A changed threshold deploys as version 2 (by an analyst), not by a sales rep. The
    // shipped tests pin the old threshold, so this version ships without them.
    std::fs::write(&script, &original).unwrap();
    let approval = work.path().join("data/approval.json");
    let text = std::fs::read_to_string(&approval).unwrap();
    assert!(text.contains("5000"));
    std::fs::write(&approval, text.replacen("5000", "6000", 1)).unwrap();
    let status = expect_refusal(
        client
            .deploy_rule_set(as_role(
                "analyst",
                pb::DeployRuleSetRequest {
                    request_id: "r-d-tests".into(),
                    files: rule_files(work.path()),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "RULE_SET_REFUSED",
    );
    assert!(status.message().contains("test failed"), "{status:?}");
    for test in std::fs::read_dir(work.path().join("tests")).unwrap() {
        std::fs::remove_file(test.unwrap().path()).unwrap();
    }
    expect_refusal(
        client
            .deploy_rule_set(as_role(
                "sales_rep",
                pb::DeployRuleSetRequest {
                    request_id: "r-d1".into(),
                    files: rule_files(work.path()),
                },
            ))
            .await,
        Code::PermissionDenied,
        "ROLE_NOT_ALLOWED",
    );
    let deployed = client
        .deploy_rule_set(as_role(
            "analyst",
            pb::DeployRuleSetRequest {
                request_id: "r-d2".into(),
                files: rule_files(work.path()),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .rule_set
        .unwrap();
    assert_eq!(deployed.number, 2);
    assert_eq!(deployed.deployed_by, "u-analyst");
    assert!(deployed.active);
    // A retried deployment answers with the same version; the same id with other files, or an
    // instance request's id, is refused.
    let retried = client
        .deploy_rule_set(as_role(
            "analyst",
            pb::DeployRuleSetRequest {
                request_id: "r-d2".into(),
                files: rule_files(work.path()),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .rule_set
        .unwrap();
    assert_eq!(retried.number, 2);
    let mut other = rule_files(work.path());
    other.push(pb::RuleFile {
        path: "data/extra.json".into(),
        content: "{}".into(),
    });
    let status = expect_refusal(
        client
            .deploy_rule_set(as_role(
                "analyst",
                pb::DeployRuleSetRequest {
                    request_id: "r-d2".into(),
                    files: other,
                },
            ))
            .await,
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );
    assert_eq!(bad_fields(&status), vec!["request_id"]);
    // Ids are global in both directions: an instance request cannot take a deployment's id.
    expect_refusal(
        server
            .instances()
            .start_instance(as_role(
                "sales_rep",
                pb::StartInstanceRequest {
                    request_id: "r-d2".into(),
                    definition: "quote".into(),
                    business_key: "Q-x".into(),
                    data_json: quote_data("SKU-001"),
                    ..Default::default()
                },
            ))
            .await,
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );
    start_quote(&server, "r-instance", "SKU-001").await;
    expect_refusal(
        client
            .activate_rule_set(as_role(
                "admin",
                pb::ActivateRuleSetRequest {
                    request_id: "r-instance".into(),
                    number: 1,
                },
            ))
            .await,
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );

    let listed = client
        .list_rule_sets(as_role("sales_rep", pb::ListRuleSetsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let active: Vec<(u32, bool)> = listed
        .rule_sets
        .iter()
        .map(|r| (r.number, r.active))
        .collect();
    assert_eq!(active, vec![(1, false), (2, true)]);

    // Evaluate as a dry run, on version 2 and on version 1: the threshold moved.
    let evaluate = |rule_set: u32| {
        as_role(
            "analyst",
            pb::EvaluateRuleRequest {
                decider: "quote::submit".into(),
                rule_set,
                instance_json: serde_json::json!({ "state": "draft", "data": serde_json::from_str::<serde_json::Value>(&quote_data("FIXED-5000")).unwrap() }).to_string(),
                instance_id: String::new(),
                payload_json: String::new(),
                now: None,
            },
        )
    };
    let on_two = client
        .evaluate_rule(evaluate(0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_two.rule_set, 2);
    assert_eq!(on_two.next_state, "approved", "{on_two:?}");
    let on_one = client
        .evaluate_rule(evaluate(1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_one.next_state, "pending_approval", "{on_one:?}");
    let outputs: serde_json::Value = serde_json::from_str(&on_one.outputs_json).unwrap();
    assert!(outputs.is_object());
    let status = expect_refusal(
        client.evaluate_rule(evaluate(9)).await,
        Code::NotFound,
        "UNKNOWN_RULE_SET",
    );
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["rule_set"],
        "9"
    );
    let mut unknown_decider = evaluate(0).into_inner();
    unknown_decider.decider = "quote::nope".into();
    let status = expect_refusal(
        client
            .evaluate_rule(as_role("analyst", unknown_decider))
            .await,
        Code::InvalidArgument,
        "INVALID_INPUT",
    );
    assert_eq!(bad_fields(&status), vec!["decider"]);
    // A script error names the script and position.
    let mut failing = evaluate(0).into_inner();
    failing.instance_json =
        serde_json::json!({ "state": "draft", "data": { "lines": "not a list" } }).to_string();
    let status = expect_refusal(
        client.evaluate_rule(as_role("analyst", failing)).await,
        Code::FailedPrecondition,
        "DECISION_FAILED",
    );
    assert!(status.message().contains("quote"), "{status:?}");

    // Roll back to version 1.
    let rolled_back = client
        .activate_rule_set(as_role(
            "admin",
            pb::ActivateRuleSetRequest {
                request_id: "r-act1".into(),
                number: 1,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .rule_set
        .unwrap();
    assert_eq!((rolled_back.number, rolled_back.active), (1, true));
    // Retrying the rollback later, after a roll forward, does not roll back again.
    client
        .activate_rule_set(as_role(
            "admin",
            pb::ActivateRuleSetRequest {
                request_id: "r-act2".into(),
                number: 2,
            },
        ))
        .await
        .unwrap();
    let retried = client
        .activate_rule_set(as_role(
            "admin",
            pb::ActivateRuleSetRequest {
                request_id: "r-act1".into(),
                number: 1,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .rule_set
        .unwrap();
    assert_eq!((retried.number, retried.active), (1, false));
    client
        .activate_rule_set(as_role(
            "admin",
            pb::ActivateRuleSetRequest {
                request_id: "r-act1b".into(),
                number: 1,
            },
        ))
        .await
        .unwrap();
    // Every activation records its actor: #1 was last activated by the admin's rollback, #2
    // by the admin's roll forward (after the analyst's deployment).
    let listed = client
        .list_rule_sets(as_role("sales_rep", pb::ListRuleSetsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let who: Vec<(u32, bool, &str)> = listed
        .rule_sets
        .iter()
        .map(|r| (r.number, r.active, r.activated_by.as_str()))
        .collect();
    assert_eq!(who, vec![(1, true, "u-admin"), (2, false, "u-admin")]);
    assert!(listed.rule_sets.iter().all(|r| r.activated_at.is_some()));
    let unknown = expect_refusal(
        client
            .activate_rule_set(as_role(
                "admin",
                pb::ActivateRuleSetRequest {
                    request_id: "r-act9".into(),
                    number: 9,
                },
            ))
            .await,
        Code::NotFound,
        "UNKNOWN_RULE_SET",
    );
    assert_eq!(
        unknown.get_details_error_info().unwrap().metadata["rule_set"],
        "9",
        "the same metadata key as EvaluateRule's"
    );
    // A quote at 5,000 now waits for approval again — first as a dry run on the live
    // instance, which changes nothing.
    let quote = start_quote(&server, "r-after", "FIXED-5000").await;
    let mut on_live = evaluate(0).into_inner();
    on_live.instance_json = String::new();
    on_live.instance_id = quote.instance_id.clone();
    let dry = client
        .evaluate_rule(as_role("analyst", on_live))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (dry.rule_set, dry.next_state.as_str()),
        (1, "pending_approval")
    );
    let live = server
        .instances()
        .get_instance(as_role(
            "analyst",
            pb::GetInstanceRequest {
                instance_id: quote.instance_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .instance
        .unwrap();
    assert_eq!((live.version, live.state.as_str()), (1, "draft"));
    let submitted = server
        .instances()
        .send_command(as_role(
            "sales_rep",
            pb::SendCommandRequest {
                request_id: "r-after-submit".into(),
                instance_id: quote.instance_id,
                command: "submit".into(),
                payload_json: String::new(),
                expected_version: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(submitted.state, "pending_approval");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_open_and_list_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = TestServer::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    for service in [
        "",
        "switchyard.v1.InstanceService",
        "switchyard.v1.RuleSetService",
    ] {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    let ask = |message: MessageRequest| {
        tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(message),
        }])
    };
    let mut answers = reflection
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for expected in [
        "grpc.health.v1.Health",
        "switchyard.v1.DefinitionService",
        "switchyard.v1.InstanceService",
        "switchyard.v1.RuleSetService",
    ] {
        assert!(names.contains(&expected.to_string()), "{names:?}");
    }
    // A client can fetch the contract itself (with its Timestamp import) to build calls.
    let mut answers = reflection
        .server_reflection_info(ask(MessageRequest::FileContainingSymbol(
            "switchyard.v1.InstanceService".into(),
        )))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
        panic!("{answer:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    // And the error details every refusal carries, so generic clients can decode them.
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.Status",
    ] {
        let mut answers = reflection
            .server_reflection_info(ask(MessageRequest::FileContainingSymbol(symbol.into())))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
            panic!("{symbol}: {answer:?}");
        };
        let file = <prost_types::FileDescriptorProto as prost::Message>::decode(
            &files.file_descriptor_proto[0][..],
        )
        .unwrap();
        assert_eq!(file.package(), "google.rpc", "{symbol}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_commands_by_definition_command_and_outcome() {
    let server = TestServer::start().await;
    let quote = start_quote(&server, "r-m1", "FIXED-4999").await;
    server
        .instances()
        .send_command(as_role(
            "sales_rep",
            pb::SendCommandRequest {
                request_id: "r-m2".into(),
                instance_id: quote.instance_id.clone(),
                command: "submit".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let _ = server
        .instances()
        .send_command(as_role(
            "finance",
            pb::SendCommandRequest {
                request_id: "r-m3".into(),
                instance_id: quote.instance_id.clone(),
                command: "revise".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    let _ = server
        .instances()
        .list_instances(tonic::Request::new(pb::ListInstancesRequest::default()))
        .await
        .unwrap_err();
    let addr = server.running().metrics_addr.unwrap();
    let body = http_get(addr, "/metrics").await;
    for line in [
        "switchyard_commands_total{definition=\"quote\",command=\"$start\",outcome=\"ok\"} 1",
        "switchyard_commands_total{definition=\"quote\",command=\"submit\",outcome=\"ok\"} 1",
        "switchyard_commands_total{definition=\"quote\",command=\"revise\",outcome=\"ROLE_NOT_ALLOWED\"} 1",
        "switchyard_commit_latency_seconds_count 2",
        "switchyard_rule_evaluation_seconds_count 1",
        "switchyard_feed_head_offset 2",
        "switchyard_job_backlog 0",
        "switchyard_grpc_unauthenticated_total 1",
    ] {
        assert!(body.contains(line), "missing `{line}` in:\n{body}");
    }
    assert!(body.contains("switchyard_group_commit_batch_size_count"));
    assert!(http_get(addr, "/other").await.is_empty());
    server.stop().await;
}

/// The body of a 200 answer (empty for any other status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_a_certificate_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (config, certified) = tls_config(dir.path());
    let running = switchyard_grpc::server::start(config, |_| None)
        .await
        .unwrap();
    assert!(running.tls);
    let port = running.grpc_addr.port();

    // A client that trusts the certificate gets through, and is still authenticated.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            certified.cert.pem(),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tls_channel = channel.clone();
    let mut client = pb::definition_service_client::DefinitionServiceClient::new(channel);
    let listed = client
        .list_definitions(as_role("sales_rep", pb::ListDefinitionsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.definitions.len(), 7);
    expect_refusal(
        client
            .list_definitions(tonic::Request::new(pb::ListDefinitionsRequest::default()))
            .await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );

    // Plaintext HTTP/2 to the TLS port gets no HTTP/2 at all: the server answers the preface
    // with a TLS alert record (content type 21) or closes — never a SETTINGS frame.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut answer),
    )
    .await
    .expect("the server closes a plaintext connection");
    assert!(
        answer.is_empty() || answer[0] == 21,
        "a plaintext client got an answer that is not a TLS alert: {answer:?}"
    );
    // A plaintext gRPC client fails on that port while a TLS one still gets through: the
    // failure is the missing TLS, not a server that went away.
    let plain = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = pb::definition_service_client::DefinitionServiceClient::new(channel);
        let refused = client
            .list_definitions(as_role("sales_rep", pb::ListDefinitionsRequest::default()))
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused.code(),
                // The server closes the connection: how the client reports that varies.
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{refused:?}"
        );
    }
    let mut client = pb::definition_service_client::DefinitionServiceClient::new(tls_channel);
    client
        .list_definitions(as_role("sales_rep", pb::ListDefinitionsRequest::default()))
        .await
        .expect("TLS still works");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_verified_against_a_public_key_file() {
    let dir = tempfile::tempdir().unwrap();
    // An ES256 key pair: the server only gets the public half.
    let keys = rcgen::KeyPair::generate().unwrap();
    let public = dir.path().join("issuer.pub.pem");
    std::fs::write(&public, keys.public_key_pem()).unwrap();
    let mut config = harness::config(dir.path());
    config.auth.jwt = Some(switchyard_grpc::config::JwtConfig {
        algorithm: "ES256".into(),
        secret: None,
        secret_env: None,
        public_key_file: Some(public),
        issuer: JWT_ISSUER.into(),
        audience: JWT_AUDIENCE.into(),
        roles_claim: "groups".into(),
        actor_claim: "email".into(),
        leeway_seconds: 0,
    });
    let server = TestServer::start_with(dir, config).await;
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(keys.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let good = sign(serde_json::json!({
        "email": "ana@example.test", "groups": "sales_rep sales_manager",
        "iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "exp": chrono::Utc::now().timestamp() + 600,
    }));
    let started = server
        .instances()
        .start_instance(authed(
            &good,
            pb::StartInstanceRequest {
                request_id: "r-es".into(),
                definition: "lead".into(),
                business_key: "L-1".into(),
                data_json: "{\"company\": \"Acme\"}".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    let history = server
        .instances()
        .list_instance_history(authed(
            &good,
            pb::ListInstanceHistoryRequest {
                instance_id: started.instance_id,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let actor = history.entries[0].actor.clone().unwrap();
    assert_eq!(actor.id, "ana@example.test");
    assert_eq!(actor.roles, vec!["sales_rep", "sales_manager"]);
    // Signed by the HS256 secret of the other tests: refused here.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "email": "x@example.test", "groups": "admin", "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE, "exp": chrono::Utc::now().timestamp() + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    expect_refusal(
        server
            .definitions()
            .list_definitions(authed(&forged, pb::ListDefinitionsRequest::default()))
            .await,
        Code::Unauthenticated,
        "INVALID_JWT",
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = harness::config(dir.path());
    config.grpc.message_bytes_max = 4096;
    let server = TestServer::start_with(dir, config).await;
    let big = serde_json::json!({ "company": "y".repeat(8000) }).to_string();
    let status = server
        .instances()
        .start_instance(as_role(
            "sales_rep",
            pb::StartInstanceRequest {
                request_id: "r-big".into(),
                definition: "lead".into(),
                business_key: "L-big".into(),
                data_json: big,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(instance_count(&server).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_reported_before_the_store_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = harness::config(dir.path());
    config.grpc.listen = taken.local_addr().unwrap();
    let error = match switchyard_grpc::server::start(config, |_| None).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started on a taken port"),
    };
    assert!(
        error.contains(&taken.local_addr().unwrap().to_string()),
        "{error}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "the store was not opened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_is_data_loss_not_a_retryable_failure() {
    let server = TestServer::start().await;
    let start = |key: &str, coupon: bool| {
        let mut data: serde_json::Value = serde_json::from_str(&quote_data("FIXED-4999")).unwrap();
        if coupon {
            data["coupon"] = "VIP20".into();
        }
        as_role(
            "sales_rep",
            pb::StartInstanceRequest {
                request_id: format!("s-{key}"),
                definition: "quote".into(),
                business_key: key.into(),
                data_json: data.to_string(),
                ..Default::default()
            },
        )
    };
    let submit = |id: &str, key: &str| {
        as_role(
            "sales_rep",
            pb::SendCommandRequest {
                request_id: format!("submit-{key}"),
                instance_id: id.into(),
                command: "submit".into(),
                ..Default::default()
            },
        )
    };
    let mut client = server.instances();
    let first = client
        .start_instance(start("C-1", true))
        .await
        .unwrap()
        .into_inner();
    let first = first.result.unwrap().instance_id;
    client.send_command(submit(&first, "C-1")).await.unwrap();
    let second = client
        .start_instance(start("C-2", true))
        .await
        .unwrap()
        .into_inner();
    let second = second.result.unwrap().instance_id;
    let config = config(server.dir.path());
    let dir = {
        let TestServer { running, dir, .. } = server;
        running.unwrap().shutdown().await.unwrap();
        dir
    };
    {
        // Damage two records: the coupon's counter (read only inside the committer's atomic
        // write) and the first quote (read before any commit).
        let db = sled::open(dir.path().join("data")).unwrap();
        db.insert(b"ccoupon_uses\0VIP20", b"C\x01{oops".to_vec())
            .unwrap();
        let mut key = vec![b'i'];
        key.extend_from_slice(uuid::Uuid::parse_str(&first).unwrap().as_bytes());
        db.insert(key, b"I\x01[".to_vec()).unwrap();
        db.flush().unwrap();
    }
    let server = TestServer::start_with(dir, config).await;
    let mut client = server.instances();
    let refused = client.send_command(submit(&second, "C-2")).await;
    let status = expect_refusal(refused, Code::DataLoss, "STORE");
    assert!(
        status.message().contains("corrupt record at key c"),
        "{status:?}"
    );
    let refused = client
        .get_instance(as_role(
            "sales_rep",
            pb::GetInstanceRequest {
                instance_id: first.clone(),
            },
        ))
        .await;
    expect_refusal(refused, Code::DataLoss, "STORE");
    server.stop().await;
}

#[tokio::test]
async fn a_bulk_start_answers_each_item_with_its_own_status_and_its_size_is_bounded() {
    let server = TestServer::start().await;
    let item = |n: usize, data_json: &str| pb::StartInstanceRequest {
        request_id: format!("bulk-{n}"),
        definition: "quote".into(),
        business_key: format!("Q-{n}"),
        data_json: data_json.into(),
        ..Default::default()
    };
    let good = quote_data("FIXED-4999");
    let results = server
        .instances()
        .bulk_start_instances(as_role(
            "sales_rep",
            pb::BulkStartInstancesRequest {
                items: vec![item(1, &good), item(2, "{\"customer\": 7}"), item(3, &good)],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<i32> = results
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(codes, [0, Code::InvalidArgument as i32, 0]);
    // The bad item's status carries the details a single call would: the field it names.
    let bad = results[1].status.clone().unwrap();
    let status = tonic::Status::with_details(
        Code::InvalidArgument,
        bad.message.clone(),
        prost::Message::encode_to_vec(&bad).into(),
    );
    assert!(
        bad_fields(&status)
            .iter()
            .any(|f| f.starts_with("data_json")),
        "{status:?}"
    );
    assert!(results[0].result.is_some() && !results[0].replayed);
    // Sent again: the good items are replays, nothing is written twice.
    let again = server
        .instances()
        .bulk_start_instances(as_role(
            "sales_rep",
            pb::BulkStartInstancesRequest {
                items: vec![item(1, &good)],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(again[0].replayed);
    assert_eq!(again[0].result, results[0].result);
    assert_eq!(instance_count(&server).await, 2);
    // 0 or 501 items: the call itself is refused naming `items`.
    for n in [0, 501] {
        let status = expect_refusal(
            server
                .instances()
                .bulk_start_instances(as_role(
                    "sales_rep",
                    pb::BulkStartInstancesRequest {
                        items: (0..n).map(|i| item(1000 + i, &good)).collect(),
                    },
                ))
                .await,
            Code::InvalidArgument,
            "INVALID_INPUT",
        );
        assert_eq!(bad_fields(&status), ["items"]);
    }
    server.stop().await;
}
