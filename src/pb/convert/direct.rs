//! Confluence's JSON page straight into an encoded `GetSinceResponse`, in one pass over
//! the body: each record is read as `audit::record` types (typed fields, strings borrowed
//! from the body) and written out in protobuf's wire format at once, with no `prost`
//! structs, `Struct` B-trees or owned strings between, and no list of parsed records.
//!
//! The bytes are those `prost` writes for the message the reference converter
//! (`from_json`, compiled for tests) builds: fields in tag order, implicit-presence
//! fields only when not their default, `unknown_fields` in key order (a duplicate key's
//! last value), and `json_text_paths` in the order the reference converts values in
//! (`Rank`). One exception: `links` is a `HashMap` in the generated type, which `prost`
//! writes in whatever order the map iterates; here its entries go in key order, so the
//! same body always gives the same bytes. Refusals are the same as well: the records and
//! the page's other keys are read by the same serde calls as `Page::parse` makes.

use std::{borrow::Cow, fmt};

use prost::encoding::{WireType, encoded_len_varint};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::to_json::number_to_json;
use crate::audit::record::{
    AffectedObject, Author, ChangedValue, Field, Loose, PageHeader, Record, Str, ValueOf,
};

/// The deepest message nesting any response may reach, counting the outermost message as
/// level 1: prost, upb (Python), C++ and Java refuse a message whose nesting passes their
/// default recursion limit of 100 (prost and upb allow 100 levels below the outermost; we
/// keep one level to spare rather than rely on how each runtime counts).
pub(super) const MAX_DEPTH: usize = 100;

// Message levels, counted from the outermost message down (proto/confluence/audit/v1/
// audit.proto). GetSinceResponse, StreamSinceResponse and FollowResponse each hold their
// records in field 1 (`pb/wire.rs` moves records between them as they are), so a record
// lies at the same level in all three, and its limits hold wherever it is sent.
/// `GetSinceResponse` (`StreamSinceResponse`, `FollowResponse`).
pub(super) const PAGE: usize = 1;
/// `AuditRecord`, an item of `results` (`records`).
pub(super) const RECORD: usize = PAGE + 1;
/// `AuditAuthor`, `AffectedObject`, `ChangedValue`: messages of a record's fields.
pub(super) const MEMBER: usize = RECORD + 1;
/// From a message to a `Value` in one of its fields.
pub(super) const FIELD_VALUE: usize = 1;
/// From a message to a `Value` in its `map<string, Value>`: the map entry, the Value.
pub(super) const MAP_VALUE: usize = 2;
/// From a message (or `Value`) to a `Value` in its `Struct` field: the Struct, its map
/// entry, the Value.
pub(super) const STRUCT_VALUE: usize = 3;
/// From a `Value` to a `Value` in its `ListValue`: the ListValue, the Value.
pub(super) const LIST_VALUE: usize = 2;

/// Converts a 200 body into the encoded `GetSinceResponse`; the error is the one
/// `Page::parse` gives for a body that is not an `AuditRecordArray`.
pub(crate) fn encode_page(body: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    // The encoding is a little smaller than the JSON it comes from (no key names), so
    // one allocation usually holds it.
    let mut out = Vec::with_capacity(body.len());
    // Checking the body's UTF-8 once costs less than checking each string on its own,
    // which is what reading bytes does; a body that is not UTF-8 is read as bytes, so
    // that it is refused where and as `Page::parse` refuses it.
    match std::str::from_utf8(body) {
        Ok(text) => read(serde_json::Deserializer::from_str(text), &mut out)?,
        Err(_) => read(serde_json::Deserializer::from_slice(body), &mut out)?,
    }
    // The page is cached as it is: no spare capacity kept with it.
    out.shrink_to_fit();
    Ok(out)
}

fn read<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    PageSeed { out }.deserialize(&mut de)?;
    de.end()
}

/// Reads the page object, writing its records as they come and the rest at the end.
struct PageSeed<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for PageSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AuditRecordArray object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut results = false;
        let mut header = PageHeader::default();
        let mut scratch = Scratch::default();
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            match key.as_ref() {
                "results" => {
                    // A second `results` replaces the first, as it does in a parsed page.
                    self.out.clear();
                    map.next_value_seed(Results {
                        out: self.out,
                        scratch: &mut scratch,
                    })?;
                    results = true;
                }
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
        if !results {
            return Err(de::Error::missing_field("results"));
        }
        write_header(self.out, header, &mut scratch);
        Ok(())
    }
}

