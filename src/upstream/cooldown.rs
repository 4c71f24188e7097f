//! One upstream budget per credential: when Confluence answers a request 429 (or 503)
//! with a `Retry-After`, it rate-limits the credential, not that one request, so every
//! request made with that credential waits until the time it named. Keyed by the
//! credential's keyed fingerprint, the one the page cache files pages under
//! (`src/app/pages.rs`; `"anonymous"` without a credential), so the map never holds a
//! secret. Each replica keeps its own map; with a [`SharedCooldowns`] store (Redis,
//! `src/cache/redis.rs`, wired in `src/gateway.rs`) replicas also tell each other of the
//! cool-downs they start and take in the others' before each attempt.
//!
//! A cool-down is a circuit breaker's open state, never a sentence: its length is capped
//! (`--upstream-max-cooldown`, applied by the client), and when it ends the credential is
//! half-open: exactly one request (the probe) goes, its answer closes the breaker (any
//! answer but another 429) or opens it again, and every other request waits for that
//! answer. Any answer other than a rate limit, to a request sent after the cool-down
//! began, ends it early, on every replica sharing the store.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::metrics::METRICS;

/// A cool-down as the shared store holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SharedView {
    /// The store could not say (unreachable, paused): keep this replica's own view.
    Unknown,
    /// No cool-down is recorded.
    Clear,
    /// A cool-down that ends (or ended: half-open) then.
    Until(SystemTime),
}

/// Cool-downs shared between replicas. It must never fail or slow a call noticeably: a
/// store in trouble answers [`SharedView::Unknown`] (within a short time-out) and drops
/// writes, and a value it cannot vouch for (forged, unparsable) is not obeyed.
#[async_trait]
pub(crate) trait SharedCooldowns: Send + Sync + 'static {
    /// The cool-down of `fingerprint` at the Confluence `base_url`, if one is recorded;
    /// it stays recorded for `linger` past its end (half-open) unless cleared.
    async fn get(&self, base_url: &str, fingerprint: &str) -> SharedView;
    /// Records a cool-down of `fingerprint` at `base_url` until `until`, kept for
    /// `linger` after it (the half-open time).
    async fn put(&self, base_url: &str, fingerprint: &str, until: SystemTime, linger: Duration);
    /// Ends the cool-down of `fingerprint` (an answer other than a rate limit came) and
    /// any probe claim on it.
    async fn clear(&self, base_url: &str, fingerprint: &str);
    /// Claims the one probe of a half-open cool-down for `hold` at most: `Some(true)`
    /// when this replica won it, `Some(false)` when another holds it, `None` when the
    /// store cannot say (the replica then probes on its own).
    async fn claim_probe(&self, base_url: &str, fingerprint: &str, hold: Duration) -> Option<bool>;
    /// Gives back a probe claim whose request brought no answer.
    async fn end_probe(&self, base_url: &str, fingerprint: &str);
}

/// Entries are swept of ended cool-downs when the map grows past this (with
/// `--auth-passthrough` every caller's credential may get one).
const SWEEP_AT: usize = 1024;

/// A cool-down this replica started is not taken as cleared by the shared store within
/// this long: the write telling the store of it may not have landed yet.
const SHARE_GRACE: Duration = Duration::from_secs(2);

/// One credential's cool-down.
#[derive(Debug)]
struct Entry {
    /// When it ends (then half-open until a probe answers).
    until: Instant,
    /// When it (last) began: only answers to requests sent after this end it.
    began: Instant,
    /// A probe of this replica is in flight.
    probing: bool,
    /// The shared store has shown it: its absence there later means it was cleared.
    seen_shared: bool,
}

/// What a request of a credential may do now.
#[derive(Debug)]
pub(crate) enum Gate {
    /// No cool-down: send.
    Open,
    /// Cooling down until then.
    Closed(Instant),
    /// The cool-down is over and this request probes: its answer decides for everyone.
    Probe(ProbeTicket),
    /// Another request of this replica probes: wait for its answer.
    Probing,
}

