//! One upstream budget per credential: when Confluence answers a request 429 (or 503)
//! with a `Retry-After`, it rate-limits the credential, not that one request, so every
//! request made with that credential waits until the time it named. Keyed by the
//! credential's keyed fingerprint, the one the page cache files pages under
//! (`src/app/pages.rs`; `"anonymous"` without a credential), so the map never holds a
//! secret. Each replica keeps its own map; with a [`SharedCooldowns`] store (Redis,
//! `src/cache/redis.rs`, wired in `src/gateway.rs`) replicas also tell each other of the
//! cool-downs they start and take in the others' before each attempt.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;

use crate::metrics::METRICS;

/// Cool-downs shared between replicas. It must never fail or slow a call noticeably: a
/// store in trouble answers `None` (within a short time-out) and drops writes, and a
/// value it cannot vouch for (forged, unparsable) is `None`, never obeyed.
#[async_trait]
pub(crate) trait SharedCooldowns: Send + Sync + 'static {
    /// When the cool-down of `fingerprint` at the Confluence `base_url` ends, if one is
    /// running.
    async fn get(&self, base_url: &str, fingerprint: &str) -> Option<SystemTime>;
    /// Records a cool-down of `fingerprint` at `base_url` until `until`, `wait` from now
    /// (the value expires with it).
    async fn put(&self, base_url: &str, fingerprint: &str, until: SystemTime, wait: Duration);
}

/// Entries are swept of expired cool-downs when the map grows past this (with
/// `--auth-passthrough` every caller's credential may get one).
const SWEEP_AT: usize = 1024;

/// The cool-downs in force, by credential fingerprint.
#[derive(Debug, Default)]
pub(crate) struct Cooldowns {
    until: Mutex<HashMap<Box<str>, Instant>>,
}

impl Cooldowns {
    /// Holds every request of `fingerprint` back until `until`; a cool-down already
    /// running longer is kept (a later, shorter answer does not shorten it).
    pub(crate) fn start(&self, fingerprint: &str, until: Instant) {
        if self.hold(fingerprint, until) {
            METRICS.upstream_cooldowns.inc();
        }
    }

    /// As [`Cooldowns::start`], for a cool-down another replica started (it counted it).
    pub(crate) fn adopt(&self, fingerprint: &str, until: Instant) {
        self.hold(fingerprint, until);
    }

    /// Holds `fingerprint` back until `until` at least; false for a time already past.
    fn hold(&self, fingerprint: &str, until: Instant) -> bool {
        let now = Instant::now();
        if until <= now {
            return false;
        }
        let mut map = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= SWEEP_AT {
            map.retain(|_, t| *t > now);
        }
        match map.get_mut(fingerprint) {
            Some(t) if *t >= until => {}
            Some(t) => *t = until,
            None => {
                map.insert(fingerprint.into(), until);
            }
        }
        true
    }

    /// When the cool-down of `fingerprint` ends, if one is running.
    pub(crate) fn until(&self, fingerprint: &str) -> Option<Instant> {
        let map = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(fingerprint)
            .copied()
            .filter(|t| *t > Instant::now())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_cool_down_holds_its_credential_only_and_only_grows() {
        let c = Cooldowns::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        assert_eq!(c.until("a"), None);
        c.start("a", later);
        assert_eq!(c.until("a"), Some(later));
        assert_eq!(c.until("anonymous"), None, "another credential is not held");
        c.start("a", now + Duration::from_secs(1));
        assert_eq!(c.until("a"), Some(later), "not shortened");
        let even_later = later + Duration::from_secs(1);
        c.start("a", even_later);
        assert_eq!(c.until("a"), Some(even_later));
        // A time already past starts nothing.
        c.start("b", now);
        assert_eq!(c.until("b"), None);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn expired_cool_downs_are_swept_as_the_map_grows() {
        let c = Cooldowns::default();
        let soon = Instant::now() + Duration::from_millis(20);
        for i in 0..SWEEP_AT {
            c.start(&format!("k{i}"), soon);
        }
        assert_eq!(c.len(), SWEEP_AT);
        while Instant::now() <= soon {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(c.until("k0"), None, "expired");
        c.start("new", Instant::now() + Duration::from_secs(60));
        assert_eq!(c.len(), 1, "the expired entries went");
    }
}
