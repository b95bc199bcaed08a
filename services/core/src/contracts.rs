//! Bus message contracts. `schemas/*.json` is the single definition; these types
//! mirror it, and both producers (`encode`) and consumers (`decode`) validate every
//! message against the schema with `jsonschema`.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::lifecycle::Status;

/// A message type with a JSON Schema of its own.
pub trait Contract: Serialize + DeserializeOwned {
    /// The schema's file name under `schemas/`.
    const SCHEMA_NAME: &'static str;
    fn validator() -> &'static jsonschema::Validator;
    /// The campaign the message is about, for log context.
    fn campaign(&self) -> Option<Uuid> {
        None
    }
    /// The producer's correlation id, for log context.
    fn correlation(&self) -> Option<Uuid> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("payload violates {schema}: {detail}")]
    SchemaViolation {
        schema: &'static str,
        detail: String,
    },
}

pub(crate) fn compile(schema_text: &str) -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(schema_text)
        .expect("schemas/*.json are valid JSON (checked by tests)");
    jsonschema::draft202012::new(&schema).expect("schemas/*.json compile (checked by tests)")
}

fn check<T: Contract>(value: &serde_json::Value) -> Result<(), ContractError> {
    let errors: Vec<String> = T::validator()
        .iter_errors(value)
        .take(3)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        let mut detail = errors.join("; ");
        detail.truncate(1000);
        Err(ContractError::SchemaViolation {
            schema: T::SCHEMA_NAME,
            detail,
        })
    }
}

/// Serialises and validates a message before it goes on the bus.
pub fn encode<T: Contract>(message: &T) -> Result<Bytes, ContractError> {
    let value = serde_json::to_value(message).map_err(|e| ContractError::NotJson(e.to_string()))?;
    check::<T>(&value)?;
    Ok(Bytes::from(
        serde_json::to_vec(&value).map_err(|e| ContractError::NotJson(e.to_string()))?,
    ))
}

/// Parses and validates a message taken from the bus.
pub fn decode<T: Contract>(payload: &[u8]) -> Result<T, ContractError> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| ContractError::NotJson(e.to_string()))?;
    check::<T>(&value)?;
    serde_json::from_value(value).map_err(|e| ContractError::SchemaViolation {
        schema: T::SCHEMA_NAME,
        detail: e.to_string(),
    })
}

macro_rules! contract {
    ($ty:ty, $file:literal) => {
        contract!($ty, $file, {});
    };
    ($ty:ty, $file:literal, campaign) => {
        contract!($ty, $file, {
            fn campaign(&self) -> Option<uuid::Uuid> {
                Some(self.campaign_id)
            }
            fn correlation(&self) -> Option<uuid::Uuid> {
                Some(self.correlation_id)
            }
        });
    };
    ($ty:ty, $file:literal, { $($extra:item)* }) => {
        impl $crate::contracts::Contract for $ty {
            $($extra)*
            const SCHEMA_NAME: &'static str = $file;
            fn validator() -> &'static jsonschema::Validator {
                static VALIDATOR: std::sync::LazyLock<jsonschema::Validator> =
                    std::sync::LazyLock::new(|| {
                        $crate::contracts::compile(include_str!(concat!("../../../schemas/", $file)))
                    });
                &VALIDATOR
            }
        }
    };
}

/// Lets other modules of the crate declare contracts (`crate::presence`).
pub(crate) use contract;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    Pause,
    Resume,
    Stop,
}

/// `campaigns.control.<campaignId>`: a hint; receivers re-read Postgres.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlMessage {
    pub campaign_id: Uuid,
    pub action: ControlAction,
    pub correlation_id: Uuid,
}
contract!(ControlMessage, "campaigns.control.json", campaign);

/// `campaigns.events.<campaignId>`: one committed lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LifecycleEvent {
    pub event_id: Uuid,
    pub campaign_id: Uuid,
    pub seq: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub from_status: Option<Status>,
    pub status: Status,
    pub version: i64,
    pub run_epoch: i32,
    pub actor: String,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Uuid,
}
contract!(LifecycleEvent, "campaigns.events.json", campaign);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggeredBy {
    Manual,
    Schedule,
    Resume,
    Recurrence,
    /// A sender finished a batch: pack the next one (windowed packing).
    BatchDone,
    /// The packer's sweep found a campaign whose packing stalled.
    Sweep,
    /// An A/B test was decided: pack the rest of the list with the winner.
    AbDecision,
    /// A retry re-opened failed recipients of a completed campaign.
    Retry,
}

