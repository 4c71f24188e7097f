//! The audit log's retention period, read from Confluence once in a while per
//! credential: `GetRetention` answers it, and a stream or follower starting before the
//! oldest record kept is warned that its start was deleted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::{audit::retention::Retention, error::GatewayError};

/// How long an answer is believed: retention is a setting an administrator rarely
/// changes.
const KEEP_ANSWER: Duration = Duration::from_secs(600);
/// How long a failure is: a credential without the permission to read the setting
/// (Confluence Administrator) keeps lacking it, and asking again costs its rate limit.
const KEEP_FAILURE: Duration = Duration::from_secs(600);
/// Most credentials remembered; past it the table starts over.
const MAX_ENTRIES: usize = 4096;

/// Confluence's answer, and when it came.
type Answer = (Instant, Result<Retention, GatewayError>);

/// Retention periods by credential fingerprint, with when they were read, and the
/// lookups in flight: callers asking together (streams starting at once) wait for one
/// lookup rather than each sending their own.
#[derive(Debug, Default)]
pub(crate) struct Retentions {
    answers: Mutex<HashMap<Arc<str>, Answer>>,
    lookups: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
}

impl Retentions {
    /// What Confluence last answered for `fingerprint`, while still believed.
    pub(crate) fn known(&self, fingerprint: &str) -> Option<Result<Retention, GatewayError>> {
        let map = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, answer) = map.get(fingerprint)?;
        let keep = if answer.is_ok() {
            KEEP_ANSWER
        } else {
            KEEP_FAILURE
        };
        (at.elapsed() < keep).then(|| answer.clone())
    }

    /// Remembers Confluence's answer for `fingerprint`.
    pub(crate) fn note(&self, fingerprint: Arc<str>, answer: Result<Retention, GatewayError>) {
        let mut map = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(fingerprint, (Instant::now(), answer));
    }

    /// The lock one lookup for `fingerprint` holds: whoever takes it after another looks
    /// at what that one noted before asking again.
    pub(crate) fn lookup(&self, fingerprint: &Arc<str>) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.lookups.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        map.entry(fingerprint.clone()).or_default().clone()
    }
}

/// The warning for a read starting at `start_ms` when records before `oldest_ms` are
/// deleted; `None` when the start is kept.
pub(crate) fn warning(retention: &Retention, start_ms: i64, now_ms: i64) -> Option<String> {
    let oldest = retention.oldest_kept(now_ms)?;
    (start_ms < oldest).then(|| {
        format!(
            "Confluence keeps audit records for {} {} only: nothing dated before {oldest} \
             (epoch ms) is left, so this read starts later than asked",
            retention.number,
            retention.unit.name(),
        )
    })
}
