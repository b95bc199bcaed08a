//! The acknowledged pause and stop: `?wait=applied|drained&timeout_ms=N` on
//! `POST /v1/campaigns/{id}/pause` (and `stop`).
//!
//! Order matters. The api snapshots the live replicas (`crate::replicas`) and
//! subscribes to `campaigns.acks.<id>` *before* it commits the transition, so no
//! ack can arrive unheard; it then keeps only the acks that name the committed
//! event's `correlationId` (which the control message carries), so an ack of an
//! earlier pause never counts. It collects until every replica of the snapshot
//! has acked (`applied`), or has acked with nothing in flight (`drained`), or
//! the timeout passes. The answer is 200 either way, because the transition has
//! committed: whoever did not answer is listed under `missing` with a reason.
//!
//! A replica whose control fast path is off never acks: it is listed as missing
//! at once (`control_fast_path_off`) and not waited for. An ack from a replica
//! that started after the snapshot is listed but not waited for.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use herald_core::bus::Bus;
use herald_core::contracts;
use herald_core::lifecycle::Action;
use herald_core::presence::ControlAck;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::replicas::Seen;

/// The timeout when `timeout_ms` is absent.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// The longest wait a caller may ask for.
pub const MAX_TIMEOUT_MS: u64 = 30_000;

/// What to wait for after the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitFor {
    /// Every live replica has applied the control message.
    Applied,
    /// ...and none has a request of the campaign in flight.
    Drained,
}

/// The query of a transition.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// pause and stop only: answer once every live replica has `applied` the
    /// transition, or also `drained` its requests in flight.
    #[param(value_type = Option<WaitFor>)]
    pub wait: Option<String>,
    /// How long to wait for the replicas, 1 to 30000 (default 2000); needs `wait`.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 30000)]
    pub timeout_ms: Option<String>,
}

/// A validated wait.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub mode: WaitFor,
    pub timeout: Duration,
}

impl WaitQuery {
    /// `None` when nothing is asked; 422 for a bad value or an action without acks.
    pub fn parse(&self, action: Action) -> ApiResult<Option<Wait>> {
        let Some(wait) = self.wait.as_deref() else {
            if self.timeout_ms.is_some() {
                return Err(ApiError::validation("timeout_ms needs wait"));
            }
            return Ok(None);
        };
        let mode = match wait {
            "applied" => WaitFor::Applied,
            "drained" => WaitFor::Drained,
            _ => return Err(ApiError::validation("wait must be applied or drained")),
        };
        if !matches!(action, Action::Pause | Action::Stop) {
            return Err(ApiError::validation("wait applies to pause and stop only"));
        }
        let timeout_ms = match self.timeout_ms.as_deref() {
            None => DEFAULT_TIMEOUT_MS,
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
                .ok_or_else(|| {
                    ApiError::validation(format!(
                        "timeout_ms must be an integer from 1 to {MAX_TIMEOUT_MS}"
                    ))
                })?,
        };
        Ok(Some(Wait {
            mode,
            timeout: Duration::from_millis(timeout_ms),
        }))
    }
}

/// One replica that acked.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AckedReplica {
    pub replica_id: String,
    /// `packer` or `sender`.
    pub service: String,
    /// When the replica had applied the transition.
    pub applied_at: DateTime<Utc>,
    /// Its requests of the campaign still awaiting the provider, as of its last ack.
    pub in_flight: u64,
}

/// One replica the wait did not hear enough from.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MissingReplica {
    pub replica_id: String,
    pub service: String,
    /// `no_ack` (no answer within the timeout), `in_flight` (`drained`: acked,
    /// but requests were still in flight at the timeout) or
    /// `control_fast_path_off` (the replica never acks).
    pub reason: String,
}

/// `acks` on an acknowledged transition's answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Acks {
    pub wait: WaitFor,
    pub timeout_ms: u64,
    /// How long the api waited after the commit, in ms.
    pub waited_ms: u64,
    /// True when `missing` is empty.
    pub complete: bool,
    pub replicas: Vec<AckedReplica>,
    pub missing: Vec<MissingReplica>,
}

/// Subscribed before the commit; see the module docs.
#[derive(Debug)]
pub struct AckWait {
    wait: Wait,
    expected: Vec<Seen>,
    subscription: Option<async_nats::Subscriber>,
}

impl AckWait {
    /// Snapshots `live` and subscribes to the campaign's acks. A failed
    /// subscription is not an error: every replica is then reported missing.
    pub async fn subscribe(bus: &Bus, campaign: Uuid, wait: Wait, live: Vec<Seen>) -> Self {
        let subscription = bus
            .client
            .subscribe(bus.subjects.acks(campaign))
            .await
            .inspect_err(|error| tracing::warn!(%campaign, %error, "ack subscription failed"))
            .ok();
        Self {
            wait,
            expected: live,
            subscription,
        }
    }

