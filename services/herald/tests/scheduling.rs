//! Dispatch scheduling with the real `herald` binary as separate processes
//! (invariants 9 and 10): channel budgets shared by campaigns and replicas, a
//! campaign's own cap held across replicas, no campaign waiting behind a
//! throttled one, send windows, and a `kill -9` during a budget wait.
//!
//! Run with `cargo test -p herald --test scheduling`.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use herald_core::lifecycle::Status;
use herald_testkit::faults::{ProcessStack, repeated_keys, wait_until};
use herald_testkit::{NatsServer, ProviderDouble, RecordedRequest, assert_every_fate_accounted};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn herald() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herald"))
}

/// The rate and latency tests each run a whole deployment of processes; run one
/// at a time, so none measures another's load on a small machine. (The send
/// window test mostly waits for its window, and runs beside them.)
static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn stack_with_senders(nats: &NatsServer, senders: usize) -> ProcessStack {
    ProcessStack::start(herald(), &nats.url(), 1, senders, |_, env| env).await
}

/// A shared channel through `POST /v1/channels`.
async fn create_channel(stack: &ProcessStack, provider: &ProviderDouble, extra: Value) -> Uuid {
    let mut body = json!({"name": "shared number", "config": provider.webhook_channel()});
    body.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    let (status, created) = stack.call(Method::POST, "/v1/channels", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().expect("id").parse().expect("uuid")
}

/// A campaign with the given body fields (a channel or channel_id among them),
/// `recipients` imported, started.
async fn start_campaign(stack: &ProcessStack, fields: Value, recipients: usize) -> Uuid {
    let mut body = json!({"name": "scheduled", "template": {"body": "Hi {{ name }}"}});
    body.as_object_mut()
        .expect("object")
        .extend(fields.as_object().expect("object").clone());
    let (status, created) = stack.call(Method::POST, "/v1/campaigns", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
    stack.import(id, recipients).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    id
}

/// The most requests that started within any 1 s window, and the rate over
/// the whole run (requests after the first, per second).
fn worst_second_and_rate(requests: &[RecordedRequest]) -> (usize, f64) {
    let mut starts: Vec<Instant> = requests.iter().map(|r| r.started).collect();
    starts.sort();
    let worst = (0..starts.len())
        .map(|i| {
            starts[i..]
                .iter()
                .take_while(|s| **s < starts[i] + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    let span = match (starts.first(), starts.last()) {
        (Some(first), Some(last)) if last > first => (*last - *first).as_secs_f64(),
        _ => return (worst, 0.0),
    };
    (worst, (starts.len() - 1) as f64 / span)
}

fn of_campaign(provider: &ProviderDouble, campaign: Uuid) -> Vec<RecordedRequest> {
    let id = campaign.to_string();
    provider
        .requests()
        .into_iter()
        .filter(|r| r.body["campaign_id"] == id.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_campaigns_on_a_20_per_second_channel_never_exceed_it_across_three_senders_and_both_progress()
 {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let provider = ProviderDouble::start(Duration::from_millis(5)).await;
    let nats = NatsServer::start().await;
    let stack = stack_with_senders(&nats, 3).await;
    let channel =
        create_channel(&stack, &provider, json!({"rate_limit": {"per_second": 20}})).await;
    let first = start_campaign(&stack, json!({"channel_id": channel}), 150).await;
    let second = start_campaign(&stack, json!({"channel_id": channel}), 150).await;
    stack
        .wait_for_status(first, Status::Completed, Duration::from_secs(60))
        .await;
    stack
        .wait_for_status(second, Status::Completed, Duration::from_secs(60))
        .await;
    let requests = provider.requests();
    let (worst, rate) = worst_second_and_rate(&requests);
    eprintln!("channel at 20/s: worst second {worst}, combined rate {rate:.2}/s");
    assert!(
        worst <= 20,
        "{worst} requests within one second at a limit of 20/s"
    );
    assert!(
        rate >= 19.0,
        "combined rate {rate:.2}/s is under 95% of 20/s"
    );
    assert_eq!(requests.len(), 300);
    assert!(repeated_keys(&provider).is_empty());
    // Both progressed together: each had sent some before the other finished.
    let last_of = |c| {
        of_campaign(&provider, c)
            .iter()
            .map(|r| r.started)
            .max()
            .unwrap()
    };
    let first_of = |c| {
        of_campaign(&provider, c)
            .iter()
            .map(|r| r.started)
            .min()
            .unwrap()
    };
    assert!(first_of(second) < last_of(first) && first_of(first) < last_of(second));
    let pool = stack.pool();
    for campaign in [first, second] {
        assert_every_fate_accounted(&stack.client, &pool, campaign).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_cap_of_2_per_second_holds_across_three_senders() {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let provider = ProviderDouble::start(Duration::from_millis(5)).await;
    let nats = NatsServer::start().await;
    let stack = stack_with_senders(&nats, 3).await;
    let id = start_campaign(
        &stack,
        json!({"channel": provider.webhook_channel(), "rate_limit_per_second": 2}),
        16,
    )
    .await;
    let body = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    let mut starts: Vec<Instant> = provider.requests().iter().map(|r| r.started).collect();
    starts.sort();
    assert_eq!(starts.len(), 16, "{body}");
    for three in starts.windows(3) {
        assert!(
            three[2] - three[0] >= Duration::from_secs(1),
            "3 requests within {:?} at a cap of 2/s",
            three[2] - three[0]
        );
    }
    // The achieved rate is not asserted here: wall-clock rates in a debug build
    // on a shared machine are noise. The budget test (`tests/budget.rs`) shows it
    // with an injected clock, and `herald-bench rate` measures it.
    let (_, rate) = worst_second_and_rate(&provider.requests());
    eprintln!("achieved {rate:.2}/s of 2/s");
    assert_every_fate_accounted(&stack.client, &stack.pool(), id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_campaign_started_behind_a_throttled_one_completes_within_two_seconds() {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let provider = ProviderDouble::start(Duration::from_millis(5)).await;
    let nats = NatsServer::start().await;
    let stack = stack_with_senders(&nats, 2).await;
    let throttled =
        create_channel(&stack, &provider, json!({"rate_limit": {"per_second": 10}})).await;
    let big = start_campaign(&stack, json!({"channel_id": throttled}), 4_000).await;
    wait_until(
        "the throttled campaign to send",
        Duration::from_secs(30),
        || async { (of_campaign(&provider, big).len() >= 20).then_some(()) },
    )
    .await;
    let started = Instant::now();
    let small = start_campaign(&stack, json!({"channel": provider.webhook_channel()}), 3).await;
    stack
        .wait_for_status(small, Status::Completed, Duration::from_secs(30))
        .await;
    let took = started.elapsed();
    eprintln!("small campaign completed {took:?} after its start behind a throttled one");
    assert!(
        took < Duration::from_secs(2),
        "the small campaign took {took:?}"
    );
    let body = stack.campaign(big).await;
    assert_eq!(body["status"], "sending");
    assert_eq!(body["waiting"]["reason"], "rate_limit", "{body}");
    let pool = stack.pool();
    assert_every_fate_accounted(&stack.client, &pool, small).await;
    // Stopping the throttled one (rows claimed and waiting for their start
    // times among them) leaves everyone accounted for as well.
    assert_eq!(stack.transition(big, "stop").await.0, 200);
    let body = assert_every_fate_accounted(&stack.client, &pool, big).await;
    assert!(
        body["reasons"]["campaign_stopped"].as_i64() > Some(0),
        "{body}"
    );
}

/// A send window that opens at the start of the next whole minute (UTC) that is
/// at least 20 s away, for one minute.
fn window_opening_soon() -> (Value, chrono::DateTime<Utc>) {
    let now = Utc::now();
    let mut opening = (now + chrono::Duration::minutes(1))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("a whole minute");
    if opening - now < chrono::Duration::seconds(20) {
        opening += chrono::Duration::minutes(1);
    }
    let closing = opening + chrono::Duration::minutes(1);
    let window = json!({
        "timezone": "UTC",
        "start": opening.format("%H:%M").to_string(),
        "end": closing.format("%H:%M").to_string(),
    });
    (window, opening)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_send_window_sends_nothing_says_so_obeys_pause_and_resume_and_opens_by_itself() {
    let provider = ProviderDouble::start(Duration::from_millis(5)).await;
    let nats = NatsServer::start().await;
    let stack = stack_with_senders(&nats, 2).await;
    let (window, opening) = window_opening_soon();
    let id = start_campaign(
        &stack,
        json!({"channel": provider.webhook_channel(), "send_window": window}),
        50,
    )
    .await;
    let body = wait_until(
        "the campaign to wait for its window",
        Duration::from_secs(15),
        || async {
            let body = stack.campaign(id).await;
            (body["waiting"]["reason"] == "send_window").then_some(body)
        },
    )
    .await;
    assert_eq!(body["status"], "sending");
    assert_eq!(
        body["waiting"]["until"]
            .as_str()
            .map(|u| u.parse::<chrono::DateTime<Utc>>().unwrap()),
        Some(opening),
        "{body}"
    );
    assert_eq!(stack.transition(id, "pause").await.0, 200);
    assert_eq!(stack.campaign(id).await["status"], "paused");
    assert_eq!(stack.transition(id, "resume").await.0, 200);
    assert_eq!(
        provider.request_count(),
        0,
        "nothing is sent while the window is closed"
    );
    assert!(
        Utc::now() < opening,
        "the checks above ran before the opening"
    );
    // No call from here on: the opening alone starts the sending.
    let body = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(120))
        .await;
    let first = provider
        .requests()
        .iter()
        .map(|r| r.started_at)
        .min()
        .expect("requests");
    assert!(
        first >= opening,
        "a request started at {first}, before the opening at {opening}"
    );
    assert_eq!(provider.per_key().len(), 50, "{body}");
    assert!(body["waiting"].is_null(), "{body}");
    assert_every_fate_accounted(&stack.client, &stack.pool(), id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_during_a_budget_wait_loses_no_recipient_and_sends_none_twice() {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let provider = ProviderDouble::start(Duration::from_millis(5)).await;
    let nats = NatsServer::start().await;
    let mut stack = stack_with_senders(&nats, 2).await;
    let id = start_campaign(
        &stack,
        json!({"channel": provider.webhook_channel(), "rate_limit_per_second": 20}),
        120,
    )
    .await;
    for round in 0..2 {
        wait_until("sends before the kill", Duration::from_secs(30), || async {
            (provider.request_count() >= 30 * (round + 1)).then_some(())
        })
        .await;
        let victim = &mut stack.senders[round];
        victim.kill9();
        victim.restart();
    }
    stack.assert_settled(id, 120).await;
    assert_eq!(
        provider.per_key().len(),
        120,
        "every recipient reached the provider"
    );
    // A request in flight at a kill may be repeated (same idempotency key) once
    // its lease expires; at 20/s that is at most a few per kill.
    let repeats = repeated_keys(&provider);
    assert!(repeats.len() <= 4, "repeated: {repeats:?}");
}
