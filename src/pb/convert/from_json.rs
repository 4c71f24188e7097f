//! The reference converter (tests and benches only; production uses `direct`, which must
//! write the same bytes): Confluence's parsed JSON page (`audit::record`) into protobuf
//! messages, losing nothing:
//! a value the typed field cannot hold goes into `unknown_fields` under its JSON key, and
//! a value nested too deep for protobuf's decoders goes as its JSON text (`Deep`).

use prost_types::{Struct, Timestamp, Value as PbValue};
use serde_json::Value;

use crate::{
    audit::record::{self, Field, Loose, Str, Unknown, ValueOf},
    pb::{self, convert::ToJson},
};

// The message levels are `direct`'s, where they are documented.
use super::deep::Deep;
use super::direct::{FIELD_VALUE, MAP_VALUE, MAX_DEPTH, MEMBER, PAGE, Ptr, RECORD, STRUCT_VALUE};

/// Converts a parsed page into the `GetSinceResponse` message.
pub(crate) fn page_to_proto(page: record::Page<'_>) -> pb::GetSinceResponse {
    let h = page.header;
    let mut deep = Deep::within(MAX_DEPTH);
    let results = page.results.into_iter().map(record_to_proto).collect();
    let mut page = {
        let mut unknown = Extra::new(h.unknown, PAGE, Ptr::Root, &mut deep);
        let links = match h.links {
            Some(Loose::Typed(ValueOf(Value::Object(map)))) => map
                .into_iter()
                .map(|(k, v)| {
                    let at = Ptr::Key(&Ptr::Key(&Ptr::Root, "_links"), &k);
                    let v = unknown.deep.value(v, PAGE + MAP_VALUE, at);
                    (k, v)
                })
                .collect(),
            other => {
                unknown.keep("_links", other.map(|l| l.into_value(|v| v.0)));
                Default::default()
            }
        };
        pb::GetSinceResponse {
            results,
            start: unknown.take("start", h.start).unwrap_or_default(),
            limit: unknown.take("limit", h.limit).unwrap_or_default(),
            size: unknown.take("size", h.size).unwrap_or_default(),
            links,
            unknown_fields: unknown.finish(),
            json_text_paths: Vec::new(),
        }
    };
    page.json_text_paths = deep.paths;
    page
}

/// Converts one audit record; the JSON Pointers of values it carries as text are its own.
fn record_to_proto(r: record::Record<'_>) -> pb::AuditRecord {
    let mut deep = Deep::within(MAX_DEPTH);
    let mut record = {
        let mut x = Extra::new(r.unknown, RECORD, Ptr::Root, &mut deep);
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
            json_text_paths: Vec::new(),
            dialect: pb::Dialect::Cloud as i32,
        }
    };
    record.json_text_paths = deep.paths;
    record
}

