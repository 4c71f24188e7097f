//! Absolute ranges: `Follow` with `until` delivers every record of a fixed range once,
//! oldest first, and ends OK; `audit-gateway export` writes it to a file, killed at
//! random and resumed to the very bytes of an uninterrupted run.

use std::{path::Path, time::Duration};

use audit_gateway::pb::{self, audit_service_client::AuditServiceClient};
use confluence_sim::{Live, RECORD_SPACING_MS, SimulatorConfig};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

use crate::common::{assert_exactly_once, binary, now_ms, seq, sim_and_gateway};

const DAY_MS: i64 = 86_400_000;

fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn dur(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A range request: `[from, until)`, polling every second, with `lag`.
fn range(from: Option<pb::follow_request::From>, until: i64, lag_ms: u64) -> pb::FollowRequest {
    pb::FollowRequest {
        from,
        until: Some(ts(until)),
        poll_interval: Some(dur(1000)),
        lag: Some(dur(lag_ms)),
        ..Default::default()
    }
}

/// Four days of history, a record every 5 s, with byte-identical duplicates sharing a
/// millisecond, listed in a new order by every request, while new records keep arriving.
fn history() -> SimulatorConfig {
    SimulatorConfig {
        records: (4 * DAY_MS / RECORD_SPACING_MS) as usize,
        seed: 41,
        duplicate_every: 7,
        live: Some(Live {
            per_second: 40.0,
            burst: 3,
        }),
        ..Default::default()
    }
}

/// What a consumer of a range received: records as (date, seq), the last checkpoint, and
/// whether the call ended OK.
#[derive(Default)]
struct Received {
    got: Vec<(i64, u64)>,
    checkpoint: Option<String>,
}

impl Received {
    /// Reads `req`'s call: `cut_after` messages (then drops the call), or to its end.
    async fn read(
        &mut self,
        client: &mut AuditServiceClient<Channel>,
        req: pb::FollowRequest,
        cut_after: Option<usize>,
    ) -> bool {
        let mut s = client
            .follow(req)
            .await
            .expect("follow starts")
            .into_inner();
        let mut n = 0;
        loop {
            if cut_after == Some(n) {
                return false;
            }
            let m = tokio::time::timeout(Duration::from_secs(60), s.message())
                .await
                .expect("progress within 60 s")
                .expect("no error");
            let Some(m) = m else { return true };
            assert!(
                !m.checkpoint.is_empty(),
                "every message carries a checkpoint"
            );
            let dates: Vec<i64> = m.records.iter().map(|r| r.creation_date).collect();
            assert!(dates.is_sorted(), "oldest first within a message");
            self.got
                .extend(m.records.iter().map(|r| (r.creation_date, seq(r))));
            self.checkpoint = Some(m.checkpoint);
            n += 1;
        }
    }

    /// The next call's start: the checkpoint, else `since`.
    fn from(&self, since: i64) -> Option<pb::follow_request::From> {
        Some(match &self.checkpoint {
            Some(c) => pb::follow_request::From::Checkpoint(c.clone()),
            None => pb::follow_request::From::Since(ts(since)),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_day_export_cut_twice_and_resumed_delivers_the_range_once_and_ends_ok() {
    let (sim, gw) = sim_and_gateway(history(), |_| {}).await;
    let now = now_ms();
    let (from, until) = (now - 3 * DAY_MS - DAY_MS / 2, now - DAY_MS / 2);
    let mut client = gw.client.clone();
    let mut r = Received::default();
    for cut in [Some(3), Some(7), None] {
        let ended = r
            .read(&mut client, range(r.from(from), until, 10_000), cut)
            .await;
        assert_eq!(ended, cut.is_none(), "only the last call runs to its end");
    }
    let want = sim.expected_records(from, until - 1);
    assert!(
        want.len() > 45_000,
        "three days of records ({})",
        want.len()
    );
    assert!(r.got.is_sorted_by_key(|(d, _)| *d), "oldest first");
    assert_exactly_once(&r.got, want);
    // Resumed once more from its last checkpoint, the finished export ends at once.
    let mut again = Received {
        checkpoint: r.checkpoint.clone(),
        ..Default::default()
    };
    assert!(
        again
            .read(&mut client, range(r.from(from), until, 10_000), None)
            .await
    );
    assert!(again.got.is_empty(), "nothing after the end");
}

/// A range ending in the near future: it tails the live log (late records included,
/// within `lag`) and ends once its end is settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_ending_soon_tails_the_live_log_and_ends_once_settled() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 500,
            seed: 43,
            ties: 3,
            live: Some(Live {
                per_second: 120.0,
                burst: 5,
            }),
            late_share: 0.3,
            late_by: Duration::from_millis(300),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let now = now_ms();
    let (from, until) = (now - 60_000, now + 2_500);
    sim.stop_live_at(until + 3_000);
    let mut client = gw.client.clone();
    let mut r = Received::default();
    assert!(
        r.read(&mut client, range(r.from(from), until, 700), None)
            .await
    );
    let ended_at = now_ms();
    assert!(
        ended_at >= until + 700,
        "ended only once its end was settled"
    );
    let want = sim.expected_records(from, until - 1);
    assert!(
        want.iter().any(|(d, _)| *d > now),
        "live records in the range"
    );
    assert_exactly_once(&r.got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_ends_before_it_starts_is_refused_naming_until() {
    let (sim, gw) = sim_and_gateway(SimulatorConfig::default(), |_| {}).await;
    let mut client = gw.client.clone();
    let now = now_ms();
    let since = |ms| Some(pb::follow_request::From::Since(ts(ms)));
    let mut bad_nanos = range(since(now - 1000), now, 0);
    bad_nanos.until = Some(prost_types::Timestamp {
        seconds: now / 1000,
        nanos: -1,
    });
    for (req, what) in [
        (range(since(now - 1000), now - 1000, 0), "until = since"),
        (
            range(since(now - 1000), now - 2000, 0),
            "until before since",
        ),
        (range(None, now - 60_000, 0), "until before now, from now"),
        (bad_nanos, "negative nanos"),
    ] {
        let status = client.follow(req).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
        let fields: Vec<String> = status
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(fields, ["until"], "{what}: {}", status.message());
    }
    assert_eq!(
        sim.request_count(),
        0,
        "refused before any upstream request"
    );
}

/// `audit-gateway export` over the range, writing `output` with `checkpoint` beside it.
fn export(gateway: &str, range: (&str, &str), format: &str, dir: &Path) -> std::process::Command {
    let mut c = binary();
    c.args([
        "export",
        "--gateway",
        gateway,
        "--from",
        range.0,
        "--to",
        range.1,
    ])
    .args(["--format", format, "--lag", "1s"])
    .arg("--output")
    .arg(dir.join("out"))
    .arg("--checkpoint-file")
    .arg(dir.join("checkpoint.json"))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_command_killed_at_random_writes_the_bytes_of_an_uninterrupted_run() {
    // Groups of up to four records sharing a millisecond, listed in a new order by every
    // request: the same bytes after a resume need an order fixed by content.
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 24_000,
            seed: 47,
            ties: 4,
            duplicate_every: 9,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let gateway = format!("http://{}", gw.addr);
    let now = now_ms() / 1000 * 1000;
    let (from_ms, until_ms) = (now - 9 * 3_600_000, now - 3_600_000);
    let (from, to) = (time_of(from_ms / 1000), time_of(until_ms / 1000));
    let mut rng = fastrand::Rng::with_seed(17);
    for format in ["ndjson", "json", "csv"] {
        let whole = temp_dir(&format!("export-whole-{format}"));
        let status = tokio::task::spawn_blocking({
            let mut c = export(&gateway, (&from, &to), format, &whole);
            move || c.status()
        })
        .await
        .expect("joined")
        .expect("runs");
        assert!(
            status.success(),
            "an uninterrupted {format} export: {status}"
        );
        let cut = temp_dir(&format!("export-cut-{format}"));
        let mut kills = 0;
        loop {
            let mut child = export(&gateway, (&from, &to), format, &cut)
                .spawn()
                .expect("starts");
            let wait = if kills == 0 {
                rng.u64(5..80)
            } else {
                rng.u64(100..900)
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if let Some(status) = child.try_wait().expect("polled") {
                assert!(status.success(), "the resumed {format} export: {status}");
                break;
            }
            child.kill().expect("killed");
            child.wait().expect("reaped");
            kills += 1;
            assert!(kills < 200, "the export finishes between kills");
        }
        assert!(kills >= 2, "{format}: killed {kills} times");
        let (a, b) = (
            std::fs::read(whole.join("out")).expect("whole output"),
            std::fs::read(cut.join("out")).expect("cut output"),
        );
        assert!(
            a == b,
            "{format}: the resumed output differs from the uninterrupted one"
        );
        let want = sim.expected_records(from_ms, until_ms - 1);
        assert!(
            want.len() > 10_000,
            "eight hours of records ({})",
            want.len()
        );
        match records_of(format, &a) {
            Ok(got) => assert_exactly_once(&got, want),
            // CSV has no column to tell records apart: their dates, oldest first.
            Err(dates) => assert_eq!(dates, want.iter().map(|(d, _)| *d).collect::<Vec<_>>()),
        }
        // Run again, it has nothing to add.
        let again = export(&gateway, (&from, &to), format, &cut)
            .status()
            .expect("runs");
        assert!(again.success());
        assert!(
            std::fs::read(cut.join("out")).expect("output") == a,
            "{format}: unchanged"
        );
        let _ = std::fs::remove_dir_all(&whole);
        let _ = std::fs::remove_dir_all(&cut);
    }
}

/// (date, seq) of each record of an export's output; for CSV only the dates.
fn records_of(format: &str, bytes: &[u8]) -> Result<Vec<(i64, u64)>, Vec<i64>> {
    let text = std::str::from_utf8(bytes).expect("UTF-8");
    let of = |v: &serde_json::Value| {
        let date = v["creationDate"].as_i64().expect("creationDate");
        (date, confluence_sim::record_seq(v).expect("seq"))
    };
    match format {
        "ndjson" => Ok(text
            .lines()
            .map(|l| of(&serde_json::from_str(l).expect("a JSON line")))
            .collect()),
        "json" => {
            let all: Vec<serde_json::Value> = serde_json::from_str(text).expect("one JSON array");
            Ok(all.iter().map(of).collect())
        }
        _ => {
            // A header, then creationDate in the second column.
            let mut lines = text.lines();
            assert!(
                lines
                    .next()
                    .is_some_and(|h| h.starts_with("creationTime,creationDate"))
            );
            Err(lines
                .map(|l| {
                    let date = l.split(',').nth(1).expect("two columns");
                    date.parse().expect("a date")
                })
                .collect())
        }
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Epoch seconds as `YYYY-MM-DDTHH:MM:SSZ`.
fn time_of(secs: i64) -> String {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
    .to_string()
}
