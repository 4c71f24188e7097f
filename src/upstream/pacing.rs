//! Adaptive pacing of Confluence requests: how many of one credential's requests may be
//! in flight at once, moved by what Confluence's answers say (additive increase,
//! multiplicative decrease, the idea behind TCP's congestion window and Netflix's
//! concurrency-limits).
//!
//! - **Grow** while answers come back fast with no warning, by what they prove the site
//!   carried: each answer says how many of the credential's requests were in flight
//!   when it was sent (its level). Until the first cut (slow start) the limit rises to
//!   twice the most requests that were in flight at once, once as many answers came
//!   back clean (a whole batch), as TCP's window doubles per round trip;
//!   after it, by one per limit's worth of answers sent at the limit (one per round
//!   trip). A limit nothing presses against does not grow past twice what was used, and
//!   a batch sent at once does not grow it on its first answers (low levels) while its
//!   last ones (the high levels) bring warnings.
//! - **Cut by half** on `X-RateLimit-NearLimit: true` or a 429: Atlassian says the
//!   credential's budget is nearly spent, so the gateway slows down before it is refused
//!   (or right after).
//! - **Cut by a fifth** when the time to Confluence's first byte rises past twice its
//!   usual value for pages of that size: requests queue at Confluence. (A page of 1000
//!   records takes longer to list than one of 10; comparing like with like keeps a mix
//!   of sizes from reading as a rise.)
//!
//! A cut counts once per round trip: the answers of requests sent before it say nothing
//! of the new limit. The limit stays within `--upstream-concurrency-floor` and
//! `--upstream-concurrency` (the ceiling); the fair scheduler (`fair.rs`) shares it
//! between callers.
//!
//! Replicas that share a store ([`SharedPaces`], the Redis tier) share their cuts: each
//! cut is recorded there, and each replica looks at most once a second per credential
//! (off the request's path) and takes in a cut newer than its own that is lower than its
//! limit, so the fleet backs off together from a warning one replica heard, as flows
//! sharing one link do.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;

/// How often a replica looks for other replicas' cuts of one credential's limit.
const SHARED_LOOK: Duration = Duration::from_secs(1);

/// Cuts of limits shared between replicas. Like shared cool-downs it never fails a call:
/// a store in trouble knows nothing and drops writes.
#[async_trait]
pub(crate) trait SharedPaces: Send + Sync + 'static {
    /// The last cut any replica recorded for `fingerprint` at `base_url`: the limit and
    /// when it was made.
    async fn last_cut(&self, base_url: &str, fingerprint: &str) -> Option<(f64, SystemTime)>;
    /// Records a cut of `fingerprint`'s limit at `base_url` to `limit`, made now.
    async fn put_cut(&self, base_url: &str, fingerprint: &str, limit: f64);
}

/// Credentials whose pace is remembered, at most, before idle ones are forgotten (with
/// passthrough each caller's credential has one).
const KEEP: usize = 1024;
/// First-byte times within this of the usual one are not a rise (timer and scheduling
/// noise on a fast Confluence).
const LATENCY_SLACK: Duration = Duration::from_millis(20);

/// Page sizes whose first-byte times are compared apart.
const SIZE_CLASSES: usize = 4;

/// The class of a page of `size` records: up to 25, 100, 400, more.
fn size_class(size: u32) -> usize {
    match size {
        0..=25 => 0,
        26..=100 => 1,
        101..=400 => 2,
        _ => 3,
    }
}

/// Why the limit last moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Move {
    /// Answers came back fast while requests waited for the limit.
    Grew,
    /// Confluence said the credential is near its rate limit.
    NearLimit,
    /// Confluence refused a request with 429.
    RateLimited,
    /// Confluence's first byte came much later than usual.
    Latency,
    /// Another replica cut it (through the shared store).
    Shared,
}

impl Move {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Grew => "grew",
            Self::NearLimit => "near_limit",
            Self::RateLimited => "rate_limited",
            Self::Latency => "latency",
            Self::Shared => "shared",
        }
    }
}

