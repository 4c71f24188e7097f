//! The synthetic audit log. Only creation dates are stored; every record is generated on
//! demand from (seed, sequence number), so a log of millions of records costs a few bytes.

use std::borrow::Cow;
use std::fmt::{self, Write};
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use serde::Serialize;
use serde_json::{Value, json};

mod json;

/// Milliseconds between the creation dates of consecutive initial records. Small enough
/// that the default window (3 MONTHS = 90 days) holds 1,555,200 initial records.
pub const RECORD_SPACING_MS: i64 = 5_000;

/// The log: sequence numbers `oldest..end`, the oldest first, creation dates non-decreasing.
/// Sequence numbers below `oldest` were deleted (retention); a record keeps its sequence
/// number, hence its content, for as long as it exists.
#[derive(Clone, Debug)]
pub(crate) struct Log {
    seed: u64,
    /// Records present at start, dated up to `newest_initial_ms`: one per
    /// `RECORD_SPACING_MS` step, or with `ties` a group of up to `ties` per step.
    initial: u64,
    newest_initial_ms: i64,
    /// Largest group of initial records sharing a millisecond (0 and 1: none share one).
    ties: u32,
    /// About one record in this many is a byte-identical copy of the one before it, at the
    /// same millisecond (0: none).
    duplicate_every: u32,
    /// Inserted batches as (first sequence number, creation date), both ascending. Shared so a
    /// request can render from a snapshot without holding the simulator's lock.
    batches: Arc<Vec<(u64, i64)>>,
    /// Depth of the value every record carries under `nested` (none: no such key).
    nested_depth: Option<usize>,
    /// The oldest sequence number not deleted.
    oldest: u64,
    /// The next sequence number to insert.
    end: u64,
}

/// Salts that keep the tie, duplicate and listing-order generators apart from the content's.
const TIE_SALT: u64 = 0x7469_6573;
const DUPLICATE_SALT: u64 = 0x6475_7073;
const ORDER_SALT: u64 = 0x6f72_6465;

impl Log {
    /// A log of `initial` records whose newest is dated `now_ms`.
    pub(crate) fn new(seed: u64, initial: usize, now_ms: i64) -> Log {
        let initial = u64::try_from(initial).unwrap_or(u64::MAX);
        Log {
            seed,
            initial,
            newest_initial_ms: now_ms,
            ties: 0,
            duplicate_every: 0,
            batches: Arc::default(),
            nested_depth: None,
            oldest: 0,
            end: initial,
        }
    }

    /// The same log with initial records in tie groups of up to `ties` records (group sizes
    /// seeded), and about one record in `duplicate_every` a copy of the one before it.
    pub(crate) fn shaped(self, ties: u32, duplicate_every: u32) -> Log {
        Log {
            ties,
            duplicate_every,
            ..self
        }
    }

    /// The same log with every record carrying a value `depth` levels deep (see
    /// `SimulatorConfig::nested_depth`).
    pub(crate) fn nested(self, depth: Option<usize>) -> Log {
        Log {
            nested_depth: depth,
            ..self
        }
    }

    /// The seed the log's content is generated from.
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// Records in the log.
    pub(crate) fn count(&self) -> u64 {
        self.end - self.oldest
    }

    /// One past the newest sequence number.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Deletes up to `n` of the oldest records, as retention does.
    pub(crate) fn delete_oldest(&mut self, n: u64) {
        self.oldest = self.oldest.saturating_add(n).min(self.end);
    }

    /// Creation date (epoch ms) of record `seq` (< `end()`): a duplicate shares the date of
    /// the record it copies.
    pub(crate) fn date(&self, seq: u64) -> i64 {
        match self.copy_of(seq) {
            Some(original) => self.own_date(original),
            None => self.own_date(seq),
        }
    }

    /// The sequence number record `seq` carries in its content (see [`record_seq`]): its own,
    /// or for a duplicate that of the record it copies.
    pub(crate) fn content_seq(&self, seq: u64) -> u64 {
        self.copy_of(seq).unwrap_or(seq)
    }

    /// The record `seq` is a byte-identical copy of, if it is a duplicate. Only odd sequence
    /// numbers are, so an original is never a copy itself.
    fn copy_of(&self, seq: u64) -> Option<u64> {
        let every = u64::from(self.duplicate_every / 2).max(1);
        (self.duplicate_every > 0
            && seq % 2 == 1
            && mix(self.seed ^ DUPLICATE_SALT ^ mix(seq)).is_multiple_of(every))
        .then(|| seq - 1)
    }

