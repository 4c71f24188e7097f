//! Pages of the audit log as the gateway serves them: looked up in the page cache, or
//! fetched from Confluence, parsed and encoded as a `GetSinceResponse` once.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::de::IgnoredAny;
use tracing::Instrument;

use super::{caps::CallerCaps, retention::Retentions};
use crate::{
    audit::{Dialect, PageQuery, Span, retention::Retention},
    cache::{LoadProgress, PageCache, PageKey},
    callers::Caller,
    credential::{Credential, FingerprintKey},
    error::{GatewayError, UpstreamFailure, within_deadline},
    metrics::METRICS,
    pb::convert::{encode_data_center_page, encode_page},
    upstream::{
        ConfluenceClient, RetryClass,
        client::{FetchBounds, FetchEvents, PageBody},
        fair::{Share, Urgency},
    },
};

/// Bodies at least this large are converted on the blocking pool.
const BLOCKING_BODY_BYTES: usize = 64 * 1024;
/// Credentials remembered as accepted, or as refused, at most (older ones are
/// forgotten first).
const MAX_ACCEPTED: usize = 10_000;
/// Slots in flight to Confluence that every passthrough credential it has not accepted
/// yet shares: guessing credentials through the gateway goes one request at a time.
const UNVERIFIED_SLOTS: usize = 1;

/// Whom Confluence answers without a credential, made once: every anonymous page's key
/// holds it.
static ANONYMOUS: LazyLock<Arc<str>> = LazyLock::new(|| "anonymous".into());

/// One page request, already validated.
#[derive(Clone, Debug)]
pub(crate) struct PageRequest {
    /// What to fetch.
    pub query: PageQuery,
    /// Whom to fetch it as (`None`: anonymous).
    pub credential: Option<Credential>,
    /// Skip cached copies and refresh them.
    pub refresh: bool,
    /// A range that may not be settled yet by Confluence's clock (not known when it was
    /// asked): asked of Confluence, neither answered from the cache nor kept there, where
    /// a later reader would take it for the settled range's page.
    pub unsettled: bool,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// A page of a long call (`StreamSince`, `Follow`): transient failures, a plain 500
    /// included, are retried as `RetryClass::Persistent` (`src/upstream/retry.rs`).
    pub persistent: bool,
    /// Who asks: its fair share of Confluence's request slots, and its caps.
    pub caller: Caller,
    /// How soon the page is needed (a stream's look-ahead waits behind its caller's
    /// pages needed now, until its reader needs it).
    pub urgency: Urgency,
    /// Counts against the caller's `--caller-miss-rate` when it starts a load
    /// (`GetSince` calls; a stream's pages are bounded by its stream slot instead).
    pub metered: bool,
    /// A stream's page: what its load is to tell and ask of the stream's window.
    pub ahead: Option<AheadOf>,
}

/// What the load of a stream's page tells and asks of the stream's window, without
/// waiting for any stream's task to run (on a busy gateway those run hundreds of
/// milliseconds late): `landed` is told the converted page at once, so a page that shows
/// where the window ends says so before anything else is sent; and while `past_end` says
/// the page, read ahead, lies past that end, its request gives its slot up when it comes
/// rather than leave (`FetchEvents::hold_back`), until its streams let it go. A caller
/// that joins such a load needing the page now (the window grew since) waits for it
/// [`MOST_HELD`] at most.
#[derive(Clone)]
pub(crate) struct AheadOf {
    /// Told the encoded page as soon as it is converted.
    pub landed: Arc<dyn Fn(&Bytes) + Send + Sync>,
    /// Whether the page lies past where its window is known to end.
    pub past_end: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for AheadOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AheadOf").finish_non_exhaustive()
    }
}

/// How often a request read ahead past its window's end, its slot given up, looks
/// whether its streams let it go.
const HOLD_STEP: Duration = Duration::from_millis(10);
/// How long such a request is held back at most: its streams let it go once they run
/// (a saturated gateway ran them 160-340 ms late); one that still wants it then has it
/// sent.
const MOST_HELD: Duration = Duration::from_secs(1);

