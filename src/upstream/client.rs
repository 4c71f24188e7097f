//! The Confluence REST client: one page of `GET {base}/rest/api/audit/since` (a window
//! relative to now) or `GET {base}/rest/api/audit` (a date range), with retries.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use backon::Retryable;
use bytes::BytesMut;
use reqwest::{StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;
use url::Url;

use super::{
    budget::RetryBudget,
    clock::ClockOffset,
    cooldown::{Cooldowns, Gate, ProbeTicket, SharedCooldowns, SharedView},
    fair::{FairSlots, Share, Slot, Urgency},
    pacing::{self, Pacing, SharedPaces},
    ratelimit,
    retry::{RetryClass, RetryPolicy, Spent, classify},
};
use crate::{
    audit::{Dialect, PageQuery, Span, retention::Retention},
    credential::Credential,
    error::{GatewayError, UpstreamFailure, within_deadline},
    metrics::METRICS,
    telemetry,
};

/// Largest error body read for its `message`.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest upstream `message` carried into a status.
const MAX_MESSAGE_CHARS: usize = 512;

/// How the gateway calls Confluence: the `upstream` section of `GatewayConfig`.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// One attempt, body included (`--upstream-timeout`).
    pub timeout: Duration,
    /// Connecting (`--upstream-connect-timeout`).
    pub connect_timeout: Duration,
    /// Retries of a transient failure (`--upstream-retries`, 0..=10).
    pub retries: u32,
    /// First backoff ceiling, doubling per retry (`--upstream-backoff`).
    pub backoff: Duration,
    /// Largest backoff and largest `Retry-After` slept through within a call
    /// (`--upstream-max-backoff`).
    pub max_backoff: Duration,
    /// Longest cool-down a `Retry-After` (or a near-the-limit answer) starts
    /// (`--upstream-max-cooldown`); when it ends one probe request decides whether
    /// another begins.
    pub max_cooldown: Duration,
    /// Largest page body accepted, in bytes (`--upstream-max-body`).
    pub max_body: u64,
    /// Most requests in flight to Confluence at once, gateway-wide, and the ceiling of
    /// each credential's paced limit (`--upstream-concurrency`, at least 1); more wait
    /// their turn within their deadline, shared fairly between callers
    /// (`src/upstream/fair.rs`).
    pub concurrency: usize,
    /// The lowest a credential's paced limit is cut to (`--upstream-concurrency-floor`,
    /// at least 1; one above `concurrency` is read as it); at `concurrency` or above,
    /// the limit is fixed (`src/upstream/pacing.rs`).
    pub concurrency_floor: usize,
    /// Which audit API the site answers (`--confluence-flavor`).
    pub flavor: ConfluenceFlavor,
}

/// Which of Confluence's audit APIs the gateway reads (`--confluence-flavor`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConfluenceFlavor {
    /// Cloud (and Server before 7.5): `/rest/api/audit/since` and `/rest/api/audit`.
    #[default]
    Cloud,
    /// Data Center 7.5 and later: `/rest/auditing/1.0/events`.
    DataCenter,
    /// Asked at start: Data Center when `/rest/auditing/1.0/events` exists.
    Auto,
}

impl UpstreamConfig {
    /// The defaults, which `GatewayConfig::DEFAULT` holds.
    pub const DEFAULT: Self = Self {
        timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        // Atlassian's guidance: about 4 retries, exponential with jitter, capped near 30 s.
        retries: 4,
        backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(30),
        // Atlassian's burst limits ask for seconds to a minute; a `Retry-After` of an
        // hour or a day (a maintenance page) would otherwise stop every caller for
        // that long although Confluence may be back in minutes.
        max_cooldown: Duration::from_secs(300),
        // Measured: a 1000-record page (the most Confluence returns) is 699,208 bytes
        // from the simulator (`confluence_sim::render_page`, records of 350..1,170
        // bytes), and Atlassian's sample (tests/fixtures/atlassian-audit-since-sample.json)
        // holds 2 records in 2,337 bytes, ~1.0-1.2 MB per 1000. 8 MiB is 7x the larger,
        // room for records with long changedValues, and with the body permits
        // (`body_permits`) bounds the bodies held at once.
        max_body: 8 << 20,
        // The ceiling of adaptive pacing, which starts each credential at half of it and
        // grows it while Confluence answers fast and warns of nothing; a burst of
        // streams (each prefetching --stream-prefetch pages) can use it all.
        concurrency: 16,
        // Atlassian's limits are per credential and site; two at once keeps a stream
        // moving while the gateway backs off.
        concurrency_floor: 2,
        flavor: ConfluenceFlavor::Cloud,
    };

    /// The retry policy these settings describe.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.retries,
            base_delay: self.backoff,
            max_delay: self.max_backoff,
            max_retry_after: self.max_backoff,
            ..RetryPolicy::default()
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The 200 bodies held at once, from reading to converted: two per core, so one can be
/// read while another converts. Bodies then take at most this × `--upstream-max-body`.
fn body_permits() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// What the caller of [`ConfluenceClient::fetch_page`] hears of its attempts.
pub(crate) trait FetchEvents {
    /// An attempt failed with `error`, or a cool-down holds the next one back; the next
    /// begins after `wait`.
    fn retrying(&self, error: &GatewayError, wait: Duration);
    /// A request is about to be sent to Confluence; false: nobody wants its answer any
    /// more, so it is not sent.
    fn sending(&self) -> bool;
    /// Checked when the request's slot is granted, before it is sent: an answer known
    /// already (its credential was refused meanwhile), so it is not sent.
    fn vetoed(&self) -> Option<GatewayError> {
        None
    }
    /// Checked when the request's slot is granted (not a cool-down's probe, which goes):
    /// `Some(pause)` gives the slot up and asks again after `pause`, and for another slot
    /// once it says `None` (a page read ahead past where its window is now known to end,
    /// whose readers have yet to let it go).
    fn hold_back(&self) -> Option<Duration> {
        None
    }
}

/// How long and how hard [`ConfluenceClient::fetch_page`] tries, and for whom.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FetchBounds<'a> {
    /// When the caller stops waiting (`None`: a shared load, bounded by its retries).
    pub deadline: Option<Instant>,
    /// Which retry bounds apply (`src/upstream/retry.rs`).
    pub class: RetryClass,
    /// Whose turn each attempt waits for (`src/upstream/fair.rs`).
    pub share: &'a Share,
}

