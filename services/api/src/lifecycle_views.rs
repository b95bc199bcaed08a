//! Request and response bodies of the lifecycle endpoints (transitions, bulk
//! transitions, the event history), re-exported by [`crate::views`].

use chrono::{DateTime, Utc};
use herald_core::lifecycle::Status;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `{action}` of `POST /v1/campaigns/{id}/{action}` (documentation only: the
/// handler reads the path as text, so an unknown action is a JSON 404).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransitionAction {
    Schedule,
    Unschedule,
    Start,
    Pause,
    Resume,
    Stop,
}

/// The `{action}` of `POST /v1/campaigns/bulk/{action}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BulkAction {
    Pause,
    Resume,
    Stop,
}

/// The optional body of a transition; only `schedule` reads `scheduled_at`. An
/// empty body and `null` are the same as `{}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// RFC 3339 with an offset (`Z` for UTC).
    #[serde(default, deserialize_with = "crate::timestamps::scheduled_at")]
    pub scheduled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// Up to 1,000 campaign ids.
    #[schema(min_items = 1, max_items = 1000)]
    pub ids: Vec<Uuid>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BulkResult {
    pub id: Uuid,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BulkResponse {
    pub results: Vec<BulkResult>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: Uuid,
    pub seq: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub actor: String,
    pub correlation_id: Uuid,
    pub request_correlation_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventList {
    pub items: Vec<EventView>,
}
