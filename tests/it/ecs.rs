//! `--format ecs` through the binary: every line `stream` and `export` write is a JSON
//! document with the required ECS fields, its `@timestamp` the record's, and every field
//! outside `confluence.*` a field of the ECS 8.11 reference with a JSON type it allows.
//! The reference is the field list Elastic ships as TypeScript interfaces in the npm
//! package `@elastic/ecs` (`generated/*.ts`), fetched with `npm pack` when missing.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use audit_gateway::{ConfluenceFlavor, pb};
use confluence_sim::{Flavor, SimulatorConfig};
use serde_json::Value;

use crate::common::{binary, now_ms, seq, sim_and_gateway, stream_records};

/// The package the reference comes from.
const ECS_PACKAGE: &str = "@elastic/ecs@8.11.5";

/// The JSON a TypeScript type of the reference allows.
#[derive(Clone, Debug, PartialEq)]
enum Ts {
    String,
    Number,
    Boolean,
    /// `Record<string, unknown>`: any object.
    Object,
    Array(Box<Ts>),
    /// Any of these.
    Union(Vec<Ts>),
}

impl Ts {
    /// `text` (`string | Array<string>`, `number`, `'8.11.0'`, ...) as a type.
    fn parse(text: &str) -> Ts {
        let text = text.trim();
        let parts = split_top(text, '|');
        if parts.len() > 1 {
            return Ts::Union(parts.iter().map(|p| Ts::parse(p)).collect());
        }
        match text {
            "string" => Ts::String,
            "number" => Ts::Number,
            "boolean" => Ts::Boolean,
            "Record<string, unknown>" => Ts::Object,
            t if t.starts_with('\'') && t.ends_with('\'') => Ts::String,
            // An object written inline (`geo.location`'s `{ lat: number; lon: number }`).
            t if t.starts_with('{') && t.ends_with('}') => Ts::Object,
            t if t.starts_with("Array<") && t.ends_with('>') => {
                Ts::Array(Box::new(Ts::parse(&t["Array<".len()..t.len() - 1])))
            }
            other => panic!("a type the reference parser does not know: {other:?}"),
        }
    }

    /// Whether `v` is of this type.
    fn allows(&self, v: &Value) -> bool {
        match (self, v) {
            (Ts::String, Value::String(_))
            | (Ts::Number, Value::Number(_))
            | (Ts::Boolean, Value::Bool(_))
            | (Ts::Object, Value::Object(_)) => true,
            (Ts::Array(item), Value::Array(items)) => items.iter().all(|x| item.allows(x)),
            (Ts::Union(types), v) => types.iter().any(|t| t.allows(v)),
            _ => false,
        }
    }
}

/// `text` split at `sep` outside `<...>`.
fn split_top(text: &str, sep: char) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// TypeScript source without its comments (`/* ... */` blocks and `//` lines).
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("/*") {
        out.push_str(&rest[..at]);
        rest = rest[at..]
            .find("*/")
            .map_or("", |end| &rest[at + end + 2..]);
    }
    out.push_str(rest);
    out.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A member name as written (`name?`, `'@timestamp'`, `version`), bare.
fn member_name(raw: &str) -> String {
    raw.trim()
        .trim_end_matches('?')
        .trim_matches('\'')
        .trim_matches('"')
        .to_owned()
}

/// Every `export interface Name { ... }` of `source`: its name and its fields as dotted
/// paths with their type text, nested `name?: { ... };` blocks flattened.
fn interfaces(source: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut found = Vec::new();
    let mut current: Option<(String, Vec<(String, String)>)> = None;
    let mut path: Vec<String> = Vec::new();
    for line in strip_comments(source).lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        if current.is_none() {
            if let Some(rest) = line.strip_prefix("export interface ") {
                let name = rest.trim_end_matches('{').trim().to_owned();
                current = Some((name, Vec::new()));
            }
            continue;
        }
        if line == "}" || line == "};" {
            if path.pop().is_none()
                && let Some(done) = current.take()
            {
                found.push(done);
            }
            continue;
        }
        let (name, ty) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("not a member: {line:?}"));
        let name = member_name(name);
        let ty = ty.trim();
        if ty == "{" {
            path.push(name);
        } else if let Some((_, fields)) = current.as_mut() {
            let mut full = path.clone();
            full.push(name);
            fields.push((full.join("."), ty.trim_end_matches(';').to_owned()));
        }
    }
    found
}

