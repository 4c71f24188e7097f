//! `StreamSince`: a whole window as ordered messages, one per upstream page, fetched a
//! bounded number of pages ahead and placed exactly once by `audit::anchor`.
//!
//! A producer task walks the window and hands messages to a channel of one slot, so a
//! slow caller holds it back (backpressure) and memory stays at the prefetch window
//! whatever the window's size. When the caller goes away the channel closes, the
//! producer returns, and dropping its pending fetches aborts them. Should the producer
//! panic, the stream ends with INTERNAL rather than looking complete.

use std::{collections::VecDeque, time::Instant};

use bytes::Bytes;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    app::{PageRequest, PageService},
    audit::{
        PageQuery,
        anchor::{self, Anchored, Cursor, Step, Window},
        resume,
    },
    credential::Credential,
    error::{GatewayError, within_deadline},
    metrics::METRICS,
    pb::wire::{self, PageView},
};

/// One validated `StreamSince` call.
#[derive(Clone, Debug)]
pub(crate) struct StreamRequest {
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

/// Starts the producer; the receiver yields the messages, then at most one error.
pub(crate) fn start<P: PageSource>(
    pages: P,
    req: StreamRequest,
    prefetch: usize,
) -> mpsc::Receiver<Item> {
    METRICS.streams_started.inc();
    let (tx, rx) = mpsc::channel(1);
    let producer = Producer {
        pages,
        req,
        prefetch: prefetch.max(1),
    };
    let producing = tokio::spawn(producer.produce(tx.clone()));
    // A panic would only close the channel, and the caller would take the messages so far
    // for the whole window: end the stream with an error instead.
    tokio::spawn(async move {
        if let Err(e) = producing.await
            && e.is_panic()
        {
            tracing::error!(error = %e, "StreamSince producer panicked");
            let failed = "the stream failed; resume from the last token".to_owned();
            let _ = tx.send(Err(GatewayError::Internal(failed))).await;
        }
    });
    rx
}

struct Producer<P> {
    pages: P,
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

impl<P: PageSource> Producer<P> {
    /// Runs the stream within its deadline; an error that ends it is its last item.
    async fn produce(self, tx: mpsc::Sender<Item>) {
        let deadline = self.req.deadline;
        let run = self.run(&tx);
        let result = within_deadline(
            deadline,
            "the stream's deadline passed; resume from the last token",
            run,
        )
        .await;
        // Logged where it becomes the caller's status (src/grpc/status.rs).
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    }

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
        let mut stride: Option<i64> = None;
        let mut ahead: VecDeque<Fetch> = VecDeque::new();
        let mut serial: Option<Fetch> = None;
        loop {
            let mut fetch = match serial.take() {
                Some(f) => f,
                None => self.next_in_pipeline(&mut ahead, cursor.start, stride, window),
            };
            debug_assert_eq!(fetch.start, cursor.start, "pages are fetched at the cursor");
            let page = tokio::select! {
                joined = &mut fetch.task => joined.map_err(|e| {
                    GatewayError::Internal(format!("page fetch task failed: {e}"))
                })??,
                _ = tx.closed() => return Ok(()),
            };
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
            stride = Some(limit - 1);
            let last_page = (page.records.len() as i64) < limit;
            let want = remaining.map_or(usize::MAX, |left| {
                usize::try_from(left).unwrap_or(usize::MAX)
            });
            let records = match anchor::step(&cursor, &page.records, fetch.fresh, last_page, want) {
                Step::Refetch(next) => {
                    cursor = next;
                    serial = Some(self.fetch(cursor.start, true));
                    continue;
                }
                Step::End => {
                    let_go(ahead);
                    return Ok(());
                }
                Step::Deliver {
                    records: range,
                    cursor: next,
                } => {
                    cursor = next;
                    &page.records[range]
                }
            };
            if !records.is_empty() {
                if let Some(left) = remaining.as_mut() {
                    *left -= records.len() as u64;
                }
                let token = resume::encode(&self.req.window, &cursor);
                let message = wire::stream_message(records, &token);
                METRICS.stream_records.add(records.len() as u64);
                if tx.send(Ok(message)).await.is_err() {
                    return Ok(());
                }
            }
            if last_page || remaining == Some(0) {
                let_go(ahead);
                return Ok(());
            }
            window = self.prefetch;
        }
    }

