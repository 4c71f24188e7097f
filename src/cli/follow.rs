//! The `follow` command: a log shipper in one command. It follows a gateway, appends
//! each record to its output as Confluence's JSON and, after each flush, writes the
//! checkpoint with the output's length atomically (write, fsync, rename). Restarted, it
//! cuts the output back to that length and continues from the checkpoint, so a kill at
//! any moment loses and repeats nothing (an output that cannot be cut back, standard
//! output, repeats at most what followed the last checkpoint).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, IsTerminal, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use tonic::{Code, Request};

use super::{
    call::{ConnectArgs, authorize, connect},
    parse::Dur,
};
use crate::pb::{self, convert::ToJson};

/// `follow` settings.
#[derive(Clone, Debug, Args)]
pub(crate) struct FollowArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,

    /// Start with records created this long ago (ignored when --checkpoint-file holds a
    /// checkpoint); without it, from now.
    #[arg(long)]
    pub(crate) since: Option<Dur>,

    /// Where the checkpoint is kept; continue from it when it exists.
    #[arg(long)]
    pub(crate) checkpoint_file: Option<PathBuf>,

    /// File to append records to (default: standard output).
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,

    /// One record per line (ndjson), or each record pretty-printed (json).
    #[arg(long, value_enum, default_value_t = Format::Ndjson)]
    pub(crate) format: Format,

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
}

/// How records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// One JSON record per line.
    Ndjson,
    /// Each record pretty-printed, one after the other.
    Json,
}

/// What the checkpoint file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// The gateway's checkpoint.
    checkpoint: String,
    /// The output's length when the checkpoint was taken.
    output_bytes: Option<u64>,
}

/// Longest pause between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Follows until `max_records` or a failure that retrying cannot cure.
pub(crate) async fn run(args: FollowArgs) -> Result<(), String> {
    let saved = match &args.checkpoint_file {
        Some(path) => read_saved(path)?,
        None => None,
    };
    let mut out = Output::open(args.output.as_deref(), saved.as_ref())?;
    let mut checkpoint = saved.map(|s| s.checkpoint);
    let since = match args.since {
        Some(d) => Some(
            SystemTime::now()
                .checked_sub(d.0)
                .ok_or("--since: too far back")?,
        ),
        None => None,
    };
    let mut left = args.max_records;
    let mut progress = Progress::new();
    let mut backoff = Duration::from_secs(1);
    // SIGTERM or Ctrl-C stops it while it waits (for a message, or to reconnect), never
    // between writing records and their checkpoint (no await lies there): the output and
    // the checkpoint file then agree.
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        if left.is_some_and(|n| n <= 0) {
            return Ok(());
        }
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
        match outcome {
            Ok(()) => return Ok(()),
            Err(Failure::Retry(why)) => {
                eprintln!("{why}; following again in {backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut stop => return Ok(()),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(Failure::Fatal(why)) => return Err(why),
        }
    }
}

enum Failure {
    /// Worth another call from the checkpoint (the gateway restarting, a rate limit).
    Retry(String),
    Fatal(String),
}

async fn follow_once(
    args: &FollowArgs,
    out: &mut Output,
    checkpoint: &mut Option<String>,
    since: Option<SystemTime>,
    left: &mut Option<i64>,
    progress: &mut Progress,
) -> Result<(), Failure> {
    let mut client = connect(&args.connect).await.map_err(Failure::Retry)?;
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
    });
    authorize(&mut request, args.connect.authorization.as_ref()).map_err(Failure::Fatal)?;
    let mut messages = client.follow(request).await.map_err(classify)?.into_inner();
    loop {
        let Some(message) = messages.message().await.map_err(classify)? else {
            return Ok(());
        };
        out.write(&message.records, args.format)
            .map_err(|e| Failure::Fatal(format!("output: {e}")))?;
        let output_bytes = out
            .flush()
            .map_err(|e| Failure::Fatal(format!("output: {e}")))?;
        if let Some(path) = &args.checkpoint_file {
            let saved = Saved {
                checkpoint: message.checkpoint.clone(),
                output_bytes,
            };
            write_saved(path, &saved).map_err(|e| {
                Failure::Fatal(format!("--checkpoint-file {}: {e}", path.display()))
            })?;
        }
        *checkpoint = Some(message.checkpoint);
        if let Some(n) = left.as_mut() {
            *n -= message.records.len() as i64;
        }
        progress.update(&message.records);
    }
}

/// Errors a new call may cure are retried; the rest end the command.
fn classify(s: tonic::Status) -> Failure {
    let why = format!("{:?}: {}", s.code(), s.message());
    match s.code() {
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Unknown
        | Code::Internal => Failure::Retry(why),
        _ => Failure::Fatal(why),
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

fn read_saved(path: &Path) -> Result<Option<Saved>, String> {
    match fs::read(path) {
        Ok(b) if b.is_empty() => Ok(None),
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            format!(
                "--checkpoint-file {}: not a checkpoint: {e}",
                path.display()
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("--checkpoint-file {}: {e}", path.display())),
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

/// Where records go.
enum Output {
    File(io::BufWriter<File>),
    Stdout(io::Stdout),
}

impl Output {
    /// Opens `path` for appending, first cut back to the length the checkpoint recorded
    /// (what was written after it is written again).
    fn open(path: Option<&Path>, saved: Option<&Saved>) -> Result<Self, String> {
        let Some(path) = path else {
            return Ok(Self::Stdout(io::stdout()));
        };
        let err = |e: io::Error| format!("--output {}: {e}", path.display());
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        match saved.and_then(|s| s.output_bytes) {
            Some(at) if at < len => file.set_len(at).map_err(err)?,
            Some(at) if at > len => {
                return Err(format!(
                    "--output {}: shorter ({len} bytes) than when the checkpoint was taken \
                     ({at} bytes); is it the same file?",
                    path.display()
                ));
            }
            _ => {}
        }
        Ok(Self::File(io::BufWriter::new(file)))
    }

    fn write(&mut self, records: &[pb::AuditRecord], format: Format) -> io::Result<()> {
        let w: &mut dyn Write = match self {
            Self::File(f) => f,
            Self::Stdout(s) => s,
        };
        for r in records {
            let json = r.to_json();
            match format {
                Format::Ndjson => serde_json::to_writer(&mut *w, &json)?,
                Format::Json => serde_json::to_writer_pretty(&mut *w, &json)?,
            }
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Flushes to stable storage; the file's length after it.
    fn flush(&mut self) -> io::Result<Option<u64>> {
        match self {
            Self::File(f) => {
                f.flush()?;
                f.get_ref().sync_data()?;
                Ok(Some(f.get_ref().metadata()?.len()))
            }
            Self::Stdout(s) => s.flush().map(|_| None),
        }
    }
}

/// Records, rate and lag behind now, on stderr when it is a terminal.
struct Progress {
    on: bool,
    started: Instant,
    records: u64,
}

impl Progress {
    fn new() -> Self {
        Self {
            on: io::stderr().is_terminal(),
            started: Instant::now(),
            records: 0,
        }
    }

    fn update(&mut self, records: &[pb::AuditRecord]) {
        self.records += records.len() as u64;
        if !self.on {
            return;
        }
        let rate = self.records as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let behind = records.last().map(|r| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            Duration::from_millis(now.saturating_sub(r.creation_date).max(0) as u64)
        });
        let behind = behind.map_or_else(|| "-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()));
        eprint!(
            "\r{} records, {rate:.0}/s, last record {behind} behind now   ",
            self.records
        );
    }
}
