//! The dispatch pipeline end to end: packer and sender replicas in-process, real
//! Postgres and NATS, a local HTTP provider double (docs/ARCHITECTURE.md invariants 2 to 6).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use herald_core::contracts::{ControlAction, ControlMessage, DeadLetter};
use herald_core::lifecycle::Status;
use herald_sender::SenderConfig;
use herald_testkit::*;
use serde_json::json;
use uuid::Uuid;

/// address, status, attempts, last_error, provider_message_id
type LedgerRow = (String, String, i32, Option<String>, Option<String>);

async fn claimed_after(stack: &Stack, campaign: Uuid, at: chrono::DateTime<chrono::Utc>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM recipients WHERE campaign_id = $1 AND claimed_at > $2")
        .bind(campaign)
        .bind(at)
        .fetch_one(&stack.env.pool())
        .await
        .unwrap()
}

async fn wait_for_requests(provider: &ProviderDouble, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while provider.request_count() < at_least {
        assert!(
            Instant::now() < deadline,
            "provider saw only {} requests",
            provider.request_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_until_quiet(provider: &ProviderDouble) {
    let mut last = provider.request_count();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = provider.request_count();
        if now == last {
            return;
        }
        last = now;
    }
}

/// A schema-valid send batch whose id range covers the whole campaign, declaring
/// `declared` recipients (a claim takes at most twice that).
fn batch_spanning_campaign(campaign: Uuid, declared: i64) -> herald_core::contracts::SendBatch {
    herald_core::contracts::SendBatch {
        campaign_id: campaign,
        run_epoch: 1,
        first_recipient_id: 0,
        last_recipient_id: i64::MAX,
        recipient_count: declared,
        correlation_id: Uuid::new_v4(),
    }
}

/// A started campaign of `recipients` rows on a stack with no packer and no
/// sender: the test drives the ledger itself.
async fn sending_without_workers(channel: serde_json::Value, recipients: usize) -> (Stack, Uuid) {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(channel).await;
    stack.import(id, recipients).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    (stack, id)
}

/// A recipient the provider accepted on the first attempt.
fn sent_outcome(id: i64) -> herald_sender::ledger::RecipientOutcome {
    herald_sender::ledger::RecipientOutcome::sent(id, None, 1)
}

fn assert_each_recipient_sent_once(provider: &ProviderDouble, expected: usize) {
    let per_key = provider.per_key();
    let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "recipients dispatched more than once: {twice:?}"
    );
    assert_eq!(
        per_key.len(),
        expected,
        "every recipient reached the provider"
    );
}

#[tokio::test]
async fn twenty_thousand_recipients_reach_the_provider_exactly_once_across_three_senders_and_two_packers()
 {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(2, 3, test_sender_config()).await;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 20_000).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let body = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(180))
        .await;
    assert_each_recipient_sent_once(&provider, 20_000);
    assert_eq!(body["counters"]["sent"], 20_000);
    assert_counters_match_ledger(&stack.env.pool(), id, &body).await;
    // The provider saw exactly the ledger's ids, with the stable key.
    let ids: HashSet<i64> = provider.requests().iter().map(|r| r.recipient_id).collect();
    let ledger: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM recipients WHERE campaign_id = $1 AND status = 'sent'")
            .bind(id)
            .fetch_all(&stack.env.pool())
            .await
            .unwrap();
    assert_eq!(ids, ledger.into_iter().collect());
    let completions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM campaign_events WHERE campaign_id = $1 AND type = 'completed'",
    )
    .bind(id)
    .fetch_one(&stack.env.pool())
    .await
    .unwrap();
    assert_eq!(completions, 1, "completed exactly once");
    // Work was actually split between the replicas.
    let replicas: HashSet<String> = {
        let bus = stack.env.bus().await;
        read_stream(&bus, &bus.streams.tracked, &bus.subjects.tracked(id))
            .await
            .iter()
            .map(|m| {
                herald_core::contracts::decode::<herald_core::contracts::BatchTracked>(&m.payload)
                    .unwrap()
                    .replica_id
            })
            .collect()
    };
    assert!(replicas.len() >= 2, "batches were handled by {replicas:?}");
    assert_every_fate_accounted(&stack.client, &stack.env.pool(), id).await;
    stack.stop().await;
}

