//! The channels against real local HTTP servers the tests start: a receiver that verifies
//! Standard Webhooks signatures with its own HMAC (RFC 2104 over SHA-256, written here from
//! the specifications, not with the sender's code), and an SMS gateway stub.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchyard_core::notification::{Channel, Message, Notification, Severity};
use switchyard_core::{InstanceId, JobId};
use switchyard_notify::{FileChannel, SmsGateway, WebhookChannel, WebhookEndpoint};

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

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A local HTTP server answering with `statuses` in turn (then 200), recording every request;
/// a 429 says `Retry-After: 120`.
struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn server(statuses: Vec<u16>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Mutex::new(statuses));
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (seen, statuses) = (recorded.clone(), statuses.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (seen, statuses) = (seen.clone(), statuses.clone());
                        async move {
                            let headers = request
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                                .collect();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .unwrap()
                                .to_bytes()
                                .to_vec();
                            seen.lock().unwrap().push(Seen { headers, body });
                            let status = {
                                let mut s = statuses.lock().unwrap();
                                if s.is_empty() {
                                    200
                                } else {
                                    s.remove(0)
                                }
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("retry-after", if status == 429 { "120" } else { "" })
                                    .body(Full::new(Bytes::from(format!("status {status}"))))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server { url, seen }
}

fn notification(channel: &str, to: &str) -> Notification {
    Notification {
        id: JobId(uuid::Uuid::now_v7()),
        instance: InstanceId(uuid::Uuid::now_v7()),
        attempt: 1,
        message: Message {
            channel: channel.into(),
            to: to.into(),
            recipient: "webhook:erp".into(),
            category: "order".into(),
            severity: Severity::Routine,
            subject: "Order SO-1 confirmed".into(),
            text: "Order SO-1 for BETA is confirmed.".into(),
            html: None,
            not_before: None,
            dedup_key: None,
            source: json!({ "definition": "sales_order", "business_key": "SO-1" }),
        },
    }
}

fn secret(byte: u8) -> (String, Vec<u8>) {
    let key = vec![byte; 32];
    (
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(&key)
        ),
        key,
    )
}

/// Checks a delivery as a receiver would: the signature over `{id}.{timestamp}.{body}` under
/// `key` is among those sent; returns the id.
fn verify(seen: &Seen, key: &[u8]) -> String {
    let id = &seen.headers["webhook-id"];
    let timestamp = &seen.headers["webhook-timestamp"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(timestamp.parse().unwrap()) < 300,
        "within 5 minutes"
    );
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend(&seen.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key, &signed))
    );
    let sent: Vec<&str> = seen.headers["webhook-signature"].split(' ').collect();
    assert!(
        sent.contains(&expected.as_str()),
        "{sent:?} lacks {expected}"
    );
    id.clone()
}

#[tokio::test]
async fn a_webhook_is_signed_per_standard_webhooks_and_keeps_its_id_across_retries() {
    let server = server(vec![503]).await;
    let (current, key) = secret(7);
    let (next, next_key) = secret(9);
    let channel = WebhookChannel::new(BTreeMap::from([(
        "erp".to_string(),
        WebhookEndpoint {
            url: server.url.clone(),
            secrets: vec![current, next],
        },
    )]))
    .unwrap();
    let n = notification("webhook", "erp");
    let err = channel.send(&n).await.unwrap_err();
    assert!(
        err.message.contains("webhook endpoint `erp` answered 503"),
        "{err}"
    );
    assert!(err.message.contains("status 503"), "{err}");
    assert_eq!(
        (err.retry_in, err.give_up),
        (None, false),
        "the backoff, then"
    );
    let mut retry = n.clone();
    retry.attempt = 2;
    channel.send(&retry).await.unwrap();

    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        // Both secrets sign (a rotation), and each verifies on its own.
        assert_eq!(verify(s, &key), n.id.to_string());
        assert_eq!(verify(s, &next_key), n.id.to_string());
        assert_eq!(s.headers["content-type"], "application/json");
        let body: Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(body["type"], "switchyard.notification");
        assert_eq!(body["data"]["message_id"], n.id.to_string());
        assert_eq!(body["data"]["subject"], "Order SO-1 confirmed");
        assert_eq!(body["data"]["source"]["business_key"], "SO-1");
    }
    // A tampered body does not verify.
    let mut tampered = seen[1].clone();
    tampered.body[10] ^= 1;
    let result = std::panic::catch_unwind(|| verify(&tampered, &key));
    assert!(result.is_err(), "a changed body must fail verification");
    // An address no endpoint has is an error naming it.
    let err = channel
        .send(&notification("webhook", "crm"))
        .await
        .unwrap_err();
    assert!(
        err.message.contains("no webhook endpoint is named `crm`"),
        "{err}"
    );
}

