//! Starts `scheduled` campaigns when their time comes, and decides A/B tests
//! whose automatic decision is due (`herald_core::ab::decision`).
//!
//! Safe with several api replicas: each start goes through the lifecycle's row
//! lock, so a campaign that another replica started already is refused as an
//! invalid transition and skipped.

use std::time::Duration;

use herald_core::CancellationToken;
use herald_core::ab::decision::{self, DecideError, Pick};
use herald_core::lifecycle::Action;
use herald_core::transitions::{Actor, Lifecycle, TransitionError, TransitionRequest};
use uuid::Uuid;

/// Due scheduled campaigns, oldest first. Not those whose channel was deleted
/// (scheduled before a deleted channel's campaigns were refused): their start
/// would be refused on every pass, and a hundred of them would keep every
/// other due campaign out of the batch. They stay `scheduled` until someone
/// unschedules them.
pub async fn due_campaigns(pool: &sqlx::PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.id FROM campaigns c
         JOIN channels ch ON ch.id = c.channel_id AND ch.deleted_at IS NULL
         WHERE c.status = 'scheduled' AND c.scheduled_at <= now()
         ORDER BY c.scheduled_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One scheduler pass: starts every due campaign. Returns how many it started.
pub async fn start_due_campaigns(lifecycle: &Lifecycle) -> Result<usize, sqlx::Error> {
    let mut started = 0;
    for id in due_campaigns(&lifecycle.pool, 100).await? {
        let request = TransitionRequest {
            campaign_id: id,
            tenant_id: None,
            action: Action::Start,
            expected_version: None,
            scheduled_at: None,
            actor: Actor::system("scheduler"),
            detail: None,
        };
        match lifecycle.apply(request).await {
            Ok(_) => {
                started += 1;
                tracing::info!(campaign_id = %id, "scheduled campaign started");
            }
            // Another replica won the race, or the campaign was stopped meanwhile.
            Err(TransitionError::Invalid(_) | TransitionError::NotFound) => {}
            Err(TransitionError::Database(e)) => return Err(e),
            Err(other) => {
                tracing::warn!(campaign_id = %id, error = %other, "could not start scheduled campaign")
            }
        }
    }
    Ok(started)
}

/// One pass of automatic A/B decisions: picks the winner of every sending
/// campaign whose decision is due, by its metric. Returns how many it decided.
/// Another replica deciding first makes this one's attempt `AlreadyDecided`.
pub async fn decide_due_ab_tests(lifecycle: &Lifecycle) -> Result<usize, sqlx::Error> {
    let mut decided = 0;
    for id in decision::due_decisions(&lifecycle.pool, 100).await? {
        let actor = Actor::system("scheduler");
        match decision::decide(lifecycle, id, None, Pick::Metric, &actor).await {
            Ok(_) => decided += 1,
            Err(DecideError::Database(e)) => return Err(e),
            Err(other) => {
                tracing::debug!(campaign_id = %id, error = %other, "A/B decision skipped")
            }
        }
    }
    Ok(decided)
}

pub async fn run_scheduler(lifecycle: Lifecycle, interval: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(error) = start_due_campaigns(&lifecycle).await {
            tracing::warn!(%error, "scheduler pass failed");
        }
        if let Err(error) = decide_due_ab_tests(&lifecycle).await {
            tracing::warn!(%error, "A/B decision pass failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
