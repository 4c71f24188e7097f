//! DC entity → `AuditRecord` → DC entity is the identity, on hand-written entities shaped
//! like Atlassian's samples and on arbitrary ones (odd types, unknown keys, deep nesting);
//! the typed fields hold what docs/data-center.md says they hold.

use proptest::prelude::*;
use prost::Message;
use prost_types::{Struct, Timestamp, Value as PbValue, value::Kind};
use serde_json::{Map, Value, json};

use super::{
    MAX_DEPTH, MAX_SECONDS, MIN_SECONDS, data_center_json, encode_data_center_page, format_instant,
    parse_instant, restore, with_unknown,
};
use crate::{
    error::GatewayError,
    pb::{self, convert::json_to_value},
};

/// A body converted and decoded as a client would; every record must print back as the
/// entity it came from.
fn convert(body: &Value, offset: i32, limit: i32) -> pb::GetSinceResponse {
    let bytes = serde_json::to_vec(body).expect("serialise");
    let wire = encode_data_center_page(&bytes, offset, limit).expect("a DC page");
    let page = pb::GetSinceResponse::decode(&wire[..]).expect("decodes");
    assert!(
        page_depth(&page) <= MAX_DEPTH,
        "nested {}",
        page_depth(&page)
    );
    let entities = body["entities"].as_array().expect("entities");
    assert_eq!(page.results.len(), entities.len());
    for (record, entity) in page.results.iter().zip(entities) {
        assert_eq!(record.dialect, pb::Dialect::DataCenter as i32);
        assert_eq!(&data_center_json(record), entity, "lossless");
    }
    page
}

/// The single record of a one-entity page.
fn one(entity: Value) -> pb::AuditRecord {
    let body = json!({"entities": [entity], "pagingInfo": {"lastPage": true, "size": 1}});
    convert(&body, 0, 200).results.remove(0)
}

/// A JSON object as the `Struct` the converter builds.
fn st(v: Value) -> Option<Struct> {
    let Value::Object(m) = v else {
        panic!("not an object")
    };
    Some(Struct {
        fields: m.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
    })
}

fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

const BASE: &str = "http://confluence.internal:8090";