/// Reads `results`, writing each record as soon as it is read.
struct Results<'o, 's, 'de> {
    out: &'o mut Vec<u8>,
    scratch: &'s mut Scratch<'de>,
}

impl<'de> DeserializeSeed<'de> for Results<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Results<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What serde says of the `Vec` a parsed page reads `results` into.
        f.write_str("a sequence")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // One record read into one place, its fields taken out as they are written:
        // a record is large, and moving it up through serde's layers showed in profiles.
        let mut record = Record::default();
        while seq.next_element_seed(RecordSeed(&mut record))?.is_some() {
            write_record(self.out, &mut record, self.scratch);
        }
        Ok(())
    }
}

/// Reads a record into its place, as `Record`'s own `Deserialize` does (the same calls,
/// so the same errors).
struct RecordSeed<'r, 'de>(&'r mut Record<'de>);

impl<'de> DeserializeSeed<'de> for RecordSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an audit record object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let r = self.0;
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            match key.as_ref() {
                "author" => r.author = Some(map.next_value()?),
                "remoteAddress" => r.remote_address = Some(map.next_value()?),
                "creationDate" => r.creation_date = Some(map.next_value()?),
                "summary" => r.summary = Some(map.next_value()?),
                "description" => r.description = Some(map.next_value()?),
                "category" => r.category = Some(map.next_value()?),
                "sysAdmin" => r.sys_admin = Some(map.next_value()?),
                "superAdmin" => r.super_admin = Some(map.next_value()?),
                "affectedObject" => r.affected_object = Some(map.next_value()?),
                "changedValues" => r.changed_values = Some(map.next_value()?),
                "associatedObjects" => r.associated_objects = Some(map.next_value()?),
                _ => {
                    let value = map.next_value::<Value>()?;
                    r.unknown.push((Str(key), value));
                }
            }
        }
        Ok(())
    }
}

/// Buffers reused from record to record.
#[derive(Default)]
struct Scratch<'de> {
    /// A record's (or the page's) `unknown_fields` entries.
    outer: Vec<Entry<'de>>,
    /// What members of a record write with.
    sink: Sink<'de>,
}

/// What writing a message's `unknown_fields` takes besides its entries.
#[derive(Default)]
struct Sink<'de> {
    /// The entries of the record's member being written.
    inner: Vec<Entry<'de>>,
    /// Pointers of the values carried as text, with where the reference meets them.
    paths: Vec<(Rank, String)>,
    /// Where the values of duplicate keys, which the message does not keep, are written.
    discard: Vec<u8>,
}

/// Where the reference converter meets a value, so that `json_text_paths` lists the
/// values carried as text in its order while fields are written in tag order: the
/// step in the message (`Step`), the item of a list, the step in that item, and the
/// position of an unknown key in the body.
type Rank = (u8, u32, u8, u32);

/// The steps of `record_to_proto` (and `page_to_proto`), in the order it takes them.
mod step {
    /// Keys the schema does not know (first, in body order).
    pub(super) const UNKNOWN: u8 = 0;
    pub(super) const CREATION_DATE: u8 = 1;
    pub(super) const AUTHOR: u8 = 2;
    pub(super) const REMOTE_ADDRESS: u8 = 3;
    pub(super) const SUMMARY: u8 = 4;
    pub(super) const DESCRIPTION: u8 = 5;
    pub(super) const CATEGORY: u8 = 6;
    pub(super) const SYS_ADMIN: u8 = 7;
    pub(super) const SUPER_ADMIN: u8 = 8;
    pub(super) const AFFECTED_OBJECT: u8 = 9;
    pub(super) const CHANGED_VALUES: u8 = 10;
    pub(super) const ASSOCIATED_OBJECTS: u8 = 11;
    // The page's.
    pub(super) const LINKS: u8 = 1;
    pub(super) const START: u8 = 2;
    pub(super) const LIMIT: u8 = 3;
    pub(super) const SIZE: u8 = 4;
}

/// One entry of an `unknown_fields` Struct, not yet written.
struct Entry<'de> {
    key: Cow<'de, str>,
    value: Value,
    rank: Rank,
}

