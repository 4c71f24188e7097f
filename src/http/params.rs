//! The query strings of the HTTP/JSON routes, as the gRPC requests they stand for.
//! Parameter names are Confluence's own where it has one (`number`, `units`,
//! `searchString`, `start`, `limit`), the proto fields' JSON names otherwise
//! (`pageSize`, `maxRecords`, `resumeToken`, `pollInterval`, `lag`, `since`, `until`,
//! `checkpoint`). A parameter the route does not take, or a value of the wrong type, is
//! refused naming it; the gRPC edge then validates the request as for any caller.

use std::{collections::HashMap, time::Duration};

use crate::pb;

/// A query parameter that cannot be taken, and why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadParam {
    /// The parameter.
    pub name: String,
    /// Why.
    pub why: String,
}

impl BadParam {
    fn new(name: &str, why: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            why: why.into(),
        }
    }
}

/// A route's parameters, each taken once.
struct Params(HashMap<String, String>);

impl Params {
    /// Parses `query`; a parameter not in `known`, or given twice, is refused.
    fn parse(query: Option<&str>, known: &[&str]) -> Result<Self, BadParam> {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !known.contains(&k.as_ref()) {
                return Err(BadParam::new(
                    &k,
                    format!(
                        "is not a parameter of this route (it takes {})",
                        known.join(", ")
                    ),
                ));
            }
            if map.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(BadParam::new(&k, "is given twice"));
            }
        }
        Ok(Self(map))
    }

    fn text(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    fn int<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>, BadParam> {
        self.0
            .remove(name)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| BadParam::new(name, format!("'{v}' is not an integer in range")))
            })
            .transpose()
    }

    fn units(&mut self) -> Result<i32, BadParam> {
        let Some(v) = self.0.remove("units") else {
            return Ok(pb::TimeUnit::Unspecified as i32);
        };
        let name = format!("TIME_UNIT_{}", v.trim().to_ascii_uppercase());
        pb::TimeUnit::from_str_name(&name)
            .map(|u| u as i32)
            .ok_or_else(|| BadParam::new("units", format!("'{v}' is not a unit (DAYS, HOURS, …)")))
    }

    fn time(&mut self, name: &str) -> Result<Option<prost_types::Timestamp>, BadParam> {
        self.0
            .remove(name)
            .map(|v| {
                v.trim().parse().map_err(|_| {
                    BadParam::new(
                        name,
                        format!("'{v}' is not an RFC 3339 time (2026-01-02T03:04:05Z)"),
                    )
                })
            })
            .transpose()
    }

    fn duration(&mut self, name: &str) -> Result<Option<prost_types::Duration>, BadParam> {
        self.0
            .remove(name)
            .map(|v| {
                duration(&v).ok_or_else(|| {
                    BadParam::new(name, format!("'{v}' is not a duration (10s, 500ms, 2m)"))
                })
            })
            .transpose()
    }
}

/// `10`, `10s`, `500ms`, `2m` or `1h` as a protobuf `Duration`; negative is left to the
/// gRPC edge to refuse.
fn duration(v: &str) -> Option<prost_types::Duration> {
    let v = v.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.' && c != '-')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    let d = Duration::try_from_secs_f64(secs.abs()).ok()?;
    let sign = if secs < 0.0 { -1 } else { 1 };
    Some(prost_types::Duration {
        seconds: sign * i64::try_from(d.as_secs()).ok()?,
        nanos: sign as i32 * d.subsec_nanos() as i32,
    })
}

/// `GET /v1/audit/since`.
pub(crate) fn get_since(query: Option<&str>) -> Result<pb::GetSinceRequest, BadParam> {
    let mut p = Params::parse(
        query,
        &["number", "units", "searchString", "start", "limit"],
    )?;
    Ok(pb::GetSinceRequest {
        number: p.int("number")?,
        units: p.units()?,
        search_string: p.text("searchString"),
        start: p.int("start")?,
        limit: p.int("limit")?,
    })
}

/// `GET /v1/audit/stream`.
pub(crate) fn stream_since(query: Option<&str>) -> Result<pb::StreamSinceRequest, BadParam> {
    let mut p = Params::parse(
        query,
        &[
            "number",
            "units",
            "searchString",
            "pageSize",
            "maxRecords",
            "resumeToken",
        ],
    )?;
    Ok(pb::StreamSinceRequest {
        number: p.int("number")?,
        units: p.units()?,
        search_string: p.text("searchString"),
        page_size: p.int("pageSize")?,
        max_records: p.int("maxRecords")?,
        resume_token: p.text("resumeToken").unwrap_or_default(),
    })
}

/// `GET /v1/audit/follow`.
pub(crate) fn follow(query: Option<&str>) -> Result<pb::FollowRequest, BadParam> {
    let mut p = Params::parse(
        query,
        &[
            "searchString",
            "since",
            "checkpoint",
            "pollInterval",
            "lag",
            "maxRecords",
            "until",
        ],
    )?;
    let from = match (p.text("checkpoint"), p.time("since")?) {
        (Some(_), Some(_)) => {
            return Err(BadParam::new(
                "since",
                "goes without checkpoint (one or the other)",
            ));
        }
        (Some(c), None) => Some(pb::follow_request::From::Checkpoint(c)),
        (None, Some(t)) => Some(pb::follow_request::From::Since(t)),
        (None, None) => None,
    };
    Ok(pb::FollowRequest {
        search_string: p.text("searchString"),
        from,
        poll_interval: p.duration("pollInterval")?,
        max_records: p.int("maxRecords")?,
        lag: p.duration("lag")?,
        until: p.time("until")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_become_the_requests_they_name() {
        let r = get_since(Some("number=2&units=days&searchString=space%20x&limit=5")).expect("ok");
        assert_eq!(r.number, Some(2));
        assert_eq!(r.units, pb::TimeUnit::Days as i32);
        assert_eq!(r.search_string.as_deref(), Some("space x"));
        assert_eq!((r.start, r.limit), (None, Some(5)));
        let f = follow(Some("since=2026-01-02T03:04:05Z&pollInterval=2s&lag=500ms")).expect("ok");
        assert!(
            matches!(f.from, Some(pb::follow_request::From::Since(t)) if t.seconds == 1_767_323_045)
        );
        assert_eq!(f.poll_interval.map(|d| d.seconds), Some(2));
        assert_eq!(f.lag.map(|d| (d.seconds, d.nanos)), Some((0, 500_000_000)));
        let s = stream_since(None).expect("no parameters");
        assert_eq!(s, pb::StreamSinceRequest::default());
    }

    #[test]
    fn bad_parameters_are_named() {
        let name = |r: Result<(), BadParam>| r.err().map(|e| e.name);
        assert_eq!(
            name(get_since(Some("number=x")).map(drop)),
            Some("number".into())
        );
        assert_eq!(
            name(get_since(Some("units=fortnights")).map(drop)),
            Some("units".into())
        );
        assert_eq!(
            name(get_since(Some("pageSize=3")).map(drop)),
            Some("pageSize".into())
        );
        assert_eq!(
            name(get_since(Some("limit=1&limit=2")).map(drop)),
            Some("limit".into())
        );
        assert_eq!(
            name(follow(Some("since=yesterday")).map(drop)),
            Some("since".into())
        );
        assert_eq!(name(follow(Some("lag=soon")).map(drop)), Some("lag".into()));
        assert_eq!(
            name(follow(Some("since=2026-01-01T00:00:00Z&checkpoint=x")).map(drop)),
            Some("since".into())
        );
    }
}
