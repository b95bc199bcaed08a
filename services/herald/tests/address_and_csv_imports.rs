//! Imports as people write them: addresses normalised by kind before dedupe
//! (E.164 phone numbers, e-mail addresses case-insensitive), invalid addresses
//! of a channel's pinned kind rejected with reason `invalid_address`, the
//! channel's addressing settings validated, and CSV header lines matched
//! ignoring case, with address column aliases and a 422 that lists the headers.
//!
//! Run with `cargo test -p herald --test address_and_csv_imports`.

use herald_testkit::{Stack, test_sender_config};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn post_csv(stack: &Stack, campaign: Uuid, csv: &str) -> (u16, Value) {
    let response = stack
        .http
        .post(stack.url(&format!("/v1/campaigns/{campaign}/recipients")))
        .bearer_auth(&stack.token)
        .header("content-type", "text/csv")
        .body(csv.to_owned())
        .send()
        .await
        .expect("the api answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post_json(stack: &Stack, campaign: Uuid, recipients: Value) -> (u16, Value) {
    stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{campaign}/recipients"),
            Some(json!({ "recipients": recipients })),
        )
        .await
}

/// A draft on an inline channel `channel` with the template `body`.
async fn campaign(stack: &Stack, channel: Value, body: &str) -> Uuid {
    let (status, created) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"name": "imports", "channel": channel, "template": {"body": body}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().expect("id").parse().expect("uuid")
}

/// Every recipient of the campaign, in import order.
async fn recipients(stack: &Stack, campaign: Uuid) -> Vec<Value> {
    let (status, page) = stack
        .call(
            Method::GET,
            &format!("/v1/campaigns/{campaign}/recipients?limit=1000"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().expect("items").clone()
}

/// (row, reason, message) of every listed rejected row.
fn rejections(result: &Value) -> Vec<(u64, String, String)> {
    result["rejected_rows"]
        .as_array()
        .expect("rejected_rows")
        .iter()
        .map(|r| {
            (
                r["row"].as_u64().expect("row"),
                r["reason"].as_str().expect("reason").to_owned(),
                r["message"].as_str().expect("message").to_owned(),
            )
        })
        .collect()
}

fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn e_mail_addresses_differing_only_in_case_are_one_recipient_and_one_duplicate() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = campaign(&stack, json!({"provider": "log"}), "Hi {{ name }}").await;
    let (status, result) = post_json(
        &stack,
        id,
        json!([
            {"address": "ana@example.com", "variables": {"name": "Ana"}},
            {"address": "Ana@Example.COM", "variables": {"name": "Ana again"}},
        ]),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["accepted"], 1, "{result}");
    assert_eq!(result["duplicates"], 1, "{result}");
    assert_eq!(result["rejected"], 0, "{result}");

    // Another import, another case, and a domain-only difference: still one.
    let (status, result) = post_csv(&stack, id, "email,name\nANA@EXAMPLE.com,A\n").await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        (&result["accepted"], &result["duplicates"]),
        (&json!(0), &json!(1))
    );

    let rows = recipients(&stack, id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["address"], "ana@example.com");
    assert_eq!(rows[0]["address_kind"], "email");
    assert_eq!(rows[0]["address_input"], Value::Null, "typed as normalised");
    assert_eq!(
        rows[0]["variables"],
        json!({"name": "Ana"}),
        "the first wins"
    );

    // The first spelling seen is kept (local part as typed, domain lower-cased),
    // and what was typed is shown beside it.
    let other = campaign(&stack, json!({"provider": "log"}), "Hi").await;
    let (_, result) = post_json(
        &stack,
        other,
        json!([{"address": " Bo@Example.COM "}, {"address": "bo@example.com"}]),
    )
    .await;
    assert_eq!(
        (&result["accepted"], &result["duplicates"]),
        (&json!(1), &json!(1))
    );
    let rows = recipients(&stack, other).await;
    assert_eq!(rows[0]["address"], "Bo@example.com");
    assert_eq!(rows[0]["address_input"], "Bo@Example.COM");
    stack.stop().await;
}

