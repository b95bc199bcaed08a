//! Channel configuration: which provider a campaign sends through, and how its
//! recipients' addresses are read.
//!
//! A stored channel config is one flat JSON object: the provider's keys
//! ([`Channel`]) plus the optional addressing keys `address_kind` and
//! `default_region` ([`Addressing`]). [`ChannelConfig`] is the whole object, as
//! the API takes and shows it; [`Channel`] reads only the provider's part (it
//! skips the addressing keys), which is all a sender needs.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

use crate::address::{ADDRESSING_KEYS, Addressing};

/// A campaign's channel provider. Secrets (`secret`, `api_key`) are write-only:
/// the API never returns them (see [`Channel::redacted`]).
#[derive(Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "provider", rename_all = "snake_case", deny_unknown_fields)]
pub enum Channel {
    /// POST JSON to `url`, signed with HMAC-SHA256 when `secret` is set.
    Webhook {
        /// An http or https URL.
        #[schema(format = "uri")]
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    },
    /// Write each message as one JSON line to standard output.
    Log,
    /// Evolution API (WhatsApp): `POST {base_url}/message/sendText/{instance}`.
    Evolution {
        /// An http or https URL.
        #[schema(format = "uri")]
        base_url: String,
        instance: String,
        api_key: String,
    },
}

/// [`Channel`]'s strict reading: unknown keys are an error.
#[derive(Deserialize)]
#[serde(
    remote = "Channel",
    tag = "provider",
    rename_all = "snake_case",
    deny_unknown_fields
)]
enum ChannelDef {
    Webhook {
        url: String,
        #[serde(default)]
        secret: Option<String>,
    },
    Log,
    Evolution {
        base_url: String,
        instance: String,
        api_key: String,
    },
}

/// Reads the provider's keys of a channel config, skipping the addressing keys
/// (they belong to [`ChannelConfig`]); any other unknown key is an error.
impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        for key in ADDRESSING_KEYS {
            map.remove(key);
        }
        ChannelDef::deserialize(serde_json::Value::Object(map)).map_err(D::Error::custom)
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

impl Channel {
    pub fn provider(&self) -> &'static str {
        match self {
            Channel::Webhook { .. } => "webhook",
            Channel::Log => "log",
            Channel::Evolution { .. } => "evolution",
        }
    }

    /// Checks what serde cannot: URLs parse and use http(s), names are not empty.
    pub fn validate(&self) -> Result<(), String> {
        fn http_url(field: &str, value: &str) -> Result<(), String> {
            let parsed =
                url::Url::parse(value).map_err(|e| format!("{field} is not a valid URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("{field} must be an http or https URL"));
            }
            Ok(())
        }
        match self {
            Channel::Webhook { url, secret } => {
                http_url("channel.url", url)?;
                if secret.as_deref().is_some_and(|s| s.is_empty()) {
                    return Err("channel.secret must not be empty".into());
                }
                Ok(())
            }
            Channel::Log => Ok(()),
            Channel::Evolution {
                base_url,
                instance,
                api_key,
            } => {
                http_url("channel.base_url", base_url)?;
                if instance.trim().is_empty() || instance.contains('/') {
                    return Err("channel.instance must be a non-empty name without '/'".into());
                }
                if api_key.is_empty() {
                    return Err("channel.api_key must not be empty".into());
                }
                Ok(())
            }
        }
    }

    /// The channel as clients may see it: secrets replaced by `"***"`.
    pub fn redacted(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            for key in ["secret", "api_key"] {
                if map.contains_key(key) {
                    map.insert(key.into(), serde_json::Value::String("***".into()));
                }
            }
        }
        value
    }
}

/// A whole channel config: the provider's keys and the addressing keys in one
/// flat JSON object, e.g. `{"provider": "evolution", ..., "address_kind":
/// "phone", "default_region": "BR"}`. What the API takes (inline `channel`,
/// `POST /v1/channels` `config`) and stores.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    pub provider: Channel,
    pub addressing: Addressing,
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

impl ChannelConfig {
    /// [`Channel::validate`] and [`Addressing::validate`].
    pub fn validate(&self) -> Result<(), String> {
        self.provider.validate()?;
        self.addressing.validate()
    }

    /// The config as stored: one flat object.
    pub fn to_json(&self) -> serde_json::Value {
        self.with_addressing(serde_json::to_value(&self.provider).unwrap_or_default())
    }

    /// The config as clients may see it: secrets replaced by `"***"`.
    pub fn redacted(&self) -> serde_json::Value {
        self.with_addressing(self.provider.redacted())
    }

