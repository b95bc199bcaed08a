//! A whole Herald deployment as OS processes ([`ProcessStack`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use herald_core::bus::Bus;
use herald_core::config::CommonConfig;
use herald_core::lifecycle::Status;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    HeraldEnv, HeraldProcess, PgCluster, nats_password, wait_for_control_durables, wait_until,
};
use crate::{ProviderDouble, free_port};

/// A whole Herald deployment as OS processes: one api, N packers, M senders, on
/// a private [`PgCluster`] and a NATS server the caller owns (so it can stop it).
#[derive(Debug)]
pub struct ProcessStack {
    pub pg: PgCluster,
    /// The settings shared by every process (before per-role overrides).
    pub env: HeraldEnv,
    pub api: HeraldProcess,
    pub packers: Vec<HeraldProcess>,
    pub senders: Vec<HeraldProcess>,
    /// The tenant's HTTP client; `ProcessStack` derefs to it.
    pub client: crate::ApiClient,
    /// A test-side view of the same prefixes and servers (for SQL and streams).
    pub common: CommonConfig,
    /// Keeps every process's log file until the stack is dropped.
    _log_dir: tempfile::TempDir,
}

/// Which process a [`ProcessStack`] is configuring, for per-role settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Packer(usize),
    Sender(usize),
}

impl Role {
    pub fn replica_id(self) -> String {
        match self {
            Role::Api => "api-0".into(),
            Role::Packer(i) => format!("packer-{i}"),
            Role::Sender(i) => format!("sender-{i}"),
        }
    }
    pub fn subcommand(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Packer(_) => "packer",
            Role::Sender(_) => "sender",
        }
    }
}

impl ProcessStack {
    /// Starts a cluster, migrates it, then the api, `packers` packers and
    /// `senders` senders, and waits until the api is ready and every worker's
    /// control consumer exists. `configure` adjusts each process's environment.
    pub async fn start(
        binary: &Path,
        nats_url: &str,
        packers: usize,
        senders: usize,
        configure: impl Fn(Role, HeraldEnv) -> HeraldEnv,
    ) -> Self {
        crate::init_test_logging();
        let pg = PgCluster::start().await;
        let tag = Uuid::new_v4().simple().to_string()[..10].to_owned();
        let env = HeraldEnv::for_test(&pg.database_url("herald"), nats_url, &tag);
        // The test side sees what the processes see (configure may change the
        // prefixes), with full rights on an authenticated server.
        let api_env = configure(Role::Api, env.clone());
        let mut common = api_env.common();
        if api_env.get("NATS_USER").is_some() {
            common.nats_user = Some("operator".into());
            common.nats_password = Some(nats_password("operator"));
        }
        herald_core::db::migrate(&common)
            .await
            .expect("the private cluster migrates");
        let token =
            herald_core::auth::create_token(&herald_core::db::pool(&common).expect("pool"), "acme")
                .await
                .expect("token")
                .1;
        let log_dir = tempfile::Builder::new()
            .prefix("herald-stack-")
            .tempdir()
            .expect("temp dir");
        let listen = format!("127.0.0.1:{}", free_port());
        let spawn = |role: Role| {
            let env = configure(role, env.clone())
                .set("HERALD_REPLICA_ID", &role.replica_id())
                .set("HERALD_LISTEN", &listen);
            HeraldProcess::spawn(
                &role.replica_id(),
                binary,
                &[role.subcommand()],
                env,
                Some(log_dir.path()),
            )
        };
        let api = spawn(Role::Api);
        let packers = (0..packers).map(|i| spawn(Role::Packer(i))).collect();
        let senders = (0..senders).map(|i| spawn(Role::Sender(i))).collect();
        let stack = Self {
            pg,
            env,
            api,
            packers,
            senders,
            client: crate::ApiClient {
                base_url: format!("http://{listen}"),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .expect("http client"),
                token,
            },
            common,
            _log_dir: log_dir,
        };
        stack.wait_until_ready().await;
        stack
    }

    /// Waits for `/readyz` (Postgres and JetStream up, streams provisioned) and
    /// for every worker's control consumer.
    pub async fn wait_until_ready(&self) {
        let url = format!("{}/readyz", self.base_url);
        wait_until("the api to be ready", Duration::from_secs(30), || async {
            let response = self.http.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        self.wait_for_control_consumers().await;
    }

    /// Waits until every packer and sender replica has its control consumer, so
    /// a control message published now reaches all of them.
    pub async fn wait_for_control_consumers(&self) {
        let bus = self.bus().await;
        let names: Vec<String> = self
            .packers
            .iter()
            .map(|p| format!("ctl_packer_{}", p.name()))
            .chain(
                self.senders
                    .iter()
                    .map(|s| format!("ctl_sender_{}", s.name())),
            )
            .collect();
        wait_for_control_durables(&bus, &names).await;
    }

    /// A test-side NATS connection with the stack's prefixes.
    pub async fn bus(&self) -> Bus {
        Bus::connect(&self.common, "herald-fault-test")
            .await
            .expect("test nats client")
    }

    /// A test-side Postgres pool on the private cluster.
    pub fn pool(&self) -> PgPool {
        herald_core::db::pool(&self.common).expect("pool")
    }

    /// Every process log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for process in std::iter::once(&self.api)
            .chain(&self.packers)
            .chain(&self.senders)
        {
            let log = process.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("==== {} (last 40 lines) ====\n", process.name()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Polls until the campaign has `status`; panics with the process logs after
    /// `timeout`.
    pub async fn wait_for_status(
        &self,
        campaign: Uuid,
        status: Status,
        timeout: Duration,
    ) -> Value {
        self.client
            .wait_for_status_or(campaign, status, timeout, || self.logs())
            .await
    }

    /// The checks every fault scenario ends with: the campaign completed exactly
    /// once, every recipient's fate is accounted for and explained
    /// ([`crate::assert_every_fate_accounted`]), and the event history is `seq`
    /// 1..n without gaps. Returns the campaign body.
    pub async fn assert_settled(&self, campaign: Uuid, total: usize) -> Value {
        self.wait_for_status(campaign, Status::Completed, Duration::from_secs(120))
            .await;
        let pool = self.pool();
        let body = crate::assert_every_fate_accounted(&self.client, &pool, campaign).await;
        assert_eq!(
            body["counters"]["total"].as_u64(),
            Some(total as u64),
            "{body}"
        );
        let events = self.events(campaign).await;
        for (i, event) in events.iter().enumerate() {
            assert_eq!(
                event["seq"].as_i64(),
                Some(i as i64 + 1),
                "event history has a gap or a duplicate: {events:?}"
            );
        }
        let completions = events.iter().filter(|e| e["type"] == "completed").count();
        assert_eq!(completions, 1, "completed exactly once: {events:?}");
        assert_eq!(
            events.last().map(|e| e["type"].clone()),
            Some(json!("completed")),
            "nothing happens after completion"
        );
        pool.close().await;
        body
    }
}

/// Recipients that reached the provider more than once, with their request count.
pub fn repeated_keys(provider: &ProviderDouble) -> BTreeMap<String, u32> {
    provider
        .per_key()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect()
}

impl std::ops::Deref for ProcessStack {
    type Target = crate::ApiClient;
    fn deref(&self) -> &crate::ApiClient {
        &self.client
    }
}