/// A 200 body and the body permit it was read under. They go together: whoever holds
/// the body holds the permit, so a conversion that outlives its caller (on the blocking
/// pool, `src/app/pages.rs`) still counts against `--upstream-max-body` × permits. Its
/// buffer goes back to `buffers` when it is dropped.
#[derive(Debug)]
pub(crate) struct PageBody {
    bytes: BytesMut,
    buffers: Arc<BodyBuffers>,
    _permit: OwnedSemaphorePermit,
}

impl PageBody {
    /// The body's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for PageBody {
    fn drop(&mut self) {
        self.buffers.give(std::mem::take(&mut self.bytes));
    }
}

/// Buffers of bodies already converted, kept for the next ones: a page's body is hundreds
/// of KiB, and a buffer that size freshly allocated is memory the kernel maps and faults
/// in page by page, then takes back (about a third of the gateway's page faults in a long
/// backfill). At most one per body permit, each at most [`KEPT_BUFFER_BYTES`], so what
/// they keep is bounded whatever the bodies' sizes.
#[derive(Debug)]
struct BodyBuffers {
    kept: std::sync::Mutex<Vec<BytesMut>>,
    most: usize,
}

/// The largest buffer kept for reuse (a 1000-record page's body is 0.7–1.2 MB).
const KEPT_BUFFER_BYTES: usize = 2 << 20;

impl BodyBuffers {
    fn new(most: usize) -> Self {
        Self {
            kept: std::sync::Mutex::new(Vec::with_capacity(most)),
            most,
        }
    }

