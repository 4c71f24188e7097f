//! The `--upstream-concurrency` slots, shared fairly between callers: start-time fair
//! queueing (Goyal et al., the weighted form of round robin). Each caller has a virtual
//! time that a granted slot advances by `1 / weight`; a free slot goes to the waiting
//! caller whose virtual time is lowest, and a caller with nothing queued starts from the
//! current virtual time, neither ahead nor behind. So a caller with one request waiting
//! gets one of the next slots to free up however many another caller has queued, and
//! callers with work waiting get slots in the ratio of their weights.
//!
//! A slot that frees up may still be a whole round trip away when every slot is busy
//! with one caller's requests. So a caller that asked lately ([`ACTIVE`]) and holds no
//! slot now has one kept free for it: a caller already holding slots does not take the
//! last free ones while such callers are owed them (half the slots at most). A caller
//! holding none may always take one, so nobody waits on reservations for long; they
//! lapse after [`ACTIVE`].
//!
//! Within a caller, the request needed soonest goes first, then the oldest: each carries
//! its [`Urgency`], how many pages it runs ahead of what its stream reads now, read when
//! a slot is granted. A stream lowers it as its reader catches up (the page it waits for
//! is 0), so its next page goes before its look-ahead, and look-ahead that is never
//! needed never delays anything.
//!
//! A caller may also have a cap on its slots in flight (unverified passthrough
//! credentials share one small cap, `src/app/pages.rs`). And each request belongs to a
//! group, its credential, whose slots in flight are limited by the credential's current
//! pace (`pacing.rs`): the slots are shared fairly within that limit.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

// tokio's clock, so that tests on a paused clock see reservations lapse and deadlines
// pass (it is the system's monotonic clock otherwise).
use tokio::{
    sync::{Notify, oneshot},
    time::Instant,
};

use crate::metrics::METRICS;

/// How long a caller that asked counts as active: a slot is kept free for it meanwhile.
/// Long enough for a caller that calls every few seconds; at most half the slots are
/// ever kept so (`State::dispatch`), so reservations cost at most half the capacity.
pub(crate) const ACTIVE: Duration = Duration::from_secs(5);

/// How many pages a request runs ahead of what its reader needs now (0: needed now);
/// its owner may lower it while the request waits, and the scheduler reads it when a
/// slot is granted. A request whose urgency rose queues behind those already as urgent,
/// as if it arrived then: a stream's promoted look-ahead takes its turn, not the turns
/// of requests that were urgent all along.
///
/// It also says when its request has *entered*: reached this scheduler's queue, joined a
/// load already in flight, or ended. A stream's fetches run as tasks, which tokio first
/// polls in no set order; each waits for the one made before it to enter
/// ([`Urgency::after`]), so free slots go to them in the order they were made.
#[derive(Clone, Debug, Default)]
pub(crate) struct Urgency(Option<Arc<Pages>>);

/// An urgency its owner can lower.
#[derive(Debug)]
struct Pages {
    ahead: AtomicU32,
    /// When (in [`next_order`]'s count) it last rose.
    since: AtomicU64,
    /// Whether its request has entered, and the wake of those waiting for that.
    entered: AtomicBool,
    entry: Notify,
}

/// How long a request waits at most for the one made before it to enter: that one
/// normally enters within microseconds, or after a lookup in the shared tier. A path
/// that never enters costs the next request this much, against the round trip to
/// Confluence (~100 ms) that a request taking another's slot costs it.
const ENTRY_WAIT: Duration = Duration::from_millis(20);

/// A count shared by every request and urgency change: the order of arrivals.
fn next_order() -> u64 {
    static ORDER: AtomicU64 = AtomicU64::new(0);
    ORDER.fetch_add(1, Ordering::Relaxed)
}

impl Urgency {
    /// Needed now, and for good.
    pub(crate) fn now() -> Self {
        Self(None)
    }

    /// `pages` ahead, for its owner to lower through [`Urgency::set`].
    pub(crate) fn ahead(pages: usize) -> Self {
        Self(Some(Arc::new(Pages {
            ahead: AtomicU32::new(u32::try_from(pages).unwrap_or(u32::MAX)),
            since: AtomicU64::new(0),
            entered: AtomicBool::new(false),
            entry: Notify::new(),
        })))
    }

