//! Delivery receipts end to end: a campaign sends through the provider double
//! (which answers each request with a message id), then receipts come in on the
//! campaign's receipts URL in Herald's format and Evolution API's, and the
//! ledger, the funnel, the reason counts, the tracked subject and the
//! suppression list follow.
//!
//! Run with `cargo test -p herald --test receipts`.

use std::time::Duration;

use futures::StreamExt;
use herald_core::lifecycle::Status;
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// A campaign of `count` recipients sent to completion; returns its id, its
/// receipts URL and the provider message ids in recipient order.
async fn sent_campaign(
    stack: &Stack,
    provider: &ProviderDouble,
    count: usize,
) -> (Uuid, String, Vec<String>) {
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, count).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let done = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    let url = done["receipts_url"]
        .as_str()
        .expect("receipts_url")
        .to_owned();
    let ids = message_ids(&stack.env.pool(), id).await;
    assert_eq!(ids.len(), count, "every sent message has a provider id");
    (id, url, ids)
}

async fn message_ids(pool: &PgPool, campaign: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT provider_message_id FROM recipients WHERE campaign_id = $1 ORDER BY id",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// POSTs `body` to `url` without an API token.
async fn post(url: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn receipt(id: &str, status: &str) -> Value {
    json!({"provider_message_id": id, "status": status})
}

async fn recipient_fate(pool: &PgPool, campaign: Uuid, message: &str) -> (String, Option<String>) {
    sqlx::query_as(
        "SELECT status, reason FROM recipients WHERE campaign_id = $1 AND provider_message_id = $2",
    )
    .bind(campaign)
    .bind(message)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn herald_receipts_move_messages_forward_only_and_count_each_once() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let pool = stack.env.pool();
    let (id, url, m) = sent_campaign(&stack, &provider, 5).await;
    let bus = stack.env.bus().await;
    let mut tracked = bus
        .client
        .subscribe(bus.subjects.tracked(id))
        .await
        .unwrap();

    // Out of order (read before delivered), duplicated, a bounce, an unknown id.
    let body = json!({"receipts": [
        receipt(&m[0], "read"), receipt(&m[0], "delivered"),
        receipt(&m[1], "delivered"), receipt(&m[1], "delivered"),
        {"provider_message_id": m[2], "status": "failed", "reason": "number does not exist"},
        receipt("not-ours", "delivered"),
    ]});
    assert_eq!(
        post(&url, body.clone()).await,
        (200, json!({"matched": 5, "unmatched": 1, "ignored": 0}))
    );
    let expected_funnel = json!({"sent": 5, "delivered": 2, "read": 1, "bounced": 1});
    let campaign = stack.campaign(id).await;
    assert_eq!(campaign["funnel"], expected_funnel, "{campaign}");
    assert_eq!(campaign["counters"]["sent"], 4);
    assert_eq!(campaign["counters"]["failed"], 1);
    assert_eq!(campaign["reasons"], json!({"bounced": 1}));
    let (status, reason) = recipient_fate(&pool, id, &m[2]).await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("failed", Some("bounced"))
    );

    // The same body again, and receipts that would move messages back or
    // bounce a delivered one: nothing changes.
    assert_eq!(post(&url, body).await.0, 200);
    let late = json!({"receipts": [
        receipt(&m[0], "delivered"), receipt(&m[0], "failed"),
        receipt(&m[2], "delivered"), receipt(&m[2], "read"),
    ]});
    assert_eq!(post(&url, late).await.1["matched"], 4);
    let campaign = stack.campaign(id).await;
    assert_eq!(campaign["funnel"], expected_funnel, "{campaign}");
    assert_eq!(campaign["counters"]["failed"], 1);
    assert_eq!(recipient_fate(&pool, id, &m[0]).await.0, "sent");
    assert_every_fate_accounted(&stack.client, &pool, id).await;

    // Followers of the campaign hear of the change on its tracked subject.
    let message = tokio::time::timeout(Duration::from_secs(10), tracked.next())
        .await
        .expect("a tracked message")
        .expect("the subscription is open");
    let message: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(message["kind"], "receipts");
    assert_eq!(
        (
            &message["deliveredCount"],
            &message["readCount"],
            &message["bouncedCount"]
        ),
        (&json!(2), &json!(1), &json!(1))
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_wrong_token_or_channel_is_a_404_and_a_bad_body_is_refused() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let (id, url, m) = sent_campaign(&stack, &provider, 1).await;
    let body = json!({"receipts": [receipt(&m[0], "delivered")]});
    let (base, _token) = url.rsplit_once('/').unwrap();
    assert_eq!(post(&format!("{base}/wrong"), body.clone()).await.0, 404);
    let other = stack.url(&format!("/v1/receipts/{}/{}", Uuid::new_v4(), "x"));
    assert_eq!(post(&other, body.clone()).await.0, 404);
    let (status, error) = post(&url, json!({"receipts": [receipt(&m[0], "bounced")]})).await;
    assert_eq!(status, 422, "{error}");
    assert!(error.to_string().contains("receipts[0]"), "{error}");
    let raw = reqwest::Client::new()
        .post(&url)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let campaign = stack.campaign(id).await;
    assert_eq!(
        campaign["funnel"]["delivered"], 0,
        "nothing refused was applied"
    );
    stack.stop().await;
}

#[tokio::test]
async fn evolution_webhooks_of_both_versions_count_like_herald_receipts() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let (id, url, m) = sent_campaign(&stack, &provider, 3).await;
    let v2 = |key: &str, status: &str| {
        json!({"event": "messages.update", "instance": "main",
               "data": {"keyId": key, "remoteJid": "15550000000@s.whatsapp.net", "fromMe": true,
                        "participant": null, "status": status, "instanceId": "i", "messageId": "c1"},
               "destination": url, "date_time": "2026-11-30T12:00:00.000Z",
               "sender": "15559999999@s.whatsapp.net", "server_url": "https://evo", "apikey": "k"})
    };
    let v1 = json!({"event": "messages.update", "instance": "main",
                    "data": {"remoteJid": "15550000001@s.whatsapp.net", "fromMe": true, "id": m[1],
                             "status": "READ", "datetime": 1_764_504_000_000_i64, "owner": "main"}});
    // Evolution appends the event name when it sends webhooks by event.
    let by_event = format!("{url}/messages-update");
    assert_eq!(
        post(&by_event, v2(&m[0], "DELIVERY_ACK")).await,
        (200, json!({"matched": 1, "unmatched": 0, "ignored": 0}))
    );
    assert_eq!(post(&url, v2(&m[0], "DELIVERY_ACK")).await.1["matched"], 1);
    assert_eq!(post(&url, v1).await.1["matched"], 1);
    assert_eq!(post(&url, v2(&m[2], "SERVER_ACK")).await.1["ignored"], 1);
    assert_eq!(post(&url, v2(&m[2], "ERROR")).await.1["matched"], 1);
    let other_event = json!({"event": "connection.update", "data": {"state": "open"}});
    assert_eq!(post(&url, other_event).await.0, 200);
    let campaign = stack.campaign(id).await;
    assert_eq!(
        campaign["funnel"],
        json!({"sent": 3, "delivered": 2, "read": 1, "bounced": 1}),
        "{campaign}"
    );
    assert_eq!(campaign["reasons"], json!({"bounced": 1}));
    stack.stop().await;
}

#[tokio::test]
async fn an_opted_out_receipt_suppresses_the_address_for_the_tenants_next_campaign() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let pool = stack.env.pool();
    let (_, url, m) = sent_campaign(&stack, &provider, 3).await;
    let body = json!({"receipts": [{"provider_message_id": m[1], "status": "opted_out", "reason": "replied STOP"}]});
    assert_eq!(post(&url, body).await.1["matched"], 1);
    let (status, list) = stack
        .call(
            Method::GET,
            "/v1/suppressions?address=%2B155500000001",
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"][0]["address"], "+155500000001", "{list}");
    assert_eq!(list["items"][0]["source"], "receipt", "{list}");
    assert_eq!(list["items"][0]["reason"], "replied STOP", "{list}");

    let next = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(next, 3).await;
    assert_eq!(stack.transition(next, "start").await.0, 200);
    stack
        .wait_for_status(next, Status::Completed, Duration::from_secs(60))
        .await;
    let fates: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT address, status, reason FROM recipients WHERE campaign_id = $1 ORDER BY id",
    )
    .bind(next)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        fates[1],
        (
            "+155500000001".into(),
            "skipped".into(),
            Some("suppressed".into())
        )
    );
    assert_eq!(fates[0].1, "sent");
    assert_eq!(fates[2].1, "sent");
    assert_every_fate_accounted(&stack.client, &pool, next).await;
    stack.stop().await;
}

