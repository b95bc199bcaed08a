//! The API does what its OpenAPI document says for the cases a generated client
//! meets first: a transition's body may be empty or `null`, the recipient import
//! takes the documented `text/csv`, and the documented cursors page through a
//! list. (scripts/api-conformance fuzzes the whole document with schemathesis.)

use herald_testkit::{Stack, test_sender_config};
use reqwest::Method;
use serde_json::{Value, json};

async fn post_raw(stack: &Stack, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let response = stack
        .http
        .post(stack.url(path))
        .bearer_auth(&stack.token)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("the api answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_transition_takes_an_empty_body_a_null_body_or_an_object() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let (status, created) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"name": "later", "channel": {"provider": "log"},
                        "template": {"body": "Hi"}, "scheduled_at": "2098-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id");
    let path = format!("/v1/campaigns/{id}/schedule");
    let (status, body) = post_raw(&stack, &path, "application/json", "null").await;
    assert_eq!(status, 200, "null is the documented empty body: {body}");
    assert_eq!(body["status"], "scheduled");
    assert_eq!(body["scheduled_at"], "2098-01-01T00:00:00Z");
    let (status, body) = stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{id}/unschedule"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_raw(
        &stack,
        &path,
        "application/json",
        r#"{"scheduled_at":"2099-01-01T00:00:00Z"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scheduled_at"], "2099-01-01T00:00:00Z");
    let (status, body) = post_raw(&stack, &path, "application/json", "[]").await;
    assert_eq!(status, 422, "an array is not a schedule body: {body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    stack.stop().await;
}

#[tokio::test]
async fn the_documented_csv_import_and_cursor_page_through_the_recipients() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    let csv = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/recipients.csv"
    ))
    .expect("the README's example file");
    let (status, body) = post_raw(
        &stack,
        &format!("/v1/campaigns/{id}/recipients"),
        "text/csv",
        &csv,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 3, "{body}");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("?limit=2&cursor={cursor}"),
            None => "?limit=2".to_owned(),
        };
        let (status, page) = stack
            .call(
                Method::GET,
                &format!("/v1/campaigns/{id}/recipients{query}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().expect("items") {
            seen.push(format!("{} {}", item["address"], item["variables"]["name"]));
        }
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert!(
                    next.chars().all(|c| c.is_ascii_digit()),
                    "documented as digits: {next}"
                );
                cursor = Some(next.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            r#""+15550001" "Ana""#,
            r#""+15550002" "Bo""#,
            r#""+15550003" "Cy""#
        ]
    );

    let (status, body) = stack
        .call(
            Method::GET,
            &format!("/v1/campaigns/{id}/recipients?cursor=not-digits"),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = stack
        .call(Method::GET, "/v1/campaigns?cursor=not.a.cursor", None)
        .await;
    assert_eq!(status, 422, "{body}");
    stack.stop().await;
}
