//! Scenario 5, the API under load: a second process drives pause and resume on a
//! set of sending campaigns and reads them back (`GET /v1/campaigns/{id}`) for
//! `--seconds`, measured from outside the api. Baseline, same invocation and same
//! load settings: `GET /healthz`, which touches neither Postgres nor NATS.
//!
//! The campaigns are rate-limited to 1 message/s per sender, so they stay in
//! `sending`/`paused` for the whole run while every transition still commits,
//! publishes its control message and reaches every replica.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::args::BenchArgs;
use crate::env::with_env;
use crate::loadgen::{LoadPlan, LoadResult, run_load};
use crate::report::{Figure, RatioKind, ScenarioReport};
use crate::sink::Sink;
use crate::stack::with_stack;

pub const DEFAULT_RECIPIENTS: u64 = 1_000;

pub async fn run(args: &BenchArgs) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let recipients = args.recipients_or(DEFAULT_RECIPIENTS);
    let campaigns = args.campaigns.max(1);
    let senders = args.max_senders();
    let (mix, health, tool) = with_env(args, |env| async move {
        let sink = Sink::start(Duration::ZERO).await?;
        let result = with_stack(&env, args, args.packers, senders, true, async |stack| {
            let mut ids = Vec::new();
            for _ in 0..campaigns {
                let id = stack
                    .client
                    .create_campaign(sink.webhook_channel(), Some(1))
                    .await?;
                stack.client.import_csv(id, recipients).await?;
                stack.client.must(id, "start").await?;
                ids.push(id.to_string());
            }
            let scratch = std::env::temp_dir().join(format!("herald-bench-{}", env.database));
            std::fs::create_dir_all(&scratch)?;
            let mut plan = LoadPlan {
                base_url: stack.client.base_url.clone(),
                token: stack.client.token.clone(),
                campaigns: ids,
                health_only: false,
                connections: args.api_connections.max(1),
                seconds: args.seconds.max(1),
            };
            eprintln!(
                "   transitions and reads: {} connections for {} s",
                plan.connections, plan.seconds
            );
            let (mix, tool) = run_load(&plan, args.load_tool, &scratch).await?;
            plan.health_only = true;
            eprintln!("   GET /healthz: same load");
            let (health, _) = run_load(&plan, args.load_tool, &scratch).await?;
            let _ = std::fs::remove_dir_all(&scratch);
            // Stop the campaigns: a sender holding a rate-limited batch would otherwise
            // keep its work loop busy (and shutdown waiting) for minutes.
            for id in &plan.campaigns {
                if let Ok(id) = id.parse() {
                    let _ = stack.client.transition(id, "stop").await?;
                }
            }
            anyhow::Ok((mix, health, tool))
        })
        .await;
        sink.stop();
        result
    })
    .await?;

    let mut report = ScenarioReport::new(
        "api",
        json!({
            "seconds": args.seconds, "connections": args.api_connections, "campaigns": campaigns,
            "recipients_per_campaign": recipients, "senders": senders, "packers": args.packers,
            "tool": tool, "mix": "60% GET /v1/campaigns/{id}, 20% pause, 20% resume",
        }),
    );
    push_figures(&mut report, &mix, &health);
    report.note(format!(
        "Load from a second process ({tool}). 409 answers (a pause of a paused campaign, a resume \
         of a sending one) are correct answers: {} of {} requests. Errors are 5xx plus \
         connection errors; other 4xx would be harness bugs and are shown apart.",
        mix.s409, mix.requests
    ));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn push_figures(report: &mut ScenarioReport, mix: &LoadResult, health: &LoadResult) {
    let base = "GET /healthz";
    report.push(
        Figure::new(
            "requests_per_s",
            "transitions and reads",
            mix.requests_per_second(),
            "req/s",
        )
        .against(
            health.requests_per_second(),
            base,
            RatioKind::PercentOfBaseline,
        ),
    );
    report.push(
        Figure::new("p99_ms", "p99 latency", mix.p99_us as f64 / 1000.0, "ms").against(
            health.p99_us as f64 / 1000.0,
            base,
            RatioKind::TimesBaseline,
        ),
    );
    report.push(
        Figure::new("p50_ms", "p50 latency", mix.p50_us as f64 / 1000.0, "ms").against(
            health.p50_us as f64 / 1000.0,
            base,
            RatioKind::TimesBaseline,
        ),
    );
    let errors = mix.errors();
    report.push(
        Figure::new(
            "errors",
            "errors (5xx and connection)",
            errors as f64,
            "requests",
        )
        .against(health.errors() as f64, base, RatioKind::TimesBaseline)
        .target("0", errors == 0),
    );
    report.push(
        Figure::new(
            "conflicts_409",
            "409 answers (correct)",
            mix.s409 as f64,
            "requests",
        )
        .against(health.s409 as f64, base, RatioKind::TimesBaseline),
    );
    report.push(
        Figure::new("other_4xx", "other 4xx", mix.s4xx as f64, "requests")
            .against(health.s4xx as f64, base, RatioKind::TimesBaseline)
            .target("0", mix.s4xx == 0),
    );
}