/// A length-delimited field opened by `open`, its length not yet written.
struct Open {
    /// Where its content starts.
    at: usize,
    /// Bytes left for its length.
    room: usize,
}

/// Opens the length-delimited field `tag`, leaving `room` bytes for its length (the
/// content is moved if it needs another number).
fn open(out: &mut Vec<u8>, tag: u32, room: usize) -> Open {
    key(out, tag, WireType::LengthDelimited);
    out.resize(out.len() + room, 0);
    Open {
        at: out.len(),
        room,
    }
}

fn close(out: &mut Vec<u8>, field: Open) {
    let len = out.len() - field.at;
    let need = encoded_len_varint(len as u64);
    let start = field.at - field.room;
    if need != field.room {
        if need > field.room {
            out.resize(out.len() + need - field.room, 0);
        }
        out.copy_within(field.at..field.at + len, start + need);
        out.truncate(start + need + len);
    }
    let mut v = len as u64;
    let mut i = start;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
}

/// A base-128 varint; most are one byte (keys, short lengths), and prost's generic
/// `encode_varint` showed in profiles.
#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn key(out: &mut Vec<u8>, tag: u32, wire: WireType) {
    put_varint(out, u64::from(tag << 3 | wire as u32));
}

fn bytes(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
    key(out, tag, WireType::LengthDelimited);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// An `int32`, `int64` or `bool` (negative numbers sign-extended to ten bytes).
fn varint(out: &mut Vec<u8>, tag: u32, v: i64) {
    key(out, tag, WireType::Varint);
    put_varint(out, v as u64);
}

/// A JSON Pointer (RFC 6901) built on the call stack, written out only for the rare value
/// carried as text.
#[derive(Clone, Copy)]
pub(super) enum Ptr<'a> {
    /// The record's (or the page's) JSON itself.
    Root,
    /// A key of the object at the parent.
    Key(&'a Ptr<'a>, &'a str),
    /// An item of the array at the parent.
    Index(&'a Ptr<'a>, usize),
}

impl Ptr<'_> {
    /// Appends the pointer to `out`.
    pub(super) fn write(&self, out: &mut String) {
        match self {
            Ptr::Root => {}
            Ptr::Key(parent, key) => {
                parent.write(out);
                out.push('/');
                // RFC 6901: `~` is `~0` and `/` is `~1` within a key.
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Ptr::Index(parent, i) => {
                parent.write(out);
                out.push('/');
                out.push_str(&i.to_string());
            }
        }
    }
}

/// `google.protobuf.Value` field numbers.
const NULL_VALUE: u32 = 1;
const NUMBER_VALUE: u32 = 2;
const STRING_VALUE: u32 = 3;
const BOOL_VALUE: u32 = 4;
const STRUCT_VALUE_FIELD: u32 = 5;
const LIST_VALUE_FIELD: u32 = 6;

/// Writes the content of the `google.protobuf.Value` of `v` at message level `level`,
/// found at `at`: an object or array whose items would lie deeper than `MAX_DEPTH` goes
/// as a string of its JSON text, its pointer listed in `paths` under `rank`.
fn value(
    out: &mut Vec<u8>,
    v: &Value,
    level: usize,
    at: Ptr<'_>,
    paths: &mut Vec<(Rank, String)>,
    rank: Rank,
) {
    let items = match v {
        Value::Array(_) => level + LIST_VALUE,
        Value::Object(_) => level + STRUCT_VALUE,
        _ => level,
    };
    if items > MAX_DEPTH {
        let mut path = String::new();
        at.write(&mut path);
        paths.push((rank, path));
        bytes(out, STRING_VALUE, v.to_string().as_bytes());
        return;
    }
    match v {
        Value::Null => varint(out, NULL_VALUE, 0),
        Value::Bool(b) => varint(out, BOOL_VALUE, i64::from(*b)),
        Value::Number(n) => {
            key(out, NUMBER_VALUE, WireType::SixtyFourBit);
            out.extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_le_bytes());
        }
        Value::String(s) => bytes(out, STRING_VALUE, s.as_bytes()),
        Value::Array(a) => {
            let list = open(out, LIST_VALUE_FIELD, 1);
            for (i, item) in a.iter().enumerate() {
                let v = open(out, 1, 1);
                value(out, item, items, Ptr::Index(&at, i), paths, rank);
                close(out, v);
            }
            close(out, list);
        }
        Value::Object(o) => {
            let fields = open(out, STRUCT_VALUE_FIELD, 1);
            for (k, item) in o {
                map_entry(out, 1, k, item, items, at, paths, rank);
            }
            close(out, fields);
        }
    }
}

