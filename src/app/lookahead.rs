//! One gateway-wide budget of bytes for pages fetched ahead of their readers
//! (`--stream-buffer-bytes`): streams and followers read ahead as deep as
//! `--stream-prefetch` while the budget has room, and no deeper when it has none, so the
//! memory their look-ahead holds is bounded by the budget however many are open.
//!
//! Each reader may always keep [`FREE_AHEAD`] pages ahead outside the budget: one
//! caller's many streams cannot stop another's from moving (they only take the deep
//! look-ahead first). A page's room is reserved before its request is sent, sized by the
//! reader's last page (pages of one reader are alike), and given back when the page is
//! delivered or dropped.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::METRICS;

/// Pages ahead each reader keeps whatever the budget holds.
const FREE_AHEAD: usize = 2;

/// What a page is reckoned to take before any page of the reader landed: a 1000-record
/// page from the simulator encodes to ~350 KiB; Atlassian's records run larger.
const FIRST_GUESS: usize = 512 << 10;

/// The budget is counted in KiB, so that any byte count fits the semaphore's `u32`.
const UNIT: usize = 1 << 10;

/// The gateway-wide budget.
#[derive(Debug)]
pub(crate) struct LookAhead {
    room: Arc<Semaphore>,
}

impl LookAhead {
    /// A budget of `bytes` (rounded down to whole KiB).
    pub(crate) fn new(bytes: u64) -> Self {
        let units = usize::try_from(bytes / UNIT as u64)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            room: Arc::new(Semaphore::new(units)),
        }
    }

    /// Room for the page `depth` places ahead of its reader (0: the next one) of the
    /// reader whose pages `size` tracks: none is needed within the first `FREE_AHEAD`;
    /// past them it is reserved if the budget has it now, and `None` when it has not
    /// (never waits: a reader without room reads less far ahead).
    pub(crate) fn room(&self, depth: usize, size: &PageSize) -> Option<Reserved> {
        if depth < FREE_AHEAD {
            return Some(Reserved(None));
        }
        self.reserve(size)
    }

    /// Room in the budget for one more page of the reader whose pages `size` tracks, if
    /// it has it now: for a page kept past the free ones, whatever its depth.
    pub(crate) fn reserve(&self, size: &PageSize) -> Option<Reserved> {
        let units = size.estimate().div_ceil(UNIT).max(1);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        let permit = self.room.clone().try_acquire_many_owned(units).ok()?;
        METRICS
            .lookahead_bytes
            .inc_by(i64::from(units) * UNIT as i64);
        Some(Reserved(Some(permit)))
    }
}

/// Room for one page ahead (none for the free ones), given back when dropped.
#[derive(Debug)]
pub(crate) struct Reserved(Option<OwnedSemaphorePermit>);

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(permit) = &self.0 {
            let units = i64::from(u32::try_from(permit.num_permits()).unwrap_or(u32::MAX));
            METRICS.lookahead_bytes.dec_by(units * UNIT as i64);
        }
    }
}

/// Pages landed and waiting for a slow reader, past the one it takes next, that show the
/// pipeline is deeper than the reader needs (see [`Depth`]).
pub(crate) const SPARE_AHEAD: usize = 2;

/// How deep a reader's look-ahead runs, within its prefetch window: as deep as the reader
/// needs to find its pages landed, no deeper. A reader slower than Confluence finds its
/// next page landed with more landed behind it: those wait in memory (the whole prefetch
/// of 32 held ~10 MiB of pages ahead of a reader taking a message every 10 ms), so the
/// depth shrinks by one a page until about [`SPARE_AHEAD`] wait. A page not landed when
/// the reader asks for it doubles the depth, at most once until the pages fetched for the
/// new depth come due (the next few pages were asked for before it and are no sooner for
/// it): a reader Confluence holds back gets the whole window again in a few round trips.
/// The pages that landed behind a late one while the reader waited for it are its
/// backlog, not a sign of a slow reader: taking them shrinks nothing. Measured on the
/// pipeline itself, not on fetch times, which a deeper pipeline lengthens by queueing its
/// own fetches. Streams and followers both keep one.
#[derive(Debug)]
pub(crate) struct Depth {
    depth: usize,
    /// The prefetch window.
    most: usize,
    /// Pages to be asked for before the depth may double again.
    hold: usize,
    /// The reader waited for its last page.
    waited: bool,
    /// Pages left of the backlog that landed while it waited.
    backlog: usize,
}

impl Depth {
    /// A look-ahead starting as deep as its prefetch `window`.
    pub(crate) fn new(window: usize) -> Self {
        Self {
            depth: window,
            most: window,
            hold: 0,
            waited: false,
            backlog: 0,
        }
    }

