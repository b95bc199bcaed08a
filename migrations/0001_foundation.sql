-- Herald foundation: tenants, tokens, the campaign projection, the event log
-- (which doubles as the outbox) and the recipient ledger.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Tokens are stored as SHA-256 digests; the plain token is shown once at creation.
CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE campaigns (
    id                    uuid PRIMARY KEY,
    tenant_id             uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name                  text NOT NULL,
    channel               jsonb NOT NULL,
    template              jsonb NOT NULL,
    status                text NOT NULL CHECK (status IN
                            ('draft','scheduled','sending','paused','stopped','completed','failed')),
    version               bigint NOT NULL DEFAULT 1,
    -- Every start/resume opens a new run epoch; the packer records which epoch it
    -- has fully paged (packed_epoch) and where it is inside the current one.
    run_epoch             integer NOT NULL DEFAULT 0,
    packed_epoch          integer NOT NULL DEFAULT 0,
    pack_epoch            integer NOT NULL DEFAULT 0,
    pack_cursor           bigint NOT NULL DEFAULT 0,
    scheduled_at          timestamptz,
    rate_limit_per_second integer CHECK (rate_limit_per_second IS NULL OR rate_limit_per_second > 0),
    total_count           bigint NOT NULL DEFAULT 0,
    pending_count         bigint NOT NULL DEFAULT 0,
    sending_count         bigint NOT NULL DEFAULT 0,
    sent_count            bigint NOT NULL DEFAULT 0,
    failed_count          bigint NOT NULL DEFAULT 0,
    skipped_count         bigint NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    started_at            timestamptz,
    finished_at           timestamptz
);
CREATE INDEX campaigns_tenant_listing ON campaigns (tenant_id, created_at DESC, id DESC);
CREATE INDEX campaigns_due ON campaigns (scheduled_at) WHERE status = 'scheduled';
CREATE INDEX campaigns_sending ON campaigns (id) WHERE status = 'sending';

CREATE TABLE campaign_events (
    id                      uuid PRIMARY KEY,
    campaign_id             uuid NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    seq                     bigint NOT NULL,
    type                    text NOT NULL,
    payload                 jsonb NOT NULL,
    actor                   text NOT NULL,
    correlation_id          uuid NOT NULL,
    request_correlation_id  text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    -- NULL until the event is on JetStream: this column is the outbox.
    published_at            timestamptz,
    UNIQUE (campaign_id, seq)
);
CREATE INDEX campaign_events_outbox ON campaign_events (campaign_id, seq) WHERE published_at IS NULL;

CREATE TABLE recipients (
    campaign_id         uuid NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    id                  bigint GENERATED ALWAYS AS IDENTITY,
    address             text NOT NULL,
    variables           jsonb NOT NULL DEFAULT '{}'::jsonb,
    status              text NOT NULL DEFAULT 'pending' CHECK (status IN
                            ('pending','sending','sent','failed','skipped')),
    attempts            integer NOT NULL DEFAULT 0,
    last_error          text,
    provider_message_id text,
    lease_token         uuid,
    lease_expires_at    timestamptz,
    claimed_at          timestamptz,
    sent_at             timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, id),
    UNIQUE (campaign_id, address)
);
-- Rows still to do: what the packer pages and the lease sweeper scans.
CREATE INDEX recipients_open ON recipients (campaign_id, id) WHERE status IN ('pending','sending');
-- Claimed rows by lease expiry: what the packer's sweep re-batches after a crash.
CREATE INDEX recipients_leases ON recipients (campaign_id, lease_expires_at) WHERE status = 'sending';
