//! What the client commands print: records as JSON, NDJSON, CSV or an aligned table; a
//! progress line on stderr when it is a terminal; and exit codes that follow the gRPC
//! status of the failed call.

use std::{
    fmt,
    io::{self, IsTerminal, Write},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::ecs;
use audit_gateway::pb::{self, convert::ToJson};

/// How records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Confluence's JSON, pretty-printed.
    Json,
    /// One JSON record per line.
    Ndjson,
    /// Comma-separated values with a header line (the main fields of each record).
    Csv,
    /// Aligned columns for a terminal (time, category, author, summary).
    Table,
    /// One Elastic Common Schema 8.11 document per line (docs/ecs.md).
    Ecs,
    /// `ecs` with `event.original`, the record's Confluence JSON (`--ecs-original`).
    #[value(skip)]
    EcsOriginal,
    /// One JSON array of the records, closed by [`RecordWriter::finish`] (exports).
    #[value(skip)]
    JsonArray,
}

impl Format {
    /// This format with `event.original` when `original` is set (`--ecs-original`), which
    /// only `ecs` takes.
    pub(crate) fn with_ecs_original(self, original: bool) -> Result<Self, CommandError> {
        match (self, original) {
            (_, false) => Ok(self),
            (Self::Ecs | Self::EcsOriginal, true) => Ok(Self::EcsOriginal),
            (_, true) => Err(CommandError::other(
                "--ecs-original: only with --format ecs",
            )),
        }
    }
}

/// The CSV columns: a name and how to read it from a record.
const CSV_COLUMNS: [&str; 10] = [
    "creationTime",
    "creationDate",
    "category",
    "summary",
    "description",
    "author",
    "authorAccountId",
    "remoteAddress",
    "affectedObject",
    "affectedObjectType",
];

/// Writes records one message at a time in a [`Format`].
pub(crate) struct RecordWriter<W: Write> {
    out: W,
    format: Format,
    /// Records written so far (JSON needs commas between them, CSV and tables a header
    /// before the first).
    written: u64,
    /// Whether the output already holds a header (an appended file).
    headed: bool,
}

impl<W: Write> RecordWriter<W> {
    /// A writer to `out`; `continuing`: `out` already holds earlier output of the same
    /// format (no second header).
    pub(crate) fn new(out: W, format: Format, continuing: bool) -> Self {
        Self {
            out,
            format,
            written: 0,
            headed: continuing,
        }
    }

    /// Writes `records`.
    pub(crate) fn write(&mut self, records: &[pb::AuditRecord]) -> io::Result<()> {
        for r in records {
            match self.format {
                Format::Ndjson => {
                    serde_json::to_writer(&mut self.out, &r.to_json())?;
                    self.out.write_all(b"\n")?;
                }
                Format::Ecs | Format::EcsOriginal => {
                    let doc = ecs::document(r, self.format == Format::EcsOriginal);
                    serde_json::to_writer(&mut self.out, &doc)?;
                    self.out.write_all(b"\n")?;
                }
                Format::Json => {
                    serde_json::to_writer_pretty(&mut self.out, &r.to_json())?;
                    self.out.write_all(b"\n")?;
                }
                Format::JsonArray => {
                    // Output continued holds `[` and a record at least (it is cut back to
                    // a checkpoint, taken only after records): a comma goes first.
                    let lead: &[u8] = if !self.headed { b"[\n" } else { b",\n" };
                    self.headed = true;
                    self.out.write_all(lead)?;
                    serde_json::to_writer(&mut self.out, &r.to_json())?;
                }
                Format::Csv => {
                    if !self.headed {
                        writeln!(self.out, "{}", CSV_COLUMNS.join(","))?;
                        self.headed = true;
                    }
                    let row: Vec<String> = csv_fields(r).iter().map(|f| csv_escape(f)).collect();
                    writeln!(self.out, "{}", row.join(","))?;
                }
                Format::Table => {
                    if !self.headed {
                        writeln!(
                            self.out,
                            "{:<24}  {:<18}  {:<24}  SUMMARY",
                            "TIME (UTC)", "CATEGORY", "AUTHOR"
                        )?;
                        self.headed = true;
                    }
                    let author = r.author.as_ref().map_or("", |a| a.display_name.as_str());
                    writeln!(
                        self.out,
                        "{:<24}  {:<18}  {:<24}  {}",
                        Iso(r.creation_date),
                        cut(&r.category, 18),
                        cut(author, 24),
                        cut(&r.summary, 80)
                    )?;
                }
            }
            self.written += 1;
        }
        Ok(())
    }