/// 429 with `Retry-After` is retried when the receiver asked; 410 Gone disables the endpoint
/// (Standard Webhooks): that message and every later one to it give up without a request.
#[tokio::test]
async fn a_throttling_endpoint_is_retried_when_it_asks_and_a_gone_one_is_disabled() {
    let server = server(vec![429, 410]).await;
    let (current, _) = secret(7);
    let channel = WebhookChannel::new(BTreeMap::from([(
        "erp".to_string(),
        WebhookEndpoint {
            url: server.url.clone(),
            secrets: vec![current],
        },
    )]))
    .unwrap();
    let n = notification("webhook", "erp");
    let throttled = channel.send(&n).await.unwrap_err();
    assert!(throttled.message.contains("answered 429"), "{throttled}");
    assert_eq!(
        (throttled.retry_in, throttled.give_up),
        (Some(std::time::Duration::from_secs(120)), false)
    );
    let gone = channel.send(&n).await.unwrap_err();
    assert!(gone.message.contains("answered 410"), "{gone}");
    assert!(gone.give_up);
    let later = channel
        .send(&notification("webhook", "erp"))
        .await
        .unwrap_err();
    assert!(later.give_up);
    assert!(
        later.message.contains("disabled: it answered 410 Gone"),
        "{later}"
    );
    assert_eq!(
        server.seen.lock().unwrap().len(),
        2,
        "no request after the 410"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_an_error_not_a_hang() {
    let (current, _) = secret(7);
    let channel = WebhookChannel::new(BTreeMap::from([(
        "erp".to_string(),
        WebhookEndpoint {
            url: "http://127.0.0.1:9/hooks".into(),
            secrets: vec![current],
        },
    )]))
    .unwrap();
    let err = channel
        .send(&notification("webhook", "erp"))
        .await
        .unwrap_err();
    assert!(err.message.starts_with("webhook endpoint `erp`: "), "{err}");
}

#[tokio::test]
async fn an_sms_goes_to_the_gateway_with_its_token_and_an_idempotency_key() {
    let server = server(vec![]).await;
    let gateway = SmsGateway::new(&server.url, Some("t0k3n".into()), "Switchyard").unwrap();
    assert!(!format!("{gateway:?}").contains("t0k3n"));
    let mut n = notification("sms", "+447700900003");
    n.message.text = "x".repeat(2000);
    gateway.send(&n).await.unwrap();
    let seen = server.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.headers["authorization"], "Bearer t0k3n");
    assert_eq!(seen.headers["idempotency-key"], n.id.to_string());
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["to"], "+447700900003");
    assert_eq!(body["from"], "Switchyard");
    assert_eq!(body["message_id"], n.id.to_string());
    let text = body["text"].as_str().unwrap();
    assert_eq!(text.chars().count(), 1600);
    assert!(text.ends_with('…'));

    let refusing = server_with_status(401).await;
    let gateway = SmsGateway::new(&refusing, None, "Switchyard").unwrap();
    let err = gateway.send(&n).await.unwrap_err();
    assert!(
        err.message.contains("the sms gateway answered 401"),
        "{err}"
    );
}

async fn server_with_status(status: u16) -> String {
    server(vec![status; 8]).await.url
}

