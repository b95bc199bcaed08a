//! The operator surface: live progress over Server-Sent Events
//! (`GET /v1/campaigns/{id}/progress`) and the `herald` CLI run as a real process
//! (`campaign ...`, `events tail`, `dlq list|replay`) against real Postgres and NATS.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use herald_core::lifecycle::Status;
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// Reads `event: progress` payloads from an SSE response.
struct SseReader {
    chunks: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        Self {
            chunks: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next progress payload, or `None` once the server closed the stream.
    async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if block.lines().any(|l| l == "event: progress") && !data.is_empty() {
                    return Some(serde_json::from_str(&data.join("\n")).expect("progress JSON"));
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.chunks.next())
                .await
                .expect("the progress stream went quiet");
            match chunk {
                None => return None,
                Some(chunk) => self
                    .buffer
                    .push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk"))),
            }
        }
    }
}

async fn open_progress(stack: &Stack, campaign: Uuid, token: Option<&str>) -> reqwest::Response {
    let mut request = stack
        .http
        .get(stack.url(&format!("/v1/campaigns/{campaign}/progress")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("progress request")
}

/// What one run of the `herald` binary printed.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs the built `herald` binary with only the given environment, so nothing from
/// the developer's shell (a HERALD_TOKEN, a prefix) leaks in. `tokio::process`
/// keeps this test's runtime free to serve the in-process api meanwhile.
async fn herald(env: &[(&str, String)], args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_clear()
        .env("HERALD_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("herald runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn api_env(stack: &Stack) -> Vec<(&'static str, String)> {
    vec![
        ("HERALD_API_URL", stack.api.base_url.clone()),
        ("HERALD_TOKEN", stack.token.clone()),
    ]
}

fn nats_env(env: &TestEnv) -> Vec<(&'static str, String)> {
    vec![
        ("NATS_URL", env.common.nats_url.clone()),
        ("HERALD_SUBJECT_PREFIX", env.common.subject_prefix.clone()),
        ("HERALD_STREAM_PREFIX", env.common.stream_prefix.clone()),
    ]
}

#[tokio::test]
async fn the_progress_stream_pushes_the_current_state_then_updates_and_closes_when_the_campaign_completes()
 {
    let provider = ProviderDouble::start(Duration::from_millis(10)).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 2_000).await;

    let response = open_progress(&stack, id, Some(&stack.token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut events = SseReader::new(response);
    let first = events
        .next(Duration::from_secs(5))
        .await
        .expect("initial state");
    assert_eq!(first["status"], "draft");
    assert_eq!(first["counters"]["total"], 2_000);
    assert_eq!(first["counters"]["pending"], 2_000);

    assert_eq!(stack.transition(id, "start").await.0, 200);
    let mut seen = vec![first];
    let last = loop {
        let Some(event) = events.next(Duration::from_secs(60)).await else {
            panic!("the stream closed before a terminal state: {seen:?}");
        };
        seen.push(event.clone());
        if event["status"] == "completed" {
            break event;
        }
    };
    assert_eq!(last["counters"]["sent"], 2_000);
    assert_eq!(last["counters"]["pending"], 0);
    assert!(
        events.next(Duration::from_secs(5)).await.is_none(),
        "the stream ends after the terminal state"
    );

    let sent: Vec<i64> = seen
        .iter()
        .map(|e| e["counters"]["sent"].as_i64().unwrap())
        .collect();
    assert!(
        sent.windows(2).all(|w| w[0] <= w[1]),
        "sent never goes back: {sent:?}"
    );
    assert!(
        seen.iter().any(|e| e["status"] == "sending"),
        "the start was pushed: {seen:?}"
    );
    assert!(
        sent.iter().any(|&s| s > 0 && s < 2_000),
        "progress was pushed while sending, not only at the end: {sent:?}"
    );
    let versions: Vec<i64> = seen
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    stack.stop().await;
}

#[tokio::test]
async fn progress_of_another_tenants_campaign_is_not_found_and_without_a_token_is_unauthorized() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack
        .create_campaign(serde_json::json!({"provider": "log"}))
        .await;
    let other = tenant_token(&stack.env.pool(), "globex").await;

    let foreign = open_progress(&stack, id, Some(&other)).await;
    assert_eq!(foreign.status(), 404);
    let body: Value = foreign.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    let anonymous = open_progress(&stack, id, None).await;
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    let unknown = open_progress(&stack, Uuid::new_v4(), Some(&stack.token)).await;
    assert_eq!(unknown.status(), 404);
    stack.stop().await;
}

#[tokio::test]
async fn a_campaign_that_already_ended_gets_its_final_state_and_the_stream_closes_at_once() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack
        .create_campaign(serde_json::json!({"provider": "log"}))
        .await;
    assert_eq!(stack.transition(id, "stop").await.0, 200);

    let mut events = SseReader::new(open_progress(&stack, id, Some(&stack.token)).await);
    let only = events
        .next(Duration::from_secs(5))
        .await
        .expect("final state");
    assert_eq!(only["status"], "stopped");
    assert!(events.next(Duration::from_secs(5)).await.is_none());
    stack.stop().await;
}

#[tokio::test]
async fn the_cli_creates_a_campaign_imports_a_csv_file_starts_it_and_shows_its_counters_as_json() {
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 1, test_sender_config()).await;
    let env = api_env(&stack);

    let created = herald(
        &env,
        &[
            "campaign",
            "create",
            "--json",
            "--name",
            "from the cli",
            "--provider",
            "webhook",
            "--url",
            &provider.url,
            "--template",
            "Hi {{ name }}",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{created:?}");
    let campaign = created.json();
    assert_eq!(campaign["status"], "draft");
    assert_eq!(campaign["channel"]["provider"], "webhook");
    let id = campaign["id"].as_str().expect("id").to_owned();

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("recipients.csv");
    let mut text = String::from("address,name\n");
    for n in 0..50 {
        text.push_str(&format!("+1555{n:07},person {n}\n"));
    }
    text.push_str(",nobody\n");
    std::fs::write(&csv, text).unwrap();
    let imported = herald(
        &env,
        &["campaign", "import", &id, csv.to_str().unwrap(), "--json"],
    )
    .await;
    assert_eq!(imported.code, 0, "{imported:?}");
    let result = imported.json();
    assert_eq!(result["accepted"], 50);
    assert_eq!(result["rejected"], 1);

    let started = herald(&env, &["campaign", "start", &id, "--json"]).await;
    assert_eq!(started.code, 0, "{started:?}");
    assert_eq!(started.json()["status"], "sending");

    stack
        .wait_for_status(
            id.parse().unwrap(),
            Status::Completed,
            Duration::from_secs(60),
        )
        .await;
    let shown = herald(&env, &["campaign", "show", &id, "--json"]).await;
    assert_eq!(shown.code, 0, "{shown:?}");
    let shown = shown.json();
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["counters"]["total"], 50);
    assert_eq!(shown["counters"]["sent"], 50);
    assert_eq!(shown["counters"]["pending"], 0);
    assert_eq!(provider.request_count(), 50);

    // The table forms print the same facts for people.
    let table = herald(&env, &["campaign", "show", &id]).await;
    assert_eq!(table.code, 0, "{table:?}");
    assert!(
        table.stdout.contains("completed") && table.stdout.contains("50"),
        "{table:?}"
    );
    let listed = herald(&env, &["campaign", "list"]).await;
    assert!(listed.stdout.contains(&id), "{listed:?}");
    let history = herald(&env, &["campaign", "events", &id, "--json"])
        .await
        .json();
    let types: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"created"));
    assert!(
        types.contains(&"started") && types.contains(&"completed"),
        "{types:?}"
    );

    // `watch` of a finished campaign prints its final state and exits 0.
    let watched = herald(&env, &["campaign", "watch", &id]).await;
    assert_eq!(watched.code, 0, "{watched:?}");
    assert!(watched.stdout.contains("completed: 50 sent"), "{watched:?}");
    assert_every_fate_accounted(&stack.client, &stack.env.pool(), id.parse().unwrap()).await;
    stack.stop().await;
}

#[tokio::test]
async fn an_api_error_exits_with_code_one_and_prints_the_apis_message() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack
        .create_campaign(serde_json::json!({"provider": "log"}))
        .await;
    let (status, expected) = stack.transition(id, "pause").await;
    assert_eq!(status, 409);
    let message = expected["error"]["message"].as_str().unwrap().to_owned();

    let env = api_env(&stack);
    let paused = herald(&env, &["campaign", "pause", &id.to_string()]).await;
    assert_eq!(paused.code, 1, "{paused:?}");
    assert!(paused.stderr.contains(&message), "{paused:?}");
    assert!(paused.stderr.contains("invalid_transition"), "{paused:?}");
    assert!(paused.stdout.is_empty(), "{paused:?}");

    // With --json the API's error document is on stdout for scripts.
    let paused = herald(&env, &["campaign", "pause", &id.to_string(), "--json"]).await;
    assert_eq!(paused.code, 1, "{paused:?}");
    assert_eq!(paused.json()["error"]["code"], "invalid_transition");

    let missing = herald(&env, &["campaign", "show", &Uuid::new_v4().to_string()]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("campaign not found"), "{missing:?}");
    stack.stop().await;
}

