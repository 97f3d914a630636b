//! Back-off: the server's hint when it gives one, exponential back-off with full jitter
//! when it does not (sleep = uniform(0, min(cap, base * 2^attempt))).

use crate::domain::Timestamp;
use crate::http::HttpResponse;

/// Randomness for back-off jitter (not for keys: those use the CSPRNG in `crypto`).
pub trait Jitter {
    /// A uniform value in `[0, 1)`.
    fn unit(&self) -> f64;
}

/// Jitter from the platform CSPRNG.
pub struct SystemJitter;

impl Jitter for SystemJitter {
    fn unit(&self) -> f64 {
        let bytes: [u8; 8] = crate::crypto::random_bytes().unwrap_or([0; 8]);
        (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base_ms: u64,
    pub cap_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: 250,
            cap_ms: 4_000,
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (0-based).
    pub fn delay_ms(&self, attempt: u32, jitter: &dyn Jitter) -> u64 {
        let ceiling = self
            .base_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.cap_ms);
        let unit = jitter.unit().clamp(0.0, 1.0);
        ((ceiling as f64) * unit) as u64
    }
}

/// The wait a response asks for in its headers: `retry-after-ms` (OpenAI), then
/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn header_hint_ms(response: &HttpResponse, now: Timestamp) -> Option<u64> {
    if let Some(ms) = response
        .header("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(ms.ceil() as u64);
        }
    }
    let value = response.header("retry-after")?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    Timestamp::parse_http_date(value).map(|at| now.millis_until(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl Jitter for Fixed {
        fn unit(&self) -> f64 {
            self.0
        }
    }

    fn response(headers: &[(&str, &str)]) -> HttpResponse {
        HttpResponse {
            status: 429,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: vec![],
        }
    }

    const NOW: Timestamp = Timestamp::from_unix_seconds(784_111_700);

    #[test]
    fn retry_after_seconds() {
        assert_eq!(
            header_hint_ms(&response(&[("Retry-After", "3")]), NOW),
            Some(3000)
        );
    }

    #[test]
    fn retry_after_http_date_is_relative_to_now() {
        let r = response(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert_eq!(header_hint_ms(&r, NOW), Some(77_000));
        let past = response(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]);
        assert_eq!(header_hint_ms(&past, NOW), Some(0));
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let r = response(&[("retry-after", "20"), ("retry-after-ms", "1500.5")]);
        assert_eq!(header_hint_ms(&r, NOW), Some(1501));
    }

    #[test]
    fn unusable_hints_are_ignored() {
        for v in ["soon", "-1", "1.5"] {
            assert_eq!(
                header_hint_ms(&response(&[("retry-after", v)]), NOW),
                None,
                "{v}"
            );
        }
        assert_eq!(header_hint_ms(&response(&[]), NOW), None);
    }

    #[test]
    fn full_jitter_stays_within_the_exponential_ceiling() {
        let b = Backoff::default();
        for (attempt, ceiling) in [
            (0, 250),
            (1, 500),
            (2, 1000),
            (3, 2000),
            (4, 4000),
            (9, 4000),
            (63, 4000),
        ] {
            assert_eq!(b.delay_ms(attempt, &Fixed(0.0)), 0);
            assert_eq!(b.delay_ms(attempt, &Fixed(0.5)), ceiling / 2);
            assert!(b.delay_ms(attempt, &Fixed(0.999_999)) < ceiling);
            assert!(
                b.delay_ms(attempt, &Fixed(7.0)) <= ceiling,
                "jitter out of range is clamped"
            );
        }
    }
}

/// Google's wait in the body: a `google.rpc.RetryInfo` detail with `"retryDelay": "47s"`.
pub fn google_retry_delay_ms(body: &serde_json::Value) -> Option<u64> {
    let details = body.get("error")?.get("details")?.as_array()?;
    details
        .iter()
        .filter(|d| {
            d.get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|d| {
            d.get("retryDelay")?
                .as_str()?
                .strip_suffix('s')?
                .parse::<f64>()
                .ok()
        })
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| (s * 1000.0).ceil() as u64)
}

/// A wait spelled out in an error message, as Azure does: "… retry after 2 seconds" or
/// "Try again in 26 seconds".
pub fn message_retry_delay_ms(message: &str) -> Option<u64> {
    let lower = message.to_ascii_lowercase();
    ["retry after ", "try again in "].iter().find_map(|phrase| {
        let rest = &lower[lower.find(phrase)? + phrase.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let secs: u64 = digits.parse().ok()?;
        rest[digits.len()..]
            .trim_start()
            .starts_with("second")
            .then_some(secs * 1000)
    })
}

#[cfg(test)]
mod body_hint_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn google_retry_info() {
        let body = json!({"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[]},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"47s"}]}});
        assert_eq!(google_retry_delay_ms(&body), Some(47_000));
        let frac = json!({"error":{"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.5s"}]}});
        assert_eq!(google_retry_delay_ms(&frac), Some(1_500));
        assert_eq!(
            google_retry_delay_ms(&json!({"error":{"details":[]}})),
            None
        );
    }

    #[test]
    fn azure_messages() {
        assert_eq!(
            message_retry_delay_ms(
                "Requests to the API have exceeded the rate limit. Please retry after 2 seconds."
            ),
            Some(2_000)
        );
        assert_eq!(
            message_retry_delay_ms("Rate limit is exceeded. Try again in 26 seconds."),
            Some(26_000)
        );
        assert_eq!(message_retry_delay_ms("Please retry after a while"), None);
        assert_eq!(message_retry_delay_ms("retry after 5 minutes"), None);
    }
}
