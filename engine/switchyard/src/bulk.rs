//! `switchyard instance import FILE`: starts one instance per line of a JSON-lines or CSV file
//! through `BulkStartInstances`, each line on its own (a bad line never blocks the good ones).
//!
//! **Lines.** JSON lines: one object per line, `{"data": {...}}` with optional `definition`
//! (else `--definition`), `business_key`, `request_id` and `instance_id`; blank lines are
//! skipped. CSV: a header row; the columns `definition`, `business_key`, `request_id` and
//! `instance_id` mean the same, every other column is a field of the data — as text, or as
//! JSON when its header ends in `:json` (`lines:json`).
//!
//! **Nothing twice.** A line without `request_id` gets one derived from its content (and the
//! definition); a line without `instance_id` gets one derived from its request id. A re-run
//! of the same file therefore applies nothing twice: a line already applied answers its
//! original result while its request id is remembered, and `INSTANCE_EXISTS` after that —
//! both counted as "already there", not as failures.
//!
//! **Resume.** Lines go in batches; after each, the next line to send is printed. When the
//! server cannot be reached the import stops (exit 3) naming `--from-line` to resume with.

use std::path::Path;

use anyhow::Result;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use switchyard_grpc::pb;

use crate::client::{exit_code, on_server, Connection, Output};

/// Lines in one call (the server takes up to 500).
const BATCH: usize = 100;

/// One line of the file, ready to send, or why it cannot be.
type Line = (u64, Result<pb::StartInstanceRequest, String>);

/// The lines of `path`: CSV when its name ends in `.csv`, JSON lines otherwise.
fn read_lines(path: &Path, definition: &str) -> Result<Vec<Line>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        csv_lines(&text, definition)
    } else {
        Ok(text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i as u64 + 1, json_line(l, definition)))
            .collect())
    }
}

fn json_line(text: &str, definition: &str) -> Result<pb::StartInstanceRequest, String> {
    let value =
        switchyard_core::json::from_str(text).map_err(|e| format!("column {}: {e}", e.column()))?;
    let Value::Object(mut fields) = value else {
        return Err("is not a JSON object".into());
    };
    let data = fields.remove("data").ok_or("has no `data`")?;
    let mut text_of = |name: &str| match fields.remove(name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("`{name}` is not a string")),
    };
    let start = pb::StartInstanceRequest {
        definition: text_of("definition")?,
        business_key: text_of("business_key")?,
        request_id: text_of("request_id")?,
        instance_id: text_of("instance_id")?,
        data_json: data.to_string(),
    };
    if let Some(other) = fields.keys().next() {
        return Err(format!(
            "`{other}` is not a field of an import line (data, definition, business_key, request_id, instance_id)"
        ));
    }
    Ok(complete(start, definition))
}

fn csv_lines(text: &str, definition: &str) -> Result<Vec<Line>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("line 1: {e}"))?
        .clone();
    let mut lines = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                lines.push((line, Err(e.to_string())));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        lines.push((line, csv_record(&headers, &record, definition)));
    }
    Ok(lines)
}

fn csv_record(
    headers: &csv::StringRecord,
    record: &csv::StringRecord,
    definition: &str,
) -> Result<pb::StartInstanceRequest, String> {
    let mut start = pb::StartInstanceRequest::default();
    let mut data = Map::new();
    for (header, value) in headers.iter().zip(record.iter()) {
        match header {
            "definition" => start.definition = value.to_string(),
            "business_key" => start.business_key = value.to_string(),
            "request_id" => start.request_id = value.to_string(),
            "instance_id" => start.instance_id = value.to_string(),
            _ => match header.strip_suffix(":json") {
                Some(name) => {
                    let parsed = switchyard_core::json::from_str(value)
                        .map_err(|e| format!("column `{header}`: {e}"))?;
                    data.insert(name.to_string(), parsed);
                }
                None => {
                    data.insert(header.to_string(), Value::String(value.to_string()));
                }
            },
        }
    }
    start.data_json = Value::Object(data).to_string();
    Ok(complete(start, definition))
}

