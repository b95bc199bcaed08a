//! Group commit of dispatch outcomes across every batch of one sender replica.
//!
//! Outcomes are written as they complete, not once at the end of a batch: a
//! `kill -9` then repeats at the provider only the requests whose outcome was not
//! yet written, never a whole batch. Writing each batch's outcomes on its own,
//! though, made a replica with four batches in flight commit four times as often,
//! and with three replicas the commits (each a WAL flush) became the bottleneck
//! (docs/BENCHMARKS.md). So one writer per replica records everything queued by
//! all of its batches in one statement.
//!
//! A write waits until [`FULL_GROUP`] outcomes are queued or the first of them has
//! waited the linger (`HERALD_OUTCOME_LINGER_MS`, 20 ms by default), like a
//! Kafka producer's `linger.ms`. Without it a busy replica wrote whatever arrived
//! during its previous write, about 60 rows at a time, and Postgres spent about as
//! much CPU per row on statement and commit overhead as on the rows themselves;
//! with it, writes hold about 250 rows and three senders went about 20% faster.
//! 20 ms rather than 10: a replica that shares the load with two others sees a
//! third of the rate, and at 10 ms its writes held about 130 rows.
//! The price is bounded by time: a `kill -9` repeats at the provider (with the
//! same idempotency key) at most the requests in flight plus one linger's worth
//! of finished ones. A linger of 0 writes at once, as before.
//!
//! The same write appends to the auto-pause windows of the campaigns that have
//! one, and the writer hands the campaigns it found over their failure rate to
//! the replica (`crate::auto_pause`).

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use herald_core::auto_pause::Tripped;

use crate::ledger::{self, LeasedOutcome, Marked, RecipientOutcome};

/// The most outcomes in one write.
const MAX_GROUP: usize = 2_000;

/// A write starts without waiting for the linger once this many outcomes are
/// queued: enough rows that the statement's own cost is small beside theirs.
pub const FULL_GROUP: usize = 250;

/// Why a batch's outcomes could not all be written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("outcome write failed: {0}")]
pub struct RecordError(String);

/// One outcome waiting for the writer, and where to report that it is written.
struct Queued {
    outcome: LeasedOutcome,
    written: mpsc::UnboundedSender<Result<(), RecordError>>,
}

/// The replica's outcome writer. Cheap to clone; the writer task ends when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct OutcomeRecorder {
    queue: mpsc::UnboundedSender<Queued>,
}

impl OutcomeRecorder {
    /// Starts the writer task. An outcome waits at most `linger` for others to
    /// share its write. A write that fails because Postgres is unreachable is
    /// retried for up to `retry_limit`: giving up would let the leases expire and
    /// send those recipients a second time.
    pub fn start(pool: PgPool, linger: Duration, retry_limit: Duration) -> Self {
        Self::start_with_trips(pool, linger, retry_limit, None)
    }

    /// [`OutcomeRecorder::start`], and every campaign a write finds over its
    /// auto-pause failure rate is sent to `trips` (`herald_core::auto_pause`).
    pub fn start_with_trips(
        pool: PgPool,
        linger: Duration,
        retry_limit: Duration,
        trips: Option<mpsc::UnboundedSender<Tripped>>,
    ) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let writer = Writer {
            pool,
            linger,
            retry_limit,
            trips,
        };
        tokio::spawn(writer.write_groups(receiver));
        Self { queue }
    }

    /// A handle for one batch's outcomes.
    pub fn batch(&self, campaign_id: Uuid, lease_token: Uuid) -> BatchRecording {
        let (written_tx, written_rx) = mpsc::unbounded_channel();
        BatchRecording {
            queue: self.queue.clone(),
            campaign_id,
            lease_token,
            written_tx,
            written_rx,
            queued: 0,
        }
    }
}

/// The outcomes of one batch on their way to the ledger.
#[derive(Debug)]
pub struct BatchRecording {
    queue: mpsc::UnboundedSender<Queued>,
    campaign_id: Uuid,
    lease_token: Uuid,
    written_tx: mpsc::UnboundedSender<Result<(), RecordError>>,
    written_rx: mpsc::UnboundedReceiver<Result<(), RecordError>>,
    queued: usize,
}

