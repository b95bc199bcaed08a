//! Delivery receipts: what a provider reports about a message after accepting
//! it (delivered, read, failed, opted out), and how a message's state moves.
//!
//! - [`formats`] reads the bodies providers send: Herald's own and Evolution
//!   API's `messages.update` webhook.
//! - [`store`] applies a batch of receipts to the ledger in one transaction.
//!
//! A message's state only moves forward: `sent -> delivered -> read`, or
//! `sent -> bounced` (a `failed` receipt for a message not yet delivered).
//! Receipts that would move it back (a `delivered` after `read`), duplicates
//! and a `failed` after `delivered` change nothing, so redelivered or reordered
//! webhooks never count twice. A `read` for a message still `sent` counts it
//! delivered too: a read message was delivered.

use chrono::{DateTime, Utc};

pub mod formats;
pub mod store;

/// What one receipt reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptStatus {
    Delivered,
    Read,
    /// The provider gave up on a message it had accepted (a bounce).
    Failed,
    /// The recipient asked for no more messages: their address joins the
    /// tenant's suppression list. Does not change the message's state.
    OptedOut,
}

impl ReceiptStatus {
    /// Herald's own names: `delivered`, `read`, `failed`, `opted_out`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "failed" => Self::Failed,
            "opted_out" => Self::OptedOut,
            _ => return None,
        })
    }
}

/// One receipt for one message of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The id the provider answered the send request with.
    pub provider_message_id: String,
    pub status: ReceiptStatus,
    /// When it happened, as the provider says; None: when it arrived.
    pub at: Option<DateTime<Utc>>,
    /// The provider's words for a failure or opt-out, kept as `last_error` or
    /// the suppression's reason.
    pub reason: Option<String>,
}

/// How far one accepted message got (`provider_messages.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MessageState {
    Sent,
    Delivered,
    Read,
    Bounced,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Bounced => "bounced",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "bounced" => Self::Bounced,
            _ => return None,
        })
    }

    /// The state after `receipt`, or None when the receipt changes nothing
    /// (a duplicate, a step back, a bounce after delivery, an opt-out).
    pub fn advance(self, receipt: ReceiptStatus) -> Option<Self> {
        use MessageState::*;
        match (self, receipt) {
            (Sent, ReceiptStatus::Delivered) => Some(Delivered),
            (Sent | Delivered, ReceiptStatus::Read) => Some(Read),
            (Sent, ReceiptStatus::Failed) => Some(Bounced),
            _ => None,
        }
    }
}

/// Changes to a campaign's delivery funnel, summed over receipts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunnelDelta {
    /// Messages newly delivered (or read without a delivered receipt first).
    pub delivered: i64,
    pub read: i64,
    pub bounced: i64,
    /// Opt-out receipts matched to a message of the campaign.
    pub opted_out: i64,
}

impl FunnelDelta {
    /// The funnel change of one move from `before` to `after`.
    pub fn of_move(before: MessageState, after: MessageState) -> Self {
        let reached = |state: MessageState| before < state && after >= state;
        Self {
            delivered: i64::from(
                after != MessageState::Bounced && reached(MessageState::Delivered),
            ),
            read: i64::from(after == MessageState::Read && before != MessageState::Read),
            bounced: i64::from(after == MessageState::Bounced && before != after),
            opted_out: 0,
        }
    }

    pub fn add(&mut self, other: Self) {
        self.delivered += other.delivered;
        self.read += other.read;
        self.bounced += other.bounced;
        self.opted_out += other.opted_out;
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::MessageState::*;
    use super::*;

    #[test]
    fn states_move_forward_only() {
        assert_eq!(Sent.advance(ReceiptStatus::Delivered), Some(Delivered));
        assert_eq!(Delivered.advance(ReceiptStatus::Read), Some(Read));
        assert_eq!(Sent.advance(ReceiptStatus::Read), Some(Read));
        assert_eq!(Read.advance(ReceiptStatus::Delivered), None);
        assert_eq!(Delivered.advance(ReceiptStatus::Delivered), None);
        assert_eq!(Read.advance(ReceiptStatus::Read), None);
    }

    #[test]
    fn a_failure_bounces_only_a_message_not_yet_delivered() {
        assert_eq!(Sent.advance(ReceiptStatus::Failed), Some(Bounced));
        assert_eq!(Delivered.advance(ReceiptStatus::Failed), None);
        assert_eq!(Read.advance(ReceiptStatus::Failed), None);
        assert_eq!(Bounced.advance(ReceiptStatus::Delivered), None);
        assert_eq!(Bounced.advance(ReceiptStatus::Read), None);
    }

    #[test]
    fn opt_outs_leave_the_state_alone() {
        for state in [Sent, Delivered, Read, Bounced] {
            assert_eq!(state.advance(ReceiptStatus::OptedOut), None);
        }
    }

    #[test]
    fn a_read_before_delivered_counts_the_message_delivered_and_read_once() {
        let mut funnel = FunnelDelta::of_move(Sent, Read);
        assert_eq!((funnel.delivered, funnel.read), (1, 1));
        // The late `delivered` receipt moves nothing, so adds nothing.
        assert_eq!(Read.advance(ReceiptStatus::Delivered), None);
        funnel.add(FunnelDelta::of_move(Delivered, Read));
        assert_eq!((funnel.delivered, funnel.read), (1, 2));
        assert_eq!(FunnelDelta::of_move(Sent, Bounced).bounced, 1);
        assert_eq!(FunnelDelta::of_move(Sent, Bounced).delivered, 0);
    }

    #[test]
    fn state_names_round_trip() {
        for state in [Sent, Delivered, Read, Bounced] {
            assert_eq!(MessageState::parse(state.as_str()), Some(state));
        }
        assert_eq!(
            ReceiptStatus::parse("opted_out"),
            Some(ReceiptStatus::OptedOut)
        );
        assert_eq!(ReceiptStatus::parse("DELIVERED"), None);
    }
}
