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
}
