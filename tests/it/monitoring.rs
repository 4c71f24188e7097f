//! The monitoring mixin (`deploy/monitoring/`) held to the gateway it watches: promtool
//! checks and unit-tests the alert rules and parses the dashboard's queries, the dashboard
//! is well formed, every alert's runbook link lands on a heading of docs/alerts.md, and
//! every metric the dashboard or the rules name is one a running gateway exports.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use audit_gateway::pb;
use confluence_sim::{Fault, SimulatorConfig};
use serde_json::Value;
use tonic::{Code, Request, metadata::MetadataValue};

use crate::common::{now_ms, sim_and_gateway};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn monitoring_dir() -> PathBuf {
    Path::new(REPO).join("deploy/monitoring")
}

fn read(relative: &str) -> String {
    let path = Path::new(REPO).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/monitoring/dashboard.json"))
        .expect("deploy/monitoring/dashboard.json is valid JSON")
}

// ---------------------------------------------------------------------------------------
// promtool

/// promtool, from PATH or /usr/bin. Missing is a failure, not a skip: the rules would
/// go untested without anyone noticing.
fn promtool() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"));
    on_path
        .chain([PathBuf::from("/usr/bin/promtool")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not on PATH nor in /usr/bin: scripts/test installs it (Debian \
                 package prometheus); run scripts/test, or apt-get install prometheus"
            )
        })
}

/// Runs promtool with `args` in `dir`; panics with its output unless it exits 0.
fn run_promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let dir = monitoring_dir();
    let checked = run_promtool(&dir, &["check", "rules", "alerts.yaml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_promtool(&dir, &["test", "rules", "alerts_test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn promtool_parses_every_dashboard_query() {
    // Grafana's variables made concrete, then each query as a recording rule: promtool
    // parses rules offline, so a query Prometheus would refuse fails here.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, expr) in dashboard_exprs(&dashboard()).iter().enumerate() {
        let concrete = expr
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$job", ".+")
            .replace("$instance", ".+");
        // A JSON string is a YAML double-quoted scalar.
        let quoted = serde_json::to_string(&concrete).expect("a string encodes");
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {quoted}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("audit-gateway-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("dashboard_rules.yaml"), &rules).expect("write rules");
    let checked = run_promtool(&dir, &["check", "rules", "dashboard_rules.yaml"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(checked.contains("SUCCESS"), "{checked}\n{rules}");
}

// ---------------------------------------------------------------------------------------
// The dashboard's shape

/// Every panel, those inside rows included; rows themselves hold no query.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("a panels array") {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

/// The PromQL of every panel target and of every query variable, as written.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .expect("a query variable has a query");
        exprs.extend(variable_expr(query).map(str::to_owned));
    }
    exprs
}

/// The PromQL inside a Grafana query variable: `label_values(selector, label)` gives its
/// selector (`label_values(label)` has none), `query_result(expr)` its expression.
fn variable_expr(query: &str) -> Option<&str> {
    let query = query.trim();
    if let Some(args) = query
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return args.rsplit_once(',').map(|(selector, _)| selector.trim());
    }
    if let Some(expr) = query
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Some(expr);
    }
    Some(query)
}

#[test]
fn the_dashboard_is_json_whose_every_panel_has_a_datasource_and_a_query() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_i64().expect("a schemaVersion") >= 36,
        "schemaVersion {}",
        d["schemaVersion"]
    );
    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for name in ["job", "instance"] {
        assert_eq!(var(name)["type"], "query", "${name} is a query variable");
    }
    let all = panels(&d);
    assert!(all.len() >= 15, "{} panels", all.len());
    let mut titles = BTreeSet::new();
    for p in all {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(titles.insert(title), "two panels titled {title:?}");
        let ds = &p["datasource"];
        assert!(
            ds["uid"] == "${datasource}" || ds == "${datasource}",
            "{title}: datasource {ds} is not the ${{datasource}} variable"
        );
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title}: no target");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            assert!(
                expr.contains("$job") && expr.contains("$instance"),
                "{title}: {expr} ignores the job/instance variables"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The alert rules' annotations

