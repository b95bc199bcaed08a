//! The one function through which every campaign transition passes.
//!
//! In one transaction it locks the campaign row (and, for pause, stop and fail,
//! closes the campaign's claim gate: see [`crate::claim_gate`]), checks the transition table,
//! updates the projection and its version, appends the event, and commits. A stop
//! or a fail also records a halt, whose pass skips the recipients nobody holds
//! right after the commit ([`crate::halt`]). After
//! the commit the outbox fast path publishes the event; the relay covers whatever
//! the fast path misses (for example while NATS is down).

use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::campaigns::{CAMPAIGN_COLUMNS, Campaign};
use crate::contracts::TriggeredBy;
use crate::lifecycle::{Action, InvalidTransition, Status, next_status};
use crate::outbox::Outbox;
use crate::retry::{RetrySelection, reopen};

/// What a transition carries beyond its action.
#[derive(Debug, Clone)]
pub enum TransitionDetail {
    /// `retry`: which failed recipients to re-open ([`crate::retry`]).
    Retry(RetrySelection),
    /// Why a system actor made the transition (for example an auto-pause's
    /// `{"reason": "failure_rate", ...}`), merged into the event payload.
    Cause(serde_json::Map<String, serde_json::Value>),
}

/// Who asked, and how to trace it.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `tenant:<name>` for API callers, `system:<component>` for workers.
    pub name: String,
    /// The caller's `X-Correlation-Id`, already validated.
    pub request_correlation_id: Option<String>,
}

impl Actor {
    pub fn system(component: &str) -> Self {
        Self {
            name: format!("system:{component}"),
            request_correlation_id: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TransitionRequest {
    pub campaign_id: Uuid,
    /// Scopes the lookup to one tenant; `None` for system callers.
    pub tenant_id: Option<Uuid>,
    pub action: Action,
    /// `If-Match`: the version the caller last saw.
    pub expected_version: Option<i64>,
    /// Required by `schedule`.
    pub scheduled_at: Option<DateTime<Utc>>,
    pub actor: Actor,
    /// Required by `retry`; a cause for any other.
    pub detail: Option<TransitionDetail>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("campaign not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] InvalidTransition),
    #[error("campaign is at version {current}, not {expected}")]
    VersionMismatch { current: i64, expected: i64 },
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A committed transition.
#[derive(Debug, Clone)]
pub struct Transitioned {
    pub campaign: Campaign,
    pub event_id: Uuid,
    /// The event's `correlationId`, which its control message carries: replicas'
    /// acks name it (`crate::presence`).
    pub correlation_id: Uuid,
    pub from: Status,
    /// For `retry`: how many failed recipients it re-opened.
    pub reopened: Option<i64>,
}

/// Appends one event under the caller's lock of the campaign row.
pub async fn append_event(
    tx: &mut Transaction<'_, Postgres>,
    campaign_id: Uuid,
    event_type: &str,
    payload: serde_json::Value,
    actor: &Actor,
) -> Result<Uuid, sqlx::Error> {
    append_event_correlated(tx, campaign_id, event_type, payload, actor, Uuid::new_v4()).await
}

/// [`append_event`] with the event's `correlation_id` chosen by the caller.
async fn append_event_correlated(
    tx: &mut Transaction<'_, Postgres>,
    campaign_id: Uuid,
    event_type: &str,
    payload: serde_json::Value,
    actor: &Actor,
    correlation_id: Uuid,
) -> Result<Uuid, sqlx::Error> {
    let event_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO campaign_events
             (id, campaign_id, seq, type, payload, actor, correlation_id, request_correlation_id)
         VALUES ($1, $2,
             (SELECT coalesce(max(seq), 0) + 1 FROM campaign_events WHERE campaign_id = $2),
             $3, $4, $5, $6, $7)",
    )
    .bind(event_id)
    .bind(campaign_id)
    .bind(event_type)
    .bind(payload)
    .bind(&actor.name)
    .bind(correlation_id)
    .bind(&actor.request_correlation_id)
    .execute(&mut **tx)
    .await?;
    Ok(event_id)
}

async fn lock_campaign(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    tenant: Option<Uuid>,
) -> Result<Option<Campaign>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns
         WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) FOR NO KEY UPDATE"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await
}

/// Work still open in the ledger: completion must wait for it.
async fn has_open_recipients(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM recipients WHERE campaign_id = $1 AND status IN ('pending', 'sending'))",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await
}

async fn update_projection(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    to: Status,
    action: Action,
    scheduled_at: Option<DateTime<Utc>>,
) -> Result<Campaign, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE campaigns SET
             status = $2,
             version = version + 1,
             run_epoch = run_epoch + CASE WHEN $3 THEN 1 ELSE 0 END,
             scheduled_at = CASE WHEN $4 = 'schedule' THEN $5
                                 WHEN $4 = 'unschedule' THEN NULL ELSE scheduled_at END,
             started_at = CASE WHEN $4 = 'start' THEN coalesce(started_at, now()) ELSE started_at END,
             finished_at = CASE WHEN $2 IN ('stopped', 'completed', 'failed') THEN now()
                                WHEN $2 = 'sending' THEN NULL ELSE finished_at END,
             updated_at = now()
         WHERE id = $1
         RETURNING {CAMPAIGN_COLUMNS}"
    )))
    .bind(id)
    .bind(to.as_str())
    .bind(action.opens_run_epoch(to))
    .bind(action.as_str())
    .bind(scheduled_at)
    .fetch_one(&mut **tx)
    .await
}

