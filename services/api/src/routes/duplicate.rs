//! `POST /v1/campaigns/{id}/duplicate`: a new draft with the campaign's channel
//! (a private channel is copied, so the copy has a budget of its own), template
//! or variants, limits, window and recipients, every recipient pending again.
//! An A/B campaign's copy assigns its recipients afresh: the assignment hashes
//! the campaign id with the address (`herald_core::ab`), and the copy has a
//! new id.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use herald_core::ab::Assigner;
use herald_core::campaigns::{Campaign, fetch_campaign};
use herald_core::channels;
use herald_core::transitions::append_event;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AuthTenant, RequestCorrelation};
use crate::routes::campaigns::created_payload;
use crate::state::AppState;
use crate::views::CampaignView;

/// Longest campaign name, in characters (`validate_name`).
const MAX_NAME_CHARS: usize = 200;

/// The copy's name: `<name> (copy)`, the original cut short enough for the
/// suffix to fit in 200 characters, so a copy of a 200-character name is still
/// told apart from it. A name that already ends in the suffix at the limit
/// would come out unchanged, so it gets ` (copy 2)` instead.
pub fn copy_name(original: &str) -> String {
    let with_suffix = |suffix: &str| {
        let room = MAX_NAME_CHARS - suffix.chars().count();
        let base: String = original.chars().take(room).collect();
        format!("{}{suffix}", base.trim_end())
    };
    let name = with_suffix(" (copy)");
    if name != original {
        name
    } else {
        with_suffix(" (copy 2)")
    }
}

/// The copy's channel: a new private copy of the source's private channel (a
/// budget of its own), or the same shared channel.
async fn copy_channel(
    tx: &mut Transaction<'_, Postgres>,
    source: &Campaign,
    copy_name: &str,
) -> Result<Uuid, sqlx::Error> {
    if channels::is_private(&mut **tx, source.channel_id).await? == Some(true) {
        if let Some(copy) = channels::copy_private_channel(tx, source.channel_id, copy_name).await?
        {
            return Ok(copy);
        }
    }
    Ok(source.channel_id)
}

/// Copies the recipient list of `source` into `copy`, every row pending again
/// (address as normalised and as typed, and its kind, come along). Returns
/// how many rows were copied.
async fn copy_recipients(
    tx: &mut Transaction<'_, Postgres>,
    copy: Uuid,
    source: Uuid,
) -> Result<i64, sqlx::Error> {
    let rows = sqlx::query(
        "INSERT INTO recipients (campaign_id, address, variables, address_input, address_kind)
         SELECT $1, address, variables, address_input, address_kind
         FROM recipients WHERE campaign_id = $2 ORDER BY id",
    )
    .bind(copy)
    .bind(source)
    .execute(&mut **tx)
    .await?
    .rows_affected() as i64;
    sqlx::query("UPDATE campaigns SET total_count = $2, pending_count = $2 WHERE id = $1")
        .bind(copy)
        .bind(rows)
        .execute(&mut **tx)
        .await?;
    Ok(rows)
}

