//! The throughput scenario's two ceilings, each measured without the other part
//! of the pipeline: (a) the sink alone, driven like the senders drive it, and (b)
//! the ledger alone, claiming and marking a prepared campaign.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_core::contracts::SendBatch;
use herald_sender::ledger::{self, RecipientOutcome};
use serde_json::json;
use uuid::Uuid;

use crate::env::BenchEnv;
use crate::sink::Sink;
use crate::stats::rate;

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
                    // With a message id, as the sink answers end to end: the
                    // mark then also writes the receipts key.
                    .map(|r| RecipientOutcome::sent(r.id, Some(format!("m{:x}", r.id)), 1))
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
