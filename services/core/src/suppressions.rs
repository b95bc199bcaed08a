//! Suppression lists (opt-outs): one per tenant, the rows of `suppressions`
//! (migrations/0005_recipient_fate.sql), how their addresses are normalised, and
//! the statements that add, page and remove them.
//!
//! An address on a tenant's list is never sent to by that tenant's campaigns.
//! Entries are keyed by `(tenant_id, address)` where `address` is the normalised
//! form ([`normalise_suppression_address`]), so matching is exact on that form and
//! case-insensitive for e-mail. Adding an address that is already listed changes
//! nothing: the first entry's reason, source and time are the record.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// The reason stored when an entry gives none (or a blank one).
pub const DEFAULT_REASON: &str = "opted_out";
/// Longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 200;
/// Longest normalised address, in bytes (the recipient import's limit too).
pub const MAX_ADDRESS_BYTES: usize = 320;

/// Why an address cannot go on a suppression list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than {MAX_ADDRESS_BYTES} bytes")]
    TooLong,
    #[error("address contains control characters")]
    ControlCharacters,
}

/// Why a reason cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    #[error("reason is longer than {MAX_REASON_CHARS} characters")]
    TooLong,
    #[error("reason contains control characters")]
    ControlCharacters,
}

/// The form an address is stored, matched and deleted in.
///
/// - Surrounding white space is trimmed.
/// - A phone number written with a leading `+` (`+`, then digits and the usual
///   separators: spaces, `-`, `.`, `(`, `)`) keeps only `+` and its digits:
///   `+1 (555) 000-1234` becomes `+15550001234`.
/// - An e-mail address (`local@domain`, no white space) is lower-cased entirely,
///   so `Ana@Example.COM` and `ana@example.com` are one entry: the list must
///   match whatever case a campaign's import used.
/// - Anything else (a WhatsApp JID without `@`, a webhook id, a number without
///   `+`) is only trimmed.
///
/// This must agree with the normalisation the recipient import applies (E.164
/// phone numbers, e-mail compared case-insensitively): the sender matches the
/// ledger's normalised address against this form. Numbers without `+` are not
/// turned into E.164 here, because a suppression list has no channel and so no
/// default region; callers should give phone numbers in E.164.
///
/// Errors: [`AddressError::Empty`] (nothing but white space),
/// [`AddressError::ControlCharacters`], [`AddressError::TooLong`] (over
/// [`MAX_ADDRESS_BYTES`] once normalised).
pub fn normalise_suppression_address(raw: &str) -> Result<String, AddressError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(AddressError::Empty);
    }
    if trimmed.chars().any(char::is_control) {
        return Err(AddressError::ControlCharacters);
    }
    let normal = if looks_like_phone(trimmed) {
        trimmed
            .chars()
            .filter(|c| *c == '+' || c.is_ascii_digit())
            .collect()
    } else if looks_like_email(trimmed) {
        trimmed.to_lowercase()
    } else {
        trimmed.to_owned()
    };
    if normal.len() > MAX_ADDRESS_BYTES {
        return Err(AddressError::TooLong);
    }
    Ok(normal)
}

/// `+` followed by digits and separators only, with at least one digit.
fn looks_like_phone(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('+') else {
        return false;
    };
    rest.chars().any(|c| c.is_ascii_digit())
        && rest
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
}

/// One `@` between a non-empty local part and a non-empty domain, no white space.
fn looks_like_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !text.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// The reason to store: trimmed, [`DEFAULT_REASON`] when absent or blank.
///
/// Errors: [`ReasonError::TooLong`] over [`MAX_REASON_CHARS`] characters,
/// [`ReasonError::ControlCharacters`] (NUL included).
pub fn suppression_reason(raw: Option<&str>) -> Result<String, ReasonError> {
    let trimmed = raw.map(str::trim).unwrap_or_default();
    if trimmed.is_empty() {
        return Ok(DEFAULT_REASON.to_owned());
    }
    if trimmed.chars().count() > MAX_REASON_CHARS {
        return Err(ReasonError::TooLong);
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ReasonError::ControlCharacters);
    }
    Ok(trimmed.to_owned())
}

/// Who added an entry (the `source` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An operator, through `POST /v1/suppressions`.
    Api,
    /// An inbound opt-out (an `opted_out` delivery receipt).
    Receipt,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Receipt => "receipt",
        }
    }
}

/// One row of `suppressions`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SuppressionRow {
    /// The normalised address.
    pub address: String,
    pub reason: String,
    /// `api` or `receipt`.
    pub source: String,
    pub created_at: DateTime<Utc>,
}