    /// The depth to keep, at most `window`, now that the reader asks for its next page:
    /// whether that page landed (`None`: none was fetched ahead) and how many of the
    /// pages fetched ahead landed.
    pub(crate) fn step(
        &mut self,
        window: usize,
        next_landed: Option<bool>,
        landed: usize,
    ) -> usize {
        self.hold = self.hold.saturating_sub(1);
        match next_landed {
            Some(false) => {
                self.waited = true;
                if self.hold == 0 {
                    self.depth = self.depth.saturating_mul(2);
                    self.hold = self.depth;
                }
            }
            Some(true) => {
                if std::mem::take(&mut self.waited) {
                    self.backlog = landed;
                }
                if self.backlog > 0 {
                    self.backlog -= 1;
                } else if landed > SPARE_AHEAD {
                    self.depth = self.depth.saturating_sub(1);
                }
            }
            None => {}
        }
        self.depth = self
            .depth
            .clamp(SPARE_AHEAD + 1, self.most.max(SPARE_AHEAD + 1));
        self.depth.min(window)
    }
}

/// The size of one reader's pages: the last one that landed.
#[derive(Debug, Default)]
pub(crate) struct PageSize(AtomicUsize);

impl PageSize {
    /// A page of `bytes` landed.
    pub(crate) fn landed(&self, bytes: usize) {
        self.0.store(bytes, Ordering::Relaxed);
    }

    /// What the next page is reckoned to take.
    fn estimate(&self) -> usize {
        match self.0.load(Ordering::Relaxed) {
            0 => FIRST_GUESS,
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_reserved_by_the_readers_page_size_and_given_back() {
        let budget = LookAhead::new(1 << 20);
        let size = PageSize::default();
        // Before any page: the first guess, twice fits in 1 MiB, a third does not.
        let a = budget.reserve(&size).expect("room");
        let b = budget.reserve(&size).expect("room");
        assert!(budget.reserve(&size).is_none(), "1 MiB holds two guesses");
        drop(a);
        size.landed(100 << 10);
        let small: Vec<_> = std::iter::from_fn(|| budget.reserve(&size)).collect();
        assert_eq!(small.len(), 5, "512 KiB left holds five 100 KiB pages");
        drop((b, small));
        assert_eq!(budget.room.available_permits(), 1024, "all given back");
    }

    #[test]
    fn an_empty_budget_reserves_nothing_and_a_huge_one_is_capped() {
        let empty = LookAhead::new(0);
        assert!(empty.reserve(&PageSize::default()).is_none());
        // The free pages ahead need no room; the next one does.
        assert!(empty.room(FREE_AHEAD - 1, &PageSize::default()).is_some());
        assert!(empty.room(FREE_AHEAD, &PageSize::default()).is_none());
        let huge = LookAhead::new(u64::MAX);
        assert!(huge.reserve(&PageSize::default()).is_some());
    }

    #[test]
    fn the_look_ahead_is_as_deep_as_the_reader_needs() {
        let mut depth = Depth::new(32);
        // A slow reader finds its pages landed with more behind them: one less a page,
        // down to the spare and the next page.
        let shallow: Vec<usize> = (0..40).map(|_| depth.step(32, Some(true), 6)).collect();
        assert_eq!(shallow[0], 31);
        assert_eq!(shallow[39], SPARE_AHEAD + 1);
        // With no more than the spare landed, it stays.
        assert_eq!(depth.step(32, Some(true), SPARE_AHEAD), SPARE_AHEAD + 1);
        // A page not landed doubles it, once until the pages asked for since come due.
        assert_eq!(depth.step(32, Some(false), 0), 6);
        assert_eq!(depth.step(32, Some(false), 0), 6);
        for _ in 0..4 {
            depth.step(32, Some(false), 0);
        }
        assert_eq!(depth.step(32, Some(false), 0), 12);
        // Never past the prefetch, nor past a smaller window (the first page's).
        for _ in 0..40 {
            depth.step(32, Some(false), 0);
        }
        assert_eq!(depth.step(32, None, 0), 32);
        let mut first = Depth::new(32);
        assert_eq!(first.step(1, None, 0), 1);
        assert_eq!(first.step(32, Some(false), 0), 32);
    }

    #[test]
    fn a_reader_taking_what_landed_behind_a_late_page_keeps_its_depth() {
        let mut depth = Depth::new(32);
        // It waits for one page while 20 land behind it, then takes them one after the
        // other: its backlog, not a slow reader.
        assert_eq!(depth.step(32, Some(false), 0), 32);
        let kept: Vec<usize> = (1..=20)
            .rev()
            .map(|n| depth.step(32, Some(true), n))
            .collect();
        assert!(kept.iter().all(|d| *d == 32), "{kept:?}");
        // Then pages that keep waiting for it: slow, and it shrinks again.
        assert_eq!(depth.step(32, Some(true), 6), 31);
        assert_eq!(depth.step(32, Some(true), 6), 30);
    }

    #[test]
    fn a_slow_reader_shrinks_its_depth_a_page_at_a_time_even_when_nothing_refills() {
        // The look-ahead budget spent: nothing new is fetched, and the landed pages
        // dwindle as it reads them; it is slow all the same.
        let mut depth = Depth::new(32);
        let shrinking: Vec<usize> = (3..=30)
            .rev()
            .map(|n| depth.step(32, Some(true), n))
            .collect();
        assert_eq!(shrinking[..3], [31, 30, 29]);
        assert_eq!(*shrinking.last().expect("steps"), 4);
    }
}
