//! Backend services: bearer tokens listed in the secret `SERVICE_TOKENS` by their SHA-256
//! only, each with the scopes it holds.

use sha2::{Digest, Sha256};

use crate::json_read;

crate::wire_enum! {
    /// What a service token may do.
    pub enum Scope {
        /// `POST /v1/resolve`: receive a user's key in the clear.
        Resolve = "resolve",
        /// `/v1/admin/*`.
        Admin = "admin",
    }
}

/// One service allowed in: its name (for the audit trail), the SHA-256 of its token,
/// its scopes.
#[derive(Clone, Debug)]
pub struct ServiceToken {
    pub name: String,
    sha256: [u8; 32],
    pub scopes: Vec<Scope>,
}

struct Raw {
    name: String,
    sha256: String,
    scopes: Vec<String>,
}

/// Parses `SERVICE_TOKENS`: a JSON list of `{"name","sha256","scopes"}`. The problem, if
/// any, in words that quote no value.
pub(super) fn parse_service_tokens(raw: &str) -> Result<Vec<ServiceToken>, String> {
    let list = read_list(raw)
        .ok_or_else(|| "must be a JSON list of {\"name\",\"sha256\",\"scopes\"}".to_owned())?;
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.into_iter().enumerate() {
        let name = r.name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(format!(
                "entry {i}: name must be 1 to 64 printable characters"
            ));
        }
        let sha256 =
            hex32(&r.sha256).ok_or_else(|| format!("entry {i}: sha256 must be 64 hex digits"))?;
        let scopes = r
            .scopes
            .iter()
            .map(|s| Scope::parse(s))
            .collect::<Option<Vec<_>>>()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                format!("entry {i}: scopes must be a non-empty list of resolve, admin")
            })?;
        if out.iter().any(|t: &ServiceToken| t.sha256 == sha256) {
            return Err(format!("entry {i}: the same token is listed twice"));
        }
        out.push(ServiceToken {
            name: name.to_owned(),
            sha256,
            scopes,
        });
    }
    Ok(out)
}

/// The list's entries, as a derive with `deny_unknown_fields` reads them: objects with
/// exactly `name`, `sha256` (strings) and `scopes` (a list of strings), each once. Any
/// other object in the text already fails, so a repeated member anywhere fails as the
/// derive's "duplicate field" did.
fn read_list(raw: &str) -> Option<Vec<Raw>> {
    let list = json_read::array(raw.as_bytes())?;
    if json_read::repeats_a_member(raw.as_bytes()) {
        return None;
    }
    json_read::items(&list, |o| {
        if o.keys()
            .any(|k| !matches!(k.as_str(), "name" | "sha256" | "scopes"))
        {
            return None;
        }
        Some(Raw {
            name: json_read::text(o, "name")?,
            sha256: json_read::text(o, "sha256")?,
            scopes: json_read::list(o, "scopes")?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect::<Option<_>>()?,
        })
    })
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The service whose token this is. The token's hash is compared with every entry, in
/// time that depends on neither where a match is nor how much of a hash matches.
pub fn find_service<'a>(tokens: &'a [ServiceToken], token: &str) -> Option<&'a ServiceToken> {
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for t in tokens {
        let diff = t
            .sha256
            .iter()
            .zip(hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if std::hint::black_box(diff) == 0 {
            found = Some(t);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_read_as_a_strict_derive_reads_it() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Derived {
            name: String,
            sha256: String,
            scopes: Vec<String>,
        }
        let h = "ab".repeat(32);
        let cases = [
            format!(r#"[{{"name":"a","sha256":"{h}","scopes":["resolve"]}}]"#),
            format!(
                r#"[{{"name":"a","sha256":"{h}","scopes":[]}}, {{"name":"b","sha256":"x","scopes":["admin"]}}]"#
            ),
            "[]".to_owned(),
            "{}".to_owned(),
            format!(r#"[{{"name":"a","sha256":"{h}"}}]"#),
            format!(r#"[{{"name":"a","sha256":"{h}","scopes":["resolve"],"note":1}}]"#),
            format!(r#"[{{"name":"a","sha256":"{h}","scopes":["resolve"],"scopes":["admin"]}}]"#),
            format!(r#"[{{"name":"a","n\u0061me":"b","sha256":"{h}","scopes":["admin"]}}]"#),
            format!(r#"[{{"name":"a","sha256":"{h}","scopes":["resolve",{{"x":1,"x":2}}]}}]"#),
            format!(r#"[{{"name":"a","sha256":"{h}","scopes":null}}]"#),
            format!(r#"[{{"name":1,"sha256":"{h}","scopes":[]}}]"#),
            format!(r#"[{{"name":"a","sha256":"{h}","scopes":[]}}, 5]"#),
            "not json".to_owned(),
        ];
        for case in cases {
            let derived = serde_json::from_str::<Vec<Derived>>(&case)
                .ok()
                .map(|l| l.len());
            let ours = read_list(&case).map(|l| l.len());
            assert_eq!(ours, derived, "{case}");
        }
    }

    fn sha(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn a_token_is_found_by_its_hash_with_its_scopes() {
        let raw = format!(
            r#"[{{"name":"tts","sha256":"{}","scopes":["resolve"]}},{{"name":"ops","sha256":"{}","scopes":["admin","resolve"]}}]"#,
            sha("tts-token"),
            sha("ops-token").to_uppercase()
        );
        let tokens = parse_service_tokens(&raw).unwrap();
        let tts = find_service(&tokens, "tts-token").unwrap();
        assert_eq!(
            (tts.name.as_str(), tts.scopes.as_slice()),
            ("tts", &[Scope::Resolve][..])
        );
        assert_eq!(find_service(&tokens, "ops-token").unwrap().name, "ops");
        assert!(find_service(&tokens, "tts-token ").is_none());
        assert!(find_service(&tokens, &sha("tts-token")).is_none());
        assert!(find_service(&[], "tts-token").is_none());
    }

    #[test]
    fn malformed_lists_are_refused_without_quoting_them() {
        let h = sha("x");
        for (raw, want) in [
            ("not json".to_owned(), "JSON list"),
            (
                format!(r#"[{{"name":"a","sha256":"{h}","scopes":["root"]}}]"#),
                "scopes",
            ),
            (
                format!(r#"[{{"name":"a","sha256":"{h}","scopes":[]}}]"#),
                "scopes",
            ),
            (
                r#"[{"name":"a","sha256":"abc","scopes":["admin"]}]"#.to_owned(),
                "sha256",
            ),
            (
                format!(r#"[{{"name":"","sha256":"{h}","scopes":["admin"]}}]"#),
                "name",
            ),
            (
                format!(r#"[{{"name":"a","sha256":"{h}","scopes":["admin"],"token":"x"}}]"#),
                "JSON list",
            ),
            (
                format!(
                    r#"[{{"name":"a","sha256":"{h}","scopes":["admin"]}},{{"name":"b","sha256":"{h}","scopes":["admin"]}}]"#
                ),
                "twice",
            ),
        ] {
            let e = parse_service_tokens(&raw).unwrap_err();
            assert!(e.contains(want), "{raw}: {e}");
            assert!(!e.contains(&h));
        }
    }
}
