//! `Follow`: every record from a starting point on, oldest first, then each new one as
//! it settles, with a checkpoint in every message.
//!
//! A producer task reads date ranges through the page cache (`src/app/pages.rs`) and
//! hands messages to a channel of one slot, as `StreamSince` does (`src/app/stream.rs`):
//! a slow follower holds only its own producer back, and one left unread for
//! `--stream-idle-timeout` ends with its last checkpoint. Which ranges to read and what
//! each delivers is `audit::follow`'s business.
//!
//! Followers share their upstream requests without sharing state: each tick reads the
//! range that settled since the last one, `[next, settled]`, whose ends lie on a grid of
//! the poll interval, so every follower at the head of the log (on every replica) asks
//! for the same range at the same moment, and the cache's single flight (and the Redis
//! tier across replicas) makes that one request to Confluence. The first follower to
//! reach a tick also reads the previous tick's range again, fresh, to notice records
//! that became visible later than `lag` (counted and logged: they cannot be delivered
//! in order).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::Instrument;

use super::{
    lookahead::{Depth, LookAhead, PageSize, Reserved},
    stream::{self, Item, Messages, PageSource},
};
use crate::{
    app::PageRequest,
    audit::{
        PageQuery, Span, checkpoint,
        follow::{self, Before, Checkpoint, Length, Listing, OutOfBounds, Plan, Slice},
        resume::TokenKey,
    },
    callers::Caller,
    credential::Credential,
    error::{GatewayError, within_deadline},
    metrics::{FollowPosition, FollowPositions, METRICS},
    pb::wire::{self, PageView},
    shutdown::Shutdown,
    upstream::{
        clock::{ClockOffset, now_ms},
        fair::{InOrder, Urgency},
    },
};

/// Records per message at most.
const MAX_MESSAGE_RECORDS: usize = 1000;
/// Bytes of records per message at most (under gRPC's common 4 MiB receive limit).
const MAX_MESSAGE_BYTES: usize = 2 << 20;
/// Offsets paged through one overflowing millisecond at most (a broken server would
/// otherwise be paged forever).
const MAX_OVERFLOW_PAGES: usize = 1000;
/// Late checks remembered (each is one range of one filter).
const MAX_LATE_CHECKS: usize = 4096;
/// Pages a follower keeps to deliver the newest part of their ranges later (one per cut
/// still being read), each while the look-ahead budget has room for it; past them, that
/// part is asked for again.
const MAX_HELD_PAGES: usize = 32;
/// The limit every range page asks for.
const ASKED: usize = PageQuery::MAX_LIMIT as usize;

/// The gateway's now, epoch ms (a function, so that tests can run followers on tokio's
/// paused clock).
pub(crate) type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The gateway's own clock.
pub(crate) fn system_clock() -> Clock {
    Arc::new(now_ms)
}

/// One validated `Follow` call.
#[derive(Clone, Debug)]
pub(crate) struct FollowRequest {
    /// Confluence's `searchString`.
    pub search_string: Option<String>,
    /// Where to begin.
    pub checkpoint: Checkpoint,
    /// How often the head is read.
    pub poll: Duration,
    /// How late a record may become visible upstream.
    pub lag: Duration,
    /// End after exactly this many records.
    pub max_records: Option<u64>,
    /// End, OK, once every record dated before this millisecond was delivered.
    pub until: Option<i64>,
    /// Whom to fetch as.
    pub credential: Option<Credential>,
    /// Who asks (its fair share of Confluence's request slots).
    pub caller: Caller,
    /// When the caller stops waiting (followers usually set none).
    pub deadline: Option<Instant>,
    /// The call ends when its caller takes nothing for this long.
    pub idle_timeout: Duration,
}

/// Ranges already checked again for late records, shared by every follower of a
/// gateway so that one check serves them all.
#[derive(Debug, Default)]
pub(crate) struct LateChecks(Mutex<HashSet<(Option<String>, i64, i64)>>);

impl LateChecks {
    /// Whether the caller is the first to check `slice` of `filter`.
    fn claim(&self, filter: &Option<String>, slice: Slice) -> bool {
        let mut done = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if done.len() >= MAX_LATE_CHECKS {
            // Old ticks are never checked again; forgetting them costs at most a repeat.
            done.clear();
        }
        done.insert((filter.clone(), slice.from, slice.to))
    }
}

/// What a follower shares with the gateway.
#[derive(Clone)]
pub(crate) struct Shared {
    /// Signs checkpoints.
    pub tokens: Arc<TokenKey>,
    /// One late check per range.
    pub late: Arc<LateChecks>,
    /// Turns true when the gateway shuts down: followers end after their last complete
    /// message, with UNAVAILABLE.
    pub stopping: Shutdown,
    /// Ranges fetched ahead while backfilling.
    pub prefetch: usize,
    /// The gateway's budget for pages read ahead (past the first few) or kept to
    /// deliver later.
    pub lookahead: Arc<LookAhead>,
    /// This replica's place in each tick, a fraction in [0, 0.5) drawn at start: replicas
    /// read a tick's range one after the other rather than all at once, so the later ones
    /// find it in the Redis tier. Every follower of a replica shares it, so they still
    /// read at the same moment, through one load.
    pub tick_spread: f64,
    /// What the range listing's answers proved about Confluence's cap and bounds, learned
    /// by every follower of the gateway (`audit::follow::Listing`).
    pub listing: Arc<Mutex<Listing>>,
    /// Now, by the gateway's clock.
    pub clock: Clock,
    /// How far Confluence's clock is from the gateway's (`src/upstream/clock.rs`).
    pub offset: Arc<ClockOffset>,
    /// Where the gateway's followers stand, for `/metrics`.
    pub positions: Arc<FollowPositions>,
}

