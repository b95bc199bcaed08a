//! The sender: claims each `campaigns.send` batch in the ledger and dispatches it
//! through the campaign's provider.
//!
//! Replicas split the work through one shared durable consumer; each replica also
//! has its own control consumer, so a pause reaches all of them. The status of a
//! campaign is checked (through [`status_cache::StatusCache`]) before every single
//! dispatch, not once per batch.

pub mod dispatch;
pub mod ledger;
pub mod recorder;
pub mod status_cache;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_core::CancellationToken;
use herald_core::bus::{Bus, SENDER_DURABLE};
use herald_core::channel::Channel;
use herald_core::config::CommonConfig;
use herald_core::contracts::{BatchTracked, ControlAction, SendBatch};
use herald_core::control::{ControlConfig, ControlSignal, spawn_control_listener};
use herald_core::outbox::Outbox;
use herald_core::template::MessageTemplate;
use herald_core::transitions::{Lifecycle, complete_if_done};
use herald_core::work::{Delivery, StepOutcome, WorkerIdentity, run_work_loop};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::dispatch::{Attempt, Dispatcher, OutboundMessage, RetryPolicy};
use crate::ledger::{ClaimedRecipient, RecipientOutcome};
use crate::recorder::{BatchRecording, OutcomeRecorder, RecordError};
use crate::status_cache::StatusCache;

/// Settings of the sender service.
#[derive(Debug, Clone, clap::Args)]
pub struct SenderConfig {
    /// Provider requests in flight at once on this replica.
    #[arg(long, env = "HERALD_SENDER_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,

    /// Send batches handled at once on this replica.
    #[arg(long, env = "HERALD_SENDER_BATCHES", default_value_t = 4)]
    pub batches_in_flight: usize,

    /// Lease on claimed recipients, in seconds; renewed while a batch works. After a
    /// crash, another replica takes the rows over once it expires.
    #[arg(long, env = "HERALD_LEASE_SECONDS", default_value_t = 30.0)]
    pub lease_seconds: f64,

    /// How long a campaign status read from Postgres is trusted, in ms.
    #[arg(long, env = "HERALD_STATUS_TTL_MS", default_value_t = 5000)]
    pub status_ttl_ms: u64,

    /// Control fast-path settings (flattened by the binary once for all services).
    #[arg(skip)]
    pub control: ControlConfig,

    /// Attempts per recipient before it is failed (first try included).
    #[arg(long, env = "HERALD_MAX_ATTEMPTS", default_value_t = 4)]
    pub max_attempts: u32,

    /// First retry delay, in ms; doubles per attempt.
    #[arg(long, env = "HERALD_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,

    /// Longest retry delay (and longest honoured Retry-After), in ms.
    #[arg(long, env = "HERALD_RETRY_MAX_MS", default_value_t = 30000)]
    pub retry_max_ms: u64,

    /// Timeout of one provider request, in ms.
    #[arg(long, env = "HERALD_PROVIDER_TIMEOUT_MS", default_value_t = 30000)]
    pub provider_timeout_ms: u64,

    /// How long a finished dispatch's outcome may wait for others to share its
    /// ledger write, in ms (0: write at once). Longer means fewer, larger writes,
    /// and more requests repeated (same idempotency key) after a `kill -9`.
    #[arg(long, env = "HERALD_OUTCOME_LINGER_MS", default_value_t = 20)]
    pub outcome_linger_ms: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            batches_in_flight: 4,
            lease_seconds: 30.0,
            status_ttl_ms: 5000,
            control: ControlConfig::default(),
            max_attempts: 4,
            retry_base_ms: 1000,
            retry_max_ms: 30000,
            provider_timeout_ms: 30000,
            outcome_linger_ms: 20,
        }
    }
}

/// A control message as this replica applied it.
#[derive(Debug, Clone)]
pub struct AppliedControl {
    pub campaign_id: Uuid,
    pub action: ControlAction,
    pub published_at: DateTime<Utc>,
    pub applied_at: DateTime<Utc>,
}

/// What a campaign needs for dispatch; immutable once it is sending.
///
/// No control message resets this cache, and none needs to: only a draft can be
/// edited, so a plan read at any time after the start is the plan for good. The
/// pause race of the status cache cannot happen here.
#[derive(Debug)]
struct CampaignPlan {
    channel: Channel,
    template: MessageTemplate,
    limiter: Option<DefaultDirectRateLimiter>,
}

