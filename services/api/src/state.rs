//! Shared state of the HTTP handlers.

use herald_core::bus::Bus;
use herald_core::transitions::Lifecycle;
use sqlx::PgPool;

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub bus: Bus,
    pub lifecycle: Lifecycle,
    pub limits: Limits,
}

/// Request size limits (413 above them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub json_body_bytes: usize,
    pub import_body_bytes: usize,
}