    /// An empty buffer: one kept, or a new one.
    fn take(&self) -> BytesMut {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    /// Keeps `buffer` for a later body, if there is room for it.
    fn give(&self, mut buffer: BytesMut) {
        if buffer.capacity() == 0 || buffer.capacity() > KEPT_BUFFER_BYTES {
            return;
        }
        buffer.clear();
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() < self.most {
            kept.push(buffer);
        }
    }
}

/// A client of one Confluence site's audit endpoint.
#[derive(Clone, Debug)]
pub(crate) struct ConfluenceClient {
    http: reqwest::Client,
    /// `{base}/rest/api/audit/since`.
    since: Url,
    /// `{base}/rest/api/audit`.
    range: Url,
    /// `{base}/rest/api/audit/retention`.
    retention: Url,
    /// `{base}/rest/auditing/1.0/events`, Data Center's.
    events: Url,
    /// The API pages are read from.
    dialect: Dialect,
    /// Everything before `/rest/api`, as cache keys name it.
    base_url: Url,
    settings: UpstreamConfig,
    /// Derived from `settings` once.
    retry: RetryPolicy,
    /// `settings.max_body`, checked to fit memory (`GatewayConfig::check`).
    max_body_bytes: usize,
    /// One slot per request in flight (`--upstream-concurrency`), shared by clones and
    /// fairly between callers, within each credential's paced limit.
    in_flight: Arc<FairSlots>,
    /// Each credential's limit on requests in flight, shared by clones.
    pacing: Arc<Pacing>,
    /// One permit per 200 body held (`body_permits`), shared by clones: with
    /// `max_body_bytes`, the bound on the memory bodies take.
    bodies: Arc<Semaphore>,
    /// Their buffers, once converted, for the next bodies.
    buffers: Arc<BodyBuffers>,
    /// Cool-downs other replicas started, when they share them (Redis).
    shared_cooldowns: Option<Shared>,
    /// Cuts of paced limits other replicas made, when they share them (Redis).
    shared_paces: Option<SharedPace>,
    /// Shared by every clone: one budget per credential for the whole gateway.
    cooldowns: Arc<Cooldowns>,
    /// Shared by every clone: retries are a share of the whole gateway's requests.
    retries: Arc<RetryBudget>,
    /// Shared by every clone: Confluence's clock as its answers' `Date` headers show it.
    clock: Arc<ClockOffset>,
}

impl ConfluenceClient {
    /// A client of the Confluence at `base_url`; fails on a base URL that cannot carry
    /// the endpoint path.
    pub(crate) fn new(base_url: Url, settings: &UpstreamConfig) -> Result<Self, ClientError> {
        let range = audit_endpoint(&base_url, &[])?;
        let since = audit_endpoint(&base_url, &["since"])?;
        let retention = audit_endpoint(&base_url, &["retention"])?;
        let events = events_endpoint(&base_url)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("audit-gateway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(ClientError::Http)?;
        Ok(Self {
            http,
            since,
            range,
            retention,
            events,
            dialect: match settings.flavor {
                ConfluenceFlavor::DataCenter => Dialect::DataCenter,
                // Auto: until the probe (`probe_dialect`) says otherwise.
                ConfluenceFlavor::Cloud | ConfluenceFlavor::Auto => Dialect::Cloud,
            },
            in_flight: Arc::new(FairSlots::new(settings.concurrency)),
            pacing: Arc::new(Pacing::new(
                settings.concurrency_floor,
                settings.concurrency / 2,
                settings.concurrency,
            )),
            bodies: Arc::new(Semaphore::new(body_permits())),
            buffers: Arc::new(BodyBuffers::new(body_permits())),
            shared_cooldowns: None,
            shared_paces: None,
            base_url,
            retry: settings.retry_policy(),
            max_body_bytes: usize::try_from(settings.max_body).unwrap_or(usize::MAX),
            settings: settings.clone(),
            cooldowns: Arc::default(),
            retries: Arc::default(),
            clock: Arc::default(),
        })
    }

    /// Consults `shared` before each attempt and tells it of each cool-down this client
    /// starts, so that replicas hold a rate-limited credential back together.
    pub(crate) fn with_shared_cooldowns(mut self, shared: Arc<dyn SharedCooldowns>) -> Self {
        self.shared_cooldowns = Some(Shared(shared));
        self
    }

    /// Tells `shared` of each cut of a credential's paced limit and takes in the other
    /// replicas' cuts from it (at most once a second per credential, off the request's
    /// path), so that replicas back off together (`src/upstream/pacing.rs`).
    pub(crate) fn with_shared_paces(mut self, shared: Arc<dyn SharedPaces>) -> Self {
        self.shared_paces = Some(SharedPace(shared));
        self
    }

    /// Holds at most `n` bodies at once (for tests of the memory bound).
    #[cfg(test)]
    pub(crate) fn holding_bodies(mut self, n: usize) -> Self {
        self.bodies = Arc::new(Semaphore::new(n));
        self
    }

    /// Body permits free now (for tests of the memory bound).
    #[cfg(test)]
    pub(crate) fn bodies_free(&self) -> usize {
        self.bodies.available_permits()
    }

    /// The offset of Confluence's clock from the gateway's, as this client's answers show
    /// it (`src/upstream/clock.rs`).
    pub(crate) fn clock(&self) -> Arc<ClockOffset> {
        self.clock.clone()
    }

    /// The configured base URL, as cache keys name it.
    pub(crate) fn base_url(&self) -> &str {
        self.base_url.as_str()
    }

    /// The full URL of a page query, every value percent-encoded.
    pub(crate) fn page_url(&self, query: &PageQuery) -> Url {
        let (mut url, params) = match (self.dialect, query.span) {
            (Dialect::Cloud, Span::Since { .. }) => (self.since.clone(), query.to_params()),
            (Dialect::Cloud, Span::Range { .. }) => (self.range.clone(), query.to_params()),
            (Dialect::DataCenter, _) => {
                let now = super::clock::now_ms().saturating_add(self.clock.offset_ms());
                (self.events.clone(), query.to_data_center_params(now))
            }
        };
        url.set_query(Some(&encode_params(&params)));
        url
    }

    /// The API this client reads pages from.
    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// This client reading `dialect`'s API (what the probe found).
    pub(crate) fn with_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// Asks the site which API it answers: Data Center's events endpoint exists there
    /// (any answer but 404, a refusal of the credential included), not on Cloud. Tried
    /// three times a second apart; an error when no answer came.
    pub(crate) async fn probe_dialect(
        &self,
        credential: Option<&Credential>,
    ) -> Result<Dialect, ClientError> {
        let mut url = self.events.clone();
        url.set_query(Some("limit=1"));
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let mut request = self.http.get(url.clone()).timeout(self.settings.timeout);
            if let Some(c) = credential {
                request = request.header(header::AUTHORIZATION, authorization(c)?);
            }
            match request.send().await {
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return Ok(Dialect::Cloud),
                // Busy or down: no answer to the question yet.
                Ok(r)
                    if r.status().is_server_error()
                        || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS =>
                {
                    last = Some(ClientError::Probe(r.status().to_string()));
                }
                Ok(_) => return Ok(Dialect::DataCenter),
                Err(e) => {
                    last = Some(ClientError::Probe(
                        transport_error(e, self.settings.timeout).to_string(),
                    ))
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Probe("no answer".into())))
    }

    /// Fetches one page and turns its 200 body into a `T` with `convert`, retrying what
    /// is transient (a body cut short, and a body `convert` rejects with
    /// [`GatewayError::MalformedBody`], included) as `bounds.class` allows, never past
    /// `bounds.deadline`. `events` hears of each failed attempt that
    /// will be retried, and of each cool-down waited out, with the wait before the next
    /// attempt. Each retry is drawn from the gateway's retry budget
    /// (`src/upstream/budget.rs`); when it is spent, the failure is returned as it is.
    ///
    /// `budget` is the credential's keyed fingerprint: every attempt first waits out the
    /// cool-down a `Retry-After` started for it (`src/upstream/cooldown.rs`), or, when
    /// that would outlast `deadline` or `--upstream-max-backoff`, fails at once with
    /// RESOURCE_EXHAUSTED and the time left, without a request. `events` hears of each
    /// request just before it is sent, too.
    ///
    /// `convert` gets the body with its body permit (`PageBody`), taken after the 200's
    /// headers and before the body is read: the bodies held at once, conversions
    /// included, are at most `max_bodies`.
    ///
    /// The conversion runs inside each attempt so that a broken body is one more attempt
    /// outcome, retried under its own bound (`src/upstream/retry.rs`), rather than a
    /// failure found after the retries are over.
    pub(crate) async fn fetch_page<T, F, Fut>(
        &self,
        query: &PageQuery,
        credential: Option<&Credential>,
        budget: &str,
        bounds: FetchBounds<'_>,
        events: &impl FetchEvents,
        convert: F,
    ) -> Result<T, GatewayError>
    where
        F: Fn(PageBody) -> Fut,
        Fut: Future<Output = Result<T, GatewayError>>,
    {
        let url = self.page_url(query);
        self.fetch(
            &url,
            query.limit,
            credential,
            budget,
            bounds,
            events,
            convert,
        )
        .await
    }

    /// Reads the audit log's retention period, as [`Self::fetch_page`] reads a page.
    pub(crate) async fn fetch_retention(
        &self,
        credential: Option<&Credential>,
        budget: &str,
        bounds: FetchBounds<'_>,
        events: &impl FetchEvents,
    ) -> Result<Retention, GatewayError> {
        let parse = |body: PageBody| async move {
            Retention::parse(body.bytes()).map_err(|why| {
                GatewayError::MalformedBody(format!(
                    "Confluence's answer is not a RetentionPeriod: {why}"
                ))
            })
        };
        let url = self.retention.clone();
        self.fetch(&url, 0, credential, budget, bounds, events, parse)
            .await
    }

    /// [`Self::fetch_page`] for any URL of the audit API; `size` is the number of
    /// records asked for (0 for an answer that holds none).
    #[allow(clippy::too_many_arguments)] // fetch_page's, plus the URL and its size
    async fn fetch<T, F, Fut>(
        &self,
        url: &Url,
        size: i32,
        credential: Option<&Credential>,
        budget: &str,
        bounds: FetchBounds<'_>,
        events: &impl FetchEvents,
        convert: F,
    ) -> Result<T, GatewayError>
    where
        F: Fn(PageBody) -> Fut,
        Fut: Future<Output = Result<T, GatewayError>>,
    {
        let FetchBounds {
            deadline,
            class,
            share,
        } = bounds;
        let policy = &self.retry;
        let mut spent = Spent::default();
        self.retries.request();
        let convert = &convert;
        let call = (|| async move {
            let (probe, slot) = self.turn(budget, share, deadline, events).await?;
            let sent = Instant::now();
            // One span per attempt; its trace context goes to Confluence (`attempt`).
            let span = tracing::info_span!(
                "confluence attempt",
                otel.kind = "client",
                http.request.method = "GET",
                http.response.status_code = tracing::field::Empty,
            );
            let asked = AtomicBool::new(false);
            let result = self
                .attempt(
                    url,
                    credential,
                    (budget, slot, &asked, size),
                    deadline,
                    events,
                    convert,
                )
                .instrument(span)
                .await;
            // Only a request that went tells anything of the credential's budget.
            if asked.load(Ordering::Relaxed) {
                self.answered(budget, sent, &result, probe).await;
            }
            result
        })
        .retry(policy.backoff(class))
        .sleep(tokio::time::sleep)
        .when(GatewayError::is_transient)
        .adjust(|err, ceiling| {
            let wait = policy.adjust(err, ceiling, &mut spent, deadline, class)?;
            // In an outage every request fails: retrying each would multiply the load on
            // a Confluence already down (`src/upstream/budget.rs`).
            if !self.retries.try_retry() {
                METRICS.upstream_retry_budget_exhausted.inc();
                tracing::warn!(reason = err.reason(), "retry budget spent: not retrying");
                return None;
            }
            Some(wait)
        })
        .notify(|err, wait| {
            tracing::warn!(reason = err.reason(), error = %err, ?wait, "retrying Confluence call");
            METRICS.upstream_retries.inc();
            events.retrying(err, wait);
        });
        within_deadline(deadline, DEADLINE_PASSED, call).await
    }

    /// Waits for this attempt's turn: the credential's cool-down over (or this attempt its
    /// probe), then a slot when `share`'s turn comes. A cool-down that began while the
    /// attempt waited for its slot is waited out too, the slot given back meanwhile: a
    /// request queued when a 429 arrived is not sent into the rate limit.
    async fn turn(
        &self,
        budget: &str,
        share: &Share,
        deadline: Option<Instant>,
        events: &impl FetchEvents,
    ) -> Result<(Option<Probe>, Slot), GatewayError> {
        loop {
            let probe = self
                .cool_down(budget, &share.urgency, deadline, events)
                .await?;
            // Never held across a backoff sleep or a cool-down; the wait for it is under
            // the caller's deadline like the rest of the call (`within_deadline` in
            // `fetch_page`). Held until the body is read, released before the
            // conversion: it bounds Confluence's load; the body permit (`exchange`)
            // bounds the gateway's memory.
            self.look_for_shared_cut(budget);
            let limit = self.pacing.limit(budget);
            let slot = self
                .in_flight
                .acquire_paced(share, budget, limit)
                .await
                .map_err(|_| GatewayError::Internal("the upstream limiter was closed".into()))?;
            if probe.is_some() || !self.cooldowns.holds(budget) {
                if probe.is_none()
                    && let Some(mut pause) = events.hold_back()
                {
                    // Given up, and waited out off the queue: asking again at every
                    // pause would spend the caller's turns and check cool-downs anew.
                    drop(slot);
                    loop {
                        tokio::time::sleep(pause).await;
                        match events.hold_back() {
                            Some(next) => pause = next,
                            None => break,
                        }
                    }
                    continue;
                }
                self.pacing.sent(budget, slot.level());
                return Ok((probe, slot));
            }
        }
    }

    /// Waits until `budget`'s cool-down is over, or fails at once with the time left when
    /// it would end past `deadline` or past the longest wait the policy sleeps (sleeping
    /// until DEADLINE_EXCEEDED would hide the one useful answer: when to come back).
    /// When it is over, the one request that probes gets its [`Probe`]; the others wait
    /// for the probe's answer. A request that waits here enters its `urgency`: every
    /// request of the credential waits alike, so the next one need not wait behind it.
    async fn cool_down(
        &self,
        budget: &str,
        urgency: &Urgency,
        deadline: Option<Instant>,
        events: &impl FetchEvents,
    ) -> Result<Option<Probe>, GatewayError> {
        loop {
            self.adopt_shared_cool_down(budget).await;
            match self.cooldowns.gate(budget) {
                Gate::Open => return Ok(None),
                Gate::Closed(until) => {
                    let wait = until.saturating_duration_since(Instant::now());
                    let refusal = cool_down_refusal(wait);
                    if wait > self.retry.max_retry_after || deadline.is_some_and(|d| until >= d) {
                        METRICS.upstream_cooldown_refusals.inc();
                        return Err(refusal);
                    }
                    // Callers waiting on a shared load leave now if this is past their
                    // deadline (`src/cache/memory.rs`).
                    events.retrying(&refusal, wait);
                    tracing::debug!(?wait, "waiting out the credential's cool-down");
                    urgency.enter();
                    // Woken early when an answer ends it here; a replica that ends it
                    // is heard of at the next look at the shared store.
                    self.cooldowns.changed(wait.min(SHARED_LOOK)).await;
                }
                Gate::Probe(ticket) => {
                    let claimed = match &self.shared_cooldowns {
                        Some(Shared(shared)) => {
                            let hold = self.settings.timeout;
                            match shared.claim_probe(self.base_url(), budget, hold).await {
                                Some(false) => {
                                    // Another replica probes: wait for its answer there.
                                    drop(ticket);
                                    urgency.enter();
                                    self.cooldowns.changed(SHARED_LOOK).await;
                                    continue;
                                }
                                Some(true) => true,
                                None => false,
                            }
                        }
                        None => false,
                    };
                    METRICS.upstream_cooldown_probes.inc();
                    tracing::info!("a cool-down ended: one request probes Confluence");
                    return Ok(Some(Probe {
                        _ticket: ticket,
                        claimed,
                    }));
                }
                Gate::Probing => {
                    urgency.enter();
                    self.cooldowns.changed(SHARED_LOOK).await;
                }
            }
        }
    }

    /// What an attempt's outcome says of the credential's budget: a 429, or a 503 with
    /// `Retry-After`, holds back every request of the credential, not only this one's
    /// retries (Confluence limits the credential); any other answer to a request sent
    /// after a cool-down began ends it, here and on every replica. An attempt that got
    /// no answer says nothing: a probe it was gives its place to the next request.
    async fn answered<T>(
        &self,
        budget: &str,
        sent: Instant,
        result: &Result<T, GatewayError>,
        probe: Option<Probe>,
    ) {
        let answered = match result {
            Ok(_) => true,
            Err(GatewayError::Upstream {
                http_status: Some(status),
                retry_after,
                ..
            }) => {
                let limited = *status == 429 || (*status == 503 && retry_after.is_some());
                if let (true, Some(wait)) = (limited, retry_after)
                    && !wait.is_zero()
                {
                    self.cooldowns.start(budget, Instant::now() + *wait);
                    self.share_cool_down(budget, *wait);
                }
                !limited
            }
            Err(GatewayError::Upstream {
                failure: UpstreamFailure::BodyCut,
                ..
            })
            | Err(GatewayError::MalformedBody(_) | GatewayError::BodyTooLarge { .. }) => true,
            Err(_) => false,
        };
        let cleared = answered && self.cooldowns.settle(budget, sent);
        if cleared {
            tracing::info!("Confluence answered: the credential's cool-down is over");
        }
        let Some(Shared(shared)) = &self.shared_cooldowns else {
            return;
        };
        let claimed = probe.as_ref().is_some_and(|p| p.claimed);
        // Awaited, not spawned: the next request of this replica must not find the ended
        // cool-down still in the store and take it in again. Only an ended cool-down or
        // a probe costs this round trip.
        if cleared {
            shared.clear(self.base_url(), budget).await;
        } else if claimed {
            shared.end_probe(self.base_url(), budget).await;
        }
    }

    /// Takes in the cool-down the shared store holds for `budget`, or its end: one round
    /// trip, whose failure only leaves this replica's own view. What is obeyed is capped
    /// at `--upstream-max-cooldown`, so a wrong clock or a bad value elsewhere cannot
    /// stop this replica for long.
    async fn adopt_shared_cool_down(&self, budget: &str) {
        let Some(Shared(shared)) = &self.shared_cooldowns else {
            return;
        };
        match shared.get(self.base_url(), budget).await {
            SharedView::Unknown => {}
            SharedView::Clear => self.cooldowns.cleared_elsewhere(budget),
            SharedView::Until(until) => {
                let left = until
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(self.settings.max_cooldown);
                self.cooldowns.adopt(budget, Instant::now() + left);
            }
        }
    }

    /// Looks, in a task of its own, for a cut of `budget`'s limit another replica made,
    /// when it is time to (`Pacing::due_for_shared`).
    fn look_for_shared_cut(&self, budget: &str) {
        let Some(SharedPace(shared)) = &self.shared_paces else {
            return;
        };
        if !self.pacing.due_for_shared(budget) {
            return;
        }
        let (shared, base, budget) = (
            shared.clone(),
            self.base_url().to_owned(),
            budget.to_owned(),
        );
        let (pacing, in_flight) = (self.pacing.clone(), self.in_flight.clone());
        tokio::spawn(async move {
            if let Some((limit, at)) = shared.last_cut(&base, &budget).await
                && let Some(limit) = pacing.adopt(&budget, limit, at)
            {
                in_flight.set_limit(&budget, limit);
                METRICS.limit_moved(limit, pacing::Move::Shared.label());
                tracing::debug!(limit, "paced limit cut as another replica cut it");
            }
        });
    }

    /// Tells the other replicas that `budget`'s limit was cut to `limit`, off the
    /// caller's path.
    fn share_cut(&self, budget: &str, limit: usize) {
        if let Some(SharedPace(shared)) = &self.shared_paces {
            let (shared, base, budget) = (
                shared.clone(),
                self.base_url().to_owned(),
                budget.to_owned(),
            );
            tokio::spawn(async move { shared.put_cut(&base, &budget, limit as f64).await });
        }
    }

    /// Tells the other replicas of a cool-down of `wait` this one started, off the
    /// caller's path.
    fn share_cool_down(&self, budget: &str, wait: Duration) {
        if let Some(Shared(shared)) = &self.shared_cooldowns {
            let (shared, base, budget) = (
                shared.clone(),
                self.base_url().to_owned(),
                budget.to_owned(),
            );
            let until = SystemTime::now() + wait;
            // Kept half-open past its end, for the probe to decide.
            let linger = self.settings.max_cooldown;
            tokio::spawn(async move { shared.put(&base, &budget, until, linger).await });
        }
    }

    /// One request with `slot`; `asked` turns true once it is sent. Long: the request's
    /// whole life (built, sent, counted, its answer taken in) holds the slot.
    async fn attempt<T, F, Fut>(
        &self,
        url: &Url,
        credential: Option<&Credential>,
        (budget, permit, asked, size): (&str, Slot, &AtomicBool, i32),
        deadline: Option<Instant>,
        events: &impl FetchEvents,
        convert: &F,
    ) -> Result<T, GatewayError>
    where
        F: Fn(PageBody) -> Fut,
        Fut: Future<Output = Result<T, GatewayError>>,
    {
        let mut timeout = self.settings.timeout;
        let mut cut_by_deadline = false;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            cut_by_deadline = left < timeout;
            timeout = timeout.min(left);
        }
        let failed = |e: reqwest::Error| {
            if e.is_timeout() && cut_by_deadline {
                // The caller's deadline, not Confluence, ended this attempt.
                deadline_error()
            } else {
                transport_error(e, timeout)
            }
        };
        let mut request = self
            .http
            .get(url.clone())
            .header(header::ACCEPT, "application/json")
            .timeout(timeout);
        // The caller's trace continues at Confluence (W3C `traceparent`), when exported.
        let mut trace = header::HeaderMap::new();
        telemetry::inject_current(&mut trace);
        request = request.headers(trace);
        if let Some(c) = credential {
            let value = authorization(c).map_err(|e| GatewayError::Internal(e.to_string()))?;
            request = request.header(header::AUTHORIZATION, value);
        }
        if let Some(answer) = events.vetoed() {
            return Err(answer);
        }
        let started = Instant::now();
        METRICS.upstream_attempts.inc();
        if !events.sending() {
            return Err(GatewayError::Abandoned);
        }
        asked.store(true, Ordering::Relaxed);
        let in_flight = InFlight::start();
        let level = permit.level();
        let exchanged = self
            .exchange(
                request,
                (budget, started, size, level),
                failed,
                cut_by_deadline,
            )
            .await;
        drop(in_flight);
        let status = match &exchanged {
            Ok(_) => Some(200),
            Err(GatewayError::Upstream { http_status, .. }) => *http_status,
            Err(_) => None,
        };
        METRICS.upstream_request(status, started.elapsed());
        if let Some(s) = status {
            tracing::Span::current().record("http.response.status_code", s);
        }
        drop(permit);
        let result = match exchanged {
            Ok(body) => convert(body).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            METRICS.upstream_failed(e);
        }
        tracing::debug!(elapsed = ?started.elapsed(), ok = result.is_ok(), "Confluence attempt");
        result
    }

