//! `attempts` counts every provider request ever made for a recipient, and
//! `HERALD_MAX_ATTEMPTS` bounds the total across pauses and resumes: a pause
//! mid-retry records the requests made so far, and the resume gets only what is
//! left.
//!
//! Run with `cargo test -p herald --test attempts_across_runs`.

use std::time::{Duration, Instant};

use herald_core::lifecycle::Status;
use herald_sender::SenderConfig;
use herald_testkit::*;
use sqlx::PgPool;
use uuid::Uuid;

/// (status, attempts) of the campaign's one recipient.
async fn the_row(pool: &PgPool, campaign: Uuid) -> (String, i32) {
    sqlx::query_as("SELECT status, attempts FROM recipients WHERE campaign_id = $1")
        .bind(campaign)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn with_a_provider_that_always_answers_503_three_pauses_mid_retry_leave_the_requests_equal_to_the_ledger_attempts_and_at_most_the_maximum()
 {
    // The handed case: one recipient, a provider that always answers 503, four
    // attempts at most, and pauses and resumes while it retries. Backoff starts
    // at 400 ms, so each pause lands between two attempts.
    let provider = ProviderDouble::scripted(Duration::ZERO, |_| Reply::Status(503)).await;
    let max_attempts = 4;
    let sender = SenderConfig {
        max_attempts,
        retry_base_ms: 400,
        retry_max_ms: 2_000,
        ..test_sender_config()
    };
    let stack = Stack::start(1, 1, sender).await;
    let pool = stack.env.pool();
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 1).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);

    let mut cycles = 0;
    while cycles < 3 {
        let seen = provider.request_count();
        let body = stack.campaign(id).await;
        if body["status"] == "completed" {
            break;
        }
        // Wait for this run's next request, then pause while it backs off.
        wait_for("the next request", async || {
            (provider.request_count() > seen).then_some(())
        })
        .await;
        let (status, body) = stack.transition(id, "pause").await;
        if status == 409 {
            break; // it ran out of attempts first
        }
        assert_eq!(status, 200, "{body}");
        // The release records this run's requests on the row.
        let attempts = wait_for("the release", async || {
            let (status, attempts) = the_row(&pool, id).await;
            (status != "sending").then_some(attempts)
        })
        .await;
        assert_eq!(
            attempts as usize,
            provider.request_count(),
            "after pause {cycles}, the ledger counts every request made"
        );
        cycles += 1;
        assert_eq!(stack.transition(id, "resume").await.0, 200);
    }
    assert!(cycles > 0, "no pause landed during the retries");

    stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(30))
        .await;
    let (status, attempts) = the_row(&pool, id).await;
    assert_eq!(status, "failed");
    assert_eq!(
        provider.request_count(),
        attempts as usize,
        "requests made == ledger attempts"
    );
    assert_eq!(
        attempts, max_attempts as i32,
        "HERALD_MAX_ATTEMPTS bounds the total across {cycles} pauses"
    );
    let (reason, last_error): (String, String) =
        sqlx::query_as("SELECT reason, last_error FROM recipients WHERE campaign_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(reason, "retries_exhausted");
    assert!(
        last_error.contains("gave up after 4 attempts") && last_error.contains("503"),
        "{last_error}"
    );
    let body = assert_every_fate_accounted(&stack.client, &pool, id).await;
    assert_eq!(body["reasons"], serde_json::json!({"retries_exhausted": 1}));
    eprintln!("{cycles} pauses mid-retry, {attempts} requests in all");
    stack.stop().await;
}
