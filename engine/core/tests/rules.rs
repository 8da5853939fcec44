//! Rhai rules: the shipped rule set's own tests, sandbox limits, error locations, exact money,
//! deterministic time, provenance, and a Rhai decider deciding through the engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{TimeZone, Utc};
use serde_json::json;
use switchyard_core::rules::{testing, DecisionInput};
use switchyard_core::*;

const DEFINITION: &str = r#"
name = "deal"
version = 1
initial = "open"
[start]
roles = ["sales_rep"]
payload = { amount = { type = "money" }, note = { type = "string", required = false } }
[states]
open = {}
closed = { terminal = true }
[commands.decide]
from = ["open"]
to = ["open", "closed"]
roles = ["sales_rep"]
decider = "deal::decide"
"#;

fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules")
}

/// A rule set with the `deal` definition and `scripts/deal.rhai` = `script`.
fn rule_set(script: &str) -> (tempfile::TempDir, Result<RuleSet, DefinitionErrors>) {
    rule_set_with(script, RuleLimits::default())
}

fn rule_set_with(
    script: &str,
    limits: RuleLimits,
) -> (tempfile::TempDir, Result<RuleSet, DefinitionErrors>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("definitions")).unwrap();
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::fs::write(dir.path().join("definitions/deal.toml"), DEFINITION).unwrap();
    std::fs::write(dir.path().join("scripts/deal.rhai"), script).unwrap();
    let loaded = RuleSet::load(dir.path(), DeciderRegistry::new(), limits);
    (dir, loaded)
}

fn input(data: serde_json::Value) -> DecisionInput {
    DecisionInput {
        instance: json!({ "id": InstanceId::new(), "definition": "deal", "version": 1, "state": "open", "business_key": "D-1", "data": data, "parent": null }),
        payload: json!({}),
        actor: json!({ "id": "rep", "roles": ["sales_rep"] }),
        now: Utc.with_ymd_and_hms(2026, 4, 1, 9, 30, 0).unwrap(),
        counters: Counters::default(),
        balances: Balances::default(),
    }
}

fn eval_error(script: &str) -> String {
    eval_error_with(script, RuleLimits::default())
}

fn eval_error_with(script: &str, limits: RuleLimits) -> String {
    let (dir, rules) = rule_set_with(script, limits);
    let rules = rules.unwrap();
    let message = rules
        .evaluate("deal::decide", &input(json!({})))
        .unwrap_err()
        .message()
        .to_string();
    message.replace(&dir.path().display().to_string(), "RULES")
}

