//! The page cache: encoded pages under a key that holds the upstream, a fingerprint of
//! the credential and the normalised query. An in-process tier answers first; a shared
//! tier ([`SharedTier`], e.g. Redis) may sit below it.

mod memory;
pub(crate) mod redis;

pub use redis::RedisConfig;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;

pub(crate) use memory::{LoadProgress, PageCache};

use crate::audit::PageQuery;

/// What a cached page is filed under. It never holds a credential, only its keyed
/// fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PageKey {
    /// The Confluence base URL.
    pub base_url: Arc<str>,
    /// The keyed fingerprint of the credential the page was fetched with.
    pub credential: Arc<str>,
    /// The page's query, defaults applied.
    pub query: PageQuery,
}

/// Every lookup hashes its key: the base URL is left out, as one gateway's keys all
/// hold the same one, so hashing it would tell none of them apart (equality still
/// compares it).
impl std::hash::Hash for PageKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.credential.hash(state);
        self.query.hash(state);
    }
}

impl PageKey {
    /// Bytes this key takes in memory, roughly, for the cache's byte bound.
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.base_url.len()
            + self.credential.len()
            + self.query.search_string.as_ref().map_or(0, String::len)
    }
}

/// A cache tier shared between gateway replicas, below the in-process tier. It must
/// never fail a call: a tier in trouble answers `None` and drops writes.
#[async_trait]
pub(crate) trait SharedTier: Send + Sync + 'static {
    /// The page under `key` and the time it has left, if the tier holds it.
    async fn get(&self, key: &PageKey) -> Option<(Bytes, Duration)>;
    /// Stores `page` under `key` for `ttl`; without `replace`, only where the tier
    /// holds no page yet.
    async fn put(&self, key: &PageKey, page: Bytes, ttl: Duration, replace: bool);
}

/// The in-process page cache: the `cache` section of `GatewayConfig`.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// How long a page is served from cache (`--cache-ttl`); zero disables caching (and
    /// the joining of loads).
    pub ttl: Duration,
    /// Bound on the in-process tier, in bytes of encoded pages (`--cache-max-bytes`).
    pub max_bytes: u64,
}

impl CacheConfig {
    /// The defaults, which `GatewayConfig::DEFAULT` holds.
    pub const DEFAULT: Self = Self {
        ttl: Duration::from_secs(60),
        // The cache dominates the gateway's memory; 16 MiB keeps a 1M-record stream
        // flat (see benches/stream.rs).
        max_bytes: 16 << 20,
    };
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}
