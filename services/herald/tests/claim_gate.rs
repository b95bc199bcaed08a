//! The claim gate (invariant 5): a pause waits only for the claims already
//! running, a claim that comes while the pause waits queues behind it and then
//! claims nothing, and a claim that stalls halfway holds the pause up for
//! seconds, not until it runs again. Real Postgres; the tests drive the ledger
//! themselves.
//!
//! Run with `cargo test -p herald --test claim_gate`.

use std::time::Duration;

use herald_core::contracts::SendBatch;
use herald_sender::ledger::{claim_batch, claim_batch_in};
use herald_testkit::{Stack, test_sender_config};
use serde_json::json;
use uuid::Uuid;

/// Recipients `first..=last` of the campaign's first run.
fn batch(campaign: Uuid, first: i64, last: i64) -> SendBatch {
    SendBatch {
        campaign_id: campaign,
        run_epoch: 1,
        first_recipient_id: first,
        last_recipient_id: last,
        recipient_count: last - first + 1,
        correlation_id: Uuid::new_v4(),
    }
}

/// A started campaign of `recipients` rows on a stack with no packer and no
/// sender, and its lowest and highest recipient ids.
async fn sending_without_workers(recipients: usize) -> (Stack, Uuid, (i64, i64)) {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    stack.import(id, recipients).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let ids = sqlx::query_as("SELECT min(id), max(id) FROM recipients WHERE campaign_id = $1")
        .bind(id)
        .fetch_one(&stack.env.pool())
        .await
        .unwrap();
    (stack, id, ids)
}

/// A claim of `batch` in a transaction left open, as a sender holds it between
/// its claim statement and its commit; and how many rows it took.
async fn open_claim(
    pool: &sqlx::PgPool,
    batch: &SendBatch,
) -> (sqlx::Transaction<'static, sqlx::Postgres>, usize) {
    let mut tx = pool.begin().await.unwrap();
    let claimed = claim_batch_in(&mut tx, batch, Uuid::new_v4(), 30.0, i64::MAX)
        .await
        .unwrap();
    (tx, claimed.rows.len())
}

#[tokio::test]
async fn a_pause_waits_for_the_claim_in_progress_and_a_later_claim_waits_for_the_pause_and_claims_nothing()
 {
    let (stack, id, (lowest, highest)) = sending_without_workers(200).await;
    let pool = stack.env.pool();
    let middle = (lowest + highest) / 2;

    // A claim of the first half, not yet committed.
    let (running, taken) = open_claim(&pool, &batch(id, lowest, middle)).await;
    assert_eq!(taken as i64, middle - lowest + 1);

    // The pause waits for it.
    let pause = tokio::spawn({
        let client = stack.client.clone();
        async move { client.transition(id, "pause").await.0 }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pause.is_finished(),
        "the pause must wait for the claim in progress"
    );

    // A claim of the other half arrives while the pause waits. Under a row lock it
    // would pass the waiting pause (share locks do not queue) and claim its rows.
    let later = tokio::spawn({
        let (pool, batch) = (pool.clone(), batch(id, middle + 1, highest));
        async move {
            claim_batch(&pool, &batch, Uuid::new_v4(), 30.0, i64::MAX)
                .await
                .map(|c| c.rows)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !later.is_finished(),
        "a claim that comes while a pause waits must queue behind the pause"
    );

    running.commit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), pause)
        .await
        .expect("the pause answers once the claim in progress commits")
        .unwrap();
    assert_eq!(status, 200);
    let claimed_after = tokio::time::timeout(Duration::from_secs(30), later)
        .await
        .expect("the later claim returns once the pause commits")
        .unwrap()
        .unwrap();
    assert!(
        claimed_after.is_empty(),
        "{} rows were claimed after the pause committed",
        claimed_after.len()
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_claim_that_stalls_before_it_commits_holds_a_pause_up_for_seconds_not_until_it_runs_again()
 {
    let (stack, id, (lowest, highest)) = sending_without_workers(20).await;
    let pool = stack.env.pool();

    // A sender took the gate and claimed, then stopped before its commit.
    let (stalled, taken) = open_claim(&pool, &batch(id, lowest, highest)).await;
    assert_eq!(taken, 20);

    // Postgres ends the idle claim after CLAIM_IDLE_LIMIT_MS, and the pause goes
    // through; the test's own limit is far longer, the claim stays open forever.
    let limit = Duration::from_millis(herald_core::claim_gate::CLAIM_IDLE_LIMIT_MS.into());
    let paused = tokio::time::timeout(limit * 6, stack.transition(id, "pause"))
        .await
        .expect("the pause waited on the stalled claim's gate");
    assert_eq!(paused.0, 200, "{}", paused.1);
    assert!(
        stalled.commit().await.is_err(),
        "the stalled claim committed after the pause"
    );
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recipients WHERE campaign_id = $1 AND status = 'pending'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pending, 20, "the stalled claim's rows stay unclaimed");
    stack.stop().await;
}