    /// `provider` (the provider's keys as an object) with the addressing keys
    /// that are set added beside them.
    fn with_addressing(&self, mut provider: serde_json::Value) -> serde_json::Value {
        let addressing = serde_json::to_value(&self.addressing).unwrap_or_default();
        if let (Some(map), serde_json::Value::Object(extra)) =
            (provider.as_object_mut(), addressing)
        {
            map.extend(extra);
        }
        provider
    }

    /// A stored config, redacted for clients; Null when it is unreadable.
    pub fn redact_stored(config: serde_json::Value) -> serde_json::Value {
        serde_json::from_value::<ChannelConfig>(config)
            .map(|c| c.redacted())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Serialize for ChannelConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ChannelConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let address_kind = map.remove("address_kind").unwrap_or_default();
        let default_region = map.remove("default_region").unwrap_or_default();
        let provider =
            ChannelDef::deserialize(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
        // Each key on its own, so that the error names it.
        let addressing = Addressing {
            address_kind: serde_json::from_value(address_kind).map_err(|_| {
                D::Error::custom("address_kind must be \"phone\", \"email\" or \"opaque\"")
            })?,
            default_region: serde_json::from_value(default_region).map_err(|_| {
                D::Error::custom("default_region must be a region code such as \"BR\"")
            })?,
        };
        Ok(Self {
            provider,
            addressing,
        })
    }
}

/// The schema of [`Channel`] with the addressing keys added to every provider's
/// object (the keys sit beside the provider's own, in one object).
impl utoipa::PartialSchema for ChannelConfig {
    fn schema() -> RefOr<Schema> {
        let mut schema = <Channel as utoipa::PartialSchema>::schema();
        let addressing = <Addressing as utoipa::PartialSchema>::schema();
        let RefOr::T(Schema::Object(addressing)) = addressing else {
            return schema;
        };
        if let RefOr::T(Schema::OneOf(one_of)) = &mut schema {
            for item in &mut one_of.items {
                if let RefOr::T(Schema::Object(object)) = item {
                    for (name, property) in &addressing.properties {
                        object.properties.insert(name.clone(), property.clone());
                    }
                }
            }
        }
        schema
    }
}

impl utoipa::ToSchema for ChannelConfig {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::AddressKind;
    use serde_json::json;

    #[test]
    fn channels_parse_from_their_documented_shapes() {
        let hook: Channel =
            serde_json::from_value(json!({"provider": "webhook", "url": "http://x/y"})).unwrap();
        assert_eq!(hook.provider(), "webhook");
        assert!(hook.validate().is_ok());
        let log: Channel = serde_json::from_value(json!({"provider": "log"})).unwrap();
        assert_eq!(log, Channel::Log);
        let evo: Channel = serde_json::from_value(
            json!({"provider": "evolution", "base_url": "https://evo", "instance": "main", "api_key": "k"}),
        )
        .unwrap();
        assert!(evo.validate().is_ok());
        assert!(serde_json::from_value::<Channel>(json!({"provider": "pigeon"})).is_err());
        let ftp: Channel =
            serde_json::from_value(json!({"provider": "webhook", "url": "ftp://x"})).unwrap();
        assert!(ftp.validate().is_err());
    }

    #[test]
    fn a_config_carries_the_addressing_keys_beside_the_providers() {
        let stored = json!({"provider": "webhook", "url": "http://x", "secret": "s",
                            "address_kind": "phone", "default_region": "BR"});
        let config: ChannelConfig = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(config.addressing.address_kind, Some(AddressKind::Phone));
        assert_eq!(config.to_json(), stored);
        assert_eq!(config.redacted()["secret"], "***");
        assert_eq!(config.redacted()["default_region"], "BR");
        // What a sender reads: the provider's part, the addressing keys skipped.
        let channel: Channel = serde_json::from_value(stored).unwrap();
        assert_eq!(channel.provider(), "webhook");
        // Other unknown keys are still refused, and bad addressing values named.
        let extra = json!({"provider": "webhook", "url": "http://x", "extra": 1});
        assert!(serde_json::from_value::<Channel>(extra.clone()).is_err());
        assert!(serde_json::from_value::<ChannelConfig>(extra).is_err());
        let bad = json!({"provider": "log", "address_kind": "fax"});
        let error = serde_json::from_value::<ChannelConfig>(bad).unwrap_err();
        assert!(error.to_string().contains("address_kind"), "{error}");
        let plain: ChannelConfig = serde_json::from_value(json!({"provider": "log"})).unwrap();
        assert_eq!(plain.to_json(), json!({"provider": "log"}));
    }

    #[test]
    fn redacted_channels_never_show_secrets() {
        let hook = Channel::Webhook {
            url: "http://x".into(),
            secret: Some("topsecret".into()),
        };
        assert!(!hook.redacted().to_string().contains("topsecret"));
        assert!(!format!("{hook:?}").contains("topsecret"));
    }
}
