//! Payload schemas: how a definition declares the fields a start or a command accepts, and
//! how a JSON payload is checked against them. Money and decimals are decimal *strings*; a
//! JSON number there is refused, because a JSON number may have passed through a float.
//! This module does not know about states, roles or deciders.

use std::collections::BTreeMap;
use std::fmt;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

/// Longest string accepted when a field does not set `max_length`.
pub const STRING_LENGTH_MAX_DEFAULT: usize = 4096;
/// Longest piece of a payload (a value, an unknown key) a violation repeats back.
const ECHO_BYTES_MAX: usize = 64;

/// Most list items accepted when a field does not set `max_items`.
pub const LIST_ITEMS_MAX_DEFAULT: usize = 1000;

/// The type of a payload field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A JSON string.
    String,
    /// A JSON integer (fits in i64).
    Integer,
    /// A non-negative amount of goods: a JSON integer or a decimal string, never negative.
    Quantity,
    /// A decimal string such as `"0.125"`.
    Decimal,
    /// A money amount as a decimal string such as `"12.50"`.
    Money,
    /// `true` or `false`.
    Boolean,
    /// A calendar date string `YYYY-MM-DD`.
    Date,
    /// An RFC 3339 timestamp string.
    Datetime,
    /// A JSON object with declared `fields`.
    Object,
    /// A JSON array whose elements follow `items`.
    List,
    /// Any JSON value (still bounded by the engine's payload size limit).
    Json,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldType::String => "string",
            FieldType::Integer => "integer",
            FieldType::Quantity => "quantity",
            FieldType::Decimal => "decimal",
            FieldType::Money => "money",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::Datetime => "datetime",
            FieldType::Object => "object",
            FieldType::List => "list",
            FieldType::Json => "json",
        })
    }
}

/// A numeric bound as written in a definition: an integer or a decimal string.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum BoundSpec {
    /// `min = 0`
    Integer(i64),
    /// `min = "0.01"`
    Text(String),
}

/// One field as written in a definition file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// The field's type.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Whether the field must be present (default `true`).
    pub required: Option<bool>,
    /// Smallest accepted value (numeric types).
    pub min: Option<BoundSpec>,
    /// Largest accepted value (numeric types).
    pub max: Option<BoundSpec>,
    /// Most decimal places accepted (`decimal`, `money`, `quantity`).
    pub scale: Option<u32>,
    /// Longest accepted string (`string`).
    pub max_length: Option<usize>,
    /// The only accepted values (`string`).
    pub values: Option<Vec<String>>,
    /// Most accepted items (`list`).
    pub max_items: Option<usize>,
    /// Fewest accepted items (`list`; default 0).
    pub min_items: Option<usize>,
    /// The element type (`list`).
    pub items: Option<Box<Spanned<FieldSpec>>>,
    /// The nested fields (`object`).
    pub fields: Option<BTreeMap<String, Spanned<FieldSpec>>>,
}

/// A checked field, ready to validate payloads.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// The field's type.
    pub kind: FieldType,
    /// Whether it must be present.
    pub required: bool,
    /// Inclusive lower bound for numeric types.
    pub min: Option<Decimal>,
    /// Inclusive upper bound for numeric types.
    pub max: Option<Decimal>,
    /// Most decimal places.
    pub scale: Option<u32>,
    /// Longest string.
    pub max_length: usize,
    /// Accepted string values (empty: any).
    pub values: Vec<String>,
    /// Most list items.
    pub max_items: usize,
    /// Fewest list items.
    pub min_items: usize,
    /// Element type of a list.
    pub items: Option<Box<Field>>,
    /// Fields of an object.
    pub fields: Schema,
}

/// The fields a start or command payload accepts. Payloads are JSON objects; fields not
/// declared here are refused.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schema {
    /// Fields by name.
    pub fields: BTreeMap<String, Field>,
}

/// A problem found in a schema while loading a definition: the byte span in the file and a
/// message.
#[derive(Debug)]
pub struct SchemaProblem {
    /// Byte range in the definition file.
    pub span: std::ops::Range<usize>,
    /// What is wrong and what would be accepted.
    pub message: String,
}

