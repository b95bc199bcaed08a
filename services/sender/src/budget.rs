//! Send budgets held in Postgres: a channel's per-second and per-day limits,
//! shared by every campaign and every sender replica, and a campaign's own
//! `rate_limit_per_second`.
//!
//! A sender reserves a *slice* of start times, about [`SLICE`] worth, in one
//! statement: one round trip per slice, never per message. The limiter is GCRA
//! (the generic cell rate algorithm, as in ATM traffic shaping and most API rate
//! limiters) with no burst tolerance: each budget keeps a theoretical arrival
//! time (TAT), tokens are start times spaced by the emission interval, and a
//! reservation takes the start times between max(TAT, now) and now + slice.
//! The channel and the campaign cap are reserved together, under both rows'
//! locks, at the larger of the two spacings.
//!
//! # Why no 1 s window ever holds more than `per_second`
//!
//! Start times `r` tokens apart are `r × interval` apart. With the interval
//! exactly `1 s / r`, any delay between the sender's start and the provider's
//! arrival could put `r + 1` requests in one second, so the interval is
//! `(1 s + WINDOW_GUARD) / r`: a request may arrive up to [`WINDOW_GUARD`] later
//! than its start time relative to the one `r` tokens before it. The achieved rate
//! is then `r / 1.03`, 97% of the limit. A sender that cannot start a request
//! within [`START_SLACK`] of its start time does not use the token (it reserves
//! a new one), so a slow sender cannot crowd a later second either.
//!
//! `per_day` counts the requests started in one calendar day of the channel's
//! send-window time zone (UTC without a window); when it is used up, the next
//! token is at the next local midnight (DST handled by Postgres's zone rules).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// How much future a reservation may take at once.
pub const SLICE: Duration = Duration::from_millis(100);

/// Added to each 1 s window when spacing start times (see the module docs).
pub const WINDOW_GUARD: Duration = Duration::from_millis(30);

/// How late a request may start after its token's start time; later, the token
/// is given up and a new one reserved.
pub const START_SLACK: Duration = Duration::from_millis(10);

/// Why a campaign cannot send now: the `waiting.reason` of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitReason {
    RateLimit,
    SendWindow,
    DailyCap,
}

impl WaitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::RateLimit => "rate_limit",
            WaitReason::SendWindow => "send_window",
            WaitReason::DailyCap => "daily_cap",
        }
    }
}

/// What a reservation gave: `granted` start times, the first at `first_start`,
/// then every `spacing`; or, with none granted, why and until when to wait.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub granted: u32,
    /// Postgres's clock when it answered; start times are relative to it.
    pub now: DateTime<Utc>,
    pub first_start: DateTime<Utc>,
    pub spacing: Duration,
    /// Set when fewer than asked were granted because of a limit.
    pub wait: Option<(WaitReason, DateTime<Utc>)>,
}

impl Grant {
    /// How long after `now` the `i`th granted token may start.
    pub fn offset(&self, i: u32) -> Duration {
        let first = (self.first_start - self.now).to_std().unwrap_or_default();
        first + self.spacing * i
    }
}

