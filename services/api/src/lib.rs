//! Herald's HTTP API (axum): channels, campaigns, recipients, lifecycle
//! transitions and suppression lists.
//!
//! Every transition is committed to Postgres through `herald_core::transitions`
//! and then published through the outbox; this process also runs the outbox relay
//! and the scheduler.

pub mod ab_views;
pub mod acks;
pub mod channel_views;
pub mod csv_upload;
pub mod error;
pub mod extract;
pub mod import;
pub mod import_views;
pub mod lifecycle_views;
pub mod observe;
pub mod openapi;
pub mod receipt_tokens;
pub mod receipt_writer;
pub mod replicas;
pub mod routes;
pub mod scheduler;
pub mod state;
pub mod suppression_views;
pub mod timestamps;
pub mod views;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use herald_core::CancellationToken;
use herald_core::bus::Bus;
use herald_core::config::CommonConfig;
use herald_core::outbox::Outbox;
use herald_core::transitions::Lifecycle;
use tower_http::trace::TraceLayer;

use crate::state::{AppState, Limits};

/// Settings of the api service.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiConfig {
    /// HTTP listen address.
    #[arg(
        long = "listen",
        env = "HERALD_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Largest JSON request body, in bytes (413 above).
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest recipient import body, in bytes (413 above).
    #[arg(long, env = "HERALD_MAX_IMPORT_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_import_bytes: usize,

    /// How often the outbox relay looks for events the fast path missed, in ms.
    #[arg(long, env = "HERALD_RELAY_INTERVAL_MS", default_value_t = 1000)]
    pub relay_interval_ms: u64,

    /// How often the scheduler looks for due campaigns, in ms.
    #[arg(long, env = "HERALD_SCHEDULER_INTERVAL_MS", default_value_t = 1000)]
    pub scheduler_interval_ms: u64,

    /// The URL providers reach this API at (e.g. `https://herald.example.com`),
    /// the base of each channel's `receipts_url`. Unset: `http://` and the
    /// address the API listens on.
    #[arg(long, env = "HERALD_PUBLIC_URL")]
    pub public_url: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            max_body_bytes: 1024 * 1024,
            max_import_bytes: 512 * 1024 * 1024,
            relay_interval_ms: 1000,
            scheduler_interval_ms: 1000,
            public_url: None,
        }
    }
}

