//! `herald suppression ...`: add addresses to the tenant's suppression list
//! (opt-outs), list it and remove addresses, through the HTTP API
//! (`/v1/suppressions`).

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde_json::{Value, json};

use super::{ApiArgs, ApiClient, CliError, cell, finish, pretty, short_time, table, truncate};

#[derive(Debug, Args)]
pub struct SuppressionArgs {
    #[command(flatten)]
    pub api: ApiArgs,

    #[command(subcommand)]
    pub command: SuppressionCommand,
}

#[derive(Debug, Subcommand)]
pub enum SuppressionCommand {
    /// Add addresses, or a CSV file of them; addresses already listed stay as they are.
    Add(AddArgs),
    /// List the suppression list, in address order.
    List {
        /// Only this address (normalised as on import).
        #[arg(long)]
        address: Option<String>,
        /// Entries per page (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Follow every page.
        #[arg(long)]
        all: bool,
    },
    /// Remove an address from the list, so campaigns send to it again.
    Delete { address: String },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("entries").required(true).args(["addresses", "file"])))]
pub struct AddArgs {
    /// Addresses to suppress (E.164 phone numbers, e-mail addresses, ...).
    pub addresses: Vec<String>,
    /// Why, for every address given as an argument (default `opted_out`).
    #[arg(long, conflicts_with = "file")]
    pub reason: Option<String>,
    /// A CSV file with an `address` column and an optional `reason` column,
    /// streamed from disk (`-` reads standard input).
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// The JSON body for addresses given as arguments.
fn entries_body(addresses: &[String], reason: Option<&str>) -> Value {
    let entries: Vec<Value> = addresses
        .iter()
        .map(|address| match reason {
            Some(reason) => json!({"address": address, "reason": reason}),
            None => json!({"address": address}),
        })
        .collect();
    json!({ "entries": entries })
}

/// `/v1/suppressions/<address>`, the address percent-encoded as one segment.
fn entry_path(address: &str) -> String {
    format!(
        "/v1/suppressions/{}",
        utf8_percent_encode(address, NON_ALPHANUMERIC)
    )
}

/// Runs a `herald suppression` command and returns the process exit code.
pub async fn run(args: SuppressionArgs) -> i32 {
    let json = args.api.json;
    let result = async {
        let client = ApiClient::new(&args.api)?;
        execute(&client, args.command, json).await
    }
    .await;
    finish(result, json)
}

async fn execute(
    client: &ApiClient,
    command: SuppressionCommand,
    json: bool,
) -> Result<(), CliError> {
    match command {
        SuppressionCommand::Add(add) => {
            let result = match &add.file {
                Some(file) => upload(client, file).await?,
                None => {
                    let body = entries_body(&add.addresses, add.reason.as_deref());
                    client
                        .call(client.request(Method::POST, "/v1/suppressions").json(&body))
                        .await?
                }
            };
            print_result(&result, json);
        }
        SuppressionCommand::List {
            address,
            limit,
            cursor,
            all,
        } => {
            let filters: Vec<(&str, String)> =
                address.into_iter().map(|a| ("address", a)).collect();
            let (items, next) = client
                .list_pages("/v1/suppressions", &filters, limit, cursor, all)
                .await?;
            print_list(&items, next, json);
        }
        SuppressionCommand::Delete { address } => {
            client
                .call(client.request(Method::DELETE, &entry_path(&address)))
                .await?;
            if json {
                println!("{}", pretty(&json!({"address": address, "deleted": true})));
            } else {
                println!("{address}: removed from the suppression list");
            }
        }
    }
    Ok(())
}

/// Streams the CSV from disk (or stdin) without reading it into memory.
async fn upload(client: &ApiClient, file: &std::path::Path) -> Result<Value, CliError> {
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
        .request(Method::POST, "/v1/suppressions")
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(body);
    client.send(request).await
}

fn print_result(result: &Value, json: bool) {
    if json {
        println!("{}", pretty(result));
        return;
    }
    println!(
        "added {}, already present {}, rejected {}",
        cell(&result["added"]),
        cell(&result["already_present"]),
        cell(&result["rejected"])
    );
    let Some(rows) = result["rejected_rows"].as_array().filter(|r| !r.is_empty()) else {
        return;
    };
    let mut out = table();
    out.set_header(["ROW", "REASON"]);
    for row in rows {
        out.add_row([cell(&row["row"]), cell(&row["reason"])]);
    }
    println!("{out}");
}

fn print_list(items: &[Value], next: Option<String>, json: bool) {
    if json {
        println!("{}", pretty(&json!({"items": items, "next_cursor": next})));
        return;
    }
    if items.is_empty() {
        println!("no suppressions");
        return;
    }
    let mut out = table();
    out.set_header(["ADDRESS", "REASON", "SOURCE", "ADDED"]);
    for item in items {
        out.add_row([
            cell(&item["address"]),
            truncate(&cell(&item["reason"]), 60),
            cell(&item["source"]),
            short_time(&item["created_at"]),
        ]);
    }
    println!("{out}");
    if let Some(next) = next {
        eprintln!("more: --cursor {next} (or --all)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_applies_to_every_address_given_as_an_argument() {
        let addresses = ["+15550001".to_owned(), "ana@example.com".to_owned()];
        assert_eq!(
            entries_body(&addresses, Some("replied STOP")),
            json!({"entries": [
                {"address": "+15550001", "reason": "replied STOP"},
                {"address": "ana@example.com", "reason": "replied STOP"}
            ]})
        );
        assert_eq!(
            entries_body(&addresses[..1], None),
            json!({"entries": [{"address": "+15550001"}]})
        );
    }

    #[test]
    fn the_delete_path_encodes_the_address_as_one_segment() {
        assert_eq!(
            entry_path("+1 555/0@x"),
            "/v1/suppressions/%2B1%20555%2F0%40x"
        );
    }
}
