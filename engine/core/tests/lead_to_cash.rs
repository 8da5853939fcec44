//! The shipped lead and quote configuration (`rules/`), end to end through the engine:
//! DOMAIN.md scenarios 1, 2, 5 and 9 as given/when/then tables, roles, links, coupons, expiry,
//! and one configurability test that changes behaviour by editing rule-set files only.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};
use switchyard_core::store::Store;
use switchyard_core::*;

mod common;
use common::rules_copy;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 9, 0, 0).unwrap()
}

struct World {
    engine: Engine,
    clock: Arc<ManualClock>,
    _rules: tempfile::TempDir,
}

/// The shipped rule set with `edits`, and engine settings on the manual `clock`.
fn setup(
    edits: &[(&str, &str, &str)],
    store: StoreConfig,
    clock: &Arc<ManualClock>,
) -> (tempfile::TempDir, RuleSet, EngineConfig) {
    let rules_dir = rules_copy(edits);
    let rules = RuleSet::load(
        rules_dir.path(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .unwrap();
    let mut config = EngineConfig::new(store);
    config.clock = clock.clone();
    config.background_tasks = false;
    (rules_dir, rules, config)
}

async fn world(edits: &[(&str, &str, &str)], store: StoreConfig, clock: Arc<ManualClock>) -> World {
    let (rules_dir, rules, config) = setup(edits, store, &clock);
    let engine = Engine::open(config, rules.definitions, rules.deciders)
        .await
        .unwrap();
    World {
        engine,
        clock,
        _rules: rules_dir,
    }
}

async fn memory_world(edits: &[(&str, &str, &str)]) -> World {
    world(edits, StoreConfig::Memory, Arc::new(ManualClock::new(t0()))).await
}

fn who(spec: &str) -> Actor {
    // "mia:sales_manager" → actor mia with that role.
    let (id, role) = spec.split_once(':').unwrap();
    Actor::new(id, &[role])
}

impl World {
    async fn quote(&self, key: &str, data: Value) -> InstanceId {
        let mut data = data;
        data["valid_until"] = json!("2026-05-15");
        self.engine
            .start(
                StartRequest::new("quote", who("ana:sales_rep"), format!("start-{key}"))
                    .business_key(key)
                    .data(data),
            )
            .await
            .unwrap()
            .instance
    }

    async fn send(
        &self,
        id: InstanceId,
        actor: &str,
        command: &str,
        payload: Value,
    ) -> Result<CommandOutcome, CommandError> {
        let rid = format!(
            "{id}-{command}-{}",
            self.engine.get(id).await.unwrap().version
        );
        self.engine
            .send(CommandRequest::new(id, command, who(actor), rid).payload(payload))
            .await
    }

    async fn data(&self, id: InstanceId) -> Value {
        self.engine.get(id).await.unwrap().data
    }
}

/// One row of a scenario: when `actor` sends `command`, then the quote is in `state` and the
/// reason reads `reason` (or the command is refused with an error containing `refused`).
struct Step {
    when: (&'static str, &'static str, Value),
    then_state: &'static str,
    then_reason: &'static str,
}

async fn play(w: &World, id: InstanceId, steps: &[Step]) {
    for (n, s) in steps.iter().enumerate() {
        let (actor, command, payload) = &s.when;
        match w.send(id, actor, command, payload.clone()).await {
            Ok(out) => {
                assert_eq!(out.state, s.then_state, "step {n}: {actor} {command}");
                assert_eq!(out.reason, s.then_reason, "step {n}: {actor} {command}");
            }
            Err(e) => {
                assert_eq!(
                    s.then_state, "(refused)",
                    "step {n}: {actor} {command} refused: {e}"
                );
                assert!(e.to_string().contains(s.then_reason), "step {n}: {e}");
            }
        }
    }
}

#[tokio::test]
async fn scenario_1_manager_then_finance_and_a_finance_rejection() {
    let w = memory_world(&[]).await;
    // Given a quote of 12,000.00 net after an 18% discount
    let id = w.quote("Q-1", json!({ "customer": "BETA", "currency": "EUR", "discount_pct": "18", "lines": [{ "sku": "CONSULT-PKG", "quantity": 1 }] })).await;
    play(&w, id, &[
        Step { when: ("ana:sales_rep", "submit", json!({})), then_state: "pending_approval",
               then_reason: "discount 18.0000% > 10% → sales_manager; net 12000.00 > 10000 → finance" },
        Step { when: ("fin:finance", "approve", json!({})), then_state: "(refused)",
               then_reason: "the current approval step needs [\"sales_manager\"]; fin holds none of those roles" },
        Step { when: ("ana:sales_rep", "approve", json!({})), then_state: "(refused)",
               then_reason: "it needs one of the roles: sales_manager, finance" },
        Step { when: ("mia:sales_manager", "approve", json!({})), then_state: "pending_approval",
               then_reason: "sales_manager approved (mia); waiting for [\"finance\"]" },
        Step { when: ("fin:finance", "reject", json!({ "reason": "margin too thin" })), then_state: "draft",
               then_reason: "rejected by fin: margin too thin" },
    ]).await;
    // Then the rep and the manager are told
    assert_eq!(
        w.data(id).await["last_rejection"]["notify"],
        json!(["owner", "sales_manager"])
    );
    assert!(
        w.engine.get(id).await.unwrap().timers.is_empty(),
        "back in draft, no SLA timers"
    );
}

#[tokio::test]
async fn scenario_2_the_auto_approve_threshold_is_strict() {
    let w = memory_world(&[]).await;
    let below = w.quote("Q-2a", json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "FIXED-4999", "quantity": 1 }] })).await;
    let at = w.quote("Q-2b", json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "FIXED-5000", "quantity": 1 }] })).await;
    play(
        &w,
        below,
        &[Step {
            when: ("ana:sales_rep", "submit", json!({})),
            then_state: "approved",
            then_reason: "net 4999.99 < 5000 and discount 0% ≤ 10% → approved automatically",
        }],
    )
    .await;
    play(
        &w,
        at,
        &[Step {
            when: ("ana:sales_rep", "submit", json!({})),
            then_state: "pending_approval",
            then_reason: "net 5000.00 ≥ 5000 → sales_manager",
        }],
    )
    .await;
}

#[tokio::test]
async fn scenario_5_tax_rounded_per_line_or_on_the_total() {
    let lines = json!([{ "sku": "SEAL-KIT", "quantity": 1 }, { "sku": "SEAL-KIT", "quantity": 1 }, { "sku": "SEAL-KIT", "quantity": 1 }]);
    for (rounding, tax, total) in [("per_line", "4.20", "55.17"), ("total", "4.21", "55.18")] {
        let w = memory_world(&[(
            "data/pricing.json",
            "\"rounding\": \"per_line\"",
            &format!("\"rounding\": \"{rounding}\""),
        )])
        .await;
        let id = w.quote("Q-5", json!({ "customer": "BETA", "currency": "EUR", "discount_pct": "15", "lines": lines })).await;
        w.send(id, "ana:sales_rep", "submit", json!({}))
            .await
            .unwrap();
        let pricing = &w.data(id).await["pricing"];
        for line in pricing["lines"].as_array().unwrap() {
            if rounding == "per_line" {
                assert_eq!(line["net"], "16.99", "each line nets 16.99");
            }
        }
        assert_eq!(pricing["net"], "50.97", "{rounding}");
        assert_eq!(pricing["tax"], tax, "{rounding}");
        assert_eq!(pricing["total"], total, "{rounding}");
    }
}

#[tokio::test]
async fn scenario_9_an_untouched_approval_escalates_then_is_denied_across_a_restart() {
    let store_dir = tempfile::tempdir().unwrap();
    let mut store = SledConfig::new(store_dir.path());
    store.durability = Durability::Flush;
    let clock = Arc::new(ManualClock::new(t0()));
    let w = world(&[], StoreConfig::Sled(store.clone()), clock.clone()).await;
    // Given a quote waiting for the sales manager since 2026-04-01 09:00
    let id = w.quote("Q-9", json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "FIXED-5000", "quantity": 1 }] })).await;
    w.send(id, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap();
    // When 48 hours pass untouched, then it escalates and still waits
    w.clock.advance(Duration::hours(48));
    assert_eq!(w.engine.fire_due_timers().await.unwrap(), 1);
    let q = w.engine.get(id).await.unwrap();
    assert_eq!(q.state, "pending_approval");
    assert_eq!(q.data["approval"]["escalated"], true);
    assert_eq!(
        w.engine.history(id, 2, 1).await.unwrap()[0].reason,
        "no decision by [\"sales_manager\"] within 48h → escalated to sales_director"
    );
    // and the engine restarts in between
    w.engine.shutdown().await;
    drop(w);
    clock.set(t0() + Duration::hours(168));
    let w = world(&[], StoreConfig::Sled(store), clock.clone()).await;
    // When the longer limit (7 days) passes, then the approval is denied
    assert_eq!(w.engine.fire_due_timers().await.unwrap(), 1);
    let q = w.engine.get(id).await.unwrap();
    assert_eq!(q.state, "draft");
    assert_eq!(
        w.engine.history(id, 3, 1).await.unwrap()[0].reason,
        "no decision within 168h → denied automatically"
    );
    assert!(q.timers.is_empty());
    assert_eq!(
        w.engine.fire_due_timers().await.unwrap(),
        0,
        "each timer fired once"
    );
    w.engine.shutdown().await;
}

