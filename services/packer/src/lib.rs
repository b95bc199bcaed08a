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
use herald_core::presence::Presence;
use herald_core::transitions::{Lifecycle, complete_if_done};
use herald_core::work::{Delivery, StepOutcome, WorkerIdentity, run_work_loop};

use crate::store::{
    advance_cursor, load_pack_state, mark_epoch_packed, next_page, try_lock_paging,
};

mod store;
mod sweep;
use sqlx::PgPool;
use uuid::Uuid;

/// Settings of the packer service.
#[derive(Debug, Clone, clap::Args)]
pub struct PackerConfig {
    /// Recipients per send batch.
    #[arg(long, env = "HERALD_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: i64,

    /// Send batches of one campaign kept queued or in flight at once (windowed
    /// packing): the packer pages this many, then one more each time a sender
    /// finishes one, so campaigns interleave in `campaigns.send` instead of one
    /// campaign's whole list queuing ahead of everyone. Keep it at least twice
    /// the sender replicas' batch slots (`HERALD_SENDER_BATCHES` × replicas), or a
    /// lone campaign cannot keep every sender busy.
    #[arg(long, env = "HERALD_PACK_WINDOW", default_value_t = 16)]
    pub pack_window: u32,

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
            pack_window: 16,
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
    /// Heartbeats and control acks.
    presence: Presence,
}

/// One packer replica. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Packer {
    inner: Arc<PackerInner>,
}

pub(crate) fn batch_for(campaign: Uuid, epoch: i32, ids: &[i64]) -> SendBatch {
    SendBatch {
        campaign_id: campaign,
        run_epoch: epoch.max(1),
        first_recipient_id: ids[0],
        last_recipient_id: ids[ids.len() - 1],
        recipient_count: ids.len() as i64,
        correlation_id: Uuid::new_v4(),
    }
}

/// What paging one batch did.
#[derive(Debug, Clone, Copy)]
enum Page {
    /// Published, and the cursor moved past it.
    Packed,
    /// Another pack request of the campaign holds its paging lock.
    Busy,
    /// Nothing to page for this request: an old or finished epoch, or the
    /// campaign stopped sending.
    Idle,
    /// Nothing left to page in this epoch.
    Exhausted { epoch: i32 },
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
                presence: Presence::new(
                    &bus,
                    "packer",
                    &replica_id,
                    config.control.control_fast_path,
                ),
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

    /// Acts on a control message: a pause or stop moves the campaign's control
    /// generation, so its paging loops re-read Postgres before their next page;
    /// then the message is acked (a packer has no provider requests in flight).
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
        drop(applied);
        let presence = self.inner.presence.clone();
        let ack = presence.ack_of(signal, 0);
        tokio::spawn(async move { presence.publish_ack(&ack).await });
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