    /// The date `seq` would have were it not a duplicate.
    fn own_date(&self, seq: u64) -> i64 {
        if seq < self.initial {
            let age = self.initial - 1 - seq;
            let (steps, older_ms) = match u64::from(self.ties) {
                0 | 1 => (age, 0),
                ties => {
                    // A block of `ties` records per step, split at a seeded point into a
                    // newer group at the step's millisecond and an older one a millisecond
                    // before: groups of 1..=ties records, never decreasing in date.
                    let block = age / ties;
                    let split = mix(self.seed ^ TIE_SALT ^ mix(block)) % ties;
                    (block, i64::from(age % ties >= split))
                }
            };
            let steps = i64::try_from(steps).unwrap_or(i64::MAX);
            return self
                .newest_initial_ms
                .saturating_sub(steps.saturating_mul(RECORD_SPACING_MS))
                .saturating_sub(older_ms);
        }
        let batch = self.batches.partition_point(|&(first, _)| first <= seq);
        self.batches
            .get(batch.saturating_sub(1))
            .map_or(self.newest_initial_ms, |&(_, date)| date)
    }

    /// Adds `n` records at the head, dated `now_ms` or, should the clock have gone back,
    /// the current newest date: dates never decrease, which the window search relies on.
    pub(crate) fn insert(&mut self, n: u64, now_ms: i64) {
        if n == 0 {
            return;
        }
        let newest = self.end.checked_sub(1).map(|seq| self.date(seq));
        let date = newest.map_or(now_ms, |newest| newest.max(now_ms));
        let batches = Arc::make_mut(&mut self.batches);
        // Consecutive inserts within one millisecond share a batch.
        if batches.last().is_none_or(|&(_, last)| last != date) {
            batches.push((self.end, date));
        }
        self.end = self.end.saturating_add(n);
    }

    /// The oldest sequence number present dated at or after `cutoff_ms` (`end()` when none
    /// is): a binary search, as dates never decrease.
    pub(crate) fn first_since(&self, cutoff_ms: i64) -> u64 {
        let (mut lo, mut hi) = (self.oldest, self.end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.date(mid) < cutoff_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Record `seq`, generated afresh (a duplicate from the record it copies).
    pub(crate) fn record(&self, seq: u64) -> Record {
        let content = self.content_seq(seq);
        let mut record = Record::generate(self.seed, content, self.date(seq));
        if let Some(depth) = self.nested_depth {
            let deep = nested_value(depth, content);
            if content % 2 == 1 {
                record.author.operations = Cow::Owned(deep.clone());
            }
            record.nested = Some(deep);
        }
        record
    }

    /// One page, newest first: the records of `range` not in `hidden` that contain
    /// `search_lower` (already lower-cased; `None` for no filter), skipping `start` and taking
    /// `limit`, listed as [`Log::newest_first`] lists them for `order`. Without a search the
    /// offset is found directly; with one it is a linear scan.
    pub(crate) fn page(
        &self,
        range: Range<u64>,
        hidden: &[u64],
        search_lower: Option<&str>,
        start: usize,
        limit: usize,
        order: Option<u64>,
    ) -> Vec<Record> {
        match search_lower {
            None => {
                // Sized up front (at most what the range holds past `start`): the listing
                // cannot tell its length, so `collect` would grow and copy the page.
                let present = range
                    .end
                    .min(self.end)
                    .saturating_sub(range.start.max(self.oldest));
                let most = usize::try_from(present.saturating_sub(start as u64));
                let mut page = Vec::with_capacity(limit.min(most.unwrap_or(usize::MAX)));
                let listing = self.newest_first(range, hidden, start as u64, order);
                page.extend(listing.take(limit).map(|seq| self.record(seq)));
                page
            }
            Some(needle) => self
                .newest_first(range, hidden, 0, order)
                .map(|seq| self.record(seq))
                .filter(|record| record.contains(needle))
                .skip(start)
                .take(limit)
                .collect(),
        }
    }

    /// The sequence numbers of `range` (deleted ones and those in `hidden`, ascending, left
    /// out) newest first, from offset `skip` on. `range` must not split a group of records
    /// sharing a millisecond. Records sharing a millisecond come in sequence order when
    /// `order` is `None`; else in an order drawn afresh from `order` for each group, as
    /// Confluence lists ties differently on every request.
    pub(crate) fn newest_first<'a>(
        &'a self,
        range: Range<u64>,
        hidden: &'a [u64],
        skip: u64,
        order: Option<u64>,
    ) -> NewestFirst<'a> {
        let first = range.start.max(self.oldest);
        let upper = range.end.min(self.end).max(first);
        // Only the hidden records inside the listing shift its offsets.
        let hidden = &hidden[hidden.partition_point(|&seq| seq < first)..];
        let hidden = &hidden[..hidden.partition_point(|&seq| seq < upper)];
        let Some(&oldest_hidden) = hidden.first() else {
            return self.raw_newest_first(first, upper, hidden, skip, order);
        };
        // Hidden records are recent, so they are listed within the first few offsets: past
        // the group holding the oldest of them, offsets are raw offsets less all of them.
        let region_start = match order {
            None => oldest_hidden,
            Some(_) => self.group_start(oldest_hidden, first),
        };
        let visible_in_region = (upper - region_start).saturating_sub(hidden.len() as u64);
        if skip >= visible_in_region {
            let raw_skip = skip.saturating_add(hidden.len() as u64);
            return self.raw_newest_first(first, upper, hidden, raw_skip, order);
        }
        // Inside that short region: list from the start and step over `skip` visible ones.
        let mut listing = self.raw_newest_first(first, upper, hidden, 0, order);
        for _ in 0..skip {
            listing.next();
        }
        listing
    }

