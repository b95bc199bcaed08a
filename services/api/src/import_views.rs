//! Request and response bodies of the recipient import (and the rejected row
//! of a suppression list upload), re-exported by [`crate::views`].

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipientInput {
    pub address: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub variables: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipientImport {
    pub recipients: Vec<RecipientInput>,
}

/// Why an import rejected a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Empty, too long, control characters, or not of the channel's pinned
    /// `address_kind`.
    InvalidAddress,
    /// `variables` is not a JSON object, or holds a NUL character.
    InvalidVariables,
    /// A CSV row that cannot be read: wrong number of fields, not UTF-8.
    MalformedRow,
    /// The campaign's template is strict and the row lacks a variable it uses.
    TemplateError,
}

/// A row a recipient import rejected.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RejectedRecipient {
    /// 1-based data row (CSV: not counting the header line).
    pub row: u64,
    /// Machine-readable: why the row was rejected.
    pub reason: RejectReason,
    /// Human-readable: what is wrong with the row.
    pub message: String,
}

/// A row a suppression list upload rejected (`reason` is a human message).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RejectedRow {
    /// 1-based data row (CSV: not counting the header line).
    pub row: u64,
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportResult {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// The first 1,000 rejected rows with their reasons.
    pub rejected_rows: Vec<RejectedRecipient>,
}
