//! Exactly-once paging over a live, newest-first log whose offsets shift.
//!
//! # The problem
//!
//! Confluence pages the audit log by offset, newest first, and has no record id. Every
//! event added at the head while a stream pages moves each older record one offset down,
//! so naive `start += limit` paging repeats records at page boundaries; and a page served
//! from the cache may be an older snapshot than its neighbour, which would skip records.
//!
//! # The method
//!
//! Each page after the first is requested so that it overlaps the previous one by one
//! record: the last record delivered is the *anchor*, and the next request starts at the
//! anchor's offset as of the page it came from. A record is identified by a digest of its
//! full content (with `creationDate`, in practice unique). Should the delivered records
//! end in a run of identical ones, the anchor is the whole run: the request starts at
//! its first copy and delivery resumes after as many copies as were delivered.
//!
//! * Records only ever move to higher offsets (events are added at the head; the oldest
//!   leave the window at the tail, which moves nothing before them). So in any snapshot
//!   taken *after* the anchor's page, the anchor sits at an offset ≥ the one we predicted.
//! * If the anchor is found at index `k` of a page, the records before it are records we
//!   delivered already (shifted down by `k` new events), and the records after it are
//!   exactly the ones that followed it: deliver `page[k+1..]`. Nothing is repeated, and
//!   nothing between the anchor and `page[k+1]` can be missing, because the page is one
//!   consistent snapshot.
//! * If the anchor is not in the page and the page may be an older snapshot (it came from
//!   the cache, or was fetched concurrently), it is refetched past the cache, by a request
//!   that starts after the anchor's page was placed (never one joined in flight). A fresh
//!   page starts at or before the anchor's current offset (first point), so either the
//!   anchor is in it, or every record of it is newer than the anchor (more than a page of
//!   new events arrived): then paging advances by the page length and looks again.
//! * A fresh page without the anchor that holds records older than the anchor means the
//!   anchor itself vanished (deleted upstream, or encoded differently by another gateway
//!   version); then delivery resumes at the first record dated no later than the anchor.
//!   Records of the anchor's very millisecond may then come twice: in that corner the
//!   stream prefers at-least-once to a silent gap.
//!
//! The records of the first page's snapshot and all older ones are therefore each
//! delivered exactly once, in upstream order, whatever mix of cached and fresh pages
//! serves them. Events added later are newer than the first record and are left for the
//! next stream. (The first page may come from the cache, up to the cache TTL old; a call
//! with `cache-control: no-cache` starts from a fresh one.)
//!
//! Two corners fall short, as the property tests below show. Copies of a run are lost
//! when a cached page older than the anchor's starts inside the run, or when the run is
//! as long as a page. And when more than a page of events pushes the anchor past a fresh
//! page whose records share its millisecond, that is taken for a vanished anchor: records
//! of that millisecond come again (at-least-once, as above).

use std::ops::Range;

use super::TimeUnit;

/// The last record delivered: its content digest, date and offset when it was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Anchor {
    /// Digest of the record's full content.
    pub id: [u8; 16],
    /// The record's `creationDate` (epoch ms).
    pub date: i64,
}

/// A record as the pager sees it.
pub(crate) trait Anchored {
    /// Digest of the full content.
    fn id(&self) -> [u8; 16];
    /// `creationDate` (epoch ms).
    fn date(&self) -> i64;
}

/// Where a stream stands: the offset to request next and the record it must find there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Offset the next page starts at (the anchor run's first copy, when there is one).
    pub start: i64,
    /// The last record delivered; `None` before the first.
    pub anchor: Option<Anchor>,
    /// How many identical copies of the anchor end what was delivered (1 as a rule).
    pub run: u32,
}

impl Cursor {
    /// The start of a window.
    pub(crate) const BEGIN: Cursor = Cursor {
        start: 0,
        anchor: None,
        run: 0,
    };
}

/// What to do with a page fetched at the cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Deliver the records from this index on.
    Deliver(usize),
    /// The page may be an older snapshot without the anchor: fetch it again, fresh.
    Refetch,
    /// Every record is newer than the anchor: look one page further on.
    Advance,
}

