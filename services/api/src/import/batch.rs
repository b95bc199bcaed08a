//! Rows on their way to the ledger: queued as read, checked and written in
//! chunks of [`IMPORT_CHUNK`], with the running tallies of the import.

use std::sync::Arc;

use sqlx::Row as _;
use uuid::Uuid;

use super::rules::{ImportRules, Rejection, Row};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::{ImportResult, RejectReason, RejectedRecipient};

/// Rows per check and write: one statement, one lock of the campaign row.
pub const IMPORT_CHUNK: usize = 2_000;
/// Rejected rows listed in the answer, at most (all are counted).
const MAX_REPORTED_REJECTIONS: usize = 1_000;

/// One chunk's columns, as the insert binds them.
#[derive(Debug, Default)]
struct Chunk {
    addresses: Vec<String>,
    inputs: Vec<Option<String>>,
    kinds: Vec<&'static str>,
    variables: Vec<serde_json::Value>,
    variants: Vec<Option<String>>,
    cohorts: Vec<Option<&'static str>>,
}

/// A row as read, in file order: to be checked, or already rejected by the
/// reader (kept in line so the rejected rows are listed in row order).
#[derive(Debug)]
enum Pending {
    Row {
        row: u64,
        address: String,
        variables: serde_json::Value,
    },
    Rejected(RejectedRecipient),
}

/// Checks the pending rows against `rules`: the chunk to insert, and every
/// rejection (the reader's and the rules'), in row order.
fn check_chunk(rules: &ImportRules, pending: Vec<Pending>) -> (Chunk, Vec<RejectedRecipient>) {
    let mut chunk = Chunk::default();
    let mut rejected = Vec::new();
    for item in pending {
        match item {
            Pending::Rejected(row) => rejected.push(row),
            Pending::Row {
                row,
                address,
                variables,
            } => match rules.check(&address, variables) {
                Ok(Row {
                    address,
                    input,
                    kind,
                    variables,
                    variant,
                    cohort,
                }) => {
                    chunk.addresses.push(address);
                    chunk.inputs.push(input);
                    chunk.kinds.push(kind.as_str());
                    chunk.variables.push(variables);
                    chunk.variants.push(variant);
                    chunk.cohorts.push(cohort);
                }
                Err(Rejection { reason, message }) => rejected.push(RejectedRecipient {
                    row,
                    reason,
                    message,
                }),
            },
        }
    }
    (chunk, rejected)
}

/// Rows waiting to be checked and written, the rules they are checked
/// against, and the running tallies.
#[derive(Debug)]
pub struct ImportBatch {
    campaign: Uuid,
    rules: Arc<ImportRules>,
    pending: Vec<Pending>,
    pub result: ImportResult,
}

impl ImportBatch {
    pub fn new(campaign: Uuid, rules: ImportRules) -> Self {
        Self {
            campaign,
            rules: Arc::new(rules),
            pending: Vec::new(),
            result: ImportResult::default(),
        }
    }

    /// The top-level variables of the campaign's template.
    pub fn template_variables(&self) -> &[String] {
        &self.rules.template_variables
    }

    /// Rejects row number `row` (a reader's verdict: malformed, not UTF-8),
    /// in line with the rows queued before it.
    pub async fn reject(
        &mut self,
        state: &AppState,
        row: u64,
        reason: RejectReason,
        message: impl Into<String>,
    ) -> ApiResult<()> {
        self.queue(
            state,
            Pending::Rejected(RejectedRecipient {
                row,
                reason,
                message: message.into(),
            }),
        )
        .await
    }

    /// Counts a rejected row, and lists it while the list is short enough.
    fn record_rejection(&mut self, rejected: RejectedRecipient) {
        self.result.rejected += 1;
        if self.result.rejected_rows.len() < MAX_REPORTED_REJECTIONS {
            self.result.rejected_rows.push(rejected);
        }
    }

