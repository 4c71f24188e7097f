//! Reading and writing just enough of the protobuf wire format to stream cached pages
//! without decoding them: `GetSinceResponse.results` and `StreamSinceResponse.records`
//! are both field 1 of type `AuditRecord`, so a record's bytes move from one to the
//! other as they are.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{
    WireType, decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint,
};

/// `GetSinceResponse.results` / `StreamSinceResponse.records`.
const RECORDS: u32 = 1;
/// `StreamSinceResponse.resume_token`.
const RESUME_TOKEN: u32 = 2;
/// `GetSinceResponse.limit`.
const LIMIT: u32 = 3;
/// `AuditRecord.creation_date`.
const CREATION_DATE: u32 = 3;

/// Bytes that are not the message they should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WireError(String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<prost::DecodeError> for WireError {
    fn from(e: prost::DecodeError) -> Self {
        Self(e.to_string())
    }
}

/// An encoded `GetSinceResponse`, its records still encoded (slices of the page).
#[derive(Clone, Debug, Default)]
pub(crate) struct PageView {
    /// Each record's encoded `AuditRecord` bytes, in page order.
    pub records: Vec<Bytes>,
    /// The page's `limit`.
    pub limit: i32,
}

impl PageView {
    /// Splits an encoded `GetSinceResponse` into its records and `limit`.
    pub(crate) fn parse(page: &Bytes) -> Result<Self, WireError> {
        let mut view = PageView::default();
        let mut buf = page.clone();
        while buf.has_remaining() {
            let (tag, wire) = decode_key(&mut buf)?;
            match (tag, wire) {
                (RECORDS, WireType::LengthDelimited) => {
                    let len = length(&mut buf)?;
                    view.records.push(buf.split_to(len));
                }
                // int32 is a varint, sign-extended to 64 bits when negative.
                (LIMIT, WireType::Varint) => view.limit = decode_varint(&mut buf)? as i32,
                _ => skip(wire, &mut buf)?,
            }
        }
        Ok(view)
    }
}

/// `AuditRecord.creation_date` of an encoded record (0 when absent, as protobuf reads it).
/// Records are encoded by this gateway, each field once, so the first occurrence is the
/// value: the walk stops there, near the record's start, rather than going through
/// the rest (followers read each record's date several times).
pub(crate) fn creation_date(record: &[u8]) -> Result<i64, WireError> {
    let mut buf = record;
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf)?;
        if (tag, wire) == (CREATION_DATE, WireType::Varint) {
            return Ok(decode_varint(&mut buf)? as i64);
        }
        skip(wire, &mut buf)?;
    }
    Ok(0)
}

/// An encoded `StreamSinceResponse` of these records and token.
pub(crate) fn stream_message(records: &[Bytes], resume_token: &str) -> Bytes {
    let field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
    let size = records.iter().map(|r| field(r.len())).sum::<usize>() + field(resume_token.len());
    let mut out = BytesMut::with_capacity(size);
    for r in records {
        encode_key(RECORDS, WireType::LengthDelimited, &mut out);
        encode_varint(r.len() as u64, &mut out);
        out.put_slice(r);
    }
    if !resume_token.is_empty() {
        encode_key(RESUME_TOKEN, WireType::LengthDelimited, &mut out);
        encode_varint(resume_token.len() as u64, &mut out);
        out.put_slice(resume_token.as_bytes());
    }
    out.freeze()
}

fn length(buf: &mut impl Buf) -> Result<usize, WireError> {
    let len = decode_varint(buf)?;
    usize::try_from(len)
        .ok()
        .filter(|&l| l <= buf.remaining())
        .ok_or_else(|| WireError("a length-delimited field runs past the end".into()))
}

fn skip(wire: WireType, buf: &mut impl Buf) -> Result<(), WireError> {
    let n = match wire {
        WireType::Varint => {
            decode_varint(buf)?;
            0
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => length(buf)?,
        WireType::StartGroup | WireType::EndGroup => {
            return Err(WireError("groups are not used by this API".into()));
        }
    };
    if buf.remaining() < n {
        return Err(WireError("a field runs past the end".into()));
    }
    buf.advance(n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::pb;

    fn record(date: i64, summary: &str) -> pb::AuditRecord {
        pb::AuditRecord {
            creation_date: date,
            summary: summary.into(),
            unknown_fields: Some(prost_types::Struct::default()),
            ..Default::default()
        }
    }

    #[test]
    fn pages_split_into_records_and_rejoin_as_stream_messages() {
        let page = pb::GetSinceResponse {
            results: vec![record(-5, "a"), record(1 << 40, "b"), record(0, "")],
            start: 7,
            limit: -3,
            size: 3,
            links: [(
                "base".to_owned(),
                crate::pb::convert::json_to_value("x".into()),
            )]
            .into(),
            unknown_fields: None,
            json_text_paths: vec!["/x".to_owned()],
        };
        let bytes = Bytes::from(page.encode_to_vec());
        let view = PageView::parse(&bytes).expect("parses");
        assert_eq!(view.limit, -3);
        assert_eq!(view.records.len(), 3);
        let dates: Vec<i64> = view
            .records
            .iter()
            .map(|r| creation_date(r).expect("date"))
            .collect();
        assert_eq!(dates, vec![-5, 1 << 40, 0]);

        let msg = stream_message(&view.records[1..], "tok");
        let decoded = pb::StreamSinceResponse::decode(msg).expect("decodes");
        assert_eq!(decoded.records, page.results[1..].to_vec());
        assert_eq!(decoded.resume_token, "tok");
    }

    #[test]
    fn truncated_pages_are_errors() {
        let page = pb::GetSinceResponse {
            results: vec![record(1, "abc")],
            ..Default::default()
        }
        .encode_to_vec();
        let cut = Bytes::copy_from_slice(&page[..page.len() - 1]);
        assert!(PageView::parse(&cut).is_err());
    }
}