/// Starts a follower; `held` (its `--max-streams` slot) goes when it returns.
pub(crate) fn start<P: PageSource>(
    pages: P,
    req: FollowRequest,
    shared: Shared,
    held: impl Send + 'static,
) -> Messages {
    METRICS.follows_started.inc();
    let follower = Follower {
        depth: Depth::new(shared.prefetch),
        pages,
        position: shared.positions.enter(),
        edge: i64::MIN,
        remaining: req.max_records,
        req,
        shared,
        skew_warned: false,
        sizes: Arc::default(),
        last: InOrder::default(),
    };
    stream::supervise("Follow", held, |tx, idle| follower.produce(tx, idle))
}

struct Follower<P> {
    pages: P,
    req: FollowRequest,
    shared: Shared,
    /// Records still to deliver under `max_records`.
    remaining: Option<u64>,
    /// Whether this call warned about clock skew already.
    skew_warned: bool,
    /// How large this follower's pages are.
    sizes: Arc<PageSize>,
    /// How many ranges it reads ahead: as many as it needs, within the prefetch.
    depth: Depth,
    /// Its place among the gateway's followers (`/metrics`).
    position: FollowPosition,
    /// The newest millisecond this tick may read.
    edge: i64,
    /// The order of its fetches: each asks for its page once the one made before it
    /// entered the scheduler, so they take free slots in order.
    last: InOrder,
}

/// A range's newest page being fetched, and how many ranges ahead of the one being read
/// it is (lowered as the reader comes closer, `src/upstream/fair.rs`); dropping it aborts
/// the fetch.
struct Fetch(
    JoinHandle<Result<PageView, GatewayError>>,
    Urgency,
    Option<Reserved>,
);

impl Fetch {
    /// A fetch whose page is in hand already.
    fn landed(page: PageView, urgency: Urgency, room: Option<Reserved>) -> Self {
        Self(tokio::spawn(async move { Ok(page) }), urgency, room)
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a range's page is asked of the cache and Confluence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    /// From the cache, when it holds the page.
    Cached,
    /// Of Confluence, refreshing the cached page.
    Fresh,
    /// Of Confluence, neither from the cache nor kept there (`PageRequest::unsettled`).
    Unsettled,
}

/// How a read ended.
enum Read {
    /// The range was read; whether any message went out, and the range with its count
    /// when one page held all of it (for the late check).
    Done {
        sent: bool,
        whole: Option<(Slice, usize)>,
    },
    /// `max_records` reached, or the caller went away: the call is over.
    Over,
}

impl<P: PageSource> Follower<P> {
    async fn produce(mut self, tx: mpsc::Sender<Item>, idle: oneshot::Sender<GatewayError>) {
        let (deadline, idle_timeout) = (self.req.deadline, self.req.idle_timeout);
        let result = within_deadline(
            deadline,
            "the call's deadline passed; follow again from the last checkpoint",
            self.run(&tx),
        )
        .await;
        stream::finish(result, &tx, idle, idle_timeout).await;
    }

    async fn run(&mut self, tx: &mpsc::Sender<Item>) -> Result<(), GatewayError> {
        if self.req.max_records == Some(0) {
            return Ok(());
        }
        let mut cp = self.req.checkpoint.clone();
        let (lag, poll) = (millis(self.req.lag), millis(self.req.poll).max(1));
        let mut stopping = self.shared.stopping.clone();
        // The range the last tick read whole at the head, to check again for late records.
        let mut last_head: Option<(Slice, usize)> = None;
        let until = self.req.until;
        let ended = |cp: &Checkpoint| until.is_some_and(|u| cp.next >= u);
        if ended(&cp) {
            return Ok(());
        }
        // The first range's page, when it was asked before Confluence's clock was known.
        let mut first = if self.shared.offset.observed() {
            None
        } else {
            tokio::select! {
                first = self.first_page(&cp, lag, poll) => first,
                _ = tx.closed() => return Ok(()),
                () = stopping.stopping() => return Err(GatewayError::ShuttingDown),
            }
        };
        loop {
            self.stop_if_stopping()?;
            self.check_skew(lag);
            let edge = self.settled_edge(lag, poll);
            self.edge = edge;
            self.stand(&cp);
            let mut sent = false;
            // Taken by the first tick whatever it reads: a later one must not find it.
            let first = first.take();
            if let Some(range) = tick_range(&cp, edge, poll) {
                let primed = first.filter(|(s, _)| *s == range).map(|(_, p)| p);
                match self.read(range, &mut cp, tx, primed).await? {
                    Read::Over => return Ok(()),
                    Read::Done { sent: s, whole } => {
                        sent = s;
                        if let Some((checked, n)) = last_head.take() {
                            self.check_late(checked, n).await;
                        }
                        last_head = whole;
                    }
                }
            }
            if !sent {
                // A heartbeat: progress to commit, and a sign of life.
                METRICS.follow_heartbeats.inc();
                let token =
                    checkpoint::encode(&self.shared.tokens, self.req.search_string.as_deref(), &cp);
                if !self.send(tx, wire::stream_message(&[], &token)).await? {
                    return Ok(());
                }
            }
            self.stand(&cp);
            if ended(&cp) {
                return Ok(());
            }
            // Spread by at most 2 s, well under any poll interval (at least 1 s … 2 s).
            let spread = (self.shared.tick_spread * poll.min(4_000) as f64) as i64;
            let now = self.now();
            let wait = follow::next_tick(now, lag, poll).saturating_sub(now) + spread;
            let wake = tokio::time::Instant::now() + Duration::from_millis(wait.max(0) as u64);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = tx.closed() => return Ok(()),
                () = stopping.stopping() => return Err(GatewayError::ShuttingDown),
            }
        }
    }

    /// The newest millisecond this tick may read: settled by [`Follower::now`], and no
    /// further than an absolute range's end (at once if that is settled).
    fn settled_edge(&self, lag: i64, poll: i64) -> i64 {
        self.edge_at(self.now(), lag, poll)
    }

