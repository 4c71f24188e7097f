//! How far Confluence's clock is from the gateway's, estimated from the `Date` header of
//! every answer (`src/upstream/client.rs`). Follow asks for date ranges in Confluence's
//! terms, so a gateway whose clock is off reads ranges Confluence has not settled yet.
//!
//! A `Date` has a resolution of one second: the answer was made at some instant in
//! `[D, D + 1 s)`, itself between the request's sending and its answer's arrival. One
//! answer therefore bounds the offset (Confluence minus gateway) to
//! `[D - received, D + 1 s - sent]`. Answers made at different fractions of a second
//! narrow it: over the recent answers, the estimate is the middle of the intersection
//! of their bounds. Should they not intersect (Confluence's clock was stepped, or a
//! proxy answered with a stale `Date`), it is the median of their midpoints instead,
//! which one odd answer cannot move far.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// Answers the estimate is taken over: enough to meet most fractions of a second, few
/// enough that a stepped clock is followed within a few dozen answers.
const WINDOW: usize = 32;

/// The offset of Confluence's clock from the gateway's, from recent answers; one per
/// upstream client (every gateway its own, also when several run in one process).
#[derive(Debug, Default)]
pub(crate) struct ClockOffset {
    /// The bounds `(lo, hi)` in ms each recent answer puts on the offset, oldest first.
    samples: Mutex<VecDeque<(i64, i64)>>,
    /// The current estimate in ms, read without the lock.
    estimate: AtomicI64,
    /// How far behind Confluence's clock certainly is, in whole seconds (ms, at most 0).
    behind: AtomicI64,
    /// Whether any answer was seen.
    seen: AtomicBool,
    /// Held by the one caller whose request is to give the first answer.
    first: tokio::sync::Mutex<()>,
}

impl ClockOffset {
    /// Takes in an answer whose `Date` was `date_secs` (epoch seconds), to a request sent
    /// at `sent_at` whose answer's head arrived at `received_at` (the gateway's clock).
    pub(crate) fn observe(&self, date_secs: i64, sent_at: SystemTime, received_at: SystemTime) {
        let (Some(sent), Some(received)) = (epoch_ms(sent_at), epoch_ms(received_at)) else {
            return;
        };
        // The gateway's clock went back between the two: the answer says nothing sure.
        if received < sent {
            return;
        }
        let date = date_secs.saturating_mul(1000);
        let bounds = (
            date.saturating_sub(received),
            date.saturating_add(1000).saturating_sub(sent),
        );
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == WINDOW {
            samples.pop_front();
        }
        samples.push_back(bounds);
        self.estimate.store(estimate(&samples), Ordering::Relaxed);
        // Down at once (safe), up only by a clear step: followers of one gateway compute
        // their ranges from it, and they share requests only while they agree.
        let candidate = certainly_behind(&samples);
        let current = self.behind.load(Ordering::Relaxed);
        if candidate < current || candidate >= current + 2000 {
            self.behind.store(candidate, Ordering::Relaxed);
        }
        // Released after `behind`: whoever sees an answer seen sees what it said.
        self.seen.store(true, Ordering::Release);
    }

    /// Takes in an answer's `Date` header value (an HTTP-date); one that does not parse
    /// is ignored.
    pub(crate) fn observe_header(&self, value: &str, sent_at: SystemTime, received_at: SystemTime) {
        if let Some(secs) = http_date_secs(value) {
            self.observe(secs, sent_at, received_at);
        }
    }

    /// Confluence's clock minus the gateway's, in ms; 0 until an answer was seen.
    pub(crate) fn offset_ms(&self) -> i64 {
        self.estimate.load(Ordering::Relaxed)
    }

    /// How far behind the gateway's Confluence's clock certainly is, in ms rounded down to
    /// whole seconds (0 when the answers allow it not to be behind, and until an answer
    /// was seen). Follow settles ranges by it: the least offset the answers allow, never
    /// the likeliest, which could put Confluence's clock later than it is. An offset within
    /// the `Date` header's second (and the answers' round trips) cannot be told from none;
    /// `lag` covers it.
    pub(crate) fn behind_ms(&self) -> i64 {
        self.behind.load(Ordering::Relaxed)
    }

    /// Whether an answer with a usable `Date` was seen.
    pub(crate) fn observed(&self) -> bool {
        self.seen.load(Ordering::Acquire)
    }

    /// Waits to be the one caller asking Confluence before any answer was seen (Follow's
    /// first range, past the cache): the others wait for that answer rather than each
    /// ask, then look at [`ClockOffset::observed`] again.
    pub(crate) async fn first_answer(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.first.lock().await
    }
}

/// The middle of the bounds' intersection, or the median of their midpoints when they do
/// not intersect. `samples` is never empty.
fn estimate(samples: &VecDeque<(i64, i64)>) -> i64 {
    let lo = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let hi = samples.iter().map(|s| s.1).min().unwrap_or(0);
    if lo <= hi {
        return midpoint(lo, hi);
    }
    let mut mids: Vec<i64> = samples.iter().map(|&(lo, hi)| midpoint(lo, hi)).collect();
    mids.sort_unstable();
    mids[mids.len() / 2]
}

/// The least offset the answers allow, rounded down to whole seconds, when they allow
/// only offsets below 0; else 0. The bounds are those of the intersection when the answers
/// agree, else the medians of their bounds (one odd answer cannot move them far).
/// `samples` is never empty.
fn certainly_behind(samples: &VecDeque<(i64, i64)>) -> i64 {
    let mut lo = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let mut hi = samples.iter().map(|s| s.1).min().unwrap_or(0);
    if lo > hi {
        let median = |mut v: Vec<i64>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        lo = median(samples.iter().map(|s| s.0).collect());
        hi = median(samples.iter().map(|s| s.1).collect());
    }
    if hi >= 0 {
        return 0;
    }
    lo.div_euclid(1000).saturating_mul(1000)
}

