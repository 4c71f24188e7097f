//! Caps of each caller's own (`src/callers.rs` says who a caller is): how many streams
//! and followers it holds open (`--caller-max-streams`) and how many `GetSince` calls a
//! second Confluence answers for it rather than the cache (`--caller-miss-rate`, a token
//! bucket with bursts of twice the rate). One caller reaching a cap is refused with
//! RESOURCE_EXHAUSTED naming it; nobody else notices. The anonymous caller (every call
//! nobody identified) is the gateway's whole traffic and only meets gateway-wide caps.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use crate::{
    callers::Caller,
    error::{CallerCap, GatewayError},
    metrics::METRICS,
};

/// Entries kept before idle ones are swept (with passthrough each credential is a caller).
const SWEEP_AT: usize = 4096;

/// The per-caller caps and what each caller holds of them.
#[derive(Debug)]
pub(crate) struct CallerCaps {
    /// `--caller-max-streams`, for callers the tokens file gives none.
    max_streams: usize,
    /// `--caller-miss-rate` (0: none), likewise.
    miss_rate: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: HashMap<Arc<str>, usize>,
    buckets: HashMap<Arc<str>, Bucket>,
}

/// Tokens left and when they were counted.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One stream or follower of a caller, counted until dropped.
#[derive(Debug)]
pub(crate) struct StreamHold {
    caps: Arc<CallerCaps>,
    caller: Arc<str>,
}

impl CallerCaps {
    /// Caps of `max_streams` open streams and `miss_rate` misses a second per caller.
    pub(crate) fn new(max_streams: usize, miss_rate: u32) -> Self {
        Self {
            max_streams: max_streams.max(1),
            miss_rate,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a stream or follower `caller` opens, or refuses it over the caller's cap.
    pub(crate) fn open_stream(
        self: &Arc<Self>,
        caller: &Caller,
    ) -> Result<Option<StreamHold>, GatewayError> {
        if !caller.capped() {
            return Ok(None);
        }
        let limit = caller.max_streams.unwrap_or(self.max_streams);
        let mut st = self.lock();
        let open = st.open.entry(caller.id.clone()).or_default();
        if *open >= limit {
            drop(st);
            METRICS.caller_refused(&caller.label, "caller-max-streams");
            return Err(GatewayError::CallerCapped {
                cap: CallerCap::MaxStreams(limit),
                // Streams last long; a pause gives one time to end.
                retry_after: Duration::from_secs(1),
            });
        }
        *open += 1;
        Ok(Some(StreamHold {
            caps: self.clone(),
            caller: caller.id.clone(),
        }))
    }

    /// Takes one miss from `caller`'s bucket, or refuses with the time until one is back.
    pub(crate) fn miss(&self, caller: &Caller) -> Result<(), GatewayError> {
        let rate = caller.miss_rate.unwrap_or(self.miss_rate);
        if !caller.capped() || rate == 0 {
            return Ok(());
        }
        let (rate_f, burst) = (f64::from(rate), 2.0 * f64::from(rate));
        let now = Instant::now();
        let mut st = self.lock();
        if st.buckets.len() >= SWEEP_AT {
            // A bucket refilled to its burst is the same as none.
            st.buckets
                .retain(|_, b| now.duration_since(b.at).as_secs_f64() * rate_f < burst);
        }
        let b = st.buckets.entry(caller.id.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate_f).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let retry_after = Duration::from_secs_f64((1.0 - b.tokens) / rate_f);
        drop(st);
        METRICS.caller_refused(&caller.label, "caller-miss-rate");
        Err(GatewayError::CallerCapped {
            cap: CallerCap::MissRate(rate),
            retry_after,
        })
    }
}

impl Drop for StreamHold {
    fn drop(&mut self) {
        let mut st = self.caps.lock();
        if let Some(n) = st.open.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.open.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(id: &str) -> Caller {
        Caller::other(id.into(), id)
    }

    #[test]
    fn a_caller_at_its_stream_cap_is_refused_and_another_is_not() {
        let caps = Arc::new(CallerCaps::new(2, 0));
        let a = named("a");
        let held: Vec<_> = (0..2)
            .map(|_| caps.open_stream(&a).expect("under"))
            .collect();
        let err = caps.open_stream(&a).expect_err("the third");
        assert_eq!(err.reason(), "CALLER_MAX_STREAMS");
        assert!(caps.open_stream(&named("b")).is_ok(), "b has its own");
        drop(held);
        assert!(caps.open_stream(&a).is_ok(), "given back");
        // The anonymous caller is everyone: gateway-wide caps only.
        let anon = Caller::anonymous();
        let many: Vec<_> = (0..10).map(|_| caps.open_stream(&anon)).collect();
        assert!(many.iter().all(Result::is_ok));
        // The tokens file may give a caller its own cap.
        let big = Caller {
            max_streams: Some(5),
            ..named("big")
        };
        let five: Vec<_> = (0..5).map(|_| caps.open_stream(&big)).collect();
        assert!(five.iter().all(Result::is_ok));
        assert!(caps.open_stream(&big).is_err());
    }

    #[test]
    fn misses_come_in_bursts_of_twice_the_rate_then_at_the_rate() {
        let caps = CallerCaps::new(1, 10);
        let a = named("a");
        for i in 0..20 {
            caps.miss(&a)
                .unwrap_or_else(|e| panic!("miss {i} of the burst: {e}"));
        }
        let Err(GatewayError::CallerCapped { retry_after, cap }) = caps.miss(&a) else {
            panic!("the burst is spent");
        };
        assert_eq!(cap, CallerCap::MissRate(10));
        assert!(retry_after <= Duration::from_millis(100), "{retry_after:?}");
        assert!(caps.miss(&named("b")).is_ok(), "b has its own bucket");
        let unlimited = Caller {
            miss_rate: Some(0),
            ..named("c")
        };
        assert!((0..100).all(|_| caps.miss(&unlimited).is_ok()));
    }
}