    /// The newest millisecond a tick at `now` (by Confluence's clock) may read.
    fn edge_at(&self, now: i64, lag: i64, poll: i64) -> i64 {
        follow::settled(now, lag, poll).min(self.req.until.map_or(i64::MAX, |u| u - 1))
    }

    /// With no view of Confluence's clock yet, its first answer gives one before any range
    /// is taken as settled. That answer is the first range's page, asked as if the clocks
    /// agreed but not cached (`Ask::Unsettled`), so that a first follower pays no round
    /// trip of its own for the clock. It is kept only if its range was settled when it was
    /// asked by the clock the answer gave (Confluence listed it then or later; it is not
    /// behind by more than the poll grid hides there), and `run` reads from it only if
    /// the first tick reads that very range; else the range is asked again. One follower
    /// of the gateway asks at a time; the others find the clock known once it is done.
    /// With nothing to read yet, a millisecond the follower reads later asks for it. A
    /// failure shows again in the first real read.
    async fn first_page(&self, cp: &Checkpoint, lag: i64, poll: i64) -> Option<(Slice, PageView)> {
        let _first = self.shared.offset.first_answer().await;
        if self.shared.offset.observed() {
            return None;
        }
        let asked = (self.shared.clock)();
        let Some(range) = tick_range(cp, self.edge_at(asked, lag, poll), poll) else {
            let probe = Slice::new(cp.next, cp.next);
            let _ = join(self.fetch(probe, 0, Ask::Unsettled)).await;
            return None;
        };
        let page = join(self.fetch(range, 0, Ask::Unsettled)).await.ok()?;
        let behind = self.shared.offset.behind_ms();
        let settled = tick_range(cp, self.edge_at(asked + behind, lag, poll), poll);
        (settled == Some(range)).then_some((range, page))
    }

    /// Now by Confluence's clock where it is certainly behind the gateway's: ranges settle
    /// by the dates Confluence gives its records, so a gateway ahead of it by more than
    /// `lag` would read ranges before Confluence has written them. The least offset the
    /// `Date` headers allow is taken, in whole seconds (`ClockOffset::behind_ms`): the
    /// follower may wait up to a couple of seconds longer than `lag`, never less. A
    /// Confluence ahead only makes it wait longer, so the gateway's own clock stands then.
    fn now(&self) -> i64 {
        (self.shared.clock)() + self.shared.offset.behind_ms()
    }

    /// Says how far `cp` is behind this tick's newest readable millisecond.
    fn stand(&self, cp: &Checkpoint) {
        self.position
            .set(self.edge.saturating_sub(cp.next).saturating_add(1));
    }

    /// Warns, once a call, when the clocks are further apart than half the lag.
    fn check_skew(&mut self, lag_ms: i64) {
        let offset = self.shared.offset.offset_ms();
        if !self.skew_warned && offset.saturating_abs() > lag_ms / 2 {
            self.skew_warned = true;
            tracing::warn!(
                offset_ms = offset,
                lag_ms,
                "Confluence's clock is off from the gateway's by more than half the follower's \
                 lag: ranges are cut by Confluence's clock, but fix the clocks (NTP)"
            );
        }
    }

    fn stop_if_stopping(&self) -> Result<(), GatewayError> {
        if self.shared.stopping.is_stopping() {
            return Err(GatewayError::ShuttingDown);
        }
        Ok(())
    }

    /// Reads `range` oldest first and delivers what `cp` has not had, moving `cp` on;
    /// `primed`, the range's first page when it is in hand already.
    async fn read(
        &mut self,
        range: Slice,
        cp: &mut Checkpoint,
        tx: &mpsc::Sender<Item>,
        primed: Option<PageView>,
    ) -> Result<Read, GatewayError> {
        let mut stack = vec![range];
        let mut ahead: HashMap<Slice, Fetch> = HashMap::new();
        if let Some(page) = primed {
            ahead.insert(range, Fetch::landed(page, Urgency::ahead(0), None));
        }
        // Slices a page in hand holds whole (the newest part of a full page's range):
        // delivered from it when their turn comes, not asked again.
        let mut held: HashMap<Slice, (PageView, Reserved)> = HashMap::new();
        // Slices that will be cut into many more: nothing after one is fetched ahead
        // until it is (its pieces come first).
        let mut wide: HashSet<Slice> = HashSet::new();
        let mut sent = false;
        let mut whole = None;
        // The last slice delivered, and how many records its page held inside it.
        let mut last: Option<(Slice, usize)> = None;
        while let Some(slice) = stack.pop() {
            self.stop_if_stopping()?;
            // The fetches of slices no longer to be read go (a cut replaced them); this
            // slice's own stays, to be taken below.
            ahead.retain(|s, _| *s == slice || stack.contains(s));
            // While this slice is one to be cut into many, only the pages of others like it
            // are fetched ahead: its pieces come first.
            let cutting = wide.remove(&slice);
            let depth = self.depth_for(slice, &ahead, &held);
            self.expand(&mut stack, &mut ahead, &mut held, &mut wide, depth)
                .await;
            // This slice's own request is made before the look-ahead's, so that it
            // takes a free slot first.
            let mine = match held.remove(&slice) {
                Some(page) => Ok(page),
                None => {
                    let fetch = ahead
                        .remove(&slice)
                        .unwrap_or_else(|| self.fetch(slice, 0, Ask::Cached));
                    fetch.1.set(0);
                    Err(fetch)
                }
            };
            self.look_ahead(&stack, &mut ahead, &held, &wide, cutting, depth);
            let (page, complete) = match mine {
                Ok((page, _room)) => (page, true),
                Err(fetch) => {
                    let page = join(fetch).await?;
                    let complete = self.whole(slice, &page).await?;
                    (page, complete)
                }
            };
            let grain = self.listing().grain;
            // An empty range just before this one: the log may begin inside it.
            let before = Before::after(last, slice);
            let records = match follow::plan(slice, &page.records, complete, grain, before) {
                Plan::Whole => {
                    if slice == range {
                        let inside = page.records.len() - follow::outside(slice, &page.records);
                        whole = Some((slice, inside));
                    }
                    page.records
                }
                Plan::Split {
                    pieces,
                    held: newest,
                    wide: first_wide,
                } => {
                    if let Some(newest) = newest {
                        // Read after the older pieces: from this page while few are held
                        // and the budget has room for it.
                        stack.push(newest);
                        self.hold(&mut held, newest, page);
                    }
                    wide.extend(pieces[..first_wide].iter().copied());
                    stack.extend(pieces.into_iter().rev());
                    continue;
                }
                Plan::Overflow => self.overflow(slice, page).await?,
            };
            let inside = records.len() - follow::outside(slice, &records);
            last = Some((slice, inside));
            match self.deliver(slice, &records, cp, tx).await? {
                None => return Ok(Read::Over),
                Some(s) => sent |= s,
            }
        }
        Ok(Read::Done { sent, whole })
    }

