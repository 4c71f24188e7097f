//! `StreamSince`: a whole window as ordered messages, one per upstream page, fetched a
//! bounded number of pages ahead and placed exactly once by `audit::anchor`.
//!
//! A producer task walks the window and hands messages to a channel of one slot, so a
//! slow caller holds it back (backpressure) and memory stays at the prefetch window
//! whatever the window's size. When the caller goes away the channel closes, the
//! producer returns and starts nothing more (requests already sent to Confluence finish
//! within the upstream limits and fill the cache, see `src/cache/memory.rs`). Should the
//! producer panic, the stream ends with INTERNAL rather than looking complete. A caller
//! that keeps the stream open but reads nothing for `--stream-idle-timeout` ends it too:
//! the producer returns (its prefetches dropped, its `--max-streams` slot given back) and
//! the caller, should it read again, gets what was queued and then `STREAM_IDLE`.
//!
//! Every decision about records is `audit::anchor`'s: which pages cover the stream's
//! boundary, what they deliver, where the next page starts. This module only chooses
//! which offsets to fetch: a pipeline of predicted pages while they keep covering, a page
//! fetched again past the cache when one does not, and a search by date when the
//! boundary is far from where it was.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{
        Arc, PoisonError, Weak,
        atomic::{AtomicI64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
};
use tokio_stream::Stream;
use tracing::Instrument;

use crate::{
    app::{
        AheadOf, PageRequest, PageService,
        lookahead::{Depth, LookAhead, PageSize, Reserved},
    },
    audit::{
        PageQuery, Span,
        anchor::{self, Anchored, Cursor, Delivery, Position, Window},
        resume::{self, TokenKey},
    },
    callers::Caller,
    credential::Credential,
    error::{GatewayError, within_deadline},
    metrics::METRICS,
    pb::wire::{self, PageView},
    shutdown::Shutdown,
    upstream::fair::{InOrder, Urgency},
};

/// Records each page overlaps the one before it by, when pages are predicted ahead: a
/// predicted page covers the boundary unless the tie group at the end of the page before
/// it holds more records than this.
const OVERLAP: i64 = 8;
/// Most probes spent locating a boundary (a binary search over int32 offsets needs 32).
const MAX_PROBES: u32 = 64;
/// Most requests in a row that deliver nothing: paging never goes on forever, whatever
/// the server answers.
const MAX_IDLE_REQUESTS: u32 = 200;

/// How long what one stream learnt of where its window ends guides the others: records
/// arriving meanwhile move the end further on, and a page fetched past an old end would
/// be a page needed.
const END_KNOWN_FOR: Duration = Duration::from_secs(30);

/// What the streams of each window have learnt of where it ends, shared while one of
/// them runs: a stream whose page lands short tells the others, which drop their
/// look-ahead past that end at once, before its requests are sent (a load nobody waits
/// for is dropped, `src/cache/memory.rs`). Look-ahead only: a page a stream needs is
/// fetched whatever others learnt.
#[derive(Debug, Default)]
pub(crate) struct WindowEnds(std::sync::Mutex<HashMap<EndKey, Weak<WindowEnd>>>);

/// A window as seen by one credential (a digest of it: the map holds no secret).
type EndKey = (Option<[u8; 32]>, Window);

/// Where one window ends, as last learnt.
#[derive(Debug, Default)]
pub(crate) struct WindowEnd {
    /// The offset past its last record, and when that was learnt.
    end: std::sync::Mutex<Option<(i64, Instant)>>,
    /// Told when it is learnt.
    changed: Notify,
}

impl WindowEnds {
    /// The shared end of `window` as `credential` reads it.
    fn of(&self, credential: Option<&Credential>, window: &Window) -> Arc<WindowEnd> {
        let who = credential.map(|c| {
            let digest = ring::digest::digest(&ring::digest::SHA256, c.expose().as_bytes());
            let mut key = [0; 32];
            key.copy_from_slice(digest.as_ref());
            key
        });
        let mut ends = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (who, window.clone());
        if let Some(end) = ends.get(&key).and_then(Weak::upgrade) {
            return end;
        }
        if ends.len() >= 1024 {
            ends.retain(|_, end| end.strong_count() > 0);
        }
        let end = Arc::new(WindowEnd::default());
        ends.insert(key, Arc::downgrade(&end));
        end
    }
}

impl WindowEnd {
    /// The end, if learnt lately.
    fn known(&self) -> Option<i64> {
        let end = self.end.lock().unwrap_or_else(PoisonError::into_inner);
        end.filter(|(_, at)| at.elapsed() < END_KNOWN_FOR)
            .map(|(offset, _)| offset)
    }

    /// A page at `start` of `n` records landed: shorter than the longest page of the
    /// stream (`longest`, 0 before its first), it reaches the window's end. Told as it
    /// lands, the look-ahead past it (this stream's and its window's other streams')
    /// goes before its requests take a slot.
    fn landed(&self, start: i64, n: i64, longest: &AtomicI64) {
        let longest = longest.load(Ordering::Acquire);
        if longest > 0 && n < longest {
            self.learn(start, n);
        }
    }

    /// A page at `start` holding `n` records reached the window's end: the end is at
    /// `start + n` or before (an empty page far past it says less than the short page
    /// that holds it, so the nearest end known lately stands). The others are told only
    /// of news, so streams that learn the same end do not wake each other.
    fn learn(&self, start: i64, n: i64) {
        let offset = start + n;
        let mut end = self.end.lock().unwrap_or_else(PoisonError::into_inner);
        let news = match *end {
            Some((known, at)) if at.elapsed() < END_KNOWN_FOR => offset < known,
            _ => true,
        };
        if news || end.is_some_and(|(known, _)| known == offset) {
            *end = Some((offset, Instant::now()));
        }
        drop(end);
        if news {
            self.changed.notify_waiters();
        }
    }
}

