//! Test harness for Herald's integration tests.
//!
//! Every test gets its own Postgres database and its own subject and stream
//! prefixes on the shared NATS, so tests run in parallel without seeing each
//! other. Tests that must stop NATS start a private `nats-server` on a free port
//! ([`NatsServer`]), or a whole JetStream cluster ([`NatsCluster`]); the shared
//! servers are never touched. The only double is the
//! message provider ([`ProviderDouble`]), a real local HTTP server.

mod api_client;
pub mod cluster;
mod fate;
pub mod faults;
mod nats_server;
mod provider;

pub use api_client::{ApiClient, call};
pub use cluster::NatsCluster;
pub use fate::assert_every_fate_accounted;
pub use nats_server::{NatsServer, nats_server_binary};
pub use provider::{ProviderDouble, RecordedRequest, Reply};

use std::net::TcpListener as StdListener;
use std::time::Duration;

use anyhow::Context as _;
use herald_api::ApiConfig;
use herald_core::CancellationToken;
use herald_core::bus::Bus;
use herald_core::config::CommonConfig;
use herald_packer::{Packer, PackerConfig};
use herald_sender::{Sender, SenderConfig};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// Shared Postgres server (admin connection, without database).
pub fn postgres_base_url() -> String {
    std::env::var("HERALD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn shared_nats_url() -> String {
    std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Logs to the test output when `HERALD_TEST_LOG` is set (e.g. `info`).
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("HERALD_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An isolated slice of the shared infrastructure for one test.
#[derive(Debug, Clone)]
pub struct TestEnv {
    pub common: CommonConfig,
    pub database: String,
}

impl TestEnv {
    /// A fresh database and fresh prefixes on the shared NATS.
    pub async fn new() -> Self {
        Self::with_nats(&shared_nats_url()).await
    }

    /// A fresh database and prefixes, on the given NATS server.
    pub async fn with_nats(nats_url: &str) -> Self {
        init_test_logging();
        let tag = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let database = format!("herald_test_{tag}");
        let mut common = CommonConfig::local_defaults();
        common.database_url = format!("{}/{database}", postgres_base_url());
        common.nats_url = nats_url.to_owned();
        common.subject_prefix = format!("t{tag}.");
        common.stream_prefix = format!("T{tag}");
        // Small pools: tests run in parallel against one shared server (max_connections 100).
        common.db_max_connections = 4;
        herald_core::db::migrate(&common)
            .await
            .expect("test database migrates");
        Self { common, database }
    }

    pub fn pool(&self) -> PgPool {
        herald_core::db::pool(&self.common).expect("pool")
    }

    /// The same settings with another replica id.
    pub fn replica(&self, id: &str) -> CommonConfig {
        let mut common = self.common.clone();
        common.replica_id = Some(id.to_owned());
        common
    }

    pub async fn bus(&self) -> Bus {
        Bus::connect(&self.common, "herald-test")
            .await
            .expect("nats client")
    }

    /// This test database's installation id.
    pub async fn installation(&self) -> Uuid {
        herald_core::installation::id(&self.pool())
            .await
            .expect("the installation id")
    }

    /// Provisions the streams for this database's installation (what the api
    /// does at startup).
    pub async fn provision(&self) -> Bus {
        let bus = self.bus().await;
        bus.provision(self.installation().await)
            .await
            .expect("streams provisioned");
        bus
    }

    /// Drops the database and the streams. Best effort.
    pub async fn cleanup(&self) {
        let bus = self.bus().await;
        if bus.is_connected()
            || tokio::time::timeout(Duration::from_secs(1), bus.client.flush())
                .await
                .is_ok()
        {
            for stream in bus.streams.all() {
                let _ = bus.js.delete_stream(stream).await;
            }
        }
        if let Ok(admin) = sqlx::PgPool::connect(&format!("{}/postgres", postgres_base_url())).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            )))
            .execute(&admin)
            .await;
        }
    }
}

