//! Answers one HTTP request: faults first, then routing, authorization, validation and the page.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, DATE, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::data;
use super::data_center::{self, AUDIT_EVENTS, MAX_JSON_LIMIT, TOO_LARGE};
use super::dc_query::EventsQuery;
use super::fault::atlassian_error;
use super::query::{AuditQuery, Span};
use super::state::{Admission, InFlight, Shared};
use super::{AuditEndpoint, Fault, Flavor, LimitEcho, RangeBounds, RecordedRequest};

const JSON: &str = "application/json;charset=UTF-8";
/// The relative-window endpoint, after the base path.
pub(crate) const AUDIT_SINCE: &str = "/rest/api/audit/since";
/// The absolute-range endpoint (`getAuditRecords`), after the base path.
pub(crate) const AUDIT_RANGE: &str = "/rest/api/audit";
/// The retention period endpoint (`getRetentionPeriod`), after the base path.
pub(crate) const AUDIT_RETENTION: &str = "/rest/api/audit/retention";

/// Confluence's documented largest `limit`; `strict_limit` refuses more.
const LARGEST_LIMIT: u32 = 1000;

/// The service's error: makes hyper drop the connection without answering. For a cut the
/// connection's owner then writes the answer's raw bytes itself (see [`cut_answer`]).
#[derive(Debug)]
pub(crate) enum Abort {
    /// [`Fault::Reset`]: close without a word.
    Reset,
    /// A 200 cut short: its head with the full body's `Content-Length`, and half the body.
    Cut(Bytes),
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abort::Reset => f.write_str("simulated connection reset"),
            Abort::Cut(_) => f.write_str("simulated body cut short"),
        }
    }
}

impl std::error::Error for Abort {}

/// The raw bytes of a cut answer, if `error` is hyper giving up a connection because the
/// service asked to cut its answer.
pub(crate) fn cut_answer(error: &hyper::Error) -> Option<&Bytes> {
    use std::error::Error as _;
    match error.source()?.downcast_ref::<Abort>()? {
        Abort::Cut(raw) => Some(raw),
        Abort::Reset => None,
    }
}