/// One reason a payload was refused: the field path (`lines[2].quantity`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field within the payload.
    pub field: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

/// Checks a schema as written, collecting every problem.
pub fn compile_schema(
    specs: &BTreeMap<String, Spanned<FieldSpec>>,
    problems: &mut Vec<SchemaProblem>,
) -> Schema {
    let mut schema = Schema::default();
    for (name, spec) in specs {
        if !is_identifier(name) {
            problems.push(SchemaProblem {
                span: spec.span(),
                message: format!(
                    "field name `{name}` is not an identifier; use lower-case letters, digits and `_`, starting with a letter"
                ),
            });
        }
        schema
            .fields
            .insert(name.clone(), compile_field(name, spec, problems));
    }
    schema
}

fn compile_field(
    name: &str,
    spec: &Spanned<FieldSpec>,
    problems: &mut Vec<SchemaProblem>,
) -> Field {
    let span = spec.span();
    let spec = spec.get_ref();
    let mut problem = |message: String| {
        problems.push(SchemaProblem {
            span: span.clone(),
            message,
        })
    };
    let numeric = matches!(
        spec.kind,
        FieldType::Integer | FieldType::Quantity | FieldType::Decimal | FieldType::Money
    );
    let mut bound = |which: &str, b: &Option<BoundSpec>| -> Option<Decimal> {
        let b = b.as_ref()?;
        if !numeric {
            problem(format!(
                "field `{name}`: `{which}` applies only to integer, quantity, decimal and money fields, not {}",
                spec.kind
            ));
            return None;
        }
        match b {
            BoundSpec::Integer(i) => Some(Decimal::from(*i)),
            BoundSpec::Text(t) => match parse_decimal_text(t) {
                Some(d) => Some(d),
                None => {
                    problem(format!(
                        "field `{name}`: `{which}` = \"{t}\" is not a decimal; write e.g. \"0.01\""
                    ));
                    None
                }
            },
        }
    };
    let min = bound("min", &spec.min);
    let max = bound("max", &spec.max);
    let mut problem = |message: String| {
        problems.push(SchemaProblem {
            span: span.clone(),
            message,
        })
    };
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo > hi {
            problem(format!("field `{name}`: min {lo} is greater than max {hi}"));
        }
    }
    let min = match (spec.kind, min) {
        (FieldType::Quantity, None) => Some(Decimal::ZERO),
        (FieldType::Quantity, Some(m)) if m < Decimal::ZERO => {
            problem(format!(
                "field `{name}`: a quantity cannot have a negative min"
            ));
            Some(Decimal::ZERO)
        }
        (_, m) => m,
    };
    if spec.scale.is_some()
        && !matches!(
            spec.kind,
            FieldType::Decimal | FieldType::Money | FieldType::Quantity
        )
    {
        problem(format!(
            "field `{name}`: `scale` applies only to decimal, money and quantity fields, not {}",
            spec.kind
        ));
    }
    if spec.scale.is_some_and(|s| s > 28) {
        problem(format!("field `{name}`: `scale` must be at most 28"));
    }
    if (spec.max_length.is_some() || spec.values.is_some()) && spec.kind != FieldType::String {
        problem(format!(
            "field `{name}`: `max_length` and `values` apply only to string fields, not {}",
            spec.kind
        ));
    }
    if (spec.max_items.is_some() || spec.min_items.is_some()) && spec.kind != FieldType::List {
        problem(format!(
            "field `{name}`: `max_items` and `min_items` apply only to list fields, not {}",
            spec.kind
        ));
    }
    if spec.min_items.unwrap_or(0) > spec.max_items.unwrap_or(LIST_ITEMS_MAX_DEFAULT) {
        problem(format!("field `{name}`: `min_items` is above `max_items`"));
    }
    let items = match (&spec.items, spec.kind) {
        (Some(items), FieldType::List) => Some(Box::new(compile_field(
            &format!("{name}[]"),
            items,
            problems,
        ))),
        (None, FieldType::List) => {
            problems.push(SchemaProblem {
                span: span.clone(),
                message: format!(
                    "field `{name}`: a list needs `items`, e.g. items = {{ type = \"string\" }}"
                ),
            });
            None
        }
        (Some(_), kind) => {
            problems.push(SchemaProblem {
                span: span.clone(),
                message: format!("field `{name}`: `items` applies only to list fields, not {kind}"),
            });
            None
        }
        (None, _) => None,
    };
    let fields = match (&spec.fields, spec.kind) {
        (Some(fields), FieldType::Object) => compile_schema(fields, problems),
        (None, FieldType::Object) => {
            problems.push(SchemaProblem {
                span: span.clone(),
                message: format!(
                    "field `{name}`: an object needs `fields`, e.g. fields = {{ sku = {{ type = \"string\" }} }}"
                ),
            });
            Schema::default()
        }
        (Some(_), kind) => {
            problems.push(SchemaProblem {
                span: span.clone(),
                message: format!(
                    "field `{name}`: `fields` applies only to object fields, not {kind}"
                ),
            });
            Schema::default()
        }
        (None, _) => Schema::default(),
    };
    Field {
        kind: spec.kind,
        required: spec.required.unwrap_or(true),
        min,
        max,
        scale: spec.scale,
        max_length: spec.max_length.unwrap_or(STRING_LENGTH_MAX_DEFAULT),
        values: spec.values.clone().unwrap_or_default(),
        max_items: spec.max_items.unwrap_or(LIST_ITEMS_MAX_DEFAULT),
        min_items: spec.min_items.unwrap_or(0),
        items,
        fields,
    }
}