/// The top level of `index.ts`'s `export type Ecs = A & B & { name?: EcsX; ... }`: the
/// interfaces at the root, and each field set's name with its interface.
fn top_level(index: &str) -> (Vec<String>, Vec<(String, String)>) {
    let index = strip_comments(index);
    let at = index
        .find("export type Ecs =")
        .expect("index.ts declares the Ecs type");
    let decl = &index[at + "export type Ecs =".len()..];
    let open = decl.find('{').expect("a field set block");
    let roots = decl[..open]
        .split('&')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let close = decl.find("};").expect("the block ends");
    let sets = decl[open + 1..close]
        .split(';')
        .filter_map(|m| m.split_once(':'))
        .map(|(name, ty)| (member_name(name), ty.trim().to_owned()))
        .collect();
    (roots, sets)
}

/// Every ECS field by its dotted name, with its type.
fn parse_reference(generated: &Path) -> BTreeMap<String, Ts> {
    let mut by_interface: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for entry in std::fs::read_dir(generated).expect("the generated directory") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".ts") || name == "index.ts" || name == "ecs_flat.ts" {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("readable");
        by_interface.extend(interfaces(&source));
    }
    let index = std::fs::read_to_string(generated.join("index.ts")).expect("index.ts");
    let (roots, sets) = top_level(&index);
    let mut fields = BTreeMap::new();
    let mut add = |prefix: Option<&str>, interface: &str| {
        let members = by_interface
            .get(interface)
            .unwrap_or_else(|| panic!("no interface {interface} in the reference"));
        for (path, ty) in members {
            let name = match prefix {
                Some(p) => format!("{p}.{path}"),
                None => path.clone(),
            };
            fields.insert(name, Ts::parse(ty));
        }
    };
    for root in &roots {
        add(None, root);
    }
    for (set, interface) in &sets {
        add(Some(set), interface);
    }
    fields
}

/// Where the reference package is unpacked.
fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ecs-reference")
}

/// The reference's fields, the package fetched with `npm pack` first when it is not
/// under `target/ecs-reference/package/`.
fn reference() -> &'static BTreeMap<String, Ts> {
    static FIELDS: OnceLock<BTreeMap<String, Ts>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let dir = reference_dir();
        let generated = dir.join("package/generated");
        if !generated.join("index.ts").exists() {
            fetch_reference(&dir);
        }
        let fields = parse_reference(&generated);
        // A parser that found next to nothing would let every document pass.
        assert!(
            fields.len() > 1000,
            "only {} fields parsed from {}",
            fields.len(),
            generated.display()
        );
        fields
    })
}

/// `npm pack` of the package into `dir`, unpacked there: in a directory of its own first,
/// renamed into place, so a run cut short leaves nothing half unpacked.
fn fetch_reference(dir: &Path) {
    let work = dir.join(format!("fetch-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("a directory for the package");
    let packed = Command::new("npm")
        .args(["pack", ECS_PACKAGE])
        .current_dir(&work)
        .output()
        .unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&work);
            panic!(
                "npm is needed to fetch the ECS field reference ({ECS_PACKAGE}) into {}: {e}; \
                 install npm, or unpack the package there by hand",
                dir.display()
            )
        });
    assert!(
        packed.status.success(),
        "npm pack {ECS_PACKAGE} failed: {}",
        String::from_utf8_lossy(&packed.stderr)
    );
    let tarball = String::from_utf8_lossy(&packed.stdout)
        .lines()
        .last()
        .map(|l| l.trim().to_owned())
        .expect("npm pack names the tarball");
    let untarred = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .current_dir(&work)
        .status()
        .expect("tar runs");
    assert!(untarred.success(), "tar xzf {tarball} failed");
    // Another test process may have won the race; its copy is as good.
    let _ = std::fs::rename(work.join("package"), dir.join("package"));
    let _ = std::fs::remove_dir_all(&work);
}

