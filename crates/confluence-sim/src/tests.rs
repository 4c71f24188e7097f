//! The simulator queried over real TCP with hand-written HTTP/1.1, so what is checked is what
//! goes over the wire.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const AUDIT: &str = "/wiki/rest/api/audit/since";

pub(super) async fn start(config: SimulatorConfig) -> SimulatorHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::start(config, listener).await.unwrap()
}

fn with_records(records: usize) -> SimulatorConfig {
    SimulatorConfig {
        records,
        ..SimulatorConfig::default()
    }
}

#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    /// The body as far as it came: up to `Content-Length` bytes, fewer if the server closed.
    pub(super) body: Vec<u8>,
}

impl Reply {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(key, _)| key == name);
        found.map(|(_, value)| value.as_str())
    }

    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub(super) fn content_length(&self) -> usize {
        self.header("content-length").unwrap().parse().unwrap()
    }
}

/// One keep-alive HTTP/1.1 connection.
pub(super) struct Client(BufReader<TcpStream>);

impl Client {
    pub(super) async fn connect(sim: &SimulatorHandle) -> Client {
        Client(BufReader::new(
            TcpStream::connect(sim.addr()).await.unwrap(),
        ))
    }

    /// Sends a GET; `None` when the server closed the connection without an answer.
    pub(super) async fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> Option<Reply> {
        let mut head = format!("GET {target} HTTP/1.1\r\nhost: simulator\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.0.get_mut().write_all(head.as_bytes()).await.ok()?;
        let mut line = String::new();
        if self.0.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.0.read_line(&mut line).await.unwrap();
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            headers.push((name.to_lowercase(), value.trim().to_owned()));
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        let length = reply.content_length() as u64;
        // A cut answer ends early: keep what came, so tests can see it is short.
        (&mut self.0)
            .take(length)
            .read_to_end(&mut reply.body)
            .await
            .unwrap();
        Some(reply)
    }
}

/// GET on a fresh connection; panics if there is no answer.
pub(super) async fn get(sim: &SimulatorHandle, target: &str) -> Reply {
    Client::connect(sim).await.get(target, &[]).await.unwrap()
}

/// The 200 page for `query`, checked for the `AuditRecordArray` shape.
async fn page(sim: &SimulatorHandle, query: &str) -> Value {
    let reply = get(sim, &format!("{AUDIT}?{query}")).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.body.len(), reply.content_length(), "a whole body");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json;charset=UTF-8")
    );
    let body = reply.json();
    let results = body["results"].as_array().unwrap();
    assert_eq!(body["size"], results.len());
    assert!(body["start"].is_u64() && body["limit"].is_u64());
    for link in ["base", "context", "self"] {
        assert!(body["_links"][link].is_string(), "_links.{link}");
    }
    body
}

fn seqs(body: &Value) -> Vec<u64> {
    let results = body["results"].as_array().unwrap();
    results.iter().map(|r| record_seq(r).unwrap()).collect()
}

fn newest_first(from: u64, count: u64) -> Vec<u64> {
    (from + 1 - count..=from).rev().collect()
}

#[tokio::test]
async fn pages_are_newest_first_and_do_not_overlap() {
    let sim = start(with_records(2500)).await;
    let first = page(&sim, "").await;
    assert_eq!(
        (first["start"].as_u64(), first["limit"].as_u64()),
        (Some(0), Some(1000))
    );
    assert_eq!(seqs(&first), newest_first(2499, 1000));
    assert_eq!(first["_links"]["base"], sim.base_url());
    assert_eq!(first["_links"]["context"], "/wiki");
    let second = page(&sim, "start=1000&limit=1000").await;
    assert_eq!(seqs(&second), newest_first(1499, 1000));
    let last = page(&sim, "start=2000&limit=1000").await;
    assert_eq!(seqs(&last), newest_first(499, 500));
    assert!(seqs(&page(&sim, "start=2500").await).is_empty());
    assert!(seqs(&page(&sim, "limit=0").await).is_empty());
    let dates: Vec<i64> = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["creationDate"].as_i64().unwrap())
        .collect();
    assert!(
        dates
            .windows(2)
            .all(|pair| pair[0] - pair[1] == RECORD_SPACING_MS)
    );
    assert_eq!(sim.request_count(), 5);
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let sim = start(with_records(10)).await;
    let mut client = Client::connect(&sim).await;
    for start in 0..3 {
        let target = format!("{AUDIT}?start={start}&limit=1");
        let reply = client.get(&target, &[]).await.unwrap();
        assert_eq!(seqs(&reply.json()), [9 - start]);
    }
}

#[tokio::test]
async fn limit_is_capped_and_reported() {
    let sim = start(SimulatorConfig {
        max_limit: Some(100),
        ..with_records(500)
    })
    .await;
    let body = page(&sim, "limit=1000").await;
    assert_eq!(body["limit"], 100);
    assert_eq!(seqs(&body), newest_first(499, 100));
    assert_eq!(page(&sim, "limit=7").await["limit"], 7);
}

#[tokio::test]
async fn a_rising_cap_grows_by_one_every_n_requests() {
    let sim = start(SimulatorConfig {
        max_limit: Some(10),
        max_limit_rises_every: Some(2),
        ..with_records(500)
    })
    .await;
    let mut lengths = Vec::new();
    for _ in 0..5 {
        lengths.push(seqs(&page(&sim, "limit=1000").await).len());
    }
    // Requests 1 to 5: the cap is 10 + number / 2.
    assert_eq!(lengths, [10, 11, 11, 12, 12]);
}

#[tokio::test]
async fn search_matches_encoded_special_characters_ignoring_case() {
    let sim = start(with_records(300)).await;
    let needle = "R&D + qa #OPS RÉSUMÉ";
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("searchString", needle)
        .finish();
    let found = page(&sim, &query).await;
    let expected: Vec<u64> = page(&sim, "limit=1000").await["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| {
            record
                .to_string()
                .to_lowercase()
                .contains("r&d + qa #ops résumé")
        })
        .map(|record| record_seq(record).unwrap())
        .collect();
    assert!(expected.len() > 1, "the pool holds the needle");
    assert_eq!(seqs(&found), expected);
    let request = &sim.requests()[0];
    assert_eq!(
        request.query[0],
        ("searchString".to_owned(), needle.to_owned())
    );
    let raw = request.raw_query.as_deref().unwrap();
    assert!(raw.contains("%26") && raw.contains("%2B") && raw.contains("%23"));
    let paged = page(&sim, &format!("{query}&start=1&limit=2")).await;
    assert_eq!(seqs(&paged), expected[1..3]);
}

#[tokio::test]
async fn window_filters_by_creation_date() {
    let sim = start(with_records(5000)).await;
    assert!(seqs(&page(&sim, "number=0").await).is_empty());
    assert!(seqs(&page(&sim, "number=-1&units=YEARS").await).is_empty());
    // One hour at one record every 5 s: 721 if served within the start millisecond, else 720.
    let hour = seqs(&page(&sim, "number=1&units=HOURS").await);
    assert!((720..=721).contains(&hour.len()), "{}", hour.len());
    assert_eq!(hour[0], 4999);
    let huge = page(&sim, "number=9223372036854775807&units=CENTURIES&limit=1").await;
    assert_eq!(seqs(&huge), [4999]);
}