#[test]
fn a_login_success_maps_to_the_typed_fields_and_keeps_the_rest() {
    let r = one(json!({
        "timestamp": "2021-11-23T01:24:36.398Z",
        "author": {
            "name": "admin", "type": "user", "id": "2c9680837d4a3682017d4a375a280000",
            "uri": format!("{BASE}/admin/users/viewuser.action?username=admin"),
            "avatarUri": "",
        },
        "type": {
            "category": "Security", "categoryI18nKey": "audit.logging.category.security",
            "action": "User login succeeded",
            "actionI18nKey": "audit.logging.summary.login.success",
        },
        "affectedObjects": [{
            "name": "admin", "type": "User", "id": "2c9680837d4a3682017d4a375a280000",
            "uri": format!("{BASE}/admin/users/viewuser.action?username=admin"),
        }],
        "changedValues": [],
        "source": "10.0.0.5",
        "system": BASE,
        "node": "node-1",
        "method": "Browser",
        "extraAttributes": [{
            "name": "Login type", "nameI18nKey": "audit.logging.extra.attribute.login.type",
            "value": "Username and password",
        }],
    }));
    assert_eq!(r.creation_date, 1_637_630_676_398);
    assert_eq!(r.creation_time, ts(1_637_630_676, 398_000_000));
    let author = r.author.as_ref().expect("author");
    assert_eq!(author.display_name, "admin");
    assert_eq!(author.r#type, "user");
    assert_eq!(
        author.user_key.as_deref(),
        Some("2c9680837d4a3682017d4a375a280000")
    );
    assert_eq!(
        author.unknown_fields,
        st(json!({
            "uri": format!("{BASE}/admin/users/viewuser.action?username=admin"),
            "avatarUri": "",
        }))
    );
    assert_eq!(r.category, "Security");
    assert_eq!(r.summary, "User login succeeded");
    assert_eq!(r.remote_address, "10.0.0.5");
    let object = r.affected_object.as_ref().expect("affected object");
    assert_eq!(
        (object.name.as_str(), object.object_type.as_str()),
        ("admin", "User")
    );
    assert!(r.associated_objects.is_empty());
    assert!(r.changed_values.is_empty());
    assert_eq!(
        (r.description.as_str(), r.sys_admin, r.super_admin),
        ("", false, None)
    );
    assert_eq!(
        r.unknown_fields,
        st(json!({
            "type": {
                "categoryI18nKey": "audit.logging.category.security",
                "actionI18nKey": "audit.logging.summary.login.success",
            },
            // Empty, it must not read back as absent.
            "changedValues": [],
            "system": BASE,
            "node": "node-1",
            "method": "Browser",
            "extraAttributes": [{
                "name": "Login type",
                "nameI18nKey": "audit.logging.extra.attribute.login.type",
                "value": "Username and password",
            }],
        }))
    );
    assert!(r.json_text_paths.is_empty());
}

#[test]
fn a_space_permission_change_maps_to_the_whole_record() {
    let space_uri = format!("{BASE}/spaces/viewspace.action?key=ENG");
    let r = one(json!({
        "timestamp": "2021-11-23T00:44:36.398Z",
        "author": {"name": "Jane Doe", "type": "user", "id": "8a7f808a7d4a36", "avatarUri": ""},
        "type": {
            "category": "Permissions", "categoryI18nKey": "audit.logging.category.permissions",
            "action": "Space permission added",
            "actionI18nKey": "audit.logging.summary.space.permission.added",
        },
        "affectedObjects": [
            {"name": "Engineering", "type": "Space", "id": "98306", "uri": space_uri},
            {"name": "confluence-users", "type": "Group", "id": "confluence-users"},
        ],
        "changedValues": [
            {"key": "Permission", "i18nKey": "audit.logging.changed.value.permission",
             "to": "VIEWSPACE"},
            {"key": "Previous", "i18nKey": "x", "from": "", "to": "EDITSPACE"},
        ],
        "source": "192.168.1.20",
        "system": BASE,
        "method": "Browser",
    }));
    let expected = pb::AuditRecord {
        author: Some(pb::AuditAuthor {
            r#type: "user".into(),
            display_name: "Jane Doe".into(),
            user_key: Some("8a7f808a7d4a36".into()),
            unknown_fields: st(json!({"avatarUri": ""})),
            ..Default::default()
        }),
        remote_address: "192.168.1.20".into(),
        creation_date: 1_637_628_276_398,
        summary: "Space permission added".into(),
        category: "Permissions".into(),
        affected_object: Some(pb::AffectedObject {
            name: "Engineering".into(),
            object_type: "Space".into(),
            unknown_fields: st(json!({"id": "98306", "uri": space_uri})),
        }),
        changed_values: vec![
            pb::ChangedValue {
                name: "Permission".into(),
                new_value: "VIEWSPACE".into(),
                unknown_fields: st(json!({"i18nKey": "audit.logging.changed.value.permission"})),
                ..Default::default()
            },
            pb::ChangedValue {
                name: "Previous".into(),
                new_value: "EDITSPACE".into(),
                // `""` is kept: the typed field would read back as absent.
                unknown_fields: st(json!({"i18nKey": "x", "from": ""})),
                ..Default::default()
            },
        ],
        associated_objects: vec![pb::AffectedObject {
            name: "confluence-users".into(),
            object_type: "Group".into(),
            unknown_fields: st(json!({"id": "confluence-users"})),
        }],
        unknown_fields: st(json!({
            "type": {
                "categoryI18nKey": "audit.logging.category.permissions",
                "actionI18nKey": "audit.logging.summary.space.permission.added",
            },
            "system": BASE,
            "method": "Browser",
        })),
        creation_time: ts(1_637_628_276, 398_000_000),
        dialect: pb::Dialect::DataCenter as i32,
        ..Default::default()
    };
    assert_eq!(r, expected);
}

#[test]
fn a_system_event_without_source_or_node_has_no_remote_address() {
    let r = one(json!({
        "timestamp": "2021-11-22T23:59:59.120Z",
        "author": {"name": "System", "type": "system", "avatarUri": ""},
        "type": {"category": "Global configuration", "action": "Backup completed"},
        "system": BASE,
        "method": "System",
    }));
    assert_eq!(r.remote_address, "");
    assert_eq!(r.creation_date, 1_637_625_599_120);
    assert_eq!(r.affected_object, None);
    // Nothing but category and action: no `type` left over.
    assert_eq!(
        r.unknown_fields,
        st(json!({"system": BASE, "method": "System"}))
    );
}

#[test]
fn an_author_without_id_or_uri_has_no_user_key_and_a_second_has_no_fraction() {
    let r = one(json!({
        "timestamp": "2021-11-23T01:25:00Z",
        "author": {"name": "Anonymous", "type": "user", "avatarUri": ""},
        "type": {"category": "Security", "action": "User login failed"},
        "affectedObjects": [{"name": "Anonymous", "type": "User"}],
        "source": "203.0.113.9",
    }));
    let author = r.author.as_ref().expect("author");
    assert_eq!(author.user_key, None);
    assert_eq!(author.unknown_fields, st(json!({"avatarUri": ""})));
    assert_eq!(r.creation_time, ts(1_637_630_700, 0));
    assert_eq!(r.creation_date, 1_637_630_700_000);
    // Printed back exactly as sent: not kept in unknown_fields.
    assert_eq!(r.unknown_fields, None);
    let object = r.affected_object.as_ref().expect("object");
    assert_eq!(object.unknown_fields, None);
}

#[test]
fn values_a_typed_field_would_blur_are_kept_under_their_dc_names() {
    let r = one(json!({
        "timestamp": "2021-11-23T02:24:36.398+01:00",
        "author": {"name": "", "type": null, "id": 7},
        "type": {"category": "", "action": 5, "area": "AUDIT"},
        "affectedObjects": [],
        "changedValues": [{"key": "k", "from": null, "to": 3}],
        "source": null,
    }));
    // The offset is read, and the text kept since ISO_INSTANT would print it in UTC.
    assert_eq!(r.creation_time, ts(1_637_630_676, 398_000_000));
    let author = r.author.as_ref().expect("author");
    assert_eq!(author.user_key, None);
    assert_eq!(
        author.unknown_fields,
        st(json!({"name": "", "type": null, "id": 7}))
    );
    assert_eq!((r.category.as_str(), r.summary.as_str()), ("", ""));
    assert_eq!(
        r.changed_values[0].unknown_fields,
        st(json!({"from": null, "to": 3}))
    );
    assert_eq!(
        r.unknown_fields,
        st(json!({
            "timestamp": "2021-11-23T02:24:36.398+01:00",
            "type": {"category": "", "action": 5, "area": "AUDIT"},
            "affectedObjects": [],
            "source": null,
        }))
    );
}

#[test]
fn values_of_another_shape_are_kept_whole() {
    let r = one(json!({
        "timestamp": 1_637_630_676_398i64,
        "author": "admin",
        "type": ["Security"],
        "affectedObjects": [{"name": "a", "type": "Space"}, "b"],
        "changedValues": {"key": "k"},
    }));
    assert_eq!((r.creation_date, r.creation_time), (0, None));
    assert_eq!(r.author, None);
    assert_eq!(r.affected_object, None);
    assert!(r.associated_objects.is_empty() && r.changed_values.is_empty());
    assert_eq!(r.unknown_fields.expect("unknown").fields.len(), 5);

    // An empty object is not an absent one.
    let r = one(json!({"type": {}, "author": {}, "affectedObjects": [{}], "changedValues": [{}]}));
    assert_eq!(r.unknown_fields, st(json!({"type": {}})));
    assert_eq!(r.author, Some(pb::AuditAuthor::default()));
    assert_eq!(r.affected_object, Some(pb::AffectedObject::default()));
    assert_eq!(r.changed_values, vec![pb::ChangedValue::default()]);

    let r = one(json!({}));
    assert_eq!(
        r,
        pb::AuditRecord {
            dialect: pb::Dialect::DataCenter as i32,
            ..Default::default()
        }
    );
}

#[test]
fn the_page_takes_offset_and_limit_as_asked_and_keeps_paging_info() {
    let paging = json!({
        "lastPage": false, "size": 2, "nextPageOffset": 0,
        "nextPageCursor": "1637628276398,179",
        "nextPageLink": format!("{BASE}/rest/auditing/1.0/events?offset=0&limit=2&pageCursor=1637628276398,179"),
    });
    let body = json!({
        "entities": [{"method": "Browser"}, {"method": "System"}],
        "pagingInfo": paging,
        "future": [1, 2.5],
    });
    let page = convert(&body, 40, 2);
    assert_eq!((page.start, page.limit, page.size), (40, 2, 2));
    assert_eq!(page.links, Default::default());
    assert_eq!(
        page.unknown_fields,
        st(json!({"pagingInfo": paging, "future": [1, 2.5]}))
    );

    // Without `pagingInfo.size` (or with one that is no int32), the page's own length.
    let body = json!({"entities": [{}, {}, {}], "pagingInfo": {"lastPage": true}});
    assert_eq!(convert(&body, 0, 10).size, 3);
    let body = json!({"entities": [{}], "pagingInfo": {"size": "7"}});
    assert_eq!(convert(&body, 0, 10).size, 1);
    let body = json!({"entities": []});
    let page = convert(&body, 0, 10);
    assert_eq!((page.size, page.unknown_fields), (0, None));
}

#[test]
fn a_body_that_is_not_a_page_is_refused() {
    for body in [
        &b"not json"[..],
        b"[]",
        b"{}",
        b"{\"pagingInfo\": {}}",
        b"{\"entities\": {}}",
        b"{\"entities\": [1]}",
        b"{\"entities\": [{}]} trailing",
    ] {
        let refused = encode_data_center_page(body, 0, 10);
        assert!(
            matches!(refused, Err(GatewayError::MalformedBody(_))),
            "{}: {refused:?}",
            String::from_utf8_lossy(body)
        );
    }
}

/// `inner` under `n` objects, each its only key `a`.
fn objects(n: usize, inner: Value) -> Value {
    (0..n).fold(inner, |v, _| json!({ "a": v }))
}

#[test]
fn values_too_deep_go_as_text_at_their_dc_pointers() {
    // A record's unknown value is at level 5: 31 objects then an array reach level 100.
    let fits = objects(31, json!([1]));
    let r = one(json!({ "k": fits }));
    assert!(r.json_text_paths.is_empty());

    let deeper = objects(31, json!([[1]]));
    let r = one(json!({
        "k": deeper,
        // A leftover of `type` lies one object deeper than `k`.
        "type": {"category": "c", "x": objects(30, json!([[1]]))},
        // A member's unknown value lies one level deeper than a record's.
        "author": {"uri": objects(31, json!([1]))},
        "affectedObjects": [{}, {"id": objects(31, json!([1]))}],
        "changedValues": [{"to": objects(31, json!([1]))}],
    }));
    let a31 = "/a".repeat(31);
    let a30 = "/a".repeat(30);
    let mut paths = r.json_text_paths.clone();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            format!("/affectedObjects/1/id{a31}"),
            format!("/author/uri{a31}"),
            format!("/changedValues/0/to{a31}"),
            format!("/k{a31}/0"),
            format!("/type/x{a30}/0"),
        ]
    );

    // The page's own keys list theirs in the page.
    let body = json!({"entities": [], "pagingInfo": objects(32, json!([1]))});
    let page = convert(&body, 0, 0);
    assert_eq!(
        page.json_text_paths,
        vec![format!("/pagingInfo{}", "/a".repeat(32))]
    );
}

