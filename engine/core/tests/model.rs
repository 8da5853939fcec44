//! Model-based test: random sequences of starts, commands, cancels, retries and restarts
//! against a sled-backed engine, checked step by step against a plain in-memory model.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::json;
use switchyard_core::*;

#[derive(Clone, Debug)]
enum Op {
    Start,
    Note(usize),
    Confirm(usize),
    Cancel(usize),
    Retry(usize),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Start),
        4 => any::<usize>().prop_map(Op::Note),
        2 => any::<usize>().prop_map(Op::Confirm),
        1 => any::<usize>().prop_map(Op::Cancel),
        2 => any::<usize>().prop_map(Op::Retry),
        1 => Just(Op::Restart),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct ModelInstance {
    state: String,
    status: InstanceStatus,
    version: u64,
    notes: u64,
}

#[derive(Default)]
struct Model {
    orders: Vec<(InstanceId, ModelInstance)>,
    shipments: usize,
    numbers_drawn: u64,
    /// Successful requests, to retry.
    done: Vec<(Request, CommandOutcome)>,
}

#[derive(Clone, Debug)]
enum Request {
    Start(StartRequest),
    Send(CommandRequest),
    Cancel(CancelRequest),
}

async fn execute(engine: &Engine, request: &Request) -> Result<CommandOutcome, CommandError> {
    match request.clone() {
        Request::Start(r) => engine.start(r).await,
        Request::Send(r) => engine.send(r).await,
        Request::Cancel(r) => engine.cancel(r).await,
    }
}

async fn check_store_matches(engine: &Engine, model: &Model) {
    for (id, expected) in &model.orders {
        let got = engine.get(*id).await.unwrap();
        let got = ModelInstance {
            state: got.state,
            status: got.status,
            version: got.version,
            notes: got.data["notes"].as_u64().unwrap_or(0),
        };
        assert_eq!(&got, expected, "instance {id}");
        assert_eq!(
            engine.history(*id, 0, 1000).await.unwrap().len() as u64,
            expected.version
        );
    }
    let listed = engine
        .list(ListRequest::new().definition("order").page_size(1000))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), model.orders.len());
    let shipments = engine
        .list(ListRequest::new().definition("shipment").page_size(1000))
        .await
        .unwrap();
    assert_eq!(shipments.items.len(), model.shipments);
    assert_eq!(
        engine.store().counter("order_number", "2026").unwrap(),
        model.numbers_drawn
    );
}

fn run(ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = sled_engine(dir.path(), Durability::Flush).await;
        let mut model = Model::default();
        for (step, op) in ops.into_iter().enumerate() {
            let rid = format!("step-{step}");
            let pick = |i: usize, model: &Model| {
                (!model.orders.is_empty()).then(|| i % model.orders.len())
            };
            match op {
                Op::Restart => {
                    engine.shutdown().await;
                    drop(engine);
                    engine = sled_engine(dir.path(), Durability::Flush).await;
                    check_store_matches(&engine, &model).await;
                }
                Op::Start => {
                    let request = Request::Start(start_order(&format!("K-{step}"), "10.00", &rid));
                    let out = execute(&engine, &request).await.unwrap();
                    assert_eq!((out.version, out.state.as_str()), (1, "created"));
                    model.orders.push((
                        out.instance,
                        ModelInstance {
                            state: "created".into(),
                            status: InstanceStatus::Active,
                            version: 1,
                            notes: 0,
                        },
                    ));
                    model.done.push((request, out));
                }
                Op::Note(i) | Op::Confirm(i) | Op::Cancel(i) => {
                    let Some(i) = pick(i, &model) else { continue };
                    let (id, m) = model.orders[i].clone();
                    let request = match op {
                        Op::Note(_) => {
                            Request::Send(command(id, "note", json!({"text": rid}), rep(), &rid))
                        }
                        Op::Confirm(_) => {
                            Request::Send(command(id, "confirm", json!({}), rep(), &rid))
                        }
                        _ => Request::Cancel(
                            CancelRequest::new(id, Actor::new("ops", &["admin"]), rid.clone())
                                .reason("test"),
                        ),
                    };
                    let result = execute(&engine, &request).await;
                    let mut next = m.clone();
                    let expected_ok = match (&op, m.status) {
                        (_, s) if s != InstanceStatus::Active => false,
                        (Op::Note(_), _) => {
                            next.notes += 1;
                            true
                        }
                        (Op::Confirm(_), _) if m.state == "created" => {
                            next.state = "confirmed".into();
                            model.shipments += 1;
                            model.numbers_drawn += 1;
                            true
                        }
                        (Op::Confirm(_), _) => false,
                        _ => {
                            next.status = InstanceStatus::Cancelled;
                            true
                        }
                    };
                    match result {
                        Ok(out) => {
                            assert!(expected_ok, "step {step}: {op:?} should have been refused");
                            next.version += 1;
                            assert_eq!(
                                (out.version, &out.state, out.status),
                                (next.version, &next.state, next.status)
                            );
                            model.orders[i].1 = next;
                            model.done.push((request, out));
                        }
                        Err(e) => {
                            assert!(!expected_ok, "step {step}: {op:?} refused: {e}");
                            assert!(matches!(e.code(), "NOT_ACTIVE" | "WRONG_STATE"), "{e}");
                        }
                    }
                }
                Op::Retry(k) => {
                    if model.done.is_empty() {
                        continue;
                    }
                    let (request, outcome) = model.done[k % model.done.len()].clone();
                    let again = execute(&engine, &request).await.unwrap();
                    assert_eq!(
                        again, outcome,
                        "a retry returns the original outcome and changes nothing"
                    );
                }
            }
        }
        check_store_matches(&engine, &model).await;
        engine.shutdown().await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn the_engine_behaves_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops);
    }
}

#[test]
fn model_counts_are_consistent_for_a_fixed_sequence() {
    // A fixed sequence covering every operation, so a regression shows without shrinking.
    run(vec![
        Op::Start,
        Op::Note(0),
        Op::Confirm(0),
        Op::Restart,
        Op::Confirm(0),
        Op::Retry(2),
        Op::Cancel(0),
        Op::Note(0),
        Op::Start,
        Op::Restart,
        Op::Retry(0),
    ]);
}
