//! Confluence Data Center's audit events (`GET /rest/auditing/1.0/events`) as the
//! gateway's `GetSinceResponse`, and each record back as the entity it came from. The
//! mapping is docs/data-center.md's table. Nothing is lost: a DC value with no typed home,
//! or one a typed field would blur (proto3 cannot tell `""` from absent), is kept verbatim
//! in `unknown_fields` under its DC name, and values nested too deep for protobuf go as
//! JSON text (`json_text_paths`), as the Cloud converter does.
//!
//! A DC page is parsed into `serde_json::Value`s and built as `prost` messages: DC pages
//! are rarer and smaller than Cloud's, so this skips the one-pass writer `direct` uses.

use std::fmt::Write as _;

use bytes::Bytes;
use prost::Message;
use prost_types::{Struct, Timestamp};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    deep::Deep,
    direct::{MAX_DEPTH, MEMBER, PAGE, Ptr, RECORD, STRUCT_VALUE},
    to_json::value_to_json,
};
use crate::{
    audit::calendar::{civil_from_days, days_from_civil, days_in_month},
    error::GatewayError,
    pb,
};

/// A 200 body of `/rest/auditing/1.0/events` as an encoded `GetSinceResponse`: `start` and
/// `limit` are the `offset` and `limit` asked for (DC echoes neither).
pub(crate) fn encode_data_center_page(
    body: &[u8],
    offset: i32,
    limit: i32,
) -> Result<Bytes, GatewayError> {
    let page = page_to_proto(body, offset, limit).map_err(|e| {
        GatewayError::MalformedBody(format!(
            "Confluence's answer is not a page of Data Center audit events: {e}"
        ))
    })?;
    Ok(Bytes::from(page.encode_to_vec()))
}

