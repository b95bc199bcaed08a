//! Scenario 1, throughput: one campaign end to end (streamed CSV import, start,
//! completed) with 1..N sender replicas, against two ceilings measured in the same
//! invocation:
//!
//! - (a) the sink alone, driven by a plain reqwest client at the same total
//!   concurrency as the senders (`senders x concurrency`): what the provider side
//!   of this machine can take;
//! - (b) the ledger alone: `claim_batch` + `mark_outcomes` + `finish_lease` at the
//!   same batch size on a prepared campaign, every row sent with a message id (as
//!   the sink answers), with one connection and with one connection per batch in
//!   flight (`senders x batches`): what Postgres can take.
//!
//! End to end is reported as a percentage of the slower of the two.
//!
//! The sink ceiling and the end-to-end campaign are measured `--throughput-runs`
//! times, interleaved (each campaign right after its own sink ceiling), and the
//! figures are their medians: on a small shared machine either moves by 10-30%
//! from one measurement to the next, so one of each compares two draws of
//! noise. Every run's pair is listed in the scenario's notes.

mod ceilings;

use std::time::{Duration, Instant};

use serde_json::json;

use crate::args::BenchArgs;
use crate::env::with_env;
use crate::report::{Figure, RatioKind, ScenarioReport};
use crate::scenarios::{CampaignRun, run_campaign};
use crate::sink::Sink;
use crate::stack::with_stack;
use crate::stats::{percentile, rate};

pub use ceilings::{ledger_alone, sink_alone};

pub const DEFAULT_RECIPIENTS: u64 = 1_000_000;

/// Runs one campaign on a fresh environment with `senders` sender replicas.
pub async fn end_to_end(args: &BenchArgs, senders: usize) -> anyhow::Result<CampaignRun> {
    let recipients = args.recipients_or(DEFAULT_RECIPIENTS);
    with_env(args, |env| async move {
        let sink = Sink::start(Duration::ZERO).await?;
        let run = with_stack(&env, args, args.packers, senders, true, async |stack| {
            run_campaign(&stack.client, &sink, recipients).await
        })
        .await;
        sink.stop();
        run
    })
    .await
}

/// One sender count's interleaved runs: each run's sink ceiling (req/s), and
/// its campaign's rate (msg/s), import time (s) and duplicate sends.
#[derive(Default)]
struct Runs {
    sink: Vec<f64>,
    e2e: Vec<f64>,
    import_seconds: Vec<f64>,
    duplicates: u64,
}

