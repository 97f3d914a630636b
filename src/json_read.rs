//! Reading an outside party's JSON answer (a provider's model list, a JWKS, a secrets
//! store's listing) into plain structs, member by member from the one JSON tree type,
//! with the rules `#[derive(Deserialize)]` would apply: a required member must be there
//! and of its type, an optional one may be absent or null, a defaulted one may be absent
//! (not null), unknown members are ignored, a list fails when one item does. `None` is
//! where the derive would fail. One small reader instead of a serde deserializer compiled
//! for every answer's shape (several KB of wasm each).

use serde_json::{Map, Value};

/// An object's members.
pub(crate) type Members = Map<String, Value>;

/// `body` as a JSON object.
pub(crate) fn object(body: &[u8]) -> Option<Members> {
    match serde_json::from_slice(body).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// `body` as a JSON array.
pub(crate) fn array(body: &[u8]) -> Option<Vec<Value>> {
    match serde_json::from_slice(body).ok()? {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

/// Whether an object anywhere in `body` names a member twice (a derive refuses a repeated
/// field; the JSON tree keeps the last). For valid JSON only (check it parses first);
/// names are compared as JSON reads them (`"n\u0061me"` is `"name"`).
pub(crate) fn repeats_a_member(body: &[u8]) -> bool {
    // The names seen in each open container, innermost last; `None` for a list.
    let mut open: Vec<Option<Vec<Value>>> = Vec::new();
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'{' => open.push(Some(Vec::new())),
            b'[' => open.push(None),
            b'}' | b']' => {
                open.pop();
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    i += if body[i] == b'\\' { 2 } else { 1 };
                }
                let end = (i + 1).min(body.len());
                let mut next = end;
                while next < body.len() && body[next].is_ascii_whitespace() {
                    next += 1;
                }
                // A string followed by a colon is a member's name.
                if body.get(next) == Some(&b':') {
                    if let Some(Some(names)) = open.last_mut() {
                        let name = serde_json::from_slice::<Value>(&body[start..end])
                            .unwrap_or(Value::Null);
                        if names.contains(&name) {
                            return true;
                        }
                        names.push(name);
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// A required string member.
pub(crate) fn text(o: &Members, key: &str) -> Option<String> {
    o.get(key)?.as_str().map(str::to_owned)
}

/// A required string member, moved out of the tree (a secret is not copied).
pub(crate) fn take_text(o: &mut Members, key: &str) -> Option<String> {
    match o.remove(key)? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// A string member that defaults to empty when absent (null is not absent), moved out.
pub(crate) fn take_text_or_empty(o: &mut Members, key: &str) -> Option<String> {
    match o.remove(key) {
        None => Some(String::new()),
        Some(Value::String(s)) => Some(s),
        Some(_) => None,
    }
}

/// A list member's items that defaults to empty when absent (null is not absent), moved out.
pub(crate) fn take_list_or_empty(o: &mut Members, key: &str) -> Option<Vec<Value>> {
    match o.remove(key) {
        None => Some(Vec::new()),
        Some(Value::Array(a)) => Some(a),
        Some(_) => None,
    }
}

/// A number member that defaults to 0 when absent (null is not absent).
pub(crate) fn number_or_zero(o: &Members, key: &str) -> Option<f64> {
    match o.get(key) {
        None => Some(0.0),
        Some(v) => v.as_f64(),
    }
}

/// An optional string member: absent or null is `Some(None)`, another type `None`.
pub(crate) fn opt_text(o: &Members, key: &str) -> Option<Option<String>> {
    match o.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(v) => v.as_str().map(|s| Some(s.to_owned())),
    }
}

/// A required number member.
pub(crate) fn number(o: &Members, key: &str) -> Option<f64> {
    o.get(key)?.as_f64()
}

/// An optional number member: absent or null is `Some(None)`, another type `None`.
pub(crate) fn opt_number(o: &Members, key: &str) -> Option<Option<f64>> {
    match o.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(v) => v.as_f64().map(Some),
    }
}

/// An optional non-negative integer member (`Option<u64>`): a fraction or a negative
/// number is `None`, as a string is.
pub(crate) fn opt_u64(o: &Members, key: &str) -> Option<Option<u64>> {
    match o.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(v) => v.as_u64().map(Some),
    }
}

/// A boolean member that defaults to false when absent (null is not absent).
pub(crate) fn flag_or_false(o: &Members, key: &str) -> Option<bool> {
    match o.get(key) {
        None => Some(false),
        Some(v) => v.as_bool(),
    }
}

/// A required list member's items.
pub(crate) fn list<'v>(o: &'v Members, key: &str) -> Option<&'v [Value]> {
    o.get(key)?.as_array().map(Vec::as_slice)
}

/// A list member that defaults to empty when absent (null is not absent).
pub(crate) fn list_or_empty<'v>(o: &'v Members, key: &str) -> Option<&'v [Value]> {
    match o.get(key) {
        None => Some(&[]),
        Some(v) => v.as_array().map(Vec::as_slice),
    }
}

