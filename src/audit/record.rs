//! Confluence's `AuditRecordArray` JSON, parsed straight into typed structs that borrow
//! their strings from the body.
//!
//! Parsing is tolerant by construction: every known key is read as [`Loose`], which holds
//! either the typed value or, when the JSON had another type (`null`, a number where a
//! string belongs, …), the value verbatim. Keys the schema does not know are kept too.
//! Only a body that is not an object with a `results` array of objects is rejected.

use std::{borrow::Cow, fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::value::SeqAccessDeserializer,
    de::{self, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer},
};
use serde_json::Value;

/// A string borrowed from the body where it had no escapes, owned otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Str<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A known key's value: the type the schema gives it, or whatever JSON came instead.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Loose<T> {
    /// The value had the schema's type.
    Typed(T),
    /// The value had another JSON type (including `null`); kept verbatim.
    Raw(Value),
}

/// What a [`Loose`] value accepts as its typed form; everything else becomes `Raw`.
pub(crate) trait Expect<'de>: Sized {
    /// A JSON boolean.
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    /// A JSON integer.
    fn from_i128(_: i128) -> Option<Self> {
        None
    }
    /// A JSON string.
    fn from_str(_: Cow<'de, str>) -> Option<Self> {
        None
    }
    /// A JSON object: `Ok(None)` means objects are not this type.
    fn from_map<A: MapAccess<'de>>(_: &mut A) -> Result<Option<Self>, A::Error> {
        Ok(None)
    }
    /// A JSON array: `Ok(None)` means arrays are not this type.
    fn from_seq<A: SeqAccess<'de>>(_: &mut A) -> Result<Option<Self>, A::Error> {
        Ok(None)
    }
}

impl<'de> Expect<'de> for Str<'de> {
    fn from_str(v: Cow<'de, str>) -> Option<Self> {
        Some(Str(v))
    }
}

impl Expect<'_> for bool {
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

impl Expect<'_> for i64 {
    fn from_i128(v: i128) -> Option<Self> {
        v.try_into().ok()
    }
}

impl Expect<'_> for i32 {
    fn from_i128(v: i128) -> Option<Self> {
        v.try_into().ok()
    }
}

impl<'de, T: Expect<'de>> Expect<'de> for Vec<Loose<T>> {
    fn from_seq<A: SeqAccess<'de>>(seq: &mut A) -> Result<Option<Self>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<Loose<T>>()? {
            items.push(item);
        }
        Ok(Some(items))
    }
}

impl<'de, T: Expect<'de>> Deserialize<'de> for Loose<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor(PhantomData))
    }
}

struct LooseVisitor<T>(PhantomData<T>);

impl<T> LooseVisitor<T> {
    fn pick<E>(typed: Option<T>, raw: impl FnOnce() -> Value) -> Result<Loose<T>, E> {
        Ok(typed.map_or_else(|| Loose::Raw(raw()), Loose::Typed))
    }
}