#[test]
fn timestamps_read_as_the_instant_they_name() {
    // Seconds from GNU `date -u -d ... +%s`.
    for (text, seconds, nanos) in [
        ("2021-11-23T01:24:36.398Z", 1_637_630_676, 398_000_000),
        ("2021-11-23T01:24:36Z", 1_637_630_676, 0),
        ("2019-11-01T01:00:00.000Z", 1_572_570_000, 0),
        ("2024-02-29T12:00:00.000001Z", 1_709_208_000, 1_000),
        (
            "2024-02-29T13:30:00.123456789+01:30",
            1_709_208_000,
            123_456_789,
        ),
        ("2024-02-29T10:00:00.5-02:00", 1_709_208_000, 500_000_000),
        ("1969-12-31T23:59:59.999Z", -1, 999_000_000),
        ("0001-01-01T00:00:00Z", -62_135_596_800, 0),
        (
            "9999-12-31T23:59:59.999999999Z",
            253_402_300_799,
            999_999_999,
        ),
    ] {
        assert_eq!(parse_instant(text), ts(seconds, nanos), "{text}");
    }
    let r = one(json!({"timestamp": "1969-12-31T23:59:59.999Z"}));
    assert_eq!(r.creation_date, -1, "floor, not toward zero");

    for text in [
        "",
        "2021-11-23",
        "2021-11-23T01:24:36",
        "2021-11-23T01:24:36.Z",
        "2021-11-23T01:24:36.1234567890Z",
        "2021-11-23 01:24:36Z",
        "2021-11-23T01:24:36z",
        "2021-02-29T01:24:36Z",
        "2021-13-01T01:24:36Z",
        "2021-11-23T24:00:00Z",
        "2021-11-23T01:60:00Z",
        "2021-11-23T01:24:60Z",
        "2021-11-23T01:24:36+0100",
        "2021-11-23T01:24:36+19:00",
        "+2021-11-23T01:24:36Z",
        "0000-12-31T23:59:59Z",
        "0001-01-01T00:00:00+00:01",
        "9999-12-31T23:59:59-00:01",
        "２０２１-11-23T01:24:36Z",
    ] {
        assert_eq!(parse_instant(text), None, "{text}");
        let r = one(json!({ "timestamp": text }));
        assert_eq!((r.creation_date, r.creation_time), (0, None));
        assert_eq!(r.unknown_fields, st(json!({ "timestamp": text })));
    }
}

