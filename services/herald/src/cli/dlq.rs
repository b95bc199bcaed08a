//! `herald dlq list|replay`: dead letters in `<prefix>_DLQ`.
//!
//! `list` reads them with a throwaway consumer (no acks, removed afterwards).
//! `replay SEQ...` re-publishes each letter's original payload to its original
//! subject with a fresh `Nats-Msg-Id` (the old id would be dropped as a duplicate
//! if it is still in the stream's window), then deletes the letter. Replaying is
//! safe in Herald's design: work messages are idempotent and control messages are
//! only hints; a payload that is still bad is simply dead-lettered again.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream as JsStream;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use futures::StreamExt;
use herald_core::bus::Bus;
use herald_core::config::CommonConfig;
use herald_core::contracts::{self, DeadLetter};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{CliError, connect_bus, finish, format_time, open_stream, pretty, table, truncate};

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// Only letters from this original subject, e.g. `campaigns.send`.
        #[arg(long)]
        subject: Option<String>,
        /// Show at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: CommonConfig,
    },
    /// Re-publish dead letters to their original subjects and delete them.
    Replay {
        /// DLQ stream sequences, as `herald dlq list` shows them.
        #[arg(required = true)]
        seqs: Vec<u64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: CommonConfig,
    },
}

/// Runs a `herald dlq` command and returns the process exit code.
pub async fn run(args: DlqArgs) -> i32 {
    match args.command {
        DlqCommand::List {
            subject,
            limit,
            json,
            common,
        } => finish(list(&common, subject.as_deref(), limit, json).await, json),
        DlqCommand::Replay { seqs, json, common } => {
            finish(replay(&common, &seqs, json).await, json)
        }
    }
}

/// One message of the DLQ stream.
#[derive(Debug)]
struct Letter {
    seq: u64,
    dlq_subject: String,
    stored_at: Option<DateTime<Utc>>,
    letter: Result<DeadLetter, String>,
}

impl Letter {
    fn to_json(&self) -> Value {
        let mut value = match &self.letter {
            Ok(letter) => serde_json::to_value(letter).unwrap_or_else(|_| json!({})),
            Err(error) => json!({ "error": error }),
        };
        value["seq"] = json!(self.seq);
        value["dlqSubject"] = json!(self.dlq_subject);
        value
    }
}

fn subject_filter(bus: &Bus, subject: Option<&str>) -> Result<String, CliError> {
    match subject {
        None => Ok(bus.subjects.dlq_all()),
        Some(s) if s.is_empty() || s.contains(char::is_whitespace) => Err(CliError::Usage(
            format!("--subject {s:?} is not a NATS subject"),
        )),
        Some(s) => Ok(bus.subjects.dlq(s)),
    }
}

async fn read_letters(
    bus: &Bus,
    stream: &JsStream,
    filter_subject: String,
    limit: usize,
) -> Result<Vec<Letter>, CliError> {
    let cannot = |e: &dyn std::fmt::Display| {
        CliError::failed(format!("cannot read {}: {e}", bus.streams.dlq))
    };
    let reader: consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subject,
            deliver_policy: DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            // Gone by itself even if this process dies before removing it.
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| cannot(&e))?;
    let name = reader.cached_info().name.clone();
    let mut letters = Vec::new();
    if reader.cached_info().num_pending > 0 && limit > 0 {
        let mut messages = reader
            .stream()
            .max_messages_per_batch(limit.min(500))
            .messages()
            .await
            .map_err(|e| cannot(&e))?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let message = match next {
                Err(_) => return Err(cannot(&"no answer within 5 s")),
                Ok(None) => break,
                Ok(Some(message)) => message.map_err(|e| cannot(&e))?,
            };
            let info = message.info().map_err(|e| cannot(&e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let stored_at = DateTime::from_timestamp_nanos(
                info.published
                    .unix_timestamp_nanos()
                    .clamp(0, i128::from(i64::MAX)) as i64,
            );
            letters.push(Letter {
                seq,
                dlq_subject: message.subject.to_string(),
                stored_at: Some(stored_at),
                letter: contracts::decode::<DeadLetter>(&message.payload)
                    .map_err(|e| e.to_string()),
            });
            if pending == 0 || letters.len() >= limit {
                break;
            }
        }
    }
    // Best effort: the inactivity threshold removes it otherwise.
    let _ = stream.delete_consumer(&name).await;
    Ok(letters)
}