/// Whether `s` is a lower-case identifier (`[a-z][a-z0-9_]*`).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 64
}

/// Parses a plain decimal string (`-12.50`, `3`, `0.001`): no exponent, no `+`, no spaces,
/// no thousands separators, at most 28 fractional digits.
pub fn parse_decimal_text(s: &str) -> Option<Decimal> {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    Decimal::from_str_exact(s).ok()
}

impl Schema {
    /// Checks `payload` (must be a JSON object) against the schema; returns every violation,
    /// each naming the field path.
    pub fn validate(&self, payload: &Value) -> Vec<FieldViolation> {
        let mut out = Vec::new();
        match payload {
            Value::Object(_) => self.validate_object("", payload, &mut out),
            other => out.push(FieldViolation {
                field: "payload".into(),
                message: format!("must be a JSON object, got {}", crate::json::kind(other)),
            }),
        }
        out
    }

    fn validate_object(&self, prefix: &str, value: &Value, out: &mut Vec<FieldViolation>) {
        let Value::Object(map) = value else { return };
        for (name, field) in &self.fields {
            let path = join(prefix, name);
            match map.get(name) {
                None | Some(Value::Null) if field.required => out.push(FieldViolation {
                    field: path,
                    message: format!("is required ({})", field.kind),
                }),
                None | Some(Value::Null) => {}
                Some(v) => field.validate(&path, v, out),
            }
        }
        for name in map.keys() {
            if !self.fields.contains_key(name) {
                let accepted: Vec<&str> = self.fields.keys().map(String::as_str).collect();
                out.push(FieldViolation {
                    field: join(prefix, &crate::error::clip(name, ECHO_BYTES_MAX)),
                    message: if accepted.is_empty() {
                        "is not accepted: this payload takes no fields".to_string()
                    } else {
                        format!("is not accepted; accepted fields: {}", accepted.join(", "))
                    },
                });
            }
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Field {
    fn validate(&self, path: &str, v: &Value, out: &mut Vec<FieldViolation>) {
        let mut bad = |message: String| {
            out.push(FieldViolation {
                field: path.to_string(),
                message,
            })
        };
        match self.kind {
            FieldType::String => match v {
                Value::String(s) => {
                    if s.chars().count() > self.max_length {
                        bad(format!("is longer than {} characters", self.max_length));
                    } else if !self.values.is_empty() && !self.values.contains(s) {
                        bad(format!(
                            "\"{}\" is not one of: {}",
                            crate::error::clip(s, ECHO_BYTES_MAX),
                            self.values.join(", ")
                        ));
                    }
                }
                other => bad(format!("must be a string, got {}", crate::json::kind(other))),
            },
            FieldType::Integer => match v.as_i64() {
                Some(i) => self.check_bounds(Decimal::from(i), &mut bad),
                None => bad(format!("must be a whole number, got {}", describe(v))),
            },
            FieldType::Quantity => {
                let parsed = match v {
                    Value::Number(n) => n.as_i64().map(Decimal::from).ok_or_else(|| {
                        "must be a whole JSON number or a decimal string such as \"1.5\"; a fractional JSON number is refused because it may have lost precision".to_string()
                    }),
                    Value::String(s) => parse_decimal_text(s).ok_or_else(|| {
                        format!(
                            "\"{}\" is not a decimal such as \"1.5\"",
                            crate::error::clip(s, ECHO_BYTES_MAX)
                        )
                    }),
                    other => Err(format!("must be a quantity, got {}", crate::json::kind(other))),
                };
                match parsed {
                    Ok(q) if q < Decimal::ZERO => bad(format!("must not be negative, got {q}")),
                    Ok(q) => {
                        self.check_scale(q, &mut bad);
                        self.check_bounds(q, &mut bad)
                    }
                    Err(m) => bad(m),
                }
            }
            FieldType::Decimal | FieldType::Money => match v {
                Value::String(s) => match parse_decimal_text(s) {
                    Some(d) => {
                        self.check_scale(d, &mut bad);
                        self.check_bounds(d, &mut bad)
                    }
                    None => bad(format!(
                        "\"{}\" is not a decimal; write digits with an optional `-` and `.`, e.g. \"12.50\"",
                        crate::error::clip(s, ECHO_BYTES_MAX)
                    )),
                },
                Value::Number(_) => bad(format!(
                    "{} must be a decimal string such as \"12.50\"; a JSON number is refused because it may have lost precision",
                    self.kind
                )),
                other => bad(format!(
                    "must be a decimal string such as \"12.50\", got {}",
                    crate::json::kind(other)
                )),
            },
            FieldType::Boolean => {
                if !v.is_boolean() {
                    bad(format!("must be true or false, got {}", crate::json::kind(v)))
                }
            }
            FieldType::Date => match v.as_str() {
                Some(s) if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() => {}
                _ => bad(format!("must be a date such as \"2026-04-01\", got {}", describe(v))),
            },
            FieldType::Datetime => match v.as_str() {
                Some(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {}
                _ => bad(format!(
                    "must be an RFC 3339 time such as \"2026-04-01T09:30:00Z\", got {}",
                    describe(v)
                )),
            },
            FieldType::Object => match v {
                Value::Object(_) => self.fields.validate_object(path, v, out),
                other => bad(format!("must be an object, got {}", crate::json::kind(other))),
            },
            FieldType::List => match v {
                Value::Array(items) => {
                    if items.len() > self.max_items {
                        bad(format!(
                            "has {} items; at most {} are accepted",
                            items.len(),
                            self.max_items
                        ));
                        return;
                    }
                    if items.len() < self.min_items {
                        bad(format!(
                            "has {} items; at least {} are needed",
                            items.len(),
                            self.min_items
                        ));
                        return;
                    }
                    if let Some(item) = &self.items {
                        for (i, element) in items.iter().enumerate() {
                            let p = format!("{path}[{i}]");
                            match element {
                                Value::Null => out.push(FieldViolation {
                                    field: p,
                                    message: "must not be null".into(),
                                }),
                                e => item.validate(&p, e, out),
                            }
                        }
                    }
                }
                other => bad(format!("must be a list, got {}", crate::json::kind(other))),
            },
            FieldType::Json => {}
        }
    }

    fn check_scale(&self, d: Decimal, bad: &mut impl FnMut(String)) {
        if let Some(scale) = self.scale {
            if d.normalize().scale() > scale {
                bad(format!("{d} has more than {scale} decimal places"));
            }
        }
    }

    fn check_bounds(&self, d: Decimal, bad: &mut impl FnMut(String)) {
        if let Some(min) = self.min {
            if d < min {
                bad(format!("{d} is below the minimum {min}"));
            }
        }
        if let Some(max) = self.max {
            if d > max {
                bad(format!("{d} is above the maximum {max}"));
            }
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{}\"", crate::error::clip(s, ECHO_BYTES_MAX)),
        Value::Number(n) => n.to_string(),
        other => crate::json::kind(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! Every field type at its edges: the value just inside each limit is accepted, the one
    //! just outside is refused naming the field (mutation testing found these unpinned).

    use super::*;
    use serde_json::json;

    const FIELDS: &str = r#"
        req = { type = "string" }
        flag = { type = "boolean", required = false }
        day = { type = "date", required = false }
        at = { type = "datetime", required = false }
        price = { type = "money", scale = 2, min = "0", max = "100.00", required = false }
        n = { type = "integer", min = 1, max = 10, required = false }
        qty = { type = "quantity", scale = 1, max = 5, required = false }
        ratio = { type = "decimal", min = "-1.5", required = false }
        tags = { type = "list", min_items = 1, max_items = 2, items = { type = "string", max_length = 3 }, required = false }
        name = { type = "string", max_length = 4, required = false }
        kind = { type = "string", values = ["a", "b"], required = false }
        obj = { type = "object", fields = { x = { type = "integer" } }, required = false }
        any = { type = "json", required = false }
    "#;

    fn schema() -> Schema {
        let specs: BTreeMap<String, Spanned<FieldSpec>> = toml::from_str(FIELDS).unwrap();
        let mut problems = Vec::new();
        let schema = compile_schema(&specs, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        schema
    }

    /// The fields refused in `payload` (with `req` added unless the payload sets it).
    fn refused(schema: &Schema, mut payload: Value) -> Vec<String> {
        if let Value::Object(map) = &mut payload {
            map.entry("req").or_insert(json!("r"));
        }
        schema
            .validate(&payload)
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn each_type_accepts_up_to_its_limits_and_refuses_past_them() {
        let schema = schema();
        let accepted = [
            json!({ "flag": true }),
            json!({ "flag": false }),
            json!({ "day": "2024-02-29" }),
            json!({ "at": "2026-04-01T09:30:00Z" }),
            json!({ "at": "2026-04-01T09:30:00.5+14:00" }),
            json!({ "price": "100.00" }),
            json!({ "price": "0" }),
            json!({ "price": "99.99" }),
            json!({ "price": "1.250" }),
            json!({ "n": 1 }),
            json!({ "n": 10 }),
            json!({ "qty": 5 }),
            json!({ "qty": "0.5" }),
            json!({ "qty": "0" }),
            json!({ "ratio": "-1.5" }),
            json!({ "ratio": "12345678901234567890.123" }),
            json!({ "tags": ["a"] }),
            json!({ "tags": ["abc", "b"] }),
            json!({ "name": "abcd" }),
            json!({ "name": "äöüß" }),
            json!({ "kind": "b" }),
            json!({ "obj": { "x": 3 } }),
            json!({ "any": { "whatever": [1, "x", null] } }),
            json!({ "flag": null }),
        ];
        for payload in accepted {
            assert_eq!(
                refused(&schema, payload.clone()),
                Vec::<String>::new(),
                "{payload}"
            );
        }
        let cases = [
            (json!({ "flag": "true" }), "flag"),
            (json!({ "flag": 1 }), "flag"),
            (json!({ "day": "2023-02-29" }), "day"),
            (json!({ "day": "2026-04-01T00:00:00Z" }), "day"),
            (json!({ "day": 20260401 }), "day"),
            (json!({ "at": "2026-04-01T09:30:00" }), "at"),
            (json!({ "at": "2026-04-01" }), "at"),
            (json!({ "at": true }), "at"),
            (json!({ "price": "100.01" }), "price"),
            (json!({ "price": "-0.01" }), "price"),
            (json!({ "price": "1.255" }), "price"),
            (json!({ "price": 12.5 }), "price"),
            (json!({ "price": "1e3" }), "price"),
            (json!({ "n": 0 }), "n"),
            (json!({ "n": 11 }), "n"),
            (json!({ "n": 1.5 }), "n"),
            (json!({ "n": "1" }), "n"),
            (json!({ "qty": "5.1" }), "qty"),
            (json!({ "qty": "0.25" }), "qty"),
            (json!({ "qty": -1 }), "qty"),
            (json!({ "qty": 0.5 }), "qty"),
            (json!({ "qty": [1] }), "qty"),
            (json!({ "ratio": "-1.6" }), "ratio"),
            (json!({ "ratio": 1 }), "ratio"),
            (json!({ "tags": [] }), "tags"),
            (json!({ "tags": ["a", "b", "c"] }), "tags"),
            (json!({ "tags": "a" }), "tags"),
            (json!({ "tags": ["abcd"] }), "tags[0]"),
            (json!({ "tags": [null] }), "tags[0]"),
            (json!({ "name": "abcde" }), "name"),
            (json!({ "name": 5 }), "name"),
            (json!({ "kind": "c" }), "kind"),
            (json!({ "obj": { "x": "1" } }), "obj.x"),
            (json!({ "obj": {} }), "obj.x"),
            (json!({ "obj": { "x": 1, "y": 2 } }), "obj.y"),
            (json!({ "obj": [] }), "obj"),
            (json!({ "req": null }), "req"),
            (json!({ "zz": 1 }), "zz"),
        ];
        for (payload, field) in cases {
            assert_eq!(refused(&schema, payload.clone()), [field], "{payload}");
        }
        let missing = schema.validate(&json!({}));
        assert_eq!(missing[0].field, "req");
        assert_eq!(missing[0].message, "is required (string)");
        let not_object = schema.validate(&json!([1]));
        assert_eq!(not_object[0].field, "payload");
    }

    #[test]
    fn every_violation_is_reported_with_what_would_be_accepted() {
        let schema = schema();
        let all = schema.validate(&json!({ "n": 0, "qty": "9", "kind": "z", "extra": 1 }));
        let got: Vec<(String, String)> = all.into_iter().map(|v| (v.field, v.message)).collect();
        assert_eq!(
            got,
            [
                ("kind".to_string(), "\"z\" is not one of: a, b".to_string()),
                ("n".to_string(), "0 is below the minimum 1".to_string()),
                ("qty".to_string(), "9 is above the maximum 5".to_string()),
                ("req".to_string(), "is required (string)".to_string()),
                (
                    "extra".to_string(),
                    "is not accepted; accepted fields: any, at, day, flag, kind, n, name, obj, price, qty, ratio, req, tags".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_wrong_value_is_described_in_the_message_and_clipped() {
        let schema = schema();
        let message = |payload: Value| schema.validate(&payload)[0].message.clone();
        assert_eq!(
            message(json!({ "req": "r", "n": "seven" })),
            "must be a whole number, got \"seven\""
        );
        assert_eq!(
            message(json!({ "req": "r", "n": [1] })),
            "must be a whole number, got a list"
        );
        let long = message(json!({ "req": "r", "day": "x".repeat(10_000) }));
        assert!(
            long.starts_with("must be a date such as \"2026-04-01\", got \"xxx"),
            "{long}"
        );
        assert!(
            long.len() < 200,
            "the echo is clipped: {} bytes",
            long.len()
        );
    }

    #[test]
    fn plain_decimal_text_only() {
        for ok in ["0", "-12.50", "3", "0.001", "79228162514264337593543950335"] {
            assert!(parse_decimal_text(ok).is_some(), "{ok}");
        }
        for bad in [
            "", "-", ".5", "5.", "+1", "1e3", " 1", "1,000", "1.2.3", "--1", "0x10",
        ] {
            assert!(parse_decimal_text(bad).is_none(), "{bad}");
        }
        assert!(is_identifier("a_1") && !is_identifier("1a") && !is_identifier("A"));
        assert!(!is_identifier(&"a".repeat(65)) && is_identifier(&"a".repeat(64)));
    }
}