#[tokio::test]
async fn the_file_channel_appends_one_synced_json_line_per_message() {
    let dir = std::env::temp_dir().join(format!("switchyard-notify-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("outbox.jsonl");
    let channel = FileChannel::new(&path);
    let (a, b) = (
        notification("email", "a@example.com"),
        notification("sms", "+1"),
    );
    channel.send(&a).await.unwrap();
    channel.send(&b).await.unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], a.id.to_string());
    assert_eq!(lines[1]["message"]["to"], "+1");
    let err = FileChannel::new(dir.join("missing/dir/x.jsonl"))
        .send(&a)
        .await
        .unwrap_err();
    assert!(err.message.contains("missing/dir/x.jsonl"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A minimal SMTP server (RFC 5321: greeting, EHLO, MAIL, RCPT, DATA, QUIT) that records the
/// envelope and the message; answers `451` to the first `fail_first` DATA commands.
async fn smtp_server(fail_first: usize) -> (u16, Arc<Mutex<Vec<(Vec<String>, String)>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mail = Arc::new(Mutex::new(Vec::new()));
    let recorded = mail.clone();
    let failures = Arc::new(Mutex::new(fail_first));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (mail, failures) = (recorded.clone(), failures.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 test ESMTP\r\n").await.unwrap();
                let mut envelope = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250-test\r\n250 8BITMIME\r\n",
                        "MAIL" | "RCPT" => {
                            envelope.push(line.clone());
                            b"250 ok\r\n"
                        }
                        "DATA" => {
                            write.write_all(b"354 go on\r\n").await.unwrap();
                            let mut data = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                data.push_str(&l);
                                data.push('\n');
                            }
                            let fail = {
                                let mut f = failures.lock().unwrap();
                                let fail = *f > 0;
                                *f = f.saturating_sub(1);
                                fail
                            };
                            if fail {
                                b"451 try again later\r\n"
                            } else {
                                mail.lock()
                                    .unwrap()
                                    .push((std::mem::take(&mut envelope), data));
                                b"250 queued\r\n"
                            }
                        }
                        "RSET" | "NOOP" => b"250 ok\r\n",
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"502 not implemented\r\n",
                    };
                    write.write_all(answer).await.unwrap();
                }
            });
        }
    });
    (port, mail)
}

#[tokio::test]
async fn an_email_goes_over_smtp_with_text_and_html_and_the_message_id() {
    use switchyard_notify::{SmtpChannel, SmtpSettings, SmtpTls};
    let (port, mail) = smtp_server(1).await;
    let channel = SmtpChannel::new(SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        tls: SmtpTls::None,
        credentials: None,
        from: "Switchyard <noreply@example.com>".into(),
    })
    .unwrap();
    let mut n = notification("email", "mia@example.com");
    n.message.subject = "Quote Q-1 waits for your approval".into();
    n.message.html = Some("<p>Quote <b>Q-1</b> waits.</p>".into());
    let err = channel.send(&n).await.unwrap_err();
    assert!(err.message.contains("451"), "{err}");
    channel.send(&n).await.unwrap();
    let mail = mail.lock().unwrap().clone();
    assert_eq!(mail.len(), 1);
    let (envelope, data) = &mail[0];
    assert!(
        envelope[0].contains("<noreply@example.com>"),
        "{envelope:?}"
    );
    assert!(envelope[1].contains("<mia@example.com>"), "{envelope:?}");
    let headers = data.split("\n\n").next().unwrap();
    assert!(
        headers.contains("Subject: Quote Q-1 waits for your approval"),
        "{headers}"
    );
    assert!(headers.contains("To: mia@example.com"), "{headers}");
    assert!(
        headers.contains(&format!("Message-ID: <{}@switchyard>", n.id)),
        "{headers}"
    );
    assert!(headers.contains("multipart/alternative"), "{headers}");
    assert!(data.contains("Content-Type: text/plain"), "{data}");
    assert!(data.contains("Content-Type: text/html"), "{data}");
    assert!(data.contains("Order SO-1 for BETA is confirmed."), "{data}");
    assert!(data.contains("<p>Quote <b>Q-1</b> waits.</p>"), "{data}");

    let err = channel
        .send(&notification("email", "not an address"))
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains("`not an address` is not an e-mail address"),
        "{err}"
    );
    assert!(err.give_up, "an address that is not one never will be");
}
