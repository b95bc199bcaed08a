//! The services as separate `herald api|packer|sender` processes, configured
//! through the environment as in production: for the scenarios whose figures
//! depend on process boundaries (per-process memory, the pause answer under load).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::api_client::{ApiClient, wait_healthy};
use crate::args::BenchArgs;
use crate::env::BenchEnv;
use crate::stack::wait_for_consumers;

/// One `herald` child process.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub service: &'static str,
    pub pid: u32,
    child: Child,
}

fn spawn(
    bin: &Path,
    env: &BenchEnv,
    service: &'static str,
    name: &str,
    extra: &[(&str, String)],
    logs: &Path,
) -> anyhow::Result<Service> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    let mut command = Command::new(bin);
    command
        .arg(service)
        .env("DATABASE_URL", &env.common.database_url)
        .env("NATS_URL", &env.common.nats_url)
        .env("HERALD_SUBJECT_PREFIX", &env.common.subject_prefix)
        .env("HERALD_STREAM_PREFIX", &env.common.stream_prefix)
        .env("HERALD_REPLICA_ID", name)
        .env("HERALD_DB_MAX_CONNECTIONS", "10")
        .env("HERALD_CONTROL_FAST_PATH", "true")
        .env("HERALD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    for (key, value) in extra {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {} {service}", bin.display()))?;
    let pid = child.id().context("child pid")?;
    Ok(Service {
        name: name.to_owned(),
        service,
        pid,
        child,
    })
}

/// SIGTERM, then SIGKILL after 15 s. Only ever our own children, by pid.
async fn terminate(mut service: Service) {
    let _ = Command::new("kill")
        .args(["-TERM", &service.pid.to_string()])
        .status()
        .await;
    if tokio::time::timeout(Duration::from_secs(15), service.child.wait())
        .await
        .is_err()
    {
        let _ = service.child.kill().await;
    }
}

/// An api, `--packers` packers and the largest `--senders` count of senders, each
/// its own process, on the run's database and prefixes, with a token for the api.
#[derive(Debug)]
pub struct ProcessStack {
    pub services: Vec<Service>,
    pub base_url: String,
    pub client: ApiClient,
    logs: PathBuf,
}

impl ProcessStack {
    /// Starts them and waits until every worker has its consumers. Service logs go
    /// to a temp directory (printed), removed by [`ProcessStack::stop`] when
    /// `keep_logs` is false.
    pub async fn start(args: &BenchArgs, env: &BenchEnv, bin: &Path) -> anyhow::Result<Self> {
        let bin = std::fs::canonicalize(bin)
            .with_context(|| format!("the herald binary {} (build it first)", bin.display()))?;
        let logs = std::env::temp_dir().join(format!("herald-bench-{}", env.database));
        std::fs::create_dir_all(&logs)?;
        eprintln!("   service logs in {}", logs.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let api_env = [
            ("HERALD_LISTEN", format!("127.0.0.1:{port}")),
            ("HERALD_DB_MAX_CONNECTIONS", "16".into()),
        ];
        let mut services = vec![spawn(&bin, env, "api", "api-0", &api_env, &logs)?];
        let base_url = format!("http://127.0.0.1:{port}");
        let started = async {
            wait_healthy(&base_url, Duration::from_secs(30)).await?;
            let mut packer_ids = Vec::new();
            for i in 0..args.packers {
                let id = format!("packer-{i}");
                let extra = [("HERALD_BATCH_SIZE", args.batch_size.to_string())];
                services.push(spawn(&bin, env, "packer", &id, &extra, &logs)?);
                packer_ids.push(id);
            }
            let mut sender_ids = Vec::new();
            for i in 0..args.max_senders() {
                let id = format!("sender-{i}");
                let extra = [
                    (
                        "HERALD_SENDER_CONCURRENCY",
                        args.sender_concurrency.to_string(),
                    ),
                    ("HERALD_SENDER_BATCHES", args.sender_batches.to_string()),
                ];
                services.push(spawn(&bin, env, "sender", &id, &extra, &logs)?);
                sender_ids.push(id);
            }
            wait_for_consumers(env, &sender_ids, &packer_ids, true).await?;
            let pool = env.pool()?;
            let (_, token) = herald_core::auth::create_token(&pool, "bench").await?;
            pool.close().await;
            anyhow::Ok(token)
        }
        .await;
        match started {
            Ok(token) => Ok(Self {
                services,
                client: ApiClient::new(&base_url, &token),
                base_url,
                logs,
            }),
            Err(error) => {
                for service in services {
                    terminate(service).await;
                }
                Err(error)
            }
        }
    }

    /// Terminates every process; removes the logs unless `keep_logs`.
    pub async fn stop(self, keep_logs: bool) {
        for service in self.services {
            terminate(service).await;
        }
        if !keep_logs {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}