    /// [`Log::newest_first`] from raw offset `skip`, counting hidden records too.
    fn raw_newest_first<'a>(
        &'a self,
        first: u64,
        upper: u64,
        hidden: &'a [u64],
        skip: u64,
        order: Option<u64>,
    ) -> NewestFirst<'a> {
        let mut listing = NewestFirst {
            log: self,
            first,
            below: first,
            order,
            group: Vec::new(),
            hidden,
        };
        let Some(at) = upper
            .checked_sub(1)
            .and_then(|newest| newest.checked_sub(skip))
            .filter(|&at| at >= first)
        else {
            return listing;
        };
        if order.is_none() {
            listing.below = at + 1;
            return listing;
        }
        // The group holding offset `skip`, entered part way: the members listed before it
        // belong to earlier offsets.
        let newest = self.group_end(at, upper - 1);
        let oldest = self.group_start(at, first);
        listing.fill(oldest, newest);
        let listed_before = usize::try_from(newest - at).unwrap_or(usize::MAX);
        let left = listing.group.len().saturating_sub(listed_before);
        listing.group.truncate(left);
        listing.below = oldest;
        listing
    }

    /// The oldest sequence number, not below `floor`, dated as `seq`: an exponential then a
    /// binary search, cheap for small groups whatever the log's size.
    fn group_start(&self, seq: u64, floor: u64) -> u64 {
        let date = self.date(seq);
        let (mut inside, mut step) = (seq, 1u64);
        let mut outside = loop {
            if inside <= floor {
                return floor;
            }
            let probe = inside.saturating_sub(step).max(floor);
            if self.date(probe) != date {
                break probe;
            }
            inside = probe;
            step = step.saturating_mul(2);
        };
        while inside - outside > 1 {
            let mid = outside + (inside - outside) / 2;
            if self.date(mid) == date {
                inside = mid;
            } else {
                outside = mid;
            }
        }
        inside
    }

    /// The newest sequence number, not above `ceiling` (`seq <= ceiling < end()`), dated as
    /// `seq`.
    fn group_end(&self, seq: u64, ceiling: u64) -> u64 {
        let date = self.date(seq);
        let (mut inside, mut step) = (seq, 1u64);
        let mut outside = loop {
            if inside >= ceiling {
                return ceiling;
            }
            let probe = inside.saturating_add(step).min(ceiling);
            if self.date(probe) != date {
                break probe;
            }
            inside = probe;
            step = step.saturating_mul(2);
        };
        while outside - inside > 1 {
            let mid = inside + (outside - inside) / 2;
            if self.date(mid) == date {
                inside = mid;
            } else {
                outside = mid;
            }
        }
        inside
    }
}

