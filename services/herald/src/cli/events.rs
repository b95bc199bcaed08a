//! `herald events tail`: reads lifecycle events straight from JetStream
//! (`<prefix>_EVENTS`), one line per event.
//!
//! It uses an ordered consumer: ephemeral, no acks, recreated by the client from
//! the last sequence it saw if it is lost, so it never disturbs the services'
//! consumers and leaves nothing behind. It starts at `now - --since`
//! (`DeliverPolicy::ByStartTime`), never at "new", which on nats-server 2.9 could
//! replay the whole stream after a recreate (docs/OPERATIONS.md).

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use futures::StreamExt;
use herald_core::bus::REQUEST_CORRELATION_HEADER;
use herald_core::config::CommonConfig;
use herald_core::contracts::{self, LifecycleEvent};
use uuid::Uuid;

use super::{CliError, connect_bus, finish, format_time, open_stream};

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print lifecycle events from JetStream, oldest first.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only this campaign's events.
    #[arg(long)]
    pub campaign: Option<Uuid>,
    /// How far back to start: `30m`, `1h`, `7d`, ...
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// Keep waiting for new events (stop with Ctrl-C).
    #[arg(long, short)]
    pub follow: bool,
    /// Print each event's JSON document on one line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: CommonConfig,
}

/// Runs a `herald events` command and returns the process exit code.
pub async fn run(args: EventsArgs) -> i32 {
    match args.command {
        EventsCommand::Tail(tail_args) => {
            let json = tail_args.json;
            finish(tail(tail_args).await, json)
        }
    }
}

fn start_time(since: Duration) -> Result<async_nats::datetime::DateTime, CliError> {
    let since = chrono::Duration::from_std(since)
        .map_err(|_| CliError::Usage("--since is too long".into()))?;
    let start = Utc::now() - since;
    let nanos = start
        .timestamp_nanos_opt()
        .ok_or_else(|| CliError::Usage("--since reaches too far back".into()))?;
    async_nats::datetime::from_nanos(i128::from(nanos))
        .map_err(|e| CliError::Usage(format!("--since: {e}")))
}

async fn tail(args: TailArgs) -> Result<(), CliError> {
    let start_time = start_time(args.since)?;
    let bus = connect_bus(&args.common).await?;
    let stream = open_stream(&bus, &bus.streams.events).await?;
    let filter_subject = match args.campaign {
        Some(id) => bus.subjects.events(id),
        None => bus.subjects.events_all(),
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject,
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(|e| CliError::failed(format!("cannot read {}: {e}", bus.streams.events)))?;
    // Without --follow, stop once caught up; nothing to read means nothing to wait for.
    if !args.follow && consumer.cached_info().num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| CliError::failed(format!("cannot read {}: {e}", bus.streams.events)))?;
    while let Some(message) = messages.next().await {
        let message = message
            .map_err(|e| CliError::failed(format!("reading {}: {e}", bus.streams.events)))?;
        let request_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(REQUEST_CORRELATION_HEADER))
            .map(|v| v.as_str().to_owned());
        match contracts::decode::<LifecycleEvent>(&message.payload) {
            Ok(_) if args.json => println!("{}", String::from_utf8_lossy(&message.payload)),
            Ok(event) => println!("{}", event_line(&event, request_id.as_deref())),
            // Producers validate, so this is rare; say so and keep going.
            Err(error) => eprintln!(
                "herald: skipping an invalid event on {}: {error}",
                message.subject
            ),
        }
        let caught_up = message.info().map(|i| i.pending == 0).unwrap_or(false);
        if caught_up && !args.follow {
            break;
        }
    }
    Ok(())
}

/// `2026-05-01 10:00:00Z  <campaign>  #3 started  draft → sending  v2 epoch 1  tenant:acme  request demo-1`
fn event_line(event: &LifecycleEvent, request_id: Option<&str>) -> String {
    let at: DateTime<Utc> = event.occurred_at;
    let change = match event.from_status {
        Some(from) => format!("{from} → {}", event.status),
        None => format!("→ {}", event.status),
    };
    let mut line = format!(
        "{}  {}  #{} {}  {}  v{} epoch {}  {}",
        format_time(at),
        event.campaign_id,
        event.seq,
        event.event_type,
        change,
        event.version,
        event.run_epoch,
        event.actor
    );
    if let Some(id) = request_id {
        line.push_str("  request ");
        line.push_str(id);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::lifecycle::Status;

    #[test]
    fn an_event_line_names_the_change_the_actor_and_the_request() {
        let event = LifecycleEvent {
            event_id: Uuid::new_v4(),
            campaign_id: Uuid::nil(),
            seq: 3,
            event_type: "started".into(),
            from_status: Some(Status::Draft),
            status: Status::Sending,
            version: 2,
            run_epoch: 1,
            actor: "tenant:acme".into(),
            occurred_at: DateTime::parse_from_rfc3339("2026-05-01T10:00:00Z")
                .expect("time")
                .with_timezone(&Utc),
            correlation_id: Uuid::new_v4(),
        };
        assert_eq!(
            event_line(&event, Some("demo-1")),
            "2026-05-01 10:00:00Z  00000000-0000-0000-0000-000000000000  #3 started  \
             draft → sending  v2 epoch 1  tenant:acme  request demo-1"
        );
    }

    #[test]
    fn since_turns_into_a_start_time_in_the_past() {
        let start = start_time(Duration::from_secs(3600)).expect("start time");
        let age = Utc::now().timestamp() - start.unix_timestamp();
        assert!((3590..=3610).contains(&age), "{age}");
    }
}
