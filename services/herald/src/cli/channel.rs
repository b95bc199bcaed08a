//! `herald channel ...`: create, list, show, update and delete channels (a
//! tenant's sending identities, whose budget and send window every campaign on
//! them shares) through the HTTP API.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{ApiArgs, ApiClient, CliError, cell, finish, pretty, short_time, table, truncate};

#[derive(Debug, Args)]
pub struct ChannelArgs {
    #[command(flatten)]
    pub api: ApiArgs,

    #[command(subcommand)]
    pub command: ChannelCommand,
}

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Create a channel.
    Create(CreateArgs),
    /// List channels, newest first.
    List {
        /// Channels per page (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Follow every page.
        #[arg(long)]
        all: bool,
    },
    /// Show one channel (secrets appear as `***`).
    Show { id: Uuid },
    /// Change a channel's name, config, budget or send window.
    Update(UpdateArgs),
    /// Delete a channel no sending, paused or scheduled campaign uses.
    Delete { id: Uuid },
    /// Give the channel a new receipts URL; the old one stops working.
    RotateReceiptsToken { id: Uuid },
}

/// The provider config: inline JSON or a file holding it.
#[derive(Debug, Clone, Args)]
pub struct ConfigSource {
    /// The provider config as JSON, e.g. `{"provider":"webhook","url":"https://..."}`.
    #[arg(long, value_parser = parse_json_object)]
    pub config: Option<Value>,
    /// A file holding the provider config as JSON (`-` reads standard input).
    #[arg(long, conflicts_with = "config")]
    pub config_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("config_source").required(true).args(["config", "config_file"])))]
pub struct CreateArgs {
    /// Channel name (1 to 200 characters).
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub source: ConfigSource,
    /// Requests per second across every campaign and replica (1 to 100000).
    #[arg(long)]
    pub per_second: Option<i64>,
    /// Requests per local calendar day (1 to 1000000000).
    #[arg(long)]
    pub per_day: Option<i64>,
    /// Send window as JSON: `{"timezone":"America/Sao_Paulo","days":["mon"],"start":"09:00","end":"20:00"}`.
    #[arg(long, value_parser = parse_json_object)]
    pub window: Option<Value>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: Uuid,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub source: ConfigSource,
    /// New per-second limit (sent together with --per-day as the whole budget).
    #[arg(long, conflicts_with = "no_rate_limit")]
    pub per_second: Option<i64>,
    /// New per-day limit (sent together with --per-second as the whole budget).
    #[arg(long, conflicts_with = "no_rate_limit")]
    pub per_day: Option<i64>,
    /// Remove the channel's budget.
    #[arg(long)]
    pub no_rate_limit: bool,
    /// New send window as JSON.
    #[arg(long, value_parser = parse_json_object, conflicts_with = "no_window")]
    pub window: Option<Value>,
    /// Remove the channel's send window.
    #[arg(long)]
    pub no_window: bool,
}

fn parse_json_object(text: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err("must be a JSON object".into());
    }
    Ok(value)
}

/// The config from `--config` or `--config-file`, if either was given.
fn read_config(source: ConfigSource) -> Result<Option<Value>, CliError> {
    let Some(path) = source.config_file else {
        return Ok(source.config);
    };
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CliError::failed(format!("cannot read standard input: {e}")))?
    } else {
        std::fs::read_to_string(&path)
            .map_err(|e| CliError::failed(format!("cannot read {}: {e}", path.display())))?
    };
    parse_json_object(&text)
        .map(Some)
        .map_err(|e| CliError::Usage(format!("--config-file {}: {e}", path.display())))
}

fn rate_limit(per_second: Option<i64>, per_day: Option<i64>) -> Option<Value> {
    let mut rate = Map::new();
    if let Some(n) = per_second {
        rate.insert("per_second".into(), json!(n));
    }
    if let Some(n) = per_day {
        rate.insert("per_day".into(), json!(n));
    }
    (!rate.is_empty()).then_some(Value::Object(rate))
}

fn create_body(create: CreateArgs) -> Result<Value, CliError> {
    let config = read_config(create.source)?
        .ok_or_else(|| CliError::Usage("pass --config or --config-file".into()))?;
    let mut body = json!({"name": create.name, "config": config});
    if let Some(rate) = rate_limit(create.per_second, create.per_day) {
        body["rate_limit"] = rate;
    }
    if let Some(window) = create.window {
        body["send_window"] = window;
    }
    Ok(body)
}

fn update_body(update: UpdateArgs) -> Result<Value, CliError> {
    let mut body = Map::new();
    if let Some(name) = update.name {
        body.insert("name".into(), json!(name));
    }
    if let Some(config) = read_config(update.source)? {
        body.insert("config".into(), config);
    }
    if update.no_rate_limit {
        body.insert("rate_limit".into(), Value::Null);
    } else if let Some(rate) = rate_limit(update.per_second, update.per_day) {
        body.insert("rate_limit".into(), rate);
    }
    if update.no_window {
        body.insert("send_window".into(), Value::Null);
    } else if let Some(window) = update.window {
        body.insert("send_window".into(), window);
    }
    if body.is_empty() {
        return Err(CliError::Usage(
            "nothing to change: pass --name, --config, --per-second, --per-day, --window, \
             --no-rate-limit or --no-window"
                .into(),
        ));
    }
    Ok(Value::Object(body))
}

