//! Definition loading: every class of mistake is refused with `file:line:col: message`.

use switchyard_core::*;

/// Loads `text` as `test.toml` (plus a valid `other.toml` so cross-references can resolve)
/// and returns every error, one per line.
fn errors(text: &str) -> String {
    let mut deciders = DeciderRegistry::new();
    deciders.register("q.decide", |_: &DecisionContext<'_>| {
        Ok(Decision::goto("done", "ok"))
    });
    let other = "name = \"other\"\nversion = 1\ninitial = \"a\"\n[start]\nroles = [\"system\"]\n[states]\na = { terminal = false }\nb = { terminal = true }\n[commands.go]\nfrom = [\"a\"]\nto = [\"b\"]\nroles = [\"system\"]\n";
    match DefinitionSet::from_sources(
        &[
            ("other.toml".into(), other.into()),
            ("test.toml".into(), text.into()),
        ],
        &deciders,
    ) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

const VALID: &str = r#"name = "quote"
version = 1
initial = "draft"

[start]
roles = ["sales_rep"]

[states]
draft = {}
done = { terminal = true }

[commands.finish]
from = ["draft"]
to = ["done"]
roles = ["sales_rep"]
decider = "q.decide"
"#;

fn check(from: &str, to: &str, expected: &str) {
    assert!(VALID.contains(from), "fixture lacks {from:?}");
    let text = VALID.replacen(from, to, 1);
    assert_eq!(errors(&text), expected, "for:\n{text}");
}

#[test]
fn the_valid_fixture_loads() {
    assert_eq!(errors(VALID), "");
}

#[test]
fn syntax_errors_and_unknown_keys_name_the_position() {
    check(
        "version = 1",
        "version = ",
        "test.toml:2:11: invalid string; expected `\"`, `'`",
    );
    check("initial = \"draft\"", "initial = \"draft\"\ncolour = \"red\"",
        "test.toml:4:1: unknown field `colour`, expected one of `name`, `version`, `description`, `initial`, `start`, `cancel`, `read`, `owner`, `states`, `commands`, `jobs`, `decisions`");
    check(
        "draft = {}",
        "draft = {}\ndraft = {}",
        "test.toml:10:1: duplicate key `draft` in table `states`",
    );
    check("decider = \"q.decide\"", "decider = \"q.decide\"\ntimeout = 5",
        "test.toml:17:1: unknown field `timeout`, expected one of `from`, `to`, `roles`, `owner_only`, `decider`, `payload`, `effects`, `description`");
}

#[test]
fn states_must_exist_be_reachable_and_not_dead_ends() {
    check("initial = \"draft\"", "initial = \"drafted\"",
        "test.toml:3:11: initial state `drafted` is not declared in [states]; declared: done, draft");
    check("to = [\"done\"]", "to = [\"finished\"]",
        "test.toml:14:6: command `finish`: `to` names unknown state `finished`; declared: done, draft\ntest.toml:10:8: state `done` is unreachable: no chain of commands leads to it from the initial state `draft`");
    check("from = [\"draft\"]", "from = [\"draft\", \"sent\"]",
        "test.toml:13:8: command `finish`: `from` names unknown state `sent`; declared: done, draft");
    check("done = { terminal = true }", "done = { terminal = true }\nlost = { terminal = true }",
        "test.toml:11:8: state `lost` is unreachable: no chain of commands leads to it from the initial state `draft`");
    check("done = { terminal = true }", "done = {}",
        "test.toml:10:8: state `done` is not terminal but no command leaves it; add a command from it or mark it `terminal = true`");
    check("draft = {}", "draft = { terminal = true }",
        "test.toml:3:11: initial state `draft` is terminal; an instance could never move\ntest.toml:13:8: command `finish`: `from` names terminal state `draft`; no command may leave a terminal state");
}