/// Each alert of a rules file: its name and the lines of its entry.
fn alerts(yaml: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in yaml.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            out.push((name.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// The anchor GitHub gives a Markdown heading: lower case, spaces as dashes, letters,
/// digits, `-` and `_` kept.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_section() {
    let doc = read("docs/alerts.md");
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    let rules = alerts(&read("deploy/monitoring/alerts.yaml"));
    assert!(rules.len() >= 7, "{} alerts", rules.len());
    for (name, body) in &rules {
        for key in ["summary:", "description:", "runbook_url:", "severity:"] {
            assert!(body.contains(key), "{name} has no {key}");
        }
        let want = format!("docs/alerts.md#{}", name.to_lowercase());
        assert!(
            body.contains(&format!("runbook_url: \"{want}\"")),
            "{name}'s runbook_url is not {want}"
        );
        assert!(
            anchors.contains(&name.to_lowercase()),
            "docs/alerts.md has no heading for {name}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Metric names: those the mixin uses against those a gateway exports

/// Words that stand bare in PromQL without being metric names: aggregations (their `(`
/// may come after a `by` clause), binary and set operators, modifiers, and numbers.
/// Functions need no list: a `(` follows their name.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesised list of label names, not expressions.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Series Prometheus makes itself, which no exporter exports.
const SYNTHETIC: &[&str] = &["up"];

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index after the string that opens at `i` (`"`, `'` with escapes, or raw `` ` ``).
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        j += if quote != '`' && chars[j] == '\\' {
            2
        } else {
            1
        };
    }
    j + 1
}

/// The index after the `close` that ends what opens at `i`, strings inside skipped.
fn skip_to(chars: &[char], i: usize, close: char) -> usize {
    let mut j = i + 1;
    while j < chars.len() && chars[j] != close {
        j = if matches!(chars[j], '"' | '\'' | '`') {
            skip_string(chars, j)
        } else {
            j + 1
        };
    }
    j + 1
}

/// The metric names a PromQL expression reads: identifiers standing bare or before a
/// `{` or `[`, less functions (a `(` follows them), keywords, label names (inside `{}`
/// and `by (…)`-like lists), strings, durations, numbers and Grafana's `$variables`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_to(&chars, i, '}');
        } else if c == '[' {
            i = skip_to(&chars, i, ']');
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_to(&chars, i, '}');
            } else {
                while i < chars.len() && is_word_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == '.' {
            // 0.95, 5m, 1e3, 0x1f: a number or a duration, never a name.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && is_word_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_lowercase();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&lower.as_str()) {
                if call {
                    i = skip_to(&chars, next, ')');
                }
            } else if !call && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The expression of each `expr:` of a rules file, inline (plain or quoted) or a block
/// scalar (`|`, `>`) of the lines indented deeper than its key. Enough for the rules this
/// repository writes; the caller checks one was found per rule, so a form this misses
/// fails loudly.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let key = line.trim_start().trim_start_matches("- ");
        i += 1;
        let Some(rest) = key.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut block = Vec::new();
            while i < lines.len() {
                let l = lines[i];
                let deeper = l.len() - l.trim_start().len() > indent;
                if !(l.trim().is_empty() || deeper) {
                    break;
                }
                block.push(l.trim());
                i += 1;
            }
            exprs.push(block.join("\n").trim().to_owned());
        } else if let Some(quoted) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            exprs.push(quoted.replace("\\\"", "\"").replace("\\\\", "\\"));
        } else if let Some(quoted) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            exprs.push(quoted.replace("''", "'"));
        } else {
            exprs.push(rest.to_owned());
        }
    }
    exprs
}

