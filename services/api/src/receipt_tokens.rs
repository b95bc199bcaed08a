//! The receipts tokens of channels, cached for a few seconds.
//!
//! Evolution API sends one webhook per status change, so the receipts endpoint
//! takes many small requests; reading the channel's token from Postgres for
//! each would cost a round trip per receipt. A token read is kept for
//! [`TOKEN_TTL`]: a channel deleted (or a token rotated on another api replica)
//! stops being accepted within that time. Unknown channels are not cached, so a
//! channel created a moment ago is found at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

/// How long a token read from Postgres is trusted.
pub const TOKEN_TTL: Duration = Duration::from_secs(10);

/// A token and when it was read from Postgres.
type CachedToken = (Arc<str>, Instant);

/// Channel id → its cached token. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ReceiptTokens {
    cache: Arc<Mutex<HashMap<Uuid, CachedToken>>>,
}

impl ReceiptTokens {
    /// The receipts token of a live channel, or None for an unknown or deleted one.
    pub async fn token(
        &self,
        pool: &PgPool,
        channel_id: Uuid,
    ) -> Result<Option<Arc<str>>, sqlx::Error> {
        if let Some(token) = self.cached(channel_id) {
            return Ok(Some(token));
        }
        let Some(token) = herald_core::channels::receipts_token(pool, channel_id).await? else {
            return Ok(None);
        };
        let token: Arc<str> = token.into();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        // Expired entries go when the map would grow, so it stays as large as
        // the set of channels that sent receipts within the TTL.
        cache.retain(|_, (_, read_at)| read_at.elapsed() < TOKEN_TTL);
        cache.insert(channel_id, (token.clone(), Instant::now()));
        Ok(Some(token))
    }

    /// Drops the cached token of `channel_id` (after a rotation): this replica
    /// refuses the old token at once, the others within [`TOKEN_TTL`].
    pub fn forget(&self, channel_id: Uuid) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.remove(&channel_id);
    }

    fn cached(&self, channel_id: Uuid) -> Option<Arc<str>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(&channel_id)
            .filter(|(_, read_at)| read_at.elapsed() < TOKEN_TTL)
            .map(|(token, _)| token.clone())
    }
}
