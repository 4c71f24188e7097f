//! Atlassian's rate-limit headers, read so the gateway slows down before the 429:
//! `X-RateLimit-Remaining`, `X-RateLimit-Reset` (an ISO 8601 time), `X-RateLimit-NearLimit`,
//! and `Beta-Retry-After` (sent where `Retry-After` is not, while the limits are in beta).
//! Headers come from outside: a garbage or absent value is ignored, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::retry::parse_retry_after;

/// The longest slow-down a success near the limit starts: Confluence has not refused
/// anything yet, so a caller is held back at most this long (a reset further away is
/// Confluence's business to enforce with a 429).
pub(crate) const NEAR_LIMIT_MAX: Duration = Duration::from_secs(2);
/// The slow-down when a success near the limit names no usable reset time.
const NEAR_LIMIT_DEFAULT: Duration = Duration::from_secs(1);

/// The wait a refusal asks for: `Retry-After`, else `Beta-Retry-After`.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let parsed = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
    };
    parsed(RETRY_AFTER.as_str()).or_else(|| parsed("beta-retry-after"))
}

/// A header's value, trimmed, when it is text.
fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Whether an answer says the credential is near its limit
/// (`X-RateLimit-NearLimit: true`) or has none left (`X-RateLimit-Remaining: 0`):
/// adaptive pacing halves its requests in flight (`src/upstream/pacing.rs`).
pub(crate) fn near_limit(headers: &HeaderMap) -> bool {
    text(headers, "x-ratelimit-nearlimit").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || exhausted(headers)
}

/// `X-RateLimit-Remaining: 0`.
fn exhausted(headers: &HeaderMap) -> bool {
    text(headers, "x-ratelimit-remaining").and_then(|v| v.parse::<u64>().ok()) == Some(0)
}

