//! `switchyard worker`: a job worker over gRPC that answers jobs from an answer file — to try a
//! workflow's external steps (stock, credit, payments, carriers) without writing a worker.
//!
//! The answer file is a JSON object keyed by job type (at most 16). Each entry is either
//! `{"result": TEMPLATE}` — the job is completed with the template filled from the job's
//! payload — or `{"fail": "why", "retry_in": "30s"}` — the job is failed (`retry_in`
//! optional: the job type's backoff otherwise). In a template, a string `"$payload.a.b"` is the
//! payload's value at that path (`"$payload"` the whole payload); `{"$each": "$payload.lines",
//! "map": TEMPLATE}` maps a list, with `"$item.sku"` naming the current element's fields; a
//! string starting `$$` is a literal `$`; everything else is copied as written. A path the
//! payload lacks fails that job, naming the path.

use std::path::Path;

use anyhow::Result;
use serde_json::{Map, Value};
use switchyard_grpc::pb;

use crate::client::{exit_code, on_server, Connection, Output};

/// Most job types one worker asks for (the server's limit).
const TYPES_MAX: usize = 16;
/// Jobs leased per poll.
const JOBS_PER_POLL: i32 = 8;
/// How long a lease lasts.
const LEASE_SECONDS: i64 = 60;

/// What to do with a job of one type.
#[derive(Debug)]
enum Answer {
    Complete(Value),
    Fail {
        error: String,
        retry_in: Option<i64>,
    },
}

/// Reads and checks the answer file; errors name the file and the line:col or the entry.
fn load(path: &Path) -> Result<Vec<(String, Answer)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let value = switchyard_core::json::from_str(&text)
        .map_err(|e| format!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))?;
    let Value::Object(entries) = value else {
        return Err(format!(
            "{}: the answer file is a JSON object keyed by job type",
            path.display()
        ));
    };
    if entries.is_empty() || entries.len() > TYPES_MAX {
        return Err(format!(
            "{}: answers 1 to {TYPES_MAX} job types, not {}",
            path.display(),
            entries.len()
        ));
    }
    let mut answers = Vec::new();
    for (job_type, entry) in entries {
        let at = |what: &str| format!("{}: {job_type}{what}", path.display());
        let Value::Object(mut entry) = entry else {
            return Err(at(": is not an object with `result` or `fail`"));
        };
        let answer = match (entry.remove("result"), entry.remove("fail")) {
            (Some(result @ Value::Object(_)), None) => Answer::Complete(result),
            (Some(_), None) => return Err(at(".result: is not a JSON object")),
            (None, Some(Value::String(error))) if !error.is_empty() => {
                let retry_in = match entry.remove("retry_in") {
                    None => None,
                    Some(Value::String(d)) => Some(
                        switchyard_core::definition::parse_duration(&d)
                            .filter(|d| *d > chrono::Duration::zero())
                            .ok_or_else(|| {
                                at(&format!(
                                    ".retry_in: `{d}` is not a duration such as 30s or 5m"
                                ))
                            })?
                            .num_seconds(),
                    ),
                    Some(_) => return Err(at(".retry_in: is not a duration string")),
                };
                Answer::Fail { error, retry_in }
            }
            (None, Some(_)) => return Err(at(".fail: is not a non-empty string")),
            _ => return Err(at(": has either `result` or `fail`")),
        };
        if let Some(extra) = entry.keys().next() {
            return Err(at(&format!(".{extra}: is not a field of an answer")));
        }
        answers.push((job_type, answer));
    }
    Ok(answers)
}

