//! Follow checkpoints: where a follower stood after a message, for the same filter only.
//! Self-contained (a new call on any replica continues from it alone), versioned and
//! authenticated like resume tokens (`src/audit/resume.rs`, the same key), and marked
//! as checkpoints so that neither kind of token passes for the other.

use ring::digest;

use super::{
    follow::Checkpoint,
    resume::{MAX_SEEN, TokenError, TokenKey, open, seal},
};

/// Marks a checkpoint (a resume token starts with its version, 2).
const KIND: u8 = b'F';
const VERSION: u8 = 1;
/// Kind, version, filter digest, `next`, count of seen digests.
const HEAD: usize = 1 + 1 + 8 + 8 + 2;
const DIGEST: usize = 8;

/// Encodes where a follower of `search_string` stands.
pub(crate) fn encode(key: &TokenKey, search_string: Option<&str>, cp: &Checkpoint) -> String {
    let seen = &cp.seen[..cp.seen.len().min(MAX_SEEN)];
    let mut b = Vec::with_capacity(HEAD + seen.len() * DIGEST + 16);
    b.push(KIND);
    b.push(VERSION);
    b.extend_from_slice(&filter_digest(search_string));
    b.extend_from_slice(&cp.next.to_be_bytes());
    b.extend_from_slice(&(seen.len() as u16).to_be_bytes());
    for d in seen {
        b.extend_from_slice(&d.to_be_bytes());
    }
    seal(key, b)
}

/// Decodes a checkpoint of a follower of `search_string`.
pub(crate) fn decode(
    key: &TokenKey,
    search_string: Option<&str>,
    token: &str,
) -> Result<Checkpoint, TokenError> {
    let body = open(key, token, laid_out)?;
    if body.len() < HEAD || body[0] != KIND {
        return Err(TokenError::Corrupt);
    }
    if body[1] != VERSION {
        return Err(TokenError::UnknownVersion(body[1]));
    }
    if body[2..10] != filter_digest(search_string) {
        return Err(TokenError::OtherFilter);
    }
    let next = i64::from_be_bytes(word(&body[10..18]));
    let count = usize::from(u16::from_be_bytes([body[18], body[19]]));
    if body.len() != HEAD + count * DIGEST {
        return Err(TokenError::Corrupt);
    }
    let seen = body[HEAD..]
        .chunks_exact(DIGEST)
        .map(|c| u64::from_be_bytes(word(c)))
        .collect();
    Ok(Checkpoint { next, seen })
}

/// Whether an unverified body is laid out as `encode` writes a checkpoint: only to tell
/// one signed with another key from a damaged one (`resume::open`).
fn laid_out(body: &[u8]) -> bool {
    body.len() >= HEAD
        && body[0] == KIND
        && body[1] == VERSION
        && body.len() == HEAD + usize::from(u16::from_be_bytes([body[18], body[19]])) * DIGEST
}

fn word(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

fn filter_digest(search_string: Option<&str>) -> [u8; 8] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"follow");
    match search_string {
        Some(s) => {
            ctx.update(&[1]);
            ctx.update(s.as_bytes());
        }
        None => ctx.update(&[0]),
    }
    word(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::*;
    use crate::audit::{
        TimeUnit,
        anchor::{Cursor, Window},
        resume,
    };

    #[test]
    fn round_trips_and_refuses_anything_else() {
        let key = TokenKey::new(b"k");
        let cp = Checkpoint {
            next: 1_700_000_000_123,
            seen: vec![1, 1, u64::MAX],
        };
        let t = encode(&key, Some("x"), &cp);
        assert_eq!(decode(&key, Some("x"), &t), Ok(cp.clone()));
        assert_eq!(decode(&key, None, &t), Err(TokenError::OtherFilter));
        assert_eq!(decode(&key, Some("y"), &t), Err(TokenError::OtherFilter));
        // Signed with another key (another --credential-salt): told apart from damage,
        // whichever filter the other gateway's follower had.
        let other_key = TokenKey::new(b"other");
        assert_eq!(decode(&other_key, Some("x"), &t), Err(TokenError::OtherKey));
        assert_eq!(decode(&other_key, None, &t), Err(TokenError::OtherKey));
        let bytes = URL_SAFE_NO_PAD.decode(&t).expect("b64");
        for i in 0..bytes.len() {
            let mut edited = bytes.clone();
            edited[i] ^= 1;
            let edited = URL_SAFE_NO_PAD.encode(&edited);
            // Where the flip breaks the layout it is damage; elsewhere (the MAC, the
            // position) it cannot be told from another key's signature.
            let want = if i < 2 || i == 18 || i == 19 {
                TokenError::Corrupt
            } else {
                TokenError::OtherKey
            };
            assert_eq!(
                decode(&key, Some("x"), &edited),
                Err(want),
                "bit flipped in byte {i}"
            );
        }
        // Cut short, or not a token at all: damage.
        for junk in ["", "garbage!", &t[..t.len() - 2], &t[..t.len() / 2]] {
            assert_eq!(decode(&key, Some("x"), junk), Err(TokenError::Corrupt));
        }
    }

    #[test]
    fn a_resume_token_is_not_a_checkpoint_nor_the_reverse() {
        let key = TokenKey::new(b"k");
        let window = Window {
            number: 3,
            units: TimeUnit::Months,
            search_string: None,
        };
        let resume_token = resume::encode(&key, &window, &Cursor::BEGIN);
        assert_eq!(decode(&key, None, &resume_token), Err(TokenError::Corrupt));
        let cp = encode(&key, None, &Checkpoint::at(5));
        assert!(resume::decode(&key, &window, &cp).is_err());
    }
}