#[tokio::test]
async fn a_pause_reaches_every_replica_stops_claims_at_once_and_resume_sends_exactly_what_remains()
{
    let provider = ProviderDouble::start(Duration::from_millis(20)).await;
    let concurrency = 8;
    let sender = SenderConfig {
        concurrency,
        ..test_sender_config()
    };
    let stack = Stack::start(2, 3, sender).await;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 3_000).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    wait_for_requests(&provider, 300).await;

    let (status, _) = stack.transition(id, "pause").await;
    let answered = Instant::now();
    let answered_at = chrono::Utc::now();
    assert_eq!(status, 200);
    wait_until_quiet(&provider).await;

    for sender in &stack.workers.senders {
        assert!(
            sender
                .applied_controls()
                .iter()
                .any(|c| c.campaign_id == id && c.action == ControlAction::Pause),
            "sender {} never saw the pause",
            sender.replica_id()
        );
    }
    for packer in &stack.workers.packers {
        assert!(
            packer
                .applied_controls()
                .contains(&(id, ControlAction::Pause)),
            "packer {} never saw the pause",
            packer.replica_id()
        );
    }
    assert_eq!(
        claimed_after(&stack, id, answered_at).await,
        0,
        "no row is claimed after the pause commits"
    );
    let late = provider
        .requests()
        .iter()
        .filter(|r| r.started > answered)
        .count();
    assert!(
        late <= 3 * concurrency,
        "{late} requests started after the pause response"
    );
    let paused = stack.campaign(id).await;
    assert_eq!(paused["status"], "paused");
    assert_eq!(
        paused["counters"]["sending"], 0,
        "unsent claimed rows went back to pending"
    );
    assert_counters_match_ledger(&stack.env.pool(), id, &paused).await;
    let sent_before_resume = provider.request_count();
    assert!(
        sent_before_resume < 3_000,
        "the pause came too late to test anything"
    );

    assert_eq!(stack.transition(id, "resume").await.0, 200);
    let body = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(120))
        .await;
    assert_each_recipient_sent_once(&provider, 3_000);
    assert_counters_match_ledger(&stack.env.pool(), id, &body).await;
    assert_every_fate_accounted(&stack.client, &stack.env.pool(), id).await;
    stack.stop().await;
}

#[tokio::test]
async fn a_stop_in_mid_flight_is_final() {
    let provider = ProviderDouble::start(Duration::from_millis(20)).await;
    let stack = Stack::start(
        1,
        2,
        SenderConfig {
            concurrency: 8,
            ..test_sender_config()
        },
    )
    .await;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 2_000).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    wait_for_requests(&provider, 100).await;
    assert_eq!(stack.transition(id, "stop").await.0, 200);
    wait_until_quiet(&provider).await;
    let after_stop = provider.request_count();
    let (status, body) = stack.transition(id, "resume").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["from"], "stopped");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        provider.request_count(),
        after_stop,
        "no send follows a stop"
    );
    let body = assert_every_fate_accounted(&stack.client, &stack.env.pool(), id).await;
    assert_eq!(body["status"], "stopped");
    assert_eq!(body["counters"]["sending"], 0);
    assert_eq!(
        body["counters"]["pending"], 0,
        "a stop leaves nothing pending"
    );
    assert!(body["counters"]["skipped"].as_i64().unwrap() > 0);
    assert_eq!(
        body["reasons"]["campaign_stopped"],
        body["counters"]["skipped"]
    );
    stack.stop().await;
}

