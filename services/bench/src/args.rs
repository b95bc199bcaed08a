//! Command line: one subcommand per scenario plus `all`, all sharing [`BenchArgs`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Benchmarks Herald against the local Postgres and NATS, each figure against a baseline"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every scenario, in order: throughput, pause, fanout, memory, api, fairness, rate, receipts.
    All(BenchArgs),
    /// End-to-end messages/s with 1..N senders, against the sink and ledger ceilings.
    Throughput(BenchArgs),
    /// Pause latency and overshoot, against the same with the control fast path off.
    Pause(BenchArgs),
    /// Share of replicas applying each control message, against one shared durable.
    Fanout(BenchArgs),
    /// Peak RSS of each service during a throughput run, against its idle RSS.
    Memory(BenchArgs),
    /// The API under load from a second process, against GET /healthz.
    Api(BenchArgs),
    /// A small campaign's wait behind two big ones, and two campaigns' shares,
    /// against the same with windowed packing off.
    Fairness(BenchArgs),
    /// A channel's per-second limit at the sink with 1 and N senders, against the
    /// same campaigns unthrottled.
    Rate(BenchArgs),
    /// Delivery receipts into the ledger through the receipts endpoint, batched
    /// and one per request, against the same requests for unknown ids.
    Receipts(BenchArgs),
    /// Drops what interrupted runs left behind: idle `herald_bench_*` databases and
    /// their streams.
    Cleanup(BenchArgs),
    /// (internal) The built-in HTTP load generator, run as a child process.
    #[command(hide = true)]
    Loadgen(crate::loadgen::LoadgenArgs),
}

impl Command {
    pub fn bench_args(&self) -> Option<&BenchArgs> {
        match self {
            Command::All(a)
            | Command::Throughput(a)
            | Command::Pause(a)
            | Command::Fanout(a)
            | Command::Memory(a)
            | Command::Api(a)
            | Command::Fairness(a)
            | Command::Rate(a)
            | Command::Receipts(a)
            | Command::Cleanup(a) => Some(a),
            Command::Loadgen(_) => None,
        }
    }
}

/// How the memory scenario runs the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MemoryMode {
    /// Separate `herald` processes if `--herald-bin` exists, else in-process.
    Auto,
    /// `herald api|packer|sender` as separate OS processes, sampled per process.
    Process,
    /// In this process: only the whole process's peak can be reported.
    InProcess,
}

/// Which program drives the API scenario's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadTool {
    /// `wrk` if it is on PATH, else the built-in generator.
    Auto,
    Wrk,
    /// `herald-bench loadgen` as a child process (reqwest, closed loop).
    Builtin,
}

