//! Load from outside the bench's process: h2load (nghttp2's HTTP/2 load generator) sending
//! gRPC calls to servers that run as processes of their own, the gateway binary and a
//! bare tonic server. An in-process client shares the two cores with the server it
//! measures and so dilutes the server's own cost; h2load costs little per call and runs
//! apart.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use audit_gateway::{
    pb::{self, audit_service_server::AuditServiceServer},
    testing::process::{TempDir, finish_within},
};
use bytes::{Buf, Bytes};
use http::uri::PathAndQuery;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

use super::hit::Bare;

/// The gRPC method every h2load call asks for.
const GET_SINCE: &str = "/confluence.audit.v1.AuditService/GetSince";

/// The environment variable that makes the bench executable serve the bare reference
/// server instead of measuring: the path of a file holding the page it answers with.
const BARE_PAGE: &str = "AUDIT_BENCH_BARE_PAGE";

/// Whether h2load is on the PATH (`scripts/bench` installs it).
pub fn available() -> bool {
    Command::new("h2load")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The files h2load reads and writes: the request body and the per-request logs.
pub struct Files {
    dir: TempDir,
    body: PathBuf,
}

impl Files {
    /// A request body of one gRPC frame holding `GetSinceRequest { limit }`: the
    /// compressed flag (0), the message's length (4 bytes, big-endian), the message.
    pub fn get_since(limit: i32) -> Self {
        let dir = TempDir::new("h2load");
        let message = prost::Message::encode_to_vec(&pb::GetSinceRequest {
            limit: Some(limit),
            ..Default::default()
        });
        let len = u32::try_from(message.len()).expect("a small request");
        let mut frame = vec![0u8];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&message);
        let body = dir.path().join("get-since.grpc");
        std::fs::write(&body, frame).expect("write the request body");
        Self { dir, body }
    }
}

/// The exact bytes of the page `addr` answers to `GetSinceRequest { limit }`, through a
/// real gRPC client: a decoded and re-encoded page can differ (map order), so the bare
/// server gets these bytes, and the check that it answers them compares them exactly.
pub async fn page_bytes(addr: SocketAddr, limit: i32) -> Bytes {
    let mut client = super::grpc(addr).await;
    client.ready().await.expect("ready");
    let request = tonic::Request::new(pb::GetSinceRequest {
        limit: Some(limit),
        ..Default::default()
    });
    client
        .unary(request, PathAndQuery::from_static(GET_SINCE), RawCodec)
        .await
        .expect("GetSince answered")
        .into_inner()
}

/// Encodes requests with prost and leaves answers as their bytes.
struct RawCodec;

