-- Dispatch scheduling: channels as a resource (one sending identity with a send
-- budget shared by every campaign and replica, and an optional send window),
-- the budgets' state, and why a campaign is not moving (docs/ARCHITECTURE.md,
-- "Dispatch scheduling").

-- A sending identity of one tenant: one WhatsApp number, one webhook endpoint.
-- `config` is exactly what a campaign's inline `channel` object takes. A
-- campaign created with an inline `channel` gets a `private` channel of its
-- own (not listed, not addressable by other campaigns) with its own budget.
CREATE TABLE channels (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name         text NOT NULL,
    config       jsonb NOT NULL,
    -- Requests started per second, in any 1 s window; NULL: no limit.
    per_second   integer CHECK (per_second IS NULL OR per_second > 0),
    -- Requests started per calendar day in the send window's time zone (UTC
    -- without a window); NULL: no limit.
    per_day      integer CHECK (per_day IS NULL OR per_day > 0),
    -- {"timezone", "days", "start", "end"}; NULL: always open.
    send_window  jsonb,
    private      boolean NOT NULL DEFAULT false,
    version      bigint NOT NULL DEFAULT 1,
    -- Deleted channels stay for the campaigns that sent through them (their
    -- history names the channel) but are no longer listed, read or used.
    deleted_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channels_tenant_listing ON channels (tenant_id, created_at DESC, id DESC)
    WHERE NOT private AND deleted_at IS NULL;

-- Every existing campaign gets the private channel its inline config implies,
-- under the campaign's own id (channels and campaigns are separate id spaces).
INSERT INTO channels (id, tenant_id, name, config, private, created_at, updated_at)
SELECT id, tenant_id, left('campaign ' || name, 200), channel, true, created_at, updated_at FROM campaigns;

ALTER TABLE campaigns ADD COLUMN channel_id uuid REFERENCES channels(id);
UPDATE campaigns SET channel_id = id;
ALTER TABLE campaigns ALTER COLUMN channel_id SET NOT NULL;
-- The provider config now lives on the channel; the old column is no longer
-- written (campaign reads take the channel's config through `channel_id`).
ALTER TABLE campaigns ALTER COLUMN channel DROP NOT NULL;
-- The campaign's own send window, intersected with its channel's.
ALTER TABLE campaigns ADD COLUMN send_window jsonb;
CREATE INDEX campaigns_channel ON campaigns (channel_id);

-- The state of one budget, kept apart from `channels` and `campaigns` so that a
-- reservation (a few per second per channel) rewrites a narrow row and never
-- waits on a campaign transition. `kind` is 'channel' (its per-second and
-- per-day limits) or 'campaign' (its own `rate_limit_per_second`).
CREATE TABLE send_budgets (
    kind        text NOT NULL CHECK (kind IN ('channel', 'campaign')),
    id          uuid NOT NULL,
    -- GCRA: the theoretical arrival time of the next request.
    tat         timestamptz NOT NULL DEFAULT '-infinity',
    -- The local calendar day `day_count` counts.
    day_local   date,
    day_count   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, id)
);

-- Why a sending campaign is not moving, as the sender last saw it. No row (or a
-- campaign that is not sending): it sends freely.
CREATE TABLE campaign_waits (
    campaign_id  uuid PRIMARY KEY REFERENCES campaigns(id) ON DELETE CASCADE,
    reason       text NOT NULL CHECK (reason IN ('rate_limit', 'send_window', 'daily_cap', 'ab_decision')),
    until        timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
