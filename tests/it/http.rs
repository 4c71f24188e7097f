//! HTTP/JSON read access (`--http-listen`) through curl and a plain Python HTTP client:
//! a page in Confluence's own JSON, a stream and a follow as NDJSON, with caller tokens;
//! no token is 401, a bad parameter 400 naming it.

use std::{net::SocketAddr, process::Command};

use confluence_sim::SimulatorConfig;
use serde_json::Value;

use crate::common::{TestGateway, now_ms, spawn_gateway, spawn_simulator, test_config};

const TOKEN: &str = "zq-http-token";

/// A simulator with `records`, and a gateway serving HTTP/JSON to one caller.
async fn gateway(records: usize) -> (confluence_sim::SimulatorHandle, TestGateway, SocketAddr) {
    let sim = spawn_simulator(SimulatorConfig {
        records,
        ..Default::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("http-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tokens = dir.join("callers");
    std::fs::write(&tokens, format!("siem:{TOKEN}\n")).expect("write");
    let mut config = test_config(&sim.base_url());
    config.caller_tokens_file = Some(tokens);
    config.http_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let gw = spawn_gateway(config).await;
    let http = gw.http.expect("an HTTP address");
    (sim, gw, http)
}

/// `curl` for `path`, with the caller's token when `authorized`: (status, body).
async fn curl(http: SocketAddr, path: &str, authorized: bool) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-w", "\n%{http_code}"]);
    if authorized {
        c.args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
    }
    c.arg(format!("http://{http}{path}"));
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .expect("joined")
        .expect("curl runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let (body, code) = text.rsplit_once('\n').expect("the status line");
    (code.parse().expect("a status"), body.to_owned())
}

fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_a_page_a_stream_and_a_follow_with_a_caller_token() {
    let (_sim, _gw, http) = gateway(120).await;

    let (code, body) = curl(http, "/v1/audit/since?number=1&units=DAYS&limit=50", true).await;
    assert_eq!(code, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("JSON");
    // Confluence's own AuditRecordArray shape.
    assert_eq!(page["results"].as_array().map(Vec::len), Some(50));
    assert!(page["results"][0]["creationDate"].is_i64());
    assert_eq!(page["limit"], 50);

    let (code, body) = curl(
        http,
        "/v1/audit/stream?number=1&units=DAYS&pageSize=40",
        true,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let all = lines(&body);
    let (last, records) = all.split_last().expect("lines");
    assert_eq!(records.len(), 120, "every record, one per line");
    assert!(last["resumeToken"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        records
            .windows(2)
            .all(|w| w[0]["creationDate"].as_i64() >= w[1]["creationDate"].as_i64()),
        "newest first"
    );

    let since = now_ms() - 3_600_000;
    let path = format!(
        "/v1/audit/follow?since={}&maxRecords=30&lag=0s",
        prost_types::Timestamp {
            seconds: since / 1000,
            nanos: 0
        }
    );
    let (code, body) = curl(http, &path, true).await;
    assert_eq!(code, 200, "{body}");
    let all = lines(&body);
    let records: Vec<&Value> = all
        .iter()
        .filter(|l| l.get("creationDate").is_some())
        .collect();
    assert_eq!(records.len(), 30, "exactly maxRecords");
    assert!(
        all.last().is_some_and(|l| l["checkpoint"].is_string()),
        "a checkpoint after the last records"
    );
    assert!(
        records
            .windows(2)
            .all(|w| w[0]["creationDate"].as_i64() <= w[1]["creationDate"].as_i64()),
        "oldest first"
    );
}

#[tokio::test]
async fn no_token_is_401_and_a_bad_parameter_is_400_naming_it() {
    let (sim, _gw, http) = gateway(10).await;
    let (code, body) = curl(http, "/v1/audit/since", false).await;
    assert_eq!(code, 401, "{body}");
    let error: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(error["error"]["code"], "UNAUTHENTICATED");
    let (code, body) = curl(http, "/v1/audit/stream", false).await;
    assert_eq!(code, 401, "{body}");

    let (code, body) = curl(http, "/v1/audit/since?limit=lots", true).await;
    assert_eq!(code, 400, "{body}");
    let error: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(error["error"]["field"], "limit");
    // Validated by the gRPC edge as for any caller: the field is named the proto's way.
    let (code, body) = curl(http, "/v1/audit/since?limit=5000", true).await;
    assert_eq!(code, 400, "{body}");
    let error: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(error["error"]["field"], "limit");
    let (code, _) = curl(http, "/v1/audit/nothing", true).await;
    assert_eq!(code, 404);
    assert_eq!(sim.request_count(), 0, "nothing reached Confluence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_python_http_client_reads_a_page_and_a_stream() {
    let (_sim, _gw, http) = gateway(75).await;
    let script = format!(
        r#"
import json, urllib.request
def get(path):
    req = urllib.request.Request("http://{http}" + path, headers={{"Authorization": "Bearer {TOKEN}"}})
    with urllib.request.urlopen(req) as r:
        return r.status, r.read().decode()
status, body = get("/v1/audit/since?limit=10")
page = json.loads(body)
status2, body2 = get("/v1/audit/stream?pageSize=20")
lines = [json.loads(l) for l in body2.splitlines()]
print(json.dumps({{"page": len(page["results"]), "stream": len(lines) - 1, "token": bool(lines[-1].get("resumeToken"))}}))
"#
    );
    let out =
        tokio::task::spawn_blocking(move || Command::new("python3").arg("-c").arg(script).output())
            .await
            .expect("joined")
            .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(got["page"], 10);
    assert_eq!(got["stream"], 75);
    assert_eq!(got["token"], true);
}

/// A client that hangs up on a quiet follower ends it then, not at its next message (an
/// hour away here): its stream slot is free again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_ends_its_follower_at_once() {
    let sim = spawn_simulator(SimulatorConfig {
        records: 5,
        ..Default::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("http-hang-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tokens = dir.join("callers");
    std::fs::write(&tokens, format!("siem:{TOKEN} max-streams=1\n")).expect("write");
    let mut config = test_config(&sim.base_url());
    config.caller_tokens_file = Some(tokens);
    config.http_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let gw = spawn_gateway(config).await;
    let http = gw.http.expect("an HTTP address");
    let quiet = "/v1/audit/follow?pollInterval=3600s&lag=0s";
    // The first follower: curl gives up after a second, taking the caller's one slot.
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "-m",
        "1",
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
    ])
    .arg(format!("http://{http}{quiet}"));
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .expect("joined")
        .expect("curl runs");
    assert!(!out.status.success(), "curl timed out, hanging up");
    // Its slot comes back within seconds: a second follower gets in.
    let started = std::time::Instant::now();
    loop {
        let (code, body) = curl(
            http,
            "/v1/audit/follow?maxRecords=1&since=2020-01-01T00:00:00Z",
            true,
        )
        .await;
        if code == 200 {
            break;
        }
        assert_eq!(code, 429, "{body}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the first follower still holds the slot: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
