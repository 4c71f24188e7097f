//! Confluence's parsed JSON page (`audit::record`) into protobuf messages, losing nothing:
//! a value the typed field cannot hold goes into `unknown_fields` under its JSON key.

use prost_types::{ListValue, Struct, Timestamp, Value as PbValue, value::Kind};
use serde_json::Value;

use crate::{
    audit::record::{self, Field, Loose, Str, Unknown, ValueOf},
    pb::{self, convert::ToJson},
};

/// Converts a parsed page into the `GetSinceResponse` message.
pub(crate) fn page_to_proto(page: record::Page<'_>) -> pb::GetSinceResponse {
    let h = page.header;
    let mut unknown = Extra::new(h.unknown);
    let links = match h.links {
        Some(Loose::Typed(ValueOf(Value::Object(map)))) => map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
        other => {
            unknown.keep("_links", other.map(|l| l.into_value(|v| v.0)));
            Default::default()
        }
    };
    pb::GetSinceResponse {
        results: page.results.into_iter().map(record_to_proto).collect(),
        start: unknown.take("start", h.start).unwrap_or_default(),
        limit: unknown.take("limit", h.limit).unwrap_or_default(),
        size: unknown.take("size", h.size).unwrap_or_default(),
        links,
        unknown_fields: unknown.finish(),
    }
}

/// Converts one audit record.
fn record_to_proto(r: record::Record<'_>) -> pb::AuditRecord {
    let mut x = Extra::new(r.unknown);
    let creation_date = x.take("creationDate", r.creation_date);
    pb::AuditRecord {
        author: x.take_with("author", r.author, author_to_proto),
        remote_address: x.string("remoteAddress", r.remote_address),
        creation_date: creation_date.unwrap_or_default(),
        creation_time: creation_date.map(millis_to_timestamp),
        summary: x.string("summary", r.summary),
        description: x.string("description", r.description),
        category: x.string("category", r.category),
        sys_admin: x.take("sysAdmin", r.sys_admin).unwrap_or_default(),
        super_admin: x.take("superAdmin", r.super_admin),
        affected_object: x.take_with("affectedObject", r.affected_object, object_to_proto),
        changed_values: x.list("changedValues", r.changed_values, changed_to_proto),
        associated_objects: x.list("associatedObjects", r.associated_objects, object_to_proto),
        unknown_fields: x.finish(),
    }
}

fn author_to_proto(a: record::Author<'_>) -> pb::AuditAuthor {
    let mut x = Extra::new(a.unknown);
    pb::AuditAuthor {
        r#type: x.string("type", a.kind),
        display_name: x.string("displayName", a.display_name),
        // `operations` is dynamic by nature: any JSON, `null` included, is its typed form.
        operations: a.operations.map(|o| json_to_value(o.into_value(|v| v.0))),
        username: x.opt_string("username", a.username),
        user_key: x.opt_string("userKey", a.user_key),
        account_id: x.opt_string("accountId", a.account_id),
        account_type: x.opt_string("accountType", a.account_type),
        external_collaborator: x.take("externalCollaborator", a.external_collaborator),
        is_external_collaborator: x.take("isExternalCollaborator", a.is_external_collaborator),
        is_guest: x.take("isGuest", a.is_guest),
        public_name: x.opt_string("publicName", a.public_name),
        unknown_fields: x.finish(),
    }
}

fn object_to_proto(o: record::AffectedObject<'_>) -> pb::AffectedObject {
    let mut x = Extra::new(o.unknown);
    pb::AffectedObject {
        name: x.string("name", o.name),
        object_type: x.string("objectType", o.object_type),
        unknown_fields: x.finish(),
    }
}

fn changed_to_proto(c: record::ChangedValue<'_>) -> pb::ChangedValue {
    let mut x = Extra::new(c.unknown);
    pb::ChangedValue {
        name: x.string("name", c.name),
        old_value: x.string("oldValue", c.old_value),
        new_value: x.string("newValue", c.new_value),
        hidden_old_value: x.opt_string("hiddenOldValue", c.hidden_old_value),
        hidden_new_value: x.opt_string("hiddenNewValue", c.hidden_new_value),
        unknown_fields: x.finish(),
    }
}

impl<T> Loose<T> {
    /// The value as JSON, converting a typed value with `typed`.
    fn into_value(self, typed: impl FnOnce(T) -> Value) -> Value {
        match self {
            Loose::Typed(t) => typed(t),
            Loose::Raw(v) => v,
        }
    }
}

/// Collects the JSON the typed fields of one object could not hold.
struct Extra(Option<Struct>);