#[tokio::test]
async fn million_record_log_pages_deep_quickly() {
    let sim = start(with_records(1_000_000)).await;
    let body = page(&sim, "units=YEARS&start=500000&limit=1000").await;
    assert_eq!(seqs(&body), newest_first(499_999, 1000));
}

#[tokio::test]
async fn invalid_parameters_are_400_with_atlassian_body() {
    let sim = start(with_records(10)).await;
    for query in [
        "units=FOO",
        "units=MILLENNIA",
        "units=months",
        "number=x",
        "start=-1",
        "limit=-5",
        "limit=2147483648",
    ] {
        let reply = get(&sim, &format!("{AUDIT}?{query}")).await;
        assert_eq!(reply.status, 400, "{query}");
        let body = reply.json();
        assert_eq!(body["statusCode"], 400);
        assert!(body["message"].is_string());
        assert_eq!(body["data"]["valid"], false);
    }
    let not_found = get(&sim, "/wiki/rest/api/audits").await;
    assert_eq!(not_found.status, 404);
    assert_eq!(not_found.json()["statusCode"], 404);
    assert_eq!(sim.request_count(), 7, "404s are not audit requests");
    assert_eq!(sim.all_requests().len(), 8);
    assert_eq!(sim.requests().len(), 7, "the 404 asked for no page");
}

#[tokio::test]
async fn authorization_must_match_exactly() {
    let sim = start(SimulatorConfig {
        required_authorization: Some("Basic dXNlcjp0b2tlbg==".to_owned()),
        ..with_records(10)
    })
    .await;
    let mut client = Client::connect(&sim).await;
    let missing = client.get(AUDIT, &[]).await.unwrap();
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["data"]["authorized"], false);
    let wrong = [("authorization", "Basic dXNlcjpvdGhlcg==")];
    assert_eq!(client.get(AUDIT, &wrong).await.unwrap().status, 401);
    let right = [("authorization", "Basic dXNlcjp0b2tlbg==")];
    assert_eq!(client.get(AUDIT, &right).await.unwrap().status, 200);
    let seen: Vec<Option<String>> = sim
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert_eq!(
        seen,
        [
            None,
            Some(wrong[0].1.to_owned()),
            Some(right[0].1.to_owned())
        ]
    );
}

#[tokio::test]
async fn scripted_faults_are_served_in_order_then_normal_answers() {
    let sim = start(SimulatorConfig {
        faults: vec!["503".parse().unwrap()],
        ..with_records(10)
    })
    .await;
    let later = [
        "429:retry-after=9223372036854775807",
        "403",
        "500:json",
        "reset",
        "malformed",
        "wrong-shape",
        "delay=20ms",
        "cut",
    ];
    sim.push_faults(later.iter().map(|text| text.parse().unwrap()));

    let unavailable = get(&sim, AUDIT).await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.json()["statusCode"], 503);

    let throttled = get(&sim, AUDIT).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("retry-after"), Some("9223372036854775807"));
    assert_eq!(throttled.header("x-ratelimit-remaining"), Some("0"));
    assert!(throttled.header("x-ratelimit-limit").is_some());
    assert!(
        throttled
            .header("x-ratelimit-reset")
            .unwrap()
            .ends_with('Z')
    );

    let forbidden = get(&sim, AUDIT).await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.header("content-type"), Some("text/plain"));
    assert!(forbidden.body.is_empty());

    let failed = get(&sim, AUDIT).await;
    assert_eq!(
        (failed.status, failed.json()["statusCode"].as_u64()),
        (500, Some(500))
    );

    assert!(Client::connect(&sim).await.get(AUDIT, &[]).await.is_none());

    let malformed = get(&sim, AUDIT).await;
    assert_eq!(malformed.status, 200);
    assert!(serde_json::from_slice::<Value>(&malformed.body).is_err());

    let wrong_shape = get(&sim, AUDIT).await;
    assert_eq!(wrong_shape.status, 200);
    assert!(!wrong_shape.json()["results"].is_array());

    let begun = Instant::now();
    assert_eq!(seqs(&page(&sim, "").await).len(), 10);
    assert!(begun.elapsed() >= Duration::from_millis(20));

    let cut = get(&sim, AUDIT).await;
    assert_eq!(cut.status, 200);
    assert!(cut.body.len() < cut.content_length());

    assert_eq!(seqs(&page(&sim, "").await).len(), 10);
    assert_eq!(sim.request_count(), 10);
}

#[tokio::test]
async fn a_near_limit_answer_is_a_normal_page_with_the_warning_headers() {
    let sim = start(with_records(10)).await;
    sim.push_faults(["near-limit=2s".parse().unwrap()]);
    let warned = get(&sim, AUDIT).await;
    assert_eq!(warned.status, 200);
    assert_eq!(warned.json()["results"].as_array().map(Vec::len), Some(10));
    assert_eq!(warned.header("x-ratelimit-nearlimit"), Some("true"));
    assert_eq!(warned.header("x-ratelimit-remaining"), Some("1"));
    let reset = warned.header("x-ratelimit-reset").unwrap().to_owned();
    assert!(reset.ends_with('Z'), "{reset}");
    // The next answer carries no warning.
    let plain = get(&sim, AUDIT).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("x-ratelimit-nearlimit"), None);
}

#[tokio::test]
async fn random_faults_follow_the_rate_and_mix_every_transient_kind() {
    let sim = start(SimulatorConfig {
        fault_rate: 1.0,
        ..with_records(10)
    })
    .await;
    let mut seen = std::collections::BTreeMap::<&str, u32>::new();
    for _ in 0..120 {
        let reply = Client::connect(&sim).await.get(AUDIT, &[]).await;
        let kind = match reply {
            None => "reset",
            Some(reply) if reply.status == 429 => {
                assert_eq!(reply.header("retry-after"), Some("0"));
                "429"
            }
            Some(reply) if reply.status == 200 => {
                assert!(reply.body.len() < reply.content_length(), "a 200 is cut");
                "cut"
            }
            Some(reply) => match reply.status {
                500 => "500",
                502 => "502",
                503 => "503",
                other => panic!("not a transient fault: {other}"),
            },
        };
        *seen.entry(kind).or_default() += 1;
    }
    // Six kinds, equally likely: each of them in 120 draws (one is missing with a
    // probability of about 6 * (5/6)^120, 2e-9).
    let kinds: Vec<&str> = seen.keys().copied().collect();
    assert_eq!(
        kinds,
        ["429", "500", "502", "503", "cut", "reset"],
        "{seen:?}"
    );
    sim.set_fault_rate(0.0);
    assert_eq!(get(&sim, AUDIT).await.status, 200);
}

