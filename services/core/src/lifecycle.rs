//! The campaign state machine as one pure function.
//!
//! Every transition in Herald, whether it comes from the API, the scheduler or a
//! worker, is checked here (through `transitions::Lifecycle`), so no two callers can
//! disagree about what is legal.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Campaign status, as stored in `campaigns.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Scheduled,
    Sending,
    Paused,
    Stopped,
    Completed,
    Failed,
}

/// What a caller asks the lifecycle to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Schedule,
    Unschedule,
    Start,
    Pause,
    Resume,
    Stop,
    Complete,
    Fail,
    /// Re-open failed recipients (`POST /v1/campaigns/{id}/retry`): a paused
    /// campaign stays paused (resume sends them), a completed one sends again.
    Retry,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Draft,
        Status::Scheduled,
        Status::Sending,
        Status::Paused,
        Status::Stopped,
        Status::Completed,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Scheduled => "scheduled",
            Status::Sending => "sending",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    /// Stopped, completed and failed end a campaign's run. Stopped and failed
    /// are final; a completed campaign sends again only if a `retry` re-opens
    /// some of its failed recipients.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Stopped | Status::Completed | Status::Failed)
    }
}

impl Action {
    pub const ALL: [Action; 9] = [
        Action::Schedule,
        Action::Unschedule,
        Action::Start,
        Action::Pause,
        Action::Resume,
        Action::Stop,
        Action::Complete,
        Action::Fail,
        Action::Retry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Schedule => "schedule",
            Action::Unschedule => "unschedule",
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Stop => "stop",
            Action::Complete => "complete",
            Action::Fail => "fail",
            Action::Retry => "retry",
        }
    }

    /// The event type recorded in `campaign_events.type` for this action.
    pub fn event_type(self) -> &'static str {
        match self {
            Action::Schedule => "scheduled",
            Action::Unschedule => "unscheduled",
            Action::Start => "started",
            Action::Pause => "paused",
            Action::Resume => "resumed",
            Action::Stop => "stopped",
            Action::Complete => "completed",
            Action::Fail => "failed",
            Action::Retry => "retried",
        }
    }

    /// Start and resume open a new run epoch and trigger the packer, and so
    /// does a retry that makes a completed campaign send again (`to` is the
    /// status the action leads to). A retry on a paused campaign does not: the
    /// resume opens the epoch that packs the re-opened rows.
    pub fn opens_run_epoch(self, to: Status) -> bool {
        match self {
            Action::Start | Action::Resume => true,
            Action::Retry => to == Status::Sending,
            _ => false,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown campaign status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl FromStr for Action {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// An action that the current status does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a campaign that is {from}")]
pub struct InvalidTransition {
    pub from: Status,
    pub action: Action,
}

impl InvalidTransition {
    /// The status the caller asked for, for error bodies (`{"from":..,"to":..}`).
    pub fn requested(&self) -> &'static str {
        self.action.event_type()
    }
}

/// The transition table of docs/ARCHITECTURE.md, as a pure function.
pub fn next_status(from: Status, action: Action) -> Result<Status, InvalidTransition> {
    use Action as A;
    use Status as S;
    let to = match (from, action) {
        (S::Draft, A::Schedule) => S::Scheduled,
        (S::Scheduled, A::Unschedule) => S::Draft,
        (S::Draft | S::Scheduled, A::Start) => S::Sending,
        (S::Sending, A::Pause) => S::Paused,
        (S::Paused, A::Resume) => S::Sending,
        (S::Draft | S::Scheduled | S::Sending | S::Paused, A::Stop) => S::Stopped,
        (S::Sending, A::Complete) => S::Completed,
        (S::Sending | S::Paused, A::Fail) => S::Failed,
        (S::Paused, A::Retry) => S::Paused,
        (S::Completed, A::Retry) => S::Sending,
        _ => return Err(InvalidTransition { from, action }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// docs/ARCHITECTURE.md's table, written out edge by edge.
    fn design_edges() -> HashSet<(Status, Status)> {
        use Status::*;
        [
            (Draft, Scheduled),
            (Draft, Sending),
            (Scheduled, Draft),
            (Scheduled, Sending),
            (Sending, Paused),
            (Sending, Completed),
            (Paused, Sending),
            (Draft, Stopped),
            (Scheduled, Stopped),
            (Sending, Stopped),
            (Paused, Stopped),
            (Sending, Failed),
            (Paused, Failed),
            (Paused, Paused),
            (Completed, Sending),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn every_allowed_pair_is_an_edge_of_the_design_table() {
        let edges = design_edges();
        for from in Status::ALL {
            for action in Action::ALL {
                if let Ok(to) = next_status(from, action) {
                    assert!(
                        edges.contains(&(from, to)),
                        "{from} --{action}--> {to} is not in the table"
                    );
                }
            }
        }
    }

    #[test]
    fn every_edge_of_the_design_table_is_reachable_by_some_action() {
        for (from, to) in design_edges() {
            let reachable = Action::ALL
                .into_iter()
                .any(|a| next_status(from, a) == Ok(to));
            assert!(reachable, "{from} -> {to} cannot be reached");
        }
    }

    #[test]
    fn every_state_and_action_pair_has_the_expected_outcome() {
        use Action as A;
        use Status as S;
        let expected: &[(S, A, Option<S>)] = &[
            (S::Draft, A::Schedule, Some(S::Scheduled)),
            (S::Draft, A::Unschedule, None),
            (S::Draft, A::Start, Some(S::Sending)),
            (S::Draft, A::Pause, None),
            (S::Draft, A::Resume, None),
            (S::Draft, A::Stop, Some(S::Stopped)),
            (S::Draft, A::Complete, None),
            (S::Draft, A::Fail, None),
            (S::Draft, A::Retry, None),
            (S::Scheduled, A::Schedule, None),
            (S::Scheduled, A::Unschedule, Some(S::Draft)),
            (S::Scheduled, A::Start, Some(S::Sending)),
            (S::Scheduled, A::Pause, None),
            (S::Scheduled, A::Resume, None),
            (S::Scheduled, A::Stop, Some(S::Stopped)),
            (S::Scheduled, A::Complete, None),
            (S::Scheduled, A::Fail, None),
            (S::Scheduled, A::Retry, None),
            (S::Sending, A::Schedule, None),
            (S::Sending, A::Unschedule, None),
            (S::Sending, A::Start, None),
            (S::Sending, A::Pause, Some(S::Paused)),
            (S::Sending, A::Resume, None),
            (S::Sending, A::Stop, Some(S::Stopped)),
            (S::Sending, A::Complete, Some(S::Completed)),
            (S::Sending, A::Fail, Some(S::Failed)),
            (S::Sending, A::Retry, None),
            (S::Paused, A::Schedule, None),
            (S::Paused, A::Unschedule, None),
            (S::Paused, A::Start, None),
            (S::Paused, A::Pause, None),
            (S::Paused, A::Resume, Some(S::Sending)),
            (S::Paused, A::Stop, Some(S::Stopped)),
            (S::Paused, A::Complete, None),
            (S::Paused, A::Fail, Some(S::Failed)),
            (S::Paused, A::Retry, Some(S::Paused)),
            (S::Completed, A::Retry, Some(S::Sending)),
        ];
        for &(from, action, to) in expected {
            assert_eq!(next_status(from, action).ok(), to, "{from} + {action}");
        }
        // Stopped and failed accept nothing; completed accepts only a retry.
        let mut refused = 0;
        for from in [S::Stopped, S::Completed, S::Failed] {
            for action in A::ALL {
                if (from, action) == (S::Completed, A::Retry) {
                    continue;
                }
                assert!(
                    next_status(from, action).is_err(),
                    "{from} + {action} must be refused"
                );
                refused += 1;
            }
        }
        assert_eq!(expected.len() + refused, Status::ALL.len() * A::ALL.len());
    }

    #[test]
    fn only_a_retry_of_a_completed_campaign_opens_a_run_epoch_besides_start_and_resume() {
        for from in Status::ALL {
            for action in Action::ALL {
                let Ok(to) = next_status(from, action) else {
                    continue;
                };
                let expected = matches!(action, Action::Start | Action::Resume)
                    || (action == Action::Retry && from == Status::Completed);
                assert_eq!(action.opens_run_epoch(to), expected, "{from} + {action}");
            }
        }
    }

    #[test]
    fn status_names_round_trip_through_their_text_form() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        assert!("sending_testab".parse::<Status>().is_err());
    }
}
