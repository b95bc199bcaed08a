//! Batches delivery receipts from many requests into few ledger transactions.
//!
//! Evolution API sends one webhook per status change, so a campaign of a
//! million messages brings a few million small requests. Each request hands its
//! receipts to the writers and waits; a writer takes whatever requests are
//! queued (up to [`MAX_BATCH_RECEIPTS`] receipts), applies them in one
//! transaction ([`herald_core::receipts::store::apply_receipts`]), answers
//! every request with its own counts, and tells each campaign's followers on
//! `campaigns.tracked.<id>`. Under load the batches grow by themselves; an
//! idle writer applies a lone request at once.
//!
//! A request is answered only after its receipts are committed, so a `200`
//! means they are in the ledger. If the commit fails, every request of the
//! batch gets the error (503) and the provider retries.

use std::collections::HashMap;
use std::sync::Arc;

use herald_core::bus::Bus;
use herald_core::contracts::ReceiptsTracked;
use herald_core::receipts::Receipt;
use herald_core::receipts::store::{AppliedReceipts, apply_receipts};
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

/// Most receipts one transaction applies.
pub const MAX_BATCH_RECEIPTS: usize = 5_000;

/// Writers applying batches at once: while one waits for its commit, the next
/// batch fills and goes. Batches that share messages are ordered by the row
/// locks (taken in key order, so they never deadlock).
const WRITERS: usize = 2;

/// Requests waiting for the writer beyond this make new ones wait to enqueue
/// (back-pressure instead of unbounded memory).
const QUEUE_DEPTH: usize = 1_024;

/// How many of a request's receipts named a known message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptCounts {
    pub matched: usize,
    pub unmatched: usize,
}

struct Job {
    channel_id: Uuid,
    receipts: Vec<Receipt>,
    reply: oneshot::Sender<Result<ReceiptCounts, ()>>,
}

/// The handle requests use; cheap to clone.
#[derive(Debug, Clone)]
pub struct ReceiptWriter {
    jobs: mpsc::Sender<Job>,
}

impl ReceiptWriter {
    /// Starts the writer task on the current runtime; it ends when every
    /// handle is dropped.
    pub fn start(pool: &PgPool, bus: &Bus) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..WRITERS {
            tokio::spawn(run_writer(pool.clone(), bus.clone(), queue.clone()));
        }
        Self { jobs }
    }

    /// Applies one request's receipts (all of one channel). Err: the ledger
    /// could not be written (logged); nothing of the batch was applied.
    pub async fn apply(
        &self,
        channel_id: Uuid,
        receipts: Vec<Receipt>,
    ) -> Result<ReceiptCounts, ()> {
        if receipts.is_empty() {
            return Ok(ReceiptCounts {
                matched: 0,
                unmatched: 0,
            });
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            channel_id,
            receipts,
            reply,
        };
        self.jobs.send(job).await.map_err(|_| ())?;
        answer.await.map_err(|_| ())?
    }
}

async fn run_writer(pool: PgPool, bus: Bus, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    while let Some(jobs) = next_batch(&queue).await {
        // In a task of its own: should a batch panic, its requests get a 503
        // (their reply channels drop) and the writer goes on with the next.
        let (pool, bus) = (pool.clone(), bus.clone());
        if let Err(error) = tokio::spawn(async move { write_batch(&pool, &bus, jobs).await }).await
        {
            tracing::error!(%error, "a receipts batch panicked");
        }
    }
}

/// Takes the next request and whatever others are queued behind it, up to
/// [`MAX_BATCH_RECEIPTS`]; None once every handle is gone.
async fn next_batch(queue: &Mutex<mpsc::Receiver<Job>>) -> Option<Vec<Job>> {
    let mut queue = queue.lock().await;
    let mut jobs = vec![queue.recv().await?];
    let mut size = jobs[0].receipts.len();
    while size < MAX_BATCH_RECEIPTS {
        match queue.try_recv() {
            Ok(job) => {
                size += job.receipts.len();
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// One step: applies the jobs' receipts together, answers each job, publishes.
async fn write_batch(pool: &PgPool, bus: &Bus, jobs: Vec<Job>) {
    let batch: Vec<(Uuid, Receipt)> = jobs
        .iter()
        .flat_map(|job| job.receipts.iter().map(|r| (job.channel_id, r.clone())))
        .collect();
    let outcome = apply_receipts(pool, &batch).await;
    let applied = match outcome {
        Ok(applied) => applied,
        Err(error) => {
            tracing::error!(error = %error, receipts = batch.len(), "receipts not applied");
            for job in jobs {
                let _ = job.reply.send(Err(()));
            }
            return;
        }
    };
    metrics::counter!("herald_receipts_total", "matched" => "true")
        .increment(applied.matched.iter().filter(|m| **m).count() as u64);
    metrics::counter!("herald_receipts_total", "matched" => "false")
        .increment(applied.matched.iter().filter(|m| !**m).count() as u64);
    let mut matched = applied.matched.iter();
    for job in jobs {
        let known = matched
            .by_ref()
            .take(job.receipts.len())
            .filter(|m| **m)
            .count();
        let _ = job.reply.send(Ok(ReceiptCounts {
            matched: known,
            unmatched: job.receipts.len() - known,
        }));
    }
    // Apart from the writer, so a slow or absent NATS never holds up receipts.
    tokio::spawn(publish_tracked(bus.clone(), applied));
}

/// Tells each campaign's followers what its receipts changed. Best effort, like
/// the batch outcomes: the ledger already holds the truth.
async fn publish_tracked(bus: Bus, applied: AppliedReceipts) {
    let mut sends = HashMap::new();
    for (campaign_id, funnel) in &applied.by_campaign {
        let message = ReceiptsTracked::new(*campaign_id, funnel);
        let id = format!("receipts-{}", message.correlation_id);
        let subject = bus.subjects.tracked(*campaign_id);
        match bus.send_contract(subject, &message, &id, None).await {
            Ok(ack) => {
                sends.insert(*campaign_id, ack);
            }
            Err(error) => {
                tracing::debug!(error = %format!("{error:#}"), "receipts tracked publish failed")
            }
        }
    }
    for (campaign_id, ack) in sends {
        if let Err(error) = ack.await {
            tracing::debug!(%campaign_id, error = %format!("{error:#}"), "receipts tracked ack failed");
        }
    }
}