#[test]
fn the_shipped_rule_set_passes_its_own_tests() {
    let rules = RuleSet::load(
        &shipped_rules(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .unwrap();
    let outcomes = testing::run(&rules);
    assert!(outcomes.len() >= 8);
    for o in &outcomes {
        assert!(o.passed, "{}\n{}", o.title, o.report);
    }
}

#[test]
fn a_rule_test_fails_on_the_operation_limit_not_on_a_busy_machines_clock() {
    // 100,000 iterations take far longer than 1 ms, and far less than the tests' 2 s.
    let script = "fn decide(instance, payload, actor) {\n    let n = 0;\n    while n < 100000 { n += 1; }\n    #{ state: \"closed\", reason: `counted to ${n}` }\n}\n";
    let limits = RuleLimits {
        operations: 10_000_000,
        deadline: StdDuration::from_millis(1),
        ..RuleLimits::default()
    };
    let (dir, _) = rule_set_with(script, limits.clone());
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("tests/deal.toml"),
        "[[test]]\nname = \"slow but finite\"\nfunction = \"deal::decide\"\ninstance = { state = \"open\" }\nexpect = { state = \"closed\", reason = \"counted to 100000\" }\n",
    )
    .unwrap();
    let rules = RuleSet::load(dir.path(), DeciderRegistry::new(), limits).unwrap();
    let live = rules
        .evaluate("deal::decide", &input(json!({})))
        .unwrap_err();
    assert!(
        live.message().contains("deadline exceeded (at most 1 ms"),
        "a live decision keeps its deadline: {live}"
    );
    let outcomes = testing::run(&rules);
    assert!(outcomes[0].passed, "{}", outcomes[0].report);
}

#[test]
fn runaway_scripts_hit_a_limit_named_with_its_location() {
    // A roomy deadline, so the other limits are what stop these even in a debug build.
    let counted = RuleLimits {
        operations: 100_000,
        deadline: StdDuration::from_secs(30),
        ..RuleLimits::default()
    };
    let err = eval_error_with(
        "fn decide(instance, payload, actor) {\n    let n = 0;\n    loop { n += 1; }\n}\n",
        counted.clone(),
    );
    // Which token of the loop on line 3 is current when the count runs out may vary.
    assert!(err.starts_with("scripts/deal.rhai:3:"), "{err}");
    assert!(
        err.ends_with(": function `decide`: operation limit exceeded (at most 100000 operations per evaluation)"),
        "{err}"
    );
    let slow = RuleLimits {
        operations: u64::MAX,
        deadline: StdDuration::from_millis(50),
        ..RuleLimits::default()
    };
    let err = eval_error_with(
        "fn decide(instance, payload, actor) {\n    loop { }\n}\n",
        slow,
    );
    assert!(
        err.starts_with("scripts/deal.rhai:2:5: function `decide`: deadline exceeded (at most 50 ms per evaluation)"),
        "{err}"
    );
    let err = eval_error_with(
        "fn deep(n) { deep(n + 1) }\nfn decide(instance, payload, actor) {\n    deep(0)\n}\n",
        counted.clone(),
    );
    assert!(
        err.contains("function `decide`: call depth limit exceeded (at most 32 nested calls)"),
        "{err}"
    );
    let err = eval_error_with(
        "fn decide(instance, payload, actor) {\n    let s = \"x\";\n    loop { s += s; }\n}\n",
        counted.clone(),
    );
    assert!(err.starts_with("scripts/deal.rhai:3:"), "{err}");
    assert!(
        err.contains(
            ": function `decide`: size limit exceeded: Length of string (strings up to 65536 bytes"
        ),
        "{err}"
    );
    let err = eval_error_with(
        "fn decide(instance, payload, actor) {\n    let a = [];\n    loop { a.push(1); }\n}\n",
        counted,
    );
    assert!(err.contains("size limit exceeded"), "{err}");
}

#[test]
fn broken_scripts_are_refused_at_load_with_their_position() {
    let (dir, rules) = rule_set("fn decide(instance, payload, actor) {\n    let x = ;\n}\n");
    let err = rules
        .err()
        .unwrap()
        .to_string()
        .replace(&dir.path().display().to_string(), "RULES");
    assert!(
        err.starts_with("scripts/deal.rhai:2:13: syntax error: "),
        "{err}"
    );

    let (dir, rules) =
        rule_set("fn decide(instance, payload) { #{ state: \"open\", reason: \"x\" } }\n");
    let err = rules
        .err()
        .unwrap()
        .to_string()
        .replace(&dir.path().display().to_string(), "RULES");
    assert_eq!(
        err,
        "definitions/deal.toml:15:11: command `decide`: decider `deal::decide`: function `decide` in scripts/deal.rhai takes 2 parameter(s); a decider takes 3: (instance, payload, actor)"
    );

    let (dir, rules) = rule_set("fn decided(instance, payload, actor) { 1 }\n");
    let err = rules
        .err()
        .unwrap()
        .to_string()
        .replace(&dir.path().display().to_string(), "RULES");
    assert!(err.starts_with("definitions/deal.toml:15:11: command `decide`: decider `deal::decide` is not registered; registered deciders: builtin.merge_payload, deal::decided"), "{err}");

    let (_, rules) = rule_set("fn decide(instance, payload, actor) { eval(\"1\") }\n");
    assert!(
        rules.err().unwrap().to_string().contains("syntax error"),
        "eval is not available"
    );
    let (_, rules) = rule_set("import \"os\" as os;\nfn decide(instance, payload, actor) { 1 }\n");
    assert!(
        rules
            .err()
            .unwrap()
            .to_string()
            .contains("scripts/deal.rhai:1:1: syntax error"),
        "import is not available"
    );
}

#[test]
fn runtime_errors_and_bad_results_name_script_function_and_position() {
    assert_eq!(
        eval_error("fn decide(instance, payload, actor) {\n    instance.data.missing\n}\n"),
        "scripts/deal.rhai:2:19: function `decide`: Property not found: missing"
    );
    // Strict variables: an unknown variable is refused when the rule set loads.
    let (dir, rules) = rule_set("fn decide(instance, payload, actor) {\n    undefined_var\n}\n");
    let err = rules.err().unwrap().0[0]
        .to_string()
        .replace(&dir.path().display().to_string(), "RULES");
    assert_eq!(
        err,
        "scripts/deal.rhai:2:5: syntax error: Undefined variable: undefined_var"
    );
    assert_eq!(
        eval_error("fn decide(instance, payload, actor) { 42 }\n"),
        "scripts/deal.rhai: function `decide` returned an invalid decision: expected a map #{ state, reason, changes, effects }, got 42"
    );
    assert_eq!(
        eval_error("fn decide(instance, payload, actor) { #{ state: \"closed\" } }\n"),
        "scripts/deal.rhai: function `decide` returned an invalid decision: `reason` is missing"
    );
    assert_eq!(
        eval_error("fn decide(instance, payload, actor) { #{ state: \"closed\", reason: \"r\", effects: [#{ launch: 1 }] } }\n"),
        "scripts/deal.rhai: function `decide` returned an invalid decision: effects[0]: an effect needs one of `start`, `update`, `counter`, `balance`, `job` or `send`"
    );
    assert_eq!(
        eval_error("fn decide(instance, payload, actor) { #{ state: \"closed\", reason: \"r\", effects: [#{ counter: \"uses\", key: \"k\", give_back: true, limit: 3 }] } }\n"),
        "scripts/deal.rhai: function `decide` returned an invalid decision: effects[0]: `limit` does not go with `give_back`; it takes counter and key"
    );
    assert_eq!(
        eval_error("fn decide(instance, payload, actor) { #{ state: \"closed\", reason: \"r\", effects: [#{ send: \"win\", to: \"uncle\" }] } }\n"),
        "scripts/deal.rhai: function `decide` returned an invalid decision: effects[0]: `to` must be \"parent\", \"root\" or an instance id, got \"uncle\""
    );
}

#[test]
fn money_crosses_the_boundary_exactly_and_rounding_helpers_work() {
    let (_dir, rules) = rule_set(
        r#"
fn decide(instance, payload, actor) {
    let big = decimal(instance.data.big);
    let small = decimal(instance.data.small);
    #{
        state: "open",
        reason: "echo",
        changes: #{
            big: big, small: small, sum: big + small,
            third: decimal(1) / decimal(3),
            half_up: round_half_up(decimal("2.345"), 2), bankers: round_bankers(decimal("2.345"), 2),
            yen: round_currency(decimal("1234.5"), "JPY"), dinar: round_currency(decimal("1.23456"), "KWD", "bankers"),
            literal: 0.1 + 0.2,
        },
    }
}
"#,
    );
    let rules = rules.unwrap();
    let (_, out) = rules
        .evaluate(
            "deal::decide",
            &input(json!({ "big": "1234567890123.4567890123", "small": "0.30" })),
        )
        .unwrap();
    let c = &out["changes"];
    assert_eq!(c["big"], "1234567890123.4567890123");
    assert_eq!(c["small"], "0.30");
    assert_eq!(c["sum"], "1234567890123.7567890123");
    assert_eq!(c["third"], "0.3333333333333333333333333333");
    assert_eq!(c["half_up"], "2.35");
    assert_eq!(c["bankers"], "2.34");
    assert_eq!(c["yen"], "1235");
    assert_eq!(c["dinar"], "1.235");
    assert_eq!(c["literal"], "0.3", "literals are decimals, not floats");
    let err = rules
        .evaluate(
            "deal::decide",
            &input(json!({ "big": "12,5", "small": "0" })),
        )
        .unwrap_err()
        .message()
        .to_string();
    assert!(err.contains("decimal(\"12,5\"): not a decimal"), "{err}");
}