/// `campaigns.pack`: page this run epoch's open recipients into send batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackRequest {
    pub campaign_id: Uuid,
    pub run_epoch: i32,
    pub triggered_at: DateTime<Utc>,
    pub triggered_by: TriggeredBy,
    pub correlation_id: Uuid,
    /// How many more batches to pack now; absent: the packer's whole window
    /// (`HERALD_PACK_WINDOW`). A sender asks for one each time it finishes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches: Option<u32>,
}
contract!(PackRequest, "campaigns.pack.json", campaign);

/// `campaigns.send`: one batch, as an inclusive recipient id range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendBatch {
    pub campaign_id: Uuid,
    pub run_epoch: i32,
    pub first_recipient_id: i64,
    pub last_recipient_id: i64,
    pub recipient_count: i64,
    pub correlation_id: Uuid,
}
contract!(SendBatch, "campaigns.send.json", campaign);

impl SendBatch {
    /// Deterministic `Nats-Msg-Id`: a redelivered pack message publishes nothing twice.
    pub fn message_id(&self) -> String {
        format!(
            "send-{}-{}-{}",
            self.campaign_id, self.run_epoch, self.first_recipient_id
        )
    }
}

/// `campaigns.tracked.<campaignId>`: the outcome of one batch on one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchTracked {
    pub campaign_id: Uuid,
    pub run_epoch: i32,
    pub first_recipient_id: i64,
    pub last_recipient_id: i64,
    pub claimed_count: i64,
    pub sent_count: i64,
    pub failed_count: i64,
    pub released_count: i64,
    pub replica_id: String,
    pub correlation_id: Uuid,
}
contract!(BatchTracked, "campaigns.tracked.json", campaign);

/// `campaigns.tracked.<campaignId>` with `"kind": "receipts"`: what one batch
/// of delivery receipts changed in the campaign's funnel (docs/RECEIPTS.md).
/// Batch outcomes ([`BatchTracked`]) carry no `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiptsTracked {
    /// Always `receipts`.
    pub kind: String,
    pub campaign_id: Uuid,
    /// Messages newly delivered (a read without a delivered receipt counts too).
    pub delivered_count: i64,
    pub read_count: i64,
    pub bounced_count: i64,
    pub opted_out_count: i64,
    pub correlation_id: Uuid,
}
contract!(ReceiptsTracked, "campaigns.tracked.receipts.json", campaign);

impl ReceiptsTracked {
    pub fn new(campaign_id: Uuid, funnel: &crate::receipts::FunnelDelta) -> Self {
        Self {
            kind: "receipts".to_owned(),
            campaign_id,
            delivered_count: funnel.delivered,
            read_count: funnel.read,
            bounced_count: funnel.bounced,
            opted_out_count: funnel.opted_out,
            correlation_id: Uuid::new_v4(),
        }
    }
}

/// `campaigns.dlq.<originalSubject>`: a message that was terminated, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetter {
    pub original_subject: String,
    pub reason: String,
    pub consumer: String,
    pub replica_id: String,
    pub stream_sequence: Option<u64>,
    pub delivered_count: Option<i64>,
    pub payload_base64: String,
    pub payload_bytes: u64,
    pub payload_truncated: bool,
    pub dead_lettered_at: DateTime<Utc>,
    pub correlation_id: Uuid,
}
contract!(DeadLetter, "campaigns.dlq.json");

/// How much of a bad payload a dead letter keeps.
pub const DEAD_LETTER_PAYLOAD_LIMIT: usize = 64 * 1024;

