//! Starts `scheduled` campaigns when their time comes.
//!
//! Safe with several api replicas: each start goes through the lifecycle's row
//! lock, so a campaign that another replica started already is refused as an
//! invalid transition and skipped.

use std::time::Duration;

use herald_core::CancellationToken;
use herald_core::lifecycle::Action;
use herald_core::transitions::{Actor, Lifecycle, TransitionError, TransitionRequest};
use uuid::Uuid;

async fn due_campaigns(pool: &sqlx::PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM campaigns WHERE status = 'scheduled' AND scheduled_at <= now()
         ORDER BY scheduled_at LIMIT $1",
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

pub async fn run_scheduler(lifecycle: Lifecycle, interval: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(error) = start_due_campaigns(&lifecycle).await {
            tracing::warn!(%error, "scheduler pass failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
