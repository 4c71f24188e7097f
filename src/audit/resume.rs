//! Resume tokens: where a stream stood after a message, for the same window only.
//! Opaque to callers, versioned, and checked: a corrupted token or one from another
//! window is refused rather than misread.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::digest;

use super::anchor::{Anchor, Cursor, Window};

const VERSION: u8 = 1;
/// Version, window digest, start, anchor id, anchor date, run, checksum.
const LEN: usize = 1 + 8 + 8 + 16 + 8 + 4 + 4;

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not a token this gateway wrote (bad encoding, length or checksum).
    Corrupt,
    /// A token version this gateway does not read.
    UnknownVersion(u8),
    /// A token of a stream over other filters.
    OtherWindow,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Corrupt => f.write_str("is not a resume token (corrupted or truncated?)"),
            Self::UnknownVersion(v) => write!(f, "has version {v}, which this gateway cannot read"),
            Self::OtherWindow => {
                f.write_str("belongs to a stream with other filters (number, units, search_string)")
            }
        }
    }
}

/// Encodes a cursor (which must have an anchor) of a stream over `window`.
pub(crate) fn encode(window: &Window, cursor: &Cursor) -> String {
    let (start, run) = (cursor.start, cursor.run);
    let anchor = cursor.anchor.unwrap_or(Anchor {
        id: [0; 16],
        date: 0,
    });
    let mut b = Vec::with_capacity(LEN);
    b.push(VERSION);
    b.extend_from_slice(&window_digest(window));
    b.extend_from_slice(&start.to_be_bytes());
    b.extend_from_slice(&anchor.id);
    b.extend_from_slice(&anchor.date.to_be_bytes());
    b.extend_from_slice(&run.to_be_bytes());
    let sum = checksum(&b);
    b.extend_from_slice(&sum);
    URL_SAFE_NO_PAD.encode(b)
}

/// Decodes a token for `window` into the cursor to continue from.
pub(crate) fn decode(window: &Window, token: &str) -> Result<Cursor, TokenError> {
    let b = URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| TokenError::Corrupt)?;
    if b.len() != LEN || checksum(&b[..LEN - 4]) != b[LEN - 4..] {
        return Err(TokenError::Corrupt);
    }
    if b[0] != VERSION {
        return Err(TokenError::UnknownVersion(b[0]));
    }
    if b[1..9] != window_digest(window) {
        return Err(TokenError::OtherWindow);
    }
    let int = |r: std::ops::Range<usize>| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[r]);
        i64::from_be_bytes(a)
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&b[17..33]);
    let start = int(9..17);
    let run = u32::from_be_bytes([b[41], b[42], b[43], b[44]]);
    // Offsets are int32 upstream; a run is at least the anchor itself.
    if !(0..=i64::from(i32::MAX)).contains(&start) || run == 0 {
        return Err(TokenError::Corrupt);
    }
    Ok(Cursor {
        start,
        anchor: Some(Anchor {
            id,
            date: int(33..41),
        }),
        run,
    })
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

fn checksum(b: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    out.copy_from_slice(&digest::digest(&digest::SHA256, b).as_ref()[..4]);
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

    #[test]
    fn round_trips() {
        let c = Cursor {
            start: 1234,
            anchor: Some(Anchor {
                id: [7; 16],
                date: -5,
            }),
            run: 2,
        };
        let t = encode(&window(None), &c);
        assert_eq!(decode(&window(None), &t), Ok(c));
    }

    #[test]
    fn refuses_other_windows_and_corruption() {
        let c = Cursor {
            start: 5,
            anchor: Some(Anchor {
                id: [1; 16],
                date: 9,
            }),
            run: 1,
        };
        let t = encode(&window(Some("x")), &c);
        assert_eq!(decode(&window(None), &t), Err(TokenError::OtherWindow));
        assert_eq!(decode(&window(Some("y")), &t), Err(TokenError::OtherWindow));
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).expect("b64");
        bytes[12] ^= 1;
        let flipped = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(
            decode(&window(Some("x")), &flipped),
            Err(TokenError::Corrupt)
        );
        for junk in ["", "garbage!", &t[..t.len() - 2]] {
            assert_eq!(
                decode(&window(Some("x")), junk),
                Err(TokenError::Corrupt),
                "{junk}"
            );
        }
    }
}
