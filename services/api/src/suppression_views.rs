//! Request and response bodies of the suppression list endpoints
//! (`/v1/suppressions`), as they appear in the OpenAPI document.

use chrono::{DateTime, Utc};
use herald_core::suppressions::SuppressionRow;
use serde::{Deserialize, Serialize};

use crate::views::RejectedRow;

/// One address to suppress.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuppressionInput {
    /// The address as written: stored trimmed, e-mail addresses lower-cased,
    /// `+` phone numbers without spaces, dashes, dots or parentheses. At most
    /// 320 bytes once normalised.
    #[schema(example = "+1 555 000 1234")]
    pub address: String,
    /// Why (free text, at most 200 characters, no control characters);
    /// `opted_out` when absent, null or blank.
    #[serde(default)]
    #[schema(example = "opted_out")]
    pub reason: Option<String>,
}

/// `POST /v1/suppressions` as JSON.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuppressionImport {
    /// At most 100,000 entries (413 above; send larger lists as `text/csv`).
    pub entries: Vec<SuppressionInput>,
}

/// What `POST /v1/suppressions` did.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuppressionResult {
    /// Entries new to the list.
    pub added: u64,
    /// Entries whose address was on the list already, or earlier in the same
    /// request; the stored entry is left as it was.
    pub already_present: u64,
    /// Entries refused (empty, too long, control characters, bad reason).
    pub rejected: u64,
    /// The first 1,000 rejected entries: `row` is the 1-based entry (CSV: data
    /// line, not counting the header).
    pub rejected_rows: Vec<RejectedRow>,
}

/// One entry of a tenant's suppression list.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuppressionView {
    /// The normalised address.
    pub address: String,
    pub reason: String,
    /// `api` (added through this API) or `receipt` (an inbound opt-out).
    pub source: String,
    pub created_at: DateTime<Utc>,
}

impl From<SuppressionRow> for SuppressionView {
    fn from(row: SuppressionRow) -> Self {
        Self {
            address: row.address,
            reason: row.reason,
            source: row.source,
            created_at: row.created_at,
        }
    }
}

/// One page of a suppression list, in address order.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuppressionPage {
    pub items: Vec<SuppressionView>,
    /// Pass as `cursor` to get the next page; null on the last page. Opaque
    /// (URL-safe base64).
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SuppressionQuery {
    /// Only this address (normalised as on import, then matched exactly).
    pub address: Option<String>,
    /// Opaque: the `next_cursor` of the previous page, passed back unchanged
    /// (URL-safe base64 without padding); anything else is a 422.
    #[param(pattern = "^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
    /// 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}
