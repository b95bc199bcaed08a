//! Pause and stop against status reads in flight (invariant 5: pause takes effect
//! at once).
//!
//! A sender re-reads a campaign's status from Postgres every TTL. A read that
//! began before a pause committed answers `sending`; if the pause's control
//! message lands while that read is in flight, the read must not put the stale
//! `sending` back over the invalidation. The first test holds one read open with
//! the cache's read hook and races it deterministically. The pipeline tests pause
//! and stop many times, at moments unrelated to the TTL, with three senders as
//! separate processes, and check that no request starts late.
//!
//! Run with `cargo test -p herald --test pause_race`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use herald_sender::status_cache::StatusCache;
use herald_testkit::faults::{ProcessStack, Role, wait_until};
use herald_testkit::{
    NatsServer, ProviderDouble, Stack, assert_every_fate_accounted, test_sender_config,
};
use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

/// The binary under test: this package's, or `HERALD_BIN` (to run these tests
/// against another build, for example one without a fix).
fn herald() -> PathBuf {
    std::env::var_os("HERALD_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_herald")),
        PathBuf::from,
    )
}

#[tokio::test]
async fn a_status_read_in_flight_when_a_pause_lands_does_not_keep_the_campaign_sendable() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 10).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);

    // The first read, once Postgres has answered, tells the test and waits to be
    // released before the cache stores its answer; later reads pass straight on.
    let (answered_tx, answered_rx) = oneshot::channel::<()>();
    let answered_tx = Arc::new(std::sync::Mutex::new(Some(answered_tx)));
    let release = Arc::new(Notify::new());
    let hook = {
        let (answered_tx, release) = (answered_tx.clone(), release.clone());
        Arc::new(move |_campaign: Uuid| {
            let first = answered_tx.lock().unwrap().take();
            let release = release.clone();
            async move {
                if let Some(answered) = first {
                    let released = release.notified();
                    let _ = answered.send(());
                    released.await;
                }
            }
            .boxed()
        })
    };
    let cache =
        Arc::new(StatusCache::new(stack.env.pool(), Duration::from_secs(60)).with_read_hook(hook));

    let racing_read = tokio::spawn({
        let cache = cache.clone();
        async move { cache.is_sendable(id).await }
    });
    answered_rx.await.expect("the read reached Postgres");
    // The read has its `sending`; now the pause commits and its control message
    // invalidates the entry, all while the read is still in flight.
    assert_eq!(stack.transition(id, "pause").await.0, 200);
    cache.invalidate(id);
    release.notify_waiters();

    let racing = racing_read.await.expect("read task").expect("status read");
    assert!(
        !racing,
        "the read that raced the pause answered `sending` after the invalidation"
    );
    assert!(
        !cache.is_sendable(id).await.expect("status read"),
        "the cache reports `sending` after the pause's control message"
    );
    stack.stop().await;
}

/// A campaign of `recipients` on `stack`, started.
async fn started_campaign(
    stack: &ProcessStack,
    provider: &ProviderDouble,
    recipients: usize,
) -> Uuid {
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, recipients).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    id
}

/// Waits until the provider has seen `count` requests of `campaign`.
async fn wait_for_campaign_requests(provider: &ProviderDouble, campaign: Uuid, count: usize) {
    let campaign = campaign.to_string();
    wait_until(
        &format!("{count} requests of {campaign}"),
        Duration::from_secs(60),
        || async {
            let seen = provider.count_matching(|r| r.body["campaign_id"] == campaign.as_str());
            (seen >= count).then_some(())
        },
    )
    .await;
}

/// How long after `from` each request of `campaign` that started in `(from,
/// until)` started. Reads start times only: copying every recorded request
/// while the double serves would stall it.
fn started_between(
    provider: &ProviderDouble,
    campaign: Uuid,
    from: Instant,
    until: Instant,
) -> Vec<Duration> {
    let campaign = campaign.to_string();
    provider
        .starts_matching(|r| {
            r.started > from && r.started < until && r.body["campaign_id"] == campaign.as_str()
        })
        .into_iter()
        .map(|started| started - from)
        .collect()
}

/// The pause and stop tests each run a whole deployment of processes; run one
/// at a time, so neither measures the other's load on a small machine.
static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How late a request may start after a pause or stop response: far above one
/// control round trip and below the senders' status TTL ([`STATUS_TTL`]), which
/// is how long a stale `sending` would be trusted.
const LATE: Duration = Duration::from_millis(250);

/// The senders' status TTL in these stacks: long enough that a stale read shows
/// past `LATE`, short enough that TTL re-reads (the moments a pause can race)
/// come often.
const STATUS_TTL: Duration = Duration::from_millis(500);

/// How long each status read stays in flight after Postgres answered (fault
/// injection): a fifth of every TTL, so a pause at a random moment lands on a
/// read in flight at one of the three senders about half the time.
const READ_DELAY: Duration = Duration::from_millis(100);

/// How long each pause lasts: longer than the status TTL, so a stale read
/// would show as requests between `LATE` and the resume.
const HELD: Duration = Duration::from_millis(800);

/// Three senders with the production defaults for requests in flight (32),
/// batch size (500) and lease (30 s, so a slow machine never lets a lease
/// expire under a live sender), a 500 ms status TTL whose reads stay in flight
/// 100 ms, eight batches each and three Postgres connections each: a sender holds over a second of claimed rows, so a stale
/// `sending` would keep it going well past `LATE`, and its status re-reads
/// queue behind claims and outcome writes, so a pause often lands while one
/// is in flight.
async fn three_sender_stack(nats: &NatsServer) -> ProcessStack {
    ProcessStack::start(&herald(), &nats.url(), 1, 3, |role, env| match role {
        Role::Sender(_) => env
            .set("HERALD_SENDER_BATCHES", "8")
            .set("HERALD_DB_MAX_CONNECTIONS", "3")
            .set("HERALD_LEASE_SECONDS", "30")
            .set("HERALD_STATUS_TTL_MS", &STATUS_TTL.as_millis().to_string())
            .set(
                "HERALD_FAULT_STATUS_READ_DELAY_MS",
                &READ_DELAY.as_millis().to_string(),
            ),
        _ => env.set("HERALD_LEASE_SECONDS", "30"),
    })
    .await
}

