//! Faults the simulator can inject instead of a normal answer, and their textual form
//! (`"503"`, `"429:retry-after=2"`, `"reset"`, `"cut"`, `"delay=250ms"`, `"near-limit=1s"`, …)
//! for command lines
//! and tests.

use std::str::FromStr;
use std::time::Duration;

/// One injected misbehaviour, applied to one request to the audit endpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this status. `retry_after` becomes a `Retry-After` header verbatim (it may be
    /// absurd on purpose). `body` `None` is an empty `text/plain` body, as real Confluence sends
    /// for 403; `Some(s)` is sent as `application/json`.
    Status {
        /// HTTP status code (400..=599 when parsed from text).
        code: u16,
        /// `Retry-After` header value, sent exactly as given.
        retry_after: Option<String>,
        /// JSON body, or `None` for an empty `text/plain` body.
        body: Option<String>,
    },
    /// Close the connection without sending any response.
    Reset,
    /// `200 application/json` whose body is truncated, hence not valid JSON.
    Malformed,
    /// `200 application/json` holding valid JSON that is not an `AuditRecordArray`.
    WrongShape,
    /// Answer normally, but only after this extra delay.
    Delay(Duration),
    /// Answer normally, but if the answer is a 200, cut its body: the full body's
    /// `Content-Length`, half the body, then the connection closed.
    Cut,
    /// Answer normally, with Atlassian's warning that the credential nears its rate limit:
    /// `X-RateLimit-NearLimit: true`, `X-RateLimit-Remaining: 1`, and `X-RateLimit-Reset`
    /// this long from now.
    NearLimit(Duration),
}

impl Fault {
    /// A status fault with the Atlassian JSON error body, as most 4xx/5xx answers carry.
    pub fn status_json(code: u16) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
            body: Some(atlassian_error(code, default_message(code))),
        }
    }

    /// A random transient fault, as a flaky upstream and the proxies in front of it show
    /// them, each kind equally likely: 500, 502 or 503 with a JSON body, 429 with
    /// `Retry-After: 0` (so clients that honour it retry at once), a reset, or a 200 whose
    /// body is cut ([`Fault::Cut`]; a request that would not get a 200 is answered as it
    /// would be).
    pub(crate) fn random_transient(rng: &mut fastrand::Rng) -> Fault {
        match rng.u8(0..6) {
            0 => Fault::status_json(500),
            1 => Fault::status_json(502),
            2 => Fault::status_json(503),
            3 => Fault::Status {
                code: 429,
                retry_after: Some("0".to_owned()),
                body: Some(atlassian_error(429, default_message(429))),
            },
            4 => Fault::Reset,
            _ => Fault::Cut,
        }
    }
}

/// The Atlassian JSON error body: `{"statusCode":…,"message":…,"data":{…}}`.
pub(crate) fn atlassian_error(code: u16, message: &str) -> String {
    serde_json::json!({
        "statusCode": code,
        "message": message,
        "data": {
            "authorized": code != 401 && code != 403,
            "valid": code != 400,
            "errors": [],
            "successful": false,
        },
    })
    .to_string()
}

fn default_message(code: u16) -> &'static str {
    match code {
        400 => "Bad request",
        401 => "Client must be authenticated to access this resource.",
        403 => "Could not access audit records: not permitted",
        404 => "Not found",
        429 => "Rate limit exceeded",
        500 => "Internal server error",
        502 => "Bad gateway",
        503 => "Service unavailable",
        504 => "Gateway timeout",
        _ => "Simulated error",
    }
}

/// Parses the textual form:
/// - `"<code>"` (400..=599): Atlassian JSON error body, except `403` which is an empty
///   `text/plain` body like real Confluence;
/// - options after the code, separated by `:`: `json` (force the JSON body), `empty` (force
///   the empty body), `retry-after=<value>` (sent verbatim), e.g. `"429:retry-after=2"`;
/// - `"reset"`, `"malformed"`, `"wrong-shape"`, `"cut"`, `"delay=250ms"`, `"delay=2s"`;
/// - `"near-limit=1s"`: a normal answer near the rate limit, reset in 1 s.
impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        let s = s.trim();
        match s {
            "reset" => return Ok(Fault::Reset),
            "malformed" => return Ok(Fault::Malformed),
            "wrong-shape" => return Ok(Fault::WrongShape),
            "cut" => return Ok(Fault::Cut),
            _ => {}
        }
        if let Some(delay) = s.strip_prefix("delay=") {
            return parse_delay(delay).map(Fault::Delay).ok_or_else(|| {
                format!(
                    "invalid fault {s:?}: expected a delay like \"delay=250ms\" or \"delay=2s\""
                )
            });
        }
        if let Some(reset) = s.strip_prefix("near-limit=") {
            return parse_delay(reset).map(Fault::NearLimit).ok_or_else(|| {
                format!("invalid fault {s:?}: expected a reset like \"near-limit=1s\"")
            });
        }
        parse_status(s)
    }
}

fn parse_status(s: &str) -> Result<Fault, String> {
    let mut parts = s.split(':');
    let code_text = parts.next().unwrap_or_default();
    let code = code_text
        .parse::<u16>()
        .ok()
        .filter(|code| (400..=599).contains(code))
        .ok_or_else(|| {
            format!(
                "unknown fault {s:?}: expected a 4xx/5xx status (e.g. \"503\", \
                 \"429:retry-after=2\", \"500:json\"), \"reset\", \"malformed\", \
                 \"wrong-shape\", \"cut\" or \"delay=250ms\""
            )
        })?;
    // Real Confluence answers 403 with an empty text/plain body; other errors carry JSON.
    let json_body = || atlassian_error(code, default_message(code));
    let mut body = (code != 403).then(json_body);
    let mut retry_after = None;
    for option in parts {
        match option {
            "json" => body = Some(json_body()),
            "empty" => body = None,
            _ => match option.strip_prefix("retry-after=") {
                Some(value) if !value.is_empty() => retry_after = Some(value.to_owned()),
                _ => {
                    return Err(format!(
                        "unknown option {option:?} in fault {s:?}: expected \"json\", \
                         \"empty\" or \"retry-after=<seconds>\""
                    ));
                }
            },
        }
    }
    Ok(Fault::Status {
        code,
        retry_after,
        body,
    })
}

/// `"250ms"` or `"2s"`.
pub(crate) fn parse_delay(text: &str) -> Option<Duration> {
    let (number, scale_ms) = match text.strip_suffix("ms") {
        Some(ms) => (ms, 1),
        None => (text.strip_suffix('s')?, 1000),
    };
    let millis = number.parse::<u64>().ok()?.checked_mul(scale_ms)?;
    Some(Duration::from_millis(millis))
}
