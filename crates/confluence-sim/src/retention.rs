//! The audit log's retention period, served by `GET {base}/rest/api/audit/retention` as
//! Confluence Cloud's `RetentionPeriod`: `{"number": <int32>, "units": "<unit>"}`.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A retention period, as `RetentionPeriod` has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// The number of units (an int32 in the schema).
    pub number: i32,
    /// The unit.
    pub units: RetentionUnit,
}

impl Default for Retention {
    /// 3 MONTHS: the same as `/audit/since`'s default window, so the default log lies
    /// inside it. Atlassian's own default is not documented.
    fn default() -> Retention {
        Retention {
            number: 3,
            units: RetentionUnit::Months,
        }
    }
}

/// The 16 units of `RetentionPeriod.units` (java.time.ChronoUnit names): `/audit/since`'s
/// 13 plus MILLENNIA, ERAS and FOREVER.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RetentionUnit {
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
    /// `MONTHS`.
    Months,
    /// `YEARS`.
    Years,
    /// `DECADES`.
    Decades,
    /// `CENTURIES`.
    Centuries,
    /// `MILLENNIA` (retention only).
    Millennia,
    /// `ERAS` (retention only).
    Eras,
    /// `FOREVER` (retention only).
    Forever,
}

impl RetentionUnit {
    /// Every unit, in the schema's order.
    pub const ALL: [RetentionUnit; 16] = [
        RetentionUnit::Nanos,
        RetentionUnit::Micros,
        RetentionUnit::Millis,
        RetentionUnit::Seconds,
        RetentionUnit::Minutes,
        RetentionUnit::Hours,
        RetentionUnit::HalfDays,
        RetentionUnit::Days,
        RetentionUnit::Weeks,
        RetentionUnit::Months,
        RetentionUnit::Years,
        RetentionUnit::Decades,
        RetentionUnit::Centuries,
        RetentionUnit::Millennia,
        RetentionUnit::Eras,
        RetentionUnit::Forever,
    ];

    /// The name as served, e.g. `"HALF_DAYS"`.
    pub fn name(self) -> &'static str {
        match self {
            RetentionUnit::Nanos => "NANOS",
            RetentionUnit::Micros => "MICROS",
            RetentionUnit::Millis => "MILLIS",
            RetentionUnit::Seconds => "SECONDS",
            RetentionUnit::Minutes => "MINUTES",
            RetentionUnit::Hours => "HOURS",
            RetentionUnit::HalfDays => "HALF_DAYS",
            RetentionUnit::Days => "DAYS",
            RetentionUnit::Weeks => "WEEKS",
            RetentionUnit::Months => "MONTHS",
            RetentionUnit::Years => "YEARS",
            RetentionUnit::Decades => "DECADES",
            RetentionUnit::Centuries => "CENTURIES",
            RetentionUnit::Millennia => "MILLENNIA",
            RetentionUnit::Eras => "ERAS",
            RetentionUnit::Forever => "FOREVER",
        }
    }
}

impl fmt::Display for RetentionUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RetentionUnit {
    type Err = String;

    /// A unit's served name, ignoring case.
    fn from_str(text: &str) -> Result<RetentionUnit, String> {
        let found = RetentionUnit::ALL
            .into_iter()
            .find(|unit| unit.name().eq_ignore_ascii_case(text.trim()));
        found.ok_or_else(|| {
            let names: Vec<&str> = RetentionUnit::ALL.iter().map(|unit| unit.name()).collect();
            format!(
                "unknown unit {text:?}: expected one of {}",
                names.join(", ")
            )
        })
    }
}

impl FromStr for Retention {
    type Err = String;

    /// `"N:UNITS"`, e.g. `"3:MONTHS"` or `"1:forever"`.
    fn from_str(text: &str) -> Result<Retention, String> {
        let (number, units) = text.split_once(':').ok_or_else(|| {
            format!("invalid retention {text:?}: expected N:UNITS, e.g. 3:MONTHS")
        })?;
        let number = number
            .trim()
            .parse()
            .map_err(|_| format!("invalid retention {text:?}: {number:?} is not an int32"))?;
        Ok(Retention {
            number,
            units: units.parse()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_and_serialises_as_the_schema_says() {
        assert_eq!(
            "3:MONTHS".parse::<Retention>(),
            Ok(Retention {
                number: 3,
                units: RetentionUnit::Months
            })
        );
        let forever: Retention = "1:forever".parse().unwrap();
        assert_eq!(
            serde_json::to_string(&forever).unwrap(),
            r#"{"number":1,"units":"FOREVER"}"#
        );
        for unit in RetentionUnit::ALL {
            let json = serde_json::to_value(unit).unwrap();
            assert_eq!(json, unit.name());
            assert_eq!(unit.name().parse::<RetentionUnit>(), Ok(unit));
        }
        for bad in ["3", "x:MONTHS", "3:FORTNIGHTS", "3000000000:DAYS", ""] {
            assert!(bad.parse::<Retention>().is_err(), "{bad:?}");
        }
    }
}
