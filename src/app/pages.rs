//! Pages of the audit log as the gateway serves them: looked up in the page cache, or
//! fetched from Confluence, parsed and encoded as a `GetSinceResponse` once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::{
    audit::PageQuery,
    cache::{PageCache, PageKey},
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
        let lookup = async {
            match self.load_once(&key, &req).await {
                // The load we joined ran under its starter's deadline, not ours: when that
                // is what ended it, run one under our own.
                (Err(e), true) if e.is_deadline_bound() => self.load_once(&key, &req).await.0,
                (result, _) => result,
            }
        };
        // A caller that joined someone else's load still leaves at its own deadline.
        within_deadline(
            req.deadline,
            "the call's deadline passed before the page was ready",
            lookup,
        )
        .await
    }

    /// One cache lookup, loading on a miss; also says whether it joined another
    /// caller's load rather than running its own.
    async fn load_once(
        &self,
        key: &PageKey,
        req: &PageRequest,
    ) -> (Result<Bytes, GatewayError>, bool) {
        let ran = AtomicBool::new(false);
        let load = || {
            ran.store(true, Ordering::Relaxed);
            METRICS.page_loads.inc();
            async {
                let body = self
                    .client
                    .fetch_page(&req.query, req.credential.as_ref(), req.deadline)
                    .await?;
                if body.len() < BLOCKING_BODY_BYTES {
                    return encode_page(&body);
                }
                // A full page takes milliseconds of CPU: off the async workers, so cache
                // hits and other calls are not held up behind it; one per core at a time,
                // so memory does not grow with the number of pages in flight.
                let _permit =
                    self.converting.acquire().await.map_err(|_| {
                        GatewayError::Internal("page conversion is shut down".into())
                    })?;
                tokio::task::spawn_blocking(move || encode_page(&body))
                    .await
                    .map_err(|e| GatewayError::Internal(format!("page conversion failed: {e}")))?
            }
        };
        let result = self.cache.get_or_load(key.clone(), req.refresh, load).await;
        (result, !ran.load(Ordering::Relaxed))
    }
}