/// Asserts that no recipient reached the provider twice; on failure, shows the
/// ledger rows and request times of a few repeated ones.
async fn assert_sent_once(stack: &ProcessStack, provider: &ProviderDouble) {
    let repeats = herald_testkit::faults::repeated_keys(provider);
    if repeats.is_empty() {
        return;
    }
    let pool = stack.pool();
    let mut shown = Vec::new();
    for key in repeats.keys().take(5) {
        let id: i64 = key.rsplit('-').next().unwrap().parse().unwrap();
        let row: (String, i32, Option<String>) =
            sqlx::query_as("SELECT status, attempts, last_error FROM recipients WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        let starts: Vec<_> = provider
            .requests()
            .iter()
            .filter(|r| &r.idempotency_key == key)
            .map(|r| r.started_at.format("%H:%M:%S%.3f").to_string())
            .collect();
        shown.push(format!("{key}: ledger {row:?}, requests at {starts:?}"));
    }
    panic!(
        "{} recipients reached the provider more than once, e.g.\n{}\n{}",
        repeats.len(),
        shown.join("\n"),
        stack.logs()
    );
}

/// Asserts that no request of `campaign` started more than `LATE` after
/// `answered`, and returns the latest start after it.
fn assert_none_late(
    stack: &ProcessStack,
    provider: &ProviderDouble,
    campaign: Uuid,
    answered: Instant,
    what: &str,
) -> Duration {
    let after = started_between(provider, campaign, answered, Instant::now());
    let late: Vec<&Duration> = after.iter().filter(|a| **a > LATE).collect();
    assert!(
        late.is_empty(),
        "{what}: {} requests started more than {LATE:?} after the response, the latest {:?} after it\n{}",
        late.len(),
        late.iter().max(),
        stack.logs()
    );
    after.into_iter().max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pauses_at_random_moments_start_no_request_more_than_250_ms_after_their_response() {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let provider = ProviderDouble::start(Duration::from_millis(10)).await;
    let nats = NatsServer::start().await;
    let stack = three_sender_stack(&nats).await;
    let pauses = 50;
    let id = started_campaign(&stack, &provider, 300_000).await;
    let mut sent = 0;
    let mut worst = Duration::ZERO;
    for round in 0..pauses {
        // Sends observed before each pause, then a pause at a moment that has
        // nothing to do with when the senders last read the status.
        sent += 150;
        wait_for_campaign_requests(&provider, id, sent).await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(
            0..STATUS_TTL.as_millis() as u64,
        )))
        .await;
        let (status, body) = stack.transition(id, "pause").await;
        assert_eq!(status, 200, "pause {round}: {body}");
        let answered = Instant::now();
        tokio::time::sleep(HELD).await;
        let latest = assert_none_late(&stack, &provider, id, answered, &format!("pause {round}"));
        worst = worst.max(latest);
        sent = provider.request_count();
        let (status, body) = stack.transition(id, "resume").await;
        assert_eq!(status, 200, "resume {round}: {body}");
    }
    eprintln!("{pauses} pauses: the latest request started {worst:?} after its pause response");
    assert_sent_once(&stack, &provider).await;
    // A stop ends it: everyone sent, failed or skipped (invariant 11).
    assert_eq!(stack.transition(id, "stop").await.0, 200);
    assert_every_fate_accounted(&stack.client, &stack.pool(), id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_stops_at_random_moments_start_no_request_more_than_250_ms_after_their_response() {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let provider = ProviderDouble::start(Duration::from_millis(10)).await;
    let nats = NatsServer::start().await;
    let stack = three_sender_stack(&nats).await;
    let stops = 50;
    let mut worst = Duration::ZERO;
    // Stop is final, so each stop takes a campaign of its own. Three run at
    // once, and the oldest is stopped at a random moment: stops land on
    // campaigns of every age, long after the senders first read their status.
    let mut running = std::collections::VecDeque::new();
    let mut ended = Vec::new();
    let (mut stopped, mut rounds) = (0, 0);
    while stopped < stops {
        rounds += 1;
        assert!(
            rounds <= stops * 3,
            "too many campaigns completed before their stop"
        );
        while running.len() < 3 {
            running.push_back(started_campaign(&stack, &provider, 20_000).await);
        }
        let id = running.pop_front().expect("a running campaign");
        ended.push(id);
        wait_for_campaign_requests(&provider, id, 150).await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(
            0..STATUS_TTL.as_millis() as u64,
        )))
        .await;
        let (status, body) = stack.transition(id, "stop").await;
        if status == 409 && body["error"]["from"] == "completed" {
            continue;
        }
        assert_eq!(status, 200, "stop {stopped}: {body}");
        let answered = Instant::now();
        tokio::time::sleep(HELD).await;
        worst = worst.max(assert_none_late(
            &stack,
            &provider,
            id,
            answered,
            &format!("stop {stopped}"),
        ));
        stopped += 1;
    }
    eprintln!("{stops} stops: the latest request started {worst:?} after its stop response");
    assert_sent_once(&stack, &provider).await;
    // Stopped or completed, every campaign accounts for every recipient.
    let pool = stack.pool();
    for id in ended {
        assert_every_fate_accounted(&stack.client, &pool, id).await;
    }
}