/// Fills the definition from the command line, and the request and instance ids derived
/// from the line's content where the line has none.
fn complete(mut start: pb::StartInstanceRequest, definition: &str) -> pb::StartInstanceRequest {
    if start.definition.is_empty() {
        start.definition = definition.to_string();
    }
    if start.request_id.is_empty() {
        let mut hash = Sha256::new();
        for part in [&start.definition, &start.business_key, &start.data_json] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let digest = hash.finalize();
        start.request_id = format!("import-{}", hex(&digest[..16]));
    }
    if start.instance_id.is_empty() {
        let digest = Sha256::digest(start.request_id.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        start.instance_id = uuid::Builder::from_custom_bytes(bytes)
            .into_uuid()
            .to_string();
    }
    start
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What became of the lines sent so far.
#[derive(Default)]
struct Tally {
    started: u64,
    already: u64,
    refused: u64,
    bad: u64,
}

/// Runs the import; returns the exit code: 0 every line is there, 1 the server refused a
/// line, 2 a line (or the file) is bad input, 3 the server could not be reached.
pub fn run(
    connection: &Connection,
    output: Output,
    file: &Path,
    definition: &str,
    from_line: u64,
) -> Result<i32> {
    let lines = match read_lines(file, definition) {
        Ok(lines) => lines,
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    };
    let report = |line: u64, outcome: &str, detail: &str| match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({ "line": line, "outcome": outcome, "detail": detail })
        ),
        Output::Text if outcome != "started" && outcome != "already" => {
            eprintln!("{}:{line}: {outcome}: {detail}", file.display());
        }
        Output::Text => {}
    };
    let mut tally = Tally::default();
    let mut pending: Vec<(u64, pb::StartInstanceRequest)> = Vec::new();
    for (line, parsed) in lines.into_iter().filter(|(l, _)| *l >= from_line) {
        match parsed {
            Ok(start) if start.definition.is_empty() => {
                tally.bad += 1;
                report(
                    line,
                    "bad",
                    "no definition (give --definition or a `definition` field)",
                );
            }
            Ok(start) => pending.push((line, start)),
            Err(e) => {
                tally.bad += 1;
                report(line, "bad", &e);
            }
        }
    }
    let code = on_server(connection, |channel| async {
        let mut client = pb::instance_service_client::InstanceServiceClient::new(channel);
        for batch in pending.chunks(BATCH) {
            let request = pb::BulkStartInstancesRequest {
                items: batch.iter().map(|(_, s)| s.clone()).collect(),
            };
            let results = match client
                .bulk_start_instances(connection.request(request))
                .await
            {
                Ok(r) => r.into_inner().results,
                Err(status) => {
                    let code = exit_code(&status);
                    eprintln!(
                        "stopped before line {}; resume with --from-line {}",
                        batch[0].0, batch[0].0
                    );
                    return Ok(code);
                }
            };
            for ((line, _), result) in batch.iter().zip(results) {
                let status = result.status.unwrap_or_default();
                let reason =
                    tonic_types::StatusExt::get_details_error_info(&tonic::Status::with_details(
                        tonic::Code::from_i32(status.code),
                        status.message.clone(),
                        prost::Message::encode_to_vec(&status).into(),
                    ))
                    .map(|i| i.reason)
                    .unwrap_or_default();
                match (tonic::Code::from_i32(status.code), reason.as_str()) {
                    (tonic::Code::Ok, _) if result.replayed => {
                        tally.already += 1;
                        report(*line, "already", "applied before (same request id)");
                    }
                    (tonic::Code::Ok, _) => {
                        tally.started += 1;
                        report(
                            *line,
                            "started",
                            &result.result.map(|r| r.instance_id).unwrap_or_default(),
                        );
                    }
                    (_, "INSTANCE_EXISTS") => {
                        tally.already += 1;
                        report(*line, "already", &status.message);
                    }
                    (tonic::Code::InvalidArgument, _) => {
                        tally.bad += 1;
                        report(*line, "bad", &format!("{reason}: {}", status.message));
                    }
                    _ => {
                        tally.refused += 1;
                        report(*line, "refused", &format!("{reason}: {}", status.message));
                    }
                }
            }
            if output == Output::Text {
                println!(
                    "through line {}: next --from-line {}",
                    batch[batch.len() - 1].0,
                    batch[batch.len() - 1].0 + 1
                );
            }
        }
        Ok(0)
    })?;
    if code != 0 {
        return Ok(code);
    }
    let summary = format!(
        "{} started, {} already there, {} refused, {} bad",
        tally.started, tally.already, tally.refused, tally.bad
    );
    match output {
        Output::Json => println!("{}", serde_json::json!({ "summary": summary })),
        Output::Text => println!("{summary}"),
    }
    Ok(if tally.bad > 0 {
        2
    } else if tally.refused > 0 {
        1
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_derive_stable_ids_and_name_what_is_wrong() {
        let a = json_line(
            r#"{"data": {"company": "ACME", "n": 1.10}, "business_key": "L-1"}"#,
            "lead",
        )
        .unwrap();
        let b = json_line(
            r#"{"data": {"company": "ACME", "n": 1.10}, "business_key": "L-1"}"#,
            "lead",
        )
        .unwrap();
        assert_eq!(
            (a.request_id.clone(), a.instance_id.clone()),
            (b.request_id, b.instance_id)
        );
        assert!(a.request_id.starts_with("import-"));
        assert_eq!(a.data_json, r#"{"company":"ACME","n":1.10}"#);
        let c = json_line(
            r#"{"data": {"company": "ACME", "n": 1.1}, "business_key": "L-1"}"#,
            "lead",
        )
        .unwrap();
        assert_ne!(a.request_id, c.request_id);
        let given = json_line(
            r#"{"data": {}, "request_id": "r-7", "definition": "quote"}"#,
            "lead",
        )
        .unwrap();
        assert_eq!(
            (given.request_id.as_str(), given.definition.as_str()),
            ("r-7", "quote")
        );
        assert!(json_line("[1]", "lead")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(json_line(r#"{"company": "x"}"#, "lead")
            .unwrap_err()
            .contains("no `data`"));
        assert!(json_line(r#"{"data": {}, "key": "x"}"#, "lead")
            .unwrap_err()
            .contains("`key` is not a field"));
        assert!(json_line(r#"{"data": {}, "business_key": 7}"#, "lead")
            .unwrap_err()
            .contains("`business_key` is not a string"));
    }

    #[test]
    fn csv_columns_are_text_or_json_by_their_header() {
        let text = "business_key,customer,lines:json\nQ-1,ACME,\"[{\"\"sku\"\": \"\"A\"\", \"\"quantity\"\": 2}]\"\nQ-2,BETA,[oops\n";
        let lines = csv_lines(text, "quote").unwrap();
        assert_eq!(lines.len(), 2);
        let (line, first) = &lines[0];
        let first = first.as_ref().unwrap();
        assert_eq!(*line, 2);
        assert_eq!(
            first.data_json,
            r#"{"customer":"ACME","lines":[{"sku":"A","quantity":2}]}"#
        );
        assert_eq!(first.business_key, "Q-1");
        let (line, second) = &lines[1];
        assert_eq!(*line, 3);
        assert!(
            second
                .as_ref()
                .unwrap_err()
                .starts_with("column `lines:json`"),
            "{second:?}"
        );
    }
}