/// The seed a request lists its tie groups with: a function of the log's seed and the
/// request's number, so a run is reproducible.
pub(crate) fn listing_order(seed: u64, request: u64) -> u64 {
    mix(seed ^ ORDER_SALT ^ mix(request))
}

/// Sequence numbers newest first, see [`Log::newest_first`].
pub(crate) struct NewestFirst<'a> {
    log: &'a Log,
    first: u64,
    /// Sequence numbers below this one are still to come, after `group`.
    below: u64,
    order: Option<u64>,
    /// What is left of the current tie group, last listed first (so `pop` lists it).
    group: Vec<u64>,
    /// Sequence numbers not listed (not visible yet), ascending.
    hidden: &'a [u64],
}

impl NewestFirst<'_> {
    /// Makes `oldest..=newest` the current group, in this listing's order.
    fn fill(&mut self, oldest: u64, newest: u64) {
        self.group.clear();
        self.group.extend(oldest..=newest);
        if let Some(order) = self.order {
            fastrand::Rng::with_seed(mix(order ^ mix(oldest))).shuffle(&mut self.group);
        }
    }
}

impl Iterator for NewestFirst<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            let seq = self.next_raw()?;
            if self.hidden.binary_search(&seq).is_err() {
                return Some(seq);
            }
        }
    }
}

impl NewestFirst<'_> {
    /// The next sequence number, hidden or not.
    fn next_raw(&mut self) -> Option<u64> {
        if let Some(seq) = self.group.pop() {
            return Some(seq);
        }
        if self.below <= self.first {
            return None;
        }
        let newest = self.below - 1;
        if self.order.is_none() {
            self.below = newest;
            return Some(newest);
        }
        let oldest = self.log.group_start(newest, self.first);
        self.fill(oldest, newest);
        self.below = oldest;
        self.group.pop()
    }
}

/// One audit record as Confluence serialises it (field order as in real answers).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Record {
    author: Author,
    remote_address: String,
    creation_date: i64,
    summary: String,
    description: String,
    category: &'static str,
    sys_admin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    super_admin: Option<bool>,
    affected_object: Object,
    changed_values: Vec<ChangedValue>,
    associated_objects: Vec<Object>,
    // Keys the schema does not know, as newer Confluence versions add them.
    #[serde(skip_serializing_if = "Option::is_none")]
    risk_level: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ext: Option<&'static Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nested: Option<Value>,
}

/// `Option<Value>` fields below are three-state: absent (`None`), `null`, or a string.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Author {
    #[serde(rename = "type")]
    kind: &'static str,
    display_name: &'static str,
    // Borrowed from `OPERATIONS` (no allocation per record) unless `nested_depth` is set.
    operations: Cow<'static, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_key: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_collaborator: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_external_collaborator: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_guest: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_name: Option<&'static str>,
    // Unknown to the schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    time_zone: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    name: &'static str,
    object_type: &'static str,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChangedValue {
    name: &'static str,
    old_value: &'static str,
    new_value: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hidden_old_value: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hidden_new_value: Option<&'static str>,
}

// Value pools: unicode, punctuation that needs URL-encoding, and empty strings on purpose.
const NAMES: &[&str] = &[
    "Ada Lovelace",
    "Zoë Ångström",
    "山田 太郎",
    "Renée O'Brien",
    "emoji 🚀 bot",
    "Jürgen Groß",
    "",
];
const SUMMARIES: &[&str] = &[
    "Space permission added",
    "User added to group",
    "App installed",
    "Global permission removed",
    "Page restored from trash",
    "Exported space R&D + QA #ops Résumé 日本語",
    "Audit log exported — emoji 🚀",
    "",
];
const DESCRIPTIONS: &[&str] = &[
    "Permission granted by an administrator",
    "Changed via the REST API",
    "Résumé space settings updated",
    "日本語 content moved",
    "",
];
const CATEGORIES: &[&str] = &[
    "Permissions",
    "Spaces",
    "Users and groups",
    "Apps",
    "Security",
    "",
];
const OBJECT_NAMES: &[&str] = &[
    "Engineering",
    "confluence-users",
    "R&D + QA",
    "Résumé templates",
    "日本語ドキュメント",
    "",
];
const OBJECT_TYPES: &[&str] = &["Space", "User", "Group", "App", "Page", ""];
const FIELDS: &[&str] = &["Permission", "Name", "Status", "Description", ""];
const VALUES: &[&str] = &[
    "VIEWSPACE",
    "EDITSPACE",
    "true",
    "false",
    "Résumé",
    "🚀",
    "",
];
const TIME_ZONES: &[&str] = &["Europe/Berlin", "Asia/Tokyo", "America/New_York", "UTC"];
const ACCOUNT_TYPES: &[Option<&str>] = &[Some("atlassian"), Some("app"), Some(""), None];
const OPTIONAL_BOOLS: &[Option<bool>] = &[Some(true), Some(false), None];
const RISK_LEVELS: &[&str] = &["low", "medium", "high"];
/// `author.type`.
const AUTHOR_KIND: &str = "user";

