//! Channels as a resource over a real api, Postgres and NATS: the `/v1/channels`
//! CRUD, write-only secrets, tenant isolation, the delete guard for channels in
//! use, validation, and campaigns that reference a channel by `channel_id` or
//! keep an inline channel of their own.

use herald_core::lifecycle::Status;
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const SECRET: &str = "channel-s3cret";
const API_KEY: &str = "evo-k3y";

fn webhook_channel(name: &str) -> Value {
    json!({
        "name": name,
        "config": {"provider": "webhook", "url": "http://127.0.0.1:9/hook", "secret": SECRET},
        "rate_limit": {"per_second": 20, "per_day": 1000},
        "send_window": {"timezone": "America/Sao_Paulo", "days": ["mon", "tue"], "start": "09:00", "end": "20:00"}
    })
}

async fn create_channel(client: &ApiClient, body: Value) -> Value {
    let (status, created) = client.call(Method::POST, "/v1/channels", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created
}

fn id_of(body: &Value) -> Uuid {
    body["id"].as_str().expect("id").parse().expect("uuid")
}

async fn campaign_on(client: &ApiClient, channel: Uuid) -> (u16, Value) {
    client
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"name": "shared", "channel_id": channel, "template": {"body": "Hi {{ name }}"}})),
        )
        .await
}

/// Schedules campaign `id` for a time far ahead (2099).
async fn schedule_far_ahead(client: &ApiClient, id: Uuid) -> (u16, Value) {
    let path = format!("/v1/campaigns/{id}/schedule");
    let body = json!({"scheduled_at": "2099-01-01T00:00:00Z"});
    client.call(Method::POST, &path, Some(body)).await
}

fn assert_validation(status: u16, body: &Value, mentions: &str) {
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(mentions),
        "{mentions:?} not in {message:?}"
    );
}

#[tokio::test]
async fn channels_are_created_listed_read_updated_and_deleted() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let created = create_channel(&stack, webhook_channel("main number")).await;
    let id = id_of(&created);
    assert_eq!(created["name"], "main number");
    assert_eq!(created["config"]["provider"], "webhook");
    assert_eq!(created["config"]["secret"], "***");
    assert_eq!(
        created["rate_limit"],
        json!({"per_second": 20, "per_day": 1000})
    );
    assert_eq!(created["send_window"]["timezone"], "America/Sao_Paulo");
    assert_eq!(created["version"], 1);
    let second = create_channel(
        &stack,
        json!({"name": "logs", "config": {"provider": "log"}}),
    )
    .await;
    assert_eq!(second["rate_limit"], Value::Null);
    assert_eq!(second["send_window"], Value::Null);

    // Newest first, one per page, then the cursor.
    let (status, page) = stack.call(Method::GET, "/v1/channels?limit=1", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["id"], second["id"]);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (_, page) = stack
        .call(
            Method::GET,
            &format!("/v1/channels?limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page["items"][0]["id"], created["id"]);
    assert_eq!(page["next_cursor"], Value::Null);

    let (status, read) = stack
        .call(Method::GET, &format!("/v1/channels/{id}"), None)
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read, created);

    // Only what the PATCH names changes; null removes the budget.
    let (status, updated) = stack
        .call(
            Method::PATCH,
            &format!("/v1/channels/{id}"),
            Some(json!({"name": "renamed", "rate_limit": null})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["rate_limit"], Value::Null);
    assert_eq!(updated["send_window"], created["send_window"]);
    assert_eq!(updated["version"], 2);
    assert_ne!(updated["updated_at"], created["updated_at"]);
    let (_, updated) = stack
        .call(
            Method::PATCH,
            &format!("/v1/channels/{id}"),
            Some(json!({"send_window": null, "rate_limit": {"per_day": 50}})),
        )
        .await;
    assert_eq!(updated["send_window"], Value::Null);
    assert_eq!(
        updated["rate_limit"],
        json!({"per_second": null, "per_day": 50})
    );
    assert_eq!(updated["version"], 3);

    let (status, _) = stack
        .call(Method::DELETE, &format!("/v1/channels/{id}"), None)
        .await;
    assert_eq!(status, 204);
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let body = (method == Method::PATCH).then(|| json!({"name": "x"}));
        let (status, body) = stack
            .call(method.clone(), &format!("/v1/channels/{id}"), body)
            .await;
        assert_eq!(status, 404, "{method} after delete: {body}");
        assert_eq!(body["error"]["message"], "channel not found");
    }
    let (_, page) = stack.call(Method::GET, "/v1/channels", None).await;
    assert_eq!(page["items"].as_array().expect("items").len(), 1, "{page}");
    let (status, body) = campaign_on(&stack, id).await;
    assert_validation(status, &body, "channel_id");
    // Deleting is soft: the row stays for the campaigns that used it.
    let deleted: bool =
        sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM channels WHERE id = $1")
            .bind(id)
            .fetch_one(&stack.env.pool())
            .await
            .expect("row kept");
    assert!(deleted);
    stack.stop().await;
}