/// Places a page fetched at `cursor.start` (`fresh`: fetched past the cache after the
/// anchor's page) relative to the anchor.
pub(crate) fn place<R: Anchored>(cursor: &Cursor, records: &[R], fresh: bool) -> Placement {
    let Some(anchor) = cursor.anchor else {
        return Placement::Deliver(0);
    };
    if let Some(k) = records.iter().position(|r| r.id() == anchor.id) {
        return Placement::Deliver((k + cursor.run.max(1) as usize).min(records.len()));
    }
    if !fresh {
        return Placement::Refetch;
    }
    match records.iter().position(|r| r.date() <= anchor.date) {
        // All newer than the anchor: delivered already.
        None if !records.is_empty() => Placement::Advance,
        None => Placement::Deliver(0),
        Some(i) => Placement::Deliver(i),
    }
}

/// What the producer does with a page fetched at the cursor, and where it then stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Deliver `page[records]` (none when the anchor closed the page), then stand at `cursor`.
    Deliver {
        /// The records to deliver, as a range of the page.
        records: Range<usize>,
        /// Where the stream stands once they are delivered.
        cursor: Cursor,
    },
    /// Fetch a page at this cursor past the cache.
    Refetch(Cursor),
    /// Nothing of the window is left.
    End,
}

/// Decides what to do with `page`, fetched at `cursor.start` (`fresh`: as for [`place`];
/// `last`: shorter than the server's limit, the window's end), delivering at most `want`
/// (at least one) of its records.
pub(crate) fn step<R: Anchored>(
    cursor: &Cursor,
    page: &[R],
    fresh: bool,
    last: bool,
    want: usize,
) -> Step {
    let from = match place(cursor, page, fresh) {
        Placement::Refetch => return Step::Refetch(*cursor),
        Placement::Advance if last => return Step::End,
        // The anchor is further on: overlap this page by one, as for any next page.
        Placement::Advance => {
            return Step::Refetch(Cursor {
                start: cursor.start + page.len() as i64 - 1,
                ..*cursor
            });
        }
        Placement::Deliver(from) => from.min(page.len()),
    };
    let to = from + want.min(page.len() - from);
    Step::Deliver {
        records: from..to,
        cursor: after(cursor, page.len(), from, &page[from..to], last),
    }
}

/// Where the stream stands after delivering `delivered`, the records from index `from` on
/// of a page of `page_len` records fetched at `cursor.start`.
fn after<R: Anchored>(
    cursor: &Cursor,
    page_len: usize,
    from: usize,
    delivered: &[R],
    last: bool,
) -> Cursor {
    let Some(newest) = delivered.last() else {
        if from == 0 {
            // An empty page.
            return *cursor;
        }
        // The anchor closed the page: its run now starts at this offset.
        let first = cursor.start + from.saturating_sub(cursor.run as usize) as i64;
        let start = if first == cursor.start && !last {
            // A run longer than a page: look past it rather than loop.
            cursor.start + page_len as i64 - 1
        } else {
            first
        };
        return Cursor { start, ..*cursor };
    };
    let id = newest.id();
    let anchor = Some(Anchor {
        id,
        date: newest.date(),
    });
    // Identical copies of the last record that end this message (one, as a rule): the next
    // page must skip them all.
    let copies = delivered.iter().rev().take_while(|r| r.id() == id).count();
    if copies == delivered.len() && cursor.anchor.is_some_and(|a| a.id == id) {
        // The run began in an earlier message: keep its first copy.
        Cursor {
            anchor,
            run: cursor.run + copies as u32,
            ..*cursor
        }
    } else {
        Cursor {
            start: cursor.start + (from + delivered.len() - copies) as i64,
            anchor,
            run: copies as u32,
        }
    }
}

/// The filters that define a window; a resume token is only valid for the same ones.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Window {
    /// How many `units` back.
    pub number: i64,
    /// The unit.
    pub units: TimeUnit,
    /// Confluence's `searchString`.
    pub search_string: Option<String>,
}