#[test]
fn timestamps_print_as_iso_instant_and_other_spellings_are_kept() {
    for (seconds, nanos, text) in [
        (1_637_630_676, 0, "2021-11-23T01:24:36Z"),
        (1_637_630_676, 398_000_000, "2021-11-23T01:24:36.398Z"),
        (1_637_630_676, 398_100_000, "2021-11-23T01:24:36.398100Z"),
        (1_637_630_676, 1, "2021-11-23T01:24:36.000000001Z"),
        (-62_135_596_800, 0, "0001-01-01T00:00:00Z"),
    ] {
        assert_eq!(format_instant(&Timestamp { seconds, nanos }), text);
    }
    for text in [
        "2021-11-23T01:24:36.3980Z",
        "2021-11-23T01:24:36.000Z",
        "2021-11-23T01:24:36.4Z",
    ] {
        let r = one(json!({ "timestamp": text }));
        assert!(r.creation_time.is_some());
        assert_eq!(r.unknown_fields, st(json!({ "timestamp": text })));
    }
}

// Property tests.

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

/// JSON nested 8 to 90 levels deep, under keys a JSON Pointer must escape.
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

/// Keys DC does not send (yet), with any JSON, now and then nested deep.
fn unknown_keys() -> impl Strategy<Value = Map<String, Value>> {
    let value = prop_oneof![6 => any_json(), 1 => deep_json()];
    prop::collection::btree_map("x[A-Za-z0-9_~/]{0,8}", value, 0..3)
        .prop_map(|m| m.into_iter().collect())
}

