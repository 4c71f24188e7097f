//! Confluence's JSON ⇄ protobuf, both directions in one place: `from_json` turns a
//! fetched body into a `GetSinceResponse` (typed fields, everything else kept in
//! `unknown_fields`), `to_json` prints messages back as Confluence's JSON, and the
//! `TimeUnit` mapping between the domain and the proto enum is written here once.

mod from_json;
mod to_json;

use bytes::Bytes;
use prost::Message;

#[cfg(test)]
pub(crate) use from_json::json_to_value;
pub(crate) use from_json::page_to_proto;
pub use to_json::ToJson;

use crate::{audit::TimeUnit, audit::record::Page, error::GatewayError, pb};

/// A 200 body from Confluence as an encoded `GetSinceResponse`.
pub fn encode_page(body: &[u8]) -> Result<Bytes, GatewayError> {
    let page = Page::parse(body).map_err(|e| {
        GatewayError::MalformedBody(format!(
            "Confluence's answer is not an AuditRecordArray: {e}"
        ))
    })?;
    Ok(Bytes::from(page_to_proto(page).encode_to_vec()))
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
