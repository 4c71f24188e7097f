//! A query for one page of the audit log, normalised to what Confluence is sent.

use std::fmt;

/// The unit of a time window, as Confluence names it in `units`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    /// `NANOS`.
    Nanos,
    /// `MICROS`.
    Micros,
    /// `MILLIS`.
    Millis,
    /// `SECONDS`.
    Seconds,
    /// `MINUTES`.
    Minutes,
    /// `HOURS`.
    Hours,
    /// `HALF_DAYS`.
    HalfDays,
    /// `DAYS`.
    Days,
    /// `WEEKS`.
    Weeks,
    /// `MONTHS`, the upstream default.
    Months,
    /// `YEARS`.
    Years,
    /// `DECADES`.
    Decades,
    /// `CENTURIES`.
    Centuries,
}

impl TimeUnit {
    /// Every unit, shortest first.
    pub const ALL: [TimeUnit; 13] = [
        Self::Nanos,
        Self::Micros,
        Self::Millis,
        Self::Seconds,
        Self::Minutes,
        Self::Hours,
        Self::HalfDays,
        Self::Days,
        Self::Weeks,
        Self::Months,
        Self::Years,
        Self::Decades,
        Self::Centuries,
    ];

    /// The name Confluence takes in the `units` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nanos => "NANOS",
            Self::Micros => "MICROS",
            Self::Millis => "MILLIS",
            Self::Seconds => "SECONDS",
            Self::Minutes => "MINUTES",
            Self::Hours => "HOURS",
            Self::HalfDays => "HALF_DAYS",
            Self::Days => "DAYS",
            Self::Weeks => "WEEKS",
            Self::Months => "MONTHS",
            Self::Years => "YEARS",
            Self::Decades => "DECADES",
            Self::Centuries => "CENTURIES",
        }
    }

    /// Parses a Confluence unit name, case-insensitively.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for TimeUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which records a page query reaches over: the two endpoints of Confluence's audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Span {
    /// `GET /rest/api/audit/since`: the last `number` `units` before Confluence's now.
    Since {
        /// How many `units` back the window reaches.
        number: i64,
        /// The unit of `number`.
        units: TimeUnit,
    },
    /// `GET /rest/api/audit`: records created from `from` to `to`, epoch milliseconds,
    /// both inclusive. A range that ended in the past lists the same records at the same
    /// offsets on every request (ties aside), unlike a window relative to now.
    Range {
        /// `startDate`, epoch ms.
        from: i64,
        /// `endDate`, epoch ms.
        to: i64,
    },
}

impl Span {
    /// Confluence's default window: the last 3 months.
    pub(crate) const DEFAULT: Span = Span::Since {
        number: PageQuery::DEFAULT_NUMBER,
        units: PageQuery::DEFAULT_UNITS,
    };
}

/// One page of the audit log, every parameter explicit (defaults already applied), so
/// equal queries are equal values: the page cache keys on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PageQuery {
    /// The endpoint and the time it covers.
    pub span: Span,
    /// Confluence's `searchString`; `None` when absent or empty.
    pub search_string: Option<String>,
    /// Offset of the first record, newest first.
    pub start: i32,
    /// Page size asked for.
    pub limit: i32,
}

impl PageQuery {
    /// Confluence's default `number`.
    pub(crate) const DEFAULT_NUMBER: i64 = 3;
    /// Confluence's default `units`.
    pub(crate) const DEFAULT_UNITS: TimeUnit = TimeUnit::Months;
    /// Confluence's default (and the gateway's maximum) `limit`.
    pub(crate) const DEFAULT_LIMIT: i32 = 1000;
    /// The largest `limit` the gateway accepts.
    pub(crate) const MAX_LIMIT: i32 = 1000;
    /// The longest `searchString` the gateway accepts, in characters.
    pub(crate) const MAX_SEARCH_CHARS: usize = 1000;

    /// The query parameters sent to Confluence, in a fixed order. Range ends go as epoch
    /// milliseconds, as Atlassian's own connectors send them (the API only says
    /// "timestamp"): this is the one place that conversion is made.
    pub(crate) fn to_params(&self) -> Vec<(&'static str, String)> {
        let mut params = match self.span {
            Span::Since { number, units } => vec![
                ("number", number.to_string()),
                ("units", units.as_str().to_owned()),
            ],
            Span::Range { from, to } => {
                vec![("startDate", from.to_string()), ("endDate", to.to_string())]
            }
        };
        if let Some(s) = &self.search_string {
            params.push(("searchString", s.clone()));
        }
        params.push(("start", self.start.to_string()));
        params.push(("limit", self.limit.to_string()));
        params
    }
}

