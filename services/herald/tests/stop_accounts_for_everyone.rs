//! A stop accounts for every recipient (invariant 11): what was not sent or
//! failed becomes `skipped` with reason `campaign_stopped`, whether the stop
//! found it pending, a sender released it afterwards, or its sender died and the
//! sweep found its expired lease.
//!
//! Run with `cargo test -p herald --test stop_accounts_for_everyone`.

use std::time::{Duration, Instant};

use herald_sender::SenderConfig;
use herald_sender::ledger::{RecipientOutcome, Unsent, claim_batch, mark_outcomes, release_claims};
use herald_testkit::*;
use serde_json::json;
use uuid::Uuid;

/// A schema-valid send batch whose id range covers the whole campaign.
fn whole_campaign(campaign: Uuid, declared: i64) -> herald_core::contracts::SendBatch {
    herald_core::contracts::SendBatch {
        campaign_id: campaign,
        run_epoch: 1,
        first_recipient_id: 0,
        last_recipient_id: i64::MAX,
        recipient_count: declared,
        correlation_id: Uuid::new_v4(),
    }
}

/// A started campaign of `recipients` rows on a stack with no packer and no
/// sender: the test drives the ledger itself.
async fn sending_without_workers(recipients: usize) -> (Stack, Uuid) {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    stack.import(id, recipients).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    (stack, id)
}

/// The campaign once its stop's pass has run: nothing pending any more.
async fn settled(stack: &Stack, campaign: Uuid) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = stack.campaign(campaign).await;
        if body["counters"]["pending"] == 0 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the stop's pass never ran: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rows with the given status and reason.
async fn rows_with(pool: &sqlx::PgPool, campaign: Uuid, status: &str, reason: Option<&str>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM recipients WHERE campaign_id = $1 AND status = $2
           AND reason IS NOT DISTINCT FROM $3",
    )
    .bind(campaign)
    .bind(status)
    .bind(reason)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_stop_mid_campaign_skips_everyone_unsent_with_reason_campaign_stopped_including_rows_senders_release_after_it()
 {
    // Two senders hold four batches of 200 rows each but send two at a time to
    // a slow provider: at the stop, most claimed rows are still waiting for a
    // dispatch slot, and only their senders can give them back.
    let provider = ProviderDouble::start(Duration::from_millis(100)).await;
    let sender = SenderConfig {
        concurrency: 2,
        ..test_sender_config()
    };
    let stack = Stack::start(1, 2, sender).await;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 3_000).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while provider.request_count() < 10 {
        assert!(Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, stopped) = stack.transition(id, "stop").await;
    assert_eq!(status, 200, "{stopped}");
    assert!(
        stopped["counters"]["sending"].as_i64() > Some(0),
        "no row was held by a sender at the stop: {stopped}"
    );

    let pool = stack.env.pool();
    let body = assert_every_fate_accounted(&stack.client, &pool, id).await;
    let skipped = body["counters"]["skipped"].as_i64().unwrap();
    assert!(skipped > 2_000, "{body}");
    assert_eq!(body["counters"]["failed"], 0, "{body}");
    assert_eq!(body["reasons"], json!({"campaign_stopped": skipped}));
    assert_eq!(
        rows_with(&pool, id, "skipped", Some("campaign_stopped")).await,
        skipped
    );
    // Claimed rows (claimed_at is set) skipped after the stop: their senders
    // released them into the stopped campaign.
    let released_after_stop: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recipients WHERE campaign_id = $1 AND status = 'skipped'
           AND claimed_at IS NOT NULL",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        released_after_stop > 0,
        "no row was released by a sender after the stop"
    );
    assert_eq!(
        provider.per_key().len() as i64,
        body["counters"]["sent"].as_i64().unwrap(),
        "every request the provider saw is a sent row"
    );
    stack.stop().await;
}

