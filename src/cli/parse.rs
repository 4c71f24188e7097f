//! Values the command line takes as text: durations (`250ms`, `60s`, `2m`, `1h`) and
//! sizes (`512KiB`, `64MiB`). Each type prints the way it parses, so `--help` shows the
//! library's defaults in the same notation.

use std::{fmt, str::FromStr, time::Duration};

/// A value the command line cannot take, and why (clap prints it after the flag).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadValue(pub(crate) String);

impl From<String> for BadValue {
    fn from(why: String) -> Self {
        Self(why)
    }
}

/// A duration flag value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl FromStr for Dur {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Self, BadValue> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a duration (e.g. 60s, 250ms, 2m)"))?;
        let secs = match unit {
            "" if n == 0.0 => 0.0,
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(format!("'{s}' is not a duration (units: ms, s, m, h)").into()),
        };
        Duration::try_from_secs_f64(secs)
            .map(Dur)
            .map_err(|_| BadValue(format!("'{s}' is out of range")))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => f.write_str("0s"),
            ms if ms % 1000 == 0 => write!(f, "{}s", ms / 1000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

/// A size flag value, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Size(pub(crate) u64);

const UNITS: [(&str, u64); 4] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("", 1),
];

impl FromStr for Size {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Self, BadValue> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a size (e.g. 64MiB)"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1 << 10,
            "MiB" | "M" | "MB" => 1 << 20,
            "GiB" | "G" | "GB" => 1 << 30,
            _ => return Err(format!("'{s}' is not a size (units: KiB, MiB, GiB)").into()),
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| BadValue(format!("'{s}' is out of range")))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, mult) = UNITS
            .iter()
            .find(|(_, m)| self.0 >= *m && self.0.is_multiple_of(*m))
            .copied()
            .unwrap_or(("", 1));
        write!(f, "{}{unit}", self.0 / mult)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dur(s: &str) -> Result<Duration, BadValue> {
        s.parse::<Dur>().map(|d| d.0)
    }

    fn size(s: &str) -> Result<u64, BadValue> {
        s.parse::<Size>().map(|d| d.0)
    }

    #[test]
    fn durations() {
        assert_eq!(dur("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(dur("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(dur("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(dur("0"), Ok(Duration::ZERO));
        assert!(dur("5").is_err());
        assert!(dur("soon").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert_eq!(size("1000"), Ok(1000));
        assert_eq!(size("0"), Ok(0));
        assert!(size("1TiB").is_err());
        assert!(size("99999999999GiB").is_err());
    }

    #[test]
    fn values_print_the_way_they_parse() {
        for d in ["0s", "250ms", "30s", "1500ms"] {
            assert_eq!(d.parse::<Dur>().map(|v| v.to_string()), Ok(d.to_owned()));
        }
        for s in ["16MiB", "1GiB", "512KiB", "1000"] {
            assert_eq!(s.parse::<Size>().map(|v| v.to_string()), Ok(s.to_owned()));
        }
    }
}