/// What one answer said of the credential's budget.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Answer {
    /// A 200 (or another answer that is not a rate limit), its first byte after `ttfb`.
    Served {
        /// Time from sending to the answer's headers.
        ttfb: Duration,
        /// Records the page asked for (its `limit`).
        size: u32,
        /// `X-RateLimit-NearLimit: true` (or no budget left).
        near_limit: bool,
    },
    /// A 429.
    RateLimited,
}

/// The limits of every credential.
#[derive(Debug)]
pub(crate) struct Pacing {
    floor: f64,
    initial: f64,
    ceiling: f64,
    paces: Mutex<HashMap<String, Pace>>,
}

/// One credential's limit and what it was learnt from.
#[derive(Clone, Copy, Debug)]
struct Pace {
    limit: f64,
    /// Double per whole batch answered cleanly, until the first cut.
    slow_start: bool,
    /// The usual first-byte time of each page size class (`size_class`): the lowest
    /// seen, drifting up slowly to a lasting rise.
    usual: [Option<Duration>; SIZE_CLASSES],
    last_cut: Option<Instant>,
    /// When the last cut this replica knows of (its own or another's) was made.
    last_cut_at: Option<SystemTime>,
    /// When the shared store was last looked at for this credential.
    last_look: Option<Instant>,
    /// The most of its requests sent to be in flight at once (the highest level).
    highest_sent: usize,
    /// Answers that came back clean since slow start last grew.
    clean: usize,
    last_seen: Instant,
}

impl Pacing {
    /// Limits between `floor` and `ceiling` (at least 1), each credential starting at
    /// `initial`.
    pub(crate) fn new(floor: usize, initial: usize, ceiling: usize) -> Self {
        let ceiling = ceiling.max(1);
        let floor = floor.clamp(1, ceiling);
        Self {
            floor: floor as f64,
            initial: initial.clamp(floor, ceiling) as f64,
            ceiling: ceiling as f64,
            paces: Mutex::new(HashMap::new()),
        }
    }

    /// `credential`'s pace, made at `initial` if it has none; at [`KEEP`] credentials the
    /// least recently heard of goes (it starts again at `initial` if it comes back).
    fn pace_of<'a>(
        &self,
        paces: &'a mut HashMap<String, Pace>,
        credential: &str,
        now: Instant,
    ) -> &'a mut Pace {
        if paces.len() >= KEEP
            && !paces.contains_key(credential)
            && let Some(oldest) = paces
                .iter()
                .min_by_key(|(_, p)| p.last_seen)
                .map(|(k, _)| k.clone())
        {
            paces.remove(&oldest);
        }
        paces
            .entry(credential.to_owned())
            .or_insert_with(|| Pace::new(self.initial, now))
    }

    /// A request of `credential` was sent while `level` of its requests (itself
    /// included) were in flight.
    pub(crate) fn sent(&self, credential: &str, level: usize) {
        let now = Instant::now();
        let mut paces = self.paces.lock().unwrap_or_else(PoisonError::into_inner);
        let pace = self.pace_of(&mut paces, credential, now);
        // Read in slow start only, where the limit never comes down.
        pace.highest_sent = pace.highest_sent.max(level);
    }

    /// Whether it is time to look for other replicas' cuts of `credential`'s limit (at
    /// most once per [`SHARED_LOOK`]); counts the look as made.
    pub(crate) fn due_for_shared(&self, credential: &str) -> bool {
        if self.floor == self.ceiling {
            return false;
        }
        let now = Instant::now();
        let mut paces = self.paces.lock().unwrap_or_else(PoisonError::into_inner);
        // A credential new here looks before its first answer: the fleet's cut holds it
        // from its first batch on.
        let pace = self.pace_of(&mut paces, credential, now);
        if pace.last_look.is_some_and(|at| now - at < SHARED_LOOK) {
            return false;
        }
        pace.last_look = Some(now);
        true
    }

    /// Takes in another replica's cut of `credential`'s limit to `limit`, made `at`: when
    /// it is newer than the last cut this replica knows of and lower than its limit, the
    /// limit comes down to it (within the floor) and grows additively from there. The
    /// new limit, when its whole number moved.
    pub(crate) fn adopt(&self, credential: &str, limit: f64, at: SystemTime) -> Option<usize> {
        if !limit.is_finite() {
            return None;
        }
        let mut paces = self.paces.lock().unwrap_or_else(PoisonError::into_inner);
        let pace = paces.get_mut(credential)?;
        if pace.last_cut_at.is_some_and(|known| at <= known) {
            return None;
        }
        pace.last_cut_at = Some(at);
        if limit >= pace.limit {
            return None;
        }
        let before = pace.limit as usize;
        pace.limit = limit.clamp(self.floor, self.ceiling);
        pace.slow_start = false;
        pace.last_cut = Some(Instant::now());
        let after = pace.limit as usize;
        (after != before).then_some(after)
    }

    /// A fixed limit of `n` (no pacing).
    #[cfg(test)]
    pub(crate) fn fixed(n: usize) -> Self {
        Self::new(n, n, n)
    }

    /// The most requests of `credential` allowed in flight now.
    pub(crate) fn limit(&self, credential: &str) -> usize {
        let paces = self.paces.lock().unwrap_or_else(PoisonError::into_inner);
        let limit = paces.get(credential).map_or(self.initial, |p| p.limit);
        limit as usize
    }

    /// Takes in `answer` to a request of `credential` sent at `sent` while `level` of its
    /// requests (itself included) were in flight. The new limit and why, when its whole
    /// number moved.
    pub(crate) fn observe(
        &self,
        credential: &str,
        answer: Answer,
        sent: Instant,
        level: usize,
    ) -> Option<(usize, Move)> {
        let now = Instant::now();
        let mut paces = self.paces.lock().unwrap_or_else(PoisonError::into_inner);
        let pace = self.pace_of(&mut paces, credential, now);
        pace.last_seen = now;
        let before = pace.limit as usize;
        let moved = pace.take(answer, sent, level as f64, self.ceiling);
        pace.limit = pace.limit.clamp(self.floor, self.ceiling);
        let after = pace.limit as usize;
        moved.filter(|_| after != before).map(|why| (after, why))
    }
}

