//! `encode_page` (the one-pass `direct`) against `reference_encode_page` (parse, `prost`
//! message, encode): the same bytes for every body either accepts, the same error for
//! every body either refuses. Bodies are generated as JSON text, so that they hold what a
//! `serde_json::Value` cannot: duplicate keys, escapes in strings and keys, every form of
//! number, whitespace, and now and then something that is not an `AuditRecordArray`.

use proptest::prelude::*;

use super::{encode_page, reference_encode_page};

/// Both converters on `body`: equal bytes, or equal errors.
fn same(body: &[u8]) -> Result<(), TestCaseError> {
    match (encode_page(body), reference_encode_page(body)) {
        (Ok(ours), Ok(reference)) => prop_assert!(
            ours == reference,
            "different bytes for {}",
            String::from_utf8_lossy(body)
        ),
        (Err(ours), Err(reference)) => prop_assert_eq!(ours.to_string(), reference.to_string()),
        (ours, reference) => prop_assert!(
            false,
            "one refused: ours {:?}, reference {:?}, body {}",
            ours.map(|b| b.len()),
            reference.map(|b| b.len()),
            String::from_utf8_lossy(body)
        ),
    }
    Ok(())
}

/// JSON as text: a string literal keeps how it is escaped, an object its key order and
/// duplicate keys, a number its form.
#[derive(Clone, Debug)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(Lit),
    Arr(Vec<J>),
    Obj(Vec<(Lit, J)>),
}

/// A string and how to escape it: 0 as serde_json writes it, 1 every character as a
/// `\u` escape (surrogate pairs beyond the BMP), 2 every other character so.
#[derive(Clone, Debug)]
struct Lit(String, u8);

impl Lit {
    fn write(&self, out: &mut String) {
        out.push('"');
        for (i, c) in self.0.chars().enumerate() {
            let escape = match self.1 {
                1 => true,
                2 => i % 2 == 0,
                _ => false,
            };
            if escape {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    // Both cases of hex digits.
                    if i % 3 == 0 {
                        out.push_str(&format!("\\u{u:04X}"));
                    } else {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
            } else {
                let quoted = serde_json::to_string(&c.to_string()).unwrap_or_default();
                out.push_str(&quoted[1..quoted.len() - 1]);
            }
        }
        out.push('"');
    }
}

impl J {
    /// The JSON text, with whitespace between tokens when `ws`.
    fn write(&self, out: &mut String, ws: bool) {
        let gap = |out: &mut String| {
            if ws {
                out.push_str(" \n\t");
            }
        };
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => s.write(out),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    gap(out);
                    item.write(out, ws);
                }
                gap(out);
                out.push(']');
            }
            J::Obj(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    gap(out);
                    k.write(out);
                    gap(out);
                    out.push(':');
                    v.write(out, ws);
                }
                gap(out);
                out.push('}');
            }
        }
    }
}

fn lit(text: impl Strategy<Value = String>) -> impl Strategy<Value = Lit> {
    (
        text,
        prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
    )
        .prop_map(|(s, e)| Lit(s, e))
}

fn text() -> impl Strategy<Value = Lit> {
    lit(prop_oneof![
        "\\PC{0,12}",
        "[a-z \"\\\\/\n\t]{0,8}",
        Just(String::new()),
        Just("é😀\u{1}\u{7f}".to_owned()),
    ])
}

/// Numbers in every form JSON allows, and a few it does not (refused alike).
fn number() -> impl Strategy<Value = J> {
    let forms = prop::sample::select(vec![
        "0",
        "-0",
        "-0.0",
        "0.0",
        "1.0",
        "1e3",
        "1E+3",
        "2.5e-3",
        "-1.5E-300",
        "1e308",
        "4.9e-324",
        "9007199254740993",
        "-9223372036854775808",
        "-9223372036854775809",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "123456789012345678901234567890",
        "2147483647",
        "2147483648",
        "-2147483648",
        "-2147483649",
        "0.1",
        "100000000000000000000e-20",
    ]);
    let broken = prop::sample::select(vec!["1e400", "01", "1.", "-", ".5", "1e", "+1"]);
    prop_oneof![
        8 => forms.prop_map(str::to_owned),
        6 => any::<i64>().prop_map(|n| n.to_string()),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        4 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        3 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
        1 => broken.prop_map(str::to_owned),
    ]
    .prop_map(J::Num)
}

/// Any JSON, shallow.
fn any_json() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        number(),
        text().prop_map(J::Str),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            // Duplicate keys now and then: few short keys.
            prop::collection::vec((lit("[a-c]{0,2}"), inner), 0..4).prop_map(J::Obj),
        ]
    })
}