#[test]
fn http_dates_are_imf_fixdates() {
    assert_eq!(
        http::http_date(784_111_777_000),
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );
    // The fraction of a second is dropped, before 1970 too.
    assert_eq!(http::http_date(999), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(http::http_date(-1), "Wed, 31 Dec 1969 23:59:59 GMT");
    assert_eq!(
        http::http_date(951_782_400_000),
        "Tue, 29 Feb 2000 00:00:00 GMT"
    );
}

/// Epoch seconds of an IMF-fixdate as the simulator writes it.
fn date_secs(date: &str) -> i64 {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = date.split([' ', ':']).collect();
    let [_, day, month, year, h, m, sec, "GMT"] = parts[..] else {
        panic!("not an IMF-fixdate: {date}");
    };
    let month = MONTHS.iter().position(|&m| m == month).unwrap() as i64 + 1;
    let (year, day): (i64, i64) = (year.parse().unwrap(), day.parse().unwrap());
    // days-from-civil (H. Hinnant), the inverse of what the simulator uses.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs: i64 = h.parse::<i64>().unwrap() * 3600
        + m.parse::<i64>().unwrap() * 60
        + sec.parse::<i64>().unwrap();
    days * 86_400 + secs
}

#[tokio::test]
async fn a_clock_offset_shows_in_dates_headers_and_new_records() {
    for offset in [-5000i64, 0, 7000] {
        let sim = start(SimulatorConfig {
            clock_offset: offset,
            faults: vec![Fault::status_json(503)],
            ..with_records(3)
        })
        .await;
        // Every answer is dated by the simulator's clock, a fault's and a 404's too.
        for target in [AUDIT, AUDIT, "/elsewhere"] {
            let before = state::now_ms();
            let reply = get(&sim, target).await;
            let after = state::now_ms();
            let date = reply.header("date").expect("a Date header");
            let ms = date_secs(date) * 1000;
            assert!(
                before + offset - 1000 < ms && ms <= after + offset,
                "offset {offset}: {date} for host {before}..{after}"
            );
        }
        // The initial log ends at the simulator's now, and inserts are dated by it.
        let before = state::now_ms();
        sim.insert_records(1);
        let after = state::now_ms();
        let newest = dates(&page(&sim, "limit=1").await)[0];
        assert!(
            before + offset <= newest && newest <= after + offset,
            "offset {offset}: inserted at {newest} for host {before}..{after}"
        );
    }
}

#[tokio::test]
async fn live_records_are_dated_by_the_simulators_clock() {
    let offset = -5000;
    let started = state::now_ms();
    let sim = start(SimulatorConfig {
        clock_offset: offset,
        live: live(2000.0, 1),
        ..with_records(0)
    })
    .await;
    let mut listed = Vec::new();
    for _ in 0..200 {
        listed = dated(&range_page(&sim, "").await);
        if listed.len() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ended = state::now_ms();
    assert!(listed.len() >= 20, "{} live records", listed.len());
    assert!(
        listed
            .iter()
            .all(|&(date, _)| started + offset < date && date <= ended + offset),
        "{listed:?} outside {}..{}",
        started + offset,
        ended + offset
    );
}

#[tokio::test]
async fn inserts_shift_offsets() {
    let sim = start(with_records(10)).await;
    assert_eq!(seqs(&page(&sim, "limit=3").await), [9, 8, 7]);
    sim.insert_records(2);
    assert_eq!(sim.record_count(), 12);
    assert_eq!(seqs(&page(&sim, "limit=3").await), [11, 10, 9]);
    sim.set_inserts_per_request(1);
    assert_eq!(seqs(&page(&sim, "start=3&limit=3").await), [9, 8, 7]);
    assert_eq!(sim.record_count(), 13);
    let body = page(&sim, "limit=20").await;
    assert_eq!(seqs(&body), newest_first(13, 14));
    let dates: Vec<i64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["creationDate"].as_i64().unwrap())
        .collect();
    assert!(dates.windows(2).all(|pair| pair[0] >= pair[1]));
}

#[tokio::test]
async fn latency_and_base_path_are_configurable() {
    let sim = start(SimulatorConfig {
        base_path: String::new(),
        ..with_records(3)
    })
    .await;
    assert!(sim.base_url().starts_with("http://127.0.0.1:"));
    sim.set_latency(Duration::from_millis(20));
    let begun = Instant::now();
    let body = page_at(&sim, "/rest/api/audit/since").await;
    assert!(begun.elapsed() >= Duration::from_millis(20));
    assert_eq!(body["_links"]["context"], "");
}

async fn page_at(sim: &SimulatorHandle, path: &str) -> Value {
    let reply = get(sim, path).await;
    assert_eq!(reply.status, 200);
    reply.json()
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let sim = start(with_records(3)).await;
    let mut open = Client::connect(&sim).await;
    assert_eq!(open.get(AUDIT, &[]).await.unwrap().status, 200);
    sim.shutdown();
    // Refused, or accepted by the kernel and reset when the listener closes: no answer.
    if let Ok(stream) = TcpStream::connect(sim.addr()).await {
        assert!(
            Client(BufReader::new(stream))
                .get(AUDIT, &[])
                .await
                .is_none()
        );
    }
    // The idle keep-alive connection is closed too.
    assert!(open.get(AUDIT, &[]).await.is_none());
}

#[tokio::test]
async fn records_show_every_variant_and_are_unique() {
    let sim = start(SimulatorConfig {
        strict_limit: false,
        ..with_records(5000)
    })
    .await;
    let body = page(&sim, "limit=5000").await;
    let records = body["results"].as_array().unwrap();
    let unique: HashSet<u64> = records.iter().map(|r| record_seq(r).unwrap()).collect();
    assert_eq!(unique.len(), 5000);
    let remote: HashSet<&str> = records
        .iter()
        .map(|r| r["remoteAddress"].as_str().unwrap())
        .collect();
    assert_eq!(remote.len(), 5000);

    let seen = |what: &str, test: &dyn Fn(&Value) -> bool| {
        assert!(records.iter().any(test), "no record with {what}");
    };
    seen("null operations", &|r| r["author"]["operations"].is_null());
    seen("empty object operations", &|r| {
        r["author"]["operations"] == serde_json::json!({})
    });
    seen("object operations", &|r| {
        r["author"]["operations"]["read"] == true
    });
    seen("array operations", &|r| {
        r["author"]["operations"].is_array()
    });
    for key in ["accountId", "userKey"] {
        seen("absent id", &|r| r["author"].get(key).is_none());
        seen("null id", &|r| r["author"].get(key) == Some(&Value::Null));
        seen("string id", &|r| r["author"][key].is_string());
    }
    for account_type in ["atlassian", "app", ""] {
        seen(account_type, &|r| {
            r["author"]["accountType"] == account_type
        });
    }
    seen("isGuest true", &|r| r["author"]["isGuest"] == true);
    seen("isGuest false", &|r| r["author"]["isGuest"] == false);
    seen("no isGuest", &|r| r["author"].get("isGuest").is_none());
    for key in [
        "username",
        "externalCollaborator",
        "isExternalCollaborator",
        "publicName",
        "timeZone",
    ] {
        seen(key, &|r| r["author"].get(key).is_some());
    }
    seen("superAdmin", &|r| r.get("superAdmin").is_some());
    seen("riskLevel", &|r| r.get("riskLevel").is_some());
    seen("ext", &|r| {
        r["ext"]["nested"] == serde_json::json!([1, "x", null])
    });
    seen("hidden values", &|r| {
        r["changedValues"][0].get("hiddenOldValue").is_some()
    });
    seen("no changed values", &|r| {
        r["changedValues"] == serde_json::json!([])
    });
    seen("3 associated objects", &|r| {
        r["associatedObjects"].as_array().unwrap().len() == 3
    });
    seen("no associated objects", &|r| {
        r["associatedObjects"] == serde_json::json!([])
    });
    seen("empty category", &|r| r["category"] == "");
    for text in ["Résumé", "日本語", "🚀"] {
        seen(text, &|r| r.to_string().contains(text));
    }
}

#[test]
fn render_page_is_deterministic_and_pure() {
    let spec = PageSpec::default();
    let body = render_page(&spec).unwrap();
    assert_eq!(body, render_page(&spec).unwrap());
    let other_seed = PageSpec {
        seed: 7,
        ..spec.clone()
    };
    assert_ne!(body, render_page(&other_seed).unwrap());
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seqs(&json), newest_first(4999, 1000));
    assert_eq!(json["results"][0]["creationDate"], spec.newest_date_ms);
    assert_eq!(json["_links"]["context"], "/wiki");
}