    /// Its request has entered (queued for a slot, joined a load, or ended).
    pub(crate) fn enter(&self) {
        if let Some(p) = &self.0
            && !p.entered.swap(true, Ordering::AcqRel)
        {
            p.entry.notify_waiters();
        }
    }

    /// Once its request has entered (at once for [`Urgency::now`]).
    async fn entered(&self) {
        let Some(p) = &self.0 else {
            return;
        };
        let notified = p.entry.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check: an `enter` between the two still wakes it.
        notified.as_mut().enable();
        if !p.entered.load(Ordering::Acquire) {
            notified.await;
        }
    }

    /// Waits until `earlier`, the request its owner made just before this one, has
    /// entered, [`ENTRY_WAIT`] at most; at once when this one is needed now.
    async fn after(&self, earlier: &Urgency) {
        if self.needed_now() {
            return;
        }
        let _ = tokio::time::timeout(ENTRY_WAIT, earlier.entered()).await;
    }

    /// Enters it when dropped: held by its request's task, whose end, however it comes,
    /// lets the next request go.
    fn entering(&self) -> Entering {
        Entering(self.clone())
    }

    /// Now `pages` ahead.
    pub(crate) fn set(&self, pages: usize) {
        if let Some(p) = &self.0 {
            let pages = u32::try_from(pages).unwrap_or(u32::MAX);
            if p.ahead.swap(pages, Ordering::Relaxed) > pages {
                p.since.store(next_order(), Ordering::Relaxed);
            }
        }
    }

    /// Whether the page is needed now (0 pages ahead).
    pub(crate) fn needed_now(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|p| p.ahead.load(Ordering::Relaxed) == 0)
    }

    /// Its place in its caller's queue, which arrived at `order`: pages ahead, then
    /// arrival (or when it last rose).
    fn key(&self, order: u64) -> (u32, u64) {
        match &self.0 {
            None => (0, order),
            Some(p) => (
                p.ahead.load(Ordering::Relaxed),
                order.max(p.since.load(Ordering::Relaxed)),
            ),
        }
    }

    #[cfg(test)]
    fn pages(&self) -> u32 {
        self.key(0).0
    }
}

/// The order one caller makes its requests in (a stream's, a follower's): each waits, for
/// [`ENTRY_WAIT`] at most, until the one made before it has entered ([`Urgency::after`]).
#[derive(Debug, Default)]
pub(crate) struct InOrder(Mutex<Urgency>);

impl InOrder {
    /// The place of the request of `urgency`, made now, after the one made last. Made
    /// before its task is spawned: a task aborted before it first runs enters too.
    pub(crate) fn next(&self, urgency: &Urgency) -> Turn {
        let earlier = std::mem::replace(
            &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner),
            urgency.clone(),
        );
        Turn {
            urgency: urgency.clone(),
            earlier,
            _entering: urgency.entering(),
        }
    }
}

/// A request's place in its caller's order ([`InOrder::next`]); held by its task to the
/// end, whose drop enters the request, however it ends.
#[derive(Debug)]
pub(crate) struct Turn {
    urgency: Urgency,
    earlier: Urgency,
    _entering: Entering,
}

impl Turn {
    /// Once the request made before it has entered ([`Urgency::after`]).
    pub(crate) async fn wait(&self) {
        self.urgency.after(&self.earlier).await;
    }
}

/// Enters its urgency when dropped ([`Urgency::entering`]).
#[derive(Debug)]
struct Entering(Urgency);

impl Drop for Entering {
    fn drop(&mut self) {
        self.0.enter();
    }
}

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
    /// How soon the request's answer is needed. Lower goes first within the caller.
    pub urgency: Urgency,
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
            urgency: Urgency::now(),
        }
    }

    /// The same caller, for a request needed `depth` pages from now.
    #[cfg(test)]
    pub(crate) fn at_depth(&self, depth: usize) -> Self {
        Self {
            urgency: Urgency::ahead(depth),
            ..self.clone()
        }
    }
}

/// Fair-shared slots.
#[derive(Debug)]
pub(crate) struct FairSlots {
    state: Shared,
}

type Shared = Arc<Mutex<State>>;