#[tokio::test]
async fn usage_errors_exit_with_code_two() {
    let no_token = herald(
        &[("HERALD_API_URL", "http://127.0.0.1:9".into())],
        &["campaign", "list"],
    )
    .await;
    assert_eq!(no_token.code, 2, "{no_token:?}");
    assert!(no_token.stderr.contains("HERALD_TOKEN"), "{no_token:?}");

    let token = [("HERALD_TOKEN", "t".to_owned())];
    let bad_id = herald(&token, &["campaign", "show", "not-a-uuid"]).await;
    assert_eq!(bad_id.code, 2, "{bad_id:?}");
    let no_channel = herald(
        &token,
        &["campaign", "create", "--name", "x", "--template", "Hi"],
    )
    .await;
    assert_eq!(no_channel.code, 2, "{no_channel:?}");
    let bad_channel = herald(
        &token,
        &[
            "campaign",
            "create",
            "--name",
            "x",
            "--template",
            "Hi",
            "--channel",
            "{nope",
        ],
    )
    .await;
    assert_eq!(bad_channel.code, 2, "{bad_channel:?}");
    let webhook_without_url = herald(
        &token,
        &[
            "campaign",
            "create",
            "--name",
            "x",
            "--template",
            "Hi",
            "--provider",
            "webhook",
        ],
    )
    .await;
    assert_eq!(webhook_without_url.code, 2, "{webhook_without_url:?}");

    // An unreachable API is a failure (1), not a usage error.
    let unreachable = herald(
        &[
            ("HERALD_API_URL", "http://127.0.0.1:9".into()),
            ("HERALD_TOKEN", "t".into()),
        ],
        &["campaign", "list"],
    )
    .await;
    assert_eq!(unreachable.code, 1, "{unreachable:?}");
    assert!(
        unreachable.stderr.contains("cannot reach the Herald API"),
        "{unreachable:?}"
    );
}

