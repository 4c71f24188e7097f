//! Pages of the audit log as the gateway serves them: looked up in the page cache, or
//! fetched from Confluence, parsed and encoded as a `GetSinceResponse` once.

use std::{sync::Arc, time::Instant};

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
}

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
        }
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
        within_deadline(
            req.deadline,
            "the call's deadline passed before the page was ready",
            self.cache.get_or_load(key, req.refresh, req.deadline, load),
        )
        .await
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
