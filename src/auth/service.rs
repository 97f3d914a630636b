//! Backend services: bearer tokens listed in the secret `SERVICE_TOKENS` by their SHA-256
//! only, each with the scopes it holds.

use serde::Deserialize;
use sha2::{Digest, Sha256};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    sha256: String,
    scopes: Vec<String>,
}

/// Parses `SERVICE_TOKENS`: a JSON list of `{"name","sha256","scopes"}`. The problem, if
/// any, in words that quote no value.
pub(super) fn parse_service_tokens(raw: &str) -> Result<Vec<ServiceToken>, String> {
    let list: Vec<Raw> = serde_json::from_slice(raw.as_bytes())
        .map_err(|_| "must be a JSON list of {\"name\",\"sha256\",\"scopes\"}".to_owned())?;
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
