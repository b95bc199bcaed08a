//! A/B/n tests through the API (docs/AB_TESTS.md): what a create must be, what
//! the winner endpoint refuses, a duplicate's fresh assignment, delivery
//! receipts counted per variant, and a budgeted test (the budget holds in the
//! test and in the remainder).
//!
//! Run with `cargo test -p herald --test ab_variants_api`.

use std::time::Duration;

use herald_core::lifecycle::Status;
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn variants(weights: &[u32]) -> Value {
    let names = ["A", "B", "C", "D", "E", "F"];
    weights
        .iter()
        .zip(names)
        .map(|(w, n)| json!({"name": n, "template": {"body": format!("{n}: {{{{ name }}}}")}, "weight": w}))
        .collect()
}

async fn create(stack: &Stack, body: Value) -> (u16, Value) {
    let mut body = body;
    body["name"] = json!("a/b");
    body["channel"] = json!({"provider": "log"});
    stack.call(Method::POST, "/v1/campaigns", Some(body)).await
}

fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn ab_campaigns_are_validated_with_clear_messages() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let test = |percent: Value, metric: &str, after: Value| json!({"test_percent": percent, "winner_metric": metric, "decide_after_seconds": after});
    let template = json!({"body": "Hi"});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"variants": variants(&[1])}), "2 to 5 variants"),
        (json!({"variants": variants(&[1; 6])}), "2 to 5 variants"),
        (json!({"variants": variants(&[1, 0])}), "variants[1].weight"),
        (
            json!({"template": template, "variants": variants(&[1, 1])}),
            "not both",
        ),
        (json!({}), "give template"),
        (
            json!({"template": template, "ab_test": test(json!(20), "sent", Value::Null)}),
            "ab_test needs variants",
        ),
        (
            json!({"variants": variants(&[1, 1]), "ab_test": test(json!(0), "sent", Value::Null)}),
            "test_percent",
        ),
        (
            json!({"variants": variants(&[1, 1]), "ab_test": test(json!(100), "sent", Value::Null)}),
            "test_percent",
        ),
        (
            json!({"variants": variants(&[1, 1]), "ab_test": test(json!(20), "sent", json!(0))}),
            "decide_after_seconds",
        ),
        (
            json!({"variants": variants(&[1, 1]), "ab_test": test(json!(20), "sent", json!(2_592_001))}),
            "decide_after_seconds",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = create(&stack, body.clone()).await;
        assert_eq!(status, 422, "{body} -> {answer}");
        assert!(message(&answer).contains(expected), "{body} -> {answer}");
    }
    // Serde's own refusals are 422s too: an unknown metric, a negative weight.
    let mut bad_metric =
        json!({"variants": variants(&[1, 1]), "ab_test": test(json!(20), "clicks", Value::Null)});
    assert_eq!(create(&stack, bad_metric.take()).await.0, 422);
    let mut negative = variants(&[1, 1]);
    negative[0]["weight"] = json!(-1);
    assert_eq!(create(&stack, json!({"variants": negative})).await.0, 422);
    let mut twice = variants(&[1, 1]);
    twice[1]["name"] = json!("A");
    let (status, answer) = create(&stack, json!({"variants": twice})).await;
    assert_eq!(status, 422);
    assert!(message(&answer).contains("used twice"), "{answer}");
    let mut long = variants(&[1, 1]);
    long[0]["name"] = json!("x".repeat(65));
    assert_eq!(create(&stack, json!({"variants": long})).await.0, 422);

    // A good one shows its variants and plan; its template cannot be edited.
    let ab = json!({"variants": variants(&[30, 70]), "ab_test": test(json!(20), "delivered", json!(3600))});
    let (status, campaign) = create(&stack, ab).await;
    assert_eq!(status, 201, "{campaign}");
    assert_eq!(campaign["variants"][1]["weight"], 70);
    assert_eq!(campaign["ab_test"]["winner_metric"], "delivered");
    assert!(campaign["ab_test"]["winner"].is_null());
    let id = campaign["id"].as_str().unwrap();
    let path = format!("/v1/campaigns/{id}");
    let (status, _) = stack
        .call(
            Method::PATCH,
            &path,
            Some(json!({"template": {"body": "x"}})),
        )
        .await;
    assert_eq!(status, 422);
    // A draft is not decidable; a plain campaign is no A/B test.
    let winner = |id: &str| format!("/v1/campaigns/{id}/ab/winner");
    let (status, answer) = stack
        .call(Method::POST, &winner(id), Some(json!({"variant": "A"})))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("ab_not_decidable"))
    );
    let plain = stack
        .create_campaign(json!({"provider": "log"}))
        .await
        .to_string();
    let (status, answer) = stack
        .call(Method::POST, &winner(&plain), Some(json!({"variant": "A"})))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("not_ab_test"))
    );
    let (status, _) = stack
        .call(Method::POST, &winner(id), Some(json!({"winner": "A"})))
        .await;
    assert_eq!(status, 422);
    let missing = winner(&Uuid::new_v4().to_string());
    assert_eq!(
        stack
            .call(Method::POST, &missing, Some(json!({"variant": "A"})))
            .await
            .0,
        404
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_duplicated_ab_campaign_assigns_its_recipients_afresh_from_its_own_id() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let test = json!({"test_percent": 25, "winner_metric": "sent", "decide_after_seconds": null});
    let (_, campaign) = create(
        &stack,
        json!({"variants": variants(&[1, 1, 2]), "ab_test": test}),
    )
    .await;
    let id: Uuid = campaign["id"].as_str().unwrap().parse().unwrap();
    stack.import(id, 1_000).await;
    let path = format!("/v1/campaigns/{id}/duplicate");
    let (status, copy) = stack.call(Method::POST, &path, None).await;
    assert_eq!(status, 201, "{copy}");
    let copy_id: Uuid = copy["id"].as_str().unwrap().parse().unwrap();
    let pool = stack.env.pool();
    let split = |campaign: Uuid| {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT address, variant, ab_cohort FROM recipients WHERE campaign_id = $1 ORDER BY address",
            )
            .bind(campaign)
            .fetch_all(&pool)
            .await
            .unwrap();
            rows
        }
    };
    let (original, copied) = (split(id).await, split(copy_id).await);
    assert_eq!(original.len(), copied.len());
    let differ = original
        .iter()
        .zip(&copied)
        .filter(|(a, b)| a.1 != b.1)
        .count();
    assert!(
        differ > 200,
        "the copy kept its source's split ({differ} of 1000 differ)"
    );
    let c = copied.iter().filter(|r| r.1 == "C").count();
    assert!((430..=570).contains(&c), "C (weight 2 of 4) got {c}");
    let body = stack.campaign(copy_id).await;
    let counted: i64 = (0..3)
        .map(|i| {
            body["variants"][i]["counters"]["recipients"]
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(counted, 1_000, "{body}");
    assert_eq!(body["variants"][2]["counters"]["recipients"], c);
    stack.stop().await;
}

#[tokio::test]
async fn delivery_receipts_count_delivered_and_read_per_variant() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let body = json!({"name": "a/b", "channel": provider.webhook_channel(), "variants": variants(&[1, 1])});
    let (status, campaign) = stack.call(Method::POST, "/v1/campaigns", Some(body)).await;
    assert_eq!(status, 201, "{campaign}");
    let id: Uuid = campaign["id"].as_str().unwrap().parse().unwrap();
    stack.import(id, 40).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let done = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    // Every A message read, every B message delivered.
    let receipts: Vec<Value> = provider
        .requests()
        .iter()
        .map(|r| {
            let a = r.body["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("A:");
            let status = if a { "read" } else { "delivered" };
            json!({"provider_message_id": format!("msg-{}-1", r.recipient_id), "status": status})
        })
        .collect();
    let url = done["receipts_url"].as_str().unwrap();
    let answer = reqwest::Client::new()
        .post(url)
        .json(&json!({"receipts": receipts}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let after = stack.campaign(id).await;
    let (a, b) = (
        &after["variants"][0]["counters"],
        &after["variants"][1]["counters"],
    );
    assert_eq!(a["delivered"], a["sent"], "{after}");
    assert_eq!(a["read"], a["sent"], "{after}");
    assert_eq!(b["delivered"], b["sent"], "{after}");
    assert_eq!(b["read"], 0, "{after}");
    assert_eq!(
        a["sent"].as_i64().unwrap() + b["sent"].as_i64().unwrap(),
        40
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_budgeted_ab_test_keeps_its_rate_limit_through_the_test_the_wait_and_the_remainder() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 2, test_sender_config()).await;
    let body = json!({
        "name": "a/b", "channel": provider.webhook_channel(), "rate_limit_per_second": 100,
        "variants": variants(&[1, 1]),
        "ab_test": {"test_percent": 30, "winner_metric": "sent", "decide_after_seconds": 1}
    });
    let (status, campaign) = stack.call(Method::POST, "/v1/campaigns", Some(body)).await;
    assert_eq!(status, 201, "{campaign}");
    let id: Uuid = campaign["id"].as_str().unwrap().parse().unwrap();
    stack.import(id, 300).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let done = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(90))
        .await;
    assert!(done["ab_test"]["winner"].is_string(), "{done}");
    assert_every_fate_accounted(&stack.client, &stack.env.pool(), id).await;
    assert!(provider.per_key().values().all(|&n| n == 1));
    assert_eq!(provider.per_key().len(), 300);
    let mut starts: Vec<_> = provider.requests().iter().map(|r| r.started).collect();
    starts.sort();
    for (i, start) in starts.iter().enumerate() {
        let within = starts[i..]
            .iter()
            .take_while(|s| **s - *start < Duration::from_secs(1))
            .count();
        assert!(within <= 100, "{within} requests in one second");
    }
    stack.stop().await;
}
