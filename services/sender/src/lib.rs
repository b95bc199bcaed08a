//! The sender: claims each `campaigns.send` batch in the ledger and dispatches it
//! through the campaign's channel, within the channel's send budget and window.
//!
//! Replicas split the work through one shared durable consumer; each replica also
//! has its own control consumer, so a pause reaches all of them. Reading order:
//! [`batch`] (the step, top to bottom), [`deliver`] (one recipient: start time,
//! status check, retries), [`budget`] (the Postgres-held GCRA), [`plan`] (what a
//! campaign sends with), [`status_cache`] (checked before every single
//! dispatch), [`ledger`] and [`recorder`] (claims and outcomes), [`lease`] (when a
//! claim's rows must no longer be sent), [`waits`] (why a
//! campaign is not moving), [`dispatch`] (the providers), [`in_flight`] and
//! `control_ack` (what a control ack reports), `auto_pause` (pausing a
//! campaign whose failure rate is over its limit).

mod auto_pause;
pub mod batch;
pub mod budget;
pub mod config;
mod control_ack;
pub mod deliver;
pub mod dispatch;
pub mod in_flight;
pub mod lease;
pub mod ledger;
pub mod plan;
pub mod recorder;
mod reporting;
pub mod status_cache;
pub mod waits;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::CancellationToken;
use herald_core::bus::{Bus, SENDER_DURABLE};
use herald_core::config::CommonConfig;
use herald_core::contracts::{ControlAction, SendBatch};
use herald_core::control::{ControlSignal, spawn_control_listener};
use herald_core::outbox::Outbox;
use herald_core::presence::Presence;
use herald_core::transitions::Lifecycle;
use herald_core::work::{WorkerIdentity, run_work_loop};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use crate::config::SenderConfig;
use crate::dispatch::Dispatcher;
use crate::in_flight::InFlight;
use crate::plan::PlanCache;
use crate::recorder::OutcomeRecorder;
use crate::status_cache::StatusCache;
use crate::waits::Waits;

/// A control message as this replica applied it.
#[derive(Debug, Clone)]
pub struct AppliedControl {
    pub campaign_id: Uuid,
    pub action: ControlAction,
    pub published_at: DateTime<Utc>,
    pub applied_at: DateTime<Utc>,
}

#[derive(Debug)]
pub(crate) struct SenderInner {
    pool: PgPool,
    bus: Bus,
    lifecycle: Lifecycle,
    config: SenderConfig,
    replica_id: String,
    cache: StatusCache,
    plans: PlanCache,
    waits: Waits,
    dispatcher: Dispatcher,
    dispatch_slots: Arc<Semaphore>,
    recorder: OutcomeRecorder,
    /// Slices a delivery handed its batch back before dispatching; shutdown
    /// waits for them (a `kill -9` leaves their rows to lease expiry).
    detached: TaskTracker,
    applied: Mutex<Vec<AppliedControl>>,
    /// Requests per campaign between their status check and the provider's answer.
    in_flight: Arc<InFlight>,
    /// Heartbeats and control acks.
    presence: Presence,
}

/// One sender replica. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender {
    inner: Arc<SenderInner>,
}

/// How long a sender keeps retrying an outcome write while Postgres is down
/// before it leaves the rows to lease expiry.
const RECORD_RETRY_LIMIT: Duration = Duration::from_secs(120);

/// Logs a failed result as a warning about the campaign, and drops the error.
pub(crate) trait LogFailure<T> {
    fn log_failure(self, campaign: Uuid, what: &str) -> Option<T>;
}

impl<T, E: std::fmt::Display> LogFailure<T> for Result<T, E> {
    fn log_failure(self, campaign: Uuid, what: &str) -> Option<T> {
        self.inspect_err(|error| tracing::warn!(campaign_id = %campaign, %error, "{what}"))
            .ok()
    }
}

/// The status cache, with the fault-injection delay on its reads if one is set.
fn status_cache(pool: &PgPool, ttl: Duration, read_delay_ms: u64) -> StatusCache {
    let cache = StatusCache::new(pool.clone(), ttl);
    if read_delay_ms == 0 {
        return cache;
    }
    let delay = Duration::from_millis(read_delay_ms);
    tracing::warn!(?delay, "fault injection: every status read is delayed");
    cache.with_read_hook(Arc::new(move |_| Box::pin(tokio::time::sleep(delay))))
}

impl Sender {
    pub async fn connect(common: &CommonConfig, config: SenderConfig) -> anyhow::Result<Self> {
        let pool = herald_core::db::pool(common)?;
        let bus = Bus::connect(common, "herald-sender").await?;
        Self::new(pool, bus, common.replica_id(), config)
    }

