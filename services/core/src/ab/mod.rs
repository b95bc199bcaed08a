//! A/B/n tests (docs/AB_TESTS.md): a campaign's variants, which variant and
//! which cohort each recipient gets, and the counters per variant.
//!
//! **Assignment.** Each recipient's variant and cohort are decided at import
//! from its campaign id and its normalised address alone ([`assign`]), so the
//! same list imported twice (or in any order, or split over several imports)
//! splits the same way, and nothing at send time needs to remember a random
//! draw. The hash is SHA-256 of `"{campaign id}\n{purpose}\n{address}"`; its
//! first 8 bytes, read as a big-endian integer `h`, give a point
//! `h * total / 2^64` in `[0, total)`. The variant is the first whose
//! cumulative weight exceeds the point (purpose `variant`, `total` the sum of
//! the weights); the recipient is in the test cohort when the point for purpose
//! `cohort` and `total = 100` is below `test_percent`. The two purposes make
//! the cohort independent of the variant, so the test cohort splits by weight
//! too. SHA-256 is stable across releases and platforms (unlike the standard
//! library's hasher), and multiplying instead of taking a remainder keeps every
//! variant within one part in 2^64 of its weight's share.
//!
//! The decision (a winner, by an operator or by the metric) lives in
//! [`decision`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub mod decision;

/// At most this many variants per campaign, and at least [`MIN_VARIANTS`].
pub const MAX_VARIANTS: usize = 5;
pub const MIN_VARIANTS: usize = 2;

/// One variant as stored in `campaigns.variants`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    /// A template object, as a plain campaign's `template` (`{"body", "strict"}`).
    pub template: serde_json::Value,
    pub weight: u32,
}

/// What picks the winner when the decision is automatic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum WinnerMetric {
    /// Messages the provider accepted.
    #[default]
    Sent,
    /// Messages delivered (or read), from delivery receipts.
    Delivered,
    /// Messages read, from delivery receipts.
    Read,
}

impl WinnerMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            WinnerMetric::Sent => "sent",
            WinnerMetric::Delivered => "delivered",
            WinnerMetric::Read => "read",
        }
    }
}

/// A test-then-winner plan, as stored in `campaigns.ab_test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbTest {
    /// The share of recipients, in percent (1 to 99), sent first as the test.
    #[schema(minimum = 1, maximum = 99)]
    pub test_percent: u8,
    pub winner_metric: WinnerMetric,
    /// Seconds after the test cohort is done when the metric picks the
    /// winner (1 to 2592000); null: only an operator picks one.
    #[schema(minimum = 1, maximum = 2592000)]
    pub decide_after_seconds: Option<u32>,
}

/// Which part of an A/B test a recipient is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cohort {
    /// Sent first, with its own variant.
    Test,
    /// Sent after the decision, with the winner.
    Rest,
}

impl Cohort {
    pub fn as_str(self) -> &'static str {
        match self {
            Cohort::Test => "test",
            Cohort::Rest => "rest",
        }
    }
}

/// A point in `[0, total)` from the hash of (campaign, purpose, address).
fn point(campaign: Uuid, purpose: &str, address: &str, total: u64) -> u64 {
    let digest = Sha256::new()
        .chain_update(campaign.to_string())
        .chain_update("\n")
        .chain_update(purpose)
        .chain_update("\n")
        .chain_update(address)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let h = u64::from_be_bytes(first);
    ((u128::from(h) * u128::from(total)) >> 64) as u64
}

/// The index of the variant `address` gets in `campaign`, by `weights`
/// (positive, in the campaign's variant order). See the module docs.
pub fn variant_index(campaign: Uuid, address: &str, weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return 0;
    }
    let at = point(campaign, "variant", address, total);
    let mut cumulative = 0u64;
    for (index, &weight) in weights.iter().enumerate() {
        cumulative += u64::from(weight);
        if at < cumulative {
            return index;
        }
    }
    weights.len() - 1
}

/// Whether `address` is in the test cohort of `campaign` (see the module docs).
pub fn cohort(campaign: Uuid, address: &str, test_percent: u8) -> Cohort {
    if point(campaign, "cohort", address, 100) < u64::from(test_percent) {
        Cohort::Test
    } else {
        Cohort::Rest
    }
}

/// How an import assigns the recipients of one campaign.
#[derive(Debug, Clone)]
pub struct Assigner {
    campaign: Uuid,
    names: Vec<String>,
    weights: Vec<u32>,
    test_percent: Option<u8>,
}

impl Assigner {
    /// The assigner of an A/B campaign; None for a plain one (or unreadable
    /// stored variants, which the API never writes).
    pub fn of(
        campaign: Uuid,
        variants: Option<&serde_json::Value>,
        ab_test: Option<&serde_json::Value>,
    ) -> Option<Self> {
        let variants: Vec<Variant> = serde_json::from_value(variants?.clone()).ok()?;
        if variants.is_empty() {
            return None;
        }
        let test: Option<AbTest> = ab_test.and_then(|t| serde_json::from_value(t.clone()).ok());
        Some(Self {
            campaign,
            names: variants.iter().map(|v| v.name.clone()).collect(),
            weights: variants.iter().map(|v| v.weight).collect(),
            test_percent: test.map(|t| t.test_percent),
        })
    }