    /// How many slices to keep fetched ahead now that the reader comes to `slice`
    /// ([`Depth`]): fewer while their pages wait landed for a slow reader, more when the
    /// reader finds its page still in flight.
    fn depth_for(
        &mut self,
        slice: Slice,
        ahead: &HashMap<Slice, Fetch>,
        held: &HashMap<Slice, (PageView, Reserved)>,
    ) -> usize {
        let next_landed = if held.contains_key(&slice) {
            Some(true)
        } else {
            ahead.get(&slice).map(|f| f.0.is_finished())
        };
        let landed = ahead.values().filter(|f| f.0.is_finished()).count();
        self.depth.step(self.shared.prefetch, next_landed, landed)
    }

    /// Fetches the next unread slices of `stack` (its top first) ahead, up to `depth`
    /// ([`Follower::depth_for`]): cut to fill most of a page each, most of them are read
    /// once. Past the first few only while the look-ahead budget has room, and past a
    /// slice still to be cut into many (`wide`; `cutting`: the one being read is) only
    /// others like it: what follows is read after their pieces, but their pages say where
    /// those pieces lie.
    fn look_ahead(
        &self,
        stack: &[Slice],
        ahead: &mut HashMap<Slice, Fetch>,
        held: &HashMap<Slice, (PageView, Reserved)>,
        wide: &HashSet<Slice>,
        cutting: bool,
        depth: usize,
    ) {
        let mut past_wide = cutting;
        let unread = stack.iter().rev().filter(|s| !held.contains_key(s));
        for (i, s) in unread.take(depth).enumerate() {
            let is_wide = wide.contains(s);
            if past_wide && !is_wide {
                break;
            }
            past_wide |= is_wide;
            match ahead.get(s) {
                Some(f) => f.1.set(i + 1),
                None => {
                    let Some(room) = self.shared.lookahead.room(i, &self.sizes) else {
                        break;
                    };
                    let mut fetch = self.fetch_ahead(*s, i + 1);
                    fetch.2 = Some(room);
                    ahead.insert(*s, fetch);
                }
            }
        }
    }

    /// Cuts the wide slices within `depth` slices whose pages landed, in place,
    /// before the reader comes to them: the look-ahead then runs on into their pieces
    /// instead of stopping at them. Stops at the first one still in flight, or whose
    /// page cannot be judged without another request (the reader does that).
    async fn expand(
        &self,
        stack: &mut Vec<Slice>,
        ahead: &mut HashMap<Slice, Fetch>,
        held: &mut HashMap<Slice, (PageView, Reserved)>,
        wide: &mut HashSet<Slice>,
        depth: usize,
    ) {
        let (mut at, mut unread) = (stack.len(), 0);
        while at > 0 && unread < depth {
            at -= 1;
            let slice = stack[at];
            if held.contains_key(&slice) {
                continue;
            }
            unread += 1;
            if !wide.contains(&slice) {
                continue;
            }
            if !ahead.get(&slice).is_some_and(|f| f.0.is_finished()) {
                return;
            }
            let Some(mut fetch) = ahead.remove(&slice) else {
                return;
            };
            let (urgency, room) = (fetch.1.clone(), fetch.2.take());
            // Finished: this returns at once. A failure is left to the reader, which asks
            // again.
            let Ok(page) = join(fetch).await else {
                return;
            };
            let Ok(Some(complete)) = self.length_says(slice, &page) else {
                ahead.insert(slice, Fetch::landed(page, urgency, room));
                return;
            };
            let grain = self.listing().grain;
            // What precedes a slice ahead of the reader is not read yet.
            match follow::plan(slice, &page.records, complete, grain, Before::Unknown) {
                Plan::Split {
                    pieces,
                    held: newest,
                    wide: first_wide,
                } => {
                    wide.remove(&slice);
                    wide.extend(pieces[..first_wide].iter().copied());
                    let mut replaced: Vec<Slice> = pieces.into_iter().rev().collect();
                    if let Some(newest) = newest {
                        replaced.insert(0, newest);
                        self.hold(held, newest, page);
                    }
                    // The walk goes on from the oldest piece, now on top of the rest.
                    let added = replaced.len();
                    stack.splice(at..=at, replaced);
                    at += added;
                    unread -= 1;
                }
                // Read whole by the reader, from this page: no longer in the way.
                Plan::Whole => {
                    wide.remove(&slice);
                    ahead.insert(slice, Fetch::landed(page, urgency, room));
                }
                Plan::Overflow => {
                    ahead.insert(slice, Fetch::landed(page, urgency, room));
                    return;
                }
            }
        }
    }

    /// Whether `page`, the newest of `slice`, holds the whole slice: judged from the page
    /// lengths Confluence returned (never from the `limit` it echoes), and when they cannot
    /// tell, from a read at the page's end.
    async fn whole(&self, slice: Slice, page: &PageView) -> Result<bool, GatewayError> {
        if let Some(whole) = self.length_says(slice, page)? {
            return Ok(whole);
        }
        METRICS.follow_confirm_reads.inc();
        let n = page.records.len();
        let start = i32::try_from(n).unwrap_or(i32::MAX);
        let next = join(self.fetch(slice, start, Ask::Cached)).await?;
        self.judge(slice, &next)?;
        let beyond = !next.records.is_empty();
        if beyond {
            self.listing().cut(n);
        }
        Ok(!beyond)
    }

