//! Confluence's JSON ⇄ protobuf, both directions in one place: `direct` turns a
//! fetched body into an encoded `GetSinceResponse` in one pass (typed fields, everything
//! else kept in `unknown_fields`), `from_json` is the converter it replaced (parse, build
//! the `prost` message, encode it), kept for tests and benches as the reference it must
//! equal byte for byte, `to_json` prints messages back as Confluence's JSON, and the
//! `TimeUnit` mapping between the domain and the proto enum is written here once.

mod data_center;
mod deep;
mod direct;
#[cfg(test)]
mod equivalence;
#[cfg(any(test, feature = "testing"))]
mod from_json;
mod to_json;

use bytes::Bytes;

pub(crate) use data_center::encode_data_center_page;
#[cfg(test)]
pub(crate) use from_json::json_to_value;
#[cfg(any(test, feature = "testing"))]
pub(crate) use from_json::page_to_proto;
pub use to_json::ToJson;

use crate::{
    audit::{
        TimeUnit,
        retention::{Retention, RetentionUnit},
    },
    error::GatewayError,
    pb,
};

/// A 200 body from Confluence as an encoded `GetSinceResponse`.
pub fn encode_page(body: &[u8]) -> Result<Bytes, GatewayError> {
    direct::encode_page(body)
        .map(Bytes::from)
        .map_err(not_a_page)
}

/// `encode_page` the way it was done before `direct`: `Page::parse`, the `prost` message
/// (`from_json`), then its encoding; the reference `encode_page` is tested against. The
/// entries of `links` (a `HashMap`, which prost writes in the map's random order) are
/// then put in key order, as `direct` writes them.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn reference_encode_page(body: &[u8]) -> Result<Bytes, GatewayError> {
    use prost::Message;
    let page = crate::audit::record::Page::parse(body).map_err(not_a_page)?;
    let encoded = page_to_proto(page).encode_to_vec();
    Ok(Bytes::from(links_in_key_order(&encoded).unwrap_or(encoded)))
}

/// An encoded `GetSinceResponse` with its `links` entries (field 5, which prost writes
/// together) sorted by key; `None` if the bytes are not a message.
#[cfg(any(test, feature = "testing"))]
fn links_in_key_order(page: &[u8]) -> Option<Vec<u8>> {
    use prost::encoding::{WireType, decode_key, decode_varint};

    /// The bytes of one field at the front of `buf`, and its number.
    fn field<'a>(buf: &mut &'a [u8]) -> Option<(u32, &'a [u8])> {
        let whole = *buf;
        let (tag, wire) = decode_key(buf).ok()?;
        let len = match wire {
            WireType::Varint => {
                decode_varint(buf).ok()?;
                0
            }
            WireType::LengthDelimited => usize::try_from(decode_varint(buf).ok()?).ok()?,
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        *buf = buf.get(len..)?;
        Some((tag, &whole[..whole.len() - buf.len()]))
    }
    /// A map entry's key: its field 1 (absent when empty), after the entry's own key and
    /// length.
    fn entry_key(entry: &[u8]) -> Option<&[u8]> {
        let mut buf = entry;
        decode_key(&mut buf).ok()?;
        decode_varint(&mut buf).ok()?;
        match decode_key(&mut buf) {
            Ok((1, WireType::LengthDelimited)) => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                buf.get(..len)
            }
            _ => Some(&[]),
        }
    }

    let mut buf = page;
    let mut out = Vec::with_capacity(page.len());
    let mut links = Vec::new();
    while !buf.is_empty() {
        let (tag, bytes) = field(&mut buf)?;
        if tag == 5 {
            links.push(bytes);
            continue;
        }
        if !links.is_empty() {
            links.sort_by_key(|e| entry_key(e));
            links.drain(..).for_each(|e| out.extend_from_slice(e));
        }
        out.extend_from_slice(bytes);
    }
    links.sort_by_key(|e| entry_key(e));
    links.drain(..).for_each(|e| out.extend_from_slice(e));
    Some(out)
}

fn not_a_page(e: serde_json::Error) -> GatewayError {
    GatewayError::MalformedBody(format!(
        "Confluence's answer is not an AuditRecordArray: {e}"
    ))
}

/// Confluence's retention period as `GetRetention` answers it.
pub(crate) fn retention_to_proto(r: &Retention) -> pb::GetRetentionResponse {
    let units = match r.unit {
        RetentionUnit::Window(unit) => pb::TimeUnit::from(unit),
        RetentionUnit::Millennia => pb::TimeUnit::Millennia,
        RetentionUnit::Eras => pb::TimeUnit::Eras,
        RetentionUnit::Forever => pb::TimeUnit::Forever,
    };
    let period = r.period().and_then(|d| {
        Some(prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).ok()?,
            nanos: i32::try_from(d.subsec_nanos()).ok()?,
        })
    });
    pb::GetRetentionResponse {
        number: r.number,
        units: units as i32,
        period,
    }
}

// The proto enum numbers the units in the order of `TimeUnit::ALL`, from 1 (0 is
// TIME_UNIT_UNSPECIFIED); the test below holds the two to the same names.
impl From<TimeUnit> for pb::TimeUnit {
    fn from(unit: TimeUnit) -> Self {
        let index = TimeUnit::ALL.iter().position(|u| *u == unit).unwrap_or(0);
        i32::try_from(index + 1)
            .ok()
            .and_then(|n| pb::TimeUnit::try_from(n).ok())
            .unwrap_or(pb::TimeUnit::Unspecified)
    }
}

/// The domain unit of a proto enum value; `None` for UNSPECIFIED and unknown values.
pub(crate) fn time_unit(raw: i32) -> Option<TimeUnit> {
    let index = usize::try_from(raw).ok()?.checked_sub(1)?;
    TimeUnit::ALL.get(index).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_map_to_the_proto_enum_by_name_both_ways() {
        for unit in TimeUnit::ALL {
            let proto = pb::TimeUnit::from(unit);
            assert_eq!(proto.as_str_name(), format!("TIME_UNIT_{}", unit.as_str()));
            assert_eq!(time_unit(proto as i32), Some(unit));
        }
        assert_eq!(time_unit(0), None);
        assert_eq!(time_unit(14), None);
        assert_eq!(time_unit(-1), None);
    }
}
