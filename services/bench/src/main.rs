//! `herald-bench`: runs the benchmark scenarios, prints their tables and writes
//! the same figures as JSON (`--json-out`). See docs/BENCHMARKS.md.

use clap::Parser;
use herald_bench::{Cli, Command};

// mimalloc instead of glibc malloc: the services allocate per request, and glibc
// spent ~16% of a sender's CPU in malloc/free plus waits on its arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Loadgen(load) => return herald_bench::loadgen::loadgen_main(load).await,
        ref command => command.bench_args().cloned().expect("a scenario command"),
    };
    init_logging(&args.log);
    if let Command::Cleanup(_) = cli.command {
        let dropped = herald_bench::env::cleanup_leftovers(&args).await?;
        eprintln!(
            "dropped {} leftover database(s) and their streams",
            dropped.len()
        );
        for database in dropped {
            println!("{database}");
        }
        return Ok(());
    }
    let mut first = true;
    let report = herald_bench::run(&cli.command, &args, |report, scenario| {
        if std::mem::take(&mut first) {
            println!("{}\n", report.machine.describe());
        }
        println!("{}", scenario.table());
        // Rewritten after every scenario, so a failure later keeps what was measured.
        if let Some(path) = &args.json_out {
            std::fs::write(path, serde_json::to_string_pretty(&report.to_json())?)?;
        }
        Ok(())
    })
    .await?;
    if let Some(path) = &args.json_out {
        eprintln!(
            "{} scenario(s) written to {}",
            report.scenarios.len(),
            path.display()
        );
    }
    Ok(())
}
