//! A synthetic Confluence audit API for demos, tests and benchmarks: a deterministic,
//! arbitrarily large, optionally growing log, served over HTTP/1.1 with scripted or random
//! faults, latency and authorization, at both of Confluence's audit endpoints:
//!
//! - `GET {base}/rest/api/audit/since?number=&units=`: a window back from now;
//! - `GET {base}/rest/api/audit?startDate=&endDate=` (`getAuditRecords`): creation dates from
//!   `startDate` to `endDate`, epoch milliseconds, both inclusive, either open.
//!
//! Both take `searchString`, `start` and `limit`, list newest first, and share every behaviour
//! below; [`RecordedRequest::endpoint`] tells which one a request hit.
//!
//! With [`Flavor::DataCenter`] it serves Data Center's `GET {base}/rest/auditing/1.0/events`
//! instead (the Cloud endpoints answer 404, and with Cloud it answers 404): `from`/`to` ISO
//! 8601 instants, `offset`, `pageCursor` (`"<epochMillis>,<id>"`, a keyset bound on a hidden
//! id that grows with insertion), `limit` (default 200; above 10000 a plain-text 500) and
//! `search`, newest first by (timestamp, id), as `{"entities":[…],"pagingInfo":{…}}`. It
//! lists the same log, so arrivals, deletions, ties, the `limit` cap, cut bodies and faults
//! apply to it too; its 429s carry Data Center's rate-limit headers, and a bad bearer token
//! runs as anonymous and gets 403 ([`SimulatorConfig::personal_access_token`]). Both
//! flavors serve `GET {base}/rest/api/audit/retention` ([`SimulatorConfig::retention`]).
//!
//! It refuses `limit` over 1000, as Confluence documents ([`SimulatorConfig::strict_limit`]),
//! and can misbehave as Confluence is allowed to, each behaviour off by default: records
//! sharing a millisecond listed in a fresh order by every request ([`SimulatorConfig::ties`]),
//! byte-identical duplicates ([`SimulatorConfig::duplicate_every`]), the oldest records deleted
//! while a client pages ([`SimulatorConfig::deletes_per_request`]), a capped `limit` echoed as
//! asked or left out ([`SimulatorConfig::limit_echo`]), and 200 bodies cut short
//! ([`SimulatorConfig::cut_rate`], [`Fault::Cut`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use confluence_sim::{Fault, Simulator, SimulatorConfig};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let sim = Simulator::start(SimulatorConfig::default(), listener).await?;
//! let throttled: Fault = "429:retry-after=2".parse().map_err(std::io::Error::other)?;
//! sim.push_faults([Fault::Reset, throttled]);
//! let url = format!("{}/rest/api/audit/since?limit=100", sim.base_url());
//! # let _ = url; Ok(()) }
//! ```
//!
//! The log can also grow by itself, records dated as they are created, in bursts sharing a
//! millisecond ([`SimulatorConfig::live`]), and a share of the added records can be listed
//! only some time after their `creationDate`, which they keep, as an eventually consistent
//! index does ([`SimulatorConfig::late_share`]). Both are seeded and created lazily when the
//! log is read, with no background task. For tests comparing what a client received with what
//! exists, [`SimulatorHandle::expected_records`] is the oracle (not yet visible records
//! included) and [`SimulatorHandle::stop_live`] stops the growth so a client can catch up.
//!
//! Records are generated from (seed, sequence number) on demand, never stored: see
//! [`render_page`] for the same bodies without a server, [`record_seq`] to identify a record.

pub mod cli;
mod data;
mod data_center;
mod dc_entity;
mod dc_query;
mod fault;
mod http;
mod instant;
mod live;
mod query;
mod retention;
mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_dc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use data::{PageSpec, RECORD_SPACING_MS, record_date_ms, record_seq, render_page};
pub use fault::Fault;
pub use retention::{Retention, RetentionUnit};
use state::Shared;