/// Serves pages through the cache.
#[derive(Clone)]
pub(crate) struct PageService {
    client: Arc<ConfluenceClient>,
    cache: PageCache,
    base_url: Arc<str>,
    fingerprints: Arc<FingerprintKey>,
    /// The configured credential and its fingerprint, made once: an HMAC per call
    /// otherwise, for the same answer.
    configured: Option<(Credential, Arc<str>)>,
    /// With `--auth-passthrough`: how long Confluence's acceptance of a caller's
    /// credential lets cached pages be served to it, and when it last accepted each
    /// (by fingerprint). A revoked token stops reading within that time.
    revalidate: Option<(Duration, Arc<Mutex<Accepted>>)>,
    /// With `--auth-passthrough`: credentials Confluence refused (401/403), by
    /// fingerprint, refused here without a request for `--passthrough-negative-ttl`.
    refused: Arc<Refused>,
    /// Each caller's own caps.
    caps: Arc<CallerCaps>,
    /// The retention period Confluence answered, by credential.
    retentions: Arc<Retentions>,
}

/// When Confluence last accepted each credential, by fingerprint.
type Accepted = HashMap<Arc<str>, Instant>;

/// Credentials Confluence refused, by fingerprint: when, and its answer.
#[derive(Debug, Default)]
struct Refused {
    ttl: Duration,
    map: Mutex<HashMap<Arc<str>, (Instant, GatewayError)>>,
}

impl Refused {
    /// Confluence's answer to `fingerprint`, if it refused it within the TTL.
    fn get(&self, fingerprint: &str) -> Option<GatewayError> {
        // Without passthrough nothing is remembered: no lock on every page's path.
        if self.ttl.is_zero() {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(fingerprint)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, e)| e.clone())
    }

    /// Remembers `err` for `fingerprint` if it is Confluence refusing the credential.
    fn note(&self, fingerprint: &Arc<str>, err: &GatewayError) {
        let refused = matches!(
            err,
            GatewayError::Upstream {
                failure: UpstreamFailure::Unauthenticated | UpstreamFailure::PermissionDenied,
                ..
            }
        );
        if !refused || self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ACCEPTED {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        map.insert(fingerprint.clone(), (Instant::now(), err.clone()));
    }
}

/// One page's load from Confluence.
struct Load {
    client: Arc<ConfluenceClient>,
    refused: Arc<Refused>,
    query: PageQuery,
    credential: Option<Credential>,
    /// The credential's fingerprint: its cool-downs and refusals are kept under it.
    fingerprint: Arc<str>,
    class: RetryClass,
    /// Whose turn at Confluence the load waits for.
    share: Share,
    /// The stream's window, for a page read ahead of a stream's reader.
    ahead: Option<AheadOf>,
}

impl Load {
    /// Fetches and converts the page, within `deadline` if there is one, telling
    /// `progress` how it goes; a refusal of the caller's credential is remembered.
    async fn run(
        self,
        deadline: Option<Instant>,
        progress: LoadProgress,
    ) -> Result<Bytes, GatewayError> {
        METRICS.page_loads.inc();
        // Data Center echoes neither offset nor limit: its page says what was asked.
        let (dialect, offset, limit) = (self.client.dialect(), self.query.start, self.query.limit);
        let landed = self.ahead.as_ref().map(|a| a.landed.clone());
        let convert = move |body: &[u8]| {
            let page = match dialect {
                Dialect::Cloud => encode(body),
                Dialect::DataCenter => encode_data_center_page(body, offset, limit),
            }?;
            if let Some(landed) = &landed {
                landed(&page);
            }
            Ok(page)
        };
        let events = Vetted {
            progress: &progress,
            refused: &self.refused,
            fingerprint: &self.fingerprint,
            ahead: self.ahead.as_ref(),
            urgency: &self.share.urgency,
            held_since: std::sync::OnceLock::new(),
        };
        let bounds = FetchBounds {
            deadline,
            class: self.class,
            share: &self.share,
        };
        let page = self
            .client
            .fetch_page(
                &self.query,
                self.credential.as_ref(),
                &self.fingerprint,
                bounds,
                &events,
                |body| convert_with(body, convert.clone()),
            )
            .await;
        if let (Err(e), Some(_)) = (&page, &self.credential) {
            self.refused.note(&self.fingerprint, e);
        }
        page
    }
}

/// A load's progress, and the refusal that stops its request before it is sent: a
/// request queued behind one whose credential Confluence just refused is not sent.
struct Vetted<'a> {
    progress: &'a LoadProgress,
    refused: &'a Refused,
    fingerprint: &'a str,
    /// The stream's window, for a page read ahead of a stream's reader.
    ahead: Option<&'a AheadOf>,
    /// How far ahead of its reader the stream that started the load needs the page.
    urgency: &'a Urgency,
    /// When the request first gave its slot up as past its window's end.
    held_since: std::sync::OnceLock<Instant>,
}

