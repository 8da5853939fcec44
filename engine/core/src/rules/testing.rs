//! Example-based tests for rule scripts, shipped beside them in `tests/*.toml`:
//!
//! ```toml
//! [[test]]
//! name = "a quote below 5,000 is approved automatically"
//! function = "quote::submit"                  # the decider, script::function
//! now = "2026-04-01T09:00:00Z"                # optional: the engine clock (default 2026-01-01T00:00:00Z)
//! actor = { id = "rep-1", roles = ["sales_rep"] }   # optional
//! payload = {}                                # optional
//! instance = { state = "draft", data = { net = "4999.99" } }   # also id, version, business_key, definition, parent
//! counters = { coupon_uses = { VIP20 = 2 } }  # optional: what counter_value reads (else 0)
//! balances = { uninvoiced = { "ACME/EUR" = "7000.00" } }  # optional: what balance_value reads
//! expect = { state = "approved", reason = "net 4999.99 < 5000 → approved" }
//! # expect may hold state, reason, changes and effects. `changes` is matched as a subset:
//! # only the keys given are compared (maps recursively, lists whole), and "(removed)" stands
//! # for a key the change removes (TOML has no null). Or, instead of expect:
//! # expect_error = "a substring of the error"
//!
//! [[test]]
//! name = "a quote waiting for approval tells the sales managers, in their hours"
//! function = "notify::route"                  # the notification router
//! now = "2026-03-27T17:30:00Z"
//! event = { type = "switchyard.instance.transitioned", definition = { name = "quote" }, to_state = "pending_approval", data = {} }
//! expect = { notifications = [{ channel = "email", to = "mia@example.com", not_before = "2026-03-30T05:00:00Z" }] }
//! # each message is matched as a subset (only the keys given), and the list must have as
//! # many messages as given; the messages are also checked as the engine checks them.
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use toml::Spanned;

use super::{position, DecisionInput, RuleSet};
use crate::decider::{Balances, Counters};
use crate::definition::DefinitionError;

/// One parsed test.
#[derive(Clone, Debug)]
pub struct RuleTest {
    /// Its name.
    pub name: String,
    /// The file it is in.
    pub file: String,
    /// Its line.
    pub line: usize,
    /// The decider it calls.
    pub function: String,
    /// The input.
    pub input: DecisionInput,
    /// What must come out.
    pub expect: Expect,
}

/// What a test expects.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// A decision; only the given parts are compared.
    Decision(serde_json::Map<String, Value>),
    /// An error containing this text.
    Error(String),
}

