//! `herald campaign ...`: create, import, transition, list, show and watch
//! campaigns through the HTTP API.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::acks::HaltArgs;
use super::{ApiArgs, ApiClient, CliError, cell, finish, pretty, short_time, table, truncate};

#[derive(Debug, Args)]
pub struct CampaignArgs {
    #[command(flatten)]
    pub api: ApiArgs,

    #[command(subcommand)]
    pub command: CampaignCommand,
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Create a draft campaign.
    Create(CreateArgs),
    /// Import recipients from a CSV file (an `address` column, or `phone`,
    /// `email`, `number` or `to`, in any case; other columns become template
    /// variables). `-` reads standard input.
    Import { id: Uuid, file: PathBuf },
    /// Start sending now.
    Start(TransitionArgs),
    /// Schedule a draft to start later.
    Schedule {
        #[command(flatten)]
        transition: TransitionArgs,
        /// When to start: RFC 3339 (`2026-05-01T09:00:00Z`) or a delay from now
        /// (`90s`, `15m`, `2h`). Without it, the campaign's `scheduled_at` is used.
        #[arg(long, value_parser = parse_start_time)]
        at: Option<DateTime<Utc>>,
    },
    /// Turn a scheduled campaign back into a draft.
    Unschedule(TransitionArgs),
    /// Pause sending; in-flight sends finish, nothing new is claimed. With
    /// --wait, answers once the replicas have applied it and prints their acks.
    Pause(HaltArgs),
    /// Resume a paused campaign: sends exactly what remains.
    Resume(TransitionArgs),
    /// Stop for good (--wait as for pause).
    Stop(HaltArgs),
    /// Send a paused or completed campaign's failed recipients again
    /// (`--scope transient` or `failed`, narrowed by `--reason`).
    Retry(super::retry::RetryArgs),
    /// List campaigns, newest first.
    List {
        /// Only campaigns in this status.
        #[arg(long)]
        status: Option<String>,
        /// Campaigns per page (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Follow every page.
        #[arg(long)]
        all: bool,
    },
    /// Show one campaign with its counters.
    Show { id: Uuid },
    /// Show a campaign's event history.
    Events { id: Uuid },
    /// Follow a campaign's progress live until it is stopped, completed or failed.
    Watch { id: Uuid },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    /// Write each message as a JSON line on the sender's stdout.
    Log,
    /// POST each message as JSON to --url, signed when --secret is set.
    Webhook,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("channel_source").required(true).args(["channel_id", "channel", "provider"])))]
pub struct CreateArgs {
    /// Campaign name (1 to 200 characters).
    #[arg(long)]
    pub name: String,
    /// A channel of this tenant (`herald channel create`), sharing its budget.
    #[arg(long, conflicts_with_all = ["channel", "provider", "url", "secret"])]
    pub channel_id: Option<Uuid>,
    /// The channel as JSON, e.g. `{"provider":"evolution","base_url":...}`.
    #[arg(long, value_parser = parse_json_object, conflicts_with_all = ["provider", "url", "secret"])]
    pub channel: Option<Value>,
    /// A simple channel instead of --channel.
    #[arg(long, value_enum)]
    pub provider: Option<Provider>,
    /// Webhook URL (with --provider webhook).
    #[arg(long)]
    pub url: Option<String>,
    /// Webhook signing secret (with --provider webhook).
    #[arg(long)]
    pub secret: Option<String>,
    /// Message body, minijinja syntax: `Hi {{ name }}!`.
    #[arg(long)]
    pub template: String,
    /// Start automatically at this time (RFC 3339 or a delay such as `15m`).
    #[arg(long, value_parser = parse_start_time)]
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Most messages per second for this campaign, across all sender replicas.
    #[arg(long)]
    pub rate_limit: Option<i32>,
}

#[derive(Debug, Clone, Args)]
pub struct TransitionArgs {
    pub id: Uuid,
    /// Only if the campaign is still at this version (HTTP 412 otherwise).
    #[arg(long)]
    pub if_match: Option<i64>,
    /// Traced through the API, the bus and the event log.
    #[arg(long)]
    pub correlation_id: Option<String>,
}

fn parse_json_object(text: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err("must be a JSON object such as {\"provider\":\"log\"}".into());
    }
    Ok(value)
}