/// How a simulator starts. Settings a handle can change later say so.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// Records in the log at start (default 5000). The newest is dated at start time, older
    /// ones [`RECORD_SPACING_MS`] apart, so the default 3-MONTHS window holds them all up to
    /// 1,555,200 records.
    pub records: usize,
    /// Seed of the generated content (default 42): the same seed gives the same records.
    pub seed: u64,
    /// Path before `/rest/api` (default `"/wiki"`; `""` for a Data Center-style root).
    pub base_path: String,
    /// Server-side cap on `limit` (default none); answers report it as `limit_echo` says.
    pub max_limit: Option<u32>,
    /// With `max_limit`, the cap rises by one every this many audit requests (default
    /// none): a cap that differs between requests, never falling below a page it served.
    pub max_limit_rises_every: Option<u32>,
    /// How `/audit` applies `startDate`/`endDate` (default [`RangeBounds::Exact`], as
    /// documented).
    pub range_bounds: RangeBounds,
    /// What a page's `limit` says (default [`LimitEcho::Capped`], the limit applied; see
    /// [`SimulatorHandle::set_limit_echo`]).
    pub limit_echo: LimitEcho,
    /// Answer `limit` over 1000, the largest Confluence documents, with 400 and its JSON error
    /// body (default on).
    pub strict_limit: bool,
    /// Largest group of initial records sharing one `creationDate` millisecond, group sizes
    /// 1..=ties drawn from `seed` (default 0: each record its own millisecond). Any value
    /// above 1 also makes every request list each group of records sharing a millisecond
    /// (inserted batches included) in an order of its own, drawn from `seed` and the
    /// request's number. Groups are [`RECORD_SPACING_MS`] apart, so a window holds up to
    /// `ties` times more records.
    pub ties: u32,
    /// About one record in this many (default 0: none) is a byte-identical copy of the record
    /// before it, at the same millisecond: a distinct event that must be delivered too.
    pub duplicate_every: u32,
    /// Oldest records deleted before each audit request is served, faulted or not, as
    /// retention does (default 0; see [`SimulatorHandle::set_deletes_per_request`]).
    pub deletes_per_request: u32,
    /// Fraction (0..=1) of 200 answers whose body is cut: the full body's `Content-Length`,
    /// half the body, then the connection closed (default 0; see
    /// [`SimulatorHandle::set_cut_rate`]). Seeded by `seed`, so runs are reproducible.
    pub cut_rate: f64,
    /// Delay before answering each request, faults included except resets (default 0;
    /// see [`SimulatorHandle::set_latency`]).
    pub latency: Duration,
    /// Records added at the head before each audit request is served, faulted or not
    /// (default 0; see [`SimulatorHandle::set_inserts_per_request`]).
    pub inserts_per_request: u32,
    /// Fraction (0..=1) of audit requests that get a random transient fault, each kind
    /// equally likely: 500, 502 or 503 with a JSON body, 429 with `Retry-After: 0`, a reset,
    /// or a 200 cut short as [`Fault::Cut`] cuts it (default 0; see
    /// [`SimulatorHandle::set_fault_rate`]). Seeded by `seed`, so runs are reproducible.
    /// Scripted faults ([`SimulatorConfig::faults`]) give any single kind.
    pub fault_rate: f64,
    /// If set, the `Authorization` header must equal it exactly, else 401 (default none).
    pub required_authorization: Option<String>,
    /// Faults served one per audit request, in order, before any normal answer (default none;
    /// see [`SimulatorHandle::push_faults`]).
    pub faults: Vec<Fault>,
    /// Records created in real time, dated when they are created (default none; see
    /// [`Live`] and [`SimulatorHandle::stop_live`]).
    pub live: Option<Live>,
    /// Fraction (0..=1) of the records added after start (live, inserted per request or by
    /// [`SimulatorHandle::insert_records`]) that either endpoint lists only some time after
    /// their `creationDate`, which they keep (default 0). Seeded by `seed` and each record's
    /// sequence number.
    pub late_share: f64,
    /// How long after its `creationDate` a late record becomes visible at most: a delay in
    /// (0, late_by], in whole milliseconds (default 0: no record is late).
    pub late_by: Duration,
    /// Every record carries an unknown key `nested` holding a value this many JSON levels
    /// deep (objects and arrays in turn, a string `"bottom #<seq>"` innermost), and every
    /// record of odd sequence number the same as `author.operations` (default none).
    pub nested_depth: Option<usize>,
    /// Milliseconds the simulator's clock is ahead of the host's (negative: behind;
    /// default 0). Its `now` is the host's plus this: the `Date` header of every answer,
    /// the dates of the records it holds at start and of those it creates while running
    /// (live, inserted), and where a `/since` window begins all follow it, as with a
    /// Confluence whose clock is off.
    pub clock_offset: i64,
    /// How many audit requests at once the site tolerates, as a rate limit that counts
    /// requests in flight (default none: any number).
    pub concurrency: Option<Concurrency>,
    /// Which API the site serves (default [`Flavor::Cloud`]); see [`Flavor`].
    pub flavor: Flavor,
    /// What `GET {base}/rest/api/audit/retention` answers (default 3 MONTHS; see
    /// [`SimulatorHandle::set_retention`]). Only reported: records older than it are not
    /// deleted for it ([`SimulatorConfig::deletes_per_request`] deletes).
    pub retention: Retention,
    /// With [`Flavor::DataCenter`], a personal access token also accepted as
    /// `Authorization: Bearer <token>`, besides [`SimulatorConfig::required_authorization`]
    /// (default none). Setting it makes the Data Center site require a credential.
    pub personal_access_token: Option<String>,
    /// An `Authorization` header that authenticates but lacks audit permission (default
    /// none): answered 403, with an empty body on the Cloud endpoints and retention, with
    /// Data Center's JSON body on `/rest/auditing/1.0/events`.
    pub forbidden_authorization: Option<String>,
}

