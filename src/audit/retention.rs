//! How long Confluence keeps its audit log: `GET {base}/rest/api/audit/retention`
//! answers a `RetentionPeriod`, `{"number": 3, "units": "MONTHS"}`, whose units are Java
//! `ChronoUnit` names (those of a time window, plus MILLENNIA, ERAS and FOREVER).

use std::time::Duration;

use serde::Deserialize;

use super::TimeUnit;

/// The unit of a retention period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetentionUnit {
    /// A unit a time window may be given in too.
    Window(TimeUnit),
    /// `MILLENNIA`.
    Millennia,
    /// `ERAS` (a billion years).
    Eras,
    /// `FOREVER`: nothing is deleted.
    Forever,
}

impl RetentionUnit {
    /// Parses Confluence's name of the unit.
    fn parse(name: &str) -> Option<Self> {
        match name {
            "MILLENNIA" => Some(Self::Millennia),
            "ERAS" => Some(Self::Eras),
            "FOREVER" => Some(Self::Forever),
            other => TimeUnit::ALL
                .into_iter()
                .find(|u| u.as_str() == other)
                .map(Self::Window),
        }
    }

    #[cfg(test)]
    fn all_names() -> impl Iterator<Item = &'static str> {
        TimeUnit::ALL
            .into_iter()
            .map(Self::Window)
            .chain([Self::Millennia, Self::Eras, Self::Forever])
            .map(Self::name)
    }

    /// Confluence's name of the unit.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Window(unit) => unit.as_str(),
            Self::Millennia => "MILLENNIA",
            Self::Eras => "ERAS",
            Self::Forever => "FOREVER",
        }
    }

    /// The unit's length in nanoseconds as Java's `ChronoUnit` estimates it (a year is
    /// 365.2425 days, a month a twelfth of that); `None` for FOREVER.
    fn nanos(self) -> Option<u128> {
        const SECOND: u128 = 1_000_000_000;
        const YEAR: u128 = 31_556_952 * SECOND;
        Some(match self {
            Self::Window(unit) => match unit {
                TimeUnit::Nanos => 1,
                TimeUnit::Micros => 1_000,
                TimeUnit::Millis => 1_000_000,
                TimeUnit::Seconds => SECOND,
                TimeUnit::Minutes => 60 * SECOND,
                TimeUnit::Hours => 3_600 * SECOND,
                TimeUnit::HalfDays => 43_200 * SECOND,
                TimeUnit::Days => 86_400 * SECOND,
                TimeUnit::Weeks => 7 * 86_400 * SECOND,
                TimeUnit::Months => YEAR / 12,
                TimeUnit::Years => YEAR,
                TimeUnit::Decades => 10 * YEAR,
                TimeUnit::Centuries => 100 * YEAR,
            },
            Self::Millennia => 1_000 * YEAR,
            Self::Eras => 1_000_000_000 * YEAR,
            Self::Forever => return None,
        })
    }
}

/// Where a window of the last `number` `unit`s starts at `now_ms`, by `ChronoUnit`'s
/// estimated lengths (months and years vary by a day or so, which a warning can bear).
pub(crate) fn window_start_ms(number: i64, unit: TimeUnit, now_ms: i64) -> i64 {
    let nanos = RetentionUnit::Window(unit).nanos().unwrap_or(0);
    let back = (nanos / 1_000_000).saturating_mul(u128::from(number.unsigned_abs()));
    now_ms.saturating_sub(i64::try_from(back).unwrap_or(i64::MAX))
}

/// Confluence's retention period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Retention {
    /// How many units.
    pub number: i32,
    /// Which unit.
    pub unit: RetentionUnit,
}

/// A `RetentionPeriod` body as sent.
#[derive(Deserialize)]
struct Body<'a> {
    number: i32,
    units: &'a str,
}

impl Retention {
    /// Parses a 200 body; why not, when it is no `RetentionPeriod`.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, String> {
        let b: Body<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let unit = RetentionUnit::parse(b.units)
            .ok_or_else(|| format!("units {:?} is not a ChronoUnit name", b.units))?;
        if b.number < 0 {
            return Err(format!("number {} is negative", b.number));
        }
        Ok(Self {
            number: b.number,
            unit,
        })
    }

    /// The period as a duration; `None` for FOREVER or one too long for a `Duration`.
    pub(crate) fn period(&self) -> Option<Duration> {
        let nanos = self
            .unit
            .nanos()?
            .checked_mul(u128::from(self.number.unsigned_abs()))?;
        let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
        Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
    }

    /// The oldest creation date (epoch ms) still kept at `now_ms`; `None` when every
    /// record since 1970 is.
    pub(crate) fn oldest_kept(&self, now_ms: i64) -> Option<i64> {
        let ms = i64::try_from(self.period()?.as_millis()).ok()?;
        Some(now_ms.checked_sub(ms)?).filter(|&t| t > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_of_the_openapi_enum_parses_and_forever_has_no_end() {
        // The sixteen values of the OpenAPI description's `RetentionPeriod.units`.
        let names: Vec<_> = RetentionUnit::all_names().collect();
        assert_eq!(names.len(), 16);
        assert_eq!(names[..3], ["NANOS", "MICROS", "MILLIS"]);
        assert_eq!(names[13..], ["MILLENNIA", "ERAS", "FOREVER"]);
        for name in names {
            let body = format!(r#"{{"number": 2, "units": "{name}"}}"#);
            let r = Retention::parse(body.as_bytes()).expect(name);
            assert_eq!(r.period().is_none(), name == "FOREVER", "{name}");
        }
        let months = Retention::parse(br#"{"number":3,"units":"MONTHS"}"#).expect("months");
        // A ChronoUnit month is 2,629,746 s.
        assert_eq!(months.period(), Some(Duration::from_secs(3 * 2_629_746)));
        let now = 1_800_000_000_000;
        assert_eq!(months.oldest_kept(now), Some(now - 3 * 2_629_746_000));
        let forever = Retention::parse(br#"{"number":1,"units":"FOREVER"}"#).expect("forever");
        assert_eq!(forever.oldest_kept(now), None);
    }

    #[test]
    fn what_is_no_retention_period_is_refused() {
        for bad in [
            &br#"{"number":3}"#[..],
            br#"{"number":3,"units":"FORTNIGHTS"}"#,
            br#"{"number":-1,"units":"DAYS"}"#,
            br#"{"number":"3","units":"DAYS"}"#,
            b"<html>",
        ] {
            assert!(
                Retention::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
