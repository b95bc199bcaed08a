//! The OpenAPI 3 document, generated from the handlers' annotations.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{campaigns, health, progress, recipients};
use crate::views::*;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Herald", description = "Outbound message campaigns with a pause that really pauses."),
    paths(
        campaigns::create_campaign,
        campaigns::list_campaigns,
        campaigns::get_campaign,
        campaigns::update_campaign,
        campaigns::delete_campaign,
        campaigns::duplicate_campaign,
        campaigns::transition_campaign,
        campaigns::bulk_transition,
        campaigns::campaign_events,
        progress::campaign_progress,
        recipients::import_recipients,
        recipients::list_recipients,
        health::healthz,
        health::readyz,
    ),
    components(schemas(ErrorBody, ErrorDetail, CampaignView, CampaignPage, CreateCampaign, UpdateCampaign,
        TemplateSpec, ScheduleBody, BulkRequest, BulkResponse, BulkResult, EventView, EventList,
        RecipientImport, RecipientInput, ImportResult, RejectedRow, RecipientView, RecipientPage,
        progress::Progress)),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