    /// Whether `page`, the newest of `slice`, holds the whole slice, as far as its
    /// length tells (`judge`) or its reaching past the slice's start does; `None` when
    /// only a read at the page's end can tell.
    fn length_says(&self, slice: Slice, page: &PageView) -> Result<Option<bool>, GatewayError> {
        Ok(match self.judge(slice, page)? {
            Length::Whole => Some(true),
            Length::Cut => Some(false),
            // Its length aside, a page reaching past the slice's start holds all of it.
            Length::Unsure if follow::reaches_before(slice, &page.records) => Some(true),
            Length::Unsure => None,
        })
    }

    /// Keeps `page` to deliver `newest` (the newest part of its range) from when its turn
    /// comes, while few pages are held and the look-ahead budget has room for it; past
    /// that, `newest` is asked for again then.
    fn hold(&self, held: &mut HashMap<Slice, (PageView, Reserved)>, newest: Slice, page: PageView) {
        if held.len() < MAX_HELD_PAGES
            && let Some(room) = self.shared.lookahead.reserve(&self.sizes)
        {
            held.insert(newest, (page, room));
        }
    }

    /// What a page's length proves, learning from it; FAILED_PRECONDITION for a page
    /// that shows Confluence ignores the range.
    fn judge(&self, slice: Slice, page: &PageView) -> Result<Length, GatewayError> {
        follow::check_bounds(slice, &page.records).map_err(ignored_range)?;
        let n = page.records.len();
        let echo = usize::try_from(page.limit).unwrap_or(0);
        let mut listing = self.listing();
        let judged = listing.judge(n, ASKED, echo);
        listing.served(n);
        listing.bounds(slice, &page.records);
        Ok(judged)
    }

    fn listing(&self) -> std::sync::MutexGuard<'_, Listing> {
        self.shared
            .listing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every record of a slice that cutting cannot narrow, paged by offset: one
    /// millisecond holding more than a page, or a slice whose first page is all records
    /// after it (bounds rounded upstream).
    async fn overflow(
        &mut self,
        slice: Slice,
        first: PageView,
    ) -> Result<Vec<Bytes>, GatewayError> {
        if slice.from == slice.to {
            METRICS.follow_tie_overflows.inc();
            tracing::warn!(
                at = slice.from,
                "a millisecond holds more records than a page: if Confluence reorders them \
                 between requests, some of them can be missed or repeated"
            );
        }
        let mut records = first.records;
        for _ in 0..MAX_OVERFLOW_PAGES {
            let start = i32::try_from(records.len()).unwrap_or(i32::MAX);
            let page = join(self.fetch(slice, start, Ask::Cached)).await?;
            // Unsure is no end: the next offset is the confirming read.
            let length = self.judge(slice, &page)?;
            records.extend(page.records);
            if length == Length::Whole {
                return Ok(records);
            }
        }
        Err(GatewayError::Internal(format!(
            "Confluence keeps listing records at one millisecond past {MAX_OVERFLOW_PAGES} pages"
        )))
    }

    /// Sends the records of a whole slice (newest first) that `cp` has not had, in
    /// messages; `None` when the call is over.
    async fn deliver(
        &mut self,
        slice: Slice,
        records: &[Bytes],
        cp: &mut Checkpoint,
        tx: &mpsc::Sender<Item>,
    ) -> Result<Option<bool>, GatewayError> {
        let outside = follow::outside(slice, records);
        if outside > 0 {
            METRICS.follow_out_of_range_records.inc_by(outside as u64);
        }
        let fresh = follow::undelivered(cp, slice, records);
        let mut sent = false;
        let mut rest = &fresh[..];
        while !rest.is_empty() {
            let mut take = 0;
            let mut bytes = 0;
            while take < rest.len() && take < MAX_MESSAGE_RECORDS {
                let len = records[rest[take]].len();
                if take > 0 && bytes + len > MAX_MESSAGE_BYTES {
                    break;
                }
                bytes += len;
                take += 1;
            }
            if let Some(left) = self.remaining() {
                take = take.min(left);
            }
            let part: Vec<&Bytes> = rest[..take].iter().map(|&i| &records[i]).collect();
            rest = &rest[take..];
            *cp = if rest.is_empty() {
                follow::past(cp, slice.to)
            } else {
                follow::advance(cp, &part)
            };
            self.stand(cp);
            let token =
                checkpoint::encode(&self.shared.tokens, self.req.search_string.as_deref(), cp);
            let owned: Vec<Bytes> = part.into_iter().cloned().collect();
            METRICS.follow_records.inc_by(owned.len() as u64);
            if !self.send(tx, wire::stream_message(&owned, &token)).await? {
                return Ok(None);
            }
            sent = true;
            if self.count(owned.len()) {
                return Ok(None);
            }
            self.stop_if_stopping()?;
        }
        if fresh.is_empty() {
            *cp = follow::past(cp, slice.to);
        }
        Ok(Some(sent))
    }

    /// Reads `slice`'s range again past the cache and counts records that were not there
    /// when it was first read: they became visible more than `lag` after creation.
    async fn check_late(&self, slice: Slice, seen: usize) {
        if !self.shared.late.claim(&self.req.search_string, slice) {
            return;
        }
        let Ok(page) = join(self.fetch(slice, 0, Ask::Fresh)).await else {
            return;
        };
        // Only a page that proves itself whole is counted; a count is not worth a request.
        if !matches!(self.judge(slice, &page), Ok(Length::Whole)) {
            return;
        }
        let n = page.records.len() - follow::outside(slice, &page.records);
        if n > seen {
            let late = (n - seen) as u64;
            METRICS.follow_late_records.inc_by(late);
            tracing::warn!(
                late,
                from = slice.from,
                to = slice.to,
                lag = ?self.req.lag,
                "records became visible upstream later than the followers' lag and cannot \
                 be delivered in order: raise lag"
            );
        }
    }

