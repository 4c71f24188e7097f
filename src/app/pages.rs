//! Pages of the audit log as the gateway serves them: looked up in the page cache, or
//! fetched from Confluence, parsed and encoded as a `GetSinceResponse` once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::de::IgnoredAny;
use tracing::Instrument;

use crate::{
    audit::{PageQuery, Span},
    cache::{LoadProgress, PageCache, PageKey},
    credential::{Credential, FingerprintKey},
    error::{GatewayError, within_deadline},
    metrics::METRICS,
    pb::convert::encode_page,
    upstream::{
        ConfluenceClient, RetryClass,
        client::{FetchBounds, FetchEvents, PageBody},
    },
};

/// Bodies at least this large are converted on the blocking pool.
const BLOCKING_BODY_BYTES: usize = 64 * 1024;
/// Credentials remembered as accepted, at most (older ones are forgotten first).
const MAX_ACCEPTED: usize = 10_000;

/// One page request, already validated.
#[derive(Clone, Debug)]
pub(crate) struct PageRequest {
    /// What to fetch.
    pub query: PageQuery,
    /// Whom to fetch it as (`None`: anonymous).
    pub credential: Option<Credential>,
    /// Skip cached copies and refresh them.
    pub refresh: bool,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// A page of a long call (`StreamSince`, `Follow`): transient failures, a plain 500
    /// included, are retried as `RetryClass::Persistent` (`src/upstream/retry.rs`).
    pub persistent: bool,
}

/// Serves pages through the cache.
#[derive(Clone)]
pub(crate) struct PageService {
    client: Arc<ConfluenceClient>,
    cache: PageCache,
    base_url: Arc<str>,
    fingerprints: Arc<FingerprintKey>,
    /// With `--auth-passthrough`: how long Confluence's acceptance of a caller's
    /// credential lets cached pages be served to it, and when it last accepted each
    /// (by fingerprint). A revoked token stops reading within that time.
    revalidate: Option<(Duration, Arc<Mutex<Accepted>>)>,
}

/// When Confluence last accepted each credential, by fingerprint.
type Accepted = HashMap<Arc<str>, Instant>;

impl PageService {
    /// Wires the client, the cache and the fingerprint key together.
    pub(crate) fn new(
        client: ConfluenceClient,
        cache: PageCache,
        fingerprints: FingerprintKey,
    ) -> Self {
        Self {
            base_url: client.base_url().into(),
            client: Arc::new(client),
            cache,
            fingerprints: Arc::new(fingerprints),
            revalidate: None,
        }
    }

    /// Serves a cached page to a caller's credential only if Confluence accepted that
    /// credential within `every` (for `--auth-passthrough`).
    pub(crate) fn revalidating(mut self, every: Duration) -> Self {
        self.revalidate = Some((every, Arc::default()));
        self
    }

    /// The page as an encoded `GetSinceResponse`.
    pub(crate) async fn page(&self, req: PageRequest) -> Result<Bytes, GatewayError> {
        METRICS.page_requests.inc();
        let key = PageKey {
            base_url: self.base_url.clone(),
            credential: req
                .credential
                .as_ref()
                .map_or_else(
                    || "anonymous".to_owned(),
                    |c| c.fingerprint(&self.fingerprints),
                )
                .into(),
            query: req.query.clone(),
        };
        // A credential Confluence has not accepted lately is checked with it again:
        // cached copies are skipped, so a revoked token reads nothing more.
        let revalidating =
            if let (Some((every, accepted)), Some(_)) = (&self.revalidate, &req.credential) {
                let accepted = accepted.lock().unwrap_or_else(|p| p.into_inner());
                accepted
                    .get(&key.credential)
                    .is_none_or(|at| at.elapsed() >= *every)
            } else {
                false
            };
        let refresh = req.refresh || revalidating;
        let fingerprint = key.credential.clone();
        let client = self.client.clone();
        let (query, credential) = (req.query, req.credential);
        // A load shared by several callers retries as the caller that started it asked.
        let class = if req.persistent {
            RetryClass::Persistent
        } else {
            RetryClass::OneShot
        };
        // The cool-down of a rate-limited credential is kept under the same fingerprint.
        let budget = key.credential.clone();
        // The cache runs this in a task of its own when the load is shared (then with no
        // deadline: no one caller's deadline may end it), or in this call when nothing is.
        // A load shared by several callers is traced under the first one's call. No
        // search string in the span: it may hold what a caller looks for.
        let span = tracing::info_span!(
            "page load",
            start = query.start,
            limit = query.limit,
            range = matches!(query.span, Span::Range { .. })
        );
        let load = move |deadline: Option<Instant>, progress: LoadProgress| {
            async move {
                METRICS.page_loads.inc();
                client
                    .fetch_page(
                        &query,
                        credential.as_ref(),
                        &budget,
                        FetchBounds { deadline, class },
                        &progress,
                        |body| convert_with(body, encode),
                    )
                    .await
            }
            .instrument(span)
        };
        // A caller leaves at its own deadline, whoever else waits on the load.
        let page = within_deadline(
            req.deadline,
            "the call's deadline passed before the page was ready",
            self.cache.get_or_load(key, refresh, req.deadline, load),
        )
        .await?;
        if let (true, Some((every, accepted))) = (refresh, &self.revalidate) {
            // A refresh always asks Confluence: its answer is the credential's acceptance.
            let mut accepted = accepted.lock().unwrap_or_else(|p| p.into_inner());
            if accepted.len() >= MAX_ACCEPTED {
                accepted.retain(|_, at| at.elapsed() < *every);
            }
            accepted.insert(fingerprint, Instant::now());
        }
        Ok(page)
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
mod tests {
    use std::sync::mpsc;

    use confluence_sim::{Simulator, SimulatorConfig};
    use url::Url;

    use super::*;
    use crate::upstream::{RetryPolicy, UpstreamSettings};

    /// No deadline, a one-shot call's retries.
    const ONE_SHOT: FetchBounds = FetchBounds {
        deadline: None,
        class: RetryClass::OneShot,
    };

    /// A client of `base_url` holding at most one body at a time.
    fn one_body_client(base_url: &str) -> Arc<ConfluenceClient> {
        // As `Gateway::bind` does (src/gateway.rs); Err: installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings = UpstreamSettings {
            base_url: Url::parse(base_url).expect("url"),
            attempt_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_body_bytes: 8 << 20,
            retry: RetryPolicy::default(),
            concurrency: 4,
            max_bodies: 1,
        };
        Arc::new(ConfluenceClient::new(settings).expect("client"))
    }

    // Two workers: the test's own awaits go on while a conversion blocks one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conversion_its_caller_left_keeps_its_body_permit_until_it_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let sim = Simulator::start(SimulatorConfig::default(), listener)
            .await
            .expect("simulator");
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
                    .fetch_page(&query, None, "anonymous", ONE_SHOT, &events, slow)
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
                ONE_SHOT,
                &LoadProgress::default(),
                |body| convert_with(body, encode),
            )
            .await
            .expect("the next page has the permit");
        assert!(!page.is_empty());
    }
}