    /// The step: page the next batches of one campaign's run epoch, at most the
    /// request's `batches` (the window when absent). Each batch a sender
    /// finishes asks for one more, so a campaign keeps about a window of batches
    /// queued or in flight; the epoch is marked packed when a page comes back
    /// empty.
    pub async fn handle_pack(
        &self,
        request: PackRequest,
        delivery: Option<Delivery>,
    ) -> StepOutcome {
        let campaign = request.campaign_id;
        // Noted before the read: a pause that lands during it is seen below.
        let mut seen_generation = self.control_generation(campaign);
        let mut credits = request
            .batches
            .unwrap_or(self.inner.config.pack_window)
            .max(1);
        let request_id = delivery.as_ref().and_then(|d| d.request_correlation_id());
        let mut busy_since: Option<std::time::Instant> = None;
        while credits > 0 {
            match self
                .told_to_stop(campaign, request.run_epoch, &mut seen_generation)
                .await
            {
                Ok(true) => return StepOutcome::Ack,
                Ok(false) => {}
                Err(_) => return retry_soon(),
            }
            match self.pack_page(&request, request_id.as_deref()).await {
                Ok(Page::Packed) => {
                    credits -= 1;
                    busy_since = None;
                    metrics::counter!("herald_batches_packed_total").increment(1);
                    if let Some(d) = &delivery {
                        d.in_progress().await;
                    }
                }
                // Another pack request of this campaign is paging: wait for it.
                Ok(Page::Busy) => {
                    let since = *busy_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > Duration::from_secs(10) {
                        return retry_soon();
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(Page::Idle) => return StepOutcome::Ack,
                Ok(Page::Exhausted { epoch }) => return self.finish_epoch(campaign, epoch).await,
                Err(_) => return retry_soon(),
            }
        }
        StepOutcome::Ack
    }

    /// The epoch and cursor to page from, or `None` when there is nothing to
    /// page for this request (an old or finished epoch, a campaign not sending).
    async fn paging_position(
        conn: &mut sqlx::PgConnection,
        request: &PackRequest,
    ) -> Result<Option<(i32, i64, bool)>, sqlx::Error> {
        let Some(state) = load_pack_state(&mut *conn, request.campaign_id).await? else {
            return Ok(None);
        };
        if state.run_epoch != request.run_epoch
            || state.packed_epoch >= state.run_epoch
            || state.status != Status::Sending
        {
            return Ok(None);
        }
        let epoch = state.run_epoch;
        let cursor = if state.pack_epoch == epoch {
            state.pack_cursor
        } else {
            0
        };
        Ok(Some((epoch, cursor, state.rest_open)))
    }

    /// Under the campaign's paging lock: reads the cursor, publishes the next
    /// page as one batch and moves the cursor past it, then commits. A packer
    /// killed between the publish and the commit leaves the cursor before the
    /// page, and the next request publishes it again under the same
    /// deterministic message id, which JetStream drops.
    async fn pack_page(
        &self,
        request: &PackRequest,
        request_id: Option<&str>,
    ) -> anyhow::Result<Page> {
        let campaign = request.campaign_id;
        let mut tx = self.inner.pool.begin().await?;
        if !try_lock_paging(&mut tx, campaign).await? {
            return Ok(Page::Busy);
        }
        let Some((epoch, from, rest_open)) = Self::paging_position(&mut tx, request).await? else {
            return Ok(Page::Idle);
        };
        let size = self.inner.config.batch_size.clamp(1, 100_000);
        let ids = next_page(&mut *tx, campaign, from, size, rest_open).await?;
        if ids.is_empty() {
            return Ok(Page::Exhausted { epoch });
        }
        let mut batch = batch_for(campaign, epoch, &ids);
        batch.correlation_id = request.correlation_id;
        let bus = &self.inner.bus;
        if let Err(error) = bus
            .publish_contract(bus.subjects.send(), &batch, &batch.message_id(), request_id)
            .await
        {
            tracing::warn!(campaign_id = %campaign, error = %format!("{error:#}"), "publishing a batch failed");
            return Err(error);
        }
        if !advance_cursor(&mut *tx, campaign, epoch, from, batch.last_recipient_id).await? {
            return Ok(Page::Idle);
        }
        tx.commit().await?;
        Ok(Page::Packed)
    }

    async fn finish_epoch(&self, campaign: Uuid, epoch: i32) -> StepOutcome {
        if mark_epoch_packed(&self.inner.pool, campaign, epoch)
            .await
            .is_err()
        {
            return retry_soon();
        }
        tracing::info!(campaign_id = %campaign, epoch, "run epoch fully packed");
        // Nothing open (an empty list, or everything already sent): complete now.
        match complete_if_done(&self.inner.lifecycle, campaign, "packer").await {
            Ok(true) => {}
            // An A/B test whose test cohort is empty or already done waits
            // for its decision from here on (no sender will end a lease of it).
            Ok(false) => {
                let noted = herald_core::ab::decision::note_test_done(&self.inner.pool, campaign);
                if let Err(error) = noted.await {
                    tracing::warn!(campaign_id = %campaign, %error, "could not note the A/B test cohort done");
                }
            }
            Err(error) => {
                tracing::warn!(campaign_id = %campaign, %error, "completion check failed")
            }
        }
        StepOutcome::Ack
    }

    /// Runs the replica until shutdown: control listener, sweep and work loop.
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
            let packer = self.clone();
            spawn_control_listener(
                &self.inner.bus,
                &self.inner.config.control,
                ("packer", &self.inner.replica_id),
                self.inner.presence.progress(),
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
        let _ = heartbeat.await;
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
