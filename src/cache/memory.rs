//! The in-process tier (moka): per-page TTL, a byte bound, and one load per key at a time.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use moka::{Expiry, future::Cache};

use super::{CacheSettings, PageKey, SharedTier};
use crate::error::GatewayError;

/// A cached page and how long it stays fresh from when it was stored.
#[derive(Clone, Debug)]
struct Cached {
    page: Bytes,
    ttl: Duration,
}

/// Each page expires after its own TTL: a page filled from the shared tier keeps only
/// the time it had left there.
struct PerPageTtl;

impl Expiry<PageKey, Cached> for PerPageTtl {
    fn expire_after_create(&self, _: &PageKey, value: &Cached, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    // A refresh replaces the entry: it gets its own full TTL, not what the old one had.
    fn expire_after_update(
        &self,
        _: &PageKey,
        value: &Cached,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The page cache callers use: in-process tier, optional shared tier, then the loader.
#[derive(Clone)]
pub(crate) struct PageCache {
    memory: Cache<PageKey, Cached>,
    shared: Option<Arc<dyn SharedTier>>,
    settings: CacheSettings,
}

impl PageCache {
    /// A cache with the given bounds and, optionally, a shared tier below it.
    pub(crate) fn new(settings: CacheSettings, shared: Option<Arc<dyn SharedTier>>) -> Self {
        let memory = Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|k: &PageKey, v: &Cached| {
                u32::try_from(k.weight() + v.page.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerPageTtl)
            .build();
        Self {
            memory,
            shared,
            settings,
        }
    }

    /// The page under `key`, loading it with `load` on a miss. Concurrent misses of one
    /// key share a single load.
    ///
    /// With `refresh`, cached copies are skipped: `load` runs now, never joining a load
    /// that began earlier (a stream relies on a refreshed page being taken after the
    /// call), and its page replaces the cached ones only if it succeeds.
    pub(crate) async fn get_or_load<F, Fut>(
        &self,
        key: PageKey,
        refresh: bool,
        load: F,
    ) -> Result<Bytes, GatewayError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, GatewayError>>,
    {
        let ttl = self.settings.ttl;
        if ttl.is_zero() {
            return load().await;
        }
        if refresh {
            let page = load().await?;
            self.store_shared(&key, &page, true);
            self.memory
                .insert(
                    key,
                    Cached {
                        page: page.clone(),
                        ttl,
                    },
                )
                .await;
            return Ok(page);
        }
        let shared = self.shared.clone();
        let lookup_key = key.clone();
        let this = self.clone();
        let init = async move {
            if let Some(tier) = &shared
                && let Some((page, left)) = tier.get(&lookup_key).await
            {
                return Ok(Cached {
                    page,
                    ttl: left.min(ttl),
                });
            }
            let page = load().await?;
            this.store_shared(&lookup_key, &page, false);
            Ok(Cached { page, ttl })
        };
        self.memory
            .try_get_with(key, init)
            .await
            .map(|c| c.page)
            .map_err(|e: Arc<GatewayError>| (*e).clone())
    }

    /// Writes a page to the shared tier off the caller's path: a slow shared tier must
    /// not slow the answer. A refresh replaces what is there; a fill never does, so an
    /// older load finishing late cannot overwrite a refresh.
    fn store_shared(&self, key: &PageKey, page: &Bytes, replace: bool) {
        if let Some(tier) = self.shared.clone() {
            let (key, page, ttl) = (key.clone(), page.clone(), self.settings.ttl);
            tokio::spawn(async move { tier.put(&key, page, ttl, replace).await });
        }
    }
}
