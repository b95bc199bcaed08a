//! The tenant's HTTP client of the API ([`ApiClient`]) and the calls tests make.

use std::time::Duration;

use herald_core::lifecycle::Status;
use serde_json::{Value, json};
use uuid::Uuid;

/// An HTTP client of the API with one tenant's token, and the calls tests make.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub http: reqwest::Client,
    pub base_url: String,
    pub token: String,
}

impl ApiClient {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.http, method, &self.url(path), &self.token, body).await
    }

    pub async fn create_campaign(&self, channel: Value) -> Uuid {
        let (status, body) = self
            .call(reqwest::Method::POST, "/v1/campaigns", Some(json!({
                "name": "test campaign", "channel": channel, "template": {"body": "Hi {{ name }}"}
            })))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("id").parse().expect("uuid")
    }

    /// Imports `count` recipients `+1555000000<n>` with a name variable.
    pub async fn import(&self, campaign: Uuid, count: usize) {
        for chunk_start in (0..count).step_by(10_000) {
            let recipients: Vec<Value> = (chunk_start..count.min(chunk_start + 10_000))
                .map(|n| json!({"address": format!("+1555{n:08}"), "variables": {"name": format!("r{n}")}}))
                .collect();
            let (status, body) = self
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/campaigns/{campaign}/recipients"),
                    Some(json!({"recipients": recipients})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    }

    pub async fn transition(&self, campaign: Uuid, action: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/campaigns/{campaign}/{action}"),
            None,
        )
        .await
    }

    pub async fn campaign(&self, campaign: Uuid) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/campaigns/{campaign}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls until the campaign has `status`, or panics after `timeout`.
    pub async fn wait_for_status(
        &self,
        campaign: Uuid,
        status: Status,
        timeout: Duration,
    ) -> Value {
        self.wait_for_status_or(campaign, status, timeout, String::new)
            .await
    }

    /// Like [`ApiClient::wait_for_status`], with `diagnostics` (for example process
    /// logs) appended to the panic message.
    pub async fn wait_for_status_or(
        &self,
        campaign: Uuid,
        status: Status,
        timeout: Duration,
        diagnostics: impl Fn() -> String,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let body = self.campaign(campaign).await;
            if body["status"] == status.as_str() {
                return body;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "campaign never reached {status} within {timeout:?}: {body}\n{}",
                    diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until no recipient of the campaign is `sending` (the requests in
    /// flight at a pause have landed, so the counts hold still) and returns that
    /// read; panics after `timeout`.
    pub async fn wait_until_nothing_sending(&self, campaign: Uuid, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let body = self.campaign(campaign).await;
            if body["counters"]["sending"] == 0 {
                return body;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("recipients still sending after {timeout:?}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The event history, as the API returns it.
    pub async fn events(&self, campaign: Uuid) -> Vec<Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/campaigns/{campaign}/events"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().expect("items").clone()
    }
}

pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