/// Settings shared by every scenario. Scale flags left unset take each scenario's
/// own default (shown in brackets).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Recipients per campaign [throughput, memory: 1000000; pause: 200000;
    /// fanout background campaign: 20000; api: 1000 per campaign; fairness: 200000
    /// per big campaign; rate: not used, see --rate-seconds; receipts: 100000].
    #[arg(long)]
    pub recipients: Option<u64>,

    /// Sender replica counts to measure throughput with; the largest is used by
    /// the pause, fanout, memory and api scenarios.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub senders: Vec<usize>,

    /// Packer replicas.
    #[arg(long, default_value_t = 2)]
    pub packers: usize,

    /// Write every figure as JSON to this file (the table goes to standard output).
    #[arg(long)]
    pub json_out: Option<PathBuf>,

    /// Provider requests in flight per sender (HERALD_SENDER_CONCURRENCY).
    #[arg(long, default_value_t = 32)]
    pub sender_concurrency: usize,

    /// Send batches at once per sender (HERALD_SENDER_BATCHES).
    #[arg(long, default_value_t = 4)]
    pub sender_batches: usize,

    /// Recipients per send batch (HERALD_BATCH_SIZE).
    #[arg(long, default_value_t = 500)]
    pub batch_size: i64,

    /// Postgres server, without a database: each run creates and drops its own.
    #[arg(
        long,
        env = "HERALD_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub postgres: String,

    /// NATS server with JetStream.
    #[arg(
        long,
        env = "HERALD_BENCH_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Throughput runs: the sink ceiling and the end-to-end campaign are each
    /// measured this many times, interleaved, and reported as medians.
    #[arg(long, default_value_t = 3,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub throughput_runs: usize,

    /// Requests for the sink-alone baseline (at most --recipients).
    #[arg(long, default_value_t = 200_000)]
    pub sink_baseline_requests: u64,

    /// Rows for the ledger-alone baseline (at most --recipients).
    #[arg(long, default_value_t = 200_000)]
    pub ledger_baseline_rows: u64,

    /// Hold each claimed batch this long before marking it in the ledger baseline,
    /// as a sender does while it dispatches (0: claim and mark back to back).
    #[arg(long, default_value_t = 0)]
    pub ledger_hold_ms: u64,

    /// Pause/resume iterations with the control fast path on.
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,

    /// Pause/resume iterations with the fast path off (each waits out the status TTL).
    #[arg(long, default_value_t = 10)]
    pub baseline_iterations: usize,

    /// Sink response delay in the pause scenario, in ms, so requests are in flight
    /// when the pause lands (as with a real provider).
    #[arg(long, default_value_t = 20)]
    pub pause_sink_delay_ms: u64,

    /// Senders' status TTL (HERALD_STATUS_TTL_MS) in ms [pause: 1000, for both modes,
    /// so each pause can land at a random point of it cheaply; others: 5000].
    #[arg(long)]
    pub status_ttl_ms: Option<u64>,

    /// Pack window (HERALD_PACK_WINDOW) of the windowed runs [the default, 16].
    /// The fairness baseline always uses 1000000 (windowing off).
    #[arg(long)]
    pub pack_window: Option<u32>,

    /// Sink response delay in the fairness and rate scenarios, in ms [fairness: 0,
    /// rate: 20].
    #[arg(long)]
    pub sink_delay_ms: Option<u64>,

    /// Times the fairness scenario starts its small campaign, per mode.
    #[arg(long, default_value_t = 20)]
    pub tries: usize,

    /// How long the fairness scenario compares two campaigns' rates, in seconds.
    #[arg(long, default_value_t = 10)]
    pub share_seconds: u64,

    /// The rate scenario's channel limit (rate_limit.per_second), and the fairness
    /// scenario's throttled channel's.
    #[arg(long, default_value_t = 50)]
    pub rate_limit: u32,

    /// How long each throttled run of the rate scenario lasts at the limit: its two
    /// campaigns have `rate_limit x rate_seconds / 2` recipients each.
    #[arg(long, default_value_t = 20)]
    pub rate_seconds: u64,

    /// Control messages published in the fanout scenario.
    #[arg(long, default_value_t = 50)]
    pub messages: usize,

    /// Duration of each API load run, in seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,

    /// Open connections of the API load generator.
    #[arg(long, default_value_t = 32)]
    pub api_connections: usize,

    /// Campaigns the API load pauses, resumes and reads.
    #[arg(long, default_value_t = 10)]
    pub campaigns: usize,

    /// API load generator.
    #[arg(long, value_enum, default_value_t = LoadTool::Auto)]
    pub load_tool: LoadTool,

    /// How the memory scenario runs the services.
    #[arg(long, value_enum, default_value_t = MemoryMode::Auto)]
    pub memory_mode: MemoryMode,

    /// The `herald` binary for the process modes: the memory scenario's, and the pause
    /// scenario's answer under load (skipped when it does not exist).
    #[arg(long, default_value = "target/release/herald")]
    pub herald_bin: PathBuf,

    /// Log filter for the in-process services (HERALD_LOG syntax). sqlx's
    /// slow-statement warnings are off by default: the baselines' bulk inserts
    /// trip them on purpose.
    #[arg(long, default_value = "warn,sqlx::query=error")]
    pub log: String,
}

impl BenchArgs {
    /// The largest sender count, used by every scenario but throughput.
    pub fn max_senders(&self) -> usize {
        self.senders.iter().copied().max().unwrap_or(3).max(1)
    }

    pub fn recipients_or(&self, default: u64) -> u64 {
        self.recipients.unwrap_or(default).max(1)
    }
}
