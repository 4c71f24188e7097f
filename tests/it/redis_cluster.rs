//! The shared tier on a Redis Cluster (`--redis-cluster`), against a real three-master
//! cluster the test creates: replicas share pages whose keys land on every master, a
//! master killed mid-traffic fails no call, and a cool-down one replica started holds the
//! others back through the cluster too.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use audit_gateway::{
    Gateway, UpstreamAuth,
    metrics::METRICS,
    testing::redis::{RedisServer, Reply, free_ports},
};
use confluence_sim::SimulatorConfig;

use crate::{
    common::{TestGateway, spawn_gateway, spawn_simulator, test_config},
    redis::{a_cool_down_holds_the_other_replica_back, page, until_for},
};

/// Three `redis-server` masters on free loopback ports joined into one cluster by
/// `redis-cli --cluster create`; every node killed and the temp dir removed on drop.
struct Cluster {
    /// Holds each node's `nodes-P.conf` (and nothing else: persistence is off).
    dir: PathBuf,
    nodes: Vec<RedisServer>,
}

impl Cluster {
    async fn start() -> Self {
        // Client ports and, explicitly, cluster bus ports: the default (port + 10000)
        // may be taken or past 65535 for an ephemeral port.
        Self::start_on(free_ports(6)).await
    }

    /// Seed URLs for `--redis-url` of a cluster on `ports` (as `start_on` takes them):
    /// two of the three nodes, so the client must learn the third from the cluster.
    fn seeds_for(ports: &[u16]) -> String {
        format!(
            "redis://127.0.0.1:{}, redis://127.0.0.1:{}",
            ports[0], ports[1]
        )
    }

    /// A cluster whose nodes listen on `ports[..3]`, with cluster buses on `ports[3..]`.
    async fn start_on(ports: Vec<u16>) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "audit-gateway-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut cluster = Self {
            dir,
            nodes: Vec::new(),
        };
        for (&port, &bus) in ports[..3].iter().zip(&ports[3..]) {
            let conf = cluster.dir.join(format!("nodes-{port}.conf"));
            let args: Vec<OsString> = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-port".into(),
                bus.to_string().into(),
                "--cluster-config-file".into(),
                conf.into(),
                // Failure detection within a second, so the test sees the cluster
                // declare the killed master failed (and go down) without a long wait.
                "--cluster-node-timeout".into(),
                "1000".into(),
                "--dir".into(),
                cluster.dir.clone().into(),
            ];
            cluster.nodes.push(RedisServer::start_on(port, args).await);
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        // Nothing else runs on this runtime yet: blocking on redis-cli here is harmless.
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}): it comes with Debian's redis-server")
            });
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for i in 0..3 {
            assert!(
                until_for(Duration::from_secs(10), async || {
                    cluster.state(i).await.as_deref() == Some("ok")
                })
                .await,
                "node {i} never said cluster_state:ok"
            );
        }
        cluster
    }

    /// Seed URLs for `--redis-url` (`seeds_for`).
    fn seeds(&self) -> String {
        let ports: Vec<u16> = self.nodes.iter().map(RedisServer::port).collect();
        Self::seeds_for(&ports)
    }

    /// `cluster_state` from node `i`'s `CLUSTER INFO`.
    async fn state(&self, i: usize) -> Option<String> {
        let Some(Reply::Text(info)) = self.nodes[i].command(&["CLUSTER", "INFO"]).await else {
            return None;
        };
        info.lines()
            .find_map(|l| l.strip_prefix("cluster_state:"))
            .map(|s| s.trim().to_owned())
    }

    /// The keys node `i` holds (KEYS: fine for a test's few keys); empty if it is down.
    async fn keys_on(&self, i: usize) -> Vec<String> {
        self.nodes[i].keys().await
    }

    /// The keys of every live node.
    async fn keys(&self) -> Vec<String> {
        let mut all = Vec::new();
        for i in 0..self.nodes.len() {
            all.extend(self.keys_on(i).await);
        }
        all
    }

    /// SIGKILL node `i`: no goodbye to the cluster or the clients.
    fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SALT: &str = "shared-by-all-replicas";
const TOKEN: &str = "SECRET-PAT-4711";