/// The result of one test.
#[derive(Clone, Debug, PartialEq)]
pub struct TestOutcome {
    /// `file:line name (function)`.
    pub title: String,
    /// The test file.
    pub file: String,
    /// The line its `[[test]]` starts on.
    pub line: usize,
    /// Whether it passed.
    pub passed: bool,
    /// On failure, what differs, readably.
    pub report: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    test: Vec<Spanned<TestSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSpec {
    name: String,
    function: String,
    now: Option<String>,
    actor: Option<toml::Value>,
    payload: Option<toml::Value>,
    instance: Option<toml::Value>,
    /// For the notification router: the change (a feed event's data plus `type`, `owner`).
    event: Option<toml::Value>,
    /// Counter values `counter_value` reads: `{ coupon_uses = { VIP20 = 2 } }`.
    #[serde(default)]
    counters: BTreeMap<String, BTreeMap<String, u64>>,
    /// Balance values `balance_value` reads, as decimal strings:
    /// `{ uninvoiced = { "ACME/EUR" = "7000.00" } }`.
    #[serde(default)]
    balances: BTreeMap<String, BTreeMap<String, String>>,
    expect: Option<toml::Table>,
    expect_error: Option<String>,
}

/// A test's `balances`, each value parsed as an exact decimal.
pub(crate) fn given_balances(
    given: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<BTreeMap<String, BTreeMap<String, rust_decimal::Decimal>>, String> {
    given
        .iter()
        .map(|(balance, keys)| {
            let keys = keys
                .iter()
                .map(|(key, value)| {
                    value.parse().map(|d| (key.clone(), d)).map_err(|_| {
                        format!("`balances.{balance}.{key}` = {value:?} is not a decimal string")
                    })
                })
                .collect::<Result<_, String>>()?;
            Ok((balance.clone(), keys))
        })
        .collect()
}

fn json_of(v: toml::Value) -> Value {
    serde_json::to_value(v).expect("TOML values are JSON values")
}

/// Parses a test file.
pub fn parse(path: &Path, text: &str) -> Result<Vec<RuleTest>, Vec<DefinitionError>> {
    let at = |offset: usize, message: String| {
        let (line, column) = position(text, offset);
        DefinitionError {
            file: path.display().to_string(),
            line,
            column,
            message,
        }
    };
    let file: TestFile = toml::from_str(text).map_err(|e| {
        vec![at(
            e.span().map_or(0, |s| s.start),
            e.message().trim().replace('\n', "; "),
        )]
    })?;
    let mut tests = Vec::new();
    let mut problems = Vec::new();
    for spanned in file.test {
        let offset = spanned.span().start;
        let spec = spanned.into_inner();
        let now = match &spec.now {
            None => Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            Some(t) => match DateTime::parse_from_rfc3339(t) {
                Ok(t) => t.with_timezone(&Utc),
                Err(_) => {
                    problems.push(at(
                        offset,
                        format!(
                            "test `{}`: `now` = \"{t}\" is not an RFC 3339 time",
                            spec.name
                        ),
                    ));
                    continue;
                }
            },
        };
        let balances = match given_balances(&spec.balances) {
            Ok(b) => b,
            Err(m) => {
                problems.push(at(offset, format!("test `{}`: {m}", spec.name)));
                continue;
            }
        };
        let expect = match (spec.expect, spec.expect_error) {
            (Some(e), None) => {
                let map = match json_of(toml::Value::Table(e)) {
                    Value::Object(m) => m,
                    _ => unreachable!("a table is an object"),
                };
                if is_router(&spec.function) {
                    if let Some(k) = map.keys().find(|k| k.as_str() != "notifications") {
                        problems.push(at(
                            offset,
                            format!(
                                "test `{}`: `expect.{k}`: a routing test expects `notifications`",
                                spec.name
                            ),
                        ));
                        continue;
                    }
                } else if let Some(k) = map
                    .keys()
                    .find(|k| !matches!(k.as_str(), "state" | "reason" | "changes" | "effects"))
                {
                    problems.push(at(offset, format!("test `{}`: `expect.{k}` is not a part of a decision; use state, reason, changes, effects", spec.name)));
                    continue;
                }
                Expect::Decision(map)
            }
            (None, Some(e)) => Expect::Error(e),
            _ => {
                problems.push(at(
                    offset,
                    format!(
                        "test `{}`: give exactly one of `expect` or `expect_error`",
                        spec.name
                    ),
                ));
                continue;
            }
        };
        if is_router(&spec.function) != spec.event.is_some() {
            problems.push(at(
                offset,
                format!(
                    "test `{}`: `event` goes with function = \"{}\", and only with it",
                    spec.name,
                    router_name()
                ),
            ));
            continue;
        }
        let mut instance = json!({
            "id": "00000000-0000-0000-0000-000000000000",
            "definition": spec.function.split("::").next().unwrap_or_default(),
            "version": 1,
            "state": "",
            "business_key": "TEST",
            "data": {},
            "parent": null,
            "root": null,
        });
        if let Some(Value::Object(given)) = spec.instance.map(json_of) {
            for (k, v) in given {
                instance[k] = v;
            }
        }
        tests.push(RuleTest {
            name: spec.name,
            file: path.display().to_string(),
            line: position(text, offset).0,
            function: spec.function,
            input: DecisionInput {
                counters: Counters::given(spec.counters),
                balances: Balances::given(balances),
                instance,
                payload: spec
                    .event
                    .or(spec.payload)
                    .map(json_of)
                    .unwrap_or_else(|| json!({})),
                actor: spec
                    .actor
                    .map(json_of)
                    .unwrap_or_else(|| json!({ "id": "test", "roles": [] })),
                now,
            },
            expect,
        });
    }
    if problems.is_empty() {
        Ok(tests)
    } else {
        Err(problems)
    }
}

/// Runs every test of the rule set.
pub fn run(rules: &RuleSet) -> Vec<TestOutcome> {
    rules.tests.iter().map(|t| run_one(rules, t)).collect()
}

/// Runs the rule set's tests until `deadline` has passed in all; each test left after that
/// fails unrun, saying so (a rule set whose tests take that long is refused rather than
/// tying up the rule pool).
pub fn run_within(rules: &RuleSet, deadline: std::time::Duration) -> Vec<TestOutcome> {
    let started = std::time::Instant::now();
    rules
        .tests
        .iter()
        .map(|t| {
            if started.elapsed() > deadline {
                TestOutcome {
                    title: format!("{}:{} {} ({})", t.file, t.line, t.name, t.function),
                    file: t.file.clone(),
                    line: t.line,
                    passed: false,
                    report: format!(
                        "  not run: the rule set's tests took longer than {} ms in all\n",
                        deadline.as_millis()
                    ),
                }
            } else {
                run_one(rules, t)
            }
        })
        .collect()
}

/// What `expect_error` is matched against: a refusal as `CODE: message`, a failure's message.
fn error_text(error: &crate::decider::DecideError) -> String {
    match error {
        crate::decider::DecideError::Refused { code, message } => format!("{code}: {message}"),
        other => other.message().to_string(),
    }
}

/// Whether `function` is the notification router, `notify::route`.
pub(crate) fn is_router(function: &str) -> bool {
    function == router_name()
}

fn router_name() -> String {
    format!("{}::{}", super::NOTIFY_SCRIPT, super::NOTIFY_FUNCTION)
}

/// A routing test: the router's messages, checked as the engine checks them, matched
/// message by message (each a subset).
fn run_routing(rules: &RuleSet, test: &RuleTest) -> String {
    let event = &test.input.payload;
    let result = rules
        .route_notifications(event, test.input.now, super::TEST_DEADLINE_MIN)
        .unwrap_or_else(|| {
            Err(crate::decider::DecideError::new(
                "this rule set has no scripts/notify.rhai",
            ))
        })
        .and_then(|out| {
            crate::notification::parse_routed(&out, &json!({}))
                .map(|_| out)
                .map_err(crate::decider::DecideError::new)
        });
    match (&test.expect, result) {
        (Expect::Error(want), Err(e)) if error_text(&e).contains(want.as_str()) => String::new(),
        (Expect::Error(want), Err(e)) => format!(
            "  error: expected one containing {want:?}\n         got {:?}\n",
            error_text(&e)
        ),
        (Expect::Error(want), Ok(out)) => format!(
            "  expected an error containing {want:?}, got messages:\n{}\n",
            indent(&out)
        ),
        (Expect::Decision(_), Err(e)) => {
            format!("  expected messages, got an error:\n    {}\n", e.message())
        }
        (Expect::Decision(want), Ok(out)) => {
            let expected = want.get("notifications").cloned().unwrap_or(json!([]));
            let (Value::Array(e), Value::Array(a)) = (&expected, &out) else {
                return format!("  notifications:\n{}", diff(&expected, &out));
            };
            let matches = e.len() == a.len() && e.iter().zip(a).all(|(e, a)| subset(e, a));
            if matches {
                String::new()
            } else {
                let shown: Vec<Value> = a
                    .iter()
                    .enumerate()
                    .map(|(i, m)| e.get(i).map_or_else(|| m.clone(), |e| restrict(m, e)))
                    .collect();
                format!(
                    "  notifications:\n{}",
                    diff(&removed_as_null(&expected), &Value::Array(shown))
                )
            }
        }
    }
}

fn run_one(rules: &RuleSet, test: &RuleTest) -> TestOutcome {
    let title = format!(
        "{}:{} {} ({})",
        test.file, test.line, test.name, test.function
    );
    if is_router(&test.function) {
        let report = run_routing(rules, test);
        return TestOutcome {
            title,
            file: test.file.clone(),
            line: test.line,
            passed: report.is_empty(),
            report,
        };
    }
    let result = rules.evaluate_test(&test.function, &test.input);
    let mut report = String::new();
    match (&test.expect, result) {
        (Expect::Error(want), Err(e)) if error_text(&e).contains(want.as_str()) => {}
        (Expect::Error(want), Err(e)) => {
            report = format!(
                "  error: expected one containing {want:?}\n         got {:?}\n",
                error_text(&e)
            )
        }
        (Expect::Error(want), Ok((_, outputs))) => {
            report = format!(
                "  expected an error containing {want:?}, got a decision:\n{}\n",
                indent(&outputs)
            )
        }
        (Expect::Decision(_), Err(e)) => {
            report = format!(
                "  expected a decision, got an error:\n    {}\n",
                e.message()
            )
        }
        (Expect::Decision(want), Ok((_, outputs))) => {
            for (key, expected) in want {
                let actual = outputs.get(key).cloned().unwrap_or(Value::Null);
                let matches = if key == "changes" {
                    subset(expected, &actual)
                } else {
                    removed_as_null(expected) == actual
                };
                if !matches {
                    let shown = if key == "changes" {
                        restrict(&actual, expected)
                    } else {
                        actual
                    };
                    report.push_str(&format!(
                        "  {key}:\n{}",
                        diff(&removed_as_null(expected), &shown)
                    ));
                }
            }
        }
    }
    TestOutcome {
        title,
        file: test.file.clone(),
        line: test.line,
        passed: report.is_empty(),
        report,
    }
}

/// TOML has no null: `"(removed)"` in an expectation stands for a key the change removes.
const REMOVED: &str = "(removed)";

fn removed_as_null(v: &Value) -> Value {
    match v {
        Value::String(s) if s == REMOVED => Value::Null,
        Value::Array(items) => Value::Array(items.iter().map(removed_as_null).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), removed_as_null(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether `actual` has every key of `expected` (recursively, for maps) with equal values;
/// other keys of `actual` are ignored. Lists compare whole.
fn subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| subset(v, a.get(k).unwrap_or(&Value::Null))),
        (e, a) => &removed_as_null(e) == a,
    }
}

/// `actual` cut down to the keys `expected` names, so a diff shows only what the test checks.
fn restrict(actual: &Value, expected: &Value) -> Value {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => Value::Object(
            e.iter()
                .map(|(k, ev)| (k.clone(), restrict(a.get(k).unwrap_or(&Value::Null), ev)))
                .collect(),
        ),
        (a, _) => a.clone(),
    }
}

fn indent(v: &Value) -> String {
    serde_json::to_string_pretty(v)
        .unwrap_or_default()
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A line diff of two pretty-printed values: `-` expected only, `+` actual only.
fn diff(expected: &Value, actual: &Value) -> String {
    let e = serde_json::to_string_pretty(expected).unwrap_or_default();
    let a = serde_json::to_string_pretty(actual).unwrap_or_default();
    let (e, a): (Vec<&str>, Vec<&str>) = (e.lines().collect(), a.lines().collect());
    // Longest common subsequence, so unchanged lines line up.
    let mut lcs = vec![vec![0usize; a.len() + 1]; e.len() + 1];
    for i in (0..e.len()).rev() {
        for j in (0..a.len()).rev() {
            lcs[i][j] = if e[i] == a[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < e.len() || j < a.len() {
        if i < e.len() && j < a.len() && e[i] == a[j] {
            out.push_str(&format!("      {}\n", e[i]));
            i += 1;
            j += 1;
        } else if j < a.len() && (i == e.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("    + {}\n", a[j]));
            j += 1;
        } else {
            out.push_str(&format!("    - {}\n", e[i]));
            i += 1;
        }
    }
    out
}
