//! A decision sending a command to a linked instance (`effects.send`): it commits with the
//! transition or the whole command is refused, it acts as `system`, and concurrent senders
//! to one parent never lose an update.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use serde_json::{json, Value};
use switchyard_core::*;

const ACCOUNT: &str = r#"
name = "account"
version = 1
initial = "open"

[start]
roles = ["rep"]
[start.payload]
open_deals = { type = "integer", min = 0 }

[states]
open = {}
won = { terminal = true }
lost = { terminal = true }

[commands.open_deal]
from = ["open"]
to = ["open"]
roles = ["rep"]
decider = "account.open_deal"
effects = { start = ["deal"] }

[commands.deal_closed]
from = ["open"]
to = ["open", "lost"]
roles = ["system"]
decider = "account.deal_closed"
payload = { ping_back = { type = "boolean", required = false }, from = { type = "string", required = false } }
effects = { send = ["deal.note"] }

[commands.win]
from = ["open"]
to = ["won"]
roles = ["system"]

[commands.nudge]
from = ["open"]
to = ["open"]
roles = ["rep"]
decider = "account.nudge"
payload = { deal = { type = "string" } }
effects = { send = ["deal.note"] }

[commands.audit]
from = ["open"]
to = ["open"]
roles = ["auditor"]
decider = "account.audit"
"#;

const DEAL: &str = r#"
name = "deal"
version = 1
initial = "open"

[start]
roles = ["system"]

[states]
open = {}
accepted = {}
declined = { terminal = true }

[commands.accept]
from = ["open"]
to = ["accepted"]
roles = ["rep"]
decider = "deal.accept"
effects = { send = ["account.win"], start = ["task"] }

[commands.decline]
from = ["open"]
to = ["declined"]
roles = ["rep"]
decider = "deal.decline"
effects = { send = ["account.deal_closed", "account.audit", "account.win"] }

[commands.note]
from = ["open", "accepted"]
to = ["open", "accepted"]
roles = ["system"]
decider = "deal.note"
"#;

const TASK: &str = r#"
name = "task"
version = 1
initial = "todo"

[start]
roles = ["system"]

[states]
todo = {}
done = { terminal = true }

[commands.finish]
from = ["todo"]
to = ["done"]
roles = ["rep"]
decider = "task.finish"
effects = { send = ["account.win", "deal.note"] }
"#;

/// One command a decider sends: (target, command, payload).
type Send = (LinkedTarget, String, Value);

/// What `deal.decline` (or `task.finish`) sends, set per test.
type Plan = Arc<std::sync::Mutex<Vec<Send>>>;

fn deciders(decline: Plan, finish: Plan) -> DeciderRegistry {
    let mut r = DeciderRegistry::new();
    r.register("account.open_deal", |ctx: &DecisionContext<'_>| {
        let open = ctx.instance.data["open_deals"].as_u64().unwrap_or(0) + 1;
        Ok(Decision::goto("open", format!("{open} open deals"))
            .with_changes(json!({ "open_deals": open }))
            .with_effect(Effect::StartLinked {
                definition: "deal".into(),
                business_key: format!("deal-{open}"),
                data: json!({}),
                state: None,
            }))
    });
    r.register("account.deal_closed", |ctx: &DecisionContext<'_>| {
        let open = ctx.instance.data["open_deals"].as_u64().unwrap_or(0);
        let left = open.saturating_sub(1);
        let state = if left == 0 { "lost" } else { "open" };
        let mut decision = Decision::goto(state, format!("a deal closed; {left} open"))
            .with_changes(json!({ "open_deals": left }));
        if ctx.payload["ping_back"] == true {
            // A command sent by a linked instance may not send further commands.
            decision = decision.with_effect(Effect::SendLinked {
                to: LinkedTarget::Instance(ctx.payload["from"].as_str().unwrap().parse().unwrap()),
                command: "note".into(),
                payload: json!({}),
            });
        }
        Ok(decision)
    });
    r.register("account.audit", |ctx: &DecisionContext<'_>| {
        Ok(Decision::goto(ctx.instance.state.clone(), "audited"))
    });
    r.register("deal.note", |ctx: &DecisionContext<'_>| {
        let nudged = ctx.parent.map(|p| p.data["nudged"].clone());
        Ok(Decision::goto(
            ctx.instance.state.clone(),
            format!("noted; parent nudged: {}", nudged.unwrap_or_default()),
        ))
    });
    r.register("account.nudge", |ctx: &DecisionContext<'_>| {
        let deal = ctx.payload["deal"].as_str().unwrap_or_default();
        Ok(Decision::goto("open", "nudged")
            .with_changes(json!({ "nudged": true }))
            .with_effect(Effect::SendLinked {
                to: LinkedTarget::Instance(deal.parse().map_err(|_| DecideError::new("no id"))?),
                command: "note".into(),
                payload: json!({}),
            }))
    });
    r.register("deal.accept", |_: &DecisionContext<'_>| {
        Ok(Decision::goto("accepted", "accepted")
            .with_effect(Effect::StartLinked {
                definition: "task".into(),
                business_key: "t".into(),
                data: json!({}),
                state: None,
            })
            .with_effect(Effect::SendLinked {
                to: LinkedTarget::Parent,
                command: "win".into(),
                payload: json!({}),
            }))
    });
    r.register("deal.decline", move |_: &DecisionContext<'_>| {
        Ok(sending(Decision::goto("declined", "declined"), &decline))
    });
    r.register("task.finish", move |_: &DecisionContext<'_>| {
        Ok(sending(Decision::goto("done", "finished"), &finish))
    });
    r
}