#[test]
fn time_comes_from_the_engine_clock() {
    let (_dir, rules) = rule_set(
        "fn decide(instance, payload, actor) {\n    #{ state: \"open\", reason: now(), changes: #{ today: today(), days: days_between(\"2025-04-01\", today()), due: add_days(today(), 30) } }\n}\n",
    );
    let rules = rules.unwrap();
    for _ in 0..2 {
        let (decision, out) = rules.evaluate("deal::decide", &input(json!({}))).unwrap();
        assert_eq!(decision.reason, "2026-04-01T09:30:00Z");
        assert_eq!(
            out["changes"],
            json!({ "today": "2026-04-01", "days": 365, "due": "2026-05-01" })
        );
    }
    let (_dir, rules) = rule_set(
        "fn decide(instance, payload, actor) { #{ state: \"open\", reason: `${timestamp()}` } }\n",
    );
    let err = rules
        .unwrap()
        .evaluate("deal::decide", &input(json!({})))
        .unwrap_err()
        .message()
        .to_string();
    assert!(
        err.contains("Function not found: timestamp"),
        "the real clock is out of reach: {err}"
    );
}

#[tokio::test]
async fn a_rhai_decider_decides_through_the_engine_with_provenance_and_failures_change_nothing() {
    let (_dir, rules) = rule_set(
        r#"
fn decide(instance, payload, actor) {
    let amount = decimal(instance.data.amount);
    if amount > decimal("1000") { throw `amount ${amount} is over the limit`; }
    let fee = round_half_up(amount * decimal("0.0825"), 2);
    #{ state: "closed", reason: `amount ${amount} ≤ 1000 → closed with fee ${fee}`, changes: #{ fee: fee } }
}
"#,
    );
    let rules = rules.unwrap();
    let version = rules.version.clone();
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 4, 1, 9, 30, 0).unwrap(),
    ));
    let mut config = EngineConfig::in_memory();
    config.clock = clock;
    let engine = Engine::open(config, rules.definitions, rules.deciders)
        .await
        .unwrap();
    let rep = Actor::new("rep", &["sales_rep"]);
    let start = |key: &str, amount: &str| {
        StartRequest::new("deal", rep.clone(), format!("s-{key}"))
            .business_key(key)
            .data(json!({ "amount": amount }))
    };
    let send = |id, rid: &str| CommandRequest::new(id, "decide", rep.clone(), rid);

    let id = engine.start(start("D-1", "16.99")).await.unwrap().instance;
    let out = engine.send(send(id, "d-1")).await.unwrap();
    assert_eq!(out.state, "closed");
    assert_eq!(out.reason, "amount 16.99 ≤ 1000 → closed with fee 1.40");
    assert_eq!(engine.get(id).await.unwrap().data["fee"], "1.40");
    let entry = engine.history(id, 1, 1).await.unwrap().remove(0);
    let p = serde_json::to_value(
        entry
            .provenance
            .expect("a rule decision records its provenance"),
    )
    .unwrap();
    assert_eq!(p["rule_set"], version.as_str());
    assert!(p["script"].as_str().unwrap().ends_with("scripts/deal.rhai"));
    assert_eq!(p["function"], "decide");
    assert!(p["reference_data"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        p["inputs"]["instance"]["data"],
        json!({ "amount": "16.99" })
    );
    assert_eq!(
        p["inputs"]["actor"],
        json!({ "id": "rep", "roles": ["sales_rep"] })
    );
    assert_eq!(p["inputs"]["now"], "2026-04-01T09:30:00Z");
    assert_eq!(p["outputs"]["changes"], json!({ "fee": "1.40" }));
    assert_eq!(entry.reason, "amount 16.99 ≤ 1000 → closed with fee 1.40");

    let id = engine
        .start(start("D-2", "5000.00"))
        .await
        .unwrap()
        .instance;
    let before = engine.get(id).await.unwrap();
    let err = engine.send(send(id, "d-2")).await.unwrap_err();
    assert_eq!(err.code(), "DECISION_FAILED");
    assert!(
        err.to_string().contains(
            "scripts/deal.rhai:4:35: function `decide`: amount 5000.00 is over the limit"
        ),
        "{err}"
    );
    assert_eq!(
        engine.get(id).await.unwrap(),
        before,
        "a failing script changes nothing"
    );
    assert!(engine.store().request("d-2").unwrap().is_none());
}

