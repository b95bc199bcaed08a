//! The lifecycle over real Postgres and NATS: every transition commits projection
//! and event together, reaches JetStream with its event id as `Nats-Msg-Id`, and
//! survives a NATS outage (docs/ARCHITECTURE.md invariants 1 and 3, issue "Foundation").

use std::collections::HashSet;
use std::time::Duration;

use herald_api::ApiConfig;
use herald_core::contracts::{ControlAction, ControlMessage, LifecycleEvent, PackRequest, decode};
use herald_core::lifecycle::{Action, Status, next_status};
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn events_of(stack: &Stack, id: Uuid) -> Vec<Value> {
    let (status, body) = stack
        .call(Method::GET, &format!("/v1/campaigns/{id}/events"), None)
        .await;
    assert_eq!(status, 200);
    body["items"].as_array().expect("items").clone()
}

#[tokio::test]
async fn each_transition_commits_its_event_and_publishes_it_with_the_event_id_as_msg_id() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    stack.import(id, 3).await;
    let correlated = |action: &'static str| {
        let stack = &stack;
        async move {
            let response = stack
                .http
                .post(stack.url(&format!("/v1/campaigns/{id}/{action}")))
                .bearer_auth(&stack.token)
                .header("X-Correlation-Id", "abc-123")
                .send()
                .await
                .expect("sent");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            assert_eq!(status, 200, "{action}: {body}");
            body
        }
    };
    for action in ["start", "pause", "resume", "stop"] {
        let campaign = correlated(action).await;
        // Projection and event move together: one event per version.
        let events = events_of(&stack, id).await;
        assert_eq!(
            campaign["version"].as_i64(),
            Some(events.len() as i64),
            "{action}"
        );
        assert_eq!(events.last().unwrap()["payload"]["to"], campaign["status"]);
    }
    let events = events_of(&stack, id).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["created", "started", "paused", "resumed", "stopped"]
    );

    let bus = stack.env.bus().await;
    // Fast path: every event is on the stream right after the response.
    let on_stream = read_stream(&bus, &bus.streams.events, &bus.subjects.events(id)).await;
    assert_eq!(on_stream.len(), events.len());
    for (message, stored) in on_stream.iter().zip(&events) {
        let event: LifecycleEvent = decode(&message.payload).expect("schema-valid event");
        assert_eq!(
            header(message, "Nats-Msg-Id").as_deref(),
            stored["id"].as_str()
        );
        assert_eq!(event.event_id.to_string(), stored["id"].as_str().unwrap());
    }

    let control = read_stream(&bus, &bus.streams.control, &bus.subjects.control(id)).await;
    let actions: Vec<ControlAction> = control
        .iter()
        .map(|m| {
            // The loose request id travels as a header; the payload stays schema-valid.
            assert_eq!(header(m, "X-Correlation-Id").as_deref(), Some("abc-123"));
            let message: ControlMessage = decode(&m.payload).expect("schema-valid control message");
            assert_eq!(message.correlation_id.get_version_num(), 4);
            message.action
        })
        .collect();
    assert_eq!(
        actions,
        [
            ControlAction::Pause,
            ControlAction::Resume,
            ControlAction::Stop
        ]
    );

    // The work stream is a work queue: read the pack requests through the packer's
    // own durable (no packer runs in this test).
    let packs = {
        use futures::StreamExt;
        let consumer = bus
            .work_consumer(herald_core::bus::PACKER_DURABLE)
            .await
            .unwrap();
        let mut batch = consumer
            .fetch()
            .max_messages(10)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(Ok(m)) = batch.next().await {
            out.push(m);
        }
        out
    };
    let epochs: Vec<i32> = packs
        .iter()
        .map(|m| decode::<PackRequest>(&m.payload).expect("schema-valid pack"))
        .filter(|p| p.campaign_id == id)
        .map(|p| p.run_epoch)
        .collect();
    assert_eq!(
        epochs,
        [1, 2],
        "start and resume each open an epoch and ask for packing"
    );
    // No worker ran: the stop skipped all three recipients.
    let body = assert_every_fate_accounted(&stack.client, &stack.env.pool(), id).await;
    assert_eq!(body["reasons"], json!({"campaign_stopped": 3}), "{body}");
    stack.stop().await;
}

