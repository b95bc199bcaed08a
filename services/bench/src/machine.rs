//! What the figures were measured on: CPUs, memory, and the server versions.

use serde::Serialize;

use crate::args::BenchArgs;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub postgres: String,
    pub nats: String,
    pub build: &'static str,
}

fn read_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

impl Machine {
    /// Reads /proc and asks both servers for their versions; unknown stays "unknown".
    pub async fn probe(args: &BenchArgs) -> Self {
        let memory_kib: f64 = read_field("/proc/meminfo", "MemTotal")
            .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let postgres = async {
            let pool =
                sqlx::PgPool::connect(&format!("{}/postgres", args.postgres.trim_end_matches('/')))
                    .await
                    .ok()?;
            let version: String = sqlx::query_scalar("SHOW server_version")
                .fetch_one(&pool)
                .await
                .ok()?;
            pool.close().await;
            Some(version)
        }
        .await;
        let nats = async {
            let servers = herald_core::config::parse_nats_servers(&args.nats_url).ok()?;
            let client = async_nats::connect(servers).await.ok()?;
            Some(client.server_info().version)
        }
        .await;
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: read_field("/proc/cpuinfo", "model name")
                .unwrap_or_else(|| "unknown".into()),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            postgres: postgres.unwrap_or_else(|| "unknown".into()),
            nats: nats.unwrap_or_else(|| "unknown".into()),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "machine: {} CPUs ({}), {} GiB; Postgres {}; NATS {}; {} build",
            self.cpus, self.cpu_model, self.memory_gib, self.postgres, self.nats, self.build
        )
    }
}

/// The 1-minute load average from /proc/loadavg ("?" when unreadable).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
