//! What a campaign needs for dispatch, read once and kept for a TTL: its
//! channel's provider config, its compiled template (an A/B campaign's: every
//! variant's), its send windows, and whether any budget applies to it.
//!
//! No control message resets this cache, and none needs to: a campaign's own
//! fields can only be edited while it is a draft, and a channel edited while
//! its campaigns send (config, limits, window) reaches each replica within the
//! TTL. An A/B test's winner is not cached either: the claim says which variant
//! each row gets, and every variant's template is here. The limits themselves are read by every reservation, not from here, so
//! a tightened budget holds from the next slice on; only whether to reserve at
//! all is cached.

use std::collections::HashMap;

use herald_core::ab::Variant;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use herald_core::channel::Channel;
use herald_core::send_window::{SendWindow, Window, next_open_together};
use herald_core::template::MessageTemplate;
use sqlx::PgPool;
use uuid::Uuid;

use crate::budget;

/// One campaign's dispatch plan.
#[derive(Debug)]
pub struct CampaignPlan {
    pub channel_id: Uuid,
    pub channel: Channel,
    pub template: MessageTemplate,
    /// An A/B campaign's templates by variant name (empty for a plain one).
    pub variants: HashMap<String, MessageTemplate>,
    /// The channel's and the campaign's send windows (0, 1 or 2).
    pub windows: Vec<Window>,
    /// True if the channel has a per-second or per-day limit, or the campaign
    /// its own cap: every request then needs a token from [`budget::reserve`].
    pub budgeted: bool,
}

impl CampaignPlan {
    /// The template a recipient of `variant` (None: a plain campaign's) is
    /// rendered with; None for a variant the campaign does not have.
    pub fn template_for(&self, variant: Option<&str>) -> Option<&MessageTemplate> {
        match variant {
            None => Some(&self.template),
            Some(name) => self.variants.get(name),
        }
    }

    /// `None` while every window is open at `now`; else when they next are (a
    /// day from now if they never overlap, so the campaign is looked at again).
    pub fn closed_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.windows.is_empty() {
            return None;
        }
        let windows: Vec<&Window> = self.windows.iter().collect();
        match next_open_together(&windows, now) {
            Some(at) if at <= now => None,
            Some(at) => Some(at),
            None => Some(now + chrono::Duration::days(1)),
        }
    }
}

type PlanRow = (
    Uuid,
    serde_json::Value,
    Option<i32>,
    Option<i32>,
    Option<serde_json::Value>,
    Option<serde_json::Value>,
    serde_json::Value,
    Option<i32>,
    Option<serde_json::Value>,
);

async fn load_plan_row(pool: &PgPool, campaign: Uuid) -> Result<Option<PlanRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT ch.id, ch.config, ch.per_second, ch.per_day, ch.send_window, c.send_window,
                c.template, c.rate_limit_per_second, c.variants
         FROM campaigns c JOIN channels ch ON ch.id = c.channel_id WHERE c.id = $1",
    )
    .bind(campaign)
    .fetch_optional(pool)
    .await
}

fn compile_window(campaign: Uuid, value: Option<serde_json::Value>) -> Option<Window> {
    let window = serde_json::from_value::<SendWindow>(value?)
        .map_err(|e| e.to_string())
        .and_then(|w| w.compile());
    match window {
        Ok(window) => Some(window),
        Err(error) => {
            // The API validates windows; a stored one that fails is a bug, and
            // sending outside quiet hours is the worse failure: hold the campaign.
            tracing::error!(campaign_id = %campaign, %error, "stored send window is unreadable");
            None
        }
    }
}

/// An A/B campaign's templates by name; None (logged) if any fails, which the
/// API's validation rules out.
fn compile_variants(
    campaign: Uuid,
    variants: Option<serde_json::Value>,
) -> Option<HashMap<String, MessageTemplate>> {
    let Some(value) = variants else {
        return Some(HashMap::new());
    };
    let variants: Vec<Variant> = serde_json::from_value(value)
        .inspect_err(|e| tracing::error!(campaign_id = %campaign, error = %e, "stored variants are unreadable"))
        .ok()?;
    let mut compiled = HashMap::new();
    for variant in variants {
        let body = variant
            .template
            .get("body")
            .and_then(|b| b.as_str())
            .unwrap_or_default();
        let Ok(template) = MessageTemplate::compile(body) else {
            tracing::error!(campaign_id = %campaign, variant = %variant.name, "stored variant template does not compile");
            return None;
        };
        compiled.insert(variant.name, template);
    }
    Some(compiled)
}

fn build_plan(campaign: Uuid, row: PlanRow) -> Option<CampaignPlan> {
    let (
        channel_id,
        config,
        per_second,
        per_day,
        channel_window,
        own_window,
        template,
        cap,
        variants,
    ) = row;
    let channel: Channel = serde_json::from_value(config)
        .inspect_err(|e| tracing::error!(campaign_id = %campaign, error = %e, "stored channel is unreadable"))
        .ok()?;
    let body = template
        .get("body")
        .and_then(|b| b.as_str())
        .unwrap_or_default();
    let Ok(template) = MessageTemplate::compile(body) else {
        tracing::error!(campaign_id = %campaign, "stored template does not compile");
        return None;
    };
    let variants = compile_variants(campaign, variants)?;
    let mut windows = Vec::new();
    for value in [channel_window, own_window].into_iter().flatten() {
        windows.push(compile_window(campaign, Some(value))?);
    }
    Some(CampaignPlan {
        channel_id,
        channel,
        template,
        variants,
        windows,
        budgeted: per_second.is_some() || per_day.is_some() || cap.is_some(),
    })
}

/// The per-replica plan cache.
#[derive(Debug)]
pub struct PlanCache {
    pool: PgPool,
    ttl: Duration,
    plans: Mutex<HashMap<Uuid, (Instant, Arc<CampaignPlan>)>>,
}

impl PlanCache {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            plans: Mutex::new(HashMap::new()),
        }
    }

    /// The campaign's plan; `None` if the campaign is gone or its stored plan is
    /// unusable (logged).
    pub async fn get(&self, campaign: Uuid) -> Result<Option<Arc<CampaignPlan>>, sqlx::Error> {
        let cached = self
            .plans
            .lock()
            .expect("plans lock")
            .get(&campaign)
            .filter(|(loaded, _)| loaded.elapsed() < self.ttl)
            .map(|(_, plan)| plan.clone());
        if cached.is_some() {
            return Ok(cached);
        }
        let Some(row) = load_plan_row(&self.pool, campaign).await? else {
            return Ok(None);
        };
        let Some(plan) = build_plan(campaign, row) else {
            return Ok(None);
        };
        if plan.budgeted {
            budget::ensure_budget_rows(&self.pool, plan.channel_id, campaign).await?;
        }
        let plan = Arc::new(plan);
        let mut plans = self.plans.lock().expect("plans lock");
        plans.retain(|_, (loaded, _)| loaded.elapsed() < self.ttl * 12);
        plans.insert(campaign, (Instant::now(), plan.clone()));
        Ok(Some(plan))
    }
}