#[tokio::test]
async fn a_phone_channel_normalises_numbers_to_e164_dedupes_them_and_rejects_invalid_rows() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let channel = json!({"provider": "log", "address_kind": "phone", "default_region": "BR"});
    let id = campaign(&stack, channel, "Hi {{ name }}").await;
    let (status, result) = post_json(
        &stack,
        id,
        json!([
            {"address": "+55 11 98765-4321", "variables": {"name": "Ana"}},   // 1 accepted
            {"address": "(11) 98765-4321", "variables": {"name": "dup"}},     // 2 same number
            {"address": "+5511987654321"},                                     // 3 same number
            {"address": "ana@example.com"},                                    // 4 not a phone
            {"address": "12"},                                                 // 5 not a number
            {"address": "+1 202 555 0123", "variables": {"name": "Bo"}},       // 6 accepted
            {"address": ""},                                                   // 7 empty
        ]),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["accepted"], 2, "{result}");
    assert_eq!(result["duplicates"], 2, "{result}");
    assert_eq!(result["rejected"], 3, "{result}");
    let rejected = rejections(&result);
    let reasons: Vec<(u64, &str)> = rejected.iter().map(|(r, c, _)| (*r, c.as_str())).collect();
    assert_eq!(
        reasons,
        [
            (4, "invalid_address"),
            (5, "invalid_address"),
            (7, "invalid_address")
        ]
    );
    assert!(rejected[0].2.contains("not a phone number"), "{rejected:?}");
    assert_eq!(rejected[2].2, "address is empty");

    // CSV: the same rules; a number already imported is a duplicate.
    let (status, result) = post_csv(
        &stack,
        id,
        "Phone,Name\n011 98765 4321,Ana\n(21) 2345-6789,Cy\nnot a number,Di\n",
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["accepted"], 1, "{result}");
    assert_eq!(result["duplicates"], 1, "{result}");
    assert_eq!(rejections(&result)[0].1, "invalid_address", "{result}");

    let rows = recipients(&stack, id).await;
    let stored: Vec<(&str, &Value, &Value)> = rows
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap(),
                &r["address_input"],
                &r["address_kind"],
            )
        })
        .collect();
    assert_eq!(
        stored,
        [
            (
                "+5511987654321",
                &json!("+55 11 98765-4321"),
                &json!("phone")
            ),
            ("+12025550123", &json!("+1 202 555 0123"), &json!("phone")),
            ("+552123456789", &json!("(21) 2345-6789"), &json!("phone")),
        ]
    );
    let campaign = stack.campaign(id).await;
    assert_eq!(campaign["counters"]["total"], 3);
    herald_testkit::assert_counters_match_ledger(&stack.env.pool(), id, &campaign).await;
    stack.stop().await;
}

#[tokio::test]
async fn without_a_pinned_kind_addresses_are_detected_and_others_only_trimmed() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = campaign(&stack, json!({"provider": "log"}), "Hi").await;
    let (status, result) = post_json(
        &stack,
        id,
        json!([
            {"address": "+55 11 98765-4321"},
            {"address": "+5511987654321"},
            {"address": " user-42 "},
            {"address": "USER-42"},
            {"address": "+100"},
        ]),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        (&result["accepted"], &result["duplicates"]),
        (&json!(4), &json!(1))
    );
    let rows = recipients(&stack, id).await;
    let stored: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap(),
                r["address_kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stored,
        [
            ("+5511987654321", "phone"),
            ("user-42", "opaque"),
            ("USER-42", "opaque"),
            ("+100", "opaque"),
        ],
        "opaque addresses compare exactly"
    );

    // An e-mail-pinned channel rejects what is not an e-mail address.
    let email = campaign(
        &stack,
        json!({"provider": "log", "address_kind": "email"}),
        "Hi",
    )
    .await;
    let (_, result) = post_json(
        &stack,
        email,
        json!([{"address": "+5511987654321"}, {"address": "a@b.co"}]),
    )
    .await;
    assert_eq!(result["accepted"], 1, "{result}");
    assert_eq!(rejections(&result)[0].1, "invalid_address", "{result}");
    stack.stop().await;
}

