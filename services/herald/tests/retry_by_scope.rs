//! Retry by scope (`POST /v1/campaigns/{id}/retry`): failed recipients go back
//! to pending in a new run epoch and are sent again; a sent recipient never
//! is, and the projection stays exact.
//!
//! Run with `cargo test -p herald --test retry_by_scope`.

use std::collections::HashMap;
use std::time::Duration;

use herald_core::lifecycle::Status;
use herald_sender::SenderConfig;
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// Requests the double received, by recipient id.
fn requests_by_recipient(provider: &ProviderDouble) -> HashMap<i64, u32> {
    let mut counts = HashMap::new();
    for request in provider.requests() {
        *counts.entry(request.recipient_id).or_default() += 1;
    }
    counts
}

/// (id, status, reason, attempts, attempts_base) of every row.
async fn rows(pool: &PgPool, campaign: Uuid) -> Vec<(i64, String, Option<String>, i32, i32)> {
    sqlx::query_as(
        "SELECT id, status, reason, attempts, attempts_base FROM recipients
         WHERE campaign_id = $1 ORDER BY id",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn retry(stack: &Stack, campaign: Uuid, body: Value) -> (u16, Value) {
    stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{campaign}/retry"),
            Some(body),
        )
        .await
}

fn fast_retries(max_attempts: u32) -> SenderConfig {
    SenderConfig {
        max_attempts,
        retry_base_ms: 10,
        retry_max_ms: 50,
        ..test_sender_config()
    }
}

