//! State shared by the connections of one simulator and its handles.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::data::{Log, listing_order};
use super::data_center::AUDIT_EVENTS;
use super::http::{AUDIT_RANGE, AUDIT_RETENTION, AUDIT_SINCE};
use super::live::{Lateness, LiveClock};
use super::{
    AuditEndpoint, Concurrency, Fault, Flavor, LimitEcho, RangeBounds, RecordedRequest, Retention,
    SimulatorConfig,
};

/// Settings fixed at start, and the mutable state behind one lock.
pub(crate) struct Shared {
    /// `{base_path}/rest/api/audit/since`.
    pub(crate) since_path: String,
    /// `{base_path}/rest/api/audit`.
    pub(crate) range_path: String,
    /// `{base_path}/rest/auditing/1.0/events`.
    events_path: String,
    /// `{base_path}/rest/api/audit/retention`.
    retention_path: String,
    /// Which API is served.
    pub(crate) flavor: Flavor,
    /// Data Center's PAT, accepted as `Bearer <token>`.
    pub(crate) personal_access_token: Option<String>,
    /// A credential that authenticates but may not read the audit log.
    pub(crate) forbidden_authorization: Option<String>,
    /// `http://{addr}{base_path}`.
    pub(crate) base_url: String,
    /// `base_path`, reported as `_links.context`.
    pub(crate) context: String,
    pub(crate) max_limit: Option<u32>,
    /// The cap rises by one every this many audit requests.
    pub(crate) max_limit_rises_every: Option<u32>,
    /// How `/audit` applies `startDate`/`endDate`.
    pub(crate) range_bounds: RangeBounds,
    /// Answer `limit` over 1000 with 400.
    pub(crate) strict_limit: bool,
    pub(crate) required_authorization: Option<String>,
    /// Seed of each request's listing order of ties; `None` lists them in sequence order.
    tie_order_seed: Option<u64>,
    /// Milliseconds the simulator's clock is ahead of the host's (`clock_offset`).
    clock_offset_ms: i64,
    state: Mutex<State>,
}

/// Everything a handle may change while the simulator runs.
pub(crate) struct State {
    /// Every record created so far, visible or not: read it after [`State::catch_up`].
    pub(crate) log: Log,
    /// Creates live records; `None` when the log does not grow by itself.
    pub(crate) live: Option<LiveClock>,
    /// Which added records are late; `None` when none is.
    lateness: Option<Lateness>,
    /// Records not visible yet as (sequence number, visible from epoch ms), in sequence order.
    pub(crate) late: Vec<(u64, i64)>,
    pub(crate) faults: VecDeque<Fault>,
    pub(crate) fault_rate: f64,
    pub(crate) latency: Duration,
    pub(crate) inserts_per_request: u32,
    pub(crate) deletes_per_request: u32,
    pub(crate) limit_echo: LimitEcho,
    pub(crate) cut_rate: f64,
    pub(crate) requests: Vec<RecordedRequest>,
    pub(crate) audit_requests: usize,
    /// 200 pages served with no record, per endpoint.
    pub(crate) empty_pages: HashMap<AuditEndpoint, usize>,
    /// What the retention endpoint answers.
    pub(crate) retention: Retention,
    /// Audit requests admitted and not yet answered (or dropped), and the most there
    /// have been at once: what a client's concurrency limit is checked against.
    pub(crate) in_flight: usize,
    pub(crate) max_in_flight: usize,
    /// The site's limit on requests in flight, and what it refused or warned of.
    concurrency: Option<Concurrency>,
    pub(crate) over_limit: usize,
    pub(crate) near_limit: usize,
    /// Decides random faults and cuts; seeded so a run with a rate is reproducible.
    rng: fastrand::Rng,
}