#[cfg(test)]
mod tests {
    use proptest::{collection::vec, option, prelude::*, sample::Index};

    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct R(u8, i64);

    impl Anchored for R {
        fn id(&self) -> [u8; 16] {
            [self.0; 16]
        }
        fn date(&self) -> i64 {
            self.1
        }
    }

    fn anchored_at(r: R) -> Cursor {
        Cursor {
            start: 10,
            anchor: Some(Anchor {
                id: r.id(),
                date: r.date(),
            }),
            run: 1,
        }
    }

    #[test]
    fn a_run_of_identical_anchors_is_skipped_whole() {
        let c = Cursor {
            run: 2,
            ..anchored_at(R(5, 50))
        };
        // Shifted by one insert: [new, A, A, B]: resume at B.
        let page = [R(9, 90), R(5, 50), R(5, 50), R(4, 40)];
        assert_eq!(place(&c, &page, false), Placement::Deliver(3));
    }

    #[test]
    fn first_page_is_delivered_whole() {
        assert_eq!(
            place(&Cursor::BEGIN, &[R(1, 9)], false),
            Placement::Deliver(0)
        );
    }

    #[test]
    fn anchor_found_after_shift_delivers_what_follows() {
        let c = anchored_at(R(5, 50));
        let page = [R(7, 70), R(6, 60), R(5, 50), R(4, 40)];
        assert_eq!(place(&c, &page, false), Placement::Deliver(3));
        assert_eq!(place(&c, &page[2..], false), Placement::Deliver(1));
    }

    #[test]
    fn missing_anchor_in_a_possibly_stale_page_refetches() {
        let c = anchored_at(R(5, 50));
        assert_eq!(place(&c, &[R(3, 30), R(2, 20)], false), Placement::Refetch);
    }

    #[test]
    fn fresh_page_of_newer_records_advances() {
        let c = anchored_at(R(5, 50));
        assert_eq!(place(&c, &[R(9, 90), R(8, 80)], true), Placement::Advance);
    }

    #[test]
    fn vanished_anchor_resumes_at_its_millisecond() {
        let c = anchored_at(R(5, 50));
        let page = [R(6, 60), R(3, 30), R(2, 20)];
        assert_eq!(place(&c, &page, true), Placement::Deliver(1));
        let same_ms = [R(6, 60), R(7, 50), R(2, 20)];
        assert_eq!(place(&c, &same_ms, true), Placement::Deliver(1));
        assert_eq!(place(&c, &[] as &[R], true), Placement::Deliver(0));
    }

    fn anchored_run(r: R, start: i64, run: u32) -> Cursor {
        Cursor {
            start,
            run,
            ..anchored_at(r)
        }
    }

    fn delivered(records: Range<usize>, cursor: Cursor) -> Step {
        Step::Deliver { records, cursor }
    }

    #[test]
    fn the_next_page_starts_at_the_last_record_delivered() {
        let page = [R(9, 90), R(8, 80), R(7, 70)];
        let next = anchored_run(R(7, 70), 2, 1);
        assert_eq!(
            step(&Cursor::BEGIN, &page, false, false, usize::MAX),
            delivered(0..3, next)
        );
        // Shifted by one insert: [new, A, B, C] at 2 delivers B, C; C is at 2 + 3.
        let page = [R(10, 95), R(7, 70), R(6, 60), R(5, 50)];
        assert_eq!(
            step(&next, &page, false, false, usize::MAX),
            delivered(2..4, anchored_run(R(5, 50), 5, 1))
        );
        // A cut after one record: the anchor is that record.
        assert_eq!(
            step(&next, &page, false, false, 1),
            delivered(2..3, anchored_run(R(6, 60), 4, 1))
        );
    }

    #[test]
    fn a_message_ending_in_identical_copies_starts_the_next_page_at_the_first() {
        let page = [R(9, 90), R(5, 50), R(5, 50)];
        assert_eq!(
            step(&Cursor::BEGIN, &page, false, false, usize::MAX),
            delivered(0..3, anchored_run(R(5, 50), 1, 2))
        );
    }

