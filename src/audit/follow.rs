//! Follow mode's bookkeeping: which date ranges to read, oldest first, and which records
//! of a range a follower has not had yet.
//!
//! # The method: disjoint date ranges, each read whole
//!
//! A follower reads Confluence's absolute-range listing (`startDate`..=`endDate`), never
//! a window relative to now, and only ranges that ended at least `lag` ago: under the
//! assumption that a record becomes visible within `lag` of its `creationDate`, such a
//! range lists the same records on every request, so its pages can be cached and shared
//! by every follower and replica.
//!
//! A range is read with one request for its newest page. Whether that page holds the whole
//! range is never read off the `limit` Confluence echoes (it may echo the limit asked
//! while capping below it, or echo nothing): [`Listing`] decides from what cannot
//! lie, and when it cannot tell, one more request at the page's end confirms. A whole
//! range's records are delivered, oldest first. A full page does not hold its range,
//! but it tells where to cut: every record newer than its oldest date `D` is in it, so
//! `(D, to]` is delivered from that page (no second request), after `[from, D]`, which is
//! cut by time into pieces sized from the page's density of records to fill
//! [`FILL`] of a page each, read oldest first. A cut commits to at most [`MAX_PIECES`]
//! pieces, the newest; before them, to at most [`MAX_CHUNKS`] chunks of as many pieces'
//! worth each; what lies before those is one more range. Each chunk and that range is
//! cut again by its own newest page, and those pages are fetched at once, so a long
//! backfill reaches its oldest records in a few round trips, not one per
//! [`MAX_PIECES`] pieces. Where the range just before a slice came back empty
//! ([`Before::Empty`]), the log may begin anywhere in it: its pieces grow away from the
//! page's records instead, so an empty stretch costs a few requests. A piece that turns
//! out full is cut the same way (its newest part, again, delivered from its page).
//! Ranges never overlap, so no record is read twice at two offsets and no order among
//! records sharing a millisecond matters; only a single millisecond
//! holding more records than a page is paged by offset (and counted: if Confluence
//! reorders it between requests, its records can be missed or repeated).
//!
//! # Bounds Confluence may not keep exactly
//!
//! A server may apply `startDate`/`endDate` at a coarser grain than the millisecond (a
//! second), so a page can hold records outside the range asked. They are never
//! delivered from it (the neighbouring range delivers them), and they still count in
//! the page's length, which is what says whether the page was cut. A page whose oldest
//! record is older than the range reached past its start, so it holds all of it; a page
//! whose records all lie after the range is paged by offset. A record further than
//! [`BOUND_SLACK_MS`] outside the range means the server ignores the bounds: no cut could
//! ever narrow its pages, so the follower stops with [`OutOfBounds`] rather than cutting
//! the range down to single milliseconds.
//!
//! # The checkpoint
//!
//! A follower stands at `next`: every record created before `next` was delivered, and
//! at `next` those in `seen` (a multiset of digests: byte-identical records are distinct
//! events). A message that ends a range moves `next` past the range with `seen` empty; a
//! message cut inside a range (by size or by `max_records`) leaves `next` at its last
//! record's millisecond.

use super::anchor::Anchored;

/// Where a follower stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Every record created before this millisecond (epoch ms) was delivered.
    pub next: i64,
    /// Digests of the records at `next` delivered already, sorted, repeats kept.
    pub seen: Vec<u64>,
}

impl Checkpoint {
    /// Records created at or after `at`, none delivered yet.
    pub(crate) fn at(at: i64) -> Self {
        Self {
            next: at,
            seen: Vec::new(),
        }
    }
}

/// A date range still to read, epoch ms, both ends inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Slice {
    /// First millisecond.
    pub from: i64,
    /// Last millisecond.
    pub to: i64,
}

impl Slice {
    /// The range `[from, to]`.
    pub(crate) fn new(from: i64, to: i64) -> Self {
        Self { from, to }
    }
}

/// What the newest page of a slice says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The page holds every record of the slice.
    Whole,
    /// Read these slices instead, oldest first, then deliver `held` from the page.
    Split {
        /// Slices to read, oldest first, tiling the slice up to `held`.
        pieces: Vec<Slice>,
        /// The slice's newest part, every record of which the page holds.
        held: Option<Slice>,
        /// How many of the first pieces hold more than a page's worth each (the range
        /// before the newest [`MAX_PIECES`] pieces, and the chunks it is cut into): each is
        /// cut again by its own newest page before the pieces after it are worth fetching
        /// ahead.
        wide: usize,
    },
    /// One millisecond with more records than a page: page through it by offset.
    Overflow,
}