/// What one request is to get, decided under the lock and acted on outside it.
pub(crate) struct Admission {
    pub(crate) fault: Option<Fault>,
    /// Cut the body of the answer short if it is a 200.
    pub(crate) cut: bool,
    pub(crate) latency: Duration,
    /// Snapshot of the log, cheap to clone, so the page renders without the lock.
    pub(crate) log: Log,
    /// Records of `log` not visible to this request, ascending.
    pub(crate) hidden: Vec<u64>,
    /// How this request lists ties (see `Log::newest_first`).
    pub(crate) order: Option<u64>,
    pub(crate) limit_echo: LimitEcho,
    /// This request's number among the audit requests (1 for the first).
    pub(crate) number: usize,
}

impl Shared {
    pub(crate) fn new(config: SimulatorConfig, base_url: String) -> Shared {
        let context = config.base_path.trim_end_matches('/').to_owned();
        let start_ms = now_ms().saturating_add(config.clock_offset);
        let late_by_ms = u64::try_from(config.late_by.as_millis()).unwrap_or(u64::MAX);
        Shared {
            since_path: format!("{context}{AUDIT_SINCE}"),
            range_path: format!("{context}{AUDIT_RANGE}"),
            events_path: format!("{context}{AUDIT_EVENTS}"),
            retention_path: format!("{context}{AUDIT_RETENTION}"),
            flavor: config.flavor,
            personal_access_token: config.personal_access_token,
            forbidden_authorization: config.forbidden_authorization,
            base_url,
            context,
            max_limit: config.max_limit,
            max_limit_rises_every: config.max_limit_rises_every,
            range_bounds: config.range_bounds,
            strict_limit: config.strict_limit,
            required_authorization: config.required_authorization,
            tie_order_seed: (config.ties > 1).then_some(config.seed),
            clock_offset_ms: config.clock_offset,
            state: Mutex::new(State {
                log: Log::new(config.seed, config.records, start_ms)
                    .shaped(config.ties, config.duplicate_every)
                    .nested(config.nested_depth),
                live: config
                    .live
                    .as_ref()
                    .and_then(|live| LiveClock::new(live, config.seed, start_ms)),
                lateness: Lateness::new(config.seed, config.late_share, late_by_ms),
                late: Vec::new(),
                faults: config.faults.into(),
                fault_rate: config.fault_rate,
                latency: config.latency,
                inserts_per_request: config.inserts_per_request,
                deletes_per_request: config.deletes_per_request,
                limit_echo: config.limit_echo,
                cut_rate: config.cut_rate,
                requests: Vec::new(),
                audit_requests: 0,
                empty_pages: HashMap::new(),
                retention: config.retention,
                in_flight: 0,
                max_in_flight: 0,
                concurrency: config.concurrency,
                over_limit: 0,
                near_limit: 0,
                rng: fastrand::Rng::with_seed(config.seed),
            }),
        }
    }

    /// The simulator's clock in epoch milliseconds: the host's, off by `clock_offset`.
    pub(crate) fn now_ms(&self) -> i64 {
        now_ms().saturating_add(self.clock_offset_ms)
    }

    /// The state, even if a panicking thread poisoned the lock: every update is a single
    /// assignment or push, so the state is never left half-changed.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The audit endpoint `path` names, if any, served by this flavor or not.
    pub(crate) fn endpoint(&self, path: &str) -> Option<AuditEndpoint> {
        [
            (&self.since_path, AuditEndpoint::Since),
            (&self.range_path, AuditEndpoint::Range),
            (&self.events_path, AuditEndpoint::Events),
            (&self.retention_path, AuditEndpoint::Retention),
        ]
        .into_iter()
        .find_map(|(endpoint_path, endpoint)| (path == endpoint_path.as_str()).then_some(endpoint))
    }

    /// Counts a 200 page of `endpoint` that listed no record.
    pub(crate) fn count_empty_page(&self, endpoint: AuditEndpoint) {
        *self.lock().empty_pages.entry(endpoint).or_default() += 1;
    }

