//! A model Confluence for the property tests of every path that reads the log
//! (`StreamSince` in `src/app/stream.rs`, `Follow` in `src/app/follow.rs`, `GetSince`
//! paging): one log served by both `/audit/since` and the `/audit` range listing, with
//! every misbehaviour the documentation allows, drawn per request from a seed.
//!
//! What it may do, each switchable: cap `limit` below the one asked and echo the cap,
//! the limit asked or nothing; raise that cap as it goes; list the records of a
//! millisecond in a fresh order on every request; hold byte-identical twins; delete the
//! oldest milliseconds, or the oldest records one by one (retention), and add records at
//! the head between two requests;
//! make a record visible some time after its date (within the follower's lag); apply
//! `startDate`/`endDate` to the second, or not at all; answer from an older snapshot
//! where a cache may serve one; fail a request as a cut body, a 503 or a 429 would after
//! the gateway's retries.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;

use super::{PageRequest, stream::PageSource};
use crate::{
    audit::Span,
    error::{GatewayError, UpstreamFailure},
    pb,
};

/// How often records arrive at most, ms, in a model with a clock.
pub(crate) const ARRIVAL_EVERY_MS: i64 = 250;

/// What a page's `limit` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Echo {
    /// The limit applied.
    Honest,
    /// The limit asked, whatever was applied.
    Asked,
    /// No `limit` at all.
    Missing,
    /// The limit asked or nothing, per request.
    Mixed,
}

/// How the range listing applies `startDate`/`endDate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bounds {
    /// To the millisecond, both ends inclusive, as documented.
    Exact,
    /// To the second: the range widened to whole seconds.
    Seconds,
    /// Not at all: the whole log.
    Ignored,
}

/// How a model Confluence misbehaves.
#[derive(Clone, Debug)]
pub(crate) struct Misbehaviour {
    /// Largest tie group (records sharing a millisecond), listed in a fresh random
    /// order on every request.
    pub ties: usize,
    /// Of a tie group's records, the share that copy another member byte for byte.
    pub identical: f64,
    /// New records at the head before each request (up to).
    pub inserts: usize,
    /// Oldest milliseconds deleted before each request (up to).
    pub deletes: usize,
    /// `deletes` counts records, not milliseconds: retention may stop inside a millisecond
    /// and leave part of it (as `deletes_per_request` does in crates/confluence-sim).
    pub deletes_split: bool,
    /// Server-side cap on `limit`.
    pub cap: Option<usize>,
    /// The cap rises by one every this many requests (a cap that differs between
    /// requests; it never falls below a page it served).
    pub cap_rises_every: Option<usize>,
    /// What a page's `limit` says.
    pub echo: Echo,
    /// Share of `/since` pages answered from an older snapshot when the cache may serve
    /// them.
    pub stale: f64,
    /// Share of requests that fail (a cut body, a 503, a 429) after the gateway's
    /// retries: the call ends and the caller resumes from its last token or checkpoint.
    pub faults: f64,
    /// How the range listing applies its bounds.
    pub bounds: Bounds,
    /// Share of arrivals dated up to `late_by` ms before the request that shows them
    /// (visible late, in the middle of the log rather than at its head).
    pub late: f64,
    /// How late a late arrival is, at most (ms).
    pub late_by: i64,
}

impl Misbehaviour {
    /// A server that keeps every documented promise.
    pub(crate) fn polite() -> Self {
        Self {
            ties: 1,
            identical: 0.0,
            inserts: 0,
            deletes: 0,
            deletes_split: false,
            cap: None,
            cap_rises_every: None,
            echo: Echo::Honest,
            stale: 0.0,
            faults: 0.0,
            bounds: Bounds::Exact,
            late: 0.0,
            late_by: 0,
        }
    }
}

/// A record of the model: its date and content.
pub(crate) fn record(date: i64, content: &str) -> pb::AuditRecord {
    pb::AuditRecord {
        creation_date: date,
        summary: content.to_owned(),
        ..Default::default()
    }
}

/// An encoded page with `limit` echoed.
pub(crate) fn encode(records: &[pb::AuditRecord], limit: i32) -> Bytes {
    let page = pb::GetSinceResponse {
        results: records.to_vec(),
        limit,
        ..Default::default()
    };
    Bytes::from(page.encode_to_vec())
}

