//! Delivery: priority lanes, leases, provider calls, retries and dead letters.
//!
//! Each priority is a lane with its own pollers, batch size and concurrency, so promotional
//! volume never holds up critical traffic: a promotional batch waits for promotional workers
//! only. Workers claim due jobs with a lease in one short `UPDATE … RETURNING` (batches, so a
//! promotional flood costs one claim and one completion transaction per batch on SQLite's single
//! writer), call providers outside any transaction, and record every outcome of a batch in one
//! short transaction. Critical and high jobs are claimed already in the accepting transaction and
//! handed to an in-process *express* lane the moment it commits (no queue poll on the way to the
//! provider); the database row stays the durable record, and its lease makes a crash recoverable
//! (the row is claimed again once the lease runs out, and the provider recognises the resend by
//! its message id).

use crate::model::{AfterFailure, Channel, Priority, Reason};
use crate::providers::{OutboundMessage, ProviderError};
use crate::service::Notifier;
use crate::store::{Completion, DeliveryRow};
use mercato_kernel::jobs::{Outcome, run_worker};
use mercato_kernel::shutdown::Shutdown;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// The hand-off from accept to the in-process express lane.
#[derive(Default)]
pub struct Express {
    enabled: AtomicBool,
    tx: Mutex<Option<mpsc::UnboundedSender<DeliveryRow>>>,
    wake: tokio::sync::Notify,
}

impl Express {
    /// Whether this process runs the express lane (so accept may claim jobs for it).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub(crate) fn dispatch(&self, job: DeliveryRow) {
        let sent = self
            .tx
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|tx| tx.send(job).is_ok()))
            .unwrap_or(false);
        if !sent {
            // The lane is gone (shutting down): the lease runs out and a poller takes the job.
            tracing::warn!("express lane unavailable; the job waits for its lease to expire");
        }
    }

    /// Wakes idle pollers (a redriven job, for instance).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }
}

/// Sizes of one lane.
#[derive(Clone, Copy, Debug)]
pub struct LaneSpec {
    pub lane: Priority,
    pub pollers: usize,
    pub batch: i64,
    pub concurrency: usize,
}

pub const LANES: [LaneSpec; 4] = [
    LaneSpec {
        lane: Priority::Critical,
        pollers: 1,
        batch: 32,
        concurrency: 32,
    },
    LaneSpec {
        lane: Priority::High,
        pollers: 1,
        batch: 64,
        concurrency: 32,
    },
    LaneSpec {
        lane: Priority::Normal,
        pollers: 1,
        batch: 128,
        concurrency: 32,
    },
    LaneSpec {
        lane: Priority::Promotional,
        pollers: 2,
        batch: 128,
        concurrency: 64,
    },
];

fn lane_spec(lane: Priority) -> LaneSpec {
    LANES
        .into_iter()
        .find(|l| l.lane == lane)
        .unwrap_or(LANES[2])
}

fn short(e: &str) -> String {
    e.chars().take(1000).collect()
}