#[tokio::test]
async fn each_approval_step_gets_its_own_sla() {
    let w = memory_world(&[]).await;
    let id = w.quote("Q-10", json!({ "customer": "BETA", "currency": "EUR", "discount_pct": "18", "lines": [{ "sku": "CONSULT-PKG", "quantity": 1 }] })).await;
    w.send(id, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap();
    w.clock.advance(Duration::hours(40));
    w.send(id, "mia:sales_manager", "approve", json!({}))
        .await
        .unwrap();
    let timers = w.engine.get(id).await.unwrap().timers;
    let escalate = timers.iter().find(|t| t.name == "escalate").unwrap();
    assert_eq!(
        escalate.due,
        t0() + Duration::hours(40 + 48),
        "finance's step starts its own 48h"
    );
}

#[tokio::test]
async fn a_lead_is_qualified_and_its_quotes_are_linked_to_it() {
    let w = memory_world(&[]).await;
    let e = &w.engine;
    let lead = e
        .start(
            StartRequest::new("lead", who("ana:sales_rep"), "lead-1")
                .business_key("L-1")
                .data(json!({ "company": "ACME GmbH", "source": "event" })),
        )
        .await
        .unwrap()
        .instance;
    let err = w
        .send(lead, "ana:sales_rep", "assign", json!({ "owner": "ana" }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ROLE_NOT_ALLOWED");
    w.send(
        lead,
        "mia:sales_manager",
        "assign",
        json!({ "owner": "ana" }),
    )
    .await
    .unwrap();
    w.send(lead, "ana:sales_rep", "qualify", json!({}))
        .await
        .unwrap();
    let out = w
        .send(lead, "ana:sales_rep", "create_quote", json!({ "customer": "ACME", "currency": "EUR", "valid_until": "2026-05-01", "lines": [{ "sku": "PUMP-200", "quantity": 2 }] }))
        .await
        .unwrap();
    let quote = e.get(out.started[0]).await.unwrap();
    assert_eq!(quote.definition.name, "quote");
    assert_eq!(quote.parent, Some(lead));
    assert_eq!(quote.data["lead"], lead.to_string());
    assert_eq!(
        e.children(lead, 0, None).await.unwrap().items,
        vec![quote.id]
    );
    let out = w
        .send(quote.id, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap();
    assert_eq!(
        out.reason, "net 2380.00 < 5000 and discount 0% ≤ 10% → approved automatically",
        "ACME's own price"
    );
    w.send(
        lead,
        "ana:sales_rep",
        "lose",
        json!({ "lost_reason": "too_expensive" }),
    )
    .await
    .unwrap();
    assert_eq!(w.data(lead).await["lost_reason"], "too_expensive");
}

impl World {
    /// A lead assigned to ana and qualified.
    async fn qualified_lead(&self, key: &str) -> InstanceId {
        let lead = self
            .engine
            .start(
                StartRequest::new("lead", who("ana:sales_rep"), format!("lead-{key}"))
                    .business_key(key)
                    .data(json!({ "company": "ACME GmbH" })),
            )
            .await
            .unwrap()
            .instance;
        let assign = json!({ "owner": "ana" });
        self.send(lead, "mia:sales_manager", "assign", assign)
            .await
            .unwrap();
        self.send(lead, "ana:sales_rep", "qualify", json!({}))
            .await
            .unwrap();
        lead
    }

    /// A quote created from `lead`, submitted (approved automatically) and sent.
    async fn sent_quote_of(&self, lead: InstanceId) -> InstanceId {
        let out = self
            .send(lead, "ana:sales_rep", "create_quote", json!({ "customer": "BETA", "currency": "EUR", "valid_until": "2026-05-01", "lines": [{ "sku": "SEAL-KIT", "quantity": 1 }] }))
            .await
            .unwrap();
        let quote = out.started[0];
        for command in ["submit", "send"] {
            self.send(quote, "ana:sales_rep", command, json!({}))
                .await
                .unwrap();
        }
        quote
    }
}

#[tokio::test]
async fn a_lead_is_lost_in_the_same_commit_as_its_last_open_quote_declined_or_expired() {
    let w = memory_world(&[]).await;
    let lead = w.qualified_lead("L-LOST").await;
    let (first, second) = (w.sent_quote_of(lead).await, w.sent_quote_of(lead).await);
    assert_eq!(w.data(lead).await["open_quotes"], 2);

    let out = w
        .send(first, "ana:sales_rep", "decline", json!({}))
        .await
        .unwrap();
    assert_eq!(out.reason, "declined, recorded by ana");
    let after = w.engine.get(lead).await.unwrap();
    assert_eq!(
        (after.state.as_str(), &after.data["open_quotes"]),
        ("qualified", &json!(1))
    );

    // The second expires by its timer: the lead is lost with it, by `system`.
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 5, 2, 0, 0, 0).unwrap());
    assert_eq!(w.engine.fire_due_timers().await.unwrap(), 1);
    assert_eq!(w.engine.get(second).await.unwrap().state, "expired");
    let lost = w.engine.get(lead).await.unwrap();
    assert_eq!(lost.state, "lost");
    assert_eq!(lost.data["lost_reason"], "last_quote_expired");
    let last = w.engine.history(lead, lost.version - 1, 1).await.unwrap();
    assert_eq!(last[0].kind, ChangeKind::LinkedCommand { by: second });
    assert_eq!(last[0].actor.id, "system:quote");
    assert_eq!(
        last[0].reason,
        format!("the last open quote ({second}) was expired")
    );
    assert_eq!(
        last[0].request_id.as_deref(),
        w.engine
            .history(second, 0, 100)
            .await
            .unwrap()
            .last()
            .unwrap()
            .request_id
            .as_deref(),
        "one request, one commit"
    );
}

#[tokio::test]
async fn a_quote_closed_after_its_lead_was_decided_leaves_the_lead_alone() {
    let w = memory_world(&[]).await;
    let lead = w.qualified_lead("L-DONE").await;
    let quote = w.sent_quote_of(lead).await;
    w.send(
        lead,
        "ana:sales_rep",
        "lose",
        json!({ "lost_reason": "competitor" }),
    )
    .await
    .unwrap();
    let before = w.engine.get(lead).await.unwrap();
    w.send(quote, "ana:sales_rep", "decline", json!({}))
        .await
        .unwrap();
    assert_eq!(w.engine.get(lead).await.unwrap(), before);
}

#[tokio::test]
async fn a_used_up_coupon_is_dropped_with_a_reason_and_the_quote_priced_without_it() {
    let w = memory_world(&[]).await;
    for n in 1..=3 {
        let id = w.quote(&format!("Q-C{n}"), json!({ "customer": "BETA", "currency": "EUR", "coupon": "VIP20", "lines": [{ "sku": "SEAL-KIT", "quantity": 1 }] })).await;
        let out = w
            .send(id, "ana:sales_rep", "submit", json!({}))
            .await
            .unwrap();
        let data = w.data(id).await;
        let submit = w.engine.history(id, 1, 1).await.unwrap().remove(0);
        let read = &submit.provenance.unwrap().inputs.counters;
        assert_eq!(
            read,
            &vec![CounterRead {
                counter: "coupon_uses".into(),
                key: "VIP20".into(),
                value: n - 1
            }],
            "the value the decision read is in its provenance"
        );
        if n <= 2 {
            assert_eq!(data["coupon_counted"], true);
            assert_eq!(data["pricing"]["coupon"], "VIP20");
        } else {
            assert!(
                out.reason
                    .starts_with("coupon VIP20 is used up (2 uses): priced without it; "),
                "{}",
                out.reason
            );
            assert!(data.get("coupon").is_none());
            assert_eq!(data["coupon_dropped"], "VIP20");
            assert_eq!(data["pricing"]["coupon"], Value::Null, "priced without it");
        }
    }
    assert_eq!(w.engine.store().counter("coupon_uses", "VIP20").unwrap(), 2);
    // A backtest replays each submit with the count it read then, not today's: unchanged.
    let same = RuleSet::load(
        w._rules.path(),
        DeciderRegistry::new(),
        RuleLimits::default(),
    )
    .unwrap();
    let report = w.engine.backtest(&same, None).unwrap();
    assert_eq!(report.replayed, 3);
    assert!(report.changed.is_empty(), "{:?}", report.changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_never_share_a_coupons_last_use_and_none_is_refused() {
    let w = Arc::new(memory_world(&[]).await);
    let mut quotes = Vec::new();
    for n in 0..24 {
        quotes.push(w.quote(&format!("Q-R{n}"), json!({ "customer": "BETA", "currency": "EUR", "coupon": "VIP20", "lines": [{ "sku": "SEAL-KIT", "quantity": 1 }] })).await);
    }
    let tasks: Vec<_> = quotes
        .iter()
        .map(|id| {
            let (w, id) = (w.clone(), *id);
            tokio::spawn(async move { w.send(id, "ana:sales_rep", "submit", json!({})).await })
        })
        .collect();
    for t in tasks {
        t.await
            .unwrap()
            .expect("no submit is refused for a used-up coupon");
    }
    let mut counted = 0;
    for id in &quotes {
        let data = w.data(*id).await;
        if data.get("coupon_counted").is_some() {
            counted += 1;
        } else {
            assert_eq!(data["coupon_dropped"], "VIP20");
        }
    }
    assert_eq!(counted, 2, "exactly the coupon's two uses");
    assert_eq!(w.engine.store().counter("coupon_uses", "VIP20").unwrap(), 2);
}

#[tokio::test]
async fn a_declined_or_expired_quote_gives_its_coupon_use_back_once() {
    let w = memory_world(&[]).await;
    let mut quotes = Vec::new();
    for n in 1..=3 {
        let id = w.quote(&format!("Q-G{n}"), json!({ "customer": "BETA", "currency": "EUR", "coupon": "VIP20", "lines": [{ "sku": "SEAL-KIT", "quantity": 1 }] })).await;
        quotes.push(id);
    }
    let uses = || w.engine.store().counter("coupon_uses", "VIP20").unwrap();
    for id in &quotes[..2] {
        let submitted = w
            .send(*id, "ana:sales_rep", "submit", json!({}))
            .await
            .unwrap();
        assert_eq!(submitted.state, "pending_approval", "20% off: the manager");
        w.send(*id, "mia:sales_manager", "approve", json!({}))
            .await
            .unwrap();
        w.send(*id, "ana:sales_rep", "send", json!({}))
            .await
            .unwrap();
    }
    assert_eq!(uses(), 2, "the usage limit is reached");
    let out = w
        .send(quotes[0], "ana:sales_rep", "decline", json!({}))
        .await
        .unwrap();
    assert_eq!(
        out.reason,
        "declined, recorded by ana; coupon VIP20 use given back"
    );
    assert_eq!(uses(), 1);
    assert!(w.data(quotes[0]).await.get("coupon_counted").is_none());
    // The freed use goes to the third quote.
    w.send(quotes[2], "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap();
    w.send(quotes[2], "mia:sales_manager", "approve", json!({}))
        .await
        .unwrap();
    assert_eq!(uses(), 2);
    // The second expires: its use comes back too, once.
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 5, 16, 0, 0, 0).unwrap());
    assert_eq!(w.engine.fire_due_timers().await.unwrap(), 1);
    assert_eq!(w.engine.get(quotes[1]).await.unwrap().state, "expired");
    assert_eq!(uses(), 1);
}

#[tokio::test]
async fn a_sent_quote_expires_after_valid_until_and_cannot_be_accepted() {
    let w = memory_world(&[]).await;
    let id = w.quote("Q-E", json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "SEAL-KIT", "quantity": 1 }] })).await;
    w.send(id, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap();
    w.send(id, "ana:sales_rep", "send", json!({}))
        .await
        .unwrap();
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 5, 15, 23, 59, 0).unwrap());
    assert_eq!(
        w.engine.fire_due_timers().await.unwrap(),
        0,
        "valid through 2026-05-15"
    );
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 5, 16, 0, 0, 0).unwrap());
    assert_eq!(w.engine.fire_due_timers().await.unwrap(), 1);
    assert_eq!(w.engine.get(id).await.unwrap().state, "expired");
    let err = w
        .send(id, "ana:sales_rep", "accept", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "NOT_ACTIVE");
}

