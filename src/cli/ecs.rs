//! `--format ecs`: each record as one Elastic Common Schema 8.11 document, mapped as
//! Elastic's own Confluence integration maps the audit log (docs/ecs.md has the table).
//! Everything ECS has no field for goes under `confluence.audit`, so no field of the
//! record is lost.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value, json};

use super::output::Iso;
use audit_gateway::pb::{self, convert::ToJson};

/// The ECS version the documents follow (the one Elastic's integration sets).
pub(crate) const ECS_VERSION: &str = "8.11.0";

/// ECS categorization of an action: `event.category`, `event.type`, `event.outcome`.
struct Category {
    category: &'static [&'static str],
    kind: &'static [&'static str],
    outcome: Option<&'static str>,
}

/// Shorthand for the rows of [`CATEGORIES`].
const fn cat(
    category: &'static [&'static str],
    kind: &'static [&'static str],
    outcome: Option<&'static str>,
) -> Category {
    Category {
        category,
        kind,
        outcome,
    }
}

/// Actions with an ECS categorization, by Data Center `actionI18nKey` and by Cloud
/// summary text (Elastic's table, with the removals and pages it lacks); docs/ecs.md
/// lists it.
const CATEGORIES: &[(&[&str], Category)] = &[
    (
        &[
            "audit.logging.summary.login.success",
            "User login successful",
        ],
        cat(&["authentication"], &["start"], Some("success")),
    ),
    (
        &["audit.logging.summary.login.failed", "User login failed"],
        cat(&["authentication"], &["start"], Some("failure")),
    ),
    (
        &["audit.logging.summary.user.logout", "User logged out"],
        cat(&["authentication"], &["end"], None),
    ),
    (
        &["audit.logging.summary.sudo.auth.successful"],
        cat(&["authentication"], &["start"], Some("success")),
    ),
    (
        &["audit.logging.summary.sudo.logout"],
        cat(&["authentication"], &["end"], None),
    ),
    (
        &["audit.logging.summary.user.created", "User created"],
        cat(&["iam"], &["user", "creation"], None),
    ),
    (
        &["audit.logging.summary.user.deleted", "User deleted"],
        cat(&["iam"], &["user", "deletion"], None),
    ),
    (
        &[
            "audit.logging.summary.user.renamed",
            "User renamed",
            "audit.logging.summary.user.updated",
            "User details updated",
            "audit.logging.summary.user.password.changed",
        ],
        cat(&["iam"], &["user", "change"], None),
    ),
    (
        &[
            "audit.logging.summary.group.membership.added",
            "User added to group",
            "audit.logging.summary.group.membership.removed",
            "User removed from group",
        ],
        cat(&["iam"], &["group", "change"], None),
    ),
    (
        &["audit.logging.summary.group.created", "Group created"],
        cat(&["iam"], &["group", "creation"], None),
    ),
    (
        &["audit.logging.summary.group.deleted", "Group deleted"],
        cat(&["iam"], &["group", "deletion"], None),
    ),
    (
        &[
            "audit.logging.summary.global.permission.added",
            "Global permission added",
            "audit.logging.summary.space.permission.added",
            "Space permission added",
        ],
        cat(&["iam", "configuration"], &["creation"], None),
    ),
    (
        &[
            "audit.logging.summary.global.permission.removed",
            "Global permission removed",
            "audit.logging.summary.space.permission.removed",
            "Space permission removed",
        ],
        cat(&["iam", "configuration"], &["deletion"], None),
    ),
    (
        &[
            "personal.access.tokens.audit.log.summary.token.created",
            "Token created",
        ],
        cat(&["iam"], &["admin", "creation"], None),
    ),
    (
        &[
            "personal.access.tokens.audit.log.summary.token.deleted",
            "Token deleted",
        ],
        cat(&["iam"], &["admin", "deletion"], None),
    ),
    (
        &[
            "audit.logging.summary.global.settings.edited",
            "audit.logging.summary.global.settings.changed",
            "Global settings changed",
            "atlassian.audit.event.action.audit.config.updated",
            "Audit Log configuration updated",
            "audit.logging.summary.space.config.updated",
        ],
        cat(&["configuration"], &["change"], None),
    ),
    (
        &[
            "audit.logging.summary.space.created",
            "Space created",
            "audit.logging.summary.page.created",
            "Page created",
        ],
        cat(&["configuration"], &["creation"], None),
    ),
    (
        &[
            "audit.logging.summary.space.removed",
            "Space deleted",
            "audit.logging.summary.page.deleted",
            "Page deleted",
        ],
        cat(&["configuration"], &["deletion"], None),
    ),
];

