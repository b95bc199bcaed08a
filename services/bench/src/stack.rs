//! The services of one run, in this process: an api and packer and sender
//! replicas, each a separate service instance with its own Postgres pool and its
//! own NATS connection, as they would be as separate processes.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use herald_api::ApiConfig;
use herald_core::CancellationToken;
use herald_core::control::ControlConfig;
use herald_packer::{Packer, PackerConfig};
use herald_sender::{Sender, SenderConfig};
use tokio::task::JoinHandle;

use crate::api_client::{ApiClient, wait_healthy};
use crate::args::BenchArgs;
use crate::env::BenchEnv;

/// Sender settings from the command line; production defaults otherwise (status
/// TTL 5 s unless `--status-ttl-ms`, lease 30 s, retries from 1 s).
pub fn sender_config(args: &BenchArgs, fast_path: bool) -> SenderConfig {
    let defaults = SenderConfig::default();
    SenderConfig {
        concurrency: args.sender_concurrency.max(1),
        batches_in_flight: args.sender_batches.max(1),
        status_ttl_ms: args.status_ttl_ms.unwrap_or(defaults.status_ttl_ms),
        control: ControlConfig {
            control_fast_path: fast_path,
            ..ControlConfig::default()
        },
        ..defaults
    }
}

/// Packer settings from the command line (batch size, `--pack-window`);
/// production defaults otherwise (pack window 16).
pub fn packer_config(args: &BenchArgs, fast_path: bool) -> PackerConfig {
    let defaults = PackerConfig::default();
    PackerConfig {
        batch_size: args.batch_size.max(1),
        pack_window: args.pack_window.unwrap_or(defaults.pack_window).max(1),
        control: ControlConfig {
            control_fast_path: fast_path,
            ..ControlConfig::default()
        },
        ..defaults
    }
}

/// An api, packers and senders running in this process until [`InProcessStack::stop`].
#[derive(Debug)]
pub struct InProcessStack {
    pub client: ApiClient,
    pub senders: Vec<Sender>,
    pub packers: Vec<Packer>,
    fast_path: bool,
    env: BenchEnv,
    shutdown: CancellationToken,
    handles: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl InProcessStack {
    pub async fn start(
        env: &BenchEnv,
        packers: usize,
        senders: usize,
        packer: PackerConfig,
        sender: SenderConfig,
    ) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut api_common = env.replica("api-0");
        // The api serves the load scenario's connections, like a production api.
        api_common.db_max_connections = 16;
        let api_config = ApiConfig {
            listen: addr,
            ..ApiConfig::default()
        };
        let mut handles = vec![tokio::spawn(herald_api::run_with_listener(
            api_common,
            api_config,
            listener,
            shutdown.clone(),
        ))];
        let base_url = format!("http://{addr}");
        wait_healthy(&base_url, Duration::from_secs(30)).await?;
        let fast_path = sender.control.control_fast_path;
        let mut stack = Self {
            client: ApiClient::new(&base_url, ""),
            senders: Vec::new(),
            packers: Vec::new(),
            fast_path,
            env: env.clone(),
            shutdown: shutdown.clone(),
            handles: Vec::new(),
        };
        for i in 0..packers {
            let p = Packer::connect(&env.replica(&format!("packer-{i}")), packer.clone()).await?;
            handles.push(tokio::spawn(p.clone().run(shutdown.clone())));
            stack.packers.push(p);
        }
        for i in 0..senders {
            let s = Sender::connect(&env.replica(&format!("sender-{i}")), sender.clone()).await?;
            handles.push(tokio::spawn(s.clone().run(shutdown.clone())));
            stack.senders.push(s);
        }
        stack.handles = handles;
        let pool = env.pool()?;
        let (_, token) = herald_core::auth::create_token(&pool, "bench").await?;
        pool.close().await;
        stack.client = ApiClient::new(&base_url, &token);
        stack.wait_ready().await?;
        Ok(stack)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let sender_ids: Vec<String> = self
            .senders
            .iter()
            .map(|s| s.replica_id().to_owned())
            .collect();
        let packer_ids: Vec<String> = self
            .packers
            .iter()
            .map(|p| p.replica_id().to_owned())
            .collect();
        wait_for_consumers(&self.env, &sender_ids, &packer_ids, self.fast_path).await
    }

    /// Stops every service and waits for them, then checks none failed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut failure = None;
        for handle in self.handles {
            match tokio::time::timeout(Duration::from_secs(40), handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => failure = Some(error),
                Ok(Err(join)) => failure = Some(anyhow::anyhow!("service panicked: {join}")),
                Err(_) => failure = Some(anyhow::anyhow!("a service did not stop in 40 s")),
            }
        }
        match failure {
            Some(error) => Err(error).context("a service failed"),
            None => Ok(()),
        }
    }
}

/// Starts the services of one run on `env`, runs `body` against them, and stops
/// them whatever `body` returned. A failing body is reported before a failing
/// shutdown (which is usually its consequence). The sink, if any, belongs to the
/// caller, which may still read it after the services have stopped.
pub async fn with_stack<T>(
    env: &BenchEnv,
    args: &BenchArgs,
    packers: usize,
    senders: usize,
    fast_path: bool,
    body: impl AsyncFnOnce(&InProcessStack) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let packer = packer_config(args, fast_path);
    let sender = sender_config(args, fast_path);
    with_stack_configs(env, packers, senders, packer, sender, body).await
}

/// [`with_stack`] with explicit service settings (a scenario's own status TTL or
/// pack window).
pub async fn with_stack_configs<T>(
    env: &BenchEnv,
    packers: usize,
    senders: usize,
    packer: PackerConfig,
    sender: SenderConfig,
    body: impl AsyncFnOnce(&InProcessStack) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let stack = InProcessStack::start(env, packers, senders, packer, sender).await?;
    let result = body(&stack).await;
    let stopped = stack.stop().await;
    let value = result?;
    stopped?;
    Ok(value)
}

/// Waits until every worker has its consumers: the shared work durables with a
/// pull from each replica and, with the fast path, each replica's control durable.
/// A control message published before a replica's durable exists never reaches it.
pub async fn wait_for_consumers(
    env: &BenchEnv,
    sender_ids: &[String],
    packer_ids: &[String],
    fast_path: bool,
) -> anyhow::Result<()> {
    let bus = env.bus().await?;
    let mut names: Vec<String> = Vec::new();
    if fast_path {
        names.extend(sender_ids.iter().map(|id| format!("ctl_sender_{id}")));
        names.extend(packer_ids.iter().map(|id| format!("ctl_packer_{id}")));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    'wait: loop {
        if Instant::now() >= deadline {
            bail!("the workers' consumers did not appear within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(control) = bus.js.get_stream(&bus.streams.control).await else {
            continue;
        };
        for name in &names {
            if control.consumer_info(name).await.is_err() {
                continue 'wait;
            }
        }
        let Ok(work) = bus.js.get_stream(&bus.streams.work).await else {
            continue;
        };
        for (durable, replicas) in [("sender", sender_ids.len()), ("packer", packer_ids.len())] {
            let Ok(info) = work.consumer_info(durable).await else {
                continue 'wait;
            };
            if info.num_waiting < replicas {
                continue 'wait;
            }
        }
        return Ok(());
    }
}