fn author_to_proto(a: record::Author<'_>, at: Ptr<'_>, deep: &mut Deep) -> pb::AuditAuthor {
    let mut x = Extra::new(a.unknown, MEMBER, at, deep);
    pb::AuditAuthor {
        r#type: x.string("type", a.kind),
        display_name: x.string("displayName", a.display_name),
        // `operations` is dynamic by nature: any JSON, `null` included, is its typed form.
        operations: a
            .operations
            .map(|o| x.field_value("operations", o.into_value(|v| v.0))),
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

fn object_to_proto(
    o: record::AffectedObject<'_>,
    at: Ptr<'_>,
    deep: &mut Deep,
) -> pb::AffectedObject {
    let mut x = Extra::new(o.unknown, MEMBER, at, deep);
    pb::AffectedObject {
        name: x.string("name", o.name),
        object_type: x.string("objectType", o.object_type),
        unknown_fields: x.finish(),
    }
}

fn changed_to_proto(c: record::ChangedValue<'_>, at: Ptr<'_>, deep: &mut Deep) -> pb::ChangedValue {
    let mut x = Extra::new(c.unknown, MEMBER, at, deep);
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

/// Collects the JSON the typed fields of one message (at message level `level`, found at
/// `at`) could not hold, and converts its dynamic values.
struct Extra<'a, 'p> {
    fields: Option<Struct>,
    level: usize,
    at: Ptr<'p>,
    deep: &'a mut Deep,
}

impl<'a, 'p> Extra<'a, 'p> {
    fn new(unknown: Unknown<'_>, level: usize, at: Ptr<'p>, deep: &'a mut Deep) -> Self {
        let mut extra = Self {
            fields: None,
            level,
            at,
            deep,
        };
        for (Str(k), v) in unknown {
            extra.keep(&k, Some(v));
        }
        extra
    }

    fn keep(&mut self, key: &str, value: Option<Value>) {
        if let Some(v) = value {
            let v = self
                .deep
                .value(v, self.level + STRUCT_VALUE, Ptr::Key(&self.at, key));
            self.fields
                .get_or_insert_with(Struct::default)
                .fields
                .insert(key.to_owned(), v);
        }
    }

    /// `v` as the `google.protobuf.Value` field `key` of this message.
    fn field_value(&mut self, key: &str, v: Value) -> PbValue {
        self.deep
            .value(v, self.level + FIELD_VALUE, Ptr::Key(&self.at, key))
    }

    /// The typed value, or `None` with the raw JSON kept.
    fn take<T>(&mut self, key: &str, field: Field<T>) -> Option<T> {
        self.take_with(key, field, |t, _, _| t)
    }

    /// The typed value converted by `f` (given where it lies), or `None` with the raw JSON
    /// kept.
    fn take_with<T, U>(
        &mut self,
        key: &str,
        field: Field<T>,
        f: impl FnOnce(T, Ptr<'_>, &mut Deep) -> U,
    ) -> Option<U> {
        match field? {
            Loose::Typed(t) => Some(f(t, Ptr::Key(&self.at, key), self.deep)),
            Loose::Raw(v) => {
                self.keep(key, Some(v));
                None
            }
        }
    }

    fn opt_string(&mut self, key: &str, field: Field<Str<'_>>) -> Option<String> {
        self.take(key, field).map(|Str(s)| s.into_owned())
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
        f: impl Fn(T, Ptr<'_>, &mut Deep) -> U,
    ) -> Vec<U> {
        let Some(items) = self.take(key, field) else {
            return Vec::new();
        };
        let list = Ptr::Key(&self.at, key);
        if items.iter().all(|i| matches!(i, Loose::Typed(_))) {
            return items
                .into_iter()
                .enumerate()
                .filter_map(|(n, i)| match i {
                    Loose::Typed(t) => Some(f(t, Ptr::Index(&list, n), self.deep)),
                    Loose::Raw(_) => None,
                })
                .collect();
        }
        // The typed items go back to JSON whole (nothing as text), to be placed, with the
        // others, at the array's own level in `unknown_fields`.
        let raw = items
            .into_iter()
            .enumerate()
            .map(|(n, i)| {
                i.into_value(|t| {
                    f(t, Ptr::Index(&list, n), &mut Deep::within(usize::MAX)).to_json()
                })
            })
            .collect();
        self.keep(key, Some(Value::Array(raw)));
        Vec::new()
    }

    fn finish(self) -> Option<Struct> {
        self.fields
    }
}

/// `creationDate` (epoch milliseconds, possibly negative) as a `Timestamp`.
fn millis_to_timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// JSON into a `google.protobuf.Value`, with no limit on its depth. Numbers become
/// doubles, as the type requires.
#[cfg(test)]
pub(crate) fn json_to_value(v: Value) -> PbValue {
    Deep::within(usize::MAX).value(v, 0, Ptr::Root)
}

#[cfg(test)]
mod tests {
    //! JSON → protobuf → JSON is the identity on every Confluence-shaped body, including
    //! unknown keys, `null`s and known keys holding unexpected JSON types.

    use proptest::prelude::*;
    use prost::Message;
    use serde_json::{Map, Value, json};

    use prost_types::{Struct, Value as PbValue, value::Kind};

    use super::{MAX_DEPTH, Ptr, page_to_proto};
    use crate::{
        audit::record::Page,
        pb::{
            self,
            convert::{ToJson, to_json},
        },
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

    /// JSON nested 8 to 90 levels deep: a chain of objects and arrays, some with a sibling
    /// before the chain goes on, under keys a JSON Pointer must escape.
    fn deep_json() -> impl Strategy<Value = Value> {
        let key = prop::sample::select(vec!["a", "", "~", "/", "~1/x~0"]);
        let level = (any::<bool>(), key, 0..2usize);
        (prop::collection::vec(level, 8..=90), any_json()).prop_map(|(levels, bottom)| {
            levels
                .into_iter()
                .fold(bottom, |inner, (object, key, siblings)| {
                    if object {
                        let mut m: Map<String, Value> =
                            (0..siblings).map(|s| (format!("s{s}"), s.into())).collect();
                        m.insert(key.to_owned(), inner);
                        Value::Object(m)
                    } else {
                        let mut items: Vec<Value> = (0..siblings).map(Value::from).collect();
                        items.push(inner);
                        Value::Array(items)
                    }
                })
        })
    }

    /// Unknown keys: any JSON, now and then nested deep.
    fn unknown_keys() -> impl Strategy<Value = Map<String, Value>> {
        let value = prop_oneof![6 => any_json(), 1 => deep_json()];
        prop::collection::btree_map("x[A-Za-z0-9_~/]{0,8}", value, 0..3)
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
            deep_json().prop_map(Some),
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
            prop_oneof![".{0,20}".prop_map(Value::String), any_json(), deep_json()],
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
            // prost refuses messages nested past its recursion limit (100), as upb does.
            let decoded = pb::GetSinceResponse::decode(&wire[..]).expect("decode");
            prop_assert!(page_depth(&decoded) <= MAX_DEPTH, "nested {}", page_depth(&decoded));
            prop_assert_eq!(decoded.to_json(), body);
        }
    }

    /// Message levels of a `Value`, itself included.
    fn value_depth(v: &PbValue) -> usize {
        1 + match &v.kind {
            Some(Kind::StructValue(s)) => struct_depth(s),
            Some(Kind::ListValue(l)) => 1 + l.values.iter().map(value_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Message levels of a `Struct`, itself and its map entries included.
    fn struct_depth(s: &Struct) -> usize {
        1 + s
            .fields
            .values()
            .map(|v| 1 + value_depth(v))
            .max()
            .unwrap_or(0)
    }

    fn unknown_depth(s: &Option<Struct>) -> usize {
        s.as_ref().map_or(0, struct_depth)
    }

    /// Message levels of a record, itself included.
    fn record_depth(r: &pb::AuditRecord) -> usize {
        let author = r.author.as_ref().map_or(0, |a| {
            1 + a
                .operations
                .as_ref()
                .map_or(0, value_depth)
                .max(unknown_depth(&a.unknown_fields))
        });
        let objects = r
            .affected_object
            .iter()
            .chain(&r.associated_objects)
            .map(|o| 1 + unknown_depth(&o.unknown_fields));
        let changed = r
            .changed_values
            .iter()
            .map(|c| 1 + unknown_depth(&c.unknown_fields));
        1 + objects
            .chain(changed)
            .chain([author, unknown_depth(&r.unknown_fields), 1])
            .max()
            .unwrap_or(0)
    }

    /// Message levels of a page, itself included: the outermost message is level 1.
    fn page_depth(p: &pb::GetSinceResponse) -> usize {
        let links = p.links.values().map(|v| 1 + value_depth(v));
        1 + p
            .results
            .iter()
            .map(record_depth)
            .chain(links)
            .chain([unknown_depth(&p.unknown_fields)])
            .max()
            .unwrap_or(0)
    }

    /// `inner` under `n` objects, each its only key `a`.
    fn objects(n: usize, inner: Value) -> Value {
        (0..n).fold(inner, |v, _| json!({ "a": v }))
    }

    /// A one-record page of `record`, converted and decoded as a client would.
    fn convert(record: Value, links: Value) -> pb::GetSinceResponse {
        // Every typed key present, as `to_json` prints them all.
        let mut full = json!({"remoteAddress": "", "creationDate": 0, "summary": "",
            "description": "", "category": "", "sysAdmin": false, "changedValues": [],
            "associatedObjects": []});
        for (k, v) in record.as_object().into_iter().flatten() {
            full[k] = v.clone();
        }
        let body = json!({"results": [full], "_links": links, "start": 0, "limit": 0, "size": 0});
        let bytes = serde_json::to_vec(&body).expect("serialise");
        let wire = page_to_proto(Page::parse(&bytes).expect("parses")).encode_to_vec();
        let page = pb::GetSinceResponse::decode(&wire[..]).expect("decodes");
        assert_eq!(page.to_json(), body, "lossless");
        page
    }

    #[test]
    fn values_are_carried_as_text_only_below_the_deepest_level_that_fits() {
        // A record's unknown value is at level 5 (page, record, Struct, entry, Value);
        // each object costs 3 levels, an array 2: 31 objects then an array reach
        // exactly level 100, the innermost item.
        let fits = objects(31, json!([1]));
        let page = convert(json!({ "k": fits }), json!({}));
        assert_eq!(page_depth(&page), MAX_DEPTH);
        assert!(page.results[0].json_text_paths.is_empty());

        // One array more: the inner one (at level 100, its item would be at 102) goes as
        // text, the rest stays structured.
        let deeper = objects(31, json!([[1]]));
        let page = convert(json!({ "k": deeper }), json!({}));
        let record = &page.results[0];
        let pointer = format!("/k{}/0", "/a".repeat(31));
        assert_eq!(record.json_text_paths, vec![pointer.clone()]);
        assert_eq!(page_depth(&page), MAX_DEPTH);
        let carried = record.unknown_fields.as_ref().expect("unknown").fields["k"].clone();
        let at = pointer.trim_start_matches("/k");
        assert_eq!(
            to_json::value_to_json(&carried).pointer(at),
            Some(&json!("[1]"))
        );
    }

    #[test]
    fn deep_operations_lists_and_links_decode_and_print_back_whole() {
        // Each 60 objects deep (180 levels as plain Values), with keys to escape.
        let deep = (0..60).fold(
            json!("bottom"),
            |v, i| json!({ ["a/b", "c~d", "e"][i % 3]: v }),
        );
        let record = json!({
            "author": {"type": "user", "displayName": "", "operations": deep, "x": [deep]},
            "changedValues": [{"name": "n", "oldValue": "o", "newValue": "n", "x": deep}],
            // One item of the wrong shape: the array is kept whole in unknown_fields.
            "associatedObjects": [{"name": "n", "objectType": "t", "x": deep}, 5],
            "k": deep,
        });
        let page = convert(record, json!({ "base": "b", "deep": deep }));
        assert!(page_depth(&page) <= MAX_DEPTH);
        let paths = &page.results[0].json_text_paths;
        assert_eq!(paths.len(), 5, "{paths:?}");
        // `operations` is a Value at level 4: objects at 4, 7, …, 97 fit, the 33rd (at
        // level 100) would not. The first key is `e`, the 60th `a/b`.
        let keys = |n: usize, skip: usize| -> String {
            (0..n)
                .map(|i| ["/e", "/c~0d", "/a~1b"][(i + skip) % 3])
                .collect()
        };
        assert!(paths.contains(&format!("/author/operations{}", keys(32, 0))));
        assert!(
            paths
                .iter()
                .any(|p| p.starts_with("/associatedObjects/0/x/"))
        );
        assert_eq!(page.json_text_paths.len(), 1);
        assert!(page.json_text_paths[0].starts_with("/_links/deep/e/c~0d/a~1b/"));
    }

    #[test]
    fn pointers_escape_tilde_and_slash() {
        let mut out = String::new();
        let root = Ptr::Root;
        let key = Ptr::Key(&root, "a~/b");
        Ptr::Index(&key, 7).write(&mut out);
        assert_eq!(out, "/a~0~1b/7");
    }
}