/// Every string of the tables above, which [`json`] writes without escaping.
#[cfg(test)]
pub(crate) fn table_strings() -> Vec<&'static str> {
    let tables = [
        NAMES,
        SUMMARIES,
        DESCRIPTIONS,
        CATEGORIES,
        OBJECT_NAMES,
        OBJECT_TYPES,
        FIELDS,
        VALUES,
        TIME_ZONES,
        RISK_LEVELS,
        &[AUTHOR_KIND],
    ];
    let optional = ACCOUNT_TYPES.iter().flatten();
    tables
        .into_iter()
        .flatten()
        .chain(optional)
        .copied()
        .collect()
}

impl Record {
    /// Record `seq` of the log made from `seed`: the same inputs always give the same record.
    /// `summary` ends with `#<seq>` and `description` holds `(record <seq>)`, so every record
    /// is unique and identifiable.
    fn generate(seed: u64, seq: u64, creation_date: i64) -> Record {
        let r = &mut fastrand::Rng::with_seed(mix(seed ^ mix(seq)));
        Record {
            author: Author::generate(r),
            remote_address: remote_address(r, seq),
            creation_date,
            summary: text(format_args!("{} #{seq}", pick(r, SUMMARIES))),
            description: text(format_args!("{} (record {seq})", pick(r, DESCRIPTIONS))),
            category: pick(r, CATEGORIES),
            sys_admin: r.bool(),
            super_admin: pick(r, OPTIONAL_BOOLS),
            affected_object: Object::generate(r),
            changed_values: (0..r.usize(0..=3))
                .map(|_| ChangedValue::generate(r))
                .collect(),
            associated_objects: (0..r.usize(0..=3)).map(|_| Object::generate(r)).collect(),
            risk_level: one_in(r, 4).then(|| pick(r, RISK_LEVELS)),
            ext: one_in(r, 5).then(|| &*EXT),
            nested: None,
        }
    }

    /// Whether any string in the record contains `needle_lower` (lower-cased), ignoring case.
    pub(crate) fn contains(&self, needle_lower: &str) -> bool {
        let mut strings = Vec::with_capacity(32);
        self.collect_strings(&mut strings);
        strings
            .iter()
            .any(|s| s.to_lowercase().contains(needle_lower))
    }

    fn collect_strings<'a>(&'a self, out: &mut Vec<&'a str>) {
        self.author.collect_strings(out);
        out.extend([
            self.remote_address.as_str(),
            &self.summary,
            &self.description,
            self.category,
            self.affected_object.name,
            self.affected_object.object_type,
        ]);
        for value in &self.changed_values {
            out.extend([value.name, value.old_value, value.new_value]);
            out.extend(
                value
                    .hidden_old_value
                    .into_iter()
                    .chain(value.hidden_new_value),
            );
        }
        for object in &self.associated_objects {
            out.extend([object.name, object.object_type]);
        }
        out.extend(self.risk_level);
        for value in self.ext.into_iter().chain(self.nested.as_ref()) {
            value_strings(value, out);
        }
    }
}

impl Author {
    fn generate(r: &mut fastrand::Rng) -> Author {
        Author {
            kind: AUTHOR_KIND,
            display_name: pick(r, NAMES),
            operations: operations(r),
            username: one_in(r, 3).then(|| text(format_args!("user{}", r.u32(..1000)))),
            user_key: absent_null_or(r, 32),
            account_id: absent_null_or(r, 24),
            account_type: pick(r, ACCOUNT_TYPES),
            external_collaborator: one_in(r, 4).then(|| r.bool()),
            is_external_collaborator: one_in(r, 4).then(|| r.bool()),
            is_guest: pick(r, OPTIONAL_BOOLS),
            public_name: one_in(r, 3).then(|| pick(r, &NAMES[..NAMES.len() - 1])),
            time_zone: one_in(r, 4).then(|| pick(r, TIME_ZONES)),
        }
    }