#[tokio::test]
async fn behaviour_changes_by_editing_rule_set_files_only() {
    // Before: the shipped threshold (5,000) and price (SEAL-KIT 19.99).
    let w = memory_world(&[]).await;
    let id = w.quote("Q-K", json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "FIXED-5000", "quantity": 1 }, { "sku": "SEAL-KIT", "quantity": 1 }] })).await;
    let out = w
        .send(id, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap();
    assert_eq!(out.reason, "net 5019.99 ≥ 5000 → sales_manager");
    // After: an analyst raises the auto-approve threshold and changes a list price.
    let w = memory_world(&[
        (
            "data/approval.json",
            "\"auto_approve_net_below\": \"5000\"",
            "\"auto_approve_net_below\": \"6000\"",
        ),
        (
            "data/prices.json",
            "\"EUR\": \"19.99\"",
            "\"EUR\": \"24.99\"",
        ),
    ])
    .await;
    let id = w.quote("Q-K", json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "FIXED-5000", "quantity": 1 }, { "sku": "SEAL-KIT", "quantity": 1 }] })).await;
    let out = w
        .send(id, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap();
    assert_eq!(out.state, "approved");
    assert_eq!(
        out.reason,
        "net 5024.99 < 6000 and discount 0% ≤ 10% → approved automatically"
    );
}

#[tokio::test]
async fn parallel_groups_incremental_tiers_and_inclusive_tax_are_chosen_by_data() {
    let w = memory_world(&[
        (
            "data/approval.json",
            "\"mode\": \"sequential\"",
            "\"mode\": \"parallel\"",
        ),
        (
            "data/prices.json",
            "\"tier_mode\": \"whole\"",
            "\"tier_mode\": \"incremental\"",
        ),
        (
            "data/pricing.json",
            "\"tax_mode\": \"exclusive\"",
            "\"tax_mode\": \"inclusive\"",
        ),
    ])
    .await;
    let id = w.quote("Q-P", json!({ "customer": "BETA", "currency": "EUR", "discount_pct": "18", "lines": [{ "sku": "CONSULT-PKG", "quantity": 1 }] })).await;
    let out = w
        .send(id, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap();
    assert_eq!(
        w.data(id).await["approval"]["route"],
        json!([["sales_manager", "finance"]]),
        "{}",
        out.reason
    );
    assert!(out.reason.ends_with("(in parallel)"), "{}", out.reason);
    // 12 units incrementally: units 1–9 at list, 10–12 at the 5% tier.
    let id = w.quote("Q-T", json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "SEAL-KIT", "quantity": 12 }] })).await;
    w.send(id, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap();
    let pricing = w.data(id).await["pricing"].clone();
    // 9 × 19.99 + 3 × 18.9905 = 236.8815 charged, tax included at 8.25%.
    assert_eq!(pricing["lines"][0]["tier_pct"], "1.2500");
    assert_eq!(pricing["total"], "236.88");
    assert_eq!(pricing["net"], "218.83", "236.8815 / 1.0825 = 218.828…");
    assert_eq!(
        pricing["tax"], "18.05",
        "the rounded total less the rounded net"
    );
    assert_eq!(pricing["tax_mode"], "inclusive");
}

#[tokio::test]
async fn a_quote_is_its_owners_another_rep_is_refused_and_managers_and_admins_act_for_them() {
    let w = memory_world(&[]).await;
    let e = &w.engine;
    // Given a quote ana started (her lead's create_quote makes her the owner the same way).
    let id = w.quote("Q-O", json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "FIXED-4999", "quantity": 1 }] })).await;
    assert_eq!(e.get(id).await.unwrap().owner.as_deref(), Some("ana"));
    // When another rep submits, revises, sends, accepts or declines it: refused, nothing written.
    for command in ["submit", "revise"] {
        let err = w
            .send(id, "bob:sales_rep", command, json!({}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "NOT_OWNER", "{command}: {err}");
        assert!(err.to_string().contains("(`ana`)"), "{err}");
        assert!(err.to_string().contains("actor `bob`"), "{err}");
    }
    assert_eq!(e.get(id).await.unwrap().version, 1, "nothing written");
    assert_eq!(e.history(id, 0, 0).await.unwrap().len(), 1);
    // The owner submits; an approved quote is sent by the sales manager acting for her.
    w.send(id, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap();
    let err = w
        .send(id, "bob:sales_rep", "send", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "NOT_OWNER");
    w.send(id, "mia:sales_manager", "send", json!({}))
        .await
        .expect("the sales manager acts for any owner");
    for command in ["accept", "decline"] {
        let err = w
            .send(id, "bob:sales_rep", command, json!({}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "NOT_OWNER", "{command}");
    }
    let out = w
        .send(id, "root:admin", "accept", json!({}))
        .await
        .unwrap_err();
    // An admin acts for owners, but `accept` is a sales_rep command: the role check comes first.
    assert_eq!(out.code(), "ROLE_NOT_ALLOWED");
    w.send(id, "ana:sales_rep", "accept", json!({}))
        .await
        .unwrap();
    assert_eq!(e.get(id).await.unwrap().state, "accepted");
}

#[tokio::test]
async fn a_linked_quote_is_owned_by_the_actor_whose_command_started_it() {
    let w = memory_world(&[]).await;
    let e = &w.engine;
    let lead = e
        .start(
            StartRequest::new("lead", who("mia:sales_manager"), "lead-o")
                .business_key("L-O")
                .data(json!({ "company": "ACME GmbH", "source": "event" })),
        )
        .await
        .unwrap()
        .instance;
    assert_eq!(e.get(lead).await.unwrap().owner.as_deref(), Some("mia"));
    w.send(
        lead,
        "mia:sales_manager",
        "assign",
        json!({ "owner": "carl" }),
    )
    .await
    .unwrap();
    w.send(lead, "carl:sales_rep", "qualify", json!({}))
        .await
        .unwrap();
    let out = w
        .send(lead, "carl:sales_rep", "create_quote", json!({ "customer": "ACME", "currency": "EUR", "valid_until": "2026-05-01", "lines": [{ "sku": "PUMP-200", "quantity": 2 }] }))
        .await
        .unwrap();
    let quote = out.started[0];
    assert_eq!(e.get(quote).await.unwrap().owner.as_deref(), Some("carl"));
    let err = w
        .send(quote, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "NOT_OWNER");
    w.send(quote, "carl:sales_rep", "submit", json!({}))
        .await
        .unwrap();
}

// ---- Sales orders (rules/definitions/sales_order.toml, shipment.toml) ----

impl World {
    /// Leases the one waiting job of `job_type` and completes it with `result`.
    async fn complete_only_job(&self, job_type: &str, result: Value) -> CommandOutcome {
        let jobs = self
            .engine
            .activate_jobs(ActivateJobs::new(
                job_type,
                "adapter",
                10,
                std::time::Duration::from_secs(60),
            ))
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "one {job_type} job waits: {jobs:?}");
        self.engine
            .complete_job(jobs[0].id, jobs[0].lease, result)
            .await
            .unwrap()
    }

    /// ACME's uninvoiced and receivable balances in EUR, as the engine keeps them.
    async fn exposure(&self) -> (String, String) {
        let read = |name: &'static str| async move {
            self.engine
                .balance(name, "ACME/EUR")
                .await
                .unwrap()
                .to_string()
        };
        (read("uninvoiced").await, read("receivable").await)
    }

    /// The (actor, command, state, reason) of every change of `id`.
    async fn story(&self, id: InstanceId) -> Vec<(String, String, String, String)> {
        self.engine
            .history(id, 0, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|h| {
                (
                    h.actor.id,
                    h.command.unwrap_or_default(),
                    h.to_state,
                    h.reason,
                )
            })
            .collect()
    }
}

async fn check(
    w: &World,
    id: InstanceId,
    actor: &str,
    command: &str,
    payload: Value,
    state: &str,
    reason: &str,
) -> CommandOutcome {
    let out = w
        .send(id, actor, command, payload)
        .await
        .unwrap_or_else(|e| panic!("{actor} {command}: {e}"));
    assert_eq!(
        (out.state.as_str(), out.reason.as_str()),
        (state, reason),
        "{actor} {command}"
    );
    out
}

#[tokio::test]
async fn the_whole_story_from_lead_to_cash_with_every_actor_and_reason() {
    whole_story(&memory_world(&[]).await).await;
}

