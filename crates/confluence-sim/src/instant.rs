//! ISO 8601 instants as Java's `DateTimeFormatter.ISO_INSTANT` prints and `Instant.parse`
//! reads them, for the Data Center dialect (its `timestamp`, `from` and `to`).

use super::http::civil;

/// `2024-01-31T12:34:56.789Z` for epoch milliseconds, the fraction left out when it is
/// `.000`: ISO_INSTANT prints 0, 3, 6 or 9 fraction digits, and a millisecond clock gives
/// only the first two.
pub(crate) fn iso_instant(epoch_ms: i64) -> String {
    let secs = epoch_ms.div_euclid(1000);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil(days);
    let fraction = match epoch_ms.rem_euclid(1000) {
        0 => String::new(),
        ms => format!(".{ms:03}"),
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
    )
}

/// Epoch milliseconds of `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` (UTC only: `Instant.parse` on
/// Java 8 and 11 refuses offsets), the fraction truncated to the millisecond as
/// `Instant.toEpochMilli` does. `None` for anything else, impossible dates included.
pub(crate) fn parse_instant(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z').or_else(|| text.strip_suffix('z'))?;
    let (date, time) = text.split_once(['T', 't'])?;
    let mut date_parts = date.split('-');
    let year = fixed_digits(date_parts.next()?, 4)?;
    let month = fixed_digits(date_parts.next()?, 2)?;
    let day = fixed_digits(date_parts.next()?, 2)?;
    if date_parts.next().is_some() || !(1..=12).contains(&month) {
        return None;
    }
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let mut clock_parts = clock.split(':');
    let hour = fixed_digits(clock_parts.next()?, 2)?;
    let minute = fixed_digits(clock_parts.next()?, 2)?;
    let second = fixed_digits(clock_parts.next()?, 2)?;
    if clock_parts.next().is_some() || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let millis = match fraction {
        None => 0,
        Some(digits) if (1..=9).contains(&digits.len()) => {
            let head = &digits[..digits.len().min(3)];
            let value = fixed_digits(head, head.len())?;
            // Whatever follows the milliseconds must still be digits.
            fixed_digits(digits, digits.len())?;
            value * 10_i64.pow(3 - u32::try_from(head.len()).ok()?)
        }
        Some(_) => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    secs.checked_mul(1000)?.checked_add(millis)
}

/// A number of exactly `len` ASCII digits.
fn fixed_digits(text: &str, len: usize) -> Option<i64> {
    (text.len() == len && text.bytes().all(|byte| byte.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (days-from-civil, H. Hinnant): the inverse of
/// [`civil`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_print_as_iso_instant_does() {
        assert_eq!(iso_instant(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_instant(1_637_628_276_398), "2021-11-23T00:44:36.398Z");
        assert_eq!(iso_instant(1_637_628_276_000), "2021-11-23T00:44:36Z");
        assert_eq!(iso_instant(1_637_628_276_050), "2021-11-23T00:44:36.050Z");
    }

    #[test]
    fn instants_parse_back_and_reject_what_instant_parse_rejects() {
        for ms in [0, 1_637_628_276_398, 1_637_628_276_000, 951_782_400_123] {
            assert_eq!(parse_instant(&iso_instant(ms)), Some(ms), "{ms}");
        }
        assert_eq!(
            parse_instant("2019-11-01T01:00:00.000Z"),
            Some(1_572_570_000_000)
        );
        assert_eq!(
            parse_instant("2019-11-01T01:00:00.1Z"),
            Some(1_572_570_000_100)
        );
        // Nanoseconds truncate to the millisecond.
        assert_eq!(
            parse_instant("2019-11-01T01:00:00.123999999Z"),
            Some(1_572_570_000_123)
        );
        assert_eq!(parse_instant("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        for bad in [
            "",
            "2019-11-01",
            "2019-11-01T01:00Z",
            "2019-11-01T01:00:00",
            "2019-11-01T01:00:00+01:00",
            "2019-11-01T01:00:00.Z",
            "2019-11-01T01:00:00.1234567890Z",
            "2019-13-01T01:00:00Z",
            "2019-02-29T01:00:00Z",
            "2019-11-01T24:00:00Z",
            "1572570000000",
            "2019-11-01T01:00:00.12aZ",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad:?}");
        }
    }
}
