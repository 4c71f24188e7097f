//! The query parameters of Data Center's `GET /rest/auditing/1.0/events`, validated as the
//! audit plugin's `AuditRestValidator` does: each parameter only when present, every
//! invalid one reported. The filters this simulator does not model (`userIds`,
//! `categories`, `actions`, `affectedObject`, `scanLimit`, `outputFormat`) are ignored.

use super::instant::parse_instant;

/// Largest `limit` the validator accepts (the plugin's CSV maximum).
const VALIDATOR_MAX_LIMIT: i64 = 100_000;
/// Longest `search` the validator accepts, in characters.
const MAX_SEARCH_CHARS: usize = 100;

/// A validated request.
#[derive(Debug, PartialEq)]
pub(crate) struct EventsQuery {
    /// Inclusive, epoch ms; absent is the epoch.
    pub(crate) from_ms: i64,
    /// Inclusive, epoch ms; absent is now at each request.
    pub(crate) to_ms: Option<i64>,
    pub(crate) offset: u32,
    /// `(epochMillis, id)`: list only events before it in (timestamp, id) order.
    pub(crate) cursor: Option<(i64, i64)>,
    /// 1..=100000; above the JSON maximum (10000) the search itself fails.
    pub(crate) limit: u32,
    /// Lower-cased `search` tokens, OR-ed; empty for no filter.
    pub(crate) search_tokens: Vec<String>,
}

/// One entry of the 400 body's `errors`.
#[derive(Debug, PartialEq)]
pub(crate) struct InvalidParam {
    pub(crate) key: &'static str,
    pub(crate) message: String,
}

impl EventsQuery {
    /// Validates decoded query pairs; the first occurrence of a repeated key wins, as with a
    /// JAX-RS `@QueryParam String`.
    pub(crate) fn parse(pairs: &[(String, String)]) -> Result<EventsQuery, Vec<InvalidParam>> {
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value.as_str())
        };
        let mut errors = Vec::new();
        let e = &mut errors;
        let from = get("from").map_or(Ok(Some(0)), instant);
        let from_ms = checked(e, "from", from).unwrap_or(0);
        let to_ms = checked(e, "to", get("to").map_or(Ok(None), instant));
        let max_offset = i64::from(i32::MAX);
        let offset = get("offset").map_or(Ok(0), |v| int_in("offset", v, 0, max_offset));
        let offset = checked(e, "offset", offset);
        let cursor = get("pageCursor").map_or(Ok(None), |v| cursor(v).map(Some));
        let cursor = checked(e, "pageCursor", cursor);
        let limit = get("limit").map_or(Ok(200), |v| int_in("limit", v, 1, VALIDATOR_MAX_LIMIT));
        let limit = checked(e, "limit", limit);
        let search = get("search").map_or(Ok(Vec::new()), search_tokens);
        let search = checked(e, "search", search);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(EventsQuery {
            from_ms,
            to_ms,
            offset,
            cursor,
            limit,
            search_tokens: search,
        })
    }
}

/// The value, or the type's default with the error noted under `key`.
fn checked<T: Default>(
    errors: &mut Vec<InvalidParam>,
    key: &'static str,
    result: Result<T, String>,
) -> T {
    result.unwrap_or_else(|message| {
        errors.push(InvalidParam { key, message });
        T::default()
    })
}

fn instant(value: &str) -> Result<Option<i64>, String> {
    parse_instant(value).map(Some).ok_or_else(|| {
        format!("Invalid date-time {value:?}: expected an ISO 8601 instant such as 2019-11-01T01:00:00.000Z")
    })
}

fn int_in(name: &str, value: &str, min: i64, max: i64) -> Result<u32, String> {
    let n: i64 = value
        .parse()
        .map_err(|_| format!("Invalid value {value:?} for {name}: expected an integer"))?;
    if !(min..=max).contains(&n) {
        return Err(format!(
            "Invalid value {n} for {name}: must be between {min} and {max}"
        ));
    }
    u32::try_from(n).map_err(|_| format!("Invalid value {n} for {name}"))
}

fn cursor(value: &str) -> Result<(i64, i64), String> {
    let invalid = || format!("Invalid page cursor {value:?}: expected <epochMillis>,<id>");
    let (ms, id) = value.split_once(',').ok_or_else(invalid)?;
    Ok((
        ms.parse().map_err(|_| invalid())?,
        id.parse().map_err(|_| invalid())?,
    ))
}

fn search_tokens(value: &str) -> Result<Vec<String>, String> {
    if value.chars().count() > MAX_SEARCH_CHARS {
        return Err(format!(
            "Search string must be at most {MAX_SEARCH_CHARS} characters"
        ));
    }
    Ok(value.split_whitespace().map(str::to_lowercase).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn defaults_and_values() {
        let defaults = EventsQuery::parse(&[]).unwrap();
        assert_eq!(
            defaults,
            EventsQuery {
                from_ms: 0,
                to_ms: None,
                offset: 0,
                cursor: None,
                limit: 200,
                search_tokens: Vec::new(),
            }
        );
        let query = EventsQuery::parse(&pairs(
            "from=1970-01-01T00:00:01Z&to=1970-01-01T00:00:02.5Z&offset=3\
             &pageCursor=1637628276398%2C179&limit=100000&search=R%26D+%20Ada",
        ))
        .unwrap();
        assert_eq!(
            query,
            EventsQuery {
                from_ms: 1000,
                to_ms: Some(2500),
                offset: 3,
                cursor: Some((1_637_628_276_398, 179)),
                limit: 100_000,
                search_tokens: vec!["r&d".to_owned(), "ada".to_owned()],
            }
        );
    }

    #[test]
    fn every_invalid_parameter_is_reported() {
        let long = "x".repeat(101);
        let errors = EventsQuery::parse(&pairs(&format!(
            "from=yesterday&to=2020-01-01T00:00:00%2B01:00&offset=-1&pageCursor=12\
             &limit=0&search={long}"
        )))
        .unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|error| error.key).collect();
        assert_eq!(
            keys,
            ["from", "to", "offset", "pageCursor", "limit", "search"]
        );
        for bad in [
            "limit=100001",
            "limit=x",
            "offset=2147483648",
            "pageCursor=1,x",
            "from=",
        ] {
            assert!(EventsQuery::parse(&pairs(bad)).is_err(), "{bad}");
        }
        assert!(EventsQuery::parse(&pairs(&format!("search={}", "é".repeat(100)))).is_ok());
    }
}
