//! Suppression lists over a real api, Postgres and NATS: `/v1/suppressions`
//! adds opt-outs as JSON or streamed CSV (normalised, counted, bad entries listed),
//! pages the list with a cursor and an exact address filter, removes addresses,
//! answers bad requests with clear 4xx, and keeps every tenant's list its own.
//! The `herald suppression` CLI is run as a real process against the same api.

use std::process::Stdio;

use herald_api::ApiConfig;
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Sends `body` to `POST /v1/suppressions` with the given Content-Type.
async fn post_raw(
    client: &ApiClient,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut request = client
        .http
        .post(client.url("/v1/suppressions"))
        .bearer_auth(&client.token)
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Adds `entries` as JSON and returns the 200 answer.
async fn add(client: &ApiClient, entries: Value) -> Value {
    let (status, body) = client
        .call(
            Method::POST,
            "/v1/suppressions",
            Some(json!({ "entries": entries })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn list(client: &ApiClient, query: &str) -> Value {
    let (status, page) = client
        .call(Method::GET, &format!("/v1/suppressions{query}"), None)
        .await;
    assert_eq!(status, 200, "{page}");
    page
}

/// `(address, reason)` of every entry on the first page of 500.
async fn entries(client: &ApiClient) -> Vec<(String, String)> {
    let page = list(client, "?limit=500").await;
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| (text(&e["address"]), text(&e["reason"])))
        .collect()
}

fn text(value: &Value) -> String {
    value.as_str().expect("a string").to_owned()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, r)| ((*a).to_owned(), (*r).to_owned()))
        .collect()
}

/// The error code that goes with each 4xx the endpoints answer.
fn code_for(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        _ => "validation_failed",
    }
}

/// The 404 of an address that is not on the tenant's list.
fn assert_not_listed(status: u16, body: &Value) {
    assert_error(
        status,
        body,
        404,
        "not_found",
        "not on the suppression list",
    );
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str, mentions: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(mentions),
        "{mentions:?} not in {message:?}"
    );
}

#[tokio::test]
async fn entries_added_as_json_are_normalised_counted_and_the_bad_ones_listed() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let result = add(
        &stack,
        json!([
            {"address": " +1 (555) 000-1234 "},
            {"address": "Ana@Example.COM", "reason": "  replied STOP  "},
            {"address": "ana@example.com", "reason": "again, other case"},
            {"address": "   "},
            {"address": "x".repeat(321)},
            {"address": "+15550009", "reason": "r".repeat(201)},
            {"address": "+15550010", "reason": "bad\u{0}reason"},
            {"address": "device-7", "reason": null},
        ]),
    )
    .await;
    assert_eq!(result["added"], 3, "{result}");
    assert_eq!(result["already_present"], 1, "{result}");
    assert_eq!(result["rejected"], 4, "{result}");
    assert_eq!(
        result["rejected_rows"],
        json!([
            {"row": 4, "reason": "address is empty"},
            {"row": 5, "reason": "address is longer than 320 bytes"},
            {"row": 6, "reason": "reason is longer than 200 characters"},
            {"row": 7, "reason": "reason contains control characters"},
        ])
    );
    assert_eq!(
        entries(&stack).await,
        pairs(&[
            ("+15550001234", "opted_out"),
            ("ana@example.com", "replied STOP"),
            ("device-7", "opted_out"),
        ])
    );
    let page = list(&stack, "").await;
    assert_eq!(page["items"][0]["source"], "api");
    assert!(page["items"][0]["created_at"].is_string(), "{page}");
    assert_eq!(page["next_cursor"], Value::Null);
    stack.stop().await;
}