/// Writes one entry of a `map<string, Value>` field `tag`: the Value of `v` at message
/// level `level`, found at key `key` of `at`.
#[allow(clippy::too_many_arguments)] // `value`'s arguments and the entry's own
fn map_entry(
    out: &mut Vec<u8>,
    tag: u32,
    key: &str,
    v: &Value,
    level: usize,
    at: Ptr<'_>,
    paths: &mut Vec<(Rank, String)>,
    rank: Rank,
) {
    let entry = open(out, tag, 1);
    // prost leaves out a map entry's key when it is the default (empty) string.
    if !key.is_empty() {
        bytes(out, 1, key.as_bytes());
    }
    let field = open(out, 2, 1);
    value(out, v, level, Ptr::Key(&at, key), paths, rank);
    close(out, field);
    close(out, entry);
}

/// Writes `entries` as the `google.protobuf.Struct` field `tag` of the message at level
/// `level`, found at `at` (nothing when there are none), and empties them.
fn write_struct<'de>(
    out: &mut Vec<u8>,
    tag: u32,
    entries: &mut Vec<Entry<'de>>,
    level: usize,
    at: Ptr<'_>,
    paths: &mut Vec<(Rank, String)>,
    discard: &mut Vec<u8>,
) {
    if entries.is_empty() {
        return;
    }
    // A stable sort: of a key's duplicates (only unknown keys can repeat), the last in
    // the body is the value the message keeps.
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let fields = open(out, tag, 1);
    for (i, e) in entries.iter().enumerate() {
        let kept = entries.get(i + 1).is_none_or(|next| next.key != e.key);
        // The reference converts an overwritten value too: its pointers stay listed.
        let to = if kept { &mut *out } else { &mut *discard };
        map_entry(
            to,
            1,
            &e.key,
            &e.value,
            level + STRUCT_VALUE,
            at,
            paths,
            e.rank,
        );
        discard.clear();
    }
    close(out, fields);
    entries.clear();
}

/// Where one message's fields go, and where the JSON its typed fields cannot hold goes.
struct Fields<'w, 'de> {
    out: &'w mut Vec<u8>,
    entries: &'w mut Vec<Entry<'de>>,
    /// For a record's member, the record's step that writes it and the item of its list;
    /// `None` for a record or the page.
    member: Option<(u8, u32)>,
}

impl<'de> Fields<'_, 'de> {
    fn rank(&self, step: u8, sub: u32) -> Rank {
        match self.member {
            None => (step, 0, 0, sub),
            Some((outer, item)) => (outer, item, step, sub),
        }
    }

    /// Keeps `value` for `unknown_fields`, met at step `step`.
    fn keep(&mut self, key: &'static str, value: Value, step: u8) {
        let rank = self.rank(step, 0);
        self.entries.push(Entry {
            key: Cow::Borrowed(key),
            value,
            rank,
        });
    }

    /// The unknown keys, met first, in body order.
    fn unknown(&mut self, unknown: impl IntoIterator<Item = (Str<'de>, Value)>) {
        for (n, (Str(key), value)) in unknown.into_iter().enumerate() {
            let rank = self.rank(step::UNKNOWN, n as u32);
            self.entries.push(Entry { key, value, rank });
        }
    }

    /// A `string` field: written when not empty.
    fn string(&mut self, tag: u32, key: &'static str, field: Field<Str<'_>>, step: u8) {
        match field {
            Some(Loose::Typed(Str(s))) if !s.is_empty() => bytes(self.out, tag, s.as_bytes()),
            Some(Loose::Raw(v)) => self.keep(key, v, step),
            _ => {}
        }
    }

    /// An `optional string` field: written when present.
    fn opt_string(&mut self, tag: u32, key: &'static str, field: Field<Str<'_>>, step: u8) {
        match field {
            Some(Loose::Typed(Str(s))) => bytes(self.out, tag, s.as_bytes()),
            Some(Loose::Raw(v)) => self.keep(key, v, step),
            None => {}
        }
    }

    /// A `bool` field, written when true; an `optional bool` (`always`) when present.
    fn boolean(&mut self, tag: u32, key: &'static str, field: Field<bool>, step: u8, always: bool) {
        match field {
            Some(Loose::Typed(b)) if b || always => varint(self.out, tag, i64::from(b)),
            Some(Loose::Raw(v)) => self.keep(key, v, step),
            _ => {}
        }
    }
}