/// Runs the transition in one transaction. Does not publish: see [`Lifecycle`].
pub async fn commit_transition(
    pool: &PgPool,
    request: &TransitionRequest,
) -> Result<Transitioned, TransitionError> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let current = lock_campaign(&mut tx, request.campaign_id, request.tenant_id)
        .await?
        .ok_or(TransitionError::NotFound)?;
    // Claims are ordered against halting transitions by the claim gate, not by
    // the row lock (`FOR NO KEY UPDATE` lets claims' key-share locks through).
    if matches!(request.action, Action::Pause | Action::Stop | Action::Fail) {
        crate::claim_gate::close(&mut tx, current.id).await?;
    }
    // The connection, the row lock and the gate: the part of "commit" spent waiting.
    metrics::histogram!("herald_transition_seconds", "action" => request.action.as_str(), "phase" => "lock")
        .record(started.elapsed());
    if let Some(expected) = request.expected_version {
        if expected != current.version {
            return Err(TransitionError::VersionMismatch {
                current: current.version,
                expected,
            });
        }
    }
    let to = next_status(current.status, request.action)?;
    if (request.action.opens_run_epoch(to) || request.action == Action::Schedule)
        && crate::channels::is_deleted(&mut tx, current.channel_id).await?
    {
        let remedy = if current.status == Status::Draft {
            "move the draft to another channel (PATCH channel_id)"
        } else {
            "duplicate the campaign and move the copy to another channel (PATCH channel_id)"
        };
        return Err(TransitionError::Precondition(format!(
            "the campaign's channel {} was deleted; {remedy}",
            current.channel_id
        )));
    }
    if request.action == Action::Schedule {
        match request.scheduled_at.or(current.scheduled_at) {
            Some(at) if at > Utc::now() => {}
            Some(_) => {
                return Err(TransitionError::Precondition(
                    "scheduled_at must be in the future".into(),
                ));
            }
            None => {
                return Err(TransitionError::Precondition(
                    "schedule needs a scheduled_at time".into(),
                ));
            }
        }
    }
    // The counters answer most attempts at once; the ledger scan (no index covers
    // `status`, so it reads the campaign's rows) is the final word when they say
    // nothing is open.
    if request.action == Action::Complete
        && (current.packed_epoch < current.run_epoch
            || current.counters.pending + current.counters.sending > 0
            || has_open_recipients(&mut tx, current.id).await?)
    {
        return Err(TransitionError::Precondition(
            "recipients are still open".into(),
        ));
    }
    // Stop and fail account for every recipient (invariant 11): the halt
    // commits with the status, and its pass skips the open rows after the commit.
    if let Some(reason) = crate::halt::halt_reason(request.action) {
        crate::halt::record_halt(&mut tx, current.id, reason).await?;
    }
    let reopened = match (request.action, &request.detail) {
        (Action::Retry, Some(TransitionDetail::Retry(selection))) => {
            Some(reopen(&mut tx, current.id, selection).await?)
        }
        (Action::Retry, _) => {
            return Err(TransitionError::Precondition("retry needs a scope".into()));
        }
        _ => None,
    };
    // A new run measures its own failure rate (`crate::auto_pause`).
    if request.action.opens_run_epoch(to) {
        crate::auto_pause::reset_window(&mut tx, current.id).await?;
    }
    let scheduled_at = request.scheduled_at.or(current.scheduled_at);
    let campaign = update_projection(&mut tx, current.id, to, request.action, scheduled_at).await?;
    let triggered_by = match (request.action, current.status) {
        (Action::Resume, _) => Some(TriggeredBy::Resume),
        (Action::Retry, _) if to == Status::Sending => Some(TriggeredBy::Retry),
        (Action::Start, Status::Scheduled) if request.actor.name.starts_with("system:") => {
            Some(TriggeredBy::Schedule)
        }
        (Action::Start, _) => Some(TriggeredBy::Manual),
        _ => None,
    };
    let mut payload = serde_json::json!({
        "from": current.status,
        "to": to,
        "version": campaign.version,
        "runEpoch": campaign.run_epoch,
        "triggeredBy": triggered_by,
    });
    add_detail(&mut payload, request.detail.as_ref(), reopened);
    let correlation_id = Uuid::new_v4();
    let event_id = append_event_correlated(
        &mut tx,
        current.id,
        request.action.event_type(),
        payload,
        &request.actor,
        correlation_id,
    )
    .await?;
    tx.commit().await?;
    Ok(Transitioned {
        campaign,
        event_id,
        correlation_id,
        from: current.status,
        reopened,
    })
}

