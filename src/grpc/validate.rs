//! Request messages into domain queries; anything invalid is named by its field and
//! never reaches Confluence.

use std::time::Duration;

use crate::{
    audit::{
        PageQuery, Span, TimeUnit,
        anchor::{Cursor, Window},
        checkpoint,
        follow::Checkpoint,
        resume::{self, TokenKey},
    },
    error::GatewayError,
    pb::{self, convert::time_unit},
};

/// A `StreamSinceRequest`, validated: the window, page size, record cap and where to
/// begin.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StreamParams {
    /// The window's filters.
    pub(crate) window: Window,
    /// Records per page, 1..=1000.
    pub(crate) page_size: i32,
    /// Stop after this many records.
    pub(crate) max_records: Option<u64>,
    /// Where to begin.
    pub(crate) cursor: Cursor,
}

/// Validates a `StreamSinceRequest`.
pub(crate) fn stream_params(
    req: &pb::StreamSinceRequest,
    tokens: &TokenKey,
) -> Result<StreamParams, GatewayError> {
    let window = Window {
        number: number(req.number)?,
        units: units(req.units)?,
        search_string: search_string(req.search_string.as_deref())?,
    };
    let page_size = req.page_size.unwrap_or(PageQuery::MAX_LIMIT);
    if !(1..=PageQuery::MAX_LIMIT).contains(&page_size) {
        return Err(GatewayError::invalid(
            "page_size",
            format!(
                "must be between 1 and {}, got {page_size}",
                PageQuery::MAX_LIMIT
            ),
        ));
    }
    let max_records = max_records(req.max_records)?;
    let cursor = if req.resume_token.is_empty() {
        Cursor::BEGIN
    } else {
        resume::decode(tokens, &window, &req.resume_token)
            .map_err(|e| GatewayError::invalid_token("resume_token", &e))?
    };
    Ok(StreamParams {
        window,
        page_size,
        max_records,
        cursor,
    })
}

/// A `GetSinceRequest` as the page query sent upstream.
pub(crate) fn page_query(req: &pb::GetSinceRequest) -> Result<PageQuery, GatewayError> {
    let limit = req.limit.unwrap_or(PageQuery::DEFAULT_LIMIT);
    if !(0..=PageQuery::MAX_LIMIT).contains(&limit) {
        return Err(GatewayError::invalid(
            "limit",
            format!(
                "must be between 0 and {}, got {limit}",
                PageQuery::MAX_LIMIT
            ),
        ));
    }
    let start = req.start.unwrap_or(0);
    if start < 0 {
        return Err(GatewayError::invalid(
            "start",
            format!("must be >= 0, got {start}"),
        ));
    }
    Ok(PageQuery {
        span: Span::Since {
            number: number(req.number)?,
            units: units(req.units)?,
        },
        search_string: search_string(req.search_string.as_deref())?,
        start,
        limit,
    })
}

/// `max_records`: absent means no limit; when set, at least 1.
fn max_records(n: Option<i64>) -> Result<Option<u64>, GatewayError> {
    match n {
        Some(n) if n < 1 => Err(GatewayError::invalid(
            "max_records",
            format!("must be >= 1 when set, got {n}"),
        )),
        n => Ok(n.map(|n| n as u64)),
    }
}

/// `number`: absent means 3; negative is invalid.
pub(crate) fn number(n: Option<i64>) -> Result<i64, GatewayError> {
    match n {
        None => Ok(PageQuery::DEFAULT_NUMBER),
        Some(n) if n < 0 => Err(GatewayError::invalid(
            "number",
            format!("must be >= 0, got {n}"),
        )),
        Some(n) => Ok(n),
    }
}

/// `units`: unspecified means MONTHS; a value outside the enum is invalid.
pub(crate) fn units(raw: i32) -> Result<TimeUnit, GatewayError> {
    if raw == pb::TimeUnit::Unspecified as i32 {
        return Ok(PageQuery::DEFAULT_UNITS);
    }
    time_unit(raw)
        .ok_or_else(|| GatewayError::invalid("units", format!("{raw} is not a TimeUnit value")))
}

