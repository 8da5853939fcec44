//! Payment-provider webhooks over HTTP (`webhooks.listen`) and `IngestProviderEvent` over
//! gRPC: signatures checked before anything is written, signed here by code written from the
//! providers' documented formats (RFC 2104 HMAC over SHA-256, hex for Stripe, base64 for Adyen)
//! independently of the server's verifier; duplicates answered and not applied; unknown
//! events recorded and acknowledged.

mod harness;

use std::net::SocketAddr;

use harness::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchyard_core::Engine;
use switchyard_grpc::config::{AdyenWebhookConfig, StripeWebhookConfig};
use switchyard_grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const STRIPE_OLD: &str = "whsec_old_secret";
const STRIPE_NEW: &str = "whsec_new_secret";
const ADYEN_KEY: &str = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";

/// RFC 2104: H((K ⊕ opad) ‖ H((K ⊕ ipad) ‖ m)), the key padded to SHA-256's 64-byte block.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// RFC 4648 base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Stripe-Signature` for `body` at Unix time `t` under `secret`.
fn stripe_signature(secret: &str, t: i64, body: &str) -> String {
    let v1 = hex(&hmac_sha256(
        secret.as_bytes(),
        format!("{t}.{body}").as_bytes(),
    ));
    format!("t={t},v1={v1}")
}

/// An Adyen notification item, signed with `key_hex` over Adyen's documented field list.
fn adyen_item(psp: &str, code: &str, order: &str, key_hex: &str) -> Value {
    let mut item = json!({
        "pspReference": psp, "originalReference": "8815555555555555",
        "merchantAccountCode": "ShopEU", "merchantReference": order,
        "amount": { "value": 1999, "currency": "EUR" }, "eventCode": code, "success": "true",
        "eventDate": "2026-04-20T09:00:00+02:00",
        "additionalData": { "chargebackReasonCode": "10.4" },
    });
    let signed = format!("{psp}:8815555555555555:ShopEU:{order}:1999:EUR:{code}:true");
    let signature = base64(&hmac_sha256(&unhex(key_hex), signed.as_bytes()));
    item["additionalData"]["hmacSignature"] = json!(signature);
    json!({ "NotificationRequestItem": item })
}

/// One HTTP/1.1 POST; the status and body of the answer.
async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn server() -> (TestServer, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.webhooks.listen = Some("127.0.0.1:0".parse().unwrap());
    config.webhooks.body_bytes_max = 8 * 1024;
    config.webhooks.stripe = Some(StripeWebhookConfig {
        path: "/webhooks/stripe".into(),
        secrets: vec![STRIPE_OLD.into(), STRIPE_NEW.into()],
        secrets_env: None,
        tolerance_seconds: 300,
    });
    config.webhooks.adyen = Some(AdyenWebhookConfig {
        path: "/webhooks/adyen".into(),
        hmac_keys: vec![ADYEN_KEY.into()],
        hmac_keys_env: None,
    });
    let server = TestServer::start_with(dir, config).await;
    let addr = server.running().webhooks_addr.as_ref().unwrap().0;
    (server, addr)
}

/// POSTs `body` to the Stripe endpoint, signed now with the current secret.
async fn post_stripe(addr: SocketAddr, body: &str) -> (u16, String) {
    let signature = stripe_signature(STRIPE_NEW, now(), body);
    post(
        addr,
        "/webhooks/stripe",
        &[("Stripe-Signature", signature)],
        body,
    )
    .await
}

fn feed_head(server: &TestServer) -> u64 {
    server.running().engine.feed_bounds().unwrap().1
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn stripe_webhooks_are_verified_before_anything_is_written_and_applied_once() {
    let (server, addr) = server().await;
    let body = json!({ "id": "evt_1", "object": "event", "type": "customer.created", "data": { "object": {} } }).to_string();
    let sign = |secret: &str, t: i64, body: &str| {
        vec![("Stripe-Signature", stripe_signature(secret, t, body))]
    };

    // Refused, and nothing written: no signature, a wrong secret, a changed body, a stale or
    // future timestamp, a malformed header.
    let head = feed_head(&server);
    let tampered = body.replace("customer.created", "customer.deleted");
    let signed = stripe_signature(STRIPE_NEW, now(), &body);
    for (headers, body, want) in [
        (vec![], body.as_str(), "missing signature"),
        (
            sign("whsec_wrong", now(), &body),
            body.as_str(),
            "bad signature",
        ),
        (
            vec![("Stripe-Signature", signed.clone())],
            tampered.as_str(),
            "bad signature",
        ),
        (
            sign(STRIPE_NEW, now() - 301, &body),
            body.as_str(),
            "stale timestamp",
        ),
        (
            sign(STRIPE_NEW, now() + 400, &body),
            body.as_str(),
            "stale timestamp",
        ),
        (
            vec![("Stripe-Signature", "v1=abc".to_string())],
            body.as_str(),
            "malformed signature",
        ),
    ] {
        let (status, answer) = post(addr, "/webhooks/stripe", &headers, body).await;
        assert_eq!(status, 401, "{want}: {answer}");
        assert!(answer.contains(want), "{want}: {answer}");
        assert!(
            !answer.contains(STRIPE_NEW) && !answer.contains(&signed[20..]),
            "{answer}"
        );
    }
    // A signed body that is not an event, and one over the size limit.
    let junk = "[1, 2]";
    let (status, answer) = post_stripe(addr, junk).await;
    assert_eq!(
        (status, answer.contains("not a JSON object")),
        (400, true),
        "{answer}"
    );
    let big = format!(
        "{{\"id\":\"evt_big\",\"type\":\"x\",\"pad\":\"{}\"}}",
        "x".repeat(9000)
    );
    let (status, _) = post_stripe(addr, &big).await;
    assert_eq!(status, 413);
    assert_eq!(
        feed_head(&server),
        head,
        "nothing written for a refused webhook"
    );

    // Signed with the old secret during a rotation (its header has a v1 per secret, one of
    // them unknown here): accepted; an unknown type is recorded and acknowledged.
    let t = now();
    let rotated = format!(
        "t={t},v1={},v1={}",
        hex(&hmac_sha256(
            b"whsec_retired",
            format!("{t}.{body}").as_bytes()
        )),
        hex(&hmac_sha256(
            STRIPE_OLD.as_bytes(),
            format!("{t}.{body}").as_bytes()
        )),
    );
    let (status, answer) = post(
        addr,
        "/webhooks/stripe",
        &[("Stripe-Signature", rotated)],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (answer["state"].as_str(), answer["duplicate"].as_bool()),
        (Some("ignored"), Some(false))
    );
    let id = Engine::provider_event_id("stripe", "evt_1");
    assert_eq!(answer["instance"], id.to_string());
    let record = server.running().engine.get(id).await.unwrap();
    assert_eq!(record.data["event"]["type"], "customer.created");
    assert_eq!(record.state, "ignored");

    // Delivered again: success, and nothing changes.
    let head = feed_head(&server);
    let (status, answer) = post_stripe(addr, &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap()["duplicate"],
        true
    );
    assert_eq!(feed_head(&server), head, "a duplicate writes nothing");

    // A dispute naming an order that does not exist: recorded as unmatched, acknowledged.
    let dispute = json!({ "id": "evt_2", "type": "charge.dispute.created", "data": { "object": {
        "id": "dp_1", "amount": 12000, "currency": "eur", "reason": "fraudulent",
        "status": "needs_response", "evidence_details": { "due_by": now() + 7 * 86_400 },
        "metadata": { "order_key": "NO-SUCH-ORDER" } } } })
    .to_string();
    let (status, answer) = post_stripe(addr, &dispute).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap()["state"],
        "unmatched"
    );
    server.stop().await;
}