#[test]
fn table_strings_need_no_escaping() {
    // `data::render` writes these without escaping; serde_json must agree.
    for text in data::table_strings() {
        assert_eq!(serde_json::to_string(text).unwrap(), format!("\"{text}\""));
    }
}

/// `data::render` writes a page's JSON by hand; it must be byte for byte what serde's derives
/// give (`data::render_with_serde`), for pages of many seeded logs: nested values of several
/// depths or none, ties and duplicates, inserts and deletions, hidden records, tie orders,
/// searches, windows, empty pages, each `limit` echo, and `_links` that need escaping.
#[test]
fn hand_written_page_json_is_byte_identical_to_serdes() {
    let r = &mut fastrand::Rng::with_seed(2024);
    let mut seen = HashSet::new();
    let shapes = [
        "\"operations\":null",
        "\"operations\":{}",
        "\"operations\":{\"read\":true}",
        "\"operations\":[{\"operation\"",
        "\"operations\":{\"down\"",
        "\"operations\":\"bottom #",
        "\"ext\":{\"nested\":[1,\"x\",null]}",
        "\"nested\":{\"down\":[",
        "\"nested\":\"bottom #",
        "\"results\":[]",
        "\"limit\":1000,\"size\":",
        "\"start\":0,\"_links\"",
        "search=a\\\"b\\\\c\\u0001",
    ];
    for round in 0..80u64 {
        let seed = r.u64(..);
        let initial = r.usize(0..300);
        let mut log = data::Log::new(seed, initial, 1_700_000_000_000)
            .shaped(r.u32(0..4), [0, 2, 6][r.usize(..3)])
            .nested([None, None, Some(0), Some(1), Some(2), Some(9)][r.usize(..6)]);
        if r.bool() {
            log.insert(r.u64(1..30), 1_700_000_100_000);
        }
        log.delete_oldest(r.u64(0..4));
        let hidden: Vec<u64> = (log.end().saturating_sub(5)..log.end())
            .filter(|_| r.bool())
            .collect();
        let range = match r.u8(0..3) {
            0 if log.count() > 0 => {
                log.first_since(log.date(log.end() - 1 - r.u64(..log.count())))..log.end()
            }
            _ => 0..log.end(),
        };
        let search = [
            None,
            None,
            Some("résumé"),
            Some("#1"),
            Some("🚀"),
            Some("nothing"),
        ];
        let search = search[r.usize(..search.len())];
        let start = r.usize(0..=initial + 20);
        let limit = r.usize(0..250);
        let order = r.bool().then(|| data::listing_order(seed, round));
        let records = log.page(range, &hidden, search, start, limit, order);
        let query = ["", "?limit=5&search=a\"b\\c\u{1}", "?search=日本語%20x"][r.usize(..3)];
        let self_url = format!("http://127.0.0.1:8080/wiki/rest/api/audit/since{query}");
        for reported in [None, Some(limit as u32), Some(1000)] {
            type Render = fn(&[data::Record], u32, Option<u32>, &str, &str, &str) -> Json;
            type Json = serde_json::Result<Vec<u8>>;
            let render = |how: Render| {
                let base = "http://127.0.0.1:8080/wiki";
                how(&records, start as u32, reported, base, "/wiki", &self_url).unwrap()
            };
            let (ours, reference) = (render(data::render), render(data::render_with_serde));
            let at = ours.iter().zip(&reference).position(|(a, b)| a != b);
            let at = at.unwrap_or(ours.len().min(reference.len()));
            assert!(
                ours == reference,
                "round {round}, limit echo {reported:?}: differ from byte {at}: {:?} vs {:?}",
                String::from_utf8_lossy(&ours[at.saturating_sub(40)..]),
                String::from_utf8_lossy(&reference[at.saturating_sub(40)..]),
            );
            let text = String::from_utf8(ours).unwrap();
            seen.extend(shapes.iter().filter(|shape| text.contains(**shape)));
        }
        let body = data::render_with_serde(&records, 0, None, "", "", "").unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let results = body["results"].as_array().unwrap();
        if results
            .iter()
            .enumerate()
            .any(|(i, a)| results[i + 1..].contains(a))
        {
            seen.insert("a duplicate");
        }
        if search.is_some() && !records.is_empty() {
            seen.insert("a search");
        }
    }
    let missing: Vec<_> = shapes
        .iter()
        .chain(&["a duplicate", "a search"])
        .filter(|shape| !seen.contains(**shape))
        .collect();
    assert!(missing.is_empty(), "not covered: {missing:?}");
}