/// A model Confluence: a log newest first, changed before every request.
pub(crate) struct Model {
    /// The log as it is, newest first.
    pub log: Vec<pb::AuditRecord>,
    /// Every record that ever was, by content (identical records count twice).
    pub ever: HashMap<String, usize>,
    /// Earlier states of the log, for stale answers.
    history: VecDeque<Vec<pb::AuditRecord>>,
    next_id: usize,
    rng: fastrand::Rng,
    /// How it misbehaves.
    pub how: Misbehaviour,
    /// Requests answered.
    pub requests: usize,
    /// The date ranges asked (`startDate`, `endDate`), in order.
    pub ranges: Vec<(i64, i64)>,
    /// How many records the first page served held.
    pub first_page: Option<usize>,
    /// The newest `creationDate` the log ever held.
    pub newest: i64,
    /// Now, epoch ms, for arrivals; `None`: arrivals follow the newest record.
    clock: Option<Arc<dyn Fn() -> i64 + Send + Sync>>,
    /// Longest time an answer takes (ms, on tokio's clock).
    latency: u64,
    /// When records last arrived, by `clock`.
    last_arrival: i64,
}

impl Model {
    /// A log of `records` records from `date` on, in tie groups `gaps` ms apart (a range,
    /// both ends inclusive, drawn per group).
    pub(crate) fn new(
        records: usize,
        date: i64,
        gaps: (i64, i64),
        how: Misbehaviour,
        seed: u64,
    ) -> Self {
        let mut model = Model {
            log: Vec::new(),
            ever: HashMap::new(),
            history: VecDeque::new(),
            next_id: 0,
            rng: fastrand::Rng::with_seed(seed),
            how,
            requests: 0,
            ranges: Vec::new(),
            first_page: None,
            newest: i64::MIN,
            clock: None,
            latency: 0,
            last_arrival: i64::MIN,
        };
        model.insert(records, date, gaps);
        model
    }