impl Codec for RawCodec {
    type Encode = pb::GetSinceRequest;
    type Decode = Bytes;
    type Encoder = ProstEncoder<pb::GetSinceRequest>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(Default::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// A message's bytes as they came.
struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What one h2load run counted.
#[derive(Clone, Copy, Debug)]
pub struct Counted {
    /// Requests answered 2xx per second (of the measured duration, after warm-up).
    pub rate: f64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed (reset, timed out, ...) or were answered other than 2xx.
    pub failed: u64,
    /// Response body bytes. Exact only without warm-up: h2load counts the warm-up's
    /// bytes but not its requests.
    pub data: u64,
}

/// `calls` calls, `-c connections -m streams`, without warm-up, so that every byte
/// counts: the check, before timing, that every answer is the page (a gRPC error comes
/// back as HTTP 200 too, with no body, so it shows only in the byte count).
pub fn counted(
    files: &Files,
    addr: SocketAddr,
    connections: usize,
    streams: usize,
    calls: u64,
) -> Counted {
    let out = run(
        files,
        addr,
        &[
            "-n".into(),
            calls.to_string(),
            "-c".into(),
            connections.to_string(),
            "-m".into(),
            streams.to_string(),
        ],
        Duration::from_secs(30),
    );
    parse_summary(&out).unwrap_or_else(|| panic!("h2load's summary not understood:\n{out}"))
}

/// `-c connections -m streams` calls in a closed loop against `addr` for `duration`,
/// after half a second of warm-up (connections open, not counted).
pub fn closed(
    files: &Files,
    addr: SocketAddr,
    connections: usize,
    streams: usize,
    duration: Duration,
) -> Counted {
    let out = run(
        files,
        addr,
        &[
            "-c".into(),
            connections.to_string(),
            "-m".into(),
            streams.to_string(),
            "-D".into(),
            format!("{}ms", duration.as_millis()),
            "--warm-up-time".into(),
            WARM_UP.into(),
        ],
        duration,
    );
    parse_summary(&out).unwrap_or_else(|| panic!("h2load's summary not understood:\n{out}"))
}

/// h2load's warm-up before each timed run: connections open, calls not counted.
const WARM_UP: &str = "500ms";

/// What one open-loop h2load run recorded.
pub struct Open {
    /// Each 2xx answer's latency, from when h2load sent the request.
    pub latencies: Vec<Duration>,
    /// Requests that failed or were answered other than 2xx, by h2load's summary.
    pub failed: u64,
    /// Requests still in flight when the run ended (logged with status -1).
    pub cut_off: usize,
}

/// An open loop at `per_client` requests/s on each of `clients` connections against
/// `addr` for `duration` (h2load's `--rps`), after half a second of warm-up; each
/// request's latency from h2load's `--log-file`. Up to 16 calls may be in flight per
/// connection, far more than the rate needs, so requests are never held back waiting
/// for a free stream.
pub fn open(
    files: &Files,
    addr: SocketAddr,
    clients: usize,
    per_client: f64,
    duration: Duration,
) -> Open {
    // h2load appends to its log file: a fresh one for every run.
    let log = files.dir.path().join(format!("open-{}.log", addr.port()));
    let _ = std::fs::remove_file(&log);
    let out = run(
        files,
        addr,
        &[
            "-c".into(),
            clients.to_string(),
            "-m".into(),
            "16".into(),
            "--rps".into(),
            format!("{per_client:.1}"),
            "--log-file".into(),
            log.display().to_string(),
            "-D".into(),
            format!("{}ms", duration.as_millis()),
            "--warm-up-time".into(),
            WARM_UP.into(),
        ],
        duration,
    );
    let text = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("h2load's log file ({e}); its output:\n{out}"));
    let summary =
        parse_summary(&out).unwrap_or_else(|| panic!("h2load's summary not understood:\n{out}"));
    let (mut latencies, mut cut_off) = (Vec::new(), 0);
    // Columns: start (µs since the epoch), HTTP status (-1: not answered), µs to the
    // response's end. A stream still open when the run ends is logged with -1 but not
    // counted as failed in the summary, which counts the rest.
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        match (cols.get(1), cols.get(2).and_then(|c| c.parse::<u64>().ok())) {
            (Some(&"200"), Some(us)) => latencies.push(Duration::from_micros(us)),
            (Some(&"-1"), _) => cut_off += 1,
            _ => {}
        }
    }
    assert!(
        !latencies.is_empty(),
        "h2load logged no answered request; its output:\n{out}"
    );
    Open {
        latencies,
        failed: summary.failed,
        cut_off,
    }
}

