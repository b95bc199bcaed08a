//! The HTTP surface over a real api, Postgres and NATS: campaign CRUD and listing,
//! ETags and redaction, duplication, JSON and streamed CSV imports, the recipient
//! ledger, bulk transitions, OpenAPI and health, unknown routes, and tenant
//! isolation on every campaign route.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// Any request with a raw body and content type; `(status, JSON or text body)`.
async fn send(
    stack: &Stack,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut request = stack
        .http
        .request(method, stack.url(path))
        .bearer_auth(&stack.token)
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

/// POSTs `chunks` with `Transfer-Encoding: chunked`, writing each chunk as it is
/// produced (reqwest here is built without its `stream` feature). Returns the
/// status, the JSON body and the number of body bytes sent.
async fn post_chunked(
    stack: &Stack,
    path: &str,
    content_type: &str,
    chunks: impl Iterator<Item = Vec<u8>>,
) -> (u16, Value, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = stack.api.base_url.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        stack.token
    );
    socket.write_all(head.as_bytes()).await.expect("head sent");
    let mut sent = 0;
    for chunk in chunks {
        sent += chunk.len();
        socket
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .expect("chunk size sent");
        socket.write_all(&chunk).await.expect("chunk sent");
        socket.write_all(b"\r\n").await.expect("chunk end sent");
    }
    socket
        .write_all(b"0\r\n\r\n")
        .await
        .expect("last chunk sent");
    let mut response = Vec::new();
    socket
        .read_to_end(&mut response)
        .await
        .expect("response read");
    let text = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "expected a Content-Length response: {head}"
    );
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
        sent,
    )
}

async fn import_csv(stack: &Stack, id: Uuid, csv: impl Into<reqwest::Body>) -> (u16, Value) {
    send(
        stack,
        Method::POST,
        &format!("/v1/campaigns/{id}/recipients"),
        Some("text/csv"),
        csv,
    )
    .await
}

async fn import_json(stack: &Stack, id: Uuid, recipients: Value) -> (u16, Value) {
    stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{id}/recipients"),
            Some(json!({ "recipients": recipients })),
        )
        .await
}