/// `GetSinceResponse.results`.
const RESULTS: u32 = 1;

/// Writes one record as an item of `results`, taking every field out of `r`. Long: it
/// is the record's fields in wire order, one after another, which reads best as one list.
fn write_record<'de>(out: &mut Vec<u8>, r: &mut Record<'de>, s: &mut Scratch<'de>) {
    // Records of a full page are 128 bytes to 16 KiB long: two bytes of length.
    let record = open(out, RESULTS, 2);
    let sink = &mut s.sink;
    let mut x = Fields {
        out,
        entries: &mut s.outer,
        member: None,
    };
    x.unknown(r.unknown.drain(..));
    let date = match r.creation_date.take() {
        Some(Loose::Typed(ms)) => Some(ms),
        Some(Loose::Raw(v)) => {
            x.keep("creationDate", v, step::CREATION_DATE);
            None
        }
        None => None,
    };
    let root = Ptr::Root;
    match r.author.take() {
        Some(Loose::Typed(a)) => write_author(x.out, a, sink),
        Some(Loose::Raw(v)) => x.keep("author", v, step::AUTHOR),
        None => {}
    }
    x.string(
        2,
        "remoteAddress",
        r.remote_address.take(),
        step::REMOTE_ADDRESS,
    );
    if let Some(ms) = date.filter(|&ms| ms != 0) {
        varint(x.out, 3, ms);
    }
    x.string(4, "summary", r.summary.take(), step::SUMMARY);
    x.string(5, "description", r.description.take(), step::DESCRIPTION);
    x.string(6, "category", r.category.take(), step::CATEGORY);
    x.boolean(7, "sysAdmin", r.sys_admin.take(), step::SYS_ADMIN, false);
    x.boolean(
        8,
        "superAdmin",
        r.super_admin.take(),
        step::SUPER_ADMIN,
        true,
    );
    match r.affected_object.take() {
        Some(Loose::Typed(o)) => {
            let at = Ptr::Key(&root, "affectedObject");
            write_object(x.out, 9, o, at, (step::AFFECTED_OBJECT, 0), sink);
        }
        Some(Loose::Raw(v)) => x.keep("affectedObject", v, step::AFFECTED_OBJECT),
        None => {}
    }
    match r.changed_values.take() {
        Some(Loose::Typed(items)) if items.iter().all(|i| matches!(i, Loose::Typed(_))) => {
            let list = Ptr::Key(&root, "changedValues");
            for (n, item) in items.into_iter().enumerate() {
                if let Loose::Typed(c) = item {
                    let member = (step::CHANGED_VALUES, n as u32);
                    write_changed(x.out, c, Ptr::Index(&list, n), member, sink);
                }
            }
        }
        // One item of another shape: the array is kept whole, as JSON.
        Some(Loose::Typed(items)) => {
            let raw = items
                .into_iter()
                .map(|i| i.into_json(changed_json))
                .collect();
            x.keep("changedValues", Value::Array(raw), step::CHANGED_VALUES);
        }
        Some(Loose::Raw(v)) => x.keep("changedValues", v, step::CHANGED_VALUES),
        None => {}
    }
    match r.associated_objects.take() {
        Some(Loose::Typed(items)) if items.iter().all(|i| matches!(i, Loose::Typed(_))) => {
            let list = Ptr::Key(&root, "associatedObjects");
            for (n, item) in items.into_iter().enumerate() {
                if let Loose::Typed(o) = item {
                    let member = (step::ASSOCIATED_OBJECTS, n as u32);
                    write_object(x.out, 11, o, Ptr::Index(&list, n), member, sink);
                }
            }
        }
        Some(Loose::Typed(items)) => {
            let raw = items
                .into_iter()
                .map(|i| i.into_json(object_json))
                .collect();
            x.keep(
                "associatedObjects",
                Value::Array(raw),
                step::ASSOCIATED_OBJECTS,
            );
        }
        Some(Loose::Raw(v)) => x.keep("associatedObjects", v, step::ASSOCIATED_OBJECTS),
        None => {}
    }
    let Sink { paths, discard, .. } = sink;
    write_struct(out, 12, &mut s.outer, RECORD, root, paths, discard);
    if let Some(ms) = date {
        let time = open(out, 13, 1);
        let (seconds, nanos) = (ms.div_euclid(1000), ms.rem_euclid(1000) * 1_000_000);
        if seconds != 0 {
            varint(out, 1, seconds);
        }
        if nanos != 0 {
            varint(out, 2, nanos);
        }
        close(out, time);
    }
    write_paths(out, 14, paths);
    varint(out, 15, crate::pb::Dialect::Cloud as i64);
    close(out, record);
}

