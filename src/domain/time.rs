//! Wall-clock instants as milliseconds since the Unix epoch, with the two text forms the
//! service meets: RFC 3339 (our API) and the HTTP-date of `Retry-After` (RFC 9110).

use std::fmt;

use async_trait::async_trait;

/// The time now, and waiting (the Worker's `Date` and timers; a fake clock in tests).
#[async_trait(?Send)]
pub trait Clock {
    fn now(&self) -> Timestamp;
    async fn sleep(&self, ms: u64);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    pub const fn from_unix_seconds(s: u64) -> Self {
        Self(s.saturating_mul(1000))
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    pub const fn as_unix_seconds(self) -> u64 {
        self.0 / 1000
    }

    pub const fn plus_millis(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// Milliseconds from `self` until `later`, zero if `later` is not later.
    pub const fn millis_until(self, later: Timestamp) -> u64 {
        later.0.saturating_sub(self.0)
    }

    /// RFC 3339 in UTC with second precision: `2026-12-01T00:00:00Z`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0 / 1000;
        let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    /// RFC 3339 in UTC with millisecond precision: `2026-12-01T00:00:00.123Z`.
    pub fn to_rfc3339_millis(self) -> String {
        let seconds = self.to_rfc3339();
        format!("{}.{:03}Z", &seconds[..seconds.len() - 1], self.0 % 1000)
    }

    /// Parses an RFC 3339 UTC time as the vault and providers write it:
    /// `2026-12-01T00:00:00Z`, with optional fractional seconds (ignored).
    pub fn parse_rfc3339(raw: &str) -> Option<Self> {
        let raw = raw.trim().strip_suffix('Z')?;
        let (date, time) = raw.split_once('T')?;
        let mut d = date.split('-');
        let year: i64 = d.next()?.parse().ok()?;
        let month: u32 = d.next()?.parse().ok()?;
        let day: u32 = d.next()?.parse().ok()?;
        let time = time.split('.').next()?;
        let mut t = time.split(':');
        let h: u64 = t.next()?.parse().ok()?;
        let m: u64 = t.next()?.parse().ok()?;
        let s: u64 = t.next()?.parse().ok()?;
        if d.next().is_some() || t.next().is_some() {
            return None;
        }
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || h > 23
            || m > 59
            || s > 60
            || year < 1970
        {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + s;
        Some(Self::from_unix_seconds(secs))
    }

    /// Its UTC calendar day, `YYYY-MM-DD`.
    pub fn utc_day(self) -> String {
        self.to_rfc3339()[..10].to_owned()
    }

    /// The start (midnight UTC) of the calendar day written `YYYY-MM-DD`; `None` for any
    /// other shape or a day the calendar does not have (`2026-02-30`).
    pub fn parse_utc_day(raw: &str) -> Option<Self> {
        let b = raw.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        if !(digits(0..4) && digits(5..7) && digits(8..10)) {
            return None;
        }
        let year: i64 = raw[..4].parse().ok()?;
        let month: u32 = raw[5..7].parse().ok()?;
        let day: u32 = raw[8..].parse().ok()?;
        if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return None;
        }
        let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
        let at = Self::from_unix_seconds(days * 86_400);
        // A day past its month's end lands in the next month: not the day written.
        (at.utc_day() == raw).then_some(at)
    }

    /// Parses an IMF-fixdate, the form RFC 9110 requires senders to use:
    /// `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub fn parse_http_date(raw: &str) -> Option<Self> {
        let rest = raw.trim().split_once(", ")?.1;
        let mut parts = rest.split(' ');
        let day: u32 = parts.next()?.parse().ok()?;
        let month = match parts.next()? {
            "Jan" => 1,
            "Feb" => 2,
            "Mar" => 3,
            "Apr" => 4,
            "May" => 5,
            "Jun" => 6,
            "Jul" => 7,
            "Aug" => 8,
            "Sep" => 9,
            "Oct" => 10,
            "Nov" => 11,
            "Dec" => 12,
            _ => return None,
        };
        let year: i64 = parts.next()?.parse().ok()?;
        let mut hms = parts.next()?.split(':');
        let h: u64 = hms.next()?.parse().ok()?;
        let m: u64 = hms.next()?.parse().ok()?;
        let s: u64 = hms.next()?.parse().ok()?;
        if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
            return None;
        }
        if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 || year < 1970 {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + s;
        Some(Self::from_unix_seconds(secs))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

// Howard Hinnant's algorithms for the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_reads_back_what_the_vault_writes() {
        let t = Timestamp::from_millis(1_764_547_200_000);
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        assert_eq!(
            Timestamp::parse_rfc3339("2025-12-01T00:00:00.250Z"),
            Some(t)
        );
        for bad in [
            "2025-12-01",
            "2025-13-01T00:00:00Z",
            "2025-12-01T00:00:00+01:00",
            "",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(
            Timestamp::from_millis(0).to_rfc3339(),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            Timestamp::from_unix_seconds(1_796_083_200).to_rfc3339(),
            "2026-12-01T00:00:00Z"
        );
        assert_eq!(
            Timestamp::from_millis(951_782_400_999).to_rfc3339(),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn formats_rfc3339_with_millis() {
        assert_eq!(
            Timestamp::from_millis(1_796_083_200_042).to_rfc3339_millis(),
            "2026-12-01T00:00:00.042Z"
        );
    }

    #[test]
    fn reads_and_writes_utc_days() {
        let t = Timestamp::parse_utc_day("2024-02-29").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-02-29T00:00:00Z");
        assert_eq!(t.plus_millis(86_399_999).utc_day(), "2024-02-29");
        assert_eq!(t.plus_millis(86_400_000).utc_day(), "2024-03-01");
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-04-31",
            "2024-4-01",
            "24-04-01",
            "2024-04-01T00:00:00Z",
            "２０２４-04-01",
            "1969-12-31",
            "+024-04-01",
            "",
        ] {
            assert_eq!(Timestamp::parse_utc_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_imf_fixdate() {
        let t = Timestamp::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.as_unix_seconds(), 784_111_777);
        assert_eq!(t.to_rfc3339(), "1994-11-06T08:49:37Z");
    }

    #[test]
    fn rejects_other_date_shapes() {
        for bad in [
            "",
            "120",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(Timestamp::parse_http_date(bad), None, "{bad}");
        }
    }
}