#[test]
fn commands_need_registered_deciders_roles_and_a_single_target_without_a_decider() {
    check("decider = \"q.decide\"", "decider = \"q.decied\"",
        "test.toml:16:11: command `finish`: decider `q.decied` is not registered; registered deciders: builtin.merge_payload, q.decide");
    check("decider = \"q.decide\"\n", "", "");
    check("to = [\"done\"]\nroles = [\"sales_rep\"]\ndecider = \"q.decide\"\n", "to = [\"done\", \"draft\"]\nroles = [\"sales_rep\"]\n",
        "test.toml:14:6: command `finish`: without a `decider`, `to` must name exactly one state (it names 2)");
    check("roles = [\"sales_rep\"]\ndecider", "roles = []\ndecider",
        "test.toml:15:9: command `finish`: `roles` is empty; name at least one role, e.g. [\"admin\"]");
    check("roles = [\"sales_rep\"]\ndecider", "roles = [\"Sales Rep\", \"x\", \"x\"]\ndecider",
        "test.toml:15:9: command `finish`: role `Sales Rep` is not an identifier (lower-case letters, digits, `_`)\ntest.toml:15:9: command `finish`: role `x` is listed twice");
    check("[commands.finish]", "[commands.Finish]",
        "test.toml:12:1: command `Finish`: the name is not an identifier (lower-case letters, digits, `_`)");
}

#[test]
fn owner_only_commands_and_owner_roles_load_and_are_checked() {
    let set = |text: &str| {
        let mut deciders = DeciderRegistry::new();
        deciders.register("q.decide", |_: &DecisionContext<'_>| {
            Ok(Decision::goto("done", "ok"))
        });
        DefinitionSet::from_sources(&[("test.toml".into(), text.into())], &deciders).unwrap()
    };
    let plain = set(VALID);
    let quote = plain.get("quote", 1).unwrap();
    assert!(!quote.commands["finish"].owner_only);
    assert_eq!(quote.owner_roles, vec!["admin"], "the default");
    let text = VALID
        .replacen(
            "roles = [\"sales_rep\"]\ndecider",
            "roles = [\"sales_rep\"]\nowner_only = true\ndecider",
            1,
        )
        .replacen(
            "[states]",
            "[owner]\nroles = [\"sales_manager\"]\n\n[states]",
            1,
        );
    let owned = set(&text);
    let quote = owned.get("quote", 1).unwrap();
    assert!(quote.commands["finish"].owner_only);
    assert_eq!(quote.owner_roles, vec!["sales_manager"]);
    check(
        "[states]",
        "[owner]\nroles = []\n\n[states]",
        "test.toml:9:9: [owner]: `roles` is empty; name at least one role, e.g. [\"admin\"]",
    );
    check(
        "decider = \"q.decide\"",
        "decider = \"q.decide\"\nowner_only = \"yes\"",
        "test.toml:17:14: invalid type: string \"yes\", expected a boolean",
    );
}

#[test]
fn names_versions_and_duplicates_are_checked() {
    check("name = \"quote\"", "name = \"Quote\"",
        "test.toml:1:8: definition name `Quote` is not an identifier; use lower-case letters, digits and `_`, starting with a letter");
    check(
        "version = 1",
        "version = 0",
        "test.toml:2:11: version must be a whole number from 1 up, got 0",
    );
    check(
        "name = \"quote\"",
        "name = \"other\"",
        "test.toml:1:8: definition `other` version 1 is defined twice (first in other.toml)",
    );
}

#[test]
fn effects_must_name_loaded_definitions() {
    check("decider = \"q.decide\"", "decider = \"q.decide\"\neffects = { start = [\"invoice\"], update = [\"other\"] }",
        "test.toml:17:11: command `finish`: effect names definition `invoice`, which is not loaded; loaded: other, quote");
}