#[tokio::test]
async fn a_pause_succeeds_while_nats_is_down_and_reaches_the_stream_once_when_it_returns() {
    let mut nats = NatsServer::start().await;
    let env = TestEnv::with_nats(&nats.url()).await;
    let api = RunningApi::start(
        env.replica("api-0"),
        ApiConfig {
            relay_interval_ms: 200,
            ..ApiConfig::default()
        },
    )
    .await;
    let token = tenant_token(&env.pool(), "acme").await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", api.base_url);
    // Wait for the api's background provisioning.
    let bus = env.bus().await;
    for _ in 0..100 {
        if bus.js.get_stream(&bus.streams.control).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, created) = call(
        &http,
        Method::POST,
        &url("/v1/campaigns"),
        &token,
        Some(json!({"name": "n", "channel": {"provider": "log"}, "template": {"body": "x"}})),
    )
    .await;
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let (status, _) = call(
        &http,
        Method::POST,
        &url(&format!("/v1/campaigns/{id}/start")),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200);

    nats.stop();
    let (status, body) = call(
        &http,
        Method::POST,
        &url(&format!("/v1/campaigns/{id}/pause")),
        &token,
        None,
    )
    .await;
    assert_eq!(
        status, 200,
        "a committed transition never fails because NATS is down: {body}"
    );
    let stored: String = sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1")
        .bind(id)
        .fetch_one(&env.pool())
        .await
        .unwrap();
    assert_eq!(stored, "paused");
    let unpublished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM campaign_events WHERE campaign_id = $1 AND published_at IS NULL",
    )
    .bind(id)
    .fetch_one(&env.pool())
    .await
    .unwrap();
    assert_eq!(unpublished, 1, "the pause waits in the outbox");

    nats.resume().await;
    let mut waited = 0;
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM campaign_events WHERE published_at IS NULL")
                .fetch_one(&env.pool())
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        waited += 1;
        assert!(waited < 200, "relay never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bus = env.bus().await;
    let events = read_stream(&bus, &bus.streams.events, &bus.subjects.events(id)).await;
    let paused: Vec<_> = events
        .iter()
        .filter(|m| decode::<LifecycleEvent>(&m.payload).unwrap().event_type == "paused")
        .collect();
    assert_eq!(paused.len(), 1, "exactly once");
    let control = read_stream(&bus, &bus.streams.control, &bus.subjects.control(id)).await;
    assert_eq!(control.len(), 1, "exactly one control message");
    assert_eq!(
        decode::<ControlMessage>(&control[0].payload)
            .unwrap()
            .action,
        ControlAction::Pause
    );
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn fifty_concurrent_pauses_and_resumes_leave_a_gap_free_legal_history() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let requests = (0..50).map(|i| {
        let action = if i % 2 == 0 { "pause" } else { "resume" };
        let stack = &stack;
        async move { stack.transition(id, action).await.0 }
    });
    let statuses = futures::future::join_all(requests).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    let events = events_of(&stack, id).await;
    let mut status = Status::Draft;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event["seq"].as_i64(),
            Some(i as i64 + 1),
            "sequence has no gaps"
        );
        assert_eq!(
            event["payload"]["version"].as_i64(),
            Some(i as i64 + 1),
            "versions have no gaps"
        );
        if i == 0 {
            continue;
        }
        let action: Action = match event["type"].as_str().unwrap() {
            "started" => Action::Start,
            "paused" => Action::Pause,
            "resumed" => Action::Resume,
            other => panic!("unexpected event {other}"),
        };
        assert_eq!(event["payload"]["from"], status.as_str());
        status = next_status(status, action).expect("only legal transitions were recorded");
    }
    let successes = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(events.len(), successes + 2);
    assert_eq!(stack.campaign(id).await["status"], status.as_str());
    stack.stop().await;
}