#[tokio::test]
async fn secrets_never_appear_in_any_response() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let hook = create_channel(&stack, webhook_channel("hook")).await;
    let evolution = create_channel(
        &stack,
        json!({"name": "evo", "config": {"provider": "evolution", "base_url": "https://evo.example",
               "instance": "main", "api_key": API_KEY}}),
    )
    .await;
    assert_eq!(evolution["config"]["api_key"], "***");
    let (hook_id, evo_id) = (id_of(&hook), id_of(&evolution));
    let (status, campaign) = campaign_on(&stack, hook_id).await;
    assert_eq!(status, 201, "{campaign}");
    let campaign_id = id_of(&campaign);
    let (_, patched) = stack
        .call(
            Method::PATCH,
            &format!("/v1/channels/{evo_id}"),
            Some(
                json!({"config": {"provider": "evolution", "base_url": "https://evo.example",
                        "instance": "other", "api_key": "another-k3y"}}),
            ),
        )
        .await;
    let mut answers = vec![hook, evolution, campaign, patched];
    for path in [
        "/v1/channels".to_owned(),
        format!("/v1/channels/{hook_id}"),
        format!("/v1/channels/{evo_id}"),
        format!("/v1/campaigns/{campaign_id}"),
        "/v1/campaigns".to_owned(),
    ] {
        let (status, body) = stack.call(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        answers.push(body);
    }
    for answer in &answers {
        let text = answer.to_string();
        for secret in [SECRET, API_KEY, "another-k3y"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
    // The secret itself is kept: the sender needs it.
    let stored: Value = sqlx::query_scalar("SELECT config FROM channels WHERE id = $1")
        .bind(hook_id)
        .fetch_one(&stack.env.pool())
        .await
        .expect("stored config");
    assert_eq!(stored["secret"], SECRET);
    stack.stop().await;
}

#[tokio::test]
async fn another_tenant_gets_404_and_cannot_use_the_channel_id() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let ours = id_of(&create_channel(&stack, webhook_channel("ours")).await);
    let globex = ApiClient {
        token: tenant_token(&stack.env.pool(), "globex").await,
        ..stack.client.clone()
    };
    let path = format!("/v1/channels/{ours}");
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"name": "stolen"}))),
        (Method::DELETE, None),
    ] {
        let (status, answer) = globex.call(method.clone(), &path, body).await;
        assert_eq!(status, 404, "{method}: {answer}");
    }
    let (_, theirs) = globex.call(Method::GET, "/v1/channels", None).await;
    assert_eq!(theirs["items"], json!([]));
    let (status, body) = campaign_on(&globex, ours).await;
    assert_validation(status, &body, &ours.to_string());
    // Nor can they move a draft of theirs onto it.
    let (_, draft) = globex
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"name": "theirs", "channel": {"provider": "log"}, "template": {"body": "x"}})),
        )
        .await;
    let (status, body) = globex
        .call(
            Method::PATCH,
            &format!("/v1/campaigns/{}", id_of(&draft)),
            Some(json!({"channel_id": ours})),
        )
        .await;
    assert_validation(status, &body, "channel_id");
    // Unchanged for its owner.
    let (status, read) = stack.call(Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(read["name"], "ours");
    stack.stop().await;
}

