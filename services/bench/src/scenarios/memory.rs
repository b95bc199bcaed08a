//! Scenario 4, memory: the peak resident set of each service during a throughput
//! run (scenario 1's campaign, with the largest sender count).
//!
//! In process mode every service is its own `herald api|packer|sender` process
//! (configured through the environment, as in production), and /proc/<pid>/status
//! is sampled every 100 ms for VmRSS; at the end VmHWM (the kernel's own peak)
//! catches spikes between samples. The baseline is each service's idle RSS after
//! start-up, so the ratio is what a million recipients add.
//!
//! In-process mode can only see this whole process: it resets the process's peak
//! (`/proc/self/clear_refs`) and reports the peak of everything together.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::args::{BenchArgs, MemoryMode};
use crate::env::with_env;
use crate::processes::ProcessStack;
use crate::report::{Figure, RatioKind, ScenarioReport};
use crate::scenarios::{CampaignRun, run_campaign};
use crate::sink::Sink;
use anyhow::Context as _;
use herald_core::CancellationToken;
use serde_json::json;

pub const DEFAULT_RECIPIENTS: u64 = 1_000_000;
const LIMIT_MB: f64 = 100.0;

/// (VmRSS, VmHWM) of a process, in MiB.
pub fn rss_mib(pid: &str) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> Option<f64> {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
            .map(|kib| kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[derive(Debug, Default, Clone)]
struct Peaks {
    idle: f64,
    sampled: f64,
    hwm: f64,
}

impl Peaks {
    fn peak(&self) -> f64 {
        self.sampled.max(self.hwm)
    }
}

async fn process_mode(
    args: &BenchArgs,
    bin: &Path,
    recipients: u64,
) -> anyhow::Result<(CampaignRun, BTreeMap<String, (&'static str, Peaks)>)> {
    with_env(args, |env| async move {
        let sink = Sink::start(Duration::ZERO).await?;
        let stack = ProcessStack::start(args, &env, bin).await?;
        let result = async {
            // Settle, then take the idle baseline.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let pids: Vec<(String, &'static str, String)> = stack
                .services
                .iter()
                .map(|s| (s.name.clone(), s.service, s.pid.to_string()))
                .collect();
            let peaks: Arc<Mutex<BTreeMap<String, (&'static str, Peaks)>>> = Arc::default();
            for (name, service, pid) in &pids {
                let (rss, _) = rss_mib(pid).context("reading /proc/<pid>/status")?;
                peaks.lock().expect("peaks").insert(
                    name.clone(),
                    (
                        *service,
                        Peaks {
                            idle: rss,
                            sampled: rss,
                            hwm: 0.0,
                        },
                    ),
                );
            }
            let stop_sampling = CancellationToken::new();
            let sampler = {
                let (peaks, pids, stop) = (peaks.clone(), pids.clone(), stop_sampling.clone());
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        for (name, _, pid) in &pids {
                            if let Some((rss, _)) = rss_mib(pid) {
                                if let Some((_, p)) = peaks.lock().expect("peaks").get_mut(name) {
                                    p.sampled = p.sampled.max(rss);
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            };
            let run = run_campaign(&stack.client, &sink, recipients).await;
            stop_sampling.cancel();
            let _ = sampler.await;
            let run = run?;
            let mut peaks = peaks.lock().expect("peaks").clone();
            for (name, _, pid) in &pids {
                let (_, hwm) = rss_mib(pid).with_context(|| format!("{name} exited early"))?;
                if let Some((_, p)) = peaks.get_mut(name) {
                    p.hwm = hwm;
                }
            }
            anyhow::Ok((run, peaks))
        }
        .await;
        stack.stop(result.is_err()).await;
        sink.stop();
        result
    })
    .await
}

/// Resets this process's VmHWM so the next reading is the peak from now on.
fn reset_own_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

async fn in_process_mode(args: &BenchArgs) -> anyhow::Result<(CampaignRun, Peaks, bool)> {
    let me = std::process::id().to_string();
    let (idle, _) = rss_mib(&me).context("reading /proc/self/status")?;
    let reset = reset_own_peak();
    let run = super::throughput::end_to_end(args, args.max_senders()).await?;
    let (rss, hwm) = rss_mib(&me).context("reading /proc/self/status")?;
    Ok((
        run,
        Peaks {
            idle,
            sampled: rss,
            hwm,
        },
        reset,
    ))
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let recipients = args.recipients_or(DEFAULT_RECIPIENTS);
    let process = match args.memory_mode {
        MemoryMode::Process => true,
        MemoryMode::InProcess => false,
        MemoryMode::Auto => args.herald_bin.exists(),
    };
    let mut report = ScenarioReport::new(
        "memory",
        json!({
            "recipients": recipients, "senders": args.max_senders(), "packers": args.packers,
            "mode": if process { "process" } else { "in-process" },
            "herald_bin": args.herald_bin,
        }),
    );
    let run = if process {
        let (run, peaks) = process_mode(args, &args.herald_bin, recipients).await?;
        let mut per_service: BTreeMap<&str, Peaks> = BTreeMap::new();
        for (name, (service, p)) in &peaks {
            report.note(format!(
                "{name}: idle {:.1} MiB, sampled peak {:.1} MiB, VmHWM {:.1} MiB",
                p.idle, p.sampled, p.hwm
            ));
            let entry = per_service.entry(service).or_default();
            entry.idle = entry.idle.max(p.idle);
            entry.sampled = entry.sampled.max(p.sampled);
            entry.hwm = entry.hwm.max(p.hwm);
        }
        for (service, p) in &per_service {
            let mut f = Figure::new(
                format!("peak_rss_mb_{service}"),
                format!("peak RSS, {service} (largest replica)"),
                p.peak(),
                "MiB",
            )
            .against(p.idle, "idle after start-up", RatioKind::TimesBaseline);
            if *service != "api" {
                f = f.target(format!("< {LIMIT_MB} MB"), p.peak() * 1.048_576 < LIMIT_MB);
            }
            report.push(f);
        }
        run
    } else {
        let (run, p, reset) = in_process_mode(args).await?;
        report.push(
            Figure::new(
                "peak_rss_mb_in_process",
                "peak RSS, every service and the sink in one process",
                p.hwm.max(p.sampled),
                "MiB",
            )
            .against(p.idle, "before the run", RatioKind::TimesBaseline),
        );
        report.note(if reset {
            "In-process mode: one process holds the api, every replica and the sink, so only \
             their sum is visible. Use --memory-mode process for per-service figures."
        } else {
            "In-process mode, and /proc/self/clear_refs was not writable: the peak includes \
             everything this process did before the scenario."
        });
        run
    };
    report.push(Figure::new(
        "e2e_msgs_per_s",
        "end to end during the memory run",
        run.messages_per_second(),
        "msg/s",
    ));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