    /// Records still to deliver, if `max_records` was given.
    fn remaining(&self) -> Option<usize> {
        self.remaining
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Counts `n` records delivered; true when `max_records` is reached.
    fn count(&mut self, n: usize) -> bool {
        match self.remaining.as_mut() {
            Some(left) => {
                *left = left.saturating_sub(n as u64);
                *left == 0
            }
            None => false,
        }
    }

    /// Sends a message; false when the caller went away, STREAM_IDLE when it took
    /// nothing for the idle time-out.
    async fn send(&self, tx: &mpsc::Sender<Item>, message: Bytes) -> Result<bool, GatewayError> {
        let idle = self.req.idle_timeout;
        match tokio::time::timeout(idle, tx.send(Ok(message))).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(_)) => Ok(false),
            Err(_) => Err(GatewayError::StreamIdle { after: idle }),
        }
    }

    /// Fetches the first page of `slice`, needed `depth` ranges from now.
    fn fetch_ahead(&self, slice: Slice, depth: usize) -> Fetch {
        self.fetch_at(slice, 0, Ask::Cached, Urgency::ahead(depth))
    }

    /// Fetches the page of `slice` at `start`, needed now (0 ahead: unlike
    /// `Urgency::now`, the fetches made after it can wait for it to enter).
    fn fetch(&self, slice: Slice, start: i32, ask: Ask) -> Fetch {
        self.fetch_at(slice, start, ask, Urgency::ahead(0))
    }

    /// Fetches the page of `slice` at `start`, after the fetch made before it entered
    /// the scheduler (`Urgency::after`).
    fn fetch_at(&self, slice: Slice, start: i32, ask: Ask, urgency: Urgency) -> Fetch {
        let turn = self.last.next(&urgency);
        let pages = self.pages.clone();
        let req = PageRequest {
            query: PageQuery {
                span: Span::Range {
                    from: slice.from,
                    to: slice.to,
                },
                search_string: self.req.search_string.clone(),
                start,
                limit: PageQuery::MAX_LIMIT,
            },
            credential: self.req.credential.clone(),
            refresh: ask == Ask::Fresh,
            unsettled: ask == Ask::Unsettled,
            deadline: self.req.deadline,
            persistent: true,
            caller: self.req.caller.clone(),
            urgency: urgency.clone(),
            metered: false,
            ahead: None,
        };
        let sizes = self.sizes.clone();
        let task = async move {
            // Held to the end: its drop enters the request.
            let turn = turn;
            turn.wait().await;
            let page = pages.page(req).await?;
            sizes.landed(page.len());
            stream::decode(&page)
        };
        Fetch(tokio::spawn(task.in_current_span()), urgency, None)
    }
}

/// The error that ends a follower whose Confluence ignores the range asked.
fn ignored_range(e: OutOfBounds) -> GatewayError {
    GatewayError::UpstreamContract(format!(
        "Confluence ignores the date range of /rest/api/audit: asked for startDate {} to \
         endDate {} (epoch ms), it listed a record dated {}; following needs a server that \
         keeps to the range (to within {} ms)",
        e.slice.from,
        e.slice.to,
        e.date,
        follow::BOUND_SLACK_MS
    ))
}

/// The range a tick reads up to `edge`, if it has one: from the grid line at or before
/// `cp.next`, so that a follower that started between two lines asks for the same range
/// as the others (what lies before `next` is filtered out by the checkpoint).
fn tick_range(cp: &Checkpoint, edge: i64, poll: i64) -> Option<Slice> {
    (edge >= cp.next).then(|| Slice::new(cp.next.div_euclid(poll) * poll, edge))
}

