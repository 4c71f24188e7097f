//! When and how long to wait before calling Confluence again: exponential backoff with
//! full jitter, `Retry-After` as a floor, and never past the caller's deadline. A
//! `Retry-After` longer than the gateway will sleep ends the call at once, carrying the
//! wait Confluence asked for (bounded to [`RETRY_AFTER_BOUND`]) rather than a clamped one.

use std::time::{Duration, Instant};

use backon::ExponentialBuilder;

use crate::error::{GatewayError, UpstreamFailure};

/// The longest wait taken from a `Retry-After` at all: values as large as 2^63-1 seconds
/// have been seen, and a caller told to come back in 292 billion years is told nothing
/// useful. A day still says "not soon" honestly.
pub(crate) const RETRY_AFTER_BOUND: Duration = Duration::from_secs(24 * 60 * 60);

/// How many retries a page fetched for a long call gets per retry a one-shot call
/// gets: a stream or a follower meets the failure rate on every page it fetches, so a
/// per-request bound compounds (at 20 % failures, 1 + 4 attempts lose about one page in
/// 3,000; 1 + 12, one in a billion). The retry budget (`src/upstream/budget.rs`) and the
/// caller's deadline still stop them in an outage.
const PERSISTENT_RETRY_FACTOR: u32 = 3;

/// How hard a page is fetched: the retry bounds that apply to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum RetryClass {
    /// A one-shot call (`GetSince`): `max_retries`, a plain 500 and a broken body each
    /// under their own smaller bound; the caller sees the failure and decides.
    #[default]
    OneShot,
    /// A page of a long call (`StreamSince`, `Follow`): a plain 500 retried like a 502,
    /// [`PERSISTENT_RETRY_FACTOR`] times `max_retries` in all, bounded by the retry budget
    /// and the deadline; a failed page would end a call that has run for minutes.
    Persistent,
}

/// Retry settings.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Retries allowed after a plain 500 (it is rarely transient).
    pub max_500_retries: u32,
    /// Retries allowed after a 200 whose body was cut or unusable: worth a second look
    /// (a proxy or a dropped connection), but a Confluence that keeps sending one will
    /// not change its mind.
    pub max_bad_body_retries: u32,
    /// First backoff ceiling; doubles each retry.
    pub base_delay: Duration,
    /// Largest backoff ceiling.
    pub max_delay: Duration,
    /// Longest `Retry-After` the gateway sleeps through; a longer one is not retried.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Atlassian's guidance: about 4 retries, exponential with jitter, capped near 30 s.
        Self {
            max_retries: 4,
            max_500_retries: 1,
            max_bad_body_retries: 2,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Retries after the first attempt for a page of `class`.
    pub(crate) fn retries(&self, class: RetryClass) -> u32 {
        match class {
            RetryClass::OneShot => self.max_retries,
            RetryClass::Persistent => self.max_retries.saturating_mul(PERSISTENT_RETRY_FACTOR),
        }
    }

    /// The exponential ceilings backon walks: `base_delay` doubling up to `max_delay`,
    /// [`RetryPolicy::retries`] of them. Jitter and floors are applied in
    /// [`RetryPolicy::adjust`].
    pub(crate) fn backoff(&self, class: RetryClass) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.retries(class) as usize)
    }

    /// The delay before the next attempt after `err`, given backon's `ceiling` (`None`
    /// when out of retries), or `None` to give up: not transient, a plain 500 (of a
    /// one-shot call) or a broken body retried enough already (counted in `spent`), a
    /// `Retry-After` longer than `max_retry_after`, or a wait that would end past
    /// `deadline`. Full jitter, with `Retry-After` as the floor.
    ///
    /// Giving up on a long `Retry-After` rather than sleeping a clamped wait: retrying
    /// before the time Confluence named only earns another 429, and the caller, told the
    /// real wait in `RetryInfo` (`src/grpc/status.rs`), can decide for itself.
    pub(crate) fn adjust(
        &self,
        err: &GatewayError,
        ceiling: Option<Duration>,
        spent: &mut Spent,
        deadline: Option<Instant>,
        class: RetryClass,
    ) -> Option<Duration> {
        let ceiling = ceiling?;
        if !err.is_transient() {
            return None;
        }
        let own_bound = match err {
            GatewayError::Upstream {
                http_status: Some(500),
                ..
            } if class == RetryClass::OneShot => Some((&mut spent.after_500, self.max_500_retries)),
            GatewayError::MalformedBody(_) => {
                Some((&mut spent.after_bad_body, self.max_bad_body_retries))
            }
            _ => None,
        };
        if let Some((used, max)) = own_bound {
            if *used >= max {
                return None;
            }
            *used += 1;
        }
        let floor = match err {
            GatewayError::Upstream {
                retry_after: Some(wait),
                ..
            } => *wait,
            _ => Duration::ZERO,
        };
        if floor > self.max_retry_after {
            return None;
        }
        let delay = ceiling.mul_f64(fastrand::f64()).max(floor);
        match deadline {
            // Waiting past the deadline only turns a precise error into a time-out.
            Some(d) if Instant::now() + delay >= d => None,
            _ => Some(delay),
        }
    }
}

