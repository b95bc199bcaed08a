//! The NATS users of `nats/` (one per service, allow-list permissions) on a
//! private nats-server that runs the repository's own `nats-server.conf`:
//! workers are refused the control subjects that only the api may publish, and
//! api, packer and sender processes, each with its own user, still run a
//! campaign to completion (docs/ARCHITECTURE.md invariant 3, and the security half of
//! issue 5).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::bus::Bus;
use herald_core::config::CommonConfig;
use herald_core::contracts::{ControlAction, ControlMessage, encode};
use herald_testkit::faults::{AuthNatsServer, ProcessStack, Role, nats_password, wait_until};
use herald_testkit::{ProviderDouble, read_stream};
use reqwest::Method;
use uuid::Uuid;

/// Herald's settings for one user on the auth server, with the default
/// prefixes that `nats/auth.conf` is written for.
fn as_user(server: &AuthNatsServer, user: &str) -> CommonConfig {
    let mut common = CommonConfig::local_defaults();
    common.nats_url = server.url();
    common.nats_user = Some(user.to_owned());
    common.nats_password = Some(nats_password(user));
    common
}

/// A raw client for `user` that records the server's errors (permission
/// violations arrive as asynchronous `-ERR`s).
async fn client_recording_errors(
    server: &AuthNatsServer,
    user: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let client =
        async_nats::ConnectOptions::with_user_and_password(user.into(), nats_password(user))
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        sink.lock().expect("errors").push(error.to_string());
                    }
                }
            })
            .connect(server.url())
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}\n{}", server.log()));
    (client, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_users_are_refused_control_subjects_that_the_api_user_may_publish() {
    let server = AuthNatsServer::start().await;
    let api = Bus::connect(&as_user(&server, "api"), "test-api")
        .await
        .unwrap();
    api.provision(Uuid::new_v4())
        .await
        .expect("the api user provisions every stream");
    let campaign = Uuid::new_v4();
    let control = ControlMessage {
        campaign_id: campaign,
        action: ControlAction::Stop,
        correlation_id: Uuid::new_v4(),
    };
    let payload = encode(&control).unwrap();

    for user in ["sender", "packer"] {
        let (client, errors) = client_recording_errors(&server, user).await;
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client.clone());
        let refused = match js
            .publish(api.subjects.control(campaign), payload.clone())
            .await
        {
            Ok(ack) => ack.await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "{user} got a JetStream ack for a control message");
        herald_testkit::faults::wait_until(
            &format!("the server to report {user}'s permissions violation"),
            Duration::from_secs(5),
            || async {
                errors
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|e| e.contains("Permissions Violation"))
                    .then_some(())
            },
        )
        .await;
        // Nor may a worker delete the work queue out from under everyone.
        assert!(js.delete_stream(&api.streams.work).await.is_err());
    }

    api.publish_contract(
        api.subjects.control(campaign),
        &control,
        "api-control-1",
        None,
    )
    .await
    .expect("the api user publishes control hints");
    let operator = Bus::connect(&as_user(&server, "operator"), "test-operator")
        .await
        .unwrap();
    let stored = read_stream(
        &operator,
        &operator.streams.control,
        &operator.subjects.control(campaign),
    )
    .await;
    assert_eq!(stored.len(), 1, "only the api's control message was stored");
    assert!(operator.js.get_stream(&operator.streams.work).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_packer_and_sender_processes_each_with_their_own_nats_user_run_a_campaign_to_completion()
 {
    let server = AuthNatsServer::start().await;
    let provider = ProviderDouble::start(Duration::from_millis(2)).await;
    let stack = ProcessStack::start(
        Path::new(env!("CARGO_BIN_EXE_herald")),
        &server.url(),
        1,
        2,
        |role, env| {
            let user = match role {
                Role::Api => "api",
                Role::Packer(_) => "packer",
                Role::Sender(_) => "sender",
            };
            // auth.conf is written for the default prefixes.
            env.set("HERALD_SUBJECT_PREFIX", "")
                .set("HERALD_STREAM_PREFIX", "HERALD")
                .set("NATS_USER", user)
                .set("NATS_PASSWORD", &nats_password(user))
                .set("HERALD_BATCH_SIZE", "50")
                // Ten batches through a window of two: the rest is packed only
                // when senders ask for more (`campaigns.pack`), as in any large
                // campaign.
                .set("HERALD_PACK_WINDOW", "2")
        },
    )
    .await;
    let total = 500;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, total).await;
    // Heartbeats reach the api under the worker users...
    wait_until("three live replicas", Duration::from_secs(30), || async {
        let (_, body) = stack.call(Method::GET, "/v1/replicas", None).await;
        (body["items"].as_array()?.len() == 3).then_some(())
    })
    .await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    // A pause and resume exercise the control consumers under the worker users,
    // and the pause's acks come back from every replica.
    let (status, body) = stack
        .call(
            Method::POST,
            &format!("/v1/campaigns/{id}/pause?wait=applied&timeout_ms=10000"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["acks"]["complete"], true, "{body}");
    assert_eq!(stack.transition(id, "resume").await.0, 200);
    stack.assert_settled(id, total).await;
    let per_key = provider.per_key();
    assert_eq!(per_key.len(), total);
    assert!(per_key.values().all(|n| *n == 1));
    let logs = stack.logs();
    assert!(
        !logs.contains("Permissions Violation"),
        "a service needed a permission its user lacks:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_command_that_nats_refuses_says_why_instead_of_only_that_nats_is_unreachable() {
    let server = AuthNatsServer::start().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["events", "tail", "--since", "1m"])
        .env_clear()
        .env("NATS_URL", server.url())
        .env("NATS_USER", "api")
        .env("NATS_PASSWORD", "not-the-password")
        .env("HERALD_LOG", "off")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("herald runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot reach NATS") && stderr.contains("authorization violation"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-password"),
        "the password reached the output: {stderr}"
    );
}
