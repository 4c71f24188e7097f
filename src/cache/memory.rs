//! The in-process tier (moka): per-page TTL, a byte bound, and one load per key at a
//! time, run as its own task (a single-flight of our own, not moka's `try_get_with`, whose
//! shared load belongs to the caller that started it).

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use moka::{Expiry, future::Cache, notification::RemovalCause};
use tokio::sync::watch;

use super::{CacheConfig, PageKey, SharedTier};
use crate::{
    error::GatewayError,
    metrics::{METRICS, Tier},
};

/// A cached page and how long it stays fresh from when it was stored.
#[derive(Clone, Debug)]
struct Cached {
    page: Bytes,
    ttl: Duration,
}

/// Each page expires after its own TTL: a page filled from the shared tier keeps only
/// the time it had left there.
struct PerPageTtl;

impl Expiry<PageKey, Cached> for PerPageTtl {
    fn expire_after_create(&self, _: &PageKey, value: &Cached, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    // A refresh replaces the entry: it gets its own full TTL, not what the old one had.
    fn expire_after_update(
        &self,
        _: &PageKey,
        value: &Cached,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// What the callers waiting on a load see of it.
#[derive(Clone, Debug)]
enum Progress {
    /// The load is under way.
    Loading,
    /// Its last attempt failed with `error`; the next one begins at `next`.
    Retrying { error: GatewayError, next: Instant },
    /// The load is over.
    Done(Result<Bytes, GatewayError>),
}

/// Lets a load tell the callers waiting on it that an attempt failed and when the next
/// one begins: a caller whose deadline comes first leaves at once with that failure,
/// the precise error rather than a time-out (as `src/upstream/retry.rs` does for a
/// caller's own retries).
#[derive(Clone, Debug, Default)]
pub(crate) struct LoadProgress {
    tx: Option<Arc<watch::Sender<Progress>>>,
    flight: Option<Arc<FlightId>>,
}

/// Which flight a load runs for, so it can mark its entry sent.
struct FlightId {
    flights: Arc<Mutex<Flights>>,
    key: PageKey,
    id: u64,
}

impl std::fmt::Debug for FlightId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightId")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LoadProgress {
    /// A request is about to be sent upstream: from now on, a refresh asked for later
    /// cannot take this load's answer as fresh, so it no longer joins it. False when no
    /// caller waits for this load any more (a stream that reached its window's end
    /// dropped its look-ahead, say): then it is taken off the map and sends nothing, and
    /// a caller who comes later starts a load of its own.
    pub(crate) fn sending(&self) -> bool {
        let (Some(f), Some(tx)) = (&self.flight, &self.tx) else {
            return true;
        };
        // Under the map's lock: a caller that joined did so before this, hence holds a
        // receiver now, and one that comes after sees the entry as it is left here.
        let mut flights = lock(&f.flights);
        let ours = flights.by_key.get(&f.key).is_some_and(|e| e.id == f.id);
        // The map's own entry holds one receiver; every waiting caller holds another.
        if tx.receiver_count() <= usize::from(ours) {
            if ours {
                flights.by_key.remove(&f.key);
            }
            return false;
        }
        if let Some(entry) = flights.by_key.get_mut(&f.key)
            && entry.id == f.id
        {
            entry.sent = true;
        }
        true
    }

    /// Whether any caller still waits for this load (always true for a load nobody
    /// shares); unlike [`LoadProgress::sending`] it changes nothing.
    pub(crate) fn waited_for(&self) -> bool {
        let (Some(f), Some(tx)) = (&self.flight, &self.tx) else {
            return true;
        };
        let flights = lock(&f.flights);
        let ours = flights.by_key.get(&f.key).is_some_and(|e| e.id == f.id);
        tx.receiver_count() > usize::from(ours)
    }

    /// The last attempt failed with `error`; the next begins after `wait`.
    pub(crate) fn retrying(&self, error: &GatewayError, wait: Duration) {
        if let Some(tx) = &self.tx {
            tx.send_replace(Progress::Retrying {
                error: error.clone(),
                next: Instant::now() + wait,
            });
        }
    }
}

/// A load in flight: its number (so that only it removes its own entry), where its
/// progress shows, whether it is a refresh, and whether it has sent a request upstream.
struct Flight {
    id: u64,
    progress: watch::Receiver<Progress>,
    refresh: bool,
    sent: bool,
}

/// The loads in flight, one per key at most (the latest, when a refresh started one
/// beside an older load).
#[derive(Default)]
struct Flights {
    next_id: u64,
    by_key: HashMap<PageKey, Flight>,
}

/// Removes a flight's entry when its task ends, however it ends (a panic included), so
/// the map holds only loads that are running.
struct Landing {
    flights: Arc<Mutex<Flights>>,
    key: PageKey,
    id: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut flights = lock(&self.flights);
        if flights
            .by_key
            .get(&self.key)
            .is_some_and(|f| f.id == self.id)
        {
            flights.by_key.remove(&self.key);
        }
    }
}

/// The map of flights is only ever held for a map operation, which cannot leave it
/// half-changed: a poisoned lock is still sound to use.
fn lock(flights: &Mutex<Flights>) -> std::sync::MutexGuard<'_, Flights> {
    flights.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The page cache callers use: in-process tier, optional shared tier, then the loader.
///
/// Concurrent misses of a key share one load. The load runs as its own task, not in any
/// caller: a caller that is cancelled or whose deadline passes leaves it, and the load
/// goes on for the others (and, when everyone has left, to fill the cache). Since no one
/// caller owns it, it gets no caller's deadline: the loader's own limits bound it (for
/// pages, the upstream attempt time-out and retries, `src/app/pages.rs`).
#[derive(Clone)]
pub(crate) struct PageCache {
    memory: Cache<PageKey, Cached>,
    shared: Option<Arc<dyn SharedTier>>,
    settings: CacheConfig,
    flights: Arc<Mutex<Flights>>,
}

impl PageCache {
    /// A cache with the given bounds and, optionally, a shared tier below it.
    pub(crate) fn new(settings: CacheConfig, shared: Option<Arc<dyn SharedTier>>) -> Self {
        let memory = Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|k: &PageKey, v: &Cached| {
                u32::try_from(k.weight() + v.page.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerPageTtl)
            .eviction_listener(|_, _, cause| {
                if cause == RemovalCause::Size {
                    METRICS.cache_evictions.inc();
                }
            })
            .build();
        Self {
            memory,
            shared,
            settings,
            flights: Arc::default(),
        }
    }

    /// The page under `key`, loading it with `load` on a miss; the caller waits until
    /// `deadline` at most. Concurrent misses of one key share a single load, which gets
    /// no deadline (`None`) and may outlive every caller waiting on it.
    ///
    /// With `refresh`, cached copies are skipped and the page is one Confluence produced
    /// after the call (a stream relies on that): the call joins another refresh of the
    /// key only while that one has sent no request yet, else starts a load of its own,
    /// which waits for that refresh to end before it loads (one refresh of a key at
    /// Confluence at a time: identical refreshes make about one request per round trip).
    /// A refreshed page replaces the cached ones only if it succeeds. With a zero TTL
    /// nothing is cached or shared: `load` runs in the caller, under its `deadline`.
    #[cfg(test)]
    pub(crate) async fn get_or_load<F, Fut>(
        &self,
        key: PageKey,
        refresh: bool,
        deadline: Option<Instant>,
        load: F,
    ) -> Result<Bytes, GatewayError>
    where
        F: FnOnce(Option<Instant>, LoadProgress) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, GatewayError>> + Send + 'static,
    {
        self.get_or_load_admitted(key, refresh, deadline, (|| Ok(()), || {}), load)
            .await
    }

    /// As [`PageCache::get_or_load`], asking `admit` first whenever the call would start
    /// a load of its own (a miss no load in flight answers, or a refresh): its error is
    /// this caller's answer, and nothing starts. Joining a load costs nothing. `rests` is
    /// called when the call waits on a load that is not its own (it joined one, or its
    /// refresh waits for the one in flight): the scheduler's queue is not where it waits.
    pub(crate) async fn get_or_load_admitted<F, Fut>(
        &self,
        key: PageKey,
        refresh: bool,
        deadline: Option<Instant>,
        (admit, rests): (impl FnOnce() -> Result<(), GatewayError>, impl FnOnce()),
        load: F,
    ) -> Result<Bytes, GatewayError>
    where
        F: FnOnce(Option<Instant>, LoadProgress) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, GatewayError>> + Send + 'static,
    {
        if self.settings.ttl.is_zero() {
            admit()?;
            // Boxed: the load's future is large, and inline it would make every hit's
            // future (which never runs it) as large, moved on each call.
            return Box::pin(load(deadline, LoadProgress::default())).await;
        }
        if !refresh {
            let hit = self.memory.get(&key).await;
            METRICS.cache_lookup(Tier::Memory, hit.is_some());
            if let Some(hit) = hit {
                return Ok(hit.page);
            }
        }
        let progress = self.join_or_start(key, refresh, (admit, rests), load)?;
        wait(progress, deadline).await
    }

    /// The progress of the load of `key` in flight, or of a new one started for it;
    /// `rests` is called when the call joins the one in flight or, a refresh, waits for it.
    fn join_or_start<F, Fut>(
        &self,
        key: PageKey,
        refresh: bool,
        (admit, rests): (impl FnOnce() -> Result<(), GatewayError>, impl FnOnce()),
        load: F,
    ) -> Result<watch::Receiver<Progress>, GatewayError>
    where
        F: FnOnce(Option<Instant>, LoadProgress) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, GatewayError>> + Send + 'static,
    {
        let mut flights = lock(&self.flights);
        let mut after = None;
        match flights.by_key.get(&key) {
            Some(flight) if !refresh || (flight.refresh && !flight.sent) => {
                rests();
                return Ok(flight.progress.clone());
            }
            Some(flight) if flight.refresh => after = Some(flight.progress.clone()),
            // A plain load may answer from a tier: a refresh never waits for one.
            _ => {}
        }
        admit()?;
        if after.is_some() {
            rests();
        }
        let id = flights.next_id;
        flights.next_id += 1;
        let (tx, rx) = watch::channel(Progress::Loading);
        // A refresh takes the key's place even beside an older load: later misses join
        // the newer page.
        flights.by_key.insert(
            key.clone(),
            Flight {
                id,
                progress: rx.clone(),
                refresh,
                sent: false,
            },
        );
        drop(flights);
        let flight = Arc::new(FlightId {
            flights: self.flights.clone(),
            key: key.clone(),
            id,
        });
        let landing = Landing {
            flights: self.flights.clone(),
            key,
            id,
        };
        let this = self.clone();
        tokio::spawn(async move {
            let tx = Arc::new(tx);
            // Declared after `tx`, so dropped before it even when the load panics: no
            // caller joins a flight whose answer can no longer come.
            let landing = landing;
            if let Some(earlier) = after {
                // Whatever its outcome: this load asks Confluence again either way.
                let _ = wait(earlier, None).await;
            }
            let progress = LoadProgress {
                tx: Some(tx.clone()),
                flight: Some(flight),
            };
            let result = this.run(&landing.key, refresh, load, progress).await;
            // The entry goes before the answer: a failure is not handed to callers who
            // come after it, and a page is in the in-process tier already (`run`), where
            // a later caller, or the flight it starts, finds it.
            drop(landing);
            tx.send_replace(Progress::Done(result));
        });
        Ok(rx)
    }

    /// One load of `key`, run by its flight's task: tiers first (unless refreshing),
    /// then `load`, storing its page in both tiers.
    async fn run<F, Fut>(
        &self,
        key: &PageKey,
        refresh: bool,
        load: F,
        progress: LoadProgress,
    ) -> Result<Bytes, GatewayError>
    where
        F: FnOnce(Option<Instant>, LoadProgress) -> Fut,
        Fut: Future<Output = Result<Bytes, GatewayError>>,
    {
        let ttl = self.settings.ttl;
        if refresh {
            let page = load(None, progress).await?;
            self.store_shared(key, &page, true);
            let cached = Cached {
                page: page.clone(),
                ttl,
            };
            self.memory.insert(key.clone(), cached).await;
            self.settle().await;
            return Ok(page);
        }
        // A load that ended between the caller's miss and this flight's start has put
        // its page here already.
        if let Some(hit) = self.memory.get(key).await {
            return Ok(hit.page);
        }
        if let Some(tier) = &self.shared
            && let Some((page, left)) = tier.get(key).await
        {
            self.fill(key, &page, left.min(ttl)).await;
            return Ok(page);
        }
        let page = load(None, progress).await?;
        self.store_shared(key, &page, false);
        self.fill(key, &page, ttl).await;
        Ok(page)
    }

    /// Puts a loaded page in the in-process tier unless one is there: a refresh that
    /// ended while this load ran holds the newer page.
    async fn fill(&self, key: &PageKey, page: &Bytes, ttl: Duration) {
        let cached = Cached {
            page: page.clone(),
            ttl,
        };
        self.memory.entry(key.clone()).or_insert(cached).await;
        self.settle().await;
    }

    /// Applies a write to the in-process tier now, so `--cache-max-bytes` holds when it
    /// returns. moka applies writes, and evicts or refuses admission for them, only every
    /// 64 writes or 300 ms: meanwhile every page written stays alive, and one slow
    /// reader's stream of misses (~340 KiB a page) kept up to ~25 pages already
    /// delivered, and refused admission, beyond the bound. Only a miss pays for it,
    /// after a conversion of milliseconds; hits leave their reads to moka as before.
    async fn settle(&self) {
        self.memory.run_pending_tasks().await;
        METRICS.cache_bytes.set(self.held_bytes());
    }

    /// Bytes the in-process tier holds (its weigher's sum).
    fn held_bytes(&self) -> i64 {
        i64::try_from(self.memory.weighted_size()).unwrap_or(i64::MAX)
    }

    /// Writes a page to the shared tier off the caller's path: a slow shared tier must
    /// not slow the answer. A refresh replaces what is there; a fill never does, so an
    /// older load finishing late cannot overwrite a refresh.
    fn store_shared(&self, key: &PageKey, page: &Bytes, replace: bool) {
        if let Some(tier) = self.shared.clone() {
            let (key, page, ttl) = (key.clone(), page.clone(), self.settings.ttl);
            tokio::spawn(async move { tier.put(&key, page, ttl, replace).await });
        }
    }

    /// Loads in flight (for tests: entries must go when their loads end).
    #[cfg(test)]
    fn flights_in_progress(&self) -> usize {
        lock(&self.flights).by_key.len()
    }
}

/// Waits for a shared load's answer until `deadline` (the caller's `within_deadline`
/// ends the wait itself); leaves early with the last failure when the load's next
/// attempt would begin only after `deadline`.
async fn wait(
    mut progress: watch::Receiver<Progress>,
    deadline: Option<Instant>,
) -> Result<Bytes, GatewayError> {
    loop {
        match &*progress.borrow_and_update() {
            Progress::Done(result) => return result.clone(),
            Progress::Retrying { error, next } if deadline.is_some_and(|d| *next >= d) => {
                return Err(error.clone());
            }
            Progress::Loading | Progress::Retrying { .. } => {}
        }
        if progress.changed().await.is_err() {
            // The flight's task ended without an answer: it panicked, or the runtime is
            // shutting down.
            return Err(GatewayError::Internal(
                "the page load ended without an answer".into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::{Semaphore, mpsc, oneshot};

    use super::*;
    use crate::audit::{PageQuery, Span, TimeUnit};

    fn key() -> PageKey {
        PageKey {
            base_url: "https://c.example.com".into(),
            credential: "anonymous".into(),
            query: PageQuery {
                span: Span::Since {
                    number: 1,
                    units: TimeUnit::Days,
                },
                search_string: None,
                start: 0,
                limit: 10,
            },
        }
    }

    fn cache(ttl: Duration) -> PageCache {
        PageCache::new(
            CacheConfig {
                ttl,
                max_bytes: 1 << 20,
            },
            None,
        )
    }

    const TTL: Duration = Duration::from_secs(60);

    /// Loads that count their runs, answer `page` once their gate opens, and say when
    /// they have begun.
    #[derive(Clone)]
    struct Loads {
        runs: Arc<AtomicUsize>,
        gate: Arc<Semaphore>,
    }

    impl Default for Loads {
        /// Closed: loads wait until `open`.
        fn default() -> Self {
            Self {
                runs: Arc::default(),
                gate: Arc::new(Semaphore::new(0)),
            }
        }
    }

    impl Loads {
        fn open(&self) {
            self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }

        fn runs(&self) -> usize {
            self.runs.load(Ordering::SeqCst)
        }

        /// A load answering `page`; `began` hears when it runs, and of the deadline it got.
        fn load(
            &self,
            page: &'static str,
            began: Option<oneshot::Sender<Option<Instant>>>,
        ) -> impl FnOnce(Option<Instant>, LoadProgress) -> BoxLoad + Send + 'static {
            let (runs, gate) = (self.runs.clone(), self.gate.clone());
            move |deadline, _| {
                Box::pin(async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    if let Some(tx) = began {
                        let _ = tx.send(deadline);
                    }
                    let _permit = gate.acquire().await.expect("gate");
                    Ok(Bytes::from_static(page.as_bytes()))
                })
            }
        }
    }

    type BoxLoad = std::pin::Pin<Box<dyn Future<Output = Result<Bytes, GatewayError>> + Send>>;

    #[tokio::test]
    async fn a_load_left_by_the_caller_who_started_it_finishes_and_fills_the_cache() {
        let (cache, loads) = (cache(TTL), Loads::default());
        let (began, started) = oneshot::channel();
        let starter = tokio::spawn({
            let (cache, load) = (cache.clone(), loads.load("page", Some(began)));
            async move { cache.get_or_load(key(), false, None, load).await }
        });
        let deadline = started.await.expect("the load began");
        assert_eq!(deadline, None, "a shared load gets no caller's deadline");
        starter.abort();
        assert!(starter.await.expect_err("aborted").is_cancelled());
        loads.open();
        // Joins the load still in flight, or finds the page it stored: one load either way.
        let page = cache
            .get_or_load(key(), false, None, loads.load("another", None))
            .await
            .expect("page");
        assert_eq!(page, "page");
        assert_eq!(loads.runs(), 1);
        assert_eq!(
            cache.flights_in_progress(),
            0,
            "the entry went with the load"
        );
    }

    #[tokio::test]
    async fn pages_past_the_byte_bound_go_as_they_are_written() {
        // 1 MiB holds three pages of 300 KiB. Left to moka, every page written would stay
        // until its next maintenance (64 writes or 300 ms later).
        let cache = cache(TTL);
        for start in 0..20 {
            let mut key = key();
            key.query.start = start;
            let page = Bytes::from(vec![0u8; 300 << 10]);
            let load = move |_, _| async move { Ok(page) };
            cache
                .get_or_load(key, false, None, load)
                .await
                .expect("page");
            let held = cache.memory.iter().count();
            assert!(held <= 3, "{held} pages held after {} written", start + 1);
        }
    }

    #[tokio::test]
    async fn a_refresh_never_joins_an_older_load_and_an_older_load_never_overwrites_it() {
        let cache = cache(TTL);
        let (old, new) = (Loads::default(), Loads::default());
        let (began, started) = oneshot::channel();
        let plain = tokio::spawn({
            let (cache, load) = (cache.clone(), old.load("old", Some(began)));
            async move { cache.get_or_load(key(), false, None, load).await }
        });
        started.await.expect("the plain load began");
        new.open();
        // Bounded: a refresh that joined the older load (its gate still shut) would hang.
        let refresh = cache.get_or_load(key(), true, None, new.load("new", None));
        let refreshed = tokio::time::timeout(Duration::from_secs(5), refresh)
            .await
            .expect("the refresh did not wait on the older load")
            .expect("refresh");
        assert_eq!(refreshed, "new");
        assert_eq!(
            (old.runs(), new.runs()),
            (1, 1),
            "the refresh ran its own load"
        );
        // The older load ends after the refresh: its callers get its page, the cache
        // keeps the refreshed one.
        old.open();
        assert_eq!(plain.await.expect("no panic").expect("page"), "old");
        let cached = cache
            .get_or_load(key(), false, None, Loads::default().load("unused", None))
            .await
            .expect("hit");
        assert_eq!(cached, "new");
        assert_eq!(cache.flights_in_progress(), 0);
    }

    /// A refresh load that counts its runs, marks its request sent once `send` opens
    /// (and says so on `sent`), then answers `page` once `answer` opens.
    fn refresh_load(
        runs: &Arc<AtomicUsize>,
        (send, sent): &(Arc<Semaphore>, mpsc::UnboundedSender<()>),
        answer: &Arc<Semaphore>,
        page: &'static str,
    ) -> impl FnOnce(Option<Instant>, LoadProgress) -> BoxLoad + Send + 'static {
        let (runs, send, sent, answer) = (runs.clone(), send.clone(), sent.clone(), answer.clone());
        move |_, progress| {
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                send.acquire().await.expect("send").forget();
                progress.sending();
                let _ = sent.send(());
                answer.acquire().await.expect("answer").forget();
                Ok(Bytes::from_static(page.as_bytes()))
            })
        }
    }