/// The short cool-down a 200 answer calls for: when Confluence says the credential has
/// no budget left (`X-RateLimit-Remaining: 0`), until `X-RateLimit-Reset`, at most
/// [`NEAR_LIMIT_MAX`]. `None` when the answer says nothing of the kind, or its reset has
/// passed. (Near the limit with budget left, pacing slows down instead of stopping.)
pub(crate) fn slow_down(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| text(headers, name);
    if !exhausted(headers) {
        return None;
    }
    let wait = match text("x-ratelimit-reset").and_then(parse_iso8601) {
        Some(reset) => reset.duration_since(now).ok()?,
        None => NEAR_LIMIT_DEFAULT,
    };
    Some(wait.min(NEAR_LIMIT_MAX)).filter(|w| !w.is_zero())
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM|±HHMM)` as a time; anything else is `None`.
fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // 60: a leap second, read as the next second.
    if second > 60 {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0u32;
    if sep(at, b".,") {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let frac = &s[start..at];
        if frac.is_empty() {
            return None;
        }
        // Nanoseconds from the first nine digits, the rest ignored.
        let nine: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = nine.parse().ok()?;
    }
    let offset_secs = match &s[at..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && rest.as_bytes()[3] == b':' || rest.len() == 5 => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let r = rest.as_bytes();
            let two = |i: usize| -> Option<i64> {
                let p = r.get(i..i + 2)?;
                p.iter()
                    .all(u8::is_ascii_digit)
                    .then(|| i64::from(p[0] - b'0') * 10 + i64::from(p[1] - b'0'))
            };
            let (h, m) = (two(1)?, two(if r.len() == 6 { 4 } else { 3 })?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                *name,
                HeaderValue::from_bytes(value).expect("a header value"),
            );
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn iso_times_parse_with_fractions_and_offsets() {
        // 2024-01-31T12:34:56Z is 1706704496.
        assert_eq!(
            parse_iso8601("2024-01-31T12:34:56Z"),
            Some(at(1_706_704_496))
        );
        assert_eq!(
            parse_iso8601("2024-01-31T12:34:56.250Z"),
            Some(at(1_706_704_496) + Duration::from_millis(250))
        );
        assert_eq!(
            parse_iso8601("2024-01-31T14:34:56+02:00"),
            Some(at(1_706_704_496))
        );
        assert_eq!(
            parse_iso8601("2024-01-31T07:34:56-0500"),
            Some(at(1_706_704_496))
        );
        assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(parse_iso8601("2000-03-01T00:00:00Z"), Some(at(951_868_800)));
        for garbage in [
            "",
            "Z",
            "2024-01-31",
            "2024-01-31T12:34:56",
            "2024-13-31T12:34:56Z",
            "2024-01-31T24:00:00Z",
            "2024-01-31T12:34:56.Z",
            "2024-01-31T12:34:56+2:00",
            "2024-01-31T12:34:56+02:00junk",
            "1969-12-31T23:59:59Z",
            "+024-01-31T12:34:56Z",
            "2024-01-31T12:34:56.99999999999999999999999Z",
            "２０２４-01-31T12:34:56Z",
            "2024-01-31T12:34:5é",
        ] {
            // Never a panic; garbage is no time (the long fraction is a time, to the ns).
            let parsed = parse_iso8601(garbage);
            if !garbage.contains(".999") {
                assert_eq!(parsed, None, "{garbage:?}");
            }
        }
    }

    #[test]
    fn beta_retry_after_stands_in_for_a_missing_retry_after() {
        assert_eq!(
            retry_after(&headers(&[("beta-retry-after", b"5")])),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_after(&headers(&[
                ("retry-after", b"2"),
                ("beta-retry-after", b"5")
            ])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[
                ("retry-after", b"soon"),
                ("beta-retry-after", b"5")
            ])),
            Some(Duration::from_secs(5)),
            "an unusable Retry-After is as good as none"
        );
        assert_eq!(
            retry_after(&headers(&[("beta-retry-after", b"\xff")])),
            None
        );
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn no_budget_left_slows_down_until_the_reset_briefly() {
        let now = at(1_706_704_495);
        let reset = ("x-ratelimit-reset", b"2024-01-31T12:34:56Z".as_slice());
        let none_left = ("x-ratelimit-remaining", b"0".as_slice());
        assert_eq!(
            slow_down(&headers(&[none_left, reset]), now),
            Some(Duration::from_secs(1))
        );
        // A reset far away is capped; none (or garbage) is a default pause.
        assert_eq!(
            slow_down(&headers(&[none_left, reset]), at(1_706_704_000)),
            Some(NEAR_LIMIT_MAX)
        );
        assert_eq!(
            slow_down(&headers(&[none_left]), now),
            Some(NEAR_LIMIT_DEFAULT)
        );
        assert_eq!(
            slow_down(
                &headers(&[none_left, ("x-ratelimit-reset", b"tomorrow")]),
                now
            ),
            Some(NEAR_LIMIT_DEFAULT)
        );
        // A reset already past: the window is new, nothing to wait for.
        assert_eq!(
            slow_down(&headers(&[none_left, reset]), at(1_706_704_500)),
            None
        );
    }

    #[test]
    fn near_the_limit_with_budget_left_paces_without_a_pause() {
        let now = at(1_706_704_495);
        let reset = ("x-ratelimit-reset", b"2024-01-31T12:34:56Z".as_slice());
        let near = headers(&[
            ("x-ratelimit-nearlimit", b"true".as_slice()),
            ("x-ratelimit-remaining", b"1".as_slice()),
            reset,
        ]);
        assert!(near_limit(&near));
        assert_eq!(slow_down(&near, now), None);
        assert!(near_limit(&headers(&[(
            "x-ratelimit-nearlimit",
            b" TRUE ".as_slice()
        )])));
        assert!(near_limit(&headers(&[(
            "x-ratelimit-remaining",
            b"0".as_slice()
        )])));
    }

    #[test]
    fn other_answers_and_garbage_start_nothing() {
        let now = at(1_706_704_495);
        for pairs in [
            &[][..],
            &[("x-ratelimit-nearlimit", b"false".as_slice())][..],
            &[("x-ratelimit-remaining", b"7".as_slice())][..],
            &[("x-ratelimit-limit", b"0".as_slice())][..],
            &[("x-ratelimit-remaining", b"-1".as_slice())][..],
            &[("x-ratelimit-remaining", b"0x0".as_slice())][..],
            &[("x-ratelimit-remaining", b"\xff\xfe".as_slice())][..],
            &[("x-ratelimit-nearlimit", b"yes".as_slice())][..],
            &[("x-ratelimit-reset", b"2024-01-31T12:34:56Z".as_slice())][..],
        ] {
            let h = headers(pairs);
            assert_eq!(slow_down(&h, now), None, "{pairs:?}");
            assert!(!near_limit(&h), "{pairs:?}");
        }
    }
}
