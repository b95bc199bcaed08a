//! The JetStream layout: subjects, streams and the work consumers, plus the
//! publish helpers every producer uses.
//!
//! Streams (names carry `HERALD_STREAM_PREFIX`, subjects carry `HERALD_SUBJECT_PREFIX`):
//! - `<P>_EVENTS`  `campaigns.events.>`   every lifecycle event, for replay
//! - `<P>_CONTROL` `campaigns.control.>`  pause/resume/stop hints, 24 h
//! - `<P>_WORK`    `campaigns.pack`, `campaigns.send`  work queue
//! - `<P>_TRACKED` `campaigns.tracked.>`  per-batch outcomes
//! - `<P>_DLQ`     `campaigns.dlq.>`      dead letters with their reason
//!
//! Every stream's description names the installation that owns it
//! ([`crate::installation`]); a process of another installation refuses to use it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use uuid::Uuid;

use crate::config::CommonConfig;
use crate::contracts::{self, Contract, DeadLetter};
use crate::installation::{self, InstallationConflict};
pub use crate::subjects::{StreamNames, Subjects};

/// Header that carries the caller's `X-Correlation-Id` across the bus.
pub const REQUEST_CORRELATION_HEADER: &str = "X-Correlation-Id";

/// Durable names of the shared work consumers.
pub const PACKER_DURABLE: &str = "packer";
pub const SENDER_DURABLE: &str = "sender";

/// A NATS connection with Herald's naming.
#[derive(Debug, Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub streams: StreamNames,
    stream_replicas: usize,
    adopt_streams: bool,
    /// The client's last failed connection attempt since it was last connected.
    connection_error: Arc<Mutex<Option<String>>>,
}

/// Who owns one stream, as its description says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// No such stream yet.
    Missing,
    /// It exists without an owner (provisioned before installations had ids).
    Unclaimed,
    Ours,
    Foreign(Uuid),
}

/// Keeps the last connection error until the client connects again.
fn note_connection_event(noted: &Mutex<Option<String>>, event: &async_nats::Event) {
    let mut noted = noted.lock().unwrap_or_else(|e| e.into_inner());
    match event {
        async_nats::Event::Connected => *noted = None,
        async_nats::Event::ClientError(_)
        | async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
            *noted = Some(event.to_string());
        }
        _ => {}
    }
}

