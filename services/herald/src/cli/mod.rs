//! The operator CLI: `herald campaign ...`, `herald channel ...` and `herald suppression ...` talk to
//! the HTTP API, `herald events tail` and `herald dlq ...` read JetStream directly.
//!
//! Output is a table for people by default and the API's JSON with `--json`.
//! Exit codes: 0 on success, 1 when the API answers with an error or something
//! else fails (network, files, NATS), 2 for a usage error (clap's own code too).
//! Errors go to stderr; with `--json` the API's error document also goes to
//! stdout, so scripts can read `.error.code`.

pub mod acks;
pub mod campaign;
pub mod channel;
pub mod dlq;
pub mod events;
pub mod progress_line;
pub mod retry;
pub mod sse;
pub mod suppression;
pub mod watch;

use std::io::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::{ContentArrangement, Table};
use herald_core::bus::Bus;
use herald_core::config::CommonConfig;
use serde_json::Value;

/// Exit code for an API error or any other failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for a usage error, as clap uses.
pub const EXIT_USAGE: i32 = 2;

/// Why a CLI command failed.
#[derive(Debug)]
pub enum CliError {
    /// Flags or arguments that cannot work (exit 2).
    Usage(String),
    /// The API answered with an error document (exit 1).
    Api {
        status: u16,
        code: String,
        message: String,
        body: Value,
    },
    /// Anything else: the network, a file, NATS (exit 1).
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        CliError::Failed(error)
    }
}

impl CliError {
    pub fn failed(message: impl std::fmt::Display) -> Self {
        CliError::Failed(anyhow::anyhow!("{message}"))
    }
}

/// Prints the outcome of a command and gives its exit code. Flushes stdout,
/// because the caller ends the process with `std::process::exit`.
pub fn finish(result: Result<(), CliError>, json: bool) -> i32 {
    let code = match result {
        Ok(()) => 0,
        Err(CliError::Usage(message)) => {
            eprintln!("herald: {message}");
            EXIT_USAGE
        }
        Err(CliError::Api {
            status,
            code,
            message,
            body,
        }) => {
            if json {
                println!("{}", pretty(&body));
            }
            eprintln!("herald: {message} ({code}, HTTP {status})");
            EXIT_FAILURE
        }
        Err(CliError::Failed(error)) => {
            eprintln!("herald: {error:#}");
            EXIT_FAILURE
        }
    };
    let _ = std::io::stdout().flush();
    code
}

