//! Versioned rule sets: first-start deployment, deploy with tests as the gate, live activation
//! without a restart, rollback, restart on the last active version, refusals that list the
//! live instances affected, and decisions racing a reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{TimeZone, Utc};
use serde_json::json;
use switchyard_core::*;

mod common;
// A copy of the shipped rules with `(file, from, to)` edits applied.
use common::rules_copy as edited;

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../rules")
}

/// The threshold edit: 5,000.00 becomes auto-approved. (An analyst would update the quote
/// tests that pin the old behaviour; here they are left out.)
fn raised_threshold() -> tempfile::TempDir {
    let dir = edited(&[(
        "data/approval.json",
        "\"auto_approve_net_below\": \"5000\"",
        "\"auto_approve_net_below\": \"5010\"",
    )]);
    std::fs::remove_file(dir.path().join("tests/quote.toml")).unwrap();
    dir
}

async fn open(store: &Path, rules: &Path) -> Engine {
    let mut sled = SledConfig::new(store);
    sled.durability = Durability::Flush;
    let mut config = EngineConfig::new(StoreConfig::Sled(sled));
    config.clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap(),
    ));
    config.timer_poll_interval = StdDuration::from_secs(3600);
    Engine::open_with_rules(config, rules, DeciderRegistry::new(), RuleLimits::default())
        .await
        .unwrap()
}

fn analyst() -> Actor {
    Actor::new("ada", &["analyst"])
}

/// Starts and submits a one-line quote; returns its state after submit and the decision's
/// rule-set version.
async fn submit(engine: &Engine, key: &str, sku: &str) -> (String, String) {
    let rep = Actor::new("ana", &["sales_rep"]);
    let id = engine
        .start(StartRequest::new("quote", rep.clone(), format!("s-{key}")).business_key(key).data(json!({ "customer": "BETA", "currency": "EUR", "valid_until": "2026-05-01", "lines": [{ "sku": sku, "quantity": 1 }] })))
        .await
        .unwrap()
        .instance;
    let out = engine
        .send(CommandRequest::new(
            id,
            "submit",
            rep,
            format!("submit-{key}"),
        ))
        .await
        .unwrap();
    let h = engine.history(id, 1, 1).await.unwrap().remove(0);
    (out.state, h.provenance.unwrap().rule_set)
}

