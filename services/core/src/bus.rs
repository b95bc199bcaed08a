//! The JetStream layout: subjects, streams and the work consumers, plus the
//! publish helpers every producer uses.
//!
//! Streams (names carry `HERALD_STREAM_PREFIX`, subjects carry `HERALD_SUBJECT_PREFIX`):
//! - `<P>_EVENTS`  `campaigns.events.>`   every lifecycle event, for replay
//! - `<P>_CONTROL` `campaigns.control.>`  pause/resume/stop hints, 24 h
//! - `<P>_WORK`    `campaigns.pack`, `campaigns.send`  work queue
//! - `<P>_TRACKED` `campaigns.tracked.>`  per-batch outcomes
//! - `<P>_DLQ`     `campaigns.dlq.>`      dead letters with their reason

use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use uuid::Uuid;

use crate::config::CommonConfig;
use crate::contracts::{self, Contract, DeadLetter};

/// Header that carries the caller's `X-Correlation-Id` across the bus.
pub const REQUEST_CORRELATION_HEADER: &str = "X-Correlation-Id";

/// Durable names of the shared work consumers.
pub const PACKER_DURABLE: &str = "packer";
pub const SENDER_DURABLE: &str = "sender";

#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn events(&self, campaign: Uuid) -> String {
        format!("{}campaigns.events.{campaign}", self.prefix)
    }
    pub fn events_all(&self) -> String {
        format!("{}campaigns.events.>", self.prefix)
    }
    pub fn control(&self, campaign: Uuid) -> String {
        format!("{}campaigns.control.{campaign}", self.prefix)
    }
    pub fn control_all(&self) -> String {
        format!("{}campaigns.control.>", self.prefix)
    }
    pub fn pack(&self) -> String {
        format!("{}campaigns.pack", self.prefix)
    }
    pub fn send(&self) -> String {
        format!("{}campaigns.send", self.prefix)
    }
    pub fn tracked(&self, campaign: Uuid) -> String {
        format!("{}campaigns.tracked.{campaign}", self.prefix)
    }
    pub fn tracked_all(&self) -> String {
        format!("{}campaigns.tracked.>", self.prefix)
    }
    /// `campaigns.dlq.<original subject without prefix>`.
    pub fn dlq(&self, original: &str) -> String {
        let bare = original.strip_prefix(&self.prefix).unwrap_or(original);
        format!("{}campaigns.dlq.{bare}", self.prefix)
    }
    pub fn dlq_all(&self) -> String {
        format!("{}campaigns.dlq.>", self.prefix)
    }
}

#[derive(Debug, Clone)]
pub struct StreamNames {
    pub events: String,
    pub control: String,
    pub work: String,
    pub tracked: String,
    pub dlq: String,
}

impl StreamNames {
    pub fn new(prefix: &str) -> Self {
        Self {
            events: format!("{prefix}_EVENTS"),
            control: format!("{prefix}_CONTROL"),
            work: format!("{prefix}_WORK"),
            tracked: format!("{prefix}_TRACKED"),
            dlq: format!("{prefix}_DLQ"),
        }
    }

    /// Every stream Herald owns.
    pub fn all(&self) -> [&str; 5] {
        [
            &self.events,
            &self.control,
            &self.work,
            &self.tracked,
            &self.dlq,
        ]
    }
}

/// A NATS connection with Herald's naming.
#[derive(Debug, Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub streams: StreamNames,
    stream_replicas: usize,
}

