//! `StreamSince`: a whole window as ordered messages, one per upstream page, fetched a
//! bounded number of pages ahead and placed exactly once by `audit::anchor`.
//!
//! A producer task walks the window and hands messages to a channel of one slot, so a
//! slow caller holds it back (backpressure) and memory stays at the prefetch window
//! whatever the window's size. When the caller goes away the channel closes, the
//! producer returns, and dropping its pending fetches aborts them.

use std::{collections::VecDeque, time::Instant};

use bytes::Bytes;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    app::{PageRequest, PageService},
    audit::{
        PageQuery,
        anchor::{Anchor, Anchored, Cursor, Placement, Window, place},
        resume,
    },
    credential::Credential,
    error::GatewayError,
    metrics::METRICS,
    pb::wire::{self, PageView},
};

/// One validated `StreamSince` call.
#[derive(Clone, Debug)]
pub struct StreamRequest {
    /// The window's filters.
    pub window: Window,
    /// Records asked for per page (1..=1000); each request asks one more, the overlap.
    pub page_size: i32,
    /// Stop after this many records.
    pub max_records: Option<u64>,
    /// Where to begin: the window's start, or a resume token's position.
    pub cursor: Cursor,
    /// Whom to fetch as.
    pub credential: Option<Credential>,
    /// Bypass cached pages.
    pub refresh: bool,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
}

/// What the stream yields: encoded `StreamSinceResponse`s, then at most one error.
pub type Item = Result<Bytes, GatewayError>;