impl FetchEvents for Vetted<'_> {
    fn retrying(&self, error: &GatewayError, wait: Duration) {
        self.progress.retrying(error, wait);
    }

    fn sending(&self) -> bool {
        self.progress.sending()
    }

    fn vetoed(&self) -> Option<GatewayError> {
        self.refused.get(self.fingerprint)
    }

    fn hold_back(&self) -> Option<Duration> {
        // Only look-ahead, past a known end, that someone still waits for (with nobody
        // waiting, `sending` drops it at once).
        let ahead = self.ahead?;
        if self.urgency.needed_now() || !(ahead.past_end)() || !self.progress.waited_for() {
            return None;
        }
        let since = *self.held_since.get_or_init(Instant::now);
        (since.elapsed() < MOST_HELD).then_some(HOLD_STEP)
    }
}

impl PageService {
    /// Wires the client, the cache and the fingerprint key together.
    pub(crate) fn new(
        client: ConfluenceClient,
        cache: PageCache,
        fingerprints: FingerprintKey,
    ) -> Self {
        // Pages of the two dialects differ (`AuditRecord.dialect`, the fields mapped): a
        // Data Center site's are cached apart, so that replicas configured with different
        // flavors for one URL never serve each other's. Cloud keys stay as they were.
        let base_url = match client.dialect() {
            Dialect::Cloud => client.base_url().into(),
            Dialect::DataCenter => format!("data-center {}", client.base_url()).into(),
        };
        Self {
            base_url,
            client: Arc::new(client),
            cache,
            fingerprints: Arc::new(fingerprints),
            configured: None,
            revalidate: None,
            refused: Arc::default(),
            caps: Arc::new(CallerCaps::new(usize::MAX, 0)),
            retentions: Arc::default(),
        }
    }

    /// Holds callers to `caps` (shared with the gRPC edge, which counts their streams).
    pub(crate) fn with_caps(mut self, caps: Arc<CallerCaps>) -> Self {
        self.caps = caps;
        self
    }

    /// The keyed fingerprint of `credential`, as cache keys and caller identities hold it.
    pub(crate) fn fingerprint(&self, credential: &Credential) -> String {
        credential.fingerprint(&self.fingerprints)
    }

    /// Fingerprints `credential`, the gateway's own, once now rather than on every call.
    pub(crate) fn configured(mut self, credential: &Credential) -> Self {
        let fingerprint = self.fingerprint(credential).into();
        self.configured = Some((credential.clone(), fingerprint));
        self
    }

    /// Serves a cached page to a caller's credential only if Confluence accepted that
    /// credential within `every` (for `--auth-passthrough`).
    pub(crate) fn revalidating(mut self, every: Duration) -> Self {
        self.revalidate = Some((every, Arc::default()));
        self
    }

    /// Refuses a caller's credential Confluence refused (401/403) for `ttl` without
    /// asking it again (for `--auth-passthrough`; zero: always ask).
    pub(crate) fn remembering_refusals(mut self, ttl: Duration) -> Self {
        self.refused = Arc::new(Refused {
            ttl,
            map: Mutex::default(),
        });
        self
    }

    /// The audit log's retention period as Confluence answers it to `credential`, asked
    /// again at most every ten minutes (a failure too).
    pub(crate) async fn retention(
        &self,
        credential: Option<&Credential>,
        caller: &Caller,
        deadline: Option<Instant>,
    ) -> Result<Retention, GatewayError> {
        let fingerprint = self.fingerprint_of(credential);
        if let Some(known) = self.retentions.known(&fingerprint) {
            return known;
        }
        let lookup = self.retentions.lookup(&fingerprint);
        // Waiting for another caller's lookup is bounded by this caller's deadline too.
        let _one_at_a_time = within_deadline(
            deadline,
            "the deadline passed waiting for Confluence's retention period",
            async { Ok(lookup.lock().await) },
        )
        .await?;
        if let Some(known) = self.retentions.known(&fingerprint) {
            return known;
        }
        let share = caller_share(caller, Urgency::now());
        let bounds = FetchBounds {
            deadline,
            class: RetryClass::OneShot,
            share: &share,
        };
        let answer = self
            .client
            .fetch_retention(credential, &fingerprint, bounds, &LoadProgress::default())
            .await;
        // Only Confluence's answers are remembered, not a caller's deadline passing.
        if !matches!(answer, Err(GatewayError::DeadlineExceeded { .. })) {
            self.retentions.note(fingerprint, answer.clone());
        }
        answer
    }

