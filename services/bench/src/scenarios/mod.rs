//! The eight scenarios, and the end-to-end campaign run that throughput and memory
//! share.

pub mod api_load;
pub mod fairness;
pub mod fanout;
pub mod memory;
pub mod pause;
pub mod rate;
pub mod receipts;
pub mod throughput;

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::api_client::ApiClient;
use crate::sink::Sink;

/// One campaign from import to completed.
#[derive(Debug, Clone, Copy)]
pub struct CampaignRun {
    pub recipients: u64,
    pub import_seconds: f64,
    /// From the start request to the first poll that saw `completed`.
    pub send_seconds: f64,
    pub distinct: u64,
    pub duplicates: u64,
}

impl CampaignRun {
    pub fn messages_per_second(&self) -> f64 {
        crate::stats::rate(self.recipients, self.send_seconds)
    }
}

/// Creates a webhook campaign aimed at `sink`, imports `recipients` as streamed
/// CSV, starts it and waits for `completed`, then checks the sink saw every
/// recipient exactly once.
pub async fn run_campaign(
    client: &ApiClient,
    sink: &Sink,
    recipients: u64,
) -> anyhow::Result<CampaignRun> {
    let before = (sink.total(), sink.duplicates());
    let id = client.create_campaign(sink.webhook_channel(), None).await?;
    eprintln!("   importing {recipients} recipients");
    let (_, import) = client.import_csv(id, recipients).await?;
    eprintln!("   imported in {:.1} s; sending", import.as_secs_f64());
    let started = Instant::now();
    client.must(id, "start").await?;
    // Generous: a stuck campaign must fail the run, a slow machine must not.
    let timeout = Duration::from_secs(120 + recipients / 200);
    let body = client
        .wait_for_status(id, "completed", Duration::from_millis(50), timeout)
        .await?;
    let send = started.elapsed();
    // Responses to the last requests may still be in flight at the sink; the
    // ledger is already final.
    sink.wait_quiet(Duration::from_millis(200), Duration::from_secs(5))
        .await;
    let run = CampaignRun {
        recipients,
        import_seconds: import.as_secs_f64(),
        send_seconds: send.as_secs_f64(),
        distinct: sink.distinct() - (before.0 - before.1),
        duplicates: sink.duplicates() - before.1,
    };
    let sent = body["counters"]["sent"].as_u64().unwrap_or(0);
    if sent != recipients || run.distinct != recipients {
        bail!(
            "campaign completed with {sent} sent and {} distinct at the sink, of {recipients}",
            run.distinct
        );
    }
    eprintln!(
        "   completed in {:.1} s ({:.0} msg/s)",
        run.send_seconds,
        run.messages_per_second()
    );
    Ok(run)
}