#[tokio::test]
async fn the_api_answers_errors_with_the_right_status_and_one_json_shape() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;

    // Illegal transition.
    let (status, body) = stack.transition(id, "pause").await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "invalid_transition");
    assert_eq!(body["error"]["from"], "draft");
    assert_eq!(body["error"]["to"], "paused");

    // Stale If-Match.
    let response = stack
        .http
        .post(stack.url(&format!("/v1/campaigns/{id}/start")))
        .bearer_auth(&stack.token)
        .header("If-Match", "\"7\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 412);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "version_mismatch");
    let response = stack
        .http
        .post(stack.url(&format!("/v1/campaigns/{id}/start")))
        .bearer_auth(&stack.token)
        .header("If-Match", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "a current If-Match passes");

    // Another tenant's campaign is invisible.
    let other = tenant_token(&stack.env.pool(), "globex").await;
    for (method, path) in [
        (Method::GET, format!("/v1/campaigns/{id}")),
        (Method::POST, format!("/v1/campaigns/{id}/pause")),
        (Method::GET, format!("/v1/campaigns/{id}/events")),
        (Method::GET, format!("/v1/campaigns/{id}/recipients")),
        (Method::DELETE, format!("/v1/campaigns/{id}")),
    ] {
        let (status, body) =
            call(&stack.http, method.clone(), &stack.url(&path), &other, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }

    // Tokens are stored as digests only.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_all(&stack.env.pool())
        .await
        .unwrap();
    assert!(stored.contains(&herald_core::auth::hash_token(&stack.token)));
    assert!(
        stored
            .iter()
            .all(|digest| digest.len() == 32 && digest.as_slice() != stack.token.as_bytes())
    );
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens t, tenants n WHERE position($1 in t::text) > 0 OR position($1 in n::text) > 0",
    )
    .bind(&stack.token)
    .fetch_one(&stack.env.pool())
    .await
    .unwrap();
    assert_eq!(plain, 0, "the plain token is stored nowhere");

    // No token, or a wrong one.
    let response = stack
        .http
        .get(stack.url("/v1/campaigns"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let (status, body) = call(
        &stack.http,
        Method::GET,
        &stack.url("/v1/campaigns"),
        "hrld_nope",
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");

    // Garbage bodies.
    let garbage = |body: &'static str| {
        stack
            .http
            .post(stack.url("/v1/campaigns"))
            .bearer_auth(&stack.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let response = garbage("{\"name\": ").await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "bad_request"
    );
    let response = garbage("{\"name\": 5}").await.unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let (status, body) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({
        "name": "x", "channel": {"provider": "log"}, "template": {"body": "Hi {{ name"}})),
        )
        .await;
    assert_eq!(
        status, 422,
        "template syntax errors are caught at create time: {body}"
    );
    assert_eq!(body["error"]["code"], "validation_failed");
    let (status, _) = stack.call(Method::POST, "/v1/campaigns", Some(json!({
        "name": "x", "channel": {"provider": "webhook", "url": "not a url"}, "template": {"body": "x"}}))).await;
    assert_eq!(status, 422);

    // Over the body limit.
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let response = stack
        .http
        .post(stack.url("/v1/campaigns"))
        .bearer_auth(&stack.token)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );

    // A malformed correlation id is refused rather than carried.
    let response = stack
        .http
        .post(stack.url(&format!("/v1/campaigns/{id}/pause")))
        .bearer_auth(&stack.token)
        .header("X-Correlation-Id", "has spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    stack.stop().await;
}

#[tokio::test]
async fn two_relays_against_one_database_publish_every_event_exactly_once_in_order() {
    use herald_core::outbox::Outbox;
    use herald_core::transitions::{Actor, TransitionRequest, commit_transition};
    let env = TestEnv::new().await;
    let bus = env.provision().await;
    let pool = env.pool();
    let token_pool = env.pool();
    let _ = tenant_token(&token_pool, "acme").await;
    let tenant: Uuid = sqlx::query_scalar("SELECT id FROM tenants")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Commit transitions without publishing them: all wait in the outbox.
    let mut campaigns = Vec::new();
    for _ in 0..20 {
        let id = Uuid::new_v4();
        sqlx::query("WITH ch AS (INSERT INTO channels (id, tenant_id, name, config, private) VALUES ($1, $2, 'campaign c', '{\"provider\":\"log\"}', true))
                     INSERT INTO campaigns (id, tenant_id, name, channel_id, template, status) VALUES ($1, $2, 'c', $1, '{\"body\":\"x\"}', 'draft')")
            .bind(id).bind(tenant).execute(&pool).await.unwrap();
        for action in [
            Action::Start,
            Action::Pause,
            Action::Resume,
            Action::Pause,
            Action::Resume,
        ] {
            commit_transition(
                &pool,
                &TransitionRequest {
                    campaign_id: id,
                    tenant_id: None,
                    action,
                    expected_version: None,
                    scheduled_at: None,
                    actor: Actor::system("test"),
                    detail: None,
                },
            )
            .await
            .unwrap();
        }
        campaigns.push(id);
    }
    let relay_a = Outbox::new(env.pool(), env.bus().await);
    let relay_b = Outbox::new(env.pool(), env.bus().await);
    let run = |relay: Outbox| async move {
        let mut published = 0;
        for _ in 0..20 {
            published += relay.relay_once().await.unwrap();
        }
        published
    };
    let (a, b) = tokio::join!(run(relay_a), run(relay_b));
    assert_eq!(
        a + b,
        100,
        "each of the 100 events published once in total (a={a}, b={b})"
    );
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM campaign_events WHERE published_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(left, 0);
    for id in campaigns {
        let messages = read_stream(&bus, &bus.streams.events, &bus.subjects.events(id)).await;
        let seqs: Vec<i64> = messages
            .iter()
            .map(|m| decode::<LifecycleEvent>(&m.payload).unwrap().seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5], "per-campaign order, no duplicates");
        let ids: HashSet<_> = messages.iter().map(|m| header(m, "Nats-Msg-Id")).collect();
        assert_eq!(ids.len(), 5);
    }
    env.cleanup().await;
}

#[tokio::test]
async fn the_scheduler_starts_a_scheduled_campaign_when_its_time_comes() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (status, body) = stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{id}/schedule"),
            Some(json!({"scheduled_at": at})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "scheduled");
    assert_eq!(
        stack.campaign(id).await["status"],
        "scheduled",
        "not before its time"
    );
    let body = stack
        .wait_for_status(id, Status::Sending, Duration::from_secs(10))
        .await;
    assert!(chrono::Utc::now() >= at);
    let events = events_of(&stack, id).await;
    assert_eq!(events.last().unwrap()["actor"], "system:scheduler");
    assert_eq!(events.last().unwrap()["payload"]["triggeredBy"], "schedule");
    assert_eq!(body["run_epoch"], 1);
    // A time in the past cannot be scheduled.
    let id2 = stack.create_campaign(json!({"provider": "log"})).await;
    let (status, _) = stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{id2}/schedule"),
            Some(json!({"scheduled_at": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 409);
    stack.stop().await;
}

#[tokio::test]
async fn replicas_that_start_at_once_migrate_and_provision_safely() {
    // A fresh database name, not yet created: every "replica" races to create it.
    let mut common = herald_core::config::CommonConfig::local_defaults();
    let tag = Uuid::new_v4().simple().to_string()[..12].to_owned();
    common.database_url = format!("{}/herald_race_{tag}", postgres_base_url());
    common.subject_prefix = format!("r{tag}.");
    common.stream_prefix = format!("R{tag}");
    let migrations = (0..4).map(|_| herald_core::db::migrate(&common));
    for result in futures::future::join_all(migrations).await {
        result.expect("every concurrent migrate succeeds");
    }
    herald_core::db::migrate(&common)
        .await
        .expect("and again: idempotent");
    let mut buses = Vec::new();
    for _ in 0..4 {
        buses.push(
            herald_core::bus::Bus::connect(&common, "race")
                .await
                .unwrap(),
        );
    }
    let pool = herald_core::db::pool(&common).unwrap();
    let installation = herald_core::installation::id(&pool).await.unwrap();
    let provisions = buses.iter().map(|bus| bus.provision(installation));
    for result in futures::future::join_all(provisions).await {
        result.expect("every concurrent provision succeeds");
    }
    buses[0]
        .provision(installation)
        .await
        .expect("and again: idempotent");
    let bus = &buses[0];
    for stream in bus.streams.all() {
        bus.js.get_stream(stream).await.expect("stream exists");
        let _ = bus.js.delete_stream(stream).await;
    }
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", postgres_base_url()))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE herald_race_{tag} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn two_schedulers_start_a_due_campaign_exactly_once() {
    use herald_core::outbox::Outbox;
    use herald_core::transitions::Lifecycle;
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let mut due = Vec::new();
    for _ in 0..10 {
        let id = stack.create_campaign(json!({"provider": "log"})).await;
        let at = chrono::Utc::now() + chrono::Duration::seconds(60);
        let (status, _) = stack
            .call(
                Method::POST,
                &format!("/v1/campaigns/{id}/schedule"),
                Some(json!({"scheduled_at": at})),
            )
            .await;
        assert_eq!(status, 200);
        due.push(id);
    }
    // Make them due now, and let two more schedulers race the api's own.
    let pool = stack.env.pool();
    sqlx::query(
        "UPDATE campaigns SET scheduled_at = now() - interval '1 second' WHERE id = ANY($1)",
    )
    .bind(&due)
    .execute(&pool)
    .await
    .unwrap();
    let lifecycle = |bus| Lifecycle::new(stack.env.pool(), Outbox::new(stack.env.pool(), bus));
    let a = lifecycle(stack.env.bus().await);
    let b = lifecycle(stack.env.bus().await);
    let (ra, rb) = tokio::join!(
        herald_api::scheduler::start_due_campaigns(&a),
        herald_api::scheduler::start_due_campaigns(&b)
    );
    let started_here = ra.unwrap() + rb.unwrap();
    for id in &due {
        stack
            .wait_for_status(*id, Status::Sending, Duration::from_secs(10))
            .await;
    }
    let starts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM campaign_events WHERE type = 'started' AND campaign_id = ANY($1)",
    )
    .bind(&due)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        starts, 10,
        "each campaign started once (this pass started {started_here} of them)"
    );
    stack.stop().await;
}
