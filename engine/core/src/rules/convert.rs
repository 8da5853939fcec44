//! Conversion between JSON values and Rhai values. `rhai::serde` converts decimals through
//! floating point, so this module is the only bridge, and it adds no floating point of its
//! own.
//!
//! Into Rhai: `null` → `()`, booleans, whole numbers that fit `i64` → `INT`, strings stay
//! strings (money arrives as decimal *strings*, which definitions' schemas enforce; scripts
//! turn them into `Decimal` with `decimal(x)`), arrays and objects. Other JSON numbers become
//! a `Decimal` of the number's shortest text — but note that `serde_json` (without its
//! `arbitrary_precision` feature) has already parsed them as `f64`, so such a number keeps
//! only what an `f64` holds (`1.10` arrives as `1.1`, a 23-digit integer rounded). That is why
//! money is never a JSON number. Out of Rhai: `Decimal` → a decimal string keeping its scale
//! (`16.99`, `0.30`), `()` → `null`; any other type is an error naming the path.

use std::str::FromStr;

use rhai::{Array, Dynamic, Map};
use rust_decimal::Decimal;
use serde_json::{Number, Value};

/// JSON → Rhai.
pub fn to_dynamic(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => number_to_dynamic(n),
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(items) => Dynamic::from_array(items.iter().map(to_dynamic).collect::<Array>()),
        Value::Object(map) => Dynamic::from_map(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), to_dynamic(v)))
                .collect::<Map>(),
        ),
    }
}

fn number_to_dynamic(n: &Number) -> Dynamic {
    if let Some(i) = n.as_i64() {
        return Dynamic::from_int(i);
    }
    // u64 above i64::MAX, or a fraction: the decimal of the number's shortest text (the f64
    // serde_json parsed, not the text that was sent; see the module docs).
    let text = n.to_string();
    Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map(Dynamic::from_decimal)
        .unwrap_or_else(|_| Dynamic::from(text))
}

/// Rhai → JSON; `path` names the value in errors (e.g. `result.changes.total`).
pub fn to_json(value: &Dynamic, path: &str) -> Result<Value, String> {
    let value = value.flatten_clone();
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::Number(i.into()));
    }
    if let Ok(d) = value.as_decimal() {
        return Ok(Value::String(d.to_string()));
    }
    if value.is_string() {
        return Ok(Value::String(value.into_string().expect("checked string")));
    }
    if value.is_char() {
        return Ok(Value::String(
            value.as_char().expect("checked char").to_string(),
        ));
    }
    if value.is_array() {
        let items = value.into_array().expect("checked array");
        return items
            .iter()
            .enumerate()
            .map(|(i, v)| to_json(v, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if value.is_map() {
        let map = value.cast::<Map>();
        let mut out = serde_json::Map::new();
        for (k, v) in &map {
            out.insert(k.to_string(), to_json(v, &format!("{path}.{k}"))?);
        }
        return Ok(Value::Object(out));
    }
    Err(format!(
        "`{path}` is a {}, which has no JSON form; use strings, numbers, decimals, booleans, arrays and maps",
        value.type_name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decimals_round_trip_exactly() {
        for text in ["1234567890123.4567890123", "0.30", "16.99", "-0.01", "0"] {
            let d = Decimal::from_str(text).unwrap();
            let back = to_json(&Dynamic::from_decimal(d), "x").unwrap();
            assert_eq!(back, json!(text), "{text}");
        }
        let v = json!({ "total": "0.30", "qty": 3, "rate": 0.0825, "big": 18446744073709551615u64, "tags": ["a", null] });
        let back = to_json(&to_dynamic(&v), "v").unwrap();
        assert_eq!(back["total"], "0.30", "strings stay strings");
        assert_eq!(back["qty"], 3);
        assert_eq!(
            back["rate"], "0.0825",
            "a JSON fraction becomes an exact decimal"
        );
        assert_eq!(back["big"], "18446744073709551615");
        assert_eq!(back["tags"], json!(["a", null]));
    }

    #[test]
    fn unsupported_values_name_their_path() {
        let f = Dynamic::from(std::time::Instant::now());
        let mut map = Map::new();
        map.insert("when".into(), f);
        let err = to_json(&Dynamic::from_map(map), "result").unwrap_err();
        assert!(err.starts_with("`result.when` is a "), "{err}");
    }
}
