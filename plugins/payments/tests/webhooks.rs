//! Webhook signatures, signed here by code written from the providers' documented formats —
//! HMAC built from SHA-256 by hand (RFC 2104), not with the verifier's HMAC — so a mistake in
//! the verifier cannot cancel out in its own test.

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchyard_payments::webhooks::*;

/// HMAC-SHA256 per RFC 2104: H((K ^ opad) || H((K ^ ipad) || m)), K padded to 64 bytes.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(message.iter().copied())
        .collect();
    let inner = Sha256::digest(&inner);
    let outer: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(inner.iter().copied())
        .collect();
    Sha256::digest(&outer).to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_independent_signer_meets_rfc_4231() {
    // RFC 4231, test case 2.
    assert_eq!(
        hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

/// Stripe: `t=<t>,v1=<hex(HMAC(secret, "{t}.{body}"))>` per secret.
fn stripe_header(t: i64, body: &str, secrets: &[&str]) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        let signature = hmac_sha256(secret.as_bytes(), format!("{t}.{body}").as_bytes());
        header += &format!(",v1={}", hex(&signature));
    }
    header
}

const BODY: &str = r#"{"id":"evt_1","type":"charge.dispute.created","data":{"object":{"id":"dp_1","status":"needs_response"}}}"#;
const NOW: i64 = 1_780_000_000;

fn secrets(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_stripe_signature_over_the_raw_body_is_accepted_within_the_tolerance() {
    let header = stripe_header(NOW - 299, BODY, &["whsec_a"]);
    let ok = verify_stripe(
        Some(&header),
        BODY.as_bytes(),
        &secrets(&["whsec_a"]),
        NOW,
        300,
    );
    assert_eq!(ok, Ok(()));
    // A test-mode v0 beside it is ignored.
    let with_v0 = format!("{header},v0=abcd");
    let ok = verify_stripe(
        Some(&with_v0),
        BODY.as_bytes(),
        &secrets(&["whsec_a"]),
        NOW,
        300,
    );
    assert_eq!(ok, Ok(()));
}

#[test]
fn during_a_secret_rotation_either_secret_verifies() {
    // Stripe signs with the old and the new secret while one is rolled.
    let header = stripe_header(NOW, BODY, &["whsec_old", "whsec_new"]);
    for configured in [
        &["whsec_old"][..],
        &["whsec_new"][..],
        &["whsec_x", "whsec_new"][..],
    ] {
        let ok = verify_stripe(
            Some(&header),
            BODY.as_bytes(),
            &secrets(configured),
            NOW,
            300,
        );
        assert_eq!(ok, Ok(()), "{configured:?}");
    }
}

#[test]
fn a_changed_body_a_wrong_secret_or_a_missing_header_is_refused() {
    let header = stripe_header(NOW, BODY, &["whsec_a"]);
    let changed = BODY.replace("needs_response", "won");
    let refused = verify_stripe(
        Some(&header),
        changed.as_bytes(),
        &secrets(&["whsec_a"]),
        NOW,
        300,
    );
    assert_eq!(refused, Err(WebhookError::BadSignature));
    let refused = verify_stripe(
        Some(&header),
        BODY.as_bytes(),
        &secrets(&["whsec_b"]),
        NOW,
        300,
    );
    assert_eq!(refused, Err(WebhookError::BadSignature));
    let refused = verify_stripe(None, BODY.as_bytes(), &secrets(&["whsec_a"]), NOW, 300);
    assert!(matches!(refused, Err(WebhookError::MissingSignature(_))));
    let refused = verify_stripe(
        Some("garbage"),
        BODY.as_bytes(),
        &secrets(&["whsec_a"]),
        NOW,
        300,
    );
    assert!(matches!(refused, Err(WebhookError::MalformedSignature(_))));
    let refused = verify_stripe(
        Some(&format!("t={NOW}")),
        BODY.as_bytes(),
        &secrets(&["whsec_a"]),
        NOW,
        300,
    );
    assert!(matches!(refused, Err(WebhookError::MissingSignature(_))));
    // No secret configured is a refusal, never a pass.
    let refused = verify_stripe(Some(&header), BODY.as_bytes(), &[], NOW, 300);
    assert_eq!(refused, Err(WebhookError::NoSecret));
}

#[test]
fn a_stale_or_future_timestamp_is_refused_even_when_signed() {
    for t in [NOW - 301, NOW + 301] {
        let header = stripe_header(t, BODY, &["whsec_a"]);
        let refused = verify_stripe(
            Some(&header),
            BODY.as_bytes(),
            &secrets(&["whsec_a"]),
            NOW,
            300,
        );
        assert_eq!(
            refused,
            Err(WebhookError::StaleTimestamp {
                off_by_seconds: NOW - t,
                tolerance_seconds: 300
            })
        );
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("outside the 300 s tolerance"));
    }
}