/// Which Confluence API the simulator serves. Both list the same log: same records, dates,
/// arrivals and deletions, so a test can compare what either dialect delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// Confluence Cloud: `/rest/api/audit/since` and `/rest/api/audit`; the Data Center
    /// endpoint answers 404.
    #[default]
    Cloud,
    /// Confluence Data Center 7.5+: `/rest/auditing/1.0/events`; the Cloud endpoints answer
    /// 404 (retention excepted).
    DataCenter,
}

/// A site that limits requests in flight: past `near` at once, 200s carry
/// `X-RateLimit-NearLimit: true` (as Atlassian's do before its limit); past `allowed`,
/// requests are refused with 429 and `Retry-After: 1`. Counted by
/// [`SimulatorHandle::over_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concurrency {
    /// Most requests in flight answered normally.
    pub allowed: usize,
    /// Past this many in flight (at most `allowed`), answers say the limit is near.
    pub near: usize,
}

/// Records created in real time, as on a busy site: bursts of 1..=`burst` records sharing a
/// millisecond (sizes uniform), the bursts a Poisson process at `per_second` records a second
/// on average, each in a millisecond of its own, all drawn from [`SimulatorConfig::seed`].
/// They are created when the simulator next looks at its log (a request, or a handle method
/// that reads it), each dated at its scheduled millisecond, so no background task runs.
/// As each burst takes a millisecond of its own, the rate tops out at about 1000 bursts a
/// second. With [`SimulatorConfig::duplicate_every`] a duplicate shares the date of the record
/// it copies, which can make a group one larger than `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Live {
    /// Average records created per second; 0 (or not finite) creates none.
    pub per_second: f64,
    /// Largest burst of records sharing one millisecond (0 counts as 1).
    pub burst: u32,
}

impl Default for SimulatorConfig {
    fn default() -> SimulatorConfig {
        SimulatorConfig {
            records: 5000,
            seed: 42,
            base_path: "/wiki".to_owned(),
            max_limit: None,
            max_limit_rises_every: None,
            range_bounds: RangeBounds::Exact,
            limit_echo: LimitEcho::Capped,
            strict_limit: true,
            ties: 0,
            duplicate_every: 0,
            deletes_per_request: 0,
            cut_rate: 0.0,
            latency: Duration::ZERO,
            inserts_per_request: 0,
            fault_rate: 0.0,
            required_authorization: None,
            faults: Vec::new(),
            live: None,
            late_share: 0.0,
            late_by: Duration::ZERO,
            nested_depth: None,
            clock_offset: 0,
            concurrency: None,
            flavor: Flavor::Cloud,
            retention: Retention::default(),
            personal_access_token: None,
            forbidden_authorization: None,
        }
    }
}

/// What a page's `limit` says; with [`SimulatorConfig::max_limit`] set, the last two let a
/// capped page look like the window's last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LimitEcho {
    /// The limit applied, after the cap (as Confluence documents it).
    #[default]
    Capped,
    /// The limit asked for, whatever the cap.
    Requested,
    /// Neither `limit` nor `size` in the body.
    Omitted,
}

/// How the `/audit` range listing applies its `startDate`/`endDate` bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RangeBounds {
    /// To the millisecond, both ends inclusive (as documented).
    #[default]
    Exact,
    /// To the second: the range widened to whole seconds, so records up to 999 ms outside
    /// the range asked are listed.
    Seconds,
    /// Not at all: every record of the log, as a server that does not know the parameters.
    Ignored,
}