/// Retries already spent on the failures that have their own, smaller bound; the
/// overall bound (`max_retries`) is backon's.
#[derive(Debug, Default)]
pub(crate) struct Spent {
    after_500: u32,
    after_bad_body: u32,
}

/// Parses `Retry-After` (delay-seconds; an HTTP date is not used by Confluence), bounded
/// to [`RETRY_AFTER_BOUND`].
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let (v, max) = (value.trim(), RETRY_AFTER_BOUND);
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(max));
    }
    // Some proxies send fractional seconds; anything else is ignored.
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::try_from_secs_f64(s).unwrap_or(max).min(max))
}

/// The failure class of an HTTP status other than 200.
pub(crate) fn classify(status: u16) -> UpstreamFailure {
    match status {
        400 => UpstreamFailure::BadRequest,
        401 => UpstreamFailure::Unauthenticated,
        403 => UpstreamFailure::PermissionDenied,
        404 => UpstreamFailure::NotFound,
        429 => UpstreamFailure::RateLimited,
        500 | 502 | 503 => UpstreamFailure::Unavailable,
        504 => UpstreamFailure::Timeout,
        _ => UpstreamFailure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RetryPolicy {
        /// `adjust` for a one-shot call.
        fn one_shot(
            &self,
            err: &GatewayError,
            ceiling: Option<Duration>,
            spent: &mut Spent,
            deadline: Option<Instant>,
        ) -> Option<Duration> {
            self.adjust(err, ceiling, spent, deadline, RetryClass::OneShot)
        }
    }

    fn upstream(status: u16, retry_after: Option<Duration>) -> GatewayError {
        GatewayError::Upstream {
            failure: classify(status),
            http_status: Some(status),
            message: String::new(),
            retry_after,
            source: None,
        }
    }

    #[test]
    fn retry_after_is_bounded_to_a_day_and_tolerant() {
        let day = RETRY_AFTER_BOUND;
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        // Longer than --upstream-max-backoff is kept as Confluence said it.
        assert_eq!(parse_retry_after("3600"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("9223372036854775807"), Some(day));
        assert_eq!(parse_retry_after("18446744073709551616"), Some(day));
        assert_eq!(parse_retry_after("1e300"), Some(day));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        for garbage in ["-1", "", "NaN", "inf", "-0.5", "2 s"] {
            assert_eq!(parse_retry_after(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn a_retry_after_longer_than_the_max_backoff_is_not_retried() {
        let p = RetryPolicy::default();
        let c = Some(Duration::from_millis(1));
        let at_max = upstream(429, Some(p.max_retry_after));
        assert_eq!(
            p.one_shot(&at_max, c, &mut Spent::default(), None),
            Some(p.max_retry_after)
        );
        for status in [429, 503] {
            let longer = upstream(status, Some(p.max_retry_after + Duration::from_millis(1)));
            assert_eq!(p.one_shot(&longer, c, &mut Spent::default(), None), None);
        }
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let p = RetryPolicy::default();
        let c = Some(Duration::from_millis(100));
        for status in [400, 401, 403, 404, 418] {
            assert_eq!(
                p.one_shot(&upstream(status, None), c, &mut Spent::default(), None),
                None,
                "{status}"
            );
        }
        for status in [429, 502, 503, 504, 500] {
            assert!(
                p.one_shot(&upstream(status, None), c, &mut Spent::default(), None)
                    .is_some(),
                "{status}"
            );
        }
        let mut spent = Spent::default();
        assert!(
            p.one_shot(&upstream(500, None), c, &mut spent, None)
                .is_some()
        );
        assert!(
            p.one_shot(&upstream(500, None), c, &mut spent, None)
                .is_none()
        );
        assert!(
            p.one_shot(&upstream(503, None), None, &mut Spent::default(), None)
                .is_none()
        );
        let too_large = GatewayError::BodyTooLarge { limit: 1 };
        assert_eq!(p.one_shot(&too_large, c, &mut Spent::default(), None), None);
    }

    #[test]
    fn broken_bodies_have_their_own_bound() {
        let p = RetryPolicy::default();
        let c = Some(Duration::from_millis(100));
        let bad = GatewayError::MalformedBody("cut".into());
        let mut spent = Spent::default();
        for i in 0..p.max_bad_body_retries {
            assert!(p.one_shot(&bad, c, &mut spent, None).is_some(), "retry {i}");
            // Other failures in between do not spend it.
            assert!(
                p.one_shot(&upstream(503, None), c, &mut spent, None)
                    .is_some()
            );
        }
        assert_eq!(p.one_shot(&bad, c, &mut spent, None), None);
        // Nor does it spend the plain 500's retry.
        assert!(
            p.one_shot(&upstream(500, None), c, &mut spent, None)
                .is_some()
        );
        // Never past the deadline, like any other retry.
        let passed = Some(Instant::now());
        assert_eq!(p.one_shot(&bad, c, &mut Spent::default(), passed), None);
    }

    #[test]
    fn backoff_is_capped_jittered_and_floored_by_retry_after() {
        let p = RetryPolicy::default();
        let ceilings: Vec<Duration> =
            backon::BackoffBuilder::build(p.backoff(RetryClass::OneShot)).collect();
        assert_eq!(ceilings.len(), p.max_retries as usize);
        assert_eq!(ceilings[0], p.base_delay);
        // backon multiplies by an f32 factor: equal to within a microsecond.
        assert!(ceilings[1].abs_diff(p.base_delay * 2) < Duration::from_micros(1));
        for c in ceilings {
            let d = p
                .one_shot(&upstream(503, None), Some(c), &mut Spent::default(), None)
                .expect("retry");
            assert!(d <= c, "{d:?} above ceiling {c:?}");
        }
        let floored = upstream(429, Some(Duration::from_secs(2)));
        let c = Some(Duration::from_millis(1));
        assert_eq!(
            p.one_shot(&floored, c, &mut Spent::default(), None),
            Some(Duration::from_secs(2))
        );
        let soon = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            p.one_shot(&floored, c, &mut Spent::default(), Some(soon)),
            None
        );
    }

    fn cut() -> GatewayError {
        GatewayError::Upstream {
            failure: UpstreamFailure::BodyCut,
            http_status: None,
            message: "cut".into(),
            retry_after: None,
            source: None,
        }
    }

    #[test]
    fn cut_bodies_are_retried_like_resets_under_the_overall_bound_only() {
        let p = RetryPolicy::default();
        let c = Some(Duration::from_millis(100));
        let mut spent = Spent::default();
        // Far past the broken body's own bound: a cut is not one.
        for i in 0..=p.max_bad_body_retries + 2 {
            assert!(
                p.one_shot(&cut(), c, &mut spent, None).is_some(),
                "retry {i}"
            );
        }
        // Nor does it spend the broken body's bound.
        let bad = GatewayError::MalformedBody("not JSON".into());
        assert!(p.one_shot(&bad, c, &mut spent, None).is_some());
        // Out of retries (backon's ceiling gone), or past the deadline: no more.
        assert_eq!(p.one_shot(&cut(), None, &mut spent, None), None);
        let passed = Some(Instant::now());
        assert_eq!(p.one_shot(&cut(), c, &mut spent, passed), None);
    }

    #[test]
    fn long_calls_retry_a_plain_500_like_a_502_and_more_often() {
        let p = RetryPolicy::default();
        let c = Some(Duration::from_millis(1));
        let class = RetryClass::Persistent;
        let mut spent = Spent::default();
        for i in 0..p.retries(class) {
            assert!(
                p.adjust(&upstream(500, None), c, &mut spent, None, class)
                    .is_some(),
                "retry {i}"
            );
        }
        // A one-shot call still gets its one retry after a 500.
        let mut spent = Spent::default();
        assert!(
            p.one_shot(&upstream(500, None), c, &mut spent, None)
                .is_some()
        );
        assert!(
            p.one_shot(&upstream(500, None), c, &mut spent, None)
                .is_none()
        );
        // More retries in all, still a finite number, and none with --upstream-retries 0.
        let ceilings = |class| backon::BackoffBuilder::build(p.backoff(class)).count();
        assert_eq!(ceilings(RetryClass::OneShot), p.max_retries as usize);
        assert_eq!(
            ceilings(class),
            (p.max_retries * PERSISTENT_RETRY_FACTOR) as usize
        );
        let none = RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(none.retries(class), 0);
        // The deadline and the non-transient rules hold for them too.
        let passed = Some(Instant::now());
        assert_eq!(
            p.adjust(
                &upstream(500, None),
                c,
                &mut Spent::default(),
                passed,
                class
            ),
            None
        );
        assert_eq!(
            p.adjust(&upstream(403, None), c, &mut Spent::default(), None, class),
            None
        );
    }
}
