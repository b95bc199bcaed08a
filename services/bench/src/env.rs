//! One run's isolated slice of the shared Postgres and NATS: a fresh database and
//! fresh stream and subject prefixes, dropped again by [`BenchEnv::cleanup`].
//!
//! This mirrors the test kit's `TestEnv` on purpose, without depending on test code:
//! benchmark runs must not see each other, nor the tests that may run at the same
//! time on the same servers.

use std::time::Duration;

use anyhow::Context as _;
use herald_core::bus::Bus;
use herald_core::config::CommonConfig;
use sqlx::PgPool;
use uuid::Uuid;

use crate::args::BenchArgs;

#[derive(Debug, Clone)]
pub struct BenchEnv {
    pub common: CommonConfig,
    pub database: String,
    postgres: String,
}

impl BenchEnv {
    /// Creates and migrates a fresh database and picks fresh prefixes.
    pub async fn new(args: &BenchArgs) -> anyhow::Result<Self> {
        let tag = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let database = format!("herald_bench_{tag}");
        let postgres = args.postgres.trim_end_matches('/').to_owned();
        let mut common = CommonConfig::local_defaults();
        common.database_url = format!("{postgres}/{database}");
        common.nats_url = args.nats_url.clone();
        common.subject_prefix = format!("b{tag}.");
        common.stream_prefix = format!("B{tag}");
        // Ten per worker replica: a sender uses one per batch in flight plus status
        // reads, and six replicas plus the api must fit Postgres's default 100.
        common.db_max_connections = 10;
        herald_core::db::migrate(&common)
            .await
            .context("creating the benchmark database")?;
        Ok(Self {
            common,
            database,
            postgres,
        })
    }

    pub fn pool(&self) -> anyhow::Result<PgPool> {
        herald_core::db::pool(&self.common)
    }

    /// A pool of exactly `connections` connections, for the ledger baseline.
    pub async fn pool_with(&self, connections: u32) -> anyhow::Result<PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(connections)
            .min_connections(connections)
            .connect_with(herald_core::db::connect_options(&self.common.database_url)?)
            .await?)
    }

    /// The same settings with a replica id (each replica names its consumers).
    pub fn replica(&self, id: &str) -> CommonConfig {
        let mut common = self.common.clone();
        common.replica_id = Some(id.to_owned());
        common
    }

    pub async fn bus(&self) -> anyhow::Result<Bus> {
        Bus::connect(&self.common, "herald-bench").await
    }

    /// Drops the streams and the database. Best effort: a failure is only logged,
    /// so it never hides the run's own error.
    pub async fn cleanup(&self) {
        if let Ok(bus) = self.bus().await {
            if tokio::time::timeout(Duration::from_secs(2), bus.client.flush())
                .await
                .is_ok()
            {
                for stream in bus.streams.all() {
                    let _ = bus.js.delete_stream(stream).await;
                }
            }
        }
        match PgPool::connect(&format!("{}/postgres", self.postgres)).await {
            Ok(admin) => {
                if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.database
                )))
                .execute(&admin)
                .await
                {
                    eprintln!("warning: could not drop {}: {error}", self.database);
                }
                admin.close().await;
            }
            Err(error) => eprintln!("warning: could not drop {}: {error}", self.database),
        }
    }
}

/// Runs `body` on a fresh environment and always cleans it up afterwards.
pub async fn with_env<T, F, Fut>(args: &BenchArgs, body: F) -> anyhow::Result<T>
where
    F: FnOnce(BenchEnv) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let env = BenchEnv::new(args).await?;
    let result = body(env.clone()).await;
    env.cleanup().await;
    result
}

/// Drops every `herald_bench_*` database nobody is connected to, and the streams of
/// the same tag: what a run interrupted before its cleanup leaves behind. Returns
/// the databases dropped.
pub async fn cleanup_leftovers(args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    let postgres = args.postgres.trim_end_matches('/');
    let admin = PgPool::connect(&format!("{postgres}/postgres")).await?;
    let idle: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database d WHERE datname LIKE 'herald\\_bench\\_%'
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
    )
    .fetch_all(&admin)
    .await?;
    admin.close().await;
    let mut dropped = Vec::new();
    for database in idle {
        let Some(tag) = database.strip_prefix("herald_bench_") else {
            continue;
        };
        // Only names this harness makes: 12 hex digits.
        if tag.len() != 12 || !tag.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let mut common = CommonConfig::local_defaults();
        common.database_url = format!("{postgres}/{database}");
        common.nats_url = args.nats_url.clone();
        common.subject_prefix = format!("b{tag}.");
        common.stream_prefix = format!("B{tag}");
        let env = BenchEnv {
            common,
            database: database.clone(),
            postgres: postgres.to_owned(),
        };
        env.cleanup().await;
        dropped.push(database);
    }
    Ok(dropped)
}