#[tokio::test]
async fn a_csv_list_is_streamed_with_its_reasons_and_its_rejected_rows() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let csv = "\u{feff}Name, EMAIL ,Reason\n\
               Ana,Ana@Example.com,complaint\n\
               Bo,bo@example.com,\n\
               Cy,,no address\n\
               Di,di@example.com\n\
               Ed,\"ed@example.com\",\"asked, twice\"\n";
    let (status, result) = post_raw(&stack, Some("text/csv; charset=utf-8"), csv).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["added"], 3, "{result}");
    assert_eq!(result["already_present"], 0, "{result}");
    assert_eq!(
        result["rejected_rows"],
        json!([
            {"row": 3, "reason": "address is empty"},
            {"row": 4, "reason": "row has 2 fields but the header has 3"},
        ])
    );
    assert_eq!(
        entries(&stack).await,
        pairs(&[
            ("ana@example.com", "complaint"),
            ("bo@example.com", "opted_out"),
            ("ed@example.com", "asked, twice"),
        ])
    );
    stack.stop().await;
}

#[tokio::test]
async fn re_adding_listed_addresses_changes_nothing_and_counts_them_as_already_present() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let first =
        json!([{"address": "+15550001", "reason": "first"}, {"address": "ana@example.com"}]);
    assert_eq!(add(&stack, first).await["added"], 2);
    let before = list(&stack, "").await;
    let again = add(
        &stack,
        json!([{"address": "+1 555 0001", "reason": "second"}, {"address": "ANA@example.com", "reason": "second"}]),
    )
    .await;
    assert_eq!(
        again,
        json!({"added": 0, "already_present": 2, "rejected": 0, "rejected_rows": []})
    );
    let (status, csv_again) = post_raw(&stack, Some("text/csv"), "address\n+15550001\n").await;
    assert_eq!(status, 200, "{csv_again}");
    assert_eq!(csv_again["already_present"], 1, "{csv_again}");
    assert_eq!(list(&stack, "").await, before);
    stack.stop().await;
}

