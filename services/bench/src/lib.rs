//! Herald's benchmark harness (`herald-bench`).
//!
//! Every scenario starts real services against the local Postgres and NATS: the
//! api, packer and sender replicas each as a separate service instance with its own
//! pool and NATS connection (in this process, or as separate `herald` processes for
//! the memory scenario). Each run gets a fresh database and fresh stream and subject
//! prefixes, which it drops afterwards. The message provider is a local HTTP sink
//! ([`sink::Sink`]).
//!
//! Every figure is reported next to a baseline measured in the same invocation, as a
//! ratio, so a number means something on whatever machine it was taken:
//!
//! | scenario | figure | baseline |
//! |---|---|---|
//! | `throughput` | end-to-end messages/s, 1..N senders | the sink alone; the ledger SQL alone |
//! | `pause` | pause apply latency, time to last send, overshoot | the same with the control fast path off |
//! | `fanout` | share of replicas applying each control message within 1 s | one shared durable for all replicas |
//! | `memory` | peak RSS per service at full scale | each service's idle RSS |
//! | `api` | requests/s, p99 and errors on transitions and reads | `GET /healthz` under the same load |
//! | `fairness` | a small campaign's first send and completion behind two big ones; two campaigns' rate ratio | the same with windowed packing off |
//! | `rate` | worst 1 s window and achieved rate against a channel's limit, 1 and N senders | the same campaigns unthrottled |

pub mod api_client;
pub mod args;
pub mod env;
pub mod loadgen;
pub mod machine;
pub mod processes;
pub mod report;
pub mod scenarios;
pub mod sink;
pub mod stack;
pub mod stats;

pub use args::{BenchArgs, Cli, Command};
pub use report::{Report, ScenarioReport};

/// Runs the scenarios a command names and returns their report. `on_progress` sees
/// the report after each scenario, so a long run shows (and can save) its results
/// as they come.
pub async fn run(
    command: &Command,
    args: &BenchArgs,
    mut on_progress: impl FnMut(&Report, &ScenarioReport) -> anyhow::Result<()>,
) -> anyhow::Result<Report> {
    let mut report = Report::new(machine::Machine::probe(args).await);
    let wanted: &[&str] = match command {
        Command::All(_) => &[
            "throughput",
            "pause",
            "fanout",
            "memory",
            "api",
            "fairness",
            "rate",
            "receipts",
        ],
        Command::Throughput(_) => &["throughput"],
        Command::Pause(_) => &["pause"],
        Command::Fanout(_) => &["fanout"],
        Command::Memory(_) => &["memory"],
        Command::Api(_) => &["api"],
        Command::Fairness(_) => &["fairness"],
        Command::Rate(_) => &["rate"],
        Command::Receipts(_) => &["receipts"],
        Command::Loadgen(_) | Command::Cleanup(_) => anyhow::bail!("not a scenario"),
    };
    for name in wanted {
        eprintln!("== {name}");
        let load_before = machine::load_average();
        let mut scenario = match *name {
            "throughput" => scenarios::throughput::run(args).await?,
            "pause" => scenarios::pause::run(args).await?,
            "fanout" => scenarios::fanout::run(args).await?,
            "memory" => scenarios::memory::run(args).await?,
            "api" => scenarios::api_load::run(args).await?,
            "fairness" => scenarios::fairness::run(args).await?,
            "rate" => scenarios::rate::run(args).await?,
            "receipts" => scenarios::receipts::run(args).await?,
            other => anyhow::bail!("unknown scenario {other}"),
        };
        // The machine may be shared: say how busy it was, so a figure taken under
        // someone else's load is not mistaken for Herald's.
        scenario.note(format!(
            "Load average (1 min) at start and end: {load_before} and {}.",
            machine::load_average()
        ));
        report.scenarios.push(scenario.clone());
        on_progress(&report, &scenario)?;
    }
    Ok(report)
}
