//! Every failed or skipped recipient carries a reason code beside its
//! `last_error`: the ledger listing filters by status and reason, and the
//! campaign counts its recipients by reason. A render error at send time fails
//! that one recipient (`template_error`), not the batch.
//!
//! Run with `cargo test -p herald --test reason_codes`.

use std::time::Duration;

use herald_core::lifecycle::Status;
use herald_sender::SenderConfig;
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// The address `ApiClient::import` gives recipient `n`.
fn address(n: usize) -> String {
    format!("+1555{n:08}")
}

/// A campaign with `template` and the given recipients (address, variables),
/// started.
async fn started(stack: &Stack, channel: Value, template: &str, recipients: Vec<Value>) -> Uuid {
    let (status, created) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"name": "reasons", "channel": channel, "template": {"body": template}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let (status, body) = stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{id}/recipients"),
            Some(json!({ "recipients": recipients })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.transition(id, "start").await.0, 200);
    id
}

/// The addresses of one page of the ledger listing with `query`.
async fn listed(stack: &Stack, campaign: Uuid, query: &str) -> Vec<Value> {
    let (status, body) = stack
        .call(
            Method::GET,
            &format!("/v1/campaigns/{campaign}/recipients?{query}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{query}: {body}");
    body["items"].as_array().unwrap().clone()
}

fn addresses(items: &[Value]) -> Vec<&str> {
    items
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_recipient_listing_filters_by_status_and_reason_and_the_campaign_counts_its_reasons() {
    // Recipient 1 is refused (400), recipient 2 always meets a 503, recipient 4
    // is on the suppression list; the others go through.
    let provider =
        ProviderDouble::scripted(Duration::ZERO, |request| {
            match request.body["address"].as_str().unwrap_or_default() {
                "+155500000001" => Reply::Status(400),
                "+155500000002" => Reply::Status(503),
                _ => Reply::Ok,
            }
        })
        .await;
    let sender = SenderConfig {
        max_attempts: 2,
        retry_base_ms: 20,
        ..test_sender_config()
    };
    let stack = Stack::start(1, 1, sender).await;
    let pool = stack.env.pool();
    let tenant: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO suppressions (tenant_id, address, reason, source) VALUES ($1, $2, 'opted out', 'api')",
    )
    .bind(tenant)
    .bind(address(4))
    .execute(&pool)
    .await
    .unwrap();
    let recipients = (0..6)
        .map(|n| json!({"address": address(n), "variables": {"name": format!("r{n}")}}))
        .collect();
    let id = started(
        &stack,
        provider.webhook_channel(),
        "Hi {{ name }}",
        recipients,
    )
    .await;
    stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;

    let body = assert_every_fate_accounted(&stack.client, &pool, id).await;
    assert_eq!(
        body["reasons"],
        json!({"provider_rejected": 1, "retries_exhausted": 1, "suppressed": 1}),
        "{body}"
    );
    let rejected = listed(&stack, id, "reason=provider_rejected").await;
    assert_eq!(addresses(&rejected), [address(1)]);
    assert_eq!(rejected[0]["status"], "failed");
    assert_eq!(rejected[0]["reason"], "provider_rejected");
    assert_eq!(rejected[0]["attempts"], 1);
    assert!(
        rejected[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("400")),
        "{rejected:?}"
    );
    let exhausted = listed(&stack, id, "status=failed&reason=retries_exhausted").await;
    assert_eq!(addresses(&exhausted), [address(2)]);
    assert_eq!(exhausted[0]["attempts"], 2);
    assert_eq!(
        addresses(&listed(&stack, id, "status=failed").await),
        [address(1), address(2)]
    );
    let skipped = listed(&stack, id, "status=skipped&reason=suppressed").await;
    assert_eq!(addresses(&skipped), [address(4)]);
    assert_eq!(skipped[0]["attempts"], 0, "never dispatched");
    assert!(
        listed(&stack, id, "status=failed&reason=suppressed")
            .await
            .is_empty()
    );
    let sent = listed(&stack, id, "status=sent").await;
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|r| r["reason"].is_null()), "{sent:?}");

    // Unknown values are refused with the codes that exist.
    for query in ["reason=stopped", "status=failed&reason=", "status=gone"] {
        let (status, body) = stack
            .call(
                Method::GET,
                &format!("/v1/campaigns/{id}/recipients?{query}"),
                None,
            )
            .await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed", "{body}");
    }
    let (_, body) = stack
        .call(
            Method::GET,
            &format!("/v1/campaigns/{id}/recipients?reason=bogus"),
            None,
        )
        .await;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("campaign_stopped") && message.contains("bounced"),
        "{message}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_render_error_at_send_time_fails_that_recipient_alone_with_reason_template_error() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let pool = stack.env.pool();
    // `+` of a string and a number is an error whatever the undefined-value
    // behaviour: recipient 2's `count` is text.
    let recipients = (0..5)
        .map(|n| {
            let count = if n == 2 { json!("many") } else { json!(n) };
            json!({"address": address(n), "variables": {"count": count}})
        })
        .collect();
    let id = started(
        &stack,
        provider.webhook_channel(),
        "You have {{ count + 1 }} messages",
        recipients,
    )
    .await;
    let body = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    assert_eq!(body["counters"]["sent"], 4, "the batch went on: {body}");
    let reached: Vec<String> = provider
        .requests()
        .iter()
        .map(|r| r.body["address"].as_str().unwrap().to_owned())
        .collect();
    assert!(!reached.contains(&address(2)), "{reached:?}");
    assert_eq!(reached.len(), 4, "no retry, no request for it: {reached:?}");

    let failed = listed(&stack, id, "reason=template_error").await;
    assert_eq!(addresses(&failed), [address(2)]);
    assert_eq!(failed[0]["status"], "failed");
    assert_eq!(failed[0]["attempts"], 0);
    let error = failed[0]["last_error"].as_str().unwrap_or_default();
    assert!(error.starts_with("template error"), "{error}");
    let body = assert_every_fate_accounted(&stack.client, &pool, id).await;
    assert_eq!(body["reasons"], json!({"template_error": 1}), "{body}");
    stack.stop().await;
}
