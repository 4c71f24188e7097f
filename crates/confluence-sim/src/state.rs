//! State shared by the connections of one simulator and its handles.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::data::Log;
use super::http::AUDIT_SINCE;
use super::{Fault, RecordedRequest, SimulatorConfig};

/// Settings fixed at start, and the mutable state behind one lock.
pub(crate) struct Shared {
    /// `{base_path}/rest/api/audit/since`.
    pub(crate) audit_path: String,
    /// `http://{addr}{base_path}`.
    pub(crate) base_url: String,
    /// `base_path`, reported as `_links.context`.
    pub(crate) context: String,
    pub(crate) max_limit: Option<u32>,
    pub(crate) required_authorization: Option<String>,
    state: Mutex<State>,
}

/// Everything a handle may change while the simulator runs.
pub(crate) struct State {
    pub(crate) log: Log,
    pub(crate) faults: VecDeque<Fault>,
    pub(crate) fault_rate: f64,
    pub(crate) latency: Duration,
    pub(crate) inserts_per_request: u32,
    pub(crate) requests: Vec<RecordedRequest>,
    pub(crate) audit_requests: usize,
    /// Decides random faults; seeded so a run with a fault rate is reproducible.
    rng: fastrand::Rng,
}

/// What one request is to get, decided under the lock and acted on outside it.
pub(crate) struct Admission {
    pub(crate) fault: Option<Fault>,
    pub(crate) latency: Duration,
    /// Snapshot of the log, cheap to clone, so the page renders without the lock.
    pub(crate) log: Log,
}

impl Shared {
    pub(crate) fn new(config: SimulatorConfig, base_url: String) -> Shared {
        let context = config.base_path.trim_end_matches('/').to_owned();
        Shared {
            audit_path: format!("{context}{AUDIT_SINCE}"),
            base_url,
            context,
            max_limit: config.max_limit,
            required_authorization: config.required_authorization,
            state: Mutex::new(State {
                log: Log::new(config.seed, config.records, now_ms()),
                faults: config.faults.into(),
                fault_rate: config.fault_rate,
                latency: config.latency,
                inserts_per_request: config.inserts_per_request,
                requests: Vec::new(),
                audit_requests: 0,
                rng: fastrand::Rng::with_seed(config.seed),
            }),
        }
    }

    /// The state, even if a panicking thread poisoned the lock: every update is a single
    /// assignment or push, so the state is never left half-changed.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a request and decides its fate. For the audit endpoint it counts the request,
    /// grows the log by `inserts_per_request` (faulted or not: a live log grows whatever one
    /// client sees) and takes the next scripted fault, else a random one at `fault_rate`.
    /// Other paths get no faults and no inserts.
    pub(crate) fn admit(&self, request: RecordedRequest, is_audit: bool) -> Admission {
        let mut state = self.lock();
        state.requests.push(request);
        let fault = if is_audit {
            state.audit_requests += 1;
            let inserts = u64::from(state.inserts_per_request);
            state.log.insert(inserts, now_ms());
            state.next_fault()
        } else {
            None
        };
        Admission {
            fault,
            latency: state.latency,
            log: state.log.clone(),
        }
    }
}

impl State {
    fn next_fault(&mut self) -> Option<Fault> {
        if let Some(fault) = self.faults.pop_front() {
            return Some(fault);
        }
        (self.fault_rate > 0.0 && self.rng.f64() < self.fault_rate)
            .then(|| Fault::random_transient(&mut self.rng))
    }
}

/// Wall-clock time in epoch milliseconds (0 if the clock is before 1970).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}