#[tokio::test]
async fn the_same_receipts_sent_concurrently_count_once() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let (id, url, m) = sent_campaign(&stack, &provider, 5).await;
    let receipts: Vec<Value> = m
        .iter()
        .flat_map(|id| [receipt(id, "read"), receipt(id, "delivered")])
        .collect();
    let body = json!({ "receipts": receipts });
    let posts = (0..20).map(|_| post(&url, body.clone()));
    for (status, answer) in futures::future::join_all(posts).await {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["matched"], 10);
    }
    let campaign = stack.campaign(id).await;
    assert_eq!(
        campaign["funnel"],
        json!({"sent": 5, "delivered": 5, "read": 5, "bounced": 0}),
        "{campaign}"
    );
    stack.stop().await;
}

/// The recipients of `campaign` that a message id is recorded for, for receipts.
async fn receipts_owners(pool: &PgPool, campaign: Uuid, message: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT recipient_id FROM provider_messages
         WHERE campaign_id = $1 AND provider_message_id = $2",
    )
    .bind(campaign)
    .bind(message)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_message_id_the_provider_repeats_marks_every_recipient_sent_and_stays_with_its_first() {
    use herald_sender::ledger::{RecipientOutcome, claim_batch, mark_outcomes};

    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let pool = stack.env.pool();
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 4).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let batch = herald_core::contracts::SendBatch {
        campaign_id: id,
        run_epoch: 1,
        first_recipient_id: 0,
        last_recipient_id: i64::MAX,
        recipient_count: 4,
        correlation_id: Uuid::new_v4(),
    };
    let token = Uuid::new_v4();
    let rows = claim_batch(&pool, &batch, token, 30.0, i64::MAX)
        .await
        .unwrap()
        .rows;
    let r: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let sent = |row: i64, message: &str| RecipientOutcome::sent(row, Some(message.into()), 1);

    // A fresh id, then one id twice within a write, then that id again in a
    // later write: every row is written each time.
    assert_eq!(
        mark_outcomes(&pool, id, token, &[sent(r[0], "fresh")])
            .await
            .unwrap(),
        1
    );
    let twice = [sent(r[1], "again"), sent(r[2], "again")];
    assert_eq!(mark_outcomes(&pool, id, token, &twice).await.unwrap(), 2);
    let owner = receipts_owners(&pool, id, "again").await;
    assert_eq!(owner.len(), 1, "one receipts key per message id");
    assert!(owner[0] == r[1] || owner[0] == r[2], "{owner:?}");
    assert_eq!(
        mark_outcomes(&pool, id, token, &[sent(r[3], "again")])
            .await
            .unwrap(),
        1
    );
    assert_eq!(receipts_owners(&pool, id, "again").await, owner);
    assert_eq!(receipts_owners(&pool, id, "fresh").await, vec![r[0]]);
    let sent_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recipients WHERE campaign_id = $1 AND status = 'sent'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(sent_rows, 4);
    assert_eq!(stack.campaign(id).await["counters"]["sent"], 4);

    // A receipt for the repeated id counts once, for the recipient it stayed with.
    let url = stack.campaign(id).await["receipts_url"]
        .as_str()
        .expect("receipts_url")
        .to_owned();
    let body = json!({"receipts": [receipt("again", "delivered")]});
    assert_eq!(post(&url, body).await.1["matched"], 1);
    assert_eq!(stack.campaign(id).await["funnel"]["delivered"], 1);
    stack.stop().await;
}

