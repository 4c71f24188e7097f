//! Exactly-once paging over a live, newest-first log whose offsets shift, whose ties
//! reorder and whose old end is deleted.
//!
//! # What Confluence allows
//!
//! The audit log is paged by offset, newest first, and records have no id. Events added
//! at the head while a stream pages move every older record to a higher offset; retention
//! deletes the oldest records at the tail; many records share a `creationDate`
//! millisecond (bulk changes), and nothing orders them: two requests may list such a tie
//! group differently. A server may cap `limit` below what was asked and echo anything (or
//! nothing) back. A page served from the cache is an older snapshot than a fresh one.
//!
//! # The method: a boundary by date, not by position
//!
//! A stream stands at a *boundary*: the millisecond `date` of the last record delivered,
//! and the multiset of digests of the records already delivered at that millisecond
//! (`seen`; byte-identical records at one millisecond are distinct events, so repeats
//! count). Everything newer than `date` was delivered (or arrived after the stream began,
//! and is left for the next one); everything older was not. Given a page, the records to
//! deliver are those older than `date` and those at `date` beyond what `seen` holds, in
//! page order: no position, order among ties or page alignment enters the decision.
//!
//! A page can be used only if it *covers* the boundary: its first record is newer than
//! `date` (or it is a fresh page at offset 0). Within one snapshot dates never increase
//! with the offset, so every record before a covering page's start is newer than the
//! boundary, and every undelivered record of that snapshot lies in or after the page.
//! This holds for a cached (older) snapshot as much as for a fresh one: a snapshot that
//! already held a record newer than the boundary lacks only arrivals newer still, and the
//! only records it has too many are ones retention deleted since, which may be delivered
//! once or not at all. (An older snapshot's *head* is another matter: it may predate
//! records at the boundary's millisecond, so offset 0 counts only when fresh.) So:
//!
//! * a covering page delivers its undelivered records and moves the boundary to the last
//!   one delivered; the next page is asked to start at the record just before the new
//!   boundary's tie group (`Cursor::start`), so it covers again whatever arrives meanwhile
//!   (arrivals only push that record to higher offsets, and a newer record takes its
//!   place);
//! * a page that does not cover (an older snapshot, or a prefetched page that guessed its
//!   offset wrong) is fetched again past the cache at `Cursor::start`; a fresh page there
//!   covers, unless the log broke the rules above, and then the position is searched for
//!   by date (offsets and dates are monotone), never walked page by page;
//! * a page whose records are all newer than the boundary says the boundary lies further
//!   on, which is searched for the same way.
//!
//! # The end, on evidence
//!
//! A short page alone proves nothing: a server may cap pages below what was asked and
//! echo anything. But its cap is the same for every page (Confluence's "fixed system
//! limits"), so a page shorter than one already seen in the stream was not cut by it: it
//! reaches the log's end, and a covering one, once delivered, ends the window. Deletions
//! between two requests cannot fake such an end: a page is one snapshot, and a record
//! older than its first one that exists later existed then (records arrive at the head,
//! retention takes the oldest first), so it lay within the page. An empty
//! page right after a record known to be newer than the boundary ends it too. (An empty
//! page is not always to be had: while events keep arriving, the page after the last one
//! fills with records they push down.) The first page of a stream, with nothing to
//! compare it to, is followed by one more request.
//!
//! # Limits
//!
//! A tie group is only seen whole when it fits in one page together with the record
//! before it. A millisecond holding more records than that (rare: a bulk change of
//! hundreds of records, with pages capped below it) is read page by page without any
//! record delivered twice, but if Confluence reorders it between requests some of its
//! records can be missed; the stream counts such overflows. A record that becomes visible
//! later than records newer than it (dated in the past) is outside what offset paging can
//! see: that is the follow mode's business.

use super::TimeUnit;

/// A record as the pager sees it.
pub(crate) trait Anchored {
    /// A digest of the record's full content.
    fn id(&self) -> u64;
    /// `creationDate` (epoch ms).
    fn date(&self) -> i64;
}

/// Where a stream stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The offset the next page should start at: the record before the boundary's tie
    /// group, as last seen (a hint: arrivals only move it further on).
    pub start: i64,
    /// The last record delivered; `None` before the first.
    pub boundary: Option<Boundary>,
    /// The boundary's tie group did not fit in a page: pages that start inside it are
    /// accepted (no record twice, but reordered ties can be missed).
    pub overflow: bool,
}

/// The millisecond of the last record delivered, and what was delivered at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Boundary {
    /// `creationDate` of the last record delivered.
    pub date: i64,
    /// Digests of the records delivered at `date`, sorted, repeats kept.
    pub seen: Vec<u64>,
}

impl Cursor {
    /// The start of a window.
    pub(crate) const BEGIN: Cursor = Cursor {
        start: 0,
        boundary: None,
        overflow: false,
    };
}

