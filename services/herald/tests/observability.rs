//! Observability, as docs/OPERATIONS.md ("Metrics" and "Logs") promises it:
//!
//! - `GET /metrics` serves the Prometheus text format with the documented metric
//!   families once a campaign has run end to end (an in-process stack, so the
//!   test reads the same process-global recorder the api renders);
//! - the JSON logs of a real `herald all` process never contain an API token, a
//!   recipient address, a message body or a webhook secret at info level, and
//!   every line logged inside a request span or a bus-message span carries the
//!   campaign id and the caller's `X-Correlation-Id`.
//!
//! The Prometheus recorder is process-global, so every exact count is asserted in
//! one test (the metrics test), and as a delta against a baseline taken before
//! the campaign starts. The log test runs its own OS process and touches no
//! metric of this one.
//!
//! Run with `cargo test -p herald --test observability`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use herald_core::lifecycle::Status;
use herald_testkit::faults::{HeraldEnv, HeraldProcess, wait_for_control_durables, wait_until};
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn herald() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herald"))
}

/// The correlation id every request of the log test carries.
const CORRELATION: &str = "trace-obs-1";

// ---------------------------------------------------------------------------
// The Prometheus text format
// ---------------------------------------------------------------------------

/// One sample line of the Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `key="value",...` up to the closing `}`; returns the labels and the
/// rest of the line. Label values may contain `{`, `}`, `,` and escaped quotes.
fn parse_labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        rest = &after_key[end + 1..];
    }
}

/// Parses the exposition; panics on any line that is neither a comment nor a
/// well-formed sample, so a broken format fails the test.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..])
                .unwrap_or_else(|| panic!("bad label set in {line:?}"))
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("bad sample value in {line:?}"));
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// Samples named `name` whose labels include every pair of `labels`.
fn matching<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
        .collect()
}

/// The value of the one series `name{labels}`, or 0 when it does not exist yet.
fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = matching(samples, name, labels);
    assert!(
        found.len() <= 1,
        "{name}{labels:?} should be one series, found {found:?}"
    );
    found.first().map_or(0.0, |s| s.value)
}

