//! The `--upstream-concurrency` slots, shared fairly between callers: start-time fair
//! queueing (Goyal et al., the weighted form of round robin). Each caller has a virtual
//! time that a granted slot advances by `1 / weight`; a free slot goes to the waiting
//! caller whose virtual time is lowest, and a caller that was idle starts from the
//! current virtual time, neither ahead nor behind. So a caller with one request waiting
//! gets one of the next slots to free up however many another caller has queued, and
//! callers with work waiting get slots in the ratio of their weights. Within a caller,
//! the request needed soonest goes first (a stream's next page before its look-ahead).
//!
//! A caller may also have a cap on its slots in flight (unverified passthrough
//! credentials share one small cap, `src/app/pages.rs`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use tokio::sync::oneshot;

use crate::metrics::METRICS;

/// Whose request it is, as the scheduler counts it.
#[derive(Clone, Debug)]
pub(crate) struct Share {
    /// The caller's identity (never a secret).
    pub id: Arc<str>,
    /// What metrics show for it (a bounded set).
    pub label: Arc<str>,
    /// Its slots against other callers' while both wait (at least 1).
    pub weight: u32,
    /// Most slots it holds at once, if capped.
    pub cap: Option<usize>,
    /// How soon the request's answer is needed: 0 for now, `n` for a stream's `n`th page
    /// ahead. Lower goes first within the caller.
    pub depth: u32,
}

impl Share {
    /// The one share of calls nobody identified.
    #[cfg(test)]
    pub(crate) fn anonymous() -> Self {
        Self {
            id: "anonymous".into(),
            label: "anonymous".into(),
            weight: 1,
            cap: None,
            depth: 0,
        }
    }

    /// The same caller, for a request needed `depth` pages from now.
    #[cfg(test)]
    pub(crate) fn at_depth(&self, depth: u32) -> Self {
        Self {
            depth,
            ..self.clone()
        }
    }
}

/// Fair-shared slots.
#[derive(Debug)]
pub(crate) struct FairSlots {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    free: usize,
    /// The start tag of the last slot granted.
    now: f64,
    seq: u64,
    callers: HashMap<Arc<str>, Queue>,
}

#[derive(Debug)]
struct Queue {
    label: Arc<str>,
    weight: f64,
    cap: usize,
    /// Virtual time its next slot starts at (at least `State::now` once it waits).
    next: f64,
    in_flight: usize,
    /// Requests waiting, by (depth, arrival).
    waiting: BTreeMap<(u32, u64), Waiter>,
}

#[derive(Debug)]
struct Waiter {
    since: Instant,
    grant: oneshot::Sender<()>,
}

/// Callers kept after going idle, at most, before idle ones are dropped (with
/// passthrough each credential is a caller).
const KEEP_IDLE: usize = 1024;

impl FairSlots {
    /// `slots` slots (at least 1).
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                free: slots.max(1),
                now: 0.0,
                seq: 0,
                callers: HashMap::new(),
            })),
        }
    }

    /// A slot for `share`'s request, when its turn comes. Dropped while waiting, the
    /// request leaves the queue (a slot granted meanwhile goes to the next).
    pub(crate) async fn acquire(&self, share: &Share) -> Result<Slot, Closed> {
        let (key, rx) = {
            let mut st = lock(&self.state);
            let now = st.now;
            st.seq += 1;
            let seq = st.seq;
            let q = st.callers.entry(share.id.clone()).or_insert_with(|| Queue {
                label: share.label.clone(),
                weight: 1.0,
                cap: usize::MAX,
                next: now,
                in_flight: 0,
                waiting: BTreeMap::new(),
            });
            // Settings may change between calls (a reloaded tokens file).
            q.weight = f64::from(share.weight.max(1));
            q.cap = share.cap.unwrap_or(usize::MAX).max(1);
            if q.waiting.is_empty() {
                // Nothing queued: no credit for the time it asked nothing (the start tag
                // of fair queueing, max(virtual time, its last finish)).
                q.next = q.next.max(now);
            }
            let (tx, rx) = oneshot::channel();
            let key = (share.depth, seq);
            q.waiting.insert(
                key,
                Waiter {
                    since: Instant::now(),
                    grant: tx,
                },
            );
            st.dispatch();
            (key, rx)
        };
        let mut waiting = Waiting {
            state: self.state.clone(),
            caller: share.id.clone(),
            key,
            done: false,
        };
        rx.await.map_err(|_| Closed)?;
        waiting.done = true;
        Ok(Slot {
            state: self.state.clone(),
            caller: share.id.clone(),
        })
    }

    /// Slots free now (for tests).
    #[cfg(test)]
    pub(crate) fn free(&self) -> usize {
        lock(&self.state).free
    }
}