/// Makes sure the budget rows a reservation locks exist (once per plan load).
pub async fn ensure_budget_rows(
    pool: &PgPool,
    channel_id: Uuid,
    campaign_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO send_budgets (kind, id) VALUES ('channel', $1), ('campaign', $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(channel_id)
    .bind(campaign_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Reserves up to `want` start times for one campaign on its channel, in one
/// statement. `now` is Postgres's clock unless a test injects one. The limits
/// are read from the channel and campaign rows in the same statement, so an
/// edited limit applies to the next slice.
pub async fn reserve(
    pool: &PgPool,
    channel_id: Uuid,
    campaign_id: Uuid,
    want: u32,
    now: Option<DateTime<Utc>>,
) -> Result<Grant, sqlx::Error> {
    type Row = (
        i32,
        DateTime<Utc>,
        DateTime<Utc>,
        f64,
        Option<String>,
        Option<DateTime<Utc>>,
    );
    let row: Option<Row> = sqlx::query_as(
        "WITH clock AS (SELECT coalesce($4::timestamptz, clock_timestamp()) AS now),
         lim AS (
             SELECT ch.per_second, ch.per_day, c.rate_limit_per_second AS cap,
                    coalesce(ch.send_window->>'timezone', 'UTC') AS tz
             FROM campaigns c JOIN channels ch ON ch.id = $1 WHERE c.id = $2
         ), cb AS (
             SELECT tat, day_local, day_count FROM send_budgets
             WHERE kind = 'channel' AND id = $1 FOR UPDATE
         ), pb AS (
             SELECT tat FROM send_budgets WHERE kind = 'campaign' AND id = $2 FOR UPDATE
         ), x AS (
             SELECT clock.now, lim.per_day, lim.tz,
                    (clock.now AT TIME ZONE lim.tz)::date AS today,
                    make_interval(secs => ($5 + 1.0) / lim.per_second) AS t_ch,
                    make_interval(secs => ($5 + 1.0) / lim.cap) AS t_cp,
                    CASE WHEN lim.per_second IS NULL THEN '-infinity' ELSE cb.tat END AS ch_tat,
                    CASE WHEN lim.cap IS NULL THEN '-infinity' ELSE pb.tat END AS cp_tat,
                    CASE WHEN cb.day_local = (clock.now AT TIME ZONE lim.tz)::date
                         THEN cb.day_count ELSE 0 END AS used_today
             FROM clock, lim, cb, pb
         ), y AS (
             SELECT x.*, greatest(x.now, x.ch_tat, x.cp_tat) AS base,
                    greatest(coalesce(x.t_ch, '0'::interval), coalesce(x.t_cp, '0'::interval)) AS spacing,
                    CASE WHEN x.per_day IS NULL THEN $3
                         ELSE least($3, greatest(x.per_day - x.used_today, 0))::int END AS room
             FROM x
         ), z AS (
             SELECT y.*, CASE
                 WHEN y.room = 0 OR y.base > y.now + make_interval(secs => $6) THEN 0
                 WHEN y.spacing = '0'::interval THEN y.room
                 ELSE least(y.room, floor(extract(epoch FROM (y.now + make_interval(secs => $6) - y.base))
                                          / extract(epoch FROM y.spacing))::int + 1)
             END AS granted
             FROM y
         ), upd_ch AS (
             UPDATE send_budgets b
             SET tat = CASE WHEN z.t_ch IS NULL THEN b.tat
                            ELSE z.base + (z.granted - 1) * z.spacing + z.t_ch END,
                 day_local = z.today, day_count = z.used_today + z.granted
             FROM z WHERE b.kind = 'channel' AND b.id = $1 AND z.granted > 0
         ), upd_cp AS (
             UPDATE send_budgets b SET tat = z.base + (z.granted - 1) * z.spacing + z.t_cp
             FROM z WHERE b.kind = 'campaign' AND b.id = $2 AND z.granted > 0 AND z.t_cp IS NOT NULL
         )
         SELECT z.granted, z.now, z.base, extract(epoch FROM z.spacing)::float8,
                CASE WHEN z.room = 0 AND $3 > 0 THEN 'daily_cap'
                     WHEN z.granted < $3 AND z.spacing > '0'::interval THEN 'rate_limit' END,
                CASE WHEN z.room = 0 AND $3 > 0 THEN ((z.today + 1)::timestamp AT TIME ZONE z.tz)
                     WHEN z.granted < $3 AND z.spacing > '0'::interval
                     THEN greatest(z.now, z.base + z.granted * z.spacing - make_interval(secs => $6)) END
         FROM z",
    )
    .bind(channel_id)
    .bind(campaign_id)
    .bind(want.min(i32::MAX as u32) as i32)
    .bind(now)
    .bind(WINDOW_GUARD.as_secs_f64())
    .bind(SLICE.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    let Some((granted, now, first_start, spacing, reason, until)) = row else {
        // No budget rows or no such campaign: nothing may be sent on its word.
        return Err(sqlx::Error::RowNotFound);
    };
    let wait = match (reason.as_deref(), until) {
        (Some("daily_cap"), Some(until)) => Some((WaitReason::DailyCap, until)),
        (Some("rate_limit"), Some(until)) => Some((WaitReason::RateLimit, until)),
        _ => None,
    };
    Ok(Grant {
        granted: granted.max(0) as u32,
        now,
        first_start,
        spacing: Duration::from_secs_f64(spacing.max(0.0)),
        wait,
    })
}