    /// Sends `request` and reads a 200's body. `cut_by_deadline`: the attempt's time-out
    /// is the caller's deadline, so a body still unread when it strikes is the deadline
    /// passing rather than a stalled body.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        (budget, sent, size, level): (&str, Instant, i32, usize),
        failed: impl Fn(reqwest::Error) -> GatewayError,
        cut_by_deadline: bool,
    ) -> Result<PageBody, GatewayError> {
        let sent_at = SystemTime::now();
        let response = request.send().await.map_err(&failed)?;
        self.pace(budget, &response, (sent, size, level));
        if let Some(date) = response
            .headers()
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
        {
            self.clock.observe_header(date, sent_at, SystemTime::now());
        }
        if response.status() == StatusCode::OK {
            // No budget left: every request of the credential waits until its reset, so
            // the gateway does not spend requests Confluence will refuse. (Near the
            // limit, pacing has halved how many go at once.)
            if let Some(wait) = ratelimit::slow_down(response.headers(), SystemTime::now()) {
                let wait = wait.min(self.settings.max_cooldown);
                self.cooldowns.start(budget, Instant::now() + wait);
                self.share_cool_down(budget, wait);
            }
            // No byte of the body is buffered before a body permit is held. It is waited
            // for with the in-flight permit held, never the other way round (a body's
            // holder never waits for an in-flight permit): no cycle.
            let permit = self
                .bodies
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| GatewayError::Internal("the body limiter was closed".into()))?;
            let bytes = read_capped(response, self.max_body_bytes, self.buffers.take())
                .await
                .map_err(|e| match e {
                    ReadError::TooLarge { limit } => GatewayError::BodyTooLarge { limit },
                    ReadError::Ended { cause, .. }
                        if cause.as_ref().is_some_and(reqwest::Error::is_timeout)
                            && cut_by_deadline =>
                    {
                        deadline_error()
                    }
                    ReadError::Ended {
                        read,
                        expected,
                        cause,
                    } => cut_body(read, expected, cause),
                })?;
            return Ok(PageBody {
                bytes,
                buffers: self.buffers.clone(),
                _permit: permit,
            });
        }
        Err(self.status_error(response).await)
    }

    /// Takes what `response` (to a request of `budget` for a page of `size`, sent at
    /// `sent` while `level` of its requests were in flight) says of the credential's
    /// budget into its paced limit.
    fn pace(
        &self,
        budget: &str,
        response: &reqwest::Response,
        (sent, size, level): (Instant, i32, usize),
    ) {
        let answer = match response.status() {
            StatusCode::TOO_MANY_REQUESTS => pacing::Answer::RateLimited,
            status if status.is_success() => pacing::Answer::Served {
                ttfb: sent.elapsed(),
                size: u32::try_from(size).unwrap_or(0),
                near_limit: ratelimit::near_limit(response.headers()),
            },
            // Other failures say nothing of the budget; retries and the budget of
            // retries deal with them.
            _ => return,
        };
        if let Some((limit, why)) = self.pacing.observe(budget, answer, sent, level) {
            self.in_flight.set_limit(budget, limit);
            if why != pacing::Move::Grew {
                self.share_cut(budget, limit);
            }
            METRICS.limit_moved(limit, why.label());
            tracing::debug!(
                limit,
                reason = why.label(),
                "paced limit on requests in flight moved"
            );
        }
    }

    async fn status_error(&self, response: reqwest::Response) -> GatewayError {
        let status = response.status();
        // A `Retry-After` of a day (a maintenance page, say) is honoured only up to
        // `--upstream-max-cooldown`: then a probe asks again.
        let retry_after =
            ratelimit::retry_after(response.headers()).map(|d| d.min(self.settings.max_cooldown));
        // A body that cannot be read only costs us Confluence's message.
        let body = read_capped(response, MAX_ERROR_BODY, BytesMut::new())
            .await
            .unwrap_or_default();
        let failure = classify(status.as_u16());
        GatewayError::Upstream {
            failure,
            http_status: Some(status.as_u16()),
            message: status_message(status, failure, &body),
            retry_after,
            source: None,
        }
    }
}

