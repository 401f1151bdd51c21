//! Rate limiting with GCRA (the generic cell rate algorithm): one timestamp per key (the
//! "theoretical arrival time"), exact, O(1), no background refill. The embedded limiter keeps
//! keys in process memory; a Redis implementation (Lua check-and-set) drops in behind the
//! same trait when several nodes must share limits.

use crate::auth::principal_of;
use crate::clock::{SharedClock, Timestamp};
use crate::error::{ApiError, Code};
use crate::http::ClientIp;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `burst` requests at once, refilled at `burst` per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub burst: u32,
    pub period: Duration,
}

impl Quota {
    pub fn per_second(n: u32) -> Quota {
        Quota {
            burst: n.max(1),
            period: Duration::from_secs(1),
        }
    }
    pub fn new(burst: u32, period: Duration) -> Quota {
        Quota {
            burst: burst.max(1),
            period,
        }
    }
    fn emission_interval_us(&self) -> i64 {
        (i64::try_from(self.period.as_micros()).unwrap_or(i64::MAX) / i64::from(self.burst)).max(1)
    }
}

/// The verdict on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset_after: Duration,
    /// Until the next request would be allowed (zero when allowed).
    pub retry_after: Duration,
}

impl Decision {
    /// `RateLimit-*` headers (IETF draft) and, when refused, `Retry-After`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        let put = |h: &mut HeaderMap, k: &'static str, v: u64| {
            if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
                h.insert(k, v);
            }
        };
        put(headers, "ratelimit-limit", u64::from(self.limit));
        put(headers, "ratelimit-remaining", u64::from(self.remaining));
        put(headers, "ratelimit-reset", secs(self.reset_after));
        if !self.allowed {
            put(headers, "retry-after", secs(self.retry_after).max(1));
        }
    }

    pub fn into_error(self) -> ApiError {
        let mut e = ApiError::new(Code::RateLimited);
        let mut h = HeaderMap::new();
        self.write_headers(&mut h);
        for (k, v) in h.iter() {
            e.headers.push((k.clone(), v.clone()));
        }
        e
    }
}

/// Pure GCRA step: given the stored TAT, returns (decision, new TAT to store if allowed).
pub fn gcra(tat: Option<i64>, now: Timestamp, quota: Quota, cost: u32) -> (Decision, i64) {
    let now = now.as_micros();
    let t = quota.emission_interval_us();
    let tolerance = t * i64::from(quota.burst);
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + t * i64::from(cost);
    let allow_at = new_tat - tolerance;
    let us = |v: i64| Duration::from_micros(u64::try_from(v.max(0)).unwrap_or(0));
    if allow_at <= now {
        let remaining = ((tolerance - (new_tat - now)) / t).max(0);
        (
            Decision {
                allowed: true,
                limit: quota.burst,
                remaining: u32::try_from(remaining).unwrap_or(0),
                reset_after: us(new_tat - now),
                retry_after: Duration::ZERO,
            },
            new_tat,
        )
    } else {
        let remaining = ((tolerance - (tat - now)) / t).max(0);
        (
            Decision {
                allowed: false,
                limit: quota.burst,
                remaining: u32::try_from(remaining).unwrap_or(0),
                reset_after: us(tat - now),
                retry_after: us(allow_at - now),
            },
            tat,
        )
    }
}

/// A rate limiter shared by the HTTP layer and services (login attempts, notifications).
#[async_trait::async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Spends `cost` units for `key` if the quota allows; `cost = 0` only peeks.
    async fn check(&self, key: &str, quota: Quota, cost: u32) -> Decision;
}

/// In-process GCRA limiter (embedded mode).
pub struct MemoryRateLimiter {
    clock: SharedClock,
    shards: Vec<Mutex<HashMap<String, i64>>>,
}

impl MemoryRateLimiter {
    pub fn new(clock: SharedClock) -> MemoryRateLimiter {
        MemoryRateLimiter {
            clock,
            shards: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, i64>> {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        &self.shards[(h % self.shards.len() as u64) as usize]
    }

    /// Drops keys whose bucket is full again (they carry no information).
    pub fn evict_idle(&self) {
        let now = self.clock.now().as_micros();
        for shard in &self.shards {
            if let Ok(mut map) = shard.lock() {
                map.retain(|_, tat| *tat > now);
            }
        }
    }
}

#[async_trait::async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, key: &str, quota: Quota, cost: u32) -> Decision {
        let now = self.clock.now();
        let Ok(mut map) = self.shard(key).lock() else {
            // A poisoned shard means a panic elsewhere; fail open rather than lock users out.
            return gcra(None, now, quota, cost.max(1)).0;
        };
        // A peek (cost 0) asks "would one more be allowed?" without spending it.
        let (decision, new_tat) = gcra(map.get(key).copied(), now, quota, cost.max(1));
        if decision.allowed && cost > 0 {
            map.insert(key.to_owned(), new_tat);
        }
        decision
    }
}

