//! Operators replay control and lifecycle events with their own NATS tools. This
//! test does it with nats-py (no Herald code), so the stream layout documented in
//! docs/OPERATIONS.md really serves that use.

use std::path::{Path, PathBuf};
use std::process::Command;

use herald_testkit::*;
use serde_json::{Value, json};

/// A python3 that can `import nats`: the system one, or a venv with nats-py
/// installed from PyPI on first use.
fn python_with_nats_py() -> PathBuf {
    let system = PathBuf::from("python3");
    let has_nats = |python: &Path| {
        Command::new(python)
            .args(["-c", "import nats.js"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_nats(&system) {
        return system;
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nats-py-venv");
    let python = venv.join("bin/python");
    if !has_nats(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "could not create a venv for nats-py");
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "nats-py>=2.6,<3"])
            .status()
            .expect("pip install nats-py");
        assert!(installed.success(), "could not install nats-py from PyPI");
    }
    python
}

#[tokio::test]
async fn a_plain_nats_client_replays_a_campaigns_lifecycle_and_control_events_in_order() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let id = stack.create_campaign(json!({"provider": "log"})).await;
    for action in ["start", "pause", "resume", "stop"] {
        let response = stack
            .http
            .post(stack.url(&format!("/v1/campaigns/{id}/{action}")))
            .bearer_auth(&stack.token)
            .header("X-Correlation-Id", format!("ops-{action}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/replay_events.py");
    let python = python_with_nats_py();
    let common = &stack.env.common;
    let output = tokio::task::spawn_blocking({
        let (python, script, common) = (python.clone(), script.clone(), common.clone());
        move || {
            Command::new(python)
                .arg(script)
                .args(["--campaign", &id.to_string(), "--server", &common.nats_url])
                .args([
                    "--subject-prefix",
                    &common.subject_prefix,
                    "--stream-prefix",
                    &common.stream_prefix,
                ])
                .output()
                .expect("replay script runs")
        }
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let events: Vec<&Value> = rows
        .iter()
        .filter(|r| r["stream"].as_str().unwrap().ends_with("_EVENTS"))
        .collect();
    let types: Vec<&str> = events
        .iter()
        .map(|r| r["payload"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["created", "started", "paused", "resumed", "stopped"]
    );
    for event in &events {
        assert_eq!(
            event["msg_id"], event["payload"]["eventId"],
            "Nats-Msg-Id is the event id"
        );
    }
    let control: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r["stream"].as_str().unwrap().ends_with("_CONTROL"))
        .map(|r| {
            (
                r["payload"]["action"].as_str().unwrap(),
                r["correlation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        control,
        [
            ("pause", "ops-pause"),
            ("resume", "ops-resume"),
            ("stop", "ops-stop")
        ]
    );
    stack.stop().await;
}