/// Runs a `herald channel` command and returns the process exit code.
pub async fn run(args: ChannelArgs) -> i32 {
    let json = args.api.json;
    let result = async {
        let client = ApiClient::new(&args.api)?;
        execute(&client, args.command, json).await
    }
    .await;
    finish(result, json)
}

async fn execute(client: &ApiClient, command: ChannelCommand, json: bool) -> Result<(), CliError> {
    match command {
        ChannelCommand::Create(create) => {
            let body = create_body(create)?;
            let channel = client
                .call(client.request(Method::POST, "/v1/channels").json(&body))
                .await?;
            print_channel(&channel, json);
        }
        ChannelCommand::List { limit, cursor, all } => {
            list(client, limit, cursor, all, json).await?
        }
        ChannelCommand::Show { id } => {
            let channel = client
                .call(client.request(Method::GET, &format!("/v1/channels/{id}")))
                .await?;
            print_channel(&channel, json);
        }
        ChannelCommand::Update(update) => {
            let id = update.id;
            let body = update_body(update)?;
            let channel = client
                .call(
                    client
                        .request(Method::PATCH, &format!("/v1/channels/{id}"))
                        .json(&body),
                )
                .await?;
            print_channel(&channel, json);
        }
        ChannelCommand::RotateReceiptsToken { id } => {
            let path = format!("/v1/channels/{id}/receipts-token");
            let channel = client.call(client.request(Method::POST, &path)).await?;
            print_channel(&channel, json);
        }
        ChannelCommand::Delete { id } => {
            client
                .call(client.request(Method::DELETE, &format!("/v1/channels/{id}")))
                .await?;
            if json {
                println!("{}", pretty(&json!({"id": id, "deleted": true})));
            } else {
                println!("{id}: deleted");
            }
        }
    }
    Ok(())
}

async fn list(
    client: &ApiClient,
    limit: u32,
    cursor: Option<String>,
    all: bool,
    json: bool,
) -> Result<(), CliError> {
    let (items, next) = client
        .list_pages("/v1/channels", &[], limit, cursor, all)
        .await?;
    if json {
        println!("{}", pretty(&json!({"items": items, "next_cursor": next})));
        return Ok(());
    }
    if items.is_empty() {
        println!("no channels");
        return Ok(());
    }
    let mut out = table();
    out.set_header(["ID", "NAME", "PROVIDER", "BUDGET", "WINDOW", "CREATED"]);
    for item in &items {
        out.add_row([
            cell(&item["id"]),
            truncate(&cell(&item["name"]), 40),
            cell(&item["config"]["provider"]),
            budget(&item["rate_limit"]),
            window(&item["send_window"]),
            short_time(&item["created_at"]),
        ]);
    }
    println!("{out}");
    if let Some(next) = next {
        eprintln!("more: --cursor {next} (or --all)");
    }
    Ok(())
}

/// `20/s, 1000/day`, or `unlimited`.
fn budget(rate: &Value) -> String {
    let parts: Vec<String> = [("per_second", "/s"), ("per_day", "/day")]
        .iter()
        .filter_map(|(key, unit)| rate[*key].as_i64().map(|n| format!("{n}{unit}")))
        .collect();
    if parts.is_empty() {
        "unlimited".into()
    } else {
        parts.join(", ")
    }
}

/// `09:00-20:00 America/Sao_Paulo (mon,tue)`, or `always`.
fn window(window: &Value) -> String {
    if window.is_null() {
        return "always".into();
    }
    let days: Vec<String> = window["days"]
        .as_array()
        .map(|d| d.iter().map(cell).collect())
        .unwrap_or_default();
    format!(
        "{}-{} {} ({})",
        cell(&window["start"]),
        cell(&window["end"]),
        cell(&window["timezone"]),
        days.join(",")
    )
}

fn print_channel(channel: &Value, json: bool) {
    if json {
        println!("{}", pretty(channel));
        return;
    }
    let mut about = table();
    for (key, value) in [
        ("id", cell(&channel["id"])),
        ("name", cell(&channel["name"])),
        ("config", cell(&channel["config"])),
        ("budget", budget(&channel["rate_limit"])),
        ("window", window(&channel["send_window"])),
        ("version", cell(&channel["version"])),
        ("receipts url", cell(&channel["receipts_url"])),
        ("created", short_time(&channel["created_at"])),
        ("updated", short_time(&channel["updated_at"])),
    ] {
        about.add_row([key.to_owned(), value]);
    }
    println!("{about}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: Uuid) -> UpdateArgs {
        UpdateArgs {
            id,
            name: None,
            source: ConfigSource {
                config: None,
                config_file: None,
            },
            per_second: None,
            per_day: None,
            no_rate_limit: false,
            window: None,
            no_window: false,
        }
    }

    #[test]
    fn an_update_without_changes_is_a_usage_error() {
        assert!(matches!(
            update_body(update(Uuid::nil())),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn removing_the_budget_and_window_sends_nulls() {
        let mut args = update(Uuid::nil());
        args.no_rate_limit = true;
        args.no_window = true;
        let body = update_body(args).expect("a body");
        assert_eq!(body, json!({"rate_limit": null, "send_window": null}));
    }

    #[test]
    fn budgets_read_for_people() {
        assert_eq!(
            budget(&json!({"per_second": 20, "per_day": 1000})),
            "20/s, 1000/day"
        );
        assert_eq!(budget(&Value::Null), "unlimited");
    }
}