/// Which audit endpoint a request's path names, whether the simulator's [`Flavor`] serves
/// it or answered 404.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditEndpoint {
    /// `GET {base}/rest/api/audit/since`: `number` `units` back from now (Cloud).
    Since,
    /// `GET {base}/rest/api/audit`: `startDate..=endDate` in epoch milliseconds (Cloud).
    Range,
    /// `GET {base}/rest/auditing/1.0/events`: Data Center's listing.
    Events,
    /// `GET {base}/rest/api/audit/retention`: the retention period (both flavors).
    Retention,
}

impl AuditEndpoint {
    /// Whether it lists records (all but [`AuditEndpoint::Retention`]): only listings get
    /// faults, grow or shrink the log and count in flight.
    pub fn lists(self) -> bool {
        self != AuditEndpoint::Retention
    }

    /// Whether a simulator of `flavor` serves it (else it answers 404).
    pub fn served_by(self, flavor: Flavor) -> bool {
        match self {
            AuditEndpoint::Since | AuditEndpoint::Range => flavor == Flavor::Cloud,
            AuditEndpoint::Events => flavor == Flavor::DataCenter,
            AuditEndpoint::Retention => true,
        }
    }
}

/// One request as the simulator received it, for tests to inspect.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Path without the query, e.g. `"/wiki/rest/api/audit/since"`.
    pub path: String,
    /// The audit endpoint the path names, `None` for any other path; also set when this
    /// simulator's [`Flavor`] does not serve it and answered 404.
    pub endpoint: Option<AuditEndpoint>,
    /// The query exactly as received, still percent-encoded.
    pub raw_query: Option<String>,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    /// The `Authorization` header, verbatim.
    pub authorization: Option<String>,
    /// All headers in received order (names lower-case; values lossily decoded as UTF-8).
    pub headers: Vec<(String, String)>,
    /// When the request was received, so tests can check when a client called.
    pub received: std::time::Instant,
}

impl RecordedRequest {
    /// The (first) value of the query parameter `name`, decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Serves `config` on `listener` from a spawned task until [`SimulatorHandle::shutdown`]
    /// is called or the last clone of the returned handle is dropped (so keep it alive).
    /// Either stops accepting, and lets each open connection finish its current request
    /// before closing it. Must be called inside a Tokio runtime.
    pub async fn start(
        config: SimulatorConfig,
        listener: TcpListener,
    ) -> std::io::Result<SimulatorHandle> {
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}{}", config.base_path.trim_end_matches('/'));
        let shared = Arc::new(Shared::new(config, base_url));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        Ok(SimulatorHandle {
            inner: Arc::new(HandleInner { addr, shared, stop }),
        })
    }
}

/// Controls and observes a running simulator. Clones share it; dropping the last one stops it.
#[derive(Clone)]
pub struct SimulatorHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropped with the last handle, which the server sees as a stop too.
    stop: watch::Sender<bool>,
}

impl SimulatorHandle {
    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://{addr}{base_path}` without a trailing slash, e.g. `http://127.0.0.1:PORT/wiki`:
    /// the `{base}` a Confluence client is configured with.
    pub fn base_url(&self) -> String {
        self.inner.shared.base_url.clone()
    }