/// The value at `path` (dot-separated; list positions as numbers) below `root`.
fn at_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|p| !p.is_empty())
        .try_fold(root, |v, part| match v {
            Value::Object(m) => m.get(part),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

/// `template` filled from the job's `payload` (and the current `$each` element).
fn fill(template: &Value, payload: &Value, item: Option<&Value>) -> Result<Value, String> {
    match template {
        Value::String(s) if s.starts_with("$$") => Ok(Value::String(s[1..].to_string())),
        Value::String(s) if s.starts_with('$') => {
            let (root, rest, name) = if let Some(rest) = s.strip_prefix("$payload") {
                (Some(payload), rest, "$payload")
            } else if let Some(rest) = s.strip_prefix("$item") {
                (item, rest, "$item")
            } else {
                return Err(format!(
                    "`{s}`: a reference starts with $payload or $item (`$$` for a literal $)"
                ));
            };
            let root = root.ok_or_else(|| format!("`{s}`: $item is only inside a $each map"))?;
            if !(rest.is_empty() || rest.starts_with('.')) {
                return Err(format!("`{s}`: {name} is followed by .field"));
            }
            at_path(root, rest)
                .cloned()
                .ok_or_else(|| format!("the job's payload has no `{s}`"))
        }
        Value::Object(m) if m.contains_key("$each") => {
            let source = m["$each"].as_str().unwrap_or_default();
            let list = fill(&Value::String(source.to_string()), payload, item)?;
            let Value::Array(items) = list else {
                return Err(format!("`$each` {source} is not a list"));
            };
            let map = m.get("map").ok_or("a `$each` needs its `map`")?;
            items
                .iter()
                .map(|i| fill(map, payload, Some(i)))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), fill(v, payload, item)?)))
            .collect::<Result<Map<_, _>, String>>()
            .map(Value::Object),
        Value::Array(items) => items
            .iter()
            .map(|v| fill(v, payload, item))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

/// Runs the worker; returns the exit code. With `once`, stops when no job is waiting.
pub fn run(
    connection: Connection,
    output: Output,
    answers: &Path,
    name: String,
    once: bool,
) -> Result<i32> {
    let answers = match load(answers) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    };
    let connection = &connection;
    on_server(connection, |channel| async move {
        let mut jobs = pb::job_service_client::JobServiceClient::new(channel);
        let job_types: Vec<String> = answers.iter().map(|(t, _)| t.clone()).collect();
        loop {
            let request = pb::ActivateJobsRequest {
                job_types: job_types.clone(),
                worker: name.clone(),
                max_jobs: JOBS_PER_POLL,
                lease: Some(prost_types::Duration {
                    seconds: LEASE_SECONDS,
                    nanos: 0,
                }),
                wait: Some(prost_types::Duration {
                    seconds: if once { 1 } else { 20 },
                    nanos: 0,
                }),
            };
            let activated = match jobs.activate_jobs(connection.request(request)).await {
                Ok(r) => r.into_inner().jobs,
                Err(status) => return Ok(exit_code(&status)),
            };
            if activated.is_empty() && once {
                return Ok(0);
            }
            for job in activated {
                let answer = &answers
                    .iter()
                    .find(|(t, _)| *t == job.job_type)
                    .expect("asked only for these types")
                    .1;
                let payload =
                    switchyard_core::json::from_str(&job.payload_json).unwrap_or(Value::Null);
                let filled = match answer {
                    Answer::Complete(template) => {
                        fill(template, &payload, None).map_err(|e| (e, None))
                    }
                    Answer::Fail { error, retry_in } => Err((error.clone(), *retry_in)),
                };
                let line = match filled {
                    Ok(result) => {
                        let request = pb::CompleteJobRequest {
                            job_id: job.job_id.clone(),
                            lease_token: job.lease_token.clone(),
                            result_json: result.to_string(),
                        };
                        match jobs.complete_job(connection.request(request)).await {
                            Ok(r) => {
                                let state =
                                    r.into_inner().result.map(|r| r.state).unwrap_or_default();
                                serde_json::json!({ "job_id": job.job_id, "job_type": job.job_type, "instance_id": job.instance_id, "outcome": "completed", "state": state })
                            }
                            Err(status) => return Ok(exit_code(&status)),
                        }
                    }
                    Err((error, retry_in)) => {
                        let request = pb::FailJobRequest {
                            job_id: job.job_id.clone(),
                            lease_token: job.lease_token.clone(),
                            error: error.clone(),
                            retry_in: retry_in
                                .map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
                            give_up: false,
                        };
                        match jobs.fail_job(connection.request(request)).await {
                            Ok(_) => {
                                serde_json::json!({ "job_id": job.job_id, "job_type": job.job_type, "instance_id": job.instance_id, "outcome": "failed", "error": error })
                            }
                            Err(status) => return Ok(exit_code(&status)),
                        }
                    }
                };
                match output {
                    Output::Json => println!("{line}"),
                    Output::Text => println!(
                        "{} {} on {}: {}",
                        line["job_type"].as_str().unwrap_or_default(),
                        line["job_id"].as_str().unwrap_or_default(),
                        line["instance_id"].as_str().unwrap_or_default(),
                        match line["outcome"].as_str() {
                            Some("completed") => format!(
                                "completed, instance now {}",
                                line["state"].as_str().unwrap_or_default()
                            ),
                            _ => format!("failed: {}", line["error"].as_str().unwrap_or_default()),
                        }
                    ),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_fill_from_the_payload_and_name_what_is_missing() {
        let payload = json!({ "order": "SO-1", "lines": [{ "sku": "A", "quantity": "2" }, { "sku": "B", "quantity": "1.5" }] });
        let template = switchyard_core::json::from_str(r#"{"lines": {"$each": "$payload.lines", "map": {"sku": "$item.sku", "reserved": "$item.quantity"}}, "ref": "$payload.order", "first": "$payload.lines.0.sku", "note": "$$5 off", "n": 1.10}"#).unwrap();
        assert_eq!(
            fill(&template, &payload, None).unwrap().to_string(),
            r#"{"lines":[{"sku":"A","reserved":"2"},{"sku":"B","reserved":"1.5"}],"ref":"SO-1","first":"A","note":"$5 off","n":1.10}"#
        );
        assert_eq!(
            fill(&json!({ "x": "$payload.nope" }), &payload, None).unwrap_err(),
            "the job's payload has no `$payload.nope`"
        );
        assert!(fill(&json!("$item.sku"), &payload, None)
            .unwrap_err()
            .contains("only inside a $each"));
        assert!(fill(&json!("$other"), &payload, None)
            .unwrap_err()
            .contains("starts with $payload or $item"));
        assert!(fill(
            &json!({ "$each": "$payload.order", "map": {} }),
            &payload,
            None
        )
        .unwrap_err()
        .contains("is not a list"));
    }

    #[test]
    fn a_bad_answer_file_is_refused_naming_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let check = |text: &str, expected: &str| {
            let path = dir.path().join("answers.json");
            std::fs::write(&path, text).unwrap();
            let e = load(&path).unwrap_err();
            assert!(e.ends_with(expected), "{e} (expected …{expected})");
        };
        check(
            "{\n  \"a\": {\"result\": {}},\n  \"a\": {}\n}",
            ":3:5: duplicate key `a` at line 3 column 5",
        );
        check("[]", "the answer file is a JSON object keyed by job type");
        check(r#"{"a": {"result": 1}}"#, "a.result: is not a JSON object");
        check(
            r#"{"a": {"fail": "x", "retry_in": "soon"}}"#,
            "a.retry_in: `soon` is not a duration such as 30s or 5m",
        );
        check(
            r#"{"a": {"result": {}, "fail": "x"}}"#,
            "a: has either `result` or `fail`",
        );
        check(
            r#"{"a": {"result": {}, "extra": 1}}"#,
            "a.extra: is not a field of an answer",
        );
        check("{}", "answers 1 to 16 job types, not 0");
    }
}