async fn forge(stack: &Stack, campaign: Uuid, action: ControlAction) {
    let bus = stack.env.bus().await;
    let forged = ControlMessage {
        campaign_id: campaign,
        action,
        correlation_id: Uuid::new_v4(),
    };
    bus.publish_contract(
        bus.subjects.control(campaign),
        &forged,
        &Uuid::new_v4().to_string(),
        None,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn forged_control_messages_change_no_state_and_cause_no_send() {
    let provider = ProviderDouble::start(Duration::from_millis(5)).await;
    let stack = Stack::start(1, 2, test_sender_config()).await;

    // A forged pause while Postgres says sending: the campaign carries on.
    let sending = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(sending, 1_000).await;
    assert_eq!(stack.transition(sending, "start").await.0, 200);
    wait_for_requests(&provider, 50).await;
    let version = stack.campaign(sending).await["version"].clone();
    forge(&stack, sending, ControlAction::Pause).await;
    forge(&stack, sending, ControlAction::Stop).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = stack.workers.senders.iter().all(|s| {
        s.applied_controls()
            .iter()
            .any(|c| c.campaign_id == sending)
    });
    assert!(seen, "the forged messages were delivered, and ignored");
    let body = stack
        .wait_for_status(sending, Status::Completed, Duration::from_secs(60))
        .await;
    assert_eq!(
        body["version"].as_i64(),
        version.as_i64().map(|v| v + 1),
        "only the completion changed state"
    );
    assert_each_recipient_sent_once(&provider, 1_000);
    assert_every_fate_accounted(&stack.client, &stack.env.pool(), sending).await;

    // A forged resume while Postgres says paused: nothing is sent.
    let paused = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(paused, 500).await;
    assert_eq!(stack.transition(paused, "start").await.0, 200);
    assert_eq!(stack.transition(paused, "pause").await.0, 200);
    wait_until_quiet(&provider).await;
    let before = provider.request_count();
    forge(&stack, paused, ControlAction::Resume).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        provider.request_count(),
        before,
        "a forged resume sends nothing"
    );
    assert_eq!(stack.campaign(paused).await["status"], "paused");
    stack.stop().await;
}

#[tokio::test]
async fn provider_failures_are_retried_or_recorded_as_the_contract_says() {
    // Recipient 0: 500, 500, then 200. Recipient 1: 400. Recipient 2: 429 with Retry-After: 1, then 200.
    let provider = ProviderDouble::scripted(Duration::ZERO, |request| {
        let address = request.body["address"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match (address.as_str(), request.attempt) {
            ("+155500000000", 1 | 2) => Reply::Status(500),
            ("+155500000001", _) => Reply::Status(400),
            ("+155500000002", 1) => Reply::RetryAfter(429, 1),
            _ => Reply::Ok,
        }
    })
    .await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 3).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let body = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(30))
        .await;
    assert_eq!(body["counters"]["sent"], 2);
    assert_eq!(body["counters"]["failed"], 1);
    let rows: Vec<LedgerRow> = sqlx::query_as(
        "SELECT address, status, attempts, last_error, provider_message_id FROM recipients WHERE campaign_id = $1 ORDER BY address")
        .bind(id).fetch_all(&stack.env.pool()).await.unwrap();
    assert_eq!((rows[0].1.as_str(), rows[0].2), ("sent", 3), "{rows:?}");
    assert!(
        rows[0].4.as_deref().is_some_and(|m| m.starts_with("msg-")),
        "the provider's message id is kept"
    );
    assert_eq!((rows[1].1.as_str(), rows[1].2), ("failed", 1));
    assert!(
        rows[1].3.as_deref().unwrap_or_default().contains("400"),
        "the reason is recorded: {:?}",
        rows[1].3
    );
    assert_eq!(rows[2].1, "sent");
    let requests = provider.requests();
    let third: Vec<_> = requests
        .iter()
        .filter(|r| r.body["address"] == "+155500000002")
        .collect();
    assert_eq!(third.len(), 2);
    assert!(
        third[1].started - third[0].started >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    // Every attempt carried the same idempotency key.
    let first: HashSet<_> = requests
        .iter()
        .filter(|r| r.body["address"] == "+155500000000")
        .map(|r| r.idempotency_key.clone())
        .collect();
    assert_eq!(first.len(), 1);
    let body = assert_every_fate_accounted(&stack.client, &stack.env.pool(), id).await;
    assert_eq!(body["reasons"], json!({"provider_rejected": 1}));
    stack.stop().await;
}

/// A campaign sent by two senders without the control fast path (each trusts
/// its cached status for `ttl`) to a provider that takes 10 ms per request,
/// paused once 100 requests have arrived.
async fn paused_without_the_fast_path(
    ttl: Duration,
    concurrency: usize,
    recipients: usize,
) -> (ProviderDouble, Stack, Uuid) {
    let provider = ProviderDouble::start(Duration::from_millis(10)).await;
    let mut sender = SenderConfig {
        concurrency,
        status_ttl_ms: ttl.as_millis() as u64,
        ..test_sender_config()
    };
    sender.control.control_fast_path = false;
    let stack = Stack::start(1, 2, sender).await;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, recipients).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    wait_for_requests(&provider, 100).await;
    assert_eq!(stack.transition(id, "pause").await.0, 200);
    (provider, stack, id)
}