    /// Appends scripted faults, served first-in first-out, one per audit request.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.shared.lock().faults.extend(faults);
    }

    /// Changes the fraction of audit requests that get a random transient fault.
    pub fn set_fault_rate(&self, rate: f64) {
        self.inner.shared.lock().fault_rate = rate;
    }

    /// Changes the delay before each answer.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.shared.lock().latency = latency;
    }

    /// Changes how many records are added at the head before each audit request.
    pub fn set_inserts_per_request(&self, n: u32) {
        self.inner.shared.lock().inserts_per_request = n;
    }

    /// Adds `n` records at the head now, dated now (never before the current newest), after
    /// the live records due; a share of them late as [`SimulatorConfig::late_share`] says.
    /// Now is the simulator's clock ([`SimulatorConfig::clock_offset`]).
    pub fn insert_records(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        let now = self.inner.shared.now_ms();
        let mut state = self.inner.shared.lock();
        state.catch_up(now);
        state.add(n, now);
    }

    /// Changes how many of the oldest records are deleted before each audit request.
    pub fn set_deletes_per_request(&self, n: u32) {
        self.inner.shared.lock().deletes_per_request = n;
    }

    /// Deletes up to `n` of the oldest records now.
    pub fn delete_records(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.inner.shared.lock().log.delete_oldest(n);
    }

    /// Changes what `GET {base}/rest/api/audit/retention` answers.
    pub fn set_retention(&self, retention: Retention) {
        self.inner.shared.lock().retention = retention;
    }

    /// 200 pages `endpoint` served with no record (asked past the end, or an empty
    /// window), cut ones included.
    pub fn empty_page_count(&self, endpoint: AuditEndpoint) -> usize {
        let state = self.inner.shared.lock();
        state.empty_pages.get(&endpoint).copied().unwrap_or(0)
    }

    /// Which API this simulator serves.
    pub fn flavor(&self) -> Flavor {
        self.inner.shared.flavor
    }

    /// Changes what a page's `limit` says.
    pub fn set_limit_echo(&self, echo: LimitEcho) {
        self.inner.shared.lock().limit_echo = echo;
    }

    /// Changes the fraction of 200 answers whose body is cut short.
    pub fn set_cut_rate(&self, rate: f64) {
        self.inner.shared.lock().cut_rate = rate;
    }

    /// Records in the log now, live ones due included, visible or not.
    pub fn record_count(&self) -> usize {
        let now = self.inner.shared.now_ms();
        let mut state = self.inner.shared.lock();
        state.catch_up(now);
        usize::try_from(state.log.count()).unwrap_or(usize::MAX)
    }

    /// Requests to a listing this simulator serves (`/since` and `/audit`, or Data Center's
    /// `/events`) received so far, faulted ones included.
    pub fn request_count(&self) -> usize {
        self.inner.shared.lock().audit_requests
    }

    /// Requests whose path names `endpoint` received so far, faulted ones and those answered
    /// 404 because this [`Flavor`] does not serve it included.
    pub fn request_count_of(&self, endpoint: AuditEndpoint) -> usize {
        let state = self.inner.shared.lock();
        let hit = |request: &&RecordedRequest| request.endpoint == Some(endpoint);
        state.requests.iter().filter(hit).count()
    }

    /// The oracle: every record dated in `from_ms..=to_ms` (epoch ms) that exists now, not
    /// yet visible ones included, and, once live creation is stopped
    /// ([`SimulatorHandle::stop_live_at`]), the live records still to be created up to the
    /// stop. Each as (`creationDate`, [`record_seq`] of its JSON), oldest first, so what a
    /// client received can be compared with it as a multiset: a duplicate appears as often
    /// as it was created. Records deleted by retention are left out; records to be created
    /// assume no other record is inserted before them (other inserts would renumber them).
    pub fn expected_records(&self, from_ms: i64, to_ms: i64) -> Vec<(i64, u64)> {
        let now = self.inner.shared.now_ms();
        let (mut log, live) = {
            let mut state = self.inner.shared.lock();
            state.catch_up(now);
            // Only a stopped schedule has an end to run to.
            let live = state.live.clone().filter(|live| live.stop_ms().is_some());
            (state.log.clone(), live)
        };
        if let Some(mut live) = live {
            for (at_ms, n) in live.due(i64::MAX) {
                log.insert(n, at_ms);
            }
        }
        let first = log.first_since(from_ms);
        let upper = to_ms
            .checked_add(1)
            .map_or(log.end(), |after| log.first_since(after));
        (first..upper.max(first))
            .map(|seq| (log.date(seq), log.content_seq(seq)))
            .collect()
    }

    /// The records created but not visible yet, as (`creationDate`, [`record_seq`], visible
    /// from epoch ms), in creation order: what [`SimulatorConfig::late_share`] holds back now.
    pub fn invisible_records(&self) -> Vec<(i64, u64, i64)> {
        let now = self.inner.shared.now_ms();
        let mut state = self.inner.shared.lock();
        state.catch_up(now);
        let state = &*state;
        let describe = |&(seq, visible_ms): &(u64, i64)| {
            (state.log.date(seq), state.log.content_seq(seq), visible_ms)
        };
        state.late.iter().map(describe).collect()
    }

    /// Now on the simulator's clock (epoch ms): the host's plus
    /// [`SimulatorConfig::clock_offset`].
    pub fn now_ms(&self) -> i64 {
        self.inner.shared.now_ms()
    }

    /// Stops live creation now: the records due are created, no later one will be. Returns
    /// the stop time (epoch ms on the simulator's clock), after which no live record is
    /// dated. Does nothing but return the time without [`SimulatorConfig::live`].
    pub fn stop_live(&self) -> i64 {
        let now = self.inner.shared.now_ms();
        self.stop_live_at(now);
        now
    }

    /// Stops live creation after `at_ms` (epoch ms, may be in the future): records scheduled
    /// up to it are still created when due, none after it (records already created stay).
    /// An earlier stop stays.
    pub fn stop_live_at(&self, at_ms: i64) {
        let now = self.inner.shared.now_ms();
        let mut state = self.inner.shared.lock();
        if let Some(live) = state.live.as_mut() {
            live.stop_at(at_ms);
        }
        state.catch_up(now);
    }

    /// The most audit requests (either endpoint) that were in flight at once (admitted, their
    /// answer not yet done) since the simulator started: what a client's concurrency cap
    /// allowed.
    pub fn max_in_flight(&self) -> usize {
        self.inner.shared.lock().max_in_flight
    }

    /// Audit requests refused with 429 for going past [`Concurrency::allowed`], and those
    /// answered near the limit ([`Concurrency::near`]), since the simulator started.
    pub fn over_limit(&self) -> (usize, usize) {
        let state = self.inner.shared.lock();
        (state.over_limit, state.near_limit)
    }

    /// The requests for pages of the log received so far (any listing endpoint, faulted
    /// ones and 404s of another flavor's included), in arrival order: what a client's
    /// paging asked. Reads of the retention setting and of unknown paths are left out
    /// ([`SimulatorHandle::all_requests`] has them).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let state = self.inner.shared.lock();
        state
            .requests
            .iter()
            .filter(|r| r.endpoint.is_some_and(AuditEndpoint::lists))
            .cloned()
            .collect()
    }

    /// Every request received so far, any path, in arrival order.
    pub fn all_requests(&self) -> Vec<RecordedRequest> {
        self.inner.shared.lock().requests.clone()
    }

    /// Stops accepting connections; open ones finish their current request, then close.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Resolves once [`SimulatorHandle::shutdown`] was called (for a simulator run on a
    /// runtime of its own, which may end then).
    pub async fn stopped(&self) {
        let mut stop = self.inner.stop.subscribe();
        let _ = stop.wait_for(|stopped| *stopped).await;
    }
}

