//! The `follow` command: a log shipper in one command. It follows a gateway, appends
//! each record to its output as Confluence's JSON and, after each flush, writes the
//! checkpoint with the output's length atomically (write, fsync, rename). Restarted, it
//! cuts the output back to that length and continues from the checkpoint, so a kill at
//! any moment loses and repeats nothing (an output that cannot be cut back, standard
//! output, repeats at most what followed the last checkpoint). With
//! `--otlp-logs-endpoint` it sends each message's records to an OTLP receiver instead
//! (`otlp.rs`) and writes the checkpoint once the receiver acknowledged them: a kill
//! repeats at most the batch whose acknowledgement had not been checkpointed yet.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use serde::{Deserialize, Serialize};
use tonic::{Code, Request};
use tonic_types::StatusExt;

use super::{
    call::{ConnectArgs, authorize, connect},
    otlp::{LogsExporter, OtlpArgs},
    output::{CommandError, Format, Progress, RecordWriter},
    parse::{BadValue, Dur},
};
use audit_gateway::pb;

/// `follow` settings.
#[derive(Clone, Debug, Args)]
pub(crate) struct FollowArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,

    /// Start with records created this long ago (`10m`) or since this time (RFC 3339,
    /// `2025-01-02T03:04:05Z`); ignored when --checkpoint-file holds a checkpoint;
    /// without it, from now.
    #[arg(long)]
    pub(crate) since: Option<Since>,

    /// Where the checkpoint is kept; continue from it when it exists.
    #[arg(long)]
    pub(crate) checkpoint_file: Option<PathBuf>,

    /// File to append records to (default: standard output).
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,

    /// How records are written (csv and table write their header once per file).
    #[arg(long, value_enum, default_value_t = Format::Ndjson)]
    pub(crate) format: Format,

    /// With --format ecs: each document's `event.original` holds the record's JSON.
    #[arg(long)]
    pub(crate) ecs_original: bool,

    /// Confluence's searchString.
    #[arg(long = "search")]
    pub(crate) search: Option<String>,

    /// How often the gateway reads the head of the log.
    #[arg(long, default_value_t = Dur(Duration::from_secs(10)))]
    pub(crate) poll_interval: Dur,

    /// How late a record may become visible in Confluence.
    #[arg(long, default_value_t = Dur(Duration::from_secs(10)))]
    pub(crate) lag: Dur,

    /// Stop after this many records.
    #[arg(long)]
    pub(crate) max_records: Option<i64>,

    #[command(flatten)]
    pub(crate) otlp: OtlpArgs,

    /// The end of an export's range (exclusive; `export` sets it): the gateway ends the
    /// call once every record before it was delivered.
    #[arg(skip)]
    pub(crate) until: Option<SystemTime>,
}

/// Where a first run starts: a duration back from now, or a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Since {
    /// This long before the command starts.
    Ago(Duration),
    /// This instant.
    At(SystemTime),
}

impl std::str::FromStr for Since {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Self, BadValue> {
        if let Ok(d) = s.parse::<Dur>() {
            return Ok(Self::Ago(d.0));
        }
        s.trim()
            .parse::<prost_types::Timestamp>()
            .ok()
            .and_then(|t| SystemTime::try_from(t).ok())
            .map(Self::At)
            .ok_or_else(|| {
                BadValue(format!(
                    "'{s}' is neither a duration (10m, 2h) nor a time (2025-01-02T03:04:05Z)"
                ))
            })
    }
}

impl Since {
    /// The instant, for a command started at `now`.
    fn instant(self, now: SystemTime) -> Option<SystemTime> {
        match self {
            Self::Ago(d) => now.checked_sub(d),
            Self::At(t) => Some(t),
        }
    }
}

/// What the checkpoint file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// The gateway's checkpoint; `None` before the first message.
    checkpoint: Option<String>,
    /// Where the first run started, epoch ms (`--since`, or its start time): a restart
    /// before the first message starts there again, not from a new "now".
    since_ms: Option<i64>,
    /// The output's length when the checkpoint was taken.
    output_bytes: Option<u64>,
    /// An export's range was delivered whole and its output closed: a new run has
    /// nothing to do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    finished: bool,
}

/// Longest pause between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Calls in a row that end with a status no retry is known to cure (INTERNAL, UNKNOWN:
/// a cut connection may look like one, a defect or a broken upstream too) before the
/// command gives up; any message received starts the count again.
const MAX_DOUBTFUL_CALLS: u32 = 3;

