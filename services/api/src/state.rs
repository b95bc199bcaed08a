//! Shared state of the HTTP handlers.

use herald_core::bus::Bus;
use herald_core::transitions::Lifecycle;
use sqlx::PgPool;

use crate::receipt_tokens::ReceiptTokens;
use crate::receipt_writer::ReceiptWriter;
use crate::routes::progress::ProgressHub;

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub bus: Bus,
    pub lifecycle: Lifecycle,
    pub limits: Limits,
    /// Fans bus messages out to `GET /v1/campaigns/{id}/progress` streams.
    pub progress: ProgressHub,
    /// The live packer and sender replicas (`GET /v1/replicas`, acknowledged pauses).
    pub replicas: crate::replicas::ReplicaTable,
    /// Applies delivery receipts in batches (`POST /v1/receipts/...`).
    pub receipts: ReceiptWriter,
    /// Channels' receipts tokens, cached briefly (`crate::receipt_tokens`).
    pub receipt_tokens: ReceiptTokens,
    /// Where providers reach this API, without a trailing slash: the base of
    /// every `receipts_url` (`HERALD_PUBLIC_URL`; `http://<listen address>`
    /// when unset).
    pub public_url: std::sync::Arc<str>,
}

impl AppState {
    /// The receipts URL of a channel: `{public_url}/v1/receipts/{id}/{token}`.
    pub fn receipts_url(&self, channel_id: uuid::Uuid, token: &str) -> String {
        format!("{}/v1/receipts/{channel_id}/{token}", self.public_url)
    }
}

/// Request size limits (413 above them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub json_body_bytes: usize,
    pub import_body_bytes: usize,
}
