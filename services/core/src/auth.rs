//! API tokens: generated once, stored as SHA-256 digests, compared in constant time.

use base64::Engine;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

const TOKEN_PREFIX: &str = "hrld_";

/// The tenant a token belongs to.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Creates the tenant if needed and a fresh token for it. The plain token is returned
/// once and never stored.
pub async fn create_token(pool: &PgPool, tenant_name: &str) -> anyhow::Result<(Tenant, String)> {
    let tenant_name = tenant_name.trim();
    anyhow::ensure!(
        !tenant_name.is_empty() && tenant_name.len() <= 200,
        "tenant name must be 1 to 200 characters"
    );
    let tenant_id: Uuid = sqlx::query_scalar(
        "INSERT INTO tenants (id, name) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(tenant_name)
    .fetch_one(pool)
    .await?;
    let token = new_token();
    sqlx::query("INSERT INTO api_tokens (id, tenant_id, token_hash) VALUES ($1, $2, $3)")
        .bind(Uuid::new_v4())
        .bind(tenant_id)
        .bind(hash_token(&token))
        .execute(pool)
        .await?;
    Ok((
        Tenant {
            id: tenant_id,
            name: tenant_name.to_owned(),
        },
        token,
    ))
}

/// Resolves a bearer token to its tenant, or `None` when it is unknown or revoked.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Option<Tenant>, sqlx::Error> {
    if !token.starts_with(TOKEN_PREFIX) || token.len() > 200 {
        return Ok(None);
    }
    let digest = hash_token(token);
    let row: Option<(Vec<u8>, Uuid, String)> = sqlx::query_as(
        "SELECT t.token_hash, n.id, n.name FROM api_tokens t JOIN tenants n ON n.id = t.tenant_id
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
    )
    .bind(&digest)
    .fetch_optional(pool)
    .await?;
    // The lookup is by digest; compare again in constant time so no code path
    // depends on how much of a guessed value matched.
    Ok(row
        .filter(|(stored, _, _)| bool::from(stored.as_slice().ct_eq(digest.as_slice())))
        .map(|(_, id, name)| Tenant { id, name }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_are_unique_and_their_digest_is_not_the_token() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() > 40);
        assert_ne!(hash_token(&a), a.as_bytes());
        assert_eq!(hash_token(&a).len(), 32);
    }
}