    /// Ends the output after its last record (the array's close; nothing for the
    /// line formats).
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        if self.format == Format::JsonArray {
            self.out
                .write_all(if self.headed { b"\n]\n" } else { b"[]\n" })?;
        }
        Ok(())
    }

    /// Flushes the output.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The output, to sync or measure it.
    pub(crate) fn get_ref(&self) -> &W {
        &self.out
    }

    /// The output, to write something else (a page's other fields) to it.
    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// A record's CSV fields, in [`CSV_COLUMNS`] order: the two dates as they are, the text
/// columns made inert for spreadsheets ([`inert`]).
fn csv_fields(r: &pb::AuditRecord) -> [String; 10] {
    let author = r.author.as_ref();
    let object = r.affected_object.as_ref();
    [
        Iso(r.creation_date).to_string(),
        r.creation_date.to_string(),
        inert(&r.category),
        inert(&r.summary),
        inert(&r.description),
        inert(author.map_or("", |a| a.display_name.as_str())),
        inert(
            author
                .and_then(|a| a.account_id.as_deref())
                .unwrap_or_default(),
        ),
        inert(&r.remote_address),
        inert(object.map_or("", |o| o.name.as_str())),
        inert(object.map_or("", |o| o.object_type.as_str())),
    ]
}

/// A text cell that a spreadsheet will not run as a formula: anyone who can name a page or
/// set a display name writes these cells, and Excel, LibreOffice and Google Sheets take a
/// cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return as a formula, so such a
/// cell gets a leading `'` (OWASP's advice for CSV injection).
fn inert(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

/// A field quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_escape(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// At most `n` characters of `s`, on one line.
fn cut(s: &str, n: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= n {
        one_line
    } else {
        let mut t: String = one_line.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Epoch milliseconds as an ISO 8601 UTC time (`2026-11-27T16:29:17.123Z`).
pub(crate) struct Iso(pub(crate) i64);

impl fmt::Display for Iso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let t = secs.rem_euclid(86_400);
        // Howard Hinnant's days-to-civil algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            t / 3600,
            t % 3600 / 60,
            t % 60
        )
    }
}

/// Records, messages, rate (and, when following, how far behind now), on one line of
/// stderr redrawn at most a few times a second; silent when stderr is not a terminal.
pub(crate) struct Progress {
    on: bool,
    started: Instant,
    drawn: Option<Instant>,
    records: u64,
    messages: u64,
}

impl Progress {
    /// A progress line, drawn only on a terminal.
    pub(crate) fn new() -> Self {
        Self {
            on: io::stderr().is_terminal(),
            started: Instant::now(),
            drawn: None,
            records: 0,
            messages: 0,
        }
    }

    /// Counts a message of `records`.
    pub(crate) fn update(&mut self, records: &[pb::AuditRecord], following: bool) {
        self.records += records.len() as u64;
        self.messages += 1;
        if !self.on
            || self
                .drawn
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.drawn = Some(Instant::now());
        let rate = self.records as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let mut line = format!(
            "{} records, {} messages, {rate:.0} records/s",
            self.records, self.messages
        );
        if following && let Some(last) = records.last() {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let behind = now.saturating_sub(last.creation_date).max(0) as f64 / 1000.0;
            line.push_str(&format!(", last record {behind:.1}s behind now"));
        }
        eprint!("\r{line}   ");
    }

    /// Ends the line, if one was drawn.
    pub(crate) fn finish(&self) {
        if self.on && self.drawn.is_some() {
            eprintln!();
        }
    }
}

/// A failed command: its message and the process's exit code.
#[derive(Debug)]
pub struct CommandError {
    /// One line for the terminal.
    pub message: String,
    /// The exit code: a failed call's gRPC status code (1–16), 74 for an output that
    /// cannot be written, 1 otherwise.
    pub code: u8,
}