/// How far outside the range asked a record may lie before the server is taken to
/// ignore the range: one second, the coarsest grain a server is allowed to round the
/// bounds to.
pub(crate) const BOUND_SLACK_MS: i64 = 1000;

/// A record dated further outside a range than [`BOUND_SLACK_MS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutOfBounds {
    /// The range asked.
    pub slice: Slice,
    /// The offending record's date.
    pub date: i64,
}

/// Checks that `page` (an answer for `slice`) keeps to the range, within the slack.
pub(crate) fn check_bounds<R: Anchored>(slice: Slice, page: &[R]) -> Result<(), OutOfBounds> {
    let low = slice.from.saturating_sub(BOUND_SLACK_MS);
    let high = slice.to.saturating_add(BOUND_SLACK_MS);
    match page
        .iter()
        .map(Anchored::date)
        .find(|d| !(low..=high).contains(d))
    {
        Some(date) => Err(OutOfBounds { slice, date }),
        None => Ok(()),
    }
}

/// How many of `page`'s records lie outside `slice` (a server rounding the bounds).
pub(crate) fn outside<R: Anchored>(slice: Slice, page: &[R]) -> usize {
    page.iter()
        .filter(|r| !(slice.from..=slice.to).contains(&r.date()))
        .count()
}

/// What a page's length says about whether it holds its whole range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Length {
    /// It holds every record of its range.
    Whole,
    /// It was cut: more records of its range lie past it.
    Cut,
    /// It cannot tell: a read at the page's end must confirm.
    Unsure,
}

/// What a source's answers to range listings proved: its cap on `limit`, from the page
/// lengths it returned for one asked limit, and the grain of its bounds.
///
/// Confluence may cap `limit` below the one asked ("fixed system limits") and echo the
/// asked one, or nothing. A cap is taken never to fall below a page length it served:
/// then a page shorter than the longest page seen was not cut, and once a page of `n` was
/// found cut (records past it), every page of `n` or more may be cut and every shorter one
/// is whole. Nothing else is believed; a page that neither proves is confirmed by reading
/// at its end, which costs one request per range until the cap shows itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Listing {
    /// The longest page returned.
    pub longest: usize,
    /// The length of the shortest page found cut.
    pub cap: Option<usize>,
    /// The grain of the range's bounds, ms: 1 until a record outside a range asked shows
    /// that the server rounds them, [`BOUND_SLACK_MS`] from then on.
    pub grain: i64,
}

impl Default for Listing {
    fn default() -> Self {
        Self {
            longest: 0,
            cap: None,
            grain: 1,
        }
    }
}

impl Listing {
    /// Learns from an answer for `slice`: records outside it mean the bounds are rounded.
    pub(crate) fn bounds<R: Anchored>(&mut self, slice: Slice, page: &[R]) {
        if outside(slice, page) > 0 {
            self.grain = BOUND_SLACK_MS;
        }
    }

    /// Judges a page of `n` records asked with `asked`, whose answer echoed `echo` (0 for
    /// none); an echo is trusted only where it costs requests, never records.
    pub(crate) fn judge(&self, n: usize, asked: usize, echo: usize) -> Length {
        if n == 0 {
            return Length::Whole;
        }
        if n >= asked || (echo > 0 && echo < asked && n >= echo) {
            return Length::Cut;
        }
        match self.cap {
            Some(cap) if n >= cap => Length::Cut,
            Some(_) => Length::Whole,
            None if n < self.longest => Length::Whole,
            None => Length::Unsure,
        }
    }

    /// Learns that a page of `n` records was returned.
    pub(crate) fn served(&mut self, n: usize) {
        self.longest = self.longest.max(n);
    }

    /// Learns that a page of `n` records was cut (records lay past it).
    pub(crate) fn cut(&mut self, n: usize) {
        if n > 0 {
            self.cap = Some(self.cap.map_or(n, |c| c.min(n)));
        }
    }
}

/// Whether `page` (newest first) reaches past `slice`'s start, as a server rounding the
/// bounds may list: then it holds every record of the slice, whatever its length.
pub(crate) fn reaches_before<R: Anchored>(slice: Slice, page: &[R]) -> bool {
    page.last().is_some_and(|r| r.date() < slice.from)
}