/// `GET /metrics`: asserts the content type and returns the parsed samples with
/// the raw text.
async fn scrape(stack: &Stack) -> (Vec<Sample>, String) {
    let response = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "Prometheus text format content type, got {content_type:?}"
    );
    let text = response.text().await.expect("metrics body");
    (parse_exposition(&text), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_serves_the_prometheus_text_format_with_the_documented_families_after_a_campaign_runs_end_to_end()
 {
    const RECIPIENTS: usize = 1_000;
    // Before anything records a metric: the api renders this recorder.
    herald_core::telemetry::install().expect("the Prometheus recorder installs");
    // 20 ms per request, so the campaign is still sending when it is paused.
    let provider = ProviderDouble::start(Duration::from_millis(20)).await;
    let stack = Stack::start(1, 2, test_sender_config()).await;
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, RECIPIENTS).await;

    let (before, _) = scrape(&stack).await;
    let transition_route = [
        ("method", "POST"),
        ("route", "/v1/campaigns/{id}/{action}"),
        ("status", "200"),
    ];
    let sent_before = value_of(
        &before,
        "herald_dispatches_total",
        &[("provider", "webhook"), ("outcome", "sent")],
    );
    let transitions_before = value_of(&before, "herald_http_requests_total", &transition_route);

    assert_eq!(stack.transition(id, "start").await.0, 200);
    wait_until(
        "the first provider requests",
        Duration::from_secs(30),
        || async { (provider.request_count() >= 100).then_some(()) },
    )
    .await;
    let (status, body) = stack.transition(id, "pause").await;
    assert_eq!(status, 200, "paused mid-campaign: {body}");
    // Every replica applies the pause and records its apply latency.
    let replicas = BTreeSet::from([
        ("packer".to_owned(), "packer-0".to_owned()),
        ("sender".to_owned(), "sender-0".to_owned()),
        ("sender".to_owned(), "sender-1".to_owned()),
    ]);
    let apply_series = wait_until(
        "herald_control_apply_seconds from every replica",
        Duration::from_secs(15),
        || async {
            let (samples, _) = scrape(&stack).await;
            let series: BTreeSet<(String, String)> =
                matching(&samples, "herald_control_apply_seconds_count", &[])
                    .into_iter()
                    .filter(|s| s.value >= 1.0)
                    .map(|s| {
                        (
                            s.labels.get("service").cloned().unwrap_or_default(),
                            s.labels.get("replica").cloned().unwrap_or_default(),
                        )
                    })
                    .collect();
            (series.len() >= replicas.len()).then_some(series)
        },
    )
    .await;
    assert_eq!(
        apply_series, replicas,
        "one control_apply_seconds series per replica, labelled service and replica"
    );
    assert_eq!(stack.transition(id, "resume").await.0, 200);
    let campaign = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    assert_eq!(
        campaign["counters"]["sent"], RECIPIENTS as u64,
        "{campaign}"
    );
    assert_every_fate_accounted(&stack.client, &stack.env.pool(), id).await;

    // The resume reaches every replica too (it is applied before the campaign
    // can complete, but the scrape must not race the histogram's recording).
    wait_until(
        "every replica to apply the resume",
        Duration::from_secs(15),
        || async {
            let (samples, _) = scrape(&stack).await;
            matching(&samples, "herald_control_apply_seconds_count", &[])
                .iter()
                .all(|s| s.value >= 2.0)
                .then_some(())
        },
    )
    .await;
    let (samples, text) = scrape(&stack).await;
    // Every documented family that this run exercises, with its declared type.
    for (family, kind) in [
        ("herald_dispatches_total", "counter"),
        ("herald_provider_attempts_total", "counter"),
        ("herald_provider_latency_seconds", "histogram"),
        ("herald_control_apply_seconds", "histogram"),
        ("herald_relay_backlog", "gauge"),
        ("herald_consumer_pending", "gauge"),
        ("herald_consumer_ack_pending", "gauge"),
        ("herald_consumer_redelivered", "gauge"),
        ("herald_messages_handled_total", "counter"),
        ("herald_http_requests_total", "counter"),
        ("herald_http_request_seconds", "histogram"),
        ("herald_transitions_total", "counter"),
        ("herald_batches_packed_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "`# TYPE {family} {kind}` missing from /metrics:\n{text}"
        );
    }

    // Each recipient counted once as sent, none as failed.
    let sent = value_of(
        &samples,
        "herald_dispatches_total",
        &[("provider", "webhook"), ("outcome", "sent")],
    );
    assert_eq!(sent - sent_before, RECIPIENTS as f64, "dispatches sent");
    assert_eq!(
        value_of(
            &samples,
            "herald_dispatches_total",
            &[("provider", "webhook"), ("outcome", "failed")]
        ),
        0.0
    );
    // Every provider request was timed, in the provider's histogram.
    let requests = provider.request_count() as f64;
    assert!(requests >= RECIPIENTS as f64);
    assert_eq!(
        value_of(
            &samples,
            "herald_provider_latency_seconds_count",
            &[("provider", "webhook")]
        ),
        requests,
        "one latency observation per provider request"
    );
    let buckets = matching(
        &samples,
        "herald_provider_latency_seconds_bucket",
        &[("provider", "webhook")],
    );
    assert!(
        buckets.len() > 1 && buckets.iter().all(|b| b.labels.contains_key("le")),
        "latency buckets with `le`: {buckets:?}"
    );
    assert_eq!(
        value_of(
            &samples,
            "herald_provider_latency_seconds_bucket",
            &[("provider", "webhook"), ("le", "+Inf")]
        ),
        requests
    );
    assert_eq!(
        value_of(
            &samples,
            "herald_provider_attempts_total",
            &[("provider", "webhook"), ("outcome", "accepted")]
        ),
        requests
    );

    // HTTP traffic is labelled by route template, never by raw path.
    assert_eq!(
        value_of(&samples, "herald_http_requests_total", &transition_route) - transitions_before,
        3.0,
        "start, pause and resume under one route template"
    );
    assert!(
        value_of(
            &samples,
            "herald_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/v1/campaigns/{id}/recipients"),
                ("status", "200")
            ]
        ) >= 1.0
    );
    let http = matching(&samples, "herald_http_requests_total", &[]);
    assert!(
        http.iter()
            .all(|s| !s.labels["route"].contains(&id.to_string())),
        "no raw ids in route labels: {http:?}"
    );
    assert!(
        !matching(
            &samples,
            "herald_http_request_seconds_bucket",
            &[("route", "/v1/campaigns/{id}/{action}")]
        )
        .is_empty()
    );

    // Control apply latency: one histogram per replica, and no other series.
    let apply: BTreeSet<(String, String)> =
        matching(&samples, "herald_control_apply_seconds_count", &[])
            .into_iter()
            .map(|s| (s.labels["service"].clone(), s.labels["replica"].clone()))
            .collect();
    assert_eq!(apply, replicas);
    for (service, replica) in &replicas {
        assert_eq!(
            value_of(
                &samples,
                "herald_control_apply_seconds_count",
                &[("service", service), ("replica", replica)]
            ),
            2.0,
            "{service} {replica} applied the pause and the resume"
        );
    }

    // Gauges exist, and are sane.
    let backlog = matching(&samples, "herald_relay_backlog", &[]);
    assert_eq!(backlog.len(), 1, "{backlog:?}");
    assert!(backlog[0].value >= 0.0);
    for consumer in ["sender", "packer"] {
        let pending = matching(
            &samples,
            "herald_consumer_pending",
            &[("consumer", consumer)],
        );
        assert_eq!(pending.len(), 1, "consumer_pending for {consumer}");
        assert!(pending[0].value >= 0.0);
    }
    assert!(
        value_of(
            &samples,
            "herald_messages_handled_total",
            &[("consumer", "sender"), ("outcome", "ack")]
        ) >= 1.0
    );
    for action in ["start", "pause", "resume", "complete"] {
        assert!(
            value_of(&samples, "herald_transitions_total", &[("action", action)]) >= 1.0,
            "transitions_total for {action}"
        );
    }
    assert!(value_of(&samples, "herald_batches_packed_total", &[]) >= 5.0);
    stack.stop().await;
    provider.stop();
}