/// The sample names an exposition (Prometheus text or OpenMetrics) exports: every
/// sample's name, and the names each `# TYPE` family gives its samples, so a family
/// announced without a sample counts too. A counter `foo` exports `foo_total`, never
/// `foo`; a histogram `foo_bucket`, `foo_sum`, `foo_count`. A `# HELP` without a `# TYPE`
/// is of unknown type: its name alone.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut typed = BTreeSet::new();
    let mut helped = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
            typed.insert(family.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.extend(rest.split_whitespace().next().map(str::to_owned));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            if end > 0 {
                names.insert(line[..end].to_owned());
            }
        }
    }
    names.extend(helped.difference(&typed).cloned());
    names
}

/// The names in `used` that `exposition` does not export, Prometheus' own series aside.
fn not_exported(used: &BTreeSet<String>, exposition: &str) -> Vec<String> {
    let exported = exported_names(exposition);
    used.iter()
        .filter(|n| !SYNTHETIC.contains(&n.as_str()) && !exported.contains(*n))
        .cloned()
        .collect()
}

/// Every metric name the dashboard and the alert rules use.
fn mixin_metric_names() -> BTreeSet<String> {
    let yaml = read("deploy/monitoring/alerts.yaml");
    let exprs = rule_exprs(&yaml);
    let rules = yaml
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- alert:") || t.starts_with("- record:")
        })
        .count();
    assert_eq!(exprs.len(), rules, "one expr read per rule: {exprs:#?}");
    exprs
        .iter()
        .map(String::as_str)
        .chain(dashboard_exprs(&dashboard()).iter().map(String::as_str))
        .flat_map(metric_names)
        .collect()
}

const TOKEN: &str = "monitoring-token";

/// `message` as the caller of `TOKEN`.
fn as_caller<T>(message: T) -> Request<T> {
    let mut req = Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {TOKEN}")).expect("ascii");
    req.metadata_mut().insert("authorization", value);
    req
}