/// `decision` with a command sent for each entry of `plan`.
fn sending(decision: Decision, plan: &Plan) -> Decision {
    let mut d = decision;
    for (to, command, payload) in plan.lock().unwrap().iter() {
        d = d.with_effect(Effect::SendLinked {
            to: *to,
            command: command.clone(),
            payload: payload.clone(),
        });
    }
    d
}

fn definitions(d: &DeciderRegistry) -> DefinitionSet {
    DefinitionSet::from_sources(
        &[
            ("account.toml".into(), ACCOUNT.into()),
            ("deal.toml".into(), DEAL.into()),
            ("task.toml".into(), TASK.into()),
        ],
        d,
    )
    .expect("fixture definitions are valid")
}

struct Fixture {
    engine: Engine,
    decline: Plan,
    finish: Plan,
}

async fn fixture() -> Fixture {
    let decline = Plan::default();
    let finish = Plan::default();
    let d = deciders(decline.clone(), finish.clone());
    let engine = Engine::open(EngineConfig::in_memory(), definitions(&d), d)
        .await
        .unwrap();
    Fixture {
        engine,
        decline,
        finish,
    }
}

fn rep() -> Actor {
    Actor::new("rep-1", &["rep"])
}

fn send(instance: InstanceId, command: &str, request_id: &str) -> CommandRequest {
    CommandRequest::new(instance, command, rep(), request_id)
}

/// An account with `deals` open deals; returns the account and its deals.
async fn account_with_deals(engine: &Engine, deals: usize) -> (InstanceId, Vec<InstanceId>) {
    let account = engine
        .start(
            StartRequest::new("account", rep(), format!("a-{}", uuid::Uuid::new_v4()))
                .business_key("ACME")
                .data(json!({ "open_deals": 0 })),
        )
        .await
        .unwrap()
        .instance;
    let mut ids = Vec::new();
    for _ in 0..deals {
        let outcome = engine
            .send(send(
                account,
                "open_deal",
                &format!("o-{}", uuid::Uuid::new_v4()),
            ))
            .await
            .unwrap();
        ids.push(outcome.started[0]);
    }
    (account, ids)
}

fn closed(to: LinkedTarget) -> Vec<Send> {
    vec![(to, "deal_closed".into(), json!({}))]
}