#[derive(Debug)]
struct SenderInner {
    pool: PgPool,
    bus: Bus,
    lifecycle: Lifecycle,
    config: SenderConfig,
    replica_id: String,
    cache: StatusCache,
    dispatcher: Dispatcher,
    dispatch_slots: Arc<Semaphore>,
    recorder: OutcomeRecorder,
    plans: Mutex<HashMap<Uuid, Arc<CampaignPlan>>>,
    applied: Mutex<Vec<AppliedControl>>,
}

/// One sender replica. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender {
    inner: Arc<SenderInner>,
}

/// How long a sender keeps retrying an outcome write while Postgres is down
/// before it leaves the rows to lease expiry.
const RECORD_RETRY_LIMIT: Duration = Duration::from_secs(120);

/// What one batch wrote to the ledger.
#[derive(Debug, Default)]
struct Recorded {
    sent: i64,
    failed: i64,
}

/// How one claimed recipient ended on this replica.
enum Dispatched {
    Done(RecipientOutcome),
    /// Not sent because the campaign stopped being sendable: release it.
    Unsent(i64),
}

async fn load_plan(
    pool: &PgPool,
    campaign: Uuid,
) -> Result<Option<(serde_json::Value, serde_json::Value, Option<i32>)>, sqlx::Error> {
    sqlx::query_as("SELECT channel, template, rate_limit_per_second FROM campaigns WHERE id = $1")
        .bind(campaign)
        .fetch_optional(pool)
        .await
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
        Ok(Self {
            inner: Arc::new(SenderInner {
                lifecycle: Lifecycle::new(pool.clone(), outbox),
                cache: StatusCache::new(pool.clone(), Duration::from_millis(config.status_ttl_ms)),
                dispatcher: Dispatcher::new(Duration::from_millis(config.provider_timeout_ms))?,
                dispatch_slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
                recorder: OutcomeRecorder::start(
                    pool.clone(),
                    Duration::from_millis(config.outcome_linger_ms),
                    RECORD_RETRY_LIMIT,
                ),
                plans: Mutex::new(HashMap::new()),
                applied: Mutex::new(Vec::new()),
                pool,
                bus,
                config,
                replica_id,
            }),
        })
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

    /// Acts on a control message: distrust the cache and wake waiting dispatches.
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
    }

    async fn plan(&self, campaign: Uuid) -> Result<Option<Arc<CampaignPlan>>, sqlx::Error> {
        if let Some(plan) = self.inner.plans.lock().expect("plans lock").get(&campaign) {
            return Ok(Some(plan.clone()));
        }
        let Some((channel, template, rate)) = load_plan(&self.inner.pool, campaign).await? else {
            return Ok(None);
        };
        let channel: Channel = match serde_json::from_value(channel) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(campaign_id = %campaign, error = %e, "stored channel is unreadable");
                return Ok(None);
            }
        };
        let body = template
            .get("body")
            .and_then(|b| b.as_str())
            .unwrap_or_default();
        let Ok(template) = MessageTemplate::compile(body) else {
            tracing::error!(campaign_id = %campaign, "stored template does not compile");
            return Ok(None);
        };
        let limiter = rate
            .and_then(|r| std::num::NonZeroU32::new(r as u32))
            .map(|r| RateLimiter::direct(Quota::per_second(r)));
        let plan = Arc::new(CampaignPlan {
            channel,
            template,
            limiter,
        });
        self.inner
            .plans
            .lock()
            .expect("plans lock")
            .insert(campaign, plan.clone());
        Ok(Some(plan))
    }

    /// Waits for `delay`, but wakes early when a control message for the campaign
    /// arrives. Returns false if the campaign is no longer sendable.
    ///
    /// A control message that lands while this is re-checking (between two
    /// `notified()` registrations) is not lost: it bumped the cache's generation,
    /// so the re-check in flight reads Postgres again before it answers.
    async fn wait_unless_paused(&self, campaign: Uuid, delay: Duration) -> bool {
        let waker = self.inner.cache.waker(campaign);
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            let notified = waker.notified();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return self.sendable(campaign).await,
                _ = notified => {
                    if !self.sendable(campaign).await {
                        return false;
                    }
                }
            }
        }
    }

    /// A failed status read counts as not sendable: fail safe.
    async fn sendable(&self, campaign: Uuid) -> bool {
        self.inner
            .cache
            .is_sendable(campaign)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%campaign, %error, "status check failed; holding dispatch");
                false
            })
    }

    async fn dispatch_one(
        &self,
        campaign: Uuid,
        plan: &CampaignPlan,
        recipient: ClaimedRecipient,
    ) -> Dispatched {
        let policy = RetryPolicy {
            max_attempts: self.inner.config.max_attempts.max(1),
            base_delay: Duration::from_millis(self.inner.config.retry_base_ms),
            max_delay: Duration::from_millis(self.inner.config.retry_max_ms),
        };
        let body = match plan.template.render(&recipient.variables) {
            Ok(b) => b,
            Err(e) => {
                return Dispatched::Done(RecipientOutcome {
                    id: recipient.id,
                    sent: false,
                    provider_message_id: None,
                    error: Some(e.to_string()),
                    attempts: 0,
                });
            }
        };
        let message = OutboundMessage {
            campaign_id: campaign,
            recipient_id: recipient.id,
            address: recipient.address,
            body,
        };
        let mut delays = policy.delays();
        let mut attempts = 0;
        loop {
            if let Some(limiter) = &plan.limiter {
                while let Err(not_until) = limiter.check() {
                    let wait = not_until.wait_time_from(governor::clock::Clock::now(
                        &governor::clock::DefaultClock::default(),
                    ));
                    if !self.wait_unless_paused(campaign, wait).await {
                        return Dispatched::Unsent(recipient.id);
                    }
                }
            }
            // The check that makes pause immediate: right before each request.
            if !self.sendable(campaign).await {
                return Dispatched::Unsent(recipient.id);
            }
            attempts += 1;
            let outcome = self.inner.dispatcher.attempt(&plan.channel, &message).await;
            let (reason, retry_after) = match outcome {
                Attempt::Accepted {
                    provider_message_id,
                } => {
                    return Dispatched::Done(RecipientOutcome {
                        id: recipient.id,
                        sent: true,
                        provider_message_id,
                        error: None,
                        attempts,
                    });
                }
                Attempt::Rejected { reason } => {
                    return Dispatched::Done(RecipientOutcome {
                        id: recipient.id,
                        sent: false,
                        provider_message_id: None,
                        error: Some(reason),
                        attempts,
                    });
                }
                Attempt::Retryable {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            let Some(backoff) = delays.next() else {
                let error = format!("gave up after {attempts} attempts: {reason}");
                return Dispatched::Done(RecipientOutcome {
                    id: recipient.id,
                    sent: false,
                    provider_message_id: None,
                    error: Some(error),
                    attempts,
                });
            };
            let max_wait = Duration::from_millis(self.inner.config.retry_max_ms).max(backoff);
            let delay = retry_after.map_or(backoff, |ra| ra.max(backoff).min(max_wait));
            metrics::counter!("herald_dispatch_retries_total", "provider" => plan.channel.provider()).increment(1);
            if !self.wait_unless_paused(campaign, delay).await {
                // Attempts so far stay unrecorded on release; the row is simply pending again.
                return Dispatched::Unsent(recipient.id);
            }
        }
    }

    /// The step: handle one send batch. Claims, dispatches, records, reports.
    pub async fn handle_batch(&self, batch: SendBatch, delivery: Option<Delivery>) -> StepOutcome {
        let campaign = batch.campaign_id;
        let sendable = match self.inner.cache.is_sendable(campaign).await {
            // A cached "paused" may predate a resume whose control message has not
            // arrived yet (or never will, with the fast path off or NATS's control
            // path down): the batches that resume packs would be dropped and the
            // campaign would wait for the stall sweep. Drop a batch only on
            // Postgres's word.
            Ok(false) => self.inner.cache.refresh(campaign).await,
            known => known,
        };
        match sendable {
            Ok(true) => {}
            // Paused or stopped: nothing to claim; resume re-packs what is left.
            Ok(false) => return StepOutcome::Ack,
            Err(_) => {
                return StepOutcome::Retry {
                    delay: Duration::from_secs(1),
                };
            }
        }
        let plan = match self.plan(campaign).await {
            Ok(Some(plan)) => plan,
            Ok(None) => return StepOutcome::Ack,
            Err(_) => {
                return StepOutcome::Retry {
                    delay: Duration::from_secs(1),
                };
            }
        };
        let lease_token = Uuid::new_v4();
        let lease = self.inner.config.lease_seconds;
        let claimed = match ledger::claim_batch(&self.inner.pool, &batch, lease_token, lease).await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(campaign_id = %campaign, %error, "claim failed");
                return StepOutcome::Retry {
                    delay: Duration::from_secs(1),
                };
            }
        };
        if claimed.is_empty() {
            return StepOutcome::Ack;
        }
        let claimed_ids: Vec<i64> = claimed.iter().map(|r| r.id).collect();
        let claimed_count = claimed.len() as i64;

        // Keep the message and the leases alive while the batch works.
        let heartbeat = {
            let (sender, ids, delivery) = (self.clone(), claimed_ids.clone(), delivery.clone());
            tokio::spawn(async move {
                let every = Duration::from_secs_f64((lease / 3.0).max(0.5));
                loop {
                    tokio::time::sleep(every).await;
                    if let Some(d) = &delivery {
                        d.in_progress().await;
                    }
                    let _ = ledger::renew_leases(
                        &sender.inner.pool,
                        campaign,
                        lease_token,
                        &ids,
                        lease,
                    )
                    .await;
                }
            })
        };

        // Outcomes are written as they complete, with those of the replica's other
        // batches (see `recorder`), not once at the end of the batch. A `kill -9`
        // then repeats at the provider only the requests in flight at that
        // instant and those of the last linger, not every request the batch had
        // already made.
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut unsent = Vec::new();
        let dispatching = async {
            futures::stream::iter(claimed)
                .map(|recipient| {
                    let plan = plan.clone();
                    async move {
                        let _slot = self.inner.dispatch_slots.acquire().await;
                        self.dispatch_one(campaign, &plan, recipient).await
                    }
                })
                .buffer_unordered(self.inner.config.concurrency.max(1))
                .for_each(|result| {
                    match result {
                        Dispatched::Done(outcome) => {
                            let _ = done_tx.send(outcome);
                        }
                        Dispatched::Unsent(id) => unsent.push(id),
                    }
                    async {}
                })
                .await;
            drop(done_tx);
        };
        let ((), recorded) = tokio::join!(
            dispatching,
            self.record_as_completed(
                campaign,
                self.inner.recorder.batch(campaign, lease_token),
                done_rx
            )
        );
        let recorded = match recorded {
            Ok(recorded) => recorded,
            Err(error) => {
                heartbeat.abort();
                // The leases will expire and another replica will finish the rows;
                // the idempotency key keeps the provider from doubling them.
                tracing::error!(campaign_id = %campaign, %error, "could not record outcomes");
                return StepOutcome::Retry {
                    delay: Duration::from_secs(1),
                };
            }
        };
        let request_id = delivery.as_ref().and_then(|d| d.request_correlation_id());
        let released = self
            .release(&batch, lease_token, &unsent, request_id.as_deref())
            .await;
        heartbeat.abort();
        if let Err(error) = released {
            tracing::error!(campaign_id = %campaign, %error, "could not release unsent recipients");
            return StepOutcome::Retry {
                delay: Duration::from_secs(1),
            };
        }
        let sent = recorded.sent;
        let failed = recorded.failed;
        self.track(&batch, claimed_count, sent, failed, unsent.len() as i64)
            .await;
        // Every claimed row is marked or released, so the lease row goes. The
        // counts are read after this batch's writes committed: the batch that
        // finishes last sees all the others' and completes the campaign. If this
        // fails, the sweep drops the lease row once it expires and completes a
        // campaign left with nothing open.
        match ledger::finish_lease(&self.inner.pool, campaign, lease_token).await {
            Ok(open) if open.is_done() => {
                if let Err(error) =
                    complete_if_done(&self.inner.lifecycle, campaign, "sender").await
                {
                    tracing::warn!(campaign_id = %campaign, %error, "completion check failed");
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(campaign_id = %campaign, %error, "completion check failed");
            }
        }
        StepOutcome::Ack
    }

    /// Hands outcomes to the replica's writer as they arrive, then waits until
    /// all of them are written.
    async fn record_as_completed(
        &self,
        campaign: Uuid,
        mut recording: BatchRecording,
        mut done: tokio::sync::mpsc::UnboundedReceiver<RecipientOutcome>,
    ) -> Result<Recorded, RecordError> {
        let provider = self
            .plan(campaign)
            .await
            .ok()
            .flatten()
            .map_or("unknown", |p| p.channel.provider());
        let mut recorded = Recorded::default();
        while let Some(outcome) = done.recv().await {
            if outcome.sent {
                recorded.sent += 1;
            } else {
                recorded.failed += 1;
            }
            recording.record(outcome)?;
        }
        recording.flushed().await?;
        for (result, count) in [("sent", recorded.sent), ("failed", recorded.failed)] {
            metrics::counter!("herald_dispatches_total", "provider" => provider, "outcome" => result)
                .increment(count as u64);
        }
        Ok(recorded)
    }

    /// Puts claimed but unsent rows back to pending (one statement).
    async fn release(
        &self,
        batch: &SendBatch,
        lease_token: Uuid,
        unsent: &[i64],
        request_id: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let campaign = batch.campaign_id;
        if unsent.is_empty() {
            return Ok(());
        }
        let released =
            ledger::release_claims(&self.inner.pool, campaign, lease_token, unsent).await?;
        tracing::info!(campaign_id = %campaign, released = released.released, "released unsent recipients");
        if released.campaign_sending && released.released > 0 {
            // Resumed before the release landed: the new epoch's packer may have
            // passed these rows already, so batch them again.
            self.rebatch(batch, released.run_epoch, lease_token, unsent, request_id)
                .await;
        }
        Ok(())
    }

    /// Publishes released rows as a new batch of the current epoch, keeping the
    /// original batch's correlation ids so the trace continues.
    async fn rebatch(
        &self,
        origin: &SendBatch,
        run_epoch: i32,
        lease_token: Uuid,
        ids: &[i64],
        request_id: Option<&str>,
    ) {
        let campaign = origin.campaign_id;
        let (Some(first), Some(last)) = (ids.iter().min(), ids.iter().max()) else {
            return;
        };
        let batch = SendBatch {
            campaign_id: campaign,
            run_epoch: run_epoch.max(1),
            first_recipient_id: *first,
            last_recipient_id: *last,
            recipient_count: ids.len() as i64,
            correlation_id: origin.correlation_id,
        };
        // One claim is released once, so its lease token makes a stable message id.
        let id = format!("rebatch-{lease_token}");
        if let Err(error) = self
            .inner
            .bus
            .publish_contract(self.inner.bus.subjects.send(), &batch, &id, request_id)
            .await
        {
            tracing::warn!(campaign_id = %campaign, error = %format!("{error:#}"), "re-batch failed; the sweep will pick the rows up");
        }
    }

    async fn track(&self, batch: &SendBatch, claimed: i64, sent: i64, failed: i64, released: i64) {
        let tracked = BatchTracked {
            campaign_id: batch.campaign_id,
            run_epoch: batch.run_epoch,
            first_recipient_id: batch.first_recipient_id,
            last_recipient_id: batch.last_recipient_id,
            claimed_count: claimed,
            sent_count: sent,
            failed_count: failed,
            released_count: released,
            replica_id: self.inner.replica_id.clone(),
            correlation_id: Uuid::new_v4(),
        };
        let subject = self.inner.bus.subjects.tracked(batch.campaign_id);
        let id = format!("tracked-{}", tracked.correlation_id);
        if let Err(error) = self
            .inner
            .bus
            .publish_contract(subject, &tracked, &id, None)
            .await
        {
            tracing::debug!(error = %format!("{error:#}"), "tracked publish failed");
        }
    }

    /// Runs the replica until shutdown: the control listener and the work loop.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.inner.bus.wait_for_streams(&shutdown).await?;
        let control = {
            let sender = self.clone();
            spawn_control_listener(
                &self.inner.bus,
                &self.inner.config.control,
                "sender",
                &self.inner.replica_id,
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
        if let Some(control) = control {
            let _ = control.await;
        }
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