/// Starts the producer; the receiver yields the messages, then at most one error.
pub fn start(pages: PageService, req: StreamRequest, prefetch: usize) -> mpsc::Receiver<Item> {
    METRICS.streams_started.inc();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let deadline = req.deadline;
        let producer = Producer {
            pages,
            req,
            prefetch: prefetch.max(1),
        };
        let run = producer.run(&tx);
        let result = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), run)
                .await
                .unwrap_or_else(|_| {
                    Err(GatewayError::DeadlineExceeded(
                        "the stream's deadline passed; resume from the last token".into(),
                    ))
                }),
            None => run.await,
        };
        if let Err(e) = result {
            tracing::info!(reason = e.reason(), error = %e, "StreamSince ended early");
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

struct Producer {
    pages: PageService,
    req: StreamRequest,
    prefetch: usize,
}

/// A page being fetched; dropping it aborts the fetch unless it was let go.
struct Fetch {
    start: i64,
    /// Fetched past the cache after the anchor's page was placed.
    fresh: bool,
    task: JoinHandle<Result<PageView, GatewayError>>,
    /// Finish even when dropped: other streams may be waiting on this very load.
    let_go: bool,
}

impl Drop for Fetch {
    fn drop(&mut self) {
        if !self.let_go {
            self.task.abort();
        }
    }
}

impl Producer {
    fn fetch(&self, start: i64, fresh: bool) -> Fetch {
        let pages = self.pages.clone();
        let w = &self.req.window;
        let query = i32::try_from(start).map(|start| PageQuery {
            number: w.number,
            units: w.units,
            search_string: w.search_string.clone(),
            start,
            limit: self.req.page_size + 1,
        });
        let credential = self.req.credential.clone();
        let refresh = self.req.refresh || fresh;
        let deadline = self.req.deadline;
        let task = tokio::spawn(async move {
            let query = query.map_err(|_| {
                GatewayError::Internal(format!("offset {start} is beyond what Confluence pages"))
            })?;
            let page = pages
                .page(PageRequest {
                    query,
                    credential,
                    refresh,
                    deadline,
                })
                .await?;
            decode(&page)
        });
        Fetch {
            start,
            fresh,
            task,
            let_go: false,
        }
    }

    async fn run(self, tx: &mpsc::Sender<Item>) -> Result<(), GatewayError> {
        let mut cursor = self.req.cursor;
        let mut remaining = self.req.max_records;
        if remaining == Some(0) {
            return Ok(());
        }
        let asked = i64::from(self.req.page_size) + 1;
        // Pages ahead: the first page alone (it tells the server's limit and whether
        // the window holds more than a page), then the whole prefetch window.
        let mut window = 1;
        let mut step: Option<i64> = None;
        let mut ahead: VecDeque<Fetch> = VecDeque::new();
        let mut serial: Option<Fetch> = None;
        loop {
            let mut fetch = match serial.take() {
                Some(f) => f,
                None => self.next_in_pipeline(&mut ahead, cursor.start, step, window),
            };
            let page = tokio::select! {
                joined = &mut fetch.task => joined.map_err(|e| {
                    GatewayError::Internal(format!("page fetch task failed: {e}"))
                })??,
                _ = tx.closed() => return Ok(()),
            };
            let n = page.records.len() as i64;
            let limit = if page.limit > 0 {
                i64::from(page.limit).min(asked)
            } else {
                asked
            };
            if limit < 2 {
                return Err(GatewayError::Internal(
                    "Confluence caps pages at one record; pages cannot overlap".into(),
                ));
            }
            step = Some(limit - 1);
            let last_page = n < limit;
            let from = match place(&cursor, &page.records, fetch.fresh) {
                Placement::Refetch => {
                    serial = Some(self.fetch(fetch.start, true));
                    continue;
                }
                Placement::Advance if last_page => {
                    ahead.iter_mut().for_each(|f| f.let_go = true);
                    return Ok(());
                }
                Placement::Advance => {
                    cursor.start = fetch.start + n - 1;
                    serial = Some(self.fetch(cursor.start, true));
                    continue;
                }
                Placement::Deliver(from) => from,
            };
            let mut records = page.records;
            records.drain(..from.min(records.len()));
            let mut done = last_page;
            if let Some(left) = remaining.as_mut() {
                if records.len() as u64 >= *left {
                    records.truncate(*left as usize);
                    done = true;
                }
                *left -= records.len() as u64;
            }
            if let Some(last) = records.last() {
                let id = last.id();
                let anchor = Some(Anchor {
                    id,
                    date: last.date(),
                });
                // Identical copies of the last record that end this message (one, as a
                // rule): the next page must skip them all.
                let copies = records.iter().rev().take_while(|r| r.id() == id).count();
                cursor = if copies == records.len() && cursor.anchor.is_some_and(|a| a.id == id) {
                    // The run began in an earlier message: keep its first copy.
                    Cursor {
                        anchor,
                        run: cursor.run + copies as u32,
                        ..cursor
                    }
                } else {
                    Cursor {
                        start: fetch.start + (from + records.len() - copies) as i64,
                        anchor,
                        run: copies as u32,
                    }
                };
                let token = resume::encode(&self.req.window, &cursor);
                let message = wire::stream_message(&records, &token);
                METRICS.stream_records.add(records.len() as u64);
                if tx.send(Ok(message)).await.is_err() {
                    return Ok(());
                }
            } else if from > 0 {
                // The anchor closed the page: its run now starts at this offset.
                let first = fetch.start + from.saturating_sub(cursor.run as usize) as i64;
                cursor.start = if first == fetch.start && !last_page {
                    // A run longer than a page: look past it rather than loop.
                    fetch.start + n - 1
                } else {
                    first
                };
            }
            if done {
                // A normal end: look-ahead loads past the end finish for whoever shares
                // them (aborting would make each waiting stream start them again).
                ahead.iter_mut().for_each(|f| f.let_go = true);
                return Ok(());
            }
            window = self.prefetch;
        }
    }

    /// The next page of the pipeline, which must start at `start`; keeps `window`
    /// pages in flight once the step between pages is known.
    fn next_in_pipeline(
        &self,
        ahead: &mut VecDeque<Fetch>,
        start: i64,
        step: Option<i64>,
        window: usize,
    ) -> Fetch {
        if ahead.front().is_some_and(|f| f.start != start) {
            // Predictions went stale (an advance, a capped limit): start over from here.
            ahead.clear();
        }
        if let Some(step) = step {
            let mut next = ahead.back().map_or(start, |f| f.start + step);
            while ahead.len() < window {
                ahead.push_back(self.fetch(next, false));
                next += step;
            }
        }
        ahead
            .pop_front()
            .unwrap_or_else(|| self.fetch(start, false))
    }
}

fn decode(page: &Bytes) -> Result<PageView, GatewayError> {
    PageView::parse(page)
        .map_err(|e| GatewayError::Internal(format!("a cached page does not decode: {e}")))
}

/// An encoded `AuditRecord`: the gateway encodes records deterministically (fields in
/// order, `Struct` keys sorted), so its bytes identify its content.
impl Anchored for Bytes {
    fn id(&self) -> [u8; 16] {
        let digest = ring::digest::digest(&ring::digest::SHA256, self);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest.as_ref()[..16]);
        id
    }

    fn date(&self) -> i64 {
        // Pages are written by this gateway, so a record that does not parse is a defect;
        // dating it 0 only makes it look older than any anchor.
        wire::creation_date(self).unwrap_or_default()
    }
}