async fn create_named(stack: &Stack, name: &str) -> Value {
    let (status, body) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"name": name, "channel": {"provider": "log"}, "template": {"body": "Hi {{ name }}"}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

fn uuid_of(body: &Value) -> Uuid {
    body["id"].as_str().expect("id").parse().expect("uuid")
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// Follows `next_cursor` from `first` to the last page; the ids in order, and the
/// number of pages.
async fn all_pages(stack: &Stack, first: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut path = first.to_owned();
    loop {
        let (status, body) = stack.call(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        pages += 1;
        assert!(pages < 1000, "pagination never ends");
        items.extend(body["items"].as_array().expect("items").iter().cloned());
        match body["next_cursor"].as_str() {
            Some(cursor) => {
                let sep = if first.contains('?') { '&' } else { '?' };
                path = format!("{first}{sep}cursor={cursor}");
            }
            None => {
                assert!(body["next_cursor"].is_null(), "{body}");
                return (items, pages);
            }
        }
    }
}

fn ids(items: &[Value]) -> Vec<Uuid> {
    items.iter().map(uuid_of).collect()
}

async fn set_ledger_status(stack: &Stack, campaign: Uuid, status: &str, every_nth: i64) {
    sqlx::query(
        "UPDATE recipients SET status = $2 WHERE campaign_id = $1 AND id % $3 = 0 AND status = 'pending'",
    )
    .bind(campaign)
    .bind(status)
    .bind(every_nth)
    .execute(&stack.env.pool())
    .await
    .expect("ledger updated");
}

#[tokio::test]
async fn created_campaigns_are_drafts_and_the_list_pages_newest_first_by_cursor_with_a_status_filter()
 {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let mut created = Vec::new();
    for i in 0..5 {
        let body = create_named(&stack, &format!("campaign {i}")).await;
        assert_eq!(body["status"], "draft");
        assert_eq!(body["version"], 1);
        assert_eq!(body["run_epoch"], 0);
        assert_eq!(body["name"], format!("campaign {i}"));
        assert_eq!(body["counters"]["total"], 0);
        created.push(uuid_of(&body));
    }
    for id in [created[1], created[3]] {
        assert_eq!(stack.transition(id, "start").await.0, 200);
    }
    let newest_first: Vec<Uuid> = created.iter().rev().copied().collect();

    let (items, pages) = all_pages(&stack, "/v1/campaigns?limit=2").await;
    assert_eq!(pages, 3, "5 campaigns at 2 a page");
    assert_eq!(ids(&items), newest_first, "each seen once, newest first");
    let (items, _) = all_pages(&stack, "/v1/campaigns").await;
    assert_eq!(ids(&items), newest_first, "default limit holds them all");

    let (drafts, pages) = all_pages(&stack, "/v1/campaigns?status=draft&limit=1").await;
    assert_eq!(pages, 3);
    assert_eq!(ids(&drafts), [created[4], created[2], created[0]]);
    assert!(drafts.iter().all(|c| c["status"] == "draft"));
    let (sending, _) = all_pages(&stack, "/v1/campaigns?status=sending&limit=2").await;
    assert_eq!(ids(&sending), [created[3], created[1]]);
    let (paused, pages) = all_pages(&stack, "/v1/campaigns?status=paused").await;
    assert!(paused.is_empty());
    assert_eq!(pages, 1);

    for bad in [
        "/v1/campaigns?cursor=not-a-cursor!",
        "/v1/campaigns?cursor=aGVsbG8", // base64 of "hello"
        "/v1/campaigns?limit=0",
        "/v1/campaigns?limit=501",
        "/v1/campaigns?limit=-3",
        "/v1/campaigns?limit=ten",
        "/v1/campaigns?status=asleep",
        "/v1/campaigns?colour=blue",
    ] {
        let (status, body) = stack.call(Method::GET, bad, None).await;
        assert_error(status, &body, 422, "validation_failed");
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_campaign_shows_its_counters_and_its_version_as_etag_and_never_a_webhook_secret_in_clear()
{
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let secret = "s3cr3t-never-shown";
    let channel =
        json!({"provider": "webhook", "url": "http://127.0.0.1:9/hook", "secret": secret});
    let (status, created) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"name": "hooked", "channel": channel, "template": {"body": "x"}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["channel"]["secret"], "***");
    assert_eq!(created["channel"]["url"], "http://127.0.0.1:9/hook");
    assert!(!created.to_string().contains(secret));
    let id = uuid_of(&created);
    stack.import(id, 3).await;

    let get = |expect_version: i64| {
        let stack = &stack;
        async move {
            let response = stack
                .http
                .get(stack.url(&format!("/v1/campaigns/{id}")))
                .bearer_auth(&stack.token)
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status().as_u16(), 200);
            let etag = response
                .headers()
                .get("etag")
                .expect("an ETag")
                .to_str()
                .unwrap()
                .to_owned();
            let text = response.text().await.unwrap();
            assert!(!text.contains(secret), "secret leaked: {text}");
            let body: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["version"], expect_version);
            assert_eq!(etag, format!("\"{expect_version}\""));
            assert_eq!(body["channel"]["secret"], "***");
            body
        }
    };
    let body = get(1).await;
    assert_eq!(
        body["counters"],
        json!({"total": 3, "pending": 3, "sending": 0, "sent": 0, "failed": 0, "skipped": 0})
    );
    assert_counters_match_ledger(&stack.env.pool(), id, &body).await;

    // The ETag works as If-Match, and moves with every change.
    let response = stack
        .http
        .post(stack.url(&format!("/v1/campaigns/{id}/start")))
        .bearer_auth(&stack.token)
        .header("If-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let text = response.text().await.unwrap();
    assert!(!text.contains(secret), "secret leaked: {text}");
    let body = get(2).await;
    assert_eq!(body["status"], "sending");

    // Nor in the list, the events or the stored history shown to clients.
    for path in [
        "/v1/campaigns".to_owned(),
        format!("/v1/campaigns/{id}/events"),
    ] {
        let (status, body) = stack.call(Method::GET, &path, None).await;
        assert_eq!(status, 200);
        assert!(!body.to_string().contains(secret), "{path}: {body}");
    }
    let (_, list) = stack.call(Method::GET, "/v1/campaigns", None).await;
    assert_eq!(list["items"][0]["channel"]["secret"], "***");
    // The secret itself is kept: the sender needs it.
    let stored: Value = sqlx::query_scalar(
        "SELECT ch.config FROM campaigns c JOIN channels ch ON ch.id = c.channel_id WHERE c.id = $1",
    )
        .bind(id)
        .fetch_one(&stack.env.pool())
        .await
        .unwrap();
    assert_eq!(stored["secret"], secret);
    stack.stop().await;
}

#[tokio::test]
async fn only_drafts_can_be_edited_or_deleted() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let draft = stack.create_campaign(json!({"provider": "log"})).await;
    let path = format!("/v1/campaigns/{draft}");

    let (status, body) = stack
        .call(
            Method::PATCH,
            &path,
            Some(json!({"name": "renamed", "template": {"body": "Hello {{ name }}"}, "rate_limit_per_second": 5})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "renamed");
    assert_eq!(body["template"]["body"], "Hello {{ name }}");
    assert_eq!(body["rate_limit_per_second"], 5);
    assert_eq!(body["version"], 2, "an edit bumps the version");
    assert_eq!(body["status"], "draft");
    let fetched = stack.campaign(draft).await;
    assert_eq!(fetched["name"], "renamed");
    assert_eq!(fetched["version"], 2);
    let (_, events) = stack
        .call(Method::GET, &format!("/v1/campaigns/{draft}/events"), None)
        .await;
    let types: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["created", "updated"], "every version has its event");

    // A stale If-Match is refused; a current one passes.
    let patch_with = |if_match: &'static str, body: Value| {
        let stack = &stack;
        let path = path.clone();
        async move {
            let response = stack
                .http
                .patch(stack.url(&path))
                .bearer_auth(&stack.token)
                .header("If-Match", if_match)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = patch_with("\"1\"", json!({"name": "stale"})).await;
    assert_error(status, &body, 412, "version_mismatch");
    assert_eq!(body["error"]["current_version"], 2);
    let (status, body) = patch_with("\"2\"", json!({"name": "fresh"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 3);

    // Invalid edits.
    for bad in [
        json!({"name": "  "}),
        json!({"template": {"body": "{{ oops"}}),
        json!({"channel": {"provider": "webhook", "url": "ftp://x"}}),
        json!({"rate_limit_per_second": 0}),
        json!({"status": "sending"}),
    ] {
        let (status, body) = stack.call(Method::PATCH, &path, Some(bad.clone())).await;
        assert_error(status, &body, 422, "validation_failed");
    }
    assert_eq!(
        stack.campaign(draft).await["version"],
        3,
        "refused edits change nothing"
    );

    // Started campaigns are frozen.
    let started = stack.create_campaign(json!({"provider": "log"})).await;
    assert_eq!(stack.transition(started, "start").await.0, 200);
    let started_path = format!("/v1/campaigns/{started}");
    let (status, body) = stack
        .call(
            Method::PATCH,
            &started_path,
            Some(json!({"name": "too late"})),
        )
        .await;
    assert_error(status, &body, 409, "not_draft");
    assert_eq!(body["error"]["from"], "sending");
    let (status, body) = stack.call(Method::DELETE, &started_path, None).await;
    assert_error(status, &body, 409, "not_draft");
    let still = stack.campaign(started).await;
    assert_eq!(still["name"], "test campaign");
    assert_eq!(still["status"], "sending");

    // A draft is deleted for good.
    let (status, body) = stack.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = stack.call(Method::GET, &path, None).await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = stack.call(Method::DELETE, &path, None).await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = stack
        .call(Method::PATCH, &path, Some(json!({"name": "ghost"})))
        .await;
    assert_error(status, &body, 404, "not_found");
    stack.stop().await;
}

#[tokio::test]
async fn duplicating_a_campaign_makes_a_new_draft_with_the_same_recipients_all_pending() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let source = stack.create_campaign(json!({"provider": "log"})).await;
    stack.import(source, 12).await;
    assert_eq!(stack.transition(source, "start").await.0, 200);
    // Part of the source has been delivered or failed already.
    set_ledger_status(&stack, source, "sent", 2).await;
    set_ledger_status(&stack, source, "failed", 3).await;

    let (status, copy) = stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{source}/duplicate"),
            None,
        )
        .await;
    assert_eq!(status, 201, "{copy}");
    let copy_id = uuid_of(&copy);
    assert_ne!(copy_id, source);
    assert_eq!(copy["status"], "draft");
    assert_eq!(copy["version"], 1);
    assert_eq!(copy["run_epoch"], 0);
    assert_eq!(copy["name"], "test campaign (copy)");
    assert_eq!(copy["template"]["body"], "Hi {{ name }}");
    assert_eq!(
        copy["counters"],
        json!({"total": 12, "pending": 12, "sending": 0, "sent": 0, "failed": 0, "skipped": 0})
    );
    assert_counters_match_ledger(&stack.env.pool(), copy_id, &copy).await;

    let (source_rows, _) = all_pages(&stack, &format!("/v1/campaigns/{source}/recipients")).await;
    let (copy_rows, _) = all_pages(&stack, &format!("/v1/campaigns/{copy_id}/recipients")).await;
    let key = |rows: &[Value]| -> Vec<(String, Value)> {
        rows.iter()
            .map(|r| {
                (
                    r["address"].as_str().unwrap().to_owned(),
                    r["variables"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(key(&copy_rows), key(&source_rows), "same rows, same order");
    assert!(
        copy_rows
            .iter()
            .all(|r| r["status"] == "pending" && r["attempts"] == 0)
    );
    assert!(source_rows.iter().any(|r| r["status"] != "pending"));

    let (_, events) = stack
        .call(
            Method::GET,
            &format!("/v1/campaigns/{copy_id}/events"),
            None,
        )
        .await;
    let types: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["created"]);
    // The copy is independent: it can be edited and started on its own.
    assert_eq!(stack.transition(copy_id, "start").await.0, 200);
    assert_eq!(stack.campaign(source).await["counters"]["total"], 12);

    let (status, body) = stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{}/duplicate", Uuid::new_v4()),
            None,
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    stack.stop().await;
}

#[tokio::test]
async fn json_imports_report_accepted_duplicate_and_rejected_rows_with_reasons() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    let long = "9".repeat(321);
    let recipients = json!([
        {"address": "+100"},                                           // 1 accepted
        {"address": " +101 ", "variables": {"name": "Bo"}},            // 2 accepted, trimmed
        {"address": "+100", "variables": {"name": "again"}},           // 3 duplicate
        {"address": ""},                                               // 4 empty
        {"address": "   "},                                            // 5 empty once trimmed
        {"address": "+102", "variables": [1, 2]},                      // 6 not an object
        {"address": "+103", "variables": "name=x"},                    // 7 not an object
        {"address": "+104", "variables": null},                        // 8 accepted, {}
        {"address": "+1\u{7}05"},                                      // 9 control character
        {"address": long},                                             // 10 too long
        {"address": "+106", "variables": {"name": "Cy", "n": 3}},      // 11 accepted
    ]);
    let (status, body) = import_json(&stack, id, recipients.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 4);
    assert_eq!(body["duplicates"], 1);
    assert_eq!(body["rejected"], 6);
    let rejected: Vec<(u64, String)> = body["rejected_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["row"].as_u64().unwrap(),
                r["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (4, "address is empty".to_owned()),
            (5, "address is empty".to_owned()),
            (6, "variables must be a JSON object".to_owned()),
            (7, "variables must be a JSON object".to_owned()),
            (9, "address contains control characters".to_owned()),
            (10, "address is longer than 320 bytes".to_owned()),
        ]
    );
    let campaign = stack.campaign(id).await;
    assert_eq!(campaign["counters"]["total"], 4);
    assert_eq!(campaign["counters"]["pending"], 4);
    assert_counters_match_ledger(&stack.env.pool(), id, &campaign).await;
    let (rows, _) = all_pages(&stack, &format!("/v1/campaigns/{id}/recipients")).await;
    let stored: HashMap<&str, &Value> = rows
        .iter()
        .map(|r| (r["address"].as_str().unwrap(), &r["variables"]))
        .collect();
    assert_eq!(stored.len(), 4);
    assert_eq!(
        stored["+100"],
        &json!({}),
        "the first of two duplicates wins"
    );
    assert_eq!(stored["+101"], &json!({"name": "Bo"}));
    assert_eq!(stored["+104"], &json!({}));
    assert_eq!(stored["+106"], &json!({"name": "Cy", "n": 3}));

    // Importing the same list again adds nothing.
    let (status, body) = import_json(&stack, id, recipients).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["duplicates"], 5);
    assert_eq!(body["rejected"], 6);
    assert_eq!(stack.campaign(id).await["counters"]["total"], 4);

    // An empty list is a valid, empty import.
    let (status, body) = import_json(&stack, id, json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"accepted": 0, "duplicates": 0, "rejected": 0, "rejected_rows": []})
    );

    // A body of the wrong shape is refused as a whole, and nothing is imported.
    for bad in [
        json!({"recipients": [{"address": "+200"}, {"variables": {}}]}),
        json!({"recipients": [{"address": 5}]}),
        json!({"recipients": "+200"}),
        json!({"recipients": [{"address": "+200", "tags": []}]}),
        json!({"people": []}),
    ] {
        let (status, body) = stack
            .call(
                Method::POST,
                &format!("/v1/campaigns/{id}/recipients"),
                Some(bad),
            )
            .await;
        assert_error(status, &body, 422, "validation_failed");
    }
    let (status, body) = send(
        &stack,
        Method::POST,
        &format!("/v1/campaigns/{id}/recipients"),
        Some("application/json"),
        "{\"recipients\": [",
    )
    .await;
    assert_error(status, &body, 400, "bad_request");
    assert_eq!(stack.campaign(id).await["counters"]["total"], 4);
    stack.stop().await;
}

#[tokio::test]
async fn csv_imports_report_accepted_duplicate_and_rejected_rows_with_reasons() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    let mut csv: Vec<u8> = Vec::new();
    csv.extend_from_slice("\u{feff}address,name,city\r\n".as_bytes()); // Excel's BOM
    csv.extend_from_slice(b"+100,Ann,Oslo\r\n"); // 1 accepted
    csv.extend_from_slice(b"+101,Bob,Rome\n"); // 2 accepted
    csv.extend_from_slice(b"+100,Ann again,Oslo\n"); // 3 duplicate
    csv.extend_from_slice(b"+102,Cy\n"); // 4 too few fields
    csv.extend_from_slice(b"+103,Di,Lima,extra\n"); // 5 too many fields
    csv.extend_from_slice(b"+104,\xff\xfe,Paris\n"); // 6 invalid UTF-8
    csv.extend_from_slice(b",Eve,Kyiv\n"); // 7 empty address
    csv.extend_from_slice(b"\"+105\",\"Fay, Jr.\",\"S\xc3\xa3o Paulo\"\n"); // 8 accepted, quoted
    csv.extend_from_slice(b"  +106  ,Gus,Bern"); // 9 accepted, trimmed, no final newline
    let (status, body) = import_csv(&stack, id, csv).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 4, "{body}");
    assert_eq!(body["duplicates"], 1, "{body}");
    assert_eq!(body["rejected"], 4, "{body}");
    let rejected: Vec<(u64, String)> = body["rejected_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["row"].as_u64().unwrap(),
                r["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (4, "row has 2 fields but the header has 3".to_owned()),
            (5, "row has 4 fields but the header has 3".to_owned()),
            (6, "row is not valid UTF-8".to_owned()),
            (7, "address is empty".to_owned()),
        ]
    );
    let campaign = stack.campaign(id).await;
    assert_eq!(campaign["counters"]["total"], 4);
    assert_counters_match_ledger(&stack.env.pool(), id, &campaign).await;
    let (rows, _) = all_pages(&stack, &format!("/v1/campaigns/{id}/recipients")).await;
    let stored: HashMap<&str, &Value> = rows
        .iter()
        .map(|r| (r["address"].as_str().unwrap(), &r["variables"]))
        .collect();
    assert_eq!(
        stored["+100"],
        &json!({"name": "Ann", "city": "Oslo"}),
        "other columns become variables"
    );
    assert_eq!(stored["+101"], &json!({"name": "Bob", "city": "Rome"}));
    assert_eq!(
        stored["+105"],
        &json!({"name": "Fay, Jr.", "city": "São Paulo"})
    );
    assert_eq!(stored["+106"], &json!({"name": "Gus", "city": "Bern"}));

    // A charset parameter is fine; a header-only file imports nothing.
    let (status, body) = send(
        &stack,
        Method::POST,
        &format!("/v1/campaigns/{id}/recipients"),
        Some("text/csv; charset=utf-8"),
        "name,address\nHal,+107\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    let (status, body) = import_csv(&stack, id, "address\n").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 0);

    // No address column, or no header at all.
    for bad in ["mail,name\nx@y.z,X\n", "", "\n"] {
        let (status, body) = import_csv(&stack, id, bad).await;
        assert_error(status, &body, 422, "validation_failed");
    }
    // Other media types.
    for content_type in [Some("text/plain"), Some("application/xml"), None] {
        let (status, body) = send(
            &stack,
            Method::POST,
            &format!("/v1/campaigns/{id}/recipients"),
            content_type,
            "address\n+108\n",
        )
        .await;
        assert_error(status, &body, 415, "unsupported_media_type");
    }
    assert_eq!(stack.campaign(id).await["counters"]["total"], 5);

    // Once started, a campaign takes no more recipients, in either format.
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let (status, body) = import_csv(&stack, id, "address\n+109\n").await;
    assert_error(status, &body, 409, "not_importable");
    assert_eq!(body["error"]["from"], "sending");
    let (status, body) = import_json(&stack, id, json!([{"address": "+109"}])).await;
    assert_error(status, &body, 409, "not_importable");
    assert_eq!(stack.campaign(id).await["counters"]["total"], 5);
    stack.stop().await;
}

#[tokio::test]
async fn a_streamed_csv_of_two_hundred_thousand_rows_imports_every_row_in_one_request() {
    const ROWS: usize = 200_000;
    const ROWS_PER_CHUNK: usize = 5_000;
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    // Generated while it is sent, as chunks of a body without Content-Length.
    let chunks = (0..ROWS).step_by(ROWS_PER_CHUNK).map(|start| {
        let mut chunk = String::with_capacity(ROWS_PER_CHUNK * 30);
        if start == 0 {
            chunk.push_str("address,name,segment\n");
        }
        for n in start..(start + ROWS_PER_CHUNK).min(ROWS) {
            chunk.push_str(&format!("+1555{n:08},r{n},s{}\n", n % 7));
        }
        chunk.into_bytes()
    });
    let started = Instant::now();
    let (status, body, bytes) = post_chunked(
        &stack,
        &format!("/v1/campaigns/{id}/recipients"),
        "text/csv",
        chunks,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], ROWS as u64, "{body}");
    assert_eq!(body["duplicates"], 0);
    assert_eq!(body["rejected"], 0);
    println!("imported {ROWS} CSV rows ({bytes} bytes) in {took:?}");
    let campaign = stack.campaign(id).await;
    assert_eq!(campaign["counters"]["total"], ROWS as u64);
    assert_eq!(campaign["counters"]["pending"], ROWS as u64);
    assert_counters_match_ledger(&stack.env.pool(), id, &campaign).await;
    let (_, last) = stack
        .call(
            Method::GET,
            &format!(
                "/v1/campaigns/{id}/recipients?limit=1&cursor={}",
                i64::MAX - 1
            ),
            None,
        )
        .await;
    assert!(last["items"].as_array().unwrap().is_empty());
    let (_, first) = stack
        .call(
            Method::GET,
            &format!("/v1/campaigns/{id}/recipients?limit=1"),
            None,
        )
        .await;
    assert_eq!(first["items"][0]["address"], "+155500000000");
    assert_eq!(
        first["items"][0]["variables"],
        json!({"name": "r0", "segment": "s0"})
    );
    stack.stop().await;
}

#[tokio::test]
async fn the_recipient_ledger_pages_by_cursor_and_filters_by_status() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    stack.import(id, 25).await;
    set_ledger_status(&stack, id, "sent", 3).await;
    set_ledger_status(&stack, id, "failed", 5).await;
    let ledger = ledger_counts(&stack.env.pool(), id).await;
    assert!(ledger["sent"] > 0 && ledger["failed"] > 0 && ledger["pending"] > 0);

    let base = format!("/v1/campaigns/{id}/recipients");
    let (rows, pages) = all_pages(&stack, &format!("{base}?limit=10")).await;
    assert_eq!(pages, 3);
    assert_eq!(rows.len(), 25);
    let row_ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(
        row_ids.windows(2).all(|w| w[0] < w[1]),
        "ledger order, each row once"
    );
    let addresses: HashSet<&str> = rows
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    let expected: HashSet<String> = (0..25).map(|n| format!("+1555{n:08}")).collect();
    assert_eq!(
        addresses,
        expected.iter().map(String::as_str).collect::<HashSet<_>>()
    );
    let first = &rows[0];
    for field in [
        "id",
        "address",
        "variables",
        "status",
        "attempts",
        "last_error",
        "provider_message_id",
        "sent_at",
    ] {
        assert!(first.get(field).is_some(), "{field} missing: {first}");
    }

    for status in ["pending", "sent", "failed", "sending", "skipped"] {
        let (rows, _) = all_pages(&stack, &format!("{base}?status={status}&limit=4")).await;
        assert_eq!(
            rows.len() as i64,
            ledger.get(status).copied().unwrap_or(0),
            "{status}"
        );
        assert!(rows.iter().all(|r| r["status"] == status), "{status}");
    }

    for bad in [
        "?status=delivered",
        "?status=PENDING",
        "?cursor=abc",
        "?limit=0",
        "?limit=1001",
        "?order=desc",
    ] {
        let (status, body) = stack.call(Method::GET, &format!("{base}{bad}"), None).await;
        assert_error(status, &body, 422, "validation_failed");
    }
    let (status, body) = stack
        .call(
            Method::GET,
            &format!("/v1/campaigns/{}/recipients", Uuid::new_v4()),
            None,
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    stack.stop().await;
}

#[tokio::test]
async fn a_bulk_pause_answers_for_every_id_on_its_own() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let sending = stack.create_campaign(json!({"provider": "log"})).await;
    assert_eq!(stack.transition(sending, "start").await.0, 200);
    let draft = stack.create_campaign(json!({"provider": "log"})).await;
    let unknown = Uuid::new_v4();
    // Another tenant's sending campaign.
    let other = tenant_token(&stack.env.pool(), "globex").await;
    let (_, foreign) = call(
        &stack.http,
        Method::POST,
        &stack.url("/v1/campaigns"),
        &other,
        Some(json!({"name": "theirs", "channel": {"provider": "log"}, "template": {"body": "x"}})),
    )
    .await;
    let foreign = uuid_of(&foreign);
    let (status, _) = call(
        &stack.http,
        Method::POST,
        &stack.url(&format!("/v1/campaigns/{foreign}/start")),
        &other,
        None,
    )
    .await;
    assert_eq!(status, 200);

    let (status, body) = stack
        .call(
            Method::POST,
            "/v1/campaigns/bulk/pause",
            Some(json!({"ids": [sending, draft, unknown, foreign]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 4);
    let result_ids: Vec<Uuid> = results.iter().map(uuid_of).collect();
    assert_eq!(
        result_ids,
        [sending, draft, unknown, foreign],
        "in request order"
    );
    assert_eq!(results[0]["ok"], true);
    assert_eq!(results[0]["status"], "paused");
    assert!(results[0].get("error").is_none());
    assert_eq!(results[1]["ok"], false);
    assert_eq!(results[1]["error"]["code"], "invalid_transition");
    assert_eq!(results[1]["error"]["from"], "draft");
    assert_eq!(results[1]["error"]["to"], "paused");
    for result in &results[2..] {
        assert_eq!(result["ok"], false);
        assert_eq!(result["error"]["code"], "not_found");
        assert!(result.get("status").is_none());
    }
    assert_eq!(stack.campaign(sending).await["status"], "paused");
    assert_eq!(stack.campaign(draft).await["status"], "draft");
    let (_, theirs) = call(
        &stack.http,
        Method::GET,
        &stack.url(&format!("/v1/campaigns/{foreign}")),
        &other,
        None,
    )
    .await;
    assert_eq!(
        theirs["status"], "sending",
        "another tenant's campaign is untouched"
    );

    // Resume and stop go the same way.
    let (_, body) = stack
        .call(
            Method::POST,
            "/v1/campaigns/bulk/resume",
            Some(json!({"ids": [sending]})),
        )
        .await;
    assert_eq!(body["results"][0]["status"], "sending");
    let (_, body) = stack
        .call(
            Method::POST,
            "/v1/campaigns/bulk/stop",
            Some(json!({"ids": [sending, sending]})),
        )
        .await;
    assert_eq!(body["results"][0]["ok"], true);
    assert_eq!(body["results"][0]["status"], "stopped");
    assert_eq!(body["results"][1]["error"]["code"], "invalid_transition");

    let too_many: Vec<Uuid> = (0..1001).map(|_| Uuid::new_v4()).collect();
    for bad in [
        json!({"ids": []}),
        json!({"ids": too_many}),
        json!({"ids": ["nope"]}),
    ] {
        let (status, body) = stack
            .call(Method::POST, "/v1/campaigns/bulk/pause", Some(bad))
            .await;
        assert_error(status, &body, 422, "validation_failed");
    }
    let (status, body) = stack
        .call(
            Method::POST,
            "/v1/campaigns/bulk/start",
            Some(json!({"ids": [draft]})),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    assert_eq!(stack.campaign(draft).await["status"], "draft");
    stack.stop().await;
}

#[tokio::test]
async fn the_openapi_document_and_the_health_endpoints_answer() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let anonymous = |path: &'static str| {
        let stack = &stack;
        async move {
            let response = stack.http.get(stack.url(path)).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, doc) = anonymous("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string());
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/v1/campaigns",
        "/v1/campaigns/{id}",
        "/v1/campaigns/{id}/{action}",
        "/v1/campaigns/{id}/duplicate",
        "/v1/campaigns/{id}/events",
        "/v1/campaigns/{id}/recipients",
        "/v1/campaigns/bulk/{action}",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the document");
    }
    assert!(paths["/v1/campaigns"].get("post").is_some());
    assert!(paths["/v1/campaigns"].get("get").is_some());
    assert!(paths["/v1/campaigns/{id}"].get("patch").is_some());
    assert!(paths["/v1/campaigns/{id}"].get("delete").is_some());
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for schema in ["CampaignView", "ErrorBody", "ImportResult", "BulkResponse"] {
        assert!(schemas.contains_key(schema), "{schema} missing");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Every $ref points at a schema the document defines.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling $ref to {name}");
    }

    let (status, body) = anonymous("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    // The api provisions its streams in the background right after it starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = anonymous("/readyz").await;
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        body,
        json!({"status": "ready", "postgres": "ok", "nats": "ok"})
    );
    stack.stop().await;
}

#[tokio::test]
async fn unknown_routes_answer_404_with_the_json_error_shape() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    for (method, path) in [
        (Method::GET, "/".to_owned()),
        (Method::GET, "/nope".to_owned()),
        (Method::GET, "/v1".to_owned()),
        (Method::GET, "/v2/campaigns".to_owned()),
        (Method::POST, "/v1/recipients".to_owned()),
        (Method::GET, format!("/v1/campaigns/{id}/recipients/1")),
        (Method::POST, format!("/v1/campaigns/{id}/explode")),
        (Method::POST, format!("/v1/campaigns/{id}/Start")),
        (Method::GET, "/v1/campaigns/not-a-uuid".to_owned()),
        (Method::POST, "/v1/campaigns/not-a-uuid/start".to_owned()),
        (Method::POST, "/v1/campaigns/bulk/start".to_owned()),
    ] {
        let (status, body) = stack.call(method.clone(), &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        let error = body["error"].as_object().unwrap_or_else(|| {
            panic!("{method} {path}: not the JSON error shape: {body}");
        });
        assert_eq!(error["code"], "not_found", "{method} {path}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}: {body}"
        );
    }
    // A known path with the wrong method: 405, same shape, with `Allow`.
    for (method, path) in [
        (Method::GET, format!("/v1/campaigns/{id}/start")),
        (Method::PUT, format!("/v1/campaigns/{id}")),
        (Method::DELETE, "/v1/campaigns".to_owned()),
        (Method::PUT, format!("/v1/campaigns/{id}/recipients")),
        (Method::POST, "/healthz".to_owned()),
    ] {
        let response = stack
            .http
            .request(method.clone(), stack.url(&path))
            .bearer_auth(&stack.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405, "{method} {path}");
        assert!(
            response.headers().contains_key("allow"),
            "{method} {path}: 405 without Allow"
        );
        let body: Value = response.json().await.unwrap_or_else(|e| {
            panic!("{method} {path}: 405 without the JSON error shape: {e}");
        });
        assert_error(405, &body, 405, "method_not_allowed");
    }
    // Without a token too: an unknown route is not an auth question.
    let response = stack.http.get(stack.url("/nope")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    // The campaign is untouched by the bogus action.
    assert_eq!(stack.campaign(id).await["version"], 1);
    stack.stop().await;
}

#[tokio::test]
async fn another_tenant_sees_no_campaigns_and_gets_404_on_every_route_of_a_foreign_campaign() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    stack.import(id, 3).await;
    let other = tenant_token(&stack.env.pool(), "globex").await;
    let as_other =
        |method: Method, path: String, content_type: Option<&'static str>, body: Option<String>| {
            let stack = &stack;
            let other = &other;
            async move {
                let mut request = stack
                    .http
                    .request(method, stack.url(&path))
                    .bearer_auth(other);
                if let Some(content_type) = content_type {
                    request = request.header("content-type", content_type);
                }
                if let Some(body) = body {
                    request = request.body(body);
                }
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let text = response.text().await.unwrap();
                (
                    status,
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
                )
            }
        };

    let (status, body) = as_other(Method::GET, "/v1/campaigns".into(), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"items": [], "next_cursor": null}));
    let (status, body) =
        as_other(Method::GET, "/v1/campaigns?status=draft".into(), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["items"], json!([]));

    let json_type = Some("application/json");
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut routes = vec![
        (Method::GET, format!("/v1/campaigns/{id}"), None, None),
        (
            Method::PATCH,
            format!("/v1/campaigns/{id}"),
            json_type,
            Some(r#"{"name": "hijacked"}"#.to_owned()),
        ),
        (Method::DELETE, format!("/v1/campaigns/{id}"), None, None),
        (
            Method::POST,
            format!("/v1/campaigns/{id}/duplicate"),
            None,
            None,
        ),
        (
            Method::GET,
            format!("/v1/campaigns/{id}/events"),
            None,
            None,
        ),
        (
            Method::GET,
            format!("/v1/campaigns/{id}/recipients"),
            None,
            None,
        ),
        (
            Method::GET,
            format!("/v1/campaigns/{id}/recipients?status=pending&limit=1"),
            None,
            None,
        ),
        (
            Method::POST,
            format!("/v1/campaigns/{id}/recipients"),
            json_type,
            Some(r#"{"recipients": [{"address": "+666"}]}"#.to_owned()),
        ),
        (
            Method::POST,
            format!("/v1/campaigns/{id}/recipients"),
            Some("text/csv"),
            Some("address\n+667\n".to_owned()),
        ),
        (
            Method::POST,
            format!("/v1/campaigns/{id}/schedule"),
            json_type,
            Some(format!(r#"{{"scheduled_at": "{future}"}}"#)),
        ),
    ];
    for action in ["unschedule", "start", "pause", "resume", "stop"] {
        routes.push((
            Method::POST,
            format!("/v1/campaigns/{id}/{action}"),
            None,
            None,
        ));
    }
    for (method, path, content_type, body) in routes {
        let (status, response) = as_other(method.clone(), path.clone(), content_type, body).await;
        assert_eq!(status, 404, "{method} {path}: {response}");
        assert_eq!(response["error"]["code"], "not_found", "{method} {path}");
        assert!(
            !response.to_string().contains("test campaign"),
            "{method} {path} leaks the campaign: {response}"
        );
    }

    // Nothing the other tenant tried changed the campaign.
    let campaign = stack.campaign(id).await;
    assert_eq!(campaign["status"], "draft");
    assert_eq!(campaign["version"], 1);
    assert_eq!(campaign["name"], "test campaign");
    assert_eq!(campaign["counters"]["total"], 3);
    let (_, events) = stack
        .call(Method::GET, &format!("/v1/campaigns/{id}/events"), None)
        .await;
    assert_eq!(events["items"].as_array().unwrap().len(), 1);
    let (_, list) = stack.call(Method::GET, "/v1/campaigns", None).await;
    assert_eq!(
        ids(list["items"].as_array().unwrap()),
        [id],
        "no duplicate was made for anyone"
    );
    let campaigns: i64 = sqlx::query_scalar("SELECT count(*) FROM campaigns")
        .fetch_one(&stack.env.pool())
        .await
        .unwrap();
    assert_eq!(campaigns, 1);
    stack.stop().await;
}
