//! The outbox: `campaign_events.published_at IS NULL` marks an event not yet on
//! JetStream.
//!
//! Both the fast path (right after a commit) and the relay (periodically, and
//! whenever NATS comes back) publish through [`Outbox::flush_campaign`]. It holds a
//! per-campaign advisory lock for the whole publish-and-mark, so with any number of
//! api replicas a campaign's events go out in `seq` order, and a row is marked in
//! the same transaction that published it. `Nats-Msg-Id` (the event id) makes the
//! stream drop the copy that a crash between publish and commit could cause.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use sqlx::{PgPool, Row};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::bus::Bus;
use crate::contracts::{ControlAction, ControlMessage, LifecycleEvent, PackRequest, TriggeredBy};
use crate::lifecycle::Status;

/// How many events one flush publishes before committing.
const FLUSH_LIMIT: i64 = 500;

#[derive(Debug, Clone)]
pub struct Outbox {
    pool: PgPool,
    bus: Bus,
    wake_relay: Arc<Notify>,
    fast_path_timeout: Duration,
    /// Off in workers: their few transitions (completion) are left to the api's
    /// relay, so worker credentials never need to publish events or control.
    fast_path: bool,
}

/// What one flush published; `missed` counts the events the fast path should
/// have published (see [`relayed_by_design`]).
#[derive(Debug, Default, Clone, Copy)]
struct Flushed {
    published: usize,
    missed: usize,
}

/// Events that only the relay publishes: transitions committed by workers
/// (`system:packer`, `system:sender`, ...), whose outbox has no fast path. The
/// api's own transitions (tenants and its scheduler) go out on the fast path,
/// so the relay publishing one of those means the fast path missed it.
fn relayed_by_design(actor: &str) -> bool {
    actor.starts_with("system:") && actor != "system:scheduler"
}

struct PendingEvent {
    id: Uuid,
    seq: i64,
    event_type: String,
    payload: serde_json::Value,
    actor: String,
    correlation_id: Uuid,
    request_correlation_id: Option<String>,
    created_at: DateTime<Utc>,
}

async fn try_lock_campaign_outbox(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    campaign_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1::text, 7270))")
        .bind(campaign_id)
        .fetch_one(&mut **tx)
        .await
}

async fn unpublished_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    campaign_id: Uuid,
) -> Result<Vec<PendingEvent>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, seq, type, payload, actor, correlation_id, request_correlation_id, created_at
         FROM campaign_events WHERE campaign_id = $1 AND published_at IS NULL
         ORDER BY seq LIMIT $2",
    )
    .bind(campaign_id)
    .bind(FLUSH_LIMIT)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PendingEvent {
                id: r.try_get("id")?,
                seq: r.try_get("seq")?,
                event_type: r.try_get("type")?,
                payload: r.try_get("payload")?,
                actor: r.try_get("actor")?,
                correlation_id: r.try_get("correlation_id")?,
                request_correlation_id: r.try_get("request_correlation_id")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

async fn mark_published(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE campaign_events SET published_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn campaigns_with_unpublished_events(pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT campaign_id FROM campaign_events WHERE published_at IS NULL
         GROUP BY campaign_id ORDER BY min(created_at) LIMIT 200",
    )
    .fetch_all(pool)
    .await
}

async fn unpublished_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM campaign_events WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
}