/// The slots were dropped while a request waited (never while the gateway runs).
#[derive(Debug)]
pub(crate) struct Closed;

impl State {
    /// Grants free slots to the waiting requests whose turn it is.
    fn dispatch(&mut self) {
        while self.free > 0 {
            let Some(id) = self
                .callers
                .iter()
                .filter(|(_, q)| !q.waiting.is_empty() && q.in_flight < q.cap)
                .min_by(|(_, a), (_, b)| a.next.total_cmp(&b.next))
                .map(|(id, _)| id.clone())
            else {
                return;
            };
            let now = self.now;
            let Some(q) = self.callers.get_mut(&id) else {
                return;
            };
            let Some((_, waiter)) = q.waiting.pop_first() else {
                return;
            };
            if waiter.grant.send(()).is_err() {
                // Its caller left between this and its `Waiting` guard running.
                continue;
            }
            let start = q.next.max(now);
            q.next = start + 1.0 / q.weight;
            q.in_flight += 1;
            METRICS.caller_granted(&q.label, waiter.since.elapsed());
            self.now = start;
            self.free -= 1;
            // A caller held back by its own cap earns no credit meanwhile: once under it
            // again, it must not take the next slots by right of turns it could not use.
            for q in self.callers.values_mut() {
                if q.in_flight >= q.cap && !q.waiting.is_empty() {
                    q.next = q.next.max(start);
                }
            }
        }
    }

    /// A slot of `caller` came back.
    fn release(&mut self, caller: &str) {
        self.free += 1;
        if let Some(q) = self.callers.get_mut(caller) {
            q.in_flight = q.in_flight.saturating_sub(1);
        }
        if self.callers.len() > KEEP_IDLE {
            let now = self.now;
            self.callers
                .retain(|_, q| !q.waiting.is_empty() || q.in_flight > 0 || q.next > now);
        }
        self.dispatch();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request waiting for its slot; dropped before it got one, it leaves the queue, and a
/// slot granted in the meantime is handed on.
struct Waiting {
    state: Arc<Mutex<State>>,
    caller: Arc<str>,
    key: (u32, u64),
    done: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = lock(&self.state);
        let still_waiting = st
            .callers
            .get_mut(&self.caller)
            .is_some_and(|q| q.waiting.remove(&self.key).is_some());
        if !still_waiting {
            // Granted, but nobody will use it.
            st.release(&self.caller);
        }
    }
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Arc<Mutex<State>>,
    caller: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.state).release(&self.caller);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use proptest::prelude::*;

    use super::*;

    fn share(id: &str, weight: u32) -> Share {
        Share {
            id: id.into(),
            label: "other".into(),
            weight,
            cap: None,
            depth: 0,
        }
    }