/// Runs h2load (one thread) with `args` against `addr`'s `GetSince`, sending `files`'
/// request body, and returns its standard output; panics when it fails or has not ended
/// 30 s after `expected`.
fn run(files: &Files, addr: SocketAddr, args: &[String], expected: Duration) -> String {
    let child = Command::new("h2load")
        .args(args)
        .args([
            "-t",
            "1",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-d",
        ])
        .arg(&files.body)
        .arg(format!("http://{addr}{GET_SINCE}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("h2load runs (scripts/bench installs nghttp2-client)");
    let done = finish_within(child, expected + Duration::from_secs(30));
    assert!(
        done.status.is_some_and(|s| s.success()),
        "h2load failed ({:?}):\n{}\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    done.stdout
}

/// Reads h2load's summary: "finished in 3.00s, 12345.67 req/s, ...", "requests: N total,
/// N started, N done, N succeeded, N failed, ...", "status codes: N 2xx, ..." and
/// "traffic: ... total, ... headers (...), 1.2GB (1234) data".
fn parse_summary(out: &str) -> Option<Counted> {
    let line = |prefix: &str| out.lines().find(|l| l.starts_with(prefix));
    // The number before `word` in `text`, e.g. ("12 done, 3 failed", "failed") -> 3.
    let before = |text: &str, word: &str| -> Option<u64> {
        let words: Vec<&str> = text.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let at = words.iter().position(|w| *w == word)?;
        words.get(at.checked_sub(1)?)?.parse().ok()
    };
    let finished: Vec<&str> = line("finished in")?.split([' ', ',']).collect();
    let at = finished.iter().position(|w| *w == "req/s")?;
    let rate = finished.get(at.checked_sub(1)?)?.parse().ok()?;
    let failed = before(line("requests:")?, "failed")?;
    let codes = line("status codes:")?;
    let ok = before(codes, "2xx")?;
    let other = before(codes, "3xx")? + before(codes, "4xx")? + before(codes, "5xx")?;
    // The exact byte count in parentheses before "data".
    let traffic = line("traffic:")?;
    let data = traffic[..traffic.find(") data")?]
        .rsplit('(')
        .next()?
        .parse()
        .ok()?;
    Some(Counted {
        rate,
        ok,
        // Not `done - 2xx`: at a timed run's phase boundaries h2load counts a few
        // statuses on one side and their requests on the other.
        failed: failed + other,
        data,
    })
}

/// A server running as a process of its own, killed on drop. The bare server also exits
/// when its standard input closes, so it cannot outlive a bench that panicked.
pub struct Process {
    child: Child,
    _stdin: Option<ChildStdin>,
    /// Where it serves gRPC.
    pub addr: SocketAddr,
}

impl Process {
    /// Takes over `child` (e.g. the gateway binary from `harness::binary`), serving at `addr`.
    pub fn adopt(child: Child, addr: SocketAddr) -> Self {
        Self {
            child,
            _stdin: None,
            addr,
        }
    }

    /// The process's id, for its CPU time.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts this bench executable again as the bare reference server answering `page`
/// (see [`serve_bare_if_asked`]) and reads the address it prints.
pub fn spawn_bare(files: &Files, page: &Bytes) -> Process {
    let path = files.dir.path().join("page.pb");
    std::fs::write(&path, page).expect("write the page");
    let exe = std::env::current_exe().expect("the bench's executable");
    let mut child = Command::new(exe)
        .env(BARE_PAGE, &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the bench executable runs as the bare server");
    let stdin = child.stdin.take().expect("stdin piped");
    let mut line = String::new();
    // Bounded: the line comes once it listens, or EOF if it dies first.
    BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .expect("read the bare server's address");
    let addr = line.trim().parse().unwrap_or_else(|_| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the bare server printed no address: {line:?}")
    });
    Process {
        child,
        _stdin: Some(stdin),
        addr,
    }
}

/// When started by [`spawn_bare`]: serves the bare tonic `AuditService` (the page from the
/// file named, nothing else) on a free loopback port, prints the address, and exits when
/// standard input closes; never returns then. Otherwise returns at once.
pub fn serve_bare_if_asked() {
    let Some(path) = std::env::var_os(BARE_PAGE) else {
        return;
    };
    let page = Bytes::from(std::fs::read(Path::new(&path)).expect("read the page"));
    // The parent closes our stdin by exiting or dropping its end.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    // The same runtime as the gateway binary's: multi-threaded, one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        let served = tonic::transport::Server::builder()
            .add_service(AuditServiceServer::new(Bare(page)))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await;
        eprintln!("bare server ended: {served:?}");
    });
    std::process::exit(1);
}

/// Fields `from..from + n` (numbered as proc(5) does, from 1) of /proc/PID/stat.
fn stat_fields(pid: u32, from: usize, n: usize) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .skip(from - 3)
        .take(n)
        .filter_map(|f| f.parse().ok())
        .collect()
}

/// CPU time (user + system) `pid` has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    // utime and stime, fields 14 and 15, in clock ticks.
    let ticks: u64 = stat_fields(pid, 14, 2).iter().sum();
    // SAFETY: sysconf reads a constant of the system; no memory is shared.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / hz)
}

/// Page faults `pid` has taken so far that needed no I/O (minflt, field 10): each is
/// fresh memory the kernel mapped in.
pub fn minor_faults(pid: u32) -> u64 {
    stat_fields(pid, 10, 1).first().copied().unwrap_or(0)
}