    pub fn new(
        pool: PgPool,
        bus: Bus,
        replica_id: String,
        config: SenderConfig,
    ) -> anyhow::Result<Self> {
        let outbox = Outbox::relay_only(pool.clone(), bus.clone());
        let ttl = Duration::from_millis(config.status_ttl_ms);
        let (trips, tripped) = tokio::sync::mpsc::unbounded_channel();
        let sender = Self {
            inner: Arc::new(SenderInner {
                lifecycle: Lifecycle::new(pool.clone(), outbox),
                cache: status_cache(&pool, ttl, config.fault_status_read_delay_ms),
                plans: PlanCache::new(pool.clone(), ttl),
                waits: Waits::new(pool.clone()),
                dispatcher: Dispatcher::new(Duration::from_millis(config.provider_timeout_ms))?,
                dispatch_slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
                recorder: OutcomeRecorder::start_with_trips(
                    pool.clone(),
                    Duration::from_millis(config.outcome_linger_ms),
                    RECORD_RETRY_LIMIT,
                    Some(trips),
                ),
                detached: TaskTracker::new(),
                applied: Mutex::new(Vec::new()),
                in_flight: Arc::default(),
                presence: Presence::new(
                    &bus,
                    "sender",
                    &replica_id,
                    config.control.control_fast_path,
                ),
                pool,
                bus,
                config,
                replica_id,
            }),
        };
        tokio::spawn(auto_pause::run(Arc::downgrade(&sender.inner), tripped));
        Ok(sender)
    }

    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    /// Whether this replica listens to control messages.
    pub fn control_fast_path(&self) -> bool {
        self.inner.config.control.control_fast_path
    }

    /// Every control message this replica has applied, oldest first.
    pub fn applied_controls(&self) -> Vec<AppliedControl> {
        self.inner.applied.lock().expect("applied lock").clone()
    }

    /// Requests of `campaign` on this replica between their status check and
    /// the provider's answer.
    pub fn in_flight(&self, campaign: Uuid) -> u64 {
        self.inner.in_flight.count(campaign)
    }

    /// Acts on a control message: distrust the cache and wake waiting dispatches,
    /// then ack it once Postgres's status is in the cache (`control_ack`).
    /// The decision itself is taken from Postgres on the next check.
    pub fn apply_control(&self, signal: &ControlSignal) {
        let campaign = signal.message.campaign_id;
        self.inner.cache.invalidate(campaign);
        let applied_at = Utc::now();
        let latency = (applied_at - signal.published_at)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1e6;
        metrics::histogram!("herald_control_apply_seconds", "service" => "sender", "replica" => self.inner.replica_id.clone())
            .record(latency.max(0.0));
        tracing::debug!(campaign_id = %campaign, action = ?signal.message.action,
            correlation_id = ?signal.request_correlation_id, "control applied");
        let mut applied = self.inner.applied.lock().expect("applied lock");
        if applied.len() >= 10_000 {
            applied.drain(..5_000);
        }
        applied.push(AppliedControl {
            campaign_id: campaign,
            action: signal.message.action,
            published_at: signal.published_at,
            applied_at,
        });
        drop(applied);
        let (sender, signal) = (self.clone(), signal.clone());
        tokio::spawn(async move { sender.acknowledge(signal).await });
    }

    /// Runs the replica until shutdown: the control listener and the work loop.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Never take another installation's work.
        herald_core::installation::wait_for_own_streams(
            &self.inner.pool,
            &self.inner.bus,
            &shutdown,
        )
        .await?;
        let heartbeat = self.inner.presence.spawn(&shutdown);
        let control = {
            let sender = self.clone();
            spawn_control_listener(
                &self.inner.bus,
                &self.inner.config.control,
                ("sender", &self.inner.replica_id),
                self.inner.presence.progress(),
                &shutdown,
                move |signal| sender.apply_control(&signal),
            )
        };
        let pruner = {
            let sender = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(60)) => sender.inner.cache.prune(),
                    }
                }
            })
        };
        let identity = WorkerIdentity {
            consumer: SENDER_DURABLE.into(),
            replica_id: self.inner.replica_id.clone(),
        };
        let bus = self.inner.bus.clone();
        let sender = self.clone();
        tracing::info!(replica_id = %self.inner.replica_id, "sender running");
        run_work_loop::<SendBatch, _, _, _, _>(
            bus.clone(),
            identity,
            || bus.work_consumer(SENDER_DURABLE),
            self.inner.config.batches_in_flight.max(1),
            shutdown.clone(),
            move |batch, delivery| {
                let sender = sender.clone();
                async move { sender.handle_batch(batch, Some(delivery)).await }
            },
        )
        .await?;
        pruner.abort();
        self.inner.detached.close();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.inner.detached.wait()).await;
        if let Some(control) = control {
            let _ = control.await;
        }
        let _ = heartbeat.await;
        Ok(())
    }
}

/// Runs one sender replica with its own connections until `shutdown`.
pub async fn run(
    common: CommonConfig,
    config: SenderConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    common.spawn_metrics_listener(&shutdown);
    let sender = Sender::connect(&common, config).await?;
    sender.run(shutdown).await
}
