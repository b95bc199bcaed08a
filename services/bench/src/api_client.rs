//! A small client for the parts of Herald's HTTP API the scenarios drive.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct ApiClient {
    pub base_url: String,
    pub token: String,
    http: reqwest::Client,
}

/// Rows per generated CSV chunk: large enough to keep the stream cheap, small
/// enough that the body never sits in memory whole.
const CSV_ROWS_PER_CHUNK: u64 = 5_000;

/// The CSV line of recipient `n` (addresses are unique per campaign).
fn csv_row(out: &mut String, n: u64) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "+1555{n:08},r{n}");
}

impl ApiClient {
    pub fn new(base_url: &str, token: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(16)
                .build()
                .expect("a reqwest client"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Creates a campaign with `Hi {{ name }}` as its template.
    pub async fn create_campaign(
        &self,
        channel: Value,
        rate_limit_per_second: Option<u32>,
    ) -> anyhow::Result<Uuid> {
        let mut body = json!({
            "name": "bench", "channel": channel, "template": {"body": "Hi {{ name }}"}
        });
        if let Some(rate) = rate_limit_per_second {
            body["rate_limit_per_second"] = json!(rate);
        }
        let (status, body) = self
            .call(reqwest::Method::POST, "/v1/campaigns", Some(body))
            .await?;
        if status != 201 {
            bail!("creating a campaign answered {status}: {body}");
        }
        body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("campaign id in the response")
    }

    /// Creates a campaign on an existing channel (`channel_id`), with `Hi {{ name }}`
    /// as its template.
    pub async fn create_campaign_on(&self, channel_id: Uuid) -> anyhow::Result<Uuid> {
        let body = json!({
            "name": "bench", "channel_id": channel_id, "template": {"body": "Hi {{ name }}"}
        });
        let (status, body) = self
            .call(reqwest::Method::POST, "/v1/campaigns", Some(body))
            .await?;
        if status != 201 {
            bail!("creating a campaign answered {status}: {body}");
        }
        body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("campaign id in the response")
    }

    /// Creates a channel (`POST /v1/channels`) with `config` as its provider config
    /// and, if given, a `rate_limit.per_second`.
    pub async fn create_channel(
        &self,
        name: &str,
        config: Value,
        per_second: Option<u32>,
    ) -> anyhow::Result<Uuid> {
        let mut body = json!({"name": name, "config": config});
        if let Some(rate) = per_second {
            body["rate_limit"] = json!({"per_second": rate});
        }
        let (status, body) = self
            .call(reqwest::Method::POST, "/v1/channels", Some(body))
            .await?;
        if status != 201 {
            bail!("creating a channel answered {status}: {body}");
        }
        body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("channel id in the response")
    }

    /// Imports `count` recipients as one streamed `text/csv` upload, generated on the
    /// fly. Returns the accepted count and how long the upload took.
    pub async fn import_csv(&self, campaign: Uuid, count: u64) -> anyhow::Result<(u64, Duration)> {
        let chunks = futures::stream::unfold(0u64, move |next| async move {
            if next >= count {
                return None;
            }
            let end = (next + CSV_ROWS_PER_CHUNK).min(count);
            let mut text = String::with_capacity(((end - next) * 24 + 16) as usize);
            if next == 0 {
                text.push_str("address,name\n");
            }
            for n in next..end {
                csv_row(&mut text, n);
            }
            Some((Ok::<Bytes, std::io::Error>(Bytes::from(text)), end))
        });
        let started = Instant::now();
        let response = self
            .http
            .post(self.url(&format!("/v1/campaigns/{campaign}/recipients")))
            .bearer_auth(&self.token)
            .header("content-type", "text/csv")
            .body(reqwest::Body::wrap_stream(chunks.boxed()))
            .send()
            .await
            .context("uploading recipients")?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let elapsed = started.elapsed();
        if status != 200 {
            bail!("import answered {status}: {body}");
        }
        let accepted = body["accepted"].as_u64().unwrap_or(0);
        if accepted != count {
            bail!("import accepted {accepted} of {count}: {body}");
        }
        Ok((accepted, elapsed))
    }

    /// A lifecycle transition (`start`, `pause`, `resume`, `stop`).
    pub async fn transition(&self, campaign: Uuid, action: &str) -> anyhow::Result<(u16, Value)> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/campaigns/{campaign}/{action}"),
            None,
        )
        .await
    }

    /// A transition that must succeed.
    pub async fn must(&self, campaign: Uuid, action: &str) -> anyhow::Result<Value> {
        let (status, body) = self.transition(campaign, action).await?;
        if status != 200 {
            bail!("{action} answered {status}: {body}");
        }
        Ok(body)
    }

    pub async fn campaign(&self, campaign: Uuid) -> anyhow::Result<Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/campaigns/{campaign}"),
                None,
            )
            .await?;
        if status != 200 {
            bail!("reading campaign answered {status}: {body}");
        }
        Ok(body)
    }

    /// Polls every `every` until the campaign has `status`; fails after `timeout`.
    pub async fn wait_for_status(
        &self,
        campaign: Uuid,
        status: &str,
        every: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let body = self.campaign(campaign).await?;
            if body["status"] == status {
                return Ok(body);
            }
            if Instant::now() >= deadline {
                bail!("campaign never reached {status} within {timeout:?}: {body}");
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Waits until `GET {base}/healthz` answers.
pub async fn wait_healthy(base_url: &str, timeout: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = http.get(format!("{base_url}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("the api at {base_url} did not come up within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
