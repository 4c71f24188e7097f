//! The shared tier: Redis, below the in-process tier, so replicas fetch each page once.
//!
//! It can never fail a call: every operation has a short time-out, a failing Redis is
//! skipped for a while (one log line when it goes, one when it is back), and a value
//! that is not ours (foreign, truncated, corrupted) is a miss.
//!
//! It also shares the upstream cool-downs between replicas ([`SharedCooldowns`],
//! `src/upstream/cooldown.rs`): under `{prefix}:v1:cooldown:{digest}`, a value of the
//! page layout whose page is the end of the cool-down (unix ms, 8 bytes), its expiry
//! that end plus the half-open time; beside it `…:probe`, set NX by the replica whose
//! request probes the ended cool-down. And the cuts of paced limits ([`SharedPaces`],
//! `src/upstream/pacing.rs`): under `{prefix}:v1:pace:{digest}`, the last cut's limit (an
//! f64) and when it was made (unix ms), kept a minute.
//!
//! With `--redis-cluster` the same code runs against a Redis Cluster ([`Connection`]):
//! every operation here touches exactly one key (GET or SET), so it always hashes to one
//! slot and the cluster client routes it to that slot's master; multi-key commands
//! (MGET, transactions, Lua over several keys) would fail with CROSSSLOT there, so
//! keep each operation to one key.

use std::{
    borrow::Cow,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use bytes::Bytes;
use redis::{
    ErrorKind, RedisError, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
};
use ring::{digest, hmac};
use secrecy::{ExposeSecret, SecretString};

use super::{PageKey, SharedTier};
use crate::{
    audit::Span,
    credential::to_hex,
    metrics::{METRICS, Tier},
    upstream::{
        cooldown::{SharedCooldowns, SharedView},
        pacing::SharedPaces,
    },
};

/// Value layout version; a change makes old values misses, never misreads.
const MAGIC: &[u8; 4] = b"AGP2";
/// Magic, expiry (unix ms), MAC.
const HEADER: usize = 4 + 8 + MAC;
/// Bytes of the HMAC-SHA-256 kept.
const MAC: usize = 16;

/// Redis refused the URL or the client could not be built. It carries the client's
/// message with the URL's password taken out, not the client's error itself: that one
/// may print the URL whole.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RedisOpenError(String);

/// The shared Redis tier: the `redis` section of `GatewayConfig`.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// A Redis shared by all replicas (`--redis-url`), auth and database included;
    /// `None`: in-process only. `SecretString`: it may hold a password.
    pub url: Option<SecretString>,
    /// Whether `url` names the seed nodes of a Redis Cluster, comma-separated
    /// (`--redis-cluster`).
    pub cluster: bool,
    /// Time-out of each Redis operation, and of connecting (`--redis-timeout`).
    pub timeout: Duration,
    /// How long Redis is skipped after an error (`--redis-pause`).
    pub pause: Duration,
    /// Prefix of the gateway's Redis keys (`--redis-key-prefix`).
    pub key_prefix: Cow<'static, str>,
}

