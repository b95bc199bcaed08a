//! HTTP handlers, one module per resource.

pub mod campaigns;
pub mod health;
pub mod progress;
pub mod recipients;
