//! Text hygiene, in one place for both directions:
//! - what people type may not hold invisible characters ([`is_hidden`]): control
//!   characters and Unicode format characters (bidi overrides, zero-width marks) make a
//!   label or a key read differently from what it is;
//! - what a provider sends is untrusted ([`ProviderText`]): it may echo the key it was sent,
//!   carry characters that rewrite a log line or a page, or be huge. Every string that
//!   comes from a provider passes through [`ProviderText::clean`] before it is stored,
//!   logged or shown.

use std::collections::HashSet;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

use crate::crypto::SecretKey;

/// What stands where a piece of the key was.
pub const REDACTED: &str = "[redacted]";

/// A run of at least this many characters of the key (or of one of its encodings) is the
/// key: shorter runs are shared by every key of a provider (`sk-proj-`) or are the four
/// characters the hint shows anyway.
const MIN_RUN: usize = 8;

/// Control characters (Cc), Unicode format characters (Cf: bidi controls, zero-width
/// marks, the BOM, tags) and the line and paragraph separators.
pub fn is_hidden(c: char) -> bool {
    c.is_control() || is_format(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// The Unicode general category Cf (format), as of Unicode 15.
fn is_format(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// Makes provider text safe for one key: built once per key, applied to every string the
/// provider sent while that key was in use.
pub struct ProviderText {
    /// Windows of `MIN_RUN` bytes of the key and of its case-insensitive encodings,
    /// lower-cased.
    folded: HashSet<[u8; MIN_RUN]>,
    /// Windows of its case-sensitive encodings (base64).
    exact: HashSet<[u8; MIN_RUN]>,
    /// A key too short for windows is matched whole (lower-cased).
    short: Option<String>,
}

fn windows(form: &[u8], into: &mut HashSet<[u8; MIN_RUN]>) {
    for w in form.windows(MIN_RUN) {
        let mut a = [0u8; MIN_RUN];
        a.copy_from_slice(w);
        into.insert(a);
    }
}

fn percent_encoded(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

impl ProviderText {
    pub fn new(key: &SecretKey) -> Self {
        let raw = key.expose();
        let mut folded = HashSet::new();
        let mut exact = HashSet::new();
        let mut short = None;
        if raw.len() >= MIN_RUN {
            let reversed: String = raw.chars().rev().collect();
            let hex: String = raw.bytes().map(|b| format!("{b:02x}")).collect();
            for form in [raw.to_owned(), reversed, percent_encoded(raw), hex] {
                windows(form.to_ascii_lowercase().as_bytes(), &mut folded);
            }
            // Base64 of the key wherever it starts in the encoded bytes (after "user:" in a
            // Basic header, say): one form per alignment, without the characters that also
            // encode whatever came before it, or the padding.
            for shift in 0..3 {
                let mut bytes = vec![0u8; shift];
                bytes.extend_from_slice(raw.as_bytes());
                let skip = [0, 2, 3][shift];
                for form in [STANDARD.encode(&bytes), URL_SAFE_NO_PAD.encode(&bytes)] {
                    let form = form.trim_end_matches('=');
                    windows(&form.as_bytes()[skip.min(form.len())..], &mut exact);
                }
            }
        } else if raw.len() >= 4 {
            short = Some(raw.to_ascii_lowercase());
        }
        Self {
            folded,
            exact,
            short,
        }
    }

    /// The one function every provider string passes through: hidden characters removed
    /// (line breaks and tabs become spaces), the key and its obvious encodings redacted
    /// (also when spaces or line breaks split it into short pieces), runs of spaces
    /// collapsed and the result cut to `max_chars`.
    pub fn clean(&self, text: &str, max_chars: usize) -> String {
        let visible: String = text
            .chars()
            .filter_map(|c| match c {
                '\t' | '\n' | '\r' | '\u{2028}' | '\u{2029}' => Some(' '),
                c if is_hidden(c) => None,
                c => Some(c),
            })
            .collect();
        let redacted = self.redact(&visible);
        let mut out = String::with_capacity(redacted.len().min(max_chars * 4));
        let mut count = 0;
        let mut last_space = true;
        for c in redacted.trim().chars() {
            if c == ' ' && last_space {
                continue;
            }
            last_space = c == ' ';
            if count == max_chars {
                out.pop();
                out.push('…');
                break;
            }
            out.push(c);
            count += 1;
        }
        out
    }

    /// Whether `text` holds the key in any form [`clean`](Self::clean) would redact
    /// (hidden characters between its pieces included).
    pub fn quotes_key(&self, text: &str) -> bool {
        let visible: String = text.chars().filter(|c| !is_hidden(*c)).collect();
        self.redact(&visible) != visible
    }

    /// Replaces every run that matches the key (or an encoding of it) with [`REDACTED`].
    fn redact(&self, text: &str) -> String {
        let bytes = text.as_bytes();
        let mut hit = vec![false; bytes.len()];
        let mut any = false;
        if let Some(short) = &self.short {
            let lower = text.to_ascii_lowercase();
            let mut from = 0;
            while let Some(i) = lower[from..].find(short.as_str()) {
                hit[from + i..from + i + short.len()].fill(true);
                any = true;
                from += i + short.len();
            }
        }
        if !self.folded.is_empty() || !self.exact.is_empty() {
            // Windows are read with the spaces taken out (a key has none), so a key broken
            // into short pieces is still found; a hit covers the spaces between its pieces.
            let (compact, at): (Vec<u8>, Vec<usize>) = bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b != b' ')
                .map(|(i, b)| (*b, i))
                .unzip();
            for start in 0..compact.len().saturating_sub(MIN_RUN - 1) {
                let mut w = [0u8; MIN_RUN];
                w.copy_from_slice(&compact[start..start + MIN_RUN]);
                let matched = self.exact.contains(&w) || {
                    w.make_ascii_lowercase();
                    self.folded.contains(&w)
                };
                if matched {
                    hit[at[start]..=at[start + MIN_RUN - 1]].fill(true);
                    any = true;
                }
            }
        }
        if !any {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut in_run = false;
        for (i, c) in text.char_indices() {
            // A character is hidden when any of its bytes matched.
            if hit[i..i + c.len_utf8()].iter().any(|h| *h) {
                if !in_run {
                    out.push_str(REDACTED);
                    in_run = true;
                }
            } else {
                out.push(c);
                in_run = false;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk_live_3f9a0c1d2e3f4a5b6c7d8e9f";

    fn clean(text: &str) -> String {
        ProviderText::new(&SecretKey::new(KEY.into())).clean(text, 300)
    }

    #[test]
    fn the_key_and_its_obvious_encodings_are_redacted() {
        let b64 = STANDARD.encode(KEY);
        let url_b64 = URL_SAFE_NO_PAD.encode(KEY);
        let hex: String = KEY.bytes().map(|b| format!("{b:02X}")).collect();
        let reversed: String = KEY.chars().rev().collect();
        for echoed in [
            KEY.to_owned(),
            KEY.to_uppercase(),
            format!("Bearer {KEY}"),
            b64,
            url_b64,
            hex,
            reversed,
            percent_encoded(&format!("{KEY} ")),
            // A fragment long enough to identify the key.
            KEY[5..20].to_owned(),
            // Split by characters a log or a page would not show, or into short pieces.
            format!("{}\u{200b}{}", &KEY[..10], &KEY[10..]),
            format!("{}\n{}", &KEY[..12], &KEY[12..]),
            KEY.as_bytes()
                .chunks(5)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\n"),
            // Base64 of the key after a prefix, at every alignment (HTTP Basic and friends).
            STANDARD.encode(format!("user:{KEY}")),
            STANDARD.encode(format!(":{KEY}")),
            STANDARD.encode(format!("ab{KEY}")),
            URL_SAFE_NO_PAD.encode(format!("api-key={KEY}")),
        ] {
            let out = clean(&format!("Invalid key '{echoed}', try again"));
            assert!(out.contains(REDACTED), "{echoed} -> {out}");
            for w in KEY.as_bytes().windows(MIN_RUN) {
                let w = std::str::from_utf8(w).unwrap();
                assert!(!out.to_ascii_lowercase().contains(w), "{w} left in {out}");
            }
            assert!(out.starts_with("Invalid key '") && out.ends_with("', try again"));
        }
    }

    #[test]
    fn text_without_the_key_is_left_alone_apart_from_hidden_characters() {
        assert_eq!(
            clean("Model list unavailable: 503"),
            "Model list unavailable: 503"
        );
        assert_eq!(clean("a\u{202e}b\u{200b}c\u{0007}d\te   f\r\n"), "abcd e f");
        // The key's last four characters are what the hint shows anyway.
        assert_eq!(clean("key ending 8e9f"), "key ending 8e9f");
    }

    #[test]
    fn long_text_is_cut() {
        let out = ProviderText::new(&SecretKey::new(String::new())).clean(&"x".repeat(1000), 10);
        assert_eq!(out.chars().count(), 10);
        assert!(out.ends_with('…'));
        assert_eq!(
            ProviderText::new(&SecretKey::new(String::new())).clean("ünïcødé", 7),
            "ünïcødé"
        );
    }

    #[test]
    fn multibyte_text_around_the_key_stays_valid() {
        let out = clean(&format!("ключ «{KEY}» 無効"));
        assert_eq!(out, format!("ключ «{REDACTED}» 無効"));
    }

    #[test]
    fn short_keys_are_matched_whole() {
        let p = ProviderText::new(&SecretKey::new("abc12".into()));
        assert_eq!(p.clean("key ABC12 refused", 100), "key [redacted] refused");
        let empty = ProviderText::new(&SecretKey::new(String::new()));
        assert_eq!(empty.clean("nothing to hide", 100), "nothing to hide");
    }

    #[test]
    fn hidden_characters_are_recognised() {
        for c in [
            '\u{0}',
            '\u{7f}',
            '\u{202e}',
            '\u{2066}',
            '\u{200b}',
            '\u{feff}',
            '\u{e0041}',
            '\u{ad}',
            '\u{2028}',
        ] {
            assert!(is_hidden(c), "{:x}", c as u32);
        }
        for c in ['a', 'é', '…', '•', ' ', '中'] {
            assert!(!is_hidden(c), "{c}");
        }
    }
}