/// The page a fetch brings.
async fn join(mut fetch: Fetch) -> Result<PageView, GatewayError> {
    (&mut fetch.0)
        .await
        .map_err(|e| GatewayError::Internal(format!("page fetch task failed: {e}")))?
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::{
        app::model::{Bounds, Echo, Misbehaviour, Model, ModelSource, check_delivery},
        pb,
    };

    /// The model's now when a test starts, epoch ms.
    const BASE: i64 = 1_800_000_000_000;
    const POLL: Duration = Duration::from_secs(1);
    const LAG: Duration = Duration::from_secs(2);

    fn key() -> Arc<TokenKey> {
        Arc::new(TokenKey::new(b"test"))
    }

    /// `BASE` plus the time passed on tokio's (paused) clock since `started`.
    fn clock(started: tokio::time::Instant) -> Clock {
        Arc::new(move || BASE + millis(started.elapsed()))
    }

    /// A runtime on tokio's paused clock: model latencies pass at once, in order.
    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime")
    }

    /// How a follow through the model ended.
    struct Followed {
        delivered: Vec<(String, i64)>,
        checkpoint: Checkpoint,
        end: Option<GatewayError>,
    }

    /// A request to follow from `checkpoint`, polling every `POLL` with `LAG`.
    fn request(checkpoint: Checkpoint, max_records: Option<u64>) -> FollowRequest {
        FollowRequest {
            search_string: None,
            checkpoint,
            poll: POLL,
            lag: LAG,
            max_records,
            until: None,
            credential: None,
            caller: Caller::anonymous(),
            deadline: None,
            idle_timeout: Duration::from_secs(3600),
        }
    }

    /// What a gateway's followers share, reading `prefetch` slices ahead within a
    /// look-ahead budget of `lookahead` bytes.
    fn shared(
        (tokens, listing, clock): (Arc<TokenKey>, Arc<Mutex<Listing>>, Clock),
        prefetch: usize,
        lookahead: u64,
    ) -> Shared {
        Shared {
            tokens,
            late: Arc::default(),
            stopping: Shutdown::never(),
            prefetch,
            lookahead: Arc::new(LookAhead::new(lookahead)),
            tick_spread: 0.0,
            listing,
            clock,
            offset: Arc::default(),
            positions: Arc::default(),
        }
    }

    /// Follows the model from `since` as a shipper would, until its checkpoint passes
    /// `until`: on an error or at `max_records`, a new call resumes from the last
    /// checkpoint. Every call shares one gateway's `listing`, as followers of one
    /// gateway do.
    async fn follow_through(
        source: ModelSource,
        clock: Clock,
        (since, until): (i64, i64),
        max_records: Option<u64>,
        lookahead: u64,
    ) -> Result<Followed, GatewayError> {
        let key = key();
        let listing = Arc::new(Mutex::new(Listing::default()));
        let mut cp = Checkpoint::at(since);
        let mut delivered = Vec::new();
        for _ in 0..500 {
            let req = request(cp.clone(), max_records);
            let shared = shared((key.clone(), listing.clone(), clock.clone()), 3, lookahead);
            let mut rx = start(source.clone(), req, shared, ());
            let end = loop {
                match rx.recv().await {
                    None => break None,
                    Some(Err(e)) => break Some(e),
                    Some(Ok(message)) => {
                        let message = pb::FollowResponse::decode(message).map_err(|e| {
                            GatewayError::Internal(format!("a follow message: {e}"))
                        })?;
                        delivered.extend(
                            message
                                .records
                                .into_iter()
                                .map(|r| (r.summary, r.creation_date)),
                        );
                        cp = checkpoint::decode(&key, None, &message.checkpoint)
                            .map_err(|e| GatewayError::Internal(e.to_string()))?;
                        if cp.next > until {
                            return Ok(Followed {
                                delivered,
                                checkpoint: cp,
                                end: None,
                            });
                        }
                    }
                }
            };
            match end {
                Some(e @ GatewayError::Internal(_)) => return Err(e),
                Some(e @ GatewayError::UpstreamContract(_)) => {
                    return Ok(Followed {
                        delivered,
                        checkpoint: cp,
                        end: Some(e),
                    });
                }
                // A fault after the gateway's retries, or `max_records`: resume.
                _ => continue,
            }
        }
        Err(GatewayError::Internal(
            "the follower did not get there within 500 calls".into(),
        ))
    }

    fn misbehaviour() -> impl Strategy<Value = Misbehaviour> {
        (
            (1usize..=6, 0.0..0.3f64, 0usize..=2, 0usize..=1),
            (
                prop::option::of(10usize..=40),
                prop::option::of(5usize..=40),
                prop::sample::select(vec![Echo::Honest, Echo::Asked, Echo::Missing, Echo::Mixed]),
            ),
            (
                0.0..0.1f64,
                prop::sample::select(vec![
                    Bounds::Exact,
                    Bounds::Exact,
                    Bounds::Seconds,
                    Bounds::Seconds,
                    Bounds::Ignored,
                ]),
                0.0..0.5f64,
            ),
        )
            .prop_map(
                |(
                    (ties, identical, inserts, deletes),
                    (cap, cap_rises_every, echo),
                    (faults, bounds, late),
                )| Misbehaviour {
                    // The guarantee's assumption (audit/follow.rs): a grain cell of the bounds
                    // (a millisecond, or a second where they are rounded) fits in a page:
                    // the log's records come at least 400 ms apart, arrivals at most
                    // `inserts` per 250 ms, late ones from the next second too.
                    cap: match bounds {
                        Bounds::Seconds => cap.map(|c| c.max(3 * ties + 8 * inserts + 4)),
                        _ => cap,
                    },
                    ties,
                    identical,
                    inserts,
                    deletes,
                    cap_rises_every,
                    echo,
                    faults,
                    bounds,
                    late,
                    // Late, but within the follower's lag.
                    late_by: millis(LAG) / 2,
                    ..Misbehaviour::polite()
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(300)
        ))]

        /// Whatever the schedule: a follower backfilling from `since` and then tailing the
        /// log delivers every record from `since` up to its last checkpoint that is still in
        /// the log, never one more often than it existed, oldest first across every cut and
        /// resume; a server that ignores the range ends the call with FAILED_PRECONDITION
        /// after a bounded number of requests, having delivered nothing twice.
        #[test]
        fn a_follower_delivers_every_record_once_oldest_first(
            how in misbehaviour(),
            records in 0usize..150,
            back in prop_oneof![0i64..70_000, 70_000i64..400_000],
            max_records in prop::option::of(1u64..60),
            // Look-ahead as deep as the prefetch, only the free pages, or in between.
            lookahead in prop_oneof![Just(0u64), 0u64..8192, Just(u64::MAX)],
            seed in any::<u64>(),
        ) {
            let runtime = paused_runtime();
            let ignored = how.bounds == Bounds::Ignored;
            let (model, followed) = runtime.block_on(async {
                let clock = clock(tokio::time::Instant::now());
                let model = Model::new(records, BASE - 60_000, (400, 800), how, seed)
                    .with_clock(clock.clone())
                    .with_latency(3);
                let model = Arc::new(Mutex::new(model));
                let source = ModelSource(model.clone());
                let followed =
                    follow_through(source, clock, (BASE - back, BASE + 6_000), max_records, lookahead)
                        .await;
                (model, followed)
            });
            let followed = followed.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let model = model.lock().expect("model");
            if let Some(end) = &followed.end {
                prop_assert!(ignored, "ended with {end:?}");
            }
            prop_assert!(model.requests < 3000, "{} requests", model.requests);
            let (since, next) = (BASE - back, followed.checkpoint.next);
            check_delivery(&model, &followed.delivered, false, |d| since <= d && d < next)?;
        }
    }

    /// A polite log of `records` records at `cap` a page (~1 s apart, from `first` on,
    /// seed `seed`), answered in 100 ms, followed from `since` to 10 s before `BASE` at
    /// the default look-ahead: what was followed, checked delivered exactly once, the
    /// model, and how long it took on the paused clock.
    fn backfill(
        (records, cap, first, seed): (usize, usize, i64, u64),
        since: i64,
    ) -> (Followed, Arc<Mutex<Model>>, Duration) {
        let runtime = paused_runtime();
        runtime.block_on(async {
            let clock = clock(tokio::time::Instant::now());
            let how = Misbehaviour {
                cap: Some(cap),
                ..Misbehaviour::polite()
            };
            let model = Model::new(records, first, (900, 1_100), how, seed)
                .with_clock(clock.clone())
                .with_latency(100);
            let model = Arc::new(Mutex::new(model));
            let started = tokio::time::Instant::now();
            let followed = follow_through(
                ModelSource(model.clone()),
                clock,
                (since, BASE - 10_000),
                None,
                u64::MAX,
            )
            .await
            .expect("followed");
            let took = started.elapsed();
            let next = followed.checkpoint.next;
            check_delivery(
                &model.lock().expect("model"),
                &followed.delivered,
                false,
                |d| d < next,
            )
            .expect("exactly once");
            (followed, model, took)
        })
    }

    #[test]
    fn a_backfill_from_before_the_log_asks_few_empty_ranges() {
        // 10,000 records at 10 a page from long before the log's first record: everything
        // before it is empty. The chunk that holds the first record is cut by the density
        // of its own newest page; cut evenly, every piece between the chunk's start and the
        // first record comes back empty. After the empty range before it, its pieces grow
        // away from its records instead, and few come back empty.
        let (_, model, _) = backfill((10_000, 10, BASE - 10_000_000, 5), BASE - 100_000_000);
        let model = model.lock().expect("model");
        // The model never deletes here: its oldest record is the log's first.
        let first = model.log.last().map_or(i64::MAX, |r| r.creation_date);
        let empty = model.ranges.iter().filter(|&&(_, to)| to < first).count();
        // The range before the chunks and a few geometric pieces (16 with the chunk cut
        // evenly).
        assert!(empty <= 4, "{empty} ranges asked before the first record");
    }

    #[test]
    fn a_backfill_reads_its_look_ahead_at_once() {
        // A log of 30 pages or more (a cap of 100 a page) at 100 ms a request: read one
        // page at a time it takes a round trip per request; with `prefetch` 3 in flight,
        // about a third of that.
        let (followed, model, took) = backfill((3_000, 100, BASE - 3_000_000, 3), BASE - 3_000_000);
        let model = model.lock().expect("model");
        assert!(
            followed.delivered.len() > 2_500,
            "{}",
            followed.delivered.len()
        );
        // 3,000 records at 100 a page are 30 pages; cutting the range into pieces that
        // fit one costs a few more. Each is asked once (a fetch dropped and asked again
        // would count twice), and three at a time they take about a third of the
        // round trips.
        assert!(
            model.requests <= 40,
            "{} requests for 30 pages",
            model.requests
        );
        let round_trips = took.as_millis() / 100;
        assert!(
            round_trips <= 12,
            "{took:?} for {} requests: the look-ahead is not read at once",
            model.requests
        );
    }

    #[test]
    fn a_long_backfill_finds_its_oldest_records_in_a_few_round_trips() {
        // 10,000 records at 10 a page, from long before the log's oldest record: the first
        // page's density cuts 64 pieces (~580 records' worth) off the head, and what lies
        // before them is ~17 times as long. Cut one level a round trip, the oldest records
        // come after a dozen round trips; with the chunks before the pieces fetched at
        // once, after a few.
        let runtime = paused_runtime();
        runtime.block_on(async {
            let clock = clock(tokio::time::Instant::now());
            let how = Misbehaviour {
                cap: Some(10),
                ..Misbehaviour::polite()
            };
            let model = Model::new(10_000, BASE - 10_000_000, (900, 1_100), how, 5)
                .with_clock(clock.clone())
                .with_latency(100);
            let model = Arc::new(Mutex::new(model));
            let req = request(Checkpoint::at(BASE - 100_000_000), Some(10));
            let shared = shared((key(), Arc::default(), clock.clone()), 32, u64::MAX);
            let started = tokio::time::Instant::now();
            let mut rx = start(ModelSource(model.clone()), req, shared, ());
            let first = loop {
                let message = rx.recv().await.expect("a message").expect("no error");
                let message = pb::FollowResponse::decode(message).expect("a follow message");
                if !message.records.is_empty() {
                    break message.records[0].creation_date;
                }
            };
            let model = model.lock().expect("model");
            let round_trips = started.elapsed().as_millis() / 100;
            assert!(
                first < BASE - 9_900_000,
                "the first record delivered ({first}) is not among the oldest"
            );
            assert!(
                round_trips <= 6,
                "{round_trips} round trips before the oldest records ({} requests)",
                model.requests
            );
        });
    }

    #[test]
    fn a_range_listing_capped_below_its_echoed_limit_loses_nothing() {
        // The case that lost 2,591 of 2,920 records: a cap of 100 echoing the 1000 asked.
        let runtime = paused_runtime();
        runtime.block_on(async {
            let clock = clock(tokio::time::Instant::now());
            let how = Misbehaviour {
                cap: Some(100),
                echo: Echo::Asked,
                ..Misbehaviour::polite()
            };
            let model =
                Model::new(2_920, BASE - 2_400_000, (1, 1_600), how, 7).with_clock(clock.clone());
            let model = Arc::new(Mutex::new(model));
            let followed = follow_through(
                ModelSource(model.clone()),
                clock,
                (BASE - 2_400_000, BASE),
                None,
                u64::MAX,
            )
            .await
            .expect("followed");
            assert_eq!(followed.delivered.len(), 2_920);
            let model = model.lock().expect("model");
            check_delivery(&model, &followed.delivered, false, |_| true).expect("exactly once");
        });
    }
}