impl DeadLetter {
    pub fn new(
        original_subject: &str,
        reason: &str,
        consumer: &str,
        replica_id: &str,
        payload: &[u8],
    ) -> Self {
        use base64::Engine;
        let kept = &payload[..payload.len().min(DEAD_LETTER_PAYLOAD_LIMIT)];
        let mut reason = reason.to_owned();
        if reason.len() > 4000 {
            let mut cut = 4000;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Self {
            original_subject: original_subject.to_owned(),
            reason,
            consumer: consumer.to_owned(),
            replica_id: replica_id.to_owned(),
            stream_sequence: None,
            delivered_count: None,
            payload_base64: base64::engine::general_purpose::STANDARD.encode(kept),
            payload_bytes: payload.len() as u64,
            payload_truncated: kept.len() < payload.len(),
            dead_lettered_at: Utc::now(),
            correlation_id: Uuid::new_v4(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample_control() -> ControlMessage {
        ControlMessage {
            campaign_id: Uuid::new_v4(),
            action: ControlAction::Pause,
            correlation_id: Uuid::new_v4(),
        }
    }

    #[test]
    fn every_contract_type_serialises_to_a_schema_valid_document() {
        let id = Uuid::new_v4();
        encode(&sample_control()).unwrap();
        encode(&LifecycleEvent {
            event_id: Uuid::new_v4(),
            campaign_id: id,
            seq: 1,
            event_type: "paused".into(),
            from_status: Some(Status::Sending),
            status: Status::Paused,
            version: 2,
            run_epoch: 1,
            actor: "tenant:acme".into(),
            occurred_at: Utc::now(),
            correlation_id: Uuid::new_v4(),
        })
        .unwrap();
        encode(&PackRequest {
            campaign_id: id,
            run_epoch: 1,
            triggered_at: Utc::now(),
            triggered_by: TriggeredBy::Manual,
            correlation_id: Uuid::new_v4(),
            batches: None,
        })
        .unwrap();
        encode(&SendBatch {
            campaign_id: id,
            run_epoch: 1,
            first_recipient_id: 1,
            last_recipient_id: 500,
            recipient_count: 500,
            correlation_id: Uuid::new_v4(),
        })
        .unwrap();
        encode(&BatchTracked {
            campaign_id: id,
            run_epoch: 1,
            first_recipient_id: 1,
            last_recipient_id: 500,
            claimed_count: 500,
            sent_count: 499,
            failed_count: 1,
            released_count: 0,
            replica_id: "sender-1".into(),
            correlation_id: Uuid::new_v4(),
        })
        .unwrap();
        encode(&DeadLetter::new(
            "campaigns.send",
            "not JSON",
            "sender",
            "sender-1",
            &[0xff; 100_000],
        ))
        .unwrap();
    }

    #[test]
    fn control_schema_rejects_a_correlation_id_that_is_not_uuid_v4() {
        let campaign = Uuid::new_v4();
        for bad in ["abc-123", "00000000-0000-1000-8000-000000000000", ""] {
            let doc = json!({"campaignId": campaign, "action": "pause", "correlationId": bad});
            assert!(
                decode::<ControlMessage>(doc.to_string().as_bytes()).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn control_schema_rejects_unknown_actions_and_extra_fields() {
        let campaign = Uuid::new_v4();
        let v4 = Uuid::new_v4();
        let unknown = json!({"campaignId": campaign, "action": "explode", "correlationId": v4});
        assert!(decode::<ControlMessage>(unknown.to_string().as_bytes()).is_err());
        let extra = json!({"campaignId": campaign, "action": "stop", "correlationId": v4, "requestId": "abc-123"});
        assert!(decode::<ControlMessage>(extra.to_string().as_bytes()).is_err());
        let fine = json!({"campaignId": campaign, "action": "stop", "correlationId": v4});
        assert_eq!(
            decode::<ControlMessage>(fine.to_string().as_bytes())
                .unwrap()
                .action,
            ControlAction::Stop
        );
    }

    #[test]
    fn truncated_and_wrongly_typed_payloads_are_refused() {
        assert!(matches!(
            decode::<SendBatch>(b"{\"campaignId\":"),
            Err(ContractError::NotJson(_))
        ));
        let wrong = json!({"campaignId": Uuid::new_v4(), "runEpoch": "1", "firstRecipientId": 1,
            "lastRecipientId": 2, "recipientCount": 2, "correlationId": Uuid::new_v4()});
        assert!(matches!(
            decode::<SendBatch>(wrong.to_string().as_bytes()),
            Err(ContractError::SchemaViolation { .. })
        ));
        let pack = json!({"campaignId": Uuid::new_v4(), "runEpoch": 1, "triggeredAt": "2026-01-01T00:00:00Z",
            "triggeredBy": "cron", "correlationId": Uuid::new_v4()});
        assert!(decode::<PackRequest>(pack.to_string().as_bytes()).is_err());
    }

    #[test]
    fn producers_refuse_to_emit_what_consumers_would_reject() {
        // A nil correlation id is not v4: encode must fail rather than publish it.
        let mut msg = sample_control();
        msg.correlation_id = Uuid::nil();
        assert!(encode(&msg).is_err());
    }
}