/// JSON nested 8 to 90 levels deep, under keys a JSON Pointer must escape, some levels
/// with siblings: deep enough that values are carried as text.
fn deep_json() -> impl Strategy<Value = J> {
    let key = prop::sample::select(vec!["a", "", "~", "/", "~1/x~0", "b"]);
    let level = (any::<bool>(), key, 0..2usize, any::<bool>());
    (prop::collection::vec(level, 8..=90), any_json()).prop_map(|(levels, bottom)| {
        levels
            .into_iter()
            .fold(bottom, |inner, (object, key, siblings, after)| {
                if object {
                    let mut m: Vec<(Lit, J)> = (0..siblings)
                        .map(|s| (Lit(format!("s{s}"), 0), J::Num(s.to_string())))
                        .collect();
                    m.insert(usize::from(after).min(m.len()), (Lit(key.into(), 0), inner));
                    J::Obj(m)
                } else {
                    let mut items: Vec<J> = (0..siblings).map(|s| J::Num(s.to_string())).collect();
                    items.insert(usize::from(after).min(items.len()), inner);
                    J::Arr(items)
                }
            })
    })
}

fn other() -> BoxedStrategy<J> {
    prop_oneof![3 => any_json(), 1 => deep_json()].boxed()
}

/// A known key's value: mostly of its type, sometimes any JSON (`null` included), deep
/// often enough that a record has values carried as text at several of its steps.
fn typed(value: impl Strategy<Value = J> + 'static) -> BoxedStrategy<J> {
    prop_oneof![8 => value, 1 => Just(J::Null), 1 => other(), 1 => deep_json()].boxed()
}

fn string() -> BoxedStrategy<J> {
    typed(text().prop_map(J::Str))
}

fn boolean() -> BoxedStrategy<J> {
    typed(any::<bool>().prop_map(J::Bool))
}

/// A key as it may be written: plain mostly, escaped now and then.
fn key(k: &'static str) -> impl Strategy<Value = Lit> {
    prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)].prop_map(move |e| Lit(k.into(), e))
}

