//! Files read again while the gateway runs (caller tokens, TLS certificates): one task
//! per file set looks every second, off the async workers, for as long as its owner lives.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

/// How often watched files are looked at.
const EVERY: Duration = Duration::from_secs(1);

/// Calls `reload` on `target` every second until the returned task is aborted or
/// `target` is dropped (the task holds only a weak reference). `reload` reads files, so it
/// runs on the blocking pool.
pub(crate) fn every_second<T: Send + Sync + 'static>(
    target: &Arc<T>,
    reload: fn(&T),
) -> tokio::task::JoinHandle<()> {
    let weak: Weak<T> = Arc::downgrade(target);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(this) = weak.upgrade() else { return };
            let _ = tokio::task::spawn_blocking(move || reload(&this)).await;
        }
    })
}
