//! The claim gate: how a pause or stop is ordered against the claims of its
//! campaign.
//!
//! A claim must either commit before a pause commits, or run after it and see the
//! campaign paused (invariant 5). Row locks gave that order (claims locked the
//! campaign row `FOR KEY SHARE`, transitions `FOR UPDATE`), but a row lock has no
//! queue: overlapping claims keep the row share-locked and a waiting pause is
//! passed by every claim that comes later, so under load a pause waited for a gap
//! between claims (one in 40 pauses spent over 50 ms on the lock in
//! `herald-bench pause`). The gate is a transaction-scoped advisory lock per
//! campaign instead: claims take it shared, a halting transition takes it
//! exclusive, and Postgres's lock manager queues a later shared request behind a
//! waiting exclusive one. A pause waits only for the claims already running, and
//! the claims after it queue, then take their snapshot and see the new status.
//!
//! The key is `hashtextextended(<campaign id>, 11)`: seed 11 keeps it apart from
//! the packer's paging lock (seed 7) of the same campaign. Two campaigns whose keys
//! collide only wait for each other now and then.

use sqlx::PgConnection;
use uuid::Uuid;

/// How long a claim's transaction may sit idle between its statements, in ms
/// (Postgres's `idle_in_transaction_session_timeout`, set for that transaction
/// alone). A claim sends its statements back to back, so it idles for
/// milliseconds; a sender that stalls in between (stopped, starved of CPU)
/// would otherwise hold the gate, and with it every pause and stop of the
/// campaign and every claim queued behind them, until it ran again. Postgres
/// ends that session instead, which rolls the claim back.
pub const CLAIM_IDLE_LIMIT_MS: u32 = 5_000;

/// Takes the gate shared, until the transaction ends. A claim calls this in its
/// transaction before the statement that reads the campaign's status; it also
/// limits how long the transaction may idle ([`CLAIM_IDLE_LIMIT_MS`]).
pub async fn enter(tx: &mut PgConnection, campaign: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('idle_in_transaction_session_timeout', $2, true),
                pg_advisory_xact_lock_shared(hashtextextended($1::text, 11))",
    )
    .bind(campaign)
    .bind(CLAIM_IDLE_LIMIT_MS.to_string())
    .execute(tx)
    .await?;
    Ok(())
}

/// Takes the gate exclusive, until the transaction ends: waits for the claims in
/// progress, and holds back later ones until this transaction has committed.
pub async fn close(tx: &mut PgConnection, campaign: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 11))")
        .bind(campaign)
        .execute(tx)
        .await?;
    Ok(())
}