impl Extra {
    fn new(unknown: Unknown<'_>) -> Self {
        if unknown.is_empty() {
            return Self(None);
        }
        let fields = unknown
            .into_iter()
            .map(|(Str(k), v)| (k.into_owned(), json_to_value(v)))
            .collect();
        Self(Some(Struct { fields }))
    }

    fn keep(&mut self, key: &str, value: Option<Value>) {
        if let Some(v) = value {
            self.0
                .get_or_insert_with(Struct::default)
                .fields
                .insert(key.to_owned(), json_to_value(v));
        }
    }

    /// The typed value, or `None` with the raw JSON kept.
    fn take<T>(&mut self, key: &str, field: Field<T>) -> Option<T> {
        self.take_with(key, field, |t| t)
    }

    fn take_with<T, U>(&mut self, key: &str, field: Field<T>, f: impl FnOnce(T) -> U) -> Option<U> {
        match field? {
            Loose::Typed(t) => Some(f(t)),
            Loose::Raw(v) => {
                self.keep(key, Some(v));
                None
            }
        }
    }

    fn opt_string(&mut self, key: &str, field: Field<Str<'_>>) -> Option<String> {
        self.take_with(key, field, |Str(s)| s.into_owned())
    }

    fn string(&mut self, key: &str, field: Field<Str<'_>>) -> String {
        self.opt_string(key, field).unwrap_or_default()
    }

    /// A typed list, or (when any item has the wrong shape) an empty list with the whole
    /// array kept as JSON, so item order and content survive.
    fn list<T, U: ToJson>(
        &mut self,
        key: &str,
        field: Field<Vec<Loose<T>>>,
        f: impl Fn(T) -> U,
    ) -> Vec<U> {
        let Some(items) = self.take(key, field) else {
            return Vec::new();
        };
        if items.iter().all(|i| matches!(i, Loose::Typed(_))) {
            return items
                .into_iter()
                .filter_map(|i| match i {
                    Loose::Typed(t) => Some(f(t)),
                    Loose::Raw(_) => None,
                })
                .collect();
        }
        let raw = items
            .into_iter()
            .map(|i| i.into_value(|t| f(t).to_json()))
            .collect();
        self.keep(key, Some(Value::Array(raw)));
        Vec::new()
    }

    fn finish(self) -> Option<Struct> {
        self.0
    }
}