/// RFC 3339, or a delay from now in humantime syntax (`90s`, `15m`, `1h 30m`).
fn parse_start_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let Ok(delay) = humantime::parse_duration(text) else {
        // A time without an offset is told to add one, as the API does.
        return herald_api::timestamps::parse_scheduled_at(text).map_err(|error| {
            if error.contains("UTC offset") && !error.contains("RFC 3339") {
                error
            } else {
                format!(
                    "{text:?} is neither an RFC 3339 time (2026-05-01T09:00:00Z) nor a delay (15m)"
                )
            }
        });
    };
    let delay = chrono::Duration::from_std(delay).map_err(|_| "delay is too long".to_owned())?;
    Ok(Utc::now() + delay)
}

/// Runs a `herald campaign` command and returns the process exit code.
pub async fn run(args: CampaignArgs) -> i32 {
    let json = args.api.json;
    let result = async {
        let client = ApiClient::new(&args.api)?;
        execute(&client, args.command, json).await
    }
    .await;
    finish(result, json)
}

async fn execute(client: &ApiClient, command: CampaignCommand, json: bool) -> Result<(), CliError> {
    match command {
        CampaignCommand::Create(create) => {
            let body = create_body(create)?;
            let campaign = client
                .call(client.request(Method::POST, "/v1/campaigns").json(&body))
                .await?;
            print_campaign(&campaign, json);
        }
        CampaignCommand::Import { id, file } => {
            let result = import(client, id, &file).await?;
            print_import(&result, json);
        }
        CampaignCommand::Start(t) => transition(client, "start", t, None, json).await?,
        CampaignCommand::Pause(h) => halt(client, "pause", h, json).await?,
        CampaignCommand::Stop(h) => halt(client, "stop", h, json).await?,
        CampaignCommand::Schedule { transition: t, at } => {
            transition(client, "schedule", t, at, json).await?
        }
        CampaignCommand::Unschedule(t) => transition(client, "unschedule", t, None, json).await?,
        CampaignCommand::Resume(t) => transition(client, "resume", t, None, json).await?,
        CampaignCommand::Retry(args) => super::retry::retry(client, args, json).await?,
        CampaignCommand::List {
            status,
            limit,
            cursor,
            all,
        } => list(client, status, limit, cursor, all, json).await?,
        CampaignCommand::Show { id } => {
            let campaign = client
                .call(client.request(Method::GET, &format!("/v1/campaigns/{id}")))
                .await?;
            print_campaign(&campaign, json);
        }
        CampaignCommand::Events { id } => {
            let events = client
                .call(client.request(Method::GET, &format!("/v1/campaigns/{id}/events")))
                .await?;
            print_events(&events, json);
        }
        CampaignCommand::Watch { id } => super::watch::watch(client, id, json).await?,
    }
    Ok(())
}

fn create_body(create: CreateArgs) -> Result<Value, CliError> {
    if let Some(channel_id) = create.channel_id {
        return Ok(finish_body(
            json!({
                "name": create.name,
                "channel_id": channel_id,
                "template": {"body": create.template},
            }),
            create.scheduled_at,
            create.rate_limit,
        ));
    }
    let channel = match (create.channel, create.provider) {
        (Some(channel), _) => channel,
        (None, Some(Provider::Log)) => {
            if create.url.is_some() || create.secret.is_some() {
                return Err(CliError::Usage(
                    "--url and --secret only go with --provider webhook".into(),
                ));
            }
            json!({"provider": "log"})
        }
        (None, Some(Provider::Webhook)) => {
            let url = create
                .url
                .ok_or_else(|| CliError::Usage("--provider webhook needs --url".into()))?;
            let mut channel = json!({"provider": "webhook", "url": url});
            if let Some(secret) = create.secret {
                channel["secret"] = Value::String(secret);
            }
            channel
        }
        // clap's `channel_source` group requires one of the two.
        (None, None) => {
            return Err(CliError::Usage("pass --channel or --provider".into()));
        }
    };
    let body = json!({
        "name": create.name,
        "channel": channel,
        "template": {"body": create.template},
    });
    Ok(finish_body(body, create.scheduled_at, create.rate_limit))
}