/// The categorization of `action`, if the table has it.
fn categorize(action: &str) -> Option<&'static Category> {
    CATEGORIES
        .iter()
        .find(|(keys, _)| keys.contains(&action))
        .map(|(_, c)| c)
}

/// `record` as one ECS document; with `original`, `event.original` holds the record's
/// Confluence JSON as text.
pub(crate) fn document(record: &pb::AuditRecord, original: bool) -> Value {
    let json = record.to_json();
    let data_center = record.dialect == pb::Dialect::DataCenter as i32;
    // The record's Confluence JSON is the source: typed fields and unknown ones merged,
    // deep values restored. Each key is taken out as it is mapped, and whatever is left
    // goes under `confluence.audit`.
    let mut rest = match &json {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let mut doc = Map::new();
    let mut audit = Map::new();
    audit.insert(
        "dialect".to_owned(),
        // A record without a dialect comes from a gateway older than the field, and those
        // spoke only Cloud.
        Value::from(if data_center { "data_center" } else { "cloud" }),
    );

    doc.insert(
        "@timestamp".to_owned(),
        Value::from(Iso(record.creation_date).to_string()),
    );
    // A `creationDate` that is not the typed number (an unknown value over it) is kept,
    // and so is a Data Center `timestamp` spelled otherwise than `@timestamp`.
    if let Some(date) = rest.remove("creationDate")
        && date.as_i64() != Some(record.creation_date)
    {
        audit.insert("creation_date".to_owned(), date);
    }
    if data_center
        && let Some(stamp) = rest.remove("timestamp")
        && stamp.as_str() != doc["@timestamp"].as_str()
    {
        audit.insert("timestamp".to_owned(), stamp);
    }

    let mut event = Map::new();
    event.insert("kind".to_owned(), Value::from("event"));
    event.insert("module".to_owned(), Value::from("confluence"));
    event.insert("dataset".to_owned(), Value::from("confluence.audit"));
    // Data Center's category is its `type.category`, kept in `type` too, as Cloud's is.
    if data_center && let Some(category) = rest.get("type").and_then(|t| t.get("category")) {
        audit.insert("category".to_owned(), category.clone());
    }
    // Data Center's summary is its `type.action`, kept in `type` too.
    let summary = match data_center {
        true => rest.get("type").and_then(|t| t.get("action")).cloned(),
        false => rest.remove("summary"),
    };
    let action_key = data_center
        .then(|| rest.get("type")?.get("actionI18nKey")?.as_str())
        .flatten()
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let action = match (action_key, &summary) {
        (Some(key), summary) => {
            if let Some(s) = summary {
                audit.insert("summary".to_owned(), s.clone());
            }
            Some(key)
        }
        (None, Some(Value::String(s))) if !s.is_empty() => {
            // Data Center keeps its summary whatever the action; Cloud's is the action.
            if data_center {
                audit.insert("summary".to_owned(), Value::from(s.as_str()));
            }
            Some(s.clone())
        }
        (None, summary) => {
            if let Some(s) = summary {
                audit.insert("summary".to_owned(), s.clone());
            }
            None
        }
    };
    match action.as_deref().and_then(categorize) {
        Some(c) => {
            event.insert("category".to_owned(), json!(c.category));
            event.insert("type".to_owned(), json!(c.kind));
            if let Some(outcome) = c.outcome {
                event.insert("outcome".to_owned(), Value::from(outcome));
            }
        }
        None => {
            event.insert("type".to_owned(), json!(["info"]));
        }
    }
    if let Some(action) = action {
        event.insert("action".to_owned(), Value::from(action));
    }
    if original {
        event.insert("original".to_owned(), Value::from(json.to_string()));
    }

    let mut related_users: Vec<String> = Vec::new();
    let mut related_ips: Vec<String> = Vec::new();
    let mut related_hosts: Vec<String> = Vec::new();

    match rest.remove("author") {
        Some(Value::Object(mut author)) => {
            let mut user = Map::new();
            // Data Center's author has `id` and `name` (its display name).
            let id_key = ["accountId", "userKey", "id"]
                .into_iter()
                .find(|k| nonempty(author.get(*k)).is_some());
            if let Some(id) = id_key.and_then(|k| take_text(&mut author, k)) {
                related_users.push(id.clone());
                user.insert("id".to_owned(), Value::from(id));
            }
            if let Some(name) = take_text(&mut author, "username")
                .or_else(|| nonempty(author.get("uri")).and_then(username_in_uri))
            {
                related_users.push(name.clone());
                user.insert("name".to_owned(), Value::from(name));
            }
            let display = if data_center { "name" } else { "displayName" };
            if let Some(full_name) = take_text(&mut author, display) {
                user.insert("full_name".to_owned(), Value::from(full_name));
            }
            if !user.is_empty() {
                doc.insert("user".to_owned(), Value::Object(user));
            }
            if !author.is_empty() {
                let leftovers = author.into_iter().map(|(k, v)| (snake(&k), v)).collect();
                audit.insert("author".to_owned(), Value::Object(leftovers));
            }
        }
        Some(other) => {
            audit.insert("author".to_owned(), other);
        }
        None => {}
    }

    let address_key = if data_center {
        "source"
    } else {
        "remoteAddress"
    };
    if let Some(address) = take_text(&mut rest, address_key) {
        let mut source = Map::new();
        let ip = address
            .parse::<IpAddr>()
            .ok()
            .or_else(|| Some(address.parse::<SocketAddr>().ok()?.ip()));
        if let Some(ip) = ip {
            related_ips.push(ip.to_string());
            source.insert("ip".to_owned(), Value::from(ip.to_string()));
            if let Ok(s) = address.parse::<SocketAddr>() {
                source.insert("port".to_owned(), Value::from(s.port()));
            }
        }
        source.insert("address".to_owned(), Value::from(address));
        doc.insert("source".to_owned(), Value::Object(source));
    }

    if data_center && let Some(system) = take_text(&mut rest, "system") {
        if let Some(host) = url_host(&system) {
            related_hosts.push(host.to_owned());
        }
        doc.insert("service".to_owned(), json!({ "address": system }));
    }

    let mut related = Map::new();
    for (field, mut values) in [
        ("user", related_users),
        ("ip", related_ips),
        ("hosts", related_hosts),
    ] {
        values.dedup();
        if !values.is_empty() {
            related.insert(field.to_owned(), json!(values));
        }
    }
    if !related.is_empty() {
        doc.insert("related".to_owned(), Value::Object(related));
    }

    // A Data Center record's converter fills these two in; they say nothing.
    if data_center {
        if rest.get("description") == Some(&Value::from("")) {
            rest.remove("description");
        }
        if rest.get("sysAdmin") == Some(&Value::from(false)) {
            rest.remove("sysAdmin");
        }
    }
    for (key, value) in rest {
        let name = snake(&key);
        if audit.contains_key(&name) {
            // Two keys with one snake_case name (or one of ours): the later one keeps its
            // own name, in a map of its own.
            let extra = audit
                .entry("unknown_fields")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = extra {
                m.insert(key, value);
            }
        } else {
            audit.insert(name, value);
        }
    }

    doc.insert("event".to_owned(), Value::Object(event));
    doc.insert("ecs".to_owned(), json!({ "version": ECS_VERSION }));
    doc.insert("confluence".to_owned(), json!({ "audit": audit }));
    Value::Object(doc)
}

/// The text of `v` when it is a non-empty string.
fn nonempty(v: Option<&Value>) -> Option<&str> {
    v?.as_str().filter(|s| !s.is_empty())
}

/// Takes `key` out of `m` when it holds non-empty text; anything else stays for
/// `confluence.audit`.
fn take_text(m: &mut Map<String, Value>, key: &str) -> Option<String> {
    let text = nonempty(m.get(key))?.to_owned();
    m.remove(key);
    Some(text)
}

/// The `username` query parameter of a Data Center user URI
/// (`.../viewuser.action?username=admin`), percent-decoded.
fn username_in_uri(uri: &str) -> Option<String> {
    let query = uri.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("username="))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

/// The host of a URL (`http://confluence.internal:8090/x` gives `confluence.internal`).
fn url_host(url: &str) -> Option<&str> {
    let after = url.split_once("://")?.1;
    let authority = after.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// `camelCase` as `snake_case` (`extraAttributes` gives `extra_attributes`), the style of
/// Elastic's `confluence.audit` fields.
fn snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::{Struct, Value as PbValue, value::Kind};

    use super::*;

    /// The records of Atlassian's sample body, through the gateway's own converter.
    fn sample_records() -> Vec<pb::AuditRecord> {
        let body = include_bytes!("../../tests/fixtures/atlassian-audit-since-sample.json");
        let encoded = audit_gateway::pb::convert::encode_page(body).expect("the sample converts");
        pb::GetSinceResponse::decode(encoded)
            .expect("decodes")
            .results
    }

    /// JSON as a `google.protobuf.Value`.
    fn pb_value(v: &Value) -> PbValue {
        let kind = match v {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().expect("a number")),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.iter().map(pb_value).collect(),
            }),
            Value::Object(o) => Kind::StructValue(pb_struct(o)),
        };
        PbValue { kind: Some(kind) }
    }

    fn pb_struct(o: &Map<String, Value>) -> Struct {
        Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect(),
        }
    }

    fn fields(v: Value) -> Option<Struct> {
        match v {
            Value::Object(o) => Some(pb_struct(&o)),
            _ => None,
        }
    }

    /// A Cloud record with every typed field and unknown keys at each level.
    fn cloud_record() -> pb::AuditRecord {
        pb::AuditRecord {
            author: Some(pb::AuditAuthor {
                r#type: "user".to_owned(),
                display_name: "Ada Lovelace".to_owned(),
                operations: Some(pb_value(&json!([{ "operation": "read" }]))),
                username: None,
                user_key: Some("ff8080817b0a4d9a017b0a5a1e5a0000".to_owned()),
                account_id: Some("5b10ac8d82e05b22cc7d4ef5".to_owned()),
                account_type: Some("atlassian".to_owned()),
                external_collaborator: Some(false),
                is_external_collaborator: Some(false),
                is_guest: Some(true),
                public_name: Some("ada".to_owned()),
                unknown_fields: fields(json!({ "timeZone": "Europe/Berlin" })),
            }),
            remote_address: "203.0.113.9".to_owned(),
            creation_date: 1_764_260_957_123,
            summary: "User added to group".to_owned(),
            description: "Added to confluence-users".to_owned(),
            category: "Users and groups".to_owned(),
            sys_admin: true,
            super_admin: Some(false),
            affected_object: Some(pb::AffectedObject {
                name: "confluence-users".to_owned(),
                object_type: "Group".to_owned(),
                unknown_fields: fields(json!({ "objectId": "g-1" })),
            }),
            changed_values: vec![pb::ChangedValue {
                name: "Member".to_owned(),
                old_value: String::new(),
                new_value: "Ada Lovelace".to_owned(),
                hidden_old_value: Some("h-old".to_owned()),
                hidden_new_value: Some("h-new".to_owned()),
                unknown_fields: fields(json!({ "i18nKey": "member.key" })),
            }],
            associated_objects: vec![pb::AffectedObject {
                name: "Ada Lovelace".to_owned(),
                object_type: "User".to_owned(),
                unknown_fields: None,
            }],
            unknown_fields: fields(json!({
                "riskLevel": "high",
                "ext": { "nested": [1, "x", null, 2.5] },
            })),
            creation_time: None,
            json_text_paths: Vec::new(),
            dialect: pb::Dialect::Cloud as i32,
        }
    }

    /// A Data Center record as the DC page converter makes it (docs/data-center.md).
    fn data_center_record() -> pb::AuditRecord {
        pb::AuditRecord {
            author: Some(pb::AuditAuthor {
                r#type: "user".to_owned(),
                display_name: "Zoë Ångström".to_owned(),
                user_key: Some("2c9680837d4a3682017d4a375a280000".to_owned()),
                unknown_fields: fields(json!({
                    "uri": "http://confluence.internal:8090/admin/users/viewuser.action?username=zo%C3%AB",
                    "avatarUri": "",
                })),
                ..Default::default()
            }),
            remote_address: "2001:db8::7".to_owned(),
            creation_date: 1_637_630_676_398,
            summary: "User login failed".to_owned(),
            category: "Auth".to_owned(),
            affected_object: Some(pb::AffectedObject {
                name: "Zoë Ångström".to_owned(),
                object_type: "User".to_owned(),
                unknown_fields: fields(json!({
                    "id": "2c9680837d4a3682017d4a375a280000",
                    "uri": "http://confluence.internal:8090/admin/users/viewuser.action?username=zo%C3%AB",
                })),
            }),
            changed_values: vec![pb::ChangedValue {
                name: "Status".to_owned(),
                old_value: "active".to_owned(),
                new_value: "locked".to_owned(),
                unknown_fields: fields(json!({ "i18nKey": "audit.logging.changed.value.status" })),
                ..Default::default()
            }],
            unknown_fields: fields(json!({
                "type": {
                    "categoryI18nKey": "audit.logging.category.auth",
                    "actionI18nKey": "audit.logging.summary.login.failed",
                },
                "system": "http://confluence.internal:8090",
                "node": "node-1",
                "method": "Browser",
                "extraAttributes": [
                    { "name": "User agent", "nameI18nKey": "audit.attribute.user.agent", "value": "curl/8" },
                ],
            })),
            dialect: pb::Dialect::DataCenter as i32,
            ..Default::default()
        }
    }

    /// Every leaf of `v` with its JSON Pointer; empty arrays and objects are leaves too.
    fn leaves(v: &Value, path: String, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    leaves(x, format!("{path}/{k}"), out);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                for (i, x) in a.iter().enumerate() {
                    leaves(x, format!("{path}/{i}"), out);
                }
            }
            _ => out.push((path, v.clone())),
        }
    }

    /// The pointers of the leaves of the record's Confluence JSON that are no leaf of
    /// `doc` (`creationDate` must be its `@timestamp`), but for those in `except`.
    fn missing(record: &pb::AuditRecord, doc: &Value, except: &[&str]) -> Vec<String> {
        let mut ecs = Vec::new();
        leaves(doc, String::new(), &mut ecs);
        let ecs_values: Vec<&Value> = ecs.iter().map(|(_, v)| v).collect();
        let mut source = Vec::new();
        leaves(&record.to_json(), String::new(), &mut source);
        assert!(source.len() > 5, "a record has fields: {source:?}");
        source
            .into_iter()
            .filter(|(path, value)| {
                if except.contains(&path.as_str()) {
                    return false;
                }
                if path == "/creationDate" {
                    let iso = value.as_i64().map(|ms| Value::from(Iso(ms).to_string()));
                    return iso.as_ref() != Some(&doc["@timestamp"]);
                }
                !ecs_values.contains(&value)
            })
            .map(|(path, _)| path)
            .collect()
    }

    /// Asserts that every leaf of the record's Confluence JSON lands in its document.
    fn assert_every_field_lands(record: &pb::AuditRecord, except: &[&str]) {
        let doc = document(record, false);
        let missing = missing(record, &doc, except);
        assert!(
            missing.is_empty(),
            "{missing:?} are nowhere in the ECS document: {doc:#}"
        );
    }

    #[test]
    fn a_cloud_record_maps_as_documented() {
        let doc = document(&cloud_record(), false);
        assert_eq!(doc["@timestamp"], "2025-11-27T16:29:17.123Z");
        assert_eq!(doc["ecs"]["version"], "8.11.0");
        let event = &doc["event"];
        assert_eq!(event["kind"], "event");
        assert_eq!(event["module"], "confluence");
        assert_eq!(event["dataset"], "confluence.audit");
        assert_eq!(event["action"], "User added to group");
        assert_eq!(event["category"], json!(["iam"]));
        assert_eq!(event["type"], json!(["group", "change"]));
        assert!(event.get("outcome").is_none());
        assert!(event.get("original").is_none(), "only with --ecs-original");
        // accountId wins over userKey, which stays with the author's other fields.
        assert_eq!(doc["user"]["id"], "5b10ac8d82e05b22cc7d4ef5");
        assert_eq!(doc["user"]["full_name"], "Ada Lovelace");
        assert!(doc["user"].get("name").is_none(), "no username");
        assert_eq!(doc["source"]["ip"], "203.0.113.9");
        assert_eq!(doc["source"]["address"], "203.0.113.9");
        assert_eq!(doc["related"]["ip"], json!(["203.0.113.9"]));
        assert_eq!(doc["related"]["user"], json!(["5b10ac8d82e05b22cc7d4ef5"]));
        assert!(doc.get("service").is_none());
        let audit = &doc["confluence"]["audit"];
        assert_eq!(audit["dialect"], "cloud");
        assert_eq!(audit["category"], "Users and groups");
        assert_eq!(audit["description"], "Added to confluence-users");
        assert_eq!(audit["sys_admin"], true);
        assert_eq!(audit["super_admin"], false);
        assert!(
            audit.get("summary").is_none(),
            "Cloud's summary is event.action"
        );
        assert_eq!(
            audit["author"]["user_key"],
            "ff8080817b0a4d9a017b0a5a1e5a0000"
        );
        assert_eq!(audit["author"]["type"], "user");
        assert_eq!(audit["author"]["is_guest"], true);
        assert_eq!(audit["author"]["time_zone"], "Europe/Berlin");
        assert_eq!(audit["author"]["operations"][0]["operation"], "read");
        assert_eq!(audit["affected_object"]["objectType"], "Group");
        assert_eq!(audit["affected_object"]["objectId"], "g-1");
        assert_eq!(audit["associated_objects"][0]["name"], "Ada Lovelace");
        assert_eq!(audit["changed_values"][0]["hiddenNewValue"], "h-new");
        assert_eq!(audit["risk_level"], "high");
        assert_eq!(audit["ext"]["nested"], json!([1, "x", null, 2.5]));
    }

    #[test]
    fn a_data_center_record_maps_as_documented() {
        let doc = document(&data_center_record(), false);
        assert_eq!(doc["@timestamp"], "2021-11-23T01:24:36.398Z");
        let event = &doc["event"];
        assert_eq!(event["action"], "audit.logging.summary.login.failed");
        assert_eq!(event["category"], json!(["authentication"]));
        assert_eq!(event["type"], json!(["start"]));
        assert_eq!(event["outcome"], "failure");
        assert_eq!(doc["user"]["id"], "2c9680837d4a3682017d4a375a280000");
        assert_eq!(doc["user"]["name"], "zoë", "from the author's uri");
        assert_eq!(doc["user"]["full_name"], "Zoë Ångström");
        assert_eq!(doc["source"]["ip"], "2001:db8::7");
        assert_eq!(doc["service"]["address"], "http://confluence.internal:8090");
        assert_eq!(doc["related"]["hosts"], json!(["confluence.internal"]));
        assert_eq!(
            doc["related"]["user"],
            json!(["2c9680837d4a3682017d4a375a280000", "zoë"])
        );
        let audit = &doc["confluence"]["audit"];
        assert_eq!(audit["dialect"], "data_center");
        assert_eq!(audit["summary"], "User login failed");
        assert_eq!(audit["category"], "Auth");
        assert_eq!(
            audit["type"]["categoryI18nKey"],
            "audit.logging.category.auth"
        );
        assert_eq!(audit["method"], "Browser");
        assert_eq!(audit["node"], "node-1");
        assert_eq!(audit["extra_attributes"][0]["value"], "curl/8");
        assert!(audit["author"]["uri"].is_string(), "the uri is kept");
        assert!(audit.get("system").is_none(), "system is service.address");
        // The converter's fillers say nothing about a DC event.
        assert!(audit.get("description").is_none());
        assert!(audit.get("sys_admin").is_none());
    }

    #[test]
    fn every_field_of_a_record_lands_somewhere() {
        assert_every_field_lands(&cloud_record(), &[]);
        // The DC converter's fillers (docs/data-center.md) are left out on purpose.
        assert_every_field_lands(&data_center_record(), &["/description", "/sysAdmin"]);
        let samples = sample_records();
        assert!(!samples.is_empty());
        for r in &samples {
            assert_every_field_lands(r, &[]);
        }
    }

    #[test]
    fn the_check_that_every_field_lands_can_fail() {
        // A field the mapping dropped, or a wrong time, must not go unnoticed.
        let mut r = cloud_record();
        r.description = "a description nothing else holds".to_owned();
        let mut doc = document(&r, false);
        if let Some(audit) = doc["confluence"]["audit"].as_object_mut() {
            audit.remove("description");
        }
        doc["@timestamp"] = Value::from("2025-11-27T16:29:17.124Z");
        assert_eq!(missing(&r, &doc, &[]), ["/creationDate", "/description"]);
    }

    #[test]
    fn unmapped_actions_are_info_without_a_category_and_the_original_is_optional() {
        let mut r = cloud_record();
        r.summary = "App installed".to_owned();
        r.remote_address = "not an address".to_owned();
        let doc = document(&r, true);
        assert_eq!(doc["event"]["type"], json!(["info"]));
        assert!(doc["event"].get("category").is_none());
        assert_eq!(doc["source"]["address"], "not an address");
        assert!(doc["source"].get("ip").is_none());
        assert!(doc["related"].get("ip").is_none());
        let original: Value =
            serde_json::from_str(doc["event"]["original"].as_str().expect("text")).expect("JSON");
        assert_eq!(original, r.to_json());
        // An empty summary is no action; it stays under confluence.audit.
        r.summary = String::new();
        let doc = document(&r, false);
        assert!(doc["event"].get("action").is_none());
        assert_eq!(doc["confluence"]["audit"]["summary"], "");
    }

    #[test]
    fn addresses_with_ports_and_odd_keys_have_a_place() {
        let mut r = cloud_record();
        r.remote_address = "198.51.100.4:5123".to_owned();
        r.unknown_fields = fields(json!({ "sys_admin": "twice", "dialect": "mine" }));
        let doc = document(&r, false);
        assert_eq!(doc["source"]["ip"], "198.51.100.4");
        assert_eq!(doc["source"]["port"], 5123);
        let audit = &doc["confluence"]["audit"];
        assert_eq!(audit["sys_admin"], true);
        assert_eq!(audit["dialect"], "cloud");
        assert_eq!(audit["unknown_fields"]["sys_admin"], "twice");
        assert_eq!(audit["unknown_fields"]["dialect"], "mine");
    }

    #[test]
    fn helpers() {
        assert_eq!(snake("extraAttributes"), "extra_attributes");
        assert_eq!(snake("isExternalCollaborator"), "is_external_collaborator");
        assert_eq!(snake("node"), "node");
        assert_eq!(
            url_host("https://[2001:db8::1]:8443/c"),
            Some("2001:db8::1")
        );
        assert_eq!(
            url_host("http://u@wiki.example.com"),
            Some("wiki.example.com")
        );
        assert_eq!(url_host("wiki"), None);
        assert_eq!(
            username_in_uri("http://x/viewuser.action?a=1&username=j.doe%2Bx#f").as_deref(),
            Some("j.doe+x")
        );
        assert_eq!(username_in_uri("http://x/viewuser.action"), None);
    }
}
