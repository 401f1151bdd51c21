//! The real `mercato serve` as a child process, for tests that kill it (`kill -9`) and start it
//! again on the same database: what a crash does cannot be simulated inside the test process.

use crate::Client;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where a server process keeps its data: a temp dir, plus a fresh PostgreSQL database when
/// `MERCATO_TEST_POSTGRES_URL` is set (both outlive restarts of the process).
pub struct ProcessData {
    pub dir: tempfile::TempDir,
    pub database_url: Option<String>,
    _pg: Option<crate::postgres::TestDatabase>,
}

impl ProcessData {
    pub async fn new() -> anyhow::Result<ProcessData> {
        let dir = tempfile::tempdir()?;
        let pg = match crate::postgres::admin_url() {
            Some(admin) => Some(crate::postgres::TestDatabase::create(&admin).await?),
            None => None,
        };
        Ok(ProcessData {
            dir,
            database_url: pg.as_ref().map(|d| d.url.clone()),
            _pg: pg,
        })
    }
}

/// A running `mercato serve` child process.
pub struct ServerProcess {
    child: Child,
    pub address: String,
    pub api: Client,
}

const JWT_SECRET: &str = "process-test-secret-process-test-secret";

fn command(bin: &Path, data: &ProcessData) -> Command {
    let mut c = Command::new(bin);
    c.arg("--data-dir")
        .arg(data.dir.path())
        .env_remove("MERCATO_DATABASE_URL")
        .env("MERCATO_JWT_SECRET", JWT_SECRET)
        .env("MERCATO_PASSWORD_HASH_MEMORY_KIB", "256")
        .env("MERCATO_PASSWORD_HASH_ITERATIONS", "1")
        .env("MERCATO_RATE_LIMIT_IP_PER_SEC", "100000")
        .env("MERCATO_RATE_LIMIT_PRINCIPAL_PER_SEC", "100000")
        // As in `test_settings`: GB sample addresses, US test cards, one card paying often,
        // new accounts.
        .env(
            "MERCATO_FRAUD_RULES_OFF",
            "card_country_mismatch,velocity,high_value_new_account",
        )
        .env("MERCATO_LOG_LEVEL", "error");
    if let Some(url) = &data.database_url {
        c.env("MERCATO_DATABASE_URL", url);
    }
    c
}

impl ServerProcess {
    /// Starts `bin serve` on a free port and waits until it listens. `env` adds settings.
    pub fn start(
        bin: &Path,
        data: &ProcessData,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ServerProcess> {
        let mut c = command(bin, data);
        c.args(["serve", "--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        // The first line naming the address; the rest of stdout is drained on a thread so the
        // child never blocks on a full pipe.
        let (found, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1)
                    && let Some(f) = found.take()
                {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = f.send(addr.to_owned());
                }
            }
        });
        let addr = match wait.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                anyhow::bail!("the server did not start listening within 60 s");
            }
        };
        let address = format!("http://{addr}");
        Ok(ServerProcess {
            child,
            api: Client::new(&address),
            address,
        })
    }

    /// The child's resident memory (VmRSS), KiB; `None` where /proc is not available.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    }

    /// `kill -9`: no graceful shutdown, nothing flushed.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bin admin create-user` against the process data (before or between server runs).
pub fn create_user(
    bin: &Path,
    data: &ProcessData,
    email: &str,
    password: &str,
    role: &str,
) -> anyhow::Result<()> {
    let out = command(bin, data)
        .args([
            "admin",
            "create-user",
            "--email",
            email,
            "--password",
            password,
            "--role",
            role,
        ])
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "admin create-user failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