#[tokio::test]
async fn deleting_a_channel_a_sending_or_paused_campaign_uses_answers_409_until_it_stops() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let channel = id_of(&create_channel(&stack, webhook_channel("busy")).await);
    let path = format!("/v1/channels/{channel}");
    let sending = id_of(&campaign_on(&stack, channel).await.1);
    let paused = id_of(&campaign_on(&stack, channel).await.1);
    // A draft on the channel does not hold it.
    let draft = id_of(&campaign_on(&stack, channel).await.1);
    for id in [sending, paused] {
        stack.import(id, 3).await;
        assert_eq!(stack.transition(id, "start").await.0, 200);
    }
    assert_eq!(stack.transition(paused, "pause").await.0, 200);

    let (status, body) = stack.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "channel_in_use");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("2 "),
        "{body}"
    );
    assert_eq!(stack.transition(sending, "stop").await.0, 200);
    let (status, body) = stack.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("1 "),
        "{body}"
    );
    assert_eq!(stack.transition(paused, "stop").await.0, 200);
    let (status, body) = stack.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = stack.call(Method::GET, &path, None).await;
    assert_eq!(status, 404);
    // The campaigns keep naming the channel they used.
    let kept = stack.campaign(draft).await;
    assert_eq!(kept["channel_id"], channel.to_string());
    assert_eq!(kept["channel"]["secret"], "***");
    stack.stop().await;
}

#[tokio::test]
async fn a_scheduled_campaign_holds_its_channel_and_a_draft_on_a_deleted_channel_cannot_start_until_it_moves()
 {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let doomed = id_of(&create_channel(&stack, webhook_channel("doomed")).await);
    let other = id_of(&create_channel(&stack, webhook_channel("other")).await);
    let path = format!("/v1/channels/{doomed}");
    let draft = id_of(&campaign_on(&stack, doomed).await.1);
    stack.import(draft, 3).await;

    // Scheduled, it would start by itself: the channel is in use.
    assert_eq!(schedule_far_ahead(&stack, draft).await.0, 200);
    let (status, body) = stack.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "channel_in_use");
    assert_eq!(stack.transition(draft, "unschedule").await.0, 200);
    let (status, body) = stack.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 204, "{body}");

    // A draft left on the deleted channel can neither start nor be scheduled.
    for (action, (status, body)) in [
        ("start", stack.transition(draft, "start").await),
        ("schedule", schedule_far_ahead(&stack, draft).await),
    ] {
        assert_eq!(status, 409, "{action}: {body}");
        assert_eq!(
            body["error"]["code"], "precondition_failed",
            "{action}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("was deleted"), "{action}: {body}");
    }
    assert_eq!(stack.campaign(draft).await["status"], "draft");

    // Moved to a live channel, it starts.
    let (status, body) = stack
        .call(
            Method::PATCH,
            &format!("/v1/campaigns/{draft}"),
            Some(json!({"channel_id": other})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.transition(draft, "start").await.0, 200);
    stack.stop().await;
}

#[tokio::test]
async fn a_due_campaign_whose_channel_was_deleted_is_left_scheduled_while_the_others_start() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let gone = id_of(&create_channel(&stack, webhook_channel("gone")).await);
    let live = id_of(&create_channel(&stack, webhook_channel("live")).await);
    let mut campaigns = Vec::new();
    for channel in [gone, live] {
        let id = id_of(&campaign_on(&stack, channel).await.1);
        stack.import(id, 2).await;
        let (status, body) = schedule_far_ahead(&stack, id).await;
        assert_eq!(status, 200, "{body}");
        campaigns.push(id);
    }
    // As an installation may hold from before the delete guard counted
    // scheduled campaigns: the channel deleted under a scheduled campaign.
    let pool = stack.env.pool();
    sqlx::query("UPDATE channels SET deleted_at = now() WHERE id = $1")
        .bind(gone)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE campaigns SET scheduled_at = now() - interval '1 second' WHERE id = ANY($1)",
    )
    .bind(&campaigns)
    .execute(&pool)
    .await
    .unwrap();
    let due = herald_api::scheduler::due_campaigns(&pool, 100)
        .await
        .unwrap();
    assert!(
        !due.contains(&campaigns[0]),
        "the scheduler would retry it forever: {due:?}"
    );
    stack
        .wait_for_status(
            campaigns[1],
            Status::Sending,
            std::time::Duration::from_secs(10),
        )
        .await;
    assert_eq!(stack.campaign(campaigns[0]).await["status"], "scheduled");
    stack.stop().await;
}