#[tokio::test]
async fn deploy_activates_live_rollback_restores_and_a_restart_keeps_the_active_version() {
    let store = tempfile::tempdir().unwrap();
    let engine = open(store.path(), &shipped()).await;
    let first = engine.active_rule_set().unwrap();
    assert_eq!(
        (first.number, first.deployed_by.as_str()),
        (1, "system:first-start")
    );
    assert_eq!(
        submit(&engine, "Q-1", "FIXED-5000").await.0,
        "pending_approval"
    );

    // Deploy: live, no restart.
    let raised = raised_threshold();
    let err = engine
        .deploy_rules(raised.path(), &Actor::new("ana", &["sales_rep"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ROLE_NOT_ALLOWED");
    let second = engine
        .deploy_rules(raised.path(), &analyst())
        .await
        .unwrap();
    assert_eq!((second.number, second.active), (2, true));
    assert_ne!(second.version, first.version);
    let (state, version) = submit(&engine, "Q-2", "FIXED-5000").await;
    assert_eq!(
        (state.as_str(), version.as_str()),
        ("approved", second.version.as_str())
    );

    // Rollback.
    engine.activate_rules(1, &analyst()).await.unwrap();
    let (state, version) = submit(&engine, "Q-3", "FIXED-5000").await;
    assert_eq!(
        (state.as_str(), version.as_str()),
        ("pending_approval", first.version.as_str())
    );
    let listed = engine.rule_sets().unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|r| (r.number, r.active))
            .collect::<Vec<_>>(),
        vec![(1, true), (2, false)]
    );
    assert_eq!(
        engine
            .activate_rules(9, &analyst())
            .await
            .unwrap_err()
            .code(),
        "UNKNOWN_RULE_SET"
    );

    // Restart: the store's last active version wins; the directory is not read again.
    engine.activate_rules(2, &analyst()).await.unwrap();
    engine.shutdown().await;
    drop(engine);
    let elsewhere = tempfile::tempdir().unwrap();
    let engine = open(store.path(), elsewhere.path()).await;
    assert_eq!(engine.active_rule_set().unwrap().number, 2);
    assert_eq!(submit(&engine, "Q-4", "FIXED-5000").await.0, "approved");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_failing_example_test_or_an_invalid_rule_set_blocks_activation() {
    let store = tempfile::tempdir().unwrap();
    let engine = open(store.path(), &shipped()).await;
    // The threshold moves but the tests still expect the old behaviour.
    let untested = edited(&[(
        "data/approval.json",
        "\"auto_approve_net_below\": \"5000\"",
        "\"auto_approve_net_below\": \"5010\"",
    )]);
    let err = engine
        .deploy_rules(untested.path(), &analyst())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "RULE_SET_REFUSED");
    assert!(err.to_string().contains("test failed: "), "{err}");
    assert!(
        err.to_string()
            .contains("DOMAIN 2: a net of 5,000.00 waits for the sales manager"),
        "{err}"
    );
    let broken = edited(&[(
        "scripts/quote.rhai",
        "fn reject(instance, payload, actor) {",
        "fn reject(instance, payload, actor) {\n    let = 1;",
    )]);
    let err = engine
        .deploy_rules(broken.path(), &analyst())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("scripts/quote.rhai:"), "{err}");
    assert!(err.to_string().contains("syntax error"), "{err}");
    // Nothing changed.
    assert_eq!(engine.rule_sets().unwrap().len(), 1);
    assert_eq!(
        submit(&engine, "Q-1", "FIXED-5000").await.0,
        "pending_approval"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn activation_is_refused_while_live_instances_need_what_the_version_lacks() {
    let store = tempfile::tempdir().unwrap();
    let engine = open(store.path(), &shipped()).await;
    let rep = Actor::new("ana", &["sales_rep"]);
    let id = engine
        .start(StartRequest::new("quote", rep, "s-live").business_key("Q-L").data(json!({ "customer": "BETA", "currency": "EUR", "valid_until": "2026-05-01", "lines": [{ "sku": "FIXED-5000", "quantity": 1 }] })))
        .await
        .unwrap()
        .instance;
    // A version whose quote definition v2 approves differently, without `quote::approve`.
    let without = edited(&[
        ("definitions/quote.toml", "version = 1", "version = 2"),
        (
            "definitions/quote.toml",
            "decider = \"quote::approve\"",
            "decider = \"quote::approve_all\"",
        ),
        (
            "scripts/quote.rhai",
            "fn approve(instance, payload, actor) {",
            "fn approve_all(instance, payload, actor) {",
        ),
        (
            "tests/quote.toml",
            "function = \"quote::approve\"",
            "function = \"quote::approve_all\"",
        ),
        (
            "tests/quote.toml",
            "function = \"quote::approve\"",
            "function = \"quote::approve_all\"",
        ),
        (
            "tests/quote.toml",
            "function = \"quote::approve\"",
            "function = \"quote::approve_all\"",
        ),
        (
            "tests/quote.toml",
            "function = \"quote::approve\"",
            "function = \"quote::approve_all\"",
        ),
    ]);
    let err = engine
        .deploy_rules(without.path(), &analyst())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "RULE_SET_REFUSED");
    assert!(
        err.to_string()
            .contains("quote v1 names decider(s) quote::approve that rule set #2 ("),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("1 live instance(s) are pinned to it: {id}")),
        "{err}"
    );

    // Changing a deployed definition without a new version is refused too.
    let changed = edited(&[(
        "definitions/quote.toml",
        "roles = [\"sales_rep\"]\n\n[start.payload]",
        "roles = [\"sales_rep\", \"sales_manager\"]\n\n[start.payload]",
    )]);
    let err = engine
        .deploy_rules(changed.path(), &analyst())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("definition `quote` version 1 differs from the one deployed in rule set #1; give the changed definition a new version"), "{err}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_racing_a_reload_each_use_exactly_one_version() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let store = tempfile::tempdir().unwrap();
    let engine = open(store.path(), &shipped()).await;
    let v1 = engine.active_rule_set().unwrap().version;
    let raised = raised_threshold();
    let deploying = Arc::new(AtomicBool::new(false));
    let deployed = Arc::new(AtomicBool::new(false));
    // Submitters loop from before the deploy until after it; each decision records whether it
    // overlapped the deploy in time (began before it finished, ended after it started).
    let submitters: Vec<_> = (0..4)
        .map(|w| {
            let (engine, deploying, deployed) =
                (engine.clone(), deploying.clone(), deployed.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut after = 0;
                for n in 0.. {
                    let began_before_the_end = !deployed.load(SeqCst);
                    let (state, version) =
                        submit(&engine, &format!("R-{w}-{n}"), "FIXED-5000").await;
                    let overlapped = began_before_the_end && deploying.load(SeqCst);
                    seen.push((state, version, overlapped));
                    if deployed.load(SeqCst) {
                        after += 1;
                        if after == 3 {
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(StdDuration::from_millis(50)).await;
    deploying.store(true, SeqCst);
    let v2 = engine
        .deploy_rules(raised.path(), &analyst())
        .await
        .unwrap()
        .version;
    deployed.store(true, SeqCst);
    let mut decisions = Vec::new();
    for s in submitters {
        decisions.extend(s.await.unwrap());
    }
    for (state, version, _) in &decisions {
        // Each decision is wholly one version's: its provenance and its outcome agree.
        if *version == v1 {
            assert_eq!(state, "pending_approval");
        } else {
            assert_eq!(
                (version.as_str(), state.as_str()),
                (v2.as_str(), "approved")
            );
        }
    }
    let count = |v: &str| decisions.iter().filter(|d| d.1 == v).count();
    assert!(count(&v1) > 0 && count(&v2) > 0, "both versions decided");
    let overlapping = decisions.iter().filter(|d| d.2).count();
    assert!(
        overlapping > 0,
        "no decision ran while the deploy did: the race was not exercised ({} decisions)",
        decisions.len()
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_definition_may_keep_its_decisions_on_the_version_it_started_under() {
    let pin = (
        "definitions/quote.toml",
        "initial = \"draft\"",
        "initial = \"draft\"\ndecisions = \"pinned\"",
    );
    let v1 = edited(&[pin]);
    let v2 = edited(&[
        pin,
        (
            "data/approval.json",
            "\"auto_approve_net_below\": \"5000\"",
            "\"auto_approve_net_below\": \"5010\"",
        ),
    ]);
    std::fs::remove_file(v2.path().join("tests/quote.toml")).unwrap();
    let store = tempfile::tempdir().unwrap();
    let engine = open(store.path(), v1.path()).await;
    let rep = Actor::new("ana", &["sales_rep"]);
    let old = engine
        .start(StartRequest::new("quote", rep.clone(), "s-old").business_key("OLD").data(json!({ "customer": "BETA", "currency": "EUR", "valid_until": "2026-05-01", "lines": [{ "sku": "FIXED-5000", "quantity": 1 }] })))
        .await
        .unwrap()
        .instance;
    assert_eq!(engine.get(old).await.unwrap().rule_set, Some(1));
    engine.deploy_rules(v2.path(), &analyst()).await.unwrap();
    // Started under #1: decided by #1's rules although #2 is active.
    let out = engine
        .send(CommandRequest::new(old, "submit", rep, "submit-old"))
        .await
        .unwrap();
    assert_eq!(out.state, "pending_approval");
    // Started under #2: decided by #2's.
    assert_eq!(submit(&engine, "NEW", "FIXED-5000").await.0, "approved");
    engine.shutdown().await;
}

/// Waits until the watcher's counters satisfy `done` (it reports what it has looked at, so
/// no fixed sleep is needed); false after 10 s.
async fn until(watch: &RulesWatch, done: impl Fn(&RulesWatchStatus) -> bool) -> bool {
    for _ in 0..2000 {
        if done(&watch.status()) {
            return true;
        }
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    false
}

#[tokio::test]
async fn a_watched_directory_is_deployed_when_it_changes_and_only_if_valid() {
    let dir = edited(&[]);
    let store = tempfile::tempdir().unwrap();
    let engine = open(store.path(), dir.path()).await;
    let watch = engine.watch_rules(dir.path().to_path_buf(), StdDuration::from_millis(20));
    let wait_for = |n: u32| {
        let engine = engine.clone();
        async move {
            for _ in 0..500 {
                if engine.active_rule_set().unwrap().number == n {
                    return true;
                }
                tokio::time::sleep(StdDuration::from_millis(10)).await;
            }
            false
        }
    };
    assert!(until(&watch, |s| s.checks >= 3).await);
    assert_eq!(
        engine.rule_sets().unwrap().len(),
        1,
        "an unchanged directory deploys nothing new"
    );

    // A broken edit is not activated...
    let approval = dir.path().join("data/approval.json");
    let good = std::fs::read_to_string(&approval).unwrap();
    std::fs::write(&approval, "{ not json").unwrap();
    assert!(
        until(&watch, |s| s.refused == 1).await,
        "{:?}",
        watch.status()
    );
    assert!(
        watch
            .status()
            .last_refusal
            .is_some_and(|r| r.contains("data/approval.json")),
        "{:?}",
        watch.status()
    );
    assert_eq!(engine.active_rule_set().unwrap().number, 1);
    // ...a valid one is, without a restart.
    std::fs::write(
        &approval,
        good.replace(
            "\"auto_approve_net_below\": \"5000\"",
            "\"auto_approve_net_below\": \"5010\"",
        ),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("tests/quote.toml")).unwrap();
    assert!(wait_for(2).await, "the changed directory was deployed");
    assert_eq!(submit(&engine, "W-1", "FIXED-5000").await.0, "approved");
    engine.shutdown().await;
}

#[tokio::test]
async fn rule_set_requests_are_idempotent_until_their_id_expires_and_activations_keep_their_actor()
{
    let store = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap(),
    ));
    let config = || {
        let mut sled = SledConfig::new(store.path());
        sled.durability = Durability::Flush;
        let mut config = EngineConfig::new(StoreConfig::Sled(sled));
        config.clock = clock.clone();
        config.timer_poll_interval = StdDuration::from_secs(3600);
        config
    };
    let engine = Engine::open_with_rules(
        config(),
        &shipped(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .await
    .unwrap();
    let raised = raised_threshold();
    engine
        .deploy_rules(raised.path(), &analyst())
        .await
        .unwrap();
    let admin = Actor::new("root", &["admin"]);
    let back = engine.activate_rules_once(1, &admin, "rb-1").await.unwrap();
    assert_eq!(
        (back.number, back.activated_by.as_deref()),
        (1, Some("root"))
    );
    engine.activate_rules(2, &analyst()).await.unwrap();
    // The retry answers as the first call did, without rolling back again.
    let retried = engine.activate_rules_once(1, &admin, "rb-1").await.unwrap();
    assert_eq!((retried.number, retried.active), (1, false));
    assert_eq!(engine.active_rule_set().unwrap().number, 2);
    assert!(matches!(
        engine.activate_rules_once(2, &admin, "rb-1").await,
        Err(CommandError::RequestIdReused { .. })
    ));
    // Once the id expires (7 days), it may be used again.
    clock.advance(chrono::Duration::days(8));
    let again = engine.activate_rules_once(1, &admin, "rb-1").await.unwrap();
    assert!(again.active);
    engine.shutdown().await;
    drop(engine);

    // Every activation is kept with its actor, across a restart; the restart itself (the
    // active version again) adds none.
    let engine = Engine::open_with_rules(
        config(),
        &shipped(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .await
    .unwrap();
    let log: Vec<(u32, String)> = engine
        .store()
        .rule_set_activations()
        .unwrap()
        .into_iter()
        .map(|a| (a.number, a.by))
        .collect();
    assert_eq!(
        log,
        vec![
            (1, "system:first-start".to_string()),
            (2, "ada".to_string()),
            (1, "root".to_string()),
            (2, "ada".to_string()),
            (1, "root".to_string()),
        ]
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_rollback_also_rolls_back_what_new_instances_start_on() {
    // Rule set 2 gives quotes a version 2 with a new optional field.
    let v2 = edited(&[
        ("definitions/quote.toml", "version = 1", "version = 2"),
        (
            "definitions/quote.toml",
            "lead = { type = \"string\", max_length = 40, required = false }",
            "lead = { type = \"string\", max_length = 40, required = false }\nreference = { type = \"string\", required = false }",
        ),
    ]);
    let store = tempfile::tempdir().unwrap();
    let engine = open(store.path(), &shipped()).await;
    engine.deploy_rules(v2.path(), &analyst()).await.unwrap();
    let rep = Actor::new("ana", &["sales_rep"]);
    let data = |reference: bool| {
        let mut d = json!({ "customer": "BETA", "currency": "EUR", "valid_until": "2026-05-01", "lines": [{ "sku": "FIXED-4999", "quantity": 1 }] });
        if reference {
            d["reference"] = json!("PO-1");
        }
        d
    };
    let on_v2 = engine
        .start(StartRequest::new("quote", rep.clone(), "s-v2").data(data(true)))
        .await
        .unwrap()
        .instance;
    assert_eq!(engine.get(on_v2).await.unwrap().definition.version, 2);

    // Roll back to rule set 1: new quotes start on quote v1 again…
    engine.activate_rules(1, &analyst()).await.unwrap();
    let on_v1 = engine
        .start(StartRequest::new("quote", rep.clone(), "s-v1").data(data(false)))
        .await
        .unwrap()
        .instance;
    assert_eq!(engine.get(on_v1).await.unwrap().definition.version, 1);
    let refused = engine
        .start(StartRequest::new("quote", rep.clone(), "s-v1-ref").data(data(true)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "INVALID_PAYLOAD", "{refused}");
    assert!(refused.to_string().contains("reference"), "{refused}");
    // …while the live v2 quote stays on v2 and carries on.
    let out = engine
        .send(CommandRequest::new(
            on_v2,
            "submit",
            rep.clone(),
            "submit-v2",
        ))
        .await
        .unwrap();
    assert_eq!(out.state, "approved");
    assert_eq!(engine.get(on_v2).await.unwrap().definition.version, 2);
    // Rolling forward again starts on v2.
    engine.activate_rules(2, &analyst()).await.unwrap();
    let again = engine
        .start(StartRequest::new("quote", rep, "s-v2-again").data(data(true)))
        .await
        .unwrap()
        .instance;
    assert_eq!(engine.get(again).await.unwrap().definition.version, 2);
    engine.shutdown().await;
}

#[tokio::test]
async fn compiled_versions_are_cached_within_their_bound_and_compiled_again_on_demand() {
    let pin = (
        "definitions/quote.toml",
        "initial = \"draft\"",
        "initial = \"draft\"\ndecisions = \"pinned\"",
    );
    let threshold = |limit: &str| -> tempfile::TempDir {
        let dir = edited(&[
            pin,
            (
                "data/approval.json",
                "\"auto_approve_net_below\": \"5000\"",
                &format!("\"auto_approve_net_below\": \"{limit}\""),
            ),
        ]);
        std::fs::remove_file(dir.path().join("tests/quote.toml")).unwrap();
        dir
    };
    let (v1, v2, v3) = (threshold("5000"), threshold("5010"), threshold("4000"));
    let store = tempfile::tempdir().unwrap();
    let mut sled = SledConfig::new(store.path());
    sled.durability = Durability::Flush;
    let mut config = EngineConfig::new(StoreConfig::Sled(sled));
    config.rule_set_cache = 1;
    let engine = Engine::open_with_rules(
        config,
        v1.path(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .await
    .unwrap();
    let rep = Actor::new("ana", &["sales_rep"]);
    let start = |key: &'static str| {
        StartRequest::new("quote", rep.clone(), format!("s-{key}"))
            .business_key(key)
            .data(json!({ "customer": "BETA", "currency": "EUR", "valid_until": "2026-05-01", "lines": [{ "sku": "FIXED-5000", "quantity": 1 }] }))
    };
    let on_1 = engine.start(start("ONE")).await.unwrap().instance;
    engine.deploy_rules(v2.path(), &analyst()).await.unwrap();
    let on_2 = engine.start(start("TWO")).await.unwrap().instance;
    engine.deploy_rules(v3.path(), &analyst()).await.unwrap();
    assert_eq!(engine.cached_rule_sets(), [2], "only the one replaced last");
    // Each quote is decided by the version it started under: #1 (limit 5000), #2 (5010);
    // #1 is compiled again on demand and pushes #2 out, which then comes back.
    let decide = |id, key: &str| {
        engine.send(CommandRequest::new(
            id,
            "submit",
            rep.clone(),
            format!("submit-{key}"),
        ))
    };
    assert_eq!(decide(on_1, "ONE").await.unwrap().state, "pending_approval");
    assert_eq!(engine.cached_rule_sets(), [1]);
    assert_eq!(decide(on_2, "TWO").await.unwrap().state, "approved");
    assert_eq!(engine.cached_rule_sets(), [2]);
    engine.shutdown().await;
}

#[tokio::test]
async fn backtest_replays_decisions_whose_feed_events_retention_purged() {
    let store = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap(),
    ));
    let mut sled = SledConfig::new(store.path());
    sled.durability = Durability::Flush;
    let mut config = EngineConfig::new(StoreConfig::Sled(sled));
    config.clock = clock.clone();
    // No timer may fire (and decide) while the clock jumps 40 days.
    config.background_tasks = false;
    let engine = Engine::open_with_rules(
        config,
        &shipped(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .await
    .unwrap();
    submit(&engine, "Q-4999", "FIXED-4999").await;
    submit(&engine, "Q-5000", "FIXED-5000").await;
    clock.advance(chrono::Duration::days(40));
    assert!(
        engine.purge_feed().await.unwrap() >= 4,
        "the decisions' events are gone"
    );
    submit(&engine, "Q-LATER", "FIXED-5000").await;
    let candidate = RuleSet::load(
        raised_threshold().path(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .unwrap();
    let report = engine.backtest(&candidate, None).unwrap();
    assert_eq!(report.instances, 3);
    assert_eq!(
        report.replayed, 3,
        "every recorded decision, purged events or not"
    );
    let flipped: Vec<&str> = report
        .changed
        .iter()
        .filter(|c| c.outcome_changed)
        .map(|c| c.business_key.as_str())
        .collect();
    assert_eq!(flipped, ["Q-5000", "Q-LATER"]);
    let (from, to) = report.covered.unwrap();
    assert_eq!(from, Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap());
    assert_eq!(to, Utc.with_ymd_and_hms(2026, 5, 11, 9, 0, 0).unwrap());
    // `since` leaves out what came before.
    let since = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    assert_eq!(
        engine.backtest(&candidate, Some(since)).unwrap().replayed,
        1
    );
    engine.shutdown().await;
}
