//! Fault tests (issue 5, "Reliability and security"): the real `herald` binary as
//! separate OS processes, each test on its own nats-server and its own Postgres
//! cluster, with the provider double as the webhook. Processes are `kill -9`ed,
//! servers are stopped under them, messages are duplicated, and the provider
//! hangs; every scenario then checks docs/ARCHITECTURE.md invariants 1, 4 and 8 and the
//! degraded modes:
//!
//! - every recipient reached the provider once (or, where a crash or a provider
//!   timeout makes a repeat unavoidable, only with the same idempotency key and
//!   only for the requests the test can name),
//! - the campaign's counters equal the ledger,
//! - the event history is `seq` 1..n without gaps,
//! - the campaign completed exactly once.
//!
//! Run with `cargo test -p herald --test faults` (docs/RELIABILITY.md).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use herald_core::bus::Bus;
use herald_core::contracts::{PackRequest, SendBatch, TriggeredBy, decode};
use herald_testkit::faults::{HeraldEnv, ProcessStack, repeated_keys, wait_until};
use herald_testkit::{NatsServer, ProviderDouble, Reply, header, read_stream};
use reqwest::Method;
use serde_json::Value;
use uuid::Uuid;

fn herald() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herald"))
}

/// Waits until the provider has seen at least `at_least` requests.
async fn wait_for_requests(provider: &ProviderDouble, at_least: usize) {
    wait_until(
        &format!("{at_least} provider requests"),
        Duration::from_secs(60),
        || async { (provider.request_count() >= at_least).then_some(()) },
    )
    .await;
}

/// Waits until no request has reached the provider for `quiet`, and returns the
/// count then. Used to let in-flight work drain.
async fn wait_until_quiet(provider: &ProviderDouble, quiet: Duration) -> usize {
    let mut last = provider.request_count();
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = provider.request_count();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the provider never went quiet ({now} requests)"
        );
    }
}

/// Each of `expected` recipients reached the provider exactly once.
fn assert_each_key_once(provider: &ProviderDouble, expected: usize) {
    let repeats = repeated_keys(provider);
    assert!(
        repeats.is_empty(),
        "{} recipients reached the provider more than once: {:?}",
        repeats.len(),
        repeats.iter().take(10).collect::<Vec<_>>()
    );
    assert_eq!(
        provider.per_key().len(),
        expected,
        "every recipient reached the provider"
    );
}

/// The campaign row's paging state: (pack_cursor, pack_epoch, packed_epoch, run_epoch).
async fn pack_state(pool: &sqlx::PgPool, campaign: Uuid) -> (i64, i32, i32, i32) {
    sqlx::query_as(
        "SELECT pack_cursor, pack_epoch, packed_epoch, run_epoch FROM campaigns WHERE id = $1",
    )
    .bind(campaign)
    .fetch_one(pool)
    .await
    .expect("pack state")
}

/// Every message published on the stack's `campaigns.send` subject, as a plain
/// NATS subscriber sees it: before JetStream's de-duplication, so a batch the
/// packer publishes twice shows up twice here.
#[derive(Clone, Default)]
struct SendTap {
    seen: Arc<Mutex<Vec<(Instant, String, SendBatch)>>>,
}

impl SendTap {
    async fn start(bus: &Bus) -> Self {
        let tap = Self::default();
        let mut subscription = bus
            .client
            .subscribe(bus.subjects.send())
            .await
            .expect("subscribe to campaigns.send");
        bus.client.flush().await.expect("flush");
        let seen = tap.seen.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                if let Ok(batch) = decode::<SendBatch>(&message.payload) {
                    seen.lock().expect("tap").push((Instant::now(), id, batch));
                }
            }
        });
        tap
    }

    /// Batches the packer paged (deterministic `send-` ids), not sweeps or re-batches.
    fn packed(&self) -> Vec<(Instant, String, SendBatch)> {
        self.seen
            .lock()
            .expect("tap")
            .iter()
            .filter(|(_, id, _)| id.starts_with("send-"))
            .cloned()
            .collect()
    }
}

/// A recipient row held under a lease when a sender was killed.
type LeasedRow = (i64, Uuid, DateTime<Utc>, DateTime<Utc>);