    /// The audit API the site answers.
    pub(crate) fn dialect(&self) -> Dialect {
        self.client.dialect()
    }

    /// The retention period if Confluence answered it to `credential` lately.
    pub(crate) fn known_retention(&self, credential: Option<&Credential>) -> Option<Retention> {
        self.retentions
            .known(&self.fingerprint_of(credential))?
            .ok()
    }

    /// Whom Confluence answers: the credential's keyed fingerprint, or `anonymous`.
    fn fingerprint_of(&self, credential: Option<&Credential>) -> Arc<str> {
        match (credential, &self.configured) {
            (None, _) => ANONYMOUS.clone(),
            (Some(c), Some((known, fingerprint))) if c == known => fingerprint.clone(),
            (Some(c), _) => c.fingerprint(&self.fingerprints).into(),
        }
    }

    /// The page as an encoded `GetSinceResponse`.
    pub(crate) async fn page(&self, req: PageRequest) -> Result<Bytes, GatewayError> {
        METRICS.page_requests.inc();
        let key = self.key_of(&req);
        // A credential Confluence refused lately is refused here, without a request.
        if req.credential.is_some()
            && let Some(refusal) = self.refused.get(&key.credential)
        {
            METRICS.passthrough_refused_locally.inc();
            return Err(refusal);
        }
        // A credential Confluence has not accepted lately is checked with it again:
        // cached copies are skipped, so a revoked token reads nothing more.
        let (revalidating, share) = self.share_of(&req, &key.credential);
        let refresh = req.refresh || revalidating;
        let fingerprint = key.credential.clone();
        // A load shared by several callers retries as the caller that started it asked,
        // and waits for that caller's turn at Confluence (it counts once).
        let class = if req.persistent {
            RetryClass::Persistent
        } else {
            RetryClass::OneShot
        };
        // A load shared by several callers is traced under the first one's call; the
        // span is made only when a load starts (a hit needs none).
        let call = tracing::Span::current();
        let loading = Load {
            client: self.client.clone(),
            refused: self.refused.clone(),
            // Moved, not cloned: the key has its own copy, and a hit needs neither.
            query: req.query,
            credential: req.credential,
            fingerprint: key.credential.clone(),
            class,
            share,
            ahead: req.ahead,
        };
        // The cache runs this in a task of its own when the load is shared (then with no
        // deadline: no one caller's deadline may end it), or in this call when nothing is.
        let load = move |deadline, progress| {
            // No search string in the span: it may hold what a caller looks for.
            let span = tracing::info_span!(
                parent: &call,
                "page load",
                start = loading.query.start,
                limit = loading.query.limit,
                range = matches!(loading.query.span, Span::Range { .. })
            );
            loading.run(deadline, progress).instrument(span)
        };
        let caps = self.caps.clone();
        let admit = || {
            if req.metered {
                caps.miss(&req.caller)
            } else {
                Ok(())
            }
        };
        // Waiting on another load, not in the scheduler's queue: the caller's next
        // request need not wait behind it (`Urgency::after`).
        let rests = || req.urgency.enter();
        // A caller leaves at its own deadline, whoever else waits on the load.
        let why = "the call's deadline passed before the page was ready";
        let page = if req.unsettled {
            admit()?;
            // Boxed, as the cache boxes a load it runs in its caller: inline, the load's
            // large future would make every hit's future as large.
            let load = Box::pin(load(req.deadline, LoadProgress::default()));
            within_deadline(req.deadline, why, load).await?
        } else {
            within_deadline(
                req.deadline,
                why,
                self.cache
                    .get_or_load_admitted(key, refresh, req.deadline, (admit, rests), load),
            )
            .await?
        };
        if refresh || req.unsettled {
            // A refresh always asks Confluence: its answer is the credential's acceptance.
            self.note_accepted(fingerprint);
        }
        Ok(page)
    }