    /// The next page of the pipeline, which must start at `start`; keeps `window`
    /// pages in flight once the stride between pages is known.
    fn next_in_pipeline(
        &self,
        ahead: &mut VecDeque<Fetch>,
        start: i64,
        stride: Option<i64>,
        window: usize,
    ) -> Fetch {
        if ahead.front().is_some_and(|f| f.start != start) {
            // Predictions went stale (an advance, a capped limit): start over from here.
            ahead.clear();
        }
        if let Some(stride) = stride {
            let mut next = ahead.back().map_or(start, |f| f.start + stride);
            while ahead.len() < window {
                ahead.push_back(self.fetch(next, false));
                next += stride;
            }
        }
        ahead
            .pop_front()
            .unwrap_or_else(|| self.fetch(start, false))
    }
}

/// A normal end: look-ahead loads past the end finish for whoever shares them (aborting
/// would make each waiting stream start them again).
fn let_go(mut ahead: VecDeque<Fetch>) {
    ahead.iter_mut().for_each(|f| f.let_go = true);
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

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use prost::Message;

    use super::*;
    use crate::{audit::TimeUnit, pb};

    /// A quiet log, newest first, served as encoded pages.
    #[derive(Clone)]
    struct Log(Arc<Vec<pb::AuditRecord>>);

    fn log(records: i64) -> Log {
        let record = |i: i64| pb::AuditRecord {
            creation_date: 1000 + i,
            summary: format!("#{i}"),
            ..Default::default()
        };
        Log(Arc::new((0..records).rev().map(record).collect()))
    }

    impl PageSource for Log {
        fn page(
            &self,
            req: PageRequest,
        ) -> impl Future<Output = Result<Bytes, GatewayError>> + Send {
            let start = usize::try_from(req.query.start).expect("offset");
            let limit = usize::try_from(req.query.limit).expect("limit");
            let page = pb::GetSinceResponse {
                results: self.0.iter().skip(start).take(limit).cloned().collect(),
                limit: req.query.limit,
                ..Default::default()
            };
            std::future::ready(Ok(Bytes::from(page.encode_to_vec())))
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

    fn window() -> Window {
        Window {
            number: 1,
            units: TimeUnit::Days,
            search_string: None,
        }
    }

    fn request(page_size: i32, max_records: Option<u64>, cursor: Cursor) -> StreamRequest {
        StreamRequest {
            window: window(),
            page_size,
            max_records,
            cursor,
            credential: None,
            refresh: false,
            deadline: None,
        }
    }

    /// The summaries of the records streamed, the last token, and how the stream ended.
    async fn drain(mut rx: mpsc::Receiver<Item>) -> (Vec<String>, String, Option<GatewayError>) {
        let (mut summaries, mut token) = (Vec::new(), String::new());
        while let Some(item) = rx.recv().await {
            let message = match item {
                Ok(m) => pb::StreamSinceResponse::decode(m).expect("a stream message"),
                Err(e) => return (summaries, token, Some(e)),
            };
            summaries.extend(message.records.into_iter().map(|r| r.summary));
            token = message.resume_token;
        }
        (summaries, token, None)
    }

    #[tokio::test]
    async fn a_stream_cut_at_max_records_resumes_from_its_token_to_the_end() {
        let log = log(11);
        let rx = start(log.clone(), request(3, Some(5), Cursor::BEGIN), 2);
        let (first, token, end) = drain(rx).await;
        assert!(end.is_none(), "{end:?}");
        assert_eq!(first, ["#10", "#9", "#8", "#7", "#6"]);

        let cursor = resume::decode(&window(), &token).expect("a token");
        let (rest, _, end) = drain(start(log, request(3, None, cursor), 2)).await;
        assert!(end.is_none(), "{end:?}");
        let rest_expected: Vec<String> = (0..6).rev().map(|i| format!("#{i}")).collect();
        assert_eq!(rest, rest_expected);
    }

    #[tokio::test]
    async fn a_panicking_producer_ends_the_stream_with_internal_not_ok() {
        let source = BreaksAfter {
            log: log(11),
            clones: 1,
            cloned: Arc::default(),
        };
        let (delivered, _, end) = drain(start(source, request(3, None, Cursor::BEGIN), 2)).await;
        assert_eq!(delivered, ["#10", "#9", "#8", "#7"]);
        assert!(
            matches!(end, Some(GatewayError::Internal(_))),
            "ended with {end:?}"
        );
    }
}