/// The cool-downs in force, by credential fingerprint.
#[derive(Debug, Default)]
pub(crate) struct Cooldowns {
    entries: Mutex<HashMap<Box<str>, Entry>>,
    /// Woken on every change, for requests waiting on a cool-down or a probe.
    changed: Notify,
}

impl Cooldowns {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds every request of `fingerprint` back until `until`; a cool-down already
    /// running longer is kept (a later, shorter answer does not shorten it).
    pub(crate) fn start(&self, fingerprint: &str, until: Instant) {
        if self.hold(fingerprint, until) {
            METRICS.upstream_cooldowns.inc();
        }
    }

    /// As [`Cooldowns::start`], for a cool-down another replica started (it counted it),
    /// as the shared store showed it; a time already past makes it half-open here too.
    pub(crate) fn adopt(&self, fingerprint: &str, until: Instant) {
        let mut map = self.lock();
        match map.get_mut(fingerprint) {
            Some(e) => {
                e.seen_shared = true;
                if until > e.until {
                    e.until = until;
                }
            }
            None => {
                let now = Instant::now();
                map.insert(
                    fingerprint.into(),
                    Entry {
                        until,
                        began: now.min(until),
                        probing: false,
                        seen_shared: true,
                    },
                );
            }
        }
    }

    /// Holds `fingerprint` back until `until` at least; false for a time already past.
    fn hold(&self, fingerprint: &str, until: Instant) -> bool {
        let now = Instant::now();
        if until <= now {
            return false;
        }
        let mut map = self.lock();
        if map.len() >= SWEEP_AT {
            map.retain(|_, e| e.until > now || e.probing);
        }
        let entry = map.entry(fingerprint.into()).or_insert(Entry {
            until,
            began: now,
            probing: false,
            seen_shared: false,
        });
        entry.until = entry.until.max(until);
        entry.began = now;
        entry.probing = false;
        drop(map);
        self.changed.notify_waiters();
        true
    }

    /// What a request of `fingerprint` may do now; a [`Gate::Probe`] makes it the probe.
    pub(crate) fn gate(self: &Arc<Self>, fingerprint: &str) -> Gate {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(fingerprint) else {
            return Gate::Open;
        };
        if entry.until > Instant::now() {
            return Gate::Closed(entry.until);
        }
        if entry.probing {
            return Gate::Probing;
        }
        entry.probing = true;
        Gate::Probe(ProbeTicket {
            cooldowns: self.clone(),
            fingerprint: fingerprint.into(),
        })
    }

    /// Whether a cool-down of `fingerprint` is running or awaits its probe's answer.
    pub(crate) fn holds(&self, fingerprint: &str) -> bool {
        self.lock().contains_key(fingerprint)
    }

    /// An answer other than a rate limit came to a request of `fingerprint` sent at
    /// `sent`: a cool-down that began before it is over. True when one ended.
    pub(crate) fn settle(&self, fingerprint: &str, sent: Instant) -> bool {
        let mut map = self.lock();
        let ended = map.get(fingerprint).is_some_and(|e| e.began <= sent);
        if ended {
            map.remove(fingerprint);
            drop(map);
            self.changed.notify_waiters();
        }
        ended
    }

    /// The shared store holds no cool-down of `fingerprint`: another replica ended the
    /// one this replica took from it (or it lingered out), so it ends here too. One this
    /// replica started and the store has not shown yet is kept: its write may be on the way.
    pub(crate) fn cleared_elsewhere(&self, fingerprint: &str) {
        let mut map = self.lock();
        let gone = map
            .get(fingerprint)
            .is_some_and(|e| !e.probing && (e.seen_shared || e.began.elapsed() >= SHARE_GRACE));
        if gone {
            map.remove(fingerprint);
            drop(map);
            self.changed.notify_waiters();
        }
    }