impl Bus {
    /// Connects without waiting for the server: a transition must succeed while NATS
    /// is down, so the client keeps retrying in the background.
    pub async fn connect(config: &CommonConfig, client_name: &str) -> anyhow::Result<Self> {
        let connection_error = Arc::new(Mutex::new(None));
        let noted = connection_error.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(client_name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(move |event| {
                let noted = noted.clone();
                async move {
                    note_connection_event(&noted, &event);
                    tracing::info!(%event, "nats connection event");
                }
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
            adopt_streams: config.adopt_streams,
            connection_error,
        })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Why the client is not connected, when it has tried and failed since it
    /// last was (e.g. `nats: authorization violation`, `nats: timed out`): what
    /// a command that gives up should tell its user. `None` once connected again.
    pub fn last_connection_error(&self) -> Option<String> {
        self.connection_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn stream_configs(&self, installation: Uuid) -> Vec<stream::Config> {
        let s = &self.subjects;
        let base = |name: &str, subjects: Vec<String>, max_age_hours: u64| stream::Config {
            name: name.to_owned(),
            description: Some(installation::stamp(installation)),
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

    /// Who owns stream `name`, or an error when JetStream does not answer.
    async fn claim(&self, name: &str, installation: Uuid) -> anyhow::Result<Claim> {
        match self.js.get_stream(name).await {
            Ok(stream) => {
                let description = stream.cached_info().config.description.as_deref();
                Ok(match installation::owner(description) {
                    None => Claim::Unclaimed,
                    Some(owner) if owner == installation => Claim::Ours,
                    Some(owner) => Claim::Foreign(owner),
                })
            }
            Err(error) => match error.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(Claim::Missing)
                }
                _ => Err(anyhow::Error::new(error).context(format!("looking up stream {name}"))),
            },
        }
    }

    fn foreign(&self, stream: &str, owner: Uuid, ours: Uuid) -> anyhow::Error {
        InstallationConflict::Foreign {
            stream: stream.to_owned(),
            owner,
            ours,
            stream_prefix: self.streams.events.trim_end_matches("_EVENTS").to_owned(),
            subject_prefix: self.subjects.prefix().to_owned(),
        }
        .into()
    }

    /// Creates or updates every stream, stamped with `installation`, and the two
    /// shared work consumers. Idempotent, and safe when several replicas start at
    /// once. Fails with [`InstallationConflict`] when a stream belongs to another
    /// installation (unless `HERALD_ADOPT_STREAMS`) or cannot be created beside
    /// another installation's streams.
    pub async fn provision(&self, installation: Uuid) -> anyhow::Result<()> {
        for config in self.stream_configs(installation) {
            let name = config.name.clone();
            match self.claim(&name, installation).await? {
                Claim::Foreign(owner) if !self.adopt_streams => {
                    return Err(self.foreign(&name, owner, installation));
                }
                Claim::Missing => {
                    if let Err(create_err) = self.js.create_stream(config.clone()).await {
                        if let jetstream::context::CreateStreamErrorKind::JetStream(js) =
                            create_err.kind()
                        {
                            if js.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP {
                                return Err(InstallationConflict::SubjectOverlap {
                                    stream: name,
                                    subjects: config.subjects,
                                    subject_prefix: self.subjects.prefix().to_owned(),
                                }
                                .into());
                            }
                        }
                        // Lost the race against another replica: fine if it is ours now.
                        match self.claim(&name, installation).await {
                            Ok(Claim::Ours) => {}
                            Ok(Claim::Foreign(owner)) => {
                                return Err(self.foreign(&name, owner, installation));
                            }
                            _ => anyhow::bail!("creating stream {name}: {create_err}"),
                        }
                    }
                }
                claim => {
                    if claim != Claim::Ours {
                        tracing::warn!(stream = %name, ?claim, %installation, "stamping the stream with this installation's id");
                    }
                    // Another replica may race us here; an update to the same config is a no-op.
                    self.js
                        .update_stream(config)
                        .await
                        .with_context(|| format!("updating stream {name}"))?;
                }
            }
        }
        self.work_consumer(PACKER_DURABLE).await?;
        self.work_consumer(SENDER_DURABLE).await?;
        Ok(())
    }

    /// Provisions, retrying until NATS answers or shutdown is asked for. An
    /// [`InstallationConflict`] ends it at once.
    pub async fn provision_with_retry(
        &self,
        installation: Uuid,
        shutdown: &crate::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.provision(installation).await {
                Ok(()) => return Ok(()),
                Err(error) if installation::is_conflict(&error) => return Err(error),
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
    /// read stream info but not create or change streams. They also wait until
    /// the streams carry `installation`'s stamp, and fail with
    /// [`InstallationConflict`] when a stream carries another installation's.
    pub async fn wait_for_streams(
        &self,
        installation: Uuid,
        shutdown: &crate::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(100);
        loop {
            let mut ready = true;
            for name in self.streams.all() {
                match self.claim(name, installation).await {
                    Ok(Claim::Ours) => {}
                    // The api was told to adopt them: wait for its stamp.
                    Ok(Claim::Foreign(owner)) if !self.adopt_streams => {
                        return Err(self.foreign(name, owner, installation));
                    }
                    Ok(_) | Err(_) => ready = false,
                }
            }
            if ready {
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
        self.send_raw(subject, payload, message_id, request_correlation_id)
            .await?
            .await
    }

    /// Sends a contract message and returns the wait for its stream ack without
    /// awaiting it, so several messages can share one round trip. Messages sent
    /// on this connection reach the server in the order they were sent.
    pub async fn send_contract<T: Contract>(
        &self,
        subject: String,
        message: &T,
        message_id: &str,
        request_correlation_id: Option<&str>,
    ) -> anyhow::Result<impl Future<Output = anyhow::Result<()>> + use<T>> {
        let payload = contracts::encode(message)?;
        self.send_raw(subject, payload, message_id, request_correlation_id)
            .await
    }

    async fn send_raw(
        &self,
        subject: String,
        payload: Bytes,
        message_id: &str,
        request_correlation_id: Option<&str>,
    ) -> anyhow::Result<impl Future<Output = anyhow::Result<()>> + use<>> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        if let Some(id) = request_correlation_id {
            headers.insert(REQUEST_CORRELATION_HEADER, id);
        }
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .with_context(|| format!("publishing to {subject}"))?;
        Ok(async move {
            ack.await
                .with_context(|| format!("awaiting the stream ack for {subject}"))?;
            Ok(())
        })
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
