//! Channel configuration: which provider a campaign sends through, and how.

use serde::{Deserialize, Serialize};

/// A campaign's channel. Secrets (`secret`, `api_key`) are write-only: the API
/// never returns them (see [`Channel::redacted`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

#[cfg(test)]
mod tests {
    use super::*;
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
    fn redacted_channels_never_show_secrets() {
        let hook = Channel::Webhook {
            url: "http://x".into(),
            secret: Some("topsecret".into()),
        };
        assert!(!hook.redacted().to_string().contains("topsecret"));
        assert!(!format!("{hook:?}").contains("topsecret"));
    }
}
