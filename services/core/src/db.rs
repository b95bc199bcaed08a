//! Postgres pool and migrations.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::{CommonConfig, redact_url};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool lazily: the process starts even while Postgres is down, and every
/// query fails fast (503 at the API) instead of hanging.
pub fn pool(config: &CommonConfig) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(&config.database_url)
        .with_context(|| format!("bad DATABASE_URL {}", redact_url(&config.database_url)))
}

/// Creates the database if needed and applies the migrations. sqlx takes an
/// advisory lock around them, so replicas starting together are safe.
pub async fn migrate(config: &CommonConfig) -> anyhow::Result<()> {
    let url = &config.database_url;
    let exists = sqlx::Postgres::database_exists(url)
        .await
        .with_context(|| format!("connecting to Postgres at {}", redact_url(url)))?;
    if !exists {
        // Two replicas may race to create it; the loser sees it exist.
        if let Err(error) = sqlx::Postgres::create_database(url).await {
            if !sqlx::Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(error).context("creating the database");
            }
        }
    }
    // Every start re-runs `CREATE TABLE IF NOT EXISTS _sqlx_migrations`, whose
    // NOTICE ("relation ... already exists, skipping") sqlx would log at INFO.
    let options = url
        .parse::<PgConnectOptions>()
        .with_context(|| format!("bad DATABASE_URL {}", redact_url(url)))?
        .options([("client_min_messages", "warning")]);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("connecting to Postgres at {}", redact_url(url)))?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    pool.close().await;
    Ok(())
}

/// Migrates, retrying while Postgres is unreachable.
pub async fn migrate_with_retry(
    config: &CommonConfig,
    shutdown: &crate::CancellationToken,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match migrate(config).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "Postgres not ready; retrying migrations");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("shut down before Postgres was ready"),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// True for errors that mean "Postgres is unreachable" rather than "bad query".
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    ) || matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}
