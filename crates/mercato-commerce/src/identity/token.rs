//! Access tokens: compact JWS, HS256 only (RFC 7519/7515). Written here rather than taken from
//! a crate because it is ~80 lines on top of the `hmac`/`sha2` we already use for webhook
//! signatures, and accepting exactly one algorithm removes the classic `alg` confusion bugs.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use mercato_kernel::Timestamp;
use mercato_kernel::auth::Role;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
    /// Not before (optional; we never issue it, but a token that carries it is held to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
}

/// Clock skew tolerated for `iat`/`nbf` in the future (between nodes, or a client's clock).
pub const LEEWAY_SECS: i64 = 60;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
}

#[derive(Clone)]
pub struct TokenSigner {
    secret: Vec<u8>,
    ttl_secs: i64,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(***)")
    }
}

impl TokenSigner {
    pub fn new(secret: &[u8], ttl_secs: i64) -> TokenSigner {
        TokenSigner {
            secret: secret.to_vec(),
            ttl_secs,
        }
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| {
            HmacSha256::new_from_slice(b"unreachable").expect("HMAC takes any key length")
        })
    }

    pub fn issue(&self, subject: &str, role: Role, now: Timestamp) -> String {
        self.sign(&Claims {
            sub: subject.to_owned(),
            role: role.as_str().to_owned(),
            iat: now.as_unix_secs(),
            exp: now.as_unix_secs() + self.ttl_secs,
            nbf: None,
            jti: mercato_kernel::id::random_hex(8),
        })
    }

    /// Signs the given claims as they are (tests use it to build odd but well-signed tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = mac.finalize().into_bytes();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Claims, TokenError> {
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| TokenError::Malformed)?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let now = now.as_unix_secs();
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        let not_before = claims.nbf.unwrap_or(claims.iat).max(claims.iat);
        if not_before > now.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_micros(1_700_000_000_000_000)
    }

    #[test]
    fn issued_tokens_verify() {
        let s = TokenSigner::new(b"0123456789abcdef0123456789abcdef", 60);
        let t = s.issue("usr_1", Role::Admin, now());
        let c = s.verify(&t, now()).expect("valid");
        assert_eq!(c.sub, "usr_1");
        assert_eq!(c.role, "admin");
    }

    #[test]
    fn expired_forged_and_garbage_tokens_fail() {
        let s = TokenSigner::new(b"0123456789abcdef0123456789abcdef", 60);
        let t = s.issue("usr_1", Role::Customer, now());
        assert_eq!(s.verify(&t, now().plus_secs(61)), Err(TokenError::Expired));
        let other = TokenSigner::new(b"another secret another secret 00", 60);
        assert_eq!(other.verify(&t, now()), Err(TokenError::BadSignature));
        // Tampered payload.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD
            .encode(br#"{"sub":"usr_1","role":"admin","iat":0,"exp":9999999999,"jti":"x"}"#);
        parts[1] = &forged;
        assert_eq!(
            s.verify(&parts.join("."), now()),
            Err(TokenError::BadSignature)
        );
        // alg=none.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            forged
        );
        assert_eq!(s.verify(&none, now()), Err(TokenError::Malformed));
        for g in ["", "a", "a.b", "a.b.c.d", "....", "é.é.é"] {
            assert!(s.verify(g, now()).is_err());
        }
    }

    #[test]
    fn tokens_from_the_future_are_refused_beyond_the_leeway() {
        let s = TokenSigner::new(b"0123456789abcdef0123456789abcdef", 60);
        let at = |iat: i64, nbf: Option<i64>| {
            s.sign(&Claims {
                sub: "usr_1".into(),
                role: "admin".into(),
                iat: now().as_unix_secs() + iat,
                exp: now().as_unix_secs() + 3600,
                nbf: nbf.map(|n| now().as_unix_secs() + n),
                jti: "j".into(),
            })
        };
        assert!(s.verify(&at(LEEWAY_SECS - 1, None), now()).is_ok());
        assert_eq!(
            s.verify(&at(LEEWAY_SECS + 1, None), now()),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            s.verify(&at(0, Some(3000)), now()),
            Err(TokenError::NotYetValid)
        );
        assert!(s.verify(&at(0, Some(-10)), now()).is_ok());
    }
}