/// A list of strings that defaults to empty when absent.
pub(crate) fn texts_or_empty(o: &Members, key: &str) -> Option<Vec<String>> {
    list_or_empty(o, key)?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Every item read by `read`, or `None` when one is not what it should be.
pub(crate) fn items<T>(items: &[Value], read: impl Fn(&Members) -> Option<T>) -> Option<Vec<T>> {
    items.iter().map(|v| read(v.as_object()?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Shape {
        id: String,
        name: Option<String>,
        amount: f64,
        limit: Option<f64>,
        reset: Option<u64>,
        #[serde(default)]
        on: bool,
        #[serde(default)]
        tags: Vec<String>,
    }

    fn read(o: &Members) -> Option<Shape> {
        Some(Shape {
            id: text(o, "id")?,
            name: opt_text(o, "name")?,
            amount: number(o, "amount")?,
            limit: opt_number(o, "limit")?,
            reset: opt_u64(o, "reset")?,
            on: flag_or_false(o, "on")?,
            tags: texts_or_empty(o, "tags")?,
        })
    }

    #[test]
    fn reads_as_the_derive_does() {
        let cases = [
            r#"{"id":"a","amount":1}"#,
            r#"{"id":"a","amount":1.5,"name":null,"limit":null,"reset":null,"extra":[1]}"#,
            r#"{"id":"a","amount":-2,"name":"N","limit":3,"reset":7,"on":true,"tags":["x","y"]}"#,
            r#"{"amount":1}"#,
            r#"{"id":1,"amount":1}"#,
            r#"{"id":"a"}"#,
            r#"{"id":"a","amount":"1"}"#,
            r#"{"id":"a","amount":1,"name":2}"#,
            r#"{"id":"a","amount":1,"limit":"3"}"#,
            r#"{"id":"a","amount":1,"reset":1.5}"#,
            r#"{"id":"a","amount":1,"reset":-1}"#,
            r#"{"id":"a","amount":1,"on":null}"#,
            r#"{"id":"a","amount":1,"on":1}"#,
            r#"{"id":"a","amount":1,"tags":null}"#,
            r#"{"id":"a","amount":1,"tags":["x",1]}"#,
            r#"{"id":"a","amount":1,"tags":"x"}"#,
            r#"{"id":"a","amount":1} x"#,
            r#"[]"#,
            r#"7"#,
        ];
        for case in cases {
            let derived = serde_json::from_str::<Shape>(case).ok();
            let ours = object(case.as_bytes()).and_then(|o| read(&o));
            assert_eq!(ours, derived, "{case}");
        }
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Owned {
        key: String,
        #[serde(default)]
        value: String,
        #[serde(default)]
        n: f64,
        #[serde(default)]
        list: Vec<u8>,
    }

    fn read_owned(mut o: Members) -> Option<Owned> {
        Some(Owned {
            key: take_text(&mut o, "key")?,
            value: take_text_or_empty(&mut o, "value")?,
            n: number_or_zero(&o, "n")?,
            list: take_list_or_empty(&mut o, "list")?
                .iter()
                .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect::<Option<_>>()?,
        })
    }

    #[test]
    fn takes_members_as_the_derive_reads_them() {
        let cases = [
            r#"{"key":"k"}"#,
            r#"{"key":"k","value":"v","n":2.5,"list":[1,2]}"#,
            r#"{"value":"v"}"#,
            r#"{"key":null}"#,
            r#"{"key":"k","value":null}"#,
            r#"{"key":"k","value":3}"#,
            r#"{"key":"k","n":null}"#,
            r#"{"key":"k","n":"1"}"#,
            r#"{"key":"k","list":null}"#,
            r#"{"key":"k","list":{}}"#,
        ];
        for case in cases {
            let derived = serde_json::from_str::<Owned>(case).ok();
            let ours = object(case.as_bytes()).and_then(read_owned);
            assert_eq!(ours, derived, "{case}");
        }
    }

    #[test]
    fn a_repeated_member_is_found_at_any_depth() {
        for (text, repeats) in [
            (r#"{"a":1,"b":2}"#, false),
            (r#"{"a":1,"a":2}"#, true),
            (r#"{"a":1, "n\u0061me":2,"name" :3}"#, true),
            (r#"[{"a":1},{"a":2}]"#, false),
            (r#"{"a":{"a":1},"b":[{"c":1,"c":2}]}"#, true),
            (r#"{"a":"b:\"c\"","b":{"x":":","y":"a"}}"#, false),
            (r#"{"a\\":1,"a":2}"#, false),
            (r#"{"a\\" : 1,"a\\":2}"#, true),
            (r#"["a","a"]"#, false),
        ] {
            assert!(serde_json::from_str::<Value>(text).is_ok(), "{text}");
            assert_eq!(repeats_a_member(text.as_bytes()), repeats, "{text}");
        }
    }

    #[test]
    fn a_list_fails_when_one_item_does() {
        let o = object(br#"{"l":[{"id":"a","amount":1},{"id":"b"}],"m":[]}"#).unwrap();
        assert_eq!(items(list(&o, "l").unwrap(), read), None);
        assert_eq!(items(list(&o, "m").unwrap(), read), Some(vec![]));
        assert_eq!(list(&o, "absent"), None);
        assert_eq!(list_or_empty(&o, "absent"), Some(&[][..]));
        let o = object(br#"{"l":[{"id":"a","amount":1}, 3]}"#).unwrap();
        assert_eq!(items(list(&o, "l").unwrap(), read), None);
        assert_eq!(array(b"[1,2]").map(|a| a.len()), Some(2));
        assert_eq!(array(b"{}"), None);
    }
}
