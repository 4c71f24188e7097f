//! Caller authentication: `--caller-tokens-file`, checked before any other work, rotated
//! and revoked without a restart.

use std::time::{Duration, Instant};

use audit_gateway::pb;
use confluence_sim::SimulatorConfig;
use tonic::{Code, Request, metadata::MetadataValue};

use crate::common::{spawn_gateway, spawn_simulator, test_config};

fn call(token: Option<&str>) -> Request<pb::GetSinceRequest> {
    let mut req = Request::new(pb::GetSinceRequest {
        limit: Some(5),
        ..Default::default()
    });
    if let Some(t) = token {
        let value = MetadataValue::try_from(format!("Bearer {t}")).expect("metadata");
        req.metadata_mut().insert("authorization", value);
    }
    req
}

#[tokio::test]
async fn only_callers_with_a_token_get_in_and_tokens_rotate_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("audit-gateway-callers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("callers");
    std::fs::write(&file, "# who may read the audit log\nsiem:zq-first-token\n").expect("write");

    let sim = spawn_simulator(SimulatorConfig {
        records: 20,
        ..Default::default()
    })
    .await;
    let mut config = test_config(&sim.base_url());
    config.caller_tokens_file = Some(file.clone());
    let mut gw = spawn_gateway(config).await;

    // No token, a wrong one, or another scheme: UNAUTHENTICATED, and Confluence is not asked.
    for token in [None, Some("zq-wrong"), Some("")] {
        let status = gw.client.get_since(call(token)).await.expect_err("refused");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
        assert!(!status.message().contains("zq-"), "{status:?}");
    }
    let mut basic = call(None);
    basic.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Basic enEtZmlyc3QtdG9rZW4="),
    );
    let status = gw.client.get_since(basic).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    let stream = gw
        .client
        .stream_since(pb::StreamSinceRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(stream.code(), Code::Unauthenticated);
    assert_eq!(
        sim.request_count(),
        0,
        "Confluence was asked for a refused call"
    );

    // The right token reads.
    let page = gw
        .client
        .get_since(call(Some("zq-first-token")))
        .await
        .expect("the caller's token lets it in")
        .into_inner();
    assert_eq!(page.results.len(), 5);

    // Rotation: the file changes; the new token gets in and the old one no longer does,
    // without a restart (the file is looked at every second).
    std::fs::write(&file, "siem:zq-second-token\n").expect("rewrite");
    let rotated = Instant::now() + Duration::from_secs(10);
    loop {
        match gw.client.get_since(call(Some("zq-second-token"))).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::Unauthenticated && Instant::now() < rotated => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("the rotated token never got in: {s:?}"),
        }
    }
    let status = gw
        .client
        .get_since(call(Some("zq-first-token")))
        .await
        .expect_err("the old token is out");
    assert_eq!(status.code(), Code::Unauthenticated);

    // A broken file keeps the tokens already loaded.
    std::fs::write(&file, "this is not a tokens file\n").expect("rewrite");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.client
        .get_since(call(Some("zq-second-token")))
        .await
        .expect("still in after a bad edit");

    // Emptied of callers: every token is revoked, within the second the file is looked
    // at (and the time a loaded test host adds); back, the token gets in again.
    std::fs::write(&file, "# everyone revoked\n").expect("rewrite");
    let emptied = Instant::now();
    until_refused(&mut gw.client, "zq-second-token", true).await;
    let took = emptied.elapsed();
    assert!(took < Duration::from_secs(3), "refused only after {took:?}");
    std::fs::write(&file, "siem:zq-second-token\n").expect("rewrite");
    until_refused(&mut gw.client, "zq-second-token", false).await;
    // Deleted (or unreadable): the last good set stays, and the failed reload is counted
    // for an alert to fire on.
    let errors = || {
        audit_gateway::metrics::METRICS
            .caller_tokens_reload_errors
            .get()
    };
    let before = errors();
    std::fs::remove_file(&file).expect("delete");
    let deadline = Instant::now() + Duration::from_secs(10);
    while errors() == before {
        assert!(
            Instant::now() < deadline,
            "the failed reload was never counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.client
        .get_since(call(Some("zq-second-token")))
        .await
        .expect("the last good set stays while the file is gone");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Calls with `token` until it is refused (`refused`) or let in (not), within 10 s.
async fn until_refused(
    client: &mut pb::audit_service_client::AuditServiceClient<tonic::transport::Channel>,
    token: &str,
    refused: bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let is_refused = match client.get_since(call(Some(token))).await {
            Ok(_) => false,
            Err(s) if s.code() == Code::Unauthenticated => true,
            Err(s) => panic!("{s:?}"),
        };
        if is_refused == refused {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the token was {} within 10 s",
            if refused {
                "never refused"
            } else {
                "never let in"
            }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
