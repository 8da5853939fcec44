//! The `switchyard rules` tools as an analyst runs them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn switchyard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules")
}

/// A copy of the shipped rule set that a test may break.
fn copy_rules() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy(&shipped_rules(), dir.path());
    dir
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn check_accepts_the_shipped_rules_and_reports_every_problem_with_its_position() {
    let rules = shipped_rules();
    let (code, out, err) = switchyard(&["rules", "check", rules.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is valid: 7 definition(s)"), "{out}");

    let broken = copy_rules();
    let quote = broken.path().join("scripts/quote.rhai");
    let original = std::fs::read_to_string(&quote).unwrap();
    // The broken line goes right below `fn reject(`: 1-based, that is its index + 2.
    let line = original
        .lines()
        .position(|l| l.starts_with("fn reject("))
        .unwrap()
        + 2;
    let text = original.replace(
        "fn reject(instance, payload, actor) {",
        "fn reject(instance, payload, actor) {\n    let = 1;",
    );
    std::fs::write(&quote, text).unwrap();
    let (code, _, err) = switchyard(&["rules", "check", broken.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    let root = broken.path().display().to_string();
    assert!(
        err.contains(&format!("{root}/scripts/quote.rhai:{line}:9: syntax error")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{root}/definitions/quote.toml:")),
        "the definitions naming its deciders are reported too: {err}"
    );
    assert!(err.contains("problem(s) in"), "{err}");
}

#[test]
fn test_runs_the_example_tests_and_shows_a_diff_on_failure() {
    let rules = shipped_rules();
    let (code, out, _) = switchyard(&["rules", "test", rules.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines().last().unwrap().ends_with("passed, 0 failed"),
        "{out}"
    );

    let changed = copy_rules();
    let approval = changed.path().join("data/approval.json");
    let text = std::fs::read_to_string(&approval).unwrap().replace(
        "\"auto_approve_net_below\": \"5000\"",
        "\"auto_approve_net_below\": \"5000.01\"",
    );
    std::fs::write(&approval, text).unwrap();
    let (code, out, _) = switchyard(&["rules", "test", changed.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("FAIL "), "{out}");
    assert!(
        out.contains("    + \"approved\"\n    - \"pending_approval\""),
        "a readable diff: {out}"
    );
    let fails = out.lines().filter(|l| l.starts_with("FAIL ")).count();
    assert!(fails >= 2, "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .ends_with(&format!(" {fails} failed")),
        "{out}"
    );
}

#[test]
fn eval_prints_the_decision_its_reason_and_the_time_taken() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"instance": {"state": "draft", "data": {"customer": "BETA", "currency": "EUR", "lines": [{"sku": "FIXED-4999", "quantity": 1}]}}, "now": "2026-04-01T09:00:00Z"}"#,
    )
    .unwrap();
    let rules = shipped_rules();
    let (code, out, err) = switchyard(&[
        "rules",
        "eval",
        rules.to_str().unwrap(),
        "quote::submit",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("state:  approved"), "{out}");
    assert!(
        out.contains("reason: net 4999.99 < 5000 and discount 0% ≤ 10% → approved automatically"),
        "{out}"
    );
    assert!(out.contains("time:   "), "{out}");
    assert!(
        out.contains("\"net\": \"4999.99\""),
        "money comes out as decimal strings: {out}"
    );

    let (code, _, err) = switchyard(&[
        "rules",
        "eval",
        rules.to_str().unwrap(),
        "quote::nope",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("`quote::nope` is not a decider of this rule set"),
        "{err}"
    );

    // The sample input the README's command names works as shown.
    let sample =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/rules/quote-submit.json");
    let (code, out, err) = switchyard(&[
        "rules",
        "eval",
        rules.to_str().unwrap(),
        "quote::submit",
        "--input",
        sample.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("state:  approved"), "{out}");
}

#[test]
fn backtest_reports_exactly_the_decisions_a_changed_threshold_flips() {
    use switchyard_core::*;
    let store_dir = tempfile::tempdir().unwrap();
    // Record decisions with the shipped rules.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rules = RuleSet::load(&shipped_rules(), DeciderRegistry::new(), RuleLimits::default()).unwrap();
        let mut store = SledConfig::new(store_dir.path());
        store.durability = Durability::Flush;
        // One quote an hour from midnight, so `--since` can cut between them.
        let clock = std::sync::Arc::new(ManualClock::new("2026-03-01T00:00:00Z".parse().unwrap()));
        let mut config = EngineConfig::new(StoreConfig::Sled(store));
        config.clock = clock.clone();
        let engine = Engine::open(config, rules.definitions, rules.deciders)
            .await
            .unwrap();
        let rep = Actor::new("ana", &["sales_rep"]);
        for (key, lines) in [
            ("Q-4999", serde_json::json!([{ "sku": "FIXED-4999", "quantity": 1 }])),
            ("Q-5000", serde_json::json!([{ "sku": "FIXED-5000", "quantity": 1 }])),
            ("Q-5019", serde_json::json!([{ "sku": "FIXED-5000", "quantity": 1 }, { "sku": "SEAL-KIT", "quantity": 1 }])),
            ("Q-12000", serde_json::json!([{ "sku": "CONSULT-PKG", "quantity": 1 }])),
        ] {
            let id = engine
                .start(StartRequest::new("quote", rep.clone(), format!("s-{key}")).business_key(key).data(serde_json::json!({ "customer": "BETA", "currency": "EUR", "valid_until": "2026-05-01", "lines": lines })))
                .await
                .unwrap()
                .instance;
            engine
                .send(CommandRequest::new(id, "submit", rep.clone(), format!("submit-{key}")))
                .await
                .unwrap();
            clock.advance(chrono::Duration::hours(1));
        }
        engine.shutdown().await;
    });
    let store = store_dir.path().to_str().unwrap();

    // The same rules change nothing.
    let rules = shipped_rules();
    let (code, out, err) = switchyard(&[
        "rules",
        "backtest",
        rules.to_str().unwrap(),
        "--store",
        store,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("4 decision(s) replayed against rule set "),
        "{out}"
    );
    assert!(
        out.contains(
            ": 0 would decide differently, 0 only explain differently, 4 unchanged, 0 skipped"
        ),
        "{out}"
    );

    // Raising the auto-approve threshold to 5,010 flips exactly the 5,000.00 quote.
    let candidate = copy_rules();
    let approval = candidate.path().join("data/approval.json");
    let text = std::fs::read_to_string(&approval).unwrap().replace(
        "\"auto_approve_net_below\": \"5000\"",
        "\"auto_approve_net_below\": \"5010\"",
    );
    std::fs::write(&approval, text).unwrap();
    let dir = candidate.path().to_str().unwrap();
    let (code, out, err) = switchyard(&["rules", "backtest", dir, "--store", store]);
    assert_eq!(code, 0, "{out}{err}");
    // One outcome flips; the 4,999.99 and 5,019.99 quotes only quote the new limit in their reasons.
    assert!(
        out.contains(
            ": 1 would decide differently, 2 only explain differently, 1 unchanged, 0 skipped"
        ),
        "{out}"
    );
    assert!(
        out.contains(" Q-4999 v2 quote::submit (at 2026-03-01T00:00:00.000Z), reason only:"),
        "{out}"
    );
    assert!(
        out.contains(" Q-5000 v2 quote::submit (at 2026-03-01T01:00:00.000Z):"),
        "{out}"
    );
    assert!(
        out.contains("covered: every decision recorded from 2026-03-01T00:00:00.000Z to 2026-03-01T03:00:00.000Z in the history of 4 instance(s)"),
        "{out}"
    );
    assert!(
        out.contains("    state: \"pending_approval\" → \"approved\""),
        "{out}"
    );
    assert!(out.contains("    reason: \"net 5000.00 ≥ 5000 → sales_manager\" → \"net 5000.00 < 5010 and discount 0% ≤ 10% → approved automatically\""), "{out}");
    assert!(
        out.contains("    changes.approval.route: [[\"sales_manager\"]] → []"),
        "{out}"
    );

    // --since skips what came before: the quotes decided from 02:00 on.
    let (_, out, _) = switchyard(&[
        "rules",
        "backtest",
        dir,
        "--store",
        store,
        "--since",
        "2026-03-01T02:00:00Z",
    ]);
    assert!(out.contains("2 decision(s) replayed"), "{out}");
    assert!(
        out.contains(": 0 would decide differently, 1 only explain differently, 1 unchanged"),
        "{out}"
    );
}

#[test]
fn deploy_versions_and_activate_manage_a_stopped_store() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().to_str().unwrap();
    let rules = shipped_rules();
    let (code, out, err) = switchyard(&[
        "rules",
        "deploy",
        rules.to_str().unwrap(),
        "--store",
        store,
        "--as",
        "bea",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("rule set #1 ("), "{out}");
    // The first version of a new store is recorded as deployed by whoever deployed it.
    let (_, out, _) = switchyard(&["rules", "versions", "--store", store]);
    assert!(out.contains(" by bea; last activated "), "{out}");

    let candidate = copy_rules();
    let approval = candidate.path().join("data/approval.json");
    let text = std::fs::read_to_string(&approval).unwrap().replace(
        "\"auto_approve_net_below\": \"5000\"",
        "\"auto_approve_net_below\": \"5010\"",
    );
    std::fs::write(&approval, text).unwrap();
    let dir = candidate.path().to_str().unwrap();
    // Its own tests still expect 5,000: refused, nothing changes.
    let (code, _, err) = switchyard(&["rules", "deploy", dir, "--store", store, "--as", "ada"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("the rule set was not activated:"), "{err}");
    std::fs::remove_file(candidate.path().join("tests/quote.toml")).unwrap();
    let (code, out, err) = switchyard(&["rules", "deploy", dir, "--store", store, "--as", "ada"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("rule set #2 ("), "{out}");

    let (_, out, _) = switchyard(&["rules", "versions", "--store", store]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[1].contains(" by ada") && lines[1].ends_with("(active)"),
        "{out}"
    );

    let (code, out, _) = switchyard(&["rules", "activate", "1", "--store", store]);
    assert_eq!(code, 0);
    assert!(out.starts_with("rule set #1 ("), "{out}");
    let (_, out, _) = switchyard(&["rules", "versions", "--store", store]);
    let first = out.lines().next().unwrap();
    assert!(first.ends_with("by analyst  (active)"), "{out}");
}

#[test]
fn token_create_list_rotate_and_revoke_manage_a_stopped_stores_tokens() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().to_str().unwrap();
    let (code, _, err) = switchyard(&["token", "list", "--store", store]);
    assert_eq!(code, 1);
    assert!(err.contains("no Switchyard store here"), "{err}");
    let rules = shipped_rules();
    let (code, ..) = switchyard(&["rules", "deploy", rules.to_str().unwrap(), "--store", store]);
    assert_eq!(code, 0);

    let (code, token, err) = switchyard(&[
        "token",
        "create",
        "--store",
        store,
        "--actor",
        "svc-erp",
        "--roles",
        "system,finance",
        "--expires",
        "2099-01-01",
        "--as",
        "ops",
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    assert!(token.starts_with("sy_") && token.len() == 67, "{token}");
    assert!(
        err.contains("for svc-erp with roles [system, finance], until 2099-01-01T00:00:00+00:00"),
        "{err}"
    );

    let (code, out, _) = switchyard(&["token", "list", "--store", store]);
    assert_eq!(code, 0);
    let listed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["created_by"], "ops");
    assert!(
        !out.contains(&token[3..]),
        "the token itself is kept nowhere"
    );
    let id = listed[0]["id"].as_str().unwrap().to_string();

    let (code, new_token, err) = switchyard(&["token", "rotate", &id, "--store", store]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(new_token.trim(), token);
    let (code, _, err) = switchyard(&["token", "rotate", &id, "--store", store]);
    assert_eq!(code, 1);
    assert!(err.contains("is revoked"), "{err}");

    let (_, out, _) = switchyard(&["token", "list", "--store", store]);
    let listed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let new_id = listed.iter().find(|c| c["id"] != id.as_str()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, out, _) = switchyard(&["token", "revoke", &new_id, "--store", store]);
    assert_eq!(code, 0);
    assert!(out.contains("\"revoked_by\":\"admin\""), "{out}");
    let (code, _, err) = switchyard(&["token", "revoke", "00ff00ff00ff00ff", "--store", store]);
    assert_eq!(code, 1);
    assert!(
        err.contains("there is no credential 00ff00ff00ff00ff"),
        "{err}"
    );
}