/// How often a request held by a cool-down or a probe looks at the shared store again.
const SHARED_LOOK: Duration = Duration::from_millis(250);

/// The refusal of a request a cool-down holds back for `wait` more.
fn cool_down_refusal(wait: Duration) -> GatewayError {
    GatewayError::Upstream {
        failure: UpstreamFailure::RateLimited,
        http_status: None,
        message: format!(
            "Confluence asked this credential to slow down: no request is sent with it for \
             another {:.1}s",
            wait.as_secs_f64()
        ),
        retry_after: Some(wait),
        source: None,
    }
}

/// The one request that probes a half-open cool-down.
struct Probe {
    _ticket: ProbeTicket,
    /// It holds the shared store's probe claim, to give back if it gets no answer.
    claimed: bool,
}

/// The shared cool-downs, with a `Debug` that only says they are there.
#[derive(Clone)]
struct Shared(Arc<dyn SharedCooldowns>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedCooldowns")
    }
}

/// The shared cuts of paced limits, with a `Debug` that only says they are there.
#[derive(Clone)]
struct SharedPace(Arc<dyn SharedPaces>);

impl std::fmt::Debug for SharedPace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedPaces")
    }
}

/// Counts a request in flight to Confluence until dropped (a cancelled attempt too).
struct InFlight;

