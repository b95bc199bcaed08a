//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use std::time::Duration;

use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub status: &'static str,
    pub postgres: &'static str,
    pub nats: &'static str,
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is up", body = Health)), tag = "health")]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn postgres_ready(state: &AppState) -> bool {
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(1))
    )
}

async fn jetstream_ready(state: &AppState) -> bool {
    if !state.bus.is_connected() {
        return false;
    }
    let info = state.bus.js.get_stream(&state.bus.streams.events);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), info).await,
        Ok(Ok(_))
    )
}

#[utoipa::path(get, path = "/readyz",
    responses((status = 200, description = "Postgres and JetStream answer", body = Readiness),
               (status = 503, description = "Postgres or JetStream is down; the body names which", body = Readiness)), tag = "health")]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (pg, nats) = tokio::join!(postgres_ready(&state), jetstream_ready(&state));
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let status = if pg && nats {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if pg && nats { "ready" } else { "not_ready" },
            postgres: word(pg),
            nats: word(nats),
        }),
    )
}
