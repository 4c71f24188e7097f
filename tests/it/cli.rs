//! The client commands as people use them: formats, files, and exit codes that follow
//! the gRPC status of a failed call.

use std::process::Output;

use confluence_sim::SimulatorConfig;

use crate::common::{
    Canned, StubUpstream, closed_port, sim_and_gateway, spawn_gateway, test_config,
};

/// Runs the binary with `args` (no inherited gateway settings) and waits for it.
fn run(args: &[&str]) -> Output {
    crate::common::binary()
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_go_to_stdout_or_a_file() {
    let (_sim, gw) = sim_and_gateway(SimulatorConfig::default(), |_| {}).await;
    let gateway = format!("http://{}", gw.addr);
    let table = tokio::task::spawn_blocking({
        let gateway = gateway.clone();
        move || {
            run(&[
                "get",
                "--gateway",
                &gateway,
                "--limit",
                "3",
                "--format",
                "table",
            ])
        }
    })
    .await
    .expect("joined");
    assert!(table.status.success(), "{}", text(&table.stderr));
    let out = text(&table.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "a header and 3 rows: {out}");
    assert!(lines[0].starts_with("TIME (UTC)"), "{out}");

    let dir = std::env::temp_dir().join(format!("cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("audit.csv");
    let path = file.to_str().expect("utf-8 path").to_owned();
    let csv = tokio::task::spawn_blocking({
        let gateway = gateway.clone();
        move || {
            run(&[
                "stream",
                "--gateway",
                &gateway,
                "--max-records",
                "5",
                "--format",
                "csv",
                "--output",
                &path,
            ])
        }
    })
    .await
    .expect("joined");
    assert!(csv.status.success(), "{}", text(&csv.stderr));
    assert!(csv.stdout.is_empty(), "records went to the file");
    let written = std::fs::read_to_string(&file).expect("the file");
    let rows: Vec<&str> = written.lines().collect();
    assert_eq!(rows.len(), 6, "a header and 5 records: {written}");
    assert!(
        rows[0].starts_with("creationTime,creationDate,category"),
        "{written}"
    );
    assert!(text(&csv.stderr).contains("5 records; resume token: "));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_exits_with_its_grpc_status_code() {
    // Confluence refuses the credential: PERMISSION_DENIED, gRPC code 7.
    let upstream = StubUpstream::start(Canned {
        status: 403,
        ..Canned::json(r#"{"statusCode":403,"message":"no"}"#)
    })
    .await;
    let gw = spawn_gateway(test_config(&upstream.base_url())).await;
    let gateway = format!("http://{}", gw.addr);
    let denied = tokio::task::spawn_blocking(move || run(&["get", "--gateway", &gateway]))
        .await
        .expect("joined");
    assert_eq!(denied.status.code(), Some(7), "{}", text(&denied.stderr));
    assert!(
        text(&denied.stderr).contains("PermissionDenied"),
        "{}",
        text(&denied.stderr)
    );

    // An invalid request: INVALID_ARGUMENT, 3.
    let (_sim, gw) = sim_and_gateway(SimulatorConfig::default(), |_| {}).await;
    let gateway = format!("http://{}", gw.addr);
    let invalid = tokio::task::spawn_blocking(move || {
        run(&["stream", "--gateway", &gateway, "--page-size", "5000"])
    })
    .await
    .expect("joined");
    assert_eq!(invalid.status.code(), Some(3), "{}", text(&invalid.stderr));

    // No gateway at all: not a status, exit 1.
    let nowhere = format!("http://{}", closed_port().await);
    let refused = tokio::task::spawn_blocking(move || run(&["get", "--gateway", &nowhere]))
        .await
        .expect("joined");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
}

/// The README's first command, `demo`: a simulated Confluence, the gateway in front of it
/// and one query through it, which prints Confluence's JSON (`--once`: then it exits).
#[test]
fn the_demo_answers_its_query_through_the_gateway() {
    let out = run(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--records",
        "50",
        "--once",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("GetSince("), "{stdout}");
    let json_start = stdout.find('{').expect("a JSON page");
    let page: serde_json::Value = serde_json::Deserializer::from_str(&stdout[json_start..])
        .into_iter::<serde_json::Value>()
        .next()
        .expect("one JSON value")
        .expect("JSON");
    assert_eq!(
        page["results"].as_array().map(Vec::len),
        Some(2),
        "{stdout}"
    );
}