#[tokio::test]
async fn the_list_pages_in_address_order_with_a_cursor_and_filters_by_the_normalised_address() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let addresses = [
        "+15550003",
        "+15550001",
        "e@example.com",
        "+15550002",
        "d@example.com",
    ];
    let body: Vec<Value> = addresses.iter().map(|a| json!({"address": a})).collect();
    add(&stack, Value::Array(body)).await;

    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = list(&stack, &query).await;
        pages += 1;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2, "{page}");
        seen.extend(items.iter().map(|e| text(&e["address"])));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut sorted: Vec<String> = addresses.iter().map(|a| (*a).to_owned()).collect();
    sorted.sort();
    assert_eq!(seen, sorted, "every entry once, in address order");

    let found = list(&stack, "?address=E%40Example.COM").await;
    assert_eq!(found["items"].as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(found["items"][0]["address"], "e@example.com");
    let found = list(&stack, "?address=%2B1%20555%200002").await;
    assert_eq!(found["items"][0]["address"], "+15550002", "{found}");
    let none = list(&stack, "?address=f%40example.com").await;
    assert_eq!(none, json!({"items": [], "next_cursor": null}));
    // A forged cursor (`AA` decodes to a NUL) is a 422, not a database error.
    for forged in ["AA", "%2F%2F%2F"] {
        let (status, body) = stack
            .call(
                Method::GET,
                &format!("/v1/suppressions?cursor={forged}"),
                None,
            )
            .await;
        assert_eq!(status, 422, "{forged}: {body}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn deleting_an_address_by_any_spelling_removes_it_and_an_absent_one_is_404() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    add(
        &stack,
        json!([{"address": "+15550001234"}, {"address": "ana@example.com"}, {"address": "keep@example.com"}]),
    )
    .await;
    for path in [
        "/v1/suppressions/%2B1%20(555)%20000-1234",
        "/v1/suppressions/Ana@Example.COM",
    ] {
        let (status, body) = stack.call(Method::DELETE, path, None).await;
        assert_eq!(status, 204, "{path}: {body}");
    }
    assert_eq!(
        entries(&stack).await,
        pairs(&[("keep@example.com", "opted_out")])
    );
    let (status, body) = stack
        .call(Method::DELETE, "/v1/suppressions/ana@example.com", None)
        .await;
    assert_not_listed(status, &body);
    let (status, body) = stack
        .call(Method::DELETE, "/v1/suppressions/+15550009999", None)
        .await;
    assert_not_listed(status, &body);
    stack.stop().await;
}

#[tokio::test]
async fn tenants_never_see_or_delete_each_others_entries() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let globex = ApiClient {
        token: tenant_token(&stack.env.pool(), "globex").await,
        ..stack.client.clone()
    };
    add(
        &stack,
        json!([{"address": "+15550001", "reason": "acme's"}]),
    )
    .await;

    assert_eq!(list(&globex, "").await["items"], json!([]));
    assert_eq!(
        list(&globex, "?address=%2B15550001").await["items"],
        json!([])
    );
    let (status, body) = globex
        .call(Method::DELETE, "/v1/suppressions/%2B15550001", None)
        .await;
    assert_not_listed(status, &body);

    // The same address is new to globex's list, and globex removing it leaves acme's.
    let theirs = add(
        &globex,
        json!([{"address": "+15550001", "reason": "globex's"}]),
    )
    .await;
    assert_eq!(theirs["added"], 1, "{theirs}");
    let (status, body) = globex
        .call(Method::DELETE, "/v1/suppressions/%2B15550001", None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(entries(&stack).await, pairs(&[("+15550001", "acme's")]));
    assert_eq!(list(&globex, "").await["items"], json!([]));
    stack.stop().await;
}

#[tokio::test]
async fn bad_bodies_queries_and_paths_get_clear_4xx_answers() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let c = &stack.client;
    let (json, csv) = (Some("application/json"), Some("text/csv"));
    for (content_type, body, status, mentions) in [
        (Some("text/plain"), "address\n+1555\n", 415, "text/csv"),
        (None, "{\"entries\": []}", 415, "application/json"),
        (json, "{\"entries\": [", 400, "not valid JSON"),
        (json, "{}", 422, "entries"),
        (json, "{\"entries\": [{}]}", 422, "address"),
        (
            json,
            r#"{"entries": [{"address": "a", "why": 1}]}"#,
            422,
            "why",
        ),
        (
            json,
            r#"{"entries": [{"address": "a", "reason": 7}]}"#,
            422,
            "invalid type",
        ),
        (csv, "", 422, "address column"),
        (
            csv,
            "address;reason\n+1555;x\n",
            422,
            "separate columns with commas",
        ),
        (
            csv,
            "email,phone\na@b.c,+1555\n",
            422,
            "several address columns",
        ),
    ] {
        let (got, answer) = post_raw(c, content_type, body).await;
        assert_error(got, &answer, status, code_for(status), mentions);
    }
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain("address\n".encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let (got, answer) = post_raw(c, Some("text/csv"), utf16).await;
    assert_error(got, &answer, 422, "validation_failed", "UTF-16");
    let too_many: Vec<Value> = (0..100_001)
        .map(|n| json!({"address": format!("+1{n}")}))
        .collect();
    let (got, answer) = c
        .call(
            Method::POST,
            "/v1/suppressions",
            Some(json!({"entries": too_many})),
        )
        .await;
    assert_error(got, &answer, 413, "too_many_entries", "text/csv");

    for (query, mentions) in [
        ("?address=", "address is empty"),
        ("?address=%20%20", "address is empty"),
        ("?cursor=not.a.cursor", "cursor"),
        ("?cursor=_w", "cursor"),
        ("?limit=0", "limit"),
        ("?limit=501", "limit"),
        ("?colour=red", "colour"),
    ] {
        let (got, answer) = c
            .call(Method::GET, &format!("/v1/suppressions{query}"), None)
            .await;
        assert_error(got, &answer, 422, "validation_failed", mentions);
    }
    let (got, answer) = c.call(Method::DELETE, "/v1/suppressions/%20", None).await;
    assert_error(got, &answer, 422, "validation_failed", "address is empty");
    let long = format!("/v1/suppressions/{}", "a".repeat(321));
    let (got, answer) = c.call(Method::DELETE, &long, None).await;
    assert_error(got, &answer, 422, "validation_failed", "320 bytes");
    let anonymous = ApiClient {
        token: "nope".into(),
        ..c.clone()
    };
    let (got, answer) = anonymous.call(Method::GET, "/v1/suppressions", None).await;
    assert_error(got, &answer, 401, "unauthorized", "token");
    assert!(entries(&stack).await.is_empty(), "nothing was added");
    stack.stop().await;
}

#[tokio::test]
async fn a_list_over_the_import_limit_is_a_413_that_says_how_much_was_added() {
    const LIMIT: usize = 64 * 1024;
    let env = TestEnv::new().await;
    let config = ApiConfig {
        max_import_bytes: LIMIT,
        ..ApiConfig::default()
    };
    let api = RunningApi::start(env.replica("api-0"), config).await;
    let client = ApiClient {
        http: reqwest::Client::new(),
        base_url: api.base_url.clone(),
        token: tenant_token(&env.pool(), "acme").await,
    };
    // Rows are 30 bytes, so about 2,180 of the 4,000 fit in 64 KiB: the first
    // chunk of 2,000 is written before the stream (no Content-Length) passes it.
    let rows: String = (0..4_000)
        .map(|n| format!("+1555{n:07},opted out by SMS\n"))
        .collect();
    let csv = format!("address,reason\n{rows}");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = csv
        .as_bytes()
        .chunks(4096)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let streamed = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let (status, body) = post_raw(&client, Some("text/csv"), streamed).await;
    assert_error(
        status,
        &body,
        413,
        "payload_too_large",
        "the first 2000 entries were added",
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM suppressions")
        .fetch_one(&env.pool())
        .await
        .expect("count");
    assert_eq!(stored, 2_000);

    let (status, body) = post_raw(&client, Some("text/csv"), csv.clone()).await;
    assert_error(status, &body, 413, "payload_too_large", "byte limit");
    let big: Vec<Value> = (0..3_000)
        .map(|n| json!({"address": format!("+1555{n:07}")}))
        .collect();
    let (status, body) = client
        .call(
            Method::POST,
            "/v1/suppressions",
            Some(json!({"entries": big})),
        )
        .await;
    assert_error(status, &body, 413, "payload_too_large", "byte limit");
    api.stop().await;
    env.cleanup().await;
}

/// Runs the built `herald` binary against `stack` with only the API settings.
async fn herald(stack: &Stack, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_clear()
        .env("HERALD_LOG", "warn")
        .env("HERALD_API_URL", &stack.api.base_url)
        .env("HERALD_TOKEN", &stack.token)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("herald runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json_out(run: &(i32, String, String)) -> Value {
    assert_eq!(run.0, 0, "{run:?}");
    serde_json::from_str(&run.1).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"))
}

#[tokio::test]
async fn the_cli_adds_lists_and_deletes_suppressions() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let added = json_out(
        &herald(
            &stack,
            &[
                "suppression",
                "add",
                "--json",
                "+1 555 0001",
                "Ana@Example.com",
                "--reason",
                "asked",
            ],
        )
        .await,
    );
    assert_eq!(added["added"], 2, "{added}");
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), "phone,reason\n+15550002,\n+15550001,dup\n").expect("write csv");
    let path = file.path().to_str().expect("utf-8 path");
    let from_file =
        json_out(&herald(&stack, &["suppression", "add", "--json", "--file", path]).await);
    assert_eq!(
        (
            from_file["added"].clone(),
            from_file["already_present"].clone()
        ),
        (json!(1), json!(1))
    );

    let all = json_out(
        &herald(
            &stack,
            &["suppression", "list", "--json", "--limit", "1", "--all"],
        )
        .await,
    );
    let listed: Vec<String> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| text(&e["address"]))
        .collect();
    assert_eq!(listed, ["+15550001", "+15550002", "ana@example.com"]);
    let one = json_out(
        &herald(
            &stack,
            &[
                "suppression",
                "list",
                "--json",
                "--address",
                "ANA@example.com",
            ],
        )
        .await,
    );
    assert_eq!(one["items"][0]["reason"], "asked", "{one}");

    let (code, stdout, _) = herald(&stack, &["suppression", "delete", "+1 555 0001"]).await;
    assert_eq!(code, 0, "{stdout}");
    let (code, _, stderr) = herald(&stack, &["suppression", "delete", "+1 555 0001"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not_found, HTTP 404"), "{stderr}");
    let (code, _, stderr) = herald(&stack, &["suppression", "add"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(entries(&stack).await.len(), 2);
    stack.stop().await;
}
