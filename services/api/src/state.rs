//! Shared state of the HTTP handlers.

use herald_core::bus::Bus;
use herald_core::transitions::Lifecycle;
use sqlx::PgPool;

use crate::routes::progress::ProgressHub;

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub bus: Bus,
    pub lifecycle: Lifecycle,
    pub limits: Limits,
    /// Fans bus messages out to `GET /v1/campaigns/{id}/progress` streams.
    pub progress: ProgressHub,
}

/// Request size limits (413 above them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub json_body_bytes: usize,
    pub import_body_bytes: usize,
}
