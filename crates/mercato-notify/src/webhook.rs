//! Provider callback signatures: `Mercato-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<raw body>">`, 5-minute tolerance (the same scheme as the payment gateway's webhooks).

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "mercato-signature";
pub const TOLERANCE_SECS: i64 = 300;

fn mac(secret: &[u8], t: i64, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    Some(m)
}

/// The header value a provider sends for `body` at `t`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let hex = mac(secret, t, body)
        .map(|m| mercato_kernel::id::hex(&m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={t},v1={hex}")
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks `header` against `body` at time `now` (unix seconds). `Err` says why.
pub fn verify(secret: &[u8], header: Option<&str>, body: &[u8], now: i64) -> Result<(), String> {
    let header = header.ok_or("missing Mercato-Signature header")?;
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let t = t.ok_or("the signature has no valid timestamp")?;
    // Checked: `t` comes from the caller (t = i64::MIN must not overflow).
    if now
        .checked_sub(t)
        .and_then(i64::checked_abs)
        .is_none_or(|d| d > TOLERANCE_SECS)
    {
        return Err("the signature timestamp is outside the 5-minute tolerance".into());
    }
    for s in sigs {
        if let (Some(sig), Some(m)) = (unhex(s), mac(secret, t, body))
            && m.verify_slice(&sig).is_ok()
        {
            return Ok(());
        }
    }
    Err("the signature does not match".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_forgeries_do_not() {
        let body = br#"{"id":"e1"}"#;
        let h = sign(b"secret", 1000, body);
        assert!(verify(b"secret", Some(&h), body, 1100).is_ok());
        assert!(verify(b"other", Some(&h), body, 1100).is_err());
        assert!(verify(b"secret", Some(&h), b"{}", 1100).is_err());
        assert!(verify(b"secret", Some(&h), body, 1000 + 301).is_err());
        assert!(verify(b"secret", None, body, 1000).is_err());
        assert!(verify(b"secret", Some("t=1000,v1=zz"), body, 1000).is_err());
        assert!(verify(b"secret", Some("garbage"), body, 1000).is_err());
    }
}
