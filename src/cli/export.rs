//! The `export` command: every record of a fixed range, written once, oldest first, by
//! the `follow` shipper with an end (`FollowRequest.until`). Killed, it resumes from its
//! checkpoint file to the same bytes an uninterrupted run writes; the gateway ends the
//! call once the range is settled, and the command ends with it.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Args;

use super::{
    call::ConnectArgs,
    follow::{FollowArgs, Since},
    output::{CommandError, Format},
    parse::{BadValue, Dur},
};

/// `export` settings.
#[derive(Clone, Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,

    /// First day or instant of the range, in UTC: a date (`2026-01-01`, from its first
    /// millisecond) or an RFC 3339 time with its offset (`2026-01-01T08:00:00Z`,
    /// `2026-01-01T09:00:00+01:00`). Local times without an offset are refused.
    #[arg(long)]
    pub(crate) from: Bound,

    /// Last day of the range, in UTC, included whole (`2026-03-31` ends at the end of 31
    /// March), or an RFC 3339 instant the range ends before.
    #[arg(long)]
    pub(crate) to: Bound,

    /// Confluence's searchString.
    #[arg(long = "search")]
    pub(crate) search: Option<String>,

    /// How records are written: ndjson (one per line), csv (a header, then a row per
    /// record), json (one array), ecs (an Elastic Common Schema document per line).
    #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
    pub(crate) format: ExportFormat,

    /// With --format ecs: the record's Confluence JSON in `event.original` (about twice
    /// the size).
    #[arg(long)]
    pub(crate) ecs_original: bool,

    /// File to write (default: standard output, which cannot be resumed).
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,

    /// Where the checkpoint is kept; a run with an existing one continues the export.
    #[arg(long)]
    pub(crate) checkpoint_file: Option<PathBuf>,

    /// How late a record may become visible in Confluence: a range ending less than this
    /// long ago is finished this long after its end.
    #[arg(long, default_value_t = Dur(Duration::from_secs(10)))]
    pub(crate) lag: Dur,
}

/// The formats an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExportFormat {
    /// One JSON record per line.
    Ndjson,
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON array of records.
    Json,
    /// One Elastic Common Schema 8.11 document per line (docs/ecs.md).
    Ecs,
}

/// One end of a range as given: a UTC day, or an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bound {
    /// The UTC day starting at this instant.
    Day(SystemTime),
    /// This instant.
    At(SystemTime),
}

impl Bound {
    /// Where a range starting here starts.
    fn start(self) -> SystemTime {
        match self {
            Self::Day(t) | Self::At(t) => t,
        }
    }

    /// Where a range ending here ends (exclusive): after the whole day, or at the instant.
    fn end(self) -> SystemTime {
        match self {
            Self::Day(t) => t + Duration::from_secs(86_400),
            Self::At(t) => t,
        }
    }
}

impl std::str::FromStr for Bound {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Self, BadValue> {
        let s = s.trim();
        if let Some(day) = utc_day(s) {
            return Ok(Self::Day(day));
        }
        // A time without its offset would be read as UTC by the parser; the flag's help
        // promises such a local time is refused instead.
        let offset = s
            .split_once(['T', 't'])
            .is_some_and(|(_, time)| time.ends_with(['Z', 'z']) || time.contains(['+', '-']));
        offset
            .then(|| s.parse::<prost_types::Timestamp>().ok())
            .flatten()
            .and_then(|t| SystemTime::try_from(t).ok())
            .map(Self::At)
            .ok_or_else(|| {
                BadValue(format!(
                    "'{s}' is neither a date (2026-01-31, a UTC day) nor a time with its offset \
                     (2026-01-31T08:00:00Z)"
                ))
            })
    }
}

