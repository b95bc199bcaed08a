-- Every recipient's fate, explained: reason codes and the tenant's suppression list.
--
-- `reason` is the machine-readable code of a `failed` or `skipped` recipient
-- (`suppressed`, `campaign_stopped`, `invalid_address`, `template_error`,
-- `provider_rejected`, `retries_exhausted`, `bounced`, ...); `last_error` keeps the
-- human text beside it. NULL while the recipient is pending, sending or sent.
-- Adding a nullable column rewrites nothing, so this is instant on a large ledger.
ALTER TABLE recipients ADD COLUMN reason text;

-- Skips written while a campaign sends (suppressed at claim time, rows released
-- after a stop) go to the counter shards like the other ledger counters.
ALTER TABLE campaign_counter_deltas ADD COLUMN skipped bigint NOT NULL DEFAULT 0;

-- One suppression list (opt-outs) per tenant. `address` is the normalised form,
-- the one the ledger sends to and dedupes on.
CREATE TABLE suppressions (
    tenant_id    uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    address      text NOT NULL,
    reason       text NOT NULL,
    -- 'api' (added by an operator) or 'receipt' (an inbound opt-out).
    source       text NOT NULL CHECK (source IN ('api', 'receipt')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, address)
);
