//! The OpenAPI 3 document, generated from the handlers' annotations.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{campaigns, channels, health, lifecycle, progress, recipients};
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
        channels::create_channel,
        channels::list_channels,
        channels::get_channel,
        channels::update_channel,
        channels::delete_channel,
        campaigns::create_campaign,
        campaigns::list_campaigns,
        campaigns::get_campaign,
        campaigns::update_campaign,
        campaigns::delete_campaign,
        campaigns::duplicate_campaign,
        lifecycle::transition_campaign,
        lifecycle::bulk_transition,
        lifecycle::campaign_events,
        progress::campaign_progress,
        recipients::import_recipients,
        recipients::list_recipients,
        health::healthz,
        health::readyz,
    ),
    components(schemas(ErrorBody, ErrorDetail, CampaignView, CampaignPage, CreateCampaign, UpdateCampaign,
        TemplateSpec, ScheduleBody, BulkRequest, BulkResponse, BulkResult, EventView, EventList,
        RecipientImport, RecipientInput, ImportResult, RejectedRow, RecipientView, RecipientPage,
        progress::Progress, ChannelView, ChannelPage, CreateChannel, UpdateChannel, RateLimit, WaitingView,
        herald_core::send_window::SendWindow, herald_core::send_window::Day)),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