    #[tokio::test]
    async fn refreshes_share_a_refresh_not_yet_sent_and_queue_behind_one_that_was() {
        let cache = cache(TTL);
        let runs = Arc::new(AtomicUsize::new(0));
        let (sent_tx, mut sent) = mpsc::unbounded_channel();
        let send = (Arc::new(Semaphore::new(0)), sent_tx);
        let answer = Arc::new(Semaphore::new(0));
        let refresh = |page| {
            let (cache, load) = (cache.clone(), refresh_load(&runs, &send, &answer, page));
            tokio::spawn(async move { cache.get_or_load(key(), true, None, load).await })
        };
        let first = refresh("first");
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Not sent yet: a second refresh shares it, its answer is still fresh for both.
        let second = refresh("second");
        // The test runtime has one thread: yielding lets the spawned call join.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        send.0.add_permits(1);
        sent.recv().await.expect("the first load sent its request");
        // Sent: a third refresh must not take its answer, and does not load before it ends.
        let third = refresh("third");
        let fourth = refresh("fourth");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one load so far");
        answer.add_permits(1);
        assert_eq!(first.await.expect("no panic").expect("page"), "first");
        assert_eq!(second.await.expect("no panic").expect("page"), "first");
        send.0.add_permits(1);
        answer.add_permits(1);
        assert_eq!(third.await.expect("no panic").expect("page"), "third");
        assert_eq!(fourth.await.expect("no panic").expect("page"), "third");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(cache.flights_in_progress(), 0);
    }