impl<'de, T: Expect<'de>> Visitor<'de> for LooseVisitor<T> {
    type Value = Loose<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Self::pick(T::from_bool(v), || Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Self::pick(T::from_i128(v.into()), || Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Self::pick(T::from_i128(v.into()), || Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Loose::Raw(Value::from(v)))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Self::pick(T::from_str(Cow::Borrowed(v)), || Value::from(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Self::pick(T::from_str(Cow::Owned(v.to_owned())), || Value::from(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Loose::Raw(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Loose::Raw(Value::Null))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        match T::from_map(&mut map)? {
            Some(v) => Ok(Loose::Typed(v)),
            None => Value::deserialize(MapAccessDeserializer::new(map)).map(Loose::Raw),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        match T::from_seq(&mut seq)? {
            Some(v) => Ok(Loose::Typed(v)),
            None => Value::deserialize(SeqAccessDeserializer::new(seq)).map(Loose::Raw),
        }
    }
}

/// A key present in the JSON: `None` when absent.
pub(crate) type Field<T> = Option<Loose<T>>;

/// Keys the schema does not know, in body order, with their values.
pub(crate) type Unknown<'a> = Vec<(Str<'a>, Value)>;

/// Declares a struct read from a JSON object whose known keys are `Field`s and whose
/// other keys land in `unknown`, so every shape of the object parses.
macro_rules! json_object {
    (
        $(#[$meta:meta])*
        pub struct $name:ident<'a> {
            $( $(#[$fmeta:meta])* $field:ident: $ty:ty = $key:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub(crate) struct $name<'a> {
            $( $(#[$fmeta])* pub(crate) $field: Field<$ty>, )*
            /// Keys the schema does not know.
            pub(crate) unknown: Unknown<'a>,
        }

        impl<'de> Expect<'de> for $name<'de> {
            fn from_map<A: MapAccess<'de>>(map: &mut A) -> Result<Option<Self>, A::Error> {
                let mut out = Self::default();
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    match key.as_ref() {
                        $( $key => out.$field = Some(map.next_value()?), )*
                        _ => {
                            let value = map.next_value::<Value>()?;
                            out.unknown.push((Str(key), value));
                        }
                    }
                }
                Ok(Some(out))
            }
        }
    };
}

json_object! {
    /// `author` of an audit record.
    pub struct Author<'a> {
        /// `type`.
        kind: Str<'a> = "type",
        /// `displayName`.
        display_name: Str<'a> = "displayName",
        /// `operations`: null, an object or an array, kept as JSON.
        operations: ValueOf = "operations",
        /// `username`.
        username: Str<'a> = "username",
        /// `userKey`.
        user_key: Str<'a> = "userKey",
        /// `accountId`.
        account_id: Str<'a> = "accountId",
        /// `accountType`.
        account_type: Str<'a> = "accountType",
        /// `externalCollaborator`.
        external_collaborator: bool = "externalCollaborator",
        /// `isExternalCollaborator`.
        is_external_collaborator: bool = "isExternalCollaborator",
        /// `isGuest`.
        is_guest: bool = "isGuest",
        /// `publicName`.
        public_name: Str<'a> = "publicName",
    }
}

json_object! {
    /// `affectedObject` and each of `associatedObjects`.
    pub struct AffectedObject<'a> {
        /// `name`.
        name: Str<'a> = "name",
        /// `objectType`.
        object_type: Str<'a> = "objectType",
    }
}

json_object! {
    /// One of `changedValues`.
    pub struct ChangedValue<'a> {
        /// `name`.
        name: Str<'a> = "name",
        /// `oldValue`.
        old_value: Str<'a> = "oldValue",
        /// `newValue`.
        new_value: Str<'a> = "newValue",
        /// `hiddenOldValue`.
        hidden_old_value: Str<'a> = "hiddenOldValue",
        /// `hiddenNewValue`.
        hidden_new_value: Str<'a> = "hiddenNewValue",
    }
}

json_object! {
    /// One audit event.
    pub struct Record<'a> {
        /// `author`.
        author: Author<'a> = "author",
        /// `remoteAddress`.
        remote_address: Str<'a> = "remoteAddress",
        /// `creationDate`, epoch milliseconds.
        creation_date: i64 = "creationDate",
        /// `summary`.
        summary: Str<'a> = "summary",
        /// `description`.
        description: Str<'a> = "description",
        /// `category`.
        category: Str<'a> = "category",
        /// `sysAdmin`.
        sys_admin: bool = "sysAdmin",
        /// `superAdmin`.
        super_admin: bool = "superAdmin",
        /// `affectedObject`.
        affected_object: AffectedObject<'a> = "affectedObject",
        /// `changedValues`.
        changed_values: Vec<Loose<ChangedValue<'a>>> = "changedValues",
        /// `associatedObjects`.
        associated_objects: Vec<Loose<AffectedObject<'a>>> = "associatedObjects",
    }
}

json_object! {
    /// Everything of an `AuditRecordArray` but its `results`.
    pub struct PageHeader<'a> {
        /// `start`.
        start: i32 = "start",
        /// `limit`: the page size the server applied.
        limit: i32 = "limit",
        /// `size`.
        size: i32 = "size",
        /// `_links`: values are strings or objects.
        links: ValueOf = "_links",
    }
}

/// Any JSON value taken whole (`null` included): `operations`, `_links`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ValueOf(pub Value);

impl<'de> Deserialize<'de> for Loose<ValueOf> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(|v| Loose::Typed(ValueOf(v)))
    }
}

/// One page of the audit log as Confluence sent it: what the reference converter
/// (`pb::convert::from_json`, tests and benches only) reads; `pb::convert::direct` reads
/// the page's records one by one instead, with the same serde calls.
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Page<'a> {
    /// The records, newest first.
    pub results: Vec<Record<'a>>,
    /// The other keys of the body.
    pub header: PageHeader<'a>,
}

#[cfg(any(test, feature = "testing"))]
impl<'a> Page<'a> {
    /// Parses a 200 body; the error says why it is not an `AuditRecordArray`.
    pub(crate) fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

impl<'de> Deserialize<'de> for Record<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ObjectVisitor("an audit record object", PhantomData))
    }
}