impl InFlight {
    fn start() -> Self {
        METRICS.upstream_in_flight.inc();
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.upstream_in_flight.dec();
    }
}

/// Why a client of Confluence cannot be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The base URL is not one an endpoint path can follow.
    #[error("{0} is not an http(s) base URL")]
    NotHttp(Url),
    /// The HTTP client could not be built (its TLS roots, say).
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
    /// The credential cannot go in an HTTP header.
    #[error("the credential is not a header value")]
    NotAHeader,
    /// `--confluence-flavor auto` got no answer to its probe.
    #[error(
        "cannot tell Cloud from Data Center: {0}; set --confluence-flavor cloud or data-center"
    )]
    Probe(String),
}

/// `{base}/rest/api/audit` followed by `tail`, keeping any path the base has (e.g. `/wiki`).
fn audit_endpoint(base: &Url, tail: &[&str]) -> Result<Url, ClientError> {
    if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
        return Err(ClientError::NotHttp(base.clone()));
    }
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|_| ClientError::NotHttp(base.clone()))?
        .pop_if_empty()
        .extend(["rest", "api", "audit"])
        .extend(tail);
    Ok(url)
}

/// `credential` as an `Authorization` value, kept out of debug output and HTTP/2 header
/// compression tables.
fn authorization(credential: &Credential) -> Result<header::HeaderValue, ClientError> {
    let mut value =
        header::HeaderValue::from_str(credential.expose()).map_err(|_| ClientError::NotAHeader)?;
    value.set_sensitive(true);
    Ok(value)
}

