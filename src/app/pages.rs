//! Pages of the audit log as the gateway serves them: looked up in the page cache, or
//! fetched from Confluence, parsed and encoded as a `GetSinceResponse` once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::de::IgnoredAny;
use tokio::sync::Semaphore;

use crate::{
    audit::PageQuery,
    cache::{LoadProgress, PageCache, PageKey},
    credential::{Credential, FingerprintKey},
    error::{GatewayError, within_deadline},
    metrics::METRICS,
    pb::convert::encode_page,
    upstream::ConfluenceClient,
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
}

/// Serves pages through the cache.
#[derive(Clone)]
pub(crate) struct PageService {
    client: Arc<ConfluenceClient>,
    cache: PageCache,
    base_url: Arc<str>,
    fingerprints: Arc<FingerprintKey>,
    converting: Arc<Semaphore>,
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
            converting: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
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
        let (client, converting) = (self.client.clone(), self.converting.clone());
        let (query, credential) = (req.query, req.credential);
        // The cool-down of a rate-limited credential is kept under the same fingerprint.
        let budget = key.credential.clone();
        // The cache runs this in a task of its own when the load is shared (then with no
        // deadline: no one caller's deadline may end it), or in this call when nothing is.
        let load = move |deadline: Option<Instant>, progress: LoadProgress| async move {
            METRICS.page_loads.inc();
            client
                .fetch_page(
                    &query,
                    credential.as_ref(),
                    &budget,
                    deadline,
                    |err, wait| progress.retrying(err, wait),
                    |body| convert(converting.clone(), body),
                )
                .await
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

/// A 200 body as an encoded `GetSinceResponse`; a body that is not one is
/// [`GatewayError::MalformedBody`], which the upstream client retries.
async fn convert(converting: Arc<Semaphore>, body: Bytes) -> Result<Bytes, GatewayError> {
    if body.len() < BLOCKING_BODY_BYTES {
        return encode(&body);
    }
    // A full page takes milliseconds of CPU: off the async workers, so cache hits and
    // other calls are not held up behind it; one per core at a time, so memory does not
    // grow with the number of pages in flight.
    let _permit = converting
        .acquire_owned()
        .await
        .map_err(|_| GatewayError::Internal("page conversion is shut down".into()))?;
    tokio::task::spawn_blocking(move || encode(&body))
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