/// Waits until the api's background provisioning has created every stream.
async fn wait_for_streams(env: &TestEnv) {
    let bus = env.bus().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for stream in [&bus.streams.events, &bus.streams.dlq] {
        while bus.js.get_stream(stream).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{stream} never appeared"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls `herald dlq list --json` until `check` accepts the letters.
async fn wait_for_letters(env: &[(&str, String)], check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed = herald(
            env,
            &["dlq", "list", "--subject", "campaigns.send", "--json"],
        )
        .await;
        assert_eq!(listed.code, 0, "{listed:?}");
        let letters = listed.json().as_array().cloned().unwrap_or_default();
        if check(&letters) {
            return letters;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters never matched: {letters:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn dlq_list_shows_a_dead_letter_and_replay_republishes_it_to_the_original_subject() {
    let stack = Stack::start(0, 1, test_sender_config()).await;
    wait_for_streams(&stack.env).await;
    let bus = stack.env.bus().await;
    let env = nats_env(&stack.env);
    let empty = herald(&env, &["dlq", "list"]).await;
    assert_eq!(empty.code, 0, "{empty:?}");
    assert!(empty.stdout.contains("no dead letters"), "{empty:?}");

    bus.publish_raw(
        bus.subjects.send(),
        "{\"campaignId\":".into(),
        "bad-1",
        None,
    )
    .await
    .unwrap();
    let letters = wait_for_letters(&env, |l| l.len() == 1).await;
    let letter = &letters[0];
    assert_eq!(letter["originalSubject"], "campaigns.send");
    assert_eq!(letter["consumer"], "sender");
    assert!(
        letter["reason"].as_str().unwrap().contains("not JSON"),
        "{letter}"
    );
    let seq = letter["seq"].as_u64().expect("seq");

    let table = herald(&env, &["dlq", "list"]).await;
    assert!(
        table.stdout.contains("campaigns.send") && table.stdout.contains(&seq.to_string()),
        "{table:?}"
    );

    let replayed = herald(&env, &["dlq", "replay", &seq.to_string(), "--json"]).await;
    assert_eq!(replayed.code, 0, "{replayed:?}");
    let outcome = &replayed.json()[0];
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(
        outcome["subject"].as_str().unwrap(),
        bus.subjects.send(),
        "{outcome}"
    );

    // The sender got the same bad payload again and dead-lettered it anew: the
    // replayed letter is gone and a fresh one carries the same bytes.
    let again = wait_for_letters(&env, |l| l.len() == 1 && l[0]["seq"].as_u64() != Some(seq)).await;
    assert_eq!(again[0]["payloadBase64"], letter["payloadBase64"]);

    let gone = herald(&env, &["dlq", "replay", &seq.to_string()]).await;
    assert_eq!(gone.code, 1, "replaying a deleted letter fails: {gone:?}");
    stack.stop().await;
}

#[tokio::test]
async fn events_tail_prints_a_campaigns_lifecycle_from_jetstream() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack
        .create_campaign(serde_json::json!({"provider": "log"}))
        .await;
    stack.import(id, 1).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    assert_eq!(stack.transition(id, "pause").await.0, 200);
    let other = stack
        .create_campaign(serde_json::json!({"provider": "log"}))
        .await;

    wait_for_streams(&stack.env).await;
    let env = nats_env(&stack.env);
    let campaign = id.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let tail = herald(
            &env,
            &[
                "events",
                "tail",
                "--campaign",
                &campaign,
                "--since",
                "10m",
                "--json",
            ],
        )
        .await;
        assert_eq!(tail.code, 0, "{tail:?}");
        let lines: Vec<Value> = tail
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
            .collect();
        if lines.len() >= 3 || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let types: Vec<&str> = lines.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["created", "started", "paused"]);
    assert!(lines.iter().all(|e| e["campaignId"] == campaign.as_str()));

    let text = herald(&env, &["events", "tail", "--since", "10m"]).await;
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout.contains("draft → sending"), "{text:?}");
    assert!(text.stdout.contains(&other.to_string()), "{text:?}");
    stack.stop().await;
}

#[tokio::test]
async fn the_progress_stream_still_converges_while_nats_is_down() {
    let mut nats = NatsServer::start().await;
    let env = TestEnv::with_nats(&nats.url()).await;
    let stack = Stack::start_on(env, 0, 0, test_packer_config(), test_sender_config()).await;
    let id = stack
        .create_campaign(serde_json::json!({"provider": "log"}))
        .await;
    let mut events = SseReader::new(open_progress(&stack, id, Some(&stack.token)).await);
    let first = events
        .next(Duration::from_secs(5))
        .await
        .expect("initial state");
    assert_eq!(first["status"], "draft");

    // No bus message can announce this stop: only the fallback tick can see it.
    nats.stop();
    assert_eq!(stack.transition(id, "stop").await.0, 200);
    let stopped_at = tokio::time::Instant::now();
    let last = events
        .next(Duration::from_secs(15))
        .await
        .expect("the stop is pushed");
    assert_eq!(last["status"], "stopped");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(8),
        "pushed by the 5 s fallback tick, took {:?}",
        stopped_at.elapsed()
    );
    assert!(events.next(Duration::from_secs(5)).await.is_none());
    nats.resume().await;
    stack.stop().await;
}

#[tokio::test]
async fn the_cli_rotates_a_channels_receipts_url() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let env = api_env(&stack);
    let body = json!({"name": "rotating", "config": {"provider": "webhook", "url": "http://127.0.0.1:9/hook"}});
    let (status, channel) = stack.call(Method::POST, "/v1/channels", Some(body)).await;
    assert_eq!(status, 201, "{channel}");
    let id = channel["id"].as_str().expect("id");

    let rotated = herald(&env, &["channel", "rotate-receipts-token", id, "--json"]).await;
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let shown: Value = serde_json::from_str(&rotated.stdout).expect("json");
    assert_ne!(shown["receipts_url"], channel["receipts_url"]);
    assert_eq!(
        stack
            .call(Method::GET, &format!("/v1/channels/{id}"), None)
            .await
            .1["receipts_url"],
        shown["receipts_url"]
    );
    let missing = herald(
        &env,
        &[
            "channel",
            "rotate-receipts-token",
            &Uuid::new_v4().to_string(),
        ],
    )
    .await;
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("channel not found"),
        "{}",
        missing.stderr
    );
    stack.stop().await;
}
