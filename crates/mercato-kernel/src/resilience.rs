//! Resilience for calls that leave the process: exponential backoff with jitter, and a
//! circuit breaker. Timeouts are `tokio::time::timeout` at the call site.

use rand::Rng;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Delay before attempt `attempt + 1` after `attempt` failures (1-based): `base × 2^(n-1)`,
/// capped at `max`, with "full jitter" in [d/2, d] so that retries of many failed jobs spread
/// out instead of arriving together.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let d = base.saturating_mul(1u32 << exp).min(max);
    let half = d / 2;
    let jitter_us =
        rand::thread_rng().gen_range(0..=half.as_micros().min(u128::from(u64::MAX)) as u64);
    half + Duration::from_micros(jitter_us)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Opens after `threshold` consecutive failures; after `cool_down` lets one trial call through
/// (half-open); a success closes it, a failure opens it again.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: Duration,
    inner: Mutex<BreakerInner>,
}

#[derive(Debug)]
struct BreakerInner {
    failures: u32,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cool_down: Duration) -> CircuitBreaker {
        CircuitBreaker {
            threshold: threshold.max(1),
            cool_down,
            inner: Mutex::new(BreakerInner {
                failures: 0,
                opened_at: None,
                trial_in_flight: false,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        let Ok(g) = self.inner.lock() else {
            return BreakerState::Closed;
        };
        match g.opened_at {
            None => BreakerState::Closed,
            Some(t) if t.elapsed() >= self.cool_down => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// Whether a call may go out now. In half-open state only one trial call is allowed.
    pub fn allow(&self) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return true;
        };
        match g.opened_at {
            None => true,
            Some(t) if t.elapsed() >= self.cool_down && !g.trial_in_flight => {
                g.trial_in_flight = true;
                true
            }
            Some(_) => false,
        }
    }

    pub fn record_success(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.failures = 0;
            g.opened_at = None;
            g.trial_in_flight = false;
        }
    }

    pub fn record_failure(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.failures = g.failures.saturating_add(1);
            g.trial_in_flight = false;
            if g.failures >= self.threshold {
                g.opened_at = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..50 {
            let d1 = backoff(1, base, max);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = backoff(3, base, max);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d10 = backoff(10, base, max);
            assert!(d10 <= max && d10 >= max / 2);
        }
    }

    #[test]
    fn breaker_opens_and_recovers() {
        let b = CircuitBreaker::new(2, Duration::from_millis(20));
        assert!(b.allow());
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow());
        assert!(!b.allow(), "only one trial call in half-open state");
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
