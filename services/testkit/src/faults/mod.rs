//! Fault injection for the reliability tests: a private Postgres cluster that can
//! be stopped and started ([`PgCluster`]), the real `herald` binary as separate OS
//! processes that can be `kill -9`ed and restarted ([`HeraldProcess`]), a private
//! nats-server running the repository's authenticated config ([`AuthNatsServer`]),
//! and a whole deployment of such processes ([`ProcessStack`]).
//!
//! Everything here is private to one test: its own data directory, its own ports,
//! its own log files. The shared Postgres and NATS of the machine are never
//! touched, so a test may stop "its" servers freely.

mod nats;
mod postgres;
mod process;
mod stack;

pub use nats::{AuthNatsServer, nats_password};
pub use postgres::PgCluster;
pub use process::{HeraldEnv, HeraldProcess, herald_binary, peak_rss_kib, rss_kib};
pub use stack::{ProcessStack, Role, repeated_keys};

use std::time::Duration;

use herald_core::bus::Bus;

/// Waits until each named durable exists on the control stream: a new durable
/// starts at the next message, so control published before it would be missed.
pub async fn wait_for_control_durables(bus: &Bus, names: &[String]) {
    wait_until(
        "every replica's control consumer",
        Duration::from_secs(30),
        || async {
            let stream = bus.js.get_stream(&bus.streams.control).await.ok()?;
            for name in names {
                stream
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
                    .await
                    .ok()?;
            }
            Some(())
        },
    )
    .await;
}

/// Polls `check` every 50 ms until it yields a value, or panics with `what` after
/// `timeout`. The one bounded wait every fault test uses instead of sleeping.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
