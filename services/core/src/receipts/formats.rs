//! The receipt bodies Herald reads, told apart by their shape.
//!
//! **Herald's own:** `{"receipts": [{"provider_message_id": "...", "status":
//! "delivered" | "read" | "failed" | "opted_out", "at": "<RFC 3339>", "reason":
//! "..."}]}`; `at` and `reason` are optional.
//!
//! **Evolution API's `messages.update` webhook**, as its webhook controller sends
//! every event: `{"event": "messages.update", "instance": "...", "data": {...},
//! "date_time": "<ISO 8601>", "sender", "server_url", "apikey"}`. `data` names the
//! message by `keyId` (Evolution 2.x, `whatsapp.baileys.service.ts` and the Meta
//! business service) or by `id` (1.8, where `data` spreads the message key and
//! carries `datetime` in epoch milliseconds). The envelope's `date_time` is not
//! used: Evolution writes the server's local time with a `Z`
//! (`channel.service.ts`), so outside UTC it is off by the zone's offset; a
//! receipt without `datetime` is timed by its arrival. `status` is one of Baileys'
//! `ERROR`, `PENDING`, `SERVER_ACK`, `DELIVERY_ACK`, `READ`, `PLAYED`
//! (`src/utils/renderStatus.ts`), or the Cloud API's upper-cased `SENT`,
//! `DELIVERED`, `READ`, `FAILED`. `DELIVERY_ACK`/`DELIVERED` mean delivered,
//! `READ`/`PLAYED` mean read, `ERROR`/`FAILED` mean failed; the rest say nothing
//! a campaign counts and are ignored, as are other events (an instance set to
//! send every event to this URL is not an error). Sources: the evolution-api
//! repository at tag 2.3.6 and 1.8.2.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Receipt, ReceiptStatus};

/// Most receipts one request may carry (a larger body is a 422: split it).
pub const MAX_RECEIPTS_PER_REQUEST: usize = 10_000;

/// Longest provider message id Herald keeps, in bytes.
pub const MAX_MESSAGE_ID_BYTES: usize = 256;

/// What one body held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedReceipts {
    pub receipts: Vec<Receipt>,
    /// Entries that report nothing Herald counts (an Evolution `SERVER_ACK`, a
    /// `connection.update` event, a message that was not sent by this number).
    pub ignored: usize,
}

/// Why a body is not a receipt body; the text is for the caller (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

fn invalid(text: impl Into<String>) -> FormatError {
    FormatError(text.into())
}

/// Reads a receipt body in either format.
///
/// Errors: a body that is neither format, or a Herald entry with a missing or
/// unknown field value, or more than [`MAX_RECEIPTS_PER_REQUEST`] entries.
pub fn parse_receipts(body: &Value) -> Result<ParsedReceipts, FormatError> {
    let Some(object) = body.as_object() else {
        return Err(invalid("the body must be a JSON object"));
    };
    if let Some(entries) = object.get("receipts") {
        parse_herald(entries)
    } else if object.contains_key("event") {
        parse_evolution(body)
    } else {
        Err(invalid(
            "unknown receipt format: expected Herald's {\"receipts\": [...]} or an Evolution API webhook ({\"event\", \"data\"})",
        ))
    }
}

fn parse_herald(entries: &Value) -> Result<ParsedReceipts, FormatError> {
    let Some(entries) = entries.as_array() else {
        return Err(invalid("`receipts` must be an array"));
    };
    if entries.len() > MAX_RECEIPTS_PER_REQUEST {
        return Err(invalid(format!(
            "at most {MAX_RECEIPTS_PER_REQUEST} receipts per request; got {}",
            entries.len()
        )));
    }
    let receipts = entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            herald_entry(entry).map_err(|e| invalid(format!("receipts[{index}]: {}", e.0)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParsedReceipts {
        receipts,
        ignored: 0,
    })
}

fn herald_entry(entry: &Value) -> Result<Receipt, FormatError> {
    let id = message_id(entry.get("provider_message_id"))
        .ok_or_else(|| invalid("`provider_message_id` must be a non-empty string"))?;
    let status = entry
        .get("status")
        .and_then(Value::as_str)
        .and_then(ReceiptStatus::parse)
        .ok_or_else(|| invalid("`status` must be one of delivered, read, failed, opted_out"))?;
    let at = match entry.get("at") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            DateTime::parse_from_rfc3339(text)
                .map_err(|_| invalid("`at` must be an RFC 3339 time with an offset"))?
                .with_timezone(&Utc),
        ),
        Some(_) => return Err(invalid("`at` must be an RFC 3339 string")),
    };
    let reason = match entry.get("reason") {
        None | Some(Value::Null) => None,
        // Control characters (a NUL above all, which Postgres refuses in text)
        // are dropped: the reason is for people.
        Some(Value::String(text)) => {
            Some(text.chars().filter(|c| !c.is_control()).take(500).collect())
        }
        Some(_) => return Err(invalid("`reason` must be a string")),
    };
    Ok(Receipt {
        provider_message_id: id,
        status,
        at,
        reason,
    })
}

