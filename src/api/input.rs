//! Reading request bodies: JSON objects checked field by field, every problem reported
//! at once, unknown fields refused. Every string field of every body passes the same
//! check ([`JsonObject::string`] and [`JsonObject::raw_string`] share it): no control
//! characters, no Unicode format characters (bidi overrides, zero-width marks).

use serde_json::{Map, Value};

use super::problem::ApiError;
use crate::error::FieldError;
use crate::redact::is_hidden;

pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON object being read; collects a [`FieldError`] for each problem.
pub struct JsonObject {
    map: Map<String, Value>,
    /// The names read so far (a request's few: a list, where a set would compile a
    /// B-tree of its own into the wasm).
    read: Vec<String>,
    pub errors: Vec<FieldError>,
}

impl JsonObject {
    /// Parses `body`, which must hold a JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let body_error = |m: String| ApiError::invalid_request(vec![FieldError::new("body", m)]);
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(body_error("a JSON object is required".into()));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Self::from_map(map)),
            Ok(_) => Err(body_error("must be a JSON object".into())),
            Err(e) => Err(body_error(format!(
                "is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))),
        }
    }

    /// An object already parsed (an element of an array field).
    pub fn from_map(map: Map<String, Value>) -> Self {
        Self {
            map,
            read: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// An array field, taken out of the object. `None` when absent, null or wrong (the
    /// error is recorded).
    pub fn take_array(&mut self, name: &str, required: bool) -> Option<Vec<Value>> {
        self.read.push(name.to_owned());
        match self.map.remove(name) {
            None | Some(Value::Null) => {
                if required {
                    self.errors.push(FieldError::new(name, "is required"));
                }
                None
            }
            Some(Value::Array(items)) => Some(items),
            Some(_) => {
                self.errors.push(FieldError::new(name, "must be an array"));
                None
            }
        }
    }

    /// An object field, taken out of the object. `None` when absent or null; an error
    /// when not an object.
    pub fn take_object(&mut self, name: &str) -> Option<Map<String, Value>> {
        self.read.push(name.to_owned());
        match self.map.remove(name) {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                self.errors.push(FieldError::new(name, "must be an object"));
                None
            }
        }
    }

    /// Puts a field in (one lifted out of a nested object); `false` if it is there already.
    pub fn insert(&mut self, name: String, value: Value) -> bool {
        if self.map.contains_key(&name) {
            return false;
        }
        self.map.insert(name, value);
        true
    }

    /// A string field of 1..=`max_chars` characters, trimmed. `None` when absent, null or
    /// wrong (the error is recorded).
    pub fn string(&mut self, name: &str, required: bool, max_chars: usize) -> Option<String> {
        self.read.push(name.to_owned());
        match self.map.get(name) {
            None | Some(Value::Null) => {
                if required {
                    self.errors.push(FieldError::new(name, "is required"));
                }
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.errors.push(FieldError::new(name, "must not be empty"));
                None
            }
            Some(Value::String(s)) => Self::text(&mut self.errors, name, s, max_chars),
            Some(_) => {
                self.errors.push(FieldError::new(name, "must be a string"));
                None
            }
        }
    }

    /// A string field as sent (trimmed), where empty is allowed: `None` when absent or
    /// null, an error when not a string or too long.
    pub fn raw_string(&mut self, name: &str, max_chars: usize) -> Option<String> {
        self.read.push(name.to_owned());
        match self.map.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Self::text(&mut self.errors, name, s, max_chars),
            Some(_) => {
                self.errors.push(FieldError::new(name, "must be a string"));
                None
            }
        }
    }

    /// The one check every string field passes: trimmed, at most `max_chars`, and
    /// nothing that reads differently from what it is.
    fn text(errors: &mut Vec<FieldError>, name: &str, s: &str, max_chars: usize) -> Option<String> {
        let s = s.trim();
        if s.chars().count() > max_chars {
            errors.push(FieldError::new(
                name,
                format!("must be at most {max_chars} characters"),
            ));
            None
        } else if s.chars().any(is_hidden) {
            errors.push(FieldError::new(
                name,
                "must not contain control or invisible formatting characters",
            ));
            None
        } else {
            Some(s.to_owned())
        }
    }

    /// The field's value as it is, if the body names it (null included).
    pub fn value(&mut self, name: &str) -> Option<Value> {
        self.read.push(name.to_owned());
        self.map.get(name).cloned()
    }

    /// An integer in `range`, if the body names one (null counts as absent).
    pub fn integer(&mut self, name: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        self.read.push(name.to_owned());
        match self.map.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_i64().is_some_and(|v| range.contains(&v)) => n.as_i64(),
            Some(_) => {
                self.errors.push(FieldError::new(
                    name,
                    format!(
                        "must be an integer from {} to {}",
                        range.start(),
                        range.end()
                    ),
                ));
                None
            }
        }
    }

    /// Whether the body names this field at all (even as null).
    pub fn bool(&mut self, name: &str) -> Option<bool> {
        self.read.push(name.to_owned());
        match self.map.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.errors
                    .push(FieldError::new(name, "must be true or false"));
                None
            }
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Reports every field that was never read as unknown; returns all errors, if any.
    pub fn finish(mut self) -> Result<(), Vec<FieldError>> {
        for key in self.map.keys() {
            if !self.read.iter().any(|r| r == key) {
                self.errors
                    .push(FieldError::new(key, "is not a known field"));
            }
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// Whether a `Content-Type` header says JSON (`application/json`, any parameters).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_at_once() {
        let mut o = JsonObject::parse(br#"{"a":"","b":5,"c":"xxxxxx","d":"ok","e":1}"#).unwrap();
        assert_eq!(o.string("a", true, 10), None);
        assert_eq!(o.string("b", true, 10), None);
        assert_eq!(o.string("c", true, 5), None);
        assert_eq!(o.string("d", true, 5).as_deref(), Some("ok"));
        assert_eq!(o.string("z", true, 5), None);
        let errors = o.finish().unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["a", "b", "c", "z", "e"]);
    }

    #[test]
    fn strings_are_trimmed_and_control_characters_refused() {
        let mut o = JsonObject::parse(b"{\"k\":\"  sk_1 \\n\",\"x\":\"a\\u0000b\"}").unwrap();
        assert_eq!(o.string("k", true, 10).as_deref(), Some("sk_1"));
        assert_eq!(o.string("x", true, 10), None);
    }

    #[test]
    fn invisible_formatting_is_refused_in_every_string_field_even_raw_ones() {
        for bad in [
            "Per\\u202esonal",
            "a\\u200bb",
            "\\ufeffx",
            "x\\u2066y",
            "a\\u0007",
        ] {
            let body = format!("{{\"a\":\"{bad}\",\"b\":\"{bad}\"}}");
            let mut o = JsonObject::parse(body.as_bytes()).unwrap();
            assert_eq!(o.string("a", true, 100), None, "{bad}");
            assert_eq!(o.raw_string("b", 100), None, "{bad}");
            assert_eq!(o.finish().unwrap_err().len(), 2, "{bad}");
        }
        let mut o =
            JsonObject::parse("{\"a\":\"Café ünïcode …9f2a\",\"b\":\"\"}".as_bytes()).unwrap();
        assert_eq!(
            o.string("a", true, 100).as_deref(),
            Some("Café ünïcode …9f2a")
        );
        assert_eq!(o.raw_string("b", 100).as_deref(), Some(""));
    }

    #[test]
    fn non_objects_and_broken_json_are_invalid_requests() {
        for body in [&b""[..], b"  ", b"[]", b"\"x\"", b"{", b"{\"a\":}"] {
            let e = JsonObject::parse(body).err().unwrap();
            assert_eq!(e.code, "invalid_request");
            assert_eq!(e.errors[0].field, "body");
        }
    }

    #[test]
    fn recognises_json_content_types() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(Some("application/jsonx")));
        assert!(!is_json(None));
    }
}