    /// Queues `n` requests of `s` behind the slots held, in order; returns them as they
    /// will be granted, each recording its name on a channel when it gets its slot.
    fn queue(
        slots: &Arc<FairSlots>,
        s: &Share,
        n: usize,
        order: &tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..n)
            .map(|i| {
                let (slots, s, order) = (slots.clone(), s.clone(), order.clone());
                tokio::spawn(async move {
                    let slot = slots.acquire(&s).await.expect("open");
                    let _ = order.send(format!("{}{}", s.id, s.depth * 100 + i as u32));
                    // Held until the test lets the next one through.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    drop(slot);
                })
            })
            .collect()
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_with_one_request_waits_one_turn_whatever_another_queued() {
        let slots = Arc::new(FairSlots::new(1));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let hold = slots.acquire(&share("g", 1)).await.expect("open");
        let greedy = queue(&slots, &share("g", 1), 20, &tx);
        settle().await;
        let polite = queue(&slots, &share("p", 1), 1, &tx);
        settle().await;
        drop(hold);
        for h in greedy.into_iter().chain(polite) {
            h.await.expect("no panic");
        }
        drop(tx);
        let mut order = Vec::new();
        while let Some(x) = rx.recv().await {
            order.push(x);
        }
        let at = order.iter().position(|x| x == "p0").expect("p served");
        assert!(at <= 1, "the polite caller waited {at} turns: {order:?}");
        assert_eq!(order.len(), 21);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_waiting_share_slots_by_weight() {
        let slots = Arc::new(FairSlots::new(1));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let hold = slots.acquire(&share("x", 1)).await.expect("open");
        let heavy = queue(&slots, &share("h", 3), 30, &tx);
        let light = queue(&slots, &share("l", 1), 30, &tx);
        settle().await;
        drop(hold);
        let mut first = Vec::new();
        for _ in 0..20 {
            first.push(rx.recv().await.expect("granted"));
        }
        let heavy_share = first.iter().filter(|x| x.starts_with('h')).count();
        assert!(
            (14..=16).contains(&heavy_share),
            "weight 3 against 1 got {heavy_share} of 20: {first:?}"
        );
        for h in heavy.into_iter().chain(light) {
            h.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn within_a_caller_the_page_needed_soonest_goes_first() {
        let slots = Arc::new(FairSlots::new(1));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let hold = slots.acquire(&share("s", 1)).await.expect("open");
        let deep = queue(&slots, &share("s", 1).at_depth(10), 1, &tx);
        settle().await;
        let next = queue(&slots, &share("s", 1).at_depth(0), 1, &tx);
        settle().await;
        drop(hold);
        assert_eq!(
            rx.recv().await.as_deref(),
            Some("s0"),
            "the next page first"
        );
        assert_eq!(rx.recv().await.as_deref(), Some("s1000"));
        for h in deep.into_iter().chain(next) {
            h.await.expect("no panic");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_capped_caller_holds_at_most_its_cap_and_leaving_frees_its_place() {
        let slots = Arc::new(FairSlots::new(4));
        let capped = Share {
            cap: Some(1),
            ..share("u", 1)
        };
        let first = slots.acquire(&capped).await.expect("open");
        let second = tokio::spawn({
            let (slots, capped) = (slots.clone(), capped.clone());
            async move { slots.acquire(&capped).await.map(drop).is_ok() }
        });
        settle().await;
        assert!(!second.is_finished(), "over its cap: it waits");
        assert_eq!(slots.free(), 3, "while the others stay free");
        // A waiter that leaves takes nothing with it.
        let (abandoned, held) = {
            let (slots, capped) = (slots.clone(), capped.clone());
            let t = tokio::spawn(async move { slots.acquire(&capped).await.map(drop) });
            settle().await;
            t.abort();
            (t, ())
        };
        let _ = (abandoned.await, held);
        drop(first);
        assert!(second.await.expect("no panic"));
        settle().await;
        assert_eq!(slots.free(), 4, "every slot back");
    }

    /// One request of a schedule: whose, when it arrives, how long it holds its slot, how
    /// soon it is needed.
    #[derive(Clone, Debug)]
    struct Arrival {
        caller: usize,
        at_ms: u64,
        hold_ms: u64,
        depth: u32,
    }

    /// What happened, in order.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Event {
        /// Caller `0` asked, with nothing of its own queued and a slot of its cap free.
        Fresh(usize),
        Asked(usize),
        Granted(usize),
    }

    /// Each caller's weight and cap.
    type Callers = Vec<(u32, Option<usize>)>;

    fn schedule() -> impl Strategy<Value = (usize, Callers, Vec<Arrival>)> {
        (
            1usize..4,
            prop::collection::vec((1u32..4, prop::option::of(1usize..3)), 2..5),
        )
            .prop_flat_map(|(slots, callers)| {
                let n = callers.len();
                let arrival = (0..n, 0u64..200, 1u64..40, 0u32..3).prop_map(
                    |(caller, at_ms, hold_ms, depth)| Arrival {
                        caller,
                        at_ms,
                        hold_ms,
                        depth,
                    },
                );
                (
                    Just(slots),
                    Just(callers),
                    prop::collection::vec(arrival, 1..60),
                )
            })
    }

    /// Runs `arrivals` against `slots` slots shared by `callers` (weight, cap), on a
    /// paused clock; the events in order, and the most slots ever held at once.
    fn run(
        slots: usize,
        callers: &[(u32, Option<usize>)],
        arrivals: &[Arrival],
    ) -> (Vec<Event>, usize, Vec<usize>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let fair = Arc::new(FairSlots::new(slots));
            let log = Arc::new(Mutex::new(Vec::new()));
            let held = Arc::new(AtomicUsize::new(0));
            let peak = Arc::new(AtomicUsize::new(0));
            let per_caller: Arc<Vec<AtomicUsize>> =
                Arc::new(callers.iter().map(|_| AtomicUsize::new(0)).collect());
            let peaks: Arc<Vec<AtomicUsize>> =
                Arc::new(callers.iter().map(|_| AtomicUsize::new(0)).collect());
            let waiting: Arc<Vec<AtomicUsize>> =
                Arc::new(callers.iter().map(|_| AtomicUsize::new(0)).collect());
            let mut tasks = Vec::new();
            for a in arrivals.iter().cloned() {
                let (weight, cap) = callers[a.caller];
                let share = Share {
                    id: format!("c{}", a.caller).into(),
                    label: "other".into(),
                    weight,
                    cap,
                    depth: a.depth,
                };
                let (fair, log, held, peak) =
                    (fair.clone(), log.clone(), held.clone(), peak.clone());
                let (per_caller, peaks, waiting) =
                    (per_caller.clone(), peaks.clone(), waiting.clone());
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(a.at_ms)).await;
                    let c = a.caller;
                    let fresh = waiting[c].load(Ordering::SeqCst) == 0
                        && per_caller[c].load(Ordering::SeqCst) < cap.unwrap_or(usize::MAX);
                    log.lock().expect("log").push(if fresh {
                        Event::Fresh(c)
                    } else {
                        Event::Asked(c)
                    });
                    waiting[c].fetch_add(1, Ordering::SeqCst);
                    let slot = fair.acquire(&share).await.expect("open");
                    waiting[c].fetch_sub(1, Ordering::SeqCst);
                    log.lock().expect("log").push(Event::Granted(c));
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let mine = per_caller[c].fetch_add(1, Ordering::SeqCst) + 1;
                    peaks[c].fetch_max(mine, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(a.hold_ms)).await;
                    per_caller[c].fetch_sub(1, Ordering::SeqCst);
                    held.fetch_sub(1, Ordering::SeqCst);
                    drop(slot);
                }));
            }
            for t in tasks {
                t.await.expect("every request is granted in the end");
            }
            assert_eq!(fair.free(), slots, "every slot came back");
            let log = log.lock().expect("log").clone();
            let peaks = peaks.iter().map(|p| p.load(Ordering::SeqCst)).collect();
            (log, peak.load(Ordering::SeqCst), peaks)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(300)
        ))]

        /// Whatever the callers, weights, caps and arrivals: every request gets a slot,
        /// never more than the slots are held, no caller holds more than its cap, and a
        /// caller asking with nothing of its own queued waits at most one round: another
        /// caller is served at most its weight's worth of the asker's turn (the asker's
        /// last turn may still count), plus one tie, first.
        #[test]
        fn every_request_is_served_within_one_round_of_the_others(
            (slots, callers, arrivals) in schedule()
        ) {
            let (log, peak, peaks) = run(slots, &callers, &arrivals);
            prop_assert!(peak <= slots, "{peak} slots held of {slots}");
            for (c, (_, cap)) in callers.iter().enumerate() {
                prop_assert!(peaks[c] <= cap.unwrap_or(usize::MAX), "caller {c} held {}", peaks[c]);
            }
            for (i, e) in log.iter().enumerate() {
                let Event::Fresh(f) = *e else { continue };
                let mut others = vec![0usize; callers.len()];
                for later in &log[i + 1..] {
                    match *later {
                        Event::Granted(g) if g == f => break,
                        Event::Granted(g) => others[g] += 1,
                        _ => {}
                    }
                }
                for (g, n) in others.iter().enumerate() {
                    let round = callers[g].0 / callers[f].0 + 1;
                    prop_assert!(
                        *n as u32 <= round,
                        "caller {f} asked at event {i} and waited for {others:?}: {log:?}"
                    );
                }
            }
        }
    }
}
