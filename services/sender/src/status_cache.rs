//! The per-replica campaign status cache, checked before every single dispatch.
//!
//! Entries live for a TTL (5 s by default), which is the slow path that still
//! works when NATS is down. A control message for a campaign forces the next check
//! to re-read Postgres at once and wakes every backoff wait of that campaign. A
//! control message never sets a status by itself: only Postgres does, so a forged
//! or replayed pause cannot stop a sending campaign, and a forged resume cannot
//! restart a paused one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::lifecycle::Status;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Debug)]
struct Entry {
    status: Option<Status>,
    fetched_at: Instant,
    must_recheck: bool,
}

#[derive(Debug)]
pub struct StatusCache {
    pool: PgPool,
    ttl: Duration,
    entries: Mutex<HashMap<Uuid, Entry>>,
    wakers: Mutex<HashMap<Uuid, Arc<Notify>>>,
}

impl StatusCache {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            entries: Mutex::new(HashMap::new()),
            wakers: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, campaign: Uuid) -> Option<Option<Status>> {
        let entries = self.entries.lock().expect("status cache lock");
        entries
            .get(&campaign)
            .filter(|e| !e.must_recheck && e.fetched_at.elapsed() < self.ttl)
            .map(|e| e.status)
    }

    /// True while Postgres (as last read) says the campaign is sending.
    pub async fn is_sendable(&self, campaign: Uuid) -> Result<bool, sqlx::Error> {
        if let Some(status) = self.cached(campaign) {
            return Ok(status == Some(Status::Sending));
        }
        self.refresh(campaign).await
    }

    /// Reads the campaign's status from Postgres now, whatever the cache holds, and
    /// keeps it for the next checks. True if it is sending.
    pub async fn refresh(&self, campaign: Uuid) -> Result<bool, sqlx::Error> {
        let status = herald_core::campaigns::fetch_status(&self.pool, campaign).await?;
        self.entries.lock().expect("status cache lock").insert(
            campaign,
            Entry {
                status,
                fetched_at: Instant::now(),
                must_recheck: false,
            },
        );
        Ok(status == Some(Status::Sending))
    }

    /// A control message arrived: distrust the cache for this campaign and wake
    /// its waiters so they re-check.
    pub fn invalidate(&self, campaign: Uuid) {
        if let Some(entry) = self
            .entries
            .lock()
            .expect("status cache lock")
            .get_mut(&campaign)
        {
            entry.must_recheck = true;
        }
        self.waker(campaign).notify_waiters();
    }

    /// Resolves when a control message for the campaign arrives.
    pub fn waker(&self, campaign: Uuid) -> Arc<Notify> {
        self.wakers
            .lock()
            .expect("waker lock")
            .entry(campaign)
            .or_default()
            .clone()
    }

    /// Forgets campaigns nobody asked about for a while, so memory stays flat.
    pub fn prune(&self) {
        let horizon = self.ttl * 12;
        self.entries
            .lock()
            .expect("status cache lock")
            .retain(|_, e| e.fetched_at.elapsed() < horizon);
        self.wakers
            .lock()
            .expect("waker lock")
            .retain(|_, n| Arc::strong_count(n) > 1);
    }
}