/// A lead won by an order that is shipped in two parts, invoiced, paid and closed, every step
/// checked; the test above, and the backup test's content.
async fn whole_story(w: &World) {
    // A lead, qualified into an opportunity with a quote of 12 pumps at ACME's 1,190.00, 5% tier and 12% off.
    let lead = w
        .engine
        .start(
            StartRequest::new("lead", who("ana:sales_rep"), "lead-1")
                .business_key("L-1")
                .data(json!({ "company": "ACME GmbH" })),
        )
        .await
        .unwrap()
        .instance;
    check(
        w,
        lead,
        "mia:sales_manager",
        "assign",
        json!({ "owner": "ana" }),
        "assigned",
        "assigned to ana by mia",
    )
    .await;
    check(
        w,
        lead,
        "ana:sales_rep",
        "qualify",
        json!({}),
        "qualified",
        "qualified by ana",
    )
    .await;
    let quote = check(w, lead, "ana:sales_rep", "create_quote", json!({ "customer": "ACME", "currency": "EUR", "discount_pct": "12", "valid_until": "2026-05-15", "lines": [{ "sku": "PUMP-200", "quantity": 12 }] }), "qualified", "quote created for ACME GmbH").await.started[0];
    // Two-step approval: the discount needs the manager, the net of 11,938.08 finance.
    check(
        w,
        quote,
        "ana:sales_rep",
        "submit",
        json!({}),
        "pending_approval",
        "discount 16.4000% > 10% → sales_manager; net 11938.08 > 10000 → finance",
    )
    .await;
    check(
        w,
        quote,
        "mia:sales_manager",
        "approve",
        json!({}),
        "pending_approval",
        "sales_manager approved (mia); waiting for [\"finance\"]",
    )
    .await;
    check(
        w,
        quote,
        "fin:finance",
        "approve",
        json!({}),
        "approved",
        "finance approved (fin) → approved",
    )
    .await;
    check(
        w,
        quote,
        "ana:sales_rep",
        "send",
        json!({}),
        "sent",
        "send → sent",
    )
    .await;
    let order = check(
        w,
        quote,
        "ana:sales_rep",
        "accept",
        json!({}),
        "accepted",
        "accepted, recorded by ana; sales order started (12922.97 EUR)",
    )
    .await
    .started[0];
    assert_eq!(w.data(quote).await["ordered"], json!(true));

    // Credit: 38,000 opening balance + 12,922.97 is over ACME's 50,000.
    check(w, order, "ana:sales_rep", "submit", json!({}), "credit_hold", "credit: exposure 50922.97 EUR (open 38000 + uninvoiced 0 + this order 12922.97) > limit 50000 → credit_hold").await;
    let refused = w
        .send(
            order,
            "ana:sales_rep",
            "release",
            json!({ "note": "please" }),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        "ROLE_NOT_ALLOWED",
        "a sales rep cannot release a credit hold: {refused}"
    );
    check(
        w,
        order,
        "cc:credit_controller",
        "release",
        json!({ "note": "prepayment received" }),
        "checking_stock",
        "credit hold released by cc: prepayment received",
    )
    .await;

    // Stock: 6 of 12 reserved, 6 backordered (ACME allows backorders); confirmed and numbered,
    // and the lead is won in the same commit.
    let out = w
        .complete_only_job(
            "reserve_stock",
            json!({ "lines": [{ "sku": "PUMP-200", "reserved": 6 }] }),
        )
        .await;
    assert_eq!((out.state.as_str(), out.reason.as_str()), ("confirmed", "PUMP-200: 6 of 12 in stock, 6 backordered; net 11938.08 ≤ 25000 → confirmed; its lead is won"));
    let data = w.data(order).await;
    assert_eq!(data["number"], "SO-2026-000001");
    assert_eq!(
        w.exposure().await,
        ("12922.97".into(), "0".into()),
        "the order counts as uninvoiced"
    );
    assert_eq!(
        data["alerts"],
        json!([{ "kind": "backorder", "sku": "PUMP-200", "quantity": "6" }])
    );
    let won = w.engine.get(lead).await.unwrap();
    assert_eq!(
        (won.state.as_str(), won.data["won_by_order"].clone()),
        ("won", json!(order.to_string()))
    );

    // A partial shipment: the carrier picks up 6, the order is fulfilling with 6 on backorder.
    let first = check(
        w,
        order,
        "wh:logistics",
        "ship",
        json!({}),
        "fulfilling",
        "shipment 1 started by wh: 6 × PUMP-200",
    )
    .await
    .started[0];
    check(
        w,
        first,
        "wh:logistics",
        "book",
        json!({}),
        "booking",
        "carrier booking requested by wh",
    )
    .await;
    w.complete_only_job(
        "book_carrier",
        json!({ "carrier": "dhl", "tracking": "JD0001" }),
    )
    .await;
    assert_eq!(w.engine.get(order).await.unwrap().state, "fulfilling");
    check(
        w,
        first,
        "wh:logistics",
        "deliver",
        json!({ "delivered_on": "2026-04-03" }),
        "delivered",
        "delivered on 2026-04-03, recorded by wh",
    )
    .await;
    let line = &w.data(order).await["lines"][0];
    assert_eq!(
        (
            line["delivered"].clone(),
            line["backordered"].clone(),
            line["delivery_status"].clone()
        ),
        (json!("6"), json!("6"), json!("partial"))
    );

    // The backorder arrives and ships; delivered in full.
    check(
        w,
        order,
        "wh:logistics",
        "stock_arrived",
        json!({ "lines": [{ "sku": "PUMP-200", "quantity": 6 }] }),
        "fulfilling",
        "backordered stock reserved: 6 × PUMP-200",
    )
    .await;
    let second = check(
        w,
        order,
        "wh:logistics",
        "ship",
        json!({}),
        "fulfilling",
        "shipment 2 started by wh: 6 × PUMP-200",
    )
    .await
    .started[0];
    check(
        w,
        second,
        "wh:logistics",
        "book",
        json!({}),
        "booking",
        "carrier booking requested by wh",
    )
    .await;
    w.complete_only_job(
        "book_carrier",
        json!({ "carrier": "ups", "tracking": "1Z0002" }),
    )
    .await;
    assert_eq!(w.engine.get(order).await.unwrap().state, "shipped");
    check(
        w,
        second,
        "wh:logistics",
        "deliver",
        json!({ "delivered_on": "2026-04-09" }),
        "delivered",
        "delivered on 2026-04-09, recorded by wh",
    )
    .await;
    assert_eq!(w.engine.get(order).await.unwrap().state, "delivered");

    // One invoice for everything delivered, then a partial and a full payment; closed.
    check(
        w,
        order,
        "fin:finance",
        "invoice",
        json!({}),
        "invoiced",
        "invoiced 12922.97 EUR (net 11938.08 + tax 984.89; policy: what is delivered)",
    )
    .await;
    assert_eq!(
        w.exposure().await,
        ("0.00".into(), "12922.97".into()),
        "invoiced: now receivable"
    );
    let invoice = w.data(order).await["invoices"][0].clone();
    assert_eq!(
        (invoice["number"].clone(), invoice["due"].clone()),
        (json!("INV-2026-000001"), json!("2026-05-01"))
    );
    check(
        w,
        order,
        "fin:finance",
        "record_payment",
        json!({ "amount": "5000.00", "method": "bank_transfer", "reference": "BT-77" }),
        "partially_paid",
        "payment of 5000.00 EUR (bank_transfer BT-77); 7922.97 EUR still open",
    )
    .await;
    let over = w
        .send(
            order,
            "fin:finance",
            "record_payment",
            json!({ "amount": "9000.00", "method": "card", "reference": "CH-1" }),
        )
        .await
        .unwrap_err();
    assert!(
        over.to_string()
            .contains("amount: 9000.00 EUR is more than the 7922.97 EUR open"),
        "{over}"
    );
    check(
        w,
        order,
        "fin:finance",
        "record_payment",
        json!({ "amount": "7922.97", "method": "card", "reference": "CH-2" }),
        "paid",
        "payment of 7922.97 EUR (card CH-2); 0.00 EUR still open",
    )
    .await;
    check(
        w,
        order,
        "fin:finance",
        "close",
        json!({}),
        "closed",
        "closed by fin",
    )
    .await;

    assert_eq!(
        w.exposure().await,
        ("0.00".into(), "0.00".into()),
        "paid: no exposure left"
    );

    // The order's whole history, actor by actor.
    let story = w.story(order).await;
    let steps: Vec<(&str, &str, &str)> = story
        .iter()
        .map(|(a, c, s, _)| (a.as_str(), c.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("ana", "", "created"),
            ("ana", "submit", "credit_hold"),
            ("cc", "release", "checking_stock"),
            ("job-worker:adapter", "stock_reserved", "confirmed"),
            ("wh", "ship", "fulfilling"),
            ("system:shipment", "shipment_shipped", "fulfilling"),
            ("system:shipment", "shipment_delivered", "fulfilling"),
            ("wh", "stock_arrived", "fulfilling"),
            ("wh", "ship", "fulfilling"),
            ("system:shipment", "shipment_shipped", "shipped"),
            ("system:shipment", "shipment_delivered", "delivered"),
            ("fin", "invoice", "invoiced"),
            ("fin", "record_payment", "partially_paid"),
            ("fin", "record_payment", "paid"),
            ("fin", "close", "closed"),
        ]
    );
    assert_eq!(
        story[6].3,
        "shipment SO-2026-000001/1 delivered on 2026-04-03"
    );
    let lead_story = w.story(lead).await;
    assert_eq!(
        lead_story.last().unwrap().3,
        format!("order {order} confirmed")
    );
}

impl World {
    /// A sales order entered directly for `customer` and submitted by its rep.
    async fn submitted_order(&self, key: &str, customer: &str, lines: Value) -> InstanceId {
        let order = self
            .engine
            .start(
                StartRequest::new("sales_order", who("ana:sales_rep"), format!("start-{key}"))
                    .business_key(key)
                    .data(json!({ "customer": customer, "currency": "EUR", "lines": lines })),
            )
            .await
            .unwrap()
            .instance;
        self.send(order, "ana:sales_rep", "submit", json!({}))
            .await
            .unwrap();
        order
    }
}

#[tokio::test]
async fn scenario_6_a_submit_sent_twice_is_one_transition_and_one_job_and_a_changed_payload_is_refused(
) {
    let w = memory_world(&[]).await;
    let order = w
        .engine
        .start(StartRequest::new("sales_order", who("ana:sales_rep"), "start-o6").data(json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "SEAL-KIT", "quantity": 2 }] })))
        .await
        .unwrap()
        .instance;
    let submit = |payload: Value| {
        CommandRequest::new(order, "submit", who("ana:sales_rep"), "confirm-o6").payload(payload)
    };
    let first = w.engine.send(submit(json!({}))).await.unwrap();
    let again = w.engine.send(submit(json!({}))).await.unwrap();
    assert_eq!(first, again, "the same response twice");
    assert_eq!(
        w.engine.get(order).await.unwrap().version,
        2,
        "one transition"
    );
    assert_eq!(
        w.engine.jobs(order).await.unwrap().len(),
        1,
        "one set of jobs"
    );
    let changed = w
        .engine
        .send(submit(json!({ "note": "x" })))
        .await
        .unwrap_err();
    assert_eq!(changed.code(), "REQUEST_ID_REUSED", "{changed}");
    assert_eq!(
        w.engine.get(order).await.unwrap().version,
        2,
        "nothing written"
    );
}

