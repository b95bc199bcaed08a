//! The packer: pages a campaign's open recipients into `campaigns.send` batches.
//!
//! Replicas split `campaigns.pack` through one shared durable consumer. Paging is
//! keyset-based and checkpointed in Postgres (`pack_epoch`, `pack_cursor`), so a
//! crash or a redelivery resumes where it stopped, and every batch carries a
//! deterministic `Nats-Msg-Id`, so nothing is published twice. Each replica also
//! has its own control consumer: a pause or stop aborts that campaign's paging
//! within one page. A periodic sweep re-batches rows whose lease expired (a sender
//! crashed), so every recipient ends terminal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::CancellationToken;
use herald_core::bus::{Bus, PACKER_DURABLE};
use herald_core::config::CommonConfig;
use herald_core::contracts::{ControlAction, PackRequest, SendBatch};
use herald_core::control::{ControlConfig, ControlSignal, spawn_control_listener};
use herald_core::lifecycle::Status;
use herald_core::outbox::Outbox;
use herald_core::transitions::{Lifecycle, complete_if_done};
use herald_core::work::{Delivery, StepOutcome, WorkerIdentity, run_work_loop};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Settings of the packer service.
#[derive(Debug, Clone, clap::Args)]
pub struct PackerConfig {
    /// Recipients per send batch.
    #[arg(long, env = "HERALD_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: i64,

    /// Pack requests handled at once on this replica.
    #[arg(
        long = "packer-concurrency",
        env = "HERALD_PACKER_CONCURRENCY",
        default_value_t = 4
    )]
    pub pack_concurrency: usize,

    /// How often the sweep looks for expired leases and stalled campaigns, in ms.
    #[arg(long, env = "HERALD_SWEEP_INTERVAL_MS", default_value_t = 5000)]
    pub sweep_interval_ms: u64,

    /// A fully packed campaign with pending rows and no progress for this long is
    /// re-batched by the sweep (covers send batches lost by the broker), in seconds.
    #[arg(long, env = "HERALD_STALL_SECONDS", default_value_t = 60)]
    pub stall_seconds: u64,

    /// Control fast-path settings (flattened by the binary once for all services).
    #[arg(skip)]
    pub control: ControlConfig,
}

impl Default for PackerConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            pack_concurrency: 4,
            sweep_interval_ms: 5000,
            stall_seconds: 60,
            control: ControlConfig::default(),
        }
    }
}

#[derive(Debug)]
struct PackerInner {
    pool: PgPool,
    bus: Bus,
    lifecycle: Lifecycle,
    config: PackerConfig,
    replica_id: String,
    /// Per campaign, how many pause or stop messages arrived. A paging loop
    /// notes the count before it reads the campaign and re-reads Postgres before
    /// its next page whenever the count moved (see [`Packer::told_to_stop`]).
    control_generations: Mutex<HashMap<Uuid, u64>>,
    applied: Mutex<Vec<(Uuid, ControlAction)>>,
}

/// One packer replica. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Packer {
    inner: Arc<PackerInner>,
}

/// Where a campaign's paging stands.
#[derive(Debug, Clone, Copy)]
struct PackState {
    status: Status,
    run_epoch: i32,
    packed_epoch: i32,
    pack_epoch: i32,
    pack_cursor: i64,
}

async fn load_pack_state(pool: &PgPool, campaign: Uuid) -> Result<Option<PackState>, sqlx::Error> {
    let row = sqlx::query("SELECT status, run_epoch, packed_epoch, pack_epoch, pack_cursor FROM campaigns WHERE id = $1")
        .bind(campaign)
        .fetch_optional(pool)
        .await?;
    row.map(|r| {
        Ok(PackState {
            status: r
                .try_get::<String, _>("status")?
                .parse()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            run_epoch: r.try_get("run_epoch")?,
            packed_epoch: r.try_get("packed_epoch")?,
            pack_epoch: r.try_get("pack_epoch")?,
            pack_cursor: r.try_get("pack_cursor")?,
        })
    })
    .transpose()
}

