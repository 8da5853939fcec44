//! The storage contract, run against every store implementation: version checks, request-id
//! uniqueness, counters and index upkeep happen inside the store's own atomic write.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use switchyard_core::store::*;
use switchyard_core::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn instance(id: InstanceId, version: u64, state: &str, key: &str) -> Instance {
    Instance {
        id,
        definition: DefinitionRef {
            name: "order".into(),
            version: 1,
        },
        business_key: key.into(),
        state: state.into(),
        status: InstanceStatus::Active,
        data: json!({ "v": version }),
        version,
        parent: None,
        owner: Some("ana".into()),
        timers: vec![],
        rule_set: None,
        incidents: vec![],
        created_at: t0(),
        updated_at: t0(),
    }
}

fn entry(i: &Instance) -> HistoryEntry {
    HistoryEntry {
        instance: i.id,
        version: i.version,
        at: t0(),
        actor: Actor::new("a", &["r"]),
        request_id: None,
        kind: ChangeKind::Command,
        command: Some("c".into()),
        payload: json!({}),
        from_state: None,
        to_state: i.state.clone(),
        decider: None,
        reason: "test".into(),
        changes: json!({}),
        provenance: None,
    }
}

fn write(i: Instance, expected: Option<u64>) -> Commit {
    Commit {
        at: t0(),
        request: None,
        counter_checks: vec![],
        balances: vec![],
        balance_checks: vec![],
        history: vec![entry(&i)],
        events: vec![event(&i)],
        jobs: vec![],
        writes: vec![InstanceWrite {
            instance: i,
            expected_version: expected,
        }],
        counters: vec![],
    }
}

fn event(i: &Instance) -> switchyard_core::feed::EventDraft {
    switchyard_core::feed::EventDraft {
        source: "test".into(),
        kind: EventType::InstanceTransitioned,
        subject: i.id.to_string(),
        time: i.updated_at,
        data: json!({ "data": i.data, "version": i.version }),
    }
}

fn request(id: &str, outcome_instance: InstanceId, at: DateTime<Utc>) -> RequestRecord {
    RequestRecord {
        request_id: id.into(),
        target: RequestTarget::Command {
            instance: outcome_instance,
            command: "c".into(),
        },
        payload_digest: "0".repeat(64),
        outcome: CommandOutcome::of(&instance(outcome_instance, 1, "created", ""), "r".into()),
        recorded_at: at,
        expires_at: at + Duration::days(7),
    }
}

fn one(store: &dyn Store, c: Commit) -> Result<CommitApplied, CommitRefusal> {
    store.commit(&[c]).unwrap().pop().unwrap()
}

fn list(store: &dyn Store, state: Option<&str>, key: Option<&str>) -> Vec<InstanceId> {
    store
        .list(&ListQuery {
            definition: Some("order".into()),
            state: state.map(Into::into),
            business_key: key.map(Into::into),
            page_size: 100,
            after: None,
        })
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.id)
        .collect()
}

fn version_checks_refuse_and_write_nothing(store: &dyn Store) {
    let id = InstanceId::new();
    one(store, write(instance(id, 1, "created", "K"), None)).unwrap();
    let refused = one(store, write(instance(id, 1, "created", "K"), None)).unwrap_err();
    assert_eq!(
        refused,
        CommitRefusal::VersionConflict {
            instance: id,
            expected: None,
            current: Some(1)
        }
    );
    let mut stale = write(instance(id, 2, "confirmed", "K2"), Some(5));
    stale.request = Some(request("req-stale", id, t0()));
    let refused = one(store, stale).unwrap_err();
    assert_eq!(
        refused,
        CommitRefusal::VersionConflict {
            instance: id,
            expected: Some(5),
            current: Some(1)
        }
    );
    assert_eq!(store.instance(id).unwrap().unwrap().state, "created");
    assert_eq!(store.history(id, 0, 10).unwrap().len(), 1);
    assert!(store.request("req-stale").unwrap().is_none());
    assert_eq!(list(store, Some("confirmed"), None), vec![]);
    assert_eq!(list(store, None, Some("K2")), vec![]);

    one(store, write(instance(id, 2, "confirmed", "K"), Some(1))).unwrap();
    assert_eq!(store.instance(id).unwrap().unwrap().version, 2);
    assert_eq!(
        list(store, Some("created"), None),
        vec![],
        "old state index removed"
    );
    assert_eq!(list(store, Some("confirmed"), None), vec![id]);
    let missing = InstanceId::new();
    let refused = one(store, write(instance(missing, 2, "x", "K"), Some(1))).unwrap_err();
    assert_eq!(
        refused,
        CommitRefusal::VersionConflict {
            instance: missing,
            expected: Some(1),
            current: None
        }
    );
}

