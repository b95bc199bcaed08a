//! Providers: how one rendered message reaches the outside world, and the retry
//! policy around it.
//!
//! - `webhook`: POST JSON with an `Idempotency-Key` header that is stable per
//!   recipient, signed with HMAC-SHA256 (`X-Herald-Signature: sha256=<hex>`) when
//!   the campaign has a secret.
//! - `evolution`: Evolution API `POST {base_url}/message/sendText/{instance}`.
//! - `log`: one JSON line per message on standard output.
//!
//! 2xx is sent; 408, 429, 5xx, timeouts and connection errors are retried with
//! exponential backoff (honouring `Retry-After`); any other 4xx fails at once.

use std::io::Write as _;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use herald_core::channel::Channel;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use sha2::Sha256;
use uuid::Uuid;

/// One message ready to go.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    pub campaign_id: Uuid,
    pub recipient_id: i64,
    pub address: String,
    pub body: String,
}

impl OutboundMessage {
    /// Stable per recipient: every retry and every redelivery carries the same key,
    /// so the provider can drop duplicates.
    pub fn idempotency_key(&self) -> String {
        format!("herald-{}-{}", self.campaign_id, self.recipient_id)
    }
}

/// What the webhook provider receives (and the log provider prints): a typed
/// body, serialized straight from the message without an intermediate
/// `serde_json::Value`, since it is built once per request.
#[derive(serde::Serialize)]
struct WebhookBody<'a> {
    campaign_id: Uuid,
    recipient_id: i64,
    address: &'a str,
    message: &'a str,
    idempotency_key: &'a str,
}

impl<'a> WebhookBody<'a> {
    fn of(message: &'a OutboundMessage, idempotency_key: &'a str) -> Self {
        Self {
            campaign_id: message.campaign_id,
            recipient_id: message.recipient_id,
            address: &message.address,
            message: &message.body,
            idempotency_key,
        }
    }
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Accepted {
        provider_message_id: Option<String>,
    },
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    Rejected {
        reason: String,
    },
}

/// Retry settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Delays between attempts (exponential, jittered, capped), from `backon`.
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build()
    }
}

#[derive(Debug, Clone)]
pub struct Dispatcher {
    http: reqwest::Client,
}

fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

fn provider_message_id(body: &serde_json::Value) -> Option<String> {
    let candidates = [
        body.get("id"),
        body.get("message_id"),
        body.get("messageId"),
        body.get("key").and_then(|k| k.get("id")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        })
        .map(|mut id| {
            id.truncate(floor_char_boundary(&id, MAX_MESSAGE_ID_BYTES));
            id
        })
}

/// The longest provider message id kept, in bytes; longer ones are cut.
const MAX_MESSAGE_ID_BYTES: usize = 256;

/// The largest index at most `at` that falls between two characters of `text`,
/// so cutting there never splits a multi-byte character (`String::truncate`
/// panics if it would).
fn floor_char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Dispatcher {
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(256)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http })
    }

    /// One attempt through the campaign's channel.
    pub async fn attempt(&self, channel: &Channel, message: &OutboundMessage) -> Attempt {
        let started = Instant::now();
        let attempt = match channel {
            Channel::Log => {
                let key = message.idempotency_key();
                let line =
                    serde_json::to_string(&WebhookBody::of(message, &key)).unwrap_or_default();
                let mut out = std::io::stdout().lock();
                match writeln!(out, "{line}") {
                    Ok(()) => Attempt::Accepted {
                        provider_message_id: None,
                    },
                    Err(e) => Attempt::Retryable {
                        reason: format!("stdout: {e}"),
                        retry_after: None,
                    },
                }
            }
            Channel::Webhook { url, secret } => {
                let key = message.idempotency_key();
                let body = serde_json::to_vec(&WebhookBody::of(message, &key)).unwrap_or_default();
                let mut request = self
                    .http
                    .post(url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", key);
                if let Some(secret) = secret {
                    request = request.header("x-herald-signature", sign(secret, &body));
                }
                self.send(request.body(body)).await
            }
            Channel::Evolution {
                base_url,
                instance,
                api_key,
            } => {
                let url = format!(
                    "{}/message/sendText/{}",
                    base_url.trim_end_matches('/'),
                    instance
                );
                let request = self
                    .http
                    .post(url)
                    .header("apikey", api_key)
                    .header("idempotency-key", message.idempotency_key())
                    .json(&serde_json::json!({ "number": message.address, "text": message.body }));
                self.send(request).await
            }
        };
        let outcome = match &attempt {
            Attempt::Accepted { .. } => "accepted",
            Attempt::Retryable { .. } => "retryable",
            Attempt::Rejected { .. } => "rejected",
        };
        metrics::counter!("herald_provider_attempts_total", "provider" => channel.provider(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("herald_provider_latency_seconds", "provider" => channel.provider())
            .record(started.elapsed().as_secs_f64());
        attempt
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Attempt {
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Attempt::Retryable {
                    reason: "provider timed out".into(),
                    retry_after: None,
                };
            }
            Err(e) => {
                return Attempt::Retryable {
                    reason: format!("provider unreachable: {}", e.without_url()),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        if status.is_success() {
            let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
            return Attempt::Accepted {
                provider_message_id: provider_message_id(&body),
            };
        }
        let mut detail = response.text().await.unwrap_or_default();
        detail.truncate(300);
        let reason = if detail.is_empty() {
            format!("provider answered {status}")
        } else {
            format!("provider answered {status}: {detail}")
        };
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Attempt::Retryable {
                reason,
                retry_after,
            }
        } else {
            Attempt::Rejected { reason }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn signatures_are_hex_hmac_sha256_of_the_exact_body() {
        // RFC 4231 test case 2.
        let sig = sign("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retry_policy_yields_one_delay_fewer_than_attempts() {
        let policy = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(policy.delays().count(), 3);
    }

    #[test]
    fn provider_message_ids_are_found_in_common_response_shapes() {
        assert_eq!(
            provider_message_id(&serde_json::json!({"id": "m1"})),
            Some("m1".into())
        );
        assert_eq!(
            provider_message_id(&serde_json::json!({"key": {"id": "wa1"}})),
            Some("wa1".into())
        );
        assert_eq!(provider_message_id(&serde_json::json!({"ok": true})), None);
    }

    #[test]
    fn a_long_message_id_is_cut_at_256_bytes_without_splitting_a_character() {
        // 255 ASCII bytes and then a 2-byte character across the 256th byte.
        let long = format!("{}é tail", "a".repeat(255));
        let cut = provider_message_id(&serde_json::json!({ "id": long })).unwrap();
        assert_eq!(cut, "a".repeat(255));
        let ascii = "b".repeat(300);
        let cut = provider_message_id(&serde_json::json!({ "id": ascii })).unwrap();
        assert_eq!(cut.len(), 256);
    }
}
