//! Pull streams that heal themselves, for the work loop and the control listener.
//!
//! On a JetStream cluster a pull can go unanswered for reasons the client cannot
//! see coming: the node holding the consumer's leader dies (the pull dies with
//! it, and only the missing idle heartbeats tell), a consumer has no leader yet
//! right after it was created ("no responders"), or its leader moves. An
//! `async_nats` pull stream reports each as an error but keeps its outstanding
//! pull, so the next pull would only go out when the client's own expiry timer
//! fires (about 35 s). The loops here therefore drop the stream on any error and
//! open a new one on the same consumer after a 50-250 ms backoff: a subscription
//! and a pull, which the consumer's new leader answers as soon as there is one.
//! Only after 10 s of failures, or when the server says the consumer is gone, do
//! they look the consumer up (or recreate it) through the JetStream API, whose
//! requests can wait for the 5 s timeout during an election. [`PullHealth`]
//! keeps the logs to one warning per outage and one info line on recovery.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use tokio::time::Instant;

/// The server sends an idle heartbeat this often while a pull waits; two missed
/// ones end the stream. A dead consumer leader is noticed within 4 s, before
/// the servers have elected its successor (4-9 s); shorter would only add false
/// alarms when a busy process does not read its socket for a moment (each one
/// drops the messages buffered for the old pull until `ack_wait` redelivers them).
pub const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// How long one pull request lives on the server before the stream sends the
/// next (the client default is 30 s). Short, so a pull that a node holds but
/// will never serve (one that lost the consumer's leadership while the cluster
/// formed or failed over, and kept sending heartbeats) is replaced within 5 s.
pub const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// First wait before a failed pull stream is reopened; doubles up to
/// [`MAX_REOPEN_DELAY`]. Short: a pull to a consumer without a leader fails at
/// once ("no responders"), and the new leader should be used within a fraction
/// of a second of its election.
const FIRST_REOPEN_DELAY: Duration = Duration::from_millis(50);
const MAX_REOPEN_DELAY: Duration = Duration::from_millis(250);

/// While degraded this long, the consumer itself is looked up again (it may have
/// been deleted, or the stream recreated), and again after each such period. Not
/// sooner: a lookup during an election can wait for the JetStream timeout (5 s).
const LOOKUP_EVERY: Duration = Duration::from_secs(10);

/// Opens a pull stream on `consumer` with the short heartbeat and expiry. `batch` caps the
/// messages per pull (the default when `None`).
pub async fn open(consumer: &PullConsumer, batch: Option<usize>) -> anyhow::Result<pull::Stream> {
    let mut builder = consumer
        .stream()
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT);
    if let Some(batch) = batch {
        builder = builder.max_messages_per_batch(batch);
    }
    Ok(builder.messages().await?)
}

/// What a loop does after its pull stream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Open a new pull stream on the same consumer.
    Reopen,
    /// Look the consumer up (or recreate it) through the JetStream API first.
    Lookup,
}

/// The health of one pull consumer as its loop sees it, for logging and backoff.
#[derive(Debug)]
pub struct PullHealth {
    consumer: String,
    degraded_since: Option<Instant>,
    /// The start of the outage or the last lookup, whichever is later.
    looked_up_at: Instant,
    failures: u32,
    opened_at: Instant,
}

impl PullHealth {
    pub fn new(consumer: &str) -> Self {
        Self {
            consumer: consumer.to_owned(),
            degraded_since: None,
            looked_up_at: Instant::now(),
            failures: 0,
            opened_at: Instant::now(),
        }
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded_since.is_some()
    }

    /// Records a failure (of a pull or of the consumer lookup) and says how to
    /// recover. Warns on the first failure of an outage only.
    pub fn failed(
        &mut self,
        error: &dyn std::fmt::Display,
        kind: Option<MessagesErrorKind>,
    ) -> Recovery {
        self.failed_at(Instant::now(), error, kind)
    }