fn live_request_ids_are_unique_and_expire(store: &dyn Store) {
    let a = InstanceId::new();
    let mut c = write(instance(a, 1, "created", "R"), None);
    c.request = Some(request("req-1", a, t0()));
    one(store, c).unwrap();
    let b = InstanceId::new();
    let mut dup = write(instance(b, 1, "created", "R"), None);
    dup.request = Some(request("req-1", b, t0() + Duration::days(1)));
    let CommitRefusal::DuplicateRequest(existing) = one(store, dup.clone()).unwrap_err() else {
        panic!("expected a duplicate")
    };
    assert_eq!(existing.outcome.instance, a);
    assert!(
        store.instance(b).unwrap().is_none(),
        "the refused commit wrote nothing"
    );
    // After expiry the id is free again.
    dup.at = t0() + Duration::days(7);
    dup.request.as_mut().unwrap().recorded_at = dup.at;
    dup.request.as_mut().unwrap().expires_at = dup.at + Duration::days(7);
    one(store, dup).unwrap();
    assert_eq!(store.request("req-1").unwrap().unwrap().outcome.instance, b);
    // Purge removes only expired records.
    assert_eq!(
        store.purge_requests(t0() + Duration::days(8), 100).unwrap(),
        0,
        "the new record is live"
    );
    assert_eq!(
        store
            .purge_requests(t0() + Duration::days(14), 100)
            .unwrap(),
        1
    );
    assert!(store.request("req-1").unwrap().is_none());
}

