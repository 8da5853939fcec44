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
    assert!(out.contains("is valid: 2 definition(s)"), "{out}");

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
}