/// Most pieces one cut makes: a density read off one page can be far off (audit logs come
/// in bursts), so a cut never commits to many requests at once.
pub(crate) const MAX_PIECES: i64 = 64;

/// Most chunks of [`MAX_PIECES`] pieces' worth each that a cut makes of what precedes its
/// pieces: their newest pages are fetched at once, so a long backfill finds its oldest
/// records in a few round trips rather than one per [`MAX_PIECES`] pieces; few, since
/// the ones before the log's oldest record come back empty.
pub(crate) const MAX_CHUNKS: i64 = 16;

/// How full a piece is meant to be, as a share of a page: fuller pieces take fewer
/// requests, and one that turns out full costs only a small one for what its page left
/// out (its newest part is delivered from it), fetched while the pieces after it are.
pub(crate) const FILL: f64 = 0.97;

/// What is known of the records just before a slice, where the log may begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Before {
    /// Nothing: records may run on back through the slice at the page's density.
    Unknown,
    /// The range just before it was read and held no record: the log may begin anywhere
    /// in the slice, most likely near its newest records (the cut that made the slice put
    /// its start where the density said the records end).
    Empty,
}

impl Before {
    /// What is known before `slice` when the slice read just before it was `last`, with
    /// how many records its page held inside it.
    pub(crate) fn after(last: Option<(Slice, usize)>, slice: Slice) -> Self {
        match last {
            Some((l, 0)) if l.to.saturating_add(1) == slice.from => Self::Empty,
            _ => Self::Unknown,
        }
    }
}

/// Pieces a cut needs by density before one at the log's possible beginning
/// ([`Before::Empty`]) is made geometric instead: below it, the few pieces cost no more.
const GEOMETRIC_FROM: i64 = 4;

/// What to do with `slice` given its newest page, `page` (newest first), which holds all
/// of the slice when `whole`, from a server that applies the range's bounds to `grain`
/// ms (1, or 1000 for one that rounds them to the second): cuts fall on the grain, since
/// a piece cut inside a grain cell comes back widened to the whole cell. `before` says
/// whether the log may begin inside the slice: then its pieces grow geometrically away
/// from the page's records (each as long as all newer ones together), so the empty span
/// before the log's first record costs a few requests, not one per page's worth of it;
/// the long pieces that do hold records are cut again by their own pages (`wide`).
pub(crate) fn plan<R: Anchored>(
    slice: Slice,
    page: &[R],
    whole: bool,
    grain: i64,
    before: Before,
) -> Plan {
    let Some(oldest) = page.last().map(Anchored::date) else {
        return Plan::Whole;
    };
    if whole || reaches_before(slice, page) {
        return Plan::Whole;
    }
    let g = grain.max(1);
    let cell = |t: i64| t.div_euclid(g).saturating_mul(g);
    // One cell cannot be cut; a full page of records after the slice cannot be cut past
    // either (they come back in every piece whose end rounds the same way): both are
    // paged by offset.
    if cell(slice.from) == cell(slice.to) || oldest > slice.to {
        return Plan::Overflow;
    }
    // Every record after `oldest`'s cell is in the page: that part is held; what
    // precedes it (the cell included) is cut by the page's density.
    let older_end = cell(oldest).saturating_add(g - 1).min(slice.to);
    let held = (older_end < slice.to).then(|| Slice::new(older_end + 1, slice.to));
    // The page's records span `[oldest, to]`: at as many per cell, `per_piece` cells
    // fill `FILL` of a page.
    let per_cell = page.len() as f64 / (slice.to - oldest + 1) as f64 * g as f64;
    let per_piece = ((FILL * page.len() as f64) / per_cell).floor().max(1.0) as i64;
    let (first_cell, last_cell) = (cell(slice.from), cell(older_end));
    let cells = (last_cell - first_cell) / g + 1;
    // Nothing held: the pieces must be smaller than the slice, or it is read again.
    let least = if held.is_some() { 1 } else { 2 };
    let needed = ((cells + per_piece - 1) / per_piece).max(least).min(cells);
    if before == Before::Empty && needed > GEOMETRIC_FROM {
        return geometric(slice, (first_cell, cells), older_end, per_piece, g, held);
    }
    let mut pieces = Vec::new();
    let (count, start_cell) = if needed > MAX_PIECES {
        // The newest `MAX_PIECES` pieces; before them up to `MAX_CHUNKS` chunks of as
        // many pieces' worth each, newest first, and what precedes those as one range,
        // read first. Each chunk and that range is cut by its own page.
        let start_cell = last_cell - (MAX_PIECES * per_piece - 1) * g;
        let chunk = MAX_PIECES * per_piece;
        let chunks = ((start_cell - first_cell) / g / chunk).min(MAX_CHUNKS);
        let chunks_from = start_cell - chunks * chunk * g;
        let mut from = slice.from;
        if chunks_from > slice.from {
            pieces.push(Slice::new(slice.from, chunks_from - 1));
            from = chunks_from;
        }
        for k in (0..chunks).rev() {
            let to = start_cell - k * chunk * g - 1;
            pieces.push(Slice::new(from, to));
            from = to + 1;
        }
        (MAX_PIECES, start_cell)
    } else {
        (needed, first_cell)
    };
    let wide = pieces.len();
    let width = ((last_cell - start_cell) / g + 1) as f64 / count as f64;
    let mut from = pieces.last().map_or(slice.from, |p| p.to + 1);
    for i in 1..=count {
        let to = if i == count {
            older_end
        } else {
            start_cell + ((width * i as f64) as i64) * g - 1
        };
        if to >= from {
            pieces.push(Slice::new(from, to));
            from = to + 1;
        }
    }
    Plan::Split { pieces, held, wide }
}