#[test]
fn faults_parse_from_text() {
    let parsed = |text: &str| text.parse::<Fault>().unwrap();
    let shape = |fault: Fault| match fault {
        Fault::Status {
            code,
            retry_after,
            body,
        } => {
            let json =
                body.map(|b| serde_json::from_str::<Value>(&b).unwrap()["statusCode"] == code);
            (code, retry_after, json)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(shape(parsed("503")), (503, None, Some(true)));
    assert_eq!(shape(parsed("403")), (403, None, None));
    assert_eq!(shape(parsed("403:json")), (403, None, Some(true)));
    assert_eq!(shape(parsed("500:json")), (500, None, Some(true)));
    assert_eq!(shape(parsed("503:empty")), (503, None, None));
    assert_eq!(
        shape(parsed("429:retry-after=2")),
        (429, Some("2".to_owned()), Some(true))
    );
    assert_eq!(parsed("reset"), Fault::Reset);
    assert_eq!(parsed("malformed"), Fault::Malformed);
    assert_eq!(parsed("wrong-shape"), Fault::WrongShape);
    assert_eq!(parsed("cut"), Fault::Cut);
    assert_eq!(
        parsed("delay=250ms"),
        Fault::Delay(Duration::from_millis(250))
    );
    assert_eq!(parsed("delay=2s"), Fault::Delay(Duration::from_secs(2)));
    assert_eq!(
        parsed("near-limit=1500ms"),
        Fault::NearLimit(Duration::from_millis(1500))
    );
    for bad in [
        "",
        "200",
        "600",
        "abc",
        "429:bogus",
        "429:retry-after=",
        "delay=5m",
        "delay=-1s",
        "near-limit=",
        "near-limit=soon",
    ] {
        let error = bad.parse::<Fault>().unwrap_err();
        assert!(error.contains(&format!("{bad:?}")), "{error}");
    }
}

/// `creationDate` of each record of a page, in order.
fn dates(body: &Value) -> Vec<i64> {
    let results = body["results"].as_array().unwrap();
    results
        .iter()
        .map(|r| r["creationDate"].as_i64().unwrap())
        .collect()
}

/// The seqs of a page grouped by millisecond, each group in listing order.
fn tie_groups(body: &Value) -> Vec<(i64, Vec<u64>)> {
    let mut groups: Vec<(i64, Vec<u64>)> = Vec::new();
    for (date, seq) in dates(body).into_iter().zip(seqs(body)) {
        match groups.last_mut() {
            Some((last, members)) if *last == date => members.push(seq),
            _ => groups.push((date, vec![seq])),
        }
    }
    groups
}

#[tokio::test]
async fn ties_are_listed_in_a_fresh_order_by_every_request() {
    let config = SimulatorConfig {
        ties: 6,
        ..with_records(600)
    };
    let sim = start(config.clone()).await;
    let first = page(&sim, "limit=1000").await;
    let second = page(&sim, "limit=1000").await;
    for body in [&first, &second] {
        let mut all = seqs(body);
        all.sort_unstable();
        assert_eq!(all, (0..600).collect::<Vec<u64>>(), "every record once");
        assert!(dates(body).windows(2).all(|pair| pair[0] >= pair[1]));
    }
    let (groups, again) = (tie_groups(&first), tie_groups(&second));
    let sizes: HashSet<usize> = groups.iter().map(|(_, members)| members.len()).collect();
    assert!(
        sizes.iter().all(|&size| (1..=6).contains(&size)),
        "{sizes:?}"
    );
    assert!(sizes.len() > 3, "sizes vary: {sizes:?}");
    assert_eq!(groups.len(), again.len());
    let mut reordered = 0;
    for ((date, members), (date_again, members_again)) in groups.iter().zip(&again) {
        assert_eq!(date, date_again);
        let sorted = |m: &Vec<u64>| {
            let mut m = m.clone();
            m.sort_unstable();
            m
        };
        assert_eq!(
            sorted(members),
            sorted(members_again),
            "same members at {date}"
        );
        reordered += usize::from(members != members_again);
    }
    assert!(
        reordered > groups.len() / 4,
        "{reordered} of {} groups listed differently",
        groups.len()
    );
    let distinct: HashSet<String> = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    assert_eq!(distinct.len(), 600, "ties differ in content");

    // A page starting inside a group gets the dates of those offsets, members of its group.
    let page_dates = dates(&page(&sim, "start=5&limit=20").await);
    assert_eq!(page_dates, dates(&first)[5..25]);

    // The same seed gives the same listings, request by request (dates follow the clock).
    let twin = start(config).await;
    assert_eq!(seqs(&page(&twin, "limit=1000").await), seqs(&first));
    assert_eq!(seqs(&page(&twin, "limit=1000").await), seqs(&second));
}

#[test]
fn a_listing_entered_at_any_offset_continues_the_same_order() {
    let log = data::Log::new(7, 500, 1_700_000_000_000).shaped(5, 6);
    let mut log = log;
    log.insert(40, 1_700_000_001_000);
    log.delete_oldest(13);
    for order in [None, Some(data::listing_order(7, 1))] {
        let whole: Vec<u64> = log.newest_first(0..log.end(), &[], 0, order).collect();
        let mut sorted = whole.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (13..540).collect::<Vec<u64>>());
        let ordered: Vec<i64> = whole.iter().map(|&seq| log.date(seq)).collect();
        assert!(ordered.windows(2).all(|pair| pair[0] >= pair[1]));
        for skip in 0..=whole.len() as u64 + 2 {
            let from: Vec<u64> = log.newest_first(0..log.end(), &[], skip, order).collect();
            assert_eq!(from, whole[whole.len().min(skip as usize)..], "skip {skip}");
        }
        // A window that starts inside the log starts at a group's oldest member.
        let first = log.first_since(log.date(300));
        let windowed: Vec<u64> = log.newest_first(first..log.end(), &[], 0, order).collect();
        assert!(windowed.iter().all(|&seq| seq >= first));
        assert_eq!(windowed.len() as u64, 540 - first);
    }
}

#[tokio::test]
async fn duplicates_are_byte_identical_at_the_same_millisecond() {
    let sim = start(SimulatorConfig {
        duplicate_every: 4,
        ..with_records(400)
    })
    .await;
    let body = page(&sim, "limit=1000").await;
    let records = body["results"].as_array().unwrap();
    assert_eq!(records.len(), 400);
    let copies = records.windows(2).filter(|pair| pair[0] == pair[1]).count();
    assert!((20..=180).contains(&copies), "{copies} copies");
    assert!(dates(&body).windows(2).all(|pair| pair[0] >= pair[1]));
    // Only pairs: a copy is never copied again.
    assert!(records.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])));
}

#[tokio::test]
async fn retention_deletes_the_oldest_records_as_requests_come() {
    let sim = start(SimulatorConfig {
        deletes_per_request: 10,
        ..with_records(100)
    })
    .await;
    assert_eq!(seqs(&page(&sim, "limit=1000").await), newest_first(99, 90));
    assert_eq!(seqs(&page(&sim, "limit=1000").await), newest_first(99, 80));
    // The head does not move: offsets from the newest stay put.
    assert_eq!(seqs(&page(&sim, "start=5&limit=3").await), [94, 93, 92]);
    assert_eq!(sim.record_count(), 70);
    sim.set_deletes_per_request(0);
    sim.delete_records(65);
    assert_eq!(seqs(&page(&sim, "limit=1000").await), newest_first(99, 5));
    sim.delete_records(1000);
    assert_eq!(sim.record_count(), 0);
    assert!(seqs(&page(&sim, "").await).is_empty());
    sim.insert_records(2);
    assert_eq!(seqs(&page(&sim, "").await), [101, 100]);
}

#[tokio::test]
async fn a_capped_limit_can_be_echoed_as_asked_or_left_out() {
    let sim = start(SimulatorConfig {
        max_limit: Some(10),
        limit_echo: LimitEcho::Requested,
        ..with_records(100)
    })
    .await;
    let body = page(&sim, "limit=50").await;
    assert_eq!(seqs(&body), newest_first(99, 10));
    assert_eq!(
        (body["limit"].as_u64(), body["size"].as_u64()),
        (Some(50), Some(10))
    );

    sim.set_limit_echo(LimitEcho::Omitted);
    let reply = get(&sim, &format!("{AUDIT}?limit=50")).await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(seqs(&body), newest_first(99, 10));
    let object = body.as_object().unwrap();
    assert!(
        !object.contains_key("limit") && !object.contains_key("size"),
        "{object:?}"
    );
    assert_eq!(body["start"], 0);

    sim.set_limit_echo(LimitEcho::Capped);
    assert_eq!(page(&sim, "limit=50").await["limit"], 10);
}