#[tokio::test]
async fn channel_addressing_settings_are_validated_inline_and_on_channels_with_422s() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let bad = [
        (
            json!({"provider": "log", "default_region": "XX"}),
            "default_region",
        ),
        (
            json!({"provider": "log", "default_region": "Brazil"}),
            "default_region",
        ),
        (
            json!({"provider": "log", "address_kind": "email", "default_region": "BR"}),
            "default_region",
        ),
        (
            json!({"provider": "log", "address_kind": "fax"}),
            "address_kind",
        ),
        (
            json!({"provider": "log", "default_region": 55}),
            "default_region",
        ),
        (
            json!({"provider": "log", "address_kind": 3}),
            "address_kind",
        ),
        (
            json!({"provider": "webhook", "url": "http://x/y", "extra": 1}),
            "extra",
        ),
    ];
    for (config, named) in &bad {
        let (status, body) = stack
            .call(
                Method::POST,
                "/v1/channels",
                Some(json!({"name": "n", "config": config})),
            )
            .await;
        assert_eq!(status, 422, "{config}: {body}");
        assert!(error_message(&body).contains(named), "{config}: {body}");
        let (status, body) = stack
            .call(
                Method::POST,
                "/v1/campaigns",
                Some(json!({"name": "n", "channel": config, "template": {"body": "Hi"}})),
            )
            .await;
        assert_eq!(status, 422, "inline {config}: {body}");
        assert!(
            error_message(&body).contains(named),
            "inline {config}: {body}"
        );
    }

    // A valid config is stored and shown with its addressing keys (secrets still
    // redacted), and a PATCH is validated the same way.
    let config = json!({"provider": "webhook", "url": "http://x/y", "secret": "s3cret",
                        "address_kind": "phone", "default_region": "br"});
    let (status, channel) = stack
        .call(
            Method::POST,
            "/v1/channels",
            Some(json!({"name": "sms", "config": config})),
        )
        .await;
    assert_eq!(status, 201, "{channel}");
    assert_eq!(channel["config"]["address_kind"], "phone");
    assert_eq!(channel["config"]["default_region"], "br");
    assert_eq!(channel["config"]["secret"], "***");
    let path = format!("/v1/channels/{}", channel["id"].as_str().unwrap());
    let (status, body) = stack
        .call(
            Method::PATCH,
            &path,
            Some(json!({"config": {"provider": "log", "default_region": "ZZ"}})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = stack
        .call(
            Method::PATCH,
            &path,
            Some(json!({"config": {"provider": "log", "address_kind": "opaque"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["config"],
        json!({"provider": "log", "address_kind": "opaque"})
    );

    // A campaign on an inline pinned channel shows it too.
    let (status, created) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"name": "n", "template": {"body": "Hi"},
                        "channel": {"provider": "log", "address_kind": "email"}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["channel"],
        json!({"provider": "log", "address_kind": "email"})
    );
    stack.stop().await;
}

#[tokio::test]
async fn csv_headers_match_ignoring_case_and_spaces_and_the_address_column_has_aliases() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    // The handed case: `Address,Name` fills `{{ name }}`.
    let id = campaign(&stack, json!({"provider": "log"}), "Hi {{ name }}").await;
    let (status, result) = post_csv(&stack, id, "Address,Name\n+5511987654321,Ana\n").await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["accepted"], 1, "{result}");
    assert_eq!(
        recipients(&stack, id).await[0]["variables"],
        json!({"name": "Ana"})
    );

    for (csv, address) in [
        (" ADDRESS , City \n+5511900000001,Oslo\n", "+5511900000001"),
        ("phone,City\n+5511900000002,Oslo\n", "+5511900000002"),
        ("City, Email \nOslo,c@example.com\n", "c@example.com"),
        ("NUMBER,City\n+5511900000003,Oslo\n", "+5511900000003"),
        ("To,City\n+5511900000004,Oslo\n", "+5511900000004"),
        // `address` wins over an alias, which becomes a variable.
        (
            "email,City,address\nx@example.com,Oslo,+5511900000005\n",
            "+5511900000005",
        ),
    ] {
        let id = campaign(&stack, json!({"provider": "log"}), "Hi {{ name }}").await;
        let (status, result) = post_csv(&stack, id, csv).await;
        assert_eq!(status, 200, "{csv}: {result}");
        assert_eq!(result["accepted"], 1, "{csv}: {result}");
        let stored = &recipients(&stack, id).await[0];
        assert_eq!(stored["address"], address, "{csv}: {stored}");
        // A column the template does not use keeps its own (trimmed) name.
        assert_eq!(stored["variables"]["City"], "Oslo", "{csv}: {stored}");
    }

    // Two columns that could both be the address: a 422 naming them.
    let (status, body) = post_csv(&stack, id, "email,phone\na@b.co,+5511987654321\n").await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body).contains("`email`, `phone`"), "{body}");
    stack.stop().await;
}

#[tokio::test]
async fn a_csv_without_an_address_column_gets_a_422_listing_the_headers_found_and_a_delimiter_hint()
{
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = campaign(&stack, json!({"provider": "log"}), "Hi").await;
    let (status, body) = post_csv(&stack, id, "Name, City\nAna,Oslo\n").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    let message = error_message(&body);
    assert!(message.contains("`Name`, `City`"), "{body}");
    assert!(message.contains("phone"), "the aliases are named: {body}");
    assert!(!message.contains("delimiter"), "{body}");

    // Semicolons (a spreadsheet's CSV in some locales) and tabs get a hint.
    let (status, body) = post_csv(&stack, id, "address;name\n+5511987654321;Ana\n").await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body).contains("`address;name`"), "{body}");
    assert!(error_message(&body).contains("semicolon"), "{body}");
    let (status, body) = post_csv(&stack, id, "address\tname\n+5511987654321\tAna\n").await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body).contains("tab-separated"), "{body}");
    assert_eq!(stack.campaign(id).await["counters"]["total"], 0);
    stack.stop().await;
}
