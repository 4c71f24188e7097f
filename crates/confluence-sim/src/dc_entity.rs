//! The Data Center dialect's event (`AuditEntityJson`), generated from the same record the
//! Cloud dialect serves: same creation date, same sequence number, so both dialects list the
//! same events.
//!
//! Values (names, types, addresses) are drawn from the seed; the optional shapes turn with
//! the record's sequence number `k` (its [`crate::record_seq`]), so every shape occurs in
//! any few consecutive records whatever the seed, the default log included:
//!
//! | shape | records |
//! |---|---|
//! | author a user with `id` and `uri`, method `Browser`, `source` set | `k % 4 == 0` |
//! | author a user with `id`, no `uri`, method `REST`, `source` set | `k % 4 == 1` |
//! | author `System` (type `system`) with neither, method `System`, no `source` | `k % 4 == 2` |
//! | author `Anonymous` with `id` `"-2"`, no `uri`, method `Browser`, `source` set | `k % 4 == 3` |
//! | 0, 1, 2, 3, 1 `affectedObjects` | `k % 5` = 0, 1, 2, 3, 4 |
//! | affected object `j` with `id` and `uri` / `id` only / neither | `(k + j) % 3` = 0 / 1 / 2 |
//! | 0, 1, 2 `changedValues` | `k % 3` = 0, 1, 2 |
//! | changed value `j` with `from` and `to` / `to` only / `from` only / neither | `(k + j) % 4` = 0 / 1 / 2 / 3 |
//! | 0, 1, 2, 3 `extraAttributes` | `k % 7` = 0, 1..=2, 3..=4, 5..=6 |
//! | extra attribute `j` without `value` | `(k + j) % 3 == 2` |
//! | no `node` | `k % 6 == 5`; else `node-1` or `node-2` |
//!
//! `type.action` ends with ` #k`, as the Cloud record's `summary` does, so an event is
//! identifiable; its i18n key stays the plain key.

use serde::Serialize;

use super::data::mix;
use super::instant::iso_instant;

/// Salt that keeps the Data Center values apart from the Cloud record's.
const DC_SALT: u64 = 0x6463_6576;

/// One event as `/rest/auditing/1.0/events` serialises it (nulls left out).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entity {
    timestamp: String,
    author: Author,
    #[serde(rename = "type")]
    kind: Kind,
    affected_objects: Vec<Resource>,
    changed_values: Vec<ChangedValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    system: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'static str>,
    method: &'static str,
    extra_attributes: Vec<Attribute>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Author {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
    /// Hard-coded `""` by the plugin's serializer.
    avatar_uri: &'static str,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Kind {
    category: &'static str,
    category_i18n_key: &'static str,
    action: String,
    action_i18n_key: &'static str,
}

