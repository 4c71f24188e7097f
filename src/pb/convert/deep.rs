//! JSON values as `google.protobuf.Value`s within protobuf's nesting limit, for the
//! converters that build messages from owned JSON (the Data Center one, and the Cloud
//! reference converter in tests).

use prost_types::{ListValue, Struct, Value as PbValue, value::Kind};
use serde_json::Value;

use super::direct::{LIST_VALUE, Ptr, STRUCT_VALUE};

/// Converts JSON into `google.protobuf.Value`s, each at a known message level: an object
/// or array whose items would lie deeper than the limit goes as a string of its JSON text,
/// its pointer listed in `paths` (the message's `json_text_paths`).
pub(super) struct Deep {
    /// The deepest message level allowed.
    limit: usize,
    /// Pointers of the values carried as text.
    pub(super) paths: Vec<String>,
}

impl Deep {
    /// Values nested no deeper than message level `limit`.
    pub(super) fn within(limit: usize) -> Self {
        Self {
            limit,
            paths: Vec::new(),
        }
    }

    /// `v` as the `Value` at message level `level`, found at `at`.
    pub(super) fn value(&mut self, v: Value, level: usize, at: Ptr<'_>) -> PbValue {
        let items = match &v {
            Value::Array(_) => level + LIST_VALUE,
            Value::Object(_) => level + STRUCT_VALUE,
            _ => level,
        };
        if items > self.limit {
            let mut path = String::new();
            at.write(&mut path);
            self.paths.push(path);
            return PbValue {
                kind: Some(Kind::StringValue(v.to_string())),
            };
        }
        let kind = match v {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Kind::StringValue(s),
            Value::Array(a) => Kind::ListValue(ListValue {
                values: a
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| self.value(v, items, Ptr::Index(&at, i)))
                    .collect(),
            }),
            Value::Object(o) => Kind::StructValue(Struct {
                fields: o
                    .into_iter()
                    .map(|(k, v)| {
                        let v = self.value(v, items, Ptr::Key(&at, &k));
                        (k, v)
                    })
                    .collect(),
            }),
        };
        PbValue { kind: Some(kind) }
    }
}