// ---------------------------------------------------------------------------
// JSON logs of a real process
// ---------------------------------------------------------------------------

/// The fields of the named span in a JSON log line's `spans` list (outermost
/// first), if the line was logged inside such a span.
fn span_named<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["spans"]
        .as_array()?
        .iter()
        .rev()
        .find(|span| span["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_logs_never_contain_tokens_addresses_bodies_or_webhook_secrets_and_every_request_and_message_line_carries_the_campaign_and_correlation_ids()
 {
    const RECIPIENTS: usize = 300;
    const ADDRESS_MARKER: &str = "1555SECRET";
    const BODY_MARKER: &str = "BODYMARKER";
    const NAME_MARKER: &str = "NAMEMARKER";
    const WEBHOOK_SECRET: &str = "whsec-OBSMARKER-7f3a91";

    // Its own database and prefixes on the shared Postgres and NATS.
    let tag = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let database = format!("herald_obs_{tag}");
    let listen = format!("127.0.0.1:{}", free_port());
    let env = HeraldEnv::for_test(
        &format!("{}/{database}", postgres_base_url()),
        &shared_nats_url(),
        &tag,
    )
    .set("HERALD_LISTEN", &listen)
    .set("HERALD_LOG_FORMAT", "json")
    .set("HERALD_LOG", "info")
    .set("HERALD_REPLICA_ID", "obs")
    .set("HERALD_DB_MAX_CONNECTIONS", "6")
    // Small batches and a slow provider: several batches are mid-flight when the
    // pause lands, so senders release rows and log about it.
    .set("HERALD_BATCH_SIZE", "25")
    .set("HERALD_SENDER_CONCURRENCY", "4");
    let output =
        env.run_to_completion(herald(), &["tokens", "create", "--tenant", "observability"]);
    let token = String::from_utf8(output.stdout)
        .expect("UTF-8 token")
        .trim()
        .to_owned();
    assert!(token.len() >= 20, "a token was printed: {token:?}");

    let provider = ProviderDouble::start(Duration::from_millis(25)).await;
    let mut process = HeraldProcess::spawn("herald-all", herald(), &["all"], env.clone(), None);
    let base = format!("http://{listen}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client");
    wait_until(
        "herald all to be ready",
        Duration::from_secs(60),
        || async {
            let response = http.get(format!("{base}/readyz")).send().await.ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await;
    let common = env.common();
    let bus = herald_core::bus::Bus::connect(&common, "observability-test")
        .await
        .expect("test nats client");
    let durables = ["ctl_packer_obs-packer", "ctl_sender_obs-sender"].map(String::from);
    wait_for_control_durables(&bus, &durables).await;

    // The API calls carry the correlation id; the readiness probes above do not.
    let traced = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .default_headers(
            [(
                reqwest::header::HeaderName::from_static("x-correlation-id"),
                reqwest::header::HeaderValue::from_static(CORRELATION),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .expect("http client");
    let call = |method: Method, path: String, body: Option<Value>| {
        let (http, url, token) = (traced.clone(), format!("{base}{path}"), token.clone());
        async move { herald_testkit::call(&http, method, &url, &token, body).await }
    };
    let (status, created) = call(
        Method::POST,
        "/v1/campaigns".into(),
        Some(json!({
            "name": "observability",
            "channel": {"provider": "webhook", "url": provider.url, "secret": WEBHOOK_SECRET},
            "template": {"body": format!("{BODY_MARKER} hello {{{{ name }}}}")},
        })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
    let mut csv = String::from("address,name\n");
    for n in 1..=RECIPIENTS {
        csv.push_str(&format!("+{ADDRESS_MARKER}{n:04},{NAME_MARKER}{n}\n"));
    }
    let response = http
        .post(format!("{base}/v1/campaigns/{id}/recipients"))
        .bearer_auth(&token)
        .header("x-correlation-id", CORRELATION)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .expect("import sent");
    assert_eq!(response.status().as_u16(), 200);
    let imported: Value = response.json().await.expect("import result");
    assert_eq!(imported["accepted"], RECIPIENTS as u64, "{imported}");

    let transition =
        |action: &'static str| call(Method::POST, format!("/v1/campaigns/{id}/{action}"), None);
    assert_eq!(transition("start").await.0, 200);
    wait_until(
        "the first provider requests",
        Duration::from_secs(30),
        || async { (provider.request_count() >= 40).then_some(()) },
    )
    .await;
    let (status, body) = transition("pause").await;
    assert_eq!(status, 200, "paused mid-campaign: {body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(transition("resume").await.0, 200);
    wait_until(
        "the campaign to complete",
        Duration::from_secs(60),
        || async {
            let (_, body) = call(Method::GET, format!("/v1/campaigns/{id}"), None).await;
            (body["status"] == "completed").then_some(())
        },
    )
    .await;
    // Reading the ledger returns addresses to the caller; they still stay out of the log.
    let (status, page) = call(
        Method::GET,
        format!("/v1/campaigns/{id}/recipients?limit=5"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.to_string().contains(ADDRESS_MARKER));
    wait_until(
        "the completion to be logged",
        Duration::from_secs(10),
        || async { process.log().contains("campaign completed").then_some(()) },
    )
    .await;
    process.kill9();
    let log = process.log();

    // The markers were really in play: the provider saw every one of them.
    let requests = provider.requests();
    assert!(requests.len() >= RECIPIENTS);
    let first = requests[0].body.to_string();
    assert!(
        first.contains(ADDRESS_MARKER)
            && first.contains(BODY_MARKER)
            && first.contains(NAME_MARKER),
        "{first}"
    );
    assert!(requests[0].headers.contains_key("x-herald-signature"));

    let mut lines = Vec::new();
    for raw in log.lines().filter(|l| !l.trim().is_empty()) {
        for (secret, what) in [
            (token.as_str(), "the API token"),
            (ADDRESS_MARKER, "a recipient address"),
            (BODY_MARKER, "a message body"),
            (NAME_MARKER, "a template variable"),
            (WEBHOOK_SECRET, "the webhook secret"),
            ("OBSMARKER", "part of the webhook secret"),
        ] {
            assert!(!raw.contains(secret), "{what} in the log: {raw}");
        }
        let line: Value = serde_json::from_str(raw)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {raw}"));
        assert!(line["level"].is_string(), "{raw}");
        lines.push(line);
    }
    assert!(lines.len() > 5, "herald all logged: {log}");

    // Request spans: every line of a request on this campaign has both ids.
    let id_text = id.to_string();
    let mut request_lines: BTreeMap<String, usize> = BTreeMap::new();
    for line in &lines {
        let Some(span) = span_named(line, "request") else {
            continue;
        };
        let path = span["path"].as_str().unwrap_or_default();
        if span["correlation_id"] == CORRELATION {
            // Our requests: the campaign is named by the span or, for the create
            // call whose path has no id yet, by the line itself.
            assert!(
                span["campaign_id"] == id_text.as_str()
                    || line["fields"]["campaign_id"] == id_text.as_str(),
                "{line}"
            );
        }
        if !path.contains(&id_text) {
            continue;
        }
        assert_eq!(span["campaign_id"], id_text.as_str(), "{line}");
        assert_eq!(span["correlation_id"], CORRELATION, "{line}");
        *request_lines
            .entry(path.rsplit('/').next().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    for action in ["start", "pause", "resume", "recipients"] {
        assert!(
            request_lines.get(action).is_some_and(|n| *n >= 1),
            "no line logged inside the {action} request: {request_lines:?}"
        );
    }

    // Message spans: every line logged while handling a bus message has both ids;
    // there is one campaign, so every message is about it.
    let mut message_lines: BTreeMap<String, usize> = BTreeMap::new();
    for line in &lines {
        let Some(span) = span_named(line, "message") else {
            continue;
        };
        assert_eq!(span["campaign_id"], id_text.as_str(), "{line}");
        assert_eq!(span["correlation_id"], CORRELATION, "{line}");
        *message_lines
            .entry(span["consumer"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    println!(
        "{} JSON log lines; inside request spans of the campaign: {request_lines:?}; \
         inside message spans: {message_lines:?}",
        lines.len()
    );
    assert!(
        message_lines.get("packer").is_some_and(|n| *n >= 2),
        "the packer logs each run epoch it packs (start and resume): {message_lines:?}"
    );
    assert!(
        message_lines.get("sender").is_some_and(|n| *n >= 1),
        "the sender logs released rows or the completion: {message_lines:?}"
    );

    drop(process);
    provider.stop();
    TestEnv { common, database }.cleanup().await;
}
