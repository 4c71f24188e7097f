//! The in-process tier (moka): TTL, a byte bound, and one load per key at a time.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use moka::future::Cache;

use super::{CacheSettings, PageKey, SharedTier};
use crate::error::GatewayError;

/// The page cache callers use: in-process tier, optional shared tier, then the loader.
#[derive(Clone)]
pub struct PageCache {
    memory: Cache<PageKey, Bytes>,
    in_flight: Cache<PageKey, Bytes>,
    shared: Option<Arc<dyn SharedTier>>,
    settings: CacheSettings,
}

impl PageCache {
    /// A cache with the given bounds and, optionally, a shared tier below it.
    pub fn new(settings: CacheSettings, shared: Option<Arc<dyn SharedTier>>) -> Self {
        let memory = Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|k: &PageKey, v: &Bytes| {
                u32::try_from(k.weight() + v.len()).unwrap_or(u32::MAX)
            })
            .time_to_live(settings.ttl.max(std::time::Duration::from_millis(1)))
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
        let caching = !self.settings.ttl.is_zero();
        let shared = self.shared.clone();
        let ttl = self.settings.ttl;
        let lookup_key = key.clone();
        let init = async move {
            if let Some(tier) = shared.as_ref().filter(|_| caching && !refresh)
                && let Some(page) = tier.get(&lookup_key).await
            {
                return Ok(page);
            }
            let page = load().await?;
            if let Some(tier) = shared.as_ref().filter(|_| caching) {
                tier.put(&lookup_key, page.clone(), ttl).await;
            }
            Ok(page)
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
            if let (Ok(page), true) = (&result, caching) {
                self.memory.insert(key, page.clone()).await;
            }
        }
        result
    }

    /// Pages held by the in-process tier (for tests and metrics).
    pub fn entry_count(&self) -> u64 {
        self.memory.entry_count()
    }
}
