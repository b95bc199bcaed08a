//! Scenario 1, throughput: one campaign end to end (streamed CSV import, start,
//! completed) with 1..N sender replicas, against two ceilings measured in the same
//! invocation:
//!
//! - (a) the sink alone, driven by a plain reqwest client at the same total
//!   concurrency as the senders (`senders x concurrency`): what the provider side
//!   of this machine can take;
//! - (b) the ledger alone: `claim_batch` + `mark_outcomes` + `finish_lease` at the
//!   same batch size on a prepared campaign, with one connection and with one
//!   connection per batch in flight (`senders x batches`): what Postgres can take.
//!
//! End to end is reported as a percentage of the slower of the two.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_core::contracts::SendBatch;
use herald_sender::ledger::{self, RecipientOutcome};
use serde_json::json;
use uuid::Uuid;

use crate::args::BenchArgs;
use crate::env::{BenchEnv, with_env};
use crate::report::{Figure, RatioKind, ScenarioReport};
use crate::scenarios::{CampaignRun, run_campaign};
use crate::sink::Sink;
use crate::stack::with_stack;
use crate::stats::rate;

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

/// Ceiling (a): the sink driven by `concurrency` request loops sharing one client,
/// after a warm-up of a tenth of the requests (connections opened, buffers
/// grown) that is not timed, so every concurrency level is measured warm.
pub async fn sink_alone(concurrency: usize, requests: u64) -> anyhow::Result<f64> {
    let sink = Sink::start(Duration::ZERO).await?;
    // The same client settings as the sender's dispatcher.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()?;
    let campaign = Uuid::new_v4();
    let warmup = (requests / 10).max(1);
    drive_sink(&http, &sink.url, campaign, concurrency, 0, warmup).await?;
    let started = Instant::now();
    drive_sink(&http, &sink.url, campaign, concurrency, warmup, requests).await?;
    let elapsed = started.elapsed().as_secs_f64();
    sink.stop();
    anyhow::ensure!(sink.distinct() == warmup + requests, "sink lost requests");
    Ok(rate(requests, elapsed))
}

/// Sends requests numbered `first..first + count` with `concurrency` loops.
async fn drive_sink(
    http: &reqwest::Client,
    url: &str,
    campaign: Uuid,
    concurrency: usize,
    first: u64,
    count: u64,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(first));
    let end = first + count;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, next, url) = (http.clone(), next.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    return anyhow::Ok(());
                }
                let key = format!("herald-{campaign}-{n}");
                // A body like the webhook provider's.
                let body = serde_json::to_vec(&json!({
                    "campaign_id": campaign, "recipient_id": n, "address": format!("+1555{n:08}"),
                    "message": format!("Hi r{n}"), "idempotency_key": key,
                }))?;
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", key)
                    .body(body)
                    .send()
                    .await?;
                let _: serde_json::Value = response.json().await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// A campaign in `sending` with `rows` pending recipients, written directly.
async fn prepared_campaign(env: &BenchEnv, rows: u64) -> anyhow::Result<(Uuid, i64, i64)> {
    let pool = env.pool()?;
    let (tenant, _) = herald_core::auth::create_token(&pool, "ledger").await?;
    let id = Uuid::new_v4();
    // Every campaign sends through a channel: a private one under the campaign's
    // id, as the scheduling migration gives campaigns that predate channels.
    sqlx::query(
        "INSERT INTO channels (id, tenant_id, name, config, private)
         VALUES ($1, $2, 'campaign ledger', '{\"provider\":\"log\"}', true)",
    )
    .bind(id)
    .bind(tenant.id)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO campaigns (id, tenant_id, name, channel_id, template, status, run_epoch,
                                total_count, pending_count)
         VALUES ($1, $2, 'ledger', $1, '{\"body\":\"Hi {{ name }}\"}', 'sending', 1, $3, $3)",
    )
    .bind(id)
    .bind(tenant.id)
    .bind(rows as i64)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO recipients (campaign_id, address, variables)
         SELECT $1, '+1555' || lpad(g::text, 8, '0'), jsonb_build_object('name', 'r' || g)
         FROM generate_series(0, $2 - 1) g",
    )
    .bind(id)
    .bind(rows as i64)
    .execute(&pool)
    .await?;
    let (first, last): (i64, i64) =
        sqlx::query_as("SELECT min(id), max(id) FROM recipients WHERE campaign_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await?;
    // Fresh statistics, as a long-running database would have.
    sqlx::query("ANALYZE recipients").execute(&pool).await?;
    pool.close().await;
    Ok((id, first, last))
}

