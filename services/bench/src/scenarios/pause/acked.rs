//! The acknowledged pause's round trip: `POST …/pause?wait=applied` from request
//! to the response that lists every replica's ack, on the same in-process stack
//! and under the same load as the plain pauses of the fast-path run, which are
//! its baseline (request to response of the plain pause).
//!
//! After each plain pause (and its resume) the fast-path run makes one
//! acknowledged pause the same way: once the senders are busy again, after a
//! random part of the status TTL. Kept apart from the plain samples, so the
//! apply figures (measured after the plain response) are unchanged.

use std::time::{Duration, Instant};

use super::Runner;

/// What one acknowledged pause measured.
#[derive(Debug, Clone)]
pub(super) struct AckedSample {
    pub round_trip_ms: f64,
    /// Replicas listed as applied.
    pub acked: usize,
    /// Replicas listed as missing (should be none).
    pub missing: usize,
}

/// How long the api may wait for the replicas.
const ACK_TIMEOUT_MS: u64 = 2000;

impl Runner<'_> {
    /// One acknowledged pause and its resume; `None` when the campaign ran out.
    pub(super) async fn acked_iteration(&mut self) -> anyhow::Result<Option<AckedSample>> {
        let Some(id) = self.busy_at_random_phase().await? else {
            return Ok(None);
        };
        let client = &self.stack.client;
        let asked = Instant::now();
        let action = format!("pause?wait=applied&timeout_ms={ACK_TIMEOUT_MS}");
        let (status, body) = client.transition(id, &action).await?;
        let round_trip_ms = asked.elapsed().as_secs_f64() * 1000.0;
        if status != 200 {
            self.campaign = None;
            return Ok(None);
        }
        // The n-th pause counter of the apply figures counts this one too.
        *self.pauses.entry(id).or_default() += 1;
        let count = |key: &str| body["acks"][key].as_array().map_or(0, Vec::len);
        let sample = AckedSample {
            round_trip_ms,
            acked: count("replicas"),
            missing: count("missing"),
        };
        self.sink
            .wait_quiet(Duration::from_millis(250), Duration::from_secs(30))
            .await;
        let (status, body) = client.transition(id, "resume").await?;
        anyhow::ensure!(status == 200, "resume answered {status}: {body}");
        Ok(Some(sample))
    }
}
