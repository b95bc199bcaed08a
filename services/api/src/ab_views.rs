//! Request and response bodies of A/B/n tests (docs/AB_TESTS.md): a campaign's
//! `variants` and `ab_test`, and the winner endpoint's body.

use chrono::{DateTime, Utc};
use herald_core::ab::{AbTest, Variant, VariantCounters, WinnerMetric};
use herald_core::campaigns::Campaign;
use serde::{Deserialize, Serialize};

use crate::views::TemplateSpec;

/// One variant of a new A/B campaign.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// Unique within the campaign, 1 to 64 characters.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    pub template: TemplateSpec,
    /// The variant's share of the recipients is its weight over the sum of
    /// the weights; a positive integer up to 1000000.
    #[schema(minimum = 1, maximum = 1000000)]
    pub weight: u32,
}

impl VariantSpec {
    /// As stored in `campaigns.variants`.
    pub fn stored(&self) -> Variant {
        Variant {
            name: self.name.clone(),
            template: serde_json::to_value(&self.template).unwrap_or_default(),
            weight: self.weight,
        }
    }
}

/// One variant of a campaign, with its counters.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VariantView {
    pub name: String,
    #[schema(value_type = Object)]
    pub template: serde_json::Value,
    pub weight: u32,
    /// Its recipients (assigned by weight at import), what was sent with this
    /// variant (the winner's include the rest of the list), and how far its
    /// messages got (delivery receipts).
    pub counters: VariantCounters,
}

/// A campaign's A/B test: the plan, and the winner once decided.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AbTestView {
    pub test_percent: u8,
    pub winner_metric: WinnerMetric,
    /// Null: only an operator picks the winner.
    pub decide_after_seconds: Option<u32>,
    /// The winning variant's name; null until decided.
    pub winner: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

/// `POST /v1/campaigns/{id}/ab/winner`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WinnerBody {
    /// The name of one of the campaign's variants.
    #[schema(min_length = 1, max_length = 64)]
    pub variant: String,
}

/// The variants of `campaign` with their counters; None for a plain campaign.
pub fn variant_views(campaign: &Campaign) -> Option<Vec<VariantView>> {
    let variants: Vec<Variant> = serde_json::from_value(campaign.variants.clone()?).ok()?;
    Some(
        variants
            .into_iter()
            .map(|v| VariantView {
                counters: campaign
                    .variant_counts
                    .get(&v.name)
                    .copied()
                    .unwrap_or_default(),
                name: v.name,
                template: v.template,
                weight: v.weight,
            })
            .collect(),
    )
}

/// The A/B test of `campaign`, if it has one.
pub fn ab_test_view(campaign: &Campaign) -> Option<AbTestView> {
    let test: AbTest = serde_json::from_value(campaign.ab_test.clone()?).ok()?;
    Some(AbTestView {
        test_percent: test.test_percent,
        winner_metric: test.winner_metric,
        decide_after_seconds: test.decide_after_seconds,
        winner: campaign.ab_winner.clone(),
        decided_at: campaign.ab_decided_at,
    })
}

/// The templates a campaign sends: its one `template`, or every variant's.
pub fn stored_templates(campaign: &Campaign) -> Vec<TemplateSpec> {
    match &campaign.variants {
        Some(variants) => serde_json::from_value::<Vec<Variant>>(variants.clone())
            .map(|vs| {
                vs.iter()
                    .filter_map(|v| TemplateSpec::from_stored(&v.template))
                    .collect()
            })
            .unwrap_or_default(),
        None => TemplateSpec::from_stored(&campaign.template)
            .into_iter()
            .collect(),
    }
}