/// `creationDate` (epoch milliseconds, possibly negative) as a `Timestamp`.
fn millis_to_timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// JSON into `google.protobuf.Value`. Numbers become doubles, as the type requires.
pub(crate) fn json_to_value(v: Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    //! JSON → protobuf → JSON is the identity on every Confluence-shaped body, including
    //! unknown keys, `null`s and known keys holding unexpected JSON types.

    use proptest::prelude::*;
    use prost::Message;
    use serde_json::{Map, Value, json};

    use super::page_to_proto;
    use crate::{
        audit::record::Page,
        pb::{self, convert::ToJson},
    };

    /// Any JSON whose numbers survive `google.protobuf.Value` (doubles): integers within
    /// ±2^53, and fractions.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(1i64 << 53)..(1i64 << 53)).prop_map(Value::from),
            (-1e9f64..1e9)
                .prop_filter("fraction", |f| f.fract() != 0.0)
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// JSON of a type other than `kind` ("string", "bool", "int").
    fn wrong(kind: &'static str) -> impl Strategy<Value = Value> {
        any_json().prop_filter("a different JSON type", move |v| match kind {
            "string" => !v.is_string(),
            "bool" => !v.is_boolean(),
            _ => !(v.is_i64() || v.is_u64()),
        })
    }

    fn string() -> impl Strategy<Value = Value> {
        prop_oneof![8 => "\\PC{0,16}".prop_map(Value::String), 1 => wrong("string")]
    }

    fn boolean() -> impl Strategy<Value = Value> {
        prop_oneof![8 => any::<bool>().prop_map(Value::Bool), 1 => wrong("bool")]
    }

    fn int(range: std::ops::RangeInclusive<i64>) -> impl Strategy<Value = Value> {
        prop_oneof![8 => range.prop_map(Value::from), 1 => wrong("int")]
    }

    /// Optional keys: absent (None), or present with any value their field may meet.
    fn optional(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
        prop_oneof![Just(None), Just(Some(Value::Null)), v.prop_map(Some)]
    }

    fn unknown_keys() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("x[A-Za-z0-9_]{0,8}", any_json(), 0..3)
            .prop_map(|m| m.into_iter().collect())
    }

    fn object(
        required: Vec<(&'static str, BoxedStrategy<Value>)>,
        optional_keys: Vec<(&'static str, BoxedStrategy<Option<Value>>)>,
    ) -> impl Strategy<Value = Value> {
        // Pair each strategy with its key (a bare `&str` would be read as a regex).
        let required: Vec<_> = required
            .into_iter()
            .map(|(k, s)| s.prop_map(move |v| (k, v)))
            .collect();
        let optional_keys: Vec<_> = optional_keys
            .into_iter()
            .map(|(k, s)| s.prop_map(move |v| (k, v)))
            .collect();
        (required, optional_keys, unknown_keys()).prop_map(|(req, opt, extra)| {
            let mut m = extra;
            for (k, v) in req {
                m.insert(k.to_owned(), v);
            }
            for (k, v) in opt {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        })
    }

    fn affected() -> BoxedStrategy<Value> {
        object(
            vec![("name", string().boxed()), ("objectType", string().boxed())],
            vec![],
        )
        .boxed()
    }

    fn changed() -> BoxedStrategy<Value> {
        object(
            vec![
                ("name", string().boxed()),
                ("oldValue", string().boxed()),
                ("newValue", string().boxed()),
            ],
            vec![
                ("hiddenOldValue", optional(string()).boxed()),
                ("hiddenNewValue", optional(string()).boxed()),
            ],
        )
        .boxed()
    }

    fn author() -> BoxedStrategy<Value> {
        let operations = prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            any_json().prop_map(Some),
            Just(Some(json!([{"operation": "read", "targetType": "space"}]))),
        ];
        object(
            vec![
                ("type", string().boxed()),
                ("displayName", string().boxed()),
            ],
            vec![
                ("operations", operations.boxed()),
                ("username", optional(string()).boxed()),
                ("userKey", optional(string()).boxed()),
                ("accountId", optional(string()).boxed()),
                ("accountType", optional(string()).boxed()),
                ("externalCollaborator", optional(boolean()).boxed()),
                ("isExternalCollaborator", optional(boolean()).boxed()),
                ("isGuest", optional(boolean()).boxed()),
                ("publicName", optional(string()).boxed()),
            ],
        )
        .boxed()
    }

    /// An array of `item`s; rarely one element of another shape.
    fn list(item: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
        prop_oneof![
            8 => prop::collection::vec(item.clone(), 0..3).prop_map(Value::Array),
            1 => (prop::collection::vec(item, 0..2), any_json())
                .prop_filter("not an object", |(_, odd)| !odd.is_object())
                .prop_map(|(mut v, odd)| { v.push(odd); Value::Array(v) }),
            1 => wrong("array").prop_filter("not an array", |v| !v.is_array()),
        ]
    }

    fn record() -> impl Strategy<Value = Value> {
        let maybe_object = |s: BoxedStrategy<Value>| {
            prop_oneof![Just(None), Just(Some(Value::Null)), s.prop_map(Some)].boxed()
        };
        object(
            vec![
                ("remoteAddress", string().boxed()),
                ("creationDate", int(i64::MIN..=i64::MAX).boxed()),
                ("summary", string().boxed()),
                ("description", string().boxed()),
                ("category", string().boxed()),
                ("sysAdmin", boolean().boxed()),
                ("changedValues", list(changed()).boxed()),
                ("associatedObjects", list(affected()).boxed()),
            ],
            vec![
                ("author", maybe_object(author())),
                ("affectedObject", maybe_object(affected())),
                ("superAdmin", optional(boolean()).boxed()),
            ],
        )
    }

    fn page() -> impl Strategy<Value = Value> {
        let i32s = || int(i64::from(i32::MIN)..=i64::from(i32::MAX)).boxed();
        let links = prop::collection::btree_map(
            "[a-z]{1,8}",
            prop_oneof![".{0,20}".prop_map(Value::String), any_json()],
            0..3,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect()));
        (
            prop::collection::vec(record(), 0..4),
            i32s(),
            i32s(),
            i32s(),
            links,
            unknown_keys(),
        )
            .prop_map(|(results, start, limit, size, links, extra)| {
                let mut m = extra;
                m.insert("results".into(), Value::Array(results));
                m.insert("start".into(), start);
                m.insert("limit".into(), limit);
                m.insert("size".into(), size);
                m.insert("_links".into(), links);
                Value::Object(m)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn json_to_protobuf_to_json_is_lossless(body in page()) {
            let bytes = serde_json::to_vec(&body).expect("serialise");
            let parsed = Page::parse(&bytes).expect("every Confluence-shaped body parses");
            let wire = page_to_proto(parsed).encode_to_vec();
            let decoded = pb::GetSinceResponse::decode(&wire[..]).expect("decode");
            prop_assert_eq!(decoded.to_json(), body);
        }
    }
}