    #[test]
    fn a_run_that_began_in_an_earlier_message_keeps_its_first_copy() {
        let c = anchored_run(R(5, 50), 4, 1);
        let page = [R(5, 50), R(5, 50), R(5, 50), R(3, 30)];
        assert_eq!(
            step(&c, &page, false, false, 2),
            delivered(1..3, anchored_run(R(5, 50), 4, 3))
        );
    }

    #[test]
    fn an_anchor_closing_the_page_is_looked_for_where_its_run_now_starts() {
        // Two inserts pushed the run of two to the end: it now starts at 4 + 3 - 2.
        let c = anchored_run(R(5, 50), 4, 2);
        let page = [R(9, 90), R(8, 80), R(5, 50)];
        assert_eq!(
            step(&c, &page, false, false, usize::MAX),
            delivered(3..3, anchored_run(R(5, 50), 5, 2))
        );
        // On the last page, nothing follows.
        assert_eq!(step(&c, &page[..2], true, true, usize::MAX), Step::End);
    }

    #[test]
    fn a_run_longer_than_a_page_is_looked_past() {
        let c = anchored_run(R(5, 50), 4, 3);
        let page = [R(5, 50), R(5, 50), R(5, 50)];
        assert_eq!(
            step(&c, &page, false, false, usize::MAX),
            delivered(3..3, anchored_run(R(5, 50), 6, 3))
        );
    }

    #[test]
    fn pages_without_the_anchor_are_fetched_again_fresh_or_one_page_on() {
        let c = anchored_run(R(5, 50), 4, 1);
        let older = [R(3, 30), R(2, 20)];
        assert_eq!(step(&c, &older, false, false, 9), Step::Refetch(c));
        let newer = [R(9, 90), R(8, 80), R(7, 70)];
        assert_eq!(
            step(&c, &newer, true, false, 9),
            Step::Refetch(anchored_run(R(5, 50), 6, 1))
        );
        assert_eq!(step(&c, &newer[..2], true, true, 9), Step::End);
    }

    /// The live log as a walk meets it: every version so far, newest last; records newest
    /// first, and the copies of a record adjacent.
    struct LiveLog {
        versions: Vec<Vec<R>>,
        next_id: u8,
    }

    impl LiveLog {
        /// A log of `records`, oldest first: each is (copies, a millisecond after the one
        /// before it?).
        fn new(records: &[(usize, bool)]) -> Self {
            let mut log = Vec::new();
            let mut date = 0;
            for (id, &(copies, later)) in records.iter().enumerate() {
                date += i64::from(later);
                let id = u8::try_from(id).expect("under 256 records");
                log.extend(std::iter::repeat_n(R(id, date), copies));
            }
            log.reverse();
            let next_id = u8::try_from(records.len()).expect("under 256 records");
            Self {
                versions: vec![log],
                next_id,
            }
        }

        fn now(&self) -> &[R] {
            self.versions.last().map_or(&[], Vec::as_slice)
        }

        /// New events at the head, each a millisecond after the one before it or not.
        fn insert(&mut self, later: &[bool]) {
            if later.is_empty() {
                return;
            }
            let mut date = self.now().first().map_or(0, |r| r.1);
            let mut log = self.now().to_vec();
            for &later in later {
                date += i64::from(later);
                log.insert(0, R(self.next_id, date));
                self.next_id = self.next_id.checked_add(1).expect("under 256 records");
            }
            self.versions.push(log);
        }
    }

    /// What happens at one fetch.
    #[derive(Clone, Debug)]
    struct Fetch {
        /// Events added at the head just before it (each a millisecond later or not).
        inserts: Vec<bool>,
        /// A page not fetched fresh may come from the cache: this snapshot, or the current
        /// log when `None`.
        cached: Option<Index>,
        /// The server's limit for this page (at most the one asked for).
        limit: usize,
        /// The stream's `max_records` left (its next one resumes from the token).
        want: Option<usize>,
    }