/// The median; of an even count, the lower of the two middle values.
fn median(samples: &[f64]) -> f64 {
    percentile(samples, 50.0)
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let recipients = args.recipients_or(DEFAULT_RECIPIENTS);
    let mut senders = args.senders.clone();
    senders.sort_unstable();
    senders.dedup();
    senders.retain(|s| *s > 0);
    let rounds = args.throughput_runs;
    let mut report = ScenarioReport::new(
        "throughput",
        json!({
            "recipients": recipients, "senders": senders, "packers": args.packers,
            "sender_concurrency": args.sender_concurrency, "sender_batches": args.sender_batches,
            "batch_size": args.batch_size, "runs": rounds,
        }),
    );
    let sink_requests = args.sink_baseline_requests.min(recipients).max(1);
    let ledger_rows = args.ledger_baseline_rows.min(recipients).max(1);
    let (ledger_one, ledger_ceiling) = ledger_ceilings(args, &senders, ledger_rows).await?;

    let mut runs: Vec<Runs> = senders.iter().map(|_| Runs::default()).collect();
    for round in 1..=rounds {
        for (i, &s) in senders.iter().enumerate() {
            let concurrency = s * args.sender_concurrency;
            eprintln!("   run {round}/{rounds}: sink alone at concurrency {concurrency}");
            let sink = sink_alone(concurrency, sink_requests).await?;
            eprintln!("   {sink:.0} req/s; end to end with {s} sender(s)");
            let run = end_to_end(args, s).await?;
            eprintln!("   {:.0} msg/s", run.messages_per_second());
            runs[i].sink.push(sink);
            runs[i].e2e.push(run.messages_per_second());
            runs[i].import_seconds.push(run.import_seconds);
            runs[i].duplicates += run.duplicates;
        }
    }

    let first_e2e = runs.first().map(|r| median(&r.e2e)).unwrap_or_default();
    for (i, &s) in senders.iter().enumerate() {
        let ceilings = (median(&runs[i].sink), ledger_ceiling[i]);
        push_sender_figures(&mut report, s, &runs[i], ceilings, recipients);
        if i > 0 {
            report.push(
                Figure::new(
                    format!("e2e_scaling_senders_{s}"),
                    format!("end to end, {s} senders vs 1"),
                    median(&runs[i].e2e),
                    "msg/s",
                )
                .against(
                    first_e2e,
                    format!("{} sender(s)", senders[0]),
                    RatioKind::TimesBaseline,
                ),
            );
        }
    }
    for (i, &s) in senders.iter().enumerate() {
        let concurrency = s * args.sender_concurrency;
        report.push(Figure::new(
            format!("sink_alone_req_per_s_concurrency_{concurrency}"),
            format!("ceiling (a): sink alone, {concurrency} in flight"),
            median(&runs[i].sink),
            "req/s",
        ));
    }
    report.push(Figure::new(
        "ledger_alone_rows_per_s_1_conn",
        "ceiling (b): ledger alone, 1 connection",
        ledger_one,
        "rows/s",
    ));
    for (i, &s) in senders.iter().enumerate() {
        let connections = s * args.sender_batches;
        report.push(
            Figure::new(
                format!("ledger_alone_rows_per_s_{connections}_conn"),
                format!("ceiling (b): ledger alone, {connections} connections"),
                ledger_ceiling[i],
                "rows/s",
            )
            .against(ledger_one, "1 connection", RatioKind::TimesBaseline),
        );
    }
    report.note(format!(
        "Ceilings: (a) {sink_requests} sink requests per concurrency level, measured right \
         before each end-to-end run; (b) {ledger_rows} ledger rows per connection count, \
         batch size {}, measured once. Each end-to-end run has its own fresh database and \
         streams. Rates, sink ceilings and import times are medians of {rounds} run(s).",
        args.batch_size
    ));
    for (i, &s) in senders.iter().enumerate() {
        let pairs: Vec<String> = (runs[i].e2e.iter().zip(&runs[i].sink))
            .map(|(e2e, sink)| format!("{e2e:.0}/{sink:.0} ({:.1}%)", 100.0 * e2e / sink))
            .collect();
        report.note(format!(
            "{s} sender(s), each run's msg/s over its own sink req/s: {}",
            pairs.join(", ")
        ));
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Ceiling (b), once: the ledger with one connection, and with one connection
/// per batch in flight for each sender count.
async fn ledger_ceilings(
    args: &BenchArgs,
    senders: &[usize],
    ledger_rows: u64,
) -> anyhow::Result<(f64, Vec<f64>)> {
    with_env(args, |env| async move {
        eprintln!("   ledger alone, 1 connection ({ledger_rows} rows)");
        let hold = Duration::from_millis(args.ledger_hold_ms);
        let one = ledger_alone(&env, ledger_rows, args.batch_size, 1, hold).await?;
        eprintln!("   {one:.0} rows/s");
        let mut per = Vec::new();
        for &s in senders {
            let connections = s * args.sender_batches;
            eprintln!("   ledger alone, {connections} connections");
            let r = ledger_alone(&env, ledger_rows, args.batch_size, connections, hold).await?;
            eprintln!("   {r:.0} rows/s");
            per.push(r);
        }
        anyhow::Ok((one, per))
    })
    .await
}

/// The figures of one sender count: its median rate against the slower
/// ceiling (`(sink, ledger)`, the 50% target) and against both on shared CPUs,
/// its import, and its duplicate sends over every run.
fn push_sender_figures(
    report: &mut ScenarioReport,
    s: usize,
    runs: &Runs,
    (sink, ledger): (f64, f64),
    recipients: u64,
) {
    let mps = median(&runs.e2e);
    let ceiling = sink.min(ledger);
    let which = if sink <= ledger { "sink" } else { "ledger" };
    let pct = 100.0 * mps / ceiling.max(f64::MIN_POSITIVE);
    report.push(
        Figure::new(
            format!("e2e_msgs_per_s_senders_{s}"),
            format!("end to end, {s} sender(s)"),
            mps,
            "msg/s",
        )
        .against(
            ceiling,
            format!("slower ceiling: {which}"),
            RatioKind::PercentOfBaseline,
        )
        .target(">= 50% of ceiling", pct >= 50.0),
    );
    // On a small machine both ceilings share the same CPUs, so one message costs
    // its HTTP work plus its ledger work: the combined ceiling is harmonic.
    let combined = 1.0 / (1.0 / sink.max(1.0) + 1.0 / ledger.max(1.0));
    report.push(
        Figure::new(
            format!("e2e_vs_combined_ceiling_senders_{s}"),
            format!("end to end, {s} sender(s), vs sink+ledger on shared CPUs"),
            mps,
            "msg/s",
        )
        .against(
            combined,
            "1/(1/sink + 1/ledger)",
            RatioKind::PercentOfBaseline,
        ),
    );
    let import_seconds = median(&runs.import_seconds);
    report.push(Figure::new(
        format!("import_seconds_senders_{s}"),
        format!("CSV import of {recipients} (run with {s} sender(s))"),
        import_seconds,
        "s",
    ));
    report.push(Figure::new(
        format!("import_rows_per_s_senders_{s}"),
        format!("CSV import rate (run with {s} sender(s))"),
        rate(recipients, import_seconds),
        "rows/s",
    ));
    report.push(
        Figure::new(
            format!("duplicates_senders_{s}"),
            format!("duplicate sends, {s} sender(s), all runs"),
            runs.duplicates as f64,
            "requests",
        )
        .target("0", runs.duplicates == 0),
    );
}
