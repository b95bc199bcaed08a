//! `herald campaign pause|stop ID --wait applied|drained [--timeout-ms N]`: the
//! acknowledged pause and stop, and how their replicas' acks are printed.

use clap::{Args, ValueEnum};
use serde_json::Value;

use super::campaign::TransitionArgs;
use super::{cell, short_time, table};

/// What an acknowledged pause or stop waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WaitFor {
    /// Every live packer and sender replica has applied it.
    Applied,
    /// ...and no request of the campaign is in flight on any replica.
    Drained,
}

/// A pause or stop, optionally acknowledged.
#[derive(Debug, Clone, Args)]
pub struct HaltArgs {
    #[command(flatten)]
    pub transition: TransitionArgs,
    /// Answer once every live replica has applied it (`applied`) or also has
    /// nothing of the campaign in flight (`drained`), and print their acks.
    #[arg(long, value_enum)]
    pub wait: Option<WaitFor>,
    /// How long the API waits for the replicas, in ms (1 to 30000; default 2000).
    #[arg(long, requires = "wait", value_parser = clap::value_parser!(u64).range(1..=30000))]
    pub timeout_ms: Option<u64>,
}

impl HaltArgs {
    /// The query of the transition request.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(wait) = self.wait {
            let wait = match wait {
                WaitFor::Applied => "applied",
                WaitFor::Drained => "drained",
            };
            query.push(("wait", wait.to_owned()));
        }
        if let Some(ms) = self.timeout_ms {
            query.push(("timeout_ms", ms.to_string()));
        }
        query
    }
}

/// Prints `acks` of a transition's answer as a table, one row per replica.
pub fn print_acks(acks: &Value) {
    let (replicas, missing) = (items(&acks["replicas"]), items(&acks["missing"]));
    println!(
        "wait {}: {} acked, {} missing (waited {} of {} ms)",
        cell(&acks["wait"]),
        replicas.len(),
        missing.len(),
        cell(&acks["waited_ms"]),
        cell(&acks["timeout_ms"]),
    );
    let mut rows = table();
    rows.set_header(["REPLICA", "SERVICE", "APPLIED AT", "IN FLIGHT", "MISSING"]);
    for replica in replicas {
        let reason = missing
            .iter()
            .find(|m| {
                m["replica_id"] == replica["replica_id"] && m["service"] == replica["service"]
            })
            .map_or_else(|| "-".to_owned(), |m| cell(&m["reason"]));
        rows.add_row([
            cell(&replica["replica_id"]),
            cell(&replica["service"]),
            short_time(&replica["applied_at"]),
            cell(&replica["in_flight"]),
            reason,
        ]);
    }
    for gone in missing.iter().filter(|m| {
        !replicas
            .iter()
            .any(|r| r["replica_id"] == m["replica_id"] && r["service"] == m["service"])
    }) {
        rows.add_row([
            cell(&gone["replica_id"]),
            cell(&gone["service"]),
            "-".into(),
            "-".into(),
            cell(&gone["reason"]),
        ]);
    }
    println!("{rows}");
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}