#[tokio::test]
async fn a_sent_command_commits_with_the_transition_as_system_with_its_own_history_and_event() {
    let f = fixture().await;
    let (account, deals) = account_with_deals(&f.engine, 1).await;
    *f.decline.lock().unwrap() = closed(LinkedTarget::Parent);
    let before = f.engine.get(account).await.unwrap();
    let mut feed = f
        .engine
        .subscribe(f.engine.feed_bounds().unwrap().1)
        .unwrap();

    let outcome = f
        .engine
        .send(send(deals[0], "decline", "d-1"))
        .await
        .unwrap();
    assert_eq!(outcome.state, "declined");

    let after = f.engine.get(account).await.unwrap();
    assert_eq!(after.state, "lost");
    assert_eq!(after.status, InstanceStatus::Completed);
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.data["open_deals"], 0);
    let entry = f.engine.history(account, before.version, 10).await.unwrap();
    assert_eq!(entry.len(), 1);
    let entry = &entry[0];
    assert_eq!(entry.kind, ChangeKind::LinkedCommand { by: deals[0] });
    assert_eq!(entry.actor.id, "system:deal");
    assert_eq!(entry.actor.roles, vec!["system".to_string()]);
    assert_eq!(entry.command.as_deref(), Some("deal_closed"));
    assert_eq!(entry.request_id.as_deref(), Some("d-1"));
    assert_eq!(entry.reason, "a deal closed; 0 open");
    assert_eq!(
        (entry.from_state.as_deref(), entry.to_state.as_str()),
        (Some("open"), "lost")
    );

    // One event per instance change, the sender's first, in one commit (consecutive offsets).
    let mut events = Vec::new();
    for _ in 0..2 {
        events.push(
            tokio::time::timeout(StdDuration::from_secs(10), feed.next())
                .await
                .expect("event in time")
                .unwrap(),
        );
    }
    assert_eq!(events[0].subject, deals[0].to_string());
    assert_eq!(events[1].subject, account.to_string());
    assert_eq!(events[1].kind, EventType::InstanceTransitioned);
    assert_eq!(events[1].offset, events[0].offset + 1);
    let data: Value = serde_json::from_str(events[1].data_json.get()).unwrap();
    assert_eq!(data["to_state"], "lost");
    assert_eq!(data["actor"]["id"], "system:deal");

    // A retry with the same request id is answered from its record: nothing is sent twice.
    let again = f
        .engine
        .send(send(deals[0], "decline", "d-1"))
        .await
        .unwrap();
    assert_eq!(again, outcome);
    assert_eq!(f.engine.get(account).await.unwrap().version, after.version);
    f.engine.shutdown().await;
}

