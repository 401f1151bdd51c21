//! Password hashing with argon2id, off the async threads, with bounded concurrency.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use tokio::sync::{OnceCell, Semaphore};

#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    /// Hashing is deliberately expensive: cap how many run at once so a login burst cannot
    /// starve the blocking pool (and the machine) of CPU.
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified against when the email is unknown so that
    /// "no such user" takes as long as "wrong password".
    dummy: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    pub fn new(memory_kib: u32, iterations: u32) -> anyhow::Result<PasswordHasher> {
        let params = Params::new(memory_kib.max(8), iterations.max(1), 1, None)
            .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Ok(PasswordHasher {
            params,
            permits: Arc::new(Semaphore::new(cpus * 2)),
            dummy: Arc::new(OnceCell::new()),
        })
    }

    fn argon(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let params = self.params.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Self::argon(params)
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
        })
        .await?
    }

    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(&self, password: &str, hash: &str) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let password = password.to_owned();
        let hash = hash.to_owned();
        tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            // Parameters come from the stored hash, so raising the cost later keeps old
            // hashes verifiable.
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .await
        .map_err(Into::into)
    }

    /// Burns the same time as a real verification (unknown email).
    pub async fn verify_dummy(&self, password: &str) -> anyhow::Result<()> {
        let dummy = self
            .dummy
            .get_or_try_init(|| async { self.hash(&mercato_kernel::id::random_hex(16)).await })
            .await?
            .clone();
        let _ = self.verify(password, &dummy).await?;
        Ok(())
    }
}