    /// Where `req`'s page is cached: the query under the credential's keyed fingerprint.
    fn key_of(&self, req: &PageRequest) -> PageKey {
        PageKey {
            base_url: self.base_url.clone(),
            credential: self.fingerprint_of(req.credential.as_ref()),
            query: req.query.clone(),
        }
    }

    /// Confluence accepted the credential of `fingerprint` just now (with revalidation).
    fn note_accepted(&self, fingerprint: Arc<str>) {
        if let Some((every, accepted)) = &self.revalidate {
            let mut accepted = accepted.lock().unwrap_or_else(|p| p.into_inner());
            if accepted.len() >= MAX_ACCEPTED {
                accepted.retain(|_, at| at.elapsed() < *every);
            }
            accepted.insert(fingerprint, Instant::now());
        }
    }

    /// Whether `req`'s credential must be checked with Confluence again (with
    /// passthrough, when it has not accepted it lately), and whose turn its request
    /// waits for: the caller's, or, for a credential Confluence has never accepted, the
    /// one small share all such credentials have together.
    fn share_of(&self, req: &PageRequest, fingerprint: &str) -> (bool, Share) {
        let mut share = caller_share(&req.caller, req.urgency.clone());
        let (Some((every, accepted)), Some(_)) = (&self.revalidate, &req.credential) else {
            return (false, share);
        };
        let accepted = accepted.lock().unwrap_or_else(|p| p.into_inner());
        match accepted.get(fingerprint) {
            Some(at) => (at.elapsed() >= *every, share),
            None => {
                share.id = "unverified".into();
                share.cap = Some(UNVERIFIED_SLOTS);
                (true, share)
            }
        }
    }
}

/// `caller`'s turn at Confluence, uncapped, as soon as `urgency` says.
fn caller_share(caller: &Caller, urgency: Urgency) -> Share {
    Share {
        id: caller.id.clone(),
        label: caller.label.clone(),
        weight: caller.weight,
        cap: None,
        urgency,
    }
}

/// A shared load's callers hear of its attempts through its progress.
impl FetchEvents for LoadProgress {
    fn retrying(&self, error: &GatewayError, wait: Duration) {
        LoadProgress::retrying(self, error, wait);
    }

    fn sending(&self) -> bool {
        LoadProgress::sending(self)
    }
}

/// A 200 body turned by `work` (for pages, `encode`: an encoded `GetSinceResponse`, or
/// [`GatewayError::MalformedBody`], which the upstream client retries).
async fn convert_with<W>(body: PageBody, work: W) -> Result<Bytes, GatewayError>
where
    W: FnOnce(&[u8]) -> Result<Bytes, GatewayError> + Send + 'static,
{
    if body.bytes().len() < BLOCKING_BODY_BYTES {
        return work(body.bytes());
    }
    // A full page takes milliseconds of CPU: off the async workers, so cache hits and
    // other calls are not held up behind it. The closure owns the body and its permit
    // (`src/upstream/client.rs`): if every caller goes away, the conversion goes on and
    // the permit is given back only when it ends, so the bound on bodies held stays true.
    tokio::task::spawn_blocking(move || work(body.bytes()))
        .await
        .map_err(|e| GatewayError::Internal(format!("page conversion failed: {e}")))?
}

