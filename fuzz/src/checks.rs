//! One check per fuzz target: feed the bytes to a decoder and assert what must hold of
//! whatever it accepts. Shared by the libFuzzer targets (`fuzz/fuzz_targets/`) and by
//! their replay on stable (`src/fuzz_tests.rs` includes this file), which reach the
//! gateway through `super::gw` (`audit_gateway::testing::fuzz` here, `crate::testing::fuzz` there).

use bytes::Bytes;
use prost::Message;
use serde_json::Value;

use super::gw::{self, ToJson};

/// The secret every target signs and checks tokens and Redis values with.
pub const SECRET: &[u8] = b"fuzz";
/// The Redis key values are checked under.
pub const REDIS_KEY: &str = "ag:v1:page:fuzz";

/// The page converter (`src/pb/convert/`): a body `encode_page` accepts is a JSON object
/// whose `results` array has as many records as the encoded `GetSinceResponse`, which
/// the stream's wire-level splitting (`src/pb/wire.rs`) reads alike, and which prints
/// back as the same JSON (numbers as doubles, absent typed keys as their defaults).
pub fn page(data: &[u8]) {
    let Ok(encoded) = gw::encode_page(data) else {
        return;
    };
    let json: Value = serde_json::from_slice(data).expect("an accepted body is JSON");
    let results = json["results"]
        .as_array()
        .expect("an accepted body has a results array");
    let decoded = gw::GetSinceResponse::decode(encoded.clone()).expect("the page decodes");
    assert_eq!(
        decoded.results.len(),
        results.len(),
        "records lost or added"
    );

    let (records, limit) = gw::split_page(&encoded).expect("the stream splits our pages");
    assert_eq!(records.len(), results.len());
    assert_eq!(limit, decoded.limit);
    for (bytes, record) in records.iter().zip(&decoded.results) {
        assert_eq!(gw::creation_date(bytes), Some(record.creation_date));
    }

    let back = decoded.to_json();
    assert!(
        same(&json, &back),
        "not lossless:\n in:  {json}\n out: {back}"
    );
}

/// The one-pass page converter against the one it replaced (`reference_encode_page`):
/// the same bytes for a body either accepts, the same error for one either refuses.
pub fn page_reference(data: &[u8]) {
    match (gw::encode_page(data), gw::reference_encode_page(data)) {
        (Ok(ours), Ok(reference)) => assert!(ours == reference, "different bytes"),
        (Err(ours), Err(reference)) => assert_eq!(ours.to_string(), reference.to_string()),
        (ours, reference) => panic!(
            "one refused: ours {:?}, reference {:?}",
            ours.map(|b| b.len()),
            reference.map(|b| b.len())
        ),
    }
}

/// `input` printed back as `output`: numbers equal as doubles (`google.protobuf.Value`
/// holds doubles), keys of `input` all kept, keys only in `output` at their defaults
/// (`to_json` writes every typed field, `src/pb/convert/to_json.rs`).
fn same(input: &Value, output: &Value) -> bool {
    match (input, output) {
        (Value::Number(a), Value::Number(b)) => a == b || a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
                && b.iter().all(|(k, w)| a.contains_key(k) || is_default(w))
        }
        _ => input == output,
    }
}