impl Pace {
    /// A credential's pace before any answer.
    fn new(limit: f64, now: Instant) -> Self {
        Self {
            limit,
            slow_start: true,
            usual: [None; SIZE_CLASSES],
            last_cut: None,
            last_cut_at: None,
            last_look: None,
            highest_sent: 0,
            clean: 0,
            last_seen: now,
        }
    }

    /// Moves the limit for `answer`; why, if it moved.
    fn take(&mut self, answer: Answer, sent: Instant, level: f64, ceiling: f64) -> Option<Move> {
        // A cut answers for the requests in flight when it was made: one sent before it
        // cannot show that the cut was not enough.
        let after_cut = self.last_cut.is_none_or(|cut| sent >= cut);
        let cut = match answer {
            Answer::RateLimited => Some((0.5, Move::RateLimited)),
            Answer::Served {
                near_limit: true, ..
            } => Some((0.5, Move::NearLimit)),
            Answer::Served { ttfb, size, .. } => {
                let usual_of = &mut self.usual[size_class(size)];
                let usual = *usual_of.get_or_insert(ttfb);
                let risen = ttfb > usual * 2 + LATENCY_SLACK;
                // The lowest seen is the usual time; a lasting rise is taken in slowly,
                // so a Confluence that got slower for good is not cut for ever.
                *usual_of = Some(if ttfb < usual {
                    ttfb
                } else {
                    usual + (ttfb - usual) / 32
                });
                risen.then_some((0.8, Move::Latency))
            }
        };
        match cut {
            Some((factor, why)) => {
                if !after_cut {
                    return None;
                }
                self.limit *= factor;
                self.slow_start = false;
                self.last_cut = Some(Instant::now());
                self.last_cut_at = Some(SystemTime::now());
                Some(why)
            }
            // While slow starting: once as many answers came back clean as the most
            // requests sent at once (a whole batch, whatever order its answers took),
            // the site carried that many without complaint, and twice that is the next
            // round trip's test. A batch with a warning in it is cut instead.
            None if after_cut && self.slow_start => {
                self.clean += 1;
                let carried = self.highest_sent.max(1);
                if self.clean < carried {
                    return None;
                }
                self.clean = 0;
                let next = 2.0 * carried as f64;
                if next <= self.limit || self.limit >= ceiling {
                    return None;
                }
                self.limit = next;
                Some(Move::Grew)
            }
            // Growing while nothing presses against the limit would raise a limit nothing
            // tested; answers to requests sent before the last cut say nothing of it.
            None if after_cut
                && !self.slow_start
                && level >= self.limit.floor()
                && self.limit < ceiling =>
            {
                self.limit += 1.0 / self.limit;
                Some(Move::Grew)
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn served(ms: u64) -> Answer {
        Answer::Served {
            ttfb: MS * ms as u32,
            size: 1000,
            near_limit: false,
        }
    }

    /// Feeds `n` answers sent now at `level`; the limit after.
    fn feed(p: &Pacing, answer: Answer, n: usize, level: usize) -> usize {
        for _ in 0..n {
            p.sent("c", level);
            p.observe("c", answer, Instant::now(), level);
        }
        p.limit("c")
    }

    /// Feeds one answer per level `1..=limit`, as a batch sent at once comes back; the
    /// limit after.
    fn batch(p: &Pacing, answer: Answer) -> usize {
        let limit = p.limit("c");
        for level in 1..=limit {
            p.sent("c", level);
        }
        for level in 1..=limit {
            p.observe("c", answer, Instant::now(), level);
        }
        p.limit("c")
    }

    #[test]
    fn slow_start_doubles_per_round_trip_up_to_the_ceiling() {
        let p = Pacing::new(2, 4, 32);
        assert_eq!(p.limit("c"), 4);
        assert_eq!(batch(&p, served(100)), 8);
        assert_eq!(batch(&p, served(100)), 16);
        assert_eq!(batch(&p, served(100)), 32);
        assert_eq!(batch(&p, served(100)), 32, "capped by the ceiling");
    }

    #[test]
    fn clean_answers_to_a_batchs_lower_requests_do_not_grow_it_before_its_last_ones() {
        // A site warning past 6 in flight, refusing past 10, a batch of 8: growing on the
        // answers at levels 1–6 (to 12) would send past 10 before 7 and 8 warn.
        let p = Pacing::new(1, 8, 32);
        for level in 1..=8 {
            p.sent("c", level);
        }
        for level in 1..=6 {
            assert_eq!(p.observe("c", served(100), Instant::now(), level), None);
        }
        assert_eq!(p.limit("c"), 8);
        let near = Answer::Served {
            ttfb: MS * 100,
            size: 1000,
            near_limit: true,
        };
        assert_eq!(
            p.observe("c", near, Instant::now() - MS, 7),
            Some((4, Move::NearLimit))
        );
    }

    #[test]
    fn a_limit_grows_to_no_more_than_twice_what_was_used() {
        let p = Pacing::new(2, 8, 32);
        assert_eq!(
            feed(&p, served(100), 20, 3),
            8,
            "3 in flight prove nothing of 8"
        );
        assert_eq!(feed(&p, served(100), 20, 6), 12);
        assert_eq!(feed(&p, served(100), 20, 6), 12);
    }

    #[test]
    fn a_batch_whose_last_answers_warn_is_cut_not_grown() {
        // A site warning past 4 in flight, a batch of 8: levels 1–4 come back clean,
        // 5–8 warn.
        let p = Pacing::new(1, 8, 32);
        let near = Answer::Served {
            ttfb: MS * 100,
            size: 1000,
            near_limit: true,
        };
        let sent = Instant::now();
        for level in 1..=8 {
            p.sent("c", level);
        }
        for level in 1..=4 {
            assert_eq!(p.observe("c", served(100), sent, level), None);
        }
        for level in 5..=8 {
            p.observe("c", near, sent, level);
        }
        assert_eq!(p.limit("c"), 4);
    }

    #[test]
    fn near_limit_halves_once_per_round_trip_then_growth_is_additive() {
        let p = Pacing::new(2, 8, 32);
        assert_eq!(batch(&p, served(100)), 16);
        let before_cut = Instant::now();
        let near = Answer::Served {
            ttfb: MS * 100,
            size: 1000,
            near_limit: true,
        };
        assert_eq!(
            p.observe("c", near, before_cut, 16),
            Some((8, Move::NearLimit))
        );
        // More warnings for requests sent before the cut change nothing.
        for _ in 0..5 {
            assert_eq!(p.observe("c", near, before_cut, 16), None);
        }
        assert_eq!(p.limit("c"), 8);
        // Now one per limit's worth of answers at the limit (a round trip), not one per
        // answer, and none for answers below it.
        assert_eq!(feed(&p, served(100), 7, 8), 8);
        assert_eq!(feed(&p, served(100), 2, 8), 9);
        assert_eq!(feed(&p, served(100), 20, 5), 9);
        assert_eq!(feed(&p, served(100), 9, 9), 10);
    }

    #[test]
    fn rate_limits_cut_down_to_the_floor_and_no_further() {
        let p = Pacing::new(2, 8, 16);
        for _ in 0..10 {
            std::thread::sleep(MS);
            p.observe("c", Answer::RateLimited, Instant::now(), 8);
        }
        assert_eq!(p.limit("c"), 2);
    }

    #[test]
    fn a_rise_in_first_byte_time_cuts_by_a_fifth() {
        let p = Pacing::new(1, 10, 16);
        feed(&p, served(50), 1, 1);
        let moved = p.observe("c", served(400), Instant::now(), 10);
        assert_eq!(moved, Some((8, Move::Latency)));
        // Within twice the usual time plus slack: no cut, and growth again.
        assert_eq!(feed(&p, served(90), 9, 8), 9);
        // A small page is compared with small pages: its first quick answer is no rise,
        // and a large page's time is no rise for small ones.
        let small = |ms: u32| Answer::Served {
            ttfb: MS * ms,
            size: 10,
            near_limit: false,
        };
        assert_eq!(p.observe("c", small(5), Instant::now(), 1), None);
        assert_eq!(p.observe("c", small(8), Instant::now(), 1), None);
    }

    #[test]
    fn credentials_are_paced_apart() {
        let p = Pacing::new(2, 8, 16);
        p.observe("a", Answer::RateLimited, Instant::now(), 8);
        assert_eq!((p.limit("a"), p.limit("b")), (4, 8));
    }

    #[test]
    fn another_replicas_newer_lower_cut_is_taken_in_and_an_older_or_higher_one_is_not() {
        let p = Pacing::new(2, 8, 16);
        assert_eq!(batch(&p, served(100)), 16);
        let now = SystemTime::now();
        assert_eq!(p.adopt("c", 4.0, now), Some(4));
        // Growth from there is additive (the shared cut ended slow start).
        assert_eq!(feed(&p, served(100), 5, 4), 5);
        // Older than the last cut known, or not lower: nothing moves.
        assert_eq!(p.adopt("c", 2.0, now - Duration::from_secs(1)), None);
        assert_eq!(p.adopt("c", 9.0, now + Duration::from_secs(1)), None);
        assert_eq!(p.limit("c"), 5);
        // Below the floor: the floor.
        assert_eq!(p.adopt("c", 0.5, now + Duration::from_secs(2)), Some(2));
        // A credential not paced here is left alone.
        assert_eq!(p.adopt("other", 1.0, now), None);
        assert_eq!(p.limit("other"), 8);
    }

    #[test]
    fn the_shared_store_is_looked_at_once_a_second_per_credential() {
        let p = Pacing::new(2, 8, 16);
        assert!(
            p.due_for_shared("c"),
            "new here: look before the first answer"
        );
        assert!(!p.due_for_shared("c"), "looked at just now");
        assert!(
            !Pacing::fixed(8).due_for_shared("c"),
            "a fixed limit has nothing to share"
        );
    }

    #[test]
    fn a_fixed_limit_never_moves() {
        let p = Pacing::fixed(8);
        p.observe("c", Answer::RateLimited, Instant::now(), 8);
        assert_eq!(feed(&p, served(10), 50, 8), 8);
    }
}