/// `search_string`: at most 1000 characters, no control characters; empty means none.
pub(crate) fn search_string(s: Option<&str>) -> Result<Option<String>, GatewayError> {
    let Some(s) = s.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let chars = s.chars().count();
    if chars > PageQuery::MAX_SEARCH_CHARS {
        return Err(GatewayError::invalid(
            "search_string",
            format!(
                "must be at most {} characters, got {chars}",
                PageQuery::MAX_SEARCH_CHARS
            ),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(GatewayError::invalid(
            "search_string",
            "must not contain control characters",
        ));
    }
    Ok(Some(s.to_owned()))
}

/// Longest `search` Data Center's auditing API takes, in characters (its validator
/// refuses more with 400).
const MAX_DATA_CENTER_SEARCH_CHARS: usize = 100;

/// Checks what only Data Center limits: its `search` is at most 100 characters.
pub(crate) fn data_center_search(s: Option<&str>) -> Result<(), GatewayError> {
    let chars = s.map_or(0, |s| s.chars().count());
    if chars > MAX_DATA_CENTER_SEARCH_CHARS {
        return Err(GatewayError::invalid(
            "search_string",
            format!(
                "must be at most {MAX_DATA_CENTER_SEARCH_CHARS} characters for Confluence Data \
                 Center, got {chars}"
            ),
        ));
    }
    Ok(())
}

/// A `FollowRequest`, checked.
#[derive(Debug)]
pub(crate) struct FollowParams {
    /// Confluence's `searchString`.
    pub(crate) search_string: Option<String>,
    /// Where to begin.
    pub(crate) checkpoint: Checkpoint,
    /// How often the head is read.
    pub(crate) poll: Duration,
    /// How late a record may become visible upstream.
    pub(crate) lag: Duration,
    /// End after this many records.
    pub(crate) max_records: Option<u64>,
    /// End once every record dated before this millisecond (epoch ms) was delivered.
    pub(crate) until: Option<i64>,
}

/// Shortest `poll_interval`: Confluence's rate limits are per credential, shared by all.
const MIN_POLL: Duration = Duration::from_secs(1);
/// Longest `poll_interval` accepted.
const MAX_POLL: Duration = Duration::from_secs(3600);
/// Longest `lag` accepted.
const MAX_LAG: Duration = Duration::from_secs(24 * 3600);
/// Earliest `since`: 0001-01-01T00:00:00Z, the start of `google.protobuf.Timestamp`'s
/// documented range. Bounding it keeps every date a follower computes from it (grid
/// lines, range widths in `src/audit/follow.rs`) far from overflowing an i64 of ms.
const MIN_SINCE_SECONDS: i64 = -62_135_596_800;
/// Latest `since`: 9999-12-31T23:59:59.999999999Z, the end of that range.
const MAX_SINCE_SECONDS: i64 = 253_402_300_799;
const DEFAULT_POLL: Duration = Duration::from_secs(10);
const DEFAULT_LAG: Duration = Duration::from_secs(10);

/// Validates a `FollowRequest` received at `received_ms` (epoch ms: "from now").
pub(crate) fn follow_params(
    req: &pb::FollowRequest,
    tokens: &TokenKey,
    received_ms: i64,
) -> Result<FollowParams, GatewayError> {
    let search_string = search_string(req.search_string.as_deref())?;
    let checkpoint = match &req.from {
        Some(pb::follow_request::From::Checkpoint(t)) => {
            let cp = checkpoint::decode(tokens, search_string.as_deref(), t)
                .map_err(|e| GatewayError::invalid_token("checkpoint", &e))?;
            // Signed, so written by a gateway; but one that took a `since` before it was
            // bounded could have written any date.
            if !since_range_ms().contains(&cp.next) {
                return Err(GatewayError::invalid(
                    "checkpoint",
                    "stands outside the years 0001 to 9999; follow again with since",
                ));
            }
            cp
        }
        // Confluence's audit API takes no date before 1970 (`startDate` is digits only,
        // as confluence-sim's `parse_epoch_ms` models it), and its log holds none: an
        // earlier instant starts at the epoch rather than failing upstream on every tick.
        Some(pb::follow_request::From::Since(ts)) => Checkpoint::at(since_ms("since", ts)?.max(0)),
        None => Checkpoint::at(received_ms),
    };
    // Rounded up as `since` is, so that one range's `until` is the next one's `since`
    // and a record dated the millisecond both fall inside belongs to exactly one.
    let until = req
        .until
        .as_ref()
        .map(|ts| since_ms("until", ts))
        .transpose()?;
    // A checkpoint at or past `until` is a finished export resumed: it ends at once.
    let resumed = matches!(req.from, Some(pb::follow_request::From::Checkpoint(_)));
    if let Some(until) = until
        && !resumed
        && until <= checkpoint.next
    {
        return Err(GatewayError::invalid(
            "until",
            "must be after the start (since, or the instant the call was received)",
        ));
    }
    let poll = duration("poll_interval", req.poll_interval.as_ref(), DEFAULT_POLL)?;
    if !(MIN_POLL..=MAX_POLL).contains(&poll) {
        return Err(GatewayError::invalid(
            "poll_interval",
            format!("must be between {MIN_POLL:?} and {MAX_POLL:?}, got {poll:?}"),
        ));
    }
    let lag = duration("lag", req.lag.as_ref(), DEFAULT_LAG)?;
    if lag > MAX_LAG {
        return Err(GatewayError::invalid(
            "lag",
            format!("must be at most {MAX_LAG:?}, got {lag:?}"),
        ));
    }
    let max_records = max_records(req.max_records)?;
    Ok(FollowParams {
        search_string,
        checkpoint,
        poll,
        lag,
        max_records,
        until,
    })
}

/// The epoch milliseconds a `since` may become, and a checkpoint may stand at (one past
/// the latest `since`, rounded up).
fn since_range_ms() -> std::ops::RangeInclusive<i64> {
    MIN_SINCE_SECONDS * 1000..=(MAX_SINCE_SECONDS + 1) * 1000
}

/// A `Timestamp` (the request's `field`) as epoch milliseconds, rounded up: a record
/// dated the millisecond the instant falls inside was created before it.
fn since_ms(field: &'static str, ts: &prost_types::Timestamp) -> Result<i64, GatewayError> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(GatewayError::invalid(
            field,
            format!("nanos must be between 0 and 999999999, got {}", ts.nanos),
        ));
    }
    if !(MIN_SINCE_SECONDS..=MAX_SINCE_SECONDS).contains(&ts.seconds) {
        return Err(GatewayError::invalid(
            field,
            format!(
                "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z \
                 (seconds {MIN_SINCE_SECONDS} to {MAX_SINCE_SECONDS}), got seconds {}",
                ts.seconds
            ),
        ));
    }
    // Within those years neither step can overflow.
    Ok(ts.seconds * 1000 + i64::from((ts.nanos + 999_999) / 1_000_000))
}