/// Where a page lies relative to the boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Position {
    /// No records: the log ends before the page's offset.
    Empty,
    /// Every record is newer than the boundary: it lies after the page.
    Before,
    /// The page covers the boundary: it can be delivered from.
    Covers,
    /// The page starts at or past the boundary: records before its offset may be
    /// undelivered.
    After,
}

/// Where `page`, fetched at offset `at`, lies relative to `cursor`'s boundary; `fresh`:
/// the page was fetched, past the cache, after the boundary was set.
pub(crate) fn position<R: Anchored>(cursor: &Cursor, at: i64, page: &[R], fresh: bool) -> Position {
    let (Some(first), Some(last)) = (page.first(), page.last()) else {
        return Position::Empty;
    };
    let Some(b) = &cursor.boundary else {
        return if at == 0 {
            Position::Covers
        } else {
            Position::After
        };
    };
    if last.date() > b.date {
        Position::Before
    } else if first.date() > b.date
        // The log's head, as it is now: nothing can be before it. (An older snapshot's head
        // lacks what arrived since, which may include records at or after the boundary.)
        || (at == 0 && fresh)
        || (cursor.overflow && first.date() == b.date)
    {
        Position::Covers
    } else {
        Position::After
    }
}

/// What to deliver from a covering page, and where the stream then stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Indices into the page of the records to deliver, in page order.
    pub records: Vec<usize>,
    /// Where the stream stands once they are delivered.
    pub cursor: Cursor,
    /// A tie group proved larger than a page: this page, which starts inside it, held
    /// members the pages before it did not (see `Cursor::overflow`).
    pub overflowed: bool,
}

/// Delivers from `page`, fetched at offset `at`, which must cover `cursor` (see
/// [`position`]), at most `want` records; `cut`: the page may end where the server's
/// limit cut it rather than where the log ends (to tell a tie group that fills a page).
pub(crate) fn deliver<R: Anchored>(
    cursor: &Cursor,
    at: i64,
    page: &[R],
    want: usize,
    cut: bool,
) -> Delivery {
    let boundary_date = cursor.boundary.as_ref().map(|b| b.date);
    let records = new_records(cursor, page, want);
    // The new boundary: the last record delivered, or the old one when nothing was.
    let date = match (records.last(), boundary_date) {
        (Some(&last), _) => page[last].date(),
        (None, Some(d)) => d,
        (None, None) => {
            return Delivery {
                records,
                cursor: cursor.clone(),
                overflowed: false,
            };
        }
    };
    // What has been delivered at that millisecond: the old multiset plus this page's
    // deliveries when the millisecond is the same, else this page's alone.
    let mut seen = match &cursor.boundary {
        Some(b) if b.date == date => b.seen.clone(),
        _ => Vec::new(),
    };
    seen.extend(
        records
            .iter()
            .filter(|&&i| page[i].date() == date)
            .map(|&i| page[i].id()),
    );
    seen.sort_unstable();
    let overflowed = cursor.overflow
        && records
            .iter()
            .any(|&i| Some(page[i].date()) == boundary_date);
    let Some(first_of_group) = page.iter().position(|r| r.date() == date) else {
        // Nothing delivered and the boundary's millisecond is not in the page.
        return Delivery {
            records,
            cursor: cursor.clone(),
            overflowed,
        };
    };
    // The next page starts at the record before the group (as this page shows it: arrivals
    // may have moved it), so that it covers. When the group and that record fill a whole
    // page, no page can show the group whole: look past it instead.
    let fills_page = cut && first_of_group <= 1 && page.last().is_some_and(|r| r.date() == date);
    let (start, overflow) = if fills_page {
        (past_last(at, page.len()), true)
    } else {
        (at + first_of_group.saturating_sub(1) as i64, false)
    };
    Delivery {
        records,
        cursor: Cursor {
            start,
            boundary: Some(Boundary { date, seen }),
            overflow,
        },
        overflowed,
    }
}

/// Indices of the first `want` records of `page` not yet delivered: older than the
/// cursor's boundary, or at its millisecond and not among those seen there (as a
/// multiset: byte-identical twins count one by one).
fn new_records<R: Anchored>(cursor: &Cursor, page: &[R], want: usize) -> Vec<usize> {
    let Some(boundary) = &cursor.boundary else {
        return (0..page.len().min(want)).collect();
    };
    let mut left = boundary.seen.clone();
    let mut records = Vec::new();
    for (i, r) in page.iter().enumerate() {
        if records.len() >= want {
            break;
        }
        let new = if r.date() > boundary.date {
            false
        } else if r.date() == boundary.date {
            match left.binary_search(&r.id()) {
                // Seen at the boundary already: consume one copy.
                Ok(k) => {
                    left.remove(k);
                    false
                }
                Err(_) => true,
            }
        } else {
            true
        };
        if new {
            records.push(i);
        }
    }
    records
}

/// Where to look past a page of `len` records at `at` whose tie group fills it: at its
/// last record (the next page then starts inside the group), or after a page of one.
fn past_last(at: i64, len: usize) -> i64 {
    at + (len as i64 - 1).max(1)
}

