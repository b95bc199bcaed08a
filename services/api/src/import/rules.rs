//! What an import checks and changes on each row, from the campaign's channel
//! (how addresses are read, see [`herald_core::address`]), template or
//! variants (which variables a strict template requires), and for an A/B
//! campaign which variant and cohort the row gets ([`herald_core::ab`]).

use std::collections::BTreeSet;

use herald_core::ab::Assigner;
use herald_core::address::{AddressKind, Addressing, Normaliser};
use herald_core::campaigns::Campaign;
use herald_core::template::MessageTemplate;

use crate::views::{RejectReason, contains_nul, stored_templates};

/// The per-row rules of one import.
#[derive(Debug)]
pub struct ImportRules {
    normaliser: Normaliser,
    /// The top-level variables the template (or any variant's) uses, sorted.
    pub template_variables: Vec<String>,
    /// The variables a row must carry: those of the strict templates (a row
    /// of an A/B test may get any variant, so every strict variant counts).
    required: Vec<String>,
    /// An A/B campaign's assignment of variants and cohorts.
    assigner: Option<Assigner>,
}

/// A row that passed, ready for the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The normalised address: sent to and deduped on.
    pub address: String,
    /// What was typed (surrounding spaces removed) when it differs from `address`.
    pub input: Option<String>,
    pub kind: AddressKind,
    pub variables: serde_json::Value,
    /// An A/B campaign's variant for this row, and its cohort (`test` or
    /// `rest`) when the campaign has an `ab_test`.
    pub variant: Option<String>,
    pub cohort: Option<&'static str>,
}

/// A row that did not pass, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl ImportRules {
    /// The rules of an import into `campaign`. Its stored channel and template
    /// were validated by the API; should either be unreadable, addresses are
    /// detected and no variable is required (and the reason is logged).
    pub fn for_campaign(campaign: &Campaign) -> Self {
        let normaliser = Addressing::from_config(&campaign.channel)
            .normaliser()
            .unwrap_or_else(|error| {
                tracing::warn!(campaign_id = %campaign.id, %error, "stored channel addressing is invalid; detecting addresses");
                Normaliser::default()
            });
        let (mut all, mut required) = (BTreeSet::new(), BTreeSet::new());
        for template in stored_templates(campaign) {
            let Ok(compiled) = MessageTemplate::compile(&template.body) else {
                continue;
            };
            for name in compiled.variables() {
                if template.strict {
                    required.insert(name.clone());
                }
                all.insert(name);
            }
        }
        let assigner = Assigner::of(
            campaign.id,
            campaign.variants.as_ref(),
            campaign.ab_test.as_ref(),
        );
        Self {
            normaliser,
            template_variables: all.into_iter().collect(),
            required: required.into_iter().collect(),
            assigner,
        }
    }

    /// Checks one row: its address (normalised), its variables (a JSON object
    /// without NUL), and under a strict template the variables it must carry.
    pub fn check(&self, input: &str, variables: serde_json::Value) -> Result<Row, Rejection> {
        let normalised = self
            .normaliser
            .normalise(input)
            .map_err(|e| Rejection::new(RejectReason::InvalidAddress, e.to_string()))?;
        let Some(fields) = variables.as_object() else {
            return Err(Rejection::new(
                RejectReason::InvalidVariables,
                "variables must be a JSON object",
            ));
        };
        if contains_nul(&variables) {
            return Err(Rejection::new(
                RejectReason::InvalidVariables,
                "variables must not contain NUL characters",
            ));
        }
        {
            let missing: Vec<String> = self
                .required
                .iter()
                .filter(|name| !fields.contains_key(name.as_str()))
                .map(|name| format!("`{name}`"))
                .collect();
            if !missing.is_empty() {
                return Err(Rejection::new(
                    RejectReason::TemplateError,
                    format!(
                        "the template is strict and this row has no {}",
                        missing.join(", ")
                    ),
                ));
            }
        }
        let typed = input.trim();
        let (variant, cohort) = match &self.assigner {
            Some(assigner) => {
                let (variant, cohort) = assigner.assign(&normalised.address);
                (Some(variant.to_owned()), cohort.map(|c| c.as_str()))
            }
            None => (None, None),
        };
        Ok(Row {
            input: (typed != normalised.address).then(|| typed.to_owned()),
            address: normalised.address,
            kind: normalised.kind,
            variables,
            variant,
            cohort,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(addressing: &serde_json::Value, body: &str, strict: bool) -> ImportRules {
        let template = MessageTemplate::compile(body).unwrap();
        ImportRules {
            normaliser: Addressing::from_config(addressing).normaliser().unwrap(),
            template_variables: template.variables(),
            required: if strict {
                template.variables()
            } else {
                Vec::new()
            },
            assigner: None,
        }
    }

    #[test]
    fn addresses_are_normalised_and_what_was_typed_is_kept_when_it_differs() {
        let r = rules(&json!({"provider": "log"}), "Hi", false);
        let row = r.check(" Ana@Example.COM ", json!({})).unwrap();
        assert_eq!(row.address, "Ana@example.com");
        assert_eq!(row.input.as_deref(), Some("Ana@Example.COM"));
        assert_eq!(row.kind, AddressKind::Email);
        let row = r.check(" +5511987654321 ", json!({})).unwrap();
        assert_eq!((row.address.as_str(), row.input), ("+5511987654321", None));
    }

    #[test]
    fn an_address_not_of_the_pinned_kind_is_an_invalid_address() {
        let r = rules(
            &json!({"provider": "log", "address_kind": "phone"}),
            "Hi",
            false,
        );
        let rejection = r.check("ana@example.com", json!({})).unwrap_err();
        assert_eq!(rejection.reason, RejectReason::InvalidAddress);
        assert!(
            rejection.message.contains("not a phone number"),
            "{rejection:?}"
        );
    }

    #[test]
    fn a_strict_template_rejects_rows_lacking_a_variable_it_uses() {
        let body = "Hi {{ name }} {{ profile.first | default('x') }}";
        let strict = rules(&json!({"provider": "log"}), body, true);
        let rejection = strict
            .check("+5511987654321", json!({"name": "Ana"}))
            .unwrap_err();
        assert_eq!(rejection.reason, RejectReason::TemplateError);
        assert!(rejection.message.contains("`profile`"), "{rejection:?}");
        assert!(!rejection.message.contains("`name`"), "{rejection:?}");
        let full = json!({"name": "Ana", "profile": {}});
        assert!(strict.check("+5511987654321", full).is_ok());
        let lenient = rules(&json!({"provider": "log"}), body, false);
        assert!(lenient.check("+5511987654321", json!({})).is_ok());
    }

    #[test]
    fn variables_must_be_an_object_without_nul() {
        let r = rules(&json!({"provider": "log"}), "Hi", false);
        for bad in [json!([1]), json!("x"), json!({"k": "a\u{0}b"})] {
            let rejection = r.check("+100", bad).unwrap_err();
            assert_eq!(rejection.reason, RejectReason::InvalidVariables);
        }
    }
}