/// Ceiling (b): claim and mark every row of a prepared campaign, `connections`
/// batches at a time, each on its own connection. Returns rows/s.
pub async fn ledger_alone(
    env: &BenchEnv,
    rows: u64,
    batch_size: i64,
    connections: usize,
    hold: Duration,
) -> anyhow::Result<f64> {
    let (campaign, first, last) = prepared_campaign(env, rows).await?;
    let pool = env.pool_with(connections as u32).await?;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (pool, next, done) = (pool.clone(), next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let from = first + next.fetch_add(1, Ordering::Relaxed) as i64 * batch_size;
                if from > last {
                    return anyhow::Ok(());
                }
                let batch = SendBatch {
                    campaign_id: campaign,
                    run_epoch: 1,
                    first_recipient_id: from,
                    last_recipient_id: (from + batch_size - 1).min(last),
                    recipient_count: batch_size,
                    correlation_id: Uuid::new_v4(),
                };
                let token = Uuid::new_v4();
                let claimed = ledger::claim_batch(&pool, &batch, token, 30.0, i64::MAX)
                    .await?
                    .rows;
                if !hold.is_zero() {
                    // Stands in for the dispatch between claim and mark.
                    tokio::time::sleep(hold).await;
                }
                let outcomes: Vec<RecipientOutcome> = claimed
                    .iter()
                    .map(|r| RecipientOutcome::sent(r.id, None, 1))
                    .collect();
                let written = ledger::mark_outcomes(&pool, campaign, token, &outcomes).await?;
                ledger::finish_lease(&pool, campaign, token).await?;
                done.fetch_add(written as u64, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    pool.close().await;
    let written = done.load(Ordering::Relaxed);
    anyhow::ensure!(written == rows, "ledger baseline wrote {written} of {rows}");
    Ok(rate(rows, elapsed))
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let recipients = args.recipients_or(DEFAULT_RECIPIENTS);
    let mut senders = args.senders.clone();
    senders.sort_unstable();
    senders.dedup();
    senders.retain(|s| *s > 0);
    let mut report = ScenarioReport::new(
        "throughput",
        json!({
            "recipients": recipients, "senders": senders, "packers": args.packers,
            "sender_concurrency": args.sender_concurrency, "sender_batches": args.sender_batches,
            "batch_size": args.batch_size,
        }),
    );

    // The baselines first: they need nothing but the sink and Postgres.
    let sink_requests = args.sink_baseline_requests.min(recipients).max(1);
    let ledger_rows = args.ledger_baseline_rows.min(recipients).max(1);
    let mut sink_ceiling = Vec::new();
    for &s in &senders {
        let concurrency = s * args.sender_concurrency;
        eprintln!("   sink alone at concurrency {concurrency} ({sink_requests} requests)");
        let r = sink_alone(concurrency, sink_requests).await?;
        eprintln!("   {r:.0} req/s");
        sink_ceiling.push(r);
    }
    let (ledger_one, ledger_ceiling) = with_env(args, |env| {
        let senders = senders.clone();
        async move {
            eprintln!("   ledger alone, 1 connection ({ledger_rows} rows)");
            let hold = Duration::from_millis(args.ledger_hold_ms);
            let one = ledger_alone(&env, ledger_rows, args.batch_size, 1, hold).await?;
            eprintln!("   {one:.0} rows/s");
            let mut per = Vec::new();
            for &s in &senders {
                let connections = s * args.sender_batches;
                eprintln!("   ledger alone, {connections} connections");
                let r = ledger_alone(&env, ledger_rows, args.batch_size, connections, hold).await?;
                eprintln!("   {r:.0} rows/s");
                per.push(r);
            }
            anyhow::Ok((one, per))
        }
    })
    .await?;

    let mut e2e_first = None;
    for (i, &s) in senders.iter().enumerate() {
        eprintln!(
            "   end to end with {s} sender(s), {} packer(s)",
            args.packers
        );
        let run = end_to_end(args, s).await?;
        let mps = run.messages_per_second();
        let ceiling = sink_ceiling[i].min(ledger_ceiling[i]);
        let which = if sink_ceiling[i] <= ledger_ceiling[i] {
            "sink"
        } else {
            "ledger"
        };
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
        let combined = 1.0 / (1.0 / sink_ceiling[i].max(1.0) + 1.0 / ledger_ceiling[i].max(1.0));
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
        let first = *e2e_first.get_or_insert(mps);
        if i > 0 {
            report.push(
                Figure::new(
                    format!("e2e_scaling_senders_{s}"),
                    format!("end to end, {s} senders vs 1"),
                    mps,
                    "msg/s",
                )
                .against(
                    first,
                    format!("{} sender(s)", senders[0]),
                    RatioKind::TimesBaseline,
                ),
            );
        }
        report.push(Figure::new(
            format!("import_seconds_senders_{s}"),
            format!("CSV import of {recipients} (run with {s} sender(s))"),
            run.import_seconds,
            "s",
        ));
        report.push(Figure::new(
            format!("import_rows_per_s_senders_{s}"),
            format!("CSV import rate (run with {s} sender(s))"),
            rate(recipients, run.import_seconds),
            "rows/s",
        ));
        report.push(
            Figure::new(
                format!("duplicates_senders_{s}"),
                format!("duplicate sends, {s} sender(s)"),
                run.duplicates as f64,
                "requests",
            )
            .target("0", run.duplicates == 0),
        );
    }
    for (i, &s) in senders.iter().enumerate() {
        let concurrency = s * args.sender_concurrency;
        report.push(Figure::new(
            format!("sink_alone_req_per_s_concurrency_{concurrency}"),
            format!("ceiling (a): sink alone, {concurrency} in flight"),
            sink_ceiling[i],
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
        "Ceilings: (a) {sink_requests} sink requests per concurrency level; (b) {ledger_rows} \
         ledger rows per connection count, batch size {}. Each end-to-end run has its own \
         fresh database and streams.",
        args.batch_size
    ));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
