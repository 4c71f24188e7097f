//! The Data Center dialect: `GET {base}/rest/auditing/1.0/events` as the Atlassian audit
//! plugin (Confluence 7.5 and later) serves it, from the same log the Cloud dialect lists.
//!
//! Each event has a hidden database id, its sequence number plus one, so ids grow with
//! insertion. Events are listed by (timestamp, id) descending, which is sequence order
//! reversed since dates never decrease along the log: a `pageCursor` (`"<ms>,<id>"`) is a
//! keyset bound, so cursor paging is exact under arrivals, deletions and ties, while plain
//! `offset` paging shifts as events arrive.

use serde::Serialize;

use super::data::Log;
use super::dc_entity::Entity;
use super::dc_query::{EventsQuery, InvalidParam};
use super::instant::iso_instant;

/// The events endpoint, after the base path.
pub(crate) const AUDIT_EVENTS: &str = "/rest/auditing/1.0/events";
/// The plugin's largest JSON page (`DatabaseAuditSearchService.MAX_LIMIT`).
pub(crate) const MAX_JSON_LIMIT: u32 = 10_000;
/// The plugin's message for a `limit` above [`MAX_JSON_LIMIT`], sent as a plain-text 500.
pub(crate) const TOO_LARGE: &str = "Maximum allowed page size is 10000";
/// What `RestrictiveSearchService` says to a caller without audit permission.
pub(crate) const NOT_ALLOWED: &str = "The user is not allowed to view audit events";

/// A page of events: the first `limit` of the selection, and whether there were more.
pub(crate) struct EventsPage {
    /// (sequence number, event), newest first.
    pub(crate) events: Vec<(u64, Entity)>,
    pub(crate) last_page: bool,
}

/// Selects a page of `log` for `query`: events dated `from..=to` (inclusive, `to_ms` already
/// resolved to now when absent), not in `hidden`, before the cursor if any, matching any
/// search token, skipping `offset` and taking `limit` (already capped). Fetches one more
/// than `limit` to tell whether this is the last page, as the plugin does.
pub(crate) fn select(
    log: &Log,
    hidden: &[u64],
    query: &EventsQuery,
    to_ms: i64,
    limit: u32,
    base_url: &str,
) -> EventsPage {
    let first = log.first_since(query.from_ms);
    let mut upper = to_ms
        .checked_add(1)
        .map_or(log.end(), |after| log.first_since(after));
    if let Some((cursor_ms, cursor_id)) = query.cursor {
        upper = upper.min(cursor_bound(log, cursor_ms, cursor_id));
    }
    let range = first..upper.max(first);
    let wanted = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let offset = usize::try_from(query.offset).unwrap_or(usize::MAX);
    let entity = |seq: u64| {
        let content = log.content_seq(seq);
        (
            seq,
            Entity::generate(log.seed(), content, log.date(seq), base_url),
        )
    };
    let mut events: Vec<(u64, Entity)> = if query.search_tokens.is_empty() {
        log.newest_first(range, hidden, u64::from(query.offset), None)
            .take(wanted)
            .map(entity)
            .collect()
    } else {
        log.newest_first(range, hidden, 0, None)
            .map(entity)
            .filter(|(_, event)| event.matches_any(&query.search_tokens))
            .skip(offset)
            .take(wanted)
            .collect()
    };
    let last_page = events.len() < wanted;
    events.truncate(wanted - 1);
    EventsPage { events, last_page }
}

/// The first sequence number not before the cursor: events with `timestamp < ms`, or
/// `timestamp == ms` and `id < id`, are exactly the sequence numbers below it.
fn cursor_bound(log: &Log, cursor_ms: i64, cursor_id: i64) -> u64 {
    let at_ms = log.first_since(cursor_ms);
    let after_ms = cursor_ms
        .checked_add(1)
        .map_or(log.end(), |after| log.first_since(after));
    // id = seq + 1, so `id < cursor_id` is `seq < cursor_id - 1`.
    let by_id = u64::try_from(cursor_id.saturating_sub(1)).unwrap_or(0);
    by_id.clamp(at_ms, after_ms)
}