/// One validated `StreamSince` call.
#[derive(Clone, Debug)]
pub(crate) struct StreamRequest {
    /// The window's filters.
    pub window: Window,
    /// Records per message (1..=1000); pages ask for a few more, the overlap, but never
    /// more than Confluence's largest `limit`.
    pub page_size: i32,
    /// Stop after this many records.
    pub max_records: Option<u64>,
    /// Where to begin: the window's start, or a resume token's position.
    pub cursor: Cursor,
    /// Whom to fetch as.
    pub credential: Option<Credential>,
    /// Who asks (its fair share of Confluence's request slots).
    pub caller: Caller,
    /// Bypass cached pages.
    pub refresh: bool,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// The stream ends when its caller takes nothing for this long.
    pub idle_timeout: Duration,
    /// Turns true when the gateway shuts down: the stream ends after its last complete
    /// message with UNAVAILABLE, so a proxy in front never sees the connection cut
    /// under it and the caller resumes elsewhere.
    pub stopping: Shutdown,
}

/// What the stream yields: encoded `StreamSinceResponse`s, then at most one error.
pub(crate) type Item = Result<Bytes, GatewayError>;

/// Where the producer gets its pages: encoded `GetSinceResponse`s.
pub(crate) trait PageSource: Clone + Send + Sync + 'static {
    /// The page `req` asks for.
    fn page(&self, req: PageRequest) -> impl Future<Output = Result<Bytes, GatewayError>> + Send;
}

impl PageSource for PageService {
    fn page(&self, req: PageRequest) -> impl Future<Output = Result<Bytes, GatewayError>> + Send {
        PageService::page(self, req)
    }
}

/// The messages of a stream, then at most one error.
pub(crate) struct Messages {
    rx: mpsc::Receiver<Item>,
    /// The error of a stream its caller left idle: the channel's one slot was full, so
    /// it comes this way, after what the channel still holds.
    idle: Option<oneshot::Receiver<GatewayError>>,
}

impl Messages {
    /// The next item, if any.
    #[cfg(test)]
    pub(crate) async fn recv(&mut self) -> Option<Item> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Messages {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if let Some(item) = ready!(self.rx.poll_recv(cx)) {
            return Poll::Ready(Some(item));
        }
        let Some(idle) = self.idle.as_mut() else {
            return Poll::Ready(None);
        };
        let ended = ready!(Pin::new(idle).poll(cx));
        self.idle = None;
        Poll::Ready(ended.ok().map(Err))
    }
}

/// Starts the producer; the stream yields the messages, then at most one error. `held`
/// (e.g. the stream's `--max-streams` slot) is dropped when the producer returns: when
/// the window is done, the caller went away or left the stream idle.
pub(crate) fn start<P: PageSource>(
    pages: P,
    req: StreamRequest,
    (prefetch, ends, budget): (usize, &WindowEnds, &Arc<LookAhead>),
    tokens: Arc<TokenKey>,
    held: impl Send + 'static,
) -> Messages {
    METRICS.streams_started.inc();
    let end = ends.of(req.credential.as_ref(), &req.window);
    let producer = Producer {
        pages,
        req,
        prefetch: prefetch.max(1),
        tokens,
        landed: Arc::default(),
        end,
        budget: budget.clone(),
        sizes: Arc::default(),
        longest: Arc::default(),
        last: InOrder::default(),
    };
    supervise("StreamSince", held, |tx, idle| producer.produce(tx, idle))
}

/// Runs a producer as a task of its own, holding `held` until it returns, and gives its
/// messages. The producer sends its messages to the channel (one slot: a slow caller
/// holds it back) and an error its caller was too idle to take to the oneshot.
pub(crate) fn supervise<F>(
    what: &'static str,
    held: impl Send + 'static,
    produce: impl FnOnce(mpsc::Sender<Item>, oneshot::Sender<GatewayError>) -> F,
) -> Messages
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    let (idle_tx, idle_rx) = oneshot::channel();
    let produce = produce(tx.clone(), idle_tx);
    // In the call's span (src/grpc/observe.rs), as are the fetches it spawns.
    let producing = tokio::spawn(
        async move {
            let _held = held;
            produce.await
        }
        .in_current_span(),
    );
    // A panic would only close the channel, and the caller would take the messages so far
    // for the whole answer: end it with an error instead.
    tokio::spawn(async move {
        if let Err(e) = producing.await
            && e.is_panic()
        {
            tracing::error!(error = %e, call = what, "producer panicked");
            let failed = "the call failed; resume from the last token".to_owned();
            let _ = tx.send(Err(GatewayError::Internal(failed))).await;
        }
    });
    Messages {
        rx,
        idle: Some(idle_rx),
    }
}

/// Ends a producer with `result`: an error goes to the caller after what the channel
/// holds, or by the idle path when the caller takes nothing for `idle_timeout`.
pub(crate) async fn finish(
    result: Result<(), GatewayError>,
    tx: &mpsc::Sender<Item>,
    idle: oneshot::Sender<GatewayError>,
    idle_timeout: Duration,
) {
    // Logged where it becomes the caller's status (src/grpc/status.rs).
    match result {
        Ok(()) => {}
        // The channel is full and nobody takes from it: waiting to send would keep
        // this task, and its slot, for as long as the caller keeps the stream open.
        Err(e @ GatewayError::StreamIdle { .. }) => {
            let _ = idle.send(e);
        }
        // Likewise for a failure the caller does not come to read: it is told that
        // failure, not STREAM_IDLE, should it read again.
        Err(e) => match tokio::time::timeout(idle_timeout, tx.reserve()).await {
            Ok(Ok(slot)) => slot.send(Err(e)),
            Ok(Err(_)) => {}
            Err(_) => {
                let _ = idle.send(e);
            }
        },
    }
}

struct Producer<P> {
    pages: P,
    req: StreamRequest,
    prefetch: usize,
    tokens: Arc<TokenKey>,
    /// Told whenever a fetch lands (see `prune`).
    landed: Arc<Notify>,
    /// Where the window ends, as this stream and the others of its window learn it.
    end: Arc<WindowEnd>,
    /// The gateway's budget for pages read ahead, past the first few.
    budget: Arc<LookAhead>,
    /// How large this stream's pages are.
    sizes: Arc<PageSize>,
    /// The most records a page has held (`PageCap::largest`), for its fetches to tell a
    /// short page as it lands.
    longest: Arc<AtomicI64>,
    /// The order of its fetches: each asks for its page once the one made before it
    /// entered the scheduler, so they take free slots in order.
    last: InOrder,
}