/// A non-negative `Duration`, or `default` when absent. Seconds and nanos must both be
/// non-negative (protobuf requires their signs to agree) and nanos below a second, so
/// the conversion cannot overflow; callers bound the result.
fn duration(
    field: &'static str,
    d: Option<&prost_types::Duration>,
    default: Duration,
) -> Result<Duration, GatewayError> {
    let Some(d) = d else {
        return Ok(default);
    };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(GatewayError::invalid(
            field,
            format!(
                "must be a non-negative duration, got {}s {}ns",
                d.seconds, d.nanos
            ),
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<PageQuery, GatewayError>) -> &'static str {
        match r {
            Err(GatewayError::InvalidArgument { field, .. }) => field,
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn absent_fields_take_confluences_defaults() {
        let q = page_query(&pb::GetSinceRequest::default()).expect("valid");
        assert_eq!(q, PageQuery::default());
    }

    #[test]
    fn each_invalid_field_is_named() {
        let base = pb::GetSinceRequest::default;
        let cases = [
            (
                pb::GetSinceRequest {
                    number: Some(-1),
                    ..base()
                },
                "number",
            ),
            (
                pb::GetSinceRequest {
                    units: 14,
                    ..base()
                },
                "units",
            ),
            (
                pb::GetSinceRequest {
                    units: -3,
                    ..base()
                },
                "units",
            ),
            (
                pb::GetSinceRequest {
                    start: Some(-1),
                    ..base()
                },
                "start",
            ),
            (
                pb::GetSinceRequest {
                    limit: Some(-1),
                    ..base()
                },
                "limit",
            ),
            (
                pb::GetSinceRequest {
                    limit: Some(1001),
                    ..base()
                },
                "limit",
            ),
            (
                pb::GetSinceRequest {
                    search_string: Some("x".repeat(1001)),
                    ..base()
                },
                "search_string",
            ),
            (
                pb::GetSinceRequest {
                    search_string: Some("a\nb".into()),
                    ..base()
                },
                "search_string",
            ),
        ];
        for (req, field) in cases {
            assert_eq!(field_of(page_query(&req)), field, "{req:?}");
        }
    }

    #[test]
    fn stream_requests_are_checked() {
        let base = pb::StreamSinceRequest::default;
        let p = stream_params(&base(), &TokenKey::new(b"k")).expect("defaults");
        assert_eq!(
            (p.page_size, p.max_records, p.cursor),
            (1000, None, Cursor::BEGIN)
        );
        let field = |r: pb::StreamSinceRequest| match stream_params(&r, &TokenKey::new(b"k")) {
            Err(GatewayError::InvalidArgument { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert_eq!(
            field(pb::StreamSinceRequest {
                page_size: Some(0),
                ..base()
            }),
            "page_size"
        );
        assert_eq!(
            field(pb::StreamSinceRequest {
                page_size: Some(1001),
                ..base()
            }),
            "page_size"
        );
        assert_eq!(
            field(pb::StreamSinceRequest {
                max_records: Some(0),
                ..base()
            }),
            "max_records"
        );
        assert_eq!(
            field(pb::StreamSinceRequest {
                number: Some(-2),
                ..base()
            }),
            "number"
        );
        assert_eq!(
            field(pb::StreamSinceRequest {
                resume_token: "nope".into(),
                ..base()
            }),
            "resume_token"
        );
    }

    #[test]
    fn edge_values_are_accepted() {
        let req = pb::GetSinceRequest {
            number: Some(0),
            units: pb::TimeUnit::Centuries as i32,
            search_string: Some("é".repeat(1000)),
            start: Some(i32::MAX),
            limit: Some(0),
        };
        let q = page_query(&req).expect("valid");
        assert_eq!(
            (q.span, q.start, q.limit),
            (
                Span::Since {
                    number: 0,
                    units: TimeUnit::Centuries
                },
                i32::MAX,
                0
            )
        );
    }

    fn follow_field(req: &pb::FollowRequest) -> Result<FollowParams, &'static str> {
        follow_params(req, &TokenKey::new(b"k"), 1_700_000_000_000).map_err(|e| match e {
            GatewayError::InvalidArgument { field, .. } => field,
            other => panic!("expected an invalid argument, got {other:?}"),
        })
    }

    fn ts(seconds: i64, nanos: i32) -> Option<pb::follow_request::From> {
        Some(pb::follow_request::From::Since(prost_types::Timestamp {
            seconds,
            nanos,
        }))
    }

    fn pd(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds, nanos })
    }

    #[test]
    fn follow_since_spans_the_years_a_timestamp_may_name() {
        let at = |from| {
            follow_field(&pb::FollowRequest {
                from,
                ..Default::default()
            })
        };
        // Before 1970: from the epoch, the earliest date Confluence takes.
        let first = at(ts(MIN_SINCE_SECONDS, 0)).expect("0001-01-01T00:00:00Z");
        assert_eq!(first.checkpoint.next, 0);
        let last = at(ts(MAX_SINCE_SECONDS, 999_999_999)).expect("9999-12-31T23:59:59.999999999Z");
        assert_eq!(last.checkpoint.next, 253_402_300_800_000);
        assert!(since_range_ms().contains(&last.checkpoint.next));
        // Rounded up to the millisecond.
        assert_eq!(at(ts(1, 1)).expect("valid").checkpoint.next, 1001);
        assert_eq!(at(ts(-1, 0)).expect("before 1970").checkpoint.next, 0);
        assert_eq!(at(ts(0, 0)).expect("the epoch").checkpoint.next, 0);
        for (seconds, nanos) in [
            (MIN_SINCE_SECONDS - 1, 999_999_999),
            (MAX_SINCE_SECONDS + 1, 0),
            (i64::MIN, 0),
            (i64::MAX, 999_999_999),
            (0, -1),
            (0, 1_000_000_000),
        ] {
            assert_eq!(
                at(ts(seconds, nanos)).err(),
                Some("since"),
                "{seconds}s {nanos}ns"
            );
        }
    }

    #[test]
    fn follow_durations_are_bounded_and_never_negative() {
        let with = |poll_interval, lag| {
            follow_field(&pb::FollowRequest {
                poll_interval,
                lag,
                ..Default::default()
            })
        };
        let d = with(None, None).expect("defaults");
        assert_eq!((d.poll, d.lag), (DEFAULT_POLL, DEFAULT_LAG));
        let edges = with(pd(3600, 0), pd(24 * 3600, 0)).expect("the largest");
        assert_eq!((edges.poll, edges.lag), (MAX_POLL, MAX_LAG));
        let small = with(pd(1, 0), pd(0, 0)).expect("the smallest");
        assert_eq!((small.poll, small.lag), (MIN_POLL, Duration::ZERO));
        for (poll, lag, field) in [
            (pd(0, 999_999_999), None, "poll_interval"),
            (pd(3600, 1), None, "poll_interval"),
            (pd(-1, 0), None, "poll_interval"),
            (pd(5, -1), None, "poll_interval"),
            (pd(i64::MAX, 999_999_999), None, "poll_interval"),
            (pd(i64::MIN, -999_999_999), None, "poll_interval"),
            (pd(5, 1_000_000_000), None, "poll_interval"),
            (None, pd(24 * 3600, 1), "lag"),
            (None, pd(-1, 0), "lag"),
            (None, pd(0, -1), "lag"),
            (None, pd(i64::MAX, 0), "lag"),
            (None, pd(i64::MIN, 0), "lag"),
        ] {
            assert_eq!(with(poll, lag).err(), Some(field), "{poll:?} {lag:?}");
        }
    }

    #[test]
    fn follow_checkpoints_outside_the_years_are_refused() {
        let key = TokenKey::new(b"k");
        let from = |next| {
            let token = checkpoint::encode(&key, None, &Checkpoint::at(next));
            follow_field(&pb::FollowRequest {
                from: Some(pb::follow_request::From::Checkpoint(token)),
                ..Default::default()
            })
        };
        assert!(from(*since_range_ms().start()).is_ok());
        assert!(from(*since_range_ms().end()).is_ok());
        for next in [
            i64::MIN,
            since_range_ms().start() - 1,
            since_range_ms().end() + 1,
            i64::MAX,
        ] {
            assert_eq!(from(next).err(), Some("checkpoint"), "{next}");
        }
    }
}