impl BatchRecording {
    /// Queues one outcome for the next write.
    pub fn record(&mut self, outcome: RecipientOutcome) -> Result<(), RecordError> {
        let queued = Queued {
            outcome: LeasedOutcome {
                campaign_id: self.campaign_id,
                lease_token: self.lease_token,
                outcome,
            },
            written: self.written_tx.clone(),
        };
        self.queue
            .send(queued)
            .map_err(|_| RecordError("the outcome writer has stopped".into()))?;
        self.queued += 1;
        Ok(())
    }

    /// Waits until every queued outcome is written, or one write failed.
    pub async fn flushed(mut self) -> Result<(), RecordError> {
        drop(self.written_tx);
        let mut confirmed = 0;
        while confirmed < self.queued {
            match self.written_rx.recv().await {
                Some(Ok(())) => confirmed += 1,
                Some(Err(error)) => return Err(error),
                None => return Err(RecordError("the outcome writer has stopped".into())),
            }
        }
        Ok(())
    }
}

/// The writer task's settings.
struct Writer {
    pool: PgPool,
    linger: Duration,
    retry_limit: Duration,
    trips: Option<mpsc::UnboundedSender<Tripped>>,
}

impl Writer {
    async fn write_groups(self, mut receiver: mpsc::UnboundedReceiver<Queued>) {
        let mut group: Vec<Queued> = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = receiver.recv().await {
            group.push(first);
            let linger_until = tokio::time::Instant::now() + self.linger;
            while group.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(queued) => group.push(queued),
                    Err(_) if group.len() >= FULL_GROUP || self.linger.is_zero() => break,
                    Err(_) => match tokio::time::timeout_at(linger_until, receiver.recv()).await {
                        Ok(Some(queued)) => group.push(queued),
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            let outcomes: Vec<LeasedOutcome> = group.iter().map(|q| q.outcome.clone()).collect();
            let result = write_with_retry(&self.pool, &outcomes, self.retry_limit).await;
            let result = result.map(|marked| self.report_trips(marked.tripped));
            for queued in group.drain(..) {
                // A batch that gave up waiting has dropped its receiver; nothing to tell.
                let _ = queued.written.send(result.clone());
            }
        }
    }

    fn report_trips(&self, tripped: Vec<Tripped>) {
        if let Some(trips) = &self.trips {
            for trip in tripped {
                let _ = trips.send(trip);
            }
        }
    }
}

async fn write_with_retry(
    pool: &PgPool,
    outcomes: &[LeasedOutcome],
    retry_limit: Duration,
) -> Result<Marked, RecordError> {
    let give_up = tokio::time::Instant::now() + retry_limit;
    let mut delay = Duration::from_millis(100);
    loop {
        match ledger::mark_leased_outcomes(pool, outcomes).await {
            Ok(marked) => {
                log_lost_leases(outcomes, &marked.written);
                return Ok(marked);
            }
            Err(error)
                if herald_core::db::is_unavailable(&error)
                    && tokio::time::Instant::now() < give_up =>
            {
                tracing::warn!(%error, outcomes = outcomes.len(), "Postgres unavailable; retrying the outcome write");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(error) => {
                tracing::error!(%error, outcomes = outcomes.len(), "could not write outcomes");
                return Err(RecordError(error.to_string()));
            }
        }
    }
}

/// Rows that were no longer held by their lease (it expired and another replica
/// took them over) are not written; that is expected after a long stall, but
/// worth a line in the log.
fn log_lost_leases(outcomes: &[LeasedOutcome], written: &HashMap<Uuid, i64>) {
    let mut queued: HashMap<Uuid, (Uuid, i64)> = HashMap::new();
    for o in outcomes {
        queued.entry(o.lease_token).or_insert((o.campaign_id, 0)).1 += 1;
    }
    for (lease, (campaign, count)) in queued {
        let done = written.get(&lease).copied().unwrap_or(0);
        if done < count {
            tracing::warn!(campaign_id = %campaign, lease_token = %lease, lost = count - done,
                "outcomes not written: their lease had passed to another replica");
        }
    }
}
