//! One installation per bus.
//!
//! An installation is one Postgres database and the JetStream streams it uses.
//! The database holds the installation's id (`installation` table); the api
//! stamps that id into the `description` of every stream it provisions
//! (nats-server 2.9 has no stream metadata; the description is part of the
//! config every version keeps). Every process compares the two before it
//! touches the streams and refuses to start when they differ: otherwise a
//! sender of installation B would take installation A's batches from the shared
//! `sender` durable, find no such campaign in B's database and acknowledge them,
//! and A's recipients would be lost from the stream.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use uuid::Uuid;

/// Start of the stream description that names the owning installation.
const STAMP_PREFIX: &str = "Herald installation ";

/// The stream description that marks `installation` as the owner.
pub fn stamp(installation: Uuid) -> String {
    format!("{STAMP_PREFIX}{installation}")
}

/// The owner a stream description names, if it is a Herald stamp.
pub fn owner(description: Option<&str>) -> Option<Uuid> {
    description?.strip_prefix(STAMP_PREFIX)?.trim().parse().ok()
}

/// This database's installation id.
pub async fn id(pool: &PgPool) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM installation")
        .fetch_one(pool)
        .await
}

/// This database's installation id, retrying while Postgres is unreachable.
/// Any other error (no `installation` table: the database was not migrated)
/// ends the wait.
pub async fn id_with_retry(
    pool: &PgPool,
    shutdown: &crate::CancellationToken,
) -> anyhow::Result<Uuid> {
    let mut delay = Duration::from_millis(200);
    loop {
        match id(pool).await {
            Ok(id) => return Ok(id),
            Err(error) if crate::db::is_unavailable(&error) => {
                tracing::warn!(%error, "Postgres not ready; retrying the installation id");
            }
            Err(error) => {
                return Err(error).context(
                    "reading this database's installation id (apply the migrations first: `herald migrate`)",
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("shut down before Postgres was ready"),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// The streams this process would use belong to another installation, or
/// cannot be created beside another installation's. Fatal: retrying cannot
/// help, the settings must change.
#[derive(Debug, thiserror::Error)]
pub enum InstallationConflict {
    #[error(
        "JetStream stream {stream} belongs to Herald installation {owner}, but this \
         database is installation {ours}; two installations must not share streams (each \
         would take the other's work). Give this installation streams and subjects of its \
         own with HERALD_STREAM_PREFIX and HERALD_SUBJECT_PREFIX (now {stream_prefix:?} and \
         {subject_prefix:?}; e.g. HERALD_STREAM_PREFIX=STAGING HERALD_SUBJECT_PREFIX=staging), \
         or point DATABASE_URL at installation {owner}'s database. If installation {owner} \
         is gone for good, start the api once with HERALD_ADOPT_STREAMS=true to take its \
         streams over"
    )]
    Foreign {
        stream: String,
        owner: Uuid,
        ours: Uuid,
        stream_prefix: String,
        subject_prefix: String,
    },
    #[error(
        "JetStream stream {stream} cannot be created: its subjects {subjects:?} overlap \
         another stream's, most likely another Herald installation's with another \
         HERALD_STREAM_PREFIX but the same HERALD_SUBJECT_PREFIX ({subject_prefix:?}). \
         Give each installation its own HERALD_SUBJECT_PREFIX as well (e.g. \
         HERALD_SUBJECT_PREFIX=staging)"
    )]
    SubjectOverlap {
        stream: String,
        subjects: Vec<String>,
        subject_prefix: String,
    },
}

/// Whether `error` is an [`InstallationConflict`] (retrying cannot fix it).
pub fn is_conflict(error: &anyhow::Error) -> bool {
    error.downcast_ref::<InstallationConflict>().is_some()
}

/// A worker's start: waits for this database's installation id, then for the
/// api to have provisioned streams stamped with it. Fails with
/// [`InstallationConflict`] when the streams belong to another installation, so
/// a worker never takes another installation's work.
pub async fn wait_for_own_streams(
    pool: &PgPool,
    bus: &crate::bus::Bus,
    shutdown: &crate::CancellationToken,
) -> anyhow::Result<()> {
    let installation = id_with_retry(pool, shutdown).await?;
    bus.wait_for_streams(installation, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_names_its_installation_and_nothing_else_does() {
        let id = Uuid::new_v4();
        assert_eq!(owner(Some(&stamp(id))), Some(id));
        assert_eq!(owner(Some("campaign events")), None);
        assert_eq!(owner(Some("Herald installation not-a-uuid")), None);
        assert_eq!(owner(None), None);
    }
}