#[test]
fn payload_schemas_are_checked() {
    let with_payload = |payload: &str| {
        VALID.replacen(
            "decider = \"q.decide\"",
            &format!("decider = \"q.decide\"\n{payload}"),
            1,
        )
    };
    let cases = [
        ("payload = { total = { type = \"moeny\" } }",
         "test.toml:17:30: unknown variant `moeny`, expected one of `string`, `integer`, `quantity`, `decimal`, `money`, `boolean`, `date`, `datetime`, `object`, `list`, `json`"),
        ("payload = { total = { type = \"money\", max_length = 3 } }",
         "test.toml:17:21: field `total`: `max_length` and `values` apply only to string fields, not money"),
        ("payload = { name = { type = \"string\", min = 1 } }",
         "test.toml:17:20: field `name`: `min` applies only to integer, quantity, decimal and money fields, not string"),
        ("payload = { total = { type = \"money\", min = \"ten\" } }",
         "test.toml:17:21: field `total`: `min` = \"ten\" is not a decimal; write e.g. \"0.01\""),
        ("payload = { total = { type = \"money\", min = 10, max = 1 } }",
         "test.toml:17:21: field `total`: min 10 is greater than max 1"),
        ("payload = { lines = { type = \"list\" } }",
         "test.toml:17:21: field `lines`: a list needs `items`, e.g. items = { type = \"string\" }"),
        ("payload = { lines = { type = \"list\", items = { type = \"object\" } } }",
         "test.toml:17:46: field `lines[]`: an object needs `fields`, e.g. fields = { sku = { type = \"string\" } }"),
        ("payload = { Total = { type = \"money\" } }",
         "test.toml:17:21: field name `Total` is not an identifier; use lower-case letters, digits and `_`, starting with a letter"),
        ("payload = { qty = { type = \"quantity\", min = -1 } }",
         "test.toml:17:19: field `qty`: a quantity cannot have a negative min"),
    ];
    for (payload, expected) in cases {
        assert_eq!(errors(&with_payload(payload)), expected, "for {payload}");
    }
}

#[test]
fn schema_bounds_are_checked_at_their_edges() {
    let with_payload = |payload: &str| {
        VALID.replacen(
            "decider = \"q.decide\"",
            &format!("decider = \"q.decide\"\npayload = {{ {payload} }}"),
            1,
        )
    };
    // Each bound at its edge loads.
    for ok in [
        "total = { type = \"money\", min = 5, max = 5 }",
        "qty = { type = \"quantity\", min = 0 }",
        "rate = { type = \"decimal\", scale = 28 }",
        "tags = { type = \"list\", min_items = 2, max_items = 2, items = { type = \"string\" } }",
        "tags = { type = \"list\", min_items = 1000, items = { type = \"string\" } }",
    ] {
        assert_eq!(errors(&with_payload(ok)), "", "for {ok}");
    }
    // One past it does not.
    for (bad, says) in [
        ("rate = { type = \"decimal\", scale = 29 }", "`scale` must be at most 28"),
        ("n = { type = \"integer\", max_length = 3 }", "apply only to string fields, not integer"),
        ("n = { type = \"integer\", values = [\"a\"] }", "apply only to string fields, not integer"),
        ("n = { type = \"integer\", max_items = 3 }", "apply only to list fields, not integer"),
        ("n = { type = \"integer\", min_items = 1 }", "apply only to list fields, not integer"),
        (
            "tags = { type = \"list\", min_items = 3, max_items = 2, items = { type = \"string\" } }",
            "`min_items` is above `max_items`",
        ),
        (
            "tags = { type = \"list\", min_items = 1001, items = { type = \"string\" } }",
            "`min_items` is above `max_items`",
        ),
    ] {
        let got = errors(&with_payload(bad));
        assert!(got.contains(says), "for {bad}: {got}");
    }
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = VALID
        .replacen("initial = \"draft\"", "initial = \"nowhere\"", 1)
        .replacen("decider = \"q.decide\"", "decider = \"missing\"", 1);
    let e = errors(&text);
    assert_eq!(e.lines().count(), 2, "{e}");
    assert!(e.contains("initial state `nowhere`"));
    assert!(e.contains("decider `missing`"));
}

#[test]
fn a_directory_loads_every_toml_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("quote.toml"), VALID).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let mut deciders = DeciderRegistry::new();
    deciders.register("q.decide", |_: &DecisionContext<'_>| {
        Ok(Decision::goto("done", "ok"))
    });
    let set = DefinitionSet::load_dir(dir.path(), &deciders).unwrap();
    assert_eq!(set.names(), vec!["quote"]);
    std::fs::write(dir.path().join("broken.toml"), "name = ").unwrap();
    let err = DefinitionSet::load_dir(dir.path(), &deciders)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "{}:1:8: ",
            dir.path().join("broken.toml").display()
        )),
        "{err}"
    );
}