/// Problems with `doc` as an ECS document: fields outside `confluence.*` the reference
/// does not have, or of a JSON type it does not allow.
fn ecs_violations(doc: &Value) -> Vec<String> {
    let fields = reference();
    let mut problems = Vec::new();
    fn walk(fields: &BTreeMap<String, Ts>, path: &str, v: &Value, problems: &mut Vec<String>) {
        if let Some(ty) = fields.get(path) {
            if !ty.allows(v) {
                problems.push(format!("{path}: {v} is no {ty:?}"));
            }
            return;
        }
        match v {
            Value::Object(m) if !path.is_empty() || !m.is_empty() => {
                for (k, x) in m {
                    if path.is_empty() && k == "confluence" {
                        continue;
                    }
                    let name = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(fields, &name, x, problems);
                }
            }
            _ => problems.push(format!("{path}: no such ECS field")),
        }
    }
    walk(fields, "", doc, &mut problems);
    problems
}

/// Epoch milliseconds of an ISO 8601 UTC time with milliseconds
/// (`2025-11-27T16:29:17.123Z`), or why not.
fn iso_ms(text: &str) -> Result<i64, String> {
    let b = text.as_bytes();
    if b.len() != 24 || b[10] != b'T' || b[19] != b'.' || b[23] != b'Z' {
        return Err(format!("{text:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"));
    }
    let t: prost_types::Timestamp = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    Ok(t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

/// Checks one line of ECS output: JSON, the required fields with their types, a known
/// ECS field for everything outside `confluence.*`; returns the document.
fn check_line(line: &str, dialect: &str) -> Value {
    let doc: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let problems = ecs_violations(&doc);
    assert!(problems.is_empty(), "{problems:#?} in {doc:#}");
    iso_ms(doc["@timestamp"].as_str().expect("@timestamp is text")).expect("@timestamp");
    assert_eq!(doc["ecs"]["version"], "8.11.0", "{doc}");
    let event = &doc["event"];
    assert_eq!(event["kind"], "event", "{doc}");
    assert_eq!(event["module"], "confluence", "{doc}");
    assert_eq!(event["dataset"], "confluence.audit", "{doc}");
    let types = event["type"].as_array().expect("event.type is an array");
    assert!(
        !types.is_empty() && types.iter().all(Value::is_string),
        "{doc}"
    );
    if let Some(c) = event.get("category") {
        assert!(
            c.as_array().is_some_and(|c| c.iter().all(Value::is_string)),
            "{doc}"
        );
    }
    assert_eq!(doc["confluence"]["audit"]["dialect"], dialect, "{doc}");
    doc
}

/// Runs the binary with `args`; its standard output, which must be a success's.
async fn run(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || binary().args(&args).output())
        .await
        .expect("joined")
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `--format ecs` on `stream` for the whole log of a simulator of `flavor`: each line
/// checked, its `@timestamp` the record's (by the simulator's sequence number).
async fn stream_as_ecs(flavor: Flavor) -> Vec<Value> {
    let data_center = flavor == Flavor::DataCenter;
    let sim = SimulatorConfig {
        records: 150,
        seed: 7,
        flavor,
        base_path: if data_center {
            String::new()
        } else {
            "/wiki".to_owned()
        },
        ..Default::default()
    };
    let (_sim, gw) = sim_and_gateway(sim, |c| {
        if data_center {
            c.upstream.flavor = ConfluenceFlavor::DataCenter;
        }
    })
    .await;
    let window = pb::StreamSinceRequest {
        number: Some(7),
        units: pb::TimeUnit::Days as i32,
        ..Default::default()
    };
    let records = stream_records(&mut gw.client.clone(), window).await;
    let dates: HashMap<u64, i64> = records.iter().map(|r| (seq(r), r.creation_date)).collect();
    let output = run([
        "stream",
        "--gateway",
        &format!("http://{}", gw.addr),
        "--number",
        "7",
        "--units",
        "DAYS",
        "--format",
        "ecs",
    ]
    .map(str::to_owned)
    .to_vec())
    .await;
    let dialect = if data_center { "data_center" } else { "cloud" };
    let docs: Vec<Value> = output.lines().map(|l| check_line(l, dialect)).collect();
    assert_eq!(docs.len(), records.len(), "one line per record");
    for doc in &docs {
        // The summary ends with the simulator's sequence number.
        let summary = if data_center {
            &doc["confluence"]["audit"]["summary"]
        } else {
            &doc["event"]["action"]
        };
        let n: u64 = summary
            .as_str()
            .and_then(|s| s.rsplit_once('#'))
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or_else(|| panic!("no sequence number in {doc}"));
        let ms = iso_ms(doc["@timestamp"].as_str().unwrap_or_default()).expect("@timestamp");
        assert_eq!(Some(&ms), dates.get(&n), "@timestamp of record {n}: {doc}");
    }
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_writes_valid_ecs_documents_for_a_cloud_site() {
    let docs = stream_as_ecs(Flavor::Cloud).await;
    // The simulator's addresses are IPs, and its authors have names.
    assert!(docs.iter().all(|d| d["source"]["ip"].is_string()));
    assert!(docs.iter().any(|d| d["user"]["full_name"].is_string()));
    assert!(docs.iter().all(|d| d["event"].get("original").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_writes_valid_ecs_documents_for_a_data_center_site() {
    let docs = stream_as_ecs(Flavor::DataCenter).await;
    assert!(docs.iter().all(|d| d["service"]["address"].is_string()));
    // Every simulated type has an actionI18nKey, which is the action.
    assert!(docs.iter().all(|d| {
        d["event"]["action"]
            .as_str()
            .is_some_and(|a| a.contains(".summary."))
    }));
    assert!(docs.iter().any(|d| d["event"]["outcome"] == "failure"));
    assert!(docs.iter().any(|d| d["user"]["name"].is_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_valid_ecs_documents_with_the_original_on_request() {
    let (_sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 300,
            seed: 11,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let now = now_ms();
    let at = |ms: i64| {
        prost_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: 0,
        }
        .to_string()
    };
    let (from, to) = (at(now - 600_000), at(now - 60_000));
    let dir = std::env::temp_dir().join(format!("ecs-export-{}-{now}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let mut lines_of = Vec::new();
    for original in [false, true] {
        let out = dir.join(format!("out-{original}.ndjson"));
        let mut args: Vec<String> = [
            "export",
            "--gateway",
            &format!("http://{}", gw.addr),
            "--from",
            &from,
            "--to",
            &to,
            "--lag",
            "1s",
            "--format",
            "ecs",
            "--checkpoint-file",
        ]
        .map(str::to_owned)
        .to_vec();
        args.push(
            dir.join(format!("cp-{original}.json"))
                .display()
                .to_string(),
        );
        args.push("--output".to_owned());
        args.push(out.display().to_string());
        if original {
            args.push("--ecs-original".to_owned());
        }
        run(args).await;
        let text = std::fs::read_to_string(&out).expect("the export");
        lines_of.push(text.lines().map(str::to_owned).collect::<Vec<_>>());
    }
    let (plain, with_original) = (&lines_of[0], &lines_of[1]);
    assert!(plain.len() > 50, "the range holds records: {}", plain.len());
    assert_eq!(plain.len(), with_original.len());
    let (from_ms, to_ms) = (iso_ms_of(&from), iso_ms_of(&to));
    let mut last = i64::MIN;
    for (line, line_with) in plain.iter().zip(with_original) {
        let doc = check_line(line, "cloud");
        let ms = iso_ms(doc["@timestamp"].as_str().unwrap_or_default()).expect("@timestamp");
        assert!((from_ms..to_ms).contains(&ms), "{ms} outside the range");
        assert!(ms >= last, "oldest first");
        last = ms;
        assert!(doc["event"].get("original").is_none());
        let mut with = check_line(line_with, "cloud");
        let original: Value = serde_json::from_str(
            with["event"]["original"]
                .as_str()
                .expect("event.original is text"),
        )
        .expect("event.original is the record's JSON");
        assert_eq!(original["creationDate"], ms, "{line_with}");
        assert_eq!(original["summary"], doc["event"]["action"], "{line_with}");
        // Apart from it, the same document.
        if let Some(e) = with["event"].as_object_mut() {
            e.remove("original");
        }
        assert_eq!(with, doc);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Epoch milliseconds of an RFC 3339 time.
fn iso_ms_of(text: &str) -> i64 {
    let t: prost_types::Timestamp = text.parse().expect("an RFC 3339 time");
    t.seconds * 1000 + i64::from(t.nanos / 1_000_000)
}

#[test]
fn the_reference_check_can_fail() {
    let fields = reference();
    for (name, ty) in [
        ("@timestamp", Ts::String),
        ("event.action", Ts::String),
        ("user.full_name", Ts::String),
        ("source.port", Ts::Number),
    ] {
        assert_eq!(fields.get(name), Some(&ty), "{name}");
    }
    assert!(fields["event.type"].allows(&serde_json::json!(["info"])));
    let bad = serde_json::json!({
        "@timestamp": "2025-11-27T16:29:17.123Z",
        "event": { "kind": "event", "actions": "x", "type": [1] },
        "source": { "port": "80" },
        "confluence": { "anything": { "goes": 1 } },
    });
    let mut problems = ecs_violations(&bad);
    problems.sort();
    assert_eq!(
        problems,
        [
            "event.actions: no such ECS field",
            "event.type: [1] is no Union([String, Array(String)])",
            "source.port: \"80\" is no Number",
        ]
    );
    assert!(iso_ms("2025-11-27T16:29:17Z").is_err());
    assert_eq!(iso_ms("1970-01-01T00:00:01.002Z"), Ok(1002));
}

/// The shipper's own output: `follow --format ecs` over every record variant the
/// simulator makes (its Data Center shapes repeat every 420 records), for both dialects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_writes_valid_ecs_documents_for_every_record_variant() {
    for flavor in [Flavor::Cloud, Flavor::DataCenter] {
        let data_center = flavor == Flavor::DataCenter;
        let (_sim, gw) = sim_and_gateway(
            SimulatorConfig {
                records: 420,
                seed: 5,
                flavor,
                base_path: if data_center {
                    String::new()
                } else {
                    "/wiki".to_owned()
                },
                ..Default::default()
            },
            |c| {
                if data_center {
                    c.upstream.flavor = ConfluenceFlavor::DataCenter;
                }
            },
        )
        .await;
        let gateway = format!("http://{}", gw.addr);
        let output = run([
            "follow",
            "--gateway",
            &gateway,
            "--since",
            "1h",
            "--max-records",
            "420",
            "--lag",
            "0s",
            "--poll-interval",
            "1s",
            "--format",
            "ecs",
        ]
        .map(str::to_owned)
        .to_vec())
        .await;
        let dialect = if data_center { "data_center" } else { "cloud" };
        let docs: Vec<Value> = output.lines().map(|l| check_line(l, dialect)).collect();
        assert_eq!(docs.len(), 420, "{flavor:?}: one document per record");
        let stamps: Vec<&str> = docs
            .iter()
            .filter_map(|d| d["@timestamp"].as_str())
            .collect();
        assert!(stamps.is_sorted(), "{flavor:?}: oldest first");
    }
}