#[derive(Clone, Debug, Serialize)]
struct Resource {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChangedValue {
    key: &'static str,
    i18n_key: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Attribute {
    name: &'static str,
    name_i18n_key: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'static str>,
}

/// (category, categoryI18nKey, action, actionI18nKey), as Confluence's audit types go.
const TYPES: &[(&str, &str, &str, &str)] = &[
    (
        "Permissions",
        "audit.logging.category.permissions",
        "Space permission added",
        "audit.logging.summary.space.permission.added",
    ),
    (
        "Permissions",
        "audit.logging.category.permissions",
        "Global permission removed",
        "audit.logging.summary.global.permission.removed",
    ),
    (
        "Users and groups",
        "audit.logging.category.user.management",
        "User created",
        "audit.logging.summary.user.created",
    ),
    (
        "Users and groups",
        "audit.logging.category.user.management",
        "User added to group",
        "audit.logging.summary.group.membership.added",
    ),
    (
        "Auth",
        "audit.logging.category.auth",
        "User login successful",
        "audit.logging.summary.login.success",
    ),
    (
        "Auth",
        "audit.logging.category.auth",
        "User login failed",
        "audit.logging.summary.login.failed",
    ),
    (
        "Global configuration and administration",
        "audit.logging.category.global.config.and.administration",
        "Global settings changed",
        "audit.logging.summary.global.settings.changed",
    ),
    (
        "Personal access tokens",
        "personal.access.tokens.audit.log.category",
        "Token created",
        "personal.access.tokens.audit.log.summary.token.created",
    ),
    (
        "Spaces",
        "audit.logging.category.spaces",
        "Space exported — R&D + QA 日本語",
        "audit.logging.summary.space.exported",
    ),
];
// Unicode, punctuation that needs URL-encoding, and an empty name on purpose.
const USER_NAMES: &[&str] = &[
    "Ada Lovelace",
    "Zoë Ångström",
    "山田 太郎",
    "Renée O'Brien",
    "Jürgen Groß",
    "",
];
/// (type, name, id when it has one): `id` `None` takes a number.
const RESOURCES: &[(&str, &str, Option<&str>)] = &[
    ("Space", "Engineering", None),
    ("Space", "R&D + QA", None),
    ("Page", "Résumé templates", None),
    ("Page", "日本語ドキュメント", None),
    ("Group", "confluence-users", Some("confluence-users")),
    (
        "User",
        "Ada Lovelace",
        Some("2c9680837d4a3682017d4a375a280000"),
    ),
];
/// (key, i18nKey).
const CHANGED_KEYS: &[(&str, &str)] = &[
    ("Display name", "audit.logging.changed.value.display.name"),
    ("Email", "audit.logging.changed.value.email"),
    ("Username", "audit.logging.changed.value.username"),
    ("Permission", "audit.logging.changed.value.permission"),
    ("Status", "audit.logging.changed.value.status"),
];
const VALUES: &[&str] = &[
    "VIEWSPACE",
    "EDITSPACE",
    "true",
    "false",
    "Résumé",
    "🚀",
    "",
];
/// (name, nameI18nKey), sorted by name: the plugin sorts `extraAttributes` by name.
const ATTRIBUTES: &[(&str, &str)] = &[
    ("Query", "audit.attribute.query"),
    ("Reason", "audit.attribute.reason"),
    ("Space key", "audit.attribute.space.key"),
    ("User agent", "audit.attribute.user.agent"),
];
const ATTRIBUTE_VALUES: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64)",
    "ENG",
    "type=page AND space=R&D",
    "Résumé 🚀",
    "",
];

impl Entity {
    /// Event `seq` (its content sequence number, see `Log::content_seq`) of the log made
    /// from `seed`, dated `timestamp_ms`, on the site at `base_url`.
    pub(crate) fn generate(seed: u64, seq: u64, timestamp_ms: i64, base_url: &str) -> Entity {
        let r = &mut fastrand::Rng::with_seed(mix(seed ^ DC_SALT ^ mix(seq)));
        let (category, category_i18n_key, action, action_i18n_key) = pick(r, TYPES);
        let username = format!("user{}", r.u32(..1000));
        let user_uri = format!("{base_url}/admin/users/viewuser.action?username={username}");
        let (author, method) = match seq % 4 {
            0 => (Author::user(r, Some(user_uri)), "Browser"),
            1 => (Author::user(r, None), "REST"),
            2 => (Author::named("System", "system", None), "System"),
            _ => (Author::named("Anonymous", "user", Some("-2")), "Browser"),
        };
        let objects = [0, 1, 2, 3, 1][(seq % 5) as usize];
        let changes = seq % 3;
        let extras = [0, 1, 1, 2, 2, 3, 3][(seq % 7) as usize];
        let mut names: Vec<usize> = (0..ATTRIBUTES.len()).collect();
        r.shuffle(&mut names);
        names.truncate(extras);
        names.sort_unstable();
        Entity {
            timestamp: iso_instant(timestamp_ms),
            author,
            kind: Kind {
                category,
                category_i18n_key,
                action: format!("{action} #{seq}"),
                action_i18n_key,
            },
            affected_objects: (0..objects)
                .map(|j| Resource::generate(r, (seq + j) % 3, base_url))
                .collect(),
            changed_values: (0..changes)
                .map(|j| ChangedValue::generate(r, (seq + j) % 4))
                .collect(),
            source: (method != "System").then(|| source_address(seq)),
            system: base_url.to_owned(),
            node: (seq % 6 != 5).then(|| if r.bool() { "node-1" } else { "node-2" }),
            method,
            extra_attributes: names
                .into_iter()
                .zip(0u64..)
                .map(|(index, j)| {
                    let (name, name_i18n_key) = ATTRIBUTES[index];
                    Attribute {
                        name,
                        name_i18n_key,
                        value: ((seq + j) % 3 != 2).then(|| pick(r, ATTRIBUTE_VALUES)),
                    }
                })
                .collect(),
        }
    }