/// Gives every recipient of the copy `copy` its variant and cohort, page by
/// page, and counts them per variant (shard 0), as an import does.
async fn assign_copied(
    tx: &mut Transaction<'_, Postgres>,
    copy: Uuid,
    assigner: &Assigner,
) -> Result<(), sqlx::Error> {
    let mut after = 0i64;
    loop {
        let page: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, address FROM recipients WHERE campaign_id = $1 AND id > $2 ORDER BY id LIMIT 5000",
        )
        .bind(copy)
        .bind(after)
        .fetch_all(&mut **tx)
        .await?;
        let Some(last) = page.last().map(|(id, _)| *id) else {
            return Ok(());
        };
        let ids: Vec<i64> = page.iter().map(|(id, _)| *id).collect();
        let (variants, cohorts): (Vec<String>, Vec<Option<&str>>) = page
            .iter()
            .map(|(_, address)| {
                let (variant, cohort) = assigner.assign(address);
                (variant.to_owned(), cohort.map(|c| c.as_str()))
            })
            .unzip();
        sqlx::query(
            "WITH upd AS (
                 UPDATE recipients r SET variant = u.variant, ab_cohort = u.cohort
                 FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(id, variant, cohort)
                 WHERE r.campaign_id = $1 AND r.id = u.id
                 RETURNING r.variant, r.ab_cohort
             )
             INSERT INTO campaign_variant_counts AS vc
                 (campaign_id, shard, variant, recipients, test_recipients, test_open)
             SELECT $1, 0, variant, count(*), count(*) FILTER (WHERE ab_cohort = 'test'),
                    count(*) FILTER (WHERE ab_cohort = 'test')
             FROM upd GROUP BY variant ORDER BY variant
             ON CONFLICT (campaign_id, shard, variant) DO UPDATE SET
                 recipients = vc.recipients + excluded.recipients,
                 test_recipients = vc.test_recipients + excluded.test_recipients,
                 test_open = vc.test_open + excluded.test_open",
        )
        .bind(copy)
        .bind(&ids)
        .bind(&variants)
        .bind(&cohorts)
        .execute(&mut **tx)
        .await?;
        after = last;
    }
}

async fn copy_campaign(
    tx: &mut Transaction<'_, Postgres>,
    source: Uuid,
    tenant: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    let Some(original) = fetch_campaign(&mut **tx, source, Some(tenant)).await? else {
        return Ok(None);
    };
    let name = copy_name(&original.name);
    let channel_id = copy_channel(tx, &original, &name).await?;
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO campaigns (id, tenant_id, name, channel_id, template, status,
                                rate_limit_per_second, send_window, variants, ab_test, auto_pause)
         SELECT $1, tenant_id, $4, $5, template, 'draft', rate_limit_per_second, send_window,
                variants, ab_test, auto_pause
         FROM campaigns WHERE id = $2 AND tenant_id = $3",
    )
    .bind(id)
    .bind(source)
    .bind(tenant)
    .bind(&name)
    .bind(channel_id)
    .execute(&mut **tx)
    .await?;
    copy_recipients(tx, id, source).await?;
    if let Some(assigner) = Assigner::of(id, original.variants.as_ref(), original.ab_test.as_ref())
    {
        assign_copied(tx, id, &assigner).await?;
    }
    Ok(Some(id))
}

#[utoipa::path(post, path = "/v1/campaigns/{id}/duplicate", params(("id" = Uuid, Path), ("X-Correlation-Id" = Option<String>, Header, nullable = false, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "the caller's id for this request; recorded on its events and carried on the bus (400 when malformed)")),
    responses((status = 201, description = "The copy, a new draft with the same recipients, named `<name> (copy)`", body = CampaignView),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn duplicate_campaign(
    State(state): State<AppState>,
    auth: AuthTenant,
    correlation: RequestCorrelation,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> ApiResult<impl IntoResponse> {
    let Path(id) = id?;
    let mut tx = state.pool.begin().await?;
    let copy = copy_campaign(&mut tx, id, auth.0.id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    append_event(
        &mut tx,
        copy,
        "created",
        created_payload(),
        &auth.actor(&correlation),
    )
    .await?;
    tx.commit().await?;
    state.lifecycle.outbox.publish_fast(copy).await;
    let campaign = fetch_campaign(&state.pool, copy, Some(auth.0.id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CampaignView::of(campaign, &state)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_name_fits_the_limit_and_differs_from_the_original() {
        assert_eq!(copy_name("welcome"), "welcome (copy)");
        let long = "x".repeat(200);
        let copy = copy_name(&long);
        assert_eq!(copy.chars().count(), 200);
        assert_ne!(copy, long);
        assert!(copy.ends_with(" (copy)"));
        let multibyte = "é".repeat(200);
        assert_eq!(copy_name(&multibyte).chars().count(), 200);
        // A copy of a copy at the limit would come out as itself.
        let copied = copy_name(&long);
        let again = copy_name(&copied);
        assert_ne!(again, copied);
        assert!(again.ends_with(" (copy 2)"), "{again}");
        assert!(again.chars().count() <= 200);
    }
}