#[test]
fn timers_must_name_a_command_the_system_may_send_in_their_state() {
    let with_timer = |timer: &str| {
        VALID.replacen(
            "draft = {}",
            &format!("draft = {{ timers = [{timer}] }}"),
            1,
        )
    };
    let cases = [
        ("{ name = \"t\", after = \"48h\", command = \"nudge\" }",
         "test.toml:9:21: state `draft`: timer `t`: command `nudge` is not declared"),
        ("{ name = \"t\", after = \"48h\", command = \"finish\" }",
         "test.toml:9:21: state `draft`: timer `t`: command `finish` must allow the role `system`, which timers act as"),
        ("{ name = \"t\", after = \"soon\", command = \"finish\" }",
         "test.toml:9:21: state `draft`: timer `t`: `after` = \"soon\" is not a duration; write e.g. \"48h\", \"7d\", \"1d12h\", \"90m\"\ntest.toml:9:21: state `draft`: timer `t`: command `finish` must allow the role `system`, which timers act as"),
        ("{ name = \"t\", command = \"finish\" }",
         "test.toml:9:21: state `draft`: timer `t`: give exactly one of `after` (a duration) or `at` (a data field holding a date or time)\ntest.toml:9:21: state `draft`: timer `t`: command `finish` must allow the role `system`, which timers act as"),
    ];
    for (timer, expected) in cases {
        assert_eq!(errors(&with_timer(timer)), expected, "for {timer}");
    }
    let system = VALID.replacen(
        "roles = [\"sales_rep\"]\ndecider",
        "roles = [\"sales_rep\", \"system\"]\ndecider",
        1,
    );
    let ok = system.replacen(
        "draft = {}",
        "draft = { timers = [{ name = \"t\", after = \"1d12h\", command = \"finish\" }] }",
        1,
    );
    assert_eq!(errors(&ok), "");
    let not_from = system
        .replacen("done = { terminal = true }", "done = { timers = [{ name = \"t\", after = \"1h\", command = \"finish\" }] }\nend = { terminal = true }", 1)
        .replacen("to = [\"done\"]", "to = [\"done\", \"end\"]", 1);
    assert!(errors(&not_from).contains("state `done`: timer `t`: command `finish` is not accepted in state `done` (its `from` is: draft)"), "{}", errors(&not_from));
}

#[test]
fn jobs_must_be_declared_and_complete_through_a_system_command() {
    let with_jobs = |effects: &str, jobs: &str| {
        VALID.replacen(
            "decider = \"q.decide\"",
            &format!("decider = \"q.decide\"\n{effects}"),
            1,
        ) + jobs
    };
    assert_eq!(
        errors(&with_jobs("effects = { jobs = [\"pick\"] }", "")),
        "test.toml:17:11: command `finish`: job type `pick` is not declared in [jobs]; declared: (none)"
    );
    assert_eq!(
        errors(&with_jobs("effects = { jobs = [\"pick\"] }", "\n[jobs.pick]\ncomplete = \"finish\"\nbackoff = \"later\"\n")),
        "test.toml:19:1: job `pick`: completion command `finish` must allow the role `system`, which completed jobs act as\ntest.toml:19:1: job `pick`: `backoff` = \"later\" is not a duration; write e.g. \"10s\", \"5m\""
    );
    assert_eq!(
        errors(&with_jobs("", "\n[jobs.pick]\ncomplete = \"picked\"\n")),
        "test.toml:19:1: job `pick`: completion command `picked` is not declared"
    );
}

#[test]
fn start_states_must_be_declared_and_not_terminal_and_count_as_reachable() {
    let roles = "roles = [\"sales_rep\"]\n";
    check(
        roles,
        "roles = [\"sales_rep\"]\nstates = [\"sent\"]\n",
        "test.toml:7:10: [start] states: `sent` is not declared in [states]; declared: done, draft",
    );
    check(
        roles,
        "roles = [\"sales_rep\"]\nstates = [\"done\"]\n",
        "test.toml:7:10: [start] states: `done` is terminal; an instance could never move",
    );
    // A state only a start begins in is reachable.
    let text = VALID
        .replacen(roles, "roles = [\"sales_rep\"]\nstates = [\"held\"]\n", 1)
        .replacen(
            "done = { terminal = true }",
            "done = { terminal = true }\nheld = {}",
            1,
        )
        .replacen("from = [\"draft\"]", "from = [\"draft\", \"held\"]", 1);
    assert_eq!(errors(&text), "", "{text}");
    let unreachable = text.replacen("states = [\"held\"]\n", "", 1);
    assert!(
        errors(&unreachable).contains("state `held` is unreachable"),
        "{}",
        errors(&unreachable)
    );
}