#[tokio::test]
async fn bad_channel_and_campaign_input_is_a_422_with_the_error_document() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let with = |patch: Value| {
        let mut body = webhook_channel("bad");
        for (key, value) in patch.as_object().expect("object") {
            body[key] = value.clone();
        }
        body
    };
    let window = |timezone: &str| json!({"timezone": timezone, "start": "09:00", "end": "17:00"});
    for (body, mentions) in [
        (
            with(json!({"send_window": window("Mars/Olympus")})),
            "send_window.timezone",
        ),
        (
            with(json!({"send_window": {"timezone": "UTC", "start": "9am", "end": "17:00"}})),
            "send_window.start",
        ),
        (
            with(json!({"rate_limit": {"per_second": 0}})),
            "rate_limit.per_second",
        ),
        (
            with(json!({"rate_limit": {"per_day": 1_000_000_001}})),
            "rate_limit.per_day",
        ),
        (with(json!({"rate_limit": {"per_minute": 5}})), "per_minute"),
        (with(json!({"colour": "blue"})), "colour"),
        (
            with(json!({"config": {"provider": "webhook", "url": "ftp://x"}})),
            "channel.url",
        ),
        (with(json!({"config": {"provider": "pigeon"}})), "pigeon"),
        (with(json!({"name": "  "})), "name"),
    ] {
        let (status, answer) = stack.call(Method::POST, "/v1/channels", Some(body)).await;
        assert_validation(status, &answer, mentions);
    }
    let channel = id_of(&create_channel(&stack, webhook_channel("good")).await);
    let (status, answer) = stack
        .call(
            Method::PATCH,
            &format!("/v1/channels/{channel}"),
            Some(json!({"rate_limit": {"per_second": -3}})),
        )
        .await;
    assert_validation(status, &answer, "rate_limit.per_second");

    let template = json!({"body": "Hi"});
    for (body, mentions) in [
        (
            json!({"name": "both", "channel_id": channel, "channel": {"provider": "log"}, "template": template}),
            "not both",
        ),
        (
            json!({"name": "neither", "template": template}),
            "channel_id",
        ),
        (
            json!({"name": "unknown", "channel_id": Uuid::new_v4(), "template": template}),
            "does not name a channel",
        ),
        (
            json!({"name": "window", "channel_id": channel, "template": template,
                   "send_window": window("Nowhere/Special")}),
            "send_window.timezone",
        ),
    ] {
        let (status, answer) = stack.call(Method::POST, "/v1/campaigns", Some(body)).await;
        assert_validation(status, &answer, mentions);
    }
    stack.stop().await;
}