fn counters_draw_gap_free_with_limits_and_assignment(store: &dyn Store) {
    let id = InstanceId::new();
    let draw = |limit| CounterDraw {
        counter: "n".into(),
        key: "2026".into(),
        limit,
        assign: None,
        give_back: false,
    };
    let mut c = write(instance(id, 1, "created", "C"), None);
    c.counters = vec![
        CounterDraw {
            assign: Some(CounterAssign {
                field: "number".into(),
                prefix: "SO-".into(),
                width: 4,
            }),
            ..draw(None)
        },
        draw(None),
    ];
    let applied = one(store, c).unwrap();
    assert_eq!(
        applied.counters.iter().map(|c| c.value).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let stored = store.instance(id).unwrap().unwrap();
    assert_eq!(stored.data["number"], "SO-0001");
    assert_eq!(
        store.history(id, 0, 1).unwrap()[0].changes["number"],
        "SO-0001"
    );
    assert_eq!(store.counter("n", "2026").unwrap(), 2);
    assert_eq!(store.counter("n", "2027").unwrap(), 0);

    let other = InstanceId::new();
    let mut c = write(instance(other, 1, "created", "C"), None);
    c.counters = vec![draw(Some(2))];
    let refused = one(store, c).unwrap_err();
    assert_eq!(
        refused,
        CommitRefusal::CounterLimit {
            counter: "n".into(),
            key: "2026".into(),
            limit: 2
        }
    );
    assert!(store.instance(other).unwrap().is_none());
    assert_eq!(store.counter("n", "2026").unwrap(), 2);

    // A limit is the last value allowed: drawing exactly up to it succeeds.
    let at_limit = InstanceId::new();
    let mut c = write(instance(at_limit, 1, "created", "C"), None);
    c.counters = vec![draw(Some(3))];
    assert_eq!(one(store, c).unwrap().counters[0].value, 3);

    // Draws in one commit count on from each other only for the same counter and key.
    let mixed = InstanceId::new();
    let mut c = write(instance(mixed, 1, "created", "C"), None);
    let on = |counter: &str, key: &str| CounterDraw {
        counter: counter.into(),
        key: key.into(),
        limit: None,
        assign: None,
        give_back: false,
    };
    c.counters = vec![
        on("m", "a"),
        on("m", "b"),
        on("o", "a"),
        on("m", "a"),
        on("o", "b"),
    ];
    let values: Vec<u64> = one(store, c)
        .unwrap()
        .counters
        .iter()
        .map(|c| c.value)
        .collect();
    assert_eq!(values, vec![1, 1, 1, 2, 1]);
    assert_eq!(store.counter("m", "a").unwrap(), 2);
    assert_eq!(store.counter("m", "b").unwrap(), 1);
    assert_eq!(store.counter("o", "a").unwrap(), 1);

    // A usage given back lowers the counter, never below zero, limits aside; in one commit a
    // give-back counts on from a draw before it.
    let back = |counter: &str, key: &str| CounterDraw {
        give_back: true,
        ..on(counter, key)
    };
    let returned = InstanceId::new();
    let mut c = write(instance(returned, 1, "created", "C"), None);
    c.counters = vec![back("m", "a"), on("m", "b"), back("m", "b"), back("o", "x")];
    let values: Vec<u64> = one(store, c)
        .unwrap()
        .counters
        .iter()
        .map(|c| c.value)
        .collect();
    assert_eq!(values, vec![1, 2, 1, 0]);
    assert_eq!(store.counter("m", "a").unwrap(), 1);
    assert_eq!(store.counter("m", "b").unwrap(), 1);
    assert_eq!(store.counter("o", "x").unwrap(), 0, "never below zero");
    // A value the decision read must still hold: checked before the draws of the commit.
    let checked = |value| {
        let mut c = write(instance(InstanceId::new(), 1, "created", "C"), None);
        c.counter_checks = vec![CounterValue {
            counter: "m".into(),
            key: "b".into(),
            value,
        }];
        c.counters = vec![on("m", "b")];
        c
    };
    let refused = one(store, checked(0)).unwrap_err();
    assert_eq!(
        refused,
        CommitRefusal::CounterChanged {
            counter: "m".into(),
            key: "b".into(),
            read: 0,
            current: 1
        }
    );
    assert_eq!(store.counter("m", "b").unwrap(), 1, "nothing drawn");
    assert_eq!(one(store, checked(1)).unwrap().counters[0].value, 2);
    // A limited draw after a give-back gets the freed use.
    let again = InstanceId::new();
    let mut c = write(instance(again, 1, "created", "C"), None);
    c.counters = vec![CounterDraw {
        limit: Some(2),
        ..on("m", "a")
    }];
    assert_eq!(one(store, c).unwrap().counters[0].value, 2);
}

fn balances_move_exactly_and_a_changed_read_refuses_the_commit(store: &dyn Store) {
    let d = |s: &str| s.parse::<rust_decimal::Decimal>().unwrap();
    let by = |key: &str, amount: &str| BalanceChange {
        balance: "uninvoiced".into(),
        key: key.into(),
        amount: d(amount),
    };
    assert_eq!(store.balance("uninvoiced", "ACME/EUR").unwrap(), d("0"));
    let mut c = write(instance(InstanceId::new(), 1, "created", "B"), None);
    c.balances = vec![
        by("ACME/EUR", "0.1"),
        by("ACME/EUR", "0.2"),
        by("BETA/EUR", "-5.00"),
    ];
    one(store, c).unwrap();
    assert_eq!(
        store.balance("uninvoiced", "ACME/EUR").unwrap(),
        d("0.3"),
        "exact, in order"
    );
    assert_eq!(store.balance("uninvoiced", "BETA/EUR").unwrap(), d("-5.00"));
    assert_eq!(
        store.balance("receivable", "ACME/EUR").unwrap(),
        d("0"),
        "names apart"
    );
    // A value the decision read must still hold when the commit is written.
    let checked = |value: &str| {
        let mut c = write(instance(InstanceId::new(), 1, "created", "B"), None);
        c.balance_checks = vec![BalanceRead {
            balance: "uninvoiced".into(),
            key: "ACME/EUR".into(),
            value: d(value),
        }];
        c.balances = vec![by("ACME/EUR", "100")];
        c
    };
    assert_eq!(
        one(store, checked("0")).unwrap_err(),
        CommitRefusal::BalanceChanged {
            balance: "uninvoiced".into(),
            key: "ACME/EUR".into(),
            read: d("0"),
            current: d("0.3"),
        }
    );
    assert_eq!(
        store.balance("uninvoiced", "ACME/EUR").unwrap(),
        d("0.3"),
        "nothing moved"
    );
    one(store, checked("0.30")).unwrap();
    assert_eq!(store.balance("uninvoiced", "ACME/EUR").unwrap(), d("100.3"));
}

fn a_batch_applies_in_order_and_refusals_are_isolated(store: &dyn Store) {
    let id = InstanceId::new();
    let other = InstanceId::new();
    let results = store
        .commit(&[
            write(instance(id, 1, "created", "B"), None),
            write(instance(id, 2, "confirmed", "B"), Some(1)),
            write(instance(id, 3, "shipped", "B"), Some(1)),
            write(instance(other, 1, "created", "B"), None),
        ])
        .unwrap();
    assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok());
    assert_eq!(
        results[2],
        Err(CommitRefusal::VersionConflict {
            instance: id,
            expected: Some(1),
            current: Some(2)
        }),
        "a later commit sees the earlier ones in the same batch"
    );
    assert_eq!(store.instance(id).unwrap().unwrap().state, "confirmed");
    assert_eq!(
        store
            .history(id, 0, 10)
            .unwrap()
            .iter()
            .map(|h| h.version)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(store.history(id, 1, 10).unwrap().len(), 1);
    assert!(store.instance(other).unwrap().is_some());
}

fn links_are_indexed_both_ways(store: &dyn Store) {
    let parent = InstanceId::new();
    one(store, write(instance(parent, 1, "created", "L"), None)).unwrap();
    let mut children = Vec::new();
    for _ in 0..3 {
        let id = InstanceId::new();
        let mut child = instance(id, 1, "created", "L-child");
        child.parent = Some(parent);
        one(store, write(child, None)).unwrap();
        children.push(id);
    }
    assert_eq!(store.children(parent, None, 10).unwrap(), children);
    assert_eq!(
        store.children(parent, Some(children[0]), 10).unwrap(),
        children[1..]
    );
    assert_eq!(store.children(parent, None, 2).unwrap(), children[..2]);
    assert_eq!(
        store.instance(children[2]).unwrap().unwrap().parent,
        Some(parent)
    );
}

fn feed_offsets_are_gap_free_and_refusals_take_none(store: &dyn Store) {
    assert_eq!(store.feed_bounds().unwrap(), (1, 0));
    let id = InstanceId::new();
    let mut first = write(instance(id, 1, "created", "E"), None);
    first.events.push(event(&first.writes[0].instance));
    first.counters = vec![CounterDraw {
        counter: "n".into(),
        key: "k".into(),
        limit: None,
        assign: Some(CounterAssign {
            field: "number".into(),
            prefix: "N".into(),
            width: 2,
        }),
        give_back: false,
    }];
    let results = store
        .commit(&[
            first,
            write(instance(id, 2, "x", "E"), Some(7)), // refused: takes no offset
            write(instance(id, 2, "confirmed", "E"), Some(1)),
        ])
        .unwrap();
    assert_eq!(results[0].as_ref().unwrap().last_offset, 2);
    assert!(results[1].is_err());
    assert_eq!(results[2].as_ref().unwrap().last_offset, 3);
    one(
        store,
        write(instance(InstanceId::new(), 1, "created", "E"), None),
    )
    .unwrap();
    let events = store.feed(0, 100, usize::MAX).unwrap();
    assert_eq!(
        events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(events[0].id, "test/1");
    assert_eq!(
        events[0].data()["data"]["number"],
        "N01",
        "the counter assignment reaches the event"
    );
    assert_eq!(events[2].data()["version"], 2);
    assert_eq!(store.feed(2, 1, usize::MAX).unwrap()[0].offset, 3);
    // A page stops at its byte bound, but holds at least one event.
    let offsets = |after, bytes| -> Vec<u64> {
        let page = store.feed(after, 100, bytes).unwrap();
        page.iter().map(|e| e.offset).collect()
    };
    assert_eq!(offsets(0, 1), vec![1]);
    assert_eq!(offsets(1, 1), vec![2]);
    assert!(
        offsets(0, 300).len() < 4,
        "4 events are more than 300 bytes as stored"
    );
    assert_eq!(store.feed_bounds().unwrap(), (1, 4));

    // Retention purges the oldest events and moves the horizon.
    let mut late = write(instance(InstanceId::new(), 1, "created", "E"), None);
    late.events[0].time = t0() + Duration::days(10);
    one(store, late).unwrap();
    assert_eq!(store.purge_feed(t0() + Duration::days(1), 100).unwrap(), 4);
    assert_eq!(store.feed_bounds().unwrap(), (5, 5));
    assert_eq!(
        store
            .feed(0, 100, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.offset)
            .collect::<Vec<_>>(),
        vec![5]
    );
}

fn jobs_are_version_checked_and_indexed_for_activation(store: &dyn Store) {
    let instance_id = InstanceId::new();
    let job = Job {
        id: JobId(uuid::Uuid::now_v7()),
        job_type: "pick".into(),
        instance: instance_id,
        payload: json!({}),
        status: JobStatus::Activatable,
        failures: 0,
        retries: 3,
        backoff_ms: 1000,
        available_at: t0(),
        lease: None,
        last_error: None,
        failed_lease: None,
        complete_command: "picked".into(),
        version: 1,
        created_at: t0(),
        updated_at: t0(),
    };
    let mut c = write(instance(instance_id, 1, "created", "J"), None);
    c.jobs = vec![JobWrite {
        job: job.clone(),
        expected_version: None,
    }];
    one(store, c).unwrap();
    assert_eq!(
        store.activatable_jobs("pick", t0(), 10).unwrap(),
        vec![job.clone()]
    );
    assert!(store
        .activatable_jobs("pick", t0() - Duration::seconds(1), 10)
        .unwrap()
        .is_empty());
    assert!(store.activatable_jobs("pack", t0(), 10).unwrap().is_empty());
    assert_eq!(
        store.jobs_of(instance_id, None, 100).unwrap(),
        vec![job.clone()]
    );
    assert_eq!(store.jobs_after(None, 100).unwrap(), vec![job.clone()]);
    assert!(store.jobs_after(Some(job.id), 100).unwrap().is_empty());

    let mut done = job.clone();
    done.status = JobStatus::Completed;
    done.version = 2;
    let jobs_only = |j: Job, expected| Commit {
        at: t0(),
        request: None,
        writes: vec![],
        history: vec![],
        counters: vec![],
        counter_checks: vec![],
        balances: vec![],
        balance_checks: vec![],
        events: vec![],
        jobs: vec![JobWrite {
            job: j,
            expected_version: expected,
        }],
    };
    let refused = one(store, jobs_only(done.clone(), Some(5))).unwrap_err();
    assert_eq!(
        refused,
        CommitRefusal::JobConflict {
            job: job.id,
            expected: Some(5),
            current: Some(1)
        }
    );
    one(store, jobs_only(done.clone(), Some(1))).unwrap();
    assert!(
        store
            .activatable_jobs("pick", t0() + Duration::days(1), 10)
            .unwrap()
            .is_empty(),
        "finished jobs leave the index"
    );
    assert_eq!(
        store.job(job.id).unwrap().unwrap().status,
        JobStatus::Completed
    );
}

fn jobs_page_and_rule_sets_read_one_at_a_time(store: &dyn Store) {
    let instance_id = InstanceId::new();
    let jobs: Vec<Job> = (0..3)
        .map(|_| Job {
            id: JobId(uuid::Uuid::now_v7()),
            job_type: "pick".into(),
            instance: instance_id,
            payload: json!({}),
            status: JobStatus::Activatable,
            failures: 0,
            retries: 3,
            backoff_ms: 1000,
            available_at: t0(),
            lease: None,
            last_error: None,
            failed_lease: None,
            complete_command: "picked".into(),
            version: 1,
            created_at: t0(),
            updated_at: t0(),
        })
        .collect();
    let mut c = write(instance(instance_id, 1, "created", "P"), None);
    c.jobs = jobs
        .iter()
        .map(|j| JobWrite {
            job: j.clone(),
            expected_version: None,
        })
        .collect();
    one(store, c).unwrap();
    let first = store.jobs_of(instance_id, None, 2).unwrap();
    assert_eq!(first, jobs[..2].to_vec());
    let rest = store.jobs_of(instance_id, Some(first[1].id), 2).unwrap();
    assert_eq!(rest, jobs[2..].to_vec());

    for number in 1..=3 {
        store
            .add_rule_set(&RuleSetRecord {
                number,
                version: format!("v{number}"),
                files: [("definitions/a.toml".to_string(), "x".to_string())].into(),
                deployed_at: t0(),
                deployed_by: "ada".into(),
            })
            .unwrap();
        store.set_active_rule_set(number, t0(), "ada").unwrap();
    }
    assert_eq!(store.active_rule_set().unwrap(), Some(3));
    store.set_active_rule_set(1, t0(), "bob").unwrap();
    assert_eq!(store.rule_set(2).unwrap().unwrap().version, "v2");
    assert!(store.rule_set(4).unwrap().is_none());
    let log = store.rule_set_activations().unwrap();
    let seqs: Vec<(u64, u32)> = log.iter().map(|a| (a.seq, a.number)).collect();
    assert_eq!(
        seqs,
        [(1, 1), (2, 2), (3, 3), (4, 1)],
        "oldest first, numbered in order"
    );
    assert_eq!(store.active_rule_set().unwrap(), Some(1));
    assert_eq!(
        store
            .rule_sets()
            .unwrap()
            .iter()
            .map(|r| r.number)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );

    // A store keeps rule sets numbered up to 10,000.
    let numbered = |number| RuleSetRecord {
        number,
        version: format!("v{number}"),
        files: [("definitions/a.toml".to_string(), "x".to_string())].into(),
        deployed_at: t0(),
        deployed_by: "ada".into(),
    };
    store.add_rule_set(&numbered(10_000)).unwrap();
    let err = store.add_rule_set(&numbered(10_001)).unwrap_err();
    assert!(err.to_string().contains("at most 10000"), "{err}");
    let err = store.add_rule_set(&numbered(2)).unwrap_err();
    assert!(err.to_string().contains("#2 already exists"), "{err}");
}

fn due_timers_are_those_due_at_or_before_now(store: &dyn Store) {
    let mut early = instance(InstanceId::new(), 1, "created", "T");
    let mut late = instance(InstanceId::new(), 1, "created", "T");
    let timer = |due| OpenTimer {
        name: "expire".into(),
        command: "expire".into(),
        due,
    };
    early.timers = vec![timer(t0())];
    late.timers = vec![timer(t0() + Duration::nanoseconds(1000))];
    one(store, write(early.clone(), None)).unwrap();
    one(store, write(late.clone(), None)).unwrap();
    let due = |now| {
        store
            .due_timers(now, 10)
            .unwrap()
            .iter()
            .map(|d| d.instance)
            .collect::<Vec<_>>()
    };
    assert_eq!(due(t0() - Duration::nanoseconds(1000)), []);
    assert_eq!(due(t0()), [early.id], "due exactly now is due");
    assert_eq!(due(t0() + Duration::seconds(1)), [early.id, late.id]);
}

fn credentials_are_found_by_hash_and_id_and_paged_in_id_order(store: &dyn Store) {
    let roles = vec!["system".to_string()];
    let made: Vec<Credential> = (0..5)
        .map(|n| Credential::new(&format!("sy_token-{n}"), "svc", &roles, None, t0(), "ada"))
        .collect();
    store.put_credentials(&made[..2]).unwrap();
    store.put_credentials(&made[2..]).unwrap();
    for c in &made {
        let by_hash = store
            .credential(&credential::token_sha256(&format!(
                "sy_token-{}",
                made.iter().position(|m| m == c).unwrap()
            )))
            .unwrap();
        assert_eq!(by_hash.as_ref(), Some(c));
        assert_eq!(store.credential_by_id(&c.id).unwrap().as_ref(), Some(c));
    }
    assert_eq!(
        store
            .credential(&credential::token_sha256("sy_other"))
            .unwrap(),
        None
    );
    assert_eq!(store.credential_by_id("00000000000000ff").unwrap(), None);
    assert_eq!(store.credential_by_id("not hex").unwrap(), None);

    let mut ids: Vec<String> = made.iter().map(|c| c.id.clone()).collect();
    ids.sort();
    let first = store.credentials(None, 3).unwrap();
    let rest = store.credentials(Some(&first[2].id), 3).unwrap();
    let paged: Vec<String> = first.iter().chain(&rest).map(|c| c.id.clone()).collect();
    assert_eq!(paged, ids);

    let mut revoked = made[0].clone();
    revoked.revoked_at = Some(t0());
    store.put_credentials(&[revoked.clone()]).unwrap();
    assert_eq!(store.credential_by_id(&revoked.id).unwrap(), Some(revoked));
    assert_eq!(
        store.credentials(None, 10).unwrap().len(),
        5,
        "a change replaces"
    );
}

macro_rules! contract {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn version_checks_refuse_and_write_nothing() {
                let (store, _guard) = $make;
                super::version_checks_refuse_and_write_nothing(&*store);
            }
            #[test]
            fn live_request_ids_are_unique_and_expire() {
                let (store, _guard) = $make;
                super::live_request_ids_are_unique_and_expire(&*store);
            }
            #[test]
            fn due_timers_are_those_due_at_or_before_now() {
                let (store, _guard) = $make;
                super::due_timers_are_those_due_at_or_before_now(&*store);
            }
            #[test]
            fn counters_draw_gap_free_with_limits_and_assignment() {
                let (store, _guard) = $make;
                super::counters_draw_gap_free_with_limits_and_assignment(&*store);
            }
            #[test]
            fn balances_move_exactly_and_a_changed_read_refuses_the_commit() {
                let (store, _guard) = $make;
                super::balances_move_exactly_and_a_changed_read_refuses_the_commit(&*store);
            }
            #[test]
            fn a_batch_applies_in_order_and_refusals_are_isolated() {
                let (store, _guard) = $make;
                super::a_batch_applies_in_order_and_refusals_are_isolated(&*store);
            }
            #[test]
            fn feed_offsets_are_gap_free_and_refusals_take_none() {
                let (store, _guard) = $make;
                super::feed_offsets_are_gap_free_and_refusals_take_none(&*store);
            }
            #[test]
            fn jobs_are_version_checked_and_indexed_for_activation() {
                let (store, _guard) = $make;
                super::jobs_are_version_checked_and_indexed_for_activation(&*store);
            }
            #[test]
            fn links_are_indexed_both_ways() {
                let (store, _guard) = $make;
                super::links_are_indexed_both_ways(&*store);
            }
            #[test]
            fn credentials_are_found_by_hash_and_id_and_paged_in_id_order() {
                let (store, _guard) = $make;
                super::credentials_are_found_by_hash_and_id_and_paged_in_id_order(&*store);
            }
            #[test]
            fn jobs_page_and_rule_sets_read_one_at_a_time() {
                let (store, _guard) = $make;
                super::jobs_page_and_rule_sets_read_one_at_a_time(&*store);
            }
        }
    };
}