/// Adds normalised `addresses` (with the reason at the same index) to `tenant`'s
/// list; addresses already listed, or repeated within the call, are left as they
/// are. Returns how many entries were added.
pub async fn insert_suppressions<'e>(
    db: impl PgExecutor<'e>,
    tenant: Uuid,
    addresses: &[String],
    reasons: &[String],
    source: Source,
) -> Result<u64, sqlx::Error> {
    let added: i64 = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO suppressions (tenant_id, address, reason, source)
             SELECT $1, a, r, $4 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(a, r, n)
             ORDER BY n
             ON CONFLICT (tenant_id, address) DO NOTHING
             RETURNING 1
         )
         SELECT count(*) FROM ins",
    )
    .bind(tenant)
    .bind(addresses)
    .bind(reasons)
    .bind(source.as_str())
    .fetch_one(db)
    .await?;
    Ok(added as u64)
}

/// Up to `limit` entries of `tenant`'s list in address order, after the address
/// `after` if given, and only `address` itself if given (both normalised).
pub async fn list_suppression_page<'e>(
    db: impl PgExecutor<'e>,
    tenant: Uuid,
    address: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<SuppressionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT address, reason, source, created_at FROM suppressions
         WHERE tenant_id = $1 AND ($2::text IS NULL OR address = $2)
           AND ($3::text IS NULL OR address > $3)
         ORDER BY address LIMIT $4",
    )
    .bind(tenant)
    .bind(address)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Removes the normalised `address` from `tenant`'s list; false if it was not on it.
pub async fn delete_suppression<'e>(
    db: impl PgExecutor<'e>,
    tenant: Uuid,
    address: &str,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM suppressions WHERE tenant_id = $1 AND address = $2")
        .bind(tenant)
        .bind(address)
        .execute(db)
        .await?;
    Ok(deleted.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e_mail_addresses_are_trimmed_and_lower_cased_entirely() {
        assert_eq!(
            normalise_suppression_address("  Ana.Souza@Example.COM ").as_deref(),
            Ok("ana.souza@example.com")
        );
    }

    #[test]
    fn phone_numbers_with_a_plus_keep_only_the_plus_and_digits() {
        for written in ["+1 (555) 000-1234", "+1.555.000.1234", " +15550001234"] {
            assert_eq!(
                normalise_suppression_address(written).as_deref(),
                Ok("+15550001234"),
                "{written}"
            );
        }
    }

    #[test]
    fn other_addresses_are_only_trimmed() {
        for (written, stored) in [
            (" 5511999990000 ", "5511999990000"),
            ("Device-ABC", "Device-ABC"),
            ("+Alpha", "+Alpha"),
            ("two words@Example.com", "two words@Example.com"),
        ] {
            assert_eq!(
                normalise_suppression_address(written).as_deref(),
                Ok(stored)
            );
        }
    }

    #[test]
    fn empty_long_and_control_character_addresses_are_refused() {
        assert_eq!(
            normalise_suppression_address(" \t "),
            Err(AddressError::Empty)
        );
        assert_eq!(
            normalise_suppression_address(&"a".repeat(MAX_ADDRESS_BYTES + 1)),
            Err(AddressError::TooLong)
        );
        assert_eq!(
            normalise_suppression_address("a\u{0}b"),
            Err(AddressError::ControlCharacters)
        );
        // Separators do not count towards the limit.
        let spaced = format!("+1{}", " 5".repeat(200));
        assert!(normalise_suppression_address(&spaced).is_ok());
    }

    #[test]
    fn a_missing_or_blank_reason_is_opted_out_and_a_bad_one_is_refused() {
        assert_eq!(suppression_reason(None).as_deref(), Ok(DEFAULT_REASON));
        assert_eq!(
            suppression_reason(Some("  ")).as_deref(),
            Ok(DEFAULT_REASON)
        );
        assert_eq!(
            suppression_reason(Some(" asked by phone ")).as_deref(),
            Ok("asked by phone")
        );
        assert_eq!(
            suppression_reason(Some(&"é".repeat(MAX_REASON_CHARS))).map(|r| r.len()),
            Ok(MAX_REASON_CHARS * 2)
        );
        assert_eq!(
            suppression_reason(Some(&"x".repeat(MAX_REASON_CHARS + 1))),
            Err(ReasonError::TooLong)
        );
        assert_eq!(
            suppression_reason(Some("a\u{0}")),
            Err(ReasonError::ControlCharacters)
        );
    }
}