#[tokio::test]
async fn with_the_fast_path_off_a_pause_still_takes_effect_within_the_status_ttl() {
    let ttl = Duration::from_millis(1000);
    let (provider, stack, id) = paused_without_the_fast_path(ttl, 4, 5_000).await;
    let answered = Instant::now();
    let answered_at = chrono::Utc::now();
    wait_until_quiet(&provider).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Senders still trust their cached "sending" for up to a TTL, but the claim
    // itself reads Postgres: nothing is claimed after the pause.
    assert_eq!(
        claimed_after(&stack, id, answered_at).await,
        0,
        "no row is claimed after the pause commits"
    );
    let requests = provider.requests();
    let last = requests.iter().map(|r| r.started).max().unwrap();
    // The authoritative recheck stops dispatch one TTL (plus one in-flight request) later.
    assert!(
        last < answered + ttl + Duration::from_millis(1500),
        "sent {:?} after the pause",
        last - answered
    );
    assert!(
        stack
            .workers
            .senders
            .iter()
            .all(|s| s.applied_controls().is_empty()),
        "no control consumer ran"
    );
    let body = stack.campaign(id).await;
    assert_eq!(body["status"], "paused");
    assert!(body["counters"]["pending"].as_i64().unwrap() > 0);
    stack.stop().await;
}

#[tokio::test]
async fn with_the_fast_path_off_a_resume_sends_the_rest_at_once_although_senders_cached_paused() {
    let ttl = Duration::from_secs(2);
    let (provider, stack, id) = paused_without_the_fast_path(ttl, 8, 10_000).await;
    wait_until_quiet(&provider).await;
    let before_resume = provider.requests().len();
    assert!(
        before_resume < 6_000,
        "the pause came too late to leave work for the resume ({before_resume} sent)"
    );
    // Once their cached "sending" has expired, the senders meet batches of the
    // paused campaign (redelivered ones, say), read "paused" and keep it for a
    // TTL. The resume lands inside that window.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let bus = stack.env.bus().await;
    for _ in 0..10 {
        bus.publish_contract(
            bus.subjects.send(),
            &herald_core::contracts::SendBatch {
                first_recipient_id: 1,
                ..batch_spanning_campaign(id, 200)
            },
            &Uuid::new_v4().to_string(),
            None,
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.transition(id, "resume").await.0, 200);
    // The batches that resume packs reach senders whose cache still says paused.
    // They re-read Postgres instead of dropping them, so the rest goes now, not
    // after the packer's stall sweep (30 s here) finds the rows left pending.
    let body = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(25))
        .await;
    assert!(provider.requests().len() > before_resume);
    assert_each_recipient_sent_once(&provider, 10_000);
    assert_counters_match_ledger(&stack.env.pool(), id, &body).await;
    assert_every_fate_accounted(&stack.client, &stack.env.pool(), id).await;
    stack.stop().await;
}

#[tokio::test]
async fn a_malformed_send_batch_is_dead_lettered_and_the_sender_keeps_working() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let bus = stack.env.bus().await;
    for bad in [
        &b"{\"campaignId\": "[..],
        &b"{\"campaignId\": 5}"[..],
        &b"\xff\xfe"[..],
    ] {
        bus.publish_raw(
            bus.subjects.send(),
            bad.to_vec().into(),
            &Uuid::new_v4().to_string(),
            None,
        )
        .await
        .unwrap();
    }
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 100).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(30))
        .await;
    let dead = read_stream(
        &bus,
        &bus.streams.dlq,
        &bus.subjects.dlq(&bus.subjects.send()),
    )
    .await;
    assert_eq!(dead.len(), 3, "each bad message is dead-lettered once");
    for message in dead {
        let letter: DeadLetter =
            herald_core::contracts::decode(&message.payload).expect("schema-valid dead letter");
        assert_eq!(letter.original_subject, "campaigns.send");
        assert!(!letter.reason.is_empty());
        assert_eq!(letter.consumer, "sender");
    }
    // Terminated, not redelivered: nothing is left pending on the work consumer.
    let mut consumer = bus
        .work_consumer(herald_core::bus::SENDER_DURABLE)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    assert_every_fate_accounted(&stack.client, &stack.env.pool(), id).await;
    stack.stop().await;
}

