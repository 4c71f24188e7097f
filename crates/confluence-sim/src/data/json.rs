//! A page's JSON written by hand: byte for byte what serde_json makes of the `Serialize`
//! derives in `data.rs` (compact, fields in declaration order, `None`s left out), which the
//! tests check, for a fraction of the CPU. Every string in a record is made of the constant
//! tables (some of them not ASCII), digits and punctuation, none of which JSON escapes
//! (serde_json escapes only quotes, backslashes and control characters), so they are
//! copied as they are; only the URLs of `_links` go through serde_json's escaping.

use serde::Serialize;
use serde_json::Value;

use super::{Author, ChangedValue, Object, Record};

/// Room for one record's JSON. The default log averages ~705 bytes, so a page's buffer is
/// seldom grown (each growth copies all of it); pages of the untouched rest cost nothing.
const RECORD_BYTES: usize = 1024;

/// Serialises one page; `base_url` is `http://host:port{context}`, `self_url` the
/// request's URL. `limit` `None` leaves out both `limit` and `size`. The same bytes as
/// `render_with_serde` (the tests check), for a fraction of the CPU, which in a benchmark
/// the simulator takes from the gateway it measures.
pub(crate) fn page(
    records: &[Record],
    start: u32,
    limit: Option<u32>,
    base_url: &str,
    context: &str,
    self_url: &str,
) -> serde_json::Result<Vec<u8>> {
    let links = base_url.len() + context.len() + self_url.len();
    let mut out = Json(Vec::with_capacity(
        records.len() * RECORD_BYTES + links + 128,
    ));
    out.raw("{\"results\":");
    out.array(records, Json::record)?;
    out.raw(",\"start\":");
    out.number(start)?;
    if let Some(limit) = limit {
        out.raw(",\"limit\":");
        out.number(limit)?;
        out.raw(",\"size\":");
        out.number(records.len())?;
    }
    out.raw(",\"_links\":{\"base\":");
    out.escaped(base_url)?;
    out.raw(",\"context\":");
    out.escaped(context)?;
    out.raw(",\"self\":");
    out.escaped(self_url)?;
    out.raw("}}");
    Ok(out.0)
}

struct Json(Vec<u8>);

impl Json {
    /// Punctuation and keys, as they are.
    fn raw(&mut self, text: &str) {
        self.0.extend_from_slice(text.as_bytes());
    }

    /// A string JSON does not escape, quoted.
    fn string(&mut self, text: &str) {
        debug_assert!(
            !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'),
            "{text:?} needs escaping"
        );
        self.0.push(b'"');
        self.raw(text);
        self.0.push(b'"');
    }

    /// Any string, escaped as serde_json escapes it.
    fn escaped(&mut self, text: &str) -> serde_json::Result<()> {
        serde_json::to_writer(&mut self.0, text)
    }

    fn number(&mut self, number: impl Serialize) -> serde_json::Result<()> {
        serde_json::to_writer(&mut self.0, &number)
    }

    fn bool(&mut self, value: bool) {
        self.raw(if value { "true" } else { "false" });
    }

    fn array<T>(
        &mut self,
        items: &[T],
        mut item: impl FnMut(&mut Json, &T) -> serde_json::Result<()>,
    ) -> serde_json::Result<()> {
        self.raw("[");
        for (i, each) in items.iter().enumerate() {
            if i > 0 {
                self.raw(",");
            }
            item(self, each)?;
        }
        self.raw("]");
        Ok(())
    }

    /// `key` (`,"name":`) and a string, unless `None`; likewise the two below.
    fn optional_string(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.raw(key);
            self.string(value);
        }
    }

    fn optional_bool(&mut self, key: &str, value: Option<bool>) {
        if let Some(value) = value {
            self.raw(key);
            self.bool(value);
        }
    }

    fn optional_value(&mut self, key: &str, value: Option<&Value>) -> serde_json::Result<()> {
        if let Some(value) = value {
            self.raw(key);
            self.value(value)?;
        }
        Ok(())
    }

    /// As serde_json writes a `Value`, its strings and keys unescaped like a record's.
    fn value(&mut self, value: &Value) -> serde_json::Result<()> {
        match value {
            Value::Null => self.raw("null"),
            Value::Bool(value) => self.bool(*value),
            Value::Number(number) => self.number(number)?,
            Value::String(text) => self.string(text),
            Value::Array(items) => self.array(items, Json::value)?,
            Value::Object(map) => {
                self.raw("{");
                for (i, (key, item)) in map.iter().enumerate() {
                    if i > 0 {
                        self.raw(",");
                    }
                    self.string(key);
                    self.raw(":");
                    self.value(item)?;
                }
                self.raw("}");
            }
        }
        Ok(())
    }

    fn record(&mut self, record: &Record) -> serde_json::Result<()> {
        self.raw("{\"author\":");
        self.author(&record.author)?;
        self.raw(",\"remoteAddress\":");
        self.string(&record.remote_address);
        self.raw(",\"creationDate\":");
        self.number(record.creation_date)?;
        self.raw(",\"summary\":");
        self.string(&record.summary);
        self.raw(",\"description\":");
        self.string(&record.description);
        self.raw(",\"category\":");
        self.string(record.category);
        self.raw(",\"sysAdmin\":");
        self.bool(record.sys_admin);
        self.optional_bool(",\"superAdmin\":", record.super_admin);
        self.raw(",\"affectedObject\":");
        self.object(&record.affected_object)?;
        self.raw(",\"changedValues\":");
        self.array(&record.changed_values, Json::changed_value)?;
        self.raw(",\"associatedObjects\":");
        self.array(&record.associated_objects, Json::object)?;
        self.optional_string(",\"riskLevel\":", record.risk_level);
        self.optional_value(",\"ext\":", record.ext)?;
        self.optional_value(",\"nested\":", record.nested.as_ref())?;
        self.raw("}");
        Ok(())
    }

    fn author(&mut self, author: &Author) -> serde_json::Result<()> {
        self.raw("{\"type\":");
        self.string(author.kind);
        self.raw(",\"displayName\":");
        self.string(author.display_name);
        self.raw(",\"operations\":");
        self.value(&author.operations)?;
        self.optional_string(",\"username\":", author.username.as_deref());
        self.optional_value(",\"userKey\":", author.user_key.as_ref())?;
        self.optional_value(",\"accountId\":", author.account_id.as_ref())?;
        self.optional_string(",\"accountType\":", author.account_type);
        self.optional_bool(",\"externalCollaborator\":", author.external_collaborator);
        let is_external = author.is_external_collaborator;
        self.optional_bool(",\"isExternalCollaborator\":", is_external);
        self.optional_bool(",\"isGuest\":", author.is_guest);
        self.optional_string(",\"publicName\":", author.public_name);
        self.optional_string(",\"timeZone\":", author.time_zone);
        self.raw("}");
        Ok(())
    }

    fn object(&mut self, object: &Object) -> serde_json::Result<()> {
        self.raw("{\"name\":");
        self.string(object.name);
        self.raw(",\"objectType\":");
        self.string(object.object_type);
        self.raw("}");
        Ok(())
    }

    fn changed_value(&mut self, value: &ChangedValue) -> serde_json::Result<()> {
        self.raw("{\"name\":");
        self.string(value.name);
        self.raw(",\"oldValue\":");
        self.string(value.old_value);
        self.raw(",\"newValue\":");
        self.string(value.new_value);
        self.optional_string(",\"hiddenOldValue\":", value.hidden_old_value);
        self.optional_string(",\"hiddenNewValue\":", value.hidden_new_value);
        self.raw("}");
        Ok(())
    }
}