impl Notifier {
    /// Delivers one claimed job: picks a provider, calls it, and says what to record.
    pub async fn deliver(&self, job: &DeliveryRow) -> Completion {
        let now = self.now();
        if job.expires_at.is_some_and(|e| e <= now) {
            return Completion::Expired { id: job.id.clone() };
        }
        let slots = self.inner.providers.of(job.channel);
        if slots.is_empty() {
            return Completion::Failed {
                id: job.id.clone(),
                provider: None,
                error: format!("no {} provider is configured", job.channel.as_str()),
                reason: Reason::NoProvider,
                unregistered: Vec::new(),
            };
        }
        let n = slots.len();
        let start = usize::try_from(job.provider_index).unwrap_or(0).min(n - 1);
        // The provider at `start` unless its circuit is open: critical jobs then move on to the
        // fallbacks only; other lanes try every provider in order.
        let order: Vec<usize> = if job.lane == Priority::Critical {
            (start..n).collect()
        } else {
            (start..n).chain(0..start).collect()
        };
        let Some(index) = order.into_iter().find(|i| slots[*i].breaker.allow()) else {
            return Completion::Release {
                id: job.id.clone(),
                error: "every provider's circuit is open".into(),
                next_attempt_at: now.plus(Duration::from_secs(5)),
            };
        };
        let slot = &slots[index];
        let provider = slot.provider.name().to_owned();
        let msg = OutboundMessage {
            message_id: job.id.clone(),
            notification_id: job.notification_id.clone(),
            channel: job.channel,
            to: job.addresses(),
            subject: job.subject.clone(),
            body: job.body.clone().unwrap_or_default(),
        };
        match slot.call(&msg).await {
            Ok(receipt) => Completion::Sent {
                id: job.id.clone(),
                provider,
                provider_ref: receipt.provider_ref,
                unregistered: receipt.unregistered,
            },
            Err(ProviderError::Unregistered) => Completion::Failed {
                id: job.id.clone(),
                provider: Some(provider),
                error: "device token unregistered".into(),
                reason: Reason::Unregistered,
                unregistered: if job.channel == Channel::Push {
                    msg.to
                } else {
                    Vec::new()
                },
            },
            Err(ProviderError::Permanent(e)) => Completion::Failed {
                id: job.id.clone(),
                provider: Some(provider),
                error: short(&e),
                reason: Reason::Rejected,
                unregistered: Vec::new(),
            },
            Err(ProviderError::Transient(e)) => {
                let index = i64::try_from(index).unwrap_or(0);
                let provider_attempts = if index == job.provider_index {
                    job.provider_attempts
                } else {
                    1
                };
                let after = self.inner.cfg.retry.after_failure(
                    job.lane,
                    u32::try_from(job.attempts).unwrap_or(u32::MAX),
                    u32::try_from(index).unwrap_or(0),
                    u32::try_from(provider_attempts).unwrap_or(u32::MAX),
                    u32::try_from(n).unwrap_or(1),
                );
                let error = format!("{provider}: {}", short(&e));
                match after {
                    AfterFailure::Retry {
                        delay,
                        provider_index,
                        provider_attempts,
                    } => Completion::Retry {
                        id: job.id.clone(),
                        provider: Some(provider),
                        error,
                        next_attempt_at: self.now().plus(delay),
                        provider_index: i64::from(provider_index),
                        provider_attempts: i64::from(provider_attempts),
                    },
                    AfterFailure::Dead => Completion::Dead {
                        id: job.id.clone(),
                        provider: Some(provider),
                        error,
                    },
                }
            }
        }
    }

    /// Records outcomes and their metrics.
    async fn finish(
        &self,
        jobs: &[DeliveryRow],
        outcomes: Vec<Completion>,
        urgent: bool,
    ) -> anyhow::Result<()> {
        let now = self.now();
        self.inner
            .store
            .complete(&self.inner.node, now, &outcomes, urgent)
            .await?;
        for (job, c) in jobs.iter().zip(&outcomes) {
            let (status, provider) = match c {
                Completion::Sent { provider, .. } => ("sent", provider.clone()),
                Completion::Retry { provider, .. } => {
                    ("retrying", provider.clone().unwrap_or_default())
                }
                Completion::Release { .. } => ("circuit_open", String::new()),
                Completion::Failed { provider, .. } => {
                    ("failed", provider.clone().unwrap_or_default())
                }
                Completion::Dead { provider, .. } => ("dead", provider.clone().unwrap_or_default()),
                Completion::Expired { .. } => ("expired", String::new()),
            };
            metrics::counter!("notify_deliveries_total", "channel" => job.channel.as_str(),
                "provider" => provider, "status" => status)
            .increment(1);
            if status == "sent" {
                metrics::histogram!("notify_delivery_latency_seconds",
                    "channel" => job.channel.as_str(), "lane" => job.lane.as_str())
                .record(now.since(job.created_at).as_secs_f64());
            }
            if status == "dead" {
                tracing::error!(delivery = %job.id, channel = job.channel.as_str(), "notification delivery dead-lettered");
            }
        }
        Ok(())
    }