    fn collect_strings<'a>(&'a self, out: &mut Vec<&'a str>) {
        out.extend([self.kind, self.display_name]);
        value_strings(&self.operations, out);
        out.extend(self.username.as_deref());
        for id in [&self.user_key, &self.account_id].into_iter().flatten() {
            value_strings(id, out);
        }
        out.extend(self.account_type.into_iter().chain(self.public_name));
        out.extend(self.time_zone);
    }
}

impl Object {
    fn generate(r: &mut fastrand::Rng) -> Object {
        Object {
            name: pick(r, OBJECT_NAMES),
            object_type: pick(r, OBJECT_TYPES),
        }
    }
}

impl ChangedValue {
    fn generate(r: &mut fastrand::Rng) -> ChangedValue {
        ChangedValue {
            name: pick(r, FIELDS),
            old_value: pick(r, VALUES),
            new_value: pick(r, VALUES),
            hidden_old_value: one_in(r, 3).then(|| pick(r, VALUES)),
            hidden_new_value: one_in(r, 3).then(|| pick(r, VALUES)),
        }
    }
}

/// `author.operations` in all three shapes real data shows: `null`, an object, an array.
static OPERATIONS: LazyLock<[Value; 4]> = LazyLock::new(|| {
    [
        Value::Null,
        json!({}),
        json!({ "read": true }),
        json!([
            { "operation": "read", "targetType": "space" },
            { "operation": "administer", "targetType": "application" },
        ]),
    ]
});

/// The value of the unknown key `ext` some records carry.
static EXT: LazyLock<Value> = LazyLock::new(|| json!({ "nested": [1, "x", null] }));

fn operations(r: &mut fastrand::Rng) -> Cow<'static, Value> {
    Cow::Borrowed(&OPERATIONS[usize::from(r.u8(0..4))])
}

/// A value `depth` JSON levels deep: `{"down": [{"down": [… "bottom #<seq>" …]}]}`, an
/// object outermost, then arrays and objects in turn.
pub(crate) fn nested_value(depth: usize, seq: u64) -> Value {
    (0..depth)
        .rev()
        .fold(json!(format!("bottom #{seq}")), |inner, level| {
            if level % 2 == 0 {
                json!({ "down": inner })
            } else {
                json!([inner])
            }
        })
}

/// An identifier that is absent, `null`, or `hex_len` hex digits.
fn absent_null_or(r: &mut fastrand::Rng, hex_len: usize) -> Option<Value> {
    match r.u8(0..3) {
        0 => None,
        1 => Some(Value::Null),
        _ => Some(Value::String(
            (0..hex_len)
                .map(|_| char::from(b"0123456789abcdef"[r.usize(..16)]))
                .collect(),
        )),
    }
}

/// A unique address per sequence number: IPv4 mostly, IPv6 sometimes (and beyond 2^24).
fn remote_address(r: &mut fastrand::Rng, seq: u64) -> String {
    let [a, b, c, d, e, f, g, h] = seq.to_be_bytes();
    if one_in(r, 5) || seq >= 1 << 24 {
        let group = |hi: u8, lo: u8| u16::from_be_bytes([hi, lo]);
        text(format_args!(
            "2001:db8::{:x}:{:x}:{:x}:{:x}",
            group(a, b),
            group(c, d),
            group(e, f),
            group(g, h)
        ))
    } else {
        text(format_args!("10.{f}.{g}.{h}"))
    }
}

/// `format!` into one allocation: `format!` sizes its string from the literal parts alone,
/// so a record's strings mostly grew once or twice. 80 bytes hold the longest (a summary).
fn text(args: fmt::Arguments) -> String {
    let mut text = String::with_capacity(80);
    // Writing to a `String` does not fail.
    let _ = text.write_fmt(args);
    text
}

fn value_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|item| value_strings(item, out)),
        Value::Object(map) => map.values().for_each(|item| value_strings(item, out)),
        _ => {}
    }
}

fn pick<T: Copy>(r: &mut fastrand::Rng, pool: &[T]) -> T {
    pool[r.usize(..pool.len())]
}

fn one_in(r: &mut fastrand::Rng, n: u32) -> bool {
    r.u32(..n) == 0
}

