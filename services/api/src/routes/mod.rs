//! HTTP handlers, one module per resource.

pub mod ab;
pub mod campaigns;
pub mod channels;
pub mod common;
pub mod duplicate;
pub mod health;
pub mod lifecycle;
pub mod progress;
pub mod receipts;
pub mod receipts_token;
pub mod recipients;
pub mod replicas;
pub mod retry;
pub mod suppression_import;
pub mod suppressions;