    /// Records a request and decides its fate. For a listing this flavor serves (`listing`
    /// true) it counts the request, creates the live records due, grows the log by `inserts_per_request` and
    /// shrinks it by `deletes_per_request` (faulted or not: a live log changes whatever one
    /// client sees), takes the next scripted fault, else a random one at `fault_rate`, else a
    /// cut at `cut_rate`, and for Cloud's draws the request's order of ties (Data Center
    /// lists ties by id). Other requests get no faults and no changes.
    pub(crate) fn admit(&self, request: RecordedRequest, listing: bool) -> Admission {
        let is_audit = listing;
        let shuffles_ties = request.endpoint != Some(AuditEndpoint::Events);
        let now = self.now_ms();
        let mut state = self.lock();
        state.requests.push(request);
        let (mut fault, mut cut, mut order) = (None, false, None);
        if is_audit {
            state.audit_requests += 1;
            state.in_flight += 1;
            state.max_in_flight = state.max_in_flight.max(state.in_flight);
            state.catch_up(now);
            let inserts = u64::from(state.inserts_per_request);
            state.add(inserts, now);
            let deletes = u64::from(state.deletes_per_request);
            state.log.delete_oldest(deletes);
            fault = state.next_fault().or_else(|| state.over_concurrency());
            cut = match fault {
                Some(Fault::Cut) => true,
                Some(_) => false,
                // Drawn only with a rate, so runs without cuts see the faults they always did.
                None => state.cut_rate > 0.0 && state.rng.f64() < state.cut_rate,
            };
            let number = u64::try_from(state.audit_requests).unwrap_or(u64::MAX);
            order = self
                .tie_order_seed
                .filter(|_| shuffles_ties)
                .map(|seed| listing_order(seed, number));
        }
        Admission {
            fault,
            cut,
            latency: state.latency,
            log: state.log.clone(),
            hidden: state.late.iter().map(|&(seq, _)| seq).collect(),
            order,
            limit_echo: state.limit_echo,
            number: state.audit_requests,
        }
    }
}

/// Counts an admitted audit request out of `in_flight` when its answer is done, whether
/// it was answered, reset, cut or dropped by the client.
pub(crate) struct InFlight(pub(crate) std::sync::Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

impl State {
    /// Creates the live records due by `now_ms` and makes visible the late ones due by then:
    /// called before anything reads the log.
    pub(crate) fn catch_up(&mut self, now_ms: i64) {
        let due = self.live.as_mut().map(|live| live.due(now_ms));
        for (at_ms, n) in due.into_iter().flatten() {
            self.add(n, at_ms);
        }
        self.late.retain(|&(_, visible_ms)| visible_ms > now_ms);
    }

    /// Adds `n` records at the head dated `at_ms` (see [`Log::insert`]), a share of them late.
    pub(crate) fn add(&mut self, n: u64, at_ms: i64) {
        let first = self.log.end();
        self.log.insert(n, at_ms);
        let Some(lateness) = self.lateness else {
            return;
        };
        for seq in first..self.log.end() {
            if let Some(delay) = lateness.delay_ms(seq) {
                let visible_ms = self.log.date(seq).saturating_add(delay);
                self.late.push((seq, visible_ms));
            }
        }
    }

    /// What the site's concurrency limit does to a request admitted now: refuse it
    /// past `allowed` in flight, warn past `near`.
    fn over_concurrency(&mut self) -> Option<Fault> {
        let limit = self.concurrency?;
        if self.in_flight > limit.allowed {
            self.over_limit += 1;
            Some(Fault::Status {
                code: 429,
                retry_after: Some("1".to_owned()),
                body: None,
            })
        } else if self.in_flight > limit.near.min(limit.allowed) {
            self.near_limit += 1;
            Some(Fault::NearLimit(Duration::from_secs(1)))
        } else {
            None
        }
    }

    fn next_fault(&mut self) -> Option<Fault> {
        if let Some(fault) = self.faults.pop_front() {
            return Some(fault);
        }
        (self.fault_rate > 0.0 && self.rng.f64() < self.fault_rate)
            .then(|| Fault::random_transient(&mut self.rng))
    }
}

/// The host's wall-clock time in epoch milliseconds (0 if the clock is before 1970); the
/// simulator's own is [`Shared::now_ms`].
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}