/// `{base}/rest/auditing/1.0/events`: Data Center's auditing API, beside `/rest/api`.
fn events_endpoint(base: &Url) -> Result<Url, ClientError> {
    let mut url = audit_endpoint(base, &[])?;
    url.path_segments_mut()
        .map_err(|_| ClientError::NotHttp(base.clone()))?
        .pop()
        .pop()
        .pop()
        .extend(["rest", "auditing", "1.0", "events"]);
    Ok(url)
}

/// `k=v&…` with every byte outside `A-Za-z0-9-._*` percent-encoded and spaces as `%20`
/// (unambiguous for every server, unlike `+`).
pub(crate) fn encode_params(params: &[(&str, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| {
            let v: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
            format!("{k}={}", v.replace('+', "%20"))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Why a body could not be read whole.
#[derive(Debug)]
enum ReadError {
    /// It exceeds the cap (by its `Content-Length`, or by what arrived).
    TooLarge { limit: usize },
    /// It ended early after `read` bytes of `expected` (when the answer said): the
    /// connection ended or was reset mid-body (chunked without its last chunk too), or
    /// the attempt timed out while it stalled (`cause` says which).
    Ended {
        read: usize,
        expected: Option<u64>,
        cause: Option<reqwest::Error>,
    },
}

/// Reads a body up to `cap` bytes into `body` (emptied first); more is an error, never a
/// truncated page, and so is less than its `Content-Length`.
async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
    mut body: BytesMut,
) -> Result<BytesMut, ReadError> {
    let expected = response.content_length();
    if expected.is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLarge { limit: cap });
    }
    body.clear();
    body.reserve(expected.map_or(8192, |n| n as usize));
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                let e = e.without_url();
                tracing::debug!(error = %e, "Confluence's body ended early");
                return Err(ReadError::Ended {
                    read: body.len(),
                    expected,
                    cause: Some(e),
                });
            }
        };
        if body.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge { limit: cap });
        }
        body.extend_from_slice(&chunk);
    }
    // hyper already fails a body shorter than its Content-Length; this holds whatever
    // the HTTP stack beneath does.
    if expected.is_some_and(|n| (body.len() as u64) < n) {
        return Err(ReadError::Ended {
            read: body.len(),
            expected,
            cause: None,
        });
    }
    Ok(body)
}

