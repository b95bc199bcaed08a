//! The OpenAPI 3.1 document, generated from the handlers' annotations plus the
//! conventions of [`Conventions`]. `scripts/api-conformance` validates it and
//! runs schemathesis against a live `herald all`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{
    ab, campaigns, channels, duplicate, health, lifecycle, progress, receipts, receipts_token,
    recipients, replicas, retry, suppressions,
};
use crate::suppression_views::*;
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

/// Conventions every operation shares, applied after the annotations:
/// - every authenticated operation documents `401` (no or bad token) and `503`
///   (the token is checked in Postgres, so any of them answers 503 while
///   Postgres is down);
/// - every response has a `description` (OpenAPI requires one); the
///   annotations set the specific ones, this fills the rest by status code.
struct Conventions;

/// The description of a response whose annotation gave none.
fn default_description(status: &str) -> &'static str {
    match status {
        "200" => "Success",
        "201" => "Created",
        "204" => "Done; no body",
        "400" => {
            "The request is malformed: invalid JSON, or a bad header (`If-Match`, `X-Correlation-Id`)"
        }
        "401" => "Missing or invalid bearer token",
        "404" => "No such resource for this tenant (a malformed id is a 404 too)",
        "409" => "The resource's state does not allow this (see `error.code`)",
        "412" => "`If-Match` names another version than the current one (`error.current_version`)",
        "413" => "The request body is larger than the limit",
        "415" => "The Content-Type is not one this operation takes",
        "422" => "A field or query parameter is missing, unknown or invalid (see `error.message`)",
        "503" => "Postgres is unavailable; retry shortly",
        _ => "See the error body",
    }
}

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::response::ResponseBuilder;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr};
        let error = || {
            ResponseBuilder::new()
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    for status in ["401", "503"] {
                        responses
                            .entry(status.to_owned())
                            .or_insert_with(|| RefOr::T(error()));
                    }
                }
                for (status, response) in responses.iter_mut() {
                    if let RefOr::T(response) = response {
                        if response.description.is_empty() {
                            response.description = default_description(status).to_owned();
                        }
                    }
                }
            }
        }
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
        receipts_token::rotate_channel_receipts_token,
        receipts_token::rotate_campaign_receipts_token,
        campaigns::create_campaign,
        campaigns::list_campaigns,
        campaigns::get_campaign,
        campaigns::update_campaign,
        campaigns::delete_campaign,
        duplicate::duplicate_campaign,
        lifecycle::transition_campaign,
        lifecycle::bulk_transition,
        lifecycle::campaign_events,
        ab::pick_winner,
        retry::retry_campaign,
        progress::campaign_progress,
        recipients::import_recipients,
        recipients::list_recipients,
        suppressions::add_suppressions,
        suppressions::list_suppressions,
        suppressions::delete_suppression,
        receipts::post_receipts,
        receipts::post_receipts_by_event,
        replicas::list_replicas,
        health::healthz,
        health::readyz,
    ),
    components(schemas(ErrorBody, ErrorDetail, CampaignView, CampaignPage, CreateCampaign, UpdateCampaign,
        TemplateSpec, ScheduleBody, BulkRequest, BulkResponse, BulkResult, EventView, EventList,
        RecipientImport, RecipientInput, TransitionAction, BulkAction, ImportResult, RejectedRecipient, RejectedRow, RejectReason, RecipientView, RecipientPage,
        progress::Progress, ChannelView, ChannelPage, CreateChannel, UpdateChannel, RateLimit, WaitingView,
        herald_core::send_window::SendWindow, herald_core::send_window::Day,
        herald_core::address::AddressKind, herald_core::channel::ChannelConfig,
        SuppressionImport, SuppressionInput, SuppressionResult, SuppressionView, SuppressionPage,
        herald_core::reason::Reason, receipts::ReceiptsResult, herald_core::campaigns::Funnel,
        lifecycle::AcknowledgedTransition, crate::acks::Acks, crate::acks::AckedReplica,
        crate::acks::MissingReplica, crate::acks::WaitFor, replicas::ReplicaView, replicas::ReplicaList,
        VariantSpec, VariantView, AbTestView, WinnerBody, herald_core::ab::AbTest,
        herald_core::ab::WinnerMetric, herald_core::ab::VariantCounters,
        retry::RetryRequest, retry::RetryResult, herald_core::retry::RetryScope,
        herald_core::auto_pause::AutoPause)),
    modifiers(&BearerAuth, &Conventions)
)]
#[derive(Debug)]
pub struct ApiDoc;

pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).expect("the document serializes")
    }

    /// Every `(label, operation)` of the document.
    fn operations(doc: &Value) -> Vec<(String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                out.push((format!("{} {path}", method.to_uppercase()), op));
            }
        }
        out
    }

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        &doc["components"]["schemas"][name]
    }

    fn param<'a>(op: &'a Value, name: &str) -> &'a Value {
        op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))
    }

    #[test]
    fn every_response_of_every_operation_has_a_description() {
        let doc = document();
        let ops = operations(&doc);
        assert!(ops.len() >= 22, "{} operations", ops.len());
        for (label, op) in ops {
            for (status, response) in op["responses"].as_object().expect("responses") {
                let description = response["description"].as_str().unwrap_or_default();
                assert!(
                    !description.is_empty(),
                    "{label} {status} has no description"
                );
            }
        }
    }

    #[test]
    fn every_authenticated_operation_documents_401_and_503() {
        let doc = document();
        for (label, op) in operations(&doc) {
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                for status in ["401", "503"] {
                    assert_eq!(
                        op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{label} {status}"
                    );
                }
            }
        }
    }

    #[test]
    fn transition_and_bulk_actions_are_enums_of_exactly_the_actions_the_api_takes() {
        let doc = document();
        let one = &doc["paths"]["/v1/campaigns/{id}/{action}"]["post"];
        assert_eq!(
            param(one, "action")["schema"]["$ref"],
            "#/components/schemas/TransitionAction"
        );
        assert_eq!(
            schema(&doc, "TransitionAction")["enum"],
            serde_json::json!(["schedule", "unschedule", "start", "pause", "resume", "stop"])
        );
        let bulk = &doc["paths"]["/v1/campaigns/bulk/{action}"]["post"];
        assert_eq!(
            param(bulk, "action")["schema"]["$ref"],
            "#/components/schemas/BulkAction"
        );
        assert_eq!(
            schema(&doc, "BulkAction")["enum"],
            serde_json::json!(["pause", "resume", "stop"])
        );
    }

    #[test]
    fn the_operations_that_record_a_correlation_id_document_its_header() {
        let doc = document();
        for (path, method) in [
            ("/v1/campaigns", "post"),
            ("/v1/campaigns/{id}", "patch"),
            ("/v1/campaigns/{id}/duplicate", "post"),
            ("/v1/campaigns/{id}/{action}", "post"),
            ("/v1/campaigns/bulk/{action}", "post"),
        ] {
            let header = param(&doc["paths"][path][method], "X-Correlation-Id");
            assert_eq!(header["in"], "header", "{method} {path}");
            assert_eq!(header["schema"]["pattern"], "^[A-Za-z0-9._:-]{1,128}$");
        }
    }

    #[test]
    fn the_recipient_import_documents_json_and_csv_bodies() {
        let doc = document();
        let content =
            &doc["paths"]["/v1/campaigns/{id}/recipients"]["post"]["requestBody"]["content"];
        assert_eq!(
            content["application/json"]["schema"]["$ref"],
            "#/components/schemas/RecipientImport"
        );
        assert_eq!(content["text/csv"]["schema"]["type"], "string");
    }

    #[test]
    fn the_suppression_list_documents_json_and_csv_bodies_and_its_address_path() {
        let doc = document();
        let post = &doc["paths"]["/v1/suppressions"]["post"];
        let content = &post["requestBody"]["content"];
        assert_eq!(
            content["application/json"]["schema"]["$ref"],
            "#/components/schemas/SuppressionImport"
        );
        assert_eq!(content["text/csv"]["schema"]["type"], "string");
        for status in ["200", "400", "413", "415", "422", "401", "503"] {
            assert!(post["responses"][status].is_object(), "POST {status}");
        }
        let delete = &doc["paths"]["/v1/suppressions/{address}"]["delete"];
        assert_eq!(param(delete, "address")["in"], "path");
        for status in ["204", "404", "422", "401", "503"] {
            assert!(delete["responses"][status].is_object(), "DELETE {status}");
        }
        assert_eq!(
            param(&doc["paths"]["/v1/suppressions"]["get"], "address")["in"],
            "query"
        );
    }

    /// Every schema of a property called `name`, anywhere in `value`.
    fn properties<'a>(value: &'a Value, name: &str, out: &mut Vec<&'a Value>) {
        match value {
            Value::Object(map) => {
                if let Some(found) = map.get("properties").and_then(|p| p.get(name)) {
                    out.push(found);
                }
                map.values().for_each(|child| properties(child, name, out));
            }
            Value::Array(items) => items.iter().for_each(|item| properties(item, name, out)),
            _ => {}
        }
    }

    #[test]
    fn channel_urls_are_documented_as_uris() {
        let doc = document();
        for field in ["url", "base_url"] {
            let mut found = Vec::new();
            properties(schema(&doc, "ChannelConfig"), field, &mut found);
            assert!(!found.is_empty(), "ChannelConfig has no {field}");
            for property in found {
                assert_eq!(property["format"], "uri", "{field}: {property}");
            }
        }
    }

    #[test]
    fn every_channel_provider_documents_the_addressing_keys() {
        let doc = document();
        let providers = schema(&doc, "ChannelConfig")["oneOf"]
            .as_array()
            .expect("a oneOf of providers");
        assert_eq!(providers.len(), 3);
        for provider in providers {
            let properties = &provider["properties"];
            assert!(properties["address_kind"].is_object(), "{provider}");
            assert_eq!(
                properties["default_region"]["pattern"], "^[A-Za-z]{2}$",
                "{provider}"
            );
        }
        let kinds = &schema(&doc, "AddressKind")["enum"];
        assert_eq!(kinds, &serde_json::json!(["phone", "email", "opaque"]));
    }

    #[test]
    fn list_cursors_say_what_they_are() {
        let doc = document();
        for path in [
            "/v1/campaigns",
            "/v1/channels",
            "/v1/campaigns/{id}/recipients",
            "/v1/suppressions",
        ] {
            let cursor = param(&doc["paths"][path]["get"], "cursor");
            let description = cursor["description"].as_str().unwrap_or_default();
            assert!(description.contains("next_cursor"), "{path}: {description}");
            assert!(
                cursor["schema"]["pattern"].is_string(),
                "{path}: no pattern"
            );
        }
    }

    #[test]
    fn reason_codes_are_one_enum_for_the_filter_the_recipient_and_the_campaign_counts() {
        let doc = document();
        let codes: Vec<&str> = herald_core::reason::Reason::ALL
            .map(|r| r.as_str())
            .to_vec();
        assert_eq!(schema(&doc, "Reason")["enum"], serde_json::json!(codes));
        let filter = param(
            &doc["paths"]["/v1/campaigns/{id}/recipients"]["get"],
            "reason",
        );
        assert!(
            filter["schema"]
                .to_string()
                .contains("#/components/schemas/Reason"),
            "{filter}"
        );
        let recipient = &schema(&doc, "RecipientView")["properties"]["reason"];
        assert!(
            recipient
                .to_string()
                .contains("#/components/schemas/Reason"),
            "{recipient}"
        );
        let reasons = &schema(&doc, "CampaignView")["properties"]["reasons"];
        assert_eq!(reasons["type"], "object", "{reasons}");
        assert!(
            reasons["additionalProperties"]["type"] == "integer",
            "{reasons}"
        );
    }
}
