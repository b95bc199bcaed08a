//! The send budget's reservation statement against real Postgres, with an
//! injected clock: GCRA spacing and slices, the campaign's own cap, and the
//! daily cap that waits for the next local day (invariant 9).
//!
//! Run with `cargo test -p herald --test budget`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_sender::budget::{self, WaitReason};
use herald_testkit::{ProviderDouble, Stack, test_sender_config};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// A draft campaign on its own (private) channel, with the budget rows made,
/// and the channel's and campaign's limits set as given.
async fn campaign_with_limits(
    stack: &Stack,
    per_second: Option<i32>,
    per_day: Option<i32>,
    window: Option<serde_json::Value>,
    cap: Option<i32>,
) -> (PgPool, Uuid, Uuid) {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let campaign = stack.create_campaign(provider.webhook_channel()).await;
    let pool = stack.env.pool();
    let channel: Uuid = sqlx::query_scalar(
        "UPDATE channels SET per_second = $2, per_day = $3, send_window = $4
         WHERE id = (SELECT channel_id FROM campaigns WHERE id = $1) RETURNING id",
    )
    .bind(campaign)
    .bind(per_second)
    .bind(per_day)
    .bind(window)
    .fetch_one(&pool)
    .await
    .expect("channel limits");
    sqlx::query("UPDATE campaigns SET rate_limit_per_second = $2 WHERE id = $1")
        .bind(campaign)
        .bind(cap)
        .execute(&pool)
        .await
        .expect("campaign cap");
    budget::ensure_budget_rows(&pool, channel, campaign)
        .await
        .expect("budget rows");
    (pool, channel, campaign)
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("RFC 3339")
}

#[tokio::test]
async fn a_slice_takes_the_start_times_of_the_next_100_ms_spaced_a_guarded_second_apart() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let (pool, channel, campaign) = campaign_with_limits(&stack, Some(20), None, None, None).await;
    let now = at("2026-12-01T12:00:00Z");
    let first = budget::reserve(&pool, channel, campaign, 500, Some(now))
        .await
        .unwrap();
    // (1 s + 30 ms) / 20 = 51.5 ms apart: 0 and 51.5 ms fit in 100 ms.
    assert_eq!(first.granted, 2, "{first:?}");
    assert_eq!(first.first_start, now);
    assert_eq!(first.spacing, Duration::from_micros(51_500));
    assert_eq!(first.wait.map(|w| w.0), Some(WaitReason::RateLimit));
    // The next slice, asked at the same instant, starts where this one ended.
    let second = budget::reserve(&pool, channel, campaign, 500, Some(now))
        .await
        .unwrap();
    assert_eq!(
        second.granted, 0,
        "the next start time is 103 ms away: {second:?}"
    );
    let later = budget::reserve(
        &pool,
        channel,
        campaign,
        500,
        Some(now + chrono::Duration::milliseconds(10)),
    )
    .await
    .unwrap();
    assert_eq!(later.granted, 1, "{later:?}");
    assert_eq!(
        later.first_start,
        now + chrono::Duration::microseconds(103_000)
    );
    // Over a simulated minute, never more than 20 starts in any 1 s window.
    let mut starts = Vec::new();
    let mut clock = now + chrono::Duration::seconds(1);
    while clock < now + chrono::Duration::seconds(61) {
        let grant = budget::reserve(&pool, channel, campaign, 500, Some(clock))
            .await
            .unwrap();
        for i in 0..grant.granted {
            starts.push(grant.first_start + chrono::Duration::from_std(grant.spacing * i).unwrap());
        }
        clock += chrono::Duration::milliseconds(40);
    }
    starts.sort();
    for (i, start) in starts.iter().enumerate() {
        let in_window = starts[i..]
            .iter()
            .take_while(|s| **s < *start + chrono::Duration::seconds(1))
            .count();
        assert!(
            in_window <= 20,
            "{in_window} starts in the second from {start}"
        );
    }
    let rate = starts.len() as f64 / 60.0;
    assert!(rate >= 19.0, "achieved {rate:.2}/s of 20/s");
    stack.stop().await;
}

#[tokio::test]
async fn the_stricter_of_the_channel_budget_and_the_campaign_cap_spaces_the_starts() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let (pool, channel, campaign) =
        campaign_with_limits(&stack, Some(100), None, None, Some(2)).await;
    let now = at("2026-12-01T12:00:00Z");
    let mut starts = Vec::new();
    for step in 0..100 {
        let clock = now + chrono::Duration::milliseconds(step * 50);
        let grant = budget::reserve(&pool, channel, campaign, 10, Some(clock))
            .await
            .unwrap();
        for i in 0..grant.granted {
            starts.push(grant.first_start + chrono::Duration::from_std(grant.spacing * i).unwrap());
        }
    }
    // 5 s at 2/s, spaced 515 ms: 10 starts, and never 3 within one second.
    assert_eq!(starts.len(), 10, "{starts:?}");
    for pair in starts.windows(3) {
        assert!(
            pair[2] - pair[0] >= chrono::Duration::seconds(1),
            "{pair:?}"
        );
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_used_up_daily_cap_waits_for_the_next_local_midnight_and_then_sends_again() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    // Sao Paulo is UTC-3: its midnight is 03:00Z.
    let window = json!({"timezone": "America/Sao_Paulo", "start": "00:00", "end": "23:59"});
    let (pool, channel, campaign) =
        campaign_with_limits(&stack, None, Some(3), Some(window), None).await;
    let evening = at("2026-12-01T23:00:00Z");
    let grant = budget::reserve(&pool, channel, campaign, 2, Some(evening))
        .await
        .unwrap();
    assert_eq!(grant.granted, 2);
    let grant = budget::reserve(&pool, channel, campaign, 2, Some(evening))
        .await
        .unwrap();
    assert_eq!(grant.granted, 1, "only 1 of the day's 3 is left");
    let capped = budget::reserve(
        &pool,
        channel,
        campaign,
        2,
        Some(at("2026-12-02T02:59:59Z")),
    )
    .await
    .unwrap();
    assert_eq!(capped.granted, 0);
    assert_eq!(
        capped.wait,
        Some((WaitReason::DailyCap, at("2026-12-02T03:00:00Z"))),
        "waits until midnight in Sao Paulo"
    );
    let next_day = budget::reserve(
        &pool,
        channel,
        campaign,
        5,
        Some(at("2026-12-02T03:00:01Z")),
    )
    .await
    .unwrap();
    assert_eq!(next_day.granted, 3, "a new local day, a new cap");
    stack.stop().await;
}