#[tokio::test]
async fn a_refused_linked_command_refuses_the_whole_command_and_writes_nothing() {
    let f = fixture().await;
    let (account, deals) = account_with_deals(&f.engine, 2).await;
    // `audit` is for auditors only: `system` may not send it.
    *f.decline.lock().unwrap() = vec![(LinkedTarget::Parent, "audit".into(), json!({}))];
    let (account_before, deal_before) = (
        f.engine.get(account).await.unwrap(),
        f.engine.get(deals[0]).await.unwrap(),
    );
    let head = f.engine.feed_bounds().unwrap().1;
    let refused = f
        .engine
        .send(send(deals[0], "decline", "d-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "LINKED_COMMAND_REFUSED", "{refused}");
    let CommandError::LinkedCommandRefused {
        instance,
        definition,
        command,
        cause,
    } = &refused
    else {
        panic!("{refused:?}")
    };
    assert_eq!(
        (*instance, definition.as_str(), command.as_str()),
        (account, "account", "audit")
    );
    assert_eq!(cause.code(), "ROLE_NOT_ALLOWED", "{cause}");
    assert!(refused.to_string().contains("role"), "{refused}");
    assert_eq!(f.engine.get(account).await.unwrap(), account_before);
    assert_eq!(f.engine.get(deals[0]).await.unwrap(), deal_before);
    assert_eq!(f.engine.feed_bounds().unwrap().1, head, "no event");

    // The wrong state there refuses it too; the request id stays free (no record written).
    *f.decline.lock().unwrap() = vec![(LinkedTarget::Parent, "win".into(), json!({}))];
    f.engine
        .send(send(deals[1], "decline", "d-2"))
        .await
        .unwrap();
    assert_eq!(f.engine.get(account).await.unwrap().state, "won");
    let refused = f
        .engine
        .send(send(deals[0], "decline", "d-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "LINKED_COMMAND_REFUSED", "{refused}");
    let CommandError::LinkedCommandRefused { cause, .. } = &refused else {
        panic!("{refused:?}")
    };
    assert_eq!(cause.code(), "NOT_ACTIVE", "{cause}");
    assert_eq!(f.engine.get(deals[0]).await.unwrap(), deal_before);

    f.engine.shutdown().await;
}

#[tokio::test]
async fn an_invalid_payload_for_the_linked_command_is_refused_naming_its_field() {
    let f = fixture().await;
    let (account, deals) = account_with_deals(&f.engine, 1).await;
    *f.decline.lock().unwrap() = vec![(
        LinkedTarget::Parent,
        "deal_closed".into(),
        json!({ "ping_back": "yes" }),
    )];
    let before = f.engine.get(account).await.unwrap();
    let refused = f
        .engine
        .send(send(deals[0], "decline", "d-1"))
        .await
        .unwrap_err();
    let CommandError::LinkedCommandRefused { cause, .. } = &refused else {
        panic!("{refused:?}")
    };
    assert_eq!(cause.code(), "INVALID_PAYLOAD", "{cause}");
    assert!(refused.to_string().contains("ping_back"), "{refused}");
    assert_eq!(f.engine.get(account).await.unwrap(), before);
    // With nothing sent, the decline goes through on its own.
    *f.decline.lock().unwrap() = vec![];
    f.engine
        .send(send(deals[0], "decline", "d-1"))
        .await
        .unwrap();
    assert_eq!(f.engine.get(account).await.unwrap(), before);
    f.engine.shutdown().await;
}

#[tokio::test]
async fn a_decision_may_send_only_declared_commands_to_linked_instances() {
    let f = fixture().await;
    let (account, deals) = account_with_deals(&f.engine, 1).await;
    let (other, _) = account_with_deals(&f.engine, 0).await;
    let deal_before = f.engine.get(deals[0]).await.unwrap();
    let cases: Vec<(Vec<Send>, &str)> = vec![
        (
            vec![(LinkedTarget::Parent, "open_deal".into(), json!({}))],
            "may only send: account.deal_closed, account.audit, account.win",
        ),
        (
            closed(LinkedTarget::Instance(other)),
            "which is not its parent, root or child",
        ),
        (
            vec![(LinkedTarget::Parent, "deal_closed".into(), json!({})); 2],
            "twice",
        ),
    ];
    for (plan, expected) in cases {
        *f.decline.lock().unwrap() = plan;
        let refused = f
            .engine
            .send(send(deals[0], "decline", "d-1"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), "DECISION_INVALID", "{refused}");
        assert!(refused.to_string().contains(expected), "{refused}");
        assert_eq!(f.engine.get(deals[0]).await.unwrap(), deal_before);
    }
    // A command sent by a linked instance may not send one on.
    *f.decline.lock().unwrap() = vec![(
        LinkedTarget::Root,
        "deal_closed".into(),
        json!({ "ping_back": true, "from": deals[0] }),
    )];
    let refused = f
        .engine
        .send(send(deals[0], "decline", "d-1"))
        .await
        .unwrap_err();
    let CommandError::LinkedCommandRefused { cause, .. } = &refused else {
        panic!("{refused:?}")
    };
    assert_eq!(cause.code(), "DECISION_INVALID", "{cause}");
    assert!(
        cause.to_string().contains(&format!(
            "it sends `note` to its instance {}, but a command sent by a linked instance may not send further commands",
            deals[0]
        )),
        "{cause}"
    );
    assert_eq!(f.engine.get(account).await.unwrap().data["open_deals"], 1);
    f.engine.shutdown().await;
}

#[tokio::test]
async fn the_root_is_the_top_of_the_chain_and_a_sent_command_sees_the_senders_new_state() {
    let f = fixture().await;
    let (account, deals) = account_with_deals(&f.engine, 1).await;
    // Accepting starts a task and wins the account in one commit.
    let accepted = f
        .engine
        .send(send(deals[0], "accept", "acc"))
        .await
        .unwrap();
    let task = accepted.started[0];
    assert_eq!(f.engine.get(account).await.unwrap().state, "won");

    // The task's root is the account (two levels up); its parent is the deal.
    *f.finish.lock().unwrap() = vec![(LinkedTarget::Root, "win".into(), json!({}))];
    let refused = f
        .engine
        .send(send(task, "finish", "fin-1"))
        .await
        .unwrap_err();
    let CommandError::LinkedCommandRefused {
        instance, cause, ..
    } = &refused
    else {
        panic!("{refused:?}")
    };
    assert_eq!(*instance, account, "the root, not the parent");
    assert_eq!(cause.code(), "NOT_ACTIVE");

    let deal_version = f.engine.get(deals[0]).await.unwrap().version;
    *f.finish.lock().unwrap() = vec![(LinkedTarget::Parent, "note".into(), json!({}))];
    f.engine.send(send(task, "finish", "fin-2")).await.unwrap();
    let deal = f.engine.get(deals[0]).await.unwrap();
    assert_eq!(deal.version, deal_version + 1);
    assert_eq!(f.engine.get(task).await.unwrap().state, "done");
    f.engine.shutdown().await;
}

#[tokio::test]
async fn a_parent_may_send_to_a_child_which_sees_the_parents_new_state() {
    let f = fixture().await;
    let (account, deals) = account_with_deals(&f.engine, 1).await;
    let (_, others) = account_with_deals(&f.engine, 1).await;
    let nudge = |deal: InstanceId, id: &str| {
        send(account, "nudge", id).payload(json!({ "deal": deal.to_string() }))
    };
    f.engine.send(nudge(deals[0], "n-1")).await.unwrap();
    let last = f.engine.history(deals[0], 0, 10).await.unwrap();
    let last = last.last().unwrap();
    assert_eq!(last.kind, ChangeKind::LinkedCommand { by: account });
    assert_eq!(
        last.reason, "noted; parent nudged: true",
        "the child decides on the parent as this commit leaves it"
    );
    // Another account's deal is not its child.
    let refused = f.engine.send(nudge(others[0], "n-2")).await.unwrap_err();
    assert_eq!(refused.code(), "DECISION_INVALID");
    assert!(
        refused
            .to_string()
            .contains("which is not its parent, root or child"),
        "{refused}"
    );
    f.engine.shutdown().await;
}

#[tokio::test]
async fn concurrent_senders_to_one_parent_never_lose_an_update() {
    let f = fixture().await;
    let deals_n = 8;
    let (account, deals) = account_with_deals(&f.engine, deals_n).await;
    *f.decline.lock().unwrap() = closed(LinkedTarget::Parent);
    let engine = Arc::new(f.engine);
    let mut tasks = Vec::new();
    for (i, deal) in deals.iter().enumerate() {
        let engine = engine.clone();
        let deal = *deal;
        tasks.push(tokio::spawn(async move {
            engine.send(send(deal, "decline", &format!("d-{i}"))).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let after = engine.get(account).await.unwrap();
    assert_eq!(after.data["open_deals"], 0);
    assert_eq!(after.state, "lost");
    let history = engine.history(account, 0, 100).await.unwrap();
    let closes: Vec<_> = history
        .iter()
        .filter(|h| matches!(h.kind, ChangeKind::LinkedCommand { .. }))
        .collect();
    assert_eq!(closes.len(), deals_n, "one entry per declined deal");
    assert_eq!(
        closes.iter().filter(|h| h.to_state == "lost").count(),
        1,
        "lost exactly once, by the last"
    );
}

#[test]
fn a_send_declaration_must_name_a_loaded_definition_and_one_of_its_commands() {
    let d = deciders(Plan::default(), Plan::default());
    for (entry, expected) in [
        (
            "\"nope.win\"",
            "names definition `nope`, which is not loaded",
        ),
        ("\"account.lose\"", "`account` has no command `lose`"),
        ("\"account\"", "must be `<definition>.<command>`"),
    ] {
        let deal = DEAL.replace(
            "send = [\"account.win\"], start",
            &format!("send = [{entry}], start"),
        );
        assert_ne!(deal, DEAL);
        let errors = DefinitionSet::from_sources(
            &[
                ("account.toml".into(), ACCOUNT.into()),
                ("deal.toml".into(), deal),
                ("task.toml".into(), TASK.into()),
            ],
            &d,
        )
        .unwrap_err()
        .to_string();
        assert!(errors.contains("deal.toml:"), "{errors}");
        assert!(errors.contains(expected), "{errors}");
    }
}
