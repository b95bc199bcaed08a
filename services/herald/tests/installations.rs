//! One installation per bus: a second Herald installation (another database)
//! started with the same stream and subject prefixes as a running one refuses to
//! start, instead of taking the first installation's work from the shared
//! durables, and the first installation's campaign completes exactly once.
//!
//! Both installations run as real `herald` processes on a private Postgres
//! cluster and the shared NATS, with a local provider double.

use std::path::Path;
use std::time::Duration;

use herald_core::installation;
use herald_testkit::faults::{HeraldEnv, HeraldProcess, ProcessStack};
use herald_testkit::{ProviderDouble, free_port, shared_nats_url};

fn herald() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herald"))
}

/// Installation B: the same settings (prefixes included) as `stack`, another
/// database on the same Postgres, migrated.
fn second_installation(stack: &ProcessStack) -> HeraldEnv {
    let env = stack
        .env
        .clone()
        .set("DATABASE_URL", &stack.pg.database_url("herald_second"));
    env.run_to_completion(herald(), &["migrate"]);
    env
}

/// Waits for `process` to exit by itself and returns its log; panics if it is
/// still running or exited successfully.
async fn refused(process: &mut HeraldProcess) -> String {
    let status = process.wait_for_exit(Duration::from_secs(30)).await;
    let log = process.log();
    match status {
        None => panic!(
            "{} still runs on another installation's streams:\n{log}",
            process.name()
        ),
        Some(status) => assert!(
            !status.success(),
            "{} exited successfully:\n{log}",
            process.name()
        ),
    }
    log
}

fn assert_says_what_to_set(log: &str, stack: &ProcessStack) {
    let stream_prefix = stack.env.get("HERALD_STREAM_PREFIX").expect("set");
    assert!(
        log.contains(&format!("{stream_prefix}_"))
            && log.contains("belongs to Herald installation"),
        "the error names the stream and its owner:\n{log}"
    );
    for variable in [
        "HERALD_STREAM_PREFIX",
        "HERALD_SUBJECT_PREFIX",
        "DATABASE_URL",
    ] {
        assert!(
            log.contains(variable),
            "the error mentions {variable}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_installation_on_the_same_prefixes_refuses_to_start_and_the_first_completes_its_campaign_exactly_once()
 {
    let provider = ProviderDouble::start(Duration::from_millis(5)).await;
    let stack = ProcessStack::start(herald(), &shared_nats_url(), 1, 1, |_, env| {
        env.set("HERALD_BATCH_SIZE", "20")
    })
    .await;
    let total = 400;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, total).await;

    // Installation B: a sender (which would share the `sender` durable) and a
    // whole `herald all`, both started while A's campaign runs.
    let second = second_installation(&stack);
    let mut sender = HeraldProcess::spawn(
        "second-sender",
        herald(),
        &["sender"],
        second.clone().set("HERALD_REPLICA_ID", "second-sender"),
        None,
    );
    let mut all = HeraldProcess::spawn(
        "second-all",
        herald(),
        &["all"],
        second
            .clone()
            .set("HERALD_REPLICA_ID", "second-all")
            .set("HERALD_LISTEN", &format!("127.0.0.1:{}", free_port())),
        None,
    );
    assert_eq!(stack.transition(id, "start").await.0, 200);

    assert_says_what_to_set(&refused(&mut sender).await, &stack);
    assert_says_what_to_set(&refused(&mut all).await, &stack);

    stack.assert_settled(id, total).await;
    let per_key = provider.per_key();
    assert_eq!(per_key.len(), total, "every recipient reached the provider");
    assert!(per_key.values().all(|n| *n == 1), "and exactly once");

    // The streams still name installation A.
    let ours = installation::id(&stack.pool()).await.expect("A's id");
    let bus = stack.bus().await;
    for name in bus.streams.all() {
        let stream = bus.js.get_stream(name).await.expect("the stream exists");
        let description = stream.cached_info().config.description.as_deref();
        assert_eq!(installation::owner(description), Some(ours), "{name}");
    }
    for name in bus.streams.all() {
        let _ = bus.js.delete_stream(name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_told_to_adopt_the_streams_of_a_gone_installation_stamps_them_with_its_own_id() {
    let stack = ProcessStack::start(herald(), &shared_nats_url(), 0, 0, |_, env| env).await;
    let second = second_installation(&stack);
    let second_id = installation::id(&herald_core::db::pool(&second.common()).expect("pool"))
        .await
        .expect("B's id");
    let mut api = HeraldProcess::spawn(
        "adopting-api",
        herald(),
        &["api"],
        second
            .set("HERALD_ADOPT_STREAMS", "true")
            .set("HERALD_LISTEN", &format!("127.0.0.1:{}", free_port())),
        None,
    );
    let bus = stack.bus().await;
    herald_testkit::faults::wait_until(
        "B to adopt the streams",
        Duration::from_secs(30),
        || async {
            for name in bus.streams.all() {
                let stream = bus.js.get_stream(name).await.ok()?;
                let description = stream.cached_info().config.description.as_deref();
                (installation::owner(description) == Some(second_id)).then_some(())?;
            }
            Some(())
        },
    )
    .await;
    assert!(api.is_running(), "the adopting api runs:\n{}", api.log());
    drop(api);
    for name in bus.streams.all() {
        let _ = bus.js.delete_stream(name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_installation_with_its_own_stream_prefix_but_the_same_subjects_refuses_to_start_and_says_to_set_the_subject_prefix()
 {
    let stack = ProcessStack::start(herald(), &shared_nats_url(), 0, 0, |_, env| env).await;
    let stream_prefix = format!("{}B", stack.env.get("HERALD_STREAM_PREFIX").expect("set"));
    let mut api = HeraldProcess::spawn(
        "overlapping-api",
        herald(),
        &["api"],
        second_installation(&stack)
            .set("HERALD_STREAM_PREFIX", &stream_prefix)
            .set("HERALD_LISTEN", &format!("127.0.0.1:{}", free_port())),
        None,
    );
    let log = refused(&mut api).await;
    assert!(
        log.contains(&format!("{stream_prefix}_")) && log.contains("overlap"),
        "the error names the stream and the overlap:\n{log}"
    );
    assert!(log.contains("HERALD_SUBJECT_PREFIX"), "{log}");
    let bus = stack.bus().await;
    for name in bus.streams.all() {
        let _ = bus.js.delete_stream(name).await;
    }
}