/// Writes the paths of the values carried as text as the repeated field `tag`, in the
/// reference's order, and empties them.
fn write_paths(out: &mut Vec<u8>, tag: u32, paths: &mut Vec<(Rank, String)>) {
    // Stable: a value's own pointers stay in the order they were found.
    paths.sort_by_key(|(rank, _)| *rank);
    for (_, p) in paths.drain(..) {
        bytes(out, tag, p.as_bytes());
    }
}

fn write_author<'de>(out: &mut Vec<u8>, a: Author<'de>, sink: &mut Sink<'de>) {
    let at = Ptr::Key(&Ptr::Root, "author");
    let author = open(out, 1, 1);
    let Sink {
        inner,
        paths,
        discard,
    } = sink;
    let mut x = Fields {
        out,
        entries: inner,
        member: Some((step::AUTHOR, 0)),
    };
    x.unknown(a.unknown);
    x.string(1, "type", a.kind, 1);
    x.string(2, "displayName", a.display_name, 2);
    // `operations` is dynamic by nature: any JSON, `null` included, is its typed form.
    if let Some(o) = a.operations {
        let v = o.into_json(|v| v.0);
        let field = open(x.out, 3, 1);
        let rank = x.rank(3, 0);
        value(
            x.out,
            &v,
            MEMBER + FIELD_VALUE,
            Ptr::Key(&at, "operations"),
            paths,
            rank,
        );
        close(x.out, field);
    }
    x.opt_string(4, "username", a.username, 4);
    x.opt_string(5, "userKey", a.user_key, 5);
    x.opt_string(6, "accountId", a.account_id, 6);
    x.opt_string(7, "accountType", a.account_type, 7);
    x.boolean(8, "externalCollaborator", a.external_collaborator, 8, true);
    x.boolean(
        9,
        "isExternalCollaborator",
        a.is_external_collaborator,
        9,
        true,
    );
    x.boolean(10, "isGuest", a.is_guest, 10, true);
    x.opt_string(11, "publicName", a.public_name, 11);
    write_struct(out, 12, inner, MEMBER, at, paths, discard);
    close(out, author);
}

fn write_object<'de>(
    out: &mut Vec<u8>,
    tag: u32,
    o: AffectedObject<'de>,
    at: Ptr<'_>,
    member: (u8, u32),
    sink: &mut Sink<'de>,
) {
    let object = open(out, tag, 1);
    let Sink {
        inner,
        paths,
        discard,
    } = sink;
    let mut x = Fields {
        out,
        entries: inner,
        member: Some(member),
    };
    x.unknown(o.unknown);
    x.string(1, "name", o.name, 1);
    x.string(2, "objectType", o.object_type, 2);
    write_struct(out, 3, inner, MEMBER, at, paths, discard);
    close(out, object);
}

fn write_changed<'de>(
    out: &mut Vec<u8>,
    c: ChangedValue<'de>,
    at: Ptr<'_>,
    member: (u8, u32),
    sink: &mut Sink<'de>,
) {
    let changed = open(out, 10, 1);
    let Sink {
        inner,
        paths,
        discard,
    } = sink;
    let mut x = Fields {
        out,
        entries: inner,
        member: Some(member),
    };
    x.unknown(c.unknown);
    x.string(1, "name", c.name, 1);
    x.string(2, "oldValue", c.old_value, 2);
    x.string(3, "newValue", c.new_value, 3);
    x.opt_string(4, "hiddenOldValue", c.hidden_old_value, 4);
    x.opt_string(5, "hiddenNewValue", c.hidden_new_value, 5);
    write_struct(out, 6, inner, MEMBER, at, paths, discard);
    close(out, changed);
}