impl std::fmt::Debug for SimulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatorHandle")
            .field("base_url", &self.inner.shared.base_url)
            .finish_non_exhaustive()
    }
}

/// Accepts connections until told to stop (or every handle is gone).
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            // A stop wins over a pending connection, so none is accepted after it.
            biased;
            () = stop_requested(&mut stopped) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(
                    stream,
                    Arc::clone(&shared),
                    stopped.clone(),
                ));
            }
            Err(error) => {
                // Typically out of file descriptors: pause rather than spin.
                tracing::warn!(%error, "simulator accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!(base_url = %shared.base_url, "simulator stopped accepting");
}

/// Serves one keep-alive connection; on stop, finishes the request in flight and closes.
async fn serve_connection(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    // Small answers would otherwise wait for delayed ACKs (Nagle), skewing latency benches.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "simulator could not set TCP_NODELAY");
    }
    let result = {
        let service = service_fn(move |request| http::handle(Arc::clone(&shared), request));
        // hyper only borrows the socket, so a cut answer can be written on it once hyper has
        // given the connection up.
        let connection = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(&mut stream), service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => result,
            () = stop_requested(&mut stopped) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    };
    let Err(error) = result else { return };
    if let Some(raw) = http::cut_answer(&error) {
        // A hyper service cannot send fewer body bytes than its Content-Length (hyper aborts
        // the connection, dropping what it had buffered), so a cut answer goes out raw.
        if let Err(error) = write_and_close(&mut stream, raw).await {
            tracing::debug!(%error, "simulator could not write a cut answer");
        }
        return;
    }
    // Other errors are clients going away or simulated resets: nothing to act on.
    tracing::debug!(%error, "simulator connection ended");
}

async fn write_and_close(stream: &mut TcpStream, raw: &[u8]) -> std::io::Result<()> {
    stream.write_all(raw).await?;
    stream.shutdown().await
}

/// Resolves once `shutdown` was called or every handle dropped.
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, i.e. every handle dropped: a stop too.
    let _ = stopped.wait_for(|stop| *stop).await;
}