async fn list(
    common: &CommonConfig,
    subject: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<(), CliError> {
    let bus = connect_bus(common).await?;
    let filter = subject_filter(&bus, subject)?;
    let stream = open_stream(&bus, &bus.streams.dlq).await?;
    let letters = read_letters(&bus, &stream, filter, limit).await?;
    if json {
        let items: Vec<Value> = letters.iter().map(Letter::to_json).collect();
        println!("{}", pretty(&Value::Array(items)));
        return Ok(());
    }
    if letters.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    let mut out = table();
    out.set_header(["SEQ", "SUBJECT", "REASON", "AT", "CONSUMER", "BYTES"]);
    for letter in &letters {
        match &letter.letter {
            Ok(l) => out.add_row([
                letter.seq.to_string(),
                l.original_subject.clone(),
                truncate(&l.reason, 80),
                format_time(l.dead_lettered_at),
                l.consumer.clone(),
                if l.payload_truncated {
                    format!("{} (truncated)", l.payload_bytes)
                } else {
                    l.payload_bytes.to_string()
                },
            ]),
            Err(error) => out.add_row([
                letter.seq.to_string(),
                letter.dlq_subject.clone(),
                truncate(&format!("unreadable dead letter: {error}"), 80),
                letter
                    .stored_at
                    .map(format_time)
                    .unwrap_or_else(|| "-".into()),
                "-".into(),
                "-".into(),
            ]),
        };
    }
    println!("{out}");
    println!("replay with: herald dlq replay SEQ...");
    Ok(())
}

/// The prefixed subject a letter came from, if it is safe to publish to.
fn replay_subject(prefix: &str, original: &str) -> Result<String, String> {
    let bare = original.strip_prefix(prefix).unwrap_or(original);
    let valid = !bare.is_empty()
        && !bare.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
        && !bare.split('.').any(str::is_empty);
    if !valid {
        return Err(format!(
            "original subject {original:?} cannot be published to"
        ));
    }
    if bare.starts_with("campaigns.dlq.") {
        return Err(format!(
            "original subject {original:?} is itself a dead-letter subject"
        ));
    }
    Ok(format!("{prefix}{bare}"))
}

/// Replays one letter and returns the subject it went to.
async fn replay_one(bus: &Bus, stream: &JsStream, seq: u64) -> Result<String, String> {
    let raw = stream
        .get_raw_message(seq)
        .await
        .map_err(|e| format!("no dead letter with sequence {seq}: {e}"))?;
    let dlq_prefix = format!("{}campaigns.dlq.", bus.subjects.prefix());
    if !raw.subject.as_str().starts_with(&dlq_prefix) {
        return Err(format!(
            "message {seq} on {} is not a dead letter",
            raw.subject
        ));
    }
    let letter = contracts::decode::<DeadLetter>(&raw.payload)
        .map_err(|e| format!("unreadable dead letter: {e}"))?;
    if letter.payload_truncated {
        return Err(format!(
            "only the first {} of {} bytes were kept; the original cannot be rebuilt",
            contracts::DEAD_LETTER_PAYLOAD_LIMIT,
            letter.payload_bytes
        ));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&letter.payload_base64)
        .map_err(|e| format!("payload is not base64: {e}"))?;
    let subject = replay_subject(bus.subjects.prefix(), &letter.original_subject)?;
    let message_id = format!("replay-{}", Uuid::new_v4());
    bus.publish_raw(subject.clone(), payload.into(), &message_id, None)
        .await
        .map_err(|e| format!("{e:#}"))?;
    stream.delete_message(seq).await.map_err(|e| {
        format!("re-published to {subject}, but could not delete the dead letter: {e}")
    })?;
    Ok(subject)
}

async fn replay(common: &CommonConfig, seqs: &[u64], json: bool) -> Result<(), CliError> {
    let bus = connect_bus(common).await?;
    let stream = open_stream(&bus, &bus.streams.dlq).await?;
    let mut results = Vec::new();
    for &seq in seqs {
        results.push((seq, replay_one(&bus, &stream, seq).await));
    }
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if json {
        let items: Vec<Value> = results
            .iter()
            .map(|(seq, result)| match result {
                Ok(subject) => json!({"seq": seq, "ok": true, "subject": subject}),
                Err(error) => json!({"seq": seq, "ok": false, "error": error}),
            })
            .collect();
        println!("{}", pretty(&Value::Array(items)));
    } else {
        let mut out = table();
        out.set_header(["SEQ", "RESULT"]);
        for (seq, result) in &results {
            let text = match result {
                Ok(subject) => format!("replayed to {subject}"),
                Err(error) => format!("failed: {error}"),
            };
            out.add_row([seq.to_string(), text]);
        }
        println!("{out}");
    }
    if failed > 0 {
        return Err(CliError::failed(format!(
            "{failed} of {} dead letters were not replayed",
            results.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::cell;

    #[test]
    fn a_letter_row_in_json_carries_its_sequence() {
        let letter = Letter {
            seq: 7,
            dlq_subject: "campaigns.dlq.campaigns.send".into(),
            stored_at: None,
            letter: Err("bad".into()),
        };
        let value = letter.to_json();
        assert_eq!(value["seq"], 7);
        assert_eq!(cell(&value["error"]), "bad");
    }

    #[test]
    fn replays_go_to_the_prefixed_original_subject_and_never_to_wildcards_or_the_dlq() {
        assert_eq!(
            replay_subject("t1.", "campaigns.send").as_deref(),
            Ok("t1.campaigns.send")
        );
        assert_eq!(
            replay_subject("t1.", "t1.campaigns.pack").as_deref(),
            Ok("t1.campaigns.pack")
        );
        assert_eq!(
            replay_subject("", "campaigns.send").as_deref(),
            Ok("campaigns.send")
        );
        for bad in [
            "",
            "campaigns.>",
            "campaigns.*",
            "campaigns..send",
            "a b",
            "campaigns.dlq.x",
        ] {
            assert!(replay_subject("", bad).is_err(), "{bad:?} accepted");
        }
    }
}