fn message_id(value: Option<&Value>) -> Option<String> {
    let id = value?.as_str()?.trim();
    (!id.is_empty() && id.len() <= MAX_MESSAGE_ID_BYTES && !id.chars().any(char::is_control))
        .then(|| id.to_owned())
}

/// `messages.update`, `MESSAGES_UPDATE` and `messages-update` are one event.
fn is_message_update(event: &str) -> bool {
    event
        .replace(['.', '-'], "_")
        .eq_ignore_ascii_case("messages_update")
}

fn parse_evolution(body: &Value) -> Result<ParsedReceipts, FormatError> {
    let event = body
        .get("event")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("`event` must be a string"))?;
    let data = body.get("data").unwrap_or(&Value::Null);
    let entries: Vec<&Value> = match data {
        Value::Array(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    };
    if !is_message_update(event) {
        return Ok(ParsedReceipts {
            receipts: Vec::new(),
            ignored: entries.len().max(1),
        });
    }
    let mut parsed = ParsedReceipts::default();
    for entry in entries {
        match evolution_entry(entry) {
            Some(receipt) => parsed.receipts.push(receipt),
            None => parsed.ignored += 1,
        }
    }
    Ok(parsed)
}

fn evolution_entry(data: &Value) -> Option<Receipt> {
    // Only our own messages have receipts; `fromMe: false` is an incoming one.
    if data.get("fromMe").and_then(Value::as_bool) == Some(false) {
        return None;
    }
    let id = message_id(data.get("keyId")).or_else(|| message_id(data.get("id")))?;
    let status = match data.get("status").and_then(Value::as_str)? {
        "DELIVERY_ACK" | "DELIVERED" => ReceiptStatus::Delivered,
        "READ" | "PLAYED" => ReceiptStatus::Read,
        "ERROR" | "FAILED" => ReceiptStatus::Failed,
        _ => return None,
    };
    let at = data
        .get("datetime")
        .and_then(Value::as_i64)
        .and_then(DateTime::<Utc>::from_timestamp_millis);
    let reason = (status == ReceiptStatus::Failed).then(|| "provider reported ERROR".to_owned());
    Some(Receipt {
        provider_message_id: id,
        status,
        at,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn herald_bodies_are_read_with_optional_time_and_reason() {
        let parsed = parse_receipts(&json!({"receipts": [
            {"provider_message_id": "m1", "status": "delivered", "at": "2026-11-30T10:00:00+01:00"},
            {"provider_message_id": "m2", "status": "failed", "reason": "number does not exist"},
        ]}))
        .unwrap();
        assert_eq!(parsed.receipts.len(), 2);
        assert_eq!(
            parsed.receipts[0].at.unwrap().to_rfc3339(),
            "2026-11-30T09:00:00+00:00"
        );
        assert_eq!(
            parsed.receipts[1].reason.as_deref(),
            Some("number does not exist")
        );
        let nul = parse_receipts(&json!({"receipts": [
            {"provider_message_id": "m3", "status": "opted_out", "reason": "STOP\u{0}now"},
        ]}))
        .unwrap();
        assert_eq!(nul.receipts[0].reason.as_deref(), Some("STOPnow"));
    }

    #[test]
    fn herald_entries_with_bad_fields_are_refused_with_their_index() {
        let error = parse_receipts(&json!({"receipts": [
            {"provider_message_id": "m1", "status": "delivered"},
            {"provider_message_id": "m2", "status": "bounced"},
        ]}))
        .unwrap_err();
        assert!(error.0.starts_with("receipts[1]: `status`"), "{error}");
        let error =
            parse_receipts(&json!({"receipts": [{"provider_message_id": "", "status": "read"}]}))
                .unwrap_err();
        assert!(error.0.contains("provider_message_id"), "{error}");
        let error = parse_receipts(&json!({"receipts": [{"provider_message_id": "m", "status": "read", "at": "yesterday"}]}))
            .unwrap_err();
        assert!(error.0.contains("RFC 3339"), "{error}");
        assert!(parse_receipts(&json!({"hello": 1})).is_err());
        assert!(parse_receipts(&json!([1])).is_err());
    }

    #[test]
    fn evolution_2_webhooks_are_read_by_key_id_and_timed_by_arrival() {
        let body = json!({
            "event": "messages.update", "instance": "main",
            "data": {"keyId": "3EB0A1", "remoteJid": "5511999999999@s.whatsapp.net", "fromMe": true,
                     "participant": null, "status": "DELIVERY_ACK", "instanceId": "abc", "messageId": "cm1"},
            "destination": "https://herald/v1/receipts/x/y", "date_time": "2026-11-30T12:00:00.000Z",
            "sender": "5511888888888@s.whatsapp.net", "server_url": "https://evo", "apikey": "k"
        });
        let parsed = parse_receipts(&body).unwrap();
        assert_eq!(parsed.receipts.len(), 1);
        let receipt = &parsed.receipts[0];
        assert_eq!(receipt.provider_message_id, "3EB0A1");
        assert_eq!(receipt.status, ReceiptStatus::Delivered);
        // `date_time` is Evolution's local time labelled UTC: not trusted.
        assert_eq!(receipt.at, None);
    }

    #[test]
    fn evolution_1_8_webhooks_are_read_by_id_with_their_own_time() {
        let body = json!({
            "event": "messages.update", "instance": "main",
            "data": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": true, "id": "BAE5F1",
                     "status": "READ", "datetime": 1_764_504_000_000_i64, "owner": "main"},
            "date_time": "2026-11-30T12:00:00.000Z"
        });
        let receipt = &parse_receipts(&body).unwrap().receipts[0];
        assert_eq!(receipt.provider_message_id, "BAE5F1");
        assert_eq!(receipt.status, ReceiptStatus::Read);
        assert_eq!(receipt.at.unwrap().timestamp_millis(), 1_764_504_000_000);
    }

    #[test]
    fn evolution_statuses_map_to_receipts_and_the_rest_are_ignored() {
        let status_of = |status: &str| {
            let body = json!({"event": "messages.update", "data": {"keyId": "k", "fromMe": true, "status": status}});
            parse_receipts(&body)
                .unwrap()
                .receipts
                .first()
                .map(|r| r.status)
        };
        assert_eq!(status_of("DELIVERED"), Some(ReceiptStatus::Delivered));
        assert_eq!(status_of("PLAYED"), Some(ReceiptStatus::Read));
        assert_eq!(status_of("ERROR"), Some(ReceiptStatus::Failed));
        assert_eq!(status_of("FAILED"), Some(ReceiptStatus::Failed));
        assert_eq!(status_of("SERVER_ACK"), None);
        assert_eq!(status_of("PENDING"), None);
        assert_eq!(status_of("DELETED"), None);
    }

    #[test]
    fn other_evolution_events_and_incoming_messages_are_ignored_not_refused() {
        let upsert = json!({"event": "messages.upsert", "data": {"key": {"id": "x"}}});
        assert_eq!(parse_receipts(&upsert).unwrap().ignored, 1);
        let incoming = json!({"event": "MESSAGES_UPDATE", "data": [
            {"keyId": "in", "fromMe": false, "status": "READ"},
            {"keyId": "out", "fromMe": true, "status": "READ"},
        ]});
        let parsed = parse_receipts(&incoming).unwrap();
        assert_eq!(parsed.ignored, 1);
        assert_eq!(parsed.receipts[0].provider_message_id, "out");
    }
}