/// The next page of open recipients after `cursor`, by id.
async fn next_page(
    pool: &PgPool,
    campaign: Uuid,
    cursor: i64,
    size: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM recipients
         WHERE campaign_id = $1 AND id > $2
           AND (status = 'pending' OR (status = 'sending' AND lease_expires_at < now()))
         ORDER BY id LIMIT $3",
    )
    .bind(campaign)
    .bind(cursor)
    .bind(size)
    .fetch_all(pool)
    .await
}

/// Records progress, only while the epoch is current and the campaign is sending.
/// False means: stop paging (paused, stopped or a newer epoch).
async fn checkpoint(
    pool: &PgPool,
    campaign: Uuid,
    epoch: i32,
    cursor: i64,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE campaigns SET pack_epoch = $2, pack_cursor = $3
         WHERE id = $1 AND run_epoch = $2 AND status = 'sending'",
    )
    .bind(campaign)
    .bind(epoch)
    .bind(cursor)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

async fn mark_epoch_packed(pool: &PgPool, campaign: Uuid, epoch: i32) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("UPDATE campaigns SET packed_epoch = $2 WHERE id = $1 AND run_epoch = $2 AND packed_epoch < $2")
        .bind(campaign)
        .bind(epoch)
        .execute(pool)
        .await?
        .rows_affected()
        == 1)
}

/// Campaigns with a lease row past its expiry: a sender died (or could not
/// delete the row) before finishing a batch.
async fn campaigns_with_expired_leases(pool: &PgPool) -> Result<Vec<(Uuid, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.run_epoch FROM campaigns c
         WHERE c.status = 'sending' AND EXISTS (
             SELECT 1 FROM recipient_leases l WHERE l.campaign_id = c.id AND l.expires_at < now())",
    )
    .fetch_all(pool)
    .await
}

/// Deletes expired lease rows that guard nothing any more: every row they
/// covered was marked, released or claimed again under another lease, or the
/// campaign is no longer sending (a resume re-pages whatever is left open).
async fn drop_spent_leases(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM recipient_leases l
         WHERE l.expires_at < now() AND (
             NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.id = l.campaign_id AND c.status = 'sending')
             OR NOT EXISTS (
                 SELECT 1 FROM recipients r
                 WHERE r.campaign_id = l.campaign_id AND r.id BETWEEN l.first_id AND l.last_id
                   AND r.lease_token = l.lease_token AND r.status = 'sending'))",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Which rows a sweep re-batches.
#[derive(Debug, Clone, Copy)]
enum Stranded {
    /// Claimed by a sender that stopped renewing its lease (it crashed).
    ExpiredLeases,
    /// Pending in a campaign that made no progress for a while.
    Pending,
}

/// The next page of stranded rows after `after`, by id.
async fn stranded_page(
    pool: &PgPool,
    campaign: Uuid,
    which: Stranded,
    after: i64,
    size: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    let sql = match which {
        // Through the expired lease rows: each names the id range its rows are in.
        Stranded::ExpiredLeases => {
            "SELECT r.id FROM recipient_leases l
             JOIN recipients r ON r.campaign_id = l.campaign_id AND r.id BETWEEN l.first_id AND l.last_id
                              AND r.lease_token = l.lease_token
             WHERE l.campaign_id = $1 AND l.expires_at < now()
               AND r.status = 'sending' AND r.lease_expires_at < now() AND r.id > $2
             ORDER BY r.id LIMIT $3"
        }
        Stranded::Pending => {
            "SELECT id FROM recipients WHERE campaign_id = $1 AND status = 'pending' AND id > $2 ORDER BY id LIMIT $3"
        }
    };
    sqlx::query_scalar(sql)
        .bind(campaign)
        .bind(after)
        .bind(size)
        .fetch_all(pool)
        .await
}

