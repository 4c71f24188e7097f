//! The query parameters of `GET /rest/api/audit/since` and `GET /rest/api/audit`, validated as
//! Confluence does.

/// The 13 units Confluence accepts here (java.time.ChronoUnit names), with their length in
/// nanoseconds. Calendar units are approximated: a month is 30 days, a year 365 days.
const UNITS: [(&str, i128); 13] = [
    ("NANOS", 1),
    ("MICROS", 1_000),
    ("MILLIS", 1_000_000),
    ("SECONDS", SECOND),
    ("MINUTES", 60 * SECOND),
    ("HOURS", 3_600 * SECOND),
    ("HALF_DAYS", 12 * 3_600 * SECOND),
    ("DAYS", DAY),
    ("WEEKS", 7 * DAY),
    ("MONTHS", 30 * DAY),
    ("YEARS", 365 * DAY),
    ("DECADES", 3_650 * DAY),
    ("CENTURIES", 36_500 * DAY),
];
const SECOND: i128 = 1_000_000_000;
const DAY: i128 = 86_400 * SECOND;

/// Which creation dates a request asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum Span {
    /// `/audit/since`: `number` units back from now.
    Since {
        number: i64,
        /// Length of one unit in nanoseconds.
        unit_nanos: i128,
    },
    /// `/audit`: epoch milliseconds, both ends inclusive, either open.
    Range {
        start_ms: Option<i64>,
        end_ms: Option<i64>,
    },
}

/// A validated request.
#[derive(Debug, PartialEq)]
pub(crate) struct AuditQuery {
    pub(crate) span: Span,
    /// Lower-cased search string; `None` when absent or empty.
    pub(crate) search_lower: Option<String>,
    pub(crate) start: u32,
    pub(crate) limit: u32,
}

impl AuditQuery {
    /// Validates the decoded query pairs of an `/audit/since` request (`range` false) or an
    /// `/audit` one (`range` true); the first occurrence of a repeated key wins. Each
    /// endpoint ignores the other's parameters, as unknown ones are. The error is the message
    /// of the 400 answer.
    pub(crate) fn parse(pairs: &[(String, String)], range: bool) -> Result<AuditQuery, String> {
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value.as_str())
        };
        let span = if range {
            Span::Range {
                start_ms: get("startDate").map_or(Ok(None), |v| parse_epoch_ms("startDate", v))?,
                end_ms: get("endDate").map_or(Ok(None), |v| parse_epoch_ms("endDate", v))?,
            }
        } else {
            Span::Since {
                number: get("number").map_or(Ok(3), |v| parse_int("number", v))?,
                unit_nanos: get("units").map_or(Ok(30 * DAY), parse_units)?,
            }
        };
        Ok(AuditQuery {
            span,
            search_lower: get("searchString")
                .filter(|s| !s.is_empty())
                .map(str::to_lowercase),
            start: get("start").map_or(Ok(0), |v| parse_non_negative("start", v))?,
            limit: get("limit").map_or(Ok(1000), |v| parse_non_negative("limit", v))?,
        })
    }

    /// The oldest creation date (epoch ms) inside a `/since` window ending at `now_ms`, or
    /// `None` when the window is empty (`number <= 0`).
    pub(crate) fn cutoff_ms(number: i64, unit_nanos: i128, now_ms: i64) -> Option<i64> {
        if number <= 0 {
            return None;
        }
        // i128 holds i64::MAX centuries in nanoseconds: no overflow whatever the caller asks.
        let cutoff_ns = i128::from(now_ms) * 1_000_000 - i128::from(number) * unit_nanos;
        // Round up: a record dated at millisecond m is inside when m * 10^6 >= cutoff_ns.
        let cutoff_ms =
            cutoff_ns.div_euclid(1_000_000) + i128::from(cutoff_ns.rem_euclid(1_000_000) != 0);
        Some(i64::try_from(cutoff_ms).unwrap_or(i64::MIN))
    }
}

fn parse_units(units: &str) -> Result<i128, String> {
    let known = UNITS.iter().find(|(name, _)| *name == units);
    known.map(|&(_, nanos)| nanos).ok_or_else(|| {
        let names: Vec<&str> = UNITS.iter().map(|(name, _)| *name).collect();
        format!(
            "Invalid value {units:?} for parameter 'units': expected one of {}",
            names.join(", ")
        )
    })
}

fn parse_int<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("Invalid value {value:?} for parameter '{name}': expected an integer"))
}

/// A timestamp in epoch milliseconds: digits only (an empty value counts as absent).
fn parse_epoch_ms(name: &str, value: &str) -> Result<Option<i64>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let digits = value.bytes().all(|byte| byte.is_ascii_digit());
    let ms = digits.then(|| value.parse::<i64>().ok()).flatten();
    ms.map(Some).ok_or_else(|| {
        format!("Invalid value {value:?} for parameter '{name}': expected a timestamp in epoch milliseconds")
    })
}

fn parse_non_negative(name: &str, value: &str) -> Result<u32, String> {
    let n: i32 = parse_int(name, value)?;
    u32::try_from(n)
        .map_err(|_| format!("Invalid value {value:?} for parameter '{name}': must be >= 0"))
}
