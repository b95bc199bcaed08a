//! Auto-pause on failure rate: a campaign whose last `window` outcomes fail
//! more than `max_failure_rate` pauses itself, as `system:auto-pause`, with
//! the window shared by every sender replica.
//!
//! Run with `cargo test -p herald --test auto_pause`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use herald_core::lifecycle::Status;
use herald_sender::SenderConfig;
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const WINDOW: i64 = 100;
const SENDERS: usize = 2;
const CONCURRENCY: usize = 8;

async fn create_with(stack: &Stack, channel: Value, auto_pause: Value) -> (u16, Value) {
    stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({
                "name": "auto", "channel": channel,
                "template": {"body": "Hi {{ name }}"}, "auto_pause": auto_pause
            })),
        )
        .await
}

#[tokio::test]
async fn a_provider_that_breaks_mid_campaign_costs_at_most_the_window_plus_the_requests_in_flight()
{
    // Before anything records a metric: the api renders this recorder.
    herald_core::telemetry::install();
    // The provider accepts 300 messages, then rejects everything (400: each
    // recipient fails at once) until it is healed.
    let accepted = Arc::new(AtomicUsize::new(0));
    let healed = Arc::new(AtomicBool::new(false));
    let provider = {
        let (accepted, healed) = (accepted.clone(), healed.clone());
        ProviderDouble::scripted(Duration::from_millis(100), move |_| {
            if healed.load(Ordering::SeqCst) || accepted.fetch_add(1, Ordering::SeqCst) < 300 {
                Reply::Ok
            } else {
                Reply::Status(400)
            }
        })
        .await
    };
    let sender = SenderConfig {
        concurrency: CONCURRENCY,
        ..test_sender_config()
    };
    let stack = Stack::start(1, SENDERS, sender).await;
    let pool = stack.env.pool();
    let setting = json!({"max_failure_rate": 0.5, "window": WINDOW});
    let (status, body) = create_with(&stack, provider.webhook_channel(), setting.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["auto_pause"], setting);
    assert_eq!(body["paused_reason"], Value::Null);
    let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    stack.import(id, 1000).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);

    stack
        .wait_for_status(id, Status::Paused, Duration::from_secs(120))
        .await;
    // Let the requests in flight at the pause land.
    let paused = stack
        .wait_until_nothing_sending(id, Duration::from_secs(30))
        .await;
    let failed = paused["counters"]["failed"].as_i64().unwrap();
    let in_flight = (SENDERS * CONCURRENCY) as i64;
    assert!(
        failed > WINDOW / 2,
        "it paused once more than half the window failed: {paused}"
    );
    assert!(
        failed <= WINDOW + in_flight,
        "{failed} failed: more than the window ({WINDOW}) plus the requests in flight ({in_flight})"
    );
    assert_eq!(paused["paused_reason"], "failure_rate");
    assert_eq!(paused["reasons"], json!({"provider_rejected": failed}));

    let events = stack.events(id).await;
    let pause = events.iter().find(|e| e["type"] == "paused").unwrap();
    assert_eq!(pause["actor"], "system:auto-pause");
    assert_eq!(pause["payload"]["reason"], "failure_rate");
    assert_eq!(pause["payload"]["window"], WINDOW);
    let rate = pause["payload"]["failure_rate"].as_f64().unwrap();
    assert!(rate > 0.5 && rate <= 1.0, "{pause}");
    assert_eq!(
        events.iter().filter(|e| e["type"] == "paused").count(),
        1,
        "one pause, however many replicas saw the rate"
    );
    eprintln!("paused after {failed} failures (failure rate {rate})");

    // 4xx failures are provider_rejected, not transient: a transient retry
    // finds nothing; a `failed` retry re-opens them.
    let retry = |body: Value| {
        let stack = &stack;
        async move {
            stack
                .call(
                    Method::POST,
                    &format!("/v1/campaigns/{id}/retry"),
                    Some(body),
                )
                .await
        }
    };
    let (status, body) = retry(json!({"scope": "transient"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "precondition_failed");

    // The provider heals; resume sends the rest, the retry sends the failed.
    healed.store(true, Ordering::SeqCst);
    let (status, body) = retry(json!({"scope": "failed", "reasons": ["provider_rejected"]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reopened"], failed);
    assert_eq!(stack.transition(id, "resume").await.0, 200);
    let done = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(120))
        .await;
    assert_eq!(done["counters"]["sent"], 1000, "{done}");
    assert_eq!(done["paused_reason"], Value::Null);
    assert_every_fate_accounted(&stack.client, &pool, id).await;

    let metrics = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herald_auto_pauses_total") && !l.ends_with(" 0")),
        "herald_auto_pauses_total counts the pause"
    );
    stack.stop().await;
}

#[tokio::test]
async fn the_auto_pause_setting_is_validated_and_edited_like_the_other_draft_fields() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let channel = json!({"provider": "log"});
    for bad in [
        json!({"max_failure_rate": 0, "window": 100}),
        json!({"max_failure_rate": 1.5, "window": 100}),
        json!({"max_failure_rate": 0.5, "window": 0}),
        json!({"max_failure_rate": 0.5, "window": 10001}),
        json!({"max_failure_rate": 0.5}),
        json!({"max_failure_rate": 0.5, "window": 10, "extra": 1}),
    ] {
        let (status, body) = create_with(&stack, channel.clone(), bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let id = stack.create_campaign(channel).await;
    let path = format!("/v1/campaigns/{id}");
    assert_eq!(stack.campaign(id).await["auto_pause"], Value::Null);
    let setting = json!({"max_failure_rate": 0.25, "window": 40});
    let (status, body) = stack
        .call(
            Method::PATCH,
            &path,
            Some(json!({"auto_pause": setting.clone()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["auto_pause"], setting);
    let (status, _) = stack
        .call(
            Method::PATCH,
            &path,
            Some(json!({"auto_pause": {"max_failure_rate": 2, "window": 40}})),
        )
        .await;
    assert_eq!(status, 422);
    let (status, body) = stack
        .call(Method::PATCH, &path, Some(json!({"name": "renamed"})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["auto_pause"], setting, "untouched when absent");
    let (status, body) = stack
        .call(Method::PATCH, &path, Some(json!({"auto_pause": null})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["auto_pause"], Value::Null, "null removes it");
    stack.stop().await;
}

/// One replica's outcome write: `rows`, all failed (rejected), under `lease`.
async fn write_failed(
    pool: &sqlx::PgPool,
    campaign: Uuid,
    lease: Uuid,
    rows: &[i64],
) -> herald_sender::ledger::Marked {
    use herald_sender::ledger::{LeasedOutcome, RecipientOutcome, mark_leased_outcomes};
    let outcomes: Vec<LeasedOutcome> = rows
        .iter()
        .map(|&id| LeasedOutcome {
            campaign_id: campaign,
            lease_token: lease,
            outcome: RecipientOutcome::failed(
                id,
                herald_core::reason::Reason::ProviderRejected,
                "rejected".into(),
                1,
            ),
        })
        .collect();
    mark_leased_outcomes(pool, &outcomes).await.unwrap()
}

#[tokio::test]
async fn the_window_is_the_campaigns_so_two_replicas_half_filling_it_each_trip_it_together() {
    use herald_sender::ledger::claim_batch;
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let pool = stack.env.pool();
    let setting = json!({"max_failure_rate": 0.5, "window": 40});
    let (status, body) = create_with(&stack, json!({"provider": "log"}), setting).await;
    assert_eq!(status, 201, "{body}");
    let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    let plain = stack.create_campaign(json!({"provider": "log"})).await;
    for campaign in [id, plain] {
        stack.import(campaign, 60).await;
        assert_eq!(stack.transition(campaign, "start").await.0, 200);
    }
    let batch = |campaign| herald_core::contracts::SendBatch {
        campaign_id: campaign,
        run_epoch: 1,
        first_recipient_id: 0,
        last_recipient_id: i64::MAX,
        recipient_count: 30,
        correlation_id: Uuid::new_v4(),
    };
    // Two replicas, each with a lease on 30 rows.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let claim = |lease| {
        let (pool, batch) = (pool.clone(), batch(id));
        async move {
            let rows = claim_batch(&pool, &batch, lease, 30.0, 30)
                .await
                .unwrap()
                .rows;
            rows.into_iter().map(|r| r.id).collect::<Vec<i64>>()
        }
    };
    let (rows_a, rows_b) = (claim(a).await, claim(b).await);
    assert_eq!((rows_a.len(), rows_b.len()), (30, 30));

    // 20 failures from each: neither replica's own 20 fill a window of 40;
    // together they do, all failed.
    let first = write_failed(&pool, id, a, &rows_a[..20]).await;
    assert!(first.tripped.is_empty(), "{:?}", first.tripped);
    let second = write_failed(&pool, id, b, &rows_b[..20]).await;
    assert_eq!(second.tripped.len(), 1, "{:?}", second.tripped);
    assert_eq!(second.tripped[0].campaign_id, id);
    assert_eq!(second.tripped[0].window, 40);
    assert_eq!(second.tripped[0].failure_rate, 1.0);

    // Once paused, more failures trip nothing (the pause already happened).
    assert_eq!(stack.transition(id, "pause").await.0, 200);
    let paused = write_failed(&pool, id, a, &rows_a[20..]).await;
    assert!(paused.tripped.is_empty(), "{:?}", paused.tripped);
    // The resume empties the window: the new run measures itself.
    assert_eq!(stack.transition(id, "resume").await.0, 200);
    let ring: String =
        sqlx::query_scalar("SELECT outcomes FROM campaign_outcome_windows WHERE campaign_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(ring, "");

    // A campaign without auto_pause never gets a window.
    let plain_lease = Uuid::new_v4();
    let plain_rows = claim_batch(&pool, &batch(plain), plain_lease, 30.0, 30)
        .await
        .unwrap()
        .rows;
    let ids: Vec<i64> = plain_rows.iter().map(|r| r.id).collect();
    let marked = write_failed(&pool, plain, plain_lease, &ids).await;
    assert!(marked.tripped.is_empty());
    let windows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM campaign_outcome_windows WHERE campaign_id = $1")
            .bind(plain)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(windows, 0);
    stack.stop().await;
}