#[tokio::test]
async fn a_reserve_stock_job_failing_until_its_retries_run_out_raises_an_incident_and_the_order_does_not_confirm(
) {
    let w = memory_world(&[]).await;
    let order = w
        .submitted_order(
            "O-INC",
            "BETA",
            json!([{ "sku": "SEAL-KIT", "quantity": 2 }]),
        )
        .await;
    for attempt in 1..=4 {
        w.clock.advance(Duration::minutes(10));
        let job = w
            .engine
            .activate_jobs(ActivateJobs::new(
                "reserve_stock",
                "inventory",
                1,
                std::time::Duration::from_secs(60),
            ))
            .await
            .unwrap()
            .pop()
            .unwrap_or_else(|| panic!("attempt {attempt} finds the job"));
        assert_eq!(job.attempt, attempt);
        w.engine
            .fail_job(FailJob::new(job.id, job.lease, "warehouse system down"))
            .await
            .unwrap();
    }
    let jobs = w.engine.jobs(order).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].status,
        JobStatus::Incident,
        "retries (3) used up: {jobs:?}"
    );
    let stuck = w.engine.get(order).await.unwrap();
    assert_eq!(stuck.state, "checking_stock");
    assert!(
        stuck.data.get("number").is_none(),
        "not confirmed, no number drawn"
    );
    let cancel = w
        .send(
            order,
            "ana:sales_rep",
            "cancel_order",
            json!({ "reason": "x" }),
        )
        .await
        .unwrap_err();
    assert_eq!(
        cancel.code(),
        "WRONG_STATE",
        "not cancelled under a reservation in flight: {cancel}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_confirmations_never_share_a_number_and_leave_no_gap() {
    // Every order waits for approval, so that the confirmations can be sent all at once.
    let w = memory_world(&[(
        "data/orders.json",
        "\"approval_net_above\": \"25000\"",
        "\"approval_net_above\": \"0\"",
    )])
    .await;
    let mut orders = Vec::new();
    for n in 0..12 {
        let order = w
            .submitted_order(
                &format!("O-{n}"),
                "BETA",
                json!([{ "sku": "SEAL-KIT", "quantity": 1 }]),
            )
            .await;
        w.complete_only_job(
            "reserve_stock",
            json!({ "lines": [{ "sku": "SEAL-KIT", "reserved": 1 }] }),
        )
        .await;
        assert_eq!(w.engine.get(order).await.unwrap().state, "pending_approval");
        orders.push(order);
    }
    let mut tasks = Vec::new();
    for order in orders.clone() {
        let engine = w.engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .send(CommandRequest::new(
                    order,
                    "approve",
                    who("mia:sales_manager"),
                    format!("approve-{order}"),
                ))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().state, "confirmed");
    }
    let mut numbers = Vec::new();
    for order in orders {
        numbers.push(w.data(order).await["number"].as_str().unwrap().to_string());
    }
    numbers.sort();
    let expected: Vec<String> = (1..=12).map(|n| format!("SO-2026-{n:06}")).collect();
    assert_eq!(numbers, expected);
}

#[tokio::test]
async fn order_entry_bad_input_is_refused_naming_the_field_and_nothing_is_written() {
    let w = memory_world(&[]).await;
    // A negative quantity never starts an order.
    let negative = w
        .engine
        .start(StartRequest::new("sales_order", who("ana:sales_rep"), "start-neg").data(json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "SEAL-KIT", "quantity": -3 }] })))
        .await
        .unwrap_err();
    assert!(
        negative.to_string().contains("lines[0].quantity"),
        "{negative}"
    );
    // An unknown SKU is refused at submit, naming the line; the order stays as it was.
    let order = w
        .engine
        .start(StartRequest::new("sales_order", who("ana:sales_rep"), "start-sku").data(json!({ "customer": "BETA", "currency": "EUR", "lines": [{ "sku": "SEAL-KIT", "quantity": 1 }, { "sku": "NOPE-1", "quantity": 1 }] })))
        .await
        .unwrap()
        .instance;
    let unknown = w
        .send(order, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), "DECISION_REFUSED");
    assert!(
        unknown
            .to_string()
            .contains("lines[1].sku: unknown SKU NOPE-1"),
        "{unknown}"
    );
    let after = w.engine.get(order).await.unwrap();
    assert_eq!((after.state.as_str(), after.version), ("created", 1));
    assert!(w.engine.jobs(order).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_orders_near_one_customers_limit_exactly_one_passes() {
    // ACME: limit 50,000, opening balance 38,000. Each order is worth 7,143.50 (100 seal kits
    // and 4 pumps): one fits (45,143.50: a warning), two do not (52,287.00).
    for round in 0..4 {
        let w = memory_world(&[]).await;
        let mut orders = Vec::new();
        for n in 0..2 {
            let order = w
                .engine
                .start(StartRequest::new("sales_order", who("ana:sales_rep"), format!("start-{round}-{n}")).data(json!({ "customer": "ACME", "currency": "EUR", "lines": [{ "sku": "SEAL-KIT", "quantity": 100 }, { "sku": "PUMP-200", "quantity": 4 }] })))
                .await
                .unwrap()
                .instance;
            orders.push(order);
        }
        let mut tasks = Vec::new();
        for order in orders.clone() {
            let engine = w.engine.clone();
            tasks.push(tokio::spawn(async move {
                engine
                    .send(CommandRequest::new(
                        order,
                        "submit",
                        who("ana:sales_rep"),
                        format!("submit-{order}"),
                    ))
                    .await
                    .unwrap()
                    .state
            }));
        }
        let mut states = Vec::new();
        for t in tasks {
            states.push(t.await.unwrap());
        }
        states.sort();
        assert_eq!(
            states,
            vec!["checking_stock", "credit_hold"],
            "round {round}"
        );
        assert_eq!(
            w.exposure().await.0,
            "7143.50",
            "only the one that passed counts"
        );
        // The held order was decided on the balance the other one moved, and says so.
        for order in &orders {
            let submit = w.engine.history(*order, 1, 1).await.unwrap().remove(0);
            let read = submit.provenance.unwrap().inputs.balances;
            let uninvoiced = read
                .iter()
                .find(|r| r.balance == "uninvoiced" && r.key == "ACME/EUR")
                .unwrap();
            let expected = if submit.to_state == "credit_hold" {
                "7143.50"
            } else {
                "0"
            };
            assert_eq!(uninvoiced.value.to_string(), expected, "round {round}");
        }
    }
}

#[tokio::test]
async fn scenario_6_a_confirmation_sent_twice_draws_one_number_and_a_changed_payload_is_refused() {
    let w = memory_world(&[(
        "data/orders.json",
        "\"approval_net_above\": \"25000\"",
        "\"approval_net_above\": \"0\"",
    )])
    .await;
    let order = w
        .submitted_order("O-6", "BETA", json!([{ "sku": "SEAL-KIT", "quantity": 1 }]))
        .await;
    w.complete_only_job(
        "reserve_stock",
        json!({ "lines": [{ "sku": "SEAL-KIT", "reserved": 1 }] }),
    )
    .await;
    let confirm = |payload: Value| {
        CommandRequest::new(order, "approve", who("mia:sales_manager"), "confirm-O-6")
            .payload(payload)
    };
    let first = w.engine.send(confirm(json!({}))).await.unwrap();
    let again = w.engine.send(confirm(json!({}))).await.unwrap();
    assert_eq!(first, again, "the same response twice");
    assert_eq!(first.state, "confirmed");
    assert_eq!(first.counters.len(), 1, "one number drawn");
    let history = w.engine.history(order, 0, 0).await.unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|h| h.command.as_deref() == Some("approve"))
            .count(),
        1,
        "one transition"
    );
    let changed = w
        .engine
        .send(confirm(json!({ "note": "again" })))
        .await
        .unwrap_err();
    assert_eq!(changed.code(), "REQUEST_ID_REUSED", "{changed}");
    assert_eq!(w.data(order).await["number"], "SO-2026-000001");
}

#[tokio::test]
async fn a_credit_hold_left_waiting_escalates_to_the_finance_director_after_its_sla() {
    let w = memory_world(&[]).await;
    // 100 seal kits and 10 pumps for ACME: over its limit with the opening balance.
    let order = w
        .submitted_order(
            "O-H",
            "ACME",
            json!([{ "sku": "SEAL-KIT", "quantity": 100 }, { "sku": "PUMP-200", "quantity": 10 }]),
        )
        .await;
    assert_eq!(w.engine.get(order).await.unwrap().state, "credit_hold");
    w.clock.advance(Duration::hours(47));
    assert_eq!(
        w.engine.fire_due_timers().await.unwrap(),
        0,
        "not before 48 h"
    );
    w.clock.advance(Duration::hours(1));
    assert_eq!(w.engine.fire_due_timers().await.unwrap(), 1);
    let last = w.engine.history(order, 2, 1).await.unwrap().remove(0);
    assert_eq!(
        (
            last.actor.id.as_str(),
            last.command.as_deref(),
            last.to_state.as_str()
        ),
        ("system:timer", Some("escalate_hold"), "credit_hold")
    );
    assert_eq!(
        last.reason,
        "on credit hold for 48h → escalated to the finance director"
    );
    assert_eq!(
        w.data(order).await["notify"],
        json!([{ "to": "finance_director", "message": "order for ACME waits on credit hold" }])
    );
}

// ---- Backup (engine/core/src/store/backup.rs) ----

#[tokio::test]
async fn a_backup_of_the_whole_story_restores_every_record_and_index_and_the_engine_goes_on() {
    let original = Arc::new(store::MemoryStore::new());
    let clock = Arc::new(ManualClock::new(t0()));
    let (rules_dir, rules, config) = setup(&[], StoreConfig::Memory, &clock);
    let w = World {
        engine: Engine::with_store(original.clone(), config, rules.definitions, rules.deciders)
            .unwrap(),
        clock: clock.clone(),
        _rules: rules_dir,
    };
    whole_story(&w).await;
    // Open work too: a quote waiting on its expiry timer, an order waiting on its stock job.
    let quote = w.quote("Q-OPEN", json!({ "customer": "ACME", "currency": "EUR", "lines": [{ "sku": "PUMP-200", "quantity": 1 }] })).await;
    let order = w
        .submitted_order(
            "O-OPEN",
            "BETA",
            json!([{ "sku": "SEAL-KIT", "quantity": 2 }]),
        )
        .await;

    let mut backup = Vec::new();
    let summary = w.engine.export(&mut backup).unwrap();
    assert_eq!(summary.feed_head, original.feed_bounds().unwrap().1);
    let text = String::from_utf8(backup.clone()).unwrap();
    for kind in [
        "instance", "history", "request", "counter", "balance", "feed", "job", "meta",
    ] {
        assert!(
            text.contains(&format!("{{\"kind\":\"{kind}\"")),
            "the backup holds {kind} records"
        );
    }

    let restored = Arc::new(store::MemoryStore::new());
    assert_eq!(restored.import(&mut backup.as_slice()).unwrap(), summary);
    // Every key and value, the indexes import derives included.
    assert_eq!(restored.entries(), original.entries());
    // A second import into the now non-empty store is refused and writes nothing.
    let refused = restored.import(&mut backup.as_slice()).unwrap_err();
    assert!(matches!(refused, StoreError::NotEmpty(_)), "{refused}");
    assert_eq!(restored.entries(), original.entries());

    // An engine on the restored store goes on where the original stopped: the order's stock
    // job is activated there and completed, and the open quote takes its next command.
    let clock2 = Arc::new(ManualClock::new(clock.now()));
    let (rules_dir, rules, config) = setup(&[], StoreConfig::Memory, &clock2);
    let w2 = World {
        engine: Engine::with_store(restored.clone(), config, rules.definitions, rules.deciders)
            .unwrap(),
        clock: clock2.clone(),
        _rules: rules_dir,
    };
    w2.complete_only_job(
        "reserve_stock",
        json!({ "lines": [{ "sku": "SEAL-KIT", "reserved": 2 }] }),
    )
    .await;
    assert_ne!(w2.engine.get(order).await.unwrap().state, "checking_stock");
    let out = w2
        .send(quote, "ana:sales_rep", "submit", json!({}))
        .await
        .unwrap();
    assert_eq!(out.version, w.engine.get(quote).await.unwrap().version + 1);
}