/// A 200 body that ended early, after `read` bytes of `expected` (when the answer said):
/// a transport failure, retried like a reset ([`UpstreamFailure::BodyCut`]).
fn cut_body(read: usize, expected: Option<u64>, cause: Option<reqwest::Error>) -> GatewayError {
    let how = if cause.as_ref().is_some_and(reqwest::Error::is_timeout) {
        "stalled"
    } else {
        "was cut"
    };
    let message = match expected {
        Some(total) => format!("Confluence's answer {how} after {read} of {total} bytes"),
        None => format!("Confluence's answer {how} after {read} bytes"),
    };
    GatewayError::Upstream {
        failure: UpstreamFailure::BodyCut,
        http_status: None,
        message,
        retry_after: None,
        // Without the URL (`read_capped` dropped it): its query holds the caller's
        // search string.
        source: cause.map(|e| Arc::new(e) as crate::error::Source),
    }
}

/// The status message for a non-200 answer, with Confluence's own `message` if any.
fn status_message(status: StatusCode, failure: UpstreamFailure, body: &[u8]) -> String {
    let upstream = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
        .filter(|m| !m.trim().is_empty())
        .map(|m| m.chars().take(MAX_MESSAGE_CHARS).collect::<String>());
    let mut msg = format!("Confluence answered {status}");
    match (upstream, failure) {
        (Some(m), _) => {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        (None, UpstreamFailure::PermissionDenied) => msg.push_str(
            ": the credential lacks the 'Confluence Administrator' global permission \
             (free plans are refused too)",
        ),
        (None, UpstreamFailure::Unauthenticated) => {
            msg.push_str(": the credential was not accepted")
        }
        (None, UpstreamFailure::RateLimited) => msg.push_str(": rate limited"),
        _ => {}
    }
    msg
}

/// A failure below HTTP: no connection, a reset, a time-out. The URL is left out of
/// the message; it adds nothing the caller does not know.
fn transport_error(e: reqwest::Error, timeout: Duration) -> GatewayError {
    let (failure, message) = if e.is_timeout() {
        (
            UpstreamFailure::Timeout,
            format!("Confluence did not answer within {timeout:?}"),
        )
    } else if e.is_connect() {
        (
            UpstreamFailure::Unavailable,
            "cannot connect to Confluence".to_owned(),
        )
    } else {
        (
            UpstreamFailure::Unavailable,
            "the connection to Confluence failed before a complete answer".to_owned(),
        )
    };
    GatewayError::Upstream {
        failure,
        http_status: None,
        message,
        retry_after: None,
        // Without the URL: its query holds the caller's search string.
        source: Some(std::sync::Arc::new(e.without_url())),
    }
}

const DEADLINE_PASSED: &str = "the call's deadline passed before Confluence answered";

fn deadline_error() -> GatewayError {
    GatewayError::DeadlineExceeded(DEADLINE_PASSED.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keeps_the_base_path() {
        for (base, want) in [
            (
                "https://x.atlassian.net/wiki",
                "https://x.atlassian.net/wiki/rest/api/audit/since",
            ),
            (
                "https://x.atlassian.net/wiki/",
                "https://x.atlassian.net/wiki/rest/api/audit/since",
            ),
            (
                "https://c.example.com",
                "https://c.example.com/rest/api/audit/since",
            ),
            (
                "https://api.atlassian.com/ex/confluence/abc-123/wiki",
                "https://api.atlassian.com/ex/confluence/abc-123/wiki/rest/api/audit/since",
            ),
        ] {
            let base = Url::parse(base).expect("valid");
            let since = audit_endpoint(&base, &["since"]).expect("endpoint");
            assert_eq!(since.as_str(), want);
            let range = audit_endpoint(&base, &[]).expect("endpoint");
            assert_eq!(range.as_str(), want.trim_end_matches("/since"));
        }
        assert!(audit_endpoint(&Url::parse("mailto:a@b").expect("valid"), &[]).is_err());
    }

    #[test]
    fn params_are_percent_encoded() {
        let q = encode_params(&[("searchString", "a&b#c+d%e f/é=".to_owned())]);
        assert_eq!(q, "searchString=a%26b%23c%2Bd%25e%20f%2F%C3%A9%3D");
    }

    #[test]
    fn status_messages_keep_confluences_message() {
        let body = br#"{"statusCode":400,"message":"units is invalid","data":{}}"#;
        assert_eq!(
            status_message(StatusCode::BAD_REQUEST, UpstreamFailure::BadRequest, body),
            "Confluence answered 400 Bad Request: units is invalid"
        );
        let m = status_message(
            StatusCode::FORBIDDEN,
            UpstreamFailure::PermissionDenied,
            b"",
        );
        assert!(m.contains("Confluence Administrator"), "{m}");
    }

    #[test]
    fn body_buffers_are_kept_emptied_one_per_permit_and_never_large() {
        let buffers = BodyBuffers::new(2);
        let mut a = buffers.take();
        a.extend_from_slice(&[7; 600 << 10]);
        let a_at = a.as_ptr();
        buffers.give(a);
        // The same allocation comes back, empty, with its room.
        let b = buffers.take();
        assert_eq!((b.len(), b.as_ptr()), (0, a_at));
        assert!(b.capacity() >= 600 << 10);
        // No more than `most` are kept.
        for _ in 0..3 {
            let mut c = BytesMut::new();
            c.extend_from_slice(b"x");
            buffers.give(c);
        }
        assert_eq!(buffers.kept.lock().expect("not poisoned").len(), 2);
        // One larger than KEPT_BUFFER_BYTES goes back to the system.
        let empty = BodyBuffers::new(2);
        let mut large = BytesMut::new();
        large.extend_from_slice(&vec![0; KEPT_BUFFER_BYTES + 1]);
        empty.give(large);
        assert!(empty.kept.lock().expect("not poisoned").is_empty());
        drop(b);
    }
}