    /// What the live log and the server may do during a walk.
    #[derive(Clone, Copy, Debug)]
    struct Conditions {
        /// Records may come as runs of identical copies (shorter than a page).
        runs: bool,
        /// Distinct records may share a millisecond.
        shared_ms: bool,
        /// Pages not fetched fresh may come from any older snapshot.
        stale_pages: bool,
        /// The server may cap a page's limit below the one asked for.
        capped_limits: bool,
        /// Streams may stop at `max_records` and resume from their token.
        cuts: bool,
    }

    /// A log and the fetches that walk it.
    #[derive(Clone, Debug)]
    struct Case {
        /// The limit asked for: the page size plus the overlap.
        asked: usize,
        /// The log to begin with, as for [`LiveLog::new`].
        records: Vec<(usize, bool)>,
        schedule: Vec<Fetch>,
    }

    fn case(c: Conditions) -> impl Strategy<Value = Case> {
        let min_asked = if c.runs { 3 } else { 2 };
        (min_asked..=8usize).prop_flat_map(move |asked| {
            let copies = if c.runs {
                (1..asked).boxed()
            } else {
                Just(1).boxed()
            };
            let later = if c.shared_ms {
                any::<bool>().boxed()
            } else {
                Just(true).boxed()
            };
            let cached = if c.stale_pages {
                option::of(any::<Index>()).boxed()
            } else {
                Just(None).boxed()
            };
            let limit = if c.capped_limits {
                prop_oneof![Just(asked), 2..=asked].boxed()
            } else {
                Just(asked).boxed()
            };
            let want = if c.cuts {
                option::of(1..=4usize).boxed()
            } else {
                Just(None).boxed()
            };
            let fetch = (vec(later.clone(), 0..=3), cached, limit, want).prop_map(
                |(inserts, cached, limit, want)| Fetch {
                    inserts,
                    cached,
                    limit,
                    want,
                },
            );
            let records = vec((copies, later), 0..40);
            (records, vec(fetch, 0..40)).prop_map(move |(records, schedule)| Case {
                asked,
                records,
                schedule,
            })
        })
    }

    /// What a walk delivered, what it should have, and what it took.
    struct Walk {
        delivered: Vec<R>,
        /// The log as of the first page's snapshot.
        first_snapshot: Vec<R>,
        fetches: usize,
    }

    /// Walks `log` as `Producer::run` in src/stream.rs does: fetch at the cursor, fresh after
    /// a refetch, act on `step`, stop after the last page (resuming a stream cut at
    /// `max_records` as its caller would). Fetches follow `schedule`, then
    /// the log goes quiet (pages of `asked`); a walk needing `max_fetches` fails.
    fn walk(
        log: &mut LiveLog,
        schedule: &[Fetch],
        asked: usize,
        max_fetches: usize,
    ) -> Result<Walk, TestCaseError> {
        let quiet = Fetch {
            inserts: Vec::new(),
            cached: None,
            limit: asked,
            want: None,
        };
        let mut cursor = Cursor::BEGIN;
        let mut fresh = false;
        let mut delivered = Vec::new();
        let mut first_snapshot = None;
        for (fetches, fetch) in schedule.iter().chain(std::iter::repeat(&quiet)).enumerate() {
            prop_assert!(
                fetches < max_fetches,
                "still walking after {fetches} fetches"
            );
            log.insert(&fetch.inserts);
            let snapshot = match fetch.cached {
                Some(v) if !fresh => &log.versions[v.index(log.versions.len())],
                _ => log.now(),
            };
            let start = usize::try_from(cursor.start).expect("offsets are not negative");
            let page = snapshot
                .get(start..snapshot.len().min(start + fetch.limit))
                .unwrap_or_default();
            first_snapshot.get_or_insert_with(|| snapshot.to_vec());
            let last = page.len() < fetch.limit;
            let want = fetch.want.unwrap_or(usize::MAX);
            match step(&cursor, page, fresh, last, want) {
                Step::Refetch(next) => {
                    cursor = next;
                    fresh = true;
                    continue;
                }
                Step::Deliver {
                    records,
                    cursor: next,
                } => {
                    prop_assert!(records.len() <= want, "more than max_records");
                    // A stream cut at `max_records` is resumed, even on the last page.
                    let cut = records.len() == want;
                    delivered.extend_from_slice(&page[records]);
                    cursor = next;
                    fresh = false;
                    if cut || !last {
                        continue;
                    }
                }
                Step::End => {}
            }
            return Ok(Walk {
                delivered,
                first_snapshot: first_snapshot.unwrap_or_default(),
                fetches: fetches + 1,
            });
        }
        unreachable!("the quiet fetches never end")
    }