/// Answers `request`, or fails to make hyper close the connection.
pub(crate) async fn handle<B>(
    shared: Arc<Shared>,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, Abort> {
    let mut recorded = RecordedRequest::from_request(&request);
    recorded.endpoint = shared.endpoint(&recorded.path);
    let flavor = shared.flavor;
    // A path of the other flavor's API is answered 404, untouched by faults.
    let served = recorded
        .endpoint
        .filter(|endpoint| endpoint.served_by(flavor));
    let is_audit = served.is_some_and(AuditEndpoint::lists);
    let admission = shared.admit(recorded.clone(), is_audit);
    // Admitted audit requests are counted in flight from here until this answer is done.
    let _in_flight = is_audit.then(|| InFlight(shared.clone()));
    let extra_delay = match admission.fault {
        Some(Fault::Reset) => return Err(Abort::Reset),
        Some(Fault::Delay(delay)) => delay,
        _ => Duration::ZERO,
    };
    // The latency is the time from the request's arrival to its answer, rendering
    // included, as a server's response time is: the answer is made at once and held
    // back until then (sleeping first and rendering after made every request take the
    // latency plus its rendering, on cores the client under test shares).
    let answer_at = tokio::time::Instant::now() + admission.latency.saturating_add(extra_delay);
    let cut = admission.cut;
    let near_limit = match admission.fault {
        Some(Fault::NearLimit(reset)) => Some(reset),
        _ => None,
    };
    let now = shared.now_ms();
    let dc = flavor == Flavor::DataCenter;
    let mut response = match admission.fault.clone() {
        Some(Fault::Status {
            code,
            retry_after,
            body,
        }) => status_response(code, retry_after.as_deref(), body, now, flavor),
        // A page cut short, as when a proxy drops the connection mid-body.
        Some(Fault::Malformed) if dc => body_response(
            StatusCode::OK,
            JSON,
            r#"{"entities":[{"timestamp":"2024-01-31T12:34:56.789Z","author":{"name":"Ada"#,
        ),
        Some(Fault::Malformed) => body_response(
            StatusCode::OK,
            JSON,
            r#"{"results":[{"author":{"type":"user","displayName":"Ada"#,
        ),
        Some(Fault::WrongShape) if dc => body_response(StatusCode::OK, JSON, r#"{"entities":5}"#),
        Some(Fault::WrongShape) => body_response(StatusCode::OK, JSON, r#"{"results":5}"#),
        _ => match served {
            None => error_response(404, "Not found", now),
            Some(_) if request.method() != Method::GET => {
                error_response(405, "Method not allowed", now)
            }
            Some(AuditEndpoint::Retention) => retention(&shared, &recorded),
            Some(AuditEndpoint::Events) => events(shared.clone(), &recorded, admission).await,
            Some(_) => answer(shared.clone(), &recorded, admission).await,
        },
    };
    tokio::time::sleep_until(answer_at).await;
    // Every answer is dated by the simulator's clock, off the host's by `clock_offset`
    // (hyper dates only answers that carry no `Date`).
    if let Ok(date) = HeaderValue::from_str(&http_date(shared.now_ms())) {
        response.headers_mut().insert(DATE, date);
    }
    match near_limit {
        // Data Center has no warning header: a near limit shows as one token left.
        Some(_) if dc => insert_headers(&mut response, &data_center_rate_limit(1, "0")),
        Some(reset) => {
            let reset_ms = i64::try_from(reset.as_millis()).unwrap_or(i64::MAX);
            let reset = iso8601(shared.now_ms().saturating_add(reset_ms));
            let headers = [
                ("x-ratelimit-nearlimit", "true".to_owned()),
                ("x-ratelimit-limit", "100".to_owned()),
                ("x-ratelimit-remaining", "1".to_owned()),
                ("x-ratelimit-reset", reset),
            ];
            insert_headers(&mut response, &headers);
        }
        None => {}
    }
    if cut && response.status() == StatusCode::OK {
        return Err(Abort::Cut(cut_short(response).await));
    }
    Ok(response)
}

/// The raw bytes of `response` with its full `Content-Length` but only half its body.
async fn cut_short(response: Response<Full<Bytes>>) -> Bytes {
    let (head, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let mut raw = format!("HTTP/1.1 {}\r\n", head.status).into_bytes();
    for (name, value) in &head.headers {
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    raw.extend_from_slice(&body[..body.len() / 2]);
    raw.into()
}

/// Inserts `headers`, skipping values that are not valid header values.
fn insert_headers(response: &mut Response<Full<Bytes>>, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, value);
        }
    }
}

/// Data Center's rate-limit headers (a token bucket of 100, 10 tokens a second) with
/// `remaining` tokens left and `Retry-After: <retry_after>` seconds.
fn data_center_rate_limit(remaining: u32, retry_after: &str) -> [(&'static str, String); 5] {
    [
        ("x-ratelimit-limit", "100".to_owned()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-interval-seconds", "1".to_owned()),
        ("x-ratelimit-fillrate", "10".to_owned()),
        ("retry-after", retry_after.to_owned()),
    ]
}

/// Why a request may not read the audit log.
enum Refusal {
    /// No valid credential: 401.
    Unauthenticated,
    /// A credential without audit permission, or Data Center's anonymous fallback: 403.
    Forbidden,
}

/// Checks the `Authorization` header. Cloud accepts exactly
/// [`SimulatorConfig::required_authorization`](crate::SimulatorConfig::required_authorization);
/// Data Center also `Bearer <personal access token>`, and runs a request with no credential
/// or an unknown bearer token as anonymous, which may not read the audit log (a forbidden,
/// not a 401: Confluence does not reject bad tokens, and whether the plugin's refusal is
/// 401 or 403 is unconfirmed).
fn authorize(shared: &Shared, request: &RecordedRequest) -> Result<(), Refusal> {
    let header = request.authorization.as_deref();
    if header.is_some() && header == shared.forbidden_authorization.as_deref() {
        return Err(Refusal::Forbidden);
    }
    let dc = shared.flavor == Flavor::DataCenter;
    let token = shared.personal_access_token.as_deref().filter(|_| dc);
    if shared.required_authorization.is_none() && token.is_none() {
        return Ok(());
    }
    let accepted = header.is_some()
        && (header == shared.required_authorization.as_deref()
            || token.is_some_and(|token| header == Some(&format!("Bearer {token}"))));
    let is_bearer = header.is_some_and(|header| {
        header
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer "))
    });
    if accepted {
        Ok(())
    } else if dc && (header.is_none() || is_bearer) {
        Err(Refusal::Forbidden)
    } else {
        Err(Refusal::Unauthenticated)
    }
}

/// The Cloud API's answer to a refusal: 401 with its JSON error, 403 with an empty body.
fn refusal_response(refusal: &Refusal, now_ms: i64) -> Response<Full<Bytes>> {
    match refusal {
        Refusal::Unauthenticated => error_response(
            401,
            "Client must be authenticated to access this resource.",
            now_ms,
        ),
        Refusal::Forbidden => body_response(StatusCode::FORBIDDEN, "text/plain", ""),
    }
}

/// `GET {base}/rest/api/audit/retention`: `{"number":N,"units":"UNITS"}`.
fn retention(shared: &Shared, request: &RecordedRequest) -> Response<Full<Bytes>> {
    if let Err(refusal) = authorize(shared, request) {
        return refusal_response(&refusal, shared.now_ms());
    }
    let retention = shared.lock().retention;
    match serde_json::to_vec(&retention) {
        Ok(body) => body_response(StatusCode::OK, JSON, body),
        Err(error) => error_response(500, &error.to_string(), shared.now_ms()),
    }
}

/// Data Center's `GET {base}/rest/auditing/1.0/events`.
async fn events(
    shared: Arc<Shared>,
    request: &RecordedRequest,
    admission: Admission,
) -> Response<Full<Bytes>> {
    let now = shared.now_ms();
    match authorize(&shared, request) {
        Ok(()) => {}
        Err(Refusal::Forbidden) => {
            return body_response(StatusCode::FORBIDDEN, JSON, data_center::not_allowed());
        }
        Err(refusal) => return refusal_response(&refusal, now),
    }
    let query = match EventsQuery::parse(&request.query) {
        Ok(query) => query,
        Err(errors) => {
            let body = data_center::invalid_query(&errors, now);
            return body_response(StatusCode::BAD_REQUEST, JSON, body);
        }
    };
    // The validator allows up to 100000 (for CSV); the JSON search then throws, unmapped.
    if query.limit > MAX_JSON_LIMIT {
        let plain = "text/plain;charset=UTF-8";
        return body_response(StatusCode::INTERNAL_SERVER_ERROR, plain, TOO_LARGE);
    }
    let limit = capped_limit(&shared, query.limit, admission.number);
    // `to` absent is now, at each request.
    let to_ms = query.to_ms.unwrap_or(now);
    let self_url = format!("{}{AUDIT_EVENTS}", shared.base_url);
    let raw_query = request.raw_query.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let log = &admission.log;
        let page = data_center::select(
            log,
            &admission.hidden,
            &query,
            to_ms,
            limit,
            &shared.base_url,
        );
        if page.events.is_empty() {
            shared.count_empty_page(AuditEndpoint::Events);
        }
        data_center::render(log, &page, &self_url, raw_query.as_deref())
    })
    .await;
    match rendered {
        Ok(Ok(body)) => body_response(StatusCode::OK, JSON, body),
        Ok(Err(error)) => error_response(500, &format!("Could not render the page: {error}"), now),
        Err(error) => error_response(500, &format!("Rendering failed: {error}"), now),
    }
}

/// `limit` under [`SimulatorConfig::max_limit`](crate::SimulatorConfig::max_limit), risen by
/// one every `max_limit_rises_every` requests as of request `number`.
fn capped_limit(shared: &Shared, limit: u32, number: usize) -> u32 {
    shared.max_limit.map_or(limit, |cap| {
        let rise = shared.max_limit_rises_every.map_or(0, |every| {
            u32::try_from(number / every.max(1) as usize).unwrap_or(u32::MAX)
        });
        limit.min(cap.saturating_add(rise))
    })
}

/// The normal answer of either Cloud listing endpoint.
async fn answer(
    shared: Arc<Shared>,
    request: &RecordedRequest,
    admission: Admission,
) -> Response<Full<Bytes>> {
    let now = shared.now_ms();
    if let Err(refusal) = authorize(&shared, request) {
        return refusal_response(&refusal, now);
    }
    let range = request.endpoint == Some(AuditEndpoint::Range);
    let query = match AuditQuery::parse(&request.query, range) {
        Ok(query) => query,
        Err(message) => return error_response(400, &message, now),
    };
    if shared.strict_limit && query.limit > LARGEST_LIMIT {
        let message = format!(
            "Invalid value {} for parameter 'limit': must be at most {LARGEST_LIMIT}",
            query.limit
        );
        return error_response(400, &message, now);
    }
    let endpoint = if range { AUDIT_RANGE } else { AUDIT_SINCE };
    let self_url = match &request.raw_query {
        Some(raw) => format!("{}{endpoint}?{raw}", shared.base_url),
        None => format!("{}{endpoint}", shared.base_url),
    };
    // A search over a big window scans it: keep that off the async worker threads.
    let rendered =
        tokio::task::spawn_blocking(move || render(&shared, &query, &admission, &self_url)).await;
    match rendered {
        Ok(Ok(body)) => body_response(StatusCode::OK, JSON, body),
        Ok(Err(error)) => error_response(500, &format!("Could not render the page: {error}"), now),
        Err(error) => error_response(500, &format!("Rendering failed: {error}"), now),
    }
}

fn render(
    shared: &Shared,
    query: &AuditQuery,
    admission: &Admission,
    self_url: &str,
) -> serde_json::Result<Vec<u8>> {
    let log = &admission.log;
    let limit = capped_limit(shared, query.limit, admission.number);
    let listed = match query.span {
        Span::Since { number, unit_nanos } => {
            let first = AuditQuery::cutoff_ms(number, unit_nanos, shared.now_ms())
                .map_or(log.end(), |cutoff| log.first_since(cutoff));
            first..log.end()
        }
        // Both ends inclusive: up to the first record dated after `end_ms`.
        Span::Range { start_ms, end_ms } => {
            let (start_ms, end_ms) = match shared.range_bounds {
                RangeBounds::Exact => (start_ms, end_ms),
                // Whole seconds: the start rounded down, the end up to its second's last ms.
                RangeBounds::Seconds => (
                    start_ms.map(|s| s.div_euclid(1000) * 1000),
                    end_ms.map(|e| e.div_euclid(1000).saturating_mul(1000).saturating_add(999)),
                ),
                RangeBounds::Ignored => (None, None),
            };
            let first = start_ms.map_or(0, |start| log.first_since(start));
            let upper = end_ms
                .and_then(|end| end.checked_add(1))
                .map_or(log.end(), |after| log.first_since(after));
            first..upper
        }
    };
    let records = log.page(
        listed,
        &admission.hidden,
        query.search_lower.as_deref(),
        query.start as usize,
        limit as usize,
        admission.order,
    );
    if records.is_empty() {
        let endpoint = match query.span {
            Span::Since { .. } => AuditEndpoint::Since,
            Span::Range { .. } => AuditEndpoint::Range,
        };
        shared.count_empty_page(endpoint);
    }
    let reported = match admission.limit_echo {
        LimitEcho::Capped => Some(limit),
        LimitEcho::Requested => Some(query.limit),
        LimitEcho::Omitted => None,
    };
    data::render(
        &records,
        query.start,
        reported,
        &shared.base_url,
        &shared.context,
        self_url,
    )
}

/// A scripted status answer; 429s also carry the flavor's rate-limit headers: Cloud's
/// with their reset after `now_ms` (the simulator's clock), Data Center's with
/// `Retry-After` always (1 second unless the fault gives one).
fn status_response(
    code: u16,
    retry_after: Option<&str>,
    body: Option<String>,
    now_ms: i64,
    flavor: Flavor,
) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(code).unwrap_or_else(|_| {
        tracing::warn!(
            code,
            "invalid status code in a simulator fault, answering 500"
        );
        StatusCode::INTERNAL_SERVER_ERROR
    });
    let mut response = match body {
        Some(json) => body_response(status, JSON, json),
        None => body_response(status, "text/plain", ""),
    };
    let headers = response.headers_mut();
    if let Some(value) = retry_after.and_then(|value| HeaderValue::from_str(value).ok()) {
        headers.insert(RETRY_AFTER, value);
    }
    if status == StatusCode::TOO_MANY_REQUESTS && flavor == Flavor::DataCenter {
        let dc_headers = data_center_rate_limit(0, retry_after.unwrap_or("1"));
        insert_headers(&mut response, &dc_headers);
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        // Reset: when the retry may succeed, assuming a sane Retry-After (else one minute).
        let wait_s = retry_after
            .and_then(|value| value.parse::<i64>().ok())
            .filter(|s| (0..=86_400).contains(s))
            .unwrap_or(60);
        let reset = iso8601(now_ms.saturating_add(wait_s * 1000));
        for (name, value) in [
            ("x-ratelimit-limit", "100".to_owned()),
            ("x-ratelimit-remaining", "0".to_owned()),
            ("x-ratelimit-reset", reset),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
    response
}

/// An Atlassian-shaped JSON error, at `now_ms` (the simulator's clock).
fn error_response(code: u16, message: &str, now_ms: i64) -> Response<Full<Bytes>> {
    let body = Some(atlassian_error(code, message));
    status_response(code, None, body, now_ms, Flavor::Cloud)
}

fn body_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

impl RecordedRequest {
    fn from_request<B>(request: &Request<B>) -> RecordedRequest {
        let text = |value: &HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned();
        let raw_query = request.uri().query().map(str::to_owned);
        RecordedRequest {
            path: request.uri().path().to_owned(),
            endpoint: None,
            query: raw_query
                .as_deref()
                .map(|raw| {
                    url::form_urlencoded::parse(raw.as_bytes())
                        .into_owned()
                        .collect()
                })
                .unwrap_or_default(),
            raw_query,
            authorization: request.headers().get(AUTHORIZATION).map(text),
            headers: request
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), text(value)))
                .collect(),
            received: std::time::Instant::now(),
        }
    }
}

/// `2024-01-31T12:34:56.789Z` for epoch milliseconds.
fn iso8601(epoch_ms: i64) -> String {
    let secs = epoch_ms.div_euclid(1000);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
        epoch_ms.rem_euclid(1000)
    )
}

/// The HTTP-date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`) of epoch milliseconds,
/// the fraction of a second dropped as HTTP does.
pub(crate) fn http_date(epoch_ms: i64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = epoch_ms.div_euclid(1000);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil(days);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[days.rem_euclid(7) as usize];
    let month = MONTHS[(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {month} {year:04} {:02}:{:02}:{:02} GMT",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

/// (year, month 1..=12, day 1..=31) of days since 1970-01-01 (civil-from-days,
/// H. Hinnant).
pub(crate) fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
