//! Records created in real time ([`super::Live`]) and records visible only some time after
//! their creation date (late visibility). Both are drawn from the simulator's seed, and
//! created lazily when the simulator looks at its log, so no background task runs and a run
//! with the same seed and the same request times sees the same records.

use super::Live;
use super::data::mix;

/// Salts that keep the live schedule and the late draws apart from the other generators.
const LIVE_SALT: u64 = 0x6c69_7665;
const LATE_SALT: u64 = 0x6c61_7465;

/// The seeded schedule of live records: bursts of 1..=`burst` records, each burst at its own
/// millisecond, the gaps between bursts exponential so the average rate is `per_second`.
#[derive(Clone, Debug)]
pub(crate) struct LiveClock {
    rng: fastrand::Rng,
    /// Mean gap between bursts, in milliseconds.
    mean_gap_ms: f64,
    burst: u32,
    /// Exact time of the next burst (fractional, so rounding does not bias the rate).
    next_at: f64,
    /// Millisecond of the next burst: always after the previous burst's.
    next_ms: i64,
    /// No burst is created after this millisecond (see `SimulatorHandle::stop_live_at`).
    stop_ms: Option<i64>,
}

impl LiveClock {
    /// A schedule starting after `start_ms`, or `None` when `live` creates nothing.
    pub(crate) fn new(live: &Live, seed: u64, start_ms: i64) -> Option<LiveClock> {
        if !(live.per_second.is_finite() && live.per_second > 0.0) {
            return None;
        }
        let burst = live.burst.max(1);
        let mean_burst = (f64::from(burst) + 1.0) / 2.0;
        let mut clock = LiveClock {
            rng: fastrand::Rng::with_seed(mix(seed ^ LIVE_SALT)),
            mean_gap_ms: 1000.0 * mean_burst / live.per_second,
            burst,
            next_at: start_ms as f64,
            next_ms: start_ms,
            stop_ms: None,
        };
        clock.advance();
        Some(clock)
    }

    /// The bursts due at or before `now_ms` (and not after the stop), oldest first, as
    /// (millisecond, records); the schedule moves past them.
    pub(crate) fn due(&mut self, now_ms: i64) -> Vec<(i64, u64)> {
        let until = self.stop_ms.map_or(now_ms, |stop| stop.min(now_ms));
        let mut due = Vec::new();
        while self.next_ms <= until {
            let size = self.rng.u32(1..=self.burst);
            due.push((self.next_ms, u64::from(size)));
            self.advance();
        }
        due
    }

    /// Stops the schedule after `at_ms` (an earlier stop stays).
    pub(crate) fn stop_at(&mut self, at_ms: i64) {
        self.stop_ms = Some(self.stop_ms.map_or(at_ms, |stop| stop.min(at_ms)));
    }

    /// The millisecond after which no burst is created, if stopped.
    pub(crate) fn stop_ms(&self) -> Option<i64> {
        self.stop_ms
    }

    fn advance(&mut self) {
        // Exponential gaps: bursts arrive as a Poisson process. 1 - f64() is in (0, 1].
        let gap = -(1.0 - self.rng.f64()).ln() * self.mean_gap_ms;
        self.next_at += gap;
        // Each burst its own millisecond, so `burst` bounds how many records share one.
        let ms = self.next_at.floor() as i64;
        self.next_ms = ms.max(self.next_ms.saturating_add(1));
        self.next_at = self.next_at.max(self.next_ms as f64);
    }
}

/// When records become visible: a share of them only some time in (0, `by_ms`] after their
/// creation date, drawn from the seed and the record's sequence number.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lateness {
    seed: u64,
    share: f64,
    by_ms: u64,
}

impl Lateness {
    /// `None` when no record is late.
    pub(crate) fn new(seed: u64, share: f64, by_ms: u64) -> Option<Lateness> {
        (share > 0.0 && by_ms > 0).then_some(Lateness { seed, share, by_ms })
    }

    /// How long after its creation date record `seq` becomes visible, if it is late.
    pub(crate) fn delay_ms(&self, seq: u64) -> Option<i64> {
        let draw = mix(self.seed ^ LATE_SALT ^ mix(seq));
        // The top 53 bits as a fraction in [0, 1), the rest for the delay.
        let fraction = (draw >> 11) as f64 / (1u64 << 53) as f64;
        let delay = 1 + mix(draw) % self.by_ms;
        (fraction < self.share).then(|| i64::try_from(delay).unwrap_or(i64::MAX))
    }
}
