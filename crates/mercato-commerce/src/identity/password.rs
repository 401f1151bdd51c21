//! Password hashing with argon2id on a small pool of its own threads.
//!
//! Hashing is deliberately expensive in CPU and memory (19 MiB per hash by default). Running it
//! on Tokio's blocking pool let a login storm start hundreds of threads, each keeping its own
//! malloc arena full of freed argon2 blocks (RSS ~600 MB seen), and starve other requests of
//! CPU. Here a fixed set of threads (one per core) takes jobs from a bounded queue, and each
//! thread reuses one memory block buffer for every hash: memory is bounded by
//! `threads × memory_kib` whatever the load, and a full queue answers "busy" at once.

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use tokio::sync::{OnceCell, oneshot};

/// Jobs waiting for a hashing thread beyond which callers are refused (they answer 503).
const QUEUE: usize = 512;

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<anyhow::Result<String>>,
    },
    Verify {
        password: String,
        hash: String,
        reply: oneshot::Sender<bool>,
    },
}

#[derive(Clone)]
pub struct PasswordHasher {
    jobs: SyncSender<Job>,
    /// A real hash of a random password, verified against when the email is unknown so that
    /// "no such user" takes as long as "wrong password".
    dummy: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    pub fn new(memory_kib: u32, iterations: u32) -> anyhow::Result<PasswordHasher> {
        let params = Params::new(memory_kib.max(8), iterations.max(1), 1, None)
            .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let params = params.clone();
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || worker(&queue, &params))
                .map_err(|e| anyhow::anyhow!("starting a password hashing thread: {e}"))?;
        }
        Ok(PasswordHasher {
            jobs,
            dummy: Arc::new(OnceCell::new()),
        })
    }

    fn submit(&self, job: Job) -> anyhow::Result<()> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                metrics::counter!("password_hash_refused_total").increment(1);
                Err(mercato_kernel::error::Overloaded("password hashing").into())
            }
            Err(TrySendError::Disconnected(_)) => Err(anyhow::anyhow!("password hashing stopped")),
        }
    }

    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash {
            password: password.to_owned(),
            reply,
        })?;
        answer.await?
    }

    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(&self, password: &str, hash: &str) -> anyhow::Result<bool> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify {
            password: password.to_owned(),
            hash: hash.to_owned(),
            reply,
        })?;
        Ok(answer.await?)
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

/// One hashing thread: takes jobs until every sender is gone, reusing one block buffer.
fn worker(queue: &Mutex<Receiver<Job>>, params: &Params) {
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        match job {
            Job::Hash { password, reply } => {
                let _ = reply.send(hash_with(&mut blocks, params, &password));
            }
            Job::Verify {
                password,
                hash,
                reply,
            } => {
                let _ = reply.send(verify_with(&mut blocks, &password, &hash));
            }
        }
        // A hash made with far larger parameters than ours (an old, costlier setting) should
        // not pin its memory for the life of the process.
        if blocks.len() > params.block_count() {
            blocks = Vec::new();
        }
    }
}

fn buffer(blocks: &mut Vec<Block>, count: usize) -> &mut [Block] {
    if blocks.len() < count {
        blocks.resize(count, Block::default());
    }
    &mut blocks[..count]
}

fn hash_with(blocks: &mut Vec<Block>, params: &Params, password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt_raw,
            &mut out,
            buffer(blocks, params.block_count()),
        )
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| anyhow::anyhow!("params: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("output: {e}"))?),
    };
    Ok(phc.to_string())
}

fn verify_with(blocks: &mut Vec<Block>, password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    // Parameters come from the stored hash, so raising the cost later keeps old hashes
    // verifiable.
    let (Ok(algorithm), Some(expected), Some(salt)) = (
        Algorithm::try_from(parsed.algorithm),
        parsed.hash,
        parsed.salt,
    ) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let version = parsed
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or_default();
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_raw) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let count = params.block_count();
    if Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt_raw,
            &mut out,
            buffer(blocks, count),
        )
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(&out).is_ok_and(|o| o == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_stay_compatible_with_the_argon2_crate() {
        let h = PasswordHasher::new(64, 1).unwrap_or_else(|e| panic!("{e}"));
        let phc = h
            .hash("correct horse")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(h.verify("correct horse", &phc).await.unwrap_or(false));
        assert!(!h.verify("wrong horse", &phc).await.unwrap_or(true));
        assert!(!h.verify("x", "not a phc string").await.unwrap_or(true));
        // A hash made by the argon2 crate's own PasswordHasher (older rows) verifies here,
        // and ours verifies there.
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let theirs = Argon2::default()
            .hash_password(b"legacy", &SaltString::generate(&mut rand::rngs::OsRng))
            .map(|p| p.to_string())
            .unwrap_or_default();
        assert!(h.verify("legacy", &theirs).await.unwrap_or(false));
        let ours = PasswordHash::new(&phc).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &ours)
                .is_ok()
        );
    }
}