/// Cuts `[slice.from, older_end]` (`cells` cells of `g` ms from `first_cell`) into pieces
/// that grow away from its newest end: `per_piece` cells, `per_piece` again, then each as
/// long as all newer ones together, the oldest taking what is left. Oldest first; the
/// ones longer than `per_piece` cells lead and are `wide`.
fn geometric(
    slice: Slice,
    (first_cell, cells): (i64, i64),
    older_end: i64,
    per_piece: i64,
    g: i64,
    held: Option<Slice>,
) -> Plan {
    // Lengths in cells, newest first.
    let mut spans = Vec::new();
    let mut covered = 0i64;
    while covered < cells {
        let span = covered.max(per_piece).min(cells - covered);
        spans.push(span);
        covered += span;
    }
    // A remainder no longer than a piece joins the one before it: the long pieces must
    // lead, the ones `wide` marks.
    if spans.len() > 2 && spans.last().is_some_and(|&rest| rest <= per_piece) {
        let rest = spans.pop().unwrap_or(0);
        if let Some(last) = spans.last_mut() {
            *last += rest;
        }
    }
    let mut pieces = Vec::with_capacity(spans.len());
    let mut start_cell = first_cell;
    for (i, &span) in spans.iter().rev().enumerate() {
        let from = if i == 0 { slice.from } else { start_cell };
        start_cell += span * g;
        let to = if i + 1 == spans.len() {
            older_end
        } else {
            start_cell - 1
        };
        pieces.push(Slice::new(from, to));
    }
    let wide = spans.iter().filter(|&&span| span > per_piece).count();
    Plan::Split { pieces, held, wide }
}

/// The records of a whole slice's page (newest first) not delivered yet, as indexes
/// into `page`, oldest first. Records outside the slice are left to the slices that hold
/// them.
pub(crate) fn undelivered<R: Anchored>(
    checkpoint: &Checkpoint,
    slice: Slice,
    page: &[R],
) -> Vec<usize> {
    let mut seen = checkpoint.seen.clone();
    // (date, index): each record's date is read once, not at every comparison.
    let mut out: Vec<(i64, usize)> = (0..page.len())
        .rev()
        .filter_map(|i| {
            let r = &page[i];
            let date = r.date();
            if date < checkpoint.next || !(slice.from..=slice.to).contains(&date) {
                return None;
            }
            if date == checkpoint.next
                && let Ok(at) = seen.binary_search(&r.id())
            {
                seen.remove(at);
                return None;
            }
            Some((date, i))
        })
        .collect();
    // Oldest first, and records sharing a millisecond by digest: the same range gives
    // the same order whatever order Confluence listed them in, so an export cut and
    // resumed writes the bytes an uninterrupted one does (the first part delivered of a
    // millisecond is its least digests, the rest follows them). Digests are taken only
    // where dates tie, once each.
    out.sort_by_key(|&(date, _)| date);
    for tied in out.chunk_by_mut(|a, b| a.0 == b.0) {
        if tied.len() > 1 {
            tied.sort_by_cached_key(|&(_, i)| page[i].id());
        }
    }
    out.into_iter().map(|(_, i)| i).collect()
}