    /// One step of a lane worker: claims a batch of due jobs, delivers them concurrently, and
    /// records the outcomes in one transaction. Tests call it to drive delivery by hand.
    pub async fn lane_step(&self, lane: Priority) -> anyhow::Result<Outcome> {
        let spec = lane_spec(lane);
        let now = self.now();
        // A cheap read first: idle lanes never take SQLite's writer.
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM notify_deliveries WHERE lane = $1 \
             AND status IN ('pending', 'deferred', 'processing') AND next_attempt_at <= $2 LIMIT 1",
        )
        .bind(lane.as_str())
        .bind(now.as_micros())
        .fetch_optional(self.inner.db.reader())
        .await?;
        if due.is_none() {
            return Ok(Outcome::Idle);
        }
        let jobs = self
            .inner
            .store
            .claim_due(
                lane,
                now,
                now.plus(self.inner.cfg.lease),
                &self.inner.node,
                spec.batch,
            )
            .await?;
        if jobs.is_empty() {
            return Ok(Outcome::Idle);
        }
        use futures::StreamExt as _;
        let outcomes: Vec<Completion> = futures::stream::iter(jobs.clone())
            .map(|job| {
                let me = self.clone();
                async move { me.deliver(&job).await }
            })
            .buffered(spec.concurrency.max(1))
            .collect()
            .await;
        self.finish(&jobs, outcomes, lane.is_express()).await?;
        Ok(Outcome::Worked)
    }

    /// Delivers a job claimed by the accepting transaction.
    async fn express_one(&self, job: DeliveryRow) {
        let outcome = self.deliver(&job).await;
        if let Err(e) = self
            .finish(std::slice::from_ref(&job), vec![outcome], true)
            .await
        {
            // The lease runs out and a poller retries; the provider dedups by message id.
            tracing::warn!(delivery = %job.id, error = %format!("{e:#}"), "recording an express delivery failed");
        }
    }

    /// Starts the lanes, the express lane and the housekeeping worker.
    pub fn spawn_workers(&self, shutdown: Shutdown) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        let (tx, mut rx) = mpsc::unbounded_channel::<DeliveryRow>();
        if let Ok(mut g) = self.inner.express.tx.lock() {
            *g = Some(tx);
        }
        self.inner.express.enabled.store(true, Ordering::Release);

        let me = self.clone();
        let mut stop = shutdown.clone();
        handles.push(tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(64));
            loop {
                let job = tokio::select! {
                    job = rx.recv() => job,
                    _ = stop.wait() => None,
                };
                let Some(job) = job else { break };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    me.express_one(job).await;
                    drop(permit);
                });
            }
            me.inner.express.enabled.store(false, Ordering::Release);
        }));

        for spec in LANES {
            for i in 0..spec.pollers {
                let me = self.clone();
                let name: &'static str = match (spec.lane, i) {
                    (Priority::Critical, _) => "notify-lane-critical",
                    (Priority::High, _) => "notify-lane-high",
                    (Priority::Normal, _) => "notify-lane-normal",
                    (Priority::Promotional, _) => "notify-lane-promotional",
                };
                let idle = self.inner.cfg.poll;
                handles.push(tokio::spawn(run_worker(
                    name,
                    Duration::ZERO,
                    shutdown.clone(),
                    move || {
                        let me = me.clone();
                        async move {
                            let outcome = me.lane_step(spec.lane).await?;
                            if outcome == Outcome::Idle {
                                let _ =
                                    tokio::time::timeout(idle, me.inner.express.wake.notified())
                                        .await;
                            }
                            Ok(Outcome::Worked)
                        }
                    },
                )));
            }
        }

        let me = self.clone();
        handles.push(tokio::spawn(run_worker(
            "notify-housekeeping",
            Duration::from_secs(5),
            shutdown,
            move || {
                let me = me.clone();
                async move {
                    me.housekeeping().await?;
                    Ok(Outcome::Idle)
                }
            },
        )));
        handles
    }

    /// Queue-depth gauges, and removal of expired dedup keys and old rate windows.
    pub async fn housekeeping(&self) -> anyhow::Result<()> {
        let depths = self.inner.store.queue_depths().await?;
        for lane in Priority::ALL {
            let n: i64 = depths
                .iter()
                .filter(|(l, _, _)| l == lane.as_str())
                .map(|(_, _, n)| *n)
                .sum();
            metrics::gauge!("notify_queue_depth", "lane" => lane.as_str()).set(n as f64);
        }
        metrics::gauge!("notify_inbox_streams").set(self.inner.hub.connected_users() as f64);
        let now = self.now();
        let last = self.inner.last_purge.load(Ordering::Relaxed);
        if now.as_micros() - last > 300_000_000 {
            self.inner
                .last_purge
                .store(now.as_micros(), Ordering::Relaxed);
            self.inner.store.purge(now).await?;
        }
        Ok(())
    }
}
