//! Fuzz targets (see `switchyard_core::fuzz`): definition parsing, rule-set loading (and
//! running the loaded rules), payload schema validation, strict JSON parsing and JSON ↔ Rhai
//! conversion. Each starts from its committed corpus in `tests/fuzz-corpus/` and runs for
//! `SWITCHYARD_FUZZ_SECONDS` (default 5); any panic fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_core::rules::{testing, to_dynamic, to_json};
use switchyard_core::*;

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(name)
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules")
}

/// The shipped rule set's files, by relative path.
fn shipped_files() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for sub in ["definitions", "scripts", "scripts/lib", "data", "tests"] {
        for entry in std::fs::read_dir(shipped().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let name = path.file_name().unwrap().to_string_lossy();
                files.insert(
                    format!("{sub}/{name}"),
                    std::fs::read_to_string(&path).unwrap(),
                );
            }
        }
    }
    files
}

/// Where the first byte of a rule-files input puts the rest (the corpus seeds say the same).
const SLOTS: [&str; 9] = [
    "definitions/quote.toml",
    "definitions/lead.toml",
    "scripts/quote.rhai",
    "scripts/lib/pricing.rhai",
    "scripts/lib/approval.rhai",
    "data/prices.json",
    "data/approval.json",
    "data/pricing.json",
    "tests/quote.toml",
];

fn tight_limits() -> RuleLimits {
    RuleLimits {
        operations: 200_000,
        deadline: Duration::from_millis(20),
        ..RuleLimits::default()
    }
}

#[test]
fn fuzz_definition_parsing() {
    let mut deciders = DeciderRegistry::new();
    for name in [
        "order.confirm",
        "order.note",
        "approval.escalate",
        "quote::submit",
    ] {
        deciders.register(name, |_: &DecisionContext<'_>| {
            Err(DecideError::new("unused"))
        });
    }
    fuzz::run("definitions", &corpus("definitions"), |input| {
        let text = String::from_utf8_lossy(input).into_owned();
        let _ = DefinitionSet::from_sources(&[("fuzz.toml".into(), text)], &deciders);
    });
}

#[test]
fn fuzz_rule_set_loading_and_running() {
    let base = shipped_files();
    fuzz::run("rule-files", &corpus("rule-files"), |input| {
        let Some((slot, text)) = input.split_first() else {
            return;
        };
        let mut files = base.clone();
        files.insert(
            SLOTS[*slot as usize % SLOTS.len()].to_string(),
            String::from_utf8_lossy(text).into_owned(),
        );
        if let Ok(rules) = RuleSet::from_files(files, DeciderRegistry::new(), tight_limits()) {
            let _ = testing::run_within(&rules, Duration::from_millis(200));
        }
    });
}

#[test]
fn fuzz_payload_validation() {
    let rules = RuleSet::load(&shipped(), DeciderRegistry::new(), RuleLimits::default()).unwrap();
    let schemas: Vec<_> = rules
        .definitions
        .iter()
        .flat_map(|d| {
            std::iter::once(d.start.payload.clone())
                .chain(d.commands.values().map(|c| c.payload.clone()))
        })
        .collect();
    fuzz::run("payloads", &corpus("payloads"), |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        if let Ok(value) = json::from_str(text) {
            for schema in &schemas {
                let _ = schema.validate(&value);
            }
        }
    });
}

#[test]
fn fuzz_json_and_rhai_conversion() {
    fuzz::run("json", &corpus("json"), |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        let strict = json::from_str(text);
        let loose = serde_json::from_str::<serde_json::Value>(text);
        // The strict parser accepts a subset of what serde_json accepts (no duplicate keys).
        if strict.is_ok() {
            assert_eq!(strict.as_ref().ok(), loose.as_ref().ok());
        }
        if let Ok(value) = loose {
            let back = to_json(&to_dynamic(&value), "value").expect("JSON values convert back");
            assert_same_shape(&value, &back);
        }
    });
}

/// Strings, whole numbers, booleans, nulls, lists and maps come back as they were; other
/// numbers come back as decimal strings (never through floating point).
fn assert_same_shape(a: &serde_json::Value, b: &serde_json::Value) {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(n), V::String(_)) if n.as_i64().is_none() => {}
        // Numbers keep their text in JSON; a whole number comes back as Rhai's integer
        // writes it (`-0` as `0`).
        (V::Number(n), V::Number(m)) if n.as_i64().is_some() => assert_eq!(n.as_i64(), m.as_i64()),
        (V::Array(x), V::Array(y)) => {
            assert_eq!(x.len(), y.len());
            for (x, y) in x.iter().zip(y) {
                assert_same_shape(x, y);
            }
        }
        (V::Object(x), V::Object(y)) => {
            assert_eq!(x.len(), y.len());
            for (k, v) in x {
                assert_same_shape(v, &y[k]);
            }
        }
        (a, b) => assert_eq!(a, b),
    }
}