fn status_field(payload: &serde_json::Value, key: &str) -> Option<Status> {
    payload
        .get(key)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

impl Outbox {
    pub fn new(pool: PgPool, bus: Bus) -> Self {
        Self {
            pool,
            bus,
            wake_relay: Arc::new(Notify::new()),
            fast_path_timeout: Duration::from_secs(2),
            fast_path: true,
        }
    }

    /// An outbox that only records: the api's relay publishes.
    pub fn relay_only(pool: PgPool, bus: Bus) -> Self {
        Self {
            fast_path: false,
            ..Self::new(pool, bus)
        }
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Publishes a campaign's pending events right after a commit, if NATS is up.
    /// Never fails the caller: whatever is left is the relay's.
    pub async fn publish_fast(&self, campaign_id: Uuid) {
        if !self.fast_path {
            return;
        }
        if !self.bus.is_connected() {
            self.wake_relay.notify_one();
            return;
        }
        match tokio::time::timeout(self.fast_path_timeout, self.flush_campaign(campaign_id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%campaign_id, error = %format!("{error:#}"), "fast-path publish failed; relay will retry");
                self.wake_relay.notify_one();
            }
            Err(_) => {
                tracing::warn!(%campaign_id, "fast-path publish timed out; relay will retry");
                self.wake_relay.notify_one();
            }
        }
    }

    /// Publishes every unpublished event of one campaign, in order, and marks them.
    /// Returns how many it published; 0 if another publisher holds the campaign.
    pub async fn flush_campaign(&self, campaign_id: Uuid) -> anyhow::Result<usize> {
        Ok(self.flush_counted(campaign_id).await?.published)
    }

    async fn flush_counted(&self, campaign_id: Uuid) -> anyhow::Result<Flushed> {
        let mut tx = self.pool.begin().await?;
        if !try_lock_campaign_outbox(&mut tx, campaign_id).await? {
            return Ok(Flushed::default());
        }
        let events = unpublished_events(&mut tx, campaign_id).await?;
        let mut published = Vec::with_capacity(events.len());
        let mut missed = 0;
        let mut failure = None;
        for event in &events {
            if let Err(error) = self.publish_event(campaign_id, event).await {
                failure = Some(error);
                break;
            }
            published.push(event.id);
            missed += usize::from(!relayed_by_design(&event.actor));
        }
        if !published.is_empty() {
            mark_published(&mut tx, &published).await?;
        }
        tx.commit().await?;
        match failure {
            Some(error) => Err(error),
            None => Ok(Flushed {
                published: published.len(),
                missed,
            }),
        }
    }

    /// One event, plus the control and pack messages it implies.
    async fn publish_event(&self, campaign_id: Uuid, event: &PendingEvent) -> anyhow::Result<()> {
        let subjects = &self.bus.subjects;
        let request_id = event.request_correlation_id.as_deref();
        let status = status_field(&event.payload, "to").unwrap_or(Status::Draft);
        let run_epoch = event
            .payload
            .get("runEpoch")
            .and_then(|v| v.as_i64())
            .unwrap_or(0) as i32;
        let lifecycle = LifecycleEvent {
            event_id: event.id,
            campaign_id,
            seq: event.seq,
            event_type: event.event_type.clone(),
            from_status: status_field(&event.payload, "from"),
            status,
            version: event
                .payload
                .get("version")
                .and_then(|v| v.as_i64())
                .unwrap_or(1),
            run_epoch,
            actor: event.actor.clone(),
            occurred_at: event.created_at,
            correlation_id: event.correlation_id,
        };
        let event_id = event.id.to_string();
        // The control message goes first (it is what stops the senders), and the
        // messages of one event share one round trip: all are sent, then all acks
        // awaited. Events stay in order: the next event is sent only after every
        // ack of this one, and a failure publishes the whole event again under the
        // same message ids, which the streams deduplicate.
        let mut acks = Vec::with_capacity(3);
        let control_action = match event.event_type.as_str() {
            "paused" => Some(ControlAction::Pause),
            "resumed" => Some(ControlAction::Resume),
            "stopped" => Some(ControlAction::Stop),
            _ => None,
        };
        if let Some(action) = control_action {
            let control = ControlMessage {
                campaign_id,
                action,
                correlation_id: event.correlation_id,
            };
            let id = format!("{event_id}.control");
            let subject = subjects.control(campaign_id);
            acks.push(
                self.bus
                    .send_contract(subject, &control, &id, request_id)
                    .await?
                    .boxed(),
            );
        }
        let subject = subjects.events(campaign_id);
        acks.push(
            self.bus
                .send_contract(subject, &lifecycle, &event_id, request_id)
                .await?
                .boxed(),
        );
        // A decided A/B test opens a new run epoch while sending, and a retry
        // when it made a completed campaign send again (on a paused one the
        // resume packs the re-opened rows): pack the rest.
        let packs = match event.event_type.as_str() {
            "started" | "resumed" => true,
            "ab_decided" | "retried" => status == Status::Sending,
            _ => false,
        };
        if packs {
            let triggered_by = event
                .payload
                .get("triggeredBy")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or(TriggeredBy::Manual);
            let pack = PackRequest {
                campaign_id,
                run_epoch,
                triggered_at: event.created_at,
                triggered_by,
                correlation_id: event.correlation_id,
                batches: None,
            };
            let id = format!("{event_id}.pack");
            acks.push(
                self.bus
                    .send_contract(subjects.pack(), &pack, &id, request_id)
                    .await?
                    .boxed(),
            );
        }
        futures::future::try_join_all(acks).await?;
        Ok(())
    }

    /// One relay pass over every campaign with unpublished events.
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        Ok(self.relay_counted().await?.published)
    }

    async fn relay_counted(&self) -> anyhow::Result<Flushed> {
        let mut total = Flushed::default();
        for campaign_id in campaigns_with_unpublished_events(&self.pool).await? {
            let flushed = self.flush_counted(campaign_id).await?;
            total.published += flushed.published;
            total.missed += flushed.missed;
        }
        Ok(total)
    }

    /// Runs the relay until shutdown: every `interval`, and at once when the fast
    /// path gives up or NATS reconnects.
    pub async fn run_relay(&self, interval: Duration, shutdown: crate::CancellationToken) {
        loop {
            if self.bus.is_connected() {
                match self.relay_counted().await {
                    Ok(Flushed { published: 0, .. }) => {}
                    // Worker transitions (completion) are always the relay's job.
                    Ok(Flushed {
                        published,
                        missed: 0,
                    }) => {
                        tracing::debug!(published, "relay published worker events")
                    }
                    Ok(Flushed { published, missed }) => tracing::info!(
                        published,
                        missed,
                        "relay published events the fast path missed"
                    ),
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "relay pass failed")
                    }
                }
            }
            if let Ok(backlog) = unpublished_count(&self.pool).await {
                metrics::gauge!("herald_relay_backlog").set(backlog as f64);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake_relay.notified() => {
                    // Give a reconnecting client a moment before trying.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