impl RedisConfig {
    /// The defaults, which `GatewayConfig::DEFAULT` holds.
    pub const DEFAULT: Self = Self {
        url: None,
        cluster: false,
        // A cache lookup must cost far less than the Confluence call it saves.
        timeout: Duration::from_millis(50),
        pause: Duration::from_secs(5),
        key_prefix: Cow::Borrowed("audit-gateway"),
    };
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The connection the tier's commands go through: one server, or a cluster. Both
/// reconnect by themselves and clone cheaply (handles to multiplexed connections), so
/// the rest of the tier is the same code for both modes.
#[derive(Clone)]
enum Connection {
    /// One Redis server (or a proxy in front of several).
    Single(ConnectionManager),
    /// A Redis Cluster: the client keeps the slot map, routes each command to its key's
    /// master, follows MOVED and ASK, and reconnects to nodes (or the seeds) it lost.
    Cluster(ClusterConnection),
}

impl Connection {
    /// A lazy connection to `url` as `settings` say: nothing is dialled until the first
    /// command.
    fn open(url: &str, settings: &RedisConfig) -> RedisResult<Self> {
        if !settings.cluster {
            let client = redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.timeout))
                .set_response_timeout(Some(settings.timeout))
                .set_number_of_retries(1);
            let conn = ConnectionManager::new_lazy_with_config(client, config)?;
            return Ok(Self::Single(conn));
        }
        let seeds: Vec<&str> = seeds(url).collect();
        // One retry, like the single-server manager: a redirect or a reconnect still fits
        // in the time-out, and the tier's own pause covers longer trouble.
        let client = ClusterClientBuilder::new(seeds).retries(1).build()?;
        let config = ClusterConfig::new()
            .set_connection_timeout(settings.timeout)
            .set_response_timeout(settings.timeout);
        Ok(Self::Cluster(
            client.get_pending_async_connection_with_config(config),
        ))
    }

    /// Runs `cmd`, whose keys (one, see the module comment) decide the node in a cluster.
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self {
            Self::Single(c) => cmd.query_async(c).await,
            Self::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// The seed URLs in a `--redis-url` value of `--redis-cluster`: comma-separated, blanks
/// around them ignored.
fn seeds(url: &str) -> impl Iterator<Item = &str> {
    url.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Whether `e` says Redis (or the cluster's part holding the key) is unreachable or
/// unusable, rather than refusing one operation on one key.
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        // A cluster without a master for the slot (CLUSTERDOWN), mid-failover
        // (TRYAGAIN, MASTERDOWN), redirects the client gave up on, or no connection to
        // the slot's node: the tier is in trouble, not the key.
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(redis::ServerErrorKind::MasterDown)
        )
}

/// The Redis tier.
pub(crate) struct RedisTier {
    conn: Connection,
    settings: RedisConfig,
    /// `settings.url`, exposed once: errors are logged with its password taken out.
    url: String,
    /// Key of the values' MAC (derived from the credential salt): a value anyone else
    /// wrote, or one moved to another key, is a miss.
    value_key: hmac::Key,
    /// Process-relative millis until which the tier is skipped (0: in use).
    paused_until: AtomicU64,
    /// Whether the tier is known to be down (for one log line per outage).
    down: AtomicBool,
    /// Process-relative millis of the last failure: only an operation started after it
    /// proves the tier is back.
    failed_at: AtomicU64,
    epoch: Instant,
}

impl RedisTier {
    /// A tier for `settings`, its values authenticated with `value_key`; it connects
    /// lazily, so a Redis that is down at start only means misses until it is up.
    pub(crate) fn new(
        settings: &RedisConfig,
        value_key: hmac::Key,
    ) -> Result<Self, RedisOpenError> {
        let url = settings
            .url
            .as_ref()
            .map(|u| u.expose_secret().to_owned())
            .ok_or_else(|| RedisOpenError("no URL".to_owned()))?;
        let conn = Connection::open(&url, settings)
            .map_err(|e| RedisOpenError(redact(&e.to_string(), &url)))?;
        Ok(Self {
            conn,
            settings: settings.clone(),
            url,
            value_key,
            paused_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
            failed_at: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The Redis key of a page: prefix, layout version, and a digest of the whole cache
    /// key (which holds only the credential's keyed fingerprint, never the credential).
    pub(crate) fn key_for(prefix: &str, key: &PageKey) -> String {
        let q = &key.query;
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [
            key.base_url.as_bytes(),
            key.credential.as_bytes(),
            &span_bytes(q.span),
            &q.start.to_be_bytes(),
            &q.limit.to_be_bytes(),
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        match &q.search_string {
            Some(s) => {
                ctx.update(&[1]);
                ctx.update(s.as_bytes());
            }
            None => ctx.update(&[0]),
        }
        let hex = to_hex(&ctx.finish().as_ref()[..20]);
        // v2: pages encode values nested past 100 protobuf levels as JSON text
        // (`src/pb/convert/`); a v1 page of such a record would not decode in clients.
        format!("{prefix}:v2:page:{hex}")
    }

    /// The Redis key of a credential's cool-down at a Confluence site: prefix, layout
    /// version, and a digest of both (the fingerprint is keyed already; the digest keeps
    /// the key's shape that of page keys).
    pub(crate) fn cooldown_key_for(prefix: &str, base_url: &str, fingerprint: &str) -> String {
        format!(
            "{prefix}:v1:cooldown:{}",
            site_credential(base_url, fingerprint)
        )
    }

    /// The Redis key of a credential's last paced-limit cut at a Confluence site, shaped
    /// as [`RedisTier::cooldown_key_for`].
    pub(crate) fn pace_key_for(prefix: &str, base_url: &str, fingerprint: &str) -> String {
        format!(
            "{prefix}:v1:pace:{}",
            site_credential(base_url, fingerprint)
        )
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn usable(&self) -> bool {
        let until = self.paused_until.load(Ordering::Relaxed);
        if until != 0 && self.now_ms() < until {
            METRICS.redis_skipped.inc();
            return false;
        }
        true
    }

    fn failed(&self, what: &str, err: &str) {
        METRICS.redis_errors.inc();
        let now = self.now_ms();
        self.failed_at.store(now.max(1), Ordering::Relaxed);
        let until = now + self.settings.pause.as_millis() as u64;
        self.paused_until.store(until.max(1), Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            METRICS.redis_outages.inc();
            METRICS.redis_down.set(1);
            tracing::warn!(
                operation = what,
                error = %redact(err, &self.url),
                pause = ?self.settings.pause,
                "Redis cache tier unavailable; serving without it and retrying later"
            );
        }
    }

    fn succeeded(&self, started_ms: u64) {
        if started_ms <= self.failed_at.load(Ordering::Relaxed) {
            // Began before the last failure: it says nothing about the tier now.
            return;
        }
        if self.down.swap(false, Ordering::Relaxed) {
            METRICS.redis_down.set(0);
            tracing::info!("Redis cache tier is back");
        }
        self.paused_until.store(0, Ordering::Relaxed);
    }

    async fn run<T: redis::FromRedisValue>(&self, what: &str, cmd: redis::Cmd) -> Option<T> {
        let mut conn = self.conn.clone();
        let started = self.now_ms();
        let call = conn.query::<T>(&cmd);
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(v)) => {
                self.succeeded(started);
                Some(v)
            }
            Ok(Err(e)) if !is_outage(&e) => {
                // Redis answered, with an error about this key (a foreign value of
                // another type, say): a miss, not an outage.
                self.succeeded(started);
                tracing::debug!(operation = what, error = %redact(&e.to_string(), &self.url), "Redis refused an operation");
                None
            }
            Ok(Err(e)) => {
                self.failed(what, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(what, "timed out");
                None
            }
        }
    }
}

#[async_trait]
impl SharedTier for RedisTier {
    async fn get(&self, key: &PageKey) -> Option<(Bytes, Duration)> {
        if !self.usable() {
            return None;
        }
        let redis_key = Self::key_for(&self.settings.key_prefix, key);
        let mut cmd = redis::cmd("GET");
        cmd.arg(&redis_key);
        let value: Option<Vec<u8>> = self.run("GET", cmd).await?;
        let key = &self.value_key;
        match value.and_then(|v| unwrap_value(key, &redis_key, &v, unix_ms())) {
            Some(hit) => {
                METRICS.cache_lookup(Tier::Redis, true);
                Some(hit)
            }
            None => {
                METRICS.cache_lookup(Tier::Redis, false);
                None
            }
        }
    }

    async fn put(&self, key: &PageKey, page: Bytes, ttl: Duration, replace: bool) {
        if !self.usable() || ttl.is_zero() {
            return;
        }
        let redis_key = Self::key_for(&self.settings.key_prefix, key);
        let value = wrap_value(
            &self.value_key,
            &redis_key,
            &page,
            unix_ms() + ttl.as_millis() as u64,
        );
        let mut cmd = redis::cmd("SET");
        cmd.arg(&redis_key)
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        if !replace {
            cmd.arg("NX");
        }
        let _: Option<()> = self.run("SET", cmd).await;
    }
}

#[async_trait]
impl SharedCooldowns for RedisTier {
    async fn get(&self, base_url: &str, fingerprint: &str) -> SharedView {
        if !self.usable() {
            return SharedView::Unknown;
        }
        let redis_key = Self::cooldown_key_for(&self.settings.key_prefix, base_url, fingerprint);
        let mut cmd = redis::cmd("GET");
        cmd.arg(&redis_key);
        let Some(value) = self.run::<Option<Vec<u8>>>("GET", cmd).await else {
            return SharedView::Unknown;
        };
        let Some(value) = value else {
            return SharedView::Clear;
        };
        // Only a value this gateway's salt signed for this key is obeyed.
        match unwrap_value(&self.value_key, &redis_key, &value, unix_ms()) {
            // Written before cool-downs lingered half-open: it ends when it expires.
            Some((rest, left)) if rest.is_empty() => SharedView::Until(SystemTime::now() + left),
            Some((rest, _)) => match <[u8; 8]>::try_from(&rest[..]) {
                Ok(ms) => {
                    SharedView::Until(UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(ms)))
                }
                Err(_) => SharedView::Unknown,
            },
            None => SharedView::Unknown,
        }
    }

    async fn put(&self, base_url: &str, fingerprint: &str, until: SystemTime, linger: Duration) {
        let until_ms = until
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let expires_ms = until_ms.saturating_add(linger.as_millis() as u64);
        let ttl = expires_ms.saturating_sub(unix_ms());
        if !self.usable() || ttl == 0 {
            return;
        }
        let redis_key = Self::cooldown_key_for(&self.settings.key_prefix, base_url, fingerprint);
        let value = wrap_value(
            &self.value_key,
            &redis_key,
            &until_ms.to_be_bytes(),
            expires_ms,
        );
        // Last writer wins: a replica that saw a shorter wait later may shorten it, which
        // costs at most one more early request, answered with a new cool-down.
        let mut cmd = redis::cmd("SET");
        cmd.arg(&redis_key).arg(value).arg("PX").arg(ttl);
        let _: Option<()> = self.run("SET", cmd).await;
    }

    async fn clear(&self, base_url: &str, fingerprint: &str) {
        if !self.usable() {
            return;
        }
        let redis_key = Self::cooldown_key_for(&self.settings.key_prefix, base_url, fingerprint);
        // One key per command: the probe key may live in another cluster slot.
        for key in [format!("{redis_key}:probe"), redis_key] {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(key);
            let _: Option<i64> = self.run("DEL", cmd).await;
        }
    }

    async fn claim_probe(&self, base_url: &str, fingerprint: &str, hold: Duration) -> Option<bool> {
        if !self.usable() {
            return None;
        }
        let redis_key = Self::cooldown_key_for(&self.settings.key_prefix, base_url, fingerprint);
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{redis_key}:probe"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(hold.as_millis().max(1) as u64);
        // `OK` when set, nil when another replica holds the claim.
        let set: Option<redis::Value> = self.run("SET", cmd).await;
        set.map(|v| !matches!(v, redis::Value::Nil))
    }

    async fn end_probe(&self, base_url: &str, fingerprint: &str) {
        if !self.usable() {
            return;
        }
        let redis_key = Self::cooldown_key_for(&self.settings.key_prefix, base_url, fingerprint);
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{redis_key}:probe"));
        let _: Option<i64> = self.run("DEL", cmd).await;
    }
}

/// How long a cut of a paced limit is kept for other replicas: long enough for every
/// replica to look (once a second), short enough that an old cut does not hold a
/// recovered site back.
const PACE_KEPT: Duration = Duration::from_secs(60);

#[async_trait]
impl SharedPaces for RedisTier {
    async fn last_cut(&self, base_url: &str, fingerprint: &str) -> Option<(f64, SystemTime)> {
        if !self.usable() {
            return None;
        }
        let redis_key = Self::pace_key_for(&self.settings.key_prefix, base_url, fingerprint);
        let mut cmd = redis::cmd("GET");
        cmd.arg(&redis_key);
        let value = self.run::<Option<Vec<u8>>>("GET", cmd).await??;
        // Only a value this gateway's salt signed for this key is obeyed.
        let (rest, _) = unwrap_value(&self.value_key, &redis_key, &value, unix_ms())?;
        let limit = f64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let at = u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
        Some((limit, UNIX_EPOCH + Duration::from_millis(at)))
    }

    async fn put_cut(&self, base_url: &str, fingerprint: &str, limit: f64) {
        if !self.usable() {
            return;
        }
        let redis_key = Self::pace_key_for(&self.settings.key_prefix, base_url, fingerprint);
        let now = unix_ms();
        let mut cut = limit.to_be_bytes().to_vec();
        cut.extend_from_slice(&now.to_be_bytes());
        let kept = PACE_KEPT.as_millis() as u64;
        let value = wrap_value(&self.value_key, &redis_key, &cut, now + kept);
        // Last writer wins: the latest cut is the one the others take in.
        let mut cmd = redis::cmd("SET");
        cmd.arg(&redis_key).arg(value).arg("PX").arg(kept);
        let _: Option<()> = self.run("SET", cmd).await;
    }
}

/// A digest of a credential's keyed fingerprint at a Confluence site, as hex.
fn site_credential(base_url: &str, fingerprint: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [base_url.as_bytes(), fingerprint.as_bytes()] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    to_hex(&ctx.finish().as_ref()[..20])
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `AGP2 | expiry (unix ms) | MAC | page`, the MAC (HMAC-SHA-256, keyed by the salt) over
/// the Redis key, the expiry and the page.
pub(crate) fn wrap_value(
    mac_key: &hmac::Key,
    redis_key: &str,
    page: &[u8],
    expires_unix_ms: u64,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + page.len());
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&expires_unix_ms.to_be_bytes());
    v.extend_from_slice(&mac(mac_key, redis_key, expires_unix_ms, page).as_ref()[..MAC]);
    v.extend_from_slice(page);
    v
}

/// The page in a value of ours under `redis_key` and the time it has left; `None` for
/// anything else: another format, a MAC that does not verify (written without the salt,
/// or moved from another key), or expired.
pub(crate) fn unwrap_value(
    mac_key: &hmac::Key,
    redis_key: &str,
    v: &[u8],
    now_unix_ms: u64,
) -> Option<(Bytes, Duration)> {
    if v.len() < HEADER || &v[..4] != MAGIC {
        return None;
    }
    let expires = u64::from_be_bytes(v[4..12].try_into().ok()?);
    let page = &v[HEADER..];
    let expected = mac(mac_key, redis_key, expires, page);
    let differs = expected.as_ref()[..MAC]
        .iter()
        .zip(&v[12..HEADER])
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if differs != 0 || expires <= now_unix_ms {
        return None;
    }
    Some((
        Bytes::copy_from_slice(page),
        Duration::from_millis(expires - now_unix_ms),
    ))
}

fn mac(key: &hmac::Key, redis_key: &str, expires_unix_ms: u64, page: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(&(redis_key.len() as u64).to_be_bytes());
    ctx.update(redis_key.as_bytes());
    ctx.update(&expires_unix_ms.to_be_bytes());
    ctx.update(page);
    ctx.sign()
}

/// An error message with the passwords (if any) of the URL, or of each comma-separated
/// seed URL of a cluster, blanked.
fn redact(message: &str, url: &str) -> String {
    let mut message = message.to_owned();
    for seed in seeds(url) {
        if let Some(pw) = url::Url::parse(seed)
            .ok()
            .and_then(|u| u.password().map(str::to_owned))
            .filter(|pw| !pw.is_empty())
        {
            message = message.replace(&pw, "<redacted>");
        }
    }
    message
}

/// A page query's span as key bytes: the endpoint, then its parameters.
fn span_bytes(span: Span) -> Vec<u8> {
    let mut b = Vec::with_capacity(17);
    match span {
        Span::Since { number, units } => {
            b.push(0);
            b.extend_from_slice(&number.to_be_bytes());
            b.extend_from_slice(units.as_str().as_bytes());
        }
        Span::Range { from, to } => {
            b.push(1);
            b.extend_from_slice(&from.to_be_bytes());
            b.extend_from_slice(&to.to_be_bytes());
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::PageQuery;

    #[test]
    fn values_round_trip_and_reject_what_is_not_ours() {
        let ours = hmac::Key::new(hmac::HMAC_SHA256, b"our salt-derived key");
        let theirs = hmac::Key::new(hmac::HMAC_SHA256, b"somebody else's key");
        let v = wrap_value(&ours, "k1", b"page", 10_000);
        assert_eq!(
            unwrap_value(&ours, "k1", &v, 4_000),
            Some((Bytes::from_static(b"page"), Duration::from_millis(6_000)))
        );
        assert_eq!(unwrap_value(&ours, "k1", &v, 10_000), None, "expired");
        assert_eq!(
            unwrap_value(&ours, "k2", &v, 0),
            None,
            "moved to another key"
        );
        assert_eq!(
            unwrap_value(&theirs, "k1", &v, 0),
            None,
            "written without the salt"
        );
        let forged = wrap_value(&theirs, "k1", b"page", 10_000);
        assert_eq!(unwrap_value(&ours, "k1", &forged, 0), None, "forged");
        for i in 0..v.len() {
            let mut flipped = v.clone();
            flipped[i] ^= 1;
            assert_eq!(
                unwrap_value(&ours, "k1", &flipped, 0),
                None,
                "byte {i} edited"
            );
        }
        assert_eq!(unwrap_value(&ours, "k1", b"garbage", 0), None);
        assert_eq!(
            unwrap_value(&ours, "k1", &v[..HEADER - 1], 0),
            None,
            "truncated"
        );
    }

    #[test]
    fn keys_hold_no_part_of_the_key_material() {
        let key = PageKey {
            base_url: "https://x.atlassian.net/wiki".into(),
            credential: "0123456789abcdef0123456789abcdef".into(),
            query: PageQuery::default(),
        };
        let k = RedisTier::key_for("audit-gateway", &key);
        // `{prefix}:v2:page:` and a lower-case hex digest, nothing else: no room for the
        // URL, the fingerprint or the query to show through.
        let digest = k.strip_prefix("audit-gateway:v2:page:").expect("prefix");
        assert!(digest.len() >= 32, "{k}");
        assert!(
            digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{k}"
        );
        assert!(!digest.contains("0123456789abcdef"), "{k}");
        let other = PageKey {
            credential: "fedcba9876543210fedcba9876543210".into(),
            ..key.clone()
        };
        assert_ne!(k, RedisTier::key_for("audit-gateway", &other));
    }

    #[test]
    fn passwords_are_redacted_from_messages() {
        let m = redact(
            "auth failed for redis://:hunter2@h",
            "redis://:hunter2@h:6379",
        );
        assert!(!m.contains("hunter2"), "{m}");
        let m = redact(
            "auth failed for redis://:hunter2@a and redis://:swordfish@b",
            "redis://:hunter2@a:6379, redis://:swordfish@b:6379",
        );
        assert!(!m.contains("hunter2") && !m.contains("swordfish"), "{m}");
    }
}
