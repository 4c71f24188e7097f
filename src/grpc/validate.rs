//! Request messages into domain queries; anything invalid is named by its field and
//! never reaches Confluence.

use crate::{
    audit::{
        PageQuery, TimeUnit,
        anchor::{Cursor, Window},
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
    let max_records = match req.max_records {
        Some(n) if n < 1 => {
            return Err(GatewayError::invalid(
                "max_records",
                format!("must be >= 1 when set, got {n}"),
            ));
        }
        n => n.map(|n| n as u64),
    };
    let cursor = if req.resume_token.is_empty() {
        Cursor::BEGIN
    } else {
        resume::decode(tokens, &window, &req.resume_token)
            .map_err(|e| GatewayError::invalid("resume_token", e.to_string()))?
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
        number: number(req.number)?,
        units: units(req.units)?,
        search_string: search_string(req.search_string.as_deref())?,
        start,
        limit,
    })
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
            (q.number, q.units, q.start, q.limit),
            (0, TimeUnit::Centuries, i32::MAX, 0)
        );
    }
}
