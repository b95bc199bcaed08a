//! A/B/n tests (docs/AB_TESTS.md): what a new campaign's `template`,
//! `variants` and `ab_test` must be, and `POST /v1/campaigns/{id}/ab/winner`,
//! where an operator picks the winner.

use std::collections::HashSet;

use axum::extract::{Path, State};
use herald_core::ab::decision::{self, DecideError, Pick};
use herald_core::ab::{AbTest, MAX_VARIANTS, MIN_VARIANTS};
use herald_core::campaigns::fetch_campaign;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, AuthTenant, RequestCorrelation};
use crate::routes::campaigns::validate_template;
use crate::state::AppState;
use crate::views::*;

/// The longest `decide_after_seconds`: 30 days.
const MAX_DECIDE_AFTER: u32 = 2_592_000;
const MAX_WEIGHT: u32 = 1_000_000;

/// What a new campaign sends, as stored: (`template`, `variants`, `ab_test`).
pub type Messages = (
    serde_json::Value,
    Option<serde_json::Value>,
    Option<serde_json::Value>,
);

/// Checks a new campaign's `template`, `variants` and `ab_test` (422 with what
/// is wrong), and returns them as stored: an A/B campaign's `template` is null.
pub fn validate_messages(body: &CreateCampaign) -> ApiResult<Messages> {
    match (&body.template, &body.variants) {
        (Some(_), Some(_)) => Err(ApiError::validation(
            "give either template (one message) or variants (an A/B test), not both",
        )),
        (None, None) => Err(ApiError::validation(
            "give template (one message) or variants (an A/B test)",
        )),
        (Some(template), None) => {
            if body.ab_test.is_some() {
                return Err(ApiError::validation(
                    "ab_test needs variants: give 2 to 5 variants instead of template",
                ));
            }
            validate_template(template, "template")?;
            Ok((
                serde_json::to_value(template).unwrap_or_default(),
                None,
                None,
            ))
        }
        (None, Some(variants)) => {
            validate_variants(variants)?;
            if let Some(test) = &body.ab_test {
                validate_ab_test(test)?;
            }
            let stored: Vec<_> = variants.iter().map(VariantSpec::stored).collect();
            Ok((
                serde_json::Value::Null,
                Some(serde_json::to_value(stored).unwrap_or_default()),
                body.ab_test
                    .map(|t| serde_json::to_value(t).unwrap_or_default()),
            ))
        }
    }
}

fn validate_variants(variants: &[VariantSpec]) -> ApiResult<()> {
    if !(MIN_VARIANTS..=MAX_VARIANTS).contains(&variants.len()) {
        return Err(ApiError::validation(format!(
            "variants must hold {MIN_VARIANTS} to {MAX_VARIANTS} variants, not {}",
            variants.len()
        )));
    }
    let mut names = HashSet::new();
    for (i, variant) in variants.iter().enumerate() {
        let chars = variant.name.chars().count();
        if !(1..=64).contains(&chars) || variant.name.chars().any(char::is_control) {
            return Err(ApiError::validation(format!(
                "variants[{i}].name must be 1 to 64 characters, without control characters"
            )));
        }
        if !names.insert(variant.name.as_str()) {
            return Err(ApiError::validation(format!(
                "variants[{i}].name {:?} is used twice; variant names must be unique",
                variant.name
            )));
        }
        if !(1..=MAX_WEIGHT).contains(&variant.weight) {
            return Err(ApiError::validation(format!(
                "variants[{i}].weight must be a positive integer up to {MAX_WEIGHT}"
            )));
        }
        validate_template(&variant.template, &format!("variants[{i}].template"))?;
    }
    Ok(())
}

fn validate_ab_test(test: &AbTest) -> ApiResult<()> {
    if !(1..=99).contains(&test.test_percent) {
        return Err(ApiError::validation(
            "ab_test.test_percent must be between 1 and 99",
        ));
    }
    if test
        .decide_after_seconds
        .is_some_and(|s| !(1..=MAX_DECIDE_AFTER).contains(&s))
    {
        return Err(ApiError::validation(format!(
            "ab_test.decide_after_seconds must be null or between 1 and {MAX_DECIDE_AFTER}"
        )));
    }
    Ok(())
}

impl From<DecideError> for ApiError {
    fn from(error: DecideError) -> Self {
        let message = error.to_string();
        match error {
            DecideError::NotFound => ApiError::not_found(),
            DecideError::NotAbTest => ApiError::conflict("not_ab_test", message),
            DecideError::AlreadyDecided(_) => ApiError::conflict("ab_already_decided", message),
            DecideError::NotDecidable(status) => {
                let mut e = ApiError::conflict("ab_not_decidable", message);
                e.detail.from = Some(status.as_str().into());
                e
            }
            DecideError::UnknownVariant(..) => ApiError::validation(message),
            DecideError::Database(e) => e.into(),
        }
    }
}

#[utoipa::path(post, path = "/v1/campaigns/{id}/ab/winner", request_body = WinnerBody,
    params(("id" = Uuid, Path),
           ("X-Correlation-Id" = Option<String>, Header, nullable = false, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "the caller's id for this request; recorded on its events and carried on the bus (400 when malformed)")),
    responses((status = 200, description = "The winner is recorded (event `ab_decided`); a sending campaign sends the rest of its list with it", body = CampaignView),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "Not an A/B test (`not_ab_test`), already decided (`ab_already_decided`), or neither sending nor paused (`ab_not_decidable`)", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, description = "No variant of that name, or a malformed body", body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn pick_winner(
    State(state): State<AppState>,
    auth: AuthTenant,
    correlation: RequestCorrelation,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    ApiJson(body): ApiJson<WinnerBody>,
) -> ApiResult<axum::Json<CampaignView>> {
    let Path(id) = id?;
    let actor = auth.actor(&correlation);
    let pick = Pick::Operator(&body.variant);
    decision::decide(&state.lifecycle, id, Some(auth.0.id), pick, &actor).await?;
    let campaign = fetch_campaign(&state.pool, id, Some(auth.0.id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(CampaignView::of(campaign, &state)))
}