    /// Each fetch either delivers, moves the cursor on (at most once per offset), ends,
    /// or is a refetch of one of those: a bound on any walk.
    fn max_fetches(log: &LiveLog, schedule: &[Fetch]) -> usize {
        let inserts: usize = schedule.iter().map(|f| f.inserts.len()).sum();
        4 * (log.now().len() + inserts + 1)
    }

    /// Walks `case`; returns the walk and the log as it ended.
    fn run(case: &Case) -> Result<(Walk, LiveLog), TestCaseError> {
        let mut log = LiveLog::new(&case.records);
        let max_fetches = max_fetches(&log, &case.schedule);
        let walk = walk(&mut log, &case.schedule, case.asked, max_fetches)?;
        Ok((walk, log))
    }

    /// What `delivered` holds beyond `expected`, if it holds all of it in order.
    fn surplus(expected: &[R], delivered: &[R]) -> Option<Vec<R>> {
        let mut expected = expected.iter().peekable();
        let mut surplus = Vec::new();
        for r in delivered {
            if expected.peek() == Some(&r) {
                expected.next();
            } else {
                surplus.push(*r);
            }
        }
        expected.peek().is_none().then_some(surplus)
    }

    const LIVE: Conditions = Conditions {
        runs: false,
        shared_ms: false,
        stale_pages: true,
        capped_limits: true,
        cuts: true,
    };

    proptest! {
        #[test]
        fn a_live_log_is_delivered_as_of_its_first_page_exactly_once(case in case(LIVE)) {
            let (walk, _) = run(&case)?;
            prop_assert_eq!(walk.delivered, walk.first_snapshot);
        }

        /// Pages no older than the anchor's and longer than any run (see the module doc).
        #[test]
        fn identical_copies_are_each_delivered_once(
            case in case(Conditions {
                runs: true,
                stale_pages: false,
                capped_limits: false,
                ..LIVE
            }),
        ) {
            let (walk, _) = run(&case)?;
            prop_assert_eq!(walk.delivered, walk.first_snapshot);
        }

        /// Exactly once needs unique dates (see the module doc).
        #[test]
        fn records_sharing_a_millisecond_are_delivered_at_least_once(
            case in case(Conditions { shared_ms: true, ..LIVE }),
        ) {
            let (walk, log) = run(&case)?;
            let surplus = surplus(&walk.first_snapshot, &walk.delivered);
            prop_assert!(surplus.is_some(), "missed some of {:?}", walk.first_snapshot);
            // Only a record sharing its date can be taken for the anchor's successor.
            for r in surplus.unwrap_or_default() {
                let same_ms = log.now().iter().any(|o| o.1 == r.1 && o.0 != r.0);
                prop_assert!(same_ms, "{r:?} repeated, though its date is unique");
            }
        }

        #[test]
        fn a_quiet_log_takes_one_fetch_per_page_overlapping_by_one(
            case in case(Conditions {
                stale_pages: false,
                capped_limits: false,
                cuts: false,
                ..LIVE
            }),
        ) {
            let quiet = Case { schedule: Vec::new(), ..case };
            let (walk, _) = run(&quiet)?;
            prop_assert_eq!(&walk.delivered, &walk.first_snapshot);
            // Pages start every `asked - 1` records until one is short.
            let (asked, len) = (quiet.asked, walk.first_snapshot.len());
            let mut pages = 1;
            while (pages - 1) * (asked - 1) + asked <= len {
                pages += 1;
            }
            prop_assert_eq!(walk.fetches, pages);
        }
    }
}
