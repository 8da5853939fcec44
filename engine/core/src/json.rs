//! Strict JSON text parsing: like `serde_json::from_str` into a `Value`, except that an object
//! with the same key twice is refused naming the key and its position — `serde_json` keeps the
//! last one silently, so `{"quantity": 1, "quantity": -5}` would mean whatever the parser
//! happened to keep. Every JSON text the engine accepts (wire payloads, CLI inputs, reference
//! data files) goes through here.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The one-key map serde_json's deserializer hands a visitor for a number it keeps as text
/// (`arbitrary_precision`); its own `Value` recognises the same key.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Most nested arrays and objects accepted (`serde_json` stops at 128 too).
const DEPTH_MAX: usize = 128;

/// What kind of JSON value `v` is, for messages ("a string", "a list", …).
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a JSON number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Parses `text` as one JSON value, refusing duplicate object keys. The error names the line
/// and column (`serde_json::Error::line`, `column`).
pub fn from_str(text: &str) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = Strict { depth: 0 }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// A value at `depth`.
#[derive(Clone, Copy)]
struct Strict {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.is_empty() && key == NUMBER_TOKEN {
                // A number kept as written (serde_json's `arbitrary_precision`): `1.10` stays
                // `1.10`, a 23-digit integer stays exact.
                let text: String = map.next_value()?;
                return text.parse::<Number>().map(Value::Number).map_err(|_| {
                    de::Error::custom(format!(
                        "`{}` is not a JSON number",
                        crate::error::clip(&text, 64)
                    ))
                });
            }
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{}`",
                    crate::error::clip(&key, 64)
                )));
            }
            let value = map.next_value_seed(inner)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

impl Strict {
    fn nested<E: de::Error>(self) -> Result<Strict, E> {
        if self.depth >= DEPTH_MAX {
            return Err(E::custom(format!(
                "nested more than {DEPTH_MAX} levels deep"
            )));
        }
        Ok(Strict {
            depth: self.depth + 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_keep_their_text_and_objects_their_key_order() {
        let text = r#"{"z":1.10,"a":12345678901234567890123,"m":{"y":-0.000,"b":1e+3,"c":[2.50]}}"#;
        assert_eq!(
            serde_json::to_string(&from_str(text).unwrap()).unwrap(),
            text
        );
        // Only an exponent's sign is written out.
        assert_eq!(
            serde_json::to_string(&from_str("[1E3]").unwrap()).unwrap(),
            "[1e+3]"
        );
        let e = from_str(r#"{"$serde_json::private::Number": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("not a JSON number"), "{e}");
    }

    #[test]
    fn parses_like_serde_json_but_refuses_duplicate_keys_with_their_place() {
        let text = r#"{"a": [1, -2, 3.5, "x", null, true], "b": {"c": {}}}"#;
        assert_eq!(
            from_str(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        let e = from_str("{\n  \"quantity\": 1,\n  \"quantity\": -5\n}").unwrap_err();
        assert!(e.to_string().contains("duplicate key `quantity`"), "{e}");
        assert_eq!(e.line(), 3);
        let e = from_str(r#"{"lines": [{"sku": "A", "sku": "B"}]}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate key `sku`"), "{e}");
        assert!(from_str("{} {}").is_err(), "trailing data");
        assert_eq!(from_str("\"\\u00e9\"").unwrap(), json!("é"));
    }
}
