//! Caps on long-lived streams (SSE) per user and per client IP.
//!
//! Every open stream holds a [`StreamPermit`]; the count goes down when the stream is dropped
//! (the client hung up, or the server stops). Beyond the cap a new stream is refused with 429
//! `too_many_streams` before any work is done — one user opening hundreds of streams cannot
//! pin the server's memory and connections. Counts are per process (streams are held by the
//! process serving them).

use crate::error::{ApiError, Code};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Counts {
    users: HashMap<String, u32>,
    ips: HashMap<IpAddr, u32>,
}

/// The shared counters (one per process, in the [`crate::Kernel`]).
#[derive(Debug)]
pub struct StreamLimits {
    per_user: u32,
    per_ip: u32,
    counts: Arc<Mutex<Counts>>,
}

/// One open stream; dropping it frees its place.
#[derive(Debug)]
pub struct StreamPermit {
    user: Option<String>,
    ip: Option<IpAddr>,
    counts: Arc<Mutex<Counts>>,
}

impl StreamLimits {
    pub fn new(per_user: u32, per_ip: u32) -> StreamLimits {
        StreamLimits {
            per_user: per_user.max(1),
            per_ip: per_ip.max(1),
            counts: Arc::default(),
        }
    }

    /// A place for one more stream of `user` (if signed in) from `ip` (if known), or 429.
    pub fn open(&self, user: Option<&str>, ip: Option<IpAddr>) -> Result<StreamPermit, ApiError> {
        let mut c = self
            .counts
            .lock()
            .map_err(|_| ApiError::internal(anyhow::anyhow!("stream counters poisoned")))?;
        let user_n = user.and_then(|u| c.users.get(u).copied()).unwrap_or(0);
        let ip_n = ip.and_then(|i| c.ips.get(&i).copied()).unwrap_or(0);
        if user.is_some() && user_n >= self.per_user {
            metrics::counter!("streams_refused_total", "by" => "user").increment(1);
            return Err(ApiError::new(Code::TooManyStreams)
                .detail(format!(
                    "at most {} open streams per user; close one first",
                    self.per_user
                ))
                .retry_after(5));
        }
        if ip.is_some() && ip_n >= self.per_ip {
            metrics::counter!("streams_refused_total", "by" => "ip").increment(1);
            return Err(ApiError::new(Code::TooManyStreams)
                .detail(format!(
                    "at most {} open streams per client address",
                    self.per_ip
                ))
                .retry_after(5));
        }
        if let Some(u) = user {
            *c.users.entry(u.to_owned()).or_default() += 1;
        }
        if let Some(i) = ip {
            *c.ips.entry(i).or_default() += 1;
        }
        metrics::gauge!("streams_open").increment(1.0);
        Ok(StreamPermit {
            user: user.map(str::to_owned),
            ip,
            counts: self.counts.clone(),
        })
    }

    /// Open streams of `user` (for tests and the admin overview).
    pub fn open_for_user(&self, user: &str) -> u32 {
        self.counts
            .lock()
            .map(|c| c.users.get(user).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let Ok(mut c) = self.counts.lock() else {
            return;
        };
        if let Some(u) = &self.user
            && let Some(n) = c.users.get_mut(u)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.users.remove(u);
            }
        }
        if let Some(i) = &self.ip
            && let Some(n) = c.ips.get_mut(i)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.ips.remove(i);
            }
        }
        metrics::gauge!("streams_open").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_user_and_ip_and_frees_on_drop() {
        let l = StreamLimits::new(2, 3);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = l
            .open(Some("usr_a"), Some(ip))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let _b = l
            .open(Some("usr_a"), Some(ip))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let refused = l.open(Some("usr_a"), Some(ip));
        assert!(matches!(refused, Err(e) if e.code == Code::TooManyStreams));
        let _c = l
            .open(Some("usr_b"), Some(ip))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(l.open(Some("usr_c"), Some(ip)).is_err(), "the IP is full");
        drop(a);
        assert_eq!(l.open_for_user("usr_a"), 1);
        assert!(l.open(Some("usr_a"), Some(ip)).is_ok());
    }
}