fn sled_store(durability: Durability) -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SledConfig::new(dir.path());
    config.durability = durability;
    (Arc::new(SledStore::open(&config).unwrap()), dir)
}

contract!(memory, (Arc::new(MemoryStore::new()) as Arc<dyn Store>, ()));
contract!(sled_flush, sled_store(Durability::Flush));
contract!(sled_fsync, sled_store(Durability::Fsync));

#[test]
fn sled_keeps_everything_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = SledConfig::new(dir.path());
    let id = InstanceId::new();
    {
        let store = SledStore::open(&config).unwrap();
        let mut c = write(instance(id, 1, "created", "Z"), None);
        c.request = Some(request("req-z", id, t0()));
        c.counters = vec![CounterDraw {
            counter: "n".into(),
            key: "k".into(),
            limit: None,
            assign: None,
            give_back: false,
        }];
        one(&store, c).unwrap();
    }
    let store = SledStore::open(&config).unwrap();
    assert_eq!(store.instance(id).unwrap().unwrap().business_key, "Z");
    assert_eq!(store.history(id, 0, 10).unwrap().len(), 1);
    assert_eq!(
        store.request("req-z").unwrap().unwrap().outcome.instance,
        id
    );
    assert_eq!(store.counter("n", "k").unwrap(), 1);
    assert_eq!(list(&store, None, Some("Z")), vec![id]);
}