    /// Waits until a cool-down or probe changes, or `at_most` passes.
    pub(crate) async fn changed(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.changed.notified()).await;
    }

    /// When the cool-down of `fingerprint` ends, if one is running (not half-open).
    #[cfg(test)]
    pub(crate) fn until(&self, fingerprint: &str) -> Option<Instant> {
        self.lock()
            .get(fingerprint)
            .map(|e| e.until)
            .filter(|t| *t > Instant::now())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The right to send the one probe of a half-open cool-down. Dropped without an answer
/// (the request failed below HTTP, or was cancelled), it lets another request probe.
#[derive(Debug)]
pub(crate) struct ProbeTicket {
    cooldowns: Arc<Cooldowns>,
    fingerprint: Box<str>,
}

impl Drop for ProbeTicket {
    fn drop(&mut self) {
        let mut map = self.cooldowns.lock();
        if let Some(e) = map.get_mut(&*self.fingerprint) {
            e.probing = false;
        }
        drop(map);
        self.cooldowns.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_cool_down_holds_its_credential_only_and_only_grows() {
        let c = Arc::new(Cooldowns::default());
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        assert_eq!(c.until("a"), None);
        c.start("a", later);
        assert_eq!(c.until("a"), Some(later));
        assert!(matches!(c.gate("a"), Gate::Closed(t) if t == later));
        assert!(
            matches!(c.gate("anonymous"), Gate::Open),
            "another credential"
        );
        c.start("a", now + Duration::from_secs(1));
        assert_eq!(c.until("a"), Some(later), "not shortened");
        let even_later = later + Duration::from_secs(1);
        c.start("a", even_later);
        assert_eq!(c.until("a"), Some(even_later));
        // A time already past starts nothing.
        c.start("b", now);
        assert!(matches!(c.gate("b"), Gate::Open));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn an_ended_cool_down_lets_one_probe_through_whose_answer_decides() {
        let c = Arc::new(Cooldowns::default());
        c.start("a", Instant::now() + Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(30));
        let Gate::Probe(probe) = c.gate("a") else {
            panic!("half-open: the first request probes");
        };
        assert!(matches!(c.gate("a"), Gate::Probing), "only one probe");
        // The probe is cut off without an answer: another request may probe.
        drop(probe);
        let Gate::Probe(probe) = c.gate("a") else {
            panic!("the probe's place is free again");
        };
        // Its answer is another 429: closed again, for everybody.
        let again = Instant::now() + Duration::from_secs(60);
        c.start("a", again);
        drop(probe);
        assert!(matches!(c.gate("a"), Gate::Closed(t) if t == again));
    }

    #[test]
    fn only_an_answer_to_a_request_sent_after_the_cool_down_began_ends_it() {
        let c = Arc::new(Cooldowns::default());
        let sent_before = Instant::now();
        c.start("a", Instant::now() + Duration::from_secs(60));
        assert!(!c.settle("a", sent_before), "in flight when the 429 came");
        assert!(matches!(c.gate("a"), Gate::Closed(_)));
        assert!(c.settle("a", Instant::now()));
        assert!(matches!(c.gate("a"), Gate::Open));
        assert!(!c.settle("a", Instant::now()), "nothing left to end");
    }

    #[test]
    fn the_shared_store_ends_what_it_showed_but_not_what_it_has_yet_to_hear_of() {
        let c = Arc::new(Cooldowns::default());
        let until = Instant::now() + Duration::from_secs(60);
        c.start("mine", until);
        c.cleared_elsewhere("mine");
        assert!(
            matches!(c.gate("mine"), Gate::Closed(_)),
            "its write may be on the way"
        );
        c.adopt("theirs", until);
        c.cleared_elsewhere("theirs");
        assert!(matches!(c.gate("theirs"), Gate::Open));
        // Shown half-open by the store: this replica probes too.
        c.adopt("old", Instant::now());
        assert!(matches!(c.gate("old"), Gate::Probe(_)));
    }

    #[test]
    fn ended_cool_downs_are_swept_as_the_map_grows() {
        let c = Cooldowns::default();
        let soon = Instant::now() + Duration::from_millis(20);
        for i in 0..SWEEP_AT {
            c.start(&format!("k{i}"), soon);
        }
        assert_eq!(c.len(), SWEEP_AT);
        while Instant::now() <= soon {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(c.until("k0"), None, "ended");
        c.start("new", Instant::now() + Duration::from_secs(60));
        assert_eq!(c.len(), 1, "the ended entries went");
    }
}