/// An object of `known` keys (each present or not), unknown keys, and now and then a key
/// repeated with another value, in any order.
fn object(known: Vec<(&'static str, BoxedStrategy<J>)>) -> BoxedStrategy<J> {
    let names: Vec<&'static str> = known.iter().map(|(k, _)| *k).collect();
    let known: Vec<_> = known
        .into_iter()
        .map(|(k, v)| prop::option::weighted(0.8, (key(k), v)))
        .collect();
    let unknown = prop::collection::vec((lit("x[A-Za-z0-9_~/]{0,6}"), other()), 0..3);
    let repeats = prop::collection::vec(
        (
            prop::sample::select(if names.is_empty() { vec!["x"] } else { names }),
            other(),
        ),
        0..2,
    );
    (known, unknown, prop_oneof![4 => Just(vec![]), 1 => repeats])
        .prop_flat_map(|(known, unknown, repeats)| {
            let mut entries: Vec<(Lit, J)> = known.into_iter().flatten().collect();
            entries.extend(unknown);
            // A repeated unknown key: the first unknown key again, if any.
            if let Some(first) = entries.iter().find(|(k, _)| k.0.starts_with('x')).cloned() {
                entries.push((first.0, J::Null));
            }
            entries.extend(repeats.into_iter().map(|(k, v)| (Lit(k.into(), 0), v)));
            Just(entries).prop_shuffle()
        })
        .prop_map(J::Obj)
        .boxed()
}

fn affected() -> BoxedStrategy<J> {
    object(vec![("name", string()), ("objectType", string())])
}

fn changed() -> BoxedStrategy<J> {
    object(vec![
        ("name", string()),
        ("oldValue", string()),
        ("newValue", string()),
        ("hiddenOldValue", string()),
        ("hiddenNewValue", string()),
    ])
}

fn author() -> BoxedStrategy<J> {
    let operations = prop_oneof![
        Just(J::Null),
        other(),
        deep_json(),
        Just(J::Arr(vec![J::Obj(vec![(
            Lit("operation".into(), 0),
            J::Str(Lit("read".into(), 0)),
        )])])),
    ];
    object(vec![
        ("type", string()),
        ("displayName", string()),
        ("operations", operations.boxed()),
        ("username", string()),
        ("userKey", string()),
        ("accountId", string()),
        ("accountType", string()),
        ("externalCollaborator", boolean()),
        ("isExternalCollaborator", boolean()),
        ("isGuest", boolean()),
        ("publicName", string()),
    ])
}

/// A list of `item`s; now and then one item of another shape, or no list at all.
fn list(item: BoxedStrategy<J>) -> BoxedStrategy<J> {
    prop_oneof![
        8 => prop::collection::vec(item.clone(), 0..3).prop_map(J::Arr),
        1 => (prop::collection::vec(item, 0..2), other(), any::<prop::sample::Index>())
            .prop_map(|(mut v, odd, at)| {
                let i = at.index(v.len() + 1);
                v.insert(i, odd);
                J::Arr(v)
            }),
        1 => other(),
    ]
    .boxed()
}

fn date() -> BoxedStrategy<J> {
    typed(prop_oneof![
        4 => any::<i64>().prop_map(|n| J::Num(n.to_string())),
        4 => (-1_000_000i64..1_000_000).prop_map(|n| J::Num(n.to_string())),
        1 => number(),
    ])
}

fn record() -> BoxedStrategy<J> {
    object(vec![
        ("author", typed(author())),
        ("remoteAddress", string()),
        ("creationDate", date()),
        ("summary", string()),
        ("description", string()),
        ("category", string()),
        ("sysAdmin", boolean()),
        ("superAdmin", boolean()),
        ("affectedObject", typed(affected())),
        ("changedValues", list(changed())),
        ("associatedObjects", list(affected())),
    ])
}

fn int32() -> BoxedStrategy<J> {
    typed(prop_oneof![
        4 => any::<i32>().prop_map(|n| J::Num(n.to_string())),
        2 => (0..2000i32).prop_map(|n| J::Num(n.to_string())),
        1 => number(),
    ])
}

fn links() -> BoxedStrategy<J> {
    prop_oneof![
        8 => prop::collection::vec((lit("[a-z]{0,6}"), prop_oneof![text().prop_map(J::Str), other()]), 0..4)
            .prop_map(J::Obj),
        1 => other(),
    ]
    .boxed()
}

/// A page body: mostly an `AuditRecordArray` with anything Confluence might add, now and
/// then something else (no `results`, `results` of another type, a record that is not
/// an object, text after the body).
fn page() -> impl Strategy<Value = String> {
    let results = prop_oneof![
        12 => prop::collection::vec(record(), 0..4).prop_map(J::Arr),
        1 => prop::collection::vec(prop_oneof![record(), other()], 1..3).prop_map(J::Arr),
        1 => other(),
    ];
    let body = object(vec![
        ("results", results.boxed()),
        ("start", int32()),
        ("limit", int32()),
        ("size", int32()),
        ("_links", links()),
    ]);
    let page = prop_oneof![12 => body, 1 => other()];
    let tail = prop::sample::select(vec!["", "", "", "", " \n", "x", "{}", "]"]);
    (page, any::<bool>(), tail).prop_map(|(page, ws, tail)| {
        let mut out = String::new();
        page.write(&mut out, ws);
        out.push_str(tail);
        out
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn one_pass_writes_the_references_bytes_or_refuses_alike(body in page()) {
        same(body.as_bytes())?;
    }

    #[test]
    fn one_pass_refuses_bytes_alike(body in prop::collection::vec(any::<u8>(), 0..64)) {
        same(&body)?;
    }
}

fn check(body: &[u8]) {
    if let Err(e) = same(body) {
        panic!("{e}");
    }
}

#[test]
fn atlassian_sample_and_simulator_pages_convert_alike() {
    use confluence_sim::{PageSpec, render_page};

    let sample = include_bytes!("../../../tests/fixtures/atlassian-audit-since-sample.json");
    check(sample);
    assert!(encode_page(sample).is_ok());
    for (seed, total, start, limit) in [
        (42, 5000, 0, 1000),
        (7, 300, 0, 250),
        (1, 0, 0, 10),
        (3, 9, 4, 2),
        (11, 2000, 1000, 1000),
    ] {
        let spec = PageSpec {
            seed,
            total,
            start,
            limit,
            ..PageSpec::default()
        };
        let body = render_page(&spec).expect("a simulator page");
        check(&body);
        // Pretty-printed as well: other whitespace, the same page.
        let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        check(&serde_json::to_vec_pretty(&value).expect("serialises"));
    }
}

#[test]
fn refusals_are_the_references() {
    for body in [
        &b"[]"[..],
        b"{}",
        b"{\"results\":5}",
        b"{\"results\":[1]}",
        b"{\"results\":[]",
        b"{\"results\":[]}x",
        b"{\"results\":[{\"author\":{\"type\":1e400}}]}",
        b"{\"results\":[{\"summary\":\"\\ud800\"}]}",
        b"{\"results\":[{\"summary\":\"\xff\"}]}",
        b"{\"results\":[],\"results\":{}}",
        b"",
        b"null",
    ] {
        check(body);
        assert!(encode_page(body).is_err());
    }
}

#[test]
fn records_of_every_length_prefix_size() {
    // A record's length takes one byte, two (the room left for it) or three.
    for len in [0, 100, 127, 128, 16_000, 16_383, 16_384, 70_000, 2_100_000] {
        let summary = "s".repeat(len);
        let body = format!(r#"{{"results":[{{"summary":"{summary}"}},{{}}],"limit":1}}"#);
        check(body.as_bytes());
    }
}

#[test]
fn duplicate_keys_keep_the_last_value_and_every_pointer() {
    let deep = format!("{}1{}", "[".repeat(60), "]".repeat(60));
    let body = format!(
        r#"{{"results":[{{"x":{deep},"x":2,"summary":"a","summary":"b","author":{{"k":{deep},"k":{deep}}}}}],"results":[{{"y":{deep},"y":{deep}}}],"_links":{{"b":1,"a":2,"b":{deep}}},"z":{deep},"z":[]}}"#
    );
    check(body.as_bytes());
}
