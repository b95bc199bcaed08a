//! The tenant's suppression list holds at claim time: an opt-out that lands
//! mid-campaign skips every recipient not yet claimed (reason `suppressed`), and
//! a suppressed row is never dispatched. Lists are per tenant.
//!
//! The suppression rows are written with SQL here (the endpoints are tested
//! with them); the claim only reads the `suppressions` table.
//!
//! Run with `cargo test -p herald --test suppression_at_claim`.

use std::time::{Duration, Instant};

use herald_core::lifecycle::Status;
use herald_core::work::StepOutcome;
use herald_sender::ledger::claim_batch;
use herald_testkit::*;
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// The address `ApiClient::import` gives recipient `n`.
fn address(n: usize) -> String {
    format!("+1555{n:08}")
}

async fn tenant_id(pool: &PgPool, name: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Puts `address` on `tenant`'s suppression list.
async fn suppress(pool: &PgPool, tenant: Uuid, address: &str) {
    sqlx::query(
        "INSERT INTO suppressions (tenant_id, address, reason, source) VALUES ($1, $2, 'opted out', 'api')",
    )
    .bind(tenant)
    .bind(address)
    .execute(pool)
    .await
    .unwrap();
}

/// (status, reason) of the recipient with `address`.
async fn fate(pool: &PgPool, campaign: Uuid, address: &str) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, reason FROM recipients WHERE campaign_id = $1 AND address = $2")
        .bind(campaign)
        .bind(address)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn batch(campaign: Uuid, first: i64, last: i64) -> herald_core::contracts::SendBatch {
    herald_core::contracts::SendBatch {
        campaign_id: campaign,
        run_epoch: 1,
        first_recipient_id: first,
        last_recipient_id: last,
        recipient_count: 20,
        correlation_id: Uuid::new_v4(),
    }
}

#[tokio::test]
async fn a_claim_skips_the_addresses_on_its_own_tenants_list_and_leaves_rows_already_claimed_alone()
{
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let pool = stack.env.pool();
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    stack.import(id, 10).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM recipients WHERE campaign_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();

    // The first half is claimed before any opt-out lands.
    let first = claim_batch(&pool, &batch(id, ids[0], ids[4]), Uuid::new_v4(), 30.0, 100)
        .await
        .unwrap()
        .rows;
    assert_eq!(first.len(), 5);
    // Opt-outs land: one for a claimed row, one for an unclaimed row, and one in
    // another tenant's list for another unclaimed row.
    let acme = tenant_id(&pool, "acme").await;
    tenant_token(&pool, "globex").await;
    let globex = tenant_id(&pool, "globex").await;
    suppress(&pool, acme, &address(2)).await;
    suppress(&pool, acme, &address(7)).await;
    suppress(&pool, globex, &address(8)).await;

    let rest = claim_batch(&pool, &batch(id, ids[5], ids[9]), Uuid::new_v4(), 30.0, 100)
        .await
        .unwrap()
        .rows;
    let claimed: Vec<&str> = rest.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(
        claimed,
        [address(5), address(6), address(8), address(9)],
        "the suppressed row is not handed to the sender"
    );
    assert_eq!(
        fate(&pool, id, &address(7)).await,
        ("skipped".into(), Some("suppressed".into()))
    );
    assert_eq!(
        fate(&pool, id, &address(2)).await,
        ("sending".into(), None),
        "a row claimed before the opt-out is not taken back"
    );
    assert_eq!(
        fate(&pool, id, &address(8)).await,
        ("sending".into(), None),
        "another tenant's list does not apply"
    );
    let body = stack.campaign(id).await;
    assert_counters_match_ledger(&pool, id, &body).await;
    assert_eq!(body["counters"]["skipped"], 1, "{body}");
    assert_eq!(body["reasons"], json!({"suppressed": 1}), "{body}");
    let last_error: String = sqlx::query_scalar(
        "SELECT last_error FROM recipients WHERE campaign_id = $1 AND address = $2",
    )
    .bind(id)
    .bind(address(7))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(last_error.contains("suppression list"), "{last_error}");
    stack.stop().await;
}

#[tokio::test]
async fn an_opt_out_that_lands_mid_campaign_skips_that_recipient_if_not_yet_claimed() {
    // Two requests a second: the sender claims only what its budget allows
    // now, so the later recipients stay unclaimed for several seconds.
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let pool = stack.env.pool();
    let (status, created) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(
                json!({"name": "opt-outs", "channel": provider.webhook_channel(),
                        "template": {"body": "Hi {{ name }}"}, "rate_limit_per_second": 2}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    stack.import(id, 8).await;
    // On the list before the start: never sent either.
    let acme = tenant_id(&pool, "acme").await;
    suppress(&pool, acme, &address(1)).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while provider.request_count() < 2 {
        if Instant::now() > deadline {
            let ledger: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT address, status, last_error FROM recipients WHERE campaign_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
            panic!("nothing was sent: {}\n{ledger:?}", stack.campaign(id).await);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Mid-campaign: the first recipient (sent already) and the last (not yet
    // claimed) opt out.
    suppress(&pool, acme, &address(0)).await;
    suppress(&pool, acme, &address(7)).await;

    stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    let reached: Vec<String> = provider
        .requests()
        .iter()
        .map(|r| r.body["address"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !reached.contains(&address(7)) && !reached.contains(&address(1)),
        "a suppressed recipient reached the provider: {reached:?}"
    );
    assert_eq!(reached.len(), 6, "{reached:?}");
    assert_eq!(
        fate(&pool, id, &address(7)).await,
        ("skipped".into(), Some("suppressed".into()))
    );
    assert_eq!(
        fate(&pool, id, &address(0)).await,
        ("sent".into(), None),
        "an opt-out does not rewrite what was already sent"
    );
    let body = assert_every_fate_accounted(&stack.client, &pool, id).await;
    assert_eq!(body["reasons"], json!({"suppressed": 2}), "{body}");
    assert_eq!(body["counters"]["sent"], 6, "{body}");
    stack.stop().await;
}

#[tokio::test]
async fn a_batch_whose_rows_are_all_suppressed_completes_the_campaign_when_they_were_its_last_open_rows()
 {
    // No request is made, so no dispatch ends a lease to check completion: the
    // claim that skipped them must (else the stall sweep would, 30 s later).
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let pool = stack.env.pool();
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 3).await;
    let acme = tenant_id(&pool, "acme").await;
    for n in 0..3 {
        suppress(&pool, acme, &address(n)).await;
    }
    assert_eq!(stack.transition(id, "start").await.0, 200);
    // Paging is over (no packer runs here): the batch below is the last one.
    sqlx::query(
        "UPDATE campaigns SET packed_epoch = run_epoch, pack_epoch = run_epoch,
                              pack_cursor = 9223372036854775807 WHERE id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let sender = herald_sender::Sender::new(
        pool.clone(),
        stack.env.bus().await,
        "sender-under-test".into(),
        test_sender_config(),
    )
    .unwrap();
    let outcome = sender.handle_batch(batch(id, 0, i64::MAX), None).await;
    assert!(matches!(outcome, StepOutcome::Ack), "{outcome:?}");
    assert_eq!(
        stack.campaign(id).await["status"],
        "completed",
        "the claim that skipped the last open rows completes the campaign"
    );
    assert_eq!(provider.request_count(), 0);
    let body = assert_every_fate_accounted(&stack.client, &pool, id).await;
    assert_eq!(body["reasons"], json!({"suppressed": 3}), "{body}");
    stack.stop().await;
}

#[tokio::test]
async fn an_e_mail_opt_out_given_in_any_case_through_the_api_skips_the_recipient_imported_in_another()
 {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let pool = stack.env.pool();
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    let (status, imported) = stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{id}/recipients"),
            Some(json!({"recipients": [{"address": "Ana@Example.COM"}, {"address": "bo@example.com"}]})),
        )
        .await;
    assert_eq!(status, 200, "{imported}");
    // The list keeps e-mail addresses lower-cased whole; the ledger keeps the
    // local part as typed (`Ana@example.com`).
    let (status, added) = stack
        .call(
            Method::POST,
            "/v1/suppressions",
            Some(json!({"entries": [{"address": "ANA@example.com", "reason": "replied STOP"}]})),
        )
        .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM recipients WHERE campaign_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
    let claimed = claim_batch(&pool, &batch(id, ids[0], ids[1]), Uuid::new_v4(), 30.0, 100)
        .await
        .unwrap()
        .rows;
    let claimed: Vec<&str> = claimed.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(claimed, ["bo@example.com"]);
    assert_eq!(
        fate(&pool, id, "Ana@example.com").await,
        ("skipped".into(), Some("suppressed".into()))
    );
    stack.stop().await;
}
