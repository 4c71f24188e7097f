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

use super::TimeUnit;

/// The last record delivered: its content digest, date and offset when it was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Digest of the record's full content.
    pub id: [u8; 16],
    /// The record's `creationDate` (epoch ms).
    pub date: i64,
}

/// A record as the pager sees it.
pub trait Anchored {
    /// Digest of the full content.
    fn id(&self) -> [u8; 16];
    /// `creationDate` (epoch ms).
    fn date(&self) -> i64;
}

/// Where a stream stands: the offset to request next and the record it must find there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Offset the next page starts at (the anchor run's first copy, when there is one).
    pub start: i64,
    /// The last record delivered; `None` before the first.
    pub anchor: Option<Anchor>,
    /// How many identical copies of the anchor end what was delivered (1 as a rule).
    pub run: u32,
}

impl Cursor {
    /// The start of a window.
    pub const BEGIN: Cursor = Cursor {
        start: 0,
        anchor: None,
        run: 0,
    };
}

/// What to do with a page fetched at the cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Deliver the records from this index on.
    Deliver(usize),
    /// The page may be an older snapshot without the anchor: fetch it again, fresh.
    Refetch,
    /// Every record is newer than the anchor: look one page further on.
    Advance,
}

/// Places a page fetched at `cursor.start` (`fresh`: fetched past the cache after the
/// anchor's page) relative to the anchor.
pub fn place<R: Anchored>(cursor: &Cursor, records: &[R], fresh: bool) -> Placement {
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

/// The filters that define a window; a resume token is only valid for the same ones.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Window {
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

    #[derive(Clone, Copy, Debug)]
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
}