#[test]
fn an_error_inside_a_helper_is_reported_at_the_helpers_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["definitions", "scripts/lib"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("definitions/deal.toml"), DEFINITION).unwrap();
    std::fs::write(
        dir.path().join("scripts/deal.rhai"),
        "// the decider\nfn decide(instance, payload, actor) {\n    let fee = fee_of(instance.data);\n    #{ state: \"closed\", reason: `fee ${fee}` }\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("scripts/lib/fees.rhai"),
        "// helpers\n\nfn fee_of(data) {\n    data.missing + 1\n}\n\nfn deep(n) {\n    if n == 0 { throw \"bottom\" }\n    deep(n - 1)\n}\n",
    )
    .unwrap();
    let rules = RuleSet::load(dir.path(), DeciderRegistry::new(), RuleLimits::default()).unwrap();
    let e = rules
        .evaluate("deal::decide", &input(json!({})))
        .unwrap_err();
    assert!(
        e.message()
            .starts_with("scripts/lib/fees.rhai:4:10: function `decide`"),
        "{}",
        e.message()
    );
    let DecideError::Failed {
        location: Some(location),
        ..
    } = e
    else {
        panic!("a failure with a location")
    };
    assert_eq!(
        (location.file.as_str(), location.line),
        ("scripts/lib/fees.rhai", 4)
    );
    // A limit hit inside a helper (found by replaying with the locator) is placed there too.
    std::fs::write(
        dir.path().join("scripts/deal.rhai"),
        "fn decide(instance, payload, actor) {\n    deep(1000)\n}\n",
    )
    .unwrap();
    let rules = RuleSet::load(dir.path(), DeciderRegistry::new(), RuleLimits::default()).unwrap();
    let e = rules
        .evaluate("deal::decide", &input(json!({})))
        .unwrap_err();
    assert!(
        e.message().starts_with("scripts/lib/fees.rhai:"),
        "{}",
        e.message()
    );
    assert!(e.message().contains("call depth limit"), "{}", e.message());
}
