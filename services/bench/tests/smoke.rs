//! Keeps the benchmark harness from rotting: runs `herald-bench all` at a tiny
//! scale against the local Postgres and NATS and checks that every scenario
//! printed its table and wrote every expected figure to the JSON file.
//!
//! It asserts no timing: a figure only has to exist and be a number. The real
//! figures and their targets live in docs/BENCHMARKS.md.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const EXPECTED: &[(&str, &[&str])] = &[
    (
        "throughput",
        &[
            "e2e_msgs_per_s_senders_1",
            "e2e_msgs_per_s_senders_2",
            "e2e_scaling_senders_2",
            "e2e_vs_combined_ceiling_senders_1",
            "import_seconds_senders_1",
            "import_rows_per_s_senders_2",
            "duplicates_senders_1",
            "duplicates_senders_2",
            "sink_alone_req_per_s_concurrency_32",
            "sink_alone_req_per_s_concurrency_64",
            "ledger_alone_rows_per_s_1_conn",
            "ledger_alone_rows_per_s_4_conn",
            "ledger_alone_rows_per_s_8_conn",
        ],
    ),
    (
        "pause",
        &[
            "apply_ms_p50",
            "apply_ms_p99",
            "apply_ms_max",
            "apply_from_request_ms_p99",
            "last_request_ms_p50",
            "last_request_ms_p99",
            "last_request_ms_max",
            "effective_ms_p50",
            "effective_ms_p99",
            "effective_ms_max",
            "overshoot_p50",
            "overshoot_p99",
            "overshoot_max",
            "applied_before_response_pct",
            "missed_applies",
            "iterations",
            "baseline_iterations",
        ],
    ),
    (
        "fanout",
        &[
            "share_min_pct",
            "share_mean_pct",
            "messages_reaching_all_pct",
            "apply_ms_p50",
            "apply_ms_p99",
            "apply_ms_max",
        ],
    ),
    ("memory", &["peak_rss_mb_in_process", "e2e_msgs_per_s"]),
    (
        "api",
        &[
            "requests_per_s",
            "p99_ms",
            "p50_ms",
            "errors",
            "conflicts_409",
            "other_4xx",
        ],
    ),
    (
        "fairness",
        &[
            "first_send_ms_p50",
            "first_send_ms_p99",
            "first_send_ms_max",
            "complete_ms_p50",
            "complete_ms_p99",
            "complete_ms_max",
            "share_ratio_pct",
            "share_rate_first",
            "share_rate_second",
            "timed_out_tries",
        ],
    ),
    (
        "rate",
        &[
            "worst_window_x_limit_senders_1",
            "worst_window_x_limit_senders_2",
            "worst_window_requests_senders_1",
            "achieved_x_limit_senders_1",
            "achieved_x_limit_senders_2",
            "achieved_req_per_s_senders_2",
            "duplicates_senders_1",
        ],
    ),
];

#[test]
fn the_harness_runs_every_scenario_at_a_tiny_scale_and_reports_every_figure() {
    let dir = std::env::temp_dir().join(format!("herald-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_out = dir.join("bench.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args([
            "all",
            "--recipients",
            "2000",
            "--senders",
            "1,2",
            "--packers",
            "2",
        ])
        .args(["--iterations", "5", "--baseline-iterations", "1"])
        .args([
            "--messages",
            "3",
            "--seconds",
            "2",
            "--api-connections",
            "8",
        ])
        .args(["--campaigns", "2", "--memory-mode", "in-process"])
        // fairness: 2 small campaigns per mode, 1 s of shares; rate: 2 s per run
        // at the default 50/s (2 campaigns of 50).
        .args([
            "--tries",
            "2",
            "--share-seconds",
            "1",
            "--rate-seconds",
            "2",
        ])
        .args([
            "--sink-baseline-requests",
            "2000",
            "--ledger-baseline-rows",
            "2000",
            "--throughput-runs",
            "2",
        ])
        .arg("--json-out")
        .arg(&json_out)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("herald-bench starts");
    // A hung harness must fail the test, not the CI run.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("herald-bench all did not finish within 600 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(status.success(), "herald-bench failed: {status}\n{stdout}");

    assert!(stdout.contains("machine: "), "{stdout}");
    for (scenario, _) in EXPECTED {
        assert!(
            stdout.contains(&format!("### {scenario} (")),
            "no {scenario} table in:\n{stdout}"
        );
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap())
        .expect("the JSON output parses");
    for key in ["cpus", "cpu_model", "memory_gib", "postgres", "nats"] {
        assert!(
            !report["machine"][key].is_null(),
            "machine.{key} missing: {report}"
        );
    }
    for (scenario, keys) in EXPECTED {
        let figures = &report["scenarios"][scenario]["figures"];
        assert!(figures.is_object(), "no figures for {scenario}: {report}");
        for key in *keys {
            let figure = &figures[key];
            assert!(
                figure["value"].is_number(),
                "{scenario}.{key} missing or not a number: {figures}"
            );
            assert!(figure["label"].is_string() && figure["unit"].is_string());
        }
        assert!(report["scenarios"][scenario]["params"].is_object());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