#[tokio::test]
async fn a_transient_retry_sends_the_exhausted_recipients_again_and_never_a_sent_or_rejected_one() {
    // Every fifth recipient meets 503 on its first two requests (two attempts
    // allowed: it ends retries_exhausted); every seventh is rejected (400).
    let provider = ProviderDouble::scripted(Duration::ZERO, |r| match r.recipient_id {
        id if id % 5 == 0 && r.attempt <= 2 => Reply::Status(503),
        id if id % 7 == 0 && id % 5 != 0 => Reply::Status(400),
        _ => Reply::Ok,
    })
    .await;
    let stack = Stack::start(1, 2, fast_retries(2)).await;
    let pool = stack.env.pool();
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 60).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let first = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    let exhausted = first["reasons"]["retries_exhausted"].as_i64().unwrap_or(0);
    let rejected = first["reasons"]["provider_rejected"].as_i64().unwrap_or(0);
    assert!(exhausted > 0 && rejected > 0, "{first}");
    let run_epoch = first["run_epoch"].as_i64().unwrap();

    let (status, body) = retry(&stack, id, json!({"scope": "transient"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reopened"], exhausted, "{body}");
    assert_eq!(body["campaign"]["status"], "sending");
    assert_eq!(
        body["campaign"]["run_epoch"],
        run_epoch + 1,
        "a new run epoch"
    );
    assert_eq!(body["campaign"]["finished_at"], Value::Null);
    assert_eq!(body["campaign"]["counters"]["pending"], exhausted);
    assert_eq!(
        body["campaign"]["reasons"],
        json!({"provider_rejected": rejected})
    );

    let done = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    assert_eq!(done["reasons"], json!({"provider_rejected": rejected}));
    assert_eq!(done["counters"]["failed"], rejected);
    let per_recipient = requests_by_recipient(&provider);
    for (row, status, reason, attempts, base) in rows(&pool, id).await {
        let requests = per_recipient.get(&row).copied().unwrap_or(0);
        assert_eq!(
            attempts as u32, requests,
            "row {row}: attempts count every request"
        );
        if row % 5 == 0 {
            assert_eq!(status, "sent", "row {row} was retried");
            assert_eq!((requests, base), (3, 2), "two before the retry, one after");
        } else if row % 7 == 0 {
            assert_eq!(status, "failed", "row {row}: rejected rows stay failed");
            assert_eq!(reason.as_deref(), Some("provider_rejected"));
            assert_eq!(
                requests, 1,
                "row {row}: a transient retry never re-sends it"
            );
        } else {
            assert_eq!(status, "sent");
            assert_eq!(requests, 1, "row {row}: a sent recipient gets one request");
        }
    }
    let keys = provider.per_key();
    assert_eq!(keys.len(), 60, "one idempotency key per recipient");

    let events = stack.events(id).await;
    let retried = events
        .iter()
        .find(|e| e["type"] == "retried")
        .expect("a retried event");
    assert_eq!(retried["actor"], "tenant:acme");
    assert_eq!(retried["payload"]["scope"], "transient");
    assert_eq!(retried["payload"]["reasons"], json!(["retries_exhausted"]));
    assert_eq!(retried["payload"]["reopened"], exhausted);
    assert_eq!(retried["payload"]["from"], "completed");
    assert_eq!(retried["payload"]["to"], "sending");
    let completions = events.iter().filter(|e| e["type"] == "completed").count();
    assert_eq!(completions, 2, "completed, retried, completed again");
    assert_every_fate_accounted(&stack.client, &pool, id).await;

    // Nothing transient is left: a second retry changes nothing.
    let (status, body) = retry(&stack, id, json!({"scope": "transient"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "precondition_failed");
    stack.stop().await;
}

#[tokio::test]
async fn a_retry_of_a_paused_campaign_reopens_the_rows_and_they_wait_for_resume() {
    // Every fourth recipient is rejected on its first request only; the rest
    // take 30 ms each on one slot, so the campaign is still sending when the
    // first rejections are recorded and the pause lands.
    let provider = ProviderDouble::scripted(Duration::from_millis(30), |r| {
        if r.recipient_id % 4 == 0 && r.attempt == 1 {
            Reply::Status(400)
        } else {
            Reply::Ok
        }
    })
    .await;
    let sender = SenderConfig {
        concurrency: 1,
        batches_in_flight: 1,
        ..fast_retries(4)
    };
    let stack = Stack::start(1, 1, sender).await;
    let pool = stack.env.pool();
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 80).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let failed_at_pause = loop {
        let body = stack.campaign(id).await;
        let failed = body["counters"]["failed"].as_i64().unwrap();
        assert_eq!(body["status"], "sending", "still sending: {body}");
        if failed >= 2 {
            break failed;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (status, body) = stack.transition(id, "pause").await;
    assert_eq!(status, 200, "{body}");
    // Let the request in flight finish, so the counts hold still.
    let paused = stack
        .wait_until_nothing_sending(id, Duration::from_secs(30))
        .await;
    let failed = paused["counters"]["failed"].as_i64().unwrap();
    assert!(failed >= failed_at_pause);
    let pending = paused["counters"]["pending"].as_i64().unwrap();
    let reopened: Vec<i64> = rows(&pool, id)
        .await
        .into_iter()
        .filter(|row| row.1 == "failed")
        .map(|row| row.0)
        .collect();
    assert_eq!(reopened.len() as i64, failed);

    let (status, body) = retry(
        &stack,
        id,
        json!({"scope": "failed", "reasons": ["provider_rejected"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reopened"], failed);
    let campaign = &body["campaign"];
    assert_eq!(campaign["status"], "paused");
    assert_eq!(
        campaign["run_epoch"], paused["run_epoch"],
        "resume opens it"
    );
    assert_eq!(campaign["counters"]["failed"], 0);
    assert_eq!(campaign["counters"]["pending"], pending + failed);
    assert_eq!(campaign["reasons"], json!({}));
    assert_counters_match_ledger(&pool, id, campaign).await;

    // Paused: the re-opened rows wait. Nothing is requested meanwhile.
    let requests = provider.request_count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        provider.request_count(),
        requests,
        "no request while paused"
    );
    assert_eq!(stack.campaign(id).await["status"], "paused");

    assert_eq!(stack.transition(id, "resume").await.0, 200);
    stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    // The re-opened rows are sent on their second request; the rows the pause
    // kept from their first request meet their rejection after the resume.
    let per_recipient = requests_by_recipient(&provider);
    for (row, status, ..) in rows(&pool, id).await {
        let (expected_status, requests) = match row {
            row if reopened.contains(&row) => ("sent", 2),
            row if row % 4 == 0 => ("failed", 1),
            _ => ("sent", 1),
        };
        assert_eq!(status, expected_status, "row {row}");
        assert_eq!(
            per_recipient.get(&row).copied(),
            Some(requests),
            "row {row}"
        );
    }
    let events = stack.events(id).await;
    let retried = events.iter().find(|e| e["type"] == "retried").unwrap();
    assert_eq!(retried["payload"]["from"], "paused");
    assert_eq!(retried["payload"]["to"], "paused");
    assert_eq!(retried["payload"]["scope"], "failed");
    assert_eq!(retried["payload"]["reopened"], failed);
    assert_every_fate_accounted(&stack.client, &pool, id).await;
    stack.stop().await;
}

#[tokio::test]
async fn a_retry_is_refused_on_stopped_draft_and_sending_campaigns_and_for_bad_scopes_and_reasons()
{
    let provider = ProviderDouble::start(Duration::from_millis(200)).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let transient = json!({"scope": "transient"});

    let draft = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(draft, 3).await;
    let (status, body) = retry(&stack, draft, transient.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "invalid_transition");
    assert_eq!(body["error"]["from"], "draft");
    assert_eq!(body["error"]["to"], "retried");

    // Bad bodies are 422 whatever the campaign's state.
    for bad in [
        json!({"scope": "everything"}),
        json!({}),
        json!({"scope": "transient", "reasons": []}),
        json!({"scope": "transient", "reasons": ["provider_rejected"]}),
        json!({"scope": "transient", "reasons": ["bounced"]}),
        json!({"scope": "failed", "reasons": ["no_such_code"]}),
        json!({"scope": "failed", "reasons": ["suppressed"]}),
        json!({"scope": "failed", "extra": 1}),
    ] {
        let (status, body) = retry(&stack, draft, bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed");
    }
    let (_, body) = retry(&stack, draft, json!({"scope": "failed", "reasons": ["x"]})).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("retries_exhausted") && message.contains("bounced"),
        "the message lists the codes: {message}"
    );

    // Sending: 409. Stopped: 409, stop is final.
    let sending = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(sending, 50).await;
    assert_eq!(stack.transition(sending, "start").await.0, 200);
    let (status, body) = retry(&stack, sending, transient.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["from"], "sending");
    assert_eq!(stack.transition(sending, "stop").await.0, 200);
    let (status, body) = retry(&stack, sending, json!({"scope": "failed"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "invalid_transition");
    assert_eq!(body["error"]["from"], "stopped");

    // Another tenant's campaign is not found; a stale If-Match is a 412.
    let other = tenant_token(&stack.env.pool(), "other").await;
    let url = stack.url(&format!("/v1/campaigns/{sending}/retry"));
    let (status, _) = call(&stack.http, Method::POST, &url, &other, Some(transient)).await;
    assert_eq!(status, 404);
    let response = stack
        .http
        .post(&url)
        .bearer_auth(&stack.token)
        .header("If-Match", "1")
        .json(&json!({"scope": "failed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 412);
    assert_every_fate_accounted(&stack.client, &stack.env.pool(), sending).await;
    stack.stop().await;
}

#[tokio::test]
async fn a_retry_of_an_ab_campaign_moves_its_variant_counts_with_the_ledger() {
    // Every third recipient is rejected on its first request only.
    let provider = ProviderDouble::scripted(Duration::ZERO, |r| {
        if r.recipient_id % 3 == 0 && r.attempt == 1 {
            Reply::Status(400)
        } else {
            Reply::Ok
        }
    })
    .await;
    let stack = Stack::start(1, 1, fast_retries(4)).await;
    let pool = stack.env.pool();
    let (status, body) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({
                "name": "a/b", "channel": provider.webhook_channel(),
                "variants": [
                    {"name": "A", "template": {"body": "A {{ name }}"}, "weight": 50},
                    {"name": "B", "template": {"body": "B {{ name }}"}, "weight": 50}
                ],
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    stack.import(id, 60).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    let (status, body) = retry(&stack, id, json!({"scope": "failed"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reopened"], 20);
    let done = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    assert_eq!(done["counters"]["sent"], 60, "{done}");
    // Each variant's figures equal its ledger rows: all sent, none failed.
    let ledger: Vec<(String, i64)> = sqlx::query_as(
        "SELECT variant, count(*) FROM recipients WHERE campaign_id = $1 AND status = 'sent'
         GROUP BY variant ORDER BY variant",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let variants = done["variants"].as_array().expect("variants");
    for (name, sent) in ledger {
        let view = variants.iter().find(|v| v["name"] == name).unwrap();
        assert_eq!(view["counters"]["sent"], sent, "{view}");
        assert_eq!(view["counters"]["failed"], 0, "{view}");
    }
    assert_every_fate_accounted(&stack.client, &pool, id).await;
    stack.stop().await;
}