/// A DC page: its entities, and every other top-level key (`pagingInfo`, ...).
#[derive(Deserialize)]
struct Events {
    entities: Vec<Map<String, Value>>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// The `GetSinceResponse` of a DC page; the error is serde's for a body of another shape.
fn page_to_proto(
    body: &[u8],
    offset: i32,
    limit: i32,
) -> Result<pb::GetSinceResponse, serde_json::Error> {
    let Events { entities, rest } = serde_json::from_slice(body)?;
    let count = i32::try_from(entities.len()).unwrap_or(i32::MAX);
    let size = rest
        .get("pagingInfo")
        .and_then(|p| p.get("size"))
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(count);
    let mut deep = Deep::within(MAX_DEPTH);
    let mut x = Extra::new(PAGE, Ptr::Root, &mut deep);
    x.keep_all(rest);
    let unknown_fields = x.finish();
    Ok(pb::GetSinceResponse {
        results: entities.into_iter().map(record_to_proto).collect(),
        start: offset,
        limit,
        size,
        links: Default::default(),
        unknown_fields,
        json_text_paths: deep.paths,
    })
}

/// One DC entity as an `AuditRecord`; the pointers of values it carries as text are its
/// own, into the entity's JSON.
fn record_to_proto(mut entity: Map<String, Value>) -> pb::AuditRecord {
    let mut deep = Deep::within(MAX_DEPTH);
    let mut x = Extra::new(RECORD, Ptr::Root, &mut deep);

    let mut creation_time = None;
    if let Some(v) = entity.remove("timestamp") {
        match v.as_str().and_then(parse_instant) {
            Some(t) => {
                // The typed field prints back as ISO_INSTANT; other spellings of the
                // same instant (an offset, trailing zeros) are kept as they came.
                if v.as_str() != Some(format_instant(&t).as_str()) {
                    x.keep("timestamp".to_owned(), v);
                }
                creation_time = Some(t);
            }
            None => x.keep("timestamp".to_owned(), v),
        }
    }

    let author = match entity.remove("author") {
        None => None,
        Some(Value::Object(a)) => Some(author_to_proto(a, Ptr::Key(&Ptr::Root, "author"), x.deep)),
        Some(other) => {
            x.keep("author".to_owned(), other);
            None
        }
    };

    let (category, summary) = match entity.remove("type") {
        None => (String::new(), String::new()),
        Some(Value::Object(mut t)) => {
            let category = take_text(&mut t, "category");
            let action = take_text(&mut t, "action");
            // An object that left nothing typed stays, even empty, so that it is not
            // read back as an absent `type`.
            if !t.is_empty() || (category.is_empty() && action.is_empty()) {
                x.keep("type".to_owned(), Value::Object(t));
            }
            (category, action)
        }
        Some(other) => {
            x.keep("type".to_owned(), other);
            (String::new(), String::new())
        }
    };

    let mut objects = Vec::new();
    if let Some(v) = entity.remove("affectedObjects") {
        match all_objects(v) {
            Ok(items) => {
                let list = Ptr::Key(&Ptr::Root, "affectedObjects");
                for (i, o) in items.into_iter().enumerate() {
                    objects.push(object_to_proto(o, Ptr::Index(&list, i), x.deep));
                }
            }
            Err(v) => x.keep("affectedObjects".to_owned(), v),
        }
    }
    let mut objects = objects.into_iter();
    let affected_object = objects.next();
    let associated_objects = objects.collect();

    let mut changed_values = Vec::new();
    if let Some(v) = entity.remove("changedValues") {
        match all_objects(v) {
            Ok(items) => {
                let list = Ptr::Key(&Ptr::Root, "changedValues");
                for (i, c) in items.into_iter().enumerate() {
                    changed_values.push(changed_to_proto(c, Ptr::Index(&list, i), x.deep));
                }
            }
            Err(v) => x.keep("changedValues".to_owned(), v),
        }
    }

    let remote_address = x.text("source", entity.remove("source"));
    x.keep_all(entity);
    let unknown_fields = x.finish();

    pb::AuditRecord {
        author,
        remote_address,
        creation_date: creation_time.as_ref().map_or(0, millis),
        summary,
        description: String::new(),
        category,
        sys_admin: false,
        super_admin: None,
        affected_object,
        changed_values,
        associated_objects,
        unknown_fields,
        creation_time,
        json_text_paths: deep.paths,
        dialect: pb::Dialect::DataCenter as i32,
    }
}

/// The items of a non-empty array of objects; anything else (an empty array included,
/// which must not read back as absent) is given back to be kept whole.
fn all_objects(v: Value) -> Result<Vec<Map<String, Value>>, Value> {
    match v {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => Ok(items
            .into_iter()
            .filter_map(|i| match i {
                Value::Object(o) => Some(o),
                _ => None,
            })
            .collect()),
        other => Err(other),
    }
}

/// `key` of `map`, taken out when it is a non-empty string (what a proto3 string holds
/// without loss); otherwise left where it is.
fn take_text(map: &mut Map<String, Value>, key: &str) -> String {
    match map.get(key) {
        Some(Value::String(s)) if !s.is_empty() => match map.remove(key) {
            Some(Value::String(s)) => s,
            _ => String::new(),
        },
        _ => String::new(),
    }
}

fn author_to_proto(mut a: Map<String, Value>, at: Ptr<'_>, deep: &mut Deep) -> pb::AuditAuthor {
    let mut x = Extra::new(MEMBER, at, deep);
    let display_name = x.text("name", a.remove("name"));
    let kind = x.text("type", a.remove("type"));
    let user_key = x.opt_text("id", a.remove("id"));
    x.keep_all(a);
    pb::AuditAuthor {
        r#type: kind,
        display_name,
        user_key,
        unknown_fields: x.finish(),
        ..Default::default()
    }
}

fn object_to_proto(mut o: Map<String, Value>, at: Ptr<'_>, deep: &mut Deep) -> pb::AffectedObject {
    let mut x = Extra::new(MEMBER, at, deep);
    let name = x.text("name", o.remove("name"));
    let object_type = x.text("type", o.remove("type"));
    x.keep_all(o);
    pb::AffectedObject {
        name,
        object_type,
        unknown_fields: x.finish(),
    }
}

fn changed_to_proto(mut c: Map<String, Value>, at: Ptr<'_>, deep: &mut Deep) -> pb::ChangedValue {
    let mut x = Extra::new(MEMBER, at, deep);
    let name = x.text("key", c.remove("key"));
    let old_value = x.text("from", c.remove("from"));
    let new_value = x.text("to", c.remove("to"));
    x.keep_all(c);
    pb::ChangedValue {
        name,
        old_value,
        new_value,
        hidden_old_value: None,
        hidden_new_value: None,
        unknown_fields: x.finish(),
    }
}

/// The `unknown_fields` of one message (at message level `level`, found at `at`): the
/// DC values its typed fields do not hold.
struct Extra<'d, 'p> {
    fields: Struct,
    level: usize,
    at: Ptr<'p>,
    deep: &'d mut Deep,
}

impl<'d, 'p> Extra<'d, 'p> {
    fn new(level: usize, at: Ptr<'p>, deep: &'d mut Deep) -> Self {
        Self {
            fields: Struct::default(),
            level,
            at,
            deep,
        }
    }