/// Adyen: base64(HMAC(hex-decoded key, the eight documented fields joined by ':')).
fn adyen_sign(item: &mut Value, key_hex: &str) {
    let key: Vec<u8> = (0..key_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key_hex[i..i + 2], 16).unwrap())
        .collect();
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_default();
    let data = format!(
        "{}:{}:{}:{}:{}:{}:{}:{}",
        s(&item["pspReference"]),
        s(&item["originalReference"]),
        s(&item["merchantAccountCode"]),
        s(&item["merchantReference"]),
        item["amount"]["value"].as_i64().unwrap(),
        s(&item["amount"]["currency"]),
        s(&item["eventCode"]),
        s(&item["success"]),
    );
    let signature =
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, data.as_bytes()));
    item["additionalData"]["hmacSignature"] = json!(signature);
}

const KEY: &str = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";

fn chargeback_item() -> Value {
    json!({
        "additionalData": { "chargebackReasonCode": "10.4", "defensePeriodEndsAt": "2026-05-01T00:00:00+02:00" },
        "amount": { "currency": "EUR", "value": 18990 },
        "eventCode": "CHARGEBACK",
        "eventDate": "2026-04-20T10:00:00+02:00",
        "merchantAccountCode": "SwitchyardShop",
        "merchantReference": "SO-2026-000001",
        "originalReference": "9913140798220028",
        "pspReference": "9915555555555555",
        "reason": "Fraud",
        "success": "true"
    })
}

#[test]
fn an_adyen_item_signed_over_the_documented_fields_is_accepted() {
    let mut item = chargeback_item();
    adyen_sign(&mut item, KEY);
    assert_eq!(verify_adyen_item(&item, &secrets(&[KEY])), Ok(()));
    assert_eq!(
        adyen_signing_string(&item),
        "9915555555555555:9913140798220028:SwitchyardShop:SO-2026-000001:18990:EUR:CHARGEBACK:true"
    );
    // A missing field signs as the empty string.
    let mut item = chargeback_item();
    item.as_object_mut().unwrap().remove("originalReference");
    adyen_sign(&mut item, KEY);
    assert_eq!(verify_adyen_item(&item, &secrets(&["00", KEY])), Ok(()));
}

#[test]
fn a_changed_adyen_item_a_wrong_key_or_no_signature_is_refused() {
    let mut item = chargeback_item();
    adyen_sign(&mut item, KEY);
    let mut changed = item.clone();
    changed["amount"]["value"] = json!(1);
    assert_eq!(
        verify_adyen_item(&changed, &secrets(&[KEY])),
        Err(WebhookError::BadSignature)
    );
    let mut changed = item.clone();
    changed["success"] = json!("false");
    assert_eq!(
        verify_adyen_item(&changed, &secrets(&[KEY])),
        Err(WebhookError::BadSignature)
    );
    let other = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";
    assert_eq!(
        verify_adyen_item(&item, &secrets(&[other])),
        Err(WebhookError::BadSignature)
    );
    let mut unsigned = item.clone();
    unsigned["additionalData"]
        .as_object_mut()
        .unwrap()
        .remove("hmacSignature");
    assert!(matches!(
        verify_adyen_item(&unsigned, &secrets(&[KEY])),
        Err(WebhookError::MissingSignature(_))
    ));
    let mut garbled = item.clone();
    garbled["additionalData"]["hmacSignature"] = json!("not base64!");
    assert!(matches!(
        verify_adyen_item(&garbled, &secrets(&[KEY])),
        Err(WebhookError::MalformedSignature(_))
    ));
    assert_eq!(verify_adyen_item(&item, &[]), Err(WebhookError::NoSecret));
}
