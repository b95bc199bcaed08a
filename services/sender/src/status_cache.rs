//! The per-replica campaign status cache, checked before every single dispatch.
//!
//! Entries live for a TTL (5 s by default), which is the slow path that still
//! works when NATS is down. A control message for a campaign forces the next check
//! to re-read Postgres at once and wakes every backoff wait of that campaign. A
//! control message never sets a status by itself: only Postgres does, so a forged
//! or replayed pause cannot stop a sending campaign, and a forged resume cannot
//! restart a paused one.
//!
//! # Invalidation wins over a read in flight
//!
//! A read that began before a pause committed returns `sending`. If the pause's
//! control message arrives while that read is still in flight, storing the read
//! afterwards would put the stale `sending` back over the invalidation, and it
//! would be trusted for a whole TTL. So every campaign carries a *generation*
//! that each control message bumps. A read notes the generation before it asks
//! Postgres and stores its answer only if the generation is unchanged; otherwise
//! it reads again. A read that starts after the control message arrived starts
//! after the transition committed (the API publishes only after its commit), so
//! it sees the new status.
//!
//! Reads of one campaign are single-flight: while one is in flight, the other
//! checks of that campaign wait for it instead of each asking Postgres, so the
//! re-read after a control message is one round trip, not one per dispatch.
//!
//! # What may still start after a pause response
//!
//! A replica starts no request for a campaign later than one status round trip
//! after the pause's control message reaches it. Requests that passed their check
//! before the message arrived (at most the replica's `HERALD_SENDER_CONCURRENCY`)
//! go ahead. With the fast path off, or while a replica's control consumer is
//! down, the TTL is the bound instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use herald_core::lifecycle::Status;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

/// Runs between a status read and the store of its result; tests hold a read
/// open with it to race it against a control message. `None` in production.
pub type ReadHook = Arc<dyn Fn(Uuid) -> BoxFuture<'static, ()> + Send + Sync>;

/// A status as Postgres answered, and under which generation.
#[derive(Debug, Clone, Copy)]
struct Read {
    status: Option<Status>,
    /// When the read was sent, so the TTL also covers its round trip.
    started_at: Instant,
    generation: u64,
}

#[derive(Debug, Default)]
struct Entry {
    /// Bumped by every control message for the campaign.
    generation: u64,
    /// The last read that completed under the current generation.
    read: Option<Read>,
    /// Held while a read of this campaign is in flight (single-flight).
    reading: Arc<tokio::sync::Mutex<()>>,
    /// Woken by every control message for the campaign.
    waker: Arc<Notify>,
    /// Last read or invalidation, for pruning.
    touched_at: Option<Instant>,
}

impl Entry {
    fn valid_read(&self, ttl: Duration) -> Option<Option<Status>> {
        self.read
            .filter(|r| r.generation == self.generation && r.started_at.elapsed() < ttl)
            .map(|r| r.status)
    }

    fn in_use(&self) -> bool {
        Arc::strong_count(&self.reading) > 1 || Arc::strong_count(&self.waker) > 1
    }
}

/// Whether a read may reuse one that completed while it waited for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    /// Any valid read will do (the ordinary check).
    Any,
    /// Only a read that starts now: the caller must have Postgres's word.
    New,
}

pub struct StatusCache {
    pool: PgPool,
    ttl: Duration,
    entries: Mutex<HashMap<Uuid, Entry>>,
    read_hook: Option<ReadHook>,
}

impl std::fmt::Debug for StatusCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusCache")
            .field("ttl", &self.ttl)
            .field("read_hook", &self.read_hook.is_some())
            .finish_non_exhaustive()
    }
}

impl StatusCache {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            entries: Mutex::new(HashMap::new()),
            read_hook: None,
        }
    }

    /// The same cache with a hook that runs after each Postgres read, before its
    /// result is stored (for tests that race a read against a control message).
    pub fn with_read_hook(mut self, hook: ReadHook) -> Self {
        self.read_hook = Some(hook);
        self
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.entries.lock().expect("status cache lock")
    }

    fn cached(&self, campaign: Uuid) -> Option<Option<Status>> {
        self.entries()
            .get(&campaign)
            .and_then(|e| e.valid_read(self.ttl))
    }

    /// True while Postgres (as last read) says the campaign is sending.
    pub async fn is_sendable(&self, campaign: Uuid) -> Result<bool, sqlx::Error> {
        if let Some(status) = self.cached(campaign) {
            return Ok(status == Some(Status::Sending));
        }
        self.read(campaign, Freshness::Any).await
    }

    /// Reads the campaign's status from Postgres now, whatever the cache holds, and
    /// keeps it for the next checks. True if it is sending.
    pub async fn refresh(&self, campaign: Uuid) -> Result<bool, sqlx::Error> {
        self.read(campaign, Freshness::New).await
    }

    async fn read(&self, campaign: Uuid, freshness: Freshness) -> Result<bool, sqlx::Error> {
        let reading = self.entries().entry(campaign).or_default().reading.clone();
        let _turn = reading.lock().await;
        loop {
            let generation = {
                let entries = self.entries();
                let entry = entries.get(&campaign);
                let reusable = entry
                    .filter(|_| freshness == Freshness::Any)
                    .and_then(|e| e.valid_read(self.ttl));
                if let Some(status) = reusable {
                    // Another check read it while this one waited for its turn.
                    return Ok(status == Some(Status::Sending));
                }
                entry.map_or(0, |e| e.generation)
            };
            let started_at = Instant::now();
            let status = herald_core::campaigns::fetch_status(&self.pool, campaign).await?;
            if let Some(hook) = &self.read_hook {
                hook(campaign).await;
            }
            let mut entries = self.entries();
            let entry = entries.entry(campaign).or_default();
            if entry.generation == generation {
                entry.read = Some(Read {
                    status,
                    started_at,
                    generation,
                });
                entry.touched_at = Some(Instant::now());
                return Ok(status == Some(Status::Sending));
            }
            // A control message arrived while the read was in flight: its answer
            // may predate the transition the message announces. Read again.
            tracing::debug!(campaign_id = %campaign, "status read raced a control message; reading again");
        }
    }

    /// A control message arrived: distrust the cache for this campaign, including
    /// any read in flight, and wake its waiters so they re-check.
    pub fn invalidate(&self, campaign: Uuid) {
        let waker = {
            let mut entries = self.entries();
            let entry = entries.entry(campaign).or_default();
            entry.generation += 1;
            entry.read = None;
            entry.touched_at = Some(Instant::now());
            entry.waker.clone()
        };
        waker.notify_waiters();
    }

    /// Resolves when a control message for the campaign arrives.
    pub fn waker(&self, campaign: Uuid) -> Arc<Notify> {
        self.entries().entry(campaign).or_default().waker.clone()
    }

    /// Forgets campaigns nobody asked about for a while, so memory stays flat.
    /// An entry with a read in flight or a waiter is kept: dropping it would
    /// lose the generation that read must be checked against.
    pub fn prune(&self) {
        let horizon = self.ttl * 12;
        self.entries()
            .retain(|_, e| e.in_use() || e.touched_at.is_some_and(|t| t.elapsed() < horizon));
    }
}
