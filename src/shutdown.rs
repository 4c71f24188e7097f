//! The gateway's stop, as one noun: a [`Stopper`] moves it through its phases, and every
//! part that must end with it holds a [`Shutdown`] and waits for the phase it cares
//! about. Streams, followers and health watches end when stopping begins (after the
//! drain delay, `src/server.rs`); the metrics listener ends when serving has stopped
//! (`src/gateway.rs`).

use std::sync::Arc;

use tokio::sync::watch;

/// Where the gateway is in its stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Serving.
    Serving,
    /// Refusing new connections; long calls end after their last complete message.
    Stopping,
    /// No call is served any more.
    Stopped,
}

/// Moves the stop through its phases (one per gateway; clones share it).
#[derive(Clone, Debug)]
pub(crate) struct Stopper(Arc<watch::Sender<Phase>>);

/// Hears the stop.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown(watch::Receiver<Phase>);

impl Stopper {
    /// A gateway serving.
    pub(crate) fn new() -> Self {
        Self(Arc::new(watch::Sender::new(Phase::Serving)))
    }

    /// One that hears this stop.
    pub(crate) fn shutdown(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }

    /// Stopping begins: long calls and health watches end.
    pub(crate) fn stop(&self) {
        self.0.send_if_modified(|p| raise(p, Phase::Stopping));
    }

    /// Serving has stopped: listeners beside the gRPC port end too.
    pub(crate) fn stopped(&self) {
        self.0.send_if_modified(|p| raise(p, Phase::Stopped));
    }
}

/// Moves `phase` on to `to`, never back; whether it moved.
fn raise(phase: &mut Phase, to: Phase) -> bool {
    let moved = *phase < to;
    *phase = (*phase).max(to);
    moved
}

impl Shutdown {
    /// A shutdown that never comes (for parts run alone, as in tests).
    #[cfg(test)]
    pub(crate) fn never() -> Self {
        Stopper::new().shutdown()
    }

    /// Whether stopping has begun.
    pub(crate) fn is_stopping(&self) -> bool {
        *self.0.borrow() >= Phase::Stopping
    }

    /// Resolves once stopping has begun; never when its stopper is gone without it.
    pub(crate) async fn stopping(&mut self) {
        self.reach(Phase::Stopping).await;
    }

    /// Resolves once serving has stopped; never when its stopper is gone without it.
    pub(crate) async fn stopped(&mut self) {
        self.reach(Phase::Stopped).await;
    }

    async fn reach(&mut self, phase: Phase) {
        // The guard `wait_for` returns must not live across an await.
        let reached = self.0.wait_for(|p| *p >= phase).await.map(drop);
        if reached.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn each_part_hears_the_phase_it_waits_for_and_phases_never_go_back() {
        let stopper = Stopper::new();
        let mut call = stopper.shutdown();
        let mut metrics = stopper.shutdown();
        assert!(!call.is_stopping());
        stopper.stop();
        call.stopping().await;
        assert!(call.is_stopping());
        let early = tokio::time::timeout(Duration::from_millis(20), metrics.stopped()).await;
        assert!(early.is_err(), "serving has not stopped yet");
        stopper.stopped();
        stopper.stop();
        metrics.stopped().await;
        assert!(metrics.is_stopping(), "stopped is past stopping");
        // A stopper gone without stopping: nothing resolves.
        let mut orphan = Stopper::new().shutdown();
        let never = tokio::time::timeout(Duration::from_millis(20), orphan.stopping()).await;
        assert!(never.is_err());
    }
}