/// A scrape of the gateway's metrics listener at `addr`.
async fn scrape(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("a body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let used = mixin_metric_names();
    assert!(used.len() >= 20, "too few names read: {used:?}");
    // A labelled family is exported only once it has a child, so the calls below reach
    // each: a named caller (caller_*), capped at one stream (caller_refusals), and an
    // upstream failure retried (upstream_failures).
    let dir = std::env::temp_dir().join(format!("audit-gateway-monitoring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tokens = dir.join("callers");
    std::fs::write(&tokens, format!("monitoring:{TOKEN} max-streams=1\n")).expect("write");
    let (sim, mut gw) = sim_and_gateway(
        SimulatorConfig {
            records: 200,
            ..Default::default()
        },
        |c| {
            c.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            c.caller_tokens_file = Some(tokens.clone());
        },
    )
    .await;
    let metrics = gw.metrics.expect("metrics are served");

    sim.push_faults([Fault::Status {
        code: 503,
        retry_after: None,
        body: None,
    }]);
    gw.client
        .get_since(as_caller(pb::GetSinceRequest {
            limit: Some(5),
            ..Default::default()
        }))
        .await
        .expect("a page, after one retry");
    let mut stream = gw
        .client
        .stream_since(as_caller(pb::StreamSinceRequest {
            page_size: Some(20),
            max_records: Some(30),
            ..Default::default()
        }))
        .await
        .expect("a stream")
        .into_inner();
    let mut streamed = 0;
    while let Some(m) = stream.message().await.expect("the stream ends OK") {
        streamed += m.records.len();
    }
    assert_eq!(streamed, 30);

    // A follower, held open while a second stream is refused and the metrics scraped.
    let since = now_ms() - 60_000;
    let mut follow = gw
        .client
        .follow(as_caller(pb::FollowRequest {
            from: Some(pb::follow_request::From::Since(prost_types::Timestamp {
                seconds: since.div_euclid(1000),
                nanos: 0,
            })),
            poll_interval: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            lag: Some(prost_types::Duration::default()),
            ..Default::default()
        }))
        .await
        .expect("a follower")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(30), follow.message())
        .await
        .expect("a first message within 30 s")
        .expect("the follower goes on")
        .expect("a message");
    let refused = gw
        .client
        .stream_since(as_caller(pb::StreamSinceRequest::default()))
        .await
        .map(|_| ())
        .expect_err("one stream at a time");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    let text = scrape(metrics).await;
    drop(follow);
    let _ = std::fs::remove_dir_all(&dir);
    let missing = not_exported(&used, &text);
    assert!(
        missing.is_empty(),
        "deploy/monitoring uses metrics the gateway does not export: {missing:?}\n\
         exported:\n{text}"
    );
}

#[test]
fn promql_names_are_read_past_functions_labels_durations_and_variables() {
    let expr = r#"histogram_quantile(0.95, sum by (grpc_method, le) (rate(a_seconds_bucket{job=~"$job", code!="x{y}"}[$__rate_interval])))
        / ignoring (caller) group_left sum without(le) (b_total offset 5m) > bool 1e3
        or on () vector(0) and absent(up{job="g"} == 1) unless c_gauge
        + label_replace(d_total[5m:1m], "x", "$1", "y", "(.*)") * ${factor} * Inf"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(
        names,
        ["a_seconds_bucket", "b_total", "c_gauge", "d_total", "up"]
    );
    assert_eq!(
        variable_expr(r#"label_values(m_total{job=~"$job", x="a,b"}, instance)"#),
        Some(r#"m_total{job=~"$job", x="a,b"}"#)
    );
    assert_eq!(variable_expr("label_values(job)"), None);
}

#[test]
fn rule_expressions_are_read_inline_quoted_and_as_blocks() {
    let yaml = r#"
groups:
  - name: g
    rules:
      - alert: A
        expr: up == 0
        for: 5m
      - alert: B
        expr: "rate(x_total{a=\"b\"}[5m]) > 0"
      - record: c:sum
        expr: 'sum(y_total{a=''b''})'
      - alert: D
        expr: |
          sum(z_total)
            > 1
        labels:
          severity: warning
      - alert: E
        expr: >-
          w_gauge > 2
"#;
    assert_eq!(
        rule_exprs(yaml),
        [
            "up == 0",
            r#"rate(x_total{a="b"}[5m]) > 0"#,
            "sum(y_total{a='b'})",
            "sum(z_total)\n> 1",
            "w_gauge > 2",
        ]
    );
}

#[test]
fn the_checker_catches_a_misspelt_or_mistyped_name() {
    let exposition = "\
# HELP audit_gateway_redis_errors Redis operations that failed.
# TYPE audit_gateway_redis_errors counter
audit_gateway_redis_errors_total 0
# HELP audit_gateway_caller_calls Calls by caller.
# TYPE audit_gateway_caller_calls counter
# HELP audit_gateway_cache_bytes Bytes.
# TYPE audit_gateway_cache_bytes gauge
audit_gateway_cache_bytes 12
# HELP audit_gateway_grpc_server_handling_seconds Duration.
# TYPE audit_gateway_grpc_server_handling_seconds histogram
# EOF
";
    let used =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| (*n).to_owned()).collect() };
    // Right names, a labelled counter with no sample yet among them.
    let fine = used(&[
        "audit_gateway_redis_errors_total",
        "audit_gateway_caller_calls_total",
        "audit_gateway_cache_bytes",
        "audit_gateway_grpc_server_handling_seconds_bucket",
        "up",
    ]);
    assert!(not_exported(&fine, exposition).is_empty());
    // A misspelling, a counter without `_total`, a gauge with it, a histogram read bare.
    let wrong = used(&[
        "audit_gateway_redis_erors_total",
        "audit_gateway_redis_errors",
        "audit_gateway_cache_bytes_total",
        "audit_gateway_grpc_server_handling_seconds",
    ]);
    assert_eq!(not_exported(&wrong, exposition).len(), 4);
    // And through the extraction, from a dashboard-like query.
    let names = metric_names("sum(rate(audit_gateway_redis_erors_total{job=~\"$job\"}[5m]))");
    assert_eq!(
        not_exported(&names, exposition),
        ["audit_gateway_redis_erors_total"]
    );
}