/// A gateway sharing `cluster` (through its seeds), calling `confluence`.
async fn replica(confluence: &str, cluster: &Cluster) -> TestGateway {
    replica_of(confluence, cluster.seeds()).await
}

/// A gateway sharing the cluster at `seeds`, calling `confluence`.
async fn replica_of(confluence: &str, seeds: String) -> TestGateway {
    let mut config = test_config(confluence);
    config.auth = UpstreamAuth::Bearer(TOKEN.into());
    config.redis.url = Some(seeds.into());
    config.redis.cluster = true;
    config.credential_salt = Some(SALT.into());
    config.redis.pause = Duration::from_millis(200);
    // Roomier than the 50 ms default: the first operation also learns the slot map, and
    // these tests share two cores with other builds; a hit missed for time would fail
    // them.
    config.redis.timeout = Duration::from_millis(250);
    spawn_gateway(config).await
}

/// Fetches fresh pages (from `start` on) through `gw` until one lands in the cluster:
/// its connection then knows the slot map. Returns the next unused start.
async fn warm_up(gw: &mut TestGateway, cluster: &Cluster, mut start: i32) -> i32 {
    let before = cluster.keys().await.len();
    let landed = until_for(Duration::from_secs(10), async || {
        gw.client
            .get_since(page(start))
            .await
            .expect("warm-up call");
        start += 10;
        let stored = until_for(Duration::from_millis(500), async || {
            cluster.keys().await.len() > before
        });
        stored.await
    })
    .await;
    assert!(landed, "no page ever reached the cluster");
    start
}