/// The event records a retry's scope, reasons and count, and a system
/// actor's cause, beside the transition's own fields.
fn add_detail(
    payload: &mut serde_json::Value,
    detail: Option<&TransitionDetail>,
    reopened: Option<i64>,
) {
    let Some(fields) = payload.as_object_mut() else {
        return;
    };
    match detail {
        Some(TransitionDetail::Retry(selection)) => {
            if let Some(extra) = selection.payload().as_object() {
                fields.extend(extra.clone());
            }
            fields.insert("reopened".into(), reopened.unwrap_or(0).into());
        }
        Some(TransitionDetail::Cause(cause)) => fields.extend(cause.clone()),
        None => {}
    }
}

/// The lifecycle service: commit, then publish through the outbox fast path.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub pool: PgPool,
    pub outbox: Outbox,
}

impl Lifecycle {
    pub fn new(pool: PgPool, outbox: Outbox) -> Self {
        Self { pool, outbox }
    }

    /// Commits the transition, then publishes it. Records how long each half took
    /// in `herald_transition_seconds{action, phase="commit"|"publish"}` (seconds),
    /// so a slow answer can be traced to Postgres (row lock, commit) or to NATS.
    pub async fn apply(&self, request: TransitionRequest) -> Result<Transitioned, TransitionError> {
        let started = Instant::now();
        let done = commit_transition(&self.pool, &request).await?;
        let committed = Instant::now();
        let action = request.action.as_str();
        metrics::counter!("herald_transitions_total", "action" => action).increment(1);
        // The transition is committed; publishing is best effort here and the relay
        // guarantees delivery, so a NATS outage never fails the caller.
        self.outbox.publish_fast(done.campaign.id).await;
        let published = Instant::now();
        if crate::halt::halt_reason(request.action).is_some() {
            self.spawn_halt_pass(done.campaign.id);
        }
        metrics::histogram!("herald_transition_seconds", "action" => action, "phase" => "commit")
            .record(committed - started);
        metrics::histogram!("herald_transition_seconds", "action" => action, "phase" => "publish")
            .record(published - committed);
        tracing::debug!(
            campaign_id = %done.campaign.id,
            action,
            commit_ms = (committed - started).as_secs_f64() * 1e3,
            publish_ms = (published - committed).as_secs_f64() * 1e3,
            "transition applied"
        );
        Ok(done)
    }
}

impl Lifecycle {
    /// Skips a halted campaign's open rows in the background, so the stop
    /// answers at once whatever the campaign's size ([`crate::halt`]). If this
    /// process dies first, the packer's sweep finishes the pass.
    fn spawn_halt_pass(&self, campaign: Uuid) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            match crate::halt::skip_open_recipients(&pool, campaign).await {
                Ok(skipped) => tracing::info!(campaign_id = %campaign, skipped, "halt pass done"),
                Err(error) => {
                    tracing::warn!(campaign_id = %campaign, %error, "halt pass failed; the sweep will finish it")
                }
            }
        });
    }
}

/// Completes the campaign if every recipient of a fully packed epoch is terminal.
/// Safe to call from any replica at any time: the transition re-checks the ledger
/// under the row lock, so completion happens once, and never to a paused or
/// stopped campaign. Returns true if this call completed it.
pub async fn complete_if_done(
    lifecycle: &Lifecycle,
    campaign_id: Uuid,
    component: &str,
) -> Result<bool, sqlx::Error> {
    let request = TransitionRequest {
        campaign_id,
        tenant_id: None,
        action: Action::Complete,
        expected_version: None,
        scheduled_at: None,
        actor: Actor::system(component),
        detail: None,
    };
    match lifecycle.apply(request).await {
        Ok(_) => {
            tracing::info!(%campaign_id, "campaign completed");
            Ok(true)
        }
        Err(TransitionError::Database(e)) => Err(e),
        Err(_) => Ok(false),
    }
}
