//! Postgres pool and migrations.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::{CommonConfig, redact_url};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool lazily: the process starts even while Postgres is down, and every
/// query fails fast (503 at the API) instead of hanging. Connections run with
/// [`connect_options`].
pub fn pool(config: &CommonConfig) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(connect_options(&config.database_url)?))
}

/// `DATABASE_URL` with the session settings every Herald connection uses:
/// `jit = off`.
///
/// Why no JIT: Herald's statements are short OLTP statements over a handful of
/// rows, which JIT compilation never pays back, and Postgres decides to compile
/// on the planner's cost estimate, not on the rows a statement will touch. The
/// sweep's `DELETE FROM recipient_leases ...` (in `herald-packer`) is estimated
/// at about 870,000 cost units on a 200,000-recipient campaign (a correlated
/// subquery per lease row) and was compiled with inlining and optimisation on
/// every sweep: about 370 ms of Postgres CPU each time, for a statement that
/// then ran in under 0.1 ms and deleted nothing (auto_explain's `JIT: Timing`,
/// docs/BENCHMARKS.md). A setting in the URL (`?options=-c jit=on`) still wins.
pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options = url
        .parse::<PgConnectOptions>()
        .with_context(|| format!("bad DATABASE_URL {}", redact_url(url)))?;
    Ok(if sets_jit(options.get_options().unwrap_or_default()) {
        options
    } else {
        options.options([("jit", "off")])
    })
}

/// Whether libpq-style `options` (`-c name=value` or `--name=value`, space
/// separated) set `jit` itself; `jit_above_cost` and its kin do not count.
fn sets_jit(options: &str) -> bool {
    options.split_whitespace().any(|token| {
        let setting = token.strip_prefix("-c").unwrap_or(token);
        // Setting names are case-insensitive in Postgres.
        let name = setting.trim_start_matches('-').split('=').next();
        setting.contains('=') && name.is_some_and(|name| name.eq_ignore_ascii_case("jit"))
    })
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
    let options = connect_options(url)?.options([("client_min_messages", "warning")]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_run_without_jit_unless_the_url_asks_for_it() {
        let plain = connect_options("postgres://herald@localhost/herald").unwrap();
        assert_eq!(plain.get_options(), Some("-c jit=off"));
        let asked =
            connect_options("postgres://herald@localhost/herald?options=-c%20jit%3Don").unwrap();
        assert_eq!(asked.get_options(), Some("-c jit=on"));
        let long = connect_options("postgres://h@localhost/h?options=--jit%3Don").unwrap();
        assert_eq!(long.get_options(), Some("--jit=on"));
        let shouting = connect_options("postgres://h@localhost/h?options=-c%20JIT%3Don").unwrap();
        assert_eq!(shouting.get_options(), Some("-c JIT=on"));
        let other =
            connect_options("postgres://h@localhost/h?options=-c%20jit_above_cost%3D10").unwrap();
        assert_eq!(
            other.get_options(),
            Some("-c jit_above_cost=10 -c jit=off"),
            "a jit_* cost setting leaves JIT off"
        );
    }
}
