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