/// The checkpoint after delivering `records` (oldest first) from `checkpoint`.
pub(crate) fn advance<R: Anchored>(checkpoint: &Checkpoint, records: &[&R]) -> Checkpoint {
    let Some(last) = records.last() else {
        return checkpoint.clone();
    };
    let date = last.date();
    let mut seen: Vec<u64> = if date == checkpoint.next {
        checkpoint.seen.clone()
    } else {
        Vec::new()
    };
    seen.extend(records.iter().filter(|r| r.date() == date).map(|r| r.id()));
    seen.sort_unstable();
    Checkpoint { next: date, seen }
}

/// The checkpoint once every record up to `to` (inclusive) was delivered.
pub(crate) fn past(checkpoint: &Checkpoint, to: i64) -> Checkpoint {
    if to < checkpoint.next {
        return checkpoint.clone();
    }
    Checkpoint::at(to.saturating_add(1))
}

/// The last millisecond a follower may read at `now_ms`: `lag` back, rounded down to the
/// poll grid, so followers on every replica ask for the same ranges.
pub(crate) fn settled(now_ms: i64, lag_ms: i64, poll_ms: i64) -> i64 {
    let edge = now_ms.saturating_sub(lag_ms);
    edge.div_euclid(poll_ms) * poll_ms - 1
}