/// A string DC might send, the empty one often.
fn text() -> BoxedStrategy<Value> {
    prop_oneof![1 => Just(String::new()), 4 => "\\PC{1,16}"]
        .prop_map(Value::String)
        .boxed()
}

/// A known key: absent (None), or present with `usual`, `null`, or any other JSON.
fn field(usual: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(Value::Null)),
        8 => usual.prop_map(Some),
        1 => any_json().prop_map(Some),
        1 => deep_json().prop_map(Some),
    ]
    .boxed()
}

/// An object of the known `keys`, each maybe present, and unknown keys.
fn object(keys: Vec<(&'static str, BoxedStrategy<Option<Value>>)>) -> BoxedStrategy<Value> {
    // Pair each strategy with its key (a bare `&str` would be read as a regex).
    let keys: Vec<_> = keys
        .into_iter()
        .map(|(k, s)| s.prop_map(move |v| (k, v)))
        .collect();
    (keys, unknown_keys())
        .prop_map(|(keys, mut m)| {
            for (k, v) in keys {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        })
        .boxed()
}

/// An array of `item`s, empty now and then; rarely with an item of another shape.
fn list(item: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![
        8 => prop::collection::vec(item.clone(), 0..4).prop_map(Value::Array),
        1 => (prop::collection::vec(item, 0..2), any_json())
            .prop_filter("not an object", |(_, odd)| !odd.is_object())
            .prop_map(|(mut v, odd)| { v.push(odd); Value::Array(v) }),
    ]
    .boxed()
}

/// Timestamps: ISO_INSTANT's own, other ISO 8601 spellings (some invalid, some with
/// offsets), and other text.
fn timestamp() -> BoxedStrategy<Value> {
    let canonical = (MIN_SECONDS..=MAX_SECONDS, 0..1_000_000_000i32, 0..4u32).prop_map(
        |(seconds, nanos, cut)| {
            // Whole seconds, milliseconds and microseconds too, not only nanoseconds.
            let nanos = nanos - nanos % [1_000_000_000, 1_000_000, 1000, 1][cut as usize];
            format_instant(&Timestamp { seconds, nanos })
        },
    );
    let zone = prop_oneof![
        Just("Z".to_owned()),
        (prop::sample::select(vec!['+', '-']), 0..20u32, 0..60u32)
            .prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
    ];
    let spelled = (
        (0..=9999u32, 1..=13u32, 1..=31u32),
        (0..=24u32, 0..=60u32, 0..=60u32),
        "(\\.[0-9]{0,10})?",
        zone,
    )
        .prop_map(|((y, mo, d), (h, mi, s), fraction, zone)| {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}{zone}")
        });
    prop_oneof![
        4 => canonical.prop_map(Value::String),
        4 => spelled.prop_map(Value::String),
        1 => "\\PC{0,24}".prop_map(Value::String),
    ]
    .boxed()
}

fn author() -> BoxedStrategy<Value> {
    object(vec![
        ("name", field(text())),
        (
            "type",
            field(prop_oneof![Just(json!("user")), text()].boxed()),
        ),
        ("id", field(text())),
        ("uri", field(text())),
        ("avatarUri", field(Just(json!("")).boxed())),
    ])
}

fn audit_type() -> BoxedStrategy<Value> {
    object(vec![
        ("category", field(text())),
        ("categoryI18nKey", field(text())),
        ("action", field(text())),
        ("actionI18nKey", field(text())),
        ("area", field(text())),
        ("level", field(text())),
    ])
}

fn affected() -> BoxedStrategy<Value> {
    object(vec![
        ("name", field(text())),
        ("type", field(text())),
        ("id", field(text())),
        ("uri", field(text())),
    ])
}

fn changed() -> BoxedStrategy<Value> {
    object(vec![
        ("key", field(text())),
        ("i18nKey", field(text())),
        ("from", field(text())),
        ("to", field(text())),
    ])
}

fn extra_attribute() -> BoxedStrategy<Value> {
    object(vec![
        ("name", field(text())),
        ("nameI18nKey", field(text())),
        ("value", field(text())),
    ])
}

fn entity() -> BoxedStrategy<Value> {
    object(vec![
        ("timestamp", field(timestamp())),
        ("author", field(author())),
        ("type", field(audit_type())),
        ("affectedObjects", field(list(affected()))),
        ("changedValues", field(list(changed()))),
        ("source", field(text())),
        ("system", field(text())),
        ("node", field(text())),
        ("method", field(text())),
        ("extraAttributes", field(list(extra_attribute()))),
    ])
}

fn page() -> impl Strategy<Value = Value> {
    let size = prop_oneof![
        4 => (0..=10_000i64).prop_map(Value::from),
        1 => any_json(),
    ];
    let paging = object(vec![
        (
            "lastPage",
            field(any::<bool>().prop_map(Value::Bool).boxed()),
        ),
        ("size", field(size.boxed())),
        ("nextPageCursor", field(text())),
    ]);
    (
        prop::collection::vec(entity(), 0..4),
        field(paging),
        unknown_keys(),
    )
        .prop_map(|(entities, paging, mut m)| {
            m.insert("entities".into(), Value::Array(entities));
            if let Some(p) = paging {
                m.insert("pagingInfo".into(), p);
            }
            Value::Object(m)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn dc_entity_to_protobuf_to_dc_entity_is_lossless(
        body in page(),
        offset in any::<i32>(),
        limit in any::<i32>(),
    ) {
        // `convert` checks each record's dialect and round trip, and the depth.
        let page = convert(&body, offset, limit);
        prop_assert_eq!((page.start, page.limit), (offset, limit));
        let entities = body["entities"].as_array().map_or(0, Vec::len);
        let size = body
            .pointer("/pagingInfo/size")
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok());
        prop_assert_eq!(i64::from(page.size), size.map_or(entities as i64, i64::from));
        let mut rest = body.as_object().cloned().unwrap_or_default();
        rest.remove("entities");
        let kept = restore(with_unknown(Map::new(), &page.unknown_fields), &page.json_text_paths);
        prop_assert_eq!(kept, Value::Object(rest));
        for (record, entity) in page.results.iter().zip(body["entities"].as_array().into_iter().flatten()) {
            // A timestamp that reads as an instant is typed, whatever its spelling.
            let instant = entity.get("timestamp").and_then(Value::as_str).and_then(parse_instant);
            prop_assert_eq!(&record.creation_time, &instant);
        }
    }

    #[test]
    fn every_instant_prints_and_reads_back(
        seconds in MIN_SECONDS..=MAX_SECONDS,
        nanos in 0..1_000_000_000i32,
    ) {
        let t = Timestamp { seconds, nanos };
        prop_assert_eq!(parse_instant(&format_instant(&t)), Some(t));
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
    let members = r
        .author
        .iter()
        .map(|a| &a.unknown_fields)
        .chain(
            r.affected_object
                .iter()
                .chain(&r.associated_objects)
                .map(|o| &o.unknown_fields),
        )
        .chain(r.changed_values.iter().map(|c| &c.unknown_fields))
        .map(|u| 1 + unknown_depth(u));
    1 + members
        .chain([unknown_depth(&r.unknown_fields), 1])
        .max()
        .unwrap_or(0)
}

/// Message levels of a page, itself included: the outermost message is level 1.
fn page_depth(p: &pb::GetSinceResponse) -> usize {
    1 + p
        .results
        .iter()
        .map(record_depth)
        .chain([unknown_depth(&p.unknown_fields)])
        .max()
        .unwrap_or(0)
}
