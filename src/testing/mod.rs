//! What the benches, tests and fuzz targets need of the gateway beyond its API, compiled
//! only with the `testing` feature (and in unit tests): `lib.rs` stays the gateway.
//! `harness` starts gateways and the simulator; `redis`, `nginx` and `stub` the other
//! real parts tests run against; `process` handles child processes; `bench` and `fuzz`
//! reach private parts.

#[cfg(feature = "simulator")]
pub mod harness;
pub mod nginx;
pub mod process;
pub mod redis;
pub mod stub;

/// The steps of a page conversion, for the benches to time one by one.
pub mod bench {
    use crate::{audit::record::Page, pb};

    pub use crate::pb::convert::encode_page;

    /// The converter `encode_page` replaced, which it must equal byte for byte (`links`
    /// put in key order): `Page::parse`, the `prost` message, its encoding.
    pub fn reference_encode_page(body: &[u8]) -> Result<bytes::Bytes, crate::GatewayError> {
        crate::pb::convert::reference_encode_page(body)
    }

    /// Parses a Confluence body into the gateway's borrowed, typed page.
    pub fn parse(body: &[u8]) -> Option<impl Sized + '_> {
        Page::parse(body).ok()
    }

    /// Parses a Confluence body and builds the protobuf page, without encoding it.
    pub fn parse_and_convert(body: &[u8]) -> Option<pb::GetSinceResponse> {
        Page::parse(body).ok().map(pb::convert::page_to_proto)
    }
}

/// Thin wrappers over the crate-private decoders, for the fuzz targets (`fuzz/`) and
/// their replay on stable (`src/fuzz_tests.rs`); not an API. Cursors and checkpoints
/// travel as plain tuples so that their types can stay private.
#[doc(hidden)]
pub mod fuzz {
    use bytes::Bytes;

    use crate::{
        audit::{
            TimeUnit,
            anchor::{Boundary, Cursor, Window},
            checkpoint,
            follow::Checkpoint,
            resume::{self, TokenKey},
        },
        cache::redis,
        pb::wire,
    };

    /// Most digests a token or checkpoint carries (`audit::resume::MAX_SEEN`).
    pub const MAX_SEEN: usize = resume::MAX_SEEN;
    pub use super::bench::reference_encode_page;
    pub use crate::pb::{
        AuditRecord, GetSinceResponse, StreamSinceResponse,
        convert::{ToJson, encode_page},
    };

    /// A resume token's cursor: start, overflow, boundary date, seen digests.
    pub type Cursor4 = (i64, bool, i64, Vec<u64>);

    fn window(search: Option<&str>) -> Window {
        Window {
            number: 3,
            units: TimeUnit::Months,
            search_string: search.map(str::to_owned),
        }
    }

    /// `audit::resume::decode` under key `secret`, for a 3-month window over `search`.
    pub fn decode_token(secret: &[u8], search: Option<&str>, token: &str) -> Option<Cursor4> {
        let c = resume::decode(&TokenKey::new(secret), &window(search), token).ok()?;
        let b = c.boundary.unwrap_or(Boundary {
            date: i64::MAX,
            seen: Vec::new(),
        });
        Some((c.start, c.overflow, b.date, b.seen))
    }

    /// `audit::resume::encode` of a cursor with a boundary.
    pub fn encode_token(secret: &[u8], search: Option<&str>, c: &Cursor4) -> String {
        let cursor = Cursor {
            start: c.0,
            overflow: c.1,
            boundary: Some(Boundary {
                date: c.2,
                seen: c.3.clone(),
            }),
        };
        resume::encode(&TokenKey::new(secret), &window(search), &cursor)
    }

    /// `audit::resume::seal`: any body, signed as a token of key `secret`.
    pub fn seal(secret: &[u8], body: Vec<u8>) -> String {
        resume::seal(&TokenKey::new(secret), body)
    }

    /// `audit::checkpoint::decode`: a checkpoint's `next` and seen digests.
    pub fn decode_checkpoint(
        secret: &[u8],
        search: Option<&str>,
        token: &str,
    ) -> Option<(i64, Vec<u64>)> {
        let cp = checkpoint::decode(&TokenKey::new(secret), search, token).ok()?;
        Some((cp.next, cp.seen))
    }

    /// `audit::checkpoint::encode`.
    pub fn encode_checkpoint(
        secret: &[u8],
        search: Option<&str>,
        next: i64,
        seen: &[u64],
    ) -> String {
        let cp = Checkpoint {
            next,
            seen: seen.to_vec(),
        };
        checkpoint::encode(&TokenKey::new(secret), search, &cp)
    }

    /// `pb::wire::PageView::parse`: a page's encoded records and its `limit`.
    pub fn split_page(page: &Bytes) -> Option<(Vec<Bytes>, i32)> {
        wire::PageView::parse(page)
            .ok()
            .map(|v| (v.records, v.limit))
    }

    /// `pb::wire::creation_date`.
    pub fn creation_date(record: &[u8]) -> Option<i64> {
        wire::creation_date(record).ok()
    }

    /// `pb::wire::stream_message`.
    pub fn stream_message(records: &[Bytes], resume_token: &str) -> Bytes {
        wire::stream_message(records, resume_token)
    }

    /// `cache::redis::wrap_value` with an HMAC-SHA-256 key of `secret`.
    pub fn wrap_value(
        secret: &[u8],
        redis_key: &str,
        page: &[u8],
        expires_unix_ms: u64,
    ) -> Vec<u8> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        redis::wrap_value(&key, redis_key, page, expires_unix_ms)
    }

    /// `cache::redis::unwrap_value`: the page and its milliseconds left.
    pub fn unwrap_value(
        secret: &[u8],
        redis_key: &str,
        value: &[u8],
        now_unix_ms: u64,
    ) -> Option<(Bytes, u128)> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        redis::unwrap_value(&key, redis_key, value, now_unix_ms).map(|(p, d)| (p, d.as_millis()))
    }
}
