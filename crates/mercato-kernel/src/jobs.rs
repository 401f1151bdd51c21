//! Background workers. Each exposes `try_execute_task() -> Outcome` so tests can drive it step
//! by step; [`run_worker`] is the loop that calls it in production.

use crate::shutdown::Shutdown;
use std::future::Future;
use std::time::Duration;

/// What one step of a worker did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Work was done; call again at once.
    Worked,
    /// Nothing to do; wait before polling again.
    Idle,
}

/// Calls `step` until shutdown: immediately again after `Worked`, after `idle` on `Idle`,
/// and after a growing pause on errors (logged, never fatal).
pub async fn run_worker<F, Fut>(
    name: &'static str,
    idle: Duration,
    mut shutdown: Shutdown,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Outcome>>,
{
    let mut failures: u32 = 0;
    loop {
        if shutdown.is_triggered() {
            break;
        }
        let pause = match step().await {
            Ok(Outcome::Worked) => {
                failures = 0;
                tokio::task::yield_now().await;
                continue;
            }
            Ok(Outcome::Idle) => {
                failures = 0;
                idle
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(worker = name, error = %format!("{e:#}"), "worker step failed");
                crate::resilience::backoff(
                    failures,
                    idle.max(Duration::from_millis(100)),
                    Duration::from_secs(30),
                )
            }
        };
        if shutdown.sleep(pause).await {
            break;
        }
    }
    tracing::debug!(worker = name, "worker stopped");
}