#[tokio::test]
async fn adyen_batches_answer_accepted_and_one_bad_item_refuses_the_whole_batch() {
    let (server, addr) = server().await;
    let batch =
        |items: Vec<Value>| json!({ "live": "false", "notificationItems": items }).to_string();

    // One item signed with another key: the batch is refused, its good item not recorded.
    let head = feed_head(&server);
    let bad = batch(vec![
        adyen_item("9901", "REQUEST_FOR_INFORMATION", "NO-ORDER", ADYEN_KEY),
        adyen_item(
            "9902",
            "CHARGEBACK",
            "NO-ORDER",
            "00112233445566778899AABBCCDDEEFF",
        ),
    ]);
    let (status, answer) = post(addr, "/webhooks/adyen", &[], &bad).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("notificationItems[1]"), "{answer}");
    assert_eq!(feed_head(&server), head, "nothing written");

    // Both signed: `[accepted]`; each item is its own provider event.
    let good = batch(vec![
        adyen_item("9901", "REQUEST_FOR_INFORMATION", "NO-ORDER", ADYEN_KEY),
        adyen_item("9903", "AUTHORISATION", "NO-ORDER", ADYEN_KEY),
    ]);
    let (status, answer) = post(addr, "/webhooks/adyen", &[], &good).await;
    assert_eq!((status, answer.as_str()), (200, "[accepted]"));
    let engine = &server.running().engine;
    let first = engine
        .get(Engine::provider_event_id(
            "adyen",
            "9901:REQUEST_FOR_INFORMATION:true",
        ))
        .await
        .unwrap();
    assert_eq!(first.state, "unmatched");
    let second = engine
        .get(Engine::provider_event_id(
            "adyen",
            "9903:AUTHORISATION:true",
        ))
        .await
        .unwrap();
    assert_eq!(second.state, "ignored");
    // Redelivered: `[accepted]` again, nothing written.
    let head = feed_head(&server);
    let (status, answer) = post(addr, "/webhooks/adyen", &[], &good).await;
    assert_eq!((status, answer.as_str()), (200, "[accepted]"));
    assert_eq!(feed_head(&server), head);
    // Not the provider's shape.
    let (status, answer) = post(addr, "/webhooks/adyen", &[], "{\"live\":\"false\"}").await;
    assert_eq!(
        (status, answer.contains("notificationItems: missing")),
        (400, true),
        "{answer}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_host_ingests_a_provider_event_over_grpc_as_system() {
    let server = TestServer::start().await;
    let event = |role: &str, json: &str| {
        as_role(
            role,
            pb::IngestProviderEventRequest {
                provider: "stripe".into(),
                event_id: "evt_g".into(),
                event_type: "customer.created".into(),
                event_json: json.into(),
            },
        )
    };
    let refused = server
        .instances()
        .ingest_provider_event(event("finance", "{}"))
        .await;
    expect_refusal(refused, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let refused = server
        .instances()
        .ingest_provider_event(event("system", "[]"))
        .await;
    expect_refusal(refused, Code::InvalidArgument, "INVALID_INPUT");
    let answer = server
        .instances()
        .ingest_provider_event(event("system", "{\"id\":\"evt_g\"}"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (answer.state.as_str(), answer.duplicate),
        ("ignored", false)
    );
    assert!(
        answer.reason.contains("not a dispute event"),
        "{}",
        answer.reason
    );
    let again = server
        .instances()
        .ingest_provider_event(event("system", "{\"id\":\"evt_g\"}"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.instance_id, again.duplicate),
        (answer.instance_id, true)
    );
    server.stop().await;
}