#[tokio::test]
async fn a_bad_backup_line_is_refused_naming_its_line() {
    let store = store::MemoryStore::new();
    let header = r#"{"switchyard_backup":1,"created_at":"2026-04-01T09:00:00Z"}"#;
    let cases = [
        ("", "backup line 1: the file is empty"),
        ("{\"switchyard_backup\":2,\"created_at\":\"2026-04-01T09:00:00Z\"}\n", "backup line 1: backup format 2 (this build reads format 1)"),
        (&format!("{header}\n{{\"kind\":\"counter\",\"key\":[\"n\",\"k\"],\"format\":1,\"record\":{{\"value\":\"x\"}}}}\n"), "backup line 2: "),
        (&format!("{header}\n{{\"kind\":\"gadget\",\"key\":1,\"format\":1,\"record\":{{}}}}\n"), "backup line 2: `kind` \"gadget\""),
        (&format!("{header}\n{{\"kind\":\"counter\",\"key\":[\"n\",\"k\"],\"format\":1,\"record\":{{\"value\":3}}}}\n"), "backup line 3: the backup ends without its end line"),
        (&format!("{header}\n{{\"end\":{{\"lines\":5,\"feed_head\":0}}}}\n"), "backup line 2: the end line counts 5 record lines, the file has 0"),
    ];
    for (text, expected) in cases {
        let store = store::MemoryStore::new();
        let e = store.import(&mut text.as_bytes()).unwrap_err();
        assert!(
            e.to_string().starts_with(expected),
            "{e} (expected {expected})"
        );
    }
    // A well-formed empty backup restores an empty store.
    let empty = format!("{header}\n{{\"end\":{{\"lines\":0,\"feed_head\":0}}}}\n");
    store.import(&mut empty.as_bytes()).unwrap();
    assert!(store.entries().is_empty());
}

impl World {
    /// A BETA order of `quantity` SEAL-KITs, reserved, shipped, delivered on 2026-04-03,
    /// invoiced, paid and closed.
    async fn closed_order(&self, key: &str, quantity: u32) -> InstanceId {
        let lines = json!([{ "sku": "SEAL-KIT", "quantity": quantity }]);
        let order = self.submitted_order(key, "BETA", lines).await;
        self.complete_only_job(
            "reserve_stock",
            json!({ "lines": [{ "sku": "SEAL-KIT", "reserved": quantity }] }),
        )
        .await;
        let shipment = self
            .send(order, "wh:logistics", "ship", json!({}))
            .await
            .unwrap()
            .started[0];
        self.send(shipment, "wh:logistics", "book", json!({}))
            .await
            .unwrap();
        self.complete_only_job(
            "book_carrier",
            json!({ "carrier": "dhl", "tracking": "JD0009" }),
        )
        .await;
        let delivered = json!({ "delivered_on": "2026-04-03" });
        self.send(shipment, "wh:logistics", "deliver", delivered)
            .await
            .unwrap();
        self.send(order, "fin:finance", "invoice", json!({}))
            .await
            .unwrap();
        let total = self.data(order).await["invoices"][0]["total"].clone();
        let payment = json!({ "amount": total, "method": "bank_transfer", "reference": "BT-9" });
        self.send(order, "fin:finance", "record_payment", payment)
            .await
            .unwrap();
        let closed = self.send(order, "fin:finance", "close", json!({})).await;
        assert_eq!(closed.unwrap().state, "closed");
        order
    }

    async fn request_return(
        &self,
        order: InstanceId,
        reason_code: &str,
        quantity: u32,
        on: &str,
    ) -> Result<CommandOutcome, CommandError> {
        let payload = json!({
            "reason_code": reason_code,
            "requested_on": on,
            "lines": [{ "sku": "SEAL-KIT", "quantity": quantity }],
        });
        self.send(order, "eva:customer_service", "request_return", payload)
            .await
    }

    /// A return of `quantity` SEAL-KITs for `reason_code`, approved, received, scrapped and
    /// refunded by the payments adapter with `reference`.
    async fn refunded_return(
        &self,
        order: InstanceId,
        reason_code: &str,
        quantity: u32,
        reference: &str,
    ) {
        let ret = self
            .request_return(order, reason_code, quantity, "2026-04-20")
            .await
            .unwrap()
            .started[0];
        let inspection =
            json!({ "lines": [{ "sku": "SEAL-KIT", "restock": 0, "scrap": quantity }] });
        for (actor, command, payload) in [
            ("eva:customer_service", "review", json!({})),
            (
                "wh:logistics",
                "receive",
                json!({ "received_on": "2026-04-21" }),
            ),
            ("wh:logistics", "inspect", inspection),
        ] {
            self.send(ret, actor, command, payload).await.unwrap();
        }
        self.complete_only_job("refund_payment", json!({ "reference": reference }))
            .await;
    }

    /// The order's (returning, returned) quantity of its only line.
    async fn returns_held(&self, order: InstanceId) -> (Value, Value) {
        let line = self.data(order).await["lines"][0].clone();
        (line["returning"].clone(), line["returned"].clone())
    }
}

#[tokio::test]
async fn a_partial_return_of_a_closed_order_is_inspected_restocked_refunded_and_credited() {
    let w = memory_world(&[]).await;
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 4, 20, 9, 0, 0).unwrap());
    let order = w.closed_order("O-R", 10).await;

    let ret = w
        .request_return(order, "not_wanted", 3, "2026-04-20")
        .await
        .unwrap()
        .started[0];
    assert_eq!(w.returns_held(order).await, (json!("3"), Value::Null));
    let r = w.engine.get(ret).await.unwrap();
    assert_eq!(
        (r.business_key.as_str(), r.state.as_str()),
        ("SO-2026-000001/R1", "requested")
    );
    check(
        &w,
        ret,
        "eva:customer_service",
        "review",
        json!({}),
        "approved",
        "not wanted: requested 17 days after delivery, within the 30-day window → approved",
    )
    .await;
    let pickup = json!({ "pickup_on": "2026-04-22" });
    check(
        &w,
        ret,
        "eva:customer_service",
        "schedule_pickup",
        pickup,
        "pickup_scheduled",
        "pick-up on 2026-04-22, scheduled by eva",
    )
    .await;
    let received = json!({ "received_on": "2026-04-23" });
    check(
        &w,
        ret,
        "wh:logistics",
        "receive",
        received,
        "received",
        "received on 2026-04-23 by wh: 3 × SEAL-KIT",
    )
    .await;
    let inspection = json!({ "lines": [{ "sku": "SEAL-KIT", "restock": 2, "scrap": 1 }] });
    // 3 × 18.99 (BETA's 10-piece price) = 56.97; 15% restocking fee 8.55; net 48.42; tax
    // 4.70 × 48.42 / 56.97 = 3.99.
    check(&w, ret, "wh:logistics", "inspect", inspection, "inspected", "SEAL-KIT: 2 restocked, 1 scrapped; refund 52.41 EUR (goods 56.97 − restocking fee 8.55 (15%) − return shipping 0.00 = net 48.42 + tax 3.99)").await;

    // The inventory puts 2 back; the payments adapter refunds, keyed by the job id.
    let restocked = w.complete_only_job("restock_returned", json!({})).await;
    assert_eq!(restocked.state, "refund_pending");
    let jobs = w.engine.jobs(ret).await.unwrap();
    let refund = jobs
        .iter()
        .find(|j| j.job_type == "refund_payment")
        .unwrap();
    assert_eq!(refund.payload["amount"], "52.41");
    let refunded = w
        .complete_only_job("refund_payment", json!({ "reference": "re_1" }))
        .await;
    assert_eq!(
        (refunded.state.as_str(), refunded.reason.as_str()),
        ("refunded", "refunded 52.41 EUR (re_1)")
    );
    // The credit note is numbered on the return and, in the same commit, recorded on the
    // order against the invoice.
    let data = w.data(order).await;
    assert_eq!(w.engine.get(order).await.unwrap().state, "closed");
    assert_eq!(w.returns_held(order).await, (json!("0"), json!("3")));
    let credit_note = w.data(ret).await["credit_note"].clone();
    assert_eq!(
        (
            credit_note["number"].clone(),
            credit_note["invoice"].clone(),
            credit_note["total"].clone(),
            credit_note["net"].clone()
        ),
        (
            json!("CN-2026-000001"),
            data["invoices"][0]["number"].clone(),
            json!("52.41"),
            json!("48.42")
        )
    );
    let recorded = &data["credit_notes"][0];
    assert_eq!(
        (recorded["return"].clone(), recorded["total"].clone()),
        (json!("SO-2026-000001/R1"), json!("52.41"))
    );
    assert_eq!(data["refunded"], "52.41");
    check(
        &w,
        ret,
        "eva:customer_service",
        "close",
        json!({}),
        "closed",
        "closed by eva",
    )
    .await;

    // 7 may still come back, not 8; a declined or withdrawn return frees its quantity again.
    let refused = w
        .request_return(order, "defective", 8, "2026-04-20")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "DECISION_REFUSED", "{refused}");
    assert!(
        refused.to_string().contains("(RETURN_EXCEEDS_DELIVERED)"),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("(7 delivered and not returned or in a return)"),
        "{refused}"
    );
    let second = w
        .request_return(order, "defective", 7, "2026-04-20")
        .await
        .unwrap()
        .started[0];
    assert_eq!(w.returns_held(order).await, (json!("7"), json!("3")));
    let note = json!({ "note": "the customer kept them" });
    check(
        &w,
        second,
        "eva:customer_service",
        "withdraw",
        note,
        "cancelled",
        "withdrawn, recorded by eva: the customer kept them",
    )
    .await;
    assert_eq!(w.returns_held(order).await, (json!("0"), json!("3")));
    // Past the warranty: declined, the customer told why, the quantity free again.
    let late = w
        .request_return(order, "defective", 1, "2027-04-04")
        .await
        .unwrap()
        .started[0];
    assert_eq!(w.returns_held(order).await, (json!("1"), json!("3")));
    check(&w, late, "eva:customer_service", "review", json!({}), "declined", "defective: requested 366 days after delivery, past the 30-day window and the warranty (until 2027-04-03) → declined").await;
    assert_eq!(w.returns_held(order).await, (json!("0"), json!("3")));
    assert_eq!(
        w.data(late).await["notify"][0]["to"],
        "customer",
        "the customer is told why"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_returns_never_take_back_more_than_was_delivered() {
    let w = memory_world(&[]).await;
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 4, 20, 9, 0, 0).unwrap());
    for round in 0..10 {
        let order = w.closed_order(&format!("O-C{round}"), 7).await;
        let ask = |rid: &str| {
            let payload = json!({ "reason_code": "not_wanted", "lines": [{ "sku": "SEAL-KIT", "quantity": 4 }] });
            let request =
                CommandRequest::new(order, "request_return", who("eva:customer_service"), rid);
            w.engine.send(request.payload(payload))
        };
        let (first, second) = (format!("{round}-first"), format!("{round}-second"));
        let (a, b) = tokio::join!(ask(&first), ask(&second));
        let refused: Vec<_> = [&a, &b]
            .into_iter()
            .filter_map(|r| r.as_ref().err())
            .collect();
        assert_eq!(refused.len(), 1, "round {round}: {a:?} {b:?}");
        assert!(
            refused[0]
                .to_string()
                .contains("(RETURN_EXCEEDS_DELIVERED)"),
            "{}",
            refused[0]
        );
        assert_eq!(w.returns_held(order).await, (json!("4"), Value::Null));
        let returns = w
            .engine
            .list(ListRequest::new().definition("return").page_size(100))
            .await
            .unwrap();
        assert_eq!(
            returns.items.len(),
            round + 1,
            "one return started per round"
        );
    }
}

