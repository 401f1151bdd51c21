//! Prefixed, opaque identifiers (`ord_01J…`).
//!
//! Layout of the random part: 48 bits of milliseconds since the epoch followed by 80 random
//! bits, Crockford base32 (26 chars) — ULID-like, so ids sort roughly by creation time, which
//! keeps B-tree inserts local. Bearer secrets (guest cart ids, API keys) use 128 random bits
//! instead, so nothing about them is guessable.

use rand::RngCore;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn encode_base32(bytes: &[u8; 16]) -> String {
    let mut value = u128::from_be_bytes(*bytes);
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = CROCKFORD[(value & 0x1f) as usize];
        value >>= 5;
    }
    out.iter().map(|b| *b as char).collect()
}

/// A new time-ordered id with the given prefix, e.g. `new_id("ord")` → `ord_01JD…`.
pub fn new_id(prefix: &str) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    rand::thread_rng().fill_bytes(&mut bytes[6..]);
    format!("{prefix}_{}", encode_base32(&bytes))
}

/// A new id whose whole random part (128 bits) is secret: usable as a bearer credential.
pub fn new_secret_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", encode_base32(&bytes))
}

/// Random bytes as lowercase hex (secrets, tokens).
pub fn random_hex(n_bytes: usize) -> String {
    let mut bytes = vec![0u8; n_bytes];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Lowercase hex encoding.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Whether `s` looks like an id with this prefix: `prefix_` followed by 1..=64 ASCII
/// alphanumerics. Used to turn malformed path ids into 404s before touching the database.
pub fn is_valid(prefix: &str, s: &str) -> bool {
    match s.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) {
        Some(rest) => {
            !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        None => false,
    }
}

/// Declares a newtype id with a fixed prefix.
#[macro_export]
macro_rules! typed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            /// A fresh random id.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self($crate::id::new_id($prefix))
            }
            /// Parses an id received from outside; `None` when it cannot be one of ours.
            pub fn parse(s: &str) -> Option<Self> {
                $crate::id::is_valid($prefix, s).then(|| Self(s.to_owned()))
            }
            /// Wraps a value read from our own database.
            pub fn from_db(s: String) -> Self {
                Self(s)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_validate() {
        let id = new_id("ord");
        assert!(id.starts_with("ord_"));
        assert_eq!(id.len(), 4 + 26);
        assert!(is_valid("ord", &id));
        assert!(!is_valid("usr", &id));
        assert!(!is_valid("ord", "ord_"));
        assert!(!is_valid("ord", "ord_abc'--"));
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let a = new_id("x");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("x");
        assert!(a < b);
    }

    #[test]
    fn secret_ids_differ() {
        assert_ne!(new_secret_id("cart"), new_secret_id("cart"));
    }
}