    /// Checks the rows waiting and writes those that pass; 409
    /// `not_importable` when the campaign left draft/scheduled meanwhile.
    ///
    /// The checks run on the blocking pool: validating a phone number costs
    /// 10-25 µs (release build), so a chunk of them would hold a runtime
    /// thread for tens of milliseconds, delaying other requests (a pause).
    pub async fn flush(&mut self, state: &AppState) -> ApiResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let rules = self.rules.clone();
        let (chunk, rejected) = tokio::task::spawn_blocking(move || check_chunk(&rules, pending))
            .await
            .map_err(|error| {
                tracing::error!(%error, "checking an import chunk failed");
                ApiError::internal()
            })?;
        for row in rejected {
            self.record_rejection(row);
        }
        if chunk.addresses.is_empty() {
            return Ok(());
        }
        let submitted = chunk.addresses.len() as u64;
        let (open, inserted) = insert_chunk(state, self.campaign, &chunk).await?;
        if !open {
            return Err(ApiError::conflict(
                "not_importable",
                format!(
                    "the campaign left draft/scheduled during the import; {} rows were imported before that",
                    self.result.accepted
                ),
            ));
        }
        self.result.accepted += inserted;
        self.result.duplicates += submitted - inserted;
        Ok(())
    }

    /// Queues row number `row` and checks and writes the chunk once it is full.
    pub async fn push_and_maybe_flush(
        &mut self,
        state: &AppState,
        row: u64,
        address: &str,
        variables: serde_json::Value,
    ) -> ApiResult<()> {
        let pending = Pending::Row {
            row,
            address: address.to_owned(),
            variables,
        };
        self.queue(state, pending).await
    }

    /// Queues a row, and checks and writes the chunk once it is full (rejected
    /// rows count too, so a file of bad rows is not held in memory).
    async fn queue(&mut self, state: &AppState, pending: Pending) -> ApiResult<()> {
        self.pending.push(pending);
        if self.pending.len() >= IMPORT_CHUNK {
            self.flush(state).await?;
        }
        Ok(())
    }
}

/// Inserts one chunk, skipping addresses already present (exactly, or as an
/// e-mail address in another case: migrations/0006_address_normalisation.sql),
/// and bumps the counters (an A/B campaign's per variant too, in shard 0), all
/// only while the campaign is still importable. Returns (still open, inserted).
async fn insert_chunk(
    state: &AppState,
    campaign: Uuid,
    chunk: &Chunk,
) -> Result<(bool, u64), sqlx::Error> {
    let row = sqlx::query(
        "WITH camp AS (
             SELECT id FROM campaigns WHERE id = $1 AND status IN ('draft', 'scheduled') FOR NO KEY UPDATE
         ), ins AS (
             INSERT INTO recipients (campaign_id, address, variables, address_input, address_kind,
                                     variant, ab_cohort)
             SELECT $1, a, v, i, k, va, co
             FROM unnest($2::text[], $3::jsonb[], $4::text[], $5::text[], $6::text[], $7::text[])
                  WITH ORDINALITY AS u(a, v, i, k, va, co, n)
             WHERE EXISTS (SELECT 1 FROM camp) ORDER BY n
             ON CONFLICT DO NOTHING
             RETURNING variant, ab_cohort
         ), by_variant AS (
             INSERT INTO campaign_variant_counts AS vc
                 (campaign_id, shard, variant, recipients, test_recipients, test_open)
             SELECT $1, 0, variant, count(*), count(*) FILTER (WHERE ab_cohort = 'test'),
                    count(*) FILTER (WHERE ab_cohort = 'test')
             FROM ins WHERE variant IS NOT NULL GROUP BY variant ORDER BY variant
             ON CONFLICT (campaign_id, shard, variant) DO UPDATE SET
                 recipients = vc.recipients + excluded.recipients,
                 test_recipients = vc.test_recipients + excluded.test_recipients,
                 test_open = vc.test_open + excluded.test_open
         ), bump AS (
             UPDATE campaigns SET total_count = total_count + (SELECT count(*) FROM ins),
                                  pending_count = pending_count + (SELECT count(*) FROM ins),
                                  updated_at = now()
             WHERE id IN (SELECT id FROM camp)
         )
         SELECT EXISTS (SELECT 1 FROM camp) AS open, (SELECT count(*) FROM ins) AS inserted",
    )
    .bind(campaign)
    .bind(&chunk.addresses)
    .bind(&chunk.variables)
    .bind(&chunk.inputs)
    .bind(&chunk.kinds)
    .bind(&chunk.variants)
    .bind(&chunk.cohorts)
    .fetch_one(&state.pool)
    .await?;
    Ok((
        row.try_get("open")?,
        row.try_get::<i64, _>("inserted")? as u64,
    ))
}