    /// Collects the acks of the control message `correlation` until every
    /// expected replica is done or the timeout passes.
    pub async fn collect(mut self, correlation: Uuid) -> Acks {
        let started = Instant::now();
        let deadline = started + self.wait.timeout;
        let mut acked: HashMap<(String, String), AckedReplica> = HashMap::new();
        if let Some(mut subscription) = self.subscription.take() {
            while !self.satisfied(&acked) {
                let next = tokio::time::timeout_at(deadline, subscription.next()).await;
                let Ok(Some(message)) = next else { break };
                match contracts::decode::<ControlAck>(&message.payload) {
                    Ok(ack) if ack.control_correlation_id == correlation => record(&mut acked, ack),
                    Ok(_) => {}
                    Err(error) => tracing::debug!(%error, "bad control ack ignored"),
                }
            }
        }
        self.answer(acked, started.elapsed())
    }

    fn done(&self, seen: &Seen, acked: &HashMap<(String, String), AckedReplica>) -> bool {
        let key = (seen.beat.service.clone(), seen.beat.replica_id.clone());
        acked
            .get(&key)
            .is_some_and(|ack| self.wait.mode == WaitFor::Applied || ack.in_flight == 0)
    }

    fn satisfied(&self, acked: &HashMap<(String, String), AckedReplica>) -> bool {
        self.expected
            .iter()
            .filter(|seen| seen.beat.control_fast_path)
            .all(|seen| self.done(seen, acked))
    }

    fn answer(&self, acked: HashMap<(String, String), AckedReplica>, waited: Duration) -> Acks {
        let missing: Vec<MissingReplica> = self
            .expected
            .iter()
            .filter(|seen| !seen.beat.control_fast_path || !self.done(seen, &acked))
            .map(|seen| {
                let key = (seen.beat.service.clone(), seen.beat.replica_id.clone());
                let reason = if !seen.beat.control_fast_path {
                    "control_fast_path_off"
                } else if acked.contains_key(&key) {
                    "in_flight"
                } else {
                    "no_ack"
                };
                MissingReplica {
                    replica_id: seen.beat.replica_id.clone(),
                    service: seen.beat.service.clone(),
                    reason: reason.into(),
                }
            })
            .collect();
        let mut replicas: Vec<AckedReplica> = acked.into_values().collect();
        replicas.sort_by(|a, b| (&a.service, &a.replica_id).cmp(&(&b.service, &b.replica_id)));
        Acks {
            wait: self.wait.mode,
            timeout_ms: self.wait.timeout.as_millis() as u64,
            waited_ms: waited.as_millis() as u64,
            complete: missing.is_empty(),
            replicas,
            missing,
        }
    }
}

/// Keeps the first `applied_at` of a replica and the `in_flight` of its latest
/// ack (a replica publishes its acks in order on one connection).
fn record(acked: &mut HashMap<(String, String), AckedReplica>, ack: ControlAck) {
    let key = (ack.service.clone(), ack.replica_id.clone());
    acked
        .entry(key)
        .and_modify(|known| known.in_flight = ack.in_flight)
        .or_insert(AckedReplica {
            replica_id: ack.replica_id,
            service: ack.service,
            applied_at: ack.applied_at,
            in_flight: ack.in_flight,
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(wait: Option<&str>, timeout: Option<&str>) -> WaitQuery {
        WaitQuery {
            wait: wait.map(Into::into),
            timeout_ms: timeout.map(Into::into),
        }
    }

    #[test]
    fn a_wait_is_validated_before_anything_commits() {
        assert!(query(None, None).parse(Action::Pause).unwrap().is_none());
        let wait = query(Some("drained"), Some("30000"))
            .parse(Action::Stop)
            .unwrap()
            .unwrap();
        assert_eq!(wait.mode, WaitFor::Drained);
        assert_eq!(wait.timeout, Duration::from_secs(30));
        let default = query(Some("applied"), None).parse(Action::Pause).unwrap();
        assert_eq!(default.unwrap().timeout, Duration::from_millis(2000));
        for (wait, timeout, action) in [
            (Some("soon"), None, Action::Pause),
            (Some("applied"), Some("0"), Action::Pause),
            (Some("applied"), Some("30001"), Action::Pause),
            (Some("applied"), Some("-5"), Action::Pause),
            (Some("applied"), Some("1.5"), Action::Pause),
            (None, Some("100"), Action::Pause),
            (Some("applied"), None, Action::Resume),
            (Some("applied"), None, Action::Start),
        ] {
            let error = query(wait, timeout).parse(action).unwrap_err();
            assert_eq!(error.status, 422, "{wait:?} {timeout:?} {action:?}");
        }
    }
}