/// GCRA on Redis, so several nodes share one limit: the check-and-set is one Lua script (the
/// same arithmetic as [`gcra`]; the script returns the stored TAT and the decision is recomputed
/// here from it, so both implementations answer identically). Keys are `<prefix>rl:<key>` and
/// expire when their bucket is full again. If Redis does not answer within `timeout` (or is
/// unreachable), the node falls back to its own in-process limiter — limits then hold per node
/// — with a warning at most once a minute and the counter `rate_limit_redis_fallbacks_total`;
/// it reconnects in the background.
pub struct RedisRateLimiter {
    client: redis::Client,
    conn: tokio::sync::RwLock<Option<redis::aio::ConnectionManager>>,
    connecting: tokio::sync::Mutex<Option<std::time::Instant>>,
    prefix: String,
    clock: SharedClock,
    fallback: MemoryRateLimiter,
    script: redis::Script,
    timeout: Duration,
    last_warn: Mutex<Option<std::time::Instant>>,
}

const GCRA_LUA: &str = r#"
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then tat = math.max(tonumber(stored), now) end
local charge = cost
if charge < 1 then charge = 1 end
local new_tat = tat + t * charge
if new_tat - tolerance <= now and cost > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
end
if stored then return stored end
return false
"#;

impl RedisRateLimiter {
    /// Builds the limiter and tries to connect (within `timeout`); an unreachable Redis is not
    /// an error here: the node starts on its fallback and keeps trying.
    pub async fn connect(
        url: &str,
        prefix: &str,
        clock: SharedClock,
        timeout: Duration,
    ) -> anyhow::Result<RedisRateLimiter> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("redis_url {url:?} is not a Redis URL: {e}"))?;
        let limiter = RedisRateLimiter {
            client,
            conn: tokio::sync::RwLock::new(None),
            connecting: tokio::sync::Mutex::new(None),
            prefix: prefix.to_owned(),
            fallback: MemoryRateLimiter::new(clock.clone()),
            clock,
            script: redis::Script::new(GCRA_LUA),
            timeout,
            last_warn: Mutex::new(None),
        };
        limiter.reconnect().await;
        Ok(limiter)
    }

    /// Whether a connection to Redis is currently held.
    pub async fn connected(&self) -> bool {
        self.conn.read().await.is_some()
    }

    async fn reconnect(&self) {
        let Ok(mut last) = self.connecting.try_lock() else {
            return; // someone else is connecting
        };
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        let made = tokio::time::timeout(
            self.timeout.max(Duration::from_millis(500)),
            redis::aio::ConnectionManager::new(self.client.clone()),
        )
        .await;
        match made {
            Ok(Ok(c)) => *self.conn.write().await = Some(c),
            Ok(Err(e)) => self.warn(&format!("cannot connect: {e}")),
            Err(_) => self.warn("connecting timed out"),
        }
    }

    fn warn(&self, why: &str) {
        metrics::counter!("rate_limit_redis_fallbacks_total").increment(1);
        if let Ok(mut w) = self.last_warn.lock()
            && w.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            *w = Some(std::time::Instant::now());
            tracing::warn!(
                reason = why,
                "Redis rate limiter unavailable: limits hold per node until it answers"
            );
        }
    }

    async fn shared(&self, key: &str, quota: Quota, cost: u32) -> Option<Decision> {
        let conn = self.conn.read().await.clone();
        let Some(mut conn) = conn else {
            self.reconnect().await;
            return None;
        };
        let now = self.clock.now();
        let t = quota.emission_interval_us();
        let mut invocation = self.script.key(format!("{}rl:{key}", self.prefix));
        invocation
            .arg(now.as_micros())
            .arg(t)
            .arg(t * i64::from(quota.burst))
            .arg(cost);
        let call = invocation.invoke_async::<Option<String>>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(stored)) => {
                let tat = stored.and_then(|s| s.parse::<i64>().ok());
                Some(gcra(tat, now, quota, cost.max(1)).0)
            }
            Ok(Err(e)) => {
                self.warn(&e.to_string());
                None
            }
            Err(_) => {
                self.warn("timed out");
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &str, quota: Quota, cost: u32) -> Decision {
        match self.shared(key, quota, cost).await {
            Some(d) => d,
            None => self.fallback.check(key, quota, cost).await,
        }
    }
}

/// Quotas applied to every API request.
#[derive(Clone, Copy, Debug)]
pub struct HttpQuotas {
    pub per_ip: Quota,
    pub per_principal: Quota,
}

