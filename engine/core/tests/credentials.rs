//! Tokens made at runtime: shown once, stored as a hash, refused from the next call after a
//! revocation, rotation or expiry, and only an admin manages them.

mod common;

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use common::*;
use switchyard_core::{Actor, CommandError, ManualClock};

fn admin() -> Actor {
    Actor::new("root", &["admin"])
}

fn roles(list: &[&str]) -> Vec<String> {
    list.iter().map(|r| r.to_string()).collect()
}

#[tokio::test]
async fn a_created_token_authenticates_as_its_actor_and_only_its_hash_is_kept() {
    let engine = memory_engine().await;
    let made = engine
        .create_credential(&admin(), "c-1", "svc-erp", &roles(&["system"]), None)
        .await
        .unwrap();
    assert!(made.token.starts_with("sy_") && made.token.len() == 67);
    let actor = engine.authenticate_token(&made.token).unwrap().unwrap();
    assert_eq!(actor, Actor::new("svc-erp", &["system"]));
    assert_eq!(engine.authenticate_token("sy_guess").unwrap(), None);

    let page = engine.credentials_page(&admin(), 10, None).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let listed = &page.items[0];
    assert_eq!(listed.id, made.credential.id);
    assert_eq!(listed.created_by, "root");
    assert!(!format!("{listed:?}").contains(&made.token[3..]));
    assert_eq!(listed.token_sha256.len(), 64);
}

#[tokio::test]
async fn a_retried_create_is_refused_naming_the_credential_it_made() {
    let engine = memory_engine().await;
    let made = engine
        .create_credential(&admin(), "c-1", "svc", &roles(&["system"]), None)
        .await
        .unwrap();
    let again = engine
        .create_credential(&admin(), "c-1", "svc", &roles(&["system"]), None)
        .await
        .unwrap_err();
    match again {
        CommandError::SecretShownOnce { credential } => {
            assert!(credential.contains(&made.credential.id), "{credential}")
        }
        other => panic!("{other:?}"),
    }
    let other = engine
        .create_credential(&admin(), "c-1", "svc", &roles(&["finance"]), None)
        .await
        .unwrap_err();
    assert_eq!(other.code(), "REQUEST_ID_REUSED");
    let page = engine.credentials_page(&admin(), 10, None).await.unwrap();
    assert_eq!(page.items.len(), 1, "a retry makes nothing");
}

#[tokio::test]
async fn rotation_revokes_the_old_token_and_keeps_actor_roles_and_expiry() {
    let engine = memory_engine().await;
    let expires = Utc::now() + Duration::days(30);
    let first = engine
        .create_credential(
            &admin(),
            "c-1",
            "svc",
            &roles(&["finance", "analyst"]),
            Some(expires),
        )
        .await
        .unwrap();
    let second = engine
        .rotate_credential(&admin(), "r-1", &first.credential.id)
        .await
        .unwrap();
    assert_eq!(engine.authenticate_token(&first.token).unwrap(), None);
    let actor = engine.authenticate_token(&second.token).unwrap().unwrap();
    assert_eq!(actor, Actor::new("svc", &["finance", "analyst"]));
    assert_eq!(second.credential.expires_at, Some(expires));

    let page = engine.credentials_page(&admin(), 10, None).await.unwrap();
    let old = page
        .items
        .iter()
        .find(|c| c.id == first.credential.id)
        .unwrap();
    assert_eq!(
        old.replaced_by.as_deref(),
        Some(second.credential.id.as_str())
    );
    assert_eq!(old.revoked_by.as_deref(), Some("root"));

    let twice = engine
        .rotate_credential(&admin(), "r-2", &first.credential.id)
        .await
        .unwrap_err();
    assert_eq!(twice.code(), "INVALID_INPUT");
    let unknown = engine
        .rotate_credential(&admin(), "r-3", "0011223344556677")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), "UNKNOWN_CREDENTIAL");
}

#[tokio::test]
async fn a_revoked_token_is_refused_from_the_next_call_and_revoking_again_changes_nothing() {
    let engine = memory_engine().await;
    let made = engine
        .create_credential(&admin(), "c-1", "svc", &roles(&["system"]), None)
        .await
        .unwrap();
    let revoked = engine
        .revoke_credential(&admin(), "v-1", &made.credential.id)
        .await
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(engine.authenticate_token(&made.token).unwrap(), None);
    let again = engine
        .revoke_credential(&admin(), "v-2", &made.credential.id)
        .await
        .unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);
}

#[tokio::test]
async fn a_token_stops_working_at_its_expiry_by_the_engine_clock() {
    let start = Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let engine = engine_with_clock(clock.clone()).await;
    let made = engine
        .create_credential(
            &admin(),
            "c-1",
            "svc",
            &roles(&["system"]),
            Some(start + Duration::hours(1)),
        )
        .await
        .unwrap();
    clock.advance(Duration::minutes(59));
    assert!(engine.authenticate_token(&made.token).unwrap().is_some());
    clock.advance(Duration::minutes(1));
    assert_eq!(engine.authenticate_token(&made.token).unwrap(), None);
}

#[tokio::test]
async fn only_an_admin_manages_credentials_and_bad_grants_are_refused_naming_the_field() {
    let engine = memory_engine().await;
    let analyst = Actor::new("ana", &["analyst"]);
    let refused = engine
        .create_credential(&analyst, "c-1", "svc", &roles(&["admin"]), None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "ROLE_NOT_ALLOWED");
    assert_eq!(
        engine
            .credentials_page(&analyst, 10, None)
            .await
            .unwrap_err()
            .code(),
        "ROLE_NOT_ALLOWED"
    );
    type Case = (
        &'static str,
        Vec<String>,
        Option<chrono::DateTime<Utc>>,
        &'static str,
    );
    let cases: [Case; 4] = [
        ("", roles(&["system"]), None, "actor"),
        ("svc", vec![], None, "roles"),
        ("svc", roles(&["Bad Role"]), None, "roles"),
        (
            "svc",
            roles(&["system"]),
            Some(Utc::now() - Duration::seconds(1)),
            "expires_at",
        ),
    ];
    for (actor, grant, expires, field) in cases {
        match engine
            .create_credential(&admin(), "c-2", actor, &grant, expires)
            .await
            .unwrap_err()
        {
            CommandError::InvalidInput { field: f, .. } => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let page = engine.credentials_page(&admin(), 10, None).await.unwrap();
    assert!(page.items.is_empty(), "nothing is written for a refusal");
}

#[tokio::test]
async fn credentials_page_in_id_order_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut tokens = Vec::new();
    {
        let engine = sled_engine(&path, switchyard_core::Durability::Flush).await;
        for n in 0..5 {
            let made = engine
                .create_credential(
                    &admin(),
                    &format!("c-{n}"),
                    "svc",
                    &roles(&["system"]),
                    None,
                )
                .await
                .unwrap();
            tokens.push(made);
        }
        engine.shutdown().await;
    }
    let engine = sled_engine(&path, switchyard_core::Durability::Flush).await;
    for made in &tokens {
        assert!(engine.authenticate_token(&made.token).unwrap().is_some());
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = engine
            .credentials_page(&admin(), 2, token.as_deref())
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|c| c.id.clone()));
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<String> = tokens.iter().map(|t| t.credential.id.clone()).collect();
    expected.sort();
    assert_eq!(seen, expected);
}