impl World {
    /// The provider reports a dispute on `order` (finance enters it here; a provider's
    /// webhook sends the same command).
    async fn open_dispute(
        &self,
        order: InstanceId,
        kind: &str,
        amount: &str,
        due: &str,
    ) -> InstanceId {
        let payload = json!({
            "provider": "stripe", "dispute_id": "dp_1", "kind": kind,
            "reason_code": "product_not_received", "amount": amount, "evidence_due_by": due,
        });
        self.send(order, "fin:finance", "open_dispute", payload)
            .await
            .unwrap()
            .started[0]
    }
}

#[tokio::test]
async fn scenario_10_a_dispute_on_a_refunded_order_is_flagged_never_refunded_again_and_lost_on_time_after_a_restart(
) {
    let store_dir = tempfile::tempdir().unwrap();
    let mut store = SledConfig::new(store_dir.path());
    store.durability = Durability::Flush;
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 4, 20, 9, 0, 0).unwrap(),
    ));
    let w = world(&[], StoreConfig::Sled(store.clone()), clock.clone()).await;
    // Given an order refunded for a return of 3 (52.41 EUR)
    let order = w.closed_order("O-D", 10).await;
    w.refunded_return(order, "not_wanted", 3, "re_1").await;
    // When the cardholder disputes the payment, evidence due in 7 days
    let dispute = w
        .open_dispute(order, "chargeback", "120.00", "2026-04-27T09:00:00Z")
        .await;
    // Then finance is alerted, the dispute is flagged with the refund, and nothing is refunded
    let history = w.engine.history(order, 0, 100).await.unwrap();
    assert_eq!(history.last().unwrap().reason, "chargeback SO-2026-000001/D1 (stripe dp_1, product_not_received): 120.00 EUR, evidence due by 2026-04-27T09:00:00Z; flagged: 52.41 EUR refunded already: 52.41 for return SO-2026-000001/R1 (re_1) — answer with the refund, never refund again; finance alerted (high)");
    let data = w.data(order).await;
    assert_eq!(
        data["alerts"],
        json!([{ "kind": "dispute", "severity": "high", "dispute": "SO-2026-000001/D1", "due": "2026-04-27T09:00:00Z" }])
    );
    assert_eq!(data["notify"][0]["to"], "finance");
    let d = w.engine.get(dispute).await.unwrap();
    assert_eq!(d.state, "needs_response");
    assert_eq!(d.data["recommendation"], "respond");
    assert_eq!(d.data["refunded"]["total"], "52.41");
    assert_eq!(
        d.data["movements"],
        json!([{ "kind": "withdrawn", "amount": "120.00", "at": "2026-04-20T09:00:00Z" }])
    );
    let refund_jobs = w.engine.jobs(order).await.unwrap();
    assert!(
        refund_jobs.iter().all(|j| j.job_type != "refund_payment"),
        "no second refund: {refund_jobs:?}"
    );
    // When 48 hours before the due date pass, then finance is alerted again
    clock.set(Utc.with_ymd_and_hms(2026, 4, 25, 9, 0, 0).unwrap());
    assert_eq!(w.engine.fire_due_timers().await.unwrap(), 1);
    let d = w.engine.get(dispute).await.unwrap();
    assert_eq!(
        (d.state.as_str(), d.data["severity"].clone()),
        ("needs_response", json!("critical"))
    );
    // and the engine restarts before the due date; no evidence comes
    w.engine.shutdown().await;
    drop(w);
    clock.set(Utc.with_ymd_and_hms(2026, 4, 27, 9, 0, 0).unwrap());
    let w = world(&[], StoreConfig::Sled(store), clock.clone()).await;
    assert_eq!(w.engine.fire_due_timers().await.unwrap(), 1);
    let d = w.engine.get(dispute).await.unwrap();
    assert_eq!(d.state, "lost");
    assert_eq!(
        w.engine
            .history(dispute, 0, 10)
            .await
            .unwrap()
            .last()
            .unwrap()
            .reason,
        "no evidence by 2026-04-27T09:00:00Z → lost"
    );
    assert_eq!(w.engine.fire_due_timers().await.unwrap(), 0, "fired once");
    w.engine.shutdown().await;
}

#[tokio::test]
async fn evidence_cites_the_refund_a_won_dispute_is_reinstated_and_a_second_chargeback_reopens_it()
{
    let w = memory_world(&[]).await;
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 4, 20, 9, 0, 0).unwrap());
    let order = w.closed_order("O-W", 10).await;
    // An inquiry withdraws nothing; the provider turns it into a chargeback.
    let dispute = w
        .open_dispute(order, "inquiry", "189.90", "2026-05-10T00:00:00Z")
        .await;
    let d = w.engine.get(dispute).await.unwrap();
    assert_eq!(
        (d.state.as_str(), d.data["movements"].clone()),
        ("inquiry", json!([]))
    );
    assert_eq!(d.data["severity"], "warning");
    let filed = json!({ "evidence_due_by": "2026-05-12T00:00:00Z" });
    check(&w, dispute, "fin:finance", "chargeback_filed", filed, "needs_response", "the inquiry became a chargeback: 189.90 EUR withdrawn, evidence due by 2026-05-12T00:00:00Z").await;
    let evidence = json!({ "evidence": "Signed proof of delivery attached." });
    check(
        &w,
        dispute,
        "fin:finance",
        "submit_evidence",
        evidence,
        "under_review",
        "evidence submitted by fin",
    )
    .await;
    check(
        &w,
        dispute,
        "fin:finance",
        "decided",
        json!({ "outcome": "won" }),
        "won",
        "won: 189.90 EUR reinstated",
    )
    .await;
    // Won is not final: a second chargeback withdraws the funds again and needs new evidence.
    let again = json!({ "stage": "second_chargeback", "evidence_due_by": "2026-06-01T00:00:00Z" });
    check(&w, dispute, "fin:finance", "reopen", again, "needs_response", "reopened by a second chargeback: 189.90 EUR withdrawn again, evidence due by 2026-06-01T00:00:00Z").await;
    let d = w.engine.get(dispute).await.unwrap();
    let kinds: Vec<&str> = d.data["movements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["withdrawn", "reinstated", "withdrawn"]);
    assert_eq!(d.timers.len(), 2, "escalation and evidence timers again");

    // A refund made meanwhile is cited in the evidence.
    w.refunded_return(order, "defective", 1, "re_9").await;
    let evidence = json!({ "evidence": "The customer returned one unit and was refunded." });
    let out = check(&w, dispute, "fin:finance", "submit_evidence", evidence, "under_review", "evidence submitted by fin; it cites the refund (20.56 EUR refunded already: 20.56 for return SO-2026-000001/R1 (re_9))").await;
    assert_eq!(out.state, "under_review");
    let text = w.data(dispute).await["evidence"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.ends_with("Refund on record: 20.56 EUR refunded already: 20.56 for return SO-2026-000001/R1 (re_9)."), "{text}");
    check(
        &w,
        dispute,
        "fin:finance",
        "decided",
        json!({ "outcome": "lost" }),
        "lost",
        "lost: 189.90 EUR stay withdrawn",
    )
    .await;
}

#[tokio::test]
async fn a_linked_start_may_begin_only_in_a_declared_start_state() {
    let w = memory_world(&[(
        "scripts/sales_order.rhai",
        r#"state: if payload.kind == "inquiry" { "inquiry" } else { "needs_response" },"#,
        r#"state: "won","#,
    )])
    .await;
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 4, 20, 9, 0, 0).unwrap());
    let order = w.closed_order("O-S", 1).await;
    let before = w.engine.get(order).await.unwrap().version;
    let payload = json!({
        "provider": "stripe", "dispute_id": "dp_2", "kind": "chargeback",
        "reason_code": "fraudulent", "amount": "10.00", "evidence_due_by": "2026-05-01T00:00:00Z",
    });
    let refused = w
        .send(order, "fin:finance", "open_dispute", payload)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "DECISION_INVALID", "{refused}");
    assert!(
        refused.to_string().contains(
            "a new `chargeback` cannot begin in `won`; it begins in: needs_response, inquiry"
        ),
        "{refused}"
    );
    assert_eq!(
        w.engine.get(order).await.unwrap().version,
        before,
        "nothing written"
    );
}