    /// Whether any of `tokens_lower` (lower-cased) is in the event's text, ignoring case: the
    /// plugin's `search` ORs `LIKE %token%` over a text of the event.
    pub(crate) fn matches_any(&self, tokens_lower: &[String]) -> bool {
        let text = self.search_text();
        tokens_lower
            .iter()
            .any(|token| text.contains(token.as_str()))
    }

    /// The event's strings, lower-cased and joined by newlines (which no token holds).
    fn search_text(&self) -> String {
        let mut parts: Vec<&str> = vec![
            self.author.name,
            self.kind.category,
            &self.kind.action,
            self.method,
        ];
        parts.extend(self.author.id.as_deref());
        parts.extend(self.source.as_deref());
        for object in &self.affected_objects {
            parts.push(object.name);
            parts.push(object.kind);
            parts.extend(object.id.as_deref());
        }
        for value in &self.changed_values {
            parts.push(value.key);
            parts.extend(value.from.into_iter().chain(value.to));
        }
        for attribute in &self.extra_attributes {
            parts.push(attribute.name);
            parts.extend(attribute.value);
        }
        parts.join("\n").to_lowercase()
    }
}

impl Author {
    fn user(r: &mut fastrand::Rng, uri: Option<String>) -> Author {
        Author {
            name: pick(r, USER_NAMES),
            kind: "user",
            id: Some(hex(r, 32)),
            uri,
            avatar_uri: "",
        }
    }

    fn named(name: &'static str, kind: &'static str, id: Option<&str>) -> Author {
        Author {
            name,
            kind,
            id: id.map(str::to_owned),
            uri: None,
            avatar_uri: "",
        }
    }
}

impl Resource {
    /// `variant` 0: `id` and `uri`; 1: `id` only; 2: neither.
    fn generate(r: &mut fastrand::Rng, variant: u64, base_url: &str) -> Resource {
        let (kind, name, fixed_id) = pick(r, RESOURCES);
        let id = fixed_id.map_or_else(|| r.u32(1..1_000_000).to_string(), str::to_owned);
        let uri = match kind {
            "Space" => format!("{base_url}/spaces/viewspace.action?spaceId={id}"),
            "Page" => format!("{base_url}/pages/viewpage.action?pageId={id}"),
            "Group" => format!("{base_url}/admin/users/viewgroup.action?group={id}"),
            _ => format!("{base_url}/admin/users/viewuser.action?userKey={id}"),
        };
        Resource {
            name,
            kind,
            id: (variant < 2).then_some(id),
            uri: (variant == 0).then_some(uri),
        }
    }
}

impl ChangedValue {
    /// `variant` 0: `from` and `to`; 1: `to` only (set); 2: `from` only (cleared); 3: neither.
    fn generate(r: &mut fastrand::Rng, variant: u64) -> ChangedValue {
        let (key, i18n_key) = pick(r, CHANGED_KEYS);
        let (from, to) = (pick(r, VALUES), pick(r, VALUES));
        ChangedValue {
            key,
            i18n_key,
            from: (variant == 0 || variant == 2).then_some(from),
            to: (variant <= 1).then_some(to),
        }
    }
}

/// A unique client address per sequence number: IPv4 below 2^24, IPv6 beyond.
fn source_address(seq: u64) -> String {
    if seq < 1 << 24 {
        let [.., f, g, h] = seq.to_be_bytes();
        format!("10.{f}.{g}.{h}")
    } else {
        let group = |shift: u32| (seq >> shift) & 0xffff;
        format!(
            "2001:db8::{:x}:{:x}:{:x}:{:x}",
            group(48),
            group(32),
            group(16),
            group(0)
        )
    }
}

fn hex(r: &mut fastrand::Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[r.usize(..16)]))
        .collect()
}

fn pick<T: Copy>(r: &mut fastrand::Rng, pool: &[T]) -> T {
    pool[r.usize(..pool.len())]
}