#[tokio::test]
async fn a_rotated_receipts_token_retires_the_old_url_at_once_and_the_new_one_takes_receipts() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let (id, old_url, m) = sent_campaign(&stack, &provider, 2).await;
    // The old token is in the api's cache now.
    let delivered = |message: &str| json!({"receipts": [receipt(message, "delivered")]});
    assert_eq!(post(&old_url, delivered(&m[0])).await.1["matched"], 1);

    // The campaign's own (private) channel rotates through the campaign.
    let path = format!("/v1/campaigns/{id}/receipts-token");
    let (status, rotated) = stack.call(Method::POST, &path, None).await;
    assert_eq!(status, 200, "{rotated}");
    let new_url = rotated["receipts_url"].as_str().expect("receipts_url");
    assert_ne!(new_url, old_url);
    assert_eq!(post(&old_url, delivered(&m[1])).await.0, 404);
    assert_eq!(post(new_url, delivered(&m[1])).await.1["matched"], 1);
    assert_eq!(stack.campaign(id).await["receipts_url"], new_url);

    // A shared channel rotates through /v1/channels; the campaign route says so.
    let (status, channel) = stack
        .call(
            Method::POST,
            "/v1/channels",
            Some(json!({"name": "shared", "config": provider.webhook_channel()})),
        )
        .await;
    assert_eq!(status, 201, "{channel}");
    let channel_id = channel["id"].as_str().expect("id").to_owned();
    let (_, on_shared) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"name": "s", "channel_id": channel_id, "template": {"body": "Hi"}})),
        )
        .await;
    let shared_campaign = on_shared["id"].as_str().expect("id");
    let (status, refused) = stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{shared_campaign}/receipts-token"),
            None,
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "shared_channel");
    let (status, rotated) = stack
        .call(
            Method::POST,
            &format!("/v1/channels/{channel_id}/receipts-token"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["receipts_url"], channel["receipts_url"]);
    assert_eq!(
        rotated["version"],
        channel["version"].as_i64().unwrap_or(0) + 1
    );

    // Unknown ids answer 404.
    for path in [
        format!("/v1/channels/{}/receipts-token", Uuid::new_v4()),
        format!("/v1/campaigns/{}/receipts-token", Uuid::new_v4()),
    ] {
        assert_eq!(stack.call(Method::POST, &path, None).await.0, 404, "{path}");
    }
    stack.stop().await;
}