/// A page being fetched; dropping it stops waiting for it. The load itself goes on while
/// another caller waits for it or once its request is sent, and is dropped otherwise
/// (`LoadProgress::sending` in src/cache/memory.rs): look-ahead past a window's end
/// costs Confluence nothing that has not left already.
struct Fetch {
    start: i64,
    /// Fetched past the cache, after everything the stream knows was seen.
    fresh: bool,
    task: JoinHandle<Result<PageView, GatewayError>>,
    /// How many records the page held, once it landed (-1 before).
    records: Arc<AtomicI64>,
    /// How far ahead of the reader it is, lowered as the reader comes closer: its
    /// request waits behind the caller's more urgent ones (`src/upstream/fair.rs`).
    urgency: Urgency,
    /// Its room in the look-ahead budget, held until the page is delivered or dropped.
    room: Option<Reserved>,
}

impl Fetch {
    /// The page's record count, once it landed.
    fn landed(&self) -> Option<i64> {
        Some(self.records.load(Ordering::Acquire)).filter(|n| *n >= 0)
    }
}

/// Drops the fetches queued after one that landed shorter than `largest`: that page
/// reaches the log's end, so the stream ends there or, should it not cover, clears the
/// pipeline; the pages after it are wasted requests either way. Tells `end` where the
/// window ends, and drops fetches past an end the window's other streams learnt.
/// Whether fetches may be added after it.
fn prune(ahead: &mut VecDeque<Fetch>, largest: i64, end: &WindowEnd) -> bool {
    if largest > 0
        && let Some(short) = ahead
            .iter()
            .position(|f| f.landed().is_some_and(|n| n < largest))
    {
        if let Some(n) = ahead[short].landed() {
            end.learn(ahead[short].start, n);
        }
        ahead.truncate(short + 1);
        return false;
    }
    match end.known() {
        Some(end) => {
            ahead.retain(|f| f.start < end);
            ahead.back().is_none_or(|f| f.start < end)
        }
        None => true,
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `load`, unless the window's end is learnt at or before `start` first: then it is
/// dropped (`Abandoned`), before its request takes a slot if it was still waiting for one
/// (a load nobody waits for is not sent, `src/cache/memory.rs`).
async fn unless_past_end(
    load: impl Future<Output = Result<Bytes, GatewayError>>,
    end: &WindowEnd,
    start: i64,
) -> Result<Bytes, GatewayError> {
    let mut load = std::pin::pin!(load);
    loop {
        // Made before the check: a change between the two still wakes it.
        let changed = end.changed.notified();
        if end.known().is_some_and(|end| start >= end) {
            return Err(GatewayError::Abandoned);
        }
        tokio::select! {
            page = &mut load => return page,
            () = changed => {}
        }
    }
}

/// The error of a stream whose pages keep bringing nothing new.
fn inconsistent_paging() -> GatewayError {
    GatewayError::Internal(format!(
        "{MAX_IDLE_REQUESTS} pages in a row brought nothing new; Confluence's answers do not \
         page consistently (resume from the last token)"
    ))
}

/// The error of a stream whose search for its boundary went on too long.
fn boundary_lost() -> GatewayError {
    GatewayError::Internal(
        "cannot find where the stream stood in Confluence's log; resume from an earlier \
         token or start the window again"
            .into(),
    )
}

/// Counts and logs a millisecond at `at` holding more records than a page of
/// `page_limit`.
fn tie_overflow(at: i64, page_limit: i64) {
    METRICS.stream_tie_overflows.inc();
    tracing::warn!(
        at,
        page_limit,
        "a millisecond holds more records than a page: if Confluence reorders them between \
         requests, some of them can be missed"
    );
}

/// A search by date for a page that covers the boundary.
#[derive(Clone, Copy, Debug, Default)]
struct Search {
    /// An offset known to hold a record newer than the boundary.
    newer_at: Option<i64>,
    /// An offset known to be at or past the boundary (or past the log's end).
    past_at: Option<i64>,
    /// Pages in a row found wholly newer: the forward jump doubles with each.
    ahead: u32,
    probes: u32,
}

impl Search {
    /// The next offset to probe (fresh), with `limit` records a page.
    fn next(&self, limit: i64) -> i64 {
        let lo = self.newer_at.unwrap_or(0);
        match self.past_at {
            Some(hi) if hi - lo > limit - 1 => lo + (hi - lo) / 2,
            Some(_) => lo,
            None if self.ahead <= 1 => lo,
            None => lo + (limit - 1) * ((1i64 << self.ahead.min(30)) - 1),
        }
    }
}

/// What the producer does next.
enum Next {
    /// Take the next page of the pipeline.
    Pipeline,
    /// Fetch this page next, alone (the pipeline restarts after it).
    Serial(Fetch),
}

/// What pages have shown of the server's cap on their length. A server may cap pages
/// below what was asked, and say nothing of it; its cap is the same for every page
/// (Confluence speaks of "fixed system limits"), so a page shorter than one already seen
/// was not cut by it: it reaches the log's end.
#[derive(Clone, Copy, Debug, Default)]
struct PageCap {
    /// The most records a page has held.
    largest: i64,
    /// Pages in a row, at different offsets, that delivered records and were as long as
    /// the longest: after two, the cap is known and the pipeline runs ahead at its stride.
    full_pages: u32,
    last_full_at: Option<i64>,
}

impl PageCap {
    /// Takes a page of `n` records in; true when it reaches the log's end (shorter than
    /// a page already seen).
    fn observe(&mut self, n: i64) -> bool {
        let reaches_end = n < self.largest;
        if n > self.largest {
            self.largest = n;
            self.full_pages = 0;
        }
        reaches_end
    }

    /// A page as long as the longest delivered records at `at`.
    fn delivered_full(&mut self, at: i64) {
        if self.last_full_at != Some(at) {
            self.full_pages += 1;
            self.last_full_at = Some(at);
        }
    }

    /// Whether the cap is known (two full pages in a row delivered).
    fn known(&self) -> bool {
        self.full_pages >= 2
    }

    /// The page length to reckon with: the longest seen, at least 2.
    fn page_limit(&self) -> i64 {
        self.largest.max(2)
    }

    /// The distance between pipelined pages: a page less the overlap.
    fn stride(&self) -> i64 {
        let limit = self.page_limit();
        (limit - OVERLAP.min(limit - 1)).max(1)
    }
}

/// The depth [`Depth::step`] keeps, now that the producer asks for its next page with
/// `ahead` queued (`window`: at most this many, the first page going alone).
fn next_depth(depth: &mut Depth, window: usize, ahead: &VecDeque<Fetch>) -> usize {
    let next_landed = ahead.front().map(|f| f.landed().is_some());
    let landed = ahead.iter().filter(|f| f.landed().is_some()).count();
    depth.step(window, next_landed, landed)
}

/// What the producer carries from one page to the next.
struct Progress {
    /// Where the caller's records resume.
    cursor: Cursor,
    /// Records the caller still wants (`max_records`).
    remaining: Option<u64>,
    cap: PageCap,
    /// Pages kept in flight: the first page alone (it may show a cap, or the whole
    /// window), then the prefetch window, as deep as the reader needs.
    window: usize,
    depth: Depth,
    ahead: VecDeque<Fetch>,
    next: Next,
    search: Option<Search>,
    /// Requests in a row that delivered nothing.
    idle: u32,
}

/// Whether the stream goes on after a page.
enum Flow {
    Go,
    Done,
}

impl<P: PageSource> Producer<P> {
    /// Runs the stream within its deadline; an error that ends it is its last item.
    async fn produce(self, tx: mpsc::Sender<Item>, idle: oneshot::Sender<GatewayError>) {
        let deadline = self.req.deadline;
        let idle_timeout = self.req.idle_timeout;
        let run = self.run(&tx);
        let result = within_deadline(
            deadline,
            "the stream's deadline passed; resume from the last token",
            run,
        )
        .await;
        finish(result, &tx, idle, idle_timeout).await;
    }

    /// The `limit` every page asks for: the page size plus the overlap, at most 1000.
    fn asked(&self) -> i64 {
        (i64::from(self.req.page_size) + OVERLAP).min(i64::from(PageQuery::MAX_LIMIT))
    }

    /// Fetches the page at `start`, needed `depth` pages from now (0: next).
    fn fetch(&self, start: i64, fresh: bool, depth: usize) -> Fetch {
        let pages = self.pages.clone();
        let w = &self.req.window;
        let limit = self.asked() as i32;
        let query = i32::try_from(start).map(|start| PageQuery {
            span: Span::Since {
                number: w.number,
                units: w.units,
            },
            search_string: w.search_string.clone(),
            start,
            limit,
        });
        let credential = self.req.credential.clone();
        let caller = self.req.caller.clone();
        let urgency = Urgency::ahead(depth);
        let request_urgency = urgency.clone();
        let turn = self.last.next(&urgency);
        let refresh = self.req.refresh || fresh;
        let deadline = self.req.deadline;
        let records = Arc::new(AtomicI64::new(-1));
        let (count, landed, sizes) = (records.clone(), self.landed.clone(), self.sizes.clone());
        let (end, longest) = (self.end.clone(), self.longest.clone());
        let ahead = Some(self.ahead_of(start, depth > 0));
        let task = tokio::spawn(
            async move {
                // Held to the end: its drop enters the request.
                let turn = turn;
                turn.wait().await;
                let query = query.map_err(|_| {
                    GatewayError::Internal(format!(
                        "offset {start} is beyond what Confluence pages"
                    ))
                })?;
                let load = pages.page(PageRequest {
                    query,
                    credential,
                    refresh,
                    unsettled: false,
                    deadline,
                    persistent: true,
                    caller,
                    urgency: request_urgency,
                    metered: false,
                    ahead,
                });
                let page = if depth > 0 {
                    unless_past_end(load, &end, start).await?
                } else {
                    load.await?
                };
                sizes.landed(page.len());
                let view = decode(&page)?;
                let n = view.records.len() as i64;
                count.store(n, Ordering::Release);
                // Told here too for a page from the cache, which no load converted.
                end.landed(start, n, &longest);
                landed.notify_one();
                Ok(view)
            }
            .in_current_span(),
        );
        Fetch {
            start,
            fresh,
            task,
            records,
            urgency,
            room: None,
        }
    }

    /// What the load of the page at `start` tells and asks of this stream's window: it
    /// learns the window's end from its page as soon as that is converted (the same rule
    /// as the fetch's, `Producer::fetch`), and, read `ahead`, holds its request back
    /// while the page lies past the end.
    fn ahead_of(&self, start: i64, ahead: bool) -> AheadOf {
        let (end, longest) = (self.end.clone(), self.longest.clone());
        let past = self.end.clone();
        AheadOf {
            landed: Arc::new(move |page: &Bytes| {
                if let Ok(view) = PageView::parse(page) {
                    end.landed(start, view.records.len() as i64, &longest);
                }
            }),
            past_end: Arc::new(move || ahead && past.known().is_some_and(|end| start >= end)),
        }
    }

    /// The pipeline: which page to fetch next, what each page that lands says of the
    /// boundary (delivered by [`Producer::covered`], or sought by [`Producer::seek`]).
    async fn run(self, tx: &mpsc::Sender<Item>) -> Result<(), GatewayError> {
        let mut stopping = self.req.stopping.clone();
        if self.req.max_records == Some(0) {
            return Ok(());
        }
        let mut p = Progress {
            cursor: self.req.cursor.clone(),
            remaining: self.req.max_records,
            cap: PageCap::default(),
            window: 1,
            depth: Depth::new(self.prefetch),
            ahead: VecDeque::new(),
            next: Next::Pipeline,
            search: None,
            idle: 0,
        };
        loop {
            p.idle += 1;
            if p.idle > MAX_IDLE_REQUESTS {
                return Err(inconsistent_paging());
            }
            let mut fetch = match std::mem::replace(&mut p.next, Next::Pipeline) {
                Next::Serial(f) => f,
                Next::Pipeline => {
                    let depth = next_depth(&mut p.depth, p.window, &p.ahead);
                    self.next_in_pipeline(
                        &mut p.ahead,
                        p.cursor.start,
                        p.cap.stride(),
                        depth,
                        p.cap.largest,
                    )
                }
            };
            let landed = self.land(&mut fetch, &mut p.ahead, p.cap.largest, tx, &mut stopping);
            let Some(page) = landed.await? else {
                return Ok(());
            };
            let n = page.records.len() as i64;
            let reaches_end = p.cap.observe(n);
            self.longest.store(p.cap.largest, Ordering::Release);
            let flow = match anchor::position(&p.cursor, fetch.start, &page.records, fetch.fresh) {
                Position::Covers => self.covered(&mut p, &fetch, &page, reaches_end, tx).await?,
                position => {
                    let seen = (&p.cursor, &fetch, n, p.cap.page_limit(), reaches_end);
                    match self.seek(position, seen, &mut p.search) {
                        Some(f) => {
                            p.next = Next::Serial(f);
                            p.ahead.clear();
                            Flow::Go
                        }
                        // Nothing at or past the boundary is left: the window is done.
                        None => Flow::Done,
                    }
                }
            };
            if matches!(flow, Flow::Done) {
                return Ok(());
            }
            if p.search.is_some_and(|s| s.probes > MAX_PROBES) {
                return Err(boundary_lost());
            }
        }
    }

    /// A page that covers the cursor's boundary: delivers what is new in it
    /// ([`Producer::send_records`]) and decides how the pipeline goes on.
    async fn covered(
        &self,
        p: &mut Progress,
        fetch: &Fetch,
        page: &PageView,
        reaches_end: bool,
        tx: &mpsc::Sender<Item>,
    ) -> Result<Flow, GatewayError> {
        p.search = None;
        let (at, n) = (fetch.start, page.records.len() as i64);
        let want = p.remaining.map_or(usize::MAX, |left| {
            usize::try_from(left).unwrap_or(usize::MAX)
        });
        // Cut by the limit, perhaps: as long as asked for, or as the cap.
        let cut = n >= self.asked() || (n == p.cap.largest && p.cap.known());
        let d = anchor::deliver(&p.cursor, at, &page.records, want, cut);
        if n == p.cap.largest && !d.records.is_empty() {
            p.cap.delivered_full(at);
        }
        if d.overflowed {
            tie_overflow(at, p.cap.page_limit());
        }
        let moved = d.cursor != p.cursor;
        if !d.records.is_empty() {
            p.idle = 0;
            let delivery = (&p.cursor, at, page, &d, cut);
            let largest = p.cap.largest;
            if !self
                .send_records(tx, delivery, &mut p.remaining, &mut p.ahead, largest)
                .await?
            {
                return Ok(Flow::Done);
            }
        }
        p.cursor = d.cursor;
        if reaches_end {
            self.end.learn(at, n);
        }
        if p.remaining == Some(0) || reaches_end {
            // All asked for, or everything after the boundary up to the log's end.
            return Ok(Flow::Done);
        }
        if !moved && fetch.fresh {
            // A fresh page that brought nothing new and moved nothing: the boundary's
            // tie group fills it. Look past it.
            p.cursor = anchor::look_past(&p.cursor, at, page.records.len());
        } else if !moved {
            // Nothing new, perhaps from an older snapshot: ask again, fresh.
            p.next = Next::Serial(self.fetch(p.cursor.start, true, 0));
            p.ahead.clear();
        }
        if n >= self.asked() || p.cap.known() {
            p.window = self.prefetch;
        }
        Ok(Flow::Go)
    }

    /// Where to look next when `fetch`'s page (`n` records at `fetch.start`, pages of
    /// `page_limit` records, reaching the log's end when `reaches_end`) does not cover the
    /// cursor's boundary at `position`: the fetch of the next page, or `None` when nothing
    /// at or past the boundary is left.
    fn seek(
        &self,
        position: Position,
        (cursor, fetch, n, page_limit, reaches_end): (&Cursor, &Fetch, i64, i64, bool),
        search: &mut Option<Search>,
    ) -> Option<Fetch> {
        let at = fetch.start;
        let probe = |search: &mut Option<Search>, update: &dyn Fn(&mut Search)| {
            let s = search.get_or_insert_with(Search::default);
            update(s);
            s.probes += 1;
            s.next(page_limit)
        };
        match position {
            // The caller delivers from a page that covers the boundary.
            Position::Covers => None,
            Position::Empty
                if cursor.boundary.is_none()
                    || (fetch.fresh
                        && at <= 1 + search.and_then(|s| s.newer_at).unwrap_or(cursor.start)) =>
            {
                // Nothing right after a record newer than the boundary (the hint, or one
                // a search found): arrivals only push records further on, so nothing
                // at or past the boundary is left. The window is done.
                None
            }
            // An older snapshot, or a guessed offset: ask again where the boundary was
            // last seen, past the cache.
            Position::Empty | Position::After if !fetch.fresh => {
                Some(self.fetch(cursor.start, true, 0))
            }
            Position::Empty | Position::After => {
                // A fresh page at or past the boundary: it lies before `at`.
                let to = probe(search, &|s| {
                    s.past_at = Some(at);
                    s.ahead = 0;
                });
                Some(self.fetch(to, true, 0))
            }
            // All newer, up to the log's end: nothing at or past the boundary is left.
            Position::Before if reaches_end => None,
            Position::Before => {
                // All newer: the boundary lies further on; jump, then bisect.
                let to = probe(search, &|s| {
                    s.newer_at = Some(at + n - 1);
                    s.ahead += 1;
                    if s.past_at.is_some_and(|hi| hi < at + n) {
                        s.past_at = None;
                    }
                });
                Some(self.fetch(to, true, 0))
            }
        }
    }

    /// Waits for `fetch`'s page; meanwhile a look-ahead page that lands short ends what
    /// is queued behind it (nothing behind it is needed). `None`: the caller went away.
    async fn land(
        &self,
        fetch: &mut Fetch,
        ahead: &mut VecDeque<Fetch>,
        largest: i64,
        tx: &mpsc::Sender<Item>,
        stopping: &mut Shutdown,
    ) -> Result<Option<PageView>, GatewayError> {
        loop {
            tokio::select! {
                joined = &mut fetch.task => {
                    let joined = joined.map_err(|e| {
                        GatewayError::Internal(format!("page fetch task failed: {e}"))
                    })?;
                    match joined {
                        // Dropped as past an end learnt since, yet needed: ask for it now.
                        Err(GatewayError::Abandoned) => {
                            *fetch = self.fetch(fetch.start, fetch.fresh, 0);
                        }
                        page => return page.map(Some),
                    }
                }
                _ = tx.closed() => return Ok(None),
                () = stopping.stopping() => return Err(GatewayError::ShuttingDown),
                () = self.landed.notified() => {
                    prune(ahead, largest, &self.end);
                }
                () = self.end.changed.notified() => {
                    prune(ahead, largest, &self.end);
                }
            }
        }
    }

    /// The delivery step: sends the records `d` chose from `page` (at offset `at`, cut by
    /// the limit when `cut`) after `cursor`, as messages of `page_size` records at most,
    /// each with the token of the cursor right after it. A page asks for a few records
    /// more than a message holds (the overlap) and the first page has nothing to overlap,
    /// so one page may take two messages; the first one's token is the cursor after its
    /// records, as a cut by `max_records` would leave it. `false`: the caller went away.
    async fn send_records(
        &self,
        tx: &mpsc::Sender<Item>,
        (cursor, at, page, d, cut): (&Cursor, i64, &PageView, &Delivery, bool),
        remaining: &mut Option<u64>,
        ahead: &mut VecDeque<Fetch>,
        largest: i64,
    ) -> Result<bool, GatewayError> {
        let per_message = usize::try_from(self.req.page_size).unwrap_or(1).max(1);
        let mut sent = 0;
        for chunk in d.records.chunks(per_message) {
            sent += chunk.len();
            let at_chunk_end = if sent == d.records.len() {
                d.cursor.clone()
            } else {
                anchor::deliver(cursor, at, &page.records, sent, cut).cursor
            };
            let records: Vec<Bytes> = chunk.iter().map(|&i| page.records[i].clone()).collect();
            if let Some(left) = remaining.as_mut() {
                *left -= records.len() as u64;
            }
            let token = resume::encode(&self.tokens, &self.req.window, &at_chunk_end);
            METRICS.stream_records.inc_by(records.len() as u64);
            let message = wire::stream_message(&records, &token);
            let idle = self.req.idle_timeout;
            // While the reader holds the stream back, a look-ahead page that lands short
            // ends the look-ahead behind it at once: other streams of the window wait for
            // nothing past its end.
            let send = tokio::time::timeout(idle, tx.send(Ok(message)));
            tokio::pin!(send);
            let sent = loop {
                tokio::select! {
                    sent = &mut send => break sent,
                    () = self.landed.notified() => {
                        prune(ahead, largest, &self.end);
                    }
                    () = self.end.changed.notified() => {
                        prune(ahead, largest, &self.end);
                    }
                }
            };
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ok(false),
                Err(_) => return Err(GatewayError::StreamIdle { after: idle }),
            }
        }
        Ok(true)
    }

    /// The next page of the pipeline: the oldest prediction, or one at `start`; keeps
    /// `window` pages in flight, `stride` apart, none past a page known to be short,
    /// those past the first few only while the look-ahead budget has room.
    fn next_in_pipeline(
        &self,
        ahead: &mut VecDeque<Fetch>,
        start: i64,
        stride: i64,
        window: usize,
        largest: i64,
    ) -> Fetch {
        let extend = prune(ahead, largest, &self.end);
        let end = self.end.known().unwrap_or(i64::MAX);
        let mut next = ahead.back().map_or(start, |f| f.start + stride);
        while extend && ahead.len() < window && next < end {
            let Some(room) = self.budget.room(ahead.len(), &self.sizes) else {
                break;
            };
            let mut fetch = self.fetch(next, false, ahead.len());
            fetch.room = Some(room);
            ahead.push_back(fetch);
            next += stride;
        }
        let next = ahead
            .pop_front()
            .unwrap_or_else(|| self.fetch(start, false, 0));
        // The reader now waits for `next`; the rest are one page closer.
        next.urgency.set(0);
        for (i, f) in ahead.iter().enumerate() {
            f.urgency.set(i + 1);
        }
        next
    }
}

/// An encoded page split into its records.
pub(crate) fn decode(page: &Bytes) -> Result<PageView, GatewayError> {
    PageView::parse(page)
        .map_err(|e| GatewayError::Internal(format!("a cached page does not decode: {e}")))
}

/// An encoded `AuditRecord`: the gateway encodes records deterministically (fields in
/// order, `Struct` keys sorted), so its bytes identify its content.
impl Anchored for Bytes {
    fn id(&self) -> u64 {
        let digest = ring::digest::digest(&ring::digest::SHA256, self);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_be_bytes(id)
    }

    fn date(&self) -> i64 {
        // Pages are written by this gateway, so a record that does not parse is a defect;
        // dating it 0 only makes it look older than any boundary.
        wire::creation_date(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::{
        app::model::{Echo, Misbehaviour, Model, ModelSource, check_delivery, encode, record},
        audit::{TimeUnit, anchor::Cursor},
        pb,
    };

    /// The offset and limit a page request asks for.
    fn span(req: &PageRequest) -> (usize, usize) {
        let start = usize::try_from(req.query.start).expect("offset");
        (start, usize::try_from(req.query.limit).expect("limit"))
    }

    /// A quiet log, newest first, served as encoded pages.
    #[derive(Clone)]
    struct Log(Arc<Vec<pb::AuditRecord>>);

    fn log(records: i64) -> Log {
        Log(Arc::new(
            (0..records)
                .rev()
                .map(|i| record(1000 + i, &format!("#{i}")))
                .collect(),
        ))
    }

    impl PageSource for Log {
        fn page(
            &self,
            req: PageRequest,
        ) -> impl Future<Output = Result<Bytes, GatewayError>> + Send {
            let (start, limit) = span(&req);
            let records: Vec<_> = self.0.iter().skip(start).take(limit).cloned().collect();
            std::future::ready(Ok(encode(&records, req.query.limit)))
        }
    }

    /// A log whose handle panics when cloned more than `clones` times. The producer clones
    /// it itself, so this is a panic of the producer's own task (a panic inside a page
    /// fetch already ends that fetch with an error, see `Producer::run`).
    struct BreaksAfter {
        log: Log,
        clones: usize,
        cloned: Arc<AtomicUsize>,
    }

    impl Clone for BreaksAfter {
        fn clone(&self) -> Self {
            if self.cloned.fetch_add(1, Ordering::Relaxed) >= self.clones {
                panic!("a defect in the producer");
            }
            Self {
                log: self.log.clone(),
                clones: self.clones,
                cloned: self.cloned.clone(),
            }
        }
    }

    impl PageSource for BreaksAfter {
        fn page(
            &self,
            req: PageRequest,
        ) -> impl Future<Output = Result<Bytes, GatewayError>> + Send {
            self.log.page(req)
        }
    }

    #[test]
    fn the_nearest_end_learnt_lately_stands() {
        let end = WindowEnd::default();
        end.learn(19_840, 660);
        // An empty page far past the end says only that the end lies before it.
        end.learn(25_000, 0);
        assert_eq!(end.known(), Some(20_500));
        // A nearer end (records gone from the window) replaces it.
        end.learn(19_840, 600);
        assert_eq!(end.known(), Some(20_440));
    }

    #[tokio::test]
    async fn look_ahead_past_an_end_learnt_meanwhile_is_dropped_and_a_needed_page_is_not() {
        let end = WindowEnd::default();
        let never = std::future::pending::<Result<Bytes, GatewayError>>();
        let waiting = tokio::spawn({
            let end = Arc::new(end);
            let learnt = end.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                learnt.learn(19_840, 660);
            });
            async move { unless_past_end(never, &end, 20_832).await }
        });
        let dropped = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("dropped once the end is learnt")
            .expect("joined");
        assert!(
            matches!(dropped, Err(GatewayError::Abandoned)),
            "{dropped:?}"
        );
        // Before the end: the load's answer, whatever is learnt.
        let end = WindowEnd::default();
        end.learn(19_840, 660);
        let page = unless_past_end(async { Ok(Bytes::from_static(b"p")) }, &end, 18_848).await;
        assert_eq!(page.expect("page"), Bytes::from_static(b"p"));
    }

    /// A look-ahead budget nothing exhausts.
    fn unbounded() -> Arc<LookAhead> {
        Arc::new(LookAhead::new(u64::MAX))
    }

    fn window() -> Window {
        Window {
            number: 1,
            units: TimeUnit::Days,
            search_string: None,
        }
    }

    fn key() -> Arc<TokenKey> {
        Arc::new(TokenKey::new(b"test"))
    }

    fn request(page_size: i32, max_records: Option<u64>, cursor: Cursor) -> StreamRequest {
        StreamRequest {
            window: window(),
            page_size,
            max_records,
            cursor,
            credential: None,
            caller: Caller::anonymous(),
            refresh: false,
            deadline: None,
            idle_timeout: Duration::from_secs(3600),
            stopping: Shutdown::never(),
        }
    }

    /// The records streamed (summary, date), the last token, and how the stream ended.
    async fn drain(mut rx: Messages) -> (Vec<(String, i64)>, String, Option<GatewayError>) {
        let (mut records, mut token) = (Vec::new(), String::new());
        while let Some(item) = rx.recv().await {
            let message = match item {
                Ok(m) => pb::StreamSinceResponse::decode(m).expect("a stream message"),
                Err(e) => return (records, token, Some(e)),
            };
            records.extend(
                message
                    .records
                    .into_iter()
                    .map(|r| (r.summary, r.creation_date)),
            );
            token = message.resume_token;
        }
        (records, token, None)
    }

    fn names(records: &[(String, i64)]) -> Vec<&str> {
        records.iter().map(|(s, _)| s.as_str()).collect()
    }

    #[tokio::test]
    async fn a_stream_cut_at_max_records_resumes_from_its_token_to_the_end() {
        let log = log(11);
        let rx = start(
            log.clone(),
            request(3, Some(5), Cursor::BEGIN),
            (2, &WindowEnds::default(), &unbounded()),
            key(),
            (),
        );
        let (first, token, end) = drain(rx).await;
        assert!(end.is_none(), "{end:?}");
        assert_eq!(names(&first), ["#10", "#9", "#8", "#7", "#6"]);

        let cursor = resume::decode(&key(), &window(), &token).expect("a token");
        let (rest, _, end) = drain(start(
            log,
            request(3, None, cursor),
            (2, &WindowEnds::default(), &unbounded()),
            key(),
            (),
        ))
        .await;
        assert!(end.is_none(), "{end:?}");
        let expected: Vec<String> = (0..6).rev().map(|i| format!("#{i}")).collect();
        assert_eq!(names(&rest), expected);
    }

    #[tokio::test]
    async fn a_panicking_producer_ends_the_stream_with_internal_not_ok() {
        let source = BreaksAfter {
            log: log(30),
            clones: 1,
            cloned: Arc::default(),
        };
        let (delivered, _, end) = drain(start(
            source,
            request(3, None, Cursor::BEGIN),
            (2, &WindowEnds::default(), &unbounded()),
            key(),
            (),
        ))
        .await;
        assert!(delivered.len() < 30, "{delivered:?}");
        assert!(
            matches!(end, Some(GatewayError::Internal(_))),
            "ended with {end:?}"
        );
    }

    // Two workers, as a gateway runs: tokio then first polls spawned tasks out of the
    // order they were spawned in (on one thread it polls them in order).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_streams_second_round_of_requests_is_the_pages_right_after_the_first() {
        // Rounds 100 ms apart: a slot frees only when an answer comes.
        let latency = Duration::from_millis(100);
        let sim = crate::testing::harness::simulator(confluence_sim::SimulatorConfig {
            records: 4000,
            latency,
            ..Default::default()
        })
        .await;
        let pages =
            crate::app::pages::tests::service_of(&sim, &crate::upstream::UpstreamConfig::DEFAULT);
        // Pages of 108 asked, 100 apart: 40 pages, more than the credential's pace lets
        // go at once.
        let (records, _, end) = drain(start(
            pages,
            request(100, None, Cursor::BEGIN),
            (32, &WindowEnds::default(), &unbounded()),
            key(),
            (),
        ))
        .await;
        assert!(end.is_none(), "{end:?}");
        assert_eq!(records.len(), 4000);
        let mut asked: Vec<(Instant, i64)> = sim
            .requests()
            .iter()
            .map(|r| {
                let start = r.param("start").and_then(|v| v.parse().ok());
                let start = start.expect("a start");
                (r.received, start)
            })
            .collect();
        sim.shutdown();
        asked.sort_unstable();
        // The first page goes alone; the look-ahead made after it lands is the second
        // round, sent together.
        let (round_began, _) = asked[1];
        let round: Vec<i64> = asked[1..]
            .iter()
            .take_while(|(at, _)| at.duration_since(round_began) < latency / 2)
            .map(|(_, start)| *start)
            .collect();
        let mut later: Vec<i64> = asked[1..].iter().map(|(_, start)| *start).collect();
        later.sort_unstable();
        let mut sent = round.clone();
        sent.sort_unstable();
        assert!(
            round.len() < later.len(),
            "the pace let every page go at once: {round:?}"
        );
        assert_eq!(
            sent,
            later[..round.len()],
            "the second round holds the pages right after the first: {asked:?}"
        );
    }

    /// Streams the whole window as a client would: on an error or at `max_records`, a new
    /// call resumes from the last token; `refresh`: every call asks `no-cache`, so every
    /// page is fresh. Returns what was delivered, in order.
    async fn stream_through(
        source: ModelSource,
        (ends, budget): (&WindowEnds, &Arc<LookAhead>),
        page_size: i32,
        max_records: Option<u64>,
        refresh: bool,
    ) -> Result<Vec<(String, i64)>, GatewayError> {
        let mut delivered = Vec::new();
        let mut cursor = Cursor::BEGIN;
        for _ in 0..200 {
            let req = StreamRequest {
                refresh,
                ..request(page_size, max_records, cursor.clone())
            };
            let (records, token, end) =
                drain(start(source.clone(), req, (3, ends, budget), key(), ())).await;
            let got = records.len();
            delivered.extend(records);
            if !token.is_empty() {
                cursor = resume::decode(&key(), &window(), &token)
                    .map_err(|e| GatewayError::Internal(e.to_string()))?;
            }
            match end {
                Some(e @ GatewayError::Internal(_)) => return Err(e),
                Some(_) => continue,
                None if max_records.is_some_and(|m| got as u64 == m) => continue,
                None => return Ok(delivered),
            }
        }
        Err(GatewayError::Internal(
            "the stream did not finish within 200 calls".into(),
        ))
    }

    fn misbehaviour() -> impl Strategy<Value = (Misbehaviour, i32)> {
        (
            (
                2usize..=12,
                0.0..0.3f64,
                0usize..=6,
                0usize..=4,
                any::<bool>(),
            ),
            (
                prop::option::of(3usize..=20),
                prop::option::of(5usize..=40),
                prop::sample::select(vec![Echo::Honest, Echo::Asked, Echo::Missing, Echo::Mixed]),
            ),
            (0.0..0.5f64, 0.0..0.2f64, 1i32..=12),
        )
            .prop_map(
                |(
                    (ties, identical, inserts, deletes, deletes_split),
                    (cap, cap_rises_every, echo),
                    (stale, faults, page_size),
                )| {
                    // The guarantee's assumptions (see audit/anchor.rs): the log grows slower
                    // than it is paged (a log that gains a page between two requests can never
                    // be read to its end by offset), and a tie group fits in a page together
                    // with the record before it and what arrives between two requests.
                    let page = cap.unwrap_or(usize::MAX).min(page_size as usize + 8);
                    let inserts = inserts.min(page / 4);
                    let how = Misbehaviour {
                        ties: ties.min(page.saturating_sub(2 + inserts)).max(1),
                        identical,
                        inserts,
                        deletes,
                        deletes_split,
                        cap,
                        cap_rises_every,
                        echo,
                        stale,
                        faults,
                        ..Misbehaviour::polite()
                    };
                    (how, page_size)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(500)
        ))]

        /// Whatever the schedule: every record of the window that is still in the log at
        /// the end is delivered exactly once; nothing is delivered twice; dates never
        /// increase along the whole concatenation of calls.
        #[test]
        fn every_surviving_record_arrives_exactly_once_in_order(
            (how, page_size) in misbehaviour(),
            records in 0usize..120,
            max_records in prop::option::of(1u64..40),
            refresh in any::<bool>(),
            budget in prop_oneof![Just(0u64), 0u64..8192, Just(u64::MAX)],
            seed in any::<u64>(),
        ) {
            let model = Arc::new(Mutex::new(Model::new(records, 1_000_000, (1, 3), how, seed)));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            let source = ModelSource(model.clone());
            let ends = WindowEnds::default();
            // Look-ahead as deep as the prefetch, only the free pages, or in between.
            let budget = Arc::new(LookAhead::new(budget));
            let delivered = runtime
                .block_on(stream_through(source, (&ends, &budget), page_size, max_records, refresh))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let model = model.lock().expect("model");
            if delivered.is_empty() {
                // Only right if the window was empty when the stream began.
                prop_assert_eq!(model.first_page, Some(0));
            }
            // The window: what the first message began with, and everything older.
            let top = delivered.first().map_or(i64::MIN, |r| r.1);
            check_delivery(&model, &delivered, true, |d| d <= top)?;
        }

        /// Streams of one window share what they learn of where it ends: two of them at
        /// once, the second a few requests later, each resumed across calls, each still
        /// delivers every record of its window exactly once whatever the other learnt.
        #[test]
        fn streams_sharing_where_the_window_ends_each_deliver_exactly_once(
            (how, page_size) in misbehaviour(),
            records in 0usize..120,
            head_start in 0u32..6,
            seed in any::<u64>(),
        ) {
            let model = Arc::new(Mutex::new(Model::new(records, 1_000_000, (1, 3), how, seed)));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            let ends = WindowEnds::default();
            let budget = unbounded();
            let (first, second) = runtime.block_on(async {
                let first = stream_through(ModelSource(model.clone()), (&ends, &budget), page_size, None, false);
                let second = async {
                    for _ in 0..head_start {
                        tokio::task::yield_now().await;
                    }
                    stream_through(ModelSource(model.clone()), (&ends, &budget), page_size, None, false).await
                };
                tokio::join!(first, second)
            });
            let model = model.lock().expect("model");
            for delivered in [first, second] {
                let delivered = delivered.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let top = delivered.first().map_or(i64::MIN, |r| r.1);
                check_delivery(&model, &delivered, true, |d| d <= top)?;
            }
        }
    }
}