#[tokio::test]
async fn a_claim_that_races_a_pause_waits_for_it_and_then_claims_nothing() {
    let (stack, id) = sending_without_workers(json!({"provider": "log"}), 50).await;
    let pool = stack.env.pool();
    let batch = batch_spanning_campaign(id, 50);
    // A pause in the middle of its transaction: the row lock is held, not yet committed.
    let mut pause = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM campaigns WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *pause)
        .await
        .unwrap();
    sqlx::query("UPDATE campaigns SET status = 'paused' WHERE id = $1")
        .bind(id)
        .execute(&mut *pause)
        .await
        .unwrap();
    let claim = tokio::spawn({
        let pool = pool.clone();
        let batch = batch.clone();
        async move {
            herald_sender::ledger::claim_batch(&pool, &batch, Uuid::new_v4(), 30.0, i64::MAX)
                .await
                .unwrap()
                .rows
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !claim.is_finished(),
        "the claim waits for the pause to commit or roll back"
    );
    pause.commit().await.unwrap();
    assert!(
        claim.await.unwrap().is_empty(),
        "after the pause commits, nothing is claimed"
    );
    // And a claim that wins the race commits before the pause can.
    sqlx::query("UPDATE campaigns SET status = 'sending' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let claimed = herald_sender::ledger::claim_batch(&pool, &batch, Uuid::new_v4(), 30.0, i64::MAX)
        .await
        .unwrap()
        .rows;
    assert_eq!(claimed.len(), 50);
    let again = herald_sender::ledger::claim_batch(&pool, &batch, Uuid::new_v4(), 30.0, i64::MAX)
        .await
        .unwrap()
        .rows;
    assert!(
        again.is_empty(),
        "rows under a live lease are never claimed twice"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_batch_claims_at_most_twice_its_declared_size_whatever_its_id_range() {
    let (stack, id) = sending_without_workers(json!({"provider": "log"}), 100).await;
    // A schema-valid batch whose range spans the whole campaign but declares 5 rows.
    let wide = batch_spanning_campaign(id, 5);
    let claimed = herald_sender::ledger::claim_batch(
        &stack.env.pool(),
        &wide,
        Uuid::new_v4(),
        30.0,
        i64::MAX,
    )
    .await
    .unwrap()
    .rows;
    assert_eq!(claimed.len(), 10);
    stack.stop().await;
}

#[tokio::test]
async fn rows_held_by_a_sender_that_died_are_sent_once_after_the_sweep_finds_its_expired_lease() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let (stack, id) = sending_without_workers(provider.webhook_channel(), 40).await;
    let pool = stack.env.pool();

    // A sender claims every row under a short lease and dies without marking any.
    let batch = batch_spanning_campaign(id, 20);
    let dead_token = Uuid::new_v4();
    let claimed = herald_sender::ledger::claim_batch(&pool, &batch, dead_token, 0.5, i64::MAX)
        .await
        .unwrap()
        .rows;
    assert_eq!(claimed.len(), 40);
    // The epoch counts as fully paged, so only the sweep can bring the rows back.
    sqlx::query(
        "UPDATE campaigns SET packed_epoch = run_epoch, pack_epoch = run_epoch,
                              pack_cursor = 9223372036854775807 WHERE id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();

    let workers =
        Workers::start(&stack.env, 1, 1, test_packer_config(), test_sender_config()).await;
    let body = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(30))
        .await;
    assert_each_recipient_sent_once(&provider, 40);
    assert_counters_match_ledger(&pool, id, &body).await;
    // The dead sender's lease row goes once nothing is held under it any more.
    faults::wait_until(
        "the dead lease row to go",
        Duration::from_secs(10),
        || async {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM recipient_leases WHERE campaign_id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (left == 0).then_some(())
        },
    )
    .await;
    assert_every_fate_accounted(&stack.client, &pool, id).await;
    workers.stop().await;
    stack.stop().await;
}

#[tokio::test]
async fn outcomes_wait_to_share_one_write_until_a_full_group_is_queued_or_the_linger_ends() {
    use herald_sender::ledger::claim_batch;
    use herald_sender::recorder::{FULL_GROUP, OutcomeRecorder};

    let (stack, id) = sending_without_workers(json!({"provider": "log"}), FULL_GROUP + 1).await;
    let pool = stack.env.pool();
    let token = Uuid::new_v4();
    let batch = batch_spanning_campaign(id, FULL_GROUP as i64 + 1);
    let claimed = claim_batch(&pool, &batch, token, 30.0, i64::MAX)
        .await
        .unwrap()
        .rows;
    assert_eq!(claimed.len(), FULL_GROUP + 1);
    let marked = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM recipients WHERE campaign_id = $1 AND status = 'sent'",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };

    // A linger far longer than the test: only a full group may start a write.
    let patient = OutcomeRecorder::start(
        pool.clone(),
        Duration::from_secs(3600),
        Duration::from_secs(5),
    );
    let mut recording = patient.batch(id, token);
    for row in &claimed[..FULL_GROUP - 1] {
        recording.record(sent_outcome(row.id)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(marked().await, 0, "a group short of full was written early");
    recording
        .record(sent_outcome(claimed[FULL_GROUP - 1].id))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), recording.flushed())
        .await
        .expect("a full group is written without waiting for the linger")
        .unwrap();
    assert_eq!(marked().await, FULL_GROUP as i64);

    // A lone outcome is written once its linger ends.
    let brief = OutcomeRecorder::start(
        pool.clone(),
        Duration::from_millis(20),
        Duration::from_secs(5),
    );
    let mut recording = brief.batch(id, token);
    recording
        .record(sent_outcome(claimed[FULL_GROUP].id))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), recording.flushed())
        .await
        .expect("a lone outcome is written after the linger")
        .unwrap();
    assert_eq!(marked().await, FULL_GROUP as i64 + 1);
    stack.stop().await;
}

#[tokio::test]
async fn a_claim_that_meets_rows_another_claim_is_taking_waits_and_then_claims_none_of_them() {
    use herald_sender::ledger::{claim_batch, claim_batch_in};

    let (stack, id) = sending_without_workers(json!({"provider": "log"}), 200).await;
    let pool = stack.env.pool();
    let batch = batch_spanning_campaign(id, 200);

    // The first claim has updated every row but not committed yet.
    let mut first = pool.begin().await.unwrap();
    let taken = claim_batch_in(&mut first, &batch, Uuid::new_v4(), 30.0, i64::MAX)
        .await
        .unwrap()
        .rows;
    assert_eq!(taken.len(), 200);
    // A duplicate of the batch arrives meanwhile on another connection.
    let second = tokio::spawn({
        let (pool, batch) = (pool.clone(), batch.clone());
        async move {
            claim_batch(&pool, &batch, Uuid::new_v4(), 30.0, i64::MAX)
                .await
                .map(|c| c.rows)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the duplicate claim must wait for the rows the first claim holds"
    );
    first.commit().await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the duplicate claim returns once the first commits")
        .unwrap()
        .unwrap();
    assert!(
        again.is_empty(),
        "{} rows were claimed a second time",
        again.len()
    );
    let (pending, sending): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'sending')
         FROM recipients WHERE campaign_id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((pending, sending), (0, 200));
    let body = stack.campaign(id).await;
    assert_counters_match_ledger(&pool, id, &body).await;
    stack.stop().await;
}

#[tokio::test]
async fn the_sweep_completes_a_campaign_whose_last_completion_check_never_ran() {
    use herald_sender::ledger::{claim_batch, finish_lease, mark_outcomes};

    let (stack, id) = sending_without_workers(json!({"provider": "log"}), 30).await;
    let pool = stack.env.pool();

    // Every row is sent and recorded, but the sender that wrote the last outcomes
    // lost Postgres before its completion check: nothing is open, yet the
    // campaign still says sending. It is fully packed and has been quiet for
    // longer than the stall period.
    let token = Uuid::new_v4();
    let claimed = claim_batch(
        &pool,
        &batch_spanning_campaign(id, 30),
        token,
        30.0,
        i64::MAX,
    )
    .await
    .unwrap()
    .rows;
    let outcomes: Vec<_> = claimed.iter().map(|row| sent_outcome(row.id)).collect();
    assert_eq!(
        mark_outcomes(&pool, id, token, &outcomes).await.unwrap(),
        30
    );
    assert!(finish_lease(&pool, id, token).await.unwrap().is_done());
    for sql in [
        "UPDATE campaigns SET packed_epoch = run_epoch, pack_epoch = run_epoch,
                              pack_cursor = 9223372036854775807,
                              updated_at = now() - interval '1 hour' WHERE id = $1",
        "UPDATE campaign_counter_deltas SET updated_at = now() - interval '1 hour'
         WHERE campaign_id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&pool).await.unwrap();
    }
    assert_eq!(stack.campaign(id).await["status"], "sending");

    // One sweep, and nothing else: no pack request is handled here.
    let packer = herald_packer::Packer::new(
        pool.clone(),
        stack.env.bus().await,
        "sweeper".into(),
        test_packer_config(),
    );
    packer.sweep().await.unwrap();
    let body = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(10))
        .await;
    assert_counters_match_ledger(&pool, id, &body).await;
    assert_every_fate_accounted(&stack.client, &pool, id).await;
    stack.stop().await;
}