fn finish_body(mut body: Value, scheduled_at: Option<DateTime<Utc>>, rate: Option<i32>) -> Value {
    if let Some(at) = scheduled_at {
        body["scheduled_at"] = json!(at);
    }
    if let Some(rate) = rate {
        body["rate_limit_per_second"] = json!(rate);
    }
    body
}

/// Streams the CSV from disk (or stdin) without reading it into memory.
async fn import(client: &ApiClient, id: Uuid, file: &std::path::Path) -> Result<Value, CliError> {
    use tokio_util::io::ReaderStream;
    let body = if file.as_os_str() == "-" {
        reqwest::Body::wrap_stream(ReaderStream::new(tokio::io::stdin()))
    } else {
        let opened = tokio::fs::File::open(file)
            .await
            .map_err(|e| CliError::failed(format!("cannot open {}: {e}", file.display())))?;
        reqwest::Body::wrap_stream(ReaderStream::new(opened))
    };
    let request = client
        .request(Method::POST, &format!("/v1/campaigns/{id}/recipients"))
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(body);
    client.send(request).await
}

/// A pause or stop, with the replicas' acks when it waited for them.
async fn halt(
    client: &ApiClient,
    action: &str,
    args: HaltArgs,
    json: bool,
) -> Result<(), CliError> {
    let query = args.query();
    let campaign = send_transition(client, action, args.transition, None, &query).await?;
    print_transition(&campaign, json);
    if !json && campaign.get("acks").is_some() {
        super::acks::print_acks(&campaign["acks"]);
    }
    Ok(())
}

async fn transition(
    client: &ApiClient,
    action: &str,
    args: TransitionArgs,
    scheduled_at: Option<DateTime<Utc>>,
    json: bool,
) -> Result<(), CliError> {
    let campaign = send_transition(client, action, args, scheduled_at, &[]).await?;
    print_transition(&campaign, json);
    Ok(())
}

async fn send_transition(
    client: &ApiClient,
    action: &str,
    args: TransitionArgs,
    scheduled_at: Option<DateTime<Utc>>,
    query: &[(&str, String)],
) -> Result<Value, CliError> {
    let mut request = client
        .request(Method::POST, &format!("/v1/campaigns/{}/{action}", args.id))
        .query(query);
    if let Some(version) = args.if_match {
        request = request.header(reqwest::header::IF_MATCH, version.to_string());
    }
    if let Some(correlation) = &args.correlation_id {
        request = request.header("X-Correlation-Id", correlation);
    }
    if let Some(at) = scheduled_at {
        request = request.json(&json!({"scheduled_at": at}));
    }
    client.call(request).await
}

fn print_transition(campaign: &Value, json: bool) {
    if json {
        println!("{}", pretty(campaign));
    } else {
        println!(
            "{}: {} (version {})",
            cell(&campaign["id"]),
            cell(&campaign["status"]),
            cell(&campaign["version"])
        );
    }
}

async fn list(
    client: &ApiClient,
    status: Option<String>,
    limit: u32,
    cursor: Option<String>,
    all: bool,
    json: bool,
) -> Result<(), CliError> {
    let filters: Vec<(&str, String)> = status.map(|s| ("status", s)).into_iter().collect();
    let (items, next) = client
        .list_pages("/v1/campaigns", &filters, limit, cursor, all)
        .await?;
    if json {
        println!("{}", pretty(&json!({"items": items, "next_cursor": next})));
        return Ok(());
    }
    if items.is_empty() {
        println!("no campaigns");
        return Ok(());
    }
    let mut out = table();
    out.set_header(["ID", "NAME", "STATUS", "SENT", "FAILED", "TOTAL", "CREATED"]);
    for item in &items {
        out.add_row([
            cell(&item["id"]),
            truncate(&cell(&item["name"]), 40),
            cell(&item["status"]),
            cell(&item["counters"]["sent"]),
            cell(&item["counters"]["failed"]),
            cell(&item["counters"]["total"]),
            short_time(&item["created_at"]),
        ]);
    }
    println!("{out}");
    if let Some(next) = next {
        eprintln!("more: --cursor {next} (or --all)");
    }
    Ok(())
}