/// Fully packed campaigns with nothing in flight and no ledger progress for a
/// while, with how many rows they still have pending.
async fn stalled_campaigns(
    pool: &PgPool,
    stall_seconds: f64,
) -> Result<Vec<(Uuid, i32, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.run_epoch, (c.pending_count + coalesce(sum(d.pending), 0))::bigint
         FROM campaigns c
         LEFT JOIN campaign_counter_deltas d ON d.campaign_id = c.id
         WHERE c.status = 'sending' AND c.packed_epoch = c.run_epoch
         GROUP BY c.id
         HAVING c.sending_count + coalesce(sum(d.sending), 0) = 0
            AND greatest(c.updated_at, max(d.updated_at)) < now() - make_interval(secs => $1)",
    )
    .bind(stall_seconds)
    .fetch_all(pool)
    .await
}

async fn touch_campaign(pool: &PgPool, campaign: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE campaigns SET updated_at = now() WHERE id = $1")
        .bind(campaign)
        .execute(pool)
        .await?;
    Ok(())
}

fn batch_for(campaign: Uuid, epoch: i32, ids: &[i64]) -> SendBatch {
    SendBatch {
        campaign_id: campaign,
        run_epoch: epoch.max(1),
        first_recipient_id: ids[0],
        last_recipient_id: ids[ids.len() - 1],
        recipient_count: ids.len() as i64,
        correlation_id: Uuid::new_v4(),
    }
}

fn retry_soon() -> StepOutcome {
    StepOutcome::Retry {
        delay: Duration::from_secs(1),
    }
}

impl Packer {
    pub async fn connect(common: &CommonConfig, config: PackerConfig) -> anyhow::Result<Self> {
        let pool = herald_core::db::pool(common)?;
        let bus = Bus::connect(common, "herald-packer").await?;
        Ok(Self::new(pool, bus, common.replica_id(), config))
    }