/// `YYYY-MM-DD` as the start of that UTC day.
fn utc_day(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in[(m - 1) as usize] {
        return None;
    }
    // Howard Hinnant's days-from-civil algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days.checked_mul(86_400)?).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

impl ExportArgs {
    /// The shipper's settings for this range; the range checked.
    pub(crate) fn into_follow(self) -> Result<FollowArgs, CommandError> {
        let (from, until) = (self.from.start(), self.to.end());
        if until <= from {
            return Err(CommandError::other(
                "--to: the range ends before it starts (--to must be after --from)",
            ));
        }
        Ok(FollowArgs {
            connect: self.connect,
            since: Some(Since::At(from)),
            checkpoint_file: self.checkpoint_file,
            output: self.output,
            format: match self.format {
                ExportFormat::Ndjson => Format::Ndjson,
                ExportFormat::Csv => Format::Csv,
                ExportFormat::Json => Format::JsonArray,
                ExportFormat::Ecs => Format::Ecs,
            }
            .with_ecs_original(self.ecs_original)?,
            ecs_original: false,
            search: self.search,
            poll_interval: Dur(Duration::from_secs(1)),
            lag: self.lag,
            max_records: None,
            until: Some(until),
            otlp: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn dates_are_whole_utc_days_and_times_need_an_offset() {
        let jan1: Bound = "2026-01-01".parse().expect("a date");
        assert_eq!(jan1.start(), at(1_767_225_600_000));
        assert_eq!(jan1.end(), at(1_767_225_600_000 + 86_400_000));
        let leap: Bound = "2024-02-29".parse().expect("a leap day");
        assert_eq!(leap.start(), at(1_709_164_800_000));
        let t: Bound = "2026-01-01T09:00:00+01:00".parse().expect("a time");
        assert_eq!(
            (t.start(), t.end()),
            (at(1_767_254_400_000), at(1_767_254_400_000))
        );
        for bad in [
            "2025-02-29",
            "2026-13-01",
            "2026-01-01T08:00:00",
            "yesterday",
            "1/2/2026",
        ] {
            assert!(bad.parse::<Bound>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_range_must_end_after_it_starts() {
        let args = |from: &str, to: &str| ExportArgs {
            connect: ConnectArgs {
                gateway: "http://127.0.0.1:1".to_owned(),
                tls_ca: None,
                client_cert: None,
                client_key: None,
                authorization: None,
            },
            from: from.parse().expect("from"),
            to: to.parse().expect("to"),
            search: None,
            format: ExportFormat::Ndjson,
            ecs_original: false,
            output: None,
            checkpoint_file: None,
            lag: Dur(Duration::from_secs(10)),
        };
        assert!(args("2026-01-02", "2026-01-01").into_follow().is_err());
        // One day: from its start to the next day's.
        let one = args("2026-01-01", "2026-01-01")
            .into_follow()
            .expect("one day");
        assert_eq!(one.until, Some(at(1_767_225_600_000 + 86_400_000)));
        assert!(
            args("2026-01-01T10:00:00Z", "2026-01-01T10:00:00Z")
                .into_follow()
                .is_err()
        );
    }

    #[test]
    fn ecs_original_goes_with_the_ecs_format_only() {
        let mut args = ExportArgs {
            connect: ConnectArgs {
                gateway: "http://127.0.0.1:1".to_owned(),
                tls_ca: None,
                client_cert: None,
                client_key: None,
                authorization: None,
            },
            from: "2026-01-01".parse().expect("from"),
            to: "2026-01-01".parse().expect("to"),
            search: None,
            format: ExportFormat::Ndjson,
            ecs_original: true,
            output: None,
            checkpoint_file: None,
            lag: Dur(Duration::from_secs(10)),
        };
        assert!(args.clone().into_follow().is_err());
        args.format = ExportFormat::Ecs;
        let follow = args.clone().into_follow().expect("ecs");
        assert_eq!(follow.format, Format::EcsOriginal);
        args.ecs_original = false;
        assert_eq!(args.into_follow().expect("ecs").format, Format::Ecs);
    }
}