#[test]
fn fsync_mode_syncs_once_per_batch_and_flush_mode_never() {
    for (durability, expect_fsync) in [(Durability::Fsync, true), (Durability::Flush, false)] {
        let (store, _dir) = sled_store(durability);
        for _ in 0..5 {
            let batch: Vec<Commit> = (0..3)
                .map(|_| write(instance(InstanceId::new(), 1, "created", "F"), None))
                .collect();
            store.commit(&batch).unwrap();
        }
        let stats = store.stats();
        assert_eq!(stats.batches, 5);
        assert_eq!(stats.commits, 15);
        assert_eq!(stats.flushes, 5, "one flush per batch (group commit)");
        assert_eq!(
            stats.fsyncs,
            if expect_fsync { 5 } else { 0 },
            "{durability:?}"
        );
    }
}

#[test]
fn a_corrupt_record_is_an_error_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = SledConfig::new(dir.path());
    let id = InstanceId::new();
    {
        let store = SledStore::open(&config).unwrap();
        one(&store, write(instance(id, 1, "created", "Q"), None)).unwrap();
    }
    // sled's background threads can hold the directory's lock a moment after a close; on a
    // loaded machine the opens below would then fail now and then, so they wait for it.
    fn retried<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> T {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            match open() {
                Ok(v) => return v,
                Err(e) if std::time::Instant::now() < until && e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    {
        // Damage the record behind the store's back.
        let db = retried(|| sled::open(dir.path()));
        let mut key = vec![b'i'];
        key.extend_from_slice(id.0.as_bytes());
        db.insert(key, b"I\x01{not json".to_vec()).unwrap();
        db.flush().unwrap();
    }
    let store = retried(|| SledStore::open(&config));
    let err = store.instance(id).unwrap_err().to_string();
    assert!(err.starts_with("corrupt record at key i"), "{err}");
}
