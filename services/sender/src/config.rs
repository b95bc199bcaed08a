//! The sender's settings: every field is a flag and an environment variable.

use herald_core::control::ControlConfig;

/// Settings of the sender service.
#[derive(Debug, Clone, clap::Args)]
pub struct SenderConfig {
    /// Provider requests in flight at once on this replica.
    #[arg(long, env = "HERALD_SENDER_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,

    /// Send batches handled at once on this replica.
    #[arg(long, env = "HERALD_SENDER_BATCHES", default_value_t = 4)]
    pub batches_in_flight: usize,

    /// Lease on claimed recipients, in seconds; renewed every third of it while
    /// a batch works. After a crash, another replica takes the rows over once it
    /// expires; a sender whose renewals stall starts no request for them after
    /// two thirds of it (`crate::lease`).
    #[arg(long, env = "HERALD_LEASE_SECONDS", default_value_t = 30.0, value_parser = parse_lease_seconds)]
    pub lease_seconds: f64,

    /// How long a campaign status read from Postgres is trusted, in ms.
    #[arg(long, env = "HERALD_STATUS_TTL_MS", default_value_t = 5000)]
    pub status_ttl_ms: u64,

    /// Fault injection, for tests only: every status read waits this long (ms)
    /// between Postgres's answer and the cache's store, so pauses land while
    /// reads are in flight (tests/pause_race.rs). 0 in production.
    #[arg(
        long,
        env = "HERALD_FAULT_STATUS_READ_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub fault_status_read_delay_ms: u64,

    /// Control fast-path settings (flattened by the binary once for all services).
    #[arg(skip)]
    pub control: ControlConfig,

    /// Provider requests per recipient before it is failed (first try included),
    /// in total across pauses and resumes (`recipients.attempts` keeps the count).
    #[arg(long, env = "HERALD_MAX_ATTEMPTS", default_value_t = 4)]
    pub max_attempts: u32,

    /// First retry delay, in ms; doubles per attempt.
    #[arg(long, env = "HERALD_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,

    /// Longest retry delay (and longest honoured Retry-After), in ms.
    #[arg(long, env = "HERALD_RETRY_MAX_MS", default_value_t = 30000)]
    pub retry_max_ms: u64,

    /// Timeout of one provider request, in ms.
    #[arg(long, env = "HERALD_PROVIDER_TIMEOUT_MS", default_value_t = 30000)]
    pub provider_timeout_ms: u64,

    /// How long a finished dispatch's outcome may wait for others to share its
    /// ledger write, in ms (0: write at once). Longer means fewer, larger writes,
    /// and more requests repeated (same idempotency key) after a `kill -9`.
    #[arg(long, env = "HERALD_OUTCOME_LINGER_MS", default_value_t = 20)]
    pub outcome_linger_ms: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            batches_in_flight: 4,
            lease_seconds: 30.0,
            status_ttl_ms: 5000,
            fault_status_read_delay_ms: 0,
            control: ControlConfig::default(),
            max_attempts: 4,
            retry_base_ms: 1000,
            retry_max_ms: 30000,
            provider_timeout_ms: 30000,
            outcome_linger_ms: 20,
        }
    }
}

/// `HERALD_LEASE_SECONDS`: 1 to 86,400 seconds. The heartbeat renews every
/// third of the lease, and each beat must have room for a renewal's round
/// trip; a lease longer than a day would hold a dead sender's rows for as long.
fn parse_lease_seconds(value: &str) -> Result<f64, String> {
    let seconds: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))?;
    if (1.0..=86_400.0).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(format!("{value} is outside 1 to 86400 seconds"))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_lease_seconds;

    #[test]
    fn a_lease_shorter_than_a_second_or_longer_than_a_day_is_refused() {
        assert_eq!(parse_lease_seconds("3"), Ok(3.0));
        assert_eq!(parse_lease_seconds("1.5"), Ok(1.5));
        for bad in ["0.5", "0", "-3", "NaN", "inf", "86401", "soon"] {
            assert!(parse_lease_seconds(bad).is_err(), "{bad}");
        }
    }
}
