//! Identity: accounts (customer, seller, admin), addresses, access tokens, API keys.
//!
//! Invariants: emails are unique after normalisation (lower case); passwords are stored only
//! as argon2id hashes; an API key secret is shown once and stored only as its SHA-256; a
//! suspended account is refused (403) on every authenticated request, immediately — role and
//! status are read from the database per request, not trusted from the token.
//!
//! Emits `user.registered`. Admin actions (status changes, API keys) go to the audit log.

pub mod http;
pub mod model;
mod password;
pub mod service;
mod store;
pub mod token;

pub use service::{IdentityError, IdentityService, LoginHook};

/// Loads the JWT secret: the configured one, else the one persisted in the data dir, else a
/// new random one written there (mode 0600) so tokens survive restarts.
pub fn load_or_create_jwt_secret(
    configured: Option<&str>,
    data_dir: &std::path::Path,
) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    if let Some(s) = configured {
        return Ok(s.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt_secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if existing.len() >= 32 {
            return Ok(existing.as_bytes().to_vec());
        }
    }
    std::fs::create_dir_all(data_dir).context("creating the data directory")?;
    let secret = mercato_kernel::id::random_hex(32);
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(secret.into_bytes())
}