/// A Stripe `charge.dispute.*` event `id` reporting dispute `dp_7` (120.00 EUR, evidence due
/// 2026-04-27 09:00 UTC) in `status`, naming the order by its business key.
fn stripe_event(id: &str, event_type: &str, status: &str, order_key: &str) -> ProviderEvent {
    ProviderEvent {
        provider: "stripe".into(),
        event_id: id.into(),
        event_type: event_type.into(),
        event: json!({
            "id": id, "object": "event", "type": event_type,
            "data": { "object": {
                "id": "dp_7", "object": "dispute", "amount": 12000, "currency": "eur",
                "reason": "fraudulent", "status": status,
                "evidence_details": { "due_by": 1_777_280_400 },
                "metadata": { "order_key": order_key },
            } },
        }),
    }
}

/// An Adyen notification item `code` for payment `8815…` (order `order_key`, 19.99 EUR).
fn adyen_event(psp: &str, code: &str, success: &str, order_key: &str) -> ProviderEvent {
    ProviderEvent {
        provider: "adyen".into(),
        event_id: format!("{psp}:{code}"),
        event_type: code.into(),
        event: json!({
            "eventCode": code, "success": success, "pspReference": psp,
            "originalReference": "8815555555555555", "merchantReference": order_key,
            "merchantAccountCode": "ShopEU", "amount": { "value": 1999, "currency": "EUR" },
            "additionalData": { "chargebackReasonCode": "10.4", "defensePeriodEndsAt": "2026-05-10T00:00:00Z" },
        }),
    }
}

impl World {
    async fn ingest(&self, event: ProviderEvent) -> IngestOutcome {
        let webhook = Actor::new("webhook:test", &[roles::SYSTEM]);
        self.engine
            .ingest_provider_event(&webhook, event)
            .await
            .unwrap()
    }

    async fn by_key(&self, definition: &str, key: &str) -> Option<Instance> {
        let list = ListRequest::new().definition(definition).business_key(key);
        let page = self.engine.list(list).await.unwrap();
        assert!(page.items.len() <= 1, "{key}: {:?}", page.items);
        page.items.into_iter().next()
    }
}

#[tokio::test]
async fn stripe_events_apply_once_in_any_order_and_unknown_ones_are_recorded_and_acknowledged() {
    let w = memory_world(&[]).await;
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 4, 20, 9, 0, 0).unwrap());
    w.closed_order("O-S", 10).await;
    // The outcome arrives first (the creation's delivery failed and is being retried):
    // the dispute is opened and taken on to the reported state.
    let closed = w
        .ingest(stripe_event(
            "evt_3",
            "charge.dispute.closed",
            "lost",
            "O-S",
        ))
        .await;
    assert_eq!(
        (closed.state.as_str(), closed.duplicate),
        ("applied", false),
        "{closed:?}"
    );
    assert_eq!(
        closed.reason,
        "applied: open_dispute on O-S → closed; decided on stripe:dp_7 → lost"
    );
    let dispute = w.by_key("chargeback", "stripe:dp_7").await.unwrap();
    assert_eq!(dispute.state, "lost");
    assert_eq!(
        dispute.data["movements"],
        json!([{ "kind": "withdrawn", "amount": "120.00", "at": "2026-04-20T09:00:00Z" }])
    );
    assert_eq!(dispute.data["evidence_due_by"], "2026-04-27T09:00:00Z");
    // The late creation is old news: recorded, acknowledged, nothing changes.
    let created = w
        .ingest(stripe_event(
            "evt_1",
            "charge.dispute.created",
            "needs_response",
            "O-S",
        ))
        .await;
    assert_eq!(created.state, "ignored");
    assert_eq!(
        created.reason,
        "dispute stripe:dp_7 is lost already; needs_response changes nothing"
    );
    // The same event delivered again: success, and nothing is written.
    let (_, head) = w.engine.feed_bounds().unwrap();
    let again = w
        .ingest(stripe_event(
            "evt_3",
            "charge.dispute.closed",
            "lost",
            "O-S",
        ))
        .await;
    assert_eq!((again.state.as_str(), again.duplicate), ("applied", true));
    assert_eq!(again.instance, closed.instance);
    assert_eq!(
        w.engine.feed_bounds().unwrap().1,
        head,
        "a duplicate writes nothing"
    );
    let after = w.by_key("chargeback", "stripe:dp_7").await.unwrap();
    assert_eq!(after.version, dispute.version);
    // A type the mapping does not know: recorded and acknowledged, and in the feed.
    let unknown = ProviderEvent {
        provider: "stripe".into(),
        event_id: "evt_9".into(),
        event_type: "customer.created".into(),
        event: json!({ "id": "evt_9", "type": "customer.created" }),
    };
    let out = w.ingest(unknown).await;
    assert_eq!(out.state, "ignored");
    let events = w.engine.store().feed(head, 100, usize::MAX).unwrap();
    assert!(
        events.iter().any(|e| e.subject == out.instance.to_string()),
        "the ignored event is in the feed: {events:?}"
    );
    let record = w.engine.get(out.instance).await.unwrap();
    assert_eq!(record.business_key, "stripe:evt_9");
    assert_eq!(record.data["event"]["type"], "customer.created");
}

#[tokio::test]
async fn adyen_events_file_win_and_reopen_a_chargeback() {
    let w = memory_world(&[]).await;
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 4, 20, 9, 0, 0).unwrap());
    w.closed_order("O-A", 10).await;
    // success "false" is news of a failed operation: acknowledged, nothing opened.
    let failed = w
        .ingest(adyen_event("9901", "CHARGEBACK", "false", "O-A"))
        .await;
    assert_eq!(failed.state, "ignored");
    assert!(w
        .by_key("chargeback", "adyen:8815555555555555")
        .await
        .is_none());
    for (psp, code, state) in [
        ("9902", "NOTIFICATION_OF_CHARGEBACK", "needs_response"),
        ("9903", "CHARGEBACK", "needs_response"),
        ("9904", "CHARGEBACK_REVERSED", "won"),
        ("9905", "SECOND_CHARGEBACK", "needs_response"),
    ] {
        w.ingest(adyen_event(psp, code, "true", "O-A")).await;
        let d = w
            .by_key("chargeback", "adyen:8815555555555555")
            .await
            .unwrap();
        assert_eq!(d.state, state, "after {code}");
    }
    let d = w
        .by_key("chargeback", "adyen:8815555555555555")
        .await
        .unwrap();
    let kinds: Vec<&str> = d.data["movements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["withdrawn", "reinstated", "withdrawn"]);
    assert_eq!(d.data["amount"], "19.99");
    assert_eq!(d.data["evidence_due_by"], "2026-05-10T00:00:00Z");
}

#[tokio::test]
async fn a_refused_or_unmatched_event_is_recorded_and_acknowledged_and_bad_input_writes_nothing() {
    let w = memory_world(&[]).await;
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 4, 20, 9, 0, 0).unwrap());
    // An order not yet invoiced cannot take a dispute: the command is refused, recorded.
    let lines = json!([{ "sku": "SEAL-KIT", "quantity": 1 }]);
    w.submitted_order("O-R", "BETA", lines).await;
    let out = w
        .ingest(stripe_event(
            "evt_r",
            "charge.dispute.created",
            "needs_response",
            "O-R",
        ))
        .await;
    assert_eq!(out.state, "refused", "{out:?}");
    let record = w.engine.get(out.instance).await.unwrap();
    assert_eq!(record.data["code"], "WRONG_STATE", "{:?}", record.data);
    assert!(
        out.reason
            .starts_with("refused (WRONG_STATE): command `open_dispute` cannot be sent"),
        "{}",
        out.reason
    );
    // No such order: unmatched.
    let out = w
        .ingest(stripe_event(
            "evt_u",
            "charge.dispute.created",
            "needs_response",
            "O-NONE",
        ))
        .await;
    assert_eq!(out.state, "unmatched");
    // An event the mapping cannot read (no amount): refused with the script's error.
    let mut broken = stripe_event("evt_b", "charge.dispute.created", "needs_response", "O-R");
    broken.event["data"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("amount");
    let out = w.ingest(broken).await;
    assert_eq!(out.state, "refused");
    // Bad input names the field and records nothing.
    let (_, head) = w.engine.feed_bounds().unwrap();
    let webhook = Actor::new("webhook:test", &[roles::SYSTEM]);
    let mut bad = stripe_event("evt_x", "charge.dispute.created", "needs_response", "O-R");
    bad.provider = "Stripe!".into();
    let e = w
        .engine
        .ingest_provider_event(&webhook, bad)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CommandError::InvalidInput { field, .. } if field == "provider"),
        "{e}"
    );
    // Only a system actor may ingest.
    let e = w
        .engine
        .ingest_provider_event(
            &who("fin:finance"),
            stripe_event("evt_y", "charge.dispute.created", "needs_response", "O-R"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ROLE_NOT_ALLOWED", "{e}");
    assert_eq!(w.engine.feed_bounds().unwrap().1, head, "nothing written");
}

#[tokio::test]
async fn an_ingest_interrupted_after_its_first_steps_finishes_on_redelivery_without_doing_a_step_twice(
) {
    let w = memory_world(&[]).await;
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 4, 20, 9, 0, 0).unwrap());
    let order = w.closed_order("O-I", 10).await;
    // The process recorded and routed the event, then died (the provider got no answer).
    let event = stripe_event("evt_i", "charge.dispute.created", "needs_response", "O-I");
    let id = Engine::provider_event_id("stripe", "evt_i");
    let webhook = Actor::new("webhook:test", &[roles::SYSTEM]);
    let mut start = StartRequest::new(
        PROVIDER_EVENT_DEFINITION,
        webhook.clone(),
        "provider-event:stripe:evt_i",
    );
    start.business_key = "stripe:evt_i".into();
    start.instance_id = Some(id);
    start.data = json!({ "provider": "stripe", "event_id": "evt_i", "event_type": event.event_type, "event": event.event });
    w.engine.start(start).await.unwrap();
    let route = CommandRequest::new(id, "route", webhook, "provider-event:stripe:evt_i:route");
    assert_eq!(w.engine.send(route).await.unwrap().state, "routed");
    // The provider delivers it again: the rest is done, the dispute opened once.
    let out = w.ingest(event.clone()).await;
    assert_eq!((out.state.as_str(), out.duplicate), ("applied", false));
    let out = w.ingest(event).await;
    assert_eq!((out.state.as_str(), out.duplicate), ("applied", true));
    let data = w.data(order).await;
    assert_eq!(data["disputes"], 1);
    assert_eq!(data["dispute_refs"], json!(["stripe:dp_7"]));
    let history = w.engine.history(id, 0, 100).await.unwrap();
    let states: Vec<&str> = history.iter().map(|h| h.to_state.as_str()).collect();
    assert_eq!(states, ["received", "routed", "dispatching", "applied"]);
}