#[derive(Debug)]
struct State {
    /// All slots, and those free now.
    slots: usize,
    free: usize,
    /// The start tag of the last slot granted.
    now: f64,
    callers: HashMap<Arc<str>, Queue>,
    /// Requests of each group (credential) in flight and waiting, and its limit.
    groups: HashMap<Arc<str>, Group>,
    /// A dispatch is due then (a reservation lapses), and a task waits for it.
    wake_at: Option<Instant>,
}

#[derive(Debug)]
struct Queue {
    label: Arc<str>,
    weight: f64,
    cap: usize,
    /// Virtual time its next slot starts at (at least `State::now` once it waits).
    next: f64,
    in_flight: usize,
    /// When it last asked or gave a slot back.
    seen: Instant,
    /// Requests waiting, by arrival ([`next_order`]).
    waiting: BTreeMap<u64, Waiter>,
}

impl Queue {
    /// Holds nothing and waits for nothing, but asked lately: a slot is kept for it.
    fn owed(&self, now: Instant) -> bool {
        self.in_flight == 0 && self.waiting.is_empty() && now.duration_since(self.seen) < ACTIVE
    }
}

#[derive(Debug)]
struct Waiter {
    since: Instant,
    urgency: Urgency,
    group: Arc<str>,
    /// Told the group's requests in flight, itself included, when it is let go.
    grant: oneshot::Sender<usize>,
}

/// The requests of one credential.
#[derive(Debug)]
struct Group {
    in_flight: usize,
    waiting: usize,
    /// Most in flight at once (its pace).
    limit: usize,
}

impl Group {
    /// Slots it may take now.
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.in_flight)
    }
}

/// Slots `group` may take now (none if it is unknown: it has nothing waiting).
fn room(groups: &HashMap<Arc<str>, Group>, group: &str) -> usize {
    groups.get(group).map_or(0, Group::room)
}

/// Callers kept after going idle, at most, before idle ones are dropped (with
/// passthrough each credential is a caller).
const KEEP_IDLE: usize = 1024;