async fn leased_rows(pool: &sqlx::PgPool, campaign: Uuid) -> Vec<LeasedRow> {
    sqlx::query_as(
        "SELECT id, lease_token, claimed_at, lease_expires_at FROM recipients
         WHERE campaign_id = $1 AND status = 'sending'",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await
    .expect("leased rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_senders_mid_batch_loses_no_recipient_and_repeats_only_requests_in_flight_at_the_kill()
 {
    let provider = ProviderDouble::start(Duration::from_millis(5)).await;
    let nats = NatsServer::start().await;
    let concurrency = 4;
    let mut stack = ProcessStack::start(herald(), &nats.url(), 1, 3, |_, env| {
        env.set("HERALD_BATCH_SIZE", "100")
            .set("HERALD_SENDER_CONCURRENCY", &concurrency.to_string())
    })
    .await;
    let total = 5_000;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, total).await;
    let pool = stack.pool();
    assert_eq!(stack.transition(id, "start").await.0, 200);

    // Three kills in a row, each of a different sender, each while batches are
    // being worked on; every victim comes straight back under the same replica
    // id. What was leased right after a kill (the victim's rows, frozen until
    // their leases expire, and the live senders' rows) is what a kill may repeat.
    let mut kills: Vec<Vec<LeasedRow>> = Vec::new();
    for round in 0..3 {
        wait_for_requests(&provider, 700 * (round + 1)).await;
        let victim = &mut stack.senders[round];
        victim.kill9();
        let held = leased_rows(&pool, id).await;
        assert!(
            !held.is_empty(),
            "round {round}: no batch was in progress to interrupt"
        );
        kills.push(held);
        victim.restart();
    }

    stack.assert_settled(id, total).await;

    // Each kill orphaned leases that another replica took over, and only after
    // they expired (3 s): the killed sender really was in the middle of a batch.
    let mut taken_over_rows = HashSet::new();
    for (round, held) in kills.iter().enumerate() {
        let ids: Vec<i64> = held.iter().map(|r| r.0).collect();
        let after: HashMap<i64, DateTime<Utc>> = sqlx::query_as(
            "SELECT id, claimed_at FROM recipients WHERE campaign_id = $1 AND id = ANY($2)",
        )
        .bind(id)
        .bind(&ids)
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        let taken_over: Vec<&LeasedRow> = held
            .iter()
            .filter(|(row, _, claimed, _)| after[row] != *claimed)
            .collect();
        assert!(
            !taken_over.is_empty(),
            "kill {round}: no lease of the killed sender was taken over"
        );
        for (row, _, _, expires) in taken_over {
            assert!(
                after[row] >= *expires,
                "kill {round}: row {row} was taken over at {} before its lease expired at {expires}",
                after[row]
            );
            taken_over_rows.insert(*row);
        }
    }

    // A request the provider accepted but whose outcome the killed sender had not
    // yet written is sent again after the lease expires, with the same
    // idempotency key. Nothing else may repeat: only rows the victim held
    // unrecorded at the kill, which another replica then took over. (That a
    // kill leaves few such rows, because outcomes are written as they complete
    // and not once per batch, is `sender_leases`' test of a batch whose last
    // request hangs.)
    let repeats = repeated_keys(&provider);
    let requests = provider.requests();
    for key in repeats.keys() {
        let row = requests
            .iter()
            .find(|r| &r.idempotency_key == key)
            .expect("a request")
            .recipient_id;
        assert!(
            taken_over_rows.contains(&row),
            "{key} was repeated although no killed sender held it unrecorded \
             ({} keys repeated, {} rows taken over)\n{}",
            repeats.len(),
            taken_over_rows.len(),
            explain_repeat(&stack, &requests, key)
        );
    }
    assert_eq!(provider.per_key().len(), total);
    eprintln!(
        "sender kills: {} repeated keys after {} kills",
        repeats.len(),
        kills.len()
    );
}

/// For a failure message: how many requests carried `key`, and every warning
/// the senders logged.
fn explain_repeat(
    stack: &ProcessStack,
    requests: &[herald_testkit::RecordedRequest],
    key: &str,
) -> String {
    let sent = requests.iter().filter(|r| r.idempotency_key == key).count();
    let mut out = format!("{sent} requests with {key}; sender warnings:\n");
    for sender in &stack.senders {
        for line in sender.log().lines().filter(|l| l.contains("WARN")) {
            out.push_str(&format!("{}: {line}\n", sender.name()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packer_killed_mid_pagination_resumes_from_its_checkpoint_without_republishing() {
    let provider = ProviderDouble::start(Duration::from_millis(5)).await;
    let nats = NatsServer::start().await;
    let mut stack = ProcessStack::start(herald(), &nats.url(), 1, 2, |_, env| {
        env.set("HERALD_BATCH_SIZE", "10")
            .set("HERALD_SENDER_CONCURRENCY", "4")
    })
    .await;
    let total = 6_000;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, total).await;
    let pool = stack.pool();
    let tap = SendTap::start(&stack.bus().await).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);

    // Kill it once it has checkpointed some pages but not all of them.
    wait_until(
        "the packer to checkpoint a page",
        Duration::from_secs(30),
        || async { (pack_state(&pool, id).await.0 > 0).then_some(()) },
    )
    .await;
    stack.packers[0].kill9();
    let (cursor, _, packed_epoch, run_epoch) = pack_state(&pool, id).await;
    assert!(
        packed_epoch < run_epoch,
        "paging finished before the kill; make it slower"
    );
    let max_id: i64 = sqlx::query_scalar("SELECT max(id) FROM recipients WHERE campaign_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(cursor < max_id);
    stack.packers[0].restart();

    // The pack message is redelivered after the work consumer's ack wait (30 s).
    wait_until(
        "the restarted packer to finish paging",
        Duration::from_secs(90),
        || async {
            let (_, _, packed, run) = pack_state(&pool, id).await;
            (packed == run).then_some(())
        },
    )
    .await;
    stack.assert_settled(id, total).await;
    assert_each_key_once(&provider, total);

    let packed = tap.packed();
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, msg_id, _) in &packed {
        *per_id.entry(msg_id.as_str()).or_default() += 1;
    }
    // Only the page published but not yet checkpointed at the kill may go out
    // twice (JetStream drops the copy: same Nats-Msg-Id).
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.len() <= 1, "pages published again: {twice:?}");
    for (msg_id, n) in &twice {
        assert_eq!(**n, 2);
        let first = packed
            .iter()
            .find(|(_, m, _)| m == *msg_id)
            .map(|(_, _, b)| b.first_recipient_id)
            .unwrap();
        assert!(
            first > cursor,
            "a checkpointed page ({msg_id}) was published again"
        );
    }
    // One packer publishes its pages in order and the tap receives them in
    // that order, so a restarted packer that paged from an earlier point would
    // show as a page starting before the one the tap saw just before it. (The
    // tap's clock cannot tell: on a loaded machine a page published before the
    // kill reaches the tap after it.)
    let firsts: Vec<i64> = packed
        .iter()
        .map(|(_, _, b)| b.first_recipient_id)
        .collect();
    if let Some(pair) = firsts.windows(2).find(|pair| pair[1] < pair[0]) {
        panic!(
            "the restarted packer began at {}, before the page at {} (checkpoint {cursor})",
            pair[1], pair[0]
        );
    }
    // The pages tile the ledger: every recipient was in exactly one packed page.
    let covered: usize = per_id
        .keys()
        .map(|m| {
            packed
                .iter()
                .find(|(_, id, _)| id == m)
                .map(|(_, _, b)| b.recipient_count as usize)
                .unwrap()
        })
        .sum();
    assert_eq!(covered, total, "pages cover every recipient once");
}

/// Waits until every control consumer of the stack has acknowledged the control
/// stream up to `sequence`: the message reached (and was applied by) each replica.
async fn wait_until_every_replica_acked(stack: &ProcessStack, bus: &Bus, sequence: u64) {
    let names: Vec<String> = stack
        .packers
        .iter()
        .map(|p| format!("ctl_packer_{}", p.name()))
        .chain(
            stack
                .senders
                .iter()
                .map(|s| format!("ctl_sender_{}", s.name())),
        )
        .collect();
    let stream = bus.js.get_stream(&bus.streams.control).await.unwrap();
    for name in names {
        wait_until(
            &format!("{name} to apply control message {sequence}"),
            Duration::from_secs(20),
            || async {
                let mut consumer = stream
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                    .await
                    .ok()?;
                let info = consumer.info().await.ok()?;
                (info.ack_floor.stream_sequence >= sequence).then_some(())
            },
        )
        .await;
    }
}

/// Waits until the outbox has no unpublished event of the campaign.
async fn all_events_published(pool: &sqlx::PgPool, campaign: Uuid) {
    wait_until(
        "the relay to publish every event",
        Duration::from_secs(30),
        || async {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM campaign_events WHERE campaign_id = $1 AND published_at IS NULL",
            )
            .bind(campaign)
            .fetch_one(pool)
            .await
            .ok()?;
            (left == 0).then_some(())
        },
    )
    .await;
}

async fn last_control_sequence(bus: &Bus, campaign: Uuid) -> u64 {
    read_stream(bus, &bus.streams.control, &bus.subjects.control(campaign))
        .await
        .last()
        .and_then(|m| m.info().ok().map(|i| i.stream_sequence))
        .expect("a control message on the stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarts_mid_campaign_and_during_a_pause_lose_no_transition_and_control_still_reaches_every_replica()
 {
    let provider = ProviderDouble::start(Duration::from_millis(20)).await;
    let mut nats = NatsServer::start().await;
    let (senders, concurrency) = (2, 4);
    let stack = ProcessStack::start(herald(), &nats.url(), 1, senders, |_, env| {
        env.set("HERALD_BATCH_SIZE", "100")
            .set("HERALD_SENDER_CONCURRENCY", &concurrency.to_string())
            .set("HERALD_STATUS_TTL_MS", "1000")
    })
    .await;
    let total = 4_000;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, total).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    wait_for_requests(&provider, 200).await;

    // 1. A restart while sending: the work carries on afterwards by itself.
    nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.resume().await;
    let after_restart = provider.request_count();
    wait_for_requests(&provider, after_restart + 200).await;

    // 2. A pause issued while NATS is down: it commits, and the senders honour it
    //    within the status TTL by re-reading Postgres.
    nats.stop();
    let (status, body) = stack.transition(id, "pause").await;
    assert_eq!(
        status, 200,
        "a pause never fails because NATS is down: {body}"
    );
    let answered = Instant::now();
    wait_until_quiet(&provider, Duration::from_millis(1500)).await;
    let last = provider.requests().iter().map(|r| r.started).max().unwrap();
    assert!(
        last < answered + Duration::from_millis(1000 + 1500),
        "sends went on {:?} after a pause with NATS down",
        last.saturating_duration_since(answered)
    );
    nats.resume().await;
    let pool = stack.pool();
    all_events_published(&pool, id).await;
    let bus = stack.bus().await;
    // The relayed pause is a hint that changes nothing: every replica applies it
    // and the campaign stays paused with nothing sent.
    let paused_seq = last_control_sequence(&bus, id).await;
    wait_until_every_replica_acked(&stack, &bus, paused_seq).await;
    let quiet = provider.request_count();
    let body = stack.campaign(id).await;
    assert_eq!(body["status"], "paused");
    assert_eq!(provider.request_count(), quiet, "the pause still holds");

    // 3. After the restart a resume, then a pause, each reach every replica.
    assert_eq!(stack.transition(id, "resume").await.0, 200);
    wait_until_every_replica_acked(&stack, &bus, last_control_sequence(&bus, id).await).await;
    wait_for_requests(&provider, quiet + 200).await;
    let (status, _) = stack.transition(id, "pause").await;
    assert_eq!(status, 200);
    let answered = Instant::now();
    wait_until_every_replica_acked(&stack, &bus, last_control_sequence(&bus, id).await).await;
    wait_until_quiet(&provider, Duration::from_millis(1500)).await;
    let late = provider
        .requests()
        .iter()
        .filter(|r| r.started > answered)
        .count();
    // Without the fast path each sender would go on for a whole TTL (1 s, about
    // 200 requests at 20 ms and 4 in flight); with it only in-flight work remains.
    assert!(
        late <= senders * concurrency,
        "{late} requests started after the pause response"
    );
    assert_eq!(stack.campaign(id).await["status"], "paused");

    assert_eq!(stack.transition(id, "resume").await.0, 200);
    stack.assert_settled(id, total).await;
    assert_each_key_once(&provider, total);
    // Invariant 1: every committed transition reached the stream exactly once
    // (the completion a sender commits is published by the api's relay).
    all_events_published(&pool, id).await;
    let events = stack.events(id).await;
    let on_stream = read_stream(&bus, &bus.streams.events, &bus.subjects.events(id)).await;
    let stream_ids: Vec<String> = on_stream
        .iter()
        .map(|m| header(m, "Nats-Msg-Id").unwrap_or_default())
        .collect();
    let stored_ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        stream_ids, stored_ids,
        "each event on the stream once, in order"
    );
}

fn assert_unavailable(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 503, "{what} while Postgres is down: {body}");
    assert_eq!(body["error"]["code"], "unavailable", "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_campaign_answers_503_claims_nothing_meanwhile_and_recovers_by_itself()
 {
    let provider = ProviderDouble::start(Duration::from_millis(10)).await;
    let nats = NatsServer::start().await;
    // Leases outlive the outage (about 4 s, longer on a busy machine). A lease
    // that expires while Postgres is down can pass to another replica the moment
    // it is back, before its holder writes the outcomes of requests that had
    // already gone out; those are then sent again under the same Idempotency-Key
    // (docs/RELIABILITY.md). That is the lease's contract, not this test's subject.
    let mut stack = ProcessStack::start(herald(), &nats.url(), 1, 2, |_, env| {
        env.set("HERALD_BATCH_SIZE", "100")
            .set("HERALD_SENDER_CONCURRENCY", "4")
            .set("HERALD_STATUS_TTL_MS", "1000")
            .set("HERALD_LEASE_SECONDS", "20")
    })
    .await;
    let total = 3_000;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, total).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    wait_for_requests(&provider, 300).await;

    let stopped = Instant::now();
    stack.pg.stop().await;
    let (status, body) = stack
        .call(Method::GET, &format!("/v1/campaigns/{id}"), None)
        .await;
    assert_unavailable(status, &body, "GET /v1/campaigns/{id}");
    let (status, body) = stack.transition(id, "pause").await;
    assert_unavailable(status, &body, "POST /v1/campaigns/{id}/pause");
    let response = stack.http.get(stack.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let readiness: Value = response.json().await.unwrap();
    assert_eq!(readiness["postgres"], "down");

    // In-flight requests finish (at most one status TTL), then nothing starts.
    let drained = wait_until_quiet(&provider, Duration::from_millis(1500)).await;
    // What did start after the stop were claimed rows whose cached "sending"
    // status was still within its TTL (1 s): the drain, not new work.
    let last = provider.requests().iter().map(|r| r.started).max().unwrap();
    assert!(
        last < stopped + Duration::from_millis(1000 + 2000),
        "dispatch went on {:?} after Postgres stopped",
        last.saturating_duration_since(stopped)
    );
    assert!(drained < total, "the campaign finished before the outage");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        provider.request_count(),
        drained,
        "a worker dispatched while Postgres was down"
    );

    stack.pg.start_again().await;
    wait_for_requests(&provider, drained + 100).await;
    stack.assert_settled(id, total).await;
    assert_each_key_once(&provider, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_send_batches_and_a_pack_message_redelivered_after_a_packer_crash_send_nobody_twice()
 {
    let provider = ProviderDouble::start(Duration::from_millis(5)).await;
    let nats = NatsServer::start().await;
    let mut stack = ProcessStack::start(herald(), &nats.url(), 1, 2, |_, env| {
        env.set("HERALD_BATCH_SIZE", "10")
            .set("HERALD_SENDER_CONCURRENCY", "8")
    })
    .await;
    let total = 4_000;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, total).await;
    let pool = stack.pool();
    let bus = stack.bus().await;
    let tap = SendTap::start(&bus).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);

    // The first batch the packer publishes goes out twice more, with fresh ids.
    let (_, _, first) = wait_until("a packed batch", Duration::from_secs(30), || async {
        tap.packed().first().cloned()
    })
    .await;
    let payload = herald_core::contracts::encode(&first).unwrap();
    for copy in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("dup-{copy}-{}", Uuid::new_v4()).as_str(),
        );
        let ack = bus
            .js
            .publish_with_headers(bus.subjects.send(), headers, payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(!ack.duplicate, "JetStream kept copy {copy}");
    }
    // A second pack request for the same epoch: the packer pages the campaign
    // twice at once.
    let again = PackRequest {
        campaign_id: id,
        run_epoch: 1,
        triggered_at: Utc::now(),
        triggered_by: TriggeredBy::Manual,
        correlation_id: Uuid::new_v4(),
        batches: None,
    };
    bus.publish_contract(
        bus.subjects.pack(),
        &again,
        &format!("dup-pack-{}", Uuid::new_v4()),
        None,
    )
    .await
    .unwrap();

    // Crash the packer mid-pagination; its pack messages are redelivered to the
    // restarted process after the ack wait.
    wait_until(
        "the packer to checkpoint a page",
        Duration::from_secs(30),
        || async { (pack_state(&pool, id).await.0 > 0).then_some(()) },
    )
    .await;
    stack.packers[0].kill9();
    let (_, _, packed_epoch, run_epoch) = pack_state(&pool, id).await;
    assert!(
        packed_epoch < run_epoch,
        "paging finished before the kill; make it slower"
    );
    stack.packers[0].restart();

    stack.assert_settled(id, total).await;
    assert_each_key_once(&provider, total);
    let copies = tap
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, b)| *b == first)
        .count();
    assert!(copies >= 3, "the batch went out {copies} times");
    // Every copy was consumed and settled.
    let mut consumer = bus
        .work_consumer(herald_core::bus::SENDER_DURABLE)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_pending, 0, "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_accepts_but_times_out_gets_the_retry_with_the_same_idempotency_key() {
    let timeout = Duration::from_millis(500);
    // Every tenth recipient: the first attempt is accepted but answered only after
    // the sender gave up on it.
    let provider = ProviderDouble::scripted(Duration::ZERO, move |request| {
        if request.recipient_id % 10 == 0 && request.attempt == 1 {
            Reply::Hang(timeout * 3)
        } else {
            Reply::Ok
        }
    })
    .await;
    let nats = NatsServer::start().await;
    let stack = ProcessStack::start(herald(), &nats.url(), 1, 2, |_, env: HeraldEnv| {
        env.set(
            "HERALD_PROVIDER_TIMEOUT_MS",
            &timeout.as_millis().to_string(),
        )
        .set("HERALD_BATCH_SIZE", "50")
    })
    .await;
    let total = 200;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, total).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    stack.assert_settled(id, total).await;

    let requests = provider.requests();
    let mut keys: HashMap<i64, HashSet<String>> = HashMap::new();
    for r in &requests {
        keys.entry(r.recipient_id)
            .or_default()
            .insert(r.idempotency_key.clone());
    }
    assert_eq!(keys.len(), total);
    assert!(
        keys.values().all(|k| k.len() == 1),
        "one idempotency key per recipient across attempts"
    );
    let attempts: Vec<(i64, i32, String)> = sqlx::query_as(
        "SELECT id, attempts, status FROM recipients WHERE campaign_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&stack.pool())
    .await
    .unwrap();
    let per_key = provider.per_key();
    let mut hung = 0;
    for (recipient, recorded, status) in attempts {
        assert_eq!(status, "sent");
        let key = keys[&recipient].iter().next().unwrap();
        if recipient % 10 == 0 {
            hung += 1;
            assert_eq!(
                per_key[key], 2,
                "recipient {recipient}: timed out once, retried once"
            );
            assert!(
                recorded >= 2,
                "recipient {recipient}: the ledger records {recorded} attempts"
            );
        } else {
            assert_eq!(per_key[key], 1, "recipient {recipient} was sent once");
            assert_eq!(recorded, 1);
        }
    }
    assert!(hung >= total / 10 - 1, "only {hung} recipients hung");
}
