//! Resume tokens: where a stream stood after a message, for the same window only.
//! Opaque to callers, versioned and authenticated (an HMAC keyed by a secret of the
//! gateway's), so a forged, edited or corrupted token, or one from another window, is
//! refused before anything is fetched.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{digest, hmac};

use super::anchor::{Boundary, Cursor, Window};

const VERSION: u8 = 2;
/// Version, window digest, start, overflow flag, boundary date, count of seen digests.
const HEAD: usize = 1 + 8 + 8 + 1 + 8 + 2;
/// Each digest delivered at the boundary's millisecond.
const DIGEST: usize = 8;
/// The MAC's length (HMAC-SHA-256, truncated).
const MAC: usize = 16;
/// Most digests a token carries: a tie group larger than this is past what the
/// stream guarantees anyway (see `anchor.rs`), and tokens stay under ~11 KiB.
pub(crate) const MAX_SEEN: usize = 1000;

/// The key that signs and checks tokens. Replicas that resume each other's streams
/// must share it (it derives from `--credential-salt`).
pub(crate) struct TokenKey(hmac::Key);

impl TokenKey {
    /// A key from secret bytes.
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not a token of this kind at all (bad encoding, length or layout): damaged, cut
    /// short, or another kind of token.
    Corrupt,
    /// Laid out as this gateway writes such tokens, but its MAC does not match this
    /// gateway's key: signed with another `--credential-salt` (a gateway restarted
    /// without one, or with another one), or edited.
    OtherKey,
    /// A token version this gateway does not read.
    UnknownVersion(u8),
    /// A token of a stream over other filters.
    OtherWindow,
    /// A checkpoint of a follower of another `search_string`.
    OtherFilter,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Corrupt => f.write_str(
                "is damaged: not a token this gateway issues for this call (cut short, \
                 corrupted, or of another kind)",
            ),
            Self::OtherKey => f.write_str(
                "was signed with another key: issued by a gateway with another \
                 --credential-salt (or one restarted without --credential-salt), or edited",
            ),
            Self::UnknownVersion(v) => write!(f, "has version {v}, which this gateway cannot read"),
            Self::OtherWindow => {
                f.write_str("belongs to a stream with other filters (number, units, search_string)")
            }
            Self::OtherFilter => f.write_str("belongs to a follower of another search_string"),
        }
    }
}

impl TokenError {
    /// A stable word for the cause, sent in the status's `ErrorInfo` metadata (`cause`)
    /// so clients such as `audit-gateway follow` (`src/cli/follow.rs`) tell causes apart
    /// without reading the message.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Corrupt => "DAMAGED",
            Self::OtherKey => "OTHER_KEY",
            Self::UnknownVersion(_) => "UNKNOWN_VERSION",
            Self::OtherWindow | Self::OtherFilter => "OTHER_FILTER",
        }
    }
}

/// Encodes a cursor (which must have a boundary) of a stream over `window`.
pub(crate) fn encode(key: &TokenKey, window: &Window, cursor: &Cursor) -> String {
    let (date, seen): (i64, &[u64]) = match &cursor.boundary {
        Some(b) => (b.date, &b.seen[..b.seen.len().min(MAX_SEEN)]),
        None => (i64::MAX, &[]),
    };
    let mut b = Vec::with_capacity(HEAD + seen.len() * DIGEST + MAC);
    b.push(VERSION);
    b.extend_from_slice(&window_digest(window));
    b.extend_from_slice(&cursor.start.to_be_bytes());
    b.push(u8::from(cursor.overflow));
    b.extend_from_slice(&date.to_be_bytes());
    b.extend_from_slice(&(seen.len() as u16).to_be_bytes());
    for d in seen {
        b.extend_from_slice(&d.to_be_bytes());
    }
    seal(key, b)
}

/// Decodes a token for `window` into the cursor to continue from.
pub(crate) fn decode(key: &TokenKey, window: &Window, token: &str) -> Result<Cursor, TokenError> {
    let body = open(key, token, laid_out)?;
    if body.len() < HEAD {
        return Err(TokenError::Corrupt);
    }
    if body[0] != VERSION {
        return Err(TokenError::UnknownVersion(body[0]));
    }
    if body[1..9] != window_digest(window) {
        return Err(TokenError::OtherWindow);
    }
    let int = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&body[at..at + 8]);
        i64::from_be_bytes(a)
    };
    let start = int(9);
    let overflow = body[17] == 1;
    let date = int(18);
    let count = usize::from(u16::from_be_bytes([body[26], body[27]]));
    if body.len() != HEAD + count * DIGEST
        || !(0..=i64::from(i32::MAX)).contains(&start)
        || body[17] > 1
    {
        return Err(TokenError::Corrupt);
    }
    let seen = body[HEAD..]
        .chunks_exact(DIGEST)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect();
    Ok(Cursor {
        start,
        boundary: Some(Boundary { date, seen }),
        overflow,
    })
}