/// Where the API is and who we are: shared by every `herald campaign` command.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the Herald HTTP API.
    #[arg(
        long,
        env = "HERALD_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api_url: String,

    /// API token (`herald tokens create --tenant NAME` prints one).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A small client of the Herald HTTP API with its error shape.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// Plain requests get this long; imports and progress streams have no limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl ApiClient {
    pub fn new(args: &ApiArgs) -> Result<Self, CliError> {
        let token = args
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                CliError::Usage(
                    "no API token: pass --token or set HERALD_TOKEN \
                     (`herald tokens create --tenant NAME` makes one)"
                        .into(),
                )
            })?
            .to_owned();
        let base = args.api_url.trim().trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| CliError::Usage(format!("--api-url {base:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CliError::Usage(format!(
                "--api-url {base:?} must be an http or https URL"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("herald-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                CliError::Failed(anyhow::Error::new(e).context("building the HTTP client"))
            })?;
        Ok(Self { http, base, token })
    }

    /// A request to `path` (which starts with `/`), authenticated, without a timeout.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends a plain request (with the default timeout) and returns its JSON body.
    /// Lists `path` with cursor pages of `limit`: one page from `cursor`, or
    /// with `all` every page after it. Returns the items and the cursor of the
    /// next page (`None` after the last). `filters` go on every page's query.
    pub async fn list_pages(
        &self,
        path: &str,
        filters: &[(&str, String)],
        limit: u32,
        mut cursor: Option<String>,
        all: bool,
    ) -> Result<(Vec<Value>, Option<String>), CliError> {
        let mut items = Vec::new();
        loop {
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            query.extend(filters.iter().cloned());
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor.clone()));
            }
            let page = self
                .call(self.request(reqwest::Method::GET, path).query(&query))
                .await?;
            if let Some(page_items) = page["items"].as_array() {
                items.extend(page_items.iter().cloned());
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if !all || cursor.is_none() {
                return Ok((items, cursor));
            }
        }
    }

    pub async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, CliError> {
        self.send(request.timeout(REQUEST_TIMEOUT)).await
    }

    /// Sends a request as is and returns its JSON body, or the API's error.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let response = self.connect(request).await?;
        let text = response.text().await.map_err(|e| {
            CliError::Failed(anyhow::Error::new(e).context("reading the API's response"))
        })?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            CliError::failed(format!(
                "the API answered with something that is not JSON ({e}): {}",
                truncate(&text, 200)
            ))
        })
    }

    /// Sends a request and returns the response if it is a success, or the API's error.
    pub async fn connect(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CliError> {
        let response = request.send().await.map_err(|e| {
            CliError::Failed(
                anyhow::Error::new(e)
                    .context(format!("cannot reach the Herald API at {}", self.base)),
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Err(api_error(status, &text))
    }
}

/// Turns an error response into [`CliError::Api`], whatever its body looks like.
pub fn api_error(status: reqwest::StatusCode, text: &str) -> CliError {
    let body: Value = serde_json::from_str(text).unwrap_or_else(
        |_| serde_json::json!({"error": {"code": "http_error", "message": truncate(text, 500)}}),
    );
    let detail = &body["error"];
    let code = detail["code"].as_str().unwrap_or("http_error").to_owned();
    let mut message = detail["message"]
        .as_str()
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_owned()
        });
    if let (Some(from), Some(to)) = (detail["from"].as_str(), detail["to"].as_str()) {
        if !message.contains(from) {
            message = format!("{message} (from {from} to {to})");
        }
    }
    CliError::Api {
        status: status.as_u16(),
        code,
        message,
        body,
    }
}

/// Cuts `text` to at most `max` characters, marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// comfy-table preset: no borders, one rule under the header (like `kubectl get`).
const HEADER_RULE_ONLY: &str = "    ───            ";

/// A table in the CLI's one style.
pub fn table() -> Table {
    let mut table = Table::new();
    table
        .load_preset(HEADER_RULE_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic);
    table
}

/// `2026-05-01 10:00:00Z` from an RFC 3339 string; the input as is if it is not one.
pub fn short_time(value: &Value) -> String {
    match value.as_str() {
        None => "-".into(),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| format_time(t.with_timezone(&Utc)))
            .unwrap_or_else(|_| text.to_owned()),
    }
}

pub fn format_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// A JSON value as a table cell: strings without quotes, null as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Connects to NATS for the JetStream commands, failing fast when the server is
/// not there (the bus itself would keep retrying forever, as services want).
pub async fn connect_bus(common: &CommonConfig) -> Result<Bus, CliError> {
    let bus = Bus::connect(common, "herald-cli").await?;
    let url = herald_core::config::redact_url(&common.nats_url);
    match tokio::time::timeout(Duration::from_secs(5), bus.client.flush()).await {
        Ok(Ok(())) => Ok(bus),
        Ok(Err(error)) => Err(CliError::failed(format!(
            "cannot reach NATS at {url}: {error}"
        ))),
        Err(_) => Err(CliError::failed(match bus.last_connection_error() {
            Some(error) => format!("cannot reach NATS at {url} within 5 s: {error}"),
            None => format!("cannot reach NATS at {url} (no answer within 5 s)"),
        })),
    }
}

/// Opens a stream by name, explaining the usual reason it is missing.
pub async fn open_stream(
    bus: &Bus,
    name: &str,
) -> Result<async_nats::jetstream::stream::Stream, CliError> {
    bus.js.get_stream(name).await.map_err(|error| {
        CliError::failed(format!(
            "cannot open stream {name}: {error}. Has `herald api` started once, and do \
             --stream-prefix/HERALD_STREAM_PREFIX match the services?"
        ))
    })
}