/// An api running in this process on a free port.
#[derive(Debug)]
pub struct RunningApi {
    pub base_url: String,
    pub shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningApi {
    pub async fn start(common: CommonConfig, mut config: ApiConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        config.listen = addr;
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(herald_api::run_with_listener(
            common,
            config,
            listener,
            shutdown.clone(),
        ));
        let base_url = format!("http://{addr}");
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client
                .get(format!("{base_url}/healthz"))
                .send()
                .await
                .is_ok()
            {
                return Self {
                    base_url,
                    shutdown,
                    handle,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("api did not come up");
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }
}

/// Worker replicas running in this process, each with its own connections.
#[derive(Debug, Default)]
pub struct Workers {
    pub senders: Vec<Sender>,
    pub packers: Vec<Packer>,
    shutdown: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Workers {
    pub async fn start(
        env: &TestEnv,
        packers: usize,
        senders: usize,
        packer: PackerConfig,
        sender: SenderConfig,
    ) -> Self {
        let mut workers = Workers::default();
        for i in 0..packers {
            let common = env.replica(&format!("packer-{i}"));
            let p = Packer::connect(&common, packer.clone())
                .await
                .expect("packer connects");
            workers
                .handles
                .push(tokio::spawn(p.clone().run(workers.shutdown.clone())));
            workers.packers.push(p);
        }
        for i in 0..senders {
            let common = env.replica(&format!("sender-{i}"));
            let s = Sender::connect(&common, sender.clone())
                .await
                .expect("sender connects");
            workers
                .handles
                .push(tokio::spawn(s.clone().run(workers.shutdown.clone())));
            workers.senders.push(s);
        }
        workers
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for handle in self.handles {
            let _ = handle.await;
        }
    }
}

/// Fast settings for tests: short retries and leases.
pub fn test_sender_config() -> SenderConfig {
    SenderConfig {
        concurrency: 16,
        batches_in_flight: 4,
        lease_seconds: 10.0,
        status_ttl_ms: 5000,
        max_attempts: 4,
        retry_base_ms: 50,
        retry_max_ms: 2000,
        provider_timeout_ms: 5000,
        ..SenderConfig::default()
    }
}

pub fn test_packer_config() -> PackerConfig {
    PackerConfig {
        batch_size: 200,
        sweep_interval_ms: 1000,
        stall_seconds: 30,
        ..PackerConfig::default()
    }
}

/// The api, workers and an HTTP client with a tenant token, for one test.
#[derive(Debug)]
pub struct Stack {
    pub env: TestEnv,
    pub api: RunningApi,
    pub workers: Workers,
    /// The tenant's HTTP client; `Stack` derefs to it (`stack.call(..)`, `stack.token`).
    pub client: ApiClient,
}

impl std::ops::Deref for Stack {
    type Target = ApiClient;
    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

impl Stack {
    /// An api plus the given worker replicas, on a fresh environment.
    pub async fn start(packers: usize, senders: usize, sender: SenderConfig) -> Self {
        let env = TestEnv::new().await;
        Self::start_on(env, packers, senders, test_packer_config(), sender).await
    }

    pub async fn start_on(
        env: TestEnv,
        packers: usize,
        senders: usize,
        packer: PackerConfig,
        sender: SenderConfig,
    ) -> Self {
        let api_config = ApiConfig {
            relay_interval_ms: 200,
            scheduler_interval_ms: 200,
            ..ApiConfig::default()
        };
        let api = RunningApi::start(env.replica("api-0"), api_config).await;
        // Workers wait for the api's streams.
        let workers = Workers::start(&env, packers, senders, packer, sender).await;
        let token = tenant_token(&env.pool(), "acme").await;
        let client = ApiClient {
            http: reqwest::Client::new(),
            base_url: api.base_url.clone(),
            token,
        };
        let stack = Self {
            env,
            api,
            workers,
            client,
        };
        stack.wait_for_control_consumers().await;
        stack
    }

    /// Waits until every worker replica with the fast path on has its control
    /// durable, so a control message published from now on reaches all of them
    /// (a new durable starts at the next message).
    pub async fn wait_for_control_consumers(&self) {
        let mut names: Vec<String> = Vec::new();
        for packer in &self.workers.packers {
            if packer.control_fast_path() {
                names.push(format!("ctl_packer_{}", packer.replica_id()));
            }
        }
        for sender in &self.workers.senders {
            if sender.control_fast_path() {
                names.push(format!("ctl_sender_{}", sender.replica_id()));
            }
        }
        let bus = self.env.bus().await;
        faults::wait_for_control_durables(&bus, &names).await;
    }

    pub async fn stop(self) {
        self.workers.stop().await;
        self.api.stop().await;
        self.env.cleanup().await;
    }
}

pub async fn tenant_token(pool: &PgPool, tenant: &str) -> String {
    herald_core::auth::create_token(pool, tenant)
        .await
        .expect("token")
        .1
}

/// Ledger truth for one campaign: (status, count).
pub async fn ledger_counts(
    pool: &PgPool,
    campaign: Uuid,
) -> std::collections::HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM recipients WHERE campaign_id = $1 GROUP BY status",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await
    .expect("ledger counts")
    .into_iter()
    .collect()
}

/// Asserts that the projection's counters equal the ledger.
pub async fn assert_counters_match_ledger(pool: &PgPool, campaign: Uuid, body: &Value) {
    let ledger = ledger_counts(pool, campaign).await;
    let counters = &body["counters"];
    let total: i64 = ledger.values().sum();
    assert_eq!(counters["total"].as_i64(), Some(total), "total: {body}");
    for state in ["pending", "sending", "sent", "failed", "skipped"] {
        assert_eq!(
            counters[state].as_i64(),
            Some(*ledger.get(state).unwrap_or(&0)),
            "{state}: {body} vs {ledger:?}"
        );
    }
}

/// Reads every message currently in a stream, in order, with an ephemeral
/// consumer filtered to `subject`.
pub async fn read_stream(
    bus: &Bus,
    stream: &str,
    subject: &str,
) -> Vec<async_nats::jetstream::Message> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let stream = bus
        .js
        .get_stream(stream)
        .await
        .context("stream")
        .expect("stream exists");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer");
    let mut out = Vec::new();
    let mut batch = consumer
        .fetch()
        .max_messages(10_000)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .expect("fetch");
    while let Some(Ok(message)) = batch.next().await {
        out.push(message);
    }
    out
}

pub fn header(message: &async_nats::jetstream::Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
}