#[tokio::test]
async fn limits_over_1000_are_answered_with_400_unless_allowed() {
    let sim = start(with_records(10)).await;
    let refused = get(&sim, &format!("{AUDIT}?limit=1001")).await;
    assert_eq!(refused.status, 400);
    let body = refused.json();
    assert_eq!(body["statusCode"], 400);
    assert_eq!(body["data"]["valid"], false);
    assert!(
        body["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
    assert_eq!(seqs(&page(&sim, "limit=1000").await).len(), 10);
    let lenient = start(SimulatorConfig {
        strict_limit: false,
        ..with_records(10)
    })
    .await;
    assert_eq!(seqs(&page(&lenient, "limit=1001").await).len(), 10);
}

#[tokio::test]
async fn cut_bodies_declare_the_full_length_then_close() {
    let sim = start(SimulatorConfig {
        cut_rate: 1.0,
        ..with_records(50)
    })
    .await;
    let mut client = Client::connect(&sim).await;
    let cut = client.get(&format!("{AUDIT}?limit=50"), &[]).await.unwrap();
    assert_eq!(cut.status, 200);
    let declared = cut.content_length();
    assert!(declared > 1000, "a whole page is declared: {declared}");
    assert_eq!(cut.body.len(), declared / 2, "half of it arrives");
    assert!(serde_json::from_slice::<Value>(&cut.body).is_err());
    // The connection is closed after the cut.
    assert!(client.get(AUDIT, &[]).await.is_none());
    // Only 200s are cut.
    let refused = get(&sim, &format!("{AUDIT}?units=FOO")).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body.len(), refused.content_length());
    assert_eq!(refused.json()["statusCode"], 400);

    sim.set_cut_rate(0.0);
    assert_eq!(seqs(&page(&sim, "limit=50").await).len(), 50);
}

#[tokio::test]
async fn cut_rate_is_seeded() {
    let config = SimulatorConfig {
        cut_rate: 0.5,
        ..with_records(5)
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let sim = start(config.clone()).await;
        let mut cuts = Vec::new();
        for _ in 0..30 {
            let reply = get(&sim, AUDIT).await;
            cuts.push(reply.body.len() < reply.content_length());
        }
        runs.push(cuts);
    }
    assert_eq!(runs[0], runs[1]);
    let cut = runs[0].iter().filter(|&&cut| cut).count();
    assert!((5..=25).contains(&cut), "{cut} of 30 cut");
}

#[tokio::test]
async fn max_in_flight_counts_concurrent_audit_requests() {
    let sim = start(with_records(3)).await;
    assert_eq!(sim.max_in_flight(), 0);
    sim.set_latency(Duration::from_millis(200));
    let (a, b, c) = tokio::join!(get(&sim, AUDIT), get(&sim, AUDIT), get(&sim, AUDIT));
    assert_eq!((a.status, b.status, c.status), (200, 200, 200));
    assert_eq!(sim.max_in_flight(), 3);
    // Answered requests, reset ones included, leave the count: one at a time stays at 3.
    sim.push_faults([Fault::Reset]);
    let mut reset = Client::connect(&sim).await;
    assert!(reset.get(AUDIT, &[]).await.is_none());
    for _ in 0..4 {
        assert_eq!(get(&sim, AUDIT).await.status, 200);
    }
    assert_eq!(sim.max_in_flight(), 3);
    // Other paths are not audit requests.
    let _ = tokio::join!(
        get(&sim, "/x"),
        get(&sim, "/x"),
        get(&sim, "/x"),
        get(&sim, "/x")
    );
    assert_eq!(sim.max_in_flight(), 3);
}

#[tokio::test]
async fn a_concurrency_limit_warns_past_near_and_refuses_past_allowed() {
    let sim = start(SimulatorConfig {
        latency: Duration::from_millis(200),
        concurrency: Some(crate::Concurrency {
            allowed: 3,
            near: 2,
        }),
        ..with_records(3)
    })
    .await;
    let (a, b, c, d) = tokio::join!(
        get(&sim, AUDIT),
        get(&sim, AUDIT),
        get(&sim, AUDIT),
        get(&sim, AUDIT)
    );
    let mut replies = [a, b, c, d];
    replies.sort_by_key(|r| (r.status, r.header("x-ratelimit-nearlimit").is_some()));
    let seen: Vec<_> = replies
        .iter()
        .map(|r| (r.status, r.header("x-ratelimit-nearlimit")))
        .collect();
    assert_eq!(
        seen,
        [(200, None), (200, None), (200, Some("true")), (429, None)]
    );
    assert_eq!(replies[3].header("retry-after"), Some("1"));
    assert_eq!(sim.over_limit(), (1, 1));
    // One at a time is within every limit.
    assert_eq!(get(&sim, AUDIT).await.header("x-ratelimit-nearlimit"), None);
    assert_eq!(sim.over_limit(), (1, 1));
}

const RANGE: &str = "/wiki/rest/api/audit";

/// The 200 page of the absolute-range endpoint for `query`.
async fn range_page(sim: &SimulatorHandle, query: &str) -> Value {
    let reply = get(sim, &format!("{RANGE}?{query}")).await;
    assert_eq!(
        reply.status,
        200,
        "{query}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.body.len(), reply.content_length(), "a whole body");
    let body = reply.json();
    assert_eq!(body["size"], body["results"].as_array().unwrap().len());
    body
}

/// (creationDate, record_seq) of each record of a page, as listed.
fn dated(body: &Value) -> Vec<(i64, u64)> {
    dates(body).into_iter().zip(seqs(body)).collect()
}

/// Sorted, so two listings compare as multisets.
pub(super) fn sorted(mut records: Vec<(i64, u64)>) -> Vec<(i64, u64)> {
    records.sort_unstable();
    records
}

pub(super) fn live(per_second: f64, burst: u32) -> Option<Live> {
    Some(Live { per_second, burst })
}

#[tokio::test]
async fn range_bounds_are_inclusive_epoch_milliseconds() {
    let sim = start(with_records(100)).await;
    let all = dated(&page(&sim, "").await);
    let date_of = |seq: u64| all.iter().find(|&&(_, s)| s == seq).unwrap().0;
    let (d40, d50) = (date_of(40), date_of(50));
    let both = range_page(&sim, &format!("startDate={d40}&endDate={d50}")).await;
    assert_eq!(seqs(&both), newest_first(50, 11));
    assert_eq!(dates(&both)[0], d50);
    let inside = range_page(&sim, &format!("startDate={}&endDate={}", d40 + 1, d50 - 1)).await;
    assert_eq!(seqs(&inside), newest_first(49, 9));
    let one = range_page(&sim, &format!("startDate={d40}&endDate={d40}")).await;
    assert_eq!(seqs(&one), [40]);
    // Either end may be open.
    let newer = range_page(&sim, &format!("startDate={}", date_of(95))).await;
    assert_eq!(seqs(&newer), newest_first(99, 5));
    let older = range_page(&sim, &format!("endDate={}", date_of(4))).await;
    assert_eq!(seqs(&older), newest_first(4, 5));
    assert_eq!(seqs(&range_page(&sim, "").await), newest_first(99, 100));
    assert_eq!(
        seqs(&range_page(&sim, "startDate=&endDate=").await).len(),
        100
    );
    let reversed = range_page(&sim, &format!("startDate={d50}&endDate={d40}")).await;
    assert!(seqs(&reversed).is_empty());
    // Paging and search work as on /since; `_links.self` is this endpoint.
    let paged = range_page(
        &sim,
        &format!("startDate={d40}&endDate={d50}&start=3&limit=4"),
    )
    .await;
    assert_eq!(seqs(&paged), newest_first(47, 4));
    assert_eq!(
        (paged["start"].as_u64(), paged["limit"].as_u64()),
        (Some(3), Some(4))
    );
    let self_link = paged["_links"]["self"].as_str().unwrap();
    assert!(self_link.starts_with(&format!("{}/rest/api/audit?", sim.base_url())));
    let needle = "(record 45)";
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("searchString", needle)
        .finish();
    let found = range_page(&sim, &format!("startDate={d40}&endDate={d50}&{query}")).await;
    assert_eq!(seqs(&found), [45]);
    let too_many = get(&sim, &format!("{RANGE}?limit=1001")).await;
    assert_eq!(too_many.status, 400);
    // Requests are told apart by endpoint and all counted.
    assert_eq!(sim.request_count_of(AuditEndpoint::Since), 1);
    assert_eq!(sim.request_count_of(AuditEndpoint::Range), 11);
    assert_eq!(sim.request_count(), 12);
    let last = sim.requests().pop().unwrap();
    assert_eq!(
        (last.path.as_str(), last.endpoint),
        (RANGE, Some(AuditEndpoint::Range))
    );
    assert_eq!(get(&sim, "/wiki/rest/api/audit/other").await.status, 404);
    assert_eq!(sim.all_requests().pop().unwrap().endpoint, None);
}

#[tokio::test]
async fn bad_range_dates_are_400_with_atlassian_body() {
    let sim = start(with_records(10)).await;
    for query in [
        "startDate=abc",
        "endDate=-5",
        "startDate=1.5",
        "startDate=2024-01-01",
        "endDate=99999999999999999999",
        "startDate=%201",
    ] {
        let reply = get(&sim, &format!("{RANGE}?{query}")).await;
        assert_eq!(reply.status, 400, "{query}");
        let body = reply.json();
        assert_eq!(body["statusCode"], 400);
        assert!(
            body["message"].as_str().unwrap().contains("Date"),
            "{query}"
        );
    }
    // /since ignores the range's parameters, as any unknown one.
    assert_eq!(
        get(&sim, &format!("{AUDIT}?startDate=abc")).await.status,
        200
    );
}

#[tokio::test]
async fn the_range_endpoint_shares_faults_authorization_and_in_flight_count() {
    let sim = start(SimulatorConfig {
        required_authorization: Some("Bearer t".to_owned()),
        max_limit: Some(5),
        ..with_records(20)
    })
    .await;
    assert_eq!(get(&sim, RANGE).await.status, 401);
    sim.push_faults([Fault::status_json(503)]);
    let mut client = Client::connect(&sim).await;
    let auth = [("authorization", "Bearer t")];
    assert_eq!(client.get(RANGE, &auth).await.unwrap().status, 503);
    let capped = client
        .get(&format!("{RANGE}?limit=50"), &auth)
        .await
        .unwrap();
    assert_eq!(capped.json()["limit"], 5);
    assert_eq!(seqs(&capped.json()), newest_first(19, 5));
    sim.set_latency(Duration::from_millis(150));
    let (mut a, mut b) = (Client::connect(&sim).await, Client::connect(&sim).await);
    let (x, y) = tokio::join!(a.get(AUDIT, &auth), b.get(RANGE, &auth));
    assert_eq!((x.unwrap().status, y.unwrap().status), (200, 200));
    assert_eq!(sim.max_in_flight(), 2, "both endpoints count");
}

#[tokio::test]
async fn paging_a_pinned_past_range_is_stable_while_live_records_arrive() {
    let sim = start(SimulatorConfig {
        live: live(2000.0, 3),
        ..with_records(300)
    })
    .await;
    let end = dates(&page(&sim, "limit=1").await)[0];
    let count_before = sim.record_count();
    let mut paged = Vec::new();
    for start in (0..).step_by(40) {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let body = range_page(&sim, &format!("endDate={end}&start={start}&limit=40")).await;
        let page = dated(&body);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert!(sim.record_count() > count_before, "live records arrived");
    let whole = dated(&range_page(&sim, &format!("endDate={end}")).await);
    assert_eq!(paged, whole);
    // Live records created before `end` was read are in the range too.
    assert!(paged.len() >= 300, "{}", paged.len());
    assert_eq!(sorted(paged), sim.expected_records(i64::MIN, end));
}

#[tokio::test]
async fn live_records_appear_over_time_in_bursts_sharing_a_millisecond() {
    let started = state::now_ms();
    let sim = start(SimulatorConfig {
        live: live(2000.0, 4),
        ..with_records(0)
    })
    .await;
    let mut listed = Vec::new();
    for _ in 0..200 {
        listed = dated(&range_page(&sim, "").await);
        if listed.len() >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(listed.len() >= 300, "{} live records", listed.len());
    assert!(listed.iter().all(|&(date, _)| date > started));
    assert!(
        listed.windows(2).all(|pair| pair[0].0 >= pair[1].0),
        "newest first"
    );
    let mut per_ms = std::collections::BTreeMap::<i64, u32>::new();
    for &(date, _) in &listed {
        *per_ms.entry(date).or_default() += 1;
    }
    assert!(per_ms.values().all(|&n| n <= 4), "bursts of at most 4");
    assert!(
        per_ms.values().any(|&n| n > 1),
        "some records share a millisecond"
    );
    let unique: HashSet<u64> = listed.iter().map(|&(_, seq)| seq).collect();
    assert_eq!(unique.len(), listed.len());
    // /since lists them too, and more keep coming.
    assert!(seqs(&page(&sim, "").await).len() >= listed.len());
    let stopped = sim.stop_live();
    let count = sim.record_count();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sim.record_count(), count, "nothing created after the stop");
    let all = dated(&range_page(&sim, "").await);
    assert!(all.iter().all(|&(date, _)| date <= stopped));
    assert_eq!(sorted(all), sim.expected_records(i64::MIN, i64::MAX));
}

#[tokio::test]
async fn a_late_record_is_listed_only_from_its_visibility_time_with_its_own_date() {
    let sim = start(SimulatorConfig {
        live: live(1000.0, 2),
        late_share: 0.5,
        late_by: Duration::from_millis(60),
        ..with_records(0)
    })
    .await;
    let mut checked = None;
    for _ in 0..300 {
        let Some(&(date, seq, visible_ms)) = sim.invisible_records().last() else {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        };
        assert!(visible_ms > date && visible_ms <= date + 60);
        assert!(sim.expected_records(date, date).contains(&(date, seq)));
        let query = format!("startDate={date}&endDate={date}");
        let body = range_page(&sim, &query).await;
        // Only an answer that came back before the visibility time proves anything.
        if state::now_ms() < visible_ms {
            assert!(
                !seqs(&body).contains(&seq),
                "{seq} listed before {visible_ms}"
            );
            assert!(!seqs(&page(&sim, "").await).contains(&seq) || state::now_ms() >= visible_ms);
            checked = Some((date, seq, visible_ms));
            break;
        }
    }
    let (date, seq, visible_ms) = checked.expect("a late record seen while invisible");
    while state::now_ms() < visible_ms {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let body = range_page(&sim, &format!("startDate={date}&endDate={date}")).await;
    assert!(
        dated(&body).contains(&(date, seq)),
        "listed with its creation date"
    );
    assert!(dated(&page(&sim, "").await).contains(&(date, seq)));
}

#[tokio::test]
async fn the_oracle_matches_a_full_scan_once_everything_is_visible() {
    let sim = start(SimulatorConfig {
        live: live(2000.0, 3),
        late_share: 0.3,
        late_by: Duration::from_millis(30),
        duplicate_every: 3,
        inserts_per_request: 2,
        ..with_records(200)
    })
    .await;
    for _ in 0..10 {
        range_page(&sim, "limit=5").await;
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    sim.set_inserts_per_request(0);
    sim.stop_live();
    // Taken while some records are still invisible: the oracle counts them already.
    let promised = sim.expected_records(i64::MIN, i64::MAX);
    for _ in 0..100 {
        if sim.invisible_records().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(sim.invisible_records().is_empty());
    let scan = dated(&range_page(&sim, "limit=1000").await);
    assert!(
        scan.len() > 300 && scan.len() < 1000,
        "{} records",
        scan.len()
    );
    let oracle = sim.expected_records(i64::MIN, i64::MAX);
    assert_eq!(oracle, promised);
    assert_eq!(sorted(scan.clone()), oracle);
    let distinct: HashSet<u64> = oracle.iter().map(|&(_, seq)| seq).collect();
    assert!(
        distinct.len() < oracle.len(),
        "duplicates counted as often as created"
    );
    // A sub-range of the oracle is what the range endpoint lists for it.
    let (from, to) = (oracle[100].0, oracle[250].0);
    let part = dated(&range_page(&sim, &format!("startDate={from}&endDate={to}")).await);
    assert_eq!(sorted(part), sim.expected_records(from, to));
}

#[tokio::test]
async fn the_oracle_includes_live_records_still_to_come_before_a_stop() {
    let sim = start(SimulatorConfig {
        live: live(2000.0, 2),
        ..with_records(5)
    })
    .await;
    let stop = state::now_ms() + 40;
    sim.stop_live_at(stop);
    let promised = sim.expected_records(i64::MIN, i64::MAX);
    while state::now_ms() <= stop {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let listed = dated(&range_page(&sim, "").await);
    assert!(listed.len() > 5 + 20, "{}", listed.len());
    assert_eq!(sorted(listed), promised);
}

#[test]
fn hidden_records_leave_the_listing_at_every_offset() {
    let mut log = data::Log::new(3, 200, 1_700_000_000_000).shaped(4, 5);
    for at in 1..=30 {
        log.insert(at % 3 + 1, 1_700_000_000_000 + at as i64);
    }
    let end = log.end();
    let hidden: Vec<u64> = (150..end)
        .filter(|seq| seq % 7 == 0 || *seq == 199)
        .collect();
    for order in [None, Some(data::listing_order(3, 9))] {
        let whole: Vec<u64> = log
            .newest_first(0..end, &[], 0, order)
            .filter(|seq| !hidden.contains(seq))
            .collect();
        for skip in 0..=whole.len() as u64 + 2 {
            let from: Vec<u64> = log.newest_first(0..end, &hidden, skip, order).collect();
            assert_eq!(from, whole[whole.len().min(skip as usize)..], "skip {skip}");
        }
    }
}

#[test]
fn live_flags_parse() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: cli::SimulateArgs,
    }
    let parse = |args: &[&str]| {
        let cli = <Cli as clap::Parser>::try_parse_from(
            std::iter::once("sim").chain(args.iter().copied()),
        )
        .map_err(|e| e.to_string())?;
        cli.args.to_config()
    };
    let config = parse(&[
        "--live-rate",
        "250.5",
        "--live-burst",
        "3",
        "--late-share",
        "0.2",
        "--late-by",
        "50ms",
    ])
    .unwrap();
    assert_eq!(config.live, live(250.5, 3));
    assert_eq!(config.late_share, 0.2);
    assert_eq!(config.late_by, Duration::from_millis(50));
    let plain = parse(&[]).unwrap();
    assert_eq!((plain.live, plain.late_share), (None, 0.0));
    assert!(parse(&["--late-by", "soon"]).is_err());
    assert!(parse(&["--late-share", "0.5"]).is_err(), "needs --late-by");
    assert!(parse(&["--late-share", "2", "--late-by", "1s"]).is_err());
    assert!(parse(&["--live-rate", "-1"]).is_err());
    assert_eq!(
        parse(&["--clock-offset-ms", "-5000"]).unwrap().clock_offset,
        -5000
    );
    assert_eq!(
        parse(&["--clock-offset-ms", "250"]).unwrap().clock_offset,
        250
    );
    assert_eq!(plain.clock_offset, 0);
}

/// Levels of objects and arrays in `value`, and the string innermost (following the last
/// item of each).
fn depth_and_bottom(value: &Value) -> (usize, Option<&str>) {
    let inner = match value {
        Value::Object(map) => map.values().next_back(),
        Value::Array(items) => items.last(),
        _ => return (0, value.as_str()),
    };
    let (depth, bottom) = inner.map_or((0, None), depth_and_bottom);
    (depth + 1, bottom)
}

#[tokio::test]
async fn nested_depth_serves_values_that_deep_under_nested_and_operations() {
    let parse = |args: &[&str]| {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: cli::SimulateArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(
            std::iter::once("sim").chain(args.iter().copied()),
        )
        .unwrap();
        cli.args.to_config().unwrap()
    };
    assert_eq!(parse(&[]).nested_depth, None);
    let config = parse(&["--records", "4", "--nested-depth", "60"]);
    assert_eq!(config.nested_depth, Some(60));

    let sim = start(config).await;
    let body = page(&sim, "limit=4").await;
    for record in body["results"].as_array().unwrap() {
        let seq = record_seq(record).unwrap();
        let bottom = format!("bottom #{seq}");
        assert_eq!(
            depth_and_bottom(&record["nested"]),
            (60, Some(bottom.as_str()))
        );
        assert!(
            record["nested"]["down"].is_array(),
            "objects and arrays in turn"
        );
        let operations = &record["author"]["operations"];
        if seq % 2 == 1 {
            assert_eq!(operations, &record["nested"]);
        } else {
            assert!(depth_and_bottom(operations).0 < 3, "the usual operations");
        }
    }
    sim.shutdown();
}
