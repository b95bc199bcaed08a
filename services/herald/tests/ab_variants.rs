//! A/B/n tests end to end (docs/AB_TESTS.md): the weighted split, every
//! variant's body at the provider, one variant per recipient, pause, resume
//! and stop at every stage, the test cohort, the wait for a decision, the
//! manual and the automatic winner, and the remainder with the winner only.
//!
//! Run with `cargo test -p herald --test ab_variants`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald_core::lifecycle::Status;
use herald_sender::SenderConfig;
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// An A/B campaign through the double with variants A and B (`"A: Hi r7"`).
async fn ab_campaign(stack: &Stack, provider: &ProviderDouble, ab_test: Value) -> Uuid {
    let (status, body) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({
                "name": "a/b", "channel": provider.webhook_channel(),
                "variants": [
                    {"name": "A", "template": {"body": "A: Hi {{ name }}"}, "weight": 50},
                    {"name": "B", "template": {"body": "B: Hi {{ name }}"}, "weight": 50}
                ],
                "ab_test": ab_test,
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

/// The ledger's (variant, cohort) per recipient id.
async fn ledger(pool: &sqlx::PgPool, campaign: Uuid) -> HashMap<i64, (String, Option<String>)> {
    let rows: Vec<(i64, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, variant, ab_cohort FROM recipients WHERE campaign_id = $1")
            .bind(campaign)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, variant, cohort)| (id, (variant.expect("every row has a variant"), cohort)))
        .collect()
}

/// The variant of the body a request carried (`"A: ..."` is A).
fn body_variant(request: &RecordedRequest) -> String {
    let message = request.body["message"].as_str().unwrap_or_default();
    message.split(':').next().unwrap_or_default().to_owned()
}

/// Every recipient reached the provider under one key, with the body of the
/// variant the ledger records for it. Returns the requests per body variant.
fn assert_one_variant_each(
    provider: &ProviderDouble,
    ledger: &HashMap<i64, (String, Option<String>)>,
) -> HashMap<String, usize> {
    let mut seen: HashMap<i64, String> = HashMap::new();
    let mut per_body: HashMap<String, usize> = HashMap::new();
    for request in provider.requests() {
        let variant = body_variant(&request);
        if let Some(before) = seen.insert(request.recipient_id, variant.clone()) {
            assert_eq!(
                before, variant,
                "recipient {} saw two variants",
                request.recipient_id
            );
        }
        let (recorded, _) = &ledger[&request.recipient_id];
        assert_eq!(&variant, recorded, "recipient {}", request.recipient_id);
        *per_body.entry(variant).or_default() += 1;
    }
    assert!(
        provider.per_key().values().all(|&n| n == 1),
        "a key was sent twice"
    );
    per_body
}

/// Polls the campaign until `done` holds, or panics after `timeout`.
async fn wait_until(
    stack: &Stack,
    id: Uuid,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let body = stack.campaign(id).await;
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the campaign never got there: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn waits_for_decision(body: &Value) -> bool {
    body["status"] == "sending" && body["waiting"]["reason"] == "ab_decision"
}

async fn pick(stack: &Stack, id: Uuid, variant: &str) -> (u16, Value) {
    let path = format!("/v1/campaigns/{id}/ab/winner");
    stack
        .call(Method::POST, &path, Some(json!({"variant": variant})))
        .await
}

/// Waits until the paused campaign holds no row (every claimed row marked or
/// released: no request can start any more), and returns the requests so far.
async fn settled_paused(stack: &Stack, id: Uuid, provider: &ProviderDouble) -> usize {
    stack
        .wait_for_status(id, Status::Paused, Duration::from_secs(30))
        .await;
    stack
        .wait_until_nothing_sending(id, Duration::from_secs(30))
        .await;
    provider.request_count()
}

/// Pauses the campaign, checks that the provider sees no request for 500 ms
/// once it settled (`what` is the failure message), then resumes it.
async fn pause_holds_then_resume(stack: &Stack, id: Uuid, provider: &ProviderDouble, what: &str) {
    assert_eq!(stack.transition(id, "pause").await.0, 200);
    let paused_at = settled_paused(stack, id, provider).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.request_count(), paused_at, "{what}");
    assert_eq!(stack.transition(id, "resume").await.0, 200);
}

fn slow_sender() -> SenderConfig {
    SenderConfig {
        concurrency: 4,
        ..test_sender_config()
    }
}

#[tokio::test]
async fn a_fifty_fifty_test_of_2000_recipients_splits_within_five_percent_and_each_recipient_gets_its_one_variant()
 {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let id = ab_campaign(&stack, &provider, Value::Null).await;
    stack.import(id, 2_000).await;
    let pool = stack.env.pool();
    let assigned = ledger(&pool, id).await;
    let a = assigned.values().filter(|(v, _)| v == "A").count();
    // Each variant's share within 5 points of 50% (45% to 55%). The split of a
    // fair hash varies with the campaign id: its standard deviation here is
    // 22 rows (1.1%), so this bound is 4.5 of them and cannot fail by chance.
    assert!((900..=1_100).contains(&a), "A got {a} of 2000");
    assert!(assigned.values().all(|(_, cohort)| cohort.is_none()));

    assert_eq!(stack.transition(id, "start").await.0, 200);
    stack
        .wait_for_status(
            id,
            herald_core::lifecycle::Status::Completed,
            Duration::from_secs(120),
        )
        .await;
    let body = assert_every_fate_accounted(&stack.client, &pool, id).await;
    let per_body = assert_one_variant_each(&provider, &ledger(&pool, id).await);
    assert_eq!(per_body.get("A"), Some(&a));
    assert_eq!(per_body.get("B"), Some(&(2_000 - a)));
    assert_eq!(body["variants"][0]["counters"]["sent"], a);
    assert_eq!(body["variants"][1]["counters"]["sent"], 2_000 - a);
    assert_eq!(body["variants"][0]["counters"]["recipients"], a);
    assert!(body["template"].is_null() && body["template_variables"] == json!(["name"]));
    stack.stop().await;
}

#[tokio::test]
async fn the_test_cohort_goes_first_then_the_campaign_waits_and_an_operator_winner_gets_the_rest_alone()
 {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let test = json!({"test_percent": 20, "winner_metric": "read", "decide_after_seconds": null});
    let id = ab_campaign(&stack, &provider, test).await;
    stack.import(id, 600).await;
    let pool = stack.env.pool();
    let assigned = ledger(&pool, id).await;
    let test_rows = assigned
        .values()
        .filter(|(_, c)| c.as_deref() == Some("test"))
        .count();
    assert!(
        (80..=160).contains(&test_rows),
        "{test_rows} of 600 in the test"
    );

    assert_eq!(stack.transition(id, "start").await.0, 200);
    let waiting = wait_until(&stack, id, Duration::from_secs(60), waits_for_decision).await;
    assert!(waiting["waiting"]["until"].is_null(), "{waiting}");
    // Only the test cohort went out, each row with its own variant.
    assert_eq!(provider.request_count(), test_rows);
    let per_body = assert_one_variant_each(&provider, &assigned);
    assert!(
        per_body.len() == 2,
        "both variants in the test: {per_body:?}"
    );
    assert_eq!(pick(&stack, id, "Z").await.0, 422);
    // Waiting holds the rest back: a few sweeps later, still only the test.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        provider.request_count(),
        test_rows,
        "the rest went out undecided"
    );
    assert!(waits_for_decision(&stack.campaign(id).await));

    let (status, decided) = pick(&stack, id, "B").await;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(decided["ab_test"]["winner"], "B");
    assert_eq!(pick(&stack, id, "A").await.0, 409);
    stack
        .wait_for_status(
            id,
            herald_core::lifecycle::Status::Completed,
            Duration::from_secs(60),
        )
        .await;
    assert_every_fate_accounted(&stack.client, &pool, id).await;
    let after = ledger(&pool, id).await;
    for request in provider.requests() {
        let (_, cohort) = &assigned[&request.recipient_id];
        if cohort.as_deref() == Some("rest") {
            assert_eq!(body_variant(&request), "B", "a rest row got another body");
        }
    }
    assert_one_variant_each(&provider, &after);
    assert_eq!(provider.request_count(), 600);
    let events = stack.events(id).await;
    let decision = events
        .iter()
        .find(|e| e["type"] == "ab_decided")
        .expect("an ab_decided event");
    assert_eq!(decision["payload"]["winner"], "B");
    assert_eq!(decision["payload"]["decidedBy"], "operator");
    assert_eq!(
        decision["payload"]["figures"].as_array().map(Vec::len),
        Some(2)
    );
    stack.stop().await;
}

#[tokio::test]
async fn an_ab_test_is_decided_by_its_metric_once_decide_after_seconds_have_passed() {
    // The provider rejects every B message: A has the better `sent` rate.
    let provider = ProviderDouble::scripted(Duration::ZERO, |r| {
        if body_variant(r) == "B" {
            Reply::Status(400)
        } else {
            Reply::Ok
        }
    })
    .await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let test = json!({"test_percent": 30, "winner_metric": "sent", "decide_after_seconds": 1});
    let id = ab_campaign(&stack, &provider, test).await;
    stack.import(id, 400).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let body = stack
        .wait_for_status(
            id,
            herald_core::lifecycle::Status::Completed,
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(body["ab_test"]["winner"], "A", "{body}");
    let pool = stack.env.pool();
    assert_every_fate_accounted(&stack.client, &pool, id).await;
    let events = stack.events(id).await;
    let decision = events
        .iter()
        .find(|e| e["type"] == "ab_decided")
        .expect("an ab_decided event");
    assert_eq!(decision["payload"]["decidedBy"], "metric");
    assert_eq!(decision["payload"]["metric"], "sent");
    assert_eq!(decision["actor"], "system:scheduler");
    // The rest of the list got A only; B's failures are its test rows.
    let assigned = ledger(&pool, id).await;
    let failed_b: i64 = body["variants"][1]["counters"]["failed"].as_i64().unwrap();
    let test_b = assigned
        .values()
        .filter(|(v, c)| v == "B" && c.as_deref() == Some("test"))
        .count();
    assert_eq!(failed_b as usize, test_b);
    stack.stop().await;
}

#[tokio::test]
async fn pause_and_resume_work_in_the_test_cohort_while_waiting_and_in_the_remainder() {
    let provider = ProviderDouble::start(Duration::from_millis(20)).await;
    let stack = Stack::start(1, 2, slow_sender()).await;
    let test = json!({"test_percent": 40, "winner_metric": "sent", "decide_after_seconds": null});
    let id = ab_campaign(&stack, &provider, test).await;
    stack.import(id, 800).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);

    // In the test cohort.
    wait_until(&stack, id, Duration::from_secs(30), |_| {
        provider.request_count() >= 20
    })
    .await;
    pause_holds_then_resume(&stack, id, &provider, "a paused A/B test kept sending").await;

    // While waiting for the decision: pause, resume, and it waits again.
    wait_until(&stack, id, Duration::from_secs(60), waits_for_decision).await;
    assert_eq!(stack.transition(id, "pause").await.0, 200);
    assert_eq!(stack.transition(id, "resume").await.0, 200);
    wait_until(&stack, id, Duration::from_secs(30), waits_for_decision).await;
    let tested = provider.request_count();

    // In the remainder.
    assert_eq!(pick(&stack, id, "A").await.0, 200);
    wait_until(&stack, id, Duration::from_secs(30), |_| {
        provider.request_count() >= tested + 20
    })
    .await;
    pause_holds_then_resume(&stack, id, &provider, "a paused remainder kept sending").await;

    stack
        .wait_for_status(
            id,
            herald_core::lifecycle::Status::Completed,
            Duration::from_secs(120),
        )
        .await;
    let pool = stack.env.pool();
    assert_every_fate_accounted(&stack.client, &pool, id).await;
    assert_eq!(
        provider.request_count(),
        800,
        "every recipient exactly once"
    );
    assert_one_variant_each(&provider, &ledger(&pool, id).await);
    stack.stop().await;
}

#[tokio::test]
async fn a_stop_of_an_ab_test_accounts_for_every_recipient_and_sends_no_more() {
    let provider = ProviderDouble::start(Duration::from_millis(20)).await;
    let stack = Stack::start(1, 1, slow_sender()).await;
    let id = ab_campaign(
        &stack,
        &provider,
        json!({"test_percent": 50, "winner_metric": "sent", "decide_after_seconds": null}),
    )
    .await;
    stack.import(id, 600).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    wait_until(&stack, id, Duration::from_secs(30), |_| {
        provider.request_count() >= 20
    })
    .await;
    let (status, stopped) = stack.transition(id, "stop").await;
    assert_eq!(status, 200, "{stopped}");
    let pool = stack.env.pool();
    let body = assert_every_fate_accounted(&stack.client, &pool, id).await;
    assert!(body["counters"]["skipped"].as_i64() > Some(300), "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = provider.request_count();
    assert_eq!(after as i64, body["counters"]["sent"].as_i64().unwrap());
    assert_eq!(
        pick(&stack, id, "A").await.0,
        409,
        "a stopped test cannot be decided"
    );
    let assigned = ledger(&pool, id).await;
    assert!(
        provider
            .requests()
            .iter()
            .all(|r| assigned[&r.recipient_id].1.as_deref() == Some("test"))
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_retry_that_reopens_test_rows_takes_back_the_wait_for_a_decision_until_they_are_sent() {
    // Every third recipient is rejected on its first request only.
    let provider = ProviderDouble::scripted(Duration::ZERO, |r| {
        if r.recipient_id % 3 == 0 && r.attempt == 1 {
            Reply::Status(400)
        } else {
            Reply::Ok
        }
    })
    .await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let pool = stack.env.pool();
    let id = ab_campaign(
        &stack,
        &provider,
        json!({"test_percent": 50, "winner_metric": "sent", "decide_after_seconds": 3600}),
    )
    .await;
    stack.import(id, 60).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let waiting = wait_until(&stack, id, Duration::from_secs(60), waits_for_decision).await;
    let until = |body: &Value| {
        chrono::DateTime::parse_from_rfc3339(body["waiting"]["until"].as_str().unwrap()).unwrap()
    };
    let first_until = until(&waiting);
    assert!(
        waiting["counters"]["failed"].as_i64().unwrap() > 0,
        "{waiting}"
    );

    assert_eq!(stack.transition(id, "pause").await.0, 200);
    let path = format!("/v1/campaigns/{id}/retry");
    let (status, body) = stack
        .call(Method::POST, &path, Some(json!({"scope": "failed"})))
        .await;
    assert_eq!(status, 200, "{body}");
    // The test is not done any more: no decision may be taken on it now.
    let (waits, done_at): (i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM campaign_waits WHERE campaign_id = $1 AND reason = 'ab_decision'),
                (SELECT ab_test_done_at FROM campaigns WHERE id = $1)",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((waits, done_at), (0, None));

    assert_eq!(stack.transition(id, "resume").await.0, 200);
    let waiting = wait_until(&stack, id, Duration::from_secs(60), |b| {
        waits_for_decision(b) && b["counters"]["failed"] == 0
    })
    .await;
    let second_until = until(&waiting);
    assert!(
        second_until > first_until,
        "the decision time counts from the retried rows' end: {first_until} then {second_until}"
    );
    let rest_sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recipients WHERE campaign_id = $1 AND ab_cohort = 'rest' AND status <> 'pending'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rest_sent, 0, "the rest waits for the winner");
    assert_eq!(stack.transition(id, "stop").await.0, 200);
    stack.stop().await;
}