#[tokio::test]
async fn rows_a_sender_releases_after_the_stop_are_skipped_with_their_attempts_not_put_back_to_pending()
 {
    let (stack, id) = sending_without_workers(30).await;
    let pool = stack.env.pool();
    // A sender holds ten rows under a live lease when the stop commits.
    let token = Uuid::new_v4();
    let claimed = claim_batch(&pool, &whole_campaign(id, 5), token, 30.0, i64::MAX)
        .await
        .unwrap()
        .rows;
    assert_eq!(claimed.len(), 10);
    let (status, stopped) = stack.transition(id, "stop").await;
    assert_eq!(status, 200, "{stopped}");
    // The stop's pass skips what nobody held, and leaves the sender's rows alone.
    let stopped = settled(&stack, id).await;
    assert_eq!(stopped["counters"]["skipped"], 20, "{stopped}");
    assert_eq!(stopped["counters"]["sending"], 10, "{stopped}");

    // The sender learns of the stop: five of its rows went out, five are given
    // back, one of them after a failed attempt.
    let sent: Vec<RecipientOutcome> = claimed[..5]
        .iter()
        .map(|r| RecipientOutcome::sent(r.id, None, 1))
        .collect();
    assert_eq!(mark_outcomes(&pool, id, token, &sent).await.unwrap(), 5);
    let unsent: Vec<Unsent> = claimed[5..]
        .iter()
        .enumerate()
        .map(|(i, r)| Unsent {
            id: r.id,
            attempts: i32::from(i == 0),
            last_error: (i == 0).then(|| "provider answered 503".to_owned()),
        })
        .collect();
    let released = release_claims(&pool, id, token, &unsent).await.unwrap();
    assert_eq!((released.released, released.skipped), (0, 5));
    assert!(!released.campaign_sending);

    let body = assert_every_fate_accounted(&stack.client, &pool, id).await;
    assert_eq!(body["counters"]["sent"], 5, "{body}");
    assert_eq!(body["counters"]["skipped"], 25, "{body}");
    assert_eq!(body["reasons"], json!({"campaign_stopped": 25}));
    let (attempts, last_error): (i32, String) =
        sqlx::query_as("SELECT attempts, last_error FROM recipients WHERE id = $1")
            .bind(unsent[0].id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, 1, "the attempt made before the release counts");
    assert!(
        last_error.contains("stopped") && last_error.contains("503"),
        "{last_error}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn rows_a_dead_sender_held_when_the_campaign_stopped_are_skipped_by_the_sweep_once_the_lease_expires()
 {
    let (stack, id) = sending_without_workers(12).await;
    let pool = stack.env.pool();
    // A sender claims everything under a short lease and dies; the stop comes
    // while the lease is still live, so only the sweep can account for the rows.
    let claimed = claim_batch(&pool, &whole_campaign(id, 6), Uuid::new_v4(), 2.0, i64::MAX)
        .await
        .unwrap()
        .rows;
    assert_eq!(claimed.len(), 12);
    let (status, stopped) = stack.transition(id, "stop").await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["counters"]["sending"], 12, "{stopped}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    // One sweep, and nothing else.
    let packer = herald_packer::Packer::new(
        pool.clone(),
        stack.env.bus().await,
        "sweeper".into(),
        test_packer_config(),
    );
    packer.sweep().await.unwrap();
    let body = assert_every_fate_accounted(&stack.client, &pool, id).await;
    assert_eq!(body["reasons"], json!({"campaign_stopped": 12}));
    let leases: i64 =
        sqlx::query_scalar("SELECT count(*) FROM recipient_leases WHERE campaign_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(leases, 0, "the spent lease row is gone");
    stack.stop().await;
}

#[tokio::test]
async fn a_draft_that_is_stopped_skips_every_recipient() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    stack.import(id, 7).await;
    let (status, body) = stack.transition(id, "stop").await;
    assert_eq!(status, 200, "{body}");
    let body = assert_every_fate_accounted(&stack.client, &stack.env.pool(), id).await;
    assert_eq!(body["reasons"], json!({"campaign_stopped": 7}));
    stack.stop().await;
}

#[tokio::test]
async fn a_stop_whose_process_died_before_skipping_is_finished_by_the_sweep_chunk_after_chunk() {
    // More rows than one chunk of the pass.
    let total = 2 * herald_core::halt::SKIP_CHUNK as usize + 7;
    let (stack, id) = sending_without_workers(total).await;
    let pool = stack.env.pool();
    // The stop commits, and its process dies before the pass: committed
    // straight through the transition function, which neither publishes nor
    // skips.
    let request = herald_core::transitions::TransitionRequest {
        campaign_id: id,
        tenant_id: None,
        action: herald_core::lifecycle::Action::Stop,
        expected_version: None,
        scheduled_at: None,
        actor: herald_core::transitions::Actor::system("test"),
        detail: None,
    };
    herald_core::transitions::commit_transition(&pool, &request)
        .await
        .unwrap();
    let body = stack.campaign(id).await;
    assert_eq!(body["status"], "stopped");
    assert_eq!(body["counters"]["pending"], total, "{body}");

    // The sweep leaves a fresh halt to its process, and takes over an idle one.
    let packer = herald_packer::Packer::new(
        pool.clone(),
        stack.env.bus().await,
        "sweeper".into(),
        test_packer_config(),
    );
    packer.sweep().await.unwrap();
    assert_eq!(stack.campaign(id).await["counters"]["pending"], total);
    sqlx::query(
        "UPDATE campaign_halts SET updated_at = now() - interval '1 hour' WHERE campaign_id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    packer.sweep().await.unwrap();
    let body = assert_every_fate_accounted(&stack.client, &pool, id).await;
    assert_eq!(body["reasons"], json!({"campaign_stopped": total}));
    let halts: i64 = sqlx::query_scalar("SELECT count(*) FROM campaign_halts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(halts, 0, "the finished halt is gone");
    stack.stop().await;
}