    /// Dates arrivals by `clock` (epoch ms): they are created at the moment of the request
    /// that first shows them, or up to `late_by` before it when late.
    pub(crate) fn with_clock(mut self, clock: Arc<dyn Fn() -> i64 + Send + Sync>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Answers take up to `ms` on tokio's clock, so that time passes between requests.
    pub(crate) fn with_latency(mut self, ms: u64) -> Self {
        self.latency = ms;
        self
    }

    /// Adds `n` records from `date` on, in tie groups `gaps` ms apart, at their place by
    /// date.
    fn insert(&mut self, n: usize, mut date: i64, gaps: (i64, i64)) {
        let mut batch = Vec::with_capacity(n);
        while batch.len() < n {
            let group = self
                .rng
                .usize(1..=self.how.ties.max(1))
                .min(n - batch.len());
            let mut members: Vec<pb::AuditRecord> = Vec::new();
            for _ in 0..group {
                let content = match members.last() {
                    Some(m) if self.rng.f64() < self.how.identical => m.summary.clone(),
                    _ => {
                        self.next_id += 1;
                        format!("e{}", self.next_id)
                    }
                };
                *self.ever.entry(content.clone()).or_default() += 1;
                members.push(record(date, &content));
            }
            batch.extend(members);
            self.newest = self.newest.max(date);
            date += self.rng.i64(gaps.0.max(1)..=gaps.1.max(gaps.0).max(1));
        }
        for r in batch {
            // Newest first; a record joins its millisecond's group at the group's head.
            let at = self
                .log
                .partition_point(|old| old.creation_date > r.creation_date);
            self.log.insert(at, r);
        }
    }

    /// One request: the log changes, ties reorder, and a page is cut out of it.
    pub(crate) fn answer(&mut self, req: &PageRequest) -> Result<Bytes, GatewayError> {
        self.requests += 1;
        if let Span::Range { from, to } = req.query.span {
            self.ranges.push((from, to));
        }
        let start = usize::try_from(req.query.start).expect("an offset");
        let limit = usize::try_from(req.query.limit).expect("a limit");
        assert!(
            limit <= 1000,
            "asked for more than Confluence's largest limit: {limit}"
        );
        self.history.push_back(self.log.clone());
        if self.history.len() > 4 {
            self.history.pop_front();
        }
        self.arrive();
        // The relative window's moving lower bound removes records by date, a millisecond
        // whole; retention may also stop inside one.
        for _ in 0..self.rng.usize(0..=self.how.deletes) {
            let Some(oldest) = self.log.last().map(|r| r.creation_date) else {
                break;
            };
            if self.how.deletes_split {
                // Any of the oldest millisecond's records, as ties are listed in no order.
                let group = self.log.partition_point(|r| r.creation_date > oldest);
                let victim = self.rng.usize(group..self.log.len());
                self.log.remove(victim);
            } else {
                self.log.retain(|r| r.creation_date != oldest);
            }
        }
        self.reorder_ties();
        if self.rng.f64() < self.how.faults {
            let failure =
                [UpstreamFailure::Unavailable, UpstreamFailure::RateLimited][self.rng.usize(0..2)];
            return Err(match self.rng.bool() {
                true => GatewayError::MalformedBody("the body was cut off".into()),
                false => GatewayError::Upstream {
                    failure,
                    http_status: None,
                    message: "model fault".into(),
                    retry_after: None,
                    source: None,
                },
            });
        }
        let listed: Vec<pb::AuditRecord> = match req.query.span {
            Span::Since { .. } => match self.history.front() {
                Some(old) if !req.refresh && self.rng.f64() < self.how.stale => old.clone(),
                _ => self.log.clone(),
            },
            Span::Range { from, to } => {
                let (from, to) = match self.how.bounds {
                    Bounds::Exact => (from, to),
                    Bounds::Seconds => (
                        from.div_euclid(1000) * 1000,
                        to.div_euclid(1000) * 1000 + 999,
                    ),
                    Bounds::Ignored => (i64::MIN, i64::MAX),
                };
                self.log
                    .iter()
                    .filter(|r| (from..=to).contains(&r.creation_date))
                    .cloned()
                    .collect()
            }
        };
        let cap = self.how.cap.map(|cap| {
            cap + self
                .how
                .cap_rises_every
                .map_or(0, |every| self.requests / every.max(1))
        });
        let served = cap.map_or(limit, |cap| cap.min(limit));
        let records: Vec<_> = listed.into_iter().skip(start).take(served).collect();
        self.first_page.get_or_insert(records.len());
        let echo = match self.how.echo {
            Echo::Honest => served as i32,
            Echo::Asked => limit as i32,
            Echo::Missing => 0,
            Echo::Mixed if self.rng.bool() => limit as i32,
            Echo::Mixed => 0,
        };
        Ok(encode(&records, echo))
    }

    /// Adds the records that arrived since the last request.
    fn arrive(&mut self) {
        let n = self.rng.usize(0..=self.how.inserts);
        if n == 0 {
            return;
        }
        match &self.clock {
            // Arrivals are newer than anything the log ever held, even once emptied.
            None => self.insert(n, self.newest.saturating_add(1), (1, 3)),
            Some(clock) => {
                let now = clock();
                // Arrivals come in time, not per request: a follower's many requests in one
                // instant must not pile a millisecond (or a second) up past a page.
                if now < self.last_arrival.saturating_add(ARRIVAL_EVERY_MS) {
                    return;
                }
                self.last_arrival = now;
                let late = self.how.late_by.max(0);
                for _ in 0..n {
                    let date = if late > 0 && self.rng.f64() < self.how.late {
                        now - self.rng.i64(0..=late)
                    } else {
                        now
                    };
                    self.insert(1, date, (1, 1));
                }
            }
        }
    }

    fn reorder_ties(&mut self) {
        let mut i = 0;
        while i < self.log.len() {
            let date = self.log[i].creation_date;
            let end = i + self.log[i..]
                .iter()
                .take_while(|r| r.creation_date == date)
                .count();
            self.rng.shuffle(&mut self.log[i..end]);
            i = end;
        }
    }

    /// How many records of each content the log holds now within `dates`.
    pub(crate) fn alive(&self, dates: impl Fn(i64) -> bool) -> HashMap<String, usize> {
        let mut alive = HashMap::new();
        for r in self.log.iter().filter(|r| dates(r.creation_date)) {
            *alive.entry(r.summary.clone()).or_default() += 1;
        }
        alive
    }
}

/// The model behind a page source, as the application layer calls it.
#[derive(Clone)]
pub(crate) struct ModelSource(pub Arc<Mutex<Model>>);

impl PageSource for ModelSource {
    fn page(&self, req: PageRequest) -> impl Future<Output = Result<Bytes, GatewayError>> + Send {
        let (answer, delay) = {
            let mut model = self.0.lock().expect("model");
            let answer = model.answer(&req);
            let latency = model.latency;
            (answer, model.rng.u64(0..=latency))
        };
        async move {
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            answer
        }
    }
}

/// Checks what a path delivered (content, date) against the model: dates never
/// increase (`newest_first`) or never decrease along the whole concatenation of calls;
/// no content more often than it ever existed; every record alive at the end within
/// `dates` delivered at least once.
pub(crate) fn check_delivery(
    model: &Model,
    delivered: &[(String, i64)],
    newest_first: bool,
    dates: impl Fn(i64) -> bool,
) -> Result<(), TestCaseError> {
    for pair in delivered.windows(2) {
        let ordered = if newest_first {
            pair[0].1 >= pair[1].1
        } else {
            pair[0].1 <= pair[1].1
        };
        prop_assert!(ordered, "order broken at {pair:?}");
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (content, _) in delivered {
        *counts.entry(content.as_str()).or_default() += 1;
    }
    for (content, n) in &counts {
        let ever = model.ever.get(*content).copied().unwrap_or(0);
        prop_assert!(
            *n <= ever,
            "{content} delivered {n} times, existed {ever} times"
        );
    }
    for (content, n) in model.alive(dates) {
        let got = counts.get(content.as_str()).copied().unwrap_or(0);
        prop_assert!(got >= n, "{content}: {n} in the log, {got} delivered");
    }
    Ok(())
}
