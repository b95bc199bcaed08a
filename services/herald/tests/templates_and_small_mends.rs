//! Templates that fail early or not at all: a missing object renders empty and
//! `default()` fills it (end to end, through a sender to the provider double),
//! create and update answers list the template's variables, and a strict
//! template makes the import reject rows that lack one (`template_error`).
//! Plus two small mends: a `scheduled_at` without an offset is told to add one,
//! and a duplicate of a campaign with a 200-character name is told apart.
//!
//! Run with `cargo test -p herald --test templates_and_small_mends`.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_core::lifecycle::Status;
use herald_testkit::{ProviderDouble, Stack, assert_counters_match_ledger, test_sender_config};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn create(stack: &Stack, body: Value) -> (u16, Value) {
    stack.call(Method::POST, "/v1/campaigns", Some(body)).await
}

async fn import(stack: &Stack, campaign: Uuid, content_type: &str, body: String) -> Value {
    let response = stack
        .http
        .post(stack.url(&format!("/v1/campaigns/{campaign}/recipients")))
        .bearer_auth(&stack.token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("the api answers");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("an import result")
}

fn id_of(body: &Value) -> Uuid {
    body["id"].as_str().expect("id").parse().expect("uuid")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_filter_fills_a_missing_profile_and_the_provider_receives_hi_there() {
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let double = ProviderDouble::start(Duration::ZERO).await;
    // A channel with addressing keys: the sender reads its config too.
    let mut channel = double.webhook_channel();
    channel["address_kind"] = json!("phone");
    channel["default_region"] = json!("BR");
    let (status, created) = create(
        &stack,
        json!({"name": "greetings", "channel": channel,
               "template": {"body": "Hi {{ profile.first | default(\"there\") }}"}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = id_of(&created);
    let recipients = json!({"recipients": [
        {"address": "(11) 98765-4321"},
        {"address": "+5521987654321", "variables": {"profile": {"first": "Ana"}}},
        {"address": "+5531987654321", "variables": {"profile": {}}},
    ]});
    let result = import(&stack, id, "application/json", recipients.to_string()).await;
    assert_eq!(result["accepted"], 3, "{result}");
    let (status, body) = stack.transition(id, "start").await;
    assert_eq!(status, 200, "{body}");
    let done = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    assert_eq!(done["counters"]["sent"], 3, "{done}");
    assert_eq!(done["counters"]["failed"], 0, "{done}");
    assert_counters_match_ledger(&stack.env.pool(), id, &done).await;
    let received: BTreeSet<(String, String)> = double
        .requests()
        .iter()
        .map(|r| {
            (
                r.body["address"].as_str().unwrap_or_default().to_owned(),
                r.body["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("+5511987654321", "Hi there"),
        ("+5521987654321", "Hi Ana"),
        ("+5531987654321", "Hi there"),
    ]
    .into_iter()
    .map(|(a, m)| (a.to_owned(), m.to_owned()))
    .collect();
    assert_eq!(received, expected, "the normalised address is what is sent");
    double.stop();
    stack.stop().await;
}

#[tokio::test]
async fn create_and_update_answers_list_the_variables_the_template_uses() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let body = "{% set x = 1 %}Hi {{ profile.first | default(name) }}, \
                {% for c in codes %}{{ c }}{% endfor %}{{ range(2) | length }}";
    let (status, created) = create(
        &stack,
        json!({"name": "vars", "channel": {"provider": "log"}, "template": {"body": body}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["template_variables"],
        json!(["codes", "name", "profile"])
    );
    assert_eq!(
        created["template"],
        json!({"body": body}),
        "strict is off by default"
    );
    let id = id_of(&created);
    let (status, updated) = stack
        .call(
            Method::PATCH,
            &format!("/v1/campaigns/{id}"),
            Some(json!({"template": {"body": "Dear {{ title }} {{ last }}", "strict": true}})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["template_variables"], json!(["last", "title"]));
    assert_eq!(updated["template"]["strict"], true);
    let shown = stack.campaign(id).await;
    assert_eq!(shown["template_variables"], json!(["last", "title"]));
    let (status, renamed) = stack
        .call(
            Method::PATCH,
            &format!("/v1/campaigns/{id}"),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["template_variables"], json!(["last", "title"]));
    stack.stop().await;
}

#[tokio::test]
async fn a_strict_template_makes_the_import_reject_rows_lacking_a_variable_with_template_error() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let (status, created) = create(
        &stack,
        json!({"name": "strict", "channel": {"provider": "log"},
               "template": {"body": "Hi {{ name }}, your code is {{ code }}", "strict": true}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = id_of(&created);
    let recipients = json!({"recipients": [
        {"address": "+5511987654321", "variables": {"name": "Ana", "code": "A1"}},
        {"address": "+5521987654321", "variables": {"name": "Bo"}},
        {"address": "+5531987654321"},
        {"address": "+5541987654321", "variables": {"name": "", "code": null}},
    ]});
    let result = import(&stack, id, "application/json", recipients.to_string()).await;
    assert_eq!(result["accepted"], 2, "{result}");
    assert_eq!(result["rejected"], 2, "{result}");
    let rows = result["rejected_rows"].as_array().expect("rejected_rows");
    assert_eq!(rows[0]["row"], 2);
    assert_eq!(rows[0]["reason"], "template_error");
    assert!(
        rows[0]["message"].as_str().unwrap().contains("`code`"),
        "{result}"
    );
    assert!(
        !rows[0]["message"].as_str().unwrap().contains("`name`"),
        "{result}"
    );
    assert_eq!(rows[1]["row"], 3);
    assert_eq!(rows[1]["reason"], "template_error");

    // CSV: a `Name` column fills `{{ name }}`; a file without `code` fails every row.
    let result = import(
        &stack,
        id,
        "text/csv",
        "Phone,Name\n+5551987654321,Cy\n+5561987654321,Di\n".into(),
    )
    .await;
    assert_eq!(result["accepted"], 0, "{result}");
    assert_eq!(result["rejected"], 2, "{result}");
    assert_eq!(result["rejected_rows"][1]["reason"], "template_error");
    let result = import(
        &stack,
        id,
        "text/csv",
        "Phone,NAME, Code \n+5551987654321,Cy,C3\n".into(),
    )
    .await;
    assert_eq!(result["accepted"], 1, "{result}");
    let campaign = stack.campaign(id).await;
    assert_eq!(campaign["counters"]["total"], 3);
    assert_counters_match_ledger(&stack.env.pool(), id, &campaign).await;

    // The same rows into a campaign whose template is not strict: all accepted.
    let (_, lenient) = create(
        &stack,
        json!({"name": "lenient", "channel": {"provider": "log"},
               "template": {"body": "Hi {{ name }}, your code is {{ code }}"}}),
    )
    .await;
    let result = import(
        &stack,
        id_of(&lenient),
        "application/json",
        recipients.to_string(),
    )
    .await;
    assert_eq!(result["accepted"], 4, "{result}");
    stack.stop().await;
}

#[tokio::test]
async fn a_scheduled_at_without_an_offset_is_told_that_an_offset_is_needed() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let (status, body) = create(
        &stack,
        json!({"name": "later", "channel": {"provider": "log"}, "template": {"body": "Hi"},
               "scheduled_at": "2099-05-01T09:00:00"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains("no UTC offset"), "{body}");
    assert!(message(&body).contains("2099-05-01T09:00:00Z"), "{body}");
    assert!(!message(&body).contains("premature"), "{body}");

    let (status, created) = create(
        &stack,
        json!({"name": "later", "channel": {"provider": "log"}, "template": {"body": "Hi"},
               "scheduled_at": "2099-05-01T09:00:00-03:00"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["scheduled_at"], "2099-05-01T12:00:00Z");
    let id = id_of(&created);
    let (status, body) = stack
        .call(
            Method::PATCH,
            &format!("/v1/campaigns/{id}"),
            Some(json!({"scheduled_at": "2099-06-01 10:00"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains("no UTC offset"), "{body}");
    let (status, body) = stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{id}/schedule"),
            Some(json!({"scheduled_at": "2099-06-01T10:00:00"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains("no UTC offset"), "{body}");
    assert_eq!(stack.campaign(id).await["status"], "draft");
    stack.stop().await;
}

#[tokio::test]
async fn a_duplicate_of_a_campaign_with_a_200_character_name_gets_a_distinguishable_name() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let name = "n".repeat(200);
    let (status, created) = create(
        &stack,
        json!({"name": name, "channel": {"provider": "log"}, "template": {"body": "Hi"}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = id_of(&created);
    stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{id}/recipients"),
            Some(json!({"recipients": [{"address": "Ana@Example.COM"}]})),
        )
        .await;
    let mut names = vec![name];
    let mut source = id;
    // A copy, then a copy of the copy: every name differs from its source's,
    // and all fit in 200 characters.
    for _ in 0..2 {
        let (status, copy) = stack
            .call(
                Method::POST,
                &format!("/v1/campaigns/{source}/duplicate"),
                None,
            )
            .await;
        assert_eq!(status, 201, "{copy}");
        let copy_name = copy["name"].as_str().expect("name").to_owned();
        assert!(copy_name.chars().count() <= 200, "{copy_name}");
        assert!(copy_name.contains("(copy"), "{copy_name}");
        assert!(!names.contains(&copy_name), "{copy_name} repeats a name");
        names.push(copy_name);
        source = id_of(&copy);
        // The recipients come along with what was typed.
        let (_, page) = stack
            .call(
                Method::GET,
                &format!("/v1/campaigns/{source}/recipients"),
                None,
            )
            .await;
        assert_eq!(page["items"][0]["address"], "Ana@example.com", "{page}");
        assert_eq!(
            page["items"][0]["address_input"], "Ana@Example.COM",
            "{page}"
        );
        assert_eq!(page["items"][0]["address_kind"], "email", "{page}");
    }
    stack.stop().await;
}