fn midpoint(lo: i64, hi: i64) -> i64 {
    lo + (hi - lo) / 2
}

/// The gateway's own clock, epoch ms (0 before 1970).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`, or the obsolete forms) as epoch seconds.
pub(crate) fn http_date_secs(value: &str) -> Option<i64> {
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    let secs = at.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

fn epoch_ms(at: SystemTime) -> Option<i64> {
    let ms = at.duration_since(UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The gateway's clock at `ms` epoch milliseconds.
    fn at(ms: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("after 1970"))
    }

    /// An answer from a Confluence whose clock is `offset_ms` ahead, to a request sent at
    /// `sent_ms` (gateway) that took `rtt_ms`, made halfway through.
    fn answer(clock: &ClockOffset, offset_ms: i64, sent_ms: i64, rtt_ms: i64) {
        let made = sent_ms + rtt_ms / 2 + offset_ms;
        clock.observe(made.div_euclid(1000), at(sent_ms), at(sent_ms + rtt_ms));
    }

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn nothing_seen_is_no_offset() {
        let clock = ClockOffset::default();
        assert_eq!(clock.offset_ms(), 0);
        assert!(!clock.observed());
        // An unparsable Date is not an answer seen.
        clock.observe_header("yesterday", at(T0), at(T0 + 10));
        assert!(!clock.observed());
    }

    #[test]
    fn one_answer_is_within_its_second() {
        for offset in [-5000, -1, 0, 250, 3_600_000] {
            let clock = ClockOffset::default();
            answer(&clock, offset, T0 + 123, 20);
            assert!(clock.observed());
            let error = (clock.offset_ms() - offset).abs();
            assert!(error <= 520, "offset {offset}: {}", clock.offset_ms());
        }
    }

    #[test]
    fn behind_is_never_less_than_the_truth_and_steady() {
        for offset in [-5000, -2500, -1, 0, 250] {
            let clock = ClockOffset::default();
            let mut seen = Vec::new();
            for (i, rtt) in [2_500, 10, 1_200, 30, 700, 15, 20, 40]
                .into_iter()
                .enumerate()
            {
                answer(&clock, offset, T0 + i as i64 * 377, rtt);
                // Never later than Confluence's clock; an offset within the Date's second
                // is not told from none.
                let bound = if offset > -1000 { 0 } else { offset };
                assert!(
                    clock.behind_ms() <= bound,
                    "{offset}: {}",
                    clock.behind_ms()
                );
                seen.push(clock.behind_ms());
            }
            if offset > -1000 {
                // Not certainly behind: the gateway's own clock stands.
                assert_eq!(clock.behind_ms(), 0, "{offset}");
            } else {
                assert!(offset - clock.behind_ms() <= 2000, "{offset}: {seen:?}");
            }
            // Steady: down to a bound, perhaps once more.
            seen.dedup();
            assert!(seen.len() <= 3, "{offset}: {seen:?}");
        }
    }

    #[test]
    fn answers_at_many_fractions_of_a_second_narrow_it() {
        for offset in [-5000, -4321, 0, 777, 12_345] {
            let clock = ClockOffset::default();
            // Requests 137 ms apart meet every tenth of a second within the window.
            for i in 0..WINDOW as i64 {
                answer(&clock, offset, T0 + i * 137, 10);
            }
            let error = (clock.offset_ms() - offset).abs();
            assert!(error <= 50, "offset {offset}: {}", clock.offset_ms());
        }
    }

    #[test]
    fn an_odd_answer_does_not_move_it_far_and_a_stepped_clock_is_followed() {
        let clock = ClockOffset::default();
        for i in 0..20 {
            answer(&clock, -5000, T0 + i * 137, 10);
        }
        // A stale Date from a cache in front: a minute behind.
        answer(&clock, -65_000, T0 + 20 * 137, 10);
        let error = (clock.offset_ms() + 5000).abs();
        assert!(error <= 600, "{}", clock.offset_ms());
        // Confluence's clock is stepped to the right time: a window later it is followed.
        for i in 21..21 + WINDOW as i64 {
            answer(&clock, 0, T0 + i * 137, 10);
        }
        assert!(clock.offset_ms().abs() <= 50, "{}", clock.offset_ms());
    }

    #[test]
    fn a_gateway_clock_that_went_back_mid_request_is_ignored() {
        let clock = ClockOffset::default();
        clock.observe(T0 / 1000, at(T0), at(T0 - 1));
        assert!(!clock.observed());
        assert_eq!(clock.offset_ms(), 0);
    }

    #[test]
    fn http_dates_parse_to_epoch_seconds() {
        assert_eq!(
            http_date_secs("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        // The obsolete RFC 850 form, which a recipient must accept.
        assert_eq!(
            http_date_secs("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(http_date_secs("784111777"), None);
        let clock = ClockOffset::default();
        // Sent and answered within 08:49:37 on Confluence's clock, 5 s ahead.
        let sent = 784_111_777_000 - 5000 + 400;
        clock.observe_header("Sun, 06 Nov 1994 08:49:37 GMT", at(sent), at(sent + 200));
        let error = (clock.offset_ms() - 5000).abs();
        assert!(error <= 500, "{}", clock.offset_ms());
    }
}