    /// Keeps `v` verbatim under `key`.
    fn keep(&mut self, key: String, v: Value) {
        let v = self
            .deep
            .value(v, self.level + STRUCT_VALUE, Ptr::Key(&self.at, &key));
        self.fields.fields.insert(key, v);
    }

    fn keep_all(&mut self, map: Map<String, Value>) {
        for (k, v) in map {
            self.keep(k, v);
        }
    }

    /// A proto3 string field: a non-empty string; anything else present (`""`, which
    /// the field could not tell from absent, `null`, another type) is kept.
    fn text(&mut self, key: &str, v: Option<Value>) -> String {
        match v {
            None => String::new(),
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(other) => {
                self.keep(key.to_owned(), other);
                String::new()
            }
        }
    }

    /// An `optional string` field: any string; anything else present is kept.
    fn opt_text(&mut self, key: &str, v: Option<Value>) -> Option<String> {
        match v? {
            Value::String(s) => Some(s),
            other => {
                self.keep(key.to_owned(), other);
                None
            }
        }
    }

    fn finish(self) -> Option<Struct> {
        (!self.fields.fields.is_empty()).then_some(self.fields)
    }
}

/// The DC entity a Data Center record (`dialect` DATA_CENTER) was converted from: typed
/// fields under their DC names, `unknown_fields` over them (the leftover of `type` merged
/// into it), then the values carried as JSON text parsed back.
// The CLI prints DC records with it once the Data Center upstream is wired in.
pub(crate) fn data_center_json(record: &pb::AuditRecord) -> Value {
    let mut out = Map::new();
    if let Some(t) = &record.creation_time {
        out.insert("timestamp".into(), format_instant(t).into());
    }
    if let Some(a) = &record.author {
        let mut author = Map::new();
        put_text(&mut author, "name", &a.display_name);
        put_text(&mut author, "type", &a.r#type);
        if let Some(id) = &a.user_key {
            author.insert("id".into(), id.as_str().into());
        }
        out.insert("author".into(), with_unknown(author, &a.unknown_fields));
    }
    let mut kind = Map::new();
    put_text(&mut kind, "category", &record.category);
    put_text(&mut kind, "action", &record.summary);
    let objects: Vec<Value> = record
        .affected_object
        .iter()
        .chain(&record.associated_objects)
        .map(|o| {
            let mut object = Map::new();
            put_text(&mut object, "name", &o.name);
            put_text(&mut object, "type", &o.object_type);
            with_unknown(object, &o.unknown_fields)
        })
        .collect();
    if !objects.is_empty() {
        out.insert("affectedObjects".into(), objects.into());
    }
    let changed: Vec<Value> = record
        .changed_values
        .iter()
        .map(|c| {
            let mut value = Map::new();
            put_text(&mut value, "key", &c.name);
            put_text(&mut value, "from", &c.old_value);
            put_text(&mut value, "to", &c.new_value);
            with_unknown(value, &c.unknown_fields)
        })
        .collect();
    if !changed.is_empty() {
        out.insert("changedValues".into(), changed.into());
    }
    put_text(&mut out, "source", &record.remote_address);

    let mut kind = Some(kind);
    for (k, v) in record.unknown_fields.iter().flat_map(|s| &s.fields) {
        let v = match (k.as_str(), value_to_json(v)) {
            ("type", Value::Object(leftover)) => {
                let mut merged = kind.take().unwrap_or_default();
                merged.extend(leftover);
                Value::Object(merged)
            }
            ("type", other) => {
                kind = None;
                other
            }
            (_, other) => other,
        };
        out.insert(k.clone(), v);
    }
    if let Some(kind) = kind.filter(|k| !k.is_empty()) {
        out.insert("type".into(), kind.into());
    }
    restore(Value::Object(out), &record.json_text_paths)
}

/// `map` with `unknown` over it, as JSON.
fn with_unknown(mut map: Map<String, Value>, unknown: &Option<Struct>) -> Value {
    for (k, v) in unknown.iter().flat_map(|s| &s.fields) {
        map.insert(k.clone(), value_to_json(v));
    }
    Value::Object(map)
}

/// Puts `text` under `key` unless it is empty (which the typed field holds for absent).
fn put_text(map: &mut Map<String, Value>, key: &str, text: &str) {
    if !text.is_empty() {
        map.insert(key.to_owned(), text.into());
    }
}

/// `json` with the value at each of `paths` (JSON Pointers to strings holding JSON text)
/// parsed back into place; a path that leads to no such string is passed over.
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

/// The instants a `Timestamp` may hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// `text` as an instant, if it is an ISO 8601 date-time the way DC writes one:
/// `YYYY-MM-DDTHH:MM:SS`, a fraction of 1 to 9 digits or none, then `Z` or an offset
/// `±HH:MM`; within the range of a `Timestamp`.
fn parse_instant(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        b.get(from..to)?.iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let punct = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if punct.iter().any(|&(i, c)| b.get(i) != Some(&c)) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = b.get(19..)?;
    let mut nanos = 0;
    if let [b'.', fraction @ ..] = rest {
        let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        nanos = num(20, 20 + digits)? * 10i64.pow(9 - digits as u32);
        rest = &fraction[digits..];
    }
    let offset = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(b.len() - 5, b.len() - 3)?, num(b.len() - 2, b.len())?);
            if h > 18 || m > 59 {
                return None;
            }
            let offset = h * 3600 + m * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    (MIN_SECONDS..=MAX_SECONDS)
        .contains(&seconds)
        .then_some(Timestamp {
            seconds,
            nanos: i32::try_from(nanos).ok()?,
        })
}

/// `t` as Java's `DateTimeFormatter.ISO_INSTANT` prints it: UTC with `Z`, the fraction
/// left out when zero, else in 3, 6 or 9 digits.
fn format_instant(t: &Timestamp) -> String {
    let (year, month, day) = civil_from_days(t.seconds.div_euclid(86_400));
    let s = t.seconds.rem_euclid(86_400);
    let mut out = String::with_capacity(30);
    // ISO_INSTANT signs years past 9999; they lie outside a Timestamp's range anyway.
    let _ = match year {
        0..=9999 => write!(out, "{year:04}"),
        10_000.. => write!(out, "+{year}"),
        _ => write!(out, "-{:04}", -year),
    };
    let _ = write!(
        out,
        "-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    );
    let nanos = t.nanos.clamp(0, 999_999_999);
    let _ = if nanos == 0 {
        Ok(())
    } else if nanos % 1_000_000 == 0 {
        write!(out, ".{:03}", nanos / 1_000_000)
    } else if nanos % 1000 == 0 {
        write!(out, ".{:06}", nanos / 1000)
    } else {
        write!(out, ".{nanos:09}")
    };
    out.push('Z');
    out
}

/// `t` in epoch milliseconds, rounded down.
fn millis(t: &Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos.div_euclid(1_000_000)))
}

#[cfg(test)]
mod tests;
