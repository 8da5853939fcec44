//! Rule evaluation with the compiled rule set cached (criterion):
//! - `approval_threshold`: `approval::route`, the approval-threshold decision on its own;
//! - `pricing_20_lines`: `quote::submit` on a 20-line quote — price-list lookup, a quantity
//!   tier, a promotion, tax exclusive, rounding per line — plus its approval routing.
//!
//! `cargo bench -p switchyard-benches --bench rules`

use std::path::Path;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use switchyard_core::rules::DecisionInput;
use switchyard_core::{Balances, Counters, DeciderRegistry, RuleLimits, RuleSet};

fn rules() -> RuleSet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    RuleSet::load(&dir, DeciderRegistry::new(), RuleLimits::default())
        .expect("the shipped rules load")
}

fn input(data: serde_json::Value) -> DecisionInput {
    DecisionInput {
        instance: json!({ "id": "00000000-0000-0000-0000-000000000000", "definition": "quote", "version": 1, "state": "draft", "business_key": "Q-1", "data": data, "parent": null }),
        payload: json!({}),
        actor: json!({ "id": "rep-1", "roles": ["sales_rep"] }),
        now: Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap(),
        counters: Counters::default(),
        balances: Balances::default(),
    }
}

fn bench(c: &mut Criterion) {
    let rules = rules();
    let route =
        input(json!({ "pricing": { "net": "12000.00", "currency": "EUR", "discount_pct": "18" } }));
    let (decision, _) = rules.evaluate("approval::route", &route).unwrap();
    assert_eq!(decision.next_state, "pending_approval");
    c.bench_function("approval_threshold", |b| {
        b.iter(|| rules.evaluate("approval::route", &route).unwrap())
    });

    // 20 lines; every fourth line reaches the 10-unit quantity tier; a 15% promotion.
    let lines: Vec<_> = (1..=20)
        .map(|i| json!({ "sku": format!("SKU-{i:03}"), "quantity": if i % 4 == 0 { 12 } else { 2 } }))
        .collect();
    let quote = input(
        json!({ "customer": "BETA", "currency": "EUR", "promotion": "SPRING15", "lines": lines }),
    );
    let (decision, out) = rules.evaluate("quote::submit", &quote).unwrap();
    assert_eq!(
        out["changes"]["pricing"]["lines"].as_array().unwrap().len(),
        20
    );
    assert_eq!(out["changes"]["pricing"]["lines"][3]["tier_pct"], "5");
    assert!(!decision.reason.is_empty());
    c.bench_function("pricing_20_lines", |b| {
        b.iter(|| rules.evaluate("quote::submit", &quote).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