/// Follows until `max_records` or a failure that retrying cannot cure.
pub(crate) async fn run(args: FollowArgs) -> Result<(), CommandError> {
    let saved = match &args.checkpoint_file {
        Some(path) => read_saved(path)?,
        None => None,
    };
    if saved.as_ref().is_some_and(|s| s.finished) {
        eprintln!("the export is complete already (its checkpoint file says so)");
        return Ok(());
    }
    let mut out = match LogsExporter::new(&args.otlp)? {
        Some(exporter) => Target::Otlp(exporter),
        None => {
            let (sink, continuing) = open_output(args.output.as_deref(), saved.as_ref())?;
            let format = args.format.with_ecs_original(args.ecs_original)?;
            Target::Output(RecordWriter::new(sink, format, continuing))
        }
    };
    let (since, mut checkpoint) = start_point(&args, saved, &mut out)?;
    let mut left = args.max_records;
    let mut progress = Progress::new();
    let mut backoff = Duration::from_secs(1);
    let mut doubtful = 0;
    // SIGTERM or Ctrl-C stops it while it waits (for a message, or to reconnect), never
    // between writing records and their checkpoint (no await lies there): the output and
    // the checkpoint file then agree. An OTLP Export is awaited: stopped during one, the
    // batch is not checkpointed and the next run sends it again.
    let stop = audit_gateway::shutdown_signal();
    tokio::pin!(stop);
    loop {
        if left.is_some_and(|n| n <= 0) {
            return Ok(());
        }
        let before = checkpoint.clone();
        let once = follow_once(
            &args,
            &mut out,
            &mut checkpoint,
            since,
            &mut left,
            &mut progress,
        );
        let outcome = tokio::select! {
            outcome = once => outcome,
            () = &mut stop => return Ok(()),
        };
        if checkpoint != before {
            // The call delivered: whatever ends it now is a new failure, not the last one
            // repeating.
            backoff = Duration::from_secs(1);
            doubtful = 0;
        }
        let why = match outcome {
            Ok(()) if left.is_some_and(|n| n <= 0) => return Ok(()),
            // An export ends when the gateway has delivered its whole range.
            Ok(()) if args.until.is_some() => {
                progress.finish();
                return finish(&args, &mut out, checkpoint, since);
            }
            // A follower never ends by itself before `max_records`: something between
            // closed the stream, and the checkpoint continues it.
            Ok(()) => "the gateway ended the follow early".to_owned(),
            Err(Failure::Retry(why)) => why,
            Err(Failure::Doubtful(status)) => {
                doubtful += 1;
                if doubtful >= MAX_DOUBTFUL_CALLS {
                    progress.finish();
                    return Err(CommandError::status(
                        &status,
                        format_args!(" ({doubtful} calls in a row; not retried further)"),
                    ));
                }
                format!("{:?}: {}", status.code(), status.message())
            }
            Err(Failure::Fatal(why)) => {
                progress.finish();
                return Err(why);
            }
        };
        eprintln!("{why}; following again in {backoff:?}");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut stop => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Where this run starts: the saved checkpoint, else the saved or given `--since`. A
/// first run with a checkpoint file writes its start there before any output.
fn start_point(
    args: &FollowArgs,
    saved: Option<Saved>,
    out: &mut Target,
) -> Result<(Option<SystemTime>, Option<String>), CommandError> {
    let since = match (&saved, args.since) {
        (
            Some(Saved {
                since_ms: Some(ms), ..
            }),
            _,
        ) => Some(from_ms(*ms)),
        (_, Some(since)) => Some(
            since
                .instant(SystemTime::now())
                .ok_or("--since: too far back")?,
        ),
        // From now, as this first run defines it.
        (_, None) if args.checkpoint_file.is_some() => Some(SystemTime::now()),
        (_, None) => None,
    };
    let checkpoint = saved.and_then(|s| s.checkpoint);
    if let (Some(path), None) = (&args.checkpoint_file, &checkpoint) {
        // Before any output: where this run starts and how long the output is, so a kill
        // before the first checkpoint restarts at the same point and cuts back what it
        // wrote.
        let first = Saved {
            checkpoint: None,
            since_ms: since.map(to_ms),
            output_bytes: out.sync().map_err(CommandError::output)?,
            finished: false,
        };
        write_saved(path, &first).map_err(|e| {
            CommandError::output(format!("--checkpoint-file {}: {e}", path.display()))
        })?;
    }
    Ok((since, checkpoint))
}

/// Why a call ended early.
enum Failure {
    /// Worth another call from the checkpoint, however often (the gateway restarting, a
    /// rate limit).
    Retry(String),
    /// Worth a few more calls (`MAX_DOUBTFUL_CALLS`): a cut stream, or a fault that
    /// repeats.
    Doubtful(tonic::Status),
    /// Ends the command.
    Fatal(CommandError),
}

async fn follow_once(
    args: &FollowArgs,
    out: &mut Target,
    checkpoint: &mut Option<String>,
    since: Option<SystemTime>,
    left: &mut Option<i64>,
    progress: &mut Progress,
) -> Result<(), Failure> {
    let mut client = connect(&args.connect)
        .await
        .map_err(|e| Failure::Retry(e.message))?;
    let from = match (&checkpoint, since) {
        (Some(c), _) => Some(pb::follow_request::From::Checkpoint(c.clone())),
        (None, Some(t)) => Some(pb::follow_request::From::Since(
            prost_types::Timestamp::from(t),
        )),
        (None, None) => None,
    };
    let mut request = Request::new(pb::FollowRequest {
        search_string: args.search.clone(),
        from,
        poll_interval: Some(duration(args.poll_interval.0)),
        max_records: *left,
        lag: Some(duration(args.lag.0)),
        until: args.until.map(prost_types::Timestamp::from),
    });
    authorize(&mut request, args.connect.authorization.as_ref()).map_err(Failure::Fatal)?;
    let sent_checkpoint = checkpoint.is_some();
    let classify = |s| classify(s, args, sent_checkpoint);
    let mut messages = client.follow(request).await.map_err(classify)?.into_inner();
    loop {
        let Some(message) = messages.message().await.map_err(classify)? else {
            return Ok(());
        };
        let fail = |e: io::Error| Failure::Fatal(CommandError::output(e));
        let output_bytes = match out {
            Target::Output(w) => {
                w.write(&message.records).map_err(fail)?;
                sync(w).map_err(fail)?
            }
            // Acknowledged before the checkpoint below claims them.
            Target::Otlp(exporter) => {
                if !message.records.is_empty() {
                    exporter
                        .ship(&message.records)
                        .await
                        .map_err(Failure::Fatal)?;
                }
                None
            }
        };
        if let Some(path) = &args.checkpoint_file {
            let saved = Saved {
                checkpoint: Some(message.checkpoint.clone()),
                since_ms: since.map(to_ms),
                output_bytes,
                finished: false,
            };
            write_saved(path, &saved).map_err(|e| {
                Failure::Fatal(CommandError::output(format!(
                    "--checkpoint-file {}: {e}",
                    path.display()
                )))
            })?;
        }
        *checkpoint = Some(message.checkpoint);
        if let Some(n) = left.as_mut() {
            *n -= message.records.len() as i64;
        }
        progress.update(&message.records, true);
    }
}

/// Closes a delivered export's output and marks its checkpoint finished, in that order:
/// a kill between the two runs the close again on output cut back to before it.
fn finish(
    args: &FollowArgs,
    out: &mut Target,
    checkpoint: Option<String>,
    since: Option<SystemTime>,
) -> Result<(), CommandError> {
    if let Target::Output(w) = out {
        w.finish().map_err(CommandError::output)?;
    }
    let output_bytes = out.sync().map_err(CommandError::output)?;
    if let Some(path) = &args.checkpoint_file {
        let saved = Saved {
            checkpoint,
            since_ms: since.map(to_ms),
            output_bytes,
            finished: true,
        };
        write_saved(path, &saved).map_err(|e| {
            CommandError::output(format!("--checkpoint-file {}: {e}", path.display()))
        })?;
    }
    Ok(())
}

/// Errors a new call may cure are retried; the rest end the command with their code.
fn classify(s: tonic::Status, args: &FollowArgs, sent_checkpoint: bool) -> Failure {
    match s.code() {
        Code::InvalidArgument if sent_checkpoint && names_checkpoint(&s) => {
            Failure::Fatal(CommandError {
                message: refused_checkpoint(&s, args),
                code: u8::try_from(i32::from(Code::InvalidArgument)).unwrap_or(1),
            })
        }
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted => {
            Failure::Retry(format!("{:?}: {}", s.code(), s.message()))
        }
        Code::Unknown | Code::Internal => Failure::Doubtful(s),
        _ => Failure::Fatal(CommandError::status(&s, "")),
    }
}

/// Whether an INVALID_ARGUMENT names the `checkpoint` field (its `BadRequest`,
/// `src/grpc/status.rs`).
fn names_checkpoint(s: &tonic::Status) -> bool {
    s.get_error_details()
        .bad_request()
        .is_some_and(|b| b.field_violations.iter().any(|v| v.field == "checkpoint"))
}

/// One line: why the gateway refused the checkpoint, from the cause its `ErrorInfo`
/// carries (`TokenError::code`, `src/audit/resume.rs`), and the way on.
fn refused_checkpoint(s: &tonic::Status, args: &FollowArgs) -> String {
    let cause = s
        .get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get("cause").cloned());
    let why = match cause.as_deref() {
        Some("OTHER_KEY") => "it was signed with another credential salt: the gateway was \
                              restarted without --credential-salt or with another one (or the \
                              checkpoint was edited)"
            .to_owned(),
        Some("DAMAGED") => "the checkpoint is damaged (cut short or corrupted)".to_owned(),
        Some("OTHER_FILTER") => format!(
            "it is the checkpoint of a follow with another --search (this one has {})",
            match &args.search {
                Some(s) => format!("--search {s:?}"),
                None => "no --search".to_owned(),
            }
        ),
        Some("UNKNOWN_VERSION") => {
            "it was written by a gateway version this one cannot read".to_owned()
        }
        _ => s.message().to_owned(),
    };
    let whose = match &args.checkpoint_file {
        Some(path) => format!("the checkpoint in {}", path.display()),
        None => "this run's checkpoint".to_owned(),
    };
    let way_on = match &args.checkpoint_file {
        Some(path) => format!(
            "move {} away and run again with --since TIME",
            path.display()
        ),
        None => "run again with --since TIME".to_owned(),
    };
    let last = match (&args.output, &args.otlp.otlp_logs_endpoint) {
        (Some(path), _) => format!("the last record in {}", path.display()),
        (None, Some(_)) => "the last record the OTLP receiver got".to_owned(),
        (None, None) => "the last record written".to_owned(),
    };
    format!(
        "the gateway refused {whose}: {why}; to go on, {way_on} (e.g. the time of {last}; \
         records of that millisecond come again)"
    )
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

fn read_saved(path: &Path) -> Result<Option<Saved>, CommandError> {
    match fs::read(path) {
        Ok(b) if b.is_empty() => Ok(None),
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            CommandError::other(format!(
                "--checkpoint-file {}: not a checkpoint: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CommandError::other(format!(
            "--checkpoint-file {}: {e}",
            path.display()
        ))),
    }
}

/// Replaces the checkpoint file whole or not at all: a temporary file beside it,
/// synced, renamed over it, and the directory synced so the rename survives a crash.
fn write_saved(path: &Path, saved: &Saved) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(saved).map_err(io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Where records go: an output in a format, or an OTLP logs receiver.
enum Target {
    /// A file or standard output, cut back to the checkpoint when restarted.
    Output(RecordWriter<Sink>),
    /// `--otlp-logs-endpoint`: sent, and acknowledged, before each checkpoint.
    Otlp(LogsExporter),
}

impl Target {
    /// Flushes an output to stable storage; its length after it (none for a receiver:
    /// there are no output bytes to track).
    fn sync(&mut self) -> io::Result<Option<u64>> {
        match self {
            Self::Output(w) => sync(w),
            Self::Otlp(_) => Ok(None),
        }
    }
}

/// Where records go: a file appended to, or standard output.
enum Sink {
    File(io::BufWriter<File>),
    Stdout(io::Stdout),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::File(f) => f.write(buf),
            Self::Stdout(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::File(f) => f.flush(),
            Self::Stdout(s) => s.flush(),
        }
    }
}

/// Opens `path` for appending, first cut back to the length the checkpoint recorded
/// (what was written after it is written again); whether it already holds output.
fn open_output(path: Option<&Path>, saved: Option<&Saved>) -> Result<(Sink, bool), CommandError> {
    let Some(path) = path else {
        return Ok((Sink::Stdout(io::stdout()), false));
    };
    let err = |e: io::Error| format!("--output {}: {e}", path.display());
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    let mut len = file.metadata().map_err(err)?.len();
    match saved.and_then(|s| s.output_bytes) {
        Some(at) if at < len => {
            file.set_len(at).map_err(err)?;
            len = at;
        }
        Some(at) if at > len => {
            return Err(CommandError::other(format!(
                "--output {}: shorter ({len} bytes) than when the checkpoint was taken \
                 ({at} bytes); is it the same file?",
                path.display()
            )));
        }
        _ => {}
    }
    Ok((Sink::File(io::BufWriter::new(file)), len > 0))
}

/// Flushes to stable storage; the file's length after it.
fn sync(out: &mut RecordWriter<Sink>) -> io::Result<Option<u64>> {
    out.flush()?;
    match out.get_ref() {
        Sink::File(f) => {
            f.get_ref().sync_data()?;
            Ok(Some(f.get_ref().metadata()?.len()))
        }
        Sink::Stdout(_) => Ok(None),
    }
}

fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn from_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago: Since = "10m".parse().expect("a duration");
        assert_eq!(ago, Since::Ago(Duration::from_secs(600)));
        assert_eq!(ago.instant(now), Some(now - Duration::from_secs(600)));
        let at: Since = "2025-01-02T03:04:05.678Z".parse().expect("a time");
        let want = UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        assert_eq!(at, Since::At(want));
        assert_eq!(at.instant(now), Some(want));
        let offset: Since = "2025-01-02T04:04:05.678+01:00".parse().expect("a time");
        assert_eq!(offset, Since::At(want));
        for bad in ["yesterday", "2025-13-01T00:00:00Z", "10 parsecs"] {
            assert!(bad.parse::<Since>().is_err(), "{bad}");
        }
    }
}
