//! What a sender's leases leave to repeat when it dies or stalls: the real
//! `herald` binary as OS processes, each test on its own nats-server and
//! Postgres cluster, with the provider double as the webhook.
//!
//! - A sender that outlives its lease without dying (a frozen VM, a stalled
//!   host) sends none of the rows another replica took over: it fences itself
//!   by its own clock (`herald_sender::lease`).
//! - Outcomes reach the ledger as their requests complete, not once per batch,
//!   so a `kill -9` leaves only the rows in flight unrecorded (`faults` kills
//!   senders and checks that nothing else repeats).
//!
//! Run with `cargo test -p herald --test sender_leases`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_testkit::faults::{ProcessStack, wait_until};
use herald_testkit::{ProviderDouble, Reply};
use uuid::Uuid;

fn herald() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herald"))
}

/// When each row held under a lease right now was claimed.
async fn leased_rows(pool: &sqlx::PgPool, campaign: Uuid) -> HashMap<i64, DateTime<Utc>> {
    sqlx::query_as(
        "SELECT id, claimed_at FROM recipients WHERE campaign_id = $1 AND status = 'sending'",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await
    .expect("leased rows")
    .into_iter()
    .collect()
}

/// How many of the rows in `held` are sent, and how many were claimed again
/// since (taken over: a claim sets `claimed_at`, recording an outcome keeps it).
async fn sent_and_taken_over(
    pool: &sqlx::PgPool,
    campaign: Uuid,
    held: &HashMap<i64, DateTime<Utc>>,
) -> (usize, usize) {
    let ids: Vec<i64> = held.keys().copied().collect();
    let rows: Vec<(i64, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, status, claimed_at FROM recipients WHERE campaign_id = $1 AND id = ANY($2)",
    )
    .bind(campaign)
    .bind(&ids)
    .fetch_all(pool)
    .await
    .expect("rows");
    let sent = rows.iter().filter(|r| r.1 == "sent").count();
    let taken_over = rows.iter().filter(|r| r.2 != held[&r.0]).count();
    (sent, taken_over)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_frozen_past_its_lease_sends_none_of_the_rows_another_replica_took_over() {
    let provider = ProviderDouble::start(Duration::from_millis(20)).await;
    let nats = herald_testkit::NatsServer::start().await;
    let stack = ProcessStack::start(herald(), &nats.url(), 1, 2, |_, env| {
        env.set("HERALD_BATCH_SIZE", "100")
            .set("HERALD_SENDER_CONCURRENCY", "2")
    })
    .await;
    let total = 1_500;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, total).await;
    let pool = stack.pool();
    assert_eq!(stack.transition(id, "start").await.0, 200);
    wait_until(
        "the senders to be sending",
        Duration::from_secs(60),
        || async { (provider.requests().len() >= 30).then_some(()) },
    )
    .await;

    // Freeze one sender mid-batch. Its leases (3 s) run out while it cannot
    // renew them, and the other sender takes its rows over and sends them.
    let frozen = &stack.senders[0];
    frozen.sigstop();
    let held = leased_rows(&pool, id).await;
    wait_until(
        "every row held at the freeze to be sent",
        Duration::from_secs(60),
        || async { (sent_and_taken_over(&pool, id, &held).await.0 == held.len()).then_some(()) },
    )
    .await;
    let taken_over = sent_and_taken_over(&pool, id, &held).await.1;
    assert!(
        taken_over > 0,
        "the freeze caught the sender between batches; no row was taken over"
    );

    // Thawed while the campaign still sends, it may claim new rows, but it must
    // not send one of those it held before: they went out already.
    let before_thaw: HashSet<String> = provider
        .requests()
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect();
    let requests_before_thaw = provider.requests().len();
    frozen.sigcont();
    stack.assert_settled(id, total).await;
    let resent: Vec<String> = provider.requests()[requests_before_thaw..]
        .iter()
        .map(|r| r.idempotency_key.clone())
        .filter(|key| before_thaw.contains(key))
        .collect();
    assert!(
        resent.is_empty(),
        "{} requests after the thaw repeated keys sent before it (taken over: {taken_over}): {:?}",
        resent.len(),
        resent.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        frozen.log().contains("lease ran out"),
        "the thawed sender did not report its lease running out:\n{}",
        stack.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_records_each_outcome_while_its_slowest_request_still_waits_for_the_provider() {
    // The first request of the one batch hangs far longer than the rest take.
    let hanging = Duration::from_secs(15);
    let first = AtomicBool::new(true);
    let provider = ProviderDouble::scripted(Duration::from_millis(5), move |_| {
        if first.swap(false, Ordering::SeqCst) {
            Reply::Hang(hanging)
        } else {
            Reply::Ok
        }
    })
    .await;
    let nats = herald_testkit::NatsServer::start().await;
    let total = 40;
    let stack = ProcessStack::start(herald(), &nats.url(), 1, 1, |_, env| {
        env.set("HERALD_BATCH_SIZE", &total.to_string())
            .set("HERALD_SENDER_CONCURRENCY", "4")
            .set("HERALD_PROVIDER_TIMEOUT_MS", "60000")
    })
    .await;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, total).await;
    let pool = stack.pool();
    assert_eq!(stack.transition(id, "start").await.0, 200);

    // Every other row is recorded sent while the batch still waits on the
    // hung request; a sender that wrote a batch's outcomes at its end would
    // leave them all `sending` (and a kill would repeat them all).
    let status_counts = || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM recipients WHERE campaign_id = $1 GROUP BY status",
        )
        .bind(id)
        .fetch_all(&pool)
        .await
        .expect("status counts");
        rows.into_iter().collect::<HashMap<_, _>>()
    };
    let counts = wait_until(
        "every answered request to be recorded",
        hanging - Duration::from_secs(2),
        || async {
            let counts = status_counts().await;
            (counts.get("sent") == Some(&(total as i64 - 1))).then_some(counts)
        },
    )
    .await;
    assert_eq!(counts.get("sending"), Some(&1), "{counts:?}");
    assert_eq!(
        provider.answered().len(),
        total - 1,
        "the hung request was answered early"
    );
    stack.assert_settled(id, total).await;
}
