//! What the gateway reads from request metadata: the deadline (`grpc-timeout`), the
//! caller's credential (`authorization`), cache directives (`cache-control`) and the
//! caller's name a mesh put in a header (`--caller-header`).

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use tonic::metadata::{Ascii, MetadataKey, MetadataMap};

use crate::{credential::Credential, error::GatewayError};

/// The keys every call looks up, parsed once: a `&str` key is parsed and checked on
/// each look-up.
static AUTHORIZATION: LazyLock<MetadataKey<Ascii>> =
    LazyLock::new(|| MetadataKey::from_static("authorization"));
static GRPC_TIMEOUT: LazyLock<MetadataKey<Ascii>> =
    LazyLock::new(|| MetadataKey::from_static("grpc-timeout"));
static CACHE_CONTROL: LazyLock<MetadataKey<Ascii>> =
    LazyLock::new(|| MetadataKey::from_static("cache-control"));

/// The bearer token of the caller's `authorization` metadata, if it has one.
pub(crate) fn bearer_token(md: &MetadataMap) -> Option<&str> {
    let value = md.get(&*AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller's deadline, a little early so the gateway's own precise status wins the
/// race against the transport's generic time-out.
/// Longest caller name taken from a header; a longer value is cut.
const MAX_CALLER_NAME: usize = 256;

/// The caller a mesh named in header `name`: for `x-forwarded-client-cert` (Envoy,
/// Istio), the `URI` (else `DNS`) of the element the nearest proxy added, the last one;
/// for any other header its value. `None` when absent, empty or not printable ASCII.
pub(super) fn caller_header(md: &MetadataMap, name: &str) -> Option<String> {
    let value = md.get(name)?.to_str().ok()?.trim();
    let value = if name.eq_ignore_ascii_case("x-forwarded-client-cert") {
        xfcc_identity(value)?
    } else {
        value
    };
    let printable = !value.is_empty() && value.bytes().all(|b| (0x21..0x7f).contains(&b));
    printable.then(|| value.chars().take(MAX_CALLER_NAME).collect())
}

/// The client identity in an `x-forwarded-client-cert` value: `Key=Value` pairs split
/// by `;`, elements by `,` (either may sit inside a quoted value).
fn xfcc_identity(value: &str) -> Option<&str> {
    let last = split_unquoted(value, ',').pop()?;
    let pairs = split_unquoted(last, ';');
    let field = |key: &str| {
        pairs.iter().find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(key)
                .then(|| v.trim().trim_matches('"'))
        })
    };
    field("URI")
        .filter(|v| !v.is_empty())
        .or_else(|| field("DNS").filter(|v| !v.is_empty()))
}

/// `s` split at each `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

pub(super) fn deadline(md: &MetadataMap, received: Instant) -> Option<Instant> {
    let timeout = parse_grpc_timeout(md.get(&*GRPC_TIMEOUT)?.to_str().ok()?)?;
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
    md.get_all(&*CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|d| {
            ["no-cache", "no-store", "max-age=0"]
                .iter()
                .any(|f| d.eq_ignore_ascii_case(f))
        })
}

/// The caller's own credential, for `--auth-passthrough`.
pub(super) fn caller_credential(md: &MetadataMap) -> Result<Credential, GatewayError> {
    let value = md.get(&*AUTHORIZATION).ok_or_else(|| {
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
    fn a_mesh_header_names_the_caller() {
        let mut md = MetadataMap::new();
        let xfcc = r#"By=spiffe://c/ns/a/sa/gw;Hash=ab;Subject="CN=x,O=y";URI=spiffe://c/ns/b/sa/first,By=spiffe://c/ns/a/sa/gw;Hash=cd;URI=spiffe://c/ns/b/sa/billing"#;
        md.insert("x-forwarded-client-cert", xfcc.parse().expect("ascii"));
        md.insert("x-caller", " team-siem ".parse().expect("ascii"));
        md.insert("x-blank", "".parse().expect("ascii"));
        assert_eq!(
            caller_header(&md, "x-forwarded-client-cert").as_deref(),
            Some("spiffe://c/ns/b/sa/billing"),
            "the URI of the last element"
        );
        assert_eq!(caller_header(&md, "x-caller").as_deref(), Some("team-siem"));
        assert_eq!(caller_header(&md, "x-blank"), None);
        assert_eq!(caller_header(&md, "x-absent"), None);
        md.insert(
            "x-forwarded-client-cert",
            "Hash=ab;By=x".parse().expect("ascii"),
        );
        assert_eq!(
            caller_header(&md, "x-forwarded-client-cert"),
            None,
            "no identity in it"
        );
    }

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
