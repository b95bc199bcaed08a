//! Scenario 8, delivery receipts into the ledger: a campaign of `--recipients`
//! [100000] is sent to the sink (which answers every request with a message
//! id), then every message gets a `delivered` and a `read` receipt through
//! `POST /v1/receipts/{channel_id}/{token}`, from `--api-connections` [32]
//! concurrent clients in this process. Two shapes:
//!
//! - **batched:** Herald's format, 100 receipts per request;
//! - **single:** Evolution API's webhook, one receipt per request (what an
//!   Evolution instance sends).
//!
//! Baseline, same run and same requests: receipts for ids no message has, so
//! the API parses, authenticates and looks them up but writes nothing. The
//! figure's share of it is what writing the ledger costs. After each matched
//! run the campaign's funnel must count every message delivered and read
//! exactly once, or the scenario fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::args::BenchArgs;
use crate::env::with_env;
use crate::report::{Figure, RatioKind, ScenarioReport};
use crate::sink::Sink;
use crate::stack::with_stack;

pub const DEFAULT_RECIPIENTS: u64 = 100_000;

/// Receipts per request in the batched shape.
const BATCH: usize = 100;

/// The target, in receipts per second into the ledger.
const TARGET_PER_SECOND: f64 = 10_000.0;

pub async fn run(args: &BenchArgs) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let recipients = args.recipients_or(DEFAULT_RECIPIENTS);
    let connections = args.api_connections.max(1);
    let figures = with_env(args, |env| async move {
        let sink = Sink::start(Duration::ZERO).await?;
        let result = with_stack(&env, args, args.packers, 1, true, async |stack| {
            let id = stack
                .client
                .create_campaign(sink.webhook_channel(), None)
                .await?;
            stack.client.import_csv(id, recipients).await?;
            stack.client.must(id, "start").await?;
            eprintln!("   sending {recipients} messages to the sink");
            let done = stack
                .client
                .wait_for_status(
                    id,
                    "completed",
                    Duration::from_millis(200),
                    Duration::from_secs(600),
                )
                .await?;
            let url = done["receipts_url"]
                .as_str()
                .context("receipts_url")?
                .to_owned();
            let pool = env.pool()?;
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT provider_message_id FROM recipients WHERE campaign_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(&pool)
            .await?;
            ensure!(
                ids.len() as u64 == recipients,
                "{} message ids of {recipients}",
                ids.len()
            );
            let unknown: Vec<String> = ids.iter().map(|m| format!("unknown-{m}")).collect();
            let mut results = Vec::new();
            for (shape, per_request) in [("batched", BATCH), ("single", 1)] {
                eprintln!("   {shape}: baseline (unknown ids)");
                let baseline = post_all(&url, &unknown, per_request, connections).await?;
                eprintln!("   {shape}: receipts into the ledger");
                let measured = post_all(&url, &ids, per_request, connections).await?;
                check_funnel(&stack.client.campaign(id).await?, recipients, shape)?;
                reset_funnel(&pool, id).await?;
                results.push((shape, measured, baseline));
            }
            anyhow::Ok(results)
        })
        .await;
        sink.stop();
        result
    })
    .await?;
    let mut report = ScenarioReport::new(
        "receipts",
        json!({"recipients": recipients, "connections": connections, "batched_receipts_per_request": BATCH,
               "receipts_per_message": 2}),
    );
    for (shape, measured, baseline) in figures {
        let label = match shape {
            "batched" => "Herald format, 100 per request",
            _ => "Evolution webhook, 1 per request",
        };
        report.push(
            Figure::new(
                format!("{shape}_receipts_per_s"),
                label,
                measured,
                "receipts/s",
            )
            .against(
                baseline,
                "unknown ids (no writes)",
                RatioKind::PercentOfBaseline,
            )
            .target("≥ 10,000", measured >= TARGET_PER_SECOND),
        );
    }
    report.note(
        "Each message gets `delivered` then `read`. The API, the sink and the client share the \
         machine; the client is in this process.",
    );
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Posts a `delivered` and then a `read` receipt for every id, `per_request` per
/// request, from `connections` clients; returns receipts per second.
async fn post_all(
    url: &str,
    ids: &[String],
    per_request: usize,
    connections: usize,
) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let url = Arc::new(url.to_owned());
    let started = Instant::now();
    for status in ["delivered", "read"] {
        let bodies = ids
            .chunks(per_request)
            .map(|chunk| body(chunk, status, per_request));
        let mut requests = futures::stream::iter(bodies)
            .map(|body| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let response = client.post(url.as_str()).json(&body).send().await?;
                    let code = response.status();
                    if !code.is_success() {
                        bail!(
                            "receipts answered {code}: {}",
                            response.text().await.unwrap_or_default()
                        );
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(connections);
        while let Some(result) = requests.next().await {
            result?;
        }
    }
    Ok((ids.len() * 2) as f64 / started.elapsed().as_secs_f64())
}

fn body(ids: &[String], status: &str, per_request: usize) -> Value {
    if per_request == 1 {
        let evolution = match status {
            "delivered" => "DELIVERY_ACK",
            _ => "READ",
        };
        json!({"event": "messages.update", "instance": "bench",
               "data": {"keyId": ids[0], "fromMe": true, "status": evolution},
               "date_time": "2026-11-30T12:00:00.000Z"})
    } else {
        let receipts: Vec<Value> = ids
            .iter()
            .map(|id| json!({"provider_message_id": id, "status": status}))
            .collect();
        json!({ "receipts": receipts })
    }
}

fn check_funnel(campaign: &Value, recipients: u64, shape: &str) -> anyhow::Result<()> {
    let funnel = &campaign["funnel"];
    let (delivered, read) = (funnel["delivered"].as_u64(), funnel["read"].as_u64());
    if delivered != Some(recipients) || read != Some(recipients) {
        bail!("{shape}: funnel {funnel} after receipts for {recipients} messages");
    }
    Ok(())
}

/// Puts every message back to `sent` so the next shape starts from the same state.
async fn reset_funnel(pool: &sqlx::PgPool, campaign: uuid::Uuid) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE provider_messages SET state = 'sent', delivered_at = NULL, read_at = NULL
         WHERE campaign_id = $1",
    )
    .bind(campaign)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE campaign_counter_deltas SET delivered = 0, read = 0 WHERE campaign_id = $1",
    )
    .bind(campaign)
    .execute(pool)
    .await?;
    Ok(())
}