impl CommandError {
    /// A failure of the command itself (settings, connection).
    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }

    /// A failed call: its status decides the exit code.
    pub(crate) fn status(s: &tonic::Status, context: impl fmt::Display) -> Self {
        Self {
            message: format!("{:?}: {}{context}", s.code(), s.message()),
            code: u8::try_from(i32::from(s.code())).unwrap_or(1).max(1),
        }
    }

    /// An output that cannot be written (sysexits' EX_IOERR).
    pub(crate) fn output(e: impl fmt::Display) -> Self {
        Self {
            message: format!("output: {e}"),
            code: 74,
        }
    }
}

impl From<String> for CommandError {
    fn from(message: String) -> Self {
        Self::other(message)
    }
}

impl From<&str> for CommandError {
    fn from(message: &str) -> Self {
        Self::other(message)
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn record(summary: &str) -> pb::AuditRecord {
        pb::AuditRecord {
            creation_date: 1_764_260_957_123,
            summary: summary.to_owned(),
            category: "Security".to_owned(),
            author: Some(pb::AuditAuthor {
                display_name: "Ada".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn written(format: Format, records: &[pb::AuditRecord]) -> String {
        let mut w = RecordWriter::new(Vec::new(), format, false);
        w.write(records).expect("in memory");
        w.write(records).expect("in memory");
        String::from_utf8(w.out).expect("utf-8")
    }

    #[test]
    fn iso_times_are_utc_with_milliseconds() {
        assert_eq!(Iso(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Iso(1_764_260_957_123).to_string(),
            "2025-11-27T16:29:17.123Z"
        );
        assert_eq!(Iso(951_782_400_000).to_string(), "2000-02-29T00:00:00.000Z");
        assert_eq!(Iso(-1).to_string(), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn csv_text_cells_never_start_a_formula() {
        for evil in [
            "=HYPERLINK(\"http://x\")",
            "+1+cmd",
            "-2+3",
            "@SUM(A1)",
            "\t=1",
            "\r=1",
        ] {
            let mut r = record(evil);
            r.author = Some(pb::AuditAuthor {
                display_name: evil.to_owned(),
                ..Default::default()
            });
            let fields = csv_fields(&r);
            assert_eq!(fields[3], format!("'{evil}"));
            assert_eq!(fields[5], format!("'{evil}"));
        }
        // Numbers stay numbers, and harmless text stays as it was.
        let mut r = record("a = b");
        r.creation_date = -1;
        let fields = csv_fields(&r);
        assert_eq!(fields[1], "-1");
        assert_eq!(fields[3], "a = b");
    }

    #[test]
    fn csv_has_one_header_and_quotes_what_needs_it() {
        let text = written(Format::Csv, &[record("a, \"b\"\nc")]);
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], CSV_COLUMNS.join(","));
        assert!(
            text.contains("\"a, \"\"b\"\"\nc\""),
            "RFC 4180 quoting: {text}"
        );
        assert_eq!(text.matches("creationTime").count(), 1, "{text}");
        let appended = {
            let mut w = RecordWriter::new(Vec::new(), Format::Csv, true);
            w.write(&[record("x")]).expect("in memory");
            String::from_utf8(w.out).expect("utf-8")
        };
        assert!(
            !appended.contains("creationTime"),
            "no header when appending"
        );
    }

    #[test]
    fn tables_align_and_ndjson_is_one_record_a_line() {
        let table = written(Format::Table, &[record("changed a permission")]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[1].starts_with("2025-11-27T16:29:17.123Z  Security"));
        assert_eq!(lines[1].find("Ada"), lines[0].find("AUTHOR"));
        let nd = written(Format::Ndjson, &[record("x")]);
        for line in nd.lines() {
            let v: Value = serde_json::from_str(line).expect("a JSON record a line");
            assert_eq!(v["summary"], "x");
        }
    }

    #[test]
    fn exit_codes_follow_the_status() {
        let e = CommandError::status(&tonic::Status::unavailable("down"), "");
        assert_eq!(e.code, 14);
        let e = CommandError::status(&tonic::Status::invalid_argument("x"), "");
        assert_eq!(e.code, 3);
        assert_eq!(CommandError::output("disk full").code, 74);
    }
}