#[tokio::test]
async fn replicas_share_pages_across_all_three_masters() {
    let cluster = Cluster::start().await;
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let mut a = replica(&sim.base_url(), &cluster).await;
    let mut b = replica(&sim.base_url(), &cluster).await;
    warm_up(&mut a, &cluster, 100_000).await;
    warm_up(&mut b, &cluster, 200_000).await;
    // A fetches pages until every master holds some (keys spread by hash slot; a few
    // dozen distinct queries reach all three), each stored before the next.
    let mut fetched = Vec::new();
    let spread = until_for(Duration::from_secs(30), async || {
        let start = fetched.len() as i32 * 10;
        let before = cluster.keys().await.len();
        let got = a
            .client
            .get_since(page(start))
            .await
            .expect("a")
            .into_inner();
        fetched.push((start, got));
        assert!(
            until_for(Duration::from_secs(2), async || cluster.keys().await.len()
                > before)
            .await,
            "page {start} was not stored"
        );
        let mut on_each = Vec::new();
        for i in 0..3 {
            on_each.push(cluster.keys_on(i).await.len());
        }
        on_each.iter().all(|&n| n > 0)
    })
    .await;
    assert!(spread, "pages never reached all three masters");
    let upstream = sim.request_count();
    for (start, got) in &fetched {
        let served = b
            .client
            .get_since(page(*start))
            .await
            .expect("b")
            .into_inner();
        assert_eq!(&served, got, "page {start}");
    }
    assert_eq!(
        sim.request_count(),
        upstream,
        "replica b fetched {} of {} pages from Confluence",
        sim.request_count() - upstream,
        fetched.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_traffic_fails_no_call() {
    let mut cluster = Cluster::start().await;
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let mut a = replica(&sim.base_url(), &cluster).await;
    let mut b = replica(&sim.base_url(), &cluster).await;
    warm_up(&mut a, &cluster, 100_000).await;
    warm_up(&mut b, &cluster, 200_000).await;
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Traffic: A asks for a page nobody has (a Redis GET, an upstream fetch, a SET), B
    // for the one A fetched before (a Redis GET that hits while the key's master is
    // up), without pause, until told to stop.
    let traffic = tokio::spawn({
        let (done, stop) = (done.clone(), stop.clone());
        async move {
            let mut slowest = Duration::ZERO;
            let mut i = 1;
            while !stop.load(Ordering::Relaxed) {
                for (name, gw, start) in [("a", &mut a, i * 10), ("b", &mut b, (i - 1) * 10)] {
                    let t = Instant::now();
                    if let Err(status) = gw.client.get_since(page(start)).await {
                        return Err(format!("call {i} through {name} failed: {status}"));
                    }
                    slowest = slowest.max(t.elapsed());
                }
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(slowest)
        }
    });
    let calls_reach = async |n: usize| {
        until_for(Duration::from_secs(30), async || {
            done.load(Ordering::Relaxed) >= n || traffic.is_finished()
        })
        .await
    };
    assert!(calls_reach(10).await, "traffic never got going");
    let errors = METRICS.redis_errors.get();
    let before_kill = done.load(Ordering::Relaxed);
    let upstream_before_kill = sim.request_count();
    // A seed, and a master holding keys: the warm-up and the traffic spread pages over
    // all three masters (replicas_share_pages_across_all_three_masters shows they do).
    cluster.kill(0);
    // The survivors first keep the dead master's slots (calls for them fail at Redis),
    // then mark it failed and, with no replica to promote, declare the cluster down
    // (every key refused with CLUSTERDOWN). Calls go on through both phases.
    let down = until_for(Duration::from_secs(20), async || {
        cluster.state(1).await.as_deref() == Some("fail") || traffic.is_finished()
    })
    .await;
    assert!(down, "the survivors never noticed the dead master");
    let at_down = done.load(Ordering::Relaxed);
    assert!(calls_reach(at_down + 20).await, "traffic stalled");
    stop.store(true, Ordering::Relaxed);
    let slowest = traffic
        .await
        .expect("no panic")
        .unwrap_or_else(|e| panic!("{e}"));
    let after_kill = done.load(Ordering::Relaxed) - before_kill;
    eprintln!(
        "before the kill: {before_kill} call pairs, {upstream_before_kill} upstream requests; \
         after: {after_kill} call pairs ({} after cluster_state:fail), {} upstream requests, \
         {} Redis errors counted; slowest call {slowest:?}",
        done.load(Ordering::Relaxed) - at_down,
        sim.request_count() - upstream_before_kill,
        METRICS.redis_errors.get() - errors
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a call took {slowest:?}: the tier must cut Redis off, not wait on it"
    );
    // The outage was seen (metrics are process-wide: only growth is checked).
    assert!(
        METRICS.redis_errors.get() > errors,
        "no Redis error counted"
    );
}

#[tokio::test]
async fn a_cool_down_one_replica_started_holds_the_others_back_through_the_cluster() {
    let cluster = Cluster::start().await;
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let mut a = replica(&sim.base_url(), &cluster).await;
    let mut b = replica(&sim.base_url(), &cluster).await;
    warm_up(&mut a, &cluster, 100_000).await;
    warm_up(&mut b, &cluster, 200_000).await;
    let warm = sim.request_count();
    a_cool_down_holds_the_other_replica_back(&sim, a, &mut b, async || cluster.keys().await, warm)
        .await;
}

#[tokio::test]
async fn a_cluster_down_at_start_is_used_once_it_is_up() {
    let ports = free_ports(6);
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    // The gateways start (the connection is lazy) and serve with no cluster to reach.
    let mut a = replica_of(&sim.base_url(), Cluster::seeds_for(&ports)).await;
    let mut b = replica_of(&sim.base_url(), Cluster::seeds_for(&ports)).await;
    for start in 0..3 {
        a.client
            .get_since(page(start))
            .await
            .expect("without Redis");
    }
    assert_eq!(sim.request_count(), 3);
    let cluster = Cluster::start_on(ports).await;
    // Once the pause after the failures is over, a's misses are stored and b is served
    // from them.
    let mut start = 100;
    let shared = until_for(Duration::from_secs(20), async || {
        start += 10;
        let before = sim.request_count();
        let keys = cluster.keys().await.len();
        a.client.get_since(page(start)).await.expect("a");
        let stored = until_for(Duration::from_millis(500), async || {
            cluster.keys().await.len() > keys
        });
        stored.await;
        b.client.get_since(page(start)).await.expect("b");
        sim.request_count() == before + 1
    })
    .await;
    assert!(
        shared,
        "replicas never shared a page once the cluster was up"
    );
}

#[tokio::test]
async fn cluster_mode_rejects_a_bad_seed() {
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let mut config = test_config(&sim.base_url());
    config.credential_salt = Some(SALT.into());
    config.redis.cluster = true;
    config.redis.url = Some("redis://127.0.0.1:1, not a url".into());
    let err = match Gateway::bind(config).await {
        Ok(_) => panic!("a seed list with a bad URL was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.flag, "--redis-url", "{err}");
}
