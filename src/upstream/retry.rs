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
    /// The exponential ceilings backon walks: `base_delay` doubling up to `max_delay`,
    /// `max_retries` of them. Jitter and floors are applied in [`RetryPolicy::adjust`].
    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.max_retries as usize)
    }

    /// The delay before the next attempt after `err`, given backon's `ceiling` (`None`
    /// when out of retries), or `None` to give up: not transient, a plain 500 or a broken
    /// body retried enough already (counted in `spent`), a `Retry-After` longer than
    /// `max_retry_after`, or a wait that would end past `deadline`. Full jitter, with
    /// `Retry-After` as the floor.
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
    ) -> Option<Duration> {
        let ceiling = ceiling?;
        if !err.is_transient() {
            return None;
        }
        let own_bound = match err {
            GatewayError::Upstream {
                http_status: Some(500),
                ..
            } => Some((&mut spent.after_500, self.max_500_retries)),
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
            p.adjust(&at_max, c, &mut Spent::default(), None),
            Some(p.max_retry_after)
        );
        for status in [429, 503] {
            let longer = upstream(status, Some(p.max_retry_after + Duration::from_millis(1)));
            assert_eq!(p.adjust(&longer, c, &mut Spent::default(), None), None);
        }
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let p = RetryPolicy::default();
        let c = Some(Duration::from_millis(100));
        for status in [400, 401, 403, 404, 418] {
            assert_eq!(
                p.adjust(&upstream(status, None), c, &mut Spent::default(), None),
                None,
                "{status}"
            );
        }
        for status in [429, 502, 503, 504, 500] {
            assert!(
                p.adjust(&upstream(status, None), c, &mut Spent::default(), None)
                    .is_some(),
                "{status}"
            );
        }
        let mut spent = Spent::default();
        assert!(
            p.adjust(&upstream(500, None), c, &mut spent, None)
                .is_some()
        );
        assert!(
            p.adjust(&upstream(500, None), c, &mut spent, None)
                .is_none()
        );
        assert!(
            p.adjust(&upstream(503, None), None, &mut Spent::default(), None)
                .is_none()
        );
        let too_large = GatewayError::BodyTooLarge { limit: 1 };
        assert_eq!(p.adjust(&too_large, c, &mut Spent::default(), None), None);
    }

    #[test]
    fn broken_bodies_have_their_own_bound() {
        let p = RetryPolicy::default();
        let c = Some(Duration::from_millis(100));
        let bad = GatewayError::MalformedBody("cut".into());
        let mut spent = Spent::default();
        for i in 0..p.max_bad_body_retries {
            assert!(p.adjust(&bad, c, &mut spent, None).is_some(), "retry {i}");
            // Other failures in between do not spend it.
            assert!(
                p.adjust(&upstream(503, None), c, &mut spent, None)
                    .is_some()
            );
        }
        assert_eq!(p.adjust(&bad, c, &mut spent, None), None);
        // Nor does it spend the plain 500's retry.
        assert!(
            p.adjust(&upstream(500, None), c, &mut spent, None)
                .is_some()
        );
        // Never past the deadline, like any other retry.
        let passed = Some(Instant::now());
        assert_eq!(p.adjust(&bad, c, &mut Spent::default(), passed), None);
    }

    #[test]
    fn backoff_is_capped_jittered_and_floored_by_retry_after() {
        let p = RetryPolicy::default();
        let ceilings: Vec<Duration> = backon::BackoffBuilder::build(p.backoff()).collect();
        assert_eq!(ceilings.len(), p.max_retries as usize);
        assert_eq!(ceilings[0], p.base_delay);
        // backon multiplies by an f32 factor: equal to within a microsecond.
        assert!(ceilings[1].abs_diff(p.base_delay * 2) < Duration::from_micros(1));
        for c in ceilings {
            let d = p
                .adjust(&upstream(503, None), Some(c), &mut Spent::default(), None)
                .expect("retry");
            assert!(d <= c, "{d:?} above ceiling {c:?}");
        }
        let floored = upstream(429, Some(Duration::from_secs(2)));
        let c = Some(Duration::from_millis(1));
        assert_eq!(
            p.adjust(&floored, c, &mut Spent::default(), None),
            Some(Duration::from_secs(2))
        );
        let soon = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            p.adjust(&floored, c, &mut Spent::default(), Some(soon)),
            None
        );
    }
}