/// Whether an unverified body is laid out as `encode` writes it: only to tell a token
/// signed with another key from a damaged one, never to believe what it says.
fn laid_out(body: &[u8]) -> bool {
    body.len() >= HEAD
        && body[0] == VERSION
        && body.len() == HEAD + usize::from(u16::from_be_bytes([body[26], body[27]])) * DIGEST
}

/// `body` with its MAC appended, as URL-safe base64: a token of this gateway's.
pub(crate) fn seal(key: &TokenKey, mut body: Vec<u8>) -> String {
    let tag = hmac::sign(&key.0, &body);
    body.extend_from_slice(&tag.as_ref()[..MAC]);
    URL_SAFE_NO_PAD.encode(body)
}

/// The body of a token `seal` made with `key`. The MAC is checked before anything in the
/// body is believed; a MAC that does not match is [`TokenError::OtherKey`] when the body
/// is `laid_out` as the caller's kind of token is (a token of another gateway's), else,
/// like anything else, [`TokenError::Corrupt`].
pub(crate) fn open(
    key: &TokenKey,
    token: &str,
    laid_out: fn(&[u8]) -> bool,
) -> Result<Vec<u8>, TokenError> {
    let mut b = URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| TokenError::Corrupt)?;
    if b.len() <= MAC {
        return Err(TokenError::Corrupt);
    }
    let tag = b.split_off(b.len() - MAC);
    let expected = hmac::sign(&key.0, &b);
    if !constant_time_eq(&expected.as_ref()[..MAC], &tag) {
        return Err(if laid_out(&b) {
            TokenError::OtherKey
        } else {
            TokenError::Corrupt
        });
    }
    Ok(b)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn window_digest(w: &Window) -> [u8; 8] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&w.number.to_be_bytes());
    ctx.update(w.units.as_str().as_bytes());
    match &w.search_string {
        Some(s) => {
            ctx.update(&[1]);
            ctx.update(s.as_bytes());
        }
        None => ctx.update(&[0]),
    }
    let mut out = [0u8; 8];
    out.copy_from_slice(&ctx.finish().as_ref()[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::TimeUnit;

    fn window(search: Option<&str>) -> Window {
        Window {
            number: 3,
            units: TimeUnit::Months,
            search_string: search.map(str::to_owned),
        }
    }

    fn cursor(seen: Vec<u64>) -> Cursor {
        Cursor {
            start: 1234,
            boundary: Some(Boundary { date: -5, seen }),
            overflow: false,
        }
    }

    #[test]
    fn round_trips() {
        let key = TokenKey::new(b"k");
        for c in [cursor(vec![]), cursor(vec![1, 1, u64::MAX])] {
            let t = encode(&key, &window(None), &c);
            assert_eq!(decode(&key, &window(None), &t), Ok(c));
        }
    }

    #[test]
    fn refuses_other_windows_other_keys_and_any_edit() {
        let key = TokenKey::new(b"k");
        let t = encode(&key, &window(Some("x")), &cursor(vec![7]));
        assert_eq!(
            decode(&key, &window(None), &t),
            Err(TokenError::OtherWindow)
        );
        assert_eq!(
            decode(&key, &window(Some("y")), &t),
            Err(TokenError::OtherWindow)
        );
        assert_eq!(
            decode(&TokenKey::new(b"other"), &window(Some("x")), &t),
            Err(TokenError::OtherKey)
        );
        // Flipping any bit anywhere, MAC included, is caught: as damage where it breaks
        // the layout, else as a signature that does not match.
        let bytes = URL_SAFE_NO_PAD.decode(&t).expect("b64");
        for i in 0..bytes.len() {
            let mut edited = bytes.clone();
            edited[i] ^= 1;
            let edited = URL_SAFE_NO_PAD.encode(&edited);
            let want = if i == 0 || i == 26 || i == 27 {
                TokenError::Corrupt
            } else {
                TokenError::OtherKey
            };
            assert_eq!(
                decode(&key, &window(Some("x")), &edited),
                Err(want),
                "bit flipped in byte {i}"
            );
        }
        for junk in ["", "garbage!", &t[..t.len() - 2]] {
            assert_eq!(
                decode(&key, &window(Some("x")), junk),
                Err(TokenError::Corrupt),
                "{junk}"
            );
        }
    }
}
