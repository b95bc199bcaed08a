//! `herald`: one binary for every Herald service.
//!
//! `herald all` runs the api, a packer and a sender in one process (the laptop
//! default); `herald api|packer|sender` run one service each, so they can be scaled
//! out separately. Every setting is an environment variable and a flag
//! (`herald <command> --help`).

mod cli;

use clap::{Parser, Subcommand};
use herald_api::ApiConfig;
use herald_core::CancellationToken;
use herald_core::config::CommonConfig;
use herald_core::control::ControlConfig;
use herald_packer::PackerConfig;
use herald_sender::SenderConfig;

// mimalloc instead of glibc malloc: the services allocate per request, and glibc
// spent ~16% of a sender's CPU in malloc/free plus waits on its arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Outbound message campaigns with a pause that really pauses"
)]
struct Cli {
    /// Log format: `text` or `json`.
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if needed and apply migrations, then exit.
    Migrate {
        #[command(flatten)]
        common: CommonConfig,
    },
    /// Run the HTTP API, the outbox relay and the scheduler.
    Api {
        #[command(flatten)]
        common: CommonConfig,
        #[command(flatten)]
        api: ApiConfig,
    },
    /// Run one packer replica.
    Packer {
        #[command(flatten)]
        common: CommonConfig,
        #[command(flatten)]
        packer: PackerConfig,
        #[command(flatten)]
        control: ControlConfig,
    },
    /// Run one sender replica.
    Sender {
        #[command(flatten)]
        common: CommonConfig,
        #[command(flatten)]
        sender: SenderConfig,
        #[command(flatten)]
        control: ControlConfig,
    },
    /// Run the api, one packer and one sender in this process.
    All {
        #[command(flatten)]
        common: CommonConfig,
        #[command(flatten)]
        api: ApiConfig,
        #[command(flatten)]
        packer: PackerConfig,
        #[command(flatten)]
        sender: SenderConfig,
        #[command(flatten)]
        control: ControlConfig,
    },
    /// Manage API tokens.
    Tokens {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Operate campaigns through the HTTP API: create, import, start, watch, ...
    Campaign(cli::campaign::CampaignArgs),
    /// Operate channels through the HTTP API: create, list, show, update, delete.
    Channel(cli::channel::ChannelArgs),
    /// Manage the tenant's suppression list (opt-outs) through the HTTP API: add, list, delete.
    Suppression(cli::suppression::SuppressionArgs),
    /// Read lifecycle events straight from JetStream.
    Events(cli::events::EventsArgs),
    /// List and replay dead letters.
    Dlq(cli::dlq::DlqArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token for a tenant (created if new). The token is printed once.
    Create {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        common: CommonConfig,
    },
}

fn init_logging(format: &str, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colours only for a person at a terminal: a log file or a collector gets
    // plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    token
}

/// Each service gets its own replica id suffix, so `all` has distinct consumers.
fn for_service(common: &CommonConfig, base_replica_id: &str, service: &str) -> CommonConfig {
    let mut common = common.clone();
    common.replica_id = Some(format!("{base_replica_id}-{service}"));
    // In one process the api's /metrics already covers every service.
    common.metrics_listen = None;
    common
}

async fn run_all(
    common: CommonConfig,
    api: ApiConfig,
    packer: PackerConfig,
    sender: SenderConfig,
) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    // Migrate first so the workers do not race the api on an empty database.
    herald_core::db::migrate_with_retry(&common, &shutdown).await?;
    let base = common.replica_id();
    // One service failing (e.g. streams of another installation) stops the others.
    let stop_all_on_error = |service: tokio::task::JoinHandle<anyhow::Result<()>>| {
        let shutdown = shutdown.clone();
        async move {
            let result = service.await.map_err(anyhow::Error::from).and_then(|r| r);
            if result.is_err() {
                shutdown.cancel();
            }
            result
        }
    };
    let api_task = stop_all_on_error(tokio::spawn(herald_api::run(
        common.clone(),
        api,
        shutdown.clone(),
    )));
    let packer_task = stop_all_on_error(tokio::spawn(herald_packer::run(
        for_service(&common, &base, "packer"),
        packer,
        shutdown.clone(),
    )));
    let sender_task = stop_all_on_error(tokio::spawn(herald_sender::run(
        for_service(&common, &base, "sender"),
        sender,
        shutdown.clone(),
    )));
    let results = tokio::join!(api_task, packer_task, sender_task);
    shutdown.cancel();
    // The root cause first: the others only saw the shutdown it caused.
    let errors = [results.0, results.1, results.2]
        .into_iter()
        .filter_map(Result::err)
        .collect::<Vec<_>>();
    match errors
        .iter()
        .position(herald_core::installation::is_conflict)
    {
        Some(index) => Err(errors.into_iter().nth(index).expect("present")),
        None => errors.into_iter().next().map_or(Ok(()), Err),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Services log at info; the operator CLI keeps stderr for its own messages.
    let default_level = match cli.command {
        Command::Campaign(_)
        | Command::Channel(_)
        | Command::Suppression(_)
        | Command::Events(_)
        | Command::Dlq(_)
        | Command::Tokens { .. } => "warn",
        _ => "info",
    };
    init_logging(&cli.log_format, default_level);
    herald_core::telemetry::install();
    match cli.command {
        Command::Migrate { common } => {
            herald_core::db::migrate(&common).await?;
            println!("migrations applied");
        }
        Command::Api { common, api } => herald_api::run(common, api, shutdown_on_signal()).await?,
        Command::Packer {
            common,
            mut packer,
            control,
        } => {
            packer.control = control;
            herald_packer::run(common, packer, shutdown_on_signal()).await?
        }
        Command::Sender {
            common,
            mut sender,
            control,
        } => {
            sender.control = control;
            herald_sender::run(common, sender, shutdown_on_signal()).await?
        }
        Command::All {
            common,
            api,
            mut packer,
            mut sender,
            control,
        } => {
            packer.control = control.clone();
            sender.control = control;
            run_all(common, api, packer, sender).await?
        }
        Command::Tokens {
            command: TokenCommand::Create { tenant, common },
        } => {
            herald_core::db::migrate(&common).await?;
            let pool = herald_core::db::pool(&common)?;
            let (tenant, token) = herald_core::auth::create_token(&pool, &tenant).await?;
            eprintln!(
                "Created a token for tenant {:?}. It is shown only this once:",
                tenant.name
            );
            println!("{token}");
        }
        // The operator CLI exits with its own codes (1 API error, 2 usage).
        Command::Campaign(args) => std::process::exit(cli::campaign::run(args).await),
        Command::Channel(args) => std::process::exit(cli::channel::run(args).await),
        Command::Suppression(args) => std::process::exit(cli::suppression::run(args).await),
        Command::Events(args) => std::process::exit(cli::events::run(args).await),
        Command::Dlq(args) => std::process::exit(cli::dlq::run(args).await),
    }
    Ok(())
}