#[cfg(any(test, feature = "testing"))]
impl<'de> Deserialize<'de> for Page<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Page<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an AuditRecordArray object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut results = None;
                let mut header = PageHeader::default();
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    match key.as_ref() {
                        "results" => results = Some(map.next_value::<Vec<Record<'de>>>()?),
                        "start" => header.start = Some(map.next_value()?),
                        "limit" => header.limit = Some(map.next_value()?),
                        "size" => header.size = Some(map.next_value()?),
                        "_links" => header.links = Some(map.next_value()?),
                        _ => {
                            let value = map.next_value::<Value>()?;
                            header.unknown.push((Str(key), value));
                        }
                    }
                }
                let results = results.ok_or_else(|| de::Error::missing_field("results"))?;
                Ok(Page { results, header })
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads a JSON object into an [`Expect`] type, rejecting any other JSON type.
struct ObjectVisitor<T>(&'static str, PhantomData<T>);

impl<'de, T: Expect<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        T::from_map(&mut map)?.ok_or_else(|| de::Error::custom(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> &'static [u8] {
        include_bytes!("../../tests/fixtures/atlassian-audit-since-sample.json")
    }

    #[test]
    fn parses_atlassian_sample() {
        let page = Page::parse(sample()).expect("sample parses");
        assert_eq!(page.results.len(), 2);
        assert_eq!(page.header.start, Some(Loose::Typed(-42437008)));
        assert_eq!(page.header.size, Some(Loose::Typed(-54456786)));
        let r = &page.results[0];
        assert_eq!(r.creation_date, Some(Loose::Typed(-28489517)));
        let author = match &r.author {
            Some(Loose::Typed(a)) => a,
            other => panic!("author not typed: {other:?}"),
        };
        assert_eq!(author.operations, Some(Loose::Typed(ValueOf(Value::Null))));
        assert_eq!(author.account_id, None);
        // Plain strings borrow from the body.
        assert!(matches!(
            author.display_name,
            Some(Loose::Typed(Str(Cow::Borrowed("eu qui amet"))))
        ));
    }

    #[test]
    fn keeps_unexpected_types_and_unknown_keys() {
        let body = br#"{"results":[{"author":null,"creationDate":1.5,"sysAdmin":"yes",
            "summary":"caf\u00e9","changedValues":[{"name":"n","oldValue":1,"newValue":"b","x":[1]}, 7],
            "newKey":{"a":[1,null]}}],"start":0,"limit":"10","size":1,"_links":{"base":"b"}}"#;
        let page = Page::parse(body).expect("tolerant parse");
        let r = &page.results[0];
        assert_eq!(r.author, Some(Loose::Raw(Value::Null)));
        assert_eq!(r.creation_date, Some(Loose::Raw(Value::from(1.5))));
        assert_eq!(r.sys_admin, Some(Loose::Raw(Value::from("yes"))));
        assert_eq!(
            r.summary,
            Some(Loose::Typed(Str(Cow::Owned("café".into()))))
        );
        let Some(Loose::Typed(changed)) = &r.changed_values else {
            panic!("changedValues not typed")
        };
        assert_eq!(changed.len(), 2);
        assert_eq!(changed[1], Loose::Raw(Value::from(7)));
        let Loose::Typed(first) = &changed[0] else {
            panic!("first change not typed")
        };
        assert_eq!(first.old_value, Some(Loose::Raw(Value::from(1))));
        assert_eq!(first.unknown[0].0, Str(Cow::Borrowed("x")));
        assert_eq!(r.unknown[0].0, Str(Cow::Borrowed("newKey")));
        assert_eq!(page.header.limit, Some(Loose::Raw(Value::from("10"))));
    }

    #[test]
    fn rejects_what_is_not_an_audit_record_array() {
        for body in [
            &b"[]"[..],
            b"{}",
            b"{\"results\":5}",
            b"{\"results\":[1]}",
            b"{\"results\":[]",
            b"",
            b"null",
        ] {
            assert!(
                Page::parse(body).is_err(),
                "{} parsed",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn integers_out_of_range_stay_raw() {
        let body = br#"{"results":[],"start":4294967296,"limit":-1,"size":9223372036854775808}"#;
        let page = Page::parse(body).expect("parses");
        assert_eq!(
            page.header.start,
            Some(Loose::Raw(Value::from(4294967296u64)))
        );
        assert_eq!(page.header.limit, Some(Loose::Typed(-1)));
        assert_eq!(
            page.header.size,
            Some(Loose::Raw(Value::from(9223372036854775808u64)))
        );
    }
}