/// Writes everything of the page but its records, after them (field order).
fn write_header<'de>(out: &mut Vec<u8>, h: PageHeader<'de>, s: &mut Scratch<'de>) {
    let mut x = Fields {
        out,
        entries: &mut s.outer,
        member: None,
    };
    x.unknown(h.unknown);
    let links = match h.links {
        Some(Loose::Typed(ValueOf(Value::Object(map)))) => Some(map),
        other => {
            if let Some(v) = other {
                x.keep("_links", v.into_json(|v| v.0), step::LINKS);
            }
            None
        }
    };
    for (key, tag, field, step) in [
        ("start", 2, h.start, step::START),
        ("limit", 3, h.limit, step::LIMIT),
        ("size", 4, h.size, step::SIZE),
    ] {
        match field {
            Some(Loose::Typed(n)) if n != 0 => varint(x.out, tag, i64::from(n)),
            Some(Loose::Raw(v)) => x.keep(key, v, step),
            _ => {}
        }
    }
    let Sink { paths, discard, .. } = &mut s.sink;
    let at = Ptr::Key(&Ptr::Root, "_links");
    for (k, v) in links.iter().flatten() {
        let rank = (step::LINKS, 0, 0, 0);
        map_entry(out, 5, k, v, PAGE + MAP_VALUE, at, paths, rank);
    }
    write_struct(out, 6, &mut s.outer, PAGE, Ptr::Root, paths, discard);
    write_paths(out, 7, paths);
}

impl<T> Loose<T> {
    /// The value as JSON, converting a typed value with `typed`.
    fn into_json(self, typed: impl FnOnce(T) -> Value) -> Value {
        match self {
            Loose::Typed(t) => typed(t),
            Loose::Raw(v) => v,
        }
    }
}

/// JSON as it prints back (`to_json`) after a trip through `google.protobuf.Value`:
/// numbers become doubles.
fn printed(v: Value) -> Value {
    match v {
        Value::Number(n) => number_to_json(n.as_f64().unwrap_or(f64::NAN)),
        Value::Array(a) => Value::Array(a.into_iter().map(printed).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, printed(v))).collect()),
        other => other,
    }
}

/// A typed item of a list kept whole as JSON (one of its items had another shape), as
/// the reference prints it: its typed keys (empty strings for those absent or of another
/// type), then its other keys over them, numbers through doubles.
struct ItemJson {
    map: Map<String, Value>,
    raw: Vec<(&'static str, Value)>,
}

impl ItemJson {
    fn new() -> Self {
        Self {
            map: Map::new(),
            raw: Vec::new(),
        }
    }

    fn string(&mut self, key: &'static str, field: Field<Str<'_>>, required: bool) {
        match field {
            Some(Loose::Typed(Str(s))) => {
                self.map
                    .insert(key.to_owned(), Value::String(s.into_owned()));
            }
            Some(Loose::Raw(v)) => {
                self.raw.push((key, v));
                if required {
                    self.map
                        .insert(key.to_owned(), Value::String(String::new()));
                }
            }
            None if required => {
                self.map
                    .insert(key.to_owned(), Value::String(String::new()));
            }
            None => {}
        }
    }

    fn finish(mut self, unknown: Vec<(Str<'_>, Value)>) -> Value {
        for (Str(k), v) in unknown {
            self.map.insert(k.into_owned(), printed(v));
        }
        for (k, v) in self.raw {
            self.map.insert(k.to_owned(), printed(v));
        }
        Value::Object(self.map)
    }
}

fn changed_json(c: ChangedValue<'_>) -> Value {
    let mut j = ItemJson::new();
    j.string("name", c.name, true);
    j.string("oldValue", c.old_value, true);
    j.string("newValue", c.new_value, true);
    j.string("hiddenOldValue", c.hidden_old_value, false);
    j.string("hiddenNewValue", c.hidden_new_value, false);
    j.finish(c.unknown)
}

fn object_json(o: AffectedObject<'_>) -> Value {
    let mut j = ItemJson::new();
    j.string("name", o.name, true);
    j.string("objectType", o.object_type, true);
    j.finish(o.unknown)
}
