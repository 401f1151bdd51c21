//! Pure rules of merchant webhooks: event filters, secrets and Standard Webhooks signatures,
//! which target addresses are public, and the retry schedule. No IO.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

mercato_kernel::typed_id!(
    /// A webhook endpoint.
    EndpointId,
    "wh"
);
mercato_kernel::typed_id!(
    /// One event's delivery to one endpoint.
    DeliveryId,
    "whd"
);

/// The event type of test deliveries (`POST /admin/webhooks/{id}/test`).
pub const TEST_EVENT: &str = "webhook.test";

/// Most patterns one endpoint may subscribe to.
pub const MAX_PATTERNS: usize = 64;

/// Whether an endpoint subscribed to `patterns` wants `event_type`: `*` is every event,
/// `order.*` every `order.` event, anything else an exact name.
pub fn matches(patterns: &[String], event_type: &str) -> bool {
    patterns.iter().any(|p| {
        p == "*"
            || p == event_type
            || p.strip_suffix('*')
                .is_some_and(|prefix| prefix.ends_with('.') && event_type.starts_with(prefix))
    })
}

/// Checks one subscription pattern against the known event types (`known`): `*`, `<system>.*`
/// for a system that has events, or an exact known type. `Err` says why not.
pub fn check_pattern(pattern: &str, known: &[&str]) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    if let Some(prefix) = pattern.strip_suffix(".*") {
        if prefix.is_empty() || prefix.contains('*') {
            return Err(format!(
                "{pattern:?} is not a pattern (use `*` or `system.*`)"
            ));
        }
        let dotted = format!("{prefix}.");
        return if known.iter().any(|t| t.starts_with(&dotted)) {
            Ok(())
        } else {
            Err(format!("no event type starts with {dotted:?}"))
        };
    }
    if pattern.contains('*') {
        return Err(format!(
            "{pattern:?} is not a pattern (use `*` or `system.*`)"
        ));
    }
    if known.contains(&pattern) {
        Ok(())
    } else {
        Err(format!("{pattern:?} is not an event type"))
    }
}

/// A new signing secret: `whsec_` + base64 of 32 random bytes (Standard Webhooks format).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("whsec_{}", B64.encode(bytes))
}

/// The key bytes of a `whsec_…` secret (the base64 after the prefix).
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    B64.decode(secret.strip_prefix("whsec_")?).ok()
}

/// One `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>` signature.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = secret_key(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// The `webhook-signature` header: one signature per valid secret, space-separated (the
/// current secret first, then the previous one during a rotation's grace period).
pub fn signature_header(secrets: &[&str], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|s| sign(s, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `ip` is a public unicast address (not private, loopback, link-local, unspecified,
/// multicast, shared, documentation, benchmarking or reserved) — what a webhook may target.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64: may reach private IPv4
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0)) // IPv4-compatible
}

/// What is wrong with a target URL's shape (scheme, host, credentials), before any DNS.
pub fn check_url_shape(raw: &str) -> Result<reqwest::Url, String> {
    if raw.len() > 2048 {
        return Err("the URL is longer than 2048 characters".into());
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the URL must be http or https".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry credentials".into());
    }
    Ok(url)
}

/// The delay before the attempt after `failed_attempts` failures: `base × 2^(n−1)`, at most
/// `240 × base` (4 h at the default 1 min), jittered in [d/2, d] (the kernel's backoff).
pub fn retry_delay(failed_attempts: u32, base: Duration) -> Duration {
    mercato_kernel::resilience::backoff(failed_attempts, base, base.saturating_mul(240))
}

/// An endpoint's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndpointStatus {
    Enabled,
    Disabled,
}

impl EndpointStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointStatus::Enabled => "enabled",
            EndpointStatus::Disabled => "disabled",
        }
    }
    pub fn parse(s: &str) -> Option<EndpointStatus> {
        match s {
            "enabled" => Some(EndpointStatus::Enabled),
            "disabled" => Some(EndpointStatus::Disabled),
            _ => None,
        }
    }
}

/// A delivery's status: `pending` (first attempt or a retry is due later), `processing` (an
/// attempt is in flight), `delivered` (a 2xx answer), `dead` (out of attempts; redeliverable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Processing,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "processing" => Some(DeliveryStatus::Processing),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_names_systems_and_everything() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches(&p(&["order.*"]), "order.confirmed"));
        assert!(!matches(&p(&["order.*"]), "orders.confirmed"));
        assert!(!matches(&p(&["order.*"]), "payment.captured"));
        assert!(matches(&p(&["payment.captured"]), "payment.captured"));
        assert!(!matches(&p(&["payment.captured"]), "payment.captured2"));
        assert!(matches(&p(&["*"]), "anything.at_all"));
        assert!(!matches(&p(&[]), "order.confirmed"));
    }

    #[test]
    fn patterns_are_checked_against_known_types() {
        let known = ["order.confirmed", "payment.captured"];
        assert!(check_pattern("*", &known).is_ok());
        assert!(check_pattern("order.*", &known).is_ok());
        assert!(check_pattern("order.confirmed", &known).is_ok());
        assert!(check_pattern("order.nope", &known).is_err());
        assert!(check_pattern("shipping.*", &known).is_err());
        assert!(check_pattern("ord*", &known).is_err());
        assert!(check_pattern(".*", &known).is_err());
        assert!(check_pattern("*.*", &known).is_err());
    }

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        let both = signature_header(&[secret, secret], "msg", 1, body);
        assert_eq!(both.split(' ').count(), 2);
        assert!(sign("not-a-secret", "m", 1, body).is_none());
    }

    #[test]
    fn new_secrets_have_32_key_bytes() {
        let s = new_secret();
        assert!(s.starts_with("whsec_"));
        assert_eq!(secret_key(&s).map(|k| k.len()), Some(32));
        assert_ne!(s, new_secret());
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "10.0.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "192.168.1.1",
            "172.16.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "64:ff9b::a00:1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!is_public(ip), "{ip} is not public");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(is_public(ip), "{ip} is public");
        }
    }

    #[test]
    fn url_shapes() {
        assert!(check_url_shape("https://shop.example/hooks").is_ok());
        assert!(check_url_shape("http://shop.example:8080/x?y=1").is_ok());
        assert!(check_url_shape("ftp://shop.example/").is_err());
        assert!(check_url_shape("file:///etc/passwd").is_err());
        assert!(check_url_shape("https://user:pw@shop.example/").is_err());
        assert!(check_url_shape("not a url").is_err());
        assert!(check_url_shape(&format!("https://a.example/{}", "x".repeat(3000))).is_err());
    }

    #[test]
    fn the_retry_schedule_doubles_and_is_capped() {
        let base = Duration::from_secs(60);
        let d1 = retry_delay(1, base);
        assert!(d1 >= Duration::from_secs(30) && d1 <= base);
        let d20 = retry_delay(20, base);
        assert!(d20 <= Duration::from_secs(4 * 3600) && d20 >= Duration::from_secs(2 * 3600));
    }
}