/// `"<epochMillis>,<id>"` of event `seq`.
pub(crate) fn cursor_of(log: &Log, seq: u64) -> String {
    format!("{},{}", log.date(seq), seq.saturating_add(1))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    entities: Vec<&'a Entity>,
    paging_info: PagingInfo,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PagingInfo {
    last_page: bool,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_offset: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_link: Option<String>,
}

/// The JSON body of `page`; `self_url` is the request's URL up to the query, `raw_query`
/// its query as received (kept in `nextPageLink`).
pub(crate) fn render(
    log: &Log,
    page: &EventsPage,
    self_url: &str,
    raw_query: Option<&str>,
) -> serde_json::Result<Vec<u8>> {
    let next_cursor = match page.events.last() {
        Some(&(seq, _)) if !page.last_page => Some(cursor_of(log, seq)),
        _ => None,
    };
    let next_page_link = next_cursor
        .as_deref()
        .map(|cursor| next_link(self_url, raw_query, cursor));
    serde_json::to_vec(&Body {
        entities: page.events.iter().map(|(_, event)| event).collect(),
        paging_info: PagingInfo {
            last_page: page.last_page,
            size: page.events.len(),
            next_page_offset: next_cursor.as_ref().map(|_| 0),
            next_page_cursor: next_cursor.clone(),
            next_page_link,
        },
    })
}

/// The request's URL with `offset=0` and `pageCursor=<cursor>` in place of its own (where
/// they were, else appended), every other parameter kept verbatim, as the plugin's
/// `UriBuilder.replaceQueryParam` does. The comma stays unencoded, as in Atlassian's answers.
fn next_link(self_url: &str, raw_query: Option<&str>, cursor: &str) -> String {
    let replacements = [
        ("offset", "0".to_owned()),
        ("pageCursor", cursor.to_owned()),
    ];
    let mut placed = [false; 2];
    let mut parts = Vec::new();
    for part in raw_query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let key = url::form_urlencoded::parse(part.as_bytes())
            .next()
            .map(|(key, _)| key.into_owned())
            .unwrap_or_default();
        match replacements.iter().position(|(name, _)| *name == key) {
            Some(index) if placed[index] => {}
            Some(index) => {
                placed[index] = true;
                let (name, value) = &replacements[index];
                parts.push(format!("{name}={value}"));
            }
            None => parts.push(part.to_owned()),
        }
    }
    for (index, (name, value)) in replacements.iter().enumerate() {
        if !placed[index] {
            parts.push(format!("{name}={value}"));
        }
    }
    format!("{self_url}?{}", parts.join("&"))
}

/// The 400 body (`InvalidQueryExceptionMapper`):
/// `{"status":400,"message":"Invalid Query","errors":[{"key","message"}],"timestamp"}`.
pub(crate) fn invalid_query(errors: &[InvalidParam], now_ms: i64) -> String {
    let errors: Vec<serde_json::Value> = errors
        .iter()
        .map(|error| serde_json::json!({ "key": error.key, "message": error.message }))
        .collect();
    serde_json::json!({
        "status": 400,
        "message": "Invalid Query",
        "errors": errors,
        "timestamp": iso_instant(now_ms),
    })
    .to_string()
}

/// The 403 body for a caller without audit permission. Whether the plugin answers 401 or
/// 403 here is not confirmed; 403 fits a request that ran as anonymous.
pub(crate) fn not_allowed() -> String {
    serde_json::json!({ "status-code": 403, "message": NOT_ALLOWED }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_link_replaces_offset_and_cursor_and_keeps_the_rest() {
        let url = "http://h/rest/auditing/1.0/events";
        assert_eq!(
            next_link(url, None, "5,6"),
            format!("{url}?offset=0&pageCursor=5,6")
        );
        assert_eq!(
            next_link(
                url,
                Some("offset=7&limit=2&search=a%20b&pageCursor=9%2C10"),
                "5,6"
            ),
            format!("{url}?offset=0&limit=2&search=a%20b&pageCursor=5,6")
        );
        assert_eq!(
            next_link(url, Some("limit=2&offset=1&offset=3"), "5,6"),
            format!("{url}?limit=2&offset=0&pageCursor=5,6")
        );
    }

    #[test]
    fn a_cursor_bounds_by_timestamp_then_id() {
        // Three groups of two records sharing a millisecond: seqs 0..6, ids 1..7.
        let mut log = Log::new(1, 0, 0);
        for ms in [100, 200, 300] {
            log.insert(2, ms);
        }
        assert_eq!(
            cursor_bound(&log, 200, 4),
            3,
            "id 3 (seq 2) is before (200, 4)"
        );
        assert_eq!(cursor_bound(&log, 200, 3), 2);
        assert_eq!(
            cursor_bound(&log, 200, 100),
            4,
            "ids past the group: all of it"
        );
        assert_eq!(
            cursor_bound(&log, 200, -5),
            2,
            "ids before the group: none of it"
        );
        assert_eq!(
            cursor_bound(&log, 250, 1),
            4,
            "no record at 250: all older ones"
        );
        assert_eq!(cursor_bound(&log, 50, 9), 0);
        assert_eq!(cursor_bound(&log, i64::MAX, 0), 6);
        assert_eq!(cursor_of(&log, 3), "200,4");
    }
}