fn print_campaign(campaign: &Value, json: bool) {
    if json {
        println!("{}", pretty(campaign));
        return;
    }
    let mut about = table();
    let rate = match &campaign["rate_limit_per_second"] {
        Value::Null => "unlimited".to_owned(),
        rate => format!("{rate}/s across all senders"),
    };
    for (key, value) in [
        ("id", cell(&campaign["id"])),
        ("name", cell(&campaign["name"])),
        ("status", cell(&campaign["status"])),
        ("version", cell(&campaign["version"])),
        ("run epoch", cell(&campaign["run_epoch"])),
        ("channel id", cell(&campaign["channel_id"])),
        ("channel", cell(&campaign["channel"])),
        ("template", cell(&campaign["template"]["body"])),
        ("rate limit", rate),
        ("scheduled at", short_time(&campaign["scheduled_at"])),
        ("created", short_time(&campaign["created_at"])),
        ("started", short_time(&campaign["started_at"])),
        ("finished", short_time(&campaign["finished_at"])),
    ] {
        about.add_row([key.to_owned(), value]);
    }
    println!("{about}\n");
    let counters = &campaign["counters"];
    let names = ["total", "pending", "sending", "sent", "failed", "skipped"];
    let mut numbers = table();
    numbers.set_header(names.map(str::to_uppercase));
    numbers.add_row(names.map(|n| cell(&counters[n])));
    println!("{numbers}");
    // Why recipients failed or were skipped, by reason code.
    if let Some(reasons) = campaign["reasons"].as_object().filter(|r| !r.is_empty()) {
        let mut why = table();
        why.set_header(["REASON", "RECIPIENTS"]);
        for (reason, count) in reasons {
            why.add_row([reason.clone(), cell(count)]);
        }
        println!("\n{why}");
    }
}

fn print_import(result: &Value, json: bool) {
    if json {
        println!("{}", pretty(result));
        return;
    }
    println!(
        "accepted {}, duplicates {}, rejected {}",
        cell(&result["accepted"]),
        cell(&result["duplicates"]),
        cell(&result["rejected"])
    );
    let Some(rows) = result["rejected_rows"].as_array().filter(|r| !r.is_empty()) else {
        return;
    };
    let mut out = table();
    out.set_header(["ROW", "REASON", "MESSAGE"]);
    for row in rows {
        out.add_row([
            cell(&row["row"]),
            cell(&row["reason"]),
            cell(&row["message"]),
        ]);
    }
    println!("{out}");
}

fn print_events(events: &Value, json: bool) {
    if json {
        println!("{}", pretty(events));
        return;
    }
    let items = events["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if items.is_empty() {
        println!("no events");
        return;
    }
    let mut out = table();
    out.set_header([
        "SEQ",
        "EVENT",
        "CHANGE",
        "VERSION",
        "ACTOR",
        "AT",
        "REQUEST ID",
    ]);
    for event in items {
        let payload = &event["payload"];
        let change = match (&payload["from"], &payload["to"]) {
            (Value::Null, Value::Null) => "-".to_owned(),
            (from, to) => format!("{} → {}", cell(from), cell(to)),
        };
        out.add_row([
            cell(&event["seq"]),
            cell(&event["type"]),
            change,
            cell(&payload["version"]),
            cell(&event["actor"]),
            short_time(&event["created_at"]),
            cell(&event["request_correlation_id"]),
        ]);
    }
    println!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_accept_rfc3339_and_delays_from_now() {
        let exact = parse_start_time("2026-05-01T09:00:00Z").expect("rfc3339");
        assert_eq!(exact.to_rfc3339(), "2026-05-01T09:00:00+00:00");
        let later = parse_start_time("15m").expect("delay");
        let expected = Utc::now() + chrono::Duration::minutes(15);
        assert!((later - expected).num_seconds().abs() < 5);
        assert!(parse_start_time("tomorrow-ish").is_err());
    }

    #[test]
    fn channels_must_be_json_objects() {
        assert!(parse_json_object(r#"{"provider":"log"}"#).is_ok());
        assert!(parse_json_object("[1]").is_err());
        assert!(parse_json_object("{nope").is_err());
    }

    #[test]
    fn a_webhook_without_url_is_a_usage_error() {
        let create = CreateArgs {
            name: "n".into(),
            channel_id: None,
            channel: None,
            provider: Some(Provider::Webhook),
            url: None,
            secret: None,
            template: "Hi".into(),
            scheduled_at: None,
            rate_limit: None,
        };
        assert!(matches!(create_body(create), Err(CliError::Usage(_))));
    }
}
