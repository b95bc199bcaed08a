//! Live campaign progress over Server-Sent Events: `GET /v1/campaigns/{id}/progress`.
//!
//! The stream pushes `{status, version, counters, funnel, waiting}` whenever they change, and closes
//! after pushing a terminal state (stopped, completed or failed).
//!
//! It is fed from the bus, not by polling per client. One [`ProgressHub`] per api
//! process holds a single core-NATS subscription on `campaigns.tracked.>` and
//! `campaigns.events.>` (a plain subscription also sees what JetStream stores). A
//! bus message about campaign X only marks X dirty; X's refresher task reads X's row
//! once and publishes it on a `watch` channel that every SSE client of X listens
//! to. So N clients of one campaign cost one Postgres read per change rather than
//! N, bursts of batch outcomes collapse into one read, and a campaign that nobody
//! watches costs nothing. A slow fallback tick re-reads watched campaigns anyway,
//! so clients still converge while NATS is down (docs/RELIABILITY.md, degraded modes).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use herald_core::CancellationToken;
use herald_core::bus::Bus;
use herald_core::campaigns::{Campaign, Counters, Funnel, fetch_campaign};
use herald_core::lifecycle::Status;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::AuthTenant;
use crate::state::AppState;
use crate::views::WaitingView;

/// How often a watched campaign is re-read when no bus message arrives.
pub const FALLBACK_REFRESH: Duration = Duration::from_secs(5);

/// Least time between two reads of one campaign. A sender publishes one outcome
/// per batch, so a busy campaign would otherwise cost a read per batch.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);

/// An idle stream sends a comment this often, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the stream pushes: one `progress` event per change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub status: Status,
    pub version: i64,
    pub counters: Counters,
    /// The delivery funnel (as in `GET /v1/campaigns/{id}`): it moves with
    /// delivery receipts while the stream is open. Receipts that arrive after
    /// the campaign ended show in `GET /v1/campaigns/{id}`.
    #[serde(default)]
    pub funnel: Funnel,
    /// Why the campaign is not moving (as in `GET /v1/campaigns/{id}`); null
    /// while it sends freely or is not sending.
    #[serde(default)]
    pub waiting: Option<WaitingView>,
    /// Why a paused campaign paused (as in `GET /v1/campaigns/{id}`):
    /// `failure_rate` after an auto-pause, null otherwise.
    #[serde(default)]
    pub paused_reason: Option<String>,
}

impl From<&Campaign> for Progress {
    fn from(campaign: &Campaign) -> Self {
        Self {
            status: campaign.status,
            version: campaign.version,
            counters: campaign.counters,
            funnel: campaign.funnel,
            waiting: WaitingView::of(campaign),
            paused_reason: campaign.paused_reason.clone(),
        }
    }
}

/// One read of a campaign row by its refresher.
#[derive(Debug, Clone)]
struct Snapshot {
    /// Taken before the read began. A client forwards only reads that began after
    /// its own first read, so its counters never step back.
    ticket: u64,
    /// `None` when the campaign no longer exists (a deleted draft).
    progress: Option<Progress>,
}

/// The channel of one watched campaign.
#[derive(Debug)]
struct Watched {
    tx: watch::Sender<Option<Snapshot>>,
    /// Set by the bus listener; holds at most one permit, which is what coalesces
    /// a burst of bus messages into one read.
    dirty: Notify,
}

#[derive(Debug)]
struct HubInner {
    pool: PgPool,
    watched: Mutex<HashMap<Uuid, Arc<Watched>>>,
    tickets: AtomicU64,
    closed: CancellationToken,
    fallback: Duration,
}