    fn failed_at(
        &mut self,
        now: Instant,
        error: &dyn std::fmt::Display,
        kind: Option<MessagesErrorKind>,
    ) -> Recovery {
        self.failures += 1;
        if self.degraded_since.is_none() {
            self.degraded_since = Some(now);
            self.looked_up_at = now;
            tracing::warn!(consumer = %self.consumer, %error,
                "pull consumer degraded; re-issuing pulls until it answers");
        } else {
            tracing::debug!(consumer = %self.consumer, %error, failures = self.failures, "pull still failing");
        }
        let gone = matches!(kind, Some(MessagesErrorKind::ConsumerDeleted));
        if gone || now.duration_since(self.looked_up_at) >= LOOKUP_EVERY {
            self.looked_up_at = now;
            Recovery::Lookup
        } else {
            Recovery::Reopen
        }
    }

    /// How long to wait before the next attempt.
    pub fn retry_delay(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(4);
        (FIRST_REOPEN_DELAY * 2u32.pow(doublings)).min(MAX_REOPEN_DELAY)
    }

    /// A new pull stream was opened.
    pub fn opened(&mut self) {
        self.opened_at = Instant::now();
    }

    /// While degraded: the moment a stream opened at [`PullHealth::opened`] has
    /// shown itself healthy, because a missed heartbeat would have ended it by then.
    pub fn proven_at(&self) -> Option<Instant> {
        self.degraded_since
            .map(|_| self.opened_at + PULL_HEARTBEAT * 3)
    }

    /// Proof of life (a message, or a stream that outlived [`PullHealth::proven_at`]):
    /// logs the recovery once.
    pub fn healthy(&mut self) {
        self.failures = 0;
        if let Some(since) = self.degraded_since.take() {
            tracing::info!(consumer = %self.consumer, degraded_ms = since.elapsed().as_millis() as u64,
                "pull consumer recovered");
        }
    }
}

/// How one pull stream of a loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    Shutdown,
    Failed(Recovery),
}

/// Waits `delay`, then for the client to be connected; false when shutdown
/// came first. While disconnected a new pull would only queue in the client
/// (with its subscription), and a long outage would fill the client's command
/// queue that every publish of the process shares.
pub(crate) async fn pause(
    client: &async_nats::Client,
    shutdown: &crate::CancellationToken,
    delay: Duration,
) -> bool {
    let mut wait = delay;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        if client.connection_state() == async_nats::connection::State::Connected {
            return true;
        }
        wait = MAX_REOPEN_DELAY;
    }
}

/// Sleeps until `at`, or forever when `None` (for an optional `select!` branch).
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_reopen_the_stream_and_every_ten_seconds_of_them_look_the_consumer_up() {
        let mut health = PullHealth::new("sender");
        let start = Instant::now();
        let kind = Some(MessagesErrorKind::NoResponders);
        let at = |ms: u64| start + Duration::from_millis(ms);
        let actions: Vec<Recovery> = [0, 250, 9_000, 10_000, 10_250, 19_999, 20_000]
            .into_iter()
            .map(|ms| health.failed_at(at(ms), &"no responders", kind))
            .collect();
        use Recovery::{Lookup, Reopen};
        assert_eq!(
            actions,
            [Reopen, Reopen, Reopen, Lookup, Reopen, Reopen, Lookup]
        );
    }

    #[test]
    fn a_deleted_consumer_is_looked_up_at_once() {
        let mut health = PullHealth::new("ctl_sender_a");
        assert_eq!(
            health.failed(
                &"consumer deleted",
                Some(MessagesErrorKind::ConsumerDeleted)
            ),
            Recovery::Lookup
        );
    }

    #[test]
    fn the_retry_delay_backs_off_to_a_quarter_second_and_resets_when_healthy() {
        let mut health = PullHealth::new("packer");
        let mut delays = Vec::new();
        for _ in 0..8 {
            health.failed(&"no responders", Some(MessagesErrorKind::NoResponders));
            delays.push(health.retry_delay());
        }
        assert_eq!(delays[0], FIRST_REOPEN_DELAY);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(delays.last(), Some(&MAX_REOPEN_DELAY));
        assert!(health.is_degraded());
        health.healthy();
        assert!(!health.is_degraded());
        assert_eq!(health.proven_at(), None);
        health.failed(&"no responders", None);
        assert_eq!(health.retry_delay(), FIRST_REOPEN_DELAY);
    }
}