    /// The variant name and cohort (None without an `ab_test`) of `address`,
    /// the normalised address.
    pub fn assign(&self, address: &str) -> (&str, Option<Cohort>) {
        let index = variant_index(self.campaign, address, &self.weights);
        let cohort = self.test_percent.map(|p| cohort(self.campaign, address, p));
        (&self.names[index], cohort)
    }
}

/// One variant's counters (`variants[].counters` of a campaign).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VariantCounters {
    /// Recipients assigned this variant at import, by weight.
    pub recipients: i64,
    /// Of those, the ones in the test cohort (0 without an `ab_test`).
    pub test_recipients: i64,
    /// Recipients sent this variant (the winner's include the rest cohort).
    pub sent: i64,
    pub failed: i64,
    /// Messages of this variant delivered or read (delivery receipts).
    pub delivered: i64,
    /// Messages of this variant read.
    pub read: i64,
}

impl VariantCounters {
    /// The figure `metric` looks at.
    pub fn metric(&self, metric: WinnerMetric) -> i64 {
        match metric {
            WinnerMetric::Sent => self.sent,
            WinnerMetric::Delivered => self.delivered,
            WinnerMetric::Read => self.read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("+5511{:09}", 900_000_000 + i))
            .collect()
    }

    #[test]
    fn assignment_depends_only_on_the_campaign_and_the_address() {
        let campaign = Uuid::new_v4();
        let weights = [1, 2, 3];
        for address in addresses(500) {
            let first = variant_index(campaign, &address, &weights);
            assert_eq!(first, variant_index(campaign, &address, &weights));
            assert_eq!(
                cohort(campaign, &address, 30),
                cohort(campaign, &address, 30)
            );
        }
        // A known value, so the function cannot change unnoticed between releases.
        let fixed = Uuid::parse_str("00000000-0000-4000-8000-000000000001").unwrap();
        let got: Vec<usize> = addresses(8)
            .iter()
            .map(|a| variant_index(fixed, a, &[50, 50]))
            .collect();
        assert_eq!(got, KNOWN_SPLIT);
    }

    // Computed independently (Python hashlib) from the definition in the module docs.
    const KNOWN_SPLIT: [usize; 8] = [1, 1, 0, 0, 1, 0, 1, 1];

    #[test]
    fn variants_are_assigned_in_proportion_to_their_weights() {
        let campaign = Uuid::new_v4();
        let weights = [10, 30, 60];
        let mut counts = [0usize; 3];
        let n = 30_000;
        for address in addresses(n) {
            counts[variant_index(campaign, &address, &weights)] += 1;
        }
        for (count, weight) in counts.iter().zip(weights) {
            let share = *count as f64 / n as f64;
            let expected = f64::from(weight) / 100.0;
            assert!(
                (share - expected).abs() < 0.015,
                "weight {weight}: share {share}"
            );
        }
    }

    #[test]
    fn the_test_cohort_takes_its_percent_and_splits_by_weight_too() {
        let campaign = Uuid::new_v4();
        let n = 20_000;
        let (mut test, mut test_a) = (0, 0);
        for address in addresses(n) {
            if cohort(campaign, &address, 20) == Cohort::Test {
                test += 1;
                test_a += usize::from(variant_index(campaign, &address, &[1, 1]) == 0);
            }
        }
        let share = test as f64 / n as f64;
        assert!((share - 0.20).abs() < 0.015, "test share {share}");
        let a = test_a as f64 / test as f64;
        assert!((a - 0.5).abs() < 0.04, "variant A within the test {a}");
    }

    #[test]
    fn another_campaign_splits_the_same_list_differently() {
        let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
        let differ = addresses(200)
            .iter()
            .filter(|a| variant_index(one, a, &[1, 1]) != variant_index(two, a, &[1, 1]))
            .count();
        assert!(differ > 50, "only {differ} of 200 differ");
    }

    #[test]
    fn the_assigner_names_the_variant_and_the_cohort() {
        let campaign = Uuid::new_v4();
        let variants = serde_json::json!([
            {"name": "A", "template": {"body": "a"}, "weight": 1},
            {"name": "B", "template": {"body": "b"}, "weight": 1}
        ]);
        let test = serde_json::json!({"test_percent": 20, "winner_metric": "sent", "decide_after_seconds": null});
        let plain = Assigner::of(campaign, Some(&variants), None).unwrap();
        let (name, no_cohort) = plain.assign("+15550001");
        assert!(name == "A" || name == "B");
        assert_eq!(no_cohort, None);
        let tested = Assigner::of(campaign, Some(&variants), Some(&test)).unwrap();
        assert!(tested.assign("+15550001").1.is_some());
        assert!(Assigner::of(campaign, None, None).is_none());
    }
}
