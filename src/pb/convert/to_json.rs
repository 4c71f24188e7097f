//! Protobuf messages back into Confluence's JSON, the inverse of `from_json`: typed
//! fields under their JSON names, then `unknown_fields` over them, then the values carried
//! as JSON text (`json_text_paths`) parsed back. The `get` command prints pages with it,
//! and tests check the round trip with it.

use prost_types::{Struct, Value as PbValue, value::Kind};
use serde_json::{Map, Value};

use crate::pb::{AffectedObject, AuditAuthor, AuditRecord, ChangedValue, GetSinceResponse};

/// Protobuf messages that print as Confluence's JSON.
pub trait ToJson {
    /// The JSON Confluence would have sent for this message.
    fn to_json(&self) -> Value;
}

/// Builds a JSON object: typed keys first, then the unknown fields over them.
struct Obj(Map<String, Value>);

impl Obj {
    fn new() -> Self {
        Self(Map::new())
    }
    fn put(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.0.insert(key.to_owned(), v.into());
        self
    }
    fn opt(self, key: &str, v: Option<impl Into<Value>>) -> Self {
        match v {
            Some(v) => self.put(key, v),
            None => self,
        }
    }
    fn list<T: ToJson>(self, key: &str, items: &[T]) -> Self {
        let items: Vec<Value> = items.iter().map(ToJson::to_json).collect();
        self.put(key, items)
    }
    fn finish(mut self, unknown: &Option<Struct>) -> Value {
        for (k, v) in unknown.iter().flat_map(|s| &s.fields) {
            self.0.insert(k.clone(), value_to_json(v));
        }
        Value::Object(self.0)
    }
}

impl ToJson for GetSinceResponse {
    fn to_json(&self) -> Value {
        let links: Map<String, Value> = self
            .links
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect();
        let page = Obj::new()
            .list("results", &self.results)
            .put("start", self.start)
            .put("limit", self.limit)
            .put("size", self.size)
            .put("_links", links)
            .finish(&self.unknown_fields);
        restore(page, &self.json_text_paths)
    }
}

impl ToJson for AuditRecord {
    /// A Data Center record comes back as the event Data Center sent
    /// (docs/data-center.md); any other as Cloud's `AuditRecord`.
    fn to_json(&self) -> Value {
        if self.dialect == crate::pb::Dialect::DataCenter as i32 {
            return super::data_center::data_center_json(self);
        }
        let record = Obj::new()
            .opt("author", self.author.as_ref().map(ToJson::to_json))
            .put("remoteAddress", self.remote_address.as_str())
            .put("creationDate", self.creation_date)
            .put("summary", self.summary.as_str())
            .put("description", self.description.as_str())
            .put("category", self.category.as_str())
            .put("sysAdmin", self.sys_admin)
            .opt("superAdmin", self.super_admin)
            .opt(
                "affectedObject",
                self.affected_object.as_ref().map(ToJson::to_json),
            )
            .list("changedValues", &self.changed_values)
            .list("associatedObjects", &self.associated_objects)
            .finish(&self.unknown_fields);
        restore(record, &self.json_text_paths)
    }
}

impl ToJson for AuditAuthor {
    fn to_json(&self) -> Value {
        Obj::new()
            .put("type", self.r#type.as_str())
            .put("displayName", self.display_name.as_str())
            .opt("operations", self.operations.as_ref().map(value_to_json))
            .opt("username", self.username.as_deref())
            .opt("userKey", self.user_key.as_deref())
            .opt("accountId", self.account_id.as_deref())
            .opt("accountType", self.account_type.as_deref())
            .opt("externalCollaborator", self.external_collaborator)
            .opt("isExternalCollaborator", self.is_external_collaborator)
            .opt("isGuest", self.is_guest)
            .opt("publicName", self.public_name.as_deref())
            .finish(&self.unknown_fields)
    }
}

impl ToJson for AffectedObject {
    fn to_json(&self) -> Value {
        Obj::new()
            .put("name", self.name.as_str())
            .put("objectType", self.object_type.as_str())
            .finish(&self.unknown_fields)
    }
}

impl ToJson for ChangedValue {
    fn to_json(&self) -> Value {
        Obj::new()
            .put("name", self.name.as_str())
            .put("oldValue", self.old_value.as_str())
            .put("newValue", self.new_value.as_str())
            .opt("hiddenOldValue", self.hidden_old_value.as_deref())
            .opt("hiddenNewValue", self.hidden_new_value.as_deref())
            .finish(&self.unknown_fields)
    }
}

/// `json` with the value at each of `paths` (JSON Pointers to strings holding JSON text,
/// as `from_json` writes them for values nested too deep) parsed back into place. A path
/// that does not lead to such a string is passed over: the JSON is kept as it came.
fn restore(mut json: Value, paths: &[String]) -> Value {
    for path in paths {
        if let Some(slot) = json.pointer_mut(path)
            && let Value::String(text) = slot
            && let Ok(value) = serde_json::from_str(text)
        {
            *slot = value;
        }
    }
    json
}

/// `google.protobuf.Value` as JSON; whole doubles within ±2^53 print as integers, as
/// Confluence sent them.
pub(super) fn value_to_json(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        ),
    }
}

/// A `google.protobuf.Value` number as JSON: whole doubles within ±2^53 as integers.
pub(super) fn number_to_json(n: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() <= EXACT {
        Value::from(n as i64)
    } else {
        Value::from(n)
    }
}
