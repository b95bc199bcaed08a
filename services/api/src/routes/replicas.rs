//! `GET /v1/replicas`: the live packer and sender replicas (`crate::replicas`)
//! with their control lag.

use std::time::Duration;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ApiResult;
use crate::extract::AuthTenant;
use crate::state::AppState;

/// One live replica.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaView {
    /// `packer` or `sender`.
    pub service: String,
    pub replica_id: String,
    pub started_at: DateTime<Utc>,
    /// When this api last received its heartbeat (one a second).
    pub last_seen: DateTime<Utc>,
    /// False: the replica does not listen to control messages; it pauses on
    /// its status TTL and never acks (listed `missing` by a `wait`).
    pub control_fast_path: bool,
    /// The highest control stream sequence it has applied; null before its
    /// control consumer exists.
    pub control_applied_seq: Option<u64>,
    /// Control messages stored after the last one it applied: the control
    /// stream's last sequence minus `control_applied_seq`, 0 when caught up.
    /// Null when unknown (fast path off, no consumer yet, stream unreadable).
    pub control_lag: Option<u64>,
    /// When it last applied a control message; null if it applied none.
    pub last_control_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaList {
    /// The control stream's last sequence, the reference of `control_lag`;
    /// null when JetStream did not answer.
    pub control_last_seq: Option<u64>,
    /// Replicas heard from within the last 3 s, by service then replica id.
    pub items: Vec<ReplicaView>,
}

/// The control stream's last sequence, or `None` if JetStream does not answer
/// within a second.
async fn control_last_seq(state: &AppState) -> Option<u64> {
    let stream = state.bus.js.get_stream(&state.bus.streams.control);
    match tokio::time::timeout(Duration::from_secs(1), stream).await {
        Ok(Ok(stream)) => Some(stream.cached_info().state.last_sequence),
        _ => None,
    }
}

#[utoipa::path(get, path = "/v1/replicas",
    responses((status = 200, description = "The live packer and sender replicas of the installation (any tenant's token may read it)", body = ReplicaList)),
    security(("bearer" = [])), tag = "replicas")]
pub async fn list_replicas(
    State(state): State<AppState>,
    _auth: AuthTenant,
) -> ApiResult<axum::Json<ReplicaList>> {
    let live = state.replicas.live();
    let last = control_last_seq(&state).await;
    let items = live
        .into_iter()
        .map(|seen| {
            let beat = seen.beat;
            let control_lag = match (beat.control_fast_path, beat.control_applied_seq, last) {
                (true, Some(applied), Some(last)) => Some(last.saturating_sub(applied)),
                _ => None,
            };
            ReplicaView {
                service: beat.service,
                replica_id: beat.replica_id,
                started_at: beat.started_at,
                last_seen: seen.last_seen,
                control_fast_path: beat.control_fast_path,
                control_applied_seq: beat.control_applied_seq,
                control_lag,
                last_control_at: beat.last_control_at,
            }
        })
        .collect();
    Ok(axum::Json(ReplicaList {
        control_last_seq: last,
        items,
    }))
}