/// When `settled` next moves on, epoch ms.
pub(crate) fn next_tick(now_ms: i64, lag_ms: i64, poll_ms: i64) -> i64 {
    settled(now_ms, lag_ms, poll_ms) + 1 + poll_ms + lag_ms
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A record: (date, content); its digest is its content, so equal contents are
    /// byte-identical records.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct R(i64, u64);

    impl Anchored for R {
        fn id(&self) -> u64 {
            self.1
        }
        fn date(&self) -> i64 {
            self.0
        }
    }

    /// A log as Confluence's range listing shows it: newest first, ties in the order a
    /// request's `shuffle` gives them.
    fn listing(log: &[R], s: Slice, limit: usize, shuffle: u64, start: usize) -> Vec<R> {
        let mut rows: Vec<R> = log
            .iter()
            .copied()
            .filter(|r| (s.from..=s.to).contains(&r.0))
            .collect();
        let mut rng = fastrand::Rng::with_seed(shuffle);
        rng.shuffle(&mut rows);
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        rows.into_iter().skip(start).take(limit).collect()
    }

    /// Follows `log` from `from` to `to` with pages of `limit`, cutting messages at
    /// `cut` records and resuming from each message's checkpoint: what a follower gets.
    fn follow(log: &[R], from: i64, to: i64, limit: usize, cut: usize, seed: u64) -> Vec<R> {
        let mut out = Vec::new();
        let mut cp = Checkpoint::at(from);
        let mut request = seed;
        // Each resume starts again from the checkpoint alone.
        'resume: loop {
            let mut stack = vec![Slice::new(cp.next, to)];
            // Slices a page in hand holds whole, delivered from it.
            let mut held = std::collections::HashMap::new();
            // The last slice delivered and how many of its records lay inside it: an
            // empty one just before a slice says the log may begin in it.
            let mut last: Option<(Slice, usize)> = None;
            while let Some(s) = stack.pop() {
                let before = Before::after(last, s);
                let (page, whole) = match held.remove(&s) {
                    Some(page) => (page, true),
                    None => {
                        request += 1;
                        let page = listing(log, s, limit, request, 0);
                        let whole = page.len() < limit;
                        (page, whole)
                    }
                };
                let page = match plan(s, &page, whole, 1, before) {
                    Plan::Whole => page,
                    Plan::Split {
                        pieces,
                        held: newest,
                        ..
                    } => {
                        if let Some(newest) = newest {
                            stack.push(newest);
                            held.insert(newest, page);
                        }
                        stack.extend(pieces.into_iter().rev());
                        continue;
                    }
                    Plan::Overflow => {
                        let mut all = Vec::new();
                        loop {
                            request += 1;
                            let p = listing(log, s, limit, request, all.len());
                            let n = p.len();
                            all.extend(p);
                            if n < limit {
                                break all;
                            }
                        }
                    }
                };
                last = Some((s, page.len() - outside(s, &page)));
                let fresh = undelivered(&cp, s, &page);
                if fresh.len() > cut {
                    let part: Vec<&R> = fresh[..cut].iter().map(|&i| &page[i]).collect();
                    out.extend(part.iter().copied().copied());
                    cp = advance(&cp, &part);
                    continue 'resume;
                }
                out.extend(fresh.iter().map(|&i| page[i]));
                cp = past(&cp, s.to);
            }
            return out;
        }
    }

    fn log_strategy() -> impl Strategy<Value = Vec<R>> {
        // Few dates, so ties are common; few contents, so byte-identical twins are too.
        prop::collection::vec((0i64..200, 0u64..6), 0..300)
            .prop_map(|v| v.into_iter().map(|(d, c)| R(d, c)).collect())
    }

    proptest! {
        /// Every record in range arrives once, in date order, whatever the page size,
        /// however messages are cut and however each request orders ties (as long as a
        /// millisecond fits a page).
        #[test]
        fn every_record_in_range_arrives_once_in_order(
            log in log_strategy(),
            from in -5000i64..100,
            limit in 2usize..40,
            cut in 1usize..50,
            seed in any::<u64>(),
        ) {
            let widest = {
                let mut counts = std::collections::HashMap::new();
                for r in &log {
                    *counts.entry(r.0).or_insert(0usize) += 1;
                }
                counts.into_values().max().unwrap_or(0)
            };
            prop_assume!(widest < limit);
            let got = follow(&log, from, 199, limit, cut, seed);
            prop_assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "out of order");
            let mut want: Vec<R> = log.iter().copied().filter(|r| r.0 >= from).collect();
            let mut got_sorted = got.clone();
            want.sort_by_key(|r| (r.0, r.1));
            got_sorted.sort_by_key(|r| (r.0, r.1));
            prop_assert_eq!(got_sorted, want);
        }
    }

    proptest! {
        /// A cut tiles its slice: pieces in order, adjacent, covering it exactly.
        #[test]
        fn cuts_tile_the_slice(
            from in -1000i64..1000,
            len in 1i64..100_000,
            dates in prop::collection::vec(0i64..100_000, 1..50),
            empty_before in any::<bool>(),
        ) {
            let slice = Slice::new(from, from + len);
            let mut page: Vec<R> = dates.into_iter().map(|d| R(from + d % (len + 1), 0)).collect();
            page.sort_by_key(|r| std::cmp::Reverse(r.0));
            let before = if empty_before { Before::Empty } else { Before::Unknown };
            let Plan::Split { mut pieces, held, .. } = plan(slice, &page, false, 1, before) else {
                return Err(TestCaseError::fail("a full page of a wide slice is cut"));
            };
            prop_assert!(pieces.len() as i64 <= MAX_PIECES + MAX_CHUNKS + 1);
            // Every record after the oldest one's millisecond is held by the page.
            let oldest = page[page.len() - 1].0;
            prop_assert_eq!(held.map(|h| h.from), (oldest < slice.to).then_some(oldest + 1));
            pieces.extend(held);
            prop_assert_eq!(pieces[0].from, slice.from);
            prop_assert_eq!(pieces[pieces.len() - 1].to, slice.to);
            for w in pieces.windows(2) {
                prop_assert!(w[0].from <= w[0].to);
                prop_assert_eq!(w[0].to + 1, w[1].from);
            }
        }
    }

    #[test]
    fn a_full_page_cuts_its_slice_at_its_oldest_date_by_its_density() {
        let page = [R(50, 1), R(40, 1), R(30, 1)];
        // 3 records over [30, 60]: [0, 30] should hold about 3, so two pieces.
        // (30, 60] is in the page, delivered from it.
        assert_eq!(
            plan(Slice::new(0, 60), &page, false, 1, Before::Unknown),
            Plan::Split {
                pieces: vec![Slice::new(0, 14), Slice::new(15, 30)],
                held: Some(Slice::new(31, 60)),
                wide: 0,
            }
        );
        // The same page atop a slice 100 times as long: as many pieces as allowed, each
        // sized to fill `FILL` of a page (at 3 records per 31 ms), the newest ones; the
        // rest is one range, read first.
        let per = (FILL * 31.0).floor() as i64;
        let Plan::Split { pieces, held, wide } =
            plan(Slice::new(-3000, 60), &page, false, 1, Before::Unknown)
        else {
            panic!("cut");
        };
        assert_eq!(wide, 1);
        assert_eq!(pieces.len() as i64, MAX_PIECES + 1);
        let start = 30 - MAX_PIECES * per;
        assert_eq!(pieces[0], Slice::new(-3000, start));
        assert!(
            pieces[1..].iter().all(|p| p.to - p.from + 1 == per),
            "{pieces:?}"
        );
        assert_eq!(held, Some(Slice::new(31, 60)));
        // Longer still: before the pieces, `MAX_CHUNKS` chunks of `MAX_PIECES` pieces'
        // worth each, their pages fetched at once, and what precedes them.
        let Plan::Split { pieces, wide, .. } =
            plan(Slice::new(-100_000, 60), &page, false, 1, Before::Unknown)
        else {
            panic!("cut");
        };
        let chunk = MAX_PIECES * per;
        assert_eq!(wide as i64, MAX_CHUNKS + 1);
        assert_eq!(pieces.len() as i64, MAX_CHUNKS + MAX_PIECES + 1);
        assert_eq!(pieces[0], Slice::new(-100_000, start - MAX_CHUNKS * chunk));
        assert!(
            pieces[1..wide].iter().all(|p| p.to - p.from + 1 == chunk),
            "{pieces:?}"
        );
        assert_eq!(pieces[wide - 1].to, start);
        assert_eq!(
            plan(Slice::new(30, 30), &page[2..], false, 1, Before::Unknown),
            Plan::Overflow
        );
        assert_eq!(
            plan(Slice::new(0, 60), &page, true, 1, Before::Unknown),
            Plan::Whole
        );
        assert_eq!(
            plan::<R>(Slice::new(0, 60), &[], false, 1, Before::Unknown),
            Plan::Whole
        );
    }

    #[test]
    fn where_the_log_may_begin_pieces_grow_away_from_the_records() {
        let page = [R(50, 1), R(40, 1), R(30, 1)];
        // 3 records over [30, 60]: pieces of 30 ms fill 97 % of a page. After an empty
        // range, [-3000, 30] is cut 30, 30, 60, 120, ... back from 30, the oldest taking
        // what is left: 8 pieces where density alone makes 64 and a range before them.
        let Plan::Split { pieces, held, wide } =
            plan(Slice::new(-3000, 60), &page, false, 1, Before::Empty)
        else {
            panic!("cut");
        };
        let lengths: Vec<i64> = pieces.iter().map(|p| p.to - p.from + 1).collect();
        assert_eq!(lengths, [1111, 960, 480, 240, 120, 60, 30, 30]);
        assert_eq!((pieces[0].from, pieces[7].to), (-3000, 30));
        assert_eq!(held, Some(Slice::new(31, 60)));
        // The long ones lead, each cut again by its own page.
        assert_eq!(wide, 6);
        // A remainder shorter than a piece joins the longest: the long ones lead.
        let Plan::Split { pieces, wide, .. } =
            plan(Slice::new(-90, 60), &page, false, 1, Before::Empty)
        else {
            panic!("cut");
        };
        let lengths: Vec<i64> = pieces.iter().map(|p| p.to - p.from + 1).collect();
        assert_eq!((lengths, wide), (vec![61, 30, 30], 1));
        // A slice needing few pieces is cut by density as before.
        assert_eq!(
            plan(Slice::new(0, 60), &page, false, 1, Before::Empty),
            plan(Slice::new(0, 60), &page, false, 1, Before::Unknown)
        );
    }

    #[test]
    fn the_grid_is_shared_and_lags() {
        // 10 s polls, 10 s lag: at 12:00:25.5 the settled edge is 12:00:10 (exclusive).
        let (lag, poll) = (10_000, 10_000);
        assert_eq!(settled(25_500, lag, poll), 9_999);
        assert_eq!(settled(29_999, lag, poll), 9_999);
        assert_eq!(settled(30_000, lag, poll), 19_999);
        assert_eq!(next_tick(25_500, lag, poll), 30_000);
        assert_eq!(next_tick(30_000, lag, poll), 40_000);
    }
}