/// `encode_page`, saying whether a body it refused is not JSON at all or JSON of another
/// shape (the second parse costs only on that failure).
fn encode(body: &[u8]) -> Result<Bytes, GatewayError> {
    match encode_page(body) {
        Err(GatewayError::MalformedBody(shape)) => Err(GatewayError::MalformedBody(
            match serde_json::from_slice::<IgnoredAny>(body) {
                Err(e) => format!("Confluence's answer is not JSON: {e}"),
                Ok(_) => shape,
            },
        )),
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    };

    use confluence_sim::SimulatorConfig;
    use url::Url;

    use super::*;
    use crate::{testing::harness::simulator, upstream::UpstreamConfig};

    /// No deadline, a one-shot call's retries.
    fn one_shot() -> FetchBounds<'static> {
        static ANONYMOUS: std::sync::LazyLock<Share> = std::sync::LazyLock::new(Share::anonymous);
        FetchBounds {
            deadline: None,
            class: RetryClass::OneShot,
            share: &ANONYMOUS,
        }
    }

    #[test]
    fn a_data_center_sites_pages_are_cached_apart_from_clouds() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let service = |dialect| {
            let url = Url::parse("https://confluence.example.com").expect("url");
            let client = ConfluenceClient::new(url, &UpstreamConfig::DEFAULT)
                .expect("client")
                .with_dialect(dialect);
            PageService::new(
                client,
                PageCache::new(crate::cache::CacheConfig::DEFAULT, None),
                FingerprintKey::from_secret(b"salt"),
            )
        };
        let req = PageRequest {
            query: PageQuery::default(),
            credential: None,
            refresh: false,
            unsettled: false,
            deadline: None,
            persistent: false,
            caller: Caller::anonymous(),
            urgency: Urgency::now(),
            metered: false,
            ahead: None,
        };
        let (cloud, dc) = (service(Dialect::Cloud), service(Dialect::DataCenter));
        assert_eq!(
            &*cloud.key_of(&req).base_url,
            "https://confluence.example.com/"
        );
        assert_ne!(cloud.key_of(&req), dc.key_of(&req));
    }

    /// A client of `base_url` holding at most one body at a time.
    fn one_body_client(base_url: &str) -> Arc<ConfluenceClient> {
        // As `Gateway::bind` does (src/gateway.rs); Err: installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings = UpstreamConfig {
            timeout: Duration::from_secs(5),
            concurrency: 4,
            ..UpstreamConfig::DEFAULT
        };
        let url = Url::parse(base_url).expect("url");
        Arc::new(
            ConfluenceClient::new(url, &settings)
                .expect("client")
                .holding_bodies(1),
        )
    }

    // Two workers: the test's own awaits go on while a conversion blocks one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conversion_its_caller_left_keeps_its_body_permit_until_it_ends() {
        let sim = simulator(SimulatorConfig::default()).await;
        let client = one_body_client(&sim.base_url());
        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let caller = tokio::spawn({
            let client = client.clone();
            async move {
                let query = PageQuery::default();
                let slow = |body| {
                    let (entered_tx, gate) = (entered_tx.clone(), gate.clone());
                    convert_with(body, move |b: &[u8]| {
                        let _ = entered_tx.send(b.len());
                        let _ = gate.lock().expect("gate").recv();
                        encode(b)
                    })
                };
                let events = LoadProgress::default();
                client
                    .fetch_page(&query, None, "anonymous", one_shot(), &events, slow)
                    .await
            }
        });
        let len = entered.recv().await.expect("the conversion began");
        assert!(
            len >= BLOCKING_BODY_BYTES,
            "a {len}-byte body is converted inline"
        );
        caller.abort();
        assert!(caller.await.expect_err("aborted").is_cancelled());
        // The caller is gone, its conversion is not: the body and its permit are held.
        assert_eq!(client.bodies_free(), 0, "the permit went with the caller");
        release.send(()).expect("the conversion waits");
        // Then given back when the conversion ends (bounded: a permit never given back
        // fails here).
        let mut waited = 0;
        while client.bodies_free() == 0 && waited < 500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        assert_eq!(client.bodies_free(), 1, "the permit came back");
        let page = client
            .fetch_page(
                &PageQuery::default(),
                None,
                "anonymous",
                one_shot(),
                &LoadProgress::default(),
                |body| convert_with(body, encode),
            )
            .await
            .expect("the next page has the permit");
        assert!(!page.is_empty());
    }

    /// A service of `sim` with one request slot at a time.
    fn one_slot_service(sim: &confluence_sim::SimulatorHandle) -> PageService {
        service_of(
            sim,
            &UpstreamConfig {
                concurrency: 1,
                concurrency_floor: 1,
                ..UpstreamConfig::DEFAULT
            },
        )
    }

    /// A service of `sim` with `settings` and the default cache.
    pub(crate) fn service_of(
        sim: &confluence_sim::SimulatorHandle,
        settings: &UpstreamConfig,
    ) -> PageService {
        // As `Gateway::bind` does (src/gateway.rs); Err: installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = Url::parse(&sim.base_url()).expect("url");
        PageService::new(
            ConfluenceClient::new(url, settings).expect("client"),
            PageCache::new(crate::cache::CacheConfig::DEFAULT, None),
            FingerprintKey::from_secret(b"salt"),
        )
    }

    /// A request for the page at `start`, read `ahead` (past its window's end when
    /// `past` says so, which counts the times it is asked).
    fn page_at(start: i32, past: Option<Arc<AtomicUsize>>) -> PageRequest {
        PageRequest {
            query: PageQuery {
                start,
                ..PageQuery::default()
            },
            credential: None,
            refresh: false,
            unsettled: false,
            deadline: None,
            persistent: true,
            caller: Caller::anonymous(),
            urgency: if past.is_some() {
                Urgency::ahead(3)
            } else {
                Urgency::now()
            },
            metered: false,
            ahead: past.map(|asked| AheadOf {
                landed: Arc::new(|_: &Bytes| {}),
                past_end: Arc::new(move || {
                    asked.fetch_add(1, Ordering::SeqCst);
                    true
                }),
            }),
        }
    }

    /// The starts of the pages the simulator was asked for.
    fn asked_starts(sim: &confluence_sim::SimulatorHandle) -> Vec<String> {
        sim.requests()
            .iter()
            .filter_map(|r| r.param("start"))
            .map(str::to_owned)
            .collect()
    }

    async fn started(asked: &AtomicUsize) {
        for _ in 0..500 {
            if asked.load(Ordering::SeqCst) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the look-ahead never came to its slot");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unsettled_page_is_neither_answered_from_the_cache_nor_kept_there() {
        let sim = simulator(SimulatorConfig::default()).await;
        let service = service_of(&sim, &UpstreamConfig::DEFAULT);
        let unsettled = || PageRequest {
            unsettled: true,
            ..page_at(0, None)
        };
        let ask = |req| {
            let service = service.clone();
            async move { service.page(req).await.expect("the page") }
        };
        ask(unsettled()).await;
        // Not kept: the cached request asks Confluence too, and is kept.
        ask(page_at(0, None)).await;
        assert_eq!(sim.request_count(), 2);
        ask(page_at(0, None)).await;
        assert_eq!(sim.request_count(), 2, "the settled page is cached");
        // Not answered from the cache either.
        ask(unsettled()).await;
        assert_eq!(sim.request_count(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_read_past_its_windows_end_gives_its_slot_up_and_is_not_sent_once_let_go() {
        let sim = simulator(SimulatorConfig::default()).await;
        let service = one_slot_service(&sim);
        let asked = Arc::new(AtomicUsize::new(0));
        let ahead = tokio::spawn({
            let (service, req) = (service.clone(), page_at(4000, Some(asked.clone())));
            async move { service.page(req).await }
        });
        started(&asked).await;
        // The one slot is free for a page needed now meanwhile.
        let needed = service
            .page(page_at(0, None))
            .await
            .expect("the page needed");
        assert!(!needed.is_empty());
        assert_eq!(
            asked_starts(&sim),
            ["0"],
            "only the page needed was asked for"
        );
        // Its stream lets it go: it is never sent, though it would be after MOST_HELD
        // were it still waited for.
        ahead.abort();
        let _ = ahead.await;
        let until = Instant::now() + MOST_HELD + Duration::from_millis(500);
        while Instant::now() < until {
            assert_eq!(asked_starts(&sim), ["0"], "the page past the end was sent");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_read_past_its_windows_end_that_is_still_wanted_is_sent_after_a_while() {
        let sim = simulator(SimulatorConfig::default()).await;
        let service = one_slot_service(&sim);
        let asked = Arc::new(AtomicUsize::new(0));
        let began = Instant::now();
        let page = service
            .page(page_at(4000, Some(asked.clone())))
            .await
            .expect("a page still wanted comes");
        assert!(!page.is_empty());
        assert!(
            began.elapsed() >= MOST_HELD,
            "sent after {:?}, before it was held back for {MOST_HELD:?}",
            began.elapsed()
        );
        assert!(
            asked.load(Ordering::SeqCst) > 1,
            "it gave its slot up and asked again"
        );
        assert_eq!(asked_starts(&sim), ["4000"]);
    }

    #[tokio::test]
    async fn a_load_tells_its_stream_of_the_converted_page_before_anyone_is_woken() {
        let sim = simulator(SimulatorConfig::default()).await;
        let service = one_slot_service(&sim);
        let told = Arc::new(Mutex::new(Vec::new()));
        let mut req = page_at(0, None);
        req.ahead = Some(AheadOf {
            landed: Arc::new({
                let told = told.clone();
                move |page: &Bytes| told.lock().expect("told").push(page.clone())
            }),
            past_end: Arc::new(|| false),
        });
        let page = service.page(req).await.expect("page");
        assert_eq!(
            *told.lock().expect("told"),
            [page],
            "told once, of the page returned"
        );
    }
}
