//! `GetRetention`: Confluence's retention period through the gateway, kept a while per
//! credential, and its failures mapped like a page's.

use audit_gateway::{
    pb,
    testing::stub::{Canned, StubUpstream},
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{spawn_gateway, test_config};

/// A gateway in front of a stub answering every request with `answer`, no retries.
async fn gateway(answer: Canned) -> (StubUpstream, crate::common::TestGateway) {
    let stub = StubUpstream::start(answer).await;
    let mut config = test_config(&stub.base_url());
    config.upstream.retries = 0;
    let gw = spawn_gateway(config).await;
    (stub, gw)
}

#[tokio::test]
async fn the_period_is_answered_with_its_duration_and_asked_once_a_while() {
    let (stub, gw) = gateway(Canned::json(r#"{"number": 3, "units": "MONTHS"}"#)).await;
    let mut client = gw.client.clone();
    for _ in 0..3 {
        let r = client
            .get_retention(pb::GetRetentionRequest {})
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(r.number, 3);
        assert_eq!(r.units, pb::TimeUnit::Months as i32);
        // Three ChronoUnit months of 2,629,746 s.
        let period = r.period.expect("a period");
        assert_eq!((period.seconds, period.nanos), (3 * 2_629_746, 0));
    }
    assert_eq!(
        stub.seen(),
        ["/wiki/rest/api/audit/retention"],
        "asked once"
    );
}

#[tokio::test]
async fn forever_has_no_period() {
    let (_stub, gw) = gateway(Canned::json(r#"{"number": 1, "units": "FOREVER"}"#)).await;
    let r = gw
        .client
        .clone()
        .get_retention(pb::GetRetentionRequest {})
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(r.units, pb::TimeUnit::Forever as i32);
    assert_eq!(r.period, None);
}

#[tokio::test]
async fn a_refusal_and_a_broken_answer_get_precise_statuses() {
    let forbidden = Canned {
        status: 403,
        headers: Vec::new(),
        body: "".into(),
    };
    let (_stub, gw) = gateway(forbidden).await;
    let status = gw
        .client
        .clone()
        .get_retention(pb::GetRetentionRequest {})
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let (_stub, gw) = gateway(Canned::json(r#"{"number": 3, "units": "FORTNIGHTS"}"#)).await;
    let status = gw
        .client
        .clone()
        .get_retention(pb::GetRetentionRequest {})
        .await
        .expect_err("not a RetentionPeriod");
    let reason = status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone());
    assert_eq!(
        reason.as_deref(),
        Some("UPSTREAM_MALFORMED_BODY"),
        "{status:?}"
    );
    assert!(
        status.message().contains("RetentionPeriod"),
        "{}",
        status.message()
    );
}

/// A stream reaching back past the retention period is told so in a `retention-warning`
/// header (once the gateway knows the period: the first call looks it up in the
/// background); one within the period is not.
#[tokio::test]
async fn a_window_older_than_the_retention_period_is_warned() {
    use confluence_sim::{AuditEndpoint, Retention, RetentionUnit, SimulatorConfig};
    let (sim, gw) = crate::common::sim_and_gateway(
        SimulatorConfig {
            records: 20,
            retention: Retention {
                number: 1,
                units: RetentionUnit::Days,
            },
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let mut client = gw.client.clone();
    let window = |number, units: pb::TimeUnit| pb::StreamSinceRequest {
        number: Some(number),
        units: units as i32,
        ..Default::default()
    };
    let mut warning = None;
    for _ in 0..100 {
        let response = client
            .stream_since(window(2, pb::TimeUnit::Weeks))
            .await
            .expect("opens");
        warning = response
            .metadata()
            .get("retention-warning")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut s = response.into_inner();
        while s.message().await.expect("the stream ends OK").is_some() {}
        if warning.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let warning = warning.expect("a retention-warning header");
    assert!(warning.contains("1 DAYS"), "{warning}");
    let response = client
        .stream_since(window(1, pb::TimeUnit::Hours))
        .await
        .expect("opens");
    assert!(response.metadata().get("retention-warning").is_none());
    assert_eq!(
        sim.request_count_of(AuditEndpoint::Retention),
        1,
        "asked once"
    );
}

/// `audit-gateway retention` prints the period as one JSON line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_command_prints_the_period() {
    use confluence_sim::{Retention, RetentionUnit, SimulatorConfig};
    let (_sim, gw) = crate::common::sim_and_gateway(
        SimulatorConfig {
            retention: Retention {
                number: 2,
                units: RetentionUnit::Weeks,
            },
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let gateway = format!("http://{}", gw.addr);
    let out = tokio::task::spawn_blocking(move || {
        crate::common::binary()
            .args(["retention", "--gateway", &gateway])
            .output()
    })
    .await
    .expect("joined")
    .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(
        line,
        serde_json::json!({ "number": 2, "units": "WEEKS", "seconds": 2 * 7 * 86_400 })
    );
}

/// Streams starting together while the period is unknown ask Confluence for it once,
/// not once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_starting_together_look_the_period_up_once() {
    use confluence_sim::{AuditEndpoint, SimulatorConfig};
    let (sim, gw) = crate::common::sim_and_gateway(
        SimulatorConfig {
            records: 10,
            latency: std::time::Duration::from_millis(200),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let streams: Vec<_> = (0..20)
        .map(|_| {
            let mut client = gw.client.clone();
            tokio::spawn(async move {
                let mut s = client
                    .stream_since(pb::StreamSinceRequest::default())
                    .await
                    .expect("opens")
                    .into_inner();
                while s.message().await.expect("ends OK").is_some() {}
            })
        })
        .collect();
    for s in streams {
        s.await.expect("joined");
    }
    assert_eq!(sim.request_count_of(AuditEndpoint::Retention), 1);
}
