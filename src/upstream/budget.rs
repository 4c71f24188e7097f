//! A retry budget, as Finagle's and Envoy's: retries may add at most a fixed share of
//! the requests made over a sliding window (plus a small floor, so a quiet gateway can
//! still retry). In an outage every request fails; without a budget each would be sent
//! `1 + --upstream-retries` times, multiplying the load on a Confluence that is already
//! down. With it, once the share is spent, a failure is returned as it is.

use std::{
    sync::{Mutex, PoisonError},
    time::Instant,
};

/// Seconds the window spans, one bucket each.
const WINDOW_SECS: usize = 10;

/// Requests and retries counted in the last [`WINDOW_SECS`] seconds.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// Retries allowed per request in the window (0.5: one retry per two requests).
    ratio: f64,
    /// Retries allowed per second of the window whatever the requests.
    min_per_sec: u32,
    start: Instant,
    buckets: Mutex<[Bucket; WINDOW_SECS]>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// The second (since `start`) this bucket counts; older counts are stale.
    second: u64,
    requests: u64,
    retries: u64,
}

impl Default for RetryBudget {
    /// Half the requests, and at least 10 retries a second (Finagle's floor). Not
    /// Finagle's 20 %: with a share of failures `p`, a page needs `p / (1 - p)` retries
    /// on average, so 20 % would fail pages of a Confluence that loses one answer in five
    /// (tests/interop/stream_interop.py streams through exactly that). Half still keeps
    /// an outage to 1.5 times the load rather than `1 + --upstream-retries` times. The
    /// extra retries of long calls (`RetryClass::Persistent`, `src/upstream/retry.rs`)
    /// come from the same budget: at 20 % failures they average 0.25 per page, inside it.
    fn default() -> Self {
        Self::new(0.5, 10)
    }
}

impl RetryBudget {
    /// A budget of `ratio` retries per request, with a floor of `min_per_sec` a second.
    pub(crate) fn new(ratio: f64, min_per_sec: u32) -> Self {
        Self {
            ratio,
            min_per_sec,
            start: Instant::now(),
            buckets: Mutex::new([Bucket::default(); WINDOW_SECS]),
        }
    }

    /// Counts a request (a first attempt).
    pub(crate) fn request(&self) {
        self.request_at(Instant::now());
    }

    /// Takes one retry from the budget if any is left; `false` means do not retry.
    pub(crate) fn try_retry(&self) -> bool {
        self.try_retry_at(Instant::now())
    }

    fn request_at(&self, now: Instant) {
        self.with_current(now, |b| b.requests += 1);
    }

    fn try_retry_at(&self, now: Instant) -> bool {
        let second = self.second(now);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in buckets.iter().filter(|b| is_live(b, second)) {
            requests += b.requests;
            retries += b.retries;
        }
        let floor = u64::from(self.min_per_sec) * WINDOW_SECS as u64;
        let allowed = floor as f64 + self.ratio * requests as f64;
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        current(&mut buckets, second).retries += 1;
        true
    }

    fn with_current(&self, now: Instant, f: impl FnOnce(&mut Bucket)) {
        let second = self.second(now);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        f(current(&mut buckets, second));
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }
}

/// Whether a bucket counts for the window ending in `second`.
fn is_live(b: &Bucket, second: u64) -> bool {
    b.second + WINDOW_SECS as u64 > second
}

/// The bucket of `second`, emptied first if it still holds an older second's counts.
fn current(buckets: &mut [Bucket; WINDOW_SECS], second: u64) -> &mut Bucket {
    let b = &mut buckets[(second % WINDOW_SECS as u64) as usize];
    if b.second != second {
        *b = Bucket {
            second,
            ..Bucket::default()
        };
    }
    b
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const WINDOW: Duration = Duration::from_secs(WINDOW_SECS as u64);

    #[test]
    fn retries_are_a_share_of_requests_beyond_the_floor() {
        let budget = RetryBudget::new(0.2, 0);
        let now = budget.start;
        assert!(!budget.try_retry_at(now), "no requests, no floor: no retry");
        for _ in 0..10 {
            budget.request_at(now);
        }
        assert!(budget.try_retry_at(now));
        assert!(budget.try_retry_at(now));
        assert!(
            !budget.try_retry_at(now),
            "20 % of 10 requests is 2 retries"
        );
        for _ in 0..5 {
            budget.request_at(now);
        }
        assert!(budget.try_retry_at(now), "15 requests: a third retry");
        assert!(!budget.try_retry_at(now));
    }

    #[test]
    fn the_floor_allows_retries_when_requests_are_few() {
        let budget = RetryBudget::new(0.2, 1);
        let now = budget.start;
        budget.request_at(now);
        for i in 0..WINDOW_SECS {
            assert!(budget.try_retry_at(now), "retry {i} within the floor");
        }
        assert!(!budget.try_retry_at(now));
    }

    #[test]
    fn the_window_slides() {
        let budget = RetryBudget::new(0.5, 0);
        let t0 = budget.start;
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        for _ in 0..10 {
            budget.request_at(t0);
        }
        assert!(budget.try_retry_at(t0));
        // Within the window: 5 retries earned, 1 spent.
        for i in 0..4 {
            assert!(budget.try_retry_at(at(9)), "retry {i}");
        }
        assert!(!budget.try_retry_at(at(9)));
        // Past it, the first second's requests earn nothing more; the retries of the
        // ninth still count against the new requests' share.
        for _ in 0..8 {
            budget.request_at(at(12));
        }
        assert!(!budget.try_retry_at(at(12)), "4 earned, 4 still spent");
        // Those have left too by the nineteenth second.
        for i in 0..4 {
            assert!(budget.try_retry_at(at(19)), "retry {i}");
        }
        assert!(!budget.try_retry_at(at(19)));
        assert_eq!(WINDOW, Duration::from_secs(10));
    }
}