/// The router, without the background tasks.
pub fn router(state: AppState) -> Router {
    use routes::suppressions as s;
    use routes::{campaigns as c, channels as ch, health as h, lifecycle as l, recipients as r};
    let import_limit = state.limits.import_body_bytes;
    let json_limit = state.limits.json_body_bytes;
    let imports = Router::new()
        .route(
            "/v1/campaigns/{id}/recipients",
            post(r::import_recipients).get(r::list_recipients),
        )
        .route(
            "/v1/suppressions",
            post(s::add_suppressions).get(s::list_suppressions),
        )
        .layer(DefaultBodyLimit::max(import_limit));
    Router::new()
        .route(
            "/v1/campaigns",
            post(c::create_campaign).get(c::list_campaigns),
        )
        .route(
            "/v1/channels",
            post(ch::create_channel).get(ch::list_channels),
        )
        .route(
            "/v1/channels/{id}",
            get(ch::get_channel)
                .patch(ch::update_channel)
                .delete(ch::delete_channel),
        )
        .route(
            "/v1/channels/{id}/receipts-token",
            post(routes::receipts_token::rotate_channel_receipts_token),
        )
        .route(
            "/v1/campaigns/{id}/receipts-token",
            post(routes::receipts_token::rotate_campaign_receipts_token),
        )
        .route("/v1/suppressions/{address}", delete(s::delete_suppression))
        .route(
            "/v1/receipts/{channel_id}/{token}",
            post(routes::receipts::post_receipts),
        )
        .route(
            "/v1/receipts/{channel_id}/{token}/{event}",
            post(routes::receipts::post_receipts_by_event),
        )
        .route("/v1/campaigns/bulk/{action}", post(l::bulk_transition))
        .route(
            "/v1/campaigns/{id}",
            get(c::get_campaign)
                .patch(c::update_campaign)
                .delete(c::delete_campaign),
        )
        .route(
            "/v1/campaigns/{id}/duplicate",
            post(routes::duplicate::duplicate_campaign),
        )
        .route("/v1/campaigns/{id}/events", get(l::campaign_events))
        .route(
            "/v1/campaigns/{id}/ab/winner",
            post(routes::ab::pick_winner),
        )
        .route(
            "/v1/campaigns/{id}/retry",
            post(routes::retry::retry_campaign),
        )
        .route(
            "/v1/campaigns/{id}/progress",
            get(routes::progress::campaign_progress),
        )
        .route("/v1/campaigns/{id}/{action}", post(l::transition_campaign))
        .layer(DefaultBodyLimit::max(json_limit))
        .merge(imports)
        .route("/v1/replicas", get(routes::replicas::list_replicas))
        .route("/healthz", get(h::healthz))
        .route("/readyz", get(h::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(herald_core::telemetry::metrics_router())
        // After every route: it applies to the routes registered so far. Axum
        // still adds the `Allow` header.
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .fallback(|| async {
            error::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            )
        })
        .layer(axum::middleware::from_fn(observe::track_http))
        .layer(TraceLayer::new_for_http().make_span_with(observe::request_span))
        .with_state(state)
}

/// Builds the state: pool, NATS connection, outbox.
pub async fn build_state(common: &CommonConfig, config: &ApiConfig) -> anyhow::Result<AppState> {
    let pool = herald_core::db::pool(common)?;
    let bus = Bus::connect(common, "herald-api").await?;
    let outbox = Outbox::new(pool.clone(), bus.clone());
    let progress = routes::progress::ProgressHub::start(pool.clone(), bus.clone());
    let receipts = receipt_writer::ReceiptWriter::start(&pool, &bus);
    let replicas = replicas::ReplicaTable::start(bus.clone());
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen));
    Ok(AppState {
        lifecycle: Lifecycle::new(pool.clone(), outbox),
        pool,
        bus,
        limits: Limits {
            json_body_bytes: config.max_body_bytes,
            import_body_bytes: config.max_import_bytes,
        },
        progress,
        receipts,
        receipt_tokens: receipt_tokens::ReceiptTokens::default(),
        replicas,
        public_url: public_url.trim_end_matches('/').into(),
    })
}

/// Runs the api on `listener` until `shutdown`: migrations, stream provisioning,
/// the relay, the scheduler and the HTTP server.
pub async fn run_with_listener(
    common: CommonConfig,
    config: ApiConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    herald_core::db::migrate_with_retry(&common, &shutdown).await?;
    let mut state = build_state(&common, &config).await?;
    if config.public_url.is_none() {
        // The listener may have been bound to port 0: name the port it got.
        state.public_url = format!("http://{}", listener.local_addr()?).into();
    }
    let installation = herald_core::installation::id_with_retry(&state.pool, &shutdown).await?;
    // Graceful shutdown waits for open responses: end the progress streams first.
    state.progress.close_on(shutdown.clone());
    state.replicas.close_on(shutdown.clone());
    // NATS may be down at startup; transitions must still work, so provision in the
    // background and let the relay catch up. Streams of another installation stop
    // the process: it must not publish into them.
    let bus = state.bus.clone();
    let provision_shutdown = shutdown.clone();
    let provision = tokio::spawn(async move {
        match bus
            .provision_with_retry(installation, &provision_shutdown)
            .await
        {
            Err(error) if herald_core::installation::is_conflict(&error) => {
                tracing::error!(error = %format!("{error:#}"), "refusing to run");
                provision_shutdown.cancel();
                Some(error)
            }
            Err(error) => {
                tracing::warn!(%error, "stream provisioning stopped");
                None
            }
            Ok(()) => None,
        }
    });
    let outbox = state.lifecycle.outbox.clone();
    let relay_interval = Duration::from_millis(config.relay_interval_ms);
    let relay = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { outbox.run_relay(relay_interval, shutdown).await }
    });
    let scheduler = tokio::spawn(scheduler::run_scheduler(
        state.lifecycle.clone(),
        Duration::from_millis(config.scheduler_interval_ms),
        shutdown.clone(),
    ));
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("http server")?;
    shutdown.cancel();
    let _ = tokio::join!(relay, scheduler);
    if let Ok(Some(conflict)) = provision.await {
        return Err(conflict);
    }
    Ok(())
}

pub async fn run(
    common: CommonConfig,
    config: ApiConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    run_with_listener(common, config, listener, shutdown).await
}
