//! What the gateway reads from request metadata: the deadline (`grpc-timeout`), the
//! caller's credential (`authorization`) and cache directives (`cache-control`).

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

use crate::{credential::Credential, error::GatewayError};

/// The bearer token of the caller's `authorization` metadata, if it has one.
pub(crate) fn bearer_token(md: &MetadataMap) -> Option<&str> {
    let value = md.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller's deadline, a little early so the gateway's own precise status wins the
/// race against the transport's generic time-out.
pub(super) fn deadline(md: &MetadataMap, received: Instant) -> Option<Instant> {
    let timeout = parse_grpc_timeout(md.get("grpc-timeout")?.to_str().ok()?)?;
    // A tenth, 5 ms to 250 ms: enough for the status to cross a loaded host first.
    let margin = (timeout / 10).clamp(Duration::from_millis(5), Duration::from_millis(250));
    Some(received + timeout.saturating_sub(margin))
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub(super) fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether the caller asked to bypass cached pages (`no-cache`, `no-store`, `max-age=0`).
pub(super) fn wants_fresh(md: &MetadataMap) -> bool {
    md.get_all("cache-control")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .any(|d| d == "no-cache" || d == "no-store" || d == "max-age=0")
}

/// The caller's own credential, for `--auth-passthrough`.
pub(super) fn caller_credential(md: &MetadataMap) -> Result<Credential, GatewayError> {
    let value = md.get("authorization").ok_or_else(|| {
        GatewayError::MissingCredential(
            "this gateway forwards each caller's credential: send 'authorization' metadata \
             ('Basic …' or 'Bearer …')"
                .into(),
        )
    })?;
    let value = value.to_str().map_err(|_| {
        GatewayError::MissingCredential("'authorization' metadata is not ASCII".into())
    })?;
    Credential::from_header(value).map_err(|why| {
        GatewayError::MissingCredential(format!("'authorization' metadata refused: {why}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "123456789S", "5s", "-5S", "5", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn cache_directives() {
        let mut md = MetadataMap::new();
        assert!(!wants_fresh(&md));
        md.insert(
            "cache-control",
            "max-age=10, No-Cache".parse().expect("ascii"),
        );
        assert!(wants_fresh(&md));
    }
}