    pub fn new(pool: PgPool, bus: Bus, replica_id: String, config: PackerConfig) -> Self {
        let outbox = Outbox::relay_only(pool.clone(), bus.clone());
        Self {
            inner: Arc::new(PackerInner {
                lifecycle: Lifecycle::new(pool.clone(), outbox),
                pool,
                bus,
                config,
                replica_id,
                control_generations: Mutex::new(HashMap::new()),
                applied: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    /// Whether this replica listens to control messages.
    pub fn control_fast_path(&self) -> bool {
        self.inner.config.control.control_fast_path
    }

    /// Every (campaign, action) control message this replica applied.
    pub fn applied_controls(&self) -> Vec<(Uuid, ControlAction)> {
        self.inner.applied.lock().expect("applied lock").clone()
    }

    pub fn apply_control(&self, signal: &ControlSignal) {
        let campaign = signal.message.campaign_id;
        if matches!(
            signal.message.action,
            ControlAction::Pause | ControlAction::Stop
        ) {
            let mut generations = self
                .inner
                .control_generations
                .lock()
                .expect("generations lock");
            if generations.len() >= 100_000 {
                // Forgetting counts is safe: a loop that noted a count now sees
                // another one and re-reads Postgres once.
                generations.clear();
            }
            *generations.entry(campaign).or_default() += 1;
        }
        let latency = (chrono::Utc::now() - signal.published_at)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1e6;
        metrics::histogram!("herald_control_apply_seconds", "service" => "packer", "replica" => self.inner.replica_id.clone())
            .record(latency.max(0.0));
        let mut applied = self.inner.applied.lock().expect("applied lock");
        if applied.len() >= 10_000 {
            applied.drain(..5_000);
        }
        applied.push((campaign, signal.message.action));
    }

    fn control_generation(&self, campaign: Uuid) -> u64 {
        self.inner
            .control_generations
            .lock()
            .expect("generations lock")
            .get(&campaign)
            .copied()
            .unwrap_or(0)
    }

    /// True if a pause or stop arrived since `seen` and Postgres agrees that
    /// paging must stop. `seen` is the generation the caller's last read of the
    /// campaign started under; it moves to the one this read starts under. A
    /// message that arrives while this read is in flight moves the generation
    /// again, so the next page re-reads: no message is consumed by a read that
    /// may predate its transition.
    async fn told_to_stop(
        &self,
        campaign: Uuid,
        epoch: i32,
        seen: &mut u64,
    ) -> Result<bool, sqlx::Error> {
        let current = self.control_generation(campaign);
        if current == *seen {
            return Ok(false);
        }
        *seen = current;
        let state = load_pack_state(&self.inner.pool, campaign).await?;
        Ok(!state.is_some_and(|s| s.status == Status::Sending && s.run_epoch == epoch))
    }

    /// The step: page one campaign's run epoch into send batches.
    pub async fn handle_pack(
        &self,
        request: PackRequest,
        delivery: Option<Delivery>,
    ) -> StepOutcome {
        let pool = &self.inner.pool;
        let campaign = request.campaign_id;
        // Noted before the read: a pause that lands during it is seen below.
        let mut seen_generation = self.control_generation(campaign);
        let state = match load_pack_state(pool, campaign).await {
            Ok(Some(state)) => state,
            Ok(None) => return StepOutcome::Ack,
            Err(_) => return retry_soon(),
        };
        // Old epochs, finished epochs and campaigns that are not sending: nothing to do.
        if state.run_epoch != request.run_epoch
            || state.packed_epoch >= state.run_epoch
            || state.status != Status::Sending
        {
            return StepOutcome::Ack;
        }
        let epoch = state.run_epoch;
        let mut cursor = if state.pack_epoch == epoch {
            state.pack_cursor
        } else {
            0
        };
        let size = self.inner.config.batch_size.clamp(1, 100_000);
        loop {
            match self
                .told_to_stop(campaign, epoch, &mut seen_generation)
                .await
            {
                Ok(true) => return StepOutcome::Ack,
                Ok(false) => {}
                Err(_) => return retry_soon(),
            }
            let ids = match next_page(pool, campaign, cursor, size).await {
                Ok(ids) => ids,
                Err(_) => return retry_soon(),
            };
            if ids.is_empty() {
                break;
            }
            let mut batch = batch_for(campaign, epoch, &ids);
            batch.correlation_id = request.correlation_id;
            let request_id = delivery.as_ref().and_then(|d| d.request_correlation_id());
            if let Err(error) = self
                .inner
                .bus
                .publish_contract(
                    self.inner.bus.subjects.send(),
                    &batch,
                    &batch.message_id(),
                    request_id.as_deref(),
                )
                .await
            {
                tracing::warn!(campaign_id = %campaign, error = %format!("{error:#}"), "publishing a batch failed");
                return retry_soon();
            }
            cursor = batch.last_recipient_id;
            match checkpoint(pool, campaign, epoch, cursor).await {
                Ok(true) => {}
                Ok(false) => return StepOutcome::Ack,
                Err(_) => return retry_soon(),
            }
            metrics::counter!("herald_batches_packed_total").increment(1);
            if let Some(d) = &delivery {
                d.in_progress().await;
            }
        }
        match mark_epoch_packed(pool, campaign, epoch).await {
            Ok(_) => {}
            Err(_) => return retry_soon(),
        }
        tracing::info!(campaign_id = %campaign, epoch, "run epoch fully packed");
        // Nothing open (an empty list, or everything already sent): complete now.
        if let Err(error) = complete_if_done(&self.inner.lifecycle, campaign, "packer").await {
            tracing::warn!(campaign_id = %campaign, %error, "completion check failed");
        }
        StepOutcome::Ack
    }

    /// One sweep: re-batches expired leases and stalled pending rows, and completes
    /// a stalled campaign with nothing open. Harmless when several replicas sweep
    /// at once: the sender's claim and the completion transition decide.
    pub async fn sweep(&self) -> Result<usize, sqlx::Error> {
        let pool = &self.inner.pool;
        let mut published = 0;
        // First forget the leases whose rows were already taken care of (by the
        // previous sweep's batches, for instance), then re-batch the rest.
        drop_spent_leases(pool).await?;
        for (campaign, epoch) in campaigns_with_expired_leases(pool).await? {
            published += self
                .rebatch_stranded(campaign, epoch, Stranded::ExpiredLeases)
                .await?;
        }
        let stall = self.inner.config.stall_seconds as f64;
        for (campaign, epoch, pending) in stalled_campaigns(pool, stall).await? {
            // Touched first, so a campaign comes back at most once per stall period.
            touch_campaign(pool, campaign).await?;
            if pending > 0 {
                tracing::warn!(campaign_id = %campaign, "campaign stalled with pending rows; re-batching them");
                published += self
                    .rebatch_stranded(campaign, epoch, Stranded::Pending)
                    .await?;
            } else {
                // Nothing open, yet still sending: the completion check of its last
                // batch did not run (Postgres was unreachable at that moment, or
                // the sender died right after its last write).
                tracing::warn!(campaign_id = %campaign, "campaign stalled with nothing open; completing it");
                if let Err(error) =
                    complete_if_done(&self.inner.lifecycle, campaign, "packer").await
                {
                    tracing::warn!(campaign_id = %campaign, %error, "completion check failed");
                }
            }
        }
        Ok(published)
    }

    async fn rebatch_stranded(
        &self,
        campaign: Uuid,
        epoch: i32,
        which: Stranded,
    ) -> Result<usize, sqlx::Error> {
        let size = self.inner.config.batch_size.clamp(1, 100_000);
        let (mut after, mut published) = (0, 0);
        loop {
            let ids = stranded_page(&self.inner.pool, campaign, which, after, size).await?;
            let Some(&last) = ids.last() else {
                return Ok(published);
            };
            published += self.publish_sweep_batch(campaign, epoch, &ids).await;
            after = last;
        }
    }

    async fn publish_sweep_batch(&self, campaign: Uuid, epoch: i32, ids: &[i64]) -> usize {
        let batch = batch_for(campaign, epoch, ids);
        let id = format!("sweep-{}", batch.correlation_id);
        match self
            .inner
            .bus
            .publish_contract(self.inner.bus.subjects.send(), &batch, &id, None)
            .await
        {
            Ok(()) => 1,
            Err(error) => {
                tracing::warn!(campaign_id = %campaign, error = %format!("{error:#}"), "sweep publish failed");
                0
            }
        }
    }

    /// Runs the replica until shutdown: control listener, sweep and work loop.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.inner.bus.wait_for_streams(&shutdown).await?;
        let control = {
            let packer = self.clone();
            spawn_control_listener(
                &self.inner.bus,
                &self.inner.config.control,
                "packer",
                &self.inner.replica_id,
                &shutdown,
                move |signal| packer.apply_control(&signal),
            )
        };
        let sweeper = {
            let (packer, shutdown) = (self.clone(), shutdown.clone());
            let every = Duration::from_millis(self.inner.config.sweep_interval_ms.max(100));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    match packer.sweep().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(batches = n, "sweep re-batched recipients"),
                        Err(error) => tracing::warn!(%error, "sweep failed"),
                    }
                }
            })
        };
        let identity = WorkerIdentity {
            consumer: PACKER_DURABLE.into(),
            replica_id: self.inner.replica_id.clone(),
        };
        let bus = self.inner.bus.clone();
        let packer = self.clone();
        tracing::info!(replica_id = %self.inner.replica_id, "packer running");
        run_work_loop::<PackRequest, _, _, _, _>(
            bus.clone(),
            identity,
            || bus.work_consumer(PACKER_DURABLE),
            self.inner.config.pack_concurrency.max(1),
            shutdown.clone(),
            move |request, delivery| {
                let packer = packer.clone();
                async move { packer.handle_pack(request, Some(delivery)).await }
            },
        )
        .await?;
        let _ = sweeper.await;
        if let Some(control) = control {
            let _ = control.await;
        }
        Ok(())
    }
}

/// Runs one packer replica with its own connections until `shutdown`.
pub async fn run(
    common: CommonConfig,
    config: PackerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    common.spawn_metrics_listener(&shutdown);
    let packer = Packer::connect(&common, config).await?;
    packer.run(shutdown).await
}