impl Bus {
    /// Connects without waiting for the server: a transition must succeed while NATS
    /// is down, so the client keeps retrying in the background.
    pub async fn connect(config: &CommonConfig, client_name: &str) -> anyhow::Result<Self> {
        let mut options = async_nats::ConnectOptions::new()
            .name(client_name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(|event| async move {
                tracing::info!(%event, "nats connection event");
            });
        if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        // Every server of the list: the client picks one and reconnects to the
        // others (and to any the cluster announces) when it is lost.
        let servers = crate::config::parse_nats_servers(&config.nats_url)?;
        let client = options.connect(servers).await.with_context(|| {
            format!(
                "connecting to NATS at {}",
                crate::config::redact_url(&config.nats_url)
            )
        })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            // Stay well under the server's 5,000 pending-ack backpressure (docs/SCALING.md).
            .max_ack_inflight(1024)
            .build(client.clone());
        Ok(Self {
            client,
            js,
            subjects: Subjects::new(&config.subject_prefix),
            streams: StreamNames::new(&config.stream_prefix),
            stream_replicas: config.stream_replicas.max(1),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn stream_configs(&self) -> Vec<stream::Config> {
        let s = &self.subjects;
        let base = |name: &str, subjects: Vec<String>, max_age_hours: u64| stream::Config {
            name: name.to_owned(),
            subjects,
            storage: stream::StorageType::File,
            num_replicas: self.stream_replicas,
            max_age: Duration::from_secs(max_age_hours * 3600),
            duplicate_window: Duration::from_secs(600),
            // Stop one client from filling the server with huge messages.
            max_message_size: 1024 * 1024,
            ..Default::default()
        };
        vec![
            base(&self.streams.events, vec![s.events_all()], 24 * 90),
            base(&self.streams.control, vec![s.control_all()], 24),
            stream::Config {
                retention: stream::RetentionPolicy::WorkQueue,
                ..base(&self.streams.work, vec![s.pack(), s.send()], 24 * 7)
            },
            base(&self.streams.tracked, vec![s.tracked_all()], 24 * 7),
            base(&self.streams.dlq, vec![s.dlq_all()], 24 * 14),
        ]
    }

    /// Creates or updates every stream and the two shared work consumers.
    /// Idempotent, and safe when several replicas start at once.
    pub async fn provision(&self) -> anyhow::Result<()> {
        for config in self.stream_configs() {
            let name = config.name.clone();
            match self.js.get_stream(&name).await {
                Ok(_) => {
                    // Another replica may race us here; an update to the same config is a no-op.
                    self.js
                        .update_stream(config)
                        .await
                        .with_context(|| format!("updating stream {name}"))?;
                }
                Err(_) => {
                    if let Err(create_err) = self.js.create_stream(config.clone()).await {
                        // Lost the race against another replica: fine if it exists now.
                        self.js
                            .get_stream(&name)
                            .await
                            .map_err(|_| anyhow::anyhow!("creating stream {name}: {create_err}"))?;
                    }
                }
            }
        }
        self.work_consumer(PACKER_DURABLE).await?;
        self.work_consumer(SENDER_DURABLE).await?;
        Ok(())
    }

    /// Provisions, retrying until NATS answers or shutdown is asked for.
    pub async fn provision_with_retry(
        &self,
        shutdown: &crate::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.provision().await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "JetStream not ready; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => anyhow::bail!("shut down before JetStream was ready"),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Workers wait for the api to provision the streams: their credentials may
    /// read stream info but not create or change streams.
    pub async fn wait_for_streams(
        &self,
        shutdown: &crate::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(100);
        loop {
            let work = self.js.get_stream(&self.streams.work).await;
            let control = self.js.get_stream(&self.streams.control).await;
            if work.is_ok() && control.is_ok() {
                return Ok(());
            }
            tracing::info!("waiting for the api to provision the JetStream streams");
            tokio::select! {
                _ = shutdown.cancelled() => anyhow::bail!("shut down before the streams existed"),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// The shared durable pull consumer of one work subject (`packer` or `sender`).
    pub async fn work_consumer(&self, durable: &str) -> anyhow::Result<consumer::PullConsumer> {
        let filter = if durable == PACKER_DURABLE {
            self.subjects.pack()
        } else {
            self.subjects.send()
        };
        let config = consumer::pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject: filter,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
            max_ack_pending: 10_000,
            ..Default::default()
        };
        let stream = self
            .js
            .get_stream(&self.streams.work)
            .await
            .context("work stream missing")?;
        let consumer = stream
            .get_or_create_consumer(durable, config)
            .await
            .with_context(|| format!("creating work consumer {durable}"))?;
        Ok(consumer)
    }

    /// Publishes a validated contract message and waits for the stream's ack.
    pub async fn publish_contract<T: Contract>(
        &self,
        subject: String,
        message: &T,
        message_id: &str,
        request_correlation_id: Option<&str>,
    ) -> anyhow::Result<()> {
        let payload = contracts::encode(message)?;
        self.publish_raw(subject, payload, message_id, request_correlation_id)
            .await
    }

    pub async fn publish_raw(
        &self,
        subject: String,
        payload: Bytes,
        message_id: &str,
        request_correlation_id: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        if let Some(id) = request_correlation_id {
            headers.insert(REQUEST_CORRELATION_HEADER, id);
        }
        self.js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .with_context(|| format!("publishing to {subject}"))?
            .await
            .with_context(|| format!("awaiting the stream ack for {subject}"))?;
        Ok(())
    }

    /// Copies a bad message to `campaigns.dlq.<subject>` and counts it.
    pub async fn dead_letter(&self, mut letter: DeadLetter) {
        metrics::counter!("herald_dead_lettered_total", "subject" => letter.original_subject.clone())
            .increment(1);
        let subject = self.subjects.dlq(&letter.original_subject);
        letter.original_subject = letter
            .original_subject
            .strip_prefix(self.subjects.prefix())
            .unwrap_or(&letter.original_subject)
            .to_owned();
        let message_id = format!("dlq-{}", letter.correlation_id);
        if let Err(error) = self
            .publish_contract(subject, &letter, &message_id, None)
            .await
        {
            tracing::error!(error = %format!("{error:#}"), "could not write dead letter");
        }
    }
}