#[tokio::test]
async fn an_inline_channel_campaign_gets_a_private_channel_that_is_never_listed() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    let campaign = stack.campaign(id).await;
    let channel = campaign["channel_id"]
        .as_str()
        .expect("channel_id")
        .to_owned();
    assert_eq!(campaign["channel"], json!({"provider": "log"}));
    assert_eq!(campaign["send_window"], Value::Null);
    assert_eq!(campaign["waiting"], Value::Null);
    let private: (bool, String) =
        sqlx::query_as("SELECT private, name FROM channels WHERE id = $1::uuid")
            .bind(&channel)
            .fetch_one(&stack.env.pool())
            .await
            .expect("the private channel");
    assert_eq!(private, (true, "campaign test campaign".to_owned()));
    let (_, page) = stack.call(Method::GET, "/v1/channels", None).await;
    assert_eq!(page["items"], json!([]));
    let (status, _) = stack
        .call(Method::GET, &format!("/v1/channels/{channel}"), None)
        .await;
    assert_eq!(status, 404);
    // Another campaign cannot borrow it.
    let (status, body) = campaign_on(&stack, channel.parse().expect("uuid")).await;
    assert_validation(status, &body, "channel_id");

    // A duplicate gets a private copy of its own; one on a shared channel keeps it.
    let (_, copy) = stack
        .call(Method::POST, &format!("/v1/campaigns/{id}/duplicate"), None)
        .await;
    assert_ne!(copy["channel_id"], campaign["channel_id"]);
    assert_eq!(copy["channel"], json!({"provider": "log"}));
    let shared = id_of(&create_channel(&stack, webhook_channel("shared")).await);
    let (_, on_shared) = campaign_on(&stack, shared).await;
    let (_, shared_copy) = stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{}/duplicate", id_of(&on_shared)),
            None,
        )
        .await;
    assert_eq!(shared_copy["channel_id"], shared.to_string());
    stack.stop().await;
}

#[tokio::test]
async fn campaigns_show_their_channel_id_window_and_waiting_state() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let channel = id_of(&create_channel(&stack, webhook_channel("shared")).await);
    let window = json!({"timezone": "Europe/Lisbon", "days": ["sat", "sun"], "start": "22:00", "end": "06:00"});
    let (status, draft) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(
                json!({"name": "weekend", "channel_id": channel, "template": {"body": "Hi"},
                        "send_window": window, "rate_limit_per_second": 5}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{draft}");
    let id = id_of(&draft);
    assert_eq!(draft["channel_id"], channel.to_string());
    assert_eq!(draft["channel"]["secret"], "***");
    assert_eq!(draft["send_window"], window);
    assert_eq!(draft["rate_limit_per_second"], 5);
    assert_eq!(draft["waiting"], Value::Null);

    // A draft moves to an inline channel and drops its window.
    let (status, edited) = stack
        .call(
            Method::PATCH,
            &format!("/v1/campaigns/{id}"),
            Some(json!({"channel": {"provider": "log"}, "send_window": null})),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_ne!(edited["channel_id"], channel.to_string());
    assert_eq!(edited["channel"], json!({"provider": "log"}));
    assert_eq!(edited["send_window"], Value::Null);
    let (_, back) = stack
        .call(
            Method::PATCH,
            &format!("/v1/campaigns/{id}"),
            Some(json!({"channel_id": channel})),
        )
        .await;
    assert_eq!(back["channel_id"], channel.to_string());

    // `waiting` shows the sender's last word only while the campaign is sending.
    sqlx::query(
        "INSERT INTO campaign_waits (campaign_id, reason, until) VALUES ($1, 'send_window', '2030-01-05T22:00:00Z')",
    )
    .bind(id)
    .execute(&stack.env.pool())
    .await
    .expect("wait row");
    assert_eq!(stack.campaign(id).await["waiting"], Value::Null);
    stack.import(id, 2).await;
    let (status, started) = stack.transition(id, "start").await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(
        started["waiting"],
        json!({"reason": "send_window", "until": "2030-01-05T22:00:00Z"})
    );
    let (_, page) = stack.call(Method::GET, "/v1/campaigns", None).await;
    assert_eq!(page["items"][0]["waiting"]["reason"], "send_window");
    assert_eq!(stack.transition(id, "pause").await.0, 200);
    assert_eq!(stack.campaign(id).await["waiting"], Value::Null);
    stack.stop().await;
}