/// Middleware: per-IP quota for everyone, plus a per-principal quota for signed-in callers.
/// Sets `RateLimit-*` on every answer and refuses with 429 + `Retry-After`.
pub async fn limit_requests(
    limiter: Arc<dyn RateLimiter>,
    quotas: HttpQuotas,
    req: Request,
    next: Next,
) -> Response {
    let ip = req
        .extensions()
        .get::<ClientIp>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let ip_decision = limiter.check(&format!("ip:{ip}"), quotas.per_ip, 1).await;
    if !ip_decision.allowed {
        metrics::counter!("rate_limited_total", "scope" => "ip").increment(1);
        return ip_decision.into_error().into_response();
    }
    let mut shown = ip_decision;
    if let Some(p) = principal_of(req.extensions()) {
        let d = limiter
            .check(&format!("principal:{}", p.subject), quotas.per_principal, 1)
            .await;
        if !d.allowed {
            metrics::counter!("rate_limited_total", "scope" => "principal").increment(1);
            return d.into_error().into_response();
        }
        if d.remaining < shown.remaining {
            shown = d;
        }
    }
    let mut resp = next.run(req).await;
    shown.write_headers(resp.headers_mut());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    #[tokio::test]
    async fn burst_then_refill() {
        let clock = Arc::new(ManualClock::at(Timestamp::from_micros(1_000_000_000)));
        let rl = MemoryRateLimiter::new(clock.clone());
        let q = Quota::new(3, Duration::from_secs(3));
        for i in 0..3 {
            let d = rl.check("k", q, 1).await;
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 2 - i);
        }
        let d = rl.check("k", q, 1).await;
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        assert!(rl.check("k", q, 1).await.allowed);
        assert!(!rl.check("k", q, 1).await.allowed);
        let _ = clock.now();
    }

    #[tokio::test]
    async fn peeking_spends_nothing() {
        let clock = Arc::new(ManualClock::default());
        let rl = MemoryRateLimiter::new(clock);
        let q = Quota::new(1, Duration::from_secs(60));
        assert!(rl.check("k", q, 0).await.allowed);
        assert!(rl.check("k", q, 0).await.allowed);
        assert!(rl.check("k", q, 1).await.allowed);
        assert!(!rl.check("k", q, 0).await.allowed);
    }

    fn redis_url() -> Option<String> {
        let url = std::env::var("MERCATO_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty());
        if url.is_none() {
            eprintln!("MERCATO_TEST_REDIS_URL unset: Redis rate-limit test skipped");
        }
        url
    }

    async fn redis_limiter(url: &str, prefix: &str, clock: SharedClock) -> RedisRateLimiter {
        match RedisRateLimiter::connect(url, prefix, clock, Duration::from_millis(500)).await {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn two_nodes_share_one_redis_limit_and_answer_like_the_memory_limiter() {
        let Some(url) = redis_url() else { return };
        let clock = Arc::new(ManualClock::at(Timestamp::from_micros(2_000_000_000)));
        let prefix = format!("mercato-test-{}:", crate::id::random_hex(6));
        let a = redis_limiter(&url, &prefix, clock.clone()).await;
        let b = redis_limiter(&url, &prefix, clock.clone()).await;
        assert!(a.connected().await && b.connected().await);
        let memory = MemoryRateLimiter::new(clock.clone());
        let q = Quota::new(5, Duration::from_secs(10));
        // Five allowed in all, whichever node they reach; the sixth is refused on both.
        for i in 0..5 {
            let node = if i % 2 == 0 { &a } else { &b };
            let d = node.check("login:ada", q, 1).await;
            assert_eq!(d, memory.check("login:ada", q, 1).await, "request {i}");
            assert!(d.allowed, "request {i}");
        }
        let refused = b.check("login:ada", q, 1).await;
        assert!(!refused.allowed);
        assert_eq!(refused, memory.check("login:ada", q, 1).await);
        assert_eq!(refused.retry_after, Duration::from_secs(2));
        assert!(
            !a.check("login:ada", q, 0).await.allowed,
            "a peek sees it too"
        );
        clock.advance(Duration::from_secs(2));
        assert!(a.check("login:ada", q, 1).await.allowed);
        assert!(!b.check("login:ada", q, 1).await.allowed);
        // Another key is another bucket.
        assert!(b.check("login:bob", q, 1).await.allowed);
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_per_node_limits() {
        let clock = Arc::new(ManualClock::at(Timestamp::from_micros(2_000_000_000)));
        let rl = redis_limiter("redis://127.0.0.1:1/", "x:", clock).await;
        assert!(!rl.connected().await);
        let q = Quota::new(2, Duration::from_secs(10));
        assert!(rl.check("k", q, 1).await.allowed);
        assert!(rl.check("k", q, 1).await.allowed);
        assert!(
            !rl.check("k", q, 1).await.allowed,
            "still limited, on this node"
        );
        assert!(
            RedisRateLimiter::connect(
                "not a url",
                "x:",
                Arc::new(ManualClock::default()),
                Duration::from_millis(10)
            )
            .await
            .is_err()
        );
    }
}