/// SplitMix64 finaliser: turns (seed, seq) into well-spread, independent generator seeds.
pub(crate) fn mix(x: u64) -> u64 {
    let x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The JSON body of one page, as `AuditRecordArray`: what [`json::page`] writes by hand,
/// serialised by serde as the reference the tests compare it with.
#[cfg(test)]
#[derive(Serialize)]
struct PageBody<'a> {
    results: &'a [Record],
    start: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<usize>,
    #[serde(rename = "_links")]
    links: Links<'a>,
}

#[cfg(test)]
#[derive(Serialize)]
struct Links<'a> {
    base: &'a str,
    context: &'a str,
    #[serde(rename = "self")]
    this: &'a str,
}

/// Serialises one page (written by hand, see [`json`]).
pub(crate) use json::page as render;

/// [`render`] through serde's derives: the reference the hand-written JSON must equal.
#[cfg(test)]
pub(crate) fn render_with_serde(
    records: &[Record],
    start: u32,
    limit: Option<u32>,
    base_url: &str,
    context: &str,
    self_url: &str,
) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&PageBody {
        results: records,
        start,
        limit,
        size: limit.map(|_| records.len()),
        links: Links {
            base: base_url,
            context,
            this: self_url,
        },
    })
}

/// What [`render_page`] renders: a page of a log with no inserts, no window and no search.
#[derive(Clone, Debug)]
pub struct PageSpec {
    /// Generator seed (as [`super::SimulatorConfig::seed`]).
    pub seed: u64,
    /// Records in the log.
    pub total: usize,
    /// Creation date (epoch ms) of the newest record; older ones are `RECORD_SPACING_MS` apart.
    pub newest_date_ms: i64,
    /// Offset from the newest record.
    pub start: u32,
    /// Page size.
    pub limit: u32,
    /// Base URL reported in `_links.base`, e.g. `"http://127.0.0.1:8080/wiki"`.
    pub base_url: String,
}

impl Default for PageSpec {
    /// A full 1000-record first page of a 5000-record log with the simulator's default seed.
    fn default() -> PageSpec {
        PageSpec {
            seed: 42,
            total: 5000,
            newest_date_ms: 1_700_000_000_000,
            start: 0,
            limit: 1000,
            base_url: "http://127.0.0.1/wiki".to_owned(),
        }
    }
}

/// Builds the JSON body of one `GET /rest/api/audit/since` page (pure: no clock, no I/O): the
/// records a simulator with the same seed, record count and newest date serves when the window
/// holds the whole log, in the same encoding (`_links.self` is the endpoint without a query).
/// For benches, `render_page(&PageSpec::default())` is a realistic 1000-record page (~700 KB).
/// Fails only if serde_json fails to serialise, which these types do not.
pub fn render_page(spec: &PageSpec) -> serde_json::Result<Vec<u8>> {
    let log = Log::new(spec.seed, spec.total, spec.newest_date_ms);
    let records = log.page(
        0..log.end(),
        &[],
        None,
        spec.start as usize,
        spec.limit as usize,
        None,
    );
    let context = url::Url::parse(&spec.base_url)
        .map(|url| url.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    render(
        &records,
        spec.start,
        Some(spec.limit),
        &spec.base_url,
        &context,
        &format!("{}/rest/api/audit/since", spec.base_url),
    )
}

/// The sequence number of a served record (the `#<seq>` that ends its `summary`, or for a
/// Data Center event its `type.action`), so tests can check that each record is delivered
/// exactly once, live and late ones included. A duplicate
/// (see [`super::SimulatorConfig::duplicate_every`]) carries the number of the record it
/// copies, so count duplicates as a multiset (as [`super::SimulatorHandle::expected_records`]
/// does).
pub fn record_seq(record: &Value) -> Option<u64> {
    record
        .get("summary")
        .or_else(|| record.get("type")?.get("action"))?
        .as_str()?
        .rsplit_once('#')?
        .1
        .parse()
        .ok()
}

/// The date of a served record in epoch milliseconds: a Cloud record's `creationDate`, or a
/// Data Center event's ISO 8601 `timestamp` parsed (`None` if it is neither).
pub fn record_date_ms(record: &Value) -> Option<i64> {
    match record.get("creationDate") {
        Some(date) => date.as_i64(),
        None => super::instant::parse_instant(record.get("timestamp")?.as_str()?),
    }
}