impl FairSlots {
    /// `slots` slots (at least 1).
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                slots: slots.max(1),
                free: slots.max(1),
                now: 0.0,
                callers: HashMap::new(),
                groups: HashMap::new(),
                wake_at: None,
            })),
        }
    }

    /// A slot for `share`'s request, when its turn comes, with no group limit.
    #[cfg(test)]
    pub(crate) async fn acquire(&self, share: &Share) -> Result<Slot, Closed> {
        self.acquire_paced(share, "", usize::MAX).await
    }

    /// A slot for `share`'s request of `group` (its credential), when its turn comes and
    /// fewer than `limit` of the group's requests are in flight. Dropped while waiting,
    /// the request leaves the queue (a slot granted meanwhile goes to the next).
    pub(crate) async fn acquire_paced(
        &self,
        share: &Share,
        group: &str,
        limit: usize,
    ) -> Result<Slot, Closed> {
        let group: Arc<str> = group.into();
        let (key, rx) = {
            let mut st = lock(&self.state);
            let g = st.groups.entry(group.clone()).or_insert(Group {
                in_flight: 0,
                waiting: 0,
                limit,
            });
            g.limit = limit.max(1);
            g.waiting += 1;
            let (now, arrived) = (st.now, Instant::now());
            let seq = next_order();
            let q = st.callers.entry(share.id.clone()).or_insert_with(|| Queue {
                label: share.label.clone(),
                weight: 1.0,
                cap: usize::MAX,
                next: now,
                in_flight: 0,
                seen: arrived,
                waiting: BTreeMap::new(),
            });
            // Settings may change between calls (a reloaded tokens file).
            q.weight = f64::from(share.weight.max(1));
            q.cap = share.cap.unwrap_or(usize::MAX).max(1);
            q.seen = arrived;
            if q.waiting.is_empty() {
                // Nothing queued: no credit for the time it asked nothing (the start tag
                // of fair queueing, max(virtual time, its last finish)).
                q.next = q.next.max(now);
            }
            let (tx, rx) = oneshot::channel();
            let key = seq;
            q.waiting.insert(
                key,
                Waiter {
                    since: arrived,
                    urgency: share.urgency.clone(),
                    group: group.clone(),
                    grant: tx,
                },
            );
            dispatch(&mut st, &self.state);
            (key, rx)
        };
        // Queued (or granted): the request its owner made next may queue behind it.
        share.urgency.enter();
        let mut waiting = Waiting {
            state: self.state.clone(),
            caller: share.id.clone(),
            group: group.clone(),
            key,
            done: false,
        };
        let level = rx.await.map_err(|_| Closed)?;
        waiting.done = true;
        Ok(Slot {
            state: self.state.clone(),
            caller: share.id.clone(),
            group,
            level,
        })
    }

    /// `group`'s limit is now `limit`: a raised one may let waiting requests go at once.
    pub(crate) fn set_limit(&self, group: &str, limit: usize) {
        let mut st = lock(&self.state);
        if let Some(g) = st.groups.get_mut(group) {
            g.limit = limit.max(1);
            dispatch(&mut st, &self.state);
        }
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

/// Grants free slots to the waiting requests whose turn it is; when a reservation holds
/// a request back, makes sure a dispatch comes once it lapses. Long: choosing the caller
/// (fair share, caps, reservations, the group's pace) and granting its request update
/// the same borrowed state in one pass.
fn dispatch(st: &mut State, shared: &Shared) {
    let mut held_back = false;
    while st.free > 0 {
        let now = Instant::now();
        let owed = st
            .callers
            .values()
            .filter(|q| q.owed(now))
            .count()
            .min(st.slots / 2);
        let free = st.free;
        let groups = &st.groups;
        let candidate = st
            .callers
            .iter()
            .filter(|(_, q)| q.in_flight < q.cap)
            .filter_map(|(id, q)| {
                // The slots its request may take: the free ones, within its group's pace.
                let room = q
                    .waiting
                    .values()
                    .map(|w| room(groups, &w.group).min(free))
                    .max()
                    .filter(|&room| room > 0)?;
                Some((id, q, room))
            })
            .filter(|(_, q, room)| {
                // Callers holding slots leave the ones owed to recent askers.
                let may = q.in_flight == 0 || *room > owed;
                held_back |= !may;
                may
            })
            .map(|(id, q, _)| (id, q))
            // A tie goes to the caller holding fewer slots.
            .min_by(|(_, a), (_, b)| {
                a.next
                    .total_cmp(&b.next)
                    .then(a.in_flight.cmp(&b.in_flight))
            })
            .map(|(id, _)| id.clone());
        let Some(id) = candidate else {
            break;
        };
        let vnow = st.now;
        let State {
            callers, groups, ..
        } = &mut *st;
        let Some(q) = callers.get_mut(&id) else {
            break;
        };
        // The most urgent of those its group's pace lets go, then the oldest (a scan: a
        // caller's queue is a few hundred at most, and urgencies change while requests
        // wait).
        let Some(key) = q
            .waiting
            .iter()
            .filter(|(_, w)| room(groups, &w.group) > 0)
            .min_by_key(|(seq, w)| w.urgency.key(**seq))
            .map(|(seq, _)| *seq)
        else {
            break;
        };
        let Some(waiter) = q.waiting.remove(&key) else {
            break;
        };
        if let Some(g) = groups.get_mut(&waiter.group) {
            g.waiting = g.waiting.saturating_sub(1);
        }
        let level = groups.get(&waiter.group).map_or(1, |g| g.in_flight + 1);
        if waiter.grant.send(level).is_err() {
            // Its caller left between this and its `Waiting` guard running.
            forget_if_idle(groups, &waiter.group);
            continue;
        }
        if let Some(g) = groups.get_mut(&waiter.group) {
            g.in_flight += 1;
        }
        let start = q.next.max(vnow);
        q.next = start + 1.0 / q.weight;
        q.in_flight += 1;
        METRICS.caller_granted(&q.label, waiter.since.elapsed());
        st.now = start;
        st.free -= 1;
        // A caller held back by its own cap earns no credit meanwhile: once under it
        // again, it must not take the next slots by right of turns it could not use.
        for q in st.callers.values_mut() {
            if q.in_flight >= q.cap && !q.waiting.is_empty() {
                q.next = q.next.max(start);
            }
        }
    }
    if held_back {
        wake_when_reservations_lapse(st, shared);
    }
}

/// Schedules a dispatch for when the first reservation lapses (one task at a time).
fn wake_when_reservations_lapse(st: &mut State, shared: &Shared) {
    let now = Instant::now();
    let Some(lapse) = st
        .callers
        .values()
        .filter(|q| q.owed(now))
        .map(|q| q.seen + ACTIVE)
        .min()
    else {
        return;
    };
    if st.wake_at.is_some_and(|at| at <= lapse) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    st.wake_at = Some(lapse);
    let shared = Arc::downgrade(shared);
    runtime.spawn(async move {
        tokio::time::sleep_until(lapse).await;
        if let Some(shared) = shared.upgrade() {
            let mut st = lock(&shared);
            if st.wake_at == Some(lapse) {
                st.wake_at = None;
            }
            dispatch(&mut st, &shared);
        }
    });
}

/// A slot of `caller`'s, of `group`, came back.
fn release(st: &mut State, shared: &Shared, caller: &str, group: &str) {
    st.free += 1;
    if let Some(g) = st.groups.get_mut(group) {
        g.in_flight = g.in_flight.saturating_sub(1);
    }
    forget_if_idle(&mut st.groups, group);
    if let Some(q) = st.callers.get_mut(caller) {
        q.in_flight = q.in_flight.saturating_sub(1);
        q.seen = Instant::now();
    }
    if st.callers.len() > KEEP_IDLE {
        let (vnow, now) = (st.now, Instant::now());
        st.callers.retain(|_, q| {
            !q.waiting.is_empty() || q.in_flight > 0 || q.next > vnow || q.owed(now)
        });
    }
    dispatch(st, shared);
}

/// Drops `group` once nothing of it is in flight or waiting: its limit comes again with
/// its next request.
fn forget_if_idle(groups: &mut HashMap<Arc<str>, Group>, group: &str) {
    if groups
        .get(group)
        .is_some_and(|g| g.in_flight == 0 && g.waiting == 0)
    {
        groups.remove(group);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request waiting for its slot; dropped before it got one, it leaves the queue, and a
/// slot granted in the meantime is handed on.
struct Waiting {
    state: Shared,
    caller: Arc<str>,
    group: Arc<str>,
    key: u64,
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
        if still_waiting {
            if let Some(g) = st.groups.get_mut(&self.group) {
                g.waiting = g.waiting.saturating_sub(1);
            }
            forget_if_idle(&mut st.groups, &self.group);
            // Its going may free the group's turn for another caller.
            dispatch(&mut st, &self.state);
        } else {
            // Granted, but nobody will use it.
            release(&mut st, &self.state, &self.caller, &self.group);
        }
    }
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Shared,
    caller: Arc<str>,
    group: Arc<str>,
    /// Its group's requests in flight when it was granted, itself included: how many the
    /// site carried at once while this one was answered.
    level: usize,
}

impl Slot {
    /// Its group's requests in flight when it was granted, itself included.
    pub(crate) fn level(&self) -> usize {
        self.level
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        release(
            &mut lock(&self.state),
            &self.state,
            &self.caller,
            &self.group,
        );
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
            urgency: Urgency::now(),
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
                    let _ = order.send(format!("{}{}", s.id, s.urgency.pages() * 100 + i as u32));
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

    /// Which of `made` requests, made in order (the first needed now, the rest ahead)
    /// but first run in reverse, get the `free` slots; `chained`: each waits for the
    /// one made before it to enter (`Urgency::after`). Also how long that took.
    async fn first_granted(made: usize, free: usize, chained: bool) -> (Vec<usize>, Duration) {
        let slots = Arc::new(FairSlots::new(free));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut last = Urgency::now();
        let requests: Vec<_> = (0..made)
            .map(|i| {
                let urgency = Urgency::ahead(i);
                let earlier = std::mem::replace(&mut last, urgency.clone());
                (i, urgency, earlier)
            })
            .collect();
        let began = Instant::now();
        // Spawned newest first: tokio runs them in that order.
        let tasks: Vec<_> = requests
            .into_iter()
            .rev()
            .map(|(i, urgency, earlier)| {
                let (slots, tx) = (slots.clone(), tx.clone());
                let entering = urgency.entering();
                let share = Share {
                    urgency: urgency.clone(),
                    ..share("s", 1)
                };
                tokio::spawn(async move {
                    let _entering = entering;
                    if chained {
                        urgency.after(&earlier).await;
                    }
                    let slot = slots.acquire(&share).await.expect("open");
                    let _ = tx.send(i);
                    // Held until the test ends.
                    std::future::pending::<()>().await;
                    drop(slot);
                })
            })
            .collect();
        let mut granted = Vec::new();
        for _ in 0..free {
            granted.push(rx.recv().await.expect("granted"));
        }
        let took = began.elapsed();
        settle().await;
        assert!(rx.try_recv().is_err(), "no more slots than {free}");
        for t in tasks {
            t.abort();
        }
        granted.sort_unstable();
        (granted, took)
    }

    #[tokio::test(start_paused = true)]
    async fn requests_take_free_slots_in_the_order_they_were_made_whatever_order_they_run() {
        let (granted, took) = first_granted(8, 3, true).await;
        assert_eq!(granted, [0, 1, 2], "the first made");
        assert_eq!(
            took,
            Duration::ZERO,
            "each entered: none waited out the bound"
        );
        // Unchained, the same tasks take the slots in the order tokio runs them: what
        // the chain is for.
        let (granted, _) = first_granted(8, 3, false).await;
        assert_eq!(granted, [5, 6, 7], "unchained, the last made go first");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_the_one_before_it_to_enter_a_bounded_time() {
        let needed_now = Urgency::ahead(0);
        let earlier = Urgency::ahead(1);
        // One that never enters holds the next back for the bound, no longer.
        let began = Instant::now();
        Urgency::ahead(2).after(&earlier).await;
        assert_eq!(began.elapsed(), ENTRY_WAIT);
        // Needed now: no wait.
        let began = Instant::now();
        needed_now.after(&earlier).await;
        assert_eq!(began.elapsed(), Duration::ZERO);
        // A request whose task is dropped, even before it ran, has entered.
        let entering = earlier.entering();
        let task = tokio::spawn(async move {
            let _entering = entering;
        });
        task.abort();
        let _ = task.await;
        let began = Instant::now();
        Urgency::ahead(2).after(&earlier).await;
        assert_eq!(began.elapsed(), Duration::ZERO);
        // `now` has nothing to enter: those after it never wait.
        Urgency::ahead(2).after(&Urgency::now()).await;
        assert_eq!(began.elapsed(), Duration::ZERO);
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
    async fn a_slot_is_kept_for_a_caller_that_asked_lately_until_it_lapses() {
        let slots = Arc::new(FairSlots::new(2));
        // The polite caller asked a moment ago and holds nothing now.
        drop(slots.acquire(&share("p", 1)).await.expect("open"));
        let g = share("g", 1);
        let first = slots
            .acquire(&g)
            .await
            .expect("a caller holding none always may");
        let second = tokio::spawn({
            let (slots, g) = (slots.clone(), g.clone());
            async move { slots.acquire(&g).await.map(|_| Instant::now()) }
        });
        settle().await;
        assert!(
            !second.is_finished(),
            "the last slot is kept for the polite caller"
        );
        let asked = Instant::now();
        let polite = slots.acquire(&share("p", 1)).await.expect("at once");
        assert_eq!(asked.elapsed(), Duration::ZERO, "it did not wait");
        drop(polite);
        // Once the polite caller stops asking, its reservation lapses.
        let granted = second.await.expect("no panic").expect("open");
        let waited = granted.duration_since(asked);
        assert!(
            waited >= ACTIVE && waited < ACTIVE + Duration::from_millis(50),
            "{waited:?}"
        );
        drop(first);
    }

    #[tokio::test(start_paused = true)]
    async fn look_ahead_waits_until_needed_then_queues_behind_what_was_already_needed() {
        let slots = Arc::new(FairSlots::new(1));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let s = share("s", 1);
        let hold = slots.acquire(&s).await.expect("open");
        let one = |name: &'static str, share: Share| {
            let (slots, tx) = (slots.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = slots.acquire(&share).await.expect("open");
                let _ = tx.send(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            })
        };
        let ahead = s.at_depth(10);
        let mut tasks = vec![one("ahead", ahead.clone())];
        settle().await;
        for name in ["u1", "u2"] {
            tasks.push(one(name, s.clone()));
            settle().await;
        }
        // Its reader reaches it: it takes its turn after u1 and u2, before later ones.
        ahead.urgency.set(0);
        for name in ["u3", "u4"] {
            tasks.push(one(name, s.clone()));
            settle().await;
        }
        // Another, still ahead, goes after everything needed.
        tasks.push(one("later", s.at_depth(1)));
        tasks.push(one("u5", s.clone()));
        settle().await;
        drop(hold);
        for t in tasks {
            t.await.expect("no panic");
        }
        drop(tx);
        let mut order = Vec::new();
        while let Some(name) = rx.recv().await {
            order.push(name);
        }
        assert_eq!(order, ["u1", "u2", "ahead", "u3", "u4", "u5", "later"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_says_how_many_of_its_group_were_in_flight_with_it() {
        let slots = FairSlots::new(8);
        let s = share("u", 1);
        let first = slots.acquire_paced(&s, "c", 2).await.expect("open");
        let second = slots.acquire_paced(&s, "c", 2).await.expect("open");
        let other = slots.acquire_paced(&s, "d", 2).await.expect("open");
        assert_eq!((first.level(), second.level(), other.level()), (1, 2, 1));
        drop(first);
        let third = slots.acquire_paced(&s, "c", 2).await.expect("open");
        assert_eq!(third.level(), 2, "the freed slot was the last again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_groups_pace_holds_its_requests_shared_fairly_and_a_raise_lets_them_go() {
        let slots = Arc::new(FairSlots::new(8));
        let take = |who: &'static str, group: &'static str| {
            let slots = slots.clone();
            tokio::spawn(async move {
                let slot = slots
                    .acquire_paced(&share(who, 1), group, 2)
                    .await
                    .expect("open");
                // Held until the test ends.
                std::future::pending::<()>().await;
                drop(slot);
            })
        };
        // Four of a greedy caller queue first, then one of a polite one: credential
        // "c" allows two in flight.
        let tasks: Vec<_> = (0..4)
            .map(|_| take("g", "c"))
            .chain([take("p", "c")])
            .collect();
        settle().await;
        assert_eq!(
            slots.free(),
            6,
            "two in flight: the group's pace, not the slots"
        );
        // Another credential is not held by it.
        let other = take("g", "d");
        settle().await;
        assert_eq!(slots.free(), 5);
        // Raised to 4: two more go, and the polite caller's one is among them.
        slots.set_limit("c", 4);
        settle().await;
        assert_eq!(slots.free(), 3);
        let st = lock(&slots.state);
        assert_eq!(st.callers.get("p").map(|q| q.in_flight), Some(1));
        assert_eq!(
            st.groups.get("c").map(|g| (g.in_flight, g.waiting)),
            Some((4, 1))
        );
        drop(st);
        for t in tasks.into_iter().chain([other]) {
            t.abort();
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
        depth: usize,
    }

    /// What happened, in order.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Event {
        /// Caller `0` asked, with nothing of its own queued or held.
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
                let arrival = (0..n, 0u64..200, 1u64..40, 0usize..3).prop_map(
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
                    urgency: Urgency::ahead(a.depth),
                };
                let (fair, log, held, peak) =
                    (fair.clone(), log.clone(), held.clone(), peak.clone());
                let (per_caller, peaks, waiting) =
                    (per_caller.clone(), peaks.clone(), waiting.clone());
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(a.at_ms)).await;
                    let c = a.caller;
                    // Nothing of its own queued or held: it waits one round at most.
                    let fresh = waiting[c].load(Ordering::SeqCst) == 0
                        && per_caller[c].load(Ordering::SeqCst) == 0;
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

        /// Whatever the callers, weights, caps and arrivals: every request gets a slot
        /// (reservations lapse), never more than the slots are held, no caller holds more
        /// than its cap, and a caller asking with nothing of its own queued or held waits
        /// at most one round: another caller is served at most its weight's worth of the
        /// asker's turn (the asker's last turn may still count), plus one tie, first.
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
