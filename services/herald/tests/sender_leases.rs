//! What a sender's leases leave to repeat when it dies or stalls: the real
//! `herald` binary as OS processes, each test on its own nats-server and
//! Postgres cluster, with the provider double as the webhook.
//!
//! - A sender that outlives its lease without dying (a frozen VM, a stalled
//!   host) sends none of the rows another replica took over: it fences itself
//!   by its own clock (`herald_sender::lease`).
//! - A renewal keeps only the rows still under its lease, and never revives an
//!   expired one (`herald_sender::ledger::renew_leases`).
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
use herald_core::contracts::SendBatch;
use herald_testkit::faults::{ProcessStack, wait_until};
use herald_testkit::{ProviderDouble, Reply};
use serde_json::json;
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
    let concurrency = 2;
    let stack = ProcessStack::start(herald(), &nats.url(), 1, 2, |_, env| {
        env.set("HERALD_BATCH_SIZE", "100")
            .set("HERALD_SENDER_CONCURRENCY", &concurrency.to_string())
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
    // not start a request for one of those it held before: they went out
    // already. (Only a request it had begun when it froze, up to its
    // concurrency, may go out late.)
    let status = stack.campaign(id).await["status"].clone();
    assert_eq!(
        status, "sending",
        "the campaign ended before the thaw; make it longer"
    );
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
        resent.len() <= concurrency,
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
            // Renewed throughout the hang, whatever the machine's load.
            .set("HERALD_LEASE_SECONDS", "30")
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

#[tokio::test]
async fn a_renewal_keeps_only_the_rows_still_under_its_lease_and_never_revives_an_expired_one() {
    use herald_sender::ledger::{claim_batch, renew_leases};

    let stack = herald_testkit::Stack::start(0, 0, herald_testkit::test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    stack.import(id, 6).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let pool = stack.env.pool();
    let batch = SendBatch {
        campaign_id: id,
        run_epoch: 1,
        first_recipient_id: 0,
        last_recipient_id: i64::MAX,
        recipient_count: 6,
        correlation_id: Uuid::new_v4(),
    };
    let first = Uuid::new_v4();
    let claimed = claim_batch(&pool, &batch, first, 30.0, i64::MAX)
        .await
        .unwrap();
    let ids: Vec<i64> = claimed.rows.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 6);
    let renew = |token: Uuid| {
        let (pool, ids) = (pool.clone(), ids.clone());
        async move {
            let mut renewed = renew_leases(&pool, id, token, &ids, 30.0).await.unwrap();
            renewed.sort_unstable();
            renewed
        }
    };
    assert_eq!(renew(first).await, ids);

    // Two rows' leases ran out and another claim took them over (as it may
    // while a late renewal waits on their row locks): the renewal keeps the rest.
    expire(&pool, id, &ids[..2]).await;
    let second = Uuid::new_v4();
    let taken = claim_batch(&pool, &batch, second, 30.0, 2)
        .await
        .unwrap()
        .rows;
    assert_eq!(taken.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(renew(first).await, ids[2..]);

    // Once the rest has run out too, nothing is renewed, not even the lease row
    // the sweep goes by, though no other claim has taken those rows yet.
    expire(&pool, id, &ids[2..]).await;
    sqlx::query("UPDATE recipient_leases SET expires_at = now() - interval '1 second' WHERE lease_token = $1")
        .bind(first)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(renew(first).await, Vec::<i64>::new());
    let lease_expired: bool = sqlx::query_scalar(
        "SELECT expires_at < now() FROM recipient_leases WHERE lease_token = $1",
    )
    .bind(first)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        lease_expired,
        "a renewal that renewed no row extended the lease row"
    );
    stack.stop().await;
}

/// Moves the leases of rows `ids` into the past, as if their holder had
/// stalled for longer than the lease.
async fn expire(pool: &sqlx::PgPool, campaign: Uuid, ids: &[i64]) {
    sqlx::query(
        "UPDATE recipients SET lease_expires_at = now() - interval '1 second'
         WHERE campaign_id = $1 AND id = ANY($2)",
    )
    .bind(campaign)
    .bind(ids)
    .execute(pool)
    .await
    .unwrap();
}