/// Which of Confluence's audit APIs a site answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dialect {
    /// Cloud's `/rest/api/audit/since` and `/rest/api/audit` (epoch ms, `start`).
    Cloud,
    /// Data Center's `/rest/auditing/1.0/events` (ISO 8601 `from`/`to`, `offset`).
    DataCenter,
}

impl PageQuery {
    /// The query parameters of the Data Center events endpoint, at `now_ms` (a window
    /// reaches back from the gateway's now, as Cloud's reaches back from its own): `from`
    /// and `to` inclusive, as ISO 8601 UTC instants to the millisecond (its parser takes
    /// only `Z`); a window leaves `to` out, which Data Center reads as its now on each
    /// request, as Cloud's `/since` does.
    pub(crate) fn to_data_center_params(&self, now_ms: i64) -> Vec<(&'static str, String)> {
        let mut params = match self.span {
            Span::Since { number, units } => vec![(
                "from",
                iso_ms(super::retention::window_start_ms(number, units, now_ms).max(0)),
            )],
            Span::Range { from, to } => vec![("from", iso_ms(from)), ("to", iso_ms(to))],
        };
        if let Some(s) = &self.search_string {
            params.push(("search", s.clone()));
        }
        params.push(("offset", self.start.to_string()));
        params.push(("limit", self.limit.to_string()));
        params
    }
}

/// Epoch milliseconds as `2026-01-02T03:04:05.678Z`.
pub(crate) fn iso_ms(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, t) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = super::calendar::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

impl Default for PageQuery {
    fn default() -> Self {
        Self {
            span: Span::DEFAULT,
            search_string: None,
            start: 0,
            limit: Self::DEFAULT_LIMIT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_center_params_are_iso_instants_and_an_offset() {
        assert_eq!(iso_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_ms(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(iso_ms(-1), "1969-12-31T23:59:59.999Z");
        let range = PageQuery {
            span: Span::Range {
                from: 1_709_210_096_789,
                to: 1_709_210_100_000,
            },
            search_string: Some("space".into()),
            start: 40,
            limit: 20,
        };
        assert_eq!(
            range.to_data_center_params(0),
            [
                ("from", "2024-02-29T12:34:56.789Z".to_owned()),
                ("to", "2024-02-29T12:35:00.000Z".to_owned()),
                ("search", "space".to_owned()),
                ("offset", "40".to_owned()),
                ("limit", "20".to_owned()),
            ]
        );
        let window = PageQuery {
            span: Span::Since {
                number: 2,
                units: TimeUnit::Hours,
            },
            ..PageQuery::default()
        };
        let now = 1_709_210_096_789;
        assert_eq!(
            window.to_data_center_params(now)[0],
            ("from", iso_ms(now - 7_200_000))
        );
        assert!(
            window
                .to_data_center_params(now)
                .iter()
                .all(|(k, _)| *k != "to")
        );
    }

    #[test]
    fn unit_names_round_trip() {
        for u in TimeUnit::ALL {
            assert_eq!(TimeUnit::parse(u.as_str()), Some(u));
        }
        assert_eq!(TimeUnit::parse("half_days"), Some(TimeUnit::HalfDays));
        assert_eq!(TimeUnit::parse("MILLENNIA"), None);
    }

    #[test]
    fn defaults_are_confluences() {
        let params = PageQuery::default().to_params();
        assert_eq!(
            params,
            vec![
                ("number", "3".to_owned()),
                ("units", "MONTHS".to_owned()),
                ("start", "0".to_owned()),
                ("limit", "1000".to_owned())
            ]
        );
    }

    #[test]
    fn ranges_go_as_epoch_milliseconds() {
        let q = PageQuery {
            span: Span::Range {
                from: 1_700_000_000_000,
                to: 1_700_000_009_999,
            },
            search_string: Some("x".into()),
            start: 5,
            limit: 10,
        };
        assert_eq!(
            q.to_params(),
            vec![
                ("startDate", "1700000000000".to_owned()),
                ("endDate", "1700000009999".to_owned()),
                ("searchString", "x".to_owned()),
                ("start", "5".to_owned()),
                ("limit", "10".to_owned())
            ]
        );
    }
}