/// A value `to_json` writes for a typed field that was absent.
fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// The first byte picks the mode (bit 0: the rest is a body to sign rather than a token
/// as a caller sends it, so the fuzzer reaches past the MAC; bit 1: a `search_string`).
fn mode(data: &[u8]) -> Option<(String, Option<&'static str>, Option<&'static str>)> {
    let (&m, rest) = data.split_first()?;
    let token = if m & 1 == 1 {
        gw::seal(SECRET, rest.to_vec())
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    let (search, other) = if m & 2 == 2 {
        (Some("x"), None)
    } else {
        (None, Some("x"))
    };
    Some((token, search, other))
}

/// Resume tokens (`src/audit/resume.rs`): one that decodes is refused under another key,
/// another window, and as a follow checkpoint; it is canonical (re-encoding its cursor
/// gives the same token, within `MAX_SEEN` digests), and its start is an `i32` offset.
pub fn resume_token(data: &[u8]) {
    let Some((token, search, other)) = mode(data) else {
        return;
    };
    let Some(cursor) = gw::decode_token(SECRET, search, &token) else {
        return;
    };
    assert!(gw::decode_token(b"other", search, &token).is_none());
    assert!(gw::decode_token(SECRET, other, &token).is_none());
    assert!(gw::decode_checkpoint(SECRET, search, &token).is_none());
    assert!((0..=i64::from(i32::MAX)).contains(&cursor.0));

    let again = gw::encode_token(SECRET, search, &cursor);
    if cursor.3.len() <= gw::MAX_SEEN {
        assert_eq!(again, token.trim(), "a token that decodes is canonical");
    }
    let mut capped = cursor.clone();
    capped.3.truncate(gw::MAX_SEEN);
    assert_eq!(gw::decode_token(SECRET, search, &again), Some(capped));
}

/// Follow checkpoints (`src/audit/checkpoint.rs`): the same properties as resume tokens.
pub fn checkpoint(data: &[u8]) {
    let Some((token, search, other)) = mode(data) else {
        return;
    };
    let Some((next, seen)) = gw::decode_checkpoint(SECRET, search, &token) else {
        return;
    };
    assert!(gw::decode_checkpoint(b"other", search, &token).is_none());
    assert!(gw::decode_checkpoint(SECRET, other, &token).is_none());
    assert!(gw::decode_token(SECRET, search, &token).is_none());

    let again = gw::encode_checkpoint(SECRET, search, next, &seen);
    if seen.len() <= gw::MAX_SEEN {
        assert_eq!(
            again,
            token.trim(),
            "a checkpoint that decodes is canonical"
        );
    }
    let capped = seen[..seen.len().min(gw::MAX_SEEN)].to_vec();
    assert_eq!(
        gw::decode_checkpoint(SECRET, search, &again),
        Some((next, capped))
    );
}

/// Wire-level splicing (`src/pb/wire.rs`): a page that splits re-joins as a stream
/// message that splits into the same records, and where prost decodes the same bytes
/// both readings agree (records, `limit`, each `creation_date`).
pub fn wire(data: &[u8]) {
    let page = Bytes::copy_from_slice(data);
    if let (Some(date), Ok(record)) = (gw::creation_date(data), gw::AuditRecord::decode(data)) {
        assert_eq!(date, record.creation_date);
    }
    let Some((records, limit)) = gw::split_page(&page) else {
        return;
    };
    let token = "token";
    let message = gw::stream_message(&records, token);
    let (again, _) = gw::split_page(&message).expect("a stream message splits");
    assert_eq!(again, records, "records changed on the way through");

    let Ok(decoded) = gw::GetSinceResponse::decode(page) else {
        return;
    };
    assert_eq!(records.len(), decoded.results.len());
    assert_eq!(limit, decoded.limit);
    for (bytes, record) in records.iter().zip(&decoded.results) {
        if let Some(date) = gw::creation_date(bytes) {
            assert_eq!(date, record.creation_date);
        }
    }
    let streamed = gw::StreamSinceResponse::decode(message).expect("the message decodes");
    // Compared encoded: a `google.protobuf.Value` may hold a NaN, never equal to itself.
    let encoded =
        |rs: &[gw::AuditRecord]| rs.iter().map(Message::encode_to_vec).collect::<Vec<_>>();
    assert_eq!(encoded(&streamed.records), encoded(&decoded.results));
    assert_eq!(streamed.resume_token, token);
}

/// Redis values (`src/cache/redis.rs`): the first 8 bytes are the clock, the rest a
/// value. A value accepted is exactly what `wrap_value` writes for its page and expiry,
/// under this key and secret only; and any page wrapped comes back until it expires,
/// and not once a byte of it is changed.
pub fn redis_value(data: &[u8]) {
    let Some((now, value)) = data.split_first_chunk::<8>() else {
        return;
    };
    let now = u64::from_be_bytes(*now);
    if let Some((page, left)) = gw::unwrap_value(SECRET, REDIS_KEY, value, now) {
        let expires = u64::from_be_bytes(value[4..12].try_into().expect("8 bytes"));
        assert_eq!(gw::wrap_value(SECRET, REDIS_KEY, &page, expires), value);
        assert!(expires > now);
        assert_eq!(left, u128::from(expires - now));
        assert!(gw::unwrap_value(b"other", REDIS_KEY, value, now).is_none());
        assert!(gw::unwrap_value(SECRET, "ag:v1:page:other", value, now).is_none());
    }

    let expires = now.saturating_add(1 + value.len() as u64);
    let wrapped = gw::wrap_value(SECRET, REDIS_KEY, value, expires);
    if expires > now {
        let (page, left) = gw::unwrap_value(SECRET, REDIS_KEY, &wrapped, now)
            .expect("a fresh value of ours unwraps");
        assert_eq!(&page[..], value);
        assert_eq!(left, u128::from(expires - now));
    }
    assert!(gw::unwrap_value(SECRET, REDIS_KEY, &wrapped, expires).is_none());
    let at = usize::from(data[0]) * 251 % wrapped.len();
    let mut edited = wrapped;
    edited[at] ^= 1 << (data[1] % 8);
    assert!(gw::unwrap_value(SECRET, REDIS_KEY, &edited, now).is_none());
}
