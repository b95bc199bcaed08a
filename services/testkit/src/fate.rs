//! Invariant 11 as a test helper: every recipient of a campaign in a terminal
//! state is accounted for, and every failed or skipped one is explained.
//!
//! Call [`assert_every_fate_accounted`] at the end of every test whose campaign
//! ends stopped, completed or failed.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_core::reason::Reason;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ApiClient;

/// How long a stopped campaign's in-flight rows may take to settle (their
/// senders mark or release them; a dead sender's rows wait for the sweep).
const SETTLE: Duration = Duration::from_secs(60);

/// The ledger's reason codes of a campaign: (status, reason) -> rows, over every
/// row with a reason or in a failed or skipped state.
async fn ledger_reasons(pool: &PgPool, campaign: Uuid) -> Vec<(String, Option<String>, i64)> {
    sqlx::query_as(
        "SELECT status, reason, count(*) FROM recipients
         WHERE campaign_id = $1 AND (reason IS NOT NULL OR status IN ('failed', 'skipped'))
         GROUP BY status, reason ORDER BY status, reason",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await
    .expect("ledger reasons")
}

/// Failed or skipped rows without a human `last_error` beside their reason.
async fn unexplained(pool: &PgPool, campaign: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM recipients WHERE campaign_id = $1
           AND status IN ('failed', 'skipped') AND coalesce(last_error, '') = ''",
    )
    .bind(campaign)
    .fetch_one(pool)
    .await
    .expect("ledger query")
}

fn open_count(body: &Value) -> i64 {
    let counters = &body["counters"];
    counters["pending"].as_i64().unwrap_or(-1) + counters["sending"].as_i64().unwrap_or(-1)
}

/// Asserts invariant 11 for `campaign`, which must be in (or reaching) a
/// terminal state: waits up to a minute for rows still in flight to settle,
/// then checks that
/// - the status is stopped, completed or failed;
/// - `sent + failed + skipped == total` in the counters, and in the ledger,
///   which has no pending or sending row left;
/// - the counters equal the ledger;
/// - every failed or skipped row has a known reason code and a `last_error`,
///   and no other row has a reason;
/// - `reasons` on the campaign equals the ledger's counts by reason.
///
/// Returns the campaign body it checked.
pub async fn assert_every_fate_accounted(
    client: &ApiClient,
    pool: &PgPool,
    campaign: Uuid,
) -> Value {
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut body = client.campaign(campaign).await;
    while open_count(&body) != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        body = client.campaign(campaign).await;
    }
    let status = body["status"].as_str().unwrap_or_default();
    assert!(
        ["stopped", "completed", "failed"].contains(&status),
        "the campaign is not in a terminal state: {body}"
    );
    crate::assert_counters_match_ledger(pool, campaign, &body).await;
    let counters = &body["counters"];
    let count = |name: &str| counters[name].as_i64().unwrap_or(-1);
    assert_eq!(
        count("sent") + count("failed") + count("skipped"),
        count("total"),
        "sent + failed + skipped == total: {body}"
    );
    let ledger = ledger_reasons(pool, campaign).await;
    let mut by_reason: BTreeMap<String, i64> = BTreeMap::new();
    for (row_status, reason, rows) in &ledger {
        let Some(reason) = reason else {
            panic!("{rows} {row_status} rows have no reason code: {ledger:?}");
        };
        assert!(
            reason.parse::<Reason>().is_ok(),
            "{rows} rows have an unknown reason code {reason:?}"
        );
        assert!(
            row_status == "failed" || row_status == "skipped",
            "{rows} {row_status} rows carry reason {reason:?}: {ledger:?}"
        );
        *by_reason.entry(reason.clone()).or_default() += rows;
    }
    assert_eq!(
        unexplained(pool, campaign).await,
        0,
        "a failed or skipped row has no last_error"
    );
    let reported: BTreeMap<String, i64> = body["reasons"]
        .as_object()
        .unwrap_or_else(|| panic!("the campaign has no reasons object: {body}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(reported, by_reason, "reasons equal the ledger's: {body}");
    body
}