/// The cursor that looks past a fresh covering page of `len` records at `at` which
/// brought nothing new and left the cursor where it was: the boundary's tie group fills
/// it, so pages starting inside the group are accepted from now on.
pub(crate) fn look_past(cursor: &Cursor, at: i64, len: usize) -> Cursor {
    Cursor {
        start: past_last(at, len),
        overflow: true,
        ..cursor.clone()
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
    use super::*;

    /// A record: a content digest and a date.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct R(u64, i64);

    impl Anchored for R {
        fn id(&self) -> u64 {
            self.0
        }
        fn date(&self) -> i64 {
            self.1
        }
    }

    fn at(date: i64, seen: &[u64], start: i64) -> Cursor {
        let mut seen = seen.to_vec();
        seen.sort_unstable();
        Cursor {
            start,
            boundary: Some(Boundary { date, seen }),
            overflow: false,
        }
    }

    #[test]
    fn the_first_page_is_delivered_whole_and_the_next_starts_before_the_last_group() {
        let page = [R(1, 90), R(2, 80), R(3, 70), R(4, 70)];
        let d = deliver(&Cursor::BEGIN, 0, &page, usize::MAX, true);
        assert_eq!(d.records, [0, 1, 2, 3]);
        // The group at 70 starts at offset 2: the next page starts at 1 (the record at 80).
        assert_eq!(d.cursor, at(70, &[3, 4], 1));
    }

    #[test]
    fn a_reordered_tie_group_delivers_only_its_unseen_members() {
        let c = at(70, &[3, 4], 1);
        // Listed in another order, with one more member and an older record.
        let page = [R(2, 80), R(4, 70), R(5, 70), R(3, 70), R(6, 60)];
        assert_eq!(position(&c, 1, &page, false), Position::Covers);
        let d = deliver(&c, 1, &page, usize::MAX, true);
        assert_eq!(d.records, [2, 4]);
        assert_eq!(d.cursor, at(60, &[6], 4));
    }

    #[test]
    fn identical_records_at_one_millisecond_are_counted_not_merged() {
        // Two byte-identical events; one was delivered.
        let c = at(70, &[7], 0);
        let page = [R(2, 80), R(7, 70), R(7, 70), R(6, 60)];
        let d = deliver(&c, 0, &page, usize::MAX, true);
        assert_eq!(d.records, [2, 3]);
    }

    #[test]
    fn pages_that_do_not_reach_back_to_the_boundary_are_not_used() {
        let c = at(70, &[3], 5);
        assert_eq!(
            position(&c, 5, &[R(4, 70), R(6, 60)], true),
            Position::After
        );
        assert_eq!(position(&c, 5, &[R(6, 60)], true), Position::After);
        assert_eq!(position(&c, 0, &[R(6, 60)], true), Position::Covers);
        // A cached head may predate records at the boundary's millisecond.
        assert_eq!(position(&c, 0, &[R(6, 60)], false), Position::After);
        assert_eq!(
            position(&c, 5, &[R(9, 95), R(8, 90)], false),
            Position::Before
        );
        assert_eq!(position(&c, 5, &[] as &[R], true), Position::Empty);
        assert_eq!(
            position(&Cursor::BEGIN, 3, &[R(1, 1)], false),
            Position::After
        );
    }

    #[test]
    fn max_records_cuts_a_delivery_and_the_boundary_counts_only_what_was_sent() {
        let page = [R(1, 90), R(2, 70), R(3, 70)];
        let d = deliver(&Cursor::BEGIN, 0, &page, 2, false);
        assert_eq!(d.records, [0, 1]);
        assert_eq!(d.cursor, at(70, &[2], 0));
        // The rest of the group comes next.
        let d = deliver(&d.cursor, 0, &page, usize::MAX, false);
        assert_eq!(d.records, [2]);
    }

    #[test]
    fn a_tie_group_that_fills_a_page_overflows_without_repeating() {
        let c = at(90, &[1], 0);
        let page = [R(1, 90), R(2, 70), R(3, 70), R(4, 70)];
        let d = deliver(&c, 10, &page, usize::MAX, true);
        assert!(!d.overflowed, "not proved yet");
        assert_eq!(d.cursor.start, 13);
        assert!(d.cursor.overflow);
        // A page starting inside the group is accepted, and seen members are skipped.
        let next = [R(4, 70), R(5, 70), R(6, 60)];
        assert_eq!(position(&d.cursor, 13, &next, false), Position::Covers);
        let d = deliver(&d.cursor, 13, &next, usize::MAX, true);
        assert_eq!(d.records, [1, 2]);
        assert!(d.overflowed, "R5 proved the group larger than a page");
        assert!(!d.cursor.overflow);
    }

    #[test]
    fn nothing_new_leaves_the_cursor_as_it_was() {
        let c = at(70, &[3], 1);
        let d = deliver(&c, 1, &[R(2, 80), R(3, 70)], usize::MAX, false);
        assert!(d.records.is_empty());
        assert_eq!(d.cursor, c);
    }
}
