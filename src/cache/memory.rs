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
}

/// The page cache callers use: in-process tier, optional shared tier, then the loader.
#[derive(Clone)]
pub struct PageCache {
    memory: Cache<PageKey, Cached>,
    in_flight: Cache<PageKey, Cached>,
    shared: Option<Arc<dyn SharedTier>>,
    settings: CacheSettings,
}

impl PageCache {
    /// A cache with the given bounds and, optionally, a shared tier below it.
    pub fn new(settings: CacheSettings, shared: Option<Arc<dyn SharedTier>>) -> Self {
        let memory = Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|k: &PageKey, v: &Cached| {
                u32::try_from(k.weight() + v.page.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerPageTtl)
            .build();
        let in_flight = Cache::builder().build();
        Self {
            memory,
            in_flight,
            shared,
            settings,
        }
    }

    /// The page under `key`, loading it with `load` on a miss. Concurrent misses of one
    /// key share a single load. With `refresh`, cached copies are skipped and replaced
    /// once the load succeeds (a failed refresh leaves the cached page in place).
    pub async fn get_or_load<F, Fut>(
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
        let caching = !ttl.is_zero();
        let shared = self.shared.clone().filter(|_| caching);
        let lookup_key = key.clone();
        let init = async move {
            if let Some(tier) = shared.as_ref().filter(|_| !refresh)
                && let Some((page, left)) = tier.get(&lookup_key).await
            {
                return Ok(Cached {
                    page,
                    ttl: left.min(ttl),
                });
            }
            let page = load().await?;
            if let Some(tier) = shared {
                // Off the caller's path: a slow shared tier must not slow the answer.
                let (page, key) = (page.clone(), lookup_key);
                tokio::spawn(async move { tier.put(&key, page, ttl).await });
            }
            Ok(Cached { page, ttl })
        };
        // Refreshes and uncached loads go through a map of their own that only joins
        // concurrent loads of one key; its entries are dropped right after.
        let bypass = refresh || !caching;
        let flights = if bypass {
            &self.in_flight
        } else {
            &self.memory
        };
        let result = flights
            .try_get_with(key.clone(), init)
            .await
            .map_err(|e: Arc<GatewayError>| (*e).clone());
        if bypass {
            self.in_flight.invalidate(&key).await;
            if let (Ok(cached), true) = (&result, caching) {
                self.memory.insert(key, cached.clone()).await;
            }
        }
        result.map(|c| c.page)
    }

    /// Pages held by the in-process tier (for tests and metrics).
    pub fn entry_count(&self) -> u64 {
        self.memory.entry_count()
    }
}