    async fn defective(_: Option<Instant>, _: LoadProgress) -> Result<Bytes, GatewayError> {
        panic!("a defect in a load")
    }

    async fn refused(_: Option<Instant>, _: LoadProgress) -> Result<Bytes, GatewayError> {
        Err(GatewayError::Internal("refused".into()))
    }

    #[tokio::test]
    async fn a_panicking_load_fails_its_callers_and_leaves_no_entry() {
        let cache = cache(TTL);
        let err = cache
            .get_or_load(key(), false, None, defective)
            .await
            .expect_err("the load panicked");
        assert!(matches!(err, GatewayError::Internal(_)), "{err:?}");
        assert_eq!(cache.flights_in_progress(), 0);
        let loads = Loads::default();
        loads.open();
        let page = cache
            .get_or_load(key(), false, None, loads.load("page", None))
            .await
            .expect("a new load");
        assert_eq!(page, "page");
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_entries_go_with_their_loads() {
        let cache = cache(TTL);
        for _ in 0..3 {
            cache
                .get_or_load(key(), false, None, refused)
                .await
                .expect_err("failed");
            assert_eq!(cache.flights_in_progress(), 0);
        }
        let loads = Loads::default();
        loads.open();
        let page = cache.get_or_load(key(), false, None, loads.load("page", None));
        assert_eq!(page.await.expect("page"), "page");
        assert_eq!(loads.runs(), 1, "the failures left nothing cached");
    }

    #[tokio::test]
    async fn a_caller_leaves_with_the_last_failure_when_the_next_attempt_is_past_its_deadline() {
        let cache = cache(TTL);
        let gate = Arc::new(Semaphore::new(0));
        let (began, started) = oneshot::channel::<()>();
        let load = {
            let gate = gate.clone();
            move |_: Option<Instant>, progress: LoadProgress| async move {
                let limited = GatewayError::Upstream {
                    failure: crate::error::UpstreamFailure::RateLimited,
                    http_status: Some(429),
                    message: "rate limited".into(),
                    retry_after: Some(Duration::from_secs(60)),
                    source: None,
                };
                progress.retrying(&limited, Duration::from_secs(60));
                let _ = began.send(());
                let _permit = gate.acquire().await.expect("gate");
                Ok(Bytes::from_static(b"page"))
            }
        };
        let patient = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get_or_load(key(), false, None, load).await }
        });
        started.await.expect("the load began");
        let soon = Some(Instant::now() + Duration::from_secs(5));
        let unused = Loads::default().load("unused", None);
        // Bounded, so that a caller who stays fails this test rather than hanging it.
        let leaves = cache.get_or_load(key(), false, soon, unused);
        let err = tokio::time::timeout(Duration::from_secs(2), leaves)
            .await
            .expect("left at once, well before its deadline")
            .expect_err("the next attempt is past this caller's deadline");
        assert_eq!(err.reason(), "UPSTREAM_RATE_LIMITED", "{err:?}");
        // A caller without a deadline stays for the next attempt.
        gate.add_permits(1);
        assert_eq!(patient.await.expect("no panic").expect("page"), "page");
    }

    #[tokio::test]
    async fn a_zero_ttl_runs_each_load_in_its_caller_under_its_deadline() {
        let (cache, loads) = (cache(Duration::ZERO), Loads::default());
        let deadline = Instant::now() + Duration::from_secs(5);
        let (began, started) = oneshot::channel();
        let first = tokio::spawn({
            let (cache, load) = (cache.clone(), loads.load("a", Some(began)));
            async move { cache.get_or_load(key(), false, Some(deadline), load).await }
        });
        assert_eq!(started.await.expect("began"), Some(deadline));
        loads.open();
        let second = cache.get_or_load(key(), false, None, loads.load("b", None));
        assert_eq!(second.await.expect("page"), "b", "nothing joined");
        assert_eq!(first.await.expect("no panic").expect("page"), "a");
        let third = cache.get_or_load(key(), false, None, loads.load("c", None));
        assert_eq!(third.await.expect("page"), "c", "nothing cached");
        assert_eq!(loads.runs(), 3);
        assert_eq!(cache.flights_in_progress(), 0);
    }
}