impl HubInner {
    fn watched(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<Watched>>> {
        // The map stays consistent under every panic point, so a poisoned lock is usable.
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Drop for HubInner {
    fn drop(&mut self) {
        // Stops the bus listener when the last handle goes away without `close`.
        self.closed.cancel();
    }
}

/// Fans bus messages out to the SSE clients of each campaign (one per api process).
#[derive(Debug, Clone)]
pub struct ProgressHub {
    inner: Arc<HubInner>,
}

impl ProgressHub {
    /// Starts the hub and its bus listener, with the default fallback tick.
    pub fn start(pool: PgPool, bus: Bus) -> Self {
        Self::with_fallback(pool, bus, FALLBACK_REFRESH)
    }

    /// Starts the hub with a given fallback tick.
    pub fn with_fallback(pool: PgPool, bus: Bus, fallback: Duration) -> Self {
        let inner = Arc::new(HubInner {
            pool,
            watched: Mutex::new(HashMap::new()),
            tickets: AtomicU64::new(0),
            closed: CancellationToken::new(),
            fallback,
        });
        tokio::spawn(listen(Arc::downgrade(&inner), bus, inner.closed.clone()));
        Self { inner }
    }

    /// Ends every progress stream and the bus listener. Graceful HTTP shutdown
    /// waits for open responses, so streams must end when the server stops.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// Calls [`ProgressHub::close`] once `shutdown` is cancelled.
    pub fn close_on(&self, shutdown: CancellationToken) {
        herald_core::cancel_on(&self.inner.closed, shutdown);
    }

    /// A receiver of `campaign`'s reads; starts its refresher if it is new.
    fn subscribe(&self, campaign: Uuid) -> watch::Receiver<Option<Snapshot>> {
        let mut watched = self.inner.watched();
        if let Some(existing) = watched.get(&campaign) {
            return existing.tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        let entry = Arc::new(Watched {
            tx,
            dirty: Notify::new(),
        });
        watched.insert(campaign, entry.clone());
        tokio::spawn(refresh_loop(self.inner.clone(), campaign, entry));
        rx
    }
}

/// The campaign id at the end of `<prefix>campaigns.tracked.<id>` or `...events.<id>`.
fn campaign_of(subject: &str, prefixes: &[String]) -> Option<Uuid> {
    prefixes
        .iter()
        .find_map(|prefix| subject.strip_prefix(prefix.as_str()))
        .and_then(|id| id.parse().ok())
}

/// The hub's single bus subscription: marks campaigns dirty, never reads Postgres,
/// so a slow database cannot back the subscription up.
async fn listen(hub: Weak<HubInner>, bus: Bus, closed: CancellationToken) {
    let prefix = bus.subjects.prefix().to_owned();
    let prefixes = [
        format!("{prefix}campaigns.tracked."),
        format!("{prefix}campaigns.events."),
    ];
    let mut delay = Duration::from_millis(200);
    while !closed.is_cancelled() {
        // The client re-subscribes by itself after a reconnect; this only fails
        // when the connection is closed for good.
        let subscribed = async {
            let tracked = bus.client.subscribe(bus.subjects.tracked_all()).await?;
            let events = bus.client.subscribe(bus.subjects.events_all()).await?;
            anyhow::Ok(futures::stream::select(tracked, events))
        }
        .await;
        let mut messages = match subscribed {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, "progress subscription failed; retrying");
                tokio::select! {
                    _ = closed.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                _ = closed.cancelled() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else { break };
            let Some(campaign) = campaign_of(message.subject.as_str(), &prefixes) else {
                continue;
            };
            let Some(hub) = hub.upgrade() else { return };
            let watched = hub.watched().get(&campaign).cloned();
            if let Some(watched) = watched {
                watched.dirty.notify_one();
            }
        }
    }
}

/// Re-reads one campaign whenever it is marked dirty or the fallback tick fires,
/// until its last client leaves or the hub closes.
async fn refresh_loop(hub: Arc<HubInner>, campaign: Uuid, watched: Arc<Watched>) {
    loop {
        tokio::select! {
            _ = hub.closed.cancelled() => break,
            _ = watched.tx.closed() => {
                // A client may subscribe between `closed` firing and this lock.
                let mut map = hub.watched();
                if watched.tx.receiver_count() == 0 {
                    map.remove(&campaign);
                    return;
                }
                continue;
            }
            _ = watched.dirty.notified() => {}
            _ = tokio::time::sleep(hub.fallback) => {}
        }
        let ticket = hub.next_ticket();
        match fetch_campaign(&hub.pool, campaign, None).await {
            Ok(row) => {
                let progress = row.as_ref().map(Progress::from);
                watched.tx.send_if_modified(|current| {
                    let changed = current.as_ref().is_none_or(|c| c.progress != progress);
                    if changed {
                        *current = Some(Snapshot { ticket, progress });
                    }
                    changed
                });
            }
            // Postgres down: keep the last state; the next tick tries again.
            Err(error) => tracing::debug!(%error, campaign_id = %campaign, "progress read failed"),
        }
        tokio::select! {
            _ = hub.closed.cancelled() => break,
            _ = tokio::time::sleep(MIN_REFRESH_GAP) => {}
        }
    }
    let mut map = hub.watched();
    if map
        .get(&campaign)
        .is_some_and(|current| Arc::ptr_eq(current, &watched))
    {
        map.remove(&campaign);
    }
}

fn progress_event(progress: &Progress) -> Event {
    Event::default()
        .event("progress")
        .json_data(progress)
        .unwrap_or_else(|_| Event::default().comment("progress could not be encoded"))
}

/// Where one client's stream is.
#[derive(Debug)]
enum Phase {
    /// The first read is still to be sent.
    Initial,
    Live,
    /// The terminal state was sent: end the stream.
    Done,
}

#[derive(Debug)]
struct Feed {
    phase: Phase,
    last: Progress,
    ticket: u64,
    updates: watch::Receiver<Option<Snapshot>>,
    closed: CancellationToken,
}

fn progress_stream(feed: Feed) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(feed, |mut feed| async move {
        match feed.phase {
            Phase::Done => return None,
            Phase::Initial => {
                feed.phase = if feed.last.status.is_terminal() {
                    Phase::Done
                } else {
                    Phase::Live
                };
                return Some((Ok(progress_event(&feed.last)), feed));
            }
            Phase::Live => {}
        }
        loop {
            tokio::select! {
                _ = feed.closed.cancelled() => return None,
                changed = feed.updates.changed() => changed.ok()?,
            }
            let Some(snapshot) = feed.updates.borrow_and_update().clone() else {
                continue;
            };
            if snapshot.ticket <= feed.ticket {
                continue;
            }
            // The campaign was deleted: nothing more will come.
            let progress = snapshot.progress?;
            feed.ticket = snapshot.ticket;
            if progress == feed.last {
                continue;
            }
            feed.last = progress;
            if feed.last.status.is_terminal() {
                feed.phase = Phase::Done;
            }
            return Some((Ok(progress_event(&feed.last)), feed));
        }
    })
}

/// Streams a campaign's status and counters as Server-Sent Events.
#[utoipa::path(get, path = "/v1/campaigns/{id}/progress", params(("id" = Uuid, Path)),
    responses(
        (status = 200, content_type = "text/event-stream", body = Progress,
         description = "`event: progress` with `{status, version, counters, funnel, waiting}` now and on every change; \
                        the stream ends after a terminal state (stopped, completed, failed)"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn campaign_progress(
    State(state): State<AppState>,
    auth: AuthTenant,
    id: Result<Path<Uuid>, PathRejection>,
) -> ApiResult<impl IntoResponse> {
    let Path(id) = id?;
    // Subscribe before the first read, so a change between the two is not missed.
    let updates = state.progress.subscribe(id);
    let ticket = state.progress.inner.next_ticket();
    let campaign = fetch_campaign(&state.pool, id, Some(auth.0.id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    let feed = Feed {
        phase: Phase::Initial,
        last: Progress::from(&campaign),
        ticket,
        updates,
        closed: state.progress.inner.closed.clone(),
    };
    let sse = Sse::new(progress_stream(feed)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE));
    // Tells nginx-style proxies not to buffer the stream.
    Ok(([("x-accel-buffering", "no")], sse))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_ids_are_taken_from_tracked_and_event_subjects_only() {
        let id = Uuid::new_v4();
        let prefixes = [
            "p.campaigns.tracked.".to_owned(),
            "p.campaigns.events.".to_owned(),
        ];
        assert_eq!(
            campaign_of(&format!("p.campaigns.tracked.{id}"), &prefixes),
            Some(id)
        );
        assert_eq!(
            campaign_of(&format!("p.campaigns.events.{id}"), &prefixes),
            Some(id)
        );
        assert_eq!(
            campaign_of(&format!("p.campaigns.control.{id}"), &prefixes),
            None
        );
        assert_eq!(campaign_of("p.campaigns.events.nope", &prefixes), None);
    }
}
